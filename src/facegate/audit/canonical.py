"""The exact bytes that are hashed and signed, shared by the log that writes them and the verifier that
recomputes them from an export, so the two cannot drift apart. The formats are described in
:mod:`facegate.audit.base`."""

from __future__ import annotations

import hashlib
import json

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

# The ``prev`` of entry 0: there is no previous leaf.
GENESIS_PREV = "0" * 64
CHECKPOINT_CONTEXT = b"facegate-audit-checkpoint/v1\n"


def canonical_json(value: object) -> bytes:
    """One byte string per JSON value: sorted keys, no whitespace, UTF-8, no NaN/Infinity (not JSON)."""
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False).encode()


def checkpoint_message(size: int, root_hex: str, time: float) -> bytes:
    """What a checkpoint's Ed25519 signature covers; the context line keeps it from meaning anything else."""
    return CHECKPOINT_CONTEXT + f"{size}\n{root_hex}\n{json.dumps(time)}\n".encode("ascii")


def key_id(public_key: Ed25519PublicKey) -> str:
    """A short name for a signing key: the first 16 hex digits of SHA-256 over its DER public key."""
    der = public_key.public_bytes(Encoding.DER, PublicFormat.SubjectPublicKeyInfo)
    return hashlib.sha256(der).hexdigest()[:16]

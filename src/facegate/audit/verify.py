"""Verify an exported audit log with nothing but the file and the log's public key (no database).

Checks, naming what is wrong and where: each entry's leaf hash is recomputed from its canonical bytes; ``seq``
runs 0, 1, 2, ... with no gap, repeat or reordering; each entry's ``prev`` is the previous entry's leaf hash;
each checkpoint is signed by the given key and its root is the Merkle root of that many entries; and the
newest valid checkpoint covers every entry. The export format is described in :mod:`facegate.audit.base`.

It also lists the changes announced and never closed: an ``intent`` entry (written before a change) that no
later ``request`` entry names in its ``intent_seq``. That is not tampering, so the log can still be intact: it
marks a change whose outcome was never recorded (the process stopped, or the log refused the outcome), or one
still in flight while the log was exported.
"""

from __future__ import annotations

import base64
import binascii
import json
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from cryptography.hazmat.primitives.serialization import load_pem_public_key

from facegate.audit import merkle
from facegate.audit.canonical import GENESIS_PREV, canonical_json, checkpoint_message, key_id


@dataclass
class VerificationReport:
    """The outcome of :func:`verify_export`. ``ok`` only when ``problems`` is empty."""

    ok: bool
    entries: int
    checkpoints: int
    problems: list[str] = field(default_factory=list)
    size: int | None = None  # of the newest checkpoint with a valid signature
    root: str | None = None
    key_id: str | None = None
    unfinished: list[int] = field(default_factory=list)  # seq of each intent no outcome names


@dataclass
class _Entry:
    line: int
    leaf: bytes
    seq: int | None
    prev: Any


def _span(first: int, last: int, noun: str = "entry") -> str:
    return f"{noun} {first}" if first == last else f"{noun.replace('entry', 'entries')} {first}–{last}"


def verify_export(lines: Iterable[str], public_key_pem: bytes) -> VerificationReport:
    """Check an export line by line against the public key; every problem found is listed, not just the first.

    Raises ``ValueError`` if ``public_key_pem`` is not an Ed25519 public key (that is the caller's mistake, not
    the log's)."""
    public_key = load_pem_public_key(public_key_pem)
    if not isinstance(public_key, Ed25519PublicKey):
        raise ValueError("the public key is not an Ed25519 key")
    expected_key_id = key_id(public_key)
    problems: list[str] = []
    entries: list[_Entry] = []
    checkpoints: list[tuple[int, dict[str, Any]]] = []
    intents: set[int] = set()
    closed: set[int] = set()

    for number, text in enumerate(lines, 1):
        if not text.strip():
            continue
        try:
            item = json.loads(text)
        except ValueError as exc:
            problems.append(f"line {number} is not valid JSON ({exc})")
            continue
        kind = item.get("kind") if isinstance(item, dict) else None
        if kind == "entry" and isinstance(item.get("entry"), dict):
            entry = item["entry"]
            try:
                leaf = merkle.leaf_hash(canonical_json(entry))
            except ValueError as exc:
                problems.append(f"line {number}: the entry cannot be serialised canonically ({exc})")
                continue
            seq = entry.get("seq")
            if isinstance(seq, bool) or not isinstance(seq, int) or seq < 0:
                problems.append(f"line {number}: the entry has no valid seq ({seq!r})")
                seq = None
            entries.append(_Entry(number, leaf, seq, entry.get("prev")))
            if entry.get("event") == "intent" and seq is not None:
                intents.add(seq)
            elif entry.get("event") == "request" and isinstance(entry.get("intent_seq"), int):
                closed.add(entry["intent_seq"])
        elif kind == "checkpoint":
            checkpoints.append((number, item))
        else:
            problems.append(f"line {number} is neither an entry nor a checkpoint")

    problems += _check_sequence(entries)
    newest = _check_checkpoints(entries, checkpoints, public_key, expected_key_id, problems)
    covered = newest["size"] if newest else 0
    if not checkpoints:
        problems.append("the export has no checkpoint: no entry is covered by a signed tree head")
    elif covered < len(entries):
        span = _span(covered, len(entries) - 1)
        problems.append(f"{span} {'is' if covered == len(entries) - 1 else 'are'} not covered by any valid checkpoint")
    return VerificationReport(
        ok=not problems,
        entries=len(entries),
        checkpoints=len(checkpoints),
        problems=problems,
        size=newest["size"] if newest else None,
        root=newest["root"] if newest else None,
        key_id=expected_key_id,
        unfinished=sorted(intents - closed),
    )


def _check_sequence(entries: list[_Entry]) -> list[str]:
    """Gaps, repeats and reordering of ``seq``, then the ``prev`` chain between consecutive entries."""
    problems: list[str] = []
    numbered = [e for e in entries if e.seq is not None]
    counts = Counter(e.seq for e in numbered)
    for seq, count in sorted(counts.items()):
        if count > 1:
            lines = ", ".join(str(e.line) for e in numbered if e.seq == seq)
            problems.append(f"entry {seq} appears {count} times (lines {lines}): an entry was inserted or duplicated")
    present = sorted(counts)
    expected = 0
    for seq in present:
        if seq > expected:
            before = f"from {expected - 1}" if expected else "from the start"
            problems.append(f"{_span(expected, seq - 1)} missing: seq jumps {before} to {seq}")
        expected = seq + 1
    for before, after in zip(numbered, numbered[1:], strict=False):
        if after.seq < before.seq:
            problems.append(
                f"entries out of order: entry {after.seq} (line {after.line}) comes after entry {before.seq}"
            )
    previous: _Entry | None = None
    for entry in entries:
        if entry.seq == 0:
            if entry.prev != GENESIS_PREV:
                problems.append("entry 0 was altered: its prev is not the genesis value")
        elif (
            previous is not None
            and previous.seq is not None
            and entry.seq == previous.seq + 1
            and entry.prev != previous.leaf.hex()
        ):
            problems.append(f"entry {previous.seq} was altered: its hash does not match entry {entry.seq}'s prev")
        previous = entry
    return problems


def _check_checkpoints(
    entries: list[_Entry],
    checkpoints: list[tuple[int, dict[str, Any]]],
    public_key: Ed25519PublicKey,
    expected_key_id: str,
    problems: list[str],
) -> dict[str, Any] | None:
    """Signature and root of each checkpoint; returns the largest validly signed one that matches."""
    wanted = {cp.get("size") for _, cp in checkpoints if isinstance(cp.get("size"), int)}
    roots: dict[int, bytes] = {0: merkle.EMPTY_ROOT}
    frontier = merkle.CompactRange()
    for entry in entries:
        frontier.append(entry.leaf)
        if frontier.size in wanted:
            roots[frontier.size] = frontier.root()

    newest: dict[str, Any] | None = None
    for ordinal, (line, cp) in enumerate(checkpoints, 1):
        name = f"checkpoint {ordinal} (line {line}, size {cp.get('size')})"
        size, root, when, signature = cp.get("size"), cp.get("root"), cp.get("time"), cp.get("signature")
        if (
            isinstance(size, bool)
            or not isinstance(size, int)
            or size < 0
            or not isinstance(root, str)
            or isinstance(when, bool)
            or not isinstance(when, int | float)
            or not isinstance(signature, str)
        ):
            problems.append(f"{name} is malformed: it needs an integer size, a root, a time and a signature")
            continue
        signed = False
        if cp.get("key_id") != expected_key_id:
            problems.append(
                f"{name} was signed by key {cp.get('key_id')!r}, not by the given public key ({expected_key_id})"
            )
        else:
            try:
                public_key.verify(base64.b64decode(signature, validate=True), checkpoint_message(size, root, when))
                signed = True
            except (InvalidSignature, binascii.Error, ValueError):
                problems.append(f"bad signature on {name}")
        if size > len(entries):
            problems.append(
                f"{name} covers {size} entries but the export holds {len(entries)}: "
                f"{_span(len(entries), size - 1)} missing (truncated)"
            )
        elif roots[size].hex() != root:
            problems.append(f"{name} does not match the entries (root mismatch)")
        elif signed and (newest is None or size >= newest["size"]):
            newest = cp
    return newest

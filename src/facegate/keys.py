"""Access keys facegate issues: AWS-style key pairs whose secrets are sealed at rest under a server key file.

SigV4 is an HMAC, so the server must recover each secret to verify a signature: secrets are stored encrypted
(Fernet: AES-128-CBC + HMAC-SHA256) under ``server.key`` in the data directory, created with mode 0600.
"""

from __future__ import annotations

import os
import secrets
import string
import time
from dataclasses import dataclass
from pathlib import Path

from cryptography.fernet import Fernet, InvalidToken

from facegate.store import AccessKey, KeyStore

KEY_FILE = "server.key"
_ID_ALPHABET = string.ascii_uppercase + string.digits
_SECRET_ALPHABET = string.ascii_letters + string.digits + "/+"  # as AWS secrets


@dataclass(frozen=True)
class IssuedKey:
    """A key pair as shown to its holder, once."""

    access_key_id: str
    secret_access_key: str
    owner: str
    role: str

    def to_json(self) -> dict[str, str]:
        return {"AccessKeyId": self.access_key_id, "SecretAccessKey": self.secret_access_key}


OPERATOR_ROLE = "operator"


@dataclass(frozen=True)
class Principal:
    """Who a request acts for: a verified access key, or the local operator (the CLI, the Python API)."""

    access_key_id: str
    owner: str
    role: str
    use_case_id: str | None = None

    @classmethod
    def operator(cls, owner: str, actor: str = "local-cli") -> Principal:
        """The local operator acting for organisation ``owner``: gated like any key (its own Cedar entity
        type, permitted by the baseline), so a kill switch or a revocation stops it too."""
        return cls(f"{OPERATOR_ROLE}:{actor}", owner, OPERATOR_ROLE)

    @property
    def is_operator(self) -> bool:
        return self.role == OPERATOR_ROLE

    @property
    def actor(self) -> str:
        """Who acts: the operator's front end (``local-cli``, ``local-python-api``) or the access key."""
        return self.access_key_id.removeprefix(f"{OPERATOR_ROLE}:")


class KeyRing:
    def __init__(self, store: KeyStore, data_dir: Path, sealing_key: Path | None = None) -> None:
        """Secrets are sealed under ``sealing_key`` (a Fernet key file, created if absent), by default
        ``data_dir/server.key``; servers sharing one database must share this file."""
        self.store = store
        self.data_dir = Path(data_dir)
        self._fernet = Fernet(_server_key(Path(sealing_key) if sealing_key else Path(data_dir) / KEY_FILE))

    def issue(self, owner: str, role: str = "client", use_case_id: str | None = None) -> IssuedKey:
        """Create a key pair for ``owner`` (and the use case it is registered for); the secret is returned here
        and never again."""
        prefix = "AKIA" if role == "client" else "FGAD"
        key_id = prefix + "".join(secrets.choice(_ID_ALPHABET) for _ in range(16))
        secret = "".join(secrets.choice(_SECRET_ALPHABET) for _ in range(40))
        sealed = self._fernet.encrypt(secret.encode())
        self.store.add_key(AccessKey(key_id, owner, role, sealed, time.time(), use_case_id=use_case_id))
        return IssuedKey(key_id, secret, owner, role)

    def secret_for(self, access_key_id: str) -> tuple[Principal, str] | None:
        """The principal and clear secret of a key, or None for an unknown one. A revoked key still verifies:
        the policy gate refuses it, so the refusal names the revocation and is audited."""
        key = self.store.get_key(access_key_id)
        if key is None:
            return None
        try:
            secret = self._fernet.decrypt(key.sealed_secret).decode()
        except InvalidToken:  # sealed under another server key: unusable, as if unknown
            return None
        return Principal(key.access_key_id, key.owner, key.role, key.use_case_id), secret

    def seal(self, secret: str) -> bytes:
        """Another secret facegate must keep (an object source's key), sealed as access keys' secrets are."""
        return self._fernet.encrypt(secret.encode())

    def unseal(self, sealed: bytes) -> str | None:
        try:
            return self._fernet.decrypt(sealed).decode()
        except InvalidToken:
            return None

    def has_keys(self, role: str) -> bool:
        return self.store.count_keys(role) > 0


def _server_key(path: Path) -> bytes:
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        draft = path.with_name(f".{path.name}.{os.getpid()}")
        fd = os.open(draft, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "wb") as fh:
            fh.write(Fernet.generate_key())
            fh.flush()
            os.fsync(fh.fileno())
        # link() is atomic and fails if the key exists: of two processes starting at once, one key wins.
        try:
            os.link(draft, path)
        except FileExistsError:
            pass
        finally:
            draft.unlink()
    return path.read_bytes().strip()

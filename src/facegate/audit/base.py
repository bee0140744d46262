"""What every audit log does, wherever it keeps its entries: the entry, checkpoint and export formats, the hash
chain and Merkle frontier, signed checkpoints, group commit, queries on the signed records, proofs and live
verification. A storage (SQLite in :mod:`facegate.audit.log`, PostgreSQL in :mod:`facegate.audit.postgres`)
supplies only the transactions that read and write its tables.

Entry: the caller's record (a JSON object) plus ``seq`` (0, 1, 2, ...), ``time`` (epoch seconds, set if
absent) and ``prev`` (hex of the previous entry's leaf hash; 64 zeros for entry 0). Its bytes are the
canonical JSON ``json.dumps(entry, sort_keys=True, separators=(",", ":"), ensure_ascii=False)`` in UTF-8, and
its leaf hash is SHA-256(0x00 || bytes) (RFC 6962). ``prev`` chains the entries, so a verifier can name the
first altered one; the Merkle root over all leaf hashes is what checkpoints sign.

Checkpoint (signed tree head): ``{"size", "root" (hex), "time" (epoch float), "signature", "key_id"}``, where
``signature`` is base64 Ed25519 over::

    b"facegate-audit-checkpoint/v1\\n" + f"{size}\\n{root}\\n{json.dumps(time)}\\n"

and ``key_id`` is the first 16 hex digits of SHA-256 over the public key's DER. The signing key is an
unencrypted Ed25519 private key in PKCS#8 PEM (``openssl genpkey -algorithm ed25519`` writes one).

Export (JSON Lines, UTF-8), what an outside auditor verifies with only the file and the public key:

* one line per entry, in ``seq`` order: ``{"kind":"entry","entry":<entry>}``, where ``<entry>`` is the stored
  canonical bytes verbatim; re-serialising the parsed object canonically gives the leaf bytes back;
* then one line per checkpoint, oldest first: ``{"kind":"checkpoint","size":...,"root":...,"time":...,
  "signature":...,"key_id":...}``; the last one is made by the export itself and covers every entry.

What it proves: nobody without the signing key can alter, remove, insert or reorder entries covered by a
checkpoint without verification failing; whoever keeps an earlier checkpoint can also catch a rewrite by the
key holder (consistency proofs).

Query columns: each row also keeps copies of the record's ``time``, ``event``, ``organisation``, ``purpose``
and ``decision`` (and its ``seq`` and ``leaf_hash``) for SQL readers and proofs. They are not signed, so
nothing trusts them alone: :meth:`BaseAuditLog.verify` checks every one against the signed record bytes, and
:meth:`BaseAuditLog.entries` filters on the parsed record, using the ``time`` column only to narrow the scan.
"""

from __future__ import annotations

import base64
import json
import math
import os
import secrets
import tempfile
import threading
import time
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TextIO

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.serialization import (
    Encoding,
    NoEncryption,
    PrivateFormat,
    PublicFormat,
    load_pem_private_key,
)

from facegate.audit import merkle
from facegate.audit.canonical import GENESIS_PREV, canonical_json, checkpoint_message, key_id
from facegate.audit.verify import VerificationReport, verify_export
from facegate.errors import FacegateError

# Top-level record fields copied into columns of their own (string values only), for readers of the database.
# They are unsigned copies: verify() checks them and entries() filters on the record itself.
FILTER_COLUMNS = ("event", "organisation", "purpose", "decision")
QUERY_COLUMNS = ("time", *FILTER_COLUMNS)
# An entries row as a storage writes it, in this order.
ROW_COLUMNS = ("seq", "record", "leaf_hash", *QUERY_COLUMNS)
CHECKPOINT_FIELDS = ("size", "root", "time", "signature", "key_id")
ROWS_PER_PAGE = 500


class AuditUnavailable(FacegateError):
    """The audit log cannot be written: the request must be refused rather than served unaudited."""

    code = "InternalServerError"
    status = 500


class LogMismatch(ValueError):
    """A log cannot be made a copy of another: it holds entries the other does not have at the same place, or
    the other's entries or checkpoints do not verify."""


def unavailable(location: str, exc: BaseException) -> AuditUnavailable:
    """The error a caller gets when the log at ``location`` (a file, a database) cannot be written."""
    return AuditUnavailable(
        f"The request was refused because it could not be audited: the audit log {location} cannot be written ({exc})."
    )


@dataclass
class Chained:
    """Entries given their place in the log: the rows to insert and the tree's new state."""

    rows: list[tuple[Any, ...]]  # ROW_COLUMNS
    size: int
    frontier: bytes
    last_leaf: bytes | None

    @property
    def records(self) -> list[bytes]:
        return [row[1] for row in self.rows]


class _Pending:
    """One record waiting for the group commit that makes it durable."""

    __slots__ = ("entry", "done", "result", "error")

    def __init__(self, entry: dict[str, Any]) -> None:
        self.entry = entry
        self.done = threading.Event()
        self.result: dict[str, Any] | None = None
        self.error: Exception | None = None


class BaseAuditLog(ABC):
    """An append-only audit log signed with one Ed25519 key. Safe to share between threads; a storage makes it
    safe between processes by serialising its writers on a database lock.

    A storage implements :meth:`size`, :meth:`close` and the ``_store*``, ``_insert_checkpoints``, ``_page`` and
    ``_leaves`` primitives; each write primitive runs in one transaction that holds the storage's write lock, and
    raises whatever its driver raises (``database_errors``), which the log turns into :class:`AuditUnavailable`."""

    database_errors: tuple[type[BaseException], ...] = (OSError,)

    def __init__(self, signing_key: Ed25519PrivateKey, location: str, timeout: float) -> None:
        """``location`` names the log in errors (never with a password); ``timeout``: how long a write waits
        for another writer before giving up with :class:`AuditUnavailable`."""
        self._key = signing_key
        self.key_id = key_id(signing_key.public_key())
        self.location = location
        self.timeout = timeout
        self._queue: list[_Pending] = []
        self._queue_lock = threading.Lock()
        self._writing = False

    @property
    def public_key_pem(self) -> bytes:
        """The PEM public key that verifies this log's checkpoints."""
        return self._key.public_key().public_bytes(Encoding.PEM, PublicFormat.SubjectPublicKeyInfo)

    # What a storage provides

    @abstractmethod
    def size(self) -> int:
        """How many entries the log holds."""

    @abstractmethod
    def close(self) -> None:
        """Close this process's connections (threads reopen on next use)."""

    @abstractmethod
    def _store_chained(self, chain: Callable[[int, bytes, bytes | None], Chained]) -> list[bytes]:
        """In one transaction under the write lock: read the tree (size, frontier, last leaf hash), ``chain``
        entries onto it (:meth:`_chain`, :meth:`_chain_verbatim`), insert their rows and save the new tree;
        returns their records."""

    @abstractmethod
    def _insert_checkpoints(self, heads: list[dict[str, Any]]) -> None:
        """In one transaction under the write lock: store checkpoints signed elsewhere (by this log's key), in
        order."""

    @abstractmethod
    def _store_checkpoint(self) -> tuple[int, dict[str, Any]]:
        """In one transaction under the write lock: read the tree, :meth:`_signed_head` it and insert that;
        returns the checkpoint's id (which orders checkpoints) and the head."""

    @abstractmethod
    def _stored_checkpoints(self, up_to_id: int | None) -> list[tuple[Any, ...]]:
        """The checkpoints up to ``up_to_id`` (all when None) as CHECKPOINT_FIELDS tuples, by id."""

    @abstractmethod
    def _page(self, columns: str, after: int, conditions: list[tuple[str, str, Any]]) -> list[tuple[Any, ...]]:
        """At most ``ROWS_PER_PAGE`` rows of ``columns`` (starting with ``seq``) with ``seq > after`` and every
        ``(column, operator, value)`` condition, in seq order."""

    @abstractmethod
    def _leaves(self, size: int) -> list[bytes]:
        """The leaf hashes of entries 0 .. size - 1."""

    # What every log does

    def _unavailable(self, exc: BaseException) -> AuditUnavailable:
        return unavailable(self.location, exc)

    def _query_columns(self, entry: dict[str, Any]) -> tuple[Any, ...]:
        """The values of the QUERY_COLUMNS for ``entry``."""
        return query_columns(entry)

    def _chain(self, entries: list[dict[str, Any]], size: int, frontier: bytes, last_leaf: bytes | None) -> Chained:
        """Give each entry its ``time`` (if absent), ``seq`` and ``prev`` after the tree of ``size`` entries
        whose frontier and last leaf hash are given."""
        tree = merkle.CompactRange.from_bytes(size, frontier)
        rows = []
        for entry in entries:
            entry.setdefault("time", time.time())
            entry["seq"] = tree.size
            entry["prev"] = last_leaf.hex() if last_leaf else GENESIS_PREV
            data = canonical_json(entry)
            leaf = merkle.leaf_hash(data)
            rows.append((tree.size, data, leaf, *self._query_columns(entry)))
            tree.append(leaf)
            last_leaf = leaf
        return Chained(rows, tree.size, tree.to_bytes(), last_leaf)

    def _chain_verbatim(self, records: list[bytes], size: int, frontier: bytes, last_leaf: bytes | None) -> Chained:
        """Rows for entries chained elsewhere (another log's), their bytes kept: each must be the canonical form
        of the entry that comes next after the tree of ``size`` entries, whose last leaf hash is given."""
        tree = merkle.CompactRange.from_bytes(size, frontier)
        rows = []
        for data in records:
            prev = last_leaf.hex() if last_leaf else GENESIS_PREV
            try:
                entry = json.loads(data)
                canonical = canonical_json(entry) == data
            except (ValueError, TypeError):
                entry, canonical = None, False
            if not (
                canonical
                and isinstance(entry, dict)
                and entry.get("seq") == tree.size
                and entry.get("prev") == prev
                and _is_epoch(entry.get("time"))
            ):
                raise LogMismatch(
                    f"the entry copied as entry {tree.size} is not the canonical entry that follows entry "
                    f"{tree.size - 1} (seq {tree.size}, prev {prev[:16]}…): the source log is damaged, or another "
                    "writer appended meanwhile; run `facegate audit verify` on it"
                )
            leaf = merkle.leaf_hash(data)
            rows.append((tree.size, data, leaf, *self._query_columns(entry)))
            tree.append(leaf)
            last_leaf = leaf
        return Chained(rows, tree.size, tree.to_bytes(), last_leaf)

    def _signed_head(self, size: int, frontier: bytes) -> dict[str, Any]:
        """A checkpoint of the tree of ``size`` entries with the given frontier, signed now; O(log n)."""
        root = merkle.CompactRange.from_bytes(size, frontier).root().hex()
        now = time.time()
        signature = base64.b64encode(self._key.sign(checkpoint_message(size, root, now))).decode("ascii")
        return {"size": size, "root": root, "time": now, "signature": signature, "key_id": self.key_id}

    def _store(self, entries: list[dict[str, Any]]) -> list[bytes]:
        return self._store_chained(lambda *tree: self._chain(entries, *tree))

    def append(self, record: dict[str, Any]) -> dict[str, Any]:
        """Append one record and return the stored entry (with ``seq``, ``time``, ``prev``) once it is durable.

        Raises :class:`AuditUnavailable` when it cannot be written, ``ValueError``/``TypeError`` when the record
        is not a JSON object the log can store (it must not set ``seq`` or ``prev``; ``time`` is a number)."""
        return self._commit([_Pending(checked(record))])[0]

    def append_many(self, records: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """Append several records in one transaction (one disk sync), as ``append`` does one; in order."""
        return self._commit([_Pending(checked(record)) for record in records])

    def _commit(self, pendings: list[_Pending]) -> list[dict[str, Any]]:
        """Group commit: the first waiting thread becomes the writer and commits every queued record in one
        transaction (one disk sync for all of them); the others wait for their records' outcome."""
        if not pendings:
            return []
        with self._queue_lock:
            self._queue.extend(pendings)
            leader = not self._writing
            self._writing = True
        if leader:
            while True:
                with self._queue_lock:
                    batch, self._queue = self._queue, []
                    if not batch:
                        self._writing = False
                        break
                self._write_batch(batch)
        for pending in pendings:
            pending.done.wait()
            if pending.error is not None:
                raise pending.error
        return [pending.result for pending in pendings]

    def _write_batch(self, batch: list[_Pending]) -> None:
        try:
            written = self._store([pending.entry for pending in batch])
        except Exception as exc:  # every failure must reach the waiting callers, or they would wait forever
            error = exc if isinstance(exc, ValueError | TypeError | AuditUnavailable) else self._unavailable(exc)
            for pending in batch:
                pending.error = error
                pending.done.set()
            return
        for pending, data in zip(batch, written, strict=True):
            pending.result = json.loads(data)
            pending.done.set()

    def checkpoint(self) -> dict[str, Any]:
        """Sign and store the current tree head; O(log n), from the stored frontier."""
        return self._checkpoint()[1]

    def _checkpoint(self) -> tuple[int, dict[str, Any]]:
        try:
            return self._store_checkpoint()
        except self.database_errors as exc:
            raise self._unavailable(exc) from exc

    def copy_from(
        self, source: BaseAuditLog, *, batch: int = ROWS_PER_PAGE, on_batch: Callable[[int], None] | None = None
    ) -> tuple[int, int]:
        """Make this log a copy of ``source``, which must be signed by the same key: append the entries of
        ``source`` after this log's last, their bytes as they are (``batch`` per transaction, ``on_batch`` called
        with the count after each), then store the checkpoints of ``source`` this log lacks. What a copy cut short
        left here is a prefix of ``source``, and the next copy carries on from it; once the copy is complete,
        another changes nothing. Returns (entries appended, checkpoints added).

        Raises :class:`LogMismatch` when this log is not a prefix of ``source`` (it holds another deployment's
        log, or entries appended after a copy), or when what ``source`` holds does not verify; and whatever the
        storages' drivers raise when a log cannot be read or written (the copy stops; run it again)."""
        if source.key_id != self.key_id:
            raise LogMismatch(f"the source log is signed by key {source.key_id}, this one by {self.key_id}")
        total, here = source.size(), self.size()
        common = min(here, total)
        for seq, (mine, theirs) in enumerate(zip(self._leaves(common), source._leaves(common), strict=True)):
            if mine != theirs:
                raise LogMismatch(
                    f"the log there is another deployment's: its entry {seq} differs from the source's "
                    f"(leaf hash {bytes(mine).hex()[:16]}…, the source's {bytes(theirs).hex()[:16]}…)"
                )
        if here > total:
            raise LogMismatch(
                f"the log there holds the source's {total} entries and {here - total} more, written since a copy: "
                "the copy has been in use (copying again would overwrite what it holds now)"
            )
        appended = 0
        while here < total:
            end = min(here + batch, total)
            records = [bytes(data) for _, data in source._rows("seq, record", [("seq", ">=", here), ("seq", "<", end)])]
            written = self._store_chained(lambda *tree, records=records: self._chain_verbatim(records, *tree))
            appended += len(written)
            here += len(written)
            if on_batch is not None:
                on_batch(len(written))
        present = {tuple(head[name] for name in CHECKPOINT_FIELDS) for head in self.checkpoints()}
        # One signed after ``total`` was read (the source is in use) waits for the entries it covers.
        missing = [
            head
            for head in source.checkpoints()
            if head["size"] <= total and tuple(head[name] for name in CHECKPOINT_FIELDS) not in present
        ]
        if missing:
            self._check_heads(missing, total)
            self._insert_checkpoints(missing)
        return appended, len(missing)

    def _check_heads(self, heads: list[dict[str, Any]], size: int) -> None:
        """That each checkpoint is signed by this log's key and signs the root of this log's first entries."""
        wanted = {head["size"] for head in heads}
        roots = {0: merkle.EMPTY_ROOT.hex()}
        tree = merkle.CompactRange()
        for leaf in self._leaves(size):
            tree.append(bytes(leaf))
            if tree.size in wanted:
                roots[tree.size] = tree.root().hex()
        public_key = self._key.public_key()
        for head in heads:
            message = checkpoint_message(head["size"], head["root"], head["time"])
            try:
                public_key.verify(base64.b64decode(head["signature"], validate=True), message)
                signed = head["key_id"] == self.key_id
            except (InvalidSignature, ValueError):
                signed = False
            if not signed or roots.get(head["size"]) != head["root"]:
                raise LogMismatch(
                    f"the source's checkpoint of {head['size']} entries (signed at {head['time']}) does not verify "
                    "against its entries and key: run `facegate audit verify` on it"
                )

    def checkpoints(self) -> list[dict[str, Any]]:
        """Every stored checkpoint, oldest first."""
        return self._checkpoints(None)

    def _checkpoints(self, up_to_id: int | None) -> list[dict[str, Any]]:
        return [dict(zip(CHECKPOINT_FIELDS, row, strict=True)) for row in self._stored_checkpoints(up_to_id)]

    def entries(
        self,
        *,
        organisation: str | None = None,
        purpose: str | None = None,
        decision: str | None = None,
        event: str | None = None,
        since: float | None = None,
        until: float | None = None,
        limit: int | None = None,
    ) -> Iterator[dict[str, Any]]:
        """The entries, in ``seq`` order, whose top-level fields equal the given values and whose ``time`` is in
        ``[since, until)`` (epoch seconds); at most ``limit`` of them.

        The filters apply to the signed record, not to the query columns: an intruder who edits a row's
        ``decision`` column cannot hide a denial from ``decision="deny"``. So every record in the time range is
        parsed; the ``time`` column only narrows that range (and a ``time`` column edited to move a row out of
        it is what :meth:`verify` reports)."""
        wanted = {
            name: value
            for name, value in zip(FILTER_COLUMNS, (event, organisation, purpose, decision), strict=True)
            if value is not None
        }
        conditions = []
        if since is not None:
            conditions.append(("time", ">=", since))
        if until is not None:
            conditions.append(("time", "<", until))
        if limit is not None and limit <= 0:
            return
        found = 0
        for _, record in self._records(conditions):
            entry = json.loads(record)
            if not _in_time_range(entry.get("time"), since, until):
                continue
            if any(entry.get(name) != value for name, value in wanted.items()):
                continue
            yield entry
            found += 1
            if found == limit:
                return

    def verify(self, public_key_pem: bytes | None = None) -> VerificationReport:
        """Verify the live log: everything :func:`verify_export` checks on a fresh export (signed against
        ``public_key_pem``, default this log's own public key), plus every row's query columns, ``seq`` and
        ``leaf_hash`` against its signed record, since queries and proofs read those and no signature covers
        them. Signs a checkpoint, as :meth:`export` does."""
        with tempfile.TemporaryFile("w+", encoding="utf-8") as exported:
            self.export(exported)
            exported.seek(0)
            report = verify_export(exported, self.public_key_pem if public_key_pem is None else public_key_pem)
        report.problems += self.column_problems()
        report.ok = not report.problems
        return report

    def column_problems(self) -> list[str]:
        """Each row whose unsigned copies disagree with its signed record, named by entry and column."""
        problems: list[str] = []
        for seq, data, leaf, *columns in self._rows(", ".join(ROW_COLUMNS), []):
            problems += self._row_problems(seq, data, leaf, columns)
        return problems

    def _row_problems(self, seq: int, data: bytes | str, leaf: bytes, columns: list[Any]) -> list[str]:
        """What is wrong with one row's unsigned copies of its signed record ``data``."""
        try:
            entry = json.loads(data)
            expected = self._query_columns(entry)
            expected_leaf = merkle.leaf_hash(canonical_json(entry))
        except (ValueError, TypeError, KeyError, OverflowError):
            return [f"entry {seq}: the stored record is not an audit entry (JSON with a numeric time)"]
        problems = []
        if entry.get("seq") != seq:
            problems.append(f"entry {seq}: the seq column says {seq} but the signed record says {entry.get('seq')!r}")
        if leaf != expected_leaf:
            problems.append(f"entry {seq}: the leaf_hash column is not the hash of the signed record (proofs read it)")
        for name, stored, signed in zip(QUERY_COLUMNS, columns, expected, strict=True):
            if stored != signed or type(stored) is not type(signed):
                problems.append(
                    f"entry {seq}: the {name} column says {stored!r} but the signed record says {signed!r} "
                    "(queries read the column)"
                )
        return problems

    def _records(self, conditions: list[tuple[str, str, Any]]) -> Iterator[tuple[int, str]]:
        """(seq, canonical JSON text) in seq order."""
        for seq, record in self._rows("seq, record", conditions):
            yield seq, record.decode() if isinstance(record, bytes) else record

    def _rows(self, columns: str, conditions: list[tuple[str, str, Any]]) -> Iterator[tuple[Any, ...]]:
        """Rows of the entries (``columns`` starts with ``seq``) in seq order, a page at a time so no read stays
        open between pages."""
        after = -1
        while True:
            rows = self._page(columns, after, conditions)
            yield from rows
            if len(rows) < ROWS_PER_PAGE:
                return
            after = rows[-1][0]

    def _resolve_size(self, size: int | None) -> int:
        current = self.size()
        if size is None:
            return current
        if not 0 <= size <= current:
            raise ValueError(f"tree size {size} is not between 0 and the log's size {current}")
        return size

    def inclusion_proof(self, seq: int, size: int | None = None) -> dict[str, Any]:
        """Proof that entry ``seq`` is in the tree of ``size`` entries (default: all):
        ``{"seq", "size", "leaf_hash", "root", "proof"}``, hashes in hex. O(size)."""
        size = self._resolve_size(size)
        if not 0 <= seq < size:
            raise ValueError(f"entry {seq} is not in a tree of size {size}")
        leaves = self._leaves(size)
        return {
            "seq": seq,
            "size": size,
            "leaf_hash": leaves[seq].hex(),
            "root": merkle.root(leaves).hex(),
            "proof": [node.hex() for node in merkle.inclusion_proof(leaves, seq, size)],
        }

    def consistency_proof(self, old_size: int, new_size: int | None = None) -> dict[str, Any]:
        """Proof that the tree of ``old_size`` entries is a prefix of the tree of ``new_size`` (default: all):
        ``{"old_size", "new_size", "old_root", "new_root", "proof"}``, hashes in hex. O(new_size)."""
        new_size = self._resolve_size(new_size)
        if not 0 <= old_size <= new_size:
            raise ValueError(f"old size {old_size} is not between 0 and the new size {new_size}")
        leaves = self._leaves(new_size)
        return {
            "old_size": old_size,
            "new_size": new_size,
            "old_root": merkle.root(leaves[:old_size]).hex(),
            "new_root": merkle.root(leaves).hex(),
            "proof": [node.hex() for node in merkle.consistency_proof(leaves, old_size, new_size)],
        }

    def export(self, out: TextIO) -> int:
        """Write the log as JSON Lines (see the module docstring) after signing a fresh checkpoint that covers
        it; entries appended meanwhile wait for the next export. Returns the number of entries written."""
        checkpoint_id, head = self._checkpoint()
        count = 0
        for _, record in self._records([("seq", "<", head["size"])]):
            out.write('{"kind":"entry","entry":' + record + "}\n")
            count += 1
        for checkpoint in self._checkpoints(checkpoint_id):
            out.write(canonical_json({"kind": "checkpoint", **checkpoint}).decode() + "\n")
        return count


def load_signing_key(path: Path | str) -> Ed25519PrivateKey:
    """The Ed25519 private key in the file ``path`` (unencrypted PKCS#8 PEM). Raises ``ValueError`` naming the
    file when it cannot be read or holds anything else."""
    accepted = (
        "give the path of an unencrypted Ed25519 private key in PKCS#8 PEM, such as "
        "`openssl genpkey -algorithm ed25519 -out audit_signing.key` writes"
    )
    try:
        pem = Path(path).read_bytes()
    except OSError as exc:
        raise ValueError(f"The audit signing key {path} cannot be read ({exc.strerror or exc}): {accepted}.") from exc
    try:
        key = load_pem_private_key(pem, password=None)
    except (ValueError, TypeError) as exc:
        raise ValueError(f"The audit signing key {path} is not a PEM private key ({exc}): {accepted}.") from exc
    if not isinstance(key, Ed25519PrivateKey):
        raise ValueError(f"The audit signing key {path} is not an Ed25519 key ({type(key).__name__}): {accepted}.")
    return key


def create_signing_key(path: Path | str) -> bool:
    """Write a new Ed25519 signing key to ``path`` (PKCS#8 PEM, mode 0600) unless a file is there already;
    returns whether it wrote one. Written to a private temporary file and then hard-linked into place, which
    fails if the name exists: of two processes creating it together, one key wins and both use it."""
    path = Path(path)
    if path.exists():
        return False
    pem = Ed25519PrivateKey.generate().private_bytes(Encoding.PEM, PrivateFormat.PKCS8, NoEncryption())
    tmp = path.parent / f".{path.name}.{os.getpid()}.{secrets.token_hex(8)}"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        os.fchmod(fd, 0o600)
        os.write(fd, pem)
        os.fsync(fd)
    finally:
        os.close(fd)
    try:
        os.link(tmp, path)
    except FileExistsError:
        return False  # another process created it first; use that one
    finally:
        tmp.unlink()
    _fsync_dir(path.parent)
    return True


def query_columns(entry: dict[str, Any]) -> tuple[Any, ...]:
    """The values of the ``time``, ``event``, ``organisation``, ``purpose`` and ``decision`` columns."""
    return (float(entry["time"]), *(entry.get(n) if isinstance(entry.get(n), str) else None for n in FILTER_COLUMNS))


def checked(record: dict[str, Any]) -> dict[str, Any]:
    """A copy of ``record`` ready to append, or ``ValueError``/``TypeError`` saying why it cannot be: checked
    before it joins a group commit, so one caller's bad record never fails the others'."""
    entry = dict(record)
    for reserved in ("seq", "prev"):
        if reserved in entry:
            raise ValueError(f"the record sets {reserved!r}; the audit log assigns it")
    if "time" in entry and not _is_epoch(entry["time"]):
        raise ValueError(f"the record's time {entry['time']!r} is not epoch seconds (a finite number)")
    canonical_json(entry)  # not JSON (NaN, a set, a lone surrogate): refused here, not inside the batch
    return entry


def _in_time_range(when: Any, since: float | None, until: float | None) -> bool:
    if not _is_epoch(when):
        return False
    return (since is None or when >= since) and (until is None or when < until)


def _is_epoch(when: Any) -> bool:
    if isinstance(when, bool) or not isinstance(when, int | float):
        return False
    try:
        return math.isfinite(when)  # also stored in a double column: an int past a double's range is refused
    except OverflowError:
        return False


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)

"""The audit log: every request and follow-up event, append-only, in a Merkle tree with signed tree heads.

Storage: ``audit.sqlite3`` in the data directory (WAL, ``synchronous=FULL``), shared safely by several
processes: ``seq`` is assigned inside ``BEGIN IMMEDIATE``, and ``append`` returns only after ``COMMIT``, so a
returned entry is on disk. If it cannot be written, ``append`` raises :class:`AuditUnavailable` and the caller
refuses the request (fail closed).

Entry: the caller's record (a JSON object) plus ``seq`` (0, 1, 2, ...), ``time`` (epoch seconds, set if
absent) and ``prev`` (hex of the previous entry's leaf hash; 64 zeros for entry 0). Its bytes are the
canonical JSON ``json.dumps(entry, sort_keys=True, separators=(",", ":"), ensure_ascii=False)`` in UTF-8, and
its leaf hash is SHA-256(0x00 || bytes) (RFC 6962). ``prev`` chains the entries, so a verifier can name the
first altered one; the Merkle root over all leaf hashes is what checkpoints sign.

Checkpoint (signed tree head): ``{"size", "root" (hex), "time" (epoch float), "signature", "key_id"}``, where
``signature`` is base64 Ed25519 over::

    b"facegate-audit-checkpoint/v1\\n" + f"{size}\\n{root}\\n{json.dumps(time)}\\n"

and ``key_id`` is the first 16 hex digits of SHA-256 over the public key's DER. The signing key is
``audit_signing.key`` (PKCS#8 PEM, mode 0600); its public half is published as ``audit_public.pem``.

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
nothing trusts them alone: :meth:`AuditLog.verify` checks every one against the signed record bytes, and
:meth:`AuditLog.entries` filters on the parsed record, using the ``time`` index only to narrow the scan.
"""

from __future__ import annotations

import base64
import json
import math
import os
import secrets
import sqlite3
import tempfile
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import Any, TextIO

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

DB_NAME = "audit.sqlite3"
KEY_NAME = "audit_signing.key"
PUBLIC_KEY_NAME = "audit_public.pem"

# Each entry upgrades the schema by one version (PRAGMA user_version); never edit a released entry.
MIGRATIONS: list[str] = [
    """
    CREATE TABLE entries (
        seq INTEGER PRIMARY KEY,
        record BLOB NOT NULL,
        leaf_hash BLOB NOT NULL,
        time REAL NOT NULL,
        event TEXT,
        organisation TEXT,
        purpose TEXT,
        decision TEXT
    );
    CREATE INDEX entries_by_time ON entries (time);
    CREATE INDEX entries_by_event ON entries (event);
    CREATE INDEX entries_by_organisation ON entries (organisation);
    CREATE INDEX entries_by_purpose ON entries (purpose);
    CREATE INDEX entries_by_decision ON entries (decision);
    CREATE TABLE tree (
        id INTEGER PRIMARY KEY CHECK (id = 0),
        size INTEGER NOT NULL,
        frontier BLOB NOT NULL,
        last_leaf BLOB
    );
    INSERT INTO tree (id, size, frontier, last_leaf) VALUES (0, 0, x'', NULL);
    CREATE TABLE checkpoints (
        id INTEGER PRIMARY KEY,
        size INTEGER NOT NULL,
        root TEXT NOT NULL,
        time REAL NOT NULL,
        signature TEXT NOT NULL,
        key_id TEXT NOT NULL
    );
    """,
]

# Top-level record fields copied into columns of their own (string values only), for readers of the database.
# They are unsigned copies: verify() checks them and entries() filters on the record itself.
_FILTER_COLUMNS = ("event", "organisation", "purpose", "decision")
_QUERY_COLUMNS = ("time", *_FILTER_COLUMNS)
_PAGE = 500


class AuditUnavailable(FacegateError):
    """The audit log cannot be written: the request must be refused rather than served unaudited."""

    code = "InternalServerError"
    status = 500


def _unavailable(path: Path, exc: BaseException) -> AuditUnavailable:
    return AuditUnavailable(
        f"The request was refused because it could not be audited: the audit log {path} cannot be written ({exc})."
    )


class _Pending:
    """One record waiting for the group commit that makes it durable."""

    __slots__ = ("entry", "done", "result", "error")

    def __init__(self, entry: dict[str, Any]) -> None:
        self.entry = entry
        self.done = threading.Event()
        self.result: dict[str, Any] | None = None
        self.error: Exception | None = None


class AuditLog:
    """The append-only audit log of one data directory. Safe to share between threads (one SQLite connection
    each) and between processes (writers serialise on the database lock)."""

    def __init__(self, data_dir: Path | str, *, timeout: float = 10.0) -> None:
        """Open (creating if needed) the log and its signing key. ``timeout``: how long an append waits for
        another writer before giving up with :class:`AuditUnavailable`."""
        self.data_dir = Path(data_dir)
        self.path = self.data_dir / DB_NAME
        self.timeout = timeout
        self._local = threading.local()
        self._pid = os.getpid()
        self._connections: list[sqlite3.Connection] = []
        self._inherited: list[sqlite3.Connection] = []
        self._connections_lock = threading.Lock()
        self._queue: list[_Pending] = []
        self._queue_lock = threading.Lock()
        self._writing = False
        try:
            self.data_dir.mkdir(parents=True, exist_ok=True)
            self._key = _load_or_create_key(self.data_dir)
            self._migrate()
        except (sqlite3.Error, OSError, ValueError) as exc:
            raise _unavailable(self.path, exc) from exc
        self.key_id = key_id(self._key.public_key())

    @property
    def public_key_pem(self) -> bytes:
        """The PEM public key that verifies this log's checkpoints."""
        return self._key.public_key().public_bytes(Encoding.PEM, PublicFormat.SubjectPublicKeyInfo)

    @property
    def _db(self) -> sqlite3.Connection:
        if os.getpid() != self._pid:
            # A forked child must neither use nor close its parent's connections: keep them, untouched.
            self._inherited.extend(self._connections)
            self._pid, self._local, self._connections = os.getpid(), threading.local(), []
        conn = getattr(self._local, "conn", None)
        if conn is None:
            conn = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False, timeout=self.timeout)
            _enable_wal(conn, self.timeout)
            # FULL: an entry returned to the caller is on disk, so an allowed request is never unaudited.
            conn.execute("PRAGMA synchronous=FULL")
            self._local.conn = conn
            with self._connections_lock:
                self._connections.append(conn)
        return conn

    @contextmanager
    def _write(self) -> Iterator[sqlite3.Connection]:
        """``BEGIN IMMEDIATE`` … ``COMMIT``; rolls back on any failure, COMMIT's own included."""
        db = self._db
        db.execute("BEGIN IMMEDIATE")
        try:
            yield db
            db.execute("COMMIT")
        except BaseException:
            if db.in_transaction:
                with suppress(sqlite3.Error):  # the original error is the one to report
                    db.execute("ROLLBACK")
            raise

    def _migrate(self) -> None:
        with self._write() as db:
            version = db.execute("PRAGMA user_version").fetchone()[0]
            if version > len(MIGRATIONS):
                raise ValueError(f"schema version {version} is newer than this facegate's ({len(MIGRATIONS)})")
            for script in MIGRATIONS[version:]:
                for statement in script.split(";"):
                    if statement.strip():
                        db.execute(statement)
            db.execute(f"PRAGMA user_version = {len(MIGRATIONS)}")

    def close(self) -> None:
        """Close this process's connections (threads reopen on next use)."""
        with self._connections_lock:
            for conn in self._connections:
                conn.close()
            self._connections.clear()
        self._local = threading.local()

    def append(self, record: dict[str, Any]) -> dict[str, Any]:
        """Append one record and return the stored entry (with ``seq``, ``time``, ``prev``) once it is durable.

        Raises :class:`AuditUnavailable` when it cannot be written, ``ValueError``/``TypeError`` when the record
        is not a JSON object the log can store (it must not set ``seq`` or ``prev``; ``time`` is a number)."""
        return self._commit([_Pending(_checked(record))])[0]

    def append_many(self, records: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """Append several records in one transaction (one disk sync), as ``append`` does one; in order."""
        return self._commit([_Pending(_checked(record)) for record in records])

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
        written = []
        try:
            with self._write() as db:
                size, frontier_bytes, last_leaf = db.execute("SELECT size, frontier, last_leaf FROM tree").fetchone()
                frontier = merkle.CompactRange.from_bytes(size, frontier_bytes)
                for pending in batch:
                    entry = pending.entry
                    entry.setdefault("time", time.time())
                    entry["seq"] = frontier.size
                    entry["prev"] = last_leaf.hex() if last_leaf else GENESIS_PREV
                    data = canonical_json(entry)
                    leaf = merkle.leaf_hash(data)
                    db.execute(
                        "INSERT INTO entries (seq, record, leaf_hash, time, event, organisation, purpose, decision) "
                        "VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                        (frontier.size, data, leaf, *_query_columns(entry)),
                    )
                    frontier.append(leaf)
                    last_leaf = leaf
                    written.append(data)
                db.execute(
                    "UPDATE tree SET size = ?, frontier = ?, last_leaf = ? WHERE id = 0",
                    (frontier.size, frontier.to_bytes(), last_leaf),
                )
        except Exception as exc:  # every failure must reach the waiting callers, or they would wait forever
            error = exc if isinstance(exc, ValueError | TypeError) else _unavailable(self.path, exc)
            for pending in batch:
                pending.error = error
                pending.done.set()
            return
        for pending, data in zip(batch, written, strict=True):
            pending.result = json.loads(data)
            pending.done.set()

    def size(self) -> int:
        """How many entries the log holds."""
        return self._db.execute("SELECT size FROM tree").fetchone()[0]

    def checkpoint(self) -> dict[str, Any]:
        """Sign and store the current tree head; O(log n), from the stored frontier."""
        return self._checkpoint()[1]

    def _checkpoint(self) -> tuple[int, dict[str, Any]]:
        try:
            with self._write() as db:
                size, frontier_bytes = db.execute("SELECT size, frontier FROM tree").fetchone()
                root = merkle.CompactRange.from_bytes(size, frontier_bytes).root().hex()
                now = time.time()
                signature = base64.b64encode(self._key.sign(checkpoint_message(size, root, now))).decode("ascii")
                head = {"size": size, "root": root, "time": now, "signature": signature, "key_id": self.key_id}
                cur = db.execute(
                    "INSERT INTO checkpoints (size, root, time, signature, key_id) VALUES (?, ?, ?, ?, ?)",
                    (size, root, now, signature, self.key_id),
                )
        except (sqlite3.Error, OSError) as exc:
            raise _unavailable(self.path, exc) from exc
        return cur.lastrowid, head

    def checkpoints(self) -> list[dict[str, Any]]:
        """Every stored checkpoint, oldest first."""
        return self._checkpoints(None)

    def _checkpoints(self, up_to_id: int | None) -> list[dict[str, Any]]:
        rows = self._db.execute(
            "SELECT size, root, time, signature, key_id FROM checkpoints WHERE id <= ? ORDER BY id",
            (up_to_id if up_to_id is not None else 2**63 - 1,),
        ).fetchall()
        return [dict(zip(("size", "root", "time", "signature", "key_id"), row, strict=True)) for row in rows]

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
        parsed; the ``time`` index only narrows that range (and a ``time`` column edited to move a row out of
        it is what :meth:`verify` reports)."""
        wanted = {
            name: value
            for name, value in zip(_FILTER_COLUMNS, (event, organisation, purpose, decision), strict=True)
            if value is not None
        }
        where, params = [], []
        if since is not None:
            where.append("time >= ?")
            params.append(since)
        if until is not None:
            where.append("time < ?")
            params.append(until)
        if limit is not None and limit <= 0:
            return
        found = 0
        for _, record in self._records(where, params):
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
        for seq, data, leaf, *columns in self._rows(f"seq, record, leaf_hash, {', '.join(_QUERY_COLUMNS)}", [], []):
            problems += _row_problems(seq, data, leaf, columns)
        return problems

    def _records(self, where: list[str], params: list[Any]) -> Iterator[tuple[int, str]]:
        """(seq, canonical JSON text) in seq order."""
        for seq, record in self._rows("seq, record", where, params):
            yield seq, record.decode() if isinstance(record, bytes) else record

    def _rows(self, columns: str, where: list[str], params: list[Any]) -> Iterator[tuple[Any, ...]]:
        """Rows of ``entries`` (``columns`` starts with ``seq``) in seq order, a page at a time so no read stays
        open between pages."""
        condition = "".join(f" AND {clause}" for clause in where)
        after = -1
        while True:
            rows = self._db.execute(
                f"SELECT {columns} FROM entries WHERE seq > ?{condition} ORDER BY seq LIMIT ?",
                (after, *params, _PAGE),
            ).fetchall()
            yield from rows
            if len(rows) < _PAGE:
                return
            after = rows[-1][0]

    def _leaves(self, size: int) -> list[bytes]:
        rows = self._db.execute("SELECT leaf_hash FROM entries WHERE seq < ? ORDER BY seq", (size,)).fetchall()
        return [row[0] for row in rows]

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
        for _, record in self._records(["seq < ?"], [head["size"]]):
            out.write('{"kind":"entry","entry":' + record + "}\n")
            count += 1
        for checkpoint in self._checkpoints(checkpoint_id):
            out.write(canonical_json({"kind": "checkpoint", **checkpoint}).decode() + "\n")
        return count


def _enable_wal(conn: sqlite3.Connection, timeout: float) -> None:
    """Switch to WAL, retrying while busy: SQLite does not wait on its busy handler for this, so two processes
    creating the database together would otherwise see "database is locked"."""
    deadline, delay = time.monotonic() + timeout, 0.001
    while True:
        try:
            conn.execute("PRAGMA journal_mode=WAL")
            return
        except sqlite3.OperationalError as exc:
            busy = getattr(exc, "sqlite_errorcode", None) in (sqlite3.SQLITE_BUSY, sqlite3.SQLITE_LOCKED)
            if not busy or time.monotonic() > deadline:
                raise
        time.sleep(delay)
        delay = min(delay * 2, 0.05)


def _load_or_create_key(data_dir: Path) -> Ed25519PrivateKey:
    """The log's signing key, created on first use. Written to a private temporary file and then hard-linked
    into place, which fails if the name exists: of two processes starting together, one key wins and both
    use it."""
    path = data_dir / KEY_NAME
    if not path.exists():
        pem = Ed25519PrivateKey.generate().private_bytes(Encoding.PEM, PrivateFormat.PKCS8, NoEncryption())
        tmp = data_dir / f".{KEY_NAME}.{os.getpid()}.{secrets.token_hex(8)}"
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
            pass  # another process created it first; use that one
        finally:
            tmp.unlink()
        _fsync_dir(data_dir)
    key = load_pem_private_key(path.read_bytes(), password=None)
    if not isinstance(key, Ed25519PrivateKey):
        raise ValueError(f"{path} is not an Ed25519 private key")
    _publish_public_key(data_dir, key)
    return key


def _publish_public_key(data_dir: Path, key: Ed25519PrivateKey) -> None:
    """Write ``audit_public.pem`` (atomically, by rename) unless it already holds this key."""
    path = data_dir / PUBLIC_KEY_NAME
    pem = key.public_key().public_bytes(Encoding.PEM, PublicFormat.SubjectPublicKeyInfo)
    if path.exists() and path.read_bytes() == pem:
        return
    tmp = data_dir / f".{PUBLIC_KEY_NAME}.{os.getpid()}.{secrets.token_hex(8)}"
    tmp.write_bytes(pem)
    os.chmod(tmp, 0o644)
    os.replace(tmp, path)


def _query_columns(entry: dict[str, Any]) -> tuple[Any, ...]:
    """The values of the ``time``, ``event``, ``organisation``, ``purpose`` and ``decision`` columns."""
    return (float(entry["time"]), *(entry.get(n) if isinstance(entry.get(n), str) else None for n in _FILTER_COLUMNS))


def _in_time_range(when: Any, since: float | None, until: float | None) -> bool:
    if not _is_epoch(when):
        return False
    return (since is None or when >= since) and (until is None or when < until)


def _row_problems(seq: int, data: bytes | str, leaf: bytes, columns: list[Any]) -> list[str]:
    """What is wrong with one row's unsigned copies of its signed record ``data``."""
    try:
        entry = json.loads(data)
        expected = _query_columns(entry)
        expected_leaf = merkle.leaf_hash(canonical_json(entry))
    except (ValueError, TypeError, KeyError, OverflowError):
        return [f"entry {seq}: the stored record is not an audit entry (JSON with a numeric time)"]
    problems = []
    if entry.get("seq") != seq:
        problems.append(f"entry {seq}: the seq column says {seq} but the signed record says {entry.get('seq')!r}")
    if leaf != expected_leaf:
        problems.append(f"entry {seq}: the leaf_hash column is not the hash of the signed record (proofs read it)")
    for name, stored, signed in zip(_QUERY_COLUMNS, columns, expected, strict=True):
        if stored != signed or type(stored) is not type(signed):
            problems.append(
                f"entry {seq}: the {name} column says {stored!r} but the signed record says {signed!r} "
                "(queries read the column)"
            )
    return problems


def _checked(record: dict[str, Any]) -> dict[str, Any]:
    entry = dict(record)
    for reserved in ("seq", "prev"):
        if reserved in entry:
            raise ValueError(f"the record sets {reserved!r}; the audit log assigns it")
    if "time" in entry and not _is_epoch(entry["time"]):
        raise ValueError(f"the record's time {entry['time']!r} is not epoch seconds (a finite number)")
    return entry


def _is_epoch(when: Any) -> bool:
    if isinstance(when, bool) or not isinstance(when, int | float):
        return False
    try:
        return math.isfinite(when)  # also stored in a REAL column: an int past a double's range is refused
    except OverflowError:
        return False


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)

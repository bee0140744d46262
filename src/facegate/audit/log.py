"""The audit log of one data directory, in SQLite. The formats and guarantees are those of
:mod:`facegate.audit.base`.

Storage: ``audit.sqlite3`` in the data directory (WAL, ``synchronous=FULL``), shared safely by several
processes: ``seq`` is assigned inside ``BEGIN IMMEDIATE``, and ``append`` returns only after ``COMMIT``, so a
returned entry is on disk. If it cannot be written, ``append`` raises :class:`AuditUnavailable` and the caller
refuses the request (fail closed). The signing key is ``audit_signing.key`` in the data directory (created on
first use, mode 0600); its public half is published beside it as ``audit_public.pem``.
"""

from __future__ import annotations

import os
import secrets
import sqlite3
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from facegate.audit.base import (
    CHECKPOINT_FIELDS,
    ROW_COLUMNS,
    ROWS_PER_PAGE,
    BaseAuditLog,
    Chained,
    create_signing_key,
    load_signing_key,
    unavailable,
)

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


class AuditLog(BaseAuditLog):
    """The append-only audit log of one data directory. Safe to share between threads (one SQLite connection
    each) and between processes (writers serialise on the database lock)."""

    database_errors = (sqlite3.Error, OSError)

    def __init__(self, data_dir: Path | str, *, timeout: float = 10.0, read_only: bool = False) -> None:
        """Open (creating if needed) the log and its signing key. ``timeout``: how long an append waits for
        another writer before giving up with :class:`AuditUnavailable`. ``read_only``: open an existing log and
        key without writing anything (for reading it while it is copied elsewhere); every write fails."""
        self.data_dir = Path(data_dir)
        self.path = self.data_dir / DB_NAME
        self.read_only = read_only
        self._local = threading.local()
        self._pid = os.getpid()
        self._connections: list[sqlite3.Connection] = []
        self._inherited: list[sqlite3.Connection] = []
        self._connections_lock = threading.Lock()
        try:
            if read_only:
                if not self.path.is_file():
                    raise FileNotFoundError(f"{DB_NAME} not found in {self.data_dir}")
                key = load_signing_key(self.data_dir / KEY_NAME)
            else:
                self.data_dir.mkdir(parents=True, exist_ok=True)
                key = _load_or_create_key(self.data_dir)
        except (OSError, ValueError) as exc:
            raise unavailable(str(self.path), exc) from exc
        super().__init__(key, str(self.path), timeout)
        try:
            if read_only:
                self._check_schema()
            else:
                self._migrate()
        except (sqlite3.Error, OSError, ValueError) as exc:
            raise self._unavailable(exc) from exc

    @property
    def _db(self) -> sqlite3.Connection:
        if os.getpid() != self._pid:
            # A forked child must neither use nor close its parent's connections: keep them, untouched.
            self._inherited.extend(self._connections)
            self._pid, self._local, self._connections = os.getpid(), threading.local(), []
        conn = getattr(self._local, "conn", None)
        if conn is None:
            if self.read_only:
                conn = sqlite3.connect(
                    self.path.resolve().as_uri() + "?mode=ro", uri=True, isolation_level=None, check_same_thread=False
                )
            else:
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

    def _check_schema(self) -> None:
        version = self._db.execute("PRAGMA user_version").fetchone()[0]
        if version != len(MIGRATIONS):
            raise ValueError(
                f"schema version {version} is not this facegate's ({len(MIGRATIONS)}): open it once with this "
                "facegate to upgrade it, or upgrade facegate"
            )

    def close(self) -> None:
        """Close this process's connections (threads reopen on next use)."""
        with self._connections_lock:
            for conn in self._connections:
                conn.close()
            self._connections.clear()
        self._local = threading.local()

    def size(self) -> int:
        """How many entries the log holds."""
        return self._db.execute("SELECT size FROM tree").fetchone()[0]

    def _store_chained(self, chain: Callable[[int, bytes, bytes | None], Chained]) -> list[bytes]:
        with self._write() as db:
            chained = chain(*db.execute("SELECT size, frontier, last_leaf FROM tree").fetchone())
            db.executemany(
                f"INSERT INTO entries ({', '.join(ROW_COLUMNS)}) VALUES ({', '.join('?' * len(ROW_COLUMNS))})",
                chained.rows,
            )
            db.execute(
                "UPDATE tree SET size = ?, frontier = ?, last_leaf = ? WHERE id = 0",
                (chained.size, chained.frontier, chained.last_leaf),
            )
        return chained.records

    def _store_checkpoint(self) -> tuple[int, dict[str, Any]]:
        with self._write() as db:
            head = self._signed_head(*db.execute("SELECT size, frontier FROM tree").fetchone())
            cur = db.execute(
                "INSERT INTO checkpoints (size, root, time, signature, key_id) VALUES (?, ?, ?, ?, ?)",
                (head["size"], head["root"], head["time"], head["signature"], head["key_id"]),
            )
        return cur.lastrowid, head

    def _insert_checkpoints(self, heads: list[dict[str, Any]]) -> None:
        with self._write() as db:
            db.executemany(
                f"INSERT INTO checkpoints ({', '.join(CHECKPOINT_FIELDS)}) VALUES (?, ?, ?, ?, ?)",
                [tuple(head[name] for name in CHECKPOINT_FIELDS) for head in heads],
            )

    def _stored_checkpoints(self, up_to_id: int | None) -> list[tuple[Any, ...]]:
        return self._db.execute(
            "SELECT size, root, time, signature, key_id FROM checkpoints WHERE id <= ? ORDER BY id",
            (up_to_id if up_to_id is not None else 2**63 - 1,),
        ).fetchall()

    def _page(self, columns: str, after: int, conditions: list[tuple[str, str, Any]]) -> list[tuple[Any, ...]]:
        where = "".join(f" AND {column} {operator} ?" for column, operator, _ in conditions)
        return self._db.execute(
            f"SELECT {columns} FROM entries WHERE seq > ?{where} ORDER BY seq LIMIT ?",
            (after, *(value for _, _, value in conditions), ROWS_PER_PAGE),
        ).fetchall()

    def _leaves(self, size: int) -> list[bytes]:
        rows = self._db.execute("SELECT leaf_hash FROM entries WHERE seq < ? ORDER BY seq", (size,)).fetchall()
        return [row[0] for row in rows]


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
    """The log's signing key, created on first use, with its public half published beside it."""
    path = data_dir / KEY_NAME
    create_signing_key(path)
    key = load_signing_key(path)
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

"""The audit log in PostgreSQL, for servers on several hosts that share one database: every process appends to
one log, with one hash chain and one Merkle tree. The formats and guarantees are those of
:mod:`facegate.audit.base`; an export verifies with :func:`facegate.audit.verify_export` as a SQLite one does.

Tables, prefixed ``audit_`` so that the log can share a database with the store: ``audit_entries`` (one row
per entry, its canonical bytes in ``record``), ``audit_tree`` (one row: size, Merkle frontier, last leaf
hash), ``audit_checkpoints`` and ``audit_meta`` (the schema version and the signing key's public half).

Appends stay linear across processes and hosts: a write transaction begins by locking the one ``audit_tree``
row (``SELECT ... FOR UPDATE``), so writers take turns reading the tree, inserting their rows at the next
``seq`` and saving the new tree. ``append`` returns after ``COMMIT``, which PostgreSQL makes durable (a
session whose server turns ``synchronous_commit`` off turns it back on). A writer that cannot have that lock
within ``timeout`` (``lock_timeout``), or cannot reach or write the database, gets :class:`AuditUnavailable`.

The signing key comes from configuration, the same file on every host, not from a data directory. The first
process to open a database's log records the key's public half; a process configured with another key is
refused, so one log is never signed by two keys.
"""

from __future__ import annotations

import math
import os
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives.serialization import load_pem_public_key

from facegate.audit.base import (
    CHECKPOINT_FIELDS,
    ROW_COLUMNS,
    ROWS_PER_PAGE,
    BaseAuditLog,
    Chained,
    load_signing_key,
    query_columns,
)
from facegate.audit.canonical import key_id

try:
    import psycopg
    from psycopg.conninfo import conninfo_to_dict
except ImportError as exc:  # an optional dependency: the embedded log needs none of it
    raise ModuleNotFoundError(
        "The PostgreSQL audit log needs psycopg: install facegate with the extra, pip install 'facegate[postgresql]'."
    ) from exc

# Each entry upgrades the schema by one version (audit_meta's schema_version); never edit a released entry.
# Only time is indexed: entries() narrows its scan by it; the other query columns are for SQL readers.
MIGRATIONS: list[str] = [
    """
    CREATE TABLE audit_entries (
        seq BIGINT PRIMARY KEY,
        record BYTEA NOT NULL,
        leaf_hash BYTEA NOT NULL,
        time DOUBLE PRECISION NOT NULL,
        event TEXT,
        organisation TEXT,
        purpose TEXT,
        decision TEXT
    );
    CREATE INDEX audit_entries_by_time ON audit_entries (time);
    CREATE TABLE audit_tree (
        id INTEGER PRIMARY KEY CHECK (id = 0),
        size BIGINT NOT NULL,
        frontier BYTEA NOT NULL,
        last_leaf BYTEA
    );
    INSERT INTO audit_tree (id, size, frontier, last_leaf) VALUES (0, 0, ''::bytea, NULL);
    CREATE TABLE audit_checkpoints (
        id BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
        size BIGINT NOT NULL,
        root TEXT NOT NULL,
        time DOUBLE PRECISION NOT NULL,
        signature TEXT NOT NULL,
        key_id TEXT NOT NULL
    );
    """,
]

# Serialises migrations of one database's log between processes starting together (b"fg-audit"; the store's
# migrations take another key).
MIGRATION_LOCK = 0x66672D6175646974
_INSERT_ENTRY = f"INSERT INTO audit_entries ({', '.join(ROW_COLUMNS)}) VALUES ({', '.join(['%s'] * len(ROW_COLUMNS))})"


class PostgresAuditLog(BaseAuditLog):
    """The append-only audit log in a PostgreSQL database, shared by every process on every host that opens it
    with the same URL and signing key. Safe to share between threads (one connection each)."""

    database_errors = (psycopg.Error, OSError)

    def __init__(self, url: str, signing_key: Path | str, *, timeout: float = 10.0) -> None:
        """Open (creating or upgrading its tables if needed) the log in the database at ``url``
        (``postgresql://user:password@host:port/database``), signed with the Ed25519 private key in the PKCS#8
        PEM file ``signing_key``. ``timeout``: how long a write waits for another writer, and a connection for
        the server, before giving up with :class:`AuditUnavailable`.

        Raises ``ValueError`` when the URL or the key file is wrong, or when the database's log is signed by
        another key; :class:`AuditUnavailable` when the database cannot be reached or written."""
        if not url.startswith(("postgresql://", "postgres://")):
            raise ValueError(
                "The PostgreSQL audit log is opened from a URL such as postgresql://user:password@host:5432/facegate; "
                f"got one that starts {url.split('://', 1)[0]!r}."
            )
        self.url = url
        self._local = threading.local()
        self._pid = os.getpid()
        self._connections: list[psycopg.Connection] = []
        self._inherited: list[psycopg.Connection] = []
        self._connections_lock = threading.Lock()
        super().__init__(load_signing_key(signing_key), _location(url), timeout)
        try:
            self._migrate()
        except psycopg.Error as exc:
            raise self._unavailable(exc) from exc

    @property
    def _db(self) -> psycopg.Connection:
        if os.getpid() != self._pid:
            # A forked child must neither use nor close its parent's connections (closing would end the
            # parent's session on the shared socket): keep them, untouched.
            self._inherited.extend(self._connections)
            self._pid, self._local, self._connections = os.getpid(), threading.local(), []
        conn = getattr(self._local, "conn", None)
        if conn is None or conn.closed or conn.broken:
            if conn is not None:
                self._forget(conn)
            conn = self._connect()
            self._local.conn = conn
            with self._connections_lock:
                self._connections.append(conn)
        return conn

    def _connect(self) -> psycopg.Connection:
        try:
            conn = psycopg.connect(self.url, autocommit=True, connect_timeout=max(2, math.ceil(self.timeout)))
        except psycopg.Error as exc:
            raise self._unavailable(exc) from exc
        try:
            # lock_timeout bounds the wait for the tree row; synchronous_commit "off" would let COMMIT return
            # before the entry is durable, so a session that inherits it turns it back on.
            conn.execute(
                "SELECT set_config('lock_timeout', %s, false), CASE current_setting('synchronous_commit') "
                "WHEN 'off' THEN set_config('synchronous_commit', 'on', false) END",
                (f"{max(1, round(self.timeout * 1000))}ms",),
            )
        except psycopg.Error as exc:
            conn.close()
            raise self._unavailable(exc) from exc
        return conn

    def _forget(self, conn: psycopg.Connection) -> None:
        with suppress(psycopg.Error):
            conn.close()
        with self._connections_lock, suppress(ValueError):
            self._connections.remove(conn)

    @contextmanager
    def _locked_tree(self) -> Iterator[tuple[psycopg.Connection, tuple[Any, ...]]]:
        """A transaction holding the tree row's lock, and the tree (size, frontier, last leaf hash)."""
        db = self._db
        with db.transaction():
            tree = db.execute("SELECT size, frontier, last_leaf FROM audit_tree WHERE id = 0 FOR UPDATE").fetchone()
            yield db, tree

    def _migrate(self) -> None:
        public_key = self.public_key_pem.decode("ascii")
        db = self._db
        with db.transaction():
            db.execute("SELECT pg_advisory_xact_lock(%s)", (MIGRATION_LOCK,))
            db.execute("CREATE TABLE IF NOT EXISTS audit_meta (key TEXT PRIMARY KEY, value TEXT NOT NULL)")
            meta = dict(db.execute("SELECT key, value FROM audit_meta").fetchall())
            version = int(meta.get("schema_version", 0))
            if version > len(MIGRATIONS):
                raise self._unavailable(
                    RuntimeError(f"schema version {version} is newer than this facegate's ({len(MIGRATIONS)})")
                )
            for script in MIGRATIONS[version:]:
                db.execute(script)
            if version < len(MIGRATIONS):
                db.execute(
                    "INSERT INTO audit_meta (key, value) VALUES ('schema_version', %s) "
                    "ON CONFLICT (key) DO UPDATE SET value = excluded.value",
                    (str(len(MIGRATIONS)),),
                )
            signer = meta.get("public_key")
            if signer is None:
                db.execute("INSERT INTO audit_meta (key, value) VALUES ('public_key', %s)", (public_key,))
            elif signer != public_key:
                raise ValueError(
                    f"The audit log {self.location} is signed by key {key_id(load_pem_public_key(signer.encode()))}, "
                    f"but the configured signing key is {self.key_id}: every host must use the log's one key."
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
        return self._db.execute("SELECT size FROM audit_tree WHERE id = 0").fetchone()[0]

    def _query_columns(self, entry: dict[str, Any]) -> tuple[Any, ...]:
        # PostgreSQL's text cannot hold NUL, so such a value is not copied; queries read the record anyway.
        return tuple(None if isinstance(value, str) and "\x00" in value else value for value in query_columns(entry))

    def _store_chained(self, chain: Callable[[int, bytes, bytes | None], Chained]) -> list[bytes]:
        with self._locked_tree() as (db, tree):
            chained = chain(*tree)
            db.cursor().executemany(_INSERT_ENTRY, chained.rows)
            db.execute(
                "UPDATE audit_tree SET size = %s, frontier = %s, last_leaf = %s WHERE id = 0",
                (chained.size, chained.frontier, chained.last_leaf),
            )
        return chained.records

    def _store_checkpoint(self) -> tuple[int, dict[str, Any]]:
        # Under the tree's lock, so checkpoint ids follow the order of the sizes they sign.
        with self._locked_tree() as (db, (size, frontier, _)):
            head = self._signed_head(size, frontier)
            (checkpoint_id,) = db.execute(
                "INSERT INTO audit_checkpoints (size, root, time, signature, key_id) "
                "VALUES (%s, %s, %s, %s, %s) RETURNING id",
                tuple(head[name] for name in CHECKPOINT_FIELDS),
            ).fetchone()
        return checkpoint_id, head

    def _insert_checkpoints(self, heads: list[dict[str, Any]]) -> None:
        with self._locked_tree() as (db, _):
            db.cursor().executemany(
                f"INSERT INTO audit_checkpoints ({', '.join(CHECKPOINT_FIELDS)}) VALUES (%s, %s, %s, %s, %s)",
                [tuple(head[name] for name in CHECKPOINT_FIELDS) for head in heads],
            )

    def _stored_checkpoints(self, up_to_id: int | None) -> list[tuple[Any, ...]]:
        return self._db.execute(
            f"SELECT {', '.join(CHECKPOINT_FIELDS)} FROM audit_checkpoints WHERE id <= %s ORDER BY id",
            (up_to_id if up_to_id is not None else 2**63 - 1,),
        ).fetchall()

    def _page(self, columns: str, after: int, conditions: list[tuple[str, str, Any]]) -> list[tuple[Any, ...]]:
        where = "".join(f" AND {column} {operator} %s" for column, operator, _ in conditions)
        return self._db.execute(
            f"SELECT {columns} FROM audit_entries WHERE seq > %s{where} ORDER BY seq LIMIT %s",
            (after, *(value for _, _, value in conditions), ROWS_PER_PAGE),
        ).fetchall()

    def _leaves(self, size: int) -> list[bytes]:
        rows = self._db.execute("SELECT leaf_hash FROM audit_entries WHERE seq < %s ORDER BY seq", (size,)).fetchall()
        return [row[0] for row in rows]


def _location(url: str) -> str:
    """The database named for messages, without the URL's password."""
    try:
        params = conninfo_to_dict(url)
    except psycopg.Error:
        return "in PostgreSQL"
    where = params.get("host") or "localhost"
    if params.get("port"):
        where += f":{params['port']}"
    if params.get("dbname"):
        return f"in the PostgreSQL database {params['dbname']} on {where}"
    return f"in PostgreSQL on {where}"

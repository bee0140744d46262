"""The embedded store: one SQLite database (WAL, synchronous FULL) in the data directory.

It is the source of truth; the in-memory galleries used for search are derived from it and reloaded when a
collection's ``generation`` (bumped by every change to its faces) moves, also when another process wrote.
"""

from __future__ import annotations

import json
import sqlite3
import threading
import time
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np

from facegate.errors import ResourceAlreadyExistsException
from facegate.store import (
    AccessKey,
    Collection,
    Gallery,
    Organisation,
    PolicyState,
    StoredFace,
    StoredUser,
    UseCase,
)
from facegate.store.job_tables import JobTables
from facegate.store.review_tables import DDL as REVIEW_DDL
from facegate.store.review_tables import ReviewTables
from facegate.store.sql_tables import SourceTables
from facegate.store.vector_index import ANN_MIN_FACES, IndexedCollection, VectorIndexes, face_key

# Each entry upgrades the schema by one version; never edit a released entry, append a new one.
MIGRATIONS: list[str] = [
    """
    CREATE TABLE collections (
        pk INTEGER PRIMARY KEY,
        owner TEXT NOT NULL,
        collection_id TEXT NOT NULL,
        model_version TEXT NOT NULL,
        created_at REAL NOT NULL,
        generation INTEGER NOT NULL DEFAULT 0,
        UNIQUE (owner, collection_id)
    );
    CREATE TABLE collection_tags (
        collection_pk INTEGER NOT NULL REFERENCES collections(pk) ON DELETE CASCADE,
        key TEXT NOT NULL,
        value TEXT NOT NULL,
        PRIMARY KEY (collection_pk, key)
    );
    CREATE TABLE users (
        collection_pk INTEGER NOT NULL REFERENCES collections(pk) ON DELETE CASCADE,
        user_id TEXT NOT NULL,
        status TEXT NOT NULL,
        created_at REAL NOT NULL,
        PRIMARY KEY (collection_pk, user_id)
    );
    CREATE TABLE faces (
        face_id TEXT PRIMARY KEY,
        collection_pk INTEGER NOT NULL REFERENCES collections(pk) ON DELETE CASCADE,
        image_id TEXT NOT NULL,
        external_image_id TEXT,
        box_width REAL NOT NULL,
        box_height REAL NOT NULL,
        box_left REAL NOT NULL,
        box_top REAL NOT NULL,
        confidence REAL NOT NULL,
        image_hash TEXT NOT NULL,
        model_version TEXT NOT NULL,
        embedding BLOB NOT NULL,
        indexed_at REAL NOT NULL,
        user_id TEXT,
        FOREIGN KEY (collection_pk, user_id) REFERENCES users(collection_pk, user_id)
    );
    CREATE INDEX faces_by_collection ON faces (collection_pk, face_id);
    CREATE INDEX faces_by_image ON faces (collection_pk, image_hash);
    CREATE INDEX faces_by_user ON faces (collection_pk, user_id);
    CREATE TABLE request_tokens (
        collection_pk INTEGER NOT NULL REFERENCES collections(pk) ON DELETE CASCADE,
        operation TEXT NOT NULL,
        token TEXT NOT NULL,
        fingerprint TEXT NOT NULL,
        created_at REAL NOT NULL,
        PRIMARY KEY (collection_pk, operation, token)
    );
    """,
    """
    CREATE TABLE access_keys (
        access_key_id TEXT PRIMARY KEY,
        owner TEXT NOT NULL,
        role TEXT NOT NULL,
        sealed_secret BLOB NOT NULL,
        created_at REAL NOT NULL,
        revoked_at REAL
    );
    CREATE INDEX access_keys_by_owner ON access_keys (owner);
    """,
    """
    CREATE TABLE organisations (
        name TEXT PRIMARY KEY,
        category TEXT NOT NULL,
        jurisdiction TEXT NOT NULL,
        status TEXT NOT NULL,
        groups TEXT NOT NULL,
        created_at REAL NOT NULL,
        status_reason TEXT
    );
    CREATE TABLE use_cases (
        use_case_id TEXT PRIMARY KEY,
        organisation TEXT NOT NULL REFERENCES organisations(name),
        purpose TEXT NOT NULL,
        collections TEXT,
        valid_from REAL NOT NULL,
        valid_until REAL,
        legal_basis TEXT,
        authorisation_reference TEXT,
        approver TEXT,
        status TEXT NOT NULL,
        created_at REAL NOT NULL,
        status_reason TEXT
    );
    ALTER TABLE access_keys ADD COLUMN use_case_id TEXT REFERENCES use_cases(use_case_id);
    CREATE TABLE policy_state (
        template TEXT PRIMARY KEY,
        active INTEGER NOT NULL,
        params TEXT NOT NULL,
        changed_at REAL NOT NULL,
        reason TEXT NOT NULL
    );
    INSERT INTO meta (key, value) VALUES ('governance_generation', '0');
    """,
    """
    ALTER TABLE collections ADD COLUMN retention TEXT;
    CREATE INDEX faces_by_age ON faces (collection_pk, indexed_at);
    """,
    # Counts kept in the row, updated in the same transaction as the faces: reading a collection stays O(1)
    # however many faces it holds (it is read on every request).
    """
    ALTER TABLE collections ADD COLUMN face_count INTEGER NOT NULL DEFAULT 0;
    ALTER TABLE collections ADD COLUMN user_count INTEGER NOT NULL DEFAULT 0;
    UPDATE collections SET
        face_count = (SELECT COUNT(*) FROM faces f WHERE f.collection_pk = collections.pk),
        user_count = (SELECT COUNT(*) FROM users u WHERE u.collection_pk = collections.pk);
    """,
    # Each face's key in its collection's ANN index, so the index maps back to faces through SQLite and holds
    # no strings itself. facegate_ann_key is vector_index.face_key, registered on the connection.
    """
    ALTER TABLE faces ADD COLUMN ann_key INTEGER;
    UPDATE faces SET ann_key = facegate_ann_key(face_id);
    CREATE INDEX faces_by_ann_key ON faces (collection_pk, ann_key);
    """,
    # A collection's pk is never reused (SQLite reuses the largest rowid once it is deleted): caches and index
    # files keyed by it would otherwise serve a deleted collection's faces to the next one created.
    """
    INSERT OR IGNORE INTO meta (key, value) SELECT 'last_collection_pk', CAST(COALESCE(MAX(pk), 0) AS TEXT) FROM collections;
    """,
    # Where an organisation's S3Object images are read from (Bucket = name).
    """
    CREATE TABLE IF NOT EXISTS object_sources (
        owner TEXT NOT NULL,
        name TEXT NOT NULL,
        kind TEXT NOT NULL,
        location TEXT NOT NULL,
        sealed_secret BLOB,
        created_at REAL NOT NULL,
        PRIMARY KEY (owner, name)
    );
    """,
    # Stored-video jobs and what they found.
    """
    CREATE TABLE IF NOT EXISTS video_jobs (
        job_id TEXT PRIMARY KEY,
        owner TEXT NOT NULL,
        api TEXT NOT NULL,
        status TEXT NOT NULL,
        request TEXT NOT NULL,
        requester TEXT NOT NULL,
        client_token TEXT,
        fingerprint TEXT,
        status_message TEXT,
        video_metadata TEXT,
        progress_ms INTEGER NOT NULL DEFAULT 0,
        attempts INTEGER NOT NULL DEFAULT 0,
        worker TEXT,
        heartbeat REAL,
        created_at REAL NOT NULL,
        updated_at REAL NOT NULL,
        review_cases TEXT
    );
    CREATE UNIQUE INDEX IF NOT EXISTS video_jobs_by_token ON video_jobs (owner, api, client_token)
        WHERE client_token IS NOT NULL;
    CREATE INDEX IF NOT EXISTS video_jobs_by_status ON video_jobs (status, owner);
    CREATE TABLE IF NOT EXISTS video_job_findings (
        seq INTEGER PRIMARY KEY AUTOINCREMENT,
        job_id TEXT NOT NULL REFERENCES video_jobs (job_id) ON DELETE CASCADE,
        timestamp_ms INTEGER NOT NULL,
        person_index INTEGER,
        body TEXT NOT NULL
    );
    CREATE INDEX IF NOT EXISTS findings_by_time ON video_job_findings (job_id, timestamp_ms, person_index, seq);
    CREATE INDEX IF NOT EXISTS findings_by_person ON video_job_findings (job_id, person_index, timestamp_ms, seq);
    """,
    # Human review of identifications, and the console's users.
    REVIEW_DDL,
]

DB_NAME = "facegate.sqlite3"

_FACE_COLUMNS = (
    "face_id, image_id, external_image_id, box_width, box_height, box_left, box_top, confidence, "
    "image_hash, model_version, indexed_at, user_id"
)


class SqliteStore(ReviewTables, JobTables, SourceTables):
    """``Store`` on SQLite. Safe to share between threads: each thread gets its own connection.

    ``read_only``: open an existing store without writing anything (no migration, no WAL switch), for
    reading it while it is copied elsewhere; every write fails."""

    def __init__(self, data_dir: Path | str, *, ann_min_faces: int = ANN_MIN_FACES, read_only: bool = False) -> None:
        self.data_dir = Path(data_dir)
        self.path = self.data_dir / DB_NAME
        self.read_only = read_only
        if read_only and not self.path.is_file():
            raise FileNotFoundError(
                f"{self.data_dir} holds no facegate store ({DB_NAME} not found): give an embedded deployment's "
                "data directory"
            )
        if not read_only:
            self.data_dir.mkdir(parents=True, exist_ok=True)
        self._local = threading.local()
        self._galleries: dict[int, tuple[int, Gallery]] = {}
        self._galleries_lock = threading.Lock()
        self._connections: list[sqlite3.Connection] = []
        if read_only:
            self._check_schema()
        else:
            self._migrate()
        self.vector_indexes = VectorIndexes(self.data_dir / "indexes", ann_min_faces)

    @property
    def _db(self) -> sqlite3.Connection:
        conn = getattr(self._local, "conn", None)
        if conn is None:
            if self.read_only:
                conn = sqlite3.connect(
                    self.path.resolve().as_uri() + "?mode=ro", uri=True, isolation_level=None, check_same_thread=False
                )
            else:
                conn = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False, timeout=30.0)
                _enable_wal(conn)
                # FULL: a transaction acknowledged to a client is on disk before we answer.
                conn.execute("PRAGMA synchronous=FULL")
                conn.execute("PRAGMA foreign_keys=ON")
            conn.create_function("facegate_ann_key", 1, face_key, deterministic=True)
            self._local.conn = conn
            self._connections.append(conn)
        return conn

    def _write(self):
        return _Transaction(self._db)

    def _migrate(self) -> None:
        with self._write() as db:
            db.execute("CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL)")
            row = db.execute("SELECT value FROM meta WHERE key = 'schema_version'").fetchone()
            version = int(row[0]) if row else 0
            if version > len(MIGRATIONS):
                raise RuntimeError(
                    f"{self.path} has schema version {version}, newer than this facegate ({len(MIGRATIONS)}): "
                    "upgrade facegate."
                )
            for script in MIGRATIONS[version:]:
                for statement in script.split(";"):
                    if statement.strip():
                        db.execute(statement)
            db.execute(
                "INSERT INTO meta (key, value) VALUES ('schema_version', ?) "
                "ON CONFLICT(key) DO UPDATE SET value = excluded.value",
                (str(len(MIGRATIONS)),),
            )

    def _check_schema(self) -> None:
        version = self.schema_version()
        if version != len(MIGRATIONS):
            newer = version > len(MIGRATIONS)
            raise RuntimeError(
                f"{self.path} has schema version {version}, {'newer' if newer else 'older'} than this facegate's "
                f"({len(MIGRATIONS)}): "
                + ("upgrade facegate." if newer else "open it once with this facegate (any command) to upgrade it.")
            )

    def schema_version(self) -> int:
        return int(self._db.execute("SELECT value FROM meta WHERE key = 'schema_version'").fetchone()[0])

    # Collections

    def create_collection(self, owner: str, collection_id: str, model_version: str, tags: dict[str, str]) -> Collection:
        created = time.time()
        with self._write() as db:
            pk = db.execute(
                "UPDATE meta SET value = CAST(MAX(CAST(value AS INTEGER), (SELECT COALESCE(MAX(pk), 0) FROM "
                "collections)) + 1 AS TEXT) WHERE key = 'last_collection_pk' RETURNING CAST(value AS INTEGER)"
            ).fetchone()[0]
            try:
                db.execute(
                    "INSERT INTO collections (pk, owner, collection_id, model_version, created_at) "
                    "VALUES (?, ?, ?, ?, ?)",
                    (pk, owner, collection_id, model_version, created),
                )
            except sqlite3.IntegrityError:
                raise ResourceAlreadyExistsException(f"The collection id: {collection_id} already exists") from None
            db.executemany(
                "INSERT INTO collection_tags (collection_pk, key, value) VALUES (?, ?, ?)",
                [(pk, k, v) for k, v in tags.items()],
            )
        return Collection(pk, owner, collection_id, model_version, created)

    _COLLECTION_SELECT = (
        "SELECT c.pk, c.owner, c.collection_id, c.model_version, c.created_at, c.face_count, c.user_count "
        "FROM collections c "
    )

    def get_collection(self, owner: str, collection_id: str) -> Collection | None:
        row = self._db.execute(
            self._COLLECTION_SELECT + "WHERE c.owner = ? AND c.collection_id = ?", (owner, collection_id)
        ).fetchone()
        return Collection(*row) if row else None

    def list_collections(self, owner: str, after: str | None, limit: int) -> list[Collection]:
        rows = self._db.execute(
            self._COLLECTION_SELECT + "WHERE c.owner = ? AND c.collection_id > ? ORDER BY c.collection_id LIMIT ?",
            (owner, after or "", limit),
        ).fetchall()
        return [Collection(*row) for row in rows]

    def delete_collection(self, collection: Collection) -> None:
        with self._write() as db:
            # Faces first: they reference users, which the cascade would otherwise meet in either order.
            db.execute("DELETE FROM faces WHERE collection_pk = ?", (collection.pk,))
            db.execute("DELETE FROM collections WHERE pk = ?", (collection.pk,))
        with self._galleries_lock:
            self._galleries.pop(collection.pk, None)
        self.vector_indexes.drop(collection.pk)

    def set_retention(self, collection: Collection, rule: dict | None) -> None:
        with self._write() as db:
            db.execute(
                "UPDATE collections SET retention = ? WHERE pk = ?",
                (None if rule is None else json.dumps(rule, sort_keys=True), collection.pk),
            )

    def retention_rules(self) -> list[tuple[Collection, dict]]:
        """Every collection that has a retention rule, with the rule."""
        rows = self._db.execute(
            self._COLLECTION_SELECT.replace("FROM collections c", ", c.retention FROM collections c")
            + "WHERE c.retention IS NOT NULL ORDER BY c.owner, c.collection_id"
        ).fetchall()
        return [(Collection(*row[:7]), json.loads(row[7])) for row in rows]

    def collections_tagged(self, key: str, value: str) -> list[Collection]:
        rows = self._db.execute(
            self._COLLECTION_SELECT
            + "JOIN collection_tags t ON t.collection_pk = c.pk WHERE t.key = ? AND t.value = ?",
            (key, value),
        ).fetchall()
        return [Collection(*row) for row in rows]

    def faces_indexed_before(self, collection: Collection, cutoff: float) -> list[StoredFace]:
        rows = self._db.execute(
            f"SELECT {_FACE_COLUMNS} FROM faces WHERE collection_pk = ? AND indexed_at < ? ORDER BY indexed_at",
            (collection.pk, cutoff),
        ).fetchall()
        return [_face(row) for row in rows]

    # Faces

    def add_faces(self, collection: Collection, faces: list[StoredFace]) -> list[StoredFace]:
        """Store the faces of one image, unless faces of the same image and ExternalImageId are already
        stored: then nothing is written and those are returned (checked inside the write transaction, so
        two concurrent IndexFaces of one image cannot both store it)."""
        if not faces:
            return []
        with self._write() as db:
            existing = self.faces_of_image(collection, faces[0].image_hash, faces[0].external_image_id)
            if existing:
                return existing
            db.executemany(
                f"INSERT INTO faces ({_FACE_COLUMNS}, collection_pk, embedding, ann_key) "
                "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                [
                    (
                        f.face_id,
                        f.image_id,
                        f.external_image_id,
                        *f.box,
                        f.confidence,
                        f.image_hash,
                        f.model_version,
                        f.indexed_at,
                        f.user_id,
                        collection.pk,
                        np.asarray(f.embedding, dtype="<f4").tobytes(),
                        face_key(f.face_id),
                    )
                    for f in faces
                ],
            )
            generation = self._bump(db, collection, len(faces))
        self.vector_indexes.added(
            _indexed(collection), generation, _keys(f.face_id for f in faces), np.stack([f.embedding for f in faces])
        )
        return faces

    def faces_of_image(
        self, collection: Collection, image_hash: str, external_image_id: str | None
    ) -> list[StoredFace]:
        rows = self._db.execute(
            f"SELECT {_FACE_COLUMNS} FROM faces WHERE collection_pk = ? AND image_hash = ? "
            "AND external_image_id IS ? ORDER BY rowid",
            (collection.pk, image_hash, external_image_id),
        ).fetchall()
        return [_face(row) for row in rows]

    def list_faces(
        self,
        collection: Collection,
        after: str | None,
        limit: int,
        *,
        user_id: str | None = None,
        face_ids: list[str] | None = None,
    ) -> list[StoredFace]:
        sql = f"SELECT {_FACE_COLUMNS} FROM faces WHERE collection_pk = ? AND face_id > ?"
        args: list = [collection.pk, after or ""]
        if user_id is not None:
            sql += " AND user_id = ?"
            args.append(user_id)
        if face_ids is not None:
            sql += f" AND face_id IN ({','.join('?' * len(face_ids))})"
            args.extend(face_ids)
        sql += " ORDER BY face_id LIMIT ?"
        args.append(limit)
        return [_face(row) for row in self._db.execute(sql, args).fetchall()]

    def get_faces(
        self, collection: Collection, face_ids: list[str], *, with_embeddings: bool = False
    ) -> list[StoredFace]:
        if not face_ids:
            return []
        extra = ", embedding" if with_embeddings else ""
        rows = self._db.execute(
            f"SELECT {_FACE_COLUMNS}{extra} FROM faces WHERE collection_pk = ? "
            f"AND face_id IN ({','.join('?' * len(face_ids))})",
            (collection.pk, *face_ids),
        ).fetchall()
        return [_face(row) for row in rows]

    def delete_faces(self, collection: Collection, face_ids: list[str]) -> list[str]:
        """Delete faces (user associations are the service's rule, not the store's); returns those deleted."""
        if not face_ids:
            return []
        marks = ",".join("?" * len(face_ids))
        with self._write() as db:
            found = [
                r[0]
                for r in db.execute(
                    f"SELECT face_id FROM faces WHERE collection_pk = ? AND face_id IN ({marks})",
                    (collection.pk, *face_ids),
                )
            ]
            db.execute(
                f"DELETE FROM faces WHERE collection_pk = ? AND face_id IN ({marks})", (collection.pk, *face_ids)
            )
            if found:
                generation = self._bump(db, collection, -len(found))
        if found:
            self.vector_indexes.removed(_indexed(collection), generation, _keys(found))
        return found

    # Approximate search (the index itself lives in vector_index.py; this is its view of the database)

    def nearest_faces(self, collection: Collection, probe: np.ndarray, k: int) -> list[StoredFace] | None:
        """Up to ``k`` approximate nearest faces, current and with embeddings, for exact re-ranking; None when
        the collection is small enough for exact search over ``gallery``."""
        if not self.vector_indexes.applies(collection.face_count):
            return None
        keys = self.vector_indexes.candidates(self, _indexed(collection), probe, k)
        if not len(keys):
            return []
        # Re-read: a face deleted by any process since the index last caught up drops out here.
        rows = self._db.execute(
            f"SELECT {_FACE_COLUMNS}, embedding FROM faces WHERE collection_pk = ? "
            f"AND ann_key IN ({','.join('?' * len(keys))})",
            (collection.pk, *keys.astype(np.int64).tolist()),
        ).fetchall()
        return [_face(row) for row in rows]

    def rebuild_vector_index(self, collection: Collection) -> int:
        """Rebuild a collection's ANN index from the database; returns the number of faces indexed (0 when the
        collection is small enough for exact search, which needs no index)."""
        if not self.vector_indexes.applies(collection.face_count):
            return 0
        return len(self.vector_indexes.rebuild(self, _indexed(collection)))

    def prepare_vector_indexes(self) -> int:
        """Load (or rebuild) the ANN index of every collection large enough to need one, so a server pays for
        it at startup rather than on its first search; returns how many were prepared."""
        rows = self._db.execute(
            self._COLLECTION_SELECT + "WHERE c.face_count >= ? ORDER BY c.face_count DESC",
            (self.vector_indexes.min_faces,),
        ).fetchall()
        for row in rows:
            self.vector_indexes.prepare(self, _indexed(Collection(*row)))
        return len(rows)

    def index_generation(self, collection: IndexedCollection) -> int:
        return self._generation(collection)

    def index_keys(self, collection: IndexedCollection) -> tuple[int, np.ndarray]:
        db = self._db
        db.execute("BEGIN")  # one snapshot: the generation labels exactly these keys
        try:
            generation = self._generation(collection)
            keys = np.fromiter(
                (r[0] for r in db.execute("SELECT ann_key FROM faces WHERE collection_pk = ?", (collection.pk,))),
                dtype=np.int64,
            )
        finally:
            db.execute("COMMIT")
        return generation, np.unique(keys.astype(np.uint64))

    def index_embeddings(self, collection: IndexedCollection, keys: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        rows = self._db.execute(
            f"SELECT ann_key, embedding FROM faces WHERE collection_pk = ? AND ann_key IN ({','.join('?' * len(keys))})",
            (collection.pk, *np.asarray(keys).astype(np.int64).tolist()),
        ).fetchall()
        dims = len(rows[0][1]) // 4 if rows else 0
        found = np.array([r[0] for r in rows], dtype=np.int64).astype(np.uint64)
        return found, np.frombuffer(b"".join(r[1] for r in rows), dtype="<f4").reshape(len(rows), dims)

    def gallery(self, collection: Collection) -> Gallery:
        generation = self._generation(collection)
        with self._galleries_lock:
            cached = self._galleries.get(collection.pk)
        if cached and cached[0] == generation:
            return cached[1]
        # Read generation and rows in one snapshot so the cache is never newer-labelled than its content.
        db = self._db
        db.execute("BEGIN")
        try:
            generation = self._generation(collection)
            rows = db.execute(
                "SELECT face_id, user_id, embedding FROM faces WHERE collection_pk = ? ORDER BY rowid",
                (collection.pk,),
            ).fetchall()
        finally:
            db.execute("COMMIT")
        dims = len(rows[0][2]) // 4 if rows else 0
        matrix = np.frombuffer(b"".join(r[2] for r in rows), dtype="<f4").reshape(len(rows), dims)
        gallery = Gallery([r[0] for r in rows], [r[1] for r in rows], matrix)
        with self._galleries_lock:
            self._galleries[collection.pk] = (generation, gallery)
        return gallery

    def _generation(self, collection: Collection | IndexedCollection) -> int:
        row = self._db.execute("SELECT generation FROM collections WHERE pk = ?", (collection.pk,)).fetchone()
        return row[0] if row else -1

    @staticmethod
    def _bump(db: sqlite3.Connection, collection: Collection, faces_added: int = 0) -> int:
        rows = db.execute(
            "UPDATE collections SET generation = generation + 1, face_count = face_count + ? WHERE pk = ? "
            "RETURNING generation",
            (faces_added, collection.pk),
        ).fetchall()
        return rows[0][0] if rows else -1

    # Users

    def create_user(self, collection: Collection, user_id: str) -> None:
        with self._write() as db:
            db.execute(
                "INSERT INTO users (collection_pk, user_id, status, created_at) VALUES (?, ?, 'ACTIVE', ?)",
                (collection.pk, user_id, time.time()),
            )
            db.execute("UPDATE collections SET user_count = user_count + 1 WHERE pk = ?", (collection.pk,))

    def get_user(self, collection: Collection, user_id: str) -> StoredUser | None:
        row = self._db.execute(
            "SELECT u.user_id, u.status, u.created_at, (SELECT COUNT(*) FROM faces f WHERE "
            "f.collection_pk = u.collection_pk AND f.user_id = u.user_id) FROM users u "
            "WHERE u.collection_pk = ? AND u.user_id = ?",
            (collection.pk, user_id),
        ).fetchone()
        return StoredUser(*row) if row else None

    def delete_user(self, collection: Collection, user_id: str) -> None:
        with self._write() as db:
            db.execute(
                "UPDATE faces SET user_id = NULL WHERE collection_pk = ? AND user_id = ?", (collection.pk, user_id)
            )
            deleted = db.execute(
                "DELETE FROM users WHERE collection_pk = ? AND user_id = ?", (collection.pk, user_id)
            ).rowcount
            db.execute("UPDATE collections SET user_count = user_count - ? WHERE pk = ?", (deleted, collection.pk))
            self._bump(db, collection)

    def list_users(self, collection: Collection, after: str | None, limit: int) -> list[StoredUser]:
        rows = self._db.execute(
            "SELECT u.user_id, u.status, u.created_at, (SELECT COUNT(*) FROM faces f WHERE "
            "f.collection_pk = u.collection_pk AND f.user_id = u.user_id) FROM users u "
            "WHERE u.collection_pk = ? AND u.user_id > ? ORDER BY u.user_id LIMIT ?",
            (collection.pk, after or "", limit),
        ).fetchall()
        return [StoredUser(*row) for row in rows]

    def set_face_user(self, collection: Collection, face_ids: list[str], user_id: str | None) -> None:
        if not face_ids:
            return
        with self._write() as db:
            db.execute(
                f"UPDATE faces SET user_id = ? WHERE collection_pk = ? AND face_id IN ({','.join('?' * len(face_ids))})",
                (user_id, collection.pk, *face_ids),
            )
            self._bump(db, collection)

    # Tags

    def tags(self, collection: Collection) -> dict[str, str]:
        rows = self._db.execute(
            "SELECT key, value FROM collection_tags WHERE collection_pk = ? ORDER BY key", (collection.pk,)
        )
        return dict(rows.fetchall())

    def set_tags(self, collection: Collection, tags: dict[str, str]) -> None:
        with self._write() as db:
            db.executemany(
                "INSERT INTO collection_tags (collection_pk, key, value) VALUES (?, ?, ?) "
                "ON CONFLICT(collection_pk, key) DO UPDATE SET value = excluded.value",
                [(collection.pk, k, v) for k, v in tags.items()],
            )

    def remove_tags(self, collection: Collection, keys: list[str]) -> None:
        with self._write() as db:
            db.executemany(
                "DELETE FROM collection_tags WHERE collection_pk = ? AND key = ?", [(collection.pk, k) for k in keys]
            )

    # Idempotency tokens (ClientRequestToken)

    def recall_request(self, collection: Collection, operation: str, token: str) -> str | None:
        row = self._db.execute(
            "SELECT fingerprint FROM request_tokens WHERE collection_pk = ? AND operation = ? AND token = ?",
            (collection.pk, operation, token),
        ).fetchone()
        return row[0] if row else None

    def remember_request(self, collection: Collection, operation: str, token: str, fingerprint: str) -> None:
        with self._write() as db:
            db.execute(
                "INSERT OR REPLACE INTO request_tokens (collection_pk, operation, token, fingerprint, created_at) "
                "VALUES (?, ?, ?, ?, ?)",
                (collection.pk, operation, token, fingerprint, time.time()),
            )

    # Access keys (secrets arrive sealed: the store never sees them in clear)

    def add_key(self, key: AccessKey) -> None:
        with self._write() as db:
            db.execute(
                "INSERT INTO access_keys (access_key_id, owner, role, sealed_secret, created_at, use_case_id) "
                "VALUES (?, ?, ?, ?, ?, ?)",
                (key.access_key_id, key.owner, key.role, key.sealed_secret, key.created_at, key.use_case_id),
            )
            self._bump_governance(db)

    def get_key(self, access_key_id: str) -> AccessKey | None:
        row = self._db.execute(
            "SELECT access_key_id, owner, role, sealed_secret, created_at, revoked_at, use_case_id FROM access_keys "
            "WHERE access_key_id = ?",
            (access_key_id,),
        ).fetchone()
        return AccessKey(*row) if row else None

    def count_keys(self, role: str) -> int:
        return self._db.execute("SELECT COUNT(*) FROM access_keys WHERE role = ?", (role,)).fetchone()[0]

    def revoke_key(self, access_key_id: str) -> bool:
        with self._write() as db:
            changed = db.execute(
                "UPDATE access_keys SET revoked_at = ? WHERE access_key_id = ? AND revoked_at IS NULL",
                (time.time(), access_key_id),
            ).rowcount
            self._bump_governance(db)
        return bool(changed)

    # Governance

    @staticmethod
    def _bump_governance(db: sqlite3.Connection) -> None:
        db.execute("UPDATE meta SET value = CAST(value AS INTEGER) + 1 WHERE key = 'governance_generation'")

    # The shared tables' primitives (sql_tables.SqlTables): a transaction, a read, the governance generation

    @contextmanager
    def _transaction(self) -> Iterator:
        with self._write() as db:
            yield lambda sql, params: db.execute(sql, params)

    def _query(self, sql: str, params: tuple = ()) -> list[tuple]:
        return self._db.execute(sql, params).fetchall()

    def _governance_changed(self, run) -> None:
        run("UPDATE meta SET value = CAST(value AS INTEGER) + 1 WHERE key = 'governance_generation'", ())

    def get_setting(self, key: str) -> str | None:
        row = self._db.execute("SELECT value FROM meta WHERE key = ?", ("setting:" + key,)).fetchone()
        return row[0] if row else None

    def set_setting(self, key: str, value: str | None) -> None:
        with self._write() as db:
            if value is None:
                db.execute("DELETE FROM meta WHERE key = ?", ("setting:" + key,))
            else:
                db.execute(
                    "INSERT INTO meta (key, value) VALUES (?, ?) ON CONFLICT(key) DO UPDATE SET value = excluded.value",
                    ("setting:" + key, value),
                )
            self._bump_governance(db)

    def governance_generation(self) -> int:
        return int(self._db.execute("SELECT value FROM meta WHERE key = 'governance_generation'").fetchone()[0])

    def add_organisation(self, organisation: Organisation) -> None:
        o = organisation
        with self._write() as db:
            try:
                db.execute(
                    "INSERT INTO organisations (name, category, jurisdiction, status, groups, created_at, status_reason) "
                    "VALUES (?, ?, ?, ?, ?, ?, ?)",
                    (
                        o.name,
                        o.category,
                        o.jurisdiction,
                        o.status,
                        json.dumps(list(o.groups)),
                        o.created_at,
                        o.status_reason,
                    ),
                )
            except sqlite3.IntegrityError:
                raise ResourceAlreadyExistsException(f"Organisation {o.name} already exists.") from None
            self._bump_governance(db)

    _ORG_COLUMNS = "name, category, jurisdiction, status, groups, created_at, status_reason"

    def get_organisation(self, name: str) -> Organisation | None:
        row = self._db.execute(f"SELECT {self._ORG_COLUMNS} FROM organisations WHERE name = ?", (name,)).fetchone()
        return _organisation(row) if row else None

    def list_organisations(self) -> list[Organisation]:
        rows = self._db.execute(f"SELECT {self._ORG_COLUMNS} FROM organisations ORDER BY name").fetchall()
        return [_organisation(row) for row in rows]

    def update_organisation(
        self, name: str, *, status: str | None = None, reason: str | None = None, groups: tuple[str, ...] | None = None
    ) -> None:
        with self._write() as db:
            if status is not None:
                db.execute(
                    "UPDATE organisations SET status = ?, status_reason = ? WHERE name = ?", (status, reason, name)
                )
            if groups is not None:
                db.execute("UPDATE organisations SET groups = ? WHERE name = ?", (json.dumps(list(groups)), name))
            self._bump_governance(db)

    _USE_CASE_COLUMNS = (
        "use_case_id, organisation, purpose, collections, valid_from, valid_until, legal_basis, "
        "authorisation_reference, approver, status, created_at, status_reason"
    )

    def add_use_case(self, use_case: UseCase) -> None:
        u = use_case
        with self._write() as db:
            db.execute(
                f"INSERT INTO use_cases ({self._USE_CASE_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (
                    u.use_case_id,
                    u.organisation,
                    u.purpose,
                    None if u.collections is None else json.dumps(list(u.collections)),
                    u.valid_from,
                    u.valid_until,
                    u.legal_basis,
                    u.authorisation_reference,
                    u.approver,
                    u.status,
                    u.created_at,
                    u.status_reason,
                ),
            )
            self._bump_governance(db)

    def get_use_case(self, use_case_id: str) -> UseCase | None:
        row = self._db.execute(
            f"SELECT {self._USE_CASE_COLUMNS} FROM use_cases WHERE use_case_id = ?", (use_case_id,)
        ).fetchone()
        return _use_case(row) if row else None

    def list_use_cases(self, organisation: str | None = None) -> list[UseCase]:
        sql = f"SELECT {self._USE_CASE_COLUMNS} FROM use_cases"
        args: tuple = ()
        if organisation is not None:
            sql += " WHERE organisation = ?"
            args = (organisation,)
        return [_use_case(row) for row in self._db.execute(sql + " ORDER BY created_at", args).fetchall()]

    def set_use_case_status(self, use_case_id: str, status: str, reason: str) -> None:
        with self._write() as db:
            db.execute(
                "UPDATE use_cases SET status = ?, status_reason = ? WHERE use_case_id = ?",
                (status, reason, use_case_id),
            )
            self._bump_governance(db)

    def policy_states(self) -> dict[str, PolicyState]:
        rows = self._db.execute("SELECT template, active, params, changed_at, reason FROM policy_state").fetchall()
        return {r[0]: PolicyState(r[0], bool(r[1]), json.loads(r[2]), r[3], r[4]) for r in rows}

    def set_policy_state(self, state: PolicyState) -> None:
        with self._write() as db:
            db.execute(
                "INSERT INTO policy_state (template, active, params, changed_at, reason) VALUES (?, ?, ?, ?, ?) "
                "ON CONFLICT(template) DO UPDATE SET active = excluded.active, params = excluded.params, "
                "changed_at = excluded.changed_at, reason = excluded.reason",
                (
                    state.template,
                    int(state.active),
                    json.dumps(state.params, sort_keys=True),
                    state.changed_at,
                    state.reason,
                ),
            )
            self._bump_governance(db)

    # Export, for copying the store elsewhere (`facegate store copy`): every row as it is, ids and times included

    @contextmanager
    def snapshot(self) -> Iterator[None]:
        """One read transaction on this thread's connection: everything read inside sees one state of the store."""
        db = self._db
        db.execute("BEGIN")
        try:
            yield
        finally:
            db.execute("COMMIT")

    def all_collections(self) -> list[tuple[Collection, dict | None]]:
        """Every collection of every owner, by pk, with its retention rule (None: no rule)."""
        rows = self._db.execute(
            self._COLLECTION_SELECT.replace("FROM collections c", ", c.retention FROM collections c") + "ORDER BY c.pk"
        ).fetchall()
        return [(Collection(*row[:7]), None if row[7] is None else json.loads(row[7])) for row in rows]

    def last_collection_pk(self) -> int:
        """The largest collection pk ever handed out (deleted collections' included), never to be reused."""
        row = self._db.execute(
            "SELECT MAX(COALESCE((SELECT CAST(value AS INTEGER) FROM meta WHERE key = 'last_collection_pk'), 0), "
            "COALESCE((SELECT MAX(pk) FROM collections), 0))"
        ).fetchone()
        return row[0]

    def faces_with_embeddings(self, collection: Collection, batch: int) -> Iterator[list[StoredFace]]:
        """The collection's faces with their embeddings, in the order they were indexed, ``batch`` at a time."""
        after = 0
        while True:
            rows = self._db.execute(
                f"SELECT {_FACE_COLUMNS}, embedding, rowid FROM faces WHERE collection_pk = ? AND rowid > ? "
                "ORDER BY rowid LIMIT ?",
                (collection.pk, after, batch),
            ).fetchall()
            if not rows:
                return
            yield [_face(row[:13]) for row in rows]
            after = rows[-1][13]

    def request_tokens(self, collection: Collection) -> list[tuple[str, str, str, float]]:
        """The collection's remembered ClientRequestTokens: (operation, token, fingerprint, created_at)."""
        return self._db.execute(
            "SELECT operation, token, fingerprint, created_at FROM request_tokens WHERE collection_pk = ? "
            "ORDER BY operation, token",
            (collection.pk,),
        ).fetchall()

    def all_keys(self) -> list[AccessKey]:
        """Every access key, revoked ones included, oldest first."""
        rows = self._db.execute(
            "SELECT access_key_id, owner, role, sealed_secret, created_at, revoked_at, use_case_id FROM access_keys "
            "ORDER BY created_at, access_key_id"
        ).fetchall()
        return [AccessKey(*row) for row in rows]

    def settings(self) -> dict[str, str]:
        """Every setting (``set_setting``) by key."""
        rows = self._db.execute(
            "SELECT key, value FROM meta WHERE substr(key, 1, 8) = 'setting:' ORDER BY key"
        ).fetchall()
        return {key.removeprefix("setting:"): value for key, value in rows}

    def close(self) -> None:
        if not self.read_only:
            self.vector_indexes.save_changed()
        for conn in self._connections:
            conn.close()
        self._connections.clear()
        self._local = threading.local()


def _enable_wal(conn: sqlite3.Connection) -> None:
    # Switching to WAL answers "database is locked" at once (no busy wait) while another process creates
    # the database; retry briefly instead of failing the first request.
    for attempt in range(100):
        try:
            conn.execute("PRAGMA journal_mode=WAL")
            return
        except sqlite3.OperationalError:
            if attempt == 99:
                raise
            time.sleep(0.05)


class _Transaction:
    """``BEGIN IMMEDIATE`` … ``COMMIT``: writers serialise up front instead of failing on upgrade."""

    def __init__(self, db: sqlite3.Connection) -> None:
        self.db = db

    def __enter__(self) -> sqlite3.Connection:
        self.db.execute("BEGIN IMMEDIATE")
        return self.db

    def __exit__(self, exc_type, exc, tb) -> None:
        self.db.execute("ROLLBACK" if exc_type else "COMMIT")


def _keys(face_ids: Iterable[str]) -> np.ndarray:
    return np.array([face_key(f) for f in face_ids], dtype=np.uint64)


def _indexed(collection: Collection) -> IndexedCollection:
    return IndexedCollection(collection.pk, collection.created_at, collection.model_version)


def _organisation(row: tuple) -> Organisation:
    return Organisation(row[0], row[1], row[2], row[3], tuple(json.loads(row[4])), row[5], row[6])


def _use_case(row: tuple) -> UseCase:
    collections = None if row[3] is None else tuple(json.loads(row[3]))
    return UseCase(row[0], row[1], row[2], collections, *row[4:])


def _face(row: tuple) -> StoredFace:
    embedding = np.frombuffer(row[12], dtype="<f4") if len(row) > 12 else None
    return StoredFace(
        face_id=row[0],
        image_id=row[1],
        external_image_id=row[2],
        box=(row[3], row[4], row[5], row[6]),
        confidence=row[7],
        image_hash=row[8],
        model_version=row[9],
        indexed_at=row[10],
        user_id=row[11],
        embedding=embedding,
    )

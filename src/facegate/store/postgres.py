"""The server store: PostgreSQL with pgvector, for deployments that outgrow one process or one host.

The database is the only shared state. Galleries cached for exact search are labelled with the collection's
``generation`` read from the database and reloaded when it moves, whichever process or host wrote. Above the
ANN threshold, search is pgvector's HNSW index on ``faces.embedding``, queried with the collection filter and
an iterative scan (so the filter does not cut results short); the database maintains the index itself in the
transaction that writes the faces, so there is nothing derived to rebuild or reconcile.

Needs the ``vector`` extension: the first migration runs ``CREATE EXTENSION IF NOT EXISTS vector``, which a
database owner who is not a superuser cannot do, so an administrator may have to create it first.
"""

from __future__ import annotations

import struct
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager

import numpy as np

from facegate.errors import ConflictException, ResourceAlreadyExistsException, ResourceNotFoundException
from facegate.store import (
    AccessKey,
    Collection,
    Gallery,
    ObjectSource,
    Organisation,
    PolicyState,
    StoredFace,
    StoredUser,
    UseCase,
)
from facegate.store.job_tables import JobTables
from facegate.store.review_tables import ReviewTables, postgres_ddl
from facegate.store.sql_tables import SourceTables

try:
    import psycopg
    from psycopg import errors as pg_errors
    from psycopg.adapt import Dumper
    from psycopg.pq import Format
    from psycopg.types.json import Jsonb
except ImportError as exc:  # an optional dependency: the embedded store needs none of it
    raise ModuleNotFoundError(
        "The PostgreSQL store needs psycopg: install facegate with the extra, pip install 'facegate[postgresql]'."
    ) from exc

EMBEDDING_DIMENSIONS = 128  # dlib's ResNet; the HNSW index needs one fixed dimension for the column

# Each entry upgrades the schema by one version; never edit a released entry, append a new one.
# Identifiers are COLLATE "C": pages and their tokens follow byte order, as in SQLite and whatever the server's
# locale. A collection's pk is an identity, which never hands out a value twice (caches are keyed by it).
MIGRATIONS: list[str] = [
    """
    CREATE EXTENSION IF NOT EXISTS vector;
    CREATE TABLE collections (
        pk BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
        owner TEXT COLLATE "C" NOT NULL,
        collection_id TEXT COLLATE "C" NOT NULL,
        model_version TEXT NOT NULL,
        created_at DOUBLE PRECISION NOT NULL,
        generation BIGINT NOT NULL DEFAULT 0,
        face_count BIGINT NOT NULL DEFAULT 0,
        user_count BIGINT NOT NULL DEFAULT 0,
        retention JSONB,
        UNIQUE (owner, collection_id)
    );
    CREATE TABLE collection_tags (
        collection_pk BIGINT NOT NULL REFERENCES collections(pk) ON DELETE CASCADE,
        key TEXT COLLATE "C" NOT NULL,
        value TEXT NOT NULL,
        PRIMARY KEY (collection_pk, key)
    );
    CREATE INDEX collection_tags_by_value ON collection_tags (key, value);
    CREATE TABLE users (
        collection_pk BIGINT NOT NULL REFERENCES collections(pk) ON DELETE CASCADE,
        user_id TEXT COLLATE "C" NOT NULL,
        status TEXT NOT NULL,
        created_at DOUBLE PRECISION NOT NULL,
        PRIMARY KEY (collection_pk, user_id)
    );
    CREATE TABLE faces (
        face_id TEXT COLLATE "C" PRIMARY KEY,
        seq BIGINT GENERATED ALWAYS AS IDENTITY,
        collection_pk BIGINT NOT NULL REFERENCES collections(pk) ON DELETE CASCADE,
        image_id TEXT NOT NULL,
        external_image_id TEXT,
        box_width DOUBLE PRECISION NOT NULL,
        box_height DOUBLE PRECISION NOT NULL,
        box_left DOUBLE PRECISION NOT NULL,
        box_top DOUBLE PRECISION NOT NULL,
        confidence DOUBLE PRECISION NOT NULL,
        image_hash TEXT NOT NULL,
        model_version TEXT NOT NULL,
        embedding vector(128) NOT NULL,
        indexed_at DOUBLE PRECISION NOT NULL,
        user_id TEXT COLLATE "C",
        FOREIGN KEY (collection_pk, user_id) REFERENCES users(collection_pk, user_id)
    );
    CREATE INDEX faces_by_collection ON faces (collection_pk, face_id);
    CREATE INDEX faces_in_order ON faces (collection_pk, seq);
    CREATE INDEX faces_by_image ON faces (collection_pk, image_hash);
    CREATE INDEX faces_by_user ON faces (collection_pk, user_id);
    CREATE INDEX faces_by_age ON faces (collection_pk, indexed_at);
    CREATE INDEX faces_by_embedding ON faces USING hnsw (embedding vector_l2_ops) WITH (m = 24, ef_construction = 128);
    CREATE TABLE request_tokens (
        collection_pk BIGINT NOT NULL REFERENCES collections(pk) ON DELETE CASCADE,
        operation TEXT NOT NULL,
        token TEXT NOT NULL,
        fingerprint TEXT NOT NULL,
        created_at DOUBLE PRECISION NOT NULL,
        PRIMARY KEY (collection_pk, operation, token)
    );
    CREATE TABLE organisations (
        name TEXT COLLATE "C" PRIMARY KEY,
        category TEXT NOT NULL,
        jurisdiction TEXT NOT NULL,
        status TEXT NOT NULL,
        groups TEXT[] NOT NULL,
        created_at DOUBLE PRECISION NOT NULL,
        status_reason TEXT
    );
    CREATE TABLE use_cases (
        use_case_id TEXT PRIMARY KEY,
        organisation TEXT COLLATE "C" NOT NULL REFERENCES organisations(name),
        purpose TEXT NOT NULL,
        collections TEXT[],
        valid_from DOUBLE PRECISION NOT NULL,
        valid_until DOUBLE PRECISION,
        legal_basis TEXT,
        authorisation_reference TEXT,
        approver TEXT,
        status TEXT NOT NULL,
        created_at DOUBLE PRECISION NOT NULL,
        status_reason TEXT
    );
    CREATE TABLE access_keys (
        access_key_id TEXT PRIMARY KEY,
        owner TEXT NOT NULL,
        role TEXT NOT NULL,
        sealed_secret BYTEA NOT NULL,
        created_at DOUBLE PRECISION NOT NULL,
        revoked_at DOUBLE PRECISION,
        use_case_id TEXT REFERENCES use_cases(use_case_id)
    );
    CREATE INDEX access_keys_by_owner ON access_keys (owner);
    CREATE TABLE policy_state (
        template TEXT PRIMARY KEY,
        active BOOLEAN NOT NULL,
        params JSONB NOT NULL,
        changed_at DOUBLE PRECISION NOT NULL,
        reason TEXT NOT NULL
    );
    CREATE TABLE settings (
        key TEXT PRIMARY KEY,
        value TEXT NOT NULL
    );
    INSERT INTO meta (key, value) VALUES ('governance_generation', 0);
    """,
    # Where an organisation's S3Object images are read from (Bucket = name).
    """
    CREATE TABLE IF NOT EXISTS object_sources (
        owner TEXT COLLATE "C" NOT NULL,
        name TEXT COLLATE "C" NOT NULL,
        kind TEXT NOT NULL,
        location TEXT NOT NULL,
        sealed_secret BYTEA,
        created_at DOUBLE PRECISION NOT NULL,
        PRIMARY KEY (owner, name)
    );
    """,
    # Stored-video jobs and what they found.
    """
    CREATE TABLE IF NOT EXISTS video_jobs (
        job_id TEXT COLLATE "C" PRIMARY KEY,
        owner TEXT COLLATE "C" NOT NULL,
        api TEXT NOT NULL,
        status TEXT NOT NULL,
        request TEXT NOT NULL,
        requester TEXT NOT NULL,
        client_token TEXT COLLATE "C",
        fingerprint TEXT,
        status_message TEXT,
        video_metadata TEXT,
        progress_ms BIGINT NOT NULL DEFAULT 0,
        attempts INTEGER NOT NULL DEFAULT 0,
        worker TEXT,
        heartbeat DOUBLE PRECISION,
        created_at DOUBLE PRECISION NOT NULL,
        updated_at DOUBLE PRECISION NOT NULL,
        review_cases TEXT
    );
    CREATE UNIQUE INDEX IF NOT EXISTS video_jobs_by_token ON video_jobs (owner, api, client_token)
        WHERE client_token IS NOT NULL;
    CREATE INDEX IF NOT EXISTS video_jobs_by_status ON video_jobs (status, owner);
    CREATE TABLE IF NOT EXISTS video_job_findings (
        seq BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
        job_id TEXT COLLATE "C" NOT NULL REFERENCES video_jobs (job_id) ON DELETE CASCADE,
        timestamp_ms BIGINT NOT NULL,
        person_index INTEGER,
        body TEXT NOT NULL
    );
    CREATE INDEX IF NOT EXISTS findings_by_time ON video_job_findings (job_id, timestamp_ms, person_index, seq);
    CREATE INDEX IF NOT EXISTS findings_by_person ON video_job_findings (job_id, person_index, timestamp_ms, seq);
    """,
    # Human review of identifications, and the console's users.
    postgres_ddl(),
]

# Any constant will do: it serialises migrations of one database between processes starting together.
_MIGRATION_LOCK = 0x66616365676174  # "facegat"

_FACE_COLUMNS = (
    "face_id, image_id, external_image_id, box_width, box_height, box_left, box_top, confidence, "
    "image_hash, model_version, indexed_at, user_id"
)
_WITH_EMBEDDING = ", vector_send(embedding)"  # pgvector's binary form: 2-byte dims, 2 unused, big-endian float4s

# Below this many faces a collection is searched exactly, over a gallery each process caches. Every write makes
# each process reload it whole from the server on its next search: measured on 2 busy cores, 85 ms at 20k faces,
# 0.7 s (52 MB) at 100k, against 12 ms for pgvector's HNSW at 100k (recall@10 0.995, below).
ANN_MIN_FACES = 50_000
# The HNSW index (the migration's m = 24, ef_construction = 128, as vector_index.py's usearch graph) keeps at least
# this many candidates (hnsw.ef_search, at most 1000). Synthetic clustered faces, 100k of a 200k-face table,
# recall@10 after re-ranking: 0.995 at 200, 0.999 at 400; with pgvector's default m = 16, ef_construction = 64,
# 0.963 at 200 and 0.988 at 800. An iterative scan goes on while the collection filter rejects rows, up to this
# many rows visited (a collection that is a small part of the table then still gets its k nearest).
EF_SEARCH_MIN = 200
MAX_SCAN_TUPLES = 100_000


class PostgresStore(ReviewTables, JobTables, SourceTables):
    """``Store`` on PostgreSQL + pgvector, opened from a ``postgresql://user:password@host:port/database`` URL.

    Safe to share between threads (each gets its own connection) and between processes and hosts (nothing
    cached here outlives a change in the database unnoticed)."""

    def __init__(self, url: str, *, ann_min_faces: int = ANN_MIN_FACES) -> None:
        if not url.startswith(("postgresql://", "postgres://")):
            raise ValueError(
                "The PostgreSQL store is opened from a URL such as postgresql://user:password@host:5432/facegate; "
                f"got one that starts {url.split('://', 1)[0]!r}."
            )
        self.url = url
        self.ann_min_faces = ann_min_faces
        self._local = threading.local()
        self._connections: list[psycopg.Connection] = []
        self._connections_lock = threading.Lock()
        self._galleries: dict[int, tuple[int, Gallery]] = {}
        self._galleries_lock = threading.Lock()
        self._vector_dumper: type[Dumper] | None = None
        self._migrate()

    @property
    def _db(self) -> psycopg.Connection:
        conn = getattr(self._local, "conn", None)
        if conn is None or conn.closed or conn.broken:
            conn = psycopg.connect(self.url, autocommit=True)
            if self._vector_dumper is not None:
                conn.adapters.register_dumper(np.ndarray, self._vector_dumper)
            self._local.conn = conn
            with self._connections_lock:
                self._connections.append(conn)
        return conn

    def _migrate(self) -> None:
        db = self._db
        with db.transaction():
            db.execute("SELECT pg_advisory_xact_lock(%s)", (_MIGRATION_LOCK,))
            db.execute("CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value BIGINT NOT NULL)")
            row = db.execute("SELECT value FROM meta WHERE key = 'schema_version'").fetchone()
            version = row[0] if row else 0
            if version > len(MIGRATIONS):
                raise RuntimeError(
                    f"The PostgreSQL database has schema version {version}, newer than this facegate "
                    f"({len(MIGRATIONS)}): upgrade facegate."
                )
            for script in MIGRATIONS[version:]:
                db.execute(script)
            db.execute(
                "INSERT INTO meta (key, value) VALUES ('schema_version', %s) "
                "ON CONFLICT (key) DO UPDATE SET value = excluded.value",
                (len(MIGRATIONS),),
            )
        oid = db.execute("SELECT 'vector'::regtype::oid").fetchone()[0]
        self._vector_dumper = type("EmbeddingDumper", (_EmbeddingDumper,), {"oid": oid})
        db.adapters.register_dumper(np.ndarray, self._vector_dumper)

    def schema_version(self) -> int:
        return self._db.execute("SELECT value FROM meta WHERE key = 'schema_version'").fetchone()[0]

    def create_collection(self, owner: str, collection_id: str, model_version: str, tags: dict[str, str]) -> Collection:
        created = time.time()
        db = self._db
        with db.transaction():
            row = db.execute(
                "INSERT INTO collections (owner, collection_id, model_version, created_at) VALUES (%s, %s, %s, %s) "
                "ON CONFLICT (owner, collection_id) DO NOTHING RETURNING pk",
                (owner, collection_id, model_version, created),
            ).fetchone()
            if row is None:
                raise ResourceAlreadyExistsException(f"The collection id: {collection_id} already exists")
            if tags:
                db.cursor().executemany(
                    "INSERT INTO collection_tags (collection_pk, key, value) VALUES (%s, %s, %s)",
                    [(row[0], k, v) for k, v in tags.items()],
                )
        return Collection(row[0], owner, collection_id, model_version, created)

    _COLLECTION_SELECT = (
        "SELECT c.pk, c.owner, c.collection_id, c.model_version, c.created_at, c.face_count, c.user_count "
        "FROM collections c "
    )

    def get_collection(self, owner: str, collection_id: str) -> Collection | None:
        row = self._db.execute(
            self._COLLECTION_SELECT + "WHERE c.owner = %s AND c.collection_id = %s", (owner, collection_id)
        ).fetchone()
        return Collection(*row) if row else None

    def list_collections(self, owner: str, after: str | None, limit: int) -> list[Collection]:
        rows = self._db.execute(
            self._COLLECTION_SELECT + "WHERE c.owner = %s AND c.collection_id > %s ORDER BY c.collection_id LIMIT %s",
            (owner, after or "", limit),
        ).fetchall()
        return [Collection(*row) for row in rows]

    def delete_collection(self, collection: Collection) -> None:
        db = self._db
        with db.transaction():
            # Faces first: they reference users, which the cascade would otherwise meet in either order.
            db.execute("DELETE FROM faces WHERE collection_pk = %s", (collection.pk,))
            db.execute("DELETE FROM collections WHERE pk = %s", (collection.pk,))
        with self._galleries_lock:
            self._galleries.pop(collection.pk, None)

    def set_retention(self, collection: Collection, rule: dict | None) -> None:
        self._db.execute(
            "UPDATE collections SET retention = %s WHERE pk = %s",
            (None if rule is None else Jsonb(rule), collection.pk),
        )

    def retention_rules(self) -> list[tuple[Collection, dict]]:
        """Every collection that has a retention rule, with the rule."""
        rows = self._db.execute(
            self._COLLECTION_SELECT.replace("FROM collections c", ", c.retention FROM collections c")
            + "WHERE c.retention IS NOT NULL ORDER BY c.owner, c.collection_id"
        ).fetchall()
        return [(Collection(*row[:7]), row[7]) for row in rows]

    def collections_tagged(self, key: str, value: str) -> list[Collection]:
        rows = self._db.execute(
            self._COLLECTION_SELECT
            + "JOIN collection_tags t ON t.collection_pk = c.pk WHERE t.key = %s AND t.value = %s ORDER BY c.pk",
            (key, value),
        ).fetchall()
        return [Collection(*row) for row in rows]

    def faces_indexed_before(self, collection: Collection, cutoff: float) -> list[StoredFace]:
        rows = self._db.execute(
            f"SELECT {_FACE_COLUMNS} FROM faces WHERE collection_pk = %s AND indexed_at < %s ORDER BY indexed_at, seq",
            (collection.pk, cutoff),
        ).fetchall()
        return [_face(row) for row in rows]

    # Faces

    def add_faces(self, collection: Collection, faces: list[StoredFace]) -> list[StoredFace]:
        """Store the faces of one image, unless faces of the same image and ExternalImageId are already
        stored: then nothing is written and those are returned (checked while holding the collection's row
        lock, so two concurrent IndexFaces of one image, from any processes, cannot both store it)."""
        if not faces:
            return []
        db = self._db
        with db.transaction():
            self._lock_collection(db, collection)
            existing = self.faces_of_image(collection, faces[0].image_hash, faces[0].external_image_id)
            if existing:
                return existing
            db.cursor().executemany(
                f"INSERT INTO faces ({_FACE_COLUMNS}, collection_pk, embedding) "
                "VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s)",
                [_face_row(f, collection.pk) for f in faces],
            )
            self._bump(db, collection, len(faces))
        return faces

    def faces_of_image(
        self, collection: Collection, image_hash: str, external_image_id: str | None
    ) -> list[StoredFace]:
        rows = self._db.execute(
            f"SELECT {_FACE_COLUMNS} FROM faces WHERE collection_pk = %s AND image_hash = %s "
            "AND external_image_id IS NOT DISTINCT FROM %s ORDER BY seq",
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
        sql = f"SELECT {_FACE_COLUMNS} FROM faces WHERE collection_pk = %s AND face_id > %s"
        args: list = [collection.pk, after or ""]
        if user_id is not None:
            sql += " AND user_id = %s"
            args.append(user_id)
        if face_ids is not None:
            sql += " AND face_id = ANY(%s::text[])"
            args.append(list(face_ids))
        sql += " ORDER BY face_id LIMIT %s"
        args.append(limit)
        return [_face(row) for row in self._db.execute(sql, args).fetchall()]

    def get_faces(
        self, collection: Collection, face_ids: list[str], *, with_embeddings: bool = False
    ) -> list[StoredFace]:
        if not face_ids:
            return []
        extra = _WITH_EMBEDDING if with_embeddings else ""
        rows = self._db.execute(
            f"SELECT {_FACE_COLUMNS}{extra} FROM faces WHERE collection_pk = %s AND face_id = ANY(%s::text[]) "
            "ORDER BY seq",
            (collection.pk, list(face_ids)),
            binary=with_embeddings,
        ).fetchall()
        return [_face(row) for row in rows]

    def delete_faces(self, collection: Collection, face_ids: list[str]) -> list[str]:
        """Delete faces (user associations are the service's rule, not the store's); returns those deleted."""
        if not face_ids:
            return []
        db = self._db
        with db.transaction():
            # RETURNING, not a SELECT first: of two concurrent deletes of one face, only one counts it.
            found = [
                r[0]
                for r in db.execute(
                    "DELETE FROM faces WHERE collection_pk = %s AND face_id = ANY(%s::text[]) RETURNING face_id",
                    (collection.pk, list(face_ids)),
                ).fetchall()
            ]
            if found:
                self._bump(db, collection, -len(found))
        return found

    @staticmethod
    def _lock_collection(db: psycopg.Connection, collection: Collection) -> None:
        # Writers of one collection take its row first: they serialise there instead of deadlocking later.
        if db.execute("SELECT 1 FROM collections WHERE pk = %s FOR UPDATE", (collection.pk,)).fetchone() is None:
            raise ResourceNotFoundException(f"The collection id: {collection.collection_id} does not exist")

    @staticmethod
    def _bump(db: psycopg.Connection, collection: Collection, faces_added: int = 0) -> int:
        row = db.execute(
            "UPDATE collections SET generation = generation + 1, face_count = face_count + %s WHERE pk = %s "
            "RETURNING generation",
            (faces_added, collection.pk),
        ).fetchone()
        return row[0] if row else -1

    def _generation(self, db: psycopg.Connection, collection: Collection) -> int:
        row = db.execute("SELECT generation FROM collections WHERE pk = %s", (collection.pk,)).fetchone()
        return row[0] if row else -1

    # Search

    def gallery(self, collection: Collection) -> Gallery:
        db = self._db
        generation = self._generation(db, collection)
        with self._galleries_lock:
            cached = self._galleries.get(collection.pk)
        if cached and cached[0] == generation:
            return cached[1]
        # One snapshot for the generation and the rows, so the cache is never newer-labelled than its content.
        with db.transaction():
            db.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ, READ ONLY")
            generation = self._generation(db, collection)
            rows = db.execute(
                f"SELECT face_id, user_id{_WITH_EMBEDDING} FROM faces WHERE collection_pk = %s ORDER BY seq",
                (collection.pk,),
                binary=True,
            ).fetchall()
        gallery = Gallery([r[0] for r in rows], [r[1] for r in rows], _embeddings([r[2] for r in rows]))
        with self._galleries_lock:
            self._galleries[collection.pk] = (generation, gallery)
        return gallery

    def nearest_faces(self, collection: Collection, probe: np.ndarray, k: int) -> list[StoredFace] | None:
        """Up to ``k`` approximate nearest faces, current and with embeddings, for exact re-ranking; None when
        the collection is small enough for exact search over ``gallery``."""
        if collection.face_count < self.ann_min_faces:
            return None
        db = self._db
        with db.transaction():
            db.execute(
                "SELECT set_config('hnsw.ef_search', %s, true), set_config('hnsw.iterative_scan', 'relaxed_order', "
                "true), set_config('hnsw.max_scan_tuples', %s, true)",
                (str(min(1000, max(EF_SEARCH_MIN, k))), str(MAX_SCAN_TUPLES)),
            )
            # Not prepared: the plan (the HNSW index, or the collection's rows sorted exactly when it is a small
            # part of the table) is chosen for this collection's size, not once for all.
            rows = db.execute(
                f"SELECT {_FACE_COLUMNS}{_WITH_EMBEDDING} FROM faces WHERE collection_pk = %s "
                "ORDER BY embedding <-> %s LIMIT %s",
                (collection.pk, np.asarray(probe, dtype=np.float32), k),
                binary=True,
                prepare=False,
            ).fetchall()
        return [_face(row) for row in rows]

    def rebuild_vector_index(self, collection: Collection) -> int:
        """The number of the collection's faces its ANN index covers (0 when the collection is small enough for
        exact search). PostgreSQL maintains the index with every write, so there is nothing to rebuild."""
        if collection.face_count < self.ann_min_faces:
            return 0
        return self._db.execute("SELECT COUNT(*) FROM faces WHERE collection_pk = %s", (collection.pk,)).fetchone()[0]

    def prepare_vector_indexes(self) -> int:
        """How many collections are large enough to be searched by the ANN index; the index is always current."""
        return self._db.execute(
            "SELECT COUNT(*) FROM collections WHERE face_count >= %s", (max(1, self.ann_min_faces),)
        ).fetchone()[0]

    # Users

    def create_user(self, collection: Collection, user_id: str) -> None:
        db = self._db
        try:
            with db.transaction():
                db.execute(
                    "INSERT INTO users (collection_pk, user_id, status, created_at) VALUES (%s, %s, 'ACTIVE', %s)",
                    (collection.pk, user_id, time.time()),
                )
                db.execute("UPDATE collections SET user_count = user_count + 1 WHERE pk = %s", (collection.pk,))
        except pg_errors.UniqueViolation:
            raise ConflictException(
                f"User {user_id} already exists in collection {collection.collection_id}."
            ) from None

    _USER_SELECT = (
        "SELECT u.user_id, u.status, u.created_at, (SELECT COUNT(*) FROM faces f WHERE "
        "f.collection_pk = u.collection_pk AND f.user_id = u.user_id) FROM users u "
    )

    def get_user(self, collection: Collection, user_id: str) -> StoredUser | None:
        row = self._db.execute(
            self._USER_SELECT + "WHERE u.collection_pk = %s AND u.user_id = %s", (collection.pk, user_id)
        ).fetchone()
        return StoredUser(*row) if row else None

    def delete_user(self, collection: Collection, user_id: str) -> None:
        db = self._db
        with db.transaction():
            db.execute(
                "UPDATE faces SET user_id = NULL WHERE collection_pk = %s AND user_id = %s", (collection.pk, user_id)
            )
            deleted = db.execute(
                "DELETE FROM users WHERE collection_pk = %s AND user_id = %s", (collection.pk, user_id)
            ).rowcount
            db.execute("UPDATE collections SET user_count = user_count - %s WHERE pk = %s", (deleted, collection.pk))
            self._bump(db, collection)

    def list_users(self, collection: Collection, after: str | None, limit: int) -> list[StoredUser]:
        rows = self._db.execute(
            self._USER_SELECT + "WHERE u.collection_pk = %s AND u.user_id > %s ORDER BY u.user_id LIMIT %s",
            (collection.pk, after or "", limit),
        ).fetchall()
        return [StoredUser(*row) for row in rows]

    def set_face_user(self, collection: Collection, face_ids: list[str], user_id: str | None) -> None:
        if not face_ids:
            return
        db = self._db
        with db.transaction():
            db.execute(
                "UPDATE faces SET user_id = %s WHERE collection_pk = %s AND face_id = ANY(%s::text[])",
                (user_id, collection.pk, list(face_ids)),
            )
            self._bump(db, collection)

    # Tags

    def tags(self, collection: Collection) -> dict[str, str]:
        rows = self._db.execute(
            "SELECT key, value FROM collection_tags WHERE collection_pk = %s ORDER BY key", (collection.pk,)
        ).fetchall()
        return dict(rows)

    def set_tags(self, collection: Collection, tags: dict[str, str]) -> None:
        if not tags:
            return
        db = self._db
        with db.transaction():
            db.cursor().executemany(
                "INSERT INTO collection_tags (collection_pk, key, value) VALUES (%s, %s, %s) "
                "ON CONFLICT (collection_pk, key) DO UPDATE SET value = excluded.value",
                [(collection.pk, k, v) for k, v in tags.items()],
            )

    def remove_tags(self, collection: Collection, keys: list[str]) -> None:
        self._db.execute(
            "DELETE FROM collection_tags WHERE collection_pk = %s AND key = ANY(%s::text[])",
            (collection.pk, list(keys)),
        )

    # Idempotency tokens (ClientRequestToken)

    def recall_request(self, collection: Collection, operation: str, token: str) -> str | None:
        row = self._db.execute(
            "SELECT fingerprint FROM request_tokens WHERE collection_pk = %s AND operation = %s AND token = %s",
            (collection.pk, operation, token),
        ).fetchone()
        return row[0] if row else None

    def remember_request(self, collection: Collection, operation: str, token: str, fingerprint: str) -> None:
        self._db.execute(
            "INSERT INTO request_tokens (collection_pk, operation, token, fingerprint, created_at) "
            "VALUES (%s, %s, %s, %s, %s) ON CONFLICT (collection_pk, operation, token) "
            "DO UPDATE SET fingerprint = excluded.fingerprint, created_at = excluded.created_at",
            (collection.pk, operation, token, fingerprint, time.time()),
        )

    # Access keys (secrets arrive sealed: the store never sees them in clear)

    def add_key(self, key: AccessKey) -> None:
        db = self._db
        with db.transaction():
            db.execute(
                "INSERT INTO access_keys (access_key_id, owner, role, sealed_secret, created_at, use_case_id) "
                "VALUES (%s, %s, %s, %s, %s, %s)",
                (key.access_key_id, key.owner, key.role, key.sealed_secret, key.created_at, key.use_case_id),
            )
            self._bump_governance(db)

    def get_key(self, access_key_id: str) -> AccessKey | None:
        row = self._db.execute(
            "SELECT access_key_id, owner, role, sealed_secret, created_at, revoked_at, use_case_id FROM access_keys "
            "WHERE access_key_id = %s",
            (access_key_id,),
        ).fetchone()
        return AccessKey(*row) if row else None

    def count_keys(self, role: str) -> int:
        return self._db.execute("SELECT COUNT(*) FROM access_keys WHERE role = %s", (role,)).fetchone()[0]

    def revoke_key(self, access_key_id: str) -> bool:
        db = self._db
        with db.transaction():
            changed = db.execute(
                "UPDATE access_keys SET revoked_at = %s WHERE access_key_id = %s AND revoked_at IS NULL",
                (time.time(), access_key_id),
            ).rowcount
            self._bump_governance(db)
        return bool(changed)

    # Governance

    @staticmethod
    def _bump_governance(db: psycopg.Connection) -> None:
        db.execute("UPDATE meta SET value = value + 1 WHERE key = 'governance_generation'")

    # The shared tables' primitives (sql_tables.SqlTables): a transaction, a read, the governance generation

    @contextmanager
    def _transaction(self) -> Iterator:
        db = self._db
        with db.transaction():
            yield lambda sql, params: db.execute(sql.replace("?", "%s"), params)

    def _query(self, sql: str, params: tuple = ()) -> list[tuple]:
        return self._db.execute(sql.replace("?", "%s"), params).fetchall()

    def _governance_changed(self, run) -> None:
        run("UPDATE meta SET value = value + 1 WHERE key = 'governance_generation'", ())

    def get_setting(self, key: str) -> str | None:
        row = self._db.execute("SELECT value FROM settings WHERE key = %s", (key,)).fetchone()
        return row[0] if row else None

    def set_setting(self, key: str, value: str | None) -> None:
        db = self._db
        with db.transaction():
            if value is None:
                db.execute("DELETE FROM settings WHERE key = %s", (key,))
            else:
                db.execute(
                    "INSERT INTO settings (key, value) VALUES (%s, %s) "
                    "ON CONFLICT (key) DO UPDATE SET value = excluded.value",
                    (key, value),
                )
            self._bump_governance(db)

    def governance_generation(self) -> int:
        return self._db.execute("SELECT value FROM meta WHERE key = 'governance_generation'").fetchone()[0]

    def add_organisation(self, organisation: Organisation) -> None:
        o = organisation
        db = self._db
        with db.transaction():
            row = db.execute(
                "INSERT INTO organisations (name, category, jurisdiction, status, groups, created_at, status_reason) "
                "VALUES (%s, %s, %s, %s, %s::text[], %s, %s) ON CONFLICT (name) DO NOTHING RETURNING name",
                (o.name, o.category, o.jurisdiction, o.status, list(o.groups), o.created_at, o.status_reason),
            ).fetchone()
            if row is None:
                raise ResourceAlreadyExistsException(f"Organisation {o.name} already exists.")
            self._bump_governance(db)

    _ORG_COLUMNS = "name, category, jurisdiction, status, groups, created_at, status_reason"

    def get_organisation(self, name: str) -> Organisation | None:
        row = self._db.execute(f"SELECT {self._ORG_COLUMNS} FROM organisations WHERE name = %s", (name,)).fetchone()
        return _organisation(row) if row else None

    def list_organisations(self) -> list[Organisation]:
        rows = self._db.execute(f"SELECT {self._ORG_COLUMNS} FROM organisations ORDER BY name").fetchall()
        return [_organisation(row) for row in rows]

    def update_organisation(
        self, name: str, *, status: str | None = None, reason: str | None = None, groups: tuple[str, ...] | None = None
    ) -> None:
        db = self._db
        with db.transaction():
            if status is not None:
                db.execute(
                    "UPDATE organisations SET status = %s, status_reason = %s WHERE name = %s", (status, reason, name)
                )
            if groups is not None:
                db.execute("UPDATE organisations SET groups = %s::text[] WHERE name = %s", (list(groups), name))
            self._bump_governance(db)

    _USE_CASE_COLUMNS = (
        "use_case_id, organisation, purpose, collections, valid_from, valid_until, legal_basis, "
        "authorisation_reference, approver, status, created_at, status_reason"
    )

    def add_use_case(self, use_case: UseCase) -> None:
        db = self._db
        with db.transaction():
            db.execute(
                f"INSERT INTO use_cases ({self._USE_CASE_COLUMNS}) "
                "VALUES (%s, %s, %s, %s::text[], %s, %s, %s, %s, %s, %s, %s, %s)",
                _use_case_row(use_case),
            )
            self._bump_governance(db)

    def get_use_case(self, use_case_id: str) -> UseCase | None:
        row = self._db.execute(
            f"SELECT {self._USE_CASE_COLUMNS} FROM use_cases WHERE use_case_id = %s", (use_case_id,)
        ).fetchone()
        return _use_case(row) if row else None

    def list_use_cases(self, organisation: str | None = None) -> list[UseCase]:
        sql = f"SELECT {self._USE_CASE_COLUMNS} FROM use_cases"
        args: tuple = ()
        if organisation is not None:
            sql += " WHERE organisation = %s"
            args = (organisation,)
        return [_use_case(row) for row in self._db.execute(sql + " ORDER BY created_at", args).fetchall()]

    def set_use_case_status(self, use_case_id: str, status: str, reason: str) -> None:
        db = self._db
        with db.transaction():
            db.execute(
                "UPDATE use_cases SET status = %s, status_reason = %s WHERE use_case_id = %s",
                (status, reason, use_case_id),
            )
            self._bump_governance(db)

    def policy_states(self) -> dict[str, PolicyState]:
        rows = self._db.execute("SELECT template, active, params, changed_at, reason FROM policy_state").fetchall()
        return {r[0]: PolicyState(*r) for r in rows}

    def set_policy_state(self, state: PolicyState) -> None:
        db = self._db
        with db.transaction():
            db.execute(
                "INSERT INTO policy_state (template, active, params, changed_at, reason) VALUES (%s, %s, %s, %s, %s) "
                "ON CONFLICT (template) DO UPDATE SET active = excluded.active, params = excluded.params, "
                "changed_at = excluded.changed_at, reason = excluded.reason",
                (state.template, state.active, Jsonb(state.params), state.changed_at, state.reason),
            )
            self._bump_governance(db)

    # Import, for copying another store into this database (`facegate store copy`): rows as they are, their ids,
    # times and counts included. Each call is one transaction and returns how many rows it wrote; a row already
    # here as given is not written again, so a copy can be re-run, and a second run writes nothing.

    def all_collections(self) -> list[tuple[Collection, dict | None]]:
        """Every collection of every owner, by pk, with its retention rule (None: no rule)."""
        rows = self._db.execute(
            self._COLLECTION_SELECT.replace("FROM collections c", ", c.retention FROM collections c") + "ORDER BY c.pk"
        ).fetchall()
        return [(Collection(*row[:7]), row[7]) for row in rows]

    def all_keys(self) -> list[AccessKey]:
        """Every access key, revoked ones included, oldest first."""
        rows = self._db.execute(
            "SELECT access_key_id, owner, role, sealed_secret, created_at, revoked_at, use_case_id FROM access_keys "
            "ORDER BY created_at, access_key_id"
        ).fetchall()
        return [AccessKey(*row) for row in rows]

    def is_empty(self) -> bool:
        """Whether this database holds no collection, organisation, access key, policy state or setting."""
        return not self._db.execute(
            "SELECT EXISTS (SELECT 1 FROM collections) OR EXISTS (SELECT 1 FROM organisations) OR "
            "EXISTS (SELECT 1 FROM access_keys) OR EXISTS (SELECT 1 FROM policy_state) OR EXISTS (SELECT 1 FROM settings)"
        ).fetchone()[0]

    def import_collection(self, collection: Collection, tags: dict[str, str], retention: dict | None) -> int:
        """The collection under its own pk, with its tags and retention rule. Its users and faces follow
        (``import_users``, ``import_faces``), its counts last (``finish_collection_import``). Raises
        ``ValueError`` when this database holds another collection under that pk or that owner and id."""
        c = collection
        rule = None if retention is None else Jsonb(retention)
        db = self._db
        with db.transaction():
            here = db.execute(
                "SELECT pk, owner, collection_id, model_version, created_at, retention FROM collections "
                "WHERE pk = %s OR (owner = %s AND collection_id = %s) FOR UPDATE",
                (c.pk, c.owner, c.collection_id),
            ).fetchall()
            written = 0
            if not here:
                db.execute(
                    "INSERT INTO collections (pk, owner, collection_id, model_version, created_at, retention) "
                    "OVERRIDING SYSTEM VALUE VALUES (%s, %s, %s, %s, %s, %s)",
                    (c.pk, c.owner, c.collection_id, c.model_version, c.created_at, rule),
                )
                written = 1
            elif len(here) > 1 or tuple(here[0][:5]) != (c.pk, c.owner, c.collection_id, c.model_version, c.created_at):
                raise ValueError(
                    f"collection {c.collection_id} of {c.owner} (key {c.pk}, created at {c.created_at}) is not the "
                    "collection this database holds under that key or that name"
                )
            elif here[0][5] != retention:
                db.execute("UPDATE collections SET retention = %s WHERE pk = %s", (rule, c.pk))
                written = 1
            current = dict(
                db.execute("SELECT key, value FROM collection_tags WHERE collection_pk = %s", (c.pk,)).fetchall()
            )
            if current != tags:
                written += db.execute("DELETE FROM collection_tags WHERE collection_pk = %s", (c.pk,)).rowcount
                written += _upsert(
                    db, "collection_tags", ("collection_pk", "key", "value"), 2, [(c.pk, k, v) for k, v in tags.items()]
                )
        return written

    def import_users(self, collection: Collection, users: list[StoredUser]) -> int:
        """Users as they are (status, creation time); their face counts follow from their faces."""
        db = self._db
        with db.transaction():
            return _upsert(
                db,
                "users",
                ("collection_pk", "user_id", "status", "created_at"),
                2,
                [(collection.pk, u.user_id, u.status, u.created_at) for u in users],
            )

    def import_faces(self, collection: Collection, faces: list[StoredFace]) -> int:
        """Faces as they are (ids, boxes, times, users, embeddings bit for bit), after the collection's faces in
        search order; a face already here only takes the given user."""
        db = self._db
        with db.transaction():
            written = _upsert(
                db,
                "faces",
                (*_FACE_COLUMNS.split(", "), "collection_pk", "embedding"),
                1,
                [_face_row(f, collection.pk) for f in faces],
                update=("user_id",),
            )
            if written:
                self._bump(db, collection)
        return written

    def finish_collection_import(self, collection: Collection, face_ids: set[str], user_ids: set[str]) -> int:
        """Remove the collection's faces and users that are not among those given (gone from the source since an
        earlier copy), then take the collection's face and user counts. Raises ``ValueError`` when the collection
        then holds other faces or users than those given."""
        c = collection
        db = self._db
        with db.transaction():
            self._lock_collection(db, c)
            written = db.execute(
                "DELETE FROM faces WHERE collection_pk = %s AND NOT face_id = ANY(%s::text[])", (c.pk, list(face_ids))
            ).rowcount
            written += db.execute(
                "DELETE FROM users WHERE collection_pk = %s AND NOT user_id = ANY(%s::text[])", (c.pk, list(user_ids))
            ).rowcount
            faces, users = db.execute(
                "SELECT (SELECT COUNT(*) FROM faces WHERE collection_pk = %s), "
                "(SELECT COUNT(*) FROM users WHERE collection_pk = %s)",
                (c.pk, c.pk),
            ).fetchone()
            if (faces, users) != (len(face_ids), len(user_ids)):
                raise ValueError(
                    f"collection {c.collection_id} of {c.owner} holds {faces} faces and {users} users here, not the "
                    f"{len(face_ids)} and {len(user_ids)} copied: something else writes to it"
                )
            written += db.execute(
                "UPDATE collections SET face_count = %s, user_count = %s "
                "WHERE pk = %s AND (face_count, user_count) IS DISTINCT FROM (%s, %s)",
                (c.face_count, c.user_count, c.pk, c.face_count, c.user_count),
            ).rowcount
            if written:
                self._bump(db, c)
        return written

    def import_request_tokens(self, collection: Collection, tokens: list[tuple[str, str, str, float]]) -> int:
        """Remembered ClientRequestTokens: (operation, token, fingerprint, created_at) each."""
        db = self._db
        with db.transaction():
            return _upsert(
                db,
                "request_tokens",
                ("collection_pk", "operation", "token", "fingerprint", "created_at"),
                3,
                [(collection.pk, *token) for token in tokens],
            )

    def prune_collections(self, keep: set[int]) -> int:
        """Delete every collection whose pk is not in ``keep``, with its faces; returns how many were deleted."""
        db = self._db
        with db.transaction():
            gone = [
                row[0]
                for row in db.execute(
                    "SELECT pk FROM collections WHERE NOT pk = ANY(%s::bigint[]) FOR UPDATE", (list(keep),)
                ).fetchall()
            ]
            if gone:
                db.execute("DELETE FROM faces WHERE collection_pk = ANY(%s::bigint[])", (gone,))
                db.execute("DELETE FROM collections WHERE pk = ANY(%s::bigint[])", (gone,))
        with self._galleries_lock:
            for pk in gone:
                self._galleries.pop(pk, None)
        return len(gone)

    def reserve_collection_pks(self, last: int) -> int:
        """Make sure the next collection created here gets a pk above ``last`` (and above every pk here): imported
        collections keep their own, which the identity did not hand out. Returns 1 if it had to move, else 0."""
        db = self._db
        with db.transaction():
            sequence = db.execute("SELECT pg_get_serial_sequence('collections', 'pk')").fetchone()[0]
            value, called = db.execute(f"SELECT last_value, is_called FROM {sequence}").fetchone()
            taken = max(last, db.execute("SELECT COALESCE(MAX(pk), 0) FROM collections").fetchone()[0])
            if (value if called else value - 1) >= taken:
                return 0
            db.execute("SELECT setval(%s, %s)", (sequence, taken))
        return 1

    def import_organisations(self, organisations: list[Organisation]) -> int:
        return self._import_governance(
            "organisations",
            ("name", "category", "jurisdiction", "status", "groups", "created_at", "status_reason"),
            1,
            [
                (o.name, o.category, o.jurisdiction, o.status, list(o.groups), o.created_at, o.status_reason)
                for o in organisations
            ],
            casts={"groups": "::text[]"},
        )

    def import_use_cases(self, use_cases: list[UseCase]) -> int:
        return self._import_governance(
            "use_cases",
            tuple(self._USE_CASE_COLUMNS.split(", ")),
            1,
            [_use_case_row(u) for u in use_cases],
            casts={"collections": "::text[]"},
        )

    def import_keys(self, keys: list[AccessKey]) -> int:
        """Access keys with their secrets sealed as they are (this database's servers need the same sealing key)."""
        return self._import_governance(
            "access_keys",
            ("access_key_id", "owner", "role", "sealed_secret", "created_at", "revoked_at", "use_case_id"),
            1,
            [
                (k.access_key_id, k.owner, k.role, k.sealed_secret, k.created_at, k.revoked_at, k.use_case_id)
                for k in keys
            ],
        )

    def import_policy_states(self, states: list[PolicyState]) -> int:
        return self._import_governance(
            "policy_state",
            ("template", "active", "params", "changed_at", "reason"),
            1,
            [(s.template, s.active, Jsonb(s.params), s.changed_at, s.reason) for s in states],
        )

    def import_sources(self, sources: list[ObjectSource]) -> int:
        """The sources, exactly: one here that the source deployment no longer has is removed (it is refused)."""
        db = self._db
        rows = [(s.owner, s.name, s.kind, s.location, s.created_at, s.sealed_secret) for s in sources]
        with db.transaction():
            written = _upsert(
                db, "object_sources", ("owner", "name", "kind", "location", "created_at", "sealed_secret"), 2, rows
            )
            written += db.execute(
                "DELETE FROM object_sources WHERE NOT (owner || '/' || name) = ANY(%s::text[])",
                ([f"{s.owner}/{s.name}" for s in sources],),
            ).rowcount
            if written:
                self._bump_governance(db)
        return written

    def import_settings(self, settings: dict[str, str]) -> int:
        """The settings, exactly: one here that is not among them is removed."""
        db = self._db
        with db.transaction():
            written = _upsert(db, "settings", ("key", "value"), 1, list(settings.items()))
            written += db.execute("DELETE FROM settings WHERE NOT key = ANY(%s::text[])", (list(settings),)).rowcount
            if written:
                self._bump_governance(db)
        return written

    def _import_governance(self, table: str, columns: tuple[str, ...], keys: int, rows: list[tuple], **options) -> int:
        db = self._db
        with db.transaction():
            written = _upsert(db, table, columns, keys, rows, **options)
            if written:
                self._bump_governance(db)
        return written

    def close(self) -> None:
        with self._connections_lock:
            for conn in self._connections:
                conn.close()
            self._connections.clear()
        self._local = threading.local()
        with self._galleries_lock:
            self._galleries.clear()


def _upsert(
    db: psycopg.Connection,
    table: str,
    columns: tuple[str, ...],
    keys: int,
    rows: list[tuple],
    *,
    update: tuple[str, ...] | None = None,
    casts: dict[str, str] | None = None,
) -> int:
    """Insert ``rows`` (values of ``columns``, whose first ``keys`` are the table's key); a row whose key is here
    already gets the ``update`` columns (default: all the others) only where they differ. Returns the rows
    written, inserted or changed."""
    if not rows:
        return 0
    update = update or columns[keys:]
    values = ", ".join("%s" + (casts or {}).get(column, "") for column in columns)
    cursor = db.cursor()
    cursor.executemany(
        f"INSERT INTO {table} ({', '.join(columns)}) VALUES ({values}) ON CONFLICT ({', '.join(columns[:keys])}) "
        f"DO UPDATE SET {', '.join(f'{c} = excluded.{c}' for c in update)} "
        f"WHERE ({', '.join(f'{table}.{c}' for c in update)}) IS DISTINCT FROM ({', '.join(f'excluded.{c}' for c in update)})",
        rows,
    )
    return cursor.rowcount


class _EmbeddingDumper(Dumper):
    """A float32 embedding as pgvector's binary input (its ``oid`` is set per database, once the type exists)."""

    format = Format.BINARY

    def dump(self, obj: np.ndarray) -> bytes:
        vector = np.asarray(obj, dtype=">f4").ravel()
        return struct.pack(">hh", len(vector), 0) + vector.tobytes()


def _embeddings(sent: list[bytes]) -> np.ndarray:
    """Rows of ``vector_send`` output as one float32 matrix: each row's 4-byte header read as one more column."""
    if not sent:
        return np.empty((0, EMBEDDING_DIMENSIONS), dtype=np.float32)
    matrix = np.frombuffer(b"".join(sent), dtype=">f4").reshape(len(sent), -1)
    return matrix[:, 1:].astype(np.float32)


def _organisation(row: tuple) -> Organisation:
    return Organisation(row[0], row[1], row[2], row[3], tuple(row[4]), row[5], row[6])


def _use_case(row: tuple) -> UseCase:
    collections = None if row[3] is None else tuple(row[3])
    return UseCase(row[0], row[1], row[2], collections, *row[4:])


def _face(row: tuple) -> StoredFace:
    embedding = np.frombuffer(row[12], dtype=">f4", offset=4).astype(np.float32) if len(row) > 12 else None
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


def _face_row(face: StoredFace, collection_pk: int) -> tuple:
    """A face as the faces table's columns: _FACE_COLUMNS, then collection_pk and embedding."""
    f = face
    return (
        f.face_id,
        f.image_id,
        f.external_image_id,
        *f.box,
        f.confidence,
        f.image_hash,
        f.model_version,
        f.indexed_at,
        f.user_id,
        collection_pk,
        np.asarray(f.embedding, dtype=np.float32),
    )


def _use_case_row(u: UseCase) -> tuple:
    """A use case as its row, in _USE_CASE_COLUMNS order."""
    return (
        u.use_case_id,
        u.organisation,
        u.purpose,
        None if u.collections is None else list(u.collections),
        u.valid_from,
        u.valid_until,
        u.legal_basis,
        u.authorisation_reference,
        u.approver,
        u.status,
        u.created_at,
        u.status_reason,
    )

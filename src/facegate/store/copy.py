"""Copy an embedded deployment into PostgreSQL: ``facegate store copy --from DATA_DIR --to postgresql://…``.

What is copied, as it is (ids, creation times, counts, model versions): collections with their tags and
retention rules, users, faces with their embeddings bit for bit, remembered ClientRequestTokens, access keys
(their secrets sealed as they are), organisations, use cases, policy states, object sources, settings (the
active fairness audit's report among them), and the audit log: every entry's bytes and every signed checkpoint,
so the hash chain, the Merkle roots and old checkpoints stay valid. Files are not copied: the servers on
PostgreSQL are given the source's sealing key and audit signing key (``FACEGATE_SEALING_KEY``,
``FACEGATE_AUDIT_KEY``).

The source is only read (both its databases opened read-only, the store in one snapshot). Stop its servers
first: what they write meanwhile is left for the next run. The copy is resumable. It goes in a fixed order, in
batches of one transaction each: the audit log first, appended from the target's size once the target's
entries are found to be the source's first ones (which is also what shows that the target holds no other
deployment); then governance; then each collection (its users, faces and tokens, then removing what the source
no longer holds). A row already in the target as it is in the source is not written again, so a run cut short
is completed by the next, and a run after a complete copy writes nothing.
"""

from __future__ import annotations

import sqlite3
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from facegate.audit.base import AuditUnavailable, LogMismatch
from facegate.audit.log import DB_NAME as AUDIT_DB_NAME
from facegate.audit.log import KEY_NAME as AUDIT_KEY_NAME
from facegate.audit.log import AuditLog
from facegate.engine.scores import Scoring
from facegate.engine.similarity import similarity_scale
from facegate.keys import KEY_FILE as SEALING_KEY_NAME
from facegate.store import Collection, StoredFace
from facegate.store.search import FaceSearch
from facegate.store.sqlite import DB_NAME as STORE_DB_NAME
from facegate.store.sqlite import SqliteStore

if TYPE_CHECKING:
    from facegate.store.postgres import PostgresStore

BATCH = 500  # rows per transaction
Wrote = Callable[[str, int], None]


class CopyError(ValueError):
    """The copy was refused (the target holds another deployment, or a copy already in use; the source's log does
    not verify), or what was copied is not found in the target."""


@dataclass
class CopyReport:
    """What a copy found and did; ``written`` counts only what this run wrote."""

    source: Path
    target: str  # the database, named without its password
    audit_entries: int  # in the source's log, and now in the target's
    written: Counter[str] = field(default_factory=Counter)  # what this run wrote, by kind
    collections: int = 0
    faces: int = 0
    users: int = 0
    access_keys: int = 0
    settings: dict[str, str] = field(default_factory=dict)

    @property
    def changed(self) -> bool:
        return any(self.written.values())

    @property
    def sealing_key(self) -> Path:
        """The file that seals the copied access keys' secrets: every server on the target needs it."""
        return self.source / SEALING_KEY_NAME

    @property
    def audit_signing_key(self) -> Path:
        """The key the copied audit log is signed with: every server on the target needs it."""
        return self.source / AUDIT_KEY_NAME


def copy_deployment(
    source_dir: Path | str,
    target_url: str,
    *,
    batch: int = BATCH,
    on_batch: Callable[[str, int], None] | None = None,
) -> CopyReport:
    """Copy the embedded deployment in ``source_dir`` into the PostgreSQL database at ``target_url`` (see the
    module docstring), ``batch`` rows per transaction; ``on_batch(kind, rows)`` is called after each transaction
    that wrote something. Returns what was copied; re-run it to resume a copy cut short or to catch up.

    Raises :class:`CopyError` when ``source_dir`` is not a deployment or its log does not verify, when the
    target holds another deployment or a copy that has been served from since, or when a copied face is not
    found in the target, or when a database cannot be read or written (what was copied until then stays)."""
    from facegate.store import postgres  # first: without psycopg, it says which extra to install

    psycopg = postgres.psycopg

    if not target_url.startswith(("postgresql://", "postgres://")):
        raise CopyError(
            f"--to {target_url.split('://', 1)[0]!r}: give a PostgreSQL database's URL, such as "
            "postgresql://user:password@host:5432/facegate"
        )
    source_dir = Path(source_dir).resolve()
    for name in (STORE_DB_NAME, AUDIT_DB_NAME, AUDIT_KEY_NAME):
        if not (source_dir / name).is_file():
            raise CopyError(
                f"{source_dir} is not an embedded facegate deployment ({name} not found): give its data directory"
            )
    try:
        return _copy(source_dir, target_url, batch, on_batch)
    except (psycopg.Error, sqlite3.Error) as exc:
        raise CopyError(f"The copy stopped: {exc}. Run it again to carry on from where it stopped.") from exc
    except AuditUnavailable as exc:  # a log cannot be opened
        raise CopyError(f"The copy stopped: {exc.__cause__ or exc}. Run it again once the database answers.") from exc


def _copy(source_dir: Path, target_url: str, batch: int, on_batch: Wrote | None) -> CopyReport:
    from facegate.audit.postgres import PostgresAuditLog
    from facegate.store.postgres import PostgresStore

    def wrote(kind: str, rows: int) -> None:
        if rows:
            report.written[kind] += rows
            if on_batch is not None:
                on_batch(kind, rows)

    source = SqliteStore(source_dir, read_only=True)
    source_log = AuditLog(source_dir, read_only=True)
    opened: list = [source, source_log]
    try:
        try:
            target_log = PostgresAuditLog(target_url, source_dir / AUDIT_KEY_NAME)
        except ValueError as exc:  # its log is signed by another key
            raise CopyError(f"The target holds another deployment: {exc}") from None
        opened.append(target_log)
        target = PostgresStore(target_url)
        opened.append(target)
        report = CopyReport(source_dir, target_log.location.removeprefix("in "), source_log.size())

        if target_log.size() == 0 and not target.is_empty():
            raise CopyError(
                f"The target {report.target} holds collections or governance but no audit log: it is not a copy "
                f"of {source_dir}. Copy into an empty database."
            )
        try:
            _, checkpoints = target_log.copy_from(source_log, batch=batch, on_batch=lambda n: wrote("audit entries", n))
            wrote("audit checkpoints", checkpoints)
        except LogMismatch as exc:
            raise CopyError(f"Not copied into {report.target}: {exc}.") from None

        with source.snapshot():
            _copy_governance(source, target, report, batch, wrote)
            for collection, retention in source.all_collections():
                _copy_collection(source, target, collection, retention, report, batch, wrote)
            keep = {collection.pk for collection, _ in source.all_collections()}
            wrote("collections", target.prune_collections(keep))
            wrote("collections", target.reserve_collection_pks(source.last_collection_pk()))
        return report
    finally:
        for part in reversed(opened):
            part.close()


def _copy_governance(source: SqliteStore, target: PostgresStore, report: CopyReport, batch: int, wrote: Wrote) -> None:
    """Organisations before the use cases that name them, use cases before the keys issued for them."""
    for organisations in _chunks(source.list_organisations(), batch):
        wrote("organisations", target.import_organisations(organisations))
    for use_cases in _chunks(source.list_use_cases(), batch):
        wrote("use cases", target.import_use_cases(use_cases))
    keys = source.all_keys()
    report.access_keys = len(keys)
    for chunk in _chunks(keys, batch):
        wrote("access keys", target.import_keys(chunk))
    wrote("policy states", target.import_policy_states(list(source.policy_states().values())))
    wrote("object sources", target.import_sources(source.list_sources()))
    report.settings = source.settings()
    wrote("settings", target.import_settings(report.settings))


def _copy_collection(
    source: SqliteStore,
    target: PostgresStore,
    collection: Collection,
    retention: dict | None,
    report: CopyReport,
    batch: int,
    wrote: Wrote,
) -> None:
    """One collection: its row, users (before the faces that name them), faces, tokens, then what is gone; then
    a spot check that its first and last faces are found by searching the target with their embeddings."""
    wrote("collections", target.import_collection(collection, source.tags(collection), retention))
    user_ids: set[str] = set()
    after = None
    while users := source.list_users(collection, after, batch):
        wrote("users", target.import_users(collection, users))
        user_ids.update(user.user_id for user in users)
        after = users[-1].user_id
    face_ids: set[str] = set()
    first = last = None
    for faces in source.faces_with_embeddings(collection, batch):
        wrote("faces", target.import_faces(collection, faces))
        face_ids.update(face.face_id for face in faces)
        first, last = first or faces[0], faces[-1]
    for tokens in _chunks(source.request_tokens(collection), batch):
        wrote("request tokens", target.import_request_tokens(collection, tokens))
    wrote("collections", target.finish_collection_import(collection, face_ids, user_ids))
    report.collections += 1
    report.faces += len(face_ids)
    report.users += len(user_ids)
    _spot_check(target, collection, [face for face in (first, last) if face is not None])


def _spot_check(target: PostgresStore, collection: Collection, sample: list[StoredFace]) -> None:
    copied = target.get_collection(collection.owner, collection.collection_id)
    search = FaceSearch(target)
    raw = Scoring(similarity_scale(copied.model_version))
    for face in {face.face_id: face for face in sample}.values():
        stored = target.get_faces(copied, [face.face_id], with_embeddings=True)
        exact = bool(stored) and _bits(stored[0].embedding) == _bits(face.embedding)
        found = {
            n.face.face_id for n in search.nearest(copied, face.embedding, raw, raw.scale.similarity(0.01), limit=100)
        }
        if not exact or face.face_id not in found:
            raise CopyError(
                f"After copying collection {collection.collection_id} of {collection.owner}, face {face.face_id} "
                f"is {'not found by search' if exact else 'not stored bit for bit'} in the target"
            )


def _bits(embedding: np.ndarray) -> bytes:
    return np.asarray(embedding, dtype="<f4").tobytes()


def _chunks(rows: list, size: int) -> Iterator[list]:
    for start in range(0, len(rows), size):
        yield rows[start : start + size]

"""The store: collections, faces and users, owned by organisations, and the governance records around them.

It is a few narrow ports, each named for what its callers need (``CollectionStore``, ``FaceStore``,
``FaceSearchStore``, ``RequestTokens``, ``KeyStore``, ``GovernanceStore``, ``SourceStore``, ``JobStore``,
``ReviewStore``, ``ConsoleUserStore``); ``Store`` is all of
them at once. The embedded default is SQLite (``SqliteStore``); ``PostgresStore`` (PostgreSQL + pgvector)
implements the same ports, so every SQL dialect detail stays behind them. ``tests/test_store_contract.py`` is
what any implementation must pass."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol

import numpy as np


@dataclass(frozen=True)
class Collection:
    pk: int
    owner: str
    collection_id: str
    model_version: str
    created_at: float
    face_count: int = 0
    user_count: int = 0


@dataclass(frozen=True)
class StoredFace:
    face_id: str
    image_id: str
    external_image_id: str | None
    box: tuple[float, float, float, float]  # Width, Height, Left, Top as ratios
    confidence: float
    image_hash: str
    model_version: str
    indexed_at: float
    user_id: str | None = None
    embedding: np.ndarray | None = None


@dataclass(frozen=True)
class StoredUser:
    user_id: str
    status: str
    created_at: float
    face_count: int


@dataclass(frozen=True)
class Gallery:
    """A collection's embeddings for exact search: row i of ``embeddings`` belongs to ``face_ids[i]``."""

    face_ids: list[str]
    user_ids: list[str | None]
    embeddings: np.ndarray
    squared_norms: np.ndarray = field(default=None)  # ‖row‖², computed once per load for the distance product

    def __post_init__(self) -> None:
        if self.squared_norms is None:
            object.__setattr__(self, "squared_norms", np.einsum("ij,ij->i", self.embeddings, self.embeddings))


@dataclass(frozen=True)
class AccessKey:
    """An access key pair; the secret is sealed (encrypted) by the key ring before it reaches the store."""

    access_key_id: str
    owner: str
    role: str  # "client" (Rekognition API) or "admin"
    sealed_secret: bytes
    created_at: float
    revoked_at: float | None = None
    use_case_id: str | None = None  # the registered use case the key was issued for, if any


@dataclass(frozen=True)
class Organisation:
    name: str
    category: str  # law_enforcement, ngo, commercial, research, government, city_department, ...
    jurisdiction: str  # e.g. US-IL, EU-DE, US-CA-SF
    status: str  # active, suspended, revoked
    groups: tuple[str, ...]  # named groups, e.g. a moratorium's exemption list
    created_at: float
    status_reason: str | None = None


@dataclass(frozen=True)
class ObjectSource:
    """Where an organisation's ``S3Object`` images are read from: ``name`` is the Bucket clients send; ``kind``
    is "dir" (``location`` a local directory) or "s3" (``location`` JSON: endpoint, bucket, region, access key
    id; the secret key sealed, as access keys' are)."""

    owner: str
    name: str
    kind: str
    location: str
    created_at: float
    sealed_secret: bytes | None = None


@dataclass(frozen=True)
class VideoJob:
    """A stored-video job (StartFaceSearch, StartFaceDetection): its request as the gate allowed it, who asked
    (the job re-runs the gate as them before each batch), its state and which server is running it."""

    job_id: str
    owner: str
    api: str  # "FaceSearch" or "FaceDetection"
    status: str  # IN_PROGRESS, SUCCEEDED, FAILED
    request: dict  # the Start request's members (JSON), after the gate's obligations
    requester: dict  # principal and case/consent references, as the governed operation recorded them
    created_at: float
    updated_at: float
    client_token: str | None = None
    fingerprint: str | None = None
    status_message: str | None = None
    video_metadata: dict | None = None
    progress_ms: int = 0  # how far into the video the analysis has got
    attempts: int = 0  # how many times a server has started it
    worker: str | None = None  # the server running it ("host:pid:nonce"), None when none is
    heartbeat: float | None = None
    review_cases: dict | None = None  # person index (as text) → review case id, when its matches await review


@dataclass(frozen=True)
class JobFinding:
    """One result of a video job: a face at a timestamp (with its track, for face search) as JSON."""

    timestamp_ms: int
    person_index: int | None
    body: dict


@dataclass(frozen=True)
class ReviewCase:
    """An identification held for human review: the candidates the search found (withheld from the client when
    ``withheld``), what a reviewer needs to judge them, and how the case ended (``released``: the face ids the
    reviewers confirmed)."""

    case_id: str
    owner: str
    operation: str
    status: str  # open, released, rejected, escalated
    reviewers_required: int
    withheld: bool
    facts: dict  # use case, purpose, case reference, collection, thresholds, expected false candidates, probe
    candidates: list  # [{rank, similarity, face: {...stored face...}}], most similar first
    requester: str  # the access key (or operator) that searched
    request_id: str
    created_at: float
    updated_at: float
    released: list | None = None
    probe_crop: bytes | None = None  # kept only while the case is open


@dataclass(frozen=True)
class ReviewDecision:
    """One reviewer's verdict on a case: "confirm" a candidate (``face_id``) or "reject" them all."""

    case_id: str
    reviewer: str
    verdict: str
    face_id: str | None
    decided_at: float
    note: str = ""


@dataclass(frozen=True)
class ConsoleUser:
    """A person who signs in to the console (not an access key): a reviewer, operator or auditor of some
    organisations ("*": every one)."""

    username: str
    role: str
    organisations: tuple[str, ...]
    password_hash: str  # argon2id
    created_at: float
    failed_logins: int = 0
    locked_until: float | None = None
    must_change_password: bool = False


@dataclass(frozen=True)
class ConsoleSession:
    token_hash: str  # SHA-256 of the cookie's token: the token itself is never stored
    username: str
    csrf_token: str
    created_at: float
    expires_at: float


@dataclass(frozen=True)
class UseCase:
    use_case_id: str
    organisation: str
    purpose: str
    collections: tuple[str, ...] | None  # None: any collection of the organisation
    valid_from: float
    valid_until: float | None
    legal_basis: str | None
    authorisation_reference: str | None
    approver: str | None
    status: str  # active, revoked
    created_at: float
    status_reason: str | None = None


@dataclass(frozen=True)
class PolicyState:
    template: str
    active: bool
    params: dict
    changed_at: float
    reason: str


class CollectionStore(Protocol):
    """Collections of one owner, their tags and their retention rules."""

    def create_collection(
        self, owner: str, collection_id: str, model_version: str, tags: dict[str, str]
    ) -> Collection: ...
    def get_collection(self, owner: str, collection_id: str) -> Collection | None: ...
    def list_collections(self, owner: str, after: str | None, limit: int) -> list[Collection]: ...
    def delete_collection(self, collection: Collection) -> None: ...

    def tags(self, collection: Collection) -> dict[str, str]: ...
    def set_tags(self, collection: Collection, tags: dict[str, str]) -> None: ...
    def remove_tags(self, collection: Collection, keys: list[str]) -> None: ...
    def collections_tagged(self, key: str, value: str) -> list[Collection]: ...

    def set_retention(self, collection: Collection, rule: dict | None) -> None: ...
    def retention_rules(self) -> list[tuple[Collection, dict]]: ...


class FaceStore(Protocol):
    """The faces indexed into a collection and the users they are associated with."""

    def add_faces(self, collection: Collection, faces: list[StoredFace]) -> list[StoredFace]: ...
    def faces_of_image(
        self, collection: Collection, image_hash: str, external_image_id: str | None
    ) -> list[StoredFace]: ...
    def list_faces(
        self,
        collection: Collection,
        after: str | None,
        limit: int,
        *,
        user_id: str | None = None,
        face_ids: list[str] | None = None,
    ) -> list[StoredFace]: ...
    def get_faces(
        self, collection: Collection, face_ids: list[str], *, with_embeddings: bool = False
    ) -> list[StoredFace]: ...
    def delete_faces(self, collection: Collection, face_ids: list[str]) -> list[str]: ...
    def faces_indexed_before(self, collection: Collection, cutoff: float) -> list[StoredFace]: ...

    def create_user(self, collection: Collection, user_id: str) -> None: ...
    def get_user(self, collection: Collection, user_id: str) -> StoredUser | None: ...
    def delete_user(self, collection: Collection, user_id: str) -> None: ...
    def list_users(self, collection: Collection, after: str | None, limit: int) -> list[StoredUser]: ...
    def set_face_user(self, collection: Collection, face_ids: list[str], user_id: str | None) -> None: ...

    # Face crops kept for human review where the collection keeps them; deleted with their face.
    def add_thumbnails(self, collection: Collection, thumbnails: dict[str, bytes]) -> None: ...
    def thumbnails(self, collection: Collection, face_ids: list[str]) -> dict[str, bytes]: ...


class FaceSearchStore(Protocol):
    """What a search reads: a collection's gallery for exact search, or candidates from its vector index."""

    def gallery(self, collection: Collection) -> Gallery: ...
    # Approximate candidates (current faces, with embeddings) for exact re-ranking; None: search ``gallery``.
    def nearest_faces(self, collection: Collection, probe: np.ndarray, k: int) -> list[StoredFace] | None: ...
    def rebuild_vector_index(self, collection: Collection) -> int: ...
    def prepare_vector_indexes(self) -> int: ...


class RequestTokens(Protocol):
    """ClientRequestTokens already answered, per collection and operation, so a retried request is not redone."""

    def recall_request(self, collection: Collection, operation: str, token: str) -> str | None: ...
    def remember_request(self, collection: Collection, operation: str, token: str, fingerprint: str) -> None: ...


class KeyStore(Protocol):
    """Access keys, their secrets sealed; issuing or revoking one is a governance change."""

    def add_key(self, key: AccessKey) -> None: ...
    def get_key(self, access_key_id: str) -> AccessKey | None: ...
    def count_keys(self, role: str) -> int: ...
    def revoke_key(self, access_key_id: str) -> bool: ...


class GovernanceStore(Protocol):
    """Organisations, their use cases, policy template states and settings: what the policy gate decides on."""

    # Every change (keys' included) bumps governance_generation(), so request-time caches know to reload.
    def governance_generation(self) -> int: ...
    def get_setting(self, key: str) -> str | None: ...
    def set_setting(self, key: str, value: str | None) -> None: ...
    def add_organisation(self, organisation: Organisation) -> None: ...
    def get_organisation(self, name: str) -> Organisation | None: ...
    def list_organisations(self) -> list[Organisation]: ...
    def update_organisation(
        self, name: str, *, status: str | None = None, reason: str | None = None, groups: tuple[str, ...] | None = None
    ) -> None: ...
    def add_use_case(self, use_case: UseCase) -> None: ...
    def get_use_case(self, use_case_id: str) -> UseCase | None: ...
    def list_use_cases(self, organisation: str | None = None) -> list[UseCase]: ...
    def set_use_case_status(self, use_case_id: str, status: str, reason: str) -> None: ...
    def policy_states(self) -> dict[str, PolicyState]: ...
    def set_policy_state(self, state: PolicyState) -> None: ...


class SourceStore(Protocol):
    """Object sources, per organisation: a source of another organisation is never returned."""

    # Changes bump governance_generation(), like every other governance record.
    def add_source(self, source: ObjectSource) -> None: ...
    def get_source(self, owner: str, name: str) -> ObjectSource | None: ...
    def list_sources(self, owner: str | None = None) -> list[ObjectSource]: ...
    def remove_source(self, owner: str, name: str) -> bool: ...


class JobStore(Protocol):
    """Video jobs and their findings. A job is run by one worker at a time: every write names the worker and
    is refused (False/None) once another has claimed the job, so two servers never both run it."""

    # The stored job: an earlier one when (owner, api, client_token) was already used.
    def add_job(self, job: VideoJob) -> VideoJob: ...
    def get_job(self, owner: str, job_id: str) -> VideoJob | None: ...
    def list_jobs(self, owner: str | None = None, status: str | None = None) -> list[VideoJob]: ...
    # Take an IN_PROGRESS job over from ``expected_worker`` (None: unclaimed): attempts + 1, findings cleared.
    def claim_job(self, job_id: str, worker: str, expected_worker: str | None) -> VideoJob | None: ...
    def record_job_progress(
        self,
        job_id: str,
        worker: str,
        findings: list[JobFinding],
        progress_ms: int,
        video_metadata: dict | None = None,
    ) -> bool: ...
    def finish_job(self, job_id: str, worker: str | None, status: str, message: str | None) -> VideoJob | None: ...
    def set_job_review_cases(self, job_id: str, cases: dict[str, str]) -> None: ...
    # Findings in TIMESTAMP (time, then track) or INDEX (track, then time) order.
    def job_findings(self, job_id: str, order: str, offset: int, limit: int) -> list[JobFinding]: ...


class ReviewStore(Protocol):
    """Review cases and reviewers' decisions: one decision per reviewer and case, a case closed once."""

    def add_case(self, case: ReviewCase) -> None: ...
    def get_case(self, case_id: str) -> ReviewCase | None: ...
    # Newest first; ``owners`` None: every organisation's.
    def list_cases(self, owners: list[str] | None = None, status: str | None = None) -> list[ReviewCase]: ...
    def decisions(self, case_id: str) -> list[ReviewDecision]: ...
    # A decision recorded and the case settled in one transaction holding the case (see ReviewTables).
    def decide_case(self, decision: ReviewDecision, settle) -> tuple[str, ReviewCase | None]: ...


class ConsoleUserStore(Protocol):
    """The console's users and their sessions."""

    def add_console_user(self, user: ConsoleUser) -> None: ...
    def get_console_user(self, username: str) -> ConsoleUser | None: ...
    def list_console_users(self) -> list[ConsoleUser]: ...
    def update_console_user(
        self,
        username: str,
        *,
        failed_logins: int | None = None,
        locked_until: float | None = None,
        password_hash: str | None = None,
        must_change_password: bool | None = None,
    ) -> None: ...
    def count_failed_login(self, username: str) -> int: ...
    def add_session(self, session: ConsoleSession) -> None: ...
    def get_session(self, token_hash: str) -> ConsoleSession | None: ...
    def delete_sessions(self, *, token_hash: str | None = None, username: str | None = None) -> None: ...


class Store(
    CollectionStore,
    FaceStore,
    FaceSearchStore,
    RequestTokens,
    KeyStore,
    GovernanceStore,
    SourceStore,
    JobStore,
    ReviewStore,
    ConsoleUserStore,
    Protocol,
):
    """Every port at once: what the service and the governance layer are given today."""

    def close(self) -> None: ...

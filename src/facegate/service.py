"""The Rekognition face operations and their semantics — the one place where the rules live.

The CLI, the Python API and the HTTP API all call ``FaceService.call(owner, operation, params)`` (through the
governed operation): params are the operation's Rekognition request shape (blobs as bytes), the answer is a
typed result (``facegate.results``) that ``facegate.wire`` writes as the Rekognition response. ``owner`` is the
organisation on whose behalf the call runs; no operation ever reads or changes another owner's collections.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import secrets
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Protocol

import numpy as np

from facegate.crops import face_crop, thumbnails_setting
from facegate.engine import AnalysedImage, Face, FaceEngine
from facegate.engine import video as video_limits
from facegate.engine.scores import Scoring
from facegate.errors import (
    ConflictException,
    FacegateError,
    IdempotentParameterMismatchException,
    InvalidPaginationTokenException,
    InvalidParameterException,
    InvalidS3ObjectException,
    LimitExceededException,
    ResourceNotFoundException,
    ServiceQuotaExceededException,
    VideoTooLargeException,
)
from facegate.notifications import notification_url
from facegate.quality import filter_reasons
from facegate.results import (
    Association,
    CollectionCreated,
    CollectionDeleted,
    CollectionDescription,
    CollectionPage,
    Comparison,
    Detection,
    FaceMatch,
    FaceMatches,
    FacePage,
    FaceRecord,
    FaceRefusal,
    FacesDeleted,
    FacesLoaded,
    FacesPurged,
    FoundFace,
    IndexResult,
    JobStarted,
    PersonMatch,
    ResourceTags,
    Result,
    ReviewOutcome,
    TagsChanged,
    TargetMatch,
    UnindexedFace,
    UserCreated,
    UserDeleted,
    UserMatch,
    UserMatches,
    UserPage,
    VideoBatch,
    VideoFace,
    VideoJobResults,
)
from facegate.review import CASE_ID, released_candidates, released_ids
from facegate.snapshots import stored_face_of
from facegate.sources import MAX_VIDEO_BYTES
from facegate.store import Collection, Store, StoredFace, StoredUser, VideoJob
from facegate.store.search import FaceSearch, distances
from facegate.tracking import PersonTracker
from facegate.validation import validate_request
from facegate.video import (
    DETECTION,
    IN_PROGRESS,
    SEARCH,
    SUCCEEDED,
    face_finding,
    face_of,
    person_finding,
    person_of,
    requested_locally,
)

DEFAULT_THRESHOLD = 80.0  # FaceMatchThreshold, SimilarityThreshold, UserMatchThreshold
ASSOCIATE_THRESHOLD = 75.0  # AssociateFaces' UserMatchThreshold default
DEFAULT_SEARCH_MAX = 100
DEFAULT_PAGE = 1000
DEFAULT_USER_PAGE = 100
MAX_FACES_PER_USER = 100
MAX_COMPARE_TARGETS = 100
REGION = "us-east-1"
MAX_JOBS_IN_PROGRESS = 20  # per organisation, as Rekognition's default quota
MAX_JOB_PAGE = 1000
MAX_VIDEO_MATCHES = 100  # per face per sampled frame
VIDEO_STARTS = frozenset({"StartFaceSearch", "StartFaceDetection"})


@dataclass(frozen=True)
class _PendingIndex:
    """An IndexFaces request checked and not yet answered: its image needs the face work."""

    collection: Collection
    params: dict
    data: bytes
    image_hash: str


class FaceService:
    """Rekognition's face operations over a face engine and a store."""

    def __init__(
        self,
        store: Store,
        engine: FaceEngine,
        region: str = REGION,
        videos: VideoSizes | None = None,
        scores: Scoring | None = None,
    ) -> None:
        self.store = store
        self.search = FaceSearch(store)
        self.engine = engine
        self.scores = scores or Scoring(engine.similarity)  # raw distances unless a calibration is served
        self.region = region
        self.videos = videos
        self.on_job_added: Callable[[], None] | None = None  # the job runner's wake-up, where one runs
        self._operations: dict[str, Callable[[str, dict], Result]] = {
            "CreateCollection": self.create_collection,
            "DescribeCollection": self.describe_collection,
            "ListCollections": self.list_collections,
            "DeleteCollection": self.delete_collection,
            "IndexFaces": self.index_faces,
            "ListFaces": self.list_faces,
            "DeleteFaces": self.delete_faces,
            "SearchFaces": self.search_faces,
            "SearchFacesByImage": self.search_faces_by_image,
            "CompareFaces": self.compare_faces,
            "DetectFaces": self.detect_faces,
            "CreateUser": self.create_user,
            "DeleteUser": self.delete_user,
            "ListUsers": self.list_users,
            "AssociateFaces": self.associate_faces,
            "DisassociateFaces": self.disassociate_faces,
            "SearchUsers": self.search_users,
            "SearchUsersByImage": self.search_users_by_image,
            "TagResource": self.tag_resource,
            "UntagResource": self.untag_resource,
            "ListTagsForResource": self.list_tags_for_resource,
            "GetFaceSearch": self.get_face_search,
            "GetFaceDetection": self.get_face_detection,
        }
        self._starts: dict[str, Callable[[str, dict, dict], Result]] = {
            "StartFaceSearch": self.start_face_search,
            "StartFaceDetection": self.start_face_detection,
        }
        # facegate's own operations, beyond Rekognition's: checked here, not against botocore's model.
        self._internal: dict[str, Callable[[str, dict], Result]] = {
            "PurgeFaces": self.purge_faces,
            "LoadFaces": self.load_faces,
            "GetReviewCase": self.get_review_case,
        }

    @property
    def operations(self) -> frozenset[str]:
        """The Rekognition operations (what the HTTP API serves)."""
        return frozenset(self._operations) | frozenset(self._starts)

    def call(self, owner: str, operation: str, params: dict, requester: dict | None = None) -> Result:
        """Validate ``params`` against Rekognition's model and run ``operation`` for ``owner``. A video job's
        Start keeps ``requester`` (who asked, as the governed operation recorded it) with the job."""
        if operation in self._internal:
            return self._internal[operation](owner, params)
        if operation in self._starts:
            if requester is None:
                raise InvalidParameterException(f"{operation} needs the requester its job will run for.")
            return self._starts[operation](owner, _validate_start(operation, params, requester), requester)
        handler = self._operations.get(operation)
        if handler is None:
            raise InvalidParameterException(f"Operation {operation} is not supported by facegate.")
        return handler(owner, validate_request(operation, params))

    # Collections

    def create_collection(self, owner: str, p: dict) -> CollectionCreated:
        collection = self.store.create_collection(
            owner, p["CollectionId"], self.engine.model_version, p.get("Tags", {})
        )
        return CollectionCreated(self._arn(collection), collection.model_version)

    def describe_collection(self, owner: str, p: dict) -> CollectionDescription:
        collection = self._collection(owner, p["CollectionId"])
        return CollectionDescription(
            arn=self._arn(collection),
            model_version=collection.model_version,
            face_count=collection.face_count,
            user_count=collection.user_count,
            created_at=collection.created_at,
        )

    def list_collections(self, owner: str, p: dict) -> CollectionPage:
        limit = p.get("MaxResults") or DEFAULT_PAGE  # the model allows 0; Rekognition reads it as unset
        after = _read_token(p.get("NextToken"), "ListCollections", owner)
        page = self.store.list_collections(owner, after, limit + 1)
        more = len(page) > limit
        token = _make_token(page[limit - 1].collection_id, "ListCollections", owner) if more else None
        return CollectionPage(tuple(page[:limit]), token)

    def rebuild_index(self, owner: str, collection_id: str) -> int:
        """Rebuild a collection's approximate-search index from the store (not a Rekognition operation)."""
        return self.store.rebuild_vector_index(self._collection(owner, collection_id))

    def prepare_search_indexes(self) -> int:
        """Load or build the approximate-search index of every collection that needs one (at startup)."""
        return self.store.prepare_vector_indexes()

    def delete_collection(self, owner: str, p: dict) -> CollectionDeleted:
        collection = self._collection(owner, p["CollectionId"])
        self.store.delete_collection(collection)
        return CollectionDeleted(collection.collection_id)

    # Faces

    def index_many(self, owner: str, requests: list[dict]) -> list[IndexResult | FacegateError]:
        """IndexFaces for several images (bulk indexing): each checked, filtered and stored on its own, exactly as
        IndexFaces would, with one run of the embedding network over all their faces. Each result is
        IndexFaces', or the error that stopped that image alone."""
        results: list[IndexResult | FacegateError | None] = [None] * len(requests)
        pending: list[tuple[int, _PendingIndex, np.ndarray]] = []
        for i, params in enumerate(requests):
            try:
                prepared = self._prepare_index(owner, validate_request("IndexFaces", params))
                if isinstance(prepared, IndexResult):
                    results[i] = prepared
                else:
                    pending.append((i, prepared, self.engine.decode(prepared.data)))
            except FacegateError as exc:
                results[i] = exc
        analysed = self.engine.analyse_many([image for _, _, image in pending])
        for (i, prepared, _), image in zip(pending, analysed, strict=True):
            try:
                results[i] = self._store_index(prepared, image)
            except FacegateError as exc:
                results[i] = exc
        return results  # type: ignore[return-value]

    def index_faces(self, owner: str, p: dict) -> IndexResult:
        prepared = self._prepare_index(owner, p)
        if isinstance(prepared, IndexResult):
            return prepared
        return self._store_index(prepared, self.engine.analyse_bytes(prepared.data))

    def _prepare_index(self, owner: str, p: dict) -> _PendingIndex | IndexResult:
        """What IndexFaces checks before any face work; an image already indexed is answered here."""
        collection = self._collection(owner, p["CollectionId"])
        self._check_model(collection)
        data = _image_bytes(p["Image"])
        external_id = p.get("ExternalImageId")
        image_hash = hashlib.sha256(data).hexdigest()
        already = self.store.faces_of_image(collection, image_hash, external_id)
        if already:
            return _repeat(collection, already)
        return _PendingIndex(collection, p, data, image_hash)

    def _store_index(self, prepared: _PendingIndex, analysed: AnalysedImage) -> IndexResult:
        """IndexFaces after the face work: the quality filter and MaxFaces, then one write for the image."""
        collection, p = prepared.collection, prepared.params
        external_id = p.get("ExternalImageId")
        max_faces = p.get("MaxFaces")
        level = p.get("QualityFilter", "AUTO")
        kept: list[FoundFace] = []
        unindexed: list[UnindexedFace] = []
        for face in analysed.faces:  # largest first
            reasons = filter_reasons(face, level)
            if not reasons and max_faces is not None and len(kept) >= max_faces:
                reasons = ["EXCEEDS_MAX_FACES"]
            if reasons:
                unindexed.append(UnindexedFace(FoundFace.of(face, analysed), tuple(reasons)))
            else:
                kept.append(FoundFace.of(face, analysed))

        image_id = str(uuid.uuid4())
        now = time.time()
        new = [
            StoredFace(
                face_id=str(uuid.uuid4()),
                image_id=image_id,
                external_image_id=external_id,
                box=_ratios(found),
                confidence=found.confidence,
                image_hash=prepared.image_hash,
                model_version=collection.model_version,
                indexed_at=now,
                embedding=found.face.embedding,
            )
            for found in kept
        ]
        stored = self.store.add_faces(collection, new)
        if new and stored[0].face_id == new[0].face_id:
            self.scores.remember([f.face_id for f in new], np.stack([f.embedding for f in new]))
        if stored and stored[0].face_id != (new[0].face_id if new else None):
            # A concurrent IndexFaces of the same image won the race; report its faces, as a repeat would.
            return _repeat(collection, stored)
        if new and self.store.get_setting(thumbnails_setting(collection)):  # kept for reviewers, off by default
            crops = {face.face_id: face_crop(prepared.data, found) for face, found in zip(new, kept, strict=True)}
            self.store.add_thumbnails(collection, {k: v for k, v in crops.items() if v is not None})
        records = tuple(FaceRecord(record, found) for record, found in zip(new, kept, strict=True))
        return IndexResult(collection.model_version, records, tuple(unindexed))

    def list_faces(self, owner: str, p: dict) -> FacePage:
        collection = self._collection(owner, p["CollectionId"])
        limit = p.get("MaxResults") or DEFAULT_PAGE  # the model allows 0; Rekognition reads it as unset
        scope = f"{owner}/{collection.collection_id}/{p.get('UserId')}/{','.join(p.get('FaceIds', []))}"
        after = _read_token(p.get("NextToken"), "ListFaces", scope)
        page = self.store.list_faces(collection, after, limit + 1, user_id=p.get("UserId"), face_ids=p.get("FaceIds"))
        token = _make_token(page[limit - 1].face_id, "ListFaces", scope) if len(page) > limit else None
        return FacePage(tuple(page[:limit]), collection.model_version, token)

    def delete_faces(self, owner: str, p: dict) -> FacesDeleted:
        collection = self._collection(owner, p["CollectionId"])
        requested = list(dict.fromkeys(p["FaceIds"]))
        found = {f.face_id: f for f in self.store.get_faces(collection, requested)}
        refused: list[FaceRefusal] = []
        deletable = []
        for face_id in requested:
            face = found.get(face_id)
            if face is None:
                refused.append(FaceRefusal(face_id, ("FACE_NOT_FOUND",)))
            elif face.user_id is not None:
                refused.append(FaceRefusal(face_id, ("ASSOCIATED_TO_AN_EXISTING_USER",), user_id=face.user_id))
            else:
                deletable.append(face_id)
        deleted = self.store.delete_faces(collection, deletable)
        return FacesDeleted(tuple(deleted), tuple(refused))

    def purge_faces(self, owner: str, p: dict) -> FacesPurged:
        """Retention's deletion (not a Rekognition operation): the faces go even when associated with a user;
        the user stays, with the faces it has left."""
        face_ids = p.get("FaceIds")
        if not isinstance(face_ids, list) or not all(isinstance(f, str) for f in face_ids):
            raise InvalidParameterException("PurgeFaces needs FaceIds: a list of face ids.")
        if not isinstance(p.get("Reason"), str) or not p["Reason"]:
            raise InvalidParameterException("PurgeFaces needs a Reason: why the faces are destroyed.")
        collection = self._collection(owner, p.get("CollectionId", ""))
        deleted = []
        for start in range(0, len(face_ids), 500):
            deleted += self.store.delete_faces(collection, list(dict.fromkeys(face_ids[start : start + 500])))
        return FacesPurged(tuple(deleted))

    def load_faces(self, owner: str, p: dict) -> FacesLoaded:
        """Store faces embedded elsewhere (an experiment's gallery, embedded once for every threshold), as they
        are: not a Rekognition operation, and no quality filter — the caller chose them."""
        faces = p.get("Faces")
        if not isinstance(faces, list) or not all(isinstance(f, StoredFace) for f in faces):
            raise InvalidParameterException("LoadFaces needs Faces: a list of stored faces with embeddings.")
        collection = self._collection(owner, p.get("CollectionId", ""))
        self._check_model(collection)
        if any(f.model_version != collection.model_version or f.embedding is None for f in faces):
            raise InvalidParameterException(
                f"LoadFaces: every face needs an embedding of model {collection.model_version}."
            )
        # One transaction for the call. add_faces returns the faces already stored when the first face's image is
        # in the collection: loading is for new images only.
        stored = self.store.add_faces(collection, faces)
        if faces and stored[0].face_id != faces[0].face_id:
            raise ConflictException(f"Collection {collection.collection_id} already holds these images: not loaded.")
        return FacesLoaded(tuple(f.face_id for f in stored))

    # Search and compare

    def search_faces(self, owner: str, p: dict) -> FaceMatches:
        collection = self._collection(owner, p["CollectionId"])
        face_id = p["FaceId"]
        probe = self.store.get_faces(collection, [face_id], with_embeddings=True)
        if not probe:
            raise ResourceNotFoundException(f"FaceId {face_id} was not found in collection {collection.collection_id}.")
        matches = self._search(
            collection,
            probe[0].embedding,
            p.get("FaceMatchThreshold", DEFAULT_THRESHOLD),
            p.get("MaxFaces", DEFAULT_SEARCH_MAX),
            exclude=face_id,
        )
        return FaceMatches(matches, collection.model_version, searched_face_id=face_id, scores=self.scores.name)

    def search_faces_by_image(self, owner: str, p: dict) -> FaceMatches:
        collection = self._collection(owner, p["CollectionId"])
        self._check_model(collection)
        analysed = self.engine.analyse_bytes(_image_bytes(p["Image"]))
        face = _largest_usable(analysed, p.get("QualityFilter", "NONE"))
        matches = self._search(
            collection,
            face.embedding,
            p.get("FaceMatchThreshold", DEFAULT_THRESHOLD),
            p.get("MaxFaces", DEFAULT_SEARCH_MAX),
        )
        return FaceMatches(
            matches, collection.model_version, searched_face=FoundFace.of(face, analysed), scores=self.scores.name
        )

    def compare_faces(self, owner: str, p: dict) -> Comparison:
        level = p.get("QualityFilter", "NONE")
        source = self.engine.analyse_bytes(_image_bytes(p["SourceImage"], "SourceImage"))
        source_face = _largest_usable(source, level, "SourceImage")
        target = self.engine.analyse_bytes(_image_bytes(p["TargetImage"], "TargetImage"), max_faces=MAX_COMPARE_TARGETS)
        threshold = p.get("SimilarityThreshold", DEFAULT_THRESHOLD)
        targets = [f for f in target.faces if not filter_reasons(f, level)]
        matches: list[TargetMatch] = []
        unmatched: list[FoundFace] = []
        if targets:
            similarities = self._similarities(np.stack([f.embedding for f in targets]), source_face.embedding)
            for face, similarity in zip(targets, similarities, strict=True):
                if similarity >= threshold:
                    matches.append(TargetMatch(float(similarity), FoundFace.of(face, target)))
                else:
                    unmatched.append(FoundFace.of(face, target))
        matches.sort(key=lambda m: m.similarity, reverse=True)
        return Comparison(FoundFace.of(source_face, source), tuple(matches), tuple(unmatched), self.scores.name)

    def detect_faces(self, owner: str, p: dict) -> Detection:
        analysed = self.engine.analyse_bytes(_image_bytes(p["Image"]), embed=False)
        return Detection(tuple(FoundFace.of(face, analysed) for face in analysed.faces))

    def _search(
        self, collection: Collection, probe: np.ndarray, threshold: float, limit: int, exclude: str | None = None
    ) -> tuple[FaceMatch, ...]:
        found = self.search.nearest(collection, probe, self.scores, threshold, limit, exclude_face=exclude)
        return tuple(FaceMatch(n.similarity, n.face) for n in found)

    def _similarities(self, embeddings: np.ndarray, probe: np.ndarray) -> np.ndarray:
        return self.scores.similarities(probe, distances(embeddings, probe), embeddings)

    # Users

    def create_user(self, owner: str, p: dict) -> UserCreated:
        collection = self._collection(owner, p["CollectionId"])
        if self._replayed(collection, "CreateUser", p):
            return UserCreated(p["UserId"])
        if self.store.get_user(collection, p["UserId"]) is not None:
            raise ConflictException(f"User {p['UserId']} already exists in collection {collection.collection_id}.")
        self.store.create_user(collection, p["UserId"])
        self._remember(collection, "CreateUser", p)
        return UserCreated(p["UserId"])

    def delete_user(self, owner: str, p: dict) -> UserDeleted:
        collection = self._collection(owner, p["CollectionId"])
        if self._replayed(collection, "DeleteUser", p):
            return UserDeleted(p["UserId"])
        self._user(collection, p["UserId"])
        self.store.delete_user(collection, p["UserId"])
        self._remember(collection, "DeleteUser", p)
        return UserDeleted(p["UserId"])

    def list_users(self, owner: str, p: dict) -> UserPage:
        collection = self._collection(owner, p["CollectionId"])
        limit = p.get("MaxResults") or DEFAULT_USER_PAGE
        scope = f"{owner}/{collection.collection_id}"
        after = _read_token(p.get("NextToken"), "ListUsers", scope)
        page = self.store.list_users(collection, after, limit + 1)
        token = _make_token(page[limit - 1].user_id, "ListUsers", scope) if len(page) > limit else None
        return UserPage(tuple(page[:limit]), token)

    def associate_faces(self, owner: str, p: dict) -> Association:
        collection = self._collection(owner, p["CollectionId"])
        self._replayed(collection, "AssociateFaces", p)  # a replay re-runs: association is idempotent
        user_id = p["UserId"]
        user = self._user(collection, user_id)
        threshold = p.get("UserMatchThreshold", ASSOCIATE_THRESHOLD)
        requested = list(dict.fromkeys(p["FaceIds"]))
        found = {f.face_id: f for f in self.store.get_faces(collection, requested, with_embeddings=True)}
        members = [
            f.embedding
            for f in self.store.get_faces(
                collection,
                [f.face_id for f in self.store.list_faces(collection, None, MAX_FACES_PER_USER, user_id=user_id)],
                with_embeddings=True,
            )
        ]
        count = user.face_count
        associated: list[str] = []
        refused: list[FaceRefusal] = []
        for face_id in requested:
            face = found.get(face_id)
            if face is None:
                refused.append(FaceRefusal(face_id, ("FACE_NOT_FOUND",)))
                continue
            if face.user_id == user_id:
                associated.append(face_id)
                continue
            if face.user_id is not None:
                refused.append(FaceRefusal(face_id, ("ASSOCIATED_TO_A_DIFFERENT_USER",), user_id=face.user_id))
                continue
            if members:
                confidence = float(np.max(self._similarities(np.stack(members), face.embedding)))
                if confidence < threshold:
                    refused.append(
                        FaceRefusal(face_id, ("LOW_MATCH_CONFIDENCE",), user_id=user_id, confidence=confidence)
                    )
                    continue
            if count >= MAX_FACES_PER_USER:
                raise ServiceQuotaExceededException(
                    f"User {user_id} already has {MAX_FACES_PER_USER} faces, the most a user can have."
                )
            associated.append(face_id)
            members.append(face.embedding)
            count += 1
        self.store.set_face_user(collection, [f for f in associated if found[f].user_id is None], user_id)
        self._remember(collection, "AssociateFaces", p)
        return Association(user_id, tuple(associated), tuple(refused))

    def disassociate_faces(self, owner: str, p: dict) -> Association:
        collection = self._collection(owner, p["CollectionId"])
        self._replayed(collection, "DisassociateFaces", p)
        user_id = p["UserId"]
        self._user(collection, user_id)
        requested = list(dict.fromkeys(p["FaceIds"]))
        found = {f.face_id: f for f in self.store.get_faces(collection, requested)}
        done: list[str] = []
        refused: list[FaceRefusal] = []
        for face_id in requested:
            face = found.get(face_id)
            if face is None:
                refused.append(FaceRefusal(face_id, ("FACE_NOT_FOUND",)))
            elif face.user_id not in (user_id, None):
                refused.append(FaceRefusal(face_id, ("ASSOCIATED_TO_A_DIFFERENT_USER",), user_id=face.user_id))
            elif face.user_id is None:
                refused.append(FaceRefusal(face_id, ("FACE_NOT_FOUND",)))
            else:
                done.append(face_id)
        self.store.set_face_user(collection, done, None)
        self._remember(collection, "DisassociateFaces", p)
        return Association(user_id, tuple(done), tuple(refused))

    def search_users(self, owner: str, p: dict) -> UserMatches:
        collection = self._collection(owner, p["CollectionId"])
        if ("UserId" in p) == ("FaceId" in p):
            raise InvalidParameterException("SearchUsers needs exactly one of UserId or FaceId.")
        if "FaceId" in p:
            probe = self.store.get_faces(collection, [p["FaceId"]], with_embeddings=True)
            if not probe:
                raise ResourceNotFoundException(
                    f"FaceId {p['FaceId']} was not found in collection {collection.collection_id}."
                )
            probes = [probe[0].embedding]
        else:
            self._user(collection, p["UserId"])
            faces = self.store.list_faces(collection, None, MAX_FACES_PER_USER, user_id=p["UserId"])
            probes = [
                f.embedding for f in self.store.get_faces(collection, [f.face_id for f in faces], with_embeddings=True)
            ]
        matches = self._search_users(
            collection,
            probes,
            p.get("UserMatchThreshold", DEFAULT_THRESHOLD),
            p.get("MaxUsers", DEFAULT_SEARCH_MAX),
            exclude_user=p.get("UserId"),  # searching by user leaves that user out; by face keeps the face's user
        )
        return UserMatches(
            matches,
            collection.model_version,
            searched_face_id=p.get("FaceId"),
            searched_user_id=p.get("UserId"),
            scores=self.scores.name,
        )

    def search_users_by_image(self, owner: str, p: dict) -> UserMatches:
        collection = self._collection(owner, p["CollectionId"])
        self._check_model(collection)
        analysed = self.engine.analyse_bytes(_image_bytes(p["Image"]))
        face = _largest_usable(analysed, p.get("QualityFilter", "NONE"))
        matches = self._search_users(
            collection,
            [face.embedding],
            p.get("UserMatchThreshold", DEFAULT_THRESHOLD),
            p.get("MaxUsers", DEFAULT_SEARCH_MAX),
        )
        return UserMatches(
            matches,
            collection.model_version,
            searched_face=FoundFace.of(face, analysed),
            unsearched=tuple(FoundFace.of(other, analysed) for other in analysed.faces if other is not face),
            scores=self.scores.name,
        )

    def _search_users(
        self,
        collection: Collection,
        probes: list[np.ndarray],
        threshold: float,
        limit: int,
        exclude_user: str | None = None,
    ) -> tuple[UserMatch, ...]:
        """A user's similarity is the best similarity between any probe and any of the user's faces."""
        found = self.search.nearest_users(collection, probes, self.scores, threshold, limit, exclude_user=exclude_user)
        return tuple(UserMatch(n.similarity, n.user_id) for n in found)

    # Stored video

    def start_face_search(self, owner: str, p: dict, requester: dict) -> JobStarted:
        collection = self._collection(owner, p["CollectionId"])
        self._check_model(collection)
        return self._start_job(owner, SEARCH, p, requester)

    def start_face_detection(self, owner: str, p: dict, requester: dict) -> JobStarted:
        return self._start_job(owner, DETECTION, p, requester)

    def _start_job(self, owner: str, api: str, p: dict, requester: dict) -> JobStarted:
        if self.videos is None:
            raise InvalidParameterException("This facegate has no video sources configured.")
        local = requested_locally(requester)
        size = self.videos.size(owner, p["Video"], local=local)
        if size > MAX_VIDEO_BYTES:
            raise VideoTooLargeException(f"The video is {size:,} bytes; at most {MAX_VIDEO_BYTES:,} can be analysed.")
        duration = self.videos.duration_ms(owner, p["Video"], local=local)  # None: the job checks it
        if duration is not None and duration > video_limits.MAX_VIDEO_MS:
            raise VideoTooLargeException(video_limits.too_long(duration))
        channel = p.get("NotificationChannel")
        if channel and notification_url(self.store, owner, channel["SNSTopicArn"]) is None:
            raise InvalidParameterException(
                f"SNSTopicArn {channel['SNSTopicArn']} is not a notification channel configured for {owner} "
                "(facegate notifications add)."
            )
        fingerprint = _fingerprint(p)
        token = p.get("ClientRequestToken")
        running = self.store.list_jobs(owner, IN_PROGRESS)
        repeat = next((j for j in running if token and j.client_token == token and j.api == api), None)
        if repeat is None and len(running) >= MAX_JOBS_IN_PROGRESS:
            raise LimitExceededException(
                f"{owner} has {len(running)} video jobs in progress, the most it may have: wait for one to finish."
            )
        now = time.time()
        job = VideoJob(
            job_id=secrets.token_hex(32),
            owner=owner,
            api=api,
            status=IN_PROGRESS,
            request=_json_safe(p),
            requester=requester,
            created_at=now,
            updated_at=now,
            client_token=token,
            fingerprint=fingerprint,
        )
        stored = self.store.add_job(job)
        if stored.job_id != job.job_id:
            if stored.fingerprint != fingerprint:
                raise IdempotentParameterMismatchException(
                    f"ClientRequestToken {token} was already used for a different Start{api} request."
                )
            return JobStarted(stored.job_id)
        if self.on_job_added is not None:
            self.on_job_added()
        return JobStarted(job.job_id)

    def get_face_search(self, owner: str, p: dict) -> VideoJobResults:
        job = self._job(owner, p["JobId"], SEARCH)
        findings, token = self._findings(owner, job, p, p.get("SortBy", "TIMESTAMP"))
        persons = [person_of(f) for f in findings]
        if job.review_cases:  # matches under review reach the client once released, and only those
            persons = self._reviewed(job, persons)
        elif int(job.requester.get("reviewers") or 0) >= 2:  # two-person review and no case: nothing leaves
            persons = []
        return VideoJobResults(job, persons=tuple(persons), next_token=token)

    def video_persons(self, owner: str, job: VideoJob) -> list[PersonMatch]:
        """Every person match a face-search job found, in time order (for review; not a Rekognition operation)."""
        found, offset = [], 0
        while page := self.store.job_findings(job.job_id, "TIMESTAMP", offset, MAX_JOB_PAGE):
            found += [person_of(f) for f in page]
            offset += len(page)
        return found

    def _reviewed(self, job: VideoJob, persons: list[PersonMatch]) -> list[PersonMatch]:
        visible: dict[int, set[str] | None] = {}
        for index, case_id in job.review_cases.items():
            case = self.store.get_case(case_id)
            visible[int(index)] = released_ids(case) if case is not None else set()
        kept = []
        for person in persons:
            allowed = visible.get(person.index)
            if allowed is None:
                kept.append(person)
                continue
            matches = tuple(m for m in person.matches if m.face.face_id in allowed)
            if matches:
                kept.append(replace(person, matches=matches))
        return kept

    def get_face_detection(self, owner: str, p: dict) -> VideoJobResults:
        job = self._job(owner, p["JobId"], DETECTION)
        findings, token = self._findings(owner, job, p, "TIMESTAMP")
        return VideoJobResults(job, faces=tuple(face_of(f) for f in findings), next_token=token)

    def analyse_video(
        self, owner: str, job: VideoJob, frames: list[tuple[int, np.ndarray]], tracker: PersonTracker
    ) -> VideoBatch:
        """One batch of a running job's sampled frames (not a Rekognition operation): faces found (and, for face
        search, followed into persons and each searched in the collection at every sampled frame)."""
        search = job.api == SEARCH
        analysed = self.engine.analyse_many([frame for _, frame in frames], embed=search)
        stamps = tuple(t for t, _ in frames)
        if not search:
            pairs = zip(stamps, analysed, strict=True)
            faces = tuple(VideoFace(t, FoundFace.of(f, image)) for t, image in pairs for f in image.faces)
            return VideoBatch(tuple(face_finding(f) for f in faces), faces=faces, frames=stamps)
        collection = self._collection(owner, job.request["CollectionId"])  # deleted meanwhile: the job fails
        threshold = job.request.get("FaceMatchThreshold", DEFAULT_THRESHOLD)
        persons: list[PersonMatch] = []
        for t, image in zip(stamps, analysed, strict=True):
            for face, index in zip(image.faces, tracker.assign(t, image.faces), strict=True):
                matches = self._search(collection, face.embedding, threshold, MAX_VIDEO_MATCHES)
                if matches:  # Persons lists the persons whose face matched, at the timestamps it did
                    persons.append(PersonMatch(t, index, FoundFace.of(face, image), matches))
        return VideoBatch(tuple(person_finding(p) for p in persons), persons=tuple(persons), frames=stamps)

    def _job(self, owner: str, job_id: str, api: str) -> VideoJob:
        job = self.store.get_job(owner, job_id)
        if job is None or job.api != api:
            raise ResourceNotFoundException(f"The job id: {job_id} does not exist")
        return job

    def _findings(self, owner: str, job: VideoJob, p: dict, order: str) -> tuple[list, str | None]:
        limit = min(p.get("MaxResults") or MAX_JOB_PAGE, MAX_JOB_PAGE)
        scope = f"{owner}/{job.job_id}/{order}"
        given = _read_token(p.get("NextToken"), f"Get{job.api}", scope) or "0"
        if not given.isdigit() or int(given) > 10**12:  # a token this service made holds a non-negative offset
            raise InvalidPaginationTokenException(f"NextToken is not a token returned by a previous Get{job.api}.")
        offset = int(given)
        if job.status != SUCCEEDED:  # results are answered once the whole video is analysed
            return [], None
        page = self.store.job_findings(job.job_id, order, offset, limit + 1)
        more = len(page) > limit
        return page[:limit], _make_token(str(offset + limit), f"Get{job.api}", scope) if more else None

    # Human review

    def get_review_case(self, owner: str, p: dict) -> ReviewOutcome:
        """A review case of ``owner``'s (facegate's operation): its state and, once released, the confirmed
        candidates as matches. Another organisation's case answers as a missing one."""
        case_id = p.get("CaseId")
        if not isinstance(case_id, str) or not CASE_ID.fullmatch(case_id):
            raise InvalidParameterException("GetReviewCase needs CaseId: the id a search's FacegateDecision gave.")
        case = self.store.get_case(case_id)
        if case is None or case.owner != owner:
            raise ResourceNotFoundException(f"There is no review case {case_id}.")
        released = released_candidates(case)
        faces = tuple(FaceMatch(c["similarity"], stored_face_of(c["face"])) for c in released if "face" in c)
        users = tuple(UserMatch(c["similarity"], c["user_id"]) for c in released if "user_id" in c)
        return ReviewOutcome(case, faces, users)

    # Tags

    def tag_resource(self, owner: str, p: dict) -> TagsChanged:
        self.store.set_tags(self._collection_by_arn(owner, p["ResourceArn"]), p["Tags"])
        return TagsChanged(p["ResourceArn"])

    def untag_resource(self, owner: str, p: dict) -> TagsChanged:
        self.store.remove_tags(self._collection_by_arn(owner, p["ResourceArn"]), p["TagKeys"])
        return TagsChanged(p["ResourceArn"])

    def list_tags_for_resource(self, owner: str, p: dict) -> ResourceTags:
        return ResourceTags(p["ResourceArn"], self.store.tags(self._collection_by_arn(owner, p["ResourceArn"])))

    # Helpers

    def _collection(self, owner: str, collection_id: str) -> Collection:
        collection = self.store.get_collection(owner, collection_id)
        if collection is None:
            # The same answer whether the id is free or another owner's: ids must not leak across owners.
            raise ResourceNotFoundException(f"The collection id: {collection_id} does not exist")
        return collection

    def _collection_by_arn(self, owner: str, arn: str) -> Collection:
        prefix = "aws:rekognition:"
        parts = arn.removeprefix("arn:").removeprefix(prefix).split(":", 2)
        if not arn.removeprefix("arn:").startswith(prefix) or len(parts) != 3 or not parts[2].startswith("collection/"):
            raise InvalidParameterException(
                f"ResourceArn {arn!r} is not a collection ARN (aws:rekognition:REGION:OWNER:collection/ID)."
            )
        if parts[1] != owner:
            raise ResourceNotFoundException(f"The resource {arn} does not exist")
        return self._collection(owner, parts[2].removeprefix("collection/"))

    def _user(self, collection: Collection, user_id: str) -> StoredUser:
        user = self.store.get_user(collection, user_id)
        if user is None:
            raise ResourceNotFoundException(f"User {user_id} does not exist in collection {collection.collection_id}.")
        return user

    def _check_model(self, collection: Collection) -> None:
        if collection.model_version != self.engine.model_version:
            raise InvalidParameterException(
                f"Collection {collection.collection_id} holds faces of model {collection.model_version}; this "
                f"server embeds with {self.engine.model_version}. Embeddings of different models cannot be mixed: "
                "use a collection created for this model."
            )

    def _arn(self, collection: Collection) -> str:
        return f"aws:rekognition:{self.region}:{collection.owner}:collection/{collection.collection_id}"

    def _replayed(self, collection: Collection, operation: str, p: dict) -> bool:
        """True when ``ClientRequestToken`` repeats an identical earlier request; a mismatch is an error."""
        token = p.get("ClientRequestToken")
        if token is None:
            return False
        seen = self.store.recall_request(collection, operation, token)
        if seen is None:
            return False
        if seen != _fingerprint(p):
            raise IdempotentParameterMismatchException(
                f"ClientRequestToken {token} was already used for a different {operation} request."
            )
        return True

    def _remember(self, collection: Collection, operation: str, p: dict) -> None:
        if p.get("ClientRequestToken"):
            self.store.remember_request(collection, operation, p["ClientRequestToken"], _fingerprint(p))


def _ratios(found: FoundFace) -> tuple[float, float, float, float]:
    """A found face's box as the store keeps it: Width, Height, Left, Top as ratios."""
    box = found.bounding_box
    return (box.width, box.height, box.left, box.top)


def _repeat(collection: Collection, faces: list[StoredFace]) -> IndexResult:
    """IndexFaces' answer for an image already indexed with the same ExternalImageId: its stored faces."""
    return IndexResult(collection.model_version, tuple(FaceRecord(face) for face in faces), repeated=True)


def _largest_usable(analysed: AnalysedImage, level: str, member: str = "Image") -> Face:
    if not analysed.faces:
        raise InvalidParameterException(f"There are no faces in the {member}: nothing to search with.")
    largest = analysed.faces[0]
    reasons = filter_reasons(largest, level)
    if reasons:
        raise InvalidParameterException(
            f"The largest face in the {member} does not pass QualityFilter {level}: {', '.join(reasons)}."
        )
    return largest


def _image_bytes(image: dict, member: str = "Image") -> bytes:
    if "S3Object" in image:  # the governed operation reads S3Objects from the caller's sources first
        raise InvalidS3ObjectException(
            f"{member}.S3Object reached the service unread: read it from a registered source, or send {member}.Bytes."
        )
    if "Bytes" not in image:
        raise InvalidParameterException(f"{member} needs Bytes: the image's bytes (base64 on the wire).")
    return image["Bytes"]


class VideoSizes(Protocol):
    """What a job's Start checks of its video (``sources.VideoObjects``): that it exists, its size and, where
    its header can be read in place, its duration."""

    def size(self, owner: str, video: dict, *, local: bool = False) -> int: ...
    def duration_ms(self, owner: str, video: dict, *, local: bool = False) -> int | None: ...


def _validate_start(operation: str, params: dict, requester: dict) -> dict:
    """Rekognition's model for the Start request; the local operator may instead name a file, Video.File."""
    video = params.get("Video")
    if isinstance(video, dict) and set(video) == {"File"} and requested_locally(requester):
        checked = validate_request(operation, {**params, "Video": {"S3Object": {"Bucket": "local", "Name": "file"}}})
        return {**checked, "Video": {"File": str(video["File"])}}
    return validate_request(operation, params)


def _json_safe(p: dict) -> dict:
    """A validated Start request as it is kept with its job (its members are all JSON already)."""
    return json.loads(json.dumps(p))


# Pagination tokens: opaque to clients, bound to the listing they continue.


def _make_token(last_key: str, operation: str, scope: str) -> str:
    body = json.dumps({"k": last_key, "o": operation, "s": _scope_hash(scope)}, separators=(",", ":"))
    return base64.urlsafe_b64encode(body.encode()).decode()


def _read_token(token: str | None, operation: str, scope: str) -> str | None:
    if token is None:
        return None
    try:
        body = json.loads(base64.urlsafe_b64decode(token.encode()))
        if body["o"] != operation or body["s"] != _scope_hash(scope) or not isinstance(body["k"], str):
            raise ValueError
        return body["k"]
    except (ValueError, KeyError, TypeError, binascii.Error, UnicodeDecodeError):
        raise InvalidPaginationTokenException(
            f"NextToken is not a token returned by a previous {operation} call with the same parameters."
        ) from None


def _scope_hash(scope: str) -> str:
    return hashlib.sha256(scope.encode()).hexdigest()[:16]


def _fingerprint(p: dict) -> str:
    body = {k: v for k, v in p.items() if k != "ClientRequestToken"}
    return hashlib.sha256(json.dumps(body, sort_keys=True, default=str).encode()).hexdigest()

"""What the face operations answer: typed, immutable values in the domain's words, with no wire format.

``FaceService.call`` returns one of these; ``facegate.wire.to_wire`` writes it as the operation's Rekognition
response (the HTTP API and the CLI's ``--json``), and the CLI, the Python API and the audit read it directly.
A result has a ``model_version`` exactly when its operation reports the face model (the audit records it).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING

from facegate.store import Collection, JobFinding, ReviewCase, StoredFace, StoredUser, VideoJob

if TYPE_CHECKING:  # the engine's package loads dlib: the audit reads results without the face models
    from facegate.engine import AnalysedImage, Face

ACTIVE = "ACTIVE"  # facegate updates users synchronously: a user is never UPDATING or CREATED


@dataclass(frozen=True)
class BoundingBox:
    """Ratios of the image's width and height, origin top-left (as Rekognition reports them)."""

    width: float
    height: float
    left: float
    top: float


@dataclass(frozen=True)
class FoundFace:
    """A face the engine found in an image, with that image's size: geometry is reported as ratios of it."""

    face: Face
    image_width: int
    image_height: int

    @classmethod
    def of(cls, face: Face, image: AnalysedImage) -> FoundFace:
        return cls(face, image.width, image.height)

    @property
    def bounding_box(self) -> BoundingBox:
        box = self.face.box
        return BoundingBox(
            box.width / self.image_width,
            box.height / self.image_height,
            box.left / self.image_width,
            box.top / self.image_height,
        )

    @property
    def confidence(self) -> float:
        return self.face.confidence

    @property
    def landmarks(self) -> dict[str, tuple[float, float]]:
        """Rekognition landmark type → (x, y) as ratios of the image's width and height."""
        return {name: (x / self.image_width, y / self.image_height) for name, (x, y) in self.face.landmarks.items()}


# Collections


@dataclass(frozen=True)
class CollectionCreated:
    arn: str
    model_version: str


@dataclass(frozen=True)
class CollectionDescription:
    arn: str
    model_version: str
    face_count: int
    user_count: int
    created_at: float


@dataclass(frozen=True)
class CollectionPage:
    """One page of an owner's collections; ``next_token`` continues the listing when there are more."""

    collections: tuple[Collection, ...]
    next_token: str | None = None


@dataclass(frozen=True)
class CollectionDeleted:
    collection_id: str


# Faces


@dataclass(frozen=True)
class FaceRecord:
    """A face IndexFaces stored, with the face found in the image — ``found`` is None when the image had been
    indexed before: then only the stored box and confidence are known."""

    face: StoredFace
    found: FoundFace | None = None


@dataclass(frozen=True)
class UnindexedFace:
    """A face found and not stored, with why (the quality filter's reasons, or EXCEEDS_MAX_FACES)."""

    face: FoundFace
    reasons: tuple[str, ...]


@dataclass(frozen=True)
class IndexResult:
    """IndexFaces: the faces stored and those left out; ``repeated`` when the image was already indexed with
    the same ExternalImageId (nothing new stored, ``records`` are its stored faces)."""

    model_version: str
    records: tuple[FaceRecord, ...]
    unindexed: tuple[UnindexedFace, ...] = ()
    repeated: bool = False


@dataclass(frozen=True)
class FacePage:
    faces: tuple[StoredFace, ...]
    model_version: str
    next_token: str | None = None


@dataclass(frozen=True)
class FaceRefusal:
    """A face a request named and could not change, with why; ``user_id`` is the user it belongs to (or the one
    it was compared with) and ``confidence`` its best similarity to that user's faces, where they matter."""

    face_id: str
    reasons: tuple[str, ...]
    user_id: str | None = None
    confidence: float | None = None


@dataclass(frozen=True)
class FacesDeleted:
    deleted: tuple[str, ...]
    refused: tuple[FaceRefusal, ...] = ()


@dataclass(frozen=True)
class FacesPurged:
    """PurgeFaces (retention's deletion, not a Rekognition operation): the face ids destroyed."""

    deleted: tuple[str, ...]


@dataclass(frozen=True)
class FacesLoaded:
    """LoadFaces (faces embedded elsewhere, stored as they are; not a Rekognition operation): the ids stored."""

    loaded: tuple[str, ...]


# Search and compare


@dataclass(frozen=True)
class FaceMatch:
    """A face of the collection within the threshold of the probe, with its similarity 0–100."""

    similarity: float
    face: StoredFace


@dataclass(frozen=True)
class FaceMatches:
    """SearchFaces (the probe is a stored face: ``searched_face_id``) or SearchFacesByImage (the probe is the
    image's largest face: ``searched_face``): the matches, most similar first."""

    matches: tuple[FaceMatch, ...]
    model_version: str
    searched_face_id: str | None = None
    searched_face: FoundFace | None = None
    scores: str = "raw"  # the score calibration served ("raw": dlib distances), audited with the result


@dataclass(frozen=True)
class TargetMatch:
    """A face of CompareFaces' target image within the threshold of the source face."""

    similarity: float
    face: FoundFace


@dataclass(frozen=True)
class Comparison:
    """CompareFaces: the source image's largest face against every usable face of the target image."""

    source: FoundFace
    matches: tuple[TargetMatch, ...]  # most similar first
    unmatched: tuple[FoundFace, ...]
    scores: str = "raw"


@dataclass(frozen=True)
class Detection:
    faces: tuple[FoundFace, ...]  # largest first


# Users


@dataclass(frozen=True)
class UserCreated:
    user_id: str


@dataclass(frozen=True)
class UserDeleted:
    user_id: str


@dataclass(frozen=True)
class UserPage:
    users: tuple[StoredUser, ...]
    next_token: str | None = None


@dataclass(frozen=True)
class Association:
    """AssociateFaces or DisassociateFaces: the faces now (dis)associated with the user, and those refused."""

    user_id: str
    face_ids: tuple[str, ...]
    refused: tuple[FaceRefusal, ...] = ()
    user_status: str = ACTIVE


@dataclass(frozen=True)
class UserMatch:
    """A user within the threshold of the probe: the best similarity of any of its faces to any probe face."""

    similarity: float
    user_id: str
    user_status: str = ACTIVE


@dataclass(frozen=True)
class UserMatches:
    """SearchUsers (by ``searched_face_id`` or ``searched_user_id``) or SearchUsersByImage (by the image's largest
    face, ``searched_face``; its other faces are ``unsearched``): the users matched, most similar first."""

    matches: tuple[UserMatch, ...]
    model_version: str
    searched_face_id: str | None = None
    searched_user_id: str | None = None
    searched_face: FoundFace | None = None
    unsearched: tuple[FoundFace, ...] = ()
    scores: str = "raw"


# Tags


@dataclass(frozen=True)
class TagsChanged:
    """TagResource or UntagResource done."""

    arn: str


@dataclass(frozen=True)
class ResourceTags:
    arn: str
    tags: Mapping[str, str]


# Stored video


@dataclass(frozen=True)
class JobStarted:
    """StartFaceSearch or StartFaceDetection: the job's id (an earlier job's, for a repeated ClientRequestToken)."""

    job_id: str


@dataclass(frozen=True)
class PersonMatch:
    """A person (``index``: the same number throughout the video) at one timestamp, with the collection's faces
    their face matched, most similar first."""

    timestamp_ms: int
    index: int
    face: FoundFace
    matches: tuple[FaceMatch, ...]


@dataclass(frozen=True)
class VideoFace:
    """A face found at one timestamp of a video."""

    timestamp_ms: int
    face: FoundFace


@dataclass(frozen=True)
class VideoJobResults:
    """GetFaceSearch (``persons``) or GetFaceDetection (``faces``): the job's state and, once it has succeeded,
    one page of what it found."""

    job: VideoJob
    persons: tuple[PersonMatch, ...] = ()
    faces: tuple[VideoFace, ...] = ()
    next_token: str | None = None


@dataclass(frozen=True)
class VideoBatch:
    """What one batch of a running job's sampled frames yielded (not a Rekognition response): the findings to
    store, and the persons matched or faces found, for the audit."""

    findings: tuple[JobFinding, ...]
    persons: tuple[PersonMatch, ...] = ()
    faces: tuple[VideoFace, ...] = ()
    frames: tuple[int, ...] = ()  # the batch's sampled timestamps


# Human review


@dataclass(frozen=True)
class ReviewOutcome:
    """GetReviewCase (facegate's, not Rekognition's): a review case's state and what it released to the client:
    the confirmed faces (``face_matches``) or users (``user_matches``), nothing before it is released."""

    case: ReviewCase
    face_matches: tuple[FaceMatch, ...] = ()
    user_matches: tuple[UserMatch, ...] = ()


Result = (
    CollectionCreated
    | CollectionDescription
    | CollectionPage
    | CollectionDeleted
    | IndexResult
    | FacePage
    | FacesDeleted
    | FacesPurged
    | FacesLoaded
    | FaceMatches
    | Comparison
    | Detection
    | UserCreated
    | UserDeleted
    | UserPage
    | Association
    | UserMatches
    | TagsChanged
    | ResourceTags
    | JobStarted
    | VideoJobResults
    | VideoBatch
    | ReviewOutcome
)

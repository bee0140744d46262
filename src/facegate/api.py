"""The Python API: as direct as face_recognition's for the simple cases, with typed results.

    import facegate
    fg = facegate.open("./facegate-data")
    fg.create_collection("family")
    fg.index("alice.jpg", "family", external_image_id="alice")
    for match in fg.search("someone.jpg", "family"):
        print(match.similarity, match.face.external_image_id)

Every method runs the same governed operation the CLI and the HTTP API run: the caller is the local operator
acting for ``owner``, decided by the policy gate (a kill switch or a revocation stops it) and audited.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from facegate.compose import Facegate, Settings, build
from facegate.config import DEFAULT_DETECTOR, DEFAULT_OWNER
from facegate.keys import Principal
from facegate.results import (
    BoundingBox,
    CollectionCreated,
    CollectionPage,
    Comparison,
    Detection,
    FaceMatches,
    FoundFace,
    IndexResult,
)
from facegate.store import StoredFace

ImageInput = str | os.PathLike | bytes


@dataclass(frozen=True)
class DetectedFace:
    bounding_box: BoundingBox
    confidence: float
    landmarks: dict[str, tuple[float, float]]  # Rekognition landmark type → (x, y) ratios
    roll: float
    yaw: float
    pitch: float
    brightness: float
    sharpness: float

    @classmethod
    def of(cls, found: FoundFace) -> DetectedFace:
        face = found.face
        return cls(
            bounding_box=found.bounding_box,
            confidence=found.confidence,
            landmarks=found.landmarks,
            roll=face.pose.roll,
            yaw=face.pose.yaw,
            pitch=face.pose.pitch,
            brightness=face.quality.brightness,
            sharpness=face.quality.sharpness,
        )


@dataclass(frozen=True)
class IndexedFace:
    face_id: str
    image_id: str
    external_image_id: str | None
    bounding_box: BoundingBox
    confidence: float
    user_id: str | None = None

    @classmethod
    def of(cls, face: StoredFace) -> IndexedFace:
        return cls(
            face_id=face.face_id,
            image_id=face.image_id,
            external_image_id=face.external_image_id,
            bounding_box=BoundingBox(*face.box),
            confidence=face.confidence,
            user_id=face.user_id,
        )


@dataclass(frozen=True)
class FaceMatch:
    """A face of the collection that matched, with its similarity 0–100."""

    similarity: float
    face: IndexedFace


@dataclass(frozen=True)
class ComparedFace:
    """A face of the target image with its similarity to the source image's largest face."""

    similarity: float | None  # None below the threshold: Rekognition does not report it for unmatched faces
    bounding_box: BoundingBox
    matched: bool


class FaceGate:
    """A data directory opened for one organisation (``owner``)."""

    def __init__(self, facegate: Facegate, owner: str = DEFAULT_OWNER) -> None:
        self.facegate = facegate
        self.owner = owner
        self.principal = Principal.operator(owner, actor="local-python-api")

    def _call(self, operation: str, params: dict) -> Any:
        """The operation's typed result (``facegate.results``), gated and audited."""
        return self.facegate.governed.execute(self.principal, operation, params).result

    def create_collection(self, collection_id: str, tags: dict[str, str] | None = None) -> str:
        """Create a collection; returns its ARN."""
        params: dict = {"CollectionId": collection_id}
        if tags:
            params["Tags"] = tags
        created: CollectionCreated = self._call("CreateCollection", params)
        return created.arn

    def collections(self) -> list[str]:
        """This organisation's collection ids."""
        ids: list[str] = []
        token = None
        while True:
            page: CollectionPage = self._call("ListCollections", {"NextToken": token} if token else {})
            ids += [c.collection_id for c in page.collections]
            token = page.next_token
            if not token:
                return ids

    def delete_collection(self, collection_id: str) -> None:
        self._call("DeleteCollection", {"CollectionId": collection_id})

    def index(
        self,
        image: ImageInput,
        collection_id: str,
        *,
        external_image_id: str | None = None,
        max_faces: int | None = None,
        quality_filter: str = "AUTO",
    ) -> list[IndexedFace]:
        """Index the faces of an image (a path or its bytes); returns the faces stored (or already stored)."""
        params: dict = {
            "CollectionId": collection_id,
            "Image": {"Bytes": _read(image)},
            "QualityFilter": quality_filter,
        }
        if external_image_id is not None:
            params["ExternalImageId"] = external_image_id
        if max_faces is not None:
            params["MaxFaces"] = max_faces
        indexed: IndexResult = self._call("IndexFaces", params)
        return [IndexedFace.of(record.face) for record in indexed.records]

    def search(
        self, image: ImageInput, collection_id: str, *, threshold: float = 80.0, max_faces: int = 10
    ) -> list[FaceMatch]:
        """Faces of the collection that match the image's largest face, most similar first."""
        found: FaceMatches = self._call(
            "SearchFacesByImage",
            {
                "CollectionId": collection_id,
                "Image": {"Bytes": _read(image)},
                "FaceMatchThreshold": threshold,
                "MaxFaces": max_faces,
            },
        )
        return [FaceMatch(m.similarity, IndexedFace.of(m.face)) for m in found.matches]

    def compare(self, source: ImageInput, target: ImageInput, *, threshold: float = 80.0) -> list[ComparedFace]:
        """Every face of ``target``, matches (best first) then the rest, against the largest face of ``source``."""
        comparison: Comparison = self._call(
            "CompareFaces",
            {
                "SourceImage": {"Bytes": _read(source)},
                "TargetImage": {"Bytes": _read(target)},
                "SimilarityThreshold": threshold,
            },
        )
        matched = [ComparedFace(m.similarity, m.face.bounding_box, True) for m in comparison.matches]
        unmatched = [ComparedFace(None, f.bounding_box, False) for f in comparison.unmatched]
        return matched + unmatched

    def detect(self, image: ImageInput) -> list[DetectedFace]:
        """The faces of an image, largest first, with landmarks, pose and quality."""
        detection: Detection = self._call("DetectFaces", {"Image": {"Bytes": _read(image)}})
        return [DetectedFace.of(found) for found in detection.faces]

    def close(self) -> None:
        self.facegate.close()

    def __enter__(self) -> FaceGate:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def open(  # noqa: A001 - mirrors the builtin on purpose: facegate.open(path)
    path: str | os.PathLike | None = None,
    *,
    owner: str = DEFAULT_OWNER,
    detector: str = DEFAULT_DETECTOR,
    runtime: str = "onnx",
    store: str | None = None,
) -> FaceGate:
    """Open (creating if needed) a data directory; default $FACEGATE_HOME or ./facegate-data. ``store`` (or
    $FACEGATE_STORE) a postgresql:// URL keeps collections, faces and governance in PostgreSQL instead."""
    options = {"store": store} if store else {}
    return FaceGate(build(Settings.from_env(path, detector=detector, runtime=runtime, **options)), owner=owner)


def _read(image: ImageInput) -> bytes:
    return image if isinstance(image, bytes) else Path(image).read_bytes()

"""What a video job found, kept as store findings and read back as results: a person's face at a timestamp with
the collection's faces it matched (face search), or a face at a timestamp (face detection). Findings hold the
domain's values as JSON (pixel geometry, the frame's size, matched faces as they were when matched)."""

from __future__ import annotations

from dataclasses import dataclass

from facegate.engine.faces import Box, Face, Pose, Quality
from facegate.results import FaceMatch, FoundFace, PersonMatch, VideoFace
from facegate.store import JobFinding, StoredFace

SEARCH = "FaceSearch"
DETECTION = "FaceDetection"
APIS = {"StartFaceSearch": SEARCH, "StartFaceDetection": DETECTION, "GetFaceSearch": SEARCH, "GetFaceDetection": DETECTION}
IN_PROGRESS, SUCCEEDED, FAILED = "IN_PROGRESS", "SUCCEEDED", "FAILED"


def person_finding(person: PersonMatch) -> JobFinding:
    body = {
        "face": _found_json(person.face),
        "matches": [{"similarity": m.similarity, "face": _stored_json(m.face)} for m in person.matches],
    }
    return JobFinding(person.timestamp_ms, person.index, body)


def person_of(finding: JobFinding) -> PersonMatch:
    matches = tuple(FaceMatch(m["similarity"], _stored_of(m["face"])) for m in finding.body["matches"])
    return PersonMatch(finding.timestamp_ms, finding.person_index or 0, _found_of(finding.body["face"]), matches)


def face_finding(face: VideoFace) -> JobFinding:
    return JobFinding(face.timestamp_ms, None, {"face": _found_json(face.face)})


def face_of(finding: JobFinding) -> VideoFace:
    return VideoFace(finding.timestamp_ms, _found_of(finding.body["face"]))


@dataclass(frozen=True)
class PersonSummary:
    """One person of a face search: when they were seen and their best match."""

    index: int
    first_ms: int
    last_ms: int
    sightings: int
    best: FaceMatch | None


def summarise_persons(persons: list[PersonMatch]) -> list[PersonSummary]:
    """Per person (in index order): first and last timestamp, how many sampled frames, the best match."""
    seen: dict[int, PersonSummary] = {}
    for p in persons:
        best = max(p.matches, key=lambda m: m.similarity, default=None)
        before = seen.get(p.index)
        if before is None:
            seen[p.index] = PersonSummary(p.index, p.timestamp_ms, p.timestamp_ms, 1, best)
            continue
        if best is None or (before.best is not None and before.best.similarity >= best.similarity):
            best = before.best
        seen[p.index] = PersonSummary(
            p.index,
            min(before.first_ms, p.timestamp_ms),
            max(before.last_ms, p.timestamp_ms),
            before.sightings + 1,
            best,
        )
    return [seen[i] for i in sorted(seen)]


def _found_json(found: FoundFace) -> dict:
    face = found.face
    box = face.box
    return {
        "size": [found.image_width, found.image_height],
        "box": [box.left, box.top, box.right, box.bottom],
        "confidence": face.confidence,
        "landmarks": {name: [x, y] for name, (x, y) in face.landmarks.items()},
        "pose": [face.pose.roll, face.pose.yaw, face.pose.pitch],
        "quality": [face.quality.brightness, face.quality.sharpness],
    }


def _found_of(body: dict) -> FoundFace:
    face = Face(
        box=Box(*body["box"]),
        confidence=body["confidence"],
        landmarks={name: (x, y) for name, (x, y) in body["landmarks"].items()},
        pose=Pose(*body["pose"]),
        quality=Quality(*body["quality"]),
    )
    width, height = body["size"]
    return FoundFace(face, width, height)


def _stored_json(face: StoredFace) -> dict:
    return {
        "face_id": face.face_id,
        "image_id": face.image_id,
        "external_image_id": face.external_image_id,
        "box": list(face.box),
        "confidence": face.confidence,
        "image_hash": face.image_hash,
        "model_version": face.model_version,
        "indexed_at": face.indexed_at,
        "user_id": face.user_id,
    }


def _stored_of(body: dict) -> StoredFace:
    return StoredFace(**{**body, "box": tuple(body["box"])})

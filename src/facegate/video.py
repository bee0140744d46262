"""What a video job found, kept as store findings and read back as results: a person's face at a timestamp with
the collection's faces it matched (face search), or a face at a timestamp (face detection). Findings hold the
domain's values as JSON (pixel geometry, the frame's size, matched faces as they were when matched)."""

from __future__ import annotations

from dataclasses import dataclass

from facegate.keys import OPERATOR_ROLE
from facegate.results import FaceMatch, PersonMatch, VideoFace
from facegate.snapshots import found_face_json, found_face_of, stored_face_json, stored_face_of
from facegate.store import JobFinding

SEARCH = "FaceSearch"
DETECTION = "FaceDetection"
IN_PROGRESS, SUCCEEDED, FAILED = "IN_PROGRESS", "SUCCEEDED", "FAILED"


def requested_locally(requester: dict) -> bool:
    """Whether a job was started by the local operator (the CLI, the Python API): only such a job may name a
    file on this machine (``Video.File``)."""
    return requester.get("principal", {}).get("role") == OPERATOR_ROLE


def person_finding(person: PersonMatch) -> JobFinding:
    body = {
        "face": found_face_json(person.face),
        "matches": [{"similarity": m.similarity, "face": stored_face_json(m.face)} for m in person.matches],
    }
    return JobFinding(person.timestamp_ms, person.index, body)


def person_of(finding: JobFinding) -> PersonMatch:
    matches = tuple(FaceMatch(m["similarity"], stored_face_of(m["face"])) for m in finding.body["matches"])
    return PersonMatch(finding.timestamp_ms, finding.person_index or 0, found_face_of(finding.body["face"]), matches)


def face_finding(face: VideoFace) -> JobFinding:
    return JobFinding(face.timestamp_ms, None, {"face": found_face_json(face.face)})


def face_of(finding: JobFinding) -> VideoFace:
    return VideoFace(finding.timestamp_ms, found_face_of(finding.body["face"]))


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


@dataclass(frozen=True)
class PersonForReview:
    """One person of a face search, gathered for review: every face matched (best similarity over the video,
    most similar first), when they were seen, and the sighting with the best match (for the reviewer's crop)."""

    index: int
    matches: list[FaceMatch]
    first_ms: int
    last_ms: int
    best: PersonMatch


def persons_for_review(persons: list[PersonMatch]) -> list[PersonForReview]:
    gathered: dict[int, list[PersonMatch]] = {}
    for p in persons:
        gathered.setdefault(p.index, []).append(p)
    out = []
    for index, sightings in sorted(gathered.items()):
        best_of: dict[str, FaceMatch] = {}
        for sighting in sightings:
            for m in sighting.matches:
                if m.face.face_id not in best_of or m.similarity > best_of[m.face.face_id].similarity:
                    best_of[m.face.face_id] = m
        best = max(sightings, key=lambda s: max(m.similarity for m in s.matches))
        matches = sorted(best_of.values(), key=lambda m: m.similarity, reverse=True)
        out.append(PersonForReview(index, matches, sightings[0].timestamp_ms, sightings[-1].timestamp_ms, best))
    return out

"""Faces followed across a video's sampled frames into persons: Rekognition's ``Person.Index``.

A face joins the person it overlaps in the previous samples (box IoU) when its embedding agrees, or the person
whose face it resembles closely (embedding distance) however long ago that person was last seen: someone who
leaves and comes back keeps their index. Each face of a frame goes to a different person, best pairs first.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from facegate.engine import Box, Face

# A person unseen for longer than this is no longer followed by overlap, only by resemblance.
MAX_GAP_MS = 2000
MIN_IOU = 0.3
# Overlap and an embedding this close: the same person moving (dlib's same-person distance is 0.6).
OVERLAP_DISTANCE = 0.6
# No overlap: only a face this close is taken for a person seen before.
RETURN_DISTANCE = 0.45
# Someone unseen for longer is not looked for again (a new index): bounds the work per face in a long, crowded video.
REID_WINDOW_MS = 10 * 60 * 1000


@dataclass
class _Person:
    index: int
    box: Box
    embedding: np.ndarray | None
    last_ms: int
    seen: int = 1


class PersonTracker:
    """Assigns each sampled frame's faces to persons, in frame order."""

    def __init__(self) -> None:
        self._persons: list[_Person] = []

    def assign(self, timestamp_ms: int, faces: list[Face]) -> list[int]:
        """The person index of each face (new persons get the next index)."""
        pairs = []
        recent = [p for p in self._persons if timestamp_ms - p.last_ms <= REID_WINDOW_MS]
        for i, face in enumerate(faces):
            for person in recent:
                cost = self._cost(face, person, timestamp_ms)
                if cost is not None:
                    pairs.append((cost, i, person.index))
        pairs.sort()
        assigned: dict[int, int] = {}
        taken: set[int] = set()
        for _, i, index in pairs:
            if i not in assigned and index not in taken:
                assigned[i] = index
                taken.add(index)
        indexes = []
        for i, face in enumerate(faces):
            if i in assigned:
                self._update(self._persons[assigned[i]], face, timestamp_ms)
            else:
                assigned[i] = len(self._persons)
                self._persons.append(_Person(assigned[i], face.box, _copy(face.embedding), timestamp_ms))
            indexes.append(assigned[i])
        return indexes

    @staticmethod
    def _cost(face: Face, person: _Person, timestamp_ms: int) -> float | None:
        """How well ``face`` continues ``person`` (lower is better), or None when it cannot be them."""
        distance = None
        if face.embedding is not None and person.embedding is not None:
            distance = float(np.linalg.norm(face.embedding - person.embedding))
        recent = timestamp_ms - person.last_ms <= MAX_GAP_MS
        overlap = _iou(face.box, person.box) if recent else 0.0
        if overlap >= MIN_IOU and (distance is None or distance <= OVERLAP_DISTANCE):
            return (distance if distance is not None else 0.0) - overlap  # overlapping pairs come first
        if distance is not None and distance <= RETURN_DISTANCE:
            return distance
        return None

    @staticmethod
    def _update(person: _Person, face: Face, timestamp_ms: int) -> None:
        person.box, person.last_ms = face.box, timestamp_ms
        if face.embedding is not None:
            if person.embedding is None:
                person.embedding = _copy(face.embedding)
            else:  # the running mean of the person's faces: steadier than the last face alone
                person.embedding = person.embedding + (face.embedding - person.embedding) / (person.seen + 1)
        person.seen += 1


def _iou(a: Box, b: Box) -> float:
    width = min(a.right, b.right) - max(a.left, b.left)
    height = min(a.bottom, b.bottom) - max(a.top, b.top)
    if width <= 0 or height <= 0:
        return 0.0
    inter = width * height
    return inter / (a.area + b.area - inter)


def _copy(embedding: np.ndarray | None) -> np.ndarray | None:
    return None if embedding is None else np.array(embedding, dtype=np.float64)

"""The search port: which faces of a collection are nearest to a probe embedding, and how far.

One port whatever the collection's size: exact (one matrix product over the store's gallery) below the ANN
threshold, the HNSW index's candidates re-ranked exactly above it. Every face it returns was re-read from the
store, scoped to the collection: a face deleted (or a collection replaced) since a cache was filled never
comes back. The service turns distances into similarities; it holds no distance kernel of its own.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

import numpy as np

from facegate.store import Collection, FaceSearchStore, FaceStore, StoredFace


def distances(embeddings: np.ndarray, probe: np.ndarray) -> np.ndarray:
    """Euclidean distance of every row of ``embeddings`` to ``probe``: one matrix product, exact."""
    embeddings = np.asarray(embeddings, dtype=np.float32)
    probe = np.asarray(probe, dtype=np.float32)
    squared = np.einsum("ij,ij->i", embeddings, embeddings) - 2.0 * (embeddings @ probe) + float(probe @ probe)
    return np.sqrt(np.maximum(squared, 0.0))


@dataclass(frozen=True)
class Neighbour:
    face: StoredFace
    distance: float


@dataclass(frozen=True)
class UserNeighbour:
    user_id: str
    distance: float  # the nearest of the user's faces to any probe
    face_id: str  # that face


class SearchableStore(FaceSearchStore, FaceStore, Protocol):
    """What search reads: the gallery and the vector index, and the faces themselves to confirm each result."""


class FaceSearch:
    """Nearest-face search over a store's faces (its gallery for exact search, its vector index above)."""

    def __init__(self, store: SearchableStore) -> None:
        self.store = store

    def nearest(
        self,
        collection: Collection,
        probe: np.ndarray,
        max_distance: float,
        limit: int,
        exclude_face: str | None = None,
    ) -> list[Neighbour]:
        """Up to ``limit`` faces within ``max_distance`` of ``probe``, nearest first."""
        # Enough candidates for ``limit`` hits after the probe itself and faces deleted since the index caught up.
        candidates = self.store.nearest_faces(collection, probe, 2 * limit + 16)
        if candidates is not None:
            faces = [f for f in candidates if f.face_id != exclude_face]
            if not faces:
                return []
            found = distances(np.stack([f.embedding for f in faces]), probe)
            ranked = sorted(zip(found.tolist(), faces, strict=True), key=lambda pair: pair[0])
            return [Neighbour(f, d) for d, f in ranked if d <= max_distance][:limit]
        gallery = self.store.gallery(collection)
        if not gallery.face_ids:
            return []
        probe = np.asarray(probe, dtype=np.float32)
        squared = gallery.squared_norms - 2.0 * (gallery.embeddings @ probe) + float(probe @ probe)
        # Only the rows within the threshold's distance are ranked.
        rows = (
            np.nonzero(squared <= max_distance**2 + 1e-6)[0] if np.isfinite(max_distance) else np.arange(len(squared))
        )
        wanted = limit + 1  # one more, in case the probe itself is among them
        if len(rows) > wanted:
            rows = rows[np.argpartition(squared[rows], wanted - 1)[:wanted]]
        rows = rows[np.argsort(squared[rows], kind="stable")]
        hits = [
            (gallery.face_ids[row], float(np.sqrt(max(squared[row], 0.0))))
            for row in rows.tolist()
            if gallery.face_ids[row] != exclude_face
        ]
        hits = [(face_id, d) for face_id, d in hits if d <= max_distance][:limit]
        current = {f.face_id: f for f in self.store.get_faces(collection, [face_id for face_id, _ in hits])}
        return [Neighbour(current[face_id], d) for face_id, d in hits if face_id in current]

    def nearest_users(
        self,
        collection: Collection,
        probes: list[np.ndarray],
        max_distance: float,
        limit: int,
        exclude_user: str | None = None,
    ) -> list[UserNeighbour]:
        """Up to ``limit`` users within ``max_distance``, nearest first; a user's distance is the smallest between
        any probe and any of the user's faces. Each user is confirmed by the store: the face that gave its
        distance is still this collection's and still the user's."""
        gallery = self.store.gallery(collection)
        best: dict[str, tuple[float, str]] = {}
        if gallery.face_ids and probes:
            rows = [i for i, u in enumerate(gallery.user_ids) if u is not None and u != exclude_user]
            if rows:
                sub = gallery.embeddings[rows]
                nearest = np.min(np.stack([distances(sub, probe) for probe in probes]), axis=0)
                for row, distance in zip(rows, nearest.tolist(), strict=True):
                    user = gallery.user_ids[row]
                    if distance < best.get(user, (np.inf, ""))[0]:
                        best[user] = (distance, gallery.face_ids[row])
        ranked = sorted((d, u, f) for u, (d, f) in best.items() if d <= max_distance)
        confirmed: list[UserNeighbour] = []
        for start in range(0, len(ranked), 500):
            if len(confirmed) >= limit:
                break
            chunk = ranked[start : start + 500]
            current = {f.face_id: f.user_id for f in self.store.get_faces(collection, [f for _, _, f in chunk])}
            confirmed += [UserNeighbour(u, d, f) for d, u, f in chunk if current.get(f) == u]
        return confirmed[:limit]

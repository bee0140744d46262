"""The search port: which faces of a collection are nearest to a probe embedding, and how far.

One port whatever the collection's size: exact (one matrix product over the store's gallery) below the ANN
threshold, the HNSW index's candidates re-ranked exactly above it. Every face it returns was re-read from the
store, scoped to the collection: a face deleted (or a collection replaced) since a cache was filled never
comes back. Faces are ranked by the similarity the given scores give them (for raw scores, by distance).
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
    similarity: float


@dataclass(frozen=True)
class UserNeighbour:
    user_id: str
    similarity: float  # the best of the user's faces against any probe
    face_id: str  # that face


class Scores(Protocol):
    """How distances become similarities (``engine.scores``): raw, or normalised per pair of faces."""

    def prefilter(self, threshold: float, probe: np.ndarray) -> float: ...
    def candidates(self, limit: int) -> int: ...
    def similarities(
        self, probe: np.ndarray, distances: np.ndarray, faces: np.ndarray, face_ids: list[str] | None = None
    ) -> np.ndarray: ...


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
        scores: Scores,
        threshold: float,
        limit: int,
        exclude_face: str | None = None,
    ) -> list[Neighbour]:
        """Up to ``limit`` faces with similarity ≥ ``threshold`` to ``probe``, most similar first."""
        # Enough candidates for ``limit`` hits after the probe itself and faces deleted since the index caught up.
        candidates = self.store.nearest_faces(collection, probe, scores.candidates(limit))
        if candidates is not None:
            faces = [f for f in candidates if f.face_id != exclude_face]
            if not faces:
                return []
            embeddings = np.stack([f.embedding for f in faces])
            found = scores.similarities(probe, distances(embeddings, probe), embeddings, [f.face_id for f in faces])
            ranked = sorted(zip(found.tolist(), faces, strict=True), key=lambda pair: -pair[0])
            return [Neighbour(f, s) for s, f in ranked if s >= threshold][:limit]
        gallery = self.store.gallery(collection)
        if not gallery.face_ids:
            return []
        probe = np.asarray(probe, dtype=np.float32)
        squared = gallery.squared_norms - 2.0 * (gallery.embeddings @ probe) + float(probe @ probe)
        # Only the rows a threshold's distance can allow are scored.
        bound = scores.prefilter(threshold, probe)
        if np.isfinite(bound):
            rows = np.nonzero(squared <= bound**2 + 1e-6)[0]
            found = scores.similarities(
                probe,
                np.sqrt(np.maximum(squared[rows], 0.0)),
                gallery.embeddings[rows],
                [gallery.face_ids[r] for r in rows.tolist()],
            )
        else:  # the gallery's own arrays, uncopied (scores may keep per-gallery data by them)
            rows = np.arange(len(squared))
            found = scores.similarities(probe, np.sqrt(np.maximum(squared, 0.0)), gallery.embeddings, gallery.face_ids)
        keep = found >= threshold
        rows, found = rows[keep], found[keep]
        wanted = limit + 1  # one more, in case the probe itself is among them
        if len(rows) > wanted:
            top = np.argpartition(-found, wanted - 1)[:wanted]
            rows, found = rows[top], found[top]
        order = np.argsort(-found, kind="stable")
        hits = [
            (gallery.face_ids[row], float(s))
            for row, s in zip(rows[order].tolist(), found[order].tolist(), strict=True)
            if gallery.face_ids[row] != exclude_face
        ][:limit]
        current = {f.face_id: f for f in self.store.get_faces(collection, [face_id for face_id, _ in hits])}
        return [Neighbour(current[face_id], s) for face_id, s in hits if face_id in current]

    def nearest_users(
        self,
        collection: Collection,
        probes: list[np.ndarray],
        scores: Scores,
        threshold: float,
        limit: int,
        exclude_user: str | None = None,
    ) -> list[UserNeighbour]:
        """Up to ``limit`` users with similarity ≥ ``threshold``, most similar first; a user's similarity is the
        best between any probe and any of the user's faces. Each user is confirmed by the store: the face that
        gave its similarity is still this collection's and still the user's."""
        gallery = self.store.gallery(collection)
        best: dict[str, tuple[float, str]] = {}
        if gallery.face_ids and probes:
            rows = [i for i, u in enumerate(gallery.user_ids) if u is not None and u != exclude_user]
            if rows:
                sub = gallery.embeddings[rows]
                ids = [gallery.face_ids[r] for r in rows]
                found = np.max(
                    np.stack([scores.similarities(probe, distances(sub, probe), sub, ids) for probe in probes]), axis=0
                )
                for row, similarity in zip(rows, found.tolist(), strict=True):
                    user = gallery.user_ids[row]
                    if similarity > best.get(user, (-1.0, ""))[0]:
                        best[user] = (similarity, gallery.face_ids[row])
        ranked = sorted(((-s, u, f) for u, (s, f) in best.items() if s >= threshold))
        confirmed: list[UserNeighbour] = []
        for start in range(0, len(ranked), 500):
            if len(confirmed) >= limit:
                break
            chunk = ranked[start : start + 500]
            current = {f.face_id: f.user_id for f in self.store.get_faces(collection, [f for _, _, f in chunk])}
            confirmed += [UserNeighbour(u, -s, f) for s, u, f in chunk if current.get(f) == u]
        return confirmed[:limit]

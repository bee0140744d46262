"""Label-free score normalisation: shift a comparison's distance by how crowded face space is around its faces.

dlib's embedding packs some faces closer together than others (on UTKFace, Asian faces far more than White
ones), so one global distance threshold falsely matches some groups many times more often than others. The fix
measured in ``bench/fair_scores.py`` needs no demographic label: each face gets one number, the mean distance to
its ``k`` nearest faces in a fixed *cohort* of other people's faces, and a comparison's distance is shifted by
how far its two faces' numbers lie below the cohort's mean:

    normalised = distance − β · ((ρ(a) + ρ(b)) / 2 − ρ̄)

A face in a crowded region (small ρ) has its distances raised, one in a sparse region has them lowered, so a
threshold accepts about the same share of impostors around every face. Normalised distances stay on the scale
of raw ones (equal when both faces are typical), and the similarity table must be calibrated on them.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

import numpy as np

_BLOCK = 1024  # rows per distance block: bounds memory at _BLOCK × cohort floats


def pairwise_distances(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Euclidean distances, ``len(a) × len(b)``, in float32 (the embeddings' own precision)."""
    a = np.asarray(a, dtype=np.float32)
    b = np.asarray(b, dtype=np.float32)
    sq = (a * a).sum(1)[:, None] + (b * b).sum(1)[None, :] - 2.0 * (a @ b.T)
    return np.sqrt(np.maximum(sq, 0.0))


def nearest_distances(
    faces: np.ndarray,
    cohort: np.ndarray,
    count: int,
    *,
    face_ids: np.ndarray | None = None,
    cohort_ids: np.ndarray | None = None,
) -> np.ndarray:
    """The ``count`` smallest distances from each face to the cohort, ascending (``len(faces) × count``).

    With ids, cohort faces sharing a face's id are skipped: a cohort face's own statistic must not count itself
    or other photos of the same person, or it would look more crowded than a newly indexed face does.
    """
    if count > len(cohort) - 1:
        raise ValueError(f"a cohort of {len(cohort)} faces has too few faces for {count} nearest neighbours")
    out = np.empty((len(faces), count), dtype=np.float32)
    for start in range(0, len(faces), _BLOCK):
        d = pairwise_distances(faces[start : start + _BLOCK], cohort)
        if face_ids is not None and cohort_ids is not None:
            d[face_ids[start : start + _BLOCK, None] == cohort_ids[None, :]] = np.inf
        part = np.partition(d, count - 1, axis=1)[:, :count]
        out[start : start + _BLOCK] = np.sort(part, axis=1)
    return out


def kmeans(points: np.ndarray, clusters: int, *, seed: int = 0, iterations: int = 50) -> np.ndarray:
    """Centroids (``clusters × dim``) by Lloyd's algorithm from a k-means++ start; deterministic for a seed."""
    rng = np.random.default_rng(seed)
    points = np.asarray(points, dtype=np.float32)
    centroids = [points[rng.integers(len(points))]]
    closest = pairwise_distances(points, centroids[0][None])[:, 0] ** 2
    for _ in range(1, clusters):
        chosen = rng.choice(len(points), p=closest / closest.sum())
        centroids.append(points[chosen])
        closest = np.minimum(closest, pairwise_distances(points, points[chosen][None])[:, 0] ** 2)
    centres = np.stack(centroids)
    for _ in range(iterations):
        labels = pairwise_distances(points, centres).argmin(1)
        sums = np.zeros_like(centres)
        np.add.at(sums, labels, points)
        sizes = np.bincount(labels, minlength=clusters)
        moved = np.where(sizes[:, None] > 0, sums / np.maximum(sizes, 1)[:, None], centres)
        if np.allclose(moved, centres, atol=1e-6):
            break
        centres = moved
    return centres


def cohort_hash(cohort: np.ndarray) -> str:
    """SHA-256 of the cohort embeddings as float32: names the cohort a model and its scores were made with."""
    return hashlib.sha256(np.ascontiguousarray(cohort, dtype=np.float32).tobytes()).hexdigest()


@dataclass(frozen=True)
class CohortModel:
    """Neighbourhood-density normalisation against a fixed cohort of faces (see the module docstring).

    ``cohort`` is the cohort's embeddings: needed to compute a new face's statistic, so it is persisted (as
    biometric data, in the data directory) next to the parameters that ``to_json`` writes.
    """

    cohort: np.ndarray
    k: int
    beta: float
    mean_statistic: float

    @classmethod
    def fit(
        cls, cohort: np.ndarray, *, k: int = 10, beta: float = 1.0, identities: np.ndarray | None = None
    ) -> CohortModel:
        """Fit on cohort embeddings (rows with NaN, faces not found, are dropped).

        ``identities`` (one per row, optional) keeps a cohort face's own statistic from counting other photos
        of the same person; no demographic label is used, and none is accepted.
        """
        cohort = np.asarray(cohort, dtype=np.float32)
        keep = ~np.isnan(cohort).any(1)
        cohort = cohort[keep]
        ids = np.arange(len(cohort)) if identities is None else _unique_ids(np.asarray(identities)[keep])
        if len(cohort) <= k:
            raise ValueError(f"cohort has {len(cohort)} faces; k={k} needs more than k (use thousands)")
        rho = nearest_distances(cohort, cohort, k, face_ids=ids, cohort_ids=ids).mean(1)
        return cls(cohort=cohort, k=k, beta=float(beta), mean_statistic=float(rho.mean()))

    def face_statistic(self, embeddings: np.ndarray) -> np.ndarray:
        """ρ per face: mean distance to its k nearest cohort faces. Computed once, when a face is indexed."""
        return nearest_distances(np.atleast_2d(embeddings), self.cohort, self.k).mean(1)

    def offset(self, statistic: np.ndarray | float) -> np.ndarray | float:
        """Each face's half of the shift, ``β · (ρ − ρ̄)``: what a vector index can add per face."""
        return self.beta * (np.asarray(statistic) - self.mean_statistic)

    def normalised_distance(
        self, distance: np.ndarray | float, stat_a: np.ndarray | float, stat_b: np.ndarray | float
    ) -> np.ndarray | float:
        """``distance − β((ρa + ρb)/2 − ρ̄)``, elementwise; never below 0, where the similarity table starts."""
        shifted = np.asarray(distance) - 0.5 * (self.offset(stat_a) + self.offset(stat_b))
        result = np.maximum(shifted, 0.0)
        return float(result) if result.ndim == 0 else result

    def to_json(self) -> dict:
        """Parameters only; the cohort itself is named by its hash and size, never written here."""
        return {
            "method": "cohort-knn-density",
            "k": self.k,
            "beta": self.beta,
            "mean_statistic": self.mean_statistic,
            "cohort_faces": len(self.cohort),
            "cohort_sha256": cohort_hash(self.cohort),
        }

    @classmethod
    def from_json(cls, params: dict, cohort: np.ndarray) -> CohortModel:
        """Rebuild from ``to_json`` output and the cohort it names; refuses a cohort with another hash."""
        if params.get("method") != "cohort-knn-density":
            raise ValueError(f"normalisation method {params.get('method')!r} is not 'cohort-knn-density'")
        cohort = np.asarray(cohort, dtype=np.float32)
        if cohort_hash(cohort) != params["cohort_sha256"]:
            raise ValueError(
                f"cohort of {len(cohort)} faces does not match the calibrated one "
                f"({params['cohort_faces']} faces, sha256 {params['cohort_sha256'][:12]}…): recalibrate"
            )
        return cls(
            cohort=cohort, k=int(params["k"]), beta=float(params["beta"]), mean_statistic=params["mean_statistic"]
        )


def _unique_ids(values: np.ndarray) -> np.ndarray:
    return np.unique(values, return_inverse=True)[1]

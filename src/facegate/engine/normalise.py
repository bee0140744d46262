"""Label-free score normalisation: a comparison is scored by how unusual its distance is around each of its faces.

dlib's embedding packs some faces closer together than others (on UTKFace, Asian faces far more than White
ones), so one global distance threshold falsely matches some groups many times more often than others. The fix
chosen by measurement in ``bench/fair_scores.py`` needs no demographic label. Each face gets a *rank profile*:
its distances to the 1st, 2nd, 4th, … nearest faces of a fixed cohort of other people. A distance ``d`` from that
face is then read as a local false-match rate — the share of the cohort lying closer to the face than ``d`` —
and a comparison's score is the mean of its two faces' log local rates:

    score(a, b) = ½ (log fmr_a(d) + log fmr_b(d)),   fmr_x(d) = (rank of d among x's cohort distances + ½) / (N + 1)

A face in a crowded region needs a smaller distance to reach the same rate, so a threshold on the score accepts
about the same share of impostors around every face. Scores map to the 0–100 similarity through a table measured
on the cohort's own impostor pairs (``ScoreCalibration``), so a threshold keeps its false-match-rate meaning.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

import numpy as np

_BLOCK = 1024  # rows per distance block: bounds memory at _BLOCK × cohort floats
PROFILE_POINTS = 24  # ranks per profile, geometric from 1 to a quarter of the cohort
MAX_RANK_SHARE = 0.25  # local FMRs above this are never a threshold's business: the profile stops there


def pairwise_distances(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Euclidean distances, ``len(a) × len(b)``, in float32 (the embeddings' own precision)."""
    a = np.asarray(a, dtype=np.float32)
    b = np.asarray(b, dtype=np.float32)
    sq = (a * a).sum(1)[:, None] + (b * b).sum(1)[None, :] - 2.0 * (a @ b.T)
    return np.sqrt(np.maximum(sq, 0.0))


def distances_at_ranks(
    faces: np.ndarray,
    cohort: np.ndarray,
    ranks: np.ndarray,
    *,
    face_ids: np.ndarray | None = None,
    cohort_ids: np.ndarray | None = None,
) -> np.ndarray:
    """Each face's distance to its r-th nearest cohort face for every r in ``ranks`` (1-based, ascending).

    With ids, cohort faces sharing a face's id are skipped: a cohort face's own profile must not count itself
    or other photos of the same person, or it would look more crowded than a newly indexed face does.
    """
    ranks = np.asarray(ranks, dtype=np.int64)
    if len(cohort) < ranks[-1]:
        raise ValueError(f"a cohort of {len(cohort)} faces has too few faces for rank {ranks[-1]}")
    faces = np.atleast_2d(np.asarray(faces, dtype=np.float32))
    out = np.empty((len(faces), len(ranks)), dtype=np.float32)
    for start in range(0, len(faces), _BLOCK):
        d = pairwise_distances(faces[start : start + _BLOCK], cohort)
        if face_ids is not None and cohort_ids is not None:
            d[face_ids[start : start + _BLOCK, None] == cohort_ids[None, :]] = np.inf
        out[start : start + _BLOCK] = np.partition(d, ranks - 1, axis=1)[:, ranks - 1]
    return out


def profile_ranks(cohort_size: int, points: int = PROFILE_POINTS) -> np.ndarray:
    """The ranks a profile keeps: geometric from 1 to a quarter of the cohort, each once."""
    top = max(2, int(cohort_size * MAX_RANK_SHARE))
    return np.unique(np.round(np.geomspace(1, top, points)).astype(np.int64))


def local_log_fmr(profiles: np.ndarray, ranks: np.ndarray, cohort_size: int | np.ndarray, d: np.ndarray) -> np.ndarray:
    """log((r + ½)/(N + 1)) for distance ``d[i]`` around the face of ``profiles[i]`` (one row per distance, or a
    single row for all): ``r`` is the number of cohort faces closer than ``d``, interpolated between the
    profile's ranks and held at the last rank beyond it."""
    profiles = np.atleast_2d(profiles)
    d = np.asarray(d, dtype=np.float64)
    ranks = np.asarray(ranks, dtype=np.float64)
    if len(profiles) == 1:
        r = np.interp(d, np.concatenate([[0.0], profiles[0]]), np.concatenate([[0.0], ranks]))
    else:
        points = len(ranks)
        below = (profiles < d[:, None]).sum(1)
        rows = np.arange(len(d))
        left_d = np.where(below > 0, profiles[rows, np.maximum(below - 1, 0)], 0.0)
        left_r = np.where(below > 0, ranks[np.maximum(below - 1, 0)], 0.0)
        right = np.minimum(below, points - 1)
        span = np.maximum(profiles[rows, right] - left_d, 1e-9)
        step = np.clip((d - left_d) / span, 0.0, 1.0) * (ranks[right] - left_r)
        r = np.where(below < points, left_r + step, ranks[-1])
    return np.log((r + 0.5) / (cohort_size + 1.0))


def cohort_hash(cohort: np.ndarray) -> str:
    """SHA-256 of the cohort embeddings as float32: names the cohort a model and its scores were made with."""
    return hashlib.sha256(np.ascontiguousarray(cohort, dtype=np.float32).tobytes()).hexdigest()


@dataclass(frozen=True)
class RankProfileModel:
    """Rank-profile normalisation against a fixed cohort of faces (see the module docstring).

    ``cohort`` is the cohort's embeddings: needed to profile a new face, so it is persisted (as biometric data,
    in the data directory) next to the parameters ``to_json`` writes. A face's profile depends only on its
    embedding and the cohort, so it never goes stale as a collection grows.
    """

    cohort: np.ndarray
    ranks: np.ndarray

    @classmethod
    def fit(cls, cohort: np.ndarray, *, points: int = PROFILE_POINTS) -> RankProfileModel:
        """A model over cohort embeddings (rows with NaN, faces not found, are dropped); no label is used."""
        cohort = np.asarray(cohort, dtype=np.float32)
        cohort = cohort[~np.isnan(cohort).any(1)]
        if len(cohort) < 100:
            raise ValueError(f"cohort has {len(cohort)} faces; a profile needs at least 100 (use thousands)")
        return cls(cohort=cohort, ranks=profile_ranks(len(cohort), points))

    @property
    def cohort_size(self) -> int:
        return len(self.cohort)

    def profiles(
        self, embeddings: np.ndarray, *, identities: np.ndarray | None = None, cohort_ids: np.ndarray | None = None
    ) -> np.ndarray:
        """One profile per face (``len × ranks``); computed once, when a face is indexed or compared."""
        return distances_at_ranks(embeddings, self.cohort, self.ranks, face_ids=identities, cohort_ids=cohort_ids)

    def scores(self, distances: np.ndarray, profile_a: np.ndarray, profile_b: np.ndarray) -> np.ndarray:
        """The pair score of each distance (lower = more alike); a profile is one row for all or one per distance."""
        n = self.cohort_size
        return 0.5 * (
            local_log_fmr(profile_a, self.ranks, n, distances) + local_log_fmr(profile_b, self.ranks, n, distances)
        )

    @property
    def score_range(self) -> tuple[float, float]:
        """The lowest score (distance 0 around both faces) and the highest (beyond both profiles)."""
        n = self.cohort_size
        return float(np.log(0.5 / (n + 1.0))), float(np.log((self.ranks[-1] + 0.5) / (n + 1.0)))

    def to_json(self) -> dict:
        """Parameters only; the cohort itself is named by its hash and size, never written here."""
        return {
            "method": "cohort-rank-profile",
            "ranks": [int(r) for r in self.ranks],
            "cohort_faces": self.cohort_size,
            "cohort_sha256": cohort_hash(self.cohort),
        }

    @classmethod
    def from_json(cls, params: dict, cohort: np.ndarray) -> RankProfileModel:
        """Rebuild from ``to_json`` output and the cohort it names; refuses a cohort with another hash."""
        if params.get("method") != "cohort-rank-profile":
            raise ValueError(f"normalisation method {params.get('method')!r} is not 'cohort-rank-profile'")
        cohort = np.asarray(cohort, dtype=np.float32)
        if cohort_hash(cohort) != params["cohort_sha256"]:
            raise ValueError(
                f"cohort of {len(cohort)} faces does not match the calibrated one "
                f"({params['cohort_faces']} faces, sha256 {params['cohort_sha256'][:12]}…): recalibrate"
            )
        return cls(cohort=cohort, ranks=np.asarray(params["ranks"], dtype=np.int64))

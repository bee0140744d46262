"""The scores facegate serves: raw embedding distances, or distances normalised against a calibrated cohort.

Either way a comparison ends as a 0–100 similarity whose thresholds mean a measured overall false-match rate:
raw distances through ``calibration.json``'s table, normalised scores through the table a calibration measured
on its cohort's impostor pairs (`facegate fairness calibrate`). A calibration lives in
``<data>/scores/<id>/`` (the cohort's embeddings — biometric data, kept only there — and ``calibration.json``);
``<data>/scores/active`` names the one served.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from facegate.engine.normalise import RankProfileModel
from facegate.engine.similarity import SimilarityScale

RAW = "raw"
# Similarity anchors and the overall FMR each stands for, as in the raw table.
ANCHORS = ((99.0, 1e-5), (95.0, 1e-4), (90.0, 1e-3), (80.0, 1e-2), (50.0, 1e-1))
IMPOSTOR_SAMPLE = 20_000_000  # impostor pairs drawn for the table: about 200 false matches at FMR 1e-5
_CHUNK = 250_000
MAX_REMEMBERED = 2_000_000  # profiles kept per process (~0.5 GB); exact search never needs more than its galleries


class Scoring:
    """Raw scores: similarity is a function of the distance alone."""

    name = RAW

    def __init__(self, scale: SimilarityScale) -> None:
        self.scale = scale

    def prefilter(self, threshold: float, probe: np.ndarray | None = None) -> float:
        """The largest raw distance a pair with ``probe`` within ``threshold`` can have (inf: no bound)."""
        return self.scale.max_distance(threshold) + 1e-6 if threshold > 0 else float("inf")

    def candidates(self, limit: int) -> int:
        """How many approximate nearest faces to re-rank for ``limit`` results."""
        return 2 * limit + 16

    def similarities(
        self, probe: np.ndarray, distances: np.ndarray, faces: np.ndarray, face_ids: list[str] | None = None
    ) -> np.ndarray:
        """Similarity of ``probe`` to each face (its embedding a row of ``faces``) at the given distances."""
        return np.asarray(self.scale.similarity(distances), dtype=np.float64)

    def remember(self, face_ids: list[str], embeddings: np.ndarray) -> None:
        """Faces just indexed (nothing to keep for raw scores)."""


@dataclass
class ScoreCalibration:
    """A rank-profile model, the similarity table of its scores, and what it was made from."""

    model: RankProfileModel
    scale: SimilarityScale  # over scores ("distances" here are pair scores, increasing)
    table: dict  # calibration.json: anchors, operating points, cohorts
    calibration_id: str = field(init=False)

    def __post_init__(self) -> None:
        self.calibration_id = "cal-" + hashlib.sha256(json.dumps(self.table, sort_keys=True).encode()).hexdigest()[:16]

    def save(self, data_dir: Path, *, activate: bool) -> Path:
        """Write under ``<data>/scores/<id>/`` (the cohort as .npy, owner-only) and optionally make it active."""
        folder = scores_dir(data_dir) / self.calibration_id
        folder.mkdir(parents=True, exist_ok=True)
        os.chmod(folder, 0o700)
        np.save(folder / "cohort.npy", self.model.cohort)
        _write_atomic(folder / "calibration.json", json.dumps(self.table, indent=2))
        if activate:
            activate_scores(data_dir, self.calibration_id)
        return folder

    @classmethod
    def load(cls, data_dir: Path, calibration_id: str) -> ScoreCalibration:
        folder = scores_dir(data_dir) / calibration_id
        try:
            table = json.loads((folder / "calibration.json").read_text())
            cohort = np.load(folder / "cohort.npy")
        except FileNotFoundError as missing:
            raise ValueError(f"score calibration {calibration_id} is missing {missing.filename}: recalibrate") from None
        model = RankProfileModel.from_json(table["model"], cohort)
        anchors = sorted((a["score"], a["similarity"]) for a in table["anchors"])
        scale = SimilarityScale(
            table["model_version"],
            np.array([s for s, _ in anchors], dtype=np.float64),
            np.array([v for _, v in anchors], dtype=np.float64),
        )
        loaded = cls(model, scale, table)
        if loaded.calibration_id != calibration_id:
            raise ValueError(f"score calibration {calibration_id}'s table was changed since it was written")
        return loaded


class NormalisedScoring(Scoring):
    """Scores normalised by a calibration; faces' profiles are computed once per face and kept in memory."""

    def __init__(self, calibration: ScoreCalibration, raw: SimilarityScale) -> None:
        super().__init__(calibration.scale)
        self.calibration = calibration
        self.model = calibration.model
        self.raw = raw
        self.name = calibration.calibration_id
        self._profiles: dict[str, np.ndarray] = {}
        self._galleries: list[tuple[list[str], np.ndarray]] = []  # recent galleries' id lists and profiles
        self._last_probe: tuple[bytes, np.ndarray] | None = None

    def prefilter(self, threshold: float, probe: np.ndarray | None = None) -> float:
        # A pair's score is the mean of two local log rates, the other face's never below the lowest, so the
        # probe's own rate at the distance is at most 2·(threshold's score) − lowest: its profile bounds d.
        if probe is None or threshold <= 0:
            return float("inf")
        low, _ = self.model.score_range
        most = 2.0 * self.scale.max_distance(threshold) - low
        rank = np.exp(most) * (self.model.cohort_size + 1.0) - 0.5
        if rank >= self.model.ranks[-1]:
            return float("inf")
        profile = self._probe_profile(probe)[0]
        return float(np.interp(rank, np.concatenate([[0.0], self.model.ranks]), np.concatenate([[0.0], profile])))

    def candidates(self, limit: int) -> int:
        return 4 * limit + 64  # the nearest by distance are not exactly the best by score

    def profiles(self, embeddings: np.ndarray, face_ids: list[str] | None = None) -> np.ndarray:
        """Profiles of these faces, from memory where a face id was profiled before."""
        embeddings = np.atleast_2d(embeddings)
        if face_ids is None:
            return self.model.profiles(embeddings)
        for cached, matrix in self._galleries:
            if cached is face_ids:  # a gallery's own id list: its profiles were stacked before
                return matrix
        matrix = np.empty((len(face_ids), len(self.model.ranks)), dtype=np.float32)
        missing = []
        for k, face_id in enumerate(face_ids):
            known = self._profiles.get(face_id)
            if known is None:
                missing.append(k)
            else:
                matrix[k] = known
        if missing:
            matrix[missing] = self.model.profiles(embeddings[missing])
            self._keep([face_ids[k] for k in missing], matrix[missing])
        if len(face_ids) > 1000:  # a gallery, not a search's few candidates
            self._galleries = [(face_ids, matrix), *self._galleries[:15]]
        return matrix

    def _probe_profile(self, probe: np.ndarray) -> np.ndarray:
        """The probe's profile; a search asks for it twice (its distance bound, then its scores)."""
        key = np.asarray(probe, dtype=np.float32).tobytes()
        last = self._last_probe
        if last is not None and last[0] == key:
            return last[1]
        profile = self.model.profiles(probe)
        self._last_probe = (key, profile)
        return profile

    def remember(self, face_ids: list[str], embeddings: np.ndarray) -> None:
        for start in range(0, len(face_ids), 4096):
            self._keep(face_ids[start : start + 4096], self.model.profiles(embeddings[start : start + 4096]))

    def _keep(self, face_ids: list[str], profiles: np.ndarray) -> None:
        if len(self._profiles) + len(face_ids) > MAX_REMEMBERED:  # bounded memory: recomputed when met again
            self._profiles.clear()
        self._profiles.update(zip(face_ids, profiles, strict=True))

    def similarities(
        self, probe: np.ndarray, distances: np.ndarray, faces: np.ndarray, face_ids: list[str] | None = None
    ) -> np.ndarray:
        if len(distances) == 0:
            return np.zeros(0)
        scores = self.model.scores(distances, self._probe_profile(probe), self.profiles(faces, face_ids))
        return np.asarray(self.scale.similarity(scores), dtype=np.float64)

    def raw_equivalent(self, distances: np.ndarray, profile_a: np.ndarray, profile_b: np.ndarray) -> np.ndarray:
        """The raw distance with the same similarity as each pair's normalised score (for the fairness audit,
        whose histograms are over raw distances)."""
        similarity = self.scale.similarity(self.model.scores(distances, profile_a, profile_b))
        return np.interp(similarity, self.raw.similarities[::-1], self.raw.distances[::-1])

    def audit_distances(self, embeddings: np.ndarray) -> tuple[Callable[[int, int, np.ndarray], np.ndarray], int]:
        """For a fairness audit of these faces: the pair-distance function its histograms read (each pair's raw
        equivalent), and how many of the faces are themselves cohort faces. Those are profiled without
        themselves; an audit of record should still use faces disjoint from the cohort."""
        embeddings = np.asarray(embeddings, dtype=np.float32)
        row_of = {row.tobytes(): k for k, row in enumerate(embeddings)}
        cohort_ids = np.array([row_of.get(row.tobytes(), -1) for row in self.model.cohort])
        overlap = int((cohort_ids >= 0).sum())
        own = np.arange(len(embeddings)) if overlap else None
        profiles = self.model.profiles(embeddings, identities=own, cohort_ids=cohort_ids if overlap else None)

        def pair_distance(i: int, j: int, d: np.ndarray) -> np.ndarray:
            a, b = profiles[i : i + d.shape[0]], profiles[j : j + d.shape[1]]
            out = np.empty(d.shape, dtype=np.float64)
            for r in range(0, len(a), 64):  # bounded memory: 64 rows × a block's columns × the profile
                rows = a[r : r + 64]
                flat = d[r : r + 64].ravel()
                out[r : r + 64] = self.raw_equivalent(
                    flat, np.repeat(rows, d.shape[1], axis=0), np.tile(b, (len(rows), 1))
                ).reshape(len(rows), d.shape[1])
            return out

        return pair_distance, overlap


def scores_dir(data_dir: Path) -> Path:
    return Path(data_dir) / "scores"


def active_scores(data_dir: Path) -> str:
    """The calibration id served, or "raw"."""
    path = scores_dir(data_dir) / "active"
    return path.read_text().strip() if path.exists() else RAW


def activate_scores(data_dir: Path, calibration_id: str) -> None:
    """Serve ``calibration_id`` ("raw" for raw distances) from the next start of facegate."""
    if calibration_id != RAW:
        ScoreCalibration.load(data_dir, calibration_id)  # refuses a missing or altered one
    scores_dir(data_dir).mkdir(parents=True, exist_ok=True)
    _write_atomic(scores_dir(data_dir) / "active", calibration_id + "\n")


def scoring_for(data_dir: Path, raw: SimilarityScale, chosen: str | None = None) -> Scoring:
    """The scoring ``chosen`` ("raw" or a calibration id), else the data directory's active one."""
    active = chosen or active_scores(data_dir)
    return Scoring(raw) if active == RAW else NormalisedScoring(ScoreCalibration.load(data_dir, active), raw)


def calibrate(
    cohort: np.ndarray,
    identities: np.ndarray,
    *,
    model_version: str,
    cohorts: list[dict],
    sources: np.ndarray | None = None,
    seed: int = 0,
) -> ScoreCalibration:
    """Fit a rank-profile model on half the cohort's identities and measure its similarity table on the
    other half's impostor pairs, profiled against the first half exactly as a new face is when it is served
    (a cohort face's own profile would count its pair's partner; halves by identity keep a person's photos on one
    side). Identities tell genuine from impostor pairs; no demographic label is read. With ``sources`` (the
    cohort dataset of each face) impostor pairs are drawn within each dataset, as the raw table's are, and each
    dataset weighs the same in a threshold's FMR."""
    keep = ~np.isnan(cohort).any(1)
    cohort, identities = np.asarray(cohort, dtype=np.float32)[keep], np.asarray(identities)[keep]
    sources = np.zeros(len(cohort), dtype=np.int64) if sources is None else np.asarray(sources)[keep]
    ids = np.unique(identities, return_inverse=True)[1]
    rng = np.random.default_rng(seed)
    profiled = (rng.permutation(int(ids.max()) + 1) % 2 == 0)[ids]  # the served cohort; the rest measure it
    model = RankProfileModel.fit(cohort[profiled])
    table_rows = np.nonzero(~profiled)[0]
    cohort, ids, sources = cohort[table_rows], np.unique(ids[table_rows], return_inverse=True)[1], sources[table_rows]
    profiles = model.profiles(cohort)
    i, j = _within_source_pairs(sources, rng)
    impostor = ids[i] != ids[j]
    i, j = i[impostor], j[impostor]
    if len(i) < 1 / ANCHORS[0][1]:
        raise ValueError(
            f"the cohort gives {len(i):,} impostor pairs: measuring FMR {ANCHORS[0][1]:g} takes at least "
            f"{1 / ANCHORS[0][1]:,.0f} (a cohort of about 900 faces of different people, half of them to measure with; use thousands)"
        )
    impostor_scores = _pair_scores(model, cohort, profiles, i, j)
    # Each cohort dataset weighs the same in a threshold's FMR, however many pairs it has: a large dataset of
    # one kind of photo must not set the thresholds for every other kind.
    pair_source = sources[i]
    names, per_source = np.unique(pair_source, return_counts=True)
    weight = (1.0 / (len(names) * per_source))[np.searchsorted(names, pair_source)]
    order = np.argsort(impostor_scores, kind="stable")
    ordered, cumulative = impostor_scores[order], np.cumsum(weight[order])
    gi, gj = _genuine_pairs(ids)
    genuine_scores = _pair_scores(model, cohort, profiles, gi, gj)
    low, high = model.score_range
    anchors = [{"similarity": 100.0, "score": low, "rule": "identical embeddings"}]
    points = []
    for similarity, fmr in ANCHORS:
        at = min(int(np.searchsorted(cumulative, fmr * (1 - 1e-12))), len(ordered) - 1)
        # Strictly above the previous anchor: near-duplicate photos of different "people" can tie at the bottom.
        score = max(float(ordered[at]), anchors[-1]["score"] + 1e-6)
        anchors.append({"similarity": similarity, "score": score, "rule": f"FMR {fmr:g}"})
        accepted = impostor_scores <= score
        points.append(
            {
                "threshold": similarity,
                "fmr": float(weight[accepted].sum()),
                "fmr_per_cohort": [float(accepted[pair_source == n].mean()) for n in names],
                "tmr": float((genuine_scores <= score).mean()) if len(genuine_scores) else None,
            }
        )
    anchors.append({"similarity": 0.0, "score": high, "rule": "beyond both faces' profiles"})
    scores = [a["score"] for a in anchors]
    if any(b <= a for a, b in zip(scores, scores[1:], strict=False)):
        raise ValueError("the cohort is too small for a strictly monotone similarity table: use thousands of faces")
    table = {
        "model_version": model_version,
        "method": "rank-profile normalisation (engine/normalise.py)",
        "model": model.to_json(),
        "cohorts": cohorts,
        "cohort_faces": model.cohort_size,
        "table_faces": len(cohort),
        "table_identities": int(ids.max() + 1),
        "impostor_pairs": len(impostor_scores),
        "impostor_pairs_drawn": "within each cohort dataset (as the raw table's); a threshold's FMR is the mean of "
        "the datasets' FMRs",
        "smallest_measurable_fmr": 1.0 / len(impostor_scores),
        "genuine_pairs": len(genuine_scores),
        "seed": seed,
        "anchors": anchors,
        "operating_points": points,
    }
    scale = SimilarityScale(model_version, np.array(scores), np.array([a["similarity"] for a in anchors]))
    return ScoreCalibration(model, scale, table)


def _pair_scores(
    model: RankProfileModel, emb: np.ndarray, profiles: np.ndarray, i: np.ndarray, j: np.ndarray
) -> np.ndarray:
    out = np.empty(len(i))
    for s in range(0, len(i), _CHUNK):
        a, b = i[s : s + _CHUNK], j[s : s + _CHUNK]
        d = np.sqrt(np.maximum(((emb[a] - emb[b]) ** 2).sum(1), 0.0))
        out[s : s + _CHUNK] = model.scores(d, profiles[a], profiles[b])
    return out


def _within_source_pairs(sources: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Pairs of faces of one source: all of them when few enough, else a sample of IMPOSTOR_SAMPLE split
    across sources by their share of the pairs (repeats are negligible among so many)."""
    members = [np.nonzero(sources == s)[0] for s in np.unique(sources)]
    counts = np.array([len(m) * (len(m) - 1) // 2 for m in members], dtype=np.float64)
    parts_i, parts_j = [], []
    for rows, count in zip(members, counts, strict=True):
        if counts.sum() <= IMPOSTOR_SAMPLE:
            a, b = np.triu_indices(len(rows), k=1)
        else:
            take = int(round(IMPOSTOR_SAMPLE * count / counts.sum()))
            a, b = rng.integers(0, len(rows), take), rng.integers(0, len(rows), take)
            a, b = a[a != b], b[a != b]
        parts_i.append(rows[a])
        parts_j.append(rows[b])
    return np.concatenate(parts_i), np.concatenate(parts_j)


def _genuine_pairs(ids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    order = np.argsort(ids, kind="stable")
    pairs_i, pairs_j = [], []
    for group in np.split(order, np.nonzero(np.diff(ids[order]))[0] + 1):
        if len(group) > 1:
            a, b = np.triu_indices(len(group), k=1)
            pairs_i.append(group[a])
            pairs_j.append(group[b])
    if not pairs_i:
        return np.zeros(0, np.int64), np.zeros(0, np.int64)
    return np.concatenate(pairs_i), np.concatenate(pairs_j)


def _write_atomic(path: Path, text: str) -> None:
    with tempfile.NamedTemporaryFile("w", dir=path.parent, suffix=".tmp", delete=False) as fh:
        fh.write(text)
    os.replace(fh.name, path)


__all__ = [
    "RAW",
    "NormalisedScoring",
    "ScoreCalibration",
    "Scoring",
    "activate_scores",
    "active_scores",
    "calibrate",
    "scoring_for",
]

"""Which label-free normalisation of face distances removes demographic disparity in false matches (issue 19).

Methods, each fitted on embeddings (and LFW identities, to tell genuine from impostor pairs) of a cohort, never
on demographic labels, which are used only to evaluate:
  raw       the Euclidean distance;
  fsn       Fair Score Normalization: k-means clusters of the cohort, a threshold per cluster at FMR 1e-3 (over
            its faces' impostor pairs), each distance shifted by the mean of its two faces' cluster offsets;
  faircal   FairCal: k-means clusters, a beta calibration per cluster of distance → P(match) (genuine pairs of the
            cluster shrunk towards all genuine pairs, classes balanced per cluster: UTKFace has no genuine pairs,
            and a per-cluster prior would mark its clusters "never a match"), pair probability the cluster-size
            weighted mean of the two faces' calibrations;
  density   d − β((ρa + ρb)/2 − ρ̄), ρ = mean distance to a face's k nearest cohort faces (β tuned or 1);
  ratio     d / ((ρa + ρb)/(2ρ̄));
  rank      the mean of the two faces' log local FMR, log((r + ½)/(N + 1)), r = how many of the N cohort faces
            lie closer to the face than d (interpolated; from its 256 nearest);
  profile   the same from a 24-point rank profile per face (ranks 1 … N/4, geometric): what facegate serves
            (engine/normalise.py, RankProfileModel), 96 bytes per face instead of 1 KB.

Honest evaluation: K folds, LFW by identity (pairs.txt's ten identity-disjoint folds, grouped by a seeded
permutation, so every pairs.txt pair lies inside one fold) and UTKFace by image. For held-out fold f the cohort is
every other fold; k, β and cluster counts are tuned on an inner split of those folds (one fitting fold scored
against a cohort of the rest) by a label-free criterion: the spread of false-match rates across 10 k-means
regions of face space at inner FMR 1e-3 and 1e-4, among settings that keep the inner TMR at 1e-3 within 0.5
points of raw. On the held-out fold, thresholds are set where the overall impostor FMR (LFW + UTKFace pairs of
that fold) is 1e-3 and 1e-4, so every method is compared at equal overall FMR; group rates are pooled over folds.

ACLU 1:N: each Congress member searched against all LFW + UTKFace faces (the member's own LFW photos removed);
genuine searches: each LFW person with two or more photos (first photo as probe, the rest in the gallery) and
members also in LFW (their LFW photos in the gallery). Each gallery face's statistics come from the model of the
fold that held it out (its cohort is the other folds); a member's from the fold holding their LFW identity, or a
seeded fold. The threshold is the strictest at which ≥ 95% of genuine searches find their mate at rank 1.

Run: .venv/bin/python bench/fair_scores.py [--folds 5] [--seed 0] [--k 10 50 100] [--clusters 20 50 100]
"""

from __future__ import annotations

import argparse
import csv
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import datasets  # noqa: E402

from facegate.engine.models import EMBEDDING_MODEL_VERSION  # noqa: E402
from facegate.engine.normalise import (  # noqa: E402
    distances_at_ranks,
    local_log_fmr,
    pairwise_distances,
    profile_ranks,
)
from facegate.engine.scores import calibrate  # noqa: E402
from facegate.engine.similarity import similarity_scale  # noqa: E402
from facegate.fairness.audit import NEAR  # noqa: E402

FMRS = (1e-3, 1e-4)
TABLE_FMRS = (1e-2, 1e-3, 1e-4, 1e-5)  # the overall FMR of each similarity-table threshold: 80, 90, 95, 99
RACES = ("White", "Black", "Asian", "Indian", "Others")
SEXES = ("M", "F")
NEAREST = 256  # cohort neighbours kept per face: covers local FMR up to NEAREST / cohort size (≈ 2%)
BIN = 2.5e-4  # distance histogram resolution for cluster thresholds and calibrations
EDGES = np.arange(0.0, 1.6 + BIN, BIN)
BETAS = (0.5, 0.75, 1.0, 1.25, 1.5)
REGIONS = 10  # label-free regions of face space for the tuning criterion
PROFILE_RANKS = np.array([1])  # set in main from the cohort size
GENUINE_RATES = (0.95, 0.88, 0.85, 0.80)  # 95% is the operating point; the others where 95% is out of reach
PRIOR_GENUINE = 50.0  # FairCal: pooled genuine pairs worth this many of a cluster's own


# ---------------------------------------------------------------- data


@dataclass
class Data:
    emb: np.ndarray  # LFW rows then UTKFace rows
    ident: np.ndarray  # LFW identity index; UTKFace images get unique negative ids
    is_lfw: np.ndarray
    race: np.ndarray  # -1 for LFW
    sex: np.ndarray
    fold: np.ndarray
    lfw_rows: dict[tuple[str, int], int]
    lfw_names: list[str]
    pairs: list[tuple[int, int, int, bool]]  # (pairs.txt fold, row a, row b, same)
    congress: np.ndarray
    congress_poc: np.ndarray
    congress_mate: np.ndarray  # LFW identity index of members also in LFW, else -1
    congress_fold: np.ndarray


def load(folds: int, seed: int) -> Data:
    lfw_paths = datasets.lfw_paths()
    lfw_emb, _ = datasets.embed_paths(lfw_paths, fallback_whole=True, label="lfw")
    utk = datasets.utkface_rows()
    utk_emb, _ = datasets.embed_paths([r["file"] for r in utk], fallback_whole=False, label="utkface")
    base = datasets.data_dir() / "congress117"
    congress_paths = sorted((base / "images").glob("*/*.jpg"))
    congress_emb, _ = datasets.embed_paths(congress_paths, fallback_whole=False, label="congress")

    names = [p.parent.name for p in lfw_paths]
    lfw_names = sorted(set(names))
    name_index = {n: i for i, n in enumerate(lfw_names)}
    lfw_ident = np.array([name_index[n] for n in names])
    lfw_rows = {(p.parent.name, int(p.stem.rsplit("_", 1)[1])): i for i, p in enumerate(lfw_paths)}
    pairs_raw = datasets.lfw_pairs()
    rng = np.random.default_rng(seed)
    pair_folds = 1 + max(p[0] for p in pairs_raw)
    group_of_pair_fold = np.empty(pair_folds, dtype=int)
    group_of_pair_fold[rng.permutation(pair_folds)] = np.arange(pair_folds) % folds
    ident_fold = np.full(len(lfw_names), -1)
    for pf, a, b, _ in pairs_raw:
        ident_fold[name_index[a[0]]] = ident_fold[name_index[b[0]]] = group_of_pair_fold[pf]
    lfw_fold = ident_fold[lfw_ident]

    keep = ~np.isnan(utk_emb).any(1)
    utk_emb = utk_emb[keep]
    utk = [r for r, k in zip(utk, keep, strict=True) if k]
    utk_fold = rng.permutation(len(utk)) % folds
    n_lfw = len(lfw_emb)
    nan_lfw = int(np.isnan(lfw_emb).any(1).sum())
    if nan_lfw:
        sys.exit(f"{nan_lfw} LFW rows have no embedding; the LFW protocol embeds every image")

    pairs = [(pf, lfw_rows[a], lfw_rows[b], same) for pf, a, b, same in pairs_raw]
    members = {r["photo_file"]: r for r in csv.DictReader((base / "members.csv").open())}
    overlap = {r["bioguide"]: r["lfw_identity"] for r in csv.DictReader((base / "lfw_name_overlap.csv").open())}
    rows = [members[str(p.relative_to(base))] for p in congress_paths]
    c_keep = ~np.isnan(congress_emb).any(1)
    rows = [r for r, k in zip(rows, c_keep, strict=True) if k]
    mate = np.array([name_index.get(overlap.get(r["bioguide"], ""), -1) for r in rows])
    c_fold = np.where(mate >= 0, ident_fold[np.maximum(mate, 0)], rng.integers(folds, size=len(rows)))
    return Data(
        emb=np.vstack([lfw_emb, utk_emb]).astype(np.float32),
        ident=np.concatenate([lfw_ident, -1 - np.arange(len(utk))]),
        is_lfw=np.arange(n_lfw + len(utk)) < n_lfw,
        race=np.concatenate([np.full(n_lfw, -1), [int(r["race"]) for r in utk]]),
        sex=np.concatenate([np.full(n_lfw, -1), [int(r["gender"]) for r in utk]]),
        fold=np.concatenate([lfw_fold, utk_fold]),
        lfw_rows=lfw_rows,
        lfw_names=lfw_names,
        pairs=pairs,
        congress=congress_emb[c_keep].astype(np.float32),
        congress_poc=np.array([r["ethnicity"] != "white-american" for r in rows]),
        congress_mate=mate,
        congress_fold=c_fold,
    )


# ---------------------------------------------------------------- fitting on a cohort


def nearest_distances(
    faces: np.ndarray,
    cohort: np.ndarray,
    count: int,
    *,
    face_ids: np.ndarray | None = None,
    cohort_ids: np.ndarray | None = None,
) -> np.ndarray:
    """The ``count`` smallest distances from each face to the cohort, ascending (``len(faces) × count``)."""
    return distances_at_ranks(faces, cohort, np.arange(1, count + 1), face_ids=face_ids, cohort_ids=cohort_ids)


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


@dataclass
class Clusters:
    centroids: np.ndarray
    sizes: np.ndarray
    fsn_offset: np.ndarray  # cluster threshold − global threshold, distance units
    calibration: np.ndarray  # (clusters, 3) beta-calibration coefficients


@dataclass
class Fit:
    cohort: np.ndarray
    rho_bar: dict[int, float]
    clusters: dict[int, Clusters]


def fit_cohort(emb: np.ndarray, ident: np.ndarray, ks: list[int], counts: list[int], seed: int) -> Fit:
    """Everything the methods learn from a cohort: one pass over its impostor pairs (blocked)."""
    centroids = {c: kmeans(emb, c, seed=seed) for c in counts}
    labels = {c: pairwise_distances(emb, centroids[c]).argmin(1) for c in counts}
    nbins = len(EDGES) - 1
    hist = {c: np.zeros(c * nbins, dtype=np.int64) for c in counts}
    rho = {k: np.empty(len(emb)) for k in ks}
    genuine: list[np.ndarray] = []  # (row, distance) of same-identity ordered pairs
    block = 512
    for s in range(0, len(emb), block):
        d = pairwise_distances(emb[s : s + block], emb)
        same = ident[s : s + block, None] == ident[None, :]
        rows, cols = np.nonzero(same)
        off_diag = rows + s != cols
        genuine.append(np.column_stack([rows[off_diag] + s, d[rows[off_diag], cols[off_diag]]]))
        d[same] = np.inf
        near = np.sort(np.partition(d, max(ks) - 1, axis=1)[:, : max(ks)], axis=1)
        for k in ks:
            rho[k][s : s + block] = near[:, :k].mean(1)
        finite = np.isfinite(d)
        b = np.minimum((d[finite] / BIN).astype(np.int64), nbins - 1)
        r = np.broadcast_to(np.arange(s, s + len(d))[:, None], d.shape)[finite]
        for c in counts:
            hist[c] += np.bincount(labels[c][r] * nbins + b, minlength=c * nbins)
    gen = np.vstack(genuine)
    clusters = {}
    for c in counts:
        h = hist[c].reshape(c, nbins)
        clusters[c] = Clusters(
            centroids=centroids[c],
            sizes=np.bincount(labels[c], minlength=c),
            fsn_offset=_fsn_offsets(h, 1e-3),
            calibration=_faircal(h, labels[c][gen[:, 0].astype(int)], gen[:, 1], c) if len(gen) else np.zeros((c, 3)),
        )
    return Fit(cohort=emb, rho_bar={k: float(rho[k].mean()) for k in ks}, clusters=clusters)


def _distance_at(hist: np.ndarray, fmr: float) -> float:
    cdf = np.cumsum(hist) / max(hist.sum(), 1)
    i = int(np.searchsorted(cdf, fmr))
    below = cdf[i - 1] if i > 0 else 0.0
    return float(EDGES[i] + BIN * (fmr - below) / max(cdf[i] - below, 1e-12))


def _fsn_offsets(hist: np.ndarray, fmr: float) -> np.ndarray:
    overall = _distance_at(hist.sum(0), fmr)
    return np.array([_distance_at(h, fmr) - overall for h in hist])


def _beta_features(d: np.ndarray) -> np.ndarray:
    # Beta calibration (Kull et al.) on s = 1 − d/2 ∈ (0, 1): logit p = a ln s − b ln(1 − s) + c.
    s = np.clip(1.0 - d / 2.0, 1e-6, 1 - 1e-6)
    return np.column_stack([np.log(s), -np.log(1.0 - s), np.ones_like(s)])


def _logistic(x: np.ndarray, y: np.ndarray, w: np.ndarray, ridge: float = 1e-4) -> np.ndarray:
    theta = np.zeros(x.shape[1])
    for _ in range(50):
        p = 1.0 / (1.0 + np.exp(-np.clip(x @ theta, -50, 50)))
        grad = x.T @ (w * (p - y)) + ridge * theta
        hess = (x * (w * p * (1 - p))[:, None]).T @ x + ridge * np.eye(x.shape[1])
        step = np.linalg.solve(hess, grad)
        theta -= step
        if np.abs(step).max() < 1e-8:
            break
    return theta


def _faircal(hist: np.ndarray, gen_cluster: np.ndarray, gen_d: np.ndarray, count: int) -> np.ndarray:
    coarse = 4  # impostor histogram bins merged to 1e-3 for the fit
    h = hist[:, : hist.shape[1] // coarse * coarse].reshape(count, -1, coarse).sum(2)
    centres = (np.arange(h.shape[1]) + 0.5) * BIN * coarse
    out = np.zeros((count, 3))
    for c in range(count):
        imp = h[c] > 0
        own = gen_cluster == c
        gd = np.concatenate([gen_d[own], gen_d])
        gw = np.concatenate([np.ones(own.sum()), np.full(len(gen_d), PRIOR_GENUINE / len(gen_d))])
        iw = h[c][imp].astype(float)
        x = _beta_features(np.concatenate([gd, centres[imp]]))
        y = np.concatenate([np.ones(len(gd)), np.zeros(imp.sum())])
        w = np.concatenate([gw / gw.sum(), iw / iw.sum()])
        out[c] = _logistic(x, y, w * len(w))
    return out


# ---------------------------------------------------------------- methods


@dataclass(frozen=True)
class Method:
    family: str
    k: int = 0
    beta: float = 1.0
    clusters: int = 0

    @property
    def name(self) -> str:
        if self.family == "density":
            return f"density k={self.k} β={self.beta:g}"
        if self.family == "ratio":
            return f"ratio k={self.k}"
        if self.family in ("fsn", "faircal"):
            return f"{self.family} K={self.clusters}"
        return self.family


def grids(ks: list[int], counts: list[int]) -> dict[str, list[Method]]:
    return {
        "raw": [Method("raw")],
        "fsn": [Method("fsn", clusters=c) for c in counts],
        "faircal": [Method("faircal", clusters=c) for c in counts],
        "density β=1": [Method("density", k=k) for k in ks],
        "density": [Method("density", k=k, beta=b) for k in ks for b in BETAS],
        "ratio": [Method("ratio", k=k) for k in ks],
        "rank": [Method("rank")],
        "profile": [Method("profile")],
    }


@dataclass
class Records:
    """What a fitted cohort says about a set of faces: their nearest cohort distances and clusters."""

    near: np.ndarray
    labels: dict[int, np.ndarray]
    cohort_size: int
    profiles: np.ndarray


def records(fit: Fit, emb: np.ndarray) -> Records:
    near = nearest_distances(emb, fit.cohort, NEAREST)
    labels = {c: pairwise_distances(emb, cl.centroids).argmin(1) for c, cl in fit.clusters.items()}
    profiles = distances_at_ranks(emb, fit.cohort, PROFILE_RANKS)
    return Records(near=near, labels=labels, cohort_size=len(fit.cohort), profiles=profiles)


def face_params(method: Method, fit: Fit, rec: Records) -> dict[str, np.ndarray]:
    """Per-face numbers a pair score needs, already in model-free form so faces of different fits combine."""
    n = len(rec.near)
    if method.family == "density":
        return {"offset": method.beta * (rec.near[:, : method.k].mean(1) - fit.rho_bar[method.k])}
    if method.family == "ratio":
        return {"scale": rec.near[:, : method.k].mean(1) / fit.rho_bar[method.k]}
    if method.family == "fsn":
        return {"offset": fit.clusters[method.clusters].fsn_offset[rec.labels[method.clusters]]}
    if method.family == "faircal":
        cl = fit.clusters[method.clusters]
        lab = rec.labels[method.clusters]
        return {"weight": cl.sizes[lab].astype(float), "coef": cl.calibration[lab]}
    if method.family == "rank":
        return {"near": rec.near, "cohort": np.full(n, rec.cohort_size)}
    if method.family == "profile":
        return {"profile": rec.profiles, "cohort": np.full(n, rec.cohort_size)}
    return {}


def concat_params(parts: list[dict[str, np.ndarray]]) -> dict[str, np.ndarray]:
    return {key: np.concatenate([p[key] for p in parts]) for key in parts[0]} if parts[0] else {}


def _local_log_fmr(near: np.ndarray, cohort: np.ndarray, rows: np.ndarray, d: np.ndarray) -> np.ndarray:
    # Vectorised binary search: how many of a face's nearest cohort distances lie below d, interpolated.
    m = near.shape[1]
    lo = np.zeros(len(d), dtype=np.int64)
    step = 1 << (m.bit_length() - 1)
    while step:
        cand = lo + step
        ok = cand <= m
        ok[ok] = near[rows[ok], cand[ok] - 1] < d[ok]
        lo = np.where(ok, cand, lo)
        step >>= 1
    inside = lo < m
    left = np.where(lo > 0, near[rows, np.maximum(lo - 1, 0)], 0.0)
    right = near[rows, np.minimum(lo, m - 1)]
    frac = np.where(inside, (d - left) / np.maximum(right - left, 1e-9), 0.0)
    r = np.where(inside, lo + np.clip(frac, 0, 1), m)
    return np.log((r + 0.5) / (cohort[rows] + 1.0))


def pair_scores(method: Method, p: dict[str, np.ndarray], i: np.ndarray, j: np.ndarray, d: np.ndarray) -> np.ndarray:
    """Dissimilarity of each pair (lower = more alike), from its raw distance and its two faces' numbers."""
    if method.family in ("density", "fsn"):
        return d - 0.5 * (p["offset"][i] + p["offset"][j])
    if method.family == "ratio":
        return d / (0.5 * (p["scale"][i] + p["scale"][j]))
    if method.family == "faircal":
        wi, wj = p["weight"][i], p["weight"][j]
        x = _beta_features(d)
        qi = 1.0 / (1.0 + np.exp(np.clip((x * p["coef"][i]).sum(1), -50, 50)))  # 1 − P(match), face i's cluster
        qj = 1.0 / (1.0 + np.exp(np.clip((x * p["coef"][j]).sum(1), -50, 50)))
        return (wi * qi + wj * qj) / (wi + wj)
    if method.family == "rank":
        return 0.5 * (_local_log_fmr(p["near"], p["cohort"], i, d) + _local_log_fmr(p["near"], p["cohort"], j, d))
    if method.family == "profile":
        pr, n = p["profile"], p["cohort"]
        return 0.5 * (local_log_fmr(pr[i], PROFILE_RANKS, n[i], d) + local_log_fmr(pr[j], PROFILE_RANKS, n[j], d))
    return d


# ---------------------------------------------------------------- evaluation sets


@dataclass
class PairSet:
    """All pairs within a set of faces that the protocol counts: LFW×LFW and UTKFace×UTKFace."""

    i: np.ndarray
    j: np.ndarray
    d: np.ndarray
    genuine: np.ndarray
    race: np.ndarray  # both faces' race when they share it, else -1 (UTKFace only)
    cell: np.ndarray  # race × sex cell when shared, else -1


def pair_set(data: Data, rows: np.ndarray) -> PairSet:
    parts = []
    for lfw in (True, False):
        local = np.nonzero(data.is_lfw[rows] == lfw)[0]
        a, b = np.triu_indices(len(local), k=1)
        parts.append((local[a], local[b]))
    i = np.concatenate([p[0] for p in parts])
    j = np.concatenate([p[1] for p in parts])
    emb = data.emb[rows]
    d = np.sqrt(np.maximum(((emb[i] - emb[j]) ** 2).sum(1), 0.0))
    gi, gj = rows[i], rows[j]
    race = np.where(data.race[gi] == data.race[gj], data.race[gi], -1)
    same_sex = data.sex[gi] == data.sex[gj]
    cell = np.where((race >= 0) & same_sex, race * 2 + data.sex[gi], -1)
    return PairSet(i=i, j=j, d=d, genuine=data.ident[gi] == data.ident[gj], race=race, cell=cell)


def threshold_at(impostor_scores: np.ndarray, fmr: float) -> float:
    accepted = int(np.floor(fmr * len(impostor_scores)))
    if accepted == 0:
        return -np.inf
    return float(np.partition(impostor_scores, accepted - 1)[accepted - 1])


# ---------------------------------------------------------------- tuning (label-free, fitting folds only)


def tune(data: Data, fold: int, args: argparse.Namespace, grid: dict[str, list[Method]]):
    """The best setting of each family on an inner split of the fitting folds, by a label-free criterion."""
    inner = next(f for f in range(args.folds) if f != fold)
    tune_rows = np.nonzero(data.fold == inner)[0]
    cohort_rows = cohort_of(data, args.cohort, (fold, inner))
    fit = fit_cohort(data.emb[cohort_rows], data.ident[cohort_rows], args.k, args.clusters, args.seed)
    rec = records(fit, data.emb[tune_rows])
    ps = pair_set(data, tune_rows)
    regions = pairwise_distances(data.emb[tune_rows], kmeans(data.emb[cohort_rows], REGIONS, seed=args.seed + 1))
    region = regions.argmin(1)
    imp = ~ps.genuine
    ri, rj = region[ps.i[imp]], region[ps.j[imp]]
    trials = np.bincount(ri, minlength=REGIONS) + np.bincount(rj, minlength=REGIONS)

    def judge(method: Method) -> tuple[float, float]:
        s = pair_scores(method, face_params(method, fit, rec), ps.i, ps.j, ps.d)
        spread = 0.0
        for fmr in FMRS:
            t = threshold_at(s[imp], fmr)
            acc = s[imp] <= t
            hits = np.bincount(ri[acc], minlength=REGIONS) + np.bincount(rj[acc], minlength=REGIONS)
            rate = (hits + 0.5) / trials
            spread += np.log(rate.max() / rate.min()) / len(FMRS)
        tmr = float((s[ps.genuine] <= threshold_at(s[imp], FMRS[0])).mean())
        return spread, tmr

    raw_tmr = judge(Method("raw"))[1]
    chosen = {}
    for family, methods in grid.items():
        scored = [(judge(m), m) for m in methods]
        fair = [x for x in scored if x[0][1] >= raw_tmr - 0.005] or scored
        chosen[family] = min(fair, key=lambda x: (x[0][0], -x[0][1]))[1]
    return chosen


def cohort_of(data: Data, sources: str, exclude: tuple[int, ...]) -> np.ndarray:
    """Rows of the cohort: the chosen sources, outside the given folds."""
    wanted = {"lfw+utkface": np.ones_like(data.is_lfw), "lfw": data.is_lfw, "utkface": ~data.is_lfw}[sources]
    return np.nonzero(wanted & ~np.isin(data.fold, exclude))[0]


# ---------------------------------------------------------------- the experiment


@dataclass
class Tally:
    """Counts pooled over held-out folds for one method."""

    race_hits: dict[float, np.ndarray] = field(default_factory=dict)
    race_trials: np.ndarray | None = None
    cell_hits: dict[float, np.ndarray] = field(default_factory=dict)
    cell_trials: np.ndarray | None = None
    fold_race_ratio: dict[float, list[float]] = field(default_factory=dict)
    fold_cell_ratio: dict[float, list[float]] = field(default_factory=dict)
    genuine_hits: int = 0
    genuine_trials: int = 0
    fold_tmr: list[float] = field(default_factory=list)
    lfw_pair_scores: dict[int, np.ndarray] = field(default_factory=dict)  # pairs.txt index → score
    impostor_tail: list[np.ndarray] = field(default_factory=list)  # each fold's lowest 1% of impostor scores
    impostor_pairs: int = 0
    chosen: list[str] = field(default_factory=list)


def _ratio(hits: np.ndarray, trials: np.ndarray) -> float:
    rate = hits / trials
    return float(rate.max() / rate.min()) if rate.min() > 0 else float("inf")


def evaluate_fold(tally: Tally, method: Method, fit: Fit, rec: Records, ps: PairSet, rows: np.ndarray, data: Data):
    s = pair_scores(method, face_params(method, fit, rec), ps.i, ps.j, ps.d)
    imp = ~ps.genuine
    tail = int(0.01 * imp.sum())
    tally.impostor_tail.append(np.partition(s[imp], tail)[:tail])
    tally.impostor_pairs += int(imp.sum())
    if tally.race_trials is None:
        tally.race_trials = np.zeros(len(RACES), dtype=np.int64)
        tally.cell_trials = np.zeros(2 * len(RACES), dtype=np.int64)
    race_trials = np.bincount(ps.race[ps.race >= 0], minlength=len(RACES))
    cell_trials = np.bincount(ps.cell[ps.cell >= 0], minlength=2 * len(RACES))
    tally.race_trials += race_trials
    tally.cell_trials += cell_trials
    for fmr in TABLE_FMRS:
        t = threshold_at(s[imp], fmr)
        acc = imp & (s <= t)
        rh = np.bincount(ps.race[acc & (ps.race >= 0)], minlength=len(RACES))
        ch = np.bincount(ps.cell[acc & (ps.cell >= 0)], minlength=2 * len(RACES))
        tally.race_hits[fmr] = tally.race_hits.get(fmr, 0) + rh
        tally.cell_hits[fmr] = tally.cell_hits.get(fmr, 0) + ch
        tally.fold_race_ratio.setdefault(fmr, []).append(_ratio(rh, race_trials))
        tally.fold_cell_ratio.setdefault(fmr, []).append(_ratio(ch, cell_trials))
        if fmr == FMRS[0]:
            g = int((s[ps.genuine] <= t).sum())
            tally.genuine_hits += g
            tally.genuine_trials += int(ps.genuine.sum())
            tally.fold_tmr.append(g / ps.genuine.sum())
    # pairs.txt pairs inside this fold, scored with this fold's fit
    local = {r: n for n, r in enumerate(rows)}
    idx = [n for n, (_, a, _, _) in enumerate(data.pairs) if a in local]
    pi = np.array([local[data.pairs[n][1]] for n in idx])
    pj = np.array([local[data.pairs[n][2]] for n in idx])
    emb = data.emb[rows]
    d = np.sqrt(((emb[pi] - emb[pj]) ** 2).sum(1))
    for n, v in zip(idx, pair_scores(method, face_params(method, fit, rec), pi, pj, d), strict=True):
        tally.lfw_pair_scores[n] = v


def lfw_accuracy(data: Data, scores: dict[int, float]) -> tuple[float, float]:
    """Mean and std of View-2 accuracy over pairs.txt's folds, each threshold chosen on the other nine."""
    pf = np.array([p[0] for p in data.pairs])
    same = np.array([p[3] for p in data.pairs])
    s = np.array([scores[n] for n in range(len(data.pairs))])
    accs = []
    for f in np.unique(pf):
        tr = pf != f
        order = np.argsort(s[tr])
        st, yt = s[tr][order], same[tr][order]
        # accept the first c pairs: correct = genuine accepted + impostors rejected
        correct = np.concatenate([[0], np.cumsum(yt)]) + (~yt).sum() - np.concatenate([[0], np.cumsum(~yt)])
        c = int(np.argmax(correct))
        t = st[c - 1] if c > 0 else -np.inf
        t = 0.5 * (t + st[c]) if 0 < c < len(st) else t
        accs.append(float(((s[~tr] <= t) == same[~tr]).mean()))
    return float(np.mean(accs)), float(np.std(accs))


def aclu(data: Data, method_per_fold: list[Method], fits: list[Fit], recs_all, recs_congress, tally: Tally) -> dict:
    """1:N on the gallery of all LFW + UTKFace faces, each face's numbers from the fit that held it out."""
    n = len(data.emb)
    order = np.concatenate([np.nonzero(data.fold == f)[0] for f in range(len(fits))])
    gallery_params = concat_params([face_params(method_per_fold[f], fits[f], recs_all[f]) for f in range(len(fits))])
    position = np.empty(n, dtype=np.int64)
    position[order] = np.arange(n)
    c_order = np.concatenate([np.nonzero(data.congress_fold == f)[0] for f in range(len(fits))])
    c_params = concat_params([face_params(method_per_fold[f], fits[f], recs_congress[f]) for f in range(len(fits))])
    c_position = np.empty(len(data.congress), dtype=np.int64)
    c_position[c_order] = np.arange(len(data.congress))
    # one parameter table: gallery faces first, then congress probes
    params = {k: np.concatenate([gallery_params[k], c_params[k]]) for k in gallery_params}
    method = method_per_fold[0]  # pair_scores reads only the family; each face's setting is in its params

    def search(probe_emb: np.ndarray, probe_pos: np.ndarray) -> np.ndarray:
        d = pairwise_distances(probe_emb, data.emb)
        gi = np.broadcast_to(probe_pos[:, None], d.shape).ravel()
        gj = np.broadcast_to(position[None, :], d.shape).ravel()
        return pair_scores(method, params, gi, gj, d.ravel().astype(np.float64)).reshape(d.shape)

    # Congress members: best impostor score over the gallery without their own LFW photos
    member_best = np.empty(len(data.congress))
    member_mate_ok = []
    for s in range(0, len(data.congress), 128):
        sl = slice(s, s + 128)
        sc = search(data.congress[sl], n + c_position[sl])
        mate = data.congress_mate[sl]
        own = (data.ident[None, :] == mate[:, None]) & (mate[:, None] >= 0)
        member_best[sl] = np.where(own, np.inf, sc).min(1)
        for r in np.nonzero(mate >= 0)[0]:
            top = int(np.argmin(sc[r]))
            member_mate_ok.append(sc[r, top] if own[r, top] else np.inf)
    # LFW people with two or more photos: first photo as probe, the rest in the gallery
    lfw_rows = np.nonzero(data.is_lfw)[0]
    first: dict[int, int] = {}
    counts = np.bincount(data.ident[lfw_rows])
    for r in lfw_rows:
        first.setdefault(int(data.ident[r]), int(r))
    probes = np.array([r for i, r in first.items() if counts[i] >= 2])
    genuine_ok = []
    for s in range(0, len(probes), 256):
        pr = probes[s : s + 256]
        sc = search(data.emb[pr], position[pr])
        sc[np.arange(len(pr)), pr] = np.inf
        top = sc.argmin(1)
        hit = data.ident[top] == data.ident[pr]
        genuine_ok.extend(np.where(hit, sc[np.arange(len(pr)), top], np.inf))
    ok = np.sort(np.concatenate([genuine_ok, member_mate_ok]))
    tail = np.sort(np.concatenate(tally.impostor_tail))
    thresholds = []
    for rate in GENUINE_RATES:
        need = int(np.ceil(rate * len(ok)))
        thresholds.append((f"{rate:.0%} genuine found", ok[need - 1]))
    for fmr in (*FMRS, 1e-5):
        thresholds.append((f"overall FMR {fmr:g}", tail[int(fmr * tally.impostor_pairs) - 1]))
    points = []
    for label, t in thresholds:
        fm = member_best <= t
        points.append(
            {
                "operating_point": label,
                "threshold": float(t),
                "genuine_found": float((np.isfinite(ok) & (ok <= t)).mean()),
                "members_matched": int(fm.sum()),
                "poc_share": float(data.congress_poc[fm].mean()) if fm.any() else float("nan"),
            }
        )
    return {
        "genuine_searches": len(ok),
        "rank1": float(np.isfinite(ok).mean()),
        "points": points,
        "members_mates_found": int(np.isfinite(member_mate_ok).sum()),
        "members_in_lfw": len(member_mate_ok),
    }


SERVED = (80.0, 90.0, 95.0, 99.0)


def served_thresholds(data: Data, args: argparse.Namespace) -> dict:
    """What a client gets at FaceMatchThreshold 80/90/95/99: per held-out fold, ``facegate fairness
    calibrate``'s own procedure (engine.scores.calibrate) on the other folds, then the held-out fold's pairs
    scored and read at the calibrated table's thresholds; raw scores read at calibration.json's (which was
    measured on all of LFW and UTKFace, the held-out folds included: an advantage for raw)."""
    raw = similarity_scale(EMBEDDING_MODEL_VERSION)
    out = {
        name: {t: {"race_hits": 0, "race_hits_distinct": 0, "imp_hits": 0, "gen_hits": 0} for t in SERVED}
        for name in ("raw", "profile")
    }
    trials = {"race": 0, "imp": 0, "gen": 0}
    for fold in range(args.folds):
        fitting = cohort_of(data, args.cohort, (fold,))
        cal = calibrate(
            data.emb[fitting],
            data.ident[fitting],
            model_version=EMBEDDING_MODEL_VERSION,
            cohorts=[],
            sources=data.is_lfw[fitting].astype(int),
            seed=args.seed,
        )
        rows = np.nonzero(data.fold == fold)[0]
        ps = pair_set(data, rows)
        profiles = cal.model.profiles(data.emb[rows])
        similarity = {
            "raw": raw.similarity(ps.d),
            "profile": cal.scale.similarity(cal.model.scores(ps.d, profiles[ps.i], profiles[ps.j])),
        }
        imp = ~ps.genuine
        races = ps.race >= 0
        trials["race"] = trials["race"] + np.bincount(ps.race[races & imp], minlength=len(RACES))
        trials["imp"] += int(imp.sum())
        trials["gen"] += int(ps.genuine.sum())
        for name, sim in similarity.items():
            for t in SERVED:
                accepted = sim >= t
                tally = out[name][t]
                tally["race_hits"] = tally["race_hits"] + np.bincount(
                    ps.race[races & imp & accepted], minlength=len(RACES)
                )
                distinct = ps.d > NEAR  # not the same photograph listed twice (a labelling error of UTKFace)
                tally["race_hits_distinct"] = tally["race_hits_distinct"] + np.bincount(
                    ps.race[races & imp & accepted & distinct], minlength=len(RACES)
                )
                tally["imp_hits"] += int((imp & accepted).sum())
                tally["gen_hits"] += int((ps.genuine & accepted).sum())
        print(f"served thresholds: fold {fold} calibrated ({cal.calibration_id})", file=sys.stderr)
    return {"tallies": out, "trials": trials}


def print_served(served: dict) -> None:
    print("\n## At the served thresholds (FaceMatchThreshold), held-out folds pooled: the default rule as a client")
    print("sees it; profile = `facegate fairness calibrate` on the other folds, raw = calibration.json\n")
    print(
        "| threshold | overall FMR raw → profile | worst race raw → profile | worst/best race raw → profile | TMR (LFW same-person) raw → profile |"
    )
    print("|---|---|---|---|---|")
    trials = served["trials"]
    lower_everywhere = True
    worst_distinct: dict[float, tuple[float, float]] = {}
    for t in SERVED:
        cells = []
        worst = {}
        for name in ("raw", "profile"):
            tally = served["tallies"][name][t]
            rates = tally["race_hits"] / trials["race"]
            worst[name] = (RACES[int(np.argmax(rates))], rates.max(), int(tally["race_hits"][int(np.argmax(rates))]))
            cells.append(
                (
                    tally["imp_hits"] / trials["imp"],
                    rates.max() / rates.min() if rates.min() > 0 else np.inf,
                    tally["gen_hits"] / trials["gen"],
                )
            )
        lower_everywhere &= worst["profile"][1] < worst["raw"][1]
        distinct = {n: served["tallies"][n][t]["race_hits_distinct"] / trials["race"] for n in ("raw", "profile")}
        worst_distinct[t] = (distinct["raw"].max(), distinct["profile"].max())
        print(
            f"| {t:g} | {cells[0][0]:.2e} → {cells[1][0]:.2e} | {worst['raw'][0]} {worst['raw'][1]:.2e} ({worst['raw'][2]}) → "
            f"{worst['profile'][0]} {worst['profile'][1]:.2e} ({worst['profile'][2]}) | {cells[0][1]:.1f}× → {cells[1][1]:.1f}× | "
            f"{cells[0][2]:.2%} → {cells[1][2]:.2%} |"
        )
    print(f"\nWorst race's FMR lower at every served threshold: {'yes' if lower_everywhere else 'no'}")
    print(
        f"Without near-identical impostor pairs (distance ≤ {NEAR}: one photograph under two names): "
        + "; ".join(f"{t:g}: {a:.2e} → {b:.2e}" for t, (a, b) in worst_distinct.items())
        + f" — lower at every threshold: {'yes' if all(b < a for a, b in worst_distinct.values()) else 'no'}"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--folds", type=int, default=5)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--k", type=int, nargs="+", default=[10, 50, 100], help="density neighbourhood sizes")
    parser.add_argument("--clusters", type=int, nargs="+", default=[20, 50, 100], help="k-means cluster counts")
    parser.add_argument("--cohort", choices=("lfw+utkface", "lfw", "utkface"), default="lfw+utkface")
    parser.add_argument("--sensitivity", action="store_true", help="also score every grid setting (not tuned)")
    parser.add_argument("--served-only", action="store_true", help="only the served-threshold comparison")
    args = parser.parse_args()
    started = time.perf_counter()
    data = load(args.folds, args.seed)
    if args.served_only:
        print_served(served_thresholds(data, args))
        return
    global PROFILE_RANKS  # one rank set for every fold's cohort, so faces profiled by different folds combine
    PROFILE_RANKS = profile_ranks(int(len(data.emb) * (args.folds - 2) / args.folds))
    grid = grids(args.k, args.clusters)
    if args.cohort == "utkface":
        del grid["faircal"]  # no identities in UTKFace, so no genuine pairs to calibrate on
    families = list(grid)
    tallies = {f: Tally() for f in families}
    sens = {m: Tally() for ms in grid.values() for m in ms} if args.sensitivity else {}
    fits, recs_all, recs_congress, chosen_per_fold = [], [], [], []
    print(
        f"{len(data.emb):,} faces ({data.is_lfw.sum():,} LFW, {(~data.is_lfw).sum():,} UTKFace), "
        f"{len(data.congress)} Congress; {args.folds} folds, seed {args.seed}",
        file=sys.stderr,
    )
    for fold in range(args.folds):
        rows = np.nonzero(data.fold == fold)[0]
        fitting = cohort_of(data, args.cohort, (fold,))
        chosen = tune(data, fold, args, grid)
        fit = fit_cohort(data.emb[fitting], data.ident[fitting], args.k, args.clusters, args.seed)
        rec = records(fit, data.emb[rows])
        ps = pair_set(data, rows)
        for family in families:
            evaluate_fold(tallies[family], chosen[family], fit, rec, ps, rows, data)
            tallies[family].chosen.append(chosen[family].name)
        for m, tally in sens.items():
            evaluate_fold(tally, m, fit, rec, ps, rows, data)
        fits.append(fit)
        recs_all.append(rec)
        recs_congress.append(records(fit, data.congress[data.congress_fold == fold]))
        chosen_per_fold.append(chosen)
        print(
            f"fold {fold}: {len(rows):,} held-out faces, {(~ps.genuine).sum():,} impostor pairs, "
            f"{time.perf_counter() - started:.0f} s",
            file=sys.stderr,
        )
    raw_races = {fmr: tallies["raw"].race_hits[fmr] / tallies["raw"].race_trials for fmr in FMRS}
    results = {}
    for family in families:
        t = tallies[family]
        acc = lfw_accuracy(data, t.lfw_pair_scores)
        one_n = aclu(data, [c[family] for c in chosen_per_fold], fits, recs_all, recs_congress, t)
        results[family] = (t, acc, one_n)
    print_report(data, args, results, raw_races, time.perf_counter() - started)
    print_served(served_thresholds(data, args))
    if sens:
        print("\n## Sensitivity: every setting on the held-out folds (labels used here; not used to choose)\n")
        print("| setting | race ratio @1e-3 | @1e-4 | race×sex @1e-3 | @1e-4 | TMR@1e-3 |")
        print("|---|---|---|---|---|---|")
        for m, t in sens.items():
            print(
                f"| {m.name} | {_fmt_ratio(t.race_hits[1e-3], t.race_trials)} | "
                f"{_fmt_ratio(t.race_hits[1e-4], t.race_trials)} | {_fmt_ratio(t.cell_hits[1e-3], t.cell_trials)} | "
                f"{_fmt_ratio(t.cell_hits[1e-4], t.cell_trials)} | {t.genuine_hits / t.genuine_trials:.2%} |"
            )
    print(f"\nruntime {time.perf_counter() - started:.0f} s", file=sys.stderr)


def _fmt_ratio(hits: np.ndarray, trials: np.ndarray) -> str:
    r = _ratio(hits, trials)
    return "∞" if not np.isfinite(r) else f"{r:.2f}×"


def _spread(values: list[float]) -> str:
    finite = [v for v in values if np.isfinite(v)]
    lo = f"{min(values):.1f}"
    hi = f"{max(values):.1f}" if len(finite) == len(values) else "∞"
    return f"{lo}–{hi}"


def print_report(data: Data, args, results: dict, raw_races: dict, seconds: float) -> None:
    names = list(results)
    print(f"# Fair scores: {args.folds}-fold held-out comparison (seed {args.seed})\n")
    print("Chosen settings per fold (label-free inner tuning):\n")
    for family in names:
        print(f"- {family}: {', '.join(results[family][0].chosen)}")
    print("\n## Summary at equal overall FMR (pooled over held-out folds; per-fold range in brackets)\n")
    print(
        "| method | race worst/best @1e-3 | @1e-4 | race×sex @1e-3 | @1e-4 | LFW accuracy | TMR @1e-3 | "
        "ACLU members falsely matched at 95% genuine | people of colour among them | genuine found at rank 1 |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|")
    poc = data.congress_poc.mean()
    for family in names:
        t, (acc, acc_sd), a = results[family]
        ratio = [f"{_fmt_ratio(t.race_hits[f], t.race_trials)} ({_spread(t.fold_race_ratio[f])})" for f in FMRS] + [
            f"{_fmt_ratio(t.cell_hits[f], t.cell_trials)} ({_spread(t.fold_cell_ratio[f])})" for f in FMRS
        ]
        p95 = a["points"][0]
        share = "—" if not p95["members_matched"] else f"{p95['poc_share']:.1%} ({p95['poc_share'] / poc:.2f}×)"
        print(
            f"| {family} | {' | '.join(ratio)} | {acc:.2%} ± {acc_sd:.2%} | "
            f"{t.genuine_hits / t.genuine_trials:.2%} ({min(t.fold_tmr):.1%}–{max(t.fold_tmr):.1%}) | "
            f"{p95['members_matched']} | {share} | {a['rank1']:.1%} of {a['genuine_searches']} |"
        )
    print(f"\nCongress: {len(data.congress)} members, {poc:.1%} people of colour. ", end="")
    a = results["raw"][2]
    print(f"Members also in LFW: {a['members_in_lfw']} (mates found at rank 1 raw: {a['members_mates_found']}).")
    for fmr in FMRS:
        print(f"\n## UTKFace FMR per race at overall FMR {fmr:g} (false matches / same-race pairs, pooled)\n")
        print("| race | pairs | " + " | ".join(names) + " |")
        print("|---|---|" + "---|" * len(names))
        trials = results["raw"][0].race_trials
        for r, race in enumerate(RACES):
            cells = []
            for family in names:
                t = results[family][0]
                rate = t.race_hits[fmr][r] / trials[r]
                arrow = "" if family == "raw" else (" ↑" if rate > raw_races[fmr][r] else " ↓")
                cells.append(f"{rate:.2e} ({t.race_hits[fmr][r]}){arrow}")
            print(f"| {race} | {trials[r]:,} | " + " | ".join(cells) + " |")
        print(f"\n## UTKFace FMR per race × sex at overall FMR {fmr:g}\n")
        print("| cell | pairs | " + " | ".join(names) + " |")
        print("|---|---|" + "---|" * len(names))
        ctr = results["raw"][0].cell_trials
        for c in range(2 * len(RACES)):
            cells = [
                f"{results[f][0].cell_hits[fmr][c] / ctr[c]:.2e} ({results[f][0].cell_hits[fmr][c]})" for f in names
            ]
            print(f"| {RACES[c // 2]} {SEXES[c % 2]} | {ctr[c]:,} | " + " | ".join(cells) + " |")
    print("\n## Worst race's FMR at each similarity-table threshold (equal overall FMR; pooled; the default rule)\n")
    print("| overall FMR (similarity) | " + " | ".join(names) + " |")
    print("|---|" + "---|" * len(names))
    trials = results["raw"][0].race_trials
    worst = {f: {fmr: (results[f][0].race_hits[fmr] / trials).max() for fmr in TABLE_FMRS} for f in names}
    for fmr, similarity in zip(TABLE_FMRS, (80, 90, 95, 99), strict=True):
        cells = []
        for f in names:
            who = RACES[int(np.argmax(results[f][0].race_hits[fmr] / trials))]
            cells.append(f"{worst[f][fmr]:.2e} ({who})")
        print(f"| {fmr:g} ({similarity}) | " + " | ".join(cells) + " |")
    raw_acc, raw_tmr = results["raw"][1][0], results["raw"][0].genuine_hits / results["raw"][0].genuine_trials
    print()
    for f in names[1:]:
        t, (acc, _), _ = results[f]
        lower = all(worst[f][fmr] < worst["raw"][fmr] for fmr in TABLE_FMRS)
        tmr = t.genuine_hits / t.genuine_trials
        verdict = lower and acc >= raw_acc and tmr >= raw_tmr
        print(
            f"- {f}: worst race lower at every threshold {'yes' if lower else 'no'}; LFW accuracy {acc:.2%} vs raw "
            f"{raw_acc:.2%}; TMR@1e-3 {tmr:.2%} vs {raw_tmr:.2%} → {'meets' if verdict else 'fails'} the default rule"
        )
    print("\n## ACLU 1:N: members falsely matched (any gallery face within threshold), gallery of all LFW + UTKFace\n")
    print("Genuine found = the mate is the rank-1 candidate and within the threshold (∞: never reached).\n")
    labels = [p["operating_point"] for p in results["raw"][2]["points"]]
    print("| operating point | " + " | ".join(names) + " |")
    print("|---|" + "---|" * len(names))
    for n, label in enumerate(labels):
        cells = []
        for family in names:
            p = results[family][2]["points"][n]
            share = "—" if not p["members_matched"] else f"{p['poc_share']:.0%}"
            reached = "∞" if not np.isfinite(p["threshold"]) else f"{p['genuine_found']:.1%}"
            cells.append(f"{p['members_matched']} ({share} PoC; genuine {reached})")
        print(f"| {label} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()

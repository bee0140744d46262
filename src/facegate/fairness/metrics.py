"""Error rates per demographic group, with counts, intervals and disparity ratios (numpy and scipy only).

Method (../shared/docs/FAIRNESS.md): one global threshold; FMR over *all* impostor pairs within a group and
per cross-group cell; FNMR over genuine pairs where identities exist; every rate with its count, a 95%
Clopper–Pearson interval, the rule-of-three bound when nothing was observed, and a bootstrap over subjects
(pairs that share a subject are correlated, so binomial intervals are too narrow).

Distances are Euclidean distances between embeddings; a pair matches at a distance threshold ``t`` when
``d <= t`` (facegate's similarity is a decreasing function of distance, so similarity ≥ s ⇔ d ≤ max_distance(s)).
Impostor pairs are never stored all at once: they are scanned in blocks and histogrammed (``BIN`` wide), and
only the few pairs closer than the loosest threshold of interest are kept.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import numpy as np
from scipy.stats import beta

BIN = 1e-4
N_BINS = 20_000  # distances 0–2; farther pairs land in the last bin, far beyond any threshold
BLOCK = 2048
CONFIDENCE = 0.95
MAX_CLOSE_PAIRS = 40_000_000  # ~0.5 GB of (i, j, d); more means a threshold far too loose to be of interest
ZERO_HANDLING = (
    "a group with no errors counts at its rule-of-three bound 3/n (the rate is below it at 95% confidence): "
    "the maximum is taken over groups with observed errors only, the minimum and geometric mean over all "
    "groups with n > 0, so with zero-count groups the ratios are lower bounds of the disparity; when a zero-count "
    "group's bound exceeds the highest observed rate no ratio is given"
)


def clopper_pearson(count: int, trials: int, confidence: float = CONFIDENCE) -> tuple[float, float]:
    """Exact two-sided binomial interval for ``count`` events in ``trials``."""
    if trials <= 0 or not 0 <= count <= trials:
        raise ValueError(f"need 0 <= count <= trials and trials > 0, got count={count}, trials={trials}")
    alpha = 1.0 - confidence
    low = 0.0 if count == 0 else float(beta.ppf(alpha / 2, count, trials - count + 1))
    high = 1.0 if count == trials else float(beta.ppf(1 - alpha / 2, count + 1, trials - count))
    return low, high


@dataclass(frozen=True)
class Rate:
    """``count`` errors in ``trials`` (false matches in impostor pairs, misses in genuine pairs, ...)."""

    count: int
    trials: int

    @property
    def value(self) -> float | None:
        return self.count / self.trials if self.trials else None

    @property
    def interval(self) -> tuple[float, float] | None:
        return clopper_pearson(self.count, self.trials) if self.trials else None

    @property
    def rule_of_three(self) -> float | None:
        """95% upper bound 3/n when no error was seen (zero observed is not zero); capped at 1, since with
        fewer than 3 trials the rule says nothing."""
        return min(1.0, 3.0 / self.trials) if self.trials and self.count == 0 else None

    def to_json(self) -> dict:
        interval = self.interval
        out: dict = {
            "count": self.count,
            "trials": self.trials,
            "rate": self.value,
            "ci95": list(interval) if interval else None,
        }
        if self.rule_of_three is not None:
            out["upper95_rule_of_three"] = self.rule_of_three
        return out


def disparity(rates: dict[str, Rate]) -> dict:
    """max/min and max/geomean of the groups' rates (1 = parity); see ``ZERO_HANDLING``."""
    usable = {g: r for g, r in rates.items() if r.trials > 0}
    observed = {g: r.value for g, r in usable.items() if r.count > 0}
    out: dict = {
        "groups": len(usable),
        "zero_count_groups": sorted(g for g, r in usable.items() if r.count == 0),
        "zero_handling": ZERO_HANDLING,
        "max_group": None,
        "min_group": None,
        "max_over_min": None,
        "max_over_geomean": None,
    }
    if len(usable) < 2 or not observed:
        return out
    values = {g: (r.value if r.count else r.rule_of_three) for g, r in usable.items()}
    max_group = max(observed, key=observed.__getitem__)
    min_group = min(values, key=values.__getitem__)
    geomean = math.exp(sum(math.log(v) for v in values.values()) / len(values))
    out["max_group"], out["min_group"] = max_group, min_group
    # A zero-count group whose bound exceeds the highest observed rate could lie anywhere below it: no ratio.
    if all(values[g] <= observed[max_group] for g in out["zero_count_groups"]):
        out["max_over_min"] = observed[max_group] / values[min_group]
        out["max_over_geomean"] = observed[max_group] / geomean
    return out


def fpir(fmr: float, gallery_size: int) -> float:
    """Chance that a search by someone not in a gallery of N returns a false candidate: 1 − (1 − FMR)^N,
    assuming independent comparisons."""
    return -math.expm1(gallery_size * math.log1p(-fmr)) if fmr < 1 else 1.0


# Pair scanning


def pairwise_distances(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    sq = (a * a).sum(1)[:, None] + (b * b).sum(1)[None, :] - 2.0 * (a @ b.T)
    return np.sqrt(np.maximum(sq, 0.0))


def distance_bins(d: np.ndarray) -> np.ndarray:
    """Histogram bin of each distance: bin k holds k·BIN ≤ d < (k+1)·BIN."""
    return np.minimum((d * (1.0 / BIN)).astype(np.int64), N_BINS - 1)


PairDistance = Callable[[int, int, np.ndarray], np.ndarray]
"""(row offset, column offset, raw distances) → the distances to audit: for normalised scores, the raw distance
with each pair's similarity, so every histogram, threshold and curve below reads the scores actually served."""


def _blocks(
    embeddings: np.ndarray, identities: np.ndarray, block: int, pair_distance: PairDistance | None = None
) -> Iterator[tuple]:
    """Every unordered pair i < j once: (row offset, column offset, distances, impostor mask, genuine mask)."""
    n = len(embeddings)
    data = embeddings.astype(np.float64)
    for i in range(0, n, block):
        a = data[i : i + block]
        for j in range(i, n, block):
            d = pairwise_distances(a, data[j : j + block])
            if pair_distance is not None:
                d = pair_distance(i, j, d)
            upper = np.ones(d.shape, dtype=bool)
            if i == j:
                upper = np.triu(upper, k=1)
            same = identities[i : i + block, None] == identities[None, j : j + block]
            yield i, j, d, upper & ~same, upper & same


@dataclass(frozen=True)
class Grouping:
    """One way of splitting images into groups: ``codes[i]`` is image i's group index, -1 if unknown."""

    name: str
    groups: list[str]
    codes: np.ndarray

    def sizes(self) -> np.ndarray:
        return np.bincount(self.codes[self.codes >= 0], minlength=len(self.groups))


@dataclass(frozen=True)
class PairScan:
    impostor_hist: np.ndarray  # all impostor pairs
    genuine_hist: np.ndarray
    group_impostor_hist: dict[str, np.ndarray]  # grouping name → groups × bins, same-group pairs
    group_genuine_hist: dict[str, np.ndarray]
    genuine_pairs: tuple[np.ndarray, np.ndarray, np.ndarray]  # (i, j, distance), i < j

    @property
    def impostor_pairs(self) -> int:
        return int(self.impostor_hist.sum())


def identity_codes(identities: list[str | None]) -> np.ndarray:
    """Integer identities; an image without one is its own identity (all its pairs are impostor pairs)."""
    index: dict[str, int] = {}
    codes = np.empty(len(identities), dtype=np.int64)
    for i, name in enumerate(identities):
        codes[i] = len(identities) + i if name is None else index.setdefault(name, len(index))
    return codes


def scan_pairs(
    embeddings: np.ndarray,
    identities: np.ndarray,
    groupings: list[Grouping],
    block: int = BLOCK,
    pair_distance: PairDistance | None = None,
) -> PairScan:
    """Histograms of impostor and genuine distances, overall and within each group, in one blockwise pass."""
    impostor = np.zeros(N_BINS, dtype=np.int64)
    genuine = np.zeros(N_BINS, dtype=np.int64)
    per_group = {g.name: np.zeros(len(g.groups) * N_BINS, dtype=np.int64) for g in groupings}
    per_group_genuine = {g.name: np.zeros(len(g.groups) * N_BINS, dtype=np.int64) for g in groupings}
    gi, gj, gd = [], [], []
    for i, j, d, imp, gen in _blocks(embeddings, identities, block, pair_distance):
        bins = distance_bins(d)
        impostor += np.bincount(bins[imp], minlength=N_BINS)
        if gen.any():
            genuine += np.bincount(bins[gen], minlength=N_BINS)
            rows, cols = np.nonzero(gen)
            gi.append(rows + i)
            gj.append(cols + j)
            gd.append(d[gen])
        for grouping in groupings:
            a = grouping.codes[i : i + d.shape[0], None]
            same = (a == grouping.codes[None, j : j + d.shape[1]]) & (a >= 0)
            keys = np.broadcast_to(a, d.shape) * N_BINS + bins
            size = len(grouping.groups) * N_BINS
            per_group[grouping.name] += np.bincount(keys[same & imp], minlength=size)
            if gen.any():
                per_group_genuine[grouping.name] += np.bincount(keys[same & gen], minlength=size)
    pairs = tuple(np.concatenate(x) if x else np.zeros(0) for x in (gi, gj, gd))
    return PairScan(
        impostor,
        genuine,
        {g.name: per_group[g.name].reshape(len(g.groups), N_BINS) for g in groupings},
        {g.name: per_group_genuine[g.name].reshape(len(g.groups), N_BINS) for g in groupings},
        (pairs[0].astype(np.int64), pairs[1].astype(np.int64), pairs[2].astype(np.float64)),
    )


def close_impostor_pairs(
    embeddings: np.ndarray,
    identities: np.ndarray,
    max_distance: float,
    block: int = BLOCK,
    pair_distance: PairDistance | None = None,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Every impostor pair (i < j) with distance ≤ ``max_distance``: exact counts at any threshold up to it."""
    rows, cols, dists = [], [], []
    kept = 0
    for i, j, d, imp, _ in _blocks(embeddings, identities, block, pair_distance):
        close = imp & (d <= max_distance)
        r, c = np.nonzero(close)
        rows.append((r + i).astype(np.int32))
        cols.append((c + j).astype(np.int32))
        dists.append(d[close].astype(np.float32))
        kept += len(r)
        if kept > MAX_CLOSE_PAIRS:
            raise ValueError(
                f"more than {MAX_CLOSE_PAIRS:,} impostor pairs lie within distance {max_distance:.4f}: "
                "that threshold accepts too much to be an operating point; audit at stricter thresholds"
            )
    if not rows:
        return np.zeros(0, np.int32), np.zeros(0, np.int32), np.zeros(0, np.float32)
    return np.concatenate(rows), np.concatenate(cols), np.concatenate(dists)


def distance_at_fmr(impostor_hist: np.ndarray, target: float) -> float:
    """The largest bin edge at which the measured FMR (share of impostor distances below it) is ≤ ``target``."""
    fmr = np.cumsum(impostor_hist) / max(int(impostor_hist.sum()), 1)
    ok = np.nonzero(fmr <= target)[0]
    return round(float((ok[-1] + 1) * BIN), 6) if len(ok) else 0.0


def fmr_curve(hist: np.ndarray, distances: np.ndarray) -> np.ndarray:
    """FMR at each distance threshold, read off a histogram (to bin resolution): for curves, not counts."""
    total = hist.sum(axis=-1, keepdims=True)
    cumulative = np.cumsum(hist, axis=-1)
    index = np.clip((np.asarray(distances) / BIN).astype(np.int64), 0, N_BINS - 1)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(total > 0, cumulative[..., index] / total, np.nan)


def fnmr_curve(hist: np.ndarray, distances: np.ndarray) -> np.ndarray:
    """FNMR (share of genuine distances above the threshold) at each distance, to bin resolution."""
    return 1.0 - fmr_curve(hist, distances)


# Counting at thresholds, from the kept close pairs


def within_group_counts(
    grouping: Grouping, pair_i: np.ndarray, pair_j: np.ndarray, pair_d: np.ndarray, thresholds: list[float]
) -> np.ndarray:
    """groups × thresholds: same-group pairs with distance ≤ each threshold."""
    a, b = grouping.codes[pair_i], grouping.codes[pair_j]
    same = (a == b) & (a >= 0)
    out = np.zeros((len(grouping.groups), len(thresholds)), dtype=np.int64)
    for k, t in enumerate(thresholds):
        hit = same & (pair_d <= t)
        out[:, k] = np.bincount(a[hit], minlength=len(grouping.groups))
    return out


def cell_counts(
    grouping: Grouping, pair_i: np.ndarray, pair_j: np.ndarray, pair_d: np.ndarray, threshold: float
) -> np.ndarray:
    """groups × groups (symmetric): pairs between group A and group B with distance ≤ ``threshold``."""
    size = len(grouping.groups)
    a, b = grouping.codes[pair_i], grouping.codes[pair_j]
    hit = (a >= 0) & (b >= 0) & (pair_d <= threshold)
    low, high = np.minimum(a[hit], b[hit]), np.maximum(a[hit], b[hit])
    upper = np.bincount(low * size + high, minlength=size * size).reshape(size, size)
    return upper + np.triu(upper, k=1).T


def cell_trials(grouping: Grouping, genuine_i: np.ndarray, genuine_j: np.ndarray) -> np.ndarray:
    """groups × groups: impostor pairs per cell, i.e. all pairs of distinct images less same-person pairs."""
    n = grouping.sizes().astype(np.int64)
    total = np.outer(n, n)
    np.fill_diagonal(total, n * (n - 1) // 2)
    genuine = cell_counts(grouping, genuine_i, genuine_j, np.zeros(len(genuine_i)), 0.0)
    return total - genuine


def genuine_counts(
    grouping: Grouping, pair_i: np.ndarray, pair_j: np.ndarray, pair_d: np.ndarray, thresholds: list[float]
) -> tuple[np.ndarray, np.ndarray]:
    """(groups, groups × thresholds): genuine pairs within each group, and those missed (distance > threshold)."""
    a, b = grouping.codes[pair_i], grouping.codes[pair_j]
    same = (a == b) & (a >= 0)
    totals = np.bincount(a[same], minlength=len(grouping.groups))
    misses = np.zeros((len(grouping.groups), len(thresholds)), dtype=np.int64)
    for k, t in enumerate(thresholds):
        miss = same & (pair_d > t)
        misses[:, k] = np.bincount(a[miss], minlength=len(grouping.groups))
    return totals, misses


# Bootstrap over subjects


def bootstrap_fmr(
    subjects: np.ndarray,
    pair_i: np.ndarray,
    pair_j: np.ndarray,
    pair_d: np.ndarray,
    thresholds: list[float],
    *,
    replicates: int = 1000,
    seed: int = 0,
) -> np.ndarray:
    """thresholds × 2: percentile 95% interval of the FMR when the group's subjects are resampled.

    ``subjects[k]`` is the subject (0..S-1) of the group's image k; the pairs index those images and are the
    group's impostor pairs with distance ≤ the largest threshold. A subject drawn m times weighs m in each of its
    pairs, so a pair of subjects drawn m and m' times counts m·m' times.
    """
    rng = np.random.default_rng(seed)
    count = int(subjects.max()) + 1 if len(subjects) else 0
    if count < 2:
        return np.full((len(thresholds), 2), np.nan)
    per_subject = np.bincount(subjects, minlength=count).astype(np.float64)
    draws = rng.multinomial(count, np.full(count, 1.0 / count), size=replicates).astype(np.float64)
    weight = draws * per_subject
    trials = (weight.sum(1) ** 2 - (weight**2).sum(1)) / 2.0
    hits = np.zeros((replicates, len(thresholds)))
    si, sj = subjects[pair_i], subjects[pair_j]
    below = (pair_d[:, None] <= np.asarray(thresholds)[None, :]).astype(np.float64)
    for start in range(0, len(si), 8192):
        part = slice(start, start + 8192)
        hits += (draws[:, si[part]] * draws[:, sj[part]]) @ below[part]
    with np.errstate(invalid="ignore", divide="ignore"):
        rates = hits / trials[:, None]
    return np.nanpercentile(rates, [2.5, 97.5], axis=0).T


def bootstrap_fnmr(
    subjects: np.ndarray,
    pair_i: np.ndarray,
    pair_d: np.ndarray,
    thresholds: list[float],
    *,
    replicates: int = 1000,
    seed: int = 0,
) -> np.ndarray:
    """thresholds × 2: percentile 95% interval of the FNMR when subjects are resampled (a genuine pair
    belongs to one subject, so a subject drawn m times counts each of its pairs m times)."""
    rng = np.random.default_rng(seed)
    count = int(subjects.max()) + 1 if len(subjects) else 0
    if count < 2 or not len(pair_i):
        return np.full((len(thresholds), 2), np.nan)
    draws = rng.multinomial(count, np.full(count, 1.0 / count), size=replicates).astype(np.float64)
    owner = subjects[pair_i]
    trials = draws[:, owner].sum(1)
    missed = (pair_d[:, None] > np.asarray(thresholds)[None, :]).astype(np.float64)
    with np.errstate(invalid="ignore", divide="ignore"):
        rates = (draws[:, owner] @ missed) / trials[:, None]
    return np.nanpercentile(rates, [2.5, 97.5], axis=0).T


def identification(
    codes: np.ndarray,
    identities: np.ndarray,
    close: tuple[np.ndarray, np.ndarray, np.ndarray],
    distances: list[float],
    gallery_sizes: tuple[int, ...],
    *,
    seed: int = 0,
) -> dict:
    """Mate-less 1:N searches, measured rather than predicted from FMR: for each gallery size, a random gallery
    of that many faces; every face outside it is a probe (its own identity's faces are left out of its gallery,
    so every candidate is false). Per probe group and threshold: probes, mean false candidates per search, and
    FPIR (the share of searches with at least one). ``close`` holds every impostor pair within the loosest
    threshold, so the counts are exact."""
    pi, pj, pd = close
    n = len(codes)
    groups = int(codes.max()) + 1 if len(codes) else 0
    rng = np.random.default_rng(seed)
    out: dict = {}
    for size in gallery_sizes:
        if size >= n:
            continue
        in_gallery = np.zeros(n, dtype=bool)
        in_gallery[rng.choice(n, size, replace=False)] = True
        probes = ~in_gallery
        # A probe's gallery is the sampled one less its own identity's faces: count those out per probe.
        own = np.bincount(identities[in_gallery], minlength=int(identities.max()) + 1)[identities]
        per_size = []
        for d in distances:
            hits = np.zeros(n, dtype=np.int64)
            near = pd <= d
            a, b = pi[near], pj[near]
            np.add.at(hits, a[in_gallery[b] & probes[a]], 1)
            np.add.at(hits, b[in_gallery[a] & probes[b]], 1)
            row = {}
            for k in range(groups):
                mask = probes & (codes == k)
                if not mask.any():
                    continue
                row[k] = {
                    "probes": int(mask.sum()),
                    "false_candidates_per_search": float(hits[mask].mean()),
                    "candidates_per_gallery_face": float((hits[mask] / (size - own[mask])).mean()),
                    "fpir": Rate(int((hits[mask] > 0).sum()), int(mask.sum())).to_json(),
                }
            per_size.append(row)
        out[size] = per_size
    return out


def candidate_curves(
    codes: np.ndarray,
    identities: np.ndarray,
    close: tuple[np.ndarray, np.ndarray, np.ndarray],
    distances: np.ndarray,
    collected_within: float,
) -> np.ndarray:
    """Per probe group (rows) and distance (columns): false candidates per search per gallery face when every
    other face is the gallery — the 1:N rate a search's expected false candidates scale by. Distances beyond
    the loosest collected pair are NaN (not measured)."""
    pi, pj, pd = close
    n = len(codes)
    groups = int(codes.max()) + 1 if len(codes) else 0
    gallery = n - np.bincount(identities, minlength=int(identities.max()) + 1)[identities]  # per probe
    weight = 1.0 / np.maximum(gallery, 1)
    out = np.full((groups, len(distances)), np.nan)
    order = np.argsort(pd)
    sorted_d = pd[order]
    for k in range(groups):
        probes = codes == k
        count = int(probes.sum())
        if not count:
            continue
        # each pair counts once for each of its faces that is a probe of this group
        w = np.where(probes[pi[order]], weight[pi[order]], 0.0) + np.where(probes[pj[order]], weight[pj[order]], 0.0)
        cumulative = np.concatenate([[0.0], np.cumsum(w)])
        index = np.searchsorted(sorted_d, distances, side="right")
        out[k] = np.where(np.asarray(distances) <= collected_within, cumulative[index] / count, np.nan)
    return out

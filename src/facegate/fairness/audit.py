"""The fairness audit: per-group error rates of facegate's own pipeline on a labelled dataset.

``run_audit("utkface:DIR", out_dir, data_dir)`` embeds the dataset (cached), measures FMR (and FNMR where the
dataset has identities) per demographic group at facegate's similarity thresholds and at the global thresholds
that give a target overall FMR, and writes report.json, report.html and summary.md.
"""

from __future__ import annotations

import datetime
from pathlib import Path

import numpy as np

import facegate
from facegate.config import DEFAULT_DETECTOR
from facegate.engine.models import embedding_weights, weights_sha256
from facegate.engine.scores import RAW, Scoring
from facegate.engine.similarity import similarity_scale
from facegate.fairness import metrics
from facegate.fairness.datasets import Dataset, dimension_name, load_dataset
from facegate.fairness.embeddings import NO_FACE, OK, UNREADABLE, EmbeddedDataset, Reporter, embed_dataset
from facegate.fairness.metrics import Grouping, Rate

SIMILARITY_THRESHOLDS = (80.0, 90.0, 95.0, 99.0)
FMR_TARGETS = (1e-3, 1e-4, 1e-5)
GALLERY_SIZES = (1_000, 25_000)  # FPIR is shown at these gallery sizes; 25,000 is the ACLU test's gallery
BOOTSTRAP_REPLICATES = 1000
NEAR = 0.05  # impostor pairs this close are almost surely one photograph twice: reported, not removed
IDENTIFICATION_SIZES = (100, 1_000, 10_000)  # mate-less 1:N searches against random galleries of these sizes
CURVE_SIMILARITIES = np.round(np.arange(0.0, 100.01, 0.5), 2)


def run_audit(
    dataset_spec: str,
    out_dir: Path,
    data_dir: Path,
    *,
    thresholds: tuple[float, ...] = SIMILARITY_THRESHOLDS,
    fmr_targets: tuple[float, ...] = FMR_TARGETS,
    detector: str = DEFAULT_DETECTOR,
    workers: int | None = None,
    reporter: Reporter | None = None,
    scores: Scoring | None = None,
) -> dict:
    """Audit one dataset and write report.json, report.html and summary.md into ``out_dir``; with normalised
    ``scores``, the same dataset's raw audit goes into ``out_dir/raw`` beside it."""
    from facegate.fairness.report import write_audit_report

    reporter = reporter or Reporter()
    dataset = load_dataset(dataset_spec)
    embedded = embed_dataset(dataset, Path(data_dir), detector=detector, workers=workers, reporter=reporter)
    report = audit_embedded(
        embedded, thresholds=thresholds, fmr_targets=fmr_targets, detector=detector, reporter=reporter, scores=scores
    )
    write_audit_report(report, Path(out_dir))
    if scores is not None and scores.name != RAW:
        reporter.note("auditing the raw scores too, for comparison")
        raw = audit_embedded(
            embedded, thresholds=thresholds, fmr_targets=fmr_targets, detector=detector, reporter=reporter
        )
        write_audit_report(raw, Path(out_dir) / "raw")
        report["raw_report"] = str(Path(out_dir) / "raw" / "report.json")
    return report


def groupings_of(dataset: Dataset, detected: np.ndarray) -> list[tuple[Grouping, list[str | None]]]:
    """For each reporting dimension: the grouping of the detected images, and every record's group."""
    out = []
    for dimension in dataset.dimensions:
        every = [dataset.group_of(r, dimension) for r in dataset.records]
        names = sorted({g for g in every if g is not None})
        if len(names) < 2:
            continue  # one group: nothing to compare
        index = {g: k for k, g in enumerate(names)}
        codes = np.array([index[g] if g is not None else -1 for g in every], dtype=np.int64)[detected]
        out.append((Grouping(dimension_name(dimension), names, codes), every))
    return out


def audit_embedded(
    embedded: EmbeddedDataset,
    *,
    thresholds: tuple[float, ...] = SIMILARITY_THRESHOLDS,
    fmr_targets: tuple[float, ...] = FMR_TARGETS,
    detector: str = DEFAULT_DETECTOR,
    replicates: int = BOOTSTRAP_REPLICATES,
    reporter: Reporter | None = None,
    scores: Scoring | None = None,
) -> dict:
    """Every number of the report, as a JSON-ready dict. ``scores``: the scoring served (default raw); for
    normalised scores every pair is audited at the raw distance with its normalised similarity."""
    reporter = reporter or Reporter()
    dataset = embedded.dataset
    detected = embedded.detected
    vectors = embedded.embeddings[detected]
    identities = [r.identity for r, ok in zip(dataset.records, detected, strict=True) if ok]
    ids = metrics.identity_codes(identities)
    groupings = groupings_of(dataset, detected)
    scale = similarity_scale(embedded.model_version)

    pair_distance, overlap = None, 0
    if scores is not None and scores.name != RAW:
        reporter.note(f"profiling {len(vectors):,} faces against the cohort of {scores.name}")
        pair_distance, overlap = scores.audit_distances(vectors)
        if overlap:
            reporter.note(f"warning: {overlap:,} audited faces are in the score cohort; audit disjoint faces")
    reporter.note(f"scanning {len(vectors) * (len(vectors) - 1) // 2:,} pairs of {len(vectors):,} faces")
    scan = metrics.scan_pairs(vectors, ids, [g for g, _ in groupings], pair_distance=pair_distance)
    points = [
        {"name": f"similarity {t:g}", "kind": "similarity", "similarity": float(t), "distance": scale.max_distance(t)}
        for t in thresholds
    ]
    for target in fmr_targets:
        distance = metrics.distance_at_fmr(scan.impostor_hist, target)
        points.append(
            {
                "name": f"overall FMR {target:g}",
                "kind": "overall_fmr",
                "target_fmr": target,
                "distance": distance,
                "similarity": float(scale.similarity(distance)),
            }
        )
    distances = [p["distance"] for p in points]
    reporter.note("collecting the impostor pairs within the loosest threshold")
    close = metrics.close_impostor_pairs(vectors, ids, max(distances), pair_distance=pair_distance)
    gi, gj, gd = scan.genuine_pairs
    for point in points:
        point["fmr"] = Rate(int((close[2] <= point["distance"]).sum()), scan.impostor_pairs).to_json()
        point["fnmr"] = Rate(int((gd > point["distance"]).sum()), len(gd)).to_json() if len(gd) else None
        near = int((close[2] <= min(NEAR, point["distance"])).sum())
        point["fmr_excluding_near_identical"] = Rate(point["fmr"]["count"] - near, scan.impostor_pairs - near).to_json()

    reporter.note("per-group rates, intervals and bootstrap over subjects")
    dimensions = [
        _dimension(embedded, grouping, every, scan, close, points, ids, replicates) for grouping, every in groupings
    ]
    status = embedded.status
    return _clean(
        {
            "report": "facegate fairness audit",
            "generated": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
            "facegate_version": facegate.__version__,
            "model": {
                "version": embedded.model_version,
                "weights_sha256": weights_sha256(embedding_weights()),
                "detector": detector,
            },
            "scores": {
                "served": RAW if scores is None else scores.name,
                "cohorts": None if scores is None or scores.name == RAW else scores.calibration.table["cohorts"],
                "cohort_overlap_faces": overlap,
                "how": "raw: dlib distances"
                if pair_distance is None
                else "each pair at the raw distance with its "
                "normalised similarity, so thresholds, histograms and curves read the scores served",
            },
            "dataset": {
                "spec": dataset.spec,
                "kind": dataset.kind,
                "images": len(dataset.records),
                "subjects": len({r.identity for r in dataset.records}) if dataset.has_identities else None,
                "has_identities": dataset.has_identities,
                "label_source": dataset.label_source,
                "dataset_sha256": embedded.dataset_hash,
                "images_sha256": embedded.images_hash,
                "embeddings_cache": str(embedded.cache_path),
            },
            "method": {
                "thresholds": "one global threshold for every group (NIST FRVT Part 3 practice); the similarity "
                "thresholds are facegate's (engine/calibration.json), the 'overall FMR' ones are the largest "
                f"distances (to {metrics.BIN:g}) at which this dataset's overall FMR is at most the target",
                "match": "a pair matches when its embedding distance is at most the threshold's distance "
                "(similarity at least the threshold)",
                "impostor_pairs": "every unordered pair of detected faces of different identities"
                + ("" if dataset.has_identities else " (no identity labels: every pair of different images)"),
                "genuine_pairs": "every unordered pair of detected faces of the same identity"
                if dataset.has_identities
                else "none: the dataset has no identity labels, so FNMR is not measured",
                "face": "the largest face facegate detects in each image; images without one are detection "
                "failures, excluded from the pairs and reported per group",
                "intervals": "95% Clopper-Pearson per rate; rule of three (3/n) as the upper bound where no error "
                f"was observed; bootstrap95: percentile interval over {replicates} resamplings of the group's "
                "subjects (pairs sharing a subject are correlated, so the binomial interval is too narrow)",
                "cross_group": "cell (A, B) holds the impostor pairs with one face in A and one in B; distance is "
                "symmetric, so group A probes against group B gallery and B against A give the same rate",
                "near_identical": f"impostor pairs at distance <= {NEAR} are almost surely the same photograph "
                "listed twice (a labelling error of the dataset); they are counted as false matches, as the data "
                "says; fmr_excluding_near_identical shows each rate without them",
                "identification": "measured 1:N: for each gallery size, a random gallery of that many of the "
                "dataset's faces; every other face searched against it without its own identity's faces, so every "
                "candidate is false; per probe group: mean false candidates per search and FPIR (share of searches "
                "with at least one). curves.candidates_per_face is the whole dataset as gallery: a search's "
                "expected false candidates are the collection size times the worst group's value",
                "fpir": "FPIR at gallery size N estimated as 1-(1-FMR)^N from the group's within-group FMR "
                "(independent comparisons assumed)",
                "zero_counts": metrics.ZERO_HANDLING,
            },
            "detection": {
                "images": len(status),
                "detected": int((status == OK).sum()),
                "no_face": int((status == NO_FACE).sum()),
                "unreadable": int((status == UNREADABLE).sum()),
                "failure": Rate(int((status != OK).sum()), len(status)).to_json(),
            },
            "pairs": {
                "impostor": scan.impostor_pairs,
                "genuine": len(gd),
                "near_identical_impostor_pairs": int((close[2] <= NEAR).sum()),
            },
            "operating_points": points,
            "dimensions": dimensions,
            "curves": {
                "similarity": CURVE_SIMILARITIES.tolist(),
                "fmr": metrics.fmr_curve(scan.impostor_hist, _curve_distances(scale)).tolist(),
                "fnmr": metrics.fnmr_curve(scan.genuine_hist, _curve_distances(scale)).tolist() if len(gd) else None,
            },
        }
    )


def _curve_distances(scale) -> np.ndarray:
    return np.array([scale.max_distance(s) for s in CURVE_SIMILARITIES])


def _dimension(
    embedded: EmbeddedDataset,
    grouping: Grouping,
    every: list[str | None],
    scan: metrics.PairScan,
    close: tuple[np.ndarray, np.ndarray, np.ndarray],
    points: list[dict],
    ids: np.ndarray,
    replicates: int,
) -> dict:
    detected = embedded.detected
    distances = [p["distance"] for p in points]
    pi, pj, pd = close
    gi, gj, gd = scan.genuine_pairs
    false_matches = metrics.within_group_counts(grouping, pi, pj, pd, distances)
    genuine_totals, misses = metrics.genuine_counts(grouping, gi, gj, gd, distances)
    trials = metrics.cell_trials(grouping, gi, gj)
    sizes = grouping.sizes()
    groups: dict[str, dict] = {}
    per_point: list[dict] = [{"name": p["name"], "groups": {}} for p in points]
    every_array = np.array([g if g is not None else "" for g in every], dtype=object)
    for k, name in enumerate(grouping.groups):
        in_group = every_array == name
        members = np.nonzero(grouping.codes == k)[0]
        subjects = np.unique(ids[members], return_inverse=True)[1]
        failures = int((in_group & ~detected).sum())
        inside = (grouping.codes[pi] == k) & (grouping.codes[pj] == k)
        groups[name] = {
            "images": int(in_group.sum()),
            "detected": int(sizes[k]),
            "detection_failure": Rate(failures, int(in_group.sum())).to_json(),
            "subjects": int(subjects.max()) + 1 if len(subjects) else 0,
            "impostor_pairs": int(trials[k, k]),
            "near_identical_pairs": int((inside & (pd <= NEAR)).sum()),
            "genuine_pairs": int(genuine_totals[k]),
            "quality": _quality(embedded, in_group & detected),
        }
        local = np.full(len(grouping.codes), -1, dtype=np.int64)
        local[members] = np.arange(len(members))
        fmr_boot = metrics.bootstrap_fmr(
            subjects, local[pi[inside]], local[pj[inside]], pd[inside], distances, replicates=replicates
        )
        genuine_inside = (grouping.codes[gi] == k) & (grouping.codes[gj] == k)
        fnmr_boot = metrics.bootstrap_fnmr(
            subjects, local[gi[genuine_inside]], gd[genuine_inside], distances, replicates=replicates
        )
        for p, point in enumerate(per_point):
            fmr = Rate(int(false_matches[k, p]), int(trials[k, k]))
            entry: dict = {"fmr": {**fmr.to_json(), "bootstrap95": fmr_boot[p].tolist()}}
            near = int((inside & (pd <= min(NEAR, distances[p]))).sum())
            entry["fmr_excluding_near_identical"] = Rate(fmr.count - near, fmr.trials - near).to_json()
            entry["fpir"] = {
                str(n): metrics.fpir(fmr.value, n) if fmr.value is not None else None for n in GALLERY_SIZES
            }
            if genuine_totals[k]:
                fnmr = Rate(int(misses[k, p]), int(genuine_totals[k]))
                entry["fnmr"] = {**fnmr.to_json(), "bootstrap95": fnmr_boot[p].tolist()}
            point["groups"][name] = entry
    for p, point in enumerate(per_point):
        point["fmr_disparity"] = metrics.disparity(
            {g: Rate(int(false_matches[k, p]), int(trials[k, k])) for k, g in enumerate(grouping.groups)}
        )
        if genuine_totals.sum():
            point["fnmr_disparity"] = metrics.disparity(
                {g: Rate(int(misses[k, p]), int(genuine_totals[k])) for k, g in enumerate(grouping.groups)}
            )
        cells = metrics.cell_counts(grouping, pi, pj, pd, distances[p])
        with np.errstate(invalid="ignore", divide="ignore"):
            cell_fmr = np.where(trials > 0, cells / np.maximum(trials, 1), np.nan)
        point["cross"] = {"false_matches": cells.tolist(), "impostor_pairs": trials.tolist(), "fmr": cell_fmr.tolist()}
    scale = similarity_scale(embedded.model_version)
    curve_d = _curve_distances(scale)
    known = grouping.codes >= 0
    measured = metrics.identification(
        np.where(known, grouping.codes, len(grouping.groups)), ids, close, distances, IDENTIFICATION_SIZES
    )
    identification = {
        str(size): [
            {
                "name": point["name"],
                "groups": {grouping.groups[k]: e for k, e in row.items() if k < len(grouping.groups)},
            }
            for point, row in zip(points, rows, strict=True)
        ]
        for size, rows in measured.items()
    }
    per_face = metrics.candidate_curves(
        np.where(known, grouping.codes, len(grouping.groups)), ids, close, curve_d, max(distances)
    )
    group_fmr = metrics.fmr_curve(scan.group_impostor_hist[grouping.name], curve_d)
    has_genuine = bool(scan.group_genuine_hist[grouping.name].sum())
    group_fnmr = metrics.fnmr_curve(scan.group_genuine_hist[grouping.name], curve_d) if has_genuine else None
    return {
        "name": grouping.name,
        "groups": groups,
        "operating_points": per_point,
        "cross_groups": grouping.groups,
        "curves": {
            "similarity": CURVE_SIMILARITIES.tolist(),
            "fmr": {g: group_fmr[k].tolist() for k, g in enumerate(grouping.groups)},
            "fnmr": {g: group_fnmr[k].tolist() for k, g in enumerate(grouping.groups)} if has_genuine else None,
            # 1:N: false candidates per search per gallery face, the whole dataset as the gallery (None where
            # looser than the audit's loosest threshold)
            "candidates_per_face": {g: per_face[k].tolist() for k, g in enumerate(grouping.groups)},
        },
        "identification": identification,
    }


def _quality(embedded: EmbeddedDataset, mask: np.ndarray) -> dict:
    """Distribution of the detected faces' quality in a group: unequal image quality is part of the story."""
    out = {}
    for name, values in (
        ("brightness", embedded.brightness),
        ("sharpness", embedded.sharpness),
        ("confidence", embedded.confidence),
    ):
        chosen = values[mask]
        if not len(chosen):
            out[name] = None
            continue
        p10, p50, p90 = np.percentile(chosen, [10, 50, 90])
        out[name] = {"mean": float(chosen.mean()), "sd": float(chosen.std()), "p10": p10, "median": p50, "p90": p90}
    return out


def _clean(value):
    """JSON-ready: numpy scalars to Python, NaN and infinities to None (JSON has no NaN)."""
    if isinstance(value, dict):
        return {str(k): _clean(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_clean(v) for v in value]
    if isinstance(value, np.ndarray):
        return _clean(value.tolist())
    if isinstance(value, np.integer):
        return int(value)
    if isinstance(value, float | np.floating):
        return float(value) if np.isfinite(value) else None
    return value

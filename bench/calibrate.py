"""Calibrate facegate's distance → similarity mapping on real impostor and genuine pairs.

Writes src/facegate/engine/calibration.json (committed) and prints the operating points table for the README.

Impostor pairs: every pair of LFW images of different people plus every pair of UTKFace images (UTKFace has no
identities; per its README every pair counts as an impostor pair), faces as facegate detects them.
Genuine pairs: LFW's pairs.txt matched pairs (the standard 3,000) and every same-person LFW pair.

Anchors tie similarity levels to measured false-match rates:
  99 ↔ FMR 1e-5, 95 ↔ 1e-4, 90 ↔ 1e-3, 50 ↔ 1e-1; 100 at distance 0, 0 at the largest distance seen.
  80, the general-purpose default, ↔ FMR 1e-2 or, if larger, the distance that accepts 96% of the LFW pairs.txt
  genuine pairs: a default that refuses more than 1 in 20 true matches is not usable, and with this model the
  second rule decides (its FMR at 80 is printed, and reported per group by the fairness audit).
Similarity is linear in distance between anchors, so it is monotone and each anchor has a measured FMR.

Run: python bench/calibrate.py   (embeddings are cached under .cache/, never committed)
"""

from __future__ import annotations

import argparse
import datetime
import json
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import datasets  # noqa: E402

from facegate.engine.models import EMBEDDING_MODEL_VERSION, embedding_weights, weights_sha256  # noqa: E402

ANCHOR_FMR = {99.0: 1e-5, 95.0: 1e-4, 90.0: 1e-3, 80.0: 1e-2, 50.0: 1e-1}
DEFAULT_THRESHOLD = 80.0
DEFAULT_GENUINE_ACCEPTANCE = 0.96
BIN = 1e-4
EDGES = np.arange(0.0, 2.0 + BIN, BIN)
OUT = Path(__file__).resolve().parents[1] / "src" / "facegate" / "engine" / "calibration.json"


def _distances(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    sq = (a * a).sum(1)[:, None] + (b * b).sum(1)[None, :] - 2.0 * (a @ b.T)
    return np.sqrt(np.maximum(sq, 0.0))


def impostor_histogram(emb: np.ndarray, ident: np.ndarray | None, block: int = 2048) -> np.ndarray:
    """Histogram of distances over all unordered pairs i < j with different identities (all pairs if None)."""
    hist = np.zeros(len(EDGES) - 1, dtype=np.int64)
    n = len(emb)
    emb64 = emb.astype(np.float64)
    for i in range(0, n, block):
        a = emb64[i : i + block]
        for j in range(i, n, block):
            b = emb64[j : j + block]
            d = _distances(a, b)
            mask = np.ones_like(d, dtype=bool)
            if i == j:
                mask = np.triu(mask, k=1)
            if ident is not None:
                mask &= ident[i : i + block, None] != ident[None, j : j + block]
            hist += np.histogram(d[mask], bins=EDGES)[0]
    return hist


def fmr_curve(hist: np.ndarray) -> np.ndarray:
    """FMR at each upper bin edge: fraction of impostor distances ≤ that edge."""
    return np.cumsum(hist) / hist.sum()


def distance_at_fmr(hist: np.ndarray, target: float) -> float:
    """The largest bin edge at which the measured FMR is still ≤ target."""
    fmr = fmr_curve(hist)
    ok = np.nonzero(fmr <= target)[0]
    return float(EDGES[1:][ok[-1]]) if len(ok) else 0.0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=OUT)
    args = parser.parse_args()

    lfw_paths = datasets.lfw_paths()
    lfw_emb, lfw_found = datasets.embed_paths(lfw_paths, fallback_whole=True, label="lfw")
    ident = np.array([p.parent.name for p in lfw_paths])
    utk_rows = datasets.utkface_rows()
    utk_emb, utk_found = datasets.embed_paths([r["file"] for r in utk_rows], fallback_whole=False, label="utkface")

    lfw_det, ident_det = lfw_emb[lfw_found], ident[lfw_found]
    utk_det = utk_emb[utk_found]
    print(
        f"LFW: {lfw_found.sum()}/{len(lfw_found)} detected; UTKFace: {utk_found.sum()}/{len(utk_found)}",
        file=sys.stderr,
    )

    hist_lfw = impostor_histogram(lfw_det, ident_det)
    hist_utk = impostor_histogram(utk_det, None)
    hist = hist_lfw + hist_utk
    n_impostors = int(hist.sum())

    # Genuine pairs: pairs.txt matched pairs (whole-image fallback as in the LFW protocol) and all same-person pairs.
    index = {(p.parent.name, int(p.stem.rsplit("_", 1)[1])): i for i, p in enumerate(lfw_paths)}
    protocol = [(index[a], index[b]) for _, a, b, same in datasets.lfw_pairs() if same]
    protocol_d = np.linalg.norm(lfw_emb[[a for a, _ in protocol]] - lfw_emb[[b for _, b in protocol]], axis=1)
    same_d = []
    for name in np.unique(ident_det):
        rows = lfw_det[ident_det == name]
        if len(rows) > 1:
            d = _distances(rows.astype(np.float64), rows.astype(np.float64))
            same_d.append(d[np.triu_indices(len(rows), k=1)])
    all_genuine = np.concatenate(same_d)

    anchors = [{"similarity": 100.0, "distance": 0.0, "rule": "identical embeddings"}]
    for similarity, target in sorted(ANCHOR_FMR.items(), reverse=True):
        distance = distance_at_fmr(hist, target)
        rule = f"FMR {target:g}"
        if similarity == DEFAULT_THRESHOLD:
            genuine = float(np.quantile(protocol_d, DEFAULT_GENUINE_ACCEPTANCE))
            if genuine > distance:
                distance, rule = genuine, f"{DEFAULT_GENUINE_ACCEPTANCE:.0%} of LFW genuine pairs accepted"
        distance = max(distance, anchors[-1]["distance"] + BIN)  # strictly monotone
        anchors.append({"similarity": similarity, "distance": round(distance, 4), "rule": rule})
    nonzero = np.nonzero(hist)[0]
    anchors.append(
        {"similarity": 0.0, "distance": round(float(EDGES[nonzero[-1] + 1]), 4), "rule": "largest impostor distance"}
    )

    def measured(distance: float) -> dict:
        k = int(round(distance / BIN))
        return {
            "fmr": float(hist[:k].sum() / n_impostors),
            "fmr_lfw": float(hist_lfw[:k].sum() / hist_lfw.sum()),
            "fmr_utkface": float(hist_utk[:k].sum() / hist_utk.sum()),
            "false_matches": int(hist[:k].sum()),
            "tmr_lfw_pairs": float((protocol_d <= distance).mean()),
            "tmr_lfw_all_same_person": float((all_genuine <= distance).mean()),
        }

    points = [
        {"threshold": a["similarity"], "distance": a["distance"], **measured(a["distance"])} for a in anchors[1:-1]
    ]
    table = {
        "model_version": EMBEDDING_MODEL_VERSION,
        "weights_sha256": weights_sha256(embedding_weights()),
        "generated": datetime.date.today().isoformat(),
        "mapping": "similarity = piecewise-linear interpolation over (distance, similarity) anchors",
        "impostor_pairs": n_impostors,
        "impostor_pairs_lfw": int(hist_lfw.sum()),
        "impostor_pairs_utkface": int(hist_utk.sum()),
        "genuine_pairs_lfw_protocol": len(protocol_d),
        "genuine_pairs_lfw_all": len(all_genuine),
        "anchors": anchors,
        "operating_points": points,
    }
    args.out.write_text(json.dumps(table, indent=2) + "\n")

    print(
        f"impostor pairs: {n_impostors:,} (LFW {hist_lfw.sum():,}, UTKFace {hist_utk.sum():,}); "
        f"genuine pairs: {len(protocol_d):,} pairs.txt, {len(all_genuine):,} all same-person LFW"
    )
    print(
        "| threshold | distance ≤ | FMR (all) | false matches | FMR LFW | FMR UTKFace | TMR pairs.txt | TMR all LFW |"
    )
    print("|---|---|---|---|---|---|---|---|")
    for p in points:
        print(
            f"| {p['threshold']:.0f} | {p['distance']:.4f} | {p['fmr']:.2e} | {p['false_matches']:,} | "
            f"{p['fmr_lfw']:.2e} | {p['fmr_utkface']:.2e} | {p['tmr_lfw_pairs']:.2%} | "
            f"{p['tmr_lfw_all_same_person']:.2%} |"
        )
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()

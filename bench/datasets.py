"""Real face datasets from FACEGATE_DATA and their facegate embeddings, cached under .cache/ (never committed).

Used by the calibration script and the benchmarks. Each image is embedded by facegate's own pipeline: the
largest detected face, or — only where asked, to follow the LFW reference protocol — the whole image as the
face box when the detector finds nothing.
"""

from __future__ import annotations

import csv
import hashlib
import os
import sys
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
CACHE = ROOT / ".cache"


def data_dir() -> Path:
    path = Path(os.environ.get("FACEGATE_DATA", ROOT.parent / "shared" / "data"))
    if not path.is_dir():
        sys.exit(f"face data not found at {path}: set FACEGATE_DATA to the shared data folder")
    return path


def lfw_paths() -> list[Path]:
    base = data_dir() / "lfw"
    with (base / "manifest.csv").open() as fh:
        return [base / row["path"] for row in csv.DictReader(fh)]


def lfw_pairs() -> list[tuple[int, tuple[str, int], tuple[str, int], bool]]:
    """(fold, (name, n), (name, n), same) from the official pairs.txt."""
    lines = (data_dir() / "lfw" / "pairs.txt").read_text().split("\n")
    folds, per_fold = (int(x) for x in lines[0].split())
    pairs = []
    rows = [line.split() for line in lines[1:] if line.strip()]
    for i, row in enumerate(rows):
        fold = i // (2 * per_fold)
        if len(row) == 3:
            pairs.append((fold, (row[0], int(row[1])), (row[0], int(row[2])), True))
        else:
            pairs.append((fold, (row[0], int(row[1])), (row[2], int(row[3])), False))
    assert len({p[0] for p in pairs}) == folds
    return pairs


def lfw_image(name: str, number: int) -> Path:
    return data_dir() / "lfw" / "images" / name / f"{name}_{number:04d}.jpg"


def utkface_rows() -> list[dict]:
    base = data_dir() / "utkface"
    with (base / "labels.csv").open() as fh:
        rows = list(csv.DictReader(fh))
    for row in rows:
        row["file"] = base / row["path"]
    return rows


_engine = None


def _embed_one(path: str, fallback_whole: bool) -> tuple[np.ndarray | None, bool]:
    global _engine
    from facegate.engine import Box, FaceEngine

    if _engine is None:
        _engine = FaceEngine(threads=1)  # one process per core
    image = _engine.decode(Path(path).read_bytes())
    faces = _engine.analyse(image).faces
    if faces:
        return faces[0].embedding, True
    if not fallback_whole:
        return None, False
    height, width = image.shape[:2]
    return _engine.analyse_box(image, Box(0, 0, width, height)).embedding, False


def _embed_batch(args: tuple[list[str], bool]) -> list[tuple[np.ndarray | None, bool]]:
    paths, fallback = args
    return [_embed_one(p, fallback) for p in paths]


def embed_paths(
    paths: list[Path], *, fallback_whole: bool, label: str, workers: int = 0
) -> tuple[np.ndarray, np.ndarray]:
    """(embeddings n×128 with NaN rows where no face was used, detected mask n). Cached by content."""
    from facegate.config import DEFAULT_DETECTOR

    # The runtime and detector are part of the key so a cached run of another never stands in for this one.
    tail = f"|{fallback_whole}|onnx" + ("" if DEFAULT_DETECTOR == "hog" else f"|{DEFAULT_DETECTOR}")
    key = hashlib.sha256(("\n".join(map(str, paths)) + tail).encode()).hexdigest()[:16]
    cache = CACHE / f"embeddings-{label}-{key}.npz"
    if cache.exists():
        saved = np.load(cache)
        return saved["embeddings"], saved["detected"]
    workers = workers or os.cpu_count() or 1
    chunks = [[str(p) for p in paths[i : i + 64]] for i in range(0, len(paths), 64)]
    out: list[tuple[np.ndarray | None, bool]] = []
    with ProcessPoolExecutor(workers) as pool:
        for i, batch in enumerate(pool.map(_embed_batch, [(c, fallback_whole) for c in chunks])):
            out.extend(batch)
            print(f"\r{label}: {min((i + 1) * 64, len(paths))}/{len(paths)} images embedded", end="", file=sys.stderr)
    print(file=sys.stderr)
    embeddings = np.full((len(paths), 128), np.nan, dtype=np.float32)
    detected = np.zeros(len(paths), dtype=bool)
    for i, (vector, found) in enumerate(out):
        if vector is not None:
            embeddings[i] = vector
        detected[i] = found
    CACHE.mkdir(exist_ok=True)
    np.savez(cache, embeddings=embeddings, detected=detected)
    return embeddings, detected

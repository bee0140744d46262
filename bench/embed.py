"""Embedding cost per face: dlib's ResNet run by dlib (``DlibResnet``) vs the same network run by ONNX Runtime
(``OnnxResnet``), and face_recognition's ``face_encodings`` where ``import face_recognition`` works.

What is measured, on N real faces from FACEGATE_DATA (default 200 LFW images and 50 congress117 House
headshots, evenly spread over the sorted lists):
  * chips: for each image the largest HOG detection (one upsampling; the whole image if none), its 5-point
    landmarks and ``dlib.get_face_chip(image, shape5, 150, 0.25)``, made once before any timing; both runtimes
    embed exactly these chips.
  * dlib: ``DlibResnet().embed`` over the chips in groups of 16 (dlib's own batch), spread over ``--workers``
    processes (default: every available core), each with its model loaded and warmed up before timing.
  * onnx: ``OnnxResnet().embed`` of all chips in this process, ONNX Runtime with one intra-op thread per core,
    batches of ``--batch`` (default 32, as ``OnnxResnet``), session created and warmed up before timing.
  * face_recognition: ``face_encodings(image, known_face_locations=[box], model="small")`` per image, same boxes,
    same ``--workers`` processes; it also finds the 5 landmarks and cuts the chip (about 1–2 ms of its time).
  * ms per face: wall-clock time of a run ÷ faces, so each figure uses all cores; the median of ``--repeat`` runs.
  * max_abs_diff: the largest |ONNX − dlib| over every face and dimension (the acceptance bar is 1e-5).

Install the peer for benchmarking only: ``.venv/bin/pip install --no-deps face_recognition``.

Run:  .venv/bin/python bench/embed.py [--lfw 200] [--congress 50] [--workers 2] [--batch 32] [--repeat 3] [--json]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

import dlib
import numpy as np
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parent))
import datasets  # noqa: E402
from throughput import spread  # noqa: E402

from facegate.engine.embed import DlibResnet  # noqa: E402
from facegate.engine.models import landmarks5_weights  # noqa: E402
from facegate.engine.onnx_resnet import DEFAULT_BATCH_SIZE, OnnxResnet, available_cores  # noqa: E402

DLIB_GROUP = 16  # dlib's python binding runs its network on batches of 16


def face_photos(n_lfw: int, n_congress: int) -> list[Path]:
    """The benchmark's photos: LFW from its manifest, then congress117 House headshots."""
    photos = spread(datasets.lfw_paths(), n_lfw) if n_lfw else []
    if n_congress:
        house = datasets.data_dir() / "congress117" / "images" / "house"
        files = sorted(house.glob("*.jpg"))
        if not files:
            sys.exit(f"congress117 data missing: no *.jpg in {house} (set FACEGATE_DATA)")
        photos += spread(files, n_congress)
    missing = [p for p in photos if not p.is_file()]
    if missing:
        sys.exit(f"face data incomplete: {missing[0]} not found ({len(missing)} missing; set FACEGATE_DATA)")
    return photos


def faces_and_chips(photos: list[Path]) -> tuple[list[np.ndarray], list[dlib.rectangle], list[np.ndarray]]:
    """(images, face boxes, aligned chips), one face per photo, made as facegate's engine makes them."""
    detector = dlib.get_frontal_face_detector()
    shape5 = dlib.shape_predictor(str(landmarks5_weights()))
    images, boxes, chips = [], [], []
    for path in photos:
        image = np.asarray(Image.open(path).convert("RGB"))
        found = detector(image, 1)
        height, width = image.shape[:2]
        box = max(found, key=lambda r: r.area()) if found else dlib.rectangle(0, 0, width - 1, height - 1)
        images.append(image)
        boxes.append(box)
        chips.append(np.asarray(dlib.get_face_chip(image, shape5(image, box), 150, 0.25)))
    return images, boxes, chips


# ------------------------------------------------------------------------------------- worker process

_work: Callable[[Any], np.ndarray] | None = None


def _init(runtime: str, warmup: Any) -> None:
    """Worker initializer: load the model and run it once, so nothing lazy is left for the timed runs."""
    global _work
    if runtime == "dlib":
        _work = DlibResnet().embed
    else:
        import face_recognition

        def encode(task: tuple[np.ndarray, tuple[int, int, int, int]]) -> np.ndarray:
            image, location = task
            return face_recognition.face_encodings(image, known_face_locations=[location], model="small")[0]

        _work = encode
    _work(warmup)


def _ready(_: int) -> int:
    time.sleep(0.05)  # long enough that every worker takes one of these tasks
    return os.getpid()


def _run(task: Any) -> np.ndarray:
    assert _work is not None
    return _work(task)


def time_in_processes(runtime: str, tasks: list, workers: int, repeat: int) -> tuple[float, np.ndarray]:
    """(median wall-clock seconds over ``repeat`` runs of every task, the results stacked)."""
    with ProcessPoolExecutor(workers, initializer=_init, initargs=(runtime, tasks[0])) as pool:
        seen: set[int] = set()
        while len(seen) < workers:  # every worker initialised
            seen.update(pool.map(_ready, range(2 * workers)))
        walls = []
        for _ in range(repeat):
            start = time.perf_counter()
            results = list(pool.map(_run, tasks))
            walls.append(time.perf_counter() - start)
    return statistics.median(walls), np.vstack(results).astype(np.float32)


def time_onnx(chips: list[np.ndarray], batch_size: int, repeat: int) -> tuple[float, np.ndarray, int]:
    """(median wall-clock seconds to embed all chips, the embeddings, intra-op threads)."""
    model = OnnxResnet(batch_size=batch_size)
    model.embed(chips[:batch_size])  # converts (or reads the cache) and creates the session
    walls = []
    for _ in range(repeat):
        start = time.perf_counter()
        embeddings = model.embed(chips)
        walls.append(time.perf_counter() - start)
    return statistics.median(walls), embeddings, model.threads


def face_recognition_error() -> str | None:
    try:
        import face_recognition  # noqa: F401
    except Exception as exc:  # report whatever stopped the import
        return f"{type(exc).__name__}: {exc}"
    return None


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--lfw", type=int, default=200, metavar="N", help="LFW images (150×150), 0 to skip")
    parser.add_argument("--congress", type=int, default=50, metavar="N", help="congress117 House headshots (256×256)")
    parser.add_argument("--workers", type=int, default=available_cores(), metavar="N", help="dlib processes")
    parser.add_argument("--batch", type=int, default=DEFAULT_BATCH_SIZE, metavar="N", help="ONNX batch size")
    parser.add_argument("--repeat", type=int, default=3, metavar="N", help="timed runs per runtime (median)")
    parser.add_argument("--json", action="store_true", help="print one JSON object instead of a markdown table")
    args = parser.parse_args()
    if min(args.workers, args.batch, args.repeat) < 1 or min(args.lfw, args.congress) < 0:
        parser.error("--workers, --batch and --repeat must be at least 1, image counts non-negative")
    if args.lfw + args.congress == 0:
        parser.error("nothing to measure: both --lfw and --congress are 0")

    images, boxes, chips = faces_and_chips(face_photos(args.lfw, args.congress))
    n = len(chips)
    print(f"{n} faces; timing dlib in {args.workers} processes", file=sys.stderr)
    groups = [chips[i : i + DLIB_GROUP] for i in range(0, n, DLIB_GROUP)]
    dlib_s, dlib_embeddings = time_in_processes("dlib", groups, args.workers, args.repeat)

    peer_error = face_recognition_error()
    peer_s = peer_diff = None
    if peer_error is None:
        print("timing face_recognition.face_encodings", file=sys.stderr)
        tasks = [(image, (b.top(), b.right(), b.bottom(), b.left())) for image, b in zip(images, boxes, strict=True)]
        peer_s, peer_embeddings = time_in_processes("face_recognition", tasks, args.workers, args.repeat)
        peer_diff = float(np.abs(peer_embeddings - dlib_embeddings).max())
    else:
        print(f"face_recognition skipped ({peer_error})", file=sys.stderr)

    print("timing ONNX Runtime", file=sys.stderr)
    onnx_s, onnx_embeddings, threads = time_onnx(chips, args.batch, args.repeat)
    result = {
        "faces": n,
        "dlib_ms_per_face": 1000 * dlib_s / n,
        "onnx_ms_per_face": 1000 * onnx_s / n,
        "face_recognition_ms_per_face": None if peer_s is None else 1000 * peer_s / n,
        "max_abs_diff": float(np.abs(onnx_embeddings - dlib_embeddings).max()),
        "face_recognition_max_abs_diff": peer_diff,
        "cores": available_cores(),
        "dlib_processes": args.workers,
        "onnx_threads": threads,
        "onnx_batch": args.batch,
        "repeat": args.repeat,
    }
    if args.json:
        print(json.dumps(result, indent=2))
        return

    print(f"128-d embeddings of {n} aligned 150×150 chips of real faces on {result['cores']} CPU cores: wall-clock")
    print(f"time per face, median of {args.repeat} runs, model loading excluded\n")
    print("| runtime | how it runs | ms per face | faces/s | vs dlib | max abs diff vs dlib |")
    print("|---|---|---|---|---|---|")
    rows = [
        ("dlib (`DlibResnet`)", f"{args.workers} processes", result["dlib_ms_per_face"], 0.0),
        (
            "ONNX Runtime (`OnnxResnet`)",
            f"1 process, {threads} intra-op threads, batch {args.batch}",
            result["onnx_ms_per_face"],
            result["max_abs_diff"],
        ),
    ]
    if peer_s is not None:
        label = f"{args.workers} processes; includes landmarks and chip"
        rows.append(("face_recognition `face_encodings`", label, result["face_recognition_ms_per_face"], peer_diff))
    for name, how, ms, diff in rows:
        speed = result["dlib_ms_per_face"] / ms
        print(f"| {name} | {how} | {ms:.2f} | {1000 / ms:.0f} | {speed:.1f}× | {diff:.1e} |")
    if peer_error is not None:
        print(f"\nface_recognition not measured: {peer_error}")


if __name__ == "__main__":
    main()

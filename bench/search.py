"""SearchFaces at scale: facegate's ANN path (HNSW candidates, re-ranked exactly) vs usearch's own search of the same
graph and a numpy brute-force scan, in one run.

    python bench/search.py --size 100000 [--depths 1536 ...] [--graphs DIR] [--json]

Gallery: real facegate embeddings of LFW + UTKFace (~13.6k, via bench/datasets.py), topped up to ``--size`` with
SYNTHETIC vectors drawn from a Gaussian fitted to the real embeddings' mean and covariance. Queries are real
faces held out of the gallery. Recall is against the exact scan on the same vectors, counting a result as a true
neighbour when it is no farther than the exact scan's k-th (so either of two copies of one photo is the nearest);
the store's SQL re-read of candidates is not included (it is the same for both paths' hits). The check after
the build is the store's: a walk of the graph's links, keeping aside the faces no link leads to.

facegate's path walks the graph's snapshot (store/graph_search.py); "usearch's walk" asks usearch to search the
same graph at the same depth (facegate's path before the snapshot, without its side list).

Latency is cold: before each timed query a read of FLUSH_BYTES pushes the graph out of the CPU caches. The
numpy scan's answers are computed in a pass of their own; a last pass times facegate's queries each right after
that scan instead (a 5 GB read at 10M faces, with its temporaries allocated and freed), the way this benchmark
timed them before: on the 2-core VM it was developed on, 1-2% of those queries stall for over 100 ms of CPU time
with no page fault, no garbage collection and no other thread running (README, Search at scale).

Memory is RESIDENT memory (growth of this process's VmRSS; the gallery is allocated before): "at rest" is the
index as the store leaves it after a rebuild or a restart (the graph mapped from its saved file, the snapshot
in memory); "graph in memory" is what usearch's graph took while it was built, which it takes again once a face
is added or removed (a change copies the mapped graph into memory).
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import datasets  # noqa: E402

from facegate.store.vector_index import VECTOR_SCALE, FaceIndex, quantize  # noqa: E402

# The real faces include photos filed twice: their copies are equally near a probe, to float precision.
TIE = 1e-6


def real_embeddings() -> np.ndarray:
    lfw, _ = datasets.embed_paths(datasets.lfw_paths(), fallback_whole=True, label="lfw")
    utk, _ = datasets.embed_paths([r["file"] for r in datasets.utkface_rows()], fallback_whole=False, label="utkface")
    real = np.concatenate([lfw, utk])
    return real[~np.isnan(real).any(axis=1)].astype(np.float32)


def gallery_and_queries(size: int, queries: int, seed: int) -> tuple[np.ndarray, np.ndarray, int]:
    """(gallery, queries, number of synthetic gallery rows)."""
    rng = np.random.default_rng(seed)
    real = real_embeddings()
    rng.shuffle(real)
    probes, pool = real[:queries], real[queries:]
    if size <= len(pool):
        return pool[:size].copy(), probes, 0
    synthetic = size - len(pool)
    mean, cov = pool.mean(axis=0), np.cov(pool, rowvar=False)
    gallery = np.empty((size, pool.shape[1]), dtype=np.float32)
    gallery[: len(pool)] = pool
    for start in range(len(pool), size, 1_000_000):
        stop = min(start + 1_000_000, size)
        gallery[start:stop] = rng.multivariate_normal(mean, cov, size=stop - start, method="cholesky")
    return gallery, probes, synthetic


def exact_top(gallery: np.ndarray, norms: np.ndarray, probe: np.ndarray, k: int) -> np.ndarray:
    """The peer: one matrix product over every row, as FaceService does below the ANN threshold."""
    squared = norms - 2.0 * (gallery @ probe) + float(probe @ probe)
    top = np.argpartition(squared, k)[:k]
    return top[np.argsort(squared[top])]


def ann_top(
    index: FaceIndex,
    gallery: np.ndarray,
    probe: np.ndarray,
    k: int,
    max_faces: int,
    depth: int | None = None,
    walk: str = "snapshot",
) -> np.ndarray:
    """facegate's path: 2·MaxFaces+16 candidates from the graph, re-ranked by their exact distances. ``walk``
    "usearch" asks usearch's own search of the same graph instead (the path before GraphSnapshot; no side list)."""
    wanted = 2 * max_faces + 16
    if walk == "usearch":
        index.index.expansion_search = max(wanted, depth or index.search_depth(wanted))
        rows = np.asarray(index.index.search(quantize(probe), wanted, threads=1).keys, dtype=np.int64)
    else:
        rows = index.search(probe, wanted, depth).astype(np.int64)  # keys are the gallery's row numbers
    distances = np.linalg.norm(gallery[rows] - probe, axis=1)
    return rows[np.argsort(distances)][:k]


def resident_bytes() -> int:
    """This process's current resident set (VmRSS), not its peak."""
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    raise RuntimeError("no VmRSS in /proc/self/status (this benchmark needs Linux)")


def run(size: int, queries: int, max_faces: int, seed: int, depths: list[int], graphs: Path | None = None) -> dict:
    gallery, probes, synthetic = gallery_and_queries(size, queries, seed)
    graph_file = graphs / f"search-{size}-seed{seed}.usearch" if graphs else None
    return measure(gallery, probes, synthetic, max_faces, depths, graph_file)


# Read between two timed queries to push the graph out of the CPU caches: several times the last-level cache.
FLUSH_BYTES = 128 * 2**20


def exact_pass(gallery: np.ndarray, norms: np.ndarray, probes: np.ndarray) -> tuple[list[np.ndarray], dict]:
    """The peer's answers (the true top 10 of every probe) and its latency."""
    answers, exact_ms = [], []
    for probe in probes:
        t0 = time.perf_counter()
        answers.append(exact_top(gallery, norms, probe, 10))
        exact_ms.append((time.perf_counter() - t0) * 1e3)
    return answers, {
        "exact_p50_ms": round(float(np.percentile(exact_ms, 50)), 3),
        "exact_p99_ms": round(float(np.percentile(exact_ms, 99)), 3),
    }


def cold_pass(
    index: FaceIndex,
    gallery: np.ndarray,
    probes: np.ndarray,
    answers: list[np.ndarray],
    max_faces: int,
    depth: int | None = None,
    walk: str = "snapshot",
    between: Callable[[np.ndarray], object] | None = None,
) -> dict:
    """Each query with cold CPU caches: after a read of FLUSH_BYTES, or after ``between(probe)`` when given (the
    peer's whole-gallery scan, say)."""
    flush = np.ones(FLUSH_BYTES // 4, dtype=np.float32)
    ann_ms, hits1, hits10 = [], 0, 0
    for probe, exact in zip(probes, answers, strict=True):
        if between is None:
            float(flush.sum())
        else:
            between(probe)
        t0 = time.perf_counter()
        approx = ann_top(index, gallery, probe, 10, max_faces, depth, walk)
        ann_ms.append((time.perf_counter() - t0) * 1e3)
        hits1 += _found(gallery, probe, approx[:1], exact[:1])
        hits10 += _found(gallery, probe, approx, exact)
    return {
        "p50_ms": round(float(np.percentile(ann_ms, 50)), 3),
        "p99_ms": round(float(np.percentile(ann_ms, 99)), 3),
        "recall_at_1": round(hits1 / len(probes), 4),
        "recall_at_10": round(hits10 / (10 * len(probes)), 4),
    }


def change_pass(index: FaceIndex, gallery: np.ndarray, probes: np.ndarray, max_faces: int, added: int) -> dict:
    """What a change costs once the index is at rest: the first IndexFaces copies the mapped graph into memory
    and inserts, the store's save writes the graph, and the snapshot is read again on a thread (refresh_behind)
    while searches go on, walking the old snapshot and scanning the added faces exactly."""
    rng = np.random.default_rng(1)
    keys = np.arange(len(gallery), len(gallery) + added, dtype=np.uint64)
    vectors = gallery[rng.integers(0, len(gallery), added)] + rng.normal(0, 0.01, (added, gallery.shape[1]))
    before = resident_bytes()
    t0 = time.perf_counter()
    index.add(keys, vectors.astype(np.float32))
    t1 = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        saved = Path(tmp) / "graph.usearch"
        index.index.save(str(saved))
        t2 = time.perf_counter()
        index.refresh_behind(saved)
        job, during, peak = index._refreshing, [], resident_bytes()
        while job is not None and not job.done.is_set():
            probe = probes[len(during) % len(probes)]
            started = time.perf_counter()
            index.search(probe, 2 * max_faces + 16)  # the candidates (the added faces have no gallery row)
            during.append((time.perf_counter() - started) * 1e3)
            peak = max(peak, resident_bytes())
        index.wait_refreshed()
    if index._snapshot is None or len(index._snapshot) != len(index):
        raise RuntimeError("the snapshot read behind searches was not installed")
    return {
        "added": added,
        "first_change_s": round(t1 - t0, 2),
        "save_s": round(t2 - t1, 2),
        "read_behind_s": round(index.refresh_seconds, 2),
        "searches_meanwhile": len(during),
        "p50_ms": round(float(np.percentile(during, 50)), 3) if during else None,
        "p99_ms": round(float(np.percentile(during, 99)), 3) if during else None,
        "peak_growth_mb": round((peak - before) / 2**20, 1),
    }


def _found(gallery: np.ndarray, probe: np.ndarray, approx: np.ndarray, exact: np.ndarray) -> int:
    """How many of ``approx`` are true nearest neighbours: no farther than the last of ``exact`` (as
    ann-benchmarks counts recall, so that of two copies of one photo either counts as the nearest)."""
    if not len(approx):
        return 0
    limit = np.linalg.norm(gallery[exact[-1]] - probe) + TIE
    return min(len(exact), int((np.linalg.norm(gallery[approx] - probe, axis=1) <= limit).sum()))


def load_seconds(index: FaceIndex, graph_file: Path | None) -> float:
    """What a restart costs: the persisted graph mapped from its file and its snapshot read, as the store does on
    open (the index is saved to a temporary file first when the run kept none)."""
    from usearch.index import Index

    with tempfile.TemporaryDirectory() as tmp:
        path = graph_file or Path(tmp) / "graph.usearch"
        if not graph_file:
            index.index.save(str(path))
        started = time.perf_counter()
        restored = FaceIndex(index.ndim, 0, Index.restore(str(path), view=True), view=True)
        if not restored.refresh(saved=path) or len(restored) != len(index):
            raise RuntimeError("the saved index did not restore")
        seconds = time.perf_counter() - started
    del restored
    return seconds


def build(gallery: np.ndarray, graph_file: Path | None) -> tuple[FaceIndex, dict]:
    """The index over ``gallery`` with its build figures, left as the store leaves a collection's index after a
    rebuild or a restart: the graph saved and mapped from its file, searched through its snapshot. Built and
    checked as a rebuild does, or restored from ``graph_file`` saved by an earlier run over the same gallery.

    ``resident`` is what the graph took in memory while built (and takes again once a face is added or
    removed: changes copy it in); ``at_rest`` is the whole index's resident growth as searches find it."""
    from usearch.index import Index

    resident_before = resident_bytes()
    figures = json.loads(graph_file.with_suffix(".json").read_text()) if graph_file and graph_file.exists() else None
    if figures is not None and figures["size"] == len(gallery):
        index = FaceIndex(
            gallery.shape[1],
            0,
            Index.restore(str(graph_file), view=True),
            np.asarray(figures["unreachable"], dtype=np.uint64),
            view=True,
        )
        sample = np.arange(0, len(gallery), max(1, len(gallery) // 1000), dtype=np.uint64)
        if not np.array_equal(index._stored(sample), quantize(gallery[sample.astype(np.int64)])):
            raise SystemExit(f"{graph_file} was built over another gallery (other --queries or --seed?)")
        started = time.perf_counter()
        index.refresh(saved=graph_file)  # as a load does: the snapshot searches walk
        figures["snapshot_s"] = time.perf_counter() - started
        figures["restored"] = True
        figures["at_rest"] = resident_bytes() - resident_before
        return index, figures
    started = time.perf_counter()
    index = FaceIndex(gallery.shape[1])
    slice_s = []  # each tenth of the build: inserts slow as the graph outgrows the CPU caches
    for start in range(0, len(gallery), -(-len(gallery) // 10)):
        stop = min(len(gallery), start + -(-len(gallery) // 10))
        began = time.perf_counter()
        index.add(np.arange(start, stop, dtype=np.uint64), gallery[start:stop], check=False)
        slice_s.append(time.perf_counter() - began)
    build_s = time.perf_counter() - started
    graph_resident = resident_bytes() - resident_before
    started = time.perf_counter()
    index.check_all()  # as a rebuild does: a walk of the graph's links, then the snapshot searches walk
    figures = {
        "size": len(gallery),
        "build_s": build_s,
        "slices": slice_s,
        "check_s": time.perf_counter() - started,
        "unreachable": [int(k) for k in index.unreachable],
        "resident": graph_resident,
        "restored": False,
    }
    with tempfile.TemporaryDirectory() as tmp:
        saved = graph_file or Path(tmp) / "graph.usearch"
        saved.parent.mkdir(parents=True, exist_ok=True)
        index.index.save(str(saved))
        if graph_file:
            graph_file.with_suffix(".json").write_text(json.dumps(figures))
        index.rest(saved)  # as the store does after a rebuild (the mapping outlives the temporary file)
    figures["at_rest"] = resident_bytes() - resident_before
    return index, figures


def measure(
    gallery: np.ndarray,
    probes: np.ndarray,
    synthetic: int,
    max_faces: int,
    depths: list[int],
    graph_file: Path | None = None,
) -> dict:
    """The index built over ``gallery`` and searched for every probe, against the exact scan."""
    size = len(gallery)
    norms = np.einsum("ij,ij->i", gallery, gallery)
    real = gallery[: size - synthetic]
    index, figures = build(gallery, graph_file)
    build_s, slice_s, check_s = figures["build_s"], figures["slices"], figures["check_s"]
    unreachable = len(index.unreachable)
    resident = figures["at_rest"]
    warm_ms = []
    for probe in probes:  # back to back: the graph's hot parts stay in the CPU caches
        t0 = time.perf_counter()
        ann_top(index, gallery, probe, 10, max_faces)
        warm_ms.append((time.perf_counter() - t0) * 1e3)
    answers, exact = exact_pass(gallery, norms, probes)
    cold = cold_pass(index, gallery, probes, answers, max_faces)
    after_scan = cold_pass(
        index, gallery, probes, answers, max_faces, between=lambda probe: exact_top(gallery, norms, probe, 10)
    )
    # usearch's walk searches its graph held in memory, as it was before the snapshot (not mapped from a file).
    held = FaceIndex(index.ndim, 0, index.index.copy())
    peer_walk = cold_pass(held, gallery, probes, answers, max_faces, walk="usearch")
    sweep = []
    for depth in depths:  # fixed depths instead of the store's size-dependent one
        for walk, searched in (("snapshot", index), ("usearch", held)):
            sweep.append(
                {"depth": depth, "walk": walk, **cold_pass(searched, gallery, probes, answers, max_faces, depth, walk)}
            )
    del held
    change = change_pass(index, gallery, probes, max_faces, added=1_000)
    return {
        "size": size,
        "real_faces": size - synthetic,
        "synthetic_faces": synthetic,
        "synthetic": "Gaussian fitted to the real embeddings' mean and covariance" if synthetic else None,
        "queries": len(probes),
        "max_faces": max_faces,
        "depth": index.search_depth(2 * max_faces + 16),
        "p50_ms": cold["p50_ms"],
        "p99_ms": cold["p99_ms"],
        "warm_p50_ms": round(float(np.percentile(warm_ms, 50)), 3),
        # The same queries, each right after the peer's scan of the whole gallery instead of a cache flush.
        "after_scan_p50_ms": after_scan["p50_ms"],
        "after_scan_p99_ms": after_scan["p99_ms"],
        "recall_at_1": cold["recall_at_1"],
        "recall_at_10": cold["recall_at_10"],
        "usearch_walk": peer_walk,
        "build_s": round(build_s, 1),
        "graph_restored": figures["restored"],
        "snapshot_s": round(figures.get("snapshot_s", 0.0), 1),
        "build_faces_per_s_by_tenth": [round((size / 10) / t) for t in slice_s],
        # A restored graph's figures already time a load (mapped + snapshot read): no second one.
        "load_s": round(figures["snapshot_s"] if figures["restored"] else load_seconds(index, graph_file), 2),
        "check_s": round(check_s, 1),
        "unreachable_kept_aside": unreachable,
        "memory_mb": round(resident / 2**20, 1),
        "graph_in_memory_mb": round(figures["resident"] / 2**20, 1),
        "bytes_per_face": round(resident / size, 1),
        "allocated_mb": round(index.memory_bytes() / 2**20, 1),
        "allocated_bytes_per_face": round(index.memory_bytes() / size, 1),
        **exact,
        "depth_sweep": sweep,
        "change": change,
        # What the index's int8 rounding clips: components past ±127 steps (see VECTOR_SCALE).
        "largest_real_component": round(float(np.abs(real).max()), 3),
        "clipped_real_components_per_100k": round(float((np.abs(real) * VECTOR_SCALE > 127).mean()) * 1e5, 1),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--size", type=int, nargs="+", default=[100_000])
    parser.add_argument("--queries", type=int, default=500)
    parser.add_argument("--max-faces", type=int, default=100, help="MaxFaces, as SearchFaces' default")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--depths", type=int, nargs="*", default=[], help="more passes at these search depths")
    parser.add_argument(
        "--graphs",
        type=Path,
        help="keep each built graph (and its build figures) here, and restore it instead of building when a "
        "run with the same size and seed saved one",
    )
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    results = []
    for size in args.size:  # each size's figures as soon as they exist: a 10M run takes over an hour
        results.append(run(size, args.queries, args.max_faces, args.seed, args.depths, args.graphs))
        print(json.dumps(results[-1]), file=sys.stderr, flush=True)
    if args.json:
        print(json.dumps(results[0] if len(results) == 1 else results, indent=2))
        return
    print(
        "| faces (real + synthetic) | depth | facegate p50 ms | p99 ms | warm p50 ms | recall@1 | recall@10 "
        "| usearch's walk p50 ms | p99 ms | recall@10 | numpy scan p50 ms | p99 ms |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|---|---|")
    for r in results:
        u = r["usearch_walk"]
        print(
            f"| {r['size']:,} ({r['real_faces']:,} + {r['synthetic_faces']:,}) | {r['depth']:,} | {r['p50_ms']} "
            f"| {r['p99_ms']} | {r['warm_p50_ms']} | {r['recall_at_1']:.4f} | {r['recall_at_10']:.4f} "
            f"| {u['p50_ms']} | {u['p99_ms']} | {u['recall_at_10']:.4f} | {r['exact_p50_ms']} | {r['exact_p99_ms']} |"
        )
    print(
        "\n| faces | build s | check s | snapshot s | kept aside | load s | MB resident at rest | graph MB in memory "
        "while changing |\n|---|---|---|---|---|---|---|---|"
    )
    for r in results:
        restored = " (graph restored from an earlier run's build)" if r["graph_restored"] else ""
        print(
            f"| {r['size']:,} | {r['build_s']}{restored} | {r['check_s']} | {r['snapshot_s']} "
            f"| {r['unreachable_kept_aside']} | {r['load_s']} | {r['memory_mb']} | {r['graph_in_memory_mb']} |"
        )
    print(
        "\n| faces | facegate p50 ms, each query right after the numpy scan | p99 ms |\n|---|---|---|\n"
        + "\n".join(f"| {r['size']:,} | {r['after_scan_p50_ms']} | {r['after_scan_p99_ms']} |" for r in results)
    )
    print(
        "\n| faces | faces added | first change s (graph copied in + inserts) | save s | snapshot read behind s "
        "| searches meanwhile | their p50 ms | p99 ms | MB resident added at peak |\n|---|---|---|---|---|---|---|---|---|"
    )
    for r in results:
        c = r["change"]
        print(
            f"| {r['size']:,} | {c['added']:,} | {c['first_change_s']} | {c['save_s']} | {c['read_behind_s']} "
            f"| {c['searches_meanwhile']} | {c['p50_ms']} | {c['p99_ms']} | {c['peak_growth_mb']} |"
        )
    if args.depths:
        print(
            "\n| faces | search depth | walk | p50 ms | p99 ms | recall@1 | recall@10 |\n|---|---|---|---|---|---|---|"
        )
        for r in results:
            for point in r["depth_sweep"]:
                print(
                    f"| {r['size']:,} | {point['depth']} | {point['walk']} | {point['p50_ms']} | {point['p99_ms']} "
                    f"| {point['recall_at_1']:.4f} | {point['recall_at_10']:.4f} |"
                )
    print("\nBuild, faces inserted per second in each tenth of the collection (on every core):")
    for r in results:
        print(f"- {r['size']:,}: " + ", ".join(f"{v:,}" for v in r["build_faces_per_s_by_tenth"]))
    r = results[-1]
    print(
        f"\nReal embeddings in the gallery: largest |component| {r['largest_real_component']}; "
        f"{r['clipped_real_components_per_100k']} components in 100,000 clipped by the index's int8 rounding "
        f"(scale {VECTOR_SCALE})."
    )
    if any(r["synthetic_faces"] for r in results):
        print(
            "\nSynthetic rows: a Gaussian fitted to the real embeddings' mean and covariance; queries are real faces."
        )


if __name__ == "__main__":
    main()

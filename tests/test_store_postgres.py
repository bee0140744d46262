"""What is particular to the PostgreSQL store: migrations, several processes writing at once, pgvector's index.
What every store must do is in test_store_contract.py. Each store opened here stands for another process or
host: stores on one URL share nothing but the database."""

from __future__ import annotations

import threading
from collections.abc import Callable

import numpy as np
import pytest

from facegate.store import StoredFace

psycopg = pytest.importorskip("psycopg", reason="psycopg is not installed: pip install -e '.[test]'")
from facegate.store.postgres import MIGRATIONS, PostgresStore  # noqa: E402

OWNER = "org-a"
MODEL = "model-1"


def faces(rng: np.random.Generator, face_ids: list[str], image_hash: str, embeddings=None) -> list[StoredFace]:
    return [
        StoredFace(
            face_id=face_id,
            image_id=f"id-{image_hash}",
            external_image_id=None,
            box=(0.25, 0.5, 0.0, 0.0),
            confidence=99.0,
            image_hash=image_hash,
            model_version=MODEL,
            indexed_at=1_000.0,
            embedding=rng.normal(0.0, 0.1, 128).astype(np.float32) if embeddings is None else embeddings[i],
        )
        for i, face_id in enumerate(face_ids)
    ]


def together(count: int, work: Callable[[int], object]) -> list[object]:
    """Runs ``work(i)`` for i in range(count) in threads released at the same moment; returns what each gave."""
    barrier = threading.Barrier(count)
    results: list[object] = [None] * count

    def run(i: int) -> None:
        barrier.wait()
        try:
            results[i] = work(i)
        except Exception as exc:  # reported to the test, not lost in the thread
            results[i] = exc

    threads = [threading.Thread(target=run, args=(i,)) for i in range(count)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return results


def test_a_url_that_is_not_postgresql_is_refused():
    with pytest.raises(ValueError, match="postgresql://"):
        PostgresStore("mysql://user@host/facegate")


def test_schema_version_is_recorded_and_a_newer_database_is_refused(postgres_url):
    store = PostgresStore(postgres_url)
    assert store.schema_version() == len(MIGRATIONS)
    store.close()
    PostgresStore(postgres_url).close()  # opening a current database again migrates nothing
    with psycopg.connect(postgres_url, autocommit=True) as db:
        db.execute("UPDATE meta SET value = 999 WHERE key = 'schema_version'")
    with pytest.raises(RuntimeError, match="upgrade facegate"):
        PostgresStore(postgres_url)


def test_processes_opening_a_new_database_together_migrate_it_once(postgres_url):
    opened = together(4, lambda _: PostgresStore(postgres_url))
    assert all(isinstance(store, PostgresStore) for store in opened), opened
    assert [store.schema_version() for store in opened] == [len(MIGRATIONS)] * 4
    collection = opened[0].create_collection(OWNER, "people", MODEL, {})
    assert opened[3].get_collection(OWNER, "people") == collection
    for store in opened:
        store.close()


def test_one_image_indexed_by_several_processes_at_once_is_stored_once(postgres_url):
    stores = [PostgresStore(postgres_url) for _ in range(6)]
    collection = stores[0].create_collection(OWNER, "people", MODEL, {})
    rng = np.random.default_rng(3)
    attempts = [faces(rng, [f"p{i}-a", f"p{i}-b"], image_hash="same-photo") for i in range(6)]

    answers = together(6, lambda i: [f.face_id for f in stores[i].add_faces(collection, attempts[i])])

    assert all(isinstance(answer, list) for answer in answers), answers
    assert len({tuple(answer) for answer in answers}) == 1  # every process is answered with the stored faces
    stored = [f.face_id for f in stores[0].list_faces(collection, None, 100)]
    assert stored == sorted(answers[0])
    assert stores[1].get_collection(OWNER, "people").face_count == 2
    for store in stores:
        store.close()


def test_one_face_deleted_by_several_processes_at_once_is_counted_once(postgres_url):
    stores = [PostgresStore(postgres_url) for _ in range(4)]
    collection = stores[0].create_collection(OWNER, "people", MODEL, {})
    rng = np.random.default_rng(4)
    stores[0].add_faces(collection, faces(rng, ["doomed", "kept"], image_hash="h1"))

    answers = together(4, lambda i: stores[i].delete_faces(collection, ["doomed"]))

    assert sorted(answers, key=len) == [[], [], [], ["doomed"]]
    assert stores[2].get_collection(OWNER, "people").face_count == 1
    for store in stores:
        store.close()


def test_threads_sharing_one_store_each_write_and_search(postgres_url):
    store = PostgresStore(postgres_url)
    collection = store.create_collection(OWNER, "people", MODEL, {})
    rng = np.random.default_rng(5)
    batches = [faces(rng, [f"t{i}-{j}" for j in range(5)], image_hash=f"photo-{i}") for i in range(8)]

    def work(i: int) -> int:
        store.add_faces(collection, batches[i])
        return len(store.gallery(collection).face_ids)

    seen = together(8, work)
    assert all(isinstance(count, int) and 5 <= count <= 40 for count in seen), seen
    assert store.get_collection(OWNER, "people").face_count == 40
    assert len(store.gallery(collection).face_ids) == 40
    store.close()


def test_the_ann_index_finds_a_small_collections_nearest_faces_among_many_others(postgres_url):
    """The HNSW index covers every collection's faces; the collection filter must not cut its answer short (an
    iterative scan goes on until enough of this collection's faces are found). The planner is kept off the exact
    sort, so the index answers even for a collection this small."""
    url = postgres_url + "&options=-c%20enable_sort%3Doff"
    store = PostgresStore(url, ann_min_faces=1)
    rng = np.random.default_rng(6)
    crowd = store.create_collection(OWNER, "crowd", MODEL, {})
    for start in range(0, 3000, 500):
        store.add_faces(crowd, faces(rng, [f"crowd-{i}" for i in range(start, start + 500)], image_hash=f"c{start}"))
    small = store.create_collection(OWNER, "small", MODEL, {})
    own = rng.normal(0.0, 0.1, (100, 128)).astype(np.float32)
    store.add_faces(small, faces(rng, [f"own-{i:03}" for i in range(100)], image_hash="s", embeddings=own))
    small = store.get_collection(OWNER, "small")
    with psycopg.connect(url) as db:
        db.execute("ANALYZE faces")
        plan = " ".join(
            r[0]
            for r in db.execute(
                "EXPLAIN SELECT face_id FROM faces WHERE collection_pk = %s ORDER BY embedding <-> %s::vector LIMIT 36",
                (small.pk, str(own[0].tolist())),
            )
        )
    assert "faces_by_embedding" in plan

    searcher = PostgresStore(url, ann_min_faces=1)  # another process: its connection searches first thing
    found = 0
    for i in range(0, 100, 10):
        probe = own[i] + rng.normal(0.0, 0.01, 128).astype(np.float32)
        candidates = searcher.nearest_faces(small, probe, 36)
        ids = [f.face_id for f in candidates]
        assert len(ids) == 36 and all(face_id.startswith("own-") for face_id in ids)
        exact = {f"own-{j:03}" for j in np.argsort(np.linalg.norm(own - probe, axis=1))[:10]}
        found += len(exact & set(ids))
        assert f"own-{i:03}" in ids  # the probe's own face
    assert found >= 90  # recall@10 against the exact answer, over ten probes
    searcher.close()
    store.close()

"""The ANN index behind SearchFaces: same answers as exact search, deletions honoured at once, derived from SQLite.

Real LFW faces are the probes and their true matches; synthetic vectors (fitted to nothing in particular, far
from real faces) only push the collection over a lowered ANN threshold so that the index is used.
"""

from __future__ import annotations

import json
import shutil
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest

from facegate.engine import FaceEngine
from facegate.service import FaceService
from facegate.store import StoredFace
from facegate.store.graph_walk import SavedGraph, read_graph, unreachable_keys
from facegate.store.sqlite import SqliteStore
from facegate.store.vector_index import VECTOR_SCALE, FaceIndex, quantize
from tests.conftest import OWNER

MIN_FACES = 300
SCHEMA_WITHOUT_ANN_KEY = 5  # migration 6 added faces.ann_key
SYNTHETIC = 600


@pytest.fixture
def data_dir(tmp_path: Path) -> Path:
    return tmp_path / "data"


@pytest.fixture
def ann_store(data_dir: Path):
    store = SqliteStore(data_dir, ann_min_faces=MIN_FACES)
    yield store
    store.close()


@pytest.fixture
def gallery(ann_store: SqliteStore, engine: FaceEngine, people: dict[str, list[Path]]) -> dict[str, list[str]]:
    """A collection over the ANN threshold: 16 real faces of 4 people plus synthetic filler; name -> face ids."""
    service = FaceService(ann_store, engine)
    service.call(OWNER, "CreateCollection", {"CollectionId": "c"})
    ids: dict[str, list[str]] = {}
    for name, paths in people.items():
        for path in paths:
            response = service.call(OWNER, "IndexFaces", {"CollectionId": "c", "Image": {"Bytes": path.read_bytes()}})
            ids.setdefault(name, []).append(response.records[0].face.face_id)
    add_synthetic(ann_store, SYNTHETIC, seed=0)
    return ids


def add_synthetic(store: SqliteStore, count: int, seed: int) -> list[str]:
    collection = store.get_collection(OWNER, "c")
    rng = np.random.default_rng(seed)
    faces = [
        StoredFace(
            face_id=f"synthetic-{seed}-{i}",
            image_id=f"synthetic-{seed}",
            external_image_id=None,
            box=(0.5, 0.5, 0.25, 0.25),
            confidence=99.0,
            image_hash=f"synthetic-{seed}",
            model_version=collection.model_version,
            indexed_at=time.time(),
            embedding=rng.normal(0.0, 0.1, 128).astype(np.float32),
        )
        for i in range(count)
    ]
    store.add_faces(collection, faces)
    return [f.face_id for f in faces]


def search(store: SqliteStore, engine: FaceEngine, face_id: str) -> list[tuple[str, float]]:
    response = FaceService(store, engine).call(OWNER, "SearchFaces", {"CollectionId": "c", "FaceId": face_id})
    return [(m.face.face_id, round(m.similarity, 4)) for m in response.matches]


def pointer(data_dir: Path) -> Path:
    return data_dir / "indexes" / "1.json"


def test_matches_above_threshold_equal_exact_search(ann_store, engine, gallery, data_dir):
    exact_store = SqliteStore(data_dir, ann_min_faces=10**9)
    try:
        for name, face_ids in gallery.items():
            for face_id in face_ids:
                approximate, exact = search(ann_store, engine, face_id), search(exact_store, engine, face_id)
                assert [f for f, _ in approximate] == [f for f, _ in exact]
                # The same similarities, to float32 rounding: the exact path's distances come from one matrix
                # product over the whole gallery, the index's from re-ranking its candidates alone.
                assert [s for _, s in approximate] == pytest.approx([s for _, s in exact], abs=1e-3)
                assert {f for f, _ in approximate} == set(face_ids) - {face_id}, name
    finally:
        exact_store.close()
    assert pointer(data_dir).exists()  # the index, not the gallery, answered


def test_deleted_face_disappears_at_once(ann_store, engine, gallery, data_dir):
    bush = gallery["George_W_Bush"]
    search(ann_store, engine, bush[0])  # load the index
    FaceService(ann_store, engine).call(OWNER, "DeleteFaces", {"CollectionId": "c", "FaceIds": [bush[1]]})
    assert {f for f, _ in search(ann_store, engine, bush[0])} == {bush[2], bush[3]}
    # Another process deletes: this process' index still holds the face, the store's re-read drops it.
    other = SqliteStore(data_dir, ann_min_faces=MIN_FACES)
    try:
        other.delete_faces(other.get_collection(OWNER, "c"), [bush[2]])
    finally:
        other.close()
    assert {f for f, _ in search(ann_store, engine, bush[0])} == {bush[3]}


def test_faces_added_by_another_process_are_found(ann_store, engine, gallery, data_dir, people):
    powell = gallery["Colin_Powell"]
    search(ann_store, engine, powell[0])
    other = SqliteStore(data_dir, ann_min_faces=MIN_FACES)
    try:
        response = FaceService(other, engine).call(
            OWNER,
            "IndexFaces",
            {
                "CollectionId": "c",
                "Image": {"Bytes": sorted(people["Colin_Powell"])[0].read_bytes()},
                "ExternalImageId": "again",
            },
        )
        added = response.records[0].face.face_id
        add_synthetic(other, 50, seed=1)
    finally:
        other.close()
    assert added in {f for f, _ in search(ann_store, engine, powell[1])}
    assert len(ann_store.vector_indexes._indexes[1]) == 16 + SYNTHETIC + 1 + 50


def test_missing_index_is_rebuilt(ann_store, engine, gallery, data_dir):
    blair = gallery["Tony_Blair"]
    expected = search(ann_store, engine, blair[0])
    ann_store.close()
    for path in (data_dir / "indexes").iterdir():
        path.unlink()
    reopened = SqliteStore(data_dir, ann_min_faces=MIN_FACES)
    try:
        assert search(reopened, engine, blair[0]) == expected
        assert pointer(data_dir).exists()
    finally:
        reopened.close()


def test_index_persists_across_reopening(ann_store, engine, gallery, data_dir):
    serena = gallery["Serena_Williams"]
    expected = search(ann_store, engine, serena[0])
    ann_store.close()
    saved = pointer(data_dir).read_text()
    reopened = SqliteStore(data_dir, ann_min_faces=MIN_FACES)
    try:
        assert search(reopened, engine, serena[0]) == expected
        assert pointer(data_dir).read_text() == saved  # loaded, not rebuilt
        assert len(reopened.vector_indexes._indexes[1]) == 16 + SYNTHETIC
    finally:
        reopened.close()


def test_deleting_the_collection_removes_its_index(ann_store, engine, gallery, data_dir):
    search(ann_store, engine, gallery["Tony_Blair"][0])
    FaceService(ann_store, engine).call(OWNER, "DeleteCollection", {"CollectionId": "c"})
    assert not list((data_dir / "indexes").iterdir())


def test_rebuild_on_request_covers_every_face_and_skips_small_collections(ann_store, engine, gallery, people):
    service = FaceService(ann_store, engine)
    assert service.rebuild_index(OWNER, "c") == 16 + SYNTHETIC
    probe = {"CollectionId": "c", "Image": {"Bytes": people["Tony_Blair"][3].read_bytes()}, "MaxFaces": 3}
    assert service.call(OWNER, "SearchFacesByImage", probe).matches[0].face.face_id in gallery["Tony_Blair"]
    service.call(OWNER, "CreateCollection", {"CollectionId": "small"})
    assert service.rebuild_index(OWNER, "small") == 0  # below the ANN threshold: exact search, no index


def test_startup_prepares_large_collections_only(ann_store, engine, gallery, data_dir):
    service = FaceService(ann_store, engine)
    service.call(OWNER, "CreateCollection", {"CollectionId": "small"})
    ann_store.close()
    assert not (data_dir / "indexes").exists()  # nothing searched yet, so nothing built
    reopened = SqliteStore(data_dir, ann_min_faces=MIN_FACES)
    try:
        assert FaceService(reopened, engine).prepare_search_indexes() == 1  # "c" only; "small" searches exactly
        assert len(reopened.vector_indexes._indexes[1]) == 16 + SYNTHETIC  # built before any search
        assert pointer(data_dir).exists()
        # Another process starting now loads that file instead of building the index a second time.
        saved = pointer(data_dir).read_text()
        other = SqliteStore(data_dir, ann_min_faces=MIN_FACES)
        try:
            assert other.prepare_vector_indexes() == 1
            assert pointer(data_dir).read_text() == saved
            assert search(other, engine, gallery["Tony_Blair"][0]) == search(reopened, engine, gallery["Tony_Blair"][0])
        finally:
            other.close()
    finally:
        reopened.close()


def test_faces_stored_before_ann_keys_existed_get_them_on_upgrade(ann_store, engine, gallery, data_dir):
    """Schema 6 added faces.ann_key: a database written by an older facegate is given its keys on opening."""
    import sqlite3

    from facegate.store.sqlite import MIGRATIONS

    expected = search(ann_store, engine, gallery["Tony_Blair"][0])
    ann_store.close()
    shutil.rmtree(data_dir / "indexes")
    db = sqlite3.connect(data_dir / "facegate.sqlite3")
    db.execute("DROP INDEX faces_by_ann_key")
    db.execute("ALTER TABLE faces DROP COLUMN ann_key")  # as schema 5 left it
    db.execute("UPDATE meta SET value = ? WHERE key = 'schema_version'", (str(SCHEMA_WITHOUT_ANN_KEY),))
    db.commit()
    db.close()
    upgraded = SqliteStore(data_dir, ann_min_faces=MIN_FACES)
    try:
        assert upgraded.schema_version() == len(MIGRATIONS)
        assert search(upgraded, engine, gallery["Tony_Blair"][0]) == expected
        assert len(upgraded.vector_indexes._indexes[1]) == 16 + SYNTHETIC
    finally:
        upgraded.close()


def test_components_beyond_the_int8_range_are_clipped_not_lost():
    """The index keeps int8 round(x·VECTOR_SCALE); a component past ±127/VECTOR_SCALE is clipped, and its face
    must still be among the nearest to itself (HNSW is approximate: not necessarily first)."""
    rng = np.random.default_rng(1)
    vectors = (rng.standard_normal((2000, 128)) * 0.09).astype(np.float32)  # about dlib's component spread
    unusual = np.arange(0, 2000, 200)
    vectors[unusual, :8] = rng.choice([-0.9, 0.9], size=(len(unusual), 8))
    assert np.abs(vectors).max() * VECTOR_SCALE > 127
    index = FaceIndex(128)
    for start in range(0, 2000, 500):  # small adds build on one thread, so the graph is the same on every run
        index.add(np.arange(start, start + 500, dtype=np.uint64), vectors[start : start + 500])
    for row in unusual:
        assert row in index.search(vectors[row], 10)


def _synthetic_faces(count: int, seed: int = 7) -> tuple[np.ndarray, np.ndarray]:
    """Keys and vectors on dlib's scale (components ~0.05): enough of them that a multi-threaded build strands
    some (no real faces needed to exercise the graph itself)."""
    rng = np.random.default_rng(seed)
    return np.arange(1, count + 1, dtype=np.uint64), rng.normal(0, 0.05, (count, 128)).astype(np.float32)


def _not_found_by_own_vector(index: FaceIndex, keys: np.ndarray, vectors: np.ndarray) -> list[int]:
    return [int(k) for k, v in zip(keys, vectors, strict=True) if k not in index.search(v, 216)]


def test_the_graph_holds_each_embedding_as_given_in_int8_steps_not_scaled_to_unit_length():
    """usearch's own float-to-int8 cast scales every vector to unit length (and truncates), which would rank
    faces by angle; the index hands it int8 steps of 1/VECTOR_SCALE instead, so lengths count as in l2."""
    keys, vectors = _synthetic_faces(300, seed=23)
    probe = vectors[0].copy()
    vectors[0] = 2.5 * probe  # key 1: the probe's direction exactly, far away
    vectors[1] = probe + np.random.default_rng(4).normal(0, 0.01, 128).astype(np.float32)  # key 2: near it
    index = FaceIndex(128)
    index.add(keys, vectors)
    stored = index._stored(keys).astype(np.float32)  # what the graph holds, read back from usearch
    assert np.abs(stored / VECTOR_SCALE - vectors).max() <= 0.5 / VECTOR_SCALE + 1e-7
    assert index.search(probe, 1)[0] == 2  # by angle, key 1 would be first


def test_every_face_is_found_by_its_own_embedding_after_a_multithreaded_build():
    keys, vectors = _synthetic_faces(12_000)
    index = FaceIndex(128)
    index.add(keys, vectors, check=False)  # usearch on every core, as a rebuild does
    lost = _not_found_by_own_vector(index, keys, vectors)  # before the check (a few, or by chance none)
    aside = index.check_all()
    stranded = index.unreachable
    assert aside == len(stranded) < 0.01 * len(keys)
    assert set(lost) <= {int(k) for k in stranded}
    # What the side list holds really is beyond the graph: the graph's own search does not return them.
    index.index.expansion_search = 768
    graph_only = index.index.search(quantize(vectors[(stranded - 1).astype(np.int64)]), 216, threads=0)
    assert all(k not in row for k, row in zip(stranded, np.asarray(graph_only.keys), strict=True))
    assert _not_found_by_own_vector(index, keys, vectors) == []


def test_the_link_walk_keeps_aside_only_faces_no_search_finds_and_removed_faces_are_not_reported(tmp_path, monkeypatch):
    from facegate.store import vector_index

    keys, vectors = _synthetic_faces(12_000, seed=13)
    index = FaceIndex(128)
    index.add(keys, vectors, check=False)
    index.index.remove(keys[:40])  # removed faces leave tombstones in the graph: never reported
    walked = unreachable_keys(index.index, scratch=tmp_path)
    assert not set(walked.tolist()) & set(keys[:40].tolist())
    # The fallback searches every face by its own vector: whatever no link reaches, it cannot find either.
    searched = FaceIndex(128, index=index.index)
    searched._check(searched.keys())
    assert set(walked.tolist()) <= set(searched.unreachable.tolist())
    assert not list(tmp_path.iterdir())  # the walk's copy of the graph is gone
    # Above the size where every face is also searched by its own vector, the walks alone decide: of every
    # level, and of the bottom level the snapshot's search walks.
    monkeypatch.setattr(vector_index, "SELF_SEARCH_MAX_FACES", 0)
    bottom = read_graph(index.index, scratch=tmp_path).unreachable(base_only=True)
    assert set(walked.tolist()) <= set(bottom.tolist())
    assert index.check_all(tmp_path) == len(bottom)
    assert sorted(index.unreachable.tolist()) == sorted(bottom.tolist())


def test_a_graph_file_of_another_layout_is_refused_and_the_check_falls_back_to_self_search(tmp_path, monkeypatch):
    from facegate.store import graph_walk, vector_index

    keys, vectors = _synthetic_faces(3_000, seed=17)
    index = FaceIndex(128)
    index.add(keys, vectors, check=False)
    path = tmp_path / "graph.usearch"
    index.index.save(str(path))
    whole = path.read_bytes()
    for broken in (whole[:-4], whole[:40], b"x" * 16 + whole[16:]):
        path.write_bytes(broken)
        with pytest.raises(graph_walk.GraphLayoutError):
            graph_walk.SavedGraph(np.memmap(path, dtype=np.uint8, mode="r"))

    def unknown_layout(*_args, **_kwargs):
        raise graph_walk.GraphLayoutError("another usearch format")

    monkeypatch.setattr(vector_index, "read_graph", unknown_layout)
    index.check_all()
    assert _not_found_by_own_vector(index, keys, vectors) == []


def test_a_face_the_graph_cannot_return_is_found_through_the_side_list():
    """Deterministically: a face taken out of the graph but kept aside is still found, keys and vectors stay
    paired when part of the side list is removed, and removing a face removes it from the side list."""
    keys, vectors = _synthetic_faces(3_000, seed=5)
    index = FaceIndex(128)
    index.add(keys, vectors)
    chosen = keys[[10, 20, 30]]
    index._keep_aside(chosen)
    index.index.remove(chosen)  # the graph no longer has them: only the side list can answer
    for key in chosen:
        assert key in index.search(vectors[int(key) - 1], 216)
    index.remove(chosen[:1])
    assert chosen[0] not in index.unreachable
    for key in chosen[1:]:  # asked for one face, the side list offers its nearest: the pairs stayed aligned
        assert index.search(vectors[int(key) - 1], 1)[-1] == key


def test_faces_added_one_by_one_are_found_at_once_and_faces_they_strand_when_the_recheck_comes_round():
    """Each face added is checked as it is added. A later insert can still leave an earlier face, checked before,
    where its own vector no longer finds it (a handful per 500 single adds to 10,000 faces); the rolling recheck
    finds it on its next round, and deleting faces kept aside empties the side list."""
    keys, vectors = _synthetic_faces(10_500, seed=11)
    index = FaceIndex(128)
    index.add(keys[:10_000], vectors[:10_000], check=False)
    index.check_all()
    index.drop_snapshot()  # usearch's own walk of the graph, which these inserts change
    for key, vector in zip(keys[10_000:], vectors[10_000:], strict=True):
        index.add(np.array([key]), vector[None, :])  # as IndexFaces adds them
    assert _not_found_by_own_vector(index, keys[10_000:], vectors[10_000:]) == []
    assert len(_not_found_by_own_vector(index, keys, vectors)) <= 10
    for _ in range(2):  # the rest of this round, then the next from the first face: every face once more
        index._recheck(len(index))
    assert _not_found_by_own_vector(index, keys, vectors) == []
    index.remove(index.unreachable)
    assert len(index.unreachable) == 0


def test_the_faces_kept_aside_survive_a_save_and_load(tmp_path):
    from facegate.store.vector_index import IndexedCollection, VectorIndexes

    keys, vectors = _synthetic_faces(12_000, seed=3)

    class Source:  # the store's side of the index, for one collection
        def index_generation(self, collection):
            return 1

        def index_keys(self, collection):
            return 1, keys

        def index_embeddings(self, collection, wanted):
            return wanted, vectors[(wanted - 1).astype(np.int64)]

    class Loading(Source):  # after the build, reading embeddings would mean a rebuild
        def index_embeddings(self, collection, wanted):
            raise AssertionError("the index was rebuilt, not loaded")

    collection = IndexedCollection(1, 1.0, "dlib-resnet-v1")
    built = VectorIndexes(tmp_path, min_faces=1).rebuild(Source(), collection)
    loaded = VectorIndexes(tmp_path, min_faces=1)
    loaded.prepare(Loading(), collection)
    again = loaded._indexes[collection.pk]
    assert sorted(again.unreachable) == sorted(built.unreachable)
    assert _not_found_by_own_vector(again, keys[:3000], vectors[:3000]) == []
    # A file saved before faces were checked has no list: it is checked once on load, and saved again.
    pointer_file = tmp_path / f"{collection.pk}.json"
    meta = json.loads(pointer_file.read_text())
    del meta["unreachable"]
    pointer_file.write_text(json.dumps(meta))
    upgraded = VectorIndexes(tmp_path, min_faces=1)
    upgraded.prepare(Loading(), collection)
    assert sorted(upgraded._indexes[collection.pk].unreachable) == sorted(built.unreachable)
    upgraded.save_changed()
    assert "unreachable" in json.loads(pointer_file.read_text())


def test_the_snapshot_walk_at_full_depth_returns_the_exact_nearest_faces_in_order():
    """With a beam as deep as the collection the snapshot's walk visits every face its links reach, so its
    answer is the exact top k by int8 distance (what the beam keeps, compares and orders is checked here)."""
    keys, vectors = _synthetic_faces(3_000, seed=29)
    index = FaceIndex(128)
    index.add(keys, vectors, check=False)
    index.check_all()
    assert index.snapshot_current
    stored = index._stored(keys).astype(np.int64)
    reached = np.setdiff1d(keys, index.unreachable)
    probes = np.random.default_rng(3).normal(0, 0.05, (20, 128)).astype(np.float32)
    for probe in probes:
        distances = ((stored - quantize(probe).astype(np.int64)) ** 2).sum(axis=1)
        distances[~np.isin(keys, reached)] = np.iinfo(np.int64).max  # those come from the side list instead
        found = index._snapshot.search(quantize(probe), 10, depth=len(keys))
        assert np.array_equal(np.sort(distances[(found - 1).astype(np.int64)]), np.sort(distances)[:10])


def test_searches_running_at_once_answer_as_one_at_a_time():
    """The compiled walk releases the GIL: each search running at once has its own visited marks."""
    keys, vectors = _synthetic_faces(3_000, seed=31)
    index = FaceIndex(128)
    index.add(keys, vectors, check=False)
    index.check_all()
    probes = quantize(np.random.default_rng(5).normal(0, 0.05, (200, 128)).astype(np.float32))
    alone = [index._snapshot.search(probe, 10, depth=64) for probe in probes]
    with ThreadPoolExecutor(4) as pool:
        together = list(pool.map(lambda probe: index._snapshot.search(probe, 10, depth=64), probes))
    assert all(np.array_equal(a, b) for a, b in zip(alone, together, strict=True))


def test_faces_added_and_removed_after_the_snapshot_are_found_and_dropped_until_the_next_one(tmp_path, monkeypatch):
    from facegate.store import vector_index

    keys, vectors = _synthetic_faces(4_500, seed=31)
    index = FaceIndex(128)
    index.add(keys[:4_000], vectors[:4_000], check=False)
    index.check_all()
    index.add(keys[4_000:], vectors[4_000:])
    assert not index.snapshot_current and index._snapshot is not None
    assert _not_found_by_own_vector(index, keys, vectors) == []  # new faces: scanned exactly
    removed = np.concatenate([keys[:50], keys[4_000:4_050]])  # from the snapshot, and added since
    index.remove(removed)
    for key in removed:
        assert key not in index.search(vectors[int(key) - 1], 216)
    assert index.refresh(scratch=tmp_path)
    assert index.snapshot_current and len(index._snapshot) == 4_500  # usearch keeps removed slots
    kept = np.setdiff1d(keys, removed)
    assert _not_found_by_own_vector(index, kept, vectors[(kept - 1).astype(np.int64)]) == []
    for key in removed:
        assert key not in index.search(vectors[int(key) - 1], 216)
    # Past FRESH_MAX_FACES added since, searches go back to usearch's walk, which holds every face.
    monkeypatch.setattr(vector_index, "FRESH_MAX_FACES", 10)
    more_keys, more = _synthetic_faces(20, seed=37)
    more_keys += 10_000
    index.add(more_keys, more)
    assert index._snapshot is None
    assert _not_found_by_own_vector(index, more_keys, more) == []


def test_a_snapshot_read_behind_searches_carries_over_the_faces_added_and_removed_while_it_was_read(
    tmp_path, monkeypatch
):
    from facegate.store import vector_index

    keys, vectors = _synthetic_faces(4_600, seed=43)
    index = FaceIndex(128)
    index.add(keys[:4_000], vectors[:4_000], check=False)
    index.check_all()
    index.add(keys[4_000:4_500], vectors[4_000:4_500])
    saved = tmp_path / "graph.usearch"
    index.index.save(str(saved))
    reading, release = threading.Event(), threading.Event()

    def held_back(data):  # the read waits until the changes below are made
        reading.set()
        release.wait()
        return SavedGraph(data)

    monkeypatch.setattr(vector_index, "SavedGraph", held_back)
    old = index._snapshot
    index.refresh_behind(saved)
    try:
        assert reading.wait(10)
        index.add(keys[4_500:], vectors[4_500:])  # not in the file being read
        removed = np.concatenate([keys[:20], keys[4_000:4_020], keys[4_500:4_520]])  # old, saved, added meanwhile
        index.remove(removed[::2])
        index.remove(removed[1::2])  # a second removal finds its faces in the snapshot as well
        assert index._snapshot is old and _not_found_by_own_vector(index, keys[4_520:], vectors[4_520:]) == []
        for key in removed:
            assert key not in index.search(vectors[int(key) - 1], 216)
    finally:
        release.set()
    index.wait_refreshed()
    assert index._snapshot is not old and len(index._snapshot) == 4_500  # the saved graph (removed slots kept)
    assert sorted(index._fresh_keys) == sorted(keys[4_520:])  # added meanwhile and still there
    kept = np.setdiff1d(keys, removed)
    assert _not_found_by_own_vector(index, kept, vectors[(kept - 1).astype(np.int64)]) == []
    for key in removed:
        assert key not in index.search(vectors[int(key) - 1], 216)


def test_a_graph_mapped_from_its_file_is_searched_and_copied_into_memory_by_the_first_change(tmp_path):
    keys, vectors = _synthetic_faces(3_000, seed=41)
    index = FaceIndex(128)
    index.add(keys[:2_500], vectors[:2_500], check=False)
    index.check_all()
    saved = tmp_path / "graph.usearch"
    index.index.save(str(saved))
    index.rest(saved)
    assert index.index.memory_usage < 2**20  # mapped, not held (usearch counts only its own allocations)
    assert _not_found_by_own_vector(index, keys[:2_500], vectors[:2_500]) == []
    index.remove(keys[:10])  # usearch cannot remove from a mapped graph: the change copies it in first
    index.add(keys[2_500:], vectors[2_500:])
    assert len(index) == 2_990 and not index.index.contains(keys[0])
    kept = keys[10:]
    assert _not_found_by_own_vector(index, kept, vectors[10:]) == []
    with pytest.raises(ValueError):
        index.rest(saved)  # the file no longer holds this graph

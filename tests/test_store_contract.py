"""The store contract: what every store implementation must do, whatever database is behind it.

Every test runs once per entry of ``IMPLEMENTATIONS``, one test per behaviour of a port (``facegate.store``).
Embeddings are synthetic (random float32, 128-d): these are store tests, no face is detected.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import pytest

from facegate.errors import ResourceAlreadyExistsException
from facegate.store import (
    AccessKey,
    Collection,
    ConsoleSession,
    ConsoleUser,
    JobFinding,
    ObjectSource,
    Organisation,
    PolicyState,
    ReviewCase,
    ReviewDecision,
    Store,
    StoredFace,
    StoredUser,
    UseCase,
    VideoJob,
)
from facegate.store.sqlite import SqliteStore


@dataclasses.dataclass(frozen=True)
class Implementation:
    """How to open a store on the data of one test: ``place`` names the fixture that gives each test its own
    empty place for data (a directory, a database URL), and ``open`` opens a store there. Called again on the
    same place, ``open`` opens the same data again (a restart, or another process)."""

    place: str
    open: Callable[[Path | str], Store]


def _postgres(url: str, **options) -> Store:
    from facegate.store.postgres import PostgresStore

    return PostgresStore(url, **options)


IMPLEMENTATIONS = [
    pytest.param(Implementation("data_dir", lambda path: SqliteStore(path)), id="sqlite"),
    # The approximate index answers at every size, so nearest_faces is exercised and not only declined.
    pytest.param(Implementation("data_dir", lambda path: SqliteStore(path, ann_min_faces=1)), id="sqlite-ann"),
    # One database per test on a server started once per run (tests/conftest.py: postgres_server).
    pytest.param(Implementation("postgres_url", _postgres), id="postgresql"),
    pytest.param(Implementation("postgres_url", lambda url: _postgres(url, ann_min_faces=1)), id="postgresql-ann"),
]

OWNER = "org-a"
OTHER_OWNER = "org-b"
MODEL = "model-1"


@pytest.fixture
def data_dir(tmp_path: Path) -> Path:
    return tmp_path / "data"


@pytest.fixture(params=IMPLEMENTATIONS)
def open_store(request: pytest.FixtureRequest) -> Iterator[Callable[[], Store]]:
    """Opens a store on this test's data; each call opens another one on the same data."""
    implementation: Implementation = request.param
    place = request.getfixturevalue(implementation.place)
    opened: list[Store] = []

    def open_() -> Store:
        opened.append(implementation.open(place))
        return opened[-1]

    yield open_
    for store in opened:
        store.close()


@pytest.fixture
def store(open_store: Callable[[], Store]) -> Store:
    return open_store()


@pytest.fixture
def rng() -> np.random.Generator:
    return np.random.default_rng(12)


@pytest.fixture
def collection(store: Store) -> Collection:
    return store.create_collection(OWNER, "people", MODEL, {})


def make_faces(
    rng: np.random.Generator,
    face_ids: list[str],
    *,
    image_hash: str = "image-1",
    external_image_id: str | None = None,
    indexed_at: float = 1_000.0,
) -> list[StoredFace]:
    """The faces of one image, each with its own embedding."""
    return [
        StoredFace(
            face_id=face_id,
            image_id=f"id-{image_hash}",
            external_image_id=external_image_id,
            box=(0.25, 0.5, 0.125 * i, 0.0625),
            confidence=99.5 - i,
            image_hash=image_hash,
            model_version=MODEL,
            indexed_at=indexed_at,
            embedding=rng.normal(0.0, 0.1, 128).astype(np.float32),
        )
        for i, face_id in enumerate(face_ids)
    ]


_ID_FIELD = {StoredFace: "face_id", StoredUser: "user_id", Collection: "collection_id"}


def ids(items: list[StoredFace] | list[StoredUser] | list[Collection]) -> list[str]:
    """The ids of faces, users or collections, in the order given."""
    return [getattr(item, _ID_FIELD[type(item)]) for item in items]


def without_embedding(face: StoredFace) -> StoredFace:
    return dataclasses.replace(face, embedding=None)


def current(store: Store, collection: Collection) -> Collection:
    """The collection as stored now (a ``Collection`` is a snapshot: its counts do not follow writes)."""
    found = store.get_collection(collection.owner, collection.collection_id)
    assert found is not None
    return found


# Collections


def test_a_created_collection_is_read_back_as_created(store):
    before = time.time()
    created = store.create_collection(OWNER, "people", MODEL, {"team": "a"})
    assert before <= created.created_at <= time.time()
    assert (created.owner, created.collection_id, created.model_version) == (OWNER, "people", MODEL)
    assert (created.face_count, created.user_count) == (0, 0)
    assert store.get_collection(OWNER, "people") == created
    assert store.tags(created) == {"team": "a"}
    assert store.get_collection(OWNER, "nobody") is None


def test_collections_are_listed_in_id_order_a_page_at_a_time(store):
    for collection_id in ["c", "a", "d", "b"]:
        store.create_collection(OWNER, collection_id, MODEL, {})
    assert ids(store.list_collections(OWNER, None, 10)) == ["a", "b", "c", "d"]
    assert ids(store.list_collections(OWNER, None, 2)) == ["a", "b"]
    assert ids(store.list_collections(OWNER, "b", 2)) == ["c", "d"]
    assert ids(store.list_collections(OWNER, "bb", 10)) == ["c", "d"]  # the page token need not exist
    assert store.list_collections(OWNER, "d", 2) == []


def test_a_second_collection_with_the_same_id_is_refused_and_writes_nothing(store):
    first = store.create_collection(OWNER, "people", MODEL, {"team": "a"})
    with pytest.raises(ResourceAlreadyExistsException):
        store.create_collection(OWNER, "people", "model-2", {"team": "b", "extra": "x"})
    assert store.get_collection(OWNER, "people") == first
    assert store.tags(first) == {"team": "a"}
    assert ids(store.list_collections(OWNER, None, 10)) == ["people"]


def test_owners_do_not_see_each_others_collections(store):
    own = store.create_collection(OWNER, "shared-name", MODEL, {})
    store.create_collection(OWNER, "a-only", MODEL, {})
    theirs = store.create_collection(OTHER_OWNER, "shared-name", MODEL, {})
    assert theirs.pk != own.pk
    assert store.get_collection(OTHER_OWNER, "shared-name") == theirs
    assert store.get_collection(OTHER_OWNER, "a-only") is None
    assert store.list_collections(OTHER_OWNER, None, 10) == [theirs]
    assert ids(store.list_collections(OWNER, None, 10)) == ["a-only", "shared-name"]
    assert store.list_collections("org-c", None, 10) == []


def test_deleting_a_collection_deletes_everything_in_it(store, rng):
    doomed = store.create_collection(OWNER, "people", MODEL, {"jurisdiction": "US-IL"})
    kept = store.create_collection(OWNER, "kept", MODEL, {"jurisdiction": "US-IL"})
    faces = make_faces(rng, ["f1", "f2"], image_hash="h1")
    store.add_faces(doomed, faces)
    store.add_faces(kept, make_faces(rng, ["k1"], image_hash="h1"))
    store.create_user(doomed, "alice")
    store.set_face_user(doomed, ["f1"], "alice")
    store.set_retention(doomed, {"max_days": 30})
    store.remember_request(doomed, "IndexFaces", "token-1", "fingerprint-1")

    store.delete_collection(store.get_collection(OWNER, "people"))

    assert store.get_collection(OWNER, "people") is None
    assert ids(store.list_collections(OWNER, None, 10)) == ["kept"]
    assert ids(store.collections_tagged("jurisdiction", "US-IL")) == ["kept"]
    assert store.retention_rules() == []
    # A caller still holding the deleted collection finds nothing in it.
    assert store.list_faces(doomed, None, 10) == []
    assert store.list_users(doomed, None, 10) == []
    assert store.tags(doomed) == {}
    assert store.recall_request(doomed, "IndexFaces", "token-1") is None
    assert store.gallery(doomed).face_ids == []
    assert ids(store.list_faces(kept, None, 10)) == ["k1"]
    reborn = store.create_collection(OWNER, "people", MODEL, {})
    assert (reborn.face_count, reborn.user_count) == (0, 0)
    assert store.list_faces(reborn, None, 10) == []
    assert store.list_users(reborn, None, 10) == []
    assert store.get_user(reborn, "alice") is None
    assert store.tags(reborn) == {}
    assert store.recall_request(reborn, "IndexFaces", "token-1") is None
    assert store.faces_of_image(reborn, "h1", None) == []
    assert store.gallery(reborn).face_ids == []
    # The same image is indexed afresh, not answered with the deleted collection's faces.
    again = make_faces(rng, ["f3"], image_hash="h1")
    assert ids(store.add_faces(reborn, again)) == ["f3"]


def test_a_deleted_collections_key_is_never_given_to_the_next_collection(open_store):
    store = open_store()
    first = store.create_collection(OWNER, "one", MODEL, {})
    store.delete_collection(first)
    second = store.create_collection(OTHER_OWNER, "two", MODEL, {})
    assert second.pk > first.pk
    store.delete_collection(second)
    store.close()
    reopened = open_store()  # the high-water mark survives a restart
    assert reopened.create_collection("org-c", "three", MODEL, {}).pk > second.pk


def test_face_and_user_counts_are_kept_with_the_collection(store, collection, rng):
    assert store.add_faces(collection, []) == []
    store.add_faces(collection, make_faces(rng, ["f1", "f2", "f3"], image_hash="h1"))
    assert current(store, collection).face_count == 3
    store.add_faces(collection, make_faces(rng, ["g1", "g2", "g3"], image_hash="h1"))  # the same image again
    assert current(store, collection).face_count == 3
    store.delete_faces(collection, ["f1", "missing"])
    assert current(store, collection).face_count == 2
    store.create_user(collection, "alice")
    store.create_user(collection, "bob")
    store.set_face_user(collection, ["f2"], "alice")
    assert (current(store, collection).face_count, current(store, collection).user_count) == (2, 2)
    store.delete_user(collection, "alice")
    store.delete_user(collection, "nobody")
    assert (current(store, collection).face_count, current(store, collection).user_count) == (2, 1)
    assert [c.face_count for c in store.list_collections(OWNER, None, 10)] == [2]


def test_tags_are_added_overwritten_and_removed(store, collection):
    other = store.create_collection(OWNER, "other", MODEL, {"team": "z"})
    store.set_tags(collection, {"team": "a", "site": "north"})
    store.set_tags(collection, {"team": "b"})
    assert store.tags(collection) == {"team": "b", "site": "north"}
    store.remove_tags(collection, ["site", "never-set"])
    assert store.tags(collection) == {"team": "b"}
    assert store.tags(other) == {"team": "z"}


def test_collections_tagged_are_found_across_owners(store):
    a = store.create_collection(OWNER, "a", MODEL, {"jurisdiction": "US-IL"})
    b = store.create_collection(OTHER_OWNER, "b", MODEL, {"jurisdiction": "US-IL"})
    store.create_collection(OWNER, "eu", MODEL, {"jurisdiction": "EU-DE"})
    late = store.create_collection(OWNER, "late", MODEL, {})
    store.set_tags(late, {"jurisdiction": "US-IL"})
    tagged = store.collections_tagged("jurisdiction", "US-IL")
    assert sorted((c.owner, c.collection_id) for c in tagged) == [(OWNER, "a"), (OWNER, "late"), (OTHER_OWNER, "b")]
    assert {c.pk for c in tagged} == {a.pk, b.pk, late.pk}
    store.remove_tags(a, ["jurisdiction"])
    assert sorted(c.collection_id for c in store.collections_tagged("jurisdiction", "US-IL")) == ["b", "late"]
    assert store.collections_tagged("jurisdiction", "US-CA") == []


def test_retention_rules_are_set_replaced_and_cleared(store, rng):
    month = store.create_collection(OWNER, "month", MODEL, {})
    ends = store.create_collection(OTHER_OWNER, "ends", MODEL, {})
    store.create_collection(OWNER, "forever", MODEL, {})
    store.add_faces(month, make_faces(rng, ["f1"]))
    store.set_retention(month, {"max_days": 365, "until": None})
    store.set_retention(month, {"max_days": 30, "until": None})
    store.set_retention(ends, {"max_days": None, "until": 1_900_000_000.5})
    rules = {(c.owner, c.collection_id): (c, rule) for c, rule in store.retention_rules()}
    assert rules == {
        (OWNER, "month"): (current(store, month), {"max_days": 30, "until": None}),
        (OTHER_OWNER, "ends"): (ends, {"max_days": None, "until": 1_900_000_000.5}),
    }
    store.set_retention(month, None)
    assert [(c.collection_id, rule) for c, rule in store.retention_rules()] == [
        ("ends", {"max_days": None, "until": 1_900_000_000.5})
    ]


# Faces


def test_added_faces_are_read_back_field_for_field(store, collection, rng):
    added = make_faces(rng, ["f2", "f1"], external_image_id="photo.jpg")
    assert ids(store.add_faces(collection, added)) == ["f2", "f1"]
    listed = store.list_faces(collection, None, 10)
    assert listed == [without_embedding(added[1]), without_embedding(added[0])]  # in face id order, no embeddings
    assert {f.face_id: f for f in store.get_faces(collection, ["f1", "f2"])} == {
        f.face_id: without_embedding(f) for f in added
    }


def test_embeddings_come_back_exactly(store, collection, rng):
    added = make_faces(rng, ["f1", "f2", "f3"])
    added[0] = dataclasses.replace(added[0], embedding=np.array([1e-38, -0.0, 3.4e38, np.pi] * 32, np.float32))
    store.add_faces(collection, added)
    found = {f.face_id: f for f in store.get_faces(collection, ["f3", "f1", "f2", "missing"], with_embeddings=True)}
    assert set(found) == {"f1", "f2", "f3"}
    for face in added:
        embedding = found[face.face_id].embedding
        assert embedding.dtype == np.float32 and embedding.shape == (128,)
        assert embedding.tobytes() == face.embedding.tobytes()
        assert without_embedding(found[face.face_id]) == without_embedding(face)


def test_the_same_image_is_stored_once_per_external_image_id(store, collection, rng):
    """Faces of an image already stored under the same ExternalImageId are answered, and nothing is written."""
    first = make_faces(rng, ["f-b", "f-a"], image_hash="h1", external_image_id="x")
    store.add_faces(collection, first)
    again = store.add_faces(collection, make_faces(rng, ["g-1", "g-2"], image_hash="h1", external_image_id="x"))
    assert ids(again) == ["f-b", "f-a"]  # the stored faces, in the order they were added
    assert ids(store.faces_of_image(collection, "h1", "x")) == ["f-b", "f-a"]
    assert ids(store.list_faces(collection, None, 10)) == ["f-a", "f-b"]
    assert sorted(store.gallery(collection).face_ids) == ["f-a", "f-b"]

    assert ids(store.add_faces(collection, make_faces(rng, ["y-1"], image_hash="h1", external_image_id="y"))) == ["y-1"]
    assert ids(store.add_faces(collection, make_faces(rng, ["n-1"], image_hash="h1"))) == ["n-1"]
    assert ids(store.add_faces(collection, make_faces(rng, ["n-2"], image_hash="h1"))) == ["n-1"]
    assert ids(store.faces_of_image(collection, "h1", None)) == ["n-1"]
    assert store.faces_of_image(collection, "h2", None) == []
    assert current(store, collection).face_count == 4


def test_faces_are_listed_in_face_id_order_a_page_at_a_time_and_filtered(store, collection, rng):
    for i, face_id in enumerate(["f3", "f0", "f4", "f1", "f2"]):
        store.add_faces(collection, make_faces(rng, [face_id], image_hash=f"h{i}"))
    assert ids(store.list_faces(collection, None, 2)) == ["f0", "f1"]
    assert ids(store.list_faces(collection, "f1", 2)) == ["f2", "f3"]
    assert ids(store.list_faces(collection, "f3", 2)) == ["f4"]
    store.create_user(collection, "alice")
    store.set_face_user(collection, ["f3", "f1"], "alice")
    assert ids(store.list_faces(collection, None, 10, user_id="alice")) == ["f1", "f3"]
    assert ids(store.list_faces(collection, "f1", 10, user_id="alice")) == ["f3"]
    assert ids(store.list_faces(collection, None, 10, face_ids=["f4", "f0", "missing"])) == ["f0", "f4"]
    assert ids(store.list_faces(collection, None, 10, user_id="alice", face_ids=["f0", "f1"])) == ["f1"]
    assert store.list_faces(collection, None, 10, face_ids=[]) == []


def test_faces_belong_to_their_collection_only(store, collection, rng):
    other = store.create_collection(OWNER, "other", MODEL, {})
    store.add_faces(collection, make_faces(rng, ["f1"], image_hash="h1"))
    store.create_user(other, "alice")
    assert store.list_faces(other, None, 10) == []
    assert store.get_faces(other, ["f1"]) == []
    assert store.faces_of_image(other, "h1", None) == []
    assert store.delete_faces(other, ["f1"]) == []
    store.set_face_user(other, ["f1"], "alice")
    assert store.get_faces(collection, ["f1"])[0].user_id is None
    assert store.gallery(other).face_ids == []
    assert ids(store.list_faces(collection, None, 10)) == ["f1"]


def test_delete_faces_answers_only_the_faces_it_deleted(store, collection, rng):
    store.add_faces(collection, make_faces(rng, ["f1", "f2", "f3"]))
    assert store.delete_faces(collection, []) == []
    assert sorted(store.delete_faces(collection, ["f3", "missing", "f1"])) == ["f1", "f3"]
    assert store.delete_faces(collection, ["f1"]) == []
    assert ids(store.list_faces(collection, None, 10)) == ["f2"]
    assert ids(store.get_faces(collection, ["f1", "f2", "f3"])) == ["f2"]


def test_faces_indexed_before_a_cutoff_oldest_first(store, collection, rng):
    for face_id, at in [("late", 300.0), ("early", 100.0), ("middle", 200.0)]:
        store.add_faces(collection, make_faces(rng, [face_id], image_hash=face_id, indexed_at=at))
    other = store.create_collection(OWNER, "other", MODEL, {})
    store.add_faces(other, make_faces(rng, ["elsewhere"], indexed_at=50.0))
    assert ids(store.faces_indexed_before(collection, 250.0)) == ["early", "middle"]
    assert store.faces_indexed_before(collection, 100.0) == []  # strictly before
    assert ids(store.faces_indexed_before(collection, float("inf"))) == ["early", "middle", "late"]
    assert store.faces_indexed_before(collection, float("-inf")) == []


# Users


def test_users_are_created_listed_a_page_at_a_time_and_deleted(store, collection):
    other = store.create_collection(OWNER, "other", MODEL, {})
    before = time.time()
    for user_id in ["u2", "u1", "u3"]:
        store.create_user(collection, user_id)
    user = store.get_user(collection, "u1")
    assert (user.user_id, user.status, user.face_count) == ("u1", "ACTIVE", 0)
    assert before <= user.created_at <= time.time()
    assert ids(store.list_users(collection, None, 10)) == ["u1", "u2", "u3"]
    assert ids(store.list_users(collection, "u1", 1)) == ["u2"]
    assert store.get_user(collection, "nobody") is None
    assert store.get_user(other, "u1") is None
    assert store.list_users(other, None, 10) == []
    store.delete_user(collection, "u2")
    assert store.get_user(collection, "u2") is None
    assert ids(store.list_users(collection, None, 10)) == ["u1", "u3"]


def test_faces_are_associated_with_a_user_and_let_go_when_it_is_deleted(store, collection, rng):
    store.add_faces(collection, make_faces(rng, ["f1", "f2", "f3"]))
    store.create_user(collection, "alice")
    store.set_face_user(collection, [], "alice")
    store.set_face_user(collection, ["f1", "f2", "f3"], "alice")
    store.set_face_user(collection, ["f3"], None)
    assert store.get_user(collection, "alice").face_count == 2
    assert [u.face_count for u in store.list_users(collection, None, 10)] == [2]
    assert {f.face_id: f.user_id for f in store.list_faces(collection, None, 10)} == {
        "f1": "alice",
        "f2": "alice",
        "f3": None,
    }
    store.delete_faces(collection, ["f2"])
    assert store.get_user(collection, "alice").face_count == 1
    store.delete_user(collection, "alice")
    assert {f.face_id: f.user_id for f in store.list_faces(collection, None, 10)} == {"f1": None, "f3": None}
    assert store.list_faces(collection, None, 10, user_id="alice") == []


# Search


def test_each_gallery_row_belongs_to_its_face(store, collection, rng):
    added = make_faces(rng, ["f1", "f2", "f3"])
    store.add_faces(collection, added)
    store.create_user(collection, "alice")
    store.set_face_user(collection, ["f2"], "alice")
    gallery = store.gallery(collection)
    assert sorted(gallery.face_ids) == ["f1", "f2", "f3"]
    assert gallery.embeddings.dtype == np.float32 and gallery.embeddings.shape == (3, 128)
    by_id = {f.face_id: f.embedding for f in added}
    for i, face_id in enumerate(gallery.face_ids):
        assert gallery.embeddings[i].tobytes() == by_id[face_id].tobytes()
        assert gallery.user_ids[i] == ("alice" if face_id == "f2" else None)
    assert np.allclose(gallery.squared_norms, (gallery.embeddings**2).sum(axis=1))


def test_the_gallery_follows_adds_deletes_and_associations(store, collection, rng):
    assert store.gallery(collection).face_ids == []
    assert len(store.gallery(collection).embeddings) == 0
    store.add_faces(collection, make_faces(rng, ["f1", "f2"], image_hash="h1"))
    assert sorted(store.gallery(collection).face_ids) == ["f1", "f2"]
    store.add_faces(collection, make_faces(rng, ["f3"], image_hash="h2"))
    assert sorted(store.gallery(collection).face_ids) == ["f1", "f2", "f3"]
    store.create_user(collection, "alice")
    store.set_face_user(collection, ["f1"], "alice")
    gallery = store.gallery(collection)
    assert dict(zip(gallery.face_ids, gallery.user_ids, strict=True))["f1"] == "alice"
    store.delete_faces(collection, ["f2"])
    assert sorted(store.gallery(collection).face_ids) == ["f1", "f3"]
    store.delete_user(collection, "alice")
    assert store.gallery(collection).user_ids == [None, None]


def test_the_gallery_follows_writes_from_another_store_on_the_same_data(open_store, rng):
    """A server and a command line in another process share the data: each sees the other's writes."""
    writer, reader = open_store(), open_store()
    collection = writer.create_collection(OWNER, "g", MODEL, {})
    writer.add_faces(collection, make_faces(rng, ["a"], image_hash="h1"))
    assert reader.gallery(collection).face_ids == ["a"]
    writer.add_faces(collection, make_faces(rng, ["b"], image_hash="h2"))
    gallery = reader.gallery(collection)
    assert sorted(gallery.face_ids) == ["a", "b"] and gallery.embeddings.shape == (2, 128)
    writer.delete_faces(collection, ["a"])
    assert reader.gallery(collection).face_ids == ["b"]


def test_nearest_faces_are_current_faces_with_their_embeddings(store, collection, rng):
    """Either no candidates (None: search the gallery) or faces still stored, the probe's own face among them."""
    added = make_faces(rng, [f"f{i:02}" for i in range(20)])
    store.add_faces(collection, added)
    stored = {f.face_id: f.embedding for f in added}
    probe = stored["f07"]
    candidates = store.nearest_faces(current(store, collection), probe, 5)
    if candidates is not None:
        assert 0 < len(candidates) <= 5
        assert "f07" in ids(candidates)
        for face in candidates:
            assert face.embedding.tobytes() == stored[face.face_id].tobytes()
    store.delete_faces(collection, ["f07"])
    after = store.nearest_faces(current(store, collection), probe, 5)
    assert after is None or (after and "f07" not in ids(after) and set(ids(after)) <= set(stored))
    assert store.nearest_faces(current(store, store.create_collection(OWNER, "empty", MODEL, {})), probe, 5) in (
        None,
        [],
    )


def test_vector_indexes_are_rebuilt_and_prepared_from_the_stored_faces(open_store, rng):
    store = open_store()
    collection = store.create_collection(OWNER, "people", MODEL, {})
    store.create_collection(OWNER, "empty", MODEL, {})
    added = make_faces(rng, ["f1", "f2", "f3"])
    store.add_faces(collection, added)
    assert store.rebuild_vector_index(current(store, collection)) in (0, 3)  # 0: small enough to need none
    store.close()
    reopened = open_store()
    assert reopened.prepare_vector_indexes() in (0, 1)  # never the empty collection
    candidates = reopened.nearest_faces(current(reopened, collection), added[1].embedding, 2)
    assert candidates is None or "f2" in ids(candidates)


# Request tokens


def test_request_tokens_are_recalled_per_collection_and_operation(open_store):
    store = open_store()
    collection = store.create_collection(OWNER, "people", MODEL, {})
    other = store.create_collection(OWNER, "other", MODEL, {})
    assert store.recall_request(collection, "IndexFaces", "t1") is None
    store.remember_request(collection, "IndexFaces", "t1", "fingerprint-index")
    store.remember_request(collection, "DeleteFaces", "t1", "fingerprint-delete")
    assert store.recall_request(collection, "IndexFaces", "t1") == "fingerprint-index"
    assert store.recall_request(collection, "DeleteFaces", "t1") == "fingerprint-delete"
    assert store.recall_request(collection, "IndexFaces", "t2") is None
    assert store.recall_request(other, "IndexFaces", "t1") is None
    store.close()
    assert open_store().recall_request(collection, "IndexFaces", "t1") == "fingerprint-index"


# Access keys


def _organisation(name: str = "acme", groups: tuple[str, ...] = ()) -> Organisation:
    return Organisation(name, "commercial", "EU-DE", "active", groups, 1_700_000_000.25)


def _use_case(use_case_id: str, organisation: str = "acme", **changes) -> UseCase:
    use_case = UseCase(
        use_case_id=use_case_id,
        organisation=organisation,
        purpose="access_control",
        collections=("staff",),
        valid_from=1_700_000_000.0,
        valid_until=1_800_000_000.0,
        legal_basis="consent",
        authorisation_reference="DPA-7",
        approver="dpo@acme.example",
        status="active",
        created_at=1_700_000_100.0,
    )
    return dataclasses.replace(use_case, **changes)


def test_keys_are_read_back_counted_and_revoked(store):
    store.add_organisation(_organisation())
    store.add_use_case(_use_case("uc-1"))
    client = AccessKey("AKIAEXAMPLE", OWNER, "client", b"sealed\x00secret\xff", 1_700_000_000.5, use_case_id="uc-1")
    admin = AccessKey("FGADEXAMPLE", "operators", "admin", b"another sealed secret", 1_700_000_001.0)
    store.add_key(client)
    assert (store.count_keys("client"), store.count_keys("admin")) == (1, 0)
    store.add_key(admin)
    assert store.get_key("AKIAEXAMPLE") == client
    assert store.get_key("FGADEXAMPLE") == admin
    assert store.get_key("AKIAUNKNOWN") is None
    assert (store.count_keys("client"), store.count_keys("admin")) == (1, 1)
    before = time.time()
    assert store.revoke_key("AKIAEXAMPLE") is True
    revoked = store.get_key("AKIAEXAMPLE")
    assert before <= revoked.revoked_at <= time.time()
    assert dataclasses.replace(revoked, revoked_at=None) == client
    assert store.revoke_key("AKIAEXAMPLE") is False  # already revoked: its revocation time stays
    assert store.get_key("AKIAEXAMPLE").revoked_at == revoked.revoked_at
    assert store.revoke_key("AKIAUNKNOWN") is False
    assert store.get_key("FGADEXAMPLE").revoked_at is None


# Governance


def test_every_governance_change_moves_the_generation(open_store, rng):
    store = open_store()
    changes = [
        lambda: store.set_setting("moratorium", "on"),
        lambda: store.set_setting("moratorium", None),
        lambda: store.add_organisation(_organisation()),
        lambda: store.update_organisation("acme", status="suspended", reason="audit"),
        lambda: store.update_organisation("acme", groups=("exempt",)),
        lambda: store.add_use_case(_use_case("uc-1")),
        lambda: store.set_use_case_status("uc-1", "revoked", "purpose ended"),
        lambda: store.set_policy_state(PolicyState("illinois-bipa", True, {}, 1.0, "enacted")),
        lambda: store.add_key(AccessKey("AKIAEXAMPLE", OWNER, "client", b"sealed", 1.0)),
        lambda: store.revoke_key("AKIAEXAMPLE"),
    ]
    generation = store.governance_generation()
    for change in changes:
        change()
        assert store.governance_generation() > generation
        generation = store.governance_generation()
    # Faces and collections are not governance: each IndexFaces would otherwise reload the policies.
    collection = store.create_collection(OWNER, "people", MODEL, {})
    store.add_faces(collection, make_faces(rng, ["f1"]))
    assert store.governance_generation() == generation
    store.close()
    assert open_store().governance_generation() == generation


def test_settings_are_set_replaced_and_cleared(store):
    assert store.get_setting("moratorium") is None
    store.set_setting("moratorium", "on")
    store.set_setting("moratorium", "off")
    assert store.get_setting("moratorium") == "off"
    store.set_setting("moratorium", None)
    assert store.get_setting("moratorium") is None
    # A setting's name cannot reach the store's own bookkeeping.
    generation = store.governance_generation()
    assert store.get_setting("governance_generation") is None
    store.set_setting("governance_generation", "0")
    assert store.get_setting("governance_generation") == "0"
    assert store.governance_generation() > generation


def test_organisations_are_read_back_listed_by_name_and_updated(store):
    acme, city = _organisation("acme", ("exempt", "pilot")), _organisation("city-of-x")
    store.add_organisation(city)
    store.add_organisation(acme)
    assert store.get_organisation("acme") == acme
    assert store.get_organisation("city-of-x") == city  # no groups: an empty tuple, not None
    assert store.get_organisation("nobody") is None
    assert store.list_organisations() == [acme, city]
    with pytest.raises(ResourceAlreadyExistsException):
        store.add_organisation(dataclasses.replace(acme, category="ngo"))
    assert store.get_organisation("acme") == acme
    store.update_organisation("acme", status="suspended", reason="unpaid audit")
    assert store.get_organisation("acme") == dataclasses.replace(acme, status="suspended", status_reason="unpaid audit")
    store.update_organisation("acme", groups=("exempt",))
    assert store.get_organisation("acme") == dataclasses.replace(
        acme, status="suspended", status_reason="unpaid audit", groups=("exempt",)
    )


def test_use_cases_are_read_back_listed_oldest_first_and_revoked(store):
    store.add_organisation(_organisation("acme"))
    store.add_organisation(_organisation("city-of-x"))
    later = _use_case("uc-later", created_at=1_700_000_500.0)
    anywhere = _use_case(
        "uc-any", collections=None, valid_until=None, legal_basis=None, authorisation_reference=None, approver=None
    )
    city = _use_case("uc-city", organisation="city-of-x", created_at=1_700_000_300.0)
    for use_case in [later, anywhere, city]:
        store.add_use_case(use_case)
    assert store.get_use_case("uc-any") == anywhere  # None: any collection of the organisation
    assert store.get_use_case("uc-later") == later
    assert store.get_use_case("uc-unknown") is None
    assert store.list_use_cases() == [anywhere, city, later]
    assert store.list_use_cases("acme") == [anywhere, later]
    assert store.list_use_cases("nobody") == []
    store.set_use_case_status("uc-later", "revoked", "purpose ended")
    assert store.get_use_case("uc-later") == dataclasses.replace(later, status="revoked", status_reason="purpose ended")


def test_policy_states_are_read_back_and_replaced(store):
    assert store.policy_states() == {}
    bipa = PolicyState("illinois-bipa", True, {"retention_years": 3, "notice": {"langs": ["en", "es"]}}, 10.5, "law")
    moratorium = PolicyState("moratorium", False, {}, 11.0, "lifted")
    store.set_policy_state(bipa)
    store.set_policy_state(moratorium)
    assert store.policy_states() == {"illinois-bipa": bipa, "moratorium": moratorium}
    replaced = PolicyState("illinois-bipa", False, {"retention_years": 1}, 12.0, "repealed")
    store.set_policy_state(replaced)
    assert store.policy_states() == {"illinois-bipa": replaced, "moratorium": moratorium}


# All ports


def test_what_was_written_is_there_after_reopening(open_store, rng):
    store = open_store()
    collection = store.create_collection(OWNER, "people", MODEL, {"team": "a"})
    added = make_faces(rng, ["f1", "f2"], external_image_id="photo.jpg")
    store.add_faces(collection, added)
    store.create_user(collection, "alice")
    store.set_face_user(collection, ["f1"], "alice")
    store.set_retention(collection, {"max_days": 30})
    store.add_organisation(_organisation())
    store.add_use_case(_use_case("uc-1"))
    key = AccessKey("AKIAEXAMPLE", OWNER, "client", b"sealed", 1.0, use_case_id="uc-1")
    store.add_key(key)
    state = PolicyState("illinois-bipa", True, {"retention_years": 3}, 1.0, "law")
    store.set_policy_state(state)
    store.set_setting("moratorium", "on")
    written = current(store, collection)
    generation = store.governance_generation()
    store.close()

    reopened = open_store()
    assert reopened.get_collection(OWNER, "people") == written
    assert reopened.tags(written) == {"team": "a"}
    faces = {f.face_id: f for f in reopened.get_faces(written, ["f1", "f2"], with_embeddings=True)}
    for face in added:
        assert faces[face.face_id].embedding.tobytes() == face.embedding.tobytes()
    assert faces["f1"].user_id == "alice" and reopened.get_user(written, "alice").face_count == 1
    assert reopened.retention_rules() == [(written, {"max_days": 30})]
    assert sorted(reopened.gallery(written).face_ids) == ["f1", "f2"]
    assert reopened.get_key("AKIAEXAMPLE") == key
    assert reopened.get_use_case("uc-1") == _use_case("uc-1")
    assert reopened.list_organisations() == [_organisation()]
    assert reopened.policy_states() == {"illinois-bipa": state}
    assert reopened.get_setting("moratorium") == "on"
    assert reopened.governance_generation() == generation


def test_object_sources_belong_to_their_organisation(open_store):
    store = open_store()
    photos = ObjectSource("acme", "photos", "dir", "/srv/acme/photos", 1_700_000_000.5)
    store.add_source(photos)
    bucket = ObjectSource("city-of-x", "photos", "s3", '{"endpoint": "http://s3"}', 1_700_000_001.0, b"\x00sealed")
    store.add_source(bucket)
    assert store.get_source("city-of-x", "photos") == bucket  # the sealed secret as bytes, exactly
    assert store.get_source("acme", "photos") == photos
    assert store.get_source("acme", "other") is None
    assert store.get_source("someone-else", "photos") is None  # the same name of another organisation: not theirs
    with pytest.raises(ResourceAlreadyExistsException):
        store.add_source(dataclasses.replace(photos, location="/elsewhere"))
    assert [s.owner for s in store.list_sources()] == ["acme", "city-of-x"]
    assert store.list_sources("acme") == [photos]
    generation = store.governance_generation()
    assert store.remove_source("acme", "photos") is True
    assert store.governance_generation() > generation  # gates caching sources reload them
    assert store.remove_source("acme", "photos") is False
    store.close()
    reopened = open_store()
    assert reopened.get_source("acme", "photos") is None
    assert [s.owner for s in reopened.list_sources()] == ["city-of-x"]


def _job(job_id: str, owner: str = "acme", token: str | None = None, api: str = "FaceSearch") -> VideoJob:
    return VideoJob(
        job_id=job_id,
        owner=owner,
        api=api,
        status="IN_PROGRESS",
        request={"Video": {"S3Object": {"Bucket": "cams", "Name": "door.mp4"}}, "CollectionId": "staff"},
        requester={"principal": {"access_key_id": "AKIA1", "owner": owner, "role": "client", "use_case_id": None}},
        created_at=1_700_000_000.0 + int(job_id.removeprefix("job-")),
        updated_at=1_700_000_000.0,
        client_token=token,
        fingerprint="f1" if token else None,
    )


def test_video_jobs_belong_to_their_organisation_and_repeat_by_client_token(open_store):
    store = open_store()
    first = store.add_job(_job("job-1", token="t-1"))
    assert store.get_job("acme", "job-1") == first
    assert store.get_job("city-of-x", "job-1") is None  # another organisation's job id: not theirs
    assert store.add_job(_job("job-2", token="t-1")) == first  # the same token: the earlier job, nothing new
    assert store.add_job(_job("job-3", token="t-1", api="FaceDetection")).job_id == "job-3"  # per api
    assert store.add_job(_job("job-4", owner="city-of-x", token="t-1")).job_id == "job-4"  # per organisation
    store.add_job(_job("job-55"))
    assert [j.job_id for j in store.list_jobs("acme")] == ["job-55", "job-3", "job-1"]  # newest first
    assert {j.job_id for j in store.list_jobs(status="IN_PROGRESS")} == {"job-1", "job-3", "job-4", "job-55"}
    store.close()
    assert open_store().get_job("acme", "job-1") == first


def test_a_video_job_is_run_by_the_worker_that_claimed_it_and_findings_are_ordered(open_store):
    store = open_store()
    store.add_job(_job("job-1"))
    claimed = store.claim_job("job-1", "host:1:a", None)
    assert claimed is not None and claimed.worker == "host:1:a" and claimed.attempts == 1
    assert store.claim_job("job-1", "host:2:b", None) is None  # already claimed: a second worker does not get it
    findings = [
        JobFinding(1000, 1, {"face": "b1"}),
        JobFinding(0, 0, {"face": "a0"}),
        JobFinding(1000, 0, {"face": "a1"}),
        JobFinding(500, 1, {"face": "b0"}),
    ]
    metadata = {"Codec": "h264", "DurationMillis": 2000}
    assert store.record_job_progress("job-1", "host:1:a", findings[:2], 500, metadata)
    assert store.record_job_progress("job-1", "host:1:a", findings[2:], 1000)
    assert not store.record_job_progress("job-1", "host:2:b", [JobFinding(0, 9, {})], 2000)  # not its job
    job = store.get_job("acme", "job-1")
    assert job.progress_ms == 1000 and job.video_metadata == metadata
    by_time = [f.body["face"] for f in store.job_findings("job-1", "TIMESTAMP", 0, 10)]
    assert by_time == ["a0", "b0", "a1", "b1"]
    assert [f.body["face"] for f in store.job_findings("job-1", "INDEX", 0, 10)] == ["a0", "a1", "b0", "b1"]
    assert [f.body["face"] for f in store.job_findings("job-1", "INDEX", 1, 2)] == ["a1", "b0"]
    # Taken over (its worker died): started again from nothing, the findings of the first attempt gone.
    again = store.claim_job("job-1", "host:2:b", "host:1:a")
    assert again.attempts == 2 and again.progress_ms == 0
    assert store.job_findings("job-1", "TIMESTAMP", 0, 10) == []
    assert store.finish_job("job-1", "host:1:a", "SUCCEEDED", None) is None  # the old worker cannot finish it
    done = store.finish_job("job-1", "host:2:b", "FAILED", "The video is truncated.")
    assert done.status == "FAILED" and done.status_message == "The video is truncated." and done.worker is None
    assert store.finish_job("job-1", "host:2:b", "SUCCEEDED", None) is None  # finished once
    assert store.claim_job("job-1", "host:3:c", None) is None  # a finished job is never claimed
    assert store.list_jobs(status="IN_PROGRESS") == []


def _case(case_id: str, owner: str = "acme", created: float = 1_700_000_000.0) -> ReviewCase:
    return ReviewCase(
        case_id=case_id,
        owner=owner,
        operation="SearchFacesByImage",
        status="open",
        reviewers_required=2,
        withheld=True,
        facts={"collection": "suspects", "threshold_applied": 99.0},
        candidates=[{"rank": 1, "similarity": 99.5, "face": {"face_id": "f-1"}}],
        requester="AKIA1",
        request_id="r-1",
        created_at=created,
        updated_at=created,
        probe_crop=b"\xff\xd8 a jpeg",
    )


def test_review_cases_take_one_decision_per_reviewer_and_close_once(open_store):
    from facegate.review import settle

    store = open_store()
    store.add_case(_case("c-1"))
    store.add_case(_case("c-2", owner="city-of-x", created=1_700_000_001.0))
    assert store.get_case("c-1") == _case("c-1")
    assert [c.case_id for c in store.list_cases()] == ["c-2", "c-1"]
    assert [c.case_id for c in store.list_cases(["acme"])] == ["c-1"]
    assert store.list_cases(["acme"], status="released") == []
    first = ReviewDecision("c-1", "ana", "confirm", "f-1", 1_700_000_010.0, "same ear shape")
    assert store.decide_case(first, settle)[0] == "recorded"
    decided_again = ReviewDecision("c-1", "ana", "reject", None, 1_700_000_011.0)
    assert store.decide_case(decided_again, settle)[0] == "duplicate"  # decided once
    second = ReviewDecision("c-1", "ben", "confirm", "f-1", 1_700_000_012.0)
    result, closed = store.decide_case(second, settle)
    assert [d.reviewer for d in store.decisions("c-1")] == ["ana", "ben"] and store.decisions("c-1")[0] == first
    assert result == "recorded" and closed.status == "released" and closed.released == ["f-1"]
    assert closed.probe_crop is None
    assert store.decide_case(ReviewDecision("c-1", "cem", "reject", None, 1_700_000_013.0), settle)[0] == "not-open"
    assert store.get_case("c-1").status == "released"  # closed once
    store.close()
    assert open_store().get_case("c-1").released == ["f-1"]


def test_console_users_and_sessions(open_store):
    store = open_store()
    user = ConsoleUser("ana", "reviewer", ("acme", "city-of-x"), "$argon2id$…", 1_700_000_000.0)
    store.add_console_user(user)
    with pytest.raises(ResourceAlreadyExistsException):
        store.add_console_user(dataclasses.replace(user, role="operator"))
    assert store.get_console_user("ana") == user and store.get_console_user("nobody") is None
    store.update_console_user("ana", failed_logins=5, locked_until=1_700_000_900.0)
    locked = store.get_console_user("ana")
    assert (locked.failed_logins, locked.locked_until, locked.password_hash) == (5, 1_700_000_900.0, "$argon2id$…")
    store.update_console_user("ana", failed_logins=0, password_hash="$argon2id$new", must_change_password=False)
    assert store.get_console_user("ana").locked_until is None
    session = ConsoleSession("h-1", "ana", "csrf-1", 1_700_000_000.0, 1_700_003_600.0)
    store.add_session(session)
    store.add_session(ConsoleSession("h-2", "ana", "csrf-2", 1_700_000_000.0, 1_700_003_600.0))
    assert store.get_session("h-1") == session
    store.delete_sessions(token_hash="h-1")
    assert store.get_session("h-1") is None and store.get_session("h-2") is not None
    store.delete_sessions(username="ana")
    assert store.get_session("h-2") is None
    assert [u.username for u in store.list_console_users()] == ["ana"]


def test_thumbnails_belong_to_their_face_and_go_with_it(store, collection, rng):
    other = store.create_collection(OWNER, "other", MODEL, {})
    store.add_faces(collection, make_faces(rng, ["f1", "f2"]))
    store.add_faces(other, make_faces(rng, ["g1"], image_hash="image-2"))
    store.add_thumbnails(collection, {"f1": b"\xff\xd8one", "f2": b"\xff\xd8two", "g1": b"not this collection's"})
    assert store.thumbnails(collection, ["f1", "f2", "g1", "missing"]) == {"f1": b"\xff\xd8one", "f2": b"\xff\xd8two"}
    assert store.thumbnails(other, ["g1", "f1"]) == {}
    store.delete_faces(collection, ["f1"])
    assert store.thumbnails(collection, ["f1", "f2"]) == {"f2": b"\xff\xd8two"}  # deleted with its face
    store.delete_collection(current(store, collection))
    assert store.thumbnails(collection, ["f2"]) == {}


def test_a_decision_is_recorded_and_its_case_settled_in_one_step(open_store):
    from facegate.review import settle

    store = open_store()
    store.add_case(_case("c-9"))
    first = store.decide_case(ReviewDecision("c-9", "ana", "confirm", "f-1", 1_700_000_010.0), settle)
    assert first[0] == "recorded" and first[1].status == "open"
    again = store.decide_case(ReviewDecision("c-9", "ana", "reject", None, 1_700_000_011.0), settle)
    assert again[0] == "duplicate" and again[1].status == "open"  # one decision per reviewer
    closed = store.decide_case(ReviewDecision("c-9", "ben", "confirm", "f-1", 1_700_000_012.0), settle)
    assert closed[0] == "recorded" and closed[1].status == "released" and closed[1].released == ["f-1"]
    assert closed[1].probe_crop is None
    late = store.decide_case(ReviewDecision("c-9", "cem", "reject", None, 1_700_000_013.0), settle)
    assert late[0] == "not-open" and late[1].status == "released"
    assert [d.reviewer for d in store.decisions("c-9")] == ["ana", "ben"]  # the late reject was not recorded
    assert store.decide_case(ReviewDecision("missing", "ana", "reject", None, 1.0), settle) == ("not-open", None)


def test_failed_sign_ins_are_counted_in_the_store(store):
    store.add_console_user(ConsoleUser("ana", "reviewer", ("acme",), "$argon2id$…", 1_700_000_000.0))
    assert [store.count_failed_login("ana") for _ in range(3)] == [1, 2, 3]
    assert store.get_console_user("ana").failed_logins == 3
    assert store.count_failed_login("nobody") == 0


def test_a_jobs_review_cases_are_kept_with_it(open_store):
    store = open_store()
    store.add_job(_job("job-7"))
    assert store.get_job("acme", "job-7").review_cases is None
    store.set_job_review_cases("job-7", {"0": "c" * 32, "3": "d" * 32})
    store.close()
    assert open_store().get_job("acme", "job-7").review_cases == {"0": "c" * 32, "3": "d" * 32}

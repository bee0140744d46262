"""Approximate nearest-neighbour search over a collection's faces: one HNSW index per collection (usearch).

Why usearch rather than faiss-cpu: DeleteFaces needs removal by key, which usearch's HNSW supports directly
(faiss' HNSW cannot remove; its IVF indexes can, but need training that drifts as a collection grows); keys
are 63-bit integers derived from face ids and kept in the faces table (so the index holds no strings: at
10 million faces a key → face id map in Python would cost more memory than the graph's vectors); vectors are
int8 (a quarter of float32's bytes and half of f16's, for memory and for each face a search visits —
exactness comes from re-ranking with the true embeddings anyway); one small wheel with no BLAS/OpenMP runtime
to collide with ONNX Runtime's; and save/load to a single file.

usearch builds and holds the graph (inserts, removals, saves). Searches walk a snapshot of its bottom level read
back from the saved file (graph_search.GraphSnapshot), walked by a compiled loop that asks for each step's
memory before it needs it: at millions of faces usearch's own search is a chain of cache misses, and the
snapshot's walk overlaps them. Faces added after a snapshot is taken are scanned exactly until a save takes the
next one.

The index is DERIVED data. SQLite stays the source of truth: every index records the collection generation it
reflects, and when the store's generation has moved (another process wrote) it is reconciled against the
store's current keys before it answers. Candidates are only candidates: the store re-reads them (deleted
faces drop out there) and the service re-ranks them exactly. All ANN details live here, so a PostgreSQL store
can answer the same question with pgvector's HNSW instead.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import numpy as np
import onnxruntime  # noqa: F401 - before usearch: loaded after it into a bare process, its import crashes (segfault)
from usearch.index import Index

from facegate.store.graph_search import GraphSnapshot
from facegate.store.graph_walk import GraphLayoutError, SavedGraph, read_graph

# Below this many faces exact search is about as fast as the index and loses no recall. bench/search.py (2 cores;
# its numpy scan is FaceService's exact path), p50 exact vs index: 1.1 vs 2.0 ms at 100k, 2.6 vs 2.7 ms at 200k,
# 11.3 vs 4.7 ms at 1M (recall@10 0.991), 143 vs 7.9 ms at 10M (recall@10 0.920; 464 B per face resident).
ANN_MIN_FACES = 200_000
FORMAT = 4  # bump when the on-disk layout changes: older files are then rebuilt
# bench/search.py at 1M faces, f16 vectors: connectivity 16 with search depth 512 gave recall@10 0.956; 24 with
# 768 gave 0.994 (int8 vectors: 0.991, and p50 4.7 instead of 6.2 ms). More connectivity costs memory.
CONNECTIVITY = 24
EXPANSION_ADD = 128
MIN_EXPANSION_SEARCH = 768
# Past a million faces the same depth finds less of the true top 10, so it grows with the collection: keeping
# recall@10 at 0.99 took 768 at 1M, 1024 at 2M and 2048 at 4M in bench/search.py (depth ∝ size^0.71 fits all
# three; it held at 10M: README).
DEPTH_BASE_FACES = 1_000_000
DEPTH_GROWTH = 0.71
# usearch casts a float vector to int8 by scaling it to unit length and truncating (its int8 is meant for cosine),
# which bends l2 distances between dlib embeddings, whose lengths differ: so the index quantizes them itself and
# hands usearch int8 arrays, stored as given: round(x·VECTOR_SCALE), clipped at ±127. dlib's largest real
# component (`bench/search.py` prints it) stays inside.
VECTOR_SCALE = 200.0
# A face no chain of links reaches is found at no depth (a multi-threaded build, or later inserts pruning its
# neighbours' lists, leave a few). A walk of the links finds them cheaply; a rare face the walk reaches can still
# be missed by a search for its own vector, so up to SELF_SEARCH_MAX_FACES every face is also searched by its own
# vector (at a million faces that costs about as much as the build: bench/search.py), and each face added
# always is. A search
# for its own vector is first this shallow, then at the depth real searches use; asking for 1 result would
# leave more aside (int8 vectors can tie).
SELF_SEARCH_MAX_FACES = 1_000_000
CHECK_EXPANSION = 32
CHECK_K = 4
RECHECK_PER_ADD = 10
# Faces added since the snapshot searches use was taken are scanned exactly until the next save takes a new one;
# past this many, searches go back to usearch's own walk of the graph, which holds them.
FRESH_MAX_FACES = 50_000
SAVE_INTERVAL_S = 60.0  # incremental changes are saved at most this often; a stale file is reconciled on load
_BATCH = 10_000


def quantize(vectors: np.ndarray) -> np.ndarray:
    """Embeddings as the graph holds them: int8 steps of 1/VECTOR_SCALE."""
    return np.clip(np.rint(np.asarray(vectors, dtype=np.float32) * VECTOR_SCALE), -127, 127).astype(np.int8)


def face_key(face_id: str) -> int:
    """A 63-bit key for a face id (a collision only costs that face its ANN recall, never a wrong answer)."""
    return int.from_bytes(hashlib.blake2b(face_id.encode(), digest_size=8).digest(), "little") >> 1


@dataclass(frozen=True)
class IndexedCollection:
    """What identifies a collection across processes (a reused pk gets a new created_at)."""

    pk: int
    created_at: float
    model_version: str


class FaceSource(Protocol):
    """What the index needs from the store; SQL stays there."""

    def index_generation(self, collection: IndexedCollection) -> int: ...
    def index_keys(self, collection: IndexedCollection) -> tuple[int, np.ndarray]: ...
    def index_embeddings(self, collection: IndexedCollection, keys: np.ndarray) -> tuple[np.ndarray, np.ndarray]: ...


class FaceIndex:
    """One collection's HNSW graph over face keys, and the store generation it reflects.

    Faces the graph cannot reach (their own vector does not find them) are kept in a side list that every search
    scans exactly, so that no face in the collection is beyond search. Once a snapshot is taken (check_all,
    refresh) searches walk it; until then, and when too many faces were added since, usearch's own search."""

    def __init__(
        self,
        ndim: int,
        generation: int = -1,
        index: Index | None = None,
        unreachable: np.ndarray | None = None,
        *,
        view: bool = False,
    ) -> None:
        self.index = index or Index(
            ndim=ndim, metric="l2sq", dtype="i8", connectivity=CONNECTIVITY, expansion_add=EXPANSION_ADD
        )
        # A graph restored as a view maps its saved file (read-only: usearch cannot change it) instead of holding
        # a copy in memory; while the snapshot answers searches nothing reads it. The first change copies it in.
        self._view = view
        self.ndim = ndim
        self.generation = generation
        self._side_keys = np.zeros(0, dtype=np.uint64)
        self._side_vectors = np.zeros((0, ndim), dtype=np.float32)  # as the graph holds them, in int8 steps
        self._recheck_at = 0
        # Searches walk a snapshot of the graph (GraphSnapshot) once one is taken from a saved file; faces added
        # since are scanned exactly, and faces removed since are struck from it.
        self._snapshot: GraphSnapshot | None = None
        self._fresh_keys = np.zeros(0, dtype=np.uint64)
        self._fresh_vectors = np.zeros((0, ndim), dtype=np.float32)
        self._snapshot_changed = False
        # A snapshot being read from a newer save on a thread, while this one answers (refresh_behind).
        self._refreshing: _Refresh | None = None
        self.refresh_seconds = 0.0  # what reading the last snapshot took
        if unreachable is not None and len(unreachable):
            self._keep_aside(np.asarray(unreachable, dtype=np.uint64))

    def __len__(self) -> int:
        return len(self.index)

    @property
    def unreachable(self) -> np.ndarray:
        """Keys of the faces kept aside because the graph does not reach them."""
        return self._side_keys.copy()

    def add(self, keys: np.ndarray, embeddings: np.ndarray, *, check: bool = True) -> None:
        self._install_refreshed()
        keys = np.asarray(keys, dtype=np.uint64)
        fresh = ~np.atleast_1d(self.index.contains(keys)) if len(self.index) else np.ones(len(keys), bool)
        fresh &= _first_occurrences(keys)
        if not fresh.any():
            return
        self._writable()
        vectors = quantize(np.asarray(embeddings, dtype=np.float32)[fresh])
        self.index.add(keys[fresh], vectors, threads=1 if fresh.sum() < 1000 else 0)
        if self._refreshing is not None:  # not in the file being read: scanned exactly once it is installed
            self._refreshing.added(keys[fresh], vectors)
        if self._snapshot is not None:
            self._fresh_keys = np.concatenate([self._fresh_keys, keys[fresh]])
            self._fresh_vectors = np.concatenate([self._fresh_vectors, vectors.astype(np.float32)])
            self._snapshot_changed = True
            if len(self._fresh_keys) > FRESH_MAX_FACES:
                self.drop_snapshot()
        if check and self._snapshot is None:  # with a snapshot, new faces are scanned exactly until the next one
            self._check(keys[fresh])
            # New faces prune their neighbours' links, which can strand faces checked earlier: each add re-checks
            # RECHECK_PER_ADD earlier faces per face added, in turn, so the whole graph is re-checked by the time it
            # has grown by a tenth, a little at a time rather than in one stall.
            self._recheck(RECHECK_PER_ADD * int(fresh.sum()))

    def check_all(self, scratch: Path | None = None, saved: Path | None = None) -> int:
        """Keep aside every face no chain of the graph's links reaches (after a build: later inserts can prune
        links that earlier faces depended on), and up to SELF_SEARCH_MAX_FACES every face its own vector does
        not find. Returns how many are kept aside.

        The links are walked from the graph's saved file (``saved``, else one written under ``scratch``); if usearch
        saved a layout
        the walk does not know, every face is searched by its own vector instead, whatever the size."""
        self._side_keys = np.zeros(0, dtype=np.uint64)
        self._side_vectors = np.zeros((0, self.ndim), dtype=np.float32)
        self._recheck_at = 0
        self._refreshing = None
        self.drop_snapshot()
        graph = self._read(saved, scratch)
        if graph is not None:
            self._take_snapshot(graph)
        if graph is None or len(self.index) <= SELF_SEARCH_MAX_FACES:
            self._check(np.setdiff1d(self.keys(), self._side_keys))
        return len(self._side_keys)

    def refresh(self, saved: Path | None = None, scratch: Path | None = None) -> bool:
        """Take a new snapshot for searches from the graph as saved (after a load, or a save that follows
        changes); faces its bottom level does not reach are kept aside. False when the file could not be read."""
        self._refreshing = None
        self.drop_snapshot()  # first: the old snapshot's memory is free before the new one is read
        started = time.monotonic()
        graph = self._read(saved, scratch)
        if graph is not None:
            self._take_snapshot(graph)
        self.refresh_seconds = time.monotonic() - started
        return graph is not None

    def refresh_behind(self, saved: Path) -> None:
        """Read a new snapshot from ``saved``, a file this graph was just saved to, on a thread: the current
        snapshot answers meanwhile (at 10M faces the read takes tens of seconds, and both are in memory while it
        runs). Faces added or removed meanwhile are carried over when the next call installs it."""
        if not len(self.index) or self._refreshing is not None:  # one read at a time; the next save reads again
            return
        try:
            data = np.memmap(saved, dtype=np.uint8, mode="r")  # opened now: a later save removes the file
        except OSError:
            return
        job = _Refresh(len(self.index), self.ndim)
        job.thread = threading.Thread(target=job.read, args=(data,), name="facegate-snapshot", daemon=True)
        self._refreshing = job
        job.thread.start()

    def wait_refreshed(self) -> None:
        """Install the snapshot being read behind, once read (tests, benchmarks, and a clean shutdown)."""
        job = self._refreshing
        if job is not None and job.thread is not None:
            job.thread.join()
        self._install_refreshed()

    def _install_refreshed(self) -> None:
        job = self._refreshing
        if job is None or not job.done.is_set():
            return
        self._refreshing = None
        self.refresh_seconds = job.seconds
        if job.unreachable is None:  # the file could not be read as expected: the current snapshot stays
            return
        self.drop_snapshot()
        if job.snapshot is not None and len(job.removed_keys):
            job.snapshot.remove(job.removed_keys)
        self._keep_aside(job.unreachable)  # (faces removed meanwhile are no longer in the graph: not kept)
        if job.snapshot is None:
            return
        self._snapshot = job.snapshot
        self._fresh_keys, self._fresh_vectors = job.added_keys, job.added_vectors
        self._snapshot_changed = bool(len(job.added_keys) or len(job.removed_keys))
        if len(self._fresh_keys) > FRESH_MAX_FACES:
            self.drop_snapshot()

    def rest(self, saved: Path) -> None:
        """Map the graph from ``saved``, a file it was just saved to, instead of holding it in memory."""
        graph = Index.restore(str(saved), view=True)
        if graph is None or len(graph) != len(self.index):
            raise ValueError(f"{saved} does not hold this graph")
        self.index, self._view = graph, True

    def _writable(self) -> None:
        if self._view:
            self.index, self._view = self.index.copy(), False

    @property
    def snapshot_current(self) -> bool:
        """Whether searches walk a snapshot that holds every face (none added or removed since it was taken)."""
        return self._snapshot is not None and not self._snapshot_changed

    def drop_snapshot(self) -> None:
        self._snapshot = None
        self._fresh_keys = np.zeros(0, dtype=np.uint64)
        self._fresh_vectors = np.zeros((0, self.ndim), dtype=np.float32)
        self._snapshot_changed = False

    def _read(self, saved: Path | None, scratch: Path | None) -> SavedGraph | None:
        if not len(self.index):
            return None
        try:
            return read_graph(self.index, saved=saved, scratch=scratch)
        except (GraphLayoutError, OSError):  # another layout, or the file replaced meanwhile
            return None

    def _take_snapshot(self, graph: SavedGraph) -> None:
        self._snapshot, unreachable = _snapshot_of(graph, self.ndim)
        self._keep_aside(unreachable)

    def _recheck(self, count: int) -> None:
        size = len(self.index)
        if not size:
            return
        start = self._recheck_at % size
        keys = np.asarray(self.index.keys[start : min(size, start + count)], dtype=np.uint64)
        self._recheck_at = start + len(keys)
        stranded = self._not_found_checked(keys)
        reachable = np.setdiff1d(keys, stranded)
        # Faces a later insert linked back in leave the side list, unless a snapshot (which that insert did not
        # change) is what searches walk.
        if len(reachable) and len(self._side_keys) and self._snapshot is None:
            kept = ~np.isin(self._side_keys, reachable)
            self._side_keys, self._side_vectors = self._side_keys[kept], self._side_vectors[kept]
        if len(stranded):
            self._keep_aside(stranded)

    def _not_found_checked(self, keys: np.ndarray) -> np.ndarray:
        # usearch's shallow search (on every core) clears almost every face; the few it misses are searched as
        # real searches walk: the snapshot's walk when there is one, else usearch's at the depth searches use.
        missed = self._not_found(keys, CHECK_EXPANSION, snapshot=False)
        return self._not_found(missed, self.search_depth(CHECK_K)) if len(missed) else missed

    def _check(self, keys: np.ndarray) -> None:
        for start in range(0, len(keys), _BATCH):
            self._check_batch(keys[start : start + _BATCH])

    def _check_batch(self, keys: np.ndarray) -> None:
        # A shallow search clears almost every face cheaply; those it misses get the depth real searches use,
        # and only faces that one misses too are kept aside.
        missed = self._not_found_checked(keys)
        if len(missed):
            self._keep_aside(missed)

    def _not_found(self, keys: np.ndarray, depth: int, *, snapshot: bool = True) -> np.ndarray:
        if not len(keys):
            return keys
        stored, k = self._stored(keys), min(CHECK_K, len(self.index))
        if snapshot and self._snapshot is not None:
            return keys[[key not in self._snapshot.search(v, k, depth) for key, v in zip(keys, stored, strict=True)]]
        self.index.expansion_search = depth
        found = self.index.search(stored, k, threads=0 if len(keys) >= 1000 else 1)
        hits = np.asarray(found.keys, dtype=np.uint64).reshape(len(keys), -1) == keys[:, None]
        return keys[~hits.any(axis=1)]

    def _stored(self, keys: np.ndarray) -> np.ndarray:
        """The graph's own (int8) vectors of ``keys``: what a search compares against."""
        return np.asarray(self.index.get(keys, dtype=np.int8), dtype=np.int8).reshape(len(keys), self.ndim)

    def _keep_aside(self, keys: np.ndarray) -> None:
        keys = np.setdiff1d(keys, self._side_keys)
        keys = keys[np.atleast_1d(self.index.contains(keys))] if len(keys) else keys
        if len(keys):
            self._side_keys = np.concatenate([self._side_keys, keys])
            self._side_vectors = np.concatenate([self._side_vectors, self._stored(keys).astype(np.float32)])

    def remove(self, keys: np.ndarray) -> None:
        self._install_refreshed()
        keys = np.asarray(keys, dtype=np.uint64)
        if self._refreshing is not None:
            self._refreshing.removed(keys)
        if len(keys) and len(self.index):
            present = keys[np.atleast_1d(self.index.contains(keys))]
            if len(present):
                self._writable()  # (usearch crashes removing from a view)
                self.index.remove(present)
        if len(keys) and len(self._side_keys):
            kept = ~np.isin(self._side_keys, keys)
            self._side_keys, self._side_vectors = self._side_keys[kept], self._side_vectors[kept]
        if len(keys) and self._snapshot is not None:
            kept = ~np.isin(self._fresh_keys, keys)
            self._fresh_keys, self._fresh_vectors = self._fresh_keys[kept], self._fresh_vectors[kept]
            self._snapshot.remove(keys)
            self._snapshot_changed = True

    def keys(self) -> np.ndarray:
        return np.asarray(self.index.keys, dtype=np.uint64)

    def search(self, probe: np.ndarray, k: int, depth: int | None = None) -> np.ndarray:
        """Keys of (about) the ``k`` nearest faces: the graph's, then the nearest of those kept aside. ``depth``
        overrides the size-dependent search depth (benchmarks sweep it)."""
        self._install_refreshed()
        if not len(self.index):
            return np.zeros(0, dtype=np.uint64)
        k = min(k, len(self.index))
        depth = max(k, depth) if depth else self.search_depth(k)
        rounded = quantize(probe)
        if self._snapshot is not None:
            found = _merged(self._snapshot.search(rounded, k, depth), self._fresh_keys, self._fresh_vectors, rounded, k)
        else:
            self.index.expansion_search = depth
            found = np.asarray(self.index.search(rounded, k, threads=1).keys, dtype=np.uint64)
        return _merged(found, self._side_keys, self._side_vectors, rounded, k)

    def search_depth(self, k: int) -> int:
        """How many candidates a search of this graph keeps while it walks (usearch's expansion_search)."""
        growth = max(1.0, len(self.index) / DEPTH_BASE_FACES) ** DEPTH_GROWTH
        return max(k, round(MIN_EXPANSION_SEARCH * growth))

    def memory_bytes(self) -> int:
        return int(self.index.memory_usage) + (self._snapshot.memory_bytes() if self._snapshot else 0)


class _Refresh:
    """A snapshot read on a thread from a saved graph, and the changes made to the graph since that save."""

    def __init__(self, count: int, ndim: int) -> None:
        self.count = count
        self.ndim = ndim
        self.added_keys = np.zeros(0, dtype=np.uint64)
        self.added_vectors = np.zeros((0, ndim), dtype=np.float32)
        self.removed_keys = np.zeros(0, dtype=np.uint64)
        self.snapshot: GraphSnapshot | None = None
        self.unreachable: np.ndarray | None = None  # None until read, and when the file could not be read
        self.seconds = 0.0
        self.thread: threading.Thread | None = None
        self.done = threading.Event()

    def added(self, keys: np.ndarray, vectors: np.ndarray) -> None:
        self.added_keys = np.concatenate([self.added_keys, keys])
        self.added_vectors = np.concatenate([self.added_vectors, vectors.astype(np.float32)])

    def removed(self, keys: np.ndarray) -> None:
        kept = ~np.isin(self.added_keys, keys)
        self.added_keys, self.added_vectors = self.added_keys[kept], self.added_vectors[kept]
        self.removed_keys = np.concatenate([self.removed_keys, keys])

    def read(self, data: np.memmap) -> None:
        started = time.monotonic()
        try:
            graph = SavedGraph(data)
            if int(graph.live.sum()) != self.count:
                raise GraphLayoutError("the file does not hold the graph as saved")
            self.snapshot, self.unreachable = _snapshot_of(graph, self.ndim)
        except Exception:  # any failure (memory too) leaves the current snapshot answering
            self.snapshot, self.unreachable = None, None
        finally:
            self.seconds = time.monotonic() - started
            self.done.set()


def _snapshot_of(graph: SavedGraph, ndim: int) -> tuple[GraphSnapshot | None, np.ndarray]:
    """The snapshot searches walk, and the faces to keep aside beside it. Not int8 vectors of this width: no
    snapshot (usearch's own walk searches), and aside only the faces no level reaches."""
    if graph.row_bytes != ndim:
        return None, graph.unreachable()
    # The snapshot walks the bottom level only, so the faces kept aside are those no chain of bottom-level links
    # reaches (a superset of those no level reaches, for when searches go back to usearch's walk).
    unreachable = graph.unreachable(base_only=True)
    return GraphSnapshot(graph), unreachable


def _merged(found: np.ndarray, keys: np.ndarray, vectors: np.ndarray, rounded: np.ndarray, k: int) -> np.ndarray:
    """``found`` followed by the nearest ``k`` of the exactly scanned ``keys`` it lacks."""
    if not len(keys):
        return found
    probe = rounded.astype(np.float32)  # int8 steps: these sums of squares are exact in float32
    distances = np.einsum("ij,ij->i", vectors, vectors) - 2.0 * (vectors @ probe)
    nearest = keys[np.argsort(distances)[:k]]
    return np.concatenate([found, nearest[~np.isin(nearest, found)]])


def _first_occurrences(keys: np.ndarray) -> np.ndarray:
    mask = np.zeros(len(keys), bool)
    mask[np.unique(keys, return_index=True)[1]] = True
    return mask


class VectorIndexes:
    """The ANN indexes of one store's collections: loaded from ``directory``, built or reconciled on demand."""

    def __init__(self, directory: Path, min_faces: int = ANN_MIN_FACES) -> None:
        self.directory = directory
        self.min_faces = min_faces
        self._indexes: dict[int, FaceIndex] = {}
        self._saved_at: dict[int, float] = {}
        self._save_cost: dict[int, float] = {}
        self._collections: dict[int, IndexedCollection] = {}
        self._dirty: set[int] = set()
        self._lock = threading.RLock()

    def applies(self, face_count: int) -> bool:
        return face_count >= self.min_faces

    def candidates(self, source: FaceSource, collection: IndexedCollection, probe: np.ndarray, k: int) -> np.ndarray:
        """Keys of up to ``k`` approximate nearest faces, from an index brought up to the store's state."""
        with self._lock:
            return self._current(source, collection).search(probe, k)

    def prepare(self, source: FaceSource, collection: IndexedCollection) -> None:
        """Bring the collection's index up to the store's state now (load, reconcile or build)."""
        with self._lock:
            self._current(source, collection)

    def rebuild(self, source: FaceSource, collection: IndexedCollection) -> FaceIndex:
        """Build the collection's index from the store alone and persist it (also what the CLI can call)."""
        with self._lock:
            generation, keys = source.index_keys(collection)
            index: FaceIndex | None = None
            for start in range(0, len(keys), _BATCH):
                found, vectors = source.index_embeddings(collection, keys[start : start + _BATCH])
                if index is None and len(found):
                    index = FaceIndex(vectors.shape[1], generation)
                if index is not None:
                    index.add(found, vectors, check=False)
            index = index or FaceIndex(128, generation)
            self._indexes[collection.pk] = index
            self._save(collection, index, check=True)
            return index

    def added(self, collection: IndexedCollection, generation: int, keys: np.ndarray, vectors: np.ndarray) -> None:
        """Faces this process just committed at ``generation``: apply them if the index is loaded."""
        with self._lock:
            index = self._indexes.get(collection.pk)
            if index is None:
                return
            index.add(keys, vectors)
            self._advance(collection, index, generation)

    def removed(self, collection: IndexedCollection, generation: int, keys: np.ndarray) -> None:
        with self._lock:
            index = self._indexes.get(collection.pk)
            if index is None:
                return
            index.remove(keys)
            self._advance(collection, index, generation)

    def drop(self, pk: int) -> None:
        """Forget a deleted collection's index, in memory and on disk."""
        with self._lock:
            self._indexes.pop(pk, None)
            self._dirty.discard(pk)
            for path in self.directory.glob(f"{pk}.*"):
                path.unlink(missing_ok=True)
            for path in self.directory.glob(f"{pk}-*"):
                path.unlink(missing_ok=True)

    def save_changed(self) -> None:
        """Persist indexes changed since their last save (on close: the next process then skips a reconcile)."""
        with self._lock:
            for pk in list(self._dirty):
                self._save(self._collections[pk], self._indexes[pk], refresh=False)

    def _advance(self, collection: IndexedCollection, index: FaceIndex, generation: int) -> None:
        # Only our own write happened since the index was current: it is current again. Otherwise another
        # process wrote too, and the next search reconciles.
        if index.generation == generation - 1:
            index.generation = generation
        self._dirty.add(collection.pk)
        # At least SAVE_INTERVAL_S apart, and ten times as long as a save takes (a 10M-face graph is gigabytes).
        interval = max(SAVE_INTERVAL_S, 10 * self._save_cost.get(collection.pk, 0.0))
        if time.monotonic() - self._saved_at.get(collection.pk, 0.0) > interval:
            self._save(collection, index)

    def _current(self, source: FaceSource, collection: IndexedCollection) -> FaceIndex:
        index = self._indexes.get(collection.pk) or self._load(collection)
        if index is None:
            with self._build_lock(collection):  # one process builds; the others wait, then load its file
                index = self._load(collection)
                if index is None:
                    return self.rebuild(source, collection)
        self._indexes[collection.pk] = index
        self._collections[collection.pk] = collection
        if index.generation != source.index_generation(collection):
            self._reconcile(source, collection, index)
        return index

    def _reconcile(self, source: FaceSource, collection: IndexedCollection, index: FaceIndex) -> None:
        """Make the index hold exactly the store's current faces (cost: one read of the keys, plus the delta)."""
        generation, current = source.index_keys(collection)
        indexed = index.keys()
        gone = np.setdiff1d(indexed, current, assume_unique=True)
        missing = np.setdiff1d(current, indexed)
        index.remove(gone)
        for start in range(0, len(missing), _BATCH):
            found, vectors = source.index_embeddings(collection, missing[start : start + _BATCH])
            if len(found):
                index.add(found, vectors)
        changed = index.generation != generation
        index.generation = generation
        if len(missing) or len(gone):
            self._save(collection, index)
        elif changed:
            self._dirty.add(collection.pk)

    @contextlib.contextmanager
    def _build_lock(self, collection: IndexedCollection) -> Iterator[None]:
        self.directory.mkdir(parents=True, exist_ok=True)
        with (self.directory / f"{collection.pk}.lock").open("a") as fh:
            fcntl.flock(fh, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(fh, fcntl.LOCK_UN)

    def _graph_path(self, collection: IndexedCollection, token: str) -> Path:
        return self.directory / f"{collection.pk}-{token}.usearch"

    def _save(
        self, collection: IndexedCollection, index: FaceIndex, *, check: bool = False, refresh: bool = True
    ) -> None:
        """Write a new snapshot, then switch the pointer file atomically: readers never see half of one. With
        ``check`` (after a build) the faces the graph cannot reach are found from the snapshot just written,
        before the pointer names it."""
        self.directory.mkdir(parents=True, exist_ok=True)
        token = uuid.uuid4().hex
        started = time.monotonic()
        index.index.save(str(self._graph_path(collection, token)))
        if check:
            checking = time.monotonic()
            index.check_all(saved=self._graph_path(collection, token))
            started += time.monotonic() - checking  # the save's own cost paces later saves
        elif refresh and not index.snapshot_current:  # searches walk the graph as just saved, once read
            index.refresh_behind(self._graph_path(collection, token))
            started -= index.refresh_seconds  # the last read paces saves too: it runs beside searches
        meta = {
            "format": FORMAT,
            "token": token,
            "generation": index.generation,
            "count": len(index),
            "ndim": index.ndim,
            "unreachable": [int(k) for k in index.unreachable],
            "created_at": collection.created_at,
            "model_version": collection.model_version,
        }
        pointer = self.directory / f"{collection.pk}.json"
        previous = _read_json(pointer)
        tmp = pointer.with_suffix(f".{token}.tmp")
        tmp.write_text(json.dumps(meta))
        os.replace(tmp, pointer)
        self._saved_at[collection.pk] = time.monotonic()
        self._save_cost[collection.pk] = self._saved_at[collection.pk] - started
        self._collections[collection.pk] = collection
        self._dirty.discard(collection.pk)
        if previous and previous.get("token") != token:
            self._graph_path(collection, str(previous.get("token"))).unlink(missing_ok=True)
        if check:  # a fresh build, searched through its snapshot: the graph itself can stay on disk until changed
            index.rest(self._graph_path(collection, token))

    def _load(self, collection: IndexedCollection) -> FaceIndex | None:
        """The persisted index, or None when missing, of another format, of another collection, or unreadable."""
        meta = _read_json(self.directory / f"{collection.pk}.json")
        if (
            not meta
            or meta.get("format") != FORMAT
            or meta.get("created_at") != collection.created_at
            or meta.get("model_version") != collection.model_version
        ):
            return None
        try:
            graph = Index.restore(str(self._graph_path(collection, str(meta["token"]))), view=True)
        except (OSError, ValueError, RuntimeError):
            return None  # replaced or removed by another process meanwhile: rebuild
        if graph is None or len(graph) != meta["count"]:
            return None
        unreachable = meta.get("unreachable")
        index = FaceIndex(
            int(meta["ndim"]),
            int(meta["generation"]),
            graph,
            np.asarray(unreachable or [], dtype=np.uint64),
            view=True,
        )
        self._saved_at[collection.pk] = time.monotonic()
        if unreachable is None:  # saved before faces were checked: check them once, now
            index.check_all(saved=self._graph_path(collection, str(meta["token"])))
            self._collections[collection.pk] = collection
            self._dirty.add(collection.pk)
        else:
            index.refresh(saved=self._graph_path(collection, str(meta["token"])))
        return index


def _read_json(path: Path) -> dict | None:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None

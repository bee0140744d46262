"""Approximate nearest-neighbour search over a collection's faces: one HNSW index per collection (usearch).

Why usearch rather than faiss-cpu: DeleteFaces needs removal by key, which usearch's HNSW supports directly
(faiss' HNSW cannot remove; its IVF indexes can, but need training that drifts as a collection grows); keys
are 64-bit integers we derive from face ids; vectors can be stored as f16 (half the memory — exactness comes
from re-ranking with the true embeddings anyway); one small wheel with no BLAS/OpenMP runtime to collide with
ONNX Runtime's; and save/load to a single file.

The index is DERIVED data. SQLite stays the source of truth: every index records the collection generation it
reflects, and when the store's generation has moved (another process wrote) it is reconciled against the
store's current face ids before it answers. Candidates are only candidates: the store re-reads them (deleted
faces drop out there) and the service re-ranks them exactly. All ANN details live here, so a PostgreSQL store
can answer the same question with pgvector's HNSW instead.
"""

from __future__ import annotations

import hashlib
import json
import os
import threading
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import numpy as np
from usearch.index import Index

# Below this many faces exact search is as fast as the index and loses no recall. bench/search.py (2 cores; its
# numpy scan is FaceService's exact path): p50 exact vs index 1.05 vs 1.82 ms at 100k, 2.56 vs 2.29 ms at 200k,
# 13.9 vs 3.7 ms at 1M, where the index's recall@10 is 0.956.
ANN_MIN_FACES = 200_000
FORMAT = 1  # bump when the on-disk layout changes: older files are then rebuilt
CONNECTIVITY = 16
EXPANSION_ADD = 128
MIN_EXPANSION_SEARCH = 512  # measured: at 1M, ef 216 → recall@10 0.88, 512 → 0.956 (p50 3.7 ms)
SAVE_INTERVAL_S = 60.0  # incremental changes are saved at most this often; a stale file is reconciled on load
_BATCH = 10_000


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
    def index_face_ids(self, collection: IndexedCollection) -> tuple[int, list[str]]: ...
    def index_embeddings(self, collection: IndexedCollection, face_ids: list[str]) -> tuple[list[str], np.ndarray]: ...


class FaceIndex:
    """One collection's HNSW graph, the face id behind each key, and the generation it reflects."""

    def __init__(self, ndim: int, generation: int = -1, index: Index | None = None) -> None:
        self.index = index or Index(
            ndim=ndim, metric="l2sq", dtype="f16", connectivity=CONNECTIVITY, expansion_add=EXPANSION_ADD
        )
        self.ndim = ndim
        self.generation = generation
        self.ids: dict[int, str] = {}

    def __len__(self) -> int:
        return len(self.ids)

    def add(self, face_ids: list[str], embeddings: np.ndarray) -> None:
        keys = [face_key(f) for f in face_ids]
        fresh = [i for i, k in enumerate(keys) if k not in self.ids]
        if not fresh:
            return
        vectors = np.ascontiguousarray(np.asarray(embeddings, dtype=np.float32)[fresh])
        key_array = np.array([keys[i] for i in fresh], dtype=np.uint64)
        self.index.add(key_array, vectors, threads=1 if len(fresh) < 1000 else 0)
        for i in fresh:
            self.ids[keys[i]] = face_ids[i]

    def remove(self, face_ids: list[str]) -> None:
        keys = [k for k in (face_key(f) for f in face_ids) if k in self.ids]
        if keys:
            self.index.remove(np.array(keys, dtype=np.uint64))
            for k in keys:
                del self.ids[k]

    def search(self, probe: np.ndarray, k: int) -> list[str]:
        if not self.ids:
            return []
        k = min(k, len(self.ids))
        self.index.expansion_search = max(MIN_EXPANSION_SEARCH, k)
        matches = self.index.search(np.asarray(probe, dtype=np.float32), k, threads=1)
        return [self.ids[int(key)] for key in matches.keys if int(key) in self.ids]

    def memory_bytes(self) -> int:
        return int(self.index.memory_usage)


class VectorIndexes:
    """The ANN indexes of one store's collections: loaded from ``directory``, built or reconciled on demand."""

    def __init__(self, directory: Path, min_faces: int = ANN_MIN_FACES) -> None:
        self.directory = directory
        self.min_faces = min_faces
        self._indexes: dict[int, FaceIndex] = {}
        self._saved_at: dict[int, float] = {}
        self._collections: dict[int, IndexedCollection] = {}
        self._dirty: set[int] = set()
        self._lock = threading.RLock()

    def applies(self, face_count: int) -> bool:
        return face_count >= self.min_faces

    def candidates(self, source: FaceSource, collection: IndexedCollection, probe: np.ndarray, k: int) -> list[str]:
        """Face ids of up to ``k`` approximate nearest neighbours, from an index brought up to the store's state."""
        with self._lock:
            return self._current(source, collection).search(probe, k)

    def rebuild(self, source: FaceSource, collection: IndexedCollection) -> FaceIndex:
        """Build the collection's index from the store alone and persist it (also what the CLI can call)."""
        with self._lock:
            generation, face_ids = source.index_face_ids(collection)
            index: FaceIndex | None = None
            for start in range(0, len(face_ids), _BATCH):
                ids, vectors = source.index_embeddings(collection, face_ids[start : start + _BATCH])
                if index is None and len(ids):
                    index = FaceIndex(vectors.shape[1], generation)
                if index is not None:
                    index.add(ids, vectors)
            index = index or FaceIndex(128, generation)
            self._indexes[collection.pk] = index
            self._save(collection, index)
            return index

    def added(self, collection: IndexedCollection, generation: int, face_ids: list[str], vectors: np.ndarray) -> None:
        """Faces this process just committed at ``generation``: apply them if the index is loaded."""
        with self._lock:
            index = self._indexes.get(collection.pk)
            if index is None:
                return
            index.add(face_ids, vectors)
            self._advance(collection, index, generation)

    def removed(self, collection: IndexedCollection, generation: int, face_ids: list[str]) -> None:
        with self._lock:
            index = self._indexes.get(collection.pk)
            if index is None:
                return
            index.remove(face_ids)
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
                self._save(self._collections[pk], self._indexes[pk])

    def _advance(self, collection: IndexedCollection, index: FaceIndex, generation: int) -> None:
        # Only our own write happened since the index was current: it is current again. Otherwise another
        # process wrote too, and the next search reconciles.
        if index.generation == generation - 1:
            index.generation = generation
        self._dirty.add(collection.pk)
        if time.monotonic() - self._saved_at.get(collection.pk, 0.0) > SAVE_INTERVAL_S:
            self._save(collection, index)

    def _current(self, source: FaceSource, collection: IndexedCollection) -> FaceIndex:
        index = self._indexes.get(collection.pk) or self._load(collection)
        if index is None:
            return self.rebuild(source, collection)
        self._indexes[collection.pk] = index
        self._collections[collection.pk] = collection
        if index.generation != source.index_generation(collection):
            self._reconcile(source, collection, index)
        return index

    def _reconcile(self, source: FaceSource, collection: IndexedCollection, index: FaceIndex) -> None:
        """Make the index hold exactly the store's current faces (cost: one read of the ids, plus the delta)."""
        generation, face_ids = source.index_face_ids(collection)
        current = set(face_ids)
        indexed = set(index.ids.values())
        index.remove(sorted(indexed - current))
        missing = sorted(current - indexed)
        for start in range(0, len(missing), _BATCH):
            ids, vectors = source.index_embeddings(collection, missing[start : start + _BATCH])
            if ids:
                index.add(ids, vectors)
        changed = index.generation != generation
        index.generation = generation
        if missing or indexed - current:
            self._save(collection, index)
        elif changed:
            self._dirty.add(collection.pk)

    def _paths(self, collection: IndexedCollection, token: str) -> tuple[Path, Path]:
        stem = self.directory / f"{collection.pk}-{token}"
        return stem.with_suffix(".usearch"), stem.with_suffix(".ids.npy")

    def _save(self, collection: IndexedCollection, index: FaceIndex) -> None:
        """Write a new snapshot, then switch the pointer file atomically: readers never see half of one."""
        self.directory.mkdir(parents=True, exist_ok=True)
        token = uuid.uuid4().hex
        graph_path, ids_path = self._paths(collection, token)
        index.index.save(str(graph_path))
        keys = np.fromiter(index.ids.keys(), dtype=np.uint64, count=len(index.ids))
        ids = np.array(list(index.ids.values()), dtype="S")
        with ids_path.open("wb") as fh:
            np.save(fh, keys)
            np.save(fh, ids)
        meta = {
            "format": FORMAT,
            "token": token,
            "generation": index.generation,
            "count": len(index),
            "ndim": index.ndim,
            "created_at": collection.created_at,
            "model_version": collection.model_version,
        }
        pointer = self.directory / f"{collection.pk}.json"
        previous = _read_json(pointer)
        tmp = pointer.with_suffix(f".{token}.tmp")
        tmp.write_text(json.dumps(meta))
        os.replace(tmp, pointer)
        self._saved_at[collection.pk] = time.monotonic()
        self._collections[collection.pk] = collection
        self._dirty.discard(collection.pk)
        if previous and previous.get("token") != token:
            for path in self._paths(collection, str(previous.get("token"))):
                path.unlink(missing_ok=True)

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
        graph_path, ids_path = self._paths(collection, str(meta["token"]))
        try:
            graph = Index.restore(str(graph_path))
            with ids_path.open("rb") as fh:
                keys = np.load(fh)
                ids = np.load(fh)
        except (OSError, ValueError, RuntimeError):
            return None  # replaced or removed by another process meanwhile: rebuild
        if graph is None or len(keys) != meta["count"] or len(graph) != len(keys):
            return None
        index = FaceIndex(int(meta["ndim"]), int(meta["generation"]), graph)
        index.ids = dict(zip(keys.tolist(), (i.decode() for i in ids), strict=True))
        self._saved_at[collection.pk] = time.monotonic()
        return index


def _read_json(path: Path) -> dict | None:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None

"""A search of an HNSW graph's bottom level, compiled, that asks for each step's memory before it needs it.

usearch's own search of a graph of millions of faces waits on one cache miss after another: each step reads a
node's links, then each neighbour's visited mark, then each new neighbour's vector, every read depending on the
last. This search keeps the same graph as flat arrays (each node's bottom-level links and the int8 vectors by
slot, read from the file usearch saved) and walks it with a compiled loop (numba, store/graph_kernel.py) that, before computing a
step's distances, asks the CPU for every new neighbour's vector and for the links of the candidate it will most
likely expand next (prefetch hints), so that those reads overlap instead of queueing.

The walk is HNSW's beam search at the bottom level: a beam of the ``depth`` nearest faces found so far (usearch's
expansion_search), candidates expanded nearest first, stopping when the nearest open candidate is farther than
the beam's farthest. Distances are exact squared int8 steps, summed in int32.
"""

from __future__ import annotations

import threading

import numpy as np

from facegate.store.graph_walk import SavedGraph

_REMOVED = np.iinfo(np.uint64).max  # usearch's key for a removed face's slot


class GraphSnapshot:
    """One saved state of a collection's graph, searched by its bottom level."""

    def __init__(self, graph: SavedGraph) -> None:
        self.keys = graph.keys  # the snapshot owns the parsed graph's arrays from here on
        self._by_key = np.argsort(self.keys).astype(np.uint32)  # slots in key order, to find a removed face's slot
        self._sorted_keys = self.keys[self._by_key]  # kept as read: removals mark ``keys``, not this
        self.links = graph.neighbours  # unused entries hold len(keys): a slot marked as always visited
        self.entry = graph.entry
        self.vectors = graph.vectors()
        from facegate.store import graph_kernel  # here, not at import: see graph_kernel

        graph_kernel.compile_for(self.links, self.vectors)  # once per process, at load, not in a first search
        self._walk = graph_kernel.beam_search
        self._lock = threading.Lock()
        self._marks: list[_Marks] = []  # one per search running at once: the walk releases the GIL

    def __len__(self) -> int:
        return len(self.keys)

    def remove(self, keys: np.ndarray) -> None:
        """Never return these faces again (their slots stay in the graph, as usearch keeps them)."""
        keys = np.asarray(keys, dtype=np.uint64)
        at = np.minimum(np.searchsorted(self._sorted_keys, keys), len(self._sorted_keys) - 1)
        hit = self._sorted_keys[at] == keys
        with self._lock:
            self.keys[self._by_key[at[hit]]] = _REMOVED

    def memory_bytes(self) -> int:
        arrays = [self.keys, self._by_key, self._sorted_keys, self.links, self.vectors] + [
            m.visited for m in self._marks
        ]
        return int(sum(a.nbytes for a in arrays))

    def search(self, probe: np.ndarray, k: int, depth: int) -> np.ndarray:
        """Keys of the (about) ``k`` nearest faces to ``probe`` (int8 steps, as the graph holds vectors)."""
        if not len(self.keys):
            return np.zeros(0, dtype=np.uint64)
        depth = max(1, k, depth)
        query = np.asarray(probe, dtype=np.int32)
        if query.shape != (self.vectors.shape[1],):  # the compiled walk does not check bounds
            raise ValueError(f"probe of shape {query.shape}, the graph holds {self.vectors.shape[1]} dimensions")
        slots = np.empty(depth, dtype=np.int64)
        marks = self._take_marks()
        try:
            found = self._walk(self.links, self.vectors, marks.visited, marks.next(), self.entry, query, depth, slots)
            with self._lock:  # a removal rewrites keys in place
                keys = self.keys[slots[:found]]
        finally:
            with self._lock:
                self._marks.append(marks)
        return keys[keys != _REMOVED][:k]

    def _take_marks(self) -> _Marks:
        with self._lock:
            if self._marks:
                return self._marks.pop()
        return _Marks(len(self.keys))


class _Marks:
    """Which slots one search has visited: each search writes its own number, so none clears the array."""

    def __init__(self, size: int) -> None:
        self.visited = np.zeros(size + 1, dtype=np.uint32)  # the last entry is the unused-link slot
        self._search = 0

    def next(self) -> int:
        self._search += 1
        if self._search == np.iinfo(np.uint32).max:  # numbers wrap: forget every old one
            self.visited[:] = 0
            self._search = 1
        self.visited[-1] = self._search  # the unused-link slot is never followed
        return self._search

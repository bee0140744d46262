"""A search of an HNSW graph's bottom level that follows many links at once.

usearch follows one candidate's links at a time and reaches each neighbour's vector through a pointer, so at
millions of faces a search waits on one cache miss after another. This search keeps the same graph as flat
arrays (each node's bottom-level links, and the int8 vectors by slot, read from the file usearch saved) and
expands the BATCH nearest open candidates together: their links, the visited marks and the neighbours' vectors
are each fetched by one numpy gather, whose loads the CPU overlaps. The beam is kept to ``depth`` candidates as
usearch's expansion_search keeps it, and the search ends when every candidate in the beam has been expanded.

Distances are exact: int8 steps squared and summed stay below 2**24, where float32 is exact.
"""

from __future__ import annotations

import threading

import numpy as np

from facegate.store.graph_walk import SavedGraph

# How many open candidates are expanded together: fewer rounds of numpy calls against more links followed from
# candidates a one-at-a-time search would not have expanded. Of the sizes tried at a million faces (README,
# Search at scale), this one was fastest at equal recall.
BATCH = 64
_REMOVED = np.iinfo(np.uint64).max  # usearch's key for a removed face's slot


class GraphSnapshot:
    """One saved state of a collection's graph, searched by its bottom level."""

    def __init__(self, graph: SavedGraph) -> None:
        self.keys = graph.keys  # the snapshot owns the parsed graph's arrays from here on
        self._by_key = np.argsort(self.keys).astype(np.uint32)  # slots in key order, to find a removed face's slot
        self.links = graph.neighbours  # unused entries hold len(keys): a slot marked as always visited
        self.entry = graph.entry
        self.vectors = graph.vectors()
        floats = self.vectors.astype(np.float32)
        self.norms = np.einsum("ij,ij->i", floats, floats)
        del floats
        size = len(self.keys)
        self._visited = np.zeros(size + 1, dtype=np.uint32)  # holds the number of the search that visited
        self._search = 0
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return len(self.keys)

    def remove(self, keys: np.ndarray) -> None:
        """Never return these faces again (their slots stay in the graph, as usearch keeps them)."""
        with self._lock:
            sorted_keys = self.keys[self._by_key]
            at = np.minimum(np.searchsorted(sorted_keys, keys), len(sorted_keys) - 1)
            hit = sorted_keys[at] == keys
            self.keys[self._by_key[at[hit]]] = _REMOVED

    def memory_bytes(self) -> int:
        arrays = (self.keys, self._by_key, self.links, self.vectors, self.norms, self._visited)
        return int(sum(a.nbytes for a in arrays))

    def search(self, probe: np.ndarray, k: int, depth: int) -> np.ndarray:
        """Keys of the (about) ``k`` nearest faces to ``probe`` (int8 steps, as the graph holds vectors)."""
        if not len(self.keys):
            return np.zeros(0, dtype=np.uint64)
        depth = max(k, depth)
        query = np.asarray(probe, dtype=np.float32)
        room = depth + BATCH * self.links.shape[1] + 1  # the beam and one round's neighbours, allocated once
        slots = np.empty(room, dtype=np.int64)
        distances = np.empty(room, dtype=np.float32)
        open_ = np.zeros(room, dtype=bool)
        with self._lock:
            mark = self._next_mark()
            slots[0] = self.entry
            self._visited[self.entry] = mark
            distances[0] = self._distances(slots[:1], query)[0]
            open_[0] = True
            held = 1
            worst = np.inf  # the beam's farthest distance once it is full
            while True:
                waiting = np.flatnonzero(open_[:held])
                if not len(waiting):
                    break
                if len(waiting) > BATCH:
                    waiting = waiting[np.argpartition(distances[waiting], BATCH - 1)[:BATCH]]
                open_[waiting] = False
                reached = self._unvisited(self.links.take(slots[waiting], axis=0).ravel(), mark)
                if not len(reached):
                    continue
                near = self._distances(reached, query)
                if worst < np.inf:
                    closer = near < worst
                    reached, near = reached[closer], near[closer]
                added = held + len(reached)
                slots[held:added], distances[held:added], open_[held:added] = reached, near, True
                held = added
                if held > depth:
                    kept = np.argpartition(distances[:held], depth - 1)[:depth]
                    slots[:depth], distances[:depth], open_[:depth] = slots[kept], distances[kept], open_[kept]
                    held, worst = depth, float(distances[depth - 1])
            order = np.argsort(distances[:held], kind="stable")
            keys = self.keys[slots[:held][order]]
            return keys[keys != _REMOVED][:k]

    def _next_mark(self) -> int:
        self._search += 1
        if self._search == np.iinfo(np.uint32).max:  # marks wrap: forget every old one
            self._visited[:] = 0
            self._search = 1
        self._visited[len(self.keys)] = self._search  # the unused-link slot is never followed
        return self._search

    def _unvisited(self, reached: np.ndarray, mark: int) -> np.ndarray:
        reached = reached[self._visited.take(reached) != mark]
        if len(reached) > 1:  # several candidates can link to one neighbour: keep one occurrence of it
            reached.sort()  # (and the gathers that follow then run through memory in order)
            first = np.empty(len(reached), dtype=bool)
            first[0] = True
            np.not_equal(reached[1:], reached[:-1], out=first[1:])
            reached = reached[first]
        self._visited[reached] = mark
        return reached.astype(np.int64)

    def _distances(self, slots: np.ndarray, query: np.ndarray) -> np.ndarray:
        gathered = self.vectors.take(slots, axis=0).astype(np.float32)
        return (self.norms.take(slots) - 2.0 * (gathered @ query)) + np.float32(query @ query)

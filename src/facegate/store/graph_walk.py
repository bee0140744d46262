"""Which faces an HNSW graph cannot reach: a walk of the graph's own links, read from usearch's saved file.

A search can only return a node that some chain of links leads to from the entry point; a node nothing links to
(a multi-threaded build, or later inserts pruning their neighbours' lists) is found at no depth. Walking every
link once costs a few seconds at millions of faces, where searching every face by its own vector cost more than
the build. usearch's Python API does not expose a node's links, so this reads them from the file it saves:

    u32 rows, u32 bytes per vector, the vectors      (in slot order: what a GraphSnapshot searches)
    64-byte head: "usearch", version, kinds (metric, scalar, key, slot), counts present/deleted, dimensions
    header: u64 size, connectivity, base connectivity, max level, entry slot
    i16 level of every node
    every node: u64 key, i16 level, then per level 0..level: u32 count and that level's slots (u32 each)

Everything read is checked against the live index (sizes, the set of keys, slot bounds); a file that does not
fit raises GraphLayoutError, and the caller falls back to searching faces by their own vectors.
"""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    from usearch.index import Index

_HEAD_BYTES = 64
_HEADER_BYTES = 40
_NODE_HEAD_BYTES = 10  # key, level
_SLOT_KIND_U32 = 15
_KEY_KIND_U64 = 14
_CHUNK = 1 << 16


class GraphLayoutError(RuntimeError):
    """The saved file is not laid out as this reader expects (another usearch format)."""


def unreachable_keys(index: Index, *, saved: Path | None = None, scratch: Path | None = None) -> np.ndarray:
    """Keys of the live faces no chain of links from the entry point reaches (at any level). ``saved`` is a file
    this index was just saved to; without one the index is saved to a temporary file under ``scratch``."""
    if len(index) == 0:
        return np.zeros(0, dtype=np.uint64)
    return read_graph(index, saved=saved, scratch=scratch).unreachable()


def read_graph(index: Index, *, saved: Path | None = None, scratch: Path | None = None) -> SavedGraph:
    """The links (and vectors) of ``index`` as read from ``saved``, a file it was just saved to, or from a
    temporary copy written under ``scratch``; checked against the live index."""
    if saved is not None:
        return _read_file(index, saved)
    if scratch is not None:
        scratch.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=scratch) as tmp:
        path = Path(tmp) / "graph.usearch"
        index.save(str(path))
        return _read_file(index, path)


def _read_file(index: Index, path: Path) -> SavedGraph:
    graph = SavedGraph(np.memmap(path, dtype=np.uint8, mode="r"))
    _check_keys(index, graph)
    return graph


class SavedGraph:
    """A saved usearch graph: keys, levels, every node's links, and the vectors, by slot."""

    def __init__(self, data: np.memmap) -> None:
        if len(data) < 8:
            raise GraphLayoutError("file too short")
        rows, row_bytes = (int(v) for v in _read(data, 0, np.uint32, 2))
        self.row_bytes = row_bytes
        at = 8 + rows * row_bytes
        head = bytes(data[at : at + _HEAD_BYTES])
        if len(head) < _HEAD_BYTES or head[:7] != b"usearch" or head[15] != _KEY_KIND_U64 or head[16] != _SLOT_KIND_U32:
            raise GraphLayoutError("unexpected head (magic, key or slot type)")
        at += _HEAD_BYTES
        self.size, self.connectivity, self.base, _, self.entry = (int(v) for v in _read(data, at, np.uint64, 5))
        if self.size != rows or self.entry >= max(self.size, 1):
            raise GraphLayoutError("header disagrees with the vectors")
        at += _HEADER_BYTES
        self.levels = _read(data, at, np.int16, self.size).astype(np.int64)
        at += 2 * self.size
        base_bytes, level_bytes = 4 + 4 * self.base, 4 + 4 * self.connectivity
        sizes = _NODE_HEAD_BYTES + base_bytes + self.levels * level_bytes
        self.offsets = at + np.concatenate([[0], np.cumsum(sizes[:-1])])
        if self.levels.min(initial=0) < 0 or int(self.offsets[-1] + sizes[-1]) != len(data):
            raise GraphLayoutError("node sizes do not add up to the file")
        self.data = data
        self.keys = np.empty(self.size, dtype=np.uint64)
        self.neighbours = np.empty((self.size, self.base), dtype=np.uint32)  # unused slots hold `size`
        for start in range(0, self.size, _CHUNK):
            offsets = self.offsets[start : start + _CHUNK]
            self.keys[start : start + len(offsets)] = self._gather(offsets, 8).view(np.uint64)[:, 0]
            self.neighbours[start : start + len(offsets)] = self._links(offsets + _NODE_HEAD_BYTES, self.base)
        self.live = np.ones(self.size, bool)
        self.live[self.keys == np.iinfo(np.uint64).max] = False  # a removed face's slot
        upper_src, upper_dst = [], []
        for level in range(1, int(self.levels.max(initial=0)) + 1):
            nodes = np.flatnonzero(self.levels >= level)
            at_level = self.offsets[nodes] + _NODE_HEAD_BYTES + base_bytes + (level - 1) * level_bytes
            links = self._links(at_level, self.connectivity)
            upper_src.append(np.repeat(nodes, links.shape[1]))
            upper_dst.append(links.ravel())
        src = np.concatenate(upper_src) if upper_src else np.zeros(0, np.int64)
        dst = np.concatenate(upper_dst) if upper_dst else np.zeros(0, np.uint32)
        used = dst < self.size
        self.upper_src, self.upper_dst = src[used], dst[used].astype(np.int64)

    def _gather(self, offsets: np.ndarray, width: int) -> np.ndarray:
        return np.asarray(self.data[offsets[:, None] + np.arange(width)])

    def _links(self, offsets: np.ndarray, slots: int) -> np.ndarray:
        raw = self._gather(offsets, 4 + 4 * slots).view(np.uint32)
        counts, links = raw[:, 0], raw[:, 1:].copy()
        if (counts > slots).any():
            raise GraphLayoutError("a node claims more links than it has room for")
        links[np.arange(slots)[None, :] >= counts[:, None]] = self.size
        if (links > self.size).any():
            raise GraphLayoutError("a link points past the last node")
        return links

    def vectors(self) -> np.ndarray:
        """The stored vectors by slot (a copy: the file may be replaced or removed after reading)."""
        raw = self.data[8 : 8 + self.size * self.row_bytes]
        return np.array(raw, dtype=np.uint8).view(np.int8).reshape(self.size, self.row_bytes)

    def unreachable(self, *, base_only: bool = False) -> np.ndarray:
        """Keys of the live faces no chain of links from the entry point reaches (``base_only``: at the bottom
        level alone, where a GraphSnapshot searches)."""
        return np.sort(self.keys[~self.walk(base_only=base_only) & self.live])

    def walk(self, *, base_only: bool = False) -> np.ndarray:
        """Every node a chain of links from the entry point leads to, at any level (or at the bottom level)."""
        reached = np.zeros(self.size + 1, bool)
        reached[self.size] = True  # where unused links point: never walked
        frontier = np.array([self.entry])
        reached[self.entry] = True
        in_frontier = np.zeros(self.size + 1, bool)
        while len(frontier):
            nxt = self.neighbours.take(frontier, axis=0).ravel()
            if len(self.upper_src) and not base_only:
                in_frontier[frontier] = True
                nxt = np.concatenate([nxt, self.upper_dst[in_frontier[self.upper_src]]])
                in_frontier[frontier] = False
            # A mask rather than np.unique to drop repeats: at millions of links np.unique's hashing took most
            # of the walk's time.
            in_frontier[nxt[~reached[nxt]]] = True
            frontier = np.flatnonzero(in_frontier)
            in_frontier[frontier] = False
            reached[frontier] = True
        return reached[: self.size]


def _read(data: np.memmap, at: int, dtype: type, count: int) -> np.ndarray:
    width = np.dtype(dtype).itemsize * count
    if at + width > len(data):
        raise GraphLayoutError("file too short")
    return np.frombuffer(bytes(data[at : at + width]), dtype=dtype)


def _check_keys(index: Index, graph: SavedGraph) -> None:
    live = np.sort(graph.keys[graph.live])
    if len(live) != len(index) or not np.array_equal(live, np.sort(np.asarray(index.keys, dtype=np.uint64))):
        raise GraphLayoutError("the file's keys are not the index's")

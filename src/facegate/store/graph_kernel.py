"""The compiled walk GraphSnapshot searches with (numba): HNSW's beam search over a graph's bottom level, with
prefetch hints so that each step's reads overlap. Imported when the first snapshot is made: numba's import is
felt by every short-lived process (each CLI command) that opens a store, and most never search a large graph."""

from __future__ import annotations

import numba as nb
import numpy as np
from llvmlite import ir
from numba import types
from numba.core import cgutils
from numba.extending import intrinsic


def compile_for(links: np.ndarray, vectors: np.ndarray) -> None:
    """Compile the walk for these arrays' types on a two-face graph (the compiled code is kept per process)."""
    if beam_search.signatures:
        return
    tiny_links = np.array([[1], [0]], dtype=links.dtype)
    tiny_vectors = np.zeros((2, vectors.shape[1]), dtype=vectors.dtype)
    visited = np.zeros(3, dtype=np.uint32)
    query = np.zeros(vectors.shape[1], dtype=np.int32)
    beam_search(tiny_links, tiny_vectors, visited, 1, 0, query, 2, np.empty(2, dtype=np.int64))


@intrinsic
def _prefetch(typingctx, array, row, column):
    """Ask the CPU to start reading array[row, column] into its caches (LLVM's prefetch: read, keep)."""

    def codegen(context, builder, signature, args):
        kind = signature.args[0]
        data, at_row, at_column = args
        view = context.make_array(kind)(context, builder, data)
        address = cgutils.get_item_pointer(context, builder, kind, view, [at_row, at_column])
        byte_pointer = ir.IntType(8).as_pointer()
        i32 = ir.IntType(32)
        hint = ir.FunctionType(ir.VoidType(), [byte_pointer, i32, i32, i32])
        name = "llvm.prefetch.p0" if getattr(byte_pointer, "is_opaque", False) else "llvm.prefetch.p0i8"
        function = cgutils.get_or_insert_function(builder.module, hint, name)
        builder.call(function, [builder.bitcast(address, byte_pointer), i32(0), i32(3), i32(1)])
        return context.get_dummy_value()

    return types.void(array, row, column), codegen


@nb.njit(inline="always")
def _distance(vectors, slot, query):
    total = np.int32(0)
    for j in range(query.shape[0]):
        step = np.int32(vectors[slot, j]) - query[j]
        total += step * step
    return total


@nb.njit(inline="always")
def _sift_down(distances, slots, size, at, nearest_first):
    """Restore a binary heap (nearest or farthest on top) after its top was replaced."""
    while True:
        child = 2 * at + 1
        if child >= size:
            return
        if child + 1 < size and (distances[child + 1] < distances[child]) == nearest_first:
            child += 1
        if distances[at] == distances[child] or (distances[at] < distances[child]) == nearest_first:
            return
        distances[at], distances[child] = distances[child], distances[at]
        slots[at], slots[child] = slots[child], slots[at]
        at = child


@nb.njit(inline="always")
def _sift_up(distances, slots, at, nearest_first):
    while at > 0:
        parent = (at - 1) >> 1
        if distances[parent] == distances[at] or (distances[parent] < distances[at]) == nearest_first:
            return
        distances[at], distances[parent] = distances[parent], distances[at]
        slots[at], slots[parent] = slots[parent], slots[at]
        at = parent


@nb.njit(nogil=True)
def beam_search(links, vectors, visited, mark, entry, query, depth, out):
    """Fill ``out`` with the slots of the beam, nearest first; return how many."""
    width = links.shape[1]
    room = 4 * depth + 2 * width  # open candidates; past it, those no nearer than the beam's farthest go
    open_d = np.empty(room, np.int32)
    open_s = np.empty(room, np.int64)
    beam_d = np.empty(depth + 1, np.int32)  # farthest on top
    beam_s = np.empty(depth + 1, np.int64)
    fresh = np.empty(width, np.int64)
    fresh_d = np.empty(width, np.int32)
    visited[entry] = mark
    open_d[0] = beam_d[0] = _distance(vectors, entry, query)
    open_s[0] = beam_s[0] = entry
    opened = held = 1
    while opened:
        nearest, slot = open_d[0], open_s[0]
        if held >= depth and nearest > beam_d[0]:
            break
        opened -= 1
        open_d[0], open_s[0] = open_d[opened], open_s[opened]
        _sift_down(open_d, open_s, opened, 0, True)
        if opened:  # most often the next one expanded: its links arrive while this step computes
            _prefetch(links, open_s[0], 0)
            _prefetch(links, open_s[0], width // 2)
        new = 0
        for j in range(width):
            neighbour = links[slot, j]
            fresh[new] = neighbour
            new += visited[neighbour] != mark  # no branch to mispredict: the loads stay overlapped
            visited[neighbour] = mark
        for j in range(new):
            _prefetch(vectors, fresh[j], 0)
            _prefetch(vectors, fresh[j], vectors.shape[1] - 1)
        for j in range(new):
            fresh_d[j] = _distance(vectors, fresh[j], query)
        for j in range(new):
            distance = fresh_d[j]
            if held >= depth and distance >= beam_d[0]:
                continue
            if opened == room:  # an open candidate no nearer than the beam's farthest is never expanded
                kept = 0
                for i in range(opened):
                    if open_d[i] < beam_d[0]:
                        open_d[kept], open_s[kept] = open_d[i], open_s[i]
                        kept += 1
                opened = kept
                for i in range(opened // 2 - 1, -1, -1):
                    _sift_down(open_d, open_s, opened, i, True)
            open_d[opened], open_s[opened] = distance, fresh[j]
            _sift_up(open_d, open_s, opened, True)
            opened += 1
            beam_d[held], beam_s[held] = distance, fresh[j]
            _sift_up(beam_d, beam_s, held, False)
            held += 1
            if held > depth:
                held -= 1
                beam_d[0], beam_s[0] = beam_d[held], beam_s[held]
                _sift_down(beam_d, beam_s, held, 0, False)
    order = np.argsort(beam_d[:held], kind="mergesort")
    for i in range(held):
        out[i] = beam_s[order[i]]
    return held

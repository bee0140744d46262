"""Indexing many images across the cores, with bounded memory.

Each worker process runs the governed IndexFaces itself (its own engine with one ONNX thread, its own SQLite
connections; WAL serialises the writes): every image is gated and audited there, and the rules — validation,
quality filter, duplicate suppression — are the service's, unchanged. Workers take ``BATCH`` files at a time (``FaceService.index_many``: each image
checked and stored on its own, one run of the embedding network over all their faces). The parent hands out
at most two batches per worker at a time, so a directory of any size never has more than
``2 × BATCH × workers`` images in memory. A re-run is a resume: images already indexed with the same
ExternalImageId are recognised by their hash and skipped before any face work.
"""

from __future__ import annotations

import hashlib
import multiprocessing
import os
from collections.abc import Iterable, Iterator
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from dataclasses import dataclass, replace
from pathlib import Path

from facegate.compose import Settings
from facegate.errors import FacegateError
from facegate.keys import Principal
from facegate.lifetime import exit_with_parent
from facegate.results import IndexResult

_worker = None


@dataclass(frozen=True)
class Indexed:
    """What happened to one file: the IndexFaces result, or the error that stopped it."""

    path: Path
    params: dict  # the request minus the image bytes (for the audit record)
    image_sha256: str | None = None
    result: IndexResult | None = None
    error_code: str | None = None
    error: str | None = None


def _start(settings: Settings, principal: Principal, parent: int) -> None:
    global _worker
    exit_with_parent(parent)  # `facegate index` killed with SIGKILL must not leave its workers running
    from facegate.compose import build

    _worker = (build(replace(settings, threads=1)).governed, principal)


BATCH = 8  # images per task: the network's cost per face at batch 8 is ~15% below batch 1 (bench/embed.py)


def _index_batch(tasks: list[tuple[str, dict]]) -> list[Indexed]:
    governed, principal = _worker
    return index_batch(governed, principal, tasks)


def index_batch(governed, principal: Principal, tasks: list[tuple[str, dict]]) -> list[Indexed]:
    """Read each file and run the governed IndexFaces over the batch (what every kind of worker does)."""
    outcomes: list[Indexed | None] = [None] * len(tasks)
    readable: list[tuple[int, bytes]] = []
    for i, (path, params) in enumerate(tasks):
        try:
            readable.append((i, Path(path).read_bytes()))
        except OSError as exc:
            outcomes[i] = Indexed(Path(path), params, error_code="UnreadableFile", error=exc.strerror or str(exc))
    requests = [{**tasks[i][1], "Image": {"Bytes": data}} for i, data in readable]
    for (i, data), result in zip(readable, governed.index_many(principal, requests), strict=True):
        path, params = tasks[i]
        digest = hashlib.sha256(data).hexdigest()
        if isinstance(result, FacegateError):
            outcomes[i] = Indexed(Path(path), params, digest, error_code=result.code, error=result.message)
        else:
            outcomes[i] = Indexed(Path(path), params, digest, result.result)
    return outcomes  # type: ignore[return-value]


def index_files(
    files: Iterable[tuple[Path, dict]],
    *,
    settings: Settings,
    principal: Principal,
    workers: int = 1,
    batch: int = BATCH,
) -> Iterator[list[Indexed]]:
    """Governed IndexFaces for each (path, params-without-image) as ``principal``, in parallel, ``batch`` images
    per task (fewer spread a short list over every worker); yields each task's outcomes together, as tasks
    complete."""
    context = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(
        workers, mp_context=context, initializer=_start, initargs=(settings, principal, os.getpid())
    ) as pool:
        pending: set[Future] = set()
        for chunk in _batches(files, max(1, batch)):
            if len(pending) >= 2 * workers:  # bounded: never more than this many batches in flight
                done, pending = wait(pending, return_when=FIRST_COMPLETED)
                yield from (future.result() for future in done)
            pending.add(pool.submit(_index_batch, [(str(path), params) for path, params in chunk]))
        while pending:
            done, pending = wait(pending, return_when=FIRST_COMPLETED)
            yield from (future.result() for future in done)


def _batches(items: Iterable, size: int) -> Iterator[list]:
    batch: list = []
    for item in items:
        batch.append(item)
        if len(batch) == size:
            yield batch
            batch = []
    if batch:
        yield batch

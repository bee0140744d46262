"""Indexing many images across the cores, with bounded memory.

Each worker process runs the IndexFaces operation itself (its own engine with one ONNX thread, its own SQLite
connection; WAL serialises the writes), so the rules — validation, quality filter, duplicate suppression — are
the service's, unchanged. The parent only hands out file paths, at most ``2 × workers`` at a time, so a
directory of any size never has more than that many images in memory. A re-run is a resume: images already
indexed with the same ExternalImageId are recognised by their hash and skipped before any face work.
"""

from __future__ import annotations

import multiprocessing
from collections.abc import Iterable, Iterator
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from dataclasses import dataclass
from pathlib import Path

from facegate.errors import FacegateError

_worker = None


@dataclass(frozen=True)
class Indexed:
    """What happened to one file: the IndexFaces response, or the error that stopped it."""

    path: Path
    params: dict  # the request minus the image bytes (for the audit record)
    image_sha256: str | None = None
    response: dict | None = None
    repeated: bool = False
    error_code: str | None = None
    error: str | None = None


def _start(data_dir: str, detector: str, runtime: str, owner: str) -> None:
    global _worker
    from facegate.api import build_service

    _worker = (build_service(Path(data_dir), detector=detector, runtime=runtime, threads=1), owner)


def _index_one(path: str, params: dict) -> Indexed:
    import hashlib

    service, owner = _worker
    try:
        data = Path(path).read_bytes()
    except OSError as exc:
        return Indexed(Path(path), params, error_code="UnreadableFile", error=exc.strerror or str(exc))
    digest = hashlib.sha256(data).hexdigest()
    try:
        response, repeated = service.index(owner, {**params, "Image": {"Bytes": data}})
    except FacegateError as exc:
        return Indexed(Path(path), params, digest, error_code=exc.code, error=exc.message)
    return Indexed(Path(path), params, digest, response, repeated)


def index_files(
    files: Iterable[tuple[Path, dict]],
    *,
    data_dir: Path,
    owner: str,
    detector: str = "hog",
    runtime: str = "onnx",
    workers: int = 1,
) -> Iterator[Indexed]:
    """IndexFaces for each (path, params-without-image), in parallel; yields outcomes as they complete."""
    context = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(
        workers, mp_context=context, initializer=_start, initargs=(str(data_dir), detector, runtime, owner)
    ) as pool:
        pending: set[Future] = set()
        for path, params in files:
            if len(pending) >= 2 * workers:  # bounded: never more than this many images in flight
                done, pending = wait(pending, return_when=FIRST_COMPLETED)
                yield from (future.result() for future in done)
            pending.add(pool.submit(_index_one, str(path), params))
        while pending:
            done, pending = wait(pending, return_when=FIRST_COMPLETED)
            yield from (future.result() for future in done)

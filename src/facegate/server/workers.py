"""Where service operations run: face work in a bounded pool of worker processes, the rest on threads.

dlib holds the GIL while it detects and embeds, so face work needs processes to use more than one core. Each
worker process opens its own FaceService (engine + store connection) on the same data directory; SQLite in
WAL mode serialises their writes. The pool is bounded: past ``workers + queue`` requests in flight, a new one
is refused at once with ThrottlingException, which AWS SDKs retry with backoff.
"""

from __future__ import annotations

import asyncio
import logging
import multiprocessing
import os
import threading
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import anyio.to_thread

from facegate.errors import FacegateError, InternalServerError, ThrottlingException
from facegate.service import FaceService

log = logging.getLogger("facegate.server")

# Operations that decode images and run the face models; everything else is store work.
FACE_WORK = frozenset({"IndexFaces", "SearchFacesByImage", "CompareFaces", "DetectFaces", "SearchUsersByImage"})

_worker_service: FaceService | None = None


def _start_worker(data_dir: str, detector: str, runtime: str, threads: int) -> None:
    global _worker_service
    from facegate.api import build_service

    _worker_service = build_service(Path(data_dir), detector=detector, runtime=runtime, threads=threads)
    _worker_service.engine.embedding_model  # load the models now, not on the first request  # noqa: B018
    prepare_search_indexes_in_background(_worker_service)


def prepare_search_indexes_in_background(service: FaceService) -> threading.Thread:
    """Load or build large collections' ANN indexes on a thread, off the request path: a search that arrives
    meanwhile waits for its collection's index rather than starting a second build."""

    def prepare() -> None:
        try:
            started = time.monotonic()
            count = service.prepare_search_indexes()
            if count:
                log.info("search indexes of %d collections ready in %.1f s", count, time.monotonic() - started)
        except Exception:  # the first search then builds it; the server stays up
            log.exception("preparing search indexes failed")

    thread = threading.Thread(target=prepare, name="facegate-search-indexes", daemon=True)
    thread.start()
    return thread


def _run_in_worker(owner: str, operation: str, params: dict) -> tuple[str, object]:
    try:
        return "ok", _worker_service.call(owner, operation, params)
    except FacegateError as exc:
        return "error", (exc.code, exc.status, exc.message)
    except Exception:
        log.exception("%s failed in a worker", operation)
        return "error", ("InternalServerError", 500, "facegate failed to process the request; it has been logged.")


def _ready() -> int:
    return os.getpid()


class OperationRunner:
    """Runs ``service.call`` for the wire layer, face work in processes, bounded as a whole."""

    def __init__(
        self, service: FaceService, data_dir: Path, detector: str, workers: int, queue: int, runtime: str = "onnx"
    ) -> None:
        self.service = service
        self.workers = workers
        self.limit = workers + queue
        self.in_flight = 0  # touched only on the event loop thread
        self._pool = ProcessPoolExecutor(
            workers,
            mp_context=multiprocessing.get_context("spawn"),
            initializer=_start_worker,
            # The workers share the cores: each gets its share of ONNX Runtime threads, not all of them.
            initargs=(str(data_dir), detector, runtime, max(1, (os.cpu_count() or 1) // workers)),
        )

    def warm_up(self) -> None:
        """Start every worker process and load its models before the first request arrives."""
        futures = [self._pool.submit(_ready) for _ in range(self.workers * 2)]
        for future in futures:
            future.result()

    @property
    def queue_depth(self) -> int:
        return max(0, self.in_flight - self.workers)

    async def call(self, owner: str, operation: str, params: dict) -> dict:
        if self.in_flight >= self.limit:
            raise ThrottlingException(
                f"facegate is processing {self.in_flight} requests, its limit: slow down and retry."
            )
        self.in_flight += 1
        try:
            if operation not in FACE_WORK:
                return await anyio.to_thread.run_sync(self.service.call, owner, operation, params)
            status, result = await asyncio.wrap_future(self._pool.submit(_run_in_worker, owner, operation, params))
            if status == "ok":
                return result
            code, http_status, message = result
            raise _rebuild(code, http_status, message)
        finally:
            self.in_flight -= 1

    def close(self) -> None:
        self._pool.shutdown(wait=True, cancel_futures=True)


def _rebuild(code: str, status: int, message: str) -> FacegateError:
    if code == "InternalServerError":
        return InternalServerError(message)
    error = FacegateError(message)
    error.code, error.status = code, status
    return error

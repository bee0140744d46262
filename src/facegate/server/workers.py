"""Where the work of a request runs: every operation on a thread of the server process, and the face models
(decoding, detection, landmarks, embedding) in a bounded pool of worker processes.

dlib holds the GIL while it detects and embeds, so the models need processes to use more than one core. Only
the models go there: the service itself — its store connection, its collections' search indexes — lives once,
in the server process (a worker that searched on its own would hold a copy of every large collection's index:
at 10 million faces, gigabytes per worker). Past ``workers + queue`` requests in flight a new one is refused at
once with ThrottlingException, which AWS SDKs retry with backoff.
"""

from __future__ import annotations

import logging
import multiprocessing
import os
import threading
import time
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor, ThreadPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from pathlib import Path
from typing import Any

import anyio.to_thread

from facegate.engine import FaceEngine, SimilarityScale
from facegate.errors import FacegateError, InternalServerError, ThrottlingException
from facegate.lifetime import exit_with_parent
from facegate.service import FaceService

log = logging.getLogger("facegate.server")

_worker_engine: FaceEngine | None = None


def _start_worker(model_cache: str, detector: str, runtime: str, threads: int, server: int) -> None:
    global _worker_engine
    exit_with_parent(server)  # a server killed with SIGKILL must not leave its workers running
    _worker_engine = FaceEngine(detector=detector, runtime=runtime, threads=threads, model_cache=Path(model_cache))
    _worker_engine.embedding_model  # load the models now, not on the first request  # noqa: B018


def _in_worker(method: str, args: tuple, kwargs: dict) -> tuple[str, Any]:
    try:
        return "ok", getattr(_worker_engine, method)(*args, **kwargs)
    except FacegateError as exc:  # facegate's errors pickle with their class
        return "error", exc
    except Exception:
        log.exception("%s failed in a worker", method)
        return "error", InternalServerError("facegate failed to process the request; it has been logged.")


def _ready() -> int:
    return os.getpid()


class PooledEngine:
    """The engine as the service sees it, with the face work sent to the worker processes. Metadata (model
    version, similarity scale) comes from the server's own engine, which never runs the models. A worker that
    dies (killed, or crashed in native code) fails the requests it held with InternalServerError, and a new
    pool takes over for the next ones."""

    def __init__(self, new_pool: Callable[[], ProcessPoolExecutor], local: FaceEngine, workers: int = 1) -> None:
        self._new_pool = new_pool
        self.pool = new_pool()
        self._local = local
        self._lock = threading.Lock()
        self._threads = ThreadPoolExecutor(max(2, workers), thread_name_prefix="facegate-frames")

    @property
    def model_version(self) -> str:
        return self._local.model_version

    @property
    def similarity(self) -> SimilarityScale:
        return self._local.similarity

    @property
    def max_image_bytes(self) -> int:
        return self._local.max_image_bytes

    def analyse_bytes(self, data: bytes, **options: Any):
        return self._remote("analyse_bytes", data, **options)

    def analyse_many(self, images: list, **options: Any) -> list:
        """Each image in a worker, as many at once as there are workers (a video job's frames)."""
        futures = [self._threads.submit(self._remote, "analyse", image, **options) for image in images]
        return [future.result() for future in futures]

    def _remote(self, method: str, *args: Any, **kwargs: Any) -> Any:
        pool = self.pool
        try:
            status, result = pool.submit(_in_worker, method, args, kwargs).result()
        except BrokenProcessPool:
            with self._lock:
                if self.pool is pool:
                    log.error("a face worker process died; starting a new pool")
                    pool.shutdown(wait=False, cancel_futures=True)
                    self.pool = self._new_pool()
            raise InternalServerError("facegate's face worker stopped while processing the request; retry.") from None
        if status == "ok":
            return result
        raise result

    def close(self) -> None:
        self._threads.shutdown(wait=False, cancel_futures=True)
        self.pool.shutdown(wait=True, cancel_futures=True)


class OperationRunner:
    """Runs requests for the wire layer on threads, the face models in processes, bounded as a whole."""

    def __init__(
        self, service: FaceService, data_dir: Path, detector: str, workers: int, queue: int, runtime: str = "onnx"
    ) -> None:
        self.workers = workers
        self.limit = workers + queue
        self.in_flight = 0  # touched only on the event loop thread

        def new_pool() -> ProcessPoolExecutor:
            return ProcessPoolExecutor(
                workers,
                mp_context=multiprocessing.get_context("spawn"),
                initializer=_start_worker,
                # The workers share the cores: each gets its share of ONNX Runtime threads, not all of them.
                initargs=(
                    str(Path(data_dir) / "models"),
                    detector,
                    runtime,
                    max(1, (os.cpu_count() or 1) // workers),
                    os.getpid(),
                ),
            )

        self.engine = PooledEngine(new_pool, service.engine, workers)
        service.engine = self.engine  # the service's face work now runs in the pool
        self.service = service

    def warm_up(self) -> None:
        """Start every worker process and load its models before the first request arrives."""
        futures = [self.engine.pool.submit(_ready) for _ in range(self.workers * 2)]
        for future in futures:
            future.result()

    @property
    def queue_depth(self) -> int:
        return max(0, self.in_flight - self.workers)

    async def run(self, work: Callable[..., Any], *args: Any) -> Any:
        """``work(*args)`` (the governed operation) on a thread, or ThrottlingException at once when full."""
        if self.in_flight >= self.limit:
            raise ThrottlingException(
                f"facegate is processing {self.in_flight} requests, its limit: slow down and retry."
            )
        self.in_flight += 1
        try:
            return await anyio.to_thread.run_sync(work, *args)
        finally:
            self.in_flight -= 1

    def close(self) -> None:
        self.engine.close()


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

"""Bulk indexing on a Ray cluster: the same governed IndexFaces as ``pipeline.py``, in a pool of Ray actors.

Each actor builds facegate once (models loaded once, one ONNX Runtime thread per CPU it holds) over the shared
PostgreSQL store and audit log, and indexes batches of files it reads itself: the driver holds paths and
results, never image bytes, and keeps at most two batches per actor in flight. Every image is gated and
audited in the actor that indexed it, exactly as `facegate index` does.

Exactly once, whatever fails: an actor that dies is restarted by Ray and its batch retried; a whole job can be
re-run. Neither stores a face twice, because the store refuses a second copy of an image (same collection, image
hash and ExternalImageId) under the collection's row lock in PostgreSQL — the check is in the database, not in
this process's memory; the retried image answers as already indexed. A face acknowledged once stays.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from dataclasses import replace
from pathlib import Path

from facegate.compose import Settings
from facegate.keys import Principal
from facegate.pipeline import BATCH, Indexed, _batches, index_batch

EMBEDDED_REFUSAL = (
    "--ray needs the PostgreSQL store (--store postgresql://… or $FACEGATE_STORE): the embedded SQLite store has "
    "one writer on one machine, which Ray's workers on other machines cannot share. Without --ray, `facegate "
    "index` uses every core of this machine."
)


class _Indexer:
    """One actor: facegate assembled once, indexing the batches it is given."""

    def __init__(self, settings: Settings, principal: Principal, threads: int) -> None:
        from facegate.compose import build

        self.facegate = build(replace(settings, threads=threads))
        self.principal = principal

    def index(self, tasks: list[tuple[str, dict]]) -> list[Indexed]:
        return index_batch(self.facegate.governed, self.principal, tasks)

    def pid(self) -> int:
        import os

        return os.getpid()

    def ready(self) -> bool:
        self.facegate.engine.embedding_model  # load the models before the first batch  # noqa: B018
        return True


def index_files_on_ray(
    files: Iterable[tuple[Path, dict]],
    *,
    settings: Settings,
    principal: Principal,
    address: str | None = None,
    actors: int | None = None,
    cpus_per_actor: int = 1,
    batch: int = BATCH,
    on_actors: Callable[[list], None] | None = None,
) -> Iterator[list[Indexed]]:
    """Governed IndexFaces for each (path, params-without-image) on Ray; yields each batch's outcomes as batches
    complete. ``address`` None starts a local Ray (every core of this machine, or ``actors``); otherwise it
    joins that cluster. ``on_actors`` is given the actor handles (tests kill one)."""
    if not settings.store:
        raise ValueError(EMBEDDED_REFUSAL)
    import ray

    started_here = not ray.is_initialized()
    if started_here:
        options = {"address": address} if address else {"num_cpus": actors * cpus_per_actor if actors else None}
        ray.init(include_dashboard=False, log_to_driver=False, configure_logging=False, **options)
    pool: list = []
    try:
        count = actors or max(1, int(ray.cluster_resources().get("CPU", 1)) // cpus_per_actor)
        indexer = ray.remote(num_cpus=cpus_per_actor, max_restarts=-1, max_task_retries=-1)(_Indexer)
        pool += [indexer.remote(settings, principal, cpus_per_actor) for _ in range(count)]
        ray.get([actor.ready.remote() for actor in pool])
        if on_actors is not None:
            on_actors(pool)
        in_flight: dict = {}  # object ref → actor index
        per_actor = [0] * count
        for chunk in _batches(files, max(1, batch)):
            while min(per_actor) >= 2:  # bounded: never more than two batches per actor in flight
                yield from _collect(ray, in_flight, per_actor)
            i = per_actor.index(min(per_actor))
            ref = pool[i].index.remote([(str(path), params) for path, params in chunk])
            in_flight[ref] = i
            per_actor[i] += 1
        while in_flight:
            yield from _collect(ray, in_flight, per_actor)
    finally:
        for actor in pool:  # their CPUs go back to the cluster (a joined one outlives this job)
            ray.kill(actor, no_restart=True)
        if started_here:
            ray.shutdown()


def _collect(ray, in_flight: dict, per_actor: list[int]) -> Iterator[list[Indexed]]:
    done, _ = ray.wait(list(in_flight), num_returns=1)
    for ref in done:
        per_actor[in_flight.pop(ref)] -= 1
        yield ray.get(ref)

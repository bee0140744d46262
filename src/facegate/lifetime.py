"""Worker processes that end with the process that started them, however it ended."""

from __future__ import annotations

import os
import threading
import time


def exit_with_parent(parent: int, interval: float = 0.5) -> None:
    """Call in a worker process: it exits (``os._exit``) within ``interval`` seconds of ``parent``, the pid of the
    process that started it, ending — SIGKILL included, which gives the parent no chance to stop its workers.

    A daemon thread watches ``os.getppid()``: an orphan is re-parented, so its parent pid changes. (Linux's
    PR_SET_PDEATHSIG would not do: it fires when the *thread* that spawned the worker ends, and
    ProcessPoolExecutor spawns from whichever thread submits — in the server, request threads that come and go.)
    Once the workers are gone, multiprocessing's resource tracker, which holds a pipe from each of them and from
    the parent, reads end-of-file and exits too."""

    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(interval)
        os._exit(1)

    threading.Thread(target=watch, name="facegate-exit-with-parent", daemon=True).start()

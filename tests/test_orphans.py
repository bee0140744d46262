"""Issue 11: a `facegate serve` or `facegate index` killed with SIGKILL takes its worker processes (and
multiprocessing's resource tracker) with it, instead of leaving them running (~620 MB per crash)."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from .test_http import _free_port, boto_client, facegate

pytestmark = pytest.mark.skipif(
    not Path("/proc/self/stat").exists(), reason="finds a process's children through Linux's /proc"
)


def _stat(pid: int) -> list[str] | None:
    """Fields of /proc/<pid>/stat after the command name (state first), or None once the process is gone."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return None


def _children(parent: int) -> dict[int, str]:
    """The live children of ``parent``: pid → start time (with the pid, it names one process even if the pid is
    reused later)."""
    children = {}
    for proc in Path("/proc").iterdir():
        fields = _stat(int(proc.name)) if proc.name.isdigit() else None
        if fields and fields[0] != "Z" and int(fields[1]) == parent:
            children[int(proc.name)] = fields[19]
    return children


def _alive(processes: dict[int, str]) -> dict[int, str]:
    return {
        pid: started for pid, started in processes.items() if (f := _stat(pid)) and f[0] != "Z" and f[19] == started
    }


def _cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace").replace("\0", " ")
    except OSError:
        return ""


def _kill_and_expect_no_survivors(process: subprocess.Popen, workers: int) -> None:
    """SIGKILL ``process`` alone (not its group) and wait, up to 20 s, for every child it had to be gone."""
    children = _children(process.pid)
    spawned = [pid for pid in children if "spawn_main" in _cmdline(pid)]
    assert len(spawned) == workers, {pid: _cmdline(pid) for pid in children}
    os.kill(process.pid, signal.SIGKILL)
    process.wait()
    deadline = time.monotonic() + 20
    while _alive(children) and time.monotonic() < deadline:
        time.sleep(0.2)
    survivors = _alive(children)
    assert not survivors, {pid: _cmdline(pid) for pid in survivors}


def _start(home: Path, *args: str) -> subprocess.Popen:
    env = {**os.environ, "FACEGATE_HOME": str(home)}
    # A session of its own, so that whatever it leaves behind can be cleaned up here.
    return subprocess.Popen(
        [sys.executable, "-m", "facegate", *args],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )


def _clean_up(process: subprocess.Popen) -> None:
    with contextlib.suppress(ProcessLookupError):  # nothing left: the usual case
        os.killpg(process.pid, signal.SIGKILL)
    process.wait()


def test_a_killed_server_takes_its_face_workers_with_it(tmp_path, people):
    home = tmp_path / "data"
    key = json.loads(facegate(home, "keys", "create", "--json"))
    port = _free_port()
    server = _start(home, "serve", "--port", str(port), "--workers", "2")
    endpoint = f"http://127.0.0.1:{port}"
    try:
        for _ in range(600):
            assert server.poll() is None, "the server exited"
            try:
                if httpx.get(f"{endpoint}/healthz", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                time.sleep(0.1)
        rek = boto_client(endpoint, key)
        assert len(rek.detect_faces(Image={"Bytes": people["Tony_Blair"][0].read_bytes()})["FaceDetails"]) == 1
        _kill_and_expect_no_survivors(server, workers=2)
    finally:
        _clean_up(server)


def test_a_killed_bulk_index_takes_its_workers_with_it(tmp_path, lfw):
    photos = tmp_path / "many"
    photos.mkdir()
    for path in sorted(lfw.glob("*/*.jpg"))[:300]:
        shutil.copy(path, photos / path.name)
    home = tmp_path / "home"
    facegate(home, "collections", "create", "big")
    index = _start(home, "index", str(photos), "-c", "big", "--workers", "2")
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:  # until it is indexing: some, not all, faces are in
            assert index.poll() is None, "facegate index exited"
            try:
                with sqlite3.connect(home / "facegate.sqlite3", timeout=5) as db:
                    if db.execute("SELECT COUNT(*) FROM faces").fetchone()[0] >= 10:
                        break
            except sqlite3.OperationalError:
                pass  # not created yet
            time.sleep(0.05)
        _kill_and_expect_no_survivors(index, workers=2)
    finally:
        _clean_up(index)

"""What is particular to the SQLite store: durability under kill -9, schema versioning, WAL. What every store must
do is in test_store_contract.py."""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
import textwrap

from facegate.store.sqlite import MIGRATIONS, SqliteStore

from .conftest import OWNER


def test_acknowledged_faces_survive_kill_9(tmp_path, lfw):
    """A child indexes real photos and prints each FaceId once IndexFaces returned; we kill -9 it mid-run."""
    photos = sorted(lfw.glob("*/*.jpg"))[:300]
    script = textwrap.dedent(
        f"""
        import json, sys
        import facegate
        fg = facegate.open({str(tmp_path / "data")!r}, owner={OWNER!r})
        fg.create_collection("durable")
        for path in {[str(p) for p in photos]!r}:
            for face in fg.index(path, "durable", external_image_id=path.rsplit("/", 1)[1]):
                print(json.dumps(face.face_id), flush=True)
        print("DONE", flush=True)
        """
    )
    child = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True)
    acknowledged = []
    for line in child.stdout:
        acknowledged.append(json.loads(line))
        if len(acknowledged) == 8:
            os.kill(child.pid, signal.SIGKILL)
            break
    child.wait()
    assert child.returncode == -signal.SIGKILL, "the child finished before it could be killed"

    store = SqliteStore(tmp_path / "data")
    assert store._db.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    collection = store.get_collection(OWNER, "durable")
    stored = {f.face_id for f in store.list_faces(collection, None, 1000)}
    assert set(acknowledged) <= stored
    # The search gallery is rebuilt from what SQLite holds.
    assert set(store.gallery(collection).face_ids) == stored
    store.close()


def test_schema_version_is_recorded_and_a_newer_database_is_refused(tmp_path):
    store = SqliteStore(tmp_path)
    assert store.schema_version() == len(MIGRATIONS)
    store.close()
    db = sqlite3.connect(tmp_path / "facegate.sqlite3")
    db.execute("UPDATE meta SET value = '999' WHERE key = 'schema_version'")
    db.commit()
    db.close()
    try:
        SqliteStore(tmp_path)
    except RuntimeError as exc:
        assert "newer than this facegate" in str(exc)
    else:
        raise AssertionError("a database from a newer facegate was opened")


def test_wal_mode(tmp_path):
    store = SqliteStore(tmp_path)
    assert store._db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    store.close()

"""The `facegate` command end to end, as a user runs it, on real photos."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image


def count(summary: str, outcome: str) -> int:
    """The count in the index summary table's row for ``outcome``."""
    match = re.search(r"│ " + re.escape(outcome) + r"\s*│\s*(\d+)", summary)
    assert match, f"no row {outcome!r} in:\n{summary}"
    return int(match.group(1))


def run(home, *args, ok=True):
    env = {**os.environ, "FACEGATE_HOME": str(home), "COLUMNS": "200"}
    result = subprocess.run(
        [sys.executable, "-m", "facegate", *map(str, args)], capture_output=True, text=True, env=env
    )
    if ok:
        assert result.returncode == 0, result.stderr
    return result


@pytest.fixture
def photos(tmp_path, people):
    """A folder tree of real photos (three people, first photo each), a text file and a corrupt JPEG."""
    root = tmp_path / "photos"
    for name, files in people.items():
        if name == "Serena_Williams":
            continue
        (root / name).mkdir(parents=True)
        shutil.copy(files[0], root / name / files[0].name)
    (root / "notes.txt").write_text("not an image")
    (root / "broken.jpg").write_bytes(files[0].read_bytes()[:500])
    return root


def test_cli_end_to_end(tmp_path, photos, people, group_photo):
    home = tmp_path / "home"
    assert "created family" in run(home, "collections", "create", "family").stdout
    assert run(home, "collections", "list").stdout.split() == ["family"]

    indexed = run(home, "index", photos, "-c", "family").stdout
    assert count(indexed, "indexed") == 3
    assert count(indexed, "skipped: not a JPEG, PNG or WebP image") == 1
    assert count(indexed, "failed: InvalidImageFormatException") == 1
    again = run(home, "index", photos, "-c", "family").stdout
    assert count(again, "skipped: already indexed") == 3 and "│ indexed" not in again
    assert json.loads(run(home, "collections", "describe", "family", "--json").stdout)["FaceCount"] == 3

    search = json.loads(run(home, "search", people["Colin_Powell"][1], "-c", "family", "--json").stdout)
    assert set(search) == {"SearchedFaceBoundingBox", "SearchedFaceConfidence", "FaceMatches", "FaceModelVersion"}
    assert search["FaceMatches"][0]["Face"]["ExternalImageId"] == people["Colin_Powell"][0].name
    table = run(home, "search", people["Colin_Powell"][1], "-c", "family").stdout
    assert people["Colin_Powell"][0].name in table

    compare = json.loads(run(home, "compare", people["Tony_Blair"][0], people["Tony_Blair"][1], "--json").stdout)
    assert set(compare) == {"SourceImageFace", "FaceMatches", "UnmatchedFaces"}
    assert compare["FaceMatches"][0]["Similarity"] >= 80

    group = tmp_path / "group.jpg"
    group.write_bytes(group_photo)
    drawn = tmp_path / "drawn.png"
    detect = json.loads(run(home, "detect", group, "--draw", drawn, "--json").stdout)
    assert set(detect) == {"FaceDetails"} and len(detect["FaceDetails"]) == 6
    pixels = np.asarray(Image.open(drawn).convert("RGB")).astype(int)
    assert ((pixels[..., 1] == 255) & (pixels[..., 0] == 0)).sum() > 1000  # green boxes were drawn

    faces = json.loads(run(home, "faces", "list", "-c", "family", "--json").stdout)["Faces"]
    assert len(faces) == 3
    blair = next(f["FaceId"] for f in faces if f["ExternalImageId"].startswith("Tony_Blair"))
    run(home, "users", "create", "-c", "family", "tony")
    assert "associated 1" in run(home, "users", "associate", "-c", "family", "tony", blair).stdout
    assert "tony" in run(home, "users", "search", "-c", "family", "--image", people["Tony_Blair"][2]).stdout
    assert "disassociated 1" in run(home, "users", "disassociate", "-c", "family", "tony", blair).stdout
    assert "associated 1" in run(home, "users", "associate", "-c", "family", "tony", blair).stdout
    deleted = json.loads(run(home, "faces", "delete", "-c", "family", blair, "--json").stdout)
    assert deleted["UnsuccessfulFaceDeletions"][0]["Reasons"] == ["ASSOCIATED_TO_AN_EXISTING_USER"]
    run(home, "users", "delete", "-c", "family", "tony")
    assert "deleted 1" in run(home, "faces", "delete", "-c", "family", blair).stdout

    # The operator's own calls are in the audit log too, and the log verifies.
    records = [json.loads(line) for line in run(home, "audit", "show", "--json").stdout.splitlines()]
    mine = [r for r in records if r.get("operation") == "IndexFaces" and r.get("actor") == "local-cli"]
    indexing = [r for r in mine if r["event"] == "request"]
    # Each image indexed for the first time was announced before the change (its intent) and closed after it.
    intents = {r["seq"] for r in mine if r["event"] == "intent"}
    assert intents and intents <= {r.get("intent_seq") for r in indexing}
    assert sum(1 for r in indexing if r["decision"] == "allow") == 6  # two runs over three photos
    assert any(r["decision"] == "error" and r["error_code"] == "InvalidImageFormatException" for r in indexing)
    assert run(home, "audit", "verify").returncode == 0


def test_index_json_prints_the_index_faces_response(tmp_path, people):
    home = tmp_path / "home"
    run(home, "collections", "create", "c")
    response = json.loads(run(home, "index", people["Tony_Blair"][0], "-c", "c", "--json").stdout)
    assert set(response) == {"FaceRecords", "FaceModelVersion", "UnindexedFaces"}
    assert response["FaceRecords"][0]["Face"]["ExternalImageId"] == people["Tony_Blair"][0].name


@pytest.mark.parametrize(
    "args, code",
    [
        (["search", "IMAGE", "-c", "missing"], "ResourceNotFoundException"),
        (["collections", "create", "bad name!"], "ValidationException"),
        (["detect", "NOT_IMAGE"], "InvalidImageFormatException"),
        (["detect", "/no/such/file.jpg"], "file not found"),
    ],
)
def test_errors_are_one_line_with_their_code(tmp_path, people, args, code):
    not_image = tmp_path / "x.jpg"
    not_image.write_text("hello")
    args = [str(people["Tony_Blair"][0]) if a == "IMAGE" else str(not_image) if a == "NOT_IMAGE" else a for a in args]
    result = run(tmp_path / "home", *args, ok=False)
    assert result.returncode != 0
    assert "Traceback" not in result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and code in lines[0]


def test_parallel_index_resumes_after_being_killed(tmp_path, lfw):
    """Two workers index 400 photos; killed part-way, a re-run finishes the job without storing anything twice."""
    import signal
    import sqlite3
    import time

    photos = tmp_path / "many"
    photos.mkdir()
    for path in sorted(lfw.glob("*/*.jpg"))[:400]:
        shutil.copy(path, photos / path.name)
    home = tmp_path / "home"
    run(home, "collections", "create", "big")
    env = {**os.environ, "FACEGATE_HOME": str(home)}
    child = subprocess.Popen(
        [sys.executable, "-m", "facegate", "index", str(photos), "-c", "big", "--workers", "2"],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    deadline = time.time() + 120
    while time.time() < deadline:  # wait until some, not all, faces are in
        try:
            with sqlite3.connect(home / "facegate.sqlite3", timeout=5) as db:
                if db.execute("SELECT COUNT(*) FROM faces").fetchone()[0] >= 20:
                    break
        except sqlite3.OperationalError:
            pass  # not created yet
        time.sleep(0.05)
    os.killpg(child.pid, signal.SIGKILL)
    child.wait()
    stored = json.loads(run(home, "faces", "list", "-c", "big", "--json").stdout)["Faces"]
    partial = len({f["ExternalImageId"] for f in stored})  # images, not faces: a photo may show two people
    assert 0 < partial < 390

    resumed = run(home, "index", photos, "-c", "big", "--workers", "2").stdout
    already = count(resumed, "skipped: already indexed")
    assert (
        already >= partial and already + count(resumed, "indexed") + _optional(resumed, "skipped: no face found") == 400
    )
    final = json.loads(run(home, "faces", "list", "-c", "big", "--json").stdout)["Faces"]
    placed = {(f["ExternalImageId"], *(round(f["BoundingBox"][k], 4) for k in ("Left", "Top"))) for f in final}
    assert len(placed) == len(final)  # no image stored twice: each face of each image once
    again = run(home, "index", photos, "-c", "big", "--workers", "2").stdout
    assert count(again, "skipped: already indexed") == len({f["ExternalImageId"] for f in final})


def _optional(summary: str, outcome: str) -> int:
    return count(summary, outcome) if outcome in summary else 0

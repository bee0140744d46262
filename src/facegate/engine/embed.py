"""The face embedding model (what is computed) kept apart from what runs it, so another runtime or
another model (an ONNX network a user supplies) can replace it without touching callers."""

from __future__ import annotations

import threading
from typing import Protocol

import dlib
import numpy as np

from facegate.engine.models import EMBEDDING_MODEL_VERSION, embedding_weights, weights_sha256


class EmbeddingModel(Protocol):
    version: str  # recorded with every face; a collection refuses faces of another version
    dimensions: int
    chip_size: int  # aligned chip side in pixels
    chip_padding: float  # dlib's padding of the 5-point template

    def embed(self, chips: list[np.ndarray]) -> np.ndarray:
        """Embeddings (n × dimensions, float32) of aligned RGB chips."""
        ...

    def weights_hash(self) -> str: ...


class DlibResnet:
    """dlib's 128-d ResNet (29 conv layers), run by dlib itself on the CPU."""

    version = EMBEDDING_MODEL_VERSION
    dimensions = 128
    chip_size = 150
    chip_padding = 0.25

    def __init__(self) -> None:
        self._net = dlib.face_recognition_model_v1(str(embedding_weights()))
        self._lock = threading.Lock()  # the network object holds scratch tensors

    def embed(self, chips: list[np.ndarray]) -> np.ndarray:
        if not chips:
            return np.zeros((0, self.dimensions), dtype=np.float32)
        with self._lock:
            vectors = self._net.compute_face_descriptor(chips)
        return np.asarray(vectors, dtype=np.float32).reshape(len(chips), self.dimensions)

    def weights_hash(self) -> str:
        return weights_sha256(embedding_weights())

"""Embedding distance ↔ Rekognition's 0–100 similarity.

One monotone mapping: piecewise-linear interpolation through the anchor points of a calibration table
(``calibration.json``, written by ``bench/calibrate.py`` from real impostor and genuine pairs). Each anchor
ties a similarity to the Euclidean distance at which a stated false-match rate was measured, so a client's
threshold of, say, 99 means "accept only distances at which 1 in 100,000 impostor pairs was accepted".
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from functools import cache
from importlib import resources

import numpy as np


@dataclass(frozen=True)
class SimilarityScale:
    model_version: str
    distances: np.ndarray  # increasing
    similarities: np.ndarray  # decreasing, 100 at distance 0

    def similarity(self, distance: np.ndarray | float) -> np.ndarray | float:
        """Similarity 0–100 for embedding distances (arrays in, arrays out)."""
        result = np.interp(distance, self.distances, self.similarities)
        return float(result) if np.ndim(result) == 0 else result

    def max_distance(self, threshold: float) -> float:
        """The largest distance whose similarity is still ≥ ``threshold``."""
        return float(np.interp(threshold, self.similarities[::-1], self.distances[::-1]))


@cache
def calibration_table() -> dict:
    return json.loads(resources.files("facegate.engine").joinpath("calibration.json").read_text())


@cache
def similarity_scale(model_version: str) -> SimilarityScale:
    table = calibration_table()
    if table["model_version"] != model_version:
        raise ValueError(
            f"No similarity calibration for model {model_version!r} (calibrated: {table['model_version']!r}); "
            "run bench/calibrate.py for it."
        )
    anchors = sorted((a["distance"], a["similarity"]) for a in table["anchors"])
    distances = np.array([d for d, _ in anchors], dtype=np.float64)
    similarities = np.array([s for _, s in anchors], dtype=np.float64)
    if np.any(np.diff(distances) <= 0) or np.any(np.diff(similarities) >= 0):
        raise ValueError("calibration.json anchors must be strictly monotone")
    return SimilarityScale(model_version, distances, similarities)

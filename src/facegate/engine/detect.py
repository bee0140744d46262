"""Face detectors: dlib's HOG and its MMOD CNN (int8, the default), all giving boxes with a 0–100 confidence.

The MMOD CNN comes three ways, one network (``mmod_human_face_detector.dat``): ``cnn``, in int8 on ONNX Runtime
with the upsampling folded into the network (``mmod_int8``, fast); ``cnn-float``, in float32 on ONNX Runtime
with dlib's exact arithmetic (``mmod_onnx``); ``cnn-dlib``, run by dlib itself (the reference, slow).
"""

from __future__ import annotations

import math
import threading
from typing import Protocol

import dlib
import numpy as np

from facegate.config import DEFAULT_DETECTOR as DEFAULT_DETECTOR  # re-exported
from facegate.engine.faces import Box
from facegate.engine.models import cnn_detector_weights

# Both detectors' windows are 80 px, so one 2× upsampling finds faces down to about 40 px. Upsampling a large
# photo costs 4× the pixels, so big images are first reduced to this budget (≈ a 1920×1080 frame): the smallest
# face found is about 40 px up to that many pixels and 40·√(pixels / budget) px above (80 px at 3840×2160).
DETECTION_PIXEL_BUDGET = 1920 * 1080
# Images this small that show no face at one upsampling get a second try at two.
SMALL_IMAGE_SIDE = 320


class Detector(Protocol):
    name: str

    def detect(self, image: np.ndarray) -> list[tuple[Box, float]]:
        """Boxes in pixels of ``image`` with a confidence 0–100, in no particular order."""
        ...


def plan_detection(height: int, width: int) -> tuple[float, int]:
    """(scale applied before detection, number of 2× upsamplings) for an image of this size."""
    return min(1.0, math.sqrt(DETECTION_PIXEL_BUDGET / (height * width))), 1


def _resize(image: np.ndarray, scale: float) -> np.ndarray:
    if scale >= 1.0:
        return image
    from PIL import Image

    height, width = image.shape[:2]
    size = (max(1, round(width * scale)), max(1, round(height * scale)))
    return np.asarray(Image.fromarray(image).resize(size, Image.Resampling.BILINEAR))


def _logistic(x: float) -> float:
    return 100.0 / (1.0 + math.exp(-x))


class HogDetector:
    """dlib's frontal HOG + linear SVM detector. Confidence is a logistic of the SVM margin: the detector's
    own decision boundary (margin 0) maps to 88, a margin of 1 (a clear face) to 99.7."""

    name = "hog"

    def __init__(self) -> None:
        self._detector = dlib.get_frontal_face_detector()

    def detect(self, image: np.ndarray) -> list[tuple[Box, float]]:
        scale, upsample = plan_detection(*image.shape[:2])
        working = _resize(image, scale)
        rects, scores, _ = self._detector.run(working, upsample, 0.0)
        if not rects and max(working.shape[:2]) <= SMALL_IMAGE_SIDE:
            # Tight crops sometimes need a second doubling; paying 4× the detector time only on a miss keeps
            # the common case fast (measured on UTKFace's 200-px crops: 1.4% more faces found).
            rects, scores, _ = self._detector.run(working, upsample + 1, 0.0)
        return [(_box(r, scale), _logistic(4.0 * (s + 0.5))) for r, s in zip(rects, scores, strict=True)]


class CnnDetector:
    """dlib's MMOD CNN detector run by dlib: more robust to pose than HOG, much slower on a CPU. Confidence is a
    logistic of the detector's score (its threshold 0 maps to 88, as for HOG)."""

    name = "cnn-dlib"

    def __init__(self) -> None:
        self._detector = dlib.cnn_face_detection_model_v1(str(cnn_detector_weights()))
        self._lock = threading.Lock()  # dlib's DNN keeps per-network scratch tensors

    def detect(self, image: np.ndarray) -> list[tuple[Box, float]]:
        scale, upsample = plan_detection(*image.shape[:2])
        with self._lock:
            found = self._detector(_resize(image, scale), upsample)
        return [(_box(d.rect, scale), _logistic(4.0 * (d.confidence + 0.5))) for d in found]


def _box(rect: dlib.rectangle, scale: float) -> Box:
    # dlib's rectangles are inclusive on both ends.
    return Box(rect.left() / scale, rect.top() / scale, (rect.right() + 1) / scale, (rect.bottom() + 1) / scale)


DETECTORS = {
    "hog": "dlib's HOG",
    "cnn": "dlib's MMOD CNN in int8 on ONNX Runtime",
    "cnn-float": "dlib's MMOD CNN in float32 on ONNX Runtime",
    "cnn-dlib": "dlib's MMOD CNN run by dlib",
}


def check_detector(name: str) -> str:
    """``name`` if it is one of ``DETECTORS``; else a ValueError that lists them."""
    if name not in DETECTORS:
        choices = ", ".join(f"'{n}' ({what})" for n, what in DETECTORS.items())
        raise ValueError(f"Unknown face detector {name!r}: choose {choices}.")
    return name


def make_detector(name: str, *, threads: int | None = None) -> Detector:
    """The detector called ``name`` (one of ``DETECTORS``); ``threads`` caps ONNX Runtime's threads."""
    if check_detector(name) == "hog":
        return HogDetector()
    if name == "cnn":
        from facegate.engine.mmod_int8 import Int8MmodDetector  # these modules import this one

        return Int8MmodDetector(threads=threads)
    if name == "cnn-float":
        from facegate.engine.mmod_onnx import OnnxMmodDetector

        return OnnxMmodDetector(threads=threads)
    return CnnDetector()

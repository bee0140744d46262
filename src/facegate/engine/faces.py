"""What the engine finds in an image: plain, typed values with no knowledge of the wire format."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np


@dataclass(frozen=True)
class Box:
    """A face box in pixels of the decoded (upright) image: left/top inclusive, right/bottom exclusive."""

    left: float
    top: float
    right: float
    bottom: float

    @property
    def width(self) -> float:
        return self.right - self.left

    @property
    def height(self) -> float:
        return self.bottom - self.top

    @property
    def area(self) -> float:
        return max(self.width, 0.0) * max(self.height, 0.0)


@dataclass(frozen=True)
class Pose:
    roll: float
    yaw: float
    pitch: float


@dataclass(frozen=True)
class Quality:
    brightness: float
    sharpness: float


@dataclass
class Face:
    """One detected face. ``landmarks`` maps Rekognition landmark types to pixel (x, y) positions."""

    box: Box
    confidence: float
    landmarks: dict[str, tuple[float, float]]
    pose: Pose
    quality: Quality
    embedding: np.ndarray | None = field(default=None, repr=False)


@dataclass(frozen=True)
class AnalysedImage:
    """The faces of one image (largest first) with the image's size, needed to express ratios."""

    width: int
    height: int
    faces: list[Face]

"""facegate: accountable face recognition that speaks Amazon Rekognition's face API."""

from facegate.api import BoundingBox, ComparedFace, DetectedFace, FaceGate, FaceMatch, IndexedFace, open
from facegate.errors import FacegateError

__version__ = "0.1.0"

__all__ = [
    "BoundingBox",
    "ComparedFace",
    "DetectedFace",
    "FaceGate",
    "FaceMatch",
    "FacegateError",
    "IndexedFace",
    "open",
]

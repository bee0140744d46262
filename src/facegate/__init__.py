"""facegate: accountable face recognition that speaks Amazon Rekognition's face API."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from facegate.errors import FacegateError

if TYPE_CHECKING:
    from facegate.api import BoundingBox, ComparedFace, DetectedFace, FaceGate, FaceMatch, IndexedFace, open

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

# Loaded on first use, so that importing a light part (an auditor's ``facegate.audit.verify``) does not pull
# in the face models, numpy and the server.
_FROM_API = {"BoundingBox", "ComparedFace", "DetectedFace", "FaceGate", "FaceMatch", "IndexedFace", "open"}


def __getattr__(name: str) -> Any:
    if name in _FROM_API:
        from facegate import api

        value = getattr(api, name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'facegate' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | _FROM_API)

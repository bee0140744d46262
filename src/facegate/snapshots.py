"""Faces as JSON snapshots, for what is kept after the request that found them (a video job's findings, a review
case's candidates): a found face with its frame's size and pixel geometry, a stored face as it was when matched."""

from __future__ import annotations

from facegate.engine.faces import Box, Face, Pose, Quality
from facegate.results import FoundFace
from facegate.store import StoredFace


def found_face_json(found: FoundFace) -> dict:
    face = found.face
    box = face.box
    return {
        "size": [found.image_width, found.image_height],
        "box": [box.left, box.top, box.right, box.bottom],
        "confidence": face.confidence,
        "landmarks": {name: [x, y] for name, (x, y) in face.landmarks.items()},
        "pose": [face.pose.roll, face.pose.yaw, face.pose.pitch],
        "quality": [face.quality.brightness, face.quality.sharpness],
    }


def found_face_of(body: dict) -> FoundFace:
    face = Face(
        box=Box(*body["box"]),
        confidence=body["confidence"],
        landmarks={name: (x, y) for name, (x, y) in body["landmarks"].items()},
        pose=Pose(*body["pose"]),
        quality=Quality(*body["quality"]),
    )
    width, height = body["size"]
    return FoundFace(face, width, height)


def stored_face_json(face: StoredFace) -> dict:
    return {
        "face_id": face.face_id,
        "image_id": face.image_id,
        "external_image_id": face.external_image_id,
        "box": list(face.box),
        "confidence": face.confidence,
        "image_hash": face.image_hash,
        "model_version": face.model_version,
        "indexed_at": face.indexed_at,
        "user_id": face.user_id,
    }


def stored_face_of(body: dict) -> StoredFace:
    return StoredFace(**{**body, "box": tuple(body["box"])})

"""Landmarks in Rekognition's vocabulary, head pose from landmarks, and image quality of a face."""

from __future__ import annotations

import math

import numpy as np

from facegate.engine.faces import Box, Pose, Quality

# dlib's 68-point (iBUG) indices for each Rekognition landmark type. "Left" is the viewer's left, as in
# Rekognition's examples (eyeLeft has the smaller X). Tuples are averaged.
LANDMARK_POINTS: dict[str, tuple[int, ...]] = {
    "eyeLeft": (36, 37, 38, 39, 40, 41),
    "eyeRight": (42, 43, 44, 45, 46, 47),
    "nose": (30,),
    "mouthLeft": (48,),
    "mouthRight": (54,),
    "leftEyeBrowLeft": (17,),
    "leftEyeBrowRight": (21,),
    "leftEyeBrowUp": (19,),
    "rightEyeBrowLeft": (22,),
    "rightEyeBrowRight": (26,),
    "rightEyeBrowUp": (24,),
    "leftEyeLeft": (36,),
    "leftEyeRight": (39,),
    "leftEyeUp": (37, 38),
    "leftEyeDown": (40, 41),
    "rightEyeLeft": (42,),
    "rightEyeRight": (45,),
    "rightEyeUp": (43, 44),
    "rightEyeDown": (46, 47),
    "noseLeft": (31,),
    "noseRight": (35,),
    "mouthUp": (51,),
    "mouthDown": (57,),
    # The 68-point model has no pupils; the eye's centroid is where the pupil is in a forward gaze.
    "leftPupil": (36, 37, 38, 39, 40, 41),
    "rightPupil": (42, 43, 44, 45, 46, 47),
    "upperJawlineLeft": (1,),
    "midJawlineLeft": (4,),
    "chinBottom": (8,),
    "midJawlineRight": (12,),
    "upperJawlineRight": (15,),
}


def rekognition_landmarks(points68: np.ndarray) -> dict[str, tuple[float, float]]:
    """Map a 68×2 array of pixel positions to Rekognition's 30 landmark types (pixels)."""
    out = {}
    for name, idx in LANDMARK_POINTS.items():
        x, y = points68[list(idx)].mean(axis=0)
        out[name] = (float(x), float(y))
    return out


# A generic head (millimetre-like units; x to the viewer's right, y up, z towards the camera) at the six
# 68-point landmarks that are stable under expression: nose tip, chin, outer eye corners, mouth corners.
_POSE_POINTS = (30, 8, 36, 45, 48, 54)
_HEAD_MODEL = np.array(
    [
        [0.0, 0.0, 0.0],
        [0.0, -330.0, -65.0],
        [-225.0, 170.0, -135.0],
        [225.0, 170.0, -135.0],
        [-150.0, -150.0, -125.0],
        [150.0, -150.0, -125.0],
    ]
)


def estimate_pose(points68: np.ndarray) -> Pose:
    """Roll, yaw and pitch in degrees from a scaled-orthographic fit of a generic head to six landmarks.

    Zero is a frontal face; roll is positive when the head tilts clockwise in the image, yaw when the face
    turns towards the viewer's right, pitch when it tilts up. Accurate to a few degrees near frontal,
    coarser beyond ±45° where the 2-D landmarks themselves degrade.
    """
    image_pts = points68[list(_POSE_POINTS)].astype(np.float64)
    image_pts[:, 1] *= -1.0  # image y grows downwards; the model's grows upwards
    image_pts -= image_pts.mean(axis=0)
    model = _HEAD_MODEL - _HEAD_MODEL.mean(axis=0)
    projection, *_ = np.linalg.lstsq(model, image_pts, rcond=None)  # 3×2: model → image
    r1, r2 = projection[:, 0], projection[:, 1]
    r1 = r1 / np.linalg.norm(r1)
    r2 = r2 - r1 * (r1 @ r2)
    r2 = r2 / np.linalg.norm(r2)
    r3 = np.cross(r1, r2)
    rotation = np.stack([r1, r2, r3])
    pitch = math.degrees(math.atan2(rotation[2, 1], rotation[2, 2]))
    yaw = math.degrees(math.asin(max(-1.0, min(1.0, -rotation[2, 0]))))
    roll = math.degrees(math.atan2(-rotation[1, 0], rotation[0, 0]))
    return Pose(roll=roll, yaw=yaw, pitch=pitch)


def brightness(image: np.ndarray, box: Box) -> float:
    """Mean luma (BT.601) inside the face box, as 0–100."""
    height, width = image.shape[:2]
    left, top = max(0, int(box.left)), max(0, int(box.top))
    right, bottom = min(width, int(math.ceil(box.right))), min(height, int(math.ceil(box.bottom)))
    region = image[top:bottom, left:right]
    if region.size == 0:
        return 0.0
    luma = region[..., 0] * 0.299 + region[..., 1] * 0.587 + region[..., 2] * 0.114
    return float(luma.mean() / 255.0 * 100.0)


# Laplacian variance of a 150-px chip: ~10 for an upscaled, blurred face, ~2000 for a crisp studio one.
_SHARPNESS_FULL_SCALE = math.log10(1.0 + 2000.0)


def sharpness(chip: np.ndarray) -> float:
    """Focus measure 0–100: log of the Laplacian variance of the aligned face chip, 100 at ≥ 2000."""
    gray = chip.astype(np.float64).mean(axis=2)
    lap = 4.0 * gray[1:-1, 1:-1] - gray[:-2, 1:-1] - gray[2:, 1:-1] - gray[1:-1, :-2] - gray[1:-1, 2:]
    return float(min(100.0, 100.0 * math.log10(1.0 + lap.var()) / _SHARPNESS_FULL_SCALE))


def face_quality(image: np.ndarray, box: Box, chip: np.ndarray) -> Quality:
    return Quality(brightness=brightness(image, box), sharpness=sharpness(chip))

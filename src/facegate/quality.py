"""QualityFilter: which detected faces are good enough to index or search, and why not.

Rules per level (a face failing any rule is filtered, with every failed rule's Rekognition reason):

| level          | confidence ≥ | box side ≥ (px) | abs(yaw), abs(pitch) ≤ | brightness ≥ | sharpness ≥ |
|----------------|--------------|-----------------|------------------------|--------------|-------------|
| LOW (and AUTO) | 50           | 20              | 80°                    | 5            | 10          |
| MEDIUM         | 90           | 40              | 60°                    | 15           | 25          |
| HIGH           | 99           | 64              | 40°                    | 25           | 40          |

NONE filters nothing. AUTO, IndexFaces' default, is LOW: it removes only faces that are unusable for
recognition, as Rekognition's AUTO does. Sharpness 10 is the focus of a face smoothed past recognition; the
blurriest LFW faces (upscaled 150-px crops) score about 33, a crisp portrait 80–100.
"""

from __future__ import annotations

from dataclasses import dataclass

from facegate.engine.faces import Face


@dataclass(frozen=True)
class QualityRule:
    min_confidence: float
    min_side: float
    max_angle: float
    min_brightness: float
    min_sharpness: float


RULES: dict[str, QualityRule | None] = {
    "NONE": None,
    "AUTO": QualityRule(50, 20, 80, 5, 10),
    "LOW": QualityRule(50, 20, 80, 5, 10),
    "MEDIUM": QualityRule(90, 40, 60, 15, 25),
    "HIGH": QualityRule(99, 64, 40, 25, 40),
}


def filter_reasons(face: Face, level: str) -> list[str]:
    """Rekognition reasons why ``face`` fails ``level``; empty when it passes."""
    rule = RULES[level]
    if rule is None:
        return []
    reasons = []
    if max(abs(face.pose.yaw), abs(face.pose.pitch)) > rule.max_angle:
        reasons.append("EXTREME_POSE")
    if face.quality.brightness < rule.min_brightness:
        reasons.append("LOW_BRIGHTNESS")
    if face.quality.sharpness < rule.min_sharpness:
        reasons.append("LOW_SHARPNESS")
    if face.confidence < rule.min_confidence:
        reasons.append("LOW_CONFIDENCE")
    if min(face.box.width, face.box.height) < rule.min_side:
        reasons.append("SMALL_BOUNDING_BOX")
    return reasons

"""Face crops for people to look at: a reviewer compares the probe's face with each candidate's. Cut from the
image with a margin, upright as the engine saw it, at most 300 px, as JPEG."""

from __future__ import annotations

import io

import numpy as np

from facegate.results import FoundFace
from facegate.store import Collection

CROP_MARGIN = 0.35  # of the face box, each side: hair line and jaw, not the whole scene


def face_crop(image: bytes | np.ndarray, found: FoundFace) -> bytes | None:
    """The face with a margin, as JPEG (upright, as the engine saw it), from an encoded image or an RGB frame;
    None if it cannot be cut."""
    from PIL import Image, ImageOps

    try:
        if isinstance(image, np.ndarray):
            upright = Image.fromarray(image)
        else:
            with Image.open(io.BytesIO(image)) as opened:
                upright = ImageOps.exif_transpose(opened).convert("RGB")
    except Exception:
        return None
    scale_x, scale_y = upright.width / found.image_width, upright.height / found.image_height
    box = found.face.box
    margin_x, margin_y = box.width * CROP_MARGIN, box.height * CROP_MARGIN
    region = (
        max(0, int((box.left - margin_x) * scale_x)),
        max(0, int((box.top - margin_y) * scale_y)),
        min(upright.width, int((box.right + margin_x) * scale_x)),
        min(upright.height, int((box.bottom + margin_y) * scale_y)),
    )
    crop = upright.crop(region)
    crop.thumbnail((300, 300))
    out = io.BytesIO()
    crop.save(out, "JPEG", quality=90)
    return out.getvalue()


def thumbnails_setting(collection: Collection) -> str:
    """The setting that makes IndexFaces keep a face crop per face of this collection (by its key, never reused)."""
    return f"thumbnails:{collection.pk}"

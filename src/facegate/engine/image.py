"""Image bytes in, an 8-bit RGB array out — or a Rekognition error that names what was wrong."""

from __future__ import annotations

import contextlib
import io
import warnings

import numpy as np
from PIL import Image, ImageOps

from facegate.errors import ImageTooLargeException, InvalidImageFormatException, InvalidParameterException

DEFAULT_MAX_BYTES = 5 * 1024 * 1024  # Rekognition's limit for Image.Bytes
DEFAULT_MAX_PIXELS = 40_000_000  # well above any real photo, far below a decompression bomb
MIN_SIDE = 80  # Rekognition refuses images smaller than 80 px in either dimension

# Recognised by content: the first bytes of each accepted format.
_SIGNATURES = {
    b"\xff\xd8\xff": "JPEG",
    b"\x89PNG\r\n\x1a\n": "PNG",
}


def sniff_format(data: bytes) -> str | None:
    """The image format named by the content's magic bytes (JPEG, PNG or WEBP), or None."""
    for magic, name in _SIGNATURES.items():
        if data.startswith(magic):
            return name
    if len(data) >= 12 and data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "WEBP"
    return None


def decode_image(
    data: bytes, *, max_bytes: int = DEFAULT_MAX_BYTES, max_pixels: int = DEFAULT_MAX_PIXELS
) -> np.ndarray:
    """Decode JPEG, PNG or WebP bytes into an upright H×W×3 uint8 RGB array.

    EXIF orientation is applied; grayscale, palette, CMYK, alpha and 16-bit images are converted to RGB.
    Raises InvalidImageFormatException (empty, truncated, unsupported or non-image input),
    ImageTooLargeException (over ``max_bytes`` or ``max_pixels``) or InvalidParameterException (a side
    under 80 px).
    """
    if not data:
        raise InvalidImageFormatException("The image is empty: send the bytes of a JPEG, PNG or WebP image.")
    if len(data) > max_bytes:
        raise ImageTooLargeException(
            f"The image is {len(data):,} bytes; the limit is {max_bytes:,} bytes. Resize or recompress it."
        )
    fmt = sniff_format(data)
    if fmt is None:
        raise InvalidImageFormatException(
            "The image format is not supported: the bytes are not a JPEG, PNG or WebP image."
        )
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            image = Image.open(io.BytesIO(data), formats=[fmt])
            width, height = image.size
            if width * height > max_pixels:
                raise ImageTooLargeException(
                    f"The image is {width}×{height} pixels; at most {max_pixels:,} pixels are accepted."
                )
            image.load()
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise ImageTooLargeException(f"The image declares too many pixels to decode safely: {exc}") from None
    except ImageTooLargeException:
        raise
    except Exception as exc:  # Pillow raises many types for damaged files; all mean the same to a client
        raise InvalidImageFormatException(
            f"The {fmt} image could not be decoded (truncated or corrupt): {exc}"
        ) from None
    return to_rgb_array(image)


def to_rgb_array(image: Image.Image) -> np.ndarray:
    """Apply EXIF orientation and convert any mode to an H×W×3 uint8 RGB array; check the minimum size."""
    # A broken EXIF block should not make an otherwise good image unusable.
    with contextlib.suppress(Exception):
        image = ImageOps.exif_transpose(image)
    if image.mode in ("I;16", "I;16B", "I;16L", "I"):
        # 16/32-bit grayscale: scale to 8 bits by the actual range rather than clipping
        arr = np.asarray(image, dtype=np.float64)
        top = 65535.0 if arr.max() > 255 else 255.0
        image = Image.fromarray(np.clip(arr * (255.0 / top), 0, 255).astype(np.uint8))
    if image.mode in ("RGBA", "LA", "PA") or (image.mode == "P" and "transparency" in image.info):
        # Composite transparency on white, as a viewer shows it, rather than on undefined colour values.
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        image = Image.alpha_composite(background, rgba)
    rgb = np.asarray(image.convert("RGB"), dtype=np.uint8)
    height, width = rgb.shape[:2]
    if height < MIN_SIDE or width < MIN_SIDE:
        raise InvalidParameterException(
            f"The image is {width}×{height} pixels; each side must be at least {MIN_SIDE} pixels."
        )
    return np.ascontiguousarray(rgb)

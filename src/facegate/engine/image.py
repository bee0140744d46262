"""Image bytes in, an 8-bit RGB array out — or a Rekognition error that names what was wrong."""

from __future__ import annotations

import contextlib
import io
import math
import warnings

import numpy as np
from PIL import Image, ImageOps

from facegate.engine.detect import DETECTION_PIXEL_BUDGET
from facegate.errors import ImageTooLargeException, InvalidImageFormatException, InvalidParameterException

DEFAULT_MAX_BYTES = 5 * 1024 * 1024  # Rekognition's limit for Image.Bytes
DEFAULT_MAX_PIXELS = 40_000_000  # well above any real photo, far below a decompression bomb
MIN_SIDE = 80  # Rekognition refuses images smaller than 80 px in either dimension
# Larger images are reduced to this many pixels while decoding. At twice the detector's resolution in each
# direction, the smallest face it finds (~40 px there) is ~80 px here, about what the 150-px chip gives a face;
# more pixels would cost memory and time, not detail.
WORKING_PIXELS = 4 * DETECTION_PIXEL_BUDGET
# A decode's memory, estimated from the header; an image that would need more is refused before decoding.
# Every PNG and JPEG within the pixel limit fits (the worst, 40 MP with alpha, ~430 MB); a WebP, decoded
# three times over, fits up to ~30 MP.
DEFAULT_MAX_DECODE_BYTES = 512 * 1024 * 1024
_GRAY16 = ("I;16", "I;16B", "I;16L", "I")

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
    data: bytes,
    *,
    max_bytes: int = DEFAULT_MAX_BYTES,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    max_decode_bytes: int = DEFAULT_MAX_DECODE_BYTES,
) -> np.ndarray:
    """Decode JPEG, PNG or WebP bytes into an upright H×W×3 uint8 RGB array.

    EXIF orientation is applied; grayscale, palette, CMYK, alpha and 16-bit images are converted to RGB. An
    image above ``WORKING_PIXELS`` comes out reduced to about that many pixels, with its aspect ratio (JPEG
    decodes at a reduced scale directly); smaller ones come out at their own size.
    Raises InvalidImageFormatException (empty, truncated, unsupported or non-image input),
    ImageTooLargeException (over ``max_bytes`` or ``max_pixels``, or needing more than ``max_decode_bytes``
    of memory to decode) or InvalidParameterException (a side under 80 px).
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
            working = working_size(width, height)
            if fmt == "JPEG" and working != image.size:
                image.draft(image.mode, working)  # libjpeg decodes at 1/2, 1/4 or 1/8 scale, never below working
            cost = decode_cost(image, (width, height), working)
            if cost > max_decode_bytes:
                raise ImageTooLargeException(
                    f"The image is {width}×{height} pixels ({image.mode}); decoding it would need about "
                    f"{cost / 2**20:,.0f} MB of memory, the limit is {max_decode_bytes / 2**20:,.0f} MB. "
                    "Send a smaller image."
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
    return to_rgb_array(image, working)


def working_size(width: int, height: int) -> tuple[int, int]:
    """The size an image of ``width``×``height`` is decoded to: its own up to ``WORKING_PIXELS``, else reduced
    to about that many pixels with the same aspect ratio (never to a side under ``MIN_SIDE``)."""
    if width * height <= WORKING_PIXELS:
        return width, height
    scale = max(math.sqrt(WORKING_PIXELS / (width * height)), min(1.0, MIN_SIDE / min(width, height)))
    return max(1, round(width * scale)), max(1, round(height * scale))


def decode_cost(image: Image.Image, size: tuple[int, int], working: tuple[int, int]) -> int:
    """Bytes of memory that decoding ``image`` (opened, not loaded; ``size`` as declared) to ``working`` needs
    at its peak, an upper bound measured against real decodes: the decoded pixels (WebP: three copies, libwebp's
    and Pillow's), a converted copy at that size where reducing needs one, and the working copies."""
    decoded = image.size[0] * image.size[1]
    cost = decoded * (2 if image.mode in _GRAY16[:3] else 1 if image.mode in ("1", "L", "P") else 4)
    if image.format == "WEBP":
        cost *= 3
    if image.size != working and image.mode in ("1", "P", "PA", "LA", "RGBA"):
        cost += decoded * 4  # palettes become colours, alpha is premultiplied: at the decoded size
    if image.format == "JPEG" and image.info.get("progressive"):
        cost += size[0] * size[1] * 2 * len(image.getbands())  # libjpeg may hold every coefficient, full size
    return cost + working[0] * working[1] * 16  # RGBA, RGB, the array, and the 16-bit or alpha conversions


def to_rgb_array(image: Image.Image, size: tuple[int, int] | None = None) -> np.ndarray:
    """Reduce a loaded image to ``size`` (as stored, before EXIF orientation; default its own), apply EXIF
    orientation and convert any mode to an H×W×3 uint8 RGB array; check the minimum size."""
    top = 0.0
    if image.mode in _GRAY16:
        # 16/32-bit grayscale: scaled to 8 bits by the actual range rather than clipped
        top = 65535.0 if image.getextrema()[1] > 255 else 255.0
    if size is not None and size != image.size:
        image = _reduce(image, size)
    # A broken EXIF block should not make an otherwise good image unusable.
    with contextlib.suppress(Exception):
        image = ImageOps.exif_transpose(image)
    if image.mode in _GRAY16:
        image = Image.fromarray(_to_8_bits(np.asarray(image), 255.0 / top))
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


def _reduce(image: Image.Image, size: tuple[int, int]) -> Image.Image:
    if image.mode == "1":
        image = image.convert("L")
    elif image.mode in ("P", "PA"):  # palette indices cannot be averaged: their colours can
        image = image.convert("RGBA" if image.mode == "PA" or "transparency" in image.info else "RGB")
    return image.resize(size, Image.Resampling.BICUBIC)


def _to_8_bits(gray: np.ndarray, scale: float) -> np.ndarray:
    """``gray × scale`` clipped to 0–255, in bands of rows: a float64 copy of a whole large image would need
    eight times its pixels."""
    out = np.empty(gray.shape, dtype=np.uint8)
    for row in range(0, gray.shape[0], 256):
        out[row : row + 256] = np.clip(gray[row : row + 256] * scale, 0, 255)
    return out

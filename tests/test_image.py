"""Decoding: every accepted format and mode, and a distinct, clear error for each bad input."""

from __future__ import annotations

import io
import struct
import zlib

import numpy as np
import pytest
from PIL import Image

from facegate.engine.image import decode_image
from facegate.errors import ImageTooLargeException, InvalidImageFormatException, InvalidParameterException


@pytest.fixture(scope="module")
def face_image(lfw):
    return Image.open(sorted((lfw / "Tony_Blair").glob("*.jpg"))[0]).convert("RGB")


def encode(image: Image.Image, fmt: str, **options) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, fmt, **options)
    return buffer.getvalue()


@pytest.mark.parametrize(
    "mode, fmt",
    [
        ("RGB", "JPEG"),
        ("RGB", "PNG"),
        ("RGB", "WEBP"),
        ("L", "JPEG"),
        ("L", "PNG"),
        ("CMYK", "JPEG"),
        ("RGBA", "PNG"),
        ("P", "PNG"),
        ("LA", "PNG"),
    ],
)
def test_formats_and_modes_decode_to_rgb_with_the_face_found(face_image, engine, mode, fmt):
    data = encode(face_image.convert(mode), fmt)
    rgb = decode_image(data)
    assert rgb.shape == (150, 150, 3) and rgb.dtype == np.uint8
    assert len(engine.analyse(rgb, embed=False).faces) == 1


def test_sixteen_bit_png_is_scaled_not_clipped(face_image, engine):
    gray16 = (np.asarray(face_image.convert("L"), dtype=np.uint16) * 257).astype(np.uint16)
    data = encode(Image.fromarray(gray16), "PNG")
    rgb = decode_image(data)
    assert rgb.max() > 200 and rgb.min() < 60  # a clipped 16-bit image would be saturated white
    assert len(engine.analyse(rgb, embed=False).faces) == 1


def test_format_is_recognised_by_content_not_name(face_image, tmp_path):
    path = tmp_path / "actually-a-jpeg.png"
    path.write_bytes(encode(face_image, "JPEG"))
    assert decode_image(path.read_bytes()).shape == (150, 150, 3)


def test_exif_orientation_is_honoured(face_image, engine):
    # Stored rotated 90° anticlockwise, with EXIF tag 6 telling the viewer to turn it 90° clockwise.
    stored = face_image.transpose(Image.Transpose.ROTATE_90)
    exif = Image.Exif()
    exif[0x0112] = 6
    data = encode(stored, "JPEG", exif=exif.tobytes())
    assert len(engine.analyse(np.asarray(stored), embed=False).faces) == 0  # sideways: HOG misses it
    upright = decode_image(data)
    assert len(engine.analyse(upright, embed=False).faces) == 1


def test_empty_input():
    with pytest.raises(InvalidImageFormatException, match="empty"):
        decode_image(b"")


def test_not_an_image():
    with pytest.raises(InvalidImageFormatException, match="not a JPEG, PNG or WebP"):
        decode_image(b"GIF89a" + b"\0" * 100)
    with pytest.raises(InvalidImageFormatException):
        decode_image(b"hello, this is text and not a picture at all")


def test_truncated_jpeg(face_image):
    data = encode(face_image, "JPEG")
    with pytest.raises(InvalidImageFormatException, match="truncated or corrupt"):
        decode_image(data[: len(data) // 2])


def test_truncated_png(face_image):
    data = encode(face_image, "PNG")
    with pytest.raises(InvalidImageFormatException, match="truncated or corrupt"):
        decode_image(data[: len(data) // 2])


def test_over_the_byte_limit(face_image):
    data = encode(face_image, "PNG")
    with pytest.raises(ImageTooLargeException, match="limit is"):
        decode_image(data, max_bytes=len(data) - 1)
    with pytest.raises(ImageTooLargeException):
        decode_image(b"\xff\xd8\xff" + b"\0" * (5 * 1024 * 1024 + 1))


def _png_chunk(kind: bytes, body: bytes) -> bytes:
    return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))


def test_decompression_bomb_is_refused_before_decoding():
    # A tiny PNG that declares 100,000 × 100,000 pixels (30 GB once decoded).
    header = struct.pack(">IIBBBBB", 100_000, 100_000, 8, 2, 0, 0, 0)
    bomb = b"\x89PNG\r\n\x1a\n" + _png_chunk(b"IHDR", header) + _png_chunk(b"IDAT", zlib.compress(b"\0" * 1000))
    bomb += _png_chunk(b"IEND", b"")
    assert len(bomb) < 2000
    with pytest.raises(ImageTooLargeException, match="pixels"):
        decode_image(bomb)


def test_too_small(face_image):
    with pytest.raises(InvalidParameterException, match="at least 80"):
        decode_image(encode(face_image.resize((79, 120)), "PNG"))

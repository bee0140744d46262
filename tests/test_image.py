"""Decoding: every accepted format and mode, and a distinct, clear error for each bad input."""

from __future__ import annotations

import io
import struct
import subprocess
import sys
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageOps

from facegate.engine import FaceEngine
from facegate.engine.image import WORKING_PIXELS, decode_image
from facegate.errors import ImageTooLargeException, InvalidImageFormatException, InvalidParameterException

from .conftest import DATA


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


@pytest.fixture(scope="module")
def hog_engine() -> FaceEngine:
    """HOG misses a face turned 90°, so a face found proves the image was turned upright."""
    return FaceEngine("hog")


def test_exif_orientation_is_honoured(face_image, hog_engine):
    # Stored rotated 90° anticlockwise, with EXIF tag 6 telling the viewer to turn it 90° clockwise.
    stored = face_image.transpose(Image.Transpose.ROTATE_90)
    exif = Image.Exif()
    exif[0x0112] = 6
    data = encode(stored, "JPEG", exif=exif.tobytes())
    assert len(hog_engine.analyse(np.asarray(stored), embed=False).faces) == 0  # sideways: HOG misses it
    upright = decode_image(data)
    assert len(hog_engine.analyse(upright, embed=False).faces) == 1


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


def _canvas_with_face(face_image: Image.Image, mode: str, size: tuple[int, int], at: tuple[int, int, int]):
    """A flat ``mode`` canvas of ``size`` (compresses to almost nothing) with the face pasted, ``at`` = (left,
    top, side) in pixels."""
    left, top, side = at
    canvas = Image.new("RGB", size, (90, 120, 150))
    canvas.paste(face_image.resize((side, side), Image.Resampling.BICUBIC), (left, top))
    if mode == "P+transparency":
        canvas = canvas.convert("P")
        canvas.info["transparency"] = 0
        return canvas
    return canvas.convert(mode)


def _assert_one_face_at(engine, rgb: np.ndarray, size: tuple[int, int], at: tuple[int, int, int]) -> None:
    """The image (``rgb``, decoded from one of ``size``) shows one face, inside the crop pasted ``at``: the
    bounding box, as a ratio of the decoded image, lands where the face is in the original."""
    (face,) = engine.analyse(rgb, embed=False).faces
    height, width = rgb.shape[:2]
    left, top, side = at
    centre_x = (face.box.left + face.box.right) / 2 / width
    centre_y = (face.box.top + face.box.bottom) / 2 / height
    assert centre_x == pytest.approx((left + side / 2) / size[0], abs=0.1 * side / size[0])
    assert centre_y == pytest.approx((top + side / 2) / size[1], abs=0.15 * side / size[1])
    assert 0.4 * side / size[0] < face.box.width / width < side / size[0]


def _sixteen_bit_png_with_a_face(face_image: Image.Image) -> bytes:
    # The probe's image: 16-bit grayscale, 6300×6300 (just under the 40 MP limit), a few hundred KB.
    canvas = np.full((6300, 6300), 30000, dtype=np.uint16)
    canvas[2000:2900, 3000:3900] = np.asarray(face_image.convert("L").resize((900, 900)), dtype=np.uint16) * 257
    return encode(Image.fromarray(canvas), "PNG")


_PEAK_MEMORY = """
import sys
from facegate.engine.image import decode_image

def high_water_kb():
    with open("/proc/self/status") as status:
        return next(int(line.split()[1]) for line in status if line.startswith("VmHWM:"))

data = open(sys.argv[1], "rb").read()
before = high_water_kb()
rgb = decode_image(data)
print(rgb.shape, (high_water_kb() - before) // 1024)
"""


def test_a_small_sixteen_bit_png_of_40_megapixels_decodes_in_bounded_memory(face_image, engine, tmp_path):
    """Issue 11: a 16-bit 6300×6300 PNG of a few hundred KB used to cost ~1 GB in the worker (a float64 copy
    of every pixel, then RGB at full size); it now decodes at the working size, in a fraction of that."""
    if not Path("/proc/self/status").exists():
        pytest.skip("needs Linux's /proc/self/status to read a process's peak memory (VmHWM)")
    data = _sixteen_bit_png_with_a_face(face_image)
    assert len(data) < 1024 * 1024
    path = tmp_path / "probe.png"
    path.write_bytes(data)
    # A fresh interpreter, so that its high-water mark is the decode's alone (ru_maxrss survives exec).
    out = subprocess.run([sys.executable, "-c", _PEAK_MEMORY, str(path)], capture_output=True, text=True, check=True)
    peak_mb = int(out.stdout.split()[-1])
    assert peak_mb < 400, f"decoding took {peak_mb} MB at its peak"  # ~1,060 MB before the fix, ~160 MB after

    rgb = decode_image(data)
    assert rgb.dtype == np.uint8 and rgb.shape[0] == rgb.shape[1] and rgb.shape[0] * rgb.shape[1] <= WORKING_PIXELS
    assert rgb.min() < 60 and rgb.max() > 200  # scaled by the 16-bit range, not clipped
    _assert_one_face_at(engine, rgb, (6300, 6300), (3000, 2000, 900))


@pytest.mark.parametrize(
    "mode, fmt, size",
    [
        ("RGB", "JPEG", (7200, 5000)),  # decoded by libjpeg at half scale, then reduced
        ("RGB", "WEBP", (3600, 2500)),
        ("L", "PNG", (3600, 2500)),
        ("P+transparency", "PNG", (3600, 2500)),
        ("RGBA", "PNG", (3600, 2500)),
        ("LA", "PNG", (3600, 2500)),
    ],
)
def test_large_images_are_reduced_to_the_working_size_with_the_face_where_it_was(face_image, engine, mode, fmt, size):
    width, height = size
    at = (width // 2, height // 3, width // 6)
    image = _canvas_with_face(face_image, mode, size, at)
    rgb = decode_image(encode(image, fmt))
    assert rgb.shape[0] * rgb.shape[1] <= WORKING_PIXELS < width * height
    assert rgb.shape[1] / rgb.shape[0] == pytest.approx(width / height, rel=1e-3)
    _assert_one_face_at(engine, rgb, size, at)


def test_exif_orientation_is_honoured_on_a_reduced_image(face_image, hog_engine):
    size = (7200, 5000)
    at = (3600, 1600, 1200)
    stored = _canvas_with_face(face_image, "RGB", size, at).transpose(Image.Transpose.ROTATE_90)
    exif = Image.Exif()
    exif[0x0112] = 6
    upright = decode_image(encode(stored, "JPEG", exif=exif.tobytes()))
    assert upright.shape[1] > upright.shape[0]  # turned back to landscape
    _assert_one_face_at(hog_engine, upright, size, at)  # HOG finds no sideways face


def test_a_decode_that_would_need_too_much_memory_is_refused_before_decoding():
    # The header of a 6000×6000 RGBA PNG (within the pixel limit) and no image data: refused from the header.
    header = struct.pack(">IIBBBBB", 6000, 6000, 8, 6, 0, 0, 0)
    png = b"\x89PNG\r\n\x1a\n" + _png_chunk(b"IHDR", header) + _png_chunk(b"IDAT", zlib.compress(b"\0" * 100))
    png += _png_chunk(b"IEND", b"")
    with pytest.raises(ImageTooLargeException, match=r"6000×6000 pixels \(RGBA\); decoding it would need about"):
        decode_image(png, max_decode_bytes=100 * 1024 * 1024)
    with pytest.raises(InvalidImageFormatException, match="truncated or corrupt"):
        decode_image(png)  # within the default bound: decoded, and found truncated


def _photos() -> list[Path]:
    photos = sorted((DATA / "photos").glob("*/*.jpg"))
    if not photos:
        pytest.skip(f"real photos not found under {DATA / 'photos'}: set FACEGATE_DATA to the shared data folder")
    return photos


def test_photos_up_to_the_working_size_decode_exactly_as_pillow_shows_them():
    for path in _photos():
        shown = np.asarray(ImageOps.exif_transpose(Image.open(path)).convert("RGB"))
        assert np.array_equal(decode_image(path.read_bytes()), shown), path.name


def test_a_photo_enlarged_past_the_working_size_gives_the_same_faces(engine):
    path = DATA / "photos" / "aws-examples" / "pexels-pixabay-53370.jpg"
    if not path.exists():
        pytest.skip(f"real photo not found at {path}: set FACEGATE_DATA to the shared data folder")
    original = engine.analyse(decode_image(path.read_bytes()))
    photo = Image.open(path).convert("RGB")
    enlarged = encode(photo.resize((photo.width * 3, photo.height * 3), Image.Resampling.BICUBIC), "JPEG", quality=90)
    rgb = decode_image(enlarged, max_bytes=len(enlarged))
    assert rgb.shape[0] * rgb.shape[1] <= WORKING_PIXELS
    reduced = engine.analyse(rgb)

    def ratios(analysed):
        return sorted(
            (f.box.left / analysed.width, f.box.top / analysed.height, f.box.width / analysed.width, f.embedding)
            for f in analysed.faces
        )

    assert len(original.faces) == len(reduced.faces) == 3
    for before, after in zip(ratios(original), ratios(reduced), strict=True):
        assert np.allclose(before[:3], after[:3], atol=0.005)
        assert np.linalg.norm(before[3] - after[3]) < 0.3  # the same person by a wide margin (threshold 0.6)

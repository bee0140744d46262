"""The ``cnn`` detector (dlib's MMOD in int8, upsampling folded into the network) on real photos: it finds the
twelve faces of the AWS example photos, agrees with the float32 MMOD (``cnn-float``), and each rewriting of the
network is exact where it claims to be."""

from __future__ import annotations

import os
import xml.etree.ElementTree as ET
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("onnxruntime")

from facegate.engine import FaceEngine  # noqa: E402
from facegate.engine.detect import DETECTORS, CnnDetector, HogDetector, make_detector  # noqa: E402
from facegate.engine.faces import Box  # noqa: E402
from facegate.engine.mmod_int8 import (  # noqa: E402
    ACTIVATION_RANGES,
    INPUT_NAME,
    PHASES,
    Int8MmodDetector,
    activation_ranges,
    build_model,
    tiled_pixels,
)
from facegate.engine.mmod_onnx import INPUT_NAME as FLOAT_INPUT  # noqa: E402
from facegate.engine.mmod_onnx import OnnxMmodDetector  # noqa: E402
from facegate.engine.mmod_onnx import build_model as build_float_model  # noqa: E402
from facegate.engine.onnx_resnet import cpu_session  # noqa: E402

DATA = Path(os.environ.get("FACEGATE_DATA", Path(__file__).resolve().parents[2] / "shared" / "data"))
PHOTOS = DATA / "photos"
CALIBRATION_PHOTOS = ("2007_007763", "2008_001009", "2008_001322", "2008_002079", "bald_guys")  # not in testing.xml


def _load(path: Path) -> np.ndarray:
    from PIL import Image

    return np.asarray(Image.open(path).convert("RGB"))


def _aws_photos() -> list[Path]:
    paths = sorted((PHOTOS / "aws-examples").glob("*.jpg"))
    if not paths:
        pytest.skip(f"no photos under {PHOTOS / 'aws-examples'}: set FACEGATE_DATA to the shared data folder")
    return paths


def _testing_xml() -> list[tuple[np.ndarray, list[Box]]]:
    folder = PHOTOS / "dlib-examples"
    if not (folder / "testing.xml").is_file():
        pytest.skip(f"no testing.xml under {folder}: set FACEGATE_DATA to the shared data folder")
    out = []
    for image in ET.parse(folder / "testing.xml").getroot().iter("image"):
        boxes = [
            Box(
                int(b.get("left")),
                int(b.get("top")),
                int(b.get("left")) + int(b.get("width")),
                int(b.get("top")) + int(b.get("height")),
            )
            for b in image.iter("box")
        ]
        out.append((_load(folder / image.get("file")), boxes))
    return out


def _iou(a: Box, b: Box) -> float:
    inner = max(0.0, min(a.right, b.right) - max(a.left, b.left)) * max(
        0.0, min(a.bottom, b.bottom) - max(a.top, b.top)
    )
    return inner / (a.area + b.area - inner) if inner else 0.0


def _best_ious(found: list[Box], reference: list[Box]) -> list[float]:
    return [max((_iou(r, f) for f in found), default=0.0) for r in reference]


@pytest.fixture(scope="module")
def detectors() -> tuple[Int8MmodDetector, OnnxMmodDetector]:
    return Int8MmodDetector(threads=1), OnnxMmodDetector()  # the reference with every core: it is 10× slower


def test_the_default_detector_finds_the_twelve_faces_of_the_aws_example_photos() -> None:
    engine = FaceEngine(threads=1)  # the default every operation and `facegate index` use
    assert engine.detector_name == "cnn"
    found = [engine.analyse_bytes(path.read_bytes(), embed=False).faces for path in _aws_photos()]
    assert [len(faces) for faces in found] == [3, 3, 3, 3]
    assert all(face.confidence > 88 for faces in found for face in faces)  # every one above the detector's threshold


def test_agrees_with_the_float_detector_on_real_photos(detectors) -> None:
    """Same faces as float32 MMOD on the AWS photos and dlib's testing.xml photos; boxes may move a little (the
    pyramid is resampled differently and the scores are int8's), by at most half of IoU, typically a tenth."""
    int8, float32 = detectors
    images = [_load(p) for p in _aws_photos()] + [image for image, _ in _testing_xml()]
    ious = []
    for image in images:
        ours, theirs = [b for b, _ in int8.detect(image)], [b for b, _ in float32.detect(image)]
        assert len(ours) == len(theirs)
        ious += _best_ious(ours, theirs)
    assert min(ious) >= 0.5 and np.median(ious) >= 0.75, sorted(ious)[:5]


def test_finds_every_face_of_dlibs_testing_xml(detectors) -> None:
    int8, _ = detectors
    for image, truth in _testing_xml():
        found = [b for b, _ in int8.detect(image)]
        assert len(found) == len(truth) and min(_best_ious(found, truth)) >= 0.5


def test_int8_scores_stay_close_to_float32_near_faces(detectors) -> None:
    """Quantisation alone: the int8 graph against the same graph in float32, on the same input."""
    int8, _ = detectors
    session = cpu_session(build_model(int8.network, None).SerializeToString(), 1)
    for path in _aws_photos()[:2]:
        pixels, _ = tiled_pixels(_load(path), int8._padding)
        ours, theirs = int8.scores(pixels), session.run(["scores"], {INPUT_NAME: pixels})[0][0, 0]
        near = theirs > -0.5
        assert near.sum() > 50
        assert np.abs(ours - theirs)[near].max() < 0.25
        assert ((ours > 0) != (theirs > 0)).sum() <= 0.1 * (theirs > 0).sum()


def test_folding_the_upsampling_into_the_network_is_exact(detectors) -> None:
    """The folded, phase-split float graph on a tiled 1× image gives dlib's network on that image upsampled
    2× (original pixels at even positions, the mean of two neighbours between)."""
    int8, _ = detectors
    image = _load(_aws_photos()[1])[300:500, 400:640]
    pixels, _ = tiled_pixels(image, int8._padding)
    rows, cols = 2 * pixels.shape[1], 2 * pixels.shape[2]
    canvas = pixels[0].reshape(rows // PHASES, cols // PHASES, PHASES, PHASES, 3).transpose(0, 2, 1, 3, 4)
    canvas = canvas.reshape(rows, cols, 3).astype(np.float64)
    x = np.moveaxis((canvas - np.asarray(int8.network.input_means)) / 256, 2, 0)
    up = np.zeros((3, 2 * rows - 1, 2 * cols - 1))
    up[:, ::2, ::2] = x
    up[:, 1::2] = (up[:, :-1:2] + up[:, 2::2]) / 2
    up[:, :, 1::2] = (up[:, :, :-1:2] + up[:, :, 2::2]) / 2
    reference = cpu_session(build_float_model(int8.network).SerializeToString(), 1)
    expected = reference.run(["scores"], {FLOAT_INPUT: up[None].astype(np.float32)})[0][0, 0]
    folded = cpu_session(build_model(int8.network, None).SerializeToString(), 1)
    got = folded.run(["scores"], {INPUT_NAME: pixels})[0][0, 0]
    assert got.shape == expected.shape
    assert np.abs(got - expected).max() < 1e-3
    assert (expected > 0).any()


def test_activation_ranges_are_what_the_calibration_photos_give() -> None:
    folder = PHOTOS / "dlib-examples"
    if not (folder / "bald_guys.jpg").is_file():
        pytest.skip(f"no calibration photos under {folder}")
    measured = activation_ranges([_load(folder / f"{name}.jpg") for name in CALIBRATION_PHOTOS])
    assert measured == pytest.approx(ACTIVATION_RANGES, rel=1e-3)


def test_the_model_is_built_deterministically(detectors) -> None:
    int8, _ = detectors
    assert build_model(int8.network).SerializeToString() == build_model(int8.network).SerializeToString()


def test_small_grey_and_empty_images(detectors) -> None:
    int8, _ = detectors
    face = _load(_aws_photos()[3])
    grey = face.mean(axis=2).astype(np.uint8)
    assert len(int8.detect(grey)) == len(int8.detect(face))
    assert int8.detect(np.zeros((12, 9, 3), np.uint8)) == []
    assert int8.run(np.zeros((0, 5, 3), np.uint8)) == []
    with pytest.raises(ValueError, match="uint8"):
        int8.run(np.zeros((20, 20, 3), np.float32))


def test_detectors_by_name() -> None:
    assert set(DETECTORS) == {"hog", "cnn", "cnn-float", "cnn-dlib"}
    assert isinstance(make_detector("hog"), HogDetector)
    assert isinstance(make_detector("cnn", threads=1), Int8MmodDetector)
    assert make_detector("cnn", threads=1).threads == 1
    assert isinstance(make_detector("cnn-float"), OnnxMmodDetector)
    assert isinstance(make_detector("cnn-dlib"), CnnDetector)
    assert all(make_detector(name).name == name for name in DETECTORS)
    with pytest.raises(ValueError, match="cnn-float"):
        make_detector("mmod")
    with pytest.raises(ValueError, match="Unknown face detector 'mmod'"):
        FaceEngine(detector="mmod")  # when built, not at the first image

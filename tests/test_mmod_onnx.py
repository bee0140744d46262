"""The ONNX MMOD detector must give dlib's ``cnn_face_detection_model_v1`` boxes (±1 px) and scores (±1e-3),
so the "cnn-float" detector is dlib's CNN, faster."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

dlib = pytest.importorskip("dlib")
pytest.importorskip("onnxruntime")

from facegate.engine.dlib_format import read_network  # noqa: E402
from facegate.engine.mmod_onnx import Detection, OnnxMmodDetector, pyramid_layout  # noqa: E402
from facegate.engine.models import cnn_detector_weights  # noqa: E402

DATA = Path(os.environ.get("FACEGATE_DATA", Path(__file__).resolve().parents[2] / "shared" / "data"))


@pytest.fixture(scope="module")
def detectors() -> tuple[OnnxMmodDetector, object]:
    weights = cnn_detector_weights()
    return OnnxMmodDetector(weights, threads=1), dlib.cnn_face_detection_model_v1(str(weights))


def _load(path: Path) -> np.ndarray:
    from PIL import Image

    return np.asarray(Image.open(path).convert("RGB"))


def _images(folder: str, count: int) -> list[np.ndarray]:
    paths = sorted((DATA / folder).rglob("*.jpg"))[::37][:count]
    if not paths:
        pytest.skip(f"no face images under {DATA / folder}: set FACEGATE_DATA to the shared data folder")
    return [_load(p) for p in paths]


def _canvas() -> np.ndarray:
    heads = _images("congress117/images", 4)
    canvas = np.zeros((512, 512, 3), np.uint8)
    for i, head in enumerate(heads):
        canvas[256 * (i // 2) : 256 * (i // 2) + 256, 256 * (i % 2) : 256 * (i % 2) + 256] = head[:256, :256]
    return canvas


def _assert_same(ours: list[Detection], theirs: list) -> None:
    assert len(ours) == len(theirs), (ours, theirs)
    ref = sorted(theirs, key=lambda d: -d.confidence)
    for mine, d in zip(sorted(ours, key=lambda d: -d.score), ref, strict=True):
        box = np.array([mine.left, mine.top, mine.right, mine.bottom])
        expected = np.array([d.rect.left(), d.rect.top(), d.rect.right(), d.rect.bottom()])
        assert np.abs(box - expected).max() <= 1, (box, expected)
        assert mine.score == pytest.approx(d.confidence, abs=1e-3)


def test_reads_the_detector_file() -> None:
    network = read_network(cnn_detector_weights())
    assert network.loss == "loss_mmod_"
    assert [(w.width, w.height) for w in network.mmod.detector_windows] == [(80, 80)]
    assert network.mmod.overlaps_nms[1] == 1.0 and 0.3 < network.mmod.overlaps_nms[0] < 0.35
    assert network.pyramid_padding == (10, 11)


def test_pyramid_layout_keeps_levels_apart() -> None:
    rects, rows, cols = pyramid_layout(300, 400, 10, 11)
    assert rects[0] == (11, 11, 400, 300) and cols == 422
    for i, (left, top, w, h) in enumerate(rects):
        assert left >= 0 and top >= 0 and left + w <= cols and top + h <= rows
        for other in rects[i + 1 :]:
            apart = (
                left + w <= other[0] or other[0] + other[2] <= left or top + h <= other[1] or other[1] + other[3] <= top
            )
            assert apart


@pytest.mark.parametrize("upsample", [0, 1])
def test_matches_dlib_on_congress_headshots(detectors, upsample: int) -> None:
    ours, theirs = detectors
    for image in _images("congress117/images", 3):
        _assert_same(ours.run(image, upsample), theirs(image, upsample))


def test_matches_dlib_on_lfw_crops(detectors) -> None:
    ours, theirs = detectors
    for image in _images("lfw/images", 4):
        _assert_same(ours.run(image, 1), theirs(image, 1))


def test_matches_dlib_on_a_multi_face_canvas(detectors) -> None:
    ours, theirs = detectors
    canvas = _canvas()
    found = ours.run(canvas, 0)
    assert len(found) >= 3
    _assert_same(found, theirs(canvas, 0))


def test_detect_gives_boxes_and_confidences(detectors) -> None:
    ours, _ = detectors
    image = _images("congress117/images", 1)[0]
    (box, confidence), *rest = ours.detect(image)
    assert not rest and 88 < confidence <= 100
    assert 0 <= box.left < box.right <= image.shape[1] and 0 <= box.top < box.bottom <= image.shape[0]

"""The ONNX runtime for dlib's ResNet gives dlib's embeddings on real faces, so faces indexed by either runtime
can be searched by the other (both report the version "dlib-resnet-v1")."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import dlib
import numpy as np
import pytest

from facegate.engine.dlib_format import DlibFormatError, parse_network, read_network
from facegate.engine.embed import DlibResnet
from facegate.engine.models import embedding_weights, landmarks5_weights
from facegate.engine.onnx_resnet import OnnxResnet, convert, onnx_model_path

from .conftest import pixels

LFW_FACES = 100
CONGRESS_FACES = 20


def _spread(paths: list[Path], count: int) -> list[Path]:
    return [paths[i] for i in np.linspace(0, len(paths) - 1, count).round().astype(int)]


@pytest.fixture(scope="module")
def chips(lfw: Path, congress: Path) -> list[np.ndarray]:
    """Aligned chips made by dlib itself (HOG box, 5-point landmarks, get_face_chip) from real photos."""
    detector = dlib.get_frontal_face_detector()
    shape5 = dlib.shape_predictor(str(landmarks5_weights()))
    photos = _spread(sorted(lfw.glob("*/*.jpg")), LFW_FACES)
    photos += _spread(sorted((congress / "house").glob("*.jpg")), CONGRESS_FACES)
    result = []
    for path in photos:
        image = pixels(path)
        found = detector(image, 1)
        height, width = image.shape[:2]
        box = max(found, key=lambda r: r.area()) if found else dlib.rectangle(0, 0, width - 1, height - 1)
        result.append(np.asarray(dlib.get_face_chip(image, shape5(image, box), 150, 0.25)))
    return result


@pytest.fixture(scope="module")
def onnx_model(tmp_path_factory: pytest.TempPathFactory) -> OnnxResnet:
    return OnnxResnet(cache_dir=tmp_path_factory.mktemp("onnx-cache"))


def test_onnx_embeddings_match_dlib_on_real_faces(chips: list[np.ndarray], onnx_model: OnnxResnet) -> None:
    reference = DlibResnet()
    assert (onnx_model.version, onnx_model.weights_hash()) == (reference.version, reference.weights_hash())
    expected = reference.embed(chips)
    got = onnx_model.embed(chips)
    assert got.shape == (LFW_FACES + CONGRESS_FACES, 128) and got.dtype == np.float32
    assert np.abs(got - expected).max() <= 1e-5


def test_batch_size_does_not_change_embeddings(chips: list[np.ndarray], onnx_model: OnnxResnet) -> None:
    some = chips[:20]
    batched = onnx_model.embed(some)
    one_by_one = np.concatenate([onnx_model.embed([chip]) for chip in some])
    np.testing.assert_array_equal(one_by_one, batched)  # each image is computed alone, whatever the batch
    unbatched = OnnxResnet(cache_dir=onnx_model.cache_dir, batch_size=1).embed(some)
    np.testing.assert_array_equal(unbatched, batched)


def test_concurrent_callers_get_their_own_faces(chips: list[np.ndarray], onnx_model: OnnxResnet) -> None:
    fresh = OnnxResnet(cache_dir=onnx_model.cache_dir)  # first calls race to create the session
    groups = [chips[i : i + 5] for i in range(0, 40, 5)]
    with ThreadPoolExecutor(4) as pool:
        results = list(pool.map(fresh.embed, groups))
    for group, result in zip(groups, results, strict=True):
        np.testing.assert_array_equal(result, onnx_model.embed(group))


def test_conversion_is_deterministic_and_cached(tmp_path: Path) -> None:
    first, second = convert(), convert()
    assert first == second
    cached = onnx_model_path(cache_dir=tmp_path)
    assert cached.read_bytes() == first
    assert [p.name for p in tmp_path.iterdir()] == [cached.name]  # no temporary file left behind


def test_empty_and_malformed_chips(onnx_model: OnnxResnet) -> None:
    assert onnx_model.embed([]).shape == (0, 128)
    with pytest.raises(ValueError, match=r"chip 0 is uint8 of shape \(112, 112, 3\); expected uint8"):
        onnx_model.embed([np.zeros((112, 112, 3), np.uint8)])


def test_parser_reads_every_layer_of_the_model() -> None:
    network = read_network(embedding_weights())
    assert network.input_size == (150, 150)
    assert network.input_means == pytest.approx((122.782, 117.001, 104.298), abs=1e-4)
    assert len(network.layers) == 108 and network.wrappers == 130


def test_parser_rejects_a_truncated_file(tmp_path: Path) -> None:
    data = embedding_weights().read_bytes()
    truncated = tmp_path / "truncated.dat"
    truncated.write_bytes(data[: len(data) // 2])
    with pytest.raises(DlibFormatError, match=r"truncated\.dat: file ends while reading .*the file is truncated"):
        read_network(truncated)
    with pytest.raises(DlibFormatError, match="file is truncated"):
        parse_network(data[:-1])
    with pytest.raises(DlibFormatError, match="not a dlib network"):
        parse_network(b"\x01\x05hello")

"""dlib's MMOD CNN face detector (``mmod_human_face_detector.dat``) run by ONNX Runtime, so the CNN detector is
usable on a CPU: the same weights, the same pyramid and the same decoding as ``dlib.cnn_face_detection_model_v1``.

Only the convolutions run in ONNX Runtime. The rest follows dlib's sources (v20) in numpy:

- ``cnn_face_detection_model_v1.detect``: ``pyramid_up`` (2× bilinear, ``pyramid_down<2>`` geometry) per
  upsampling, and ``rect_down`` of the found boxes afterwards;
- ``input_rgb_image_pyramid<pyramid_down<6>>``: (pixel − mean) / 256, then every 5/6 level of the pyramid,
  each resized bilinearly from the level before, tiled into one zero-padded image (``create_tiled_pyramid``);
- ``loss_mmod_::to_label``: every score above 0 becomes its detector window centred on the point the output
  maps back to, mapped from the tiled image to the original through its pyramid level, rounded to integers,
  sorted by score and thinned by the stored non-maximum-suppression test.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from facegate.engine.detect import _logistic, _resize, plan_detection
from facegate.engine.dlib_format import Affine, Conv, DlibNetwork, MmodOptions, Relu, read_network
from facegate.engine.faces import Box
from facegate.engine.models import cnn_detector_weights
from facegate.engine.onnx_resnet import ArchitectureError, LazySession, _GraphBuilder, available_cores, cpu_session

if TYPE_CHECKING:
    import onnx

OPSET = 17
INPUT_NAME, OUTPUT_NAME = "tiled_pyramid", "scores"
PYRAMID_RATE = 5.0 / 6.0  # pyramid_down<6>
MIN_LEVEL_HEIGHT = 5  # compute_tiled_image_pyramid_details stops below this


@dataclass(frozen=True)
class Detection:
    """A detection in dlib's terms: an inclusive integer rectangle and the raw detector score."""

    left: int
    top: int
    right: int
    bottom: int
    score: float


def _lround(x: np.ndarray | float) -> np.ndarray:
    """C's lround: halves away from zero (numpy's round goes to even)."""
    x = np.asarray(x, dtype=np.float64)
    return (np.sign(x) * np.floor(np.abs(x) + 0.5)).astype(np.int64)


# ---------------------------------------------------------------------------------------------- resampling


def _bilinear_taps(out_size: int, in_size: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Source indices (floor, next) and fractions of dlib's resize_image: out i samples in i·(in−1)/(out−1)."""
    scale = (in_size - 1) / max(out_size - 1, 1)
    pos = np.arange(out_size, dtype=np.float64) * scale
    low = np.floor(pos).astype(np.int64)
    high = np.minimum(low + 1, in_size - 1)
    return low, high, pos - low


def resize_bilinear(image: np.ndarray, rows: int, cols: int) -> np.ndarray:
    """dlib's bilinear ``resize_image`` of (..., H, W) planes to (..., rows, cols), in float64."""
    top, bottom, fy = _bilinear_taps(rows, image.shape[-2])
    left, right, fx = _bilinear_taps(cols, image.shape[-1])
    src = image.astype(np.float64, copy=False)
    upper, lower = src[..., top, :], src[..., bottom, :]
    a = (1 - fx) * upper[..., left] + fx * upper[..., right]
    b = (1 - fx) * lower[..., left] + fx * lower[..., right]
    fy = fy[:, None]
    return (1 - fy) * a + fy * b


def pyramid_up(image: np.ndarray) -> np.ndarray:
    """dlib's ``pyramid_up`` with ``pyramid_down<2>`` on an RGB uint8 image: the size is ``rect_up`` of the
    image rectangle (about 2×), the pixels bilinear, truncated to 8 bits (as dlib's RGB path does; it computes
    in float SIMD, so about 0.1% of pixels still differ by 1)."""
    height, width = image.shape[:2]
    rows = int(_lround((height - 1 + 0.75) * 2)) + 1
    cols = int(_lround((width - 1 + 1.25) * 2)) + 1
    planes = resize_bilinear(np.moveaxis(image, 2, 0), rows, cols)
    return np.moveaxis(np.floor(planes.astype(np.float32)).clip(0, 255).astype(np.uint8), 0, 2)


# ------------------------------------------------------------------------------------------ tiled pyramid


def pyramid_layout(
    rows: int, cols: int, padding: int, outer_padding: int
) -> tuple[list[tuple[int, int, int, int]], int, int]:
    """dlib's ``compute_tiled_image_pyramid_details``: each level's (left, top, width, height) in the tiled image,
    and the tiled image's rows and columns, for levels every 5/6 down to ``MIN_LEVEL_HEIGHT`` rows."""
    sizes = [(cols, rows)]
    nr, nc = rows, cols
    while True:
        nr, nc = math.floor(PYRAMID_RATE * nr), math.floor(PYRAMID_RATE * nc)
        if nr * nc == 0 or nr < MIN_LEVEL_HEIGHT:
            break
        sizes.append((nc, nr))
    return tile_levels(sizes, padding, outer_padding)


def tile_levels(
    sizes: list[tuple[int, int]], padding: int, outer_padding: int
) -> tuple[list[tuple[int, int, int, int]], int, int]:
    """dlib's tiling of pyramid levels of these (width, height), largest first: each level's (left, top, width,
    height) and the tiled image's rows and columns. The first column stacks levels downwards; the rest go back
    up the right-hand side, bottom-aligned, while they clear the full-size level."""
    total_height = sum(h + padding for _, h in sizes) - 2 * padding
    height, prev_width = 0, 0
    for w, h in sizes:
        if w <= sizes[0][0] - prev_width - padding and (height - sizes[0][1]) * 2 >= total_height - sizes[0][1]:
            break
        height += h + padding
        prev_width = w
    height -= padding
    width = sizes[0][0]
    out_rows, out_cols = height + 2 * outer_padding, width + 2 * outer_padding

    rects: list[tuple[int, int, int, int]] = []
    y = outer_padding
    i = 0
    while y < height + outer_padding and i < len(sizes):
        rects.append((outer_padding, y, *sizes[i]))
        y += sizes[i][1] + padding
        i += 1
    y -= padding
    first = rects[0]
    while i < len(sizes):
        w, h = sizes[i]
        right, bottom = outer_padding + width - 1, y - 1  # dlib's rectangle(p1, p1 - br_corner)
        left, top = right - (w - 1), bottom - (h - 1)
        if left <= first[0] + first[2] - 1 and top <= first[1] + first[3] - 1:  # would overlap the first level
            break
        rects.append((left, top, w, h))
        y -= h + padding
        i += 1
    return rects, out_rows, out_cols


def tiled_pyramid(
    image: np.ndarray, means: tuple[float, float, float], padding: tuple[int, int]
) -> tuple[np.ndarray, list]:
    """The input tensor (1, 3, rows, cols) float32 of ``input_rgb_image_pyramid`` and its level rectangles."""
    rects, rows, cols = pyramid_layout(image.shape[0], image.shape[1], *padding)
    data = np.zeros((1, 3, rows, cols), dtype=np.float32)
    level = (np.moveaxis(image, 2, 0).astype(np.float32) - np.asarray(means, np.float32)[:, None, None]) / 256
    left, top, w, h = rects[0]
    data[0, :, top : top + h, left : left + w] = level
    for left, top, w, h in rects[1:]:
        level = resize_bilinear(level, h, w).astype(np.float32)  # dlib resizes each level from the one before
        data[0, :, top : top + h, left : left + w] = level
    return data, rects


def _nearest_level(rects: list, x: float, y: float) -> int:
    """dlib's ``nearest_rect``: the first level containing the point, else the closest one."""
    best, best_distance = 0, math.inf
    for i, (left, top, w, h) in enumerate(rects):
        nx, ny = min(max(x, left), left + w - 1), min(max(y, top), top + h - 1)
        if nx == x and ny == y:
            return i
        distance = math.hypot(nx - x, ny - y)
        if distance < best_distance:
            best, best_distance = i, distance
    return best


# ------------------------------------------------------------------------------------------------- decoding


def _overlaps(a: tuple[int, int, int, int], b: tuple[int, int, int, int], iou: float, covered: float) -> bool:
    """dlib's ``test_box_overlap`` on inclusive integer rectangles; its "union" is the bounding box of both."""

    def area(left: int, top: int, right: int, bottom: int) -> int:
        return max(0, right - left + 1) * max(0, bottom - top + 1)

    inner = area(max(a[0], b[0]), max(a[1], b[1]), min(a[2], b[2]), min(a[3], b[3]))
    if inner == 0:
        return False
    outer = area(min(a[0], b[0]), min(a[1], b[1]), max(a[2], b[2]), max(a[3], b[3]))
    return inner / outer > iou or inner / area(*a) > covered or inner / area(*b) > covered


def decode(
    scores: np.ndarray,
    rects: list,
    options: MmodOptions,
    output_to_input: list[tuple[int, int, int]],
    threshold: float = 0.0,
) -> list[Detection]:
    """``loss_mmod_::to_label`` for one sample: detections in pixels of the image the pyramid was built from."""
    found = []
    for k, window in enumerate(options.detector_windows):
        rows, cols = np.nonzero(scores[k] > threshold)
        for r, c in zip(rows.tolist(), cols.tolist(), strict=True):
            x, y = float(c), float(r)
            for stride, pad, half in output_to_input:  # output layer first
                x, y = x * stride - pad + half, y * stride - pad + half
            hw, hh = (window.width - 1) / 2, (window.height - 1) / 2
            level = _nearest_level(rects, x, y)
            corners = np.array([[x - hw, y - hh], [x + hw, y + hh]]) - rects[level][:2]
            for _ in range(level):  # pyramid_down<6>::point_up, once per level
                corners = corners / PYRAMID_RATE + 0.3
            left, top, right, bottom = _lround(corners.reshape(-1)).tolist()
            found.append((float(scores[k, r, c]), (left, top, right, bottom)))
    found.sort(key=lambda item: item[0], reverse=True)
    kept: list[tuple[float, tuple[int, int, int, int]]] = []
    for score, box in found:
        if not any(_overlaps(other, box, *options.overlaps_nms) for _, other in kept):
            kept.append((score, box))
    return [Detection(*box, score) for score, box in kept]


# ---------------------------------------------------------------------------------------------------- graph


def build_model(network: DlibNetwork) -> onnx.ModelProto:
    """The convolution stack as an ONNX graph on the tiled pyramid (1, 3, H, W) → scores (1, windows, h, w).
    Each affine layer (dlib's frozen batch norm) is folded into the convolution before it."""
    import onnx
    from onnx import TensorProto, helper

    if network.mmod is None or network.pyramid_padding is None:
        raise ArchitectureError("not an MMOD detector: expected loss_mmod_ on an image-pyramid input")
    if network.mmod.use_bounding_box_regression:
        raise ArchitectureError("bounding-box regression detectors are not supported")
    graph = _GraphBuilder()
    x, shape = INPUT_NAME, (3, 1 << 20, 1 << 20)  # spatial sizes are dynamic; only channels are checked
    layers = list(network.layers)
    while layers:
        conv = layers.pop(0)
        if not isinstance(conv, Conv):
            raise ArchitectureError(f"expected a conv layer, found {conv!r:.120}")
        affine = (
            layers.pop(0) if layers and isinstance(layers[0], Affine) else Affine(np.ones(0), np.zeros(0), True, True)
        )
        x, shape = graph.conv_affine(x, shape, conv, affine)
        if layers and isinstance(layers[0], Relu):
            x = graph.relu(x, layers.pop(0))
    windows = len(network.mmod.detector_windows)
    if shape[0] != windows:
        raise ArchitectureError(f"the last conv has {shape[0]} outputs for {windows} detector windows")
    graph.nodes.append(helper.make_node("Identity", [x], [OUTPUT_NAME], name="output"))
    model = helper.make_model(
        helper.make_graph(
            graph.nodes,
            "mmod_human_face_detector",
            [helper.make_tensor_value_info(INPUT_NAME, TensorProto.FLOAT, [1, 3, "rows", "cols"])],
            [helper.make_tensor_value_info(OUTPUT_NAME, TensorProto.FLOAT, [1, windows, "out_rows", "out_cols"])],
            graph.initializers,
        ),
        opset_imports=[helper.make_opsetid("", OPSET)],
        producer_name="facegate",
        ir_version=8,
    )
    onnx.checker.check_model(model)
    return model


def _output_to_input(network: DlibNetwork) -> list[tuple[int, int, int]]:
    """(stride, padding, kernel // 2) per conv, output first: dlib's ``output_tensor_to_input_tensor``."""
    convs = [layer for layer in network.layers if isinstance(layer, Conv)]
    for conv in convs:
        if (
            conv.stride[0] != conv.stride[1]
            or conv.padding[0] != conv.padding[1]
            or conv.weights.shape[2] != conv.weights.shape[3]
        ):
            raise ArchitectureError("only square kernels, strides and paddings are supported")
    return [(c.stride[0], c.padding[0], c.weights.shape[2] // 2) for c in reversed(convs)]


class OnnxMmodDetector:
    """dlib's MMOD CNN face detector with its convolutions in ONNX Runtime: dlib's boxes and scores, about 12×
    faster than dlib's CNN. Implements ``Detector`` like ``CnnDetector``; ``Int8MmodDetector`` is faster still."""

    name = "cnn-float"

    def __init__(self, weights: Path | None = None, *, threads: int | None = None) -> None:
        self.weights = Path(weights) if weights else cnn_detector_weights()
        self.network = read_network(self.weights)
        self._model = build_model(self.network).SerializeToString()  # small (0.7 MB): built, not cached
        self._mapping = _output_to_input(self.network)
        self.threads = threads or available_cores()
        self._session = LazySession(lambda: cpu_session(self._model, self.threads))

    def run(self, image: np.ndarray, upsample: int = 0, threshold: float = 0.0) -> list[Detection]:
        """What ``cnn_face_detection_model_v1(image, upsample)`` returns, as inclusive rectangles and scores."""
        image = np.asarray(image)
        if image.ndim == 2:
            image = np.repeat(image[:, :, None], 3, axis=2)
        if image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3:
            raise ValueError(f"expected an RGB or grey uint8 image, got {image.dtype} of shape {image.shape}")
        for _ in range(upsample):
            image = pyramid_up(image)
        if min(image.shape[:2]) < 1:
            return []
        data, rects = tiled_pyramid(image, self.network.input_means, self.network.pyramid_padding or (10, 11))
        scores = self._session.get().run([OUTPUT_NAME], {INPUT_NAME: data})[0][0]
        found = decode(scores, rects, self.network.mmod, self._mapping, threshold)  # type: ignore[arg-type]
        if not upsample:
            return found
        factor = 2.0**upsample  # pyramid_down<2>::rect_down, upsample times: p / 2 − (1.25, 0.75) each time
        offset_x, offset_y = 2.5 * (1 - 1 / factor), 1.5 * (1 - 1 / factor)
        out = []
        for d in found:
            left, top, right, bottom = _lround(
                [
                    d.left / factor - offset_x,
                    d.top / factor - offset_y,
                    d.right / factor - offset_x,
                    d.bottom / factor - offset_y,
                ]
            ).tolist()
            out.append(Detection(left, top, right, bottom, d.score))
        return out

    def detect(self, image: np.ndarray) -> list[tuple[Box, float]]:
        """Boxes in pixels of ``image`` with ``CnnDetector``'s confidence (a logistic of the score)."""
        scale, upsample = plan_detection(*image.shape[:2])
        found = self.run(_resize(image, scale), upsample)
        return [
            (
                Box(d.left / scale, d.top / scale, (d.right + 1) / scale, (d.bottom + 1) / scale),
                _logistic(4.0 * (d.score + 0.5)),
            )
            for d in found
        ]

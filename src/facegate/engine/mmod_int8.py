"""dlib's MMOD CNN face detector (the weights of ``mmod_human_face_detector.dat``) made fast enough for a CPU:
the same network, computed in int8 by ONNX Runtime on a pyramid planned so that no upsampled image is built.

What is computed differs from ``OnnxMmodDetector`` (dlib's exact arithmetic) in three ways, each chosen for
speed and each measured by ``bench/detect.py`` against it:

- **The 2× upsampling is folded into the first convolution.** dlib upsamples the image 2× so its 80-px window
  finds faces of 40 px, then runs a 5×5 stride-2 convolution. Upsampling (linear, with the original pixels at
  even positions) and then that convolution is one 3×3 stride-1 convolution of the original image, so the
  pyramid is built, stored and read at 1×: a quarter of the pixels, and 27 multiply-adds per output instead
  of 75 (48 once split into phases, below).
- **The pyramid's levels are resized by Pillow** (bilinear with antialiasing, each level from the one before,
  every 5/6 as dlib's), into dlib's tiled layout with the padding halved along with the scale; the boxes are
  mapped back through each level's exact scale.
- **int8 arithmetic**: weights per output channel, symmetric; activations per layer, unsigned, their ranges
  fixed in ``ACTIVATION_RANGES`` (measured once on photographs held out of every benchmark). Two exact
  rewritings keep ONNX Runtime's int8 kernels on their fast paths: the first two convolutions run on the
  image split into 2×2 phases (12 channels, so no 3-channel convolution), and every convolution has a
  multiple of 16 output channels (the 45-channel layers are padded with zero filters: 2.8× faster on these
  cores). The last convolution (45 → 1, 9×9) is a matrix product to 81 partial scores per position, which
  ``Col2Im`` sums into place (ONNX Runtime's convolutions are slow with one output channel).
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from facegate.engine.detect import _logistic, _resize, plan_detection
from facegate.engine.dlib_format import Affine, Conv, DlibNetwork, Relu, read_network
from facegate.engine.faces import Box
from facegate.engine.mmod_onnx import _output_to_input, tile_levels
from facegate.engine.models import cnn_detector_weights
from facegate.engine.onnx_resnet import ArchitectureError, LazySession, _GraphBuilder, available_cores, cpu_session

if TYPE_CHECKING:
    import onnx

OPSET = 18  # Col2Im
INPUT_NAME, OUTPUT_NAME = "pixels", "scores"
PYRAMID_RATE = 5.0 / 6.0  # dlib's pyramid_down<6>
PHASES = 2  # the first two convolutions run on the image split into 2×2 phases
CHANNEL_MULTIPLE = 16  # ONNX Runtime's int8 convolutions: 341 GMAC/s with 45 output channels, 944 with 48
MIN_CANVAS = 48  # the network's valid convolutions need this many pixels on each side
_FILL = (123, 117, 104)  # the gaps between levels: dlib's detector's input means, rounded (checked on load)

# The largest output of each ReLU (the six before the last convolution) over the five photographs of dlib's
# examples that are not in testing.xml (training.xml's four and bald_guys.jpg), each reduced to the detection
# budget: `python bench/detect.py --calibrate` prints them; a test recomputes them. The largest, not a
# percentile: faces are where activations peak (clipping at the 99.99th percentile lowered face scores by 0.05).
ACTIVATION_RANGES = (4.5504, 6.5308, 3.8529, 4.4219, 6.2969, 13.3122)

# Linear 2× upsampling with the original pixels at even positions, then five taps at stride 2, is three taps
# at stride 1 on the original: row i of this matrix says how the 5×5 kernel's rows fall onto original rows.
_UPSAMPLE_FOLD = np.array([[1, 0.5, 0, 0, 0], [0, 0.5, 1, 0.5, 0], [0, 0, 0, 0.5, 1]])


def _conv_layers(network: DlibNetwork) -> list[tuple[np.ndarray, np.ndarray, int, int, bool]]:
    """(weights, bias, stride, padding, relu) per convolution, each affine layer folded in (float64)."""
    if network.mmod is None or network.pyramid_padding is None:
        raise ArchitectureError("not an MMOD detector: expected loss_mmod_ on an image-pyramid input")
    if network.mmod.use_bounding_box_regression:
        raise ArchitectureError("bounding-box regression detectors are not supported")
    layers, out = list(network.layers), []
    while layers:
        conv = layers.pop(0)
        if not isinstance(conv, Conv) or conv.stride[0] != conv.stride[1] or conv.padding[0] != conv.padding[1]:
            raise ArchitectureError(f"expected a conv layer with square strides and padding, found {conv!r:.120}")
        weights = conv.weights.astype(np.float64)
        bias = np.zeros(len(weights)) if conv.bias is None else conv.bias.astype(np.float64)
        if layers and isinstance(layers[0], Affine):
            affine = layers.pop(0)
            if not affine.disabled:
                weights = weights * affine.gamma.astype(np.float64)[:, None, None, None]
                bias = bias * affine.gamma + affine.beta
        relu = bool(layers and isinstance(layers[0], Relu) and not layers.pop(0).disabled)
        out.append((weights, bias, conv.stride[0], conv.padding[0], relu))
    shapes = [(w.shape[2], s, p) for w, _, s, p, _ in out]
    relus = [relu for *_, relu in out]
    if (
        len(out) < 3
        or shapes[:2] != [(5, 2, 0)] * 2
        or out[-1][0].shape[0] != 1
        or relus != [True] * (len(out) - 1) + [False]
    ):
        raise ArchitectureError(
            "expected dlib's face detector: two 5×5 stride-2 convolutions without padding first, a ReLU after "
            "every convolution but the last, and one score"
        )
    return out


def _first_convolution(weights: np.ndarray, bias: np.ndarray, means: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The first convolution on raw 2×2-phase pixels: upsampling folded in (5×5 s2 → 3×3 s1), dlib's
    normalisation (pixel − mean) / 256 moved into the bias, then split into phases (12 → 4×16 channels, 2×2)."""
    folded = np.einsum("ia,ocab,jb->ocij", _UPSAMPLE_FOLD, weights, _UPSAMPLE_FOLD)
    bias = bias - (folded * means[None, :, None, None] / 256).sum(axis=(1, 2, 3))
    out_channels, in_channels, k, _ = folded.shape
    kernel = (PHASES - 1 + k - 1) // PHASES + 1
    phased = np.zeros((PHASES**2 * out_channels, PHASES**2 * in_channels, kernel, kernel))
    for by in range(PHASES):  # output phase (by, bx) reads input phase (ay, ax) at offset (di, dj)
        for bx in range(PHASES):
            out = (by * PHASES + bx) * out_channels
            for u in range(k):
                for v in range(k):
                    ay, di = (by + u) % PHASES, (by + u) // PHASES
                    ax, dj = (bx + v) % PHASES, (bx + v) // PHASES
                    inp = (ay * PHASES + ax) * in_channels
                    phased[out : out + out_channels, inp : inp + in_channels, di, dj] = folded[:, :, u, v]
    return phased, np.tile(bias, PHASES**2)


def _second_convolution(weights: np.ndarray) -> np.ndarray:
    """A 5×5 stride-2 convolution as a 3×3 stride-1 one on its input's 2×2 phases."""
    out_channels, in_channels, k, _ = weights.shape
    kernel = (k + PHASES - 1) // PHASES
    phased = np.zeros((out_channels, PHASES**2 * in_channels, kernel, kernel))
    for u in range(k):
        for v in range(k):
            inp = ((u % PHASES) * PHASES + v % PHASES) * in_channels
            phased[:, inp : inp + in_channels, u // PHASES, v // PHASES] = weights[:, :, u, v]
    return phased


def _pad_channels(layers: list[tuple[np.ndarray, np.ndarray, int, int, bool]]) -> list:
    """Zero filters up to a multiple of CHANNEL_MULTIPLE outputs (their ReLU outputs are 0), and zero weights
    for them in the next layer: the same scores, on ONNX Runtime's fast int8 kernels."""
    out, extra = [], 0
    for i, (weights, bias, stride, padding, relu) in enumerate(layers):
        weights = np.pad(weights, ((0, 0), (0, extra), (0, 0), (0, 0)))
        extra = 0 if i == len(layers) - 1 else -len(weights) % CHANNEL_MULTIPLE
        out.append(
            (np.pad(weights, ((0, extra), (0, 0), (0, 0), (0, 0))), np.pad(bias, (0, extra)), stride, padding, relu)
        )
    return out


def build_model(network: DlibNetwork, ranges: tuple[float, ...] | None = ACTIVATION_RANGES) -> onnx.ModelProto:
    """The detector as an ONNX graph: the tiled 1× pyramid's raw pixels in 2×2 phases (1, rows/2, cols/2, 12)
    uint8 → scores (1, 1, h, w) float32, one per 8 upsampled pixels as dlib's. With ``ranges`` (the largest
    output of each ReLU) it computes in int8 (quantise–dequantise pairs that ONNX Runtime fuses
    into int8 convolutions); with None, in float32, returning every ReLU's output too (for calibration)."""
    import onnx
    from onnx import TensorProto, helper

    layers = _conv_layers(network)
    means = np.asarray(network.input_means, dtype=np.float64)
    first = _first_convolution(*layers[0][:2], means)
    layers[0] = (*first, 1, 0, layers[0][4])
    layers[1] = (_second_convolution(layers[1][0]), layers[1][1], 1, 0, layers[1][4])
    *body, (last_weights, last_bias, _, last_padding, _) = _pad_channels(layers)
    if ranges is not None and len(ranges) != sum(relu for *_, relu in body):
        raise ValueError(f"{len(ranges)} activation ranges for {sum(r for *_, r in body)} ReLU layers")

    graph, taps = _GraphBuilder(), []
    x = graph.node("Transpose", [INPUT_NAME], perm=[0, 3, 1, 2])
    scale = np.float32(1 / 256)  # raw pixels / 256: dlib's normalisation, its means being in the first bias
    if ranges is None:
        x = graph.node("Mul", [graph.node("Cast", [x], to=TensorProto.FLOAT), graph.constant("input_scale", scale)])
    else:
        x = _dequantise(graph, x, scale)
    relus, quantised = iter(ranges or ()), x
    for weights, bias, stride, padding, relu in body:
        attributes = {"kernel_shape": list(weights.shape[2:]), "strides": [stride] * 2, "pads": [padding] * 4}
        if ranges is None:
            w, b = (
                graph.constant("conv_w", weights.astype(np.float32)),
                graph.constant("conv_b", bias.astype(np.float32)),
            )
        else:
            w, b = _quantised_weights(graph, weights, bias, scale)
        x = graph.node("Conv", [x, w, b], **attributes)
        if relu:
            x = graph.node("Relu", [x])
            taps.append(x)
            if ranges is not None:
                scale = np.float32(next(relus) / 255)
                quantised = graph.node("QuantizeLinear", [x, *_qparams(graph, scale)])
                x = _dequantise(graph, quantised, scale)

    # The last convolution (one output, k×k) as k² partial scores per position, summed into place by Col2Im.
    # The partial scores are a matrix product, which leaves them in the layout Col2Im reads.
    k = last_weights.shape[2]
    # Reversed: Col2Im adds at offset +i what the convolution reads at −i.
    partial = last_weights[0].transpose(1, 2, 0).reshape(k * k, -1)[::-1]
    # The shape of the int8 tensor: asking it of the float one would have ONNX Runtime dequantise twice.
    shape = graph.node("Shape", [x if ranges is None else quantised])
    spatial = graph.node("Slice", [shape, graph.constant("from", np.array([2])), graph.constant("to", np.array([4]))])
    x = graph.node("Reshape", [x, graph.constant("features", np.array([1, partial.shape[1], -1]))])
    x = graph.node("MatMul", [graph.constant("partial_w", partial.astype(np.float32)), x])
    x = graph.node(
        "Col2Im",
        [x, spatial, graph.constant("block", np.array([k, k]))],
        pads=[k - 1 - last_padding] * 2 + [last_padding] * 2,
    )
    x = graph.node("Add", [x, graph.constant("score_bias", last_bias.astype(np.float32))])
    graph.nodes.append(helper.make_node("Identity", [x], [OUTPUT_NAME], name="output"))

    outputs = [helper.make_tensor_value_info(OUTPUT_NAME, TensorProto.FLOAT, [1, 1, "out_rows", "out_cols"])]
    if ranges is None:
        outputs += [helper.make_tensor_value_info(t, TensorProto.FLOAT, [1, None, None, None]) for t in taps]
    model = helper.make_model(
        helper.make_graph(
            graph.nodes,
            "mmod_human_face_detector_int8" if ranges is not None else "mmod_human_face_detector_folded",
            [helper.make_tensor_value_info(INPUT_NAME, TensorProto.UINT8, [1, "rows", "cols", 3 * PHASES**2])],
            outputs,
            graph.initializers,
        ),
        opset_imports=[helper.make_opsetid("", OPSET)],
        producer_name="facegate",
        ir_version=9,  # what ONNX Runtime releases since 1.15 read, for opset 18
    )
    onnx.checker.check_model(model)
    return model


def _qparams(graph: _GraphBuilder, scale: np.float32) -> list[str]:
    return [graph.constant("q_scale", scale), graph.constant("q_zero", np.uint8(0))]


def _dequantise(graph: _GraphBuilder, x: str, scale: np.float32) -> str:
    return graph.node("DequantizeLinear", [x, *_qparams(graph, scale)])


def _quantised_weights(
    graph: _GraphBuilder, weights: np.ndarray, bias: np.ndarray, input_scale: np.float32
) -> tuple[str, str]:
    """Weights as int8 per output channel (symmetric, ±127) and the bias as int32 at input × weight scale,
    each behind a DequantizeLinear, the form ONNX Runtime fuses into an int8 convolution."""
    peak = np.abs(weights).reshape(len(weights), -1).max(axis=1)
    scales = np.where(peak > 0, peak / 127, 1.0).astype(np.float32)
    q = np.clip(np.round(weights / scales[:, None, None, None]), -127, 127).astype(np.int8)
    bias_scales = (np.float64(input_scale) * scales).astype(np.float32)
    qb = np.round(bias / bias_scales).astype(np.int32)
    w = graph.node(
        "DequantizeLinear",
        [
            graph.constant("w_int8", q),
            graph.constant("w_scale", scales),
            graph.constant("w_zero", np.zeros(len(q), np.int8)),
        ],
        axis=0,
    )
    b = graph.node(
        "DequantizeLinear",
        [
            graph.constant("b_int32", qb),
            graph.constant("b_scale", bias_scales),
            graph.constant("b_zero", np.zeros(len(qb), np.int32)),
        ],
        axis=0,
    )
    return w, b


# --------------------------------------------------------------------------------------------- the pyramid


def level_sizes(height: int, width: int) -> list[tuple[int, int]]:
    """(width, height) of each pyramid level at 1×, every 5/6, while its upsampled height is dlib's 5 rows."""
    sizes, factor = [(width, height)], PYRAMID_RATE
    while 2 * round(height * factor) >= 5 and round(width * factor) >= 1:
        sizes.append((round(width * factor), round(height * factor)))
        factor *= PYRAMID_RATE
    return sizes


def tiled_pixels(image: np.ndarray, padding: tuple[int, int]) -> tuple[np.ndarray, list]:
    """The network's input for ``image``: its pyramid tiled as dlib tiles it (gaps in the mean colour, which
    dlib's normalisation maps to 0), split into 2×2 phases; and each level's (left, top, width, height)."""
    from PIL import Image

    height, width = image.shape[:2]
    rects, rows, cols = tile_levels(level_sizes(height, width), *padding)
    rows, cols = max(rows + rows % 2, MIN_CANVAS), max(cols + cols % 2, MIN_CANVAS)
    canvas = Image.new("RGB", (cols, rows), _FILL)
    level = Image.fromarray(image)
    canvas.paste(level, rects[0][:2])
    for left, top, w, h in rects[1:]:
        level = level.resize((w, h), Image.Resampling.BILINEAR)  # each level from the one before, as dlib's
        canvas.paste(level, (left, top))
    pixels = np.asarray(canvas).reshape(rows // PHASES, PHASES, cols // PHASES, PHASES, 3)
    return np.ascontiguousarray(pixels.transpose(0, 2, 1, 3, 4)).reshape(1, rows // 2, cols // 2, 12), rects


# ------------------------------------------------------------------------------------------------ decoding


def _levels_of(rects: list, x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """dlib's ``nearest_rect`` for many points: the first level containing each, else the closest."""
    best = np.full(len(x), -1)
    best_distance = np.full(len(x), np.inf)
    for i, (left, top, w, h) in enumerate(rects):
        distance = np.hypot(x - np.clip(x, left, left + w - 1), y - np.clip(y, top, top + h - 1))
        closer = distance < best_distance  # strictly: ties keep the earlier level, as dlib's
        best = np.where(closer, i, best)
        best_distance = np.where(closer, distance, best_distance)
    return best


def _thin(found: list[tuple[float, tuple[float, float, float, float]]], iou: float) -> list:
    """dlib's non-maximum suppression on real-valued boxes: its "union" is the bounding box of both."""
    found.sort(key=lambda item: item[0], reverse=True)
    kept: list[tuple[float, tuple[float, float, float, float]]] = []
    for score, box in found:
        for _, other in kept:
            inner = max(0.0, min(box[2], other[2]) - max(box[0], other[0])) * max(
                0.0, min(box[3], other[3]) - max(box[1], other[1])
            )
            outer = (max(box[2], other[2]) - min(box[0], other[0])) * (max(box[3], other[3]) - min(box[1], other[1]))
            if inner > 0 and inner / outer > iou:
                break
        else:
            kept.append((score, box))
    return kept


class Int8MmodDetector:
    """dlib's MMOD CNN face detector in int8 on ONNX Runtime, with one 2× upsampling folded into the network
    (faces down to about 40 px). Implements ``Detector``; boxes agree with ``OnnxMmodDetector``'s to within a
    few pixels, and its confidence is the same logistic of the score."""

    name = "cnn"

    def __init__(
        self,
        weights: Path | None = None,
        *,
        threads: int | None = None,
        ranges: tuple[float, ...] = ACTIVATION_RANGES,
        threshold: float = 0.0,
    ) -> None:
        self.weights = Path(weights) if weights else cnn_detector_weights()
        self.network = read_network(self.weights)
        self._model = build_model(self.network, ranges).SerializeToString()  # 0.2 MB, a few ms to build: not cached
        if tuple(round(m) for m in self.network.input_means) != _FILL:
            raise ArchitectureError(f"input means {self.network.input_means} are not dlib's face detector's")
        mapping = _output_to_input(self.network)
        self._stride, self._offset = _network_grid(mapping)
        window = self.network.mmod.detector_windows[0]  # type: ignore[union-attr]
        if len(self.network.mmod.detector_windows) != 1:  # type: ignore[union-attr]
            raise ArchitectureError("only single-window MMOD detectors are supported")
        self._half_window = (window.width / 4, window.height / 4)  # half its size, at 1× rather than 2×
        self._nms = self.network.mmod.overlaps_nms[0]  # type: ignore[union-attr]
        padding, outer = self.network.pyramid_padding or (10, 11)
        self._padding = (round(padding / 2), round(outer / 2))
        self.threads = threads or available_cores()
        self.threshold = threshold
        # Idle threads sleep rather than spin: on cores shared with other work, spinning ones slow it down
        # (measured: AWS photos under load 448 → 391 ms; LFW crops, machine idle, 3.5 → 4.4).
        self._session = LazySession(lambda: cpu_session(self._model, self.threads, spin=False))

    def scores(self, pixels: np.ndarray) -> np.ndarray:
        """The network's score map for ``tiled_pixels`` output."""
        return self._session.get().run([OUTPUT_NAME], {INPUT_NAME: pixels})[0][0, 0]

    def run(self, image: np.ndarray) -> list[tuple[Box, float]]:
        """Faces in ``image`` (RGB or grey uint8) as boxes in its pixels and raw detector scores, found as
        dlib's detector with one 2× upsampling finds them."""
        image = np.asarray(image)
        if image.ndim == 2:
            image = np.repeat(image[:, :, None], 3, axis=2)
        if image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3:
            raise ValueError(f"expected an RGB or grey uint8 image, got {image.dtype} of shape {image.shape}")
        if min(image.shape[:2]) < 1:
            return []
        pixels, rects = tiled_pixels(image, self._padding)
        scores = self.scores(pixels)
        rows, cols = np.nonzero(scores > self.threshold)
        if not len(rows):
            return []
        x, y = self._stride * cols + self._offset, self._stride * rows + self._offset
        level = _levels_of(rects, x, y)
        geometry = np.asarray(rects, dtype=np.float64)[level]  # left, top, width, height of each point's level
        sx, sy = image.shape[1] / geometry[:, 2], image.shape[0] / geometry[:, 3]
        cx, cy = x - geometry[:, 0] + 0.5, y - geometry[:, 1] + 0.5  # edge coordinates in the level
        hw, hh = self._half_window
        boxes = np.stack([(cx - hw) * sx, (cy - hh) * sy, (cx + hw) * sx, (cy + hh) * sy], axis=1)
        found = [(float(s), tuple(b)) for s, b in zip(scores[rows, cols].tolist(), boxes.tolist(), strict=True)]
        return [(Box(*box), score) for score, box in _thin(found, self._nms)]

    def detect(self, image: np.ndarray) -> list[tuple[Box, float]]:
        """Boxes in pixels of ``image`` with ``CnnDetector``'s confidence (a logistic of the score)."""
        scale, upsample = plan_detection(*image.shape[:2])
        if upsample != 1:
            raise ValueError(f"the int8 detector folds exactly one 2× upsampling into its network, not {upsample}")
        found = self.run(_resize(image, scale))
        return [
            (Box(b.left / scale, b.top / scale, b.right / scale, b.bottom / scale), _logistic(4.0 * (s + 0.5)))
            for b, s in found
        ]


def _network_grid(mapping: list[tuple[int, int, int]]) -> tuple[int, int]:
    """(stride, offset) from a score's position to its window centre in the 1× tiled image: dlib's
    ``output_tensor_to_input_tensor`` gives upsampled pixels, half of them at 1×."""

    def upsampled(p: float) -> float:
        for stride, pad, half in mapping:
            p = p * stride - pad + half
        return p

    origin, step = upsampled(0), upsampled(1) - upsampled(0)
    if origin % 2 or step % 2:
        raise ArchitectureError("the score grid does not fall on whole pixels at 1×")
    return int(step // 2), int(origin // 2)


def activation_ranges(images: list[np.ndarray], weights: Path | None = None) -> tuple[float, ...]:
    """What ``ACTIVATION_RANGES`` holds, measured on ``images`` (each reduced to the detection budget, as
    ``detect`` does): the largest output of each ReLU, rounded up to 4 decimals."""
    network = read_network(weights or cnn_detector_weights())
    session = cpu_session(build_model(network, None).SerializeToString(), available_cores())
    padding, outer = network.pyramid_padding or (10, 11)
    names = [o.name for o in session.get_outputs()[1:]]
    peaks = np.zeros(len(names))
    for image in images:
        scaled = _resize(image, plan_detection(*image.shape[:2])[0])
        pixels, _ = tiled_pixels(scaled, (round(padding / 2), round(outer / 2)))
        peaks = np.maximum(peaks, [float(out.max()) for out in session.run(names, {INPUT_NAME: pixels})])
    return tuple(math.ceil(p * 1e4) / 1e4 for p in peaks)

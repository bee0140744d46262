"""A reader for dlib's binary serialisation of a DNN (``dlib_face_recognition_resnet_model_v1.dat``), so the
network's weights can be handed to another runtime without dlib.

The file holds the layers' parameters and hyper-parameters, innermost (input) layer first, but not how the
layers connect: that lives in the C++ type that wrote it. :func:`read_network` therefore returns the records
in file order; a builder that knows the architecture (``onnx_resnet``) wires them up.

Encodings follow dlib's ``serialize.h`` and ``cuda/tensor.h``: integers are a control byte (0x80 = negative,
low four bits = byte count) and a little-endian magnitude; floats are two such integers, mantissa then
exponent; tensors are version 2, four int64 dimensions (N, C, H, W) and raw little-endian float32 data.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np

INPUT_TAGS = ("input_rgb_image_sized", "input_rgb_image", "input_rgb_image_pyramid", "input_rgb_image_pyramid2")
# input_image_pyramid's defaults, used by files written before the paddings were serialised.
DEFAULT_PYRAMID_PADDING, DEFAULT_PYRAMID_OUTER_PADDING = 10, 11
_FLOAT_INF, _FLOAT_NINF, _FLOAT_NAN = 32000, 32001, 32002  # dlib's float_details exponent markers


class DlibFormatError(ValueError):
    """The file is not a dlib network this reader understands; the message says where and why."""


@dataclass(frozen=True)
class Conv:
    """``con_``: weights are (out, in, rows, cols), the same order as ONNX."""

    weights: np.ndarray
    bias: np.ndarray | None
    stride: tuple[int, int]
    padding: tuple[int, int]
    relu: bool = False  # con_6 can fuse a relu after the convolution


@dataclass(frozen=True)
class Affine:
    """``affine_``: y = gamma·x + beta, per channel (mode 0) or per element (mode 1)."""

    gamma: np.ndarray
    beta: np.ndarray
    per_channel: bool
    disabled: bool = False


@dataclass(frozen=True)
class Relu:
    disabled: bool = False


@dataclass(frozen=True)
class Pool:
    """``max_pool_`` / ``avg_pool_``; a size of (0, 0) means the whole feature map."""

    kind: str  # "max" or "avg"
    size: tuple[int, int]
    stride: tuple[int, int]
    padding: tuple[int, int]

    @property
    def is_global(self) -> bool:
        return self.size == (0, 0)


@dataclass(frozen=True)
class AddPrev:
    """``add_prev_``: adds a tagged earlier output; which one is not recorded in the file."""


@dataclass(frozen=True)
class FullyConnected:
    """``fc_``: weights are (inputs, outputs), i.e. y = x·W (transposed relative to ONNX Gemm)."""

    weights: np.ndarray
    bias: np.ndarray | None


Layer = Conv | Affine | Relu | Pool | AddPrev | FullyConnected


@dataclass(frozen=True)
class DetectorWindow:
    """One of ``loss_mmod_``'s sliding windows: its size in pixels of the pyramid level it fires on."""

    width: int
    height: int
    label: str = ""


@dataclass(frozen=True)
class MmodOptions:
    """``mmod_options``: what the MMOD loss needs at inference (windows, non-max suppression), plus the
    training-only fields so the record is complete. Overlap tests are (IoU threshold, percent-covered threshold)."""

    detector_windows: tuple[DetectorWindow, ...]
    loss_per_false_alarm: float
    loss_per_missed_target: float
    truth_match_iou_threshold: float
    overlaps_nms: tuple[float, float]
    overlaps_ignore: tuple[float, float]
    assume_image_pyramid: bool = True
    use_bounding_box_regression: bool = False
    bbr_lambda: float = 100.0


@dataclass(frozen=True)
class DlibNetwork:
    """A network as stored: the loss, the input layer's normalisation and the layers from input to output."""

    loss: str
    input_means: tuple[float, float, float]  # RGB means subtracted before dividing by 256
    input_size: tuple[int, int] | None  # (rows, cols) of an ``input_rgb_image_sized`` layer
    layers: tuple[Layer, ...]
    wrappers: int  # layer wrappers in the file, tags and skips included
    mmod: MmodOptions | None = None  # the options of a ``loss_mmod_`` (detector) network
    pyramid_padding: tuple[int, int] | None = None  # (padding, outer padding) of an image-pyramid input layer


class _Reader:
    def __init__(self, data: bytes, source: str) -> None:
        self.data = memoryview(data)
        self.pos = 0
        self.source = source

    def fail(self, what: str) -> DlibFormatError:
        return DlibFormatError(f"{self.source}: {what} (at byte {self.pos} of {len(self.data)})")

    def take(self, count: int, what: str) -> memoryview:
        if count < 0 or self.pos + count > len(self.data):
            raise self.fail(
                f"file ends while reading {what}: {count} bytes needed, {len(self.data) - self.pos} left; "
                "the file is truncated, re-install or re-download the model"
            )
        chunk = self.data[self.pos : self.pos + count]
        self.pos += count
        return chunk

    def integer(self, what: str = "an integer") -> int:
        control = self.take(1, what)[0]
        size = control & 0x0F
        if control & 0x70 or size == 0 or size > 8:
            raise self.fail(f"byte 0x{control:02x} does not start a dlib integer while reading {what}")
        value = int.from_bytes(self.take(size, what), "little")
        return -value if control & 0x80 else value

    def floating(self, what: str = "a float") -> float:
        if self.pos < len(self.data) and self.data[self.pos] & 0x70:
            raise self.fail(f"{what} is in dlib's old text float format, which this reader does not accept")
        mantissa = self.integer(what)
        exponent = self.integer(what)
        if exponent == _FLOAT_INF:
            return math.inf
        if exponent == _FLOAT_NINF:
            return -math.inf
        if exponent == _FLOAT_NAN:
            return math.nan
        return math.ldexp(float(mantissa), exponent)

    def boolean(self, what: str = "a boolean") -> bool:
        byte = self.take(1, what)[0]
        if byte not in b"01":
            raise self.fail(f"byte 0x{byte:02x} is not a dlib boolean ('0' or '1') while reading {what}")
        return byte == ord("1")

    def string(self, what: str = "a string") -> str:
        length = self.integer(what)
        return bytes(self.take(length, what)).decode("latin-1")

    def peek_string(self) -> str | None:
        """The string at the cursor if one is there, without moving; None if the bytes are not a string."""
        start = self.pos
        try:
            return self.string()
        except DlibFormatError:
            return None
        finally:
            self.pos = start

    def tensor(self, what: str) -> np.ndarray:
        version = self.integer(what)
        if version != 2:
            raise self.fail(f"tensor version {version} while reading {what}; expected 2")
        shape = tuple(self.integer(what) for _ in range(4))
        if min(shape) < 0:
            raise self.fail(f"negative tensor dimensions {shape} while reading {what}")
        count = math.prod(shape)
        raw = self.take(4 * count, f"{what} ({count} floats)")
        return np.frombuffer(raw, dtype="<f4").astype(np.float32).reshape(shape)

    def alias(self, what: str) -> tuple[int, int, int, int]:
        version = self.integer(what)
        if version != 1:
            raise self.fail(f"alias tensor version {version} while reading {what}; expected 1")
        return tuple(self.integer(what) for _ in range(4))  # type: ignore[return-value]


def read_network(path: Path | str) -> DlibNetwork:
    """Parse a dlib network file (e.g. ``dlib_face_recognition_resnet_model_v1.dat``) into its layer records."""
    path = Path(path)
    return parse_network(path.read_bytes(), source=str(path))


def parse_network(data: bytes, source: str = "<bytes>") -> DlibNetwork:
    """Parse the bytes of a dlib network written by ``dlib::serialize(net)``."""
    reader = _Reader(data, source)
    if reader.integer("the loss layer's version") != 1:
        raise reader.fail("not a dlib network: the loss layer's version is not 1")
    loss = reader.string("the loss layer's name")
    mmod = _skip_loss(reader, loss)

    # One version per wrapper, outermost first: 2 for a layer with parameters (add_layer), 1 for a tag or
    # skip (no record of its own), and 2 or 3 for the innermost add_layer, which owns the input layer.
    versions: list[int] = []
    while (tag := reader.peek_string()) not in INPUT_TAGS:
        if len(versions) > 100_000:
            raise reader.fail("no input layer found after the layer wrappers' versions")
        versions.append(reader.integer("a layer wrapper's version"))
    if not versions or versions[-1] not in (2, 3) or any(v not in (1, 2) for v in versions[:-1]):
        raise reader.fail(f"unsupported layer wrapper versions {sorted(set(versions))}; expected 1 or 2, then 2 or 3")

    reader.string("the input layer's name")
    red, green, blue = (float(np.float32(reader.floating("an input mean"))) for _ in range(3))
    size = (reader.integer("input rows"), reader.integer("input cols")) if tag == "input_rgb_image_sized" else None
    pyramid_padding = None
    if tag == "input_rgb_image_pyramid2":
        pyramid_padding = (reader.integer("pyramid padding"), reader.integer("pyramid outer padding"))
    elif tag == "input_rgb_image_pyramid":
        pyramid_padding = (DEFAULT_PYRAMID_PADDING, DEFAULT_PYRAMID_OUTER_PADDING)

    records = 1 + versions[:-1].count(2)
    layers = []
    for i in range(records):
        layers.append(_layer(reader))
        for _ in range(3):
            reader.boolean("a layer's training flags")
        for _ in range(3):
            reader.tensor("a layer's training state")
        if i == 0 and versions[-1] == 3:
            reader.integer("the sample expansion factor")
    if reader.pos != len(reader.data):
        raise reader.fail(f"{len(reader.data) - reader.pos} unexpected bytes after the last layer")
    return DlibNetwork(
        loss=loss,
        input_means=(red, green, blue),
        input_size=size,
        layers=tuple(layers),
        wrappers=len(versions),
        mmod=mmod,
        pyramid_padding=pyramid_padding,
    )


def _skip_loss(reader: _Reader, loss: str) -> MmodOptions | None:
    """Reads the loss record; returns its options for ``loss_mmod_`` (the detector needs them), else None."""
    if loss == "loss_metric_2":
        reader.floating("the loss margin")
        reader.floating("the loss distance threshold")
    elif loss == "loss_mmod_":
        return _mmod_options(reader)
    elif loss != "loss_metric_":
        raise reader.fail(f"unsupported loss layer {loss!r}; expected loss_metric_, loss_metric_2 or loss_mmod_")
    return None


def _mmod_options(reader: _Reader) -> MmodOptions:
    """``mmod_options`` versions 1–4 (loss.h): version 1 has a single unlabelled window."""
    version = reader.integer("the mmod options' version")
    if not 1 <= version <= 4:
        raise reader.fail(f"mmod options version {version}; expected 1 to 4")
    if version == 1:
        windows = [DetectorWindow(reader.integer("window width"), reader.integer("window height"))]
    else:
        windows = []
        for _ in range(reader.integer("the number of detector windows")):
            window_version = reader.integer("a detector window's version")
            if window_version not in (1, 2):
                raise reader.fail(f"detector window version {window_version}; expected 1 or 2")
            width, height = reader.integer("window width"), reader.integer("window height")
            label = reader.string("window label") if window_version == 2 else ""
            windows.append(DetectorWindow(width, height, label))
    false_alarm = reader.floating("loss per false alarm")
    missed = reader.floating("loss per missed target")
    truth_iou = reader.floating("truth match IoU threshold")
    nms = (reader.floating("NMS IoU threshold"), reader.floating("NMS percent covered threshold"))
    ignore = (reader.floating("ignore IoU threshold"), reader.floating("ignore percent covered threshold"))
    pyramid = True
    if version >= 3:
        pyramid = reader.take(1, "assume_image_pyramid")[0] != 0  # a uint8, written as one raw byte
    bbr, bbr_lambda = False, 100.0
    if version >= 4:
        bbr, bbr_lambda = reader.boolean("use_bounding_box_regression"), reader.floating("bbr_lambda")
    return MmodOptions(
        detector_windows=tuple(windows),
        loss_per_false_alarm=false_alarm,
        loss_per_missed_target=missed,
        truth_match_iou_threshold=truth_iou,
        overlaps_nms=nms,
        overlaps_ignore=ignore,
        assume_image_pyramid=pyramid,
        use_bounding_box_regression=bbr,
        bbr_lambda=bbr_lambda,
    )


def _layer(reader: _Reader) -> Layer:
    start = reader.pos
    tag = reader.string("a layer's name")
    if tag in ("con_4", "con_5", "con_6"):
        return _conv(reader, tag)
    if tag in ("affine_", "affine_2"):
        return _affine(reader, tag)
    if tag in ("bn_con2", "bn_fc2"):
        return _batch_norm(reader, tag)
    if tag in ("relu_", "relu_2"):
        return Relu(disabled=reader.boolean("relu_2's disabled flag") if tag == "relu_2" else False)
    if tag in ("max_pool_2", "avg_pool_2"):
        rows, cols = reader.integer("pool rows"), reader.integer("pool cols")
        stride = (reader.integer("pool stride y"), reader.integer("pool stride x"))
        padding = (reader.integer("pool padding y"), reader.integer("pool padding x"))
        return Pool(kind=tag[:3], size=(rows, cols), stride=stride, padding=padding)
    if tag == "add_prev_":
        return AddPrev()
    if tag in ("fc_2", "fc_3"):
        return _fully_connected(reader, tag)
    reader.pos = start
    raise reader.fail(f"unsupported layer record {tag!r}")


def _slice(params: np.ndarray, offset: int, shape: tuple[int, ...], reader: _Reader, what: str) -> np.ndarray:
    """The alias view ``shape`` at ``offset`` inside a layer's flat parameter block."""
    flat = params.reshape(-1)
    count = math.prod(shape)
    if offset + count > flat.size:
        raise reader.fail(f"{what} of shape {shape} at offset {offset} overruns the {flat.size} parameters")
    return flat[offset : offset + count].reshape(shape)


def _conv(reader: _Reader, tag: str) -> Conv:
    params = reader.tensor("conv parameters")
    filters = reader.integer("conv filters")
    kernel = (reader.integer("conv rows"), reader.integer("conv cols"))
    stride = (reader.integer("conv stride y"), reader.integer("conv stride x"))
    padding = (reader.integer("conv padding y"), reader.integer("conv padding x"))
    weight_shape = reader.alias("conv filter alias")
    bias_shape = reader.alias("conv bias alias")
    for _ in range(4):
        reader.floating("a conv learning-rate multiplier")
    use_bias = reader.boolean("con_5's use_bias") if tag in ("con_5", "con_6") else True
    relu = reader.boolean("con_6's use_relu") if tag == "con_6" else False
    if weight_shape[0] != filters or weight_shape[2:] != kernel:
        raise reader.fail(f"conv filter alias {weight_shape} disagrees with {filters} filters of {kernel}")
    weights = _slice(params, 0, weight_shape, reader, "conv filters")
    bias = _slice(params, weights.size, (filters,), reader, "conv bias") if use_bias and math.prod(bias_shape) else None
    return Conv(weights=weights, bias=bias, stride=stride, padding=padding, relu=relu)


def _affine(reader: _Reader, tag: str) -> Affine:
    params = reader.tensor("affine parameters")
    gamma_shape = reader.alias("affine gamma alias")
    beta_shape = reader.alias("affine beta alias")
    mode = reader.integer("affine mode")
    disabled = reader.boolean("affine_2's disabled flag") if tag == "affine_2" else False
    if mode not in (0, 1):
        raise reader.fail(f"affine mode {mode}; expected 0 (per channel) or 1 (per element)")
    if disabled:
        return Affine(gamma=np.ones(0, np.float32), beta=np.zeros(0, np.float32), per_channel=True, disabled=True)
    gamma = _slice(params, 0, gamma_shape, reader, "affine gamma")
    beta = _slice(params, gamma.size, beta_shape, reader, "affine beta")
    if mode == 0:
        gamma, beta = gamma.reshape(-1), beta.reshape(-1)
    return Affine(gamma=gamma, beta=beta, per_channel=mode == 0)


def _batch_norm(reader: _Reader, tag: str) -> Affine:
    """``bn_con2`` / ``bn_fc2``, frozen into the affine layer dlib's inference types load it as (``affine_``'s
    deserialiser converts it): gamma / sqrt(running variance + eps) and beta − that · running mean, in float32."""
    params = reader.tensor("batch norm parameters")
    gamma_shape = reader.alias("batch norm gamma alias")
    beta_shape = reader.alias("batch norm beta alias")
    for what in ("means", "inverse stds"):
        reader.tensor(f"batch norm {what}")
    running_means = reader.tensor("batch norm running means").reshape(-1)
    running_variances = reader.tensor("batch norm running variances").reshape(-1)
    reader.integer("batch norm update count")
    reader.integer("batch norm running stats window")
    for _ in range(4):
        reader.floating("a batch norm learning-rate multiplier")
    eps = np.float32(reader.floating("batch norm eps"))
    gamma = _slice(params, 0, gamma_shape, reader, "batch norm gamma").reshape(-1)
    beta = _slice(params, gamma.size, beta_shape, reader, "batch norm beta").reshape(-1)
    if not gamma.size == beta.size == running_means.size == running_variances.size:
        raise reader.fail("batch norm gamma, beta and running statistics differ in size")
    scale = (gamma / np.sqrt(running_variances + eps)).astype(np.float32)
    shift = (beta - scale * running_means).astype(np.float32)
    if tag == "bn_con2":
        return Affine(gamma=scale, beta=shift, per_channel=True)
    return Affine(gamma=scale.reshape(gamma_shape), beta=shift.reshape(beta_shape), per_channel=False)


def _fully_connected(reader: _Reader, tag: str) -> FullyConnected:
    outputs = reader.integer("fc outputs")
    inputs = reader.integer("fc inputs")
    params = reader.tensor("fc parameters")
    reader.alias("fc weight alias")
    bias_shape = reader.alias("fc bias alias")
    bias_mode = reader.integer("fc bias mode")  # 0 = has bias, 1 = no bias
    for _ in range(4):
        reader.floating("an fc learning-rate multiplier")
    use_bias = reader.boolean("fc_3's use_bias") if tag == "fc_3" else True
    weights = _slice(params, 0, (inputs, outputs), reader, "fc weights")
    has_bias = bias_mode == 0 and use_bias and math.prod(bias_shape) > 0
    bias = _slice(params, weights.size, (outputs,), reader, "fc bias") if has_bias else None
    return FullyConnected(weights=weights, bias=bias)

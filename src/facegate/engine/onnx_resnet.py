"""dlib's face-embedding ResNet run by ONNX Runtime: the same weights and the same arithmetic as dlib, so its
embeddings are interchangeable with ``DlibResnet``'s (same ``version``), at a fraction of the CPU time.

The network is rebuilt from dlib's own ``.dat`` file (parsed by ``dlib_format``) as an ONNX graph with the
``onnx`` package; the architecture comes from dlib's ``face_recognition.cpp``, because the file stores the
layers but not how they connect. The graph takes the aligned RGB chips as uint8 (n, 150, 150, 3) and
normalises them inside, exactly as dlib's input layer does. Each affine layer (dlib's frozen batch norm) is
folded into the convolution before it. The .onnx file is built once per weights file and cached.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
import threading
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from facegate.engine.dlib_format import AddPrev, Affine, Conv, DlibNetwork, FullyConnected, Pool, Relu, read_network
from facegate.engine.models import EMBEDDING_MODEL_VERSION, embedding_weights, weights_sha256

if TYPE_CHECKING:
    import onnx
    import onnxruntime

# Bump when the graph built from the same weights changes, so caches of older builds are not reused.
CONVERTER_REVISION = 1
OPSET = 17
DEFAULT_BATCH_SIZE = 32  # on 2 cores: 1.32 ms per face at 32, 1.35 at 16, 1.46 at 8, 1.71 at 1; 64 gains nothing
INPUT_NAME, OUTPUT_NAME = "chips", "embeddings"


class ArchitectureError(ValueError):
    """The layers in the file do not follow dlib's face-embedding ResNet."""


def default_cache_dir() -> Path:
    """``$FACEGATE_CACHE`` if set, else ``~/.cache/facegate``."""
    return Path(os.environ.get("FACEGATE_CACHE") or Path.home() / ".cache" / "facegate")


def convert(weights: Path | None = None) -> bytes:
    """The ONNX model (serialised) of dlib's ResNet with these weights; the same bytes for the same weights."""
    weights = weights or embedding_weights()
    return build_model(read_network(weights), weights_sha256=weights_sha256(weights)).SerializeToString()


def onnx_model_path(weights: Path | None = None, cache_dir: Path | None = None) -> Path:
    """The cached .onnx file for these weights, converting (and writing atomically) on first use."""
    weights = weights or embedding_weights()
    cache_dir = cache_dir or default_cache_dir()
    path = cache_dir / f"dlib-resnet-{weights_sha256(weights)}-r{CONVERTER_REVISION}.onnx"
    if not path.is_file():
        _write_atomically(path, convert(weights))
    return path


def _write_atomically(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, temp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(temp, path)  # readers see the old file or the whole new one, never a part
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(temp)
        raise


def available_cores() -> int:
    """CPU cores this process may run on (respects affinity masks, unlike ``os.cpu_count``)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def cpu_session(model: str | bytes, threads: int, *, spin: bool = True) -> onnxruntime.InferenceSession:
    """An ONNX Runtime session on the CPU with ``threads`` intra-op threads, every graph optimisation on;
    ``spin=False`` has idle threads sleep at once instead of spinning for more work."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    if not spin:
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    options.inter_op_num_threads = 1
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    return ort.InferenceSession(model, options, providers=["CPUExecutionProvider"])


class LazySession:
    """An ONNX Runtime session created on first use, once, whichever thread asks first."""

    def __init__(self, create: Callable[[], onnxruntime.InferenceSession]) -> None:
        self._create = create
        self._session: onnxruntime.InferenceSession | None = None
        self._lock = threading.Lock()

    def get(self) -> onnxruntime.InferenceSession:
        if self._session is None:
            with self._lock:
                if self._session is None:
                    self._session = self._create()
        return self._session


class OnnxResnet:
    """dlib's 128-d ResNet run by ONNX Runtime on the CPU; embeddings match ``DlibResnet``'s within 1e-6.

    ``threads`` is ONNX Runtime's intra-op thread count (default: all available cores); ``cache_dir`` holds the
    converted model (default ``$FACEGATE_CACHE`` or ``~/.cache/facegate``). The session is created on the first
    ``embed`` and shared by concurrent callers.
    """

    version = EMBEDDING_MODEL_VERSION  # interchangeable with DlibResnet: same weights, same arithmetic
    dimensions = 128
    chip_size = 150
    chip_padding = 0.25

    def __init__(
        self,
        weights: Path | None = None,
        *,
        cache_dir: Path | None = None,
        threads: int | None = None,
        batch_size: int = DEFAULT_BATCH_SIZE,
    ) -> None:
        if batch_size < 1:
            raise ValueError(f"batch_size must be at least 1, got {batch_size}")
        self.weights = Path(weights) if weights else embedding_weights()
        self.cache_dir = cache_dir
        self.threads = threads or available_cores()
        self.batch_size = batch_size
        self._session = LazySession(self._create_session)

    def _create_session(self) -> onnxruntime.InferenceSession:
        path = onnx_model_path(self.weights, self.cache_dir)
        try:
            return cpu_session(str(path), self.threads)
        except Exception:  # a damaged cache entry: rebuild it once rather than fail until someone deletes it
            _write_atomically(path, convert(self.weights))
            return cpu_session(str(path), self.threads)

    def embed(self, chips: list[np.ndarray]) -> np.ndarray:
        """Embeddings (n × 128, float32) of aligned 150×150 RGB (or grey) uint8 chips, as ``dlib.get_face_chip``
        makes them; run in batches of ``batch_size``."""
        if not len(chips):
            return np.zeros((0, self.dimensions), dtype=np.float32)
        batch = np.stack([self._check_chip(i, chip) for i, chip in enumerate(chips)])
        session = self._session.get()
        parts = [
            session.run([OUTPUT_NAME], {INPUT_NAME: batch[start : start + self.batch_size]})[0]
            for start in range(0, len(batch), self.batch_size)
        ]
        return np.concatenate(parts).astype(np.float32, copy=False)

    def _check_chip(self, index: int, chip: np.ndarray) -> np.ndarray:
        chip = np.asarray(chip)
        if chip.ndim == 2:  # dlib accepts grey chips and repeats the channel
            chip = np.repeat(chip[:, :, None], 3, axis=2)
        size = self.chip_size
        if chip.shape != (size, size, 3) or chip.dtype != np.uint8:
            raise ValueError(
                f"chip {index} is {chip.dtype} of shape {chip.shape}; expected uint8 of shape ({size}, {size}, 3) "
                f"(RGB) or ({size}, {size}) (grey), as dlib.get_face_chip(image, shape5, {size}, 0.25) returns"
            )
        return chip

    def weights_hash(self) -> str:
        return weights_sha256(self.weights)


def build_model(network: DlibNetwork, *, weights_sha256: str = "") -> onnx.ModelProto:
    """The ONNX model of dlib's face-embedding ResNet from its parsed layers.

    Wiring (from dlib's ``face_recognition.cpp``): a stem (conv, affine, relu, max pool), then residual blocks
    (conv, affine, relu, conv, affine, [2×2 average pool of the block input as the shortcut], add, relu), a
    global average pool and a fully connected layer. The add zero-pads the smaller input as dlib's does.
    """
    import onnx
    from onnx import TensorProto, helper

    if network.input_size is None:
        raise ArchitectureError("the input layer has no fixed size; expected input_rgb_image_sized")
    graph = _GraphBuilder()
    rows, cols = network.input_size
    layers = list(network.layers)

    means = np.array(network.input_means, dtype=np.float32)
    x = graph.node("Cast", [INPUT_NAME], to=TensorProto.FLOAT)
    x = graph.node("Sub", [x, graph.constant("input_means", means)])  # float32 arithmetic, like dlib's
    x = graph.node("Mul", [x, graph.constant("input_scale", np.array(1 / 256, dtype=np.float32))])
    x = graph.node("Transpose", [x], perm=[0, 3, 1, 2])
    shape = (3, rows, cols)

    x, shape = graph.conv_affine(x, shape, _take(layers, Conv), _take(layers, Affine))
    x = graph.relu(x, _take(layers, Relu))
    x, shape = graph.pool(x, shape, _take(layers, Pool, "max"))

    while layers and isinstance(layers[0], Conv):
        block_input, input_shape = x, shape
        x, shape = graph.conv_affine(x, shape, _take(layers, Conv), _take(layers, Affine))
        x = graph.relu(x, _take(layers, Relu))
        x, shape = graph.conv_affine(x, shape, _take(layers, Conv), _take(layers, Affine))
        shortcut, shortcut_shape = block_input, input_shape
        if layers and isinstance(layers[0], Pool):
            shortcut, shortcut_shape = graph.pool(shortcut, shortcut_shape, _take(layers, Pool, "avg"))
        _take(layers, AddPrev)
        x, shape = graph.add_zero_padded(x, shape, shortcut, shortcut_shape)
        x = graph.relu(x, _take(layers, Relu))

    final_pool = _take(layers, Pool, "avg")
    if not final_pool.is_global:
        raise ArchitectureError(f"expected a global average pool after the residual blocks, found {final_pool}")
    x = graph.node("GlobalAveragePool", [x])
    x = graph.node("Flatten", [x], axis=1)
    fc = _take(layers, FullyConnected)
    if fc.weights.shape[0] != shape[0]:
        raise ArchitectureError(f"fc expects {fc.weights.shape[0]} inputs but the features have {shape[0]}")
    x = graph.node("MatMul", [x, graph.constant("fc_weights", fc.weights)])  # dlib's fc is y = x·W
    if fc.bias is not None:
        x = graph.node("Add", [x, graph.constant("fc_bias", fc.bias)])
    if layers:
        raise ArchitectureError(f"{len(layers)} layers left after the fully connected layer: {layers[0]}")
    graph.nodes.append(helper.make_node("Identity", [x], [OUTPUT_NAME], name="output"))

    outputs = fc.weights.shape[1]
    model = helper.make_model(
        helper.make_graph(
            graph.nodes,
            "dlib_face_recognition_resnet_model_v1",
            [helper.make_tensor_value_info(INPUT_NAME, TensorProto.UINT8, ["batch", rows, cols, 3])],
            [helper.make_tensor_value_info(OUTPUT_NAME, TensorProto.FLOAT, ["batch", outputs])],
            graph.initializers,
        ),
        opset_imports=[helper.make_opsetid("", OPSET)],
        producer_name="facegate",
        producer_version=f"dlib-resnet-r{CONVERTER_REVISION}",
        ir_version=8,  # what ONNX Runtime releases since 1.10 read, for opset 17
    )
    helper.set_model_props(model, {"embedding_version": EMBEDDING_MODEL_VERSION, "weights_sha256": weights_sha256})
    onnx.checker.check_model(model)
    return model


def _take(layers: list, kind: type, pool_kind: str | None = None):
    """The next layer, which must be of ``kind`` (and, for pools, ``pool_kind``)."""
    if not layers:
        raise ArchitectureError(f"the network ends where a {kind.__name__} layer was expected")
    layer = layers.pop(0)
    if not isinstance(layer, kind) or (pool_kind is not None and layer.kind != pool_kind):
        expected = f"{pool_kind} {kind.__name__}" if pool_kind else kind.__name__
        raise ArchitectureError(f"expected a {expected} layer, found {layer!r:.120}")
    return layer


def _output_side(size: int, kernel: int, stride: int, padding: int) -> int:
    return 1 + (size + 2 * padding - kernel) // stride  # dlib's and ONNX's (floor) rule


class _GraphBuilder:
    """Accumulates nodes and initialisers under sequential names, so the same layers give the same bytes."""

    def __init__(self) -> None:
        self.nodes: list = []
        self.initializers: list = []

    def node(self, op: str, inputs: list[str], **attributes) -> str:
        from onnx import helper

        name = f"{op.lower()}_{len(self.nodes)}"
        self.nodes.append(helper.make_node(op, inputs, [name], name=name, **attributes))
        return name

    def constant(self, name: str, value: np.ndarray) -> str:
        from onnx import numpy_helper

        name = f"{name}_{len(self.initializers)}"
        self.initializers.append(numpy_helper.from_array(np.ascontiguousarray(value), name))
        return name

    def conv_affine(self, x: str, shape: tuple[int, int, int], conv: Conv, affine: Affine) -> tuple[str, tuple]:
        """A convolution with the affine layer after it folded into its weights and bias (in float64)."""
        out_channels, in_channels, kh, kw = conv.weights.shape
        if in_channels != shape[0]:
            raise ArchitectureError(f"conv expects {in_channels} input channels, the features have {shape[0]}")
        if conv.relu:
            raise ArchitectureError("a conv with a fused relu before an affine layer is not dlib's face ResNet")
        weights = conv.weights.astype(np.float64)
        bias = np.zeros(out_channels) if conv.bias is None else conv.bias.astype(np.float64)
        if not affine.disabled:
            if not affine.per_channel or affine.gamma.shape != (out_channels,):
                raise ArchitectureError(f"expected a per-channel affine layer of {out_channels} after the conv")
            weights = weights * affine.gamma.astype(np.float64)[:, None, None, None]
            bias = bias * affine.gamma + affine.beta.astype(np.float64)
        (sy, sx), (py, px) = conv.stride, conv.padding
        y = self.node(
            "Conv",
            [x, self.constant("conv_w", weights.astype(np.float32)), self.constant("conv_b", bias.astype(np.float32))],
            kernel_shape=[kh, kw],
            strides=[sy, sx],
            pads=[py, px, py, px],
        )
        return y, (out_channels, _output_side(shape[1], kh, sy, py), _output_side(shape[2], kw, sx, px))

    def relu(self, x: str, relu: Relu) -> str:
        return x if relu.disabled else self.node("Relu", [x])

    def pool(self, x: str, shape: tuple[int, int, int], pool: Pool) -> tuple[str, tuple]:
        (kh, kw), (sy, sx), (py, px) = pool.size, pool.stride, pool.padding
        op = "MaxPool" if pool.kind == "max" else "AveragePool"
        y = self.node(op, [x], kernel_shape=[kh, kw], strides=[sy, sx], pads=[py, px, py, px])
        return y, (shape[0], _output_side(shape[1], kh, sy, py), _output_side(shape[2], kw, sx, px))

    def add_zero_padded(self, a: str, a_shape: tuple, b: str, b_shape: tuple) -> tuple[str, tuple]:
        """dlib's add_prev: the output takes the larger size on each axis; missing entries count as zero."""
        shape = tuple(max(p, q) for p, q in zip(a_shape, b_shape, strict=True))
        padded = []
        for x, x_shape in ((a, a_shape), (b, b_shape)):
            if x_shape != shape:
                ends = [0] + [target - have for target, have in zip(shape, x_shape, strict=True)]
                x = self.node("Pad", [x, self.constant("pads", np.array([0, 0, 0, 0, *ends], dtype=np.int64))])
            padded.append(x)
        return self.node("Add", padded), shape

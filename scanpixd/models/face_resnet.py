"""dlib's face recognition ResNet, read from dlib's own model file and run with numpy.

The ``dlib-bin`` wheels are built without BLAS, so ``face_recognition_model_v1`` runs its
network at ~5 GFLOP/s: 90-160 ms of CPU per face, more than detection costs on a photo
of a few people.  The network is small (~0.26 GMAC per 150x150 face chip); done as
im2col and one float32 matrix product per convolution over numpy's BLAS, the same
arithmetic takes a fraction of that and gives dlib's descriptors to float32 rounding.

The weights come from ``dlib_face_recognition_resnet_model_v1.dat`` in dlib's
serialization (packed integers, floats as mantissa and exponent, tensors as raw
little-endian float32, layers named by version strings such as ``"con_4"``).  The file
must hold exactly the network of dlib's ``dnn_face_recognition_ex.cpp`` (``anet_type``),
down to the last byte; anything else raises :class:`ModelFormatError` so that the caller
keeps dlib's own encoder.

What dlib does, and this module repeats: the input is ``(rgb - mean) / 256``; padding is
``size // 2`` for stride 1 and 0 otherwise, output side ``1 + (side + 2 * pad - size) //
stride``; a downsampling block adds a 2x2 average pool of its input to its stride-2
branch, and where their shapes differ (8 px: pool 4, branch 3; 32 channels against 64)
the sum has the larger of each dimension and the smaller operand counts as zero beyond
its edge.  Affine layers (batch norm, frozen) are folded into the convolution before them.

The loaded network holds only read-only arrays, so any number of threads may use it at once.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

#: Side of the face chips the network takes, and the padding dlib's chips have around a face.
CHIP_SIZE = 150
CHIP_PADDING = 0.25

#: Faces run through the network together: 4 ran fastest here (1: +20 %, 8: +15 %), in
#: ~4 MB of working memory a face.
BATCH = 4

# (width, downsampling) of every residual block, input to output: dlib's alevel4..alevel0.
_BLOCKS: tuple[tuple[int, bool], ...] = (
    ((32, False),) * 3
    + ((64, True),) + ((64, False),) * 3
    + ((128, True),) + ((128, False),) * 2
    + ((256, True),) + ((256, False),) * 2
    + ((256, True),)
)
_STEM_FILTERS, _STEM_SIZE = 32, 7
_OUTPUTS = 128


class ModelFormatError(ValueError):
    """The model file is not the network this module knows how to run."""


@dataclass(frozen=True)
class _Layer:
    """One layer as serialized: its version string, every integer field, its parameters."""

    name: str
    config: tuple[int, ...]
    params: np.ndarray | None = None


# -- reading dlib's serialization -----------------------------------------------------------
class _Reader:
    """dlib's ``serialize``/``deserialize`` primitives over the bytes of a file."""

    def __init__(self, data: bytes):
        self.data = memoryview(data)  # slices are views: the weights are not copied twice
        self.pos = 0

    def _take(self, count: int) -> memoryview:
        end = self.pos + count
        if count < 0 or end > len(self.data):
            raise ModelFormatError(f"the file ends early (at byte {self.pos})")
        chunk = self.data[self.pos:end]
        self.pos = end
        return chunk

    def number(self) -> int:
        """A packed integer: a byte holding the sign (0x80) and length, then the bytes."""
        head = self._take(1)[0]
        if head & 0x70 or (head & 0x0F) > 8:
            raise ModelFormatError(f"not an integer at byte {self.pos - 1}")
        value = int.from_bytes(self._take(head & 0x0F), "little")
        return -value if head & 0x80 else value

    def real(self) -> float:
        """A float: integer mantissa and exponent."""
        mantissa, exponent = self.number(), self.number()
        try:
            return math.ldexp(mantissa, exponent)
        except OverflowError as exc:
            raise ModelFormatError(f"a float out of range at byte {self.pos}") from exc

    def text(self) -> str:
        raw = self._take(self.number())
        try:
            return bytes(raw).decode("ascii")
        except UnicodeDecodeError as exc:
            raise ModelFormatError(f"not a name at byte {self.pos - len(raw)}") from exc

    def flag(self) -> bool:
        char = self._take(1)
        if char not in (b"0", b"1"):
            raise ModelFormatError(f"not a boolean at byte {self.pos - 1}")
        return char == b"1"

    def tensor(self) -> np.ndarray:
        """A tensor (version 2): four dimensions, then raw little-endian float32 values."""
        self.expect(self.number(), 2, "tensor version")
        dims = tuple(self.number() for _ in range(4))
        if min(dims) < 0:
            raise ModelFormatError(f"a negative tensor dimension before byte {self.pos}")
        count = math.prod(dims)
        raw = self._take(4 * count)
        return np.frombuffer(raw, dtype="<f4", count=count).reshape(dims)

    def alias(self) -> tuple[int, ...]:
        """An alias tensor (a view into a layer's parameters): its four dimensions."""
        self.expect(self.number(), 1, "alias tensor version")
        return tuple(self.number() for _ in range(4))

    def expect(self, found: object, wanted: object, what: str) -> None:
        if found != wanted:
            raise ModelFormatError(f"{what}: found {found!r}, expected {wanted!r}")

    @property
    def at_end(self) -> bool:
        return self.pos == len(self.data)


def _read_layer(reader: _Reader) -> _Layer:
    """A layer's own fields (dlib's ``serialize`` of the layer class)."""
    name = reader.text()
    if name == "con_4":
        params = reader.tensor()
        config = tuple(reader.number() for _ in range(7)) + reader.alias() + reader.alias()
        for _ in range(4):  # learning rate and weight decay multipliers
            reader.real()
        return _Layer(name, config + params.shape, params)
    if name == "affine_":
        params = reader.tensor()
        config = reader.alias() + reader.alias() + (reader.number(),)
        return _Layer(name, config + params.shape, params)
    if name in ("max_pool_2", "avg_pool_2"):
        return _Layer(name, tuple(reader.number() for _ in range(6)))
    if name in ("relu_", "add_prev_"):
        return _Layer(name, ())
    if name == "fc_2":
        outputs, inputs = reader.number(), reader.number()
        params = reader.tensor()
        config = (outputs, inputs) + reader.alias() + reader.alias() + (reader.number(),)
        for _ in range(4):
            reader.real()
        return _Layer(name, config + params.shape, params)
    raise ModelFormatError(f"unexpected layer {name!r} at byte {reader.pos}")


def _skip_layer_state(reader: _Reader) -> None:
    """What dlib's ``add_layer`` keeps beside a layer: three flags and three work tensors."""
    for _ in range(3):
        reader.flag()
    for _ in range(3):
        reader.tensor()


# -- the expected network ---------------------------------------------------------------------
def _con(filters: int, channels: int, size: int, stride: int) -> tuple[str, tuple[int, ...]]:
    pad = size // 2 if stride == 1 else 0
    weights = filters * channels * size * size
    return "con_4", (filters, size, size, stride, stride, pad, pad,
                     filters, channels, size, size, 1, filters, 1, 1, weights + filters, 1, 1, 1)


def _affine(channels: int) -> tuple[str, tuple[int, ...]]:
    return "affine_", (1, channels, 1, 1, 1, channels, 1, 1, 0, 2 * channels, 1, 1, 1)


def _pool(kind: str, size: int, stride: int) -> tuple[str, tuple[int, ...]]:
    return f"{kind}_pool_2", (size, size, stride, stride, 0, 0)


_RELU: tuple[str, tuple[int, ...]] = ("relu_", ())
_ADD: tuple[str, tuple[int, ...]] = ("add_prev_", ())


def expected_layers() -> list[tuple[str, tuple[int, ...]]]:
    """Every layer of dlib's ``anet_type``, input to output, as (name, integer fields)."""
    layers = [_con(_STEM_FILTERS, 3, _STEM_SIZE, 2), _affine(_STEM_FILTERS), _RELU,
              _pool("max", 3, 2)]
    channels = _STEM_FILTERS
    for width, down in _BLOCKS:
        layers += [_con(width, channels, 3, 2 if down else 1), _affine(width), _RELU,
                   _con(width, width, 3, 1), _affine(width)]
        layers += [_pool("avg", 2, 2), _ADD, _RELU] if down else [_ADD, _RELU]
        channels = width
    fc = (_OUTPUTS, channels, channels, _OUTPUTS, 1, 1, 0, 0, 0, 0, 1, channels, _OUTPUTS, 1, 1)
    return layers + [_pool("avg", 0, 1), ("fc_2", fc)]


def _expected_versions() -> list[int]:
    """The versions dlib writes first, output to input: 2 per layer, 1 per tag or skip."""
    versions = [2, 2]  # fc, avg_pool_everything
    for _, down in reversed(_BLOCKS):
        # relu, add_prev, [avg_pool, skip1, tag2], affine, con, relu, affine, con, tag1
        versions += [2, 2] + ([2, 1, 1] if down else []) + [2] * 5 + [1]
    return versions + [2, 2, 2]  # the stem's max_pool, relu and affine; its con comes next


# -- the network ------------------------------------------------------------------------------
@dataclass(frozen=True, repr=False)  # arrays of weights: not for messages
class _Conv:
    """A convolution with the affine layer after it folded in, as one matrix product."""

    weights: np.ndarray  # (size * size * channels, filters), rows in (dy, dx, channel) order
    bias: np.ndarray
    size: int
    stride: int
    pad: int

    @classmethod
    def folded(cls, con: _Layer, affine: _Layer) -> _Conv:
        filters, size, _, stride, _, pad, _, _, channels = con.config[:9]
        assert con.params is not None and affine.params is not None
        flat = con.params.reshape(-1)
        count = filters * channels * size * size
        gamma, beta = affine.params.reshape(-1)[:filters], affine.params.reshape(-1)[filters:]
        kernel = flat[:count].reshape(filters, channels, size, size) * gamma[:, None, None, None]
        weights = np.ascontiguousarray(kernel.transpose(2, 3, 1, 0).reshape(-1, filters),
                                       dtype=np.float32)
        bias = (flat[count:] * gamma + beta).astype(np.float32)
        return cls(weights, bias, size, stride, pad)

    def __call__(self, x: np.ndarray) -> np.ndarray:
        """``x`` (faces, rows, columns, channels) convolved; the same layout out."""
        n, h, w, c = x.shape
        size, stride, pad = self.size, self.stride, self.pad
        if pad:
            padded = np.zeros((n, h + 2 * pad, w + 2 * pad, c), dtype=np.float32)
            padded[:, pad:pad + h, pad:pad + w] = x
            x = padded
        else:
            x = np.ascontiguousarray(x)  # the runs below need rows laid out contiguously
        rows, cols = 1 + (h + 2 * pad - size) // stride, 1 + (w + 2 * pad - size) // stride
        patches = np.empty((n, rows, cols, size, size * c), dtype=np.float32)
        # In (faces, rows, columns, channels) order, a filter row's input (size columns of
        # every channel) is one contiguous run: copy whole runs, one filter row at a time.
        sn, sh, sw, sc = x.strides
        for dy in range(size):
            runs = np.lib.stride_tricks.as_strided(
                x[:, dy:], shape=(n, rows, cols, size * c),
                strides=(sn, stride * sh, stride * sw, sc), writeable=False)
            patches[:, :, :, dy] = runs
        out = patches.reshape(n * rows * cols, -1) @ self.weights
        out += self.bias
        return out.reshape(n, rows, cols, -1)


def _relu(x: np.ndarray) -> np.ndarray:
    return np.maximum(x, 0.0, out=x)


def _pooled(x: np.ndarray, size: int, stride: int, reduce: Any) -> np.ndarray:
    """``reduce`` (np.maximum or np.add) over size x size windows, without padding."""
    rows = 1 + (x.shape[1] - size) // stride
    cols = 1 + (x.shape[2] - size) // stride
    out: np.ndarray | None = None
    for dy in range(size):
        for dx in range(size):
            part = x[:, dy:dy + stride * (rows - 1) + 1:stride,
                     dx:dx + stride * (cols - 1) + 1:stride]
            out = part.copy() if out is None else reduce(out, part, out=out)
    assert out is not None
    return out


def _add_extended(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """dlib's ``add_prev`` of two shapes: the larger of each dimension, zeros beyond an edge."""
    if all(p >= q for p, q in zip(a.shape, b.shape, strict=True)):
        a[tuple(slice(0, d) for d in b.shape)] += b
        return a
    shape = tuple(max(p, q) for p, q in zip(a.shape, b.shape, strict=True))
    out = np.zeros(shape, dtype=np.float32)
    for part in (a, b):
        out[tuple(slice(0, d) for d in part.shape)] += part
    return out


@dataclass(frozen=True, repr=False)
class _Block:
    first: _Conv
    second: _Conv
    down: bool

    def __call__(self, x: np.ndarray) -> np.ndarray:
        branch = self.second(_relu(self.first(x)))
        if self.down:
            shortcut = _pooled(x, 2, 2, np.add)
            shortcut *= 0.25
        else:
            shortcut = x
        return _relu(_add_extended(branch, shortcut))


@dataclass(frozen=True, repr=False)
class FaceResNet:
    """dlib's face recognition network: 150x150 RGB face chips in, 128-d descriptors out."""

    means: np.ndarray  # per channel, R G B
    stem: _Conv
    blocks: tuple[_Block, ...]
    fc: np.ndarray  # (256, 128)

    def descriptors(self, chips: np.ndarray) -> np.ndarray:
        """Descriptors (faces, 128) float32 of ``chips`` (faces, 150, 150, 3) uint8 RGB."""
        if chips.ndim != 4 or chips.shape[1:] != (CHIP_SIZE, CHIP_SIZE, 3):
            raise ValueError(f"face chips must be (n, {CHIP_SIZE}, {CHIP_SIZE}, 3), "
                             f"not {chips.shape}")
        parts = [self._run(chips[i:i + BATCH]) for i in range(0, len(chips), BATCH)]
        return np.concatenate(parts) if parts else np.zeros((0, _OUTPUTS), np.float32)

    def _run(self, chips: np.ndarray) -> np.ndarray:
        x = chips.astype(np.float32)
        x -= self.means
        x *= np.float32(1 / 256)
        x = _pooled(_relu(self.stem(x)), 3, 2, np.maximum)
        for block in self.blocks:
            x = block(x)
        features = x.mean(axis=(1, 2), dtype=np.float32)
        return features @ self.fc


def load(path: Path) -> FaceResNet:
    """The network in dlib's ``.dat`` file at ``path``; ModelFormatError if it is not that."""
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise ModelFormatError(f"cannot read {path}: {exc}") from exc
    return parse(data)


def parse(data: bytes) -> FaceResNet:
    """The network serialized in ``data``; ModelFormatError unless it is exactly ``anet_type``."""
    reader = _Reader(data)
    reader.expect(reader.number(), 1, "loss layer version")
    reader.expect(reader.text(), "loss_metric_2", "loss layer")
    reader.real(), reader.real()  # margin and distance threshold: training only
    versions = _expected_versions()
    reader.expect([reader.number() for _ in versions], versions, "layer versions")
    reader.expect(reader.number(), 3, "input layer version")
    reader.expect(reader.text(), "input_rgb_image_sized", "input layer")
    means = np.array([reader.real() for _ in range(3)], dtype=np.float32)
    reader.expect((reader.number(), reader.number()), (CHIP_SIZE, CHIP_SIZE), "input size")
    layers = []
    for index, (name, config) in enumerate(expected_layers()):
        layer = _read_layer(reader)
        reader.expect((layer.name, layer.config), (name, config), f"layer {index}")
        _skip_layer_state(reader)
        if index == 0:
            reader.expect(reader.number(), 1, "sample expansion factor")
        layers.append(layer)
    if not reader.at_end:
        raise ModelFormatError(f"{len(data) - reader.pos} unexpected bytes after the network")
    return _assemble(means, layers)


def _assemble(means: np.ndarray, layers: Sequence[_Layer]) -> FaceResNet:
    """The runnable network from layers already checked against :func:`expected_layers`."""
    stem = _Conv.folded(layers[0], layers[1])
    at, blocks = 4, []
    for _, down in _BLOCKS:
        first = _Conv.folded(layers[at], layers[at + 1])
        second = _Conv.folded(layers[at + 3], layers[at + 4])
        blocks.append(_Block(first, second, down))
        at += 8 if down else 7
    fc = layers[-1].params
    assert fc is not None
    weights = fc.reshape(fc.shape[0], fc.shape[1]).astype(np.float32)  # a copy, not a view
    return FaceResNet(means, stem, tuple(blocks), weights)


class ChipEncoder:
    """The ``compute_face_descriptor`` of dlib's encoder, with the network run in numpy.

    ``chips`` is dlib's ``get_face_chips``, so the face chips are exactly dlib's own.
    Safe to call from several threads at once.
    """

    thread_safe = True

    def __init__(self, net: FaceResNet, chips: Callable[..., list[np.ndarray]]):
        self.net = net
        self._chips = chips

    def compute_face_descriptor(self, pixels: np.ndarray, shapes: Any,
                                num_jitters: int = 1) -> list[np.ndarray]:
        """One descriptor per face shape in ``shapes`` (dlib's landmarks on ``pixels``)."""
        if num_jitters != 1:
            raise ValueError("only num_jitters=1 is supported")
        if len(shapes) == 0:
            return []
        chips = np.stack(self._chips(pixels, shapes, size=CHIP_SIZE, padding=CHIP_PADDING))
        return list(self.net.descriptors(chips))

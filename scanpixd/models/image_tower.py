"""CLIP's image tower (a plain ViT) in numpy, so a daemon indexes photos without torch.

Importing torch costs about 500 MB of memory (its CUDA build's libraries and their heap)
and seconds of CPU; the tower itself is a dozen matrix products per block, which OpenBLAS
runs at the rate torch's own sgemm does.  What the tower adds over the text one:

- the patch embedding, a convolution whose stride is its kernel (the patch size), is a
  reshape of the pixels into one row per patch and one matrix product;
- attention is over every position (no causal mask), and the tower pools at the class
  token, so the last block computes its queries, attention output and MLP for the class
  rows alone (it reads every row as keys and values): one block in twelve nearly free;
- the exact GELU's twenty element-wise passes run over steps of 64 K values in place, which
  stay in cache (over a whole batch's hidden layer at once they cost 2.5 times as much).

Weights are used where they lie in the memory map of the checkpoint: ``x @ w.T`` reads
torch's (out, in) layout directly, and at a batch's hundreds of rows OpenBLAS runs it as
fast as from transposed copies (measured: the whole tower within noise of it, 0.97 to 1.05),
so they are file pages the kernel can share and drop rather than 350 MB of heap.

Only a model that has been checked runs here: the first time its image tower loads
(through torch), :func:`parity_config` compares this tower with open_clip's on probe images
and :class:`ImageNote` records the result in the machine-local cache; later loads find the
note and read the weights straight from the checkpoint.  Towers of other shapes (attentional
pooling, layer scale, average pooling, patch dropout, custom blocks) never get a note and
stay on torch.
"""

from __future__ import annotations

import logging
import math
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from scanpixd.models import tower_notes
from scanpixd.models.checkpoint import read_arrays
from scanpixd.models.text_tower import _layer_norm, _linear, block_shapes

log = logging.getLogger(__name__)

NOTE_VERSION = 1
_NOTES = "clip-image"  # the notes' folder under cache_dir/models
_PROBES = 4  # synthetic probe images compared at the check
_TOLERANCE = 1e-4  # largest difference allowed between the towers' unit vectors


@dataclass(frozen=True)
class ImageConfig:
    """The shape of a plain open_clip ViT image tower (what :class:`ImageTower` runs)."""

    layers: int
    heads: int
    width: int
    patch: int
    grid: tuple[int, int]  # patches down and across
    quick_gelu: bool
    eps: float


@dataclass(frozen=True)
class PreprocessConfig:
    """What :class:`scanpixd.models.clip.Preprocess` needs, kept so it is built without
    open_clip: the input size, resize mode, resampling and normalisation."""

    height: int
    width: int
    mode: str
    interpolation: str
    mean: tuple[float, float, float]
    std: tuple[float, float, float]


class ImageTower:
    """``tower(pixels)``: one L2-normalised float32 row per preprocessed (3, H, W) image."""

    def __init__(self, config: ImageConfig, weights: dict[str, np.ndarray]):
        self.config = config
        conv = weights["conv1.weight"]  # (width, 3, patch, patch)
        self.patch_weight = conv.reshape(conv.shape[0], -1).T  # (3 * patch², width), a view
        self.class_embedding = weights["class_embedding"]
        self.positions = weights["positional_embedding"]
        self.pre_norm = (weights["ln_pre.weight"], weights["ln_pre.bias"])
        self.post_norm = (weights["ln_post.weight"], weights["ln_post.bias"])
        self.projection = weights["proj"]
        self.blocks = [_Block(weights, f"transformer.resblocks.{i}.", config)
                       for i in range(config.layers)]

    @classmethod
    def from_checkpoint(cls, config: ImageConfig, checkpoint: Path) -> ImageTower:
        """The tower over a map of the checkpoint; raises ``ValueError`` on missing or
        misshapen tensors, :class:`CheckpointFormatError` on a file it cannot read."""
        arrays = read_arrays(checkpoint)
        prefix = "visual."
        weights = {k[len(prefix):]: v if v.dtype == np.float32 else v.astype(np.float32)
                   for k, v in arrays.items() if k.startswith(prefix)}
        _check_shapes(config, weights)
        return cls(config, weights)

    @property
    def dim(self) -> int:
        return int(self.projection.shape[1])

    def __call__(self, pixels: np.ndarray) -> np.ndarray:
        c = self.config
        batch, (down, across), patch = pixels.shape[0], c.grid, c.patch
        if pixels.shape[1:] != (3, down * patch, across * patch):
            raise ValueError(f"expected (batch, 3, {down * patch}, {across * patch}) pixels, "
                             f"got {pixels.shape}")
        # the strided convolution: each patch's (channel, row, column) values as one row
        patches = np.ascontiguousarray(pixels, dtype=np.float32).reshape(
            batch, 3, down, patch, across, patch).transpose(0, 2, 4, 1, 3, 5)
        patches = patches.reshape(batch * down * across, 3 * patch * patch)
        n = down * across + 1
        x = np.empty((batch, n, c.width), dtype=np.float32)
        x[:, 0] = self.class_embedding
        x[:, 1:] = (patches @ self.patch_weight).reshape(batch, n - 1, c.width)
        x += self.positions
        x = _layer_norm(x.reshape(batch * n, c.width), *self.pre_norm, c.eps)
        for block in self.blocks[:-1]:
            x = block(x, batch)
        x = self.blocks[-1](x, batch, pooled=True)  # the class rows only
        x = _layer_norm(x, *self.post_norm, c.eps) @ self.projection
        norms = np.linalg.norm(x, axis=1, keepdims=True)
        return np.ascontiguousarray(x / np.maximum(norms, 1e-12), dtype=np.float32)


class _Block:
    """One pre-norm residual attention block over whole images (no mask), as open_clip's
    ResidualAttentionBlock; weights are transposed views of the checkpoint's."""

    def __init__(self, weights: dict[str, np.ndarray], prefix: str, config: ImageConfig):
        def get(name: str) -> np.ndarray:
            return weights[prefix + name]

        self.heads, self.eps, self.quick_gelu = config.heads, config.eps, config.quick_gelu
        self.norm1 = (get("ln_1.weight"), get("ln_1.bias"))
        self.norm2 = (get("ln_2.weight"), get("ln_2.bias"))
        qkv, qkv_bias, width = get("attn.in_proj_weight"), get("attn.in_proj_bias"), config.width
        self.qkv = (qkv.T, qkv_bias)
        self.query = (qkv[:width].T, qkv_bias[:width])  # for the pooled rows
        self.keys_values = (qkv[width:].T, qkv_bias[width:])
        self.out = (get("attn.out_proj.weight").T, get("attn.out_proj.bias"))
        self.fc = (get("mlp.c_fc.weight").T, get("mlp.c_fc.bias"))
        self.proj = (get("mlp.c_proj.weight").T, get("mlp.c_proj.bias"))

    def __call__(self, x: np.ndarray, batch: int, pooled: bool = False) -> np.ndarray:
        """``x``: (batch * n, width), each image's positions in turn (class token first);
        ``pooled``: return only the class rows, (batch, width)."""
        normed = _layer_norm(x, *self.norm1, self.eps)
        if pooled:
            x = x[:: x.shape[0] // batch] + self._pooled_attention(normed, batch)
        else:
            x = x + self._attention(normed, batch)
        hidden = _linear(_layer_norm(x, *self.norm2, self.eps), self.fc)
        _quick_gelu_in_place(hidden) if self.quick_gelu else _gelu_in_place(hidden)
        x += _linear(hidden, self.proj)
        return x

    def _attention(self, x: np.ndarray, batch: int) -> np.ndarray:
        n, width = x.shape[0] // batch, x.shape[1]
        head = width // self.heads
        qkv = _linear(x, self.qkv).reshape(batch, n, 3, self.heads, head)
        queries = qkv[:, :, 0].transpose(0, 2, 1, 3)  # (batch, heads, n, head)
        keys = qkv[:, :, 1].transpose(0, 2, 3, 1)  # (batch, heads, head, n)
        values = qkv[:, :, 2].transpose(0, 2, 1, 3)  # (batch, heads, n, head)
        context = _softmax((queries * np.float32(1.0 / math.sqrt(head))) @ keys) @ values
        return _linear(context.transpose(0, 2, 1, 3).reshape(batch * n, width), self.out)

    def _pooled_attention(self, x: np.ndarray, batch: int) -> np.ndarray:
        """The attention output at each image's class row, over all its rows."""
        n, width = x.shape[0] // batch, x.shape[1]
        head = width // self.heads
        kv = _linear(x, self.keys_values).reshape(batch, n, 2, self.heads, head)
        keys = kv[:, :, 0].transpose(0, 2, 3, 1)  # (batch, heads, head, n)
        values = kv[:, :, 1].transpose(0, 2, 1, 3)  # (batch, heads, n, head)
        queries = _linear(x[::n], self.query).reshape(batch, self.heads, 1, head)
        context = _softmax((queries * np.float32(1.0 / math.sqrt(head))) @ keys) @ values
        return _linear(context.reshape(batch, width), self.out)


# Elements per step of the element-wise activations: a dozen passes over a step stay in
# cache (over a whole batch's hidden layer at once they cost 2.5 times as much, measured)
_STEP = 1 << 16
# Abramowitz and Stegun 7.1.26 (erf to within 1.5e-7), its coefficients halved for GELU
_ERF_P = 0.3275911
_ERF_A = tuple(np.float32(0.5 * a) for a in (1.061405429, -1.453152027, 1.421413741,
                                               -0.284496736, 0.254829592))


def _gelu_in_place(x: np.ndarray) -> None:
    """Exact GELU over ``x`` (contiguous), written in place, as
    relu(x) - |x| (1 - erf(|x| / sqrt 2)) / 2, the same function with no sign to restore:
    about 20 passes (the text tower's form takes 25 and a buffer per step)."""
    flat = x.reshape(-1)
    step = min(_STEP, flat.size)
    z, t, p = (np.empty(step, dtype=np.float32) for _ in range(3))
    scale, half = np.float32(_ERF_P / math.sqrt(2.0)), np.float32(-0.5)
    for start in range(0, flat.size, step):
        v = flat[start:start + step]
        zz, tt, pp = z[:v.size], t[:v.size], p[:v.size]
        np.abs(v, out=zz)
        np.multiply(zz, scale, out=tt)
        tt += np.float32(1.0)
        np.reciprocal(tt, out=tt)
        np.multiply(tt, _ERF_A[0], out=pp)
        for coefficient in _ERF_A[1:]:
            pp += coefficient
            pp *= tt
        np.multiply(v, v, out=tt)  # exp(-x^2 / 2), the erf's exp(-z^2) at z = |x| / sqrt 2
        tt *= half
        pp *= np.exp(tt, out=tt)
        pp *= zz
        np.maximum(v, np.float32(0.0), out=v)
        v -= pp


def _quick_gelu_in_place(x: np.ndarray) -> None:
    """x * sigmoid(1.702 x) over ``x`` (contiguous), in place, a step at a time."""
    flat = x.reshape(-1)
    step = min(_STEP, flat.size)
    t = np.empty(step, dtype=np.float32)
    for start in range(0, flat.size, step):
        v = flat[start:start + step]
        tt = t[:v.size]
        np.multiply(v, np.float32(-1.702), out=tt)
        np.exp(tt, out=tt)
        tt += np.float32(1.0)
        v /= tt


def _softmax(scores: np.ndarray) -> np.ndarray:
    scores -= scores.max(axis=-1, keepdims=True)
    np.exp(scores, out=scores)
    scores /= scores.sum(axis=-1, keepdims=True)
    return scores


def _check_shapes(config: ImageConfig, arrays: dict[str, np.ndarray]) -> None:
    width, patch = config.width, config.patch
    n = config.grid[0] * config.grid[1] + 1
    expected: dict[str, tuple[int, ...]] = {
        "conv1.weight": (width, 3, patch, patch), "class_embedding": (width,),
        "positional_embedding": (n, width),
        "ln_pre.weight": (width,), "ln_pre.bias": (width,),
        "ln_post.weight": (width,), "ln_post.bias": (width,),
    }
    expected.update(block_shapes(arrays, config.layers, width))
    for key, shape in expected.items():
        if key not in arrays or tuple(arrays[key].shape) != shape:
            raise ValueError(f"image tower tensor visual.{key}: expected shape {shape}")
    projection = arrays.get("proj")
    if projection is None or projection.ndim != 2 or projection.shape[0] != width:
        raise ValueError("image tower tensor visual.proj: wrong shape")
    if width % config.heads or config.layers < 1:
        raise ValueError("image tower width is not a multiple of its heads")


# -- checking a model against open_clip, once -------------------------------------------------
def plain_config(visual: Any) -> ImageConfig | None:
    """The :class:`ImageConfig` of an open_clip image tower this module reproduces exactly,
    or ``None`` for any other (the structure is checked, not assumed)."""
    import torch
    from open_clip.model import QuickGELU
    from open_clip.transformer import LayerNorm, ResidualAttentionBlock, VisionTransformer

    if type(visual) is not VisionTransformer or visual.attn_pool is not None \
            or visual.pool_type != "tok" or visual.output_tokens:
        return None
    if not (isinstance(visual.patch_dropout, torch.nn.Identity) and type(visual.ln_pre) is LayerNorm
            and type(visual.ln_post) is LayerNorm and isinstance(visual.proj, torch.nn.Parameter)):
        return None
    conv = visual.conv1
    patch = tuple(conv.kernel_size)
    if not (conv.bias is None and tuple(conv.stride) == patch and patch[0] == patch[1]
            and tuple(conv.padding) == (0, 0) and tuple(conv.dilation) == (1, 1)
            and conv.groups == 1 and conv.in_channels == 3 and conv.padding_mode == "zeros"):
        return None
    blocks = list(visual.transformer.resblocks)
    acts = {type(block.mlp.gelu) for block in blocks}
    plain = bool(blocks) and all(
        type(block) is ResidualAttentionBlock and not hasattr(block, "ln_1_kv")
        and isinstance(block.ls_1, torch.nn.Identity) and isinstance(block.ls_2, torch.nn.Identity)
        and type(block.ln_1) is LayerNorm and type(block.ln_2) is LayerNorm
        and list(dict(block.mlp.named_children())) == ["c_fc", "gelu", "c_proj"]
        and type(block.attn) is torch.nn.MultiheadAttention and block.attn.batch_first
        and block.attn.in_proj_bias is not None and block.attn.bias_k is None
        and block.attn._qkv_same_embed_dim and block.attn.out_proj.bias is not None
        for block in blocks)
    gelu_ok = acts == {QuickGELU} or (acts == {torch.nn.GELU} and all(
        block.mlp.gelu.approximate == "none" for block in blocks))
    norms = [visual.ln_pre, visual.ln_post] + [n for b in blocks for n in (b.ln_1, b.ln_2)]
    eps = {float(n.eps) for n in norms}
    if not (plain and gelu_ok and len(eps) == 1 and all(n.elementwise_affine for n in norms)):
        return None
    grid = tuple(int(g) for g in visual.grid_size)
    return ImageConfig(layers=len(blocks), heads=int(blocks[0].attn.num_heads),
                       width=int(visual.transformer.width), patch=int(patch[0]),
                       grid=(grid[0], grid[1]), quick_gelu=acts == {QuickGELU}, eps=eps.pop())


def probe_pixels(preprocess: Any, count: int = _PROBES) -> np.ndarray:
    """Deterministic synthetic pictures (gradients, noise, flat colour; landscape, portrait
    and square) through ``preprocess``: the check's inputs, the same on every machine."""
    from PIL import Image

    rng = np.random.default_rng(20261121)
    images = []
    for i in range(count):
        h, w = ((300, 400), (420, 280), (256, 256), (97, 613))[i % 4]
        ys, xs = np.mgrid[0:h, 0:w]
        base = np.stack([xs * 255 // max(w - 1, 1), ys * 255 // max(h - 1, 1),
                         (xs + ys) * 127 // max(h + w - 2, 1)], axis=-1)
        noise = rng.integers(0, 96 * (i % 3), (h, w, 3)) if i % 3 else 0
        pixels = np.clip(base + noise, 0, 255).astype(np.uint8)
        images.append(preprocess(Image.fromarray(pixels, "RGB")))
    return np.stack(images)


def parity_config(visual: Any, preprocess: Any, checkpoint: Path) -> ImageConfig | None:
    """The config under which :class:`ImageTower` over ``checkpoint`` gives open_clip's own
    vectors for every probe image, or ``None`` (with the reason logged)."""
    import torch
    import torch.nn.functional as F  # noqa: N812 - torch's own convention

    config = plain_config(visual)
    if config is None:
        log.debug("CLIP image tower: not a plain open_clip ViT; images use torch")
        return None
    try:
        tower = ImageTower.from_checkpoint(config, checkpoint)
        pixels = probe_pixels(preprocess)
        ours = tower(pixels)
    except (OSError, ValueError) as exc:
        log.info("CLIP image tower stays on torch: %s", exc)
        return None
    with torch.inference_mode():
        expected = F.normalize(visual(torch.from_numpy(pixels)), dim=-1).float().numpy()
    difference = float(np.abs(ours - expected).max())
    if difference > _TOLERANCE:
        log.info("CLIP image tower stays on torch: numpy differs by %.2g", difference)
        return None
    return config


# -- the note a checked model leaves ---------------------------------------------------------
@dataclass(frozen=True)
class ImageNote:
    """That ``model_id``'s image tower was checked against open_clip, with which checkpoint
    file (by identity: a changed file is checked again), under which config, and with which
    preprocessing (so that neither torch nor open_clip is needed to use it)."""

    model_id: str
    checkpoint: str
    identity: tuple[int, int, int, int]  # size, mtime_ns, ctime_ns, inode
    config: ImageConfig
    preprocess: PreprocessConfig

    @classmethod
    def for_file(cls, model_id: str, checkpoint: Path, config: ImageConfig,
                 preprocess: PreprocessConfig) -> ImageNote:
        return cls(model_id, str(checkpoint.resolve()), tower_notes.identity(checkpoint), config,
                   preprocess)

    @classmethod
    def read(cls, cache_dir: Path, model_id: str) -> ImageNote | None:
        """The note, if there is one for ``model_id`` and its checkpoint is unchanged."""
        data = tower_notes.read(cache_dir, _NOTES, model_id, NOTE_VERSION)
        if data is None:
            return None
        try:
            config = dict(data["config"])
            config["grid"] = tuple(int(g) for g in config["grid"])
            pre = dict(data["preprocess"])
            pre["mean"], pre["std"] = tuple(pre["mean"]), tuple(pre["std"])
            note = cls(model_id, str(data["checkpoint"]),
                       tuple(int(n) for n in data["identity"]),  # type: ignore[arg-type]
                       ImageConfig(**config), PreprocessConfig(**pre))
        except (ValueError, TypeError, KeyError, AttributeError):
            return None
        if len(note.config.grid) != 2 or len(note.preprocess.mean) != 3 \
                or len(note.preprocess.std) != 3:
            return None
        return note

    def write(self, cache_dir: Path) -> None:
        tower_notes.write(cache_dir, _NOTES, self.model_id, NOTE_VERSION, self.checkpoint,
                          self.identity, {"config": asdict(self.config),
                                          "preprocess": asdict(self.preprocess)})

    def tower(self) -> ImageTower:
        """The checked tower; raises ``OSError``/``ValueError`` if the checkpoint cannot be
        read after all."""
        return ImageTower.from_checkpoint(self.config, Path(self.checkpoint))


__all__ = ["ImageConfig", "ImageNote", "ImageTower", "PreprocessConfig", "parity_config",
           "plain_config", "probe_pixels"]

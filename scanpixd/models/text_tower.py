"""CLIP's text tower in numpy, so a daemon answers text queries without loading torch.

A query is a few words: the transformer runs over the positions up to the end-of-text
token only (the tower is causal and pools at that token, so the padding after it never
changes the result), which makes a query a few small matrix products.  Importing torch and
open_clip costs seconds of CPU at every start and hundreds of megabytes of memory, for a
tower this module runs in a few milliseconds.

This is only taken for a model that has been checked: the first time a model loads (through
torch), :func:`parity_config` compares this tower with open_clip's on probe texts and
:class:`TextNote` records the result in the machine-local cache.  Later loads find the note
and read the weights straight from the checkpoint (:mod:`scanpixd.models.checkpoint`).
Towers of other shapes (custom blocks, layer scale, other pooling or tokenizers) never get a
note and stay on torch.
"""

from __future__ import annotations

import hashlib
import logging
import math
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from scanpixd.models.bpe import VOCABULARY_SIZE, BpeTokenizer, vocabulary_file
from scanpixd.models.checkpoint import CheckpointFormatError, read_arrays
from scanpixd.store import atomic

log = logging.getLogger(__name__)

NOTE_VERSION = 1
_NOTES = Path("models") / "clip-text"  # under the cache directory
_PROBES = (
    "a photo of a dog", "Sunset over the sea, Brittany 2019!", "x",
    "Grand-mère's 80th birthday: café & crème brûlée 🎂",
    " ".join(["a very long description of a crowded street market at night"] * 12),
)
_TOLERANCE = 1e-4  # largest difference allowed between the towers' unit vectors


@dataclass(frozen=True)
class TextConfig:
    """The shape of a plain open_clip text tower (what :class:`TextTower` can run)."""

    layers: int
    heads: int
    width: int
    context_length: int
    quick_gelu: bool
    eps: float


class TextTower:
    """``tower(tokens)``: one L2-normalised float32 row per row of token ids."""

    def __init__(self, config: TextConfig, weights: dict[str, np.ndarray]):
        self.config = config
        self.token_embedding = weights["token_embedding.weight"]
        self.positions = weights["positional_embedding"]
        self.final_norm = (weights["ln_final.weight"], weights["ln_final.bias"])
        self.projection = weights["text_projection"]
        self.blocks = [_Block(weights, f"transformer.resblocks.{i}.", config)
                       for i in range(config.layers)]

    @classmethod
    def from_checkpoint(cls, config: TextConfig, checkpoint: Path) -> TextTower:
        """The tower over a map of the checkpoint; raises ``ValueError`` on missing or
        misshapen tensors, :class:`CheckpointFormatError` on a file it cannot read."""
        arrays = read_arrays(checkpoint)
        _check_shapes(config, arrays)
        return cls(config, {k: _float32(v) for k, v in arrays.items() if _is_text_key(k)})

    @property
    def dim(self) -> int:
        return int(self.projection.shape[1])

    def __call__(self, tokens: np.ndarray) -> np.ndarray:
        # up to the last end-of-text token (the largest id, where CLIP pools); not the count
        # of non-zero ids, since id 0 ("!") can occur inside a text
        length = int(tokens.argmax(axis=1).max()) + 1
        tokens = tokens[:, :length]
        x = self.token_embedding[tokens] + self.positions[:length]
        mask = np.triu(np.full((length, length), -np.inf, dtype=np.float32), 1)
        for block in self.blocks:
            x = block(x, mask)
        x = _layer_norm(x, *self.final_norm, self.config.eps)
        pooled = x[np.arange(x.shape[0]), tokens.argmax(axis=1)] @ self.projection
        norms = np.linalg.norm(pooled, axis=1, keepdims=True)
        return np.ascontiguousarray(pooled / np.maximum(norms, 1e-12), dtype=np.float32)


class _Block:
    """One pre-norm residual attention block, as open_clip's ResidualAttentionBlock."""

    def __init__(self, weights: dict[str, np.ndarray], prefix: str, config: TextConfig):
        def get(name: str) -> np.ndarray:
            return weights[prefix + name]

        self.heads, self.eps, self.quick_gelu = config.heads, config.eps, config.quick_gelu
        self.norm1 = (get("ln_1.weight"), get("ln_1.bias"))
        self.norm2 = (get("ln_2.weight"), get("ln_2.bias"))
        # torch's (out, in) weights, used transposed in place: BLAS reads them as they lie
        # in the checkpoint's map, so no copy of them is ever made
        self.qkv = (get("attn.in_proj_weight").T, get("attn.in_proj_bias"))
        self.out = (get("attn.out_proj.weight").T, get("attn.out_proj.bias"))
        self.fc = (get("mlp.c_fc.weight").T, get("mlp.c_fc.bias"))
        self.proj = (get("mlp.c_proj.weight").T, get("mlp.c_proj.bias"))

    def __call__(self, x: np.ndarray, mask: np.ndarray) -> np.ndarray:
        x = x + self._attention(_layer_norm(x, *self.norm1, self.eps), mask)
        hidden = _linear(_layer_norm(x, *self.norm2, self.eps), self.fc)
        hidden = _quick_gelu(hidden) if self.quick_gelu else _gelu(hidden)
        return x + _linear(hidden, self.proj)

    def _attention(self, x: np.ndarray, mask: np.ndarray) -> np.ndarray:
        batch, length, width = x.shape
        head = width // self.heads
        qkv = _linear(x, self.qkv).reshape(batch, length, 3, self.heads, head)
        q, k, v = (qkv[:, :, i].transpose(0, 2, 1, 3) for i in range(3))
        scores = (q * np.float32(1.0 / math.sqrt(head))) @ k.transpose(0, 1, 3, 2) + mask
        scores = np.exp(scores - scores.max(axis=-1, keepdims=True))
        scores /= scores.sum(axis=-1, keepdims=True)
        context = (scores @ v).transpose(0, 2, 1, 3).reshape(batch, length, width)
        return _linear(context, self.out)


def _linear(x: np.ndarray, weight_bias: tuple[np.ndarray, np.ndarray]) -> np.ndarray:
    weight, bias = weight_bias
    return x @ weight + bias


def _layer_norm(x: np.ndarray, weight: np.ndarray, bias: np.ndarray, eps: float) -> np.ndarray:
    mean = x.mean(axis=-1, keepdims=True)
    centred = x - mean
    variance = (centred * centred).mean(axis=-1, keepdims=True)
    return centred / np.sqrt(variance + np.float32(eps)) * weight + bias


def _gelu(x: np.ndarray) -> np.ndarray:
    """Exact GELU, 0.5 x (1 + erf(x / sqrt 2)), with erf to within 1.5e-7."""
    return np.float32(0.5) * x * (np.float32(1.0) + _erf(x * np.float32(1.0 / math.sqrt(2.0))))


def _erf(x: np.ndarray) -> np.ndarray:
    # Abramowitz and Stegun 7.1.26, odd in x; float32 throughout keeps it cheap and the
    # float32 rounding (about 1e-7) is below what a float32 tower resolves anyway
    z = np.abs(x)
    t = np.float32(1.0) / (np.float32(1.0) + np.float32(0.3275911) * z)
    poly = t * (np.float32(0.254829592) + t * (np.float32(-0.284496736) + t * (
        np.float32(1.421413741) + t * (np.float32(-1.453152027) + t * np.float32(1.061405429)))))
    return np.copysign(np.float32(1.0) - poly * np.exp(-z * z), x)


def _quick_gelu(x: np.ndarray) -> np.ndarray:
    return x / (np.float32(1.0) + np.exp(np.float32(-1.702) * x))


def _is_text_key(key: str) -> bool:
    return not key.startswith("visual.") and key not in ("logit_scale", "logit_bias")


def _float32(array: np.ndarray) -> np.ndarray:
    """Float32 weights stay views of the map; others are converted (a copy)."""
    return array if array.dtype == np.float32 else array.astype(np.float32)


def _check_shapes(config: TextConfig, arrays: dict[str, np.ndarray]) -> None:
    width, hidden = config.width, None
    expected: dict[str, tuple[int, ...]] = {
        "positional_embedding": (config.context_length, width),
        "ln_final.weight": (width,), "ln_final.bias": (width,),
    }
    for i in range(config.layers):
        p = f"transformer.resblocks.{i}."
        hidden = arrays.get(p + "mlp.c_fc.bias", np.zeros(0)).shape[0]
        expected.update({
            p + "ln_1.weight": (width,), p + "ln_1.bias": (width,),
            p + "ln_2.weight": (width,), p + "ln_2.bias": (width,),
            p + "attn.in_proj_weight": (3 * width, width), p + "attn.in_proj_bias": (3 * width,),
            p + "attn.out_proj.weight": (width, width), p + "attn.out_proj.bias": (width,),
            p + "mlp.c_fc.weight": (hidden, width), p + "mlp.c_fc.bias": (hidden,),
            p + "mlp.c_proj.weight": (width, hidden), p + "mlp.c_proj.bias": (width,),
        })
    for key, shape in expected.items():
        if key not in arrays or tuple(arrays[key].shape) != shape:
            raise ValueError(f"text tower tensor {key}: expected shape {shape}")
    embedding, projection = arrays.get("token_embedding.weight"), arrays.get("text_projection")
    if embedding is None or embedding.ndim != 2 or embedding.shape[1] != width \
            or embedding.shape[0] < VOCABULARY_SIZE:
        raise ValueError("text tower tensor token_embedding.weight: wrong shape")
    if projection is None or projection.ndim != 2 or projection.shape[0] != width:
        raise ValueError("text tower tensor text_projection: wrong shape")
    if config.width % config.heads:
        raise ValueError("text tower width is not a multiple of its heads")


# -- checking a model against open_clip, once -------------------------------------------------
def plain_config(model: Any, tokenizer: Any) -> TextConfig | None:
    """The :class:`TextConfig` of an open_clip model whose text side this module reproduces
    exactly, or ``None`` for any other (the structure is checked, not assumed)."""
    import torch
    from open_clip.model import CLIP, QuickGELU
    from open_clip.tokenizer import SimpleTokenizer, _clean_lower
    from open_clip.transformer import ResidualAttentionBlock

    if not isinstance(model, CLIP) or model.text_pool_type != "argmax" or model.attn_mask is None:
        return None
    if not isinstance(model.text_projection, torch.nn.Parameter) or \
            getattr(model.transformer, "batch_first", True) is not True:
        return None
    if not (isinstance(tokenizer, SimpleTokenizer) and tokenizer.clean_fn is _clean_lower
            and tokenizer.reduction_fn is None and len(tokenizer.encoder) == VOCABULARY_SIZE
            and tokenizer.context_length == model.context_length):
        return None
    blocks = list(model.transformer.resblocks)
    acts = {type(block.mlp.gelu) for block in blocks} if blocks else set()
    plain = all(
        type(block) is ResidualAttentionBlock and not hasattr(block, "ln_1_kv")
        and isinstance(block.ls_1, torch.nn.Identity) and isinstance(block.ls_2, torch.nn.Identity)
        and list(dict(block.mlp.named_children())) == ["c_fc", "gelu", "c_proj"]
        and block.attn.in_proj_bias is not None and block.attn.batch_first
        for block in blocks)
    gelu_ok = acts == {QuickGELU} or (acts == {torch.nn.GELU} and all(
        block.mlp.gelu.approximate == "none" for block in blocks))
    norms = [model.ln_final] + [n for b in blocks for n in (b.ln_1, b.ln_2)]
    eps = {float(n.eps) for n in norms}
    if not (plain and gelu_ok and len(eps) == 1 and blocks):
        return None
    return TextConfig(layers=len(blocks), heads=int(blocks[0].attn.num_heads),
                      width=int(model.transformer.width), context_length=int(model.context_length),
                      quick_gelu=acts == {QuickGELU}, eps=eps.pop())


def parity_config(model: Any, tokenizer: Any, checkpoint: Path) -> TextConfig | None:
    """The config under which :class:`TextTower` over ``checkpoint`` gives open_clip's own
    vectors for every probe text, or ``None`` (with the reason logged)."""
    import torch

    from scanpixd.models.clip import encode_text_trimmed

    config = plain_config(model, tokenizer)
    vocabulary = vocabulary_file()
    if config is None or vocabulary is None:
        log.debug("CLIP text tower: not a plain open_clip text tower; queries use torch")
        return None
    try:
        tower = TextTower.from_checkpoint(config, checkpoint)
    except (OSError, ValueError) as exc:
        log.info("CLIP text tower stays on torch: %s", exc)
        return None
    ours = BpeTokenizer(vocabulary, config.context_length)(_PROBES)
    theirs = tokenizer(list(_PROBES))
    if not np.array_equal(ours, theirs.numpy()):
        log.info("CLIP text tower stays on torch: the tokenizers disagree")
        return None
    with torch.inference_mode():
        expected = encode_text_trimmed(model, theirs).float().numpy()
    difference = float(np.abs(tower(ours) - expected).max())
    if difference > _TOLERANCE:
        log.info("CLIP text tower stays on torch: numpy differs by %.2g", difference)
        return None
    return config


# -- the note a checked model leaves ---------------------------------------------------------
@dataclass(frozen=True)
class TextNote:
    """That ``model_id``'s text tower was checked against open_clip, with which checkpoint
    file (by identity: a changed file is checked again) and under which config."""

    model_id: str
    checkpoint: str
    identity: tuple[int, int, int, int]  # size, mtime_ns, ctime_ns, inode
    config: TextConfig

    @classmethod
    def for_file(cls, model_id: str, checkpoint: Path, config: TextConfig) -> TextNote:
        return cls(model_id, str(checkpoint.resolve()), _identity(checkpoint), config)

    @staticmethod
    def path(cache_dir: Path, model_id: str) -> Path:
        digest = hashlib.blake2b(model_id.encode(), digest_size=10).hexdigest()
        return cache_dir / _NOTES / f"{digest}.json"

    @classmethod
    def read(cls, cache_dir: Path, model_id: str) -> TextNote | None:
        """The note, if there is one for ``model_id`` and its checkpoint is unchanged."""
        try:
            data = atomic.read_json(cls.path(cache_dir, model_id))
            if not isinstance(data, dict):
                return None
            if data.get("version") != NOTE_VERSION or data.get("model_id") != model_id:
                return None
            note = cls(model_id, str(data["checkpoint"]),
                       tuple(int(n) for n in data["identity"]),  # type: ignore[arg-type]
                       TextConfig(**data["config"]))
            if _identity(Path(note.checkpoint)) != note.identity:
                return None
            return note
        except (OSError, ValueError, TypeError, KeyError, AttributeError):
            return None

    def write(self, cache_dir: Path) -> None:
        """Remember the note; only a cache, so a failed write is logged and forgotten."""
        target = self.path(cache_dir, self.model_id)
        data = {"version": NOTE_VERSION, "model_id": self.model_id, "checkpoint": self.checkpoint,
                "identity": list(self.identity), "config": asdict(self.config)}
        try:
            target.parent.mkdir(parents=True, exist_ok=True)
            atomic.write_json(target, data)
        except OSError as exc:
            log.debug("cannot write %s: %s", target, exc)

    def tower(self) -> tuple[TextTower, BpeTokenizer]:
        """The checked tower and its tokenizer; raises ``OSError``/``ValueError`` if the
        checkpoint or the vocabulary cannot be read after all."""
        vocabulary = vocabulary_file()
        if vocabulary is None:
            raise OSError("open_clip's BPE vocabulary is not installed")
        tower = TextTower.from_checkpoint(self.config, Path(self.checkpoint))
        return tower, BpeTokenizer(vocabulary, self.config.context_length)


def _identity(path: Path) -> tuple[int, int, int, int]:
    st = path.stat()
    return (st.st_size, st.st_mtime_ns, st.st_ctime_ns, st.st_ino)


__all__ = ["CheckpointFormatError", "TextConfig", "TextNote", "TextTower", "parity_config",
           "plain_config"]

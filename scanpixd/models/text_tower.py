"""CLIP's text tower in numpy, so a daemon answers text queries without loading torch.

A query is a few words: the transformer runs over the positions up to the end-of-text
token only (the tower is causal and pools at that token, so the padding after it never
changes the result), which makes a query a few small matrix products.  Their cost is
OpenBLAS's at a handful of rows, so they are given what it runs fastest: weights copied once
into the layout it reads in order, row counts in multiples of 4, one row fewer (the
start-of-text position is the same in every query and is worked out once), and the last block
for the pooled row alone.  Importing torch and open_clip costs seconds of CPU at every start
and hundreds of megabytes of memory, for a tower this module runs in 20 to 40 ms.

This is only taken for a model that has been checked: the first time a model loads (through
torch), :func:`parity_config` compares this tower with open_clip's on probe texts and
:class:`TextNote` records the result in the machine-local cache.  Later loads find the note
and read the weights straight from the checkpoint (:mod:`scanpixd.models.checkpoint`).
Towers of other shapes (custom blocks, layer scale, other pooling or tokenizers) never get a
note and stay on torch.
"""

from __future__ import annotations

import logging
import math
import mmap
from collections.abc import Iterable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from scanpixd.models import tower_notes
from scanpixd.models.bpe import VOCABULARY_SIZE, BpeTokenizer, vocabulary_file
from scanpixd.models.checkpoint import CheckpointFormatError, read_arrays

log = logging.getLogger(__name__)

NOTE_VERSION = 1
_NOTES = "clip-text"  # the notes' folder under cache_dir/models
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
        # (first token, each block's keys and values there): see _first_position; replaced
        # whole, so threads running queries side by side see one or the other
        self._first: tuple[int, list[_KeysValues]] | None = None

    @classmethod
    def from_checkpoint(cls, config: TextConfig, checkpoint: Path) -> TextTower:
        """The tower over a map of the checkpoint; raises ``ValueError`` on missing or
        misshapen tensors, :class:`CheckpointFormatError` on a file it cannot read."""
        arrays = read_arrays(checkpoint)
        _check_shapes(config, arrays)
        tower = cls(config, {k: _float32(v) for k, v in arrays.items() if _is_text_key(k)})
        _leave_pages(v for k, v in arrays.items() if k.endswith(_COPIED))
        return tower

    @property
    def dim(self) -> int:
        return int(self.projection.shape[1])

    def __call__(self, tokens: np.ndarray) -> np.ndarray:
        # CLIP pools at the end-of-text token, the largest id; the tower runs over the
        # positions up to the last one (not the count of non-zero ids: id 0, "!", can occur
        # inside a text), rounded up to a multiple of _ROWS with the padding that follows:
        # attention is causal, so those rows never change the ones before them
        ends = tokens.argmax(axis=1)
        batch = tokens.shape[0]
        first = self._first_position(tokens, ends)
        skip = 0 if first is None else 1
        rows = -(-(int(ends.max()) + 1 - skip) // _ROWS) * _ROWS
        length = min(skip + rows, tokens.shape[1])
        x = self.token_embedding[tokens[:, skip:length]] + self.positions[skip:length]
        x = x.reshape(batch * (length - skip), -1)
        firsts: list[_KeysValues | None] = [None] * len(self.blocks) if first is None else [*first]
        for block, kv in zip(self.blocks[:-1], firsts, strict=False):
            x = block(x, batch, kv)
        # only the pooled rows leave the last block: it reads every row as keys and values,
        # but computes its queries, projections and MLP for those rows alone
        pooled = np.arange(batch) * (length - skip) + ends - skip
        x = self.blocks[-1](x, batch, firsts[-1], pooled)
        x = _layer_norm(x, *self.final_norm, self.config.eps) @ self.projection
        norms = np.linalg.norm(x, axis=1, keepdims=True)
        return np.ascontiguousarray(x / np.maximum(norms, 1e-12), dtype=np.float32)

    def _first_position(self, tokens: np.ndarray, ends: np.ndarray) -> list[_KeysValues] | None:
        """Each block's keys and values at the first position, when every text starts with
        the same token (the start-of-text token) and pools later.  Attention is causal, so
        that position's activations never depend on the rest of the text: they are worked
        out once, and a query's matrix products take one row fewer (a text of 5 tokens
        runs 4 rows instead of 8)."""
        token = int(tokens[0, 0]) if tokens.shape[0] else -1
        if token < 0 or (tokens[:, 0] != token).any() or int(ends.min()) < 1:
            return None
        cached = self._first
        if cached is None or cached[0] != token:
            x = self.token_embedding[[token]] + self.positions[:1]
            layers = []
            for block in self.blocks:
                layers.append(block.keys_values(x))
                x = block(x, 1)
            cached = self._first = (token, layers)
        return cached[1]


_KeysValues = tuple[np.ndarray, np.ndarray]  # (heads, head) each: one position's, in a block

# Rows a matrix product is given a multiple of: OpenBLAS's float32 products (measured on an
# AVX2 machine) run 4, 8 or 12 rows faster than one to three rows fewer: 11 cost 30 % more
# than 12, 5 to 7 more than 8
_ROWS = 4


class _Block:
    """One pre-norm residual attention block, as open_clip's ResidualAttentionBlock."""

    def __init__(self, weights: dict[str, np.ndarray], prefix: str, config: TextConfig):
        def get(name: str) -> np.ndarray:
            return weights[prefix + name]

        self.heads, self.eps, self.quick_gelu = config.heads, config.eps, config.quick_gelu
        self.norm1 = (get("ln_1.weight"), get("ln_1.bias"))
        self.norm2 = (get("ln_2.weight"), get("ln_2.bias"))
        self.qkv = (_transposed(get("attn.in_proj_weight")), get("attn.in_proj_bias"))
        self.out = (_transposed(get("attn.out_proj.weight")), get("attn.out_proj.bias"))
        self.fc = (_transposed(get("mlp.c_fc.weight")), get("mlp.c_fc.bias"))
        self.proj = (_transposed(get("mlp.c_proj.weight")), get("mlp.c_proj.bias"))

    def __call__(self, x: np.ndarray, batch: int, first: _KeysValues | None = None,
                 rows: np.ndarray | None = None) -> np.ndarray:
        """``x``: (batch * n, width), each text's positions in turn, after the first one
        when ``first`` holds that position's keys and values; with ``rows``, only those
        rows of the result (one per text)."""
        attended = self._attention(_layer_norm(x, *self.norm1, self.eps), batch, first, rows)
        x = x + attended if rows is None else x[rows] + attended
        hidden = _linear(_layer_norm(x, *self.norm2, self.eps), self.fc)
        hidden = _quick_gelu(hidden) if self.quick_gelu else _gelu(hidden)
        x += _linear(hidden, self.proj)
        return x

    def keys_values(self, x: np.ndarray) -> _KeysValues:
        """What a single position ``x`` (1, width) offers the positions after it."""
        width = x.shape[1]
        qkv = _linear(_layer_norm(x, *self.norm1, self.eps), self.qkv)[0]
        shape = (self.heads, width // self.heads)
        return qkv[width:2 * width].reshape(shape), qkv[2 * width:].reshape(shape)

    def _attention(self, x: np.ndarray, batch: int, first: _KeysValues | None,
                   rows: np.ndarray | None) -> np.ndarray:
        n, width = x.shape[0] // batch, x.shape[1]
        heads = self.heads
        head = width // heads
        qkv = _linear(x, self.qkv).reshape(batch, n, 3, heads, head)
        keys, values = qkv[:, :, 1], qkv[:, :, 2]  # (batch, n, heads, head)
        offset = 0 if first is None else 1
        if first is not None:
            keys, values = _after(first[0], keys), _after(first[1], values)
        keys = keys.transpose(0, 2, 3, 1)  # (batch, heads, head, offset + n)
        values = values.transpose(0, 2, 1, 3)  # (batch, heads, offset + n, head)
        if rows is None:
            queries = qkv[:, :, 0].transpose(0, 2, 1, 3)  # (batch, heads, n, head)
            position = offset + np.arange(n)[:, None]
        else:
            queries = qkv.reshape(batch * n, 3, heads, head)[rows, 0, :, None, :]
            position = offset + (rows - np.arange(batch) * n)[:, None, None, None]
        scores = (queries * np.float32(1.0 / math.sqrt(head))) @ keys
        # each position sees the keys up to its own
        scores += np.where(np.arange(offset + n) > position, np.float32(-np.inf), np.float32(0.0))
        scores -= scores.max(axis=-1, keepdims=True)
        np.exp(scores, out=scores)
        scores /= scores.sum(axis=-1, keepdims=True)
        context = (scores @ values).transpose(0, 2, 1, 3).reshape(-1, width)
        return _linear(context, self.out)


def _after(first: np.ndarray, rest: np.ndarray) -> np.ndarray:
    """The first position's (heads, head) before each text's (batch, n, heads, head)."""
    batch, _, heads, head = rest.shape
    return np.concatenate([np.broadcast_to(first, (batch, 1, heads, head)), rest], axis=1)


def _transposed(weight: np.ndarray) -> np.ndarray:
    """torch's (out, in) weight as a float32 (in, out) array of its own, so ``x @ w`` reads
    it in row order: OpenBLAS runs that 1.2 to 1.6 times faster at a query's few rows than
    the transposed view of the map (measured).  Copied a band of rows at a time, which
    keeps the transposition in cache (several times faster than one transposed copy)."""
    out = np.empty(weight.shape[::-1], dtype=np.float32)
    for start in range(0, weight.shape[0], 32):
        out[:, start:start + 32] = weight[start:start + 32].T
    return out


_COPIED = ("attn.in_proj_weight", "attn.out_proj.weight", "mlp.c_fc.weight", "mlp.c_proj.weight")


def _leave_pages(arrays: Iterable[np.ndarray]) -> None:
    """Unmap the checkpoint's pages under ``arrays`` from this process (they were copied and
    are never read again): 150 MB less resident memory for ViT-B-32.  They stay in the page
    cache, and a page read again later is simply mapped again, so nothing is lost either way;
    arrays that are not views of a map (converted ones) are left alone."""
    for array in arrays:
        owner: Any = array
        while owner is not None and not isinstance(owner, mmap.mmap):
            owner = owner.obj if isinstance(owner, memoryview) else getattr(owner, "base", None)
        if owner is None or owner.closed:
            continue
        start = array.ctypes.data - np.frombuffer(owner, np.uint8, count=1).ctypes.data
        first = -(-start // mmap.PAGESIZE) * mmap.PAGESIZE  # whole pages inside the array only
        end = (start + array.nbytes) // mmap.PAGESIZE * mmap.PAGESIZE
        if 0 <= first < end <= len(owner):
            owner.madvise(mmap.MADV_DONTNEED, first, end - first)


def _linear(x: np.ndarray, weight_bias: tuple[np.ndarray, np.ndarray]) -> np.ndarray:
    weight, bias = weight_bias
    out = x @ weight
    out += bias
    return out


def _layer_norm(x: np.ndarray, weight: np.ndarray, bias: np.ndarray, eps: float) -> np.ndarray:
    centred = x - x.mean(axis=-1, keepdims=True)
    variance = np.einsum("ij,ij->i", centred, centred)
    variance *= np.float32(1.0 / x.shape[-1])
    variance += np.float32(eps)
    centred /= np.sqrt(variance, out=variance)[:, None]
    centred *= weight
    centred += bias
    return centred


def _gelu(x: np.ndarray) -> np.ndarray:
    """Exact GELU, 0.5 x (1 + erf(x / sqrt 2)), with erf to within 1.5e-7."""
    out = _erf(x * np.float32(1.0 / math.sqrt(2.0)))
    out += np.float32(1.0)
    out *= x
    out *= np.float32(0.5)
    return out


def _erf(x: np.ndarray) -> np.ndarray:
    # Abramowitz and Stegun 7.1.26, odd in x; float32 throughout keeps it cheap and the
    # float32 rounding (about 1e-7) is below what a float32 tower resolves anyway.  Each
    # step writes over a buffer of its own (a query's MLP makes a dozen of them otherwise).
    z = np.abs(x)
    t = z * np.float32(0.3275911)
    t += np.float32(1.0)
    np.reciprocal(t, out=t)
    poly = t * np.float32(1.061405429)
    for coefficient in (-1.453152027, 1.421413741, -0.284496736, 0.254829592):
        poly += np.float32(coefficient)
        poly *= t
    np.square(z, out=z)
    np.negative(z, out=z)
    poly *= np.exp(z, out=z)
    np.subtract(np.float32(1.0), poly, out=poly)
    return np.copysign(poly, x, out=poly)


def _quick_gelu(x: np.ndarray) -> np.ndarray:
    out = x * np.float32(-1.702)
    np.exp(out, out=out)
    out += np.float32(1.0)
    return np.divide(x, out, out=out)


def _is_text_key(key: str) -> bool:
    return not key.startswith("visual.") and key not in ("logit_scale", "logit_bias")


def _float32(array: np.ndarray) -> np.ndarray:
    """Float32 weights stay views of the map; others are converted (a copy)."""
    return array if array.dtype == np.float32 else array.astype(np.float32)


def block_shapes(arrays: dict[str, np.ndarray], layers: int, width: int
                 ) -> dict[str, tuple[int, ...]]:
    """The shape each tensor of ``layers`` residual attention blocks of ``width`` must have,
    text's or images' (each block's MLP width is read from its bias)."""
    expected: dict[str, tuple[int, ...]] = {}
    for i in range(layers):
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
    return expected


def _check_shapes(config: TextConfig, arrays: dict[str, np.ndarray]) -> None:
    width = config.width
    expected: dict[str, tuple[int, ...]] = {
        "positional_embedding": (config.context_length, width),
        "ln_final.weight": (width,), "ln_final.bias": (width,),
    }
    expected.update(block_shapes(arrays, config.layers, width))
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
        return cls(model_id, str(checkpoint.resolve()), tower_notes.identity(checkpoint), config)

    @classmethod
    def read(cls, cache_dir: Path, model_id: str) -> TextNote | None:
        """The note, if there is one for ``model_id`` and its checkpoint is unchanged."""
        data = tower_notes.read(cache_dir, _NOTES, model_id, NOTE_VERSION)
        if data is None:
            return None
        try:
            return cls(model_id, str(data["checkpoint"]),
                       tuple(int(n) for n in data["identity"]),  # type: ignore[arg-type]
                       TextConfig(**data["config"]))
        except (ValueError, TypeError, KeyError, AttributeError):
            return None

    def write(self, cache_dir: Path) -> None:
        tower_notes.write(cache_dir, _NOTES, self.model_id, NOTE_VERSION, self.checkpoint,
                          self.identity, {"config": asdict(self.config)})

    def tower(self) -> tuple[TextTower, BpeTokenizer]:
        """The checked tower and its tokenizer; raises ``OSError``/``ValueError`` if the
        checkpoint or the vocabulary cannot be read after all."""
        vocabulary = vocabulary_file()
        if vocabulary is None:
            raise OSError("open_clip's BPE vocabulary is not installed")
        tower = TextTower.from_checkpoint(self.config, Path(self.checkpoint))
        return tower, BpeTokenizer(vocabulary, self.config.context_length)


__all__ = ["CheckpointFormatError", "TextConfig", "TextNote", "TextTower", "parity_config",
           "plain_config"]

"""CLIP image and text embeddings through open_clip, loaded lazily and identified portably.

``clip.model`` names an open_clip architecture (``ViT-B-32``) or a model-config JSON file
for a custom one; ``clip.pretrained`` names an open_clip pretrained tag (weights come from
the local model-hub cache, downloaded once when the network allows) or a local checkpoint
file.  Every embedding records :attr:`ClipModel.model_id`, built from the architecture and
the tag or the checkpoint's *content hash*, never its path, so a library embedded on one
machine stays current on another that has the same weights elsewhere.

Without weights (no network, no cached download, a missing file) the model is
``unavailable`` with the reason, quickly: the cache is looked up offline first and the hub
is contacted only when it answers a plain TCP connect.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import socket
import tempfile
import threading
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import numpy as np
from PIL import Image

from scanpixd.config import ClipSettings
from scanpixd.errors import ModelUnavailable
from scanpixd.models.base import LazyModel

log = logging.getLogger(__name__)

_CONNECT_TIMEOUT = 3.0
_TEXT_CACHE_SIZE = 256
_HASH_CACHE: dict[tuple[str, int, int], str] = {}
_REGISTER_LOCK = threading.Lock()


@dataclass
class _Loaded:
    model: Any  # open_clip.CLIP
    preprocess: Any  # torchvision transform: PIL image -> tensor
    tokenizer: Any
    dim: int


@dataclass(frozen=True)
class _Architecture:
    name: str  # the open_clip registry name
    id_part: str  # how model ids spell it
    config: dict[str, Any] | None  # custom model config, registered on load
    preprocess: dict[str, Any] | None  # preprocessing the custom config asks for


class ClipModel(LazyModel):
    """open_clip wrapper: ``embed_images`` and ``embed_text`` return L2-normalised float32 rows."""

    label = "CLIP"

    def __init__(self, settings: ClipSettings):
        super().__init__(idle_unload=settings.idle_unload)
        self.settings = settings
        self._id: str | None = None
        self._id_error: str | None = None
        self._text_cache: OrderedDict[str, np.ndarray] = OrderedDict()
        self._cache_lock = threading.Lock()

    @classmethod
    def from_model(cls, model: Any, model_id: str, settings: ClipSettings | None = None
                   ) -> ClipModel:
        """Wrap an open_clip model built elsewhere (benchmarks, experiments) under ``model_id``."""
        import open_clip

        self = cls(settings or ClipSettings())
        self._id = model_id
        preprocess = Preprocess(open_clip, model.eval())
        dim = int(model.visual.output_dim)
        tokenizer = open_clip.get_tokenizer(model_id.split("/", 1)[0])
        with self._lock:
            self._model = _Loaded(model.eval(), preprocess, tokenizer, dim)
            self._state = "ready"
        return self

    # -- identity -------------------------------------------------------------------
    @property
    def model_id(self) -> str:
        """``<architecture>/<tag or b2:checkpoint hash>``; raises when the weights can't be named."""
        if self._id is None and self._id_error is None:
            try:
                self._id = _model_id(self.settings)
            except ModelUnavailable as exc:
                self._id_error = str(exc)
        if self._id is None:
            raise ModelUnavailable(self._id_error or "CLIP model unavailable")
        return self._id

    @property
    def dim(self) -> int:
        """Embedding width (loads the model)."""
        with self.session() as loaded:
            return int(loaded.dim)

    # -- inference ------------------------------------------------------------------
    def embed_images(self, images: Sequence[Image.Image]) -> np.ndarray:
        """One normalised row per image, computed in batches of ``clip.batch_size``."""
        import torch

        with self.session() as loaded:
            if not images:
                return np.zeros((0, loaded.dim), dtype=np.float32)
            size = max(1, self.settings.batch_size)
            out = []
            with torch.inference_mode():
                for start in range(0, len(images), size):
                    chunk = images[start:start + size]
                    pixels = torch.from_numpy(np.stack([loaded.preprocess(im) for im in chunk]))
                    out.append(loaded.model.encode_image(pixels, normalize=True).float().numpy())
            return np.ascontiguousarray(np.concatenate(out), dtype=np.float32)

    def embed_text(self, texts: Sequence[str]) -> np.ndarray:
        """One normalised row per text; recent texts are answered from a small cache."""
        if not texts:
            return np.zeros((0, self.dim), dtype=np.float32)
        with self._cache_lock:
            missing = [t for t in dict.fromkeys(texts) if t not in self._text_cache]
        computed = dict(zip(missing, self._encode_text(missing), strict=True)) if missing else {}
        with self._cache_lock:
            self._text_cache.update(computed)
            rows = []
            for text in texts:
                vector = self._text_cache.get(text)
                rows.append(computed[text] if vector is None else vector)
                if vector is not None:
                    self._text_cache.move_to_end(text)
            while len(self._text_cache) > _TEXT_CACHE_SIZE:
                self._text_cache.popitem(last=False)
        return np.stack(rows)

    def _encode_text(self, texts: list[str]) -> np.ndarray:
        import torch

        with self.session() as loaded, torch.inference_mode():
            tokens = loaded.tokenizer(texts)
            vectors = encode_text_trimmed(loaded.model, tokens).float().numpy()
        return np.ascontiguousarray(vectors, dtype=np.float32)

    # -- loading --------------------------------------------------------------------
    def _load(self) -> _Loaded:
        try:
            import open_clip
            import torch
        except ImportError as exc:  # also torchvision operator mismatches
            raise ModelUnavailable(f"CLIP needs open_clip and torch: {exc}") from exc
        model_id = self.model_id  # validates names and paths before anything heavy
        arch = _architecture(self.settings.model)
        _register(open_clip, arch)
        if self.settings.threads > 0:
            torch.set_num_threads(self.settings.threads)
        checkpoint, tag_cfg = _weights(open_clip, arch.name, self.settings)
        overrides = dict(arch.preprocess or {})
        for key in ("mean", "std", "interpolation", "resize_mode"):
            if tag_cfg and key in tag_cfg:
                overrides[key] = tag_cfg[key]
        try:
            model = open_clip.create_model(
                arch.name,
                pretrained=checkpoint,
                force_quick_gelu=bool(tag_cfg and tag_cfg.get("quick_gelu")),
                force_preprocess_cfg=overrides or None,
                weights_only=True,
            )
        except Exception as exc:
            raise ModelUnavailable(
                f"cannot load CLIP {model_id} from {checkpoint}: {type(exc).__name__}: {exc}"
            ) from exc
        model.eval()
        preprocess = Preprocess(open_clip, model)
        try:
            tokenizer = open_clip.get_tokenizer(arch.name)
        except Exception as exc:
            raise ModelUnavailable(f"cannot load the CLIP tokenizer for {arch.name}: {exc}") from exc
        dim = int(open_clip.get_model_config(arch.name)["embed_dim"])
        return _Loaded(model, preprocess, tokenizer, dim)

    def _release(self, model: Any) -> None:
        with self._cache_lock:
            self._text_cache.clear()


class Preprocess:
    """The model's own preprocessing (size, crop, mean, std) as one numpy pass per image.

    For the usual configs (resize the short side, centre crop; or squash) this does what
    open_clip's torchvision pipeline does, with the same PIL resampling, but converts and
    normalises in numpy: several times cheaper than the tensor ops, which on a busy
    two-core machine also contend with the model's threads.  Other configs use
    open_clip's transform itself.
    """

    _RESAMPLE = {"bicubic": Image.Resampling.BICUBIC, "bilinear": Image.Resampling.BILINEAR,
                 "nearest": Image.Resampling.NEAREST}

    def __init__(self, open_clip: Any, model: Any):
        cfg = open_clip.transform.PreprocessCfg(**open_clip.get_model_preprocess_cfg(model))
        size = cfg.size if isinstance(cfg.size, tuple | list) else (cfg.size, cfg.size)
        self.height, self.width = int(size[0]), int(size[1])
        self.mode = cfg.resize_mode
        self.resample = self._RESAMPLE.get(cfg.interpolation)
        self.mean = np.asarray(cfg.mean, dtype=np.float32) * 255.0
        self.scale = 1.0 / (np.asarray(cfg.std, dtype=np.float32) * 255.0)
        fast = self.resample is not None and (
            self.mode == "squash" or (self.mode == "shortest" and self.height == self.width))
        self._fallback = None if fast else open_clip.transform.image_transform_v2(cfg, False)

    def __call__(self, image: Image.Image) -> np.ndarray:
        """A (3, H, W) float32 array ready for the model."""
        image = image if image.mode == "RGB" else image.convert("RGB")
        if self._fallback is not None:
            return np.asarray(self._fallback(image).numpy(), dtype=np.float32)
        image = self._resized(image)
        pixels = (np.asarray(image, dtype=np.float32) - self.mean) * self.scale
        return np.ascontiguousarray(pixels.transpose(2, 0, 1))

    def _resized(self, image: Image.Image) -> Image.Image:
        if self.mode == "squash":
            return image.resize((self.width, self.height), self.resample)
        side = self.width
        w, h = image.size
        # torchvision's Resize(int): the short side to `side`, the long side truncated
        new = (side, int(side * h / w)) if w <= h else (int(side * w / h), side)
        if new != (w, h):
            image = image.resize(new, self.resample)
        left = int(round((new[0] - side) / 2.0))
        top = int(round((new[1] - side) / 2.0))
        return image.crop((left, top, left + side, top + side))


# -- naming -------------------------------------------------------------------------
def _model_id(settings: ClipSettings) -> str:
    arch = _architecture(settings.model)
    pretrained = settings.pretrained.strip()
    if not pretrained:
        raise ModelUnavailable("no CLIP weights configured (clip.pretrained is empty)")
    path = Path(pretrained).expanduser()
    if path.is_file():
        return f"{arch.id_part}/{file_hash(path)}"
    if _looks_like_path(pretrained):
        raise ModelUnavailable(f"CLIP checkpoint not found: {pretrained}")
    return f"{arch.id_part}/{pretrained}"


def _looks_like_path(value: str) -> bool:
    return "/" in value or value.startswith("~") or value.endswith(
        (".pt", ".pth", ".bin", ".safetensors", ".ckpt"))


def file_hash(path: Path) -> str:
    """``b2:<hex>`` content hash of a weights file, cached by (path, size, mtime)."""
    st = path.stat()
    key = (str(path.resolve()), st.st_size, st.st_mtime_ns)
    found = _HASH_CACHE.get(key)
    if found is None:
        digest = hashlib.blake2b(digest_size=16)
        with open(path, "rb") as fh:
            while chunk := fh.read(1 << 22):
                digest.update(chunk)
        found = _HASH_CACHE[key] = "b2:" + digest.hexdigest()
    return found


def _architecture(model: str) -> _Architecture:
    """A built-in architecture name, or a config JSON read into a uniquely named entry."""
    value = model.strip()
    if not value:
        raise ModelUnavailable("no CLIP architecture configured (clip.model is empty)")
    if not value.endswith(".json"):
        return _Architecture(value, value, None, None)
    path = Path(value).expanduser()
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        raise ModelUnavailable(f"cannot read CLIP model config {value}: {exc}") from exc
    preprocess = None
    if isinstance(data, dict) and "model_cfg" in data:  # the hub's open_clip_config.json form
        preprocess = data.get("preprocess_cfg") or None
        data = data["model_cfg"]
    if not isinstance(data, dict) or not all(k in data for k in ("embed_dim", "vision_cfg",
                                                                 "text_cfg")):
        raise ModelUnavailable(
            f"{value}: not an open_clip model config (needs embed_dim, vision_cfg, text_cfg)")
    canonical = json.dumps([data, preprocess], sort_keys=True).encode()
    digest = hashlib.blake2b(canonical, digest_size=6).hexdigest()
    stem = path.stem.replace("/", "-")
    return _Architecture(f"scanpix-{stem}-{digest}", f"{stem}+{digest}", data, preprocess)


def _register(open_clip: Any, arch: _Architecture) -> None:
    """Make a custom config known to open_clip's registry under its unique name."""
    if arch.config is None:
        if open_clip.get_model_config(arch.name) is None:
            raise ModelUnavailable(f"unknown CLIP architecture {arch.name!r}; "
                                   f"open_clip knows e.g. ViT-B-32, ViT-B-16, ViT-L-14")
        return
    with _REGISTER_LOCK:
        if open_clip.get_model_config(arch.name) is not None:
            return
        with tempfile.TemporaryDirectory(prefix="scanpix-clip-") as tmp:
            cfg_file = Path(tmp) / f"{arch.name}.json"
            cfg_file.write_text(json.dumps(arch.config), encoding="utf-8")
            open_clip.add_model_config(cfg_file)  # read now; the registry keeps the dict


# -- weights ------------------------------------------------------------------------
def _weights(open_clip: Any, arch: str, settings: ClipSettings) -> tuple[str, dict[str, Any] | None]:
    """The checkpoint file to load and, for a pretrained tag, the tag's configuration."""
    pretrained = settings.pretrained.strip()
    path = Path(pretrained).expanduser()
    if path.is_file():
        return str(path), None
    tag_cfg = open_clip.get_pretrained_cfg(arch, pretrained)
    if not tag_cfg:
        known = open_clip.list_pretrained_tags_by_model(arch)
        tags = ", ".join(known[:6]) + (", ..." if len(known) > 6 else "") if known else "none"
        raise ModelUnavailable(
            f"{pretrained!r} is neither a checkpoint file nor a pretrained tag of {arch} "
            f"(tags: {tags})")
    return _fetch(tag_cfg, arch, pretrained, settings.download), tag_cfg


def _fetch(tag_cfg: dict[str, Any], arch: str, tag: str, download: bool) -> str:
    """Weights of a pretrained tag from the local cache, else (when allowed) from the hub."""
    hub = str(tag_cfg.get("hf_hub") or "")
    url = str(tag_cfg.get("url") or "")
    what = f"CLIP weights for {arch}/{tag}"
    if hub:
        repo, filename = os.path.split(hub)  # "org/name/" means the default file names
        return _fetch_hub(repo, filename, what, download)
    if url:
        return _fetch_url(url, what, download)
    raise ModelUnavailable(f"{what}: the tag names no download source")


def _fetch_hub(repo: str, filename: str, what: str, download: bool) -> str:
    from huggingface_hub import constants, hf_hub_download

    names = [filename] if filename else ["open_clip_model.safetensors",
                                         "open_clip_pytorch_model.bin"]
    for name in names:
        try:
            return str(hf_hub_download(repo, name, local_files_only=True))
        except Exception:  # not in the cache: try the next name, then the network
            continue
    if not download:
        raise ModelUnavailable(f"{what} are not in the local cache and clip.download is off")
    _reachable(constants.ENDPOINT, what)
    errors = []
    for name in names:
        try:
            return str(hf_hub_download(repo, name))
        except Exception as exc:
            errors.append(f"{name}: {type(exc).__name__}")
    raise ModelUnavailable(f"{what} could not be downloaded from {repo} ({'; '.join(errors)})")


def _fetch_url(url: str, what: str, download: bool) -> str:
    import open_clip

    target = Path(os.path.expanduser("~/.cache/clip")) / os.path.basename(urlparse(url).path)
    if target.is_file():
        return str(target)
    if not download:
        raise ModelUnavailable(f"{what} are not in the local cache and clip.download is off")
    _reachable(url, what)
    try:
        return str(open_clip.download_pretrained_from_url(url))
    except Exception as exc:
        raise ModelUnavailable(f"{what} could not be downloaded: {exc}") from exc


def _reachable(url: str, what: str) -> None:
    """Fail fast, without the hub client's long retries, when the network is not there."""
    parsed = urlparse(url)
    host = parsed.hostname or ""
    port = parsed.port or (443 if parsed.scheme == "https" else 80)
    try:
        with socket.create_connection((host, port), timeout=_CONNECT_TIMEOUT):
            pass
    except OSError as exc:
        raise ModelUnavailable(
            f"{what} are not in the local cache and {host} cannot be reached ({exc}); "
            f"set clip.pretrained to a local checkpoint file") from exc


def encode_text_trimmed(model: Any, tokens: Any) -> Any:
    """``model.encode_text(tokens, normalize=True)``, computed only up to the longest text.

    CLIP's text tower is causal and pools at the end-of-text token, so the padding after
    it never changes the result: running the transformer on the used positions only gives
    the same vectors (to float rounding) several times faster, which is most of a text
    query's time.  Other text towers take the plain path.
    """
    import torch
    import torch.nn.functional as F  # noqa: N812 - torch's own convention
    from open_clip.model import CLIP

    if not isinstance(model, CLIP) or model.text_pool_type != "argmax" or model.attn_mask is None:
        return model.encode_text(tokens, normalize=True)
    used = int((tokens != 0).sum(dim=1).max())
    length = max(1, min(used, tokens.shape[1]))
    trimmed = tokens[:, :length]
    cast_dtype = model.transformer.get_cast_dtype()
    x = model.token_embedding(trimmed).to(cast_dtype)
    x = x + model.positional_embedding[:length].to(cast_dtype)
    x = model.transformer(x, attn_mask=model.attn_mask[:length, :length])
    x = model.ln_final(x)
    x = x[torch.arange(x.shape[0]), trimmed.argmax(dim=-1)]
    if model.text_projection is not None:
        x = model.text_projection(x) if isinstance(model.text_projection, torch.nn.Linear) \
            else x @ model.text_projection
    return F.normalize(x, dim=-1)

"""CLIP image and text embeddings through open_clip, loaded lazily and identified portably.

``clip.model`` names an open_clip architecture (``ViT-B-32``) or a model-config JSON file
for a custom one; ``clip.pretrained`` names an open_clip pretrained tag (weights come from
the local model-hub cache, downloaded once when the network allows) or a local checkpoint
file.  Every embedding records :attr:`ClipModel.model_id`, built from the architecture and
the tag or the checkpoint's *content hash*, never its path, so a library embedded on one
machine stays current on another that has the same weights elsewhere.  The hash of a
checkpoint file is remembered in the machine-local cache under the file's identity (path,
size, times, inode), so a restart does not read the whole file again.

The two towers live apart.  :meth:`ClipModel.load` builds the text tower only (what a
daemon serving queries needs); the image tower loads on the first
:meth:`ClipModel.embed_images` and is released after ``clip.image_idle_unload`` seconds
without images.  Both are built on torch's meta device (no random initialisation) and take
their weights straight from a memory map of the checkpoint, each from its own map: pages a
tower never reads (most of the token embedding) are never resident, and releasing the image
tower unmaps its pages at once instead of leaving freed heap behind.  A text or image tower
checked against open_clip once on this machine is run in numpy on later loads, without torch
(:mod:`scanpixd.models.text_tower`, :mod:`scanpixd.models.image_tower`).

Without weights (no network, no cached download, a missing file) the model is
``unavailable`` with the reason, quickly: the cache is looked up offline first and the hub
is contacted only when it answers a plain TCP connect.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import logging
import os
import socket
import subprocess
import sys
import tempfile
import threading
from collections import OrderedDict
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal
from urllib.parse import urlparse

import numpy as np
import orjson
from PIL import Image

from scanpixd import heap
from scanpixd.config import ClipSettings, default_cache_dir
from scanpixd.errors import ModelUnavailable
from scanpixd.models.base import LazyModel
from scanpixd.models.image_tower import ImageNote, ImageTower, PreprocessConfig
from scanpixd.models.image_tower import parity_config as image_parity_config
from scanpixd.models.text_tower import TextNote, TextTower, parity_config
from scanpixd.store import atomic

log = logging.getLogger(__name__)

_CONNECT_TIMEOUT = 3.0
_TEXT_CACHE_SIZE = 256
_HASH_CACHE: dict[tuple[str, int, int, int, int], str] = {}
_HASH_FILE = Path("models") / "clip-checkpoint-hashes.json"  # under the cache directory
_HASH_FILE_ENTRIES = 32
_HASH_LOCK = threading.Lock()
_REGISTER_LOCK = threading.Lock()

Part = Literal["text", "image"]


@dataclass(frozen=True)
class _Architecture:
    name: str  # the open_clip registry name
    id_part: str  # how model ids spell it
    config: dict[str, Any] | None  # custom model config, registered on load
    preprocess: dict[str, Any] | None  # preprocessing the custom config asks for


@dataclass(frozen=True)
class _Spec:
    """What building either tower takes, resolved once without reading any weights."""

    arch: _Architecture
    checkpoint: str  # the weights file
    quick_gelu: bool
    preprocess: dict[str, Any] | None  # open_clip's force_preprocess_cfg


@dataclass
class _Loaded:
    """The text side: open_clip's model (its image tower a stand-in) with its tokenizer, or,
    for a model checked before on this machine, the numpy tower with the BPE tokenizer."""

    model: Any  # open_clip model, or a text_tower.TextTower
    tokenizer: Any
    dim: int

    @property
    def on_torch(self) -> bool:
        return not isinstance(self.model, TextTower)


class _ImageTower(LazyModel):
    """The image tower alone, loaded when images come and released when they stop: the
    numpy tower when a note says it was checked on this machine, else open_clip's."""

    label = "CLIP image"

    def __init__(self, idle_unload: float, resolve: Callable[[], _Spec],
                 note: Callable[[], ImageNote | None] = lambda: None,
                 check: Callable[[Any, Preprocess], None] = lambda visual, preprocess: None,
                 elsewhere: Callable[[], bool] = lambda: False):
        super().__init__(idle_unload)
        self.resolve = resolve  # the owning ClipModel's spec, resolved on first need
        self.note = note  # the owning ClipModel's note for its image tower, if any
        self.check = check  # compares a torch tower with the numpy one (and notes it)
        self.elsewhere = elsewhere  # runs the first load in a child; True when it ran
        self.preprocess: Preprocess | None = None  # set with each load

    @property
    def runtime(self) -> str | None:
        """``numpy`` or ``torch``: what runs the loaded tower (``None`` until it loads)."""
        visual = self.loaded_now()
        if visual is None:
            return None
        return "numpy" if isinstance(visual, ImageTower) else "torch"

    def _load(self) -> Any:
        note = self.note()
        if note is None and self.elsewhere():
            note = self.note()
        if note is not None:
            try:
                tower = note.tower()
                self.preprocess = Preprocess.from_config(note.preprocess)
                return tower
            except (OSError, ValueError) as exc:
                log.info("CLIP image tower from %s: %s; loading it through torch",
                         note.checkpoint, exc)
        spec = self.resolve()
        open_clip, _ = _import_torch()
        visual = _build(open_clip, spec, "image")
        self.preprocess = Preprocess(open_clip, visual)
        self.check(visual, self.preprocess)
        return visual

    def _released(self) -> None:
        heap.trim()


class ClipModel(LazyModel):
    """open_clip wrapper: ``embed_images`` and ``embed_text`` return L2-normalised float32 rows.

    ``cache_dir`` is the machine-local cache folder (``settings.cache_dir``), where checkpoint
    hashes are remembered; ``None`` means the default one.
    """

    label = "CLIP"

    def __init__(self, settings: ClipSettings, cache_dir: Path | None = None):
        super().__init__(idle_unload=settings.idle_unload)
        self.settings = settings
        self.cache_dir = cache_dir if cache_dir is not None else default_cache_dir()
        self._id: str | None = None
        self._id_error: str | None = None
        self._text_cache: OrderedDict[str, np.ndarray] = OrderedDict()
        self._text_thread: ThreadPoolExecutor | None = None
        self._text_thread_lock = threading.Lock()
        self._cache_lock = threading.Lock()
        self._spec_cache: _Spec | None = None
        self._spec_lock = threading.Lock()  # its own: the image tower asks while loading
        self._images = _ImageTower(settings.image_idle_unload or settings.idle_unload, self._spec,
                                   self._image_note, self._note_numpy_image,
                                   self._check_elsewhere)
        # A long-lived process (the daemon) sets this: a first load on the machine then runs in
        # a child, so that this process never imports torch once the numpy towers are noted.
        self.first_load_in_child = False
        self._child_lock = threading.Lock()
        self._child_ran = False

    @classmethod
    def from_model(cls, model: Any, model_id: str, settings: ClipSettings | None = None
                   ) -> ClipModel:
        """Wrap an open_clip model built elsewhere (benchmarks, experiments) under ``model_id``."""
        import open_clip

        self = cls(settings or ClipSettings(idle_unload=0))
        self._id = model_id
        model.eval()
        preprocess = Preprocess(open_clip, model)
        dim = int(model.visual.output_dim)
        tokenizer = open_clip.get_tokenizer(model_id.split("/", 1)[0])
        self._images.idle_unload = 0.0  # nothing to load it from again
        self._images.preprocess = preprocess
        self._images.adopt(model.visual)
        self.adopt(_Loaded(model, tokenizer, dim))
        return self

    # -- identity -------------------------------------------------------------------
    @property
    def model_id(self) -> str:
        """``<architecture>/<tag or b2:checkpoint hash>``; raises when the weights can't be named."""
        if self._id is None and self._id_error is None:
            try:
                self._id = _model_id(self.settings, self.cache_dir)
            except ModelUnavailable as exc:
                self._id_error = str(exc)
        if self._id is None:
            raise ModelUnavailable(self._id_error or "CLIP model unavailable")
        return self._id

    @property
    def dim(self) -> int:
        """Embedding width (loads the text tower)."""
        with self.session() as loaded:
            return int(loaded.dim)

    @property
    def text_runtime(self) -> str | None:
        """``numpy`` or ``torch``: what runs the loaded text tower (``None`` until it loads)."""
        loaded = self.loaded_now()
        if loaded is None:
            return None
        return "torch" if loaded.on_torch else "numpy"

    @property
    def image_runtime(self) -> str | None:
        """``numpy`` or ``torch``: what runs the loaded image tower (``None`` until it loads)."""
        return self._images.runtime

    @property
    def image_state(self) -> str:
        """The image tower's state (``unloaded`` while only text is served)."""
        return self._images.state

    # -- inference ------------------------------------------------------------------
    def embed_images(self, images: Sequence[Image.Image]) -> np.ndarray:
        """One normalised row per image, computed in batches of ``clip.batch_size``."""
        with self.session() as loaded:
            if not images:
                return np.zeros((0, loaded.dim), dtype=np.float32)
            size = max(1, self.settings.batch_size)
            with self._image_session() as visual:
                preprocess = self._images.preprocess
                assert preprocess is not None  # set with the tower it came with
                batches = (np.stack([preprocess(im) for im in images[start:start + size]])
                           for start in range(0, len(images), size))
                if isinstance(visual, ImageTower):
                    out = [visual(pixels) for pixels in batches]
                else:
                    out = _encode_images_torch(visual, batches)
            return np.ascontiguousarray(np.concatenate(out), dtype=np.float32)

    def image_preprocess(self) -> Preprocess:
        """The image tower's own preprocessing (loads the image tower)."""
        with self._image_session():
            assert self._images.preprocess is not None  # set with the tower it came with
            return self._images.preprocess

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
        """Texts are encoded on one long-lived thread: torch's OpenMP workers belong to the
        thread that calls it, and a daemon answering each request on a new thread would
        make (and tear down) a team per query, at several times the CPU of the query."""
        with self._text_thread_lock:
            if self._text_thread is None:
                self._text_thread = ThreadPoolExecutor(1, thread_name_prefix="clip-text")
            worker = self._text_thread
        return worker.submit(self._encode_text_here, texts).result()

    def _encode_text_here(self, texts: list[str]) -> np.ndarray:
        with self.session() as loaded:
            if not loaded.on_torch:
                return loaded.model(loaded.tokenizer(texts))
            import torch

            with torch.inference_mode():
                tokens = loaded.tokenizer(texts)
                vectors = encode_text_trimmed(loaded.model, tokens).float().numpy()
        return np.ascontiguousarray(vectors, dtype=np.float32)

    @contextlib.contextmanager
    def _image_session(self) -> Iterator[Any]:
        """The image tower; a tower that cannot load makes the whole model unavailable."""
        try:
            self._images.load()
        except ModelUnavailable as exc:
            with self._lock:
                self.unload()
                self._fail(f"CLIP image tower: {exc}")
            raise ModelUnavailable(self._error or str(exc)) from exc
        with self._images.session() as visual:
            yield visual

    # -- loading --------------------------------------------------------------------
    def _load(self) -> _Loaded:
        model_id = self.model_id  # validates names and paths before anything heavy
        note = self._text_note(model_id)
        if note is None and self._check_elsewhere():
            note = self._text_note(model_id)
        if note is not None:
            try:
                tower, tokenizer = note.tower()
                return _Loaded(tower, tokenizer, tower.dim)
            except (OSError, ValueError) as exc:
                log.info("CLIP text tower from %s: %s; loading it through torch", note.checkpoint, exc)
        loaded = self._load_torch()
        self._note_numpy_text(loaded, model_id)
        return loaded

    def _text_note(self, model_id: str) -> TextNote | None:
        note = TextNote.read(self.cache_dir, model_id)
        return note if note is not None and self._noted_file_is_ours(note.checkpoint) else None

    def _noted_file_is_ours(self, checkpoint: str) -> bool:
        """Whether a note's checkpoint is the configured one: the same weights (one model
        id) in another file are checked again, for that file."""
        local = Path(self.settings.pretrained.strip()).expanduser()
        return not local.is_file() or Path(checkpoint) == local.resolve()

    def _check_elsewhere(self) -> bool:
        """The model's first load on this machine, with both towers' checks, in a child
        process (once per model object, and only where ``first_load_in_child`` is set).
        Torch's CUDA build holds about 500 MB for the life of a process that imports it;
        when the checks pass, this process goes on in numpy and never imports it.  False
        when no child ran or it failed (the load then happens here, as before)."""
        if not self.first_load_in_child or "torch" in sys.modules:
            return False
        with self._child_lock:
            if self._child_ran:
                return False
            self._child_ran = True
            return first_load_in_child(self.settings, self.cache_dir)

    def _load_torch(self) -> _Loaded:
        open_clip, _ = _import_torch()
        spec = self._spec()
        try:
            model = _build(open_clip, spec, "text")
        except ModelUnavailable:
            raise
        except Exception as exc:
            raise ModelUnavailable(
                f"cannot load CLIP {self.model_id} from {spec.checkpoint}: {type(exc).__name__}: {exc}"
            ) from exc
        try:
            tokenizer = open_clip.get_tokenizer(spec.arch.name)
        except Exception as exc:
            raise ModelUnavailable(f"cannot load the CLIP tokenizer for {spec.arch.name}: {exc}") from exc
        dim = int(open_clip.get_model_config(spec.arch.name)["embed_dim"])
        return _Loaded(model, tokenizer, dim)

    def _note_numpy_text(self, loaded: _Loaded, model_id: str) -> None:
        """Check the numpy text tower against this one; when it agrees, say so in the cache,
        and the next load on this machine needs no torch for text."""
        checkpoint = Path(self._spec().checkpoint)
        try:
            config = parity_config(loaded.model, loaded.tokenizer, checkpoint)
        except Exception:  # the check is an optimisation: it must never fail a load
            log.debug("CLIP text tower check failed", exc_info=True)
            return
        if config is not None:
            TextNote.for_file(model_id, checkpoint, config).write(self.cache_dir)

    def _image_note(self) -> ImageNote | None:
        """The note that this model's image tower runs in numpy here, unless its checkpoint
        changed (or is another file than the one configured)."""
        try:
            note = ImageNote.read(self.cache_dir, self.model_id)
        except ModelUnavailable:
            return None
        return note if note is not None and self._noted_file_is_ours(note.checkpoint) else None

    def _note_numpy_image(self, visual: Any, preprocess: Preprocess) -> None:
        """Check the numpy image tower against this one; when it agrees, say so in the
        cache, and the next load on this machine needs no torch for images."""
        if preprocess.config is None:  # open_clip's own transform: needs torch anyway
            return
        checkpoint = Path(self._spec().checkpoint)
        try:
            config = image_parity_config(visual, preprocess, checkpoint)
            if config is not None:
                ImageNote.for_file(self.model_id, checkpoint, config,
                                   preprocess.config).write(self.cache_dir)
        except Exception:  # the check is an optimisation: it must never fail a load
            log.debug("CLIP image tower check failed", exc_info=True)

    def _spec(self) -> _Spec:
        """What building a tower takes: architecture, weights file, overrides (imports open_clip)."""
        with self._spec_lock:
            if self._spec_cache is None:
                open_clip, torch = _import_torch()
                arch = _architecture(self.settings.model)
                _register(open_clip, arch)
                if self.settings.threads > 0:
                    torch.set_num_threads(self.settings.threads)
                checkpoint, tag_cfg = _weights(open_clip, arch.name, self.settings)
                overrides = dict(arch.preprocess or {})
                for key in ("mean", "std", "interpolation", "resize_mode"):
                    if tag_cfg and key in tag_cfg:
                        overrides[key] = tag_cfg[key]
                self._spec_cache = _Spec(arch, checkpoint, bool(tag_cfg and tag_cfg.get("quick_gelu")),
                                         overrides or None)
            return self._spec_cache

    def _release(self, model: Any) -> None:
        self._images.unload()
        with self._cache_lock:
            self._text_cache.clear()

    def _released(self) -> None:
        heap.trim()

    def reset(self) -> None:
        """Forget a load failure of either tower so the next use tries again."""
        with self._lock:
            super().reset()
            self._images.reset()


FIRST_LOAD_TIMEOUT = 900.0  # seconds: a child may download the weights first


def first_load_in_child(settings: ClipSettings, cache_dir: Path) -> bool:
    """Run ``python -m scanpixd.models.first_load``: it loads the model through torch,
    checks the numpy towers and writes their notes in ``cache_dir``.  True when it exited
    cleanly (whether the towers agreed is for the notes to say)."""
    request = orjson.dumps({"settings": dataclasses.asdict(settings), "cache_dir": str(cache_dir)})
    log.info("CLIP %s: first load on this machine, in a child process", settings.model)
    try:
        done = subprocess.run([sys.executable, "-m", "scanpixd.models.first_load"], input=request,
                              capture_output=True, timeout=FIRST_LOAD_TIMEOUT, check=False)
    except (OSError, subprocess.TimeoutExpired) as exc:
        log.warning("CLIP first load in a child process failed (%s); loading here", exc)
        return False
    if done.returncode != 0:
        tail = done.stderr.decode(errors="replace").strip().splitlines()[-1:] or ["no output"]
        log.info("CLIP first load in a child process exited %d (%s); loading here",
                 done.returncode, tail[0][:300])
        return False
    return True


def _import_torch() -> tuple[Any, Any]:
    """open_clip and torch, or :class:`ModelUnavailable` saying why not."""
    if "torch" not in sys.modules:
        # Idle OpenMP workers sleep rather than spin: on two cores shared with the other
        # stages, spinning workers made each image cost ~1.6x the CPU time (2 threads).
        os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    try:
        import open_clip
        import torch
    except ImportError as exc:  # also torchvision operator mismatches
        raise ModelUnavailable(f"CLIP needs open_clip and torch: {exc}") from exc
    return open_clip, torch


def _encode_images_torch(visual: Any, batches: Iterator[np.ndarray]) -> list[np.ndarray]:
    """What ``CLIP.encode_image(pixels, normalize=True)`` computes, batch by batch."""
    import torch
    import torch.nn.functional as F  # noqa: N812 - torch's own convention

    with torch.inference_mode():
        return [F.normalize(visual(torch.from_numpy(pixels)), dim=-1).float().numpy()
                for pixels in batches]


class Preprocess:
    """The model's own preprocessing (size, crop, mean, std) as one numpy pass per image.

    For the usual configs (resize the short side, centre crop; or squash) this does what
    open_clip's torchvision pipeline does, with the same PIL resampling (only of the part
    the crop keeps), and converts and normalises in numpy, off the model's threads.  Other
    configs use open_clip's transform itself.
    """

    _RESAMPLE = {"bicubic": Image.Resampling.BICUBIC, "bilinear": Image.Resampling.BILINEAR,
                 "nearest": Image.Resampling.NEAREST}

    def __init__(self, open_clip: Any, model: Any):
        cfg = open_clip.transform.PreprocessCfg(**open_clip.get_model_preprocess_cfg(model))
        size = cfg.size if isinstance(cfg.size, tuple | list) else (cfg.size, cfg.size)
        config = PreprocessConfig(int(size[0]), int(size[1]), str(cfg.resize_mode),
                                  str(cfg.interpolation), _three(cfg.mean), _three(cfg.std))
        self._set(config)
        fast = self._fast
        self._fallback = None if fast else open_clip.transform.image_transform_v2(cfg, False)
        #: what builds this preprocessing again without open_clip (None: it needs open_clip)
        self.config: PreprocessConfig | None = config if fast else None

    @classmethod
    def from_config(cls, config: PreprocessConfig) -> Preprocess:
        """The numpy preprocessing :attr:`config` describes, built without open_clip;
        ``ValueError`` for a config only open_clip's transform does."""
        self = cls.__new__(cls)
        self._set(config)
        if not self._fast:
            raise ValueError(f"preprocessing {config} needs open_clip's transform")
        self._fallback = None
        self.config = config
        return self

    def _set(self, config: PreprocessConfig) -> None:
        self.height, self.width = config.height, config.width
        self.mode = config.mode
        self.resample = self._RESAMPLE.get(config.interpolation)
        self.mean = np.asarray(config.mean, dtype=np.float32) * 255.0
        self.scale = 1.0 / (np.asarray(config.std, dtype=np.float32) * 255.0)

    @property
    def _fast(self) -> bool:
        """Whether this numpy pass does the config (else open_clip's transform does)."""
        return self.resample is not None and (
            self.mode == "squash" or (self.mode == "shortest" and self.height == self.width))

    def __call__(self, image: Image.Image) -> np.ndarray:
        """A (3, H, W) float32 array ready for the model."""
        image = image if image.mode == "RGB" else image.convert("RGB")
        if self._fallback is not None:
            return np.asarray(self._fallback(image).numpy(), dtype=np.float32)
        pixels = np.asarray(self._resized(image))
        out = np.empty((3, *pixels.shape[:2]), dtype=np.float32)
        for channel in range(3):  # plane by plane: the same values, a quarter of the time
            np.subtract(pixels[..., channel], self.mean[channel], out=out[channel],
                        dtype=np.float32)
            out[channel] *= self.scale[channel]
        return out

    def _resized(self, image: Image.Image) -> Image.Image:
        if self.mode == "squash":
            return image.resize((self.width, self.height), self.resample)
        side = self.width
        w, h = image.size
        # torchvision's Resize(int): the short side to `side`, the long side truncated
        new = (side, int(side * h / w)) if w <= h else (int(side * w / h), side)
        left = int(round((new[0] - side) / 2.0))
        top = int(round((new[1] - side) / 2.0))
        if new[0] >= w:  # enlarging (or not resizing) costs little: exactly torchvision's way
            image = image.resize(new, self.resample) if new != (w, h) else image
            return image.crop((left, top, left + side, top + side))
        # Shrinking: resample only the source area the centre crop keeps, at the full
        # resize's scale: the same filter taps (a rare pixel rounds one level apart), a
        # quarter less work on a 4:3 picture.
        sx, sy = w / new[0], h / new[1]
        box = (left * sx, top * sy, (left + side) * sx, (top + side) * sy)
        return image.resize((side, side), self.resample, box=box)


def _three(values: Any) -> tuple[float, float, float]:
    """A mean or std as three floats (one value stands for all three channels)."""
    a, b, c = (float(v) for v in np.broadcast_to(np.asarray(values, dtype=np.float64), (3,)))
    return (a, b, c)


# -- naming -------------------------------------------------------------------------
def _model_id(settings: ClipSettings, cache_dir: Path | None = None) -> str:
    arch = _architecture(settings.model)
    pretrained = settings.pretrained.strip()
    if not pretrained:
        raise ModelUnavailable("no CLIP weights configured (clip.pretrained is empty)")
    path = Path(pretrained).expanduser()
    if path.is_file():
        return f"{arch.id_part}/{file_hash(path, cache_dir)}"
    if _looks_like_path(pretrained):
        raise ModelUnavailable(f"CLIP checkpoint not found: {pretrained}")
    return f"{arch.id_part}/{pretrained}"


def _looks_like_path(value: str) -> bool:
    return "/" in value or value.startswith("~") or value.endswith(
        (".pt", ".pth", ".bin", ".safetensors", ".ckpt"))


def file_hash(path: Path, cache_dir: Path | None = None) -> str:
    """``b2:<hex>`` content hash of a weights file.

    Remembered in this process and, with ``cache_dir``, in a small file there, under the
    file's identity: absolute path, size, mtime, ctime and inode.  Rewriting the file in
    place changes its ctime, replacing it changes the inode, so a stale hash is never used.
    """
    path = path.resolve()
    st = path.stat()
    key = (str(path), st.st_size, st.st_mtime_ns, st.st_ctime_ns, st.st_ino)
    found = _HASH_CACHE.get(key)
    if found is None and cache_dir is not None:
        found = _HashFile(cache_dir / _HASH_FILE).get(key)
    if found is None:
        digest = hashlib.blake2b(digest_size=16)
        with open(path, "rb") as fh:
            while chunk := fh.read(1 << 22):
                digest.update(chunk)
        found = "b2:" + digest.hexdigest()
        if cache_dir is not None:
            _HashFile(cache_dir / _HASH_FILE).put(key, found)
    _HASH_CACHE[key] = found
    return found


class _HashFile:
    """Checkpoint hashes by file identity, in a JSON file of the machine-local cache.

    Only a cache: unreadable or malformed contents count as empty, and a failed write is
    logged and forgotten (the hash is computed again next time).
    """

    def __init__(self, path: Path):
        self.path = path

    def get(self, key: tuple[str, int, int, int, int]) -> str | None:
        for entry in self._entries():
            if self._key(entry) == key:
                return str(entry["hash"])
        return None

    def put(self, key: tuple[str, int, int, int, int], digest: str) -> None:
        path, size, mtime_ns, ctime_ns, inode = key
        with _HASH_LOCK:
            entries = [e for e in self._entries() if e["path"] != path]
            entries.append({"path": path, "size": size, "mtime_ns": mtime_ns,
                            "ctime_ns": ctime_ns, "inode": inode, "hash": digest})
            data = {"version": 1, "files": entries[-_HASH_FILE_ENTRIES:]}
            try:
                self.path.parent.mkdir(parents=True, exist_ok=True)
                atomic.write_json(self.path, data)
            except OSError as exc:
                log.debug("cannot remember the checkpoint hash in %s: %s", self.path, exc)

    def _entries(self) -> list[dict[str, Any]]:
        try:
            data = json.loads(self.path.read_text(encoding="utf-8"))
            files = data["files"] if data.get("version") == 1 else []
            return [e for e in files if self._key(e) is not None
                    and str(e.get("hash", "")).startswith("b2:")]
        except (OSError, ValueError, TypeError, KeyError, AttributeError):
            return []

    @staticmethod
    def _key(entry: Any) -> tuple[str, int, int, int, int] | None:
        try:
            return (str(entry["path"]), int(entry["size"]), int(entry["mtime_ns"]),
                    int(entry["ctime_ns"]), int(entry["inode"]))
        except (TypeError, KeyError, ValueError):
            return None


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


# -- building the towers --------------------------------------------------------------
def _build(open_clip: Any, spec: _Spec, part: Part) -> Any:
    """One tower with the checkpoint's weights: the image tower, or the model without it.

    The usual way: an open_clip model built on the meta device (free: no memory, no random
    initialisation), the checkpoint memory-mapped and converted the way open_clip's own
    loader does, and the tower's tensors assigned straight from the map.  Models this
    cannot build (buffers the checkpoint does not hold, big_vision ``.npz`` weights) are
    built the ordinary way, whole, and then split.
    """
    skeleton = None
    if not spec.checkpoint.endswith((".npz", ".npy")):
        try:
            skeleton = _skeleton(open_clip, spec)
        except Exception:  # a model that can't be built on meta is built the ordinary way
            log.debug("CLIP %s: no meta-device build", spec.arch.name, exc_info=True)
    if skeleton is not None:
        state = _checkpoint_state(open_clip, skeleton, spec.checkpoint)
        tower = _tower(skeleton, part)
        prefix = "visual."
        if part == "image":
            state = {k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)}
        else:
            state = {k: v for k, v in state.items() if not k.startswith(prefix)}
        _assign(tower, state)
        if _materialise_buffers(tower):
            return _ready(tower)
        log.debug("CLIP %s: buffers outside the checkpoint; building it whole", spec.arch.name)
    model = open_clip.create_model(
        spec.arch.name, pretrained=spec.checkpoint, force_quick_gelu=spec.quick_gelu,
        force_preprocess_cfg=spec.preprocess, weights_only=True)
    return _ready(_tower(model, part))


def _skeleton(open_clip: Any, spec: _Spec) -> Any:
    """The model with every parameter on the meta device: shapes and structure only."""
    import torch

    quiet = _DropLogLine("No pretrained weights loaded")  # open_clip warns: weights come later
    root = logging.getLogger()
    root.addFilter(quiet)
    try:
        with torch.device("meta"):
            return open_clip.create_model(
                spec.arch.name, pretrained=None, force_quick_gelu=spec.quick_gelu,
                force_preprocess_cfg=spec.preprocess, pretrained_text=False, device="meta")
    finally:
        root.removeFilter(quiet)


class _DropLogLine(logging.Filter):
    def __init__(self, prefix: str):
        super().__init__()
        self.prefix = prefix

    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith(self.prefix)


def _tower(model: Any, part: Part) -> Any:
    """``model.visual``, or ``model`` with a weightless stand-in for its image tower.

    The stand-in keeps what callers read from ``model.visual`` without running it (the
    preprocessing configuration, the output width), so the text side passes for a whole
    open_clip model everywhere but in ``encode_image``.
    """
    import torch

    if part == "image":
        return model.visual
    visual = model.visual
    stand_in = torch.nn.Module()  # no forward: encode_image on the text side fails loudly
    for name in ("image_size", "output_dim", "preprocess_cfg", "image_mean", "image_std"):
        if hasattr(visual, name):
            setattr(stand_in, name, getattr(visual, name))
    model.visual = stand_in
    return model


def _checkpoint_state(open_clip: Any, model: Any, path: str) -> dict[str, Any]:
    """The checkpoint's tensors, memory-mapped, in open_clip's naming (its load_checkpoint)."""
    import torch
    from open_clip.convert import convert_state_dict
    from open_clip.model import (
        convert_to_custom_text_state_dict,
        resize_pos_embed,
        resize_text_pos_embed,
    )

    checkpoint = _read_checkpoint(path)
    if isinstance(checkpoint, dict) and "state_dict" in checkpoint:
        state = checkpoint["state_dict"]
    else:
        state = checkpoint
    if not isinstance(state, dict) or not state:
        raise ValueError("the checkpoint holds no state dict")
    if next(iter(state)).startswith("module"):
        state = {k[7:]: v for k, v in state.items()}
    state = convert_state_dict(model, state)
    if "positional_embedding" in state and not hasattr(model, "positional_embedding"):
        state = convert_to_custom_text_state_dict(state)
    for key in ("logit_scale", "logit_bias"):
        own = getattr(model, key, None)
        if key in state and own is not None and own.ndim != state[key].ndim:
            state[key] = state[key].reshape(own.shape)
    if "logit_bias" not in state and getattr(model, "logit_bias", None) is not None:
        state["logit_bias"] = torch.zeros_like(state["logit_scale"])
    state.pop("text.transformer.embeddings.position_ids", None)
    resize_pos_embed(state, model)
    resize_text_pos_embed(state, model)
    return state


def _read_checkpoint(path: str) -> Any:
    """The checkpoint file's contents, memory-mapped where the format allows it."""
    import torch

    if path.endswith(".safetensors"):
        from safetensors.torch import load_file

        return load_file(path)  # memory-mapped, tensors share the map
    try:
        return torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except RuntimeError as exc:  # the legacy (pre-zip) format cannot be mapped
        log.debug("CLIP checkpoint %s read whole: %s", path, exc)
        return torch.load(path, map_location="cpu", weights_only=True)


def _assign(module: Any, state: dict[str, Any]) -> None:
    """Load ``state`` by reference (no copy), converted only where the dtype differs."""
    own = module.state_dict(keep_vars=True)
    for key, value in state.items():
        target = own.get(key)
        if target is not None and value.dtype != target.dtype:
            state[key] = value.to(target.dtype)
    module.load_state_dict(state, strict=True, assign=True)


def _materialise_buffers(module: Any) -> bool:
    """Build the buffers no checkpoint holds (causal masks); False if others are left."""
    import torch

    for sub in module.modules():
        for name, buf in list(sub._buffers.items()):
            if buf is None or not buf.is_meta:
                continue
            if name != "attn_mask" or buf.ndim != 2 or buf.shape[0] != buf.shape[1]:
                return False
            # open_clip's build_causal_mask: -inf above the diagonal, 0 on and below it
            mask = torch.empty(buf.shape, dtype=buf.dtype).fill_(float("-inf")).triu_(1)
            sub._buffers[name] = mask
    return not any(t.is_meta for t in module.parameters())


def _ready(module: Any) -> Any:
    module.requires_grad_(False)
    return module.eval()


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
    # up to the last end-of-text token (the largest id); id 0 ("!") can occur inside a text,
    # so counting non-zero ids would cut it short
    length = int(tokens.argmax(dim=-1).max()) + 1
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

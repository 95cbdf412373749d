"""A tiny open_clip model with fixed random weights, saved like a real checkpoint.

There is no model hub here, so tests build a small ViT CLIP from a config JSON, save its
state dict, and load it through the same ``clip.model = <config.json>`` and
``clip.pretrained = <checkpoint>`` path a user with local weights takes.  Random weights
still map a photo and its resized or recompressed copy to near-identical vectors, which
is what the search plumbing needs.
"""

from __future__ import annotations

import hashlib
import io
import json
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import pytest
from PIL import Image

from scanpixd.config import ClipSettings, Settings
from scanpixd.indexer import Summary

TINY_CONFIG = {
    "embed_dim": 64,
    "vision_cfg": {"image_size": 64, "layers": 2, "width": 64, "head_width": 32, "patch_size": 16},
    "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 64, "heads": 2, "layers": 2},
}


@dataclass(frozen=True)
class TinyClip:
    config: Path
    checkpoint: Path

    def settings(self, **overrides: object) -> ClipSettings:
        """Clip settings that load this model (floors suited to random weights)."""
        base = ClipSettings(model=str(self.config), pretrained=str(self.checkpoint),
                            batch_size=8, idle_unload=0.0, download=False)
        return replace(base, **overrides)  # type: ignore[arg-type]

    def apply(self, settings: Settings, **overrides: object) -> Settings:
        settings.clip = self.settings(enabled=True, **overrides)
        return settings


def build_tiny_clip(directory: Path, seed: int = 0) -> TinyClip:
    """Write ``tiny-clip.json`` and ``tiny-clip-<seed>.pt`` (random weights from ``seed``)."""
    import open_clip
    import torch

    directory.mkdir(parents=True, exist_ok=True)
    config = directory / "tiny-clip.json"
    config.write_text(json.dumps(TINY_CONFIG), encoding="utf-8")
    name = f"scanpix-test-tiny-{seed}"
    if open_clip.get_model_config(name) is None:
        registered = directory / f"{name}.json"
        registered.write_text(json.dumps(TINY_CONFIG), encoding="utf-8")
        open_clip.add_model_config(registered)
    torch.manual_seed(seed)
    model = open_clip.create_model(name)
    checkpoint = directory / f"tiny-clip-{seed}.pt"
    torch.save(model.state_dict(), checkpoint)
    return TinyClip(config, checkpoint)


def open_pictures(paths: list[Path]) -> list[Image.Image]:
    """``paths`` decoded as RGB; the test is skipped when the shared corpora are not here."""
    if not paths:
        pytest.skip("the shared corpora are not beside the project")
    out = []
    for path in paths:
        with Image.open(path) as im:
            out.append(im.convert("RGB"))
    return out


def checkpoint_without(model: Any, path: Path, part: str) -> Path:
    """``model``'s weights saved at ``path`` without the tensors whose names hold ``part``
    (a checkpoint of another shape)."""
    import torch

    torch.save({k: v for k, v in model.state_dict().items() if part not in k}, path)
    return path


def tiny_variant(directory: Path, seed: int, quick_gelu: bool = False,
                 vision: dict[str, object] | None = None, text: dict[str, object] | None = None
                 ) -> tuple[Any, Path]:
    """The tiny model with ``vision``/``text`` config changes: (its open_clip model, in eval
    mode, with random weights from ``seed``; the checkpoint they are saved in)."""
    import open_clip
    import torch

    cfg = json.loads(json.dumps(TINY_CONFIG))
    cfg["vision_cfg"].update(vision or {})
    cfg["text_cfg"].update(text or {})
    cfg["quick_gelu"] = quick_gelu
    digest = hashlib.blake2b(json.dumps(cfg, sort_keys=True).encode(), digest_size=8).hexdigest()
    name = f"scanpix-test-variant-{digest}"  # open_clip's registry is process-wide
    if open_clip.get_model_config(name) is None:
        path = directory / f"{name}.json"
        path.write_text(json.dumps(cfg), encoding="utf-8")
        open_clip.add_model_config(path)
    torch.manual_seed(seed)
    model = open_clip.create_model(name).eval()
    checkpoint = directory / f"{name}-{seed}.pt"
    torch.save(model.state_dict(), checkpoint)
    return model, checkpoint


@pytest.fixture(scope="session", name="tiny_clip")
def tiny_clip_fixture(tmp_path_factory: pytest.TempPathFactory) -> TinyClip:
    """Import this into a test module; tests then ask for ``tiny_clip``."""
    return build_tiny_clip(tmp_path_factory.mktemp("tiny-clip"))


def resized(path: Path, target: Path, factor: float = 0.5) -> Path:
    """A smaller copy of a photo, saved as JPEG."""
    with Image.open(path) as im:
        im = im.convert("RGB")
        im.resize((max(1, int(im.width * factor)), max(1, int(im.height * factor))),
                  Image.Resampling.LANCZOS).save(target, "JPEG", quality=90)
    return target


def recompressed(path: Path, target: Path, quality: int = 35) -> Path:
    """The same photo re-encoded at a low JPEG quality."""
    with Image.open(path) as im:
        buffer = io.BytesIO()
        im.convert("RGB").save(buffer, "JPEG", quality=quality)
    target.write_bytes(buffer.getvalue())
    return target


def index_with_clip(settings: Settings, *roots: Path) -> Summary:
    """Index ``roots`` with the stages CLIP needs (decode, thumbnails, embeddings) only."""
    from scanpixd.indexer import Indexer
    from scanpixd.pipeline import Services
    from scanpixd.pipeline.embed import EmbedStage
    from scanpixd.pipeline.media import MediaStage
    from scanpixd.pipeline.thumbs import ThumbsStage

    services = Services(settings)
    stages = [MediaStage(services), ThumbsStage(services), EmbedStage(services)]
    indexer = Indexer(settings, services=services, stages=stages)
    try:
        return indexer.index(list(roots))
    finally:
        indexer.close()

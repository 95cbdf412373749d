"""The CLIP towers load apart, straight from the checkpoint, and give open_clip's own vectors."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from scanpixd.errors import ModelUnavailable
from scanpixd.models import clip as clip_module
from scanpixd.models.clip import ClipModel, file_hash
from tests.conftest import CORPORA
from tests.helpers_clip import TinyClip, open_pictures, tiny_clip_fixture  # noqa: F401

TEXTS = ["a dog on the beach", "snow", "a red car parked by a lake at sunset"]


@pytest.fixture(autouse=True)
def own_cache(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    """The default cache directory inside tmp_path, and no hash known to the process yet."""
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg-cache"))
    monkeypatch.setattr(clip_module, "_HASH_CACHE", {})
    return tmp_path / "xdg-cache" / "scanpix"


def pictures() -> list[Image.Image]:
    return open_pictures(sorted((CORPORA / "exif-samples" / "jpg" / "gps").glob("*.jpg"))[:3])


def reference(tiny: TinyClip, checkpoint: Path | None = None
              ) -> tuple[np.ndarray, np.ndarray]:
    """Image and text vectors from a whole model built by open_clip's own loader."""
    import open_clip

    model = ClipModel(tiny.settings())
    preprocess = model.image_preprocess()  # registers the architecture too
    name = clip_module._architecture(str(tiny.config)).name
    whole = open_clip.create_model(name, pretrained=str(checkpoint or tiny.checkpoint)).eval()
    with torch.inference_mode():
        pixels = torch.from_numpy(np.stack([preprocess(im) for im in pictures()]))
        images = whole.encode_image(pixels, normalize=True).numpy()
        texts = whole.encode_text(open_clip.get_tokenizer(name)(TEXTS), normalize=True).numpy()
    return images, texts


def vectors(model: ClipModel) -> tuple[np.ndarray, np.ndarray]:
    return model.embed_images(pictures()), model.embed_text(TEXTS)


def assert_same(ours: tuple[np.ndarray, np.ndarray], theirs: tuple[np.ndarray, np.ndarray]
                ) -> None:
    for a, b in zip(ours, theirs, strict=True):
        np.testing.assert_allclose(a, b, atol=1e-5)


def test_text_serving_loads_the_text_tower_only(tiny_clip: TinyClip) -> None:
    model = ClipModel(tiny_clip.settings())
    text = model.embed_text(TEXTS)
    assert model.state == "ready" and model.image_state == "unloaded"
    loaded = model.load()
    assert not any(n.startswith("visual.") for n, _ in loaded.model.named_parameters())
    with pytest.raises(NotImplementedError):
        loaded.model.encode_image(torch.zeros(1, 3, 64, 64))
    images = model.embed_images(pictures())
    assert model.image_state == "ready" and images.shape == (3, 64)
    model.unload()
    assert model.state == "unloaded" and model.image_state == "unloaded"
    np.testing.assert_allclose(model.embed_text(TEXTS), text, atol=1e-6)


def test_vectors_equal_those_of_open_clips_own_loader(tiny_clip: TinyClip) -> None:
    assert_same(vectors(ClipModel(tiny_clip.settings())), reference(tiny_clip))


def mapped_file(tensor: torch.Tensor) -> str | None:
    """The file whose memory map holds the tensor's data (``None``: ordinary memory)."""
    address = tensor.data_ptr()
    for line in Path("/proc/self/maps").read_text().splitlines():
        fields = line.split(maxsplit=5)
        start, end = (int(x, 16) for x in fields[0].split("-"))
        if start <= address < end:
            return fields[5] if len(fields) == 6 else None
    return None


def test_weights_are_mapped_from_the_checkpoint_not_copied(tiny_clip: TinyClip) -> None:
    if not Path("/proc/self/maps").is_file():
        pytest.skip("needs /proc")
    model = ClipModel(tiny_clip.settings())
    text_side = model.load().model
    model.embed_images(pictures()[:1])
    with model._images.session() as visual:
        image_files = {mapped_file(p) for p in visual.parameters()}
    text_files = {mapped_file(p) for p in text_side.parameters()}
    assert image_files == text_files == {str(tiny_clip.checkpoint)}
    assert not any(t.is_meta for t in text_side.state_dict(keep_vars=True).values())
    assert not any(p.requires_grad for p in text_side.parameters())


def test_the_image_tower_is_released_when_idle_and_comes_back(tiny_clip: TinyClip) -> None:
    model = ClipModel(tiny_clip.settings(idle_unload=0.0, image_idle_unload=0.2))
    first = model.embed_images(pictures()[:2])
    deadline = time.monotonic() + 10
    while model.image_state == "ready" and time.monotonic() < deadline:
        time.sleep(0.05)
    assert model.image_state == "unloaded" and model.state == "ready"
    np.testing.assert_allclose(model.embed_images(pictures()[:2]), first, atol=1e-6)


@pytest.mark.parametrize("form", ["safetensors", "legacy", "fp16", "wrapped", "module-prefix"])
def test_checkpoint_forms_load_like_open_clip_loads_them(tiny_clip: TinyClip, tmp_path: Path,
                                                         form: str) -> None:
    state = torch.load(tiny_clip.checkpoint, weights_only=True)
    path = tmp_path / f"weights-{form}.pt"
    if form == "safetensors":
        from safetensors.torch import save_file

        path = path.with_suffix(".safetensors")
        save_file({k: v.contiguous() for k, v in state.items()}, str(path))
    elif form == "legacy":
        torch.save(state, path, _use_new_zipfile_serialization=False)
    elif form == "fp16":
        torch.save({k: v.half() for k, v in state.items()}, path)
    elif form == "wrapped":
        torch.save({"state_dict": state, "epoch": 3}, path)
    else:
        torch.save({f"module.{k}": v for k, v in state.items()}, path)
    model = ClipModel(tiny_clip.settings(pretrained=str(path)))
    ours = vectors(model)
    assert all(p.dtype == torch.float32 for p in model.load().model.parameters())
    assert_same(ours, reference(tiny_clip, path))


def test_a_model_not_buildable_on_meta_is_built_whole(tiny_clip: TinyClip,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    def refuse(*args: object) -> None:
        raise NotImplementedError("no meta build")

    monkeypatch.setattr(clip_module, "_skeleton", refuse)
    model = ClipModel(tiny_clip.settings())
    ours = vectors(model)
    assert model.image_state == "ready"
    monkeypatch.undo()
    assert_same(ours, reference(tiny_clip))


def test_an_image_tower_that_cannot_load_makes_the_model_unavailable(
        tiny_clip: TinyClip, monkeypatch: pytest.MonkeyPatch) -> None:
    real = clip_module._build

    def no_images(open_clip: object, spec: object, part: str) -> object:
        if part == "image":
            raise ValueError("visual weights unreadable")
        return real(open_clip, spec, part)  # type: ignore[arg-type]

    monkeypatch.setattr(clip_module, "_build", no_images)
    model = ClipModel(tiny_clip.settings())
    model.embed_text(TEXTS)
    with pytest.raises(ModelUnavailable, match="image tower.*visual weights unreadable"):
        model.embed_images(pictures()[:1])
    assert model.state == "unavailable" and "visual weights" in (model.error or "")
    monkeypatch.undo()
    model.reset()
    assert model.embed_images(pictures()[:1]).shape == (1, 64)


def test_the_checkpoint_hash_is_remembered_across_processes(tiny_clip: TinyClip,
                                                            own_cache: Path) -> None:
    first = ClipModel(tiny_clip.settings()).model_id
    stored = own_cache / "models" / "clip-checkpoint-hashes.json"
    data = json.loads(stored.read_text())
    (entry,) = data["files"]
    assert entry["path"] == str(tiny_clip.checkpoint.resolve())
    assert first.endswith(entry["hash"])

    # A new process knows only the file: a planted hash proves the file is not read again.
    planted = "b2:" + "0" * 32
    entry["hash"] = planted
    stored.write_text(json.dumps(data))
    clip_module._HASH_CACHE.clear()  # as in a new process
    assert ClipModel(tiny_clip.settings()).model_id.endswith(planted)


def test_a_changed_checkpoint_is_hashed_again(tiny_clip: TinyClip, tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    weights = tmp_path / "weights.pt"
    weights.write_bytes(tiny_clip.checkpoint.read_bytes())
    before = file_hash(weights, cache)
    st = weights.stat()
    with open(weights, "r+b") as fh:  # same size, same mtime: only the ctime tells
        fh.seek(st.st_size // 2)
        fh.write(b"\x00\x01\x02\x03")
    os.utime(weights, ns=(st.st_atime_ns, st.st_mtime_ns))
    clip_module._HASH_CACHE.clear()
    assert file_hash(weights, cache) != before


def test_an_unwritable_cache_still_names_the_model(tiny_clip: TinyClip, tmp_path: Path) -> None:
    blocked = tmp_path / "not-a-folder"
    blocked.write_text("a file where the cache folder would be")
    model = ClipModel(tiny_clip.settings(), cache_dir=blocked)
    assert "/b2:" in model.model_id

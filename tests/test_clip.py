"""The CLIP model wrapper and the lazy model lifecycle, with a tiny random-weight checkpoint."""

from __future__ import annotations

import json
import shutil
import threading
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from scanpixd.config import ClipSettings
from scanpixd.errors import ModelUnavailable
from scanpixd.models.base import LazyModel
from scanpixd.models.clip import ClipModel, _reachable
from tests.conftest import CORPORA
from tests.helpers_clip import TINY_CONFIG, TinyClip, build_tiny_clip, tiny_clip_fixture  # noqa: F401

GPS = CORPORA / "exif-samples" / "jpg" / "gps"


@pytest.fixture(autouse=True)
def own_cache(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """Checkpoint hashes are remembered in a cache inside tmp_path, not the user's."""
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg-cache"))


def photos(count: int) -> list[Image.Image]:
    if not GPS.is_dir():
        pytest.skip("the shared corpora are not beside the project")
    out = []
    for path in sorted(GPS.glob("*.jpg"))[:count]:
        with Image.open(path) as im:
            out.append(im.convert("RGB"))
    return out


class Counting(LazyModel):
    label = "test"

    def __init__(self, idle_unload: float = 0.0, fail: str | None = None):
        super().__init__(idle_unload)
        self.loads = 0
        self.fail = fail

    def _load(self) -> object:
        self.loads += 1
        if self.fail:
            raise FileNotFoundError(self.fail)
        return object()


def test_lazy_model_loads_once_under_concurrent_use():
    model = Counting()
    assert model.state == "unloaded"
    threads = [threading.Thread(target=model.load) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert model.loads == 1 and model.state == "ready"
    model.unload()
    assert model.state == "unloaded"
    model.load()
    assert model.loads == 2


def test_lazy_model_unloads_when_idle_but_not_while_in_use():
    model = Counting(idle_unload=0.2)
    with model.session():
        time.sleep(0.5)
        assert model.state == "ready"  # busy: the idle timer leaves it alone
    deadline = time.monotonic() + 5
    while model.state == "ready" and time.monotonic() < deadline:
        time.sleep(0.05)
    assert model.state == "unloaded"


class HeldLoad:
    """A model's own load, held open until the test lets it finish."""

    def __init__(self, load: Callable[[], object]) -> None:
        self.load = load
        self.started, self.finish = threading.Event(), threading.Event()

    def __call__(self) -> object:
        self.started.set()
        assert self.finish.wait(30)
        return self.load()


def answered(call: Callable[[], object]) -> tuple[bool, object]:
    """Whether ``call`` returned within 10 s on another thread (it must not wait for a
    load), and what it returned."""
    out: list[object] = []
    thread = threading.Thread(target=lambda: out.append(call()), daemon=True)
    thread.start()
    thread.join(10)
    return not thread.is_alive(), out[0] if out else None


def test_asking_whether_a_model_is_loaded_never_waits_for_its_load(monkeypatch: pytest.MonkeyPatch):
    model = Counting()
    held = HeldLoad(model._load)
    monkeypatch.setattr(model, "_load", held)
    loader = threading.Thread(target=model.load)
    loader.start()
    assert held.started.wait(10)
    assert answered(model.loaded_now) == (True, None)
    assert model.state == "loading"
    held.finish.set()
    loader.join(10)
    done, loaded = answered(model.loaded_now)
    assert done and loaded is not None and loaded is model.load()
    model.unload()
    assert answered(model.loaded_now) == (True, None)


def test_the_status_answers_while_the_clip_model_loads(tiny_clip: TinyClip, tmp_path: Path,
                                                      monkeypatch: pytest.MonkeyPatch):
    """A first load on a machine takes 10 to 30 s; ``/v1/status`` must not wait for it."""
    from scanpixd.config import Settings
    from scanpixd.service import LibraryService

    settings = tiny_clip.apply(Settings(cache_dir=tmp_path / "cache"))
    service = LibraryService(settings)
    clip = service.library.clip
    held = HeldLoad(clip._load)
    monkeypatch.setattr(clip, "_load", held)
    loader = threading.Thread(target=lambda: clip.embed_text(["a dog"]))
    loader.start()
    try:
        assert held.started.wait(10)
        done, status = answered(service.status)
        assert done, "the status waited for the model load"
        assert isinstance(status, dict)
        model = status["models"]["clip"]
        assert (model["state"], model["text_tower"]) == ("loading", None)
    finally:
        held.finish.set()
        loader.join(60)
    assert service.status()["models"]["clip"]["state"] == "ready"


def test_lazy_model_failure_is_sticky_and_says_why():
    model = Counting(fail="no weights at /models/x.pt")
    for _ in range(2):
        with pytest.raises(ModelUnavailable, match="no weights at /models/x.pt"):
            model.load()
    assert model.loads == 1
    assert model.state == "unavailable" and "no weights" in (model.error or "")
    assert not model.available
    model.fail = None
    model.reset()
    assert model.available and model.state == "ready"


def test_embeddings_are_normalised_float32_and_batching_changes_nothing(tiny_clip: TinyClip):
    model = ClipModel(tiny_clip.settings(batch_size=3))
    images = photos(5)
    batched = model.embed_images(images)
    assert batched.shape == (5, model.dim) and batched.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(batched, axis=1), 1.0, atol=1e-5)
    one_by_one = np.concatenate([model.embed_images([im]) for im in images])
    np.testing.assert_allclose(batched, one_by_one, atol=1e-4)
    text = model.embed_text(["a dog on the beach", "snow", "a dog on the beach"])
    assert text.shape == (3, model.dim)
    np.testing.assert_allclose(text[0], text[2])
    np.testing.assert_allclose(np.linalg.norm(text, axis=1), 1.0, atol=1e-5)
    assert model.embed_images([]).shape == (0, model.dim)


def test_a_resized_copy_embeds_close_to_its_original(tiny_clip: TinyClip):
    model = ClipModel(tiny_clip.settings())
    images = photos(4)
    small = images[0].resize((images[0].width // 3, images[0].height // 3))
    vectors = model.embed_images([images[0], small, *images[1:]])
    similarity = vectors @ vectors[0]
    assert similarity[1] > 0.99
    assert similarity[1] > similarity[2:].max()


def test_model_id_names_content_not_location(tiny_clip: TinyClip, tmp_path: Path):
    moved = tmp_path / "elsewhere" / "weights.pt"
    moved.parent.mkdir()
    shutil.copy(tiny_clip.checkpoint, moved)
    here = ClipModel(tiny_clip.settings())
    there = ClipModel(tiny_clip.settings(pretrained=str(moved)))
    assert here.model_id == there.model_id
    assert str(tiny_clip.checkpoint.parent) not in here.model_id
    assert here.model_id.startswith("tiny-clip+") and "/b2:" in here.model_id
    other = build_tiny_clip(tmp_path / "other", seed=1)
    assert ClipModel(other.settings()).model_id != here.model_id
    assert ClipModel(ClipSettings()).model_id == "ViT-B-32/laion2b_s34b_b79k"


def test_missing_weights_make_the_model_unavailable_with_the_reason(tmp_path: Path):
    missing = ClipModel(ClipSettings(pretrained=str(tmp_path / "nope.pt")))
    with pytest.raises(ModelUnavailable, match="checkpoint not found"):
        missing.embed_text(["dog"])
    assert missing.state == "unavailable"

    uncached = ClipModel(ClipSettings(model="ViT-B-32", pretrained="laion2b_s34b_b79k",
                                      download=False))
    with pytest.raises(ModelUnavailable, match="not in the local cache"):
        uncached.load()
    assert uncached.state == "unavailable" and "laion2b_s34b_b79k" in (uncached.error or "")

    unknown = ClipModel(ClipSettings(pretrained="no_such_tag", download=False))
    with pytest.raises(ModelUnavailable, match="neither a checkpoint file nor a pretrained tag"):
        unknown.load()

    bad_arch = ClipModel(ClipSettings(model="ViT-Q-99", pretrained="x", download=False))
    with pytest.raises(ModelUnavailable, match="unknown CLIP architecture"):
        bad_arch.load()


def test_a_checkpoint_of_another_architecture_is_reported(tiny_clip: TinyClip, tmp_path: Path):
    narrower = dict(TINY_CONFIG, embed_dim=32)
    other_arch = tmp_path / "narrower.json"
    other_arch.write_text(json.dumps(narrower))
    wrong = ClipModel(ClipSettings(model=str(other_arch), pretrained=str(tiny_clip.checkpoint)))
    with pytest.raises(ModelUnavailable, match="cannot load CLIP"):
        wrong.load()
    bad_config = tmp_path / "broken.json"
    bad_config.write_text('{"embed_dim": 8}')
    with pytest.raises(ModelUnavailable, match="not an open_clip model config"):
        ClipModel(ClipSettings(model=str(bad_config), pretrained="x")).load()


def test_an_unreachable_hub_is_reported_without_the_hub_client():
    with pytest.raises(ModelUnavailable, match="cannot be reached.*local checkpoint"):
        _reachable("http://127.0.0.1:9/", "CLIP weights for ViT-B-32/openai")


@pytest.mark.parametrize("size", [(640, 480), (480, 640), (64, 64), (1000, 37), (33, 90)])
def test_preprocessing_matches_open_clip_transform(tiny_clip: TinyClip, size: tuple[int, int]):
    import open_clip

    model = ClipModel(tiny_clip.settings())
    loaded = model.load()
    cfg = open_clip.transform.PreprocessCfg(
        **open_clip.get_model_preprocess_cfg(loaded.model))
    reference = open_clip.transform.image_transform_v2(cfg, is_train=False)
    image = photos(1)[0].resize(size)
    ours = model.image_preprocess()(image)
    theirs = reference(image).numpy()
    assert ours.shape == theirs.shape
    # Resampling only the cropped area may round a pixel one grey level apart, no more.
    one_level = 1.0 / (255 * min(cfg.std))
    np.testing.assert_allclose(ours, theirs, atol=one_level * 1.01)
    assert np.mean(np.abs(ours - theirs)) < one_level / 100
    ours_vector = model.embed_images([image])[0]
    with torch.inference_mode(), model._images.session() as visual:
        theirs_vector = torch.nn.functional.normalize(visual(torch.from_numpy(theirs)[None]), dim=-1)
    assert float(ours_vector @ theirs_vector[0].numpy()) > 0.9999

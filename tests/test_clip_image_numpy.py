"""Images without torch: the numpy ViT image tower and the note that lets a checked model
index photos without torch on its next load."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import open_clip
import pytest
import torch
from PIL import Image

from scanpixd.models import image_tower
from scanpixd.models.clip import ClipModel, Preprocess
from scanpixd.models.image_tower import ImageNote, ImageTower, plain_config, probe_pixels
from tests.helpers_clip import TinyClip, checkpoint_without, open_pictures, tiny_clip_fixture, tiny_variant  # noqa: F401

CORPUS = Path("/work/shared/corpora")
PHOTOS = sorted((CORPUS / "exif-samples" / "jpg" / "gps").glob("*.jpg"))[:4] + sorted(
    (CORPUS / "face_recognition" / "examples").glob("*.jpg"))[:3]


@pytest.fixture(autouse=True)
def own_cache(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg-cache"))
    return tmp_path / "xdg-cache" / "scanpix"


def photos() -> list[Image.Image]:
    return open_pictures(PHOTOS)


def _model(tmp_path: Path, name: str = "tiny", quick_gelu: bool = False,
           **vision_cfg: object) -> tuple[open_clip.model.CLIP, Path]:
    """A random-weight model (``ViT-B-32`` or a tiny ViT with ``vision_cfg`` changes) and
    its saved checkpoint."""
    if name != "ViT-B-32":
        return tiny_variant(tmp_path, seed=5, quick_gelu=quick_gelu, vision=vision_cfg)
    torch.manual_seed(5)
    model = open_clip.create_model(name, force_quick_gelu=quick_gelu).eval()
    checkpoint = tmp_path / f"{name}.pt"
    torch.save(model.state_dict(), checkpoint)
    return model, checkpoint


# -- the tower --------------------------------------------------------------------------------
@pytest.mark.parametrize(("name", "quick_gelu"),
                         [("ViT-B-32", False), ("tiny", False), ("tiny", True)])
def test_numpy_tower_gives_open_clips_vectors_for_real_photos(
        tmp_path: Path, name: str, quick_gelu: bool) -> None:
    model, checkpoint = _model(tmp_path, name, quick_gelu)
    config = plain_config(model.visual)
    assert config is not None and config.quick_gelu is quick_gelu
    tower = ImageTower.from_checkpoint(config, checkpoint)
    preprocess = Preprocess(open_clip, model)
    pixels = np.stack([preprocess(im) for im in photos()])
    with torch.inference_mode():
        expected = model.encode_image(torch.from_numpy(pixels), normalize=True).numpy()
    np.testing.assert_allclose(tower(pixels), expected, atol=2e-6)
    single = np.concatenate([tower(pixels[i:i + 1]) for i in range(len(pixels))])
    np.testing.assert_allclose(single, expected, atol=2e-6)
    assert image_tower.parity_config(model.visual, preprocess, checkpoint) == config


@pytest.mark.parametrize("change", [
    {"ls_init_value": 0.1},  # layer scale
    {"pool_type": "avg"},
    {"attentional_pool": True, "attn_pooler_queries": 4, "attn_pooler_heads": 2},
    {"patch_dropout": 0.5},
    {"no_ln_pre": True},
    {"layers": [1, 1, 1, 1], "head_width": 32},  # a ResNet tower
])
def test_towers_of_other_shapes_stay_on_torch(tmp_path: Path, change: dict[str, object]) -> None:
    model, _ = _model(tmp_path, **change)
    assert plain_config(model.visual) is None


def test_tower_refuses_a_checkpoint_of_another_shape(tmp_path: Path) -> None:
    model, _ = _model(tmp_path)
    config = plain_config(model.visual)
    assert config is not None
    broken = checkpoint_without(model, tmp_path / "broken.pt", "resblocks.1.mlp")
    with pytest.raises(ValueError, match="resblocks.1.mlp"):
        ImageTower.from_checkpoint(config, broken)
    with pytest.raises(ValueError, match="pixels"):
        ImageTower.from_checkpoint(config, _model(tmp_path)[1])(np.zeros((1, 3, 32, 32)))


def test_probes_are_deterministic(tmp_path: Path) -> None:
    model, _ = _model(tmp_path)
    preprocess = Preprocess(open_clip, model)
    first, second = probe_pixels(preprocess), probe_pixels(preprocess)
    assert first.shape == (4, 3, 64, 64) and np.array_equal(first, second)


# -- the note: a checked model's next load needs no torch ------------------------------------
_SECOND_LOAD = """
import json, sys
from PIL import Image
from scanpixd.config import ClipSettings
from scanpixd.models.clip import ClipModel
settings = ClipSettings(**json.loads(sys.argv[1]))
model = ClipModel(settings)
images = [Image.open(path).convert("RGB") for path in json.loads(sys.argv[2])]
vectors = model.embed_images(images)
print(json.dumps({"torch": "torch" in sys.modules, "open_clip": "open_clip" in sys.modules,
                  "runtime": model.image_runtime, "vectors": vectors.tolist()}))
"""


def _embed_in_child(tiny: TinyClip) -> dict[str, object]:
    settings = {"model": str(tiny.config), "pretrained": str(tiny.checkpoint),
                "idle_unload": 0.0, "download": False, "batch_size": 3}
    done = subprocess.run([sys.executable, "-c", _SECOND_LOAD, json.dumps(settings),
                           json.dumps([str(p) for p in PHOTOS])], capture_output=True, text=True,
                          check=True, env=os.environ.copy())
    result: dict[str, object] = json.loads(done.stdout.strip().splitlines()[-1])
    return result


def test_a_checked_model_embeds_images_without_torch_next_time(
        tiny_clip: TinyClip, own_cache: Path) -> None:
    first = ClipModel(tiny_clip.settings(batch_size=3))
    expected = first.embed_images(photos())
    assert first.image_runtime == "torch"  # the first load goes through torch and checks
    assert len(list((own_cache / "models" / "clip-image").glob("*.json"))) == 1

    again = _embed_in_child(tiny_clip)
    assert again["torch"] is False and again["open_clip"] is False
    assert again["runtime"] == "numpy"
    np.testing.assert_allclose(np.asarray(again["vectors"]), expected, atol=2e-6)

    second = ClipModel(tiny_clip.settings(batch_size=3))
    np.testing.assert_allclose(second.embed_images(photos()), expected, atol=2e-6)
    assert second.image_runtime == "numpy" and second.image_state == "ready"
    assert second.image_preprocess().config == first.image_preprocess().config
    assert second.embed_images([]).shape == (0, expected.shape[1])


def test_a_changed_or_damaged_note_or_checkpoint_goes_back_to_torch(
        tiny_clip: TinyClip, own_cache: Path, tmp_path: Path) -> None:
    picture = photos()[:1]
    ClipModel(tiny_clip.settings()).embed_images(picture)
    notes = list((own_cache / "models" / "clip-image").glob("*.json"))
    assert len(notes) == 1

    def runtime(tiny: TinyClip = tiny_clip) -> str | None:
        model = ClipModel(tiny.settings())
        model.embed_images(picture)
        return model.image_runtime

    notes[0].write_text("{not json", encoding="utf-8")
    assert runtime() == "torch"  # and it writes the note again
    assert json.loads(notes[0].read_text(encoding="utf-8"))["version"] == image_tower.NOTE_VERSION
    assert runtime() == "numpy"

    data = json.loads(notes[0].read_text(encoding="utf-8"))
    data["config"]["width"] = 96  # a note that does not fit the checkpoint
    notes[0].write_text(json.dumps(data), encoding="utf-8")
    assert runtime() == "torch"
    assert runtime() == "numpy"

    copy = tmp_path / "copy.pt"
    copy.write_bytes(tiny_clip.checkpoint.read_bytes())
    moved = TinyClip(tiny_clip.config, copy)
    assert runtime(moved) == "torch"  # another file: checked for itself
    model_id = ClipModel(moved.settings()).model_id
    note = ImageNote.read(own_cache, model_id)
    assert note is not None and note.checkpoint == str(copy.resolve())
    assert runtime(moved) == "numpy"
    os.utime(copy, ns=(1, 1))  # the file the note names changed: check again, through torch
    assert ImageNote.read(own_cache, model_id) is None
    assert runtime(moved) == "torch"


def test_a_tower_that_disagrees_gets_no_note(
        tiny_clip: TinyClip, own_cache: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    real = ImageTower.__call__
    monkeypatch.setattr(ImageTower, "__call__",
                        lambda self, pixels: np.roll(real(self, pixels), 1, axis=1))
    model = ClipModel(tiny_clip.settings())
    model.embed_images(photos()[:1])
    assert model.image_runtime == "torch"
    assert not list((own_cache / "models" / "clip-image").glob("*.json"))


def test_status_says_which_runtime_runs_the_image_tower(
        tiny_clip: TinyClip, tmp_path: Path) -> None:
    from scanpixd.config import Settings
    from scanpixd.service import LibraryService

    settings = Settings()
    settings.cache_dir = tmp_path / "cache"
    tiny_clip.apply(settings)
    runtimes = []
    for _ in range(2):
        service = LibraryService(settings)
        clip_status = service.status()["models"]["clip"]
        assert clip_status["image_tower"] is None and clip_status["image_state"] == "unloaded"
        service.library.clip.embed_images(photos()[:1])
        clip_status = service.status()["models"]["clip"]
        assert clip_status["image_state"] == "ready"
        runtimes.append(clip_status["image_tower"])
    assert runtimes == ["torch", "numpy"]


# -- a long-lived process leaves the first load to a child -----------------------------------
_FIRST_LOAD_HERE = """
import json, sys
from PIL import Image
from scanpixd.config import ClipSettings
from scanpixd.models.clip import ClipModel
model = ClipModel(ClipSettings(**json.loads(sys.argv[1])))
model.first_load_in_child = True
images = [Image.open(path).convert("RGB") for path in json.loads(sys.argv[2])]
vectors = model.embed_images(images)
text = model.embed_text(["a dog on the beach"])
print(json.dumps({"torch": "torch" in sys.modules, "open_clip": "open_clip" in sys.modules,
                  "image": model.image_runtime, "text": model.text_runtime,
                  "vectors": vectors.tolist(), "text_vector": text.tolist()}))
"""


def test_a_first_load_in_a_child_leaves_this_process_without_torch(
        tiny_clip: TinyClip, own_cache: Path) -> None:
    """The daemon's way: a model's first load on a machine (no notes yet) runs in a child
    process, which checks both towers and notes them; the daemon then runs both in numpy."""
    settings = {"model": str(tiny_clip.config), "pretrained": str(tiny_clip.checkpoint),
                "idle_unload": 0.0, "download": False, "batch_size": 3}
    assert not (own_cache / "models").exists()
    done = subprocess.run([sys.executable, "-c", _FIRST_LOAD_HERE, json.dumps(settings),
                           json.dumps([str(p) for p in PHOTOS])], capture_output=True, text=True,
                          check=True, env=os.environ.copy())
    result = json.loads(done.stdout.strip().splitlines()[-1])
    assert result["torch"] is False and result["open_clip"] is False
    assert (result["image"], result["text"]) == ("numpy", "numpy")
    assert len(list((own_cache / "models" / "clip-image").glob("*.json"))) == 1
    reference = ClipModel(tiny_clip.settings(batch_size=3))  # here: torch is loaded anyway
    np.testing.assert_allclose(np.asarray(result["vectors"]), reference.embed_images(photos()),
                               atol=2e-6)
    np.testing.assert_allclose(np.asarray(result["text_vector"]),
                               reference.embed_text(["a dog on the beach"]), atol=2e-6)


def test_a_child_that_cannot_load_says_so(tiny_clip: TinyClip, own_cache: Path,
                                          tmp_path: Path) -> None:
    """A first load that fails in the child (weights missing, no Python to run) is reported
    as not done, so the load happens in the process itself, with its own clear error."""
    from scanpixd.models.clip import first_load_in_child

    missing = tiny_clip.settings(pretrained=str(tmp_path / "gone.pt"))
    assert first_load_in_child(missing, own_cache) is False
    assert not (own_cache / "models" / "clip-image").exists()
    original = sys.executable
    try:
        sys.executable = str(tmp_path / "no-python")
        assert first_load_in_child(tiny_clip.settings(), own_cache) is False
    finally:
        sys.executable = original
    assert first_load_in_child(tiny_clip.settings(), own_cache) is True
    assert len(list((own_cache / "models" / "clip-image").glob("*.json"))) == 1
    assert len(list((own_cache / "models" / "clip-text").glob("*.json"))) == 1

"""Text queries without torch: the BPE tokenizer, the checkpoint reader, the numpy tower and
the note that lets a checked model skip torch on its next load."""

from __future__ import annotations

import json
import os
import pickle
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np
import open_clip
import pytest
import torch

from scanpixd.models import text_tower
from scanpixd.models.bpe import BpeTokenizer, vocabulary_file
from scanpixd.models.checkpoint import CheckpointFormatError, read_arrays
from scanpixd.models.clip import ClipModel
from scanpixd.models.text_tower import TextNote, TextTower, plain_config
from tests.helpers_clip import TINY_CONFIG, TinyClip, checkpoint_without, tiny_clip_fixture, tiny_variant  # noqa: F401

TEXTS = ["a dog", "a dog on the beach at sunset with a red ball", "x", "", "   ",
         "Grand-mère's café &amp; crème brûlée 🎂", "北京 天安门 2008", "IMG_1234.JPG",
         "don't you'll we've I'm", "<start_of_text> weird <end_of_text> tokens",
         "ＦＵＬＬ-width ｔｅｘｔ", "tab\tand\nnewline", "é" * 300,
         "!?!?!", '"!"! "!',  # "!" is id 0, inside the text: not padding
         " ".join(["a very long caption about a crowded market at night"] * 20)]


@pytest.fixture(autouse=True)
def own_cache(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg-cache"))
    return tmp_path / "xdg-cache" / "scanpix"


def open_clip_tokenizer() -> open_clip.tokenizer.SimpleTokenizer:
    return open_clip.tokenizer.SimpleTokenizer()


# -- tokenizer ---------------------------------------------------------------------------------
def test_bpe_tokenizer_gives_open_clips_ids() -> None:
    vocabulary = vocabulary_file()
    assert vocabulary is not None
    ours = BpeTokenizer(vocabulary)
    rng = np.random.default_rng(7)
    alphabet = list("abcdefghijklmnopqrstuvwxyz ABCXYZ0123456789.,;:!?'\"-_/()&#é€ß漢字😀\u200b")
    generated = ["".join(rng.choice(alphabet, size=int(rng.integers(0, 60)))) for _ in range(200)]
    for text in TEXTS + generated:
        np.testing.assert_array_equal(ours([text]), open_clip_tokenizer()([text]).numpy(),
                                      err_msg=repr(text))
    batch = ours(TEXTS)
    assert batch.shape == (len(TEXTS), 77) and batch.dtype == np.int64
    assert batch[-1, -1] == ours.eot  # a long text is cut and still ends with end-of-text


# -- checkpoint reader -------------------------------------------------------------------------
def test_reader_gives_torchs_tensors_as_mapped_arrays(tmp_path: Path) -> None:
    base = torch.arange(60, dtype=torch.float32).reshape(6, 10)
    state = {"plain": base, "transposed": base.t(), "offset": base[2:], "strided": base[:, ::3],
             "half": base.half(), "bf16": base.bfloat16(), "long": torch.arange(5),
             "scalar": torch.tensor(2.5), "empty": torch.zeros(0, 4)}
    path = tmp_path / "state.pt"
    torch.save({"state_dict": {"module." + k: v for k, v in state.items()}, "epoch": 3}, path)
    arrays = read_arrays(path)
    assert set(arrays) == set(state)
    for key, tensor in state.items():
        expected = tensor.float().numpy() if key == "bf16" else tensor.numpy()
        np.testing.assert_array_equal(arrays[key], expected, err_msg=key)
        assert arrays[key].dtype == (np.float32 if key == "bf16" else expected.dtype)
    assert not arrays["plain"].flags.writeable  # a view of the read-only map


def test_reader_reads_safetensors(tmp_path: Path) -> None:
    from safetensors.torch import save_file

    state = {"w": torch.randn(3, 4), "h": torch.randn(2, 2).half(), "b": torch.randn(5).bfloat16()}
    path = tmp_path / "model.safetensors"
    save_file(state, str(path))
    arrays = read_arrays(path)
    for key, tensor in state.items():
        np.testing.assert_array_equal(arrays[key], tensor.float().numpy() if key == "b"
                                      else tensor.numpy())


def test_reader_refuses_what_it_cannot_read_safely(tmp_path: Path) -> None:
    marker = tmp_path / "ran"
    hostile = tmp_path / "hostile.pt"
    torch.save({"w": torch.ones(2)}, hostile)
    _replace_pickle(hostile, pickle.dumps(_Evil(str(marker)), protocol=2))
    with pytest.raises(CheckpointFormatError, match="names posix.system|names os.system"):
        read_arrays(hostile)
    assert not marker.exists()  # nothing in the pickle ran

    legacy = tmp_path / "legacy.pt"
    torch.save({"w": torch.ones(2)}, legacy, _use_new_zipfile_serialization=False)
    truncated = tmp_path / "truncated.pt"
    torch.save({"w": torch.ones(1000)}, truncated)
    truncated.write_bytes(truncated.read_bytes()[:3000])
    garbage = tmp_path / "garbage.safetensors"
    garbage.write_bytes(b"\xff" * 64)
    empty = tmp_path / "empty.safetensors"
    empty.write_bytes(b"")
    for path in (legacy, truncated, garbage, empty):
        with pytest.raises(CheckpointFormatError):
            read_arrays(path)


class _Evil:
    def __init__(self, marker: str):
        self.marker = marker

    def __reduce__(self) -> tuple[object, tuple[str]]:
        return (os.system, (f"touch {self.marker}",))


def _replace_pickle(path: Path, data: bytes) -> None:
    with zipfile.ZipFile(path) as source:
        members = {name: source.read(name) for name in source.namelist()}
    name = next(n for n in members if n.endswith("/data.pkl"))
    members[name] = data
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_STORED) as target:
        for member, content in members.items():
            target.writestr(member, content)


# -- the tower --------------------------------------------------------------------------------
@pytest.mark.parametrize("quick_gelu", [False, True])
def test_numpy_tower_gives_open_clips_vectors(tmp_path: Path, quick_gelu: bool) -> None:
    model, checkpoint = _tiny_model(tmp_path, quick_gelu=quick_gelu)
    tokenizer = open_clip_tokenizer()
    config = plain_config(model, tokenizer)
    assert config is not None and config.quick_gelu is quick_gelu and config.layers == 2
    tower = TextTower.from_checkpoint(config, checkpoint)
    tokens = tokenizer(TEXTS)
    with torch.inference_mode():
        expected = model.encode_text(tokens, normalize=True).numpy()
    np.testing.assert_allclose(tower(tokens.numpy()), expected, atol=2e-6)
    single = np.concatenate([tower(tokens[i:i + 1].numpy()) for i in range(len(TEXTS))])
    np.testing.assert_allclose(single, expected, atol=2e-6)


def test_towers_of_other_shapes_stay_on_torch(tmp_path: Path) -> None:
    layer_scaled, _ = _tiny_model(tmp_path, ls_init_value=0.1)
    assert plain_config(layer_scaled, open_clip_tokenizer()) is None
    plain, _ = _tiny_model(tmp_path)
    assert plain_config(plain, open_clip.tokenizer.SimpleTokenizer(clean="whitespace")) is None


def test_tower_refuses_a_checkpoint_of_another_shape(tmp_path: Path) -> None:
    model, _ = _tiny_model(tmp_path)
    config = plain_config(model, open_clip_tokenizer())
    assert config is not None
    broken = checkpoint_without(model, tmp_path / "broken.pt", "resblocks.1.mlp")
    with pytest.raises(ValueError, match="resblocks.1.mlp"):
        TextTower.from_checkpoint(config, broken)


def _tiny_model(tmp_path: Path, quick_gelu: bool = False, **text_cfg: object
                ) -> tuple[open_clip.model.CLIP, Path]:
    return tiny_variant(tmp_path, seed=3, quick_gelu=quick_gelu, text=text_cfg)


# -- the note: a checked model's next load needs no torch ------------------------------------
_SECOND_LOAD = """
import json, sys
from scanpixd.config import ClipSettings
from scanpixd.models.clip import ClipModel
settings = ClipSettings(**json.loads(sys.argv[1]))
model = ClipModel(settings)
vectors = model.embed_text(json.loads(sys.argv[2]))
print(json.dumps({"torch": "torch" in sys.modules, "open_clip": "open_clip" in sys.modules,
                  "vectors": vectors.tolist()}))
"""


def _load_in_child(tiny: TinyClip, texts: list[str]) -> dict[str, object]:
    settings = {"model": str(tiny.config), "pretrained": str(tiny.checkpoint),
                "idle_unload": 0.0, "download": False}
    done = subprocess.run([sys.executable, "-c", _SECOND_LOAD, json.dumps(settings),
                           json.dumps(texts)], capture_output=True, text=True, check=True,
                          env=os.environ.copy())
    result: dict[str, object] = json.loads(done.stdout.strip().splitlines()[-1])
    return result


def test_a_checked_model_answers_text_without_torch_next_time(
        tiny_clip: TinyClip, own_cache: Path) -> None:
    first = ClipModel(tiny_clip.settings())
    expected = first.embed_text(TEXTS)
    assert first.load().on_torch  # the first load goes through torch and checks
    assert len(list((own_cache / "models" / "clip-text").glob("*.json"))) == 1

    again = _load_in_child(tiny_clip, TEXTS)
    assert again["torch"] is False and again["open_clip"] is False
    np.testing.assert_allclose(np.asarray(again["vectors"]), expected, atol=2e-6)

    second = ClipModel(tiny_clip.settings())  # in this process: the numpy tower, then images
    assert not second.load().on_torch
    np.testing.assert_allclose(second.embed_text(TEXTS), expected, atol=2e-6)
    np.testing.assert_allclose(second.embed_images([_picture()]), first.embed_images([_picture()]),
                               atol=1e-5)


def test_a_changed_or_damaged_note_or_checkpoint_goes_back_to_torch(
        tiny_clip: TinyClip, own_cache: Path, tmp_path: Path) -> None:
    ClipModel(tiny_clip.settings()).embed_text(["a dog"])
    notes = list((own_cache / "models" / "clip-text").glob("*.json"))
    assert len(notes) == 1
    notes[0].write_text("{not json", encoding="utf-8")
    assert ClipModel(tiny_clip.settings()).load().on_torch  # and it writes the note again
    assert json.loads(notes[0].read_text(encoding="utf-8"))["version"] == text_tower.NOTE_VERSION
    assert not ClipModel(tiny_clip.settings()).load().on_torch

    copy = tmp_path / "copy.pt"
    copy.write_bytes(tiny_clip.checkpoint.read_bytes())
    moved = TinyClip(tiny_clip.config, copy)
    assert ClipModel(moved.settings()).load().on_torch  # another file: checked for itself
    note = TextNote.read(own_cache, ClipModel(moved.settings()).model_id)
    assert note is not None and note.checkpoint == str(copy.resolve())
    os.utime(copy, ns=(1, 1))  # the file the note names changed: check again, through torch
    assert TextNote.read(own_cache, ClipModel(moved.settings()).model_id) is None


def _picture() -> object:
    from PIL import Image

    return Image.linear_gradient("L").convert("RGB").resize((96, 64))


def test_a_restarted_daemon_serves_text_from_numpy_with_the_same_answers(
        tmp_path: Path, tiny_clip: TinyClip) -> None:
    from scanpixd.api.client import Client
    from scanpixd.config import load_settings
    from tests.helpers_api import Daemon, isolated_env, tiny_clip_table, write_daemon_config
    from tests.helpers_clip import index_with_clip
    from tests.helpers_index import make_photo

    root = tmp_path / "library"
    for i in range(4):
        make_photo(root / f"P{i}.jpg", seed=300 + i)
    sock = tmp_path / "s.sock"
    config = write_daemon_config(tmp_path / "config.toml", [root], sock,
                                 clip=tiny_clip_table(tiny_clip.config, tiny_clip.checkpoint)
                                 + "score_floor = 0.0\n")  # random weights: scores near 0
    env = isolated_env(tmp_path)
    settings = tiny_clip.apply(load_settings(config, environ={}))
    assert index_with_clip(settings, root).failed == 0
    notes = settings.cache_dir / "models" / "clip-text"
    assert len(list(notes.glob("*.json"))) == 1  # indexing checked the model: forget that
    shutil.rmtree(notes)
    answers, runtimes = [], []
    for _ in range(2):
        daemon = Daemon(config, sock, env, tmp_path / "daemon.log").start()
        try:
            daemon.wait_idle()
            client = Client(sock, timeout=120)
            answers.append(client.post("/v1/search", q="a red bicycle near a lake", limit=10))
            runtimes.append(client.get("/v1/status")["models"]["clip"]["text_tower"])
        finally:
            assert daemon.stop() == 0, daemon.log()
    # the first start's first load ran in a child process (torch there, then the check and
    # its note), so the daemon itself answered in numpy from its first query on
    assert runtimes == ["numpy", "numpy"]
    assert len(list(notes.glob("*.json"))) == 1
    first, second = ([r["path"] for r in a["results"]] for a in answers)
    assert first == second and first  # the same photos, in the same order
    for a, b in zip(answers[0]["results"], answers[1]["results"], strict=True):
        assert a["score"] == pytest.approx(b["score"], abs=1e-5)

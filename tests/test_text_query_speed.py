"""The shortcuts a text query takes stay exact: the numpy text tower's (rows rounded up,
the first position worked out once, the last block for the pooled rows only) against
open_clip, and a result's thumbnail path built without a stat against the store's own."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import open_clip
import orjson
import pytest
import torch

from scanpixd.library import Item
from scanpixd.models.checkpoint import read_arrays
from scanpixd.models.text_tower import TextTower, _float32, _leave_pages, plain_config
from scanpixd.record import Record
from scanpixd.service import _smallest_thumb
from scanpixd.store.folder import FolderStore
from tests.helpers_clip import tiny_variant

CAPTION = "a dog on the beach at sunset with a red ball near the old pier in winter light"


@pytest.fixture(scope="module", params=[False, True], ids=["gelu", "quick_gelu"])
def towers(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
           ) -> tuple[open_clip.model.CLIP, TextTower]:
    quick_gelu = bool(request.param)
    model, checkpoint = tiny_variant(tmp_path_factory.mktemp("tower"), seed=11, quick_gelu=quick_gelu,
                                     text={"heads": 4, "layers": 3})
    config = plain_config(model, open_clip.tokenizer.SimpleTokenizer())
    assert config is not None and config.heads == 4 and config.layers == 3
    return model, TextTower.from_checkpoint(config, checkpoint)


def _expected(model: open_clip.model.CLIP, tokens: np.ndarray) -> np.ndarray:
    with torch.inference_mode():
        return model.encode_text(torch.from_numpy(tokens), normalize=True).numpy()


def test_every_text_length_gives_open_clips_vector(towers: tuple[open_clip.model.CLIP, TextTower]
                                                   ) -> None:
    """One text at a time, 1 to 17 words: every rounding of the rows, with and without
    the first position's shortcut, and a batch of all of them (each padded differently)."""
    model, tower = towers
    words = CAPTION.split()
    texts = [" ".join(words[:n]) for n in range(len(words) + 1)]
    tokens = open_clip.tokenizer.SimpleTokenizer()(texts).numpy()
    expected = _expected(model, tokens)
    single = np.concatenate([tower(tokens[i:i + 1]) for i in range(len(texts))])
    np.testing.assert_allclose(single, expected, atol=2e-6)
    np.testing.assert_allclose(tower(tokens), expected, atol=2e-6)
    assert tower(tokens[:1]).dtype == np.float32 and tower(tokens[:1]).flags.c_contiguous


def test_rows_that_do_not_share_a_first_token_are_run_in_full(
        towers: tuple[open_clip.model.CLIP, TextTower]) -> None:
    """Token rows the tokenizer never makes (another first token, the largest id first) take
    the full pass, and the cached first position is not reused for another token."""
    model, tower = towers
    tokenizer = open_clip.tokenizer.SimpleTokenizer()
    tokens = tokenizer(["a dog on the beach", "red car"]).numpy()
    mixed = tokens.copy()
    mixed[1, 0] = 320  # a word where the start-of-text token was
    pooled_first = np.zeros((1, tokens.shape[1]), dtype=tokens.dtype)
    pooled_first[0, :3] = [tokenizer.eot_token_id, 320, 1929]  # pools at position 0
    other_start = tokens.copy()
    other_start[:, 0] = 1929  # all rows start alike, with another token
    for rows in (mixed, pooled_first, other_start, tokens, other_start):
        np.testing.assert_allclose(tower(rows), _expected(model, rows), atol=2e-6)


def test_copied_weights_leave_the_map_readable(tmp_path: Path) -> None:
    """The map's pages under copied weights are let go; read again, they hold the same."""
    state = {"a": torch.arange(5000, dtype=torch.float32).reshape(50, 100),
             "b": torch.ones(3, dtype=torch.float16)}
    torch.save(state, tmp_path / "weights.pt")
    arrays = read_arrays(tmp_path / "weights.pt")
    before = {k: np.array(v) for k, v in arrays.items()}
    _leave_pages([arrays["a"], _float32(arrays["b"]), np.zeros(4)])
    for key, value in arrays.items():
        np.testing.assert_array_equal(value, before[key])


def _item(folder: FolderStore, record: Record) -> Item:
    return Item(None, 0, folder.folder, folder, "IMG_1.jpg", orjson.dumps(record),  # type: ignore[arg-type]
                np.zeros(0, dtype=np.int64))


def test_thumb_of_a_folder_with_one_data_place_is_asset_paths_answer(tmp_path: Path) -> None:
    """Built without a stat, and the same path asset_path gives, the file there or not."""
    data = tmp_path / "photos" / ".scanpix"
    folder = FolderStore(tmp_path / "photos", data, [data])
    record: Record = {"thumbs": {"1024": "h-1024.jpg", "256": "h-256.webp"}}
    item = _item(folder, record)
    expected = str(data / "thumbs" / "h-256.webp")
    assert _smallest_thumb(item, record) == expected == str(folder.asset_path("h-256.webp"))
    (data / "thumbs").mkdir(parents=True)
    (data / "thumbs" / "h-256.webp").write_bytes(b"RIFF")
    assert _smallest_thumb(item) == expected  # the record decoded here when not given
    for hostile in ("../../../outside/secret.webp", "", ".."):
        assert _smallest_thumb(item, {"thumbs": {"256": hostile}}) is None
    assert _smallest_thumb(item, {"thumbs": {}}) is None and _smallest_thumb(item, {}) is None


def test_thumb_of_a_folder_with_two_data_places_is_looked_for(tmp_path: Path) -> None:
    """A read-only folder synced with its data: the thumbnail is where it lies."""
    cached, in_folder = tmp_path / "cache" / ".scanpix", tmp_path / "photos" / ".scanpix"
    folder = FolderStore(tmp_path / "photos", cached, [cached, in_folder])
    record: Record = {"thumbs": {"256": "h-256.webp"}}
    item = _item(folder, record)
    assert _smallest_thumb(item, record) == str(cached / "thumbs" / "h-256.webp")  # nowhere yet
    (in_folder / "thumbs").mkdir(parents=True)
    (in_folder / "thumbs" / "h-256.webp").write_bytes(b"RIFF")
    assert _smallest_thumb(item, record) == str(in_folder / "thumbs" / "h-256.webp")
    assert _smallest_thumb(item, {"thumbs": {"256": "../secret.webp"}}) is None

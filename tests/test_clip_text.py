"""Text queries run the text tower only over the used positions, with the same vectors."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from open_clip.model import CLIP

from scanpixd.models.clip import ClipModel, encode_text_trimmed
from tests.helpers_clip import TinyClip, tiny_clip_fixture  # noqa: F401


@pytest.fixture(autouse=True)
def own_cache(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """Checkpoint hashes are remembered in a cache inside tmp_path, not the user's."""
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg-cache"))


def test_trimmed_text_encoding_equals_the_full_forward_pass(tiny_clip: TinyClip) -> None:
    model = ClipModel(tiny_clip.settings())
    texts = ["a dog", "a dog on the beach at sunset with a red ball", "x", "!?!?!"]
    with model.session() as loaded, torch.inference_mode():
        assert isinstance(loaded.model, CLIP) and loaded.model.text_pool_type == "argmax"
        tokens = loaded.tokenizer(texts)
        assert int(tokens.argmax(dim=-1).max()) + 1 < tokens.shape[1]  # padding is really cut
        assert (tokens[3, 1:4] == 0).any()  # "!" is id 0: it must not count as padding
        full = loaded.model.encode_text(tokens, normalize=True).float().numpy()
        trimmed = encode_text_trimmed(loaded.model, tokens).float().numpy()
    assert trimmed.shape == full.shape
    assert np.allclose(trimmed, full, atol=1e-5)
    assert np.allclose(model.embed_text(texts), full, atol=1e-5)

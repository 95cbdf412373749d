"""Similar-image search through a real daemon equals direct mode, with a tiny random CLIP.

The model is the test one (fixed random weights, saved as a checkpoint and loaded through
the local-checkpoint path); random weights still map a photo and its resized or
recompressed copy to near-identical vectors, which is all this plumbing needs.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson
import pytest

from scanpixd.api.client import Client
from scanpixd.config import load_settings
from scanpixd.errors import ScanpixError
from tests.helpers_api import (
    Daemon,
    isolated_env,
    scanpix_query,
    tiny_clip_table,
    write_daemon_config,
)
from tests.helpers_clip import (  # noqa: F401 - the fixture
    TinyClip,
    index_with_clip,
    recompressed,
    resized,
    tiny_clip_fixture,
)
from tests.helpers_index import make_photo


@dataclass
class Semantic:
    root: Path
    photo: Path
    copies: list[Path]
    outside: Path
    config: Path
    env: dict[str, str]
    client: Client


@pytest.fixture(scope="module")
def semantic(tmp_path_factory: pytest.TempPathFactory, tiny_clip: TinyClip) -> Iterator[Semantic]:
    base = tmp_path_factory.mktemp("semantic")
    root = base / "library"
    photos = [make_photo(root / "trip" / f"P{i:03d}.jpg", seed=100 + i) for i in range(6)]
    (root / "edits").mkdir()
    copies = [resized(photos[0], root / "edits" / "P000-small.jpg"),
              recompressed(photos[0], root / "edits" / "P000-q35.jpg")]
    outside = make_photo(base / "elsewhere" / "other.jpg", seed=100)  # the same picture as P000
    sock = base / "s.sock"
    clip = tiny_clip_table(tiny_clip.config, tiny_clip.checkpoint)
    config = write_daemon_config(base / "config.toml", [root], sock, clip=clip)
    env = isolated_env(base)
    # Indexed in this process, which holds torch already; the daemon does the cheap stages.
    summary = index_with_clip(tiny_clip.apply(load_settings(config, environ={})), root)
    assert summary.failed == 0, summary
    daemon = Daemon(config, sock, env, base / "daemon.log").start()
    try:
        daemon.wait_idle()
        yield Semantic(root, photos[0], copies, outside, config, env, Client(sock, timeout=120))
    finally:
        assert daemon.stop() == 0, daemon.log()


def direct(semantic: Semantic, *args: str) -> dict[str, Any]:
    out = scanpix_query(*args, "--direct", "--json", "--config", str(semantic.config), env=semantic.env)
    assert out.returncode == 0, out.stderr
    data: dict[str, Any] = orjson.loads(out.stdout)
    return data


def same_results(left: dict[str, Any], right: dict[str, Any]) -> None:
    assert [r["path"] for r in left["results"]] == [r["path"] for r in right["results"]]
    for a, b in zip(left["results"], right["results"], strict=True):
        assert a["score"] == pytest.approx(b["score"], abs=1e-4)


def test_similar_through_the_daemon_equals_direct_mode(semantic: Semantic):
    through = semantic.client.post("/v1/similar", path=str(semantic.photo), limit=10)
    same_results(through, direct(semantic, "similar", str(semantic.photo)))
    found = [Path(r["path"]) for r in through["results"]]
    assert set(semantic.copies) <= set(found[:3])  # the photo and its two copies come first


def test_a_text_search_loads_the_model_once_and_equals_direct_mode(semantic: Semantic):
    through = semantic.client.post("/v1/search", q="a photo of a beach -snow", limit=10)
    same_results(through, direct(semantic, "a photo of a beach -snow"))
    assert semantic.client.get("/v1/status")["models"]["clip"]["state"] == "ready"


def test_a_similar_query_with_filters_equals_direct_mode(semantic: Semantic):
    words = (f"similar:{semantic.photo}", "-folder:edits")
    through = semantic.client.post("/v1/search", q=" ".join(words), limit=10)
    same_results(through, direct(semantic, *words))
    assert through["results"] and not any("/edits/" in r["path"] for r in through["results"])
    out = scanpix_query(*words, "--json", "--config", str(semantic.config), env=semantic.env)
    assert out.returncode == 0, out.stderr
    same_results(orjson.loads(out.stdout), through)


def test_the_daemon_never_reads_an_image_outside_its_roots(semantic: Semantic):
    with pytest.raises(ScanpixError, match="outside the library's roots"):
        semantic.client.post("/v1/similar", path=str(semantic.outside))
    with pytest.raises(ScanpixError, match="outside the library's roots"):
        semantic.client.post("/v1/search", q=f"dog similar:{semantic.outside}")


def test_the_cli_compares_an_image_outside_the_roots_itself(semantic: Semantic):
    """The daemon runs, but ``similar`` an image elsewhere is embedded by the CLI's own model."""
    out = scanpix_query("similar", str(semantic.outside), "--json", "--config", str(semantic.config),
                        env=semantic.env)
    assert out.returncode == 0, out.stderr
    found = [Path(r["path"]) for r in orjson.loads(out.stdout)["results"]]
    assert found[0] in {semantic.photo, *semantic.copies}  # the same picture, inside the library

"""Every real file in the shared corpora either decodes or fails with a reason.

The sweep runs in a child process with a time limit, so a decoder that crashes or hangs
on some file fails this test (naming the file) instead of taking the test run down.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image

from scanpixd.config import Settings
from scanpixd.pipeline.base import run_stage
from scanpixd.pipeline.media import MediaStage
from scanpixd.pipeline.preview import PreviewStage
from scanpixd.pipeline.services import Services
from scanpixd.pipeline.thumbs import ThumbsStage
from scanpixd.store import Store
from tests.helpers_media import make_job

CORPORA = Path(__file__).resolve().parents[1].parent / "shared" / "corpora"
PROJECT = Path(__file__).resolve().parents[1]
SWEEP_LIMIT = 540  # seconds for the whole sweep; it takes 30-60 s here (30 s of CPU)
pytestmark = [pytest.mark.slow, pytest.mark.timeout(SWEEP_LIMIT + 60)]
CORPUS_VIDEOS = [
    "imageio-test_images/cockatoo.mp4",
    "imageio-test_images/test.webm",
    "metadata-extractor-images/mov/with-gps.mov",
    "metadata-extractor-images/mts/Sony ILCE-7M3 (A7M3).mts",
]


class Sweep:
    def __init__(self, results: dict[str, dict[str, Any]], cache_dir: Path):
        self.results = results
        self.cache_dir = cache_dir
        self.store = Store(Settings(cache_dir=cache_dir, write_mode="cache"))

    def __getitem__(self, relative: str) -> dict[str, Any]:
        return self.results[str(CORPORA / relative)]

    def thumbnail(self, relative: str, size: str = "256") -> Image.Image:
        path = CORPORA / relative
        name = self[relative]["thumbs"][size]
        with Image.open(self.store.folder(path.parent).asset_path(name)) as im:
            return im.convert("RGB")


@pytest.fixture(scope="module")
def sweep(tmp_path_factory: pytest.TempPathFactory) -> Sweep:
    if not CORPORA.is_dir():
        pytest.skip("the shared corpora are not beside the project")
    cache_dir = tmp_path_factory.mktemp("sweep-cache")
    code = ("import sys; from pathlib import Path; from tests.helpers_media import sweep; "
            "sweep(Path(sys.argv[1]), Path(sys.argv[2]))")
    try:
        proc = subprocess.run([sys.executable, "-c", code, str(CORPORA), str(cache_dir)],
                              cwd=PROJECT, capture_output=True, text=True, timeout=SWEEP_LIMIT)
    except subprocess.TimeoutExpired as exc:
        out = exc.stdout.decode() if isinstance(exc.stdout, bytes) else exc.stdout or ""
        pytest.fail(f"sweep hung; last file started: {_last_started(out)}")
    results = {}
    for line in proc.stdout.splitlines():
        row = json.loads(line)
        if "path" in row:
            results[row["path"]] = row
    if proc.returncode != 0:
        pytest.fail(f"sweep died (exit {proc.returncode}) on {_last_started(proc.stdout)}:\n"
                    f"{proc.stderr[-2000:]}")
    return Sweep(results, cache_dir)


def _last_started(stdout: str) -> str:
    starts = [json.loads(line)["start"] for line in stdout.splitlines() if '"start"' in line]
    return starts[-1] if starts else "(none)"


def test_every_corpus_file_decodes_or_fails_with_a_reason(sweep: Sweep) -> None:
    files = sorted(str(p) for p in CORPORA.rglob("*") if p.is_file())
    assert sorted(sweep.results) == files
    for path, row in sweep.results.items():
        if row["status"] in ("failed", "skipped"):  # skipped: not media at all
            reason = row["errors"].get("media", "")
            assert reason and "\n" not in reason and len(reason) <= 300, path
            assert (row["status"] == "skipped") == reason.startswith("not a supported"), path
        else:
            assert row["status"] == "ok" and not row["errors"], (path, row["errors"])
            media = row["media"]
            assert media["kind"] in ("image", "video") and media["width"] > 0, path
            assert set(row["thumbs"]) == {"256", "1024"}, path


def test_most_real_photos_and_videos_decode(sweep: Sweep) -> None:
    ok = [p for p, r in sweep.results.items() if r["status"] == "ok"]
    by_kind = {kind: sum(1 for p in ok if sweep.results[p]["media"]["kind"] == kind)
               for kind in ("image", "video")}
    assert by_kind["image"] >= 230 and by_kind["video"] >= 18, by_kind
    jpegs = [p for p in sweep.results if p.lower().endswith((".jpg", ".jpeg"))]
    failed = [p for p in jpegs if sweep.results[p]["status"] == "failed"]
    assert len(failed) <= 2, failed  # only the deliberately truncated ones


@pytest.mark.parametrize(
    ("relative", "words"),
    [
        ("pillow_heif/tests/images/heif_special/200MP.heic", "decompression bomb"),
        ("Pillow/Tests/images/decompression_bomb.gif", "decompression bomb"),
        ("Pillow/Tests/images/truncated_jpeg.jpg", "truncated"),
        ("Pillow/Tests/images/truncated_image.png", "truncated"),
        ("pillow_heif/tests/images/heif_corrupted/corrupted.heic", "corrupt"),
        ("pillow_heif/tests/images/heif_corrupted/empty.heic", "not a supported"),
        ("exiftool/t/images/Geotag.gpx", "not a supported"),
    ],
)
def test_hostile_and_broken_files_fail_with_their_reason(sweep: Sweep, relative: str,
                                                         words: str) -> None:
    row = sweep[relative]
    assert row["status"] == ("skipped" if words == "not a supported" else "failed")
    assert words in row["errors"]["media"]


def test_orientation_samples_give_upright_thumbnails(sweep: Sweep) -> None:
    folder = "exif-samples/jpg/orientation"
    for shape in ("landscape", "portrait"):
        reference = np.asarray(sweep.thumbnail(f"{folder}/{shape}_1.jpg"), dtype=np.float32)
        for orientation in range(2, 9):
            thumb = sweep.thumbnail(f"{folder}/{shape}_{orientation}.jpg")
            assert thumb.size == (reference.shape[1], reference.shape[0]), (shape, orientation)
            difference = np.abs(np.asarray(thumb, dtype=np.float32) - reference).mean()
            assert difference < 12, (shape, orientation, difference)
        media = sweep[f"{folder}/{shape}_6.jpg"]["media"]
        assert (media["width"] > media["height"]) == (shape == "landscape")


def test_jpeg_named_nef_is_decoded_as_jpeg(sweep: Sweep) -> None:
    row = sweep["metadata-extractor-images/nef/Issue 247-1.nef"]
    assert row["status"] == "ok"
    assert row["media"]["format"] == "JPEG" and row["media"]["mime"] == "image/jpeg"


def test_heic_files_decode_with_their_frames(sweep: Sweep) -> None:
    burst = sweep["pillow_heif/tests/images/heif_other/nokia/bird_burst.heic"]
    assert burst["status"] == "ok" and burst["media"]["frames"] == 4
    phone = sweep["metadata-extractor-images/heic/IMG_2927.HEIC"]["media"]
    assert (phone["format"], phone["width"], phone["height"]) == ("HEIF", 3024, 4032)
    thumb = sweep.thumbnail("metadata-extractor-images/heic/IMG_2927.HEIC", "1024")
    assert thumb.size == (768, 1024)
    assert sweep["Pillow/Tests/images/avif/exif.avif"]["media"]["format"] == "AVIF"


@pytest.mark.parametrize("relative", CORPUS_VIDEOS)
def test_corpus_videos_get_a_poster_and_a_preview(settings: Settings, relative: str) -> None:
    if not CORPORA.is_dir():
        pytest.skip("the shared corpora are not beside the project")
    settings.write_mode = "cache"
    services = Services(settings)
    job = make_job(CORPORA / relative, settings)
    for stage in (MediaStage(services), ThumbsStage(services), PreviewStage(services)):
        assert run_stage(stage, job), (stage.name, job.record["errors"])
    media = job.record["media"]
    assert media["kind"] == "video" and media["width"] > 0 and media["height"] > 0
    with Image.open(job.folder.asset_path(job.record["thumbs"]["256"])) as poster:
        assert max(poster.size) <= 256
        assert (poster.width > poster.height) == (media["width"] > media["height"])
    preview = job.folder.asset_path(job.record["preview"]["webm"], "previews")
    assert preview.stat().st_size > 500
    assert not preview.is_relative_to(CORPORA)  # nothing is written into the corpora

"""The CLIP stage through a real indexing run: what lands in the records and when it reruns."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest

from scanpixd.config import Settings
from scanpixd.pipeline import Job, Services
from scanpixd.pipeline.embed import EmbedStage
from scanpixd.pipeline.media import MediaStage
from scanpixd.pipeline.thumbs import ThumbsStage
from scanpixd.record import decode_vector
from scanpixd.scan import reconcile
from scanpixd.store import Store, ann
from tests.helpers_clip import (
    TinyClip,
    build_tiny_clip,
    index_with_clip,
    recompressed,
    tiny_clip_fixture,  # noqa: F401
)


@pytest.fixture
def album(corpora: Path, tmp_path: Path) -> Path:
    folder = tmp_path / "lib" / "album"
    folder.mkdir(parents=True)
    for path in sorted((corpora / "exif-samples" / "jpg" / "gps").glob("*.jpg"))[:3]:
        shutil.copy2(path, folder / path.name)
    shutil.copy2(corpora / "face_recognition" / "examples" / "short_hamilton_clip.mp4", folder)
    (folder / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
    return folder


def records(settings: Settings, folder: Path) -> dict[str, dict]:
    return Store(settings).folder(folder).records()


def test_photos_and_video_frames_are_embedded_with_the_model_id(
        settings: Settings, tiny_clip: TinyClip, album: Path):
    tiny_clip.apply(settings)
    summary = index_with_clip(settings, album.parent)
    assert summary.unavailable == {}
    found = records(settings, album)
    model_id = Services(settings).clip.model_id
    photo = found["DSCN0010.jpg"]
    assert photo["clip"]["model"] == model_id and photo["clip"]["dim"] == 64
    assert photo["stages"]["clip"] == f"{EmbedStage.version}:{model_id}"
    (entry,) = photo["clip"]["vectors"]
    assert entry["time"] is None
    assert np.linalg.norm(decode_vector(entry["v"])) == pytest.approx(1.0, abs=1e-2)
    video = found["short_hamilton_clip.mp4"]["clip"]["vectors"]
    times = [v["time"] for v in video]
    assert 2 <= len(video) <= settings.clip.video_frames
    assert times == sorted(times) and all(0 <= t <= 11 for t in times)
    assert found["broken.jpg"]["status"] == "failed" and "clip" not in found["broken.jpg"]
    meta = ann.read_meta(Store(settings).folder(album))
    assert meta is None or meta["model"] == model_id  # written by whoever refreshes indexes


def test_a_bad_file_in_a_batch_fails_alone(settings: Settings, tiny_clip: TinyClip, album: Path):
    tiny_clip.apply(settings)
    index_with_clip(settings, album.parent)
    folder = Store(settings).folder(album)
    jobs = []
    for name, record in sorted(folder.records().items()):
        if record.get("status") != "failed":
            record.pop("clip")
            del record["stages"]["clip"]
            jobs.append(Job(album / name, folder, record))
    largest = max(jobs[0].record["thumbs"], key=int)
    folder.asset_path(jobs[0].record["thumbs"][largest]).unlink()  # no picture left to embed
    EmbedStage(Services(settings)).run_batch(jobs)
    assert "no decoded picture" in jobs[0].record["errors"]["clip"]
    assert "clip" not in jobs[0].record
    assert all(len(j.record["clip"]["vectors"]) >= 1 for j in jobs[1:])


def test_changing_the_model_re_embeds_everything(
        settings: Settings, tiny_clip: TinyClip, album: Path, tmp_path: Path):
    tiny_clip.apply(settings)
    index_with_clip(settings, album.parent)
    before = records(settings, album)
    other = build_tiny_clip(tmp_path / "other-model", seed=1)
    other.apply(settings)
    summary = index_with_clip(settings, album.parent)
    after = records(settings, album)
    new_id = Services(settings).clip.model_id
    assert summary.updated >= 4
    for name in ("DSCN0010.jpg", "short_hamilton_clip.mp4"):
        assert after[name]["clip"]["model"] == new_id != before[name]["clip"]["model"]
        assert after[name]["clip"]["vectors"][0]["v"] != before[name]["clip"]["vectors"][0]["v"]
    again = index_with_clip(settings, album.parent)
    assert again.updated == 0 and not again.did_work


def test_a_folder_copied_to_another_machine_is_not_re_embedded(
        settings: Settings, tiny_clip: TinyClip, album: Path, tmp_path: Path):
    tiny_clip.apply(settings)
    index_with_clip(settings, album.parent)
    ann.refresh(Store(settings).folder(album), Services(settings).clip.model_id)

    # The other machine: the folder (with .scanpix/) copied elsewhere, the same weights
    # stored at another path.
    elsewhere = tmp_path / "machine2" / "photos"
    shutil.copytree(album.parent, elsewhere, copy_function=shutil.copy2)
    weights = tmp_path / "machine2" / "models" / "clip.pt"
    weights.parent.mkdir(parents=True)
    shutil.copy(tiny_clip.checkpoint, weights)
    settings.clip.pretrained = str(weights)
    services = Services(settings)
    stages = [MediaStage(services), ThumbsStage(services), EmbedStage(services)]
    plan = reconcile([elsewhere], settings, Store(settings), stages)
    assert plan.work == [] and plan.unchanged == 5  # the broken file is settled (failed) too
    folder = Store(settings).folder(elsewhere / "album")
    graph = folder.index_dir() / ann.GRAPH_NAME
    stamp = graph.stat().st_mtime_ns
    index = ann.load_or_rebuild(folder, folder.records(), services.clip.model_id)
    assert index.directory == folder.index_dir() and graph.stat().st_mtime_ns == stamp


def test_an_unavailable_model_leaves_the_stage_waiting(settings: Settings, album: Path,
                                                       tmp_path: Path):
    settings.clip.enabled = True
    settings.clip.pretrained = str(tmp_path / "missing.pt")
    stage = EmbedStage(Services(settings))
    assert not stage.is_ready()
    summary = index_with_clip(settings, album.parent)
    found = records(settings, album)
    assert summary.failed == 1  # only the broken file
    assert all("clip" not in r and "clip" not in r.get("errors", {}) for r in found.values())


def test_a_recompressed_copy_gets_its_own_near_identical_vector(
        settings: Settings, tiny_clip: TinyClip, album: Path):
    tiny_clip.apply(settings)
    recompressed(album / "DSCN0010.jpg", album / "DSCN0010_q35.jpg")
    index_with_clip(settings, album.parent)
    found = records(settings, album)
    a = decode_vector(found["DSCN0010.jpg"]["clip"]["vectors"][0]["v"])
    b = decode_vector(found["DSCN0010_q35.jpg"]["clip"]["vectors"][0]["v"])
    c = decode_vector(found["DSCN0012.jpg"]["clip"]["vectors"][0]["v"])
    assert float(a @ b) > float(a @ c)

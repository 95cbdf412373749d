"""Videos through the media, thumbnail and preview stages, and the frame sampler the model
stages use, on clips written with PyAV (known scenes, rotation, broken files)."""

from __future__ import annotations

import time
from pathlib import Path

import av
import pytest
from PIL import Image

from scanpixd.config import Settings
from scanpixd.errors import DecodeError
from scanpixd.pipeline import video
from scanpixd.pipeline.base import run_stage
from scanpixd.pipeline.media import MediaStage
from scanpixd.pipeline.preview import PreviewStage, encode_preview, preview_start
from scanpixd.pipeline.services import Services
from scanpixd.pipeline.thumbs import ThumbsStage, content_key
from tests.helpers_media import make_job, make_video, mean_colour

RED, GREEN, BLUE = (220, 30, 30), (30, 200, 30), (30, 30, 220)


def dominant(im: Image.Image) -> str:
    r, g, b = mean_colour(im)
    return {0: "red", 1: "green", 2: "blue"}[int(max(range(3), key=lambda i: (r, g, b)[i]))]


@pytest.fixture(scope="module")
def scenes(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Three one-second scenes: red, green, blue."""
    return make_video(tmp_path_factory.mktemp("v") / "scenes.mp4", [RED, GREEN, BLUE])


@pytest.fixture
def services(settings: Settings) -> Services:
    return Services(settings)


def test_media_stage_describes_a_video_and_keeps_its_poster(scenes: Path,
                                                            services: Services) -> None:
    job = make_job(scenes, services.settings)
    assert run_stage(MediaStage(services), job), job.record["errors"]
    media = job.record["media"]
    assert (media["kind"], media["format"], media["mime"]) == ("video", "MP4", "video/mp4")
    assert (media["width"], media["height"], media["frames"]) == (160, 96, 30)
    assert media["duration"] == pytest.approx(3.0, abs=0.15)
    assert job.image is not None and job.image.size == (160, 96) and job.image.mode == "RGB"
    assert dominant(job.image) == "red"  # a keyframe about 10% in
    assert run_stage(ThumbsStage(services), job)
    assert set(job.record["thumbs"]) == {"256", "1024"}


def test_scene_changes_are_sampled_with_their_times(scenes: Path) -> None:
    frames = video.sample_frames(scenes, max_frames=8, max_size=64)
    times = [t for t, _ in frames]
    assert 3 <= len(frames) <= 8 and times == sorted(times)
    assert all(0.0 <= t < 3.0 for t in times)
    assert all(max(im.size) == 64 for _, im in frames)
    colours = {dominant(im): t for t, im in reversed(frames)}  # earliest time per colour
    assert set(colours) == {"red", "green", "blue"}
    assert colours["red"] == 0.0
    assert colours["green"] == pytest.approx(1.0, abs=0.35)
    assert colours["blue"] == pytest.approx(2.0, abs=0.35)


def test_sample_count_is_bounded(scenes: Path) -> None:
    assert len(video.sample_frames(scenes, max_frames=2, max_size=32)) <= 2
    assert video.sample_frames(scenes, max_frames=0, max_size=32) == []


def test_long_videos_are_sampled_by_seeking(tmp_path: Path) -> None:
    path = make_video(tmp_path / "long.mp4", [RED, GREEN, BLUE], seconds_each=12, fps=4,
                      size=(64, 48))
    started = time.monotonic()
    frames = video.sample_frames(path, max_frames=6, max_size=48)
    assert time.monotonic() - started < 60
    times = [t for t, _ in frames]
    assert 3 <= len(frames) <= 6 and times == sorted(times) and times[-1] < 36
    assert {dominant(im) for _, im in frames} == {"red", "green", "blue"}


def test_rotated_video_is_shown_upright(tmp_path: Path, services: Services) -> None:
    path = make_video(tmp_path / "phone.mov", [RED], size=(160, 96), rotation=90)
    job = make_job(path, services.settings)
    assert run_stage(MediaStage(services), job), job.record["errors"]
    media = job.record["media"]
    assert (media["format"], media["width"], media["height"]) == ("MOV", 96, 160)
    assert job.image.size == (96, 160)
    # the black mark at the stored bottom-left ends at the bottom-right after 90° ccw
    w, h = job.image.size
    assert sum(job.image.getpixel((w - 4, h - 4))) < 150
    assert sum(job.image.getpixel((4, h - 4))) > 150
    frames = video.sample_frames(path, max_frames=2, max_size=80)
    assert all(im.size == (48, 80) for _, im in frames)


@pytest.mark.parametrize(("codec", "name"), [("libvpx-vp9", "clip.webm"), ("mpeg4", "clip.avi"),
                                             ("libx264", "clip.mkv")])
def test_other_containers(tmp_path: Path, services: Services, codec: str, name: str) -> None:
    path = make_video(tmp_path / name, [GREEN], seconds_each=1, codec=codec)
    job = make_job(path, services.settings)
    assert run_stage(MediaStage(services), job), job.record["errors"]
    assert job.record["media"]["kind"] == "video"
    assert dominant(job.image) == "green"


def test_broken_videos_fail_with_a_reason(tmp_path: Path, scenes: Path, services: Services) -> None:
    data = scenes.read_bytes()
    header_only = tmp_path / "header.mp4"
    header_only.write_bytes(data[:40])
    garbage = tmp_path / "garbage.mp4"
    garbage.write_bytes(data[:32] + bytes(range(256)) * 40)
    for path in (header_only, garbage):
        job = make_job(path, services.settings)
        assert not run_stage(MediaStage(services), job)
        assert job.record["status"] == "failed" and job.record["error"]


def test_truncated_video_gives_what_it_has(tmp_path: Path, services: Services) -> None:
    path = make_video(tmp_path / "cut.mkv", [RED, GREEN], codec="libx264")
    data = path.read_bytes()
    path.write_bytes(data[: len(data) * 2 // 3])
    job = make_job(path, services.settings)
    assert run_stage(MediaStage(services), job), job.record["errors"]
    assert len(video.sample_frames(path, max_frames=4, max_size=32)) >= 1


def test_readers_stop_at_their_time_budget(scenes: Path) -> None:
    started = time.monotonic()
    with pytest.raises(DecodeError, match="time budget"):
        video.sample_frames(scenes, max_frames=4, max_size=32, budget=0.0)
    with pytest.raises(DecodeError):
        video.poster(scenes, 64, budget=0.0)
    assert time.monotonic() - started < 10


def test_preview_is_a_short_small_vp9_webm(scenes: Path, services: Services) -> None:
    job = make_job(scenes, services.settings)
    stage = PreviewStage(services)
    run_stage(MediaStage(services), job)
    assert stage.applies(job.record)
    assert run_stage(stage, job), job.record["errors"]
    name = job.record["preview"]["webm"]
    assert name == f"{content_key(job.record)}.webm"
    path = job.folder.asset_path(name, "previews")
    assert path.parent.name == "previews"
    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        assert container.format.name.startswith("matroska")
        assert stream.codec_context.name == "vp9"
        assert max(stream.codec_context.width, stream.codec_context.height) <= 320
        decoded = list(container.decode(stream))
    assert 10 <= len(decoded) <= 3 * 8 + 1
    before = path.stat().st_mtime_ns
    assert run_stage(stage, make_job(scenes, services.settings))  # a copy reuses it
    assert path.stat().st_mtime_ns == before


def test_preview_applies_to_videos_only(tmp_path: Path, services: Services) -> None:
    stage = PreviewStage(services)
    assert not stage.applies({"media": {"kind": "image"}})
    assert stage.applies({"media": {"kind": "video"}})
    assert preview_start(None, 3.0) == 0.0 and preview_start(4.0, 3.0) == 0.0
    assert preview_start(60.0, 3.0) == pytest.approx(6.0)


def test_preview_of_a_rotated_clip_is_upright(tmp_path: Path) -> None:
    path = make_video(tmp_path / "r.mp4", [BLUE], size=(160, 96), rotation=270)
    data = encode_preview(path, seconds=1.0, size=80, fps=4)
    out = tmp_path / "p.webm"
    out.write_bytes(data)
    with av.open(str(out)) as container:
        stream = container.streams.video[0]
        assert (stream.codec_context.width, stream.codec_context.height) == (48, 80)


def test_preview_of_a_broken_video_fails(tmp_path: Path) -> None:
    path = tmp_path / "bad.webm"
    path.write_bytes(b"\x1a\x45\xdf\xa3" + b"\0" * 500)
    with pytest.raises(DecodeError):
        encode_preview(path)

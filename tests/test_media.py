"""The media and thumbnail stages on pictures the tests make: every still format, EXIF
orientation, colour profiles, odd pixel modes, hostile and broken files."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from scanpixd.config import Settings
from scanpixd.errors import DecodeError
from scanpixd.pipeline.base import run_stage
from scanpixd.pipeline.media import MediaStage
from scanpixd.pipeline.services import Services
from scanpixd.pipeline.sniff import sniff, sniff_bytes
from scanpixd.pipeline.thumbs import ThumbsStage, content_key
from scanpixd.store import Store
from tests.helpers_media import (
    INVERSE,
    corner_colours,
    fake_raw,
    make_job,
    marked_picture,
    mean_colour,
    png_claiming,
    save_oriented,
    swapped_rgb_profile,
)

RED, BLUE = (255, 0, 0), (0, 0, 255)


def near(colour: tuple[int, ...], expected: tuple[int, int, int], tolerance: int = 40) -> bool:
    return all(abs(int(a) - b) <= tolerance for a, b in zip(colour[:3], expected, strict=True))


@pytest.fixture
def services(settings: Settings) -> Services:
    return Services(settings)


def run_media(path: Path, services: Services):
    job = make_job(path, services.settings)
    ok = run_stage(MediaStage(services), job)
    return ok, job


@pytest.mark.parametrize("orientation", range(1, 9))
def test_orientation_is_applied(tmp_path: Path, services: Services, orientation: int) -> None:
    base = marked_picture((120, 80))
    path = save_oriented(tmp_path / f"o{orientation}.jpg", base, orientation)
    ok, job = run_media(path, services)
    assert ok, job.record["errors"]
    assert job.image is not None and job.image.size == (120, 80)
    top_left, bottom_right = corner_colours(job.image)
    assert near(top_left, RED) and near(bottom_right, BLUE), (orientation, top_left, bottom_right)
    media = job.record["media"]
    assert (media["width"], media["height"]) == (120, 80)  # original size, upright


def test_orientation_in_png_and_webp(tmp_path: Path, services: Services) -> None:
    base = marked_picture((90, 60))
    for fmt, suffix in (("PNG", "png"), ("WEBP", "webp"), ("TIFF", "tif")):
        path = save_oriented(tmp_path / f"six.{suffix}", base, 6, fmt)
        ok, job = run_media(path, services)
        assert ok, job.record["errors"]
        assert job.image is not None and job.image.size == (90, 60), fmt
        assert near(corner_colours(job.image)[0], RED), fmt


def test_icc_profile_is_converted_to_srgb(tmp_path: Path, services: Services) -> None:
    icc = swapped_rgb_profile()
    for fmt, suffix in (("JPEG", "jpg"), ("PNG", "png"), ("TIFF", "tif"), ("WEBP", "webp")):
        path = tmp_path / f"tagged.{suffix}"
        Image.new("RGB", (64, 48), RED).save(path, fmt, icc_profile=icc)
        ok, job = run_media(path, services)
        assert ok, job.record["errors"]
        assert job.image is not None
        r, g, b = mean_colour(job.image)
        assert b > 200 and r < 60, (fmt, r, g, b)  # the profile says this red is blue


def test_broken_icc_profile_is_ignored(tmp_path: Path, services: Services) -> None:
    path = tmp_path / "badicc.jpg"
    Image.new("RGB", (32, 32), RED).save(path, icc_profile=b"not a profile at all" * 10)
    ok, job = run_media(path, services)
    assert ok, job.record["errors"]
    assert near(tuple(mean_colour(job.image).round().astype(int)), RED)


def test_large_jpeg_is_reduced_with_draft(tmp_path: Path, services: Services) -> None:
    path = tmp_path / "big.jpg"
    rng = np.random.default_rng(1)
    Image.fromarray(rng.integers(0, 255, (3000, 4000, 3), dtype=np.uint8)).save(path, quality=70)
    ok, job = run_media(path, services)
    assert ok, job.record["errors"]
    assert job.image is not None and job.image.size == (1024, 768)
    assert job.image.mode == "RGB"
    media = job.record["media"]
    assert media == {"kind": "image", "format": "JPEG", "mime": "image/jpeg", "width": 4000,
                     "height": 3000, "frames": 1, "duration": None}


def test_working_size_follows_thumbnail_sizes(tmp_path: Path, settings: Settings) -> None:
    settings.thumbs.sizes = [128, 400]
    path = tmp_path / "mid.png"
    Image.new("RGB", (1000, 500), (10, 200, 30)).save(path)
    ok, job = run_media(path, Services(settings))
    assert ok and job.image is not None and job.image.size == (400, 200)


@pytest.mark.parametrize(
    ("mode", "fmt", "suffix"),
    [("RGBA", "PNG", "png"), ("LA", "PNG", "png"), ("P", "GIF", "gif"), ("L", "BMP", "bmp"),
     ("I;16", "PNG", "png"), ("I;16", "TIFF", "tif"), ("CMYK", "JPEG", "jpg"), ("1", "PNG", "png"),
     ("RGB", "WEBP", "webp"), ("F", "TIFF", "tif"), ("RGBA", "WEBP", "webp")],
)
def test_pixel_modes_become_rgb(tmp_path: Path, services: Services, mode: str, fmt: str,
                                suffix: str) -> None:
    grad = np.tile(np.linspace(0, 1, 64, dtype=np.float64), (48, 1))  # dark left, light right
    if mode == "I;16":
        im = Image.fromarray((grad * 65535).astype(np.uint16))
    elif mode == "F":
        im = Image.fromarray((grad * 3.5 - 1).astype(np.float32))
    else:
        im = Image.fromarray((grad * 255).astype(np.uint8)).convert(mode)
    path = tmp_path / f"mode.{suffix}"
    im.save(path, fmt)
    ok, job = run_media(path, services)
    assert ok, job.record["errors"]
    assert job.image is not None and job.image.mode == "RGB" and job.image.size == (64, 48)
    if mode in ("I;16", "F"):
        grey = np.asarray(job.image.convert("L"), dtype=np.float32)
        assert grey[:, :4].mean() < 20 and grey[:, -4:].mean() > 235  # scaled, not clipped


def test_transparency_is_flattened_on_white(tmp_path: Path, services: Services) -> None:
    path = tmp_path / "clear.png"
    Image.new("RGBA", (40, 40), (255, 0, 0, 0)).save(path)
    ok, job = run_media(path, services)
    assert ok and job.image is not None
    assert job.image.getpixel((20, 20)) == (255, 255, 255)


def test_animated_gif_first_frame_and_frame_count(tmp_path: Path, services: Services) -> None:
    path = tmp_path / "anim.gif"
    frames = [Image.new("RGB", (30, 20), c) for c in (RED, (0, 255, 0), BLUE)]
    frames[0].save(path, save_all=True, append_images=frames[1:], duration=100, loop=0)
    ok, job = run_media(path, services)
    assert ok and job.image is not None
    assert job.record["media"]["frames"] == 3
    assert near(job.image.getpixel((15, 10)), RED)


def test_heif_decodes_and_counts_frames(tmp_path: Path, services: Services) -> None:
    import pillow_heif

    path = tmp_path / "pair.heic"
    heif = pillow_heif.from_pillow(Image.new("RGB", (64, 48), RED))
    heif.add_from_pillow(Image.new("RGB", (64, 48), BLUE))
    heif.save(path, quality=90)
    ok, job = run_media(path, services)
    assert ok, job.record["errors"]
    media = job.record["media"]
    assert (media["format"], media["mime"], media["frames"]) == ("HEIF", "image/heif", 2)
    assert near(job.image.getpixel((32, 24)), RED)


def test_avif_decodes(tmp_path: Path, services: Services) -> None:
    path = tmp_path / "pic.avif"
    marked_picture((96, 64)).save(path, "AVIF", quality=90)
    ok, job = run_media(path, services)
    assert ok, job.record["errors"]
    assert job.record["media"]["format"] == "AVIF" and job.image.size == (96, 64)


def test_content_decides_not_the_extension(tmp_path: Path, services: Services) -> None:
    path = tmp_path / "really_a_jpeg.png"
    Image.new("RGB", (20, 20), BLUE).save(path, "JPEG")
    ok, job = run_media(path, services)
    assert ok and job.record["media"]["format"] == "JPEG"


def test_truncated_jpeg_fails_as_truncated(tmp_path: Path, services: Services) -> None:
    whole = tmp_path / "whole.jpg"
    rng = np.random.default_rng(2)
    Image.fromarray(rng.integers(0, 255, (200, 300, 3), dtype=np.uint8)).save(whole, quality=90)
    cut = tmp_path / "cut.jpg"
    cut.write_bytes(whole.read_bytes()[: whole.stat().st_size // 2])
    ok, job = run_media(cut, services)
    assert not ok and job.record["status"] == "failed"
    assert "truncated" in job.record["error"]


@pytest.mark.parametrize(
    "size", [(20000, 20000), (10000, 10000)], ids=["over-twice-the-limit", "over-the-limit"]
)
def test_decompression_bomb_is_a_failure(tmp_path: Path, services: Services,
                                         size: tuple[int, int]) -> None:
    path = png_claiming(tmp_path / "bomb.png", *size)
    ok, job = run_media(path, services)
    assert not ok
    assert "decompression bomb" in job.record["error"]
    assert "\n" not in job.record["error"]


def test_not_media_and_empty_files_fail_with_reason(tmp_path: Path, services: Services) -> None:
    text = tmp_path / "notes.jpg"
    text.write_text("shopping list\n")
    empty = tmp_path / "empty.heic"
    empty.write_bytes(b"")
    for path in (text, empty):
        ok, job = run_media(path, services)
        assert not ok and "not a supported" in job.record["error"]
        assert job.record["status"] == "skipped"  # not media: nothing to retry or report


def test_garbage_after_a_valid_header_fails_with_reason(tmp_path: Path, services: Services) -> None:
    rng = np.random.default_rng(3)
    for name, head in (("x.jpg", b"\xff\xd8\xff\xe0"), ("x.png", b"\x89PNG\r\n\x1a\n"),
                       ("x.tif", b"II*\0\x08\0\0\0"), ("x.heic", b"\0\0\0\x18ftypheic\0\0\0\0")):
        path = tmp_path / name
        path.write_bytes(head + rng.integers(0, 255, 3000, dtype=np.uint8).tobytes())
        ok, job = run_media(path, services)
        assert not ok and job.record["error"], name


def test_unreadable_file_is_a_decode_error(tmp_path: Path, services: Services) -> None:
    from scanpixd.pipeline.media import decode

    with pytest.raises(DecodeError, match="cannot read"):
        decode(tmp_path / "missing.jpg", services, 1024)


def test_sniff_recognises_containers() -> None:
    assert sniff_bytes(b"\0\0\0\x20ftypM4A \0\0\0\0M4A mp42isom") is None  # audio only
    assert sniff_bytes(b"\0\0\x0f\x17moov\0\0\0lmvhd").format == "MOV"
    webm = b"\x1a\x45\xdf\xa3\x9f\x42\x86\x81\x01\x42\x82\x84webm\x42\x87\x81\x02"
    assert sniff_bytes(webm).format == "WEBM"
    assert sniff_bytes(b"\x1a\x45\xdf\xa3\xa3\x42\x82\x88matroska").format == "MKV"
    assert sniff_bytes(b"\x30\x26\xb2\x75\x8e\x66\xcf\x11" + b"\0" * 8).format == "WMV"
    assert sniff_bytes(b"II\x1a\0\0\0HEAPCCDR").raw
    ts = (b"\x47" + b"\0" * 187) * 4
    assert sniff_bytes(ts).format == "TS"
    assert sniff_bytes(b"G" + b"x" * 187 + b"G" + b"y" * 187 + b"Z" * 200) is None
    dng = b"II*\0\x08\0\0\0\x01\0" + b"\x12\xc6\x01\0\x04\0\0\0\x01\x04\0\0" + b"\0" * 8
    found = sniff_bytes(dng)
    assert found is not None and (found.format, found.raw) == ("DNG", True)


def test_sniff_trusts_a_raw_extension_only_for_tiff_content(tmp_path: Path) -> None:
    tiff = tmp_path / "scan.nef"
    Image.new("RGB", (8, 8)).save(tiff, "TIFF")
    jpeg = tmp_path / "photo.nef"
    Image.new("RGB", (8, 8)).save(jpeg, "JPEG")
    assert sniff(tiff).raw and sniff(tiff).format == "NEF"
    assert sniff(jpeg).format == "JPEG" and not sniff(jpeg).raw


def test_raw_without_preview_falls_back_to_its_tiff_image(tmp_path: Path,
                                                           settings: Settings) -> None:
    settings.exiftool.path = str(tmp_path / "no-exiftool-here")
    path = tmp_path / "scan.nef"
    marked_picture((60, 40)).save(path, "TIFF")
    ok, job = run_media(path, Services(settings))
    assert ok, job.record["errors"]
    assert job.record["media"]["format"] == "NEF" and job.image.size == (60, 40)


def _rotated_preview(orientation: int) -> bytes:
    buffer = io.BytesIO()
    method = INVERSE[orientation]
    base = marked_picture((120, 80))
    (base.transpose(method) if method is not None else base).save(buffer, "JPEG", quality=90)
    return buffer.getvalue()


def test_raw_preview_is_turned_by_the_raw_files_orientation(tmp_path: Path,
                                                             services: Services) -> None:
    path = fake_raw(tmp_path / "DSC_0001.NEF", _rotated_preview(6), orientation=6)
    try:
        ok, job = run_media(path, services)
    finally:
        services.close()
    assert ok, job.record["errors"]
    media = job.record["media"]
    assert (media["kind"], media["format"], media["width"], media["height"]) == ("image", "NEF",
                                                                                  120, 80)
    assert job.image.size == (120, 80)
    top_left, bottom_right = corner_colours(job.image)
    assert near(top_left, RED) and near(bottom_right, BLUE)
    assert job.metadata is not None and job.metadata.get("IFD0:Orientation") == 6  # kept


def test_raw_orientation_comes_from_the_dump_when_there_is_one(tmp_path: Path,
                                                               services: Services) -> None:
    path = fake_raw(tmp_path / "DSC_0002.NEF", _rotated_preview(6), orientation=6)
    job = make_job(path, services.settings)
    job.metadata = {"IFD0:Orientation": 1, "IFD1:Orientation": 6}
    try:
        assert run_stage(MediaStage(services), job), job.record["errors"]
    finally:
        services.close()
    assert job.image.size == (80, 120)  # shown as stored, as the dump says


# -- thumbnails -----------------------------------------------------------------------

def test_thumbnails_are_written_at_each_size(tmp_path: Path, services: Services) -> None:
    path = tmp_path / "photo.jpg"
    save_oriented(path, marked_picture((2000, 1500)), 6)
    job = make_job(path, services.settings)
    assert run_stage(MediaStage(services), job)
    assert run_stage(ThumbsStage(services), job), job.record["errors"]
    key = content_key(job.record)
    # the default "auto" format: WebP grid thumbnails, a JPEG preview
    assert job.record["thumbs"] == {"1024": f"{key}-1024.jpg", "256": f"{key}-256.webp"}
    for size, name in job.record["thumbs"].items():
        path_on_disk = job.folder.asset_path(name)
        assert path_on_disk.parent.name == "thumbs" and ".scanpix" in str(path_on_disk)
        with Image.open(path_on_disk) as thumb:
            assert thumb.format == ("JPEG" if size == "1024" else "WEBP")
            assert max(thumb.size) == int(size)
            assert thumb.size[0] > thumb.size[1]  # the stored portrait data shows landscape
            assert near(corner_colours(thumb)[0], RED)


@pytest.mark.parametrize("fmt, expected", [("webp", "WEBP"), ("jpeg", "JPEG")])
def test_thumbnail_format_setting_applies_to_every_size(tmp_path: Path, services: Services,
                                                        fmt: str, expected: str) -> None:
    services.settings.thumbs.format = fmt
    services.settings.thumbs.sizes = [128, 600, 1024]
    path = tmp_path / "photo.jpg"
    save_oriented(path, marked_picture((1600, 1200)), 1)
    job = make_job(path, services.settings)
    assert run_stage(MediaStage(services), job)
    assert run_stage(ThumbsStage(services), job), job.record["errors"]
    suffix = {"webp": ".webp", "jpeg": ".jpg"}[fmt]
    assert sorted(job.record["thumbs"], key=int) == ["128", "600", "1024"]
    for size, name in job.record["thumbs"].items():
        assert name.endswith(f"-{size}{suffix}")
        with Image.open(job.folder.asset_path(name)) as thumb:
            assert thumb.format == expected and max(thumb.size) == int(size)
            assert near(corner_colours(thumb)[0], RED)


def test_auto_format_keeps_webp_up_to_512_px(tmp_path: Path, services: Services) -> None:
    services.settings.thumbs.sizes = [256, 512, 513, 2048]
    path = tmp_path / "photo.png"
    Image.new("RGB", (3000, 2000), BLUE).save(path)
    job = make_job(path, services.settings)
    assert run_stage(MediaStage(services), job)
    assert run_stage(ThumbsStage(services), job), job.record["errors"]
    suffixes = {size: name.rsplit(".", 1)[1] for size, name in job.record["thumbs"].items()}
    assert suffixes == {"256": "webp", "512": "webp", "513": "jpg", "2048": "jpg"}


def test_thumbnails_never_upscale(tmp_path: Path, services: Services) -> None:
    path = tmp_path / "small.png"
    Image.new("RGB", (200, 100), BLUE).save(path)
    job = make_job(path, services.settings)
    run_stage(MediaStage(services), job)
    assert run_stage(ThumbsStage(services), job)
    for name in job.record["thumbs"].values():
        with Image.open(job.folder.asset_path(name)) as thumb:
            assert thumb.size == (200, 100)


def test_thumbnails_of_an_exact_copy_are_shared(tmp_path: Path, services: Services) -> None:
    first = tmp_path / "a.jpg"
    Image.new("RGB", (300, 200), RED).save(first)
    second = tmp_path / "b.jpg"
    second.write_bytes(first.read_bytes())
    store = Store(services.settings)
    job = make_job(first, services.settings, store)
    run_stage(MediaStage(services), job)
    assert run_stage(ThumbsStage(services), job)
    written = job.folder.asset_path(job.record["thumbs"]["256"])
    before = written.stat().st_mtime_ns
    copy = make_job(second, services.settings, store)  # no decode: the files exist
    assert run_stage(ThumbsStage(services), copy)
    assert copy.image is None
    assert copy.record["thumbs"] == job.record["thumbs"]
    assert written.stat().st_mtime_ns == before


def test_thumbs_decode_the_original_when_media_did_not_run(tmp_path: Path,
                                                           services: Services) -> None:
    path = tmp_path / "late.png"
    Image.new("RGB", (1500, 1000), BLUE).save(path)
    job = make_job(path, services.settings)
    assert run_stage(ThumbsStage(services), job), job.record["errors"]
    with Image.open(job.folder.asset_path(job.record["thumbs"]["1024"])) as thumb:
        assert thumb.size == (1024, 683)


def test_thumbs_version_key_follows_the_sizes(settings: Settings) -> None:
    before = ThumbsStage(Services(settings)).version_key()
    settings.thumbs.sizes = [256, 512, 1024]
    assert ThumbsStage(Services(settings)).version_key() != before


def test_thumbnail_format_is_read_and_checked(tmp_path: Path) -> None:
    from scanpixd.config import load_settings
    from scanpixd.errors import ConfigError

    config = tmp_path / "config.toml"
    config.write_text('[thumbs]\nformat = "jpeg"\n')
    assert load_settings(config, environ={}).thumbs.format == "jpeg"
    assert load_settings(config, environ={"SCANPIX_THUMBS_FORMAT": "webp"}).thumbs.format == "webp"
    config.write_text('[thumbs]\nformat = "png"\n')
    with pytest.raises(ConfigError, match="thumbs.format"):
        load_settings(config, environ={})

"""The hashes stage on real photos: what changes a hash a little, and what changes it a lot."""

from __future__ import annotations

from pathlib import Path

import pytest
from PIL import Image, ImageEnhance, ImageOps

from scanpixd.config import Settings
from scanpixd.duplicates import PRESETS
from scanpixd.pipeline.base import Job, run_stage
from scanpixd.pipeline.hashes import HashesStage, compute_hashes, hamming, parse_hex
from scanpixd.pipeline.services import Services
from scanpixd.record import new_record
from scanpixd.store import FolderStore
from tests.helpers_duplicates import RecordMaker, reencode

BALANCED = PRESETS["balanced"]


def _upright(path: Path, side: int = 1024) -> Image.Image:
    with Image.open(path) as im:
        picture = ImageOps.exif_transpose(im).convert("RGB")
    picture.thumbnail((side, side))
    return picture


def _distances(a: dict[str, str], b: dict[str, str]) -> dict[str, int]:
    return {k: hamming(a[k], b[k]) for k in ("phash", "dhash", "phash8", "dhash8")}


def test_record_fields_from_the_stage(settings: Settings, corpora: Path, tmp_path: Path) -> None:
    maker = RecordMaker(settings, tmp_path)
    record = maker.record(corpora / "exif-samples/jpg/gps/DSCN0010.jpg")
    hashes = record["hashes"]
    assert [len(hashes[k]) for k in ("phash", "dhash", "phash8", "dhash8")] == [64, 64, 16, 16]
    assert hashes["detail"] > 5
    assert record["stages"]["hashes"] == HashesStage.version
    assert "hashes" not in record["errors"]


def test_stage_without_a_picture_fails_with_a_reason(settings: Settings, tmp_path: Path) -> None:
    record = new_record("gone.jpg", 1, 1, "b2:00")
    job = Job(tmp_path / "gone.jpg", FolderStore(tmp_path, tmp_path / ".d", [tmp_path / ".d"]),
              record)
    assert not run_stage(HashesStage(Services(settings)), job)
    assert "no decoded picture" in record["errors"]["hashes"]


@pytest.mark.parametrize("change", ["jpeg q35", "webp q30", "heif q40", "resize 30%", "tone"])
def test_copies_stay_within_the_near_thresholds(corpora: Path, change: str) -> None:
    original = _upright(corpora / "exif-samples/jpg/gps/DSCN0010.jpg")
    kind, _, amount = change.partition(" ")
    if kind == "resize":
        copy = original.resize((original.width * 3 // 10, original.height * 3 // 10))
    elif kind == "tone":
        copy = ImageEnhance.Contrast(ImageEnhance.Brightness(original).enhance(1.2)).enhance(1.2)
    else:
        copy = reencode(original, {"jpeg": "JPEG", "webp": "WEBP", "heif": "HEIF"}[kind],
                        int(amount[1:]))
    d = _distances(compute_hashes(original), compute_hashes(copy))
    assert d["phash"] <= BALANCED.fine_phash and d["dhash"] <= BALANCED.fine_dhash, d


def test_a_small_crop_keeps_only_the_coarse_hashes_close(corpora: Path) -> None:
    original = _upright(corpora / "face_recognition/examples/obama-1080p.jpg")
    w, h = original.size
    cropped = original.crop((w * 3 // 100, h * 3 // 100, w - w * 3 // 100, h - h * 3 // 100))
    d = _distances(compute_hashes(original), compute_hashes(cropped))
    assert d["phash8"] <= BALANCED.crop_phash8 and d["dhash8"] <= BALANCED.crop_dhash8, d
    assert d["phash"] > BALANCED.fine_phash  # why crops need the coarse rule


def test_unrelated_photos_are_far_apart(corpora: Path) -> None:
    names = ["exif-samples/jpg/gps/DSCN0010.jpg", "exif-samples/jpg/gps/DSCN0012.jpg",
             "face_recognition/examples/biden.jpg", "exif-samples/jpg/Canon_40D.jpg",
             "exif-samples/jpg/orientation/landscape_1.jpg",
             "exif-samples/jpg/orientation/portrait_1.jpg"]
    hashes = [compute_hashes(_upright(corpora / n)) for n in names]
    for i in range(len(hashes)):
        for j in range(i + 1, len(hashes)):
            d = _distances(hashes[i], hashes[j])
            assert d["phash"] > 3 * BALANCED.fine_phash, (names[i], names[j], d)
            assert d["dhash"] > 1.5 * BALANCED.fine_dhash, (names[i], names[j], d)


def test_transparency_is_flattened_on_white() -> None:
    cut_out = Image.new("RGBA", (300, 200), (0, 0, 0, 0))
    cut_out.paste(Image.new("RGBA", (120, 80), (200, 30, 30, 255)), (40, 60))
    flat = Image.new("RGB", (300, 200), "white")
    flat.paste(Image.new("RGB", (120, 80), (200, 30, 30)), (40, 60))
    assert compute_hashes(cut_out) == compute_hashes(flat)


@pytest.mark.parametrize("size", [(1, 1), (2, 3), (4000, 2), (3, 900)])
def test_odd_sizes_hash_without_error(size: tuple[int, int]) -> None:
    hashes = compute_hashes(Image.new("RGB", size, (90, 120, 200)))
    assert len(hashes["phash"]) == 64 and hashes["detail"] == 0.0


def test_empty_picture_is_refused() -> None:
    with pytest.raises(ValueError, match="no pixels"):
        compute_hashes(Image.new("RGB", (0, 0)))


def test_helpers_read_and_compare_stored_hashes() -> None:
    assert hamming("ff00", "0f00") == 4
    assert parse_hex("ab" * 32, 256) == bytes([0xAB] * 32)
    assert parse_hex("ab", 256) is None and parse_hex("zz" * 32, 256) is None
    assert parse_hex(None, 64) is None
    with pytest.raises(ValueError):
        hamming("ff", "ffff")

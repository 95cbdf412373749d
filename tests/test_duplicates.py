"""Grouping real photos: copies, near-duplicates and bursts found; unrelated photos left alone."""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Iterator
from pathlib import Path

import pillow_heif
import pytest
from PIL import Image, ImageEnhance, ImageFilter, ImageOps

from scanpixd.config import Settings
from scanpixd.duplicates import DuplicateItem, Group, find_groups
from tests.conftest import CORPORA
from tests.helpers_duplicates import (
    RecordMaker,
    exif_taken,
    groups_as_names,
    save_jpeg,
    taken,
)

BIRD_BURST = "pillow_heif/tests/images/heif_other/nokia/bird_burst.heic"
ORIENTATION = "exif-samples/jpg/orientation"
OBAMA = [f"face_recognition/examples/obama-{r}.jpg" for r in ("240p", "480p", "720p", "1080p")]


def _quiet_settings() -> Settings:
    settings = Settings()
    settings.clip.enabled = settings.faces.enabled = False
    return settings


@pytest.fixture(scope="module")
def library(tmp_path_factory: pytest.TempPathFactory) -> Iterator[list[DuplicateItem]]:
    """Records of ~70 real photos: camera samples, a GPS series, the orientation set,
    HDR pairs, portraits; capture times read from their EXIF as the metadata stage would."""
    if not CORPORA.is_dir():
        pytest.skip("the shared corpora are not beside the project")
    jpg = CORPORA / "exif-samples/jpg"
    paths = sorted(jpg.glob("*.jpg")) + sorted((jpg / "gps").glob("*.jpg"))
    paths += sorted((jpg / "orientation").glob("*.jpg")) + sorted((jpg / "hdr").glob("*.jpg"))
    paths += sorted((CORPORA / "face_recognition/examples").glob("*.jpg"))
    paths += sorted((CORPORA / "metadata-extractor-images/jpg").glob("*.jpg"))[:12]
    maker = RecordMaker(_quiet_settings(), tmp_path_factory.mktemp("records"))
    yield [DuplicateItem(maker.record(p, **exif_taken(p)), p) for p in paths]
    maker.close()


def _rel(group: Group) -> set[str]:
    return {str(Path(m.path).relative_to(CORPORA)) for m in group.members}


def test_library_groups_are_exactly_the_known_ones(library: list[DuplicateItem]) -> None:
    groups = find_groups(library, _quiet_settings())
    found = sorted(sorted(_rel(g)) for g in groups)
    expected = sorted([
        sorted(f"{ORIENTATION}/landscape_{i}.jpg" for i in range(1, 9)),
        sorted(f"{ORIENTATION}/portrait_{i}.jpg" for i in range(1, 9)),
        sorted(OBAMA),
        ["exif-samples/jpg/hdr/iphone_hdr_NO.jpg", "exif-samples/jpg/hdr/iphone_hdr_YES.jpg"],
    ])
    assert found == expected


@pytest.mark.parametrize("preset", ["strict", "balanced", "loose"])
def test_different_scenes_of_one_afternoon_never_group(library: list[DuplicateItem],
                                                       preset: str) -> None:
    settings = _quiet_settings()
    settings.duplicates.preset = preset  # type: ignore[assignment]
    settings.duplicates.burst_window = 3600.0  # the whole GPS series within one window
    for group in find_groups(library, settings):
        assert not any("/gps/" in p for p in _rel(group)), _rel(group)
        assert not any(p.startswith("metadata-extractor") for p in _rel(group))


def test_eight_exif_orientations_group_as_one(library: list[DuplicateItem]) -> None:
    chosen = [i for i in library if "/orientation/landscape_" in str(i.path)]
    (group,) = find_groups(chosen, _quiet_settings())
    assert group.kind == "near" and len(group.members) == 8


def test_resized_copies_group_and_the_largest_is_best(library: list[DuplicateItem]) -> None:
    chosen = [i for i in library if "obama-" in i.path.name]
    (group,) = find_groups(chosen, _quiet_settings())
    assert group.kind == "near"
    assert group.best.path.name == "obama-1080p.jpg"
    assert "highest resolution" in group.members[0].reasons
    assert all("lower resolution" in m.reasons for m in group.members[1:])


def test_exact_copies_group_as_exact(tmp_path: Path) -> None:
    source = CORPORA / "exif-samples/jpg/gps/DSCN0012.jpg"
    if not source.exists():
        pytest.skip("the shared corpora are not beside the project")
    copies = [tmp_path / "a" / "DSCN0012.jpg", tmp_path / "b" / "copy of DSCN0012.jpg"]
    for i, target in enumerate(copies):
        target.parent.mkdir()
        shutil.copyfile(source, target)
        os.utime(target, ns=(1_600_000_000_000_000_000 + i, 1_600_000_000_000_000_000 + i))
    maker = RecordMaker(_quiet_settings(), tmp_path)
    items = maker.items(copies) + maker.items([CORPORA / "exif-samples/jpg/gps/DSCN0010.jpg"])
    (group,) = find_groups(items, _quiet_settings())
    assert group.kind == "exact" and group.best.path == copies[0]
    assert group.members[0].reasons == ["oldest file"]
    assert group.members[1].reasons == ["exact copy of the best"]
    assert find_groups(items, _quiet_settings(), kinds={"exact"})[0].kind == "exact"


def _bird_frames(tmp_path: Path) -> list[Path]:
    heif = pillow_heif.open_heif(CORPORA / BIRD_BURST)
    return [save_jpeg(frame.to_pillow(), tmp_path / f"bird_{i}.jpg")
            for i, frame in enumerate(heif)]


def test_burst_frames_a_second_apart_form_a_burst(tmp_path: Path) -> None:
    if not (CORPORA / BIRD_BURST).exists():
        pytest.skip("the shared corpora are not beside the project")
    frames = _bird_frames(tmp_path)
    maker = RecordMaker(_quiet_settings(), tmp_path)
    items = [DuplicateItem(maker.record(p, **taken(f"2021-04-03T09:15:0{i}")), p)
             for i, p in enumerate(frames)]
    (group,) = find_groups(items, _quiet_settings())
    assert group.kind == "burst" and len(group.members) == 4
    # Different exposures are not duplicates of each other.
    assert find_groups(items, _quiet_settings(), kinds={"near"}) == []
    # Too far apart in time, or from two cameras: not a burst.
    settings = _quiet_settings()
    settings.duplicates.burst_window = 0.5
    assert find_groups(items, settings, kinds={"burst"}) == []
    two_cameras = [DuplicateItem(maker.record(p, **taken(f"2021-04-03T09:15:0{i}", f"C{i}")), p)
                   for i, p in enumerate(frames)]
    assert find_groups(two_cameras, _quiet_settings(), kinds={"burst"}) == []


def test_heic_and_its_jpeg_conversion_are_near_duplicates(tmp_path: Path) -> None:
    heic = CORPORA / "metadata-extractor-images/heic/IMG_2927.HEIC"
    if not heic.exists():
        pytest.skip("the shared corpora are not beside the project")
    pillow_heif.register_heif_opener()
    with Image.open(heic) as im:
        converted = save_jpeg(ImageOps.exif_transpose(im), tmp_path / "IMG_2927.jpg", 80)
    maker = RecordMaker(_quiet_settings(), tmp_path)
    (group,) = find_groups(maker.items([heic, converted]), _quiet_settings())
    assert group.kind == "near" and len(group.members) == 2


def test_crops_and_edits_of_one_moment_group(tmp_path: Path) -> None:
    source = CORPORA / "exif-samples/jpg/gps/DSCN0029.jpg"
    if not source.exists():
        pytest.skip("the shared corpora are not beside the project")
    with Image.open(source) as im:
        picture = im.convert("RGB")
    w, h = picture.size
    edits = {
        "crop.jpg": picture.crop((w // 25, h // 25, w - w // 25, h - h // 25)),
        "warm.jpg": ImageEnhance.Color(ImageEnhance.Brightness(picture).enhance(1.15)).enhance(1.3),
        "small.jpg": picture.resize((w // 3, h // 3)),
    }
    paths = [source] + [save_jpeg(image, tmp_path / name, 85) for name, image in edits.items()]
    maker = RecordMaker(_quiet_settings(), tmp_path)
    moment = taken("2008-10-22T16:46:53", "COOLPIX P6000")
    items = [DuplicateItem(maker.record(p, **moment), p) for p in paths]
    (group,) = find_groups(items, _quiet_settings())
    assert group.kind == "near" and len(group.members) == 4
    # Without a shared capture time the crop is too far for the 256-bit hashes alone.
    bare = maker.items(paths)
    (group,) = find_groups(bare, _quiet_settings())
    assert {Path(m.path).name for m in group.members} == {"DSCN0029.jpg", "warm.jpg",
                                                          "small.jpg"}


def test_a_sharp_photo_beats_its_blurred_copy(tmp_path: Path) -> None:
    source = CORPORA / "exif-samples/jpg/gps/DSCN0040.jpg"
    if not source.exists():
        pytest.skip("the shared corpora are not beside the project")
    with Image.open(source) as im:
        blurred = save_jpeg(im.filter(ImageFilter.GaussianBlur(2.5)), tmp_path / "blurred.jpg")
    maker = RecordMaker(_quiet_settings(), tmp_path)
    (group,) = find_groups(maker.items([blurred, source]), _quiet_settings())
    assert group.best.path == source
    assert "sharpest" in group.members[0].reasons
    assert "less sharp" in group.members[1].reasons


def test_eyes_open_wins_a_burst(tmp_path: Path) -> None:
    if not (CORPORA / BIRD_BURST).exists():
        pytest.skip("the shared corpora are not beside the project")
    frames = _bird_frames(tmp_path)[1:3]
    maker = RecordMaker(_quiet_settings(), tmp_path)
    face = {"box": [0.2, 0.6, 0.5, 0.4], "smile": 0.4, "sharpness": 150.0, "size": 0.06}
    items = []
    for i, (path, eyes) in enumerate(zip(frames, (0.31, 0.11), strict=True)):
        record = maker.record(path, faces=[dict(face, eyes_open=eyes)],
                              **taken(f"2021-04-03T09:15:0{i}"))
        items.append(DuplicateItem(record, path))
    for order in (items, items[::-1]):
        (group,) = find_groups(order, _quiet_settings())
        assert group.best.path == frames[0]
        assert "eyes open" in group.members[0].reasons
        assert "eyes closed" in group.members[1].reasons


def test_output_is_json(library: list[DuplicateItem]) -> None:
    groups = find_groups([i for i in library if "obama-" in i.path.name], _quiet_settings())
    data = json.loads(json.dumps([g.to_dict() for g in groups]))
    assert set(data[0]) == {"kind", "best", "members"}
    assert data[0]["best"] == data[0]["members"][0]["path"]
    assert set(data[0]["members"][0]) == {"path", "score", "reasons"}


def test_unknown_kind_is_refused(library: list[DuplicateItem]) -> None:
    with pytest.raises(ValueError, match="'similar'"):
        find_groups(library[:2], _quiet_settings(), kinds={"near", "similar"})


def test_groups_by_kind(library: list[DuplicateItem]) -> None:
    items = [i for i in library if "obama-" in i.path.name or "iphone_hdr" in i.path.name]
    assert find_groups(items, _quiet_settings(), kinds={"exact"}) == []
    assert groups_as_names(find_groups(items, _quiet_settings(), kinds={"burst"})) == [
        ("burst", {"iphone_hdr_NO.jpg", "iphone_hdr_YES.jpg"})]
    assert [g.kind for g in find_groups(items, _quiet_settings(), kinds={"near"})] == ["near"]


def test_copies_turned_or_mirrored_without_exif_orientation_group(tmp_path: Path) -> None:
    source = CORPORA / "exif-samples/jpg/gps/DSCN0025.jpg"
    if not source.exists():
        pytest.skip("the shared corpora are not beside the project")
    with Image.open(source) as im:
        picture = im.convert("RGB")
    turns = {"sideways.jpg": Image.Transpose.ROTATE_90,
             "mirrored.jpg": Image.Transpose.FLIP_LEFT_RIGHT,
             "upside-down.jpg": Image.Transpose.ROTATE_180}
    paths = [source] + [save_jpeg(picture.transpose(t), tmp_path / n) for n, t in turns.items()]
    others = sorted((CORPORA / "exif-samples/jpg/gps").glob("*.jpg"))
    maker = RecordMaker(_quiet_settings(), tmp_path)
    items = maker.items(paths + [p for p in others if p != source])
    (group,) = find_groups(items, _quiet_settings())
    assert {Path(m.path).name for m in group.members} == {p.name for p in paths}
    settings = _quiet_settings()
    settings.duplicates.turned = False
    assert find_groups(items, settings) == []

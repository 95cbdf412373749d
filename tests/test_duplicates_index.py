"""Grouping rules and the hash index, on made-up hashes where distances are known exactly."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from scanpixd.config import DuplicateSettings, Settings, load_settings
from scanpixd.duplicates import PRESETS, DuplicateItem, find_groups, thresholds
from scanpixd.record import encode_vector
from tests.helpers_duplicates import HashMaker


def _pairs_found(groups: list, items: list[DuplicateItem]) -> set[frozenset[str]]:
    found = set()
    for g in groups:
        paths = [m.path for m in g.members]
        found |= {frozenset((a, b)) for a in paths for b in paths if a < b}
    return found


def test_index_finds_every_pair_within_15_bits_and_nothing_else() -> None:
    maker = HashMaker(1)
    items, planted = [], []
    for _ in range(2000):
        items.append(maker.item(maker.photo()))
    for _ in range(150):
        base = maker.photo()
        a, b = maker.item(base), maker.item(maker.variant(base, 15, 4))
        items += [a, b]
        planted.append(frozenset((str(a.path), str(b.path))))
    groups = find_groups(items, Settings())
    assert all(g.kind == "near" and len(g.members) == 2 for g in groups)
    assert _pairs_found(groups, items) == set(planted)


def test_index_recall_near_the_threshold() -> None:
    maker = HashMaker(2)
    items = [maker.item(maker.photo()) for _ in range(500)]
    pairs = 200
    for _ in range(pairs):
        base = maker.photo()
        items += [maker.item(base), maker.item(maker.variant(base, 24, 4))]
    found = len(find_groups(items, Settings()))
    assert found >= 0.97 * pairs, found  # one shared chunk of either hash is enough


def test_identical_hashes_in_numbers_group_once() -> None:
    maker = HashMaker(3)
    base = maker.photo()
    items = [maker.item(base) for _ in range(300)] + [maker.item(maker.photo())]
    (group,) = find_groups(items, Settings())
    assert len(group.members) == 300


def test_members_may_not_drift_apart_along_a_chain() -> None:
    maker = HashMaker(4)
    a = maker.photo()
    b = maker.variant(a, 22)
    c = maker.variant(b, 22)  # ~44 from a: beyond chain × threshold
    items = [maker.item(a), maker.item(b), maker.item(c)]
    groups = find_groups(items, Settings())
    assert len(groups) == 1 and len(groups[0].members) == 2


def _clip(vector: np.ndarray, model: str = "ViT-B-32:test") -> dict:
    return {"clip": {"model": model, "dim": vector.size,
                     "vectors": [{"time": None, "v": encode_vector(vector)}]}}


def test_clip_confirms_and_vetoes_but_never_groups_alone() -> None:
    maker = HashMaker(5)
    rng = np.random.default_rng(0)
    v = rng.normal(size=64)
    other = rng.normal(size=64)
    base = maker.photo()
    twin = maker.variant(base, 6, 2)
    agreeing = [maker.item(base, **_clip(v)), maker.item(twin, **_clip(v + 0.01))]
    assert len(find_groups(agreeing, Settings())) == 1
    disagreeing = [maker.item(base, **_clip(v)), maker.item(twin, **_clip(other))]
    assert find_groups(disagreeing, Settings()) == []
    settings = Settings()
    settings.duplicates.clip_confirm = False
    assert len(find_groups(disagreeing, settings)) == 1
    other_model = [maker.item(base, **_clip(v)), maker.item(twin, **_clip(other, "RN50:x"))]
    assert len(find_groups(other_model, Settings())) == 1
    clip_only = [maker.item(maker.photo(), **_clip(v)), maker.item(maker.photo(), **_clip(v))]
    assert find_groups(clip_only, Settings()) == []


def test_blank_pictures_are_not_grouped_by_look_but_copies_still_are() -> None:
    maker = HashMaker(6)
    blank = maker.photo()
    items = [maker.item(blank, detail=0.3), maker.item(blank, detail=0.4)]
    assert find_groups(items, Settings()) == []
    copy = maker.item(blank, detail=0.3)
    copy.record["hash"] = items[0].record["hash"]
    (group,) = find_groups([items[0], copy], Settings())
    assert group.kind == "exact"


def test_broken_hashes_and_videos_are_skipped() -> None:
    maker = HashMaker(7)
    base = maker.photo()
    good = maker.item(base)
    short = maker.item(base)
    short.record["hashes"]["phash"] = "abc"
    not_hex = maker.item(base)
    not_hex.record["hashes"]["dhash"] = "zz" * 32
    no_detail = maker.item(base)
    del no_detail.record["hashes"]["detail"]
    video = maker.item(base)
    video.record["media"]["kind"] = "video"
    missing = DuplicateItem({"name": "x.jpg"}, Path("/photos/x.jpg"))
    assert find_groups([good, short, not_hex, no_detail, video, missing], Settings()) == []


def test_capture_times_in_utc_and_local() -> None:
    maker = HashMaker(8)
    base = maker.photo()
    frame = maker.variant(base, 30, 6)  # a different frame: too far for a near-duplicate
    utc = [maker.item(base, taken={"utc": "2023-05-01T10:00:00Z"}),
           maker.item(frame, taken={"utc": "2023-05-01T12:00:04+02:00"})]
    (group,) = find_groups(utc, Settings())
    assert group.kind == "burst"
    mixed = [maker.item(base, taken={"utc": "2023-05-01T10:00:00Z",
                                     "local": "2023-05-01T12:00:00"}),
             maker.item(frame, metadata={"taken_local": "2023-05-01T12:00:03"})]
    assert [g.kind for g in find_groups(mixed, Settings())] == ["burst"]
    apart = [maker.item(base, taken={"utc": "2023-05-01T10:00:00Z"}),
             maker.item(frame, taken={"utc": "2023-05-01T10:01:00Z"})]
    assert find_groups(apart, Settings()) == []
    bad_time = [maker.item(base, taken={"utc": "yesterday"}),
                maker.item(frame, metadata={"taken_local": 20230501})]
    assert find_groups(bad_time, Settings()) == []


def test_sub_seconds_tell_burst_frames_from_copies() -> None:
    maker = HashMaker(9)
    base = maker.photo()
    near = maker.variant(base, 8, 2)
    same = [maker.item(base, metadata={"taken_local": "2023-05-01T12:00:00.120"}),
            maker.item(near, metadata={"taken_local": "2023-05-01T12:00:00"})]
    assert [g.kind for g in find_groups(same, Settings())] == ["near"]
    frames = [maker.item(base, metadata={"taken_local": "2023-05-01T12:00:00.120"}),
              maker.item(near, metadata={"taken_local": "2023-05-01T12:00:00.480"})]
    assert [g.kind for g in find_groups(frames, Settings())] == ["burst"]


def test_presets_and_overrides(tmp_path: Path) -> None:
    strict, balanced, loose = PRESETS["strict"], PRESETS["balanced"], PRESETS["loose"]
    assert strict.fine_phash < balanced.fine_phash < loose.fine_phash
    assert strict.burst_phash < balanced.burst_phash < loose.burst_phash
    assert strict.clip_near > balanced.clip_near > loose.clip_near
    config = tmp_path / "config.toml"
    config.write_text('[duplicates]\npreset = "strict"\nnear_distance = 8\nburst_distance = 88\n'
                      "burst_window = 2.5\nclip_confirm = false\n")
    section = load_settings(config, environ={}).duplicates
    limits = thresholds(section)
    assert (limits.fine_phash, limits.burst_phash) == (8, 88)
    assert limits.fine_dhash == round(strict.fine_dhash * 8 / strict.fine_phash)
    assert section.burst_window == 2.5 and section.clip_confirm is False
    env = load_settings(config, environ={"SCANPIX_DUPLICATES_PRESET": "loose"}).duplicates
    assert env.preset == "loose"
    assert thresholds(DuplicateSettings()) == balanced


def test_a_larger_library_finds_its_planted_groups() -> None:
    maker = HashMaker(10)
    items = [maker.item(maker.photo()) for _ in range(12000)]
    planted = []
    for _ in range(100):
        base = maker.photo()
        group = [maker.item(base)] + [maker.item(maker.variant(base, 4, 1)) for _ in range(2)]
        items += group
        planted.append(sorted(str(i.path) for i in group))
    settings = Settings()
    for preset in ("strict", "balanced", "loose"):
        settings.duplicates.preset = preset
        groups = find_groups(items, settings)
        assert sorted(sorted(m.path for m in g.members) for g in groups) == sorted(planted)

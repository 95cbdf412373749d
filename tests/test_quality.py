"""The quality stage and the best-shot rules, on real photos and their edited copies."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import pytest
from PIL import Image, ImageEnhance, ImageFilter, ImageOps

from scanpixd.config import Settings
from scanpixd.pipeline.quality import (
    QualityStage,
    explain,
    exposure_score,
    measure,
    score_shots,
)
from scanpixd.record import Record
from tests.helpers_duplicates import RecordMaker, save_jpeg


def _upright(path: Path) -> Image.Image:
    with Image.open(path) as im:
        picture = ImageOps.exif_transpose(im).convert("RGB")
    picture.thumbnail((1024, 1024))
    return picture


@pytest.fixture
def street(corpora: Path) -> Image.Image:
    return _upright(corpora / "exif-samples/jpg/gps/DSCN0010.jpg")


def test_stage_records_sharpness_exposure_and_original_size(
    settings: Settings, corpora: Path, tmp_path: Path
) -> None:
    record = RecordMaker(settings, tmp_path).record(
        corpora / "face_recognition/examples/obama-1080p.jpg")
    quality = record["quality"]
    assert (quality["width"], quality["height"]) == (1920, 1080)  # not the working size
    assert quality["sharpness"] > 0 and quality["focus"] >= quality["sharpness"] * 0.5
    assert 0 < quality["brightness"] < 1 and 0 <= quality["exposure"] <= 1
    assert record["stages"]["quality"] == QualityStage.version


def test_blur_lowers_sharpness(street: Image.Image) -> None:
    sharp = measure(street)
    soft = measure(street.filter(ImageFilter.GaussianBlur(2)))
    assert soft["sharpness"] < sharp["sharpness"] / 3
    assert soft["focus"] < sharp["focus"] / 3


def test_a_small_copy_reads_less_sharp_than_its_original(street: Image.Image) -> None:
    small = street.resize((street.width // 4, street.height // 4))
    assert measure(small)["focus"] < measure(street)["focus"] / 2


@pytest.mark.parametrize("factor", [2.5, 0.25])
def test_bad_exposure_scores_lower(street: Image.Image, factor: float) -> None:
    good = measure(street)["exposure"]
    bad = measure(ImageEnhance.Brightness(street).enhance(factor))
    assert bad["exposure"] < good - 0.2, bad
    assert (bad["clipped_high"] > 0.2) if factor > 1 else (bad["brightness"] < 0.2)


def test_exposure_score_bounds() -> None:
    assert exposure_score(0.47, 0.2, 0.0, 0.0) == 1.0
    assert exposure_score(1.0, 0.0, 1.0, 0.0) == 0.0
    assert 0 < exposure_score(0.2, 0.15, 0.0, 0.1) < 1


def _shot(focus: float = 500.0, exposure: float = 0.9, size: tuple[int, int] = (4000, 3000),
          faces: list[dict[str, Any]] | None = None) -> Record:
    record: Record = {"quality": {"focus": focus, "exposure": exposure, "width": size[0],
                                  "height": size[1]}}
    if faces is not None:
        record["faces"] = faces
    return record


def _face(eyes: float | bool = 0.3, smile: float = 0.4, sharpness: float = 200.0,
          size: float = 0.05) -> dict[str, Any]:
    return {"box": [0.1, 0.6, 0.4, 0.4], "eyes_open": eyes, "smile": smile,
            "sharpness": sharpness, "size": size, "score": 1.5}


def _best(records: list[Record]) -> tuple[int, list[list[str]]]:
    scores = score_shots(records)
    best = max(range(len(records)), key=lambda i: scores[i])
    return best, explain(records, best)


def test_sharp_beats_blurred(settings: Settings, street: Image.Image, tmp_path: Path) -> None:
    maker = RecordMaker(settings, tmp_path)
    sharp = maker.record(save_jpeg(street, tmp_path / "sharp.jpg"))
    blurred = maker.record(save_jpeg(street.filter(ImageFilter.GaussianBlur(3)),
                                     tmp_path / "blurred.jpg"))
    best, reasons = _best([blurred, sharp])
    assert best == 1
    assert "sharpest" in reasons[1] and "less sharp" in reasons[0]


def test_eyes_open_beats_eyes_closed_even_when_slightly_softer() -> None:
    closed = _shot(focus=520, faces=[_face(eyes=0.12)])
    open_ = _shot(focus=480, faces=[_face(eyes=0.31)])
    best, reasons = _best([closed, open_])
    assert best == 1
    assert "eyes open" in reasons[1] and "eyes closed" in reasons[0]


def test_eyes_as_booleans_and_the_main_faces_only() -> None:
    passer_by = _face(eyes=False, size=0.002)
    closed = _shot(faces=[_face(eyes=False), passer_by])
    open_ = _shot(faces=[_face(eyes=True), passer_by])
    best, reasons = _best([closed, open_])
    assert best == 1 and reasons[0] == ["eyes closed"]


def test_smile_and_face_sharpness_decide_between_open_eyes() -> None:
    plain = _shot(faces=[_face(smile=0.36, sharpness=90)])
    smiling = _shot(faces=[_face(smile=0.55, sharpness=260)])
    best, reasons = _best([plain, smiling])
    assert best == 1
    assert {"smiling", "sharpest faces"} <= set(reasons[1])
    assert {"not smiling", "blurrier faces"} <= set(reasons[0])


def test_a_frame_where_the_face_is_not_seen_loses() -> None:
    turned = _shot(focus=600, faces=[])
    facing = _shot(focus=550, faces=[_face()])
    best, reasons = _best([turned, facing])
    assert best == 1 and "faces not visible" in reasons[0]


def test_resolution_and_exposure_reasons() -> None:
    big = _shot(size=(4000, 3000), exposure=0.95)
    small = _shot(size=(1600, 1200), exposure=0.6)
    best, reasons = _best([small, big])
    assert best == 1
    assert reasons[1] == ["highest resolution", "best exposure"]
    assert reasons[0] == ["lower resolution", "worse exposure"]


def test_identical_members_score_alike_and_missing_fields_are_tolerated() -> None:
    one = _shot()
    assert score_shots([one, copy.deepcopy(one)]) == [1.0, 1.0]
    odd: Record = {"quality": {"focus": "high", "exposure": float("nan")},
                   "faces": [None, {"eyes_open": None, "box": "x"}], "media": {}}
    scores = score_shots([odd, _shot()])
    assert len(scores) == 2 and scores[1] >= scores[0]
    assert explain([odd, {}], 0) == [[], []]

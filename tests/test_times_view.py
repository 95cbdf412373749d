"""Time inference answers the same on a record's times view as on the whole record.

The library-wide time pass lists the machine-local times view of every record
(:func:`scanpixd.store.record_cache.times_view`), which keeps only what
:func:`scanpixd.timeinfer.infer_times` reads and the ``taken`` it compares with.  A rule
that starts reading something else must fail here, not quietly answer from less.
"""

from __future__ import annotations

import copy
import shutil
from pathlib import Path

import pytest

from scanpixd.config import Settings
from scanpixd.indexer import Indexer
from scanpixd.record import Record
from scanpixd.store import Store
from scanpixd.store.record_cache import TIMES_FIELDS, TIMES_PARTS, times_view
from scanpixd.timeinfer import infer_times
from tests.helpers_timeplace import corpus_root, make_record, write_tags

ROME = (41.9, 12.5)
NEW_YORK = (40.7128, -74.0060)


def _records() -> list[tuple[str, Record]]:
    """Every rule of the pass, in records that also carry what the view leaves out."""
    rows = [
        ("offset.jpg", make_record("2021-07-01T10:00:00", offset="+02:00", gps=ROME)),
        ("gps.jpg", make_record("2021-07-01T11:00:00", gps=ROME)),
        ("same-camera.jpg", make_record("2021-07-01T12:00:00")),
        ("other-camera.jpg", make_record("2021-07-01T12:05:00", camera="Canon R6")),
        ("new-york.jpg", make_record("2021-07-01T11:50:00", gps=NEW_YORK, camera="Canon R6")),
        ("far.jpg", make_record("2021-09-01T12:00:00", camera="Sony A7")),
        ("video.mp4", make_record(utc="2021-07-01T09:30:00Z", gps=ROME)),
        ("utc-only.mp4", make_record(utc="2021-03-01T09:30:00Z", camera="")),
        ("nothing.jpg", make_record()),
        ("failed.jpg", {**make_record("2021-07-01T12:00:00"), "status": "failed"}),
    ]
    for i, (_, record) in enumerate(rows):
        record["metadata"].update({"source": "exiftool", "lens": "50mm", "raw": {"EXIF:X": i}})
        record.update({"media": {"kind": "image", "width": 4000}, "faces": [{"box": [0, 0, 1, 1]}],
                       "quality": {"sharpness": 0.5}, "stages": {"media": 1}})
    rows[1][1]["place"] = {"timezone": "Europe/Rome", "city": "Rome"}
    rows[2][1]["taken"] = {"source": "home", "timezone": "UTC"}  # stale: must be replaced
    return rows


@pytest.mark.parametrize("home", ["", "Europe/Berlin"])
def test_the_view_gives_the_same_answers(home: str) -> None:
    settings = Settings()
    settings.time.home_timezone = home
    whole = _records()
    viewed = [(key, times_view(copy.deepcopy(record))) for key, record in whole]
    expected = infer_times(whole, settings)
    assert expected == infer_times(viewed, settings)
    rules = {"offset-tag", "gps", "neighbour", *(["home"] if home else ["utc-tag", "unknown"])}
    assert {taken["source"] for taken in expected.values()} >= rules
    for key, taken in expected.items():  # written back: both find nothing more to change
        dict(whole)[key]["taken"] = taken
        dict(viewed)[key]["taken"] = taken
    assert infer_times(whole, settings) == infer_times(viewed, settings) == {}


def test_the_view_keeps_nothing_the_pass_does_not_read() -> None:
    view = times_view(_records()[1][1])
    assert set(view) <= TIMES_FIELDS
    assert set(view["metadata"]) <= TIMES_PARTS["metadata"] and "raw" not in view["metadata"]
    assert view["place"] == {"timezone": "Europe/Rome"}


def test_indexed_corpus_records_answer_the_same_from_the_cached_view(
        settings: Settings, tmp_path: Path) -> None:
    """Real records, as the cheap tier writes them, read back through the listing cache."""
    source = corpus_root() / "exif-samples/jpg/gps"
    root = tmp_path / "lib"
    root.mkdir()
    for photo in sorted(source.glob("*.jpg"))[:4]:
        shutil.copyfile(photo, root / photo.name)
    bare = root / "bare.jpg"
    shutil.copyfile(source / "DSCN0010.jpg", bare)
    write_tags(bare, "-gps:all=", "-DateTimeOriginal=2008:10:22 17:28:39")
    settings.roots = [root]
    indexer = Indexer(settings)
    try:
        indexer.index([root])
    finally:
        indexer.close()
    folder = Store(settings).folder(root)
    whole = {name: record for name, record in folder.records().items()}
    for record in whole.values():
        record.pop("taken", None)  # as before the first pass
    viewed = {name: times_view(record) for name, record in
              folder.records(full=False, view="times").items()}
    for record in viewed.values():
        record.pop("taken", None)
    assert viewed == {name: times_view(record) for name, record in whole.items()}
    answers = infer_times(list(whole.items()), settings)
    assert answers == infer_times(list(viewed.items()), settings)
    assert answers["bare.jpg"]["source"] == "neighbour"

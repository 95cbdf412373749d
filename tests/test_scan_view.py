"""Every stage decides the same on a record's scan view as on the whole record.

A rescan decides what is due from the machine-local scan view of each record
(:func:`scanpixd.store.record_cache.scan_view`), which keeps only what ``Stage.applies``
and ``Stage.is_current`` read, and takes a folder it noted as settled by asking the stages
about the distinct *shapes* of its records: their scan view without name, size, mtime and
hash, which no stage may read.  A stage that starts reading something else must fail
here, not make a rescan skip work it should do.
"""

from __future__ import annotations

import copy
from collections.abc import Iterator
from pathlib import Path

import pytest

from scanpixd.config import Settings
from scanpixd.indexer import Indexer
from scanpixd.pipeline import Services, Stage, build_stages, pending
from scanpixd.record import Record, new_record
from scanpixd.store import Store
from scanpixd.store.record_cache import scan_view
from tests.helpers_index import make_library


def _variants(stages: list[Stage]) -> list[Record]:
    """Records of every shape the stages tell apart: kinds, metadata sources, GPS, failures."""
    current = {s.name: s.version_key() for s in stages}
    base = new_record("IMG_1.jpg", 10, 10**18, "b2:" + "0" * 32)
    shapes: list[dict] = [
        {},
        {"stages": dict(current), "media": {"kind": "image", "width": 4, "format": "JPEG"},
         "metadata": {"source": "exiftool", "gps": None, "make": "Canon", "raw": {"x": 1}}},
        {"stages": dict(current), "media": {"kind": "video", "duration": 3.0},
         "metadata": {"source": "exiftool", "gps": {"lat": 43.5, "lon": 11.9, "alt": None}}},
        {"stages": dict(current), "media": {"kind": "image"},
         "metadata": {"source": "pillow", "gps": {"lat": 91.0, "lon": 0.0}}},
        {"stages": {"media": 1}, "media": {"width": 3}, "metadata": None},
        {"stages": {"media": 1, "metadata": 1}, "errors": {"metadata": "broken EXIF"},
         "media": {"kind": "image"}, "metadata": {"source": "pillow"}},
        {"status": "failed", "error": "truncated", "stages": {"media": 1}},
        {"status": "skipped", "stages": {"media": 1}},
        {"stages": {**current, "thumbs": "0:old"}, "media": {"kind": "image"},
         "metadata": {"gps": {"lat": 10.0, "lon": 10.0}, "source": "exiftool"},
         "place": {"timezone": "Europe/Rome"}, "taken": {"source": "gps"}},
    ]
    return [{**copy.deepcopy(base), **shape} for shape in shapes]


IDENTITY = ("format", "name", "name_b64", "size", "mtime_ns", "hash")


def _assert_same_decisions(stages: list[Stage], records: list[Record]) -> None:
    for record in records:
        view = scan_view(copy.deepcopy(record))
        shape = {k: v for k, v in view.items() if k not in IDENTITY}
        other = {**view, "name": "clip.mp4", "name_b64": "Y2xpcA==", "size": 1, "mtime_ns": 2,
                 "hash": "b2:" + "f" * 32, "format": 1}
        for stage in stages:
            for seen in (view, shape, other):
                assert stage.applies(seen) == stage.applies(record), (stage.name, seen)
                assert stage.is_current(seen) == stage.is_current(record), (stage.name, seen)
        assert pending(stages, view) == pending(stages, record) == pending(stages, shape)


@pytest.fixture(name="stages")
def stages_fixture(settings: Settings) -> Iterator[list[Stage]]:
    settings.faces.enabled = True
    settings.clip.enabled = True
    services = Services(settings)
    yield build_stages(services)
    services.close()


def test_stages_decide_the_same_on_the_scan_view(stages: list[Stage]) -> None:
    _assert_same_decisions(stages, _variants(stages))


def test_stages_decide_the_same_on_indexed_records(settings: Settings, tmp_path: Path,
                                                   stages: list[Stage]) -> None:
    make_library(tmp_path / "lib", 2)
    indexer = Indexer(settings)
    try:
        indexer.index([tmp_path / "lib"])
    finally:
        indexer.close()
    folder = Store(settings).folder(tmp_path / "lib" / "album00")
    records = list(folder.records().values())
    assert len(records) == 2 and all(r["metadata"]["raw"] for r in records)
    _assert_same_decisions(stages, records)


def test_the_scan_view_is_small(stages: list[Stage]) -> None:
    record = _variants(stages)[1]
    view = scan_view(record)
    assert view["metadata"] == {"source": "exiftool", "gps": None}
    assert view["media"] == {"kind": "image"} and "raw" not in str(view)

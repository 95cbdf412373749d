"""Filters over the library's columns give exactly what testing each item gives.

The engine answers filters with array operations over :mod:`scanpixd.query.columns`;
the per-item ``match`` of :mod:`scanpixd.query.tree` is the definition.  Both run here
over records that vary every field a filter reads, malformed values included.
"""

from __future__ import annotations

import itertools

import pytest

from scanpixd.config import Settings
from scanpixd.library import Library
from scanpixd.query import parse
from scanpixd.query.engine import search
from scanpixd.query.tree import BasicContext
from scanpixd.record import new_record
from scanpixd.store import Store

TAKEN = ["2023-06-01T12:00:00", "2023:06:02 08:30:00", "2016-02-29T23:59:59Z", "garbage",
         "2023-13-45T00:00:00", None, 20230601, "1999-12-31"]
KINDS = ["image", "video", "audio", None]
GPS = [{"lat": 43.72, "lon": 10.40}, {"lat": 0.0, "lon": 0.0}, {"lat": 91.0, "lon": 10.0},
       {"lat": "43", "lon": 10.0}, None, {"lat": 41.89, "lon": 12.49}, {"lat": 51.5, "lon": -0.12}]
CAMERAS = [("Canon", "EOS 5D", "EF 50mm"), ("Apple", "iPhone 13", None), (None, None, None),
           ("  NIKON  corp ", "D750", "Nikkor"), (7, ["x"], {"a": 1})]
PLACES = [{"city": "Pisa", "region": "Tuscany", "country": "Italy", "country_code": "IT"},
          {"city": "Rome", "country": "Italy", "country_code": "IT"}, None, "Paris", "missing",
          {"city": "London", "country": "United Kingdom", "country_code": "GB"}]
FACES = [[], [{"person": "Ada"}], [{"person": {"name": "Bob", "id": "p2"}}], "nope"]
FOLDERS = ["2023/Trip to Rome", "2023/trip to rome b", "2016", "", "Other/Deep/Down"]


def _record(i: int) -> dict:
    record = new_record(f"IMG_{i:03d}.jpg", 1, 1, f"b2:{i:032x}")
    taken, kind, gps = TAKEN[i % 8], KINDS[i % 4], GPS[i % 7]
    make, model, lens = CAMERAS[i % 5]
    place, faces = PLACES[(i // 2) % 6], FACES[(i // 3) % 4]
    record["media"] = {"kind": kind}
    record["metadata"] = {"taken_local": taken, "gps": gps, "make": make, "model": model,
                          "lens": lens}
    if i % 11 == 0:
        record["taken"] = {"local": "2020-01-01T00:00:00", "utc": "2019-12-31T23:00:00Z"}
    if place != "missing":
        record["place"] = place
    record["faces"] = faces
    if i % 13 == 0:
        record["status"] = "failed"
    return record


@pytest.fixture(scope="module")
def library(tmp_path_factory: pytest.TempPathFactory) -> Library:
    base = tmp_path_factory.mktemp("columns")
    settings = Settings(cache_dir=base / "cache", jobs=2)
    settings.clip.enabled = False
    root = base / "photos"
    store = Store(settings)
    for i in range(160):
        folder = root / FOLDERS[i % 5] if FOLDERS[i % 5] else root
        folder.mkdir(parents=True, exist_ok=True)
        (folder / f"IMG_{i:03d}.jpg").write_bytes(b"x")
        store.folder(folder).write(_record(i))
    library = Library(settings)
    library.load([root])
    assert len(library) == 160
    return library


FILTERS = ["date:2023", "date:2023-06-01", "-date:2023", "date:2016-02-29", "date:..2000",
           "date:2020..", "type:photo", "type:video", "-type:photo", "camera:canon", "camera:ef",
           "camera:nikon", "-camera:iphone", "camera:7", "folder:trip", "folder:\"rome b\"",
           "folder:/nonexistent", "-folder:2023", "folder:other/deep", "place:Italy",
           "place:pisa", "place:\"Rome, Italy\"", "-place:italy", "place:IT", "place:Paris",
           "near:43.7,10.4,50km", "near:0,0,1km", "-near:51.5,-0.12,10km", "person:ada",
           "person:p2", "-person:bob"]


@pytest.mark.parametrize("text", FILTERS + [" ".join(p) for p in itertools.combinations(
    ["date:2023", "type:photo", "-camera:canon", "place:italy", "-person:ada"], 2)])
def test_columns_agree_with_each_item(library: Library, text: str):
    text = text.replace("/nonexistent", str(library.roots[0] / "2023"))
    query = parse(text)
    ctx = BasicContext()
    expected = sorted(str(i.path) for i in library.items()
                      if i.record.get("status") != "failed" and query.accepts(i, ctx))
    found = sorted(str(r.path) for r in search(library, query, ctx, limit=10_000))
    assert found == expected


def test_a_listing_is_in_capture_order_then_by_path(library: Library):
    results = search(library, parse("type:photo"), BasicContext(), limit=10_000)
    keys = [(r.record.get("taken", {}).get("utc") or r.record.get("taken", {}).get("local")
             or r.record["metadata"].get("taken_local")) for r in results]
    dated = [k for k in keys if isinstance(k, str) and len(k) >= 10
             and k[:4].isdigit() and k[5:7] <= "12"]
    assert dated and keys[: len(dated)] == dated  # the readable times come first
    normalised = [k[:10].replace(":", "-") + k[10:19] for k in dated]
    assert normalised == sorted(normalised)
    assert len(search(library, parse("type:photo"), BasicContext(), limit=3)) == 3

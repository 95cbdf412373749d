"""Time and place from real files through the real stages: metadata (exiftool), then place,
then the library-wide time inference."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from scanpixd import geo
from scanpixd.config import Settings
from scanpixd.pipeline.base import Job, run_stage
from scanpixd.pipeline.metadata import MetadataStage
from scanpixd.pipeline.place import PlaceStage
from scanpixd.pipeline.services import Services
from scanpixd.record import Record, new_record
from scanpixd.store import Store
from scanpixd.timeinfer import infer_times
from tests.helpers_timeplace import corpus_root, exiftool

FILES = {
    "gps": "exif-samples/jpg/gps/DSCN0010.jpg",
    "gps-last": "exif-samples/jpg/gps/DSCN0042.jpg",
    "nokia": "exif-samples/jpg/mobile/HMD_Nokia_8.3_5G.jpg",
    "mov": "metadata-extractor-images/mov/with-gps.mov",
    "mp4": "metadata-extractor-images/mp4/with-gps.mp4",
    "null-island": "metadata-extractor-images/jpg/Samsung GT-I9000 (Galaxy S).jpg",
    "broken-gps": "Pillow/Tests/images/exif_gps.jpg",
}


@pytest.fixture(scope="module")
def records(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Record]]:
    root = corpus_root()
    exiftool()
    settings = Settings()
    services = Services(settings)
    folder = Store(settings).folder(tmp_path_factory.mktemp("pipeline"))
    stages = [MetadataStage(services), PlaceStage(services)]
    out: dict[str, Record] = {}
    try:
        for key, rel in FILES.items():
            path = root / rel
            record = new_record(path.name, path.stat().st_size, path.stat().st_mtime_ns, "b2:0")
            for stage in stages:
                if stage.applies(record):
                    run_stage(stage, Job(path, folder, record))
            out[key] = record
        yield out
    finally:
        services.close()


def test_metadata_and_place_stages_fill_the_record(records: dict[str, Record]) -> None:
    assert records["gps"]["place"] == {"city": "Arezzo", "region": "Tuscany", "country": "Italy",
                                       "country_code": "IT", "timezone": "Europe/Rome"}
    assert records["mov"]["place"]["country_code"] == "IL"
    for key in ("null-island", "broken-gps"):
        assert records[key]["metadata"]["gps"] is None, key
        assert records[key].get("place") is None, key
    assert all(not r["errors"] for r in records.values())


def test_times_from_the_real_metadata(records: dict[str, Record]) -> None:
    taken = infer_times(list(records.items()), Settings())
    expect = {
        "gps": ("2008-10-22T16:28:39", "2008-10-22T14:28:39Z", "Europe/Rome", "gps"),
        "gps-last": ("2008-10-22T17:00:07", "2008-10-22T15:00:07Z", "Europe/Rome", "gps"),
        "nokia": ("2022-08-14T14:12:31", "2022-08-14T11:12:31Z", "Europe/Helsinki",
                  "offset-tag"),
        "mov": ("2019-07-24T11:25:40", "2019-07-24T08:25:40Z", "Asia/Jerusalem", "offset-tag"),
        "mp4": ("2017-02-22T08:20:28", "2017-02-22T08:20:28Z", "Europe/London", "gps"),
        "null-island": ("2011-04-02T18:30:10", None, None, "unknown"),
    }
    got = {k: (v["local"], v["utc"], v["timezone"], v["source"]) for k, v in taken.items()}
    assert {k: got[k] for k in expect} == expect


def test_place_queries_on_real_records(records: dict[str, Record]) -> None:
    italy = {k for k, r in records.items() if geo.place_matches(r, "Italy")}
    assert italy == {"gps", "gps-last"}
    assert {k for k, r in records.items() if geo.place_matches(r, "Israel")} == {"mov"}
    helsinki = geo.resolve_place("Helsinki")
    assert helsinki is not None
    near = {k for k, r in records.items()
            if (p := geo.valid_gps(r["metadata"]["gps"])) and geo.distance_m(*p, *helsinki) < 5000}
    assert near == {"nokia"}


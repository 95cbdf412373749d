"""Time inference: a UTC instant and a time zone for every item, with the rule that gave it."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from scanpixd.config import Settings
from scanpixd.errors import ConfigError
from scanpixd.record import Record
from scanpixd.timeinfer import SOURCES, format_offset, infer_times
from tests.helpers_timeplace import corpus_root, make_record, read_records, write_tags

GPS_SERIES = "exif-samples/jpg/gps"
AREZZO = (43.4674, 11.8851)
NEW_YORK = (40.7128, -74.0060)


def _infer(records: dict[str, Record], settings: Settings | None = None) -> dict[str, dict]:
    """Run one pass and write the answers back, as the library does."""
    changes = infer_times(list(records.items()), settings or Settings())
    for key, taken in changes.items():
        records[key]["taken"] = taken
    return changes


def _settings(home: str = "", window: float = 6.0) -> Settings:
    settings = Settings()
    settings.time.home_timezone = home
    settings.time.neighbour_window = window
    return settings


def _check_consistent(taken: dict) -> None:
    """local - offset == utc, whenever both are known."""
    assert taken["source"] in SOURCES
    if taken["utc"] is None:
        return
    from datetime import datetime

    local = datetime.fromisoformat(taken["local"] + taken["offset"])
    assert local == datetime.fromisoformat(taken["utc"])


# --- real files ------------------------------------------------------------------------------------


def test_gps_series_gets_rome_summer_time() -> None:
    # 22 October 2008: Italy was still on CEST (+02:00) until the 26th.
    paths = sorted((corpus_root() / GPS_SERIES).glob("DSCN*.jpg"))
    records = {p.name: r for p, r in read_records(paths).items()}
    taken = _infer(records)
    assert len(taken) == 9
    assert taken["DSCN0010.jpg"] == {
        "local": "2008-10-22T16:28:39", "utc": "2008-10-22T14:28:39Z",
        "timezone": "Europe/Rome", "offset": "+02:00", "source": "gps",
    }
    for value in taken.values():
        assert (value["timezone"], value["offset"], value["source"]) == (
            "Europe/Rome", "+02:00", "gps")
        _check_consistent(value)


def test_own_offset_tag_wins_and_names_the_matching_gps_zone() -> None:
    path = corpus_root() / "exif-samples/jpg/mobile/HMD_Nokia_8.3_5G.jpg"
    record = read_records([path])[path]
    assert record["metadata"]["offset"] == "+03:00"
    taken = _infer({"nokia": record})["nokia"]
    assert taken == {"local": "2022-08-14T14:12:31", "utc": "2022-08-14T11:12:31Z",
                     "timezone": "Europe/Helsinki", "offset": "+03:00", "source": "offset-tag"}
    # An offset that is not the GPS zone's at that instant still wins, as a fixed offset.
    record["metadata"]["offset"] = "+05:30"
    taken = _infer({"nokia": record})["nokia"]
    assert (taken["utc"], taken["timezone"], taken["source"]) == (
        "2022-08-14T08:42:31Z", "UTC+05:30", "offset-tag")


def test_iphone_video_creation_time() -> None:
    path = corpus_root() / "metadata-extractor-images/mov/with-gps.mov"
    record = read_records([path])[path]
    meta = record["metadata"]
    assert (meta["taken_local"], meta["offset"], meta["taken_utc"]) == (
        "2019-07-24T11:25:40", "+03:00", "2019-07-24T08:25:57Z")
    taken = _infer({"mov": record})["mov"]
    assert taken == {"local": "2019-07-24T11:25:40", "utc": "2019-07-24T08:25:40Z",
                     "timezone": "Asia/Jerusalem", "offset": "+03:00", "source": "offset-tag"}
    # Without the CreationDate offset the UTC CreateDate is the instant, placed in the GPS zone.
    meta["offset"] = None
    meta["taken_local"] = None
    taken = _infer({"mov": record})["mov"]
    assert taken == {"local": "2019-07-24T11:25:57", "utc": "2019-07-24T08:25:57Z",
                     "timezone": "Asia/Jerusalem", "offset": "+03:00", "source": "gps"}


def test_utc_video_without_offset_gets_local_time_from_gps() -> None:
    path = corpus_root() / "metadata-extractor-images/mp4/with-gps.mp4"
    record = read_records([path])[path]
    assert record["metadata"]["taken_utc"] == "2017-02-22T08:20:28Z"
    taken = _infer({"mp4": record})["mp4"]
    assert taken == {"local": "2017-02-22T08:20:28", "utc": "2017-02-22T08:20:28Z",
                     "timezone": "Europe/London", "offset": "+00:00", "source": "gps"}


def test_null_island_gps_is_ignored() -> None:
    path = corpus_root() / "metadata-extractor-images/jpg/Samsung GT-I9000 (Galaxy S).jpg"
    record = read_records([path])[path]
    assert (record["metadata"]["gps"]["lat"], record["metadata"]["gps"]["lon"]) == (0, 0)
    taken = _infer({"x": record})["x"]
    assert taken == {"local": "2011-04-02T18:30:10", "utc": None, "timezone": None,
                     "offset": None, "source": "unknown"}
    taken = _infer({"x": record}, _settings(home="Europe/Berlin"))["x"]
    assert (taken["timezone"], taken["source"]) == ("Europe/Berlin", "home")


def test_photo_without_gps_inherits_the_zone_of_the_same_camera(tmp_path: Path) -> None:
    source = corpus_root() / GPS_SERIES / "DSCN0010.jpg"
    geotagged, bare, other = (tmp_path / n for n in ("geo.jpg", "bare.jpg", "other.jpg"))
    for copy in (geotagged, bare, other):
        shutil.copyfile(source, copy)
    write_tags(bare, "-gps:all=", "-DateTimeOriginal=2008:10:22 17:28:39")
    # Another camera, closer in time, in New York: the same camera is preferred.
    write_tags(other, "-Model=Other", "-DateTimeOriginal=2008:10:22 17:20:00",
               f"-GPSLatitude={NEW_YORK[0]}", "-GPSLatitudeRef=N",
               f"-GPSLongitude={-NEW_YORK[1]}", "-GPSLongitudeRef=W")
    records = {p.name: r for p, r in read_records([geotagged, bare, other]).items()}
    assert records["bare.jpg"]["metadata"]["gps"] is None
    taken = _infer(records)
    assert taken["bare.jpg"] == {
        "local": "2008-10-22T17:28:39", "utc": "2008-10-22T15:28:39Z", "timezone": "Europe/Rome",
        "offset": "+02:00", "source": "neighbour", "neighbour": "geo.jpg",
    }
    assert taken["other.jpg"]["timezone"] == "America/New_York"
    # Idempotent: a second pass over the written answers changes nothing.
    assert _infer(records) == {}
    # The lender loses its position: the bare photo is recomputed from the other camera.
    records["geo.jpg"]["metadata"]["gps"] = None
    changed = _infer(records)
    assert set(changed) == {"geo.jpg", "bare.jpg"}
    assert (changed["bare.jpg"]["timezone"], changed["bare.jpg"]["neighbour"]) == (
        "America/New_York", "other.jpg")
    assert changed["geo.jpg"]["source"] == "neighbour"


# --- rules on records ------------------------------------------------------------------------------


def test_neighbour_window_then_home_then_unknown() -> None:
    records = {
        "geo": make_record("2020-06-01T12:00:00", gps=AREZZO),
        "bare": make_record("2020-06-01T19:00:00"),  # 7 h later: outside the 6 h window
    }
    assert _infer(records)["bare"]["source"] == "unknown"
    taken = _infer(records, _settings(window=8))["bare"]
    assert (taken["source"], taken["timezone"]) == ("neighbour", "Europe/Rome")
    taken = _infer(records, _settings(home="America/New_York"))["bare"]
    assert taken == {"local": "2020-06-01T19:00:00", "utc": "2020-06-01T23:00:00Z",
                     "timezone": "America/New_York", "offset": "-04:00", "source": "home"}
    assert _infer(records, _settings(home="America/New_York", window=0)) == {}  # the same


def test_any_camera_lends_when_the_same_camera_has_no_neighbour() -> None:
    records = {
        "phone": make_record("2020-06-01T12:00:00", gps=AREZZO, camera="Apple iPhone 11"),
        "camera": make_record("2020-06-01T13:00:00", camera="Canon EOS R"),
        "far": make_record("2020-05-01T13:00:00", gps=NEW_YORK, camera="Canon EOS R"),
    }
    taken = _infer(records)["camera"]
    assert (taken["timezone"], taken["neighbour"]) == ("Europe/Rome", "phone")


def test_neighbours_lend_only_gps_zones_and_ties_go_to_the_earlier() -> None:
    records = {
        "before": make_record("2020-06-01T11:00:00", gps=AREZZO),
        "after": make_record("2020-06-01T13:00:00", gps=NEW_YORK),
        "bare": make_record("2020-06-01T12:00:00"),
        "bare2": make_record("2020-06-01T12:00:01"),  # nearer "after"; not a lender itself
    }
    taken = _infer(records)
    assert taken["bare"]["neighbour"] == "before"
    assert taken["bare2"]["neighbour"] == "after"
    assert _infer(dict(reversed(list(records.items())))) == {}  # order does not matter


def test_utc_tag_only() -> None:
    records = {"video": make_record(utc="2020-01-05T11:19:45Z")}
    assert _infer(records)["video"] == {
        "local": "2020-01-05T11:19:45", "utc": "2020-01-05T11:19:45Z", "timezone": "UTC",
        "offset": "+00:00", "source": "utc-tag"}
    taken = _infer(records, _settings(home="Asia/Tokyo"))["video"]
    assert (taken["local"], taken["utc"], taken["source"]) == (
        "2020-01-05T20:19:45", "2020-01-05T11:19:45Z", "home")


def test_video_borrows_by_utc_instant() -> None:
    records = {
        "photo": make_record("2019-07-24T11:00:00", gps=(32.0929, 34.862), camera="Apple iPhone 6"),
        "video": make_record(utc="2019-07-24T08:30:00Z", camera="Apple iPhone 6"),
    }
    taken = _infer(records, _settings(window=1))["video"]
    assert taken == {"local": "2019-07-24T11:30:00", "utc": "2019-07-24T08:30:00Z",
                     "timezone": "Asia/Jerusalem", "offset": "+03:00", "source": "neighbour",
                     "neighbour": "photo"}


# --- calendars and clocks ---------------------------------------------------------------------


@pytest.mark.parametrize(("local", "utc", "offset"), [
    ("2021-03-28T01:59:59", "2021-03-28T00:59:59Z", "+01:00"),
    ("2021-03-28T02:30:00", "2021-03-28T01:30:00Z", "+01:00"),  # never existed: pre-change
    ("2021-03-28T03:00:00", "2021-03-28T01:00:00Z", "+02:00"),
    ("2021-10-31T01:59:59", "2021-10-30T23:59:59Z", "+02:00"),
    ("2021-10-31T02:30:00", "2021-10-31T00:30:00Z", "+02:00"),  # twice: the first one
    ("2021-10-31T03:00:00", "2021-10-31T02:00:00Z", "+01:00"),
])
def test_dst_transition_nights(local: str, utc: str, offset: str) -> None:
    taken = _infer({"x": make_record(local, gps=AREZZO)})["x"]
    assert (taken["local"], taken["utc"], taken["offset"]) == (local, utc, offset)
    _check_consistent(taken)


def test_either_side_of_the_date_line() -> None:
    records = {
        "fiji": make_record("2011-12-31T12:00:00", gps=(-18.14, 178.44)),
        "taveuni-east": make_record("2011-12-31T12:00:00", gps=(-16.80, -179.99)),
        "samoa-before": make_record("2011-12-29T12:00:00", gps=(-13.833, -171.767)),
        "samoa-after": make_record("2011-12-31T12:00:00", gps=(-13.833, -171.767)),
        "american-samoa": make_record("2011-12-31T12:00:00", gps=(-14.28, -170.70)),
    }
    taken = _infer(records)
    expect = {
        "fiji": ("Pacific/Fiji", "+13:00", "2011-12-30T23:00:00Z"),
        "taveuni-east": ("Pacific/Fiji", "+13:00", "2011-12-30T23:00:00Z"),
        # Samoa moved across the date line, skipping 30 December 2011.
        "samoa-before": ("Pacific/Apia", "-10:00", "2011-12-29T22:00:00Z"),
        "samoa-after": ("Pacific/Apia", "+14:00", "2011-12-30T22:00:00Z"),
        "american-samoa": ("Pacific/Pago_Pago", "-11:00", "2011-12-31T23:00:00Z"),
    }
    assert {k: (v["timezone"], v["offset"], v["utc"]) for k, v in taken.items()} == expect


def test_historical_offset_changes() -> None:
    records = {
        "2013": make_record("2013-07-01T12:00:00", gps=(55.75, 37.62)),  # Moscow, +04 then
        "2015": make_record("2015-07-01T12:00:00", gps=(55.75, 37.62)),  # +03 since late 2014
    }
    taken = _infer(records)
    assert (taken["2013"]["offset"], taken["2013"]["utc"]) == ("+04:00", "2013-07-01T08:00:00Z")
    assert (taken["2015"]["offset"], taken["2015"]["utc"]) == ("+03:00", "2015-07-01T09:00:00Z")


# --- bad values ------------------------------------------------------------------------------------


@pytest.mark.parametrize("gps", [(595404.0, 11.9), (43.4, 595404.0), (0.0, 0.0),
                                 (float("nan"), 11.9), (-91.0, 0.5)])
def test_broken_gps_is_not_a_zone(gps: tuple[float, float]) -> None:
    taken = _infer({"x": make_record("2020-06-01T12:00:00", gps=gps)})["x"]
    assert taken["source"] == "unknown"


def test_hostile_metadata_values_never_crash() -> None:
    weird: list[dict] = [
        {"taken_local": "garbage", "offset": "+99:00", "taken_utc": "1904-01-01T00:00:00Z"},
        {"taken_local": 12, "offset": 3, "taken_utc": ["x"], "gps": "north", "make": [1]},
        {"taken_local": "0001-01-01T00:30:00", "offset": "+01:00"},
        {"taken_local": "9999-12-31T23:59:59", "offset": "-05:00"},
        {"taken_local": "0001-01-01T00:00:00", "gps": {"lat": 43.4, "lon": 11.8}},
        {"taken_utc": "9999-12-31T23:00:00Z", "gps": {"lat": -18.1, "lon": 178.4}},
        {"taken_local": "2020-06-01T12:00:00+02:00"},
        {"make": 456, "model": 123, "taken_local": "2020-06-01T12:00:00"},
    ]
    records: dict[str, Record] = {str(i): {"metadata": m} for i, m in enumerate(weird)}
    records["none"] = {"metadata": None}
    records["empty"] = {}
    taken = _infer(records, _settings(home="Europe/Rome"))
    assert set(taken) == set(records)
    for value in taken.values():
        _check_consistent(value)
    assert taken["0"]["source"] == "unknown" and taken["0"]["local"] is None
    assert (taken["6"]["offset"], taken["6"]["source"]) == ("+02:00", "offset-tag")
    assert taken["none"] == taken["empty"] == {
        "local": None, "utc": None, "timezone": None, "offset": None, "source": "unknown"}


def test_unknown_home_zone_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match="time.home_timezone"):
        infer_times([], _settings(home="Mars/Olympus_Mons"))


def test_place_stage_zone_is_used_when_present() -> None:
    record = make_record("2020-06-01T12:00:00", gps=AREZZO)
    record["place"] = {"city": "Arezzo", "region": "Tuscany", "country": "Italy",
                       "country_code": "IT", "timezone": "Europe/Rome"}
    assert _infer({"x": record})["x"]["timezone"] == "Europe/Rome"
    record["place"]["timezone"] = "Asia/Tokyo"  # the stage's answer is not looked up again
    assert _infer({"x": record})["x"]["timezone"] == "Asia/Tokyo"
    for bogus in ("../../etc/passwd", "/etc/localtime", 42, None):
        record["place"]["timezone"] = bogus  # a hand-edited sidecar: looked up from the GPS
        assert infer_times([("x", record)], Settings())["x"]["timezone"] == "Europe/Rome"


def test_format_offset() -> None:
    from datetime import timedelta

    assert format_offset(timedelta(hours=-3, minutes=-30)) == "-03:30"
    assert format_offset(timedelta(0)) == "+00:00"
    assert format_offset(timedelta(minutes=9, seconds=21)) == "+00:09:21"

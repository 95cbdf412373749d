"""Offline reverse geocoding, forward lookup of place names, and ``place:``/``near:`` matching."""

from __future__ import annotations

from pathlib import Path

import pytest

from scanpixd import geo
from scanpixd.config import Settings
from scanpixd.pipeline.base import Job, run_stage
from scanpixd.pipeline.place import PlaceStage
from scanpixd.pipeline.services import Services
from scanpixd.record import Record
from scanpixd.store import Store
from tests.helpers_timeplace import (
    PLACE_FOLDERS,
    corpus_root,
    make_record,
    place_records,
    read_records,
)

ITALY = {
    *(f"exif-samples/jpg/gps/DSCN00{n}.jpg" for n in (10, 12, 21, 25, 27, 29, 38, 40, 42)),
    "metadata-extractor-images/jpg/Apple iPhone 4.jpg",  # Rome
    "metadata-extractor-images/jpg/Panasonic DMC-LX3 (Lumix).jpg",  # Rome
    "metadata-extractor-images/jpg/HTC Desire.jpg",  # Pero, by Milan
    "metadata-extractor-images/webp/HTC Desire.webp",
}
AREZZO_SERIES = {name for name in ITALY if "/gps/DSCN" in name}
ROME = {"metadata-extractor-images/jpg/Apple iPhone 4.jpg",
        "metadata-extractor-images/jpg/Panasonic DMC-LX3 (Lumix).jpg"}


@pytest.fixture(scope="module")
def library(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Record]:
    """Every file of the place folders, with metadata and the place stage's output."""
    root = corpus_root()
    paths = [p for folder in PLACE_FOLDERS for p in sorted((root / folder).iterdir()) if p.is_file()]
    records = read_records(paths)
    place_records(records, Settings(), tmp_path_factory.mktemp("place"))
    return {str(path.relative_to(root)): record for path, record in records.items()}


def _near(record: Record, point: tuple[float, float], radius_m: float) -> bool:
    position = geo.valid_gps((record.get("metadata") or {}).get("gps"))
    return position is not None and geo.distance_m(*position, *point) <= radius_m


# --- the corpus ------------------------------------------------------------------------------


def test_gps_series_is_in_arezzo_tuscany(library: dict[str, Record]) -> None:
    for name in AREZZO_SERIES:
        assert library[name]["place"] == {
            "city": "Arezzo", "region": "Tuscany", "country": "Italy", "country_code": "IT",
            "timezone": "Europe/Rome",
        }


def test_place_italy_matches_exactly_the_italian_files(library: dict[str, Record]) -> None:
    for query in ("Italy", "italy", "IT", "it"):
        assert {n for n, r in library.items() if geo.place_matches(r, query)} == ITALY
    assert {n for n, r in library.items() if geo.place_matches(r, "Tuscany")} == AREZZO_SERIES
    assert {n for n, r in library.items() if geo.place_matches(r, "Rome, Italy")} == ROME
    assert {n for n, r in library.items() if geo.place_matches(r, "Rome, France")} == set()


def test_near_point_and_near_place_match_exactly_the_expected_files(
    library: dict[str, Record],
) -> None:
    assert {n for n, r in library.items() if _near(r, (43.4674, 11.8851), 1000)} == AREZZO_SERIES
    arezzo = geo.resolve_place("Arezzo")
    assert arezzo is not None
    assert {n for n, r in library.items() if _near(r, arezzo, 5000)} == AREZZO_SERIES
    rome = geo.resolve_place("Rome")
    assert rome is not None
    assert {n for n, r in library.items() if _near(r, rome, 10_000)} == ROME


def test_null_island_and_empty_positions_get_no_place(library: dict[str, Record]) -> None:
    for name in ("metadata-extractor-images/jpg/FLIR Vue Pro 640.jpg",
                 "metadata-extractor-images/jpg/Samsung GT-I9000 (Galaxy S).jpg",
                 "metadata-extractor-images/mp4/ftyp3gp5.mp4",
                 "metadata-extractor-images/jpg/Leica T (Typ 701).jpg"):
        record = library[name]
        assert record["metadata"]["gps"] is not None  # the file does carry a GPS block
        assert record.get("place") is None
        assert not any(geo.place_matches(record, q) for q in ("Ghana", "GH", "Etc/GMT"))


def test_broken_gps_of_a_hostile_file_is_rejected() -> None:
    path = corpus_root() / "Pillow/Tests/images/exif_gps.jpg"  # GPSLatitude 4294967295
    record = read_records([path])[path]
    assert record["metadata"]["gps"]["lat"] == 4294967295
    assert geo.valid_gps(record["metadata"]["gps"]) is None
    assert not PlaceStage(Services(Settings())).applies(record)


# --- reverse geocoding ------------------------------------------------------------------------


def test_reverse_either_side_of_the_date_line() -> None:
    # Taveuni (Fiji) straddles the 180th meridian: both sides are Fiji, not the nearest
    # town in raw degrees on the other side of the map.
    for lon in (179.99, -179.99):
        place = geo.reverse(-16.80, lon)
        assert place is not None and place["country_code"] == "FJ"
    apia = geo.reverse(-13.833, -171.767)
    assert apia is not None and (apia["city"], apia["country_code"]) == ("Apia", "WS")


def test_reverse_far_from_any_town_is_none_and_city_needs_a_near_town() -> None:
    assert geo.reverse(40.0, -40.0) is None  # mid-Atlantic
    assert geo.reverse(-82.0, 0.0) is None  # Antarctic ice
    assert geo.reverse(22.0, 12.0) is None  # Sahara, 370 km from the nearest town
    taveuni = geo.reverse(-16.80, 179.99)  # nearest town 78 km away: region, no city
    assert taveuni == {"city": None, "region": "Northern", "country": "Fiji",
                       "country_code": "FJ"}


def test_reverse_many_matches_reverse() -> None:
    points = [(43.4674, 11.8851), (60.1467, 24.9068), (40.0, -40.0)]
    assert geo.reverse_many(points) == [geo.reverse(*p) for p in points]
    assert geo.reverse_many([]) == []


@pytest.mark.parametrize("gps", [
    None, {}, {"lat": 0, "lon": 0}, {"lat": 0.0, "lon": 0.0}, {"lat": 165.39, "lon": 11.9},
    {"lat": 595404.0, "lon": 11.9}, {"lat": 43.4, "lon": 181.0}, {"lat": float("nan"), "lon": 1},
    {"lat": float("inf"), "lon": 1}, {"lat": "43.4", "lon": "11.8"}, {"lat": True, "lon": 1},
    {"lat": 43.4}, [43.4, 11.8], "43.4,11.8",
])
def test_valid_gps_rejects_unusable_positions(gps: object) -> None:
    assert geo.valid_gps(gps) is None


def test_valid_gps_accepts_the_equator_and_the_meridian_alone() -> None:
    assert geo.valid_gps({"lat": 0, "lon": 10}) == (0.0, 10.0)
    assert geo.valid_gps({"lat": 51.48, "lon": 0.0}) == (51.48, 0.0)
    assert geo.valid_gps({"lat": -90, "lon": 180}) == (-90.0, 180.0)


def test_distance_is_great_circle() -> None:
    assert geo.distance_m(0, 0, 0, 1) == pytest.approx(111_195, rel=1e-3)
    assert geo.distance_m(-16.8, 179.99, -16.8, -179.99) == pytest.approx(2_129, rel=1e-2)


# --- forward lookup ----------------------------------------------------------------------------


def _country_at(point: tuple[float, float] | None) -> str | None:
    assert point is not None
    place = geo.reverse(*point)
    return place["country_code"] if place else None


def test_resolve_cities_prefer_the_big_one_and_obey_qualifiers() -> None:
    paris = geo.resolve_place("Paris")
    assert paris is not None and geo.distance_m(*paris, 48.8534, 2.3488) < 2000
    texas = geo.resolve_place("Paris, Texas")
    assert texas is not None and geo.distance_m(*texas, 33.66, -95.555) < 5000
    assert geo.resolve_place("paris, us") == texas
    assert geo.resolve_place("Zürich") == geo.resolve_place("zurich") is not None
    new_york = geo.resolve_place("New York")  # the city ("New York City"), not the state
    assert new_york is not None and geo.distance_m(*new_york, 40.714, -74.006) < 2000


def test_resolve_countries_and_regions_to_a_point_inside_them() -> None:
    assert _country_at(geo.resolve_place("Italy")) == "IT"  # not Italy, Texas
    assert _country_at(geo.resolve_place("IT")) == "IT"
    assert _country_at(geo.resolve_place("Russia")) == "RU"
    assert _country_at(geo.resolve_place("Korea, Republic of")) == "KR"
    tuscany = geo.resolve_place("Tuscany")
    assert tuscany is not None
    assert (geo.reverse(*tuscany) or {}).get("region") == "Tuscany"


@pytest.mark.parametrize("name", ["", "  ", ",", "Nowhereville-sur-Mer", "Atlantis, Italy"])
def test_resolve_unknown_names_is_none(name: str) -> None:
    assert geo.resolve_place(name) is None


# --- place matching on records --------------------------------------------------------------


def test_place_matches_names_codes_accents_and_qualifiers() -> None:
    record = {"place": {"city": "Zürich", "region": "Zurich", "country": "Switzerland",
                        "country_code": "CH", "timezone": "Europe/Zurich"}}
    for name in ("zurich", "ZÜRICH", "Switzerland", "ch", "Zurich, Switzerland", "zürich , CH"):
        assert geo.place_matches(record, name), name
    for name in ("Zurich, Austria", "Bern", "", "Europe/Zurich", "Swiss"):
        assert not geo.place_matches(record, name), name
    usa = {"place": {"city": "New York City", "region": "New York", "country": "United States",
                     "country_code": "US"}}
    for name in ("USA", "United States of America", "new york", "New York City", "us"):
        assert geo.place_matches(usa, name), name


def test_place_matches_without_the_place_stage_reads_the_gps() -> None:
    record = make_record("2008-10-22T16:28:39", gps=(43.4674, 11.8851))
    assert geo.place_matches(record, "Arezzo")
    assert not geo.place_matches(make_record("2008-10-22T16:28:39"), "Arezzo")
    assert not geo.place_matches({"place": None}, "Arezzo")


# --- the stage ------------------------------------------------------------------------------------


def _run_place(record: Record, tmp_path: Path) -> bool:
    settings = Settings()
    job = Job(tmp_path / "x.jpg", Store(settings).folder(tmp_path), record)
    return run_stage(PlaceStage(Services(settings)), job)


def test_place_stage_applies_to_geotagged_records_only(tmp_path: Path) -> None:
    stage = PlaceStage(Services(Settings()))
    assert stage.name == "place" and stage.tier == 0
    assert stage.applies(make_record("2020-01-01T00:00:00", gps=(45.0, 9.0)))
    assert not stage.applies(make_record("2020-01-01T00:00:00"))
    assert not stage.applies(make_record("2020-01-01T00:00:00", gps=(0.0, 0.0)))
    fresh: Record = {"stages": {}}  # metadata not read yet: the stage decides when it runs
    assert stage.applies(fresh)
    assert _run_place(fresh, tmp_path) and fresh["place"] is None


def test_place_stage_at_sea_keeps_only_the_zone(tmp_path: Path) -> None:
    # 127 km off Calabria: the nearest town is Italian, but the sea there is nobody's.
    record = make_record("2020-01-01T00:00:00", gps=(38.0, 18.0))
    assert _run_place(record, tmp_path)
    assert record["place"] == {"city": None, "region": None, "country": None,
                               "country_code": None, "timezone": "Etc/GMT-1"}
    assert record["stages"]["place"] == 1 and not record["errors"]
    assert not geo.place_matches(record, "Italy")


def test_near_ignores_unusable_positions() -> None:
    assert not _near(make_record(gps=(float("nan"), 1.0)), (0.0, 1.0), 1e9)
    assert not _near(make_record(gps=(0.0, 0.0)), (0.0, 0.0), 1e9)


def test_lookups_from_many_threads_agree() -> None:
    from concurrent.futures import ThreadPoolExecutor

    points = [(43.4674 + i * 0.01, 11.8851) for i in range(40)]

    def work(i: int) -> tuple:
        lat, lon = points[i]
        return geo.reverse(lat, lon), geo.timezone_at(lat, lon), geo.resolve_place("Arezzo")

    with ThreadPoolExecutor(8) as pool:
        results = list(pool.map(work, range(len(points))))
    assert results == [work(i) for i in range(len(points))]

"""Filters matched against hand-made records: boundaries, negation, and hostile records."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from scanpixd.errors import QueryError
from scanpixd.query import (
    BasicContext,
    NearFilter,
    NearPlaceFilter,
    distance_m,
    item_date,
    parse,
)
from tests.helpers_query import ROOT, Item, at, item, taken

CTX = BasicContext(places={"Rome": (41.9028, 12.4964), "Lake Como": (46.0160, 9.2572)})


def accepts(query: str, subject: Item, ctx: BasicContext = CTX) -> bool:
    return parse(query).accepts(subject, ctx)


def table(cases: list[tuple[str, Item, bool]]) -> Any:
    return pytest.mark.parametrize(
        ("query", "subject", "expected"),
        cases,
        ids=[f"{q}-{i}" for i, (q, _, _) in enumerate(cases)],
    )


DATES = [
    ("date:2023", taken("2023-01-01T00:00:00"), True),
    ("date:2023", taken("2023-12-31T23:59:59"), True),
    ("date:2023", taken("2022-12-31T23:59:59"), False),
    ("date:2023", taken("2024-01-01T00:00:00"), False),
    ("date:2024-02", taken("2024-02-29T12:00:00"), True),
    ("date:2024-02", taken("2024-03-01T00:00:00"), False),
    ("date:2024-02", taken("2024-01-31T23:59:59"), False),
    ("date:2023-06-01", taken("2023-06-01T23:59:59"), True),
    ("date:2023-06-01", taken("2023-06-02T00:00:00"), False),
    ("date:2023-06..2023-08", taken("2023-06-01T00:00:00"), True),
    ("date:2023-06..2023-08", taken("2023-08-31T23:59:59"), True),
    ("date:2023-06..2023-08", taken("2023-05-31T23:59:59"), False),
    ("date:2023-06..2023-08", taken("2023-09-01T00:00:00"), False),
    ("date:2023..", taken("2031-05-05T10:00:00"), True),
    ("date:2023..", taken("2022-12-31T23:59:59"), False),
    ("date:..2020-01", taken("1990-07-01T10:00:00"), True),
    ("date:..2020-01", taken("2020-01-31T23:00:00"), True),
    ("date:..2020-01", taken("2020-02-01T00:00:00"), False),
    # the inferred local time wins over the camera clock; the camera clock is the fallback
    ("date:2023", taken("2023-01-01T00:30:00", meta_local="2022-12-31T23:30:00"), True),
    ("date:2022", taken("2023-01-01T00:30:00", meta_local="2022-12-31T23:30:00"), False),
    ("date:2022", taken(meta_local="2022-12-31T23:30:00"), True),
    (
        "date:2022",
        Item({"taken": {"local": None}, "metadata": {"taken_local": "2022-05-01"}}),
        True,
    ),
    ("date:2023-06-01", taken(meta_local="2023:06:01 12:00:00"), True),
    ("date:2019-07", Item({"metadata": {"taken_utc": "2019-07-01T10:00:00Z"}}), True),
    # no usable date: a positive filter never matches, a negated one lets the item through
    ("date:2023", Item({}), False),
    ("-date:2023", Item({}), True),
    ("-date:2023", taken("2023-05-05T10:00:00"), False),
    ("-date:2023", taken("2022-05-05T10:00:00"), True),
    ("date:2023", taken("garbage"), False),
    ("date:2023", taken(meta_local="0000:00:00 00:00:00"), False),
    ("date:2023", Item({"taken": "2023-01-01", "metadata": ["2023"]}), False),
    ("date:2023", Item({"taken": {"local": 20230101}}), False),
]


@table(DATES)
def test_date(query: str, subject: Item, expected: bool) -> None:
    assert accepts(query, subject) is expected


TYPES = [
    ("type:photo", item(media={"kind": "image"}), True),
    ("type:photo", item(media={"kind": "video"}), False),
    ("type:video", item(media={"kind": "video"}), True),
    ("type:video", item(), False),
    ("type:photo", item(media={"kind": "audio"}), False),
    ("type:photo", item(media="image"), False),
    ("type:photo", item(media={"kind": ["image"]}), False),
    ("-type:video", item(media={"kind": "image"}), True),
    ("-type:video", item(media={"kind": "video"}), False),
]


@table(TYPES)
def test_type(query: str, subject: Item, expected: bool) -> None:
    assert accepts(query, subject) is expected


CANON = item(
    metadata={"make": "Canon", "model": "Canon EOS 5D Mark III", "lens": "EF24-105mm f/4L IS USM"}
)
IPHONE = item(metadata={"make": "Apple", "model": "iPhone 12 Pro", "lens": None})
CAMERAS = [
    ("camera:canon", CANON, True),
    ('camera:"canon eos"', CANON, True),
    ('camera:"EOS  5D"', CANON, True),
    ('camera:"Canon EOS 5D Mark III"', CANON, True),
    ("camera:24-105", CANON, True),
    ("camera:nikon", CANON, False),
    ('camera:"apple iphone"', IPHONE, True),
    ("camera:iphone", IPHONE, True),
    ("camera:canon", IPHONE, False),
    ("camera:canon", item(), False),
    ("camera:canon", item(metadata={"make": 5, "model": ["Canon"]}), False),
    ("-camera:nikon", CANON, True),
    ("-camera:canon", CANON, False),
]


@table(CAMERAS)
def test_camera(query: str, subject: Item, expected: bool) -> None:
    assert accepts(query, subject) is expected


IN_ROME = item("2023/Trip to Rome/IMG_1.jpg")
IN_ROOT = item("IMG_2.jpg")
FOLDERS = [
    ("folder:trip", IN_ROME, True),
    ('folder:"2023/Trip"', IN_ROME, True),
    ('folder:"Trip to Rome"', IN_ROME, True),
    ("folder:ROME", IN_ROME, True),
    ("folder:./2023", IN_ROME, True),
    ("folder:2023/", IN_ROME, True),
    ("folder:paris", IN_ROME, False),
    ("folder:photos", IN_ROME, False),  # the root's own name is not part of the folder
    ("folder:/photos/2023", IN_ROME, True),
    ("folder:/photos/2023/", IN_ROME, True),
    ('folder:"/photos/2023/Trip to Rome"', IN_ROME, True),
    ("folder:/photos", IN_ROME, True),
    ("folder:/photos/202", IN_ROME, False),
    ("folder:/Photos/2023", IN_ROME, False),
    ("folder:/other", IN_ROME, False),
    ("folder:2023", IN_ROOT, False),
    ("folder:/photos", IN_ROOT, True),
    ("-folder:trip", IN_ROME, False),
    ("-folder:trip", IN_ROOT, True),
    ("folder:x", Item({}, Path("/elsewhere/x/a.jpg"), ROOT), False),
    ("folder:/elsewhere/x", Item({}, Path("/elsewhere/x/a.jpg"), ROOT), True),
]


@table(FOLDERS)
def test_folder(query: str, subject: Item, expected: bool) -> None:
    assert accepts(query, subject) is expected


def test_folder_expands_home() -> None:
    subject = item("2023/a.jpg", root=Path.home() / "Pictures")
    assert accepts("folder:~/Pictures/2023", subject)
    assert not accepts("folder:~/Pictures/2022", subject)


ROME = item(place={"city": "Rome", "region": "Lazio", "country": "Italy", "country_code": "IT"})
PLACES = [
    ("place:rome", ROME, True),
    ("place:ITALY", ROME, True),
    ("place:it", ROME, True),
    ("place:Lazio", ROME, True),
    ('place:"Rome, Italy"', ROME, True),
    ('place:"Rome,"', ROME, True),
    ('place:"Rome, France"', ROME, False),
    ("place:Milan", ROME, False),
    ("place:Ita", ROME, False),
    ("place:rome", item(), False),
    ("place:rome", item(place=["Rome"]), False),
    ("-place:paris", ROME, True),
    ("-place:rome", ROME, False),
]


@table(PLACES)
def test_place(query: str, subject: Item, expected: bool) -> None:
    assert accepts(query, subject) is expected


COLOSSEUM = at(41.8902, 12.4922)  # about 1.4 km from the centre point used for "Rome"
NEARS = [
    ("near:41.9028,12.4964,2km", COLOSSEUM, True),
    ("near:41.9028,12.4964,1km", COLOSSEUM, False),
    ("near:41.9028,12.4964", COLOSSEUM, False),  # default 1 km around coordinates
    ("near:41.9028,12.4964,1mi", COLOSSEUM, True),
    ("near:41.9028,12.4964,1500m", COLOSSEUM, True),
    ("near:41.9028,12.4964,1300m", COLOSSEUM, False),
    ("near:rome,2km", COLOSSEUM, True),
    ("near:Rome", COLOSSEUM, True),  # default 25 km around a place
    ('near:"lake como",10km', COLOSSEUM, False),
    ("near:41.9,12.5,100km", Item({}), False),
    ("near:41.9,12.5,100km", Item({"metadata": {"gps": None}}), False),
    ("near:41.9,12.5,100km", Item({"metadata": {"gps": {"lat": "41.9", "lon": 12.5}}}), False),
    ("near:41.9,12.5,100km", Item({"metadata": {"gps": {"lat": True, "lon": 12.5}}}), False),
    ("near:41.9,12.5,100km", at(141.9, 12.5), False),
    ("near:41.9,12.5,100km", Item({"metadata": {"gps": {"lat": 10**400, "lon": 12.5}}}), False),
    ("-near:41.9,12.5,100km", Item({}), True),
    ("-near:rome,2km", COLOSSEUM, False),
    ("near:0,179.99,5km", at(0, -179.99), True),  # across the antimeridian
]


@table(NEARS)
def test_near(query: str, subject: Item, expected: bool) -> None:
    assert accepts(query, subject) is expected


def test_near_radius_is_inclusive_to_the_metre() -> None:
    gap = distance_m(41.9028, 12.4964, 41.8902, 12.4922)
    assert NearFilter(41.9028, 12.4964, gap + 1).match(COLOSSEUM, CTX)
    assert not NearFilter(41.9028, 12.4964, gap - 1).match(COLOSSEUM, CTX)


@pytest.mark.parametrize(
    ("a", "b", "km"),
    [
        ((48.8566, 2.3522), (51.5074, -0.1278), 343.5),  # Paris - London
        ((0.0, 0.0), (1.0, 0.0), 111.2),  # one degree of latitude
        ((0.0, 0.0), (0.0, 180.0), 20015.1),  # half way round the equator
        ((-33.8688, 151.2093), (40.7128, -74.0060), 15990.0),  # Sydney - New York
    ],
)
def test_distance(a: tuple[float, float], b: tuple[float, float], km: float) -> None:
    assert distance_m(*a, *b) / 1000 == pytest.approx(km, rel=0.005)
    assert distance_m(*a, *a) == 0.0


def test_unknown_place_is_a_query_error_quoting_it() -> None:
    query = parse("dog near:Atlantis,5km")
    with pytest.raises(QueryError, match="Atlantis") as caught:
        query.bind(CTX)
    assert caught.value.fragment == "Atlantis"
    with pytest.raises(QueryError):
        query.accepts(COLOSSEUM, CTX)


def test_bind_resolves_places_once_and_keeps_negation() -> None:
    bound = parse("dog -near:rome,2km date:2023").bind(CTX)
    assert bound.filters[0] == NearFilter(41.9028, 12.4964, 2000.0, negated=True)
    assert bound.terms == parse("dog").terms
    assert not any(isinstance(f, NearPlaceFilter) for f in bound.filters)


GROUP = item(
    faces=[{"person": "Alice"}, {"person": None}, {"box": [1, 2, 3, 4]}, "junk"],
    people=["Bob", 7, {"name": "Carol", "id": "p3"}, None],
)
PEOPLE = [
    ("person:alice", GROUP, True),
    ("person:ALICE", GROUP, True),
    ("person:bob", GROUP, True),
    ("person:7", GROUP, True),
    ("person:carol", GROUP, True),
    ("person:p3", GROUP, True),
    ("person:dave", GROUP, False),
    ("person:alice", item(), False),
    ("person:alice", item(faces="Alice", people={"Alice": 1}), False),
    ("-person:alice", GROUP, False),
    ("-person:dave", GROUP, True),
]


@table(PEOPLE)
def test_person(query: str, subject: Item, expected: bool) -> None:
    assert accepts(query, subject) is expected


class TellsEverything:
    """A context that knows better than the record: filters must ask it, not the record."""

    def person_names(self, subject: Any) -> set[str]:
        return {"zoe"}

    def place_matches(self, subject: Any, name: str) -> bool:
        return name == "Atlantis"

    def resolve_place(self, name: str) -> tuple[float, float] | None:
        return (0.0, 0.0)


def test_place_near_and_person_ask_the_context() -> None:
    ctx = TellsEverything()
    blank = at(0.001, 0.001)
    assert parse("person:Zoe place:Atlantis near:Nowhere,1km").accepts(blank, ctx)
    assert not parse("person:alice").accepts(GROUP, ctx)


def test_all_filters_must_accept() -> None:
    photo = taken("2023-05-05T10:00:00", media={"kind": "image"})
    video = taken("2023-05-05T10:00:00", media={"kind": "video"})
    assert accepts("date:2023 type:photo", photo)
    assert not accepts("date:2023 type:photo", video)
    assert accepts("date:2023 -type:photo", video)
    assert accepts("dog -snow", video)  # no filters: every item passes, ranking decides


def test_item_date_reads_local_day() -> None:
    assert str(item_date({"taken": {"local": "2023-06-01T23:59:59"}})) == "2023-06-01"
    assert item_date({}) is None


NAMES = st.sampled_from(
    ["local", "utc", "taken_local", "taken_utc", "gps", "lat", "lon", "kind", "make", "model",
     "lens", "city", "country", "person", "name", "id"]
) | st.text(max_size=8)  # fmt: skip
SCALARS = st.sampled_from(["image", "video", "2023-01-01", "2023:01:01", "Rome", "alice"])
JSON = st.recursive(
    st.none()
    | st.booleans()
    | st.integers()
    | st.integers(10**300)
    | st.floats()
    | st.text(max_size=12)
    | SCALARS,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(NAMES, inner, max_size=4),
    max_leaves=16,
)
KEYS = ["taken", "metadata", "media", "place", "faces", "people"]
RECORD = st.dictionaries(st.sampled_from(KEYS), JSON, max_size=6)
ALL_FILTERS = parse(
    "date:2023 type:photo camera:canon folder:trip folder:/photos place:rome near:1,2,3km "
    "near:rome person:alice"
)


@settings(deadline=None)  # a loaded machine must not turn slowness into failure
@given(RECORD)
def test_hostile_records_never_break_a_filter(record: dict[str, Any]) -> None:
    subject = Item(record)
    for flt in ALL_FILTERS.filters:
        assert isinstance(flt.accepts(subject, CTX), bool)

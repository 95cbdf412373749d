"""The typed query tree: what a query means, independent of how it was typed.

As in beets' dbcore, a query is a tree of small frozen objects and every filter knows how to
``match`` one item, so the engine can test items one by one and tests can build trees by hand
without the parser.  Semantic parts (text and ``similar:`` terms) are only described here;
ranking them needs the CLIP model and belongs to the engine.

Filters read the record (see :mod:`scanpixd.record`) defensively: a sidecar is user-writable
data, so a missing or malformed field makes a filter not match instead of raising.  What the
record alone cannot answer (who a face is, where a place name lies) is asked of a
:class:`MatchContext`; :class:`BasicContext` answers from the record so the filters work
without the rest of the library.

``str(query)`` writes the query back in the syntax :func:`scanpixd.query.parse` reads, in a
canonical order (positive terms, negative terms, ``similar:`` terms, filters), so an API can
echo how it understood a query and ``parse(str(q)) == q`` holds.
"""

from __future__ import annotations

import calendar
import math
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import date
from decimal import Decimal
from pathlib import Path
from typing import Any, ClassVar, Literal, Protocol

from scanpixd.errors import QueryError

EARTH_RADIUS_M = 6_371_008.8  # mean Earth radius (IUGG), what haversine distances assume


class ItemView(Protocol):
    """One indexed file as filters see it."""

    @property
    def record(self) -> dict[str, Any]: ...

    @property
    def path(self) -> Path:
        """The file's absolute path."""
        ...

    @property
    def root(self) -> Path:
        """The library root the file was found under."""
        ...


class MatchContext(Protocol):
    """Library-wide knowledge a filter needs beyond one record; the engine implements it."""

    def person_names(self, item: ItemView) -> set[str]:
        """Lowercased names and ids of the people recognised in ``item``."""
        ...

    def place_matches(self, item: ItemView, name: str) -> bool:
        """Whether ``item`` was taken in the place called ``name``."""
        ...

    def resolve_place(self, name: str) -> tuple[float, float] | None:
        """``(lat, lon)`` of a place name (forward geocoding), or None when it is unknown."""
        ...


def distance_m(lat1: float, lon1: float, lat2: float, lon2: float) -> float:
    """Great-circle distance in metres (haversine on a spherical Earth, within 0.5 %)."""
    phi1, phi2 = math.radians(lat1), math.radians(lat2)
    dphi, dlmb = phi2 - phi1, math.radians(lon2 - lon1)
    a = math.sin(dphi / 2) ** 2 + math.cos(phi1) * math.cos(phi2) * math.sin(dlmb / 2) ** 2
    return 2 * EARTH_RADIUS_M * math.asin(math.sqrt(min(1.0, max(0.0, a))))


# --- reading records --------------------------------------------------------------------------


def _dig(value: Any, *keys: str) -> Any:
    for key in keys:
        if not isinstance(value, dict):
            return None
        value = value.get(key)
    return value


_EXIF_DAY = re.compile(r"(\d{4}):(\d{2}):(\d{2})")


def _day(text: str) -> date | None:
    try:
        return date.fromisoformat(text[:10])
    except ValueError:
        pass
    exif = _EXIF_DAY.match(text)  # "2023:06:01 12:00:00", should a raw EXIF value slip through
    try:
        return date(int(exif[1]), int(exif[2]), int(exif[3])) if exif else None
    except ValueError:
        return None


def item_date(record: dict[str, Any]) -> date | None:
    """The local calendar day an item was taken, or None when nothing says.

    The inferred local time (``taken.local``) wins over the camera's own clock
    (``metadata.taken_local``); a UTC time is the last resort (within a day of the truth).
    Filters call this for every record, so it avoids anything slower than a dict lookup.
    """
    taken, meta = _dig(record, "taken"), _dig(record, "metadata")
    taken = taken if isinstance(taken, dict) else {}
    meta = meta if isinstance(meta, dict) else {}
    for value in (
        taken.get("local"),
        meta.get("taken_local"),
        taken.get("utc"),
        meta.get("taken_utc"),
    ):
        if isinstance(value, str):
            day = _day(value)
            if day is not None:
                return day
    return None


def _number(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    try:
        number = float(value)
    except OverflowError:  # an int beyond float range: no place on Earth
        return None
    return number if math.isfinite(number) else None


def item_position(record: dict[str, Any]) -> tuple[float, float] | None:
    """``(lat, lon)`` from the record's GPS, or None when absent or out of range."""
    lat = _number(_dig(record, "metadata", "gps", "lat"))
    lon = _number(_dig(record, "metadata", "gps", "lon"))
    if lat is None or lon is None or abs(lat) > 90 or abs(lon) > 180:
        return None
    return lat, lon


def _text(value: Any) -> str:
    return " ".join(value.split()).lower() if isinstance(value, str) else ""


# --- writing the syntax back ------------------------------------------------------------------

_SAFE_WORD = re.compile(r'[^\s"+^:\-][^\s"+^:]*')


def plain_number(value: float) -> str:
    """A float as the parser reads it back exactly: positional, no exponent, no ``.0``."""
    text = f"{Decimal(repr(value)):f}"
    return text[:-2] if text.endswith(".0") else text


def _quoted(text: str, force: bool = False) -> str:
    if force or not text or any(ch.isspace() for ch in text):
        return f'"{text}"'
    return text


def _phrase(text: str, single_word: bool) -> str:
    """Free words stay bare; a negative phrase or any word the parser would misread is quoted."""
    words = text.split()
    bare = bool(words) and all(_SAFE_WORD.fullmatch(word) for word in words)
    return text if bare and not (single_word and len(words) > 1) else f'"{text}"'


def _weight(weight: float) -> str:
    return "" if weight == 1.0 else f"^{plain_number(weight)}"


# --- terms ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class SemanticTerm:
    """Text to rank by CLIP similarity; a negative term demotes what it describes."""

    text: str
    weight: float = 1.0
    negative: bool = False

    def __str__(self) -> str:
        sign = "-" if self.negative else ""
        return f"{sign}{_phrase(self.text, single_word=self.negative)}{_weight(self.weight)}"


@dataclass(frozen=True)
class SimilarTerm:
    """An image to rank by similarity to (``similar:PATH``); the engine resolves the path."""

    path: str
    weight: float = 1.0
    negative: bool = False

    def __str__(self) -> str:
        sign = "-" if self.negative else ""
        path = _quoted(self.path, force="^" in self.path)
        return f"{sign}similar:{path}{_weight(self.weight)}"


# --- filters ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Filter:
    """A yes/no condition on one item; ``negated`` (``-field:value``) inverts it."""

    negated: bool = field(default=False, kw_only=True)
    key: ClassVar[str] = ""

    def match(self, item: ItemView, ctx: MatchContext) -> bool:
        """Whether the item meets the condition, ignoring ``negated``."""
        raise NotImplementedError

    def accepts(self, item: ItemView, ctx: MatchContext) -> bool:
        """Whether the item passes this filter, negation applied."""
        return self.match(item, ctx) != self.negated

    def bind(self, ctx: MatchContext) -> Filter:
        """This filter with everything the context must look up resolved (once, up front)."""
        return self

    def value_text(self) -> str:
        raise NotImplementedError

    def __str__(self) -> str:
        return f"{'-' if self.negated else ''}{self.key}:{self.value_text()}"


def _edge(day: date, first: bool) -> str:
    """A range end at the coarsest precision that still names it (2023-01-01 -> "2023")."""
    month_edge = day.day == (1 if first else calendar.monthrange(day.year, day.month)[1])
    if month_edge and day.month == (1 if first else 12):
        return f"{day.year:04d}"
    return f"{day.year:04d}-{day.month:02d}" if month_edge else day.isoformat()


@dataclass(frozen=True)
class DateFilter(Filter):
    """Taken on a local day from ``start`` to ``end``, both included.

    ``date.min`` / ``date.max`` stand for an open end.  An item without any date never
    matches, so ``-date:2023`` keeps undated items.
    """

    start: date
    end: date
    key: ClassVar[str] = "date"

    def __post_init__(self) -> None:
        if self.start > self.end:
            raise ValueError(f"date range starts after it ends: {self.start} > {self.end}")

    def match(self, item: ItemView, ctx: MatchContext) -> bool:
        day = item_date(item.record)
        return day is not None and self.start <= day <= self.end

    def value_text(self) -> str:
        if self.start == self.end:
            return self.start.isoformat()
        start = "" if self.start == date.min else _edge(self.start, first=True)
        end = "" if self.end == date.max else _edge(self.end, first=False)
        return start if start == end else f"{start}..{end}"


@dataclass(frozen=True)
class TypeFilter(Filter):
    """A photo (any still image, RAW included) or a video, by the sniffed media kind."""

    kind: Literal["photo", "video"]
    key: ClassVar[str] = "type"

    def match(self, item: ItemView, ctx: MatchContext) -> bool:
        kind = _dig(item.record, "media", "kind")
        return (kind == "image" and self.kind == "photo") or (kind == "video" == self.kind)

    def value_text(self) -> str:
        return self.kind


@dataclass(frozen=True)
class CameraFilter(Filter):
    """Case-insensitive substring of "make model" or of the lens (whitespace collapsed)."""

    text: str
    key: ClassVar[str] = "camera"

    def match(self, item: ItemView, ctx: MatchContext) -> bool:
        needle = _text(self.text)
        meta = _dig(item.record, "metadata")
        body = f"{_text(_dig(meta, 'make'))} {_text(_dig(meta, 'model'))}"
        return bool(needle) and (needle in body or needle in _text(_dig(meta, "lens")))

    def value_text(self) -> str:
        return _quoted(self.text)


@dataclass(frozen=True)
class FolderFilter(Filter):
    """The folder the item is in.

    An absolute value (``/…`` or ``~/…``) matches that folder and everything below it, by
    whole path components, case-sensitively (``folder:/photos/2023`` does not match
    ``/photos/2023b``).  Any other value is a case-insensitive substring of the item's folder
    relative to its library root, with ``/`` separators (``folder:trip`` matches
    ``2023/Trip to Rome``); items directly in the root have the empty relative folder.
    """

    text: str
    key: ClassVar[str] = "folder"

    def match(self, item: ItemView, ctx: MatchContext) -> bool:
        folder = item.path.parent
        if self.text.startswith(("/", "~")):
            base = Path(os.path.normpath(os.path.expanduser(self.text)))
            return folder == base or base in folder.parents
        try:
            relative = folder.relative_to(item.root).as_posix()
        except ValueError:
            return False
        needle = self.text.removeprefix("./").strip("/").casefold()
        return needle in ("" if relative == "." else relative.casefold())

    def value_text(self) -> str:
        return _quoted(self.text)


@dataclass(frozen=True)
class PlaceFilter(Filter):
    """Taken in a named place (city, region, country…), as the context decides."""

    name: str
    key: ClassVar[str] = "place"

    def match(self, item: ItemView, ctx: MatchContext) -> bool:
        return ctx.place_matches(item, self.name)

    def value_text(self) -> str:
        return _quoted(self.name)


@dataclass(frozen=True)
class NearFilter(Filter):
    """GPS position within ``radius_m`` metres of a point; items without GPS never match."""

    lat: float
    lon: float
    radius_m: float
    key: ClassVar[str] = "near"

    def match(self, item: ItemView, ctx: MatchContext) -> bool:
        position = item_position(item.record)
        return position is not None and distance_m(self.lat, self.lon, *position) <= self.radius_m

    def value_text(self) -> str:
        return f"{plain_number(self.lat)},{plain_number(self.lon)},{plain_number(self.radius_m)}m"


@dataclass(frozen=True)
class NearPlaceFilter(Filter):
    """Within ``radius_m`` of a named place, located by the context's forward geocoder."""

    name: str
    radius_m: float
    key: ClassVar[str] = "near"

    def bind(self, ctx: MatchContext) -> NearFilter:
        """The same filter at the place's coordinates; QueryError when nobody knows the place."""
        point = ctx.resolve_place(self.name)
        if point is None:
            raise QueryError(f"unknown place {self.name!r} in near:", self.name)
        return NearFilter(point[0], point[1], self.radius_m, negated=self.negated)

    def match(self, item: ItemView, ctx: MatchContext) -> bool:
        return self.bind(ctx).match(item, ctx)

    def value_text(self) -> str:
        return f"{_quoted(self.name, force=True)},{plain_number(self.radius_m)}m"


@dataclass(frozen=True)
class PersonFilter(Filter):
    """A recognised person, by name or id, case-insensitively."""

    name: str
    key: ClassVar[str] = "person"

    def match(self, item: ItemView, ctx: MatchContext) -> bool:
        return self.name.lower() in {name.lower() for name in ctx.person_names(item)}

    def value_text(self) -> str:
        return _quoted(self.name)


# --- the query --------------------------------------------------------------------------------


@dataclass(frozen=True)
class Query:
    """A whole query: semantic terms rank, filters select (all of them must accept).

    ``terms`` holds the positive terms in the order typed, then the negative ones.
    """

    terms: tuple[SemanticTerm, ...] = ()
    similar: tuple[SimilarTerm, ...] = ()
    filters: tuple[Filter, ...] = ()

    @property
    def is_semantic(self) -> bool:
        """Whether ranking needs the CLIP model: some positive text or similar term."""
        return any(not t.negative for t in self.terms) or any(not s.negative for s in self.similar)

    @property
    def positive_terms(self) -> tuple[SemanticTerm, ...]:
        return tuple(t for t in self.terms if not t.negative)

    @property
    def negative_terms(self) -> tuple[SemanticTerm, ...]:
        return tuple(t for t in self.terms if t.negative)

    @property
    def is_empty(self) -> bool:
        """An empty query asks for everything."""
        return not (self.terms or self.similar or self.filters)

    def accepts(self, item: ItemView, ctx: MatchContext) -> bool:
        return all(f.accepts(item, ctx) for f in self.filters)

    def bind(self, ctx: MatchContext) -> Query:
        """Resolve context lookups (place names for ``near:``) once, failing before any item."""
        return Query(self.terms, self.similar, tuple(f.bind(ctx) for f in self.filters))

    def __str__(self) -> str:
        parts = [" + ".join(str(t) for t in self.positive_terms)]
        parts += [str(t) for t in self.negative_terms]
        parts += [str(s) for s in self.similar] + [str(f) for f in self.filters]
        return " ".join(p for p in parts if p)


# --- a context from the record alone ----------------------------------------------------------


def _names(value: Any) -> set[str]:
    if isinstance(value, str) and value.strip():
        return {value.strip().lower()}
    if isinstance(value, int) and not isinstance(value, bool):
        return {str(value)}
    if isinstance(value, dict):
        return _names(value.get("name")) | _names(value.get("id"))
    return set()


class BasicContext:
    """Answers from the record only, so filters work (and are testable) without a library.

    People are ``record["faces"][i]["person"]`` and ``record["people"]`` entries (names, ids,
    or ``{"name", "id"}`` objects).  A place name matches when each of its comma-separated
    parts equals, case-insensitively, one of ``record["place"]``'s city, region, country or
    country code (``place:"Rome, Italy"``).  Forward geocoding knows only the ``places`` given.
    """

    def __init__(self, places: Mapping[str, tuple[float, float]] | None = None):
        self._places = {name.strip().lower(): point for name, point in (places or {}).items()}

    def person_names(self, item: ItemView) -> set[str]:
        names: set[str] = set()
        faces = item.record.get("faces")
        for face in faces if isinstance(faces, list) else ():
            names |= _names(_dig(face, "person"))
        people = item.record.get("people")
        for person in people if isinstance(people, list) else ():
            names |= _names(person)
        return names

    def place_matches(self, item: ItemView, name: str) -> bool:
        place = _dig(item.record, "place")
        fields = {_text(_dig(place, key)) for key in ("city", "region", "country", "country_code")}
        parts = [_text(part) for part in name.split(",") if part.strip()]
        return bool(parts) and all(part in fields for part in parts)

    def resolve_place(self, name: str) -> tuple[float, float] | None:
        return self._places.get(name.strip().lower())

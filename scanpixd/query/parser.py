"""Query text to a typed :class:`~scanpixd.query.tree.Query`, or a QueryError quoting the bad part.

The syntax follows beets (``field:value``, ``-`` negates, quotes group), with free text that is
semantic rather than a substring match.  Worked examples (run as doctests by the tests):

Free words form ONE phrase, however many words; ``+`` separates phrases that combine:

>>> parse("dog on the beach").terms
(SemanticTerm(text='dog on the beach', weight=1.0, negative=False),)
>>> [t.text for t in parse("dog + beach").terms]
['dog', 'beach']

``^`` weights the phrase it ends (and ends it); ``-`` demotes a word or a quoted phrase:

>>> parse('"red car"^0.5 -"parking lot" -snow^2').terms  # doctest: +NORMALIZE_WHITESPACE
(SemanticTerm(text='red car', weight=0.5, negative=False),
 SemanticTerm(text='parking lot', weight=1.0, negative=True),
 SemanticTerm(text='snow', weight=2.0, negative=True))

Filters are ``field:value`` (values quoted when they hold spaces), ``-field:value`` negates:

>>> parse('date:2023-06..2023-08 camera:"Canon EOS" -type:video').filters
... # doctest: +NORMALIZE_WHITESPACE
(DateFilter(negated=False, start=datetime.date(2023, 6, 1), end=datetime.date(2023, 8, 31)),
 CameraFilter(negated=False, text='Canon EOS'),
 TypeFilter(negated=True, kind='video'))
>>> parse("date:2023.. date:..2020-01").filters  # doctest: +NORMALIZE_WHITESPACE
(DateFilter(negated=False, start=datetime.date(2023, 1, 1), end=datetime.date(9999, 12, 31)),
 DateFilter(negated=False, start=datetime.date(1, 1, 1), end=datetime.date(2020, 1, 31)))
>>> parse('near:45.4,12.3,5km near:"Lake Como",2mi near:Paris').filters
... # doctest: +NORMALIZE_WHITESPACE
(NearFilter(negated=False, lat=45.4, lon=12.3, radius_m=5000.0),
 NearPlaceFilter(negated=False, name='Lake Como', radius_m=3218.688),
 NearPlaceFilter(negated=False, name='Paris', radius_m=25000.0))
>>> parse('similar:"holiday/IMG 1.jpg" -similar:blurry.jpg').similar
... # doctest: +NORMALIZE_WHITESPACE
(SimilarTerm(path='holiday/IMG 1.jpg', weight=1.0, negative=False),
 SimilarTerm(path='blurry.jpg', weight=1.0, negative=True))

Bad queries say what is wrong and where (``text[position:]`` starts with ``fragment``):

>>> parse("beach at 10:30")
Traceback (most recent call last):
...
scanpixd.errors.QueryError: unknown field '10' in '10:30'; fields are date, type, camera, \
folder, place, near, person, similar (to search for text with a colon, quote it: "10:30")

Rules worth knowing:

- A word with an unquoted ``:`` is a filter; an unknown field is an error, as in beets, so a
  typo never silently becomes a search (``http://x``, ``10:30``: quote them).
- Filters and negative terms do not split a phrase: ``dog date:2023 -snow beach`` searches
  ``dog beach``.  ``+`` needs a term (text or ``similar:``) on each side.
- Weights are plain positive numbers up to 100 (``dog^2``, ``dog^.5``); only ``-`` demotes.
- A query of nothing but negative terms is an error (it would rank the whole library, and is
  usually a mistyped option such as ``-json``); add a word, ``similar:`` or a filter.  An empty
  query is the empty :class:`Query` (everything).
- Dates: ``YYYY``, ``YYYY-MM``, ``YYYY-MM-DD``, a range ``A..B`` (from the start of A to the
  end of B), ``A..`` or ``..B``.  ``type:`` is ``photo`` or ``video`` (``image`` means photo).
- ``near:`` is ``LAT,LON[,RADIUS]`` or ``PLACE[,RADIUS]`` (quote a place with spaces or
  commas); RADIUS is a number with ``m``, ``km`` or ``mi``, km when unitless; the default is
  1 km around coordinates and 25 km around a named place.
- A ``similar:`` path may end in ``^WEIGHT``; quote a path that itself ends like that.
- Only ``"`` quotes (so ``don't`` is a plain word); quotes cannot be escaped.

Given a list (``sys.argv`` style), each argument is read on its own and positions count in the
arguments joined by single spaces.  The shell has already removed the quotes of
``camera:"Canon EOS"``, so an argument that starts with ``camera:``, ``folder:``, ``place:``,
``near:``, ``person:`` or ``similar:`` and holds whitespace but no quote is one whole filter.
"""

from __future__ import annotations

import calendar
import math
import re
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from datetime import date

from scanpixd.errors import QueryError
from scanpixd.query.tree import (
    CameraFilter,
    DateFilter,
    Filter,
    FolderFilter,
    NearFilter,
    NearPlaceFilter,
    PersonFilter,
    PlaceFilter,
    Query,
    SemanticTerm,
    SimilarTerm,
    TypeFilter,
)

FIELDS = ("date", "type", "camera", "folder", "place", "near", "person", "similar")
SPACED_FIELDS = ("camera", "folder", "place", "near", "person", "similar")
DEFAULT_NEAR_RADIUS_M = 1_000.0
DEFAULT_NEAR_PLACE_RADIUS_M = 25_000.0
MAX_WEIGHT = 100.0
TYPE_NAMES = {
    "photo": "photo",
    "photos": "photo",
    "image": "photo",
    "images": "photo",
    "video": "video",
    "videos": "video",
}
UNITS_M = {"m": 1.0, "km": 1000.0, "mi": 1609.344}

_NUMBER = re.compile(r"\d+(?:\.\d*)?|\.\d+")
_COORD = re.compile(r"[-+]?(?:\d+(?:\.\d*)?|\.\d+)")
_RADIUS = re.compile(r"(\d+(?:\.\d*)?|\.\d+)\s*(m|km|mi)?", re.IGNORECASE)
_DAY = re.compile(r"(\d{4})(?:-(\d{1,2})(?:-(\d{1,2}))?)?")
_SPACED = re.compile(rf"-?(?:{'|'.join(SPACED_FIELDS)}):", re.IGNORECASE)


@dataclass(frozen=True)
class _Span:
    """A piece of the input as typed (quotes included) and where it starts."""

    text: str
    pos: int

    def fail(self, message: str, piece: str | None = None, last: bool = False) -> QueryError:
        """An error quoting ``piece`` (located inside this span) or the whole span."""
        index = (self.text.rfind if last else self.text.find)(piece) if piece else -1
        if piece and index >= 0:
            return QueryError(message, piece, self.pos + index)
        return QueryError(message, self.text, self.pos)

    def sub(self, start: int, end: int | None = None) -> _Span:
        end = len(self.text) if end is None else end
        return _Span(self.text[start:end], self.pos + start)


def _unquoted(text: str, char: str) -> Iterator[int]:
    """Indexes of ``char`` outside double quotes."""
    quoted = False
    for index, ch in enumerate(text):
        if ch == '"':
            quoted = not quoted
        elif ch == char and not quoted:
            yield index


def _split(span: _Span, char: str) -> list[_Span]:
    cuts = [-1, *_unquoted(span.text, char), len(span.text)]
    return [span.sub(a + 1, b) for a, b in zip(cuts, cuts[1:], strict=False)]


def _plain(text: str) -> str:
    return text.replace('"', "").strip()


def _tokens(text: str, offset: int) -> Iterator[_Span]:
    """Whitespace-separated words; a quoted stretch (spaces and all) stays inside its word."""
    start: int | None = None
    quote: int | None = None
    for index, ch in enumerate(text):
        if ch == '"':
            quote = index if quote is None else None
        if start is None and not ch.isspace():
            start = index
        elif start is not None and quote is None and ch.isspace():
            yield _Span(text[start:index], offset + start)
            start = None
    if quote is not None:
        rest = text[quote:].rstrip()
        raise QueryError(f"unbalanced quote: {rest!r} has no closing '\"'", rest, offset + quote)
    if start is not None:
        yield _Span(text[start:], offset + start)


def _spans(query: str | Sequence[str]) -> Iterator[_Span]:
    if isinstance(query, str):
        yield from _tokens(query, 0)
        return
    offset = 0
    for arg in query:
        spaced = any(ch.isspace() for ch in arg.strip()) and '"' not in arg
        if spaced and _SPACED.match(arg.strip()):
            yield _Span(arg.strip(), offset + len(arg) - len(arg.lstrip()))
        else:
            yield from _tokens(arg, offset)
        offset += len(arg) + 1


# --- values -----------------------------------------------------------------------------------


def _weight(raw: str, owner: _Span) -> float:
    if not _NUMBER.fullmatch(raw) or not 0 < float(raw) <= MAX_WEIGHT:
        raise owner.fail(
            f"bad weight {raw!r} in {owner.text!r}: use a number above 0 and at most "
            f"{MAX_WEIGHT:g}, as in dog^2 or dog^0.5 (demote with -)"
        )
    return float(raw)


def _day_bound(span: _Span, text: str, first: bool) -> date:
    found = _DAY.fullmatch(text)
    if not found:
        raise span.fail(
            f"bad date {text!r}: use YYYY, YYYY-MM, YYYY-MM-DD or A..B", text, not first
        )
    year = int(found[1])
    month, day = (int(g) if g else None for g in found.groups()[1:])
    if year < 1 or (month is not None and not 1 <= month <= 12):
        raise span.fail(f"bad date {text!r}: no such year or month", text, not first)
    month = month or (1 if first else 12)
    last = calendar.monthrange(year, month)[1]
    if day is not None and not 1 <= day <= last:
        message = f"bad date {text!r}: {year}-{month:02d} has no day {day}"
        raise span.fail(message, text, not first)
    return date(year, month, day or (1 if first else last))


def _date(value: _Span, negated: bool) -> DateFilter:
    text = _plain(value.text)
    if ".." not in text:
        return DateFilter(
            _day_bound(value, text, True), _day_bound(value, text, False), negated=negated
        )
    left, _, right = text.partition("..")
    if not (left or right):
        raise value.fail("a date range '..' needs a date on at least one side")
    start = _day_bound(value, left, True) if left else date.min
    end = _day_bound(value, right, False) if right else date.max
    if start > end:
        raise value.fail(f"date range {text!r} ends before it starts")
    return DateFilter(start, end, negated=negated)


def _type(value: _Span, negated: bool) -> TypeFilter:
    kind = TYPE_NAMES.get(_plain(value.text).lower())
    if kind is None:
        raise value.fail(f"unknown type {_plain(value.text)!r}: use type:photo or type:video")
    return TypeFilter("photo" if kind == "photo" else "video", negated=negated)


def _radius(span: _Span) -> float:
    found = _RADIUS.fullmatch(_plain(span.text))
    metres = float(found[1]) * UNITS_M[(found[2] or "km").lower()] if found else 0.0
    if not 0 < metres < math.inf:
        raise span.fail(
            f"bad radius {span.text!r}: use a positive distance like 500m, 5km or 2mi "
            '(quote a place name that holds a comma: near:"Paris, France")'
        )
    return metres


def _near(value: _Span, negated: bool) -> Filter:
    pieces = _split(value, ",")
    usage = "near: wants LAT,LON[,RADIUS] or PLACE[,RADIUS] (quote places with spaces or commas)"
    if any(not _plain(p.text) for p in pieces):
        raise value.fail(f"empty part in {value.text!r}; {usage}, without spaces")
    if _COORD.fullmatch(pieces[0].text):
        if len(pieces) not in (2, 3) or not _COORD.fullmatch(pieces[1].text):
            raise value.fail(f"cannot read {value.text!r}; {usage}")
        lat, lon = float(pieces[0].text), float(pieces[1].text)
        if abs(lat) > 90 or abs(lon) > 180:
            raise value.fail(
                f"{value.text!r} is off the map: latitude is -90..90, longitude -180..180"
            )
        radius = _radius(pieces[2]) if len(pieces) == 3 else DEFAULT_NEAR_RADIUS_M
        return NearFilter(lat, lon, radius, negated=negated)
    if len(pieces) > 2:
        raise value.fail(f"cannot read {value.text!r}; {usage}")
    radius = _radius(pieces[1]) if len(pieces) == 2 else DEFAULT_NEAR_PLACE_RADIUS_M
    return NearPlaceFilter(_plain(pieces[0].text), radius, negated=negated)


def _similar(value: _Span, negated: bool) -> SimilarTerm:
    hats = list(_unquoted(value.text, "^"))
    weight, path_span = 1.0, value
    if hats and _NUMBER.fullmatch(value.text[hats[-1] + 1 :]):
        weight = _weight(value.text[hats[-1] + 1 :], value)
        path_span = value.sub(0, hats[-1])
    path = _plain(path_span.text)
    if not path:
        raise value.fail(f"similar:{value.text} needs the path of an image")
    return SimilarTerm(path, weight, negated)


_SIMPLE = {
    "camera": CameraFilter,
    "folder": FolderFilter,
    "place": PlaceFilter,
    "person": PersonFilter,
}


def _field(span: _Span, colon: int) -> Filter | SimilarTerm:
    negated = span.text.startswith("-")
    name = span.text[int(negated) : colon]
    if '"' in name:
        raise span.fail(f"unexpected ':' in {span.text!r}; to search for it, quote the whole word")
    if name.lower() not in FIELDS:
        label = f"unknown field {name!r}" if name else "missing field name"
        raise span.fail(
            f"{label} in {span.text!r}; fields are {', '.join(FIELDS)} "
            f'(to search for text with a colon, quote it: "{span.text}")'
        )
    key, value = name.lower(), span.sub(colon + 1)
    if not _plain(value.text):
        raise span.fail(f"empty value in {span.text!r}: write {key}:VALUE")
    if key == "date":
        return _date(value, negated)
    if key == "type":
        return _type(value, negated)
    if key == "near":
        return _near(value, negated)
    if key == "similar":
        return _similar(value, negated)
    return _SIMPLE[key](_plain(value.text), negated=negated)


# --- assembling terms -------------------------------------------------------------------------


class _Builder:
    """Collects items left to right: positive words gather into the open phrase."""

    def __init__(self) -> None:
        self.positive: list[SemanticTerm] = []
        self.negative: list[SemanticTerm] = []
        self.similar: list[SimilarTerm] = []
        self.filters: list[Filter] = []
        self.words: list[str] = []
        self.seen_term = False
        self.pending_plus: _Span | None = None
        self.first_negative: _Span | None = None

    def close(self, weight: float = 1.0) -> None:
        if self.words:
            self.positive.append(SemanticTerm(" ".join(self.words), weight))
            self.words = []

    def plus(self, span: _Span) -> None:
        if not self.seen_term or self.pending_plus is not None:
            raise span.fail("'+' joins two terms: put a word or similar: on each side")
        self.close()
        self.pending_plus = span

    def termed(self, span: _Span, negative: bool) -> None:
        self.seen_term, self.pending_plus = True, None
        if negative and self.first_negative is None:
            self.first_negative = span

    def word(self, span: _Span) -> None:
        negative = span.text.startswith("-")
        body = span.sub(int(negative))
        if not body.text or body.text.startswith("-"):
            raise span.fail(
                f"{span.text!r}: '-' must be followed by a word, a quoted phrase or a filter"
            )
        hats = list(_unquoted(body.text, "^"))
        weight = _weight(body.text[hats[0] + 1 :], span) if hats else None
        words = _plain(body.text[: hats[0]] if hats else body.text).split()
        if not words:
            raise span.fail(f"{span.text!r} has no text to search for")
        self.termed(span, negative)
        if negative:
            self.negative.append(
                SemanticTerm(" ".join(words), 1.0 if weight is None else weight, True)
            )
            return
        self.words += words
        if weight is not None:
            self.close(weight)

    def token(self, span: _Span) -> None:
        colon = next(_unquoted(span.text, ":"), -1)
        if colon < 0:
            for index, piece in enumerate(_split(span, "+")):
                if index:
                    self.plus(_Span("+", piece.pos - 1))
                if piece.text:
                    self.word(piece)
            return
        item = _field(span, colon)
        if isinstance(item, SimilarTerm):
            self.termed(span, item.negative)
            self.similar.append(item)
        else:
            self.filters.append(item)

    def finish(self) -> Query:
        if self.pending_plus is not None:
            raise self.pending_plus.fail("'+' at the end joins nothing: add a term after it")
        self.close()
        wants = self.positive or self.filters or any(not s.negative for s in self.similar)
        if self.first_negative is not None and not wants:
            only = self.first_negative
            message = f"{only.text!r} only demotes: add a word, similar: or a filter to search for"
            raise only.fail(message)
        return Query(tuple(self.positive + self.negative), tuple(self.similar), tuple(self.filters))


def parse(query: str | Sequence[str]) -> Query:
    """Parse query text, or argv-style arguments, into a :class:`Query`.

    Raises :class:`~scanpixd.errors.QueryError` whose ``fragment`` is the offending part as
    typed and ``position`` its offset in the text (in the space-joined arguments for a list).
    """
    builder = _Builder()
    for span in _spans(query):
        builder.token(span)
    return builder.finish()

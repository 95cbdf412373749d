"""When, in UTC and in which time zone, each item of a library was taken.

Cameras write the local clock time and usually nothing else, so the instant has to be
inferred.  For every item the first rule that applies wins, and the result says which::

    offset-tag  the file's own offset (OffsetTimeOriginal, a QuickTime CreationDate with
                an offset); the zone is the GPS zone when that zone had this offset at
                that instant, else a fixed offset such as "UTC+03:00"
    gps         the IANA zone at the file's GPS position (timezonefinder), with the
                offset that zone had on that date (zoneinfo: DST and historical changes)
    neighbour   the zone of the geotagged item nearest in time, within
                ``time.neighbour_window`` hours; the same camera (make and model) is
                preferred to a closer item from another camera
    home        ``time.home_timezone``
    utc-tag     only a UTC instant is known (a QuickTime CreateDate): shown in UTC
    unknown     the local clock time as recorded, with no UTC instant

A QuickTime time stored in UTC (``metadata.taken_utc``) is the instant itself; its local
time is derived from that instant in the zone found above, so videos need no offset.

Clock times that a DST change makes ambiguous or impossible are read with ``fold=0``
(PEP 495): a time that occurred twice (the hour after clocks go back) is taken as the
first occurrence, in summer time; a time that never existed (the hour skipped when
clocks go forward) is read with the offset in force before the change (a camera whose
clock was not moved yet).  The local time is kept as the camera wrote it, and the stated
offset is the one used, so ``local - offset == utc`` always holds.

Neighbours lend only zones found from GPS, never borrowed ones, so the answer does not
depend on the order of items, and a second pass over unchanged items changes nothing.
"""

from __future__ import annotations

import re
from bisect import bisect_left
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta, tzinfo
from operator import attrgetter
from typing import TYPE_CHECKING, Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from scanpixd.errors import ConfigError
from scanpixd.geo import timezone_at, valid_gps

if TYPE_CHECKING:
    from scanpixd.config import Settings
    from scanpixd.record import Record

SOURCES = ("offset-tag", "gps", "neighbour", "home", "utc-tag", "unknown")

_EPOCH = datetime(1970, 1, 1)
_SECOND = timedelta(seconds=1)
_MAX_OFFSET = timedelta(hours=14)
_OFFSET_RE = re.compile(r"^([+-])(\d{1,2})(?::?(\d{2}))?(?::?(\d{2}))?$")
_NO_TIME = {"local": None, "utc": None, "timezone": None, "offset": None, "source": "unknown"}


def infer_times(items: Sequence[tuple[str, Record]], settings: Settings) -> dict[str, dict]:
    """The new ``record["taken"]`` of every item whose value changes, by the caller's key.

    Pass every item of the library on each pass: an item's answer may depend on its
    geotagged neighbours, and is recomputed (and reported) when they change.
    """
    home = home_zone(settings.time.home_timezone)
    window = int(settings.time.neighbour_window * 3600)
    facts = [_Facts.of(key, record) for key, record in items]
    lenders = _Lenders(f for f in facts if f.zone is not None)
    changes: dict[str, dict] = {}
    for fact, (key, record) in zip(facts, items, strict=True):
        taken = _infer(fact, lenders, home, window)
        if record.get("taken") != taken:
            changes[key] = taken
    return changes


def home_zone(name: str) -> tzinfo | None:
    """The configured home zone, or None when unset; a name zoneinfo does not know is an error."""
    if not name:
        return None
    zone = _zone(name)
    if zone is None:
        raise ConfigError(f"time.home_timezone: unknown time zone {name!r} (use an IANA name "
                          "such as 'Europe/Rome')")
    return zone


# --- per-item facts ----------------------------------------------------------------------


@dataclass(slots=True)
class _Facts:
    """What one record says about its own time, parsed once."""

    key: str
    local: datetime | None  # naive clock time
    local_text: str | None  # as the record spells it, reused when canonical
    utc: datetime | None  # naive, in UTC
    offset: timedelta | None
    camera: tuple[str, str] | None
    zone_name: str | None  # from GPS
    zone: tzinfo | None
    local_s: int = 0  # for lenders: both axes, in seconds
    utc_s: int = 0
    zone_offset: timedelta | None = None  # for lenders: the GPS zone's offset then

    @classmethod
    def of(cls, key: str, record: Record) -> _Facts:
        meta = record.get("metadata")
        if type(meta) is not dict:
            meta = {}
        text = meta.get("taken_local")
        local, own_offset = _parse_local(text)
        offset = _parse_offset(meta.get("offset"))
        if offset is None:
            offset = own_offset
        canonical = text if local is not None and own_offset is None and _is_canonical(text) else None
        zone_name = _gps_zone(record, meta)
        zone = _zone(zone_name) if zone_name else None
        fact = cls(key, local, canonical, _parse_utc(meta.get("taken_utc")), offset,
                   _camera(meta), zone_name if zone else None, zone)
        if zone is not None and not fact._place_on_axes(zone):
            fact.zone = fact.zone_name = None  # a geotagged item with no usable time lends nothing
        return fact

    def _place_on_axes(self, zone: tzinfo) -> bool:
        try:
            if self.utc is not None:
                local, self.zone_offset = _utc_to_local(self.utc, zone)
                utc = self.utc
            elif self.local is not None:
                local = self.local
                utc, self.zone_offset = _local_to_utc(local, zone)
            else:
                return False
        except (OverflowError, ValueError):
            return False
        self.local_s = (local - _EPOCH) // _SECOND
        self.utc_s = (utc - _EPOCH) // _SECOND
        return True


def _is_canonical(text: Any) -> bool:
    return isinstance(text, str) and len(text) == 19 and text[10] == "T"


def _gps_zone(record: Record, meta: dict[str, Any]) -> str | None:
    """The zone at the item's GPS position: the place stage's answer, else looked up now."""
    position = valid_gps(meta.get("gps"))
    if position is None:
        return None
    place = record.get("place")
    if type(place) is dict:
        name = place.get("timezone")
        if isinstance(name, str) and _zone(name) is not None:
            return name
    return timezone_at(*position)


def _parse_local(value: Any) -> tuple[datetime | None, timedelta | None]:
    if not isinstance(value, str) or not value:
        return None, None
    try:
        dt = datetime.fromisoformat(value)
    except ValueError:
        return None, None
    if dt.tzinfo is not None:  # a local time that carries its offset
        return dt.replace(tzinfo=None), _checked_offset(dt.utcoffset())
    return dt, None


def _parse_utc(value: Any) -> datetime | None:
    if not isinstance(value, str) or not value:
        return None
    try:
        dt = datetime.fromisoformat(value)
    except ValueError:
        return None
    if dt.tzinfo is not None:
        try:
            dt = dt.astimezone(UTC).replace(tzinfo=None)
        except OverflowError:
            return None
    return dt if dt.year >= 1970 else None  # QuickTime writes 1904-01-01 for "not set"


def _parse_offset(value: Any) -> timedelta | None:
    if not isinstance(value, str):
        return None
    try:
        return _offsets[value]
    except KeyError:
        pass
    if len(_offsets) > 1000:
        _offsets.clear()
    parsed = _offsets[value] = _parse_offset_text(value.strip())
    return parsed


_offsets: dict[str, timedelta | None] = {}


def _parse_offset_text(text: str) -> timedelta | None:
    if text in ("Z", "z"):
        return timedelta(0)
    match = _OFFSET_RE.match(text)
    if not match:
        return None
    sign, hours, minutes, seconds = match.groups()
    delta = timedelta(hours=int(hours), minutes=int(minutes or 0), seconds=int(seconds or 0))
    return _checked_offset(-delta if sign == "-" else delta)


def _checked_offset(delta: timedelta | None) -> timedelta | None:
    if delta is None or abs(delta) > _MAX_OFFSET:
        return None
    return delta


def _camera(meta: dict[str, Any]) -> tuple[str, str] | None:
    raw = (meta.get("make"), meta.get("model"))
    try:
        return _cameras[raw]
    except (KeyError, TypeError):
        pass
    make = str(raw[0] or "").strip().casefold()
    model = str(raw[1] or "").strip().casefold()
    camera = (make, model) if make or model else None
    try:
        if len(_cameras) > 10000:
            _cameras.clear()
        _cameras[raw] = camera
    except TypeError:  # an unhashable value in a hand-edited record
        pass
    return camera


_cameras: dict[tuple[Any, Any], tuple[str, str] | None] = {}


# --- zones ----------------------------------------------------------------------------------

_zones: dict[str, tzinfo | None] = {}


def _zone(name: str) -> tzinfo | None:
    try:
        return _zones[name]
    except KeyError:
        pass
    try:
        zone: tzinfo | None = ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError, OSError):
        zone = None  # not a zone name (a hand-edited record): as if there were no zone
    if len(_zones) > 1000:
        _zones.clear()
    _zones[name] = zone
    return zone


def _local_to_utc(local: datetime, zone: tzinfo) -> tuple[datetime, timedelta]:
    """UTC for a clock time in ``zone``; fold=0 (see the module docstring)."""
    offset = local.replace(tzinfo=zone).utcoffset()  # fold is 0 on a naive value
    assert offset is not None
    return local - offset, offset


def _utc_to_local(utc: datetime, zone: tzinfo) -> tuple[datetime, timedelta]:
    aware = utc.replace(tzinfo=UTC).astimezone(zone)
    offset = aware.utcoffset()
    assert offset is not None
    return aware.replace(tzinfo=None), offset


# --- neighbours -------------------------------------------------------------------------------


class _Axis:
    """Geotagged items in time order on one axis, for nearest-in-time lookups by bisection."""

    def __init__(self, times: list[int], facts: list[_Facts]):
        self.times = times
        self.facts = facts

    def nearest(self, t: int, window: int) -> _Facts | None:
        times = self.times
        i = bisect_left(times, t)
        best: _Facts | None = None
        best_gap = window + 1
        for j in (i - 1, i):  # the later one wins only when strictly closer
            if 0 <= j < len(times):
                gap = abs(times[j] - t)
                if gap < best_gap:
                    best, best_gap = self.facts[j], gap
        return best


class _Lenders:
    """Geotagged items, by camera and all together, on the clock-time and UTC axes."""

    def __init__(self, facts: Iterable[_Facts]):
        lenders = list(facts)
        self.camera_axes: dict[tuple[str, str], tuple[_Axis, _Axis]] = {}
        self.axes = (self._axis(lenders, "local_s", 0), self._axis(lenders, "utc_s", 1))

    def _axis(self, lenders: list[_Facts], field: str, which: int) -> _Axis:
        ordered = sorted(lenders, key=attrgetter(field, "key"))
        times = [getattr(f, field) for f in ordered]
        groups: dict[tuple[str, str], tuple[list[int], list[_Facts]]] = {}
        for t, f in zip(times, ordered, strict=True):
            if f.camera is not None:
                group = groups.get(f.camera)
                if group is None:
                    group = groups[f.camera] = ([], [])
                group[0].append(t)
                group[1].append(f)
        for camera, (cam_times, cam_facts) in groups.items():
            pair = self.camera_axes.setdefault(camera, (_Axis([], []), _Axis([], [])))
            pair[which].times, pair[which].facts = cam_times, cam_facts
        return _Axis(times, ordered)

    def nearest(self, fact: _Facts, window: int) -> _Facts | None:
        """The lender for ``fact``: same camera first, then any; by UTC when the item has a
        UTC instant, else by clock time (cameras keep local time)."""
        if fact.utc is not None:
            axis, t = 1, (fact.utc - _EPOCH) // _SECOND
        elif fact.local is not None:
            axis, t = 0, (fact.local - _EPOCH) // _SECOND
        else:
            return None
        own = self.camera_axes.get(fact.camera) if fact.camera is not None else None
        if own is not None:
            found = own[axis].nearest(t, window)
            if found is not None:
                return found
        return self.axes[axis].nearest(t, window)


# --- the rules ----------------------------------------------------------------------------------


def _infer(fact: _Facts, lenders: _Lenders, home: tzinfo | None, window: int) -> dict:
    if fact.local is None and fact.utc is None:
        return dict(_NO_TIME)
    try:
        if fact.offset is not None:
            return _from_offset(fact)
        if fact.zone is not None and fact.zone_name is not None:
            return _from_gps(fact)
        lender = lenders.nearest(fact, window) if window > 0 else None
        if lender is not None and lender.zone is not None and lender.zone_name is not None:
            taken = _in_zone(fact, lender.zone, lender.zone_name, "neighbour")
            taken["neighbour"] = lender.key
            return taken
        if home is not None:
            return _in_zone(fact, home, str(home), "home")
    except (OverflowError, ValueError):
        pass  # a date at the edge of the calendar: no instant
    if fact.utc is not None:
        return _taken(fact.utc, fact.utc, "UTC", timedelta(0), "utc-tag")
    return _taken(fact.local, None, None, None, "unknown", fact.local_text)


def _from_offset(fact: _Facts) -> dict:
    offset = fact.offset
    assert offset is not None
    if fact.local is not None:
        local, utc = fact.local, fact.local - offset
    else:
        assert fact.utc is not None
        local, utc = fact.utc + offset, fact.utc
    name = _fixed_name(offset)
    zone = fact.zone
    if zone is not None and fact.zone_name and _utc_to_local(utc, zone)[1] == offset:
        name = fact.zone_name
    return _taken(local, utc, name, offset, "offset-tag")


def _from_gps(fact: _Facts) -> dict:
    """Like :func:`_in_zone` with the offset the lender axes already worked out."""
    offset = fact.zone_offset
    assert offset is not None
    if fact.utc is not None:
        return _taken(fact.utc + offset, fact.utc, fact.zone_name, offset, "gps")
    assert fact.local is not None
    return _taken(fact.local, fact.local - offset, fact.zone_name, offset, "gps", fact.local_text)


def _in_zone(fact: _Facts, zone: tzinfo, name: str, source: str) -> dict:
    if fact.utc is not None:
        local, offset = _utc_to_local(fact.utc, zone)
        return _taken(local, fact.utc, name, offset, source)
    assert fact.local is not None
    utc, offset = _local_to_utc(fact.local, zone)
    return _taken(fact.local, utc, name, offset, source, fact.local_text)


def _taken(local: datetime | None, utc: datetime | None, zone: str | None,
           offset: timedelta | None, source: str, local_text: str | None = None) -> dict:
    if local_text is None and local is not None:
        local_text = local.isoformat(timespec="seconds")
    return {
        "local": local_text,
        "utc": utc.isoformat(timespec="seconds") + "Z" if utc is not None else None,
        "timezone": zone,
        "offset": format_offset(offset) if offset is not None else None,
        "source": source,
    }


def format_offset(offset: timedelta) -> str:
    """``+03:00``; seconds only when there are any (local mean times before 1900)."""
    try:
        return _offset_texts[offset]
    except KeyError:
        pass
    if len(_offset_texts) > 1000:
        _offset_texts.clear()
    text = _offset_texts[offset] = _format_offset(offset)
    return text


_offset_texts: dict[timedelta, str] = {}


def _format_offset(offset: timedelta) -> str:
    sign = "-" if offset < timedelta(0) else "+"
    seconds = int(abs(offset).total_seconds())
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    text = f"{sign}{hours:02d}:{minutes:02d}"
    return f"{text}:{secs:02d}" if secs else text


def _fixed_name(offset: timedelta) -> str:
    return f"UTC{format_offset(offset)}"

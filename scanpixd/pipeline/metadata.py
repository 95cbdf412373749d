"""The metadata stage: one normalised record of when, where and with what a file was made.

Cameras, phones and video containers spell the same facts in many tags (EXIF, XMP, IPTC,
QuickTime atoms, maker notes), some in local time and some in UTC, some signed and some
with N/S refs.  Every later stage (time inference, places, duplicates, queries) reads only
the normalised fields below, so the tag zoo stays in this one module::

    taken_local  "2008-10-22T16:28:39[.ffffff]"  local clock time of capture (never the mtime)
    taken_tag    the tag taken_local came from, e.g. "ExifIFD:DateTimeOriginal"
    offset       "+03:00"  the file's own UTC offset for taken_local, or null
    taken_utc    "2019-07-24T08:25:57Z"  a time the file stores in UTC (QuickTime), or null
    gps_utc      "2022-08-14T11:12:32Z"  the GPS receiver's UTC time stamp, or null
    gps          {"lat", "lon", "alt"} decimal degrees / metres, or null
    make, model, lens, width, height, orientation (1-8), duration (seconds)
    source       "exiftool" | "pillow"
    raw          the tag dump, made JSON-safe and compact

Without exiftool the stage reads EXIF with Pillow into a dump spelt like exiftool's, so
both go through the same normalisation.
"""

from __future__ import annotations

import logging
import math
import re
import threading
from collections.abc import Callable, Iterable, Mapping
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

from scanpixd.pipeline.base import Job, Stage, Tier
from scanpixd.pipeline.exiftool import ExifToolUnavailable
from scanpixd.pipeline.services import Services
from scanpixd.record import Record

log = logging.getLogger(__name__)

Dump = Mapping[str, Any]

# Local capture time, best first: (tag, groups it may come from; None = any group).
LOCAL_TIME_TAGS: tuple[tuple[str, tuple[str, ...] | None], ...] = (
    ("SubSecDateTimeOriginal", ("Composite",)),
    ("DateTimeOriginal", ("ExifIFD", "IFD0", "XMP-exif")),
    ("SubSecCreateDate", ("Composite",)),
    ("CreateDate", ("ExifIFD", "XMP-xmp", "XMP-exif")),
    ("DateTimeDigitized", ("XMP-exif",)),
    ("DateCreated", ("XMP-photoshop",)),
    ("DateTimeCreated", ("Composite",)),  # IPTC date + time
    ("CreationDate", ("Keys", "UserData", "ItemList")),  # QuickTime, local with offset
    ("ContentCreateDate", ("ItemList",)),
    ("DateTimeOriginal", None),  # maker notes, RIFF, H264, DV, raw formats...
    ("SubSecModifyDate", ("Composite",)),
    ("ModifyDate", ("IFD0",)),
)
# Offsets that belong with a local time tag (the first valid one wins).
OFFSET_TAGS = {
    "DateTimeOriginal": ("OffsetTimeOriginal", "OffsetTime"),
    "CreateDate": ("OffsetTimeDigitized", "OffsetTime"),
    "ModifyDate": ("OffsetTime",),
}
# Times that QuickTime stores in UTC by specification.
UTC_TIME_TAGS: tuple[tuple[str, tuple[str, ...] | None], ...] = (
    ("CreateDate", ("QuickTime",)),
    ("MediaCreateDate", ("Track*",)),
    ("TrackCreateDate", ("Track*",)),
)
CAMERA_GROUPS = ("IFD0", "Keys", "UserData", "ItemList", "XMP-tiff", "QuickTime")
LENS_TAGS: tuple[tuple[str, tuple[str, ...] | None], ...] = (
    ("LensModel", ("ExifIFD", "XMP-exifEX", "Keys")),
    ("LensID", ("Composite",)),
    ("Lens", ("XMP-aux",)),
    ("LensModel", None),
    ("Lens", None),
)
DURATION_GROUPS = ("QuickTime", "Composite", "Matroska", "ASF", "Flash", "M2TS", "RIFF", "DV")
ROTATION_TO_ORIENTATION = {0: 1, 90: 6, 180: 3, 270: 8}  # clockwise degrees -> EXIF value

RAW_STRING_MAX = 256
RAW_LIST_MAX = 32
RAW_BYTES_MAX = 48_000  # the dump stays well under this in JSON; later tags are left out
_DROP_GROUPS = {"System", "ExifTool", "ICC-header", "ICC-view", "ICC-meas", "ICC-chrm"}
_KEEP_EXIFTOOL = {"ExifTool:Warning", "ExifTool:Error"}
# Where embedded images and raw data lie inside the file: of no use once indexed.
_DROP_TAG_RE = re.compile(r"^(Thumbnail|Preview|JpgFromRaw|OtherImage|Strip|Tile|DataDump)")
_NUMBERS_RE = re.compile(r"^[-+0-9.eE ,]*$")
_DATE_RE = re.compile(
    r"^\s*(\d{4})[:\-/.](\d{1,2})[:\-/.](\d{1,2})[ T](\d{1,2}):(\d{2})(?::(\d{2})(?:[.,](\d+))?)?"
    r"\s*(Z|[+-]\d{2}:?\d{2})?\s*(?:DST)?\s*$"
)
_OFFSET_RE = re.compile(r"^\s*([+-])(\d{1,2}):?(\d{2})\s*$")
_MAX_OFFSET = timedelta(hours=14)


class MetadataStage(Stage):
    """Reads the file's tags (exiftool, else Pillow) into ``record["metadata"]``."""

    name = "metadata"
    version = 1
    tier = Tier.CHEAP

    def __init__(self, services: Services):
        self.services = services
        self._warn_lock = threading.Lock()
        self._warned = False

    def is_current(self, record: Record) -> bool:
        """Also stale: a record read by the Pillow fallback, once exiftool runs here."""
        if not super().is_current(record):
            return False
        if self.name in (record.get("errors") or {}):
            return True  # failed at this version: not retried until the file changes
        meta = record.get(self.name)
        if isinstance(meta, dict) and meta.get("source") == "pillow":
            return not self.services.exiftool.available
        return True

    def run(self, job: Job) -> None:
        dump, source = self._dump(job)
        job.record[self.name] = normalise(dump, source)

    def _dump(self, job: Job) -> tuple[Dump, str]:
        dump = job.metadata
        if dump is None:
            try:
                dump = self.services.exiftool.metadata([job.path])[job.path]
            except ExifToolUnavailable as exc:
                self._warn_once(exc)
                return pillow_dump(job.path), "pillow"
        error = dump.get("error")
        if error:
            raise ValueError(f"exiftool: {error}")
        return dump, "exiftool"

    def _warn_once(self, exc: Exception) -> None:
        with self._warn_lock:
            if not self._warned:
                self._warned = True
                log.warning("%s; reading metadata with Pillow instead (EXIF only, no video "
                            "metadata)", exc)


# -- normalisation ---------------------------------------------------------------------------
def normalise(dump: Dump, source: str) -> dict[str, Any]:
    """The normalised metadata record for one tag dump."""
    tags = _Tags(dump)
    local, offset, utc, tag = _capture_time(tags)
    utc = _quicktime_utc(tags) or utc
    width, height = _dimensions(tags)
    return {
        "taken_local": local.isoformat() if local else None,
        "taken_tag": tag,
        "offset": _format_offset(offset),
        "taken_utc": _format_utc(utc),
        "gps_utc": _format_utc(_gps_time(tags)),
        "gps": _gps(tags),
        "make": _text(tags.first(("Make",), CAMERA_GROUPS)),
        "model": _text(tags.first(("Model",), CAMERA_GROUPS)),
        "lens": _lens(tags),
        "width": width,
        "height": height,
        "orientation": _orientation(tags),
        "duration": _duration(tags),
        "source": source,
        "raw": compact_raw(dump),
    }


class _Tags:
    """Lookups by tag name with a group preference (keys are ``Group:Tag``)."""

    def __init__(self, dump: Dump):
        self.by_tag: dict[str, list[tuple[str, Any]]] = {}
        for key, value in dump.items():
            group, _, tag = key.rpartition(":")
            self.by_tag.setdefault(tag, []).append((group, value))

    def values(self, tag: str, groups: Iterable[str] | None = None) -> list[tuple[str, Any]]:
        """``(group, value)`` pairs for ``tag``, in the order of ``groups`` (or the dump's)."""
        found = self.by_tag.get(tag, [])
        if groups is None:
            return list(found)
        ordered = []
        for wanted in groups:
            ordered += [(g, v) for g, v in found if _group_matches(g, wanted)]
        return ordered

    def get(self, tag: str, groups: Iterable[str] | None = None) -> Any:
        pairs = self.values(tag, groups)
        return pairs[0][1] if pairs else None

    def first(self, names: Iterable[str], groups: Iterable[str] | None,
              accept: Callable[[Any], Any] | None = None) -> Any:
        """The first acceptable value of ``names`` in ``groups``, then in any group."""
        accept = accept or _text
        for scope in (groups, None):
            for name in names:
                for _group, value in self.values(name, scope):
                    if accept(value) is not None:
                        return value
        return None


def _group_matches(group: str, wanted: str) -> bool:
    return group.startswith(wanted[:-1]) if wanted.endswith("*") else group == wanted


def _capture_time(tags: _Tags) -> tuple[datetime | None, timedelta | None, datetime | None,
                                          str | None]:
    """``(local, offset, utc, tag)`` from the best capture-time tag present.

    The best tag decides: one stated in UTC (an XMP date ending in Z) gives the instant and
    leaves the local clock time unknown, rather than falling back to a worse local tag.
    """
    for name, groups in LOCAL_TIME_TAGS:
        for group, value in tags.values(name, groups):
            parsed = parse_datetime(value, subsec=_subsec(tags, name, group))
            if parsed is None:
                continue
            moment, offset, is_utc = parsed
            if is_utc:
                return None, None, moment, f"{group}:{name}"
            if offset is None:
                offset = _companion_offset(tags, name)
            return moment, offset, None, f"{group}:{name}"
    return None, None, None, None


def _subsec(tags: _Tags, name: str, group: str) -> Any:
    if group != "ExifIFD":
        return None
    companion = {"DateTimeOriginal": "SubSecTimeOriginal", "CreateDate": "SubSecTimeDigitized",
                 "ModifyDate": "SubSecTime"}.get(name)
    return tags.get(companion, ("ExifIFD",)) if companion else None


def _companion_offset(tags: _Tags, name: str) -> timedelta | None:
    base = name.removeprefix("SubSec")
    for offset_tag in OFFSET_TAGS.get(base, ()):
        offset = parse_offset(tags.get(offset_tag, ("ExifIFD", "IFD0")))
        if offset is not None:
            return offset
    return None


def _quicktime_utc(tags: _Tags) -> datetime | None:
    """QuickTime's creation time, which the format stores in UTC."""
    for name, groups in UTC_TIME_TAGS:
        for _group, value in tags.values(name, groups):
            parsed = parse_datetime(value)
            if parsed is not None and parsed[0].year >= 1971:  # 1904 / 1970: "never set"
                return parsed[0] - (parsed[1] or timedelta(0))
    return None


def _gps_time(tags: _Tags) -> datetime | None:
    parsed = parse_datetime(tags.get("GPSDateTime", ("Composite", "XMP-exif")))
    return parsed[0] - (parsed[1] or timedelta(0)) if parsed else None


ParsedTime = tuple[datetime, timedelta | None, bool]


def parse_datetime(value: Any, subsec: Any = None) -> ParsedTime | None:
    """``(naive time, offset or None, stated as UTC)`` from an EXIF/XMP/QuickTime date."""
    if not isinstance(value, str):
        return None
    match = _DATE_RE.match(value)
    if not match:
        return None
    year, month, day, hour, minute, second, fraction, zone = match.groups()
    fraction = fraction or _digits(subsec)
    try:
        moment = datetime(int(year), int(month), int(day), int(hour), int(minute),
                          int(second or 0), int((fraction or "0")[:6].ljust(6, "0")))
    except ValueError:
        return None
    if not 1800 <= moment.year <= 2200:
        return None
    if zone in ("Z", None):
        return moment, (timedelta(0) if zone else None), zone == "Z"
    offset = parse_offset(zone)
    return moment, offset, False


def _digits(value: Any) -> str | None:
    if isinstance(value, bool) or not isinstance(value, str | int):
        return None
    text = str(value).strip()
    return text if text.isdigit() else None


def parse_offset(value: Any) -> timedelta | None:
    """``timedelta`` of an offset such as ``"+03:00"`` / ``"-0530"``; None when invalid."""
    if not isinstance(value, str):
        return None
    if value.strip() == "Z":
        return timedelta(0)
    match = _OFFSET_RE.match(value)
    if not match:
        return None
    sign, hours, minutes = match.groups()
    if int(minutes) >= 60:
        return None
    delta = timedelta(hours=int(hours), minutes=int(minutes))
    if delta > _MAX_OFFSET:
        return None
    return -delta if sign == "-" else delta


def _format_offset(offset: timedelta | None) -> str | None:
    if offset is None:
        return None
    minutes = int(offset.total_seconds()) // 60
    sign = "-" if minutes < 0 else "+"
    return f"{sign}{abs(minutes) // 60:02d}:{abs(minutes) % 60:02d}"


def _format_utc(moment: datetime | None) -> str | None:
    return moment.replace(microsecond=0).isoformat() + "Z" if moment else None


def _gps(tags: _Tags) -> dict[str, float | None] | None:
    lat, lon, alt = _gps_signed(tags)
    if lat is None or lon is None:
        return None
    if not (-90 <= lat <= 90 and -180 <= lon <= 180) or (abs(lat) < 1e-7 and abs(lon) < 1e-7):
        return None
    if alt is not None and not -500 <= alt <= 50_000:
        alt = None
    return {"lat": round(lat, 7), "lon": round(lon, 7),
            "alt": None if alt is None else round(alt, 2)}


def _gps_signed(tags: _Tags) -> tuple[float | None, float | None, float | None]:
    lat, lon = _number(tags.get("GPSLatitude", ("Composite",))), \
        _number(tags.get("GPSLongitude", ("Composite",)))
    alt = _number(tags.get("GPSAltitude", ("Composite",)))
    if lat is None or lon is None:
        lat = _with_ref(tags, "GPSLatitude", "S")
        lon = _with_ref(tags, "GPSLongitude", "W")
    if lat is None or lon is None:
        lat, lon, alt = _coordinates(tags)
    if alt is None:
        alt = _number(tags.get("GPSAltitude", ("GPS", "XMP-exif")))
        ref = _number(tags.get("GPSAltitudeRef", ("GPS", "XMP-exif")))
        if alt is not None and ref == 1:
            alt = -abs(alt)
    return lat, lon, alt


def _with_ref(tags: _Tags, name: str, negative: str) -> float | None:
    for group in ("GPS", "XMP-exif"):
        value = _number(tags.get(name, (group,)))
        if value is None:
            continue
        ref = tags.get(name + "Ref", (group,))
        if isinstance(ref, str) and ref.strip()[:1].upper() == negative:
            value = -abs(value)
        return value
    return None


def _coordinates(tags: _Tags) -> tuple[float | None, float | None, float | None]:
    """QuickTime ``GPSCoordinates``: "lat lon [alt]" (exiftool -n) or ISO 6709."""
    value = tags.get("GPSCoordinates", ("Keys", "UserData", "ItemList"))
    if not isinstance(value, str):
        return None, None, None
    parts = re.findall(r"[+-]?\d+(?:\.\d+)?", value)
    numbers = [float(p) for p in parts[:3]]
    if len(numbers) < 2:
        return None, None, None
    return numbers[0], numbers[1], numbers[2] if len(numbers) > 2 else None


def _number(value: Any) -> float | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, str):
        try:
            value = float(value.strip())
        except ValueError:
            return None
    if isinstance(value, int | float) and math.isfinite(value):
        return float(value)
    return None


def _text(value: Any) -> str | None:
    """A camera or lens name as written (exiftool's JSON turns "456" into a number)."""
    if isinstance(value, int) and not isinstance(value, bool):
        value = str(value)
    if not isinstance(value, str):
        return None
    text = " ".join(value.replace("\x00", " ").split())[:RAW_STRING_MAX]
    if not text or text.lower() in ("unknown", "none", "n/a", "-"):
        return None
    return text


def _lens(tags: _Tags) -> str | None:
    for name, groups in LENS_TAGS:
        for _group, value in tags.values(name, groups):
            text = _text(value)
            if text and sum(ch.isalpha() for ch in text) >= 2 and not text.startswith("Unknown"):
                return text
    return None


def _dimensions(tags: _Tags) -> tuple[int | None, int | None]:
    size = tags.get("ImageSize", ("Composite",))
    if isinstance(size, str):
        parts = size.replace("x", " ").split()
        if len(parts) == 2:
            pair = _size(parts[0], parts[1])
            if pair[0] is not None:
                return pair
    for wide, high, groups in (("ImageWidth", "ImageHeight", ("File",)),
                               ("ExifImageWidth", "ExifImageHeight", ("ExifIFD",)),
                               ("ImageWidth", "ImageHeight", None)):
        pair = _size(tags.get(wide, groups), tags.get(high, groups))
        if pair[0] is not None:
            return pair
    return None, None


def _size(width: Any, height: Any) -> tuple[int | None, int | None]:
    w, h = _number(width), _number(height)
    if w is None or h is None or not (0 < w <= 1_000_000 and 0 < h <= 1_000_000):
        return None, None
    return int(w), int(h)


def _orientation(tags: _Tags) -> int | None:
    """EXIF orientation; for HEIF the ``irot`` box and for video the track matrix rule."""
    rotation = _number(tags.get("Rotation", ("QuickTime",)))  # HEIF irot: anticlockwise
    if rotation is not None and tags.get("FileType", ("File",)) in ("HEIC", "AVIF", "HEIF"):
        return ROTATION_TO_ORIENTATION.get(int(360 - rotation) % 360)
    value = _number(tags.get("Orientation", ("IFD0", "XMP-tiff")))
    if value is not None and value.is_integer() and 1 <= value <= 8:
        return int(value)
    rotation = _number(tags.get("Rotation", ("Composite",)))  # video: clockwise
    if rotation is not None and rotation.is_integer():
        return ROTATION_TO_ORIENTATION.get(int(rotation) % 360)
    return None


def _duration(tags: _Tags) -> float | None:
    for _group, value in tags.values("Duration", DURATION_GROUPS) + tags.values("Duration"):
        seconds = _number(value)
        if seconds is not None and 0 < seconds < 1e7:
            return round(seconds, 3)
    return None


# -- the raw dump ------------------------------------------------------------------------------
def compact_raw(dump: Dump) -> dict[str, Any]:
    """The dump, JSON-safe and small: no binary blobs, paths, long arrays or huge strings."""
    out: dict[str, Any] = {}
    budget = RAW_BYTES_MAX
    for key, value in dump.items():
        if not isinstance(key, str) or key == "error" or _dropped_key(key):
            continue
        clean = _json_safe(value, depth=0)
        if clean is None:
            continue
        cost = len(key) + len(str(clean)) + 6
        if cost > budget:
            continue
        budget -= cost
        out[key] = clean
    return out


def _dropped_key(key: str) -> bool:
    group, _, tag = key.rpartition(":")
    if group in _DROP_GROUPS and key not in _KEEP_EXIFTOOL:
        return True
    return key == "SourceFile" or bool(_DROP_TAG_RE.match(tag))


def _json_safe(value: Any, depth: int) -> Any:
    if value is None or isinstance(value, bool | int):
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, str):
        return _safe_string(value)
    if isinstance(value, list | tuple) and depth < 3:
        listed = (_json_safe(v, depth + 1) for v in value[:RAW_LIST_MAX])
        return [v for v in listed if v is not None] or None
    if isinstance(value, dict) and depth < 3:
        fields = ((str(k), _json_safe(v, depth + 1)) for k, v in list(value.items())[:RAW_LIST_MAX])
        return {k: v for k, v in fields if v is not None} or None
    return None


def _safe_string(value: str) -> str | None:
    if value.startswith(("(Binary data", "base64:")):
        return None
    text = value.replace("\x00", "").encode("utf-8", "replace").decode("utf-8")
    if len(text) <= RAW_STRING_MAX:
        return text
    if _NUMBERS_RE.match(text[:RAW_STRING_MAX]):
        return None  # a long array of numbers (maker notes): useless once cut
    return text[:RAW_STRING_MAX - 1] + "…"


# -- Pillow fallback ---------------------------------------------------------------------------
_PILLOW_RENAMES = {"DateTime": "ModifyDate", "DateTimeDigitized": "CreateDate",
                   "ISOSpeedRatings": "ISO", "SubsecTime": "SubSecTime",
                   "SubsecTimeOriginal": "SubSecTimeOriginal",
                   "SubsecTimeDigitized": "SubSecTimeDigitized"}
_GPS_TAGS = {1: "GPSLatitudeRef", 2: "GPSLatitude", 3: "GPSLongitudeRef", 4: "GPSLongitude",
             5: "GPSAltitudeRef", 6: "GPSAltitude", 7: "GPSTimeStamp", 29: "GPSDateStamp"}
_EXIF_IFD = 0x8769
_GPS_IFD = 0x8825


def pillow_dump(path: Path) -> dict[str, Any]:
    """EXIF read by Pillow, keyed as exiftool's ``-G1 -n`` would key it."""
    from PIL import ExifTags, Image

    _register_heif()
    dump: dict[str, Any] = {}
    try:
        with Image.open(path) as im:
            dump["File:FileType"] = im.format
            dump["File:ImageWidth"], dump["File:ImageHeight"] = im.size
            exif = im.getexif()
            base = dict(exif)
            exif_ifd = dict(exif.get_ifd(_EXIF_IFD))
            gps_ifd = dict(exif.get_ifd(_GPS_IFD))
    except Exception as exc:  # not a picture Pillow knows, or a broken header
        log.debug("%s: no EXIF through Pillow: %s", path, exc)
        return dump
    for group, table in (("IFD0", base), ("ExifIFD", exif_ifd)):
        for tag_id, value in table.items():
            if tag_id in (_EXIF_IFD, _GPS_IFD):
                continue
            name = ExifTags.TAGS.get(tag_id)
            if name:
                dump[f"{group}:{_PILLOW_RENAMES.get(name, name)}"] = _pillow_value(value)
    dump.update(_pillow_gps(gps_ifd))
    return dump


def _pillow_value(value: Any) -> Any:
    if isinstance(value, bytes):
        text = value.rstrip(b"\x00")
        readable = len(text) < 64 and text.isascii() and text.isalnum()
        return text.decode("ascii") if readable else None
    if isinstance(value, tuple):
        return [_pillow_value(v) for v in value]
    if isinstance(value, str):
        return value.rstrip("\x00").strip()
    try:
        number = float(value)
    except (TypeError, ValueError, ZeroDivisionError):
        return None
    if not math.isfinite(number):
        return None
    return int(number) if isinstance(value, int) else number


def _pillow_gps(gps: Mapping[int, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for tag_id, name in _GPS_TAGS.items():
        value = gps.get(tag_id)
        if value is None:
            continue
        if name in ("GPSLatitude", "GPSLongitude"):
            out[f"GPS:{name}"] = _degrees(value)
        elif name == "GPSAltitudeRef" and isinstance(value, bytes):
            out["GPS:GPSAltitudeRef"] = value[0] if value else None
        elif name == "GPSTimeStamp":
            parts = _pillow_value(value)
            if isinstance(parts, list) and len(parts) == 3 and all(p is not None for p in parts):
                hour, minute, second = (int(p) for p in parts)
                out["GPS:GPSTimeStamp"] = f"{hour:02d}:{minute:02d}:{second:02d}"
        else:
            out[f"GPS:{name}"] = _pillow_value(value)
    date, clock = out.get("GPS:GPSDateStamp"), out.get("GPS:GPSTimeStamp")
    if isinstance(date, str) and isinstance(clock, str):
        out["Composite:GPSDateTime"] = f"{date} {clock}Z"
    return out


def _degrees(value: Any) -> float | None:
    """Decimal degrees from an EXIF (degrees, minutes, seconds) triple; None when nonsense."""
    parts = _pillow_value(value)
    if not isinstance(parts, list) or len(parts) != 3 or any(p is None for p in parts):
        return None
    degrees, minutes, seconds = parts
    if not (0 <= degrees <= 180 and 0 <= minutes < 60 and 0 <= seconds < 60.5):
        return None
    return float(degrees + minutes / 60 + seconds / 3600)


def _register_heif() -> None:
    try:
        from scanpixd.pipeline.media import ensure_heif
    except ImportError:
        return
    try:
        ensure_heif()
    except Exception as exc:  # pillow-heif missing or broken: HEIC stays unreadable here
        log.debug("HEIF support unavailable: %s", exc)

"""The per-file record: the one JSON document scanpixd keeps for every original.

A record is a plain ``dict`` (it is read and written with orjson) so that any tool can
read a sidecar without scanpixd installed.  Its shape, documented in the README too::

    {
      "format": 1,                       # RECORD_FORMAT; older records are migrated on read
      "name": "IMG_0042.jpg",            # file name, relative to its folder (never a path)
      "name_b64": "...",                 # only when the name is not valid UTF-8 (raw bytes)
      "size": 2837465, "mtime_ns": 1700000000000000000,
      "hash": "b2:<32 hex>",             # blake2b-128 of the file's bytes
      "status": "ok" | "failed" | "skipped",   # skipped: not media at all
      "error": null | "why the file could not be read",
      "stages": {"media": 1, "metadata": 1, "thumbs": 1, ...},   # stage -> version key
      "errors": {"preview": "why that stage failed"},            # per-stage failures
      "media":    {"kind": "image"|"video", "format": "JPEG", "mime": "image/jpeg",
                   "width": 4000, "height": 3000, "frames": 1, "duration": null},
      "metadata": {"taken_local": "2008-10-22T16:28:39", "taken_tag": "EXIF:DateTimeOriginal",
                   "offset": "+02:00" | null, "gps_utc": GPS receiver time | null,
                   "taken_utc": null | "2019-07-01T10:00:00Z" (QuickTime, stored in UTC),
                   "gps": {"lat": 43.46, "lon": 11.88, "alt": 243.0} | null,
                   "make", "model", "lens", "width", "height", "orientation", "duration",
                   "source": "exiftool" | "pillow", "raw": {tag: value, ...}},
      "thumbs":   {"256": "<hash>-256.webp", "1024": "<hash>-1024.jpg"},
      "hashes":   {"dhash": "<hex>", "phash": "<hex>", ...},
      "preview":  {"webm": "<hash>.webm"},                     # videos only
      "taken":    {"local", "utc", "timezone", "offset", "source", "neighbour"?},  # time inference
      "place":    {"city", "region", "country", "country_code", "timezone"} | null,
      "faces":    [{"box": [top, right, bottom, left], "encoding": "<b64 f16>", ...}],
      "clip":     {"model": "<model id>", "dim": 512,
                   "vectors": [{"time": null | seconds, "v": "<b64 float16>"}]},
    }

Thumbnail and preview entries are file names inside the folder's ``.scanpix/``; only
:mod:`scanpixd.store` turns them into paths.  A stage owns the top-level key of its
name and records its version key in ``stages``; bumping a stage's version makes only
that stage's fields stale.
"""

from __future__ import annotations

import base64
from typing import Any

import numpy as np

RECORD_FORMAT = 1

Record = dict[str, Any]


def encode_name(name: str) -> dict[str, str]:
    """Return the JSON fields that store a file name, even one that is not valid UTF-8.

    Names come from the filesystem as ``str`` with surrogate escapes for undecodable bytes;
    JSON cannot hold those, so the raw bytes are kept in base64 beside a readable form.
    """
    raw = name.encode("utf-8", "surrogateescape")
    try:
        raw.decode("utf-8")
    except UnicodeDecodeError:
        readable = raw.decode("utf-8", "replace")
        return {"name": readable, "name_b64": base64.b64encode(raw).decode("ascii")}
    return {"name": name}


def decode_name(record: Record) -> str:
    """The file name a record describes, as the filesystem spells it (surrogate-escaped)."""
    if "name_b64" in record:
        return base64.b64decode(record["name_b64"]).decode("utf-8", "surrogateescape")
    return str(record["name"])


def encode_vector(vector: np.ndarray) -> str:
    """Pack a float vector as base64 float16 (half the size of float32, plenty for cosine)."""
    return base64.b64encode(np.asarray(vector, dtype="<f2").tobytes()).decode("ascii")


def decode_vector(text: str) -> np.ndarray:
    """Unpack :func:`encode_vector` output into a float32 array."""
    return np.frombuffer(base64.b64decode(text), dtype="<f2").astype(np.float32)


def new_record(name: str, size: int, mtime_ns: int, content_hash: str) -> Record:
    """A fresh record for a file that no stage has processed yet."""
    record: Record = {"format": RECORD_FORMAT}
    record.update(encode_name(name))
    record.update(
        {
            "size": size,
            "mtime_ns": mtime_ns,
            "hash": content_hash,
            "status": "ok",
            "error": None,
            "stages": {},
            "errors": {},
        }
    )
    return record


def is_failed(record: Record) -> bool:
    return record.get("status") == "failed"

"""A machine-local cache of each records directory, so reading a folder's records is one file.

Reading a folder's records means opening and parsing one JSON file per original: at 100k
files that is most of a rescan and most of a daemon start.  This cache keeps, per records
directory and *view*, every record reduced to what its readers need (:func:`slim`: all
but the raw metadata dump, for the library; :func:`scan_view`: what a rescan decides on),
each keyed by its record file's size, mtime, ctime and inode.  It is derived data,
trusted entry by entry only:

- an entry whose record file's stat differs is read from the file again (an edit in
  place changes the ctime, a replacement the inode);
- a record file changed within the last :data:`RACY_NS` is never cached, since its
  timestamps may not yet tell two versions apart (git's "racily clean" rule);
- a cache that is missing, truncated, unreadable or of another format counts as empty;
- it is written atomically, and a failed write only means no cache.

It lives under the cache directory, never in ``.scanpix/``: inode numbers mean nothing on
another machine, and a synced cache would only be rewritten back and forth.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import orjson

from scanpixd.record import RECORD_FORMAT, Record
from scanpixd.store import atomic

CACHE_FORMAT = 1
RACY_NS = 3_000_000_000

Entry = list[Any]  # [size, mtime_ns, ctime_ns, inode, slim record or None (not a valid record)]


def slim(record: Record) -> Record:
    """The record without the raw metadata dump: most of its size, and nothing a listing needs."""
    meta = record.get("metadata")
    if isinstance(meta, dict) and "raw" in meta:
        record = dict(record)
        record["metadata"] = {k: v for k, v in meta.items() if k != "raw"}
    return record


# What a rescan reads of a record: its identity and state, and what stages decide on
# (``Stage.applies`` and ``is_current`` read no other field; see scanpixd.pipeline).
SCAN_FIELDS = frozenset({"format", "name", "name_b64", "size", "mtime_ns", "hash", "status", "error",
                         "stages", "errors", "media", "metadata"})


def scan_view(record: Record) -> Record:
    """The record's :data:`SCAN_FIELDS`, without the raw metadata dump."""
    return {k: v for k, v in slim(record).items() if k in SCAN_FIELDS}


VIEWS: dict[str, Callable[[Record], Record]] = {"slim": slim, "scan": scan_view}


def cache_file(cache_dir: Path, records_dir: Path, view: str = "slim") -> Path:
    """Where the cache of ``records_dir`` lives: named by that directory's absolute path."""
    key = hashlib.blake2b(os.fsencode(records_dir.absolute()), digest_size=16).hexdigest()
    return cache_dir / "records" / key[:2] / f"{key}.{view}.json"


def read_view(cache: Path, names: list[os.DirEntry[str]], load: Callable[[Path], Record | None],
              view: str = "slim") -> dict[str, Record]:
    """The records of the record files ``names`` in ``view`` (see :data:`VIEWS`), by file name.

    ``load`` reads one record file (``None`` when it is not a valid record); it is called
    only for files the cache cannot vouch for.  The cache is rewritten when that changed
    what it would hold.
    """
    project = VIEWS[view]
    cached = _load(cache)
    fresh: dict[str, Entry] = {}
    for entry in names:
        try:
            st = entry.stat()
        except OSError:
            continue
        key = [st.st_size, st.st_mtime_ns, st.st_ctime_ns, st.st_ino]
        hit = cached.get(entry.name)
        if hit is not None and hit[:4] == key:
            fresh[entry.name] = hit
            continue
        record = load(Path(entry.path))
        fresh[entry.name] = key + [None if record is None else project(record)]
    _save_if_changed(cache, cached, fresh)
    return {name: entry[4] for name, entry in fresh.items() if entry[4] is not None}


def _load(cache: Path) -> dict[str, Entry]:
    data = atomic.read_json(cache)
    if not isinstance(data, dict) or data.get("format") != CACHE_FORMAT \
            or data.get("record_format") != RECORD_FORMAT or not isinstance(data.get("entries"), dict):
        return {}
    return {name: entry for name, entry in data["entries"].items() if _valid(entry)}


def _valid(entry: Any) -> bool:
    return isinstance(entry, list) and len(entry) == 5 and (entry[4] is None or isinstance(entry[4], dict))


def _save_if_changed(cache: Path, cached: dict[str, Entry], fresh: dict[str, Entry]) -> None:
    settled = time.time_ns() - RACY_NS
    keep = {name: entry for name, entry in fresh.items() if max(entry[1], entry[2]) < settled}
    if keep.keys() == cached.keys() and all(keep[n] is cached[n] for n in keep):
        return
    data = {"format": CACHE_FORMAT, "record_format": RECORD_FORMAT, "entries": keep}
    with contextlib.suppress(OSError):
        cache.parent.mkdir(parents=True, exist_ok=True)
        atomic.write_bytes(cache, orjson.dumps(data))

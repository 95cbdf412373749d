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

A listing also carries a *token* of the record files it was read from (their names and
stat keys): the same token means the same record files, so a pass over a folder's
records can be skipped when the token it last saw is unchanged.  Only files outside the
racy window give a token; otherwise it is ``None`` (unknown).

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
# (``Stage.applies`` and ``is_current`` read no other field, and of ``media`` and
# ``metadata`` only these keys; see scanpixd.pipeline, and tests/test_scan_view.py, which
# holds every stage to it).  Most of a record's metadata is left out: a rescan parses
# this view of every record.
SCAN_FIELDS = frozenset({"format", "name", "name_b64", "size", "mtime_ns", "hash", "status", "error",
                         "stages", "errors", "media", "metadata"})
SCAN_PARTS = {"media": frozenset({"kind"}), "metadata": frozenset({"gps", "source"})}


# What the library-wide time pass reads of a record (scanpixd.timeinfer), and the ``taken``
# it compares its answer with: a pass over 100k records parses this, not the slim view.
TIMES_FIELDS = frozenset({"format", "name", "name_b64", "status", "taken", "metadata", "place"})
TIMES_PARTS = {"metadata": frozenset({"taken_local", "offset", "taken_utc", "make", "model", "gps"}),
               "place": frozenset({"timezone"})}


def _cut(record: Record, fields: frozenset[str], parts: dict[str, frozenset[str]]) -> Record:
    """The record's ``fields``, each dict in ``parts`` cut to the keys listed for it."""
    view = {}
    for key, value in record.items():
        if key in fields:
            keep = parts.get(key)
            if keep is not None and isinstance(value, dict):
                value = {k: v for k, v in value.items() if k in keep}
            view[key] = value
    return view


def scan_view(record: Record) -> Record:
    """The record's :data:`SCAN_FIELDS`, ``media`` and ``metadata`` cut to :data:`SCAN_PARTS`."""
    return _cut(record, SCAN_FIELDS, SCAN_PARTS)


def times_view(record: Record) -> Record:
    """The record's :data:`TIMES_FIELDS`, ``metadata`` and ``place`` cut to :data:`TIMES_PARTS`."""
    return _cut(record, TIMES_FIELDS, TIMES_PARTS)


VIEWS: dict[str, Callable[[Record], Record]] = {"slim": slim, "scan": scan_view, "times": times_view}
# Bumped when a view keeps less: entries cached by an older version are cut down again
# (cheaply, in place).  A view that keeps more needs CACHE_FORMAT bumped instead.
VIEW_VERSIONS = {"slim": 1, "scan": 2, "times": 1}


class Listing(dict[str, Record]):
    """Records by name, with the ``token`` of the record files they were read from."""

    token: str | None = None


def stat_key(st: os.stat_result) -> list[int]:
    """What tells two versions of a file apart: size, mtime, ctime and inode."""
    return [st.st_size, st.st_mtime_ns, st.st_ctime_ns, st.st_ino]


def settled_since() -> int:
    """Files changed before this instant (ns) are outside the racy window."""
    return time.time_ns() - RACY_NS


def settled(key: list[Any], since: int) -> bool:
    """Whether the file of a :func:`stat_key` (or an entry starting with one) changed before
    ``since``."""
    return max(key[1], key[2]) < since


def json_name(name: str) -> str:
    """A file name as JSON can hold it: itself, or (not valid UTF-8) NUL and its bytes in hex,
    which no real name can be."""
    if name.isascii():
        return name
    try:
        name.encode()
    except UnicodeEncodeError:
        return "\0" + os.fsencode(name).hex()
    return name


def cache_file(cache_dir: Path, records_dir: Path, view: str = "slim") -> Path:
    """Where the cache of ``records_dir`` lives: named by that directory's absolute path."""
    key = hashlib.blake2b(os.fsencode(records_dir.absolute()), digest_size=16).hexdigest()
    return cache_dir / "records" / key[:2] / f"{key}.{view}.json"


def read_view(cache: Path, names: list[os.DirEntry[str]], load: Callable[[Path], Record | None],
              view: str = "slim", name_of: Callable[[Record], str] | None = None) -> Listing:
    """The records of the record files ``names`` in ``view`` (see :data:`VIEWS`), by file
    name, or by ``name_of(record)`` when given.

    ``load`` reads one record file (``None`` when it is not a valid record); it is called
    only for files the cache cannot vouch for.  The cache is rewritten when that changed
    what it would hold.  It keeps the token of its entries, so a folder whose record files
    all match it costs one stat per file and one parse.
    """
    project = VIEWS[view]
    cached, stored = _load(cache, view)
    fresh: dict[str, Entry] = {}
    listing = Listing()
    missed = False
    for entry in names:
        try:
            st = entry.stat()
        except OSError:
            continue
        name = json_name(entry.name)
        hit = cached.get(name)
        if hit is None or hit[0] != st.st_size or hit[1] != st.st_mtime_ns \
                or hit[2] != st.st_ctime_ns or hit[3] != st.st_ino:
            record = load(Path(entry.path))
            hit = stat_key(st) + [None if record is None else project(record)]
            missed = True
        fresh[name] = hit
        if hit[4] is not None:
            listing[entry.name if name_of is None else name_of(hit[4])] = hit[4]
    if missed or stored is None or len(fresh) != len(cached):
        listing.token = _save_if_changed(cache, fresh, stored, view)
    else:  # every entry the cache holds, and only those: its token
        listing.token = stored
    return listing


def token_of(entries: dict[str, Entry]) -> str:
    """The token of record files by :func:`json_name`: a digest of their names and stat keys."""
    keys = orjson.dumps({name: entry[:4] for name, entry in entries.items()},
                        option=orjson.OPT_SORT_KEYS)
    return hashlib.blake2b(keys, digest_size=16).hexdigest()


def _load(cache: Path, view: str) -> tuple[dict[str, Entry], str | None]:
    """The cache's valid entries, and their token (None if any entry was not valid, or the
    cache is to be rewritten)."""
    data = atomic.read_json(cache)
    if not isinstance(data, dict) or data.get("format") != CACHE_FORMAT \
            or data.get("record_format") != RECORD_FORMAT or not isinstance(data.get("entries"), dict):
        return {}, None
    version = data.get("view", 1)
    if not isinstance(version, int) or version > VIEW_VERSIONS[view]:
        return {}, None
    entries = data["entries"]
    valid = {name: e for name, e in entries.items()
             if type(e) is list and len(e) == 5 and (e[4] is None or type(e[4]) is dict)}
    if version < VIEW_VERSIONS[view]:
        project = VIEWS[view]
        for entry in valid.values():
            entry[4] = None if entry[4] is None else project(entry[4])
        return valid, None
    token = data.get("token")
    return valid, token if isinstance(token, str) and len(valid) == len(entries) else None


def _save_if_changed(cache: Path, fresh: dict[str, Entry], stored: str | None, view: str
                     ) -> str | None:
    """Keep the settled entries (unless the cache holds just those); the token of ``fresh``
    when every entry was settled, else None."""
    since = settled_since()
    keep = {name: entry for name, entry in fresh.items() if max(entry[1], entry[2]) < since}
    kept = token_of(keep)
    if kept != stored:  # the same token: the same files, so the same entries
        data = {"format": CACHE_FORMAT, "record_format": RECORD_FORMAT, "view": VIEW_VERSIONS[view],
                "token": kept, "entries": keep}
        with contextlib.suppress(OSError):
            try:
                atomic.write_bytes(cache, orjson.dumps(data), durable=False)
            except FileNotFoundError:  # the first cache in its directory (not a call per write)
                cache.parent.mkdir(parents=True, exist_ok=True)
                atomic.write_bytes(cache, orjson.dumps(data), durable=False)
    return kept if len(keep) == len(fresh) else None

"""One media folder's ``.scanpix/`` directory: records, thumbnails, previews, indexes.

Layout (relative to the data directory, normally ``<folder>/.scanpix/``)::

    FORMAT                      format version of this directory
    records/<name>.json         one record per original (see scanpixd.record)
    records/#<hash>.json        the same, for names too long to carry a suffix
    thumbs/<hash>-<size>.webp   thumbnails (.jpg previews), keyed by content hash (shared by copies)
    previews/<hash>.webm        short video previews
    index/                      derived ANN indexes (rebuildable from records)

Everything is named relative to the folder or by content hash, so the directory stays
valid when the folder is moved, renamed or synced to another machine.  A listing of the
records (``records(full=False)``) may come from a machine-local cache outside this
directory (:mod:`scanpixd.store.record_cache`), with a token that changes whenever a
record file does; :meth:`FolderStore.listing_token` and :meth:`FolderStore.dir_keys` let
library-wide passes skip a folder where nothing they read changed.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import re
import threading
from collections.abc import Iterable, Iterator
from pathlib import Path

from scanpixd.record import Record, decode_name
from scanpixd.store import atomic, record_cache
from scanpixd.store.migrations import NewerFormat, migrate

log = logging.getLogger(__name__)

DATA_DIR_NAME = ".scanpix"
DIR_FORMAT = 1
_MAX_NAME_BYTES = 240
_CONFLICT = re.compile(r"\.sync-conflict-\d{8}-\d{6}(-[A-Z0-9]+)?")
_CONFLICT_MARK = ".sync-conflict-"
_PARTS = ("records", "thumbs", "previews", "index")


def record_file_name(name: str) -> str:
    raw = name.encode("utf-8", "surrogateescape")
    if len(raw) > _MAX_NAME_BYTES:
        return "#" + hashlib.blake2b(raw, digest_size=16).hexdigest() + ".json"
    return name + ".json"


class FolderStore:
    """Reads and writes the data of one media folder.

    ``data_dir`` is where writes go; ``read_dirs`` lists every place a record may be
    found, the write location first (a read-only folder synced with its ``.scanpix/``
    is read from the folder while new work goes to the cache directory).  ``cache_dir``,
    when given, holds the machine-local cache that answers ``records(full=False)``.
    """

    def __init__(self, folder: Path, data_dir: Path, read_dirs: list[Path], cache_dir: Path | None = None):
        self.folder = folder
        self.data_dir = data_dir
        self.read_dirs = read_dirs
        self.cache_dir = cache_dir
        self._write_lock = threading.RLock()
        self._changes = 0  # writes and deletions by this store
        self._token: tuple[int, str | None] = (-1, None)  # (changes then, last listing's token)

    # -- paths ---------------------------------------------------------------------
    def _sub(self, kind: str) -> Path:
        return self.data_dir / kind

    def record_path(self, name: str) -> Path:
        return self._sub("records") / record_file_name(name)

    def asset_path(self, file_name: str, kind: str = "thumbs") -> Path:
        """Absolute path of a thumbnail or preview that a record names, wherever it lies.

        Records come from disk and may have been tampered with or synced from elsewhere: a
        name that is not a plain file name never leads out of the data directory.
        """
        if not _plain_name(file_name):
            raise ValueError(f"not an asset name: {file_name[:80]!r}")
        if self.read_dirs != [self.data_dir]:  # one place to look needs no stat (search results)
            for base in self.read_dirs:
                candidate = base / kind / file_name
                if candidate.exists():
                    return candidate
        return self._sub(kind) / file_name

    def index_dir(self) -> Path:
        return self._sub("index")

    def exists(self) -> bool:
        return any((d / "records").is_dir() for d in self.read_dirs)

    # -- records -------------------------------------------------------------------
    def read(self, name: str) -> Record | None:
        """The record of ``name``, or ``None`` when missing or unreadable (it is redone)."""
        file_name = record_file_name(name)
        for base in self.read_dirs:
            record = _load_record(base / "records" / file_name)
            if record is not None and decode_name(record) == name:
                return record
        return None

    def records(self, full: bool = True, view: str = "slim") -> dict[str, Record]:
        """Every valid record of this folder, by file name; sync conflicts resolved.

        ``full=False`` gives a listing, answered from the machine-local cache: each record
        reduced to a view of :data:`record_cache.VIEWS` (``slim``: all but the raw
        metadata dump; ``scan``: what a rescan decides on).  Read it, never modify it and
        write it back.
        """
        if not full:
            return self.listing(view)
        found: dict[str, Record] = {}
        for base in reversed(self.read_dirs):  # the write location wins
            for record in self._scan_records(base / "records"):
                found[decode_name(record)] = record
        return found

    def listing(self, view: str = "slim") -> record_cache.Listing:
        """``records(full=False, view=view)``, with the token of the record files read."""
        changes = self._changes
        parts = [self._scan_view(base / "records", view) for base in self.read_dirs]
        if len(parts) == 1:
            found = parts[0]
        else:
            found = record_cache.Listing()
            for part in reversed(parts):  # the write location wins
                found.update(part)
            found.token = _joined([part.token for part in parts])
        self._token = (changes, found.token)
        return found

    def record_keys(self) -> tuple[list[dict[str, list[int]]], str | None] | None:
        """The stat key of every record file, per place records are read from, and their
        token (the one a listing would give); ``None`` when a records directory cannot be
        read.  Nothing is parsed: a rescan compares these with what it noted of a folder."""
        changes = self._changes
        since = record_cache.settled_since()
        found: list[dict[str, list[int]]] = []
        tokens: list[str | None] = []
        for base in self.read_dirs:
            try:
                entries = list(os.scandir(base / "records"))
            except (FileNotFoundError, NotADirectoryError):
                found.append({})
                tokens.append("absent")
                continue
            except OSError:
                return None
            keys: dict[str, list[int]] = {}
            known = True
            for entry in entries:
                name = entry.name
                if not name.endswith(".json") or atomic.is_temp_name(name):
                    continue
                try:
                    key = keys[record_cache.json_name(name)] = record_cache.stat_key(entry.stat())
                except OSError:
                    continue
                if not record_cache.settled(key, since) or _CONFLICT_MARK in name:
                    known = False  # a conflict copy: a listing resolves it, so has no token
            found.append(keys)
            tokens.append(record_cache.token_of(keys) if known else None)
        token = _joined(tokens)
        self._token = (changes, token)
        return found, token

    def listing_token(self) -> str | None:
        """The token of the last listing, unless this store changed the folder since.

        Equal tokens mean equal record files; ``None`` means unknown (never listed, written
        since, or changed too recently to tell).
        """
        changes, token = self._token
        return token if changes == self._changes else None

    def same_record_files(self, noted: object, token: str) -> bool:
        """Whether the record files are exactly those ``noted`` by :meth:`record_keys`, each
        with the same stat key; if so ``token``, theirs, becomes this store's listing token."""
        changes = self._changes
        if not isinstance(noted, list) or len(noted) != len(self.read_dirs):
            return False
        for base, keys in zip(self.read_dirs, noted, strict=True):
            try:
                entries = list(os.scandir(base / "records"))
            except (FileNotFoundError, NotADirectoryError):
                entries = []
            except OSError:
                return False
            if not isinstance(keys, dict) or not _same_keys(entries, keys):
                return False
        self._token = (changes, token)
        return True

    def dir_keys(self) -> list[list[int] | None] | None:
        """Stat keys of the data directory's parts, ``None`` for a missing one.

        A file added to, removed from or renamed in a directory changes its mtime, so equal
        keys mean the same entries.  ``None`` while one changed within the racy window (or
        cannot be read): then nothing can be told.
        """
        since = record_cache.settled_since()
        base = os.fspath(self.data_dir)
        keys: list[list[int] | None] = []
        for kind in _PARTS:
            try:
                st = os.stat(f"{base}/{kind}")
            except (FileNotFoundError, NotADirectoryError):
                keys.append(None)
                continue
            except OSError:
                return None
            key = record_cache.stat_key(st)
            if not record_cache.settled(key, since):
                return None
            keys.append(key)
        return keys

    def _scan_view(self, directory: Path, view: str) -> record_cache.Listing:
        if self.cache_dir is None:
            return _untokened(map(record_cache.VIEWS[view], self._scan_records(directory)))
        try:
            entries = list(os.scandir(directory))
        except (FileNotFoundError, NotADirectoryError):
            absent = record_cache.Listing()
            absent.token = "absent"
            return absent
        except PermissionError:
            return record_cache.Listing()
        names = [e for e in entries if e.name.endswith(".json") and not atomic.is_temp_name(e.name)]
        if any(_CONFLICT_MARK in e.name and _CONFLICT.search(e.name) for e in names):
            # resolved (and rewritten) on the full path
            return _untokened(self._scan_records(directory))
        cache = record_cache.cache_file(self.cache_dir, directory, view)
        return record_cache.read_view(cache, names, _load_record, view, name_of=decode_name)

    def _scan_records(self, directory: Path) -> Iterator[Record]:
        try:
            entries = list(os.scandir(directory))
        except (FileNotFoundError, NotADirectoryError, PermissionError):
            return
        conflicts: list[os.DirEntry[str]] = []
        by_file: dict[str, Record] = {}
        for entry in entries:
            if not entry.name.endswith(".json") or atomic.is_temp_name(entry.name):
                continue
            if _CONFLICT.search(entry.name):
                conflicts.append(entry)
                continue
            record = _load_record(Path(entry.path))
            if record is not None:
                by_file[entry.name] = record
        for entry in conflicts:
            self._resolve_conflict(directory, entry, by_file)
        yield from by_file.values()

    def _resolve_conflict(
        self, directory: Path, entry: os.DirEntry[str], by_file: dict[str, Record]
    ) -> None:
        """Keep whichever copy describes the original as it is now; drop the other."""
        base_name = _CONFLICT.sub("", entry.name)
        self._changed()
        theirs = _load_record(Path(entry.path))
        ours = by_file.get(base_name)
        if theirs is not None and _better(theirs, ours, self.folder):
            by_file[base_name] = theirs
            if directory.parent == self.data_dir:
                with contextlib.suppress(OSError):
                    atomic.write_json(directory / base_name, theirs)
        if directory.parent == self.data_dir:
            with contextlib.suppress(OSError):
                os.unlink(entry.path)

    def write(self, record: Record) -> None:
        path = self.record_path(decode_name(record))
        with self._write_lock:
            self._changes += 1
            self._ensure_dirs()
            atomic.write_json(path, record)

    def write_if_unchanged(self, record: Record) -> bool:
        """Write ``record`` unless the file's record changed since it was read.

        Slow stages work on a copy for seconds; if the original changed meanwhile (a new
        version arrived and its cheap stages ran) their result is dropped, not written
        over the newer record.
        """
        name = decode_name(record)
        with self._write_lock:
            current = self.read(name)
            if current is not None and any(
                current.get(k) != record.get(k) for k in ("hash", "size", "mtime_ns")
            ):
                return False
            self.write(record)
            return True

    def remove(self, name: str, live_hashes: set[str] | None = None) -> Record | None:
        """Delete the record of ``name`` and any asset no other record shares.

        ``live_hashes`` (content hashes of the records that stay) saves a folder scan
        when many files of one folder are removed at once.
        """
        record = self.read(name)
        self._changed()
        with contextlib.suppress(FileNotFoundError):
            self.record_path(name).unlink()
        if record is not None:
            if live_hashes is None:
                live_hashes = {str(r.get("hash")) for r in self.records(full=False, view="scan").values()}
            if record.get("hash") not in live_hashes:
                self.remove_assets(record)
        return record

    # -- assets --------------------------------------------------------------------
    def write_asset(self, file_name: str, data: bytes, kind: str = "thumbs") -> None:
        self._changed()
        self._ensure_dirs()
        atomic.write_bytes(self._sub(kind) / file_name, data)

    def has_asset(self, file_name: str, kind: str = "thumbs") -> bool:
        return any((base / kind / file_name).exists() for base in self.read_dirs)

    def remove_assets(self, record: Record) -> None:
        self._changed()
        for kind, names in _assets_of(record):
            for file_name in names:
                if not _plain_name(file_name):
                    continue  # a tampered record never makes us delete outside .scanpix/
                with contextlib.suppress(FileNotFoundError):
                    (self._sub(kind) / file_name).unlink()

    def sweep(self, live: dict[str, Record], failed: list[str] | None = None) -> int:
        """Delete crash leftovers and assets no live record names; returns files removed.

        ``failed`` collects the paths of those that could not be removed.
        """
        wanted = {(kind, n) for rec in live.values() for kind, names in _assets_of(rec) for n in names}
        removed = 0
        for kind in ("records", "thumbs", "previews", "index"):
            directory = self._sub(kind)
            try:
                entries = list(os.scandir(directory))
            except (FileNotFoundError, NotADirectoryError):
                continue
            for entry in entries:
                stale = atomic.is_temp_name(entry.name)
                if kind in ("thumbs", "previews"):
                    stale = stale or (kind, entry.name) not in wanted
                if stale:
                    self._changed()
                    try:
                        os.unlink(entry.path)
                        removed += 1
                    except FileNotFoundError:
                        pass
                    except OSError:
                        if failed is not None:
                            failed.append(entry.path)
        return removed

    def _changed(self) -> None:
        with self._write_lock:
            self._changes += 1

    def _ensure_dirs(self) -> None:
        if (self.data_dir / "thumbs").is_dir():
            return
        for kind in ("records", "thumbs", "previews", "index"):
            (self.data_dir / kind).mkdir(parents=True, exist_ok=True)
        format_file = self.data_dir / "FORMAT"
        if not format_file.exists():
            atomic.write_bytes(format_file, f"{DIR_FORMAT}\n".encode())


def _same_keys(entries: list[os.DirEntry[str]], keys: dict[str, list[int]]) -> bool:
    count = 0
    for entry in entries:
        name = entry.name
        if not name.endswith(".json") or atomic.is_temp_name(name):
            continue
        key = keys.get(record_cache.json_name(name))
        try:
            st = entry.stat()
        except OSError:
            return False
        if key is None or key != [st.st_size, st.st_mtime_ns, st.st_ctime_ns, st.st_ino]:
            return False
        count += 1
    return count == len(keys)


def _joined(tokens: list[str | None]) -> str | None:
    """The token of a folder read from several places: known only when each part is."""
    if len(tokens) == 1:
        return tokens[0]
    if None in tokens:
        return None
    joined = "|".join(str(t) for t in tokens)
    return hashlib.blake2b(joined.encode(), digest_size=16).hexdigest()


def _untokened(records: Iterable[Record]) -> record_cache.Listing:
    """A listing read without the cache: its token is unknown."""
    return record_cache.Listing((decode_name(record), record) for record in records)


def _plain_name(name: str) -> bool:
    return bool(name) and name not in (".", "..") and "/" not in name and "\0" not in name


def _assets_of(record: Record) -> Iterable[tuple[str, list[str]]]:
    thumbs = record.get("thumbs")
    if isinstance(thumbs, dict):
        yield "thumbs", [str(v) for v in thumbs.values() if isinstance(v, str)]
    preview = record.get("preview")
    if isinstance(preview, dict):
        yield "previews", [str(v) for v in preview.values() if isinstance(v, str)]


def _load_record(path: Path) -> Record | None:
    data = atomic.read_json(path)
    if not isinstance(data, dict) or "name" not in data or "hash" not in data:
        return None
    try:
        return migrate(data)
    except NewerFormat:
        log.warning("%s was written by a newer scanpixd; leaving it alone", path)
        return None
    except (ValueError, KeyError):
        return None


def _better(candidate: Record, current: Record | None, folder: Path) -> bool:
    """Whether a conflict copy should replace the current record of the same file."""
    if current is None:
        return True
    try:
        st = os.stat(folder / decode_name(candidate))
    except OSError:
        return False

    def matches(r: Record) -> bool:
        return r.get("size") == st.st_size and r.get("mtime_ns") == st.st_mtime_ns

    if matches(candidate) != matches(current):
        return matches(candidate)
    return len(candidate.get("stages", {})) > len(current.get("stages", {}))

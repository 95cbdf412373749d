"""Library-wide passes that look across files: orphan sweep, time inference, vector indexes.

Per-file stages cannot do these: a photo without GPS borrows its time zone from a
geotagged neighbour shot by the same camera, and a folder's portable ANN index covers
every file in it.  The one-shot indexer runs them after its tiers (:func:`finish_passes`);
the daemon sweeps the folders of each whole-root rescan (:class:`Sweeper`, on the same
notes), runs the time pass after changes settle (:func:`run_times`), and again whenever
:func:`times_due` finds what it reads changed since it last found nothing to do (a stop or
a crash before the pass was done leaves no note of the records as they are, so the next
start does it).

A rescan of an unchanged library must not redo them (at 100k files they cost several times
the rescan itself), so :func:`finish_passes` keeps a note of what each pass last found
needing nothing, machine-local (under the cache directory, one per set of roots), each
entry keyed by everything the pass reads:

- sweep: per folder, the token of its record files (see :mod:`scanpixd.store.record_cache`)
  and the stat keys of its data directories (a file added or removed changes them);
- vector index: per folder, the token of its records, the model and the stat keys of the
  index files (a damaged, replaced or deleted index is checked again);
- times: one signature over every folder's token, the roots, the time settings and the
  zone data.  The pass itself lists the ``times`` view of every record (what it reads, a
  tenth of the slim view: see :func:`scanpixd.store.record_cache.times_view`).

Anything changed, added, removed or synced in changes a key, and the pass runs for it
again.  Where a key cannot be known (a file changed within the racy window, a folder
written since it was listed), nothing is noted, so it is looked at next time.  The note is
derived data: lost, damaged or stale, it only costs one full pass.

A time pass that writes records leaves them as a second pass would find them (its output
is never its input), but the folders it wrote have no token until their record files are
older than the racy window.  So it notes the records it expects instead: the tokens of the
folders it did not write, and a digest of the listing it left in each one it did.  The next
look lists only the written folders, and where each one reads back exactly as expected and
every other token is unchanged, the pass is noted as done without running again (at 100k
files it costs ~10 s of CPU).
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import logging
import os
import zoneinfo
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import orjson

from scanpixd import __version__
from scanpixd.config import Settings
from scanpixd.record import Record
from scanpixd.store import FolderStore, ann, atomic

log = logging.getLogger(__name__)

Key = tuple[FolderStore, str]
NOTES_FORMAT = 1
# Part of every note's key, so that a pass whose code changed runs again: bump one when
# its pass would now find something the old one did not.
PASSES = {"swept": 1, "index": 1, "times": 1}

ProgressFn = Callable[[str, int, int], None]
TIMES_VIEW = "times"  # what every time pass lists: see record_cache.times_view


def root_of(folder: Path, roots: Iterable[Path]) -> Path | None:
    """The most specific root holding ``folder``."""
    best = None
    for root in roots:
        if (folder == root or root in folder.parents) and (best is None or len(str(root)) > len(str(best))):
            best = root
    return best


def update_times(entries: Iterable[tuple[FolderStore, str, Record]], roots: list[Path],
                 settings: Settings) -> list[Key]:
    """Infer every item's UTC time and zone; write the records whose ``taken`` changed.

    Items are keyed by their path relative to their root, since the key of a borrowed
    zone's source is stored in sidecars and must stay valid on another machine.
    """
    return _write_times(*_time_changes(entries, roots, settings))


def _time_changes(entries: Iterable[tuple[FolderStore, str, Record]], roots: list[Path],
                  settings: Settings) -> tuple[dict[str, dict], dict[str, Key]]:
    """The new ``taken`` of the items whose value changes, and where each item lives."""
    from scanpixd.timeinfer import infer_times

    items: list[tuple[str, Record]] = []
    where: dict[str, Key] = {}
    prefixes: dict[Path, str | None] = {}  # folder -> its path below its root, plus "/"
    for folder, name, record in entries:
        if record.get("status") != "ok":
            continue
        if folder.folder not in prefixes:
            prefixes[folder.folder] = _prefix(folder.folder, roots)
        prefix = prefixes[folder.folder]
        if prefix is None:
            continue
        key = prefix + name
        items.append((key, record))
        where[key] = (folder, name)
    return infer_times(items, settings), where


def _write_times(changed: dict[str, dict], where: dict[str, Key]) -> list[Key]:
    written: list[Key] = []
    for key, taken in changed.items():
        folder, name = where[key]
        current = folder.read(name)
        if current is None:
            continue
        current["taken"] = taken
        if folder.write_if_unchanged(current):
            written.append((folder, name))
    if written:
        log.info("time inference updated %d records", len(written))
    return written


def _prefix(folder: Path, roots: list[Path]) -> str | None:
    """What goes before a file name to give its path relative to its root (None: no root)."""
    root = root_of(folder, roots)
    if root is None:
        return None
    rel = str(folder.relative_to(root))
    return "" if rel == "." else rel + "/"


def refresh_vector_indexes(folders: Iterable[tuple[FolderStore, dict[str, Record]]],
                           model_id: str | None) -> int:
    """Bring the portable ANN index of each folder with embeddings up to date."""
    if model_id is None:
        return 0
    return sum(_refresh_index(folder, records, model_id) for folder, records in folders)


def _refresh_index(folder: FolderStore, records: dict[str, Record], model_id: str) -> bool:
    if not any("clip" in r for r in records.values()) and ann.read_meta(folder) is None:
        return False  # no vectors and no index: nothing to build or to remove
    try:
        ann.load_or_rebuild(folder, records, model_id)
    except OSError as exc:
        log.warning("cannot write the vector index of %s: %s", folder.folder, exc)
        return False
    return True


# -- the passes after a run, skipped where nothing they read changed ------------------------
def finish_passes(folders: Iterable[FolderStore], roots: list[Path], settings: Settings,
                  model_id: str | None, progress: ProgressFn | None = None) -> None:
    """Orphans swept, times inferred and vector indexes checked, for ``folders`` (every
    folder of ``roots`` a reconcile found), each only where its inputs changed."""
    notes = _Notes.load(settings.cache_dir, roots)
    present = [folder for folder in folders if folder.exists()]
    listings = _Listings()
    for folder in present:
        _sweep(folder, notes, listings)
    if progress:
        progress("times", 0, 1)
    _times(present, roots, settings, notes, _Listings(TIMES_VIEW))
    if progress:
        progress("times", 1, 1)
    if model_id is not None:
        for folder in present:
            _index(folder, model_id, notes, listings)
    notes.save()


class _Listings:
    """Each folder's listing in one view, read when a pass first needs it (never, when none
    does)."""

    def __init__(self, view: str = "slim") -> None:
        self.view = view
        self._read: dict[FolderStore, dict[str, Record]] = {}

    def get(self, folder: FolderStore) -> dict[str, Record]:
        found = self._read.get(folder)
        if found is None:  # re-read before writing
            found = self._read[folder] = folder.records(full=False, view=self.view)
        return found


def _sweep(folder: FolderStore, notes: _Notes, listings: _Listings) -> None:
    dirs = folder.dir_keys()  # taken first: a file added after this shows as a new key
    if notes.keep("swept", folder, [folder.listing_token(), dirs]):
        return
    failed: list[str] = []
    removed = folder.sweep(listings.get(folder), failed)
    if removed:
        log.debug("swept %d orphaned files in %s", removed, folder.folder)
    elif not failed:
        notes.note("swept", folder, [folder.listing_token(), dirs])


class Sweeper:
    """The orphan sweep one folder at a time, for a caller that interleaves it with other
    work (the daemon, after each rescan of a whole root), noted as :func:`finish_passes`
    notes it: a folder whose record files and data directories are as they were at its last
    clean sweep is skipped, not listed again (at 100k files, reading every folder's records
    after each start cost about 7 s of CPU)."""

    def __init__(self, cache_dir: Path, roots: list[Path]):
        self._notes = _Notes.load(cache_dir, roots)

    def sweep(self, folder: FolderStore) -> None:
        _sweep(folder, self._notes, _Listings())  # no listing kept: folders come one by one

    def save(self) -> None:
        """Write what was found clean; the other folders' notes stay as they were."""
        self._notes.save(keep_folders=True, keep_times=True)


def _times(folders: list[FolderStore], roots: list[Path], settings: Settings, notes: _Notes,
           listings: _Listings) -> None:
    if _times_done(notes, folders, roots, settings, listings.get):
        return
    entries = [(f, name, record) for f in folders for name, record in listings.get(f).items()]
    changed, where = _time_changes(entries, roots, settings)
    _apply_times(notes, _times_signature(folders, roots, settings), changed, where, listings)


def _apply_times(notes: _Notes, signature: list[Any] | None, changed: dict[str, dict],
                 where: dict[str, Key], listings: _Listings) -> list[Key]:
    """Write what a pass found changed and note the records it expects to leave, or note
    that it found nothing; ``signature`` is of what it read.  Returns the records written."""
    if not changed:
        notes.note_times(signature)
        return []
    for folder in {where[key][0] for key in changed}:
        listings.get(folder)  # as before the writes: what the expectation builds on
    written = _write_times(changed, where)
    notes.note_times_pending(_expected(signature, changed, where, written, listings.get))
    return written


# -- the daemon's time pass: the same note, so a restart knows whether it is still due -------
EntriesFn = Callable[[], Iterable[tuple[FolderStore, str, Record]]]


def times_due(folders: list[FolderStore], roots: list[Path], settings: Settings) -> bool:
    """Whether the time pass may find something: what it reads changed since it last found
    nothing to change (a pass cut short by a stop or a crash never noted that)."""
    present = _listed(folders)
    notes = _Notes.load(settings.cache_dir, roots)
    if not _times_done(notes, present, roots, settings, _Listings(TIMES_VIEW).get):
        return True
    notes.save(keep_folders=True)  # a confirmed expectation becomes the note
    return False


def run_times(folders: list[FolderStore], entries: EntriesFn, roots: list[Path],
              settings: Settings) -> list[Key]:
    """The time pass over ``entries`` (every item of ``folders``, as the daemon holds them);
    returns the records it wrote.  Noted as :func:`finish_passes` notes it, where the pass
    found nothing to change."""
    present = _listed(folders)
    signature = _times_signature(present, roots, settings)  # taken first, as in _times
    notes = _Notes.load(settings.cache_dir, roots)
    listings = _Listings(TIMES_VIEW)
    written: list[Key] = []
    if not _times_done(notes, present, roots, settings, listings.get):
        changed, where = _time_changes(entries(), roots, settings)
        written = _apply_times(notes, signature, changed, where, listings)
    notes.save(keep_folders=True)
    return written


def _listed(folders: list[FolderStore]) -> list[FolderStore]:
    """The folders that exist, each with a listing token where one can be known.

    A folder written since it was listed has none; listing it again (from its cache, as a
    rescan does) gives one, unless it was written within the racy window.
    """
    present = [folder for folder in folders if folder.exists()]
    for folder in present:
        if folder.listing_token() is None:
            folder.records(full=False)
    return present


def _times_signature(folders: list[FolderStore], roots: list[Path], settings: Settings
                     ) -> list[Any] | None:
    tokens = sorted((_folder_key(f.folder), f.listing_token()) for f in folders)
    if any(token is None for _, token in tokens):
        return None
    return [*_times_settings(roots, settings), tokens]


def _times_settings(roots: list[Path], settings: Settings) -> list[Any]:
    """What the time pass reads besides the records."""
    return [settings.time.home_timezone, settings.time.neighbour_window,
            sorted(os.fsencode(root).hex() for root in roots), _zone_data()]


def _times_done(notes: _Notes, folders: list[FolderStore], roots: list[Path], settings: Settings,
                listing_of: Callable[[FolderStore], dict[str, Record]]) -> bool:
    """Whether the time pass is noted as done for ``folders`` as they are: by the note of a
    pass that changed nothing, or by the records a pass that wrote expected to leave."""
    return notes.keep_times(_times_signature(folders, roots, settings)) \
        or _as_expected(notes, folders, roots, settings, listing_of)


def _expected(signature: list[Any] | None, changed: dict[str, dict], where: dict[str, Key],
              written: list[Key], listing_of: Callable[[FolderStore], dict[str, Record]]
              ) -> dict[str, Any] | None:
    """What the records will be once the pass's writes settle: the tokens of the folders
    it read but did not write, a digest of each written folder's listing as it left it.

    ``signature`` is of what the pass read, ``listing_of`` a written folder's listing from
    before the writes.  None when a write did not land (a record changed meanwhile, whose
    time is then the next pass's), or when what the pass read has no signature.
    """
    if signature is None or len(written) != len(changed):
        return None
    takens: dict[FolderStore, dict[str, dict]] = {}
    for key, taken in changed.items():
        folder, name = where[key]
        takens.setdefault(folder, {})[name] = taken
    digests: dict[str, str] = {}
    for folder, new in takens.items():
        listing = dict(listing_of(folder))
        for name, taken in new.items():
            listing[name] = {**listing[name], "taken": taken}
        digests[_folder_key(folder.folder)] = _listing_digest(listing)
    *fixed, tokens = signature
    return {"settings": _digest("times", fixed),
            "tokens": {key: token for key, token in tokens if key not in digests},
            "written": digests}


def _as_expected(notes: _Notes, folders: list[FolderStore], roots: list[Path], settings: Settings,
                 listing_of: Callable[[FolderStore], dict[str, Record]]) -> bool:
    """Whether ``folders`` hold the records the last pass that wrote expected (then the
    pass is noted as done): the same settings and folders, every other token unchanged, and
    each written folder's listing, read again, equal to the one it left."""
    expected = notes.times_pending
    if expected is None or expected.get("settings") != _digest("times", _times_settings(roots, settings)):
        return False
    tokens, written = expected.get("tokens"), expected.get("written")
    by_key = {_folder_key(folder.folder): folder for folder in folders}
    if not isinstance(tokens, dict) or not isinstance(written, dict) \
            or by_key.keys() != tokens.keys() | written.keys() or tokens.keys() & written.keys():
        return False
    if any(by_key[key].listing_token() != token for key, token in tokens.items()):
        return False
    for key, digest in written.items():
        listing = listing_of(by_key[key])
        if by_key[key].listing_token() is None or _listing_digest(listing) != digest:
            return False
    notes.note_times(_times_signature(folders, roots, settings))
    return True


def _listing_digest(listing: dict[str, Record]) -> str:
    return hashlib.blake2b(orjson.dumps(listing, option=orjson.OPT_SORT_KEYS),
                           digest_size=16).hexdigest()


@functools.cache
def _zone_data() -> list[str]:
    """Where zone answers come from: the zoneinfo database and timezonefinder's polygons."""
    import importlib.metadata

    found = []
    for package in ("tzdata", "timezonefinder"):
        with contextlib.suppress(importlib.metadata.PackageNotFoundError):
            found.append(f"{package} {importlib.metadata.version(package)}")
    for base in zoneinfo.TZPATH:
        with contextlib.suppress(OSError):
            st = os.stat(Path(base) / "tzdata.zi")
            found.append(f"{base} {st.st_size} {st.st_mtime_ns}")
    return found


def _index(folder: FolderStore, model_id: str, notes: _Notes, listings: _Listings) -> None:
    files = ann.file_keys(folder)  # taken first: a file replaced after this shows as a new key
    if notes.keep("index", folder, [folder.listing_token(), model_id, ann.INDEX_FORMAT, files]):
        return
    _refresh_index(folder, listings.get(folder), model_id)
    if ann.file_keys(folder) == files:  # found current, not rewritten
        notes.note("index", folder, [folder.listing_token(), model_id, ann.INDEX_FORMAT, files])


@functools.lru_cache(maxsize=65536)
def _folder_key(folder: Path) -> str:
    return hashlib.blake2b(os.fsencode(folder), digest_size=16).hexdigest()


def _digest(name: str, key: list[Any] | None) -> str | None:
    """The digest of the pass ``name``'s key, or None when a part of it is unknown."""
    if key is None or None in key:
        return None
    return hashlib.blake2b(orjson.dumps([__version__, PASSES[name], *key]),
                           digest_size=16).hexdigest()


class _Notes:
    """What the passes last found needing nothing: the previous run's note and this one's.

    Only what this run confirmed is kept, so folders gone from the roots drop out.
    """

    def __init__(self, path: Path, old: dict[str, Any]):
        self.path = path
        self._old_folders: dict[str, dict[str, str]] = old.get("folders", {})
        self._old_times: str | None = old.get("times")
        pending = old.get("times_pending")
        self.times_pending: dict[str, Any] | None = pending if isinstance(pending, dict) else None
        self._old_pending = self.times_pending
        self._folders: dict[str, dict[str, str]] = {}
        self._times: str | None = None

    @classmethod
    def load(cls, cache_dir: Path, roots: list[Path]) -> _Notes:
        joined = b"\0".join(sorted(os.fsencode(root) for root in roots))
        name = hashlib.blake2b(joined, digest_size=16).hexdigest()
        path = cache_dir / "upkeep" / f"{name}.json"
        data = atomic.read_json(path)
        if not isinstance(data, dict) or data.get("format") != NOTES_FORMAT \
                or not isinstance(data.get("folders"), dict):
            data = {}
        return cls(path, data)

    def keep(self, name: str, folder: FolderStore, key: list[Any]) -> bool:
        """Whether the pass ``name`` found ``folder`` needing nothing with this same key
        (then that stays noted)."""
        digest = _digest(name, key)
        old = self._old_folders.get(_folder_key(folder.folder))
        if digest is None or not isinstance(old, dict) or old.get(name) != digest:
            return False
        self._folders.setdefault(_folder_key(folder.folder), {})[name] = digest
        return True

    def note(self, name: str, folder: FolderStore, key: list[Any]) -> None:
        digest = _digest(name, key)
        if digest is not None:
            self._folders.setdefault(_folder_key(folder.folder), {})[name] = digest

    def keep_times(self, signature: list[Any] | None) -> bool:
        digest = _digest("times", signature)
        if digest is None or digest != self._old_times:
            return False
        self._times, self.times_pending = digest, None
        return True

    def note_times(self, signature: list[Any] | None) -> None:
        self._times = _digest("times", signature)
        if self._times is not None:  # else an expectation still tells more than nothing
            self.times_pending = None

    def note_times_pending(self, expected: dict[str, Any] | None) -> None:
        """The records a pass that wrote expects to leave (see :func:`_expected`)."""
        self._times, self.times_pending = None, expected

    def save(self, keep_folders: bool = False, keep_times: bool = False) -> None:
        """Write the note; ``keep_folders``: the run looked at times alone, so the previous
        run's folder notes stay as they were; ``keep_times``: it did not look at times."""
        if keep_folders:  # each folder's other passes' notes too
            old = {k: v for k, v in self._old_folders.items() if isinstance(v, dict)}
            self._folders = {key: {**old.get(key, {}), **self._folders.get(key, {})}
                             for key in {*old, *self._folders}}
        if keep_times:
            self._times, self.times_pending = self._old_times, self._old_pending
        if self._folders == self._old_folders and self._times == self._old_times \
                and self.times_pending == self._old_pending:
            return
        data = {"format": NOTES_FORMAT, "times": self._times, "times_pending": self.times_pending,
                "folders": self._folders}
        with contextlib.suppress(OSError):
            self.path.parent.mkdir(parents=True, exist_ok=True)
            atomic.write_bytes(self.path, orjson.dumps(data), durable=False)  # derived data

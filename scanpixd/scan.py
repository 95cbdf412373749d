"""Walk the roots and decide what needs work: new, changed, unchanged, moved, deleted.

The walk uses ``os.scandir`` without following symlinks (no loops, nothing outside the
roots), skips excluded names, and keeps names that are not valid UTF-8 as the filesystem
gives them.  :func:`reconcile` compares what is on disk with the records, rclip-style:
unchanged when (size, mtime) match; otherwise the content hash decides whether a file
is new, was moved or renamed (results kept), or is only a touched copy.

A folder found *settled* (every file unchanged with nothing due, no record without its
file) is noted, machine-local, under the cache directory: the stat keys of its record
files, a digest of its files' names, sizes and mtimes, and the distinct *shapes* of its
records (their scan view without name, size, time and hash, which no stage reads).  The
next rescan takes such a folder as settled without reading a record when its record files
and its files are exactly as noted and no shape has a stage due with the stages as they
are now (a new stage version, a model or tool that became available); anything else is
reconciled file by file as above.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import stat
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import orjson

from scanpixd.config import Settings
from scanpixd.excludes import Excluder
from scanpixd.pipeline.base import Stage, Tier, pending
from scanpixd.pipeline.sniff import worth_sniffing
from scanpixd.record import RECORD_FORMAT, Record, encode_name
from scanpixd.store import FolderStore, Store, atomic, record_cache

log = logging.getLogger(__name__)

_HASH_CHUNK = 1 << 20


@dataclass
class FolderListing:
    folder: Path
    files: dict[str, os.stat_result]
    hold: set[str] = field(default_factory=set)  # present, but not reported complete yet


def walk(root: Path, excluder: Excluder, recursive: bool = True, rel: str = ""
         ) -> Iterator[FolderListing]:
    """Every folder below ``root`` (itself included) with its candidate files.

    ``rel`` is ``root``'s path relative to its library root, for path-shaped exclude globs.
    """
    stack = [(root, rel)]
    while stack:
        folder, rel = stack.pop()
        files: dict[str, os.stat_result] = {}
        try:
            entries = list(os.scandir(folder))
        except OSError as exc:
            log.warning("cannot read folder %s: %s", folder, exc.strerror)
            continue
        for entry in entries:
            name = entry.name
            try:  # is_dir and is_file answer from the entry's type: no stat
                if entry.is_dir(follow_symlinks=False):
                    if recursive and not excluder.excluded_child(rel, name, is_dir=True):
                        stack.append((Path(entry.path), f"{rel}/{name}" if rel else name))
                elif entry.is_file(follow_symlinks=False) and worth_sniffing(name) \
                        and not excluder.excluded_child(rel, name, is_dir=False):
                    files[name] = entry.stat(follow_symlinks=False)
            except OSError:
                continue
        yield FolderListing(folder, files)


def content_hash(path: Path) -> str:
    """blake2b-128 of the file's bytes: the identity that survives renames and syncs."""
    digest = hashlib.blake2b(digest_size=16)
    with open(path, "rb") as fh:
        while chunk := fh.read(_HASH_CHUNK):
            digest.update(chunk)
    return "b2:" + digest.hexdigest()


@dataclass
class WorkItem:
    folder: FolderStore
    name: str
    size: int
    mtime_ns: int
    hash: str | None
    record: Record | None  # the current record when only some stages are stale
    reason: str  # "new", "changed", "stale"

    @property
    def path(self) -> Path:
        return self.folder.folder / self.name


@dataclass
class Plan:
    """The outcome of a reconcile: what to process and what was already settled."""

    work: list[WorkItem] = field(default_factory=list)
    unchanged: int = 0
    moved: int = 0
    copied: int = 0
    removed: int = 0
    unreadable: list[tuple[Path, str]] = field(default_factory=list)
    offline_roots: list[Path] = field(default_factory=list)
    folders: list[FolderStore] = field(default_factory=list)
    # (folder, name) of records written or removed during the reconcile (moves, copies,
    # deletions), so a long-lived library view can update itself without a reload.
    written: list[tuple[FolderStore, str]] = field(default_factory=list)
    deleted: list[tuple[FolderStore, str]] = field(default_factory=list)


@dataclass
class _Vanished:
    folder: FolderStore
    name: str
    record: Record


def root_is_online(root: Path, store: Store) -> bool:
    """A missing root, or an empty mount point that used to hold data, is offline."""
    if not root.is_dir():
        return False
    try:
        with os.scandir(root) as it:
            empty = next(it, None) is None
    except OSError:
        return False
    return not (empty and store.cache_location(root).parent.is_dir())


@dataclass
class Scope:
    """Part of a root to reconcile: the whole tree below ``path``, or just that folder.

    ``ready`` limits new and changed files to those names (absolute paths) that a
    watcher reported complete; ``None`` trusts every file found (a scan at rest).
    """

    root: Path
    path: Path
    recursive: bool = True
    ready: set[Path] | None = None


def reconcile(
    roots: list[Path],
    settings: Settings,
    store: Store,
    stages: list[Stage],
    hash_workers: int = 2,
    on_progress: Callable[[str, int], None] | None = None,
) -> Plan:
    """Compare disk with records for every root; apply moves, copies and deletions."""
    return reconcile_scopes([Scope(r, r) for r in roots], settings, store, stages, hash_workers,
                            on_progress)


def reconcile_scopes(
    scopes: list[Scope],
    settings: Settings,
    store: Store,
    stages: list[Stage],
    hash_workers: int = 2,
    on_progress: Callable[[str, int], None] | None = None,
) -> Plan:
    """Reconcile several scopes in one pass, so a move between two of them is seen as a move."""
    plan = Plan()
    excluder = Excluder.from_settings(settings)
    due = _Due(stages)
    settled = _Settled(store.cache_dir)
    candidates: list[WorkItem] = []
    vanished: dict[str, list[_Vanished]] = {}
    live: list[_Live | FolderStore] = []  # per folder, in walk order; a settled one is read if needed
    for scope in scopes:
        if not root_is_online(scope.root, store):
            log.warning("root %s is offline (missing or not mounted); its index is kept", scope.root)
            if scope.root not in plan.offline_roots:
                plan.offline_roots.append(scope.root)
            continue
        for listing in _listings(scope, excluder, store):
            if scope.ready is not None:
                listing.hold = {n for n in listing.files if listing.folder / n not in scope.ready}
            folder = store.folder(listing.folder)
            if not listing.hold and listing.files and settled.holds(folder, listing.files, due):
                plan.folders.append(folder)
                plan.unchanged += len(listing.files)
                live.append(folder)
            else:
                _classify_folder(listing, folder, due, plan, candidates, vanished, live, settled)
            if on_progress:
                on_progress("scan", len(candidates))
    _hash_candidates(candidates, plan, hash_workers)
    live_by_hash = _live_by_hash(live) if candidates else {}
    for item in candidates:
        if item.hash is None:
            continue
        if _take_moved(item, vanished, plan) or _take_copy(item, live_by_hash, plan):
            plan.written.append((item.folder, item.name))
            continue
        plan.work.append(item)
    _remove_vanished(vanished, plan)
    return plan


def _listings(scope: Scope, excluder: Excluder, store: Store) -> Iterator[FolderListing]:
    """The folders of a scope; one that no longer exists still shows its records as vanished."""
    if not scope.path.is_dir():
        for folder in store.known_folders(scope.path, scope.recursive):
            yield FolderListing(folder, {})
        return
    rel = "" if scope.path == scope.root else str(scope.path.relative_to(scope.root))
    yield from walk(scope.path, excluder, recursive=scope.recursive, rel=rel)


class _Due:
    """Whether a record has stages to run: :func:`pending`'s answer, at a fraction of its cost.

    A rescan asks this of every unchanged file (100k of them in a large library), so the
    stages ready now and their version keys are taken once, and a stage is asked whether it
    applies only when the record lacks its current key.  Stages that judge currency
    themselves (overriding ``is_current``) are asked as usual.
    """

    def __init__(self, stages: list[Stage]):
        ready = [s for s in stages if s.is_ready()]
        self.checks = [(s, s.version_key() if type(s).is_current is Stage.is_current else None)
                       for s in ready]

    def __call__(self, record: Record) -> bool:
        if record.get("status") in ("failed", "skipped"):
            return False
        done = record.get("stages")
        done = done if isinstance(done, dict) else {}
        for stage, key in self.checks:
            current = done.get(stage.name) == key if key is not None else stage.is_current(record)
            if not current and stage.applies(record):
                return True
        return False


_Live = list[tuple[str, tuple[FolderStore, str, object]]]  # (hash, (folder, name, status))


def _classify_folder(
    listing: FolderListing,
    folder: FolderStore,
    due: _Due,
    plan: Plan,
    candidates: list[WorkItem],
    vanished: dict[str, list[_Vanished]],
    live: list[_Live | FolderStore],
    settled: _Settled,
) -> None:
    records = folder.records(full=False, view="scan")  # empty where there is no data
    if records or listing.files:
        plan.folders.append(folder)
    found: _Live = []
    live.append(found)
    unchanged = 0
    for name, st in listing.files.items():
        if name in listing.hold:
            continue
        record = records.get(name)
        if record is not None and record.get("size") == st.st_size \
                and record.get("mtime_ns") == st.st_mtime_ns:
            # strings only: 100k records kept alive would make every garbage collection slow
            found.append((str(record["hash"]), (folder, name, record.get("status"))))
            if not due(record):
                unchanged += 1
                continue
            stored = _stored(folder, name, record)  # the stages add to it and write it back
            if stored is not None:
                plan.work.append(
                    WorkItem(folder, name, st.st_size, st.st_mtime_ns, stored["hash"], stored, "stale"))
                continue
            record = None
        if not stat.S_ISREG(st.st_mode):
            continue
        candidates.append(
            WorkItem(folder, name, st.st_size, st.st_mtime_ns, None, record,
                     "changed" if record is not None else "new"))
    plan.unchanged += unchanged
    for name, record in records.items():
        if name not in listing.files:
            vanished.setdefault(str(record.get("hash")), []).append(_Vanished(folder, name, record))
    if unchanged and unchanged == len(listing.files) == len(records) and not listing.hold:
        settled.note(folder, listing.files, records)


def _live_by_hash(live: list[_Live | FolderStore]) -> dict[str, tuple[FolderStore, str, object]]:
    """Indexed files by content hash, first found first (for copies of them to reuse)."""
    by_hash: dict[str, tuple[FolderStore, str, object]] = {}
    for part in live:
        if isinstance(part, FolderStore):  # taken as settled: every record has its file
            part = [(str(r["hash"]), (part, name, r.get("status")))
                    for name, r in part.records(full=False, view="scan").items()]
        for digest, where in part:
            by_hash.setdefault(digest, where)
    return by_hash


# What the scan view holds besides what no stage decides on (see tests/test_scan_view.py).
_IDENTITY = frozenset({"format", "name", "name_b64", "size", "mtime_ns", "hash"})
NOTE_FORMAT = 1


class _Settled:
    """Notes of settled folders, machine-local: see the module docstring."""

    def __init__(self, cache_dir: Path):
        self.base = cache_dir / "scan"

    def holds(self, folder: FolderStore, files: dict[str, os.stat_result], due: _Due) -> bool:
        """Whether ``folder`` is as noted, with nothing due: then it needs no reading."""
        note = atomic.read_json(self._path(folder))
        if not isinstance(note, dict) or note.get("version") != self._version() \
                or note.get("files") != _files_digest(files):
            return False
        shapes, token = note.get("shapes"), note.get("token")
        if not isinstance(shapes, list) or not isinstance(token, str) \
                or not folder.same_record_files(note.get("records"), token):
            return False
        try:
            return all(isinstance(shape, dict) and not due(shape) for shape in shapes)
        except Exception:  # a stage that reads more than the scan view: decide file by file
            log.debug("a stage could not decide on a shape of %s", folder.folder, exc_info=True)
            return False

    def note(self, folder: FolderStore, files: dict[str, os.stat_result],
             records: dict[str, Record]) -> None:
        """Note a folder found settled, if its record files are still the ones listed."""
        token = folder.listing_token()
        keys = folder.record_keys() if token is not None else None
        if keys is None or keys[1] != token:
            return
        shapes: dict[bytes, Record] = {}
        for record in records.values():
            shape = {k: v for k, v in record.items() if k not in _IDENTITY}
            shapes.setdefault(orjson.dumps(shape, option=orjson.OPT_SORT_KEYS), shape)
        note = {"version": self._version(), "files": _files_digest(files), "records": keys[0],
                "token": token, "shapes": list(shapes.values())}
        with contextlib.suppress(OSError):
            path = self._path(folder)
            path.parent.mkdir(parents=True, exist_ok=True)
            atomic.write_bytes(path, orjson.dumps(note), durable=False)

    def _path(self, folder: FolderStore) -> Path:
        key = hashlib.blake2b(os.fsencode(folder.folder), digest_size=16).hexdigest()
        return self.base / key[:2] / f"{key}.json"

    @staticmethod
    def _version() -> list[int]:
        return [NOTE_FORMAT, RECORD_FORMAT, record_cache.VIEW_VERSIONS["scan"]]


def _files_digest(files: dict[str, os.stat_result]) -> str:
    """Names, sizes and mtimes of a folder's files: equal digests, the same files as listed."""
    listed = {record_cache.json_name(name): [st.st_size, st.st_mtime_ns] for name, st in files.items()}
    return hashlib.blake2b(orjson.dumps(listed, option=orjson.OPT_SORT_KEYS), digest_size=16).hexdigest()


def _stored(folder: FolderStore, name: str, listed: Record) -> Record | None:
    """The whole stored record behind a listing's (which may lack the raw metadata dump)."""
    record = folder.read(name)
    return record if record is not None and record.get("hash") == listed.get("hash") else None


def _hash_candidates(candidates: list[WorkItem], plan: Plan, workers: int) -> None:
    def one(item: WorkItem) -> None:
        try:
            item.hash = content_hash(item.path)
        except OSError as exc:
            plan.unreadable.append((item.path, exc.strerror or str(exc)))

    with ThreadPoolExecutor(max_workers=max(1, workers)) as pool:
        list(pool.map(one, candidates))


def _take_moved(item: WorkItem, vanished: dict[str, list[_Vanished]], plan: Plan) -> bool:
    """A new file whose content matches a vanished record was moved or renamed: keep results."""
    assert item.hash is not None
    if item.record is not None and item.record.get("hash") == item.hash:
        stored = _stored(item.folder, item.name, item.record)
        if stored is not None:
            _rewrite_identity(item.folder, stored, item.name, item)  # touched, not changed
            plan.unchanged += 1
            return True
    sources = vanished.get(item.hash)
    if not sources:
        return False
    record = _stored(sources[-1].folder, sources[-1].name, sources[-1].record)
    if record is None:
        return False
    source = sources.pop()
    _copy_assets(source.folder, item.folder, record)
    _rewrite_identity(item.folder, record, item.name, item)
    same_place = source.folder.data_dir == item.folder.data_dir
    source.folder.remove(source.name, live_hashes={item.hash} if same_place else None)
    plan.deleted.append((source.folder, source.name))
    plan.moved += 1
    return True


def _take_copy(item: WorkItem,
               live_by_hash: dict[str, tuple[FolderStore, str, object]], plan: Plan) -> bool:
    """An exact copy of a file already indexed reuses its results instead of recomputing."""
    assert item.hash is not None
    found = live_by_hash.get(item.hash)
    if found is None or found[2] != "ok":
        return False
    source_folder, source_name, _ = found
    record = _stored(source_folder, source_name, {"hash": item.hash})
    if record is None:
        return False
    _copy_assets(source_folder, item.folder, record)
    _rewrite_identity(item.folder, record, item.name, item)
    plan.copied += 1
    return True


def _rewrite_identity(folder: FolderStore, record: Record, name: str, item: WorkItem) -> None:
    record.pop("name_b64", None)
    record.update(encode_name(name))
    record["size"] = item.size
    record["mtime_ns"] = item.mtime_ns
    folder.write(record)


def _copy_assets(source: FolderStore, target: FolderStore, record: Record) -> None:
    if source.data_dir == target.data_dir:
        return
    for kind, key in (("thumbs", "thumbs"), ("previews", "preview")):
        for file_name in (record.get(key) or {}).values():
            if not isinstance(file_name, str) or target.has_asset(file_name, kind):
                continue
            try:
                data = source.asset_path(file_name, kind).read_bytes()
            except (OSError, ValueError):
                continue  # the stage will redo it when it finds the asset missing
            target.write_asset(file_name, data, kind)


def _remove_vanished(vanished: dict[str, list[_Vanished]], plan: Plan) -> None:
    by_folder: dict[Path, list[_Vanished]] = {}
    for entries in vanished.values():
        for entry in entries:
            by_folder.setdefault(entry.folder.folder, []).append(entry)
    for entries in by_folder.values():
        folder = entries[0].folder
        gone = {e.name for e in entries}
        live = {str(r.get("hash")) for n, r in folder.records(full=False, view="scan").items()
                if n not in gone}
        for entry in entries:
            folder.remove(entry.name, live_hashes=live)
            plan.deleted.append((folder, entry.name))
            plan.removed += 1


def tier_of(stages: list[Stage], record: Record) -> Tier | None:
    """The most urgent tier with pending work on ``record``."""
    tiers = [s.tier for s in pending([s for s in stages if s.is_ready()], record)]
    return min(tiers) if tiers else None

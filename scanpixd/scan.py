"""Walk the roots and decide what needs work: new, changed, unchanged, moved, deleted.

The walk uses ``os.scandir`` without following symlinks (no loops, nothing outside the
roots), skips excluded names, and keeps names that are not valid UTF-8 as the filesystem
gives them.  :func:`reconcile` compares what is on disk with the records, rclip-style:
unchanged when (size, mtime) match; otherwise the content hash decides whether a file
is new, was moved or renamed (results kept), or is only a touched copy.
"""

from __future__ import annotations

import fnmatch
import hashlib
import logging
import os
import stat
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

from scanpixd.config import Settings
from scanpixd.pipeline.base import Stage, Tier, pending
from scanpixd.record import Record, encode_name
from scanpixd.store import DATA_DIR_NAME, FolderStore, Store
from scanpixd.store.atomic import is_temp_name

log = logging.getLogger(__name__)

ALWAYS_EXCLUDED_DIRS = frozenset({DATA_DIR_NAME, "@eaDir", ".thumbnails", "#recycle", "lost+found"})
_HASH_CHUNK = 1 << 20


class Excluder:
    """Decides which names a walk or a watcher ignores; ``rel`` is relative to the root."""

    def __init__(self, patterns: list[str]):
        self.patterns = list(patterns)

    def excluded_dir(self, name: str, rel: str = "") -> bool:
        if name in ALWAYS_EXCLUDED_DIRS or name.startswith("."):
            return True
        return self._matches(name, rel)

    def excluded_file(self, name: str, rel: str = "") -> bool:
        if name.startswith(".") or is_temp_name(name):
            return True
        return self._matches(name, rel)

    def excluded_path(self, path: Path, root: Path) -> bool:
        """Whether any component of ``path`` (a file below ``root``) is excluded."""
        try:
            parts = path.relative_to(root).parts
        except ValueError:
            return True
        for i, part in enumerate(parts[:-1]):
            if self.excluded_dir(part, "/".join(parts[: i + 1])):
                return True
        return bool(parts) and self.excluded_file(parts[-1], "/".join(parts))

    def _matches(self, name: str, rel: str) -> bool:
        return any(fnmatch.fnmatchcase(name, p) or (rel and fnmatch.fnmatchcase(rel, p))
                   for p in self.patterns)


@dataclass
class FolderListing:
    folder: Path
    files: dict[str, os.stat_result]


def walk(root: Path, excluder: Excluder) -> Iterator[FolderListing]:
    """Every folder below ``root`` (itself included) with its candidate files."""
    stack = [(root, "")]
    while stack:
        folder, rel = stack.pop()
        files: dict[str, os.stat_result] = {}
        try:
            entries = list(os.scandir(folder))
        except OSError as exc:
            log.warning("cannot read folder %s: %s", folder, exc.strerror)
            continue
        for entry in entries:
            child_rel = f"{rel}/{entry.name}" if rel else entry.name
            try:
                if entry.is_dir(follow_symlinks=False):
                    if not excluder.excluded_dir(entry.name, child_rel):
                        stack.append((Path(entry.path), child_rel))
                elif entry.is_file(follow_symlinks=False):
                    if not excluder.excluded_file(entry.name, child_rel):
                        files[entry.name] = entry.stat(follow_symlinks=False)
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
    return not (empty and store.cache_location(root).exists())


def reconcile(
    roots: list[Path],
    settings: Settings,
    store: Store,
    stages: list[Stage],
    hash_workers: int = 2,
    on_progress: Callable[[str, int], None] | None = None,
) -> Plan:
    """Compare disk with records for every root; apply moves, copies and deletions."""
    plan = Plan()
    excluder = Excluder(settings.exclude)
    candidates: list[WorkItem] = []
    vanished: dict[str, list[_Vanished]] = {}
    live_by_hash: dict[str, tuple[FolderStore, str, Record]] = {}
    for root in roots:
        if not root_is_online(root, store):
            log.warning("root %s is offline (missing or not mounted); its index is kept", root)
            plan.offline_roots.append(root)
            continue
        for listing in walk(root, excluder):
            _classify_folder(listing, store, stages, plan, candidates, vanished, live_by_hash)
            if on_progress:
                on_progress("scan", len(candidates))
    _hash_candidates(candidates, plan, hash_workers)
    for item in candidates:
        if item.hash is None:
            continue
        if _take_moved(item, vanished, plan) or _take_copy(item, live_by_hash, plan):
            continue
        plan.work.append(item)
    _remove_vanished(vanished, plan)
    return plan


def _classify_folder(
    listing: FolderListing,
    store: Store,
    stages: list[Stage],
    plan: Plan,
    candidates: list[WorkItem],
    vanished: dict[str, list[_Vanished]],
    live_by_hash: dict[str, tuple[FolderStore, str, Record]],
) -> None:
    folder = store.folder(listing.folder)
    records = folder.records() if folder.exists() else {}
    if records or listing.files:
        plan.folders.append(folder)
    ready = [s for s in stages if s.is_ready()]
    for name, st in listing.files.items():
        record = records.get(name)
        if record is not None and _same_stat(record, st):
            live_by_hash.setdefault(str(record["hash"]), (folder, name, record))
            if pending(ready, record):
                plan.work.append(
                    WorkItem(folder, name, st.st_size, st.st_mtime_ns, record["hash"], record, "stale"))
            else:
                plan.unchanged += 1
            continue
        if not stat.S_ISREG(st.st_mode):
            continue
        candidates.append(
            WorkItem(folder, name, st.st_size, st.st_mtime_ns, None, record,
                     "changed" if record is not None else "new"))
    for name, record in records.items():
        if name not in listing.files:
            vanished.setdefault(str(record.get("hash")), []).append(_Vanished(folder, name, record))


def _same_stat(record: Record, st: os.stat_result) -> bool:
    return record.get("size") == st.st_size and record.get("mtime_ns") == st.st_mtime_ns


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
        _rewrite_identity(item.folder, item.record, item.name, item)  # touched, not changed
        plan.unchanged += 1
        return True
    sources = vanished.get(item.hash)
    if not sources:
        return False
    source = sources.pop()
    record = dict(source.record)
    _copy_assets(source.folder, item.folder, record)
    _rewrite_identity(item.folder, record, item.name, item)
    same_place = source.folder.data_dir == item.folder.data_dir
    source.folder.remove(source.name, live_hashes={item.hash} if same_place else None)
    plan.moved += 1
    return True


def _take_copy(item: WorkItem,
               live_by_hash: dict[str, tuple[FolderStore, str, Record]], plan: Plan) -> bool:
    """An exact copy of a file already indexed reuses its results instead of recomputing."""
    assert item.hash is not None
    found = live_by_hash.get(item.hash)
    if found is None or found[2].get("status") == "failed":
        return False
    source_folder, _, source_record = found
    record = dict(source_record)
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
            except OSError:
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
        live = {str(r.get("hash")) for n, r in folder.records().items() if n not in gone}
        for entry in entries:
            folder.remove(entry.name, live_hashes=live)
            plan.removed += 1


def tier_of(stages: list[Stage], record: Record) -> Tier | None:
    """The most urgent tier with pending work on ``record``."""
    tiers = [s.tier for s in pending([s for s in stages if s.is_ready()], record)]
    return min(tiers) if tiers else None

"""The daemon's work loop: change notices in, reconciled and prioritised work out.

The watcher reports settled changes (a file complete, a folder moved, a root to rescan).
They are collected as *scopes* (a folder, or a tree) and reconciled together a batch at a
time, so a move between two folders is recognised as a move and a burst of a thousand
files costs one reconcile, not a thousand.  Cheap work always goes first; background
and model work is done in small batches between checks for new cheap work, so a photo
dropped into a folder is findable by its metadata within a second or two even while a
large import is being embedded.

The library view is told about every record written or removed.  One kind of change
leaves no trace in a reconcile's plan, so it is settled here: a folder renamed, moved
or deleted in place takes its ``.scanpix/`` along (its records are neither written nor
removed, they simply are elsewhere now).

Files nothing names any more (a changed photo's old thumbnails, the temporary file of a
write that a crash cut short) are swept folder by folder when the cheap loop has nothing
else to do and the slow loop is between batches, since a sweep running beside a writer
could take an asset whose record is not written yet.  A folder found clean before and
unchanged since is skipped (see :class:`scanpixd.upkeep.Sweeper`): the rescan at each start
queues them all.

The library-wide passes (time inference) are due a few seconds after the cheap work of
the last change is done, so they see every file it indexed.  A reconcile that finds
nothing to do (the start's, above all) asks whether they are due anyway: a stop or a
crash before they ran leaves records they never saw, and no change brings them back.
They write records, so the status counts them as work: queued while due, busy while they
run.  Idle means nothing will be written until the next change.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from scanpixd.indexer import Indexer, Summary
from scanpixd.notify import lower_thread_priority
from scanpixd.pipeline import Tier
from scanpixd.scan import Plan, Scope, reconcile_scopes
from scanpixd.store import FolderStore
from scanpixd.upkeep import Sweeper

log = logging.getLogger(__name__)

Key = tuple[FolderStore, str]
ViewFn = Callable[[Path], dict[Path, list[str]]]  # folder -> names the view holds, under a path
LATER_BATCH = 16
SWEEP_SLICE = 0.2  # seconds of sweeping between looks for new changes


@dataclass
class Counters:
    """Progress the API's status route reports."""

    indexed: int = 0
    failed: int = 0
    moved: int = 0
    removed: int = 0
    updated: int = 0
    reconciles: int = 0
    last_error: str | None = None
    started: float = field(default_factory=time.time)


class Scheduler:
    """Implements the watcher's change sink and runs the work on one thread."""

    def __init__(self, indexer: Indexer, roots: list[Path],
                 on_written: Callable[[list[Key]], None] | None = None,
                 on_deleted: Callable[[list[Key]], None] | None = None,
                 view: ViewFn | None = None,
                 upkeep: Callable[[], None] | None = None, upkeep_interval: float = 5.0,
                 upkeep_due: Callable[[], bool] | None = None):
        self.indexer = indexer
        self.roots = list(roots)
        self.on_written = on_written or (lambda keys: None)
        self.on_deleted = on_deleted or (lambda keys: None)
        self.view = view  # what the library view holds, to follow folders that moved as a whole
        self.counters = Counters()
        self.queue_size = max(1, indexer.settings.daemon.queue_size)
        self.upkeep = upkeep or (lambda: None)
        self.upkeep_interval = upkeep_interval  # seconds from the last cheap work to the passes
        self.upkeep_due = upkeep_due or (lambda: False)  # whether they are due with no change
        self._upkeep_due: float | None = None  # monotonic time the library passes are due
        self.unavailable: dict[str, str] = {}  # stage -> why its model cannot run
        self.offline: dict[Path, str] = {}  # root -> why the watcher reported it offline
        self._lock = threading.Lock()
        self._wake = threading.Event()
        self._later_wake = threading.Event()
        self._active = 0
        self._scopes: dict[tuple[Path, bool], set[Path] | None] = {}
        self._later: deque[Key] = deque()
        self._later_set: set[tuple[Path, str]] = set()
        self._sweep: dict[Path, FolderStore] = {}  # folders that may hold orphaned files
        self._folders: dict[Path, FolderStore] = {}  # every folder of the roots, as last reconciled
        self._writing = threading.Lock()  # held by the slow loop while it writes

    # -- the change sink (called from the watcher's thread: only record and wake) -----------
    def file_ready(self, path: Path) -> None:
        self._add(path.parent, recursive=False, ready=path)

    def file_removed(self, path: Path) -> None:
        self._add(path.parent, recursive=False, ready=None, trust=False)

    def file_moved(self, src: Path, dst: Path) -> None:
        self._add(src.parent, recursive=False, ready=None, trust=False)
        self._add(dst.parent, recursive=False, ready=dst)

    def dir_ready(self, path: Path) -> None:
        self._add(path, recursive=True, ready=None)

    def dir_moved(self, src: Path, dst: Path) -> None:
        self._add(src, recursive=True, ready=None, trust=False)
        self._add(dst, recursive=True, ready=None)

    def dir_removed(self, path: Path) -> None:
        self._add(path, recursive=True, ready=None, trust=False)

    def rescan(self, root: Path, reason: str = "") -> None:
        if reason:
            log.warning("rescanning %s: %s", root, reason)
        with self._lock:
            self.offline.pop(root, None)
        self._add(root, recursive=True, ready=None)

    def root_offline(self, root: Path, reason: str) -> None:
        """A root went missing (unmounted): nothing is purged; it is rescanned when back."""
        log.warning("root %s is offline: %s; its index is kept", root, reason)
        with self._lock:
            self.offline[root] = reason
            self._scopes = {k: v for k, v in self._scopes.items() if not _under(k[0], root)}

    def set_roots(self, roots: list[Path]) -> None:
        with self._lock:
            self.roots = list(roots)
            self._folders = {p: f for p, f in self._folders.items()
                             if any(_under(p, root) for root in self.roots)}
        for root in roots:
            self.rescan(root)

    def _add(self, path: Path, recursive: bool, ready: Path | None, trust: bool = True) -> None:
        """Note a scope; ``ready`` None with ``trust`` means every file in it is complete."""
        key = (path, recursive)
        with self._lock:
            root = self._root_of_locked(path)
            if root is not None and key != (root, True) and self._scopes.get((root, True), ()) is None:
                self._wake.set()
                return  # a rescan of the whole root is already due
            current = self._scopes.get(key, set())
            if current is None:
                pass  # already trusting the whole scope
            elif ready is None and trust:
                self._scopes[key] = None
            else:
                if ready is not None:
                    current.add(ready)
                self._scopes[key] = current
            if len(self._scopes) + sum(len(r) for r in self._scopes.values() if r) > self.queue_size:
                self._collapse_to_roots()
        self._wake.set()

    def _collapse_to_roots(self) -> None:
        """Too many pending changes: replace them by a rescan of their roots (lock held).

        The queue stays bounded however large an import is; a rescan finds the same work.
        """
        roots = {self._root_of_locked(path) for path, _ in self._scopes}
        log.warning("over %d pending changes; rescanning %d roots instead", self.queue_size, len(roots))
        self._scopes = {(root, True): None for root in roots if root is not None}

    # -- the work loop ----------------------------------------------------------------------
    def pending(self) -> dict[str, int]:
        with self._lock:
            return {"scopes": len(self._scopes), "later": len(self._later), "sweep": len(self._sweep),
                    "upkeep": int(self._upkeep_due is not None)}

    def idle(self) -> bool:
        """No work queued or running (tests and benchmarks wait for this)."""
        with self._lock:
            return not self._scopes and not self._later and not self._sweep and self._active == 0 \
                and self._upkeep_due is None

    def run(self, stop: threading.Event) -> None:
        """The cheap loop: reconcile what changed and run the cheap tier, at once."""
        self._loop(stop, self._wake, self._reconcile_pending)

    def run_later(self, stop: threading.Event) -> None:
        """The slow loop, on its own low-priority thread: previews, faces, CLIP, then the
        library-wide passes (time inference) once changes have settled."""
        lower_thread_priority()
        self._loop(stop, self._later_wake, self._later_step)

    def _later_step(self) -> bool:
        if self._later_batch():
            return True
        if self._take_upkeep():
            try:
                with self._writing:
                    self.upkeep()
            finally:
                with self._lock:
                    self._active -= 1
        return False  # the loop looks again within a second, so a due pass is not missed

    def _take_upkeep(self) -> bool:
        """Whether the library-wide passes are due now; if so they count as running work."""
        with self._lock:
            due = self._upkeep_due
            if due is None or time.monotonic() < due:
                return False
            self._upkeep_due = None
            self._active += 1
            return True

    def _upkeep_later(self) -> None:
        with self._lock:
            self._upkeep_due = time.monotonic() + self.upkeep_interval

    def _loop(self, stop: threading.Event, wake: threading.Event, step: Callable[[], bool]) -> None:
        while not stop.is_set():
            wake.wait(timeout=1.0)
            if stop.is_set():
                return
            wake.clear()
            try:
                while not stop.is_set() and step():
                    pass
            except Exception as exc:  # keep serving; the next change or rescan retries
                log.exception("work loop error")
                self.counters.last_error = str(exc)
                wake.set()
                stop.wait(1.0)

    def _reconcile_pending(self) -> bool:
        with self._lock:
            scopes, self._scopes = self._scopes, {}
            if scopes:
                self._active += 1
        if not scopes:
            return self._sweep_some()
        try:
            self._reconcile(scopes)
        finally:
            with self._lock:
                self._active -= 1
        return True

    def _reconcile(self, scopes: dict[tuple[Path, bool], set[Path] | None]) -> None:
        built = [s for s in (self._scope(p, r, ready) for (p, r), ready in scopes.items()) if s]
        plan = reconcile_scopes(built, self.indexer.settings, self.indexer.store,
                                self.indexer.stages, hash_workers=self.indexer.jobs)
        self.counters.reconciles += 1
        held = self._held(built, plan)
        if plan.deleted:
            self.on_deleted(plan.deleted)
        if plan.written:
            self.on_written(plan.written)
        self._follow_folders(held, plan)
        self._note_sweep(built, plan)
        summary = Summary()
        keys = [(item.folder, item.name) for item in plan.work]
        self._note_folders(built, plan)
        changed = bool(plan.work or plan.written or plan.deleted)
        try:
            self.indexer.run_cheap(plan.work, summary)
            self.on_written(keys)
        finally:
            if changed:
                self._upkeep_later()  # after the cheap work: the passes must see what it indexed
        if not changed:
            self._upkeep_if_due()
        self._queue_later(keys)
        self.counters.indexed += summary.indexed
        self.counters.failed += summary.failed + len(plan.unreadable)
        self.counters.moved += plan.moved
        self.counters.removed += plan.removed

    def known_folders(self) -> list[FolderStore]:
        """Every folder of the roots with files or records, as the reconciles last found them
        (what a rescan of the roots would list: the time pass reads them all)."""
        with self._lock:
            return list(self._folders.values())

    def _note_folders(self, scopes: list[Scope], plan: Plan) -> None:
        """Folders the scopes no longer hold are dropped, those they listed are kept.

        An offline root's scopes list nothing: its folders stay, as its records do.
        """
        found = {folder.folder: folder for folder in plan.folders}
        online = [s for s in scopes if s.root not in plan.offline_roots]
        trees = {s.path for s in online if s.recursive}
        flat = {s.path for s in online if not s.recursive}
        with self._lock:
            gone = {path for path in flat if path not in found}
            if trees:  # a walk of a whole tree: compared folder by folder
                gone.update(path for path in self._folders if path not in found
                            and (path in trees or not trees.isdisjoint(path.parents)))
            for path in gone:
                self._folders.pop(path, None)
            self._folders.update(found)

    def _upkeep_if_due(self) -> None:
        """Nothing changed: the passes are due only if what they read changed since they
        last ran (they never ran for it, or were cut short)."""
        with self._lock:
            if self._upkeep_due is not None:
                return
        try:
            due = self.upkeep_due()
        except Exception:  # running them is the safe answer (they report their own errors)
            log.exception("cannot tell whether the library-wide passes are due")
            due = True
        if due:
            log.info("the library-wide passes are due: what they read changed since they last ran")
            self._upkeep_later()

    def _held(self, scopes: list[Scope], plan: Plan) -> dict[Path, dict[Path, list[str]]]:
        """Per tree scope (folder events, rescans), what the view held below it before."""
        if self.view is None:
            return {}
        return {s.path: self.view(s.path) for s in scopes
                if s.recursive and s.root not in plan.offline_roots}

    def _follow_folders(self, held: dict[Path, dict[Path, list[str]]], plan: Plan) -> None:
        """Tell the view about folders that arrived or left with their ``.scanpix/``.

        Compared by folder, so folders that stayed where they were cost no reads.
        """
        seen = {f.folder: f for f in plan.folders}
        for top, folders in held.items():
            left = [(self.indexer.store.folder(folder), name)
                    for folder, names in folders.items() if folder not in seen for name in names]
            if left:
                self.on_deleted(left)
            for path, folder in seen.items():
                if path not in folders and _under(path, top):
                    arrived = [(folder, name) for name in folder.records()]
                    if arrived:
                        self.on_written(arrived)

    def _note_sweep(self, scopes: list[Scope], plan: Plan) -> None:
        """Folders to sweep: every folder of a whole-root scan (crash leftovers), and those
        where a file's content changed (its old thumbnails are nobody's now)."""
        if any(s.path == s.root for s in scopes):
            folders = list(plan.folders)
        else:
            folders = [item.folder for item in plan.work if item.reason != "new"]
        with self._lock:
            for folder in folders:
                self._sweep[folder.folder] = folder

    def _sweep_some(self) -> bool:
        """Sweep folders for a short slice, on the cheap thread while the slow loop waits."""
        with self._lock:
            if not self._sweep:
                return False
        if not self._writing.acquire(blocking=False):
            return False  # the slow loop is writing; the loop looks again within a second
        with self._lock:
            self._active += 1
            roots = list(self.roots)
        try:
            sweeper = Sweeper(self.indexer.settings.cache_dir, roots)
            deadline = time.monotonic() + SWEEP_SLICE
            while time.monotonic() < deadline:
                with self._lock:
                    if not self._sweep or self._scopes:
                        break
                    _, folder = self._sweep.popitem()
                if folder.exists():
                    sweeper.sweep(folder)
            sweeper.save()
        finally:
            self._writing.release()
            with self._lock:
                self._active -= 1
        return True

    def _scope(self, path: Path, recursive: bool, ready: set[Path] | None) -> Scope | None:
        root = self._root_of(path)
        if root is None:
            return None
        return Scope(root, path, recursive, ready)

    def _root_of(self, path: Path) -> Path | None:
        with self._lock:
            return self._root_of_locked(path)

    def _root_of_locked(self, path: Path) -> Path | None:
        for root in sorted(self.roots, key=lambda r: len(str(r)), reverse=True):
            if path == root or root in path.parents:
                return root
        return None

    def _queue_later(self, keys: list[Key]) -> None:
        with self._lock:
            for folder, name in keys:
                marker = (folder.folder, name)
                if marker not in self._later_set:
                    self._later_set.add(marker)
                    self._later.append((folder, name))
        self._later_wake.set()

    def _later_batch(self) -> bool:
        with self._lock:
            batch = [self._later.popleft() for _ in range(min(LATER_BATCH, len(self._later)))]
            for folder, name in batch:
                self._later_set.discard((folder.folder, name))
            if not batch:
                return False
            self._active += 1
        try:
            summary = Summary()
            with self._writing:
                for tier in (Tier.BACKGROUND, Tier.MODEL):
                    self.indexer.run_later(batch, tier, summary)
                self.on_written(batch)
            self.unavailable.update(summary.unavailable)
            self.counters.updated += len(batch)
        finally:
            with self._lock:
                self._active -= 1
        return True

    def status(self) -> dict[str, Any]:
        c = self.counters
        return {
            "queue": self.pending(), "busy": self._active > 0, "unavailable": self.unavailable,
            "indexed": c.indexed, "failed": c.failed, "moved": c.moved, "removed": c.removed,
            "updated": c.updated, "reconciles": c.reconciles, "last_error": c.last_error,
            "offline": {str(r): why for r, why in self.offline.items()},
        }


def _under(path: Path, root: Path) -> bool:
    return path == root or root in path.parents

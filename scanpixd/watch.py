"""Live watching of the library roots: raw watchdog events become settled work items.

watchdog's handlers run on its own threads, so they only enqueue the raw event.  One
thread ("scanpix-watch") owns everything else and is the only caller of the sink:

- a file is handed over once it is complete: closed after writing (``IN_CLOSE_WRITE``),
  renamed or moved into place, or, when no writer was seen (polling, hard links, a folder
  that filled up before its watch existed), unchanged in size and mtime across the debounce
  interval.  A file still open for writing waits for its close (or ``write_timeout`` of
  silence), so a slow copy is delivered once, never half-written;
- moves keep their results (``file_moved``/``dir_moved``); moves out of the roots are
  removals, moves in from outside are ``file_ready``/``dir_ready``; removals are debounced
  so ``rm -r`` of a folder becomes one ``dir_removed``;
- excluded paths (``.scanpix/`` above all: our own writes) are not even watched;
- a lost event stream is never silent: an inotify queue overflow becomes a ``rescan``, an
  exhausted watch limit moves the root to polling plus a ``rescan``, with a warning;
- a root that disappears (unmounted, deleted) is reported offline and its pending removals
  are dropped, never turned into a purge; when it comes back it is rescanned.
"""

from __future__ import annotations

import contextlib
import errno
import heapq
import itertools
import logging
import os
import queue
import stat
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from watchdog.events import (
    DirCreatedEvent,
    DirDeletedEvent,
    DirMovedEvent,
    FileAttribEvent,
    FileClosedEvent,
    FileCreatedEvent,
    FileDeletedEvent,
    FileModifiedEvent,
    FileMovedEvent,
    FileSystemEvent,
    FileSystemEventHandler,
)
from watchdog.observers.api import BaseObserver
from watchdog.observers.polling import PollingObserverVFS

from scanpixd.config import Settings, resolve_path
from scanpixd.excludes import Excluder

try:  # inotify exists on Linux only; elsewhere every root is polled
    from watchdog.observers.inotify import InotifyFullEmitter, InotifyObserver
    from watchdog.observers.inotify_c import InotifyFD
except (ImportError, OSError):  # pragma: no cover - non-Linux
    InotifyFD = None  # type: ignore[assignment,misc]

__all__ = ["ChangeSink", "Watcher", "NETWORK_FILESYSTEMS"]

log = logging.getLogger(__name__)

NETWORK_FILESYSTEMS = frozenset(
    {
        "nfs", "nfs4", "cifs", "smb3", "smbfs", "ncpfs", "afs", "ceph", "glusterfs", "9p",
        "lustre", "gpfs", "davfs", "fuse.sshfs", "fuse.rclone", "fuse.s3fs", "fuse.glusterfs",
    }
)  # inotify sees only local changes on these: they are polled

_EVENTS: list[type[FileSystemEvent]] = [
    FileCreatedEvent, FileModifiedEvent, FileAttribEvent, FileClosedEvent, FileDeletedEvent,
    FileMovedEvent, DirCreatedEvent, DirDeletedEvent, DirMovedEvent,
]
_HEALTH_INTERVAL = 2.0
_MIN_TICK = 0.02
_RESCAN_LIMIT = "inotify watch limit reached; watching by polling"


class ChangeSink(Protocol):
    """Receives settled work from the :class:`Watcher`, always on the watcher's one thread.

    Every method must return quickly (put the item on the indexer's queue) and be
    idempotent: a path may be reported again when the filesystem is ambiguous.
    """

    def file_ready(self, path: Path) -> None:
        """A file was created or changed and is complete: index it."""

    def file_removed(self, path: Path) -> None:
        """A file is gone: drop its record and thumbnails."""

    def file_moved(self, src: Path, dst: Path) -> None:
        """A file was renamed or moved within the roots: move its record (unknown src: index dst)."""

    def dir_ready(self, path: Path) -> None:
        """A folder arrived from outside the roots (or from an excluded name): scan it."""

    def dir_moved(self, src: Path, dst: Path) -> None:
        """A folder was renamed or moved within the roots: its files keep their results."""

    def dir_removed(self, path: Path) -> None:
        """A folder and everything below it is gone."""

    def rescan(self, root: Path, reason: str) -> None:
        """Events under ``root`` may have been lost: reconcile the whole root."""

    def root_offline(self, root: Path, reason: str) -> None:
        """``root`` is missing or unmounted: keep its index, report it offline."""


# --------------------------------------------------------------------------- roots


@dataclass(eq=False)
class _Root:
    path: Path  # as configured; every reported path lies under it
    real: Path  # resolved; what the observers watch
    poll_reason: str = ""  # why this root is polled ("" = inotify)
    mode: str = "stopped"  # "inotify" | "polling" | "offline" | "stopped"
    reason: str = ""
    warnings: list[str] = field(default_factory=list)
    observer: BaseObserver | None = None
    was_mount: bool = False
    active: bool = True
    starting: bool = False
    limit_hit: bool = False
    ready: threading.Event = field(default_factory=threading.Event)

    def public(self, raw: str | bytes) -> Path | None:
        """The configured-namespace path of a watched path, or None when outside the root."""
        rel = self.rel_raw(raw)
        return None if rel is None else (self.path / rel if rel else self.path)

    def rel_raw(self, raw: str | bytes) -> str | None:
        """A watched path relative to the root ("" for the root), or None when outside it."""
        text = os.fsdecode(raw)
        real = str(self.real)
        if text == real:
            return ""
        prefix = real if real.endswith("/") else real + "/"
        return text[len(prefix):] if text.startswith(prefix) else None

    def rel(self, path: Path) -> str:
        return "" if path == self.path else path.relative_to(self.path).as_posix()

    def online(self) -> tuple[bool, str]:
        try:
            if not self.real.is_dir():
                return False, "the root folder is missing"
        except OSError as exc:
            return False, f"the root folder cannot be read: {exc.strerror}"
        if self.was_mount and not os.path.ismount(self.real):
            return False, "the root's filesystem is not mounted"
        fstab = _unmounted_fstab_mount(self.real)
        if fstab:
            return False, f"{fstab} is listed in /etc/fstab but not mounted"
        return True, ""


class _Enqueue(FileSystemEventHandler):
    """watchdog handler: runs on watchdog's thread, so it only enqueues."""

    def __init__(self, root: _Root, q: queue.SimpleQueue[tuple[Any, ...]]):
        self._root = root
        self._queue = q

    def dispatch(self, event: FileSystemEvent) -> None:
        self._queue.put(("event", self._root, event))


class _Skipped(OSError):
    """Raised to watchdog for an excluded folder: it treats it like an unreadable one."""


if InotifyFD is not None:

    class _GuardedFD(InotifyFD):
        """One root's inotify instance: skips excluded folders, reports limits and overflows."""

        def __init__(self, root: _Root, excluder: Excluder, report: Callable[..., None]):
            super().__init__()
            self._root = root
            self._excluder = excluder
            self._report = report

        def add_callback(self, path: bytes, mask: Any, callback: Any, id_: Any) -> Any:
            rel = self._root.rel_raw(path)
            if rel and self._excluder.excluded(rel, is_dir=True):
                raise _Skipped(errno.EPERM, "excluded", os.fsdecode(path))
            try:
                return super().add_callback(path, mask, callback, id_)
            except OSError as exc:
                if exc.errno in (errno.ENOSPC, errno.EMFILE, errno.ENOMEM):
                    self._root.limit_hit = True
                    self._report("limit", self._root, f"{os.fsdecode(path)}: {exc.strerror}")
                raise

        def handle_event(self, event: Any) -> None:
            if event.is_queue_overflow:
                self._report("overflow", self._root)
            super().handle_event(event)

    class _InotifyObserver(InotifyObserver):
        """watchdog's inotify observer on our guarded instance, reporting unpaired moves."""

        def __init__(self, fd: _GuardedFD):
            self._inotify_fd = fd
            fd.start()
            BaseObserver.__init__(self, InotifyFullEmitter, timeout=1.0, inotify_fd=fd)


def _filtered_scandir(root: _Root, excluder: Excluder) -> Callable[[str | None], Iterator[Any]]:
    """``os.scandir`` for the polling snapshot that leaves excluded entries out."""

    def listdir(path: str | None) -> Iterator[os.DirEntry[str]]:
        parent_rel = root.rel_raw(path or "") or ""
        with os.scandir(path) as entries:
            for entry in entries:
                is_dir = entry.is_dir(follow_symlinks=False)
                if not excluder.excluded_child(parent_rel, entry.name, is_dir=is_dir):
                    yield entry

    return listdir


# --------------------------------------------------------------------------- coalescing


_FILE, _GONE, _DIR_GONE, _DIR_IN = "file", "gone", "dir_gone", "dir_in"
_COMPLETE, _QUIET, _WRITING = "complete", "quiet", "writing"
Item = tuple[str, tuple[Any, ...]]


@dataclass(eq=False)
class _Entry:
    root: _Root
    kind: str
    state: str = _QUIET
    known: bool = True  # the sink may already hold a record for this path
    sig: tuple[int, int, int] | None = None
    seq: int = -1


def _sig(path: Path) -> tuple[int, int, int] | None:
    """(size, mtime, inode) of a regular file; None when it is gone or not a regular file."""
    try:
        st = os.lstat(path)
    except OSError:
        return None
    return (st.st_size, st.st_mtime_ns, st.st_ino) if stat.S_ISREG(st.st_mode) else None


class _Coalescer:
    """Per-path state between raw events and settled items.  Used by one thread only."""

    def __init__(self, excluder: Excluder, debounce: float, write_timeout: float):
        self.excluder = excluder
        self.debounce = max(debounce, _MIN_TICK)
        self.write_timeout = max(write_timeout, self.debounce)
        self.pending: dict[Path, _Entry] = {}
        self._heap: list[tuple[float, int, Path]] = []
        self._seq = itertools.count()
        self._outbox: list[Item] = []
        self._dirs_in = 0

    # ---- scheduling

    def next_due(self) -> float | None:
        return self._heap[0][0] if self._heap or self._outbox else None

    def _put(self, path: Path, entry: _Entry) -> None:
        old = self.pending.get(path)
        if old is not None and old.kind == _DIR_IN:
            self._dirs_in -= 1
        self.pending[path] = entry
        if entry.kind == _DIR_IN:
            self._dirs_in += 1

    def _pop(self, path: Path) -> _Entry | None:
        entry = self.pending.pop(path, None)
        if entry is not None and entry.kind == _DIR_IN:
            self._dirs_in -= 1
        return entry

    def _schedule(self, path: Path, entry: _Entry, now: float, delay: float | None = None) -> None:
        entry.seq = next(self._seq)
        due = now + (self._window(entry) if delay is None else delay)
        heapq.heappush(self._heap, (due, entry.seq, path))

    def _window(self, entry: _Entry) -> float:
        if entry.kind != _FILE or entry.state == _COMPLETE:
            return self.debounce
        if entry.state == _WRITING:
            return self.write_timeout
        return max(self.debounce, 2.0) if entry.root.mode == "polling" else self.debounce

    def emit(self, kind: str, *args: Any) -> None:
        if kind == "rescan" and (kind, args) in self._outbox:
            return
        self._outbox.append((kind, args))

    def forget_root(self, root: _Root) -> None:
        for path in [p for p, e in self.pending.items() if e.root is root]:
            self._pop(path)
        self._outbox = [i for i in self._outbox if not _item_under(i, root.path)]

    # ---- raw events

    def on_event(self, root: _Root, event: FileSystemEvent, now: float) -> None:
        if getattr(event, "is_synthetic", False):
            return  # sub-events of a moved folder: dir_moved / dir_ready cover them
        src = root.public(event.src_path) if event.src_path else None
        if isinstance(event, FileMovedEvent | DirMovedEvent):
            dst = root.public(event.dest_path) if event.dest_path else None
            self._moved(root, src, dst, event.is_directory, now)
            return
        if src is None or src == root.path or self._excluded(root, src, event.is_directory):
            return
        self._touch_dirs_in(src, now)
        if isinstance(event, DirDeletedEvent):
            self._dir_gone(root, src, now)
        elif isinstance(event, DirCreatedEvent):
            self._dir_created(root, src, now)
        elif isinstance(event, FileDeletedEvent):
            self._file_gone(root, src, now)
        else:
            what = {FileCreatedEvent: "created", FileModifiedEvent: "modified",
                    FileClosedEvent: "closed", FileAttribEvent: "attrib"}.get(type(event))
            if what is not None:
                self._file(root, src, what, now)

    def _excluded(self, root: _Root, path: Path, is_dir: bool) -> bool:
        return self.excluder.excluded(root.rel(path), is_dir=is_dir)

    def _ok(self, root: _Root, path: Path | None, is_dir: bool) -> bool:
        return path is not None and path != root.path and not self._excluded(root, path, is_dir)

    def _file(self, root: _Root, path: Path, what: str, now: float) -> None:
        entry = self.pending.get(path)
        if entry is not None and entry.kind == _DIR_GONE:
            self._flush_removed_dir(path)  # a folder was replaced by a file of the same name
            entry = None
        if what == "attrib":
            if entry is not None and entry.kind == _FILE:
                self._schedule(path, entry, now)
            return
        if entry is None or entry.kind != _FILE:
            if what == "created" and self._under_dir_in(path):
                return  # content of a folder that arrived: its dir_ready scan covers it
            entry = _Entry(root, _FILE, known=entry is not None or what != "created")
            if what == "created":
                entry.sig = _sig(path)
            self._put(path, entry)
        if what == "modified":
            if root.mode == "polling":
                entry.state, entry.sig = _QUIET, _sig(path)
            else:
                entry.state = _WRITING
        elif what in ("closed", "arrived"):
            entry.state = _COMPLETE
        self._schedule(path, entry, now)

    def _file_gone(self, root: _Root, path: Path, now: float) -> None:
        entry = self.pending.get(path)
        if entry is not None and entry.kind == _FILE and not entry.known:
            self._pop(path)  # created and deleted before anyone heard of it
            return
        entry = _Entry(root, _GONE)
        self._put(path, entry)
        self._schedule(path, entry, now)

    def _dir_gone(self, root: _Root, path: Path, now: float) -> None:
        self._drop_under(path, include_self=True)
        entry = _Entry(root, _DIR_GONE)
        self._put(path, entry)
        self._schedule(path, entry, now)

    def _dir_created(self, root: _Root, path: Path, now: float) -> None:
        entry = self.pending.get(path)
        if entry is not None and entry.kind == _DIR_GONE:
            self._flush_removed_dir(path)
        elif entry is not None and entry.kind == _DIR_IN:
            return
        # Files written before the new folder's watch existed produce no events: look.
        for file in _walk_files(path, root.rel(path), self.excluder):
            if file not in self.pending:
                new = _Entry(root, _FILE, known=False, sig=_sig(file))
                self._put(file, new)
                self._schedule(file, new, now)

    def _moved(self, root: _Root, src: Path | None, dst: Path | None, is_dir: bool,
               now: float) -> None:
        src_ok, dst_ok = self._ok(root, src, is_dir), self._ok(root, dst, is_dir)
        if src_ok and dst_ok:
            assert src is not None and dst is not None
            self._touch_dirs_in(dst, now)
            (self._dir_moved if is_dir else self._file_moved)(root, src, dst, now)
        elif src_ok:
            assert src is not None
            (self._dir_gone if is_dir else self._file_gone)(root, src, now)
        elif dst_ok:
            assert dst is not None
            self._touch_dirs_in(dst, now)
            if is_dir:
                self._dir_arrived(root, dst, now)
            else:
                self._file(root, dst, "arrived", now)

    def _file_moved(self, root: _Root, src: Path, dst: Path, now: float) -> None:
        replaced = self._pop(dst)
        if replaced is not None and replaced.kind == _DIR_GONE:
            self.emit("dir_removed", dst)
        entry = self._pop(src)
        if entry is None or entry.kind != _FILE:
            self.emit("file_moved", src, dst)
            return
        if entry.known:
            self.emit("file_moved", src, dst)
        entry.root, entry.known = root, True  # dst may have held an older file
        self._put(dst, entry)
        self._schedule(dst, entry, now)

    def _dir_moved(self, root: _Root, src: Path, dst: Path, now: float) -> None:
        replaced = self._pop(dst)
        if replaced is not None and replaced.kind == _DIR_GONE:
            self.emit("dir_removed", dst)
        moving = self.pending.get(src)
        if moving is None or moving.kind != _DIR_IN:
            self.emit("dir_moved", src, dst)
        for old in self._paths_under(src, include_self=True):
            entry = self._pop(old)
            assert entry is not None
            new = dst / old.relative_to(src)
            entry.root = root
            self._put(new, entry)
            self._schedule(new, entry, now)

    def _dir_arrived(self, root: _Root, path: Path, now: float) -> None:
        entry = self.pending.get(path)
        if entry is not None and entry.kind == _DIR_GONE:
            self._flush_removed_dir(path)
        self._drop_under(path, include_self=True)
        entry = _Entry(root, _DIR_IN)
        self._put(path, entry)
        self._schedule(path, entry, now)

    def _flush_removed_dir(self, path: Path) -> None:
        self._pop(path)
        self.emit("dir_removed", path)

    def _paths_under(self, path: Path, *, include_self: bool) -> list[Path]:
        prefix = str(path).rstrip("/") + "/"
        return [p for p in self.pending if (include_self and p == path) or str(p).startswith(prefix)]

    def _drop_under(self, path: Path, *, include_self: bool) -> None:
        for p in self._paths_under(path, include_self=include_self):
            self._pop(p)

    def _under_dir_in(self, path: Path) -> bool:
        if not self._dirs_in:
            return False
        return any(
            (e := self.pending.get(parent)) is not None and e.kind == _DIR_IN
            for parent in path.parents
        )

    def _touch_dirs_in(self, path: Path, now: float) -> None:
        """Events inside a folder that arrived postpone its scan until it is quiet."""
        if not self._dirs_in:
            return
        for parent in path.parents:
            entry = self.pending.get(parent)
            if entry is not None and entry.kind == _DIR_IN:
                self._schedule(parent, entry, now)

    # ---- settling

    def due(self, now: float, is_online: Callable[[_Root], bool]) -> list[Item]:
        """Items ready for the sink: immediate ones first, then settled ones in due order."""
        seen: dict[int, bool] = {}

        def online(root: _Root) -> bool:
            if id(root) not in seen:
                seen[id(root)] = is_online(root)
            return seen[id(root)]

        out, self._outbox = self._outbox, []
        while self._heap and self._heap[0][0] <= now:
            _, seq, path = heapq.heappop(self._heap)
            entry = self.pending.get(path)
            if entry is None or entry.seq != seq:
                continue
            item = self._settle(path, entry, now, online)
            if item is not None:
                out.append(item)
        return out

    def _settle(self, path: Path, entry: _Entry, now: float,
                online: Callable[[_Root], bool]) -> Item | None:
        if entry.kind in (_GONE, _DIR_GONE):
            self._pop(path)
            if not online(entry.root):  # an unmount looks like deletions: never purge on it
                return None
            if entry.kind == _DIR_GONE:
                return ("dir_removed", (path,))
            return ("file_removed", (path,)) if entry.known else None
        if entry.kind == _DIR_IN:
            self._pop(path)
            for p in self._paths_under(path, include_self=False):
                if self.pending[p].kind == _FILE and self.pending[p].state != _WRITING:
                    self._pop(p)
            return ("dir_ready", (path,)) if path.is_dir() else None
        sig = _sig(path)
        if sig is None:
            self._pop(path)  # gone again, or not a regular file (symlink, fifo)
            return None
        if entry.state == _COMPLETE or sig == entry.sig:
            self._pop(path)
            return ("file_ready", (path,))
        entry.sig = sig  # still changing: look again after another quiet interval
        self._schedule(path, entry, now, self.debounce)
        return None


def _item_under(item: Item, root: Path) -> bool:
    return any(isinstance(a, Path) and (a == root or root in a.parents) for a in item[1])


def _walk_files(top: Path, top_rel: str, excluder: Excluder) -> Iterator[Path]:
    stack = [(top, top_rel)]
    while stack:
        folder, rel = stack.pop()
        try:
            with os.scandir(folder) as entries:
                items = list(entries)
        except OSError:
            continue
        for entry in items:
            try:
                is_dir = entry.is_dir(follow_symlinks=False)
                is_file = not is_dir and entry.is_file(follow_symlinks=False)
            except OSError:
                continue
            if excluder.excluded_child(rel, entry.name, is_dir=is_dir):
                continue
            if is_dir:
                stack.append((Path(entry.path), f"{rel}/{entry.name}" if rel else entry.name))
            elif is_file:
                yield Path(entry.path)


# --------------------------------------------------------------------------- the watcher


class Watcher:
    """Watches the configured roots and hands settled work to a :class:`ChangeSink`.

    Call :meth:`start` *before* the startup reconcile so nothing changed during the scan
    is missed (the sink is idempotent, so overlap is harmless).
    """

    def __init__(self, settings: Settings, sink: ChangeSink, *,
                 write_timeout: float | None = None, health_interval: float = _HEALTH_INTERVAL):
        self._sink = sink
        self._health_interval = health_interval
        self._queue: queue.SimpleQueue[tuple[Any, ...]] = queue.SimpleQueue()
        self._lock = threading.RLock()
        self._roots: dict[Path, _Root] = {}
        self._running = False
        self._threads: list[threading.Thread] = []
        self._stopped = threading.Event()
        self._apply_fields(settings)
        d = settings.daemon
        timeout = write_timeout if write_timeout is not None else max(60.0, 20 * d.debounce)
        self._coalescer = _Coalescer(self._excluder, d.debounce, timeout)

    def _apply_fields(self, settings: Settings) -> None:
        self._settings = settings
        self._excluder = Excluder.from_settings(settings)
        self._poll_interval = max(settings.daemon.poll_interval, 0.1)
        self._poll_roots = {resolve_path(Path(p)) for p in settings.daemon.poll_roots}

    # ---- lifecycle

    def start(self) -> None:
        """Start watching ``settings.roots``; returns once inotify roots are watched."""
        with self._lock:
            if self._running:
                return
            self._running = True
            self._stopped.clear()
            self._threads = [
                threading.Thread(target=self._run, name="scanpix-watch", daemon=True),
                threading.Thread(target=self._health_loop, name="scanpix-watch-health",
                                 daemon=True),
            ]
            for thread in self._threads:
                thread.start()
        self.set_roots(self._settings.roots)

    def stop(self) -> None:
        """Stop watching.  Work still settling is dropped: the next startup reconcile finds it."""
        with self._lock:
            if not self._running:
                return
            self._running = False
            self._stopped.set()
            for root in self._roots.values():
                root.active = False
                self._stop_observer(root)
            self._roots.clear()
        self._queue.put(("stop",))
        for thread in self._threads:
            if thread is not threading.current_thread():
                thread.join(timeout=10)

    def wait_started(self, timeout: float = 60.0) -> bool:
        """Wait until every polled root has its first snapshot (taken in the background)."""
        deadline = time.monotonic() + timeout
        with self._lock:
            roots = list(self._roots.values())
        return all(r.ready.wait(max(deadline - time.monotonic(), 0)) for r in roots)

    def set_roots(self, roots: Iterable[Path]) -> None:
        """Watch exactly ``roots`` (SIGHUP reload): new roots start, dropped roots stop.

        New roots are not rescanned here: the caller reconciles them as it does at startup.
        """
        wanted = _dedupe_roots(Path(r).expanduser() for r in roots)
        with self._lock:
            for path in [p for p in self._roots if p not in wanted]:
                root = self._roots.pop(path)
                root.active = False
                self._stop_observer(root)
                self._queue.put(("forget", root))
            for path in wanted:
                if path not in self._roots and self._running:
                    root = self._roots[path] = _Root(path, resolve_path(path))
                    self._start_root(root)

    def apply_settings(self, settings: Settings) -> None:
        """Take reloaded settings (SIGHUP): roots, excludes, timings and poll roots.

        Roots whose watching must change (poll roots or exclude patterns changed) are
        restarted and rescanned.
        """
        with self._lock:
            old_poll, old_excludes = self._poll_roots, self._excluder.patterns
            self._apply_fields(settings)
            self._queue.put(("settings", self._excluder, settings.daemon.debounce))
            for root in list(self._roots.values()):
                moved = (root.real in old_poll) != (root.real in self._poll_roots)
                if moved or old_excludes != self._excluder.patterns:
                    self._stop_observer(root)
                    self._start_root(root)
                    self._queue.put(("rescan", root, "watch settings changed by reload"))
        self.set_roots(settings.roots)

    def status(self) -> dict[str, Any]:
        """Per root: how it is watched ("inotify", "polling", "offline"), why, and warnings."""
        with self._lock:
            roots = {
                str(r.path): {"mode": r.mode, "reason": r.reason, "warnings": list(r.warnings)}
                for r in self._roots.values()
            }
        return {"roots": roots, "pending": len(self._coalescer.pending)}

    # ---- observers (called with self._lock held)

    def _start_root(self, root: _Root) -> None:
        root.ready.clear()
        online, why = root.online()
        if not online:
            root.mode, root.reason = "offline", why
            root.ready.set()
            self._queue.put(("offline", root, why))
            return
        root.was_mount = os.path.ismount(root.real)
        root.poll_reason = self._poll_reason(root)
        if root.poll_reason:
            self._start_polling(root, root.poll_reason)
        elif not self._start_inotify(root):
            self._start_polling(root, root.reason)

    def _poll_reason(self, root: _Root) -> str:
        if root.real in self._poll_roots:
            return "listed in daemon.poll_roots"
        fstype = _filesystem_type(root.real)
        if fstype in NETWORK_FILESYSTEMS:
            return f"on a network filesystem ({fstype}) where inotify misses remote changes"
        return "" if InotifyFD is not None else "inotify is not available on this system"

    def _start_inotify(self, root: _Root) -> bool:
        root.starting, root.limit_hit = True, False
        observer = None
        try:
            observer = _InotifyObserver(_GuardedFD(root, self._excluder, self._report))
            observer.schedule(_Enqueue(root, self._queue), str(root.real), recursive=True,
                              event_filter=_EVENTS)
            observer.start()  # adds every folder's watch before returning
        except OSError as exc:
            if observer is not None:
                _halt(observer)
            root.reason = f"inotify failed: {exc.strerror or exc}"
            self._warn(root, f"{root.reason}; watching {root.path} by polling instead")
            return False
        finally:
            root.starting = False
        root.observer, root.mode, root.reason = observer, "inotify", ""
        root.ready.set()
        if root.limit_hit:
            self._fall_back(root, "", rescan=False)  # the caller's reconcile covers it
        return True

    def _start_polling(self, root: _Root, reason: str) -> None:
        """Poll ``root``; its first snapshot (slow on a network mount) is taken in the background."""
        observer = PollingObserverVFS(
            os.stat, _filtered_scandir(root, self._excluder), polling_interval=self._poll_interval
        )
        observer.schedule(_Enqueue(root, self._queue), str(root.real), recursive=True,
                          event_filter=_EVENTS)
        root.observer, root.mode, root.reason = observer, "polling", reason
        root.ready.clear()
        log.info("watching %s by polling every %.0f s (%s)", root.path, self._poll_interval, reason)

        def begin() -> None:
            try:
                observer.start()
            except OSError as exc:
                self._queue.put(("health", root, False, f"cannot read the root: {exc.strerror}"))
            finally:
                root.ready.set()
            with self._lock:
                if root.observer is not observer:  # stopped or replaced meanwhile
                    _halt(observer, join=False)

        threading.Thread(target=begin, name="scanpix-poll-start", daemon=True).start()

    def _stop_observer(self, root: _Root) -> None:
        observer, root.observer = root.observer, None
        if observer is not None:
            _halt(observer, join=root.mode != "polling")  # a hung network mount must not hang us

    def _fall_back(self, root: _Root, detail: str, *, rescan: bool) -> None:
        self._stop_observer(root)
        reason = "inotify watch limit reached"
        self._warn(
            root,
            f"{reason} under {root.path}{f' ({detail})' if detail else ''}: "
            f"{_watch_limit()}; watching it by polling every "
            f"{self._poll_interval:.0f} s instead. Raise the limit (for example "
            f"sysctl fs.inotify.max_user_watches=524288) and restart scanpixd to use inotify.",
        )
        self._start_polling(root, reason)
        if rescan:
            self._queue.put(("rescan", root, _RESCAN_LIMIT))

    def _warn(self, root: _Root, message: str) -> None:
        log.warning("%s", message)
        root.warnings.append(message)
        del root.warnings[:-10]

    def _report(self, kind: str, root: _Root, detail: str = "") -> None:
        """Called on watchdog's threads (and during start): only enqueue."""
        self._queue.put((kind, root, detail))

    # ---- the watch thread

    def _run(self) -> None:
        while True:
            due = self._coalescer.next_due()
            timeout = 0.5 if due is None else min(max(due - time.monotonic(), _MIN_TICK), 0.5)
            batch: list[tuple[Any, ...]] = []
            with contextlib.suppress(queue.Empty):
                batch.append(self._queue.get(timeout=timeout))
                while len(batch) < 5000:
                    batch.append(self._queue.get_nowait())
            now = time.monotonic()
            for message in batch:
                if message[0] == "stop":
                    return
                try:
                    self._handle(message, now)
                except Exception:  # one bad event must not stop watching
                    log.exception("watch: cannot handle %r", message)
            for kind, args in self._coalescer.due(now, self._still_online):
                self._deliver(kind, args)

    def _deliver(self, kind: str, args: tuple[Any, ...]) -> None:
        method = getattr(self._sink, kind, None)
        if method is None:  # an older sink without root_offline: the status still says so
            log.debug("watch: the sink has no %s%r", kind, args)
            return
        try:
            method(*args)
        except Exception:
            log.exception("watch: %s%r failed in the sink", kind, args)

    def _handle(self, message: tuple[Any, ...], now: float) -> None:
        kind, coalescer = message[0], self._coalescer
        if kind == "settings":
            coalescer.excluder, coalescer.debounce = message[1], max(message[2], _MIN_TICK)
            return
        root: _Root = message[1]
        if kind == "forget":
            coalescer.forget_root(root)
        elif not root.active:
            return
        elif kind == "event":
            event = message[2]
            if isinstance(event, DirDeletedEvent) and root.public(event.src_path) == root.path:
                self._go_offline(root, "the root folder was deleted or moved away")
            else:
                coalescer.on_event(root, event, now)
        elif kind == "limit":
            with self._lock:
                if root.active and root.mode == "inotify" and not root.starting:
                    self._fall_back(root, message[2], rescan=True)
        elif kind == "overflow" and root.mode == "inotify":
            self._warn(root, f"inotify event queue overflowed under {root.path}; rescanning")
            coalescer.emit("rescan", root.path, "inotify event queue overflowed")
        elif kind == "rescan":
            coalescer.emit("rescan", root.path, message[2])
        elif kind == "offline":
            coalescer.emit("root_offline", root.path, message[2])
        elif kind == "health":
            self._on_health(root, message[2], message[3])

    def _on_health(self, root: _Root, online: bool, why: str) -> None:
        with self._lock:
            if not root.active:
                return
            if not online and root.mode in ("inotify", "polling"):
                self._go_offline(root, why)
            elif online and root.mode == "offline":
                self._start_root(root)
                if root.mode != "offline":
                    log.info("%s is back (%s): rescanning", root.path, root.mode)
                    self._coalescer.emit("rescan", root.path, "root is back online")

    def _go_offline(self, root: _Root, why: str) -> None:
        with self._lock:
            self._stop_observer(root)
            root.mode, root.reason = "offline", why
            self._warn(root, f"{root.path} is offline ({why}); its index is kept")
        self._coalescer.forget_root(root)
        self._coalescer.emit("root_offline", root.path, why)

    def _still_online(self, root: _Root) -> bool:
        online, why = root.online()
        if not online and root.active and root.mode != "offline":
            self._queue.put(("health", root, False, why))
        return online

    def _health_loop(self) -> None:
        """Notices unmounts and returns (its own thread: a stat may hang on a dead mount)."""
        while not self._stopped.wait(self._health_interval):
            with self._lock:
                roots = [r for r in self._roots.values() if r.active]
            for root in roots:
                online, why = root.online()
                if online != (root.mode != "offline"):
                    self._queue.put(("health", root, online, why))


# --------------------------------------------------------------------------- helpers


def _halt(observer: BaseObserver, *, join: bool = True) -> None:
    with contextlib.suppress(Exception):
        observer.stop()  # also closes an inotify observer's instance, started or not
    if join and observer.is_alive():
        observer.join(timeout=10)



def _dedupe_roots(roots: Iterable[Path]) -> list[Path]:
    """Roots in order without duplicates; a root inside another is served by the outer one."""
    chosen: list[Path] = []
    for root in roots:
        real = resolve_path(root)
        outer = next((c for c in chosen if resolve_path(c) == real or resolve_path(c) in real.parents),
                     None)
        if outer is not None:
            if resolve_path(outer) != real:
                log.warning("root %s lies inside root %s: watched as part of it", root, outer)
            continue
        inner = [c for c in chosen if real in resolve_path(c).parents]
        for c in inner:
            log.warning("root %s lies inside root %s: watched as part of it", c, root)
            chosen.remove(c)
        chosen.append(root)
    return chosen


def _read_int(path: str) -> int | None:
    try:
        return int(Path(path).read_text().strip())
    except (OSError, ValueError):
        return None


def _watch_limit() -> str:
    """The inotify watch limit in force, named as the sysctl that sets it."""
    system = _read_int("/proc/sys/fs/inotify/max_user_watches")
    here = _read_int("/proc/sys/user/max_inotify_watches")  # this user namespace's own limit
    if here is not None and (system is None or here < system):
        return f"user.max_inotify_watches={here}"
    return f"fs.inotify.max_user_watches={system if system is not None else '?'}"


def _mounts() -> list[tuple[str, str]]:
    """(mount point, filesystem type) from /proc/self/mountinfo."""
    out: list[tuple[str, str]] = []
    try:
        lines = Path("/proc/self/mountinfo").read_text().splitlines()
    except OSError:
        return out
    for line in lines:
        left, _, right = line.partition(" - ")
        fields = left.split()
        if len(fields) >= 5 and right:
            out.append((_unescape(fields[4]), right.split()[0]))
    return out


def _unescape(text: str) -> str:
    return text.replace("\\040", " ").replace("\\011", "\t").replace("\\012", "\n").replace(
        "\\134", "\\"
    )


def _filesystem_type(path: Path) -> str:
    best, fstype = "", ""
    text = str(path)
    for point, kind in _mounts():
        inside = text == point or text.startswith(point.rstrip("/") + "/")
        if inside and len(point) >= len(best):
            best, fstype = point, kind
    return fstype


def _unmounted_fstab_mount(path: Path) -> str:
    """The /etc/fstab mount point holding ``path`` when it is not mounted now, else ""."""
    try:
        lines = Path("/etc/fstab").read_text().splitlines()
    except OSError:
        return ""
    text = str(path)
    for line in lines:
        fields = line.split()
        if len(fields) < 3 or fields[0].startswith("#") or fields[2] in ("swap", "none"):
            continue
        point = _unescape(fields[1])
        if point in ("/", "none") or not point.startswith("/"):
            continue
        if (text == point or text.startswith(point.rstrip("/") + "/")) and not os.path.ismount(
            point
        ):
            return point
    return ""

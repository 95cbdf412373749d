"""What settling costs on top of raw inotify: latency, burst throughput and start-up.

Run ``python -m benchmarks.bench_watch``.  "A new photo dropped into a watched folder is
findable by metadata within 2 s": the watcher's share of that is the debounce plus its own
overhead.  Each figure is set against plain watchdog (an inotify observer whose handler only
records close-write events) on the same files in the same run:

* ``latency``: one file written, time from its close to ``file_ready``, minus the debounce,
  against the time plain watchdog takes to report the close;
* ``burst``: 5,000 files written at once, time from the last close until every file was
  handed over once, against the time plain watchdog needs to report all 5,000 closes;
* ``start``: watching a tree of 1,000 folders that each hold a ``.scanpix/`` with two
  sub-folders: time and inotify watches used, against plain watchdog watching everything.
"""

from __future__ import annotations

import os
import statistics
import tempfile
import threading
import time
from pathlib import Path

from watchdog.events import FileClosedEvent, FileSystemEvent, FileSystemEventHandler
from watchdog.observers.inotify import InotifyObserver

from scanpixd.config import Settings
from scanpixd.watch import Watcher

DEBOUNCE = 0.2


class _Sink:
    def __init__(self) -> None:
        self.ready: dict[str, float] = {}
        self.count = 0
        self.done = threading.Event()
        self.expect = 0

    def file_ready(self, path: Path) -> None:
        self.ready[str(path)] = time.perf_counter()
        self.count += 1
        if self.count >= self.expect:
            self.done.set()

    def __getattr__(self, name: str):  # the other sink calls are not measured
        return lambda *args: None


class _Closes(FileSystemEventHandler):
    def __init__(self) -> None:
        self.seen: dict[str, float] = {}
        self.done = threading.Event()
        self.expect = 0

    def dispatch(self, event: FileSystemEvent) -> None:
        if isinstance(event, FileClosedEvent):
            self.seen[str(event.src_path)] = time.perf_counter()
            if len(self.seen) >= self.expect:
                self.done.set()


def _settings(root: Path) -> Settings:
    settings = Settings(roots=[root])
    settings.daemon.debounce = DEBOUNCE
    return settings


def _write(path: Path) -> float:
    path.write_bytes(b"x" * 4096)
    return time.perf_counter()


def latency(base: Path, rounds: int = 15) -> tuple[float, float]:
    root = base / "latency"
    root.mkdir()
    sink, plain = _Sink(), _Closes()
    watcher = Watcher(_settings(root), sink)  # type: ignore[arg-type]
    observer = InotifyObserver()
    observer.schedule(plain, str(root), recursive=True)
    observer.start()
    watcher.start()
    ours, theirs = [], []
    for i in range(rounds):
        sink.expect, plain.expect = sink.count + 1, len(plain.seen) + 1
        sink.done.clear()
        plain.done.clear()
        path = root / f"{i}.jpg"
        closed = _write(path)
        sink.done.wait(10)
        plain.done.wait(10)
        ours.append(sink.ready[str(path)] - closed - DEBOUNCE)
        theirs.append(plain.seen[str(path)] - closed)
        time.sleep(0.05)
    watcher.stop()
    observer.stop()
    observer.join()
    return statistics.median(ours), statistics.median(theirs)


def burst(base: Path, count: int = 5000) -> tuple[float, float, int]:
    root = base / "burst"
    root.mkdir()
    sink, plain = _Sink(), _Closes()
    sink.expect = plain.expect = count
    watcher = Watcher(_settings(root), sink)  # type: ignore[arg-type]
    observer = InotifyObserver()
    observer.schedule(plain, str(root), recursive=True)
    observer.start()
    watcher.start()
    last = 0.0
    for i in range(count):
        last = _write(root / f"{i}.jpg")
    sink.done.wait(120)
    plain.done.wait(120)
    ours = max(sink.ready.values()) - last
    theirs = max(plain.seen.values()) - last
    delivered = sink.count
    watcher.stop()
    observer.stop()
    observer.join()
    return ours, theirs, delivered


def _watches() -> int:
    count = 0
    for fd in os.listdir("/proc/self/fd"):
        try:
            if os.readlink(f"/proc/self/fd/{fd}") == "anon_inode:inotify":
                with open(f"/proc/self/fdinfo/{fd}") as info:
                    count += sum(1 for line in info if line.startswith("inotify wd:"))
        except OSError:
            continue
    return count


def start(base: Path, folders: int = 1000) -> tuple[float, int, float, int]:
    root = base / "start"
    for i in range(folders):
        data = root / f"{i:04d}" / ".scanpix"
        (data / "thumbs").mkdir(parents=True)
        (data / "index").mkdir()
    before = _watches()
    began = time.perf_counter()
    watcher = Watcher(_settings(root), _Sink())  # type: ignore[arg-type]
    watcher.start()
    ours, ours_watches = time.perf_counter() - began, _watches() - before
    watcher.stop()
    before = _watches()
    began = time.perf_counter()
    observer = InotifyObserver()
    observer.schedule(_Closes(), str(root), recursive=True)
    observer.start()
    theirs, their_watches = time.perf_counter() - began, _watches() - before
    observer.stop()
    observer.join()
    return ours, ours_watches, theirs, their_watches


def main() -> None:
    with tempfile.TemporaryDirectory() as tmp:
        base = Path(tmp)
        ours, theirs = latency(base)
        print(f"latency   close -> file_ready: {ours * 1000:.1f} ms beyond the {DEBOUNCE:.1f} s "
              f"debounce; plain watchdog close event: {theirs * 1000:.1f} ms "
              f"(overhead {(ours - theirs) * 1000:+.1f} ms)")
        ours, theirs, delivered = burst(base)
        print(f"burst     5000 files: all handed over {ours:.2f} s after the last close "
              f"({delivered} file_ready); plain watchdog saw all closes after {theirs:.2f} s; "
              f"ratio {ours / max(theirs + DEBOUNCE, 1e-9):.2f}x of (plain + debounce)")
        ours, ours_w, theirs, theirs_w = start(base)
        print(f"start     1000 folders with .scanpix/: {ours:.2f} s, {ours_w} watches; plain "
              f"watchdog {theirs:.2f} s, {theirs_w} watches "
              f"(time {ours / max(theirs, 1e-9):.2f}x, watches {ours_w / max(theirs_w, 1):.2f}x)")


if __name__ == "__main__":
    main()

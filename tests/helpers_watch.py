"""Shared pieces for the watcher tests: a recording sink, settings, and a child-process runner.

Run as a script, this module watches the roots given on the command line and prints every
sink call as one JSON line, so tests can stop the watcher process (SIGSTOP) or run it in a
user namespace with a lower inotify limit, which no in-process test can do honestly.
"""

from __future__ import annotations

import json
import logging
import signal
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from scanpixd.config import Settings

Call = tuple[str, tuple[Any, ...]]


class RecordingSink:
    """A ChangeSink that records every call in order; thread-safe."""

    def __init__(self) -> None:
        self.calls: list[Call] = []
        self._cond = threading.Condition()

    def _add(self, kind: str, *args: Any) -> None:
        with self._cond:
            self.calls.append((kind, args))
            self._cond.notify_all()

    def file_ready(self, path: Path) -> None:
        self._add("file_ready", path)

    def file_removed(self, path: Path) -> None:
        self._add("file_removed", path)

    def file_moved(self, src: Path, dst: Path) -> None:
        self._add("file_moved", src, dst)

    def dir_ready(self, path: Path) -> None:
        self._add("dir_ready", path)

    def dir_moved(self, src: Path, dst: Path) -> None:
        self._add("dir_moved", src, dst)

    def dir_removed(self, path: Path) -> None:
        self._add("dir_removed", path)

    def rescan(self, root: Path, reason: str) -> None:
        self._add("rescan", root, reason)

    def root_offline(self, root: Path, reason: str) -> None:
        self._add("root_offline", root, reason)

    def of(self, kind: str) -> list[tuple[Any, ...]]:
        with self._cond:
            return [args for k, args in self.calls if k == kind]

    def wait_for(self, predicate: Callable[[list[Call]], bool], timeout: float = 10.0) -> bool:
        deadline = time.monotonic() + timeout
        with self._cond:
            while not predicate(self.calls):
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                self._cond.wait(left)
            return True

    def settle(self, quiet: float, timeout: float = 15.0) -> None:
        """Wait until no call arrived for ``quiet`` seconds."""
        deadline = time.monotonic() + timeout
        seen = -1
        while time.monotonic() < deadline:
            with self._cond:
                count = len(self.calls)
            if count == seen:
                return
            seen = count
            time.sleep(quiet)


def watch_settings(*roots: Path, debounce: float = 0.2, poll: tuple[Path, ...] = (),
                   poll_interval: float = 0.3, exclude: list[str] | None = None) -> Settings:
    settings = Settings(roots=list(roots))
    settings.daemon.debounce = debounce
    settings.daemon.poll_roots = list(poll)
    settings.daemon.poll_interval = poll_interval
    if exclude is not None:
        settings.exclude = exclude
    return settings


_OUT = threading.Lock()


def _emit(kind: str, *args: Any) -> None:
    """One JSON line per call; the lock keeps lines from two threads apart."""
    line = json.dumps([kind, [str(a) for a in args]])
    with _OUT:
        sys.stdout.write(line + "\n")
        sys.stdout.flush()


class _PrintingSink(RecordingSink):
    def _add(self, kind: str, *args: Any) -> None:
        _emit(kind, *args)


def _main(argv: list[str]) -> None:
    from scanpixd.watch import Watcher

    logging.basicConfig(level=logging.WARNING, stream=sys.stderr)
    roots = [Path(a) for a in argv]
    watcher = Watcher(watch_settings(*roots), _PrintingSink())
    watcher.start()
    _emit("started", json.dumps(watcher.status()))
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    while not stop.wait(0.2):
        pass
    _emit("status", json.dumps(watcher.status()))
    watcher.stop()


if __name__ == "__main__":
    _main(sys.argv[1:])

"""Lost events are never silent: real inotify queue overflows and real watch limits.

Both conditions are produced for real, without touching system settings:

- overflow: the watcher runs in a child process that is stopped (SIGSTOP) while 7,000
  files are written, so the kernel's event queue (fs.inotify.max_queued_events, 16,384
  by default) overflows and delivers IN_Q_OVERFLOW when the child resumes;
- watch limit: the child runs in a new user namespace (``unshare -U -r``), where
  ``/proc/sys/user/max_inotify_watches`` is that namespace's own limit; lowering it there
  makes ``inotify_add_watch`` fail with ENOSPC exactly as an exhausted system limit does.
"""

from __future__ import annotations

import json
import os
import queue
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

PROJECT = Path(__file__).resolve().parents[1]


class Child:
    """The watcher in a child process; its sink calls arrive as JSON lines."""

    def __init__(self, argv: list[str]):
        self.proc = subprocess.Popen(argv, cwd=PROJECT, stdout=subprocess.PIPE,
                                     stderr=subprocess.PIPE, text=True)
        self.lines: queue.Queue[list] = queue.Queue()
        self.seen: list[list] = []
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.lines.put(json.loads(line))

    def expect(self, kind: str, contains: str = "", timeout: float = 30.0) -> list:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                item = self.lines.get(timeout=max(deadline - time.monotonic(), 0.01))
            except queue.Empty:
                break
            self.seen.append(item)
            if item[0] == kind and contains in " ".join(item[1]):
                return item
        raise AssertionError(f"no {kind} {contains!r}; stderr: {self.stop()[-2000:]}")

    def status(self, item: list) -> dict:
        return json.loads(item[1][0])

    def stop(self) -> str:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGCONT)
            self.proc.terminate()
        try:
            _, err = self.proc.communicate(timeout=20)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            _, err = self.proc.communicate()
        return err or ""


def watcher_argv(*roots: Path) -> list[str]:
    return [sys.executable, "-m", "tests.helpers_watch", *map(str, roots)]


def in_user_namespace(limit: int, argv: list[str]) -> list[str]:
    script = f'echo {limit} > /proc/sys/user/max_inotify_watches && exec "$@"'
    return ["unshare", "--user", "--map-root-user", "sh", "-c", script, "sh", *argv]


@pytest.fixture
def user_namespaces() -> None:
    probe = ["unshare", "--user", "--map-root-user", "sh", "-c",
             "echo 100 > /proc/sys/user/max_inotify_watches"]
    if shutil.which("unshare") is None or subprocess.run(probe, capture_output=True).returncode:
        pytest.skip("unprivileged user namespaces are not available to lower the limit")


def test_queue_overflow_becomes_a_rescan_with_a_warning(tmp_path: Path) -> None:
    root = tmp_path / "root"
    root.mkdir()
    child = Child(watcher_argv(root))
    try:
        child.expect("started")
        os.kill(child.proc.pid, signal.SIGSTOP)
        for i in range(7000):  # create + modify + close-write: 21,000 events queued
            (root / f"{i}.jpg").write_bytes(b"x")
        os.kill(child.proc.pid, signal.SIGCONT)
        item = child.expect("rescan", "overflowed", timeout=60)
        assert item[1] == [str(root), "inotify event queue overflowed"]
    finally:
        err = child.stop()
    assert "inotify event queue overflowed under" in err


def test_watch_limit_at_runtime_moves_the_root_to_polling(tmp_path: Path,
                                                          user_namespaces: None) -> None:
    root = tmp_path / "root"
    for i in range(8):
        (root / f"d{i}").mkdir(parents=True)
    child = Child(in_user_namespace(15, watcher_argv(root)))
    try:
        started = child.status(child.expect("started"))
        assert started["roots"][str(root)]["mode"] == "inotify"  # 9 of 15 watches used
        for i in range(10):
            (root / f"new{i}").mkdir()
        item = child.expect("rescan", "watch limit")
        assert item[1][0] == str(root)
        time.sleep(0.5)
        (root / "new9" / "after.jpg").write_bytes(b"a")  # still seen, now by polling
        child.expect("file_ready", "after.jpg")
    finally:
        child.proc.terminate()
        final = child.status(child.expect("status"))
        err = child.stop()
    state = final["roots"][str(root)]
    assert state["mode"] == "polling"
    assert "max_inotify_watches=15" in state["warnings"][0]
    assert "inotify watch limit reached" in err


def test_watch_limit_at_start_polls_at_once(tmp_path: Path, user_namespaces: None) -> None:
    root = tmp_path / "root"
    for i in range(30):
        (root / f"d{i}").mkdir(parents=True)
    child = Child(in_user_namespace(10, watcher_argv(root)))
    try:
        state = child.status(child.expect("started"))["roots"][str(root)]
        assert state["mode"] == "polling" and state["reason"] == "inotify watch limit reached"
        time.sleep(0.5)
        (root / "d29" / "x.jpg").write_bytes(b"x")
        child.expect("file_ready", "x.jpg")
    finally:
        child.stop()
    # the caller reconciles a root right after start: no extra rescan for it
    assert not any(item[0] == "rescan" for item in child.seen)

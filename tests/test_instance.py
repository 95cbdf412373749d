"""The single-instance guard between real processes."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from scanpixd.errors import AlreadyRunning
from scanpixd.instance import InstanceLock, lock_dir

PROJECT = Path(__file__).resolve().parents[1]

HOLDER = """
import sys, time
from pathlib import Path
from scanpixd.instance import InstanceLock
lock = InstanceLock([Path(p) for p in sys.argv[3:]], purpose=sys.argv[1],
                    directory=Path(sys.argv[2]))
lock.acquire()
print("locked", flush=True)
time.sleep(120)
"""


class Holder:
    """Another process holding the lock on some roots."""

    def __init__(self, locks: Path, *roots: Path, purpose: str = "daemon"):
        self.proc = subprocess.Popen(
            [sys.executable, "-c", HOLDER, purpose, str(locks), *map(str, roots)],
            cwd=PROJECT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        )
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()
        assert line == "locked\n", self.proc.stderr.read() if self.proc.stderr else line

    def kill(self, sig: int = signal.SIGKILL) -> None:
        self.proc.send_signal(sig)
        self.proc.wait(timeout=10)


@pytest.fixture
def locks(tmp_path: Path) -> Path:
    return tmp_path / "locks"


@pytest.fixture
def roots(tmp_path: Path) -> tuple[Path, Path]:
    pictures, other = tmp_path / "Pictures", tmp_path / "Other"
    (pictures / "2024").mkdir(parents=True)
    other.mkdir()
    return pictures, other


def test_second_instance_on_the_same_root_is_refused_naming_pid_and_root(locks, roots) -> None:
    pictures, _ = roots
    holder = Holder(locks, pictures)
    try:
        with pytest.raises(AlreadyRunning) as refused:
            InstanceLock([pictures], purpose="index", directory=locks).acquire()
        message = str(refused.value)
        assert f"pid {holder.proc.pid}" in message and str(pictures) in message
        assert "scanpixd daemon" in message
        assert refused.value.pid == holder.proc.pid  # type: ignore[attr-defined]
        assert refused.value.exit_code == 75
    finally:
        holder.kill()


def test_other_roots_are_free(locks, roots) -> None:
    pictures, other = roots
    holder = Holder(locks, pictures)
    try:
        with InstanceLock([other], directory=locks) as lock:
            assert lock.roots == [other.resolve()]
    finally:
        holder.kill()


def test_nested_roots_conflict_both_ways(locks, roots) -> None:
    pictures, _ = roots
    inner = pictures / "2024"
    holder = Holder(locks, pictures)
    try:
        with pytest.raises(AlreadyRunning, match=f"serves {pictures}, which contains {inner}"):
            InstanceLock([inner], directory=locks).acquire()
    finally:
        holder.kill()
    holder = Holder(locks, inner, purpose="index")
    try:
        with pytest.raises(AlreadyRunning, match=f"pid {holder.proc.pid}.*inside {pictures}"):
            InstanceLock([pictures], directory=locks).acquire()
    finally:
        holder.kill()


def test_a_killed_holder_leaves_no_stale_lock(locks, roots) -> None:
    pictures, _ = roots
    Holder(locks, pictures).kill(signal.SIGKILL)
    with InstanceLock([pictures], directory=locks):
        pass


def test_waiting_takes_over_when_the_holder_finishes(locks, roots) -> None:
    pictures, _ = roots
    holder = Holder(locks, pictures, purpose="index")
    subprocess.Popen(["sh", "-c", f"sleep 0.5; kill {holder.proc.pid}"])
    started = time.monotonic()
    lock = InstanceLock([pictures], directory=locks)
    lock.acquire(wait=15)
    assert time.monotonic() - started >= 0.4
    lock.release()
    holder.proc.wait(timeout=10)


def test_an_instance_with_another_lock_folder_is_still_refused(tmp_path, roots) -> None:
    """Another user (system unit against user unit) has other lock files: the root's own lock."""
    pictures, _ = roots
    holder = Holder(tmp_path / "their-locks", pictures)
    try:
        with pytest.raises(AlreadyRunning, match=f"pid {holder.proc.pid}.*serves {pictures}"):
            InstanceLock([pictures], directory=tmp_path / "our-locks").acquire()
    finally:
        holder.kill()


def test_all_or_nothing_and_reload_keeps_what_it_can(locks, roots) -> None:
    pictures, other = roots
    holder = Holder(locks, pictures)
    try:
        lock = InstanceLock([other, pictures], directory=locks)
        with pytest.raises(AlreadyRunning):
            lock.acquire()
        assert lock.roots == []
        with InstanceLock([other], directory=locks):
            pass  # nothing of ours was left held
        refused = lock.update([other, pictures])  # SIGHUP: the free root is taken anyway
        assert [str(e.root) for e in refused] == [str(pictures)]  # type: ignore[attr-defined]
        assert lock.roots == [other.resolve()]
        lock.release()
    finally:
        holder.kill()


def test_nothing_is_written_into_the_library(locks, roots) -> None:
    pictures, _ = roots
    before = sorted(p.name for p in pictures.rglob("*"))
    with InstanceLock([pictures], directory=locks):
        assert sorted(p.name for p in pictures.rglob("*")) == before
    assert oct(locks.stat().st_mode & 0o777) == "0o700"


def test_lock_folder_follows_systemd_and_xdg() -> None:
    assert lock_dir({"RUNTIME_DIRECTORY": "/run/scanpix"}) == Path("/run/scanpix/locks")
    assert lock_dir({"XDG_RUNTIME_DIR": "/run/user/1000"}) == Path(
        "/run/user/1000/scanpix/locks")
    assert lock_dir({}) == Path(f"/tmp/scanpix-{os.getuid()}/locks")

"""A real ``scanpixd run`` child process on a temporary library, observed from outside.

The daemon's tests and benchmark drive it as systemd or a user would: a config file, a
private runtime and cache directory, signals, the socket API, the sidecar files it writes
and the log lines it prints with ``-v`` (``indexed PATH`` once per file the cheap tier
finished, which is how a test proves a file was done once and not twice).
"""

from __future__ import annotations

import contextlib
import os
import re
import signal
import socket
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any, TypeVar

from scanpixd.api.client import Client, DaemonUnavailable
from scanpixd.config import Settings, load_settings
from scanpixd.errors import ScanpixError
from scanpixd.record import Record
from scanpixd.store import Store

PROJECT = Path(__file__).resolve().parents[1]
INDEXED = re.compile(r"scanpixd\.indexer: indexed (.+)$")
# Variables that would make the child believe it runs under systemd or was socket-activated.
_SYSTEMD_VARS = ("NOTIFY_SOCKET", "WATCHDOG_USEC", "WATCHDOG_PID", "LISTEN_PID", "LISTEN_FDS",
                 "LISTEN_FDNAMES", "INVOCATION_ID", "JOURNAL_STREAM", "RUNTIME_DIRECTORY")

T = TypeVar("T")


def wait_for(check: Callable[[], T | None], timeout: float = 20.0, interval: float = 0.05,
             what: str = "condition", log: Callable[[], str] | None = None) -> T:
    """Poll ``check`` until it returns something truthy; fail with ``what`` (and the log tail)."""
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > deadline:
            tail = "\n" + log()[-3000:] if log is not None else ""
            raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}{tail}")
        time.sleep(interval)


# Seconds from a change's cheap work to the time pass: short, so that waiting for an idle
# daemon does not wait out the default 5 s after every change.
UPKEEP_DELAY = 0.2


def config_text(roots: Iterable[Path], socket_path: Path, cache_dir: Path, *, debounce: float = 0.2,
                extra: str = "", jobs: int = 2, upkeep_delay: float = UPKEEP_DELAY) -> str:
    """A daemon configuration with the model stages off (they need weights this machine lacks)."""
    listed = ", ".join(f'"{r}"' for r in roots)
    return (f"roots = [{listed}]\njobs = {jobs}\ncache_dir = \"{cache_dir}\"\n{extra}\n"
            f"[daemon]\nsocket = \"{socket_path}\"\ndebounce = {debounce}\n"
            f"upkeep_delay = {upkeep_delay}\n"
            "[clip]\nenabled = false\n[faces]\nenabled = false\n")


class DaemonProcess:
    """``python -m scanpixd run -v`` with everything it touches under ``base``.

    Its stderr is appended to one log file across restarts, so log lines can be counted
    over a crash and the run after it.
    """

    def __init__(self, base: Path, roots: Iterable[Path], *, debounce: float = 0.2, extra: str = "",
                 jobs: int = 2, upkeep_delay: float = UPKEEP_DELAY):
        self.base = base
        base.mkdir(parents=True, exist_ok=True)
        self.runtime = base / "runtime"
        self.runtime.mkdir(mode=0o700, exist_ok=True)
        self.socket = self.runtime / "scanpix" / "scanpixd.sock"
        self.cache = base / "cache"
        self.config = base / "config.toml"
        self.log_path = base / "daemon.log"
        self.debounce, self.jobs, self.upkeep_delay = debounce, jobs, upkeep_delay
        self.proc: subprocess.Popen[bytes] | None = None
        self._loaded: Settings | None = None
        self.write_config(roots, extra)

    # -- configuration -------------------------------------------------------------------
    def write_config(self, roots: Iterable[Path], extra: str = "") -> None:
        self.config.write_text(config_text(roots, self.socket, self.cache, debounce=self.debounce,
                                           extra=extra, jobs=self.jobs,
                                           upkeep_delay=self.upkeep_delay))
        self._loaded = None

    def settings(self) -> Settings:
        """The settings of the configuration last written (a test may break the file later)."""
        if self._loaded is None:
            self._loaded = load_settings(self.config, environ={})
        return self._loaded

    def env(self, **extra: str) -> dict[str, str]:
        """The child's environment: private XDG folders, nothing from systemd unless asked."""
        env = {k: v for k, v in os.environ.items()
               if k not in _SYSTEMD_VARS and not k.startswith("SCANPIX_")}
        env.update(XDG_RUNTIME_DIR=str(self.runtime), XDG_CACHE_HOME=str(self.cache),
                   XDG_CONFIG_HOME=str(self.base / "config"), PYTHONUNBUFFERED="1")
        env.update(extra)
        return env

    # -- the process ---------------------------------------------------------------------
    def start(self, wait: bool = True, timeout: float = 60.0, **env: str) -> DaemonProcess:
        with open(self.log_path, "ab") as log:
            log.write(f"=== start {time.time():.3f}\n".encode())
            log.flush()
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "scanpixd", "run", "--config", str(self.config), "-v"],
                cwd=PROJECT, env=self.env(**env), stdin=subprocess.DEVNULL,
                stdout=log, stderr=log)
        if wait:
            self.wait_serving(timeout)
        return self

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def send(self, signum: int) -> None:
        assert self.proc is not None
        self.proc.send_signal(signum)

    def stop(self, signum: int = signal.SIGTERM, timeout: float = 30.0) -> int:
        """Send ``signum`` and wait for the exit; returns the exit status."""
        if self.proc is None:
            return 0
        if self.proc.poll() is None:
            self.proc.send_signal(signum)
        try:
            return self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(timeout=10)
            raise AssertionError(f"daemon did not exit within {timeout} s of "
                                 f"{signal.Signals(signum).name}\n{self.log()[-3000:]}") from None

    def kill(self) -> None:
        """SIGKILL: the crash case."""
        self.stop(signal.SIGKILL, timeout=10)

    def close(self) -> None:
        """Make sure no child outlives a test."""
        if self.alive():
            with contextlib.suppress(AssertionError):
                self.stop(signal.SIGTERM, timeout=20)
        if self.alive():
            self.kill()

    # -- observation ---------------------------------------------------------------------
    @property
    def client(self) -> Client:
        return Client(self.socket, timeout=20.0)

    def status(self) -> dict[str, Any] | None:
        try:
            found: dict[str, Any] = self.client.get("/v1/status")
            return found
        except (DaemonUnavailable, ScanpixError):
            return None

    def wait_serving(self, timeout: float = 60.0) -> dict[str, Any]:
        """Until the API answers with the library view loaded."""
        def serving() -> dict[str, Any] | None:
            if not self.alive():
                raise AssertionError(f"daemon exited with {self.proc.returncode if self.proc else '?'}"
                                     f"\n{self.log()[-3000:]}")
            found = self.status()
            return found if found and found.get("loaded") else None
        return wait_for(serving, timeout, 0.05, "the daemon to serve", self.log)

    def wait_idle(self, timeout: float = 60.0, quiet: float = 0.5) -> None:
        """Until the work queues stay empty for ``quiet`` seconds (the watcher settled too)."""
        def idle() -> bool:
            found = self.status()
            work = (found or {}).get("work") or {}
            queue = work.get("queue") or {}
            return bool(work) and not work.get("busy") and not any(queue.values())
        since: list[float] = []

        def steady() -> bool:
            if not idle():
                since.clear()
                return False
            since.append(time.monotonic())
            return since[-1] - since[0] >= quiet
        wait_for(steady, timeout, 0.1, "the daemon to go idle", self.log)

    def log(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def indexed_counts(self) -> Counter[str]:
        """How often each path was reported indexed, over every run so far."""
        found: Counter[str] = Counter()
        for line in self.log().splitlines():
            match = INDEXED.search(line)
            if match:
                found[match.group(1)] += 1
        return found

    def record(self, path: Path) -> Record | None:
        return Store(self.settings()).folder(path.parent).read(path.name)

    def wait_record(self, path: Path, timeout: float = 20.0,
                    check: Callable[[Record], bool] | None = None) -> Record:
        def found() -> Record | None:
            record = self.record(path)
            return record if record is not None and (check is None or check(record)) else None
        return wait_for(found, timeout, 0.05, f"a record of {path}", self.log)

    def wait_no_record(self, path: Path, timeout: float = 20.0) -> None:
        wait_for(lambda: self.record(path) is None, timeout, 0.05, f"{path}'s record to go", self.log)


def notify_listener(path: Path) -> socket.socket:
    """A real AF_UNIX datagram socket standing in for systemd's ``NOTIFY_SOCKET``."""
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(str(path))
    sock.settimeout(0.2)
    return sock


def receive_all(sock: socket.socket) -> list[str]:
    """Every datagram waiting on ``sock`` (one string per message)."""
    messages = []
    while True:
        try:
            messages.append(sock.recv(65536).decode())
        except (TimeoutError, BlockingIOError):
            return messages


def write_slowly(path: Path, data: bytes, chunks: int, pause: float,
                 during: Callable[[], None] | None = None) -> None:
    """Write ``data`` in ``chunks`` pieces with ``pause`` between them, keeping the file open."""
    step = -(-len(data) // chunks)
    with open(path, "wb") as fh:
        for start in range(0, len(data), step):
            fh.write(data[start:start + step])
            fh.flush()
            os.fsync(fh.fileno())
            if during is not None:
                during()
            time.sleep(pause)


def photo_bytes(seed: int, size: tuple[int, int] = (64, 48), quality: int = 90) -> bytes:
    """A small, distinct JPEG in memory (so a burst can be written as fast as possible)."""
    import io

    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(seed)
    w, h = size
    y, x = np.mgrid[0:h, 0:w].astype(np.float32)
    channels = [127 + 100 * np.sin(x * rng.uniform(0.02, 0.2) + y * rng.uniform(0.02, 0.2)
                                   + rng.uniform(0, 6.28)) for _ in range(3)]
    img = np.clip(np.stack(channels, axis=-1), 0, 255).astype(np.uint8)
    out = io.BytesIO()
    Image.fromarray(img).save(out, "JPEG", quality=quality)
    return out.getvalue()

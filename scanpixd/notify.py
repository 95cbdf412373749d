"""Running well under systemd: the notify protocol, journald logging, socket activation, priority.

Everything is a no-op outside systemd, so the daemon calls it unconditionally.

- :class:`Notifier` speaks ``sd_notify``: READY=1 once serving, STATUS= lines for
  ``systemctl status``, WATCHDOG=1 every ``WATCHDOG_USEC / 2`` while the daemon is healthy,
  RELOADING=1 on SIGHUP, STOPPING=1 on SIGTERM.  It uses libsystemd through systemd-python
  when that is installed, else sends the datagram itself (``NOTIFY_SOCKET`` may be a path
  or an abstract ``@name``).
- :func:`setup_logging` logs to journald with structured fields when the process runs
  under systemd, and to stderr otherwise.
- :func:`listen_sockets` picks up sockets passed by a ``.socket`` unit.
- :func:`lower_thread_priority` lets model work (CLIP, faces) run at nice 19 and idle I/O
  class on its own threads while queries and cheap indexing keep the service's priority.
"""

from __future__ import annotations

import contextlib
import ctypes
import importlib
import logging
import os
import platform
import socket
import sys
import threading
import time
from collections.abc import Callable, Mapping, MutableMapping
from typing import IO, Any

__all__ = [
    "Notifier",
    "listen_sockets",
    "lower_thread_priority",
    "running_under_systemd",
    "setup_logging",
]

log = logging.getLogger(__name__)

JOURNAL_SOCKET = "/run/systemd/journal/socket"


def _libsystemd_notify() -> Callable[..., bool] | None:
    try:
        daemon = importlib.import_module("systemd.daemon")
    except ImportError:
        return None
    notify: Callable[..., bool] = daemon.notify
    return notify


class Notifier:
    """Sends service state to systemd; silent when ``NOTIFY_SOCKET`` is unset.

    ``environ`` defaults to the process environment; a different mapping (tests, or a
    caller that already unset the variables) makes the notifier speak the protocol itself,
    since libsystemd reads only the real environment.
    """

    def __init__(self, environ: Mapping[str, str] | None = None, *, use_libsystemd: bool = True):
        env = os.environ if environ is None else environ
        self.address = env.get("NOTIFY_SOCKET") or None
        self._libsystemd = _libsystemd_notify() if use_libsystemd and environ is None else None
        self._watchdog_usec = _watchdog_usec(env)
        self._pinger: threading.Thread | None = None
        self._stop_pinging = threading.Event()

    @property
    def enabled(self) -> bool:
        return self.address is not None

    @property
    def backend(self) -> str:
        return "libsystemd" if self._libsystemd is not None else "socket"

    @property
    def watchdog_interval(self) -> float | None:
        """Seconds between WATCHDOG=1 pings (half of ``WatchdogSec=``), or None when off."""
        return self._watchdog_usec / 2e6 if self._watchdog_usec else None

    def send(self, *fields: str) -> bool:
        """Send ``KEY=value`` fields in one datagram; False when not sent (never raises)."""
        if self.address is None or not fields:
            return False
        message = "\n".join(fields)
        if self._libsystemd is not None:
            try:
                return bool(self._libsystemd(message))
            except OSError as exc:
                log.debug("sd_notify failed: %s", exc)
                return False
        return _send_datagram(self.address, message.encode())

    def ready(self, status: str | None = None) -> bool:
        return self.send("READY=1", *_status(status))

    def status(self, text: str) -> bool:
        return self.send(*_status(text))

    def reloading(self, status: str | None = None) -> bool:
        usec = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
        return self.send("RELOADING=1", f"MONOTONIC_USEC={usec}", *_status(status))

    def stopping(self, status: str | None = None) -> bool:
        self.stop_watchdog()
        return self.send("STOPPING=1", *_status(status))

    def extend_timeout(self, seconds: float) -> bool:
        """Ask for more time to start or stop (a long first reconcile, say)."""
        return self.send(f"EXTEND_TIMEOUT_USEC={int(seconds * 1e6)}")

    def watchdog(self) -> bool:
        return self.send("WATCHDOG=1")

    def start_watchdog(self, healthy: Callable[[], bool] = lambda: True) -> bool:
        """Ping the watchdog from a thread while ``healthy()`` holds; False when not asked for.

        ``healthy`` should prove the daemon makes progress (its loops ran recently), so a
        wedged daemon stops pinging and systemd restarts it.
        """
        interval = self.watchdog_interval
        if interval is None or not self.enabled or self._pinger is not None:
            return False
        self._stop_pinging.clear()
        self._pinger = threading.Thread(
            target=self._ping_loop, args=(interval, healthy), name="sd-watchdog", daemon=True
        )
        self._pinger.start()
        return True

    def stop_watchdog(self) -> None:
        pinger, self._pinger = self._pinger, None
        if pinger is not None:
            self._stop_pinging.set()
            if pinger is not threading.current_thread():
                pinger.join(timeout=5)

    def _ping_loop(self, interval: float, healthy: Callable[[], bool]) -> None:
        warned = False
        while True:
            try:
                ok = healthy()
            except Exception:
                log.exception("watchdog health check failed")
                ok = False
            if ok:
                self.watchdog()
                warned = False
            elif not warned:
                log.warning("daemon is not making progress: withholding the watchdog ping")
                warned = True
            if self._stop_pinging.wait(interval):
                return


def _status(text: str | None) -> list[str]:
    return [] if text is None else ["STATUS=" + " ".join(text.split())]


def _watchdog_usec(env: Mapping[str, str]) -> int:
    pid = env.get("WATCHDOG_PID")
    if pid and pid != str(os.getpid()):
        return 0  # meant for another process (a wrapper that exec'd us is fine: same pid)
    try:
        return max(int(env.get("WATCHDOG_USEC", "0")), 0)
    except ValueError:
        return 0


def _send_datagram(address: str, message: bytes) -> bool:
    if address.startswith("@"):
        target = "\0" + address[1:]
    elif address.startswith("/"):
        target = address
    else:
        log.debug("NOTIFY_SOCKET=%s: unsupported address family", address)
        return False
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock:
            sock.connect(target)
            sock.sendall(message)
    except OSError as exc:
        log.debug("cannot notify %s: %s", address, exc)
        return False
    return True


# --------------------------------------------------------------------------- logging


def running_under_systemd(environ: Mapping[str, str] | None = None,
                          stream: IO[Any] | None = None) -> bool:
    """True when started by systemd: stderr is its journal stream, or INVOCATION_ID is set."""
    env = os.environ if environ is None else environ
    return _stream_is_journal(env, stream or sys.stderr) or bool(env.get("INVOCATION_ID"))


def _stream_is_journal(env: Mapping[str, str], stream: IO[Any]) -> bool:
    device, _, inode = env.get("JOURNAL_STREAM", "").partition(":")
    try:
        st = os.fstat(stream.fileno())
        return (st.st_dev, st.st_ino) == (int(device), int(inode))
    except (OSError, ValueError, AttributeError):
        return False


class _PriorityFormatter(logging.Formatter):
    """``<N>message`` lines: journald reads the priority prefix on a service's stderr."""

    _LEVELS = ((logging.CRITICAL, 2), (logging.ERROR, 3), (logging.WARNING, 4), (logging.INFO, 6))

    def format(self, record: logging.LogRecord) -> str:
        prio = next((p for level, p in self._LEVELS if record.levelno >= level), 7)
        return "\n".join(f"<{prio}>{line}" for line in super().format(record).splitlines())


def setup_logging(verbose: bool = False, *, environ: Mapping[str, str] | None = None,
                  stream: IO[Any] | None = None) -> logging.Handler:
    """Configure the root logger once per process; returns the handler it installed.

    Under systemd: journald through systemd-python's JournalHandler (structured fields,
    ``SYSLOG_IDENTIFIER=scanpixd``), else ``<N>``-prefixed lines on stderr.  Elsewhere:
    plain timestamped lines on stderr.
    """
    env = os.environ if environ is None else environ
    out = stream or sys.stderr
    handler: logging.Handler | None = None
    if running_under_systemd(env, out) and os.path.exists(JOURNAL_SOCKET):
        handler = _journal_handler()
    if handler is None and _stream_is_journal(env, out):
        handler = logging.StreamHandler(out)
        handler.setFormatter(_PriorityFormatter("%(name)s: %(message)s"))
    if handler is None:
        handler = logging.StreamHandler(out)
        handler.setFormatter(
            logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s", "%H:%M:%S")
        )
    root = logging.getLogger()
    for old in [h for h in root.handlers if getattr(h, "_scanpix", False)]:
        root.removeHandler(old)
    handler._scanpix = True  # type: ignore[attr-defined]
    root.addHandler(handler)
    root.setLevel(logging.DEBUG if verbose else logging.INFO)
    for noisy in ("watchdog", "PIL", "urllib3", "matplotlib"):
        logging.getLogger(noisy).setLevel(logging.INFO if verbose else logging.WARNING)
    return handler


def _journal_handler() -> logging.Handler | None:
    try:
        journal = importlib.import_module("systemd.journal")
    except ImportError:
        return None
    handler: logging.Handler = journal.JournalHandler(SYSLOG_IDENTIFIER="scanpixd")
    return handler


# --------------------------------------------------------------------------- socket activation

SD_LISTEN_FDS_START = 3


def listen_sockets(
    environ: MutableMapping[str, str] | None = None, *, unset: bool = True
) -> dict[str, socket.socket]:
    """Sockets passed by systemd socket activation, by ``FileDescriptorName=`` (or fd number).

    The LISTEN_* variables are removed (``unset``) so child processes do not see them.
    """
    env = os.environ if environ is None else environ
    try:
        pid, count = int(env.get("LISTEN_PID", "")), int(env.get("LISTEN_FDS", ""))
    except ValueError:
        return {}
    names = env.get("LISTEN_FDNAMES", "").split(":")
    if unset:
        for key in ("LISTEN_PID", "LISTEN_FDS", "LISTEN_FDNAMES"):
            env.pop(key, None)
    if pid != os.getpid() or count <= 0:
        return {}
    found = {}
    for i in range(count):
        fd = SD_LISTEN_FDS_START + i
        os.set_inheritable(fd, False)
        name = names[i] if i < len(names) and names[i] else str(fd)
        found[name] = socket.socket(fileno=fd)
    return found


# --------------------------------------------------------------------------- priority

_IOPRIO_SET = {"x86_64": 251, "i386": 289, "i686": 289, "aarch64": 30, "arm64": 30,
               "armv7l": 314, "riscv64": 30, "ppc64le": 273, "ppc64": 273, "s390x": 282}
_IOPRIO_GET = {"x86_64": 252, "i386": 290, "i686": 290, "aarch64": 31, "arm64": 31,
               "armv7l": 315, "riscv64": 31, "ppc64le": 274, "ppc64": 274, "s390x": 283}
_IOPRIO_WHO_PROCESS = 1
IOPRIO_CLASS_IDLE = 3
_IOPRIO_CLASS_SHIFT = 13


def lower_thread_priority(nice: int = 19, *, io_idle: bool = True) -> None:
    """Lower the calling thread (and threads it starts later) to ``nice`` and idle I/O.

    Call it first thing in a model worker thread, before the model is loaded, so that the
    thread pools torch and dlib start from it inherit the low priority.  Only ever lowers;
    failures (another OS, a seccomp filter) are logged and ignored.
    """
    if not sys.platform.startswith("linux"):
        return
    tid = threading.get_native_id()
    try:
        if os.getpriority(os.PRIO_PROCESS, tid) < nice:
            os.setpriority(os.PRIO_PROCESS, tid, nice)
    except OSError as exc:
        log.debug("cannot lower thread priority: %s", exc)
    if io_idle:
        _ioprio_syscall(_IOPRIO_SET, tid, IOPRIO_CLASS_IDLE << _IOPRIO_CLASS_SHIFT)


def thread_io_class(tid: int | None = None) -> int | None:
    """The I/O scheduling class of a thread (3 = idle), or None when it cannot be read."""
    value = _ioprio_syscall(_IOPRIO_GET, tid or threading.get_native_id())
    return None if value is None or value < 0 else value >> _IOPRIO_CLASS_SHIFT


def _ioprio_syscall(table: dict[str, int], tid: int, *value: int) -> int | None:
    number = table.get(platform.machine())
    if number is None:
        return None
    libc = ctypes.CDLL(None, use_errno=True)
    result = libc.syscall(number, _IOPRIO_WHO_PROCESS, tid, *value)
    if result < 0:
        with contextlib.suppress(Exception):
            log.debug("ioprio syscall failed: %s", os.strerror(ctypes.get_errno()))
        return None
    return int(result)

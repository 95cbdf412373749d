"""One long-lived exiftool process, shared by every thread that needs metadata.

Starting exiftool (a Perl program) costs ~150 ms, reading a photo ~20 ms, so scanpixd keeps
one ``exiftool -stay_open True -@ -`` process and feeds it batches.  pyexiftool drives the
same protocol but its reads have no timeout (a hostile file would hang the indexer), so the
process is driven here directly:

* every file of a batch is its own ``-execute<N>`` command, all written at once: one round
  trip for the batch, yet each answer is tied to its file by number, so a file name that is
  not valid UTF-8 (which exiftool's JSON mangles) still gets its own dump;
* each file has ``timeout`` seconds from the moment the previous one was answered; when it
  runs out, the process group is killed, the file gets an error entry and the rest of the
  batch goes on in a fresh process, so one hostile file costs one timeout and no more; a
  file that makes exiftool die is retried alone before it is blamed;
* exiftool never exits on end of input (it polls its argfile), so the child is also told
  by the kernel to die with its parent (``PR_SET_PDEATHSIG``; started from a thread that
  lives as long as the process, since the signal follows the forking thread) and is stopped
  at interpreter exit; a dead process is restarted on the next call.

Output options: ``-j -G1`` (JSON; family-1 groups, which tell an EXIF
``ExifIFD:DateTimeOriginal`` from a QuickTime ``Keys:CreationDate`` or a UTC
``QuickTime:CreateDate``), with exiftool's readable print conversions for the dump
("1/250", "AF-S Nikkor 50mm f/1.8G") except for the tags scanpixd computes with, which are
asked for numerically (``TAG#`` before ``-all``): signed decimal GPS, Orientation 1-8,
Rotation and Duration in seconds.  A global ``-n`` would also turn lens names into
numeric codes.
"""

from __future__ import annotations

import contextlib
import ctypes
import json
import logging
import os
import queue
import re
import select
import signal
import subprocess
import sys
import tempfile
import threading
import time
import weakref
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from itertools import count
from pathlib import Path
from typing import Any

from scanpixd.config import ExiftoolSettings
from scanpixd.errors import ScanpixError

log = logging.getLogger(__name__)

# Numeric values for these; print conversions for the rest.  The order matters: a tag asked
# for before ``-all`` keeps its ``#``.
NUMERIC_TAGS: tuple[str, ...] = (
    "GPSLatitude", "GPSLongitude", "GPSAltitude", "GPSAltitudeRef", "GPSCoordinates",
    "Orientation", "Rotation", "Duration",
)
READ_ARGS: tuple[bytes, ...] = (
    b"-j", b"-G1", b"-q", b"-charset", b"filename=utf8", b"-api", b"largefilesupport=1",
    *(f"-{tag}#".encode() for tag in NUMERIC_TAGS), b"-all",
)
# Embedded JPEGs a raw file may carry; the largest one is the preview.
PREVIEW_TAGS: tuple[str, ...] = ("PreviewImage", "JpgFromRaw", "OtherImage", "ThumbnailImage")
_BINARY_RE = re.compile(r"^\(Binary data (\d+) bytes")
_READ_SIZE = 1 << 20
RETRY_UNAVAILABLE = 300.0  # seconds before trying again to start an exiftool that failed


class ExifToolError(ScanpixError):
    """exiftool could not answer for a file (it timed out or exited while reading it)."""


class ExifToolUnavailable(ExifToolError):
    """exiftool is not installed (or not runnable) at the configured path."""

    exit_code = 69  # EX_UNAVAILABLE


@dataclass
class _Reply:
    stdout: bytes
    stderr: bytes


class _Stalled(Exception):
    """The process gave no answer in time (``timed_out``) or exited, after ``replies``."""

    def __init__(self, replies: list[_Reply], timed_out: bool):
        super().__init__("timed out" if timed_out else "exited")
        self.replies = replies
        self.timed_out = timed_out


class ExifToolService:
    """Thread-safe access to one lazily started ``exiftool -stay_open`` process."""

    def __init__(self, settings: ExiftoolSettings):
        self.settings = settings
        self._lock = threading.Lock()
        self._process: _Process | None = None
        self._unavailable: str | None = None  # why exiftool cannot run, until _retry_at
        self._retry_at = 0.0
        self._version: str | None = None
        self._links: tempfile.TemporaryDirectory[str] | None = None
        self._made_links: list[bytes] = []
        self._link_numbers = count()

    # -- public API ----------------------------------------------------------------------
    @property
    def available(self) -> bool:
        """Whether exiftool runs here (starts it on first use)."""
        with self._lock:
            try:
                self._ensure()
            except ExifToolUnavailable:
                return False
            return True

    @property
    def pid(self) -> int | None:
        """The running process's id (for diagnostics), None before the first call."""
        process = self._process
        return process.pid if process is not None and process.alive() else None

    @property
    def version(self) -> str | None:
        """exiftool's version once it has started, e.g. ``"12.57"``."""
        return self._version

    def metadata(self, paths: Sequence[Path]) -> dict[Path, dict[str, Any]]:
        """The tag dump of every path (keys as exiftool's ``-G1`` names them).

        A file exiftool cannot read gets ``{"error": reason}`` (plus any tags it still
        read); raises :class:`ExifToolUnavailable` when exiftool cannot run at all.
        """
        unique = list(dict.fromkeys(paths))
        if not unique:
            return {}
        with self._lock:
            self._ensure()
            try:
                outcomes = self._run_all([[*READ_ARGS, self._arg(path)] for path in unique])
            finally:
                self._drop_links()
        for path, outcome in zip(unique, outcomes, strict=True):
            if isinstance(outcome, ExifToolError):
                log.warning("%s: %s; exiftool was restarted", path, outcome)
        return {path: _parse_dump(outcome) for path, outcome in zip(unique, outcomes, strict=True)}

    def preview(self, path: Path) -> bytes | None:
        """The largest embedded JPEG of ``path`` (a raw file's preview), or None."""
        with self._lock:
            self._ensure()
            try:
                return self._preview(self._arg(path))
            finally:
                self._drop_links()

    def _preview(self, arg: bytes) -> bytes | None:
        listing = self._run_one([b"-j", b"-G1", b"-a", b"-q", b"-charset", b"filename=utf8",
                                 *(f"-{tag}".encode() for tag in PREVIEW_TAGS), arg])
        for tag in _preview_candidates(listing.stdout):
            reply = self._run_one([b"-b", b"-q", b"-charset", b"filename=utf8",
                                   f"-{tag}".encode(), arg])
            if reply.stdout.startswith(b"\xff\xd8"):
                return reply.stdout
        return None

    def close(self) -> None:
        """Stop the process (it is restarted if the service is used again)."""
        with self._lock:
            if self._process is not None:
                self._process.stop()
                self._process = None
            if self._links is not None:
                self._links.cleanup()
                self._links = None

    # -- process management ----------------------------------------------------------------
    def _ensure(self) -> _Process:
        if self._unavailable is not None and time.monotonic() < self._retry_at:
            raise ExifToolUnavailable(self._unavailable)
        if self._process is not None and self._process.alive():
            return self._process
        if self._process is not None:
            log.warning("exiftool exited unexpectedly; restarting it")
            self._process.stop()
        self._process = self._start()
        return self._process

    def _start(self) -> _Process:
        path = self.settings.path
        try:
            process = _KEEPER.call(lambda: _Process(path))
        except OSError as exc:
            raise self._give_up(f"exiftool cannot run ({path}): {exc.strerror or exc}") from None
        try:
            (reply,) = process.exchange([[b"-ver"]], self.settings.timeout)
        except _Stalled as exc:
            process.stop()
            raise self._give_up(f"{path} did not answer as exiftool does ({exc})") from None
        self._unavailable = None
        self._version = reply.stdout.decode("ascii", "replace").strip()
        log.debug("started exiftool %s (pid %d)", self._version, process.pid)
        return process

    def _give_up(self, reason: str) -> ExifToolUnavailable:
        """Remember that exiftool cannot run, so files do not each pay for a failed start."""
        self._unavailable = reason
        self._retry_at = time.monotonic() + RETRY_UNAVAILABLE
        return ExifToolUnavailable(reason)

    def _discard(self) -> None:
        """Kill a stalled or dead process at once; the next command starts a fresh one."""
        if self._process is not None:
            self._process.stop(graceful=False)
        self._process = None

    def _run_one(self, command: list[bytes]) -> _Reply:
        (outcome,) = self._run_all([command])
        if isinstance(outcome, ExifToolError):
            raise outcome
        return outcome

    def _run_all(self, commands: list[list[bytes]]) -> list[_Reply | ExifToolError]:
        """Answers to every command; a command that stalls or kills the process gets its error.

        exiftool works through a batch in order, so on a timeout the first unanswered file
        is the one it is stuck on.  When the process dies instead, that file is retried on
        its own first: the death may have come from outside, or from a file still queued.
        """
        outcomes: list[_Reply | ExifToolError] = []
        alone_at = -1
        while len(outcomes) < len(commands):
            at = len(outcomes)
            batch = commands[at:at + 1] if alone_at == at else commands[at:]
            try:
                outcomes += self._ensure().exchange(batch, self.settings.timeout)
            except _Stalled as stall:
                outcomes += stall.replies
                self._discard()
                at = len(outcomes)
                if stall.timed_out:
                    outcomes.append(ExifToolError(
                        f"exiftool timed out after {self.settings.timeout:g} s reading this file"))
                elif alone_at == at:
                    outcomes.append(ExifToolError("exiftool exited while reading this file"))
                else:
                    alone_at = at
        return outcomes

    def _arg(self, path: Path) -> bytes:
        """``path`` as one argfile line: absolute raw bytes, or a symlink if it has a newline."""
        raw = os.fsencode(os.path.abspath(path))
        if b"\n" not in raw and b"\r" not in raw:
            return raw
        if self._links is None:
            self._links = tempfile.TemporaryDirectory(prefix="scanpix-exiftool-")
        suffix = re.sub(rb"[^A-Za-z0-9.]", b"", os.path.splitext(raw)[1])[:16]
        name = b"%d%s" % (next(self._link_numbers), suffix)
        link = os.path.join(os.fsencode(self._links.name), name)
        os.symlink(raw, link)
        self._made_links.append(link)
        return link

    def _drop_links(self) -> None:
        while self._made_links:
            with contextlib.suppress(OSError):
                os.unlink(self._made_links.pop())


class _Process:
    """The child process and the ``-stay_open`` protocol: commands in, numbered answers out."""

    _numbers = count(1)

    def __init__(self, executable: str):
        self.popen = subprocess.Popen(
            [executable, "-stay_open", "True", "-@", "-"],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
            bufsize=0, start_new_session=True, preexec_fn=_die_with_parent,
        )
        self.pid = self.popen.pid
        streams = (self.popen.stdin, self.popen.stdout, self.popen.stderr)
        self._fds = tuple(s.fileno() for s in streams if s is not None)
        for fd in self._fds:
            os.set_blocking(fd, False)
        self._out = _Buffer()
        self._err = _Buffer()
        self._finalizer = weakref.finalize(self, _terminate, self.popen, True)

    def alive(self) -> bool:
        return self.popen.poll() is None

    def stop(self, graceful: bool = True) -> None:
        """Stop the process: ask it to leave (``graceful``) or kill it at once; reap it."""
        if self._finalizer.detach() is not None:
            _terminate(self.popen, graceful)

    def exchange(self, commands: Iterable[list[bytes]], timeout: float) -> list[_Reply]:
        """Send every command at once; collect the answers in order, each within ``timeout``."""
        markers: list[tuple[bytes, bytes]] = []
        lines: list[bytes] = []
        for command in commands:
            number = next(self._numbers)
            markers.append((b"{ready%d}\n" % number, b"{done%d}\n" % number))
            lines += [*command, b"-echo4", b"{done%d}" % number, b"-execute%d" % number]
        pending = memoryview(b"\n".join(lines) + b"\n")
        stdin, stdout, stderr = self._fds
        poller = select.poll()
        poller.register(stdin, select.POLLOUT)
        poller.register(stdout, select.POLLIN)
        poller.register(stderr, select.POLLIN)
        replies: list[_Reply] = []
        deadline = time.monotonic() + timeout
        while len(replies) < len(markers):
            ready, done = markers[len(replies)]
            if self._out.has(ready) and self._err.has(done):
                replies.append(_Reply(self._out.take(ready), self._err.take(done)))
                deadline = time.monotonic() + timeout
                continue
            left = deadline - time.monotonic()
            if left <= 0:
                raise _Stalled(replies, timed_out=True)
            for fd, _event in poller.poll(left * 1000):
                if fd == stdin:
                    pending = _write(fd, pending)
                    if not pending:
                        poller.unregister(fd)
                elif not (self._out if fd == stdout else self._err).read_from(fd):
                    raise _Stalled(replies, timed_out=False)
        return replies


class _Buffer:
    """Output read so far, searched for an end marker without rescanning what was seen."""

    def __init__(self) -> None:
        self.data = bytearray()
        self._seen = 0  # bytes already known not to start a marker
        self._end = -1

    def read_from(self, fd: int) -> bool:
        """Append what ``fd`` has; False at end of file."""
        try:
            chunk = os.read(fd, _READ_SIZE)
        except BlockingIOError:
            return True
        self.data += chunk
        return bool(chunk)

    def has(self, marker: bytes) -> bool:
        self._end = self.data.find(marker, self._seen)
        if self._end < 0:
            self._seen = max(0, len(self.data) - len(marker))
        return self._end >= 0

    def take(self, marker: bytes) -> bytes:
        """What came before ``marker`` (found by :meth:`has`); drops it and the marker."""
        out = bytes(self.data[:self._end])
        del self.data[:self._end + len(marker)]
        self._seen = 0
        return out


def _write(fd: int, pending: memoryview) -> memoryview:
    """Write what the pipe takes now; on a closed pipe drop the rest (EOF follows on read)."""
    try:
        return pending[os.write(fd, pending):]
    except BlockingIOError:
        return pending
    except BrokenPipeError:
        return pending[len(pending):]


def _terminate(popen: subprocess.Popen[bytes], graceful: bool) -> None:
    """Stop exiftool and reap it (no zombie); kill its whole process group if it lingers."""
    if graceful and popen.returncode is None:
        try:
            assert popen.stdin is not None
            os.set_blocking(popen.stdin.fileno(), True)
            popen.stdin.write(b"-stay_open\nFalse\n")
            popen.wait(timeout=1.0)
        except (OSError, ValueError, subprocess.TimeoutExpired):
            pass
    if popen.returncode is None:  # not reaped yet, so its process group id is still its own
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(popen.pid, signal.SIGKILL)
        popen.wait()
    for stream in (popen.stdin, popen.stdout, popen.stderr):
        if stream is not None:
            with contextlib.suppress(OSError):
                stream.close()


_PR_SET_PDEATHSIG = 1
_prctl: Any = None
if sys.platform.startswith("linux"):
    with contextlib.suppress(OSError, AttributeError):
        _prctl = ctypes.CDLL(None, use_errno=True).prctl


class _Keeper:
    """One thread that lives as long as the process, to start exiftool from.

    The kernel sends ``PR_SET_PDEATHSIG`` when the *thread* that forked the child ends,
    not the process; starting exiftool from a short-lived worker thread would kill it as
    soon as that thread's pool shut down.
    """

    def __init__(self) -> None:
        self._requests: queue.SimpleQueue[tuple[Callable[[], Any], list[Any], threading.Event]] = (
            queue.SimpleQueue())
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()

    def call(self, func: Callable[[], Any]) -> Any:
        with self._lock:
            if self._thread is None or not self._thread.is_alive():
                self._thread = threading.Thread(target=self._serve, name="exiftool-keeper", daemon=True)
                self._thread.start()
        box: list[Any] = []
        done = threading.Event()
        self._requests.put((func, box, done))
        done.wait()
        if isinstance(box[0], BaseException):
            raise box[0]
        return box[0]

    def _serve(self) -> None:
        while True:
            func, box, done = self._requests.get()
            try:
                box.append(func())
            except BaseException as exc:  # handed to the caller
                box.append(exc)
            done.set()


_KEEPER = _Keeper()


def _die_with_parent() -> None:
    """In the child, before exec: have the kernel send SIGTERM when scanpixd dies."""
    if _prctl is not None:
        _prctl(_PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0)


def _parse_dump(outcome: _Reply | ExifToolError) -> dict[str, Any]:
    """One file's dump from its answer; an ``"error"`` entry when there is none."""
    if isinstance(outcome, ExifToolError):
        return {"error": str(outcome)}
    dump: dict[str, Any] = {}
    text = outcome.stdout.decode("utf-8", "replace").strip()
    if text:
        try:
            parsed = json.loads(text)
        except ValueError:
            return {"error": "exiftool gave unreadable output for this file"}
        if not isinstance(parsed, list) or len(parsed) > 1:
            return {"error": "not a single file"}  # a directory, say
        if parsed and isinstance(parsed[0], dict):
            dump = parsed[0]
    dump.pop("SourceFile", None)
    error = dump.get("ExifTool:Error") or _stderr_error(outcome.stderr)
    if error:
        dump["error"] = str(error)
    elif not dump:
        dump["error"] = "exiftool read nothing from this file"
    return dump


def _stderr_error(stderr: bytes) -> str | None:
    """exiftool's first ``Error:`` line, without the file name it appends."""
    for line in stderr.splitlines():
        if line.startswith(b"Error:"):
            text = line[6:].decode("utf-8", "replace").strip()
            return text.split(" - /", 1)[0].strip() or "exiftool could not read this file"
    return None


def _preview_candidates(listing: bytes) -> list[str]:
    """``group:tag`` names of the embedded images, largest first."""
    try:
        parsed = json.loads(listing.decode("utf-8", "replace") or "[]")
    except ValueError:
        return []
    entry = parsed[0] if isinstance(parsed, list) and parsed and isinstance(parsed[0], dict) else {}
    sizes = []
    for key, value in entry.items():
        match = _BINARY_RE.match(value) if isinstance(value, str) else None
        if match and int(match.group(1)) > 0:
            sizes.append((int(match.group(1)), key))
    return [key for _size, key in sorted(sizes, reverse=True)]

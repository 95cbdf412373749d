"""One writer per root on a machine: a second scanpixd on the same roots is refused.

Two daemons, or a daemon and a one-shot ``scanpixd index``, indexing the same folders would
do the work twice and race on the same sidecars.  Each process therefore holds, per root:

- an exclusive ``flock`` on ``<runtime dir>/locks/<hash of the root>.lock``, holding the
  owner's pid and purpose for the refusal message, and a *shared* lock on the lock file of
  every folder above the root, so nested roots conflict too (``~/Pictures`` against
  ``~/Pictures/2024``);
- an exclusive ``flock`` on the root directory itself, which needs no file at all and so
  also catches an instance of another user (the system unit against a user unit).

Nothing is written into the library: a lock file there would be synced to other machines
by Syncthing and friends, and two machines never share a lock anyway.  ``flock`` locks die
with their process, so a crash or ``kill -9`` never leaves a stale lock behind.

Policy: whoever comes second is refused with :class:`~scanpixd.errors.AlreadyRunning`
naming the pid and the root (``acquire(wait=...)`` waits instead).  ``scanpixd index`` is
refused while the daemon serves the root, since the daemon indexes it already; the daemon
is refused while an index runs, exits with status 75 and systemd starts it again after
``RestartSec=`` (``Restart=on-failure``), so it takes over once the index has finished.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import hashlib
import json
import os
import stat
import time
from collections.abc import Iterable
from pathlib import Path
from types import TracebackType

from scanpixd.config import resolve_path
from scanpixd.errors import AlreadyRunning, ScanpixError

__all__ = ["InstanceLock", "lock_dir"]

_NO_LOCKING = (errno.ENOLCK, errno.EBADF, errno.EOPNOTSUPP, errno.EINVAL, errno.ENOSYS)


def lock_dir(environ: dict[str, str] | None = None) -> Path:
    """Where lock files live: systemd's RuntimeDirectory, else ``$XDG_RUNTIME_DIR/scanpix``."""
    env = dict(os.environ) if environ is None else environ
    if env.get("RUNTIME_DIRECTORY"):
        base = Path(env["RUNTIME_DIRECTORY"].split(":")[0])
    elif env.get("XDG_RUNTIME_DIR"):
        base = Path(env["XDG_RUNTIME_DIR"]) / "scanpix"
    else:
        base = Path(f"/tmp/scanpix-{os.getuid()}")
    return base / "locks"


class InstanceLock:
    """Per-root instance locks for one process; ``purpose`` is "daemon" or "index"."""

    def __init__(self, roots: Iterable[Path], *, purpose: str = "daemon",
                 directory: Path | None = None):
        self.purpose = purpose
        self.directory = directory or lock_dir()
        self._wanted = list(roots)
        self._fds: dict[str, list[int]] = {}  # lock key -> [fd, references]
        self._held: dict[Path, list[str]] = {}  # root -> its lock keys

    @property
    def roots(self) -> list[Path]:
        return list(self._held)

    def acquire(self, wait: float = 0.0) -> None:
        """Lock every root or none; raise AlreadyRunning after ``wait`` seconds of refusals."""
        deadline = time.monotonic() + wait
        while True:
            errors = self.update(self._wanted)
            if not errors:
                return
            self.release()
            if time.monotonic() >= deadline:
                raise errors[0]
            time.sleep(min(0.2, max(deadline - time.monotonic(), 0.01)))

    def update(self, roots: Iterable[Path]) -> list[AlreadyRunning]:
        """Hold exactly ``roots`` (SIGHUP reload); returns the refusals, other roots stay held."""
        self._wanted = list(roots)
        wanted = _outermost(resolve_path(Path(r)) for r in self._wanted)
        _private_dir(self.directory)
        for root in [r for r in self._held if r not in wanted]:
            self._release_root(root)
        errors = []
        for root in wanted:
            if root not in self._held:
                try:
                    self._acquire_root(root)
                except AlreadyRunning as exc:
                    errors.append(exc)
        return errors

    def release(self) -> None:
        for root in list(self._held):
            self._release_root(root)

    def __enter__(self) -> InstanceLock:
        self.acquire()
        return self

    def __exit__(self, et: type[BaseException] | None, ev: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.release()

    # ---- one root

    def _acquire_root(self, root: Path) -> None:
        keys: list[str] = []
        try:
            own = self._file(root)
            keys.append(self._take(own, fcntl.LOCK_EX))
            self._write_owner(own, root)
            for parent in root.parents:
                keys.append(self._take(self._file(parent), fcntl.LOCK_SH))
            key = self._take_dir(root)
            if key:
                keys.append(key)
        except BlockingIOError as exc:
            for key in keys:
                self._drop(key)
            raise self._refusal(root, Path(str(exc.filename))) from None
        self._held[root] = keys

    def _release_root(self, root: Path) -> None:
        for key in self._held.pop(root, []):
            self._drop(key)

    def _file(self, folder: Path) -> Path:
        digest = hashlib.sha256(os.fsencode(str(folder))).hexdigest()[:24]
        return self.directory / f"{digest}.lock"

    def _take(self, path: Path, mode: int) -> str:
        key = str(path)
        if key in self._fds:
            self._fds[key][1] += 1
            return key
        try:
            fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        except OSError as exc:
            raise ScanpixError(f"cannot open the lock file {path}: {exc.strerror}") from exc
        self._lock(fd, mode, path)
        self._fds[key] = [fd, 1]
        return key

    def _take_dir(self, root: Path) -> str | None:
        """Lock the root folder itself; skipped where it cannot be (missing, NFS, no access)."""
        key = f"dir:{root}"
        try:
            fd = os.open(root, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        except OSError:
            return None
        try:
            self._lock(fd, fcntl.LOCK_EX, root)
        except OSError as exc:
            if isinstance(exc, BlockingIOError) or exc.errno not in _NO_LOCKING:
                raise
            return None
        self._fds[key] = [fd, 1]
        return key

    @staticmethod
    def _lock(fd: int, mode: int, path: Path) -> None:
        try:
            fcntl.flock(fd, mode | fcntl.LOCK_NB)
        except OSError as exc:
            os.close(fd)
            if isinstance(exc, BlockingIOError):
                raise BlockingIOError(exc.errno, exc.strerror, str(path)) from None
            raise

    def _drop(self, key: str) -> None:
        entry = self._fds.get(key)
        if entry is None:
            return
        entry[1] -= 1
        if entry[1] <= 0:
            del self._fds[key]
            os.close(entry[0])  # closing the last descriptor releases the flock

    def _write_owner(self, path: Path, root: Path) -> None:
        fd = self._fds[str(path)][0]
        info = {"pid": os.getpid(), "purpose": self.purpose, "root": str(root),
                "since": round(time.time())}
        os.ftruncate(fd, 0)
        os.pwrite(fd, json.dumps(info).encode(), 0)

    # ---- the message

    def _refusal(self, root: Path, blocked: Path) -> AlreadyRunning:
        if blocked == root:  # the root folder itself: an instance of another user
            pids = _holders(blocked)
            who = f"another scanpixd (pid {pids[0]})" if pids else "another scanpixd"
            return _error(f"{who} already serves {root}", pids[0] if pids else None, root)
        owner, pids = _read_owner(blocked), _holders(blocked)
        held = Path(str(owner["root"])) if owner and owner.get("root") else None
        writers = _holders(blocked, exclusive=True)
        current = owner is not None and (not pids or owner.get("pid") in writers)  # not stale
        if owner and current and held is not None and (held == root or held in root.parents):
            pid, purpose = owner.get("pid"), owner.get("purpose", "daemon")
            where = f"{held}" if held == root else f"{held}, which contains {root}"
            hint = ("wait for it to finish" if purpose == "index"
                    else "it indexes these folders already; stop it first to run another")
            return _error(f"scanpixd {purpose} (pid {pid}) already serves {where}; {hint}",
                          pid, root)
        who = f"scanpixd (pid {pids[0]})" if pids else "another scanpixd"
        return _error(f"{who} already serves a folder inside {root}; stop it first",
                      pids[0] if pids else None, root)


def _error(message: str, pid: object, root: Path) -> AlreadyRunning:
    exc = AlreadyRunning(message)
    exc.pid = pid if isinstance(pid, int) else None  # type: ignore[attr-defined]
    exc.root = root  # type: ignore[attr-defined]
    return exc


def _read_owner(path: Path) -> dict[str, object] | None:
    try:
        value = json.loads(path.read_text(encoding="utf-8") or "null")
    except (OSError, ValueError):
        return None
    return value if isinstance(value, dict) else None


def _holders(path: Path, *, exclusive: bool = False) -> list[int]:
    """Pids holding a flock on ``path`` (only exclusive ones if asked), from /proc/locks."""
    try:
        st = os.stat(path)
        lines = Path("/proc/locks").read_text().splitlines()
    except OSError:
        return []
    want = f"{os.major(st.st_dev):02x}:{os.minor(st.st_dev):02x}:{st.st_ino}"
    pids = []
    for line in lines:
        fields = line.split()
        if "->" in fields or len(fields) < 6 or fields[1] != "FLOCK" or fields[5] != want:
            continue
        if exclusive and fields[3] != "WRITE":
            continue
        with contextlib.suppress(ValueError):
            pid = int(fields[4])
            if pid > 0 and pid not in pids:
                pids.append(pid)
    return pids


def _private_dir(path: Path) -> None:
    """Create the lock folder 0700 and refuse one that belongs to somebody else."""
    try:
        path.mkdir(mode=0o700, parents=True, exist_ok=True)
        st = os.stat(path)
    except OSError as exc:
        raise ScanpixError(f"cannot create the lock folder {path}: {exc.strerror}") from exc
    if st.st_uid != os.getuid() or not stat.S_ISDIR(st.st_mode):
        raise ScanpixError(f"lock folder {path} belongs to another user; refusing to use it")



def _outermost(roots: Iterable[Path]) -> list[Path]:
    """Roots without duplicates or roots nested in another (the outer one covers them)."""
    unique = list(dict.fromkeys(roots))
    return [r for r in unique if not any(o in r.parents for o in unique if o != r)]

"""A real daemon on a real socket, a real indexed library, and raw HTTP over Unix sockets.

The API tests run ``scanpixd run`` as a child process against a library indexed with the
real pipeline, talk to it with curl, the Python client and hand-written bytes, and stop it
with SIGTERM, so what they check is what a user's desktop sees.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson
from PIL import Image

from tests.helpers_daemon import UPKEEP_DELAY
from tests.helpers_index import make_photo

START_TIMEOUT = 60.0
STOP_TIMEOUT = 30.0
SECRET = b"SCANPIX-TEST-SECRET-BYTES"


# -- the library -------------------------------------------------------------------------
@dataclass(frozen=True)
class Shot:
    """What one test photo carries in its EXIF."""

    name: str
    seed: int
    taken: str | None = None  # "2023:06:01 10:00:00"
    camera: tuple[str, str] | None = None  # (make, model)
    gps: tuple[float, float] | None = None


ALBUMS: dict[str, list[Shot]] = {
    "2022 winter": [
        Shot("IMG_0001.jpg", 1, "2022:01:15 09:00:00", ("NIKON", "COOLPIX P6000")),
        Shot("IMG_0002.jpg", 2, "2022:01:15 09:30:00", ("NIKON", "COOLPIX P6000")),
        Shot("IMG_0003.jpg", 3, "2022:02:01 12:00:00", ("Canon", "Canon EOS 5D")),
    ],
    "2023 venice": [
        Shot("IMG_0101.jpg", 11, "2023:06:01 10:00:00", ("Canon", "Canon EOS 5D"), (45.4340, 12.3380)),
        Shot("IMG_0102.jpg", 12, "2023:06:01 10:05:00", ("Canon", "Canon EOS 5D"), (45.4371, 12.3326)),
        Shot("IMG_0103.jpg", 13, "2023:06:02 18:00:00", ("Apple", "iPhone 12"), (45.4408, 12.3155)),
    ],
    "misc": [
        Shot("scan-01.jpg", 21),
        Shot("scan-02.png", 22),
    ],
}


@dataclass
class ApiLibrary:
    """An indexed library: its root, the files by name, and what lies outside it."""

    root: Path
    files: dict[str, Path]
    outside: Path  # a folder beside the root, never served
    secret: Path  # a file outside the root whose bytes must never come back
    extras: dict[str, Path] = field(default_factory=dict)


def write_shot(path: Path, shot: Shot) -> Path:
    fmt = "PNG" if path.suffix == ".png" else "JPEG"
    make_photo(path, shot.seed, fmt=fmt)
    if fmt == "JPEG" and (shot.taken or shot.camera or shot.gps):
        with Image.open(path) as im:
            im.load()
            exif = Image.Exif()
            if shot.camera:
                exif[0x010F], exif[0x0110] = shot.camera
            if shot.taken:
                exif.get_ifd(0x8769)[0x9003] = shot.taken
            if shot.gps:
                gps = exif.get_ifd(0x8825)
                lat, lon = shot.gps
                gps[1], gps[2] = ("N" if lat >= 0 else "S"), _dms(abs(lat))
                gps[3], gps[4] = ("E" if lon >= 0 else "W"), _dms(abs(lon))
            im.save(path, "JPEG", exif=exif, quality=90)
    return path


def _dms(value: float) -> tuple[float, float, float]:
    degrees = int(value)
    minutes = int((value - degrees) * 60)
    seconds = round(((value - degrees) * 60 - minutes) * 60, 4)
    return (float(degrees), float(minutes), seconds)


def build_library(base: Path) -> ApiLibrary:
    """Photos with dates, cameras and places, an exact copy, and hostile neighbours.

    ``outside/`` (beside the root) holds a secret file and a real photo; inside the root a
    symlinked file and a symlinked folder point there, as a hostile sync could leave them.
    """
    root = base / "library"
    files: dict[str, Path] = {}
    for album, shots in ALBUMS.items():
        for shot in shots:
            files[shot.name] = write_shot(root / album / shot.name, shot)
    copy = root / "misc" / "IMG_0101 copy.jpg"
    shutil.copy2(files["IMG_0101.jpg"], copy)
    files[copy.name] = copy
    outside = base / "outside"
    outside.mkdir()
    secret = outside / "secret.webp"
    secret.write_bytes(b"RIFF\x20\x00\x00\x00WEBPVP8 " + SECRET)  # looks like a WebP thumbnail
    outside_photo = make_photo(outside / "outside.jpg", seed=99)
    links = root / "links"
    links.mkdir()
    (links / "elsewhere.jpg").symlink_to(outside_photo)
    (links / "elsewhere-dir").symlink_to(outside, target_is_directory=True)
    return ApiLibrary(root, files, outside, secret, {"outside_photo": outside_photo})


def write_daemon_config(path: Path, roots: Sequence[Path], sock: Path, extra: str = "",
                        clip: str = "") -> Path:
    """A config for the daemon and the CLI: these roots, this socket, models off unless ``clip``."""
    root_list = ", ".join(f'"{r}"' for r in roots)
    clip_table = clip or "[clip]\nenabled = false\n"
    path.write_text(f'roots = [{root_list}]\njobs = 2\n{extra}\n[daemon]\nsocket = "{sock}"\n'
                    f"debounce = 0.2\nupkeep_delay = {UPKEEP_DELAY}\n{clip_table}\n"
                    "[faces]\nenabled = false\n", encoding="utf-8")
    return path


def tiny_clip_table(config: Path, checkpoint: Path, similar_floor: float = 0.5) -> str:
    return (f'[clip]\nenabled = true\nmodel = "{config}"\npretrained = "{checkpoint}"\n'
            f"download = false\nidle_unload = 0.0\nbatch_size = 8\nsimilar_floor = {similar_floor}\n")


def index_library(config: Path, env: dict[str, str]) -> dict[str, Any]:
    """``scanpixd index`` once over the configured roots, as a user would run it."""
    out = subprocess.run([sys.executable, "-m", "scanpixd", "index", "--config", str(config), "--json"],
                         env=env, capture_output=True, timeout=300)
    assert out.returncode == 0, out.stderr.decode(errors="replace")
    summary: dict[str, Any] = orjson.loads(out.stdout.splitlines()[-1])
    return summary


def isolated_env(base: Path, **extra: str) -> dict[str, str]:
    """The environment a child process gets: XDG folders under ``base``, no SCANPIX_* leaks."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("SCANPIX_")}
    for name in ("config", "cache", "runtime", "data"):
        folder = base / f"xdg-{name}"
        folder.mkdir(parents=True, exist_ok=True)
        env[f"XDG_{name.upper()}_HOME" if name != "runtime" else "XDG_RUNTIME_DIR"] = str(folder)
    env.update(extra)
    return env


# -- the daemon --------------------------------------------------------------------------
class Daemon:
    """``scanpixd run`` as a child process, ready once its socket answers ``/v1/status``."""

    def __init__(self, config: Path, sock: Path, env: dict[str, str], log: Path):
        self.config, self.sock, self.env, self.log_path = config, sock, env, log
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> Daemon:
        with self.log_path.open("wb") as log:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "scanpixd", "run", "--config", str(self.config)],
                env=self.env, stdout=log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + START_TIMEOUT
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise AssertionError(f"daemon exited with {self.process.returncode}:\n{self.log()}")
            status = self.status_or_none()
            if status is not None and status.get("loaded"):
                return self
            time.sleep(0.1)
        self.kill()
        raise AssertionError(f"daemon did not answer on {self.sock} in time:\n{self.log()}")

    def status_or_none(self) -> dict[str, Any] | None:
        try:
            reply = request(self.sock, b"GET /v1/status HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
                            timeout=2.0)
        except OSError:
            return None
        return reply.json() if reply.status == 200 else None

    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def stop(self) -> int:
        """SIGTERM, as systemd stops it; the exit status."""
        assert self.process is not None
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
        try:
            return self.process.wait(timeout=STOP_TIMEOUT)
        except subprocess.TimeoutExpired:
            self.kill()
            raise AssertionError(f"daemon ignored SIGTERM:\n{self.log()}") from None

    def kill(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait(timeout=10)

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def wait_idle(self, timeout: float = 60.0) -> dict[str, Any]:
        """Status once the startup reconcile has run and nothing is queued."""
        deadline = time.monotonic() + timeout
        status: dict[str, Any] = {}
        while time.monotonic() < deadline:
            status = self.status_or_none() or {}
            work = status.get("work") or {}
            queue = work.get("queue") or {}
            if work.get("reconciles", 0) >= 1 and not work.get("busy") and not any(queue.values()):
                return status
            time.sleep(0.2)
        raise AssertionError(f"daemon still busy: {status}")



@contextlib.contextmanager
def running(config: Path, sock: Path, env: dict[str, str], log: Path) -> Iterator[Daemon]:
    """A started daemon, stopped with SIGTERM afterwards (and checked to exit cleanly)."""
    daemon = Daemon(config, sock, env, log).start()
    try:
        yield daemon
    finally:
        code = daemon.stop()
        assert code == 0, f"daemon exited with {code}:\n{daemon.log()}"
        assert not sock.exists(), "the socket was left behind"


# -- raw HTTP ----------------------------------------------------------------------------
@dataclass
class Reply:
    status: int
    reason: str
    headers: dict[str, str]
    body: bytes

    def json(self) -> Any:
        return orjson.loads(self.body)


def connect(sock: Path, timeout: float = 10.0) -> socket.socket:
    """A connected socket; the connect itself blocks, as a Unix socket with a timeout would not."""
    client = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    client.connect(str(sock))
    client.settimeout(timeout)
    return client


def request(sock: Path, data: bytes, timeout: float = 10.0, half_close: bool = True) -> Reply:
    """Send raw bytes, read until the server closes, parse the first response."""
    with connect(sock, timeout) as client:
        client.sendall(data)
        if half_close:
            client.shutdown(socket.SHUT_WR)
        return parse_reply(read_all(client))


def read_all(client: socket.socket) -> bytes:
    chunks: list[bytes] = []
    while True:
        chunk = client.recv(65536)
        if not chunk:
            return b"".join(chunks)
        chunks.append(chunk)


def parse_reply(raw: bytes) -> Reply:
    """The first HTTP response in ``raw`` (its body cut at Content-Length)."""
    head, sep, rest = raw.partition(b"\r\n\r\n")
    assert sep, f"no complete HTTP response in {raw[:200]!r}"
    lines = head.decode("latin-1").split("\r\n")
    version, status, reason = (lines[0].split(" ", 2) + [""])[:3]
    assert version == "HTTP/1.1", f"bad status line {lines[0]!r}"
    headers = {}
    for line in lines[1:]:
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()
    length = int(headers.get("content-length", len(rest)))
    return Reply(int(status), reason, headers, rest[:length])


def get(path: str, *headers: str) -> bytes:
    """A GET request's bytes, closing the connection after it."""
    extra = "".join(f"{h}\r\n" for h in headers)
    return f"GET {path} HTTP/1.1\r\nHost: localhost\r\n{extra}Connection: close\r\n\r\n".encode()


def post(path: str, body: bytes, content_type: str = "application/json") -> bytes:
    return (f"POST {path} HTTP/1.1\r\nHost: localhost\r\nContent-Type: {content_type}\r\n"
            f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n").encode() + body


def assert_json_error(reply: Reply, status: int) -> str:
    """``reply`` is the API's JSON error with ``status``; its message."""
    assert reply.status == status, (reply.status, reply.body[:300])
    assert reply.headers.get("content-type") == "application/json", reply.headers
    error = reply.json()["error"]
    assert error["status"] == status
    assert isinstance(error["message"], str) and error["message"]
    return str(error["message"])


def curl(sock: Path, url: str, *args: str) -> tuple[int, bytes]:
    """curl --unix-socket; (HTTP status, body)."""
    out = subprocess.run(["curl", "-sS", "--unix-socket", str(sock), "-o", "-", "-w", "\n%{http_code}",
                          *args, f"http://localhost{url}"], capture_output=True, timeout=60)
    assert out.returncode == 0, out.stderr.decode(errors="replace")
    body, _, code = out.stdout.rpartition(b"\n")
    return int(code), body


# -- the command line --------------------------------------------------------------------
def console_script(name: str) -> str:
    """The installed console script (``pip install -e .``): beside this interpreter, else on PATH."""
    beside = Path(sys.executable).parent / name
    found = str(beside) if beside.is_file() else shutil.which(name)
    assert found, f"{name} is not on PATH: run `pip install -e .`"
    return found


def scripts_path(env: dict[str, str], *first: Path) -> str:
    """A PATH with ``first`` folders, then the console scripts' folder, then the usual one."""
    scripts = Path(console_script("scanpix-query")).parent
    return os.pathsep.join([*map(str, first), str(scripts), env.get("PATH", os.defpath)])


def scanpix_query(*args: str, env: dict[str, str], cwd: Path | None = None,
                  timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run([console_script("scanpix-query"), *args], env=env, cwd=cwd,
                          capture_output=True, text=True, timeout=timeout)

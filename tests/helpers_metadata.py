"""Real files and real processes for the metadata tests: JPEGs tagged by exiftool itself,
a stand-in exiftool that stalls on one file, and the reference dumps that ship with the
metadata-extractor corpus."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from PIL import Image

from scanpixd.config import ExiftoolSettings, Settings
from scanpixd.pipeline.base import Job
from scanpixd.pipeline.exiftool import ExifToolService
from scanpixd.record import new_record
from scanpixd.store import Store

MALFORMED_DIRS = ("exif-samples/jpg/invalid", "exif-samples/jpg/tests")
RAW_STUBS = ("CanonRaw.cr2", "CanonRaw.cr3", "CanonRaw.crw", "DNG.dng", "FujiFilm.raf",
             "KyoceraRaw.raw", "Minolta.mrw", "Nikon.nef", "Panasonic.rw2", "PhaseOne.iiq",
             "Sigma.x3f")


@contextmanager
def running_service(timeout: float = 20.0, path: str = "exiftool") -> Iterator[ExifToolService]:
    service = ExifToolService(ExiftoolSettings(path=path, timeout=timeout))
    try:
        yield service
    finally:
        service.close()


def make_jpeg(path: Path, size: tuple[int, int] = (64, 48), model: str | None = None) -> Path:
    """A small JPEG, with an EXIF camera model when ``model`` is given."""
    exif = Image.Exif()
    if model is not None:
        exif[0x0110] = model
    Image.new("RGB", size, (200, 120, 40)).save(path, "JPEG", quality=85, exif=exif)
    return path


def write_tags(path: Path | bytes, *assignments: str) -> None:
    """Tag a file as a user would, with exiftool on the command line."""
    target = path if isinstance(path, bytes) else os.fsencode(path)
    subprocess.run(["exiftool", "-q", "-overwrite_original", *assignments, target],
                   check=True, capture_output=True, timeout=60)


def malformed_files(corpora: Path) -> list[Path]:
    files = [p for d in MALFORMED_DIRS for p in sorted((corpora / d).iterdir())
             if p.suffix.lower() in (".jpg", ".jpeg")]
    assert len(files) == 19, files
    return files


def stalling_exiftool(tmp_path: Path, marker: str = "STALLS-HERE",
                      crash_marker: str = "CRASHES-HERE") -> Path:
    """An ``exiftool`` that misbehaves on files named ``*marker*`` or ``*crash_marker*``.

    It passes every argument line on to the real exiftool until it meets one naming such a
    file; then it stops answering (what the service sees when exiftool hangs on a hostile
    file) or dies (as when exiftool crashes on one).
    """
    script = tmp_path / "stalling-exiftool"
    script.write_text(
        f"#!{sys.executable}\n"
        "import os, subprocess, sys, time\n"
        "real = subprocess.Popen(['exiftool', *sys.argv[1:]], stdin=subprocess.PIPE)\n"
        "for line in sys.stdin.buffer:\n"
        f"    if {marker.encode()!r} in line:\n"
        "        time.sleep(3600)\n"
        f"    if {crash_marker.encode()!r} in line:\n"
        "        real.kill()\n"
        "        os._exit(70)\n"
        "    real.stdin.write(line)\n"
        "    real.stdin.flush()\n"
    )
    script.chmod(0o755)
    return script


def process_running(pid: int) -> bool:
    """True while ``pid`` exists and is not a zombie."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] not in ("Z", "X")


def wait_gone(pid: int, seconds: float = 10.0) -> bool:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if not process_running(pid):
            return True
        time.sleep(0.05)
    return False


def group_members(pgid: int) -> list[int]:
    """Live processes in process group ``pgid``."""
    members = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[2]) == pgid and fields[0] not in ("Z", "X"):
            members.append(int(entry.name))
    return members


def make_job(path: Path, settings: Settings, metadata: dict | None = None) -> Job:
    stat = path.stat()
    record = new_record(path.name, stat.st_size, stat.st_mtime_ns, "b2:" + "0" * 32)
    folder = Store(settings).folder(path.parent)
    return Job(path=path, folder=folder, record=record, metadata=metadata)


# -- metadata-extractor's reference dumps ------------------------------------------------------
_DMS_RE = re.compile(r"(-?\d+(?:\.\d+)?)° (\d+(?:\.\d+)?)' (\d+(?:\.\d+)?)\"")


def reference_dump(txt: Path) -> dict[str, str]:
    """``{"[Directory] Tag Name": value}`` from a metadata-extractor ``*.txt`` dump."""
    found: dict[str, str] = {}
    for line in txt.read_text(encoding="utf-8", errors="replace").splitlines():
        match = re.match(r"^\[(.+?) - 0x[0-9a-f]+\] (.+?) = (.*)$", line)
        if match:
            found.setdefault(f"[{match.group(1)}] {match.group(2)}", match.group(3))
    return found


def reference_degrees(dms: str | None, ref: str | None) -> float | None:
    """Signed decimal degrees from ``41° 51' 10.8"`` and its N/S/E/W ref."""
    match = _DMS_RE.match(dms or "")
    if not match:
        return None
    d, m, s = (float(g) for g in match.groups())
    value = abs(d) + m / 60 + s / 3600
    return -value if d < 0 or (ref or "").strip() in ("S", "W") else value

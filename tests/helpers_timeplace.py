"""Records for the time and place tests: from real files read by exiftool, or made by hand.

``read_records`` fills ``record["metadata"]`` the way the metadata stage documents it
(taken_local, offset, taken_utc, gps, make, model), but keeps every GPS value as the file
has it, 0/0 and broken ones included, so the rejection under test is ours.
"""

from __future__ import annotations

import json
import shutil
import subprocess
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import pytest

from scanpixd.config import Settings
from scanpixd.pipeline.base import Job, run_stage
from scanpixd.pipeline.place import PlaceStage
from scanpixd.pipeline.services import Services
from scanpixd.record import Record, new_record
from scanpixd.store import Store

CORPORA = Path(__file__).resolve().parents[1].parent / "shared" / "corpora"

# Folders whose geotagged files the place tests know by heart (read non-recursively).
PLACE_FOLDERS = (
    "exif-samples/jpg/gps", "exif-samples/jpg/mobile", "exif-samples/jpg/hdr",
    "metadata-extractor-images/jpg", "metadata-extractor-images/mov",
    "metadata-extractor-images/mp4", "metadata-extractor-images/webp",
)

TAGS = ("-DateTimeOriginal", "-OffsetTimeOriginal", "-QuickTime:CreateDate", "-CreationDate",
        "-GPSLatitude", "-GPSLongitude", "-GPSAltitude", "-Make", "-Model")


def corpus_root() -> Path:
    if not CORPORA.is_dir():
        pytest.skip("the shared corpora are not beside the project")
    return CORPORA


def exiftool() -> str:
    tool = shutil.which("exiftool")
    if tool is None:
        pytest.fail("exiftool is not installed (Debian: libimage-exiftool-perl)")
    return tool


def read_records(paths: Iterable[Path]) -> dict[Path, Record]:
    """One record per file, with ``metadata`` read by one exiftool run."""
    paths = list(paths)
    out = subprocess.run(
        [exiftool(), "-q", "-q", "-j", "-n", "-G0", *TAGS, *map(str, paths)],
        capture_output=True, text=True, timeout=120,
    )
    entries = json.loads(out.stdout or "[]")
    by_path = {Path(e["SourceFile"]): e for e in entries}
    records = {}
    for path in paths:
        record = new_record(path.name, path.stat().st_size, path.stat().st_mtime_ns, "b2:0")
        record["metadata"] = metadata_of(by_path.get(path, {}))
        records[path] = record
    return records


def metadata_of(entry: dict[str, Any]) -> dict[str, Any]:
    creation = _text(entry.get("QuickTime:CreationDate"))  # "2019:07:24 11:25:40+03:00"
    original = _text(entry.get("EXIF:DateTimeOriginal"))
    local = _iso(original) or _iso(creation)
    offset = _text(entry.get("EXIF:OffsetTimeOriginal"))
    if offset is None and original is None and creation and len(creation) > 19:
        offset = creation[19:25]
    quicktime = _iso(_text(entry.get("QuickTime:CreateDate")))
    lat = entry.get("Composite:GPSLatitude", entry.get("EXIF:GPSLatitude"))
    lon = entry.get("Composite:GPSLongitude", entry.get("EXIF:GPSLongitude"))
    alt = entry.get("Composite:GPSAltitude")
    make = entry.get("EXIF:Make", entry.get("QuickTime:Make"))
    model = entry.get("EXIF:Model", entry.get("QuickTime:Model"))
    return {
        "taken_local": local[:19] if local else None,
        "offset": offset,
        "taken_utc": quicktime[:19] + "Z" if quicktime else None,
        "gps": {"lat": lat, "lon": lon, "alt": alt} if lat is not None or lon is not None else None,
        "make": make, "model": model,
    }


def _text(value: Any) -> str | None:
    return value if isinstance(value, str) and value.strip() else None


def _iso(value: str | None) -> str | None:
    """exiftool's "2008:10:22 16:28:39" as "2008-10-22T16:28:39"."""
    if not value or len(value) < 19 or value.startswith("0000"):
        return None
    return f"{value[0:4]}-{value[5:7]}-{value[8:10]}T{value[11:19]}"


def make_record(local: str | None = None, offset: str | None = None, utc: str | None = None,
                gps: tuple[float, float] | None = None, camera: str = "NIKON COOLPIX P6000",
                name: str = "x.jpg") -> Record:
    """A record whose metadata says exactly what a test needs."""
    make, _, model = camera.partition(" ")
    record = new_record(name, 1, 1, "b2:0")
    record["metadata"] = {
        "taken_local": local, "offset": offset, "taken_utc": utc,
        "gps": {"lat": gps[0], "lon": gps[1], "alt": None} if gps else None,
        "make": make or None, "model": model or None,
    }
    return record


def place_records(records: dict[Path, Record], settings: Settings, tmp: Path) -> None:
    """Run the real place stage over records (as the pipeline would, after metadata)."""
    stage = PlaceStage(Services(settings))
    folder = Store(settings).folder(tmp)
    for path, record in records.items():
        if stage.applies(record):
            assert run_stage(stage, Job(path, folder, record)), record.get("errors")


def write_tags(path: Path, *args: str) -> None:
    """Write tags into a file in place with exiftool (``"-GPS:all="``, ``"-DateTimeOriginal=…"``)."""
    subprocess.run([exiftool(), "-q", "-overwrite_original", *args, str(path)], check=True,
                   capture_output=True, timeout=60)

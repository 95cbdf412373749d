"""Building real records for duplicate tests: the media stage, then hashes and quality."""

from __future__ import annotations

import io
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from scanpixd.config import Settings
from scanpixd.duplicates import DuplicateItem
from scanpixd.pipeline.base import Job, run_stage
from scanpixd.pipeline.hashes import HashesStage
from scanpixd.pipeline.media import MediaStage
from scanpixd.pipeline.quality import QualityStage
from scanpixd.pipeline.services import Services
from scanpixd.record import Record, new_record
from scanpixd.scan import content_hash
from scanpixd.store import FolderStore


class RecordMaker:
    """Runs the cheap stages a duplicate search needs on real files."""

    def __init__(self, settings: Settings, scratch: Path):
        self.services = Services(settings)
        self.stages = [MediaStage(self.services), HashesStage(self.services),
                       QualityStage(self.services)]
        self.scratch = scratch

    def record(self, path: Path, **extra: Any) -> Record:
        stat = path.stat()
        record = new_record(path.name, stat.st_size, stat.st_mtime_ns, content_hash(path))
        data = self.scratch / ".scanpix"
        job = Job(path, FolderStore(path.parent, data, [data]), record)
        for stage in self.stages:
            assert run_stage(stage, job), record.get("errors")
        record.update(extra)
        return record

    def items(self, paths: Iterable[Path], **extra: Any) -> list[DuplicateItem]:
        return [DuplicateItem(self.record(p, **extra), p) for p in paths]

    def close(self) -> None:
        self.services.close()


def taken(local: str, model: str = "TestCam") -> dict[str, Any]:
    """Record fields of a capture time (local, no zone) and camera, as the metadata stage
    writes them."""
    return {"metadata": {"taken_local": local, "make": "Test", "model": model}}


def save_jpeg(image: Image.Image, path: Path, quality: int = 90) -> Path:
    image.convert("RGB").save(path, "JPEG", quality=quality)
    return path


def reencode(image: Image.Image, fmt: str, quality: int) -> Image.Image:
    buffer = io.BytesIO()
    image.save(buffer, fmt, quality=quality)
    buffer.seek(0)
    with Image.open(buffer) as decoded:
        return decoded.convert("RGB")


def groups_as_names(groups: Iterable[Any]) -> list[tuple[str, set[str]]]:
    return [(g.kind, {Path(m.path).name for m in g.members}) for g in groups]


def exif_taken(path: Path) -> dict[str, Any]:
    """Capture time (with sub-seconds) and camera read with Pillow, in the record fields the
    metadata stage writes; empty when the file carries none."""
    with Image.open(path) as im:
        exif = im.getexif()
        sub = exif.get_ifd(0x8769)
    when = str(sub.get(36867) or "")[:19]
    if len(when) != 19:
        return {}
    local = when[:10].replace(":", "-") + "T" + when[11:]
    fraction = str(sub.get(37521) or "").strip()
    if fraction.isdigit():
        local += "." + fraction
    return {"metadata": {"taken_local": local, "make": exif.get(271), "model": exif.get(272)}}


class HashMaker:
    """Records with made-up hashes, to test grouping where real photos cannot reach."""

    def __init__(self, seed: int = 7):
        self.rng = np.random.default_rng(seed)
        self.count = 0

    def bits(self, n: int) -> np.ndarray:
        return self.rng.integers(0, 2, n, dtype=np.uint8)

    def flip(self, bits: np.ndarray, k: int) -> np.ndarray:
        out = bits.copy()
        where = self.rng.choice(bits.size, k, replace=False)
        out[where] ^= 1
        return out

    def photo(self) -> dict[str, Any]:
        """Fresh random hashes (an unrelated photo)."""
        return {"phash": self.bits(256), "dhash": self.bits(256), "phash8": self.bits(64),
                "dhash8": self.bits(64)}

    def variant(self, of: dict[str, Any], fine: int, coarse: int = 0) -> dict[str, Any]:
        """Hashes ``fine`` bits (256-bit ones) and ``coarse`` bits (64-bit) away from ``of``."""
        return {"phash": self.flip(of["phash"], fine), "dhash": self.flip(of["dhash"], fine),
                "phash8": self.flip(of["phash8"], coarse),
                "dhash8": self.flip(of["dhash8"], coarse)}

    def item(self, hashes: dict[str, Any], detail: float = 10.0, **extra: Any) -> DuplicateItem:
        self.count += 1
        text = {k: np.packbits(v).tobytes().hex() for k, v in hashes.items()}
        record: Record = {"name": f"p{self.count}.jpg", "hash": f"b2:{self.count:032x}",
                          "mtime_ns": self.count, "media": {"kind": "image"},
                          "hashes": dict(text, detail=detail)}
        record.update(extra)
        return DuplicateItem(record, Path(f"/photos/p{self.count}.jpg"))

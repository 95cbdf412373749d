"""Building real records for duplicate tests: the media stage, then hashes and quality."""

from __future__ import annotations

import io
from collections.abc import Iterable
from pathlib import Path
from typing import Any

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

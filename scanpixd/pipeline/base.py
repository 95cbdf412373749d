"""The stage framework: a stage turns (file, record so far) into new record fields.

Each stage owns the record key of its name and has a version key (its version, plus the
model id for model stages).  ``record["stages"][name]`` holds the key the stage last ran
with, so bumping a version makes exactly that stage stale.  Stages run in tiers::

    CHEAP       sniff/decode, metadata, thumbnails, hashes: the library is browsable
    BACKGROUND  video previews: I/O and CPU heavy, nobody waits on them
    MODEL       faces and CLIP: slow, low priority, may be unavailable

A failed stage records its reason in ``record["errors"]`` and is not retried until the
file or the stage version changes.  If the *media* stage fails, the whole file is
recorded as failed.
"""

from __future__ import annotations

import enum
import logging
from abc import ABC, abstractmethod
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

from PIL import Image

from scanpixd.errors import ModelUnavailable, NotMedia, ScanpixError
from scanpixd.record import Record
from scanpixd.store import FolderStore

log = logging.getLogger(__name__)


class Tier(enum.IntEnum):
    CHEAP = 0
    BACKGROUND = 1
    MODEL = 2


@dataclass
class Job:
    """One file on its way through the stages.

    ``image`` is the decoded picture (EXIF orientation applied, sRGB, reduced to at most
    the working size); the media stage sets it, or :meth:`working_image` loads it from
    the largest thumbnail so model stages never decode the original a second time.
    ``metadata`` is the raw exiftool dump fetched in a batch before the job starts.
    """

    path: Path
    folder: FolderStore
    record: Record
    metadata: dict[str, Any] | None = None
    image: Image.Image | None = None
    scratch: dict[str, Any] = field(default_factory=dict)  # shared between stages of one run

    def working_image(self) -> Image.Image | None:
        if self.image is not None:
            return self.image
        thumbs = self.record.get("thumbs") or {}
        if not thumbs:
            return None
        try:
            largest = max(thumbs, key=lambda size: int(size))
            with Image.open(self.folder.asset_path(thumbs[largest])) as im:
                im.load()
                self.image = im.convert("RGB")
        except (OSError, ValueError):
            return None
        return self.image


class Stage(ABC):
    name: ClassVar[str]
    version: ClassVar[int]
    tier: ClassVar[Tier] = Tier.CHEAP

    def version_key(self) -> int | str:
        """What ``record["stages"][name]`` must equal for this stage's output to be current."""
        return self.version

    def applies(self, record: Record) -> bool:
        """Whether the stage has anything to do for this kind of file."""
        return True

    def is_current(self, record: Record) -> bool:
        return record.get("stages", {}).get(self.name) == self.version_key()

    def is_ready(self) -> bool:
        """False while the stage's model cannot be loaded (the stage then waits, not fails)."""
        return True

    @abstractmethod
    def run(self, job: Job) -> None:
        """Compute this stage's fields into ``job.record[self.name]``; raise to fail."""

    def run_batch(self, jobs: Sequence[Job]) -> None:
        """Batched form for model stages; by default one job at a time."""
        for job in jobs:
            run_stage(self, job)


def pending(stages: Iterable[Stage], record: Record, tier: Tier | None = None) -> list[Stage]:
    """Stages that still have work on ``record`` (optionally only those of one tier)."""
    if record.get("status") in ("failed", "skipped"):
        return []
    return [
        s for s in stages
        if (tier is None or s.tier == tier) and s.applies(record) and not s.is_current(record)
    ]


def run_stage(stage: Stage, job: Job) -> bool:
    """Run one stage on one job, recording success or the reason for failure."""
    record = job.record
    try:
        stage.run(job)
    except ModelUnavailable:
        raise
    except Exception as exc:  # a bad file must never stop the run
        reason = describe_error(exc)
        log.debug("%s: %s failed: %s", job.path, stage.name, reason, exc_info=True)
        mark_failed(record, stage, reason, skipped=isinstance(exc, NotMedia))
        return False
    record.setdefault("stages", {})[stage.name] = stage.version_key()
    record.setdefault("errors", {}).pop(stage.name, None)
    return True


def mark_failed(record: Record, stage: Stage, reason: str, skipped: bool = False) -> None:
    """Record why ``stage`` failed; a media failure fails (or, for non-media, skips) the file."""
    record.setdefault("stages", {})[stage.name] = stage.version_key()
    record.setdefault("errors", {})[stage.name] = reason
    if stage.name == "media":
        record["status"] = "skipped" if skipped else "failed"
        record["error"] = reason


def describe_error(exc: BaseException) -> str:
    text = str(exc).strip() or type(exc).__name__
    if len(text) > 300:
        text = text[:297] + "..."
    if type(exc).__name__ not in text and not isinstance(exc, OSError | ValueError | ScanpixError):
        text = f"{type(exc).__name__}: {text}"
    return text


def run_stages(stages: Sequence[Stage], job: Job, tier: Tier | None = None) -> list[str]:
    """Run every pending stage on ``job`` in order; returns the names of the stages run.

    Whether a stage applies is decided just before it runs, since it may depend on what
    an earlier stage of the same run found (the media kind, a GPS position).
    """
    done = []
    for stage in stages:
        if job.record.get("status") != "ok":
            break
        if tier is not None and stage.tier != tier:
            continue
        if not pending([stage], job.record) or not stage.is_ready():
            continue
        run_stage(stage, job)
        done.append(stage.name)
    return done

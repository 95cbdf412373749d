"""Runs the pipeline over the work a reconcile found, tier by tier.

Cheap stages run first for every file (several worker threads; exiftool metadata is
fetched a batch at a time by one long-lived process while the workers decode), so a
big import is browsable quickly; video previews follow, then the model stages in
batches.  Each record is written atomically as soon as a tier is done with it, so an
interrupted run loses at most the files in flight and a rerun resumes.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import CancelledError, Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from scanpixd.config import Settings
from scanpixd.errors import ModelUnavailable
from scanpixd.pipeline import Job, Services, Stage, Tier, build_stages, pending, run_stages
from scanpixd.pipeline.base import run_stage
from scanpixd.pipeline.sniff import sniff
from scanpixd.record import Record, new_record
from scanpixd.scan import Plan, WorkItem, reconcile
from scanpixd.store import FolderStore, Store
from scanpixd.upkeep import finish_passes

log = logging.getLogger(__name__)

ProgressFn = Callable[[str, int, int], None]  # (phase, done, total)


@dataclass
class Summary:
    indexed: int = 0
    unchanged: int = 0
    moved: int = 0
    copied: int = 0
    removed: int = 0
    failed: int = 0
    skipped: int = 0  # files that turned out not to be media at all
    updated: int = 0  # files whose newer stages ran (model work, a stage version bump)
    offline_roots: list[Path] = field(default_factory=list)
    unavailable: dict[str, str] = field(default_factory=dict)  # stage -> why it could not run
    interrupted: bool = False
    seconds: float = 0.0

    @property
    def did_work(self) -> bool:
        return bool(self.indexed or self.moved or self.copied or self.removed or self.updated)

    def line(self) -> str:
        parts = [f"indexed {self.indexed}", f"unchanged {self.unchanged}", f"moved {self.moved}",
                 f"removed {self.removed}", f"failed {self.failed}"]
        if self.skipped:
            parts.append(f"not media {self.skipped}")
        if self.copied:
            parts.insert(3, f"copied {self.copied}")
        if self.updated:
            parts.insert(1, f"updated {self.updated}")
        text = ", ".join(parts) + f" in {self.seconds:.1f} s"
        if not self.did_work and not self.interrupted:
            text = "nothing to do, " + text
        return text

    def to_dict(self) -> dict[str, Any]:
        return {
            "indexed": self.indexed, "unchanged": self.unchanged, "moved": self.moved,
            "copied": self.copied, "removed": self.removed, "failed": self.failed, "skipped": self.skipped,
            "updated": self.updated, "offline_roots": [str(r) for r in self.offline_roots],
            "unavailable": self.unavailable, "interrupted": self.interrupted,
            "seconds": round(self.seconds, 3),
        }


class Indexer:
    def __init__(
        self,
        settings: Settings,
        store: Store | None = None,
        services: Services | None = None,
        stages: list[Stage] | None = None,
        jobs: int | None = None,
        progress: ProgressFn | None = None,
        stop: threading.Event | None = None,
    ):
        self.settings = settings
        self.store = store or Store(settings)
        self.services = services or Services(settings)
        self.stages = stages if stages is not None else build_stages(self.services)
        self.jobs = max(1, jobs or settings.jobs)
        self.progress = progress or (lambda phase, done, total: None)
        self.stop = stop or threading.Event()

    # -- whole runs -----------------------------------------------------------------
    def index(self, roots: Sequence[Path]) -> Summary:
        started = time.monotonic()
        summary = Summary()
        plan = reconcile(list(roots), self.settings, self.store, self.stages, hash_workers=self.jobs)
        summary.unchanged, summary.moved = plan.unchanged, plan.moved
        summary.copied, summary.removed = plan.copied, plan.removed
        summary.offline_roots = plan.offline_roots
        summary.failed += len(plan.unreadable)
        for path, reason in plan.unreadable:
            log.warning("%s: cannot read: %s", path, reason)
        self.process(plan.work, summary)
        if not self.stop.is_set():
            self.finish(plan, list(roots))
        summary.interrupted = self.stop.is_set()
        summary.seconds = time.monotonic() - started
        return summary

    def process(self, items: Sequence[WorkItem], summary: Summary) -> None:
        """Every tier for ``items``: cheap first for all, then previews, then models."""
        self.run_cheap(items, summary)
        summary.updated += sum(1 for item in items if item.reason == "stale")
        keys = [(item.folder, item.name) for item in items]
        if not self.stop.is_set():
            self.run_later(keys, Tier.BACKGROUND, summary)
        if not self.stop.is_set():
            self.run_later(keys, Tier.MODEL, summary)

    def finish(self, plan: Plan, roots: list[Path]) -> None:
        """Library-wide passes after a run: orphans swept, times inferred, vector indexes;
        each only where what it reads changed since it last ran (see scanpixd.upkeep)."""
        finish_passes(plan.folders, roots, self.settings, self.model_id(), self.progress)

    def model_id(self) -> str | None:
        """The CLIP model's id when the embedding stage is on and its model can be named."""
        if not any(s.name == "clip" for s in self.stages):
            return None
        try:
            return self.services.clip.model_id
        except ModelUnavailable:
            return None

    # -- cheap tier -----------------------------------------------------------------
    def run_cheap(self, items: Sequence[WorkItem], summary: Summary) -> None:
        """The cheap stages for ``items`` on ``jobs`` threads (decoding, resizing and exiftool
        run outside the GIL; worker processes measured no faster, see the README).

        exiftool reads metadata a batch at a time on a thread of its own while the workers
        decode, and the first batches are small, so no worker waits for a whole batch."""
        todo = [i for i in items if i.reason != "stale" or self._pending(i.record, Tier.CHEAP)]
        if not todo:
            return
        total, done = len(todo), 0
        batch_size = max(1, self.settings.exiftool.batch_size)
        reader = ThreadPoolExecutor(max_workers=1, thread_name_prefix="metadata")
        try:
            with ThreadPoolExecutor(max_workers=self.jobs, thread_name_prefix="cheap") as threads:
                in_flight: list[tuple[WorkItem, Future[Record]]] = []
                for batch in _ramp(todo, batch_size):
                    if self.stop.is_set():
                        break
                    metadata = reader.submit(self._prefetch_metadata, batch)
                    for item in batch:
                        record = self._record_for(item)
                        in_flight.append(
                            (item, threads.submit(self._run_cheap_stages, item, record, metadata)))
                    while len(in_flight) > 2 * batch_size:
                        done += self._collect(in_flight.pop(0), summary, total, done)
                for entry in in_flight:
                    done += self._collect(entry, summary, total, done)
        finally:
            reader.shutdown(cancel_futures=True)

    def _record_for(self, item: WorkItem) -> Record:
        if item.reason == "stale" and item.record is not None:
            return item.record
        assert item.hash is not None
        return new_record(item.name, item.size, item.mtime_ns, item.hash)

    def _run_cheap_stages(self, item: WorkItem, record: Record,
                          metadata: Future[dict[Path, dict[str, Any]]]) -> Record:
        if self.stop.is_set():
            raise CancelledError  # stopping: files not started are left for the next run
        job = Job(item.path, item.folder, record)
        if not _decodes_with_metadata(item.path):
            # Decode while exiftool reads the file; the stages after it want its dump.
            run_stages([s for s in self.stages if s.name == "media"], job, Tier.CHEAP)
        if job.metadata is None:
            job.metadata = metadata.result().get(item.path)
        run_stages(self.stages, job, Tier.CHEAP)
        return record

    def _collect(self, entry: tuple[WorkItem, Future[Record]], summary: Summary, total: int,
                 done: int) -> int:
        item, future = entry
        if self.stop.is_set():
            future.cancel()  # only succeeds for work not yet started
        try:
            record = future.result()
        except CancelledError:
            return 1
        self._write(item, record, summary)
        self.progress("index", done + 1, total)
        return 1

    def _write(self, item: WorkItem, record: Record, summary: Summary) -> None:
        try:
            item.folder.write(record)
        except OSError as exc:
            log.error("%s: cannot write its record: %s", item.path, exc.strerror or exc)
            return
        status = record.get("status")
        if status == "failed":
            summary.failed += 1
        elif status == "skipped":
            summary.skipped += 1
        else:
            summary.indexed += 1
        if item.reason != "stale":
            log.info("indexed %s", item.path)

    def _prefetch_metadata(self, batch: list[WorkItem]) -> dict[Path, dict[str, Any]]:
        needs = [i.path for i in batch if i.reason != "stale" or self._stage_pending(i.record, "metadata")]
        if not needs:
            return {}
        try:
            return self.services.exiftool.metadata(needs)
        except Exception as exc:  # exiftool missing or broken: the stage falls back to Pillow
            log.debug("metadata prefetch failed: %s", exc)
            return {}

    # -- background and model tiers ------------------------------------------------------
    def run_later(self, keys: Sequence[tuple[FolderStore, str]], tier: Tier, summary: Summary) -> None:
        """The stages of a later tier for ``keys``, a batch at a time on ``jobs`` workers."""
        from scanpixd.pipeline.embed import model_worker

        stages = [s for s in self.stages if s.tier == tier]
        if not stages:
            return
        todo = [k for k in keys if self._read_pending(k, tier)]
        batch_size = max(1, self.settings.clip.batch_size if tier == Tier.MODEL else self.jobs)
        done = 0
        with ThreadPoolExecutor(max_workers=self.jobs, thread_name_prefix=tier.name.lower(),
                                initializer=model_worker, initargs=(self.jobs,)) as pool:
            for batch in _chunks(todo, batch_size):
                if self.stop.is_set():
                    return
                loaded = pool.map(lambda key: self._load_job(key, tier), batch)
                jobs = [job for job in loaded if job is not None]
                self._run_stage_batch(stages, jobs, summary, pool)
                for job in jobs:
                    job.folder.write_if_unchanged(job.record)
                done += len(batch)
                self.progress(tier.name.lower(), done, len(todo))

    def _run_stage_batch(self, stages: Sequence[Stage], jobs: list[Job], summary: Summary,
                         pool: ThreadPoolExecutor) -> None:
        """The ready stages of one tier on ``jobs``, as units of work that keep every worker
        busy: a stage with a batched form (CLIP) runs on one slice of the batch per worker,
        the others one job per unit (faces: dlib scans outside the GIL).  The long units are
        queued first, so the short ones even out the end.  Stages write their own record
        keys, so they run side by side."""
        slices: list[tuple[Stage, list[Job]]] = []
        singles: list[tuple[Stage, list[Job]]] = []
        for stage in stages:
            if stage.name in summary.unavailable or not stage.is_ready():
                continue
            todo = [j for j in jobs if stage in pending([stage], j.record)]
            if type(stage).run_batch is Stage.run_batch:
                singles.extend((stage, [job]) for job in todo)
            elif todo:
                size = -(-len(todo) // self.jobs)
                slices.extend((stage, todo[i:i + size]) for i in range(0, len(todo), size))

        def run(unit: tuple[Stage, list[Job]]) -> None:
            stage, part = unit
            if stage.name in summary.unavailable or self.stop.is_set():
                return
            try:
                if type(stage).run_batch is Stage.run_batch:
                    run_stage(stage, part[0])
                else:
                    stage.run_batch(part)
            except ModelUnavailable as exc:
                summary.unavailable.setdefault(stage.name, str(exc))
                log.info("%s is unavailable: %s", stage.name, exc)

        list(pool.map(run, slices + singles))

    def _load_job(self, key: tuple[FolderStore, str], tier: Tier | None = None) -> Job | None:
        """The job for ``key``; for the model tier with a picture's working image decoded
        (once, here on a worker, for every model stage)."""
        folder, name = key
        record = folder.read(name)
        if record is None or record.get("status") != "ok":
            return None
        job = Job(folder.folder / name, folder, record)
        if tier == Tier.MODEL and (record.get("media") or {}).get("kind") == "image":
            job.working_image()
        return job

    def _read_pending(self, key: tuple[FolderStore, str], tier: Tier) -> bool:
        record = key[0].read(key[1])
        return record is not None and self._pending(record, tier)

    def _pending(self, record: Record | None, tier: Tier) -> bool:
        if record is None:
            return True
        ready = [s for s in self.stages if s.tier == tier and s.is_ready()]
        return bool(pending(ready, record))

    def _stage_pending(self, record: Record | None, name: str) -> bool:
        return record is None or bool(pending([s for s in self.stages if s.name == name], record))

    def close(self) -> None:
        self.services.close()


def _chunks(items: Sequence[Any] | Iterable[Any], size: int) -> Iterator[list[Any]]:
    batch: list[Any] = []
    for item in items:
        batch.append(item)
        if len(batch) >= size:
            yield batch
            batch = []
    if batch:
        yield batch


def _ramp(items: Sequence[Any], size: int) -> Iterator[list[Any]]:
    """Batches of 1, 2, 4... up to ``size`` items: the first files start without waiting."""
    start, step = 0, 1
    while start < len(items):
        yield list(items[start:start + step])
        start += step
        step = min(size, step * 2)


def _decodes_with_metadata(path: Path) -> bool:
    """Camera raws: their decoding reads the exiftool dump (the preview's orientation)."""
    try:
        found = sniff(path)
    except OSError:
        return False  # the media stage reports it
    return found is not None and found.raw

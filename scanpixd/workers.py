"""Cheap-tier work in worker processes.

Threads do not scale the cheap tier: Pillow's WebP encoder and parts of the hashing hold
the GIL, so two threads on two cores run about as fast as one.  Large batches (a first
index, a big import) therefore go to a pool of worker processes, each with its own
stages; the parent keeps the one batched exiftool process and passes each file's
metadata in, and it alone writes records.  A worker only writes the file's thumbnails
(atomically, into the store) and returns the record.

A decoder that crashes its process (a segfault on a hostile file) costs only that file:
the pool is rebuilt, the files that were in flight are retried one at a time, and the
one that crashes again is recorded as failed.
"""

from __future__ import annotations

import logging
import multiprocessing
import signal
import warnings
from concurrent.futures import Future, ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from pathlib import Path
from typing import Any

from scanpixd.config import Settings
from scanpixd.pipeline import Job, Services, Stage, Tier, build_stages, run_stages
from scanpixd.record import Record
from scanpixd.store import FolderStore

log = logging.getLogger(__name__)

CRASH_REASON = "the decoder crashed on this file"
FolderArgs = tuple[Path, Path, list[Path]]

_stages: list[Stage] = []


def folder_args(folder: FolderStore) -> FolderArgs:
    """What a worker needs to rebuild the folder's store (a FolderStore holds a lock)."""
    return folder.folder, folder.data_dir, list(folder.read_dirs)


def _init_worker(settings: Settings) -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the parent decides when to stop
    # Hostile files make decoders warn; the record keeps the reason, the terminal stays quiet.
    warnings.filterwarnings("ignore", module=r"PIL\..*")
    warnings.filterwarnings("ignore", category=UserWarning, module=r"pillow_heif.*")
    logging.getLogger("PIL").setLevel(logging.CRITICAL)
    global _stages
    _stages = [s for s in build_stages(Services(settings)) if s.tier == Tier.CHEAP]


def _run(args: FolderArgs, path: Path, record: Record, metadata: dict[str, Any] | None) -> Record:
    job = Job(path, FolderStore(*args), record, metadata=metadata)
    run_stages(_stages, job, Tier.CHEAP)
    return record


def _ping() -> bool:
    return True


class PoolUnusable(RuntimeError):
    """Worker processes cannot be started here."""


class CheapPool:
    """A lazily started pool of ``jobs`` worker processes running the cheap stages."""

    def __init__(self, settings: Settings, jobs: int):
        self.settings = settings
        self.jobs = jobs
        self._pool: ProcessPoolExecutor | None = None

    def submit(self, folder: FolderStore, path: Path, record: Record,
               metadata: dict[str, Any] | None) -> Future[Record]:
        return self._executor().submit(_run, folder_args(folder), path, record, metadata)

    def retry_alone(self, folder: FolderStore, path: Path, record: Record,
                    metadata: dict[str, Any] | None) -> Record:
        """Run one file in a fresh one-process pool; a second crash marks it failed.

        Raises :class:`PoolUnusable` when a fresh worker cannot even start, so no file is
        blamed for a broken environment; the caller then works in threads.
        """
        self.close()
        with self._new(1) as pool:
            try:
                pool.submit(_ping).result()
            except BrokenProcessPool as exc:
                raise PoolUnusable(f"worker processes cannot start: {exc}") from exc
            try:
                return pool.submit(_run, folder_args(folder), path, record, metadata).result()
            except BrokenProcessPool:
                log.warning("%s: %s", path, CRASH_REASON)
                record["status"], record["error"] = "failed", CRASH_REASON
                record.setdefault("errors", {})["media"] = CRASH_REASON
                return record

    def _executor(self) -> ProcessPoolExecutor:
        if self._pool is None:
            self._pool = self._new(self.jobs)
        return self._pool

    def _new(self, workers: int) -> ProcessPoolExecutor:
        # forkserver: never fork a parent that runs threads (exiftool readers, watchers).
        context = multiprocessing.get_context("forkserver")
        return ProcessPoolExecutor(max_workers=workers, mp_context=context,
                                   initializer=_init_worker, initargs=(self.settings,))

    def close(self, cancel: bool = False) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=True, cancel_futures=cancel)
            self._pool = None

"""The library-wide passes (time inference) after a change: due once its cheap work is done,
and reported as work (queued while due, busy while running), so "idle" means nothing more
will be written until the next change."""

from __future__ import annotations

import threading
from collections.abc import Sequence
from pathlib import Path

import pytest

from scanpixd.indexer import Indexer, Summary
from scanpixd.scan import WorkItem
from scanpixd.scheduler import Scheduler
from tests.helpers_index import make_photo

WAIT = 30.0  # seconds; only a broken scheduler waits this long


def test_passes_are_due_after_the_cheap_work_and_count_as_work(settings, tmp_path: Path) -> None:
    root = tmp_path / "lib"
    make_photo(root / "a" / "IMG_1.jpg", seed=1, size=(64, 48))
    indexer = Indexer(settings, stages=[])
    cheap_running, cheap_done = threading.Event(), threading.Event()
    upkeep_running, upkeep_done = threading.Event(), threading.Event()

    def run_cheap(items: Sequence[WorkItem], summary: Summary) -> None:
        assert [i.name for i in items] == ["IMG_1.jpg"]
        cheap_running.set()
        assert cheap_done.wait(WAIT)

    def upkeep() -> None:
        upkeep_running.set()
        assert upkeep_done.wait(WAIT)

    indexer.run_cheap = run_cheap  # type: ignore[method-assign]
    scheduler = Scheduler(indexer, [root], upkeep=upkeep, upkeep_interval=0.0)
    try:
        scheduler.rescan(root)
        cheap = threading.Thread(target=scheduler._reconcile_pending)
        cheap.start()
        assert cheap_running.wait(WAIT)
        # While the change's files are being indexed, the passes are not due yet: they would
        # see the library without them (and nothing would bring them back for those files).
        assert scheduler.pending()["upkeep"] == 0 and not scheduler.idle()
        cheap_done.set()
        cheap.join(WAIT)
        assert scheduler.pending()["upkeep"] == 1, "due once the cheap work is done"
        assert not scheduler.idle() and scheduler.status()["queue"]["upkeep"] == 1

        while scheduler._later_batch():  # the slow tier's queue (no stages: nothing to do)
            pass
        slow = threading.Thread(target=scheduler._later_step)
        slow.start()
        assert upkeep_running.wait(WAIT)
        status = scheduler.status()
        assert status["busy"] and status["queue"]["upkeep"] == 0, status
        assert not scheduler.idle(), "the passes write records: not idle while they run"
        upkeep_done.set()
        slow.join(WAIT)
        scheduler._sweep.clear()  # the cheap loop's sweep, which this test does not run
        assert scheduler.idle() and not scheduler.status()["busy"]
    finally:
        cheap_done.set()
        upkeep_done.set()
        indexer.close()


def test_a_failed_pass_leaves_the_scheduler_idle_not_busy(settings, tmp_path: Path) -> None:
    indexer = Indexer(settings, stages=[])

    def upkeep() -> None:
        raise OSError("disk full")

    scheduler = Scheduler(indexer, [tmp_path], upkeep=upkeep, upkeep_interval=0.0)
    try:
        scheduler._upkeep_later()
        with pytest.raises(OSError):
            scheduler._later_step()  # the work loop logs it and carries on
        assert scheduler.idle() and not scheduler.status()["busy"]
    finally:
        indexer.close()

"""The library-wide time pass survives a stop or a crash: the next start finds it due.

The daemon runs the time pass a while after a change's cheap work.  Stopped (SIGTERM) or
killed (SIGKILL) before it ran, or while it ran, the next start's reconcile finds nothing
changed; what the pass reads (the records) still differs from what it last found needing
nothing, and that is how the start knows to run it.  The daemon tests run a real
``scanpixd run`` process on real files; the others drive the same functions in process.
"""

from __future__ import annotations

import signal
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from scanpixd.config import Settings, load_settings
from scanpixd.errors import ConfigError
from scanpixd.indexer import Indexer, Summary
from scanpixd.record import Record
from scanpixd.scan import reconcile
from scanpixd.scheduler import Scheduler
from scanpixd.store import FolderStore, Store, record_cache
from scanpixd.upkeep import run_times, times_due
from tests.helpers_daemon import DaemonProcess, wait_for
from tests.helpers_index import make_photo
from tests.helpers_timeplace import write_tags

LONG = 3600.0  # a delay the pass never reaches in a test: it is due, and nothing runs it


def shoot(library: Path) -> list[Path]:
    """Two albums: a geotagged photo in Rome, one from the same camera an hour later
    without GPS (its zone is borrowed), and plain photos with no time at all."""
    rome = make_photo(library / "trip" / "IMG_0001.jpg", seed=1, size=(96, 72))
    write_tags(rome, "-Make=Canon", "-Model=EOS 30D", "-DateTimeOriginal=2019:07:01 12:00:00",
               "-GPSLatitude=41.9", "-GPSLatitudeRef=N", "-GPSLongitude=12.5", "-GPSLongitudeRef=E")
    later = make_photo(library / "trip" / "IMG_0002.jpg", seed=2, size=(96, 72))
    write_tags(later, "-Make=Canon", "-Model=EOS 30D", "-DateTimeOriginal=2019:07:01 13:00:00")
    plain = [make_photo(library / "home" / f"IMG_{i:04d}.jpg", seed=i, size=(96, 72))
             for i in range(10, 16)]
    return [rome, later, *plain]


def untimed(daemon: DaemonProcess, files: list[Path]) -> list[str]:
    """The files whose records lack the time pass's fields."""
    found = []
    for path in files:
        record = daemon.record(path)
        assert record is not None and record["status"] == "ok", path
        if "taken" not in record:
            found.append(path.name)
    return found


def assert_timed(daemon: DaemonProcess, files: list[Path]) -> None:
    assert not untimed(daemon, files), daemon.log()[-3000:]
    borrowed = daemon.wait_record(files[1])["taken"]
    assert borrowed["source"] == "neighbour" and borrowed["timezone"] == "Europe/Rome", borrowed
    assert borrowed["utc"].startswith("2019-07-01T11:00:00"), borrowed


def runs(daemon: DaemonProcess) -> list[str]:
    """The log of each start so far."""
    return daemon.log().split("=== start ")[1:]


def pass_due(daemon: DaemonProcess) -> bool:
    work = (daemon.status() or {}).get("work") or {}
    return (work.get("queue") or {}).get("upkeep") == 1


@pytest.fixture
def library(tmp_path: Path) -> Path:
    return tmp_path / "library"


@pytest.fixture
def daemon(tmp_path: Path, library: Path) -> Iterator[DaemonProcess]:
    proc = DaemonProcess(tmp_path / "daemon", [library], upkeep_delay=LONG)
    try:
        yield proc
    finally:
        proc.close()


@pytest.mark.parametrize("signum", [signal.SIGKILL, signal.SIGTERM], ids=["sigkill", "sigterm"])
def test_a_pass_stopped_before_it_ran_runs_after_the_restart(library: Path, daemon: DaemonProcess,
                                                              signum: int) -> None:
    files = shoot(library)
    daemon.start()
    for path in files:
        daemon.wait_record(path)
    wait_for(lambda: pass_due(daemon), 20, what="the time pass to be due", log=daemon.log)
    assert len(untimed(daemon, files)) == len(files), "the pass has not run yet"

    assert daemon.stop(signum, timeout=30) == (-signal.SIGKILL if signum == signal.SIGKILL else 0)
    assert len(untimed(daemon, files)) == len(files), "nothing ran the pass on the way out"

    daemon.upkeep_delay = 0.2
    daemon.write_config([library])
    daemon.start()
    daemon.wait_idle()
    assert_timed(daemon, files)
    assert "passes are due" in runs(daemon)[-1], "found due with nothing changed on disk"
    counts = daemon.indexed_counts()
    assert [counts[str(p)] for p in files] == [1] * len(files), "nothing was indexed again"
    assert daemon.stop() == 0


def test_a_pass_killed_half_way_is_finished_after_the_restart(library: Path,
                                                             daemon: DaemonProcess) -> None:
    """What a kill in the middle of the pass leaves: some records written with their times,
    the others not (each record is replaced whole)."""
    files = shoot(library)
    daemon.upkeep_delay = 0.2
    daemon.write_config([library])
    daemon.start()
    for path in files:
        daemon.wait_record(path, check=lambda r: "taken" in r)
    daemon.wait_idle()
    daemon.kill()
    store = Store(daemon.settings())
    for path in files[1::2]:
        folder = store.folder(path.parent)
        record = folder.read(path.name)
        assert record is not None
        del record["taken"]
        folder.write(record)
    assert len(untimed(daemon, files)) == len(files) // 2

    daemon.start()
    daemon.wait_idle()
    assert_timed(daemon, files)
    assert "passes are due" in runs(daemon)[-1]


# -- in process: the note that tells whether the pass is due --------------------------------
@pytest.fixture
def no_racy_window(monkeypatch: pytest.MonkeyPatch) -> None:
    """Records just written count as settled: a listing gives a token at once (in real use
    a folder written within the last 3 s has none, so its pass is never taken as done)."""
    monkeypatch.setattr(record_cache, "RACY_NS", 0)


def test_the_note_says_when_the_pass_is_due(settings: Settings, tmp_path: Path,
                                            no_racy_window: None) -> None:
    root = tmp_path / "lib"
    for i in range(4):
        make_photo(root / ("a" if i % 2 else "b") / f"IMG_{i}.jpg", seed=i, size=(64, 48))
    indexer = Indexer(settings)
    try:
        new = reconcile([root], settings, indexer.store, indexer.stages).work
        indexer.run_cheap(new, Summary())
        plan = reconcile([root], settings, indexer.store, indexer.stages)
        folders, roots = plan.folders, [root]

        def entries() -> list[tuple[FolderStore, str, Record]]:
            return [(f, n, r) for f in folders for n, r in f.records().items()]

        assert times_due(folders, roots, settings), "never ran"
        assert len(run_times(folders, entries, roots, settings)) == 4
        assert not times_due(folders, roots, settings), "its records read back as it left them"
        assert run_times(folders, entries, roots, settings) == []
        assert not times_due(folders, roots, settings), "found nothing to change: noted"
        assert not times_due(reconcile([root], settings, Store(settings), []).folders, roots,
                             settings), "a restart's rescan lists the same"

        folder = indexer.store.folder(root / "a")
        record = folder.read("IMG_1.jpg")
        assert record is not None
        del record["taken"]
        folder.write(record)  # what a pass cut short leaves
        assert times_due(folders, roots, settings)
        assert len(run_times(folders, entries, roots, settings)) == 1
    finally:
        indexer.close()


def test_the_index_command_and_the_daemon_share_the_note(settings: Settings, tmp_path: Path,
                                                        no_racy_window: None) -> None:
    """After ``scanpixd index`` (which runs the passes), a daemon start finds nothing due."""
    root = tmp_path / "lib"
    for i in range(3):
        make_photo(root / "a" / f"IMG_{i}.jpg", seed=i, size=(64, 48))
    settings.roots = [root]
    indexer = Indexer(settings)
    try:
        indexer.index([root])
        indexer.index([root])  # the first wrote the times; the second found nothing to change
    finally:
        indexer.close()
    plan = reconcile([root], settings, Store(settings), [])
    assert not times_due(plan.folders, [root], settings)


# -- in process: the scheduler asks when a reconcile finds nothing -------------------------
def test_a_reconcile_with_nothing_to_do_asks_whether_the_pass_is_due(settings: Settings,
                                                                     tmp_path: Path) -> None:
    root = tmp_path / "lib"
    make_photo(root / "a" / "IMG_1.jpg", seed=1, size=(64, 48))
    make_photo(root / "b" / "IMG_2.jpg", seed=2, size=(64, 48))
    indexer = Indexer(settings, stages=[])
    due = threading.Event()
    asked: list[int] = []

    def upkeep_due() -> bool:
        asked.append(len(scheduler.known_folders()))
        return due.is_set()

    scheduler = Scheduler(indexer, [root], upkeep_due=upkeep_due, upkeep_interval=LONG)
    try:
        scheduler.rescan(root)
        scheduler._reconcile_pending()
        assert asked == [] and scheduler.pending()["upkeep"] == 1, "a change: due after its work"
        scheduler._upkeep_due = None
        assert {f.folder.name for f in scheduler.known_folders()} == {"a", "b"}

        scheduler.rescan(root)
        scheduler._reconcile_pending()
        assert asked == [2] and scheduler.pending()["upkeep"] == 0, "asked, and not due"
        due.set()
        scheduler.rescan(root)
        scheduler._reconcile_pending()
        assert asked == [2, 2] and scheduler.pending()["upkeep"] == 1

        scheduler._upkeep_due = None
        (root / "b" / "IMG_2.jpg").unlink()
        scheduler.file_removed(root / "b" / "IMG_2.jpg")
        scheduler._reconcile_pending()  # its record removed
        scheduler.file_removed(root / "b" / "IMG_2.jpg")
        scheduler._reconcile_pending()
        assert {f.folder.name for f in scheduler.known_folders()} == {"a"}, "b holds nothing now"
    finally:
        indexer.close()


# -- the setting ---------------------------------------------------------------------------
@pytest.mark.parametrize("value,error", [
    ("-1", "daemon.upkeep_delay: must not be negative"),
    ('"soon"', "daemon.upkeep_delay: expected a number"),
    ("true", "daemon.upkeep_delay: expected a number"),
    ("nan", "daemon.upkeep_delay: expected a finite number of seconds"),
    ("inf", "daemon.upkeep_delay: expected a finite number of seconds"),
])
def test_upkeep_delay_is_validated(tmp_path: Path, value: str, error: str) -> None:
    config = tmp_path / "config.toml"
    config.write_text(f"[daemon]\nupkeep_delay = {value}\n")
    with pytest.raises(ConfigError, match=error):
        load_settings(config, environ={})


def test_upkeep_delay_default_and_environment(isolated_env: dict[str, str]) -> None:
    assert load_settings(None, environ={}).daemon.upkeep_delay == 5.0
    env = {"SCANPIX_DAEMON_UPKEEP_DELAY": "0.5"}
    assert load_settings(None, environ=env).daemon.upkeep_delay == 0.5
    with pytest.raises(ConfigError, match="SCANPIX_DAEMON_UPKEEP_DELAY: expected a number"):
        load_settings(None, environ={"SCANPIX_DAEMON_UPKEEP_DELAY": "soon"})

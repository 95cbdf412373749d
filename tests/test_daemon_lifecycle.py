"""The daemon's life as systemd sees it: crash and restart, stop, reload, and one instance per root.

Every test runs its own ``scanpixd run`` child process and judges it by what is left on
disk (records that parse, nothing torn, nothing lost), by its exit status and messages,
and by the ``indexed PATH`` lines it logs, which count how often each file was processed
across a crash and the run after it.
"""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from scanpixd.store import Store
from scanpixd.store.atomic import is_temp_name, read_json, temp_name
from tests.conftest import run_cli
from tests.helpers_daemon import DaemonProcess, config_text, photo_bytes, wait_for
from tests.helpers_index import make_photo


@pytest.fixture
def library(tmp_path: Path) -> Path:
    path = tmp_path / "library"
    path.mkdir()
    return path


@pytest.fixture
def daemon(tmp_path: Path, library: Path) -> Iterator[DaemonProcess]:
    proc = DaemonProcess(tmp_path / "daemon", [library])
    try:
        yield proc
    finally:
        proc.close()


def stage_import(base: Path, count: int, size: tuple[int, int] = (160, 120)) -> Path:
    """A folder of distinct photos outside the library, to be moved in at once (a card import)."""
    folder = base / "card"
    folder.mkdir()
    for i in range(count):
        (folder / f"IMG_{i:04d}.jpg").write_bytes(photo_bytes(5000 + i, size=size))
    return folder


def record_files(folder: Path) -> list[Path]:
    records = folder / ".scanpix" / "records"
    return sorted(records.iterdir()) if records.is_dir() else []


def records_done(folder: Path) -> int:
    """Records written so far (a temporary file is a write still under way)."""
    return sum(1 for p in record_files(folder) if not is_temp_name(p.name))


def assert_records_sound(folder: Path) -> int:
    """Every record file parses and describes its photo as it is; returns how many there are."""
    count = 0
    for path in record_files(folder):
        if is_temp_name(path.name):
            continue  # a write the crash interrupted: never read, swept later
        record = read_json(path)
        assert isinstance(record, dict), f"torn or invalid record {path.name}"
        photo = folder / record["name"]
        assert record["status"] == "ok", record.get("error")
        assert (record["size"], record["mtime_ns"]) == (photo.stat().st_size, photo.stat().st_mtime_ns)
        count += 1
    return count


def test_sigkill_mid_import_then_restart_loses_nothing(tmp_path: Path, library: Path,
                                                       daemon: DaemonProcess) -> None:
    card = stage_import(tmp_path, 300)
    daemon.start()
    target = library / "import"
    os.rename(card, target)
    wait_for(lambda: records_done(target) >= 20, 60, 0.02, "the import to be under way", daemon.log)
    daemon.kill()
    done_before = assert_records_sound(target)
    assert 20 <= done_before < 300, "the kill should land in the middle of the import"
    # What a kill between a record's temporary file and its rename leaves (as likely as not
    # already there): a torn temporary file, which must never be read and must be swept.
    planted = temp_name(target / ".scanpix" / "records" / "IMG_0299.jpg.json")
    planted.write_bytes(b'{"format": 1, "name": "IMG_02')

    daemon.start()  # the lock died with the process; the stale socket is replaced
    store = Store(daemon.settings()).folder(target)
    wait_for(lambda: len(store.records()) == 300, 120, 0.5, "all 300 records after the restart",
             daemon.log)
    # Idle: the sweep and the library-wide passes have run too.  They run on the niced slow
    # thread, which a busy machine starves for a minute or more: the timeout allows for it.
    daemon.wait_idle(timeout=180)
    assert assert_records_sound(target) == 300
    leftovers = [p.name for p in (target / ".scanpix").rglob("*") if is_temp_name(p.name)]
    assert not leftovers, f"crash leftovers not swept: {leftovers} (running: pid {daemon.pid})"
    untimed = [r["name"] for r in store.records().values() if "taken" not in r]
    assert not untimed, f"{len(untimed)} files missed the time pass, e.g. {untimed[:3]}"
    counts = daemon.indexed_counts()
    per_file = [counts[str(target / f"IMG_{i:04d}.jpg")] for i in range(300)]
    assert max(per_file) == 1, f"{per_file.count(2)} files were processed twice"
    assert sum(per_file) >= 300 - 2, "only a file written but not yet logged may go unreported"
    assert daemon.stop() == 0


def test_sigterm_stops_quickly_and_cleanly(tmp_path: Path, library: Path,
                                           daemon: DaemonProcess) -> None:
    card = stage_import(tmp_path, 120)
    daemon.start()
    target = library / "import"
    os.rename(card, target)
    wait_for(lambda: records_done(target) >= 10, 60, 0.02, "the import to be under way", daemon.log)
    started = time.monotonic()
    assert daemon.stop(signal.SIGTERM) == 0
    took = time.monotonic() - started
    assert took < 10, f"SIGTERM took {took:.1f} s"
    assert not daemon.socket.exists(), "the socket is removed"
    assert "stopped" in daemon.log().splitlines()[-1]
    done = assert_records_sound(target)
    assert done < 120, "stopping abandons the rest of the import"
    assert not any(is_temp_name(p.name) for p in record_files(target)), "no half-written file"

    daemon.start()  # the next start resumes
    wait_for(lambda: assert_records_sound(target) == 120, 120, 0.5, "the rest after a restart",
             daemon.log)


def test_sighup_reload_adds_and_removes_roots(tmp_path: Path, library: Path,
                                              daemon: DaemonProcess) -> None:
    real = tmp_path / "disk" / "other"
    make_photo(real / "waiting.jpg", seed=1, size=(160, 120))  # there before the reload
    other = tmp_path / "other"
    other.symlink_to(real)  # configured through a link, as ~/Pictures often is
    waiting = other / "waiting.jpg"
    daemon.start()
    before = make_photo(library / "a" / "before.jpg", seed=2, size=(160, 120))
    daemon.wait_record(before)
    assert daemon.record(waiting) is None

    daemon.write_config([other])
    daemon.send(signal.SIGHUP)
    wait_for(lambda: list((daemon.status() or {}).get("roots", {})) == [str(other)], 20,
             what="the reloaded roots", log=daemon.log)
    assert daemon.alive() and daemon.pid == daemon.proc.pid  # no restart
    daemon.wait_record(waiting)  # the new root is reconciled
    added = make_photo(other / "added.jpg", seed=3, size=(160, 120))
    daemon.wait_record(added)  # and watched
    ignored = make_photo(library / "a" / "after.jpg", seed=4, size=(160, 120))
    daemon.wait_idle()
    time.sleep(1.0)  # several debounce intervals: the old root is no longer watched
    assert daemon.record(ignored) is None
    assert daemon.record(before) is not None, "a dropped root keeps its index"

    # The instance lock followed the reload: the dropped root is free, the new one is held.
    env = daemon.env()
    freed = run_cli("scanpixd", "index", str(library), "--config", str(daemon.config), env=env)
    assert freed.returncode == 0, freed.stderr
    refused = run_cli("scanpixd", "index", str(real), "--config", str(daemon.config), env=env)
    assert refused.returncode == 75, refused.stderr
    assert daemon.record(ignored) is not None

    # A broken configuration is refused and the running one kept.
    daemon.config.write_text("roots = [\n")
    daemon.send(signal.SIGHUP)
    wait_for(lambda: "reload failed" in daemon.log(), 20, what="the refusal", log=daemon.log)
    late = make_photo(other / "late.jpg", seed=5, size=(160, 120))
    daemon.wait_record(late)
    assert daemon.stop() == 0


def test_second_instance_and_index_are_refused(tmp_path: Path, library: Path,
                                               daemon: DaemonProcess) -> None:
    make_photo(library / "a" / "one.jpg", seed=1, size=(160, 120))
    daemon.start()
    env = daemon.env()

    second = run_cli("scanpixd", "run", "--config", str(daemon.config), env=env, timeout=60)
    assert second.returncode == 75
    assert f"pid {daemon.pid}" in second.stderr and str(library) in second.stderr, second.stderr
    assert second.stderr.startswith("error: "), second.stderr

    for path in (library, library / "a"):
        index = run_cli("scanpixd", "index", str(path), "--config", str(daemon.config), env=env)
        assert index.returncode == 75, index.stderr
        assert f"pid {daemon.pid}" in index.stderr, index.stderr

    # Other roots but the same socket: refused with a message, not a traceback.
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    config = tmp_path / "elsewhere.toml"
    config.write_text(config_text([elsewhere], daemon.socket, tmp_path / "cache2"))
    clash = run_cli("scanpixd", "run", "--config", str(config), env=env, timeout=60)
    assert clash.returncode == 1, clash.stderr
    assert "error: cannot serve the API" in clash.stderr and "Traceback" not in clash.stderr
    assert "already served by another process" in clash.stderr

    assert daemon.status() is not None, "the first daemon still serves"
    assert daemon.alive()


def test_changes_while_stopped_are_found_at_start(library: Path, daemon: DaemonProcess) -> None:
    """Whatever happened while the daemon was down is reconciled when it starts."""
    changed, deleted, renamed = (make_photo(library / "x" / f"{n}.jpg", seed=i, size=(160, 120))
                                 for i, n in enumerate(("changed", "deleted", "renamed")))
    daemon.start()
    first = {p: daemon.wait_record(p) for p in (changed, deleted, renamed)}
    assert daemon.stop() == 0

    make_photo(changed, seed=10, size=(200, 150))
    deleted.unlink()
    moved = library / "y" / "renamed-and-moved.jpg"
    moved.parent.mkdir()
    os.rename(renamed, moved)
    new = make_photo(library / "y" / "new.jpg", seed=11, size=(160, 120))

    daemon.start()
    assert daemon.wait_record(changed, check=lambda r: r["hash"] != first[changed]["hash"])["size"] == \
        changed.stat().st_size
    assert daemon.wait_record(moved)["hash"] == first[renamed]["hash"]
    daemon.wait_record(new)
    daemon.wait_no_record(deleted)
    daemon.wait_no_record(renamed)
    daemon.wait_idle()
    found = daemon.client.get("/v1/search", q=f'folder:"{library}"', limit=100)["results"]
    assert {r["path"] for r in found} == {str(changed), str(moved), str(new)}
    counts = daemon.indexed_counts()
    assert (counts[str(changed)], counts[str(moved)], counts[str(new)]) == (2, 0, 1)


def test_sighup_reload_changes_excludes(library: Path, daemon: DaemonProcess) -> None:
    """Excludes change without a restart: the watcher, the rescan and the view all follow."""
    hidden = make_photo(library / "Private" / "p.jpg", seed=1, size=(160, 120))
    shown = make_photo(library / "Public" / "q.jpg", seed=2, size=(160, 120))
    daemon.write_config([library], extra='exclude = ["Private/**"]')
    daemon.start()
    daemon.wait_record(shown)
    daemon.wait_idle()
    assert daemon.record(hidden) is None

    daemon.write_config([library], extra='exclude = ["Public"]')
    daemon.send(signal.SIGHUP)
    daemon.wait_record(hidden)  # no longer excluded: found by the reload's rescan
    later = make_photo(library / "Private" / "later.jpg", seed=3, size=(160, 120))
    daemon.wait_record(later)  # and watched
    wait_for(lambda: {r["path"] for r in daemon.client.get(
        "/v1/search", q=f'folder:"{library}"', limit=100)["results"]} == {str(hidden), str(later)},
        20, what="the view to serve exactly what is not excluded", log=daemon.log)
    ignored = make_photo(library / "Public" / "r.jpg", seed=4, size=(160, 120))
    daemon.wait_idle()
    time.sleep(1.0)
    assert daemon.record(ignored) is None

"""The passes after an index run (sweep, times, vector indexes) skip only what did not change.

A rescan of an unchanged library must not redo them, but every real change must still
reach them: a record edited in place or synced in, a record deleted, an index damaged or
deleted, a folder copied, a crash leftover, a setting changed.  The library here is real
files (records, thumbnails, index files); the passes are watched by wrapping the real
functions, never replaced.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import orjson
import pytest

from scanpixd import upkeep
from scanpixd.config import Settings
from scanpixd.indexer import Indexer
from scanpixd.record import Record, encode_vector, new_record
from scanpixd.scan import reconcile
from scanpixd.scheduler import Scheduler
from scanpixd.store import FolderStore, Store, ann, record_cache

MODEL = "tiny+abc/b2:0123"
DIM = 8


@pytest.fixture(name="settled")
def settled_fixture(monkeypatch: pytest.MonkeyPatch) -> None:
    """Treat every file as older than the racy window (they were all written just now)."""
    monkeypatch.setattr(record_cache, "RACY_NS", -10**12)


@dataclass
class Seen:
    """Which passes touched which folders in one run."""

    swept: list[Path] = field(default_factory=list)
    indexed: list[Path] = field(default_factory=list)
    times: int = 0


@pytest.fixture(name="seen")
def seen_fixture(monkeypatch: pytest.MonkeyPatch) -> Iterator[Seen]:
    seen = Seen()
    sweep, rebuild, changes = FolderStore.sweep, ann.load_or_rebuild, upkeep._time_changes

    def watched_sweep(self: FolderStore, *args: object, **kwargs: object) -> int:
        seen.swept.append(self.folder)
        return sweep(self, *args, **kwargs)  # type: ignore[arg-type]

    def watched_rebuild(folder: FolderStore, *args: object, **kwargs: object) -> ann.FolderIndex:
        seen.indexed.append(folder.folder)
        return rebuild(folder, *args, **kwargs)  # type: ignore[arg-type]

    def watched_changes(*args: object, **kwargs: object) -> object:
        seen.times += 1
        return changes(*args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(FolderStore, "sweep", watched_sweep)
    monkeypatch.setattr(ann, "load_or_rebuild", watched_rebuild)
    monkeypatch.setattr(upkeep, "_time_changes", watched_changes)
    yield seen


def _record(path: Path, seed: int) -> Record:
    st = path.stat()
    record = new_record(path.name, st.st_size, st.st_mtime_ns, f"b2:{seed:032x}")
    rng = np.random.default_rng(seed)
    vector = rng.standard_normal(DIM).astype(np.float32)
    record["metadata"] = {"taken_local": f"2021-05-{1 + seed % 28:02d}T12:00:00", "make": "Canon",
                          "model": "R6", "gps": None, "source": "exiftool"}
    record["thumbs"] = {"256": f"{seed:032x}-256.webp"}
    record["clip"] = {"model": MODEL, "dim": DIM, "vectors": [{"time": None, "v": encode_vector(vector)}]}
    return record


def add_photo(store: Store, path: Path, seed: int) -> Record:
    """An original, its record and its thumbnail, as an index run leaves them."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"photo %d" % seed)
    record = _record(path, seed)
    folder = store.folder(path.parent)
    folder.write_asset(record["thumbs"]["256"], b"webp")
    folder.write(record)
    return record


@pytest.fixture(name="lib")
def lib_fixture(settings: Settings, tmp_path: Path) -> Path:
    store = Store(settings)
    for i in range(9):
        add_photo(store, tmp_path / "lib" / f"album{i // 3}" / f"IMG_{i}.jpg", i)
    return tmp_path / "lib"


def run_passes(settings: Settings, lib: Path, seen: Seen | None = None) -> Store:
    """What ``scanpixd index`` does on a library with nothing to index: reconcile, then finish."""
    if seen is not None:
        seen.swept.clear()
        seen.indexed.clear()
        seen.times = 0
    store = Store(settings)  # a new process: nothing carried over in memory
    plan = reconcile([lib], settings, store, [])
    assert not plan.work
    upkeep.finish_passes(plan.folders, [lib], settings, MODEL)
    return store


def settle(settings: Settings, lib: Path) -> None:
    """Runs until the passes have nothing left to change (the first infers times, writing)."""
    run_passes(settings, lib)
    run_passes(settings, lib)


def folder_of(settings: Settings, path: Path) -> FolderStore:
    return Store(settings).folder(path)


def record_at(settings: Settings, path: Path) -> Record:
    record = folder_of(settings, path.parent).read(path.name)
    assert record is not None
    return record


@pytest.mark.usefixtures("settled")
def test_an_unchanged_library_skips_every_pass(settings: Settings, lib: Path, seen: Seen) -> None:
    run_passes(settings, lib, seen)
    assert len(seen.swept) == 3 and len(seen.indexed) == 3 and seen.times == 1
    assert record_at(settings, lib / "album0" / "IMG_0.jpg")["taken"]["source"] == "unknown"
    run_passes(settings, lib, seen)  # the records the times pass wrote are looked at again
    run_passes(settings, lib, seen)
    assert (seen.swept, seen.indexed, seen.times) == ([], [], 0)


def test_nothing_is_skipped_while_files_are_within_the_racy_window(
        settings: Settings, lib: Path, seen: Seen) -> None:
    settle(settings, lib)
    run_passes(settings, lib, seen)
    assert len(seen.swept) == 3 and len(seen.indexed) == 3 and seen.times == 1


@pytest.mark.usefixtures("settled")
def test_a_record_edited_in_place_is_seen(settings: Settings, lib: Path, seen: Seen) -> None:
    settle(settings, lib)
    path = folder_of(settings, lib / "album1").record_path("IMG_4.jpg")
    before = path.stat()
    record = orjson.loads(path.read_bytes())
    record["metadata"]["taken_local"] = "2021-05-05T13:00:00"  # same length: only ctime tells
    data = orjson.dumps(record)
    assert len(data) == before.st_size
    with open(path, "r+b") as fh:
        fh.write(data)
    os.utime(path, ns=(before.st_atime_ns, before.st_mtime_ns))
    run_passes(settings, lib, seen)
    assert seen.swept == [lib / "album1"] and seen.indexed == [lib / "album1"] and seen.times == 1
    assert record_at(settings, lib / "album1" / "IMG_4.jpg")["taken"]["local"] == "2021-05-05T13:00:00"


@pytest.mark.usefixtures("settled")
def test_a_record_synced_in_reaches_the_index(settings: Settings, lib: Path, seen: Seen) -> None:
    settle(settings, lib)
    add_photo(Store(settings), lib / "album2" / "IMG_new.jpg", 42)  # another writer: a sync
    run_passes(settings, lib, seen)
    assert seen.indexed == [lib / "album2"] and seen.times == 1
    labels = orjson.loads((lib / "album2" / ".scanpix" / "index" / ann.META_NAME).read_bytes())["labels"]
    assert "IMG_new.jpg" in [label[0] for label in labels]


@pytest.mark.usefixtures("settled")
def test_a_deleted_record_leaves_the_index_and_its_thumbnail(
        settings: Settings, lib: Path, seen: Seen) -> None:
    settle(settings, lib)
    folder = folder_of(settings, lib / "album0")
    thumb = folder.asset_path(record_at(settings, lib / "album0" / "IMG_1.jpg")["thumbs"]["256"])
    (lib / "album0" / "IMG_1.jpg").unlink()  # a sync deleting the file and its record
    folder.record_path("IMG_1.jpg").unlink()
    run_passes(settings, lib, seen)
    assert seen.swept == [lib / "album0"] and not thumb.exists()
    labels = orjson.loads((folder.index_dir() / ann.META_NAME).read_bytes())["labels"]
    assert [label[0] for label in labels] == ["IMG_0.jpg", "IMG_2.jpg"]


@pytest.mark.usefixtures("settled")
@pytest.mark.parametrize("damage", ["flip", "delete", "meta"])
def test_a_touched_index_is_checked_again(settings: Settings, lib: Path, seen: Seen,
                                          damage: str) -> None:
    settle(settings, lib)
    folder = folder_of(settings, lib / "album1")
    graph, meta = folder.index_dir() / ann.GRAPH_NAME, folder.index_dir() / ann.META_NAME
    good = graph.read_bytes()
    if damage == "flip":  # same size, same mtime: only the ctime tells
        before = graph.stat()
        with open(graph, "r+b") as fh:
            fh.seek(len(good) // 2)
            fh.write(bytes([good[len(good) // 2] ^ 0xFF]))
        os.utime(graph, ns=(before.st_atime_ns, before.st_mtime_ns))
    elif damage == "delete":
        graph.unlink()
    else:
        meta.write_bytes(meta.read_bytes().replace(b'"count":3', b'"count":4'))
    run_passes(settings, lib, seen)
    assert seen.indexed == [lib / "album1"]
    assert graph.read_bytes() == good or ann._checksum(graph) == orjson.loads(meta.read_bytes())["checksum"]
    assert orjson.loads(meta.read_bytes())["count"] == 3


@pytest.mark.usefixtures("settled")
def test_a_copied_folder_is_checked_on_its_own(settings: Settings, lib: Path, seen: Seen) -> None:
    settle(settings, lib)
    shutil.copytree(lib / "album0", lib / "copy")  # keeps mtimes, like rsync -a
    graph = lib / "copy" / ".scanpix" / "index" / ann.GRAPH_NAME
    graph.write_bytes(b"\0" * graph.stat().st_size)
    run_passes(settings, lib, seen)
    assert seen.indexed == [lib / "copy"] and seen.swept == [lib / "copy"] and seen.times == 1
    meta = orjson.loads((graph.parent / ann.META_NAME).read_bytes())
    assert ann._checksum(graph) == meta["checksum"]  # rebuilt


@pytest.mark.usefixtures("settled")
def test_leftovers_are_swept_after_runs_that_skipped(settings: Settings, lib: Path, seen: Seen) -> None:
    settle(settings, lib)
    data = lib / "album2" / ".scanpix"
    leftovers = [data / "records" / ".IMG_7.jpg.json.tmp-1-ab", data / "thumbs" / "orphan-256.webp",
                 data / "index" / ".clip.hnsw.tmp-1-cd"]
    for path in leftovers:
        path.write_bytes(b"left behind")
    run_passes(settings, lib, seen)
    assert seen.swept == [lib / "album2"] and not any(p.exists() for p in leftovers)
    run_passes(settings, lib, seen)
    run_passes(settings, lib, seen)
    assert seen.swept == []


@pytest.mark.usefixtures("settled")
def test_a_changed_time_setting_reruns_the_time_pass(settings: Settings, lib: Path, seen: Seen) -> None:
    settle(settings, lib)
    settings.time.home_timezone = "Europe/Rome"
    run_passes(settings, lib, seen)
    assert seen.times == 1
    taken = record_at(settings, lib / "album0" / "IMG_0.jpg")["taken"]
    assert (taken["source"], taken["timezone"]) == ("home", "Europe/Rome")


@pytest.mark.usefixtures("settled")
def test_a_time_pass_that_wrote_is_not_repeated(settings: Settings, lib: Path, seen: Seen) -> None:
    """The first pass writes every record's time; the next run finds them as it left them."""
    run_passes(settings, lib, seen)
    assert seen.times == 1
    assert record_at(settings, lib / "album0" / "IMG_0.jpg")["taken"]["source"] == "unknown"
    run_passes(settings, lib, seen)
    assert seen.times == 0
    run_passes(settings, lib, seen)
    assert (seen.swept, seen.indexed, seen.times) == ([], [], 0)


@pytest.mark.usefixtures("settled")
def test_a_record_changed_after_the_time_pass_wrote_it_is_seen(
        settings: Settings, lib: Path, seen: Seen) -> None:
    run_passes(settings, lib)  # writes every record's time
    folder = folder_of(settings, lib / "album1")
    record = folder.read("IMG_4.jpg")
    assert record is not None
    record["metadata"]["offset"] = "+02:00"  # as a re-read of the file's metadata would
    folder.write(record)
    run_passes(settings, lib, seen)
    assert seen.times == 1
    taken = record_at(settings, lib / "album1" / "IMG_4.jpg")["taken"]
    assert (taken["source"], taken["offset"]) == ("offset-tag", "+02:00")


@pytest.mark.usefixtures("settled")
def test_a_folder_added_after_the_time_pass_wrote_is_seen(
        settings: Settings, lib: Path, seen: Seen) -> None:
    run_passes(settings, lib)
    add_photo(Store(settings), lib / "album9" / "IMG_90.jpg", 90)
    run_passes(settings, lib, seen)
    assert seen.times == 1
    assert record_at(settings, lib / "album9" / "IMG_90.jpg")["taken"]["source"] == "unknown"


def test_a_time_pass_that_wrote_is_repeated_while_its_records_are_too_new(
        settings: Settings, lib: Path, seen: Seen, monkeypatch: pytest.MonkeyPatch) -> None:
    """Records written within the racy window have no token yet: nothing can be confirmed."""
    monkeypatch.setattr(record_cache, "RACY_NS", -10**12)
    run_passes(settings, lib)
    monkeypatch.setattr(record_cache, "RACY_NS", 10**12)  # every record file is too new
    run_passes(settings, lib, seen)
    assert seen.times == 1
    monkeypatch.setattr(record_cache, "RACY_NS", -10**12)
    run_passes(settings, lib, seen)
    assert seen.times == 0


@pytest.mark.usefixtures("settled")
@pytest.mark.parametrize("damage", [{"settings": 1}, {"tokens": [], "written": "x"}, {"written": {"k": 1}}])
def test_a_damaged_expectation_only_costs_a_full_pass(
        settings: Settings, lib: Path, seen: Seen, damage: dict[str, object]) -> None:
    run_passes(settings, lib)
    (note,) = (settings.cache_dir / "upkeep").glob("*.json")
    data = orjson.loads(note.read_bytes())
    assert data["times"] is None and isinstance(data["times_pending"], dict)
    data["times_pending"].update(damage)
    note.write_bytes(orjson.dumps(data))
    run_passes(settings, lib, seen)
    assert seen.times == 1


@pytest.mark.usefixtures("settled")
def test_a_damaged_note_only_costs_a_full_pass(settings: Settings, lib: Path, seen: Seen) -> None:
    settle(settings, lib)
    notes = list((settings.cache_dir / "upkeep").glob("*.json"))
    assert len(notes) == 1
    notes[0].write_bytes(b"{not json")
    run_passes(settings, lib, seen)
    assert len(seen.swept) == 3 and len(seen.indexed) == 3 and seen.times == 1
    run_passes(settings, lib, seen)
    assert (seen.swept, seen.indexed, seen.times) == ([], [], 0)


@pytest.mark.usefixtures("settled")
def test_a_folder_the_run_wrote_to_is_looked_at_again(settings: Settings, lib: Path, seen: Seen) -> None:
    """Records written during a run (new files indexed) make their folders unknown to the notes."""
    settle(settings, lib)
    store = Store(settings)
    plan = reconcile([lib], settings, store, [])
    add_photo(store, lib / "album1" / "IMG_run.jpg", 77)  # as the pipeline would, in this run
    seen.swept.clear()
    seen.indexed.clear()
    upkeep.finish_passes(plan.folders, [lib], settings, MODEL)
    assert seen.swept == [lib / "album1"] and seen.indexed == [lib / "album1"]


@pytest.mark.usefixtures("settled")
def test_a_folder_read_from_two_places_is_seen_changing_in_either(
        settings: Settings, tmp_path: Path, seen: Seen) -> None:
    """Data written to the cache directory, and a synced ``.scanpix/`` read in the folder."""
    settings.write_mode = "cache"
    lib = tmp_path / "lib"
    store = Store(settings)
    for i in range(3):
        add_photo(store, lib / "album" / f"IMG_{i}.jpg", i)
    synced = FolderStore(lib / "album", lib / "album" / ".scanpix", [lib / "album" / ".scanpix"])
    settle(settings, lib)
    run_passes(settings, lib, seen)
    assert (seen.swept, seen.indexed, seen.times) == ([], [], 0)
    path = lib / "album" / "IMG_new.jpg"
    path.write_bytes(b"from the other machine")
    synced.write(_record(path, 50))  # its record arrives in the folder's own .scanpix/
    run_passes(settings, lib, seen)
    assert seen.indexed == [lib / "album"] and seen.times == 1
    meta = orjson.loads((Store(settings).folder(lib / "album").index_dir() / ann.META_NAME).read_bytes())
    assert "IMG_new.jpg" in [label[0] for label in meta["labels"]]


# -- the daemon's sweep after the rescan at its start: the same notes ---------------------------
def daemon_start_sweep(settings: Settings, lib: Path, seen: Seen) -> None:
    """What a daemon's start does for the sweep: a rescan of the whole root, then the sweep
    on the cheap loop, slice by slice, until no folder is left to look at."""
    seen.swept.clear()
    indexer = Indexer(settings, Store(settings), stages=[])  # a new process
    scheduler = Scheduler(indexer, [lib])
    try:
        scheduler.rescan(lib)
        assert scheduler._reconcile_pending()
        assert scheduler.pending()["sweep"] == 3, "a whole-root rescan queues every folder"
        while scheduler.pending()["sweep"]:
            assert scheduler._reconcile_pending()
    finally:
        indexer.close()


@pytest.mark.usefixtures("settled")
def test_a_daemon_start_sweeps_no_folder_found_clean_since(settings: Settings, lib: Path,
                                                           seen: Seen) -> None:
    settle(settings, lib)
    daemon_start_sweep(settings, lib, seen)
    assert seen.swept == []


@pytest.mark.usefixtures("settled")
def test_a_daemon_start_sweeps_leftovers_made_while_it_was_down(settings: Settings, lib: Path,
                                                                seen: Seen) -> None:
    settle(settings, lib)
    data = lib / "album1" / ".scanpix"
    leftovers = [data / "thumbs" / "orphan-256.webp", data / "records" / ".IMG_4.jpg.json.tmp-1-ab"]
    for path in leftovers:
        path.write_bytes(b"left behind")
    daemon_start_sweep(settings, lib, seen)
    assert seen.swept == [lib / "album1"] and not any(p.exists() for p in leftovers)
    assert record_at(settings, lib / "album1" / "IMG_4.jpg")["thumbs"]
    daemon_start_sweep(settings, lib, seen)  # found clean now, and noted so
    daemon_start_sweep(settings, lib, seen)
    assert seen.swept == []
    run_passes(settings, lib, seen)  # and the index run's notes are all still there
    assert (seen.swept, seen.indexed, seen.times) == ([], [], 0)

"""The daemon keeps the index current while people use their folders: real process, real inotify.

One ``scanpixd run`` serves the whole module (starting one costs seconds on a busy machine);
every test works in a folder of its own below the shared root.  Each change is observed
where a user would see it: the record beside the photo, the socket API, and the log line
the indexer prints once per file it processed (which proves a file was done once).
"""

from __future__ import annotations

import hashlib
import os
import shutil
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from scanpixd.errors import ScanpixError
from scanpixd.scan import content_hash
from scanpixd.store import Store
from tests.helpers_daemon import DaemonProcess, photo_bytes, wait_for, write_slowly
from tests.helpers_index import make_photo


@dataclass
class Live:
    daemon: DaemonProcess
    library: Path
    outside: Path  # same filesystem, outside every root: moves from here are moves in

    def folder(self, name: str) -> Path:
        path = self.library / name
        path.mkdir()
        return path

    def in_view(self, folder: Path) -> set[str]:
        """The paths the daemon's library view serves below ``folder`` (a ``folder:`` query)."""
        found = self.daemon.client.get("/v1/search", q=f'folder:"{folder}"', limit=1000)
        return {r["path"] for r in found["results"]}

    def api_has(self, path: Path) -> bool:
        try:
            self.daemon.client.get("/v1/item", path=str(path))
        except ScanpixError as exc:
            assert "not indexed" in str(exc)
            return False
        return True


@pytest.fixture(scope="module")
def live(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Live]:
    base = tmp_path_factory.mktemp("daemon-watch")
    library, outside = base / "library", base / "outside"
    library.mkdir()
    outside.mkdir()
    daemon = DaemonProcess(base / "daemon", [library], debounce=0.2)
    daemon.start()
    try:
        yield Live(daemon, library, outside)
    finally:
        daemon.close()


def assert_describes(record: dict, path: Path) -> None:
    st = path.stat()
    assert record["status"] == "ok", record.get("error")
    assert (record["size"], record["mtime_ns"]) == (st.st_size, st.st_mtime_ns)
    assert record["hash"] == content_hash(path)
    assert record["media"]["kind"] == "image"


def test_new_photo_is_indexed_once_and_served(live: Live) -> None:
    path = make_photo(live.folder("create") / "IMG_0001.jpg", seed=1, size=(320, 240))
    record = live.daemon.wait_record(path)
    assert_describes(record, path)
    assert record["thumbs"], "the cheap tier makes thumbnails"
    item = live.daemon.client.get("/v1/item", path=str(path))
    assert item["hash"] == record["hash"] and item["media"]["width"] == 320
    wait_for(lambda: str(path) in live.in_view(path.parent), 5, what="search hit")
    assert live.daemon.indexed_counts()[str(path)] == 1


def test_modified_photo_is_reindexed(live: Live) -> None:
    path = make_photo(live.folder("modify") / "edit.jpg", seed=2, size=(320, 240))
    first = live.daemon.wait_record(path)
    make_photo(path, seed=3, size=(400, 300))  # an editor saving over the original
    second = live.daemon.wait_record(path, check=lambda r: r["hash"] != first["hash"])
    assert_describes(second, path)
    assert second["media"]["width"] == 400
    assert live.daemon.indexed_counts()[str(path)] == 2
    live.daemon.wait_idle()
    thumbs = {p.name for p in (path.parent / ".scanpix" / "thumbs").iterdir()}
    assert thumbs == set(second["thumbs"].values()), "the old version's thumbnails are swept"


def test_move_in_and_out_of_the_library(live: Live) -> None:
    folder = live.folder("moves")
    staged = make_photo(live.outside / "download.jpg", seed=4, size=(320, 240))
    inside = folder / "download.jpg"
    os.rename(staged, inside)
    assert_describes(live.daemon.wait_record(inside), inside)
    assert live.api_has(inside)

    os.rename(inside, live.outside / "taken-away.jpg")
    live.daemon.wait_no_record(inside)
    assert not live.api_has(inside)
    wait_for(lambda: not live.in_view(folder), 5, what="the library view to drop it")
    assert not list((folder / ".scanpix" / "thumbs").iterdir()), "its thumbnails went with it"
    assert live.daemon.indexed_counts()[str(inside)] == 1


def test_rename_keeps_results_without_reindexing(live: Live) -> None:
    folder = live.folder("rename")
    old = make_photo(folder / "IMG_0002.jpg", seed=5, size=(320, 240))
    record = live.daemon.wait_record(old)
    new = folder / "beach.jpg"
    os.rename(old, new)
    moved = live.daemon.wait_record(new)
    live.daemon.wait_no_record(old)
    assert moved["hash"] == record["hash"] and moved["thumbs"] == record["thumbs"]
    counts = live.daemon.indexed_counts()
    assert counts[str(old)] == 1 and counts[str(new)] == 0
    wait_for(lambda: live.in_view(folder) == {str(new)}, 5, what="the view to follow")


def test_folder_rename_keeps_results(live: Live) -> None:
    old = live.folder("trip")
    photos = [make_photo(old / f"p{i}.jpg", seed=10 + i, size=(160, 120)) for i in range(3)]
    for photo in photos:
        live.daemon.wait_record(photo)
    wait_for(lambda: len(live.in_view(old)) == 3, 5, what="three hits")
    new = live.library / "Trip to Rome"
    os.rename(old, new)
    renamed = {str(new / p.name) for p in photos}
    wait_for(lambda: live.in_view(new) == renamed, 10, what="the renamed folder",
             log=live.daemon.log)
    wait_for(lambda: not live.in_view(old), 5, what="the old folder to go")
    assert all(live.api_has(Path(p)) for p in renamed)
    counts = live.daemon.indexed_counts()
    assert all(counts[p] == 0 for p in renamed), "a renamed folder is not indexed again"


def test_deleted_folder_leaves_the_library(live: Live) -> None:
    doomed = live.folder("doomed")
    sub = doomed / "sub"
    photos = [make_photo((sub if i % 2 else doomed) / f"d{i}.jpg", seed=20 + i, size=(160, 120))
              for i in range(4)]
    for photo in photos:
        live.daemon.wait_record(photo)
    wait_for(lambda: len(live.in_view(doomed)) == 4, 5, what="four hits")
    before = live.daemon.status()["items"]
    shutil.rmtree(doomed)
    wait_for(lambda: not live.in_view(doomed), 10, what="the view to drop them",
             log=live.daemon.log)
    assert not any(live.api_has(p) for p in photos)
    wait_for(lambda: live.daemon.status()["items"] <= before - 4, 5, what="the item count to drop")


def test_slow_write_is_indexed_once_when_complete(live: Live) -> None:
    """A copy trickling in for seconds: never indexed from a partial file, indexed once."""
    path = live.folder("slow") / "big.jpg"
    data = photo_bytes(30, size=(800, 600))

    def no_record_yet() -> None:
        assert live.daemon.record(path) is None, "indexed while still being written"

    write_slowly(path, data, chunks=8, pause=0.25, during=no_record_yet)  # ~2 s, 10x the debounce
    record = live.daemon.wait_record(path)
    assert record["size"] == len(data) == path.stat().st_size
    assert_describes(record, path)
    live.daemon.wait_idle()
    assert live.daemon.indexed_counts()[str(path)] == 1


@pytest.mark.parametrize("temp_name", ["photo.jpg.part", ".photo.jpg.Xa3f9"], ids=["part", "hidden"])
def test_download_renamed_into_place(live: Live, temp_name: str) -> None:
    """Browsers and rsync write under a temporary name, then rename: only the final name counts."""
    folder = live.folder(f"download-{temp_name[-4:]}")
    temp, final = folder / temp_name, folder / "photo.jpg"
    write_slowly(temp, photo_bytes(40 + len(temp_name), size=(640, 480)), chunks=4, pause=0.1)
    time.sleep(0.5)  # longer than the debounce: the temporary name was seen and ignored
    assert live.daemon.record(temp) is None
    os.rename(temp, final)
    assert_describes(live.daemon.wait_record(final), final)
    live.daemon.wait_idle()
    counts = live.daemon.indexed_counts()
    assert counts[str(final)] == 1 and counts[str(temp)] == 0


@pytest.mark.slow
def test_burst_of_a_thousand_files(live: Live) -> None:
    """A camera card dumped into one folder: every file indexed, none twice."""
    folder = live.folder("burst")
    blobs = [photo_bytes(1000 + i) for i in range(1000)]
    assert len({hashlib.blake2b(b).digest() for b in blobs}) == len(blobs), "every file distinct"
    started = time.monotonic()
    for i, blob in enumerate(blobs):
        (folder / f"IMG_{i:04d}.jpg").write_bytes(blob)
    folder_store = Store(live.daemon.settings()).folder(folder)
    wait_for(lambda: len(folder_store.records()) == len(blobs), 120, 0.5, "all 1,000 records",
             live.daemon.log)
    elapsed = time.monotonic() - started
    live.daemon.wait_idle()
    records = folder_store.records()
    assert all(r["status"] == "ok" for r in records.values())
    assert all(r["size"] == len(blobs[int(n[4:8])]) for n, r in records.items())
    counts = live.daemon.indexed_counts()
    per_file = [counts[str(folder / n)] for n in records]
    assert per_file.count(1) == len(blobs), f"indexed more than once: {sum(per_file) - len(blobs)}"
    print(f"1,000 files indexed {elapsed:.1f} s after the first was written")


def test_folder_arriving_with_its_index_is_trusted(live: Live) -> None:
    """A folder synced or moved in with its ``.scanpix/`` is served as is, nothing recomputed."""
    folder = live.folder("synced")
    photos = [make_photo(folder / f"s{i}.jpg", seed=50 + i, size=(160, 120)) for i in range(3)]
    for photo in photos:
        live.daemon.wait_record(photo)
    away = live.outside / "synced"
    os.rename(folder, away)
    wait_for(lambda: not live.in_view(folder), 10, what="the folder to leave", log=live.daemon.log)
    os.rename(away, folder)
    expected = {str(p) for p in photos}
    wait_for(lambda: live.in_view(folder) == expected, 10, what="the folder to come back",
             log=live.daemon.log)
    live.daemon.wait_idle()
    counts = live.daemon.indexed_counts()
    assert all(counts[str(p)] == 1 for p in photos), "its records were used, not redone"


def test_broken_file_is_recorded_failed_then_fixed(live: Live) -> None:
    folder = live.folder("broken")
    path = folder / "IMG_9999.jpg"
    path.write_bytes(photo_bytes(60, size=(320, 240))[:300])  # a copy cut short
    failed = live.daemon.wait_record(path)
    assert failed["status"] == "failed" and failed["error"], failed
    make_photo(path, seed=61, size=(320, 240))  # the complete file arrives later
    fixed = live.daemon.wait_record(path, check=lambda r: r["status"] == "ok")
    assert_describes(fixed, path)
    assert live.daemon.alive()


@pytest.fixture
def cached(tmp_path: Path) -> Iterator[Live]:
    """A daemon that keeps its data under the cache directory (read-only photo folders)."""
    library, outside = tmp_path / "library", tmp_path / "outside"
    library.mkdir()
    outside.mkdir()
    daemon = DaemonProcess(tmp_path / "daemon", [library], extra='write_mode = "cache"')
    daemon.start()
    try:
        yield Live(daemon, library, outside)
    finally:
        daemon.close()


def test_cache_mode_follows_renames_and_deletions(cached: Live) -> None:
    # An emptied root with cached data looks like an unmounted disk and keeps its index, so
    # another folder stays.
    cached.daemon.wait_record(make_photo(cached.folder("2023") / "keep.jpg", seed=69, size=(160, 120)))
    old = cached.folder("2024")
    photos = [make_photo(old / f"c{i}.jpg", seed=70 + i, size=(160, 120)) for i in range(3)]
    for photo in photos:
        cached.daemon.wait_record(photo)
    assert not (old / ".scanpix").exists(), "nothing is written beside the photos"

    new = cached.library / "2024 Holidays"
    os.rename(old, new)
    renamed = [new / p.name for p in photos]
    for photo, before in zip(renamed, photos, strict=True):
        record = cached.daemon.wait_record(photo)
        assert record["hash"] == content_hash(photo)
        cached.daemon.wait_no_record(before)
    wait_for(lambda: cached.in_view(new) == {str(p) for p in renamed}, 10, what="the view to follow")
    counts = cached.daemon.indexed_counts()
    assert all(counts[str(p)] == 0 for p in renamed), "moved records, not redone"

    shutil.rmtree(new)
    for photo in renamed:
        cached.daemon.wait_no_record(photo)
    wait_for(lambda: not cached.in_view(new), 10, what="the view to drop them")
    cached.daemon.wait_idle()
    left = [p.name for p in cached.daemon.cache.rglob("*") if p.is_file() and "2024" in str(p)
            and p.name != "FORMAT"]
    assert not left, f"records or thumbnails left in the cache: {left}"

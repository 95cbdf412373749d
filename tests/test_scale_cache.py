"""The machine-local cache behind ``FolderStore.records(full=False)``: fast, never stale.

Listings of a folder's records come from one cache file instead of one JSON file per
original (the difference between a 25 s and a 2 s rescan of 100k files), but a record
changed in any way (rewritten, edited in place with its mtime put back, deleted, added
by a sync) must show as it is now, and a damaged cache must only cost speed.
"""

from __future__ import annotations

import os
from pathlib import Path

import orjson
import pytest

from scanpixd.config import Settings
from scanpixd.record import Record, new_record
from scanpixd.store import FolderStore, Store, record_cache
from scanpixd.store.folder import _load_record


@pytest.fixture(name="folder")
def folder_fixture(tmp_path: Path) -> FolderStore:
    media = tmp_path / "photos"
    media.mkdir()
    folder = Store(Settings(cache_dir=tmp_path / "cache")).folder(media)
    for i in range(5):
        folder.write(_record(f"IMG_{i}.jpg", i))
    return folder


@pytest.fixture(name="settled")
def settled_fixture(monkeypatch: pytest.MonkeyPatch) -> None:
    """Treat every record file as old enough to cache (they were all written just now)."""
    monkeypatch.setattr(record_cache, "RACY_NS", -10**12)


def _record(name: str, seed: int, camera: str = "Canon") -> Record:
    record = new_record(name, 100 + seed, 1_700_000_000_000_000_000 + seed, f"b2:{seed:032x}")
    record["metadata"] = {"make": camera, "raw": {"EXIF:Make": camera, "EXIF:ISO": 100 * seed}}
    return record


def _cache(folder: FolderStore) -> Path:
    assert folder.cache_dir is not None
    return record_cache.cache_file(folder.cache_dir, folder.data_dir / "records")


def _slim_of(records: dict[str, Record]) -> dict[str, Record]:
    return {name: record_cache.slim(r) for name, r in records.items()}


def test_listing_is_the_records_without_the_raw_dump(folder: FolderStore, settled: None) -> None:
    full = folder.records()
    assert all("raw" in r["metadata"] for r in full.values())
    assert folder.records(full=False) == _slim_of(full)
    assert _cache(folder).is_file()
    assert folder.records(full=False) == _slim_of(full)  # from the cache this time


def test_cached_entries_are_not_read_again(folder: FolderStore, settled: None) -> None:
    directory = folder.data_dir / "records"
    reads: list[Path] = []

    def counting(path: Path) -> Record | None:
        reads.append(path)
        return _load_record(path)

    entries = list(os.scandir(directory))
    record_cache.read_view(_cache(folder), entries, counting)
    assert len(reads) == 5
    folder.write(_record("IMG_2.jpg", 2, camera="Nikon"))
    reads.clear()
    listed = record_cache.read_view(_cache(folder), list(os.scandir(directory)), counting)
    assert [p.name for p in reads] == ["IMG_2.jpg.json"]
    assert listed["IMG_2.jpg.json"]["metadata"]["make"] == "Nikon"


def test_edit_in_place_with_mtime_put_back_is_seen(folder: FolderStore, settled: None) -> None:
    folder.records(full=False)
    path = folder.record_path("IMG_1.jpg")
    before = path.stat()
    data = path.read_bytes().replace(b'"Canon"', b'"Sony!"')
    assert len(data) == before.st_size
    with open(path, "r+b") as fh:  # same inode, same size, mtime restored: only ctime tells
        fh.write(data)
    os.utime(path, ns=(before.st_atime_ns, before.st_mtime_ns))
    assert folder.records(full=False)["IMG_1.jpg"]["metadata"]["make"] == "Sony!"


def test_added_and_removed_records_show(folder: FolderStore, settled: None) -> None:
    folder.records(full=False)
    folder.remove("IMG_0.jpg")
    folder.write(_record("IMG_9.jpg", 9))
    assert sorted(folder.records(full=False)) == ["IMG_1.jpg", "IMG_2.jpg", "IMG_3.jpg", "IMG_4.jpg",
                                                  "IMG_9.jpg"]


@pytest.mark.parametrize("damage", [b"", b"{not json", b'{"format": 99, "entries": {}}',
                                    b'{"format": 1, "record_format": 1, "entries": {"IMG_1.jpg.json": [1]}}'])
def test_damaged_cache_only_costs_speed(folder: FolderStore, settled: None, damage: bytes) -> None:
    expected = _slim_of(folder.records())
    folder.records(full=False)
    _cache(folder).write_bytes(damage)
    assert folder.records(full=False) == expected
    assert orjson.loads(_cache(folder).read_bytes())["format"] == record_cache.CACHE_FORMAT  # rebuilt


def test_a_lying_cache_entry_is_not_trusted(folder: FolderStore, settled: None) -> None:
    """An entry whose stat key no longer matches its file is never used, whatever it says."""
    folder.records(full=False)
    data = orjson.loads(_cache(folder).read_bytes())
    data["entries"]["IMG_3.jpg.json"][4]["metadata"]["make"] = "Forged"
    data["entries"]["IMG_3.jpg.json"][0] += 1  # the key of another version of the file
    _cache(folder).write_bytes(orjson.dumps(data))
    assert folder.records(full=False)["IMG_3.jpg"]["metadata"]["make"] == "Canon"


def test_records_changed_just_now_are_not_cached(folder: FolderStore) -> None:
    """Timestamps of files written within the racy window may not tell versions apart."""
    assert len(folder.records(full=False)) == 5
    cache = _cache(folder)
    assert not cache.exists() or orjson.loads(cache.read_bytes())["entries"] == {}


def test_sync_conflicts_are_resolved_as_by_a_full_read(folder: FolderStore, settled: None) -> None:
    folder.records(full=False)
    (folder.folder / "IMG_4.jpg").write_bytes(b"the original")
    name = "IMG_4.jpg.sync-conflict-20240101-120000-ABCDEFG.json"
    conflict = folder.record_path("IMG_4.jpg").with_name(name)
    newer = _record("IMG_4.jpg", 4, camera="Leica")
    newer["stages"] = {"media": 1, "metadata": 1}
    conflict.write_bytes(orjson.dumps(newer))
    listed = folder.records(full=False)
    assert listed["IMG_4.jpg"]["metadata"]["make"] == "Leica"
    assert not conflict.exists()
    assert folder.records(full=False) == _slim_of(folder.records())


def test_without_a_cache_directory_listing_reads_the_files(tmp_path: Path) -> None:
    folder = FolderStore(tmp_path, tmp_path / ".scanpix", [tmp_path / ".scanpix"])
    folder.write(_record("a.jpg", 1))
    assert folder.records(full=False) == _slim_of(folder.records())


def test_the_scan_view_keeps_what_a_rescan_decides_on(folder: FolderStore, settled: None) -> None:
    record = _record("IMG_5.jpg", 5)
    record.update(media={"kind": "image"}, thumbs={"256": "x-256.webp"}, clip={"model": "m", "vectors": []})
    folder.write(record)
    listed = folder.records(full=False, view="scan")["IMG_5.jpg"]
    assert set(listed) <= record_cache.SCAN_FIELDS and listed["media"] == {"kind": "image"}
    assert "raw" not in listed["metadata"] and "thumbs" not in listed and "clip" not in listed
    assert folder.records(full=False)["IMG_5.jpg"]["thumbs"] == {"256": "x-256.webp"}  # its own cache


def test_the_token_names_the_record_files(folder: FolderStore, settled: None) -> None:
    """Equal tokens for the same files (whatever the view); any change gives another."""
    first = folder.listing("scan").token
    assert first is not None and folder.listing("slim").token == first == folder.listing().token
    path = folder.record_path("IMG_1.jpg")
    before = path.stat()
    data = path.read_bytes().replace(b'"Canon"', b'"Sony!"')
    with open(path, "r+b") as fh:  # in place, mtime restored
        fh.write(data)
    os.utime(path, ns=(before.st_atime_ns, before.st_mtime_ns))
    edited = folder.listing().token
    assert edited not in (None, first)
    folder.write(_record("IMG_9.jpg", 9))
    added = folder.listing().token
    assert added not in (None, first, edited)
    folder.record_path("IMG_9.jpg").unlink()
    assert folder.listing().token == edited  # the same files again


def test_the_token_is_kept_with_the_cache(folder: FolderStore, settled: None) -> None:
    token = folder.listing().token
    assert orjson.loads(_cache(folder).read_bytes())["token"] == token
    assert folder.listing().token == token  # from the cache this time


def test_no_token_while_a_record_is_within_the_racy_window(folder: FolderStore) -> None:
    assert folder.listing().token is None
    assert folder.listing_token() is None


def test_a_store_that_wrote_since_its_listing_has_no_token(folder: FolderStore, settled: None) -> None:
    assert folder.listing().token == folder.listing_token() is not None
    folder.write(_record("IMG_9.jpg", 9))
    assert folder.listing_token() is None
    assert folder.listing().token == folder.listing_token() is not None


def test_dir_keys_change_with_the_entries(folder: FolderStore, settled: None) -> None:
    keys = folder.dir_keys()
    assert keys is not None and keys == folder.dir_keys()
    folder.write_asset("x-256.webp", b"webp")
    assert folder.dir_keys() not in (None, keys)


def test_a_scan_cache_of_an_older_view_is_cut_down_not_reread(folder: FolderStore, settled: None) -> None:
    """Entries cached when the scan view kept all the metadata are cut to what it keeps now."""
    assert folder.cache_dir is not None
    cache = record_cache.cache_file(folder.cache_dir, folder.data_dir / "records", "scan")
    folder.records(full=False, view="scan")
    data = orjson.loads(cache.read_bytes())
    for entry in data["entries"].values():
        entry[4]["metadata"] = {"make": "Canon", "gps": None, "source": "exiftool"}  # as version 1 kept
    del data["view"], data["token"]
    cache.write_bytes(orjson.dumps(data))
    listed = folder.records(full=False, view="scan")
    assert listed["IMG_1.jpg"]["metadata"] == {"gps": None, "source": "exiftool"}  # not re-read
    rewritten = orjson.loads(cache.read_bytes())
    assert rewritten["view"] == record_cache.VIEW_VERSIONS["scan"] and rewritten["token"]


def test_names_that_are_not_utf8_are_cached(folder: FolderStore, settled: None) -> None:
    name = os.fsdecode(b"caf\xe9.jpg")
    folder.write(_record(name, 7))
    listed = folder.listing()
    assert name in listed and listed.token is not None
    assert folder.records(full=False) == _slim_of(folder.records())  # from the cache this time
    keys = folder.record_keys()
    assert keys is not None and folder.listing().token == listed.token == keys[1]

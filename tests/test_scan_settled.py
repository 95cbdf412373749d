"""A rescan takes a folder it noted as settled without reading its records, and only then.

Every real change must make the folder be reconciled file by file again: an original
edited, touched, added or deleted, a record edited in place, a stage version bumped, a
stage whose own judgement changed (a tool installed since), a setting that changes which
files are listed.  The library is real photos indexed by the real cheap tier.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import ClassVar

import orjson
import pytest

from scanpixd.config import Settings
from scanpixd.indexer import Indexer
from scanpixd.pipeline import Job, Services, Stage, build_stages
from scanpixd.record import Record
from scanpixd.scan import Plan, reconcile
from scanpixd.store import FolderStore, Store, record_cache
from tests.helpers_index import make_library, make_photo


@pytest.fixture(name="settled")
def settled_fixture(monkeypatch: pytest.MonkeyPatch) -> None:
    """Treat every file as older than the racy window (they were all written just now)."""
    monkeypatch.setattr(record_cache, "RACY_NS", -10**12)


@pytest.fixture(name="read")
def read_fixture(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[Path]]:
    """Folders whose records a rescan read (the real listing, watched)."""
    read: list[Path] = []
    listing = FolderStore.listing

    def watched(self: FolderStore, view: str = "slim") -> record_cache.Listing:
        if (self.folder / ".scanpix").is_dir():  # folders without data have nothing to read
            read.append(self.folder)
        return listing(self, view)

    monkeypatch.setattr(FolderStore, "listing", watched)
    yield read


@pytest.fixture(name="lib")
def lib_fixture(settings: Settings, tmp_path: Path) -> Path:
    make_library(tmp_path / "lib", 6, per_folder=3)
    indexer = Indexer(settings)
    try:
        indexer.index([tmp_path / "lib"])
    finally:
        indexer.close()
    return tmp_path / "lib"


class _Stages:
    """The real stages, built once per test (the metadata stage keeps exiftool running)."""

    def __init__(self, settings: Settings):
        self.services = Services(settings)
        self.list = build_stages(self.services)


@pytest.fixture(name="stages")
def stages_fixture(settings: Settings) -> Iterator[list[Stage]]:
    built = _Stages(settings)
    yield built.list
    built.services.close()


def rescan(settings: Settings, lib: Path, stages: list[Stage], read: list[Path] | None = None) -> Plan:
    if read is not None:
        read.clear()
    return reconcile([lib], settings, Store(settings), stages)


def settle(settings: Settings, lib: Path, stages: list[Stage], read: list[Path]) -> None:
    plan = rescan(settings, lib, stages, read)
    assert not plan.work and plan.unchanged == 6 and sorted(read) == [lib / "album00", lib / "album01"]


@pytest.mark.usefixtures("settled")
def test_a_settled_folder_is_not_read_again(settings: Settings, lib: Path, stages: list[Stage],
                                           read: list[Path]) -> None:
    settle(settings, lib, stages, read)
    plan = rescan(settings, lib, stages, read)
    assert read == [] and not plan.work and plan.unchanged == 6
    assert sorted(f.folder for f in plan.folders) == [lib / "album00", lib / "album01"]
    for folder in plan.folders:  # the passes after a run still know its records' token
        assert folder.listing_token() == Store(settings).folder(folder.folder).listing().token


def test_nothing_is_noted_within_the_racy_window(settings: Settings, lib: Path, stages: list[Stage],
                                                 read: list[Path]) -> None:
    rescan(settings, lib, stages, read)
    rescan(settings, lib, stages, read)
    assert sorted(read) == [lib / "album00", lib / "album01"]


@pytest.mark.usefixtures("settled")
@pytest.mark.parametrize("change", ["edited", "touched", "added", "deleted"])
def test_a_changed_original_is_reconciled(settings: Settings, lib: Path, stages: list[Stage],
                                         read: list[Path], change: str) -> None:
    settle(settings, lib, stages, read)
    photo = lib / "album01" / "IMG_0004.jpg"
    if change == "edited":
        make_photo(photo, seed=99)
    elif change == "touched":
        st = photo.stat()
        os.utime(photo, ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))
    elif change == "added":
        make_photo(lib / "album01" / "IMG_new.jpg", seed=98)
    else:
        photo.unlink()
    plan = rescan(settings, lib, stages, read)
    # album00 is read only when a file to hash may be a copy of one of its files
    assert set(read) == ({lib / "album01"} if change == "deleted" else {lib / "album00", lib / "album01"})
    expected = {"edited": (1, 5, 0), "touched": (0, 6, 0), "added": (1, 6, 0), "deleted": (0, 5, 1)}
    assert (len(plan.work), plan.unchanged, plan.removed) == expected[change]


@pytest.mark.usefixtures("settled")
def test_a_record_edited_in_place_is_read(settings: Settings, lib: Path, stages: list[Stage],
                                          read: list[Path]) -> None:
    settle(settings, lib, stages, read)
    folder = Store(settings).folder(lib / "album00")
    path = folder.record_path("IMG_0001.jpg")
    before = path.stat()
    record = orjson.loads(path.read_bytes())
    record["stages"]["thumbs"] = "0" * len(str(record["stages"]["thumbs"]))  # same size, stale
    data = orjson.dumps(record)
    assert len(data) == before.st_size
    with open(path, "r+b") as fh:
        fh.write(data)
    os.utime(path, ns=(before.st_atime_ns, before.st_mtime_ns))
    plan = rescan(settings, lib, stages, read)
    assert set(read) == {lib / "album00"}
    assert [(item.name, item.reason) for item in plan.work] == [("IMG_0001.jpg", "stale")]


@pytest.mark.usefixtures("settled")
def test_a_bumped_stage_version_reaches_settled_folders(
        settings: Settings, lib: Path, stages: list[Stage], read: list[Path],
        monkeypatch: pytest.MonkeyPatch) -> None:
    settle(settings, lib, stages, read)
    hashes = next(s for s in stages if s.name == "hashes")
    monkeypatch.setattr(type(hashes), "version", hashes.version + 1)
    plan = rescan(settings, lib, stages, read)
    assert len(plan.work) == 6 and {item.reason for item in plan.work} == {"stale"}


class _Retried(Stage):
    """A stage with a judgement of its own, as the metadata stage has: records it ran on
    without its tool are stale once the tool is there."""

    name = "retried"
    version = 1
    tool: ClassVar[bool] = False

    def is_current(self, record: Record) -> bool:
        return super().is_current(record) and not type(self).tool

    def run(self, job: Job) -> None:
        job.record[self.name] = {"tool": type(self).tool}


@pytest.mark.usefixtures("settled")
def test_a_stage_judging_anew_reaches_settled_folders(
        settings: Settings, lib: Path, stages: list[Stage], read: list[Path]) -> None:
    retried = _Retried()
    for folder in (lib / "album00", lib / "album01"):
        store = Store(settings).folder(folder)
        for record in store.records().values():
            record["stages"]["retried"] = 1
            store.write(record)
    settle(settings, lib, [*stages, retried], read)
    assert not rescan(settings, lib, [*stages, retried], read).work and read == []
    _Retried.tool = True
    try:
        plan = rescan(settings, lib, [*stages, retried], read)
    finally:
        _Retried.tool = False
    assert len(plan.work) == 6


@pytest.mark.usefixtures("settled")
def test_a_copy_of_a_file_in_a_settled_folder_reuses_its_results(
        settings: Settings, lib: Path, stages: list[Stage], read: list[Path]) -> None:
    settle(settings, lib, stages, read)
    (lib / "new").mkdir()
    shutil.copyfile(lib / "album00" / "IMG_0002.jpg", lib / "new" / "copy.jpg")  # a new mtime
    plan = rescan(settings, lib, stages, read)
    assert plan.copied == 1 and not plan.work
    record = Store(settings).folder(lib / "new").read("copy.jpg")
    source = Store(settings).folder(lib / "album00").read("IMG_0002.jpg")
    assert record is not None and source is not None and record["stages"] == source["stages"]


@pytest.mark.usefixtures("settled")
def test_a_new_exclude_pattern_is_seen(settings: Settings, lib: Path, stages: list[Stage],
                                       read: list[Path]) -> None:
    settle(settings, lib, stages, read)
    settings.exclude = [*settings.exclude, "IMG_0000.jpg"]
    plan = rescan(settings, lib, stages, read)
    assert set(read) == {lib / "album00"} and plan.removed == 1


@pytest.mark.usefixtures("settled")
@pytest.mark.parametrize("damage", [b"", b"{not json", b"\0" * 64, b'{"version": 1}'])
def test_a_damaged_note_only_costs_a_read(settings: Settings, lib: Path, stages: list[Stage],
                                          read: list[Path], damage: bytes) -> None:
    """Notes are written without fsync: what a crash may leave (nothing, zeros, a cut or old
    note) must only make the folder be read again, and the changes in it still be seen."""
    settle(settings, lib, stages, read)
    notes = sorted((settings.cache_dir / "scan").rglob("*.json"))
    assert len(notes) == 2
    for note in notes:
        note.write_bytes(damage)
    make_photo(lib / "album01" / "IMG_new.jpg", seed=97)
    plan = rescan(settings, lib, stages, read)
    assert sorted(read) == [lib / "album00", lib / "album01"]
    assert ([w.name for w in plan.work], plan.unchanged) == (["IMG_new.jpg"], 6)

"""The one-shot indexer end to end: reconcile, cheap stages, moves, deletes, copies, offline roots."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import orjson
import pytest

from scanpixd.config import Settings
from scanpixd.indexer import Indexer, Summary
from scanpixd.store import DATA_DIR_NAME, Store
from tests.conftest import run_cli
from tests.helpers_index import make_library, make_photo, write_config


def index(settings: Settings, *roots: Path) -> Summary:
    indexer = Indexer(settings)
    try:
        return indexer.index(list(roots))
    finally:
        indexer.close()


def record_of(settings: Settings, path: Path) -> dict:
    record = Store(settings).folder(path.parent).read(path.name)
    assert record is not None, f"no record for {path}"
    return record


def thumb_paths(settings: Settings, path: Path) -> list[Path]:
    folder = Store(settings).folder(path.parent)
    return [folder.asset_path(name) for name in record_of(settings, path)["thumbs"].values()]


def test_first_run_indexes_everything_and_second_run_does_nothing(settings, tmp_path):
    files = make_library(tmp_path / "lib", 7)
    first = index(settings, tmp_path / "lib")
    assert (first.indexed, first.failed, first.unchanged) == (7, 0, 0)
    for f in files:
        record = record_of(settings, f)
        assert record["status"] == "ok"
        assert record["media"]["kind"] == "image"
        assert set(record["thumbs"]) == {"256", "1024"}
        assert all(p.is_file() for p in thumb_paths(settings, f))
        assert record["hash"].startswith("b2:")
        assert {"media", "metadata", "thumbs", "hashes"} <= set(record["stages"])
    second = index(settings, tmp_path / "lib")
    assert (second.indexed, second.unchanged, second.moved, second.removed) == (0, 7, 0, 0)
    assert not second.did_work
    assert second.line().startswith("nothing to do")


def test_rename_and_move_keep_results_without_recomputing(settings, tmp_path):
    lib = tmp_path / "lib"
    a, b = make_photo(lib / "a" / "one.jpg", 1), make_photo(lib / "a" / "two.jpg", 2)
    index(settings, lib)
    before = record_of(settings, a)
    thumb_mtimes = [p.stat().st_mtime_ns for p in thumb_paths(settings, a)]
    a.rename(lib / "a" / "renamed.jpg")
    (lib / "b").mkdir()
    b.rename(lib / "b" / "two.jpg")
    summary = index(settings, lib)
    assert (summary.indexed, summary.moved, summary.removed) == (0, 2, 0)
    after = record_of(settings, lib / "a" / "renamed.jpg")
    assert after["name"] == "renamed.jpg"
    assert after["hashes"] == before["hashes"] and after["stages"] == before["stages"]
    assert [p.stat().st_mtime_ns for p in thumb_paths(settings, lib / "a" / "renamed.jpg")] == thumb_mtimes
    assert Store(settings).folder(lib / "a").read("one.jpg") is None
    assert all(p.is_file() for p in thumb_paths(settings, lib / "b" / "two.jpg"))


def test_renaming_a_folder_keeps_every_result(settings, tmp_path):
    lib = tmp_path / "lib"
    make_library(lib, 4, per_folder=4)
    index(settings, lib)
    (lib / "album00").rename(lib / "holiday")
    summary = index(settings, lib)
    assert summary.indexed == 0
    assert summary.unchanged == 4  # the folder's .scanpix/ moved with it


def test_delete_removes_record_and_thumbnails(settings, tmp_path):
    lib = tmp_path / "lib"
    keep, gone = make_photo(lib / "keep.jpg", 1), make_photo(lib / "gone.jpg", 2)
    index(settings, lib)
    thumbs = thumb_paths(settings, gone)
    gone.unlink()
    summary = index(settings, lib)
    assert summary.removed == 1
    assert Store(settings).folder(lib).read("gone.jpg") is None
    assert not any(p.exists() for p in thumbs)
    assert all(p.exists() for p in thumb_paths(settings, keep))


def test_exact_copy_reuses_results_and_shares_thumbnails(settings, tmp_path):
    lib = tmp_path / "lib"
    original = make_photo(lib / "x.jpg", 3)
    index(settings, lib)
    shutil.copyfile(original, lib / "copy of x.jpg")
    summary = index(settings, lib)
    assert (summary.indexed, summary.copied) == (0, 1)
    copy = record_of(settings, lib / "copy of x.jpg")
    assert copy["hash"] == record_of(settings, original)["hash"]
    (lib / "copy of x.jpg").unlink()
    index(settings, lib)
    assert all(p.exists() for p in thumb_paths(settings, original))  # still used by the original


def test_changed_file_is_reindexed(settings, tmp_path):
    lib = tmp_path / "lib"
    photo = make_photo(lib / "p.jpg", 4)
    index(settings, lib)
    old_hash = record_of(settings, photo)["hash"]
    make_photo(photo, 5)
    summary = index(settings, lib)
    assert summary.indexed == 1
    assert record_of(settings, photo)["hash"] != old_hash


def test_touched_file_is_not_recomputed(settings, tmp_path):
    lib = tmp_path / "lib"
    photo = make_photo(lib / "p.jpg", 4)
    index(settings, lib)
    os.utime(photo, ns=(1_600_000_000_000_000_000, 1_600_000_000_000_000_000))
    summary = index(settings, lib)
    assert (summary.indexed, summary.unchanged) == (0, 1)
    assert record_of(settings, photo)["mtime_ns"] == 1_600_000_000_000_000_000


def test_truncated_record_is_treated_as_missing_and_redone(settings, tmp_path):
    lib = tmp_path / "lib"
    photo = make_photo(lib / "p.jpg", 6)
    index(settings, lib)
    record_file = Store(settings).folder(lib).record_path("p.jpg")
    record_file.write_bytes(record_file.read_bytes()[:40])
    summary = index(settings, lib)
    assert summary.indexed == 1
    assert record_of(settings, photo)["status"] == "ok"


def test_names_that_are_not_utf8_survive(settings, tmp_path):
    lib = tmp_path / "lib"
    lib.mkdir()
    raw_name = b"caf\xe9 \xff.jpg"
    make_photo(tmp_path / "src.jpg", 7)
    os.rename(tmp_path / "src.jpg", os.path.join(os.fsencode(lib), raw_name))
    summary = index(settings, lib)
    assert (summary.indexed, summary.failed) == (1, 0)
    name = os.fsdecode(raw_name)
    record = Store(settings).folder(lib).read(name)
    assert record is not None and "name_b64" in record
    assert index(settings, lib).unchanged == 1


def test_missing_root_is_reported_and_nothing_is_purged(settings, tmp_path):
    settings.write_mode = "cache"
    lib = tmp_path / "disk"
    make_library(lib, 3)
    index(settings, lib)
    cache = Store(settings).cache_location(lib).parent
    records_before = sorted(cache.rglob("*.json"))
    assert records_before
    shutil.rmtree(lib)
    lib.mkdir()  # an empty mount point, as an unmounted disk leaves behind
    summary = index(settings, lib)
    assert summary.offline_roots == [lib] and summary.removed == 0
    shutil.rmtree(lib)  # the mount point itself gone
    summary = index(settings, lib)
    assert summary.offline_roots == [lib]
    assert sorted(cache.rglob("*.json")) == records_before


def test_folder_copied_with_its_index_recomputes_nothing(settings, tmp_path):
    make_library(tmp_path / "a", 5)
    index(settings, tmp_path / "a")
    shutil.copytree(tmp_path / "a", tmp_path / "synced")  # keeps mtimes, like rsync -a
    summary = index(settings, tmp_path / "synced")
    assert (summary.indexed, summary.unchanged) == (0, 5)
    subprocess.run(["cp", "-r", str(tmp_path / "a"), str(tmp_path / "plain-copy")], check=True)
    summary = index(settings, tmp_path / "plain-copy")  # new mtimes: hashed, matched, kept
    assert (summary.indexed, summary.unchanged) == (0, 5)


def test_read_only_folder_writes_to_the_cache_directory(tmp_path, isolated_env):
    lib = tmp_path / "ro"
    make_library(lib, 2, per_folder=2)
    config = write_config(tmp_path / "config.toml")
    cmd = ["scanpixd", "index", "--json", "--config", str(config), str(lib)]
    if os.geteuid() == 0:  # root ignores permissions: make it a read-only mount instead
        if shutil.which("unshare") is None:
            pytest.fail("unshare (util-linux) is needed to test a read-only folder as root")
        index_cmd = f"exec python3 -m scanpixd.cli.daemon_cli {' '.join(cmd[1:])}"
        script = f"mount --bind -o ro {lib} {lib} && {index_cmd}"
        done = subprocess.run(["unshare", "--mount", "sh", "-c", script], capture_output=True, text=True,
                              env={**os.environ, **isolated_env}, timeout=300)
    else:
        os.chmod(lib / "album00", 0o555)
        done = run_cli(*cmd, env=isolated_env)
    assert done.returncode == 0, done.stderr
    assert orjson.loads(done.stdout)["indexed"] == 2
    assert not (lib / "album00" / DATA_DIR_NAME).exists()
    cached = Path(isolated_env["XDG_CACHE_HOME"]) / "scanpix" / "tree" / str(lib / "album00").lstrip("/")
    assert len(list((cached / DATA_DIR_NAME / "records").glob("*.json"))) == 2


def test_a_tampered_record_never_reaches_outside_its_data_directory(settings, tmp_path):
    lib = tmp_path / "lib"
    photo = make_photo(lib / "p.jpg", 8)
    secret = tmp_path / "secret.txt"
    secret.write_text("not yours")
    index(settings, lib)
    folder = Store(settings).folder(lib)
    record = record_of(settings, photo)
    record["thumbs"] = {"256": "../../secret.txt", "1024": "/etc/passwd"}
    folder.write(record)
    from scanpixd.inspect import describe

    shown = describe(photo, settings)
    assert shown["thumbs"] == {"256": None, "1024": None}
    photo.unlink()
    assert index(settings, lib).removed == 1  # deleting its record deletes nothing outside
    assert secret.read_text() == "not yours"

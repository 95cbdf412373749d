"""The watcher against real inotify (and real polling) on temporary trees: no mocked events."""

from __future__ import annotations

import os
import shutil
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from scanpixd.store.atomic import write_bytes
from scanpixd.watch import Watcher
from tests.helpers_watch import RecordingSink, watch_settings

DEBOUNCE = 0.2
QUIET = 1.0  # no sink call for this long: the watcher has settled


class SizingSink(RecordingSink):
    """Also notes each ready file's size at the moment it is handed over."""

    def __init__(self) -> None:
        super().__init__()
        self.sizes: dict[Path, list[int]] = {}

    def file_ready(self, path: Path) -> None:
        self.sizes.setdefault(path, []).append(path.stat().st_size)
        super().file_ready(path)


@pytest.fixture
def tree(tmp_path: Path) -> tuple[Path, Path]:
    root = tmp_path / "root"
    outside = tmp_path / "outside"
    root.mkdir()
    outside.mkdir()
    return root, outside


@pytest.fixture
def start() -> Iterator[Callable[..., tuple[Watcher, SizingSink]]]:
    watchers: list[Watcher] = []

    def _start(*roots: Path, **kwargs: object) -> tuple[Watcher, SizingSink]:
        health = float(kwargs.pop("health_interval", 2.0))  # type: ignore[arg-type]
        sink = SizingSink()
        watcher = Watcher(watch_settings(*roots, debounce=DEBOUNCE, **kwargs), sink,  # type: ignore[arg-type]
                          health_interval=health)
        watcher.start()
        assert watcher.wait_started(20)
        watchers.append(watcher)
        return watcher, sink

    yield _start
    for watcher in watchers:
        watcher.stop()


def wait_calls(sink: RecordingSink, count: int, timeout: float = 15.0) -> list[tuple[str, tuple]]:
    assert sink.wait_for(lambda calls: len(calls) >= count, timeout), sink.calls
    sink.settle(QUIET)
    return list(sink.calls)


def test_new_file_is_delivered_once_after_it_is_closed(tree, start) -> None:
    root, _ = tree
    _, sink = start(root)
    (root / "a").mkdir()
    photo = root / "a" / "IMG_1.jpg"
    photo.write_bytes(b"x" * 5000)
    assert wait_calls(sink, 1) == [("file_ready", (photo,))]
    assert sink.sizes[photo] == [5000]


def test_modified_file_is_delivered_again(tree, start) -> None:
    root, _ = tree
    photo = root / "IMG_2.jpg"
    photo.write_bytes(b"old")
    _, sink = start(root)
    with photo.open("ab") as fh:
        fh.write(b" and new")
    assert wait_calls(sink, 1) == [("file_ready", (photo,))]


def test_slow_chunked_write_is_delivered_once_when_complete(tree, start) -> None:
    root, _ = tree
    _, sink = start(root)
    photo = root / "slow.jpg"
    with photo.open("wb") as fh:
        for _ in range(6):  # pauses longer than the debounce, file held open throughout
            fh.write(b"c" * 10_000)
            fh.flush()
            time.sleep(DEBOUNCE * 2)
    assert wait_calls(sink, 1) == [("file_ready", (photo,))]
    assert sink.sizes[photo] == [60_000]


def test_burst_of_a_thousand_files_each_delivered_once(tree, start) -> None:
    root, _ = tree
    _, sink = start(root)
    burst = root / "burst"
    burst.mkdir()
    expected = set()
    for i in range(1000):
        path = burst / f"IMG_{i:04d}.jpg"
        path.write_bytes(b"%d" % i)
        expected.add(path)
    calls = wait_calls(sink, 1000, timeout=60)
    ready = [args[0] for kind, args in calls if kind == "file_ready"]
    assert len(ready) == 1000 and set(ready) == expected
    assert [c for c in calls if c[0] != "file_ready"] == []


def test_moves_in_out_and_within(tree, start) -> None:
    root, outside = tree
    (root / "a").mkdir()
    kept = root / "a" / "kept.jpg"
    kept.write_bytes(b"k")
    leaving = root / "a" / "leaving.jpg"
    leaving.write_bytes(b"l")
    (outside / "incoming.jpg").write_bytes(b"i")
    (outside / "album").mkdir()
    (outside / "album" / "x.jpg").write_bytes(b"x")
    _, sink = start(root)

    os.rename(outside / "incoming.jpg", root / "incoming.jpg")
    os.rename(leaving, outside / "leaving.jpg")
    os.rename(kept, root / "a" / "renamed.jpg")
    os.rename(outside / "album", root / "album")
    calls = wait_calls(sink, 4)
    assert sorted(calls) == sorted([
        ("file_ready", (root / "incoming.jpg",)),
        ("file_removed", (leaving,)),
        ("file_moved", (kept, root / "a" / "renamed.jpg")),
        ("dir_ready", (root / "album",)),  # its content is scanned, not reported file by file
    ])


def test_renamed_folder_is_one_dir_moved(tree, start) -> None:
    root, _ = tree
    (root / "2023" / "trip").mkdir(parents=True)
    for i in range(5):
        (root / "2023" / "trip" / f"{i}.jpg").write_bytes(b"p")
    _, sink = start(root)
    os.rename(root / "2023", root / "2023-renamed")
    assert wait_calls(sink, 1) == [("dir_moved", (root / "2023", root / "2023-renamed"))]
    # the moved folder is still watched under its new name
    (root / "2023-renamed" / "trip" / "new.jpg").write_bytes(b"n")
    assert wait_calls(sink, 2)[1] == ("file_ready", (root / "2023-renamed" / "trip" / "new.jpg",))


def test_deleted_folder_is_one_dir_removed(tree, start) -> None:
    root, outside = tree
    top = root / "gone"
    for sub in ("a", "b"):
        (top / sub).mkdir(parents=True)
        for i in range(10):
            (top / sub / f"{i}.jpg").write_bytes(b"p")
    _, sink = start(root)
    shutil.rmtree(top)
    assert wait_calls(sink, 1) == [("dir_removed", (top,))]
    # a folder moved out of the roots is a removal as well
    (root / "b").mkdir()
    sink.settle(QUIET)
    before = len(sink.calls)
    os.rename(root / "b", outside / "b")
    assert wait_calls(sink, before + 1)[before:] == [("dir_removed", (root / "b",))]


def test_our_own_writes_and_excluded_paths_produce_nothing(tree, start) -> None:
    root, _ = tree
    (root / "a").mkdir()
    _, sink = start(root, exclude=["*.part", "Private/**"])
    data = root / "a" / ".scanpix"
    (data / "thumbs").mkdir(parents=True)
    for i in range(20):  # the store's atomic writes: a hidden temp file renamed into place
        write_bytes(data / f"IMG_{i}.jpg.json", b"{}")
        write_bytes(data / "thumbs" / f"{i}.webp", b"w" * 100)
    (root / "a" / ".hidden.jpg").write_bytes(b"h")
    (root / "@eaDir").mkdir()
    (root / "@eaDir" / "x.jpg").write_bytes(b"s")
    (root / "a" / "video.mp4.part").write_bytes(b"p")
    (root / "Private" / "x").mkdir(parents=True)
    (root / "Private" / "x" / "secret.jpg").write_bytes(b"s")
    sink.settle(QUIET)
    time.sleep(QUIET)
    assert sink.calls == []


def test_excluded_folders_are_not_even_watched(tree, start) -> None:
    root, _ = tree
    for name in ("a", "b", "c"):
        (root / name / ".scanpix" / "thumbs").mkdir(parents=True)
        (root / name / ".scanpix" / "index").mkdir()
    before = _inotify_watch_count()
    start(root)
    assert _inotify_watch_count() - before == 4  # root, a, b, c


def test_temp_file_renamed_into_place_is_delivered_once(tree, start) -> None:
    root, _ = tree
    _, sink = start(root)
    for temp, final in ((".IMG_5.jpg.tmp-1-ab", "IMG_5.jpg"), ("IMG_6.jpg.part", "IMG_6.jpg")):
        (root / temp).write_bytes(b"x" * 100)
        os.rename(root / temp, root / final)
    calls = wait_calls(sink, 2)
    assert sorted(calls) == [("file_ready", (root / "IMG_5.jpg",)),
                             ("file_ready", (root / "IMG_6.jpg",))]


def test_new_folder_filled_at_once_misses_nothing(tree, start) -> None:
    root, outside = tree
    _, sink = start(root)
    deep = root / "new" / "b" / "c"
    deep.mkdir(parents=True)  # files follow at once: some land before the folder's watch exists
    expected = set()
    for folder in (root / "new", root / "new" / "b", deep):
        for i in range(5):
            (folder / f"{i}.jpg").write_bytes(b"p")
            expected.add(folder / f"{i}.jpg")
    (outside / "linked.jpg").write_bytes(b"l")
    os.link(outside / "linked.jpg", deep / "linked.jpg")  # a hard link: created, never written
    expected.add(deep / "linked.jpg")
    calls = wait_calls(sink, len(expected))
    assert sorted(args[0] for _, args in calls) == sorted(expected)
    assert {kind for kind, _ in calls} == {"file_ready"}


def test_created_and_deleted_before_settling_is_never_reported(tree, start) -> None:
    root, _ = tree
    _, sink = start(root)
    (root / "flash.jpg").write_bytes(b"f")
    (root / "flash.jpg").unlink()
    (root / "stay.jpg").write_bytes(b"s")
    assert wait_calls(sink, 1) == [("file_ready", (root / "stay.jpg",))]


def test_polled_root(tree, start) -> None:
    root, _ = tree
    (root / "old.jpg").write_bytes(b"o")
    watcher, sink = start(root, poll=(root,), poll_interval=0.3)
    assert watcher.status()["roots"][str(root)]["mode"] == "polling"
    (root / "sub").mkdir()
    (root / "sub" / "new.jpg").write_bytes(b"n")
    (root / ".scanpix").mkdir()
    (root / ".scanpix" / "x.json").write_bytes(b"{}")
    assert wait_calls(sink, 1) == [("file_ready", (root / "sub" / "new.jpg",))]
    (root / "old.jpg").unlink()
    assert wait_calls(sink, 2)[1] == ("file_removed", (root / "old.jpg",))


def test_set_roots_adds_and_drops_roots(tmp_path, start) -> None:
    one, two = tmp_path / "one", tmp_path / "two"
    one.mkdir()
    two.mkdir()
    watcher, sink = start(one)
    watcher.set_roots([one, two])
    (two / "a.jpg").write_bytes(b"a")
    assert wait_calls(sink, 1) == [("file_ready", (two / "a.jpg",))]
    watcher.set_roots([two])
    assert list(watcher.status()["roots"]) == [str(two)]
    (one / "ignored.jpg").write_bytes(b"i")
    (two / "b.jpg").write_bytes(b"b")
    assert wait_calls(sink, 2)[1:] == [("file_ready", (two / "b.jpg",))]


def test_missing_root_is_offline_never_purged_and_rescanned_when_back(tmp_path, start) -> None:
    root = tmp_path / "disk"
    (root / "a").mkdir(parents=True)
    for i in range(5):
        (root / "a" / f"{i}.jpg").write_bytes(b"p")
    watcher, sink = start(root, health_interval=0.2)
    shutil.rmtree(root)
    calls = wait_calls(sink, 1)
    assert [kind for kind, _ in calls] == ["root_offline"]  # no removals: the index is kept
    assert watcher.status()["roots"][str(root)]["mode"] == "offline"
    root.mkdir()
    assert sink.wait_for(lambda c: c[-1][0] == "rescan", 10)
    assert sink.calls[-1] == ("rescan", (root, "root is back online"))
    assert watcher.status()["roots"][str(root)]["mode"] == "inotify"
    (root / "later.jpg").write_bytes(b"l")
    assert sink.wait_for(lambda c: c[-1] == ("file_ready", (root / "later.jpg",)), 10)


def test_root_missing_at_start_is_reported_offline(tmp_path, start) -> None:
    root = tmp_path / "unplugged"
    watcher, sink = start(root)
    assert wait_calls(sink, 1)[0][0] == "root_offline"
    assert watcher.status()["roots"][str(root)]["mode"] == "offline"


def test_symlinked_root_reports_paths_under_the_configured_root(tmp_path, start) -> None:
    real = tmp_path / "real"
    real.mkdir()
    link = tmp_path / "Pictures"
    link.symlink_to(real)
    _, sink = start(link)
    (real / "x.jpg").write_bytes(b"x")
    assert wait_calls(sink, 1) == [("file_ready", (link / "x.jpg",))]


def _inotify_watch_count() -> int:
    count = 0
    for fd in os.listdir("/proc/self/fd"):
        try:
            if os.readlink(f"/proc/self/fd/{fd}") != "anon_inode:inotify":
                continue
            with open(f"/proc/self/fdinfo/{fd}") as info:
                count += sum(1 for line in info if line.startswith("inotify wd:"))
        except OSError:
            continue
    return count

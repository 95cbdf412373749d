"""The shared exclude rules used by the scanner and the watcher."""

from __future__ import annotations

import doctest

import pytest

import scanpixd.excludes
from scanpixd.config import DEFAULT_EXCLUDES, Settings
from scanpixd.errors import ConfigError
from scanpixd.excludes import Excluder, is_excluded


def test_docstring_examples() -> None:
    assert doctest.testmod(scanpixd.excludes).failed == 0


@pytest.mark.parametrize("rel", [
    ".scanpix/IMG_1.jpg.json", "2023/.scanpix/thumbs/1.webp", ".hidden.jpg", "a/.git/x",
    "a/.IMG_1.jpg.tmp-123-ab", "@eaDir/IMG_1.jpg/SYNOFILE_THUMB_M.jpg", "a/.thumbnails/x.png",
    "#recycle/old.jpg", "$RECYCLE.BIN/x.jpg", "lost+found/x",
    "a/clip.mp4.part", "b/download.crdownload", "c/file.tmp", "notes.txt~", ".~lock.x#",
    "IMG_1.sync-conflict-20240101-123456-ABC.jpg",
])
def test_built_in_and_default_exclusions(rel: str) -> None:
    assert is_excluded(rel, Settings())


@pytest.mark.parametrize("rel", ["IMG_1.jpg", "2023/06/IMG_2.HEIC", "a b/c d.jpg",
                                 "eaDir/x.jpg", "recycle/x.jpg", "x.partial.jpg"])
def test_ordinary_photos_are_kept(rel: str) -> None:
    assert not is_excluded(rel, Settings())


def test_patterns() -> None:
    ex = Excluder(["Private", "2019/raw", "**/drafts", "/top/*.jpg", "cache/", "x[0-9]?.jpg"])
    assert ex.excluded("a/Private/x.jpg") and ex.excluded("Private")
    assert ex.excluded("2019/raw/x.cr2") and not ex.excluded("a/2019/raw/x.cr2")
    assert ex.excluded("drafts/a.jpg") and ex.excluded("a/b/drafts/c.jpg")
    assert ex.excluded("top/a.jpg") and not ex.excluded("top/sub/a.jpg")
    assert ex.excluded("a/cache/x.jpg") and not ex.excluded("a/cache")
    assert ex.excluded("a/cache", is_dir=True)
    assert ex.excluded("x1a.jpg") and not ex.excluded("xaa.jpg")
    assert not ex.excluded("")


def test_excluded_child_agrees_with_excluded() -> None:
    ex = Excluder(["2019/raw", "*.part", "cache/"])
    for parent, name, is_dir in [("2019", "raw", True), ("", "2019", True), ("a", "x.part", False),
                                 ("a", "cache", True), ("a", "cache", False), ("a", ".s", True)]:
        rel = f"{parent}/{name}" if parent else name
        assert ex.excluded_child(parent, name, is_dir=is_dir) == ex.excluded(rel, is_dir=is_dir)


@pytest.mark.parametrize("bad", ["", "/", "a//b", "../x", "a/./b", "x[ab"])
def test_bad_patterns_name_the_setting(bad: str) -> None:
    with pytest.raises(ConfigError, match=r"exclude\[1\]"):
        Excluder(["*.tmp", bad])


def test_settings_excluder_is_shared() -> None:
    settings = Settings()
    assert Excluder.from_settings(settings) is Excluder.from_settings(Settings())
    assert Excluder.from_settings(settings).patterns == DEFAULT_EXCLUDES

"""Acting on duplicate groups only when asked: dry runs, XMP ratings, moves, and undo."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import pytest

from scanpixd.duplicate_actions import (
    JOURNAL_PREFIX,
    apply,
    plan_move,
    plan_xmp,
    sidecar_of,
    undo,
)
from scanpixd.duplicates import DuplicateItem, Group, Member
from scanpixd.errors import UsageError


def _photos(folder: Path, names: list[str]) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i, name in enumerate(names):
        path = folder / name
        path.write_bytes(b"\xff\xd8 photo %d " % i + bytes(range(256)) * (i + 1))
        paths.append(path)
    return paths


def _group(paths: list[Path]) -> Group:
    members = [Member(str(p), 1.0 - i / 10, ["sharpest"] if i == 0 else ["less sharp"])
               for i, p in enumerate(paths)]
    return Group("near", DuplicateItem({}, paths[0]), members)


def _tree(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*"))
            if p.is_file()}


def test_dry_run_changes_nothing(tmp_path: Path) -> None:
    photos = _photos(tmp_path / "lib" / "2024", ["a.jpg", "b.jpg", "c.jpg"])
    before = _tree(tmp_path)
    plan = plan_move([_group(photos)], tmp_path / "dupes", roots=[tmp_path / "lib"])
    assert apply(plan) is None
    xmp = plan_xmp([_group(photos)], tmp_path / "journal")
    assert apply(xmp, dry_run=True) is None
    assert _tree(tmp_path) == before
    lines = plan.describe()
    assert lines == [f"move  {photos[1]} -> {tmp_path / 'dupes/2024/b.jpg'}",
                     f"move  {photos[2]} -> {tmp_path / 'dupes/2024/c.jpg'}"]
    assert xmp.describe()[0] == f"xmp   {photos[0]}.xmp (new): rating 5, label Green"
    assert plan.to_dict()["steps"][0]["action"] == "move"


def test_move_keeps_the_best_and_undo_restores(tmp_path: Path) -> None:
    photos = _photos(tmp_path / "lib" / "2024", ["a.jpg", "b.jpg", "c.jpg"])
    (photos[1].with_name("b.jpg.xmp")).write_text("<x/>")  # goes along with its photo
    before = _tree(tmp_path / "lib")
    plan = plan_move([_group(photos)], tmp_path / "dupes", roots=[tmp_path / "lib"])
    journal = apply(plan, dry_run=False)
    assert journal is not None and journal.parent == tmp_path / "dupes"
    assert journal.name.startswith(JOURNAL_PREFIX)
    assert photos[0].exists() and not photos[1].exists() and not photos[2].exists()
    assert (tmp_path / "dupes/2024/b.jpg").read_bytes() == before["2024/b.jpg"]
    assert (tmp_path / "dupes/2024/b.jpg.xmp").read_text() == "<x/>"
    report = undo(journal)
    assert len(report.restored) == 3 and not report.skipped
    assert _tree(tmp_path / "lib") == before
    assert not journal.exists() and journal.with_name(journal.name + ".undone").exists()


def test_move_never_overwrites(tmp_path: Path) -> None:
    photos = _photos(tmp_path / "a", ["x.jpg", "y.jpg"]) + _photos(tmp_path / "b", ["y.jpg"])
    existing = _photos(tmp_path / "dupes", ["y.jpg"])[0]
    old = existing.read_bytes()
    plan = plan_move([_group(photos)], tmp_path / "dupes")
    assert [s.target.name for s in plan.steps] == ["y (2).jpg", "y (3).jpg"]
    apply(plan, dry_run=False)
    assert existing.read_bytes() == old
    assert {p.name for p in (tmp_path / "dupes").glob("*.jpg")} == {"y.jpg", "y (2).jpg",
                                                                     "y (3).jpg"}


def test_undo_leaves_later_changes_alone(tmp_path: Path) -> None:
    photos = _photos(tmp_path / "lib", ["a.jpg", "b.jpg", "c.jpg"])
    journal = apply(plan_move([_group(photos)], tmp_path / "dupes"), dry_run=False)
    assert journal is not None
    (tmp_path / "dupes/c.jpg").unlink()  # the user deleted it there
    photos[1].write_bytes(b"a new file with the old name")
    report = undo(journal)
    assert report.restored == []
    assert {p.name for p, _ in report.skipped} == {"b.jpg", "c.jpg"}
    assert (tmp_path / "dupes/b.jpg").exists()  # not moved over the new file


def test_xmp_sidecars_new_and_undo(tmp_path: Path) -> None:
    photos = _photos(tmp_path / "lib", ["a.jpg", "b.heic"])
    journal = apply(plan_xmp([_group(photos)], tmp_path / "lib/.library"), dry_run=False)
    assert journal is not None
    best, rest = sidecar_of(photos[0]), sidecar_of(photos[1])
    assert best.name == "a.jpg.xmp" and rest.name == "b.heic.xmp"
    assert 'xmp:Rating="5"' in best.read_text() and 'xmp:Label="Green"' in best.read_text()
    assert 'xmp:Rating="1"' in rest.read_text() and 'xmp:Label="Red"' in rest.read_text()
    if shutil.which("exiftool"):
        out = subprocess.run(["exiftool", "-s3", "-XMP:Rating", "-XMP:Label", str(best)],
                             capture_output=True, text=True, check=True).stdout.split()
        assert out == ["5", "Green"]
    entries = json.loads(journal.read_text())["entries"]
    assert [e["sidecar"] for e in entries] == ["../a.jpg.xmp", "../b.heic.xmp"]  # relative
    report = undo(journal)
    assert len(report.restored) == 2 and not best.exists() and not rest.exists()
    assert photos[0].exists() and photos[1].exists()


@pytest.mark.skipif(shutil.which("exiftool") is None, reason="exiftool is not installed")
def test_existing_sidecar_is_updated_in_place_and_restored(tmp_path: Path) -> None:
    photos = _photos(tmp_path / "lib", ["a.jpg", "b.jpg"])
    existing = photos[1].with_suffix(".xmp")  # the Adobe-style name
    subprocess.run(["exiftool", "-q", "-o", str(existing), "-XMP-dc:Subject=holiday",
                    "-XMP-xmp:Rating=3"], check=True, capture_output=True)
    before = existing.read_bytes()
    assert sidecar_of(photos[1]) == existing
    journal = apply(plan_xmp([_group(photos)], tmp_path / "j", rest_label=None),
                    dry_run=False)
    assert journal is not None
    out = subprocess.run(["exiftool", "-s3", "-XMP:Rating", "-XMP:Subject", str(existing)],
                         capture_output=True, text=True, check=True).stdout.split()
    assert out == ["1", "holiday"]  # the rating changed, the keyword kept
    undo(journal)
    assert existing.read_bytes() == before


def test_bad_requests_are_refused(tmp_path: Path) -> None:
    photos = _photos(tmp_path / "lib", ["a.jpg", "b.jpg"])
    with pytest.raises(UsageError, match="rating"):
        plan_xmp([_group(photos)], tmp_path, best_rating=9)
    plan = plan_move([_group(photos)], tmp_path / "dupes")
    photos[1].unlink()
    with pytest.raises(UsageError, match="no such file"):
        apply(plan, dry_run=False)
    assert not (tmp_path / "dupes").exists()  # refused before anything was written
    (tmp_path / "junk.json").write_text("{}")
    with pytest.raises(UsageError, match="not an undo journal"):
        undo(tmp_path / "junk.json")
    same = plan_move([_group(_photos(tmp_path / "d", ["x.jpg", "y.jpg"]))], tmp_path / "d")
    assert same.steps[0].note and apply(same, dry_run=False) is None

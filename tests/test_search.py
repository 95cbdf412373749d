"""Search over a real indexed library: similar:, negative terms, filters, floors, videos."""

from __future__ import annotations

import shutil
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from scanpixd.config import Settings
from scanpixd.errors import ModelUnavailable, QueryError
from scanpixd.library import Library
from scanpixd.query import parse
from scanpixd.query.engine import Result, search
from scanpixd.store import Store
from tests.conftest import CORPORA
from tests.helpers_clip import (
    TinyClip,
    index_with_clip,
    recompressed,
    resized,
    tiny_clip_fixture,  # noqa: F401
)

TAKEN = {  # capture times written as the time stage would, to check listing order
    "trip/DSCN0021.jpg": "2008-10-22T16:10:00",
    "trip/DSCN0010.jpg": "2008-10-22T16:28:39",
    "phones/Apple iPhone 4.jpg": "2011-01-13T14:33:39",
}
COPIES = {"trip/DSCN0010.jpg", "phones/DSCN0010_small.jpg", "phones/DSCN0010_q35.jpg"}


@pytest.fixture(scope="module")
def root(tmp_path_factory: pytest.TempPathFactory, tiny_clip: TinyClip) -> Path:
    if not CORPORA.is_dir():
        pytest.skip("the shared corpora are not beside the project")
    base = tmp_path_factory.mktemp("search")
    root = base / "photos"
    (root / "trip").mkdir(parents=True)
    (root / "phones").mkdir()
    (root / "video").mkdir()
    for path in sorted((CORPORA / "exif-samples" / "jpg" / "gps").glob("*.jpg"))[:4]:
        shutil.copy2(path, root / "trip" / path.name)
    phones = sorted((CORPORA / "metadata-extractor-images" / "jpg").glob("Apple*.jpg"))[:4]
    for path in phones:
        shutil.copy2(path, root / "phones" / path.name)
    resized(root / "trip" / "DSCN0010.jpg", root / "phones" / "DSCN0010_small.jpg", 0.4)
    recompressed(root / "trip" / "DSCN0010.jpg", root / "phones" / "DSCN0010_q35.jpg")
    shutil.copy2(CORPORA / "face_recognition" / "examples" / "short_hamilton_clip.mp4",
                 root / "video")
    settings = make_settings(base, tiny_clip)
    index_with_clip(settings, root)
    store = Store(settings)
    for rel, when in TAKEN.items():
        folder = store.folder((root / rel).parent)
        record = folder.read(Path(rel).name)
        assert record is not None
        record["taken"] = {"local": when, "utc": None, "timezone": None, "source": "test"}
        folder.write(record)
    return root


def make_settings(base: Path, tiny_clip: TinyClip) -> Settings:
    settings = Settings(cache_dir=base / "cache", jobs=2)
    settings.faces.enabled = False
    return tiny_clip.apply(settings)


@pytest.fixture(scope="module")
def library(root: Path, tiny_clip: TinyClip) -> Library:
    lib = Library(make_settings(root.parent, tiny_clip), write_indexes=True)
    lib.load([root])
    return lib


def run(library: Library, text: str, root: Path, limit: int = 50) -> list[Result]:
    return search(library, parse(text), limit=limit, cwd=root)


def rel(results: list[Result], root: Path) -> list[str]:
    return [r.path.relative_to(root).as_posix() for r in results]


def with_clip(library: Library, root: Path, **changes: object) -> Library:
    """The same library read with other clip settings."""
    settings = replace(library.settings, clip=replace(library.settings.clip, **changes))
    same_model = not {"model", "pretrained", "enabled"} & set(changes)
    other = Library(settings, clip=library.clip if same_model else None)
    other.load([root])
    return other


def test_library_holds_every_file_and_vector(library: Library, root: Path):
    assert len(library) == 11
    assert library.vectors is not None and len(library.vectors) > 10  # video frames too
    item = library.get(root / "video" / "short_hamilton_clip.mp4")
    assert item is not None and item.rows.size >= 2 and item.root == root


def test_similar_finds_the_photo_and_its_copies_before_anything_else(library: Library, root: Path):
    results = run(library, "similar:trip/DSCN0010.jpg", root)
    assert set(rel(results[:3], root)) == COPIES
    assert results[0].path == root / "trip" / "DSCN0010.jpg"
    assert results[0].score == pytest.approx(1.0, abs=1e-3)
    assert all(r.score is not None and r.score <= results[2].score for r in results[3:])


def test_similar_to_an_image_outside_the_library_embeds_it(library: Library, root: Path,
                                                           tmp_path: Path):
    outside = resized(root / "trip" / "DSCN0010.jpg", tmp_path / "from-email.jpg", 0.3)
    results = run(library, f"similar:{outside}", root)
    assert set(rel(results[:3], root)) == COPIES


def test_the_floor_cuts_unrelated_photos(library: Library, root: Path):
    strict = run(library, "similar:trip/DSCN0010.jpg", root)
    assert len(strict) < len(library)
    loose = run(with_clip(library, root, similar_floor=0.0), "similar:trip/DSCN0010.jpg", root)
    assert len(loose) > len(strict)
    everything = run(with_clip(library, root, similar_floor=0.0), "similar:trip/DSCN0010.jpg",
                     root, limit=3)
    assert len(everything) == 3


def test_a_negative_term_demotes_what_it_names(library: Library, root: Path):
    lib = with_clip(library, root, score_floor=0.0)
    plain = run(lib, "people", root)
    assert len(plain) >= 3
    snow = lib.clip.embed_text(["snow"])[0]
    likeness = {r.path: float(np.max(lib.vectors_of(r.item) @ snow)) for r in plain}
    target = max(likeness, key=lambda p: likeness[p])
    demoted = run(lib, "people -snow", root)
    paths = [r.path for r in demoted]
    before = next(r for r in plain if r.path == target)
    if target in paths:
        after = demoted[paths.index(target)]
        assert after.score is not None and before.score is not None and after.score < before.score
        assert paths.index(target) >= [r.path for r in plain].index(target)
    others = {r.path: r.score for r in demoted}
    for r in plain:  # nothing is promoted by a negative term
        assert others.get(r.path, -1.0) <= (r.score or 0.0) + 1e-6


def test_a_negative_similar_term_removes_near_copies(library: Library, root: Path):
    results = run(library, "similar:trip/DSCN0010.jpg -similar:phones/DSCN0010_q35.jpg", root)
    assert not COPIES & set(rel(results, root))
    unrelated = run(library, "similar:trip/DSCN0010.jpg -similar:video/short_hamilton_clip.mp4",
                    root)
    assert set(rel(unrelated[:3], root)) == COPIES


def test_filters_cut_exactly(library: Library, root: Path):
    listing = run(library, "folder:phones", root)
    assert sorted(rel(listing, root)) == sorted(
        f"phones/{p.name}" for p in (root / "phones").iterdir() if p.is_file())
    everywhere = run(library, "similar:trip/DSCN0010.jpg", root)
    ranked = run(library, "similar:trip/DSCN0010.jpg folder:phones", root)
    assert [(r.path, r.score) for r in ranked] == [
        (r.path, r.score) for r in everywhere if r.path.parent.name == "phones"]
    assert {"phones/DSCN0010_small.jpg", "phones/DSCN0010_q35.jpg"} == set(rel(ranked[:2], root))
    negated = run(library, "similar:trip/DSCN0010.jpg -folder:phones", root)
    assert [(r.path, r.score) for r in negated] == [
        (r.path, r.score) for r in everywhere if r.path.parent.name != "phones"]
    assert rel(run(library, "type:video", root), root) == ["video/short_hamilton_clip.mp4"]


def test_a_filter_only_query_lists_by_capture_time(library: Library, root: Path):
    listing = rel(run(library, "-type:video", root), root)
    assert listing[:3] == list(TAKEN)  # dated items first, oldest first
    assert len(listing) == 10
    assert [r.score for r in run(library, "folder:trip", root)] == [None] * 4


def test_a_video_hit_reports_the_best_frame(library: Library, root: Path, tmp_path: Path):
    from scanpixd.pipeline.video import sample_frames

    video = root / "video" / "short_hamilton_clip.mp4"
    frames = sample_frames(video, 8, 448)
    when, frame = frames[len(frames) // 2]
    frame.save(tmp_path / "still.jpg", quality=92)
    results = run(library, f"similar:{tmp_path / 'still.jpg'}", root)
    assert results[0].path == video
    assert results[0].time == pytest.approx(when, abs=0.01)


def test_semantic_queries_need_the_model_but_filters_do_not(library: Library, root: Path,
                                                            tmp_path: Path):
    lib = with_clip(library, root, pretrained=str(tmp_path / "gone.pt"))
    with pytest.raises(ModelUnavailable, match="checkpoint not found"):
        run(lib, "a dog on the beach", root)
    with pytest.raises(ModelUnavailable):
        run(lib, "similar:trip/DSCN0010.jpg", root)
    assert len(run(lib, "folder:trip", root)) == 4
    off = with_clip(library, root, enabled=False)
    with pytest.raises(ModelUnavailable, match="clip.enabled"):
        run(off, "dog", root)


def test_similar_to_a_missing_or_unreadable_file_is_a_query_error(library: Library, root: Path,
                                                                  tmp_path: Path):
    with pytest.raises(QueryError, match="no such file"):
        run(library, "similar:nowhere.jpg", root)
    junk = tmp_path / "junk.jpg"
    junk.write_bytes(b"not an image at all")
    with pytest.raises(QueryError, match="cannot read"):
        run(library, f"similar:{junk}", root)


def test_updates_and_removals_show_at_once(library: Library, root: Path, tiny_clip: TinyClip):
    lib = Library(library.settings, clip=library.clip)
    lib.load([root])
    folder = lib.store.folder(root / "phones")
    copy = folder.read("DSCN0010_q35.jpg")
    assert copy is not None
    lib.remove(folder, "DSCN0010_q35.jpg")
    assert "phones/DSCN0010_q35.jpg" not in rel(run(lib, "similar:trip/DSCN0010.jpg", root), root)
    copy["name"] = "renamed.jpg"
    lib.update(folder, "renamed.jpg", copy)
    assert "phones/renamed.jpg" in rel(run(lib, "similar:trip/DSCN0010.jpg", root), root)
    lib.move(folder, "renamed.jpg", lib.store.folder(root / "trip"), "moved.jpg", copy)
    found = rel(run(lib, "similar:trip/DSCN0010.jpg", root), root)
    assert "trip/moved.jpg" in found and "phones/renamed.jpg" not in found
    assert len(lib) == len(library)

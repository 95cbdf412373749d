"""The cheap tier's plumbing: exiftool reads batches on its own thread beside the decoders."""

from __future__ import annotations

from pathlib import Path

from PIL import Image

from scanpixd.config import Settings
from scanpixd.indexer import Indexer, _decodes_with_metadata, _ramp
from scanpixd.store import Store
from tests.helpers_index import make_photo


def _photo_by(path: Path, seed: int, model: str) -> Path:
    """A JPEG whose EXIF names its own camera model."""
    make_photo(path, seed)
    exif = Image.Exif()
    exif[0x010F] = "Test"  # Make
    exif[0x0110] = model  # Model
    with Image.open(path) as im:
        im.load()
        im.save(path, "JPEG", quality=90, exif=exif.tobytes())
    return path


def test_batches_start_small_and_grow_to_the_batch_size():
    batches = list(_ramp(list(range(40)), 8))
    assert [len(b) for b in batches] == [1, 2, 4, 8, 8, 8, 8, 1]
    assert [x for b in batches for x in b] == list(range(40))
    assert list(_ramp([], 8)) == []
    assert [len(b) for b in _ramp(list(range(3)), 1)] == [1, 1, 1]


def test_each_file_gets_its_own_metadata_across_batches(settings: Settings, tmp_path: Path):
    settings.exiftool.batch_size = 2  # batches of 1, 2, 2, 2: futures shared by several files
    files = [_photo_by(tmp_path / "lib" / f"IMG_{i}.jpg", i, f"Cam {i}") for i in range(7)]
    indexer = Indexer(settings)
    try:
        summary = indexer.index([tmp_path / "lib"])
    finally:
        indexer.close()
    assert (summary.indexed, summary.failed) == (7, 0)
    store = Store(settings)
    for i, path in enumerate(files):
        record = store.folder(path.parent).read(path.name)
        assert record is not None and record["status"] == "ok"
        assert record["metadata"]["model"] == f"Cam {i}", path
        assert record["metadata"]["source"] == "exiftool"
        assert set(record["thumbs"]) == {"256", "1024"}


def test_stopping_mid_run_leaves_the_rest_for_the_next_run(settings: Settings, tmp_path: Path):
    settings.exiftool.batch_size = 2
    for i in range(9):
        make_photo(tmp_path / "lib" / f"IMG_{i}.jpg", i)
    indexer = Indexer(settings)
    indexer.progress = lambda phase, done, total: indexer.stop.set() if phase == "index" else None
    try:
        first = indexer.index([tmp_path / "lib"])
    finally:
        indexer.close()
    assert first.interrupted and 1 <= first.indexed < 9 and first.failed == 0
    again = Indexer(settings)
    try:
        second = again.index([tmp_path / "lib"])
    finally:
        again.close()
    assert second.indexed == 9 - first.indexed and second.failed == 0


def test_only_camera_raws_wait_for_metadata_before_decoding(tmp_path: Path):
    picture = Image.new("RGB", (32, 24), (200, 10, 10))
    picture.save(tmp_path / "shot.nef", "TIFF")  # a TIFF-based raw, told by its extension
    picture.save(tmp_path / "shot.jpg", "JPEG")
    (tmp_path / "notes.txt").write_text("not media")
    assert _decodes_with_metadata(tmp_path / "shot.nef")
    assert not _decodes_with_metadata(tmp_path / "shot.jpg")
    assert not _decodes_with_metadata(tmp_path / "notes.txt")
    assert not _decodes_with_metadata(tmp_path / "missing.jpg")

"""The library's in-memory view: loading, incremental changes, the saved library-wide graph.

Records are written with vectors of the default model id (naming it needs no weights), so
these tests need no model at all.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from scanpixd.config import Settings
from scanpixd.library import Library
from scanpixd.query import parse
from scanpixd.query.engine import search
from scanpixd.record import encode_vector, new_record
from scanpixd.store import Store, ann

DIM = 32
MODEL = "ViT-B-32/laion2b_s34b_b79k"  # what default clip settings name


def unit(rng: np.random.Generator, count: int) -> np.ndarray:
    v = rng.standard_normal((count, DIM)).astype(np.float32)
    return v / np.linalg.norm(v, axis=1, keepdims=True)


def write(settings: Settings, folder: Path, name: str, vectors: np.ndarray,
          times: list[float | None] | None = None, model: str = MODEL) -> dict:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / name).write_bytes(b"x")
    record = new_record(name, 1, 1, f"b2:{abs(hash((folder, name))):032x}")
    record["media"] = {"kind": "video" if times else "image"}
    record["metadata"] = {"make": "Canon", "raw": {f"Tag{i}": "x" * 50 for i in range(200)}}
    times = times or [None] * len(vectors)
    record["clip"] = {"model": model, "dim": DIM,
                      "vectors": [{"time": t, "v": encode_vector(v)} for t, v in zip(times, vectors,
                                                                                     strict=True)]}
    Store(settings).folder(folder).write(record)
    return record


@pytest.fixture
def photos(settings: Settings, tmp_path: Path) -> tuple[Path, np.ndarray]:
    settings.clip.enabled = True
    root = tmp_path / "photos"
    data = unit(np.random.default_rng(0), 120)
    for i, v in enumerate(data):
        write(settings, root / f"f{i // 40}", f"IMG_{i:03d}.jpg", v[None])
    write(settings, root / "skip" / ".hidden", "IMG_h.jpg", data[:1])  # excluded folder
    write(settings, root / "f0", "other-model.jpg", data[:1], model="RN50/openai")
    return root, data


def nearest(library: Library, vector: np.ndarray) -> str:
    assert library.vectors is not None
    rows, _ = library.vectors.search(vector, 1)
    item = library.item(int(library.vectors.owner(rows)[0]))
    assert item is not None
    return item.name


def test_load_reads_every_folder_and_keeps_records_slim(settings: Settings, photos):
    root, data = photos
    library = Library(settings, write_indexes=True)
    library.load([root])
    assert len(library) == 121  # 120 + the other model's file (no vectors), not the hidden one
    assert library.vectors is not None and len(library.vectors) == 120
    item = library.get(root / "f1" / "IMG_050.jpg")
    assert item is not None and item.root == root
    assert "raw" not in item.record["metadata"] and item.record["metadata"]["make"] == "Canon"
    assert "raw" in library.full_record(item)["metadata"]
    assert library.get(root / "f0" / "other-model.jpg").rows.size == 0  # type: ignore[union-attr]
    assert nearest(library, data[77]) == "IMG_077.jpg"
    assert library.flush() == 3  # folders read from their records: their indexes are checked
    for sub in ("f0", "f1", "f2"):  # the portable per-folder index came up to date
        meta = ann.read_meta(Store(settings).folder(root / sub))
        assert meta is not None and meta["model"] == MODEL and meta["count"] == 40


def test_a_direct_reader_writes_nothing(settings: Settings, photos):
    root, _ = photos
    Library(settings).load([root])
    assert not (root / "f0" / ".scanpix" / "index" / ann.META_NAME).exists()


def test_an_offline_root_is_reported_not_purged(settings: Settings, photos, tmp_path: Path):
    root, _ = photos
    library = Library(settings)
    library.load([root, tmp_path / "unplugged-disk"])
    assert library.offline_roots == [tmp_path / "unplugged-disk"] and len(library) == 121


def test_video_frames_are_searched_per_frame_and_report_their_time(settings: Settings,
                                                                   tmp_path: Path):
    settings.clip.enabled = True
    settings.clip.similar_floor = 0.0
    root = tmp_path / "photos"
    rng = np.random.default_rng(3)
    frames = unit(rng, 3)
    for i, v in enumerate(unit(rng, 20)):
        write(settings, root, f"IMG_{i:02d}.jpg", v[None])
    write(settings, root, "clip.mp4", frames, times=[0.0, 4.5, 9.0])
    probe = write(settings, tmp_path / "elsewhere", "probe.jpg", frames[1:2])
    library = Library(settings)
    library.load([root, tmp_path / "elsewhere"])
    results = search(library, parse(f"similar:{tmp_path / 'elsewhere' / 'probe.jpg'}"), limit=5)
    assert probe["name"] == "probe.jpg"
    top = [r for r in results if r.path.name == "clip.mp4"]
    assert top and top[0].time == 4.5
    assert len({r.path for r in results}) == len(results)  # one result per file


def test_updates_keep_unchanged_vectors_and_compaction_drops_dead_rows(settings: Settings,
                                                                       photos):
    root, data = photos
    library = Library(settings)
    library.load([root])
    assert library.vectors is not None
    folder = library.store.folder(root / "f1")
    record = folder.read("IMG_041.jpg")
    assert record is not None
    before = library.get(root / "f1" / "IMG_041.jpg")
    assert before is not None
    record["place"] = {"city": "Siena"}
    after = library.update(folder, "IMG_041.jpg", record)  # a cheaper stage wrote: same vectors
    assert after is not None and list(after.rows) == list(before.rows)
    assert after.record["place"] == {"city": "Siena"} and library.vectors.dead == 0

    moved = unit(np.random.default_rng(11), 1)
    record["clip"]["vectors"][0]["v"] = encode_vector(moved[0])
    library.update(folder, "IMG_041.jpg", record)
    assert library.vectors.dead == 1 and nearest(library, moved[0]) == "IMG_041.jpg"
    library.compact()
    assert library.vectors.dead == 0 and len(library.vectors) == 120
    assert nearest(library, moved[0]) == "IMG_041.jpg"
    assert nearest(library, data[100]) == "IMG_100.jpg"

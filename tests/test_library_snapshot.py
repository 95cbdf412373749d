"""The library's machine-local snapshot: a restart takes unchanged folders from it, and
anything changed on disk, however it changed, is read from the records again."""

from __future__ import annotations

import logging
import os
from pathlib import Path

import numpy as np
import pytest

from scanpixd import library as library_module
from scanpixd.config import Settings
from scanpixd.library import Library
from scanpixd.query import parse
from scanpixd.query.engine import search
from scanpixd.store import Store
from tests.test_search_library import MODEL, unit, write
from tests.test_search_library import nearest as nearest_name
from tests.test_search_library import photos as search_photos  # noqa: F401


@pytest.fixture(autouse=True)
def no_racy_window(monkeypatch: pytest.MonkeyPatch) -> None:
    """Records written a moment ago count as settled (the real window is 3 s)."""
    monkeypatch.setattr(library_module, "RACY_NS", -10**12)


@pytest.fixture
def photos(settings: Settings, tmp_path: Path) -> tuple[Path, np.ndarray]:
    settings.clip.enabled = True
    root = tmp_path / "photos"
    data = unit(np.random.default_rng(1), 90)
    for i, v in enumerate(data):
        record_folder = root / f"f{i // 30}"
        write(settings, record_folder, f"IMG_{i:03d}.jpg", v[None])
    write(settings, root / "f0", "clip.mp4", data[:3] * 0.5 + data[3:6] * 0.5, times=[0.0, 2.0, 4.0])
    return root, data


def loaded(settings: Settings, root: Path) -> Library:
    library = Library(settings)
    library.load([root])
    return library


def answers(library: Library, text: str = "folder:f1") -> list[tuple[str, dict]]:
    return [(str(r.path), r.record) for r in search(library, parse(text), limit=1000)]


def nearest(library: Library, vector: np.ndarray, k: int = 3) -> list[tuple[str, float | None]]:
    assert library.vectors is not None
    rows, _ = library.vectors.search(vector, k)
    out = []
    for row in rows:
        item = library.item(int(library.vectors.owner(np.array([row]))[0]))
        assert item is not None
        out.append((item.name, library.vectors.time(int(row))))
    return out


def test_a_restart_reads_nothing_from_records_and_serves_the_same(settings, photos):
    root, data = photos
    first = loaded(settings, root)
    assert first.last_load["from_records"] == 91 and first.last_load["from_snapshot"] == 0
    second = loaded(settings, root)
    assert second.last_load["from_records"] == 0 and second.last_load["from_snapshot"] == 91
    assert answers(second) == answers(first) and len(answers(first)) == 30
    assert answers(second, "date:..2100 -folder:f2") == answers(first, "date:..2100 -folder:f2")
    for i in (0, 45, 89):
        assert nearest(second, data[i]) == nearest(first, data[i])
        assert nearest(second, data[i])[0] == (f"IMG_{i:03d}.jpg", None)
    video = second.get(root / "f0" / "clip.mp4")
    assert video is not None and video.rows.size == 3
    assert [second.vectors.time(int(r)) for r in video.rows] == [0.0, 2.0, 4.0]
    assert "raw" not in video.record["metadata"] and video.record["clip"]["model"] == MODEL
    assert "raw" in second.full_record(video)["metadata"]


def test_edited_added_and_removed_records_are_read_again(settings, photos):
    root, data = photos
    loaded(settings, root)
    store = Store(settings)
    f1 = store.folder(root / "f1")
    record = f1.read("IMG_031.jpg")
    record["place"] = {"city": "Siena", "country": "Italy"}  # an edit in place
    f1.record_path("IMG_031.jpg").write_bytes(__import__("orjson").dumps(record))
    write(settings, root / "f2", "IMG_new.jpg", data[7][None])  # a new file
    os.unlink(store.folder(root / "f0").record_path("IMG_002.jpg"))  # a deleted record
    again = loaded(settings, root)
    assert again.last_load["folders_read"] == 3 and again.last_load["from_records"] == 91
    assert answers(again, "place:Siena") == [(str(root / "f1" / "IMG_031.jpg"),
                                              again.get(root / "f1" / "IMG_031.jpg").record)]
    assert again.get(root / "f0" / "IMG_002.jpg") is None
    assert {name for name, _ in nearest(again, data[7], 2)} == {"IMG_007.jpg", "IMG_new.jpg"}


def test_a_folder_changed_while_loaded_is_not_vouched_for(settings, photos):
    root, data = photos
    first = loaded(settings, root)
    folder = Store(settings).folder(root / "f2")
    record = folder.read("IMG_070.jpg")
    record["metadata"]["make"] = "Nikon"
    first.update(folder, "IMG_070.jpg", record)  # the daemon saw a change...
    first.close()  # ...and saved its snapshot, without f2's signature
    second = loaded(settings, root)
    assert second.last_load["folders_read"] == 1 and second.last_load["from_records"] == 30
    assert second.get(root / "f2" / "IMG_070.jpg").record["metadata"]["make"] == "Canon"


def test_recent_records_are_never_signed(settings, photos, monkeypatch):
    root, _ = photos
    monkeypatch.setattr(library_module, "RACY_NS", 3_000_000_000)
    loaded(settings, root)
    assert loaded(settings, root).last_load["from_snapshot"] == 0


@pytest.mark.parametrize("damage", ["truncate", "garbage", "empty", "other-model"])
def test_a_damaged_or_foreign_snapshot_is_ignored(settings, photos, damage):
    root, data = photos
    first = loaded(settings, root)
    path = first._snapshot_path(first.model_id)
    size = path.stat().st_size
    if damage == "truncate":
        with open(path, "r+b") as fh:
            fh.truncate(size // 2)
    elif damage == "garbage":
        path.write_bytes(os.urandom(size))
    elif damage == "empty":
        path.write_bytes(b"")
    else:
        settings.clip.pretrained = "openai"  # another model id: another snapshot
    again = loaded(settings, root)
    assert again.last_load["from_snapshot"] == 0 and len(again) == 91
    if damage != "other-model":
        assert nearest(again, data[10])[0] == ("IMG_010.jpg", None)


def test_a_restart_keeps_items_the_snapshot_maps_readable_after_a_rewrite(settings, photos):
    root, data = photos
    first = loaded(settings, root)
    first.save_snapshot()  # rewritten while its own mapped records are in use
    second = loaded(settings, root)
    second.save_snapshot()
    item = second.get(root / "f0" / "IMG_005.jpg")
    assert item is not None and item.record["metadata"]["make"] == "Canon"
    assert answers(second) == answers(first)


def closed_with_a_graph(settings: Settings, root: Path) -> None:
    """A library that built its graph (50 vectors suffice) and saved it on closing."""
    settings.clip.ann_min = 50
    first = loaded(settings, root)
    assert first.vectors is not None
    first.vectors.wait_for_graph()
    assert first.vectors.has_graph
    first.close()


def test_the_graph_is_saved_and_reused_across_starts(settings: Settings, search_photos, caplog):  # noqa: F811
    root, data = search_photos
    closed_with_a_graph(settings, root)

    # Between runs: one file deleted, one added.
    store = Store(settings)
    store.folder(root / "f0").remove("IMG_003.jpg")
    (root / "f0" / "IMG_003.jpg").unlink()
    fresh = unit(np.random.default_rng(9), 1)
    write(settings, root / "f3", "NEW.jpg", fresh)

    caplog.set_level(logging.INFO, logger="scanpixd.library")
    second = Library(settings)
    second.load([root])
    assert "vector graph reused (80 of 120 labels current)" in caplog.text  # f0 changed: read again
    assert second.vectors is not None
    second.vectors.wait_for_graph()
    assert second.vectors.has_graph
    assert nearest_name(second, fresh[0]) == "NEW.jpg"
    assert nearest_name(second, data[3]) != "IMG_003.jpg"
    for i in (0, 60, 119):
        assert nearest_name(second, data[i]) == f"IMG_{i:03d}.jpg"


def test_a_damaged_saved_graph_is_rebuilt(settings: Settings, search_photos, caplog):  # noqa: F811
    root, data = search_photos
    closed_with_a_graph(settings, root)
    graph_file = next((settings.cache_dir / "library").glob("*.hnsw"))
    graph_file.write_bytes(graph_file.read_bytes()[:1000])
    caplog.set_level(logging.INFO, logger="scanpixd.library")
    second = Library(settings)
    second.load([root])
    assert "reused" not in caplog.text
    assert second.vectors is not None
    second.vectors.wait_for_graph()
    assert second.vectors.has_graph and nearest_name(second, data[42]) == "IMG_042.jpg"


def test_a_folder_with_a_sync_conflict_is_read_from_its_records(settings, photos):
    root, _ = photos
    loaded(settings, root)
    records = Store(settings).folder(root / "f1").record_path("IMG_040.jpg").parent
    conflict = records / "IMG_040.jpg.sync-conflict-20260101-120000-ABCDEFG.json"
    conflict.write_bytes((records / "IMG_040.jpg.json").read_bytes())
    again = loaded(settings, root)
    assert again.last_load["folders_read"] == 1 and again.last_load["from_records"] == 30
    assert again.get(root / "f1" / "IMG_040.jpg") is not None

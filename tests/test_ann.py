"""The per-folder vector index file and the in-memory vector set (no model needed)."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import orjson
import pytest

from scanpixd.config import Settings
from scanpixd.record import encode_vector, new_record
from scanpixd.store import FolderStore, Store, ann

MODEL = "tiny+abc/b2:0123"
DIM = 32


def unit(rng: np.random.Generator, count: int, dim: int = DIM) -> np.ndarray:
    v = rng.standard_normal((count, dim)).astype(np.float32)
    return v / np.linalg.norm(v, axis=1, keepdims=True)


def write_records(folder: FolderStore, vectors: np.ndarray, model: str = MODEL,
                  video_every: int = 0) -> dict[str, dict]:
    """One record per vector (every ``video_every``-th file a 3-frame video)."""
    records = {}
    for i, v in enumerate(vectors):
        name = f"IMG_{i:04d}.jpg"
        record = new_record(name, 100 + i, 10**18 + i, f"b2:{i:032x}")
        frames = [(None, v)]
        if video_every and i % video_every == 0:
            name = record["name"] = f"CLIP_{i:04d}.mp4"
            frames = [(0.0, v), (2.5, -v), (5.0, v[::-1].copy())]
        record["clip"] = {"model": model, "dim": len(v),
                          "vectors": [{"time": t, "v": encode_vector(x)} for t, x in frames]}
        folder.write(record)
        records[name] = record
    return records


@pytest.fixture
def folder(settings: Settings, tmp_path: Path) -> FolderStore:
    (tmp_path / "photos").mkdir()
    return Store(settings).folder(tmp_path / "photos")


def graph_file(folder: FolderStore) -> Path:
    return folder.index_dir() / ann.GRAPH_NAME


def test_index_is_written_beside_the_records_and_names_what_it_holds(folder: FolderStore):
    vectors = unit(np.random.default_rng(0), 40)
    records = write_records(folder, vectors, video_every=10)
    index = ann.load_or_rebuild(folder, records, MODEL)
    meta = orjson.loads((folder.index_dir() / ann.META_NAME).read_bytes())
    assert meta["model"] == MODEL and meta["dim"] == DIM and meta["count"] == 40 + 4 * 2
    assert graph_file(folder).stat().st_size > 0
    assert ["CLIP_0010.mp4", 1, 2.5] in meta["labels"]
    assert not any(str(folder.folder) in str(label) for label in meta["labels"])  # portable
    found = index.search(vectors[7], 3)
    assert found[0][0] == ann.Label("IMG_0007.jpg", 0, None) and found[0][1] == pytest.approx(1, abs=1e-3)


def test_a_current_index_is_not_rewritten(folder: FolderStore):
    records = write_records(folder, unit(np.random.default_rng(1), 20))
    ann.load_or_rebuild(folder, records, MODEL)
    before = graph_file(folder).stat().st_mtime_ns, graph_file(folder).stat().st_ino
    index = ann.load_or_rebuild(folder, folder.records(), MODEL)
    assert (graph_file(folder).stat().st_mtime_ns, graph_file(folder).stat().st_ino) == before
    assert index.directory == folder.index_dir()


@pytest.fixture
def graph_search(monkeypatch: pytest.MonkeyPatch) -> None:
    """Folders search through their graph file from 16 vectors on (not only above 1024)."""
    monkeypatch.setattr(ann, "EXACT_MAX", 16)


@pytest.mark.usefixtures("graph_search")
@pytest.mark.parametrize("damage", ["truncate", "garble", "empty", "delete", "meta"])
def test_a_damaged_index_is_rebuilt_and_answers_right(folder: FolderStore, damage: str):
    vectors = unit(np.random.default_rng(2), 60)
    records = write_records(folder, vectors)
    ann.load_or_rebuild(folder, records, MODEL)
    path = graph_file(folder)
    data = path.read_bytes()
    if damage == "truncate":
        path.write_bytes(data[: len(data) // 2])
    elif damage == "garble":  # same size, different bytes: only the checksum can tell
        path.write_bytes(data[:100] + os.urandom(len(data) - 200) + data[-100:])
    elif damage == "empty":
        path.write_bytes(b"")
    elif damage == "delete":
        path.unlink()
    else:
        (folder.index_dir() / ann.META_NAME).write_bytes(b'{"format": 1, "model": ')
    index = ann.load_or_rebuild(folder, folder.records(), MODEL)
    assert path.read_bytes() != b"" and index.directory == folder.index_dir()
    for i in (0, 37, 59):
        assert index.search(vectors[i], 1)[0][0].name == f"IMG_{i:04d}.jpg"


@pytest.mark.usefixtures("graph_search")
def test_a_damaged_graph_found_at_search_time_is_not_trusted(folder: FolderStore):
    vectors = unit(np.random.default_rng(3), 60)
    records = write_records(folder, vectors)
    ann.load_or_rebuild(folder, records, MODEL)
    data = graph_file(folder).read_bytes()
    graph_file(folder).write_bytes(data[:100] + os.urandom(len(data) - 100))
    index = ann.load_or_rebuild(folder, records, MODEL, write=False)  # a read-only reader
    assert index.search(vectors[42], 1)[0][0].name == "IMG_0042.jpg"


def test_stale_or_other_model_index_is_rebuilt(folder: FolderStore):
    rng = np.random.default_rng(4)
    records = write_records(folder, unit(rng, 10))
    first = ann.load_or_rebuild(folder, records, MODEL)
    changed = unit(rng, 1)[0]
    records["IMG_0003.jpg"]["clip"]["vectors"][0]["v"] = encode_vector(changed)
    folder.write(records["IMG_0003.jpg"])
    second = ann.load_or_rebuild(folder, folder.records(), MODEL)
    assert second.fingerprint != first.fingerprint
    assert second.search(changed, 1)[0][0].name == "IMG_0003.jpg"
    meta = orjson.loads((folder.index_dir() / ann.META_NAME).read_bytes())
    assert meta["fingerprint"] == second.fingerprint

    other = ann.load_or_rebuild(folder, folder.records(), "other-model/b2:99")
    assert other.labels == [] and not graph_file(folder).exists()  # nothing of that model


def test_malformed_vectors_in_a_sidecar_are_skipped(folder: FolderStore):
    records = write_records(folder, unit(np.random.default_rng(5), 4))
    records["IMG_0000.jpg"]["clip"]["vectors"] = [{"time": None, "v": "!!not base64"}]
    records["IMG_0001.jpg"]["clip"]["vectors"] = [{"time": None, "v": encode_vector(np.zeros(DIM))}]
    records["IMG_0002.jpg"]["clip"]["vectors"] = [{"v": encode_vector(np.ones(DIM + 1))}]
    records["IMG_0002.jpg"]["clip"]["dim"] = DIM + 1
    index = ann.load_or_rebuild(folder, records, MODEL)
    assert [label.name for label in index.labels] == ["IMG_0003.jpg"]


def test_vector_set_graph_agrees_with_exact_search():
    rng = np.random.default_rng(6)
    data = unit(rng, 3000)
    exact = ann.VectorSet(DIM, ann_min=10**9)
    approx = ann.VectorSet(DIM, ann_min=1000)
    for owner, chunk in enumerate(np.array_split(data, 300)):
        exact.add(chunk, owner, [None] * len(chunk))
        approx.add(chunk, owner, [None] * len(chunk))
    approx.wait_for_graph()
    assert approx.has_graph and not exact.has_graph
    queries = data[:50] + 0.05 * unit(rng, 50)
    hits = 0
    for q in queries:
        rows_exact, _ = exact.search(q, 10)
        rows_approx, scores = approx.search(q, 10)
        hits += len(set(rows_exact) & set(rows_approx))
        assert np.all(np.diff(scores) <= 1e-6)
    assert hits / (50 * 10) > 0.9

    removed = approx.search(data[5], 1)[0]
    approx.remove(removed)
    assert approx.search(data[5], 1)[0][0] != removed[0]
    new_rows = approx.add(-data[5:6], 999, [1.5])
    rows, scores = approx.search(-data[5], 1)
    assert rows[0] == new_rows[0] and approx.owner(rows)[0] == 999 and approx.time(rows[0]) == 1.5


def test_vector_set_subset_search_is_exact():
    rng = np.random.default_rng(7)
    data = unit(rng, 500)
    vs = ann.VectorSet(DIM, ann_min=100)
    rows = vs.add(data, 0, [None] * 500)
    vs.wait_for_graph()
    subset = rows[::7]
    found, scores = vs.search(data[3], 5, subset)
    truth = subset[np.argsort(-(data[subset] @ data[3]))[:5]]
    assert list(found) == list(truth)


def test_once_the_graph_holds_every_vector_it_is_their_only_copy(monkeypatch):
    rng = np.random.default_rng(8)
    data = unit(rng, 600)
    vs = ann.VectorSet(DIM, ann_min=100)
    rows = vs.add(data[:500], 0, [None] * 500)
    vs.wait_for_graph()
    assert vs.has_graph and vs.in_graph_only
    np.testing.assert_allclose(vs.vectors(rows[[3, 400]]), data[[3, 400]], atol=1e-6)
    assert vs.sample(50).shape == (50, DIM)
    more = vs.add(data[500:], 1, [2.0] * 100)  # straight into the graph
    assert vs.search(data[550], 1)[0][0] == more[50] and vs.time(int(more[50])) == 2.0
    vs.remove(rows[:10])
    with pytest.raises(KeyError):
        vs.vectors(rows[:1])
    monkeypatch.setattr(ann, "GRAPH_SUBSET_MIN", 50)  # a wide subset: the graph, filtered
    wide = np.concatenate([rows[10:300], more])
    found, scores = vs.search(data[250], 5, wide)
    assert found[0] == rows[250] and set(found) <= set(wide.tolist())
    assert np.all(np.diff(scores) <= 1e-6)
    narrow = rows[20:60]  # narrower than GRAPH_SUBSET_MIN: exact over the subset
    found, _ = vs.search(data[5], 3, narrow)
    truth = narrow[np.argsort(-(data[20:60] @ data[5]))[:3]]
    assert list(found) == list(truth)


def test_a_first_block_is_taken_without_a_copy_and_copied_on_the_next_add():
    rng = np.random.default_rng(9)
    block = unit(rng, 40)
    block.setflags(write=False)  # as a mapped snapshot file gives it
    vs = ann.VectorSet(DIM, ann_min=10**9)
    rows = vs.add_block(block, np.arange(40), np.full(40, np.nan))
    assert list(rows) == list(range(40)) and vs.search(block[7], 1)[0][0] == 7
    extra = vs.add(unit(rng, 1), 99, [None])
    assert extra[0] == 40 and vs.search(block[7], 1)[0][0] == 7 and vs.owner(extra)[0] == 99

"""The first load of a library on a machine (no caches yet) decodes each folder in bulk; what
it loads must be what a load one record at a time gives, and what the caches give after.

The reference is the one-record-at-a-time path (:meth:`Library._append`, with
:func:`ann.record_vectors` per record): every load here, cold, from the record caches, from
the snapshot, or without any cache, must hold the same items, columns, records, vectors
(float32-equal) and answer searches the same.  Malformed vectors in a sidecar are skipped
one by one, never taking their folder's other vectors with them.
"""

from __future__ import annotations

import base64
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from scanpixd import library as library_module
from scanpixd.config import Settings
from scanpixd.library import Library
from scanpixd.query import parse
from scanpixd.query.columns import COLUMNS
from scanpixd.query.engine import search
from scanpixd.record import encode_vector, new_record
from scanpixd.store import FolderStore, Store, ann, atomic, record_cache, snapshot
from scanpixd.store.folder import DATA_DIR_NAME
from tests.test_search_library import DIM, MODEL, unit, write


@pytest.fixture(autouse=True)
def settled(monkeypatch: pytest.MonkeyPatch) -> None:
    """Records written a moment ago count as settled (the real window is 3 s), so the
    snapshot signs them and the record caches keep them."""
    monkeypatch.setattr(library_module, "RACY_NS", -10**12)
    monkeypatch.setattr(record_cache, "RACY_NS", -10**12)


def _b64(raw: bytes) -> str:
    return base64.b64encode(raw).decode()


def _half(values: list[float]) -> str:
    return _b64(np.asarray(values, dtype="<f2").tobytes())


def _write_entries(settings: Settings, folder: Path, name: str, entries: list[Any],
                   clip: dict[str, Any] | None = None) -> None:
    """A record whose clip section holds ``entries`` as they are (malformed ones too)."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / name).write_bytes(b"x")
    record = new_record(name, 1, 1, f"b2:{abs(hash((folder, name))):032x}")
    record["media"] = {"kind": "image"}
    record["metadata"] = {"make": "Nikon", "gps": {"lat": 45.5, "lon": 9.2},
                          "taken_local": "2021-05-01T10:00:00", "raw": {"Tag": "x" * 40}}
    record["place"] = {"city": "Milan", "country": "Italy"}
    record["clip"] = {"model": MODEL, "dim": DIM, "vectors": entries, **(clip or {})}
    Store(settings).folder(folder).write(record)


def _malformed(good: np.ndarray) -> dict[str, list[Any]]:
    """File name -> vector entries, each list mixing good vectors with malformed ones."""
    g = [{"time": None, "v": encode_vector(v)} for v in good]
    inf, nan = [np.inf] + [0.1] * (DIM - 1), [np.nan] + [0.1] * (DIM - 1)
    return {
        "bad-width.jpg": [g[0], {"time": None, "v": _half([0.5] * (DIM // 2))}, g[1]],
        "not-finite.jpg": [{"time": None, "v": _half(inf)}, g[2], {"time": None, "v": _half(nan)}],
        "zero.jpg": [{"time": None, "v": _half([0.0] * DIM)}, g[3]],
        "bad-base64.jpg": [{"time": None, "v": "!!not base64!!"}, {"time": None, "v": "QUJD="},
                           {"time": None, "v": 12}, "not an entry", {}, g[4],
                           {"time": None, "v": "é" * 8}, {"time": None, "v": _b64(b"abc")}],
        "all-bad.jpg": [{"time": None, "v": _half([0.0] * DIM)}, {"time": None, "v": "%%"}],
        "video.mp4": [{"time": 0.0, "v": encode_vector(good[5])},
                      {"time": 2, "v": encode_vector(good[6])},
                      {"time": "soon", "v": encode_vector(good[7])}],
    }


@pytest.fixture
def library_root(settings: Settings, tmp_path: Path) -> Path:
    """Three folders decoded in bulk (one with every kind of malformed vector), one whose
    records do not all declare a width (decoded one at a time), records without vectors
    or of another model, and a hidden folder that is not loaded."""
    settings.clip.enabled = True
    root = tmp_path / "photos"
    rng = np.random.default_rng(7)
    data = unit(rng, 150)
    for i in range(120):
        write(settings, root / f"f{i // 40}", f"IMG_{i:03d}.jpg", data[i][None])
    for name, entries in _malformed(data[120:128]).items():
        _write_entries(settings, root / "f0", name, entries)
    write(settings, root / "f1", "other-model.jpg", data[:1], model="RN50/openai")
    _write_entries(settings, root / "f1", "no-vectors.jpg", [])
    mixed = root / "mixed"
    for i in range(128, 140):
        write(settings, mixed, f"IMG_{i:03d}.jpg", data[i][None])
    _write_entries(settings, mixed, "no-dim.jpg", [{"time": None, "v": encode_vector(data[140])}],
                   clip={"dim": None})
    _write_entries(settings, mixed, "bool-dim.jpg", [{"time": None, "v": encode_vector(data[141])}],
                   clip={"dim": True})
    write(settings, root / "skip" / ".hidden", "IMG_h.jpg", data[:1])
    return root


def _one_at_a_time(monkeypatch: pytest.MonkeyPatch) -> None:
    """Load as before bulk decoding: each record appended (and its vectors decoded) alone."""
    def add_folder(self: Library, loaded: Any, model_id: str | None) -> None:
        folder_id = self._folder_index(loaded.folder, loaded.root, loaded.signature)
        for name in sorted(loaded.records):
            self._append(folder_id, name, loaded.records[name], model_id)

    monkeypatch.setattr(Library, "_add_folder", add_folder)


class _NoCacheStore(Store):
    """Folders read from their records every time: no machine-local record cache."""

    def _make(self, folder: Path) -> FolderStore:
        data = folder / DATA_DIR_NAME
        return FolderStore(folder, data, [data], None)


def _load(settings: Settings, root: Path, cache: Path, store: Store | None = None) -> Library:
    settings.cache_dir = cache
    library = Library(settings, store=store)
    library.load([root])
    return library


def state(library: Library) -> dict[str, tuple[Any, ...]]:
    """Everything a load decides per item, by path (row numbers aside)."""
    c = library._columns
    out = {}
    for item in library.items():
        i = item.id
        camera = c.cameras.values[int(c.camera[i])]
        place = int(c.place[i])
        columns = tuple(c.arrays[name][i].tobytes() for name in sorted(COLUMNS)
                        if name not in ("row_start", "camera", "place"))
        vectors = library.vectors_of(item)
        times = [library.vectors.time(int(r)) for r in item.rows] if library.vectors else []
        out[str(item.path)] = (columns, camera, c.places.values[place] if place >= 0 else place,
                               bytes(item._blob), library._vkeys[i], vectors.dtype.str,
                               vectors.shape, vectors.tobytes(), times)
    return out


def answers(library: Library, queries: np.ndarray) -> list[Any]:
    """Nearest items (and exact scores) of each query, and two filtered searches."""
    assert library.vectors is not None
    out: list[Any] = []
    for query in queries:
        rows, scores = library.vectors.search(query, 8)
        owners = library.vectors.owner(rows)
        out.append([(str(library.item(int(o)).path), float(s))  # type: ignore[union-attr]
                    for o, s in zip(owners, scores, strict=True)])
    for text in ("folder:f1", "camera:nikon date:2021"):
        out.append([(str(r.path), r.record) for r in search(library, parse(text), limit=1000)])
    return out


def test_every_way_of_loading_holds_and_answers_the_same(settings: Settings, library_root: Path,
                                                          tmp_path: Path,
                                                          monkeypatch: pytest.MonkeyPatch):
    queries = unit(np.random.default_rng(3), 6)
    cold = _load(settings, library_root, tmp_path / "cache")
    assert cold.last_load["from_records"] == len(cold) == 142
    assert list((tmp_path / "cache" / "records").rglob("*.json"))  # record caches written
    shutil.rmtree(tmp_path / "cache" / "library")
    from_record_caches = _load(settings, library_root, tmp_path / "cache")
    warm = _load(settings, library_root, tmp_path / "cache")
    assert warm.last_load["from_snapshot"] == 142
    uncached = _load(settings, library_root, tmp_path / "uncached", _NoCacheStore(settings))
    with monkeypatch.context() as patch:
        _one_at_a_time(patch)
        reference = _load(settings, library_root, tmp_path / "reference")
    expected, expected_answers = state(reference), answers(reference, queries)
    assert len(expected) == 142 and sum(s[6][0] for s in expected.values()) == 141
    for library in (cold, from_record_caches, warm, uncached):
        assert state(library) == expected
        assert answers(library, queries) == expected_answers


def test_malformed_vectors_are_skipped_one_by_one(settings: Settings, library_root: Path,
                                                  tmp_path: Path):
    library = _load(settings, library_root, tmp_path / "cache")
    f0 = library_root / "f0"
    counts = {name: library.get(f0 / name).rows.size  # type: ignore[union-attr]
              for name in _malformed(np.zeros((8, DIM)))}
    assert counts == {"bad-width.jpg": 2, "not-finite.jpg": 1, "zero.jpg": 1,
                      "bad-base64.jpg": 1, "all-bad.jpg": 0, "video.mp4": 3}
    for path in [f0 / "IMG_000.jpg", f0 / "bad-width.jpg", f0 / "video.mp4",
                 library_root / "mixed" / "no-dim.jpg"]:
        item = library.get(path)
        assert item is not None
        alone = ann.record_vectors(library.full_record(item), MODEL)
        assert np.array_equal(library.vectors_of(item), np.stack([v for _, _, v in alone]))
    video = library.get(f0 / "video.mp4")
    assert [library.vectors.time(int(r)) for r in video.rows] == [0.0, 2.0, None]  # type: ignore
    assert library.get(library_root / "mixed" / "bool-dim.jpg").rows.size == 0  # type: ignore
    assert library.get(library_root / "f1" / "other-model.jpg").rows.size == 0  # type: ignore


def _records(tmp_path: Path) -> list[dict[str, Any]]:
    good = unit(np.random.default_rng(5), 10)
    records: list[dict[str, Any]] = [
        {"clip": {"model": MODEL, "dim": DIM, "vectors": entries}}
        for entries in _malformed(good[:8]).values()]
    records += [{"clip": {"model": "RN50/openai", "dim": 8, "vectors": [{"v": _half([1.0] * 8)}]}},
                {"clip": "not a section"}, {},
                {"clip": {"model": MODEL, "dim": DIM, "vectors": "not a list"}},
                {"clip": {"model": MODEL, "dim": 16, "vectors": []}},
                {"clip": {"model": MODEL, "dim": DIM, "vectors": [{"v": encode_vector(good[9])}]}}]
    return records


def test_a_block_decodes_what_each_record_alone_does(tmp_path: Path):
    records = _records(tmp_path)
    block = ann.record_block(records, MODEL)
    assert block is not None and block.dim == DIM
    assert block.counts.tolist() == [len(ann.record_vectors(r, MODEL)) for r in records]
    alone = [found for r in records for found in ann.record_vectors(r, MODEL)]
    assert block.vectors.dtype == np.float32
    assert np.array_equal(block.vectors, np.stack([v for _, _, v in alone]))
    assert np.array_equal(block.times, np.array([np.nan if t is None else t for _, t, _ in alone]),
                          equal_nan=True)
    empty = ann.record_block(records[-6:-1], MODEL)  # none with a vector of the model
    assert empty is not None and empty.vectors.size == 0 and empty.counts.tolist() == [0] * 5


@pytest.mark.parametrize("dim", [None, 16, True, "32"])
def test_records_of_other_declared_widths_are_left_to_one_at_a_time(tmp_path: Path, dim: Any):
    records = _records(tmp_path)
    records.append({"clip": {"model": MODEL, "dim": dim, "vectors": [{"v": _half([0.5] * 16)}]}})
    assert ann.record_block(records, MODEL) is None


def test_a_folder_of_another_width_replaces_the_vectors_as_one_at_a_time_does(
        settings: Settings, tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    settings.clip.enabled = True
    root = tmp_path / "photos"
    data = unit(np.random.default_rng(9), 20)
    for i in range(20):
        write(settings, root / f"a{i // 10}", f"IMG_{i:03d}.jpg", data[i][None])
    _write_entries(settings, root / "a0" / "narrow", "narrow.jpg",
                   [{"time": None, "v": _half([0.25] * 16)}], clip={"dim": 16})
    library = _load(settings, root, tmp_path / "cache")
    with monkeypatch.context() as patch:
        _one_at_a_time(patch)
        reference = _load(settings, root, tmp_path / "reference")
    assert state(library) == state(reference)
    assert library.vectors is not None and library.vectors.dim == reference.vectors.dim  # type: ignore


def test_gather_and_times_read_rows_in_bulk():
    vectors = ann.VectorSet(DIM, ann_min=10**9)
    data = unit(np.random.default_rng(2), 50)
    vectors.add_block(data[:30], np.arange(30), np.where(np.arange(30) % 2, 1.5, np.nan))
    vectors.add(data[30:], 99, [None] * 20)
    run = np.arange(5, 45)
    assert np.array_equal(vectors.gather(run), data[5:45])
    assert np.array_equal(vectors.gather(np.array([40, 3, 7])), data[[40, 3, 7]])
    assert vectors.gather(np.zeros(0, np.int64)).shape == (0, DIM)
    assert np.array_equal(vectors.times(run), [vectors.time(int(r)) or np.nan for r in run],
                          equal_nan=True)
    vectors.ann_min = 10
    vectors.ensure_graph()
    vectors.wait_for_graph(timeout=60)
    assert vectors.in_graph_only
    assert np.array_equal(vectors.gather(run, block=7), data[5:45])


def test_pieces_are_written_as_one_array(tmp_path: Path):
    parts: list[bytes | memoryview] = [bytes([i % 251]) * (i * 997 % 5000) for i in range(600)]
    parts.append(memoryview(b"mapped bytes"))
    snapshot.write(tmp_path / "snap.bin", {"k": 1},
                   {"blobs": snapshot.Pieces(parts), "after": np.arange(5)})
    snap = snapshot.read(tmp_path / "snap.bin")
    assert snap is not None and bytes(snap.bytes_view("blobs")) == b"".join(parts)
    assert snap.array("after").tolist() == [0, 1, 2, 3, 4]


def test_json_files_read_whole_or_not_at_all(tmp_path: Path):
    """Records are read with plain system calls, in chunks: a large one whole, and a
    broken, empty, missing or unreadable one as missing."""
    (tmp_path / "big.json").write_bytes(b'{"a": "' + b"x" * 300_000 + b'"}')
    (tmp_path / "bad.json").write_bytes(b'{"a": ')
    (tmp_path / "empty.json").write_bytes(b"")
    (tmp_path / "dir.json").mkdir()
    assert atomic.read_json(tmp_path / "big.json") == {"a": "x" * 300_000}
    for name in ("bad.json", "empty.json", "dir.json", "missing.json", "big.json/below"):
        assert atomic.read_json(tmp_path / name) is None

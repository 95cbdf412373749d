"""The scale benchmarks' synthetic libraries are what the real code would have written.

A small library from :mod:`benchmarks.synth` must read back through the real store, scan,
library and query code exactly like an indexed one: nothing to do on a rescan, every item
and vector loaded, the folders' vector indexes current, the time pass settled, and
originals whose content hashes match their records.  Otherwise the scale figures would
measure work a real library never causes.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from benchmarks import synth
from scanpixd.config import Settings
from scanpixd.library import Library
from scanpixd.pipeline import Services, build_stages
from scanpixd.query import engine
from scanpixd.query.parser import parse
from scanpixd.scan import content_hash, reconcile
from scanpixd.store import Store, ann
from scanpixd.upkeep import update_times
from tests.helpers_clip import TinyClip, tiny_clip_fixture  # noqa: F401 - the fixture

COUNT = 150


@pytest.fixture(name="library", scope="module")
def library_fixture(tmp_path_factory: pytest.TempPathFactory, tiny_clip: TinyClip
                    ) -> tuple[Path, Settings, synth.Summary]:
    """One library for the module: the tests only read it."""
    base = tmp_path_factory.mktemp("scale")
    root = base / "photos"
    settings = tiny_clip.apply(Settings(roots=[root], cache_dir=base / "cache", jobs=2))
    settings.faces.enabled = False  # its readiness check loads dlib: seconds this test need not spend
    summary = synth.generate(root, synth.Spec(COUNT, per_folder=50, workers=4), settings)
    return root, settings, summary


def test_generated_counts_and_manifest(library: tuple[Path, Settings, synth.Summary]) -> None:
    root, _, summary = library
    assert (summary.count, summary.folders) == (COUNT, 3)
    manifest = synth.read_manifest(root)
    assert manifest is not None and manifest["count"] == COUNT and manifest["concepts"]
    assert all((root / rel).is_file() for rel in manifest["samples"])


def test_rescan_finds_nothing_to_do(library: tuple[Path, Settings, synth.Summary]) -> None:
    root, settings, _ = library
    plan = reconcile([root], settings, Store(settings), build_stages(Services(settings)))
    assert (len(plan.work), plan.unchanged, plan.moved, plan.removed) == (0, COUNT, 0, 0)


def test_records_match_their_originals(library: tuple[Path, Settings, synth.Summary]) -> None:
    root, settings, _ = library
    store = Store(settings)
    for folder_path in sorted({p.parent for p in root.rglob("*.jpg") if ".scanpix" not in p.parts}):
        folder = store.folder(folder_path)
        for name, record in folder.records().items():
            st = os.stat(folder_path / name)
            assert (record["size"], record["mtime_ns"]) == (st.st_size, st.st_mtime_ns)
            assert record["hash"] == content_hash(folder_path / name)
            assert all(folder.asset_path(t).is_file() for t in record["thumbs"].values())
            assert record["metadata"]["raw"] and record["taken"]["source"]


def test_library_loads_items_vectors_and_current_indexes(library: tuple[Path, Settings, synth.Summary]
                                                          ) -> None:
    root, settings, _ = library
    store = Store(settings)
    indexes = sorted(root.rglob(ann.GRAPH_NAME))
    before = [p.stat().st_mtime_ns for p in indexes]
    view = Library(settings, store, write_indexes=True)
    view.load([root])
    videos = [i for i in view.items() if i.record["media"]["kind"] == "video"]
    assert len(view) == COUNT and len(indexes) == 3
    assert view.vectors is not None and len(view.vectors) == COUNT + 3 * len(videos)
    assert [p.stat().st_mtime_ns for p in indexes] == before  # current: not rebuilt
    entries = [(i.folder, i.name, i.record) for i in view.items()]
    assert update_times(entries, [root], settings) == []  # the time pass is settled


def test_queries_answer_over_it(library: tuple[Path, Settings, synth.Summary]) -> None:
    root, settings, _ = library
    view = Library(settings, Store(settings))
    view.load([root])
    found = engine.search(view, parse("type:video"), limit=COUNT)
    assert found and all(r.record["media"]["kind"] == "video" for r in found)
    manifest = synth.read_manifest(root)
    assert manifest is not None
    sample = root / manifest["samples"][0]
    similar = engine.search(view, parse(f'similar:"{sample}"'), limit=5)
    assert similar and similar[0].path == sample


def test_loaded_items_are_lean_records_decoded_on_demand(
        library: tuple[Path, Settings, synth.Summary]) -> None:
    import gc

    from scanpixd.library import lean

    root, settings, _ = library
    view = Library(settings, Store(settings))
    view.load([root])
    assert gc.isenabled()
    items = sorted(view.items(), key=lambda i: str(i.path))
    for item in items[:20]:
        stored = item.folder.records()[item.name]
        assert item.record == lean(stored) and "raw" not in item.record["metadata"]
        assert item.record["clip"]["count"] == len(stored["clip"]["vectors"])
        assert "vectors" not in item.record["clip"]
        assert item.record is not item.record  # kept as bytes, a fresh dict on each read

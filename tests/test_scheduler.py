"""The daemon's queue stays bounded: past `daemon.queue_size` changes it rescans the roots instead."""

from __future__ import annotations

from pathlib import Path

from scanpixd.indexer import Indexer
from scanpixd.scheduler import Scheduler


def test_too_many_pending_changes_collapse_into_a_root_rescan(settings, tmp_path: Path) -> None:
    root = tmp_path / "lib"
    settings.daemon.queue_size = 20
    indexer = Indexer(settings, stages=[])
    scheduler = Scheduler(indexer, [root])
    for i in range(15):
        scheduler.file_ready(root / f"d{i % 5}" / f"{i}.jpg")
    assert scheduler.pending()["scopes"] == 5  # still precise: five folders, fifteen files
    for i in range(15, 40):
        scheduler.file_ready(root / f"d{i}" / f"{i}.jpg")
    assert scheduler._scopes == {(root, True): None}  # bounded: one trusted rescan of the root
    indexer.close()

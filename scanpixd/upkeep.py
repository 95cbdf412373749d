"""Library-wide passes that look across files: time inference and the folders' vector indexes.

Per-file stages cannot do these: a photo without GPS borrows its time zone from a
geotagged neighbour shot by the same camera, and a folder's portable ANN index covers
every file in it.  The one-shot indexer runs them after its tiers; the daemon runs them
after changes settle.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from pathlib import Path

from scanpixd.config import Settings
from scanpixd.record import Record
from scanpixd.store import FolderStore, ann

log = logging.getLogger(__name__)

Key = tuple[FolderStore, str]


def root_of(folder: Path, roots: Iterable[Path]) -> Path | None:
    """The most specific root holding ``folder``."""
    best = None
    for root in roots:
        if (folder == root or root in folder.parents) and (best is None or len(str(root)) > len(str(best))):
            best = root
    return best


def update_times(entries: Iterable[tuple[FolderStore, str, Record]], roots: list[Path],
                 settings: Settings) -> list[Key]:
    """Infer every item's UTC time and zone; write the records whose ``taken`` changed.

    Items are keyed by their path relative to their root, since the key of a borrowed
    zone's source is stored in sidecars and must stay valid on another machine.
    """
    from scanpixd.timeinfer import infer_times

    items: list[tuple[str, Record]] = []
    where: dict[str, Key] = {}
    for folder, name, record in entries:
        if record.get("status") != "ok":
            continue
        root = root_of(folder.folder, roots)
        if root is None:
            continue
        key = str((folder.folder / name).relative_to(root))
        items.append((key, record))
        where[key] = (folder, name)
    changed = infer_times(items, settings)
    written: list[Key] = []
    for key, taken in changed.items():
        folder, name = where[key]
        current = folder.read(name)
        if current is None:
            continue
        current["taken"] = taken
        if folder.write_if_unchanged(current):
            written.append((folder, name))
    if written:
        log.info("time inference updated %d records", len(written))
    return written


def refresh_vector_indexes(folders: Iterable[tuple[FolderStore, dict[str, Record]]],
                           model_id: str | None) -> int:
    """Bring the portable ANN index of each folder with embeddings up to date."""
    if model_id is None:
        return 0
    count = 0
    for folder, records in folders:
        if not any("clip" in r for r in records.values()) and ann.read_meta(folder) is None:
            continue  # no vectors and no index: nothing to build or to remove
        try:
            ann.load_or_rebuild(folder, records, model_id)
            count += 1
        except OSError as exc:
            log.warning("cannot write the vector index of %s: %s", folder.folder, exc)
    return count

"""Hand-made items for query filter tests: a record plus where its file lives."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path("/photos")


@dataclass(frozen=True)
class Item:
    """The smallest thing that satisfies :class:`scanpixd.query.tree.ItemView`."""

    record: dict[str, Any] = field(default_factory=dict)
    path: Path = ROOT / "IMG_0001.jpg"
    root: Path = ROOT


def item(relative: str = "IMG_0001.jpg", root: Path = ROOT, **record: Any) -> Item:
    """An item at ``root / relative`` whose record has the given top-level keys."""
    return Item(record=dict(record), path=root / relative, root=root)


def taken(local: str | None = None, meta_local: str | None = None, **rest: Any) -> Item:
    """An item dated by ``taken.local`` and/or ``metadata.taken_local``."""
    record: dict[str, Any] = {}
    if local is not None:
        record["taken"] = {"local": local}
    if meta_local is not None:
        record["metadata"] = {"taken_local": meta_local}
    record.update(rest)
    return Item(record=record)


def at(lat: float, lon: float) -> Item:
    return Item(record={"metadata": {"gps": {"lat": lat, "lon": lon, "alt": None}}})

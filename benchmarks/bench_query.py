"""The share of a query's time budget spent parsing and filtering (pure Python, no model).

Run ``python -m benchmarks.bench_query``.  A warm text query over 100k photos should answer
in under 50 ms (p50).  This measures the two parts that are pure Python: parsing the text, and
testing every record against the filters, the latter as a ratio to a hand-inlined loop doing
the same checks on the same records (the fastest plain Python can do without an index), so
the cost of the typed tree is visible.
"""

from __future__ import annotations

import math
import random
import time
from dataclasses import dataclass
from datetime import date
from pathlib import Path
from typing import Any

from scanpixd.query import BasicContext, distance_m, parse

ROOT = Path("/photos")
QUERY = "dog on the beach date:2023-06..2023-08 type:photo camera:canon near:41.9,12.5,50km -snow"
ITEMS = 100_000
PARSES = 5_000


@dataclass(frozen=True)
class Item:
    record: dict[str, Any]
    path: Path
    root: Path


def _records(count: int) -> list[Item]:
    rng = random.Random(7)
    items = []
    for index in range(count):
        day = date(2020 + rng.randrange(5), rng.randrange(1, 13), rng.randrange(1, 29))
        record = {
            "media": {"kind": "image" if rng.random() < 0.9 else "video"},
            "taken": {"local": f"{day.isoformat()}T12:00:00"},
            "metadata": {
                "make": rng.choice(["Canon", "NIKON CORPORATION", "Apple"]),
                "model": rng.choice(["EOS 5D", "D750", "iPhone 12"]),
                "gps": {"lat": 41 + rng.random() * 2, "lon": 12 + rng.random() * 2},
            },
        }
        items.append(Item(record, ROOT / f"{index // 500}" / f"IMG_{index}.jpg", ROOT))
    return items


def _inline(item: Item) -> bool:
    """The same filters written by hand: the reference."""
    record = item.record
    local = record["taken"]["local"][:10]
    meta = record["metadata"]
    camera = f"{meta['make']} {meta['model']}".lower()
    gps = meta["gps"]
    return (
        "2023-06-01" <= local <= "2023-08-31"
        and record["media"]["kind"] == "image"
        and "canon" in camera
        and distance_m(41.9, 12.5, gps["lat"], gps["lon"]) <= 50_000
    )


def _timed(func: Any, items: list[Item]) -> tuple[float, int]:
    start = time.perf_counter()
    hits = sum(1 for item in items if func(item))
    return time.perf_counter() - start, hits


def main() -> None:
    start = time.perf_counter()
    for _ in range(PARSES):
        parse(QUERY)
    per_parse = (time.perf_counter() - start) / PARSES
    print(f"parse: {per_parse * 1e6:.1f} us per query ({QUERY!r})")

    items = _records(ITEMS)
    query, ctx = parse(QUERY).bind(BasicContext()), BasicContext()
    tree_s, tree_hits = _timed(lambda item: query.accepts(item, ctx), items)
    ref_s, ref_hits = _timed(_inline, items)
    if tree_hits != ref_hits:
        raise RuntimeError(f"tree and reference disagree: {tree_hits} != {ref_hits}")
    print(f"filters over {ITEMS} records: tree {tree_s * 1e3:.0f} ms, inline reference "
          f"{ref_s * 1e3:.0f} ms, ratio {tree_s / ref_s:.2f}x, {tree_hits} hits")  # fmt: skip
    print(f"per record: tree {tree_s / ITEMS * 1e6:.2f} us, reference {ref_s / ITEMS * 1e6:.2f} us")
    if not math.isfinite(tree_s / ref_s):
        raise RuntimeError("timer resolution too coarse")
    columns_s, column_hits = _columns_timed(query, ctx, items)
    if column_hits != tree_hits:
        raise RuntimeError(f"columns and tree disagree: {column_hits} != {tree_hits}")
    print(f"the same filters over the library's columns: {columns_s * 1e3:.1f} ms, "
          f"{tree_s / columns_s:.0f}x faster than the tree item by item")


def _columns_timed(query: Any, ctx: Any, items: list[Item]) -> tuple[float, int]:
    """The engine's way: each filter one array operation over the library's columns."""
    import numpy as np

    from scanpixd.query.columns import Columns, ColumnView, FolderInfo, accept_mask

    columns = Columns(len(items))
    for item in items:
        columns.append(item.record, 0)
    view = ColumnView(columns, [FolderInfo(ROOT, ROOT)], lambda i: items[i])
    timings = []
    for _ in range(5):
        start = time.perf_counter()
        keep = columns.alive.copy()
        for f in query.filters:
            keep &= accept_mask(f, view, ctx, keep)
        timings.append(time.perf_counter() - start)
    return sorted(timings)[2], int(np.count_nonzero(keep))


if __name__ == "__main__":
    main()

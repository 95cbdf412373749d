"""The share of a query's time budget spent parsing and filtering (pure Python, no model).

Run ``python -m benchmarks.bench_query``.  A warm text query over 100k photos should answer
in under 50 ms (p50).  This measures the two parts that are pure Python: parsing the text, and
testing every record against the filters, the latter as a ratio to a hand-inlined loop doing
the same checks on the same records (the fastest plain Python can do without an index), so
the cost of the typed tree is visible.

``--tower [CHECKPOINT]`` adds the other part of a text query's CPU, the numpy CLIP text tower
(ViT-B-32; random weights built once when no checkpoint is given), at several text lengths,
beside a plain numpy reference in the same run: the same transformer written the obvious way
over the checkpoint's map (``x @ w.T``, every position, no shortcuts), as the tower was first
written.  Both run on one OpenBLAS thread, as in the daemon; their vectors must agree.
"""

from __future__ import annotations

import argparse
import math
import os
import random
import statistics
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


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.bench_query")
    parser.add_argument("--tower", nargs="?", type=Path, const=DEFAULT_TOWER, default=None,
                        help="also time the text tower (a ViT-B-32 checkpoint; default: random "
                             "weights, built once)")
    args = parser.parse_args(argv)
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
    if args.tower is not None:
        tower_figures(args.tower)


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


# -- the text tower -------------------------------------------------------------------------
DEFAULT_TOWER = Path("<random ViT-B-32>")
TEXTS = {  # label: texts (one call each)
    "3 tokens": ["dog"], "5 tokens": ["dog at sunset"], "6 tokens": ["dog in the rain"],
    "9 tokens": ["a dog on the beach at sunset"],
    "13 tokens": ["a dog playing with a red ball on the beach at sunset"],
    "22 tokens": ["a dog playing with a red ball on the beach at sunset with friends and a "
                  "boat near the old pier"],
    "4 texts": ["dog", "red car in the snow", "birthday cake with candles", "city at night"],
}


def tower_figures(checkpoint: Path) -> None:
    """CPU ms per call of the text tower and of the plain reference, alternated."""
    import numpy as np

    from benchmarks import synth
    from scanpixd.models.bpe import BpeTokenizer, vocabulary_file
    from scanpixd.models.checkpoint import read_arrays
    from scanpixd.models.text_tower import TextConfig, TextTower

    if checkpoint == DEFAULT_TOWER:
        checkpoint = synth.build_checkpoint(synth.default_checkpoint())
    arrays = read_arrays(checkpoint)
    width = int(arrays["positional_embedding"].shape[1])
    layers = sum(1 for key in arrays if key.endswith(".attn.in_proj_weight")
                 and key.startswith("transformer."))
    config = TextConfig(layers=layers, heads=width // 64, width=width, context_length=77,
                        quick_gelu=False, eps=1e-5)
    load = time.process_time()
    tower = TextTower.from_checkpoint(config, checkpoint)
    load = time.process_time() - load
    vocabulary = vocabulary_file()
    if vocabulary is None:
        raise SystemExit("open_clip's BPE vocabulary is not installed")
    tokenize = BpeTokenizer(vocabulary, 77)
    print(f"\ntext tower ({checkpoint.name}, {layers} layers, width {width}): loaded in "
          f"{load * 1e3:.0f} ms CPU; {os.environ.get('OPENBLAS_NUM_THREADS')} BLAS thread; "
          f"load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores")
    print(f"  {'texts':<10} {'tower':>9} {'reference':>10} {'ratio':>6}  max difference")
    for label, texts in TEXTS.items():
        tokens = tokenize(texts)
        ours, theirs = tower(tokens), _reference(arrays, config, tokens)
        difference = float(np.abs(ours - theirs).max())
        if difference > 1e-5:
            raise RuntimeError(f"{label}: the tower and the reference differ by {difference}")
        times: dict[str, list[float]] = {"tower": [], "reference": []}
        for _ in range(7):
            for name, run in (("tower", tower), ("reference",
                                                 lambda t: _reference(arrays, config, t))):
                start = time.process_time()
                for _ in range(5):
                    run(tokens)
                times[name].append((time.process_time() - start) / 5 * 1e3)
        mine, plain = statistics.median(times["tower"]), statistics.median(times["reference"])
        print(f"  {label:<10} {mine:6.1f} ms {plain:7.1f} ms {mine / plain:6.2f}  {difference:.1e}")


def _reference(arrays: dict[str, Any], config: Any, tokens: Any) -> Any:
    """open_clip's text tower in the plainest numpy, over the positions up to end-of-text."""
    import numpy as np

    ends = tokens.argmax(axis=1)
    length = int(ends.max()) + 1
    x = arrays["token_embedding.weight"][tokens[:, :length]] + arrays["positional_embedding"][:length]
    mask = np.triu(np.full((length, length), -np.inf, dtype=np.float32), 1)
    heads, head = config.heads, config.width // config.heads

    def norm(x: Any, name: str) -> Any:
        mean = x.mean(axis=-1, keepdims=True)
        variance = ((x - mean) ** 2).mean(axis=-1, keepdims=True)
        return (x - mean) / np.sqrt(variance + np.float32(config.eps)) * arrays[name + ".weight"] \
            + arrays[name + ".bias"]

    def linear(x: Any, name: str) -> Any:
        return x @ arrays[name + "weight"].T + arrays[name + "bias"]

    for i in range(config.layers):
        p = f"transformer.resblocks.{i}."
        qkv = linear(norm(x, p + "ln_1"), p + "attn.in_proj_").reshape(*x.shape[:2], 3, heads, head)
        q, k, v = (qkv[:, :, j].transpose(0, 2, 1, 3) for j in range(3))
        scores = q @ k.transpose(0, 1, 3, 2) / np.float32(math.sqrt(head)) + mask
        scores = np.exp(scores - scores.max(axis=-1, keepdims=True))
        scores /= scores.sum(axis=-1, keepdims=True)
        context = (scores @ v).transpose(0, 2, 1, 3).reshape(x.shape)
        x = x + linear(context, p + "attn.out_proj.")
        hidden = linear(norm(x, p + "ln_2"), p + "mlp.c_fc.")
        hidden = 0.5 * hidden * (1.0 + _erf(hidden / np.float32(math.sqrt(2.0))))
        x = x + linear(hidden, p + "mlp.c_proj.")
    pooled = norm(x, "ln_final")[np.arange(x.shape[0]), ends] @ arrays["text_projection"]
    return pooled / np.linalg.norm(pooled, axis=1, keepdims=True)


def _erf(x: Any) -> Any:
    from scanpixd.models.text_tower import _erf as erf  # the same approximation as the tower

    return erf(x)


if __name__ == "__main__":
    main()

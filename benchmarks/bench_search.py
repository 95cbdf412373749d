"""Search latency over a large library of synthetic 512-d CLIP vectors.

Vectors are clustered like real photo embeddings (scenes repeat), one per item.  Three
figures, all in the same run:

- ``exact``: one matrix product over every vector (the reference, and what the library
  answers with while its graph is being built);
- ``graph``: the HNSW lookup the library uses above ``clip.ann_min`` vectors, with its
  recall against the exact answer;
- ``engine``: :func:`scanpixd.query.engine.search` for ``similar:<an item>``, the whole
  query path (calibration sample, rescoring, grouping by item, floor).

The target is under 5 ms per query at 100k vectors.

Run: ``python -m benchmarks.bench_search [--count 100000] [--queries 200]``.
Building the graph of 100k vectors takes a few minutes on two busy cores (once; the
daemon builds it in the background).
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np

DIM = 512


def clustered(count: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((max(1, count // 50), DIM)).astype(np.float32)
    data = centres[rng.integers(0, len(centres), count)]
    data += 0.6 * rng.standard_normal((count, DIM)).astype(np.float32)
    return data / np.linalg.norm(data, axis=1, keepdims=True)


def percentiles(samples: list[float]) -> str:
    ms = np.asarray(samples) * 1000
    return f"p50 {np.percentile(ms, 50):6.2f} ms  p99 {np.percentile(ms, 99):6.2f} ms"


def timed(fn, queries: np.ndarray) -> tuple[list[float], list[np.ndarray]]:  # type: ignore[no-untyped-def]
    times, answers = [], []
    for q in queries:
        started = time.perf_counter()
        answers.append(fn(q))
        times.append(time.perf_counter() - started)
    return times, answers


def exact_search(data: np.ndarray, query: np.ndarray, k: int) -> np.ndarray:
    """Plain numpy brute force: the reference answer and timing."""
    scores = data @ query[:, None]
    top = np.argpartition(-scores[:, 0], k)[:k]
    return top[np.argsort(-scores[top, 0])]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--count", type=int, default=100_000)
    parser.add_argument("--queries", type=int, default=200)
    parser.add_argument("--k", type=int, default=50)
    args = parser.parse_args()

    from scanpixd.config import Settings
    from scanpixd.library import Library
    from scanpixd.query import parse
    from scanpixd.query.engine import search
    from scanpixd.record import encode_vector, new_record

    data = clustered(args.count)
    rng = np.random.default_rng(1)
    picks = rng.integers(0, args.count, args.queries)
    queries = data[picks] + 0.05 * rng.standard_normal((args.queries, DIM)).astype(np.float32)
    queries /= np.linalg.norm(queries, axis=1, keepdims=True)

    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp) / "photos"
        settings = Settings(roots=[root], cache_dir=Path(tmp) / "cache", jobs=2)
        settings.clip.ann_min = args.count  # build once, after the last item
        library = Library(settings)
        library.roots = [root]
        model_id = library.model_id
        started = time.perf_counter()
        for i, vector in enumerate(data):
            folder = root / f"{i // 500:04d}"
            record = new_record(f"IMG_{i:06d}.jpg", 1, 1, f"b2:{i:032x}")
            record["media"] = {"kind": "image"}
            record["clip"] = {"model": model_id, "dim": DIM,
                              "vectors": [{"time": None, "v": encode_vector(vector)}]}
            library.update(folder, record["name"], record)
        print(f"{args.count} items, {DIM}-d: library filled in {time.perf_counter() - started:.1f} s")
        vectors = library.vectors
        assert vectors is not None
        started = time.perf_counter()
        vectors.wait_for_graph()
        print(f"HNSW graph built in the background, ready {time.perf_counter() - started:.1f} s "
              f"after the last item")

        # rows were given out in insertion order: row i holds data[i]
        exact_times, exact = timed(lambda q: exact_search(data, q, args.k), queries)
        graph_times, approx = timed(lambda q: vectors.search(q, args.k)[0], queries)
        recall = np.mean([len(set(a) & set(b)) / args.k for a, b in zip(exact, approx, strict=True)])
        print(f"   exact: {percentiles(exact_times)}")
        print(f"   graph: {percentiles(graph_times)}  recall@{args.k} {recall:.3f}  "
              f"({np.median(exact_times) / np.median(graph_times):.0f}x faster than exact)")

        items = library.items()
        texts = [parse(f"similar:{items[int(p)].path}") for p in picks[: min(50, args.queries)]]
        engine_times = []
        for query in texts:
            started = time.perf_counter()
            search(library, query, limit=args.k)
            engine_times.append(time.perf_counter() - started)
        print(f"  engine: {percentiles(engine_times)}  (similar:PATH, limit {args.k}, whole path)")


if __name__ == "__main__":
    main()

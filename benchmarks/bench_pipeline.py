"""Full pipeline throughput: faces and CLIP ViT-B-32 on the corpus's 7-13 MP photos.

Run ``python -m benchmarks.bench_pipeline [--repeat 2] [--checkpoint PATH]``.  This is
exactly the figure :func:`benchmarks.scale.bench_pipeline` reports against the 4 photos/s
target (DESIGN.md §7): an :class:`~scanpixd.indexer.Indexer` with faces and a random-weight
ViT-B-32 (same compute as real weights) indexes fresh copies of the 22 corpus JPEGs, once
warm (models loaded, exiftool started).  Printed for each run:

* wall photos/s and CPU seconds per photo, this process and its children (exiftool);
* CPU per stage: each stage's calls are timed on the thread that makes them; the CPU of
  native threads that Python did not start (torch's intra-op pool) is shown on its own
  line, as it is CLIP's share that runs beside the calling thread;
* CPU and wall time per tier (process-wide CPU, so it includes threads and overhead),
  and the cores it kept busy on average.

On two cores, 4 photos/s allows 500 ms of CPU per photo in total.  The load average is
printed; compare figures from one run, the machine is shared.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import threading
import time
from collections import defaultdict
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from benchmarks import synth
from benchmarks.scale import _check_towers, _copies, corpus_photos, cpu_clock, load_average
from scanpixd.config import Settings
from scanpixd.store import FolderStore

_TICK = os.sysconf("SC_CLK_TCK")


class StageClock:
    """Thread CPU and wall seconds per stage, summed over calls (nested calls count once)."""

    def __init__(self) -> None:
        self.cpu: dict[str, float] = defaultdict(float)
        self.wall: dict[str, float] = defaultdict(float)
        self._local = threading.local()
        self._lock = threading.Lock()

    def wrap(self, name: str, call: Callable[..., Any]) -> Callable[..., Any]:
        def timed(*args: Any, **kwargs: Any) -> Any:
            if getattr(self._local, "busy", False):
                return call(*args, **kwargs)
            self._local.busy = True
            cpu, wall = time.thread_time(), time.perf_counter()
            try:
                return call(*args, **kwargs)
            finally:
                self._local.busy = False
                with self._lock:
                    self.cpu[name] += time.thread_time() - cpu
                    self.wall[name] += time.perf_counter() - wall
        return timed


def native_thread_cpu() -> float:
    """CPU seconds of this process's threads that Python did not start (torch, OpenMP)."""
    python = {t.native_id for t in threading.enumerate()}
    total = 0.0
    for task in Path("/proc/self/task").iterdir():
        if int(task.name) in python:
            continue
        try:
            fields = (task / "stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue  # the thread ended
        total += (int(fields[11]) + int(fields[12])) / _TICK
    return total


@contextmanager
def tier_clock(indexer: Any, cpu: dict[str, list[float]]) -> Iterator[None]:
    """Process CPU and wall seconds per tier, by wrapping the indexer's tier entry points."""
    run_cheap, run_later = indexer.run_cheap, indexer.run_later

    def timed(name: str, call: Callable[[], None]) -> None:
        started, wall = time.process_time(), time.perf_counter()
        call()
        spent = cpu.setdefault(name, [0.0, 0.0])
        spent[0] += time.process_time() - started
        spent[1] += time.perf_counter() - wall

    def cheap(*args: Any) -> None:
        timed("cheap", lambda: run_cheap(*args))

    def later(keys: Any, tier: Any, summary: Any) -> None:
        timed(tier.name.lower(), lambda: run_later(keys, tier, summary))

    indexer.run_cheap, indexer.run_later = cheap, later
    try:
        yield
    finally:
        indexer.run_cheap, indexer.run_later = run_cheap, run_later


def run_once(base: Path, photos: list[Path], checkpoint: Path, faces: dict[str, int]) -> None:
    """One warm index of fresh copies of ``photos``, with its figures printed."""
    from scanpixd.indexer import Indexer
    from scanpixd.pipeline import Services

    warm, folder = _copies(base / "warm", photos[:3]), _copies(base / "photos", photos)
    settings = synth.clip_settings(Settings(roots=[folder], cache_dir=base / "cache", jobs=2),
                                   checkpoint)
    settings.faces.enabled = True
    for key, value in faces.items():
        setattr(settings.faces, key, value)
    _check_towers(settings)  # as every indexing after a machine's first one finds them
    indexer = Indexer(settings, services=Services(settings))
    stages, tiers = StageClock(), dict[str, list[float]]()
    for stage in indexer.stages:
        stage.run = stages.wrap(stage.name, stage.run)  # type: ignore[method-assign]
        stage.run_batch = stages.wrap(stage.name, stage.run_batch)  # type: ignore[method-assign]
    # the model tier's own work around the stages: reading records and working images
    indexer._load_job = stages.wrap("model tier: load jobs", indexer._load_job)  # type: ignore[method-assign]
    write_if_unchanged = FolderStore.write_if_unchanged
    FolderStore.write_if_unchanged = stages.wrap(  # type: ignore[method-assign]
        "model tier: write records", write_if_unchanged)
    try:
        indexer.index([warm])
        stages.cpu.clear()
        stages.wall.clear()
        native = native_thread_cpu()
        with cpu_clock() as cpu, tier_clock(indexer, tiers):
            started = time.perf_counter()
            summary = indexer.index([folder])
            wall = time.perf_counter() - started
            runtime = indexer.services.clip.image_runtime
            native = native_thread_cpu() - native
            indexer.close()  # exiftool exits, so its CPU time is counted
            used = cpu()
    finally:
        indexer.close()
        FolderStore.write_if_unchanged = write_if_unchanged  # type: ignore[method-assign]
    count = len(photos)
    print(f"  {count / wall:.2f} photos/s wall ({wall:.1f} s), CPU {1000 * used / count:.0f} ms/photo "
          f"incl. children (idle 2-core estimate {count / (used / 2):.2f} photos/s); "
          f"{summary.failed} failed; image tower on {runtime}; {load_average()}")
    rows = [(name, stages.cpu[name], stages.wall[name]) for name in stages.cpu]
    rows.append(("native threads (torch pool)", native, 0.0))
    for name, seconds, spent in rows:
        note = f"  wall {1000 * spent / count:5.0f} ms/photo" if spent else ""
        print(f"    {name:<32} CPU {1000 * seconds / count:5.0f} ms/photo{note}")
    other = used - sum(seconds for _, seconds, _ in rows)
    print(f"    {'rest (exiftool, scan, passes)':<32} CPU {1000 * other / count:5.0f} ms/photo")
    print("    per tier: " + "; ".join(
        f"{name} CPU {1000 * spent / count:.0f} ms/photo, wall {1000 * wall / count:.0f} ms/photo "
        f"({spent / wall:.2f} cores)" for name, (spent, wall) in tiers.items() if wall > 0.01))


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.bench_pipeline",
                                     description=__doc__.split("\n")[0])
    parser.add_argument("--repeat", type=int, default=1, help="runs, each on fresh copies")
    parser.add_argument("--checkpoint", type=Path, default=None,
                        help="ViT-B-32 weights (default: random ones, built once)")
    parser.add_argument("--faces", action="append", default=[], metavar="UPSAMPLE/MAX_SIZE",
                        help="face settings to compare, each run in turn (default: the configured ones)")
    args = parser.parse_args(argv)
    variants = [dict(zip(("upsample", "max_size"), map(int, v.split("/")), strict=True))
                for v in args.faces] or [{}]
    photos = corpus_photos()
    if not photos:
        raise SystemExit("corpora not found: nothing to measure")
    checkpoint = synth.build_checkpoint(args.checkpoint or synth.default_checkpoint())
    print(f"full pipeline (faces, CLIP ViT-B-32) on {len(photos)} corpus JPEGs; {load_average()}")
    for run in range(args.repeat):
        for faces in variants:
            with tempfile.TemporaryDirectory(prefix="scanpix-pipeline-") as tmp:
                named = ", ".join(f"faces.{k} {v}" for k, v in faces.items()) or "configured faces"
                print(f" run {run + 1} ({named}):")
                run_once(Path(tmp), photos, checkpoint, faces)


if __name__ == "__main__":
    main()

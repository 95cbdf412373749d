"""The cheap tier's files/s on real phone and camera JPEGs, its CPU cost, and a naive loop.

    python -m benchmarks.bench_index [--set scale|corpus] [--limit N] [--jobs J] [--rounds R]

The cheap tier is the real indexer (sniff, one batched exiftool process, `draft`
decoding, two WebP thumbnails, perceptual hashes, quality, place) with the model stages
off, indexing scratch copies into a temporary cache directory (the corpora stay
untouched), once warm: exiftool started and the place data read by a first run on three
other copies, as in ``benchmarks.scale`` (whose 22 corpus JPEGs, 7-13 MP, are the default
set).  Printed per run:

* wall files/s, and CPU ms per file: this process plus the exiftool process (read from
  /proc, so its start-up and the warm-up files are not counted);
* the 2-core CPU-bound rate, 2 / CPU-seconds per file: what two idle cores would reach
  if the pipeline kept both busy.  On a shared machine wall time mostly measures the
  neighbours, so this is the figure to compare between versions;
* each stage's CPU per file, measured in one thread on the same files.

The naive reference does the same work the obvious way: one exiftool process per file,
a full decode, Lanczos resizes, WebP at default effort, imagehash's pHash and dHash.
Target (DESIGN.md §7): >= 25 files/s on 2 cores and >= 2x the naive loop.
"""

from __future__ import annotations

import argparse
import io
import os
import shutil
import subprocess
import tempfile
import time
from collections import defaultdict
from pathlib import Path

import imagehash
from PIL import Image, ImageOps

from scanpixd.config import Settings
from scanpixd.indexer import Indexer
from scanpixd.pipeline import Job, Services, Stage, Tier, build_stages, run_stage
from scanpixd.record import new_record
from scanpixd.scan import content_hash
from scanpixd.store import FolderStore, Store

CORPORA = Path(__file__).resolve().parents[1].parent / "shared" / "corpora"


def corpus_jpegs(limit: int) -> list[Path]:
    """Camera and phone JPEGs of the corpora (not the deliberately broken ones)."""
    skip = ("invalid", "/tests/", "fuzz", "Pillow/")
    files = sorted(p for p in CORPORA.rglob("*") if p.suffix.lower() in (".jpg", ".jpeg")
                   and not any(s in str(p) for s in skip) and p.stat().st_size > 20_000)
    return files[:limit]


def reference_photos() -> list[Path]:
    """The 22 corpus JPEGs ``benchmarks.scale`` reports the cheap tier on."""
    from benchmarks.scale import corpus_photos

    return corpus_photos()


def naive(files: list[Path]) -> float:
    started = time.perf_counter()
    for path in files:
        subprocess.run(["exiftool", "-j", "-n", str(path)], capture_output=True, check=False)
        try:
            with Image.open(path) as im:
                picture = ImageOps.exif_transpose(im.convert("RGB"))
        except OSError:
            continue
        for size in (1024, 256):
            thumb = picture.copy()
            thumb.thumbnail((size, size), Image.Resampling.LANCZOS)
            thumb.save(io.BytesIO(), "WEBP")
        imagehash.phash(picture)
        imagehash.dhash(picture)
    return time.perf_counter() - started


def process_cpu(pid: int | None) -> float:
    """CPU seconds a live process has used (0 where /proc cannot tell)."""
    if pid is None:
        return 0.0
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def copies(folder: Path, files: list[Path]) -> Path:
    """Scratch copies (the indexer does not follow symlinks)."""
    folder.mkdir(parents=True)
    for i, path in enumerate(files):
        shutil.copyfile(path, folder / f"{i:03d}-{path.name}")
    return folder


def settings_for(base: Path, jobs: int, method: int | None = None) -> Settings:
    settings = Settings(cache_dir=base / "cache", jobs=jobs)
    settings.clip.enabled = settings.faces.enabled = False
    if method is not None:
        settings.thumbs.method = method
    return settings


def cheap_tier(files: list[Path], jobs: int, method: int | None = None
               ) -> tuple[float, float, int]:
    """Wall seconds, CPU seconds (this process and exiftool) and files indexed, once warm."""
    with tempfile.TemporaryDirectory() as tmp:
        base = Path(tmp)
        warm, folder = copies(base / "warm", files[:3]), copies(base / "photos", files)
        settings = settings_for(base, jobs, method)
        indexer = Indexer(settings, services=Services(settings))
        indexer.stages = [s for s in indexer.stages if s.tier == Tier.CHEAP]
        try:
            indexer.index([warm])
            exiftool = indexer.services.exiftool.pid
            before, exif_before = os.times(), process_cpu(exiftool)
            started = time.perf_counter()
            summary = indexer.index([folder])
            wall = time.perf_counter() - started
            after, exif_after = os.times(), process_cpu(exiftool)
        finally:
            indexer.close()
    cpu = (after.user + after.system - before.user - before.system) + exif_after - exif_before
    return wall, cpu, summary.indexed


def stage_costs(files: list[Path], method: int | None = None) -> dict[str, float]:
    """CPU ms per file of each cheap stage, one thread, plus exiftool and the content hash."""
    costs: dict[str, float] = defaultdict(float)
    with tempfile.TemporaryDirectory() as tmp:
        base = Path(tmp)
        folder_path = copies(base / "photos", files)
        settings = settings_for(base, 1, method)
        services = Services(settings)
        stages = [s for s in build_stages(services) if s.tier == Tier.CHEAP]
        folder = Store(settings).folder(folder_path)
        paths = sorted(folder_path.iterdir())
        try:
            services.exiftool.metadata(paths[:1])  # started before timing
            for round_ in range(2):  # the first round warms lazy imports and the place data
                costs.clear()
                for path in paths:
                    _one_file(path, folder, services, stages, costs, f"{round_}")
        finally:
            services.close()
    return {name: 1000 * seconds / len(paths) for name, seconds in costs.items()}


def _one_file(path: Path, folder: FolderStore, services: Services, stages: list[Stage],
              costs: dict[str, float], salt: str) -> None:
    started = time.thread_time()
    digest = content_hash(path)
    costs["content hash (scan)"] += time.thread_time() - started
    pid = services.exiftool.pid
    exif_before = process_cpu(pid)
    started = time.thread_time()
    dump = services.exiftool.metadata([path]).get(path)
    costs["exiftool (its process)"] += process_cpu(pid) - exif_before
    costs["exiftool (this side)"] += time.thread_time() - started
    stat = path.stat()
    record = new_record(path.name, stat.st_size, stat.st_mtime_ns, digest + salt)
    job = Job(path, folder, record, metadata=dump)
    for stage in stages:
        started = time.thread_time()
        run_stage(stage, job)
        costs[stage.name] += time.thread_time() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--set", choices=("scale", "corpus"), default="scale",
                        help="scale: the 22 photos benchmarks.scale uses; corpus: every corpus JPEG")
    parser.add_argument("--limit", type=int, default=60, help="files of the corpus set")
    parser.add_argument("--jobs", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=3, help="cheap-tier runs (best is kept)")
    parser.add_argument("--method", type=int, default=None,
                        help="WebP effort for the thumbnails (default: the thumbs.method setting)")
    args = parser.parse_args()
    files = reference_photos() if args.set == "scale" else corpus_jpegs(args.limit)
    if not files:
        print(f"no corpus JPEGs under {CORPORA}")
        return
    pixels = [Image.open(p).size for p in files]
    megapixels = sum(w * h for w, h in pixels) / len(files) / 1e6
    method = Settings().thumbs.method if args.method is None else args.method
    print(f"{len(files)} corpus JPEGs, {megapixels:.1f} MP on average, jobs={args.jobs}, "
          f"WebP method {method}, load {os.getloadavg()[0]:.1f}")
    runs = [cheap_tier(files, args.jobs, args.method) for _ in range(args.rounds)]
    for wall, cpu, indexed in runs:
        note = "" if indexed == len(files) else f"  (indexed {indexed} of {len(files)})"
        print(f"  cheap tier: {len(files) / wall:5.1f} files/s wall, {1000 * cpu / len(files):5.1f} ms "
              f"CPU per file, 2-core CPU-bound {2 * len(files) / cpu:5.1f} files/s{note}")
    wall = min(r[0] for r in runs)
    cpu = min(r[1] for r in runs)
    print("CPU ms per file by stage (one thread):")
    costs = stage_costs(files, args.method)
    for name, ms in costs.items():
        print(f"  {name:24s} {ms:6.1f}")
    print(f"  {'total':24s} {sum(costs.values()):6.1f}")
    reference = naive(files[:8]) * len(files) / min(8, len(files))
    rate, naive_rate = len(files) / wall, len(files) / reference
    print(f"cheap tier : {rate:6.1f} files/s wall (best), {2 * len(files) / cpu:.1f} files/s "
          f"2-core CPU-bound (best)   target >= 25 files/s")
    print(f"naive loop : {naive_rate:6.1f} files/s")
    print(f"ratio      : {rate / naive_rate:6.2f}x            target >= 2x   (load {os.getloadavg()[0]:.1f})")


if __name__ == "__main__":
    main()

"""The cheap tier's files/s on the corpus JPEGs, against a naive loop on the same files.

    python -m benchmarks.bench_index [--limit N] [--jobs J]

The cheap tier is the real indexer (sniff, one batched exiftool process, `draft`
decoding, two WebP thumbnails, perceptual hashes, quality, place) with the model stages
off, writing its records into a temporary cache directory (the corpora stay untouched).
The naive reference does the same work the obvious way: one exiftool process per file,
a full decode, Lanczos resizes, WebP at default effort, imagehash's pHash and dHash.
Both run in this process on the same files; the ratio is what to read on a busy machine.
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
from pathlib import Path

import imagehash
from PIL import Image, ImageOps

from scanpixd.config import load_settings
from scanpixd.indexer import Indexer

CORPORA = Path(__file__).resolve().parents[1].parent / "shared" / "corpora"


def corpus_jpegs(limit: int) -> list[Path]:
    """Camera and phone JPEGs of the corpora (not the deliberately broken ones)."""
    skip = ("invalid", "/tests/", "fuzz", "Pillow/")
    files = sorted(p for p in CORPORA.rglob("*") if p.suffix.lower() in (".jpg", ".jpeg")
                   and not any(s in str(p) for s in skip) and p.stat().st_size > 20_000)
    return files[:limit]


def naive(files: list[Path]) -> float:
    started = time.perf_counter()
    for path in files:
        subprocess.run(["exiftool", "-j", "-n", str(path)], capture_output=True, check=False)
        try:
            with Image.open(path) as im:
                im = ImageOps.exif_transpose(im.convert("RGB"))
        except OSError:
            continue
        for size in (1024, 256):
            thumb = im.copy()
            thumb.thumbnail((size, size), Image.Resampling.LANCZOS)
            thumb.save(io.BytesIO(), "WEBP")
        imagehash.phash(im)
        imagehash.dhash(im)
    return time.perf_counter() - started


def cheap_tier(files: list[Path], jobs: int) -> float:
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp) / "lib"
        root.mkdir()
        for i, path in enumerate(files):  # scratch copies: the indexer does not follow symlinks
            shutil.copyfile(path, root / f"{i:04d}-{path.name}")
        settings = load_settings(environ={})
        settings.write_mode = "cache"
        settings.cache_dir = Path(tmp) / "cache"
        settings.clip.enabled = settings.faces.enabled = False
        settings.jobs = jobs
        indexer = Indexer(settings)
        indexer.stages = [s for s in indexer.stages if s.name != "preview"]
        started = time.perf_counter()
        summary = indexer.index([root])
        elapsed = time.perf_counter() - started
        indexer.close()
    if summary.indexed != len(files):
        print(f"  note: indexed {summary.indexed} of {len(files)} ({summary.failed} failed)")
    return elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--limit", type=int, default=60)
    parser.add_argument("--jobs", type=int, default=os.cpu_count() or 2)
    args = parser.parse_args()
    files = corpus_jpegs(args.limit)
    megapixels = sum(Image.open(p).size[0] * Image.open(p).size[1] for p in files) / len(files) / 1e6
    print(f"{len(files)} corpus JPEGs, {megapixels:.1f} MP on average, jobs={args.jobs}, "
          f"load {os.getloadavg()[0]:.1f}")
    tier = cheap_tier(files, args.jobs)
    reference = naive(files)
    rate, naive_rate = len(files) / tier, len(files) / reference
    print(f"cheap tier : {rate:6.1f} files/s  ({tier:.1f} s)   target >= 25 files/s")
    print(f"naive loop : {naive_rate:6.1f} files/s  ({reference:.1f} s)")
    print(f"ratio      : {rate / naive_rate:6.2f}x            target >= 2x")


if __name__ == "__main__":
    main()

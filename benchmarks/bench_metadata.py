"""Metadata reading: the shared, batched exiftool process against one exiftool per file.

Run ``python -m benchmarks.bench_metadata`` (``--files N``, ``--batch N``, ``--rounds N``).

On the corpora's camera and phone JPEGs, in the same run:

* ``service``: :class:`ExifToolService` in batches of ``--batch`` (one write per batch, one
  numbered ``-execute`` per file), plus the stage's normalisation;
* ``one execute``: the same process given each batch as a single ``-execute`` (exiftool's
  plain batch mode), to show what numbering each file costs;
* ``per file``: ``exiftool`` started for every file (what a naive script does), same options.

Prints ms/file for each and the ratios.  Rounds alternate the methods to spread the noise of
a shared machine.
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

from scanpixd.config import ExiftoolSettings
from scanpixd.pipeline.exiftool import READ_ARGS, ExifToolService, _Process
from scanpixd.pipeline.metadata import normalise

CORPORA = Path(__file__).resolve().parents[1].parent / "shared" / "corpora"
FOLDERS = ("exif-samples/jpg", "metadata-extractor-images/jpg", "exiftool/t/images",
           "face_recognition/examples")


def corpus_jpegs(limit: int) -> list[Path]:
    files = sorted(p for folder in FOLDERS for p in (CORPORA / folder).rglob("*")
                   if p.suffix.lower() in (".jpg", ".jpeg") and "invalid" not in p.parts
                   and "tests" not in p.parts)
    return files[:limit]


def batches(files: list[Path], size: int) -> list[list[Path]]:
    return [files[i:i + size] for i in range(0, len(files), size)]


def run_service(service: ExifToolService, files: list[Path], size: int) -> None:
    for batch in batches(files, size):
        for dump in service.metadata(batch).values():
            normalise(dump, "exiftool")


def run_one_execute(process: _Process, files: list[Path], size: int) -> None:
    for batch in batches(files, size):
        (reply,) = process.exchange([[*READ_ARGS, *(bytes(p) for p in batch)]], 60)
        assert reply.stdout.count(b'"SourceFile"') == len(batch)


def run_per_file(files: list[Path]) -> None:
    for path in files:
        subprocess.run(["exiftool", *(a.decode() for a in READ_ARGS), str(path)],
                       capture_output=True, check=False, timeout=60)


def timed(fn: Callable[[], None], count: int) -> float:
    started = time.perf_counter()
    fn()
    return (time.perf_counter() - started) * 1000 / count


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--files", type=int, default=64, help="JPEGs to read (default 64)")
    parser.add_argument("--batch", type=int, default=16, help="files per batch (default 16)")
    parser.add_argument("--rounds", type=int, default=2, help="rounds per method (default 2)")
    args = parser.parse_args()
    if not CORPORA.is_dir():
        raise SystemExit(f"no corpora at {CORPORA}")
    files = corpus_jpegs(args.files)
    service = ExifToolService(ExiftoolSettings(batch_size=args.batch))
    raw = _Process("exiftool")
    try:
        run_service(service, files[:4], args.batch)  # start both processes outside the timing
        run_one_execute(raw, files[:4], args.batch)
        results: dict[str, list[float]] = {"service": [], "one execute": [], "per file": []}
        for _ in range(args.rounds):
            results["service"].append(
                timed(lambda: run_service(service, files, args.batch), len(files)))
            results["one execute"].append(
                timed(lambda: run_one_execute(raw, files, args.batch), len(files)))
            results["per file"].append(timed(lambda: run_per_file(files), len(files)))
    finally:
        service.close()
        raw.stop()
    best = {name: min(times) for name, times in results.items()}
    print(f"{len(files)} corpus JPEGs, batches of {args.batch}, best of {args.rounds} rounds "
          f"(median in brackets)")
    for name, times in results.items():
        print(f"  {name:12s} {best[name]:7.1f} ms/file  ({statistics.median(times):.1f})")
    print(f"  per file / service:    {best['per file'] / best['service']:.1f}x")
    print(f"  service / one execute: {best['service'] / best['one execute']:.2f}x "
          "(cost of one numbered command per file)")


if __name__ == "__main__":
    main()

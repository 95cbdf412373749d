"""Decode and thumbnail cost per 8 MP JPEG: the media + thumbs stages against plain references.

Run ``python -m benchmarks.bench_media``.  The cheap tier should reach 25 files/s on two
cores, and decoding is its largest part, so this prints milliseconds per file for:

* ``stages``: MediaStage + ThumbsStage as the pipeline runs them (JPEG ``draft`` DCT
  scaling, one resize to 1024, 256 from 1024, WebP at the configured effort);
* ``stages, no draft``: the same code decoding at full size (what draft saves);
* ``naive``: Image.open, full decode, exif_transpose, Lanczos thumbnails from the full
  picture, WebP at Pillow's default effort: what a plain loop does.

and the ratios between them, measured in the same run.  The figures are CPU time of this
process (the work is single-threaded), rounds interleaved, best round kept: these machines
are shared, and wall-clock time there mostly measures the neighbours.
"""

from __future__ import annotations

import io
import itertools
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps

from scanpixd.config import Settings
from scanpixd.pipeline import media as media_module
from scanpixd.pipeline.base import Job
from scanpixd.pipeline.media import MediaStage
from scanpixd.pipeline.services import Services
from scanpixd.pipeline.thumbs import ThumbsStage
from scanpixd.record import new_record
from scanpixd.store import Store

SIZE = (3264, 2448)  # 8 MP, a common phone sensor
FILES = 4
ROUNDS = 5
_HASHES = itertools.count(1)  # a new content hash per run, so no run finds thumbnails made


def make_photo(path: Path, seed: int) -> Path:
    """A photo-like JPEG: smooth gradients, shapes and sensor noise, with an EXIF rotation."""
    rng = np.random.default_rng(seed)
    w, h = SIZE
    y, x = np.mgrid[0:h, 0:w].astype(np.float32)
    channels = [127 + 90 * np.sin(x * rng.uniform(0.001, 0.01) + y * rng.uniform(0.001, 0.01)
                                  + rng.uniform(0, 6.28)) for _ in range(3)]
    img = np.stack(channels, axis=-1)
    for _ in range(12):
        cx, cy, r = rng.uniform(0, w), rng.uniform(0, h), rng.uniform(50, 400)
        img[(x - cx) ** 2 + (y - cy) ** 2 < r * r] = rng.uniform(0, 255, 3)
    img += rng.normal(0, 3, img.shape).astype(np.float32)  # phones denoise: little grain
    exif = Image.Exif()
    exif[0x0112] = 6
    picture = Image.fromarray(np.clip(img, 0, 255).astype(np.uint8))
    picture.save(path, quality=90, exif=exif.tobytes())
    return path


def naive(path: Path) -> None:
    with Image.open(path) as im:
        im.load()
        picture = ImageOps.exif_transpose(im).convert("RGB")
    for size in (1024, 256):
        thumb = picture.copy()
        thumb.thumbnail((size, size), Image.Resampling.LANCZOS)
        thumb.save(io.BytesIO(), "WEBP", quality=80)


def make_stages_runner(settings: Settings, draft: bool) -> Callable[[Path], None]:
    services = Services(settings)
    media, thumbs = MediaStage(services), ThumbsStage(services)
    store = Store(settings)

    def run(path: Path) -> None:
        record = new_record(path.name, 0, 0, f"b2:{next(_HASHES):032x}")  # fresh thumbs each time
        job = Job(path=path, folder=store.folder(path.parent), record=record)
        if draft:
            media.run(job)
        else:
            image, _, _ = media_module.load_picture(path, 1024, "JPEG", ["JPEG"], draft=False)
            job.image = image
        thumbs.run(job)

    return run


def decode_only(draft: bool) -> Callable[[Path], None]:
    def run(path: Path) -> None:
        media_module.load_picture(path, 1024, "JPEG", ["JPEG"], draft=draft)

    return run


def per_file_ms(runners: dict[str, Callable[[Path], None]], files: list[Path]
                ) -> dict[str, float]:
    """Best round per runner, rounds interleaved so a burst of load hits every runner alike."""
    rounds: dict[str, list[float]] = {name: [] for name in runners}
    for _ in range(ROUNDS):
        for name, run in runners.items():
            started = time.process_time()
            for path in files:
                run(path)
            rounds[name].append((time.process_time() - started) * 1000 / len(files))
    return {name: min(times) for name, times in rounds.items()}


def main() -> None:
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        files = [make_photo(root / f"IMG_{i:04d}.jpg", i) for i in range(FILES)]
        settings = Settings(cache_dir=root / "cache")
        settings.thumbs.sizes = [256, 1024]
        runners = {
            "decode only, draft": decode_only(True),
            "decode only, full": decode_only(False),
            "stages (media+thumbs)": make_stages_runner(settings, draft=True),
            "stages, no draft": make_stages_runner(settings, draft=False),
            "naive loop": naive,
        }
        for run in runners.values():
            run(files[0])  # warm caches and lazy imports
        figures = per_file_ms(runners, files)
    print(f"{FILES} JPEGs of {SIZE[0]}x{SIZE[1]} (8 MP), CPU ms per file, best of {ROUNDS} rounds:")
    for name, ms in figures.items():
        print(f"  {name:24s} {ms:7.1f} ms   {1000 / ms:6.1f} files/s")
    ratio = figures["decode only, full"] / figures["decode only, draft"]
    print(f"draft saves on decode:      {ratio:.2f}x")
    ours = figures["stages (media+thumbs)"]
    print(f"stages vs stages no draft:  {figures['stages, no draft'] / ours:.2f}x")
    print(f"stages vs naive loop:       {figures['naive loop'] / ours:.2f}x")


if __name__ == "__main__":
    main()

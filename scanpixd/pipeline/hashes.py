"""The hashes stage: perceptual hashes that let duplicates and bursts be found without pixels.

Two sizes, because each fails where the other holds.  256-bit hashes (16×16 pHash and
dHash) keep unrelated photos far apart even in a library of 100k (the 64-bit ones that
many tools use put unrelated dark or flat photos into one group), and survive resizing,
recompression, HEIC↔JPEG and tone edits; but they move a lot under a crop of a few per
cent.  64-bit hashes (8×8) survive small crops, so grouping trusts them only where a
second signal agrees (the same capture moment, or CLIP).  ``detail`` says how much
structure the hashes saw: near-blank pictures (lens cap, pocket shots) give hashes made
of noise, and grouping leaves them out rather than pairing every dark frame::

    "hashes": {"phash": "<64 hex>", "dhash": "<64 hex>",     # 16×16, 256 bits
               "phash8": "<16 hex>", "dhash8": "<16 hex>",   # 8×8, 64 bits
               "detail": 7.9}                               # mean grey step, 0-255

The picture is the job's working image (upright, sRGB, at most the thumbnail size), so
EXIF rotation is already applied; one 256 px grey copy feeds all four hashes (~4 ms).
"""

from __future__ import annotations

from typing import Any

import imagehash
import numpy as np
from PIL import Image

from scanpixd.pipeline.base import Job, Stage, Tier
from scanpixd.pipeline.services import Services
from scanpixd.record import Record

FINE_SIZE = 16  # 16×16 = 256-bit hashes
COARSE_SIZE = 8  # 8×8 = 64-bit hashes
FINE_BITS = FINE_SIZE * FINE_SIZE
COARSE_BITS = COARSE_SIZE * COARSE_SIZE
_GREY_SIDE = 256  # the grey copy every hash is computed from


class HashesStage(Stage):
    name = "hashes"
    version = 1
    tier = Tier.CHEAP

    def __init__(self, services: Services):
        self.services = services

    def applies(self, record: Record) -> bool:
        return (record.get("media") or {}).get("kind", "image") in ("image", "video")

    def run(self, job: Job) -> None:
        image = job.working_image()
        if image is None:
            raise ValueError("no decoded picture or thumbnail to hash")
        job.record[self.name] = compute_hashes(image, grey_of(job, image))


def grey_of(job: Job, image: Image.Image) -> Image.Image:
    """The working picture in grey, converted once per job for every stage that needs it."""
    held = job.scratch.get("grey")
    if held is not None and held[0] is image:
        grey: Image.Image = held[1]
        return grey
    converted = _to_grey(image)
    job.scratch["grey"] = (image, converted)
    return converted


def compute_hashes(image: Image.Image, grey: Image.Image | None = None) -> dict[str, Any]:
    """The ``record["hashes"]`` fields of an upright picture (``grey``: it in grey, if known)."""
    small = _square(grey if grey is not None else _to_grey(image))
    # dHash's own grid, made once: imagehash finds it already at size, and detail reads it.
    grid = small.resize((FINE_SIZE + 1, FINE_SIZE), Image.Resampling.LANCZOS)
    return {
        "phash": str(imagehash.phash(small, hash_size=FINE_SIZE)),
        "dhash": str(imagehash.dhash(grid, hash_size=FINE_SIZE)),
        "phash8": str(imagehash.phash(small, hash_size=COARSE_SIZE)),
        "dhash8": str(imagehash.dhash(small, hash_size=COARSE_SIZE)),
        "detail": round(detail(grid), 2),
    }


def _to_grey(image: Image.Image) -> Image.Image:
    if image.width < 1 or image.height < 1:
        raise ValueError(f"picture has no pixels ({image.width}x{image.height})")
    if image.mode in ("RGBA", "LA", "PA") or (image.mode == "P" and "transparency" in image.info):
        image = _flatten(image)
    return image.convert("L")


def _square(grey: Image.Image) -> Image.Image:
    """The grey picture squeezed to the square every hash starts from (integer steps first)."""
    steps = (grey.width // _GREY_SIDE, grey.height // _GREY_SIDE)
    if min(steps) >= 2:
        grey = grey.reduce(steps)
    if grey.size != (_GREY_SIDE, _GREY_SIDE):
        grey = grey.resize((_GREY_SIDE, _GREY_SIDE), Image.Resampling.BOX)
    return grey


def _flatten(image: Image.Image) -> Image.Image:
    """Transparent pixels on white, so a cut-out and its flattened export hash alike."""
    rgba = image.convert("RGBA")
    background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
    return Image.alpha_composite(background, rgba).convert("RGB")


def detail(grid: Image.Image) -> float:
    """Mean absolute step between neighbours on the dHash grid (0 for a blank picture)."""
    if grid.size != (FINE_SIZE + 1, FINE_SIZE):
        grid = grid.convert("L").resize((FINE_SIZE + 1, FINE_SIZE), Image.Resampling.LANCZOS)
    return float(np.abs(np.diff(np.asarray(grid, dtype=np.float32), axis=1)).mean())


def parse_hex(text: Any, bits: int) -> bytes | None:
    """The raw bytes of a stored hash, or None when it is missing or not ``bits`` long."""
    if not isinstance(text, str) or len(text) * 4 != bits:
        return None
    try:
        return bytes.fromhex(text)
    except ValueError:
        return None


def hamming(a: str, b: str) -> int:
    """Bits that differ between two stored hashes of the same size."""
    if len(a) != len(b):
        raise ValueError("hashes of different sizes cannot be compared")
    return (int(a, 16) ^ int(b, 16)).bit_count()

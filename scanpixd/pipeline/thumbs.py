"""The thumbnails stage: small WebP copies of every picture and video poster.

Thumbnails make the library browsable before any model runs, so they are made in the
cheap tier from the picture the media stage already decoded (upright, sRGB, at most the
largest size).  Each smaller size is resized from the next larger one, which costs a
fraction of resizing from the original.  Files are named by content hash, so exact
copies in one folder share them and a rename keeps them: an existing file is reused.
"""

from __future__ import annotations

import io

from PIL import Image

from scanpixd.pipeline.base import Job, Stage, Tier
from scanpixd.pipeline.media import decode_working_image
from scanpixd.pipeline.services import Services
from scanpixd.record import Record


class ThumbsStage(Stage):
    name = "thumbs"
    version = 1
    tier = Tier.CHEAP

    def __init__(self, services: Services):
        self.services = services

    def version_key(self) -> str:
        """Thumbnails are stale when the sizes change, not only the code."""
        sizes = "-".join(str(s) for s in self.sizes)
        return f"{self.version}:{sizes}"

    @property
    def sizes(self) -> list[int]:
        return sorted({int(s) for s in self.services.settings.thumbs.sizes if int(s) > 0},
                      reverse=True)

    def applies(self, record: Record) -> bool:
        return (record.get("media") or {}).get("kind", "image") in ("image", "video")

    def run(self, job: Job) -> None:
        key = content_key(job.record)
        names = {size: f"{key}-{size}.webp" for size in self.sizes}
        missing = [size for size, name in names.items() if not job.folder.has_asset(name)]
        if missing:
            settings = self.services.settings.thumbs
            image = decode_working_image(job, self.services)
            for size, picture in scaled(image, self.sizes):
                if size in missing:
                    data = encode_webp(picture, settings.quality, settings.method)
                    job.folder.write_asset(names[size], data)
        job.record[self.name] = {str(size): name for size, name in names.items()}


def content_key(record: Record) -> str:
    """The record's content hash without its algorithm prefix: the asset file name stem."""
    value = str(record.get("hash") or "")
    key = value.split(":", 1)[1] if ":" in value else value
    if not key or not key.isalnum():
        raise ValueError(f"record has no usable content hash ({value!r})")
    return key


def scaled(image: Image.Image, sizes: list[int]) -> list[tuple[int, Image.Image]]:
    """The picture at each long-side size, largest first, each made from the one before."""
    out: list[tuple[int, Image.Image]] = []
    current = image
    for size in sorted(sizes, reverse=True):
        current = fit(current, size)
        out.append((size, current))
    return out


def fit(image: Image.Image, size: int) -> Image.Image:
    """``image`` with its long side at most ``size``; never enlarged."""
    width, height = image.size
    if max(width, height) <= size:
        return image
    scale = size / max(width, height)
    target = (max(1, round(width * scale)), max(1, round(height * scale)))
    return image.resize(target, Image.Resampling.LANCZOS, reducing_gap=2.0)


def encode_webp(image: Image.Image, quality: int, method: int) -> bytes:
    if image.mode not in ("RGB", "RGBA"):
        image = image.convert("RGB")
    buffer = io.BytesIO()
    image.save(buffer, "WEBP", quality=max(0, min(100, quality)), method=max(0, min(6, method)))
    return buffer.getvalue()

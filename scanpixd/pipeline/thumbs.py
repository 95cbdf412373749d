"""The thumbnails stage: small copies of every picture and video poster.

Thumbnails make the library browsable before any model runs, so they are made in the
cheap tier from the picture the media stage already decoded (upright, sRGB, at most the
largest size).  Each smaller size is resized from the next larger one, which costs a
fraction of resizing from the original.  Files are named by content hash, so exact
copies in one folder share them and a rename keeps them: an existing file is reused.

Grid thumbnails are WebP (smallest files, and a screen shows hundreds of them); larger
previews are JPEG by default, as Immich stores them: at 1024 px, JPEG encodes about 8x
and decodes about 4x faster than WebP for some 14 % more bytes, and the model stages
read that preview back for every photo.
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
    # ``thumbs.format = "auto"``: WebP up to this long side, JPEG above it.
    AUTO_WEBP_UP_TO = 512

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
        formats = {size: self.format_for(size) for size in self.sizes}
        names = {size: f"{key}-{size}.{SUFFIXES[fmt]}" for size, fmt in formats.items()}
        missing = [size for size, name in names.items() if not job.folder.has_asset(name)]
        if missing:
            settings = self.services.settings.thumbs
            image = decode_working_image(job, self.services)
            for size, picture in scaled(image, self.sizes):
                if size in missing:
                    data = encode(picture, formats[size], settings.quality, settings.method)
                    job.folder.write_asset(names[size], data)
        job.record[self.name] = {str(size): name for size, name in names.items()}

    def format_for(self, size: int) -> str:
        """The file format of the thumbnail of long side ``size``: "webp" or "jpeg"."""
        chosen = self.services.settings.thumbs.format
        if chosen != "auto":
            return chosen
        return "webp" if size <= self.AUTO_WEBP_UP_TO else "jpeg"


SUFFIXES = {"webp": "webp", "jpeg": "jpg"}


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


def encode(image: Image.Image, fmt: str, quality: int, method: int) -> bytes:
    """``image`` as a WebP or JPEG file's bytes."""
    if fmt == "jpeg":
        return encode_jpeg(image, quality)
    return encode_webp(image, quality, method)


def encode_webp(image: Image.Image, quality: int, method: int) -> bytes:
    if image.mode not in ("RGB", "RGBA"):
        image = image.convert("RGB")
    buffer = io.BytesIO()
    image.save(buffer, "WEBP", quality=max(0, min(100, quality)), method=max(0, min(6, method)))
    return buffer.getvalue()


def encode_jpeg(image: Image.Image, quality: int) -> bytes:
    # Baseline, not optimised: optimising the Huffman tables saves ~2 % for twice the time.
    if image.mode != "RGB":
        image = image.convert("RGB")
    buffer = io.BytesIO()
    image.save(buffer, "JPEG", quality=max(1, min(100, quality)))
    return buffer.getvalue()

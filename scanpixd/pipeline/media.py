"""The media stage: recognise a file by its content, decode it once, describe it.

Decoding is the costliest of the cheap steps, so each file is decoded once and only as
far as the thumbnails need: JPEG DCT scaling (``draft``) decodes at 1/2 to 1/8 size,
HEIF uses an embedded thumbnail when one is large enough, camera raws give up their
embedded preview JPEG (through the shared exiftool process), videos a poster frame.
The picture left on the job is upright (EXIF orientation applied), in sRGB, RGB, and at
most the largest thumbnail size, so later stages never decode the original again.

Anything that cannot be decoded raises :class:`~scanpixd.errors.DecodeError` with a
one-line reason (truncated, corrupt, decompression bomb, unsupported), which the stage
framework records as the file's failure.  Pillow's pixel limit stays on.
"""

from __future__ import annotations

import io
import logging
import math
import threading
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageCms, UnidentifiedImageError

from scanpixd.errors import DecodeError, NotMedia
from scanpixd.pipeline import video
from scanpixd.pipeline.base import Job, Stage, Tier
from scanpixd.pipeline.services import Services
from scanpixd.pipeline.sniff import MediaType, sniff

log = logging.getLogger(__name__)

DEFAULT_WORKING_SIZE = 1024
_ORIENTATION_TAG = 0x0112
_TRANSPOSE = {
    2: Image.Transpose.FLIP_LEFT_RIGHT,
    3: Image.Transpose.ROTATE_180,
    4: Image.Transpose.FLIP_TOP_BOTTOM,
    5: Image.Transpose.TRANSPOSE,
    6: Image.Transpose.ROTATE_270,
    7: Image.Transpose.TRANSVERSE,
    8: Image.Transpose.ROTATE_90,
}
# Pillow plugins allowed for each sniffed format: content decides, never a plugin's guess.
_PLUGINS = {
    "JPEG": ["JPEG", "MPO"], "PNG": ["PNG"], "GIF": ["GIF"], "WEBP": ["WEBP"],
    "BMP": ["BMP", "DIB"], "TIFF": ["TIFF"], "HEIF": ["HEIF"], "AVIF": ["AVIF", "HEIF"],
}
_PREVIEW_PLUGINS = ["JPEG", "MPO", "TIFF", "PNG"]
_heif_lock = threading.Lock()
_heif_registered = False


@dataclass
class Decoded:
    """A decoded file: the working picture and the ``record["media"]`` fields."""

    image: Image.Image
    media: dict[str, Any]
    metadata: dict[str, Any] | None = None  # an exiftool dump read on the way (raw files)


class MediaStage(Stage):
    name = "media"
    version = 1
    tier = Tier.CHEAP

    def __init__(self, services: Services):
        self.services = services

    @property
    def working_size(self) -> int:
        return working_size(self.services)

    def run(self, job: Job) -> None:
        decoded = decode(job.path, self.services, self.working_size, job.metadata)
        job.image = decoded.image
        if job.metadata is None and decoded.metadata is not None:
            job.metadata = decoded.metadata  # the metadata stage reuses it
        job.record[self.name] = decoded.media


def working_size(services: Services) -> int:
    """Long side of the picture kept on a job: the largest thumbnail size."""
    return max(services.settings.thumbs.sizes or [DEFAULT_WORKING_SIZE])


def decode(path: Path, services: Services, max_side: int,
           metadata: dict[str, Any] | None = None) -> Decoded:
    """Sniff and decode ``path``; raises :class:`DecodeError` with the reason it cannot."""
    try:
        found = sniff(path)
    except OSError as exc:
        raise DecodeError(f"cannot read file: {exc.strerror or exc}") from exc
    if found is None:
        raise NotMedia("not a supported image or video (content not recognised)")
    if found.kind == "video":
        return _decode_video(path, found, max_side)
    if found.raw:
        return _decode_raw(path, found, services, max_side, metadata)
    return _decode_picture(path, found, max_side)


def _media(found: MediaType, size: tuple[int, int], frames: int | None,
           duration: float | None = None, fmt: str | None = None) -> dict[str, Any]:
    return {"kind": found.kind, "format": fmt or found.format, "mime": found.mime,
            "width": size[0], "height": size[1], "frames": frames, "duration": duration}


def _decode_video(path: Path, found: MediaType, max_side: int) -> Decoded:
    info, image = video.poster(path, max_side)
    return Decoded(image, _media(found, (info.width, info.height), info.frames, info.duration))


def _decode_picture(path: Path, found: MediaType, max_side: int) -> Decoded:
    image, size, frames = load_picture(path, max_side, found.format, _PLUGINS.get(found.format))
    return Decoded(image, _media(found, size, frames))


def _decode_raw(path: Path, found: MediaType, services: Services, max_side: int,
                metadata: dict[str, Any] | None) -> Decoded:
    """A camera raw through its embedded preview; a TIFF-like raw without one directly."""
    preview = _raw_preview(path, services)
    if preview:
        if metadata is None:
            metadata = _raw_dump(path, services)
        orientation = raw_orientation(path, metadata)
        image, size, _ = load_picture(io.BytesIO(preview), max_side, f"{found.format} preview",
                                      _PREVIEW_PLUGINS, orientation=orientation)
        sensor = _raw_size(metadata, orientation)
        if sensor is None or sensor[0] * sensor[1] < size[0] * size[1]:
            sensor = size  # an original is never smaller than its own preview
        return Decoded(image, _media(found, sensor, 1), metadata)
    try:
        image, size, frames = load_picture(path, max_side, found.format, ["TIFF"])
    except DecodeError as exc:
        raise DecodeError(f"{found.format} raw file has no embedded preview ({exc})") from None
    return Decoded(image, _media(found, size, frames), metadata)


def _raw_preview(path: Path, services: Services) -> bytes | None:
    try:
        return services.exiftool.preview(path)
    except Exception as exc:  # exiftool missing, broken or timed out: try the file itself
        log.debug("%s: no raw preview from exiftool: %s", path, exc)
        return None


def _raw_dump(path: Path, services: Services) -> dict[str, Any] | None:
    try:
        dump = services.exiftool.metadata([path]).get(path)
    except Exception as exc:  # the preview came through, so this is unlikely; go on without
        log.debug("%s: no exiftool dump: %s", path, exc)
        return None
    return dump if dump and "error" not in dump else None


# Where a raw file's own orientation lives, most trusted first (IFD1 is the thumbnail's).
_ORIENTATION_GROUPS = ("IFD0", "ExifIFD", "XMP-tiff")


def raw_orientation(path: Path, metadata: dict[str, Any] | None) -> int | None:
    """The raw file's own EXIF Orientation: from the exiftool dump, else its TIFF header."""
    dump = metadata or {}
    keys = [f"{group}:Orientation" for group in _ORIENTATION_GROUPS]
    keys += [k for k in dump if k.endswith(":Orientation") and not k.startswith("IFD1:")]
    for key in keys:
        found = _orientation_value(dump.get(key))
        if found:
            return found
    try:
        with Image.open(path, formats=["TIFF"]) as im:
            return _orientation_value(im.getexif().get(_ORIENTATION_TAG))
    except Exception:  # not TIFF-based (CR3, RAF...) or a broken header: unknown
        return None


def _raw_size(metadata: dict[str, Any] | None, orientation: int | None
              ) -> tuple[int, int] | None:
    """The size the camera records (exiftool's ImageSize), upright; None when unknown."""
    value = (metadata or {}).get("Composite:ImageSize")
    parts = str(value).replace("x", " ").split() if value is not None else []
    if len(parts) != 2 or not all(p.isdigit() for p in parts):
        return None
    width, height = int(parts[0]), int(parts[1])
    if not (0 < width <= 200_000 and 0 < height <= 200_000):
        return None
    return (height, width) if orientation in (5, 6, 7, 8) else (width, height)


def _orientation_value(value: Any) -> int | None:
    if isinstance(value, str):
        value = value.strip()
        value = int(value) if value.isdigit() else None
    return value if isinstance(value, int) and 1 <= value <= 8 else None


def ensure_heif() -> None:
    """Teach Pillow HEIF once per process (pillow_heif registers a global plugin)."""
    global _heif_registered
    with _heif_lock:
        if not _heif_registered:
            import pillow_heif

            pillow_heif.register_heif_opener(thumbnails=True, depth_images=False, aux_images=False)
            _heif_registered = True


def load_picture(source: Path | io.BytesIO, max_side: int, label: str,
                 plugins: list[str] | None, orientation: int | None = None, draft: bool = True,
                 ) -> tuple[Image.Image, tuple[int, int], int]:
    """Decode a still picture to an upright sRGB RGB image at most ``max_side`` long.

    Returns the picture, the original size after orientation, and the frame count.
    ``orientation`` overrides the file's own tag (a raw preview uses the raw's);
    ``draft=False`` decodes at full size first (the reference the benchmark compares to).
    """
    ensure_heif()
    try:
        with Image.open(source, formats=plugins) as im:
            return _load(im, max_side, orientation, draft)
    except DecodeError:
        raise
    except Exception as exc:
        raise DecodeError(describe_failure(exc, label)) from None


def describe_failure(exc: BaseException, label: str) -> str:
    """One line that says why a picture could not be decoded."""
    text = str(exc).strip()
    if isinstance(exc, Image.DecompressionBombError):
        return f"{label} refused as a possible decompression bomb: {text}"
    if isinstance(exc, UnidentifiedImageError):
        return f"{label} is corrupt or of an unsupported kind (Pillow cannot identify it)"
    if isinstance(exc, MemoryError):
        return f"{label} is too large to decode"
    if "truncated" in text or isinstance(exc, EOFError):
        return f"truncated {label}: {text or 'unexpected end of file'}"
    if isinstance(exc, OSError | ValueError | SyntaxError):
        return f"corrupt {label}: {text or type(exc).__name__}"
    return f"cannot decode {label}: {type(exc).__name__}: {text}"


def _load(im: Image.Image, max_side: int, orientation: int | None, draft: bool = True
          ) -> tuple[Image.Image, tuple[int, int], int]:
    full = im.size
    limit = Image.MAX_IMAGE_PIXELS
    if limit and full[0] * full[1] > limit:
        raise DecodeError(
            f"{im.format} refused as a possible decompression bomb: {full[0]}x{full[1]} is "
            f"{full[0] * full[1]} pixels, over the limit of {limit}")
    frames = _frame_count(im)
    if draft:
        _draft(im, max_side)
    im.load()
    if orientation is None:
        # Read after loading: some plugins (TIFF since Pillow 12, HEIF) apply the
        # orientation themselves and drop the tag; what is left is still to be done.
        orientation = _orientation(im)
    icc = im.info.get("icc_profile")
    picture = _reduce(_normalise_mode(im), max_side)
    picture = _to_srgb(picture, icc)
    picture = _flatten(picture)
    method = _TRANSPOSE.get(orientation or 1)
    if method is not None:
        picture = picture.transpose(method)
    if orientation in (5, 6, 7, 8):
        full = (full[1], full[0])
    return picture, full, frames


def _frame_count(im: Image.Image) -> int:
    try:
        return max(1, int(getattr(im, "n_frames", 1)))
    except Exception:  # a broken later frame does not spoil the first
        return 1


def _orientation(im: Image.Image) -> int | None:
    try:
        return _orientation_value(im.getexif().get(_ORIENTATION_TAG))
    except Exception:  # broken EXIF: the picture itself may still be fine
        return None


def _draft(im: Image.Image, max_side: int) -> None:
    """Let the decoder skip detail we would throw away (JPEG DCT scaling, HEIF thumbnails)."""
    width, height = im.size
    scale = max_side / max(width, height, 1)
    if scale < 1:
        im.draft(None, (math.ceil(width * scale), math.ceil(height * scale)))


def _normalise_mode(im: Image.Image) -> Image.Image:
    """A mode that resamples well and that colour management understands."""
    mode = im.mode
    if mode in ("RGB", "RGBA", "L", "CMYK"):
        return im
    if mode in ("P", "PA"):
        transparent = mode == "PA" or "transparency" in im.info
        return im.convert("RGBA" if transparent else "RGB")
    if mode in ("LA", "La", "RGBa", "RGBX"):
        return im.convert("RGBA")
    if mode == "1":
        return im.convert("L")
    if mode.startswith(("I", "F")):
        return _scale_to_l(im)
    return im.convert("RGB")


def _scale_to_l(im: Image.Image) -> Image.Image:
    """16-bit and float greyscale to 8 bits by its own range, not by clipping at 255."""
    data = np.asarray(im, dtype=np.float64)
    if im.mode.startswith("I;16"):
        return Image.fromarray((data / 257.0).round().astype(np.uint8))
    finite = data[np.isfinite(data)]
    low, high = (float(finite.min()), float(finite.max())) if finite.size else (0.0, 1.0)
    span = high - low or 1.0
    scaled = np.nan_to_num((data - low) / span * 255.0)
    return Image.fromarray(np.clip(scaled, 0, 255).round().astype(np.uint8))


def _reduce(im: Image.Image, max_side: int) -> Image.Image:
    """A new picture at most ``max_side`` long (never the opened file, which gets closed)."""
    width, height = im.size
    scale = max_side / max(width, height)
    if scale >= 1:
        return im.copy()
    size = (max(1, round(width * scale)), max(1, round(height * scale)))
    # Area averaging (Pillow's box filter scaled to the factor): the cheapest filter that does
    # not alias when shrinking, 4x faster than Lanczos here and alike at thumbnail size.
    return im.resize(size, Image.Resampling.BOX)


@lru_cache(maxsize=16)
def _srgb_profile() -> ImageCms.ImageCmsProfile:
    return ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB"))


@lru_cache(maxsize=64)
def _transform(icc: bytes, mode: str) -> ImageCms.ImageCmsTransform | None:
    """The conversion of one embedded profile to sRGB; ``None`` when it is sRGB already."""
    profile = ImageCms.ImageCmsProfile(io.BytesIO(icc))
    description = (ImageCms.getProfileDescription(profile) or "").strip()
    if mode in ("RGB", "RGBA") and description.lower().startswith("srgb"):
        return None
    out_mode = "RGBA" if mode == "RGBA" else "RGB"
    # NOCACHE: lcms keeps a one-pixel cache per transform, unsafe when threads share one.
    return ImageCms.buildTransform(profile, _srgb_profile(), mode, out_mode,
                                   flags=ImageCms.Flags.NOCACHE)


def _to_srgb(im: Image.Image, icc: bytes | None) -> Image.Image:
    if icc and im.mode in ("RGB", "RGBA", "CMYK", "L"):
        try:
            transform = _transform(bytes(icc), im.mode)
        except (ImageCms.PyCMSError, OSError, ValueError, TypeError) as exc:
            log.debug("ignoring an unusable colour profile: %s", exc)
            transform = None
        if transform is not None:
            try:
                converted = ImageCms.applyTransform(im, transform)
                if converted is not None:
                    return converted
            except (ImageCms.PyCMSError, ValueError) as exc:
                log.debug("colour conversion failed: %s", exc)
    return im.convert("RGB") if im.mode == "CMYK" else im


def _flatten(im: Image.Image) -> Image.Image:
    """RGB, transparent areas on white (as a viewer shows them on a light page)."""
    if im.mode == "RGB":
        return im
    if im.mode in ("RGBA", "LA"):
        background = Image.new("RGB", im.size, (255, 255, 255))
        background.paste(im.convert("RGB"), mask=im.getchannel("A"))
        return background
    return im.convert("RGB")


def decode_working_image(job: Job, services: Services) -> Image.Image:
    """The job's working picture, decoding the original when no stage has done it yet."""
    image = job.image
    if image is None:
        decoded = decode(job.path, services, working_size(services), job.metadata)
        image = job.image = decoded.image
    return image

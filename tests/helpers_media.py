"""Real media files for the media tests: pictures with orientation tags and colour
profiles, hostile headers, and small videos written with PyAV."""

from __future__ import annotations

import hashlib
import struct
import zlib
from collections.abc import Sequence
from pathlib import Path
from typing import cast

import av
import numpy as np
from av.video.stream import VideoStream
from PIL import Image

from scanpixd.config import Settings
from scanpixd.pipeline.base import Job
from scanpixd.record import new_record
from scanpixd.store import Store

# Inverse of each EXIF orientation's transpose: storing base.transpose(INVERSE[o]) with
# tag o means a correct reader shows ``base``.
INVERSE = {
    1: None,
    2: Image.Transpose.FLIP_LEFT_RIGHT,
    3: Image.Transpose.ROTATE_180,
    4: Image.Transpose.FLIP_TOP_BOTTOM,
    5: Image.Transpose.TRANSPOSE,
    6: Image.Transpose.ROTATE_90,
    7: Image.Transpose.TRANSVERSE,
    8: Image.Transpose.ROTATE_270,
}


def make_job(path: Path, settings: Settings, store: Store | None = None) -> Job:
    """A job for ``path`` with a fresh record, as the indexer builds it."""
    store = store or Store(settings)
    data = path.read_bytes()
    content_hash = "b2:" + hashlib.blake2b(data, digest_size=16).hexdigest()
    stat = path.stat()
    record = new_record(path.name, stat.st_size, stat.st_mtime_ns, content_hash)
    return Job(path=path, folder=store.folder(path.parent), record=record)


def marked_picture(size: tuple[int, int] = (120, 80)) -> Image.Image:
    """Grey with a red block at the top left and a blue block at the bottom right."""
    w, h = size
    im = Image.new("RGB", size, (128, 128, 128))
    im.paste((255, 0, 0), (0, 0, w // 3, h // 3))
    im.paste((0, 0, 255), (w - w // 3, h - h // 3, w, h))
    return im


def corner_colours(im: Image.Image) -> tuple[tuple[int, ...], tuple[int, ...]]:
    """Colour near the top-left and the bottom-right corner."""
    pixels = np.asarray(im.convert("RGB"))
    h, w = pixels.shape[:2]
    top_left = pixels[h // 12, w // 12]
    bottom_right = pixels[h - 1 - h // 12, w - 1 - w // 12]
    return tuple(int(v) for v in top_left), tuple(int(v) for v in bottom_right)


def save_oriented(path: Path, base: Image.Image, orientation: int, fmt: str = "JPEG") -> Path:
    """Store ``base`` so that it shows correctly only when ``orientation`` is applied."""
    method = INVERSE[orientation]
    stored = base.transpose(method) if method is not None else base.copy()
    exif = Image.Exif()
    exif[0x0112] = orientation
    kwargs = {"quality": 95} if fmt == "JPEG" else {}
    stored.save(path, fmt, exif=exif.tobytes(), **kwargs)
    return path


def _s15(value: float) -> bytes:
    return struct.pack(">i", round(value * 65536))


def _xyz(x: float, y: float, z: float) -> bytes:
    return b"XYZ \0\0\0\0" + _s15(x) + _s15(y) + _s15(z)


def _desc(text: str) -> bytes:
    ascii_text = text.encode("ascii") + b"\0"
    body = b"desc\0\0\0\0" + struct.pack(">I", len(ascii_text)) + ascii_text
    return body + struct.pack(">II", 0, 0) + b"\0\0\0" + b"\0" * 67


def swapped_rgb_profile() -> bytes:
    """An ICC v2 RGB profile whose red and blue primaries are exchanged.

    A pure red picture tagged with it *is* blue; a reader that ignores embedded profiles
    shows red, one that converts to sRGB shows blue.
    """
    red, green, blue = (0.4361, 0.2225, 0.0139), (0.3851, 0.7169, 0.0971), (0.1431, 0.0606, 0.7141)
    curve = b"curv\0\0\0\0" + struct.pack(">IH", 1, 0x0233) + b"\0\0"  # gamma 2.2
    tags = [
        (b"desc", _desc("swapped red-blue test profile")),
        (b"wtpt", _xyz(0.9642, 1.0, 0.8249)),
        (b"rXYZ", _xyz(*blue)), (b"gXYZ", _xyz(*green)), (b"bXYZ", _xyz(*red)),
        (b"rTRC", curve), (b"gTRC", curve), (b"bTRC", curve),
        (b"cprt", b"text\0\0\0\0public domain\0\0\0\0"),
    ]
    offset = 128 + 4 + 12 * len(tags)
    table, data = b"", b""
    for sig, body in tags:
        while len(body) % 4:
            body += b"\0"
        table += sig + struct.pack(">II", offset + len(data), len(body))
        data += body
    size = offset + len(data)
    header = (struct.pack(">I", size) + b"lcms" + bytes([2, 0x10, 0, 0]) + b"mntrRGB XYZ "
              + struct.pack(">6H", 2024, 1, 1, 0, 0, 0) + b"acsp" + b"\0" * 24
              + struct.pack(">I", 0) + _s15(0.9642) + _s15(1.0) + _s15(0.8249) + b"\0" * 48)
    assert len(header) == 128
    return header + struct.pack(">I", len(tags)) + table + data


def png_claiming(path: Path, width: int, height: int) -> Path:
    """A tiny PNG whose header claims ``width`` x ``height`` (a decompression-bomb shape)."""
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    idat = zlib.compress(b"\0" * 64)

    def chunk(kind: bytes, body: bytes) -> bytes:
        crc = struct.pack(">I", zlib.crc32(kind + body))
        return struct.pack(">I", len(body)) + kind + body + crc

    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", idat)
                     + chunk(b"IEND", b""))
    return path


def make_video(path: Path, colours: Sequence[tuple[int, int, int]], seconds_each: float = 1.0,
               fps: int = 10, size: tuple[int, int] = (160, 96), codec: str = "libx264",
               rotation: int = 0, container: str | None = None) -> Path:
    """A clip of solid-colour scenes (one per colour) with a little motion in each."""
    width, height = size
    with av.open(str(path), mode="w", format=container) as out:
        stream = cast(VideoStream, out.add_stream(codec, rate=fps))
        stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
        if codec == "libx264":
            stream.options = {"preset": "ultrafast", "g": str(fps)}
        if rotation:
            stream.set_display_rotation(rotation)
        index = 0
        for colour in colours:
            for _ in range(round(seconds_each * fps)):
                pixels = np.empty((height, width, 3), dtype=np.uint8)
                pixels[:] = colour
                x = (index * 7) % (width - 16)
                pixels[: height // 4, x:x + 16] = (255, 255, 255)  # a marker that moves
                pixels[height - height // 4:, : width // 4] = (0, 0, 0)  # bottom-left mark
                frame = av.VideoFrame.from_ndarray(pixels, format="rgb24")
                frame.pts = index
                out.mux(stream.encode(frame))
                index += 1
        out.mux(stream.encode(None))
    return path


def mean_colour(im: Image.Image) -> np.ndarray:
    return np.asarray(im.convert("RGB"), dtype=np.float32).reshape(-1, 3).mean(axis=0)


def sweep(root: Path, cache_dir: Path) -> None:
    """Run media, thumbs and preview on every file under ``root``, one JSON line per file.

    Meant for a child process: a ``start`` line goes out (flushed) before each file, so a
    decoder that kills the process is pinned to the file that did it.
    """
    import json
    import sys
    import time

    from scanpixd.pipeline.base import run_stage
    from scanpixd.pipeline.media import MediaStage
    from scanpixd.pipeline.preview import PreviewStage
    from scanpixd.pipeline.services import Services
    from scanpixd.pipeline.thumbs import ThumbsStage

    settings = Settings(cache_dir=cache_dir, write_mode="cache")
    services = Services(settings)
    store = Store(settings)
    stages = [MediaStage(services), ThumbsStage(services), PreviewStage(services)]
    try:
        for path in sorted(p for p in root.rglob("*") if p.is_file()):
            print(json.dumps({"start": str(path)}), flush=True)
            started = time.monotonic()
            job = make_job(path, settings, store)
            for stage in stages:
                if stage.applies(job.record) and job.record["status"] == "ok":
                    run_stage(stage, job)
            result = {"path": str(path), "ms": round(1000 * (time.monotonic() - started)),
                      "status": job.record["status"], "errors": job.record["errors"],
                      "media": job.record.get("media"), "thumbs": job.record.get("thumbs"),
                      "preview": job.record.get("preview")}
            print(json.dumps(result), flush=True)
    finally:
        services.close()
    sys.stdout.flush()


def fake_raw(path: Path, preview: bytes, orientation: int) -> Path:
    """A TIFF-structured camera file (name it .nef) holding a 1-pixel image, an Orientation
    tag in IFD0 and ``preview`` as its embedded JPEG (IFD1), as raw files carry them."""
    def ifd(entries: list[tuple[int, int, int]], next_offset: int) -> bytes:
        out = struct.pack("<H", len(entries))
        for tag, kind, value in sorted(entries):
            packed = struct.pack("<H2x", value) if kind == 3 else struct.pack("<I", value)
            out += struct.pack("<HHI", tag, kind, 1) + packed
        return out + struct.pack("<I", next_offset)

    ifd0_size, ifd1_size = 2 + 11 * 12 + 4, 2 + 3 * 12 + 4
    ifd1_at = 8 + ifd0_size
    pixel_at = ifd1_at + ifd1_size
    jpeg_at = pixel_at + 2
    ifd0 = ifd([(0x100, 3, 1), (0x101, 3, 1), (0x102, 3, 8), (0x103, 3, 1), (0x106, 3, 1),
                (0x111, 4, pixel_at), (0x112, 3, orientation), (0x115, 3, 1), (0x116, 3, 1),
                (0x117, 4, 1), (0xFE, 4, 1)], ifd1_at)
    ifd1 = ifd([(0x103, 3, 6), (0x201, 4, jpeg_at), (0x202, 4, len(preview))], 0)
    path.write_bytes(b"II*\0" + struct.pack("<I", 8) + ifd0 + ifd1 + b"\x80\0" + preview)
    return path

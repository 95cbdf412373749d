"""The preview stage: a few seconds of a video as a small, silent WebM (VP9).

A poster frame says little about a clip; a short loop lets a file manager or web view show
what happens in it without decoding the original.  Encoding is the heaviest work the
cheap pipeline would do, so it runs in the background tier, from ~10% into the clip
(where the poster is), at a low frame rate and a small size, under a time budget.
"""

from __future__ import annotations

import io
import itertools
from pathlib import Path

import av

from scanpixd.errors import DecodeError
from scanpixd.pipeline import video
from scanpixd.pipeline.base import Job, Stage, Tier
from scanpixd.pipeline.services import Services
from scanpixd.pipeline.thumbs import content_key
from scanpixd.record import Record

ASSET_KIND = "previews"
BUDGET = 60.0  # seconds one preview may take, decoding and encoding together
_VP9_OPTIONS = {
    "deadline": "realtime", "cpu-used": "8", "row-mt": "1", "lag-in-frames": "0",
    "crf": "40", "b:v": "0",
}


class PreviewStage(Stage):
    name = "preview"
    version = 1
    tier = Tier.BACKGROUND

    def __init__(self, services: Services):
        self.services = services

    def version_key(self) -> str:
        s = self.services.settings.thumbs
        return f"{self.version}:{s.preview_seconds:g}s-{s.preview_size}px-{s.preview_fps:g}fps"

    def applies(self, record: Record) -> bool:
        return (record.get("media") or {}).get("kind") == "video"

    def run(self, job: Job) -> None:
        name = f"{content_key(job.record)}.webm"
        if not job.folder.has_asset(name, ASSET_KIND):
            s = self.services.settings.thumbs
            duration = (job.record.get("media") or {}).get("duration")
            data = encode_preview(job.path, s.preview_seconds, s.preview_size, s.preview_fps,
                                  duration)
            job.folder.write_asset(name, data, ASSET_KIND)
        job.record[self.name] = {"webm": name}


def preview_start(duration: float | None, seconds: float) -> float:
    """Where the preview begins: at the poster (~10% in) when the clip is long enough."""
    if not duration or duration <= seconds * 1.5:
        return 0.0
    return min(duration * video.POSTER_POSITION, duration - seconds)


def encode_preview(path: Path, seconds: float = 3.0, size: int = 320, fps: float = 8.0,
                   duration: float | None = None, budget: float = BUDGET) -> bytes:
    """WebM (VP9) bytes of ``seconds`` of ``path`` at ``fps``, ``size`` px on the long side."""
    if seconds <= 0 or size <= 0 or fps <= 0:
        raise ValueError("preview length, size and frame rate must be positive")
    rate = max(1, round(fps))
    frames = video.iter_frames(path, preview_start(duration, seconds), seconds, rate, size,
                               budget=budget)
    first = next(frames, None)
    if first is None:
        raise DecodeError("no decodable video frame for a preview")
    width, height = max(2, first[1].width // 2 * 2), max(2, first[1].height // 2 * 2)
    buffer = io.BytesIO()
    with av.open(buffer, mode="w", format="webm") as out:
        stream = out.add_stream("libvpx-vp9", rate=rate)
        stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
        stream.options = dict(_VP9_OPTIONS)
        for count, (_, image) in enumerate(itertools.chain([first], frames)):
            frame = av.VideoFrame.from_image(image.convert("RGB"))
            frame = frame.reformat(width=width, height=height, format="yuv420p")
            frame.pts = count
            out.mux(stream.encode(frame))
        out.mux(stream.encode(None))
    return buffer.getvalue()

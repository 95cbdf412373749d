"""Frames out of videos with PyAV: the poster, frames at scene changes, the preview's frames.

Every reader here runs under a time budget and tolerates broken packets, because camera
files are often cut short and hostile files are made to hang decoders: a reader stops at
its deadline and returns what it has (or fails with a clear reason when it has nothing),
and it never waits on a file forever.  Frames are scaled by libswscale while they are
converted, so a 4K clip never becomes a full-size RGB picture.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path

import av
import numpy as np
from av.container import InputContainer
from av.video.stream import VideoStream
from PIL import Image

from scanpixd.errors import DecodeError

DEFAULT_BUDGET = 20.0  # seconds one reader may spend on one file
POSTER_POSITION = 0.1  # fraction of the duration where the poster is taken
SCENE_THRESHOLD = 0.3  # histogram distance (0..1) that counts as a scene change
MIN_INTERVAL = 1.0  # seconds between two interval frames, at least
SEQUENTIAL_LIMIT = 12.0  # clips up to this long are read frame by frame, longer ones by seeking
MAX_BAD_PACKETS = 64  # undecodable packets tolerated before a reader gives up
_HIST_SIDE = 32
_ROTATIONS = {90: Image.Transpose.ROTATE_90, 180: Image.Transpose.ROTATE_180,
              270: Image.Transpose.ROTATE_270}


@dataclass(frozen=True)
class VideoInfo:
    """What a user sees: display size after rotation and pixel aspect, duration in seconds."""

    width: int
    height: int
    duration: float | None
    frames: int | None
    codec: str
    rotation: int  # degrees counter-clockwise applied to decoded frames (0, 90, 180, 270)


@dataclass
class _Video:
    container: InputContainer
    stream: VideoStream
    deadline: float
    start: float  # stream start time in seconds: offsets are reported from here
    duration: float | None

    def expired(self) -> bool:
        return time.monotonic() > self.deadline


@contextlib.contextmanager
def _open(path: Path, budget: float) -> Iterator[_Video]:
    try:
        container = av.open(str(path), mode="r")
    except (av.FFmpegError, OSError, ValueError, UnicodeDecodeError) as exc:
        raise DecodeError(f"cannot open video: {_reason(exc)}") from exc
    try:
        stream = _video_stream(container)
        stream.codec_context.thread_type = "AUTO"
        start = _seconds(stream.start_time, stream.time_base) or 0.0
        deadline = time.monotonic() + budget
        video = _Video(container, stream, deadline, start, _duration(container, stream))
        yield video
    finally:
        container.close()


def _video_stream(container: InputContainer) -> VideoStream:
    for stream in container.streams.video:
        if stream.disposition & av.stream.Disposition.attached_pic:
            continue  # cover art, not the video
        if stream.codec_context is not None and stream.codec_context.width > 0:
            return stream
    raise DecodeError("no decodable video stream")


def _seconds(value: int | None, base: Fraction | None) -> float | None:
    if value is None or base is None:
        return None
    return float(value * base)


def _duration(container: InputContainer, stream: VideoStream) -> float | None:
    seconds = _seconds(stream.duration, stream.time_base)
    if not seconds and container.duration:
        seconds = container.duration / av.time_base
    return round(seconds, 3) if seconds and seconds > 0 else None


def _reason(exc: BaseException) -> str:
    text = getattr(exc, "strerror", None) or str(exc) or type(exc).__name__
    return str(text).strip()


def _frames(video: _Video, errors: list[str]) -> Iterator[av.VideoFrame]:
    """Decoded frames from the current position until the deadline, skipping bad packets."""
    bad = 0
    try:
        for packet in video.container.demux(video.stream):
            if video.expired():
                errors.append("time budget exhausted")
                return
            try:
                decoded = packet.decode()
            except av.FFmpegError as exc:
                bad += 1
                errors.append(_reason(exc))
                if bad > MAX_BAD_PACKETS:
                    return
                continue
            for frame in decoded:
                if isinstance(frame, av.VideoFrame):
                    yield frame
    except (av.FFmpegError, OSError) as exc:
        errors.append(_reason(exc))


def _seek(video: _Video, seconds: float) -> bool:
    stream = video.stream
    if stream.time_base is None:
        return False
    target = int((video.start + seconds) / stream.time_base)
    try:
        video.container.seek(target, stream=stream, backward=True, any_frame=False)
    except (av.FFmpegError, OSError, OverflowError):
        return False
    return True


def _rotation(frame: av.VideoFrame) -> int:
    try:
        angle = int(round(frame.rotation))
    except (AttributeError, TypeError, ValueError):
        return 0
    return angle % 360 if angle % 90 == 0 else 0


def _unrotated_size(frame: av.VideoFrame, video: _Video) -> tuple[int, int]:
    """Frame size with the pixel aspect applied (anamorphic DV, HDV), before rotation."""
    width, height = frame.width, frame.height
    sar = video.stream.sample_aspect_ratio
    if sar and sar > 0 and sar != 1:
        width = max(1, round(width * float(sar)))
    return width, height


def _display_size(frame: av.VideoFrame, video: _Video) -> tuple[int, int]:
    width, height = _unrotated_size(frame, video)
    return (height, width) if _rotation(frame) in (90, 270) else (width, height)


def _fit(width: int, height: int, max_size: int) -> tuple[int, int]:
    scale = min(1.0, max_size / max(width, height))
    return max(1, round(width * scale)), max(1, round(height * scale))


def frame_image(frame: av.VideoFrame, video: _Video, max_size: int) -> Image.Image:
    """An upright RGB picture of ``frame``, at most ``max_size`` on its long side."""
    width, height = _fit(*_unrotated_size(frame, video), max_size)
    image = frame.to_image(width=width, height=height, interpolation="AREA")
    rotation = _rotation(frame)
    return image.transpose(_ROTATIONS[rotation]) if rotation else image


def _info(video: _Video, frame: av.VideoFrame) -> VideoInfo:
    width, height = _display_size(frame, video)
    stream = video.stream
    frames = stream.frames or None
    if frames is None and video.duration and stream.average_rate:
        frames = max(1, round(video.duration * float(stream.average_rate)))
    return VideoInfo(width, height, video.duration, frames, stream.codec_context.name,
                     _rotation(frame))


def _offset(frame: av.VideoFrame, video: _Video) -> float:
    seconds = frame.time
    return round(max(0.0, (seconds or 0.0) - video.start), 3)


def _first_keyframe(video: _Video, errors: list[str], patience: int = 48) -> av.VideoFrame | None:
    """The first keyframe from here, or the first frame if none comes within ``patience``."""
    first = None
    for count, frame in enumerate(_frames(video, errors)):
        if frame.key_frame:
            return frame
        first = first or frame
        if count >= patience:
            break
    return first


def poster(path: Path, max_size: int, budget: float = DEFAULT_BUDGET
           ) -> tuple[VideoInfo, Image.Image]:
    """The poster frame (a keyframe ~10% in, else the first decodable one) and the video's info."""
    errors: list[str] = []
    with _open(path, budget) as video:
        frame = None
        seeked = bool(video.duration and video.duration > 1.0
                      and _seek(video, video.duration * POSTER_POSITION))
        if seeked:
            video.stream.codec_context.skip_frame = "NONKEY"
            frame = next(_frames(video, errors), None)
            video.stream.codec_context.skip_frame = "DEFAULT"
        if frame is None:
            if seeked:
                _seek(video, 0.0)
            frame = _first_keyframe(video, errors)
        if frame is None:
            raise DecodeError(_no_frame(errors))
        return _info(video, frame), frame_image(frame, video, max_size)


def _no_frame(errors: list[str]) -> str:
    detail = f": {errors[-1]}" if errors else ""
    return f"no decodable video frame{detail}"


@dataclass
class _Candidate:
    time: float
    hist: np.ndarray
    image: Image.Image


def _histogram(frame: av.VideoFrame) -> np.ndarray:
    small = np.asarray(frame.to_ndarray(width=_HIST_SIDE, height=_HIST_SIDE, format="rgb24"),
                       dtype=np.uint8)
    hist = np.concatenate([np.bincount(small[..., c].ravel() >> 4, minlength=16) for c in range(3)])
    return hist.astype(np.float32) / hist.sum()


def _distance(a: np.ndarray, b: np.ndarray) -> float:
    """Half the L1 distance of two normalised histograms: 0 (same) .. 1 (disjoint)."""
    return float(np.abs(a - b).sum() / 2.0)


def sample_frames(path: Path, max_frames: int, max_size: int, budget: float = DEFAULT_BUDGET
                  ) -> list[tuple[float, Image.Image]]:
    """Up to ``max_frames`` upright frames at scene changes or fixed intervals, with offsets.

    Offsets are seconds from the start of the video.  Clips up to ``SEQUENTIAL_LIMIT``
    seconds are read frame by frame; longer ones are read by seeking to keyframes.
    """
    if max_frames <= 0:
        return []
    errors: list[str] = []
    with _open(path, budget) as video:
        pool = max(3 * max_frames, 8)
        if video.duration and video.duration > SEQUENTIAL_LIMIT:
            candidates = _by_seeking(video, pool, max_size, errors)
        else:
            candidates = _sequential(video, pool, max_size, errors)
        if not candidates:
            raise DecodeError(_no_frame(errors))
    chosen = _choose(candidates, max_frames, video.duration)
    return [(c.time, c.image) for c in chosen]


def _candidate(frame: av.VideoFrame, video: _Video, max_size: int) -> _Candidate:
    return _Candidate(_offset(frame, video), _histogram(frame), frame_image(frame, video, max_size))


def _sequential(video: _Video, pool: int, max_size: int, errors: list[str]) -> list[_Candidate]:
    estimate = video.stream.frames
    if not estimate and video.duration and video.stream.average_rate:
        estimate = int(video.duration * float(video.stream.average_rate))
    step = max(1, (estimate or pool) // pool)
    found: list[_Candidate] = []
    for index, frame in enumerate(_frames(video, errors)):
        if index % step == 0:
            found.append(_candidate(frame, video, max_size))
        if len(found) >= 2 * pool:  # a wrong estimate must not keep every frame
            break
    return found


def _by_seeking(video: _Video, pool: int, max_size: int, errors: list[str]) -> list[_Candidate]:
    assert video.duration is not None
    video.stream.codec_context.skip_frame = "NONKEY"
    found: list[_Candidate] = []
    seen: set[int | None] = set()
    for target in np.linspace(0.0, video.duration, pool, endpoint=False):
        if video.expired() or not _seek(video, float(target)):
            break
        frame = next(_frames(video, errors), None)
        if frame is None or frame.pts in seen:
            continue
        seen.add(frame.pts)
        found.append(_candidate(frame, video, max_size))
    video.stream.codec_context.skip_frame = "DEFAULT"
    found.sort(key=lambda c: c.time)
    return found


def _choose(candidates: list[_Candidate], max_frames: int,
            duration: float | None) -> list[_Candidate]:
    """The first frame, the strongest scene changes, then evenly spaced frames to fill up."""
    pairs = zip(candidates, candidates[1:], strict=False)
    distances = [1.0] + [_distance(a.hist, b.hist) for a, b in pairs]
    cuts = sorted((i for i, d in enumerate(distances) if i and d >= SCENE_THRESHOLD),
                  key=lambda i: -distances[i])
    chosen = {0, *cuts[: max_frames - 1]}
    span = duration or candidates[-1].time or 0.0
    wanted = min(max_frames, 1 + int(span / MIN_INTERVAL))
    spacing = span / max(wanted, 1) / 2
    for index in np.linspace(0, len(candidates) - 1, wanted).round().astype(int).tolist():
        if len(chosen) >= wanted:
            break
        moment = candidates[index].time
        if all(abs(moment - candidates[i].time) >= spacing for i in chosen):
            chosen.add(index)
    return [candidates[i] for i in sorted(chosen)]


def iter_frames(path: Path, start: float, seconds: float, fps: float, max_size: int,
                budget: float = DEFAULT_BUDGET) -> Iterator[tuple[float, Image.Image]]:
    """Upright frames from ``start`` for ``seconds`` at about ``fps``: a preview's frames."""
    errors: list[str] = []
    with _open(path, budget) as video:
        if start > 0 and not _seek(video, start):
            start = 0.0
        step = 1.0 / fps
        first: float | None = None
        produced = 0
        for frame in _frames(video, errors):
            offset = _offset(frame, video)
            if offset + step / 2 < start:
                continue  # still before the requested start (a seek lands on a keyframe)
            first = offset if first is None else first
            if offset + 1e-6 < first + produced * step:
                continue
            yield offset, frame_image(frame, video, max_size)
            produced += 1
            if produced * step >= seconds:
                return
        if not produced:
            raise DecodeError(_no_frame(errors))

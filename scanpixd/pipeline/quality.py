"""The quality stage, and how the best shot of a group is chosen from what it records.

Measured on a grey copy scaled to a fixed size (512 px on the long side, smaller
pictures scaled up), so a low-resolution copy of a photo reads as less sharp than the
original, as it looks when both are shown at the same size::

    "quality": {"sharpness": 412.7,     # variance of the Laplacian, whole picture
                "focus": 988.1,         # 90th percentile of it over an 8×8 grid: the
                                        # in-focus part, so a blurred background is no fault
                "brightness": 0.46, "contrast": 0.21,       # mean and spread, 0..1
                "clipped_high": 0.01, "clipped_low": 0.0,   # share of blown / crushed pixels
                "exposure": 0.97,                            # 0..1 from the four above
                "width": 4000, "height": 3000}               # the original's, when known

The best-shot rules (:func:`score_shots`, :func:`explain`) compare the members of one
group: sharpness and resolution relative to the best member, exposure as is, and, where
the faces stage has run, eyes open, smiles and face sharpness, each face weighted by
size (faces under a quarter of the largest one's size are passers-by and ignored).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from PIL import Image

from scanpixd.pipeline.base import Job, Stage, Tier
from scanpixd.pipeline.hashes import grey_of
from scanpixd.pipeline.services import Services
from scanpixd.record import Record

MEASURE_SIDE = 512
_GRID = 8
# The faces stage's scales: eye aspect ratio under which eyes count as closed, and
# mouth-to-jaw width ratio over which a face counts as smiling (scanpixd.models.faces).
EYES_CLOSED_BELOW = 0.2
SMILE_ABOVE = 0.45


class QualityStage(Stage):
    name = "quality"
    version = 1
    tier = Tier.CHEAP

    def __init__(self, services: Services):
        self.services = services

    def applies(self, record: Record) -> bool:
        return (record.get("media") or {}).get("kind", "image") == "image"

    def run(self, job: Job) -> None:
        image = job.working_image()
        if image is None:
            raise ValueError("no decoded picture or thumbnail to measure")
        quality = measure(image, grey_of(job, image))
        quality["width"], quality["height"] = original_size(job.record, image)
        job.record[self.name] = quality


def original_size(record: Record, image: Image.Image) -> tuple[int, int]:
    """The original's pixel size: the media stage's, else the metadata's, else the picture's."""
    for key in ("media", "metadata"):
        part = record.get(key) or {}
        width, height = part.get("width"), part.get("height")
        if isinstance(width, int) and isinstance(height, int) and width > 0 and height > 0:
            return width, height
    return image.width, image.height


def measure(image: Image.Image, grey: Image.Image | None = None) -> dict[str, Any]:
    """Sharpness and exposure of a picture (``grey``: it in grey, if known)."""
    if image.width < 1 or image.height < 1:
        raise ValueError(f"picture has no pixels ({image.width}x{image.height})")
    small = _normalised(grey if grey is not None else image.convert("L"))
    pixels = np.asarray(small, dtype=np.float32)
    lap = _laplacian(pixels)
    return {
        "sharpness": round(float(lap.var()), 2) if lap.size else 0.0,
        "focus": round(_focus(lap), 2),
        **_exposure(np.asarray(small)),
    }


def _normalised(grey: Image.Image) -> Image.Image:
    """Scaled to MEASURE_SIDE on the long side: integer reduction first, then a small resize."""
    step = max(grey.size) // MEASURE_SIDE
    if step >= 2:
        grey = grey.reduce(step)
    scale = MEASURE_SIDE / max(grey.size)
    size = (max(3, round(grey.width * scale)), max(3, round(grey.height * scale)))
    if size == grey.size:
        return grey
    method = Image.Resampling.BOX if scale < 1 else Image.Resampling.BILINEAR
    return grey.resize(size, method)


def _laplacian(a: np.ndarray) -> np.ndarray:
    return a[1:-1, :-2] + a[1:-1, 2:] + a[:-2, 1:-1] + a[2:, 1:-1] - 4.0 * a[1:-1, 1:-1]


def _focus(lap: np.ndarray) -> float:
    """Sharpness of the sharpest parts: the 90th percentile of per-tile Laplacian variance."""
    rows, cols = lap.shape[0] // _GRID, lap.shape[1] // _GRID
    if rows < 1 or cols < 1:
        return float(lap.var()) if lap.size else 0.0
    tiles = lap[:rows * _GRID, :cols * _GRID].reshape(_GRID, rows, _GRID, cols)
    return float(np.percentile(tiles.var(axis=(1, 3)), 90))


def _exposure(grey: np.ndarray) -> dict[str, float]:
    hist = np.bincount(grey.ravel(), minlength=256).astype(np.float64)
    total = hist.sum()
    levels = np.arange(256, dtype=np.float64)
    mean = float((hist * levels).sum() / total) / 255.0
    spread = math.sqrt(max(float((hist * (levels / 255.0 - mean) ** 2).sum() / total), 0.0))
    high = float(hist[250:].sum() / total)
    low = float(hist[:6].sum() / total)
    return {
        "brightness": round(mean, 4),
        "contrast": round(spread, 4),
        "clipped_high": round(high, 4),
        "clipped_low": round(low, 4),
        "exposure": round(exposure_score(mean, spread, high, low), 4),
    }


def exposure_score(mean: float, contrast: float, clipped_high: float, clipped_low: float) -> float:
    """1 for a well exposed picture, lower as it gets too dark, too bright, flat or clipped.

    Blown highlights cost more than crushed shadows (they hold nothing to recover).
    """
    penalty = 2.0 * max(0.0, abs(mean - 0.47) - 0.18)
    penalty += 1.5 * max(0.0, clipped_high - 0.01) + 1.0 * max(0.0, clipped_low - 0.02)
    penalty += 2.0 * max(0.0, 0.08 - contrast)
    return min(1.0, max(0.0, 1.0 - penalty))


# --- best shot ----------------------------------------------------------------------------


@dataclass
class Shot:
    """What the best-shot rules know about one photo (None: not measured)."""

    focus: float | None = None
    exposure: float | None = None
    pixels: int | None = None
    faces: list[dict[str, float | None]] = field(default_factory=list)
    faces_known: bool = False  # the faces stage ran on this photo
    described: bool = False  # capture time or camera known

    @property
    def eyes_open(self) -> float | None:
        """Size-weighted share of main faces with open eyes."""
        return _weighted(self.faces, "eyes")

    @property
    def smile(self) -> float | None:
        return _weighted(self.faces, "smile")

    @property
    def face_sharpness(self) -> float | None:
        return _weighted(self.faces, "sharp")


def shot_of(record: Record) -> Shot:
    quality = record.get("quality") or {}
    shot = Shot(
        focus=_number(quality.get("focus", quality.get("sharpness"))),
        exposure=_number(quality.get("exposure")),
        pixels=_pixels(record),
        described=_described(record),
    )
    faces = record.get("faces")
    if isinstance(faces, list):
        shot.faces_known = True
        shot.faces = _main_faces(faces)
    return shot


def _number(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return float(value) if math.isfinite(value) else None


def _pixels(record: Record) -> int | None:
    for key in ("quality", "media", "metadata"):
        part = record.get(key) or {}
        width, height = part.get("width"), part.get("height")
        if isinstance(width, int) and isinstance(height, int) and width > 0 and height > 0:
            return width * height
    return None


def _described(record: Record) -> bool:
    metadata = record.get("metadata") or {}
    taken = record.get("taken") or {}
    return bool(metadata.get("taken_local") or metadata.get("model") or taken.get("utc"))


def _main_faces(faces: list[Any]) -> list[dict[str, float | None]]:
    """Faces that matter: at least a quarter the size of the largest (not passers-by)."""
    rows = []
    for face in faces:
        if not isinstance(face, dict):
            continue
        size = _face_size(face)
        rows.append({"size": size, "eyes": _eyes(face.get("eyes_open")),
                     "smile": _smile(face.get("smile")), "sharp": _number(face.get("sharpness"))})
    if not rows:
        return []
    largest = max(r["size"] or 0.0 for r in rows)
    return [r for r in rows if largest <= 0 or (r["size"] or 0.0) >= 0.25 * largest]


def _face_size(face: dict[str, Any]) -> float:
    size = _number(face.get("size"))
    if size is not None and size > 0:
        return size
    box = face.get("box")
    if isinstance(box, list) and len(box) == 4 and all(_number(v) is not None for v in box):
        top, right, bottom, left = (float(v) for v in box)
        return abs(bottom - top) * abs(right - left)
    return 0.0


def _eyes(value: Any) -> float | None:
    if isinstance(value, bool):
        return 1.0 if value else 0.0
    number = _number(value)
    return None if number is None else float(number >= EYES_CLOSED_BELOW)


def _smile(value: Any) -> float | None:
    if isinstance(value, bool):
        return 1.0 if value else 0.0
    number = _number(value)
    if number is None:
        return None
    # A ratio on the faces stage's scale: 0 at a closed mouth (~0.35), 1 at a broad smile.
    return min(1.0, max(0.0, (number - 0.35) / (2 * (SMILE_ABOVE - 0.35))))


def _weighted(faces: list[dict[str, float | None]], key: str) -> float | None:
    pairs = [(f["size"] or 1e-6, f[key]) for f in faces if f[key] is not None]
    if not pairs:
        return None
    total = sum(w for w, _ in pairs)
    return sum(w * float(v) for w, v in pairs if v is not None) / total


# Weights of each part of the score; parts nobody in the group has are left out.
_WEIGHTS = {"focus": 0.30, "exposure": 0.15, "resolution": 0.25, "eyes": 0.20,
            "smile": 0.05, "face_sharpness": 0.05, "described": 0.02}


def score_shots(records: Sequence[Record]) -> list[float]:
    """Score every member of one group against the others, 0..1 (higher is better)."""
    shots = [shot_of(r) for r in records]
    parts = _parts(shots)
    scores = []
    for i in range(len(shots)):
        have: dict[str, float] = {}
        for key, column in parts.items():
            value = column[i]
            if value is not None:
                have[key] = value
        weight = sum(_WEIGHTS[k] for k in have)
        total = sum(_WEIGHTS[k] * v for k, v in have.items())
        # Nothing tells the members apart (exact copies): all are equally good.
        scores.append(round(total / weight, 4) if weight else 1.0)
    return scores


def _parts(shots: list[Shot]) -> dict[str, list[float | None]]:
    """Each criterion on a 0..1 scale: relative to the group's best where only that is fair."""
    faces = any(s.faces for s in shots)
    parts: dict[str, list[float | None]] = {
        "focus": _relative([s.focus for s in shots], root=True),
        "exposure": [s.exposure for s in shots],
        "resolution": _relative([float(s.pixels) if s.pixels else None for s in shots],
                                root=True),
        "described": [1.0 if s.described else 0.0 for s in shots],
    }
    if faces:
        most = max(len(s.faces) for s in shots)
        parts["eyes"] = [_eyes_part(s, most) for s in shots]
        parts["smile"] = [s.smile if s.faces else (0.0 if s.faces_known else None)
                          for s in shots]
        parts["face_sharpness"] = _relative([s.face_sharpness for s in shots], root=True)
    return {k: v for k, v in parts.items() if len({x for x in v if x is not None}) > 1}


def _eyes_part(shot: Shot, most: int) -> float | None:
    """Open-eyed share of the faces the group shows at most: a turned head counts as closed."""
    if not shot.faces_known or not most:
        return None
    if not shot.faces:
        return 0.0
    eyes = shot.eyes_open
    return None if eyes is None else eyes * len(shot.faces) / most


def _relative(values: list[float | None], root: bool = False) -> list[float | None]:
    known = [v for v in values if v is not None and v > 0]
    if not known:
        return [None if v is None else 0.0 for v in values]
    top = max(known)
    out: list[float | None] = []
    for v in values:
        if v is None:
            out.append(None)
            continue
        ratio = max(v, 0.0) / top
        out.append(math.sqrt(ratio) if root else ratio)
    return out


def explain(records: Sequence[Record], best: int) -> list[list[str]]:
    """Human-readable reasons: merits of ``best``, shortcomings of every other member.

    A merit needs the best to lead on that criterion by a small margin; a shortcoming
    needs a member to trail the best by a clear one.
    """
    shots = [shot_of(r) for r in records]
    most = max(len(s.faces) for s in shots)
    values = {c.merit: [c.value(s, most) for s in shots] for c in _CRITERIA}
    reasons: list[list[str]] = [[] for _ in shots]
    for c in _CRITERIA:
        column = values[c.merit]
        top = column[best]
        if top is None:
            continue
        known = [v for v in column if v is not None]
        if top >= max(known) - 1e-9 and any(c.behind(v, top, strong=False) for v in known):
            reasons[best].append(c.merit)
        for i, v in enumerate(column):
            if i != best and v is not None and c.behind(v, top, strong=True):
                reasons[i].append(c.fault_of(shots[i], shots[best]))
    return reasons


@dataclass(frozen=True)
class _Criterion:
    merit: str
    fault: str
    ratio: bool  # compared as a ratio to the best (else as a difference)
    soft: float  # margin for a merit of the best
    strong: float  # margin for a shortcoming of another member

    def value(self, shot: Shot, most: int) -> float | None:
        if self.merit == "eyes open":
            return _eyes_part(shot, most)
        if self.merit == "smiling":
            return shot.smile
        if self.merit == "sharpest faces":
            return shot.face_sharpness
        if self.merit == "sharpest":
            return shot.focus
        if self.merit == "highest resolution":
            return None if shot.pixels is None else float(shot.pixels)
        if self.merit == "best exposure":
            return shot.exposure
        return 1.0 if shot.described else 0.0

    def behind(self, value: float, top: float, strong: bool) -> bool:
        margin = self.strong if strong else self.soft
        if self.ratio:
            return top > 0 and value < top * margin
        return value < top - margin

    def fault_of(self, shot: Shot, best: Shot) -> str:
        if self.merit == "eyes open" and shot.faces_known and not shot.faces and best.faces:
            return "faces not visible"
        return self.fault


_CRITERIA = [
    _Criterion("eyes open", "eyes closed", False, 0.1, 0.25),
    _Criterion("smiling", "not smiling", False, 0.1, 0.25),
    _Criterion("sharpest faces", "blurrier faces", True, 0.9, 0.7),
    _Criterion("sharpest", "less sharp", True, 0.95, 0.8),
    _Criterion("highest resolution", "lower resolution", True, 0.98, 0.9),
    _Criterion("best exposure", "worse exposure", False, 0.03, 0.08),
    _Criterion("has capture metadata", "no capture metadata", False, 0.5, 0.5),
]

"""dlib's HOG face detector, scanned by our native FHOG code (:mod:`scanpixd.models._fhog`).

dlib's frontal detector is five linear filters over FHOG features, scanned across an image
pyramid.  Its own scan costs ~280 ms of CPU on a 1024 px picture doubled to 2048 px, over
half the full pipeline's budget; the native scan does the same arithmetic in a faster layout
for 55 to 60 % of that.  The weights are dlib's:
read from the detector dlib saves (``object_detector<scan_fhog_pyramid<pyramid_down<6>>>``
in dlib's serialization format), split into rank-1 filters as dlib splits them, and the
answers mapped back as ``fhog_object_detector.run`` maps them, boxes and scores matching
dlib's to float rounding (tests/test_faces_hog.py compares them on the corpora's faces).

Should the native module be missing (a build without a C compiler) or dlib save a detector
this module does not know, :func:`native_scanner` answers None and dlib scans as before.
"""

from __future__ import annotations

import importlib
import logging
import math
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

log = logging.getLogger(__name__)

PLANES = 31  # FHOG features per cell
MAX_UPSAMPLE = 3  # doublings the native scan does (as _fhog.c's limits)
MAX_FILTER, MAX_DETECTORS = 64, 1024
_PYRAMID = 6  # pyramid_down<6>: each level is 5/6 of the last
_DOWN, _UP = (_PYRAMID - 1.0) / _PYRAMID, _PYRAMID / (_PYRAMID - 1.0)  # its ratios, as dlib rounds them


class DetectorFormatError(ValueError):
    """A saved dlib detector this module cannot read."""


# -- dlib's serialization ---------------------------------------------------------------------
class _Reader:
    """dlib's ``serialize`` encodings: integers as a length byte (sign in its top bit) and
    little-endian bytes; floating point as an integer mantissa and exponent."""

    def __init__(self, data: bytes):
        self.data, self.at = data, 0

    def integer(self) -> int:
        if self.at >= len(self.data):
            raise DetectorFormatError("the detector file ends early")
        head = self.data[self.at]
        size, negative = head & 0x7F, bool(head & 0x80)
        if size > 8 or self.at + 1 + size > len(self.data):
            raise DetectorFormatError(f"bad integer at byte {self.at}")
        value = int.from_bytes(self.data[self.at + 1:self.at + 1 + size], "little")
        self.at += 1 + size
        return -value if negative else value

    def real(self) -> float:
        mantissa, exponent = self.integer(), self.integer()
        if exponent >= 32000:  # dlib's markers for inf, -inf and nan
            raise DetectorFormatError("the detector holds a non-finite number")
        return math.ldexp(mantissa, exponent)

    def column(self) -> np.ndarray:
        rows, cols = self.integer(), self.integer()
        if rows >= 0 or cols != -1:  # a column vector in dlib's current matrix format
            raise DetectorFormatError(f"expected a weight vector, found a {rows} x {cols} matrix")
        return np.array([self.real() for _ in range(-rows)], dtype=np.float64)


@dataclass(frozen=True)
class SavedDetector:
    """What a saved ``object_detector<scan_fhog_pyramid<pyramid_down<6>>>`` holds."""

    cell_size: int
    padding: int
    window_width: int
    window_height: int
    max_pyramid_levels: int
    min_level_width: int
    min_level_height: int
    iou_thresh: float
    covered_thresh: float
    weights: list[np.ndarray]  # per detector: filter_rows * filter_cols * 31 weights, then the bias

    @classmethod
    def parse(cls, data: bytes) -> SavedDetector:
        read = _Reader(data)
        if read.integer() != 2 or read.integer() != 1:
            raise DetectorFormatError("not a version 2 object detector with a version 1 FHOG scanner")
        if read.integer() != 0 or read.integer() != 0:
            raise DetectorFormatError("the saved scanner holds features")
        cell, padding, width, height = (read.integer() for _ in range(4))
        max_levels, min_width, min_height = (read.integer() for _ in range(3))
        read.real()  # the nuclear norm regularisation strength: training only
        dims = read.integer()
        iou, covered = read.real(), read.real()
        weights = [read.column() for _ in range(read.integer())]
        saved = cls(cell, padding, width, height, max_levels, min_width, min_height, iou, covered, weights)
        rows, cols = saved.filter_shape
        if cell <= 0 or dims != rows * cols * PLANES or not weights or any(
                len(w) != dims + 1 for w in weights):
            raise DetectorFormatError("the detector's sizes do not agree")
        if read.at != len(data):
            raise DetectorFormatError(f"{len(data) - read.at} bytes after the detector")
        return saved

    @property
    def filter_shape(self) -> tuple[int, int]:
        """(rows, cols) of each plane's filter, as dlib's compute_fhog_window_size has them."""
        def cells(size: int) -> int:
            low, high = -(size // 2), -(size // 2) + size - 1  # centered_rect around 0
            return _trunc_div(high - 1, self.cell_size) - _trunc_div(low - 1, self.cell_size) + 1
        return (cells(self.window_height) + 2 * self.padding, cells(self.window_width) + 2 * self.padding)


def _trunc_div(a: int, b: int) -> int:
    """C++ integer division (toward zero)."""
    return int(a / b)


# -- the filter bank ---------------------------------------------------------------------------
@dataclass(frozen=True)
class FilterBank:
    """Each detector's rank-1 (row, col) filters per FHOG plane, as the native scan reads them."""

    rows: int
    cols: int
    pairs: np.ndarray  # float32: per detector, per plane, per pair: row filter then column filter
    counts: np.ndarray  # int32 [detector * PLANES + plane]: pairs there
    biases: np.ndarray  # float64 per detector: the score a window must reach (before adjusting)

    @classmethod
    def build(cls, saved: SavedDetector) -> FilterBank:
        rows, cols = saved.filter_shape
        size = rows * cols
        pairs: list[np.ndarray] = []
        counts: list[int] = []
        for weights in saved.weights:
            for plane in range(PLANES):
                found = _rank_one(weights[plane * size:(plane + 1) * size].reshape(rows, cols))
                counts.append(len(found))
                pairs.extend(np.concatenate([row, col]) for row, col in found)
        flat = np.concatenate(pairs) if pairs else np.zeros(0)
        return cls(rows, cols, np.ascontiguousarray(flat, dtype=np.float32),
                   np.array(counts, dtype=np.int32),
                   np.array([w[-1] for w in saved.weights], dtype=np.float64))


def _rank_one(matrix: np.ndarray) -> list[tuple[np.ndarray, np.ndarray]]:
    """dlib's build_fhog_filterbank: the SVD's terms whose singular value is at least
    max(1e-4, 0.001 x the largest), each split as sqrt(s) u and sqrt(s) v."""
    u, s, vt = np.linalg.svd(matrix)
    thresh = max(1e-4, float(s.max(initial=0.0)) * 0.001)
    return [(vt[j] * math.sqrt(s[j]), u[:, j] * math.sqrt(s[j]))
            for j in range(len(s)) if abs(s[j]) >= thresh]


# -- the scanner ---------------------------------------------------------------------------------
Box = tuple[int, int, int, int]  # left, top, right, bottom, inclusive as dlib's rectangles


class HogScanner:
    """A saved dlib FHOG detector, run by the native scan; ``run`` answers as dlib's does."""

    def __init__(self, saved: SavedDetector, native: Any):
        # dlib scans these with code the native scan does not have: its own FHOG for 1-pixel
        # cells, and full 2-D filters where rank-1 ones would cost more
        if saved.cell_size == 1:
            raise DetectorFormatError("a detector of 1-pixel cells, which dlib scans another way")
        rows, cols = saved.filter_shape
        if max(rows, cols) > MAX_FILTER or len(saved.weights) > MAX_DETECTORS:
            raise DetectorFormatError(f"filters of {rows} x {cols} for {len(saved.weights)} detectors")
        bank = FilterBank.build(saved)
        per_detector = bank.counts.reshape(len(saved.weights), PLANES).sum(axis=1)
        if (per_detector > PLANES * min(rows, cols) / 3.0).any():
            raise DetectorFormatError("a detector dlib scans with full filters")
        self.saved, self.bank, self._native = saved, bank, native

    def run(self, grey: np.ndarray, upsample: int = 0,
            adjust_threshold: float = 0.0) -> tuple[list[Box], list[float], list[int]]:
        """(boxes, confidences, detector indices), best first, after dlib's non-max suppression."""
        if grey.dtype != np.uint8 or grey.ndim != 2:
            raise ValueError("the scanner reads 8-bit grey images")
        if not 0 <= upsample <= MAX_UPSAMPLE:
            raise ValueError(f"upsample must be 0 to {MAX_UPSAMPLE}, not {upsample}")
        image = np.ascontiguousarray(grey)
        rows, cols = image.shape
        if rows == 0 or cols == 0:
            return [], [], []
        scan_rows, scan_cols = self._native.upsampled_size(rows, cols, upsample)
        saved, bank = self.saved, self.bank
        hits = self._native.scan(
            image, rows, cols, upsample, self._levels(scan_rows, scan_cols), saved.cell_size,
            len(saved.weights), bank.rows, bank.cols, bank.pairs, bank.counts, bank.biases,
            adjust_threshold)
        found = [(confidence, index, self._box(level, row, col, upsample))
                 for confidence, index, level, row, col in hits]
        kept = _suppress(found, saved.iou_thresh, saved.covered_thresh)
        return [box for _, _, box in kept], [c for c, _, _ in kept], [i for _, i, _ in kept]

    def _levels(self, rows: int, cols: int) -> int:
        """dlib's create_fhog_pyramid: levels until one is smaller than the minimum."""
        saved, levels = self.saved, 0
        rect = [0.0, 0.0, cols - 1.0, rows - 1.0]
        while True:
            rect = [float(_lround((v - 0.3) * _DOWN)) for v in rect]
            levels += 1
            width, height = rect[2] - rect[0] + 1, rect[3] - rect[1] + 1
            if not (width >= saved.min_level_width and height >= saved.min_level_height
                    and levels < saved.max_pyramid_levels):
                return levels

    def _box(self, level: int, row: int, col: int, upsample: int) -> Box:
        """A window at (row, col) of a level's scores, in the caller's image (dlib's mapping)."""
        rows, cols = self.bank.rows, self.bank.cols
        height, width = rows - 2 * self.saved.padding, cols - 2 * self.saved.padding
        left, top = col - width // 2, row - height // 2
        corners = (_fhog_to_image(left, top, self.saved.cell_size, rows, cols),
                   _fhog_to_image(left + width - 1, top + height - 1, self.saved.cell_size, rows, cols))
        box = [float(v) for corner in corners for v in corner]  # left, top, right, bottom
        for _ in range(level):
            box = [v * _UP + 0.3 for v in box]
        box = [float(_lround(v)) for v in box]
        for _ in range(upsample):  # pyramid_down<2>'s point_down, from the upsampled image
            box = [box[0] / 2 - 1.25, box[1] / 2 - 0.75, box[2] / 2 - 1.25, box[3] / 2 - 0.75]
        left_, top_, right_, bottom_ = (_lround(v) for v in box)
        return left_, top_, right_, bottom_


def _fhog_to_image(x: int, y: int, cell: int, pad_rows: int, pad_cols: int) -> tuple[int, int]:
    x = (x + 1 - (pad_cols - 1) // 2) * cell + 1
    y = (y + 1 - (pad_rows - 1) // 2) * cell + 1
    return (x + (cell // 2 if x >= 0 else -(cell // 2)), y + (cell // 2 if y >= 0 else -(cell // 2)))


def _lround(value: float) -> int:
    """C's lround: halves away from zero."""
    return int(math.floor(value + 0.5)) if value >= 0 else -int(math.floor(-value + 0.5))


def _suppress(found: list[tuple[float, int, Box]], iou: float,
              covered: float) -> list[tuple[float, int, Box]]:
    """dlib's non-max suppression: best first, dropping any box overlapping one kept."""
    kept: list[tuple[float, int, Box]] = []
    for item in sorted(found, key=lambda hit: hit[0], reverse=True):
        if not any(_overlaps(item[2], other[2], iou, covered) for other in kept):
            kept.append(item)
    return kept


def _area(box: Box) -> int:
    return max(0, box[2] - box[0] + 1) * max(0, box[3] - box[1] + 1)


def _overlaps(a: Box, b: Box, iou: float, covered: float) -> bool:
    """dlib's test_box_overlap."""
    inner = _area((max(a[0], b[0]), max(a[1], b[1]), min(a[2], b[2]), min(a[3], b[3])))
    if inner == 0:
        return False
    outer = _area((min(a[0], b[0]), min(a[1], b[1]), max(a[2], b[2]), max(a[3], b[3])))
    return inner / outer > iou or inner / _area(a) > covered or inner / _area(b) > covered


def _native() -> Any:
    """The built extension module, or None (logged) where it was not built."""
    try:
        return importlib.import_module("scanpixd.models._fhog")
    except ImportError as exc:
        log.info("native HOG scan not built (%s): dlib scans faces", exc)
        return None


def kernels() -> str:
    """Which inner loops the native scan runs on this CPU ("avx2+fma", "baseline"), or
    "not built"."""
    native = _native()
    return "not built" if native is None else str(native.KERNELS)


def native_scanner(detector: Any) -> HogScanner | None:
    """A native scanner with ``detector``'s weights (a dlib ``fhog_object_detector``), or None
    where the native module or the detector's format is not there: dlib scans then."""
    native = _native()
    if native is None:
        return None
    try:
        with tempfile.TemporaryDirectory(prefix="scanpixd-hog-") as tmp:
            path = Path(tmp) / "detector.svm"
            detector.save(str(path))
            data = path.read_bytes()
    except (OSError, RuntimeError) as exc:  # no room in the temporary folder, say
        log.warning("could not read dlib's face detector for the native scan (%s): dlib scans faces", exc)
        return None
    try:
        return HogScanner(SavedDetector.parse(data), native)
    except DetectorFormatError as exc:
        log.warning("dlib's face detector is in a format the native scan does not know (%s): "
                    "dlib scans faces", exc)
        return None



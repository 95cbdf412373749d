"""Face detection, landmarks and 128-d identity encodings with dlib.

The model files are the ones the ``face_recognition`` project trained and ships in the
``face_recognition_models`` package (HOG needs none; the CNN detector, the 68-point
shape predictor and the ResNet encoder are ``.dat`` files).  We use dlib directly: the
``face_recognition`` package itself pins a source-built ``dlib`` and adds nothing we need.
``face_recognition_models`` is located without importing it, because its ``__init__``
needs ``pkg_resources``, which current setuptools no longer ships.

Detection is the costly part, and its cost grows with the area scanned.  The HOG detector
scans a greyscale picture (comparing the three colour channels' gradients costs ~40 %
more time and found no other face in the corpora), enlarged to ``faces.max_size`` when it
is smaller, to at most twice its size counting ``faces.upsample`` doublings, so a small
picture is searched as closely as with one doubling.  Landmarks and encodings are computed
on the picture itself, never on the enlarged copy.  Several threads may detect at once:
HOG runs outside the GIL.  The HOG scan is our native one (:mod:`scanpixd.models.hog`: dlib's
detector and arithmetic, under 60 % of dlib's CPU) where it is built, else dlib's own, on a
detector per thread.

Encodings are dlib's: dlib cuts the face chips, and :mod:`scanpixd.models.face_resnet`
runs dlib's ResNet on them in numpy, from the same model file, for ~1/6 of the CPU that
dlib's own build without BLAS takes, and in several threads at once.  Should that module
not recognise the file, dlib's own encoder does the work, behind a lock.

Each detected face carries, besides its encoding, the cues a best-shot picker wants:
eye aspect ratio (open eyes), mouth-to-jaw width ratio (smile), Laplacian variance of
the face crop (sharpness) and the face's share of the picture (size).  Boxes are
fractions of the picture, so they hold for the original and for every thumbnail.
"""

from __future__ import annotations

import importlib.util
import logging
import math
import threading
from collections.abc import Iterator
from contextlib import AbstractContextManager, contextmanager, nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from scanpixd.config import FaceSettings
from scanpixd.errors import ModelUnavailable
from scanpixd.models import face_resnet, hog
from scanpixd.models.base import LazyModel

log = logging.getLogger(__name__)

#: Identity of the encoder: encodings are comparable only between equal ids.
ENCODER_ID = "dlib-resnet-v1"

_LANDMARKS_FILE = "shape_predictor_68_face_landmarks.dat"
_ENCODER_FILE = "dlib_face_recognition_resnet_model_v1.dat"
_CNN_FILE = "mmod_human_face_detector.dat"

#: Eye aspect ratio under which an eye counts as closed (Soukupová & Čech, 2016).
EYES_CLOSED_BELOW = 0.2
#: Mouth-to-jaw width ratio over which a face counts as smiling (measured on the corpus).
SMILE_ABOVE = 0.45

_SHARPNESS_SIDE = 128  # face crops are scaled to this square before measuring sharpness


@dataclass
class Face:
    """One face found in a picture.

    ``box`` is ``[top, right, bottom, left]`` as fractions (0..1) of the picture's height
    and width; ``score`` the detector's confidence (HOG: SVM margin, CNN: MMOD confidence).
    """

    box: list[float]
    score: float
    encoding: np.ndarray
    eyes_open: float
    smile: float
    sharpness: float
    size: float

    def quality(self) -> float:
        """How good a shot of this person the face is; see :func:`face_quality`."""
        return face_quality(self.eyes_open, self.smile, self.sharpness, self.size)


def face_quality(eyes_open: float, smile: float, sharpness: float, size: float) -> float:
    """How good a shot of a person a face is (higher is better), for picking one.

    Sharpness matters most, then size; closed eyes halve the value, a smile adds a
    little.  Only comparisons between faces of one person are meaningful.  Takes the
    fields a record's face entry stores, so readers of records can rank faces too.
    """
    value = math.log1p(max(sharpness, 0.0)) * (1.0 + math.sqrt(max(size, 0.0)))
    if eyes_open < EYES_CLOSED_BELOW:
        value *= 0.5
    if smile > SMILE_ABOVE:
        value *= 1.1
    return value


@dataclass
class _Loaded:
    detector: Any
    cnn: bool
    predictor: Any  # thread-safe: dlib's shape predictor keeps no state between calls
    encoder: Any  # compute_face_descriptor(pixels, shapes, jitters); may be thread_safe
    shapes: Any  # dlib.full_object_detections, the container the batch encoder takes
    make_detector: Any  # another HOG detector: one instance must not scan in two threads
    rectangle: Any  # dlib.rectangle, for the native scanner's boxes
    scanner: hog.HogScanner | None = None  # the native HOG scan (thread-safe), when built
    spare: list[Any] = field(default_factory=list)  # HOG detectors not in use


def model_directory(configured: str = "") -> Path:
    """Where the ``.dat`` files live: ``faces.model_dir`` or the installed package."""
    if configured:
        return Path(configured).expanduser()
    try:
        spec = importlib.util.find_spec("face_recognition_models")
    except (ImportError, ValueError):
        spec = None
    if spec is None or not spec.submodule_search_locations:
        raise ModelUnavailable(
            "face models not found: install face_recognition_models "
            "or set faces.model_dir to a folder holding its .dat files"
        )
    return Path(next(iter(spec.submodule_search_locations))) / "models"


class FaceModel(LazyModel):
    """dlib face detector + landmarks + encoder, loaded on first use."""

    label = "face"

    def __init__(self, settings: FaceSettings):
        super().__init__(idle_unload=settings.idle_unload)
        self.settings = settings
        self._infer = threading.Lock()  # dlib's encoder and CNN detector keep per-call state
        self._spare = threading.Lock()  # guards the pool of idle HOG detectors
        self._files_present: bool | None = None

    @property
    def model_id(self) -> str:
        """Names the encoder and detector, for the faces stage's version key."""
        return f"{ENCODER_ID}/{self.settings.detector}"

    def can_load(self) -> bool:
        """Cheap: whether dlib and the model files are there, without loading anything.

        Rescans ask this for every folder; loading the models to learn that (seconds, and
        again after every idle unload) would stall the daemon's quick path.
        """
        if self.state == "unavailable":
            return False
        if self._files_present is None:
            try:
                directory = model_directory(self.settings.model_dir)
                present = importlib.util.find_spec("dlib") is not None and all(
                    (directory / name).is_file() for name in self._needed_files())
            except ModelUnavailable:
                present = False
            self._files_present = present
        return self._files_present

    def _needed_files(self) -> list[str]:
        needed = [_LANDMARKS_FILE, _ENCODER_FILE]
        if self.settings.detector == "cnn":
            needed.append(_CNN_FILE)
        return needed

    def _load(self) -> _Loaded:
        try:
            import dlib
        except ImportError as exc:
            raise ModelUnavailable(f"dlib is not installed (pip install dlib-bin): {exc}") from exc
        directory = model_directory(self.settings.model_dir)
        missing = [name for name in self._needed_files() if not (directory / name).is_file()]
        if missing:
            raise ModelUnavailable(f"face model files missing in {directory}: {', '.join(missing)}")
        cnn = self.settings.detector == "cnn"
        detector = (
            dlib.cnn_face_detection_model_v1(str(directory / _CNN_FILE))
            if cnn else dlib.get_frontal_face_detector()
        )
        return _Loaded(
            detector=detector,
            cnn=cnn,
            predictor=dlib.shape_predictor(str(directory / _LANDMARKS_FILE)),
            encoder=_encoder(dlib, directory / _ENCODER_FILE),
            shapes=dlib.full_object_detections,
            make_detector=dlib.get_frontal_face_detector,
            rectangle=dlib.rectangle,
            scanner=None if cnn else hog.native_scanner(detector),
            spare=[] if cnn else [detector],
        )

    def detect(self, image: Image.Image) -> list[Face]:
        """Every face in ``image``, left to right; raises ModelUnavailable without dlib."""
        work = _prepared(image, self.settings.max_size)
        pixels = np.asarray(work, dtype=np.uint8)
        grey = work.convert("L")
        scale = detection_scale(work.size, self.settings.max_size, self.settings.upsample)
        with self.session() as model:
            found = self._find(model, work, grey, scale)
            if not found:
                return []
            shapes = model.shapes()
            for rect, _ in found:
                shapes.append(model.predictor(pixels, rect))
            with self._encoding(model.encoder):
                encodings = model.encoder.compute_face_descriptor(pixels, shapes, 1)
        gray = np.asarray(grey, dtype=np.float32)
        faces = [
            _face(rect, score, shape, encoding, gray)
            for (rect, score), shape, encoding in zip(found, shapes, encodings, strict=True)
        ]
        faces.sort(key=lambda f: (round(f.box[3], 3), f.box[0]))
        return faces

    def _find(self, model: _Loaded, work: Image.Image, grey: Image.Image,
              scale: float) -> list[tuple[Any, float]]:
        """Face rectangles in ``work``'s pixel coordinates, with the detector's score."""
        upsample = self.settings.upsample
        if model.cnn:
            with self._infer:
                found = model.detector(np.asarray(_enlarged(work, scale)), upsample)
            pairs = [(d.rect, float(d.confidence)) for d in found]
        elif model.scanner is not None and upsample <= hog.MAX_UPSAMPLE:
            boxes, scores, _ = model.scanner.run(np.asarray(_enlarged(grey, scale)), upsample, 0.0)
            pairs = [(model.rectangle(*box), s) for box, s in zip(boxes, scores, strict=True)]
        else:
            with self._hog(model) as detector:
                rects, scores, _ = detector.run(np.asarray(_enlarged(grey, scale)), upsample, 0.0)
            pairs = [(r, float(s)) for r, s in zip(rects, scores, strict=True)]
        return pairs if scale == 1.0 else [(_shrunk(r, scale), s) for r, s in pairs]

    def _encoding(self, encoder: Any) -> AbstractContextManager[Any]:
        """The lock an encoder needs: none for one that says it is thread-safe."""
        return nullcontext() if getattr(encoder, "thread_safe", False) else self._infer

    @contextmanager
    def _hog(self, model: _Loaded) -> Iterator[Any]:
        """A HOG detector for this thread alone (built once per extra concurrent caller)."""
        with self._spare:
            detector = model.spare.pop() if model.spare else None
        if detector is None:
            detector = model.make_detector()
        try:
            yield detector
        finally:
            with self._spare:
                model.spare.append(detector)


def _encoder(dlib: Any, path: Path) -> Any:
    """The numpy encoder for the model file at ``path``, or dlib's own if it can't read it."""
    try:
        net = face_resnet.load(path)
    except Exception as exc:  # whatever goes wrong here, dlib's encoder still gives encodings
        log.warning("face encodings fall back to dlib's slower encoder: %s: %s", path.name, exc)
        return dlib.face_recognition_model_v1(str(path))
    return face_resnet.ChipEncoder(net, dlib.get_face_chips)


def detection_scale(size: tuple[int, int], max_size: int, upsample: int) -> float:
    """How much a picture of ``size`` is enlarged before detection.

    Up to ``max_size`` on the long side, and to at most twice its size in all counting
    the detector's own doublings: with ``upsample`` 0 and ``max_size`` 1536, a 1024 px
    thumbnail is scanned at 1536 px (faces down to ~53 px, at about half the cost of one
    doubling), while a 640 px picture is doubled as before.
    """
    longest = max(size)
    if not max_size or longest >= max_size:
        return 1.0
    return min(max_size / longest, max(1.0, 2.0 ** (1 - upsample)))


def _prepared(image: Image.Image, max_size: int) -> Image.Image:
    work = image if image.mode == "RGB" else image.convert("RGB")
    longest = max(work.size)
    if max_size and longest > max_size:
        scale = max_size / longest
        size = (max(1, round(work.width * scale)), max(1, round(work.height * scale)))
        work = work.resize(size, Image.Resampling.BILINEAR)
    return work


def _enlarged(image: Image.Image, scale: float) -> Image.Image:
    if scale == 1.0:
        return image
    size = (max(1, round(image.width * scale)), max(1, round(image.height * scale)))
    return image.resize(size, Image.Resampling.BILINEAR)


def _shrunk(rect: Any, scale: float) -> Any:
    """A rectangle found on the enlarged picture, in the picture's own coordinates."""
    return type(rect)(round(rect.left() / scale), round(rect.top() / scale),
                      round(rect.right() / scale), round(rect.bottom() / scale))


def _face(rect: Any, score: float, shape: Any, encoding: Any, gray: np.ndarray) -> Face:
    height, width = gray.shape
    top, bottom = _clamp(rect.top(), height), _clamp(rect.bottom(), height)
    left, right = _clamp(rect.left(), width), _clamp(rect.right(), width)
    points = np.array([(p.x, p.y) for p in shape.parts()], dtype=np.float64)
    return Face(
        box=[top / height, right / width, bottom / height, left / width],
        score=score,
        encoding=np.array(encoding, dtype=np.float32),
        eyes_open=eye_aspect_ratio(points),
        smile=smile_ratio(points),
        sharpness=sharpness(gray[top:bottom, left:right]),
        size=((bottom - top) * (right - left)) / float(height * width),
    )


def _clamp(value: int, limit: int) -> int:
    return min(max(int(value), 0), limit)


def eye_aspect_ratio(points: np.ndarray) -> float:
    """Mean eye aspect ratio of both eyes from 68 landmarks (~0.3 open, < 0.2 closed)."""

    def one(eye: np.ndarray) -> float:
        vertical = np.linalg.norm(eye[1] - eye[5]) + np.linalg.norm(eye[2] - eye[4])
        horizontal = np.linalg.norm(eye[0] - eye[3])
        return float(vertical / (2.0 * horizontal)) if horizontal > 0 else 0.0

    return (one(points[36:42]) + one(points[42:48])) / 2.0


def smile_ratio(points: np.ndarray) -> float:
    """Mouth width over jaw width from 68 landmarks: a smile widens the mouth."""
    jaw = float(np.linalg.norm(points[16] - points[0]))
    mouth = float(np.linalg.norm(points[54] - points[48]))
    return mouth / jaw if jaw > 0 else 0.0


def sharpness(crop: np.ndarray) -> float:
    """Variance of the Laplacian of a grey face crop scaled to a fixed square."""
    if crop.size == 0 or min(crop.shape) < 3:
        return 0.0
    square = Image.fromarray(crop.astype(np.uint8)).resize(
        (_SHARPNESS_SIDE, _SHARPNESS_SIDE), Image.Resampling.BILINEAR
    )
    a = np.asarray(square, dtype=np.float32)
    lap = a[1:-1, :-2] + a[1:-1, 2:] + a[:-2, 1:-1] + a[2:, 1:-1] - 4.0 * a[1:-1, 1:-1]
    return float(lap.var())

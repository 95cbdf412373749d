"""Faces: how small a face each detection setting finds, what it finds wrongly, what it costs.

Run ``python -m benchmarks.bench_faces_size`` (about 2.5 minutes on two busy cores).
``--variants 1`` pastes sharp faces only (half the composites), ``--variants 3`` adds
mirrored ones; ``--identity`` (about a minute more) also tells whether the small faces
found are still good for grouping people; ``--save DIR`` also writes every test picture
with the true faces and each setting's detections drawn on it, and the cut-out heads, for
looking at.  Needs the shared corpora beside the project; they are read by path, nothing
is copied.

Settings compared, as ``(faces.upsample, faces.max_size)``: ``(1, 1024)``, the default
(the 1024 px working picture doubled: nominal smallest face ~40 px), and ``(0, 1536)``,
``(0, 1792)``, ``(0, 2048)`` (the picture enlarged before one scan: ~53, ~46, ~40 px).
Every picture goes through :meth:`FaceModel.detect` as the faces stage passes the working
picture; one loaded model is used and only its settings change between calls.

* **Truth.** Each people photo of the corpora is scanned with one doubling at up to
  2048 px (a smaller original enlarged up to twice first): twice the reach of every
  setting compared.  Detections scoring at least 0.1 are its faces (all looked at; the
  one below, 0.02, is a stone).
* **Composite pictures.** Faces of at least 120 px scoring at least 0.5 in those originals
  are cut out with the head around them (a feathered rectangle: no hard paste edge),
  scaled down so the face box is N px wide, N in 25..120, and pasted, 10 to a picture, at
  random non-overlapping places on real landscape and street photos without people,
  scaled to 1024 px.  Each face at each size once sharp and once a little soft (0.8 px
  Gaussian blur once scaled: focus, motion, a phone's denoising).  The pictures are
  JPEG-compressed at quality 90 and decoded again.  A face counts as found when a
  detection overlaps its box with IoU > 0.3; other detections are false positives.
  The encoder is stubbed out for these (which faces are found does not depend on it).
* **Backgrounds alone** (the same photos without faces): every detection is false.
* **Real photos**: the people photos at the size the faces stage sees (at most 1024 px);
  which of their true faces each setting finds.  A picture of at most 768 px is scanned
  at twice its size by every setting, so only larger ones can differ.

Printed: the load average, CPU per photo per setting (``time.process_time`` around each
``detect``; the settings take turns on every picture), recall per face size and variant,
false positives by detection size (each one listed), the real photos' faces and, with
``--identity``, per face size: the encoding distance to the same face at 120 px, and how
often the nearest 120 px face of another photo is the same person within
``faces.threshold``.
"""

from __future__ import annotations

import argparse
import hashlib
import io
import os
import random
import statistics
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFilter, ImageOps

from scanpixd.config import FaceSettings
from scanpixd.models.faces import FaceModel
from tests.helpers_faces import CORPORA, TRUTH, working_image

Setting = tuple[int, int]  # (faces.upsample, faces.max_size)
Box = tuple[float, float, float, float]  # left, top, right, bottom in pixels

SETTINGS: tuple[Setting, ...] = ((1, 1024), (0, 1536), (0, 1792), (0, 2048))
REFERENCE: Setting = (1, 2048)  # truth: one doubling on the original at up to 2048 px,
REFERENCE_ENLARGE = 2.0  # a smaller original enlarged up to this much first (2x any setting)
SIZES = (25, 30, 35, 40, 45, 50, 55, 60, 70, 90, 120)  # face box widths in a 1024 px picture
TRUTH_SCORE = 0.1  # reference detections this sure are faces (under it: stones, looked at)
SOURCE_SCORE = 0.5  # faces cut out for compositing are surer still
SOURCE_WIDTH = 120  # px in the original: pasted faces are only ever scaled down
MATCH_IOU = 0.3
QUALITY = 90
PER_PICTURE = 10  # faces pasted into one composite
GAP = 8  # px kept free around every pasted head
SEED = 20240607
# head region around the face box, in face widths: left/right, above, below
SIDE, ABOVE, BELOW = 0.5, 0.6, 0.5
MIN_MARGIN = 0.3  # a face nearer the original's edge than this (left, right, top) is not cut

#: Corpus photos with people in them (one of each content: resized copies left out).
PEOPLE = tuple(f"face_recognition/{rel}" for rel in (
    "examples/obama.jpg", "examples/obama2.jpg", "examples/obama-1080p.jpg",
    "examples/obama_small.jpg", "examples/biden.jpg", "examples/two_people.jpg",
    "examples/alex-lacamoire.png", "examples/lin-manuel-miranda.png",
    "examples/knn_examples/train/alex_lacamoire/img1.jpg",
    "examples/knn_examples/train/biden/biden2.jpg",
    "examples/knn_examples/train/kit_harington/john1.jpeg",
    "examples/knn_examples/train/kit_harington/john2.jpeg",
    "examples/knn_examples/train/rose_leslie/img1.jpg",
    "examples/knn_examples/train/rose_leslie/img2.jpg",
    "examples/knn_examples/test/obama1.jpg",
    "examples/knn_examples/test/alex_lacamoire1.jpg",
    "examples/knn_examples/test/johnsnow_test1.jpg",
    "examples/knn_examples/test/kit_with_rose.jpg",
    "examples/knn_examples/test/obama_and_biden.jpg",
    "tests/test_images/obama3.jpg",
)) + (
    "exif-samples/jpg/exif-org/canon-ixus.jpg",
    "exif-samples/jpg/exif-org/kodak-dc210.jpg",
    "exif-samples/jpg/exif-org/sony-cybershot.jpg",
    "exif-samples/jpg/exif-org/sony-d700.jpg",
    "exif-samples/jpg/invalid/image00971.jpg",
    "exif-samples/jpg/gps/DSCN0025.jpg",
    "metadata-extractor-images/jpg/Canon EOS 30D (4).jpg",
    "metadata-extractor-images/jpg/Kodak Z1012 IS.jpg",
    "metadata-extractor-images/jpg/Samsung GT-I9000 (Galaxy S).jpg",
)

#: Landscapes, streets and textures without people (looked at), all over 1024 px.
BACKGROUNDS = (
    "exif-samples/jpg/tests/30-type_error.jpg",
    "exif-samples/jpg/tests/11-tests.jpg",
    "exif-samples/jpg/tests/36-memory_error.jpg",
    "exif-samples/jpg/tests/87_OSError.jpg",
    "exif-samples/jpg/Reconyx_HC500_Hyperfire.jpg",
    "exif-samples/jpg/hdr/iphone_hdr_NO.jpg",
    "metadata-extractor-images/jpg/Samsung S730.jpg",
    "metadata-extractor-images/jpg/Samsung SM-J327T1.jpg",
    "metadata-extractor-images/jpg/Nikon D40.jpg",
    "metadata-extractor-images/jpg/Samsung SM-N900A (Galaxy Note 3).jpg",
    "metadata-extractor-images/jpg/Issue 308.jpg",
    "metadata-extractor-images/jpg/Olympus FE230-X790.jpg",
    "metadata-extractor-images/jpg/Oppo R7 Plus.jpg",
    "metadata-extractor-images/jpg/Panasonic DMC-LX3 (Lumix).jpg",
    "metadata-extractor-images/webp/Nikon Coolpix P7000.webp",
)


@dataclass
class Source:
    """A true face of an original photo, to be cut out with its head."""

    name: str
    image: Image.Image  # the original, upright, RGB
    box: Box
    score: float
    person: str | None  # who it is, where the face corpus's truth says


@dataclass
class Picture:
    """One picture every setting is run on, with its true faces (pixel boxes)."""

    kind: str  # "composite", "background" or "real"
    name: str
    image: Image.Image
    truth: list[Box] = field(default_factory=list)
    scores: list[float] = field(default_factory=list)  # real photos: the reference's
    sizes: list[int] = field(default_factory=list)  # composites: each face's target width
    variants: list[str] = field(default_factory=list)  # composites: each face's variant
    people: list[str] = field(default_factory=list)  # composites: each face's source
    found: dict[Setting, list[tuple[Box, float]]] = field(default_factory=dict)
    cpu: dict[Setting, float] = field(default_factory=dict)


# -- pictures ----------------------------------------------------------------------------
def original(rel: str) -> Image.Image:
    with Image.open(CORPORA / rel) as im:
        return ImageOps.exif_transpose(im).convert("RGB")


def boxes(model: FaceModel, image: Image.Image, setting: Setting) -> list[tuple[Box, float]]:
    """Detections in ``image``'s pixels, through the faces stage's own call."""
    model.settings = FaceSettings(idle_unload=0, upsample=setting[0], max_size=setting[1])
    width, height = image.size
    return [((f.box[3] * width, f.box[0] * height, f.box[1] * width, f.box[2] * height),
             f.score) for f in model.detect(image)]


def truth(model: FaceModel) -> tuple[list[Picture], list[Source]]:
    """The real photos with their true faces, and the faces fit to cut out."""
    real, sources, seen = [], [], set()
    for rel in PEOPLE:
        digest = hashlib.blake2b((CORPORA / rel).read_bytes(), digest_size=16).digest()
        if digest in seen:
            continue
        seen.add(digest)
        full = original(rel)
        found = [(b, s) for b, s in reference(model, full) if s >= TRUTH_SCORE]
        work = working_image(CORPORA / rel)
        ratio = work.width / full.width
        real.append(Picture("real", rel, work, [_scaled(b, ratio) for b, _ in found],
                            [s for _, s in found]))
        names = TRUTH.get(rel.removeprefix("face_recognition/"), [])
        people = names if len(names) == len(found) else [None] * len(found)
        sources += [Source(f"{_short(rel)}#{i}", full, b, s, people[i])
                    for i, (b, s) in enumerate(found) if _cuttable(full, b, s)]
    return real, sources


def reference(model: FaceModel, full: Image.Image) -> list[tuple[Box, float]]:
    """Faces of an original, scanned with twice the reach of every setting compared.

    One doubling on the original at up to 2048 px, a smaller original enlarged first (the
    settings compared scan a picture of at most 768 px at twice its size, as this does
    without the enlargement).  Boxes are in the original's pixels.
    """
    scale = min(REFERENCE_ENLARGE, REFERENCE[1] / max(full.size))
    if scale <= 1.0:
        return boxes(model, full, REFERENCE)
    size = (round(full.width * scale), round(full.height * scale))
    found = boxes(model, full.resize(size, Image.Resampling.BICUBIC), REFERENCE)
    return [(_scaled(b, full.width / size[0]), s) for b, s in found]


def _scaled(box: Box, ratio: float) -> Box:
    return box[0] * ratio, box[1] * ratio, box[2] * ratio, box[3] * ratio


def _short(rel: str) -> str:
    """A file name for ``rel``: its folder and stem."""
    path = Path(rel)
    return f"{path.parent.name}-{path.stem}" if path.parent.name else path.stem


def _cuttable(image: Image.Image, box: Box, score: float) -> bool:
    left, top, right, _ = box
    width = right - left
    margin = MIN_MARGIN * width
    return (score >= SOURCE_SCORE and width >= SOURCE_WIDTH and left >= margin
            and top >= margin and image.width - right >= margin)


VARIANTS = ("sharp", "soft", "mirrored")
SOFT_BLUR = 0.8  # px of Gaussian blur on a "soft" face once scaled: focus, motion, denoising


@dataclass
class Head:
    """A head ready to paste: the crop, its opacity (0..1) and the face box in the crop."""

    crop: Image.Image
    alpha: np.ndarray
    face: Box
    width: int
    variant: str
    source: str  # the source face's name


def head(source: Source, width: int, variant: str) -> Head:
    """The head around ``source``'s face scaled so the face is ``width`` px wide.

    ``variant``: "sharp" as scaled, "soft" blurred a little, "mirrored" flipped.
    """
    left, top, right, bottom = source.box
    w = right - left
    region = (max(0.0, left - SIDE * w), max(0.0, top - ABOVE * w),
              min(float(source.image.width), right + SIDE * w),
              min(float(source.image.height), bottom + BELOW * w))
    scale = width / w
    size = (round((region[2] - region[0]) * scale), round((region[3] - region[1]) * scale))
    crop = source.image.resize(size, Image.Resampling.LANCZOS, box=region)
    face = ((left - region[0]) * scale, (top - region[1]) * scale,
            (right - region[0]) * scale, (bottom - region[1]) * scale)
    if variant == "mirrored":
        crop = ImageOps.mirror(crop)
        face = (size[0] - face[2], face[1], size[0] - face[0], face[3])
    elif variant == "soft":
        crop = crop.filter(ImageFilter.GaussianBlur(SOFT_BLUR))
    return Head(crop, _feather(size, 0.15 * width), face, width, variant, source.name)


def _feather(size: tuple[int, int], ramp: float) -> np.ndarray:
    xs = np.arange(size[0]) + 0.5
    ys = np.arange(size[1]) + 0.5
    dx = np.minimum(xs, size[0] - xs)[None, :]
    dy = np.minimum(ys, size[1] - ys)[:, None]
    return np.clip(np.minimum(dx, dy) / max(ramp, 1.0), 0.0, 1.0)[..., None]


def jpeg(image: Image.Image) -> Image.Image:
    """``image`` after a round trip through JPEG at camera quality."""
    buffer = io.BytesIO()
    image.save(buffer, "JPEG", quality=QUALITY)
    buffer.seek(0)
    with Image.open(buffer) as im:
        return im.convert("RGB")


def composites(sources: list[Source], backgrounds: list[Image.Image],
               variants: int) -> list[Picture]:
    """Every source face at every size in each variant, pasted onto the backgrounds."""
    rng = random.Random(SEED)
    pending = [head(s, n, v) for s in sources for v in VARIANTS[:variants] for n in SIZES]
    rng.shuffle(pending)
    pictures: list[Picture] = []
    while pending:
        background = backgrounds[len(pictures) % len(backgrounds)]
        picture, pending = _compose(background, pending, rng, len(pictures))
        pictures.append(picture)
    return pictures


def _compose(background: Image.Image, pending: list[Head], rng: random.Random,
             index: int) -> tuple[Picture, list[Head]]:
    canvas = np.asarray(background, dtype=np.float32).copy()
    taken: list[Box] = []
    picture = Picture("composite", f"composite-{index:02d}", background)
    left_over = []
    for item in pending:
        crop, alpha, face = item.crop, item.alpha, item.face
        spot = None if len(taken) >= PER_PICTURE else _spot(background.size, crop.size,
                                                            taken, rng)
        if spot is None:
            left_over.append(item)
            continue
        x, y = spot
        taken.append((x - GAP, y - GAP, x + crop.width + GAP, y + crop.height + GAP))
        area = canvas[y:y + crop.height, x:x + crop.width]
        area[:] = area * (1 - alpha) + np.asarray(crop, dtype=np.float32) * alpha
        picture.truth.append((face[0] + x, face[1] + y, face[2] + x, face[3] + y))
        picture.sizes.append(item.width)
        picture.variants.append(item.variant)
        picture.people.append(item.source)
    if not taken:
        raise RuntimeError("a head larger than every background")
    picture.image = jpeg(Image.fromarray(canvas.round().astype(np.uint8)))
    return picture, left_over


def _spot(room: tuple[int, int], size: tuple[int, int], taken: list[Box],
          rng: random.Random) -> tuple[int, int] | None:
    for _ in range(200):
        x = rng.randrange(0, room[0] - size[0] + 1) if room[0] > size[0] else -1
        y = rng.randrange(0, room[1] - size[1] + 1) if room[1] > size[1] else -1
        if x < 0 or y < 0:
            return None
        box = (x, y, x + size[0], y + size[1])
        if all(_iou(box, other) == 0.0 for other in taken):
            return x, y
    return None


# -- measuring ---------------------------------------------------------------------------
def measure(model: FaceModel, pictures: list[Picture]) -> None:
    """Every setting on every picture, taking turns, with the CPU time of each call."""
    for index, picture in enumerate(pictures):
        turn = index % len(SETTINGS)
        for setting in SETTINGS[turn:] + SETTINGS[:turn]:
            start = time.process_time()
            picture.found[setting] = boxes(model, picture.image, setting)
            picture.cpu[setting] = time.process_time() - start


class _NoEncoder:
    """Stands in for dlib's encoder: which faces are found does not depend on it."""

    def compute_face_descriptor(self, pixels: np.ndarray, shapes: list, jitters: int) -> list:
        return [np.zeros(128)] * len(shapes)


@contextmanager
def without_encodings(model: FaceModel) -> Iterator[None]:
    """``model`` with its encoder stubbed out (10 faces a picture would cost ~1 s more)."""
    loaded = model.load()
    encoder, loaded.encoder = loaded.encoder, _NoEncoder()
    try:
        yield
    finally:
        loaded.encoder = encoder


def _iou(a: Box, b: Box) -> float:
    width = min(a[2], b[2]) - max(a[0], b[0])
    height = min(a[3], b[3]) - max(a[1], b[1])
    if width <= 0 or height <= 0:
        return 0.0
    inter = width * height
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union


def match(truth_boxes: list[Box], found: list[tuple[Box, float]]) -> tuple[list[int], list[int]]:
    """For each true face the detection matched to it (-1: missed), and unmatched detections.

    Pairs are taken greedily by overlap, each detection and face at most once.
    """
    pairs = sorted(((_iou(t, d), i, j) for i, t in enumerate(truth_boxes)
                    for j, (d, _) in enumerate(found)), reverse=True)
    matched = [-1] * len(truth_boxes)
    used: set[int] = set()
    for overlap, i, j in pairs:
        if overlap <= MATCH_IOU:
            break
        if matched[i] < 0 and j not in used:
            matched[i] = j
            used.add(j)
    return matched, [j for j in range(len(found)) if j not in used]


# -- report ------------------------------------------------------------------------------
def _label(setting: Setting) -> str:
    return f"{setting[0]}/{setting[1]}"


def report_cpu(pictures: list[Picture]) -> None:
    print("\nCPU ms per photo (FaceModel.detect: HOG, landmarks, encodings; mean / median;"
          " composites without encodings)")
    print(f"  {'pictures':24s}" + "".join(f"{_label(s):>17s}" for s in SETTINGS))
    groups = {
        "background": [p for p in pictures if p.kind == "background"],
        "real": [p for p in pictures if p.kind == "real"],
        "real over 768 px": [p for p in pictures if p.kind == "real" and max(p.image.size) > 768],
        "composite": [p for p in pictures if p.kind == "composite"],
    }
    for kind, group in groups.items():
        cells = []
        for setting in SETTINGS:
            ms = [1000 * p.cpu[setting] for p in group]
            cells.append(f"{statistics.mean(ms):7.0f} /{statistics.median(ms):5.0f}   ")
        print(f"  {kind + f' ({len(group)})':24s}" + "".join(f"{c:>17s}" for c in cells))
        base = sum(p.cpu[SETTINGS[0]] for p in group)
        print(f"  {'  vs ' + _label(SETTINGS[0]):24s}" + "".join(
            f"{sum(p.cpu[s] for p in group) / base:>16.2f}x" for s in SETTINGS))


def report_recall(pictures: list[Picture]) -> None:
    group = [p for p in pictures if p.kind == "composite"]
    # (size, variant, setting) -> score of each pasted face, None when missed
    outcome: dict[tuple[int, str, Setting], list[float | None]] = {}
    for p in group:
        for setting in SETTINGS:
            matched, _ = match(p.truth, p.found[setting])
            for size, variant, j in zip(p.sizes, p.variants, matched, strict=True):
                found = p.found[setting][j][1] if j >= 0 else None
                outcome.setdefault((size, variant, setting), []).append(found)
    print(f"\nRecall by face size (composites: {len(group)} pictures, "
          f"{sum(len(p.truth) for p in group)} faces; found/pasted, mean score of found)")
    variants = [v for v in VARIANTS if any(key[1] == v for key in outcome)]
    for chosen in [[v] for v in variants] + ([variants] if len(variants) > 1 else []):
        print(f"  {' + '.join(chosen)} faces")
        print(f"  {'face px':>8s} {'% of 1024':>9s}"
              + "".join(f"{_label(s):>20s}" for s in SETTINGS))
        for size in SIZES:
            cells = [_recall_cell([x for v in chosen for x in outcome[size, v, setting]])
                     for setting in SETTINGS]
            print(f"  {size:8d} {100 * size / 1024:8.1f}%" + "".join(f"{c:>20s}" for c in cells))


def _recall_cell(scores: list[float | None]) -> str:
    hits = [x for x in scores if x is not None]
    mean = statistics.mean(hits) if hits else 0.0
    return f"{len(hits):3d}/{len(scores):<3d} {100 * len(hits) / len(scores):4.0f}% {mean:4.2f}"


FP_BINS = ((0, 45), (45, 60), (60, 90), (90, 10_000))


def report_false(pictures: list[Picture]) -> None:
    print("\nFalse positives: detections on no pasted or true face "
          "(count; by detection width in px; scoring >= 0.5)")
    header = "".join(f"{lo}-{hi if hi < 10_000 else ''}".rjust(8) for lo, hi in FP_BINS)
    print(f"  {'pictures':14s} {'setting':>9s} {'total':>6s}{header} {'>=0.5':>6s}")
    for kind in ("background", "composite"):
        group = [p for p in pictures if p.kind == kind]
        for setting in SETTINGS:
            wrong = [p.found[setting][j] for p in group
                     for j in match(p.truth, p.found[setting])[1]]
            widths = [b[2] - b[0] for b, _ in wrong]
            bins = "".join(f"{sum(lo <= w < hi for w in widths):8d}" for lo, hi in FP_BINS)
            sure = sum(s >= 0.5 for _, s in wrong)
            print(f"  {kind + f' ({len(group)})':14s} {_label(setting):>9s} "
                  f"{len(wrong):6d}{bins} {sure:6d}")
    listed = [(p, setting, p.found[setting][j]) for p in pictures if p.kind != "real"
              for setting in SETTINGS for j in match(p.truth, p.found[setting])[1]]
    for p, setting, (box, score) in listed[:12]:
        print(f"    {p.name} {_label(setting)}: {box[2] - box[0]:.0f} px at "
              f"({box[0]:.0f}, {box[1]:.0f}), score {score:.2f}")
    comp = [p for p in pictures if p.kind == "composite"]
    print("  precision on composites (found faces / all detections): " + ", ".join(
        f"{_label(s)} {_precision(comp, s):.3f}" for s in SETTINGS))


def _precision(group: list[Picture], setting: Setting) -> float:
    detections = sum(len(p.found[setting]) for p in group)
    hits = sum(j >= 0 for p in group for j in match(p.truth, p.found[setting])[0])
    return hits / max(detections, 1)


def report_real(pictures: list[Picture]) -> None:
    group = [p for p in pictures if p.kind == "real"]
    print(f"\nReal photos at the faces stage's size ({len(group)}): true faces (the reference's "
          "detections) by width in px in that picture and score; Y found, - missed;\n"
          "  +N detections matching none of them (not judged: look with --save)")
    print(f"  {'photo':40s} {'size':>9s}  {'faces (px:score)':26s}"
          + "".join(f"{_label(s):>12s}" for s in SETTINGS))
    totals = dict.fromkeys(SETTINGS, 0)
    for p in group:
        widths = ",".join(f"{b[2] - b[0]:.0f}:{s:.2f}"
                          for b, s in zip(p.truth, p.scores, strict=True)) or "-"
        cells = []
        for setting in SETTINGS:
            matched, extra = match(p.truth, p.found[setting])
            totals[setting] += sum(j >= 0 for j in matched)
            marks = "".join("Y" if j >= 0 else "-" for j in matched) or "."
            cells.append(marks + (f" +{len(extra)}" if extra else ""))
        name = p.name if len(p.name) <= 40 else "..." + p.name[-37:]
        size = f"{p.image.width}x{p.image.height}"
        print(f"  {name:40s} {size:>9s}  {widths:26s}" + "".join(f"{c:>12s}" for c in cells))
    faces = sum(len(p.truth) for p in group)
    print(f"  {'found of ' + str(faces) + ' true faces':78s}"
          + "".join(f"{totals[s]:>12d}" for s in SETTINGS))


def report_identity(model: FaceModel, pictures: list[Picture], sources: list[Source]) -> None:
    """Whether a small face, once found, is still good for grouping people.

    Encodings are computed on the working picture, so a small face is encoded from few
    pixels.  Compared with the same face sharp at the largest size (the loss from size
    alone: same photo, same pose), and with the sharp largest faces of other photos (does
    its nearest one show the same person, closer than ``faces.threshold``?).  Uses the
    default setting's detections; faces it misses are left out.
    """
    codes = _encodings(model, [p for p in pictures if p.kind == "composite"])
    person = {s.name: s.person for s in sources}
    big = {name: code for (name, variant, size), code in codes.items()
           if variant == "sharp" and size == SIZES[-1]}
    threshold = FaceSettings().threshold
    print(f"\nIdentity of found faces (default setting; threshold {threshold}): median distance "
          f"to the same face sharp at {SIZES[-1]} px, share under the threshold; share whose "
          f"nearest {SIZES[-1]} px face of another photo is the same person and under it "
          "(faces found / of them with the person in another photo)")
    variants = sorted({key[1] for key in codes}, key=VARIANTS.index)
    print(f"  {'face px':>8s}" + "".join(f"{v:>26s}" for v in variants))
    for size in SIZES:
        cells = []
        for variant in variants:
            mine = {name: code for (name, v, n), code in codes.items()
                    if v == variant and n == size and name in big}
            own = [float(np.linalg.norm(code - big[name])) for name, code in mine.items()]
            joins = [_joins(name, code, big, person, threshold) for name, code in mine.items()]
            right = [j for j in joins if j is not None]
            cells.append(_identity_cell(own, right, threshold) if right else "-")
        print(f"  {size:8d}" + "".join(f"{c:>26s}" for c in cells))


def _identity_cell(own: list[float], right: list[float], threshold: float) -> str:
    return (f"{statistics.median(own):.2f} {_pct(own, threshold)} "
            f"{100 * statistics.mean(right):3.0f}% ({len(own)}/{len(right)})")


def _encodings(model: FaceModel, group: list[Picture]) -> dict[tuple[str, str, int], np.ndarray]:
    """(source, variant, size) -> encoding of each pasted face the default setting finds."""
    model.settings = FaceSettings(idle_unload=0)
    codes = {}
    for p in group:
        faces = model.detect(p.image)
        width, height = p.image.size
        found = [((f.box[3] * width, f.box[0] * height, f.box[1] * width, f.box[2] * height),
                  f.score) for f in faces]
        for i, j in enumerate(match(p.truth, found)[0]):
            if j >= 0:
                codes[p.people[i], p.variants[i], p.sizes[i]] = faces[j].encoding
    return codes


def _pct(distances: list[float], threshold: float) -> str:
    return f"{100 * sum(d < threshold for d in distances) / len(distances):3.0f}%"


def _joins(name: str, code: np.ndarray, big: dict[str, np.ndarray],
           person: dict[str, str | None], threshold: float) -> float | None:
    """1.0 when the nearest large face of another photo is the same person, close enough.

    None when nobody knows who it is, or no other photo shows that person.
    """
    photo = name.split("#")[0]
    others = [(float(np.linalg.norm(code - other)), person[key]) for key, other in big.items()
              if key.split("#")[0] != photo and person[key] is not None]
    if person[name] is None or not any(who == person[name] for _, who in others):
        return None
    distance, who = min(others, key=lambda pair: pair[0])
    return float(who == person[name] and distance < threshold)


# -- pictures to look at -----------------------------------------------------------------
COLOURS = ("red", "blue", "orange", "magenta")


def save(pictures: list[Picture], sources: list[Source], folder: Path) -> None:
    """Each picture with true faces (green) and each setting's detections drawn on it."""
    folder.mkdir(parents=True, exist_ok=True)
    for p in pictures:
        image = p.image.copy()
        draw = ImageDraw.Draw(image)
        for k, setting in enumerate(SETTINGS):
            for box, _ in p.found[setting]:
                draw.rectangle([v + k for v in box], outline=COLOURS[k])
        for i, box in enumerate(p.truth):
            draw.rectangle(box, outline="lime")
            flags = "".join("Y" if match([box], p.found[s])[0][0] >= 0 else "-"
                            for s in SETTINGS)
            label = f"{p.sizes[i] if p.sizes else round(box[2] - box[0])} {flags}"
            draw.text((box[0], box[3] + 2), label, fill="lime")
        image.save(folder / f"{p.kind}-{_short(p.name)}.png")
    for s in sources:
        head(s, 120, "sharp").crop.save(folder / f"source-{s.name}.png")
    print(f"\npictures written to {folder} (true faces green; detections: " + ", ".join(
        f"{_label(s)} {c}" for s, c in zip(SETTINGS, COLOURS, strict=True)) + ")")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--variants", type=int, choices=(1, 2, 3), default=2,
                        help="each face sharp (1), also soft (2), also mirrored (3)")
    parser.add_argument("--identity", action="store_true",
                        help="also encode the composites' faces (about a minute more)")
    parser.add_argument("--save", type=Path, help="write the pictures, marked, here")
    args = parser.parse_args()
    if not (CORPORA / "face_recognition").is_dir():
        raise SystemExit(f"the corpora are not at {CORPORA}")
    started, cpu = time.perf_counter(), time.process_time()
    print(f"load average at start: {' '.join(f'{v:.2f}' for v in os.getloadavg())}")
    model = FaceModel(FaceSettings(idle_unload=0))
    model.load()
    real, sources = truth(model)
    backgrounds = [working_image(CORPORA / rel) for rel in BACKGROUNDS]
    plain = [Picture("background", rel, jpeg(bg)) for rel, bg in zip(BACKGROUNDS, backgrounds,
                                                                      strict=True)]
    pasted = composites(sources, backgrounds, args.variants)
    print(f"truth: {sum(len(p.truth) for p in real)} faces in {len(real)} people photos; "
          f"{len(sources)} cut out for compositing ({time.perf_counter() - started:.0f} s)")
    pictures = pasted + plain + real
    with without_encodings(model):
        measure(model, pasted)
    measure(model, plain + real)
    report_cpu(pictures)
    report_recall(pictures)
    report_false(pictures)
    report_real(pictures)
    if args.identity:
        report_identity(model, pictures, sources)
    if args.save:
        save(pictures, sources, args.save)
    print(f"\nload average at end: {' '.join(f'{v:.2f}' for v in os.getloadavg())}; "
          f"{time.perf_counter() - started:.0f} s wall, {time.process_time() - cpu:.0f} s CPU")


if __name__ == "__main__":
    main()

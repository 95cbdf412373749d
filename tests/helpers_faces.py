"""Shared pieces of the faces and people tests: the face corpus, its truth, cached records.

Detection takes a few hundred milliseconds per photo here, so each corpus file is run
through the real faces stage once per test process and its record reused.
"""

from __future__ import annotations

import copy
import functools
import hashlib
import os
from pathlib import Path

import pytest
from PIL import Image, ImageOps

from scanpixd.config import Settings
from scanpixd.pipeline.base import Job, run_stage
from scanpixd.pipeline.faces import FacesStage
from scanpixd.pipeline.services import Services
from scanpixd.record import Record, new_record
from scanpixd.store import FolderStore

CORPORA = Path(__file__).resolve().parents[1].parent / "shared" / "corpora"
FACES = CORPORA / "face_recognition"

#: Who is in each corpus photo, left to right (None: a face nobody is named for).
TRUTH: dict[str, list[str | None]] = {
    "examples/obama.jpg": ["obama"],
    "examples/obama2.jpg": ["obama"],
    "examples/obama_small.jpg": ["obama"],
    "examples/obama-240p.jpg": ["obama"],
    "examples/obama-480p.jpg": ["obama"],
    "examples/obama-720p.jpg": ["obama"],
    "examples/obama-1080p.jpg": ["obama"],
    "examples/biden.jpg": ["biden"],
    "examples/two_people.jpg": ["obama", "biden"],
    "examples/alex-lacamoire.png": ["alex"],
    "examples/lin-manuel-miranda.png": ["lin"],
    "examples/knn_examples/train/obama/obama.jpg": ["obama"],
    "examples/knn_examples/train/obama/obama2.jpg": ["obama"],
    "examples/knn_examples/train/biden/biden.jpg": ["biden"],
    "examples/knn_examples/train/biden/biden2.jpg": ["biden"],
    "examples/knn_examples/train/alex_lacamoire/img1.jpg": ["alex"],
    "examples/knn_examples/train/kit_harington/john1.jpeg": ["kit"],
    "examples/knn_examples/train/kit_harington/john2.jpeg": ["kit"],
    "examples/knn_examples/train/rose_leslie/img1.jpg": ["rose"],
    "examples/knn_examples/train/rose_leslie/img2.jpg": ["rose"],
    "examples/knn_examples/test/obama1.jpg": ["obama"],
    "examples/knn_examples/test/alex_lacamoire1.jpg": ["alex"],
    "examples/knn_examples/test/johnsnow_test1.jpg": ["kit"],
    "examples/knn_examples/test/kit_with_rose.jpg": ["rose", "kit"],
    "examples/knn_examples/test/obama_and_biden.jpg": ["biden", "obama", None],
    "tests/test_images/obama.jpg": ["obama"],
    "tests/test_images/obama2.jpg": ["obama"],
    "tests/test_images/obama3.jpg": ["obama"],
    "tests/test_images/32bit.png": ["obama"],
    "tests/test_images/biden.jpg": ["biden"],
    "tests/test_images/obama_partial_face.jpg": ["obama"],
    "tests/test_images/obama_partial_face2.jpg": ["obama"],
}

CLIP = "examples/short_hamilton_clip.mp4"


def corpus() -> Path:
    """The face corpus, or a skip when the shared corpora are not beside the project."""
    if not FACES.is_dir():
        pytest.skip("the shared corpora are not beside the project")
    return FACES


def content_hash(path: Path) -> str:
    return "b2:" + hashlib.blake2b(path.read_bytes(), digest_size=16).hexdigest()


@functools.cache
def services() -> Services:
    """One set of services (one loaded face model) for the whole test process."""
    settings = Settings()
    settings.faces.enabled = True
    settings.faces.idle_unload = 0.0
    return Services(settings)


def working_image(path: Path) -> Image.Image:
    """What the media stage hands on: upright, RGB, at most 1024 px."""
    with Image.open(path) as im:
        im.draft("RGB", (1024, 1024))
        upright = ImageOps.exif_transpose(im).convert("RGB")
    upright.thumbnail((1024, 1024))
    return upright


_FACES_BY_CONTENT: dict[str, Record] = {}


def faces_record(rel: str) -> Record:
    """The record of a corpus file after the faces stage (a private copy).

    Copies of one picture in the corpus share the faces stage's output, as they would
    share a content hash in a library.
    """
    path = corpus() / rel
    st = path.stat()
    record = new_record(path.name, st.st_size, st.st_mtime_ns, content_hash(path))
    done = _FACES_BY_CONTENT.get(record["hash"])
    if done is None:
        done = _FACES_BY_CONTENT[record["hash"]] = _run_faces(path, copy.deepcopy(record))
    record.update({k: copy.deepcopy(done[k]) for k in ("media", "faces", "stages", "errors")
                   if k in done})
    return record


def _run_faces(path: Path, record: Record) -> Record:
    kind = "video" if path.suffix == ".mp4" else "image"
    record["media"] = {"kind": kind}
    job = Job(path, FolderStore(path.parent, path.parent / ".unused", []), record)
    if kind == "image":
        job.image = working_image(path)
    run_stage(FacesStage(services()), job)
    return record


def library(base: Path, rels: list[str]) -> list[tuple[Path, Record]]:
    """Lay corpus files out as a library under ``base`` (symlinks), with their records.

    Every file gets its own folder named after its corpus path, so copies of one
    picture are distinct files of the same content, as in a real library.
    """
    found = []
    for rel in rels:
        folder = base / Path(rel).parent
        folder.mkdir(parents=True, exist_ok=True)
        link = folder / Path(rel).name
        if not link.exists():
            os.symlink(corpus() / rel, link)
        found.append((folder, faces_record(rel)))
    return found

"""The faces stage: faces, identity encodings and best-shot cues into ``record["faces"]``.

Photos are read from the job's working image (the decoded picture or the largest
thumbnail), never decoded a second time.  Videos are sampled at a few frames; one person
seen in several frames is kept once, at the frame where their face is best, with its time,
so a clip does not count as many photos of the same person.

Each entry::

    {"box": [top, right, bottom, left],   # fractions of the picture's height/width
     "score": 1.9,                        # detector confidence
     "encoding": "<b64 float16 x128>",    # scanpixd.record.decode_vector
     "eyes_open": 0.29, "smile": 0.50,    # eye aspect ratio, mouth/jaw width ratio
     "sharpness": 221.3, "size": 0.059,   # Laplacian variance, face area / picture area
     "time": null | 3.2}                  # seconds into a video
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from scanpixd.models.faces import Face, FaceModel
from scanpixd.pipeline.base import Job, Stage, Tier
from scanpixd.pipeline.services import Services
from scanpixd.record import Record, encode_vector


class FacesStage(Stage):
    name = "faces"
    version = 2  # 2: greyscale HOG on the picture enlarged to faces.max_size
    tier = Tier.MODEL

    def __init__(self, services: Services):
        self.services = services
        self.settings = services.settings.faces

    @property
    def model(self) -> FaceModel:
        return self.services.faces

    def version_key(self) -> str:
        return f"{self.version}:{self.model.model_id}"

    def applies(self, record: Record) -> bool:
        return (record.get("media") or {}).get("kind") in ("image", "video")

    def is_ready(self) -> bool:
        return self.model.can_load()

    def run(self, job: Job) -> None:
        if (job.record.get("media") or {}).get("kind") == "video":
            found = self._video_faces(job)
        else:
            image = job.working_image()
            if image is None:
                raise ValueError("no decoded picture or thumbnail to look for faces in")
            found = [(face, None) for face in self.model.detect(image)]
        job.record[self.name] = [face_entry(face, time) for face, time in found]

    def _video_faces(self, job: Job) -> list[tuple[Face, float | None]]:
        from scanpixd.pipeline.video import sample_frames

        frames = sample_frames(job.path, self.settings.video_frames, self.settings.max_size)
        seen = [(face, float(t)) for t, image in frames for face in self.model.detect(image)]
        return best_per_person(seen, self.settings.threshold)


def best_per_person(
    faces: Sequence[tuple[Face, float | None]], threshold: float
) -> list[tuple[Face, float | None]]:
    """One face per identity, the best-quality one, in time order then left to right.

    Faces closer than ``threshold`` are one person, and so, transitively, are faces
    linked through others: in one clip a person turns and moves gradually, so frames
    far apart are often tied by the frames between them.
    """
    group = list(range(len(faces)))

    def root(i: int) -> int:
        while group[i] != i:
            group[i] = group[group[i]]
            i = group[i]
        return i

    for i, (a, _) in enumerate(faces):
        for j in range(i + 1, len(faces)):
            if np.linalg.norm(a.encoding - faces[j][0].encoding) < threshold:
                group[root(j)] = root(i)
    best: dict[int, tuple[Face, float | None]] = {}
    for i, (face, time) in enumerate(faces):
        kept = best.get(root(i))
        if kept is None or face.quality() > kept[0].quality():
            best[root(i)] = (face, time)
    return sorted(best.values(), key=lambda ft: (ft[1] or 0.0, ft[0].box[3]))


def face_entry(face: Face, time: float | None) -> dict[str, Any]:
    """The JSON form of one face in a record (see the module docstring)."""
    return {
        "box": [round(v, 4) for v in face.box],
        "score": round(face.score, 3),
        "encoding": encode_vector(face.encoding),
        "eyes_open": round(face.eyes_open, 3),
        "smile": round(face.smile, 3),
        "sharpness": round(face.sharpness, 1),
        "size": round(face.size, 4),
        "time": None if time is None else round(time, 3),
    }

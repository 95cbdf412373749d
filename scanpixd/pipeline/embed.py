"""The CLIP stage: image embeddings into ``record["clip"]`` for semantic and similar search.

Photos are embedded from the job's working image (the decoded picture or the largest
thumbnail: never a second full decode); a video contributes one vector per sampled frame
(scene changes or intervals) with the frame's time, so a hit can say where in the clip it
is.  The stage's version key carries the model id, so changing the model re-embeds, and a
library synced from another machine with the same weights is current as it is.

Work is batched across jobs: one forward pass covers the frames and photos of many
files, which is several times faster on a CPU than one file at a time.  The indexer runs
``jobs`` model units side by side (CLIP on slices of a batch, faces beside it), so a
batch here uses its share of the cores: one intra-op thread each on two cores, where
torch's default of one per core would put three busy threads on two cores.
"""

from __future__ import annotations

import logging
import os
import sys
import threading
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any

from PIL import Image

from scanpixd.errors import ModelUnavailable
from scanpixd.models.clip import ClipModel
from scanpixd.pipeline.base import Job, Stage, Tier, describe_error, mark_failed
from scanpixd.pipeline.services import Services
from scanpixd.record import Record, encode_vector

log = logging.getLogger(__name__)

FRAME_SIZE = 448  # long side of sampled video frames: twice the usual model input

_threads_lock = threading.Lock()
_default_threads: list[int] = []  # torch's own count, read before this module changes it
_worker = threading.local()  # .workers: how many model workers this thread is one of


class EmbedStage(Stage):
    name = "clip"
    version = 1
    tier = Tier.MODEL

    def __init__(self, services: Services):
        self.services = services
        self.settings = services.settings.clip

    @property
    def model(self) -> ClipModel:
        return self.services.clip

    def version_key(self) -> str:
        try:
            return f"{self.version}:{self.model.model_id}"
        except ModelUnavailable:
            return f"{self.version}:unavailable"

    def applies(self, record: Record) -> bool:
        return (record.get("media") or {}).get("kind") in ("image", "video")

    def is_ready(self) -> bool:
        """Cheap: no load here (a rescan must not load the model to learn nothing is due)."""
        if self.model.state == "unavailable":
            return False
        try:
            self.model.model_id  # noqa: B018 - resolves names, paths and the checkpoint hash
        except ModelUnavailable:
            return False
        return True

    def run(self, job: Job) -> None:
        frames = self._frames(job)
        vectors = self.model.embed_images([image for _, image in frames])
        job.record[self.name] = self._entry([t for t, _ in frames], vectors)

    def run_batch(self, jobs: Sequence[Job]) -> None:
        """Embed every job's pictures in shared batches; a bad file fails alone."""
        model_id = self.model.model_id  # ModelUnavailable goes up: the stage waits
        self.model.load()
        owners: list[tuple[Job, list[float | None]]] = []
        images: list[Image.Image] = []
        for job in jobs:
            try:
                frames = self._frames(job)
            except Exception as exc:  # a broken file must not stop the batch
                mark_failed(job.record, self, describe_error(exc))
                continue
            owners.append((job, [t for t, _ in frames]))
            images.extend(image for _, image in frames)
        self.model.image_preprocess()  # loads the image tower: its runtime decides the threads
        with intra_op_threads(self.threads()):
            vectors = self.model.embed_images(images)
        start = 0
        key = f"{self.version}:{model_id}"
        for job, times in owners:
            rows = vectors[start:start + len(times)]
            start += len(times)
            job.record[self.name] = self._entry(times, rows)
            job.record.setdefault("stages", {})[self.name] = key
            job.record.setdefault("errors", {}).pop(self.name, None)

    def threads(self) -> int:
        """Intra-op threads for one batch: ``clip.threads``, else the calling worker's
        share of the cores (see :func:`model_worker`), else one per core."""
        if self.settings.threads > 0:
            return self.settings.threads
        return max(1, (os.cpu_count() or 1) // getattr(_worker, "workers", 1))

    def _frames(self, job: Job) -> list[tuple[float | None, Image.Image]]:
        if (job.record.get("media") or {}).get("kind") == "video":
            from scanpixd.pipeline.video import sample_frames

            frames = sample_frames(job.path, max(1, self.settings.video_frames), FRAME_SIZE)
            if frames:
                return [(round(float(t), 3), image) for t, image in frames]
            raise ValueError("no frame could be read from the video")
        image = job.working_image()
        if image is None:
            raise ValueError("no decoded picture or thumbnail to embed")
        return [(None, image)]

    def _entry(self, times: list[float | None], vectors: Any) -> dict[str, Any]:
        return {
            "model": self.model.model_id,
            "dim": int(vectors.shape[1]),
            "vectors": [{"time": t, "v": encode_vector(v)} for t, v in zip(times, vectors,
                                                                          strict=True)],
        }


def model_worker(workers: int) -> None:
    """Marks the calling thread as one of ``workers`` running model units side by side."""
    _worker.workers = max(1, workers)


@contextmanager
def intra_op_threads(count: int) -> Iterator[None]:
    """Torch's intra-op threads on the calling thread, ``count`` of them for the block.

    torch keeps the count per thread (OpenMP, MKL) and also as the default that threads
    it meets later start with, so that default is put back afterwards, also when two
    threads overlap (each restores the count torch had before either changed it).  A tower
    running in numpy needs none of this (OpenBLAS runs one thread), and torch is not imported
    for it.
    """
    if "torch" not in sys.modules:
        yield
        return
    import torch

    with _threads_lock:
        if not _default_threads:
            _default_threads.append(torch.get_num_threads())
        default = _default_threads[0]
    if count == default and torch.get_num_threads() == default:
        yield
        return
    torch.set_num_threads(count)
    try:
        yield
    finally:
        torch.set_num_threads(default)

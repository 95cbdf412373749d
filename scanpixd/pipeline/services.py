"""Long-lived helpers the stages share: the exiftool process and the models.

Built once per indexer or daemon and passed to every stage; each member starts lazily,
so a run that needs no model never loads one.
"""

from __future__ import annotations

import threading
from typing import TYPE_CHECKING

from scanpixd.config import Settings

if TYPE_CHECKING:
    from scanpixd.models.clip import ClipModel
    from scanpixd.models.faces import FaceModel
    from scanpixd.pipeline.exiftool import ExifToolService


class Services:
    def __init__(self, settings: Settings):
        self.settings = settings
        self._lock = threading.Lock()
        self._exiftool: ExifToolService | None = None
        self._clip: ClipModel | None = None
        self._faces: FaceModel | None = None

    @property
    def exiftool(self) -> ExifToolService:
        with self._lock:
            if self._exiftool is None:
                from scanpixd.pipeline.exiftool import ExifToolService

                self._exiftool = ExifToolService(self.settings.exiftool)
            return self._exiftool

    @property
    def clip(self) -> ClipModel:
        with self._lock:
            if self._clip is None:
                from scanpixd.models.clip import ClipModel

                self._clip = ClipModel(self.settings.clip, cache_dir=self.settings.cache_dir)
            return self._clip

    @property
    def faces(self) -> FaceModel:
        with self._lock:
            if self._faces is None:
                from scanpixd.models.faces import FaceModel

                self._faces = FaceModel(self.settings.faces)
            return self._faces

    def close(self) -> None:
        """Stop the exiftool process and unload models."""
        with self._lock:
            if self._exiftool is not None:
                self._exiftool.close()
            if self._clip is not None:
                self._clip.unload()
            if self._faces is not None:
                self._faces.unload()

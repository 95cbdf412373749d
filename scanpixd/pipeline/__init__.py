"""Pipeline stages, in the order they run on a file.  See :mod:`scanpixd.pipeline.base`."""

from __future__ import annotations

from scanpixd.pipeline.base import Job, Stage, Tier, pending, run_stage, run_stages
from scanpixd.pipeline.services import Services

__all__ = ["Job", "Services", "Stage", "Tier", "build_stages", "pending", "run_stage", "run_stages"]


def build_stages(services: Services) -> list[Stage]:
    """Every stage, cheap ones first; a stage whose settings disable it is left out."""
    from scanpixd.pipeline.embed import EmbedStage
    from scanpixd.pipeline.faces import FacesStage
    from scanpixd.pipeline.hashes import HashesStage
    from scanpixd.pipeline.media import MediaStage
    from scanpixd.pipeline.metadata import MetadataStage
    from scanpixd.pipeline.place import PlaceStage
    from scanpixd.pipeline.preview import PreviewStage
    from scanpixd.pipeline.quality import QualityStage
    from scanpixd.pipeline.thumbs import ThumbsStage

    settings = services.settings
    stages: list[Stage] = [
        MediaStage(services),
        MetadataStage(services),
        ThumbsStage(services),
        HashesStage(services),
        QualityStage(services),
        PlaceStage(services),
        PreviewStage(services),
    ]
    if settings.faces.enabled:
        stages.append(FacesStage(services))
    if settings.clip.enabled:
        stages.append(EmbedStage(services))
    return stages

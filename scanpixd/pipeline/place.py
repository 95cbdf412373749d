"""The place stage: where a geotagged item was taken, from its GPS position, offline.

Sets ``record["place"]`` to ``{"city", "region", "country", "country_code", "timezone"}``
(see :mod:`scanpixd.geo`), or null when the item has no usable position.  Names are
null on the open sea (where the zone is a nautical ``Etc/GMT±N``: the nearest town would
name a country the photo was not taken in) and far from any town.  The IANA zone is
looked up here, once per file, so the library-wide time inference
(:mod:`scanpixd.timeinfer`) is plain arithmetic on every later pass.
"""

from __future__ import annotations

from scanpixd import geo
from scanpixd.pipeline.base import Job, Stage, Tier
from scanpixd.pipeline.services import Services
from scanpixd.record import Record


class PlaceStage(Stage):
    name = "place"
    version = 1
    tier = Tier.CHEAP

    def __init__(self, services: Services):
        self.services = services

    def applies(self, record: Record) -> bool:
        metadata = record.get("metadata")
        if not isinstance(metadata, dict):
            # Metadata not read yet (stages are chosen before the metadata stage runs): decide
            # in run() once it has.
            return "metadata" not in record.get("stages", {})
        return geo.valid_gps(metadata.get("gps")) is not None

    def run(self, job: Job) -> None:
        metadata = job.record.get("metadata")
        gps = metadata.get("gps") if isinstance(metadata, dict) else None
        position = geo.valid_gps(gps)
        if position is None:  # none, or one geo.valid_gps rejects (0/0, out of range)
            job.record[self.name] = None
            return
        zone = geo.timezone_at(*position)
        place = None if _at_sea(zone) else geo.reverse(*position)
        place = place or dict.fromkeys(("city", "region", "country", "country_code"))
        place["timezone"] = zone
        job.record[self.name] = place


def _at_sea(zone: str | None) -> bool:
    """Outside every country's territorial waters, time zones are the nautical ``Etc/GMT±N``."""
    return zone is not None and zone.startswith("Etc/")

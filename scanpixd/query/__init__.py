"""Query language: ``"dog on the beach" date:2023 -snow`` to a typed tree of terms and filters.

:func:`parse` reads the text; :mod:`scanpixd.query.tree` holds what it means and how each filter
matches one item.  Ranking semantic terms against CLIP vectors is the engine's job.
"""

from scanpixd.query.parser import FIELDS, parse
from scanpixd.query.tree import (
    BasicContext,
    CameraFilter,
    DateFilter,
    Filter,
    FolderFilter,
    ItemView,
    MatchContext,
    NearFilter,
    NearPlaceFilter,
    PersonFilter,
    PlaceFilter,
    Query,
    SemanticTerm,
    SimilarTerm,
    TypeFilter,
    distance_m,
    item_date,
    item_position,
)

__all__ = [
    "FIELDS",
    "BasicContext",
    "CameraFilter",
    "DateFilter",
    "Filter",
    "FolderFilter",
    "ItemView",
    "MatchContext",
    "NearFilter",
    "NearPlaceFilter",
    "PersonFilter",
    "PlaceFilter",
    "Query",
    "SemanticTerm",
    "SimilarTerm",
    "TypeFilter",
    "distance_m",
    "item_date",
    "item_position",
    "parse",
]

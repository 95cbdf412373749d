"""Answers a parsed query over a :class:`~scanpixd.library.Library`: filters, then ranking.

Filters select exactly (every filter must accept an item).  Semantic terms rank what is
left by CLIP cosine similarity:

- A text term compares the text's embedding with each image vector; ``similar:PATH``
  compares the image's vectors (the library's own, when PATH is an indexed file, so no
  model is needed; else PATH is read and embedded).  A video is scored by its best frame
  and reports that frame's time.
- Positive terms combine as a weighted mean of their similarities.
- A negative term ``-snow`` demotes: the score loses ``weight * (similarity - typical)``
  where the item looks more like "snow" than the library's typical item does.  Demoted
  below the floor, an item is gone.  (In a listing without positive terms, an item is
  left out when it would match the negative term on its own.)
- A score floor cuts unrelated items.  Text terms use ``clip.score_floor``, an absolute
  cosine (real CLIP models give matching text and photos about 0.25-0.35, unrelated ones
  below 0.2).  Image-to-image similarity is high between any two photos, so ``similar:``
  uses a floor relative to the query's own typical score over the library:
  ``typical + clip.similar_floor * (1 - typical)``.  Several terms use the weighted mean
  of their floors.

A query with no positive term (filters only, or filters with negative terms) lists the
items it selects by capture time, oldest first; files without a date come last.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageOps

from scanpixd.errors import ModelUnavailable, QueryError
from scanpixd.library import Item, Library
from scanpixd.query.columns import accept_mask
from scanpixd.query.tree import BasicContext, MatchContext, Query, SemanticTerm, SimilarTerm
from scanpixd.record import Record
from scanpixd.store.ann import matvec

log = logging.getLogger(__name__)

SAMPLE_SIZE = 1024  # library vectors that tell what a "typical" score is for a term
SIMILAR_IMAGE_SIZE = 448  # long side a similar: image is read at (twice the model input)


@dataclass
class Result:
    path: Path
    score: float | None  # None in a listing without semantic terms
    time: float | None  # seconds into a video of the best frame
    record: Record
    item: Item = field(repr=False)

    def to_dict(self, with_record: bool = False) -> dict[str, Any]:
        out: dict[str, Any] = {"path": str(self.path), "score": self.score, "time": self.time}
        if with_record:
            out["record"] = self.record
        return out


@dataclass
class _Term:
    label: str
    vectors: np.ndarray  # (m, dim) unit rows; an item's similarity is the max over them
    weight: float
    negative: bool
    image: bool = False  # a similar: term (relative floor) rather than text
    floor: float = 0.0
    typical: float = 0.0

    def similarity(self, matrix: np.ndarray) -> np.ndarray:
        return np.max(matvec(matrix, self.vectors.reshape(-1, matrix.shape[1])), axis=1)


def search(library: Library, query: Query, ctx: MatchContext | None = None, limit: int = 50,
           cwd: Path | None = None) -> list[Result]:
    """The best ``limit`` items for ``query``; see the module docstring for the rules."""
    ctx = ctx or BasicContext()
    query = query.bind(ctx)
    terms = _resolve_terms(library, query, cwd)
    with library.lock:
        selected = _selected(library, query, ctx)
        if not any(not t.negative for t in terms):
            return _listing(library, selected, terms, limit)
        return _ranked(library, selected if query.filters else None, terms, limit)


# -- terms ------------------------------------------------------------------------------
def _resolve_terms(library: Library, query: Query, cwd: Path | None) -> list[_Term]:
    if not query.terms and not query.similar:
        return []
    if library.model_id is None:
        raise ModelUnavailable(_why_unavailable(library))
    terms = []
    texts = list(query.terms)
    if texts:
        vectors = library.clip.embed_text([t.text for t in texts])
        terms += [_Term(t.text, v[None, :], t.weight, t.negative) for t, v in zip(texts, vectors,
                                                                                 strict=True)]
    for s in query.similar:
        terms.append(_Term(f"similar:{s.path}", _similar_vectors(library, s, cwd), s.weight,
                           s.negative, image=True))
    _calibrate(library, terms)
    return terms


def _why_unavailable(library: Library) -> str:
    if not library.settings.clip.enabled:
        return "semantic search is off (clip.enabled = false)"
    try:
        library.clip.model_id  # noqa: B018 - raises with the reason
    except ModelUnavailable as exc:
        return str(exc)
    return "CLIP model unavailable"


def _similar_vectors(library: Library, term: SimilarTerm, cwd: Path | None) -> np.ndarray:
    path = Path(term.path).expanduser()
    if not path.is_absolute():
        path = (cwd or Path.cwd()) / path
    item = library.get(path)
    if item is not None:
        vectors = library.vectors_of(item)
        if vectors.size:
            return vectors
    if not path.is_file():
        raise QueryError(f"similar: no such file {term.path!r}", term.path)
    return _embed_file(library, path, term.path)


def _embed_file(library: Library, path: Path, typed: str) -> np.ndarray:
    return library.clip.embed_images(_read_images(path, typed))


def _read_images(path: Path, typed: str) -> list[Image.Image]:
    try:
        with Image.open(path) as opened:
            opened.draft("RGB", (SIMILAR_IMAGE_SIZE, SIMILAR_IMAGE_SIZE))
            upright = ImageOps.exif_transpose(opened)
            upright.thumbnail((SIMILAR_IMAGE_SIZE, SIMILAR_IMAGE_SIZE))
            return [upright.convert("RGB")]
    except (OSError, ValueError, Image.DecompressionBombError) as image_error:
        try:
            from scanpixd.pipeline.video import sample_frames

            frames = sample_frames(path, 4, SIMILAR_IMAGE_SIZE)
        except Exception:
            raise QueryError(f"similar: cannot read {typed!r} as an image or video: "
                             f"{image_error}", typed) from image_error
        return [image for _, image in frames]


def _calibrate(library: Library, terms: list[_Term]) -> None:
    """Each term's typical score over the library, and the floor an item must reach."""
    vectors = library.vectors
    sample = vectors.sample(SAMPLE_SIZE) if vectors is not None and len(vectors) else None
    settings = library.settings.clip
    for term in terms:
        if sample is not None and sample.shape[1] != term.vectors.shape[1]:
            raise ModelUnavailable(f"the library's vectors have width {sample.shape[1]} but "
                                   f"the model gives {term.vectors.shape[1]}; reindex")
        term.typical = _median(term.similarity(sample)) if sample is not None else 0.0
        if term.image:
            term.floor = term.typical + settings.similar_floor * (1.0 - term.typical)
        else:
            term.floor = settings.score_floor


# -- selection --------------------------------------------------------------------------
def _selected(library: Library, query: Query, ctx: MatchContext) -> np.ndarray:
    """Ids of the items every filter accepts (failed files never), as one array operation
    per filter over the library's columns."""
    view = library.view()
    columns = view.columns
    keep = columns.alive & ~columns.failed
    for f in query.filters:
        try:
            keep &= accept_mask(f, view, ctx, keep)
        except QueryError:
            raise
    return np.flatnonzero(keep)


def _listing(library: Library, selected: np.ndarray, negatives: Sequence[_Term],
             limit: int) -> list[Result]:
    """The first ``limit`` of ``selected`` by capture time (undated last), ties by path."""
    if negatives and library.vectors is not None:
        selected = selected[~_excluded(library, selected, negatives)]
    if limit <= 0 or not selected.size:
        return []
    when = library.view().columns.capture
    capture = when[selected]
    order = np.argsort(capture, kind="stable")
    if order.size > limit:  # keep the first ``limit`` and whatever ties with the last of them
        order = order[capture[order] <= capture[order[limit - 1]]]
    items = [library.item(int(i)) for i in selected[order]]
    ranked = sorted((i for i in items if i is not None), key=lambda i: (when[i.id], str(i.path)))
    return [Result(i.path, None, None, i.record, i) for i in ranked[:limit]]


def _excluded(library: Library, selected: np.ndarray, negatives: Sequence[_Term]) -> np.ndarray:
    """Which of ``selected`` match a negative term on their own (any frame over its floor)."""
    vectors = library.vectors
    assert vectors is not None
    rows = library.rows_of(selected)
    out = np.zeros(selected.size, dtype=bool)
    if not rows.size:
        return out
    hit = np.zeros(rows.size, dtype=bool)
    for start in range(0, rows.size, 8192):
        matrix = vectors.vectors(rows[start:start + 8192])
        for t in negatives:
            hit[start:start + 8192] |= t.similarity(matrix) >= t.floor
    owners = set(vectors.owner(rows[hit]).tolist())
    return np.fromiter((int(i) in owners for i in selected), dtype=bool, count=selected.size)


# -- ranking ----------------------------------------------------------------------------
def _ranked(library: Library, selected: np.ndarray | None, terms: list[_Term],
            limit: int) -> list[Result]:
    vectors = library.vectors
    if vectors is None or not len(vectors) or limit <= 0:
        return []
    positive = [t for t in terms if not t.negative]
    total = sum(t.weight for t in positive)
    floor = sum(t.weight * t.floor for t in positive) / total
    combined = np.sum([t.weight * _mean_unit(t.vectors) for t in positive], axis=0)
    query = combined / (np.linalg.norm(combined) or 1.0)
    subset = None if selected is None else library.rows_of(selected)
    available = len(vectors) if subset is None else subset.size
    k = min(available, limit + 32)  # grows when too few pass the floor
    while True:
        rows, _ = vectors.search(query, k, subset)
        best, lowest = _score_rows(library, rows, terms, total)
        if len(best) >= limit or k >= available or lowest < floor:
            break  # enough, or everything further away is under the floor already
        k = min(available, 4 * k)
    ordered = sorted(best.items(), key=lambda kv: -kv[1][0])[:limit]
    out = []
    for item_id, (score, time) in ordered:
        item = library.item(item_id)
        if item is not None:
            out.append(Result(item.path, round(score, 4), time, item.record, item))
    return out


def _median(values: np.ndarray) -> float:
    middle = values.size // 2
    return float(np.partition(values, middle)[middle]) if values.size else 0.0


def _mean_unit(vectors: np.ndarray) -> np.ndarray:
    mean = vectors.mean(axis=0)
    return mean / (np.linalg.norm(mean) or 1.0)


def _score_rows(library: Library, rows: np.ndarray, terms: list[_Term], total: float
                ) -> tuple[dict[int, tuple[float, float | None]], float]:
    """Best (score, frame time) per item among ``rows`` over the floor, and the lowest
    positive score seen (when it is under the floor, rows further away need no look)."""
    vectors = library.vectors
    assert vectors is not None
    if not rows.size:
        return {}, -np.inf
    matrix = vectors.vectors(rows)
    positive = np.zeros(rows.size, dtype=np.float64)
    penalty = np.zeros(rows.size, dtype=np.float64)
    floor = 0.0
    for term in terms:
        similarity = term.similarity(matrix)
        if term.negative:
            penalty += term.weight * np.maximum(0.0, similarity - term.typical)
        else:
            positive += term.weight * similarity / total
            floor += term.weight * term.floor / total
    score = positive - penalty
    keep = score >= floor
    best: dict[int, tuple[float, float | None]] = {}
    owners = vectors.owner(rows)
    for i in np.flatnonzero(keep):
        owner = int(owners[i])
        if owner not in best or score[i] > best[owner][0]:
            best[owner] = (float(score[i]), vectors.time(int(rows[i])))
    return best, float(positive.min())


__all__ = ["Result", "SemanticTerm", "SimilarTerm", "search"]

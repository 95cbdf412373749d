"""Groups of exact copies, near-duplicates and bursts, each with its best shot named.

Three kinds of group, each file in at most one:

* ``exact``: the same bytes (the record's content hash).
* ``near``: the same picture after resizing, recompression, HEIC↔JPEG, tone or local
  edits, a small crop, or turned/mirrored without its EXIF orientation.
* ``burst``: different frames of one moment: alike, taken at distinct times within
  ``duplicates.burst_window`` seconds of each other, by one camera.

Why several hashes and rules rather than one distance: users of tools built on one
64-bit hash, or on CLIP distance alone, report unrelated shots (dark frames, photos of
one beach, two exposures of one scene) grouped together.  Here a pair is *near* when

1. both 256-bit hashes agree (resize, recompression, re-encoding, tone edits), or
2. the 256-bit dHash agrees closely and the pHash moderately (text, retouching), or
3. the pHash of one, turned or mirrored, agrees with the other's (lost EXIF orientation), or
4. both 64-bit hashes agree (a small crop) and the two share their capture moment.

Rules 2 and 3 need capture times that do not differ (an edit keeps its original's), and
two photos taken at different moments must meet rule 1 at ``distinct`` × its thresholds:
otherwise they are burst frames, not copies.  Where both records carry CLIP vectors of
one model, CLIP must agree too: it confirms, never finds on its own.  Pictures with
almost no structure (``detail``) are never grouped by look, only as exact copies.
Thresholds come from the preset (``strict``, ``balanced``, ``loose``: :data:`PRESETS`);
members of a group may not drift further apart than ``chain`` times the thresholds, so
a slow pan does not chain into one long group.

No loop over all pairs: candidates come from multi-index hashing (each 256-bit hash,
bytes shuffled, cut into sixteen 16-bit chunks; two hashes within 15 bits share a chunk
for certain, within 24 bits ~97 % of the time; turned pHashes are looked up by 24-bit
chunks) and from a sweep along capture times (bursts, same-moment crops).  Only
candidates are compared, with vectorised popcounts.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal, Protocol

import numpy as np

from scanpixd.config import DuplicateSettings, Settings
from scanpixd.pipeline.hashes import COARSE_BITS, COARSE_SIZE, FINE_BITS, FINE_SIZE, parse_hex
from scanpixd.pipeline.quality import explain, score_shots
from scanpixd.record import Record, decode_vector

log = logging.getLogger(__name__)

Kind = Literal["exact", "near", "burst"]
KINDS: frozenset[str] = frozenset({"exact", "near", "burst"})
_CHUNK_BITS = 16
_MAX_RUN = 4096  # a chunk value shared by more items carries no information
_MAX_NEIGHBOURS = 2048  # items compared with each photo along the time axis
_BATCH = 1 << 20  # candidate pairs evaluated at once


@dataclass(frozen=True)
class Thresholds:
    """Hamming distances (of 256 or 64 bits) and CLIP similarities a pair must meet."""

    fine_phash: int  # rule 1, with fine_dhash
    fine_dhash: int
    edit_dhash: int  # rule 2, with edit_phash
    edit_phash: int
    crop_phash8: int  # rule 3 (64-bit), same moment only
    crop_dhash8: int
    burst_phash: int  # frames of a burst (256-bit) ...
    burst_dhash: int
    burst_phash8: int  # ... or their 64-bit hashes (a small camera move)
    burst_dhash8: int
    clip_near: float  # cosine similarity CLIP must confirm, where both have vectors
    clip_crop: float
    clip_burst: float
    clip_turned: float  # a turned picture moves CLIP more than a resized one
    chain: float  # any two members of a group stay within chain × thresholds
    min_detail: float  # pictures with less structure are not grouped by look
    distinct: float  # share of the fine thresholds for shots taken at different moments


#: Measured on the corpora: resized and recompressed copies differ by ≤ 6 of 256 bits,
#: tone edits and drawn digits ≤ 20 (pHash) / ≤ 12 (dHash), a 3 % crop by ≤ 6 / ≤ 10 of
#: 64; unrelated photos by ≥ 94 (pHash) / ≥ 50 (dHash) of 256; a real burst 22-40 / 5-14.
PRESETS: dict[str, Thresholds] = {
    "strict": Thresholds(
        fine_phash=16, fine_dhash=14, edit_dhash=8, edit_phash=48, crop_phash8=6,
        crop_dhash8=8, burst_phash=44, burst_dhash=24, burst_phash8=8, burst_dhash8=10,
        clip_near=0.92, clip_crop=0.95, clip_burst=0.90, clip_turned=0.80, chain=1.25,
        min_detail=3.0, distinct=0.4),
    "balanced": Thresholds(
        fine_phash=28, fine_dhash=24, edit_dhash=14, edit_phash=72, crop_phash8=12,
        crop_dhash8=16, burst_phash=64, burst_dhash=36, burst_phash8=12, burst_dhash8=16,
        clip_near=0.88, clip_crop=0.92, clip_burst=0.85, clip_turned=0.75, chain=1.5,
        min_detail=2.0, distinct=0.5),
    "loose": Thresholds(
        fine_phash=40, fine_dhash=36, edit_dhash=20, edit_phash=84, crop_phash8=16,
        crop_dhash8=20, burst_phash=80, burst_dhash=48, burst_phash8=16, burst_dhash8=22,
        clip_near=0.85, clip_crop=0.88, clip_burst=0.80, clip_turned=0.70, chain=1.75,
        min_detail=1.5, distinct=0.6),
}


def thresholds(settings: DuplicateSettings) -> Thresholds:
    """The preset's thresholds with ``near_distance`` / ``burst_distance`` applied."""
    found = PRESETS[settings.preset]
    near = settings.near_distance
    if near:
        f = near / found.fine_phash
        found = replace(found, fine_phash=near, fine_dhash=_scaled(found.fine_dhash, f),
                        edit_dhash=_scaled(found.edit_dhash, f),
                        edit_phash=_scaled(found.edit_phash, f),
                        crop_phash8=_scaled(found.crop_phash8, f),
                        crop_dhash8=_scaled(found.crop_dhash8, f))
    burst = settings.burst_distance
    if burst:
        f = burst / found.burst_phash
        found = replace(found, burst_phash=burst, burst_dhash=_scaled(found.burst_dhash, f),
                        burst_phash8=_scaled(found.burst_phash8, f),
                        burst_dhash8=_scaled(found.burst_dhash8, f))
    return found


def _scaled(value: int, factor: float) -> int:
    return max(1, round(value * factor))


class Item(Protocol):
    """What grouping needs of a file (the query engine's ItemView fits)."""

    @property
    def record(self) -> Record: ...

    @property
    def path(self) -> Path: ...


@dataclass(frozen=True)
class DuplicateItem:
    """A plain :class:`Item` for callers that hold records and paths themselves."""

    record: Record
    path: Path
    root: Path | None = None


@dataclass
class Member:
    path: str
    score: float
    reasons: list[str]

    def to_dict(self) -> dict[str, Any]:
        return {"path": self.path, "score": self.score, "reasons": list(self.reasons)}


@dataclass
class Group:
    """One group: its kind, the best item, and every member (the best first)."""

    kind: Kind
    best: Any
    members: list[Member]

    def to_dict(self) -> dict[str, Any]:
        return {"kind": self.kind, "best": str(self.best.path),
                "members": [m.to_dict() for m in self.members]}


def find_groups(items: Iterable[Item], settings: Settings | DuplicateSettings,
                kinds: Iterable[str] = KINDS) -> list[Group]:
    """Group ``items`` into exact copies, near-duplicates and bursts (those in ``kinds``)."""
    wanted = frozenset(kinds)
    unknown = wanted - KINDS
    if unknown:
        raise ValueError(f"unknown duplicate kind {sorted(unknown)[0]!r}: "
                         f"choose from {', '.join(sorted(KINDS))}")
    section = settings.duplicates if isinstance(settings, Settings) else settings
    unique: dict[str, Item] = {}
    for item in items:
        unique.setdefault(str(item.path), item)  # a path listed twice is one file
    pool = list(unique.values())
    limits = thresholds(section)
    facts = _Facts((item.record for item in pool), len(pool), limits.min_detail)
    contents = _contents(facts.content)
    components: list[tuple[list[int], bool]] = []
    if wanted & {"near", "burst"} and len(contents) > 1:
        table = _Table(pool, facts, contents, section.burst_window, limits)
        if section.turned and "near" in wanted:
            table.find_turns()
        components = _Linker(table, wanted, section.clip_confirm).components()
    grouped = {i for members, _ in components for i in members}
    if "exact" in wanted:
        components += [([c], False) for c in range(len(contents))
                       if c not in grouped and len(contents[c]) > 1]
    groups = [_group(pool, [i for c in members for i in contents[c]], burst, len(members))
              for members, burst in components]
    groups.sort(key=lambda g: (("exact", "near", "burst").index(g.kind), g.members[0].path))
    return groups


class _Facts:
    """What grouping reads of every record, as columns (one row per item).

    Each record is decoded once and reduced to its row at once: a library's items decode
    their records on access, and 100k decoded records (or small objects kept from each)
    would hold about a gigabyte."""

    def __init__(self, records: Iterable[Record], n: int, min_detail: float):
        self.content: list[str | None] = []
        self.hashes = [np.zeros((n, bits // 8), np.uint8) for _, bits in _HASH_FIELDS]
        self.hashed = np.zeros(n, bool)
        self.utc = np.full(n, np.nan)
        self.local = np.full(n, np.nan)
        self.precise = np.zeros(n, bool)
        self.camera = np.full(n, -1, np.int64)
        self.has_clip = np.zeros(n, bool)
        self._cameras: dict[str, int] = {}
        for i, record in enumerate(records):
            self._add(i, record, min_detail)

    def _add(self, i: int, record: Record, min_detail: float) -> None:
        content = record.get("hash")
        self.content.append(content if isinstance(content, str) and content else None)
        texts = _hash_texts(record, min_detail)
        values = _parse_hashes(texts) if texts is not None else None
        if values is not None:
            self.hashed[i] = True
            for column, value in zip(self.hashes, values, strict=True):
                column[i] = np.frombuffer(value, np.uint8)
        taken = record.get("taken")
        taken = taken if isinstance(taken, dict) else {}
        metadata = record.get("metadata")
        metadata = metadata if isinstance(metadata, dict) else {}
        utc = _seconds(taken.get("utc") or metadata.get("taken_utc"), aware=True)
        local_text = taken.get("local") or metadata.get("taken_local")
        local = _seconds(local_text, aware=False)
        if utc is not None:
            self.utc[i] = utc
        if local is not None:
            self.local[i] = local
            self.precise[i] = str(local_text)[19:20] == "."
        model = _camera(record)
        if model:
            self.camera[i] = self._cameras.setdefault(model, len(self._cameras))
        self.has_clip[i] = "clip" in record


def _parse_hashes(texts: tuple[str, str, str, str]) -> list[bytes] | None:
    """The four hex hashes as bytes; None when any of them is not valid hex."""
    values = []
    for text, (_, bits) in zip(texts, _HASH_FIELDS, strict=True):
        found = parse_hex(text, bits)
        if found is None or len(found) * 8 != bits:  # fromhex skips spaces: "ab cd" is 2 bytes
            return None
        values.append(found)
    return values


def _contents(keys: Sequence[str | None]) -> list[list[int]]:
    """Indices of ``keys`` by content: files with one content hash share an entry."""
    by_hash: dict[str, int] = {}
    contents: list[list[int]] = []
    for i, key in enumerate(keys):
        if key is not None:
            slot = by_hash.setdefault(key, len(contents))
            if slot == len(contents):
                contents.append([])
            contents[slot].append(i)
        else:
            contents.append([i])
    return contents


# --- the columns compared --------------------------------------------------------------------


_HASH_FIELDS = (("phash", FINE_BITS), ("dhash", FINE_BITS), ("phash8", COARSE_BITS),
                ("dhash8", COARSE_BITS))


class _Table:
    """Per distinct content: hashes as bit arrays, capture times, camera, CLIP vectors."""

    def __init__(self, pool: Sequence[Item], facts: _Facts, contents: list[list[int]],
                 window: float, limits: Thresholds):
        first = np.fromiter((c[0] for c in contents), np.int64, len(contents))
        self.items = [pool[i] for i in first]
        self.n = len(first)
        self.window = window
        self.limits = limits
        self.hashed = facts.hashed[first]
        self.fine_p, self.fine_d, self.coarse_p, self.coarse_d = (h[first] for h in facts.hashes)
        # The same bits as 64-bit word columns: what distances are computed from.
        self.words = {name: _columns(bits) for name, bits in
                      zip(("p", "d", "p8", "d8"), (self.fine_p, self.fine_d, self.coarse_p,
                                                   self.coarse_d), strict=True)}
        self.turned: list[tuple[np.ndarray, np.ndarray, np.ndarray]] = []  # see find_turns
        self.utc, self.local = facts.utc[first], facts.local[first]
        self.precise, self.camera = facts.precise[first], facts.camera[first]
        self.has_clip = facts.has_clip[first]
        self._clip: dict[int, tuple[str, np.ndarray] | None] = {}

    def find_turns(self) -> None:
        """Also compare pictures turned or mirrored (a copy that lost its EXIF orientation):
        per turn, the pHash bytes and the 256- and 64-bit word columns."""
        for turn in _TURNS:
            fine = turn_phash(self.fine_p, FINE_SIZE, turn)
            coarse = turn_phash(self.coarse_p, COARSE_SIZE, turn)
            self.turned.append((fine, _columns(fine), _columns(coarse)))

    def clip(self, i: int) -> tuple[str, np.ndarray] | None:
        """``(model:width, unit vector)`` of the first frame; a library item gives it from
        its vector set (its record holds no vectors), any other item from its record."""
        if i not in self._clip:
            from_library = getattr(self.items[i], "first_vector", None)
            found = from_library() if from_library is not None else None
            self._clip[i] = found if found is not None else _clip_vector(self.items[i].record)
        return self._clip[i]


def _columns(bits: np.ndarray) -> np.ndarray:
    """(n, bytes) hash rows as (words, n) columns of 64-bit words."""
    return np.ascontiguousarray(bits.view(np.uint64).T)


# The seven ways to turn or mirror a picture, as (transpose, mirror, flip).  A mirror
# changes the sign of DCT coefficient (u, v) where v is odd, a flip where u is odd, a
# transpose swaps u and v; a pHash bit compares its coefficient with a median near zero, so
# a sign change inverts it.  The hash of a turned copy thus follows from the original's
# (measured: within 12 of 256 bits of the turned picture's own hash).
_TURNS = [(t, m, f) for t in (0, 1) for m in (0, 1) for f in (0, 1)][1:]


def turn_phash(bits: np.ndarray, side: int, turn: tuple[int, int, int]) -> np.ndarray:
    """pHash rows (n, side² / 8 bytes) of the same pictures turned or mirrored."""
    transpose, mirror, flip = turn
    odd = (np.arange(side) % 2).astype(np.uint8)
    mask = np.zeros((side, side), np.uint8)
    if mirror:
        mask ^= odd[None, :]
    if flip:
        mask ^= odd[:, None]
    grid = np.unpackbits(bits, axis=1).reshape(-1, side, side) ^ mask
    if transpose:
        grid = grid.transpose(0, 2, 1)
    return np.packbits(grid.reshape(bits.shape[0], -1), axis=1)


def _hash_texts(record: Record, min_detail: float) -> tuple[str, str, str, str] | None:
    """The record's four hash strings when present, the right size and from enough detail."""
    hashes = record.get("hashes")
    if type(hashes) is not dict:
        return None
    media = record.get("media")
    if type(media) is dict and media.get("kind", "image") != "image":
        return None
    detail = hashes.get("detail")
    if not isinstance(detail, int | float) or isinstance(detail, bool) or detail < min_detail:
        return None
    texts = (hashes.get("phash"), hashes.get("dhash"), hashes.get("phash8"), hashes.get("dhash8"))
    if tuple(len(t) if type(t) is str else 0 for t in texts) != _HEX_LENGTHS:
        return None
    return texts  # type: ignore[return-value]


_HEX_LENGTHS = tuple(bits // 4 for _, bits in _HASH_FIELDS)


def _camera(record: Record) -> str | None:
    metadata = record.get("metadata") or {}
    make, model = metadata.get("make"), metadata.get("model")
    if not isinstance(model, str) or not model.strip():
        return None
    return f"{make if isinstance(make, str) else ''}|{model}".strip().lower()


def _seconds(text: Any, aware: bool) -> float | None:
    """Seconds of an ISO time; local (naive) times are read as if they were UTC."""
    if not isinstance(text, str) or len(text) < 19:
        return None
    try:
        when = datetime.fromisoformat(text.replace("Z", "+00:00") if aware else text[:26])
    except ValueError:
        return None
    if when.tzinfo is None or not aware:
        when = when.replace(tzinfo=UTC)
    return when.timestamp()


def _clip_vector(record: Record) -> tuple[str, np.ndarray] | None:
    clip = record.get("clip")
    if not isinstance(clip, dict):
        return None
    vectors = clip.get("vectors")
    if not isinstance(vectors, list) or not vectors or not isinstance(vectors[0], dict):
        return None
    try:
        vector = decode_vector(vectors[0]["v"])
    except (KeyError, TypeError, ValueError):
        return None
    norm = float(np.linalg.norm(vector))
    if not math.isfinite(norm) or norm == 0 or vector.size != clip.get("dim", vector.size):
        return None
    return f"{clip.get('model')}:{vector.size}", vector / norm


# --- candidate pairs ---------------------------------------------------------------------------

# A fixed shuffle of byte positions: each 16-bit chunk pairs bytes from different rows of
# the hash, so no chunk is made only of pHash's nearly constant lowest frequencies.
_BYTE_ORDER = np.random.default_rng(0x5CA9D).permutation(FINE_BITS // 8)
_MIX = np.array([0x9E3779B97F4A7C15, 0xC2B2AE3D27D4EB4F, 0x165667B19E3779F9, 1], np.uint64)


def _chunk_keys(bits: np.ndarray) -> np.ndarray:
    """(n, 16) chunk values of byte-shuffled 256-bit hashes."""
    return np.ascontiguousarray(bits[:, _BYTE_ORDER]).view(">u2").astype(np.uint16)


def _wide_keys(bits: np.ndarray) -> np.ndarray:
    """(n, 10) 24-bit chunk values of byte-shuffled 256-bit hashes (the last 2 bytes unused)."""
    chunks = bits[:, _BYTE_ORDER[:30]].reshape(bits.shape[0], 10, 3).astype(np.uint32)
    return (chunks[:, :, 0] << 16) | (chunks[:, :, 1] << 8) | chunks[:, :, 2]


def _row_keys(bits: np.ndarray) -> np.ndarray:
    """One 64-bit key per whole hash (equal hashes, equal keys; others collide ~never)."""
    words = bits.view(np.uint64)
    with np.errstate(over="ignore"):
        return np.bitwise_xor.reduce(words * _MIX, axis=1)


def _run_pairs(order: np.ndarray, ends: np.ndarray,
               limit: int) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """Pairs (order[i], order[j]) for every i < j < ends[i], at most ``limit`` apart."""
    after = np.minimum(ends - np.arange(order.size) - 1, limit)
    active = np.flatnonzero(after > 0)
    offset = 1
    while active.size:
        yield order[active], order[active + offset]
        offset += 1
        active = active[after[active] >= offset]


def _equal_pairs(keys: np.ndarray, ids: np.ndarray) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """Pairs of ``ids`` whose ``keys`` are equal, skipping uninformative crowded keys."""
    order = np.argsort(keys, kind="stable")
    ordered = keys[order]
    starts = np.flatnonzero(np.r_[True, ordered[1:] != ordered[:-1]])
    lengths = np.diff(np.r_[starts, ordered.size])
    ends = np.repeat(starts + lengths, lengths)
    crowded = np.repeat(lengths > _MAX_RUN, lengths)
    if crowded.any():
        log.debug("skipping %d crowded hash chunks", int((lengths > _MAX_RUN).sum()))
        ends = np.where(crowded, np.arange(ordered.size) + 1, ends)
    yield from _run_pairs(ids[order], ends, _MAX_RUN)


def index_pairs(fine: Sequence[np.ndarray], ids: np.ndarray) -> Iterator[tuple[np.ndarray,
                                                                                np.ndarray]]:
    """Candidate pairs among ``ids``: same whole hash, or one shared chunk of either hash.

    Identical hashes are paired with the first of their kind only (a star links them
    all), and only that first one is indexed by chunks.
    """
    if ids.size < 2:
        return
    for bits in fine:
        chosen = bits[ids]
        _, first, classes = np.unique(_row_keys(chosen), return_index=True,
                                      return_inverse=True)
        heads = ids[first[classes.ravel()]]
        twin = heads != ids
        yield heads[twin], ids[twin]
        first = np.sort(first)
        keys = _chunk_keys(chosen[first])
        for column in range(keys.shape[1]):
            yield from _equal_pairs(keys[:, column], ids[first])


def cross_pairs(keys_a: np.ndarray, ids_a: np.ndarray, sorted_b: np.ndarray,
                ids_b: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Pairs (x from a, y from b) with equal keys (``sorted_b`` ascending, ``ids_b`` in its
    order), at most ``_MAX_RUN`` per key."""
    lo = np.searchsorted(sorted_b, keys_a, side="left")
    counts = np.minimum(np.searchsorted(sorted_b, keys_a, side="right") - lo, _MAX_RUN)
    total = int(counts.sum())
    if not total:
        empty = np.zeros(0, np.int64)
        return empty, empty
    starts = np.repeat(lo - (np.cumsum(counts) - counts), counts)
    return np.repeat(ids_a, counts), ids_b[starts + np.arange(total)]


def window_pairs(times: np.ndarray, ids: np.ndarray,
                 window: float) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """Pairs among ``ids`` whose ``times`` lie at most ``window`` seconds apart."""
    if ids.size < 2:
        return
    order = ids[np.argsort(times[ids], kind="stable")]
    ordered = times[order]
    ends = np.searchsorted(ordered, ordered + window, side="right")
    yield from _run_pairs(order, ends, _MAX_NEIGHBOURS)


# --- judging pairs -----------------------------------------------------------------------------


def _distance(words: np.ndarray, a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Hamming distances of pairs, from (words, n) columns of 64-bit words (one-dimensional
    gathers are several times faster than gathering rows)."""
    return _cross_distance(words, words, a, b)


@dataclass
class _Verdict:
    """Evaluated candidate pairs: ``near`` / ``burst`` closeness (≤ 1 passes) and moments."""

    a: np.ndarray
    b: np.ndarray
    near: np.ndarray
    fine: np.ndarray  # the near closeness without the crop rule
    burst: np.ndarray
    in_window: np.ndarray  # distinct capture times within the burst window, one camera
    turned: np.ndarray  # matched as a turned or mirrored copy


def judge(table: _Table, a: np.ndarray, b: np.ndarray, turns: bool = False) -> _Verdict:
    """Closeness of each pair under the near and burst rules (pure hashes and times);
    ``turns``: also as turned or mirrored copies (seven more comparisons per pair)."""
    t = table.limits
    w = table.words
    dp, dd = _distance(w["p"], a, b), _distance(w["d"], a, b)
    p8, d8 = _distance(w["p8"], a, b), _distance(w["d8"], a, b)
    same, distinct, in_window = _moments(table, a, b)
    fine = np.maximum(dp / t.fine_phash, dd / t.fine_dhash)
    edit = np.minimum(fine, np.maximum(dd / t.edit_dhash, dp / t.edit_phash))
    turned = _turned_closeness(table, a, b) if turns else np.full(a.size, np.inf)
    # Shots taken at different moments are near-duplicates only when all but identical;
    # an edit, a crop or a turned copy keeps the capture time of its original.
    near = np.where(distinct, np.minimum(fine, turned) / t.distinct, np.minimum(edit, turned))
    crop = np.where(same, np.maximum(p8 / t.crop_phash8, d8 / t.crop_dhash8), np.inf)
    burst = np.minimum(np.maximum(dp / t.burst_phash, dd / t.burst_dhash),
                       np.maximum(p8 / t.burst_phash8, d8 / t.burst_dhash8))
    return _Verdict(a, b, np.minimum(near, crop), near, burst, in_window, turned < edit)


def _turned_closeness(table: _Table, a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """How close ``a`` turned or mirrored is to ``b`` (pHash only: dHash cannot be turned)."""
    best = np.full(a.size, np.inf)
    t = table.limits
    for _, fine, coarse in table.turned:
        dp = _cross_distance(fine, table.words["p"], a, b)
        p8 = _cross_distance(coarse, table.words["p8"], a, b)
        best = np.minimum(best, np.maximum(dp / t.fine_phash, p8 / t.crop_phash8))
    return best


def _cross_distance(left: np.ndarray, right: np.ndarray, a: np.ndarray,
                    b: np.ndarray) -> np.ndarray:
    total = np.bitwise_count(left[0][a] ^ right[0][b]).astype(np.int32)
    for column_a, column_b in zip(left[1:], right[1:], strict=True):
        total += np.bitwise_count(column_a[a] ^ column_b[b])
    return total


def _moments(table: _Table, a: np.ndarray,
             b: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per pair: one capture moment; two known, different moments; possible burst frames."""
    both_utc = ~np.isnan(table.utc[a]) & ~np.isnan(table.utc[b])
    ta = np.where(both_utc, table.utc[a], table.local[a])
    tb = np.where(both_utc, table.utc[b], table.local[b])
    known = ~np.isnan(ta) & ~np.isnan(tb)
    with np.errstate(invalid="ignore"):
        gap = np.abs(ta - tb)
        exact = table.precise[a] & table.precise[b]
        same = known & np.where(exact, gap < 1e-3, np.floor(ta) == np.floor(tb))
        cam_a, cam_b = table.camera[a], table.camera[b]
        one_camera = (cam_a < 0) | (cam_b < 0) | (cam_a == cam_b)
        in_window = known & ~same & (gap <= table.window) & one_camera
    return same, known & ~same, in_window


class _Linker:
    """Turns candidate pairs into edges, then edges into groups (constrained linkage)."""

    def __init__(self, table: _Table, kinds: frozenset[str], clip_confirm: bool):
        self.table = table
        self.kinds = kinds
        self.clip_confirm = clip_confirm

    def components(self) -> list[tuple[list[int], bool]]:
        """Groups of content indices, each with whether it holds a burst edge."""
        a, b, close, burst = self._edges()
        return _link(self.table, a, b, close, burst, self.kinds)

    def _index_candidates(self) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        """Pairs sharing a hash chunk, cut to those whose pHash some rule could accept.

        Pairs the coarse rules need (one moment, one burst) come from the time sweep.
        """
        t = self.table
        loosest = max(t.limits.fine_phash, t.limits.edit_phash, t.limits.burst_phash)
        pairs = index_pairs([t.fine_p, t.fine_d], np.flatnonzero(t.hashed))
        for a, b in _batched(pairs):
            close = _distance(t.words["p"], a, b) <= loosest
            yield a[close], b[close]

    def _turned_candidates(self) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        """Pairs where one picture, turned or mirrored, shares a 24-bit pHash chunk with the
        other.  Turned copies stay within ~12 bits, so wide chunks suffice (all within 9
        bits are found, ~96 % at 12) and collide far less often than 16-bit ones."""
        t = self.table
        ids = np.flatnonzero(t.hashed)
        if ids.size < 2:
            return
        keys = _wide_keys(t.fine_p[ids])
        turned = [(_wide_keys(fine[ids]), words) for fine, words, _ in t.turned]
        for column in range(keys.shape[1]):
            order = np.argsort(keys[:, column], kind="stable")
            ordered = keys[order, column]
            for turned_keys, words in turned:
                needles = np.argsort(turned_keys[:, column], kind="stable")
                a, b = cross_pairs(turned_keys[needles, column], ids[needles], ordered,
                                   ids[order])
                close = (a != b) & (_cross_distance(words, t.words["p"], a, b)
                                    <= t.limits.fine_phash)
                yield a[close], b[close]

    def _time_candidates(self) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        """Pairs taken within the burst window (or the same second) of each other."""
        t = self.table
        ids = np.flatnonzero(t.hashed)
        window = max(t.window, 1.0)
        has_utc = ids[~np.isnan(t.utc[ids])]
        yield from window_pairs(t.utc, has_utc, window)
        has_local = ids[~np.isnan(t.local[ids])]
        for a, b in window_pairs(t.local, has_local, window):
            keep = np.isnan(t.utc[a]) | np.isnan(t.utc[b])
            yield a[keep], b[keep]

    def _edges(self) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        found: list[tuple[np.ndarray, ...]] = []
        sources = [(self._time_candidates(), False)]
        if "near" in self.kinds:
            sources.insert(0, (self._index_candidates(), False))
            if self.table.turned:
                sources.append((self._turned_candidates(), True))
        for source, turns in sources:
            for a, b in _batched(source):
                if a.size:
                    found.append(self._judge_batch(a, b, turns))
        if not found:
            empty = np.zeros(0, np.int64)
            return empty, empty, np.zeros(0), np.zeros(0, bool)
        a, b, close, burst = (np.concatenate(parts) for parts in zip(*found, strict=True))
        lo, hi = np.minimum(a, b), np.maximum(a, b)
        key = lo * self.table.n + hi
        _, first = np.unique(key, return_index=True)
        return lo[first], hi[first], close[first], burst[first]

    def _judge_batch(self, a: np.ndarray, b: np.ndarray,
                     turns: bool = False) -> tuple[np.ndarray, ...]:
        v = judge(self.table, a, b, turns)
        t = self.table.limits
        as_burst = ("burst" in self.kinds) & v.in_window & (np.minimum(v.near, v.burst) <= 1)
        as_near = ("near" in self.kinds) & ~as_burst & (v.near <= 1)
        keep = as_burst | as_near
        close = np.where(as_burst, np.minimum(v.near, v.burst), v.near)
        needed = np.where(as_burst, t.clip_burst, np.where(
            v.turned, t.clip_turned, np.where(v.fine <= 1, t.clip_near, t.clip_crop)))
        a, b, close, as_burst, needed = a[keep], b[keep], close[keep], as_burst[keep], needed[keep]
        if self.clip_confirm and a.size:
            agree = _clip_agrees(self.table, a, b, needed)
            a, b, close, as_burst = a[agree], b[agree], close[agree], as_burst[agree]
        return a, b, close, as_burst


def _batched(pairs: Iterable[tuple[np.ndarray, np.ndarray]]) -> Iterator[tuple[np.ndarray,
                                                                              np.ndarray]]:
    """Gather small pair arrays into batches of about ``_BATCH`` pairs."""
    held_a: list[np.ndarray] = []
    held_b: list[np.ndarray] = []
    count = 0
    for a, b in pairs:
        held_a.append(a)
        held_b.append(b)
        count += a.size
        if count >= _BATCH:
            yield np.concatenate(held_a), np.concatenate(held_b)
            held_a, held_b, count = [], [], 0
    if held_a:
        yield np.concatenate(held_a), np.concatenate(held_b)


def _clip_agrees(table: _Table, a: np.ndarray, b: np.ndarray, needed: np.ndarray) -> np.ndarray:
    """False where both have CLIP vectors of one model and they disagree."""
    agree = np.ones(a.size, bool)
    for k in np.flatnonzero(table.has_clip[a] & table.has_clip[b]):
        va, vb = table.clip(int(a[k])), table.clip(int(b[k]))
        if va is not None and vb is not None and va[0] == vb[0]:
            agree[k] = float(va[1] @ vb[1]) >= needed[k]
    return agree


def _link(table: _Table, a: np.ndarray, b: np.ndarray, close: np.ndarray, burst: np.ndarray,
          kinds: frozenset[str]) -> list[tuple[list[int], bool]]:
    """Merge along edges, closest first, while every two members stay within ``chain``."""
    parent = list(range(table.n))
    members: dict[int, list[int]] = {}
    bursty: dict[int, bool] = {}

    def root(x: int) -> int:
        while parent[x] != x:
            parent[x] = parent[parent[x]]
            x = parent[x]
        return x

    for k in np.argsort(close, kind="stable"):
        ra, rb = root(int(a[k])), root(int(b[k]))
        if ra == rb:
            bursty[ra] = bursty.get(ra, False) or bool(burst[k])
            continue
        left, right = members.get(ra, [ra]), members.get(rb, [rb])
        loose = bool(burst[k]) or bursty.get(ra, False) or bursty.get(rb, False)
        # Two single photos: the edge itself is their only pair, already within the rules.
        if (len(left) > 1 or len(right) > 1) and not _compatible(table, left, right, loose):
            continue
        if len(left) < len(right):
            ra, rb, left, right = rb, ra, right, left
        parent[rb] = ra
        members[ra] = left + right
        members.pop(rb, None)
        bursty[ra] = bursty.get(ra, False) or bursty.pop(rb, False) or bool(burst[k])
    return [(sorted(m), bursty.get(r, False)) for r, m in members.items()]


def _compatible(table: _Table, left: list[int], right: list[int], burst: bool) -> bool:
    """Whether every member of one side stays within ``chain`` of every member of the other
    (checked against at most 256 evenly spread members per side, to bound the cost)."""
    a = np.repeat(_spread(left), min(len(right), 256))
    b = np.tile(_spread(right), min(len(left), 256))
    v = judge(table, a, b)
    close = np.minimum(v.near, v.burst) if burst else v.near
    far = close > table.limits.chain
    if far.any() and table.turned:  # a turned member: compare those pairs turned too
        close[far] = np.minimum(close[far], judge(table, a[far], b[far], turns=True).near)
    return bool((close <= table.limits.chain).all())


def _spread(members: list[int], most: int = 256) -> np.ndarray:
    chosen = np.asarray(members)
    if chosen.size > most:
        chosen = chosen[np.linspace(0, chosen.size - 1, most).astype(np.int64)]
    return chosen


# --- the best of each group --------------------------------------------------------------------


def _group(pool: Sequence[Item], indices: list[int], burst: bool, contents: int) -> Group:
    kind: Kind = "exact" if contents == 1 else ("burst" if burst else "near")
    items = [pool[i] for i in indices]
    records = [item.record for item in items]
    scores = score_shots(records)
    best = min(range(len(items)), key=_preference(items, scores))
    reasons = explain(records, best)
    best_hash = records[best].get("hash")
    for i, record in enumerate(records):
        if i != best and best_hash and record.get("hash") == best_hash:
            reasons[i] = ["exact copy of the best"]
    tied = [i for i in range(len(items)) if round(scores[i], 3) == round(scores[best], 3)]
    if not reasons[best]:
        reasons[best] = [_tie_reason(items, tied) if len(tied) > 1 else "best overall score"]
    for i in range(len(items)):
        if not reasons[i]:
            reasons[i] = ["equally good" if i in tied else "lower overall score"]
    order = sorted(range(len(items)), key=lambda i: (i != best, -scores[i], str(items[i].path)))
    return Group(kind, items[best],
                 [Member(str(items[i].path), scores[i], reasons[i]) for i in order])


def _preference(items: Sequence[Item], scores: list[float]) -> Callable[[int], tuple[Any, ...]]:
    """Highest score; then a file with capture metadata; then the oldest; then the shortest path."""

    def key(i: int) -> tuple[Any, ...]:
        record = items[i].record
        described = bool((record.get("metadata") or {}).get("taken_local"))
        mtime = record.get("mtime_ns")
        mtime = mtime if isinstance(mtime, int) else 0
        path = str(items[i].path)
        return (-round(scores[i], 3), not described, mtime, len(path), path)

    return key


def _tie_reason(items: Sequence[Item], tied: list[int]) -> str:
    """Why the best won among members that scored the same (see :func:`_preference`)."""
    mtimes = {items[i].record.get("mtime_ns") for i in tied}
    return "oldest file" if len(mtimes) > 1 else "first by name"

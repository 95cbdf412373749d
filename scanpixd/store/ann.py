"""Nearest-neighbour indexes of CLIP vectors: the per-folder portable file and the in-memory set.

Per folder, ``index/clip.hnsw`` (an hnswlib graph, inner product on unit vectors) travels
with the folder's ``.scanpix/`` next to ``index/clip.json``, which names what the graph
holds::

    {"format": 1, "model": "<model id>", "dim": 512, "count": 3,
     "fingerprint": "b2:...",       # of the records' vectors it was built from
     "checksum": "b2:...",          # of clip.hnsw's bytes
     "labels": [["IMG_1.jpg", 0, null], ["clip.mp4", 0, 0.0], ["clip.mp4", 1, 4.2]]}

Label ``i`` of the graph is ``labels[i]``: a file name (relative to the folder), the
vector's position in that record's ``clip.vectors`` and its time in a video.  The index is
derived data: when it is missing, truncated, corrupt (checksum), built from other records
(fingerprint) or for another model or width, it is rebuilt from the records, so a reader
never gets an answer the records do not back.  The checksum is verified before hnswlib
reads the file, because a damaged graph can crash it.

:class:`VectorSet` is the in-memory searchable form the library keeps across folders:
exact search (one matrix product) below ``ann_min`` vectors, an HNSW graph above, built in
the background while exact search answers.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import hashlib
import logging
import os
import threading
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from scanpixd.record import Record
from scanpixd.store import atomic, record_cache
from scanpixd.store.folder import FolderStore

log = logging.getLogger(__name__)

INDEX_FORMAT = 1
GRAPH_NAME = "clip.hnsw"
META_NAME = "clip.json"
HNSW_M = 16
HNSW_EF_CONSTRUCTION = 100
HNSW_EF_MIN = 64
EXACT_MAX = 1024  # a folder with up to this many vectors is searched exactly


@dataclass(frozen=True)
class Label:
    name: str  # file name in the folder
    index: int  # position in the record's clip.vectors
    time: float | None  # seconds into a video, None for a photo


@dataclass
class FolderIndex:
    """One folder's vectors of one model, as the records hold them, plus its graph file."""

    folder: FolderStore
    model_id: str
    dim: int
    labels: list[Label]
    vectors: np.ndarray  # (len(labels), dim) float32, unit rows
    fingerprint: str
    directory: Path | None = None  # where current files lie (None: not written)
    _graph: Any = field(default=None, repr=False)

    def search(self, query: np.ndarray, k: int) -> list[tuple[Label, float]]:
        """The ``k`` labels nearest to a unit ``query``, best first (exact for small folders)."""
        k = min(k, len(self.labels))
        if k <= 0:
            return []
        query = np.asarray(query, dtype=np.float32).reshape(-1)
        graph = self._load_graph() if len(self.labels) > EXACT_MAX else None
        if graph is None:
            scores = matvec(self.vectors, query)
            top = _top(scores, k)
            return [(self.labels[i], float(scores[i])) for i in top]
        graph.set_ef(max(HNSW_EF_MIN, 2 * k))
        ids, dist = graph.knn_query(query, k=k)
        return [(self.labels[int(i)], 1.0 - float(d)) for i, d in zip(ids[0], dist[0], strict=True)]

    def _load_graph(self) -> Any:
        if self._graph is None:
            directory = self.directory or self.folder.index_dir()
            self._graph = _read_graph(directory / GRAPH_NAME, self)
        return self._graph


# -- records -> vectors -----------------------------------------------------------------
def record_vectors(record: Record, model_id: str, dim: int | None = None
                   ) -> list[tuple[int, float | None, np.ndarray]]:
    """``(index, time, unit vector)`` of a record's embeddings by ``model_id``; [] otherwise.

    Malformed entries (wrong width, not finite, zero) are skipped: a sidecar is
    user-writable data and must not poison the index.
    """
    clip = record.get("clip")
    if not isinstance(clip, dict) or clip.get("model") != model_id:
        return []
    entries = clip.get("vectors")
    declared = clip.get("dim")
    if dim is None and isinstance(declared, int) and declared > 0:
        dim = declared
    out = []
    for i, entry in enumerate(entries if isinstance(entries, list) else ()):
        vector = _entry_vector(entry, dim)
        if vector is not None:
            time = entry.get("time")
            out.append((i, float(time) if isinstance(time, int | float) else None, vector))
    return out


def _entry_vector(entry: Any, dim: int | None) -> np.ndarray | None:
    if not isinstance(entry, dict) or not isinstance(entry.get("v"), str):
        return None
    try:
        vector = np.frombuffer(base64.b64decode(entry["v"], validate=True), dtype="<f2")
    except (ValueError, TypeError, binascii.Error):
        return None
    vector = vector.astype(np.float32)
    if vector.size == 0 or (dim is not None and vector.size != dim):
        return None
    norm = float(np.linalg.norm(vector))
    if not np.isfinite(norm) or norm == 0.0:
        return None
    return vector / norm


def record_dim(records: Iterable[Record], model_id: str) -> int | None:
    """The width most records of ``model_id`` declare (a stray sidecar cannot set it)."""
    widths: Counter[int] = Counter()
    for record in records:
        clip = record.get("clip")
        if isinstance(clip, dict) and clip.get("model") == model_id:
            declared = clip.get("dim")
            if isinstance(declared, int) and not isinstance(declared, bool) and declared > 0:
                widths[declared] += 1
    return widths.most_common(1)[0][0] if widths else None


def fingerprint(records: dict[str, Record], model_id: str) -> str:
    """What a folder index was built from: names, times and vectors, in name order."""
    digest = hashlib.blake2b(model_id.encode(), digest_size=16)
    for name in sorted(records):
        clip = records[name].get("clip")
        if not isinstance(clip, dict) or clip.get("model") != model_id:
            continue
        digest.update(b"\x00" + name.encode("utf-8", "surrogateescape") + b"\x00")
        for entry in clip.get("vectors") or ():
            if isinstance(entry, dict):
                digest.update(f"{entry.get('time')}|{entry.get('v')}|".encode())
    return "b2:" + digest.hexdigest()


def collect(records: dict[str, Record], model_id: str, dim: int | None
            ) -> tuple[list[Label], np.ndarray]:
    """Labels and unit vectors of a folder's records: :func:`record_vectors` for each, in name
    order, with the same checks and the same float32 results, decoded in one block."""
    if dim is None:
        return _collect_each(records, model_id, dim)
    labels: list[Label] = []
    chunks: list[bytes] = []
    for name in sorted(records):
        clip = records[name].get("clip")
        if not isinstance(clip, dict) or clip.get("model") != model_id:
            continue
        entries = clip.get("vectors")
        for i, entry in enumerate(entries if isinstance(entries, list) else ()):
            raw = _entry_bytes(entry, dim)
            if raw is not None:
                time = entry.get("time")
                labels.append(Label(name, i, float(time) if isinstance(time, int | float) else None))
                chunks.append(raw)
    matrix, good = unit_rows(b"".join(chunks), dim)
    if not good.all():
        labels = [label for label, ok in zip(labels, good.tolist(), strict=True) if ok]
    return labels, matrix


def unit_rows(raw: bytes, dim: int) -> tuple[np.ndarray, np.ndarray]:
    """The float16 rows in ``raw`` as float32 unit rows, keeping only those that can be
    normalised (finite, non-zero), and which ones those were.

    Each row gets the same float32 values :func:`_entry_vector` gives it alone: its norm
    is its own dot product (``matmul`` of a row by a column is the dot ``np.linalg.norm``
    takes), not a sum that would add in another order.  One pass for a whole folder: a
    loop of small numpy calls per vector would let go of the GIL, and wait to get it
    back, hundreds of times.
    """
    matrix = np.frombuffer(raw, dtype="<f2").astype(np.float32).reshape(-1, dim)
    with np.errstate(all="ignore"):  # an infinite or NaN row is dropped, not warned about
        norms = np.sqrt(np.matmul(matrix[:, None, :], matrix[:, :, None]).reshape(-1))
    good = np.isfinite(norms) & (norms != 0.0)
    if not good.all():
        matrix, norms = matrix[good], norms[good]
    return matrix / norms[:, None], good


@dataclass
class Block:
    """:func:`record_vectors` of consecutive records, decoded together."""

    dim: int  # 0 when no record has vectors of the model
    counts: np.ndarray  # vectors per record (int64)
    times: np.ndarray  # per vector, NaN for none (float64)
    vectors: np.ndarray  # (counts.sum(), dim) float32 unit rows, record after record


def record_block(records: list[Record], model_id: str) -> Block | None:
    """What :func:`record_vectors` gives each of ``records`` (same vectors, times, order,
    same entries skipped), decoded in one pass; None when the records with vectors do not
    all declare one width (then each is decoded on its own)."""
    dim = 0
    owners: list[int] = []
    times: list[float] = []
    chunks: list[bytes] = []
    for i, record in enumerate(records):
        clip = record.get("clip")
        if not isinstance(clip, dict) or clip.get("model") != model_id:
            continue
        entries = clip.get("vectors")
        if not isinstance(entries, list) or not entries:
            continue
        declared = clip.get("dim")
        if type(declared) is not int or declared <= 0 or declared != (dim or declared):
            return None
        dim = declared
        for entry in entries:
            raw = _entry_bytes(entry, dim)
            if raw is not None:
                time = entry.get("time")
                owners.append(i)
                times.append(float(time) if isinstance(time, int | float) else np.nan)
                chunks.append(raw)
    if not chunks:
        return Block(dim, np.zeros(len(records), np.int64), np.zeros(0), np.zeros((0, dim), np.float32))
    vectors, good = unit_rows(b"".join(chunks), dim)
    kept = np.asarray(owners, dtype=np.int64)[good]
    return Block(dim, np.bincount(kept, minlength=len(records)).astype(np.int64),
                 np.asarray(times, dtype=np.float64)[good], vectors)


def _entry_bytes(entry: Any, dim: int) -> bytes | None:
    """The raw float16 bytes of one vector entry of width ``dim`` (see :func:`_entry_vector`)."""
    if not isinstance(entry, dict) or not isinstance(entry.get("v"), str):
        return None
    try:
        raw = base64.b64decode(entry["v"], validate=True)
    except (ValueError, TypeError, binascii.Error):
        return None
    return raw if len(raw) == 2 * dim else None


def _collect_each(records: dict[str, Record], model_id: str, dim: int | None
                  ) -> tuple[list[Label], np.ndarray]:
    labels: list[Label] = []
    rows: list[np.ndarray] = []
    for name in sorted(records):
        for index, time, vector in record_vectors(records[name], model_id, dim):
            labels.append(Label(name, index, time))
            rows.append(vector)
    width = dim or (rows[0].size if rows else 0)
    matrix = np.stack(rows).astype(np.float32) if rows else np.zeros((0, width), np.float32)
    return labels, matrix


# -- the per-folder file ----------------------------------------------------------------
def load_or_rebuild(folder: FolderStore, records: dict[str, Record], model_id: str,
                    dim: int | None = None, write: bool = True) -> FolderIndex:
    """The folder's index for ``model_id``, rebuilt (and rewritten) unless it is current.

    ``write=False`` keeps a stale file as it is (a read-only caller); the returned index
    is right either way, because its vectors come from the records.
    """
    if dim is None:
        dim = record_dim(records.values(), model_id)
    labels, vectors = collect(records, model_id, dim)
    index = FolderIndex(folder, model_id, dim or 0, labels, vectors,
                        fingerprint(records, model_id))
    if not write:
        return index
    index.directory = _current_dir(folder, index)
    if index.directory is None:
        try:
            if labels:
                write_index(index)
            else:
                remove(folder)
        except OSError as exc:
            log.warning("cannot write the vector index of %s: %s", folder.folder, exc)
    return index


def refresh(folder: FolderStore, model_id: str, dim: int | None = None) -> FolderIndex:
    """Bring the folder's index up to date with its records (after an indexing run)."""
    return load_or_rebuild(folder, folder.records(), model_id, dim)


def file_keys(folder: FolderStore) -> list[list[int] | None] | None:
    """Stat keys of the index files in each place the folder's data is read from (``None``
    for a missing file), or ``None`` while one changed within the racy window.

    Equal keys mean the same bytes (see :mod:`scanpixd.store.record_cache`), so a check
    of those files need not be repeated while the records they index are the same too.
    """
    since = record_cache.settled_since()
    keys: list[list[int] | None] = []
    for base in folder.read_dirs:
        directory = os.fspath(base / "index")
        for name in (META_NAME, GRAPH_NAME):
            try:
                key = record_cache.stat_key(os.stat(f"{directory}/{name}"))
            except (FileNotFoundError, NotADirectoryError):
                keys.append(None)
                continue
            except OSError:
                return None
            if not record_cache.settled(key, since):
                return None
            keys.append(key)
    return keys


def read_meta(folder: FolderStore) -> dict[str, Any] | None:
    for base in folder.read_dirs:
        meta = atomic.read_json(base / "index" / META_NAME)
        if isinstance(meta, dict):
            return meta
    return None


def _current_dir(folder: FolderStore, index: FolderIndex) -> Path | None:
    """The index directory (write location first) whose files match ``index``, if any.

    A folder without vectors is current when it has no index files at all.
    """
    for base in folder.read_dirs:
        directory = base / "index"
        meta = atomic.read_json(directory / META_NAME)
        if not index.labels:
            if meta is None and not (directory / GRAPH_NAME).exists():
                continue
            return None
        if not isinstance(meta, dict):
            continue
        wanted = {"format": INDEX_FORMAT, "model": index.model_id, "dim": index.dim,
                  "count": len(index.labels), "fingerprint": index.fingerprint}
        if any(meta.get(k) != v for k, v in wanted.items()):
            continue
        try:
            if _checksum(directory / GRAPH_NAME) == meta.get("checksum"):
                return directory
        except OSError:
            continue
    return folder.index_dir() if not index.labels else None


def write_index(index: FolderIndex) -> None:
    """Build the graph and write it, then the meta that vouches for it (both atomically)."""
    directory = index.folder.index_dir()
    directory.mkdir(parents=True, exist_ok=True)
    graph = build_graph(index.vectors)
    checksum = save_graph_file(graph, directory / GRAPH_NAME)
    meta = {
        "format": INDEX_FORMAT, "model": index.model_id, "dim": index.dim,
        "count": len(index.labels), "fingerprint": index.fingerprint, "checksum": checksum,
        "labels": [[label.name, label.index, label.time] for label in index.labels],
    }
    atomic.write_json(directory / META_NAME, meta)
    index._graph = graph
    index.directory = directory


def remove(folder: FolderStore) -> None:
    for name in (META_NAME, GRAPH_NAME):
        with contextlib.suppress(OSError):
            (folder.index_dir() / name).unlink()


def _read_graph(path: Path, index: FolderIndex) -> Any:
    """The graph file if it is the one the meta vouches for, else one rebuilt in memory."""
    import hnswlib

    meta = atomic.read_json(path.with_name(META_NAME))
    try:
        if isinstance(meta, dict) and meta.get("fingerprint") == index.fingerprint \
                and meta.get("checksum") == _checksum(path):
            graph = hnswlib.Index(space="ip", dim=index.dim)
            graph.load_index(str(path), max_elements=len(index.labels))
            return graph
    except (OSError, RuntimeError) as exc:
        log.warning("%s is unreadable (%s); rebuilding it from the records", path, exc)
    return build_graph(index.vectors)


def save_graph_file(graph: Any, target: Path) -> str:
    """Write an hnswlib graph atomically; returns the file's checksum."""
    tmp = atomic.temp_name(target)
    try:
        graph.save_index(str(tmp))
        with open(tmp, "rb+") as fh:
            os.fsync(fh.fileno())
        checksum = _checksum(tmp)
        os.replace(tmp, target)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return checksum


def read_graph_file(path: Path, dim: int, checksum: str) -> Any | None:
    """The graph in ``path`` if its bytes match ``checksum``; None when missing or damaged."""
    import hnswlib

    try:
        if _checksum(path) != checksum:
            return None
        graph = hnswlib.Index(space="ip", dim=dim)
        graph.load_index(str(path), allow_replace_deleted=False)
        return graph
    except (OSError, RuntimeError) as exc:
        log.warning("%s is unreadable (%s)", path, exc)
        return None


def _checksum(path: Path) -> str:
    digest = hashlib.blake2b(digest_size=16)
    with open(path, "rb") as fh:
        while chunk := fh.read(1 << 20):
            digest.update(chunk)
    return "b2:" + digest.hexdigest()


def build_graph(vectors: np.ndarray, labels: np.ndarray | None = None, capacity: int = 0,
                threads: int = 1) -> Any:
    import hnswlib

    count, dim = vectors.shape
    graph = hnswlib.Index(space="ip", dim=dim)
    graph.init_index(max_elements=max(capacity, count, 1), M=HNSW_M,
                     ef_construction=HNSW_EF_CONSTRUCTION)
    graph.set_num_threads(max(1, threads))
    if count:
        graph.add_items(vectors, np.arange(count) if labels is None else labels)
    return graph


def matvec(matrix: np.ndarray, vectors: np.ndarray) -> np.ndarray:
    """``matrix @ vectors.T``: one column per vector (a single vector gives a flat array).

    numpy's own loop, not BLAS: on a busy two-core machine OpenBLAS's threads make a
    small product take milliseconds now and then; this one is steady and as fast for the
    sizes search uses.
    """
    vectors = np.asarray(vectors, dtype=np.float32)
    if vectors.ndim == 1:
        return np.einsum("ij,j->i", matrix, vectors)
    return np.einsum("ij,kj->ik", matrix, vectors)


def _top(scores: np.ndarray, k: int) -> np.ndarray:
    if k >= scores.size:
        return np.argsort(-scores, kind="stable")
    part = np.argpartition(-scores, k - 1)[:k]
    return part[np.argsort(-scores[part], kind="stable")]


# -- the in-memory set ------------------------------------------------------------------
# A filtered subset at least this large is searched in the graph with a filter (100k
# vectors: 2.6 ms for a 30 % subset, 35 ms for 1 %); a narrower one is scored exactly, which
# reads its vectors back from the graph at about 40 us each.
GRAPH_SUBSET_MIN = 1000


class VectorSet:
    """Unit vectors addressed by row, each owned by an item id; exact or HNSW search.

    Rows are never reused: a removed row is only marked dead (and deleted from the graph),
    so a row number stays valid for a reader holding it.  The graph names vectors by its
    own labels, mapped to rows, so a graph saved by an earlier run can be attached to rows
    laid out anew (:meth:`attach`).  Thread-safe.

    Below ``ann_min`` vectors they live in a float32 matrix and search is exact.  Once a
    graph holds every live vector the matrix is let go and the graph is the only copy
    (hnswlib keeps its own float32 copy of each vector): at 100k vectors of 512 that is
    200 MB less.  Vectors are then read back from the graph for the few rows a query
    scores, and a narrow filtered subset is still searched exactly.
    """

    def __init__(self, dim: int, ann_min: int = 20000, threads: int = 1,
                 on_graph: Callable[[], object] | None = None):
        self.dim = dim
        self.ann_min = ann_min
        self.threads = threads
        self.on_graph = on_graph  # called (in the building thread) when a graph is ready
        self._lock = threading.RLock()
        self._matrix: np.ndarray | None = np.zeros((1024, dim), dtype=np.float32)
        self._owner = np.full(1024, -1, dtype=np.int64)
        self._time = np.full(1024, np.nan, dtype=np.float64)
        self._alive = np.zeros(1024, dtype=bool)
        self._size = 0
        self._live = 0
        self._changes = 0  # bumped by every add and remove
        self._sample: tuple[tuple[int, int], np.ndarray] | None = None
        self._graph: Any = None
        self._label_row = np.zeros(0, dtype=np.int64)  # graph label -> row (-1: deleted)
        self._row_label = np.full(1024, -1, dtype=np.int64)  # row -> graph label (-1: none)
        self._building: threading.Thread | None = None
        self._build_thread: threading.Thread | None = None
        self._added_while_building: list[int] = []

    # -- contents -------------------------------------------------------------------
    def __len__(self) -> int:
        return self._live

    @property
    def dead(self) -> int:
        """Rows of removed vectors still taking memory (until the set is rebuilt)."""
        return self._size - self._live

    @property
    def in_graph_only(self) -> bool:
        """Whether the graph holds the only copy of the vectors (no matrix)."""
        return self._matrix is None

    def reserve(self, count: int) -> None:
        """Room for ``count`` more rows at once: a load that knows its size grows the arrays
        once, instead of doubling (and copying) them a dozen times on the way to 100k rows."""
        with self._lock:
            self._grow(self._size + count)

    def add(self, vectors: np.ndarray, owner: int, times: list[float | None]) -> np.ndarray:
        """Append rows for one item; returns their row numbers."""
        count = len(times)
        vectors = np.asarray(vectors, dtype=np.float32).reshape(count, self.dim)
        with self._lock:
            self._grow(self._size + count)
            rows = np.arange(self._size, self._size + count)
            if self._matrix is not None:
                self._matrix[rows] = vectors
            self._take_rows(rows, owner, [np.nan if t is None else t for t in times], vectors)
            return rows

    def add_block(self, vectors: np.ndarray, owners: np.ndarray, times: np.ndarray) -> np.ndarray:
        """Append many rows at once (a load): ``owners[i]`` owns row i, ``times[i]`` is its
        time (NaN: none); returns the row numbers."""
        count = len(owners)
        with self._lock:
            if self._matrix is None:
                raise RuntimeError("a block is added before the graph is built")
            if self._size == 0 and count > self._owner.shape[0]:
                # a first block larger than the room made is taken as it is (a mapped file:
                # no copy)
                self._matrix = vectors
                self._reset_rows(count)
            else:
                self._grow(self._size + count)
                self._matrix[self._size: self._size + count] = vectors
            rows = np.arange(self._size, self._size + count)
            self._take_rows(rows, owners, times, None)
            return rows

    def _take_rows(self, rows: np.ndarray, owners: Any, times: Any,
                   vectors: np.ndarray | None) -> None:
        """Make appended ``rows`` live (lock held): owners, times, and a place in the graph
        (now, after the build under way, or by starting one).  ``vectors`` are the rows'
        vectors, or ``None`` when the matrix holds them (read only if the graph needs them)."""
        self._owner[rows] = owners
        self._time[rows] = times
        self._alive[rows] = True
        self._size += len(rows)
        self._live += len(rows)
        self._changes += 1
        if self._building is not None:
            self._added_while_building.extend(rows.tolist())
        elif self._graph is not None:
            if vectors is None:
                assert self._matrix is not None  # a block's rows lie in the matrix
                vectors = self._matrix[rows]
            self._label_rows(self._graph, rows, vectors)
        else:
            self._maybe_build()

    def remove(self, rows: Iterable[int]) -> None:
        with self._lock:
            for row in rows:
                if row < self._size and self._alive[row]:
                    self._alive[row] = False
                    self._live -= 1
                    self._changes += 1
                    label = int(self._row_label[row])
                    if label >= 0 and self._graph is not None:
                        self._row_label[row] = -1
                        self._label_row[label] = -1
                        with contextlib.suppress(RuntimeError):
                            self._graph.mark_deleted(label)

    def owner(self, rows: np.ndarray) -> np.ndarray:
        return self._owner[rows]

    def time(self, row: int) -> float | None:
        value = float(self._time[row])
        return None if np.isnan(value) else value

    def times(self, rows: np.ndarray) -> np.ndarray:
        """The times of ``rows`` (NaN: none), in one array."""
        with self._lock:
            return self._time[np.asarray(rows, dtype=np.int64)]

    def gather(self, rows: np.ndarray, block: int = 8192) -> np.ndarray:
        """The vectors of live ``rows`` in one array, for saving.  Rows one run of the matrix
        come as a view of it (no copy of a whole library's vectors: a row's vector is never
        rewritten), others are copied, from the graph a block at a time."""
        rows = np.asarray(rows, dtype=np.int64)
        with self._lock:
            matrix = self._matrix
            if matrix is not None and rows.size and int(rows[-1]) - int(rows[0]) == rows.size - 1 \
                    and bool((np.diff(rows) == 1).all()):
                return matrix[int(rows[0]): int(rows[-1]) + 1]
            if matrix is not None:
                return matrix[rows]
        out = np.empty((rows.size, self.dim), dtype=np.float32)
        for i in range(0, rows.size, block):
            out[i: i + block] = self.vectors(rows[i: i + block])
        return out

    def vectors(self, rows: np.ndarray) -> np.ndarray:
        """The vectors of live ``rows`` (a copy once the graph holds them)."""
        rows = np.asarray(rows, dtype=np.int64)
        with self._lock:
            if self._matrix is not None:
                return self._matrix[rows]
            if not rows.size:
                return np.zeros((0, self.dim), dtype=np.float32)
            labels = self._row_label[rows]
            if (labels < 0).any():
                raise KeyError("vectors of removed rows are gone")
            return np.asarray(self._graph.get_items(labels.tolist(), return_type="numpy"),
                              dtype=np.float32).reshape(rows.size, self.dim)

    def live_rows(self) -> np.ndarray:
        with self._lock:
            return np.flatnonzero(self._alive[: self._size])

    def sample(self, count: int) -> np.ndarray:
        """Up to ``count`` live vectors chosen at random; the same until the set changes."""
        with self._lock:
            cached = self._sample
            if cached is not None and cached[0] == (self._changes, count):
                return cached[1]
            rows = self.live_rows()
            if rows.size > count:
                rows = np.sort(np.random.default_rng(0).choice(rows, count, replace=False))
            sample = np.array(self.vectors(rows))
            self._sample = ((self._changes, count), sample)
            return sample

    # -- search ---------------------------------------------------------------------
    def search(self, query: np.ndarray, k: int, rows: np.ndarray | None = None
               ) -> tuple[np.ndarray, np.ndarray]:
        """Rows and scores of the ``k`` best live rows (among ``rows`` when given), best first.

        Through the graph when there is one, for the whole set or a wide subset; exact
        over a narrow subset, a small set, or when the graph cannot answer.
        """
        query = np.asarray(query, dtype=np.float32).reshape(-1)
        with self._lock:
            wide = rows is None or rows.size >= GRAPH_SUBSET_MIN
            if self._graph is not None and wide and k < self._live:
                try:
                    return self._graph_search(query, k, rows)
                except RuntimeError:  # too few live neighbours reachable: answer exactly
                    pass
            if rows is None and self._matrix is not None:  # no gather copy of the whole matrix
                candidates = np.flatnonzero(self._alive[: self._size])
                scores = matvec(self._matrix[: self._size], query)[candidates]
            else:
                candidates = self.live_rows() if rows is None else rows[self._alive[rows]]
                scores = self._exact_scores(candidates, query)
        top = _top(scores, min(k, scores.size))
        return candidates[top], scores[top]

    def scores(self, query: np.ndarray, rows: np.ndarray) -> np.ndarray:
        return matvec(self.vectors(rows), query)

    def _exact_scores(self, rows: np.ndarray, query: np.ndarray) -> np.ndarray:
        """Scores of ``rows``, read in blocks (from the graph they are copies)."""
        block = 8192
        return np.concatenate([matvec(self.vectors(rows[i:i + block]), query)
                               for i in range(0, rows.size, block)] or [np.zeros(0, np.float32)])

    def _graph_search(self, query: np.ndarray, k: int, rows: np.ndarray | None
                      ) -> tuple[np.ndarray, np.ndarray]:
        self._graph.set_ef(max(HNSW_EF_MIN, 2 * k))
        if rows is None:
            labels, dist = self._graph.knn_query(query, k=k)
        else:
            allowed = np.zeros(self._label_row.size, dtype=bool)
            chosen = self._row_label[rows]
            allowed[chosen[chosen >= 0]] = True
            labels, dist = self._graph.knn_query(query, k=min(k, int(allowed.sum()) or 1),
                                                 filter=lambda label: bool(allowed[label]))
        found_rows = self._label_row[labels[0].astype(np.int64)]
        scores = (1.0 - dist[0]).astype(np.float32)
        found = found_rows >= 0
        return found_rows[found], scores[found]

    # -- the graph ------------------------------------------------------------------
    @property
    def has_graph(self) -> bool:
        return self._graph is not None

    def wait_for_graph(self, timeout: float | None = None) -> None:
        """Until a build in progress is over, ``on_graph`` (which saves it) included."""
        thread = self._build_thread
        if thread is not None and thread is not threading.current_thread():
            thread.join(timeout)

    def attach(self, graph: Any, label_rows: np.ndarray) -> None:
        """Use a graph built earlier: ``label_rows[label]`` is the row now holding that
        vector, or -1 when it is gone.  Rows the graph lacks are added in the background."""
        with self._lock:
            if self._graph is not None or self._building is not None or self._matrix is None:
                return
            label_rows = np.asarray(label_rows, dtype=np.int64).copy()
            valid = label_rows >= 0
            valid[valid] = self._alive[label_rows[valid]]
            for label in np.flatnonzero(~valid):
                with contextlib.suppress(RuntimeError):  # already deleted in the file
                    graph.mark_deleted(int(label))
            label_rows[~valid] = -1
            covered = np.zeros(self._size, dtype=bool)
            covered[label_rows[valid]] = True
            missing = np.flatnonzero(self._alive[: self._size] & ~covered)
            self._start_build(graph, label_rows, missing)

    def ensure_graph(self) -> None:
        """Start building the graph now if the set is large enough and has none."""
        with self._lock:
            self._maybe_build()

    @property
    def changes(self) -> int:
        return self._changes

    def export(self) -> tuple[Any, np.ndarray] | None:
        """The graph and its label -> row map, for saving (None while there is no graph)."""
        with self._lock:
            if self._graph is None or self._building is not None:
                return None
            return self._graph, self._label_row.copy()

    def _maybe_build(self) -> None:
        if self._live >= self.ann_min and self._graph is None and self._building is None:
            self._start_build(None, np.zeros(0, dtype=np.int64), self.live_rows())

    def _start_build(self, graph: Any, label_rows: np.ndarray, rows: np.ndarray) -> None:
        self._building = threading.Thread(target=self._build, args=(graph, label_rows, rows),
                                          name="ann-build", daemon=True)
        self._build_thread = self._building  # kept after publishing, for wait_for_graph
        self._building.start()

    def _build(self, graph: Any, label_rows: np.ndarray, rows: np.ndarray) -> None:
        """Build (or complete) a graph outside the lock, catch up, publish under the lock."""
        try:
            with self._lock:
                assert self._matrix is not None  # a set builds its first graph only
                vectors = self._matrix[rows].copy()
                capacity = max(2 * self._size, 1024)
            if graph is None:
                graph = build_graph(vectors, capacity=capacity, threads=self.threads)
                label_rows = rows.astype(np.int64)
            else:
                label_rows = _extend(graph, label_rows, vectors, rows, self.threads)
            del vectors
            while True:
                with self._lock:
                    pending = np.asarray(self._added_while_building, dtype=np.int64)
                    self._added_while_building = []
                    if pending.size < 256:
                        self._publish(graph, label_rows, pending)
                        break
                    pending = pending[self._alive[pending]]
                    vectors = self._matrix[pending].copy()
                label_rows = _extend(graph, label_rows, vectors, pending, self.threads)
        except Exception:  # exact search keeps answering
            log.exception("building the vector graph failed")
            with self._lock:
                self._building = None
            return
        log.info("vector graph ready: %d vectors", self._live)
        if self.on_graph is not None:
            self.on_graph()

    def _publish(self, graph: Any, label_rows: np.ndarray, pending: np.ndarray) -> None:
        self._graph = graph
        self._label_row = label_rows
        self._row_label[:] = -1
        valid = np.flatnonzero(label_rows >= 0)
        self._row_label[label_rows[valid]] = valid
        for label in valid[~self._alive[label_rows[valid]]]:  # removed during the build
            self._label_row[label] = -1
            self._row_label[label_rows[label]] = -1
            with contextlib.suppress(RuntimeError):
                graph.mark_deleted(int(label))
        assert self._matrix is not None
        self._label_rows(graph, pending, self._matrix[pending])
        self._building = None
        self._matrix = None  # the graph now holds every live vector

    def _label_rows(self, graph: Any, rows: np.ndarray, vectors: np.ndarray) -> None:
        alive = self._alive[rows] if rows.size else np.zeros(0, bool)
        rows, vectors = rows[alive], vectors[alive]
        if rows.size:
            self._label_row = _extend(graph, self._label_row, vectors, rows, 1)
            self._row_label[rows] = np.arange(self._label_row.size - rows.size,
                                              self._label_row.size)

    def _reset_rows(self, capacity: int) -> None:
        self._owner = np.full(capacity, -1, dtype=np.int64)
        self._time = np.full(capacity, np.nan, dtype=np.float64)
        self._alive = np.zeros(capacity, dtype=bool)
        self._row_label = np.full(capacity, -1, dtype=np.int64)

    def _grow(self, needed: int) -> None:
        """Room for ``needed`` rows; the matrix is always a writable copy after."""
        capacity = self._owner.shape[0]
        if needed <= capacity and (self._matrix is None or self._matrix.flags.writeable):
            return
        new = max(needed, 2 * capacity)
        if self._matrix is not None:
            matrix = np.zeros((new, self.dim), dtype=np.float32)
            matrix[: self._matrix.shape[0]] = self._matrix
            self._matrix = matrix
        extra = new - capacity
        self._owner = np.concatenate([self._owner, np.full(extra, -1, np.int64)])
        self._time = np.concatenate([self._time, np.full(extra, np.nan)])
        self._alive = np.concatenate([self._alive, np.zeros(extra, bool)])
        self._row_label = np.concatenate([self._row_label, np.full(extra, -1, np.int64)])


def _extend(graph: Any, label_rows: np.ndarray, vectors: np.ndarray, rows: np.ndarray,
            threads: int) -> np.ndarray:
    """Add ``vectors`` (of ``rows``) to ``graph`` under the next labels; the longer map."""
    if not rows.size:
        return label_rows
    start = max(label_rows.size, graph.get_current_count())
    labels = np.arange(start, start + rows.size)
    needed = int(labels[-1]) + 1
    if needed > graph.get_max_elements():
        graph.resize_index(max(2 * needed, graph.get_max_elements()))
    graph.set_num_threads(max(1, threads))
    graph.add_items(vectors, labels)
    grown = np.full(start + rows.size, -1, dtype=np.int64)
    grown[: label_rows.size] = label_rows
    grown[labels] = rows
    return grown

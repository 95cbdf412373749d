"""The in-memory view of every folder a daemon (or a direct-mode query) serves.

Built for 100k-photo libraries on a small machine, so it holds as little as it can:

- Each item is a row: the fields filters read are numpy columns
  (:mod:`scanpixd.query.columns`), the record itself is kept as compact JSON bytes
  (slim: no raw metadata dump, no CLIP vectors) and decoded only when asked for.
  :class:`Item` objects are made on demand and are read-only views.
- CLIP vectors of the configured model go into one :class:`VectorSet` across all roots, so
  a text query is one HNSW lookup (or one matrix product in a small library) instead of a
  walk over folders.  Vectors of another model are ignored, never mixed in: those files
  are re-embedded by the indexer and come back through :meth:`Library.update`.
- A machine-local snapshot (``cache_dir/library/``, one mmap'd file) holds the rows of
  every folder as they were last seen, with each folder's signature: the name, size,
  mtime, ctime and inode of every record file.  At start a folder whose record files are
  exactly as signed is taken from the snapshot (its record bytes stay on disk, mapped,
  until a query reads them); any other folder is read from its records.  A folder
  changed in the last seconds is never signed (timestamps may not yet tell versions
  apart), and one changed while loaded is left unsigned, so the snapshot never vouches
  for what it has not read.

The daemon (``write_indexes``) also keeps each folder's portable ``index/clip.hnsw``
current: folders read from their records, or changed, are refreshed by :meth:`flush`.
"""

from __future__ import annotations

import base64
import gc
import hashlib
import logging
import os
import sys
import threading
import time
from collections import deque
from collections.abc import Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import orjson

from scanpixd import heap
from scanpixd.config import Settings
from scanpixd.errors import ModelUnavailable
from scanpixd.excludes import Excluder
from scanpixd.models.clip import ClipModel
from scanpixd.query.columns import COLUMNS, Columns, ColumnView, FolderInfo
from scanpixd.record import RECORD_FORMAT, Record
from scanpixd.scan import root_is_online
from scanpixd.store import FolderStore, Store, ann, atomic, snapshot
from scanpixd.store.record_cache import RACY_NS, slim

log = logging.getLogger(__name__)

_NO_ROWS = np.zeros(0, dtype=np.int64)
SNAPSHOT_FORMAT = 2
_NO_KEY = bytes(8)  # a record without vectors, as the snapshot writes it
SNAPSHOT_SAVE_SHARE = 0.1  # a load that read more than this share from records saves at once


@contextmanager
def _collector_paused() -> Iterator[None]:
    """The cyclic garbage collector paused while loading, and what was loaded frozen after.

    A load creates many objects that all stay alive: collections during it only walk
    them again and again, and every later full collection would walk them once more (a
    pause in the middle of a query).  Nothing loaded holds reference cycles, so
    reference counting still frees it when it is dropped.
    """
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        gc.freeze()
        if enabled:
            gc.enable()


class Item:
    """One indexed file, as filters and results see it (``record``, ``path``, ``root``)."""

    __slots__ = ("_blob", "_library", "folder", "id", "name", "root", "rows")

    def __init__(self, library: Library, item_id: int, root: Path, folder: FolderStore,
                 name: str, blob: bytes | memoryview, rows: np.ndarray):
        self._library = library
        self.id = item_id
        self.root = root
        self.folder = folder
        self.name = name
        self._blob = blob
        self.rows = rows  # rows in Library.vectors

    @property
    def record(self) -> Record:
        """The record without its raw metadata dump and CLIP vectors (a fresh copy)."""
        record: Record = orjson.loads(self._blob)
        return record

    @property
    def path(self) -> Path:
        return self.folder.folder / self.name

    def first_vector(self) -> tuple[str, np.ndarray] | None:
        """``("model:width", unit vector)`` of the first frame, as duplicate grouping
        compares them; None without vectors."""
        vectors = self._library.vectors_of(self)
        clip = self.record.get("clip") if vectors.size else None
        if not isinstance(clip, dict):
            return None
        return f"{clip.get('model')}:{vectors.shape[1]}", vectors[0]

    def __repr__(self) -> str:
        return f"Item({self.id}, {str(self.path)!r})"


def lean(record: Record) -> Record:
    """What the library keeps of a record: :func:`slim`, and the CLIP section without its
    vectors (they live in the :class:`VectorSet`)."""
    record = slim(record)
    clip = record.get("clip")
    if isinstance(clip, dict) and "vectors" in clip:
        record = dict(record)
        entries = clip["vectors"]
        record["clip"] = {**{k: v for k, v in clip.items() if k != "vectors"},
                          "count": len(entries) if isinstance(entries, list) else 0}
    return record


def _vector_key(record: Record) -> bytes:
    """A digest of the record's embeddings, to tell whether they changed."""
    clip = record.get("clip")
    if not isinstance(clip, dict) or not isinstance(clip.get("vectors"), list):
        return b""
    try:
        data = orjson.dumps([clip.get("model"), clip["vectors"]])
    except TypeError:
        return b"?"
    return hashlib.blake2b(data, digest_size=8).digest()


@dataclass
class _Loaded:
    """One folder read from its records at load: rows to add, and its signature."""

    folder: FolderStore
    root: Path
    signature: str | None
    records: dict[str, Record]


class Library:
    """Items of every online root; thread-safe; see the module docstring."""

    def __init__(self, settings: Settings, store: Store | None = None,
                 clip: ClipModel | None = None, write_indexes: bool = False):
        self.settings = settings
        self.store = store or Store(settings)
        self.write_indexes = write_indexes
        self.lock = threading.RLock()
        self._clip = clip
        self.roots: list[Path] = []
        self.offline_roots: list[Path] = []
        self.vectors: ann.VectorSet | None = None
        self._dirty: set[Path] = set()
        self._loading = False
        self._saved_changes = -1
        self.last_load: dict[str, float] = {}  # what the last load took from where, and its time
        self._reset()

    def _reset(self) -> None:
        self._columns = Columns()
        self._names: list[str] = []
        self._blobs: list[bytes | memoryview] = []
        self._vkeys: list[bytes] = []
        self._folders: list[FolderStore] = []
        self._folder_info: list[FolderInfo] = []
        self._folder_id: dict[Path, int] = {}
        self._signatures: list[str | None] = []  # per folder; None: not vouched for
        self._by_path: dict[tuple[int, str], int] = {}
        self._live = 0
        self._expected_rows = 0  # vectors a load still expects from records (room made once)
        self._edits = 0  # changes since the snapshot was written
        self._snapshot: snapshot.Snapshot | None = None  # keeps the mapped record bytes alive
        self._graph_as_saved = False  # the graph is the saved one, every label current
        self.vectors = None

    # -- the model ------------------------------------------------------------------
    @property
    def clip(self) -> ClipModel:
        if self._clip is None:
            self._clip = ClipModel(self.settings.clip, cache_dir=self.settings.cache_dir)
        return self._clip

    @property
    def model_id(self) -> str | None:
        """The id of the vectors this library serves; None when the model can't be named."""
        if not self.settings.clip.enabled:
            return None
        try:
            return self.clip.model_id
        except ModelUnavailable:
            return None

    # -- loading --------------------------------------------------------------------
    def load(self, roots: Iterable[Path]) -> None:
        """Read every folder with scanpixd data below ``roots`` (replacing what was loaded)."""
        with _collector_paused():
            self._load([Path(r) for r in roots])

    def _load(self, roots: list[Path]) -> None:
        started = time.monotonic()
        folders: list[tuple[Path, FolderStore]] = []
        offline = []
        for root in roots:
            if not root_is_online(root, self.store):
                log.warning("root %s is offline; its index is kept but not served", root)
                offline.append(root)
                continue
            folders.extend((root, self.store.folder(f)) for f in self._folders_below(root))
        model_id = self.model_id
        snap = self._read_snapshot(model_id)
        signed = _signed_folders(snap)
        with ThreadPoolExecutor(max_workers=max(2, min(4, self.settings.jobs))) as pool, \
                self.lock:
            signed_sizes = list(pool.map(lambda rf: _signature_and_size(rf[1]), folders))
            signatures = [signature for signature, _ in signed_sizes]
            reuse = [(root, folder, signed[folder.folder], sig)
                     for (root, folder), sig in zip(folders, signatures, strict=True)
                     if sig is not None and signed.get(folder.folder, (None, ""))[1] == sig]
            reused = {folder.folder for _, folder, _, _ in reuse}
            unsigned = [(root, folder, sig) for (root, folder), sig in zip(folders, signatures, strict=True)
                        if folder.folder not in reused]
            self.roots, self.offline_roots = roots, offline
            self._reset()
            self._expected_rows = sum(size for (_, folder), (_, size)
                                      in zip(folders, signed_sizes, strict=True)
                                      if folder.folder not in reused)
            self._loading = True
            vector_rows = _NO_ROWS
            read = 0
            try:
                if snap is not None and reuse:
                    self._snapshot = snap
                    vector_rows = self._add_from_snapshot(snap, reuse)
                for loaded in _read_folders(pool, unsigned):  # a few folders in memory at a time
                    self._add_folder(loaded, model_id)
                    read += len(loaded.records)
            finally:
                self._loading = False
            self._dirty.update(folder.folder for _, folder, _ in unsigned)
            self._edits = len(unsigned)
            build = False
            if self.vectors is not None and model_id is not None:
                self.vectors.ann_min = self.settings.clip.ann_min
                build = not self._attach_saved_graph(snap, vector_rows)
            if not unsigned and self.vectors is not None:
                self._saved_changes = self.vectors.changes  # as the snapshot has it
        self.last_load = {"items": self._live, "from_records": read,
                          "from_snapshot": self._live - read, "folders": len(folders),
                          "folders_read": len(unsigned),
                          "seconds": round(time.monotonic() - started, 3)}
        log.info("library loaded in %.1f s: %d items (%d read from records), %d vectors, "
                 "%d folders", time.monotonic() - started, self._live, read,
                 len(self.vectors) if self.vectors is not None else 0, len(folders))
        if unsigned and (snap is None or read > SNAPSHOT_SAVE_SHARE * max(1, self._live)):
            self.save_snapshot()
        if build and self.vectors is not None:  # after the save: on two cores they would compete
            self.vectors.ensure_graph()
        self.release_pages()
        heap.trim()

    def _folders_below(self, root: Path) -> Iterator[Path]:
        """Folders below ``root`` that hold scanpixd data (excluded folders left out)."""
        excluder = Excluder.from_settings(self.settings)
        stack = [(root, "")]
        while stack:
            folder, rel = stack.pop()
            if self.store.folder(folder).exists():
                yield folder
            try:
                with os.scandir(folder) as entries:
                    children = [e for e in entries if e.is_dir(follow_symlinks=False)]
            except OSError:
                continue
            for entry in sorted(children, key=lambda e: e.name, reverse=True):
                if not excluder.excluded_child(rel, entry.name, is_dir=True):
                    stack.append((Path(entry.path), f"{rel}/{entry.name}" if rel else entry.name))

    def _add_folder(self, loaded: _Loaded, model_id: str | None) -> None:
        """A folder's records, in name order, as :meth:`_append` adds them one by one, but
        each step done for the whole folder at once (a load adds 100k of them)."""
        folder_id = self._folder_index(loaded.folder, loaded.root, loaded.signature)
        names = sorted(loaded.records)
        records = [loaded.records[name] for name in names]
        first = self._columns.append_many(records, folder_id)
        self._names.extend(names)
        self._blobs.extend([orjson.dumps(lean(record)) for record in records])
        self._vkeys.extend([_vector_key(record) for record in records])
        self._by_path.update(zip(((folder_id, name) for name in names),
                                 range(first, first + len(names)), strict=True))
        self._live += len(names)
        if model_id:
            self._add_vectors(first, records, model_id)

    def _add_vectors(self, first: int, records: list[Record], model_id: str) -> None:
        """The vectors of ``records`` (items ``first``, ``first + 1``, ...), decoded and added
        as one block when they share the set's width; else one record at a time, as
        :meth:`_append` does (a width that replaces the set)."""
        block = ann.record_block(records, model_id)
        vectors = self.vectors
        if block is None or (block.vectors.size and vectors is not None
                             and (vectors.dim != block.dim or vectors.in_graph_only)):
            for i, record in enumerate(records):
                self._add_vectors_of(first + i, record, model_id)
            return
        if not block.vectors.size:
            return
        owners = np.repeat(np.arange(first, first + len(records)), block.counts)
        vector_set = self._vector_set(block.dim)
        if self._expected_rows:  # grown once, not doubled (and copied) a dozen times
            # a record per file, some with a few frames more; rows never used cost nothing
            # (their pages are never touched)
            vector_set.reserve(self._expected_rows + self._expected_rows // 4)
            self._expected_rows = 0
        rows = vector_set.add_block(block.vectors, owners, block.times)
        has = np.flatnonzero(block.counts)
        offsets = np.concatenate([[0], np.cumsum(block.counts[has])[:-1]]).astype(np.int64)
        self._columns.arrays["row_start"][first + has] = rows[offsets]
        self._columns.arrays["row_count"][first + has] = block.counts[has]

    def _folder_index(self, folder: FolderStore, root: Path, signature: str | None = None) -> int:
        found = self._folder_id.get(folder.folder)
        if found is not None:
            return found
        self._folder_id[folder.folder] = len(self._folders)
        self._folders.append(folder)
        self._folder_info.append(FolderInfo(folder.folder, root))
        self._signatures.append(signature)
        return len(self._folders) - 1

    def _append(self, folder_id: int, name: str, record: Record, model_id: str | None) -> int:
        item_id = self._columns.append(record, folder_id)
        self._names.append(name)
        self._blobs.append(orjson.dumps(lean(record)))
        self._vkeys.append(_vector_key(record))
        self._by_path[(folder_id, name)] = item_id
        self._live += 1
        if model_id:
            self._add_vectors_of(item_id, record, model_id)
        return item_id

    def _add_vectors_of(self, item_id: int, record: Record, model_id: str) -> None:
        found = ann.record_vectors(record, model_id)
        if found:
            vectors = np.stack([v for _, _, v in found])
            rows = self._vector_set(vectors.shape[1]).add(vectors, item_id, [t for _, t, _ in found])
            self._columns.arrays["row_start"][item_id] = rows[0]
            self._columns.arrays["row_count"][item_id] = rows.size

    def _vector_set(self, dim: int) -> ann.VectorSet:
        if self.vectors is None or self.vectors.dim != dim:
            if self.vectors is not None:
                log.warning("vectors of width %d replace width %d", dim, self.vectors.dim)
                self._columns.arrays["row_count"][:] = 0
            threads = self.settings.clip.threads or (os.cpu_count() or 1)
            ann_min = sys.maxsize if self._loading else self.settings.clip.ann_min
            self.vectors = ann.VectorSet(dim, ann_min=ann_min, threads=threads,
                                         on_graph=self._on_graph)
        return self.vectors

    # -- reading --------------------------------------------------------------------
    def __len__(self) -> int:
        return self._live

    def items(self, with_faces: bool = False) -> list[Item]:
        """A snapshot of every item, or of those whose record lists faces (safe to iterate
        while the library changes)."""
        with self.lock:
            wanted = self._columns.alive & self._columns.faces if with_faces else self._columns.alive
            return [self._item(int(i)) for i in np.flatnonzero(wanted)]

    def item(self, item_id: int) -> Item | None:
        with self.lock:
            if 0 <= item_id < self._columns.size and self._columns.alive[item_id]:
                return self._item(item_id)
            return None

    def _item(self, item_id: int) -> Item:
        c = self._columns.arrays
        folder_id = int(c["folder"][item_id])
        count = int(c["row_count"][item_id])
        rows = np.arange(int(c["row_start"][item_id]), int(c["row_start"][item_id]) + count) \
            if count else _NO_ROWS
        return Item(self, item_id, self._folder_info[folder_id].root, self._folders[folder_id],
                    self._names[item_id], self._blobs[item_id], rows)

    def get(self, path: Path) -> Item | None:
        """The item of an absolute file path, if the library holds it."""
        path = Path(os.path.abspath(path))
        with self.lock:
            folder_id = self._folder_id.get(path.parent)
            item_id = None if folder_id is None else self._by_path.get((folder_id, path.name))
            return None if item_id is None else self._item(item_id)

    def release_pages(self) -> None:
        """Let go of the mapped snapshot pages a pass over every record brought in."""
        snap = self._snapshot
        if snap is not None:
            snap.release_pages()

    def view(self) -> ColumnView:
        """The columns filters read (call with :attr:`lock` held, and use while held)."""
        return ColumnView(self._columns, self._folder_info, self.item)

    def rows_of(self, item_ids: np.ndarray) -> np.ndarray:
        """Every vector row of the given items, in their order."""
        c = self._columns.arrays
        return _expand(c["row_start"][item_ids], c["row_count"][item_ids])

    def root_of(self, path: Path) -> Path | None:
        """The (longest) configured root that contains ``path``."""
        path = Path(os.path.abspath(path))
        found = [r for r in self.roots if path == r or r in path.parents]
        return max(found, key=lambda r: len(r.parts)) if found else None

    def full_record(self, item: Item) -> Record:
        """The item's record as stored (with the raw metadata dump and the vectors)."""
        return item.folder.read(item.name) or item.record

    def vectors_of(self, item: Item) -> np.ndarray:
        """The item's unit vectors of the served model (0 rows when it has none)."""
        with self.lock:
            if self.vectors is None or not item.rows.size:
                return np.zeros((0, self.vectors.dim if self.vectors else 0), np.float32)
            try:
                return np.array(self.vectors.vectors(item.rows))
            except KeyError:  # replaced since the item was taken
                return np.zeros((0, self.vectors.dim), np.float32)

    # -- changes --------------------------------------------------------------------
    def update(self, folder: FolderStore | Path, name: str, record: Record) -> Item | None:
        """Add or replace the item of ``folder/name`` after its record was written."""
        folder = self._folder(folder)
        root = self.root_of(folder.folder / name)
        if root is None:
            return None
        model_id = self.model_id
        with self.lock:
            folder_id = self._folder_index(folder, root)
            self._touched(folder_id)
            old = self._by_path.get((folder_id, name))
            key = _vector_key(record)
            if old is not None and self._columns.row_count[old] and self._vkeys[old] == key:
                self._columns.set(old, record, folder_id)  # same vectors: keep the rows
                self._blobs[old] = orjson.dumps(lean(record))
                return self._item(old)
            self._drop(folder_id, name)
            return self._item(self._append(folder_id, name, record, model_id))

    def remove(self, folder: FolderStore | Path, name: str) -> None:
        folder = self._folder(folder)
        with self.lock:
            folder_id = self._folder_id.get(folder.folder)
            if folder_id is not None and self._drop(folder_id, name):
                self._touched(folder_id)

    def move(self, source: FolderStore | Path, old_name: str, target: FolderStore | Path,
             new_name: str, record: Record) -> Item | None:
        """A file was moved or renamed: its results follow it."""
        self.remove(source, old_name)
        return self.update(target, new_name, record)

    def remove_folder(self, folder: Path) -> None:
        """Forget every item directly in ``folder`` (deleted, or moved out of the roots)."""
        with self.lock:
            folder_id = self._folder_id.get(folder)
            if folder_id is None:
                return
            for key in [k for k in self._by_path if k[0] == folder_id]:
                self._drop(*key)
            self._touched(folder_id)

    def _touched(self, folder_id: int) -> None:
        self._signatures[folder_id] = None  # the snapshot can no longer vouch for it
        self._dirty.add(self._folders[folder_id].folder)
        self._edits += 1

    def _drop(self, folder_id: int, name: str) -> bool:
        item_id = self._by_path.pop((folder_id, name), None)
        if item_id is None:
            return False
        self._columns.kill(item_id)
        self._blobs[item_id] = b"{}"
        self._live -= 1
        count = int(self._columns.row_count[item_id])
        if self.vectors is not None and count:
            start = int(self._columns.row_start[item_id])
            self.vectors.remove(range(start, start + count))
        return True

    def _folder(self, folder: FolderStore | Path) -> FolderStore:
        return folder if isinstance(folder, FolderStore) else self.store.folder(Path(folder))

    # -- the snapshot -----------------------------------------------------------------
    def _snapshot_path(self, model_id: str | None) -> Path:
        digest = hashlib.blake2b((model_id or "").encode(), digest_size=8).hexdigest()
        return self.settings.cache_dir / "library" / f"snapshot-{digest}.bin"

    def _read_snapshot(self, model_id: str | None) -> snapshot.Snapshot | None:
        snap = snapshot.read(self._snapshot_path(model_id))
        if snap is None:
            return None
        wanted = {"format": SNAPSHOT_FORMAT, "record_format": RECORD_FORMAT, "model": model_id,
                  "columns": sorted(COLUMNS)}
        if any(snap.meta.get(k) != v for k, v in wanted.items()):
            return None
        return snap

    def _add_from_snapshot(self, snap: snapshot.Snapshot, reuse: list[tuple[Any, ...]]
                           ) -> np.ndarray:
        """Rows of the folders whose records are as the snapshot signed them, in bulk;
        returns where each of the snapshot's vectors went (-1: not taken)."""
        parts = []
        for root, folder, (index, _), signature in reuse:
            folder_id = self._folder_index(folder, root, signature)
            start, count = snap.meta["folders"][index][2:4]
            parts.append((folder_id, start, count))
        take = np.concatenate([np.arange(s, s + n) for _, s, n in parts]) if parts else _NO_ROWS
        folder_ids = np.concatenate([np.full(n, f, np.int32) for f, _, n in parts]) \
            if parts else np.zeros(0, np.int32)
        return _SnapshotRows(snap, take).copy_into(self, folder_ids)

    def save_snapshot(self) -> bool:
        """Write the snapshot of what is loaded (see the module docstring)."""
        model_id = self.model_id
        path = self._snapshot_path(model_id)
        with self.lock:
            try:
                order = _write_snapshot(self, path, model_id)
            except OSError as exc:
                log.warning("cannot save the library snapshot in %s: %s", path.parent, exc)
                return False
            self._edits = 0
            self._saved_changes = self.vectors.changes if self.vectors is not None else -1
            self._map_blobs(path, order)
        return True

    def _map_blobs(self, path: Path, order: np.ndarray) -> None:
        """Point the records at the file just written, so their bytes leave the heap."""
        snap = snapshot.read(path)
        if snap is None:
            return
        blobs, ends = snap.bytes_view("blobs"), snap.array("blob_ends").tolist()
        for item_id, start, end in zip(order.tolist(), [0, *ends][:-1], ends, strict=True):
            self._blobs[item_id] = blobs[start:end]
        self._snapshot = snap

    # -- the saved graph ------------------------------------------------------------
    def _graph_path(self, model_id: str | None) -> Path:
        return self._snapshot_path(model_id).with_suffix(".hnsw")

    def _on_graph(self) -> None:
        """A graph was built: keep it (with the snapshot it maps into) for the next start,
        unless it is the saved one, whole, and nothing changed since."""
        if not (self._graph_as_saved and not self._edits):
            self.save_snapshot()

    def _attach_saved_graph(self, snap: snapshot.Snapshot | None, vector_rows: np.ndarray) -> bool:
        """Use the graph saved with ``snap``; ``vector_rows[r]`` is the row now holding the
        snapshot's vector ``r`` (-1: not loaded from the snapshot)."""
        vectors = self.vectors
        if vectors is None or snap is None or len(vectors) < vectors.ann_min \
                or not isinstance(snap.meta.get("graph"), str):
            return False
        labels = snap.array("graph_labels")  # graph label -> snapshot vector (-1: none)
        label_rows = np.where(labels >= 0, vector_rows[np.maximum(labels, 0)], -1) \
            if vector_rows.size else np.full(labels.size, -1, np.int64)
        if (label_rows >= 0).sum() < len(vectors) // 2:
            return False  # mostly changed: a new graph is as quick and better balanced
        graph = ann.read_graph_file(self._graph_path(self.model_id), vectors.dim, snap.meta["graph"])
        if graph is None or graph.get_current_count() != label_rows.size:
            return False
        vectors.attach(graph, label_rows)
        self._graph_as_saved = bool((label_rows >= 0).all()) and label_rows.size == len(vectors)
        log.info("vector graph reused (%d of %d labels current)", int((label_rows >= 0).sum()),
                 label_rows.size)
        return True

    def close(self) -> None:
        """Save what is worth keeping (the graph, the snapshot) before the process ends."""
        self.flush()
        if self.vectors is not None:
            self.vectors.wait_for_graph(timeout=60)
        changed = self.vectors is not None and self.vectors.changes != self._saved_changes
        if self._edits or changed:
            self.save_snapshot()

    def compact(self) -> None:
        """Drop the rows of replaced and removed vectors (a new graph is built meanwhile)."""
        with self.lock:
            old = self.vectors
            if old is None:
                return
            self.vectors = None
            c = self._columns
            for item_id in np.flatnonzero(c.alive & (c.row_count > 0)).tolist():
                start, count = int(c.row_start[item_id]), int(c.row_count[item_id])
                rows = np.arange(start, start + count)
                times = [old.time(int(r)) for r in rows]
                new = self._vector_set(old.dim).add(old.vectors(rows), item_id, times)
                c.arrays["row_start"][item_id] = new[0]

    def flush(self) -> int:
        """Rewrite the portable index of every folder changed since the last flush, and
        compact the vectors when most rows are dead."""
        model_id = self.model_id
        with self.lock:
            if self.vectors is not None and self.vectors.dead > max(10000, len(self.vectors)):
                self.compact()
            dirty, self._dirty = self._dirty, set()
        if model_id is None or not self.write_indexes:
            return 0
        for path in sorted(dirty):
            folder = self.store.folder(path)
            try:
                ann.load_or_rebuild(folder, folder.records(full=False), model_id)
            except OSError as exc:
                log.warning("cannot write the vector index of %s: %s", path, exc)
        return len(dirty)


def _expand(starts: np.ndarray, counts: np.ndarray) -> np.ndarray:
    """Every row of the runs ``starts[i] .. starts[i] + counts[i]``, in order."""
    counts = counts.astype(np.int64)
    keep = counts > 0
    starts, counts = starts[keep], counts[keep]
    if not counts.size:
        return _NO_ROWS
    firsts = np.concatenate([[0], np.cumsum(counts)[:-1]])
    return np.repeat(starts - firsts, counts) + np.arange(int(counts.sum()))


def _read_folders(pool: ThreadPoolExecutor, folders: list[tuple[Path, FolderStore, str | None]],
                  ahead: int = 8) -> Iterator[_Loaded]:
    """Each folder's records, read on ``pool`` at most ``ahead`` folders ahead of their use
    (reading them all first would hold a whole library of parsed records at once)."""
    pending: deque[Future[_Loaded]] = deque()
    for root, folder, signature in folders:
        pending.append(pool.submit(lambda r, f, s: _Loaded(f, r, s, f.records(full=False)),
                                   root, folder, signature))
        if len(pending) >= ahead:
            yield pending.popleft().result()
    while pending:
        yield pending.popleft().result()


# -- folder signatures ----------------------------------------------------------------------
def folder_signature(folder: FolderStore) -> str | None:
    """A digest of every record file's name, size, mtime, ctime and inode; None when a file
    changed too recently to tell versions apart, or the folder has sync conflicts."""
    return _signature_and_size(folder)[0]


def _signature_and_size(folder: FolderStore) -> tuple[str | None, int]:
    """:func:`folder_signature`, and how many record files the folder has (a load that
    reads them makes room for as many vectors at once)."""
    listed: list[tuple[Path, list[os.DirEntry[str]] | None]] = []
    for base in folder.read_dirs:
        directory = base / "records"
        try:
            with os.scandir(directory) as it:
                listed.append((directory, sorted((e for e in it if e.name.endswith(".json")),
                                                 key=lambda e: e.name)))
        except (FileNotFoundError, NotADirectoryError):
            listed.append((directory, None))
        except OSError:
            return None, 0
    size = sum(len(entries) for _, entries in listed if entries is not None)
    return _signature(listed), size


def _signature(listed: list[tuple[Path, list[os.DirEntry[str]] | None]]) -> str | None:
    digest = hashlib.blake2b(digest_size=16)
    settled = time.time_ns() - RACY_NS
    for directory, entries in listed:
        if entries is None:
            digest.update(b"\x01")
            continue
        digest.update(os.fsencode(directory) + b"\x00")
        for entry in entries:
            if atomic.is_temp_name(entry.name):
                continue
            if ".sync-conflict-" in entry.name:  # resolved on the records' own path
                return None
            try:
                st = entry.stat(follow_symlinks=False)
            except OSError:
                return None
            if max(st.st_mtime_ns, st.st_ctime_ns) >= settled:
                return None
            digest.update(os.fsencode(entry.name) + b"\x00" + np.array(
                [st.st_size, st.st_mtime_ns, st.st_ctime_ns, st.st_ino], dtype=np.uint64).tobytes())
    return digest.hexdigest()


def _signed_folders(snap: snapshot.Snapshot | None) -> dict[Path, tuple[int, str]]:
    """Folder -> (its index in the snapshot, its signature), for signed folders."""
    if snap is None:
        return {}
    out = {}
    for index, entry in enumerate(snap.meta.get("folders") or ()):
        if isinstance(entry, list) and len(entry) == 4 and isinstance(entry[1], str):
            out[Path(os.fsdecode(base64.b64decode(entry[0])))] = (index, entry[1])
    return out


# -- the snapshot's rows ----------------------------------------------------------------------
class _SnapshotRows:
    """The rows ``take`` of a snapshot, copied into a library being loaded."""

    def __init__(self, snap: snapshot.Snapshot, take: np.ndarray):
        self.snap = snap
        self.take = take

    def copy_into(self, library: Library, folder_ids: np.ndarray) -> np.ndarray:
        snap, take = self.snap, self.take
        columns = library._columns
        first = columns.size
        columns.reserve(take.size)
        for name in COLUMNS:
            columns.arrays[name][first: first + take.size] = snap.array(f"col.{name}")[take]
        columns.arrays["folder"][first: first + take.size] = folder_ids
        columns.size += take.size
        self._remap(columns, "camera", columns.cameras, [tuple(v) for v in snap.meta["cameras"]],
                    first)
        self._remap(columns, "place", columns.places,
                    [tuple(tuple(kv) for kv in v) for v in snap.meta["places"]], first)
        self._names_and_blobs(library)
        vector_rows = self._vectors(library, first)
        ids = range(first, first + take.size)
        library._by_path.update(((int(f), n), i) for f, n, i in
                                zip(folder_ids.tolist(), library._names[first:], ids, strict=True))
        library._live += int(columns.alive[first:].sum())
        return vector_rows

    @staticmethod
    def _remap(columns: Columns, name: str, table: Any, values: list[Any], first: int) -> None:
        mapping = np.array([table.id(v) for v in values] or [0], dtype=np.int32)
        column = columns.arrays[name][first: columns.size]
        valid = column >= 0
        column[valid] = mapping[column[valid]]

    def _names_and_blobs(self, library: Library) -> None:
        snap, take = self.snap, self.take
        names, name_ends = snap.bytes_view("names"), snap.array("name_ends")
        blobs, blob_ends = snap.bytes_view("blobs"), snap.array("blob_ends")
        vkeys = snap.array("vkeys")
        for i in take.tolist():
            start = int(name_ends[i - 1]) if i else 0
            library._names.append(os.fsdecode(bytes(names[start: int(name_ends[i])])))
            start = int(blob_ends[i - 1]) if i else 0
            library._blobs.append(blobs[start: int(blob_ends[i])])
            key = vkeys[i].tobytes()
            library._vkeys.append(b"" if key == _NO_KEY else key)

    def _vectors(self, library: Library, first: int) -> np.ndarray:
        """Vectors of the rows taken, in bulk; returns where each snapshot vector went."""
        snap, take = self.snap, self.take
        if "vectors" not in snap.meta.get("with", ()):
            library._columns.arrays["row_count"][first: first + take.size] = 0
            return _NO_ROWS
        counts = snap.array("col.row_count")[take].astype(np.int64)
        starts = snap.array("col.row_start")[take]
        keep = counts > 0
        placed = np.full(snap.array("vector_times").size, -1, dtype=np.int64)
        if not keep.any():
            return placed
        rows = _expand(starts, counts)
        owners = np.repeat(np.arange(first, first + take.size)[keep], counts[keep])
        times = snap.array("vector_times")[rows]
        vector_set = library._vector_set(int(snap.meta["dim"]))
        stored = snap.array("vectors")
        contiguous = bool(rows.size) and bool((np.diff(rows) == 1).all())
        block = stored[int(rows[0]): int(rows[-1]) + 1] if contiguous else stored[rows]
        new_rows = vector_set.add_block(block, owners, times)
        item_first = np.concatenate([[0], np.cumsum(counts[keep])[:-1]])
        library._columns.arrays["row_start"][first: first + take.size][keep] = new_rows[item_first]
        placed[rows] = new_rows
        return placed


def _write_graph(library: Library, path: Path, rows: np.ndarray, meta: dict[str, Any],
                 arrays: dict[str, np.ndarray | snapshot.Pieces]) -> None:
    """The graph beside the snapshot, its labels mapped to the snapshot's vector order."""
    assert library.vectors is not None
    exported = library.vectors.export()
    if exported is None:
        return
    graph, label_rows = exported
    position = np.full(max(int(rows.max()) + 1 if rows.size else 0, int(label_rows.max(initial=-1)) + 1),
                       -1, dtype=np.int64)
    position[rows] = np.arange(rows.size)
    arrays["graph_labels"] = np.where(label_rows >= 0, position[np.maximum(label_rows, 0)], -1)
    meta["graph"] = ann.save_graph_file(graph, path)


def _write_snapshot(library: Library, path: Path, model_id: str | None) -> np.ndarray:
    """Write what ``library`` holds to ``path``; returns the item ids in the order written."""
    c = library._columns
    alive = np.flatnonzero(c.alive)
    order = alive[np.argsort(c.folder[alive], kind="stable")]
    folders, starts = np.unique(c.folder[order], return_index=True)
    counts = np.diff(np.append(starts, order.size))
    names = [os.fsencode(library._names[i]) for i in order.tolist()]
    blobs = [library._blobs[i] for i in order.tolist()]
    meta: dict[str, Any] = {
        "format": SNAPSHOT_FORMAT, "record_format": RECORD_FORMAT, "model": model_id,
        "columns": sorted(COLUMNS), "cameras": c.cameras.values,
        "places": [list(p) for p in c.places.values],
        "folders": [[base64.b64encode(os.fsencode(library._folders[f].folder)).decode(),
                     library._signatures[f], int(s), int(n)]
                    for f, s, n in zip(folders.tolist(), starts.tolist(), counts.tolist(), strict=True)],
        "with": [],
    }
    arrays: dict[str, np.ndarray | snapshot.Pieces] = {
        f"col.{name}": c.arrays[name][order] for name in COLUMNS}
    arrays["names"] = np.frombuffer(b"".join(names), dtype=np.uint8)
    arrays["name_ends"] = np.cumsum([len(n) for n in names], dtype=np.int64)
    arrays["blob_ends"] = np.cumsum([len(b) for b in blobs], dtype=np.int64)
    arrays["blobs"] = snapshot.Pieces(blobs)
    arrays["vkeys"] = np.frombuffer(b"".join((library._vkeys[i] or _NO_KEY).ljust(8, b"\x00")[:8]
                                             for i in order.tolist()), dtype=np.uint8).reshape(-1, 8)
    path.parent.mkdir(parents=True, exist_ok=True)
    vectors = library.vectors
    if vectors is not None and model_id is not None:
        counts_v = c.row_count[order].astype(np.int64)
        rows = library.rows_of(order)
        arrays["col.row_start"] = np.concatenate([[0], np.cumsum(counts_v)[:-1]]).astype(np.int64)
        arrays["vectors"] = vectors.gather(rows)
        arrays["vector_times"] = vectors.times(rows)
        meta["with"], meta["dim"] = ["vectors"], vectors.dim
        _write_graph(library, path.with_suffix(".hnsw"), rows, meta, arrays)
    snapshot.write(path, meta, arrays)
    return order

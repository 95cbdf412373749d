"""The in-memory view of every folder a daemon (or a direct-mode query) serves.

Records are read once from the sidecars, kept slim (the raw EXIF dump stays on disk:
it is most of a record's size and no query reads it), and updated incrementally as the
indexer writes.  CLIP vectors of the configured model go into one :class:`VectorSet`
across all roots, so a text query is one matrix product (or one HNSW lookup in a large
library) instead of a walk over folders.  Vectors of another model are ignored, never
mixed in: those files are re-embedded by the indexer and come back through
:meth:`Library.update`.

Loading also keeps each folder's portable ``index/clip.hnsw`` current when
``write_indexes`` is on (the daemon), and leaves it alone for a read-only direct query.
"""

from __future__ import annotations

import contextlib
import gc
import hashlib
import logging
import os
import sys
import threading
from collections import Counter
from collections.abc import Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path

import numpy as np

from scanpixd.config import Settings
from scanpixd.errors import ModelUnavailable
from scanpixd.excludes import Excluder
from scanpixd.models.clip import ClipModel
from scanpixd.record import Record
from scanpixd.scan import root_is_online
from scanpixd.store import FolderStore, Store, ann, atomic
from scanpixd.store.record_cache import slim

log = logging.getLogger(__name__)

_NO_ROWS = np.zeros(0, dtype=np.int64)
_SHARED_PARTS = ("stages", "errors", "media", "place")  # small, and alike in many records


@contextmanager
def _collector_paused() -> Iterator[None]:
    """The cyclic garbage collector paused while loading, and what was loaded frozen after.

    A load creates millions of objects that all stay alive: collections during it only walk
    them again and again (40 % of the CPU time of a 100k-photo load), and every later full
    collection would walk them once more (a pause in the middle of a query).  Records hold
    no reference cycles, so reference counting still frees them when they are dropped.
    """
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        gc.freeze()
        if enabled:
            gc.enable()


@dataclass(eq=False)
class Item:
    """One indexed file: what filters see (``record``, ``path``, ``root``) plus its vectors."""

    id: int
    root: Path
    folder: FolderStore
    name: str
    record: Record  # without metadata.raw; see Library.full_record
    rows: np.ndarray = field(default_factory=lambda: _NO_ROWS)  # rows in Library.vectors
    vector_key: tuple[object, ...] = ()  # what the rows were made from (see _vector_key)

    @cached_property
    def path(self) -> Path:
        return self.folder.folder / self.name


def _vector_key(record: Record) -> tuple[object, ...]:
    """The record's embeddings as an immutable value, to tell whether they changed."""
    clip = record.get("clip")
    if not isinstance(clip, dict) or not isinstance(clip.get("vectors"), list):
        return ()
    return (clip.get("model"), *((e.get("time"), e.get("v")) for e in clip["vectors"]
                                 if isinstance(e, dict)))


class Library:
    """Items of every online root, by path; thread-safe; see the module docstring."""

    def __init__(self, settings: Settings, store: Store | None = None,
                 clip: ClipModel | None = None, write_indexes: bool = False):
        self.settings = settings
        self.store = store or Store(settings)
        self.write_indexes = write_indexes
        self.lock = threading.RLock()
        self._clip = clip
        self.roots: list[Path] = []
        self.offline_roots: list[Path] = []
        self._items: dict[int, Item] = {}
        self._by_path: dict[tuple[Path, str], int] = {}
        self._next_id = 0
        self.vectors: ann.VectorSet | None = None
        self._dirty: set[Path] = set()
        self._shared: dict[tuple[object, ...], dict[str, object]] = {}  # see _compact
        self._loading = False
        self._saved_changes = -1

    # -- the model ------------------------------------------------------------------
    @property
    def clip(self) -> ClipModel:
        if self._clip is None:
            self._clip = ClipModel(self.settings.clip)
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
        folders: list[tuple[Path, FolderStore]] = []
        offline = []
        for root in roots:
            if not root_is_online(root, self.store):
                log.warning("root %s is offline; its index is kept but not served", root)
                offline.append(root)
                continue
            folders.extend((root, self.store.folder(f)) for f in self._folders(root))
        model_id = self.model_id
        with ThreadPoolExecutor(max_workers=max(1, min(4, self.settings.jobs))) as pool:
            loaded = list(pool.map(lambda rf: self._read_folder(rf[1], model_id), folders))
        with self.lock:
            self.roots, self.offline_roots = roots, offline
            self._items.clear()
            self._by_path.clear()
            self.vectors = None
            self._loading = True
            try:
                self._reserve([index for _, index in loaded if index is not None])
                for (root, folder), (records, index) in zip(folders, loaded, strict=True):
                    self._add_folder(root, folder, records, index)
            finally:
                self._loading = False
            if self.vectors is not None and model_id is not None:
                self.vectors.ann_min = self.settings.clip.ann_min
                if not self._attach_saved_graph(model_id):
                    self.vectors.ensure_graph()
        log.info("library loaded: %d items, %d vectors, %d folders", len(self._items),
                 len(self.vectors) if self.vectors is not None else 0, len(folders))

    def _folders(self, root: Path) -> Iterator[Path]:
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

    def _read_folder(self, folder: FolderStore, model_id: str | None
                     ) -> tuple[dict[str, Record], ann.FolderIndex | None]:
        records = folder.records(full=False)  # a listing: raw metadata dumps stay on disk
        if model_id is None:
            return records, None
        try:
            index = ann.load_or_rebuild(folder, records, model_id, write=self.write_indexes)
        except Exception as exc:  # a broken folder index must not stop the library
            log.warning("vector index of %s: %s", folder.folder, exc)
            index = ann.load_or_rebuild(folder, records, model_id, write=False)
        return records, index

    def _add_folder(self, root: Path, folder: FolderStore, records: dict[str, Record],
                    index: ann.FolderIndex | None) -> None:
        by_name: dict[str, list[int]] = {}
        if index is not None:
            for position, label in enumerate(index.labels):
                by_name.setdefault(label.name, []).append(position)
        for name in sorted(records):
            item = self._new_item(root, folder, name, records[name])
            positions = by_name.get(name)
            if positions and index is not None:
                times = [index.labels[p].time for p in positions]
                item.rows = self._vector_set(index.dim).add(index.vectors[positions], item.id, times)
                item.vector_key = _vector_key(records[name])

    def _reserve(self, indexes: list[ann.FolderIndex]) -> None:
        """Make room for every vector about to be added (of the width most folders have)."""
        widths = Counter(index.dim for index in indexes if index.labels)
        if widths:
            dim = widths.most_common(1)[0][0]
            self._vector_set(dim).reserve(sum(len(i.labels) for i in indexes if i.dim == dim))

    def _new_item(self, root: Path, folder: FolderStore, name: str, record: Record) -> Item:
        item = Item(self._next_id, root, folder, name, self._compact(record))
        self._next_id += 1
        self._items[item.id] = item
        self._by_path[(folder.folder, name)] = item.id
        return item

    def _compact(self, record: Record) -> Record:
        """:func:`slim`, with parts that many records hold alike shared between them.

        Which stages ran, the media kind and size, an event's place: one object each instead
        of one per item (about 2 kB an item).  Item records are read-only views.
        """
        record = slim(record)  # parts are replaced by equal ones: no copy needed
        for key in _SHARED_PARTS:
            value = record.get(key)
            if isinstance(value, dict):
                token = (key, *value.items())
                with contextlib.suppress(TypeError):  # an unhashable value: kept as it is
                    record[key] = self._shared.setdefault(token, value)
        return record

    def _vector_set(self, dim: int) -> ann.VectorSet:
        if self.vectors is None or self.vectors.dim != dim:
            if self.vectors is not None:
                log.warning("vectors of width %d replace width %d", dim, self.vectors.dim)
                for item in self._items.values():
                    item.rows = _NO_ROWS
            threads = self.settings.clip.threads or (os.cpu_count() or 1)
            ann_min = sys.maxsize if self._loading else self.settings.clip.ann_min
            self.vectors = ann.VectorSet(dim, ann_min=ann_min, threads=threads,
                                         on_graph=self.save_graph)
        return self.vectors

    # -- reading --------------------------------------------------------------------
    def __len__(self) -> int:
        return len(self._items)

    def items(self) -> list[Item]:
        """A snapshot of every item (safe to iterate while the library changes)."""
        with self.lock:
            return list(self._items.values())

    def item(self, item_id: int) -> Item | None:
        return self._items.get(item_id)

    def get(self, path: Path) -> Item | None:
        """The item of an absolute file path, if the library holds it."""
        path = Path(os.path.abspath(path))
        with self.lock:
            item_id = self._by_path.get((path.parent, path.name))
            return None if item_id is None else self._items.get(item_id)

    def root_of(self, path: Path) -> Path | None:
        """The (longest) configured root that contains ``path``."""
        path = Path(os.path.abspath(path))
        found = [r for r in self.roots if path == r or r in path.parents]
        return max(found, key=lambda r: len(r.parts)) if found else None

    def full_record(self, item: Item) -> Record:
        """The item's record as stored (with the raw metadata dump)."""
        return item.folder.read(item.name) or item.record

    def vectors_of(self, item: Item) -> np.ndarray:
        """The item's unit vectors of the served model (0 rows when it has none)."""
        with self.lock:
            if self.vectors is None or not item.rows.size:
                return np.zeros((0, self.vectors.dim if self.vectors else 0), np.float32)
            return self.vectors.vectors(item.rows).copy()

    # -- changes --------------------------------------------------------------------
    def update(self, folder: FolderStore | Path, name: str, record: Record) -> Item | None:
        """Add or replace the item of ``folder/name`` after its record was written."""
        folder = self._folder(folder)
        root = self.root_of(folder.folder / name)
        if root is None:
            return None
        model_id = self.model_id
        found = ann.record_vectors(record, model_id) if model_id else []
        with self.lock:
            old_id = self._by_path.get((folder.folder, name))
            old = self._items.get(old_id) if old_id is not None else None
            key = _vector_key(record)
            if old is not None and old.rows.size and old.vector_key == key:
                old.record = self._compact(record)  # same vectors (a cheaper stage wrote): keep the rows
                return old
            self._drop(folder.folder, name)
            item = self._new_item(root, folder, name, record)
            if found:
                vectors = np.stack([v for _, _, v in found])
                item.rows = self._vector_set(vectors.shape[1]).add(
                    vectors, item.id, [t for _, t, _ in found])
                item.vector_key = key
            self._dirty.add(folder.folder)
            return item

    def remove(self, folder: FolderStore | Path, name: str) -> None:
        folder = self._folder(folder)
        with self.lock:
            if self._drop(folder.folder, name):
                self._dirty.add(folder.folder)

    def move(self, source: FolderStore | Path, old_name: str, target: FolderStore | Path,
             new_name: str, record: Record) -> Item | None:
        """A file was moved or renamed: its results follow it."""
        self.remove(source, old_name)
        return self.update(target, new_name, record)

    def remove_folder(self, folder: Path) -> None:
        """Forget every item directly in ``folder`` (deleted, or moved out of the roots)."""
        with self.lock:
            for key in [k for k in self._by_path if k[0] == folder]:
                self._drop(*key)

    def _drop(self, folder: Path, name: str) -> bool:
        item_id = self._by_path.pop((folder, name), None)
        if item_id is None:
            return False
        item = self._items.pop(item_id)
        if self.vectors is not None and item.rows.size:
            self.vectors.remove(item.rows)
        return True

    def _folder(self, folder: FolderStore | Path) -> FolderStore:
        return folder if isinstance(folder, FolderStore) else self.store.folder(Path(folder))

    # -- the saved graph ------------------------------------------------------------
    def _graph_paths(self, model_id: str) -> tuple[Path, Path]:
        """Where the library-wide graph is kept between runs (machine-specific: the cache)."""
        digest = hashlib.blake2b(model_id.encode(), digest_size=8).hexdigest()
        base = self.settings.cache_dir / "ann" / f"clip-{digest}"
        return base.with_suffix(".hnsw"), base.with_suffix(".json")

    def _row_keys(self) -> dict[int, str]:
        """Row -> "folder/name, position in the item, content hash": what a label held."""
        assert self.vectors is not None
        digests = self.vectors.digests()
        keys = {}
        for item in self._items.values():
            for position, row in enumerate(item.rows.tolist()):
                if row in digests:
                    keys[row] = f"{item.path}\x00{position}\x00{digests[row]}"
        return keys

    def save_graph(self) -> bool:
        """Save the library-wide graph to the cache, so the next start need not rebuild it."""
        model_id = self.model_id
        with self.lock:
            exported = self.vectors.export() if self.vectors is not None else None
            if model_id is None or exported is None or self.vectors is None:
                return False
            if self._saved_changes == self.vectors.changes:
                return True
            graph, label_rows = exported
            keys = self._row_keys()
            labels = [keys.get(int(row)) if row >= 0 else None for row in label_rows]
            graph_path, meta_path = self._graph_paths(model_id)
            try:
                graph_path.parent.mkdir(parents=True, exist_ok=True)
                checksum = ann.save_graph_file(graph, graph_path)
                atomic.write_json(meta_path, {"model": model_id, "dim": self.vectors.dim,
                                              "checksum": checksum, "labels": labels})
            except OSError as exc:
                log.warning("cannot save the vector graph in %s: %s", graph_path.parent, exc)
                return False
            self._saved_changes = self.vectors.changes
        return True

    def _attach_saved_graph(self, model_id: str) -> bool:
        vectors = self.vectors
        assert vectors is not None
        if len(vectors) < vectors.ann_min:
            return False
        graph_path, meta_path = self._graph_paths(model_id)
        meta = atomic.read_json(meta_path)
        if not isinstance(meta, dict) or meta.get("model") != model_id \
                or meta.get("dim") != vectors.dim or not isinstance(meta.get("labels"), list):
            return False
        graph = ann.read_graph_file(graph_path, vectors.dim, str(meta.get("checksum")))
        if graph is None:
            return False
        by_key = {key: row for row, key in self._row_keys().items()}
        label_rows = np.array([by_key.get(k, -1) if isinstance(k, str) else -1
                               for k in meta["labels"]], dtype=np.int64)
        if graph.get_current_count() != label_rows.size:
            return False
        vectors.attach(graph, label_rows)
        log.info("vector graph reused from %s (%d of %d labels current)", graph_path,
                 int((label_rows >= 0).sum()), label_rows.size)
        return True

    def close(self) -> None:
        """Save what is worth keeping (the library-wide graph) before the process ends."""
        self.flush()
        self.save_graph()

    def compact(self) -> None:
        """Drop the rows of replaced and removed vectors (a new graph is built meanwhile)."""
        with self.lock:
            old = self.vectors
            if old is None:
                return
            self.vectors = None
            for item in self._items.values():
                if item.rows.size:
                    times = [old.time(int(r)) for r in item.rows]
                    item.rows = self._vector_set(old.dim).add(old.vectors(item.rows), item.id,
                                                              times)

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
                ann.refresh(folder, model_id)
            except OSError as exc:
                log.warning("cannot write the vector index of %s: %s", path, exc)
        return len(dirty)

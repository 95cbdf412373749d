"""The library's answers, the same in the daemon and in a direct-mode ``scanpix-query``.

:class:`LibraryService` wraps the in-memory :class:`~scanpixd.library.Library` with the
operations the API and the CLI offer (search, similar, duplicates, people, one item, a
thumbnail, status, reindex) and returns plain JSON-ready dicts.  In the daemon it is also
told about every record the indexer writes or removes, so its view stays current.

``confine`` (on in the daemon) refuses any path outside the configured roots, after
resolving symlinks, so the socket can never be used to read other files.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Iterable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from scanpixd import geo, heap
from scanpixd.config import Settings
from scanpixd.errors import UsageError
from scanpixd.inspect import present
from scanpixd.library import Item, Library
from scanpixd.pipeline import Services
from scanpixd.query import engine
from scanpixd.query.parser import parse
from scanpixd.query.tree import DateFilter, NearFilter, Query, SimilarTerm, item_date, item_position
from scanpixd.record import Record
from scanpixd.store import FolderStore, Store

if TYPE_CHECKING:
    from scanpixd.scheduler import Scheduler
    from scanpixd.watch import Watcher

log = logging.getLogger(__name__)

Key = tuple[FolderStore, str]
SAME_PLACE_RADIUS_M = 1000.0


class MatchContext:
    """Answers the place and person questions filters ask, from geo data and people."""

    def __init__(self, service: LibraryService):
        self.service = service

    def person_names(self, item: Any) -> set[str]:
        return self.service.people_in(item)

    def place_matches(self, item: Any, name: str) -> bool:
        return geo.place_matches(item.record, name)

    def resolve_place(self, name: str) -> tuple[float, float] | None:
        return geo.resolve_place(name)


class LibraryService:
    def __init__(self, settings: Settings, store: Store | None = None,
                 services: Services | None = None, confine: bool = False):
        self.settings = settings
        self.store = store or Store(settings)
        self.services = services or Services(settings)
        self.confine = confine
        self.library = Library(settings, self.store, clip=self.services.clip,
                               write_indexes=confine)
        self.context = MatchContext(self)
        self.roots: list[Path] = []
        self.loaded = threading.Event()
        self.started = time.time()
        self._scheduler: Scheduler | None = None
        self._watcher: Watcher | None = None
        self._people: Any = None

    # -- lifecycle ------------------------------------------------------------------------
    def load(self, roots: Iterable[Path]) -> None:
        self.roots = [Path(r) for r in roots]
        self.library.load(self.roots)
        self._people = None
        self.loaded.set()
        if self.library.write_indexes:  # folders read from their records: check their indexes
            threading.Thread(target=self._refresh_indexes, name="index-refresh", daemon=True).start()

    def _refresh_indexes(self) -> None:
        from scanpixd.notify import lower_thread_priority

        lower_thread_priority()
        try:
            self.library.flush()
        except Exception:  # the next change refreshes them again
            log.exception("refreshing the folders' vector indexes failed")

    def attach(self, scheduler: Scheduler, watcher: Watcher) -> None:
        self._scheduler, self._watcher = scheduler, watcher

    def set_roots(self, roots: list[Path]) -> None:
        self.load(roots)

    def close(self) -> None:
        """Save what is worth keeping across restarts (the library-wide vector graph)."""
        self.library.close()

    def count(self) -> int:
        return len(self.library)

    def records_written(self, keys: list[Key]) -> None:
        for folder, name in keys:
            record = folder.read(name)
            if record is None:
                self.library.remove(folder, name)
            else:
                self.library.update(folder, name, record)
                if self._people is not None and record.get("faces"):
                    self._people.assign_new(folder.folder, record)
        self.library.flush()
        if self._people is not None:
            self._people.save()  # writes only when assignments changed

    def records_deleted(self, keys: list[Key]) -> None:
        for folder, name in keys:
            self.library.remove(folder, name)
            if self._people is not None:
                self._people.forget(folder.folder, name)

    # -- queries ----------------------------------------------------------------------------
    def search(self, text: str, limit: int) -> dict[str, Any]:
        query = parse(text)
        if self.confine:
            for term in query.similar:
                self._check_path(Path(term.path))
        return self._run(query, limit, text)

    def similar(self, path: Path, limit: int) -> dict[str, Any]:
        path = self._check_path(path) if self.confine else path.absolute()
        return self._run(Query(similar=(SimilarTerm(str(path)),)), limit, f"similar:{path}")

    def same_day(self, path: Path, limit: int) -> dict[str, Any]:
        record = self._record_of(path)
        day = item_date(record)
        if day is None:
            raise UsageError(f"{path}: its capture date is unknown")
        query = Query(filters=(DateFilter(day, day),))
        return self._run(query, limit, f"date:{day.isoformat()}")

    def same_place(self, path: Path, limit: int, radius_m: float = SAME_PLACE_RADIUS_M) -> dict[str, Any]:
        record = self._record_of(path)
        position = item_position(record)
        if position is None:
            raise UsageError(f"{path}: it has no GPS position")
        lat, lon = position
        query = Query(filters=(NearFilter(lat, lon, radius_m),))
        return self._run(query, limit, f"near:{lat:.5f},{lon:.5f},{radius_m / 1000:g}km")

    def _run(self, query: Query, limit: int, text: str) -> dict[str, Any]:
        self.loaded.wait()
        results = engine.search(self.library, query, self.context, limit=limit)
        return {"query": text, "results": [self._result(r) for r in results]}

    def _result(self, result: engine.Result) -> dict[str, Any]:
        record = result.record
        out = result.to_dict()
        out["taken"] = _taken(record)
        out["kind"] = (record.get("media") or {}).get("kind")
        thumb = _smallest_thumb(result.item, record)
        if thumb is not None:
            out["thumb"] = thumb
        return out

    def duplicates(self, path: Path | None, kinds: set[str]) -> dict[str, Any]:
        from scanpixd.duplicates import find_groups

        self.loaded.wait()
        scope = self._check_path(path) if (path is not None and self.confine) else path
        items = [i for i in self.library.items() if scope is None or _under(i.path, scope)]
        groups = find_groups(items, self.settings, kinds=kinds)
        del items
        answer = {"groups": [g.to_dict() for g in groups]}
        self.library.release_pages()  # a whole library's records were read: give their
        heap.trim()  # memory back
        return answer

    # -- people -------------------------------------------------------------------------------
    @property
    def people_index(self) -> Any:
        if self._people is None:
            from scanpixd.people import People

            self.loaded.wait()
            people = People(self.store, self.roots, threshold=self.settings.faces.threshold)
            people.load((i.folder.folder, record) for i in self.library.items(with_faces=True)
                        if (record := i.record).get("faces"))
            self._people = people
            self.library.release_pages()
            heap.trim()
        return self._people

    def people_in(self, item: Any) -> set[str]:
        if not item.record.get("faces"):
            return set()
        return self.people_index.people_in(item.record)

    def people(self) -> dict[str, Any]:
        people = [p.to_dict() for p in self.people_index.list()]
        for person in people:
            person["thumb"] = self._thumb_of(person.get("sample"))
        return {"people": people}

    def _thumb_of(self, path: str | None) -> str | None:
        item = self.library.get(Path(path)) if path else None
        return _smallest_thumb(item) if item is not None else None

    def name_person(self, person_id: str, name: str) -> dict[str, Any]:
        self.people_index.name(person_id, name)
        return {"ok": True, "id": person_id, "name": name}

    def merge_people(self, person_id: str, into: str) -> dict[str, Any]:
        self.people_index.merge(person_id, into)
        return {"ok": True, "id": into}

    def reject_face(self, face_ref: str, person_id: str) -> dict[str, Any]:
        """Mark one face as "not this person"; it survives reclustering."""
        self.people_index.reject(face_ref, person_id)
        return {"ok": True, "ref": face_ref, "id": person_id}

    def person_faces(self, person_id: str) -> dict[str, Any]:
        faces = self.people_index.faces_of(person_id)
        return {"id": person_id, "faces": [{"ref": f.ref, "path": str(f.path), "box": f.box,
                                            "time": f.time} for f in faces]}

    # -- single items -------------------------------------------------------------------------
    def item(self, path: Path) -> dict[str, Any]:
        path = self._check_path(path) if self.confine else path.absolute()
        folder = self.store.folder(path.parent)
        record = folder.read(path.name)
        if record is None:
            raise FileNotFoundError(f"{path}: not indexed")
        return present(record, folder)

    def thumbnail(self, path: Path, size: int | None) -> Path:
        path = self._check_path(path) if self.confine else path.absolute()
        folder = self.store.folder(path.parent)
        record = folder.read(path.name)
        thumbs = (record or {}).get("thumbs") or {}
        if not thumbs:
            raise FileNotFoundError(f"{path}: no thumbnail")
        sizes = sorted(int(s) for s in thumbs)
        chosen = max(sizes) if size is None else next((s for s in sizes if s >= size), max(sizes))
        try:
            asset = folder.asset_path(thumbs[str(chosen)])
        except ValueError as exc:
            raise FileNotFoundError(f"{path}: no thumbnail (its record names no usable file)") from exc
        real = Path(os.path.realpath(asset))
        if not any(real.parent == Path(os.path.realpath(base / "thumbs")) for base in folder.read_dirs):
            raise FileNotFoundError(f"{path}: no thumbnail (its record names no usable file)")
        return asset

    def reindex(self, path: Path) -> dict[str, Any]:
        path = self._check_path(path)
        if self._scheduler is None:
            raise UsageError("reindexing needs the daemon")
        if path.is_dir():
            self._scheduler.rescan(path, "")
        else:
            self._scheduler.file_ready(path)
        return {"ok": True, "queued": str(path)}

    def status(self) -> dict[str, Any]:
        clip = self.library.clip
        out: dict[str, Any] = {
            "version": _version(),
            "uptime": round(time.time() - self.started, 1),
            "items": self.count(),
            "loaded": self.loaded.is_set(),
            "load": self.library.last_load,
            "roots": {str(r): {"online": r not in self.library.offline_roots} for r in self.roots},
            "models": {"clip": {"enabled": self.settings.clip.enabled, "state": clip.state,
                                "text_tower": clip.text_runtime,
                                "image_tower": clip.image_runtime,
                                "image_state": clip.image_state, "error": clip.error}},
        }
        if self._watcher is not None:
            for root, info in self._watcher.status().get("roots", {}).items():
                out["roots"].setdefault(root, {}).update({"watch": info})
        if self._scheduler is not None:
            out["work"] = self._scheduler.status()
        return out

    # -- helpers ---------------------------------------------------------------------------------
    def _record_of(self, path: Path) -> Record:
        path = self._check_path(path) if self.confine else path.absolute()
        record = self.store.folder(path.parent).read(path.name)
        if record is None:
            raise FileNotFoundError(f"{path}: not indexed")
        return record

    def _check_path(self, path: Path) -> Path:
        """``path`` resolved, if it lies inside a configured root; else PermissionError."""
        if not path.is_absolute():
            raise UsageError("path must be absolute")
        resolved = Path(os.path.realpath(path))
        for root in self.roots:
            real_root = Path(os.path.realpath(root))
            if resolved == real_root or real_root in resolved.parents:
                return resolved
        raise PermissionError(f"{path} is outside the library's roots")


def _smallest_thumb(item: Item, record: Record | None = None) -> str | None:
    """The smallest thumbnail of a library item, for lists that show one picture each
    (``record``: the item's record, when the caller has decoded it already)."""
    thumbs = (item.record if record is None else record).get("thumbs") or {}
    if not thumbs:
        return None
    try:
        return str(item.folder.asset_path(thumbs[min(thumbs, key=int)]))
    except ValueError:
        return None


def _under(path: Path, folder: Path) -> bool:
    return path == folder or folder in path.parents


def _taken(record: Record) -> str | None:
    taken = record.get("taken") or {}
    meta = record.get("metadata") or {}
    value = taken.get("local") or meta.get("taken_local")
    return str(value) if value else None


def _version() -> str:
    from scanpixd import __version__

    return __version__


"""People across a library: face encodings grouped into persons, with the user's choices.

Faces are referred to as ``<content hash>#<face index>`` (see :func:`face_ref`), so a
reference survives renames, moves and syncing, and copies of one file are one face.

Grouping is incremental: a new face joins the person whose mean encoding is nearest, if
closer than the threshold, else it founds a new person whose id is derived from that face
(:func:`person_id_for`), so a library clustered from scratch gets the same ids on every
machine.  Two persons whose means drift within the threshold are merged.  A full
:meth:`People.recluster` visits faces in reference order and keeps earlier ids where the
members mostly stay together.

What users decide is kept apart from what is derived, in ``people.json`` in the library
directory of every root (:meth:`scanpixd.store.Store.library_dir`), so it syncs with the
photos::

    {"format": 1,
     "names":   {"p1a2b3c4d5e": {"name": "Barack Obama", "at": "2024-05-01T10:00:00Z"}},
     "anchors": {"p1a2b3c4d5e": ["b2:...#0", ...]},   # faces the user confirmed together
     "rejects": {"b2:...#1": ["p1a2b3c4d5e"]},        # "not this person"
     "aliases": {"p9f8e7d6c5b": "p1a2b3c4d5e"}}       # merged away -> merged into

Naming or merging anchors the person's current faces, so a recluster (any threshold,
any order) puts them together again and the name stays; a rejection always wins over an
anchor.  Copies written by several machines are merged (names: latest wins; the rest:
union), Syncthing conflict copies included.  ``people-cache.json`` beside it holds the
derived assignments of that root's faces; deleting it only costs a recluster.
"""

from __future__ import annotations

import builtins
import hashlib
import logging
import threading
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np

from scanpixd.errors import UsageError
from scanpixd.models.faces import ENCODER_ID, face_quality
from scanpixd.record import Record, decode_name, decode_vector
from scanpixd.store import Store, atomic

log = logging.getLogger(__name__)

CHOICES_FILE = "people.json"
CACHE_FILE = "people-cache.json"
FORMAT = 1

PathKey = tuple[Path, str]  # (absolute folder, file name)


def face_ref(content_hash: str, index: int) -> str:
    """The portable reference of face ``index`` of the content ``content_hash``."""
    return f"{content_hash}#{index}"


def person_id_for(ref: str, salt: int = 0) -> str:
    """A person id derived from the face that founded the person."""
    text = ref if not salt else f"{ref}/{salt}"
    return "p" + hashlib.blake2b(text.encode(), digest_size=5).hexdigest()


@dataclass(frozen=True)
class FaceSample:
    """One face of a person, with a file that shows it (absolute path, for display)."""

    ref: str
    path: Path
    box: list[float]
    time: float | None


@dataclass(frozen=True)
class Person:
    id: str
    name: str | None
    count: int  # number of files the person appears in
    files: list[Path]
    sample: FaceSample | None  # the best-quality face, for a thumbnail

    def to_dict(self) -> dict[str, Any]:
        """JSON form for the API: ``sample`` is the path of the file with the best face."""
        face = self.sample
        return {
            "id": self.id,
            "name": self.name,
            "count": self.count,
            "files": [str(f) for f in self.files],
            "sample": str(face.path) if face else None,
            "sample_face": {"ref": face.ref, "box": face.box, "time": face.time} if face else None,
        }


@dataclass
class _Face:
    encoding: np.ndarray
    box: list[float]
    time: float | None
    quality: float


# -- user choices -------------------------------------------------------------------
@dataclass
class Choices:
    """What the user decided; merged, never overwritten, when several copies meet."""

    names: dict[str, tuple[str, str]] = field(default_factory=dict)  # pid -> (name, at)
    anchors: dict[str, set[str]] = field(default_factory=dict)  # pid -> refs
    rejects: dict[str, set[str]] = field(default_factory=dict)  # ref -> pids
    aliases: dict[str, str] = field(default_factory=dict)  # merged-away pid -> pid

    @classmethod
    def from_json(cls, data: Any) -> Choices:
        found = cls()
        if not isinstance(data, dict):
            return found
        for pid, entry in _dict(data.get("names")).items():
            if isinstance(entry, dict) and isinstance(entry.get("name"), str):
                found.names[str(pid)] = (entry["name"], str(entry.get("at", "")))
        for pid, refs in _dict(data.get("anchors")).items():
            found.anchors[str(pid)] = {str(r) for r in refs if isinstance(r, str)}
        for ref, pids in _dict(data.get("rejects")).items():
            found.rejects[str(ref)] = {str(p) for p in pids if isinstance(p, str)}
        for old, new in _dict(data.get("aliases")).items():
            if isinstance(new, str) and new != old:
                found.aliases[str(old)] = new
        return found

    def to_json(self) -> dict[str, Any]:
        return {
            "format": FORMAT,
            "names": {p: {"name": n, "at": at} for p, (n, at) in sorted(self.names.items())},
            "anchors": {p: sorted(r) for p, r in sorted(self.anchors.items()) if r},
            "rejects": {r: sorted(p) for r, p in sorted(self.rejects.items()) if p},
            "aliases": dict(sorted(self.aliases.items())),
        }

    def update(self, other: Choices) -> None:
        """Fold ``other`` in: the later naming wins, everything else is a union."""
        for pid, (name, at) in other.names.items():
            mine = self.names.get(pid)
            if mine is None or (at, name) > (mine[1], mine[0]):
                self.names[pid] = (name, at)
        for pid, refs in other.anchors.items():
            self.anchors.setdefault(pid, set()).update(refs)
        for ref, pids in other.rejects.items():
            self.rejects.setdefault(ref, set()).update(pids)
        for old, new in other.aliases.items():
            self.aliases.setdefault(old, new)

    def resolve(self, pid: str) -> str:
        """The id a person goes by now, following merges (cycles end at the smallest id)."""
        seen = [pid]
        while pid in self.aliases:
            pid = self.aliases[pid]
            if pid in seen:
                return min(seen[seen.index(pid):])
            seen.append(pid)
        return pid

    def name_of(self, pid: str) -> str | None:
        entry = self.names.get(pid)
        return entry[0] if entry and entry[0] else None

    def rejected(self, ref: str) -> set[str]:
        return {self.resolve(p) for p in self.rejects.get(ref, ())}

    def anchored(self) -> dict[str, set[str]]:
        """Anchors by current id, without faces the user rejected from that person."""
        out: dict[str, set[str]] = {}
        for pid, refs in self.anchors.items():
            now = self.resolve(pid)
            out.setdefault(now, set()).update(r for r in refs if now not in self.rejected(r))
        return out


def _dict(value: Any) -> dict[Any, Any]:
    return value if isinstance(value, dict) else {}


def _now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


# -- clusters -----------------------------------------------------------------------
class _Clusters:
    """Persons as sets of face refs with running encoding sums, searchable by mean."""

    def __init__(self, dim: int = 128):
        self.members: dict[str, set[str]] = {}
        self._sums: dict[str, np.ndarray] = {}
        self._rows: dict[str, int] = {}
        self._ids: list[str | None] = []
        self._means = np.zeros((0, dim), dtype=np.float32)
        self._squares = np.zeros(0, dtype=np.float32)  # squared length of each mean
        self._dim = dim

    def add(self, pid: str, ref: str, encoding: np.ndarray) -> None:
        refs = self.members.setdefault(pid, set())
        if ref in refs:
            return
        refs.add(ref)
        self._sums[pid] = self._sums.get(pid, np.zeros(self._dim, np.float64)) + encoding
        self._refresh(pid)

    def remove(self, pid: str, ref: str, encoding: np.ndarray) -> None:
        refs = self.members.get(pid)
        if refs is None or ref not in refs:
            return
        refs.discard(ref)
        if not refs:
            self.drop(pid)
            return
        self._sums[pid] = self._sums[pid] - encoding
        self._refresh(pid)

    def drop(self, pid: str) -> None:
        self.members.pop(pid, None)
        self._sums.pop(pid, None)
        row = self._rows.pop(pid, None)
        if row is not None:
            self._ids[row] = None
            self._means[row] = 0.0
            self._squares[row] = np.inf

    def mean(self, pid: str) -> np.ndarray:
        return (self._sums[pid] / len(self.members[pid])).astype(np.float32)

    def nearest(self, encoding: np.ndarray, exclude: Iterable[str] = ()) -> tuple[str, float] | None:
        """The person whose mean is nearest ``encoding`` (ignoring ``exclude``) and how near."""
        if not self._rows:
            return None
        count = len(self._ids)
        vector = np.asarray(encoding, dtype=np.float32)
        # |m - v|^2 = |m|^2 - 2 m.v + |v|^2: one matrix-vector product for all persons
        dist = self._squares[:count] - 2.0 * (self._means[:count] @ vector)
        for pid in exclude:
            row = self._rows.get(pid)
            if row is not None:
                dist[row] = np.inf
        row = int(np.argmin(dist))
        found = self._ids[row]
        if found is None or not np.isfinite(dist[row]):
            return None
        return found, float(np.linalg.norm(self._means[row] - vector))

    def _refresh(self, pid: str) -> None:
        row = self._rows.get(pid)
        if row is None:
            row = self._rows[pid] = len(self._ids)
            self._ids.append(pid)
            if row >= len(self._means):
                size = max(16, 2 * len(self._means))
                means = np.zeros((size, self._dim), np.float32)
                means[: len(self._means)] = self._means
                squares = np.full(size, np.inf, np.float32)
                squares[: len(self._squares)] = self._squares
                self._means, self._squares = means, squares
        mean = self.mean(pid)
        self._means[row] = mean
        self._squares[row] = float(mean @ mean)



# -- the library's people -------------------------------------------------------------
class _class_or_instance:  # noqa: N801 - used as a decorator, like classmethod
    """A method that receives the class when called on it, the instance otherwise."""

    def __init__(self, func: Any):
        self.func = func
        self.__doc__ = func.__doc__

    def __get__(self, obj: Any, owner: type) -> Callable[..., People]:
        bound: Callable[..., People] = self.func.__get__(owner if obj is None else obj, owner)
        return bound


class People:
    """Every person in the library the daemon serves; safe to use from several threads."""

    def __init__(self, store: Store, roots: Iterable[Path], threshold: float = 0.5):
        self.store = store
        self.roots = [Path(r) for r in roots]
        self.threshold = float(threshold)
        self.choices = Choices()
        self._lock = threading.RLock()
        self._faces: dict[str, _Face] = {}  # ref -> face
        self._face_count: dict[str, int] = {}  # content hash -> faces found in it
        self._face_sig: dict[str, str] = {}  # content hash -> digest of its face entries
        self._paths: dict[str, set[PathKey]] = {}  # content hash -> files holding it
        self._by_path: dict[PathKey, str] = {}  # file -> content hash
        self._assigned: dict[str, str] = {}  # ref -> person id
        self._clusters = _Clusters()
        self._cache_dirty = False
        self._anchor_map: dict[str, str] | None = None  # ref -> anchored person, derived
        self._anchored_ids: set[str] = set()

    @_class_or_instance
    def load(
        cls_or_self: Any,
        *args: Any,
        **kwargs: Any,
    ) -> People:
        """``People.load(store, roots, records, threshold=0.5)`` builds the people of a
        library; ``people.load(records)`` fills an instance made with ``People(...)``.

        ``records`` are pairs of absolute folder and record.  Saved choices are read;
        cached assignments are reused where they still fit them; faces they do not cover
        are placed incrementally; without any cache the library is reclustered.
        """
        if isinstance(cls_or_self, People):
            return cls_or_self._load(*args, **kwargs)
        return cls_or_self._build(*args, **kwargs)

    @classmethod
    def _build(
        cls,
        store: Store,
        roots: Iterable[Path],
        records: Iterable[tuple[Path, Record]],
        threshold: float = 0.5,
    ) -> People:
        return cls(store, roots, threshold)._load(records)

    def _load(self, records: Iterable[tuple[Path, Record]]) -> People:
        with self._lock:
            self.choices = self._read_choices()
            self._choices_changed()
            cached = self._read_cache()
            for folder, record in records:
                self._register(Path(folder), record)
            if cached:
                self._seed(cached)
            else:
                self._recluster()
        return self

    # -- updates from the pipeline -------------------------------------------------
    def assign_new(self, folder: Path, record: Record) -> set[str]:
        """Take in a new or changed record; returns the ids of the persons in it."""
        with self._lock:
            for ref in self._register(Path(folder), record):
                self._place(ref)
            return self._ids_of(str(record.get("hash") or ""))

    def forget(self, folder: Path, name: str) -> None:
        """A file was deleted: its faces leave their persons unless a copy remains."""
        with self._lock:
            key = (Path(folder), name)
            content = self._by_path.get(key)
            if content is not None:
                self._detach(key, content)

    def recluster(self) -> None:
        """Regroup every face from scratch, keeping user choices and, where possible, ids."""
        with self._lock:
            self._recluster()

    # -- reading ---------------------------------------------------------------------
    def list(self) -> builtins.list[Person]:
        """Every person with at least one face, most photographed first."""
        with self._lock:
            found = [self._person(pid) for pid in self._clusters.members]
        return sorted(found, key=lambda p: (-p.count, p.name is None, p.name or "", p.id))

    def person(self, person_id: str) -> Person | None:
        with self._lock:
            pid = self.choices.resolve(person_id)
            return self._person(pid) if pid in self._clusters.members else None

    def faces_of(self, person_id: str) -> builtins.list[FaceSample]:
        """The faces of a person, best first (refs for :meth:`reject`)."""
        with self._lock:
            pid = self._existing(person_id)
            refs = sorted(self._clusters.members[pid], key=lambda r: -self._faces[r].quality)
            return [self._sample(ref) for ref in refs]

    def people_in(self, target: Record | tuple[Path, str]) -> set[str]:
        """Ids and case-folded names of the persons in a record or a (folder, name) file.

        A ``person:`` filter matches when the case-folded term is in this set.
        """
        with self._lock:
            if isinstance(target, dict):
                content = str(target.get("hash") or "")
            else:
                content = self._by_path.get((Path(target[0]), target[1]), "")
            ids = self._ids_of(content)
            names = {n.casefold() for n in map(self.choices.name_of, ids) if n}
            return ids | names

    def find(self, term: str) -> set[str]:
        """Ids of persons whose id or name equals ``term``, ignoring case."""
        wanted = term.casefold()
        with self._lock:
            return {
                pid for pid in self._clusters.members
                if pid == wanted or (self.choices.name_of(pid) or "").casefold() == wanted
                or self.choices.resolve(wanted) == pid
            }

    # -- user choices ----------------------------------------------------------------
    def name(self, person_id: str, name: str) -> str:
        """Name (or, with an empty name, unname) a person; returns the person's id."""
        with self._lock:
            pid = self._existing(person_id)
            self.choices.names[pid] = (name.strip(), _now())
            self.choices.anchors.setdefault(pid, set()).update(self._clusters.members[pid])
            self._choices_changed()
            self.save()
            return pid

    def merge(self, person_id: str, into: str) -> str:
        """Make ``person_id`` part of ``into`` for good; returns the surviving id (``into``'s).

        ``into`` keeps its name, or takes the other's if it had none.  Faces the user
        rejected from ``into`` go to their next nearest person instead.
        """
        with self._lock:
            gone, keep = self._existing(person_id), self._existing(into)
            if keep == gone:
                return keep
            self.choices.aliases[gone] = keep
            if self.choices.name_of(keep) is None and self.choices.name_of(gone):
                self.choices.names[keep] = (self.choices.names[gone][0], _now())
            self._choices_changed()
            for ref in sorted(self._clusters.members[gone]):
                self._unassign(ref)
                if keep in self.choices.rejected(ref):
                    self._place(ref, settle=False)
                else:
                    self._join(ref, keep)
            self.choices.anchors.setdefault(keep, set()).update(self._clusters.members[keep])
            self._choices_changed()
            self.save()
            return keep

    def reject(self, ref: str, person_id: str) -> str | None:
        """Say face ``ref`` is not ``person_id``; returns the person it moved to."""
        with self._lock:
            pid = self.choices.resolve(person_id)
            self.choices.rejects.setdefault(ref, set()).add(pid)
            self._choices_changed()
            moved_to = None
            if self._assigned.get(ref) == pid:
                self._unassign(ref)
                self._place(ref)
                moved_to = self._assigned.get(ref)
            self.save()
            return moved_to

    # -- persistence -----------------------------------------------------------------
    def save(self) -> None:
        """Write the choices (merged with what is on disk) and the cache to every root."""
        with self._lock:
            before = self.choices.to_json()
            self.choices.update(self._read_choices())
            if self.choices.to_json() != before:
                self._choices_changed()
                self._recluster()  # another writer decided something meanwhile
            for root in self._online_roots():
                self._write_root(root)
            self._cache_dirty = False

    def _write_root(self, root: Path) -> None:
        directory = self.store.library_dir(root)
        choices = self.choices.to_json()
        try:
            directory.mkdir(parents=True, exist_ok=True)
            if atomic.read_json(directory / CHOICES_FILE) != choices:
                atomic.write_json(directory / CHOICES_FILE, choices)
            for conflict in directory.glob("people.sync-conflict-*.json"):
                conflict.unlink(missing_ok=True)
            if self._cache_dirty or not (directory / CACHE_FILE).exists():
                atomic.write_json(directory / CACHE_FILE, self._cache_for(root))
        except OSError as exc:
            log.warning("cannot save people in %s: %s", directory, exc)

    def _online_roots(self) -> builtins.list[Path]:
        return [root for root in self.roots if root.is_dir()]

    def _read_choices(self) -> Choices:
        merged = Choices()
        for root in self._online_roots():
            directory = self.store.library_dir(root)
            files = [directory / CHOICES_FILE]
            files += sorted(directory.glob("people.sync-conflict-*.json"))
            for path in files:
                merged.update(Choices.from_json(atomic.read_json(path)))
        return merged

    def _read_cache(self) -> dict[str, str]:
        found: dict[str, str] = {}
        for root in self._online_roots():
            data = atomic.read_json(self.store.library_dir(root) / CACHE_FILE)
            if not isinstance(data, dict) or data.get("format") != FORMAT:
                continue
            if data.get("encoder") != ENCODER_ID or data.get("threshold") != self.threshold:
                continue
            for ref, pid in _dict(data.get("assignments")).items():
                if isinstance(pid, str):
                    found[str(ref)] = pid
        return found

    def _cache_for(self, root: Path) -> dict[str, Any]:
        mine = {
            content for content, keys in self._paths.items()
            if any(_under(folder, root) for folder, _ in keys)
        }
        assignments = {
            ref: pid for ref, pid in sorted(self._assigned.items())
            if ref.rpartition("#")[0] in mine
        }
        return {"format": FORMAT, "encoder": ENCODER_ID, "threshold": self.threshold,
                "assignments": assignments}

    # -- bookkeeping -------------------------------------------------------------------
    def _register(self, folder: Path, record: Record) -> builtins.list[str]:
        """Note which file holds which content; returns refs of faces not seen before."""
        key = (folder, decode_name(record))
        content = str(record.get("hash") or "")
        old = self._by_path.get(key)
        if old != content:
            if old is not None:
                self._detach(key, old)
            if content:
                self._by_path[key] = content
                self._paths.setdefault(content, set()).add(key)
        entries = record.get("faces")
        if not content or not isinstance(entries, list):
            return []
        signature = _signature(entries)
        if self._face_sig.get(content) == signature:
            return []
        self._drop_faces(content)  # detected again (a newer faces stage): start over
        self._face_count[content] = len(entries)
        self._face_sig[content] = signature
        new = []
        for index, entry in enumerate(entries):
            face = _parse_face(entry)
            if face is not None:
                ref = face_ref(content, index)
                self._faces[ref] = face
                new.append(ref)
        return new

    def _detach(self, key: PathKey, content: str) -> None:
        self._by_path.pop(key, None)
        keys = self._paths.get(content, set())
        keys.discard(key)
        if keys:
            return
        self._paths.pop(content, None)
        self._drop_faces(content)

    def _drop_faces(self, content: str) -> None:
        self._face_sig.pop(content, None)
        for index in range(self._face_count.pop(content, 0)):
            ref = face_ref(content, index)
            self._unassign(ref)
            self._faces.pop(ref, None)

    def _ids_of(self, content: str) -> set[str]:
        refs = (face_ref(content, i) for i in range(self._face_count.get(content, 0)))
        return {self._assigned[r] for r in refs if r in self._assigned}

    def _existing(self, person_id: str) -> str:
        pid = self.choices.resolve(person_id)
        if pid not in self._clusters.members:
            raise UsageError(f"no person {person_id!r} in this library")
        return pid

    def _person(self, pid: str) -> Person:
        refs = self._clusters.members[pid]
        files = sorted({folder / name for r in refs for folder, name in self._files_of(r)})
        best = max(sorted(refs), key=lambda r: self._faces[r].quality)
        return Person(pid, self.choices.name_of(pid), len(files), files, self._sample(best))

    def _files_of(self, ref: str) -> set[PathKey]:
        return self._paths.get(ref.rpartition("#")[0], set())

    def _sample(self, ref: str) -> FaceSample:
        face = self._faces[ref]
        folder, name = min(self._files_of(ref))
        return FaceSample(ref, folder / name, face.box, face.time)

    # -- clustering --------------------------------------------------------------------
    def _join(self, ref: str, pid: str) -> None:
        self._assigned[ref] = pid
        self._clusters.add(pid, ref, self._faces[ref].encoding)
        self._cache_dirty = True

    def _unassign(self, ref: str) -> None:
        pid = self._assigned.pop(ref, None)
        if pid is not None:
            self._clusters.remove(pid, ref, self._faces[ref].encoding)
            self._cache_dirty = True

    def _move(self, ref: str, pid: str) -> None:
        self._unassign(ref)
        self._join(ref, pid)

    def _choices_changed(self) -> None:
        self._anchor_map = None

    def _anchors(self) -> dict[str, str]:
        """Which person each anchored face belongs to (the smallest id if several)."""
        if self._anchor_map is None:
            found: dict[str, str] = {}
            for pid, refs in sorted(self.choices.anchored().items(), reverse=True):
                found.update(dict.fromkeys(refs, pid))
            self._anchor_map = found
            self._anchored_ids = set(found.values())
        return self._anchor_map

    def _anchor_of(self, ref: str) -> str | None:
        return self._anchors().get(ref)

    def _place(self, ref: str, settle: bool = True) -> None:
        """Put one unassigned face with its anchor, the nearest person, or a new person."""
        pid = self._anchor_of(ref)
        if pid is None:
            hit = self._clusters.nearest(self._faces[ref].encoding, self.choices.rejected(ref))
            if hit is None or hit[1] >= self.threshold:
                self._join(ref, self._fresh_id(ref))
                return
            pid = hit[0]
        self._join(ref, pid)
        if settle:
            self._settle(pid)

    def _settle(self, pid: str) -> bool:
        """Merge ``pid`` with the nearest other person if their means are close enough."""
        if pid not in self._clusters.members:
            return False
        hit = self._clusters.nearest(self._clusters.mean(pid), {pid})
        if hit is None or hit[1] >= self.threshold or not self._can_merge(pid, hit[0]):
            return False
        a, b = pid, hit[0]
        keep, gone = sorted((a, b), key=lambda p: (not self._confirmed(p),
                                                   -len(self._clusters.members[p]), p))
        for ref in sorted(self._clusters.members[gone]):
            self._move(ref, keep)
        return True

    def _confirmed(self, pid: str) -> bool:
        self._anchors()
        return bool(self.choices.name_of(pid)) or pid in self._anchored_ids

    def _can_merge(self, a: str, b: str) -> bool:
        if self._confirmed(a) and self._confirmed(b):
            return False
        for ref in self.choices.rejects:
            owner = self._assigned.get(ref)
            if owner in (a, b) and ({a, b} - {owner}) & self.choices.rejected(ref):
                return False
        return True

    def _fresh_id(self, ref: str) -> str:
        taken = set(self._clusters.members) | set(self.choices.aliases) | set(self.choices.names)
        taken |= set(self.choices.anchors)
        salt = 0
        while person_id_for(ref, salt) in taken:
            salt += 1
        return person_id_for(ref, salt)

    def _seed(self, cached: dict[str, str]) -> None:
        for ref in sorted(self._faces):
            pid = self._anchor_of(ref) or self.choices.resolve(cached.get(ref, ""))
            if pid and pid not in self.choices.rejected(ref):
                self._join(ref, pid)
        missing = sorted(ref for ref in self._faces if ref not in self._assigned)
        for ref in missing:
            self._place(ref)
        self._cache_dirty = bool(missing)

    def _recluster(self) -> None:
        old = dict(self._assigned)
        self._assigned, self._clusters = {}, _Clusters()
        anchors = self._anchors()
        for ref in sorted(anchors):
            if ref in self._faces:
                self._join(ref, anchors[ref])
        for ref in sorted(self._faces):
            if ref not in self._assigned:
                self._place(ref, settle=False)
        while any([self._settle(pid) for pid in sorted(self._clusters.members)]):
            pass
        self._reassign(set(anchors))
        self._keep_ids(old, set(anchors.values()))
        self._cache_dirty = True

    def _reassign(self, anchored: set[str]) -> None:
        """One pass moving each face to a nearer person mean, if one is within reach."""
        for ref in sorted(self._faces):
            if ref in anchored:
                continue
            current = self._assigned[ref]
            encoding = self._faces[ref].encoding
            hit = self._clusters.nearest(encoding, self.choices.rejected(ref) | {current})
            if hit is None or hit[1] >= self.threshold:
                continue
            here = float(np.linalg.norm(self._clusters.mean(current) - encoding))
            if hit[1] < here and len(self._clusters.members[current]) > 1:
                self._move(ref, hit[0])

    def _keep_ids(self, old: dict[str, str], fixed: set[str]) -> None:
        """Rename fresh clusters to the ids most of their faces had before."""
        overlaps = []
        for pid, refs in self._clusters.members.items():
            if pid in fixed:
                continue
            counts: dict[str, int] = {}
            for ref in refs:
                if ref in old:
                    counts[old[ref]] = counts.get(old[ref], 0) + 1
            overlaps += [(-n, pid, prev) for prev, n in counts.items()]
        final = {pid: pid for pid in self._clusters.members if pid in fixed}
        used = set(fixed)
        for _, pid, prev in sorted(overlaps):
            if pid not in final and prev not in used and prev not in self.choices.aliases:
                final[pid] = prev
                used.add(prev)
        for pid in sorted(self._clusters.members):
            if pid not in final:
                final[pid] = pid if pid not in used else self._unused_id(pid, used)
                used.add(final[pid])
        if any(k != v for k, v in final.items()):
            assigned = dict(self._assigned)
            self._assigned, self._clusters = {}, _Clusters()
            for ref, pid in sorted(assigned.items()):
                self._join(ref, final[pid])

    def _unused_id(self, pid: str, used: set[str]) -> str:
        founder = min(self._clusters.members[pid])
        salt = 1
        while person_id_for(founder, salt) in used:
            salt += 1
        return person_id_for(founder, salt)


def _under(folder: Path, root: Path) -> bool:
    return folder == root or root in folder.parents


def _signature(entries: builtins.list[Any]) -> str:
    digest = hashlib.blake2b(digest_size=8)
    for entry in entries:
        encoding = entry.get("encoding") if isinstance(entry, dict) else None
        digest.update(str(encoding).encode() + b"|")
    return digest.hexdigest()


def _parse_face(entry: Any) -> _Face | None:
    """A face entry of a record, or None when it is damaged (it is then left out)."""
    if not isinstance(entry, dict) or not isinstance(entry.get("encoding"), str):
        return None
    try:
        encoding = decode_vector(entry["encoding"])
        box = [float(v) for v in entry.get("box") or []]
        quality = face_quality(*(float(entry.get(k) or 0.0)
                                 for k in ("eyes_open", "smile", "sharpness", "size")))
    except (ValueError, TypeError):
        return None
    if encoding.shape != (128,) or not np.all(np.isfinite(encoding)) or len(box) != 4:
        return None
    time = entry.get("time")
    return _Face(encoding, box, float(time) if isinstance(time, int | float) else None, quality)

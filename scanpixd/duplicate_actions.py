"""What a user may ask to do with duplicate groups: rate them in XMP sidecars, or move the rest.

Nothing here runs on its own.  ``plan_xmp`` / ``plan_move`` build a :class:`Plan` (a dry
run shows it and stops there); :func:`apply` first writes an undo journal beside the
changes, then carries the plan out; :func:`undo` reads a journal and puts things back.
No photo is ever deleted or overwritten: a move keeps every byte (across file systems it
copies, checks, then removes the source), a name already taken at the destination gets a
numbered one.  Sidecars are the ``<photo>.<ext>.xmp`` files darktable and digiKam read (an
existing ``<photo>.xmp`` is updated instead); new ones are written here, existing ones are
updated through exiftool so everything else in them is kept.  Journals hold paths relative
to their own folder, so a library moved or synced with its journal can still be undone.
"""

from __future__ import annotations

import base64
import hashlib
import os
import shutil
import subprocess
import tempfile
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal
from xml.sax.saxutils import quoteattr

from scanpixd.duplicates import Group
from scanpixd.errors import UsageError
from scanpixd.store import atomic

JOURNAL_PREFIX = "scanpix-undo-"
_JOURNAL_FORMAT = 1
_XMP_TEMPLATE = """<?xpacket begin="\ufeff" id="W5M0MpCehiHzreSzNTczkc9d"?>
<x:xmpmeta xmlns:x="adobe:ns:meta/">
 <rdf:RDF xmlns:rdf="http://www.w3.org/1999/02/22-rdf-syntax-ns#">
  <rdf:Description rdf:about="" xmlns:xmp="http://ns.adobe.com/xap/1.0/"{attributes}/>
 </rdf:RDF>
</x:xmpmeta>
<?xpacket end="w"?>
"""


@dataclass
class Step:
    """One change: a sidecar to write for ``path``, or ``path`` to move to ``target``."""

    action: Literal["xmp", "move"]
    path: Path
    target: Path
    rating: int | None = None
    label: str | None = None
    note: str = ""  # why the step will be skipped, when it will

    def describe(self) -> str:
        if self.note:
            return f"skip  {self.path}: {self.note}"
        if self.action == "move":
            return f"move  {self.path} -> {self.target}"
        what = ", ".join(p for p in (f"rating {self.rating}" if self.rating is not None else "",
                                     f"label {self.label}" if self.label else "") if p)
        state = "update" if self.target.exists() else "new"
        return f"xmp   {self.target} ({state}): {what}"


@dataclass
class Plan:
    """Changes to make, and the folder the undo journal goes to."""

    steps: list[Step]
    journal_dir: Path
    exiftool: str = "exiftool"
    journal: Path | None = field(default=None)  # set once applied

    def describe(self) -> list[str]:
        """One line per step: what a dry run prints."""
        return [step.describe() for step in self.steps]

    def to_dict(self) -> dict[str, Any]:
        return {"journal_dir": str(self.journal_dir),
                "steps": [{"action": s.action, "path": str(s.path), "target": str(s.target),
                           "rating": s.rating, "label": s.label, "note": s.note}
                          for s in self.steps]}


@dataclass
class UndoReport:
    restored: list[Path] = field(default_factory=list)
    skipped: list[tuple[Path, str]] = field(default_factory=list)


# --- plans ---------------------------------------------------------------------------------


def plan_xmp(groups: Iterable[Group], journal_dir: Path, *, best_rating: int | None = 5,
             rest_rating: int | None = 1, best_label: str | None = "Green",
             rest_label: str | None = "Red", exiftool: str = "exiftool") -> Plan:
    """Rate and label every member: the best of each group one way, the rest another."""
    for rating in (best_rating, rest_rating):
        if rating is not None and not -1 <= rating <= 5:
            raise UsageError(f"XMP rating must be between -1 and 5, not {rating}")
    steps = []
    for group in groups:
        best = str(group.best.path)
        for member in group.members:
            path = Path(member.path)
            is_best = member.path == best
            steps.append(Step("xmp", path, sidecar_of(path),
                              best_rating if is_best else rest_rating,
                              best_label if is_best else rest_label))
    return Plan(_unique(steps), journal_dir, exiftool)


def plan_move(groups: Iterable[Group], destination: Path,
              roots: Sequence[Path] = ()) -> Plan:
    """Move every member but the best into ``destination``, keeping the path under its root.

    A member's own ``<photo>.xmp`` sidecar moves with it.
    """
    destination = destination.expanduser().absolute()
    taken: set[Path] = set()
    steps = []
    for group in groups:
        best = str(group.best.path)
        for member in group.members:
            if member.path == best:
                continue
            path = Path(member.path)
            target = _free_name(destination / _relative(path, roots), taken)
            taken.add(target)
            note = "already in the destination" if path.parent == target.parent else ""
            steps.append(Step("move", path, target, note=note))
            companion = path.with_name(path.name + ".xmp")
            if companion.is_file() and not note:  # its sidecar goes along
                steps.append(Step("move", companion, target.with_name(target.name + ".xmp")))
                taken.add(steps[-1].target)
    return Plan(_unique(steps), destination)


def sidecar_of(photo: Path) -> Path:
    """The XMP sidecar of a photo: an existing ``IMG.xmp``, else ``IMG.jpg.xmp``."""
    short = photo.with_suffix(".xmp")
    full = photo.with_name(photo.name + ".xmp")
    return short if short.exists() and not full.exists() else full


def _unique(steps: list[Step]) -> list[Step]:
    seen: set[tuple[str, Path]] = set()
    out = []
    for step in steps:
        if (step.action, step.path) not in seen:
            seen.add((step.action, step.path))
            out.append(step)
    return out


def _relative(path: Path, roots: Sequence[Path]) -> Path:
    for root in sorted(roots, key=lambda r: len(str(r)), reverse=True):
        try:
            return path.relative_to(root)
        except ValueError:
            continue
    return Path(path.name)


def _free_name(target: Path, taken: set[Path]) -> Path:
    """``target``, or ``name (2).ext`` and so on when that name is used or planned."""
    candidate, n = target, 1
    while candidate in taken or candidate.exists() or candidate.is_symlink():
        n += 1
        candidate = target.with_name(f"{target.stem} ({n}){target.suffix}")
    return candidate


# --- applying ------------------------------------------------------------------------------


def apply(plan: Plan, dry_run: bool = True) -> Path | None:
    """Carry the plan out (unless ``dry_run``); returns the undo journal written first."""
    if dry_run:
        return None
    live = [s for s in plan.steps if not s.note]
    if not live:
        return None
    prepared = [_prepare(step, plan) for step in live]
    plan.journal_dir.mkdir(parents=True, exist_ok=True)
    journal = _journal_path(plan.journal_dir)
    base = journal.parent
    entries = [_entry(step, ready, base) for step, ready in zip(live, prepared, strict=True)]
    atomic.write_json(journal, {"format": _JOURNAL_FORMAT, "created": time.time(),
                                "entries": entries})
    for step, ready in zip(live, prepared, strict=True):
        if step.action == "move":
            _move(step.path, step.target)
        else:
            atomic.write_bytes(step.target, ready)
    plan.journal = journal
    return journal


def _prepare(step: Step, plan: Plan) -> bytes:
    """What a sidecar will hold once written (nothing for a move)."""
    if step.action == "move":
        if not step.path.is_file():
            raise UsageError(f"{step.path}: no such file to move")
        return b""
    if step.target.exists():
        return _updated_sidecar(step, plan.exiftool)
    return _new_sidecar(step.rating, step.label)


def _new_sidecar(rating: int | None, label: str | None) -> bytes:
    attributes = ""
    if rating is not None:
        attributes += f"\n    xmp:Rating={quoteattr(str(rating))}"
    if label:
        attributes += f"\n    xmp:Label={quoteattr(label)}"
    return _XMP_TEMPLATE.format(attributes=attributes).encode("utf-8")


def _updated_sidecar(step: Step, exiftool: str) -> bytes:
    """An existing sidecar with the rating and label changed by exiftool (on a copy)."""
    args = []
    if step.rating is not None:
        args.append(f"-XMP-xmp:Rating={step.rating}")
    if step.label:
        args.append(f"-XMP-xmp:Label={step.label}")
    with tempfile.TemporaryDirectory(prefix="scanpix-xmp-") as scratch:
        copy = Path(scratch) / "sidecar.xmp"
        shutil.copyfile(step.target, copy)
        try:
            done = subprocess.run([exiftool, "-q", "-overwrite_original", *args, str(copy)],
                                  capture_output=True, text=True, timeout=60)
        except (OSError, subprocess.TimeoutExpired) as exc:
            raise UsageError(f"{step.target}: cannot update the sidecar: {exc}") from exc
        if done.returncode != 0:
            reason = done.stderr.strip().splitlines()[-1:] or ["exiftool failed"]
            raise UsageError(f"{step.target}: cannot update the sidecar: {reason[0]}")
        return copy.read_bytes()


def _journal_path(folder: Path) -> Path:
    stamp = time.strftime("%Y%m%d-%H%M%S")
    candidate = folder / f"{JOURNAL_PREFIX}{stamp}.json"
    n = 1
    while candidate.exists():
        n += 1
        candidate = folder / f"{JOURNAL_PREFIX}{stamp}-{n}.json"
    return candidate


def _entry(step: Step, ready: bytes, base: Path) -> dict[str, Any]:
    if step.action == "move":
        return {"action": "move", "from": _rel(step.path, base), "to": _rel(step.target, base)}
    before = step.target.read_bytes() if step.target.exists() else None
    return {"action": "xmp", "sidecar": _rel(step.target, base),
            "before": None if before is None else base64.b64encode(before).decode("ascii"),
            "after": hashlib.sha256(ready).hexdigest()}


def _rel(path: Path, base: Path) -> str:
    return os.path.relpath(path.absolute(), base)


def _move(source: Path, target: Path) -> None:
    """Move without ever replacing a file: rename, or copy-check-remove across devices."""
    target.parent.mkdir(parents=True, exist_ok=True)
    if target.exists() or target.is_symlink():
        raise UsageError(f"{target}: already exists; nothing was replaced")
    try:
        os.link(source, target)  # fails rather than replace; same file system only
    except OSError:
        _copy_across(source, target)
    else:
        source.unlink()


def _copy_across(source: Path, target: Path) -> None:
    with open(source, "rb") as src, open(target, "xb") as dst:
        shutil.copyfileobj(src, dst, 1 << 20)
        dst.flush()
        os.fsync(dst.fileno())
    shutil.copystat(source, target)
    if _digest(source) != _digest(target):
        target.unlink()
        raise UsageError(f"{source}: the copy to {target} did not match; source kept")
    source.unlink()


def _digest(path: Path) -> str:
    digest = hashlib.blake2b(digest_size=16)
    with open(path, "rb") as fh:
        while chunk := fh.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


# --- undoing -------------------------------------------------------------------------------


def undo(journal: Path) -> UndoReport:
    """Put back what the journal's plan changed; changes made since are left alone."""
    data = atomic.read_json(journal)
    if not isinstance(data, dict) or not isinstance(data.get("entries"), list):
        raise UsageError(f"{journal}: not an undo journal")
    base = journal.parent
    report = UndoReport()
    for entry in reversed(data["entries"]):
        if not isinstance(entry, dict):
            continue
        if entry.get("action") == "move":
            _undo_move(base / str(entry["from"]), base / str(entry["to"]), report)
        elif entry.get("action") == "xmp":
            _undo_xmp(base / str(entry["sidecar"]), entry, report)
    done = journal.with_name(journal.name + ".undone")
    os.replace(journal, done)
    return report


def _undo_move(original: Path, moved: Path, report: UndoReport) -> None:
    original, moved = Path(os.path.normpath(original)), Path(os.path.normpath(moved))
    if original.exists() or original.is_symlink():
        report.skipped.append((original, "a file is at the original place"))
    elif not moved.is_file():
        report.skipped.append((original, f"{moved} is gone"))
    else:
        _move(moved, original)
        report.restored.append(original)


def _undo_xmp(sidecar: Path, entry: dict[str, Any], report: UndoReport) -> None:
    sidecar = Path(os.path.normpath(sidecar))
    if not sidecar.exists():
        report.skipped.append((sidecar, "the sidecar is gone"))
        return
    if hashlib.sha256(sidecar.read_bytes()).hexdigest() != entry.get("after"):
        report.skipped.append((sidecar, "the sidecar changed since"))
        return
    before = entry.get("before")
    if before is None:
        sidecar.unlink()  # ours, unchanged: the photo had no sidecar before
    else:
        atomic.write_bytes(sidecar, base64.b64decode(before))
    report.restored.append(sidecar)

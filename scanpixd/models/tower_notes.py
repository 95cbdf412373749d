"""The notes that a numpy tower was checked against open_clip on this machine.

Text and image towers keep one note each per model id, in ``cache_dir/models/<kind>/``:
machine-local, and only a cache.  A note vouches for one checkpoint file by identity (size,
mtime, ctime, inode): a changed or replaced file is checked again.  This module holds what
both kinds share; each tower module says what its note carries.
"""

from __future__ import annotations

import hashlib
import logging
from pathlib import Path
from typing import Any

from scanpixd.store import atomic

log = logging.getLogger(__name__)

Identity = tuple[int, int, int, int]  # size, mtime_ns, ctime_ns, inode


def identity(path: Path) -> Identity:
    st = path.stat()
    return (st.st_size, st.st_mtime_ns, st.st_ctime_ns, st.st_ino)


def note_path(cache_dir: Path, kind: str, model_id: str) -> Path:
    digest = hashlib.blake2b(model_id.encode(), digest_size=10).hexdigest()
    return cache_dir / "models" / kind / f"{digest}.json"


def read(cache_dir: Path, kind: str, model_id: str, version: int) -> dict[str, Any] | None:
    """The note's data, if it is of ``version``, for ``model_id``, and its checkpoint file
    is still the one it was written for; ``None`` otherwise (missing or damaged too)."""
    data = atomic.read_json(note_path(cache_dir, kind, model_id))
    if not isinstance(data, dict):
        return None
    if data.get("version") != version or data.get("model_id") != model_id:
        return None
    try:
        noted = tuple(int(n) for n in data["identity"])
        if identity(Path(str(data["checkpoint"]))) != noted:
            return None
    except (OSError, ValueError, TypeError, KeyError):
        return None
    return data


def write(cache_dir: Path, kind: str, model_id: str, version: int, checkpoint: str,
          noted: Identity, fields: dict[str, Any]) -> None:
    """Remember a note; only a cache, so a failed write is logged and forgotten."""
    target = note_path(cache_dir, kind, model_id)
    data = {"version": version, "model_id": model_id, "checkpoint": checkpoint,
            "identity": list(noted), **fields}
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        atomic.write_json(target, data)
    except OSError as exc:
        log.debug("cannot write %s: %s", target, exc)

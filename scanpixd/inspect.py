"""One file's record, made presentable: absolute asset paths, no raw vectors."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from scanpixd.config import Settings
from scanpixd.errors import UsageError
from scanpixd.record import Record, decode_name
from scanpixd.store import FolderStore, Store


def describe(path: Path, settings: Settings, store: Store | None = None) -> dict[str, Any]:
    """The JSON object ``scanpix-query info`` prints for ``path``."""
    store = store or Store(settings)
    folder = store.folder(path.parent)
    record = folder.read(path.name)
    if record is None:
        raise UsageError(f"{path}: not indexed yet (run `scanpixd index {path.parent}`)")
    return present(record, folder)


def present(record: Record, folder: FolderStore) -> dict[str, Any]:
    path = folder.folder / decode_name(record)
    out: dict[str, Any] = {
        "path": str(path),
        "name": record.get("name"),
        "status": record.get("status", "ok"),
        "error": record.get("error"),
        "stale": _is_stale(record, path),
        "size": record.get("size"),
        "mtime_ns": record.get("mtime_ns"),
        "hash": record.get("hash"),
        "stages": record.get("stages", {}),
        "errors": record.get("errors", {}),
    }
    for key in ("media", "metadata", "hashes", "quality", "taken", "place"):
        if key in record:
            out[key] = record[key]
    thumbs = record.get("thumbs") or {}
    out["thumbs"] = {size: _asset(folder, name, "thumbs") for size, name in thumbs.items()}
    if record.get("preview"):
        out["preview"] = {k: _asset(folder, v, "previews") for k, v in record["preview"].items()}
    if "faces" in record:
        out["faces"] = [{k: v for k, v in face.items() if k != "encoding"} for face in record["faces"]]
    if "clip" in record:
        clip = record["clip"]
        out["clip"] = {"model": clip.get("model"), "dim": clip.get("dim"),
                       "vectors": len(clip.get("vectors", []))}
    return out


def _asset(folder: FolderStore, name: str, kind: str) -> str | None:
    try:
        return str(folder.asset_path(name, kind))
    except ValueError:  # a name that is not a plain file name: never followed
        return None


def _is_stale(record: Record, path: Path) -> bool:
    try:
        st = os.stat(path)
    except OSError:
        return True
    return not (st.st_size == record.get("size") and st.st_mtime_ns == record.get("mtime_ns"))

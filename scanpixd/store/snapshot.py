"""One file of named arrays and a JSON header, written atomically and read back by mmap.

The library keeps its machine-local snapshot in this form (see :mod:`scanpixd.library`):
columns, names and record bytes of 100k items load in a fraction of a second because
nothing is parsed, and the record bytes are not even read until a query asks for one.

Layout: ``MAGIC``, the header's length (8 bytes, little-endian), the header (JSON: the
caller's metadata and where each array lies), then each array's raw bytes, 64-byte
aligned.  A file that is truncated, of another format or inconsistent is reported as
``None``: the snapshot is derived data and is rebuilt from the records.
"""

from __future__ import annotations

import contextlib
import logging
import mmap
import os
import struct
from pathlib import Path
from typing import Any

import numpy as np
import orjson

from scanpixd.store import atomic

log = logging.getLogger(__name__)

MAGIC = b"SCANPIXSNAP1\n"
_ALIGN = 64
_BATCH = 1 << 20  # bytes of pieces joined per write


class Pieces:
    """Byte strings stored one after another as one ``uint8`` array, written without first
    joining them in memory: a library's records are 200 MB, and fresh memory that size
    costs more to fault in than the writing does."""

    dtype = np.dtype(np.uint8)

    def __init__(self, parts: list[bytes | memoryview]):
        self.parts = parts
        self.nbytes = sum(len(part) for part in parts)
        self.shape = (self.nbytes,)

    def write_to(self, fh: Any) -> None:
        batch: list[bytes | memoryview] = []
        size = 0
        for part in self.parts:
            batch.append(part)
            size += len(part)
            if size >= _BATCH:
                fh.write(b"".join(batch))
                batch, size = [], 0
        if batch:
            fh.write(b"".join(batch))


def write(path: Path, meta: dict[str, Any], arrays: dict[str, np.ndarray | Pieces]) -> None:
    """Write ``arrays`` (1- or 2-d, plain dtypes, or :class:`Pieces`) and ``meta`` to
    ``path`` atomically."""
    layout: dict[str, dict[str, Any]] = {}
    offset = 0
    for name, array in arrays.items():
        offset = _aligned(offset)
        layout[name] = {"offset": offset, "dtype": array.dtype.str, "shape": list(array.shape)}
        offset += array.nbytes
    header = orjson.dumps({"meta": meta, "arrays": layout}, option=orjson.OPT_SERIALIZE_NUMPY)
    start = _aligned(len(MAGIC) + 8 + len(header))
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic.replacing(path, mode=0o600) as fh:  # machine-local, the user's own
        fh.write(MAGIC + struct.pack("<Q", len(header)) + header)
        for name, array in arrays.items():
            fh.seek(start + int(layout[name]["offset"]))
            if isinstance(array, Pieces):
                array.write_to(fh)
            else:
                fh.write(np.ascontiguousarray(array).data)
        fh.truncate(start + offset)


class Snapshot:
    """A snapshot file mapped read-only: ``meta`` and ``array(name)`` views into the map."""

    def __init__(self, mapped: mmap.mmap, meta: dict[str, Any], layout: dict[str, Any], start: int):
        self._map = mapped
        self.meta = meta
        self._layout = layout
        self._start = start

    def array(self, name: str) -> np.ndarray:
        """A read-only view of array ``name`` (KeyError when the file has none)."""
        spec = self._layout[name]
        dtype = np.dtype(spec["dtype"])
        count = int(np.prod(spec["shape"])) if spec["shape"] else 1
        view = np.frombuffer(self._map, dtype=dtype, count=count, offset=self._start + spec["offset"])
        return view.reshape(spec["shape"])

    def release_pages(self) -> None:
        """Drop the file's pages from this process's memory (they stay in the page cache and
        come back on the next read): after a pass that read every record, they would
        otherwise count as the process's own."""
        with contextlib.suppress(OSError, ValueError, AttributeError):
            self._map.madvise(mmap.MADV_DONTNEED)

    def bytes_view(self, name: str) -> memoryview:
        """Array ``name`` (of bytes) as a memoryview: slices of it cost no copy."""
        return memoryview(self.array(name).data).cast("B")


def read(path: Path) -> Snapshot | None:
    """The snapshot in ``path``, or None when it is missing or damaged."""
    try:
        with open(path, "rb") as fh:
            if os.fstat(fh.fileno()).st_size < len(MAGIC) + 8:
                return None
            mapped = mmap.mmap(fh.fileno(), 0, access=mmap.ACCESS_READ)
    except (OSError, ValueError):
        return None
    try:
        return _parse(mapped)
    except (ValueError, KeyError, TypeError, struct.error, orjson.JSONDecodeError) as exc:
        log.info("snapshot %s is unusable (%s); it will be rebuilt", path, exc)
        with contextlib.suppress(BufferError):
            mapped.close()
        return None


def _parse(mapped: mmap.mmap) -> Snapshot | None:
    if mapped[: len(MAGIC)] != MAGIC:
        return None
    (length,) = struct.unpack("<Q", mapped[len(MAGIC): len(MAGIC) + 8])
    header = orjson.loads(mapped[len(MAGIC) + 8: len(MAGIC) + 8 + length])
    start = _aligned(len(MAGIC) + 8 + length)
    layout = header["arrays"]
    for spec in layout.values():  # every array must lie inside the file
        size = np.dtype(spec["dtype"]).itemsize * int(np.prod(spec["shape"]))
        if spec["offset"] < 0 or start + spec["offset"] + size > len(mapped):
            raise ValueError("truncated")
    return Snapshot(mapped, header["meta"], layout, start)


def _aligned(offset: int) -> int:
    return (offset + _ALIGN - 1) // _ALIGN * _ALIGN

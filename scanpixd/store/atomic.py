"""Crash-safe file writes and tolerant reads.

A write goes to a temporary file in the same directory, is fsynced, then renamed over
the target, so a reader sees the old file or the new one, never a torn one, even after
``kill -9`` or a power cut.  Temporary files that a crash leaves behind carry
:data:`TEMP_MARKER` in their name and are swept by the store.
"""

from __future__ import annotations

import contextlib
import os
import secrets
from collections.abc import Iterator
from pathlib import Path
from typing import Any, BinaryIO

import orjson

TEMP_MARKER = ".tmp-"


def temp_name(target: Path) -> Path:
    return target.with_name(f".{target.name}{TEMP_MARKER}{os.getpid()}-{secrets.token_hex(4)}")


_READ_CHUNK = 1 << 16  # below malloc's mmap threshold: a buffer per read stays cheap


def is_temp_name(name: str) -> bool:
    return name.startswith(".") and TEMP_MARKER in name


@contextlib.contextmanager
def replacing(target: Path, mode: int = 0o644, durable: bool = True) -> Iterator[BinaryIO]:
    """A new file that replaces ``target`` when the block ends (written, fsync'd, renamed);
    on an error the temp file is removed and ``target`` is untouched.

    ``durable=False`` skips the fsync: for machine-local derived data (caches, notes) whose
    readers check what they read, where a crash may leave the old file, or an empty or
    short one, and that only costs a rebuild.  A cold start writes thousands of them."""
    tmp = temp_name(target)
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
    try:
        with os.fdopen(fd, "wb") as fh:
            yield fh
            if durable:
                fh.flush()
                os.fsync(fh.fileno())
        os.replace(tmp, target)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def write_bytes(target: Path, data: bytes, durable: bool = True) -> None:
    """Atomically replace ``target`` with ``data`` (temp file, fsync, rename)."""
    with replacing(target, durable=durable) as fh:
        fh.write(data)


def write_json(target: Path, value: Any) -> None:
    write_bytes(target, orjson.dumps(value, option=orjson.OPT_SERIALIZE_NUMPY))


def read_json(path: Path) -> Any | None:
    """The JSON value in ``path``, or ``None`` when it is missing, truncated or invalid.

    Read with plain system calls, no file objects: a first load on a new machine reads
    every record of a library through here."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except (FileNotFoundError, IsADirectoryError, NotADirectoryError, PermissionError):
        return None
    try:
        chunks = []
        while chunk := os.read(fd, _READ_CHUNK):
            chunks.append(chunk)
    except IsADirectoryError:
        return None
    finally:
        os.close(fd)
    try:
        return orjson.loads(chunks[0] if len(chunks) == 1 else b"".join(chunks))
    except orjson.JSONDecodeError:
        return None

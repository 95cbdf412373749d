"""Giving freed memory back to the system after a burst of allocations.

glibc keeps the memory of freed large objects (a load's parsed records, a duplicate pass's
columns, a model's inference buffers) in the process for reuse; a daemon that did such a
burst once would carry it for the rest of its life.  ``malloc_trim`` returns it.
"""

from __future__ import annotations

import ctypes
import functools
from typing import Any


@functools.cache
def _libc() -> Any:
    try:
        return ctypes.CDLL("libc.so.6")
    except OSError:  # not glibc: nothing to trim
        return None


def trim() -> None:
    """Return the heap's free memory to the system (a no-op where glibc is absent)."""
    libc = _libc()
    if libc is not None and hasattr(libc, "malloc_trim"):
        libc.malloc_trim(0)

"""Record format migrations: a chain of functions, each lifting a record by one version.

A record written by an older scanpixd is migrated when it is read and rewritten by the
next write.  A record from a *newer* scanpixd is left alone and treated as missing, so an
old version never destroys data it does not understand (the file is not overwritten
unless the original changed).
"""

from __future__ import annotations

from collections.abc import Callable

from scanpixd.record import RECORD_FORMAT, Record

# MIGRATIONS[n] lifts a format-n record to format n + 1.
MIGRATIONS: dict[int, Callable[[Record], Record]] = {}


class NewerFormat(Exception):
    """The record was written by a newer scanpixd than this one."""


def migrate(record: Record) -> Record:
    version = record.get("format")
    if not isinstance(version, int) or version < 1:
        raise ValueError(f"bad record format {version!r}")
    if version > RECORD_FORMAT:
        raise NewerFormat(version)
    while version < RECORD_FORMAT:
        record = MIGRATIONS[version](record)
        version += 1
        record["format"] = version
    return record

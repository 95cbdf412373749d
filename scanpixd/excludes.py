"""Which paths under a root are never indexed, shared by the walker and the watcher.

One rule set keeps the startup scan and live watching in agreement: a file the scan skips
must never be handed over by the watcher either (and ``.scanpix/`` above all: our own
writes must never come back to us as work).

Built-in rules, applied to every path component:

- hidden names (a leading ``.``): ``.scanpix/``, ``.thumbnails/``, ``.Trash-1000/``,
  temporary files such as ``.IMG_1.jpg.tmp-123-ab`` or rsync's ``.IMG_1.jpg.Xa3f``;
- NAS and OS housekeeping folders: ``@eaDir`` (Synology), ``#recycle``, ``#snapshot``,
  ``$RECYCLE.BIN``, ``System Volume Information``, ``lost+found``.

Configured globs (``exclude = [...]``), case-sensitive, ``/``-separated, relative to the root:

- a pattern without ``/`` matches a file or folder name at any depth:
  ``*.part`` excludes ``a/b/x.part``; ``Private`` excludes every ``Private`` folder;
- a pattern with ``/`` is anchored at the root and matches that path or anything below it:
  ``2019/raw`` excludes ``2019/raw/x.cr2``; ``**`` spans folders (``**/drafts``,
  ``Private/**``); ``*``, ``?`` and ``[ab]`` never cross a ``/``;
- a trailing ``/`` restricts a pattern to folders (``cache/``).

Examples::

    >>> ex = Excluder(["*.part", "Private/**", "tmp/"])
    >>> ex.excluded("2023/IMG_1.jpg")
    False
    >>> ex.excluded("2023/.scanpix/IMG_1.jpg.json")
    True
    >>> ex.excluded("2023/clip.mp4.part")
    True
    >>> ex.excluded("Private/x/IMG_2.jpg")
    True
    >>> ex.excluded("a/tmp", is_dir=False), ex.excluded("a/tmp/IMG.jpg")
    (False, True)
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass
from functools import lru_cache
from pathlib import PurePath

from scanpixd.config import Settings
from scanpixd.errors import ConfigError

__all__ = ["BUILTIN_EXCLUDED_NAMES", "Excluder", "is_excluded"]

BUILTIN_EXCLUDED_NAMES = frozenset(
    {"@eaDir", "#recycle", "#snapshot", "$RECYCLE.BIN", "System Volume Information", "lost+found"}
)


@dataclass(frozen=True)
class _Pattern:
    regex: re.Pattern[str]
    anchored: bool  # matched against the relative path (and its ancestors), else against names
    dirs_only: bool


class Excluder:
    """Decides whether a path relative to a root is excluded from indexing and watching."""

    def __init__(self, patterns: Iterable[str] = ()):
        self.patterns = tuple(patterns)
        compiled = [_compile(p, i) for i, p in enumerate(self.patterns)]
        self._names = tuple(p for p in compiled if not p.anchored)
        self._anchored = tuple(p for p in compiled if p.anchored)

    @classmethod
    def from_settings(cls, settings: Settings) -> Excluder:
        return _cached(tuple(settings.exclude))

    def excluded(self, rel: str | PurePath, *, is_dir: bool = False) -> bool:
        """True when ``rel`` (relative to its root) or any folder above it is excluded."""
        parts = _parts(rel)
        if not parts:
            return False
        last = len(parts) - 1
        for i, name in enumerate(parts):
            if self._name_excluded(name, is_dir=is_dir or i < last):
                return True
        if not self._anchored:
            return False
        for i in range(len(parts)):
            if self._anchored_excluded("/".join(parts[: i + 1]), is_dir=is_dir or i < last):
                return True
        return False

    def excluded_child(self, parent_rel: str, name: str, *, is_dir: bool) -> bool:
        """Like :meth:`excluded` for ``parent_rel/name`` when ``parent_rel`` is known to be kept.

        Walkers call this for each directory entry, so a deep tree costs one check per entry.
        """
        if self._name_excluded(name, is_dir=is_dir):
            return True
        if not self._anchored:
            return False
        rel = f"{parent_rel}/{name}" if parent_rel else name
        return self._anchored_excluded(rel, is_dir=is_dir)

    def _name_excluded(self, name: str, *, is_dir: bool) -> bool:
        if name.startswith(".") or name in BUILTIN_EXCLUDED_NAMES:
            return True
        return any(
            (is_dir or not p.dirs_only) and p.regex.fullmatch(name) for p in self._names
        )

    def _anchored_excluded(self, rel: str, *, is_dir: bool) -> bool:
        return any(
            (is_dir or not p.dirs_only) and p.regex.fullmatch(rel) for p in self._anchored
        )


def is_excluded(rel_path: str | PurePath, settings: Settings, *, is_dir: bool = False) -> bool:
    """Whether ``rel_path`` (relative to its root) is excluded under ``settings``."""
    return Excluder.from_settings(settings).excluded(rel_path, is_dir=is_dir)


@lru_cache(maxsize=8)
def _cached(patterns: tuple[str, ...]) -> Excluder:
    return Excluder(patterns)


def _parts(rel: str | PurePath) -> list[str]:
    text = rel.as_posix() if isinstance(rel, PurePath) else rel
    return [p for p in text.split("/") if p and p != "."]


def _compile(pattern: str, index: int) -> _Pattern:
    if not isinstance(pattern, str) or not pattern.strip("/"):
        raise ConfigError(f"exclude[{index}]: empty pattern {pattern!r}")
    dirs_only = pattern.endswith("/")
    body = pattern.strip("/")
    parts = body.split("/")
    if any(p in ("", ".", "..") for p in parts):
        raise ConfigError(f"exclude[{index}]: {pattern!r} has an empty, '.' or '..' segment")
    if len(parts) == 1 and not pattern.startswith("/") and parts[0] != "**":
        return _Pattern(re.compile(_component(parts[0], pattern, index)), False, dirs_only)
    return _Pattern(re.compile(_anchored(parts, pattern, index)), True, dirs_only)


def _anchored(parts: list[str], pattern: str, index: int) -> str:
    out = ""
    for i, part in enumerate(parts):
        last = i == len(parts) - 1
        if part == "**":
            # Trailing "**" also matches the folder itself; inner "**" spans zero or more folders.
            out = out[:-1] + "(?:/.*)?" if last and out else (".*" if last else out + "(?:[^/]+/)*")
            continue
        out += _component(part, pattern, index) + ("" if last else "/")
    return out


def _component(part: str, pattern: str, index: int) -> str:
    """One path component of a glob as a regex; wildcards never match ``/``."""
    out, i = [], 0
    while i < len(part):
        c = part[i]
        if c == "*":
            out.append("[^/]*")
        elif c == "?":
            out.append("[^/]")
        elif c == "[":
            end = part.find("]", i + 2 if part[i + 1 : i + 2] in ("!", "]") else i + 1)
            if end < 0:
                raise ConfigError(f"exclude[{index}]: unclosed '[' in {pattern!r}")
            inner = part[i + 1 : end]
            if inner.startswith("!"):
                inner = "^" + inner[1:]
            out.append("[" + inner.replace("\\", "\\\\") + "]")
            i = end
        else:
            out.append(re.escape(c))
        i += 1
    return "".join(out)

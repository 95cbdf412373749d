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

A scan asks this of every entry of every folder, so the rules are prepared once: name
globs that are a plain name, a prefix, a suffix or an infix (``*.part``, ``*.sync-conflict-*``)
become string tests, the rest one combined regex; globs that can only match hidden names are
dropped (those are excluded anyway); and path-shaped globs are matched in a folder only when
their leading literal folders allow a match below it (``Private/**`` is not tried in ``2023/``).

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
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from functools import lru_cache
from itertools import takewhile
from pathlib import PurePath

from scanpixd.config import Settings
from scanpixd.errors import ConfigError

__all__ = ["BUILTIN_EXCLUDED_NAMES", "Excluder", "is_excluded"]

BUILTIN_EXCLUDED_NAMES = frozenset(
    {"@eaDir", "#recycle", "#snapshot", "$RECYCLE.BIN", "System Volume Information", "lost+found"}
)
_WILD = frozenset("*?[")
_FOLDERS_KEPT = 4096  # per-folder answers kept before they are dropped all at once


@dataclass(frozen=True)
class _Pattern:
    regex: re.Pattern[str]
    anchored: bool  # matched against the relative path (and its ancestors), else against names
    dirs_only: bool
    parts: tuple[str, ...]  # the glob's components (one for a name glob)

    def may_match_below(self, folder: Sequence[str]) -> bool:
        """Whether this anchored glob can match some child of the folder with these components.

        A match has a component per part other than ``**``, and starts with the glob's
        leading literal components.
        """
        if len(folder) + 1 < sum(part != "**" for part in self.parts):
            return False
        head = tuple(takewhile(lambda part: part != "**" and not _WILD & set(part), self.parts))
        shared = min(len(folder), len(head))
        return tuple(folder[:shared]) == head[:shared]


class _Names:
    """The name rules for files or for folders, as string tests before any regex."""

    __slots__ = ("exact", "infixes", "prefixes", "regex", "suffixes")

    def __init__(self, patterns: Iterable[_Pattern]):
        tests: dict[str, list[str]] = {"exact": [], "prefix": ["."], "suffix": [], "infix": []}
        regexes = []
        for pattern in patterns:
            kind, text = _shape(pattern.parts[0])
            if kind == "regex":
                regexes.append(pattern.regex)
            elif not (kind in ("exact", "prefix") and text.startswith(".")):
                tests[kind].append(text)  # (else it matches hidden names only: excluded anyway)
        self.exact = BUILTIN_EXCLUDED_NAMES.union(tests["exact"])
        self.prefixes, self.suffixes = tuple(tests["prefix"]), tuple(tests["suffix"])
        self.infixes = tuple(tests["infix"])
        self.regex = _combined(regexes)

    def excluded(self, name: str) -> bool:
        if name in self.exact or name.startswith(self.prefixes) or name.endswith(self.suffixes):
            return True
        for infix in self.infixes:
            if infix in name:
                return True
        return self.regex is not None and self.regex.fullmatch(name) is not None


class Excluder:
    """Decides whether a path relative to a root is excluded from indexing and watching."""

    def __init__(self, patterns: Iterable[str] = ()):
        self.patterns = tuple(patterns)
        compiled = [_compile(p, i) for i, p in enumerate(self.patterns)]
        names = [p for p in compiled if not p.anchored]
        self._files = _Names(p for p in names if not p.dirs_only)
        self._dirs = _Names(names)
        self._anchored = tuple(p for p in compiled if p.anchored)
        # folder (relative path) -> the anchored globs to try on its files and on its folders
        self._below: dict[str, tuple[re.Pattern[str] | None, re.Pattern[str] | None]] = {}

    @classmethod
    def from_settings(cls, settings: Settings) -> Excluder:
        return _cached(tuple(settings.exclude))

    def excluded(self, rel: str | PurePath, *, is_dir: bool = False) -> bool:
        """True when ``rel`` (relative to its root) or any folder above it is excluded."""
        parts = _parts(rel)
        last = len(parts) - 1
        parent = ""
        for i, name in enumerate(parts):
            if self.excluded_child(parent, name, is_dir=is_dir or i < last):
                return True
            parent = f"{parent}/{name}" if parent else name
        return False

    def excluded_child(self, parent_rel: str, name: str, *, is_dir: bool) -> bool:
        """Like :meth:`excluded` for ``parent_rel/name`` when ``parent_rel`` is known to be kept.

        Walkers call this for each directory entry, so a deep tree costs one check per entry.
        """
        if (self._dirs if is_dir else self._files).excluded(name):
            return True
        if not self._anchored:
            return False
        regex = self._anchored_below(parent_rel)[is_dir]
        return regex is not None and \
            regex.fullmatch(f"{parent_rel}/{name}" if parent_rel else name) is not None

    def _anchored_below(self, parent_rel: str
                        ) -> tuple[re.Pattern[str] | None, re.Pattern[str] | None]:
        """The anchored globs that can match in ``parent_rel``: (for files, for folders)."""
        found = self._below.get(parent_rel)
        if found is None:
            folder = parent_rel.split("/") if parent_rel else []
            live = [p for p in self._anchored if p.may_match_below(folder)]
            found = (_combined([p.regex for p in live if not p.dirs_only]),
                     _combined([p.regex for p in live]))
            if len(self._below) >= _FOLDERS_KEPT:
                self._below.clear()
            self._below[parent_rel] = found
        return found


def is_excluded(rel_path: str | PurePath, settings: Settings, *, is_dir: bool = False) -> bool:
    """Whether ``rel_path`` (relative to its root) is excluded under ``settings``."""
    return Excluder.from_settings(settings).excluded(rel_path, is_dir=is_dir)


@lru_cache(maxsize=8)
def _cached(patterns: tuple[str, ...]) -> Excluder:
    return Excluder(patterns)


@lru_cache(maxsize=256)
def _combined_text(texts: tuple[str, ...]) -> re.Pattern[str]:
    return re.compile("|".join(f"(?:{text})" for text in texts))


def _combined(regexes: Sequence[re.Pattern[str]]) -> re.Pattern[str] | None:
    """One regex that fully matches what any of ``regexes`` fully matches (None: nothing)."""
    if len(regexes) <= 1:
        return regexes[0] if regexes else None
    return _combined_text(tuple(r.pattern for r in regexes))


def _shape(glob: str) -> tuple[str, str]:
    """A name glob as ("exact" | "prefix" | "suffix" | "infix", text), or ("regex", "")."""
    if _WILD & set(glob.replace("*", "")):
        return "regex", ""
    pieces = re.sub(r"\*+", "*", glob).split("*")  # "**" in a name is "*"
    if len(pieces) == 1:
        return "exact", glob
    if len(pieces) == 2 and not pieces[0]:
        return "suffix", pieces[1]
    if len(pieces) == 2 and not pieces[1]:
        return "prefix", pieces[0]
    if len(pieces) == 3 and not pieces[0] and not pieces[2]:
        return "infix", pieces[1]
    return "regex", ""


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
        return _Pattern(re.compile(_component(parts[0], pattern, index)), False, dirs_only,
                        tuple(parts))
    return _Pattern(re.compile(_anchored(parts, pattern, index)), True, dirs_only, tuple(parts))


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

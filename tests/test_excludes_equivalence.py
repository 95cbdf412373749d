"""The prepared exclude rules answer exactly as the plain rule: every glob's regex, tried on
every name and on every ancestor path.

Names and globs are generated from pieces that make hits likely (each other's literals,
hidden names, the built-in names) as well as unicode, newlines, glob characters inside
names, and names that were not valid UTF-8 (surrogate-escaped as ``os.fsdecode`` gives them).
"""

from __future__ import annotations

import os
import random
import re
import warnings

import pytest

import scanpixd.excludes
from scanpixd.config import DEFAULT_EXCLUDES
from scanpixd.excludes import BUILTIN_EXCLUDED_NAMES, Excluder, _compile

LITERALS = ["a", "IMG", ".jpg", ".part", "raw", "2019", "Private", "日本", "é", "x y", "~",
            ".sync-conflict-", "tmp", ".", "-", "\n", "$", "+", "(", ")", "]", "\\", "{1}",
            os.fsdecode(b"\xff\xfe"), os.fsdecode(b"caf\xe9")]
WILDCARDS = ["*", "**", "?", "[ab]", "[!a]", "[0-9]", "[]]", "[.]"]


class PlainRule:
    """The rule as stated, each glob's own regex on every name and every ancestor path (the
    prepared rules' reference; it is also the benchmark's)."""

    def __init__(self, patterns: list[str]):
        compiled = [_compile(p, i) for i, p in enumerate(patterns)]
        self.names = [p for p in compiled if not p.anchored]
        self.anchored = [p for p in compiled if p.anchored]

    def name_excluded(self, name: str, is_dir: bool) -> bool:
        if name.startswith(".") or name in BUILTIN_EXCLUDED_NAMES:
            return True
        return any((is_dir or not p.dirs_only) and p.regex.fullmatch(name) for p in self.names)

    def path_excluded(self, rel: str, is_dir: bool) -> bool:
        return any((is_dir or not p.dirs_only) and p.regex.fullmatch(rel) for p in self.anchored)

    def excluded(self, rel: str, *, is_dir: bool = False) -> bool:
        parts = [p for p in rel.split("/") if p and p != "."]
        last = len(parts) - 1
        return any(self.name_excluded(name, is_dir or i < last) for i, name in enumerate(parts)) \
            or any(self.path_excluded("/".join(parts[: i + 1]), is_dir or i < last)
                   for i in range(len(parts)))

    def excluded_child(self, parent_rel: str, name: str, *, is_dir: bool) -> bool:
        if self.name_excluded(name, is_dir):
            return True
        if not self.anchored:
            return False
        return self.path_excluded(f"{parent_rel}/{name}" if parent_rel else name, is_dir)


def component(rng: random.Random, wild: bool) -> str:
    pieces = [rng.choice(LITERALS + (WILDCARDS if wild else [])) for _ in range(rng.randint(1, 3))]
    if not wild and rng.random() < 0.15:
        return rng.choice(sorted(BUILTIN_EXCLUDED_NAMES))
    text = "".join(pieces)
    return text if text not in (".", "..") else text + "x"


def glob_component(rng: random.Random) -> str:
    """A glob component of a shape that has a string test (plain, prefix, suffix, infix) or not."""
    literal = component(rng, wild=False)
    return rng.choice([literal, "*" + literal, literal + "*", "*" + literal + "*", "**" + literal,
                       component(rng, wild=True), component(rng, wild=True)])


def glob(rng: random.Random) -> str:
    depth = rng.choice([1, 1, 1, 2, 3])
    parts = ["**" if rng.random() < 0.2 else glob_component(rng) for _ in range(depth)]
    text = "/".join(parts)
    if rng.random() < 0.15:
        text = "/" + text
    if rng.random() < 0.2:
        text += "/"
    return text


def valid_globs(rng: random.Random, count: int) -> list[str]:
    found: list[str] = []
    while len(found) < count:
        candidate = glob(rng)
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", FutureWarning)  # "[[" and such, as a user may write
                _compile(candidate, 0)
        except (re.error, Exception):
            continue
        found.append(candidate)
    return found


def paths(rng: random.Random, globs: list[str], count: int) -> list[str]:
    """Relative paths whose components are often made to hit one of ``globs``."""
    hits = [g.strip("/").split("/") for g in globs]
    out = []
    for _ in range(count):
        if hits and rng.random() < 0.5:
            parts = [_instance(rng, p) for p in rng.choice(hits)]
            parts = [p for p in parts if p]
            if rng.random() < 0.5:
                parts.append(component(rng, wild=False))
            if rng.random() < 0.3:
                parts.insert(0, component(rng, wild=False))
        else:
            parts = [component(rng, wild=False) for _ in range(rng.randint(1, 4))]
        out.append("/".join(parts) or "x")
    return out


def _instance(rng: random.Random, part: str) -> str:
    """A name that a glob component matches more often than not."""
    if part == "**":
        return "/".join(component(rng, wild=False) for _ in range(rng.randint(0, 2)))
    text = re.sub(r"\[!?\]?[^]]*\]", lambda m: rng.choice(["a", "b", "0", "]", "."]), part)
    return text.replace("*", rng.choice(["", "x", "日", ".jpg"])).replace("?", rng.choice("a.?"))


@pytest.mark.parametrize("seed", range(40))
def test_generated_globs_and_paths(seed: int) -> None:
    rng = random.Random(seed)
    globs = valid_globs(rng, rng.randint(0, 7))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        fast, plain = Excluder(globs), PlainRule(globs)
    for rel in paths(rng, globs, 400):
        for is_dir in (False, True):
            assert fast.excluded(rel, is_dir=is_dir) == plain.excluded(rel, is_dir=is_dir), (globs, rel)
            parent, _, name = rel.rpartition("/")
            assert fast.excluded_child(parent, name, is_dir=is_dir) == \
                plain.excluded_child(parent, name, is_dir=is_dir), (globs, parent, name)


def test_default_globs_on_generated_names() -> None:
    rng = random.Random(7)
    fast, plain = Excluder(DEFAULT_EXCLUDES), PlainRule(list(DEFAULT_EXCLUDES))
    for rel in paths(rng, list(DEFAULT_EXCLUDES), 3000):
        name = rel.rpartition("/")[2]
        for is_dir in (False, True):
            assert fast.excluded_child("2023/06", name, is_dir=is_dir) == \
                plain.excluded_child("2023/06", name, is_dir=is_dir), name


@pytest.mark.parametrize("globs", [
    [], ["*"], ["**"], ["*.part", "*.tmp/", ".~lock*", "*.sync-conflict-*", "*~"],
    ["Private/**", "2019/raw", "**/drafts", "/top/*.jpg", "cache/", "x[0-9]?.jpg"],
    ["a/**/b/", "a*/b", "/**/c", "a/b/c/d", "*/x", "?", "[!.]*", "**.jpg", "a**b"],
])
def test_chosen_globs_in_many_folders(globs: list[str], monkeypatch: pytest.MonkeyPatch) -> None:
    """One excluder asked across many folders in turn, with its per-folder answers dropped often."""
    monkeypatch.setattr(scanpixd.excludes, "_FOLDERS_KEPT", 3)
    rng = random.Random(len(globs))
    fast, plain = Excluder(globs), PlainRule(globs)
    folders = ["", "a", "a/b", "a/b/c", "Private", "2019", "top", "x/a/b", "日本/a", "a/.b"]
    names = ["b", "c", "d", "x", "raw", "drafts", "a.jpg", "x1a.jpg", "cache", ".h", "c.part",
             "z~", "IMG.sync-conflict-1.jpg", "aXb", "top", "Private", "\n", "@eaDir", "?"]
    for _ in range(2000):
        parent, name, is_dir = rng.choice(folders), rng.choice(names), rng.random() < 0.5
        assert fast.excluded_child(parent, name, is_dir=is_dir) == \
            plain.excluded_child(parent, name, is_dir=is_dir), (parent, name, is_dir)
        rel = f"{parent}/{name}" if parent else name
        assert fast.excluded(rel, is_dir=is_dir) == plain.excluded(rel, is_dir=is_dir), (rel, is_dir)


def test_hidden_only_globs_are_redundant_not_lost() -> None:
    """A glob that only matches hidden names is dropped from the name tests: still excluded."""
    ex = Excluder([".~lock*", ".DS_Store"])
    assert ex.excluded(".~lock.x#") and ex.excluded("a/.DS_Store") and not ex.excluded("lock")

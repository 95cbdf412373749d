"""The exclude rules' cost per directory entry: the prepared rules against the plain rule
(each glob's own regex on every name), in the same run, on generated library names.

    python -m benchmarks.bench_excludes [--names 1000000] [--repeat 3] [--tree DIR]

Prints CPU seconds (best of ``--repeat``) and the ratio for each set of globs: none, the
defaults, and the defaults with path-shaped globs.  ``--tree`` also times the scan's walk of
a real tree (scandir and stat included) with each, which is what a rescan pays.
"""

from __future__ import annotations

import argparse
import os
import random
import time
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Any

from scanpixd.config import DEFAULT_EXCLUDES
from scanpixd.excludes import Excluder
from scanpixd.scan import walk
from tests.test_excludes_equivalence import PlainRule

GLOB_SETS = {
    "no globs": [],
    "defaults": list(DEFAULT_EXCLUDES),
    "defaults + 3 path globs": [*DEFAULT_EXCLUDES, "Private/**", "2019/raw", "**/drafts"],
}

Entry = tuple[str, str, bool]  # (parent path relative to the root, name, is a folder)


def entries(count: int, seed: int = 0) -> list[Entry]:
    """Directory entries as a photo library has them: mostly photos and videos in dated
    folders, a few folders, hidden files, downloads in progress and editor leftovers."""
    rng = random.Random(seed)
    parents = [f"{y}/{y}-{m:02d}-{d:02d} event{i}" for i, (y, m, d) in enumerate(
        (rng.randint(2005, 2024), rng.randint(1, 12), rng.randint(1, 28)) for _ in range(2000))]
    stems = ["IMG_{:04d}", "DSC{:05d}", "PXL_20230101_{:09d}", "{:06d} holiday", "Снимок {}"]
    exts = [".jpg", ".JPG", ".heic", ".mp4", ".CR2", ".png", ".jpeg", ".MOV"]
    odd = [".DS_Store", "Thumbs.db", "clip.mp4.part", "x.tmp", "notes.txt~", "@eaDir",
           "IMG_1.sync-conflict-20240101-123456-ABC.jpg", ".IMG_2.jpg.tmp-12-ab", "Private"]
    out = []
    for _ in range(count):
        parent = rng.choice(parents)
        roll = rng.random()
        if roll < 0.02:
            out.append((parent, f"sub{rng.randint(0, 99)}", True))
        elif roll < 0.03:
            out.append((parent, rng.choice(odd), False))
        else:
            name = rng.choice(stems).format(rng.randint(0, 99999)) + rng.choice(exts)
            out.append((parent, name, False))
    return out


class _Nothing:
    def excluded_child(self, parent_rel: str, name: str, *, is_dir: bool) -> bool:
        return False


def cpu_best(fn: Callable[[], Any], repeat: int) -> tuple[float, Any]:
    best, result = float("inf"), None
    for _ in range(repeat):
        started = time.process_time()
        result = fn()
        best = min(best, time.process_time() - started)
    return best, result


def per_entry(excluder: Any, listed: list[Entry]) -> int:
    child = excluder.excluded_child
    return sum(1 for parent, name, is_dir in listed if child(parent, name, is_dir=is_dir))


def walked(excluder: Any, root: Path) -> int:
    return sum(len(listing.files) for listing in walk(root, excluder))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--names", type=int, default=1_000_000)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--tree", type=Path, help="a library to walk as a rescan does")
    args = parser.parse_args()
    listed = entries(args.names)
    print(f"{args.names} directory entries, CPU seconds, best of {args.repeat} "
          f"(load {os.getloadavg()[0]:.1f}):")
    t_loop, _ = cpu_best(lambda: per_entry(_Nothing(), listed), args.repeat)
    print(f"  {'the loop alone':<24} {t_loop:6.3f} s (a call that excludes nothing; "
          f"the figures below include it)")
    for label, globs in GLOB_SETS.items():
        plain, fast = PlainRule(globs), Excluder(globs)
        t_plain, n_plain = cpu_best(partial(per_entry, plain, listed), args.repeat)
        t_fast, n_fast = cpu_best(partial(per_entry, fast, listed), args.repeat)
        assert n_plain == n_fast, (label, n_plain, n_fast)
        print(f"  {label:<24} plain {t_plain:6.3f} s  prepared {t_fast:6.3f} s  "
              f"{t_plain / t_fast:4.1f}x  ({n_fast} excluded; "
              f"{t_fast / args.names * 1e9:.0f} ns an entry)")
    if args.tree is not None:
        globs = GLOB_SETS["defaults"]
        t_plain, n_plain = cpu_best(lambda: walked(PlainRule(globs), args.tree), args.repeat)
        t_fast, n_fast = cpu_best(lambda: walked(Excluder(globs), args.tree), args.repeat)
        assert n_plain == n_fast
        print(f"  walk of {args.tree} ({n_fast} files, default globs): plain {t_plain:.3f} s, "
              f"prepared {t_fast:.3f} s CPU, {t_plain - t_fast:.3f} s saved")


if __name__ == "__main__":
    main()

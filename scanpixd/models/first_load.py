"""A CLIP model's first load on a machine, run as a child process of the daemon.

``python -m scanpixd.models.first_load`` reads ``{"settings": {...ClipSettings...},
"cache_dir": "..."}`` on stdin, loads the model's text and image towers through torch and
open_clip, and so checks the numpy towers against them and writes their notes in the cache
directory (see :mod:`scanpixd.models.text_tower` and :mod:`scanpixd.models.image_tower`).
The daemon then loads both towers in numpy and never imports torch itself.  Exit status 0
when both towers loaded, 1 with the reason on stderr otherwise.
"""

from __future__ import annotations

import sys
from pathlib import Path

import orjson

from scanpixd.config import ClipSettings
from scanpixd.errors import ScanpixError
from scanpixd.models.clip import ClipModel


def main() -> int:
    try:
        request = orjson.loads(sys.stdin.buffer.read())
        settings = ClipSettings(**request["settings"])
        model = ClipModel(settings, cache_dir=Path(request["cache_dir"]))
        model.load()  # the text tower, through torch here (no note yet), then its check
        model.image_preprocess()  # the image tower, the same
    except (ScanpixError, OSError, ValueError, TypeError, KeyError) as exc:
        print(f"{type(exc).__name__}: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Small real media files for indexing tests, made with Pillow."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image


def make_photo(path: Path, seed: int, size: tuple[int, int] = (640, 480), fmt: str = "JPEG") -> Path:
    """A photo-like picture (smooth gradients plus blobs) that differs for every seed."""
    rng = np.random.default_rng(seed)
    w, h = size
    y, x = np.mgrid[0:h, 0:w].astype(np.float32)
    channels = []
    for _ in range(3):
        fx, fy, phase = rng.uniform(0.002, 0.02, 2).tolist() + [rng.uniform(0, 6.28)]
        channels.append(127 + 100 * np.sin(x * fx + y * fy + phase))
    img = np.stack(channels, axis=-1)
    for _ in range(6):
        cx, cy, r = rng.uniform(0, w), rng.uniform(0, h), rng.uniform(20, 120)
        mask = (x - cx) ** 2 + (y - cy) ** 2 < r * r
        img[mask] = rng.uniform(0, 255, 3)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.clip(img, 0, 255).astype(np.uint8)).save(path, fmt, quality=90)
    return path


def make_library(root: Path, count: int, per_folder: int = 5) -> list[Path]:
    files = []
    for i in range(count):
        folder = root / f"album{i // per_folder:02d}"
        files.append(make_photo(folder / f"IMG_{i:04d}.jpg", seed=i))
    return files


def write_config(path: Path, text: str = "") -> Path:
    """A config with the model stages off unless the text turns them on."""
    body = "[clip]\nenabled = false\n[faces]\nenabled = false\n"
    path.write_text(text + "\n" + body if "[clip]" not in text else text)
    return path

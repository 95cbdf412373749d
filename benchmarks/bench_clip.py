"""CLIP ViT-B-32 image throughput: the batched embedding path against a one-at-a-time loop.

Random weights (no hub here) cost exactly what trained ones do.  Both paths embed the same
1024-px working images in the same run, so the ratio holds on a noisy machine:

- ``loop``: open_clip's own torchvision preprocessing and one forward pass per image, the
  way a simple script (or rclip) embeds;
- ``batched``: :meth:`ClipModel.embed_images` (numpy preprocessing, ``clip.batch_size``
  images per forward pass, ``torch.inference_mode``).

Run: ``python -m benchmarks.bench_clip [--images 32] [--batch 16] [--threads 0]``.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
from PIL import Image

CORPUS = Path(__file__).resolve().parents[1].parent / "shared" / "corpora"


def working_images(count: int) -> list[Image.Image]:
    """1024-px pictures like the thumbnails the stage reads (corpus photos when present)."""
    sources = sorted((CORPUS / "exif-samples" / "jpg" / "gps").glob("*.jpg"))
    sources += sorted((CORPUS / "metadata-extractor-images" / "jpg").glob("Apple*.jpg"))
    images = []
    rng = np.random.default_rng(0)
    for i in range(count):
        if sources:
            with Image.open(sources[i % len(sources)]) as im:
                im = im.convert("RGB")
        else:
            im = Image.fromarray(rng.integers(0, 255, (480, 640, 3), dtype=np.uint8))
        scale = 1024 / max(im.size)
        images.append(im.resize((round(im.width * scale), round(im.height * scale))))
    return images


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=32)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--threads", type=int, default=0)
    args = parser.parse_args()

    import open_clip
    import torch

    from scanpixd.config import ClipSettings
    from scanpixd.models.clip import ClipModel

    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    model = open_clip.create_model("ViT-B-32").eval()
    clip = ClipModel.from_model(model, "ViT-B-32/random",
                                ClipSettings(batch_size=args.batch, idle_unload=0))
    cfg = open_clip.transform.PreprocessCfg(**open_clip.get_model_preprocess_cfg(model))
    reference = open_clip.transform.image_transform_v2(cfg, is_train=False)
    images = working_images(args.images)
    print(f"ViT-B-32, random weights, {len(images)} images of {images[0].size}, "
          f"torch threads {torch.get_num_threads()}, batch {args.batch}")

    def loop() -> np.ndarray:
        with torch.inference_mode():
            return np.concatenate([model.encode_image(reference(im)[None], normalize=True).numpy()
                                   for im in images])

    def batched() -> np.ndarray:
        return clip.embed_images(images)

    clip.embed_images(images[:2])  # warm-up: first-call allocations
    rates = {}
    outputs = {}
    for name, fn in (("loop", loop), ("batched", batched)):
        started = time.perf_counter()
        outputs[name] = fn()
        rates[name] = len(images) / (time.perf_counter() - started)
        print(f"{name:>8}: {rates[name]:6.2f} img/s")
    drift = float(np.max(np.abs(outputs["loop"] - outputs["batched"])))
    print(f"   ratio: {rates['batched'] / rates['loop']:.2f}x batched vs one at a time "
          f"(max difference between the two paths' vectors {drift:.1e})")


if __name__ == "__main__":
    main()

"""CLIP ViT-B-32 on the CPU: image throughput, CPU time per image, loading and memory.

Random weights (no hub here) cost exactly what trained ones do.  Every part compares
against a plain reference in the same run, so the ratios hold on a noisy machine; CPU
times (this process, or the child that measured) are printed beside wall times.

- ``throughput``: open_clip's torchvision preprocessing and one forward pass per image (the
  way a simple script embeds) against :meth:`ClipModel.embed_images` (numpy preprocessing,
  ``clip.batch_size`` images per pass, ``torch.inference_mode``);
- ``threads``: a batch at 1 and 2 torch threads, with OpenMP's default waiting and with
  ``OMP_WAIT_POLICY=PASSIVE`` (what :mod:`scanpixd.models.clip` sets before torch loads);
- ``variants``: ways to run the image tower (channels_last, TorchScript trace + freeze,
  bf16 autocast, ``torch.compile`` with ``--compile``), with their cosine to fp32 eager;
- ``load``: in fresh processes, open_clip's whole-model load against the separate towers
  (time to the first text vector, VmRSS / RssAnon / RssFile / peak), then the image tower
  loaded, used and released.

Run: ``python -m benchmarks.bench_clip [--parts throughput,load] [--images 32] [--batch 16]
[--threads 0] [--checkpoint PATH] [--compile]``; ``threads`` and ``variants`` take minutes.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

CORPUS = Path(__file__).resolve().parents[1].parent / "shared" / "corpora"
CHECKPOINT = Path("/tmp/scale/models/vit-b-32-random.pt")


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


def cpu_time() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def measure(fn: Callable[[], Any], count: int, repeats: int = 2) -> tuple[Any, float, float]:
    """``fn()``'s result, images per second (wall) and CPU ms per image; the best repeat."""
    best = (0.0, float("inf"))
    out = None
    for _ in range(repeats):
        wall, cpu = time.perf_counter(), cpu_time()
        out = fn()
        wall, cpu = time.perf_counter() - wall, cpu_time() - cpu
        if cpu < best[1]:
            best = (wall, cpu)
    return out, count / best[0], 1000 * best[1] / count


def memory() -> dict[str, int]:
    """VmRSS, RssAnon, RssFile and VmHWM (peak) of this process, in MB."""
    out = {}
    for line in Path("/proc/self/status").read_text().splitlines():
        key, _, value = line.partition(":")
        if key in ("VmRSS", "RssAnon", "RssFile", "VmHWM"):
            out[key] = int(value.split()[0]) // 1024
    return out


def random_model() -> Any:
    import open_clip
    import torch

    torch.manual_seed(0)
    return open_clip.create_model("ViT-B-32").eval()


def throughput(args: argparse.Namespace) -> None:
    import open_clip
    import torch

    from scanpixd.config import ClipSettings
    from scanpixd.models.clip import ClipModel

    model = random_model()
    clip = ClipModel.from_model(model, "ViT-B-32/random",
                                ClipSettings(batch_size=args.batch, idle_unload=0))
    cfg = open_clip.transform.PreprocessCfg(**open_clip.get_model_preprocess_cfg(model))
    reference = open_clip.transform.image_transform_v2(cfg, is_train=False)
    images = working_images(args.images)
    print(f"throughput: {len(images)} images of {images[0].size}, "
          f"torch threads {torch.get_num_threads()}, batch {args.batch}")

    def loop() -> np.ndarray:
        with torch.inference_mode():
            return np.concatenate([model.encode_image(reference(im)[None], normalize=True).numpy()
                                   for im in images])

    clip.embed_images(images[:2])  # warm-up: first-call allocations
    outputs, rates = {}, {}
    for name, fn in (("loop", loop), ("batched", lambda: clip.embed_images(images))):
        outputs[name], rates[name], cpu = measure(fn, len(images), repeats=1)
        print(f"  {name:>8}: {rates[name]:6.2f} img/s, {cpu:6.1f} ms CPU per image")
    _, _, cpu = measure(lambda: [clip.image_preprocess()(im) for im in images], len(images))
    print(f"  (of which preprocessing: {cpu:.1f} ms CPU per image)")
    drift = float(np.max(np.abs(outputs["loop"] - outputs["batched"])))
    print(f"  ratio: {rates['batched'] / rates['loop']:.2f}x batched vs one at a time "
          f"(max difference between the two paths' vectors {drift:.1e})")


_THREADS_CHILD = """
import json, resource, sys, time
import torch, open_clip
torch.set_num_threads({threads})
torch.manual_seed(0)
visual = open_clip.create_model("ViT-B-32").eval().visual
x = torch.randn({batch}, 3, 224, 224)
def cpu():
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime
best = None
with torch.inference_mode():
    visual(x)
    for _ in range(3):
        w, c = time.perf_counter(), cpu()
        visual(x)
        w, c = time.perf_counter() - w, cpu() - c
        best = (w, c) if best is None or c < best[1] else best
print(json.dumps({{"rate": {batch} / best[0], "cpu_ms": 1000 * best[1] / {batch}}}))
"""


def threads(args: argparse.Namespace) -> None:
    print(f"threads: image tower, batch {args.batch}, each case in a fresh process, twice")
    results: dict[str, list[tuple[float, float]]] = {}
    for _ in range(2):
        for policy in ("", "PASSIVE"):
            for count in (1, 2):
                env = {k: v for k, v in os.environ.items() if k != "OMP_WAIT_POLICY"}
                if policy:
                    env["OMP_WAIT_POLICY"] = policy
                code = _THREADS_CHILD.format(threads=count, batch=args.batch)
                done = subprocess.run([sys.executable, "-c", code], env=env, text=True,
                                      capture_output=True, check=True)
                got = json.loads(done.stdout.strip().splitlines()[-1])
                name = f"{count} thread{'s' if count > 1 else ''}, {policy or 'default'} waiting"
                results.setdefault(name, []).append((got["rate"], got["cpu_ms"]))
    for name, runs in results.items():
        shown = ", ".join(f"{rate:5.2f} img/s {cpu:6.1f} ms CPU/img" for rate, cpu in runs)
        print(f"  {name:>28}: {shown}")


def variants(args: argparse.Namespace) -> None:
    import torch
    import torch.nn.functional as F  # noqa: N812 - torch's own convention

    model = random_model()
    visual = model.visual
    x = torch.randn(args.batch, 3, 224, 224)
    with torch.inference_mode():
        eager = F.normalize(visual(x), dim=-1)
    print(f"variants: image tower, batch {args.batch}, torch threads {torch.get_num_threads()}")

    def build(name: str) -> Callable[[], Any]:
        if name == "channels_last":
            xc = x.contiguous(memory_format=torch.channels_last)
            return lambda: visual(xc)
        if name == "bf16 autocast":
            def bf16() -> Any:
                with torch.autocast("cpu", dtype=torch.bfloat16):
                    return visual(x)
            return bf16
        if name == "jit trace+freeze":
            with torch.no_grad():
                frozen = torch.jit.optimize_for_inference(
                    torch.jit.freeze(torch.jit.trace(visual, x[:2]).eval()))
                frozen(x)
            return lambda: frozen(x)
        if name == "torch.compile":
            compiled = torch.compile(visual, dynamic=False)
            with torch.no_grad():
                compiled(x)
            return lambda: compiled(x)
        return lambda: visual(x)

    names = ["eager", "channels_last", "jit trace+freeze", "bf16 autocast", "eager"]
    if args.compile:
        names.insert(-1, "torch.compile")
    for name in names:
        started, cpu_started = time.perf_counter(), cpu_time()
        try:
            fn = build(name)
        except Exception as exc:  # a variant that can't run here is reported, not fatal
            print(f"  {name:>18}: unavailable ({type(exc).__name__}: {exc})")
            continue
        setup = time.perf_counter() - started, cpu_time() - cpu_started
        with torch.no_grad():
            out, rate, cpu = measure(fn, args.batch)
        cosine = float((F.normalize(out.float(), dim=-1) * eager).sum(-1).min())
        print(f"  {name:>18}: {rate:6.2f} img/s, {cpu:6.1f} ms CPU/img, min cosine {cosine:.6f}"
              f", set-up {setup[0]:.1f} s ({setup[1]:.1f} s CPU)")


_LOAD_CHILD = """
import json, resource, sys, time
sys.path.insert(0, {root!r})
from benchmarks.bench_clip import memory, working_images
marks = {{}}
t0 = time.perf_counter()
def cpu():
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime
def mark(name):
    marks[name] = dict(memory(), wall=round(time.perf_counter() - t0, 2), cpu=round(cpu() - c0, 2))
c0 = cpu()
import torch, open_clip
from scanpixd.config import ClipSettings
from scanpixd.models.clip import ClipModel, encode_text_trimmed
images = working_images({batch})
mark("imported")
t0, c0 = time.perf_counter(), cpu()
if {whole}:
    model = open_clip.create_model("ViT-B-32", pretrained={checkpoint!r}, weights_only=True).eval()
    tokenizer = open_clip.get_tokenizer("ViT-B-32")
    mark("loaded")
    with torch.inference_mode():
        encode_text_trimmed(model, tokenizer(["a dog on the beach"]))
    mark("first text")
else:
    clip = ClipModel(ClipSettings(pretrained={checkpoint!r}, idle_unload=0, download=False))
    clip.model_id
    mark("model id")
    clip.load()
    mark("loaded")
    clip.embed_text(["a dog on the beach"])
    mark("first text")
    clip.embed_images(images)
    mark("images embedded")
    clip._images.unload()
    mark("image tower released")
print(json.dumps(marks))
"""


def load(args: argparse.Namespace) -> None:
    checkpoint = Path(args.checkpoint)
    made = None
    if not checkpoint.is_file():
        import torch

        made = checkpoint = Path(tempfile.mkdtemp()) / "vit-b-32-random.pt"
        torch.save(random_model().state_dict(), checkpoint)
    root = str(Path(__file__).resolve().parents[1])
    print(f"load: {checkpoint} ({checkpoint.stat().st_size / 1e6:.0f} MB), fresh processes; "
          "times from ClipModel() (after imports), memory in MB")
    try:
        for run in range(2):
            for whole in (True, False):
                code = _LOAD_CHILD.format(root=root, batch=args.batch, whole=whole,
                                          checkpoint=str(checkpoint))
                done = subprocess.run([sys.executable, "-c", code], text=True,
                                      capture_output=True, check=True)
                marks = json.loads(done.stdout.strip().splitlines()[-1])
                print(f"  {'whole model' if whole else 'towers'} (run {run + 1}):")
                for name, m in marks.items():
                    print(f"    {name:>21}: {m.get('wall', 0):6.2f} s, {m.get('cpu', 0):5.2f} s CPU"
                          f" | VmRSS {m['VmRSS']:5d} RssAnon {m['RssAnon']:5d} "
                          f"RssFile {m['RssFile']:5d} peak {m['VmHWM']:5d}")
    finally:
        if made is not None:
            made.unlink()
            made.parent.rmdir()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--parts", default="throughput,load",
                        help="any of throughput, threads, variants, load (comma-separated)")
    parser.add_argument("--images", type=int, default=32)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--threads", type=int, default=0)
    parser.add_argument("--checkpoint", default=str(CHECKPOINT))
    parser.add_argument("--compile", action="store_true", help="also time torch.compile")
    args = parser.parse_args()

    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    print(f"load average {os.getloadavg()[0]:.2f} on {os.cpu_count()} cores")
    parts = {"throughput": throughput, "threads": threads, "variants": variants, "load": load}
    for name in args.parts.split(","):
        parts[name.strip()](args)
    print(f"load average {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()

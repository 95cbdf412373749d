"""CLIP ViT-B-32 on the CPU: image throughput, CPU time per image, loading and memory.

Random weights (no hub here) cost exactly what trained ones do.  Every part compares
against a plain reference in the same run, so the ratios hold on a noisy machine; CPU
times (this process, or the child that measured) are printed beside wall times.

- ``throughput``: open_clip's torchvision preprocessing and one forward pass per image (the
  way a simple script embeds) against :meth:`ClipModel.embed_images` (numpy preprocessing,
  ``clip.batch_size`` images per pass, ``torch.inference_mode``);
- ``threads``: a batch at 1 and 2 torch threads, with OpenMP's default waiting and with
  ``OMP_WAIT_POLICY=PASSIVE`` (what :mod:`scanpixd.models.clip` sets before torch loads);
- ``variants``: ways to run the image tower on real photos (channels_last, TorchScript
  trace + freeze, int8 dynamic quantization, ONNX Runtime fp32 and int8 when it is installed,
  the numpy tower over the mapped weights and over transposed copies, bf16 autocast and
  ``torch.compile`` on request), timed in interleaved rounds against fp32 eager with
  ``--workers`` threads at once, with their cosine to eager;
- ``load``: in fresh processes, open_clip's whole-model load against the separate towers
  (time to the first text vector, VmRSS / RssAnon / RssFile / peak), then the image tower
  loaded, used and released: through torch on a machine that has not checked the model yet,
  then in numpy once it has (no torch imported).

Run: ``python -m benchmarks.bench_clip [--parts throughput,load] [--images 32] [--batch 16]
[--threads 0] [--checkpoint PATH] [--compile] [--variants eager,int8,ort] [--workers 2]
[--rounds 3]``; ``threads`` and ``variants`` take minutes (``variants`` as the indexer runs
the tower: ``--threads 1 --workers 2 --batch 8``).
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
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")  # one thread, as the daemon runs numpy

import numpy as np  # noqa: E402
from PIL import Image  # noqa: E402

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


VARIANTS = ("eager", "channels_last", "jit", "int8", "ort", "ort-int8", "numpy")


def variants(args: argparse.Namespace) -> None:
    """Ways to run the image tower on real photos, timed in interleaved rounds against fp32
    eager: CPU ms per image, the median of the per-round ratios to eager, and the cosine of
    each variant's vectors to eager's (min and mean over the photos)."""
    import open_clip
    import torch

    from scanpixd.models.clip import Preprocess

    model = random_model()
    visual = model.visual
    preprocess = Preprocess(open_clip, model)
    pixels = torch.from_numpy(np.stack([preprocess(im) for im in working_images(args.images)]))
    names = [n.strip() for n in args.variants.split(",") if n.strip()]
    names = ["eager"] + [n for n in names if n != "eager"] + (["compile"] if args.compile else [])
    threads = args.threads or torch.get_num_threads()
    print(f"variants: image tower, {len(pixels)} photos, batch {args.batch}, {args.workers} "
          f"worker(s) x {threads} thread(s), {args.rounds} rounds; int8 and bf16 cosines are "
          "only indicative with random weights")
    with tempfile.TemporaryDirectory(prefix="bench-clip-") as tmp:
        runners: dict[str, Callable[[Any], np.ndarray]] = {}
        for name in names:
            started = time.perf_counter()
            try:
                runners[name] = _variant(name, visual, pixels, threads, Path(tmp))
                runners[name](pixels[:args.batch])  # first-call costs (compiling) in set-up
            except Exception as exc:  # a variant that can't run here is reported, not fatal
                runners.pop(name, None)
                print(f"  {name:>13}: unavailable ({type(exc).__name__}: {str(exc)[:200]})")
                continue
            print(f"  {name:>13}: set-up {time.perf_counter() - started:5.1f} s")
        _compare(runners, pixels, args, threads)


def _variant(name: str, visual: Any, pixels: Any, threads: int, tmp: Path
             ) -> Callable[[Any], np.ndarray]:
    """A function from a pixel batch to the tower's (unnormalised) rows, run ``name``'s way."""
    import torch

    def run(module: Any, memory_format: Any = None) -> Callable[[Any], np.ndarray]:
        def forward(x: Any) -> np.ndarray:
            with torch.inference_mode():
                x = x if memory_format is None else x.contiguous(memory_format=memory_format)
                return module(x).float().numpy()
        return forward

    if name == "eager":
        return run(visual)
    if name == "channels_last":
        return run(visual, torch.channels_last)
    if name == "bf16":
        def bf16(x: Any) -> np.ndarray:
            with torch.inference_mode(), torch.autocast("cpu", dtype=torch.bfloat16):
                return visual(x).float().numpy()
        return bf16
    if name == "jit":
        with torch.no_grad(), warnings.catch_warnings():
            warnings.simplefilter("ignore")  # TorchScript's deprecation notices
            traced = torch.jit.trace(visual, pixels[:2]).eval()
            return run(torch.jit.optimize_for_inference(torch.jit.freeze(traced)))
    if name == "int8":  # weights int8, activations quantized per call (fbgemm)
        import copy

        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return run(torch.ao.quantization.quantize_dynamic(
                copy.deepcopy(visual), {torch.nn.Linear}, dtype=torch.qint8))
    if name == "compile":
        return run(torch.compile(visual, dynamic=False))
    if name in ("ort", "ort-int8"):
        return _onnx_runtime(visual, tmp, threads, quantized=name == "ort-int8")
    if name in ("numpy", "numpy-copy"):
        return _numpy_tower(visual, tmp, name.partition("-")[2])
    raise ValueError(f"unknown variant {name!r} (known: {', '.join(VARIANTS)}, numpy-copy, "
                     "bf16, compile)")


def _numpy_tower(visual: Any, tmp: Path, layout: str) -> Callable[[Any], np.ndarray]:
    """scanpixd's numpy tower over the tower's weights saved as a checkpoint, as the daemon
    runs it (the weights used where they lie in the map); ``copy``: every matrix transposed
    into an array of its own (in, out), as the text tower keeps them."""
    import torch

    from scanpixd.models.image_tower import ImageTower, plain_config

    path = tmp / "visual.pt"
    if not path.is_file():
        torch.save({f"visual.{k}": v for k, v in visual.state_dict().items()}, path)
    config = plain_config(visual)
    if config is None:
        raise ValueError("not a plain ViT")
    tower = ImageTower.from_checkpoint(config, path)
    for block in tower.blocks if layout == "copy" else ():
        for name in ("qkv", "query", "keys_values", "out", "fc", "proj"):
            weight, bias = getattr(block, name)
            setattr(block, name, (np.ascontiguousarray(weight), bias))
    return lambda x: tower(x.numpy())


def _onnx_runtime(visual: Any, tmp: Path, threads: int, quantized: bool
                  ) -> Callable[[Any], np.ndarray]:
    """The tower exported to ONNX once (TorchScript exporter, without torch's fused attention,
    which it cannot export) and run by ONNX Runtime; int8 with 7-bit weights, which CPUs
    without VNNI need (their u8 x s8 products saturate otherwise)."""
    import onnxruntime as ort
    import torch

    path = tmp / "visual.onnx"
    if not path.is_file():
        fastpath = torch.backends.mha.get_fastpath_enabled()
        torch.backends.mha.set_fastpath_enabled(False)
        try:
            with warnings.catch_warnings(), torch.no_grad():
                warnings.simplefilter("ignore")
                torch.onnx.export(visual, (torch.zeros(2, 3, 224, 224),), str(path), dynamo=False,
                                  input_names=["pixels"], output_names=["features"],
                                  dynamic_axes={"pixels": {0: "batch"}, "features": {0: "batch"}})
        finally:
            torch.backends.mha.set_fastpath_enabled(fastpath)
    if quantized:
        from onnxruntime.quantization import QuantType, quantize_dynamic

        quantize_dynamic(path, tmp / "visual-int8.onnx", weight_type=QuantType.QInt8,
                         reduce_range=True)
        path = tmp / "visual-int8.onnx"
    options = ort.SessionOptions()
    options.intra_op_num_threads, options.inter_op_num_threads = threads, 1
    session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    return lambda x: session.run(None, {"pixels": x.numpy()})[0]


def _compare(runners: dict[str, Callable[[Any], np.ndarray]], pixels: Any,
             args: argparse.Namespace, threads: int) -> None:
    """Fidelity over every photo, then interleaved timing rounds with ``args.workers``
    threads at once, each on its own ``args.batch`` photos (the indexer's shape)."""
    from concurrent.futures import ThreadPoolExecutor
    from statistics import median

    from scanpixd.pipeline.embed import intra_op_threads

    def rows(fn: Callable[[Any], np.ndarray]) -> np.ndarray:
        out = np.concatenate([fn(pixels[i:i + args.batch])
                              for i in range(0, len(pixels), args.batch)])
        return out / np.linalg.norm(out, axis=1, keepdims=True)

    reference = rows(runners["eager"])
    cosines = {name: (rows(fn) * reference).sum(1) for name, fn in runners.items()}
    slices = [pixels[(i * args.batch) % len(pixels):][:args.batch] for i in range(args.workers)]
    count = sum(len(s) for s in slices)

    def batch(fn: Callable[[Any], np.ndarray], x: Any) -> None:
        with intra_op_threads(threads):
            fn(x)

    times: dict[str, list[float]] = {name: [] for name in runners}
    with ThreadPoolExecutor(args.workers) as pool:
        for rnd in range(args.rounds + 1):  # the first round warms up
            for name, fn in runners.items():
                started = cpu_time()
                list(pool.map(lambda x, fn=fn: batch(fn, x), slices))
                if rnd:
                    times[name].append((cpu_time() - started) / count)
    print(f"  {'variant':>13}  ms CPU/img  x eager  cos min   cos mean   (load "
          f"{os.getloadavg()[0]:.2f})")
    for name, spent in times.items():
        ratio = median(e / t for e, t in zip(times["eager"], spent, strict=True))
        print(f"  {name:>13}  {1000 * median(spent):9.1f}  {ratio:7.2f}  "
              f"{cosines[name].min():.6f}  {cosines[name].mean():.6f}")


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
if {whole}:
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
    marks["runtime"] = dict(text=clip.text_runtime, image=clip.image_runtime,
                            torch="torch" in sys.modules)
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
            # the towers twice, with a cache of their own: the first load goes through torch
            # and checks the numpy towers, the second runs them
            with tempfile.TemporaryDirectory(prefix="bench-clip-cache-") as cache:
                for whole, label in ((True, "whole model"), (False, "towers, first load"),
                                     (False, "towers, checked")):
                    code = _LOAD_CHILD.format(root=root, batch=args.batch, whole=whole,
                                              checkpoint=str(checkpoint))
                    done = subprocess.run([sys.executable, "-c", code], text=True,
                                          capture_output=True, check=True,
                                          env=dict(os.environ, XDG_CACHE_HOME=cache))
                    marks = json.loads(done.stdout.strip().splitlines()[-1])
                    print(f"  {label} (run {run + 1}): {marks.pop('runtime', '')}")
                    _print_marks(marks)
    finally:
        if made is not None:
            made.unlink()
            made.parent.rmdir()


def _print_marks(marks: dict[str, dict[str, Any]]) -> None:
    for name, m in marks.items():
        print(f"    {name:>21}: {m.get('wall', 0):6.2f} s, {m.get('cpu', 0):5.2f} s CPU"
              f" | VmRSS {m['VmRSS']:5d} RssAnon {m['RssAnon']:5d} "
              f"RssFile {m['RssFile']:5d} peak {m['VmHWM']:5d}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--parts", default="throughput,load",
                        help="any of throughput, threads, variants, load (comma-separated)")
    parser.add_argument("--images", type=int, default=32)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--threads", type=int, default=0)
    parser.add_argument("--checkpoint", default=str(CHECKPOINT))
    parser.add_argument("--compile", action="store_true", help="also time torch.compile")
    parser.add_argument("--variants", default=",".join(VARIANTS),
                        help=f"for the variants part: any of {', '.join(VARIANTS)}, bf16, compile")
    parser.add_argument("--workers", type=int, default=1,
                        help="variants: threads timed at once, each on its own batch")
    parser.add_argument("--rounds", type=int, default=3, help="variants: timing rounds")
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

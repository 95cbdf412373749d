"""Text-query latency through a warm daemon's socket, against a CLI that loads the model each time.

The reference is what rclip-style tools do: every query is a new process that imports torch,
loads the CLIP model, embeds the text and reads the index (here ``scanpix-query --direct``,
one process per query).  The daemon keeps the model loaded, so a query costs one text
embedding plus a ranking.  Both run in this process's lifetime on the same library:
a few hundred synthetic photos indexed for real with ``scanpixd index``, with ViT-B-32
(random weights saved to a local checkpoint: there is no model hub here, and the cost of a
query does not depend on what the weights are).

Run: ``python -m benchmarks.bench_api [--photos 150] [--queries 40] [--spawns 4] [--clip-threads N]``.
Prints p50/p99 of wall time for each and their ratio (the design target is >= 20x, p50 < 50 ms
at 100k), and the CPU seconds each query cost, which a busy shared machine distorts less.
``--clip-threads`` sets ``clip.threads`` for both sides (0: torch's default, one per core).
"""

from __future__ import annotations

import argparse
import os
import resource
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

from scanpixd.api.client import Client, DaemonUnavailable

TEXTS = ("a dog on the beach", "sunset over the sea", "snow in the mountains", "a red car", "birthday cake",
         "city street at night", "a cat sleeping", "flowers in a garden", "a boat on a lake",
         "people at a concert", "a forest path", "a bridge over a river", "food on a plate",
         "a church tower", "children playing", "a waterfall")


def write_photos(root: Path, count: int) -> None:
    """Photo-like pictures (gradients and blobs), 20 to a folder, every one different."""
    rng = np.random.default_rng(0)
    y, x = np.mgrid[0:360, 0:480].astype(np.float32)
    for i in range(count):
        channels = [127 + 100 * np.sin(x * rng.uniform(0.002, 0.03) + y * rng.uniform(0.002, 0.03)
                                       + rng.uniform(0, 6.3)) for _ in range(3)]
        img = np.stack(channels, axis=-1)
        for _ in range(5):
            cx, cy, r = rng.uniform(0, 480), rng.uniform(0, 360), rng.uniform(15, 90)
            img[(x - cx) ** 2 + (y - cy) ** 2 < r * r] = rng.uniform(0, 255, 3)
        folder = root / f"event{i // 20:03d}"
        folder.mkdir(parents=True, exist_ok=True)
        Image.fromarray(np.clip(img, 0, 255).astype(np.uint8)).save(folder / f"IMG_{i:05d}.jpg", quality=88)


def random_checkpoint(path: Path) -> float:
    """ViT-B-32 with fixed random weights, saved like a downloaded checkpoint; seconds taken."""
    import open_clip
    import torch

    started = time.perf_counter()
    torch.manual_seed(0)
    model = open_clip.create_model("ViT-B-32")
    torch.save(model.state_dict(), path)
    return time.perf_counter() - started


def write_config(path: Path, root: Path, sock: Path, checkpoint: Path, threads: int = 0) -> None:
    path.write_text(
        f'roots = ["{root}"]\njobs = 2\n[daemon]\nsocket = "{sock}"\n'
        f'[clip]\nenabled = true\nmodel = "ViT-B-32"\npretrained = "{checkpoint}"\ndownload = false\n'
        f"idle_unload = 0.0\nthreads = {threads}\n[faces]\nenabled = false\n", encoding="utf-8")


def child_env(base: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SCANPIX_", "NOTIFY_", "LISTEN_"))}
    for name in ("XDG_CONFIG_HOME", "XDG_CACHE_HOME", "XDG_RUNTIME_DIR"):
        env[name] = str(base / name.lower())
        Path(env[name]).mkdir(exist_ok=True)
    return env


def percentiles(seconds: list[float]) -> tuple[float, float]:
    ms = np.asarray(seconds) * 1000
    return float(np.percentile(ms, 50)), float(np.percentile(ms, 99))


def start_daemon(config: Path, sock: Path, env: dict[str, str], log: Path) -> subprocess.Popen[bytes]:
    with log.open("wb") as out:
        proc = subprocess.Popen([sys.executable, "-m", "scanpixd", "run", "--config", str(config)],
                                env=env, stdout=out, stderr=subprocess.STDOUT)
    client = Client(sock, timeout=5)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        try:
            if client.get("/v1/status")["loaded"]:
                return proc
        except DaemonUnavailable:
            pass
        if proc.poll() is not None:
            raise RuntimeError(f"the daemon exited: {log.read_text()[-2000:]}")
        time.sleep(0.1)
    raise RuntimeError("the daemon did not start")


def cpu_seconds(pid: int) -> float:
    """User plus system time the process has used so far."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def first_query(sock: Path) -> float:
    """The first text search, which loads the model."""
    started = time.perf_counter()
    Client(sock, timeout=300).post("/v1/search", q="warm up the model", limit=20)
    return time.perf_counter() - started


def through_daemon(sock: Path, queries: int) -> list[float]:
    """Latencies of ``queries`` different text searches on a warm daemon."""
    client = Client(sock, timeout=300)
    times = []
    for i in range(queries):
        text = f"{TEXTS[i % len(TEXTS)]} {i // len(TEXTS)}" if i >= len(TEXTS) else TEXTS[i]
        started = time.perf_counter()
        client.post("/v1/search", q=text, limit=20)
        times.append(time.perf_counter() - started)
    return times


def spawned(config: Path, env: dict[str, str], spawns: int) -> tuple[list[float], float]:
    """One ``scanpix-query --direct`` process per query: it loads torch and the model each time.

    Wall times, and the CPU seconds of one query (the mean over the processes).
    """
    exe = Path(sys.executable).parent / "scanpix-query"
    command = [str(exe)] if exe.is_file() else [sys.executable, "-m", "scanpixd.cli.query_cli"]
    times = []
    cpu_before = children_cpu()
    for i in range(spawns):
        started = time.perf_counter()
        out = subprocess.run([*command, "--direct", "--json", "--config", str(config), TEXTS[i]],
                             env=env, capture_output=True, timeout=600)
        times.append(time.perf_counter() - started)
        if out.returncode != 0:
            raise RuntimeError(out.stderr.decode(errors="replace"))
    return times, (children_cpu() - cpu_before) / spawns


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--photos", type=int, default=150)
    parser.add_argument("--queries", type=int, default=40)
    parser.add_argument("--spawns", type=int, default=4)
    parser.add_argument("--clip-threads", type=int, default=0)
    args = parser.parse_args()
    base = Path(tempfile.mkdtemp(prefix="bench-api-"))
    daemon: subprocess.Popen[bytes] | None = None
    try:
        root, sock, config, env = base / "library", base / "s.sock", base / "config.toml", child_env(base)
        write_photos(root, args.photos)
        made = random_checkpoint(base / "vit-b-32-random.pt")
        write_config(config, root, sock, base / "vit-b-32-random.pt", args.clip_threads)
        started = time.perf_counter()
        subprocess.run([sys.executable, "-m", "scanpixd", "index", "--config", str(config)], env=env,
                       check=True, capture_output=True, timeout=1800)
        indexed = time.perf_counter() - started
        rate = args.photos / indexed
        print(f"setup: {args.photos} photos, ViT-B-32 checkpoint in {made:.1f} s, "
              f"indexed (all stages, CLIP included) in {indexed:.1f} s ({rate:.1f} photos/s)")
        daemon = start_daemon(config, sock, env, base / "daemon.log")
        cold = first_query(sock)
        cpu_before = cpu_seconds(daemon.pid)
        warm = through_daemon(sock, args.queries)
        daemon_cpu = (cpu_seconds(daemon.pid) - cpu_before) / args.queries
        memory = rss_mb(daemon.pid)
        direct, direct_cpu = spawned(config, env, args.spawns)
        d50, d99 = percentiles(warm)
        s50, s99 = percentiles(direct)
        print(f"clip.threads = {args.clip_threads} (0: one per core)")
        print(f"daemon, warm ({args.queries} text queries):  p50 {d50:8.1f} ms   p99 {d99:8.1f} ms"
              f"   (first query, loading the model: {cold * 1000:.0f} ms; RSS {memory:.0f} MB)")
        print(f"direct, one process per query ({args.spawns}):  p50 {s50:8.1f} ms   p99 {s99:8.1f} ms")
        print(f"ratio (direct p50 / daemon p50): {s50 / d50:.0f}x   (p99: {s99 / d99:.0f}x)")
        print(f"CPU per query: daemon {daemon_cpu * 1000:.0f} ms, direct {direct_cpu * 1000:.0f} ms: "
              f"{direct_cpu / daemon_cpu:.0f}x")
        print(f"load average: {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores")
    finally:
        if daemon is not None and daemon.poll() is None:
            daemon.send_signal(signal.SIGTERM)
            daemon.wait(timeout=60)
        shutil.rmtree(base, ignore_errors=True)


if __name__ == "__main__":
    main()

"""How fast the running daemon notices a new photo, and how fast it starts.

Run ``python -m benchmarks.bench_daemon``.  A real ``scanpixd run`` child process (models
off, debounce 0.2 s) serves a synthetic library of ~2,000 indexed files
(:mod:`benchmarks.synth`).  Printed:

* ``start``: from spawning the process to ``/v1/status`` answering, to the library view
  being loaded, to ``READY=1`` on a real notify socket, and to the startup rescan being
  done; beside the bare cost of starting Python and importing the daemon's modules, which
  no start can beat;
* ``latency``: from a photo landing in a watched folder to its record being readable
  (and to the library view serving it), p50 and p95 over 50 photos: half written under
  a temporary name and renamed in (browsers, rsync, Syncthing), half written in place;
  target < 2 s ("findable by metadata within 2 s", DESIGN.md §7).  Beside it, the cheap
  tier's own time for one such photo, measured in this process: the floor the daemon
  adds its debounce and scheduling to.

Photos are the corpus's phone and camera JPEGs (7-13 MP) when ``../shared/corpora`` is
there, else synthetic 6 MP JPEGs; each is made unique by a trailer after its end marker,
so no two share a content hash (a copy would reuse the other's results, not be indexed).
The machine is shared: the load average is printed with the figures.
"""

from __future__ import annotations

import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from benchmarks import synth
from scanpixd.config import Settings
from scanpixd.indexer import Indexer, Summary
from scanpixd.scan import Scope, reconcile_scopes
from scanpixd.store import Store
from tests.helpers_daemon import DaemonProcess, notify_listener, photo_bytes, receive_all

PROJECT = Path(__file__).resolve().parents[1]
CORPORA = PROJECT.parent / "shared" / "corpora"
CORPUS_JPEGS = ("metadata-extractor-images/jpg", "exif-samples/jpg/mobile", "exif-samples/jpg/hdr")
LIBRARY = 2000
PHOTOS = 50
DEBOUNCE = 0.2
STARTS = 3


def _load() -> str:
    return " ".join(f"{x:.1f}" for x in os.getloadavg())


def _percentiles(values: list[float]) -> tuple[float, float]:
    ordered = sorted(values)
    p95 = ordered[min(len(ordered) - 1, round(0.95 * (len(ordered) - 1)))]
    return statistics.median(ordered), p95


# -- photos ----------------------------------------------------------------------------------
def photos(count: int) -> list[bytes]:
    """``count`` distinct JPEGs: real camera files made unique, or synthetic ones."""
    real = []
    for folder in CORPUS_JPEGS:
        base = CORPORA / folder
        if base.is_dir():
            real += sorted(p for p in base.iterdir() if p.suffix.lower() == ".jpg"
                           and 2_000_000 < p.stat().st_size < 12_000_000)
    if real:
        sources = [p.read_bytes() for p in real[:12]]
        print(f"photos    {len(sources)} corpus JPEGs, each repeated with a unique trailer")
        return [sources[i % len(sources)] + f"unique-{i}".encode() for i in range(count)]
    print("photos    synthetic 6 MP JPEGs (the corpora are not beside the project)")
    return [photo_bytes(700 + i, size=(3000, 2000)) for i in range(count)]


def direct_cost(settings: Settings, blobs: list[bytes], base: Path) -> float:
    """Median seconds the cheap tier takes for one photo, in process (no watching, no queue)."""
    folder = base / "direct"
    folder.mkdir()
    indexer = Indexer(settings, jobs=settings.jobs)
    times = []
    try:
        for i, blob in enumerate(blobs[:10]):
            path = folder / f"direct_{i}.jpg"
            path.write_bytes(blob)
            started = time.perf_counter()
            plan = reconcile_scopes([Scope(base, folder, recursive=False, ready={path})], settings,
                                    indexer.store, indexer.stages)
            indexer.run_cheap(plan.work, Summary())
            times.append(time.perf_counter() - started)
    finally:
        indexer.close()
    return statistics.median(times[1:])  # the first one starts exiftool


# -- start-up --------------------------------------------------------------------------------
def import_cost() -> float:
    """Seconds to start Python and import the daemon: the floor of any start."""
    started = time.perf_counter()
    child = subprocess.Popen(
        [sys.executable, "-c", "import scanpixd.daemon, scanpixd.cli.daemon_cli; print('in', flush=True)"],
        cwd=PROJECT, stdout=subprocess.PIPE, text=True)
    assert child.stdout is not None and child.stdout.readline() == "in\n"
    took = time.perf_counter() - started  # until imported, not until the interpreter has exited
    child.wait()
    return took


def one_start(daemon: DaemonProcess, notify: Path) -> dict[str, float]:
    sock = notify_listener(notify)
    marks: dict[str, float] = {}
    started = time.perf_counter()
    daemon.start(wait=False, NOTIFY_SOCKET=str(notify))
    try:
        while "idle" not in marks:
            now = time.perf_counter() - started
            assert now < 300, "the daemon did not start"
            if "ready" not in marks and any("READY=1" in m for m in receive_all(sock)):
                marks["ready"] = now
            status = daemon.status()
            if status is not None:
                marks.setdefault("status", now)
                if status.get("loaded"):
                    marks.setdefault("loaded", now)
                work = status.get("work") or {}
                if ("ready" in marks and work.get("reconciles") and not work.get("busy")
                        and not any((work.get("queue") or {}).values())):
                    marks["idle"] = now
            time.sleep(0.01)
        marks["items"] = float(daemon.status()["items"])  # type: ignore[index]
    finally:
        daemon.close()
        sock.close()
        notify.unlink()
    return marks


def bench_start(daemon: DaemonProcess, base: Path) -> None:
    floors, runs = [], []
    for _ in range(STARTS):  # interleaved, so both see the same load
        floors.append(import_cost())
        runs.append(one_start(daemon, base / "notify.sock"))
    floor = statistics.median(floors)
    items = int(runs[0]["items"])
    print(f"start     library of {items} records, median of {STARTS} starts (load {_load()}):")
    for key, label in (("status", "/v1/status answers"), ("loaded", "library view loaded"),
                       ("ready", "READY=1"), ("idle", "startup rescan done")):
        value = statistics.median(r[key] for r in runs)
        print(f"          {label:<22} {value:6.2f} s  ({value / floor:.1f}x python + imports, "
              f"{floor:.2f} s; {value - floor:+.2f} s beyond it)")


# -- latency ---------------------------------------------------------------------------------
def land(folder: Path, name: str, blob: bytes, renamed: bool) -> float:
    """Put a photo into ``folder``; returns the moment it started to land."""
    final = folder / name
    if renamed:
        temp = folder / f".{name}.partial"
        temp.write_bytes(blob)
        started = time.perf_counter()
        os.rename(temp, final)
        return started
    started = time.perf_counter()
    with open(final, "wb") as fh:
        fh.write(blob)
    return started


def bench_latency(daemon: DaemonProcess, library: Path, blobs: list[bytes], floor: float) -> None:
    folder = library / "incoming"
    folder.mkdir()
    store = Store(daemon.settings()).folder(folder)
    daemon.start()
    daemon.wait_idle(timeout=300)
    found: dict[bool, list[float]] = {True: [], False: []}
    served: list[float] = []
    try:
        for i, blob in enumerate(blobs):
            renamed = i % 2 == 0
            name = f"IMG_{i:04d}.jpg"
            started = land(folder, name, blob, renamed)
            while store.read(name) is None:
                assert time.perf_counter() - started < 60, f"{name} was not indexed"
                time.sleep(0.005)
            found[renamed].append(time.perf_counter() - started)
            while len(daemon.client.get("/v1/search", q=f'folder:"{folder}"', limit=1000)["results"]) <= i:
                time.sleep(0.01)
            served.append(time.perf_counter() - started)
            time.sleep(0.3)
    finally:
        daemon.close()
    every = found[True] + found[False]
    sizes = sorted(len(b) / 1e6 for b in blobs)
    print(f"latency   {len(every)} photos of {sizes[0]:.1f}-{sizes[-1]:.1f} MB, "
          f"debounce {DEBOUNCE} s (load {_load()}); the cheap tier alone: {floor:.3f} s per photo")
    for label, values in (("renamed in -> record", found[True]), ("written in place -> record", found[False]),
                          ("all -> record", every), ("all -> in the view", served)):
        p50, p95 = _percentiles(values)
        verdict = "MET" if p95 < 2.0 else "MISSED"
        print(f"          {label:<27} p50 {p50:.2f} s  p95 {p95:.2f} s  (target < 2 s: {verdict}; "
              f"p50 {p50 / floor:.1f}x the cheap tier alone)")


def main() -> None:
    with tempfile.TemporaryDirectory() as tmp:
        base = Path(tmp)
        library = base / "library"
        daemon = DaemonProcess(base / "daemon", [library], debounce=DEBOUNCE,
                               upkeep_delay=5.0)  # the shipped default, not the tests'
        settings = daemon.settings()
        synth.generate(library, synth.Spec(count=LIBRARY, workers=4), settings)
        bench_start(daemon, base)
        blobs = photos(PHOTOS)
        floor = direct_cost(settings, blobs, base)
        bench_latency(daemon, library, blobs, floor)


if __name__ == "__main__":
    main()

"""Faces: clustering quality on the face corpus and detection throughput on two cores.

Run ``python -m benchmarks.bench_faces``.  Prints:

* pairwise precision and recall of the people clustering against the corpus truth
  (folder and file names say who is in each photo), for a full recluster and for
  incremental assignment in shuffled orders, at a few thresholds.  Precision: of the
  face pairs put in one person, the share that are one person; recall: of the pairs
  that are one person, the share put together.  Each distinct face counts once;
* faces/s and photos/s, wall and CPU, of the faces stage (detection, landmarks, encodings
  and cues on the working image of at most 1024 px that the media stage already decoded)
  with one thread and with two threads of one process (how the indexer's model workers
  run it: HOG scans outside the GIL), at upsample 1 on 1024 px and at upsample 0 on the
  picture enlarged to 1536 px, and with two worker processes, against a naive reference
  measured in the same run: full decode and detection at full resolution, one process
  (what a plain face_recognition loop does).  The largest corpus photos are used;
* ms of CPU per photo of the HOG scan, native (``scanpixd.models.hog``) against dlib's own,
  in turns on the same greyscale working images at the stage's settings (1024 px, upsample
  1), with how many photos' detections differ;
* ms of CPU per face of dlib's own encoder and of the numpy one (``face_resnet``) on the
  same faces of every distinct corpus photo, in turns in one run, with how far apart their
  encodings are, the load times, and the numpy encoder in two threads at once.

``python -m benchmarks.bench_faces encoder`` or ``scan`` runs only that part (~30 s each).
"""

from __future__ import annotations

import scanpixd  # noqa: F401  first, as in the daemon: one BLAS thread, set before numpy loads

# isort: split
import itertools
import multiprocessing
import os
import queue
import random
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from scanpixd.config import FaceSettings, Settings
from scanpixd.models import face_resnet, hog
from scanpixd.models.faces import FaceModel, model_directory
from scanpixd.people import People, face_ref
from scanpixd.store import Store
from tests.helpers_faces import TRUTH, corpus, faces_record, library, working_image

THRESHOLDS = (0.4, 0.5, 0.6)
ORDERS = 5
PHOTOS = 12  # photos timed for throughput (the naive reference is slow)


def truth() -> dict[str, str]:
    """Identity of every distinct face; unnamed faces are each their own identity."""
    labels: dict[str, str] = {}
    for rel, names in TRUTH.items():
        content = faces_record(rel)["hash"]
        for index, name in enumerate(names):
            ref = face_ref(content, index)
            labels[ref] = name or ref
    return labels


def pairwise(people: People, labels: dict[str, str]) -> tuple[float, float]:
    found = {f.ref: p.id for p in people.list() for f in people.faces_of(p.id)}
    refs = sorted(labels)
    together = same = both = 0
    for a, b in itertools.combinations(refs, 2):
        predicted = found[a] == found[b]
        actual = labels[a] == labels[b]
        together += predicted
        same += actual
        both += predicted and actual
    return both / max(together, 1), both / max(same, 1)


def clustering() -> None:
    labels = truth()
    print(f"clustering: {len(labels)} distinct faces, {len(set(labels.values()))} people")
    with tempfile.TemporaryDirectory() as tmp:
        base = Path(tmp)
        settings = Settings()
        settings.cache_dir = base / "cache"
        store = Store(settings)
        for threshold in THRESHOLDS:
            root = base / f"lib-{threshold}"
            records = library(root, list(TRUTH))
            full = People.load(store, [root], records, threshold=threshold)
            precision, recall = pairwise(full, labels)
            incremental = [_incremental(store, root, records, threshold, seed)
                           for seed in range(ORDERS)]
            worst_p = min(p for p, _ in incremental)
            worst_r = min(r for _, r in incremental)
            print(f"  threshold {threshold:.2f}: recluster precision {precision:.3f} "
                  f"recall {recall:.3f}; incremental ({ORDERS} orders) worst precision "
                  f"{worst_p:.3f} recall {worst_r:.3f}; persons {len(full.list())}")


def _incremental(store: Store, root: Path, records: list, threshold: float,
                 seed: int) -> tuple[float, float]:
    order = list(records)
    random.Random(seed).shuffle(order)
    people = People(store, [root / "unsaved"], threshold=threshold)
    for folder, record in order:
        people.assign_new(folder, record)
    return pairwise(people, truth())


# -- throughput ------------------------------------------------------------------------
def _files() -> list[Path]:
    seen, files = set(), []
    for rel in TRUTH:
        content = faces_record(rel)["hash"]
        if content not in seen:
            seen.add(content)
            files.append(corpus() / rel)
    return sorted(files, key=_pixels, reverse=True)[:PHOTOS]


def _pixels(path: Path) -> int:
    with Image.open(path) as im:
        return im.width * im.height


def _naive(model: FaceModel, paths: list[Path]) -> int:
    found = 0
    for path in paths:
        with Image.open(path) as im:
            found += len(model.detect(im.convert("RGB")))
    return found


Variant = tuple[int, int, int]  # (upsample, max_size (0: full resolution, decoded here), threads)


def _worker(variant: Variant, paths: list[Path], barrier: Any, results: Any) -> None:
    upsample, max_size, threads = variant
    model = FaceModel(FaceSettings(idle_unload=0, upsample=upsample, max_size=max_size))
    model.load()
    # the media stage has decoded the working image already; the faces stage only detects
    images = [] if max_size == 0 else [working_image(p) for p in paths]
    with ThreadPoolExecutor(max_workers=threads) as pool:
        list(pool.map(model.detect, images[:threads]))  # each thread's own HOG detector
        barrier.wait()  # workers start together, after loading
        start, cpu = time.perf_counter(), time.process_time()
        if max_size == 0:
            faces = _naive(model, paths)
        else:
            faces = sum(len(found) for found in pool.map(model.detect, images))
        results.put((time.perf_counter() - start, time.process_time() - cpu, faces))


def _timed(chunks: list[list[Path]], variant: Variant) -> tuple[float, float, int]:
    """Seconds until the slowest worker finished its chunk, CPU seconds, and faces found."""
    context = multiprocessing.get_context("spawn")
    barrier, results = context.Barrier(len(chunks)), context.Queue()
    workers = [context.Process(target=_worker, args=(variant, chunk, barrier, results))
               for chunk in chunks]
    for worker in workers:
        worker.start()
    done: list[tuple[float, float, int]] = []
    while len(done) < len(workers):
        try:
            done.append(results.get(timeout=5))
        except queue.Empty:
            if any(w.exitcode not in (None, 0) for w in workers):
                raise RuntimeError("a benchmark worker died; see its traceback above") from None
    for worker in workers:
        worker.join()
    return max(t for t, _, _ in done), sum(c for _, c, _ in done), sum(f for _, _, f in done)


def throughput() -> None:
    files = _files()
    print(f"throughput: {len(files)} distinct photos (model load excluded)")
    rows = [
        ("naive, full resolution, 1 process", _timed([files], (1, 0, 1))),
        ("upsample 1 at 1024, 1 thread", _timed([files], (1, 1024, 1))),
        ("upsample 1 at 1024, 2 threads", _timed([files], (1, 1024, 2))),
        ("upsample 0 at 1536, 1 thread", _timed([files], (0, 1536, 1))),
        ("upsample 0 at 1536, 2 threads", _timed([files], (0, 1536, 2))),
        ("upsample 1 at 1024, 2 processes", _timed([files[0::2], files[1::2]], (1, 1024, 1))),
    ]
    for label, (seconds, cpu, found) in rows:
        print(f"  {label:36s} {len(files) / seconds:5.2f} photos/s {found / seconds:5.2f} "
              f"faces/s ({1000 * seconds / len(files):.0f} ms/photo wall, "
              f"{1000 * cpu / len(files):.0f} ms CPU; {found} faces)")
    naive_s, one_s, two_s = rows[0][1][0], rows[1][1][0], rows[2][1][0]
    print(f"  ratio: stage path vs naive {naive_s / one_s:.2f}x (1 thread); "
          f"2 threads vs 1 {one_s / two_s:.2f}x; upsample 0 at 1536 vs upsample 1 at 1024 "
          f"{one_s / rows[3][1][0]:.2f}x (1 thread)")


# -- encoder -----------------------------------------------------------------------------
ROUNDS = 3  # turns of each encoder over all faces


def _shapes() -> list[tuple[np.ndarray, Any]]:
    """(pixels, 68-point shapes) of every distinct corpus photo with faces, as the stage has."""
    import dlib

    directory = model_directory()
    detector = dlib.get_frontal_face_detector()
    predictor = dlib.shape_predictor(str(directory / "shape_predictor_68_face_landmarks.dat"))
    found, seen = [], set()
    for rel in TRUTH:
        path = corpus() / rel
        content = faces_record(rel)["hash"]
        if content in seen or path.suffix == ".mp4":
            continue
        seen.add(content)
        pixels = np.asarray(working_image(path))
        shapes = dlib.full_object_detections()
        for rect in detector(pixels, 1):
            shapes.append(predictor(pixels, rect))
        if len(shapes):
            found.append((pixels, shapes))
    return found


def _encode(encoder: Any, faces: list[tuple[np.ndarray, Any]]) -> np.ndarray:
    return np.concatenate([np.asarray(encoder.compute_face_descriptor(pixels, shapes, 1),
                                      dtype=np.float32).reshape(-1, 128)
                           for pixels, shapes in faces])


def _loaded(make: Any) -> tuple[Any, float]:
    start = time.perf_counter()
    return make(), time.perf_counter() - start


def encoders() -> None:
    import dlib

    path = model_directory() / "dlib_face_recognition_resnet_model_v1.dat"
    slow, slow_load = _loaded(lambda: dlib.face_recognition_model_v1(str(path)))
    net, fast_load = _loaded(lambda: face_resnet.load(path))
    fast = face_resnet.ChipEncoder(net, dlib.get_face_chips)
    faces = _shapes()
    count = sum(len(shapes) for _, shapes in faces)
    load_before = os.getloadavg()[0]
    cpu: dict[str, list[float]] = {"dlib": [], "numpy": []}
    out: dict[str, np.ndarray] = {}
    for turn in range(ROUNDS):
        for label, encoder in [("dlib", slow), ("numpy", fast)][:: 1 if turn % 2 else -1]:
            start = time.process_time()
            out[label] = _encode(encoder, faces)
            cpu[label].append((time.process_time() - start) / count)
    diff = out["numpy"] - out["dlib"]
    ms = {label: 1000 * min(values) for label, values in cpu.items()}
    print(f"encoder: {count} faces in {len(faces)} photos, best of {ROUNDS} turns, load average "
          f"{load_before:.1f} -> {os.getloadavg()[0]:.1f}")
    print(f"  ms CPU per face: dlib {ms['dlib']:.1f}, numpy {ms['numpy']:.1f} "
          f"({ms['dlib'] / ms['numpy']:.1f}x); every turn: dlib "
          f"{' '.join(f'{1000 * v:.1f}' for v in cpu['dlib'])}, numpy "
          f"{' '.join(f'{1000 * v:.1f}' for v in cpu['numpy'])}")
    print(f"  numpy vs dlib encodings: max abs difference {np.abs(diff).max():.2e}, max "
          f"distance {np.linalg.norm(diff, axis=1).max():.2e}; load dlib {slow_load:.2f} s, "
          f"numpy {fast_load:.2f} s")
    _concurrent(fast, faces, count)


def _concurrent(encoder: Any, faces: list[tuple[np.ndarray, Any]], count: int) -> None:
    """The numpy encoder in one thread, then in two at once (two model workers, no lock)."""
    rates = []
    for threads in (1, 2):
        start, cpu = time.perf_counter(), time.process_time()
        with ThreadPoolExecutor(max_workers=threads) as pool:
            list(pool.map(lambda _: _encode(encoder, faces), range(threads)))
        wall = time.perf_counter() - start
        rates.append(threads * count / wall)
        print(f"  numpy, {threads} thread(s): {rates[-1]:.1f} faces/s wall, "
              f"{1000 * (time.process_time() - cpu) / (threads * count):.1f} ms CPU per face")
    print(f"  2 threads vs 1: {rates[1] / rates[0]:.2f}x faces/s")


# -- the HOG scan ----------------------------------------------------------------------
def scans() -> None:
    import dlib

    detector = dlib.get_frontal_face_detector()
    scanner = hog.native_scanner(detector)
    if scanner is None:
        print("scan: the native HOG scan is not built; nothing to compare")
        return
    pictures = [np.asarray(working_image(path).convert("L")) for path in _files()]
    spent = {"dlib": [], "native": []}
    differ = 0
    for _ in range(ROUNDS):
        for name, run in (("dlib", detector.run), ("native", scanner.run)):
            cpu = time.process_time()
            for pixels in pictures:
                run(pixels, 1, 0.0)
            spent[name].append(time.process_time() - cpu)
    for pixels in pictures:
        rects, scores, _ = detector.run(pixels, 1, 0.0)
        boxes, ours, _ = scanner.run(pixels, 1, 0.0)
        theirs = [(r.left(), r.top(), r.right(), r.bottom()) for r in rects]
        differ += theirs != boxes or not np.allclose(scores, ours, atol=1e-4)
    dlib_ms, native_ms = (1000 * min(spent[k]) / len(pictures) for k in ("dlib", "native"))
    print(f"scan: {len(pictures)} photos at 1024 px, upsample 1, best of {ROUNDS} turns, "
          f"kernels {hog.kernels()}, load average {os.getloadavg()[0]:.2f}")
    print(f"  ms CPU per photo: dlib {dlib_ms:.0f}, native {native_ms:.0f} "
          f"({native_ms / dlib_ms:.2f}x dlib); photos whose detections differ: {differ}")


def main() -> None:
    np.set_printoptions(precision=3)
    part = sys.argv[1:]
    if not part:
        clustering()
        throughput()
    if part in ([], ["scan"]):
        scans()
    if part in ([], ["encoder"]):
        encoders()


if __name__ == "__main__":
    main()

"""Duplicate grouping: speed on 100k photos' hashes, and accuracy on the corpora's known groups.

Run ``python -m benchmarks.bench_duplicates`` (``--n``, ``--subset``, ``--no-corpus``).

Speed: 100k made-up records (hash bits with uneven odds, like real pHashes; capture times
clustered into events; planted near-duplicates and bursts) grouped by
:func:`scanpixd.duplicates.find_groups`, against the reference of comparing all pairs, timed
on a subset in the same run and scaled by (n / subset)², both vectorised with numpy, and a
plain-Python loop over ``imagehash`` objects (what a script would do) scaled the same way.
Accuracy: pairs in planted groups found (recall) and found pairs that were planted
(precision); on the corpora, the same against hand-checked groups of real photos, for each
preset and for a single 64-bit dHash at the photo-organiser default (5 of 64 bits).
"""

from __future__ import annotations

import argparse
import glob
import itertools
import tempfile
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import imagehash
import numpy as np
from PIL import Image

from scanpixd.config import Settings
from scanpixd.duplicates import DuplicateItem, Group, find_groups, index_pairs, thresholds
from scanpixd.pipeline.base import Job, run_stage
from scanpixd.pipeline.hashes import HashesStage, compute_hashes, hamming
from scanpixd.pipeline.media import MediaStage
from scanpixd.pipeline.quality import QualityStage, measure
from scanpixd.pipeline.services import Services
from scanpixd.record import new_record
from scanpixd.scan import content_hash
from scanpixd.store import FolderStore

CORPORA = Path(__file__).resolve().parents[1].parent / "shared" / "corpora"
Pairs = set[frozenset[str]]


# --- made-up library -----------------------------------------------------------------------


class Library:
    """Records with hashes, times and planted groups (the ground truth)."""

    def __init__(self, n: int, seed: int = 11):
        self.rng = np.random.default_rng(seed)
        self.odds = {256: self.rng.beta(3, 3, 256), 64: self.rng.beta(3, 3, 64)}
        self.items: list[DuplicateItem] = []
        self.truth: dict[str, list[set[str]]] = {"near": [], "burst": []}
        events = np.sort(self.rng.uniform(1.4e9, 1.6e9, max(1, n // 40)))
        while len(self.items) < n:
            roll = self.rng.random()
            start = float(self.rng.choice(events) + self.rng.uniform(0, 7200))
            if roll < 0.02:
                self._plant("near", start, int(self.rng.integers(2, 5)), (0, 16), (0, 4), 0.0)
            elif roll < 0.03:
                self._plant("burst", start, int(self.rng.integers(3, 7)), (18, 30), (2, 8), 1.0)
            else:
                self._add(self._photo(), start)

    def _photo(self) -> dict[str, np.ndarray]:
        return {name: (self.rng.random(bits) < self.odds[bits]).astype(np.uint8)
                for name, bits in (("phash", 256), ("dhash", 256), ("phash8", 64),
                                   ("dhash8", 64))}

    def _flip(self, bits: np.ndarray, span: tuple[int, int]) -> np.ndarray:
        out = bits.copy()
        k = int(self.rng.integers(span[0], span[1] + 1))
        out[self.rng.choice(bits.size, k, replace=False)] ^= 1
        return out

    def _plant(self, kind: str, start: float, size: int, fine: tuple[int, int],
               coarse: tuple[int, int], step: float) -> None:
        base = self._photo()
        paths = set()
        for k in range(size):
            hashes = base if k == 0 else {
                name: self._flip(bits, fine if bits.size == 256 else coarse)
                for name, bits in base.items()}
            paths.add(self._add(hashes, start + k * step * float(self.rng.uniform(0.5, 2))))
        self.truth[kind].append(paths)

    def _add(self, hashes: dict[str, np.ndarray], when: float) -> str:
        i = len(self.items)
        local = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(when))
        local += f".{int(when % 1 * 1000):03d}"
        record = {"hash": f"b2:{i:032x}", "mtime_ns": i, "media": {"kind": "image"},
                  "metadata": {"taken_local": local, "make": "Cam", "model": "One"},
                  "hashes": dict({k: np.packbits(v).tobytes().hex() for k, v in hashes.items()},
                                 detail=10.0)}
        path = f"/photos/{i // 1000}/IMG_{i}.jpg"
        self.items.append(DuplicateItem(record, Path(path)))
        return path


def _pairs(groups: Iterable[Iterable[str]]) -> Pairs:
    return {frozenset(p) for g in groups for p in itertools.combinations(sorted(g), 2)}


def _score(found: Pairs, truth: Pairs) -> tuple[float, float]:
    hit = len(found & truth)
    return (hit / len(found) if found else 1.0), (hit / len(truth) if truth else 1.0)


def _group_paths(groups: list[Group], kind: str | None = None) -> list[set[str]]:
    return [{m.path for m in g.members} for g in groups if kind is None or g.kind == kind]


# --- references ----------------------------------------------------------------------------


def _all_pairs_numpy(items: list[DuplicateItem], settings: Settings) -> tuple[float, Pairs]:
    """Every pair compared (vectorised per row) with the fine near rule: the reference."""
    limits = thresholds(settings.duplicates)
    start = time.perf_counter()
    p = np.array([np.frombuffer(bytes.fromhex(i.record["hashes"]["phash"]), np.uint64)
                  for i in items])
    d = np.array([np.frombuffer(bytes.fromhex(i.record["hashes"]["dhash"]), np.uint64)
                  for i in items])
    found: Pairs = set()
    for i in range(len(items) - 1):
        dp = np.bitwise_count(p[i + 1:] ^ p[i]).sum(axis=1)
        dd = np.bitwise_count(d[i + 1:] ^ d[i]).sum(axis=1)
        for j in np.flatnonzero((dp <= limits.fine_phash) & (dd <= limits.fine_dhash)):
            found.add(frozenset((str(items[i].path), str(items[i + 1 + j].path))))
    return time.perf_counter() - start, found


def _index_candidates(items: list[DuplicateItem]) -> Pairs:
    """The pairs multi-index hashing proposes (before any rule is applied)."""
    columns = [np.array([np.frombuffer(bytes.fromhex(i.record["hashes"][name]), np.uint8)
                         for i in items]) for name in ("phash", "dhash")]
    found: Pairs = set()
    for a, b in index_pairs(columns, np.arange(len(items))):
        found |= {frozenset((str(items[x].path), str(items[y].path)))
                  for x, y in zip(a.tolist(), b.tolist(), strict=True)}
    return found


def _all_pairs_imagehash(items: list[DuplicateItem], limit: int) -> float:
    """What a plain script does: ImageHash objects, ``a - b`` for every pair."""
    start = time.perf_counter()
    hashes = [(imagehash.hex_to_hash(i.record["hashes"]["phash"]),
               imagehash.hex_to_hash(i.record["hashes"]["dhash"])) for i in items]
    for (pa, da), (pb, db) in itertools.combinations(hashes, 2):
        if pa - pb <= limit:
            _ = da - db
    return time.perf_counter() - start


def bench_speed(n: int, subset: int) -> None:
    print(f"made-up library: {n} photos", flush=True)
    library = Library(n)
    settings = Settings()
    start = time.perf_counter()
    groups = find_groups(library.items, settings)
    took = time.perf_counter() - start
    print(f"  find_groups: {took:.2f} s for {n} photos ({len(groups)} groups)")
    for kind in ("near", "burst"):
        precision, recall = _score(_pairs(_group_paths(groups, kind)),
                                   _pairs(library.truth[kind]))
        print(f"  {kind:5s} planted pairs: precision {precision:.3f}, recall {recall:.3f}")
    part = library.items[:subset]
    ref_time, ref_pairs = _all_pairs_numpy(part, settings)
    scale = (n / subset) ** 2
    print(f"  all pairs (numpy) on {subset}: {ref_time:.2f} s -> {ref_time * scale:.0f} s "
          f"at {n}; find_groups is {ref_time * scale / took:.0f}x faster")
    candidates = _index_candidates(part)
    print(f"  pairs within the near thresholds that the index offers as candidates: "
          f"{len(ref_pairs & candidates)}/{len(ref_pairs)}")
    small = min(subset, 600)
    py_time = _all_pairs_imagehash(library.items[:small], settings.duplicates.near_distance
                                   or thresholds(settings.duplicates).fine_phash)
    py_scale = (n / small) ** 2
    print(f"  all pairs (imagehash objects) on {small}: {py_time:.2f} s -> "
          f"{py_time * py_scale / 3600:.1f} h at {n}; find_groups is "
          f"{py_time * py_scale / took:.0f}x faster")


# --- the corpora -----------------------------------------------------------------------------

# Hand-checked groups among the corpus photos (paths relative to the corpora).
_KNOWN = [
    [f"exif-samples/jpg/orientation/landscape_{i}.jpg" for i in range(1, 9)],
    [f"exif-samples/jpg/orientation/portrait_{i}.jpg" for i in range(1, 9)],
    [f"face_recognition/examples/obama-{r}.jpg" for r in ("240p", "480p", "720p", "1080p")],
    ["exif-samples/jpg/hdr/iphone_hdr_NO.jpg", "exif-samples/jpg/hdr/iphone_hdr_YES.jpg"],
    ["face_recognition/examples/biden.jpg", "face_recognition/tests/test_images/biden.jpg",
     "face_recognition/examples/knn_examples/train/biden/biden.jpg"],
    ["face_recognition/examples/obama.jpg", "face_recognition/tests/test_images/obama.jpg",
     "face_recognition/examples/knn_examples/train/obama/obama.jpg"],
    ["face_recognition/examples/obama2.jpg", "face_recognition/tests/test_images/obama2.jpg",
     "face_recognition/examples/knn_examples/train/obama/obama2.jpg",
     "face_recognition/tests/test_images/32bit.png"],
    ["metadata-extractor-images/heic/IMG_2927.HEIC",
     "metadata-extractor-images/heic/exif-at-eof.heic"],
]
# Related shots that are neither copies nor unrelated: pairs with them are not counted.
_EITHER = {"exif-samples/jpg/hdr/canon_hdr_NO.jpg", "exif-samples/jpg/hdr/canon_hdr_YES.jpg"}


def _corpus_items(settings: Settings) -> list[DuplicateItem]:
    services = Services(settings)
    stages = [MediaStage(services), HashesStage(services), QualityStage(services)]
    scratch = Path(tempfile.mkdtemp(prefix="bench-dup-")) / ".scanpix"
    patterns = ["exif-samples/jpg/**/*.jpg", "face_recognition/**/*.jpg",
                "face_recognition/**/*.png", "metadata-extractor-images/jpg/*.jpg",
                "metadata-extractor-images/heic/*.heic", "metadata-extractor-images/heic/*.HEIC",
                "pillow_heif/tests/images/heif_other/*.heic"]
    paths = sorted({Path(p) for pat in patterns
                    for p in glob.glob(str(CORPORA / pat), recursive=True)})
    items = []
    for path in paths:
        stat = path.stat()
        record = new_record(path.name, stat.st_size, stat.st_mtime_ns, content_hash(path))
        job = Job(path, FolderStore(path.parent, scratch, [scratch]), record)
        if all(run_stage(stage, job) for stage in stages):
            record.update(_exif_time(path))
            items.append(DuplicateItem(record, path))
    services.close()
    return items


def _exif_time(path: Path) -> dict[str, Any]:
    try:
        with Image.open(path) as im:
            exif = im.getexif()
            sub = exif.get_ifd(0x8769)
    except OSError:
        return {}
    when = str(sub.get(36867) or "")[:19]
    if len(when) != 19:
        return {}
    local = when[:10].replace(":", "-") + "T" + when[11:]
    fraction = str(sub.get(37521) or "").strip()
    local += f".{fraction}" if fraction.isdigit() else ""
    return {"metadata": {"taken_local": local, "make": exif.get(271), "model": exif.get(272)}}


def _relevant(pairs: Pairs) -> Pairs:
    return {p for p in pairs if not any(Path(x).relative_to(CORPORA).as_posix() in _EITHER
                                        for x in p)}


def _dhash64_groups(items: list[DuplicateItem], limit: int) -> list[set[str]]:
    """The single 64-bit dHash many tools use, linked at ``limit`` bits (all pairs)."""
    parent = list(range(len(items)))

    def root(x: int) -> int:
        while parent[x] != x:
            x = parent[x]
        return x

    hashes = [i.record["hashes"]["dhash8"] for i in items]
    for a, b in itertools.combinations(range(len(items)), 2):
        if hamming(hashes[a], hashes[b]) <= limit:
            parent[root(a)] = root(b)
    groups: dict[int, set[str]] = {}
    for i, item in enumerate(items):
        groups.setdefault(root(i), set()).add(str(item.path))
    return [g for g in groups.values() if len(g) > 1]


def _bench_stages(rounds: int = 20) -> None:
    """Hashes and quality on a 1024 px working image, against imagehash used directly."""
    with Image.open(CORPORA / "exif-samples/jpg/hdr/canon_hdr_YES.jpg") as im:
        picture = im.convert("RGB")
    picture.thumbnail((1024, 1024))

    def ours() -> None:
        grey = picture.convert("L")
        compute_hashes(picture, grey)
        measure(picture, grey)

    def direct() -> None:
        imagehash.phash(picture, hash_size=16)
        imagehash.dhash(picture, hash_size=16)

    timings = []
    for run in (ours, direct):
        run()
        start = time.perf_counter()
        for _ in range(rounds):
            run()
        timings.append((time.perf_counter() - start) / rounds * 1000)
    print(f"  hashes (4) + quality on a {picture.width}x{picture.height} working image: "
          f"{timings[0]:.1f} ms; imagehash pHash+dHash 16x16 straight on it: {timings[1]:.1f} ms")


def bench_corpus() -> None:
    if not CORPORA.is_dir():
        print("corpora not found: accuracy on real photos skipped")
        return
    settings = Settings()
    settings.clip.enabled = settings.faces.enabled = False
    start = time.perf_counter()
    items = _corpus_items(settings)
    took = time.perf_counter() - start
    print(f"corpus: {len(items)} real photos, media+hashes+quality {took / len(items) * 1000:.0f}"
          f" ms per photo")
    _bench_stages()
    truth = _relevant(_pairs([[str(CORPORA / p) for p in g] for g in _KNOWN]))
    for preset in ("strict", "balanced", "loose"):
        settings.duplicates.preset = preset
        found = _relevant(_pairs(_group_paths(find_groups(items, settings))))
        precision, recall = _score(found, truth)
        print(f"  {preset:8s}: precision {precision:.3f}, recall {recall:.3f} "
              f"({len(found)} pairs grouped, {len(truth)} known)")
    found = _relevant(_pairs(_dhash64_groups(items, 5)))
    precision, recall = _score(found, truth)
    print(f"  64-bit dHash <= 5: precision {precision:.3f}, recall {recall:.3f} "
          f"({len(found)} pairs grouped)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=100_000)
    parser.add_argument("--subset", type=int, default=4000)
    parser.add_argument("--no-corpus", action="store_true")
    args = parser.parse_args()
    bench_speed(args.n, args.subset)
    if not args.no_corpus:
        bench_corpus()


if __name__ == "__main__":
    main()

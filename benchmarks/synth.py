"""Large synthetic libraries, written through the real store, for scale benchmarks.

Run ``python -m benchmarks.synth DIR --count 100000`` (``--checkpoint`` names the CLIP
weights the records claim; see ``--help``).  Real photos cannot be had by the hundred
thousand here, and indexing them would take days on two cores, so this writes what an
indexed library *is*: for every file a tiny original on disk (a valid JPEG of a few hundred
bytes, unique content) whose size and mtime match its record, and a record of the full
schema (:mod:`scanpixd.record`) with media, metadata and its raw dump, thumbnails, hashes,
quality, place, faces, the inferred ``taken`` time and CLIP vectors, saved with
:meth:`FolderStore.write`.  Stage version keys come from the real stages built from the
same settings the daemon will run with, so a rescan finds nothing to do; the per-folder
vector indexes are written by :func:`scanpixd.store.ann.load_or_rebuild`, so a daemon
start finds them current.  Thumbnails are hard links to one small WebP per library
(every record names its own, as the thumbnail stage would).

The library looks like a photo collection: ~50 files per folder (``YYYY/YYYY-MM-DD
eventN``), events at home or on trips with a GPS position (places and time zones are real,
looked up offline), a few cameras, 2 % videos with several frame vectors, faces of a few
hundred recurring people, planted near-duplicates, bursts and exact copies.  CLIP vectors
cluster by event and carry one or two *concepts*: when a model is given, the concepts are
the directions of real text embeddings of that model (words in :data:`CONCEPTS`), so a
text query for a concept finds those photos above the score floor and others below it,
as with a real model.  A manifest ``.scanpix-synth.json`` (hidden, so never indexed) in the
root says what was generated.
"""

from __future__ import annotations

import argparse
import hashlib
import io
import os
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np
import orjson
from PIL import Image

from scanpixd import geo
from scanpixd.config import Settings
from scanpixd.pipeline import Services, build_stages
from scanpixd.record import Record, encode_vector, new_record
from scanpixd.store import FolderStore, Store, ann
from scanpixd.timeinfer import infer_times

MANIFEST = ".scanpix-synth.json"
FILES_PER_FOLDER = 50
CONCEPTS = ("dog", "cat", "beach", "mountain", "snow", "car", "sunset", "birthday cake", "flowers",
            "city street", "forest", "boat", "baby", "bicycle", "church", "food on a plate",
            "horse", "bridge", "concert", "waterfall")
HOME = (45.4642, 9.19)  # Milan: where the photographer lives
TRIPS = ((43.7696, 11.2558), (48.8566, 2.3522), (40.7128, -74.006), (35.6762, 139.6503),
         (-33.8688, 151.2093), (60.1699, 24.9384), (41.3874, 2.1686), (52.52, 13.405),
         (46.5197, 6.6323), (37.9838, 23.7275), (-22.9068, -43.1729), (64.1466, -21.9426))
CAMERAS = (("Apple", "iPhone 13", None, (4032, 3024), True),
           ("samsung", "SM-G991B", None, (4000, 3000), True),
           ("Canon", "Canon EOS R6", "RF24-105mm F4 L IS USM", (5472, 3648), False),
           ("NIKON CORPORATION", "NIKON Z 6", "NIKKOR Z 24-70mm f/4 S", (6048, 4024), False))
PEOPLE = 300
_THUMB_SIZE = (256, 192)


@dataclass
class Spec:
    """What to generate; the defaults give a library shaped like a family's photos."""

    count: int
    seed: int = 0
    per_folder: int = FILES_PER_FOLDER
    video_share: float = 0.02
    face_share: float = 0.25
    near_share: float = 0.02  # photos planted with near-duplicates (2-3 edited copies)
    burst_share: float = 0.01  # photos that start a burst of 3-6 frames
    exact_share: float = 0.005  # photos copied byte for byte into another folder
    workers: int = 16  # writer threads (record writes are fsync-bound, not CPU-bound)


@dataclass
class Concepts:
    """Directions vectors are built from: one per concept word, plus the common one."""

    words: tuple[str, ...]
    directions: np.ndarray  # (len(words), dim) unit rows
    common: np.ndarray  # (dim,) unit: what every text embedding of the model shares

    @classmethod
    def from_embeddings(cls, words: Sequence[str], embeddings: np.ndarray) -> Concepts:
        """Text embeddings of a random-weight model are alike; keep what tells them apart."""
        mean = embeddings.mean(axis=0)
        residual = embeddings - mean
        return cls(tuple(words), _unit(residual), _unit(mean[None, :])[0])

    @classmethod
    def random(cls, dim: int, seed: int = 0) -> Concepts:
        rng = np.random.default_rng(seed)
        return cls(CONCEPTS, _unit(rng.standard_normal((len(CONCEPTS), dim))),
                   np.zeros(dim, np.float32))


@dataclass
class Event:
    """One folder: a day at home or on a trip, with its camera."""

    rel: str
    start: datetime  # local clock time of the first photo
    position: tuple[float, float]
    zone: str | None
    camera: int
    count: int
    place: dict[str, Any] | None = None


@dataclass
class Summary:
    count: int = 0
    folders: int = 0
    seconds: float = 0.0
    bytes_records: int = 0
    samples: list[str] = field(default_factory=list)  # paths relative to the root


def _unit(rows: np.ndarray) -> np.ndarray:
    rows = np.asarray(rows, dtype=np.float32)
    norms = np.linalg.norm(rows, axis=1, keepdims=True)
    return rows / np.where(norms == 0, 1.0, norms)


# -- the plan ----------------------------------------------------------------------------------
def plan_events(spec: Spec) -> list[Event]:
    """Folders with their times, places and cameras; file counts add up to ``spec.count``."""
    rng = np.random.default_rng(spec.seed)
    folders = max(1, -(-spec.count // spec.per_folder))
    zones = {p: geo.timezone_at(*p) for p in (HOME, *TRIPS)}
    events, day = [], datetime(2012, 1, 1, 9, 0)
    left = spec.count
    for index in range(folders):
        size = left // (folders - index)
        left -= size
        day += timedelta(days=float(rng.uniform(0.5, 3.5)))
        position = HOME if rng.random() < 0.6 else TRIPS[int(rng.integers(len(TRIPS)))]
        start = day.replace(hour=int(rng.integers(8, 18)), minute=int(rng.integers(60)))
        rel = f"{start.year}/{start:%Y-%m-%d} event{index:05d}"
        events.append(Event(rel, start, position, zones[position], int(rng.integers(len(CAMERAS))),
                            size))
    _name_places(events)
    return events


def _name_places(events: list[Event]) -> None:
    places = geo.reverse_many([e.position for e in events])
    for event, place in zip(events, places, strict=True):
        event.place = place


# -- one folder's files --------------------------------------------------------------------
class Writer:
    """Builds and writes the files and records of each event (thread-safe per folder)."""

    def __init__(self, root: Path, spec: Spec, settings: Settings, concepts: Concepts | None,
                 model_id: str | None, dim: int):
        self.root, self.spec, self.settings = root, spec, settings
        self.store = Store(settings)
        self.stages = build_stages(Services(settings))
        self.keys = {s.name: s.version_key() for s in self.stages}
        self.concepts, self.model_id, self.dim = concepts, model_id, dim
        self.thumb_sizes = sorted({int(s) for s in settings.thumbs.sizes}, reverse=True)
        self.people = _unit(np.random.default_rng(spec.seed + 1).standard_normal((PEOPLE, 128)))
        self.jpeg = _tiny_jpeg()
        self.thumb = _tiny_webp()

    # -- records in memory ------------------------------------------------------------
    def records(self, event: Event, index: int) -> list[tuple[str, Record, bytes]]:
        """``(name, record, original bytes)`` for the files of one event (no vectors yet)."""
        rng = np.random.default_rng([self.spec.seed, index])
        out: list[tuple[str, Record, bytes]] = []
        when = event.start
        while len(out) < event.count:
            when += timedelta(seconds=float(rng.exponential(300)))
            roll = rng.random()
            group = 1
            if roll < self.spec.burst_share:
                group = int(rng.integers(3, 7))
            elif roll < self.spec.burst_share + self.spec.near_share:
                group = int(rng.integers(2, 4))
            group = min(group, event.count - len(out))
            base = None
            for k in range(group):
                step = timedelta(seconds=0.4 * k) if roll < self.spec.burst_share else timedelta(0)
                name, record, data = self._one(event, index, len(out), when + step, rng, base,
                                               burst=roll < self.spec.burst_share)
                base = base or record
                out.append((name, record, data))
        return out

    def _one(self, event: Event, folder_index: int, n: int, when: datetime, rng: np.random.Generator,
             base: Record | None, burst: bool) -> tuple[str, Record, bytes]:
        video = base is None and rng.random() < self.spec.video_share
        name = f"{'VID' if video else 'IMG'}_{folder_index:05d}_{n:04d}.{'mp4' if video else 'jpg'}"
        data = self._original(folder_index, n)
        mtime_ns = int(when.replace(tzinfo=UTC).timestamp()) * 1_000_000_000 + n
        digest = "b2:" + hashlib.blake2b(data, digest_size=16).hexdigest()
        record = new_record(name, len(data), mtime_ns, digest)
        make, model, lens, size, has_gps = CAMERAS[event.camera]
        record["media"] = _media(video, size, rng)
        record["metadata"] = _metadata(when, make, model, lens, size, event, has_gps, rng, video)
        record["thumbs"] = {str(s): f"{digest[3:]}-{s}.webp" for s in self.thumb_sizes}
        record["hashes"] = _hashes(rng, base, burst)
        if not video:
            record["quality"] = _quality(size, rng)
        if video:
            record["preview"] = {"webm": f"{digest[3:]}.webm"}
        if record["metadata"]["gps"] is not None:
            record["place"] = dict(event.place or {}, timezone=event.zone)
        record["faces"] = self._faces(rng, video, base)
        record["stages"] = {s.name: self.keys[s.name] for s in self.stages if s.applies(record)}
        return name, record, data

    def _original(self, folder_index: int, n: int) -> bytes:
        """The tiny JPEG with a comment that makes its content (and hash) unique."""
        comment = f"scanpix synthetic {self.spec.seed} {folder_index} {n}".encode()
        segment = b"\xff\xfe" + (len(comment) + 2).to_bytes(2, "big") + comment
        return self.jpeg[:2] + segment + self.jpeg[2:]

    def _faces(self, rng: np.random.Generator, video: bool, base: Record | None) -> list[dict[str, Any]]:
        if base is not None:
            return list(base.get("faces") or [])
        if rng.random() >= self.spec.face_share:
            return []
        faces = []
        for who in rng.choice(PEOPLE, size=int(rng.integers(1, 4)), replace=False):
            encoding = self.people[who] * 0.55 + rng.normal(0, 0.012, 128)  # ~0.2 from its centre
            top, left = float(rng.uniform(0.05, 0.6)), float(rng.uniform(0.05, 0.7))
            side = float(rng.uniform(0.08, 0.3))
            faces.append({"box": [round(top, 4), round(left + side, 4), round(top + side, 4),
                                  round(left, 4)],
                          "score": round(float(rng.uniform(0.3, 2.5)), 3),
                          "encoding": encode_vector(encoding),
                          "eyes_open": round(float(rng.uniform(0.1, 0.4)), 3),
                          "smile": round(float(rng.uniform(0.3, 0.6)), 3),
                          "sharpness": round(float(rng.uniform(20, 800)), 1),
                          "size": round(side * side, 4),
                          "time": round(float(rng.uniform(0, 8)), 3) if video else None})
        return faces

    # -- vectors ----------------------------------------------------------------------
    def add_vectors(self, records: list[tuple[str, Record, bytes]], index: int) -> None:
        """CLIP vectors of one folder: its event's look, one or two concepts, copies alike."""
        copies = [bool(record["hashes"].pop("_copy", False)) for _, record, _ in records]
        if self.model_id is None or self.concepts is None or not records:
            return
        frames = [4 if record["media"]["kind"] == "video" else 1 for _, record, _ in records]
        matrix = self._folder_vectors(sum(frames), np.random.default_rng([self.spec.seed, index, 7]))
        row, previous = 0, 0
        for (_, record, _), copied, count in zip(records, copies, frames, strict=True):
            if copied:  # an edited copy or burst frame looks like the photo before it
                own = matrix[row:row + count]
                matrix[row:row + count] = matrix[previous] + 0.3 * (own - matrix[previous])
            previous = row
            times = [None] if count == 1 else [round(2.0 * i, 3) for i in range(count)]
            vectors = _unit(matrix[row:row + count])
            record["clip"] = {"model": self.model_id, "dim": self.dim,
                              "vectors": [{"time": t, "v": encode_vector(v)} for t, v in
                                          zip(times, vectors, strict=True)]}
            row += count

    def _folder_vectors(self, count: int, rng: np.random.Generator) -> np.ndarray:
        """Rows of one or two concepts, the event's common look and noise (not yet unit)."""
        assert self.concepts is not None
        directions = self.concepts.directions
        first = rng.integers(len(directions), size=count)
        second = (first + rng.integers(1, len(directions), size=count)) % len(directions)
        two = rng.random(count) < 0.5
        mix = (directions[first] + two[:, None] * directions[second]) / np.sqrt(1 + two)[:, None]
        centre = _unit(rng.standard_normal((1, self.dim)))
        noise = rng.standard_normal((count, self.dim)).astype(np.float32) / np.sqrt(self.dim)
        return 0.62 * mix + 0.18 * self.concepts.common + 0.55 * centre + 0.45 * noise

    # -- disk -------------------------------------------------------------------------
    def write_folder(self, event: Event, records: list[tuple[str, Record, bytes]]) -> int:
        """Originals, records, thumbnail links and the vector index of one folder."""
        path = self.root / event.rel
        path.mkdir(parents=True, exist_ok=True)
        folder = self.store.folder(path)
        written = 0
        by_name: dict[str, Record] = {}
        shared: list[Path] = []
        for name, record, data in records:
            original = path / name
            original.write_bytes(data)
            os.utime(original, ns=(record["mtime_ns"], record["mtime_ns"]))
            record["metadata"]["raw"] = _raw_dump(record)
            folder.write(record)
            self._link_thumbs(folder, record, shared)
            by_name[name] = record
            written += folder.record_path(name).stat().st_size
        if self.model_id is not None:
            ann.load_or_rebuild(folder, by_name, self.model_id, self.dim)
        return written

    def _link_thumbs(self, folder: FolderStore, record: Record, shared: list[Path]) -> None:
        """Each named thumbnail is a hard link to the folder's first one (links per inode are limited)."""
        for file_name in record["thumbs"].values():
            target = folder.asset_path(file_name)
            if target.exists():
                continue
            if not shared:
                folder.write_asset(file_name, self.thumb)
                shared.append(target)
            else:
                os.link(shared[0], target)
        preview = (record.get("preview") or {}).get("webm")
        if preview:
            folder.write_asset(preview, b"\x1a\x45\xdf\xa3 synthetic preview", "previews")


def _tiny_webp() -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", _THUMB_SIZE, (90, 120, 160)).save(buffer, "WEBP", quality=50)
    return buffer.getvalue()


def _tiny_jpeg() -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (16, 12), (200, 150, 100)).save(buffer, "JPEG", quality=60)
    return buffer.getvalue()


def _media(video: bool, size: tuple[int, int], rng: np.random.Generator) -> dict[str, Any]:
    width, height = size if rng.random() < 0.7 else size[::-1]
    if video:
        duration = round(float(rng.uniform(3, 60)), 3)
        return {"kind": "video", "format": "MP4", "mime": "video/mp4", "width": 1920,
                "height": 1080, "frames": int(duration * 30), "duration": duration}
    return {"kind": "image", "format": "JPEG", "mime": "image/jpeg", "width": width,
            "height": height, "frames": 1, "duration": None}


def _metadata(when: datetime, make: str, model: str, lens: str | None, size: tuple[int, int],
              event: Event, has_gps: bool, rng: np.random.Generator, video: bool) -> dict[str, Any]:
    gps = None
    if has_gps and rng.random() < 0.9:
        lat = event.position[0] + float(rng.normal(0, 0.01))
        lon = event.position[1] + float(rng.normal(0, 0.01))
        gps = {"lat": round(lat, 7), "lon": round(lon, 7), "alt": round(float(rng.uniform(0, 300)), 1)}
    local = when.isoformat(timespec="seconds")
    return {"taken_local": None if video else local, "taken_tag": "ExifIFD:DateTimeOriginal",
            "offset": None, "taken_utc": _utc_text(when, event.zone) if video else None,
            "gps_utc": None, "gps": gps, "make": make, "model": model, "lens": lens,
            "width": size[0], "height": size[1], "orientation": 1,
            "duration": None, "source": "exiftool"}


def _utc_text(when: datetime, zone: str | None) -> str:
    from zoneinfo import ZoneInfo

    aware = when.replace(tzinfo=ZoneInfo(zone or "UTC"))
    return aware.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _hashes(rng: np.random.Generator, base: Record | None, burst: bool) -> dict[str, Any]:
    def bits(count: int) -> np.ndarray:
        return rng.random(count) < 0.5

    if base is None:
        fine_p, fine_d, coarse_p, coarse_d = bits(256), bits(256), bits(64), bits(64)
    else:
        found = base["hashes"]
        fine_p, fine_d = _bits(found["phash"]), _bits(found["dhash"])
        coarse_p, coarse_d = _bits(found["phash8"]), _bits(found["dhash8"])
        flips = (int(rng.integers(18, 30)), int(rng.integers(2, 8))) if burst else \
            (int(rng.integers(0, 12)), int(rng.integers(0, 3)))
        for array, count in ((fine_p, flips[0]), (fine_d, flips[0]), (coarse_p, flips[1]),
                             (coarse_d, flips[1])):
            array[rng.choice(array.size, count, replace=False)] ^= True
    out: dict[str, Any] = {"phash": _hex(fine_p), "dhash": _hex(fine_d), "phash8": _hex(coarse_p),
                           "dhash8": _hex(coarse_d),
                           "detail": round(float(rng.uniform(4, 30)), 2)}
    if base is not None:
        out["_copy"] = True  # a marker for add_vectors; removed there
    return out


def _bits(text: str) -> np.ndarray:
    return np.unpackbits(np.frombuffer(bytes.fromhex(text), np.uint8)).astype(bool)


def _hex(bits: np.ndarray) -> str:
    return np.packbits(bits).tobytes().hex()


def _quality(size: tuple[int, int], rng: np.random.Generator) -> dict[str, Any]:
    sharp = float(rng.lognormal(6, 1))
    brightness = float(rng.uniform(0.2, 0.8))
    return {"sharpness": round(sharp, 2), "focus": round(sharp * 1.8, 2),
            "brightness": round(brightness, 4), "contrast": round(float(rng.uniform(0.1, 0.3)), 4),
            "clipped_high": round(float(rng.uniform(0, 0.03)), 4), "clipped_low": 0.0,
            "exposure": round(float(rng.uniform(0.7, 1.0)), 4), "width": size[0], "height": size[1]}


def _raw_dump(record: Record) -> dict[str, Any]:
    """About the size and shape of exiftool's dump for a camera JPEG (~60 tags)."""
    meta = record["metadata"]
    clock = (meta["taken_local"] or meta["taken_utc"] or "")[:19].replace("-", ":").replace("T", " ")
    raw: dict[str, Any] = {
        "File:FileType": "JPEG", "File:FileTypeExtension": "jpg", "File:MIMEType": "image/jpeg",
        "File:ExifByteOrder": "Little-endian (Intel, II)", "File:ImageWidth": meta["width"],
        "File:ImageHeight": meta["height"], "File:EncodingProcess": "Baseline DCT, Huffman coding",
        "File:BitsPerSample": 8, "File:ColorComponents": 3,
        "File:YCbCrSubSampling": "YCbCr4:2:0 (2 2)", "IFD0:Make": meta["make"],
        "IFD0:Model": meta["model"], "IFD0:Orientation": 1, "IFD0:XResolution": 72,
        "IFD0:YResolution": 72, "IFD0:ResolutionUnit": "inches", "IFD0:Software": "17.1.1",
        "IFD0:ModifyDate": clock, "IFD0:YCbCrPositioning": "Centered",
        "ExifIFD:ExposureTime": "1/120", "ExifIFD:FNumber": 1.6, "ExifIFD:ExposureProgram":
        "Program AE", "ExifIFD:ISO": 50, "ExifIFD:ExifVersion": "0232",
        "ExifIFD:DateTimeOriginal": clock, "ExifIFD:CreateDate": clock,
        "ExifIFD:ComponentsConfiguration": "Y, Cb, Cr, -", "ExifIFD:ShutterSpeedValue": "1/120",
        "ExifIFD:ApertureValue": 1.6, "ExifIFD:BrightnessValue": 7.23,
        "ExifIFD:ExposureCompensation": 0, "ExifIFD:MeteringMode": "Multi-segment",
        "ExifIFD:Flash": "Off, Did not fire", "ExifIFD:FocalLength": "5.1 mm",
        "ExifIFD:SubjectArea": "2009 1502 2208 1327", "ExifIFD:SubSecTimeOriginal": "512",
        "ExifIFD:SubSecTimeDigitized": "512", "ExifIFD:FlashpixVersion": "0100",
        "ExifIFD:ColorSpace": "Uncalibrated", "ExifIFD:ExifImageWidth": meta["width"],
        "ExifIFD:ExifImageHeight": meta["height"], "ExifIFD:SensingMethod": "One-chip color area",
        "ExifIFD:SceneType": "Directly photographed", "ExifIFD:ExposureMode": "Auto",
        "ExifIFD:WhiteBalance": "Auto", "ExifIFD:FocalLengthIn35mmFormat": "26 mm",
        "ExifIFD:SceneCaptureType": "Standard", "ExifIFD:LensMake": meta["make"],
        "ExifIFD:LensModel": meta["lens"] or f"{meta['model']} back camera 5.1mm f/1.6",
        "ExifIFD:CompositeImage": "General Composite Image",
        "Composite:Aperture": 1.6, "Composite:ImageSize": f"{meta['width']}x{meta['height']}",
        "Composite:Megapixels": round(meta["width"] * meta["height"] / 1e6, 1),
        "Composite:ShutterSpeed": "1/120", "Composite:FocalLength35efl": "5.1 mm (35 mm equivalent: 26.0 mm)",
        "Composite:LightValue": 8.2, "Composite:SubSecDateTimeOriginal": clock + ".512",
    }
    gps = meta.get("gps")
    if gps:
        raw.update({"GPS:GPSLatitudeRef": "North" if gps["lat"] >= 0 else "South",
                    "GPS:GPSLatitude": abs(gps["lat"]), "GPS:GPSLongitudeRef":
                    "East" if gps["lon"] >= 0 else "West", "GPS:GPSLongitude": abs(gps["lon"]),
                    "GPS:GPSAltitudeRef": "Above Sea Level", "GPS:GPSAltitude": gps["alt"],
                    "Composite:GPSPosition": f"{gps['lat']} {gps['lon']}"})
    return raw


# -- the whole library ---------------------------------------------------------------------
def generate(root: Path, spec: Spec, settings: Settings, concepts: Concepts | None = None,
             progress: Callable[[str], None] | None = None) -> Summary:
    """Write a library of ``spec.count`` files under ``root``; see the module docstring."""
    started = time.monotonic()
    model_id, dim = _clip_identity(settings, concepts)
    if model_id is not None and concepts is None:
        concepts = Concepts.random(dim, spec.seed)
    writer = Writer(root, spec, settings, concepts, model_id, dim)
    events = plan_events(spec)
    folders = [writer.records(event, i) for i, event in enumerate(events)]
    for index, files in enumerate(folders):
        writer.add_vectors(files, index)
    _copy_exact(folders, spec)
    samples = [f"{e.rel}/{next(n for n, r, _ in f if r['media']['kind'] == 'image')}"
               for e, f in list(zip(events, folders, strict=True))[:: max(1, len(events) // 64)]
               if any(r["media"]["kind"] == "image" for _, r, _ in f)]
    _infer_taken(events, folders, settings)
    if progress is not None:
        progress(f"{len(events)} folders planned in {time.monotonic() - started:.1f} s")
    summary = Summary(count=sum(len(f) for f in folders), folders=len(events))
    root.mkdir(parents=True, exist_ok=True)

    def one(index: int) -> int:
        size = writer.write_folder(events[index], folders[index])
        folders[index] = []  # let the written records go
        return size

    with ThreadPoolExecutor(max_workers=max(1, spec.workers)) as pool:
        for done, size in enumerate(pool.map(one, range(len(events))), 1):
            summary.bytes_records += size
            if progress is not None and done % 200 == 0:
                progress(f"{done}/{len(events)} folders written ({time.monotonic() - started:.0f} s)")
    summary.samples = samples
    summary.seconds = time.monotonic() - started
    _write_manifest(root, spec, summary, model_id, concepts)
    return summary


def _clip_identity(settings: Settings, concepts: Concepts | None) -> tuple[str | None, int]:
    if not settings.clip.enabled:
        return None, 0
    from scanpixd.models.clip import ClipModel

    model_id = ClipModel(settings.clip).model_id  # hashes the checkpoint; loads nothing
    if concepts is not None:
        return model_id, int(concepts.directions.shape[1])
    import open_clip

    name = settings.clip.model
    config = open_clip.get_model_config(name) if not name.endswith(".json") else \
        orjson.loads(Path(name).read_bytes())
    return model_id, int((config or {}).get("embed_dim", 512))


def _copy_exact(folders: list[list[tuple[str, Record, bytes]]], spec: Spec) -> None:
    """Byte-for-byte copies of some photos, into the next folder (same content, same record)."""
    rng = np.random.default_rng(spec.seed + 2)
    for index in range(len(folders) - 1):
        source, target = folders[index], folders[index + 1]
        for k in np.flatnonzero(rng.random(len(source)) < spec.exact_share):
            name, record, data = source[int(k)]
            if record["media"]["kind"] != "image" or not target:
                continue
            slot = int(rng.integers(len(target)))
            copy = orjson.loads(orjson.dumps(record))
            copy["name"] = target[slot][0]
            copy["mtime_ns"] = target[slot][1]["mtime_ns"]
            target[slot] = (target[slot][0], copy, data)


def _infer_taken(events: list[Event], folders: list[list[tuple[str, Record, bytes]]],
                 settings: Settings) -> None:
    """What the library-wide time pass would write, so the daemon's first pass changes nothing."""
    items = [(f"{event.rel}/{name}", record) for event, files in zip(events, folders, strict=True)
             for name, record, _ in files]
    by_key = dict(items)
    for key, taken in infer_times(items, settings).items():
        by_key[key]["taken"] = taken


def _write_manifest(root: Path, spec: Spec, summary: Summary, model_id: str | None,
                    concepts: Concepts | None) -> None:
    manifest = {"count": summary.count, "folders": summary.folders, "seed": spec.seed,
                "per_folder": spec.per_folder, "model": model_id,
                "concepts": list(concepts.words) if concepts is not None else [],
                "samples": summary.samples, "seconds": round(summary.seconds, 1)}
    (root / MANIFEST).write_bytes(orjson.dumps(manifest, option=orjson.OPT_INDENT_2))


def read_manifest(root: Path) -> dict[str, Any] | None:
    try:
        found = orjson.loads((root / MANIFEST).read_bytes())
    except (OSError, orjson.JSONDecodeError):
        return None
    return found if isinstance(found, dict) else None


# -- CLIP weights and concepts -------------------------------------------------------------
def default_checkpoint(arch: str = "ViT-B-32") -> Path:
    base = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return base / "scanpix-bench" / f"{arch.lower()}-random-0.pt"


def build_checkpoint(path: Path, arch: str = "ViT-B-32", seed: int = 0) -> Path:
    """Random weights of a real architecture saved as a local checkpoint (no model hub here).

    Its id is the file's content hash, and its compute and memory are those of the real
    model, which is what scale figures need; only the answers are meaningless.
    """
    if path.is_file():
        return path
    import open_clip
    import torch

    torch.manual_seed(seed)
    model = open_clip.create_model(arch)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".part")
    torch.save(model.state_dict(), tmp)
    os.replace(tmp, path)
    return path


def clip_settings(settings: Settings, checkpoint: Path, arch: str = "ViT-B-32") -> Settings:
    """``settings`` with CLIP on, loading ``arch`` from the local ``checkpoint``."""
    settings.clip.enabled = True
    settings.clip.model = arch
    settings.clip.pretrained = str(checkpoint)
    settings.clip.download = False
    return settings


def embed_concepts(settings: Settings, words: Sequence[str] = CONCEPTS) -> Concepts:
    """Concept directions from the configured model's own text embeddings (loads the model)."""
    from scanpixd.models.clip import ClipModel

    model = ClipModel(settings.clip)
    try:
        return Concepts.from_embeddings(words, model.embed_text(list(words)))
    finally:
        model.unload()


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.synth", description=__doc__.split("\n")[0])
    parser.add_argument("root", type=Path, help="library root to write (created; must be empty)")
    parser.add_argument("--count", type=int, default=100_000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--per-folder", type=int, default=FILES_PER_FOLDER)
    parser.add_argument("--checkpoint", type=Path, default=None,
                        help="ViT-B-32 weights the vectors claim (default: random weights, built once "
                             f"at {default_checkpoint()})")
    parser.add_argument("--no-clip", action="store_true", help="records without CLIP vectors")
    parser.add_argument("--random-concepts", action="store_true",
                        help="do not load the model to embed the concept words")
    parser.add_argument("--workers", type=int, default=16)
    args = parser.parse_args(argv)
    if args.root.exists() and any(args.root.iterdir()):
        parser.error(f"{args.root} is not empty")
    settings = Settings()
    concepts = None
    if args.no_clip:
        settings.clip.enabled = False
    else:
        checkpoint = build_checkpoint(args.checkpoint or default_checkpoint())
        clip_settings(settings, checkpoint)
        if not args.random_concepts:
            concepts = embed_concepts(settings)
    spec = Spec(args.count, seed=args.seed, per_folder=args.per_folder, workers=args.workers)
    summary = generate(args.root, spec, settings, concepts,
                       progress=lambda message: print(f"  {message}", flush=True))
    print(f"{summary.count} files in {summary.folders} folders under {args.root} in "
          f"{summary.seconds:.1f} s ({summary.count / max(summary.seconds, 1e-9):.0f} files/s; "
          f"records {summary.bytes_records / 1e6:.0f} MB)")


if __name__ == "__main__":
    main()

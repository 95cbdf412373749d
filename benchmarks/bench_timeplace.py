"""Time inference over a 100k-item library, and offline geocoding throughput.

Run ``python -m benchmarks.bench_timeplace``.  The library calls ``infer_times`` with every
item on each pass, so a pass must stay in the order of a second for 100k items.  Figures are
printed beside plain references measured in the same run (this machine is shared and noisy):

- a pass of ``infer_times`` against a bare loop that only parses each clock time, subtracts
  a fixed offset and formats the result (the least any inference must do per item);
- reverse geocoding (``geo.reverse_many``) against the ``reverse-geocode`` package's own
  ``search()`` on the same points (same data, raw-degree tree).
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

from scanpixd import geo
from scanpixd.config import Settings
from scanpixd.record import Record
from scanpixd.timeinfer import infer_times

ITEMS = 100_000
TRIPS = [  # (lat, lon) of places a library's trips went to
    (43.47, 11.88), (41.90, 12.50), (48.86, 2.35), (40.71, -74.01), (35.68, 139.69),
    (-33.87, 151.21), (60.17, 24.94), (32.09, 34.86), (51.50, -0.12), (-18.14, 178.44),
]
CAMERAS = [("Apple", "iPhone 13"), ("NIKON", "COOLPIX P6000"), ("Canon", "EOS R"),
           ("samsung", "SM-G935L")]


def synthetic_library(n: int, seed: int = 7) -> list[tuple[str, Record]]:
    """Trips of a few days; phones geotag, cameras mostly do not; a few videos keep UTC."""
    rng = random.Random(seed)
    zones = {trip: geo.timezone_at(*trip) for trip in TRIPS}
    start = datetime(2015, 1, 1)
    items: list[tuple[str, Record]] = []
    while len(items) < n:
        trip = rng.choice(TRIPS)
        start += timedelta(days=rng.uniform(5, 40))
        for _ in range(min(rng.randint(50, 600), n - len(items))):
            when = start + timedelta(seconds=rng.uniform(0, 5 * 86400))
            make, model = rng.choice(CAMERAS)
            meta: dict[str, Any] = {"taken_local": when.isoformat(timespec="seconds"),
                                    "offset": None, "taken_utc": None, "gps": None,
                                    "make": make, "model": model}
            record: Record = {"metadata": meta}
            roll = rng.random()
            if make in ("Apple", "samsung") and roll < 0.8:
                lat, lon = trip[0] + rng.gauss(0, 0.05), trip[1] + rng.gauss(0, 0.05)
                meta["gps"] = {"lat": lat, "lon": lon, "alt": None}
                record["place"] = {"timezone": zones[trip]}  # as the place stage leaves it
                if roll < 0.3:
                    meta["offset"] = "+02:00"
            elif roll > 0.95:
                meta["taken_local"] = None
                meta["taken_utc"] = (when - timedelta(hours=2)).isoformat() + "Z"
            items.append((f"album{len(items) // 500:04d}/IMG_{len(items):06d}.jpg", record))
    return items


def bare_loop(items: list[tuple[str, Record]]) -> dict[str, dict]:
    """The reference: parse, subtract a fixed offset, format; no zones, no neighbours."""
    out = {}
    offset = timedelta(hours=2)
    for key, record in items:
        text = record["metadata"]["taken_local"]
        if text:
            local = datetime.fromisoformat(text)
            out[key] = {"local": text, "utc": (local - offset).isoformat() + "Z",
                        "timezone": "UTC+02:00", "offset": "+02:00", "source": "offset-tag"}
    return out


def timed(fn: Callable[[], Any], repeat: int = 3) -> tuple[float, Any]:
    best, result = float("inf"), None
    for _ in range(repeat):
        t0 = time.perf_counter()
        result = fn()
        best = min(best, time.perf_counter() - t0)
    return best, result


def bench_infer() -> None:
    settings = Settings()
    settings.time.home_timezone = "Europe/Rome"
    items = synthetic_library(ITEMS)
    ref, _ = timed(lambda: bare_loop(items))
    first, changes = timed(lambda: infer_times(items, settings))
    sources: dict[str, int] = {}
    for key, record in items:
        record["taken"] = changes[key]
        sources[changes[key]["source"]] = sources.get(changes[key]["source"], 0) + 1
    again, unchanged = timed(lambda: infer_times(items, settings))
    for _, record in items:
        record.pop("place", None)  # the zone looked up now for every geotagged item
    cold, _ = timed(lambda: infer_times(items, settings), repeat=1)
    print(f"infer_times, {len(items)} items  sources: {sources}")
    print(f"  bare loop (reference)          {ref:7.3f} s")
    print(f"  first pass (all change)        {first:7.3f} s   {first / ref:5.1f}x reference")
    print(f"  next pass ({len(unchanged)} changes)          {again:7.3f} s   "
          f"{again / ref:5.1f}x reference")
    print(f"  without the place stage zones  {cold:7.3f} s   {cold / ref:5.1f}x reference")


def bench_geocode() -> None:
    rng = random.Random(3)
    points = [(rng.uniform(-60, 70), rng.uniform(-180, 180)) for _ in range(100_000)]
    import orjson  # noqa: F401  (imports out of both load timings)
    import reverse_geocode
    import scipy.spatial  # noqa: F401

    t0 = time.perf_counter()
    geo.reverse(0.0, 10.0)
    load = time.perf_counter() - t0
    ours, _ = timed(lambda: geo.reverse_many(points))
    single, _ = timed(lambda: [geo.reverse(*p) for p in points[:5000]], repeat=1)
    t0 = time.perf_counter()
    reverse_geocode.get((0.0, 10.0))
    their_load = time.perf_counter() - t0
    theirs, _ = timed(lambda: reverse_geocode.search(points))
    tz, _ = timed(lambda: [geo.timezone_at(*p) for p in points[:20000]], repeat=1)
    t0 = time.perf_counter()
    geo.resolve_place("Arezzo")
    forward = time.perf_counter() - t0
    cached, _ = timed(lambda: [geo.resolve_place("Arezzo") for _ in range(10000)], repeat=1)
    print(f"reverse geocoding, {len(points)} random points")
    print(f"  gazetteer load                 {load:7.3f} s   (reverse-geocode's own: "
          f"{their_load:.3f} s)")
    print(f"  reverse_many                   {len(points) / ours:9.0f} points/s   "
          f"{theirs / ours:4.2f}x reverse_geocode.search ({len(points) / theirs:.0f}/s)")
    print(f"  reverse, one at a time         {5000 / single:9.0f} points/s")
    print(f"  timezone_at                    {20000 / tz:9.0f} points/s")
    print(f"  resolve_place: first {forward:.3f} s (builds the name index), "
          f"then {cached / 10000 * 1e6:.1f} µs")


def main() -> None:
    bench_infer()
    bench_geocode()
    print(f"(run at {datetime.now(UTC):%Y-%m-%d %H:%M} UTC)")


if __name__ == "__main__":
    main()

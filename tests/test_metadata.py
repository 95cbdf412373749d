"""The metadata stage on real files: camera and phone JPEGs, videos, raw stubs, broken
EXIF, tags written here with exiftool, and the Pillow fallback without exiftool."""

from __future__ import annotations

import logging
import shutil
import time
from pathlib import Path
from typing import Any

import orjson
import pytest
from PIL import Image

from scanpixd.config import Settings
from scanpixd.pipeline.base import run_stage
from scanpixd.pipeline.exiftool import ExifToolService
from scanpixd.pipeline.metadata import MetadataStage, normalise, pillow_dump
from scanpixd.pipeline.services import Services
from tests.helpers_metadata import (
    RAW_STUBS,
    make_job,
    make_jpeg,
    malformed_files,
    reference_degrees,
    reference_dump,
    running_service,
    write_tags,
)

FIELDS = {"taken_local", "taken_tag", "offset", "taken_utc", "gps_utc", "gps", "make", "model",
          "lens", "width", "height", "orientation", "duration", "source", "raw"}


@pytest.fixture
def services(settings: Settings) -> Any:
    services = Services(settings)
    yield services
    services.close()


@pytest.fixture(scope="module")
def exiftool() -> Any:
    with running_service() as service:
        yield service


def read(service: ExifToolService, paths: list[Path]) -> dict[Path, dict[str, Any]]:
    return {p: normalise(d, "exiftool") for p, d in service.metadata(paths).items()}


def without_source(meta: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in meta.items() if k not in ("source", "taken_tag", "raw")}


def test_gps_series_without_offset(exiftool: ExifToolService, corpora: Path) -> None:
    files = sorted((corpora / "exif-samples/jpg/gps").glob("DSCN00*.jpg"))
    assert len(files) == 9
    for path, meta in read(exiftool, files).items():
        assert set(meta) == FIELDS
        assert meta["taken_local"].startswith("2008-10-22T1"), path
        assert meta["offset"] is None and meta["taken_utc"] is None
        assert meta["gps"]["lat"] == pytest.approx(43.467, abs=0.01)
        assert meta["gps"]["lon"] == pytest.approx(11.885, abs=0.01)
        assert (meta["make"], meta["model"]) == ("NIKON", "COOLPIX P6000")
        assert meta["source"] == "exiftool"
    first = read(exiftool, [files[0]])[files[0]]
    assert first["taken_local"] == "2008-10-22T16:28:39"
    assert first["gps_utc"] == "2008-10-23T14:27:07Z"  # the camera's GPS clock, not its own


def test_phone_photo_with_offset(exiftool: ExifToolService, corpora: Path) -> None:
    path = corpora / "exif-samples/jpg/mobile/HMD_Nokia_8.3_5G.jpg"
    meta = read(exiftool, [path])[path]
    assert meta["taken_local"] == "2022-08-14T14:12:31"
    assert meta["offset"] == "+03:00"
    assert meta["gps"] == {"lat": pytest.approx(60.1467056), "lon": pytest.approx(24.9067722),
                           "alt": None}
    assert (meta["make"], meta["model"]) == ("HMD Global", "Nokia 8.3 5G")
    assert (meta["width"], meta["height"], meta["orientation"]) == (4608, 1976, 1)


def test_agrees_with_metadata_extractor_reference_dumps(exiftool: ExifToolService,
                                                        corpora: Path) -> None:
    folder = corpora / "metadata-extractor-images/jpg"
    refs = {folder / t.name.removesuffix(".txt"): reference_dump(t)
            for t in sorted((folder / "metadata/java").glob("*.jpg.txt"))}
    assert len(refs) >= 35
    metas = read(exiftool, list(refs))
    checked = {"make": 0, "taken": 0, "gps": 0, "null island": 0}
    for path, ref in refs.items():
        meta = metas[path]
        if ref.get("[Exif IFD0] Make", "").strip():
            assert meta["make"] == " ".join(ref["[Exif IFD0] Make"].split()), path
            checked["make"] += 1
        original = ref.get("[Exif SubIFD] Date/Time Original")
        if original and original[:4].isdigit():
            assert meta["taken_local"][:19] == original.replace(":", "-", 2).replace(" ", "T"), path
            checked["taken"] += 1
        lat = reference_degrees(ref.get("[GPS] GPS Latitude"), ref.get("[GPS] GPS Latitude Ref"))
        lon = reference_degrees(ref.get("[GPS] GPS Longitude"), ref.get("[GPS] GPS Longitude Ref"))
        if lat is None or lon is None:
            continue
        if lat == 0 and lon == 0:
            assert meta["gps"] is None, path  # "null island": the camera had no fix
            checked["null island"] += 1
        else:
            assert meta["gps"]["lat"] == pytest.approx(lat, abs=1e-4), path
            assert meta["gps"]["lon"] == pytest.approx(lon, abs=1e-4), path
            checked["gps"] += 1
    assert checked["make"] >= 35 and checked["taken"] >= 30
    assert checked["gps"] >= 18 and checked["null island"] >= 3


def test_quicktime_video_with_offset_and_gps(exiftool: ExifToolService, corpora: Path) -> None:
    path = corpora / "metadata-extractor-images/mov/with-gps.mov"
    meta = read(exiftool, [path])[path]
    assert meta["taken_local"] == "2019-07-24T11:25:40"
    assert meta["taken_tag"] == "Keys:CreationDate"
    assert meta["offset"] == "+03:00"
    assert meta["taken_utc"] == "2019-07-24T08:25:57Z"  # QuickTime's own, stored in UTC
    assert meta["gps"] == {"lat": 32.0929, "lon": 34.862, "alt": 28.52}
    assert (meta["make"], meta["model"]) == ("Apple", "iPhone 6")
    assert meta["duration"] == pytest.approx(4.0, abs=0.01)
    assert (meta["width"], meta["height"], meta["orientation"]) == (568, 320, 6)


def test_videos_without_local_time_keep_utc(exiftool: ExifToolService, corpora: Path) -> None:
    paths = [corpora / "metadata-extractor-images/mp4/with-gps.mp4",
             corpora / "exiftool/t/images/Matroska.mkv"]
    metas = read(exiftool, paths)
    mp4, mkv = (metas[p] for p in paths)
    assert mp4["taken_local"] is None and mp4["taken_utc"] == "2017-02-22T08:20:28Z"
    assert mp4["gps"]["lat"] == pytest.approx(51.4169)
    assert mkv["taken_utc"] == "2010-02-03T21:17:48Z" and mkv["duration"] == 148.608


def test_raw_stubs(exiftool: ExifToolService, corpora: Path) -> None:
    paths = [corpora / "exiftool/t/images" / name for name in RAW_STUBS]
    metas = read(exiftool, paths)
    for path in paths:
        meta = metas[path]
        assert meta["make"], path
        assert meta["taken_local"] or meta["taken_utc"], path
    nef = metas[corpora / "exiftool/t/images/Nikon.nef"]
    assert (nef["model"], nef["taken_local"]) == ("NIKON D70", "2004-06-09T16:02:35")
    assert nef["lens"] == "AF-S DX Zoom-Nikkor 18-70mm f/3.5-4.5G IF-ED"
    cr3 = metas[corpora / "exiftool/t/images/CanonRaw.cr3"]
    assert cr3["lens"] == "EF-M15-45mm f/3.5-6.3 IS STM"
    assert cr3["taken_local"] == "2018-02-21T12:08:56.210000"


def test_heif_orientation_comes_from_irot(exiftool: ExifToolService, corpora: Path) -> None:
    nokia = corpora / "exif-samples/heic/mobile/HMD_Nokia_8.3_5G.heif"  # EXIF says 1, irot 270
    iphone = corpora / "exif-samples/heic/mobile/iphone_13_pro_max.HEIC"
    metas = read(exiftool, [nokia, iphone])
    assert metas[nokia]["orientation"] == 6
    assert metas[iphone]["orientation"] == 6
    assert metas[iphone]["offset"] == "+01:00"


def test_pillow_test_images_with_invalid_exif_and_gps(exiftool: ExifToolService,
                                                      corpora: Path) -> None:
    folder = corpora / "Pillow/Tests/images"
    names = ["exif_gps.jpg", "exif_gps_typeerror.jpg", "empty_gps_ifd.jpg", "invalid-exif.jpg",
             "hopper_bad_exif.jpg", "broken_exif_dpi.jpg", "exif-dpi-zerodivision.jpg",
             "invalid-exif-without-x-resolution.jpg", "truncated_exif_dpi.jpg"]
    paths = [folder / n for n in names]
    metas = read(exiftool, paths)
    for path in paths:
        assert metas[path]["gps"] is None, path  # exif_gps.jpg claims latitude 4294967295
        fallback = normalise(pillow_dump(path), "pillow")
        assert fallback["gps"] is None and set(fallback) == FIELDS


def test_malformed_exif_never_hangs_or_crashes(corpora: Path, services: Services,
                                               settings: Settings) -> None:
    files = malformed_files(corpora)
    stage = MetadataStage(services)
    started = time.monotonic()
    dumps = services.exiftool.metadata(files)
    for path in files:
        job = make_job(path, settings, metadata=dumps[path])
        assert run_stage(stage, job), job.record["errors"]
        orjson.dumps(job.record["metadata"])
        normalise(pillow_dump(path), "pillow")
    assert time.monotonic() - started < 60


def test_tags_written_with_exiftool(exiftool: ExifToolService, tmp_path: Path) -> None:
    path = make_jpeg(tmp_path / "south-west.jpg")
    write_tags(path, "-DateTimeOriginal=2021:06:01 10:00:00", "-SubSecTimeOriginal=123",
               "-OffsetTimeOriginal=-05:00", "-GPSLatitude=33.5", "-GPSLatitudeRef=S",
               "-GPSLongitude=70.25", "-GPSLongitudeRef=W", "-GPSAltitude=12",
               "-GPSAltitudeRef#=1", "-Make=Test Camera", "-Model=T1000",
               "-LensModel=Fixed 35mm f/2", "-Orientation#=8")
    meta = read(exiftool, [path])[path]
    assert meta["taken_local"] == "2021-06-01T10:00:00.123000"
    assert meta["offset"] == "-05:00"
    assert meta["gps"] == {"lat": -33.5, "lon": -70.25, "alt": -12.0}
    assert (meta["make"], meta["model"], meta["lens"]) == ("Test Camera", "T1000",
                                                           "Fixed 35mm f/2")
    assert meta["orientation"] == 8
    fallback = normalise(pillow_dump(path), "pillow")
    assert without_source(fallback) == without_source(meta)


def test_capture_time_stated_in_utc(exiftool: ExifToolService, tmp_path: Path) -> None:
    path = make_jpeg(tmp_path / "xmp-utc.jpg")
    write_tags(path, "-ModifyDate=2013:07:07 17:20:59",
               "-XMP-exif:DateTimeOriginal=2013:07:05 03:18:27Z")
    meta = read(exiftool, [path])[path]
    assert meta["taken_local"] is None  # not the later ModifyDate
    assert meta["taken_utc"] == "2013-07-05T03:18:27Z"
    assert meta["taken_tag"] == "XMP-exif:DateTimeOriginal"


def test_quicktime_tags_written_with_exiftool(exiftool: ExifToolService, corpora: Path,
                                              tmp_path: Path) -> None:
    path = tmp_path / "clip.mov"
    shutil.copy(corpora / "metadata-extractor-images/mov/with-gps.mov", path)
    epoch = "1904:01:01 00:00:00"  # QuickTime's zero: the date was never set
    write_tags(path, "-Keys:CreationDate=2020:01:02 03:04:05-08:00",
               f"-QuickTime:CreateDate={epoch}", f"-TrackCreateDate={epoch}",
               f"-MediaCreateDate={epoch}")
    meta = read(exiftool, [path])[path]
    assert (meta["taken_local"], meta["offset"]) == ("2020-01-02T03:04:05", "-08:00")
    assert meta["taken_utc"] is None
    assert meta["gps"]["lat"] == pytest.approx(32.0929)


def test_nonsense_gps_is_dropped(exiftool: ExifToolService, tmp_path: Path) -> None:
    def tagged(name: str, gps: dict[int, Any]) -> Path:
        exif = Image.Exif()
        exif[0x8825] = gps
        path = tmp_path / name
        Image.new("RGB", (32, 32)).save(path, exif=exif)
        return path

    seconds = tagged("seconds.jpg",
                     {1: "N", 2: (12.0, 30.0, 595404.0), 3: "E", 4: (10.0, 0.0, 0.0)})
    island = tagged("island.jpg", {1: "N", 2: (0.0, 0.0, 0.0), 3: "E", 4: (0.0, 0.0, 0.0)})
    fine = tagged("fine.jpg", {1: "S", 2: (12.0, 30.0, 36.0), 3: "W", 4: (10.0, 15.0, 0.0)})
    metas = read(exiftool, [seconds, island, fine])
    for path in (seconds, island):
        assert metas[path]["gps"] is None
        assert normalise(pillow_dump(path), "pillow")["gps"] is None
    expected = {"lat": -12.51, "lon": -10.25, "alt": None}
    assert metas[fine]["gps"] == expected
    assert normalise(pillow_dump(fine), "pillow")["gps"] == expected
    lon_only = tagged("lon.jpg",
                      {1: "N", 2: (12.0, 0.0, 0.0), 3: "E", 4: (10.0, 20.0, 595404.0)})
    assert normalise(pillow_dump(lon_only), "pillow")["gps"] is None


def test_raw_dump_is_compact_and_portable(exiftool: ExifToolService, corpora: Path) -> None:
    paths = [corpora / "exiftool/t/images/CanonRaw.cr3", corpora / "exiftool/t/images/Nikon.nef",
             corpora / "exif-samples/jpg/gps/DSCN0010.jpg"]
    for path, meta in read(exiftool, paths).items():
        raw = meta["raw"]
        text = orjson.dumps(raw).decode()
        assert len(text) < 50_000
        assert str(path.parent) not in text and "SourceFile" not in raw
        assert not any(k.startswith(("System:", "ExifTool:ExifToolVersion")) for k in raw)
        assert "Binary data" not in text
        assert all(len(v) <= 256 for v in raw.values() if isinstance(v, str))
    assert read(exiftool, [paths[2]])[paths[2]]["raw"]["IFD0:Make"] == "NIKON"


def test_stage_prefers_the_prefetched_dump(tmp_path: Path, settings: Settings) -> None:
    settings.exiftool.path = str(tmp_path / "no-exiftool-here")
    services = Services(settings)
    path = make_jpeg(tmp_path / "a.jpg")
    dump = {"IFD0:Make": "Prefetched", "ExifIFD:DateTimeOriginal": "2020:02:02 02:02:02"}
    job = make_job(path, settings, metadata=dump)
    assert run_stage(MetadataStage(services), job)
    meta = job.record["metadata"]
    assert (meta["make"], meta["taken_local"], meta["source"]) == \
        ("Prefetched", "2020-02-02T02:02:02", "exiftool")


def test_stage_fetches_one_file_itself(corpora: Path, settings: Settings,
                                       services: Services) -> None:
    path = corpora / "exif-samples/jpg/mobile/HMD_Nokia_8.3_5G.jpg"
    job = make_job(path, settings)
    assert run_stage(MetadataStage(services), job)
    assert job.record["metadata"]["offset"] == "+03:00"
    assert job.record["stages"]["metadata"] == MetadataStage.version


def test_stage_records_an_exiftool_failure(tmp_path: Path, settings: Settings,
                                           services: Services) -> None:
    path = make_jpeg(tmp_path / "a.jpg")
    job = make_job(path, settings, metadata={"error": "exiftool timed out after 30 s reading "
                                                      "this file"})
    assert not run_stage(MetadataStage(services), job)
    assert job.record["errors"]["metadata"] == "exiftool: exiftool timed out after 30 s " \
                                               "reading this file"
    assert job.record["status"] == "ok"


def test_pillow_fallback_without_exiftool(exiftool: ExifToolService, corpora: Path,
                                          tmp_path: Path, settings: Settings,
                                          caplog: pytest.LogCaptureFixture) -> None:
    photos = [corpora / "exif-samples/jpg/mobile/HMD_Nokia_8.3_5G.jpg",
              *sorted((corpora / "exif-samples/jpg/gps").glob("DSCN00*.jpg"))[:3],
              corpora / "exiftool/t/images/Google.jpg"]
    expected = read(exiftool, photos)
    settings.exiftool.path = str(tmp_path / "no-exiftool-here")
    services = Services(settings)
    assert not services.exiftool.available
    stage = MetadataStage(services)
    with caplog.at_level(logging.WARNING):
        for path in photos:
            job = make_job(path, settings)
            assert run_stage(stage, job)
            meta = job.record["metadata"]
            assert meta["source"] == "pillow"
            assert without_source(meta) == without_source(expected[path]), path
    warnings = [r for r in caplog.records if "Pillow" in r.getMessage()]
    assert len(warnings) == 1


def test_pillow_records_are_read_again_once_exiftool_runs(corpora: Path, tmp_path: Path,
                                                          settings: Settings) -> None:
    path = corpora / "exif-samples/jpg/mobile/HMD_Nokia_8.3_5G.jpg"
    settings.exiftool.path = str(tmp_path / "no-exiftool-here")
    job = make_job(path, settings)
    without = MetadataStage(Services(settings))
    assert run_stage(without, job) and without.is_current(job.record)
    settings.exiftool.path = "exiftool"
    services = Services(settings)
    try:
        with_exiftool = MetadataStage(services)
        assert not with_exiftool.is_current(job.record)
        assert run_stage(with_exiftool, job)
        assert job.record["metadata"]["source"] == "exiftool"
        assert with_exiftool.is_current(job.record)
    finally:
        services.close()

"""The shared exiftool process: batching, odd file names, hostile and missing files,
timeouts, restarts, previews, and that no process outlives its owner."""

from __future__ import annotations

import io
import os
import random
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from PIL import Image

from scanpixd.config import ExiftoolSettings
from scanpixd.pipeline.exiftool import ExifToolError, ExifToolService, ExifToolUnavailable
from tests.helpers_metadata import (
    group_members,
    make_jpeg,
    process_running,
    running_service,
    stalling_exiftool,
    wait_gone,
    write_tags,
)


def test_batch_returns_one_dump_per_path(tmp_path: Path) -> None:
    paths = []
    for i in range(5):
        paths.append(make_jpeg(tmp_path / f"p{i}.jpg", model=f"Cam{i}"))
    with running_service() as service:
        dumps = service.metadata([*paths, paths[0]])
    assert list(dumps) == paths
    assert [d["IFD0:Model"] for d in dumps.values()] == [f"Cam{i}" for i in range(5)]
    assert all("SourceFile" not in d and "error" not in d for d in dumps.values())


def test_numeric_gps_and_orientation_readable_rest(tmp_path: Path) -> None:
    path = make_jpeg(tmp_path / "tagged.jpg")
    write_tags(path, "-GPSLatitude=33.5", "-GPSLatitudeRef=S", "-GPSLongitude=70.25",
               "-GPSLongitudeRef=W", "-Orientation#=6", "-ExposureTime=0.004")
    with running_service() as service:
        dump = service.metadata([path])[path]
    assert dump["Composite:GPSLatitude"] == pytest.approx(-33.5)
    assert dump["Composite:GPSLongitude"] == pytest.approx(-70.25)
    assert dump["IFD0:Orientation"] == 6
    assert dump["ExifIFD:ExposureTime"] == "1/250"  # print conversion kept where unused


def test_names_that_are_not_utf8_or_have_newlines(tmp_path: Path) -> None:
    names = [b"caf\xe9.jpg", b"new\nline.jpg", b"-dash $HOME @x.jpg", "日本 (1).jpg".encode()]
    paths = []
    for i, raw in enumerate(names):
        target = Path(os.fsdecode(os.path.join(os.fsencode(tmp_path), raw)))
        paths.append(make_jpeg(target, model=f"Name{i}"))
    with running_service() as service:
        dumps = service.metadata(paths)
    assert [dumps[p].get("IFD0:Model") for p in paths] == [f"Name{i}" for i in range(len(names))]
    leftovers = list(Path(os.fsdecode(tmp_path)).glob("*"))
    assert len(leftovers) == len(names)  # the stand-in link for the newline name is gone


def test_missing_and_unreadable_files_get_error_entries(tmp_path: Path) -> None:
    good = make_jpeg(tmp_path / "good.jpg")
    junk = tmp_path / "junk.jpg"
    junk.write_bytes(random.Random(1).randbytes(4096))
    fifo = tmp_path / "pipe.jpg"
    os.mkfifo(fifo)
    missing = tmp_path / "missing.jpg"
    with running_service(timeout=10) as service:
        started = time.monotonic()
        dumps = service.metadata([junk, missing, fifo, good])
        assert time.monotonic() - started < 8  # a FIFO named like an image does not block
    assert dumps[junk]["error"] == "File format error"  # not a JPEG after all
    assert dumps[missing]["error"] == "File not found"
    assert dumps[fifo]["error"] == "File not found"
    assert "error" not in dumps[good] and dumps[good]["File:FileType"] == "JPEG"


def test_a_stalled_file_is_isolated_by_the_timeout(tmp_path: Path) -> None:
    before = make_jpeg(tmp_path / "before.jpg", model="before")
    stalled = make_jpeg(tmp_path / "STALLS-HERE.jpg")
    after = [make_jpeg(tmp_path / f"after{i}.jpg", model=f"after{i}") for i in range(3)]
    with running_service(timeout=3, path=str(stalling_exiftool(tmp_path))) as service:
        assert service.available
        first_pid = service.pid
        assert first_pid is not None
        started = time.monotonic()
        dumps = service.metadata([before, stalled, *after])
        elapsed = time.monotonic() - started
        assert "timed out after 3 s" in dumps[stalled]["error"]
        assert [dumps[p]["IFD0:Model"] for p in (before, *after)] == \
            ["before", "after0", "after1", "after2"]
        assert elapsed < 12
        assert group_members(first_pid) == []  # the stalled process group was killed
        assert service.pid not in (None, first_pid)
        with pytest.raises(ExifToolError, match="timed out"):
            service.preview(stalled)


def test_a_file_that_kills_exiftool_is_isolated(tmp_path: Path) -> None:
    good = [make_jpeg(tmp_path / f"good{i}.jpg", model=f"good{i}") for i in range(3)]
    crash = make_jpeg(tmp_path / "CRASHES-HERE.jpg")
    with running_service(timeout=10, path=str(stalling_exiftool(tmp_path))) as service:
        dumps = service.metadata([good[0], crash, good[1], good[2]])
    assert dumps[crash]["error"] == "exiftool exited while reading this file"
    assert [dumps[p]["IFD0:Model"] for p in good] == ["good0", "good1", "good2"]


def test_restarts_after_the_process_is_killed(tmp_path: Path) -> None:
    path = make_jpeg(tmp_path / "a.jpg")
    with running_service() as service:
        assert "error" not in service.metadata([path])[path]
        pid = service.pid
        assert pid is not None
        os.kill(pid, signal.SIGKILL)
        time.sleep(0.2)
        assert "error" not in service.metadata([path])[path]
        assert service.pid not in (None, pid)


def test_close_reaps_the_process_and_the_service_starts_again(tmp_path: Path) -> None:
    path = make_jpeg(tmp_path / "a.jpg")
    service = ExifToolService(ExiftoolSettings())
    service.metadata([path])
    pid = service.pid
    assert pid is not None and process_running(pid)
    service.close()
    assert not Path(f"/proc/{pid}").exists()  # stopped and reaped: no zombie left
    assert "error" not in service.metadata([path])[path]
    service.close()
    service.close()


def test_many_threads_share_one_process(tmp_path: Path) -> None:
    paths = []
    for i in range(12):
        paths.append(make_jpeg(tmp_path / f"t{i}.jpg", model=f"T{i}"))
    results: dict[Path, str] = {}
    errors: list[BaseException] = []
    with running_service() as service:
        def work(chunk: list[Path]) -> None:
            try:
                for path, dump in service.metadata(chunk).items():
                    results[path] = dump["IFD0:Model"]
            except BaseException as exc:  # surfaced below
                errors.append(exc)

        threads = [threading.Thread(target=work, args=(paths[i::4],)) for i in range(4)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(60)
        pid = service.pid
    assert not errors
    assert results == {p: f"T{i}" for i, p in enumerate(paths)}
    assert pid is not None


@pytest.mark.parametrize("path", ["/nonexistent/exiftool", "/bin/true"])
def test_unavailable_exiftool(path: str, tmp_path: Path) -> None:
    image = make_jpeg(tmp_path / "a.jpg")
    with running_service(timeout=5, path=path) as service:
        assert not service.available
        with pytest.raises(ExifToolUnavailable):
            service.metadata([image])
        with pytest.raises(ExifToolUnavailable):
            service.preview(image)


def _exiftool_pid_of_child(code: str) -> tuple[subprocess.Popen[str], int]:
    child = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True,
                             cwd=Path(__file__).resolve().parents[1])
    assert child.stdout is not None
    line = child.stdout.readline()
    return child, int(line)


_START = (
    "import sys, time\n"
    "from scanpixd.config import ExiftoolSettings\n"
    "from scanpixd.pipeline.exiftool import ExifToolService\n"
    "service = ExifToolService(ExiftoolSettings())\n"
    "assert service.available\n"
    "print(service.pid, flush=True)\n"
)


def test_no_exiftool_left_after_interpreter_exit() -> None:
    child, pid = _exiftool_pid_of_child(_START)
    assert child.wait(30) == 0
    assert wait_gone(pid)


def test_no_exiftool_left_after_the_owner_is_killed() -> None:
    child, pid = _exiftool_pid_of_child(_START + "time.sleep(60)\n")
    assert process_running(pid)
    child.kill()
    child.wait(10)
    assert wait_gone(pid)  # exiftool itself would poll its closed input forever


def test_preview_picks_the_largest_embedded_jpeg(corpora: Path) -> None:
    images = corpora / "exiftool" / "t" / "images"
    with running_service() as service:
        raf = service.preview(images / "FujiFilm.raf")
        nef = service.preview(corpora / "imageio-test_images" / "Nikon_uncompressed.nef")
        cr3 = service.preview(images / "CanonRaw.cr3")  # a 28-byte stub, not a JPEG
    assert raf is not None and len(raf) == 12167  # PreviewImage, not the 9362-byte thumbnail
    assert nef is not None and len(nef) == 434630
    with Image.open(io.BytesIO(nef)) as im:
        assert im.format == "JPEG" and im.size == (869, 593)  # the whole scan
    assert cr3 is None


def test_preview_of_a_file_without_one(tmp_path: Path) -> None:
    png = tmp_path / "plain.png"
    Image.new("RGB", (32, 32)).save(png)
    with running_service() as service:
        assert service.preview(png) is None
        assert service.preview(tmp_path / "missing.nef") is None

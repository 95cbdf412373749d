"""Killing the indexer with SIGKILL mid-run loses nothing and never leaves a torn record."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import orjson

from scanpixd.config import load_settings
from scanpixd.store import Store
from tests.helpers_index import make_library, write_config

COUNT = 60


def test_sigkill_mid_run_then_rerun_indexes_each_file_exactly_once(tmp_path, isolated_env):
    lib = tmp_path / "lib"
    files = make_library(lib, COUNT, per_folder=20)
    config = write_config(tmp_path / "config.toml", "jobs = 2")
    env = {**os.environ, **isolated_env}
    cmd = [sys.executable, "-m", "scanpixd", "index", "--json", "--config", str(config), str(lib)]
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    records = lambda: list(lib.rglob(".scanpix/records/*.json"))  # noqa: E731
    deadline = time.monotonic() + 120
    while len(records()) < COUNT // 4 and time.monotonic() < deadline and proc.poll() is None:
        time.sleep(0.02)
    assert proc.poll() is None, "the indexer finished before it could be killed; make the run longer"
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    settings = load_settings(config)
    store = Store(settings)
    done_before = 0
    for f in files:
        record = store.folder(f.parent).read(f.name)
        if record is not None:
            assert record["status"] == "ok" and "thumbs" in record["stages"]
            done_before += 1
    for leftover in lib.rglob(".scanpix/records/*"):
        assert leftover.suffix == ".json" or leftover.name.startswith(".")
        if leftover.suffix == ".json":
            orjson.loads(leftover.read_bytes())  # every visible record parses
    rerun = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert rerun.returncode == 0, rerun.stderr
    summary = orjson.loads(rerun.stdout)
    assert summary["indexed"] + summary["unchanged"] == COUNT
    assert summary["unchanged"] == done_before  # nothing done twice
    assert summary["failed"] == 0
    assert not list(lib.rglob(".scanpix/records/.*"))  # crash leftovers swept
    for f in files:
        assert store.folder(f.parent).read(f.name) is not None

"""Every file of the corpora (hostile ones included) is indexed, failed with a reason, or skipped.

Runs `scanpixd index` as a user would, in cache mode so nothing is written into the corpora.
"""

from __future__ import annotations

import os
from pathlib import Path

import orjson
import pytest

from tests.conftest import run_cli

pytestmark = pytest.mark.slow


def test_the_whole_corpora_index_without_crash_hang_or_traceback(corpora: Path, tmp_path: Path,
                                                                 isolated_env: dict[str, str]) -> None:
    config = tmp_path / "config.toml"
    config.write_text(f'write_mode = "cache"\ncache_dir = "{tmp_path / "cache"}"\n'
                      "[clip]\nenabled = false\n[faces]\nenabled = false\n")
    first = run_cli("scanpixd", "index", "--json", "--config", str(config), str(corpora),
                    env=isolated_env, timeout=900)
    assert first.returncode == 0, first.stderr
    assert "Traceback" not in first.stderr
    summary = orjson.loads(first.stdout)
    records = [orjson.loads(p.read_bytes()) for p in (tmp_path / "cache").rglob("records/*.json")]
    assert summary["indexed"] + summary["failed"] + summary["skipped"] == len(records) > 300
    assert summary["indexed"] > 250 and summary["failed"] > 20  # the corpora hold both kinds
    for record in records:
        assert record["status"] in ("ok", "failed", "skipped")
        if record["status"] != "ok":
            assert isinstance(record["error"], str) and record["error"].strip()
    second = run_cli("scanpixd", "index", "--json", "--config", str(config), str(corpora),
                     env=isolated_env, timeout=300)
    again = orjson.loads(second.stdout)
    assert (again["indexed"], again["failed"], again["skipped"]) == (0, 0, 0)  # nothing retried
    assert again["unchanged"] == len(records)
    assert not any(p.name.startswith(".") for p in (tmp_path / "cache").rglob("records/*"))
    assert os.listdir(corpora)  # untouched and still there

"""Fixtures every test area shares: isolated settings and the location of the corpora."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from scanpixd.config import Settings, load_settings

CORPORA = Path(__file__).resolve().parents[1].parent / "shared" / "corpora"


@pytest.fixture
def corpora() -> Path:
    if not CORPORA.is_dir():
        pytest.skip("the shared corpora are not beside the project")
    return CORPORA


@pytest.fixture
def isolated_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[dict[str, str]]:
    """XDG directories inside tmp_path, so no test reads or writes the real user's files."""
    env = {
        "XDG_CONFIG_HOME": str(tmp_path / "xdg-config"),
        "XDG_CACHE_HOME": str(tmp_path / "xdg-cache"),
        "XDG_RUNTIME_DIR": str(tmp_path / "xdg-runtime"),
    }
    for key, value in env.items():
        Path(value).mkdir(parents=True, exist_ok=True)
        monkeypatch.setenv(key, value)
    for key in list(os.environ):
        if key.startswith("SCANPIX_"):
            monkeypatch.delenv(key)
    yield env


@pytest.fixture
def settings(isolated_env: dict[str, str], tmp_path: Path) -> Settings:
    """Default settings with models off (tests that want them turn them on)."""
    s = load_settings()
    s.jobs = 2
    s.clip.enabled = False
    s.faces.enabled = False
    return s


def run_cli(program: str, *args: str, env: dict[str, str] | None = None, timeout: float = 300,
            cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    """Run ``scanpixd`` or ``scanpix-query`` as a user would, in a child process."""
    module = {"scanpixd": "scanpixd.cli.daemon_cli", "scanpix-query": "scanpixd.cli.query_cli"}[program]
    full_env = dict(os.environ)
    full_env.update(env or {})
    return subprocess.run(
        [sys.executable, "-c", f"import sys; from {module} import main; sys.exit(main())", *args],
        capture_output=True, text=True, env=full_env, timeout=timeout, cwd=cwd,
    )

"""The systemd units are valid for systemd itself and agree with the daemon's defaults."""

from __future__ import annotations

import configparser
import os
import shutil
import subprocess
from pathlib import Path

import pytest

from scanpixd.config import default_socket_path

UNITS = Path(__file__).resolve().parents[1] / "systemd"


def parse(path: Path) -> dict[str, dict[str, list[str]]]:
    """A unit file as {section: {key: [values in order]}} (keys may repeat)."""
    parser = configparser.RawConfigParser(strict=False, interpolation=None,
                                          dict_type=_MultiDict)  # type: ignore[arg-type]
    parser.optionxform = str  # type: ignore[assignment,method-assign]
    parser.read_string(path.read_text())
    return {s: {k: v.split("\n") for k, v in parser.items(s)} for s in parser.sections()}


class _MultiDict(dict):  # type: ignore[type-arg]
    def __setitem__(self, key: str, value: object) -> None:
        if isinstance(value, list) and key in self:
            self[key].extend(value)
        else:
            super().__setitem__(key, value)


@pytest.fixture
def analyze() -> str:
    tool = shutil.which("systemd-analyze")
    if tool is None:
        pytest.skip("systemd-analyze is not installed")
    return tool


def fake_command(directory: Path) -> Path:
    """A real executable for ExecStart=, which verify requires to exist."""
    directory.mkdir(parents=True, exist_ok=True)
    command = directory / "scanpixd"
    command.write_text("#!/bin/sh\nexit 0\n")
    command.chmod(0o755)
    return command


def verify(analyze: str, *args: str, env: dict[str, str] | None = None) -> None:
    result = subprocess.run([analyze, *args], capture_output=True, text=True, timeout=120,
                            env={**os.environ, **(env or {})})
    assert result.returncode == 0 and result.stderr.strip() == "", result.stderr


def test_user_units_verify(tmp_path: Path, analyze: str) -> None:
    home, runtime = tmp_path / "home", tmp_path / "runtime"
    fake_command(home / ".local" / "bin")  # ExecStart=%h/.local/bin/scanpixd
    runtime.mkdir(mode=0o700)
    for name in ("scanpixd.service", "scanpixd.socket"):
        shutil.copy(UNITS / "user" / name, tmp_path / name)
    verify(analyze, "--user", "verify", str(tmp_path / "scanpixd.service"),
           str(tmp_path / "scanpixd.socket"),
           env={"HOME": str(home), "XDG_RUNTIME_DIR": str(runtime)})


def test_system_units_verify(tmp_path: Path, analyze: str) -> None:
    command = fake_command(tmp_path / "bin")
    text = (UNITS / "system" / "scanpixd.service").read_text()
    assert "ExecStart=/usr/local/bin/scanpixd run" in text
    (tmp_path / "scanpixd.service").write_text(
        text.replace("/usr/local/bin/scanpixd", str(command)))
    shutil.copy(UNITS / "system" / "scanpixd.socket", tmp_path / "scanpixd.socket")
    verify(analyze, "verify", str(tmp_path / "scanpixd.service"),
           str(tmp_path / "scanpixd.socket"))


@pytest.mark.parametrize("kind", ["user", "system"])
def test_service_is_a_notify_service_with_watchdog_and_restart(kind: str) -> None:
    service = parse(UNITS / kind / "scanpixd.service")["Service"]
    assert service["Type"] == ["notify"]
    assert service["NotifyAccess"] == ["main"]
    assert service["ExecStart"][0].endswith("scanpixd run")
    assert service["ExecReload"] == ["/bin/kill -HUP $MAINPID"]
    assert int(service["WatchdogSec"][0].rstrip("s")) >= 30
    assert service["Restart"] == ["on-failure"]
    assert service["NoNewPrivileges"] == ["yes"]
    assert service["IOSchedulingClass"] == ["best-effort"]
    assert int(service["Nice"][0]) > 0


def test_system_service_is_sandboxed() -> None:
    service = parse(UNITS / "system" / "scanpixd.service")["Service"]
    for key, value in {
        "ProtectSystem": "strict", "ProtectHome": "read-only", "PrivateTmp": "yes",
        "PrivateDevices": "yes", "RestrictAddressFamilies": "AF_UNIX", "User": "scanpix",
        "RestrictNamespaces": "yes", "CapabilityBoundingSet": "",
    }.items():
        assert service[key] == [value], key
    assert "MemoryDenyWriteExecute" not in service  # torch generates code at run time
    # the roots are made writable by a drop-in; the text says how
    assert "ReadWritePaths=/srv/photos" in (UNITS / "system" / "scanpixd.service").read_text()


def test_sockets_match_the_daemon_defaults(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setenv("XDG_RUNTIME_DIR", str(tmp_path))
    user = parse(UNITS / "user" / "scanpixd.socket")["Socket"]
    assert user["ListenStream"] == ["%t/scanpix/scanpixd.sock"]
    assert default_socket_path() == tmp_path / "scanpix" / "scanpixd.sock"  # %t = runtime dir
    assert user["SocketMode"] == ["0600"] and user["DirectoryMode"] == ["0700"]
    system = parse(UNITS / "system" / "scanpixd.socket")["Socket"]
    assert system["SocketMode"] == ["0660"] and system["SocketGroup"] == ["scanpix"]
    service = parse(UNITS / "system" / "scanpixd.service")["Service"]
    env = dict(v.split("=", 1) for v in service["Environment"])
    assert env["SCANPIX_DAEMON_SOCKET"] == system["ListenStream"][0]

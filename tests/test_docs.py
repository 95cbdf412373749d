"""The README documents every setting, every API route and every command (datasette's habit)."""

from __future__ import annotations

import dataclasses
import tomllib
import typing
from pathlib import Path

import click
import pytest

from scanpixd.api.routes import Router
from scanpixd.cli.daemon_cli import main as daemon_main
from scanpixd.cli.query_cli import main as query_main
from scanpixd.config import Settings, load_settings

README = (Path(__file__).resolve().parents[1] / "README.md").read_text(encoding="utf-8")


def _setting_keys(cls: type = Settings, prefix: str = "") -> list[str]:
    keys = []
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        if f.name == "source":
            continue
        if dataclasses.is_dataclass(hints[f.name]):
            keys += _setting_keys(hints[f.name], f"{prefix}{f.name}.")
        else:
            keys.append(f"{prefix}{f.name}")
    return keys


def _documented_config() -> dict:
    """The TOML example in the README's Configuration section, parsed."""
    section = README.split("## Configuration", 1)[1]
    block = section.split("```toml", 1)[1].split("```", 1)[0]
    return tomllib.loads(block)


@pytest.mark.parametrize("key", _setting_keys())
def test_every_setting_is_documented(key: str) -> None:
    value: object = _documented_config()
    for part in key.split("."):
        assert isinstance(value, dict) and part in value, f"setting {key} is missing from README.md"
        value = value[part]


def test_the_documented_configuration_is_valid(tmp_path: Path) -> None:
    config = tmp_path / "config.toml"
    section = README.split("## Configuration", 1)[1]
    config.write_text(section.split("```toml", 1)[1].split("```", 1)[0])
    settings = load_settings(config, environ={})
    assert settings.thumbs.sizes == [256, 1024]


@pytest.mark.parametrize("route", sorted({r for _, r, _, _ in Router(None).table()}))  # type: ignore[arg-type]
def test_every_api_route_is_documented(route: str) -> None:
    assert f"`{route}`" in README, f"route {route} is not documented in README.md"


@pytest.mark.parametrize("program,group", [("scanpixd", daemon_main), ("scanpix-query", query_main)])
def test_every_command_is_documented(program: str, group: click.Group) -> None:
    for name in group.commands:
        assert f"{program} {name}" in README, f"`{program} {name}` is not documented in README.md"

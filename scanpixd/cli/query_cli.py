"""``scanpix-query``: ask the library (through the daemon when it runs, else from the sidecars)."""

from __future__ import annotations

from pathlib import Path

import click
import orjson

from scanpixd.cli.common import config_option, reports_errors, settings_from
from scanpixd.errors import UsageError


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
def main() -> None:
    """Search and inspect a scanpixd library."""


@main.command()
@click.argument("path", type=click.Path(path_type=Path))
@config_option
@click.option("--json", "as_json", is_flag=True, help="Print the record as JSON.")
@reports_errors
def info(path: Path, config_path: Path | None, as_json: bool) -> None:
    """Show everything scanpixd knows about one file."""
    from scanpixd.inspect import describe

    settings = settings_from(config_path)
    path = path.expanduser().absolute()
    if not path.is_file():
        raise UsageError(f"{path}: no such file")
    data = describe(path, settings)
    if as_json:
        click.echo(orjson.dumps(data, option=orjson.OPT_INDENT_2).decode())
        return
    for key in ("path", "status", "error", "kind", "taken", "place", "camera", "size"):
        if data.get(key) not in (None, "", {}):
            click.echo(f"{key:>8}: {data[key]}")


if __name__ == "__main__":
    main()

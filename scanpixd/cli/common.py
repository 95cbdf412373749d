"""What both command-line programs share: settings, logging, and the one place errors become exit codes."""

from __future__ import annotations

import functools
import logging
import sys
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import click

from scanpixd.config import Settings, load_settings
from scanpixd.errors import QueryError, ScanpixError

F = TypeVar("F", bound=Callable[..., Any])

config_option = click.option(
    "--config", "config_path", type=click.Path(path_type=Path, dir_okay=False),
    envvar="SCANPIX_CONFIG", help="Configuration file (default: $XDG_CONFIG_HOME/scanpix/config.toml).",
)


def settings_from(config_path: Path | None) -> Settings:
    return load_settings(config_path)


def reports_errors(func: F) -> F:
    """Turn a :class:`ScanpixError` into a one-line message and its exit code."""

    @functools.wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return func(*args, **kwargs)
        except QueryError as exc:
            click.echo(f"error: bad query: {exc}", err=True)
            sys.exit(exc.exit_code)
        except ScanpixError as exc:
            click.echo(f"error: {exc}", err=True)
            sys.exit(exc.exit_code)
        except KeyboardInterrupt:
            click.echo("interrupted", err=True)
            sys.exit(130)

    return wrapper  # type: ignore[return-value]


def setup_cli_logging(verbose: int) -> None:
    level = logging.WARNING if verbose == 0 else logging.INFO if verbose == 1 else logging.DEBUG
    logging.basicConfig(level=level, format="%(levelname)s %(name)s: %(message)s", stream=sys.stderr)
    # Libraries log decoder chatter at INFO/WARNING for hostile files; the record keeps the reason.
    for noisy in ("PIL", "exiftool", "libav"):
        logging.getLogger(noisy).setLevel(max(level, logging.CRITICAL))
    if verbose == 0:  # hostile files make decoders warn; the record keeps the reason
        warnings.filterwarnings("ignore", module=r"PIL\..*")
        warnings.filterwarnings("ignore", category=UserWarning, module=r"pillow_heif.*")

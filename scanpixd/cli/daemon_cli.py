"""``scanpixd``: index folders once, or run as the watching daemon."""

from __future__ import annotations

from pathlib import Path

import click
import orjson

from scanpixd.cli.common import config_option, reports_errors, settings_from, setup_cli_logging
from scanpixd.cli.progress import ProgressLine
from scanpixd.errors import UsageError


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="scanpixd")
def main() -> None:
    """scanpixd keeps a portable photo index in a .scanpix/ folder beside your photos."""


@main.command()
@click.argument("paths", nargs=-1, type=click.Path(path_type=Path))
@config_option
@click.option("-j", "--jobs", type=click.IntRange(1, 64), help="Worker threads (default: config `jobs`).")
@click.option("--json", "as_json", is_flag=True, help="Print the summary as JSON.")
@click.option("-v", "--verbose", count=True, help="More log output (-vv for debug).")
@reports_errors
def index(paths: tuple[Path, ...], config_path: Path | None, jobs: int | None, as_json: bool,
          verbose: int) -> None:
    """Index PATHS once (default: the configured roots), then exit."""
    from scanpixd.indexer import Indexer
    from scanpixd.instance import InstanceLock

    setup_cli_logging(verbose)
    settings = settings_from(config_path)
    roots = [p.expanduser().absolute() for p in paths] or list(settings.roots)
    if not roots:
        raise UsageError("nothing to index: give a PATH or set `roots` in the configuration")
    for root in roots:
        if root.exists() and not root.is_dir():
            raise UsageError(f"{root}: not a folder")
    progress = ProgressLine()
    indexer = Indexer(settings, jobs=jobs, progress=progress)
    try:
        with InstanceLock(roots, purpose="index"):
            summary = indexer.index(roots)
    finally:
        progress.close()
        indexer.close()
    for root in summary.offline_roots:
        click.echo(f"warning: {root} is offline (missing or not mounted); its index was kept", err=True)
    for stage, why in summary.unavailable.items():
        click.echo(f"warning: {stage} skipped: {why}", err=True)
    if as_json:
        click.echo(orjson.dumps(summary.to_dict()).decode())
    else:
        click.echo(summary.line())


@main.command()
@config_option
@click.option("-j", "--jobs", type=click.IntRange(1, 64), help="Worker threads (default: config `jobs`).")
@click.option("-v", "--verbose", is_flag=True, help="Debug logging.")
@reports_errors
def run(config_path: Path | None, jobs: int | None, verbose: bool) -> None:
    """Run the daemon: watch the configured roots, keep their index current, serve queries."""
    from scanpixd.daemon import run_daemon
    from scanpixd.notify import setup_logging

    setup_logging(verbose)
    raise SystemExit(run_daemon(config_path, jobs))


if __name__ == "__main__":
    main()

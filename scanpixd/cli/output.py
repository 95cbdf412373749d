"""How ``scanpix-query`` shows results: a table, JSON, bare paths, or a folder of symlinks."""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import click
import orjson

from scanpixd.errors import UsageError

LINKS_MARKER = ".scanpix-results"  # names a folder this tool made, so it may be emptied again


def print_json(value: Any) -> None:
    click.echo(orjson.dumps(value, option=orjson.OPT_INDENT_2 | orjson.OPT_SERIALIZE_NUMPY).decode())


def print_paths(paths: Iterable[str]) -> None:
    for path in paths:
        click.echo(path)


def print_results_table(results: list[dict[str, Any]]) -> None:
    if not results:
        click.echo("no results", err=True)
        return
    for r in results:
        score = f"{r['score']:.3f}" if isinstance(r.get("score"), int | float) else "     "
        taken = (r.get("taken") or "")[:16].replace("T", " ")
        at = f"  @{_clock(r['time'])}" if r.get("time") is not None else ""
        click.echo(f"{score}  {taken:<16}  {r['path']}{at}")


def print_groups_table(groups: list[dict[str, Any]]) -> None:
    if not groups:
        click.echo("no groups", err=True)
        return
    for i, group in enumerate(groups, 1):
        click.echo(f"group {i} ({group['kind']}, {len(group['members'])} files)")
        for m in group["members"]:
            mark = "*" if m["path"] == group["best"] else " "
            reasons = ", ".join(m.get("reasons") or [])
            suffix = f"  ({reasons})" if reasons else ""
            click.echo(f"  {mark} {m.get('score', 0):6.3f}  {m['path']}{suffix}")


def print_people_table(people: list[dict[str, Any]]) -> None:
    if not people:
        click.echo("no people found", err=True)
        return
    for p in people:
        name = p.get("name") or "(unnamed)"
        sample = p.get("sample") or ""
        click.echo(f"{p['id']:<20} {name:<24} {p['count']:>5}  {sample}")


def _clock(seconds: float) -> str:
    minutes, secs = divmod(float(seconds), 60)
    return f"{int(minutes)}:{secs:04.1f}"


def make_links(directory: Path, groups: list[tuple[str, list[str]]]) -> Path:
    """Fill ``directory`` with numbered symlinks to the results (one subfolder per group).

    A folder made earlier by this tool is emptied first; anything else that is not empty
    is refused, so a typo never deletes a user's files.
    """
    directory = directory.expanduser().absolute()
    if directory.exists():
        _clear_links_dir(directory)
    directory.mkdir(parents=True, exist_ok=True)
    (directory / LINKS_MARKER).write_text("made by scanpix-query; safe to delete\n")
    for group_name, paths in groups:
        target_dir = directory / group_name if group_name else directory
        target_dir.mkdir(exist_ok=True)
        width = max(3, len(str(len(paths))))
        for rank, path in enumerate(paths, 1):
            link = target_dir / f"{rank:0{width}d} {Path(path).name}"
            os.symlink(path, link)
    return directory


def _clear_links_dir(directory: Path) -> None:
    if not directory.is_dir():
        raise UsageError(f"{directory} exists and is not a folder")
    entries = list(directory.iterdir())
    if entries and not (directory / LINKS_MARKER).exists():
        raise UsageError(f"{directory} is not empty and was not made by scanpix-query; "
                         "choose another folder")
    for entry in entries:
        if entry.is_symlink() or entry.name == LINKS_MARKER:
            entry.unlink()
        elif entry.is_dir() and all(p.is_symlink() for p in entry.iterdir()):
            shutil.rmtree(entry)
        else:
            raise UsageError(f"{directory} holds {entry.name}, which is not a link; not touching it")


def default_links_dir() -> Path:
    """Per user: in the shared temporary folder another user could have made it first."""
    runtime = os.environ.get("XDG_RUNTIME_DIR")
    base = Path(runtime) / "scanpix" if runtime else Path(tempfile.gettempdir()) / f"scanpix-{os.getuid()}"
    return base / "results"


def open_folder(directory: Path) -> None:
    opener = shutil.which("xdg-open")
    if opener is None:
        raise UsageError(f"xdg-open is not installed; the results are in {directory}")
    subprocess.Popen([opener, str(directory)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                     start_new_session=True)

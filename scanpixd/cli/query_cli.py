"""``scanpix-query``: ask the library, through the daemon when it runs, else from the sidecars.

Exit codes: 0 when the command ran (no results is still 0), 2 for a bad query or bad
arguments, 69 when a needed model is unavailable, 1 for other errors.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from functools import wraps
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import click

from scanpixd.cli import output
from scanpixd.cli.backend import connect, open_backend
from scanpixd.cli.common import config_option, reports_errors, settings_from
from scanpixd.duplicates import Group, Member
from scanpixd.errors import UsageError
from scanpixd.query.parser import parse


class _DefaultToSearch(click.Group):
    """``scanpix-query dog beach`` means ``scanpix-query search dog beach``."""

    def parse_args(self, ctx: click.Context, args: list[str]) -> list[str]:
        if args and args[0] not in self.commands and args[0] not in ("-h", "--help", "--version"):
            args = ["search", *args]
        return super().parse_args(ctx, args)


class _QueryCommand(click.Command):
    """Every argument that is not one of this command's options is part of the query.

    Click would read ``-snow`` as the flags ``-s -n`` and take ``ow`` for ``--limit``'s
    value; a query term must never be mistaken for an option, wherever it stands.
    """

    def parse_args(self, ctx: click.Context, args: list[str]) -> list[str]:
        takes_value: set[str] = set()
        flags: set[str] = set(ctx.help_option_names)
        for param in self.get_params(ctx):
            if isinstance(param, click.Option):
                names = [*param.opts, *param.secondary_opts]
                (flags if param.is_flag or param.count else takes_value).update(names)
        options: list[str] = []
        words: list[str] = []
        rest = iter(args)
        for arg in rest:
            name = arg.split("=", 1)[0] if arg.startswith("--") else arg
            if arg == "--":
                words.extend(rest)
            elif arg in flags:
                options.append(arg)
            elif arg in takes_value:
                value = next(rest, None)
                if value is None:
                    raise click.BadOptionUsage(arg, f"Option '{arg}' requires an argument.", ctx=ctx)
                options.extend([arg, value])
            elif arg.startswith("--") and name in takes_value:
                options.append(arg)  # --limit=5
            elif arg[:2] in takes_value and len(arg) > 2 and arg[2:].isdigit():
                options.append(arg)  # -n5
            else:
                words.append(arg)
        return super().parse_args(ctx, [*options, "--", *words])


def _library_errors(func: Callable[..., Any]) -> Callable[..., Any]:
    """A file that is not indexed or not readable, in direct mode: a message, not a traceback.

    (Through the daemon the same cases come back as 404 and 403 answers.)
    """

    @wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return func(*args, **kwargs)
        except (FileNotFoundError, PermissionError) as exc:
            raise UsageError(str(exc)) from None

    return wrapper


def _common(func: Callable[..., Any]) -> Callable[..., Any]:
    """Options every listing command shares: where to ask and how to show the answer."""

    @config_option
    @click.option("--json", "as_json", is_flag=True, help="Print JSON.")
    @click.option("--paths", "as_paths", is_flag=True, help="Print only paths, one per line.")
    @click.option("--links", "links_dir", type=click.Path(path_type=Path, file_okay=False),
                  help="Make a folder of symlinks to the results.")
    @click.option("--open", "open_links", is_flag=True, help="Open the results folder (xdg-open).")
    @click.option("--direct", is_flag=True, help="Read the sidecars even if the daemon runs.")
    @wraps(func)
    def wrapper(**kwargs: Any) -> Any:
        return func(**kwargs)

    return wrapper


@click.group(cls=_DefaultToSearch, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="scanpixd")
def main() -> None:
    """Search and inspect a scanpixd library (QUERY... searches; see `search --help`)."""


def _backend(config_path: Path | None, direct: bool, hint: Path | None = None,
             images: tuple[str, ...] = ()) -> Any:
    """The daemon or the sidecars; the sidecars when an image to compare lies outside the roots.

    The daemon never reads a file outside its roots, so ``similar:`` an image elsewhere
    (a download, another disk) is answered here, by the model in this process.
    """
    settings = settings_from(config_path)
    if not settings.roots and hint is not None:
        settings.roots = [hint if hint.is_dir() else hint.parent]
    if any(not _inside(Path(image), settings.roots) for image in images):
        direct = True
    return open_backend(settings, direct=direct)


def _inside(path: Path, roots: list[Path]) -> bool:
    real = Path(os.path.realpath(path))
    for root in roots:
        real_root = Path(os.path.realpath(root))
        if real == real_root or real_root in real.parents:
            return True
    return False


def _show_results(data: dict[str, Any], as_json: bool, as_paths: bool, links_dir: Path | None,
                  open_links: bool) -> None:
    results = data.get("results", [])
    if open_links and links_dir is None:
        links_dir = output.default_links_dir()
    if links_dir is not None:
        folder = output.make_links(links_dir, [("", [r["path"] for r in results])])
        if open_links:
            output.open_folder(folder)
    if as_json:
        output.print_json(data)
    elif as_paths:
        output.print_paths(r["path"] for r in results)
    elif links_dir is None:
        output.print_results_table(results)
    else:
        click.echo(f"{len(results)} results in {links_dir}")


@main.command(cls=_QueryCommand)
@click.argument("query", nargs=-1)
@click.option("-n", "--limit", type=click.IntRange(1, 1000), default=50, show_default=True)
@click.option("--query", "query_text", metavar="TEXT",
              help="The whole query as one text, read as typed in a search box (for scripts).")
@_common
@reports_errors
@_library_errors
def search(query: tuple[str, ...], limit: int, query_text: str | None, config_path: Path | None,
           as_json: bool, as_paths: bool, links_dir: Path | None, open_links: bool, direct: bool) -> None:
    """Search by meaning and filters, e.g. `"dog on the beach" date:2023 -snow`."""
    if (query_text is None) == (not query):
        raise UsageError("give the query as arguments or as --query TEXT (one of the two)")
    # Early, with the position of any error.  Arguments are argv-style (`camera:Canon EOS`
    # is one filter); --query is plain query text, as a search box would send it.
    parsed = parse(query_text) if query_text is not None else parse(list(query))
    parsed = _absolute_similar(parsed)
    backend = _backend(config_path, direct, images=tuple(term.path for term in parsed.similar))
    data = backend.search(str(parsed), limit)
    _show_results(data, as_json, as_paths, links_dir, open_links)


def _absolute_similar(query: Any) -> Any:
    """``similar:`` paths relative to here, made absolute (the daemon runs elsewhere)."""
    from dataclasses import replace

    similar = tuple(replace(s, path=str(Path(s.path).expanduser().absolute())) for s in query.similar)
    return replace(query, similar=similar)


@main.command()
@click.argument("path", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("-n", "--limit", type=click.IntRange(1, 1000), default=50, show_default=True)
@_common
@reports_errors
@_library_errors
def similar(path: Path, limit: int, config_path: Path | None, as_json: bool, as_paths: bool,
            links_dir: Path | None, open_links: bool, direct: bool) -> None:
    """Photos that look like PATH (a library file or any image)."""
    path = path.absolute()
    data = _backend(config_path, direct, path, images=(str(path),)).similar(path, limit)
    _show_results(data, as_json, as_paths, links_dir, open_links)


@main.command("same-day")
@click.argument("path", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("-n", "--limit", type=click.IntRange(1, 1000), default=200, show_default=True)
@_common
@reports_errors
@_library_errors
def same_day(path: Path, limit: int, config_path: Path | None, as_json: bool, as_paths: bool,
             links_dir: Path | None, open_links: bool, direct: bool) -> None:
    """Photos taken on the same (local) day as PATH."""
    backend = _backend(config_path, True, path.absolute())
    _show_results(backend.same_day(path.absolute(), limit), as_json, as_paths, links_dir, open_links)


@main.command("same-place")
@click.argument("path", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("-n", "--limit", type=click.IntRange(1, 1000), default=200, show_default=True)
@click.option("--radius", type=click.FloatRange(0.01, 1000), default=1.0, show_default=True,
              help="Kilometres around PATH's position.")
@_common
@reports_errors
@_library_errors
def same_place(path: Path, limit: int, radius: float, config_path: Path | None, as_json: bool,
               as_paths: bool, links_dir: Path | None, open_links: bool, direct: bool) -> None:
    """Photos taken within --radius km of where PATH was taken."""
    backend = _backend(config_path, True, path.absolute())
    data = backend.same_place(path.absolute(), limit, radius * 1000)
    _show_results(data, as_json, as_paths, links_dir, open_links)


@main.command()
@click.argument("path", required=False, type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.option("--exact", "kinds", flag_value="exact", multiple=True, help="Exact copies only.")
@click.option("--near", "kinds", flag_value="near", multiple=True, help="Near-duplicates only.")
@click.option("--bursts", "kinds", flag_value="burst", multiple=True, help="Bursts only.")
@click.option("--xmp", is_flag=True, help="Plan XMP sidecars: best 5 stars Green, the rest 1 star Red.")
@click.option("--move-to", type=click.Path(file_okay=False, path_type=Path),
              help="Plan moving every non-best member into this folder.")
@click.option("--apply", "apply_plan", is_flag=True,
              help="Carry out the --xmp/--move-to plan (else a dry run).")
@click.option("--undo", "undo_journal", type=click.Path(exists=True, dir_okay=False, path_type=Path),
              help="Undo an applied plan from its journal file.")
@_common
@reports_errors
def duplicates(path: Path | None, kinds: tuple[str, ...], xmp: bool, move_to: Path | None,
               apply_plan: bool, undo_journal: Path | None, config_path: Path | None, as_json: bool,
               as_paths: bool, links_dir: Path | None, open_links: bool, direct: bool) -> None:
    """Groups of exact copies, near-duplicates and bursts (in PATH), with the best pick.

    Nothing is changed unless asked: --xmp or --move-to print a plan, --apply carries it out
    (writing an undo journal first), --undo JOURNAL reverses it.
    """
    if undo_journal is not None:
        _undo(undo_journal, as_json)
        return
    path = path.absolute() if path else None
    data = _backend(config_path, direct, path).duplicates(path, set(kinds) or {"exact", "near", "burst"})
    groups = data.get("groups", [])
    if xmp or move_to:
        _act(groups, xmp, move_to, apply_plan, config_path, path, as_json)
        return
    if open_links and links_dir is None:
        links_dir = output.default_links_dir()
    if links_dir is not None:
        named = [(f"{i:03d} {g['kind']}", [m["path"] for m in g["members"]]) for i, g in enumerate(groups, 1)]
        folder = output.make_links(links_dir, named)
        if open_links:
            output.open_folder(folder)
    if as_json:
        output.print_json(data)
    elif as_paths:
        output.print_paths(m["path"] for g in groups for m in g["members"])
    elif links_dir is None:
        output.print_groups_table(groups)
    else:
        click.echo(f"{len(groups)} groups in {links_dir}")


def _act(groups: list[dict[str, Any]], xmp: bool, move_to: Path | None, apply_plan: bool,
         config_path: Path | None, path: Path | None, as_json: bool) -> None:
    from scanpixd import duplicate_actions as actions
    from scanpixd.store import Store
    from scanpixd.upkeep import root_of

    if xmp and move_to:
        raise UsageError("choose --xmp or --move-to, not both")
    settings = settings_from(config_path)
    views = [_group(g) for g in groups]
    roots = settings.roots or ([path] if path else [])
    if xmp:
        first = Path(groups[0]["best"]) if groups else path or Path.cwd()
        root = root_of(first.parent, roots) or first.parent
        plan = actions.plan_xmp(views, Store(settings).library_dir(root), exiftool=settings.exiftool.path)
    else:
        assert move_to is not None
        plan = actions.plan_move(views, move_to.expanduser().absolute(), roots=roots)
    journal = actions.apply(plan, dry_run=not apply_plan)
    if as_json:
        journal_text = str(journal) if journal else None
        output.print_json({**plan.to_dict(), "applied": apply_plan, "journal": journal_text})
        return
    for line in plan.describe():
        click.echo(line)
    if apply_plan:
        click.echo(f"done; undo with: scanpix-query duplicates --undo '{journal}'")
    else:
        click.echo(f"dry run: {len(plan.steps)} changes planned; add --apply to carry them out")


def _undo(journal: Path, as_json: bool) -> None:
    from scanpixd import duplicate_actions as actions

    report = actions.undo(journal)
    if as_json:
        output.print_json({"restored": [str(p) for p in report.restored],
                           "skipped": [{"path": str(p), "why": why} for p, why in report.skipped]})
        return
    click.echo(f"restored {len(report.restored)} files from {journal}")
    for skipped, why in report.skipped:
        click.echo(f"left alone: {skipped} ({why})")


def _group(group: dict[str, Any]) -> Group:
    """A group as the API returns it (JSON), back as the object the actions take."""
    members = [Member(m["path"], m.get("score") or 0.0, list(m.get("reasons") or []))
               for m in group["members"]]
    return Group(group["kind"], SimpleNamespace(path=Path(group["best"])), members)


@main.command()
@click.option("--name", nargs=2, metavar="ID NAME", help="Name (or rename) a person.")
@click.option("--merge", nargs=2, metavar="ID INTO", help="Merge person ID into person INTO.")
@click.option("--faces", "faces_of", metavar="ID", help="List the faces of person ID (with their refs).")
@click.option("--reject", nargs=2, metavar="REF ID", help="Face REF is not person ID.")
@config_option
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@click.option("--direct", is_flag=True, help="Read the sidecars even if the daemon runs.")
@reports_errors
@_library_errors
def people(name: tuple[str, str] | None, merge: tuple[str, str] | None, faces_of: str | None,
           reject: tuple[str, str] | None, config_path: Path | None, as_json: bool, direct: bool) -> None:
    """List the people found in the library; name, merge them, or correct a face."""
    backend = _backend(config_path, direct)
    if name:
        backend.name_person(name[0], name[1])
    if merge:
        backend.merge_people(merge[0], merge[1])
    if reject:
        backend.reject_face(reject[0], reject[1])
    if faces_of:
        faces = backend.person_faces(faces_of)
        if as_json:
            output.print_json(faces)
        else:
            for face in faces["faces"]:
                at = f"  @{face['time']:.1f}s" if face.get("time") is not None else ""
                click.echo(f"{face['ref']}  {face['path']}{at}")
        return
    data = backend.people()
    if as_json:
        output.print_json(data)
    else:
        output.print_people_table(data.get("people", []))


@main.command()
@click.argument("path", type=click.Path(path_type=Path))
@config_option
@click.option("--json", "as_json", is_flag=True, help="Print the record as JSON.")
@click.option("--direct", is_flag=True, help="Read the sidecars even if the daemon runs.")
@reports_errors
@_library_errors
def info(path: Path, config_path: Path | None, as_json: bool, direct: bool) -> None:
    """Show everything scanpixd knows about one file."""
    from scanpixd.inspect import describe

    path = path.expanduser().absolute()
    if not path.is_file():
        raise UsageError(f"{path}: no such file")
    settings = settings_from(config_path)
    remote = None if direct else connect(settings)
    data = remote.item(path) if remote is not None else describe(path, settings)
    if as_json:
        output.print_json(data)
        return
    for key in ("path", "status", "error", "media", "taken", "place", "hashes", "thumbs"):
        if data.get(key) not in (None, "", {}):
            click.echo(f"{key:>8}: {data[key]}")


@main.command()
@config_option
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@click.option("--direct", is_flag=True, help="Report on the sidecars even if the daemon runs.")
@reports_errors
@_library_errors
def status(config_path: Path | None, as_json: bool, direct: bool) -> None:
    """The daemon's (or the library's) state: roots, queue, models, counts."""
    data = _backend(config_path, direct).status()
    if as_json:
        output.print_json(data)
        return
    click.echo(f"items: {data.get('items')}  (daemon: {'yes' if 'work' in data else 'no'})")
    for root, info in data.get("roots", {}).items():
        click.echo(f"root {root}: {'online' if info.get('online', True) else 'OFFLINE'}")
    for name, model in data.get("models", {}).items():
        error = f" ({model['error']})" if model.get("error") else ""
        click.echo(f"model {name}: {model.get('state')}{error}")
    if "work" in data:
        click.echo(f"work: {data['work']}")


if __name__ == "__main__":
    main()

"""``scanpix-query`` as a user runs it: exit codes, output formats, result folders, --open.

Every command is the installed console script in a child process, on a library indexed
with ``scanpixd index``.  Most run in direct mode; the ones that matter for the daemon run
against a real ``scanpixd run`` too.
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson
import pytest

from tests.helpers_api import (
    ApiLibrary,
    Daemon,
    build_library,
    index_library,
    isolated_env,
    scanpix_query,
    scripts_path,
    write_daemon_config,
)
from tests.helpers_index import make_photo


@dataclass
class Cli:
    library: ApiLibrary
    config: Path
    env: dict[str, str]
    daemon: Daemon

    def run(self, *args: str, direct: bool = True, env: dict[str, str] | None = None,
            cwd: Path | None = None) -> Any:
        flags = ["--direct"] if direct else []
        return scanpix_query(*args, *flags, "--config", str(self.config), env=env or self.env, cwd=cwd)

    def json(self, *args: str, direct: bool = True) -> dict[str, Any]:
        out = self.run(*args, "--json", direct=direct)
        assert out.returncode == 0, out.stderr
        data: dict[str, Any] = orjson.loads(out.stdout)
        return data


@pytest.fixture(scope="module")
def cli(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cli]:
    base = tmp_path_factory.mktemp("cli")
    library = build_library(base)
    sock = base / "s.sock"
    config = write_daemon_config(base / "config.toml", [library.root], sock)
    env = isolated_env(base)
    index_library(config, env)
    daemon = Daemon(config, sock, env, base / "daemon.log").start()
    try:
        yield Cli(library, config, env, daemon)
    finally:
        assert daemon.stop() == 0, daemon.log()


BOTH = pytest.mark.parametrize("direct", [True, False], ids=["direct", "daemon"])


# -- exit codes -------------------------------------------------------------------------------
@BOTH
def test_no_results_is_exit_0(cli: Cli, direct: bool):
    out = cli.run("date:1999", direct=direct)
    assert out.returncode == 0, out.stderr
    assert out.stdout == ""
    assert "no results" in out.stderr
    assert cli.json("date:1999", direct=direct)["results"] == []


@BOTH
@pytest.mark.parametrize(("query", "fragment"), [
    ("colour:red", "'colour:red'"),
    ("date:2023-13", "'2023-13'"),
    ('camera:"Canon', "'\"Canon'"),
])
def test_a_bad_query_is_exit_2_quoting_the_fragment(cli: Cli, direct: bool, query: str, fragment: str):
    out = cli.run(query, direct=direct)
    assert out.returncode == 2
    assert out.stderr.startswith("error: bad query: ")
    assert fragment in out.stderr
    assert "Traceback" not in out.stderr


@BOTH
def test_semantic_search_without_a_model_is_exit_69(cli: Cli, direct: bool):
    out = cli.run("a dog on the beach", direct=direct)
    assert out.returncode == 69
    assert "clip.enabled = false" in out.stderr


@pytest.mark.parametrize("args", [
    ("same-day", "never-indexed.jpg"),
    ("same-place", "never-indexed.jpg"),
    ("same-day", "misc/scan-01.jpg"),  # no capture date
    ("same-place", "2022 winter/IMG_0001.jpg"),  # no GPS position
    ("info", "never-indexed.jpg"),
])
def test_a_file_the_library_cannot_answer_for_is_exit_2_without_a_traceback(cli: Cli, tmp_path: Path,
                                                                            args: tuple[str, str]):
    target = cli.library.root / args[1]
    if not target.exists():  # a photo nobody indexed (outside the watched root)
        target = make_photo(tmp_path / args[1], seed=7)
    out = cli.run(args[0], str(target))
    assert out.returncode == 2, out.stderr
    assert out.stderr.startswith("error: ")
    assert "Traceback" not in out.stderr


def test_a_mistyped_option_is_a_bad_query_not_a_search(cli: Cli):
    out = cli.run("-json")
    assert out.returncode == 2
    assert "'-json'" in out.stderr


# -- query words that look like options --------------------------------------------------------
@BOTH
def test_negative_terms_are_never_read_as_options(cli: Cli, direct: bool):
    """``-snow`` is not ``-s -n ow``: any ``-word`` that is not an option is part of the query."""
    paths = cli.run("type:photo", "-folder:venice", "-n", "20", "--paths", "-camera:nikon", direct=direct)
    assert paths.returncode == 0, paths.stderr
    names = sorted(Path(p).name for p in paths.stdout.splitlines())
    assert names == ["IMG_0003.jpg", "IMG_0101 copy.jpg", "scan-01.jpg", "scan-02.png"]
    limited = cli.run("-n1", "type:photo", "--limit=2", "--paths", direct=direct)
    assert len(limited.stdout.splitlines()) == 2


def test_everything_after_a_double_dash_is_the_query(cli: Cli):
    out = cli.run("search", "--paths", "--", "--json")
    assert out.returncode == 2
    assert "'--json'" in out.stderr


# -- output formats -----------------------------------------------------------------------------
@BOTH
def test_json_output_has_results_with_path_and_score(cli: Cli, direct: bool):
    data = cli.json("folder:venice", direct=direct)
    assert set(data) == {"query", "results"}
    assert len(data["results"]) == 3
    for result in data["results"]:
        assert {"path", "score", "time", "taken", "kind", "thumb"} <= set(result)
        assert Path(result["path"]).is_file()
        assert Path(result["thumb"]).is_file()
        assert result["kind"] == "image"
        assert result["taken"].startswith("2023-06-0")


@BOTH
def test_paths_output_is_one_path_per_line(cli: Cli, direct: bool):
    out = cli.run("folder:venice", "--paths", direct=direct)
    assert out.returncode == 0
    expected = [r["path"] for r in cli.json("folder:venice", direct=direct)["results"]]
    assert out.stdout.splitlines() == expected


def test_the_table_shows_date_and_path(cli: Cli):
    out = cli.run("folder:venice")
    lines = out.stdout.splitlines()
    assert len(lines) == 3
    assert "2023-06-01 10:00" in lines[0]
    assert lines[0].endswith(str(cli.library.files["IMG_0101.jpg"]))


def test_same_day_and_same_place(cli: Cli):
    photo = cli.library.files["IMG_0101.jpg"]
    day = cli.json("same-day", str(photo))
    assert sorted(Path(r["path"]).name for r in day["results"]) == ["IMG_0101 copy.jpg", "IMG_0101.jpg",
                                                                    "IMG_0102.jpg"]
    place = cli.json("same-place", str(photo), "--radius", "1")
    assert sorted(Path(r["path"]).name for r in place["results"]) == ["IMG_0101 copy.jpg", "IMG_0101.jpg",
                                                                      "IMG_0102.jpg"]


# -- folders of links ---------------------------------------------------------------------------
def links_in(folder: Path) -> dict[str, str]:
    return {p.name: os.readlink(p) for p in folder.iterdir() if p.is_symlink()}


@BOTH
def test_links_makes_a_folder_of_numbered_symlinks(cli: Cli, direct: bool, tmp_path: Path):
    folder = tmp_path / "found"
    out = cli.run("folder:venice", "--links", str(folder), direct=direct)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == f"3 results in {folder}"
    files = cli.library.files
    assert links_in(folder) == {f"00{i} IMG_010{i}.jpg": str(files[f"IMG_010{i}.jpg"]) for i in (1, 2, 3)}
    again = cli.run("folder:misc", "--links", str(folder), direct=direct)  # its own folder: replaced
    assert again.returncode == 0, again.stderr
    assert sorted(links_in(folder)) == ["001 IMG_0101 copy.jpg", "002 scan-01.jpg", "003 scan-02.png"]


def test_links_refuses_a_folder_it_did_not_make(cli: Cli, tmp_path: Path):
    folder = tmp_path / "mine"
    folder.mkdir()
    (folder / "notes.txt").write_text("keep me")
    out = cli.run("folder:venice", "--links", str(folder))
    assert out.returncode == 2
    assert "not empty and was not made by scanpix-query" in out.stderr
    assert [p.name for p in folder.iterdir()] == ["notes.txt"]
    assert (folder / "notes.txt").read_text() == "keep me"


def test_links_never_deletes_a_real_file_put_in_its_folder(cli: Cli, tmp_path: Path):
    folder = tmp_path / "found"
    assert cli.run("folder:venice", "--links", str(folder)).returncode == 0
    (folder / "my edit.jpg").write_bytes(b"precious")
    out = cli.run("folder:misc", "--links", str(folder))
    assert out.returncode == 2
    assert "not a link" in out.stderr
    assert (folder / "my edit.jpg").read_bytes() == b"precious"


def test_duplicates_links_one_subfolder_per_group(cli: Cli, tmp_path: Path):
    folder = tmp_path / "dups"
    out = cli.run("duplicates", "--exact", "--links", str(folder))
    assert out.returncode == 0, out.stderr
    groups = sorted(p.name for p in folder.iterdir() if p.is_dir())
    assert groups == ["001 exact"]
    assert sorted(links_in(folder / "001 exact").values()) == sorted(
        [str(cli.library.files["IMG_0101.jpg"]), str(cli.library.files["IMG_0101 copy.jpg"])])


# -- --open ------------------------------------------------------------------------------------
def stand_in_opener(folder: Path) -> Path:
    """An ``xdg-open`` that records its arguments, one per line, in ``folder/opened``."""
    folder.mkdir(parents=True, exist_ok=True)
    opener = folder / "xdg-open"
    opener.write_text(f'#!/bin/sh\nprintf "%s\\n" "$@" >> "{folder / "opened"}"\n')
    opener.chmod(0o755)
    return folder / "opened"


def wait_for_file(path: Path, timeout: float = 20.0) -> str:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if path.exists() and path.read_text().endswith("\n"):
            return path.read_text()
        time.sleep(0.05)
    raise AssertionError(f"{path} was never written")


@BOTH
def test_open_hands_the_results_folder_to_xdg_open(cli: Cli, direct: bool, tmp_path: Path):
    record = stand_in_opener(tmp_path / "bin")
    env = dict(cli.env, PATH=scripts_path(cli.env, tmp_path / "bin"))
    out = cli.run("folder:venice", "--open", direct=direct, env=env)
    assert out.returncode == 0, out.stderr
    results = Path(cli.env["XDG_RUNTIME_DIR"]) / "scanpix" / "results"
    assert wait_for_file(record).splitlines() == [str(results)]
    assert len(links_in(results)) == 3


def test_open_without_xdg_open_says_where_the_results_are(cli: Cli, tmp_path: Path):
    env = dict(cli.env, PATH=str(tmp_path / "empty-bin"))
    folder = tmp_path / "found"
    out = cli.run("folder:venice", "--links", str(folder), "--open", env=env)
    assert out.returncode == 2
    assert f"the results are in {folder}" in out.stderr
    assert len(links_in(folder)) == 3


@BOTH
def test_query_option_reads_one_text_as_a_search_box_would(cli: Cli, direct: bool):
    """As arguments, ``folder:misc date:2023-06`` is one folder filter (shell quoting stripped);
    through ``--query`` it is the query language's text: two filters."""
    out = cli.run("search", "--query", "-folder:misc date:2023-06", "--paths", direct=direct)
    assert out.returncode == 0, out.stderr
    assert sorted(Path(p).name for p in out.stdout.splitlines()) == ["IMG_0101.jpg", "IMG_0102.jpg",
                                                                     "IMG_0103.jpg"]
    both = cli.run("search", "--query", "type:photo", "date:2023", direct=direct)
    assert both.returncode == 2
    assert "one of the two" in both.stderr

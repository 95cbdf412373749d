"""The file-manager integration run the way Nautilus and Dolphin run it, against a real daemon.

Nautilus runs a script with the current folder as working directory and the selection in
``NAUTILUS_SCRIPT_SELECTED_FILE_PATHS`` (newline-separated); Dolphin runs a service menu's
``Exec`` line with ``%f`` replaced by the file.  Both end in ``scanpix-action``, which must
leave a folder of symlinks and hand it to ``xdg-open`` (here a stand-in that records its
argument).  The "Search photos…" prompt is answered through ``SCANPIX_ASK``.
"""

from __future__ import annotations

import configparser
import os
import shlex
import shutil
import stat
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from scanpixd.config import load_settings
from scanpixd.indexer import Indexer
from tests.helpers_api import (
    ApiLibrary,
    Daemon,
    build_library,
    console_script,
    isolated_env,
    scripts_path,
    tiny_clip_table,
    write_daemon_config,
)
from tests.helpers_clip import TinyClip, tiny_clip_fixture  # noqa: F401 - the fixture

CONTRIB = Path(__file__).resolve().parents[1] / "contrib"
NAUTILUS = CONTRIB / "nautilus"
DOLPHIN = CONTRIB / "dolphin"
ACTIONS = {"similar", "duplicates", "search", "same-day", "same-place"}


@dataclass
class Desktop:
    library: ApiLibrary
    env: dict[str, str]
    runtime: Path
    opened: Path

    def results(self, action: str) -> Path:
        return self.runtime / "scanpix" / action

    def links(self, action: str, group: str = "") -> dict[str, Path]:
        folder = self.results(action) / group
        return {p.name: Path(os.readlink(p)) for p in sorted(folder.iterdir()) if p.is_symlink()}

    def opened_folders(self, count: int, timeout: float = 20.0) -> list[str]:
        """What xdg-open was given, once it has been called ``count`` times in all."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            lines = self.opened.read_text().splitlines() if self.opened.exists() else []
            if len(lines) >= count:
                return lines
            time.sleep(0.05)
        raise AssertionError(f"xdg-open was called {len(lines)} times, not {count}")


@pytest.fixture(scope="module")
def desktop(tmp_path_factory: pytest.TempPathFactory, tiny_clip: TinyClip) -> Iterator[Desktop]:
    base = tmp_path_factory.mktemp("desktop")
    library = build_library(base)
    sock = base / "s.sock"
    config = write_daemon_config(base / "config.toml", [library.root], sock,
                                 clip=tiny_clip_table(tiny_clip.config, tiny_clip.checkpoint))
    indexer = Indexer(load_settings(config, environ={}))  # every stage, the tiny CLIP included
    try:
        summary = indexer.index([library.root])
    finally:
        indexer.close()
    assert summary.failed == 0, summary
    bin_dir = base / "bin"
    bin_dir.mkdir()
    opened = base / "opened"
    opener = bin_dir / "xdg-open"
    opener.write_text(f'#!/bin/sh\nprintf "%s\\n" "$@" >> "{opened}"\n')
    opener.chmod(0o755)
    (bin_dir / "scanpix-action").symlink_to(CONTRIB / "scanpix-action")
    env = isolated_env(base, SCANPIX_CONFIG=str(config))
    env["PATH"] = scripts_path(env, bin_dir)
    for var in ("DISPLAY", "WAYLAND_DISPLAY"):
        env.pop(var, None)  # no dialogs: errors go to stderr only
    daemon = Daemon(config, sock, env, base / "daemon.log").start()
    try:
        yield Desktop(library, env, Path(env["XDG_RUNTIME_DIR"]), opened)
    finally:
        assert daemon.stop() == 0, daemon.log()


def run_nautilus(desktop: Desktop, script: str, selected: list[Path], cwd: Path,
                 **env: str) -> subprocess.CompletedProcess[str]:
    """As Nautilus does: cwd is the folder shown, the selection in the environment."""
    full = dict(desktop.env, NAUTILUS_SCRIPT_SELECTED_FILE_PATHS="".join(f"{p}\n" for p in selected),
                NAUTILUS_SCRIPT_CURRENT_URI=cwd.as_uri(), **env)
    return subprocess.run([str(NAUTILUS / script), *(p.name for p in selected)], cwd=cwd, env=full,
                          capture_output=True, text=True, timeout=180)


class DesktopEntry(configparser.ConfigParser):
    """A .desktop file: INI groups whose keys are case-sensitive."""

    def __init__(self, path: Path):
        super().__init__(interpolation=None, strict=True)
        self.read(path, encoding="utf-8")

    def optionxform(self, optionstr: str) -> str:
        return optionstr


def dolphin_actions() -> dict[str, tuple[str, str]]:
    """Every service-menu action: id -> (its .desktop file, its Exec line)."""
    found = {}
    for path in sorted(DOLPHIN.glob("*.desktop")):
        entry = DesktopEntry(path)
        for action in entry["Desktop Entry"]["Actions"].strip(";").split(";"):
            found[action] = (path.name, entry[f"Desktop Action {action}"]["Exec"])
    return found


def run_dolphin(desktop: Desktop, action: str, selected: Path,
                **env: str) -> subprocess.CompletedProcess[str]:
    _, exec_line = dolphin_actions()[action]
    argv = [selected.as_posix() if word == "%f" else word for word in shlex.split(exec_line)]
    return subprocess.run(argv, cwd=Path.home(), env=dict(desktop.env, **env), capture_output=True,
                          text=True, timeout=180)


def test_the_console_scripts_are_installed():
    for name in ("scanpix-query", "scanpixd"):
        assert os.access(console_script(name), os.X_OK)


# -- Nautilus -----------------------------------------------------------------------------------
def test_find_similar_photos(desktop: Desktop):
    photo = desktop.library.files["IMG_0101.jpg"]
    calls = len(desktop.opened_folders(0))
    out = run_nautilus(desktop, "Find similar photos", [photo, desktop.library.files["IMG_0102.jpg"]],
                       photo.parent)
    assert out.returncode == 0, out.stderr
    links = desktop.links("similar")
    copy = desktop.library.files["IMG_0101 copy.jpg"]
    assert set(list(links.values())[:2]) == {photo, copy}  # the first selected photo and its copy
    assert all(name[:3].isdigit() for name in links)
    assert desktop.opened_folders(calls + 1)[-1] == str(desktop.results("similar"))


def test_find_duplicates_here_with_nothing_selected_uses_the_folder_shown(desktop: Desktop):
    calls = len(desktop.opened_folders(0))
    out = run_nautilus(desktop, "Find duplicates here", [], desktop.library.root)
    assert out.returncode == 0, out.stderr
    assert "1 groups in" in out.stdout
    members = desktop.links("duplicates", "001 exact")
    assert set(members.values()) == {desktop.library.files["IMG_0101.jpg"],
                                     desktop.library.files["IMG_0101 copy.jpg"]}
    assert desktop.opened_folders(calls + 1)[-1] == str(desktop.results("duplicates"))


def test_find_duplicates_in_a_selected_file_s_folder(desktop: Desktop):
    selected = desktop.library.files["scan-01.jpg"]
    out = run_nautilus(desktop, "Find duplicates here", [selected], desktop.library.root)
    assert out.returncode == 0, out.stderr
    assert "0 groups in" in out.stdout  # misc/ alone holds the copy but not its original


@pytest.mark.parametrize(("script", "photo"), [("Photos from the same day", "IMG_0102.jpg"),
                                                ("Photos from the same place", "IMG_0101.jpg")])
def test_same_day_and_same_place(desktop: Desktop, script: str, photo: str):
    action = "same-day" if "day" in script else "same-place"
    out = run_nautilus(desktop, script, [desktop.library.files[photo]], desktop.library.root)
    assert out.returncode == 0, out.stderr
    names = sorted(p.name for p in desktop.links(action).values())
    assert names == ["IMG_0101 copy.jpg", "IMG_0101.jpg", "IMG_0102.jpg"]


def test_search_photos_asks_and_searches(desktop: Desktop):
    calls = len(desktop.opened_folders(0))
    out = run_nautilus(desktop, "Search photos…", [], desktop.library.root,
                       SCANPIX_ASK="-folder:misc date:2023-06")  # a query that starts with "-"
    assert out.returncode == 0, out.stderr
    assert sorted(p.name for p in desktop.links("search").values()) == ["IMG_0101.jpg", "IMG_0102.jpg",
                                                                      "IMG_0103.jpg"]
    assert desktop.opened_folders(calls + 1)[-1] == str(desktop.results("search"))


def test_a_bad_search_fails_with_the_quoted_fragment(desktop: Desktop):
    out = run_nautilus(desktop, "Search photos…", [], desktop.library.root, SCANPIX_ASK="colour:red")
    assert out.returncode == 1
    assert "'colour:red'" in out.stderr


def test_no_way_to_ask_is_reported(desktop: Desktop):
    out = run_nautilus(desktop, "Search photos…", [], desktop.library.root, SCANPIX_ASK="")
    assert out.returncode == 1
    assert "no zenity or kdialog" in out.stderr


def test_similar_with_nothing_selected_asks_for_a_photo(desktop: Desktop):
    out = run_nautilus(desktop, "Find similar photos", [], desktop.library.root)
    assert out.returncode == 1
    assert "select a photo" in out.stderr


def test_every_nautilus_script_is_executable_and_names_a_known_action():
    scripts = sorted(NAUTILUS.iterdir())
    assert len(scripts) == 5
    for script in scripts:
        assert script.stat().st_mode & stat.S_IXUSR, script
        words = shlex.split(script.read_text().splitlines()[-1])
        assert words[:2] == ["exec", "scanpix-action"] and words[2] in ACTIONS, script


# -- Dolphin ------------------------------------------------------------------------------------
@pytest.mark.parametrize(("action", "selected", "results", "expected"), [
    ("similar", "IMG_0103.jpg", "similar", None),
    ("sameDay", "IMG_0101.jpg", "same-day", ["IMG_0101 copy.jpg", "IMG_0101.jpg", "IMG_0102.jpg"]),
    ("samePlace", "IMG_0102.jpg", "same-place", ["IMG_0101 copy.jpg", "IMG_0101.jpg", "IMG_0102.jpg"]),
])
def test_dolphin_photo_actions(desktop: Desktop, action: str, selected: str, results: str,
                               expected: list[str] | None):
    photo = desktop.library.files[selected]
    out = run_dolphin(desktop, action, photo)
    assert out.returncode == 0, out.stderr
    links = desktop.links(results)
    if expected is None:
        assert next(iter(links.values())) == photo  # a photo is most like itself
    else:
        assert sorted(p.name for p in links.values()) == expected


def test_dolphin_folder_actions(desktop: Desktop):
    out = run_dolphin(desktop, "duplicates", desktop.library.root)
    assert out.returncode == 0, out.stderr
    assert len(desktop.links("duplicates", "001 exact")) == 2
    out = run_dolphin(desktop, "search", desktop.library.root / "misc", SCANPIX_ASK="camera:nikon")
    assert out.returncode == 0, out.stderr
    assert sorted(p.name for p in desktop.links("search").values()) == ["IMG_0001.jpg", "IMG_0002.jpg"]


def test_the_service_menus_are_valid_desktop_files():
    validator = shutil.which("desktop-file-validate")
    for path in sorted(DOLPHIN.glob("*.desktop")):
        if validator:
            out = subprocess.run([validator, str(path)], capture_output=True, text=True, timeout=30)
            # KDE service menus are Type=Service, which the freedesktop validator does not know.
            problems = [line for line in out.stdout.splitlines() if 'the type is "Service"' not in line]
            assert problems == [], problems
        main = DesktopEntry(path)["Desktop Entry"]
        assert main["Type"] == "Service" and main["Name"] and main["MimeType"]
    for action, (_, exec_line) in dolphin_actions().items():
        words = shlex.split(exec_line)
        assert words[0] == "scanpix-action" and words[1] in ACTIONS and words[2:] == ["%f"], action


# -- install.sh -----------------------------------------------------------------------------------
def tree(folder: Path) -> dict[str, int]:
    """Every file under ``folder``, relative, with its permission bits."""
    return {str(p.relative_to(folder)): stat.S_IMODE(p.lstat().st_mode)
            for p in sorted(folder.rglob("*")) if not p.is_dir()}


def test_install_and_uninstall_touch_exactly_their_own_files(tmp_path: Path):
    home = tmp_path / "home"
    data = tmp_path / "data"
    theirs = {home / ".local/bin/other-tool": "x", data / "nautilus/scripts/My script": "y",
              data / "kio/servicemenus/other.desktop": "z"}
    for path, text in theirs.items():
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    env = {"HOME": str(home), "XDG_DATA_HOME": str(data), "PATH": os.defpath}
    before = tree(tmp_path)
    out = subprocess.run(["sh", str(CONTRIB / "install.sh")], env=env, capture_output=True, text=True,
                         timeout=60)
    assert out.returncode == 0, out.stderr
    added = {k: v for k, v in tree(tmp_path).items() if k not in before}
    scripts = {f"data/nautilus/scripts/scanpix/{p.name}": 0o755 for p in NAUTILUS.iterdir()}
    menus = {f"data/kio/servicemenus/{p.name}": 0o755 for p in DOLPHIN.glob("*.desktop")}
    assert added == {"home/.local/bin/scanpix-action": 0o755, **scripts, **menus}
    assert "add" in out.stdout and ".local/bin to PATH" in out.stdout
    installed = home / ".local/bin/scanpix-action"
    assert installed.read_bytes() == (CONTRIB / "scanpix-action").read_bytes()
    out = subprocess.run(["sh", str(CONTRIB / "install.sh"), "--uninstall"], env=env, capture_output=True,
                         text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert tree(tmp_path) == before
    for path, text in theirs.items():
        assert path.read_text() == text

"""The API of a real ``scanpixd run`` process: curl, the Python client, and direct mode agree.

One library (dated, placed and camera-tagged photos plus an exact copy) is indexed with
``scanpixd index``; a daemon serves it on a socket in a temporary folder.  Every answer the
daemon gives is compared with what ``scanpix-query --direct`` computes from the sidecars.
"""

from __future__ import annotations

import os
import stat
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

import orjson
import pytest

from scanpixd.api import routes
from scanpixd.api.client import Client, DaemonUnavailable
from scanpixd.api.routes import LibraryApi, Router
from scanpixd.errors import QueryError, ScanpixError
from tests.helpers_api import (
    ApiLibrary,
    Daemon,
    build_library,
    connect,
    console_script,
    curl,
    index_library,
    isolated_env,
    read_all,
    request,
    scanpix_query,
    write_daemon_config,
)


@dataclass
class Served:
    library: ApiLibrary
    config: Path
    sock: Path
    env: dict[str, str]
    daemon: Daemon

    @property
    def client(self) -> Client:
        return Client(self.sock, timeout=30)


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    base = tmp_path_factory.mktemp("api")
    library = build_library(base)
    sock = base / "run" / "s.sock"
    config = write_daemon_config(base / "config.toml", [library.root], sock)
    env = isolated_env(base)
    summary = index_library(config, env)
    assert summary["failed"] == 0, summary
    daemon = Daemon(config, sock, env, base / "daemon.log").start()
    daemon.wait_idle()
    try:
        yield Served(library, config, sock, env, daemon)
    finally:
        code = daemon.stop()
        assert code == 0, daemon.log()
        assert not sock.exists()


def direct(served: Served, *args: str) -> dict[str, Any]:
    """``scanpix-query ARGS --direct --json``, read from the sidecars by a fresh process."""
    out = scanpix_query(*args, "--direct", "--json", "--config", str(served.config), env=served.env)
    assert out.returncode == 0, out.stderr
    data: dict[str, Any] = orjson.loads(out.stdout)
    return data


def names(data: dict[str, Any]) -> list[str]:
    return [Path(r["path"]).name for r in data["results"]]


# -- the socket ---------------------------------------------------------------------------
def test_curl_reads_the_status(served: Served):
    code, body = curl(served.sock, "/v1/status")
    assert code == 200
    status = orjson.loads(body)
    assert status["loaded"] is True
    assert status["items"] == len(served.library.files)
    assert status["roots"][str(served.library.root)]["online"] is True
    assert status["models"]["clip"]["enabled"] is False
    assert "work" in status  # only the daemon reports its queue


def test_the_socket_is_private_to_its_user(served: Served):
    mode = os.stat(served.sock).st_mode
    assert stat.S_ISSOCK(mode)
    assert stat.S_IMODE(mode) == 0o600
    assert os.stat(served.sock).st_uid == os.getuid()


def test_curl_posts_a_search_as_json(served: Served):
    code, body = curl(served.sock, "/v1/search", "-X", "POST", "-H", "Content-Type: application/json",
                      "--data", '{"q": "folder:venice", "limit": 2}')
    assert code == 200
    data = orjson.loads(body)
    assert data["query"] == "folder:venice"
    assert len(data["results"]) == 2
    assert {"path", "score", "time", "taken", "kind", "thumb"} <= set(data["results"][0])


def test_curl_sees_a_bad_query_quoted(served: Served):
    code, body = curl(served.sock, "/v1/search?q=colour%3Ared")
    assert code == 400
    assert "'colour:red'" in orjson.loads(body)["error"]["message"]


def test_the_python_client_gets_and_posts(served: Served):
    client = served.client
    assert client.answers()
    by_get = client.get("/v1/search", q="type:photo", limit=3)
    by_post = client.post("/v1/search", q="type:photo", limit=3)
    assert by_get == by_post
    assert len(by_get["results"]) == 3
    with pytest.raises(QueryError, match="'2023-13'"):
        client.post("/v1/search", q="date:2023-13")
    with pytest.raises(ScanpixError, match="outside the library's roots") as caught:
        client.post("/v1/item", path="/etc/passwd")
    assert caught.value.exit_code == 2


def test_the_client_says_when_no_daemon_answers(tmp_path: Path):
    client = Client(tmp_path / "nothing.sock", timeout=2)
    assert not client.answers()
    with pytest.raises(DaemonUnavailable, match="no daemon"):
        client.get("/v1/status")


def test_keep_alive_serves_several_requests_on_one_connection(served: Served):
    one = b"GET /v1/status HTTP/1.1\r\nHost: x\r\n\r\n"
    last = b"GET /v1/search?q=type%3Aphoto&limit=1 HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
    with connect(served.sock) as client:
        client.sendall(one + one + last)
        data = read_all(client)
    assert data.count(b"HTTP/1.1 200 OK") == 3


def test_thumbnail_bytes_are_the_files_on_disk_with_their_type(served: Served):
    """The grid thumbnail is WebP, the preview JPEG (``thumbs.format = "auto"``)."""
    from urllib.parse import urlencode

    photo = served.library.files["IMG_0101.jpg"]
    info = served.client.post("/v1/item", path=str(photo))
    smallest, largest = min(info["thumbs"], key=int), max(info["thumbs"], key=int)
    for size, magic, content_type in ((smallest, b"RIFF", "image/webp"),
                                      (largest, b"\xff\xd8\xff", "image/jpeg")):
        query = urlencode({"path": str(photo), "size": size})
        reply = request(served.sock, f"GET /v1/thumbnail?{query} HTTP/1.1\r\nHost: x\r\n"
                                     "Connection: close\r\n\r\n".encode())
        assert reply.status == 200 and reply.headers["content-type"] == content_type
        assert reply.body == Path(info["thumbs"][size]).read_bytes()
        assert reply.body.startswith(magic)


def test_reindex_is_queued_for_a_file_inside_a_root(served: Served):
    photo = served.library.files["IMG_0001.jpg"]
    answer = served.client.post("/v1/reindex", path=str(photo))
    assert answer == {"ok": True, "queued": str(photo)}
    served.daemon.wait_idle()


# -- the daemon and direct mode give the same answers --------------------------------------
QUERIES = [
    "type:photo",
    "folder:venice",
    "-folder:venice",
    "date:2023-06",
    "date:2022-01..2022-02 camera:nikon",
    "-date:2023",
    'camera:"Canon EOS"',
    "place:Italy",
    "near:45.4371,12.3326,1km",
    "date:2023-06-01 -camera:apple",
]


@pytest.fixture(scope="module")
def direct_answers(served: Served) -> dict[str, dict[str, Any]]:
    """Every query of QUERIES run by its own ``scanpix-query --direct`` process, concurrently."""
    exe = console_script("scanpix-query")
    procs = {q: subprocess.Popen([exe, "--direct", "--json", "--config", str(served.config), q],
                                 env=served.env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
             for q in QUERIES}
    answers = {}
    for query, proc in procs.items():
        out, err = proc.communicate(timeout=180)
        assert proc.returncode == 0, err.decode(errors="replace")
        answers[query] = orjson.loads(out)
    return answers


@pytest.mark.parametrize("query", QUERIES)
def test_search_through_the_daemon_equals_direct_mode(served: Served, direct_answers: dict[str, Any],
                                                     query: str):
    through = served.client.post("/v1/search", q=query, limit=50)
    assert through["results"] == direct_answers[query]["results"]  # "query" is the CLI's normal form


def test_filters_select_the_expected_photos(direct_answers: dict[str, Any]):
    assert names(direct_answers["folder:venice"]) == ["IMG_0101.jpg", "IMG_0102.jpg", "IMG_0103.jpg"]
    assert sorted(names(direct_answers["date:2023-06"])) == ["IMG_0101 copy.jpg", "IMG_0101.jpg",
                                                            "IMG_0102.jpg", "IMG_0103.jpg"]
    assert names(direct_answers["date:2022-01..2022-02 camera:nikon"]) == ["IMG_0001.jpg", "IMG_0002.jpg"]
    assert "scan-01.jpg" in names(direct_answers["-date:2023"])  # no date: passes the negation
    assert sorted(names(direct_answers["near:45.4371,12.3326,1km"])) == ["IMG_0101 copy.jpg",
                                                                         "IMG_0101.jpg", "IMG_0102.jpg"]
    assert "IMG_0103.jpg" not in names(direct_answers["date:2023-06-01 -camera:apple"])
    assert len(direct_answers["type:photo"]["results"]) == 9


def test_the_cli_asks_the_daemon_when_it_runs(served: Served):
    out = scanpix_query("folder:venice", "--json", "--config", str(served.config), env=served.env)
    assert out.returncode == 0, out.stderr
    assert orjson.loads(out.stdout) == served.client.post("/v1/search", q="folder:venice", limit=50)
    status = scanpix_query("status", "--json", "--config", str(served.config), env=served.env)
    assert "work" in orjson.loads(status.stdout)  # the daemon's status, not a direct one


def test_duplicates_through_the_daemon_equal_direct_mode(served: Served):
    through = served.client.post("/v1/duplicates", kind="exact,near,burst")
    assert through == direct(served, "duplicates")
    exact = [g for g in through["groups"] if g["kind"] == "exact"]
    assert len(exact) == 1
    assert sorted(Path(m["path"]).name for m in exact[0]["members"]) == ["IMG_0101 copy.jpg",
                                                                        "IMG_0101.jpg"]
    folder = served.library.root / "misc"
    scoped = served.client.post("/v1/duplicates", path=str(folder), kind="exact")
    assert scoped == direct(served, "duplicates", "--exact", str(folder))
    assert scoped["groups"] == []  # the copy's original lies in another folder


def test_info_through_the_daemon_equals_direct_mode(served: Served):
    photo = served.library.files["IMG_0102.jpg"]
    through = served.client.post("/v1/item", path=str(photo))
    assert through == direct(served, "info", str(photo))
    assert through["metadata"]["make"] == "Canon"
    assert through["place"]["country"] == "Italy"
    out = scanpix_query("info", "--json", "--config", str(served.config), str(photo), env=served.env)
    assert out.returncode == 0, out.stderr
    assert orjson.loads(out.stdout) == through


# -- the route table ------------------------------------------------------------------------
def test_openapi_describes_every_route(served: Served):
    spec = served.client.get("/v1/openapi.json")
    table = Router(cast(LibraryApi, None)).table()  # only the table is read
    expected = {(route, m.lower()) for methods, route, _, _ in table for m in methods}
    assert {(route, m) for route, ops in spec["paths"].items() for m in ops} == expected
    for _methods, route, _, params in table:
        assert route in (routes.__doc__ or ""), f"{route} is missing from the routes table"
        for name in params:
            assert name in (routes.__doc__ or ""), f"{route}: parameter {name} undocumented"


def test_a_stopped_daemon_leaves_the_cli_on_direct_mode(tmp_path: Path, served: Served):
    """SIGTERM removes the socket; the CLI then reads the sidecars itself."""
    root = tmp_path / "empty"  # the served library is locked by the module's daemon
    root.mkdir()
    sock = tmp_path / "s.sock"
    config = write_daemon_config(tmp_path / "c.toml", [root], sock)
    daemon = Daemon(config, sock, served.env, tmp_path / "d.log").start()
    assert Client(sock).answers()
    assert daemon.stop() == 0
    assert not sock.exists()
    assert not Client(sock).answers()
    out = scanpix_query("status", "--json", "--config", str(config), env=served.env)
    assert out.returncode == 0, out.stderr
    assert "work" not in orjson.loads(out.stdout)

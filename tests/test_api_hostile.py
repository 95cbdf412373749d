"""Hostile requests against a real daemon: each gets a clean JSON error, and it keeps serving.

Malformed and oversized requests, bad query syntax, paths that try to leave the roots
(``..``, symlinks inside a root, sidecars that name files elsewhere), wrong routes and
methods, garbage and invalid UTF-8 on the socket, header floods, clients that stall or
trickle, and property-based fuzzing of every route.  After each, ``/v1/status`` answers.
"""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import quote, urlencode

import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from scanpixd.api.client import Client
from scanpixd.api.routes import Router
from scanpixd.api.server import MAX_BODY, MAX_CONNECTIONS, ApiServer
from scanpixd.config import load_settings
from scanpixd.service import LibraryService
from scanpixd.store import Store
from tests.helpers_api import (
    SECRET,
    ApiLibrary,
    Daemon,
    Reply,
    assert_json_error,
    build_library,
    connect,
    get,
    index_library,
    isolated_env,
    parse_reply,
    post,
    read_all,
    request,
    write_daemon_config,
)

FUZZ = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])


@dataclass
class Target:
    library: ApiLibrary
    config: Path
    sock: Path
    daemon: Daemon

    def ask(self, data: bytes, half_close: bool = True) -> Reply:
        return request(self.sock, data, timeout=30, half_close=half_close)

    def still_serving(self) -> None:
        reply = self.ask(get("/v1/status"))
        assert reply.status == 200 and reply.json()["loaded"] is True


def plant_hostile_sidecars(library: ApiLibrary, config: Path) -> None:
    """Records that name a thumbnail outside the folder (``..``) and one that is a symlink."""
    folder = Store(load_settings(config, environ={})).folder(library.root / "misc")
    record = folder.read("scan-01.jpg")
    assert record is not None
    record["thumbs"] = {"256": "../../../../outside/secret.webp"}
    folder.write(record)
    record = folder.read("scan-02.png")
    assert record is not None
    link = folder.asset_path("planted.webp")
    link.symlink_to(library.secret)
    # a regular file among the thumbnails, named like a JPEG but no image at all
    folder.write_asset("planted-128.jpg", b"not an image: " + SECRET)
    record["thumbs"] = {"256": "planted.webp", "128": "planted-128.jpg"}
    folder.write(record)


@pytest.fixture(scope="module")
def target(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Target]:
    base = tmp_path_factory.mktemp("hostile")
    library = build_library(base)
    sock = base / "s.sock"
    config = write_daemon_config(base / "config.toml", [library.root], sock)
    env = isolated_env(base)
    index_library(config, env)
    plant_hostile_sidecars(library, config)
    daemon = Daemon(config, sock, env, base / "daemon.log").start()
    try:
        yield Target(library, config, sock, daemon)
    finally:
        log = daemon.log()
        assert daemon.stop() == 0, log
        assert "Traceback" not in log, log  # nothing escaped to the log as a crash


@pytest.fixture(autouse=True)
def _serves_after_each(request: pytest.FixtureRequest) -> Iterator[None]:
    yield
    if "target" in request.fixturenames:
        request.getfixturevalue("target").still_serving()


# -- malformed requests ---------------------------------------------------------------------
def raw(line: str, *headers: str, body: bytes = b"") -> bytes:
    head = "".join(f"{h}\r\n" for h in headers)
    return f"{line}\r\nHost: x\r\n{head}\r\n".encode() + body


MALFORMED: list[tuple[str, bytes, int, str]] = [
    ("garbage", b"\x00\x01\x02garbage\r\n\r\n", 400, "Bad request syntax"),
    ("binary noise", bytes(range(256)) * 8, 400, ""),
    ("not JSON", post("/v1/search", b"{bad"), 400, "not valid JSON"),
    ("JSON array", post("/v1/search", b"[1, 2]"), 400, "must be a JSON object"),
    ("JSON string", post("/v1/search", b'"type:photo"'), 400, "must be a JSON object"),
    ("deep JSON", post("/v1/search", b"[" * 5000 + b"]" * 5000), 400, ""),
    ("huge integer", post("/v1/search", b'{"q": "dog", "limit": 99999999999999999999999}'), 400, ""),
    ("infinite number", post("/v1/search", b'{"q": "dog", "limit": 1e999}'), 400, ""),
    ("body not UTF-8", post("/v1/search", b'{"q": "\xff\xfe"}'), 400, "not valid JSON"),
    ("URL not UTF-8", b"GET /v1/search?q=\xff\xfe HTTP/1.1\r\nHost: x\r\n\r\n", 400, "not valid UTF-8"),
    ("escaped URL not UTF-8", get("/v1/search?q=%FF%FE"), 400, "bad query string"),
    ("huge body", post("/v1/search", b'{"q": "' + b"a" * (MAX_BODY + 10) + b'"}'), 413, "over 65536"),
    ("huge length, no body", raw("POST /v1/search HTTP/1.1", "Content-Length: 99999999"), 413, ""),
    ("chunked body", raw("POST /v1/search HTTP/1.1", "Transfer-Encoding: chunked",
                         body=b"5\r\nhello\r\n0\r\n\r\n"), 411, "chunked"),
    ("bad length", raw("POST /v1/search HTTP/1.1", "Content-Length: ten"), 400, "Content-Length"),
    ("negative length", raw("POST /v1/search HTTP/1.1", "Content-Length: -5"), 400, "Content-Length"),
    ("short body", raw("POST /v1/search HTTP/1.1", "Content-Length: 100", body=b"{}"), 400, "shorter"),
    ("HTTP/2 preface", b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n", 505, "HTTP version"),
    ("URL too long", get("/v1/search?q=" + "a" * 9000), 414, "too long"),
    ("request line too long", get("/v1/search?q=" + "a" * 70000), 431, ""),
    ("header flood", raw("GET /v1/status HTTP/1.1", *(f"X-{i}: y" for i in range(200))), 431, ""),
    ("too many headers", raw("GET /v1/status HTTP/1.1", *(f"X-{i}: y" for i in range(70))), 431, ""),
    ("one huge header", raw("GET /v1/status HTTP/1.1", "X-Big: " + "b" * 70000), 431, ""),
    ("headers not UTF-8", b"GET /v1/item?path=/x HTTP/1.1\r\nX-\xff: \xfe\r\n\r\n", 403, "outside"),
]


@pytest.mark.parametrize(("data", "status", "fragment"), [m[1:] for m in MALFORMED],
                         ids=[m[0] for m in MALFORMED])
def test_a_malformed_request_gets_a_json_error(target: Target, data: bytes, status: int, fragment: str):
    message = assert_json_error(target.ask(data), status)
    assert fragment in message
    assert len(message) < 1000  # the input is never echoed whole


ROUTING: list[tuple[str, bytes, int, str]] = [
    ("unknown route", get("/v1/nothing"), 404, "no such route"),
    ("other version", get("/v2/status"), 404, "no such route"),
    ("root", get("/"), 404, "no such route"),
    ("encoded route", get("/v1/%73tatus"), 404, "no such route"),
    ("dot segments", get("/v1/../v1/status"), 404, "no such route"),
    ("DELETE", raw("DELETE /v1/status HTTP/1.1"), 405, "use GET"),
    ("PUT", raw("PUT /v1/search HTTP/1.1", "Content-Length: 2", body=b"{}"), 405, "use GET, POST"),
    ("PATCH", raw("PATCH /v1/status HTTP/1.1"), 405, "use GET"),
    ("OPTIONS", raw("OPTIONS /v1/people/name HTTP/1.1"), 405, "use POST"),
    ("GET on a POST route", get("/v1/reindex?path=/x"), 405, "use POST"),
    ("unknown method", raw("BREW /v1/status HTTP/1.1"), 501, "Unsupported method"),
]


@pytest.mark.parametrize(("data", "status", "fragment"), [r[1:] for r in ROUTING],
                         ids=[r[0] for r in ROUTING])
def test_wrong_routes_and_methods_get_json_errors(target: Target, data: bytes, status: int, fragment: str):
    reply = target.ask(data)
    assert fragment in assert_json_error(reply, status)
    if status == 405:
        assert reply.headers["allow"] in fragment


def test_head_gets_headers_and_no_body(target: Target):
    with connect(target.sock) as client:
        client.sendall(raw("HEAD /v1/status HTTP/1.1") + get("/v1/status"))
        data = read_all(client)
    first, _, rest = data.partition(b"\r\n\r\n")
    assert first.startswith(b"HTTP/1.1 405")
    assert parse_reply(rest).status == 200  # the next response follows at once: no stray body


BAD_QUERIES = [
    ("colour:red", "'colour:red'"),
    ('dog "unclosed', '\'"unclosed\''),
    ("date:2023-02-30", "'2023-02-30'"),
    ("date:2023-08..2023-06", "'2023-08..2023-06'"),
    ("near:45.1", "'45.1'"),
    ("dog^0", "'dog^0'"),
    ("-snow", "'-snow'"),
    ("dog + ", "'+'"),
    ("http://example.com", "'http'"),
]


@pytest.mark.parametrize(("query", "fragment"), BAD_QUERIES)
def test_bad_query_syntax_is_a_400_quoting_the_fragment(target: Target, query: str, fragment: str):
    by_get = assert_json_error(target.ask(get(f"/v1/search?q={quote(query)}")), 400)
    by_post = assert_json_error(target.ask(post("/v1/search", orjson.dumps({"q": query}))), 400)
    assert by_get == by_post
    assert by_get.startswith("bad query: ")
    assert fragment in by_get


BAD_PARAMETERS = [
    ("/v1/search?q=type%3Aphoto&limit=0", "limit"),
    ("/v1/search?q=type%3Aphoto&limit=1001", "limit"),
    ("/v1/search?q=type%3Aphoto&limit=-1", "limit"),
    ("/v1/search?q=type%3Aphoto&limit=2.5", "limit"),
    ("/v1/search?q=type%3Aphoto&limit=%EF%BC%92", "limit"),  # a full-width digit
    ("/v1/search?q=type%3Aphoto&colour=red", "unknown parameter"),
    ("/v1/search?q=a%00b", "NUL"),
    ("/v1/search?q=" + "a" * 2001, "longer than"),
    ("/v1/search", "q is required"),
    ("/v1/item?path=relative/IMG.jpg", "absolute"),
    ("/v1/thumbnail?path=/x.jpg&size=big", "size"),
    ("/v1/duplicates?kind=similar", "kind"),
    ("/v1/status?verbose=1", "unknown parameter"),
    ("/v1/search?" + "&".join(f"p{i}=1" for i in range(40)), "bad query string"),
]


@pytest.mark.parametrize(("url", "fragment"), BAD_PARAMETERS)
def test_bad_parameters_are_a_400(target: Target, url: str, fragment: str):
    assert fragment in assert_json_error(target.ask(get(url)), 400)


@pytest.mark.parametrize("body", [
    {"q": 5}, {"q": ["type:photo"]}, {"q": None}, {"q": "type:photo", "limit": True},
    {"q": "type:photo", "limit": "5x"}, {"q": "type:photo", "limit": 1e300}, {"path": {"x": 1}},
])
def test_badly_typed_json_is_a_400(target: Target, body: dict[str, Any]):
    route = "/v1/item" if "path" in body else "/v1/search"
    message = assert_json_error(target.ask(post(route, orjson.dumps(body))), 400)
    assert "must be" in message or "required" in message


def test_an_unread_body_never_becomes_the_next_request(target: Target):
    """A refused body (here on a GET) is not parsed as a second request: the connection closes."""
    smuggled = get("/v1/status").replace(b"Connection: close", b"X-A: b")
    data = raw("GET /v1/status HTTP/1.1", f"Content-Length: {len(smuggled)}", body=smuggled)
    with connect(target.sock) as client:
        client.sendall(data)
        answer = read_all(client)
    assert answer.count(b"HTTP/1.1 ") == 1


# -- paths outside the roots ------------------------------------------------------------------
def outside_paths(library: ApiLibrary) -> dict[str, str]:
    root = library.root
    return {
        "system file": "/etc/passwd",
        "outside file": str(library.extras["outside_photo"]),
        "dot-dot": f"{root}/misc/../../outside/outside.jpg",
        "symlinked file": str(root / "links" / "elsewhere.jpg"),
        "through a symlinked folder": str(root / "links" / "elsewhere-dir" / "outside.jpg"),
        "secret through a symlinked folder": str(root / "links" / "elsewhere-dir" / "secret.webp"),
        "root's parent": str(root.parent),
    }


OUTSIDE_KINDS = list(outside_paths(ApiLibrary(Path("/r"), {}, Path("/o"), Path("/o/s"),
                                              {"outside_photo": Path("/o/p")})))


@pytest.mark.parametrize("kind", OUTSIDE_KINDS)
@pytest.mark.parametrize("route", ["item", "thumbnail", "similar", "duplicates", "reindex", "search"])
def test_a_path_outside_the_roots_is_a_403_and_never_its_bytes(target: Target, kind: str, route: str):
    path = outside_paths(target.library)[kind]
    if route == "search":
        data = post("/v1/search", orjson.dumps({"q": f'similar:"{path}" dog'}))
    elif route in ("reindex", "similar"):
        data = post(f"/v1/{route}", orjson.dumps({"path": path}))
    else:
        data = get(f"/v1/{route}?{urlencode({'path': path})}")
    reply = target.ask(data)
    assert "outside the library's roots" in assert_json_error(reply, 403)
    assert SECRET not in reply.body


def test_an_encoded_dot_dot_is_decoded_then_refused(target: Target):
    path = quote(f"{target.library.root}/misc/../../outside/outside.jpg").replace(".", "%2e")
    assert_json_error(target.ask(get(f"/v1/thumbnail?path={path}")), 403)


@pytest.mark.parametrize("name", ["scan-01.jpg", "scan-02.png"])
def test_a_sidecar_naming_a_file_elsewhere_never_leaks_it(target: Target, name: str):
    """scan-01's record names ``../../../../outside/secret.webp``; scan-02's thumbnail is a symlink."""
    photo = target.library.root / "misc" / name
    reply = target.ask(get(f"/v1/thumbnail?{urlencode({'path': str(photo)})}"))
    assert "no thumbnail" in assert_json_error(reply, 404)
    assert SECRET not in reply.body


def test_a_thumbnail_that_is_no_image_is_never_sent(target: Target):
    photo = target.library.root / "misc" / "scan-02.png"
    reply = target.ask(get(f"/v1/thumbnail?{urlencode({'path': str(photo), 'size': 128})}"))
    assert "no thumbnail" in assert_json_error(reply, 404)
    assert SECRET not in reply.body


def test_an_unindexed_file_inside_a_root_is_a_404(target: Target):
    fresh = target.library.root / "misc" / "never-indexed.txt"
    assert "not indexed" in assert_json_error(target.ask(get(f"/v1/item?path={fresh}")), 404)


def test_an_overlong_path_is_a_clean_error(target: Target):
    path = f"{target.library.root}/misc/" + "x" * 300 + ".jpg"
    reply = target.ask(get(f"/v1/thumbnail?{urlencode({'path': path})}"))
    assert reply.status in (400, 404)
    assert_json_error(reply, reply.status)


# -- property-based fuzzing --------------------------------------------------------------------
ROUTES = ["/v1/status", "/v1/search", "/v1/similar", "/v1/duplicates", "/v1/people", "/v1/item",
          "/v1/thumbnail", "/v1/reindex", "/v1/openapi.json", "/v1/people/name", "/v1/nothing"]
KEYS = st.sampled_from(["q", "limit", "path", "kind", "size", "id", "name", "into", "x"])
SCALARS = (st.none() | st.booleans() | st.integers(min_value=-(2**63), max_value=2**64 - 1)
           | st.floats(allow_nan=False, allow_infinity=False) | st.text())
JSON = st.recursive(SCALARS,
                    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(), inner, max_size=4),
                    max_leaves=12)
CLEAN = {200, 202, 400, 403, 404, 405, 413, 503}


def check_clean(reply: Reply) -> None:
    assert reply.status in CLEAN, (reply.status, reply.body[:300])
    if reply.status >= 400:
        assert_json_error(reply, reply.status)
    elif reply.headers["content-type"] == "application/json":
        reply.json()


@FUZZ
@given(route=st.sampled_from(ROUTES), params=st.dictionaries(KEYS, st.text(max_size=50), max_size=4))
def test_fuzzed_query_strings_get_clean_answers(target: Target, route: str, params: dict[str, str]):
    params = {k: v.replace("/reindex", "") for k, v in params.items()}
    check_clean(target.ask(get(f"{route}?{urlencode(params)}")))


@FUZZ
@given(route=st.sampled_from(ROUTES), body=st.dictionaries(KEYS, JSON, max_size=4) | JSON)
def test_fuzzed_json_bodies_get_clean_answers(target: Target, route: str, body: Any):
    if route == "/v1/reindex" and isinstance(body, dict) and isinstance(body.get("path"), str):
        body["path"] = "relative"  # never queue real work from the fuzzer
    check_clean(target.ask(post(route, orjson.dumps(body))))


@FUZZ
@given(text=st.text(max_size=80))
def test_fuzzed_query_text_is_answered_or_refused_with_a_quote(target: Target, text: str):
    reply = target.ask(post("/v1/search", orjson.dumps({"q": text, "limit": 5})))
    check_clean(reply)
    if reply.status == 400 and reply.json()["error"]["message"].startswith("bad query: "):
        assert "'" in reply.json()["error"]["message"]


@FUZZ
@given(data=st.binary(min_size=1, max_size=2000))
def test_raw_garbage_on_the_socket_gets_an_http_answer(target: Target, data: bytes):
    with connect(target.sock, timeout=30) as client:
        client.sendall(data)
        client.shutdown(socket.SHUT_WR)
        answer = read_all(client)
    if answer:  # a few bytes that end before a request line is complete get no answer
        reply = parse_reply(answer)
        assert 400 <= reply.status < 600
        assert_json_error(reply, reply.status)


@FUZZ
@given(line=st.binary(max_size=300).filter(lambda b: b"\r" not in b and b"\n" not in b),
       header=st.binary(max_size=300).filter(lambda b: b"\r" not in b and b"\n" not in b))
def test_fuzzed_request_lines_and_headers_get_clean_answers(target: Target, line: bytes, header: bytes):
    answer = target.ask(b"GET /v1/search?q=" + line + b" HTTP/1.1\r\nX-Fuzz: " + header
                        + b"\r\nConnection: close\r\n\r\n")
    assert answer.status in CLEAN | {414, 431}, answer.body
    if answer.status >= 400:
        assert_json_error(answer, answer.status)


# -- clients that stall ------------------------------------------------------------------------
def test_many_stalled_clients_do_not_stop_others_being_served(target: Target):
    stalled = []
    try:
        for i in range(60):
            client = connect(target.sock)
            if i % 2:
                client.sendall(b"GET /v1/status HTTP/1.1\r\nHost: x\r\n")  # never finished
            stalled.append(client)
        answer = Client(target.sock, timeout=5).post("/v1/search", q="folder:venice")
        assert len(answer["results"]) == 3
    finally:
        for client in stalled:
            client.close()


@pytest.fixture
def quick_server(tmp_path: Path, target: Target) -> Iterator[Path]:
    """The same service on a second socket, with a one-second request deadline."""
    service = LibraryService(load_settings(target.config, environ={}), confine=True)
    service.load([target.library.root])
    sock = tmp_path / "quick" / "q.sock"
    server = ApiServer(Router(service), sock, request_timeout=1.0)
    server.start()
    try:
        yield sock
    finally:
        server.close()
        assert not sock.exists()


def test_a_client_trickling_its_request_is_dropped_with_a_408(quick_server: Path):
    with connect(quick_server) as client:
        started = time.monotonic()
        answer = b""
        for byte in b"GET /v1/status HTTP/1.1\r\nHost: x\r\nX-Slow: " + b"z" * 100:
            try:
                client.sendall(bytes([byte]))
            except OSError:
                break
            time.sleep(0.05)
            if time.monotonic() - started > 5:
                break
        answer = read_all(client)
    assert_json_error(parse_reply(answer), 408)


def test_an_idle_kept_alive_connection_is_closed_quietly(quick_server: Path):
    with connect(quick_server) as client:
        client.sendall(get("/v1/status").replace(b"Connection: close\r\n", b""))
        data = read_all(client)  # returns once the server closes, after the deadline
    reply = parse_reply(data)
    assert reply.status == 200
    assert data.endswith(reply.body) and data.count(b"HTTP/1.1 ") == 1  # nothing more was said


def test_more_stalled_clients_than_threads_are_outlasted(quick_server: Path):
    stalled = [connect(quick_server) for _ in range(MAX_CONNECTIONS + 20)]
    try:
        answer = Client(quick_server, timeout=20).get("/v1/status")
        assert answer["loaded"] is True
    finally:
        for client in stalled:
            client.close()


def test_a_client_that_never_reads_its_answer_costs_nothing_lasting(target: Target):
    def greedy() -> None:
        with connect(target.sock) as client:
            client.sendall(get("/v1/search?q=type%3Aphoto&limit=1000") * 1)
            time.sleep(1.0)  # reads nothing

    threads = [threading.Thread(target=greedy) for _ in range(10)]
    for thread in threads:
        thread.start()
    target.still_serving()
    for thread in threads:
        thread.join()


# -- the socket itself ----------------------------------------------------------------------------
def test_the_socket_and_its_new_folder_are_private(tmp_path: Path, target: Target):
    service = LibraryService(load_settings(target.config, environ={}))
    sock = tmp_path / "fresh" / "nested" / "s.sock"
    server = ApiServer(Router(service), sock)
    try:
        assert oct(sock.stat().st_mode & 0o777) == oct(0o600)
        assert oct(sock.parent.stat().st_mode & 0o777) == oct(0o700)
        with pytest.raises(OSError, match="already served"):
            ApiServer(Router(service), sock)
    finally:
        server.close()
    sock.write_text("not a socket")
    with pytest.raises(OSError, match="not a socket"):
        ApiServer(Router(service), sock)

"""HTTP/1.1 + JSON on a Unix socket, so ``curl --unix-socket SOCK http://localhost/v1/status`` works.

The server is deliberately small: a bounded pool of connection threads, a socket timeout
so a stalled client costs one slot for a few seconds at most, a size limit on every
request, and one table of routes (:mod:`scanpixd.api.routes`).  Every error is JSON::

    {"error": {"status": 400, "message": "bad query: unknown field 'colour' in 'colour:red'"}}
"""

from __future__ import annotations

import contextlib
import grp
import logging
import os
import socket
import socketserver
import stat
import threading
from http.server import BaseHTTPRequestHandler
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import orjson

from scanpixd.api.routes import ApiError, Response, Router

log = logging.getLogger(__name__)

MAX_BODY = 64 * 1024
MAX_URL = 8 * 1024
MAX_HEADERS = 64
CLIENT_TIMEOUT = 10.0
MAX_CONNECTIONS = 32
SD_LISTEN_FDS_START = 3


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "scanpixd"
    timeout = CLIENT_TIMEOUT
    server: _UnixServer

    def do_GET(self) -> None:  # noqa: N802 - the http.server naming
        self._dispatch("GET")

    def do_POST(self) -> None:  # noqa: N802
        self._dispatch("POST")

    def do_HEAD(self) -> None:  # noqa: N802
        self._send(ApiError(405, "HEAD is not supported").response())

    def do_PUT(self) -> None:  # noqa: N802
        self._dispatch("PUT")

    def do_DELETE(self) -> None:  # noqa: N802
        self._dispatch("DELETE")

    def _dispatch(self, method: str) -> None:
        try:
            response = self._route(method)
        except ApiError as exc:
            response = exc.response()
        except Exception:  # a bug must cost one request, not the daemon
            log.exception("API request %s %s failed", method, self.path)
            response = ApiError(500, "internal error; see the daemon's log").response()
        self._send(response)

    def _route(self, method: str) -> Response:
        if len(self.path) > MAX_URL:
            raise ApiError(414, "request URL too long")
        if len(self.headers) > MAX_HEADERS:
            raise ApiError(431, "too many headers")
        parts = urlsplit(self.path)
        try:
            params = {k: v[-1] for k, v in parse_qs(parts.query, strict_parsing=False,
                                                     max_num_fields=32).items()}
        except ValueError as exc:
            raise ApiError(400, f"bad query string: {exc}") from None
        body = self._read_body() if method in ("POST", "PUT") else None
        return self.server.router.handle(method, parts.path, params, body)

    def _read_body(self) -> Any:
        length_text = self.headers.get("Content-Length")
        if self.headers.get("Transfer-Encoding"):
            raise ApiError(411, "chunked bodies are not accepted; send Content-Length")
        if length_text is None:
            return None
        try:
            length = int(length_text)
        except ValueError:
            raise ApiError(400, "bad Content-Length") from None
        if length < 0:
            raise ApiError(400, "bad Content-Length")
        if length > MAX_BODY:
            self.close_connection = True
            raise ApiError(413, f"request body over {MAX_BODY} bytes")
        data = self.rfile.read(length)
        if len(data) != length:
            raise ApiError(400, "request body shorter than Content-Length")
        if not data:
            return None
        try:
            return orjson.loads(data)
        except orjson.JSONDecodeError as exc:
            raise ApiError(400, f"request body is not valid JSON: {exc}") from None

    def _send(self, response: Response) -> None:
        try:
            self.send_response(response.status)
            self.send_header("Content-Type", response.content_type)
            self.send_header("Content-Length", str(len(response.body)))
            self.send_header("Cache-Control", "no-store")
            if self.close_connection:
                self.send_header("Connection", "close")
            self.end_headers()
            self.wfile.write(response.body)
        except (BrokenPipeError, ConnectionResetError, TimeoutError):
            self.close_connection = True

    def send_error(self, code: int, message: str | None = None, explain: str | None = None) -> None:
        """http.server's own errors (bad request line, header overflow) as JSON too."""
        self.close_connection = True
        with contextlib.suppress(OSError):
            self._send(ApiError(code, message or "bad request").response())

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - base signature
        log.debug("api: " + format, *args)

    def address_string(self) -> str:
        return "unix"


class _UnixServer(socketserver.ThreadingMixIn, socketserver.UnixStreamServer):
    daemon_threads = True
    allow_reuse_address = False

    def __init__(self, router: Router, sock: socket.socket):
        self.router = router
        self._slots = threading.BoundedSemaphore(MAX_CONNECTIONS)
        socketserver.BaseServer.__init__(self, sock.getsockname(), _Handler)
        self.socket = sock

    def process_request(self, request: Any, client_address: Any) -> None:
        if not self._slots.acquire(blocking=False):
            _refuse_busy(request)
            return
        super().process_request(request, client_address)

    def process_request_thread(self, request: Any, client_address: Any) -> None:
        try:
            request.settimeout(CLIENT_TIMEOUT)
            super().process_request_thread(request, client_address)
        finally:
            self._slots.release()


def _refuse_busy(request: socket.socket) -> None:
    body = orjson.dumps({"error": {"status": 503, "message": "too many connections"}})
    with contextlib.suppress(OSError):
        request.sendall(b"HTTP/1.1 503 Service Unavailable\r\nContent-Type: application/json\r\n"
                        b"Connection: close\r\nContent-Length: " + str(len(body)).encode()
                        + b"\r\n\r\n" + body)
    with contextlib.suppress(OSError):
        request.close()


class ApiServer:
    """Serves a :class:`Router` on a Unix socket until :meth:`close`."""

    def __init__(self, router: Router, socket_path: Path, group: str = ""):
        self.socket_path = socket_path
        self._owns_path = False
        sock = _inherited_socket()
        if sock is None:
            sock = _bind(socket_path, group)
            self._owns_path = True
        else:
            self.socket_path = Path(sock.getsockname() or socket_path)
        self._server = _UnixServer(router, sock)
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        self._thread = threading.Thread(target=self._server.serve_forever, name="api",
                                        kwargs={"poll_interval": 0.2}, daemon=True)
        self._thread.start()

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        if self._owns_path:
            with contextlib.suppress(FileNotFoundError):
                self.socket_path.unlink()


def _inherited_socket() -> socket.socket | None:
    """The listening socket systemd passed (socket activation), if any."""
    if os.environ.get("LISTEN_PID") != str(os.getpid()):
        return None
    try:
        count = int(os.environ.get("LISTEN_FDS", "0"))
    except ValueError:
        return None
    for var in ("LISTEN_PID", "LISTEN_FDS", "LISTEN_FDNAMES"):
        os.environ.pop(var, None)
    if count < 1:
        return None
    sock = socket.socket(fileno=SD_LISTEN_FDS_START)
    if sock.family != socket.AF_UNIX:
        raise OSError("the socket systemd passed is not a Unix socket")
    return sock


def _bind(path: Path, group: str) -> socket.socket:
    """Bind a fresh socket: 0600 for a user, 0660 with ``group`` for the system unit."""
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700 if not group else 0o750)
    if path.exists() or path.is_symlink():
        if not stat.S_ISSOCK(os.lstat(path).st_mode):
            raise OSError(f"{path} exists and is not a socket")
        if _answers(path):
            raise OSError(f"{path} is already served by another process")
        path.unlink()
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    old_umask = os.umask(0o177 if not group else 0o117)  # never a moment of a wider mode
    try:
        sock.bind(str(path))
    finally:
        os.umask(old_umask)
    if group:
        os.chown(path, -1, grp.getgrnam(group).gr_gid)
        os.chmod(path, 0o660)
    else:
        os.chmod(path, 0o600)
    sock.listen(64)
    return sock


def _answers(path: Path) -> bool:
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    probe.settimeout(0.5)
    try:
        probe.connect(str(path))
        return True
    except OSError:
        return False
    finally:
        probe.close()

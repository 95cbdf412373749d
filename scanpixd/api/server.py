"""HTTP/1.1 + JSON on a Unix socket, so ``curl --unix-socket SOCK http://localhost/v1/status`` works.

The server is deliberately small: a bounded pool of connection threads, a deadline for
receiving each whole request (so a client that stalls, or trickles one byte at a time,
holds a thread for ``REQUEST_TIMEOUT`` seconds at most), a size limit on every part of a
request, and one table of routes (:mod:`scanpixd.api.routes`).  Every error is JSON, with
a proper status line even for a request line that is garbage::

    {"error": {"status": 400, "message": "bad query: unknown field 'colour' in 'colour:red'"}}
"""

from __future__ import annotations

import contextlib
import grp
import http.client
import io
import logging
import math
import os
import socket
import socketserver
import stat
import threading
import time
from http.server import BaseHTTPRequestHandler
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import orjson

from scanpixd.api.routes import ApiError, Response, Router
from scanpixd.notify import listen_sockets

log = logging.getLogger(__name__)

MAX_BODY = 64 * 1024
MAX_HEAD = 64 * 1024  # request line and headers together
MAX_URL = 8 * 1024
MAX_HEADERS = 64
MAX_MESSAGE = 300  # characters of a client's input quoted back in an error
REQUEST_TIMEOUT = 10.0  # to receive one whole request (or the next one on a kept-alive connection)
WRITE_TIMEOUT = 10.0  # to hand a response to a client that does not read it
MAX_CONNECTIONS = 128
SLOT_WAIT = 2.0  # how long a new connection may wait for a free thread before a 503
LISTEN_BACKLOG = 512  # connections the kernel holds while the accept loop is busy
DRAIN_BYTES = 1024 * 1024  # unread input discarded at close, so the client gets the answer
DRAIN_TIME = 0.5


class _Expired(Exception):
    """The client did not send its request within REQUEST_TIMEOUT."""


class _HeadTooLarge(http.client.HTTPException):
    """The request line and headers are over MAX_HEAD (http.server answers 431 for these)."""


class _DeadlineReader(io.RawIOBase):
    """Socket reads bounded by an absolute deadline and a byte budget, whatever the client's pace.

    A plain socket timeout restarts with every byte received, so a client sending one byte
    every few seconds could hold a connection thread for ever.
    """

    def __init__(self, sock: socket.socket):
        super().__init__()
        self.sock = sock
        self.deadline = math.inf
        self.budget = math.inf
        self.received = 0

    def start(self, seconds: float, budget: float) -> None:
        self.deadline = time.monotonic() + seconds
        self.budget = budget
        self.received = 0

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        remaining = self.deadline - time.monotonic()
        if remaining <= 0:
            raise _Expired
        if self.budget <= 0:
            raise _HeadTooLarge("request head too large")
        want = len(buffer) if math.isinf(self.budget) else min(len(buffer), int(self.budget))
        self.sock.settimeout(remaining)
        try:
            count = self.sock.recv_into(buffer, want)
        except TimeoutError:
            raise _Expired from None
        self.budget -= count
        self.received += count
        return count


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    default_request_version = "HTTP/1.1"  # so even an unreadable request line gets a status line
    server_version = "scanpixd"
    server: _UnixServer

    def setup(self) -> None:
        self.connection = self.request
        self._reader = _DeadlineReader(self.connection)
        self.rfile = io.BufferedReader(self._reader)
        self.wfile = socketserver._SocketWriter(self.connection)  # type: ignore[attr-defined]

    def handle_one_request(self) -> None:
        self._reader.start(self.server.request_timeout, MAX_HEAD)
        self._body_read = False
        self.command, self.requestline, self.request_version = "", "", self.default_request_version
        try:
            super().handle_one_request()
        except _Expired:
            self.close_connection = True
            if self._reader.received:  # a request was begun: say why it is dropped
                self.send_error(408, "request not received in time")
        except _HeadTooLarge:
            self.send_error(431, f"request line and headers over {MAX_HEAD} bytes")

    def do_GET(self) -> None:  # noqa: N802 - the http.server naming
        self._dispatch("GET")

    def do_POST(self) -> None:  # noqa: N802
        self._dispatch("POST")

    def do_HEAD(self) -> None:  # noqa: N802
        self._dispatch("HEAD")

    def do_PUT(self) -> None:  # noqa: N802
        self._dispatch("PUT")

    def do_DELETE(self) -> None:  # noqa: N802
        self._dispatch("DELETE")

    def do_PATCH(self) -> None:  # noqa: N802
        self._dispatch("PATCH")

    def do_OPTIONS(self) -> None:  # noqa: N802
        self._dispatch("OPTIONS")

    def handle_expect_100(self) -> bool:
        if self._body_length() is None:  # refused anyway: do not invite the body
            return True
        return super().handle_expect_100()

    def _dispatch(self, method: str) -> None:
        self._reader.budget = math.inf  # the head is in; the body has its own limit
        try:
            response = self._route(method)
        except ApiError as exc:
            response = exc.response()
        except _Expired:
            self.close_connection = True
            response = ApiError(408, "request body not received in time").response()
        except Exception:  # a bug must cost one request, not the daemon
            log.exception("API request %s %s failed", method, self.path[:MAX_MESSAGE])
            response = ApiError(500, "internal error; see the daemon's log").response()
        if not self._body_read and self._has_body():
            self.close_connection = True  # an unread body would be taken for the next request
        self._send(response)

    def _route(self, method: str) -> Response:
        if len(self.path) > MAX_URL:
            raise ApiError(414, "request URL too long")
        if len(self.headers) > MAX_HEADERS:
            raise ApiError(431, "too many headers")
        try:  # http.server decodes the request line as Latin-1; URLs are UTF-8
            target = self.path.encode("latin-1").decode("utf-8")
        except UnicodeError:
            raise ApiError(400, "request URL is not valid UTF-8") from None
        parts = urlsplit(target)
        try:
            params = {k: v[-1] for k, v in parse_qs(parts.query, strict_parsing=False,
                                                     max_num_fields=32, errors="strict").items()}
        except ValueError as exc:  # UnicodeDecodeError included
            raise ApiError(400, f"bad query string: {str(exc)[:MAX_MESSAGE]}") from None
        body = self._read_body() if method in ("POST", "PUT", "PATCH") else None
        return self.server.router.handle(method, parts.path, params, body)

    def _has_body(self) -> bool:
        return bool(self.headers.get("Transfer-Encoding")) or self.headers.get(
            "Content-Length", "0").strip() not in ("", "0")

    def _body_length(self) -> int | None:
        """The announced body length, or None when it is refused (chunked, bad, too large)."""
        if self.headers.get("Transfer-Encoding"):
            return None
        text = self.headers.get("Content-Length", "0").strip()
        if not text.isdigit() or not text.isascii():
            return None
        length = int(text)
        return length if length <= MAX_BODY else None

    def _read_body(self) -> Any:
        length_text = self.headers.get("Content-Length")
        if self.headers.get("Transfer-Encoding"):
            raise ApiError(411, "chunked bodies are not accepted; send Content-Length")
        if length_text is None:
            return None
        length = self._body_length()
        if length is None:
            if length_text.strip().isdigit() and length_text.strip().isascii():
                raise ApiError(413, f"request body over {MAX_BODY} bytes")
            raise ApiError(400, "bad Content-Length")
        data = self.rfile.read(length)
        if len(data) != length:
            raise ApiError(400, "request body shorter than Content-Length")
        self._body_read = True
        if not data:
            return None
        try:
            return orjson.loads(data)
        except orjson.JSONDecodeError as exc:
            raise ApiError(400, f"request body is not valid JSON: {exc}") from None

    def _send(self, response: Response) -> None:
        try:
            self.connection.settimeout(WRITE_TIMEOUT)
            self.send_response(response.status)
            self.send_header("Content-Type", response.content_type)
            self.send_header("Content-Length", str(len(response.body)))
            self.send_header("Cache-Control", "no-store")
            for name, value in response.headers.items():
                self.send_header(name, value)
            if self.close_connection:
                self.send_header("Connection", "close")
            self.end_headers()
            if self.command != "HEAD":
                self.wfile.write(response.body)
        except OSError:  # the client went away or does not read: drop it
            self.close_connection = True

    def send_error(self, code: int, message: str | None = None, explain: str | None = None) -> None:
        """http.server's own errors (bad request line, header overflow) as JSON too."""
        self.close_connection = True
        if code == 431:
            message = f"request line and headers over {MAX_HEAD} bytes, or over {MAX_HEADERS} headers"
        text = (message or "bad request")[:MAX_MESSAGE]
        self._send(ApiError(code, text).response())

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - base signature
        log.debug("api: " + format, *args)

    def address_string(self) -> str:
        return "unix"


class _UnixServer(socketserver.ThreadingMixIn, socketserver.UnixStreamServer):
    daemon_threads = True
    block_on_close = False
    allow_reuse_address = False

    def __init__(self, router: Router, sock: socket.socket, request_timeout: float):
        self.router = router
        self.request_timeout = request_timeout
        self._slots = threading.BoundedSemaphore(MAX_CONNECTIONS)
        socketserver.BaseServer.__init__(self, sock.getsockname(), _Handler)
        self.socket = sock

    def process_request(self, request: Any, client_address: Any) -> None:
        # Every slot is held for REQUEST_TIMEOUT at most while a request arrives, so waiting
        # a little (new connections queue in the listen backlog meanwhile) beats refusing.
        if not self._slots.acquire(timeout=SLOT_WAIT):
            _refuse_busy(request)
            return
        try:
            super().process_request(request, client_address)
        except Exception:  # no thread could be started: the slot is free again
            self._slots.release()
            raise

    def process_request_thread(self, request: Any, client_address: Any) -> None:
        try:
            super().process_request_thread(request, client_address)
        finally:
            self._slots.release()

    def shutdown_request(self, request: Any) -> None:
        _drain(request)
        self.close_request(request)

    def handle_error(self, request: Any, client_address: Any) -> None:
        """A connection that failed outside a route (socket errors): the log, not stderr."""
        log.debug("API connection failed", exc_info=True)


def _drain(request: socket.socket) -> None:
    """Discard input the client sent and we never read (a refused body, a flood) before closing.

    Closing a Unix socket with unread input resets the connection, and the client would
    lose the error response it was sent.  Well-behaved clients have nothing pending.
    """
    with contextlib.suppress(OSError):
        request.shutdown(socket.SHUT_WR)
        request.recv(1, socket.MSG_PEEK | socket.MSG_DONTWAIT)  # BlockingIOError: nothing pending
        request.settimeout(DRAIN_TIME)
        deadline, drained = time.monotonic() + DRAIN_TIME, 0
        while drained < DRAIN_BYTES and time.monotonic() < deadline:
            chunk = request.recv(65536)
            if not chunk:
                break
            drained += len(chunk)


def _refuse_busy(request: socket.socket) -> None:
    body = orjson.dumps({"error": {"status": 503, "message": "too many connections"}})
    with contextlib.suppress(OSError):
        request.settimeout(1.0)
        request.sendall(b"HTTP/1.1 503 Service Unavailable\r\nContent-Type: application/json\r\n"
                        b"Connection: close\r\nContent-Length: " + str(len(body)).encode()
                        + b"\r\n\r\n" + body)
    with contextlib.suppress(OSError):
        request.close()


class ApiServer:
    """Serves a :class:`Router` on a Unix socket until :meth:`close`."""

    def __init__(self, router: Router, socket_path: Path, group: str = "",
                 request_timeout: float = REQUEST_TIMEOUT):
        self.socket_path = socket_path
        self._owns_path = False
        sock = _inherited_socket()
        if sock is None:
            sock = _bind(socket_path, group)
            self._owns_path = True
        else:
            self.socket_path = Path(sock.getsockname() or socket_path)
        self._server = _UnixServer(router, sock, request_timeout)
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        self._thread = threading.Thread(target=self._server.serve_forever, name="api",
                                        kwargs={"poll_interval": 0.2}, daemon=True)
        self._thread.start()

    def close(self) -> None:
        if self._thread is not None:  # shutdown() waits for a serve loop that must have started
            self._server.shutdown()
            self._thread = None
        self._server.server_close()
        if self._owns_path:
            with contextlib.suppress(FileNotFoundError):
                self.socket_path.unlink()


def _inherited_socket() -> socket.socket | None:
    """The listening socket systemd passed (socket activation, ``FileDescriptorName=api``)."""
    sockets = listen_sockets()
    sock = sockets.get("api") or next(iter(sockets.values()), None)
    if sock is not None and sock.family != socket.AF_UNIX:
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
    sock.listen(LISTEN_BACKLOG)
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

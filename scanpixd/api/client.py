"""A small client for the daemon's socket API (what ``scanpix-query`` uses)."""

from __future__ import annotations

import http.client
import socket
import time
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

import orjson

from scanpixd.errors import ModelUnavailable, QueryError, ScanpixError


class DaemonUnavailable(ScanpixError):
    """Nothing answers on the socket: the caller falls back to reading the sidecars."""


class _UnixConnection(http.client.HTTPConnection):
    def __init__(self, socket_path: Path, timeout: float):
        super().__init__("localhost", timeout=timeout)
        self.socket_path = socket_path

    def connect(self) -> None:
        """Connect, waiting (up to the timeout) while the daemon's listen queue is full.

        A Unix socket with a timeout does not wait for room in that queue as a TCP one
        would: ``connect`` fails at once with EAGAIN, which is "busy", not "no daemon".
        """
        deadline = time.monotonic() + (self.timeout if self.timeout is not None else 60.0)
        delay = 0.005
        while True:
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            sock.settimeout(self.timeout)
            try:
                sock.connect(str(self.socket_path))
            except BlockingIOError:
                sock.close()
                if time.monotonic() + delay > deadline:
                    raise
                time.sleep(delay)
                delay = min(delay * 2, 0.2)
                continue
            except OSError:
                sock.close()
                raise
            self.sock = sock
            return


class Client:
    def __init__(self, socket_path: Path, timeout: float = 60.0):
        self.socket_path = socket_path
        self.timeout = timeout

    def get(self, route: str, **params: Any) -> Any:
        query = urlencode({k: v for k, v in params.items() if v is not None})
        return self._request("GET", f"{route}?{query}" if query else route, None)

    def post(self, route: str, **body: Any) -> Any:
        return self._request("POST", route, {k: v for k, v in body.items() if v is not None})

    def get_bytes(self, route: str, **params: Any) -> bytes:
        query = urlencode({k: v for k, v in params.items() if v is not None})
        return self._request("GET", f"{route}?{query}", None, raw=True)

    def _request(self, method: str, target: str, body: dict[str, Any] | None, raw: bool = False) -> Any:
        conn = _UnixConnection(self.socket_path, self.timeout)
        data = orjson.dumps(body) if body is not None else None
        headers = {"Content-Type": "application/json"} if data is not None else {}
        try:
            conn.request(method, target, body=data, headers=headers)
            response = conn.getresponse()
            payload = response.read()
        except (FileNotFoundError, ConnectionRefusedError) as exc:
            raise DaemonUnavailable(f"no daemon on {self.socket_path}: {exc.strerror}") from None
        except (OSError, http.client.HTTPException) as exc:
            raise DaemonUnavailable(f"daemon on {self.socket_path} did not answer: {exc!r}") from None
        finally:
            conn.close()
        if response.status >= 400:
            _raise_for(response.status, payload)
        if raw:
            return payload
        try:
            return orjson.loads(payload)
        except orjson.JSONDecodeError:
            raise ScanpixError(f"daemon on {self.socket_path} sent an answer that is not JSON") from None

    def answers(self) -> bool:
        try:
            self.get("/v1/status")
        except DaemonUnavailable:
            return False
        except ScanpixError:
            return True
        return True


def _raise_for(status: int, payload: bytes) -> None:
    try:
        message = orjson.loads(payload)["error"]["message"]
    except (orjson.JSONDecodeError, KeyError, TypeError):
        message = payload[:200].decode("utf-8", "replace")
    if status == 400 and message.startswith("bad query: "):
        raise QueryError(message[len("bad query: "):])
    if status == 503:
        raise ModelUnavailable(message)
    error = ScanpixError(message)
    error.exit_code = 2 if status in (400, 404, 403) else 1
    raise error

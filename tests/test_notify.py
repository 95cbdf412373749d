"""systemd integration against real sockets: the notify protocol, logging, socket activation."""

from __future__ import annotations

import io
import logging
import os
import shutil
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from scanpixd.notify import (
    Notifier,
    listen_sockets,
    lower_thread_priority,
    running_under_systemd,
    setup_logging,
    thread_io_class,
)


@pytest.fixture
def notify_socket(tmp_path: Path) -> Iterator[tuple[socket.socket, str]]:
    """A real AF_UNIX datagram socket standing in for systemd's notify socket."""
    path = tmp_path / "notify.sock"
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(str(path))
    sock.settimeout(5)
    yield sock, str(path)
    sock.close()


def received(sock: socket.socket) -> list[str]:
    return sock.recv(4096).decode().split("\n")


@pytest.mark.parametrize("use_libsystemd", [True, False], ids=["libsystemd", "own-protocol"])
def test_ready_status_watchdog_stopping(notify_socket, monkeypatch, use_libsystemd) -> None:
    sock, path = notify_socket
    monkeypatch.setenv("NOTIFY_SOCKET", path)
    notifier = Notifier(use_libsystemd=use_libsystemd)
    if use_libsystemd:
        pytest.importorskip("systemd.daemon")
        assert notifier.backend == "libsystemd"
    assert notifier.ready("serving 12 items")
    assert received(sock) == ["READY=1", "STATUS=serving 12 items"]
    assert notifier.status("indexing\n3 left")  # one line only
    assert received(sock) == ["STATUS=indexing 3 left"]
    assert notifier.watchdog()
    assert received(sock) == ["WATCHDOG=1"]
    assert notifier.reloading()
    reload_fields = received(sock)
    assert reload_fields[0] == "RELOADING=1" and reload_fields[1].startswith("MONOTONIC_USEC=")
    assert notifier.extend_timeout(90)
    assert received(sock) == ["EXTEND_TIMEOUT_USEC=90000000"]
    assert notifier.stopping()
    assert received(sock) == ["STOPPING=1"]


def test_abstract_socket_address() -> None:
    name = f"scanpix-test-{os.getpid()}"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.bind("\0" + name)
        sock.settimeout(5)
        notifier = Notifier({"NOTIFY_SOCKET": "@" + name})
        assert notifier.backend == "socket"
        assert notifier.ready()
        assert received(sock) == ["READY=1"]


def test_silent_without_notify_socket(monkeypatch) -> None:
    monkeypatch.delenv("NOTIFY_SOCKET", raising=False)
    notifier = Notifier()
    assert not notifier.enabled
    assert not notifier.ready() and not notifier.watchdog()
    assert not notifier.start_watchdog()


def test_unreachable_socket_never_raises(tmp_path: Path) -> None:
    notifier = Notifier({"NOTIFY_SOCKET": str(tmp_path / "nobody-listens")})
    assert notifier.ready() is False


def test_watchdog_pings_at_half_the_interval_while_healthy(notify_socket) -> None:
    sock, path = notify_socket
    env = {"NOTIFY_SOCKET": path, "WATCHDOG_USEC": "400000", "WATCHDOG_PID": str(os.getpid())}
    notifier = Notifier(env)
    assert notifier.watchdog_interval == pytest.approx(0.2)
    healthy = threading.Event()
    healthy.set()
    assert notifier.start_watchdog(healthy.is_set)
    started = time.monotonic()
    pings = [received(sock) for _ in range(3)]
    assert pings == [["WATCHDOG=1"]] * 3
    assert time.monotonic() - started >= 0.35  # three pings: now, +0.2 s, +0.4 s
    healthy.clear()  # a wedged daemon stops pinging, so systemd restarts it
    time.sleep(0.3)
    sock.settimeout(0.5)
    with pytest.raises(TimeoutError):
        while True:
            received(sock)
    notifier.stop_watchdog()


def test_watchdog_meant_for_another_process_is_ignored(notify_socket) -> None:
    _, path = notify_socket
    notifier = Notifier({"NOTIFY_SOCKET": path, "WATCHDOG_USEC": "400000", "WATCHDOG_PID": "1"})
    assert notifier.watchdog_interval is None


def test_logging_plain_outside_systemd() -> None:
    stream = io.StringIO()
    handler = setup_logging(False, environ={}, stream=stream)
    try:
        logging.getLogger("scanpixd.test").info("hello")
        logging.getLogger("scanpixd.test").debug("hidden")
        assert "INFO scanpixd.test: hello" in stream.getvalue()
        assert "hidden" not in stream.getvalue()
    finally:
        logging.getLogger().removeHandler(handler)


def test_logging_to_the_journal_stream_carries_priorities(tmp_path: Path) -> None:
    with open(tmp_path / "stderr", "w+") as stream:  # a real file standing in for the journal
        st = os.fstat(stream.fileno())
        env = {"JOURNAL_STREAM": f"{st.st_dev}:{st.st_ino}"}
        assert running_under_systemd(env, stream)
        handler = setup_logging(True, environ=env, stream=stream)
        try:
            if handler.__class__.__name__ == "JournalHandler":  # a live journald is here
                return
            logging.getLogger("scanpixd.test").warning("careful")
            logging.getLogger("scanpixd.test").debug("details")
            handler.flush()
            stream.seek(0)
            assert stream.read().splitlines() == [
                "<4>scanpixd.test: careful", "<7>scanpixd.test: details"]
        finally:
            logging.getLogger().removeHandler(handler)
            logging.getLogger().setLevel(logging.WARNING)


def test_socket_activation_hands_over_the_listening_socket(tmp_path: Path) -> None:
    """systemd's own socket-activate tool listens, then starts us on the first connection."""
    tool = shutil.which("systemd-socket-activate")
    if tool is None:
        pytest.skip("systemd-socket-activate is not installed")
    path = tmp_path / "api.sock"
    code = (
        "import os\n"
        "from scanpixd.notify import listen_sockets\n"
        "found = listen_sockets()\n"
        "assert 'LISTEN_FDS' not in os.environ\n"
        "conn, _ = found['api'].accept()\n"
        "conn.sendall(b'hello from ' + str(sorted(found)).encode())\n"
    )
    activator = subprocess.Popen([tool, "-l", str(path), "--fdname=api", sys.executable, "-c", code],
                                 stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 10
        while not path.exists() and time.monotonic() < deadline:
            time.sleep(0.05)
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as client:
            client.settimeout(20)
            client.connect(str(path))
            assert client.recv(100) == b"hello from ['api']"
    finally:
        activator.terminate()
        activator.wait(timeout=10)


def test_listen_sockets_ignores_variables_meant_for_another_process() -> None:
    env = {"LISTEN_PID": "1", "LISTEN_FDS": "1"}
    assert listen_sockets(env) == {}
    assert "LISTEN_FDS" not in env


def test_model_threads_lower_their_own_priority_only() -> None:
    results: dict[str, object] = {}

    def worker() -> None:
        lower_thread_priority()
        tid = threading.get_native_id()
        results["nice"] = os.getpriority(os.PRIO_PROCESS, tid)
        results["io"] = thread_io_class()

    before = os.getpriority(os.PRIO_PROCESS, threading.get_native_id())
    thread = threading.Thread(target=worker)
    thread.start()
    thread.join()
    assert results["nice"] == 19
    assert results["io"] in (3, None)  # 3: idle class (None where ioprio cannot be read)
    assert os.getpriority(os.PRIO_PROCESS, threading.get_native_id()) == before

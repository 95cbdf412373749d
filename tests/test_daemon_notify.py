"""The sd_notify conversation of a real ``scanpixd run``, as systemd's manager would receive it.

A ``Type=notify`` unit with ``WatchdogSec=`` passes ``NOTIFY_SOCKET`` and ``WATCHDOG_USEC``;
here a real AF_UNIX datagram socket plays the manager's part and records every message.
"""

from __future__ import annotations

import signal
import time
from collections.abc import Callable
from pathlib import Path

from tests.helpers_daemon import DaemonProcess, notify_listener, receive_all
from tests.helpers_index import make_photo


class Manager:
    """Collects the daemon's notify messages in order, each as a dict of its fields."""

    def __init__(self, path: Path):
        self.sock = notify_listener(path)
        self.messages: list[dict[str, str]] = []

    def pump(self) -> None:
        for text in receive_all(self.sock):
            self.messages.append(dict(line.split("=", 1) for line in text.split("\n") if "=" in line))

    def wait(self, test: Callable[[dict[str, str]], bool], after: int = 0, timeout: float = 60.0
             ) -> int:
        """Index of the first message from ``after`` on that passes ``test``."""
        deadline = time.monotonic() + timeout
        while True:
            self.pump()
            for i, message in enumerate(self.messages[after:], start=after):
                if test(message):
                    return i
            assert time.monotonic() < deadline, f"no such message in {self.messages}"


def test_ready_status_watchdog_reload_stopping(tmp_path: Path) -> None:
    library = tmp_path / "library"
    make_photo(library / "a" / "one.jpg", seed=1, size=(160, 120))
    manager = Manager(tmp_path / "notify.sock")
    daemon = DaemonProcess(tmp_path / "daemon", [library])
    try:
        daemon.start(wait=False, NOTIFY_SOCKET=str(tmp_path / "notify.sock"), WATCHDOG_USEC="400000")
        ready = manager.wait(lambda m: m.get("READY") == "1")
        assert daemon.status() is not None, "READY=1 comes once the socket answers"
        assert "items" in manager.messages[ready]["STATUS"]
        assert any("STATUS" in m for m in manager.messages[:ready]), "progress before READY"

        first = manager.wait(lambda m: m.get("WATCHDOG") == "1", after=ready)
        manager.wait(lambda m: m.get("WATCHDOG") == "1", after=first + 1, timeout=5)  # every 0.2 s

        daemon.wait_record(library / "a" / "one.jpg")
        mark = len(manager.messages)
        daemon.send(signal.SIGHUP)
        reloading = manager.wait(lambda m: m.get("RELOADING") == "1", after=mark)
        assert int(manager.messages[reloading]["MONOTONIC_USEC"]) > 0
        again = manager.wait(lambda m: m.get("READY") == "1", after=reloading)
        assert "indexed 1" in manager.messages[again]["STATUS"]

        mark = len(manager.messages)
        daemon.send(signal.SIGTERM)
        assert daemon.stop() == 0
        stopping = manager.wait(lambda m: m.get("STOPPING") == "1", after=mark, timeout=5)
        manager.pump()
        assert not any(m.get("WATCHDOG") for m in manager.messages[stopping + 1:]), "no ping after STOPPING"
    finally:
        daemon.close()
        manager.sock.close()


def test_silent_without_systemd(tmp_path: Path) -> None:
    """Started by hand (no NOTIFY_SOCKET) the daemon serves all the same and stops with 0."""
    library = tmp_path / "library"
    photo = make_photo(library / "one.jpg", seed=2, size=(160, 120))
    daemon = DaemonProcess(tmp_path / "daemon", [library])
    try:
        daemon.start()
        daemon.wait_record(photo)
        assert daemon.stop() == 0
        assert "Traceback" not in daemon.log()
    finally:
        daemon.close()

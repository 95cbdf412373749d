"""``scanpixd run``: the long-lived service.

start → settings → instance lock → load the library view from the sidecars → serve the API
→ watch → reconcile every root (READY=1 once it is scheduled) → keep everything current.

SIGTERM/SIGINT stop cleanly: watching stops, the file in flight is finished (its record is
written atomically) and the rest is left for the next start's reconcile, which also finds
the library-wide time pass due if it has not run since the records last changed.  SIGHUP
reloads the configuration: roots added or removed, excludes and timings changed, without
restart.
"""

from __future__ import annotations

import dataclasses
import logging
import signal
import threading
import time
from pathlib import Path
from types import FrameType

from scanpixd.api.routes import Router
from scanpixd.api.server import ApiServer
from scanpixd.config import Settings, load_settings, resolve_path
from scanpixd.errors import ConfigError, ModelUnavailable, ScanpixError, UsageError
from scanpixd.indexer import Indexer
from scanpixd.instance import InstanceLock
from scanpixd.notify import Notifier
from scanpixd.pipeline import Services
from scanpixd.record import Record
from scanpixd.scheduler import Scheduler
from scanpixd.service import LibraryService
from scanpixd.store import FolderStore, Store
from scanpixd.upkeep import run_times, times_due
from scanpixd.watch import Watcher

log = logging.getLogger(__name__)

STATUS_INTERVAL = 5.0
STOP_GRACE = 30.0
# Settings the running pipeline and store were built from: a reload keeps them (with a warning).
RESTART_ONLY = ("write_mode", "cache_dir", "jobs", "thumbs", "exiftool", "clip", "faces", "time")


class Daemon:
    def __init__(self, settings: Settings, config_path: Path | None = None, jobs: int | None = None):
        if not settings.roots:
            raise UsageError("no roots configured: set `roots = [...]` in the configuration")
        self.settings = settings
        self.config_path = config_path
        self.stop = threading.Event()
        self._reload = threading.Event()
        self._wakeup = threading.Event()
        self.notifier = Notifier()
        self.lock = InstanceLock(settings.roots, purpose="daemon")
        self.store = Store(settings)
        self.services = Services(settings)
        self.services.clip.first_load_in_child = True  # torch never stays in the daemon
        self.indexer = Indexer(settings, self.store, self.services, jobs=jobs, stop=self.stop)
        self.service = LibraryService(settings, self.store, self.services, confine=True)
        self.scheduler = Scheduler(self.indexer, settings.roots,
                                   on_written=self.service.records_written,
                                   on_deleted=self.service.records_deleted,
                                   view=self._view_under,
                                   upkeep=self._upkeep, upkeep_due=self._upkeep_due,
                                   upkeep_interval=settings.daemon.upkeep_delay)
        self.watcher = Watcher(settings, self.scheduler)
        self.service.attach(self.scheduler, self.watcher)
        self.api: ApiServer | None = None
        self._threads: list[threading.Thread] = []

    def run(self) -> int:
        self.lock.acquire()
        signal.signal(signal.SIGTERM, self._on_stop_signal)
        signal.signal(signal.SIGINT, self._on_stop_signal)
        signal.signal(signal.SIGHUP, self._on_reload_signal)
        try:
            self._start()
            self._main_loop()
        finally:
            self._shutdown()
        return 0

    def _start(self) -> None:
        started = time.monotonic()
        self.notifier.status("loading the library")
        self.api = self._serve()
        self.api.start()  # answers status at once; queries wait for the library view below
        self.service.load(self.settings.roots)  # filters, similar:, people: served from here
        if self.settings.clip.enabled:  # text queries once the model is in (importing torch
            # alongside the load would hold the GIL and delay both)
            threading.Thread(target=self._preload_clip, name="clip-preload", daemon=True).start()
        self.watcher.start()  # before the reconcile, so nothing changed during it is missed
        for root in self.settings.roots:
            self.scheduler.rescan(root)
        for target, name in ((self.scheduler.run, "cheap"), (self.scheduler.run_later, "models")):
            thread = threading.Thread(target=target, args=(self.stop,), name=name, daemon=True)
            thread.start()
            self._threads.append(thread)
        log.info("serving %d items on %s (started in %.1f s)", self.service.count(),
                 self.api.socket_path, time.monotonic() - started)
        self.notifier.ready(self._status_line())
        self.notifier.start_watchdog(healthy=self._healthy)

    def _preload_clip(self) -> None:
        """Load the text tower and run it once (its first pass costs more than the next)."""
        try:
            self.services.clip.embed_text(["a photo"])
        except ModelUnavailable as exc:
            log.warning("semantic search unavailable: %s", exc)

    def _serve(self) -> ApiServer:
        """The API server on the configured (or systemd's) socket; a clear error if it can't."""
        path = self.settings.daemon.socket
        try:
            return ApiServer(Router(self.service), path, self.settings.daemon.socket_group)
        except OSError as exc:
            detail = f"{path}: {exc.strerror}" if exc.errno else str(exc)
            raise ScanpixError(f"cannot serve the API: {detail} (set `socket` in the [daemon] "
                               "table to another path)") from None
        except KeyError:
            raise ConfigError(f"daemon.socket_group: no group named "
                              f"{self.settings.daemon.socket_group!r}") from None

    def _main_loop(self) -> None:
        while not self.stop.is_set():
            self._wakeup.wait(STATUS_INTERVAL)
            self._wakeup.clear()
            if self._reload.is_set() and not self.stop.is_set():
                self._reload.clear()
                self._reload_settings()
            self.notifier.status(self._status_line())

    def _on_stop_signal(self, signum: int, frame: FrameType | None) -> None:
        log.info("stopping (%s)", signal.Signals(signum).name)
        self.stop.set()
        self._wakeup.set()

    def _on_reload_signal(self, signum: int, frame: FrameType | None) -> None:
        self._reload.set()
        self._wakeup.set()

    def _reload_settings(self) -> None:
        self.notifier.reloading("reloading the configuration")
        try:
            settings = self._reloadable(load_settings(self.config_path))
        except ConfigError as exc:
            log.error("reload failed, keeping the running configuration: %s", exc)
            self.notifier.ready(self._status_line())
            return
        refused = self.lock.update(settings.roots)
        for error in refused:
            log.error("%s", error)
        blocked = {getattr(error, "root", None) for error in refused}
        roots = [r for r in settings.roots if resolve_path(r) not in blocked]
        added = [r for r in roots if r not in self.settings.roots]
        settings.roots = roots
        self.settings = settings
        self.indexer.settings = settings  # excludes of the reconcile, batch sizes
        self.service.settings = self.service.library.settings = settings  # excludes of the view
        self.watcher.apply_settings(settings)
        self.scheduler.upkeep_interval = settings.daemon.upkeep_delay
        self.service.set_roots(roots)  # the view first: the rescans below report against it
        self.scheduler.set_roots(roots)
        log.info("configuration reloaded: %d roots (%d new)", len(roots), len(added))
        self.notifier.ready(self._status_line())

    def _reloadable(self, new: Settings) -> Settings:
        """``new`` with what needs a restart kept as it runs; says so for each change."""
        kept = {key: getattr(self.settings, key) for key in RESTART_ONLY}
        for key, value in kept.items():
            if getattr(new, key) != value:
                log.warning("reload: `%s` changed; it takes effect when scanpixd is restarted", key)
        daemon = dataclasses.replace(new.daemon, socket=self.settings.daemon.socket,
                                     socket_group=self.settings.daemon.socket_group)
        if daemon != new.daemon:
            log.warning("reload: the API socket changed; it moves when scanpixd is restarted")
        return dataclasses.replace(new, daemon=daemon, **kept)

    def _view_under(self, path: Path) -> dict[Path, list[str]]:
        """The folders the library view holds at or below ``path``, with their file names."""
        held: dict[Path, list[str]] = {}
        for item in self.service.library.items():
            folder = item.folder.folder
            if folder == path or path in folder.parents:
                held.setdefault(folder, []).append(item.name)
        return held

    def _upkeep(self) -> None:
        """The time pass over what the view holds, noted so that a restart knows whether it
        is still due (see scanpixd.upkeep)."""
        written = run_times(self.scheduler.known_folders(), self._entries, self.service.roots,
                            self.settings)
        if written:
            self.service.records_written(written)

    def _upkeep_due(self) -> bool:
        return times_due(self.scheduler.known_folders(), self.service.roots, self.settings)

    def _entries(self) -> list[tuple[FolderStore, str, Record]]:
        return [(item.folder, item.name, item.record) for item in self.service.library.items()]

    def _healthy(self) -> bool:
        return all(t.is_alive() for t in self._threads)

    def _status_line(self) -> str:
        c = self.scheduler.counters
        queue = self.scheduler.pending()
        return (f"{self.service.count()} items; indexed {c.indexed}, failed {c.failed}; "
                f"queued {queue['scopes']} changes, {queue['later']} for models")

    def _shutdown(self) -> None:
        self.notifier.stopping("stopping")
        self.stop.set()
        self.watcher.stop()
        deadline = time.monotonic() + STOP_GRACE
        for thread in self._threads:
            thread.join(timeout=max(0.1, deadline - time.monotonic()))
        self.notifier.stop_watchdog()
        if self.api is not None:
            self.api.close()
        self.service.close()
        self.indexer.close()
        self.lock.release()
        log.info("stopped")



def run_daemon(config_path: Path | None, jobs: int | None) -> int:
    settings = load_settings(config_path)
    return Daemon(settings, config_path, jobs).run()

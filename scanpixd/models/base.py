"""Lazy model lifecycle shared by every model wrapper (CLIP, faces).

Models are large and slow to load, and many runs never need one, so a wrapper loads on
first use behind a lock, unloads itself after ``idle_unload`` seconds without use (a
daemon that indexed overnight gives the memory back), and remembers *why* it could not
load so callers can report the reason instead of retrying a missing download on every
file.  The shape follows Immich ML's ``InferenceModel``: subclasses implement
:meth:`_load` (return the loaded thing) and :meth:`_release`.

States: ``unloaded`` -> ``loading`` -> ``ready`` (or ``unavailable`` with :attr:`error`).
``unavailable`` is sticky until :meth:`reset`, because the cause (no weights, no
package) does not go away by itself while the process runs.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from abc import ABC, abstractmethod
from collections.abc import Iterator
from typing import Any, Literal

from scanpixd.errors import ModelUnavailable

log = logging.getLogger(__name__)

State = Literal["unloaded", "loading", "ready", "unavailable"]


class LazyModel(ABC):
    """A model that loads on first use, unloads when idle, and reports why it is missing."""

    #: Human name used in messages ("CLIP", "face").
    label: str = "model"

    def __init__(self, idle_unload: float = 0.0):
        self.idle_unload = float(idle_unload)  # seconds; 0 keeps the model loaded
        self._lock = threading.RLock()
        self._model: Any = None
        self._state: State = "unloaded"
        self._error: str | None = None
        self._last_used = time.monotonic()
        self._timer: threading.Timer | None = None
        self._busy = 0

    # -- public state ---------------------------------------------------------------
    @property
    def state(self) -> State:
        return self._state

    @property
    def error(self) -> str | None:
        """Why the model is unavailable (``None`` unless ``state == "unavailable"``)."""
        return self._error

    def loaded_now(self) -> Any | None:
        """The model if it is loaded at this moment, else ``None``; never starts a load, and
        never waits for one: a first load can take half a minute, and status requests ask
        this.  Read without the lock: a load sets the model before the state, an unload
        clears it first, so "ready" with no model only ever reads as not loaded."""
        model = self._model
        return model if self._state == "ready" and model is not None else None

    @property
    def available(self) -> bool:
        """Whether the model is, or can be, loaded (tries to load when it is not yet)."""
        try:
            self.load()
        except ModelUnavailable:
            return False
        return True

    # -- lifecycle ------------------------------------------------------------------
    def load(self) -> Any:
        """Load the model if needed and return it; raise :class:`ModelUnavailable` if it can't."""
        with self._lock:
            self._touch()
            if self._state == "ready":
                return self._model
            if self._state == "unavailable":
                raise ModelUnavailable(self._error or f"{self.label} model unavailable")
            self._state = "loading"
            started = time.monotonic()
            try:
                self._model = self._load()
            except ModelUnavailable as exc:
                self._fail(str(exc))
                raise
            except Exception as exc:  # any load failure makes the model unavailable, not fatal
                self._fail(f"{type(exc).__name__}: {exc}")
                raise ModelUnavailable(self._error or "") from exc
            self._state = "ready"
            log.info("%s model loaded in %.1f s", self.label, time.monotonic() - started)
            self._schedule_idle_check()
            return self._model

    def adopt(self, model: Any) -> None:
        """Take ``model``, built elsewhere, as the loaded model (no idle unload: it can't reload)."""
        with self._lock:
            self._cancel_timer()
            self._model, self._state, self._error = model, "ready", None
            self._touch()

    def unload(self) -> None:
        """Free the model's memory; the next use loads it again."""
        with self._lock:
            self._cancel_timer()
            if self._state == "ready":
                model, self._model = self._model, None
                self._state = "unloaded"
                try:
                    self._release(model)
                    del model  # the last reference: its memory goes now, before _released
                    self._released()
                except Exception:  # releasing must never raise into a shutdown path
                    log.debug("%s model release failed", self.label, exc_info=True)
                log.info("%s model unloaded", self.label)

    def reset(self) -> None:
        """Forget a load failure so the next use tries again (after settings changed, say)."""
        with self._lock:
            self.unload()
            if self._state == "unavailable":
                self._state = "unloaded"
                self._error = None

    @contextlib.contextmanager
    def session(self) -> Iterator[Any]:
        """The loaded model, held for the length of a ``with`` block (no idle unload inside)."""
        model = self.load()
        with self._lock:
            self._busy += 1
        try:
            yield model
        finally:
            with self._lock:
                self._busy -= 1
                self._touch()

    # -- subclass hooks -------------------------------------------------------------
    @abstractmethod
    def _load(self) -> Any:
        """Build and return the model; raise :class:`ModelUnavailable` with a reason."""

    def _release(self, model: Any) -> None:  # noqa: B027 - optional hook
        """Free resources held by ``model`` beyond dropping the reference."""

    def _released(self) -> None:  # noqa: B027 - optional hook
        """Called once the model's memory is freed (to hand the heap back, say)."""

    # -- internals ------------------------------------------------------------------
    def _fail(self, reason: str) -> None:
        self._model = None
        self._state = "unavailable"
        self._error = reason
        log.info("%s model unavailable: %s", self.label, reason)

    def _touch(self) -> None:
        self._last_used = time.monotonic()

    def _schedule_idle_check(self, delay: float | None = None) -> None:
        if self.idle_unload <= 0:
            return
        self._cancel_timer()
        timer = threading.Timer(self.idle_unload if delay is None else delay, self._idle_check)
        timer.daemon = True
        timer.name = f"{self.label}-idle-unload"
        self._timer = timer
        timer.start()

    def _cancel_timer(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def _idle_check(self) -> None:
        with self._lock:
            if self._state != "ready":
                return
            idle = time.monotonic() - self._last_used
            if idle >= self.idle_unload and not self._busy:
                self.unload()
            else:
                self._schedule_idle_check(max(self.idle_unload - idle, 1.0))

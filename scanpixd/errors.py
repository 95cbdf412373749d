"""Typed errors.  Library code raises these; only the CLI maps them to messages and exit codes."""

from __future__ import annotations


class ScanpixError(Exception):
    """Base of every error scanpixd reports to a user as a message rather than a traceback."""

    exit_code = 1


class ConfigError(ScanpixError):
    """The configuration file or an environment override is invalid; the message names the key."""

    exit_code = 78  # EX_CONFIG


class UsageError(ScanpixError):
    """A command was asked to do something it cannot (missing path, bad option value)."""

    exit_code = 2


class QueryError(ScanpixError):
    """A query could not be parsed or evaluated; ``fragment`` is the part of the input at fault."""

    exit_code = 2

    def __init__(self, message: str, fragment: str | None = None, position: int | None = None):
        super().__init__(message)
        self.fragment = fragment
        self.position = position


class ModelUnavailable(ScanpixError):
    """A model (CLIP, faces) cannot be loaded here; the message says why."""

    exit_code = 69  # EX_UNAVAILABLE


class DecodeError(ScanpixError):
    """A media file cannot be decoded; recorded as the file's failure reason."""


class NotMedia(DecodeError):
    """The file is not an image or video at all: recorded as skipped, not as a failure."""


class AlreadyRunning(ScanpixError):
    """Another scanpixd instance already serves one of the roots."""

    exit_code = 75  # EX_TEMPFAIL

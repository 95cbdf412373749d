"""Typed settings from a TOML file plus ``SCANPIX_*`` environment overrides.

Settings are built once by the command that runs (``load_settings``) and passed down;
nothing here runs at import time.  Every value is validated and an error names the key::

    roots = ["~/Pictures", "/mnt/photos"]
    exclude = ["*.tmp", "Private/**"]
    write_mode = "folder"          # or "cache": keep .scanpix/ data under cache_dir instead
    jobs = 2

    [thumbs]
    sizes = [256, 1024]

    [clip]
    model = "ViT-B-32"
    pretrained = "laion2b_s34b_b79k"

Environment overrides: ``SCANPIX_<KEY>`` for top-level keys and ``SCANPIX_<TABLE>_<KEY>``
for keys in a table (``SCANPIX_JOBS=4``, ``SCANPIX_CLIP_PRETRAINED=/models/b32.pt``).
Lists are separated by ``:`` (``SCANPIX_ROOTS=/a:/b``).
"""

from __future__ import annotations

import dataclasses
import os
import tomllib
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from scanpixd.errors import ConfigError

# SCANPIX_* variables that choose files or steer the helper scripts, not settings.
NOT_SETTINGS = frozenset({"SCANPIX_CONFIG", "SCANPIX_SOCKET", "SCANPIX_ASK", "SCANPIX_QUERY",
                          "SCANPIX_BIN_DIR"})
DEFAULT_EXCLUDES = ("*.part", "*.crdownload", "*.tmp", "*~", ".~lock*", "*.sync-conflict-*")


def _xdg(var: str, fallback: str) -> Path:
    value = os.environ.get(var)
    return Path(value) if value else Path.home() / fallback


def resolve_path(path: Path) -> Path:
    """A configured path as the filesystem names it (``~`` expanded, symlinks resolved)."""
    try:
        return path.expanduser().resolve()
    except OSError:
        return path.expanduser().absolute()


def default_config_path() -> Path:
    return _xdg("XDG_CONFIG_HOME", ".config") / "scanpix" / "config.toml"


def default_cache_dir() -> Path:
    return _xdg("XDG_CACHE_HOME", ".cache") / "scanpix"


def default_socket_path() -> Path:
    runtime = os.environ.get("XDG_RUNTIME_DIR") or f"/tmp/scanpix-{os.getuid()}"
    return Path(runtime) / "scanpix" / "scanpixd.sock"


@dataclass
class ThumbSettings:
    sizes: list[int] = field(default_factory=lambda: [256, 1024])  # long side in px; never upscaled
    quality: int = 80  # WebP or JPEG quality of thumbnails (0-100)
    method: int = 0  # WebP effort 0 (fastest) .. 6 (smallest files)
    # "auto": WebP up to 512 px (grid thumbnails), JPEG above (previews; much cheaper to make)
    format: Literal["auto", "webp", "jpeg"] = "auto"
    preview_seconds: float = 3.0  # length of a video's WebM preview
    preview_size: int = 320  # long side of a video preview in px
    preview_fps: float = 8.0  # frames per second of a video preview


@dataclass
class ExiftoolSettings:
    path: str = "exiftool"
    timeout: float = 30.0
    batch_size: int = 16


@dataclass
class ClipSettings:
    enabled: bool = True
    model: str = "ViT-B-32"
    pretrained: str = "laion2b_s34b_b79k"
    batch_size: int = 16
    threads: int = 0  # 0: torch's default (one per core)
    idle_unload: float = 600.0  # seconds without use before the model is unloaded
    image_idle_unload: float = 60.0  # seconds without image embedding before the image tower
    #   alone is freed (text queries keep only the text tower); 0: as idle_unload
    score_floor: float = 0.2  # text queries: cosine a photo needs to count as a match
    video_frames: int = 8
    download: bool = True  # fetch a pretrained tag's weights once when not in the local cache
    similar_floor: float = 0.5  # similar: queries: 0 = above the typical photo, 1 = identical only
    ann_min: int = 20000  # vectors above which the library searches an HNSW index, not exactly


@dataclass
class FaceSettings:
    enabled: bool = True
    detector: Literal["hog", "cnn"] = "hog"
    upsample: int = 1
    max_size: int = 1024
    threshold: float = 0.5  # encoding distance under which two faces are one person
    video_frames: int = 6
    idle_unload: float = 600.0  # seconds without use before the models are unloaded (0: never)
    model_dir: str = ""  # folder with the dlib .dat files; empty: the face_recognition_models package


@dataclass
class TimeSettings:
    home_timezone: str = ""  # IANA name; empty: unknown when nothing else tells
    neighbour_window: float = 6.0  # hours within which a geotagged item lends its zone


@dataclass
class DuplicateSettings:
    """Duplicate, near-duplicate and burst grouping (thresholds: scanpixd.duplicates.PRESETS)."""

    preset: Literal["strict", "balanced", "loose"] = "balanced"
    burst_window: float = 10.0  # seconds between two frames of one burst
    near_distance: int = 0  # pHash bits (of 256) for near-duplicates; 0: the preset's
    burst_distance: int = 0  # pHash bits (of 256) for burst frames; 0: the preset's
    clip_confirm: bool = True  # where CLIP vectors exist, CLIP must agree with the hashes
    turned: bool = True  # also find copies turned or mirrored without an EXIF orientation


@dataclass
class DaemonSettings:
    socket: Path = field(default_factory=default_socket_path)
    socket_group: str = ""
    debounce: float = 0.5
    poll_roots: list[Path] = field(default_factory=list)  # roots watched by polling (NFS, SMB)
    poll_interval: float = 30.0
    queue_size: int = 10000
    upkeep_delay: float = 5.0  # seconds from the last change's cheap work to the time pass

    def __post_init__(self) -> None:
        if not 0 <= self.upkeep_delay < float("inf"):  # TOML has nan and inf: neither is a delay
            raise ConfigError(f"daemon.upkeep_delay: expected a finite number of seconds, "
                              f"got {self.upkeep_delay!r}")


@dataclass
class Settings:
    roots: list[Path] = field(default_factory=list)
    exclude: list[str] = field(default_factory=lambda: list(DEFAULT_EXCLUDES))
    write_mode: Literal["folder", "cache"] = "folder"
    cache_dir: Path = field(default_factory=default_cache_dir)
    jobs: int = field(default_factory=lambda: os.cpu_count() or 2)
    thumbs: ThumbSettings = field(default_factory=ThumbSettings)
    exiftool: ExiftoolSettings = field(default_factory=ExiftoolSettings)
    clip: ClipSettings = field(default_factory=ClipSettings)
    faces: FaceSettings = field(default_factory=FaceSettings)
    time: TimeSettings = field(default_factory=TimeSettings)
    duplicates: DuplicateSettings = field(default_factory=DuplicateSettings)
    daemon: DaemonSettings = field(default_factory=DaemonSettings)
    source: Path | None = None  # the file these settings came from, if any


def load_settings(path: Path | None = None, environ: typing.Mapping[str, str] | None = None) -> Settings:
    """Read settings from ``path`` (or the default location when it exists) and the environment."""
    environ = os.environ if environ is None else environ
    explicit = path is not None
    path = path if path is not None else default_config_path()
    data: dict[str, Any] = {}
    if path.exists():
        try:
            data = tomllib.loads(path.read_text(encoding="utf-8"))
        except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
            raise ConfigError(f"{path}: not valid TOML: {exc}") from exc
        except OSError as exc:
            raise ConfigError(f"{path}: cannot read: {exc.strerror}") from exc
    elif explicit:
        raise ConfigError(f"{path}: no such configuration file")
    _apply_environment(data, environ)
    settings = _build(Settings, data, prefix="")
    settings.source = path if path.exists() else None
    return settings


def _apply_environment(data: dict[str, Any], environ: typing.Mapping[str, str]) -> None:
    hints = typing.get_type_hints(Settings)
    tables = {name for name, tp in hints.items() if dataclasses.is_dataclass(tp)}
    for var, value in environ.items():
        if not var.startswith("SCANPIX_") or var in NOT_SETTINGS:
            continue
        key = var[len("SCANPIX_"):].lower()
        table, _, sub = key.partition("_")
        if table in tables and sub:
            data.setdefault(table, {})[sub] = _EnvValue(value, var)
        else:
            data[key] = _EnvValue(value, var)


class _EnvValue(str):
    """A raw string from the environment, converted to the field's type when it is built."""

    def __new__(cls, value: str, var: str) -> _EnvValue:
        obj = super().__new__(cls, value)
        obj.var = var  # type: ignore[attr-defined]
        return obj


def _build(cls: type, data: Any, prefix: str) -> Any:
    if not isinstance(data, dict):
        raise ConfigError(f"{prefix.rstrip('.') or 'config'}: expected a table")
    hints = typing.get_type_hints(cls)
    known = {f.name for f in dataclasses.fields(cls) if f.name != "source"}
    for key in data:
        if key not in known:
            raise ConfigError(f"{prefix}{key}: unknown setting")
    values = {k: _convert(hints[k], v, f"{prefix}{k}") for k, v in data.items()}
    return cls(**values)


def _convert(tp: Any, value: Any, key: str) -> Any:
    if dataclasses.is_dataclass(tp):
        return _build(typing.cast(type, tp), value, prefix=f"{key}.")
    origin = typing.get_origin(tp)
    if isinstance(value, _EnvValue):
        value = _parse_env(tp, origin, value)
    if origin is Literal:
        if value not in typing.get_args(tp):
            allowed = ", ".join(repr(a) for a in typing.get_args(tp))
            raise ConfigError(f"{key}: {value!r} is not one of {allowed}")
        return value
    if origin is list:
        (item,) = typing.get_args(tp)
        if not isinstance(value, list):
            raise ConfigError(f"{key}: expected a list")
        return [_convert(item, v, f"{key}[{i}]") for i, v in enumerate(value)]
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        return None if value is None else _convert(args[0], value, key)
    return _scalar(tp, value, key)


def _scalar(tp: Any, value: Any, key: str) -> Any:
    if tp is Path:
        if not isinstance(value, str) or not value:
            raise ConfigError(f"{key}: expected a path")
        return Path(value).expanduser()
    if tp is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{key}: expected true or false")
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{key}: expected an integer")
        if value < 0:
            raise ConfigError(f"{key}: must not be negative")
        return value
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise ConfigError(f"{key}: expected a number")
        if value < 0:
            raise ConfigError(f"{key}: must not be negative")
        return float(value)
    if tp is str:
        if not isinstance(value, str):
            raise ConfigError(f"{key}: expected a string")
        return str(value)
    raise ConfigError(f"{key}: unsupported setting type")  # pragma: no cover - programming error


def _parse_env(tp: Any, origin: Any, raw: _EnvValue) -> Any:
    var = raw.var  # type: ignore[attr-defined]
    text = str(raw)
    if origin is list:
        return [part for part in text.split(":") if part]
    if tp is bool:
        lowered = text.lower()
        if lowered in ("1", "true", "yes", "on"):
            return True
        if lowered in ("0", "false", "no", "off"):
            return False
        raise ConfigError(f"{var}: expected true or false, got {text!r}")
    if tp in (int, float):
        try:
            return tp(text)
        except ValueError:
            raise ConfigError(f"{var}: expected a number, got {text!r}") from None
    return text

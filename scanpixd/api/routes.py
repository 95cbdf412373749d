"""The API's routes: one table, each route validating its input before calling the library.

========  =====================  ===========================================================
Method    Route                  Parameters (query string for GET, JSON object for POST)
========  =====================  ===========================================================
GET       /v1/status             -
GET/POST  /v1/search             q (the query language), limit (1..1000, default 50)
GET/POST  /v1/similar            path (a file in the library or any image), limit
GET/POST  /v1/duplicates         path (optional folder), kind (exact,near,burst; default all)
GET       /v1/people             -
POST      /v1/people/name        id, name
POST      /v1/people/merge       id, into
GET       /v1/people/faces       id
POST      /v1/people/reject      ref (a face, from /v1/people/faces), id
GET/POST  /v1/item               path
GET       /v1/thumbnail          path, size (a configured thumbnail size; default largest)
POST      /v1/reindex            path (a file or folder inside a root)
GET       /v1/openapi.json       the OpenAPI description of all of the above
========  =====================  ===========================================================
"""

from __future__ import annotations

import os
import stat
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import orjson

from scanpixd.errors import ModelUnavailable, QueryError, ScanpixError, UsageError

MAX_LIMIT = 1000
MAX_TEXT = 2000
MAX_THUMBNAIL = 32 * 1024 * 1024


@dataclass
class Response:
    status: int
    body: bytes
    content_type: str = "application/json"
    headers: dict[str, str] = field(default_factory=dict)

    @classmethod
    def json(cls, value: Any, status: int = 200) -> Response:
        return cls(status, orjson.dumps(value, option=orjson.OPT_SERIALIZE_NUMPY))


class ApiError(Exception):
    def __init__(self, status: int, message: str, headers: dict[str, str] | None = None):
        super().__init__(message)
        self.status = status
        self.message = message
        self.headers = headers or {}

    def response(self) -> Response:
        response = Response.json({"error": {"status": self.status, "message": self.message}}, self.status)
        response.headers.update(self.headers)
        return response


class LibraryApi(Protocol):
    """What the routes need from the library (see scanpixd.service.LibraryService)."""

    def status(self) -> dict[str, Any]: ...
    def search(self, text: str, limit: int) -> dict[str, Any]: ...
    def similar(self, path: Path, limit: int) -> dict[str, Any]: ...
    def duplicates(self, path: Path | None, kinds: set[str]) -> dict[str, Any]: ...
    def people(self) -> dict[str, Any]: ...
    def name_person(self, person_id: str, name: str) -> dict[str, Any]: ...
    def merge_people(self, person_id: str, into: str) -> dict[str, Any]: ...
    def person_faces(self, person_id: str) -> dict[str, Any]: ...
    def reject_face(self, face_ref: str, person_id: str) -> dict[str, Any]: ...
    def item(self, path: Path) -> dict[str, Any]: ...
    def thumbnail(self, path: Path, size: int | None) -> Path: ...
    def reindex(self, path: Path) -> dict[str, Any]: ...


Handler = Callable[[dict[str, Any]], Response]


class Router:
    def __init__(self, api: LibraryApi):
        self.api = api
        self.routes: dict[tuple[str, str], Handler] = {}
        for methods, route, handler, _ in self.table():
            for method in methods:
                self.routes[(method, route)] = handler

    def table(self) -> list[tuple[tuple[str, ...], str, Handler, dict[str, str]]]:
        """(methods, route, handler, {parameter: description}) for every route."""
        return [
            (("GET",), "/v1/status", self._status, {}),
            (("GET", "POST"), "/v1/search", self._search,
             {"q": "query text (required)", "limit": "maximum results (1-1000)"}),
            (("GET", "POST"), "/v1/similar", self._similar,
             {"path": "image file (required)", "limit": "maximum results (1-1000)"}),
            (("GET", "POST"), "/v1/duplicates", self._duplicates,
             {"path": "folder to look in", "kind": "comma-separated: exact, near, burst"}),
            (("GET",), "/v1/people", self._people, {}),
            (("POST",), "/v1/people/name", self._name_person,
             {"id": "person id (required)", "name": "new name (required)"}),
            (("GET",), "/v1/people/faces", self._person_faces, {"id": "person id (required)"}),
            (("POST",), "/v1/people/reject", self._reject_face,
             {"ref": "face reference (required)", "id": "person it is not (required)"}),
            (("POST",), "/v1/people/merge", self._merge_people,
             {"id": "person to merge (required)", "into": "person that remains (required)"}),
            (("GET", "POST"), "/v1/item", self._item, {"path": "file (required)"}),
            (("GET",), "/v1/thumbnail", self._thumbnail,
             {"path": "file (required)", "size": "thumbnail size in pixels"}),
            (("POST",), "/v1/reindex", self._reindex, {"path": "file or folder (required)"}),
            (("GET",), "/v1/openapi.json", self._openapi, {}),
        ]

    def handle(self, method: str, route: str, params: dict[str, str], body: Any) -> Response:
        route = route.rstrip("/") or "/"
        handler = self.routes.get((method, route))
        if handler is None:
            allowed = sorted(m for (m, r) in self.routes if r == route)
            if allowed:
                raise ApiError(405, f"{method[:20]} is not allowed on {route}; use {', '.join(allowed)}",
                               {"Allow": ", ".join(allowed)})
            raise ApiError(404, f"no such route: {route[:200]}")
        if body is not None and not isinstance(body, dict):
            raise ApiError(400, "request body must be a JSON object")
        args: dict[str, Any] = dict(params)
        args.update(body or {})
        try:
            return handler(args)
        except QueryError as exc:
            raise ApiError(400, f"bad query: {exc}") from None
        except ModelUnavailable as exc:
            raise ApiError(503, str(exc)) from None
        except PermissionError as exc:
            raise ApiError(403, str(exc)) from None
        except FileNotFoundError as exc:
            raise ApiError(404, str(exc)) from None
        except (UsageError, ScanpixError) as exc:
            raise ApiError(400, str(exc)) from None
        except OSError as exc:  # a name too long, a folder unreadable: about this request only
            raise ApiError(404, f"cannot read {exc.filename or 'the file'}: {exc.strerror}") from None

    # -- handlers -------------------------------------------------------------------
    def _status(self, args: dict[str, Any]) -> Response:
        _only(args, set())
        return Response.json(self.api.status())

    def _search(self, args: dict[str, Any]) -> Response:
        _only(args, {"q", "limit"})
        return Response.json(self.api.search(_text(args, "q"), _limit(args)))

    def _similar(self, args: dict[str, Any]) -> Response:
        _only(args, {"path", "limit"})
        return Response.json(self.api.similar(_path(args), _limit(args)))

    def _duplicates(self, args: dict[str, Any]) -> Response:
        _only(args, {"path", "kind"})
        path = _path(args) if args.get("path") not in (None, "") else None
        kinds = {k.strip() for k in str(args.get("kind") or "exact,near,burst").split(",") if k.strip()}
        if not kinds or not kinds <= {"exact", "near", "burst"}:
            raise ApiError(400, "kind must list exact, near and/or burst")
        return Response.json(self.api.duplicates(path, kinds))

    def _people(self, args: dict[str, Any]) -> Response:
        _only(args, set())
        return Response.json(self.api.people())

    def _name_person(self, args: dict[str, Any]) -> Response:
        _only(args, {"id", "name"})
        return Response.json(self.api.name_person(_text(args, "id"), _text(args, "name")))

    def _person_faces(self, args: dict[str, Any]) -> Response:
        _only(args, {"id"})
        return Response.json(self.api.person_faces(_text(args, "id")))

    def _reject_face(self, args: dict[str, Any]) -> Response:
        _only(args, {"ref", "id"})
        return Response.json(self.api.reject_face(_text(args, "ref"), _text(args, "id")))

    def _merge_people(self, args: dict[str, Any]) -> Response:
        _only(args, {"id", "into"})
        return Response.json(self.api.merge_people(_text(args, "id"), _text(args, "into")))

    def _item(self, args: dict[str, Any]) -> Response:
        _only(args, {"path"})
        return Response.json(self.api.item(_path(args)))

    def _thumbnail(self, args: dict[str, Any]) -> Response:
        _only(args, {"path", "size"})
        size = None
        if args.get("size") not in (None, ""):
            size = _int(args, "size", 1, 100_000)
        data, content_type = _read_thumbnail(self.api.thumbnail(_path(args), size))
        return Response(200, data, content_type)

    def _reindex(self, args: dict[str, Any]) -> Response:
        _only(args, {"path"})
        return Response.json(self.api.reindex(_path(args)), status=202)

    def _openapi(self, args: dict[str, Any]) -> Response:
        _only(args, set())
        return Response.json(openapi(self))


def _only(args: dict[str, Any], allowed: set[str]) -> None:
    unknown = sorted(set(args) - allowed)
    if unknown:
        raise ApiError(400, f"unknown parameter: {unknown[0][:100]!r}")


def _text(args: dict[str, Any], key: str) -> str:
    value = args.get(key)
    if not isinstance(value, str) or not value.strip():
        raise ApiError(400, f"{key} is required and must be a non-empty string")
    if len(value) > MAX_TEXT:
        raise ApiError(400, f"{key} is longer than {MAX_TEXT} characters")
    if "\x00" in value:
        raise ApiError(400, f"{key} contains a NUL character")
    return value


def _int(args: dict[str, Any], key: str, low: int, high: int) -> int:
    """An integer from JSON, or a string of digits from a query string; nothing looser."""
    value = args.get(key)
    number: int | None = None
    if isinstance(value, int) and not isinstance(value, bool):
        number = value
    elif isinstance(value, str) and value.isascii() and value.isdigit() and len(value) < 10:
        number = int(value)
    if number is None or not low <= number <= high:
        raise ApiError(400, f"{key} must be an integer from {low} to {high}")
    return number


def _limit(args: dict[str, Any]) -> int:
    return 50 if args.get("limit") in (None, "") else _int(args, "limit", 1, MAX_LIMIT)


def _path(args: dict[str, Any]) -> Path:
    text = _text(args, "path")
    path = Path(text)
    if not path.is_absolute():
        raise ApiError(400, "path must be absolute")
    return path


def _read_thumbnail(path: Path) -> tuple[bytes, str]:
    """The bytes and content type of a thumbnail, only if it really is one.

    The asset name comes from a sidecar, which a synced or copied library may have written
    anywhere; a ``..`` in it, a symlink, or anything that is not a WebP or JPEG image must
    never turn this route into a way to read other files.
    """
    missing = FileNotFoundError(f"{path.name}: no thumbnail")
    if ".." in path.parts:
        raise missing
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
    except OSError:
        raise missing from None
    with os.fdopen(fd, "rb") as handle:
        info = os.fstat(handle.fileno())
        if not stat.S_ISREG(info.st_mode) or info.st_size > MAX_THUMBNAIL:
            raise missing
        data = handle.read(MAX_THUMBNAIL)
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return data, "image/webp"
    if data[:3] == b"\xff\xd8\xff":
        return data, "image/jpeg"
    raise missing


def openapi(router: Router) -> dict[str, Any]:
    """An OpenAPI 3 description generated from the route table, so it cannot drift."""
    paths: dict[str, Any] = {}
    for methods, route, _, params in router.table():
        for method in methods:
            op: dict[str, Any] = {"responses": {"200": {"description": "OK"},
                                                "400": {"description": "bad request"}}}
            if method == "GET":
                op["parameters"] = [
                    {"name": k, "in": "query", "required": "(required)" in v,
                     "description": v, "schema": {"type": "string"}} for k, v in params.items()]
            else:
                op["requestBody"] = {"content": {"application/json": {"schema": {
                    "type": "object", "additionalProperties": False,
                    "properties": {k: {"type": "string", "description": v} for k, v in params.items()},
                    "required": [k for k, v in params.items() if "(required)" in v]}}}}
            paths.setdefault(route, {})[method.lower()] = op
    return {"openapi": "3.0.3", "info": {"title": "scanpixd", "version": "1"}, "paths": paths}

"""Where ``scanpix-query`` gets its answers: the daemon's socket, or the sidecars directly.

Both sides implement the same methods with the same result shapes, so the output code
never knows which one answered (and the tests compare them).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from scanpixd.api.client import Client, DaemonUnavailable
from scanpixd.config import Settings


class RemoteLibrary:
    """The daemon, through its API."""

    def __init__(self, client: Client):
        self.client = client

    def status(self) -> dict[str, Any]:
        return self.client.get("/v1/status")

    def search(self, text: str, limit: int) -> dict[str, Any]:
        return self.client.post("/v1/search", q=text, limit=limit)

    def similar(self, path: Path, limit: int) -> dict[str, Any]:
        return self.client.post("/v1/similar", path=str(path), limit=limit)

    def duplicates(self, path: Path | None, kinds: set[str]) -> dict[str, Any]:
        return self.client.post("/v1/duplicates", path=str(path) if path else None,
                                kind=",".join(sorted(kinds)))

    def people(self) -> dict[str, Any]:
        return self.client.get("/v1/people")

    def name_person(self, person_id: str, name: str) -> dict[str, Any]:
        return self.client.post("/v1/people/name", id=person_id, name=name)

    def merge_people(self, person_id: str, into: str) -> dict[str, Any]:
        return self.client.post("/v1/people/merge", id=person_id, into=into)

    def person_faces(self, person_id: str) -> dict[str, Any]:
        return self.client.get("/v1/people/faces", id=person_id)

    def reject_face(self, face_ref: str, person_id: str) -> dict[str, Any]:
        return self.client.post("/v1/people/reject", ref=face_ref, id=person_id)

    def item(self, path: Path) -> dict[str, Any]:
        return self.client.post("/v1/item", path=str(path))

    def reindex(self, path: Path) -> dict[str, Any]:
        return self.client.post("/v1/reindex", path=str(path))

    def close(self) -> None:
        pass


def socket_path(settings: Settings) -> Path:
    override = os.environ.get("SCANPIX_SOCKET")
    return Path(override) if override else settings.daemon.socket


def connect(settings: Settings) -> RemoteLibrary | None:
    """The daemon, if its socket answers."""
    client = Client(socket_path(settings))
    try:
        client.get("/v1/status")
    except DaemonUnavailable:
        return None
    return RemoteLibrary(client)


def open_backend(settings: Settings, direct: bool = False) -> Any:
    """The daemon when its socket answers (unless ``direct``), else the sidecars."""
    remote = None if direct else connect(settings)
    if remote is not None:
        return remote
    from scanpixd.service import LibraryService

    service = LibraryService(settings)
    service.load(settings.roots)
    return service

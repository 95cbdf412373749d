"""The one owner of the ``.scanpix/`` layout.  Nothing outside this package builds its paths.

:class:`Store` decides *where* a folder's data lives (in the folder, or under the cache
directory when the folder is read-only or the user opted out) and hands out
:class:`FolderStore` objects that read and write it.
"""

from __future__ import annotations

import os
import threading
from pathlib import Path

from scanpixd.config import Settings
from scanpixd.store.folder import DATA_DIR_NAME, FolderStore, record_file_name

__all__ = ["DATA_DIR_NAME", "FolderStore", "Store", "record_file_name", "is_data_dir"]


def is_data_dir(name: str) -> bool:
    return name == DATA_DIR_NAME


class Store:
    def __init__(self, settings: Settings):
        self.write_mode = settings.write_mode
        self.cache_dir = settings.cache_dir
        self._folders: dict[Path, FolderStore] = {}
        self._lock = threading.Lock()

    def folder(self, folder: Path) -> FolderStore:
        """The store of one media folder (``folder`` is absolute)."""
        with self._lock:
            found = self._folders.get(folder)
            if found is None:
                found = self._folders[folder] = self._make(folder)
            return found

    def forget(self, folder: Path) -> None:
        """Drop cached placement decisions (after a folder became writable, say)."""
        with self._lock:
            self._folders.pop(folder, None)

    def _make(self, folder: Path) -> FolderStore:
        in_folder = folder / DATA_DIR_NAME
        cached = self.cache_location(folder)
        if self.write_mode == "cache" or not _writable(folder, in_folder):
            return FolderStore(folder, cached, [cached, in_folder], self.cache_dir)
        return FolderStore(folder, in_folder, [in_folder], self.cache_dir)

    def cache_location(self, folder: Path) -> Path:
        """The same layout under the cache directory, mirroring the folder's absolute path."""
        return self.cache_dir / "tree" / str(folder).lstrip("/") / DATA_DIR_NAME

    def known_folders(self, path: Path, recursive: bool = True) -> list[Path]:
        """Folders at or below ``path`` whose data lies in the cache directory.

        Used when ``path`` itself is gone (moved away, deleted): in-folder data left with
        it, but cached data must still be found to be reconciled.
        """
        base = self.cache_location(path).parent
        if not base.is_dir():
            return []
        found = []
        candidates = base.rglob(DATA_DIR_NAME) if recursive else [base / DATA_DIR_NAME]
        for data_dir in candidates:
            if data_dir.is_dir():
                rel = data_dir.parent.relative_to(base)
                found.append(path / rel)
        return found

    def library_dir(self, root: Path) -> Path:
        """Library-wide data users create (people's names): lives in the root so it syncs."""
        return self.folder(root).data_dir / "library"


def _writable(folder: Path, data_dir: Path) -> bool:
    if data_dir.is_dir():
        return os.access(data_dir, os.W_OK | os.X_OK)
    return os.access(folder, os.W_OK | os.X_OK)

"""Model checkpoints read as numpy arrays, memory-mapped, without importing torch.

Two formats are read: ``torch.save``'s zip archive (a ``data.pkl`` that names the tensors,
each stored uncompressed as ``data/<key>``) and ``.safetensors`` (a JSON header, then the
raw tensors).  In both the tensors' bytes lie whole in the file, so each array is a view
of one read-only map of it: pages nobody reads never become resident.

The pickle is read by an unpickler that knows only the few names a state dict is made of
(tensor rebuilds, storages, ``OrderedDict``) and refuses everything else, so reading a
checkpoint can never run code from it.  Formats this does not read (legacy pre-zip torch
files, TorchScript archives, compressed members) raise :class:`CheckpointFormatError`; the
caller then takes torch's own loader.
"""

from __future__ import annotations

import collections
import io
import json
import mmap
import pickle
import struct
import zipfile
from pathlib import Path
from typing import Any

import numpy as np

__all__ = ["CheckpointFormatError", "read_arrays"]

_TORCH_DTYPES: dict[str, np.dtype[Any]] = {
    "FloatStorage": np.dtype("<f4"), "DoubleStorage": np.dtype("<f8"),
    "HalfStorage": np.dtype("<f2"), "BFloat16Storage": np.dtype("<u2"),
    "LongStorage": np.dtype("<i8"), "IntStorage": np.dtype("<i4"),
    "ShortStorage": np.dtype("<i2"), "CharStorage": np.dtype("i1"),
    "ByteStorage": np.dtype("u1"), "BoolStorage": np.dtype("?"),
}
_SAFETENSORS_DTYPES: dict[str, np.dtype[Any]] = {
    "F32": np.dtype("<f4"), "F64": np.dtype("<f8"), "F16": np.dtype("<f2"),
    "BF16": np.dtype("<u2"), "I64": np.dtype("<i8"), "I32": np.dtype("<i4"),
    "I16": np.dtype("<i2"), "I8": np.dtype("i1"), "U8": np.dtype("u1"), "BOOL": np.dtype("?"),
}
_ZIP_LOCAL_HEADER = struct.Struct("<4s5H3I2H")  # signature .. name length, extra length


class CheckpointFormatError(ValueError):
    """The file is not a checkpoint this module can read (torch's loader may still)."""


def read_arrays(path: Path) -> dict[str, np.ndarray]:
    """Every tensor of the checkpoint's state dict by name (``state_dict`` wrappers and a
    ``module.`` prefix removed), as read-only arrays; bfloat16 ones are widened to float32."""
    path = Path(path)
    state = _read_safetensors(path) if path.suffix == ".safetensors" else _read_torch_zip(path)
    if isinstance(state, dict) and isinstance(state.get("state_dict"), dict):
        state = state["state_dict"]
    if not isinstance(state, dict) or not state:
        raise CheckpointFormatError(f"{path}: holds no state dict")
    arrays = {}
    for key, value in state.items():
        if isinstance(value, _Tensor):
            name = key[len("module."):] if isinstance(key, str) and key.startswith("module.") else key
            arrays[str(name)] = value.array
    if not arrays:
        raise CheckpointFormatError(f"{path}: holds no tensors")
    return arrays


# -- torch.save zip archives ----------------------------------------------------------------
class _Tensor:
    """A tensor from the pickle: its array, once the storage it views is known."""

    __slots__ = ("array",)

    def __init__(self, array: np.ndarray):
        self.array = array


def _read_torch_zip(path: Path) -> Any:
    try:
        archive = zipfile.ZipFile(path)
    except (OSError, zipfile.BadZipFile) as exc:
        raise CheckpointFormatError(f"{path}: not a torch zip checkpoint ({exc})") from exc
    with archive, open(path, "rb") as fh:
        pickles = [n for n in archive.namelist() if n.endswith("/data.pkl")]
        if len(pickles) != 1:
            raise CheckpointFormatError(f"{path}: no single data.pkl (a TorchScript archive?)")
        prefix = pickles[0][: -len("data.pkl")]
        if prefix + "byteorder" in archive.namelist() and \
                archive.read(prefix + "byteorder").strip() not in (b"little", b""):
            raise CheckpointFormatError(f"{path}: big-endian tensors")
        mapped = mmap.mmap(fh.fileno(), 0, access=mmap.ACCESS_READ)
        storages = _StorageReader(archive, mapped, prefix, path)
        try:
            return _StateUnpickler(archive.read(pickles[0]), storages).load()
        except CheckpointFormatError:
            raise
        except Exception as exc:  # a pickle that is not a plain state dict
            raise CheckpointFormatError(f"{path}: unreadable state dict ({exc})") from exc


class _StorageReader:
    """Flat arrays over the archive's uncompressed ``data/<key>`` members, one per key."""

    def __init__(self, archive: zipfile.ZipFile, mapped: mmap.mmap, prefix: str, path: Path):
        self.archive, self.mapped, self.prefix, self.path = archive, mapped, prefix, path
        self.cache: dict[str, np.ndarray] = {}

    def storage(self, key: str, dtype: np.dtype[Any]) -> np.ndarray:
        if key not in self.cache:
            info = self.archive.getinfo(f"{self.prefix}data/{key}")
            if info.compress_type != zipfile.ZIP_STORED:
                raise CheckpointFormatError(f"{self.path}: compressed tensor data")
            header = _ZIP_LOCAL_HEADER.unpack_from(self.mapped, info.header_offset)
            start = info.header_offset + _ZIP_LOCAL_HEADER.size + header[-2] + header[-1]
            count = info.file_size // dtype.itemsize
            self.cache[key] = np.frombuffer(self.mapped, dtype=dtype, count=count, offset=start)
        return self.cache[key]


class _StateUnpickler(pickle.Unpickler):
    """Rebuilds a state dict's tensors as array views; refuses every other global."""

    def __init__(self, data: bytes, storages: _StorageReader):
        super().__init__(io.BytesIO(data))
        self.storages = storages

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) == ("collections", "OrderedDict"):
            return collections.OrderedDict
        if module == "torch._utils" and name == "_rebuild_tensor_v2":
            return _rebuild_tensor
        if module == "torch._utils" and name == "_rebuild_parameter":
            return _rebuild_parameter
        if module == "torch" and name in _TORCH_DTYPES:
            return _StorageType(name)
        raise CheckpointFormatError(f"the checkpoint's pickle names {module}.{name}")

    def persistent_load(self, pid: Any) -> Any:
        if not (isinstance(pid, tuple) and len(pid) >= 3 and pid[0] == "storage"
                and isinstance(pid[1], _StorageType)):
            raise CheckpointFormatError(f"unknown persistent id {pid!r:.80}")
        kind: _StorageType = pid[1]
        return _Storage(self.storages.storage(str(pid[2]), _TORCH_DTYPES[kind.name]), kind.name)


class _StorageType:
    __slots__ = ("name",)

    def __init__(self, name: str):
        self.name = name


class _Storage:
    __slots__ = ("flat", "kind")

    def __init__(self, flat: np.ndarray, kind: str):
        self.flat, self.kind = flat, kind


def _rebuild_tensor(storage: _Storage, offset: int, size: tuple[int, ...],
                    stride: tuple[int, ...], *_: Any) -> _Tensor:
    itemsize = storage.flat.itemsize
    if offset < 0 or any(s < 0 for s in stride):
        raise CheckpointFormatError("negative tensor offset or stride")
    last = offset + sum((n - 1) * s for n, s in zip(size, stride, strict=True) if n > 0)
    if size and min(size) > 0 and last >= storage.flat.size:
        raise CheckpointFormatError("a tensor reaches past its storage")
    array = np.lib.stride_tricks.as_strided(
        storage.flat[offset:], shape=tuple(size), strides=tuple(s * itemsize for s in stride),
        writeable=False)
    if storage.kind == "BFloat16Storage":
        array = _widen_bfloat16(array)
    return _Tensor(array)


def _rebuild_parameter(tensor: _Tensor, *_: Any) -> _Tensor:
    return tensor


def _widen_bfloat16(bits: np.ndarray) -> np.ndarray:
    """bfloat16 is the top half of a float32: shift it back into place."""
    return (np.ascontiguousarray(bits).astype(np.uint32) << 16).view(np.float32)


# -- safetensors ------------------------------------------------------------------------------
def _read_safetensors(path: Path) -> dict[str, _Tensor]:
    with open(path, "rb") as fh:
        try:
            mapped = mmap.mmap(fh.fileno(), 0, access=mmap.ACCESS_READ)
        except ValueError as exc:  # an empty file
            raise CheckpointFormatError(f"{path}: empty") from exc
    if len(mapped) < 8:
        raise CheckpointFormatError(f"{path}: too short for safetensors")
    (length,) = struct.unpack_from("<Q", mapped, 0)
    if length > len(mapped) - 8:
        raise CheckpointFormatError(f"{path}: header longer than the file")
    try:
        header = json.loads(bytes(mapped[8:8 + length]))
    except ValueError as exc:
        raise CheckpointFormatError(f"{path}: unreadable safetensors header") from exc
    base = 8 + length
    tensors = {}
    for name, entry in header.items():
        if name == "__metadata__":
            continue
        tensors[name] = _Tensor(_safetensor(mapped, base, entry, path))
    return tensors


def _safetensor(mapped: mmap.mmap, base: int, entry: Any, path: Path) -> np.ndarray:
    try:
        kind = str(entry["dtype"])
        dtype = _SAFETENSORS_DTYPES[kind]
        shape = tuple(int(n) for n in entry["shape"])
        start, end = (int(n) for n in entry["data_offsets"])
    except (KeyError, TypeError, ValueError) as exc:
        raise CheckpointFormatError(f"{path}: unsupported safetensors entry {entry!r:.80}") from exc
    count = int(np.prod(shape, dtype=np.int64))
    if start < 0 or end - start != count * dtype.itemsize or base + end > len(mapped):
        raise CheckpointFormatError(f"{path}: a tensor's bytes do not fit its shape")
    array = np.frombuffer(mapped, dtype=dtype, count=count, offset=base + start).reshape(shape)
    return _widen_bfloat16(array) if kind == "BF16" else array

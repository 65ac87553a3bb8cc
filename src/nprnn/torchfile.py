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
import pickle
import warnings
import zipfile

import numpy as np

_STORAGE_DTYPES = {
    "DoubleStorage": np.float64, "FloatStorage": np.float32, "HalfStorage": np.float16, "BFloat16Storage": "bfloat16",
    "LongStorage": np.int64, "IntStorage": np.int32, "ShortStorage": np.int16, "CharStorage": np.int8,
    "ByteStorage": np.uint8, "BoolStorage": np.bool_,
}


class _StorageType:
    def __init__(self, name):
        self.name = name
        self.dtype = _STORAGE_DTYPES[name]


def _rebuild_parameter(data, requires_grad=None, backward_hooks=None, *_ignored):
    return data


class _RestrictedUnpickler(pickle.Unpickler):
    def __init__(self, file, archive, prefix):
        super().__init__(file)
        self.archive = archive
        self.prefix = prefix
        self.storages = {}
        self.widened = set()  # ids of arrays rebuilt from float16 / bfloat16 storages
        self.allowed = {
            ("collections", "OrderedDict"): collections.OrderedDict,
            ("torch._utils", "_rebuild_tensor_v2"): self._rebuild_tensor,
            ("torch._utils", "_rebuild_parameter"): _rebuild_parameter,
        }

    def _rebuild_tensor(self, storage, storage_offset, size, stride, *_ignored):
        """A tensor as a strided view of its storage, copied out (views become arrays)."""
        data, name = storage
        size, stride = tuple(int(n) for n in size), tuple(int(n) for n in stride)
        if size and min(size) > 0:
            last = storage_offset + sum((n - 1) * st for n, st in zip(size, stride))
            if storage_offset < 0 or min(stride) < 0 or last >= data.size:
                raise pickle.UnpicklingError(f"a tensor reaches outside its storage ({last} >= {data.size})")
        base = data[storage_offset:] if data.size else data
        view = np.lib.stride_tricks.as_strided(base, shape=size, strides=tuple(st * data.itemsize for st in stride))
        out = np.array(view, dtype=np.float32 if name == "HalfStorage" else view.dtype, copy=True)
        if name in ("HalfStorage", "BFloat16Storage"):
            self.widened.add(id(out))
        return out

    def find_class(self, module, name):
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

    def persistent_load(self, pid):
        if not (isinstance(pid, tuple) and len(pid) == 5 and pid[0] == "storage" and isinstance(pid[1], _StorageType)):
            raise pickle.UnpicklingError(f"unexpected persistent id {pid!r}")
        _, stype, key, _location, numel = pid
        if key not in self.storages:
            try:
                raw = self.archive.read(f"{self.prefix}/data/{key}")
            except KeyError as exc:
                raise pickle.UnpicklingError(f"storage {key} is missing from the archive") from exc
            if stype.dtype == "bfloat16":  # the top 16 bits of a float32
                data = (np.frombuffer(raw, dtype="<u2").astype(np.uint32) << 16).view(np.float32)
            else:
                data = np.frombuffer(raw, dtype=np.dtype(stype.dtype).newbyteorder("<"))
            if data.size != numel:
                raise pickle.UnpicklingError(f"storage {key} holds {data.size} elements, the pickle says {numel}")
            self.storages[key] = (data, stype.name)
        return self.storages[key]

def load_torch_state_dict(path) -> dict:
    """``{name: ndarray}`` from a file written by ``torch.save(state_dict, path)``.

    Raises ValueError for anything that is not such a file (a legacy or truncated file, a
    pickled model, a pickle that asks for other code) without executing any of it.
    """
    try:
        archive = zipfile.ZipFile(path)
    except zipfile.BadZipFile as exc:
        raise ValueError(f"{path} is not a PyTorch zip archive (saved by torch>=1.6?) or it is truncated: {exc}") from exc
    with archive:
        pkl_names = [n for n in archive.namelist() if n.endswith("/data.pkl") and n.count("/") == 1]
        if len(pkl_names) != 1:
            raise ValueError(f"{path} is a zip file but not a PyTorch checkpoint (no <name>/data.pkl)")
        prefix = pkl_names[0].split("/")[0]
        try:
            order = archive.read(f"{prefix}/byteorder").decode().strip()
        except KeyError:
            order = "little"
        if order != "little":
            raise ValueError(f"{path} was saved on a big-endian machine, which is not supported")
        try:
            unpickler = _RestrictedUnpickler(io.BytesIO(archive.read(pkl_names[0])), archive, prefix)
            obj = unpickler.load()
        except (pickle.UnpicklingError, EOFError, zipfile.BadZipFile, ValueError, TypeError) as exc:
            raise ValueError(f"{path}: {exc}") from exc
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

"""Weights and checkpoints on disk: safetensors (default) or ``.npz``, never pickle.

* :func:`save` / :func:`load_into`: a module's parameters under PyTorch's names, so a
  safetensors file moves between nprnn and ``torch.nn`` by name.
* :func:`save_checkpoint` / :func:`load_checkpoint`: model, optimizer state, step and
  random-generator states in one safetensors file (JSON metadata in its header).

Files are written atomically (a temporary file in the same folder, flushed, then renamed
over the target), so a crash mid-write leaves the previous file intact; only a regular file
is replaced (a character device such as ``/dev/null`` is written into; a directory, FIFO,
socket or block device is refused, see :func:`atomic_write`).  Loading checks
everything first — format, keys, shapes, dtypes, optimizer state — and changes nothing
unless all of it is right.  safetensors is an optional dependency (``pip install
'nprnn[train]'``); ``.npz`` needs only NumPy.
"""
from __future__ import annotations

import hashlib
import io
import json
import os
import secrets
import stat
import warnings
import zipfile
from typing import Any, Optional, Union

import numpy as np

from ..nn.module import IncompatibleKeys, Module

PathArg = Union[str, "os.PathLike[str]"]  # a path as str or pathlib.Path

CHECKPOINT_FORMAT = "nprnn.checkpoint"
CHECKPOINT_VERSION = 1


def _safetensors() -> Any:
    try:
        import safetensors.numpy as st
    except ImportError as exc:  # pragma: no cover - depends on the environment
        raise ImportError("safetensors is needed for .safetensors files: pip install 'nprnn[train]' "
                          "(or use a .npz path)") from exc
    return st


def atomic_write(path: PathArg, data: bytes) -> None:
    """Write ``data`` to ``path`` so that readers see the old file or the new one, never a part.

    A symlink is followed (its target is replaced, the link stays); an existing file keeps
    its permissions, a new one gets the usual ones (0666 less the umask).  The temporary
    file is named after this process, and temporary files that a killed writer left
    beside the target are removed.

    Only a regular file is ever replaced.  A character device (``/dev/null``, a terminal)
    is written into in place, as ``open()`` would; any other node that exists there (a
    directory, a FIFO, a socket, a block device) is refused with an error that names it,
    and stays as it was."""
    given = os.fspath(path)
    path = os.path.realpath(given)
    try:
        st_mode = os.stat(path).st_mode
    except FileNotFoundError:
        st_mode = None
    if st_mode is not None and not stat.S_ISREG(st_mode):
        if stat.S_ISCHR(st_mode):
            with open(path, "wb") as f:
                f.write(data)
            return
        what = ("a directory" if stat.S_ISDIR(st_mode) else "a FIFO (named pipe)" if stat.S_ISFIFO(st_mode)
                else "a socket" if stat.S_ISSOCK(st_mode) else "a block device" if stat.S_ISBLK(st_mode)
                else "not a regular file")
        raise ValueError(f"refusing to write {given!r}: it is {what}, and only a regular file is replaced")
    folder, base = os.path.split(path)
    if not os.path.isdir(folder):
        raise FileNotFoundError(f"cannot write {given!r}: no such directory {os.path.dirname(given) or folder!r}")
    _remove_stale_temporaries(folder, base)
    tmp = os.path.join(folder, f".tmp-{os.getpid()}-{secrets.token_hex(4)}-{base}")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0), 0o666)
    try:
        if st_mode is not None and hasattr(os, "fchmod"):  # the existing file's permissions
            os.fchmod(fd, st_mode & 0o7777)
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise


def _remove_stale_temporaries(folder: str, base: str) -> None:
    """Remove ``.tmp-<pid>-<token>-<base>`` files whose writing process no longer runs."""
    if os.name != "posix":
        return
    suffix = "-" + base
    try:
        names = [n for n in os.listdir(folder) if n.startswith(".tmp-") and n.endswith(suffix)]
    except OSError:
        return
    for name in names:
        pid = name[len(".tmp-"):].split("-", 1)[0]
        if not pid.isdigit() or int(pid) == os.getpid():
            continue
        try:
            os.kill(int(pid), 0)
        except ProcessLookupError:  # its writer is gone
            try:
                os.unlink(os.path.join(folder, name))
            except OSError:
                pass
        except OSError:  # alive (another user's): leave it
            pass


FORMATS = ("safetensors", "npz", "torch")


def format_of(path: PathArg, fmt: Optional[str] = None) -> str:
    """The file format: given, or from the extension (.npz, .pt/.pth, else safetensors)."""
    if fmt is None:
        p = os.fspath(path).lower()
        fmt = "npz" if p.endswith(".npz") else "torch" if p.endswith((".pt", ".pth")) else "safetensors"
    if fmt not in FORMATS:
        raise ValueError(f"format must be one of {', '.join(FORMATS)}, got {fmt!r}")
    return fmt


def read_tensors(path: PathArg, format: Optional[str] = None) -> dict[str, np.ndarray]:
    """``{name: array}`` from a safetensors, .npz or PyTorch state-dict file (the latter
    read without PyTorch, see :mod:`nprnn.torchfile`)."""
    fmt = format_of(path, format)
    if fmt == "torch":
        from .torchfile import load_torch_state_dict

        if not os.path.isfile(os.fspath(path)):
            raise FileNotFoundError(f"no such file: {path}")
        return load_torch_state_dict(path)
    return _decode(path, fmt)[0]


def _encode(tensors: dict[str, np.ndarray], metadata: dict[str, str], fmt: str) -> bytes:
    tensors = {k: np.ascontiguousarray(v) for k, v in tensors.items()}
    if fmt == "safetensors":
        return bytes(_safetensors().save(tensors, metadata=metadata or None))
    buf = io.BytesIO()
    extra = {"__metadata__": np.frombuffer(json.dumps(metadata).encode(), dtype=np.uint8)} if metadata else {}
    np.savez(buf, **tensors, **extra)  # type: ignore[arg-type]
    return buf.getvalue()


# what a damaged file raises while it is read (JSONDecodeError is a ValueError; zipfile raises
# NotImplementedError for an unknown version and RuntimeError for a member flagged encrypted)
_READ_ERRORS = (ValueError, OSError, KeyError, EOFError, zipfile.BadZipFile, RuntimeError, TypeError, OverflowError,
                UnicodeDecodeError, AttributeError, IndexError)


def _unreadable(path: PathArg, fmt: str, exc: BaseException) -> Optional[ValueError]:
    """The error for a file that cannot be read as ``fmt``, or None if ``exc`` is another
    kind of failure (safetensors raises its own error type)."""
    if isinstance(exc, _READ_ERRORS) or type(exc).__name__ == "SafetensorError":
        return ValueError(f"{path} is not a readable {fmt} file (truncated or corrupted?): {exc}")
    return None


def _decode(path: PathArg, fmt: str) -> tuple[dict[str, np.ndarray], dict[str, str]]:
    """``(tensors, metadata)`` from a file; any problem becomes a ValueError naming the file."""
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"no such file: {path}")
    try:
        if fmt == "safetensors":
            _safetensors()
            from safetensors import safe_open

            with safe_open(path, framework="np") as f:
                metadata = f.metadata() or {}
                tensors = {k: f.get_tensor(k) for k in f.keys()}
        else:
            with np.load(path, allow_pickle=False) as z:
                tensors = {k: z[k] for k in z.files}
            meta = tensors.pop("__metadata__", None)
            metadata = json.loads(meta.tobytes().decode()) if meta is not None else {}
    except Exception as exc:
        err = _unreadable(path, fmt, exc)
        if err is None:
            raise
        raise err from exc
    return tensors, metadata


def save(module: Module, path: PathArg, format: Optional[str] = None) -> None:
    """Write ``module``'s parameters (PyTorch names, dtypes kept) to ``path`` atomically.
    ``format`` is 'safetensors' (default) or 'npz' (default for a ``.npz`` path)."""
    storages = sorted({getattr(m, "storage", "") for m in module.modules()} - {""})  # (a quantized model's)
    write_tensors(path, dict(module.state_dict()), format, {"storage": ",".join(storages)} if storages else None)


def write_tensors(path: PathArg, tensors: dict[str, Any], format: Optional[str] = None,
                  metadata: Optional[dict[str, str]] = None) -> None:
    """Write named arrays atomically as safetensors or .npz (``metadata``: more of the
    safetensors header's entries)."""
    fmt = format_of(path, format)
    if fmt == "torch":
        raise ValueError("writing PyTorch .pt files needs PyTorch's pickle format; write .safetensors instead "
                         "(PyTorch reads it with safetensors.torch.load_file)")
    atomic_write(path, _encode(tensors, {"format": "nprnn.weights", **(metadata or {})}, fmt))


def load_into(module: Module, path: PathArg, strict: bool = True, format: Optional[str] = None) -> IncompatibleKeys:
    """Load parameters saved by :func:`save`, by ``safetensors.torch.save_file`` of a
    PyTorch state dict, or by ``torch.save(model.state_dict(), path)`` (.pt/.pth, read
    without PyTorch) into ``module``.  Missing or unexpected keys (when strict), shape and
    dtype mismatches are all reported at once; on error the module is unchanged."""
    tensors = read_tensors(path, format)
    converted, result = module.check_state_dict(tensors, strict=strict, check_dtype=True)
    module.apply_state_dict(converted)
    return result


def _generators(model: Module, rngs: dict[str, Any] | None) -> dict[str, Any]:
    """Every generator whose state a resumed run needs: the modules' own (dropout masks)
    and the caller's named ones."""
    gens = {}
    for name, mod in model.named_modules():
        rng = mod.__dict__.get("_rng")
        if isinstance(rng, np.random.Generator):
            gens[f"module:{name}"] = rng
    for name, rng in (rngs or {}).items():
        if not isinstance(rng, np.random.Generator):
            raise TypeError(f"rngs['{name}'] must be a numpy.random.Generator, got {type(rng).__name__}")
        gens[f"user:{name}"] = rng
    return gens


def save_checkpoint(path: PathArg, model: Module, optimizer: Any = None, step: int = 0,
                    rngs: dict[str, Any] | None = None, extra: dict[str, Any] | None = None,
                    arrays: dict[str, np.ndarray] | None = None) -> None:
    """Write model, optimizer, step, generator states, JSON-able ``extra`` and named
    ``arrays`` (e.g. a recurrent state carried between batches) to one safetensors file,
    atomically."""
    tensors = {f"model/{k}": v for k, v in model.state_dict().items()}
    tensors.update({f"array/{k}": np.asarray(v) for k, v in (arrays or {}).items()})
    meta = {"format": CHECKPOINT_FORMAT, "version": CHECKPOINT_VERSION, "step": int(step),
            "model_class": type(model).__name__, "extra": extra or {}}
    if optimizer is not None:
        sd = optimizer.state_dict()
        scalars: dict[str, Any] = {}
        for k, s in sd["state"].items():
            for key, v in s.items():
                if isinstance(v, np.ndarray):
                    tensors[f"optim/{k}/{key}"] = v
                else:
                    scalars.setdefault(str(k), {})[key] = v
        groups = [{key: (list(v) if isinstance(v, tuple) else v) for key, v in g.items()} for g in sd["param_groups"]]
        meta["optimizer"] = {"class": type(optimizer).__name__, "param_groups": groups, "scalars": scalars}
    meta["rng"] = {name: g.bit_generator.state for name, g in _generators(model, rngs).items()}
    meta["sha256"] = _checksum(tensors, meta)
    atomic_write(path, _encode(tensors, {"nprnn": json.dumps(meta)}, "safetensors"))


def _checksum(tensors: dict[str, np.ndarray], header: dict[str, Any] | None = None) -> str:
    """SHA-256 of every tensor's name, dtype, shape and bytes, in name order, then of the
    header (as canonical JSON, without its own checksum) when given: safetensors keeps no
    checksum, so a flipped bit would otherwise be trained on, or restore another step."""
    h = hashlib.sha256()
    for name in sorted(tensors):
        a = np.ascontiguousarray(tensors[name])
        h.update(f"{name}\0{a.dtype.str}\0{a.shape}\0".encode())
        h.update(a.tobytes())
    if header is not None:
        rest = {k: v for k, v in header.items() if k != "sha256"}
        h.update(json.dumps(rest, sort_keys=True).encode())
    return h.hexdigest()


def _checkpoint_header(path: PathArg, metadata: dict[str, str]) -> dict[str, Any]:
    try:
        meta = json.loads(metadata["nprnn"])
        if meta.get("format") != CHECKPOINT_FORMAT:
            raise KeyError("format")
    except (KeyError, TypeError, json.JSONDecodeError) as exc:
        raise ValueError(f"{path} is a safetensors file but not an nprnn checkpoint (no '{CHECKPOINT_FORMAT}' "
                         "header)") from exc
    if meta.get("version") != CHECKPOINT_VERSION:
        raise ValueError(f"{path}: checkpoint version {meta.get('version')} is not supported (expected "
                         f"{CHECKPOINT_VERSION})")
    return dict(meta)


def checkpoint_metadata(path: PathArg) -> dict[str, Any]:
    """The JSON header of a checkpoint (step, model class, extra, optimizer settings)."""
    _safetensors()
    from safetensors import safe_open

    if not os.path.isfile(os.fspath(path)):
        raise FileNotFoundError(f"no such file: {os.fspath(path)}")
    try:
        with safe_open(os.fspath(path), framework="np") as f:
            metadata = f.metadata() or {}
    except Exception as exc:
        err = _unreadable(path, "safetensors", exc)
        if err is None:
            raise
        raise err from exc
    return _checkpoint_header(path, metadata)


def load_checkpoint(path: PathArg, model: Module, optimizer: Any = None, rngs: dict[str, Any] | None = None
                    ) -> dict[str, Any]:
    """Restore what :func:`save_checkpoint` wrote.  Returns ``{'step', 'extra', 'arrays',
    'model_class'}``.
    Checks the file, the model's keys, shapes and dtypes, and the optimizer state before
    changing anything; on any error nothing is changed."""
    tensors, metadata = _decode(path, "safetensors")
    meta = _checkpoint_header(path, metadata)
    if "sha256" in meta:  # tensors and header
        if meta["sha256"] != _checksum(tensors, meta):
            raise ValueError(f"{path}: the checkpoint's tensors or header do not match its checksum (the file is "
                             "damaged); nothing was loaded")
    elif "checksum" in meta:  # written when the checksum covered the tensors only
        if meta["checksum"] != _checksum(tensors):
            raise ValueError(f"{path}: the checkpoint's tensors do not match its checksum (the file is damaged); "
                             "nothing was loaded")
    else:
        warnings.warn(f"{path} carries no checksum (written before nprnn kept one): its tensors cannot be verified",
                      UserWarning, stacklevel=2)
    step = meta.get("step")
    if isinstance(step, bool) or not isinstance(step, int) or step < 0:
        raise ValueError(f"{path}: the checkpoint header has no valid 'step' (a non-negative int), got {step!r}")
    extra = meta.get("extra", {})
    if not isinstance(extra, dict):
        raise ValueError(f"{path}: the checkpoint header's 'extra' must be a JSON object, got {type(extra).__name__}")
    model_sd = {k[len("model/"):]: v for k, v in tensors.items() if k.startswith("model/")}
    converted, _ = model.check_state_dict(model_sd, strict=True, check_dtype=True)
    checked_opt = None
    if optimizer is not None:
        info = meta.get("optimizer")
        if info is None:
            raise ValueError(f"{path} holds no optimizer state, but an optimizer was given to restore")
        if isinstance(info, dict) and isinstance(info.get("param_group"), dict):  # written before param groups
            info = dict(info, param_groups=[info["param_group"]])
        if (not isinstance(info, dict) or not isinstance(info.get("class"), str)
                or not isinstance(info.get("param_groups"), list) or not isinstance(info.get("scalars", {}), dict)):
            raise ValueError(f"{path}: the checkpoint's optimizer header is malformed (it needs 'class', "
                             "'param_groups' and 'scalars')")
        if info["class"] != type(optimizer).__name__:
            raise ValueError(f"{path} holds {info['class']} state, not {type(optimizer).__name__}")
        state: dict[int, Any] = {}
        try:
            for key, v in tensors.items():
                if key.startswith("optim/"):
                    _, k, name = key.split("/", 2)
                    state.setdefault(int(k), {})[name] = v
            for k, scal in info.get("scalars", {}).items():
                state.setdefault(int(k), {}).update(dict(scal))
        except (ValueError, TypeError) as exc:
            raise ValueError(f"{path}: the checkpoint's optimizer state is malformed ({exc})") from exc
        checked_opt = optimizer.check_state_dict({"state": state, "param_groups": info["param_groups"]})
    gens = _generators(model, rngs)
    saved = meta.get("rng", {})
    missing = sorted(set(gens) - set(saved))
    if missing:
        raise ValueError(f"{path} has no saved state for generator(s) {missing}")
    for name, g in gens.items():  # check each state is acceptable before setting any
        probe = np.random.Generator(type(g.bit_generator)())
        try:
            probe.bit_generator.state = saved[name]
        except (TypeError, ValueError, KeyError) as exc:
            raise ValueError(f"{path}: the saved state of generator {name} does not fit it: {exc}") from exc
    # all checked: apply
    model.apply_state_dict(converted)
    if checked_opt is not None:
        optimizer.apply_state_dict(checked_opt)
    for name, g in gens.items():
        g.bit_generator.state = saved[name]
    arrays = {k[len("array/"):]: v for k, v in tensors.items() if k.startswith("array/")}
    return {"step": step, "extra": extra, "arrays": arrays, "model_class": meta.get("model_class")}

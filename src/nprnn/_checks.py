"""Argument checks shared by the layers and the cells (module boundary only).

Messages follow PyTorch's wording where PyTorch has one.
"""
from __future__ import annotations

import numbers
from typing import Any

import numpy as np

from ._typing import Array

_TORCH_FLOATS = {"torch.float32": np.float32, "torch.float64": np.float64, "torch.float16": np.float16,
                 "torch.bfloat16": "bfloat16"}


def torch_dtype(dtype: Any) -> Any:
    """A torch dtype as NumPy's (``torch.float64`` -> ``numpy.float64``); anything else as given."""
    if type(dtype).__module__ == "torch" and type(dtype).__name__ == "dtype":
        return _TORCH_FLOATS.get(str(dtype), str(dtype))
    return dtype


def check_int(name: str, value: Any, minimum: int = 1) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise TypeError(f"{name} should be of type int, got: {type(value).__name__}")
    if value < minimum:
        raise ValueError(f"{name} must be greater than zero")
    return int(value)


def check_bool(name: str, value: Any) -> bool:
    if not isinstance(value, (bool, np.bool_)):
        raise TypeError(f"{name} should be of type bool, got: {type(value).__name__}")
    return bool(value)


def check_dropout(dropout: Any, name: str = "dropout") -> float:
    if isinstance(dropout, bool) or not isinstance(dropout, numbers.Real) or not 0 <= float(dropout) <= 1:
        raise ValueError(
            f"{name} should be a number in range [0, 1] representing the probability of an element being zeroed"
        )
    return float(dropout)


def check_zoneout(label: str, zoneout: Any, has_cell: bool) -> tuple[float, float]:
    """``zoneout`` as ``(p_c, p_h)``: a number applies to both; a pair ``(p_c, p_h)`` only
    where there is a cell state."""
    if isinstance(zoneout, (tuple, list)):
        if not has_cell:
            raise ValueError(f"{label}: zoneout=(p_c, p_h) is for the LSTMs' cell and hidden states; this layer has "
                             f"one state, give one probability (got {tuple(zoneout)!r})")
        if len(zoneout) != 2:
            raise ValueError(f"{label}: zoneout must be a number or a pair (p_c, p_h), got {len(zoneout)} values")
        return check_dropout(zoneout[0], "zoneout p_c"), check_dropout(zoneout[1], "zoneout p_h")
    p = check_dropout(zoneout, "zoneout")
    return p, p


def _memory_bytes() -> int:
    """This machine's physical memory in bytes (0 where the OS does not say)."""
    import os

    try:
        return int(os.sysconf("SC_PAGE_SIZE")) * int(os.sysconf("SC_PHYS_PAGES"))
    except (AttributeError, ValueError, OSError):
        return 0


def _gib(n: int) -> str:
    return f"{n / 2 ** 30:,.1f} GiB" if n >= 2 ** 30 else f"{n / 2 ** 20:,.1f} MiB"


def check_memory(what: str, values: int, dtype: Any) -> None:
    """Refuse, before allocating, ``values`` numbers of ``dtype`` that need more than this
    machine's memory: one line naming the size and the memory (PyTorch says "not enough
    memory: you tried to allocate" once it has tried)."""
    need, have = int(values) * np.dtype(dtype).itemsize, _memory_bytes()
    if have and need > have:
        raise RuntimeError(f"{what} would need {_gib(need)} ({int(values):,} {np.dtype(dtype)} values); this "
                           f"machine has {_gib(have)} of memory")


def check_nonlinearity(nonlinearity: Any) -> str:
    if nonlinearity not in ("tanh", "relu"):
        raise ValueError(f"Unknown nonlinearity '{nonlinearity}'. Select from 'tanh' or 'relu'.")
    return str(nonlinearity)


_WARNED_DETACH: set[str] = set()


def detached(value: Any, warn: str = "") -> Any:
    """A torch tensor that requires grad as its detached data (the rule at every entry
    point: inputs, states, state dicts).  nprnn computes on NumPy, so no gradient flows back
    into PyTorch; with ``warn`` (the entry point), say so once per process."""
    if getattr(value, "requires_grad", False) and type(value).__module__.startswith("torch"):
        if warn and warn not in _WARNED_DETACH:
            _WARNED_DETACH.add(warn)
            import warnings

            warnings.warn(f"{warn}: a tensor that requires grad is taken as its detached data; nprnn computes on "
                          "NumPy, so no gradient flows back into PyTorch (call the nprnn module's backward() for "
                          "gradients)", UserWarning, stacklevel=4)
        return value.detach()
    return value


def as_array(value: Any, name: str, dtype: np.dtype[Any], owner: str) -> Array:
    """``value`` as a floating array of the module's dtype.

    NumPy arrays must already have that dtype (float32 in, float32 out); other array-likes
    (lists, scalars, CPU tensors; one that requires grad as its detached data) are
    converted.  Non-numeric values are refused with a message naming the argument; NaN and
    infinity pass through the layers as in PyTorch.
    """
    def mismatch(got: np.dtype[Any]) -> ValueError:
        if got.kind == "f" and not got.isnative and got.newbyteorder("=") == dtype:  # same type, other byte order
            return ValueError(f"{owner} {name} dtype ({got.str}) is {dtype} in the other byte order. "
                              f"Convert {name}: {name}.astype(numpy.{dtype})")
        buildable = got.isnative and got in (np.dtype(np.float32), np.dtype(np.float64))  # what a model can hold
        build = f", or build the model with dtype=numpy.{got.name}" if buildable else ""
        return ValueError(
            f"{owner} {name} dtype ({got}) does not match weight dtype ({dtype}). "
            f"Convert {name}: {name}.astype(numpy.{dtype}){build}"
        )

    if isinstance(value, np.ma.MaskedArray):  # its mask would be dropped
        raise TypeError(f"{owner}: {name} must be a plain array, got a masked array; fill it first "
                        f"({name}.filled(0)) or pass lengths= for padded sequences")
    if isinstance(value, np.ndarray):
        arr = value.view(np.ndarray) if type(value) is not np.ndarray else value  # np.matrix stays 2-D under indexing
        if arr.dtype.kind != "f":
            raise TypeError(f"{owner}: {name} must be a floating-point array of dtype {dtype}, got dtype {arr.dtype}")
        if arr.dtype != dtype:
            raise mismatch(arr.dtype)
    else:
        value = detached(value, f"{owner} {name}")
        try:
            arr = np.asarray(value)
        except Exception as exc:
            raise TypeError(f"{owner}: {name} must be an array of numbers, got {type(value).__name__}") from exc
        if arr.dtype.kind not in "fiub":
            raise TypeError(f"{owner}: {name} must be an array of numbers, got {type(value).__name__} of dtype "
                            f"{arr.dtype}")
        if hasattr(value, "dtype") and arr.dtype.kind == "f" and arr.dtype != dtype:
            raise mismatch(arr.dtype)  # a typed array-like (e.g. a tensor) of the other precision
        arr = arr.astype(dtype)
    return arr

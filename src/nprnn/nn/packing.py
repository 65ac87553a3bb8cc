"""Variable-length batches: PyTorch's packed-sequence API on NumPy arrays.

A packed batch stores the sequences time-major with the padding left out: step ``t``
holds ``batch_sizes[t]`` rows, one per sequence still running, the sequences sorted by
decreasing length.  ``sorted_indices[j]`` is the original batch index of sorted sequence
``j`` and ``unsorted_indices`` its inverse.  Unlike PyTorch, no function here changes the
caller's arrays.

    >>> p = pack_sequence([np.array([1., 2, 3]), np.array([4., 5])])
    >>> p.data, p.batch_sizes
    (array([1., 4., 2., 5., 3.]), array([2, 2, 1]))
"""
from __future__ import annotations

import numbers
from collections import namedtuple
from collections.abc import Iterable
from typing import Any, Optional, cast

import numpy as np

from .._typing import Array, OptArray

__all__ = [
    "PackedSequence", "pack_padded_sequence", "pad_packed_sequence", "pad_sequence", "unpad_sequence",
    "pack_sequence", "unpack_sequence", "invert_permutation",
]


def _int_array(value: Any, name: str) -> Array:
    """``value`` as an int64 array, refusing what is not integers (floats, bools, objects)."""
    arr = np.asarray(value)
    if arr.size and arr.dtype.kind not in "iu":
        raise TypeError(f"PackedSequence: {name} must hold integers, got dtype {arr.dtype}")
    return arr.astype(np.int64)


def _permutation(value: Any, n: int, name: str) -> Array:
    """``value`` as an int64 permutation of ``0 .. n-1``, or a clear error."""
    arr = _int_array(value, name)
    if arr.ndim != 1 or arr.size != n or not np.array_equal(np.sort(arr), np.arange(n)):
        raise ValueError(f"PackedSequence: {name} must be a permutation of 0..{n - 1} (one index per sequence), "
                         f"got {arr.tolist()}")
    return arr


def _flag(fn: str, name: str, value: Any) -> bool:
    if not isinstance(value, (bool, np.bool_)):
        raise TypeError(f"{fn}(): argument '{name}' must be bool, not {type(value).__name__}")
    return bool(value)


def _number(fn: str, name: str, value: Any) -> float:
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, numbers.Real):
        raise TypeError(f"{fn}(): argument '{name}' must be Number, not {type(value).__name__}")
    return cast(float, value)


def invert_permutation(permutation: Any) -> OptArray:
    """The inverse of an index permutation (None stays None)."""
    if permutation is None:
        return None
    perm: Array = np.asarray(permutation)
    out: Array = np.empty_like(perm)
    out[perm] = np.arange(perm.size, dtype=perm.dtype)
    return out


class PackedSequence(namedtuple("PackedSequence", ["data", "batch_sizes", "sorted_indices", "unsorted_indices"])):
    """Packed batch: ``data`` (sum(batch_sizes), *), ``batch_sizes`` (max_len,) int64,
    ``sorted_indices`` and ``unsorted_indices`` (batch,) int64 or None (already sorted).

    Made by :func:`pack_padded_sequence` and :func:`pack_sequence`; returned by the layers
    for packed input.
    """

    __slots__ = ()

    def __new__(cls, data: Any, batch_sizes: Any = None, sorted_indices: Any = None,
                unsorted_indices: Any = None) -> "PackedSequence":
        if batch_sizes is None:  # PackedSequence((data, batch_sizes)), as PyTorch allows
            if not (isinstance(data, (list, tuple)) and len(data) == 2):
                raise TypeError("Expected data to be a list or tuple of length 2, or data and batch_sizes")
            data, batch_sizes = data
        batch_sizes = _int_array(batch_sizes, "batch_sizes")
        if batch_sizes.ndim != 1 or not batch_sizes.size or batch_sizes.min() <= 0 or np.any(np.diff(batch_sizes) > 0):
            raise ValueError(f"PackedSequence: batch_sizes must be a non-empty 1-D array of positive, non-increasing "
                             f"integers, got {batch_sizes.tolist()}")
        N = int(batch_sizes[0])
        if sorted_indices is not None:
            sorted_indices = _permutation(sorted_indices, N, "sorted_indices")
        if unsorted_indices is None:
            unsorted_indices = invert_permutation(sorted_indices)
        else:
            unsorted_indices = _permutation(unsorted_indices, N, "unsorted_indices")
            if sorted_indices is None or not np.array_equal(unsorted_indices[sorted_indices], np.arange(N)):
                raise ValueError("PackedSequence: unsorted_indices must be the inverse of sorted_indices")
        return super().__new__(cls, data, batch_sizes, sorted_indices, unsorted_indices)

    @property
    def is_sorted(self) -> bool:
        return self.sorted_indices is None


def _check_lengths(lengths: Any, batch_size: int, max_len: int, enforce_sorted: bool) -> Array:
    """``lengths`` as a 1-D int64 array, with PyTorch's errors (and one PyTorch lacks)."""
    try:
        lengths = np.asarray(lengths)
    except Exception as exc:
        raise TypeError(f"'lengths' argument should be a 1-D array of integers, got {type(lengths).__name__}") from exc
    if lengths.ndim != 1:
        raise RuntimeError(f"'lengths' argument should be a 1D array of integers, but got {lengths.ndim}D array")
    if lengths.dtype.kind == "f" and np.all(np.isfinite(lengths)) and np.all(lengths == np.round(lengths)):
        lengths = lengths.astype(np.int64)  # whole numbers held as floats
    if lengths.size and lengths.dtype.kind not in "iu":
        raise TypeError(f"'lengths' argument should be a 1-D array of integers, got dtype {lengths.dtype}")
    lengths = lengths.astype(np.int64)
    if lengths.size != batch_size:
        raise RuntimeError(f"Expected `len(lengths)` to be equal to batch_size, but got {lengths.size} "
                           f"(batch_size={batch_size})")
    if lengths.size and lengths.min() <= 0:
        raise RuntimeError(
            "Length of all samples has to be greater than 0, but found an element in 'lengths' that is <= 0"
        )
    if lengths.size and lengths.max() > max_len:
        raise ValueError(
            f"Expected every length to be at most the input's sequence length {max_len}, but got {int(lengths.max())}"
        )
    if enforce_sorted and np.any(np.diff(lengths) > 0):
        raise RuntimeError(
            "`lengths` array must be sorted in decreasing order when `enforce_sorted` is True. You can pass "
            "`enforce_sorted=False` to pack_padded_sequence and/or pack_sequence to sidestep this requirement "
            "if you do not need ONNX exportability."
        )
    return cast(Array, lengths)


def packing_plan(lengths: Array, enforce_sorted: bool) -> tuple[Array, Array, OptArray]:
    """How to pack a time-major ``(L, B, *)`` batch with these lengths.

    Returns ``(rows, batch_sizes, sorted_indices)``: ``rows`` are the indices into the batch
    flattened to ``(L * B, *)`` that, taken in order, give the packed data.
    """
    B = lengths.size
    if enforce_sorted:
        sorted_indices = None
        order = np.arange(B)
    else:
        order = np.argsort(-lengths, kind="stable")
        sorted_indices = order.astype(np.int64)
    sorted_lengths = lengths[order]
    steps = np.arange(int(sorted_lengths[0]))
    active = sorted_lengths[None, :] > steps[:, None]  # (max_len, B) in sorted order
    t, j = np.nonzero(active)  # row-major: step by step, sorted sequences within a step
    rows = t * B + order[j]
    batch_sizes = active.sum(axis=1).astype(np.int64)
    return rows, batch_sizes, sorted_indices


def pack_padded_sequence(input: Any, lengths: Any, batch_first: bool = False, enforce_sorted: bool = True
                         ) -> PackedSequence:
    """Pack a padded batch ``(L, B, *)`` (``(B, L, *)`` if batch_first) of sequences with
    the given lengths.  With ``enforce_sorted`` the lengths must be decreasing; otherwise
    the batch is sorted here and the permutation kept in the result."""
    batch_first = _flag("pack_padded_sequence", "batch_first", batch_first)
    enforce_sorted = _flag("pack_padded_sequence", "enforce_sorted", enforce_sorted)
    x = np.asarray(input)
    if x.ndim < 2:
        raise ValueError(f"pack_padded_sequence: input must have at least 2 dimensions (time and batch), got {x.ndim}")
    if x.size == 0:
        raise RuntimeError("Cannot pack empty tensors.")
    if batch_first:
        x = np.swapaxes(x, 0, 1)
    L, B = x.shape[:2]
    lengths = _check_lengths(lengths, B, L, enforce_sorted)
    rows, batch_sizes, sorted_indices = packing_plan(lengths, enforce_sorted)
    data = x.reshape((L * B,) + x.shape[2:])[rows]  # fancy indexing: a new array
    return PackedSequence(data, batch_sizes, sorted_indices, None)


def _lengths_of(batch_sizes: Array) -> Array:
    """Sorted sequence lengths from batch sizes: sequence j runs while batch_sizes > j."""
    B = int(batch_sizes[0])
    lengths: Array = (batch_sizes[None, :] > np.arange(B)[:, None]).sum(axis=1).astype(np.int64)
    return lengths


def _check_packed(sequence: Any, name: str = "sequence") -> None:
    if not isinstance(sequence, PackedSequence):
        raise TypeError(f"{name} must be a PackedSequence, got {type(sequence).__name__}")


def pad_packed_sequence(sequence: PackedSequence, batch_first: bool = False, padding_value: float = 0.0,
                        total_length: Optional[int] = None) -> tuple[Array, Array]:
    """Undo :func:`pack_padded_sequence`: returns ``(padded, lengths)`` in the original batch
    order, padded to ``total_length`` steps if given."""
    _check_packed(sequence)
    batch_first = _flag("pad_packed_sequence", "batch_first", batch_first)
    _number("pad_packed_sequence", "padding_value", padding_value)
    bs = sequence.batch_sizes
    max_len = bs.size
    if total_length is not None:
        if isinstance(total_length, bool) or not isinstance(total_length, (int, np.integer)):
            raise TypeError(f"pad_packed_sequence(): argument 'total_length' must be int, not "
                            f"{type(total_length).__name__}")
        if total_length < max_len:
            raise ValueError(
                "Expected total_length to be at least the length of the longest sequence in input, but got "
                f"total_length={total_length} and max sequence length being {max_len}"
            )
        max_len = int(total_length)
    data = np.asarray(sequence.data)
    lengths = _lengths_of(bs)
    B = lengths.size
    rows, _, _ = packing_plan(lengths, True)
    padded = np.full((max_len * B,) + data.shape[1:], padding_value, dtype=data.dtype)
    padded[rows] = data
    padded = padded.reshape((max_len, B) + data.shape[1:])
    if sequence.unsorted_indices is not None:
        padded = padded[:, sequence.unsorted_indices]
        lengths = lengths[sequence.unsorted_indices]
    if batch_first:
        padded = np.ascontiguousarray(np.swapaxes(padded, 0, 1))
    return padded, lengths


def pad_sequence(sequences: Any, batch_first: bool = False, padding_value: float = 0.0,
                 padding_side: str = "right") -> Array:
    """Stack variable-length ``(L_i, *)`` arrays into ``(max L, B, *)`` (``(B, max L, *)`` if
    batch_first), filling with ``padding_value`` on the right (or the left)."""
    batch_first = _flag("pad_sequence", "batch_first", batch_first)
    _number("pad_sequence", "padding_value", padding_value)
    if isinstance(sequences, np.ndarray):
        sequences = list(sequences)
    elif not isinstance(sequences, Iterable):
        raise RuntimeError(
            f"pad_sequence: Expected iterable for input sequences, but got arg of type: {type(sequences)}"
        )
    seqs = [np.asarray(s) for s in sequences]
    if not seqs:
        raise RuntimeError("received an empty list of sequences")
    if padding_side not in ("left", "right"):
        raise RuntimeError(f"Expected padding_side to be one of left or right, but got {padding_side}.")
    trailing = seqs[0].shape[1:]
    for i, s in enumerate(seqs):
        if s.ndim == 0:
            raise RuntimeError(f"pad_sequence: sequence {i} is a 0-d array; sequences need a time dimension")
        if s.shape[1:] != trailing:
            raise RuntimeError(
                f"pad_sequence: every sequence needs the trailing shape {trailing} of sequence 0, "
                f"but sequence {i} has shape {s.shape}"
            )
    max_len = max(s.shape[0] for s in seqs)
    out = np.full((len(seqs), max_len) + trailing, padding_value, dtype=seqs[0].dtype)
    for i, s in enumerate(seqs):
        if padding_side == "right":
            out[i, : s.shape[0]] = s
        elif s.shape[0]:
            out[i, max_len - s.shape[0]:] = s
    return out if batch_first else np.ascontiguousarray(np.swapaxes(out, 0, 1))


def unpad_sequence(padded_sequences: Any, lengths: Any, batch_first: bool = False) -> list[Array]:
    """Split a padded batch back into a list of ``(L_i, *)`` arrays (copies)."""
    batch_first = _flag("unpad_sequence", "batch_first", batch_first)
    x = np.asarray(padded_sequences)
    if x.ndim < 2:
        raise ValueError(f"unpad_sequence: padded_sequences must have at least 2 dimensions, got {x.ndim}")
    if not batch_first:
        x = np.swapaxes(x, 0, 1)
    lengths = np.asarray(lengths)
    if lengths.size and (lengths.dtype.kind not in "iuf" or (lengths.dtype.kind == "f" and not np.all(
            np.isfinite(lengths) & (lengths == np.round(lengths))))):
        raise TypeError(f"unpad_sequence: lengths must be integers, got {lengths.tolist()}")
    lengths = lengths.astype(np.int64).reshape(-1)
    if lengths.size != x.shape[0]:
        raise ValueError(f"unpad_sequence: got {lengths.size} lengths for a batch of {x.shape[0]} sequences")
    if lengths.size and (lengths.min() < 0 or lengths.max() > x.shape[1]):
        raise ValueError(f"unpad_sequence: lengths must lie in [0, {x.shape[1]}], got {lengths.tolist()}")
    return [x[i, :n].copy() for i, n in enumerate(lengths)]


def pack_sequence(sequences: Any, enforce_sorted: bool = True) -> PackedSequence:
    """Pack a list of ``(L_i, *)`` arrays (decreasing lengths unless ``enforce_sorted=False``)."""
    enforce_sorted = _flag("pack_sequence", "enforce_sorted", enforce_sorted)
    seqs = [np.asarray(s) for s in sequences]
    if not seqs:
        raise RuntimeError("received an empty list of sequences")
    lengths = [s.shape[0] if s.ndim else 0 for s in seqs]
    return pack_padded_sequence(pad_sequence(seqs), lengths, enforce_sorted=enforce_sorted)


def unpack_sequence(packed_sequences: PackedSequence) -> list[Array]:
    """Undo :func:`pack_sequence`: the list of sequences in their original order."""
    padded, lengths = pad_packed_sequence(packed_sequences, batch_first=True)
    return unpad_sequence(padded, lengths, batch_first=True)

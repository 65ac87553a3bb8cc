"""How a recurrent layer's caller's arrays map onto the packed rows its stack runs on.

The stack (:mod:`nprnn.functional.stack`) runs on time-major *packed* rows (T, F): a
padded batch (L, N, F) is the case ``batch_sizes = [N] * L``; with ``lengths=`` the rows
of each step's live sequences are gathered, longest first; a
:class:`~nprnn.utils.rnn.PackedSequence` is used as it is.  A :class:`Layout` is made
once, by :func:`layout_of` from the forward's input, and serves both ways: ``to_rows``
takes the input (forward) and the output gradient (backward) to rows, ``from_rows`` takes
the output (forward) and the input gradient (backward) back; ``to_run`` and ``from_run``
do the same for the states and their gradients (the batch axis of unbatched input, and
the sort by length).  The checks here raise PyTorch's messages, in PyTorch's order.
"""
from __future__ import annotations

from typing import Any, NamedTuple, Optional, Sequence, cast

import numpy as np

from .._checks import as_array
from .._typing import Array, OptArray, Pool
from ..functional import alloc_blocks
from .packing import PackedSequence, _check_lengths, invert_permutation, packing_plan


class Layout(NamedTuple):
    """kind: "padded" (every sequence runs all L steps), "lengths" (padded input with
    ``lengths=``: ``rows`` gathers the packed rows from the flattened (L*N) batch) or
    "packed".  ``sorted_indices`` orders the batch by decreasing length (None: already
    sorted).  ``output_shape`` and ``state_shapes`` are what the caller got (and what
    backward's gradients must have)."""

    kind: str
    batched: bool
    batch_first: bool
    seq_shape: Optional[tuple[int, int]]  # (L, N), time-major; None when packed
    batch_sizes: list[int]
    rows: OptArray = None
    sorted_indices: OptArray = None
    unsorted_indices: OptArray = None
    packed_batch_sizes: Any = None  # the PackedSequence's own, handed back unchanged
    output_shape: tuple[int, ...] = ()
    state_shapes: tuple[tuple[int, ...], ...] = ()

    def to_rows(self, a: Array, pool: Optional[Pool] = None, key: Any = None) -> Array:
        """The caller's (input-shaped) array as packed time-major rows (T, F)."""
        if self.kind == "packed":
            return np.ascontiguousarray(a)
        if not self.batched:
            a = a[None] if self.batch_first else a[:, None]
        if self.batch_first:
            a = a.transpose(1, 0, 2)
        L, N = cast("tuple[int, int]", self.seq_shape)  # (set unless packed)
        flat = np.ascontiguousarray(a).reshape(L * N, a.shape[-1])
        if self.rows is None:
            return flat
        (packed,) = alloc_blocks(((1, flat.shape[1]),), self.rows.size, flat.dtype, pool, key)
        return np.take(flat, self.rows, axis=0, out=packed)

    def from_rows(self, r: np.ndarray) -> Any:
        """Packed rows (T, F) in the caller's layout (zeros past each end with lengths=)."""
        if self.kind == "packed":
            return PackedSequence(r, self.packed_batch_sizes, self.sorted_indices, self.unsorted_indices)
        L, N = cast("tuple[int, int]", self.seq_shape)  # (set unless packed)
        if self.rows is not None:
            full = np.zeros((L * N, r.shape[1]), r.dtype)
            full[self.rows] = r
            r = full
        a = r.reshape(L, N, r.shape[1])
        if self.batch_first:
            a = np.ascontiguousarray(a.transpose(1, 0, 2))
        if not self.batched:
            a = a[0] if self.batch_first else a[:, 0]
        return a

    def to_run(self, states: Sequence[np.ndarray]) -> list[Any]:
        """Caller-shaped states (or their gradients) as (D*layers, N, .) in sorted order."""
        states = [s if self.batched else s[:, None] for s in states]
        if self.sorted_indices is not None:
            states = [s[:, self.sorted_indices] for s in states]
        return states

    def from_run(self, states: Sequence[np.ndarray]) -> list[Any]:
        """The inverse of :meth:`to_run`."""
        if self.sorted_indices is not None:
            states = [s[:, self.unsorted_indices] for s in states]
        return [s if self.batched else s[:, 0] for s in states]


def layout_of(m: Any, input: Any, hx: Any, lengths: Any) -> tuple[Any, ...]:
    """Check a layer's call (``m`` an :class:`~nprnn.RNNBase`) and find its layout.
    Returns ``(layout, x, states)``: ``x`` the input array (caller-shaped), ``states`` the
    caller-shaped initial states (zeros when ``hx`` is None)."""
    if isinstance(input, PackedSequence):
        if lengths is not None:
            raise ValueError(f"{m._label}: lengths= is for padded input; a PackedSequence carries its own lengths")
        data = input.data if hasattr(input.data, "ndim") else as_array(input.data, "input", m.dtype, m._label)
        if data.ndim != 2:
            raise RuntimeError(f"input must have 2 dimensions, got {data.ndim}")
        hx = _check_hx(m, hx, True)
        x = _input_array(m, data)
        batch_sizes = [int(b) for b in input.batch_sizes]
        if not batch_sizes or sum(batch_sizes) != x.shape[0] or any(
                b1 < b2 for b1, b2 in zip(batch_sizes, batch_sizes[1:])) or batch_sizes[-1] <= 0:
            raise ValueError(
                f"{m._label}: batch_sizes {batch_sizes} do not describe a packed batch of {x.shape[0]} rows "
                "(they must be positive, non-increasing and sum to len(data)); make PackedSequences with "
                "pack_padded_sequence")
        N = batch_sizes[0]
        sorted_indices = input.sorted_indices
        unsorted = input.unsorted_indices
        if sorted_indices is not None and unsorted is None:
            unsorted = invert_permutation(sorted_indices)
        shapes = _state_shapes(m, N, True)
        layout = Layout("packed", True, False, None, batch_sizes, None, sorted_indices, unsorted,
                        input.batch_sizes, (x.shape[0], m.num_directions * m._h_out), shapes)
        return layout, x, _initial_states(m, hx, shapes)
    if not hasattr(input, "ndim"):
        input = as_array(input, "input", m.dtype, m._label)
    if input.ndim not in (2, 3):
        tensor = " tensor" if m._label == "RNN" else ""
        raise ValueError(f"{m._label}: Expected input to be 2D or 3D, got {input.ndim}D{tensor} instead")
    batched = input.ndim == 3
    hx = _check_hx(m, hx, batched)
    x = _input_array(m, input)
    L, N = (x.shape[:2] if not m.batch_first else x.shape[1::-1]) if batched else (x.shape[0], 1)
    if L == 0:
        raise RuntimeError("Expected sequence length to be larger than 0 in RNN")
    shapes = _state_shapes(m, N, batched)
    states = _initial_states(m, hx, shapes)
    rows = sorted_indices = unsorted = None
    batch_sizes = [N] * L
    if lengths is not None:
        lengths = _check_lengths(lengths, N, L, enforce_sorted=False)
        rows, sizes, sorted_indices = packing_plan(lengths, enforce_sorted=False)
        batch_sizes = [int(b) for b in sizes]
        unsorted = invert_permutation(sorted_indices)
    output_shape = x.shape[:-1] + (m.num_directions * m._h_out,)
    layout = Layout("padded" if lengths is None else "lengths", batched, m.batch_first, (L, N), batch_sizes, rows,
                    sorted_indices, unsorted, None, output_shape, shapes)
    return layout, x, states


def _state_shapes(m: Any, N: int, batched: bool) -> tuple[Any, ...]:
    rows = m.num_layers * m.num_directions
    return tuple((rows, N, w) if batched else (rows, w) for w in m._state_widths())


def _input_array(m: Any, input: Any) -> np.ndarray:
    """The input's data with the module's dtype and input_size (PyTorch's messages)."""
    x = as_array(input, "input", m.dtype, m._label)
    if x.shape[-1] != m.input_size:
        raise RuntimeError(f"input.size(-1) must be equal to input_size. Expected {m.input_size}, got {x.shape[-1]}")
    return x


def _check_hx(m: Any, hx: Any, batched: bool) -> Optional[tuple[Any, ...]]:
    """Dimension checks on hx, in PyTorch's order (before the size checks)."""
    if hx is None:
        return None
    want = 3 if batched else 2
    what = "batched 3-D" if batched else "unbatched 2-D"
    if m.kind.has_cell:
        if not isinstance(hx, (tuple, list)) or len(hx) != 2:
            raise TypeError(f"LSTM: hx must be a tuple (h_0, c_0) of two arrays, got {type(hx).__name__}"
                            + (f" of length {len(hx)}" if isinstance(hx, (tuple, list)) else ""))
        pair: tuple[Any, ...] = tuple(h if hasattr(h, "ndim") else as_array(h, "hx", m.dtype, "LSTM") for h in hx)
        hx = pair
        if hx[0].ndim != want or hx[1].ndim != want:
            raise RuntimeError(f"For {what} input, hx and cx should also be {want}-D but got "
                               f"({hx[0].ndim}-D, {hx[1].ndim}-D) tensors")
        return pair
    if not hasattr(hx, "ndim"):
        hx = as_array(hx, "hx", m.dtype, m._label)
    if hx.ndim != want:
        raise RuntimeError(f"For {what} input, hx should also be {want}-D but got {hx.ndim}-D tensor")
    return (hx,)


def _initial_states(m: Any, hx: Optional[tuple[Any, ...]], shapes: tuple[tuple[int, ...], ...]) -> list[Any]:
    """The caller-shaped initial states, zeros when hx is None, with PyTorch's size check."""
    if hx is None:
        return [np.zeros(shape, m.dtype) for shape in shapes]
    states = []
    for k, shape in enumerate(shapes):
        h = as_array(hx[k], "hx", m.dtype, m._label)
        if h.shape != shape:
            what = f"hidden[{k}] size" if m.kind.has_cell else "hidden size"
            raise RuntimeError(f"Expected {what} {shape}, got {list(h.shape)}")
        states.append(h)
    return states


def check_grads(layout: Layout, m: Any, grad_output: Any, grad_hn: Any) -> tuple[Any, ...]:
    """Backward's gradients checked against what the forward returned: ``(grad_output
    array, [state gradients])``, each state gradient zeros where None."""
    label = m._label
    if isinstance(grad_output, PackedSequence):
        if layout.kind != "packed":
            raise TypeError(f"{label}: grad_output is a PackedSequence but the forward input was not packed")
        grad_output = grad_output.data
    g_out = as_array(grad_output, "grad_output", m.dtype, label)
    if g_out.shape != layout.output_shape:
        what = "the output's data" if layout.kind == "packed" else "the output's"
        raise ValueError(f"{label}: grad_output has shape {g_out.shape}, expected {layout.output_shape} ({what})")
    names = ("grad_h_n", "grad_c_n") if m.kind.has_cell else ("grad_h_n",)
    if m.kind.has_cell:
        if grad_hn is None:
            grad_hn = (None, None)
        if not isinstance(grad_hn, (tuple, list)) or len(grad_hn) != 2:
            raise TypeError("LSTM: grad_hn must be None or a pair (grad_h_n, grad_c_n)")
    else:
        grad_hn = (grad_hn,)
    parts = []
    for g, name, shape in zip(grad_hn, names, layout.state_shapes):
        if g is None:
            parts.append(np.zeros(shape, m.dtype))
            continue
        g = as_array(g, name, m.dtype, label)
        if g.shape != shape:
            raise ValueError(f"{label}: {name} has shape {g.shape}, expected {shape}")
        parts.append(g)
    return g_out, parts

"""Multi-layer recurrent layers: RNN, LSTM (with projections) and GRU.

The layers only validate, hold parameters and arrange data; the numbers are computed by
the one time loop in :mod:`nprnn.functional.scan`.
"""
from __future__ import annotations

import dataclasses
import threading
import warnings
from dataclasses import dataclass
from typing import Optional

import numpy as np

from . import threads
from ._checks import as_array, check_bool, check_dropout, check_int, check_nonlinearity
from .config import settings
from .functional import KINDS, alloc_blocks, direction_backward, direction_forward, native
from .module import Module, init_uniform, resolve_dtype, resolve_rng
from .packing import PackedSequence, _check_lengths, invert_permutation, packing_plan
from .threads import run_pipeline, run_side_by_side, side_by_side_pays

_NAMES = ("weight_ih_l{}{}", "weight_hh_l{}{}", "bias_ih_l{}{}", "bias_hh_l{}{}", "weight_hr_l{}{}")


def _put(alls, idx, parts):
    """Row ``idx`` of each (D*layers, N, .) array in ``alls`` gets the matching array of ``parts``."""
    for a, part in zip(alls, parts):
        a[idx] = part


@dataclass(frozen=True)
class _Record:
    """What a training-mode forward leaves for backward.

    records: each layer-direction's record (from direction_forward), layer-major
    masks: per layer, the dropout mask applied to its output (None: none)
    batch_sizes: the packed batch sizes the scans ran on
    side_by_side: how the scans ran ("directions", "layers" or None), so backward runs alike
    layout: how the caller's batch maps onto the packed rows (:class:`_Layout`)
    """

    records: list
    masks: list
    batch_sizes: object
    side_by_side: Optional[str]
    layout: Optional["_Layout"] = None


class _Layout:
    """How the caller's batch maps onto the packed rows the scan runs on.

    kind: "padded" (every sequence runs all L steps), "lengths" (padded input with
    lengths=; ``rows`` gathers the packed rows from the flattened (L*N) batch) or "packed".
    ``sorted_indices`` orders the batch by decreasing length (None: already sorted).
    """

    def __init__(self, kind, batched, seq_shape, rows, sorted_indices, batch_sizes_array=None, unsorted_indices=None):
        self.kind = kind
        self.batched = batched
        self.seq_shape = seq_shape
        self.rows = rows
        self.sorted_indices = sorted_indices
        self.batch_sizes_array = batch_sizes_array
        self.unsorted_indices = unsorted_indices
        if sorted_indices is not None and unsorted_indices is None:
            self.unsorted_indices = invert_permutation(sorted_indices)
        self.output_shape = None
        self.state_shapes = None


class RNNBase(Module):
    """Shared machinery of :class:`RNN`, :class:`LSTM` and :class:`GRU`."""

    _label = "RNNBase"
    _reverse_only = False  # ONNX's direction="reverse": one direction, run backwards in time

    def _step_options(self, idx):
        """Extra per-layer-direction settings for the kernels (the ONNX-only variants)."""
        return None

    def __init__(
        self,
        mode: str,
        input_size: int,
        hidden_size: int,
        num_layers: int = 1,
        bias: bool = True,
        batch_first: bool = False,
        dropout: float = 0.0,
        bidirectional: bool = False,
        proj_size: int = 0,
        *,
        dtype=np.float32,
        seed=None,
    ) -> None:
        super().__init__()
        dropout = check_dropout(dropout)
        if dropout > 0 and num_layers == 1:
            warnings.warn(
                "dropout option adds dropout after all but last recurrent layer, so non-zero dropout expects "
                f"num_layers greater than 1, but got dropout={dropout} and num_layers={num_layers}",
                stacklevel=3,
            )
        bias = check_bool("bias", bias)
        batch_first = check_bool("batch_first", batch_first)
        input_size = check_int("input_size", input_size)
        hidden_size = check_int("hidden_size", hidden_size)
        num_layers = check_int("num_layers", num_layers)
        bidirectional = check_bool("bidirectional", bidirectional)
        if isinstance(proj_size, bool) or not isinstance(proj_size, (int, np.integer)):
            raise TypeError(f"proj_size should be of type int, got: {type(proj_size).__name__}")
        if proj_size < 0:
            raise ValueError("proj_size should be a positive integer or zero to disable projections")
        if proj_size >= hidden_size:
            raise ValueError("proj_size has to be smaller than hidden_size")
        self.mode = mode
        self.kind = KINDS[mode]
        self.input_size = input_size
        self.hidden_size = hidden_size
        self.num_layers = num_layers
        self.bias = bias
        self.batch_first = batch_first
        self.dropout = dropout
        self.bidirectional = bidirectional
        self.proj_size = int(proj_size)
        self.dtype = resolve_dtype(dtype)
        self._rng = resolve_rng(seed)
        self._record = None
        self._buffers = threading.local()  # per-thread reusable work arrays, see _pool()

        D = 2 if bidirectional else 1
        G = self.kind.num_gates * hidden_size
        H_out = self.proj_size or hidden_size
        self._layer_names = []  # per (layer, direction): 5 names, None where absent
        for layer in range(num_layers):
            in_size = input_size if layer == 0 else H_out * D
            for d in range(D):
                suffix = "_reverse" if d else ""
                names = [n.format(layer, suffix) for n in _NAMES]
                shapes = [(G, in_size), (G, H_out), (G,), (G,), (self.proj_size, hidden_size)]
                keep = [True, True, bias, bias, self.proj_size > 0]
                for name, shape, k in zip(names, shapes, keep):
                    if k:
                        self.register_parameter(name, np.empty(shape, self.dtype))
                self._layer_names.append(tuple(n if k else None for n, k in zip(names, keep)))
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """Draw every parameter from U(-1/sqrt(hidden_size), 1/sqrt(hidden_size))."""
        init_uniform(self, self.hidden_size, self._rng)

    @property
    def num_directions(self) -> int:
        return 2 if self.bidirectional else 1

    @property
    def _h_out(self) -> int:
        return self.proj_size or self.hidden_size

    def extra_repr(self) -> str:
        s = f"{self.input_size}, {self.hidden_size}"
        if self.proj_size:
            s += f", proj_size={self.proj_size}"
        if self.num_layers != 1:
            s += f", num_layers={self.num_layers}"
        if getattr(self, "nonlinearity", "tanh") != "tanh":
            s += f", nonlinearity='{self.nonlinearity}'"
        if not self.bias:
            s += ", bias=False"
        if self.batch_first:
            s += ", batch_first=True"
        if self.dropout:
            s += f", dropout={self.dropout}"
        if self.bidirectional:
            s += ", bidirectional=True"
        if self.dtype != np.float32:
            s += ", dtype=float64"
        return s

    # -- input handling ----------------------------------------------------------
    def _state_widths(self):
        return (self._h_out, self.hidden_size) if self.kind.has_cell else (self._h_out,)

    def _check_input(self, input):
        label = self._label
        if not hasattr(input, "ndim"):
            input = as_array(input, "input", self.dtype, label)
        if input.ndim not in (2, 3):
            tensor = " tensor" if label == "RNN" else ""
            raise ValueError(f"{label}: Expected input to be 2D or 3D, got {input.ndim}D{tensor} instead")
        return input

    def _input_array(self, input):
        """The input's data with the module's dtype and input_size (PyTorch's messages)."""
        x = as_array(input, "input", self.dtype, self._label)
        if x.shape[-1] != self.input_size:
            raise RuntimeError(
                f"input.size(-1) must be equal to input_size. Expected {self.input_size}, got {x.shape[-1]}"
            )
        return x

    def _check_hx(self, hx, batched: bool):
        """Dimension checks on hx, in PyTorch's order (before the size checks)."""
        if hx is None:
            return None
        if self.kind.has_cell:
            if not isinstance(hx, (tuple, list)) or len(hx) != 2:
                raise TypeError(
                    f"LSTM: hx must be a tuple (h_0, c_0) of two arrays, got {type(hx).__name__}"
                    + (f" of length {len(hx)}" if isinstance(hx, (tuple, list)) else "")
                )
            hx = tuple(h if hasattr(h, "ndim") else as_array(h, "hx", self.dtype, "LSTM") for h in hx)
            want = 3 if batched else 2
            if hx[0].ndim != want or hx[1].ndim != want:
                kind = "batched 3-D" if batched else "unbatched 2-D"
                raise RuntimeError(
                    f"For {kind} input, hx and cx should also be {want}-D but got "
                    f"({hx[0].ndim}-D, {hx[1].ndim}-D) tensors"
                )
            return hx
        if not hasattr(hx, "ndim"):
            hx = as_array(hx, "hx", self.dtype, self._label)
        want = 3 if batched else 2
        if hx.ndim != want:
            kind = "batched 3-D" if batched else "unbatched 2-D"
            raise RuntimeError(f"For {kind} input, hx should also be {want}-D but got {hx.ndim}-D tensor")
        return (hx,)

    def forward(self, input, hx=None, lengths=None):
        """Run the layer.  See the class docstring for shapes.

        ``input`` is a padded array or a :class:`~nprnn.utils.rnn.PackedSequence` (then the
        output is packed too).  ``lengths`` (padded input only) gives each sequence's length:
        the result equals packing, running and unpacking, without the caller packing.
        """
        if isinstance(input, PackedSequence):
            if lengths is not None:
                raise ValueError(f"{self._label}: lengths= is for padded input; a PackedSequence carries its own "
                                 "lengths")
            return self._forward_packed(input, hx)
        input = self._check_input(input)
        batched = input.ndim == 3
        hx = self._check_hx(hx, batched)
        x = self._input_array(input)
        if not batched:
            x = x[None] if self.batch_first else x[:, None]
        if self.batch_first:
            x = x.transpose(1, 0, 2)
        L, N = x.shape[0], x.shape[1]
        if L == 0:
            raise RuntimeError("Expected sequence length to be larger than 0 in RNN")
        states = self._initial_states(hx, N, batched)
        x_flat = np.ascontiguousarray(x).reshape(L * N, self.input_size)
        if lengths is None:
            layout = _Layout("padded", batched=batched, seq_shape=(L, N), rows=None, sorted_indices=None)
            batch_sizes = [N] * L
        else:
            lengths = _check_lengths(lengths, N, L, enforce_sorted=False)
            rows, batch_sizes, sorted_indices = packing_plan(lengths, enforce_sorted=False)
            layout = _Layout("lengths", batched=batched, seq_shape=(L, N), rows=rows, sorted_indices=sorted_indices)
            (packed,) = alloc_blocks(((1, self.input_size),), rows.size, self.dtype, self._pool(), "x_packed")
            x_flat = np.take(x_flat, rows, axis=0, out=packed)
        out, finals = self._run_layout(x_flat, batch_sizes, states, layout)
        if layout.rows is not None:  # back to the padded layout, zeros past each end
            full = np.zeros((L * N, out.shape[1]), self.dtype)
            full[layout.rows] = out
            out = full
        output = out.reshape(L, N, out.shape[1])
        if self.batch_first:
            output = np.ascontiguousarray(output.transpose(1, 0, 2))
        if not batched:
            output = output[0] if self.batch_first else output[:, 0]
            finals = [f[:, 0] for f in finals]
        return self._finish(output, finals, layout)

    def _forward_packed(self, packed, hx):
        data = packed.data
        if not hasattr(data, "ndim"):
            data = as_array(data, "input", self.dtype, self._label)
        if data.ndim != 2:
            raise RuntimeError(f"input must have 2 dimensions, got {data.ndim}")
        hx = self._check_hx(hx, True)
        x = self._input_array(data)
        batch_sizes = [int(b) for b in packed.batch_sizes]
        if not batch_sizes or sum(batch_sizes) != x.shape[0] or any(
                b1 < b2 for b1, b2 in zip(batch_sizes, batch_sizes[1:])) or batch_sizes[-1] <= 0:
            raise ValueError(
                f"{self._label}: batch_sizes {batch_sizes} do not describe a packed batch of {x.shape[0]} rows "
                "(they must be positive, non-increasing and sum to len(data)); make PackedSequences with "
                "pack_padded_sequence"
            )
        N = batch_sizes[0]
        states = self._initial_states(hx, N, True)
        layout = _Layout("packed", batched=True, seq_shape=None, rows=None, sorted_indices=packed.sorted_indices,
                         batch_sizes_array=packed.batch_sizes, unsorted_indices=packed.unsorted_indices)
        out, finals = self._run_layout(np.ascontiguousarray(x), batch_sizes, states, layout)
        output = PackedSequence(out, packed.batch_sizes, packed.sorted_indices, packed.unsorted_indices)
        return self._finish(output, finals, layout)

    def _initial_states(self, hx, N, batched):
        """(D*layers, N, .) arrays in the caller's batch order, zeros when hx is None."""
        rows = self.num_layers * self.num_directions
        states = []
        for k, width in enumerate(self._state_widths()):
            expected = (rows, N, width)
            if hx is None:
                states.append(np.zeros(expected, self.dtype))
                continue
            h = as_array(hx[k], "hx", self.dtype, self._label)
            h3 = h if batched else h[:, None]
            if h3.shape != expected:
                what = f"hidden[{k}] size" if self.kind.has_cell else "hidden size"
                exp = expected if batched else (rows, width)
                raise RuntimeError(f"Expected {what} {exp}, got {list(h.shape)}")
            states.append(h3)
        return states

    def _run_layout(self, x_flat, batch_sizes, states, layout):
        """Run on packed rows, states permuted into and out of the sorted batch order."""
        if layout.sorted_indices is not None:
            states = [s[:, layout.sorted_indices] for s in states]
        out, finals, record = self._run(x_flat, batch_sizes, states)
        if layout.sorted_indices is not None:
            finals = [f[:, layout.unsorted_indices] for f in finals]
        if record is not None:
            record = dataclasses.replace(record, layout=layout)
        self.__dict__["_record"] = record  # (a plain attribute: no parameter lookup on the way)
        return out, finals

    def _finish(self, output, finals, layout):
        layout.output_shape = output.data.shape if isinstance(output, PackedSequence) else output.shape
        layout.state_shapes = tuple(f.shape for f in finals)
        if self.kind.has_cell:
            return output, (finals[0], finals[1])
        return output, finals[0]

    def stream(self, batch_size=None):
        """A :class:`~nprnn.stream.Stream`: ``stream.step(x_t)`` runs one time step
        through every layer, carrying the state between calls (one-directional layers;
        no dropout, nothing kept for backward).  ``batch_size=None`` streams one
        unbatched sequence, ``x_t`` of shape (input_size,)."""
        from .stream import Stream

        return Stream(self, batch_size)

    def _pool(self) -> dict:
        """This thread's reusable work arrays (like PyTorch's caching allocator: memory is
        kept between calls because fresh memory costs page faults).  ``release_buffers``
        frees it."""
        pool = getattr(self._buffers, "pool", None)
        if pool is None:
            pool = self._buffers.pool = {}
        return pool

    def __getstate__(self):
        """Copies and pickles carry parameters and settings (see Module.__getstate__), not
        the work arrays."""
        state = super().__getstate__()
        state["_buffers"] = None
        state["_record"] = None
        return state

    def __setstate__(self, state):
        super().__setstate__(state)
        self.__dict__["_buffers"] = threading.local()

    def release_buffers(self) -> None:
        """Free the work arrays kept between calls (and any pending backward record)."""
        self._buffers = threading.local()
        self._record = None

    def _dropout_mask(self, shape):
        p = self.dropout
        if p >= 1:
            return np.zeros(shape, self.dtype)
        keep = self._rng.random(shape) >= p
        return keep.astype(self.dtype) * self.dtype.type(1.0 / (1.0 - p))

    def _run(self, x, batch_sizes, states):
        """All layers over packed time-major ``x`` (T, H_in); states (D*layers, N, .)."""
        D, P, L = self.num_directions, self._h_out, self.num_layers
        train = self.training
        self.__dict__["_record"] = None  # the previous record's buffers are about to be reused
        pool = self._pool()
        finals = [np.empty(s.shape, self.dtype) for s in states]
        mode = self._side_by_side(x.shape[0], len(batch_sizes),
                                  settings.min_train_step_work if train else settings.min_step_work)
        records = [None] * (L * D)
        outs = [np.empty((x.shape[0], D * P), self.dtype) if layer == L - 1  # returned to the caller
                else alloc_blocks(((1, D * P),), x.shape[0], self.dtype, pool, (layer, "out"))[0]
                for layer in range(L)]  # (T, D*H_out) each

        def run(layer, d, pipeline=None):
            idx = layer * D + d
            final, records[idx] = self._direction(x if layer == 0 else outs[layer - 1], idx, batch_sizes, states,
                                                  outs[layer], train, pool, pipeline)
            _put(finals, idx, final)

        masks = [None] * L
        if mode == "layers":  # layer l + 1 reads layer l's output rows as they come (no dropout)
            run_pipeline(L, lambda layer, source, sink: run(layer, 0, (source, sink)))
        else:
            for layer in range(L):
                if mode == "directions":
                    run_side_by_side(lambda: run(layer, 1), lambda: run(layer, 0), blas=not self._native())
                else:
                    for d in range(D):
                        run(layer, d)
                if train and self.dropout > 0 and layer < L - 1:
                    masks[layer] = self._dropout_mask(outs[layer].shape)
                    outs[layer] *= masks[layer]
        record = None
        if train:
            record = _Record(records=records, masks=masks, batch_sizes=batch_sizes, side_by_side=mode)
        return outs[-1], finals, record

    def _direction(self, x, idx, batch_sizes, states, out, train, pool, pipeline=None):
        """Layer-direction ``idx`` over ``x``, into its columns of ``out`` (T, D*H_out)."""
        d = idx % self.num_directions
        P = self._h_out
        params = tuple(None if n is None else self._parameters[n] for n in self._layer_names[idx])
        return direction_forward(self.kind, x, params, tuple(s[idx] for s in states), batch_sizes,
                                 d == 1 or self._reverse_only, out[:, d * P : (d + 1) * P], train,
                                 self._step_options(idx), pool, idx, pipeline, self._prepared, threads.THREADED)

    def _native(self) -> bool:
        """Whether this layer's scans run on the compiled tier (which calls no BLAS)."""
        return native.supports(self.kind, self.dtype)

    def _side_by_side(self, rows, steps, min_work):
        """"directions", "layers" or None: which scans of this run go two at a time (see
        :mod:`nprnn.threads`), given the least gate values a step that pays for it.  Layers
        pipeline only forward in time and without dropout between them (its mask applies to
        a layer's whole output)."""
        gate_width = self.kind.num_gates * self.hidden_size
        if self._native():
            # The compiled scans split the batch (threads.row_ranges); the two directions of a
            # layer also go side by side, each on half the threads, as each part of a split
            # reads all the weights at every step, and two directions give each read twice
            # the rows.
            work = rows * gate_width * (self._h_out + self.hidden_size)
            if self.num_directions == 2 and threads.get_num_threads() >= 2 and work >= settings.min_split_work:
                return "directions"
            return None
        if self.num_directions == 2:
            return "directions" if side_by_side_pays(steps, rows, gate_width, False, min_work) else None
        if (self.num_layers > 1 and not self._reverse_only and not (self.training and self.dropout > 0)
                and side_by_side_pays(steps, rows, gate_width, True, min_work)):
            return "layers"
        return None

    # -- backward ----------------------------------------------------------------
    def backward(self, grad_output, grad_hn=None):
        """Backpropagation through time for the last training-mode forward.

        ``grad_output`` has the shape of ``output`` (for packed output: a PackedSequence or
        an array shaped like its ``data``); ``grad_hn`` is the gradient of ``h_n`` (RNN, GRU)
        or ``(grad_h_n, grad_c_n)`` (LSTM), any part None meaning zeros.  Adds the parameter
        gradients into ``self.grads`` and returns ``(grad_input, grad_hx)``: ``grad_input``
        in the input's layout (packed for packed input, zeros past each end with
        ``lengths=``), ``grad_hx`` shaped like ``hx`` (a pair for LSTM).
        """
        rec = self._record
        if rec is None:
            raise RuntimeError(
                f"{self._label}.backward() needs a forward pass in training mode first "
                "(call .train() before forward; each forward can be backpropagated once)"
            )
        label = self._label
        layout = rec.layout
        if isinstance(grad_output, PackedSequence):
            if layout.kind != "packed":
                raise TypeError(f"{label}: grad_output is a PackedSequence but the forward input was not packed")
            grad_output = grad_output.data
        g_out = as_array(grad_output, "grad_output", self.dtype, label)
        if g_out.shape != layout.output_shape:
            what = "the output's data" if layout.kind == "packed" else "the output's"
            raise ValueError(f"{label}: grad_output has shape {g_out.shape}, expected {layout.output_shape} ({what})")
        parts = self._split_state_grads(grad_hn, layout)
        if not layout.batched:
            g_out = g_out[None] if self.batch_first else g_out[:, None]
            parts = [p[:, None] for p in parts]
        if layout.sorted_indices is not None:
            parts = [p[:, layout.sorted_indices] for p in parts]
        if layout.kind == "packed":
            dout = np.ascontiguousarray(g_out)
        else:
            L, N = layout.seq_shape
            if self.batch_first:
                g_out = g_out.transpose(1, 0, 2)
            dout = np.ascontiguousarray(g_out).reshape(L * N, g_out.shape[-1])
            if layout.rows is not None:  # gradients at padding never enter
                (packed,) = alloc_blocks(((1, dout.shape[1]),), layout.rows.size, self.dtype, self._pool(),
                                         "dout_packed")
                dout = np.take(dout, layout.rows, axis=0, out=packed)
        dx, grad_states = self._run_backward(dout, parts, rec)
        self._record = None
        if layout.sorted_indices is not None:
            grad_states = [g[:, layout.unsorted_indices] for g in grad_states]
        if layout.kind == "packed":
            grad_input = PackedSequence(dx, layout.batch_sizes_array, layout.sorted_indices, layout.unsorted_indices)
        else:
            if layout.rows is not None:
                full = np.zeros((L * N, self.input_size), self.dtype)
                full[layout.rows] = dx
                dx = full
            grad_input = dx.reshape(L, N, self.input_size)
            if self.batch_first:
                grad_input = np.ascontiguousarray(grad_input.transpose(1, 0, 2))
            if not layout.batched:
                grad_input = grad_input[0] if self.batch_first else grad_input[:, 0]
        if not layout.batched:
            grad_states = [g[:, 0] for g in grad_states]
        if self.kind.has_cell:
            return grad_input, (grad_states[0], grad_states[1])
        return grad_input, grad_states[0]

    def _split_state_grads(self, grad_hn, layout):
        names = ("grad_h_n", "grad_c_n") if self.kind.has_cell else ("grad_h_n",)
        if self.kind.has_cell:
            if grad_hn is None:
                grad_hn = (None, None)
            if not isinstance(grad_hn, (tuple, list)) or len(grad_hn) != 2:
                raise TypeError("LSTM: grad_hn must be None or a pair (grad_h_n, grad_c_n)")
        else:
            grad_hn = (grad_hn,)
        parts = []
        for g, name, shape in zip(grad_hn, names, layout.state_shapes):
            if g is None:
                parts.append(np.zeros(shape, self.dtype))
                continue
            g = as_array(g, name, self.dtype, self._label)
            if g.shape != shape:
                raise ValueError(f"{self._label}: {name} has shape {g.shape}, expected {shape}")
            parts.append(g)
        return parts

    def _run_backward(self, dout, grad_finals, rec):
        """Backward over all layers; ``dout`` (T, D*H_out) packed time-major.  Runs two
        scans at a time where the forward did (see :meth:`_side_by_side`)."""
        D, L = self.num_directions, self.num_layers
        grad_states = [np.empty(g.shape, self.dtype) for g in grad_finals]
        pool = self._pool()
        dxs = []  # the input gradient of each layer: the next layer down's output gradient
        for layer in range(L):
            x_rows, in_size = rec.records[layer * D].x.shape
            dxs.append(np.empty((x_rows, in_size), self.dtype) if layer == 0  # returned to the caller
                       else alloc_blocks(((1, in_size),), x_rows, self.dtype, pool, (layer, "dx"))[0])

        def run(layer, d, dx, accumulate=False, pipeline=None):
            idx = layer * D + d
            self._add_grads(grad_states, idx, *self._direction_backward(
                rec.records[idx], idx, dout if layer == L - 1 else dxs[layer + 1], grad_finals, pool, dx, accumulate,
                pipeline))

        if rec.side_by_side == "layers":  # top layer first, each reading its output gradient as it comes
            run_pipeline(L, lambda i, source, sink: run(L - 1 - i, 0, dxs[L - 1 - i], pipeline=(source, sink)))
            return dxs[0], grad_states
        for layer in reversed(range(L)):
            dx = dxs[layer]
            if rec.side_by_side == "directions":
                (dx_rev,) = alloc_blocks(((1, dx.shape[1]),), dx.shape[0], self.dtype, pool, (layer, "dx reverse"))
                run_side_by_side(lambda: run(layer, 1, dx_rev), lambda: run(layer, 0, dx), blas=not self._native())
                dx += dx_rev
            else:
                for d in range(D):
                    run(layer, d, dx, accumulate=d > 0)
            if layer > 0 and rec.masks[layer - 1] is not None:
                dx *= rec.masks[layer - 1]  # through dropout
        return dxs[0], grad_states

    def _direction_backward(self, record, idx, dout, grad_finals, pool, dx, accumulate=False, pipeline=None):
        """Backward of layer-direction ``idx`` from its columns of ``dout`` (T, D*H_out):
        ``(initial-state gradients, parameter gradients)``; the input gradient goes to ``dx``."""
        P = self._h_out
        d = idx % self.num_directions
        dstate = tuple(np.array(g[idx], order="C", copy=True) for g in grad_finals)
        _, dstate0, pgrads = direction_backward(record, dout[:, d * P : (d + 1) * P], dstate, pool, idx, dx,
                                                accumulate, pipeline, threads.THREADED)
        return dstate0, pgrads

    def _add_grads(self, grad_states, idx, dstate0, pgrads):
        """File layer-direction ``idx``'s gradients: its initial-state gradients into
        ``grad_states``, its parameter gradients added to ``self.grads``."""
        _put(grad_states, idx, dstate0)
        for name, g in zip(self._layer_names[idx], pgrads):
            if name is not None:
                self._grads[name] += g

_SHAPES_DOC = """
    Shapes (N batch, L length, D = 2 if bidirectional else 1, H_in = input_size,
    H = hidden_size, H_out = proj_size or hidden_size):

    ========== ============================================ ==========================
    input      (L, N, H_in), (N, L, H_in) if batch_first      (L, H_in) unbatched
    h_0, h_n   (D * num_layers, N, H_out)                     (D * num_layers, H_out)
    c_0, c_n   (D * num_layers, N, H)  (LSTM)                 (D * num_layers, H)
    output     (L, N, D * H_out), (N, L, D * H_out) if b.f.   (L, D * H_out)
    ========== ============================================ ==========================

    ``batch_first`` never applies to the states.  ``output`` holds the last layer's
    state at every step; ``h_n`` every layer's state at the last step, so
    ``output[-1, :, :H_out] == h_n[-D]`` (``output[:, -1]`` with batch_first) and, when
    bidirectional, the reverse half of ``output[0]`` equals ``h_n[-1]``.

    Layer ``k > 0`` takes the ``D * H_out`` output of layer ``k - 1`` as input; in training
    mode with ``dropout > 0`` that input is multiplied by a Bernoulli mask scaled by
    ``1 / (1 - dropout)``.  Parameters are named as in PyTorch (``weight_ih_l{k}``,
    ``weight_hh_l{k}``, ``bias_ih_l{k}``, ``bias_hh_l{k}``, suffix ``_reverse``) and
    drawn from U(-1/sqrt(H), 1/sqrt(H)) with ``seed``.
"""


class RNN(RNNBase):
    __doc__ = r"""Elman RNN.  For each layer and step:

        <equations>

    with relu in place of tanh when ``nonlinearity="relu"``.  weight_ih (H, H_in or D*H),
    weight_hh (H, H).

    Example::

        >>> rnn = RNN(5, 6, num_layers=4, batch_first=True)
        >>> output, h_n = rnn(np.random.randn(2, 3, 5).astype(np.float32))
        >>> output.shape, h_n.shape
        ((2, 3, 6), (4, 2, 6))
    """ + _SHAPES_DOC

    _label = "RNN"

    def __init__(self, input_size, hidden_size, num_layers=1, nonlinearity="tanh", bias=True,
                 batch_first=False, dropout=0.0, bidirectional=False, *, dtype=np.float32, seed=None, **kwargs):
        if "proj_size" in kwargs:
            raise ValueError("proj_size argument is only supported for LSTM, not RNN or GRU")
        if kwargs:
            raise TypeError(f"RNN got an unexpected keyword argument '{next(iter(kwargs))}'")
        self.nonlinearity = check_nonlinearity(nonlinearity)
        super().__init__(f"rnn_{nonlinearity}", input_size, hidden_size, num_layers, bias, batch_first,
                         dropout, bidirectional, dtype=dtype, seed=seed)


class LSTM(RNNBase):
    __doc__ = r"""Long short-term memory, optionally with a projection (LSTMP).  For each layer and step:

        <equations>

    weight_ih = [W_ii; W_if; W_ig; W_io] (4H, H_in), weight_hh (4H, H_out), biases (4H,),
    weight_hr (proj_size, H).  Call ``output, (h_n, c_n) = lstm(input, (h_0, c_0))``.

    Example::

        >>> lstm = LSTM(5, 10, num_layers=2, batch_first=True)
        >>> output, (h_n, c_n) = lstm(np.random.randn(4, 3, 5).astype(np.float32))
        >>> output.shape, h_n.shape, c_n.shape
        ((4, 3, 10), (2, 4, 10), (2, 4, 10))
    """ + _SHAPES_DOC

    _label = "LSTM"

    def __init__(self, input_size, hidden_size, num_layers=1, bias=True, batch_first=False, dropout=0.0,
                 bidirectional=False, proj_size=0, *, dtype=np.float32, seed=None):
        super().__init__("lstm", input_size, hidden_size, num_layers, bias, batch_first, dropout,
                         bidirectional, proj_size, dtype=dtype, seed=seed)


class GRU(RNNBase):
    __doc__ = r"""Gated recurrent unit.  For each layer and step:

        <equations>

    weight_ih = [W_ir; W_iz; W_in] (3H, H_in), weight_hh (3H, H), biases (3H,).

    Example::

        >>> gru = GRU(5, 8, bidirectional=True)
        >>> output, h_n = gru(np.random.randn(3, 2, 5).astype(np.float32))
        >>> output.shape, h_n.shape
        ((3, 2, 16), (2, 2, 8))
    """ + _SHAPES_DOC

    _label = "GRU"

    def __init__(self, input_size, hidden_size, num_layers=1, bias=True, batch_first=False, dropout=0.0,
                 bidirectional=False, *, dtype=np.float32, seed=None, **kwargs):
        if "proj_size" in kwargs:
            raise ValueError("proj_size argument is only supported for LSTM, not RNN or GRU")
        if kwargs:
            raise TypeError(f"GRU got an unexpected keyword argument '{next(iter(kwargs))}'")
        super().__init__("gru", input_size, hidden_size, num_layers, bias, batch_first, dropout,
                         bidirectional, dtype=dtype, seed=seed)


def _equations_into_docstrings():
    """The classes' docstrings show the equations of the reference steps
    (:mod:`nprnn.functional.reference`), where they are written once."""
    from .functional import reference

    for cls, step in ((RNN, reference.rnn_step_forward), (LSTM, reference.lstm_step_forward),
                      (GRU, reference.gru_step_forward)):
        lines = "\n".join("        " + e for e in reference.equations(step))
        cls.__doc__ = cls.__doc__.replace("        <equations>", lines)


_equations_into_docstrings()

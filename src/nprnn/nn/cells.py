"""Single-step cells: RNNCell, LSTMCell, GRUCell.

A cell is a one-step, one-layer run of the same kernels the layers use (a sequence of
length 1), so the two can never disagree.  The equations are those of
:class:`nprnn.RNN`, :class:`nprnn.LSTM` and :class:`nprnn.GRU`.

Backward through a loop of cell calls works like a stack: each training-mode call
pushes what its backward needs and each ``backward`` pops the latest, so a manual
time loop is undone by calling ``backward`` in reverse order (each thread has its own
stack; ``eval()`` empties them, and past ``max_pending_records``, 256 by default, a warning
says memory grows).  A pending record holds 2 (RNNCell), 7 (LSTMCell) or 5 (GRUCell)
arrays of ``N × hidden_size`` values of the cell's dtype, plus about 2 KB of Python
objects, and keeps the call's ``input`` and ``hx`` arrays alive: an LSTMCell with
N = 16, H = 200 in float32 holds 16 × 200 × 7 × 4 B ≈ 90 KB per call, 23 MB at the
warning::

    for t in range(L):              h = cell(x[t], h)
    for t in reversed(range(L)):    dx[t], dh = cell.backward(dh + dout[t])
"""
from __future__ import annotations

from typing import Any, Optional, Sequence

import numpy as np

from .._checks import as_array, check_bool, check_int, check_memory, check_nonlinearity
from .._typing import Array, Params
from ..config import settings
from ..functional import KINDS, direction_backward, direction_forward, native
from ..functional.cells import own_names
from ..parallel.threads import THREADED, activity
from .init import check_forget_bias, forget_bias_
from .module import Module, init_own, init_uniform, resolve_dtype, resolve_rng


class RNNCellBase(Module):
    _label = "RNNCellBase"
    forget_bias: Optional[float] = None  # the LSTM cells' option (set before RNNCellBase.__init__ draws the weights)

    def __init__(self, mode: str, input_size: int, hidden_size: int, bias: bool = True, *, dtype: Any = np.float32,
                 seed: Any = None) -> None:
        super().__init__()
        self.input_size = check_int("input_size", input_size)
        self.hidden_size = check_int("hidden_size", hidden_size)
        self.bias = check_bool("bias", bias)
        self.kind = KINDS[mode]
        self.dtype = resolve_dtype(dtype)
        self._rng = resolve_rng(seed)
        G = self.kind.num_gates * self.hidden_size
        own = sum(width for _, width, _ in self.kind.params) * self.hidden_size  # a kind's own (layer norms)
        hh = self.kind.has_hh  # (the linear-scan kinds have no W_hh, b_hh)
        check_memory(f"{self._label}({input_size}, {hidden_size})'s parameters",
                     G * (self.input_size + self.hidden_size * hh + (1 + hh) * self.bias) + own, self.dtype)
        self.register_parameter("weight_ih", np.empty((G, self.input_size), self.dtype))
        if hh:
            self.register_parameter("weight_hh", np.empty((G, self.hidden_size), self.dtype))
        if self.bias:
            self.register_parameter("bias_ih", np.empty((G,), self.dtype))
            if hh:
                self.register_parameter("bias_hh", np.empty((G,), self.dtype))
        for name, width, _ in self.kind.params:
            self.register_parameter(name, np.empty((width * self.hidden_size,), self.dtype))
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """Draw every matrix and bias from U(-1/sqrt(hidden_size), 1/sqrt(hidden_size)); a
        kind's own parameters (a layer norm's gains and shifts) take their initial values."""
        init_uniform(self, self.hidden_size, self._rng)
        init_own(self, self.kind, [own_names(self.kind)])
        if self.forget_bias is not None:
            forget_bias_(self, self.forget_bias)

    def extra_repr(self) -> str:
        s = f"{self.input_size}, {self.hidden_size}"
        if not self.bias and not self.kind.params:
            s += ", bias=False"
        if getattr(self, "nonlinearity", "tanh") != "tanh":
            s += f", nonlinearity='{self.nonlinearity}'"
        if self.forget_bias is not None:
            s += f", forget_bias={self.forget_bias}"
        if self.dtype != np.float32:
            s += ", dtype=float64"
        return s

    def _params(self) -> Params:
        p = self._parameters
        own = tuple(p[name] for name in own_names(self.kind))
        return (p["weight_ih"], p.get("weight_hh"), p.get("bias_ih"), p.get("bias_hh"), None) + own  # type: ignore[return-value]

    def _options(self) -> Any:
        """A kind's options for its kernels (the linear-scan kinds' mode), or None."""
        return None

    def _reused(self, input: Any, hx: Any) -> Optional[tuple[Array, ...]]:
        """An inference step on the compiled tier that runs the kernel call made for the
        last step of the same shapes in this thread (as the layers' ``_reused``: the same
        numbers; a one-step call reads its weights forwards and backwards in turn, as a
        stream's steps do).  None where the step is not such a step."""
        if (type(input) is not np.ndarray or input.dtype != self.dtype or input.ndim not in (1, 2)
                or input.shape[-1] != self.input_size or not input.size or self._options() is not None
                or not native.supports(self.kind, self.dtype)):
            return None
        shapes = [input.shape[:-1] + (self.hidden_size,)] * (2 if self.kind.has_cell else 1)
        given = native.exact_states(hx, self.kind.has_cell, shapes, self.dtype)
        if given is None:
            return None
        N = input.shape[0] if input.ndim == 2 else 1
        run = native.run_again(self._pool(), input.shape, lambda: native.reusable(
            self.kind, [self._params()], N, 1, self.dtype, self._prepared, THREADED), input,
            tuple(h[None] for h in given))
        if run is None:
            return None
        activity["reused calls"] += 1
        return tuple(s.reshape(shape).copy() for s, shape in zip(run.states[0], shapes))

    def _step(self, input: Any, hx: Any) -> tuple[Array, ...]:
        """Validate, run one step; returns the new state tuple (batched or not)."""
        if not self.training and settings.reuse_calls:
            again = self._reused(input, hx)
            if again is not None:
                return again
        label = self._label
        if not hasattr(input, "ndim"):
            input = as_array(input, "input", self.dtype, label)
        if input.ndim not in (1, 2):
            raise ValueError(f"{label}: Expected input to be 1D or 2D, got {input.ndim}D instead")
        batched = input.ndim == 2
        has_cell = self.kind.has_cell
        if hx is not None:
            if has_cell:
                if not isinstance(hx, (tuple, list)) or len(hx) != 2:
                    raise RuntimeError("lstm_cell expects two hidden states")
                parts = list(hx)
            else:
                parts = [hx]
            for k, h in enumerate(parts):
                if not hasattr(h, "ndim"):
                    parts[k] = h = as_array(h, "hx", self.dtype, label)
                what = f"hx[{k}]" if has_cell else "hidden"
                if h.ndim not in (1, 2):
                    raise ValueError(f"{label}: Expected {what} to be 1D or 2D, got {h.ndim}D instead")
                if h.ndim != input.ndim:
                    raise ValueError(
                        f"{label}: Expected {what} to be {input.ndim}D for {input.ndim}D input, got {h.ndim}D instead"
                    )
        x = as_array(input, "input", self.dtype, label)
        if x.shape[-1] != self.input_size:
            raise RuntimeError(f"input has inconsistent input_size: got {x.shape[-1]} expected {self.input_size}")
        x2 = x if batched else x[None]
        N = x2.shape[0]
        widths = (self.hidden_size,) * (2 if has_cell else 1)
        if hx is None:
            states: Sequence[Array] = tuple(np.zeros((N, w), self.dtype) for w in widths)
        else:
            states = given = []
            for k, h in enumerate(parts):
                h2 = as_array(h, "hx", self.dtype, label)
                h2 = h2 if batched else h2[None]
                if h2.shape[0] != N:
                    raise RuntimeError(f"Input batch size {N} doesn't match hidden{k} batch size {h2.shape[0]}")
                if h2.shape[1] != widths[k]:
                    raise RuntimeError(
                        f"hidden{k} has inconsistent hidden_size: got {h2.shape[1]}, expected {widths[k]}"
                    )
                given.append(h2)
        out = np.empty((N, self.hidden_size), self.dtype)
        train = self.training
        final, rec = direction_forward(self.kind, np.ascontiguousarray(x2), self._params(), tuple(states), [N], False,
                                       out, train, self._options(), key=0, cache=self._prepared, runner=THREADED)
        if train:
            self._push((rec, batched, N))
        return final if batched else tuple(f[0] for f in final)

    def _step_backward(self, grads: tuple[Any, ...]) -> tuple[Array, tuple[Array, ...]]:
        rec, batched, N = self._latest()
        names = ("grad_h", "grad_c") if self.kind.has_cell else ("grad_h",)
        shape = (N, self.hidden_size) if batched else (self.hidden_size,)
        dstate = []
        for g, name in zip(grads, names):
            if g is None:
                dstate.append(np.zeros((N, self.hidden_size), self.dtype))
                continue
            g = as_array(g, name, self.dtype, self._label)
            if g.shape != shape:
                raise ValueError(f"{self._label}: {name} has shape {g.shape}, expected {shape}")
            dstate.append(np.array(g.reshape(N, self.hidden_size), order="C", copy=True))
        self._take()
        dout = np.zeros((N, self.hidden_size), self.dtype)
        dx, dstate0, pgrads = direction_backward(rec, dout, tuple(dstate), runner=THREADED)
        assert dx is not None  # (an input gradient is asked for)
        self._add_grads(("weight_ih", "weight_hh", "bias_ih", "bias_hh", None) + own_names(self.kind), pgrads)
        if not batched:
            return dx[0], tuple(d[0] for d in dstate0)
        return dx, tuple(dstate0)


class _OneStateCell(RNNCellBase):
    """A cell whose state is one array, h (RNNCell, GRUCell)."""

    def forward(self, input: Any, hx: Any = None) -> Any:
        return self._step(input, hx)[0]

    def backward(self, grad_h: Any) -> tuple[Array, Array]:
        dx, (dh,) = self._step_backward((grad_h,))
        return dx, dh


class RNNCell(_OneStateCell):
    """One step of :class:`nprnn.RNN`: ``h' = act(x W_ih.T + b_ih + h W_hh.T + b_hh)``.

    ``h' = cell(x, h=None)`` with x (N, H_in) or (H_in,); ``grad_x, grad_h = cell.backward(grad_h')``.
    """

    _label = "RNNCell"

    def __init__(self, input_size: int, hidden_size: int, bias: bool = True, nonlinearity: str = "tanh", *,
                 dtype: Any = np.float32, seed: Any = None) -> None:
        self.nonlinearity = check_nonlinearity(nonlinearity)
        super().__init__(f"rnn_{nonlinearity}", input_size, hidden_size, bias, dtype=dtype, seed=seed)


class GRUCell(_OneStateCell):
    """One step of :class:`nprnn.GRU`.

    ``h' = cell(x, h=None)``; ``grad_x, grad_h = cell.backward(grad_h')``.
    """

    _label = "GRUCell"

    def __init__(self, input_size: int, hidden_size: int, bias: bool = True, *, dtype: Any = np.float32,
                 seed: Any = None) -> None:
        super().__init__("gru", input_size, hidden_size, bias, dtype=dtype, seed=seed)


class LSTMCell(RNNCellBase):
    """One step of :class:`nprnn.LSTM` (without projection).

    ``h', c' = cell(x, (h, c)=None)``; ``grad_x, (grad_h, grad_c) = cell.backward((grad_h', grad_c'))``
    where either gradient may be None (zeros).
    """

    _label = "LSTMCell"

    def __init__(self, input_size: int, hidden_size: int, bias: bool = True, *, forget_bias: Optional[float] = None,
                 dtype: Any = np.float32, seed: Any = None) -> None:
        self.forget_bias = check_forget_bias(self._label, forget_bias, bias is not False)
        super().__init__("lstm", input_size, hidden_size, bias, dtype=dtype, seed=seed)

    def forward(self, input: Any, hx: Any = None) -> Any:
        h, c = self._step(input, hx)
        return h, c

    def backward(self, grads: Any) -> tuple[Array, tuple[Array, Array]]:
        if not isinstance(grads, (tuple, list)) or len(grads) != 2:
            raise TypeError("LSTMCell.backward expects a pair (grad_h, grad_c); either may be None")
        dx, (dh, dc) = self._step_backward(tuple(grads))
        return dx, (dh, dc)


class LayerNormGRUCell(_OneStateCell):
    """One step of :class:`nprnn.LayerNormGRU`: parameters ``weight_ih`` (3H, H_in),
    ``weight_hh`` (3H, H), ``ln_ih_weight``, ``ln_ih_bias``, ``ln_hh_weight``,
    ``ln_hh_bias`` (3H each); no biases (the norms' shifts stand in for them).

    ``h' = cell(x, h=None)``; ``grad_x, grad_h = cell.backward(grad_h')``.
    """

    _label = "LayerNormGRUCell"

    def __init__(self, input_size: int, hidden_size: int, *, dtype: Any = np.float32, seed: Any = None) -> None:
        super().__init__("ln_gru", input_size, hidden_size, False, dtype=dtype, seed=seed)


class LayerNormLSTMCell(LSTMCell):
    """One step of :class:`nprnn.LayerNormLSTM` (without projection), the
    ``LayerNormLSTMCell`` of PyTorch's ``benchmarks/fastrnns/custom_lstms.py``: parameters
    ``weight_ih`` (4H, H_in), ``weight_hh`` (4H, H), ``ln_ih_weight``, ``ln_ih_bias``,
    ``ln_hh_weight``, ``ln_hh_bias`` (4H each), ``ln_c_weight``, ``ln_c_bias`` (H each); no
    biases.  Called as :class:`LSTMCell`.
    """

    _label = "LayerNormLSTMCell"

    def __init__(self, input_size: int, hidden_size: int, *, forget_bias: Optional[float] = None,
                 dtype: Any = np.float32, seed: Any = None) -> None:
        self.forget_bias = check_forget_bias(self._label, forget_bias, True)
        RNNCellBase.__init__(self, "ln_lstm", input_size, hidden_size, False, dtype=dtype, seed=seed)


class _MinCell(_OneStateCell):
    """One step of :class:`nprnn.MinGRU` / :class:`nprnn.MinLSTM` (``mode`` as theirs)."""

    def __init__(self, kind: str, input_size: int, hidden_size: int, bias: bool, mode: str, dtype: Any,
                 seed: Any) -> None:
        if mode not in ("log", "linear"):
            raise ValueError(f"{self._label}: mode must be 'log' or 'linear', got {mode!r}")
        self.scan_mode = mode
        super().__init__(kind, input_size, hidden_size, bias, dtype=dtype, seed=seed)

    def _options(self) -> Any:
        return {"log": self.scan_mode == "log"}

    def extra_repr(self) -> str:
        return super().extra_repr() + (", mode='linear'" if self.scan_mode == "linear" else "")

    def forward(self, input: Any, hx: Any = None) -> Any:
        if self.scan_mode == "log" and hx is not None and np.any(np.asarray(hx) < 0):
            raise ValueError(f"{self._label}: mode='log' needs h >= 0 (its candidate g(v) is positive); got a "
                             "negative entry (mode='linear' takes any h)")
        return super().forward(input, hx)


class MinGRUCell(_MinCell):
    """One step of :class:`nprnn.MinGRU`: ``weight_ih`` (2H, H_in), ``bias_ih`` (2H,).

    ``h' = cell(x, h=None)``; ``grad_x, grad_h = cell.backward(grad_h')``.
    """

    _label = "MinGRUCell"

    def __init__(self, input_size: int, hidden_size: int, bias: bool = True, *, mode: str = "log",
                 dtype: Any = np.float32, seed: Any = None) -> None:
        super().__init__("mingru", input_size, hidden_size, bias, mode, dtype, seed)


class MinLSTMCell(_MinCell):
    """One step of :class:`nprnn.MinLSTM`: ``weight_ih`` (3H, H_in), ``bias_ih`` (3H,).

    ``h' = cell(x, h=None)``; ``grad_x, grad_h = cell.backward(grad_h')``.
    """

    _label = "MinLSTMCell"

    def __init__(self, input_size: int, hidden_size: int, bias: bool = True, *, mode: str = "log",
                 dtype: Any = np.float32, seed: Any = None) -> None:
        super().__init__("minlstm", input_size, hidden_size, bias, mode, dtype, seed)

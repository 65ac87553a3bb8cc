"""Multi-layer recurrent layers: RNN, LSTM (with projections) and GRU.

The layers validate, hold parameters and keep records; the caller's arrays map onto
packed rows in :mod:`nprnn.layout`, and the numbers are computed by the layer stack of
:mod:`nprnn.functional.stack` over the one time loop of :mod:`nprnn.functional.scan`.
"""
from __future__ import annotations

import warnings
from dataclasses import dataclass
from typing import Any, Optional, cast

import numpy as np

from .._checks import as_array, check_bool, check_dropout, check_int, check_memory, check_nonlinearity, check_zoneout
from .._typing import Array, Params
from ..config import settings
from ..functional import KINDS, native
from ..functional.native import parameter_epoch
from ..functional.scan import Regularizers
from ..functional.stack import StackRecord, _dropout_mask, bernoulli, stack_backward, stack_forward
from ..parallel.threads import THREADED, activity
from .init import check_forget_bias, forget_bias_
from .layout import Layout, check_grads, layout_of
from .module import Module, init_own, init_uniform, resolve_dtype, resolve_rng

_NAMES = ("weight_ih_l{}{}", "weight_hh_l{}{}", "bias_ih_l{}{}", "bias_hh_l{}{}", "weight_hr_l{}{}")


@dataclass(frozen=True)
class LayerRecord:
    """What a training-mode forward of a layer leaves for its backward: the stack's record
    and how the caller's arrays mapped onto its rows."""

    stack: StackRecord
    layout: Layout
    every: Optional[tuple[tuple[int, ...], ...]] = None  # with return_states: the shapes of the states returned
    weight_masks: Optional[list[Array]] = None  # weight_drop: each layer-direction's mask on W_hh (scaled)
    regs: Optional[list[Regularizers]] = None  # recurrent dropout's and zoneout's masks per layer-direction


class RNNBase(Module):
    """Shared machinery of :class:`RNN`, :class:`LSTM` and :class:`GRU`: parameters,
    checks, and the records between forward and backward."""

    _label = "RNNBase"
    _reverse_only = False  # ONNX's direction="reverse": one direction, run backwards in time
    weight_drop = 0.0  # (layers made without RNNBase.__init__: quantized copies, ONNX's variants)
    recurrent_dropout = 0.0
    zoneout: Any = 0.0
    _zone = (0.0, 0.0)  # zoneout as (p_c, p_h)
    forget_bias: Optional[float] = None  # the LSTMs' option (set before RNNBase.__init__ draws the weights)

    def _step_options(self) -> Optional[list[Any]]:
        """Each layer-direction's extra settings for the kernels (a registered cell kind's),
        or None when there are none."""
        return None

    def __init__(self, mode: str, input_size: int, hidden_size: int, num_layers: int = 1, bias: bool = True,
                 batch_first: bool = False, dropout: float = 0.0, bidirectional: bool = False, proj_size: int = 0,
                 *, weight_drop: float = 0.0, recurrent_dropout: float = 0.0, zoneout: Any = 0.0,
                 dtype: Any = np.float32, seed: Any = None) -> None:
        super().__init__()
        dropout = check_dropout(dropout)
        self.weight_drop = check_dropout(weight_drop, "weight_drop")
        self.recurrent_dropout = check_dropout(recurrent_dropout, "recurrent_dropout")
        self.kind = KINDS[mode]
        self._zone = check_zoneout(self._label, zoneout, self.kind.has_cell)
        self.zoneout = self._zone if isinstance(zoneout, (tuple, list)) else self._zone[1]
        if dropout > 0 and num_layers == 1:
            warnings.warn(
                "dropout option adds dropout after all but last recurrent layer, so non-zero dropout expects "
                f"num_layers greater than 1, but got dropout={dropout} and num_layers={num_layers}",
                stacklevel=3,
            )
        self.bias = check_bool("bias", bias)
        self.batch_first = check_bool("batch_first", batch_first)
        self.input_size = check_int("input_size", input_size)
        self.hidden_size = check_int("hidden_size", hidden_size)
        self.num_layers = check_int("num_layers", num_layers)
        self.bidirectional = check_bool("bidirectional", bidirectional)
        if isinstance(proj_size, bool) or not isinstance(proj_size, (int, np.integer)):
            raise TypeError(f"proj_size should be of type int, got: {type(proj_size).__name__}")
        if proj_size < 0:
            raise ValueError("proj_size should be a positive integer or zero to disable projections")
        if proj_size >= hidden_size:
            raise ValueError("proj_size has to be smaller than hidden_size")
        self.mode = mode
        self.dropout = dropout
        self.proj_size = int(proj_size)
        self.dtype = resolve_dtype(dtype)
        self._rng = resolve_rng(seed)
        D = self.num_directions
        G = self.kind.num_gates * hidden_size
        H_out = self._h_out
        inputs = input_size + (num_layers - 1) * H_out * D  # the input widths of all layers
        own = sum(width for _, width, _ in self.kind.params) * hidden_size  # a kind's own parameters (layer norms)
        hh = self.kind.has_hh  # (the linear-scan kinds have no W_hh, b_hh)
        values = D * (G * (inputs + num_layers * (H_out * hh + (1 + hh) * bias))
                      + num_layers * (self.proj_size * hidden_size + own))
        check_memory(f"{self._label}({input_size}, {hidden_size}, num_layers={num_layers})'s parameters", values,
                     self.dtype)
        self._layer_names = []  # per (layer, direction): 5 names, then the kind's own; None where absent
        for layer in range(num_layers):
            in_size = input_size if layer == 0 else H_out * D
            for d in range(D):
                suffix = "_reverse" if d else ""
                names = [n.format(layer, suffix) for n in _NAMES] + [f"{n}_l{layer}{suffix}" for n, _, _ in
                                                                     self.kind.params]
                shapes = [(G, in_size), (G, H_out), (G,), (G,), (self.proj_size, hidden_size)] + [
                    (width * hidden_size,) for _, width, _ in self.kind.params]
                keep = [True, hh, bias, bias and hh, self.proj_size > 0] + [True] * len(self.kind.params)
                for j in [0, 1, 2, 3, *range(5, len(names)), 4]:  # the projection last, as PyTorch lists it
                    if keep[j]:
                        self.register_parameter(names[j], np.empty(shapes[j], self.dtype))
                self._layer_names.append(tuple(n if k else None for n, k in zip(names, keep)))
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """Draw every matrix and bias from U(-1/sqrt(hidden_size), 1/sqrt(hidden_size)); a
        kind's own parameters (a layer norm's gains and shifts) take their initial values."""
        init_uniform(self, self.hidden_size, self._rng)
        init_own(self, self.kind, [names[5:] for names in self._layer_names])
        if self.forget_bias is not None:
            forget_bias_(self, self.forget_bias)

    @property
    def num_directions(self) -> int:
        return 2 if self.bidirectional else 1

    @property
    def _h_out(self) -> int:
        return self.proj_size or self.hidden_size

    def _state_widths(self) -> tuple[Any, ...]:
        return (self._h_out, self.hidden_size) if self.kind.has_cell else (self._h_out,)

    def flatten_parameters(self) -> None:
        """Nothing to do (PyTorch's packs weights for cuDNN; torch code calls it, so it is here)."""

    def extra_repr(self) -> str:
        s = f"{self.input_size}, {self.hidden_size}"
        act = self.__dict__.get("nonlinearity", "tanh")
        options = [(self.proj_size, f"proj_size={self.proj_size}"),
                   (self.num_layers != 1, f"num_layers={self.num_layers}"), (act != "tanh", f"nonlinearity='{act}'"),
                   (not self.bias and not self.kind.params, "bias=False"), (self.batch_first, "batch_first=True"),
                   (self.dropout, f"dropout={self.dropout}"), (self.bidirectional, "bidirectional=True"),
                   (self.weight_drop, f"weight_drop={self.weight_drop}"),
                   (self.recurrent_dropout, f"recurrent_dropout={self.recurrent_dropout}"),
                   (self.zoneout, f"zoneout={self.zoneout}"),
                   (self.forget_bias is not None, f"forget_bias={self.forget_bias}"),
                   (self.dtype != np.float32, "dtype=float64")]
        return s + "".join(", " + text for on, text in options if on)

    def forward(self, input: Any, hx: Any = None, lengths: Any = None, return_states: bool = False
                ) -> tuple[Any, ...]:
        """Run the layer.  See the class docstring for shapes.

        ``input`` is a padded array or a :class:`~nprnn.utils.rnn.PackedSequence` (then the
        output is packed too).  ``lengths`` (padded input only) gives each sequence's length:
        the result equals packing, running and unpacking, without the caller packing.
        ``return_states=True`` returns ``(output, final states, states)``: ``states`` holds
        every layer's and direction's state at every step (see the class docstring).
        """
        return_states = check_bool("return_states", return_states)
        if not self.training and lengths is None and not return_states and settings.reuse_calls:
            again = self._reused(input, hx)
            if again is not None:
                return again
        layout, x, states = layout_of(self, input, hx, lengths)
        self._keep(None)  # this thread's previous record's buffers are about to be reused
        pool = self._pool()
        every: Optional[list[Any]] = [] if return_states else None
        params, masks = self._params(), None
        cache: Optional[dict[Any, Any]] = self._prepared
        if self.training and self.weight_drop > 0:  # DropConnect on W_hh, one mask per call (AWD-LSTM's WeightDrop)
            masks = [_dropout_mask(p[1].shape, self.weight_drop, self._rng, self.dtype) for p in params]
            params = [cast(Params, (p[0], p[1] * m) + tuple(p[2:])) for p, m in zip(params, masks)]
            cache = None  # (the dropped weights are this call's own)
        sizes = layout.batch_sizes
        regs = self._regularizers(sizes[0] if sizes else 0, sum(sizes), layout)
        out, finals, record = stack_forward(
            self.kind, layout.to_rows(x, pool, "x_packed"), params, layout.to_run(states),
            layout.batch_sizes, num_layers=self.num_layers, num_directions=self.num_directions,
            train=self.training, reverse_only=self._reverse_only, dropout=self.dropout, rng=self._rng,
            options=self._step_options(), pool=pool, cache=cache, runner=THREADED, every_step=every, regs=regs)
        result = self._pair(layout.from_rows(out), layout.from_run(finals))
        if every is None:
            if record is not None:
                self._keep(LayerRecord(record, layout, None, masks, regs))
            return result
        seq = [np.stack([self._every_rows(layout, part[k]) for part in every]) for k in range(len(every[0]))
               if every[0][k] is not None]
        if record is not None:
            self._keep(LayerRecord(record, layout, tuple(a.shape for a in seq), masks, regs))
        return result + ((seq[0], seq[1]) if self.kind.has_cell else seq[0],)

    def _reused(self, input: Any, hx: Any) -> Optional[tuple[Any, ...]]:
        """An inference call on the compiled tier that runs the kernel calls made for the
        last call of the same shapes in this thread (``native.reusable``): the same loops on
        the same plans, so the same numbers, without planning and checking them again.
        None where the call is not such a call (anything unusual goes the general way,
        which checks it)."""
        if (type(input) is not np.ndarray or input.dtype != self.dtype or input.ndim not in (2, 3)
                or input.shape[-1] != self.input_size or self.num_directions != 1 or self._reverse_only
                or any(self._zone) or self._step_options() is not None or not native.supports(self.kind, self.dtype)):
            return None
        batched = input.ndim == 3
        L, N = (input.shape[1::-1] if self.batch_first else input.shape[:2]) if batched else (input.shape[0], 1)
        shapes = [(self.num_layers, N, w) if batched else (self.num_layers, w) for w in self._state_widths()]
        given = native.exact_states(hx, self.kind.has_cell, shapes, self.dtype)
        if given is None or not L or not N:
            return None

        def build() -> Optional[native.Reused]:
            G, P, H = self.kind.num_gates, self._h_out, self.hidden_size
            if THREADED.schedule(compiled=True, layers=self.num_layers, directions=1, rows=N * L, steps=L,
                                 gate_width=G * H, row_width=P + H, train=False, pipelinable=True,
                                 first_width=self.input_size + P) is not None:
                return None  # (a wavefront: the general path runs it)
            return native.reusable(self.kind, self._params(), N, L, self.dtype, self._prepared, THREADED)

        rows = input.transpose(1, 0, 2) if batched and self.batch_first else input
        run = native.run_again(self._pool(), input.shape, build, rows, given)
        if run is None:
            return None
        activity["reused calls"] += 1
        self._keep(None)
        out = run.outs[-1].reshape(L, N, -1)
        out = (out.transpose(1, 0, 2) if self.batch_first else out).copy()  # (C order: the caller's own)
        finals = [np.concatenate(s).reshape(shape) for s, shape in zip(zip(*run.states), shapes)]
        return self._pair(out if batched else out[0] if self.batch_first else out[:, 0], finals)

    def _regularizers(self, N: int, T: int, layout: Optional[Layout] = None, train: Optional[bool] = None
                      ) -> Optional[list[Regularizers]]:
        """Each layer-direction's regularizers inside the loop for a call over ``T`` packed
        rows of a batch of ``N``, or None: in training (``train``, default the layer's mode)
        a recurrent-dropout mask per sequence (drawn in the caller's batch order, which
        ``layout`` maps) and zoneout masks per step and unit; in inference zoneout's
        expectation ``p``."""
        train = self.training if train is None else train
        p_c, p_h = self._zone
        rd = self.recurrent_dropout if train else 0.0
        if not rd and not (p_c or p_h):
            return None
        D, H, P = self.num_directions * self.num_layers, self.hidden_size, self._h_out
        rmasks: Any = [None] * D
        if rd:
            rmasks = _dropout_mask((D, N, P), rd, self._rng, self.dtype)
            rmasks = rmasks if layout is None else layout.to_run([rmasks])[0]
        cell = self.kind.has_cell
        regs = []
        for idx in range(D):
            zh = zc = None
            if (p_c or p_h) and train:  # per packed row: d = 1 keeps the previous value
                zh = bernoulli((T, P), p_h, self._rng, self.dtype)
                zc = bernoulli((T, H), p_c, self._rng, self.dtype) if cell else None
            elif p_c or p_h:  # the expectation: p per batch row
                zh = np.full((N, P), p_h, self.dtype)
                zc = np.full((N, H), p_c, self.dtype) if cell else None
            regs.append(Regularizers(None if rmasks[idx] is None else np.ascontiguousarray(rmasks[idx]), zh, zc))
        return regs

    def last_masks(self) -> dict[str, Any]:
        """The masks this thread's latest training forward drew (kept for its backward), in
        the caller's layout: ``"weight_drop"`` a list per layer-direction (row ``k * D +
        d``) of (G*H, H_out) scaled masks on ``weight_hh``; ``"recurrent_dropout"``
        (D*num_layers, N, H_out) scaled masks, shaped like ``h_0``; ``"zoneout_h"`` and
        ``"zoneout_c"`` a list per layer-direction of 0/1 masks ``d`` shaped like the
        output's one direction (H_out, or H for the cell state); ``"dropout"`` a list per
        layer but the last of the scaled masks on its output (shaped like the output);
        absent where off."""
        rec = self._latest()
        out: dict[str, Any] = {}
        if any(m is not None for m in rec.stack.masks):
            out["dropout"] = [self._every_rows(rec.layout, m) for m in rec.stack.masks[:-1]]
        if rec.weight_masks is not None:
            out["weight_drop"] = list(rec.weight_masks)
        regs = rec.regs or []
        if any(r.rmask is not None for r in regs):
            out["recurrent_dropout"] = rec.layout.from_run([np.stack([r.rmask for r in regs])])[0]
        if any(r.zh is not None for r in regs):
            out["zoneout_h"] = [self._every_rows(rec.layout, r.zh) for r in regs]
            if self.kind.has_cell:
                out["zoneout_c"] = [self._every_rows(rec.layout, r.zc) for r in regs]
        return out

    @staticmethod
    def _every_rows(layout: Layout, rows: Array) -> Any:
        """One layer-direction's packed rows of states in the caller's layout (packed input:
        the rows as they are)."""
        return rows if layout.kind == "packed" else layout.from_rows(rows)

    def _grad_every(self, latest: LayerRecord, grad_states: Any) -> Optional[list[tuple[Any, Any]]]:
        """``grad_states`` checked against the states the forward returned, as packed rows
        per layer-direction ``(dh, dc)`` (None where not given)."""
        if grad_states is None:
            return None
        label = self._label
        if latest.every is None:
            raise ValueError(f"{label}.backward: grad_states is the gradient of the states a forward with "
                             "return_states=True returns; the last training forward was called without it")
        has_cell = self.kind.has_cell
        if has_cell and (not isinstance(grad_states, (tuple, list)) or len(grad_states) != 2):
            raise TypeError(f"{label}.backward: grad_states must be None or a pair (grad_h_all, grad_c_all), "
                            "either None")
        parts = list(grad_states) if has_cell else [grad_states]
        rows: list[list[Any]] = [[None] * len(parts) for _ in range(latest.every[0][0])]
        for k, (g, shape) in enumerate(zip(parts, latest.every)):
            if g is None:
                continue
            name = f"grad_states[{k}]" if has_cell else "grad_states"
            g = as_array(g, name, self.dtype, label)
            if g.shape != shape:
                raise ValueError(f"{label}.backward: {name} has shape {g.shape}, expected {shape} (the states')")
            for idx in range(shape[0]):
                rows[idx][k] = (np.ascontiguousarray(g[idx]) if latest.layout.kind == "packed"
                                else latest.layout.to_rows(g[idx]))
        return [(r[0], r[1] if has_cell else None) for r in rows]

    def _params(self) -> list[Params]:
        """Each layer-direction's (w_ih, w_hh, b_ih, b_hh, w_hr), None where absent (made
        again only when some parameter may have changed)."""
        epoch = parameter_epoch()
        held = self.__dict__.get("_params_at")
        if held is not None and held[0] == epoch:
            return held[1]  # type: ignore[no-any-return]
        p = self._parameters
        params = [cast(Params, tuple(None if n is None else p[n] for n in names)) for names in self._layer_names]
        self.__dict__["_params_at"] = (epoch, params)
        return params

    def _pair(self, first: Any, states: list[Array]) -> tuple[Any, ...]:
        """``(first, h)``, or ``(first, (h, c))`` for LSTM."""
        return (first, (states[0], states[1])) if self.kind.has_cell else (first, states[0])

    def backward(self, grad_output: Any, grad_hn: Any = None, grad_states: Any = None, *,
                 input_grad: bool = True) -> tuple[Any, ...]:
        """Backpropagation through time for this thread's last training-mode forward.

        ``grad_output`` has the shape of ``output`` (for packed output: a PackedSequence or
        an array shaped like its ``data``); ``grad_hn`` is the gradient of ``h_n`` (RNN, GRU)
        or ``(grad_h_n, grad_c_n)`` (LSTM), any part None meaning zeros.  Adds the parameter
        gradients into ``self.grads`` and returns ``(grad_input, grad_hx)``: ``grad_input``
        in the input's layout (packed for packed input, zeros past each end with
        ``lengths=``), ``grad_hx`` shaped like ``hx`` (a pair for LSTM).  ``grad_states`` (a
        forward with ``return_states=True``): the gradient of its ``states``, shaped like
        them (for LSTMs a pair, either part None), None meaning zeros.  ``input_grad=False``:
        ``grad_input`` is None and not computed (as PyTorch skips it for an input that does
        not require grad: the first layer's products with ``W_ih`` are left out).
        """
        input_grad = check_bool("input_grad", input_grad)
        latest = self._latest()
        layout = latest.layout
        g_out, parts = check_grads(layout, self, grad_output, grad_hn)  # (refused: the record stays)
        grad_every = self._grad_every(latest, grad_states)
        rec = self._take()
        pool = self._pool()
        dx, grad_states, pgrads = stack_backward(rec.stack, layout.to_rows(g_out, pool, "dout_packed"),
                                                 layout.to_run(parts), pool, THREADED, grad_every, input_grad)
        if rec.weight_masks is not None:  # the raw W_hh's gradient: through the mask
            pgrads = [(g[0], g[1] * m) + tuple(g[2:]) for g, m in zip(pgrads, rec.weight_masks)]
        for names, grads in zip(self._layer_names, pgrads):
            self._add_grads(names, grads)
        return self._pair(None if dx is None else layout.from_rows(dx), layout.from_run(grad_states))

    def stream(self, batch_size: Optional[int] = None) -> Any:
        """A :class:`~nprnn.stream.Stream`: ``stream.step(x_t)`` runs one time step
        through every layer, carrying the state between calls (one-directional layers;
        no dropout, nothing kept for backward).  ``batch_size=None`` streams one
        unbatched sequence, ``x_t`` of shape (input_size,)."""
        from .stream import Stream

        return Stream(self, batch_size)


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

    ``layer(input, hx, return_states=True)`` returns ``(output, h_n, states)`` (LSTMs:
    ``(output, (h_n, c_n), (h_all, c_all))``): every layer's and direction's state at every
    step, row ``k * D + d`` for layer ``k`` and direction ``d`` as in ``h_n``; ``h_all``
    (D * num_layers, L, N, H_out) — (D * num_layers, N, L, H_out) with batch_first, no N
    for unbatched input, (D * num_layers, len(data), H_out) in the packed order for a
    PackedSequence — and ``c_all`` the same with H; zeros past each end with ``lengths=``;
    each layer's own output, before the dropout between layers.  ``backward(grad_output,
    grad_hn, grad_states=...)`` takes their gradients.  Without the flag nothing of it is
    kept or computed.

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

    def __init__(self, input_size: int, hidden_size: int, num_layers: int = 1, nonlinearity: str = "tanh",
                 bias: bool = True, batch_first: bool = False, dropout: float = 0.0, bidirectional: bool = False, *,
                 weight_drop: float = 0.0, recurrent_dropout: float = 0.0, zoneout: float = 0.0,
                 dtype: Any = np.float32, seed: Any = None, **kwargs: Any) -> None:
        if "proj_size" in kwargs:
            raise ValueError("proj_size argument is only supported for LSTM, not RNN or GRU")
        if kwargs:
            raise TypeError(f"RNN got an unexpected keyword argument '{next(iter(kwargs))}'")
        self.nonlinearity = check_nonlinearity(nonlinearity)
        super().__init__(f"rnn_{nonlinearity}", input_size, hidden_size, num_layers, bias, batch_first,
                         dropout, bidirectional, weight_drop=weight_drop, recurrent_dropout=recurrent_dropout,
                         zoneout=zoneout, dtype=dtype, seed=seed)


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

    def __init__(self, input_size: int, hidden_size: int, num_layers: int = 1, bias: bool = True,
                 batch_first: bool = False, dropout: float = 0.0, bidirectional: bool = False, proj_size: int = 0, *,
                 forget_bias: Optional[float] = None, weight_drop: float = 0.0, recurrent_dropout: float = 0.0,
                 zoneout: Any = 0.0, dtype: Any = np.float32, seed: Any = None) -> None:
        self.forget_bias = check_forget_bias(self._label, forget_bias, bias is not False)
        super().__init__("lstm", input_size, hidden_size, num_layers, bias, batch_first, dropout,
                         bidirectional, proj_size, weight_drop=weight_drop, recurrent_dropout=recurrent_dropout,
                         zoneout=zoneout, dtype=dtype, seed=seed)


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

    def __init__(self, input_size: int, hidden_size: int, num_layers: int = 1, bias: bool = True,
                 batch_first: bool = False, dropout: float = 0.0, bidirectional: bool = False, *,
                 weight_drop: float = 0.0, recurrent_dropout: float = 0.0, zoneout: float = 0.0,
                 dtype: Any = np.float32, seed: Any = None, **kwargs: Any) -> None:
        if "proj_size" in kwargs:
            raise ValueError("proj_size argument is only supported for LSTM, not RNN or GRU")
        if kwargs:
            raise TypeError(f"GRU got an unexpected keyword argument '{next(iter(kwargs))}'")
        super().__init__("gru", input_size, hidden_size, num_layers, bias, batch_first, dropout,
                         bidirectional, weight_drop=weight_drop, recurrent_dropout=recurrent_dropout,
                         zoneout=zoneout, dtype=dtype, seed=seed)


def _no_bias(label: str, kwargs: dict[str, Any]) -> None:
    if "bias" in kwargs:
        raise TypeError(f"{label} has no bias argument: the layer norms' shifts (ln_ih_bias, ln_hh_bias) stand in for "
                        "the biases")
    if kwargs:
        raise TypeError(f"{label} got an unexpected keyword argument '{next(iter(kwargs))}'")


class LayerNormLSTM(RNNBase):
    __doc__ = r"""LSTM with layer normalisation, as the ``LayerNormLSTMCell`` of PyTorch's
    ``benchmarks/fastrnns/custom_lstms.py``, optionally with ``nn.LSTM``'s projection.  For
    each layer and step:

        <equations>

    Parameters per layer ``k`` (suffix ``_reverse`` for the reverse direction):
    ``weight_ih_l{k}`` (4H, H_in), ``weight_hh_l{k}`` (4H, H_out), ``ln_ih_weight_l{k}``,
    ``ln_ih_bias_l{k}``, ``ln_hh_weight_l{k}``, ``ln_hh_bias_l{k}`` (4H each),
    ``ln_c_weight_l{k}``, ``ln_c_bias_l{k}`` (H each) and, with ``proj_size``,
    ``weight_hr_l{k}`` (proj_size, H).  The norms' gains start at 1 and their shifts at 0;
    the matrices are drawn as ``nn.LSTM``'s.  There are no biases: the shifts stand in for
    them.  The carried cell state is the normalised one.  Arguments and call as
    :class:`LSTM` (without ``bias``).

    Example::

        >>> lstm = LayerNormLSTM(5, 10, num_layers=2)
        >>> output, (h_n, c_n) = lstm(np.random.randn(4, 3, 5).astype(np.float32))
        >>> output.shape, h_n.shape, c_n.shape
        ((4, 3, 10), (2, 3, 10), (2, 3, 10))
    """ + _SHAPES_DOC

    _label = "LayerNormLSTM"

    def __init__(self, input_size: int, hidden_size: int, num_layers: int = 1, batch_first: bool = False,
                 dropout: float = 0.0, bidirectional: bool = False, proj_size: int = 0, *,
                 forget_bias: Optional[float] = None, weight_drop: float = 0.0, recurrent_dropout: float = 0.0,
                 zoneout: Any = 0.0, dtype: Any = np.float32, seed: Any = None, **kwargs: Any) -> None:
        _no_bias(self._label, kwargs)
        self.forget_bias = check_forget_bias(self._label, forget_bias, True)
        super().__init__("ln_lstm", input_size, hidden_size, num_layers, False, batch_first, dropout,
                         bidirectional, proj_size, weight_drop=weight_drop, recurrent_dropout=recurrent_dropout,
                         zoneout=zoneout, dtype=dtype, seed=seed)


class LayerNormGRU(RNNBase):
    __doc__ = r"""GRU with layer normalisation, in Haste's ``LayerNormGRU`` arrangement with
    ``nn.GRU``'s gates and their order.  For each layer and step:

        <equations>

    Parameters per layer ``k`` (suffix ``_reverse`` for the reverse direction):
    ``weight_ih_l{k}`` (3H, H_in), ``weight_hh_l{k}`` (3H, H), ``ln_ih_weight_l{k}``,
    ``ln_ih_bias_l{k}``, ``ln_hh_weight_l{k}``, ``ln_hh_bias_l{k}`` (3H each).  The norms'
    gains start at 1 and their shifts at 0; the matrices are drawn as ``nn.GRU``'s.  There
    are no biases: the shifts stand in for them.  Arguments and call as :class:`GRU`
    (without ``bias``).

    Example::

        >>> gru = LayerNormGRU(5, 8, bidirectional=True)
        >>> output, h_n = gru(np.random.randn(3, 2, 5).astype(np.float32))
        >>> output.shape, h_n.shape
        ((3, 2, 16), (2, 2, 8))
    """ + _SHAPES_DOC

    _label = "LayerNormGRU"

    def __init__(self, input_size: int, hidden_size: int, num_layers: int = 1, batch_first: bool = False,
                 dropout: float = 0.0, bidirectional: bool = False, *, weight_drop: float = 0.0,
                 recurrent_dropout: float = 0.0, zoneout: float = 0.0, dtype: Any = np.float32, seed: Any = None,
                 **kwargs: Any) -> None:
        if "proj_size" in kwargs:
            raise ValueError("proj_size argument is only supported for LSTM, not RNN or GRU")
        _no_bias(self._label, kwargs)
        super().__init__("ln_gru", input_size, hidden_size, num_layers, False, batch_first, dropout,
                         bidirectional, weight_drop=weight_drop, recurrent_dropout=recurrent_dropout,
                         zoneout=zoneout, dtype=dtype, seed=seed)


class _MinRNN(RNNBase):
    """minGRU and minLSTM (Feng et al., "Were RNNs All We Needed?", 2024): gates from the
    input alone, so the time loop is the diagonal linear scan ``h_t = a_t h_{t-1} + b_t``
    (:mod:`nprnn.functional.linscan`), all the matrix work in one product before it."""

    def __init__(self, kind: str, input_size: int, hidden_size: int, num_layers: int, bias: bool, batch_first: bool,
                 dropout: float, bidirectional: bool, mode: str, dtype: Any, seed: Any, kwargs: dict[str, Any]) -> None:
        if "proj_size" in kwargs:
            raise ValueError(f"proj_size argument is not supported for {self._label}")
        for name in ("recurrent_dropout", "weight_drop", "zoneout"):
            if name in kwargs:
                raise TypeError(f"{self._label} has no {name} argument: its gates read the input alone (no W_hh, "
                                "no recurrent state inside the gates)")
        if kwargs:
            raise TypeError(f"{self._label} got an unexpected keyword argument '{next(iter(kwargs))}'")
        if mode not in ("log", "linear"):
            raise ValueError(f"{self._label}: mode must be 'log' or 'linear', got {mode!r}")
        self.scan_mode = mode
        super().__init__(kind, input_size, hidden_size, num_layers, bias, batch_first, dropout, bidirectional,
                         dtype=dtype, seed=seed)

    def _step_options(self) -> Optional[list[Any]]:
        return [{"log": self.scan_mode == "log"}] * (self.num_layers * self.num_directions)

    def extra_repr(self) -> str:
        return super().extra_repr() + (", mode='linear'" if self.scan_mode == "linear" else "")

    def forward(self, input: Any, hx: Any = None, lengths: Any = None, return_states: bool = False
                ) -> tuple[Any, ...]:
        if self.scan_mode == "log" and hx is not None and np.any(np.asarray(hx) < 0):
            raise ValueError(f"{self._label}: mode='log' needs h_0 >= 0 (its candidate g(v) is positive, so every "
                             "state stays so); got a negative entry in h_0 (mode='linear' takes any h_0)")
        return super().forward(input, hx, lengths, return_states)


class MinGRU(_MinRNN):
    __doc__ = r"""minGRU: the GRU without its recurrent weights.  For each layer and step:

        <equations>

    weight_ih = [W_z; W_h] (2H, H_in), bias_ih (2H,); ``mode="log"`` (the default):
    ``h~ = g(W_h x + b_h)``, ``g(v) = v + 0.5`` for ``v >= 0`` and ``sigmoid(v)`` below (the
    paper's log-space form; it needs ``h_0 >= 0``); ``mode="linear"``: ``h~ = W_h x + b_h``.
    Arguments and call as :class:`GRU` (no recurrent regularizers: there is no W_hh).
    """ + _SHAPES_DOC

    _label = "MinGRU"

    def __init__(self, input_size: int, hidden_size: int, num_layers: int = 1, bias: bool = True,
                 batch_first: bool = False, dropout: float = 0.0, bidirectional: bool = False, *, mode: str = "log",
                 dtype: Any = np.float32, seed: Any = None, **kwargs: Any) -> None:
        super().__init__("mingru", input_size, hidden_size, num_layers, bias, batch_first, dropout, bidirectional,
                         mode, dtype, seed, kwargs)


class MinLSTM(_MinRNN):
    __doc__ = r"""minLSTM: the LSTM without its recurrent weights or output gate, its forget and
    input gates normalised to sum to one.  For each layer and step:

        <equations>

    weight_ih = [W_f; W_i; W_h] (3H, H_in), bias_ih (3H,); ``mode`` as :class:`MinGRU`'s.
    One state, ``h`` (no cell state).  Arguments and call as :class:`GRU`.
    """ + _SHAPES_DOC

    _label = "MinLSTM"

    def __init__(self, input_size: int, hidden_size: int, num_layers: int = 1, bias: bool = True,
                 batch_first: bool = False, dropout: float = 0.0, bidirectional: bool = False, *, mode: str = "log",
                 dtype: Any = np.float32, seed: Any = None, **kwargs: Any) -> None:
        super().__init__("minlstm", input_size, hidden_size, num_layers, bias, batch_first, dropout, bidirectional,
                         mode, dtype, seed, kwargs)


def _equations_into_docstrings() -> None:
    """The classes' docstrings show the equations of the reference steps
    (:mod:`nprnn.functional.reference`), where they are written once."""
    from ..functional import reference

    for cls, step in ((RNN, reference.rnn_step_forward), (LSTM, reference.lstm_step_forward),
                      (GRU, reference.gru_step_forward), (LayerNormLSTM, reference.ln_lstm_step_forward),
                      (LayerNormGRU, reference.ln_gru_step_forward), (MinGRU, reference.mingru_step_forward),
                      (MinLSTM, reference.minlstm_step_forward)):
        lines = "\n".join("        " + e for e in reference.equations(step))
        cls.__doc__ = (cls.__doc__ or "").replace("        <equations>", lines)


_equations_into_docstrings()

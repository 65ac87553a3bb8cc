"""Streaming: one time step per call, every layer's state carried between calls.

A speech or sensor model consumes one frame at a time.  ``stream = layer.stream(N)`` keeps
the state of every layer and runs each new step through all of them::

    stream = lstm.eval().stream(batch_size=4)
    for frame in frames:                 # frame: (4, input_size)
        y = stream.step(frame)           # (4, H_out): the top layer's new state
    stream.reset(rows=[2])               # a new utterance starts in batch slot 2

The numbers are those of the whole-sequence call on the concatenated steps (in eval mode:
a stream never applies dropout and keeps nothing for backward).  On the compiled tier a
step is one kernel call per layer on the layer's cached prepared weights, into buffers
the stream owns; the NumPy tier runs the same step through its own kernels.
"""
from __future__ import annotations

from typing import Any, Optional

import numpy as np

from .._checks import as_array
from .._typing import Array
from ..functional import native
from ..functional.scan import direction_forward
from ..parallel.threads import THREADED


class Stream:
    """The state of one stream through a one-directional recurrent layer (see the module
    docstring).  Built by :meth:`nprnn.RNNBase.stream`."""

    def __init__(self, layer: Any, batch_size: Optional[int] = None) -> None:
        if layer.num_directions != 1:
            raise ValueError(f"{layer._label}.stream(): a bidirectional layer needs the whole sequence (its reverse "
                             "direction starts at the end), so it cannot run one step at a time; call the layer on "
                             "the whole sequence instead")
        if getattr(layer, "_reverse_only", False):
            raise ValueError(f"{layer._label}.stream(): a layer that runs backwards in time needs the whole sequence")
        if batch_size is not None and (isinstance(batch_size, bool) or not isinstance(batch_size, (int, np.integer))
                                       or batch_size < 1):
            raise ValueError(f"{layer._label}.stream(): batch_size must be a positive int or None, got {batch_size!r}")
        self._layer = layer
        self.batch_size = None if batch_size is None else int(batch_size)
        N = self.batch_size or 1
        L, dt = layer.num_layers, layer.dtype
        self._h = np.zeros((L, N, layer._h_out), dt)  # every layer's state, updated in place
        self._c = np.zeros((L, N, layer.hidden_size), dt) if layer.kind.has_cell else None
        self._outs = [np.empty((N, layer._h_out), dt) for _ in range(L)]
        self._x = np.empty((N, layer.input_size), dt)  # the step's input, where the kernel calls read it
        self._sizes, self._offsets = native._layout([N])
        self._calls: Optional[tuple[Any, list[Any]]] = None  # (when made, each layer's kernel call arguments)

    # -- state ---------------------------------------------------------------------
    @property
    def state(self) -> Any:
        """The layers' current state in the layer's ``hx`` format (copies): ``h`` of shape
        (num_layers, N, H_out) — (num_layers, H_out) without a batch — and for LSTM the
        pair ``(h, c)``."""
        parts = [self._h.copy()] if self._c is None else [self._h.copy(), self._c.copy()]
        if self.batch_size is None:
            parts = [p[:, 0] for p in parts]
        return parts[0] if self._c is None else tuple(parts)

    @state.setter
    def state(self, hx: Any) -> None:
        layer = self._layer
        if self._c is not None:
            if not isinstance(hx, (tuple, list)) or len(hx) != 2:
                raise TypeError(f"{layer._label} stream state must be a pair (h, c), got {type(hx).__name__}")
            parts = list(hx)
        else:
            parts = [hx]
        targets = [self._h] if self._c is None else [self._h, self._c]
        arrays = []
        for name, value, target in zip(("h", "c"), parts, targets):
            a = as_array(value, f"state {name}", layer.dtype, layer._label)
            want = target.shape if self.batch_size is not None else (target.shape[0], target.shape[2])
            if a.shape != want:
                raise ValueError(f"{layer._label} stream state {name} must have shape {want}, got {a.shape}")
            arrays.append(a)
        for a, target in zip(arrays, targets):  # all checked before anything changes
            target[...] = a if self.batch_size is not None else a[:, None]

    def reset(self, rows: Any = None) -> None:
        """Zero the state of every batch row, or of the given ``rows`` only (a new sequence
        starting in those slots)."""
        if rows is None:
            self._h.fill(0)
            if self._c is not None:
                self._c.fill(0)
            return
        N = self._h.shape[1]
        idx = np.asarray(rows)
        if idx.dtype.kind not in "iu" or idx.ndim > 1 or ((idx < 0) | (idx >= N)).any():
            raise ValueError(f"{self._layer._label} stream reset(): rows must be batch indices in [0, {N}), "
                             f"got {rows!r}")
        self._h[:, idx] = 0
        if self._c is not None:
            self._c[:, idx] = 0

    # -- stepping ------------------------------------------------------------------
    def step(self, x_t: Any) -> Any:
        """Run one time step: ``x_t`` of shape (N, input_size), or (input_size,) for a
        stream without a batch; returns the top layer's new state (N, H_out) (or (H_out,))."""
        layer = self._layer
        x = x_t if type(x_t) is np.ndarray and x_t.dtype == layer.dtype else as_array(
            x_t, "input", layer.dtype, layer._label)
        want = (layer.input_size,) if self.batch_size is None else (self.batch_size, layer.input_size)
        if x.shape != want:
            raise ValueError(f"{layer._label} stream step: input must have shape {want}, got {x.shape}")
        N = self._h.shape[1]
        if native.supports(layer.kind, layer.dtype):
            np.copyto(self._x, x.reshape(N, layer.input_size))
            for call in self._native_calls():
                call()
        else:
            self._numpy_step(x.reshape(N, layer.input_size))
        y = self._outs[-1]
        return y.copy() if self.batch_size is not None else y[0].copy()

    def _native_calls(self) -> list[Any]:
        """Each layer's kernel call, its arguments checked once (``_native.Call``) and all of
        its arrays owned by the stream (the input is copied into ``_x``); made again only
        when a parameter has changed."""
        key = (native.parameter_epoch(), native.isa(), native.plan_key())
        if self._calls is not None and self._calls[0] == key:
            return self._calls[1]
        layer = self._layer
        N = self._h.shape[1]
        calls, x = [], self._x
        regs = layer._regularizers(N, N, train=False)  # zoneout's expectation
        for idx in range(layer.num_layers):
            params = layer._params()[idx]
            how = native.plan_params(layer.kind, params, self._sizes, self._offsets, THREADED)
            prep = native.prepared(layer._prepared, idx, layer.kind, params, how.parts)
            work = native.step_work(prep, N, how.project_first, None if regs is None else regs[idx])
            c = None if self._c is None else self._c[idx]
            calls.append(native.compiled.Call(native.call_args(0, prep, 0, 0, (0, N), self._sizes, self._offsets, x,
                                                               self._outs[idx], self._h[idx], c, work, team=how.team)))
            x = self._outs[idx]
        self._calls = (key, calls)
        return calls

    def _numpy_step(self, x: Array) -> None:
        layer = self._layer
        options = layer._step_options()
        regs = layer._regularizers(x.shape[0], x.shape[0], train=False)  # zoneout's expectation
        for idx in range(layer.num_layers):
            params = layer._params()[idx]
            state0 = (self._h[idx],) if self._c is None else (self._h[idx], self._c[idx])
            final, _ = direction_forward(layer.kind, x, params, state0, [x.shape[0]], False, self._outs[idx], False,
                                         None if options is None else options[idx], key=idx,
                                         cache=layer._prepared, reg=None if regs is None else regs[idx])
            self._h[idx] = final[0]
            if self._c is not None:
                self._c[idx] = final[1]
            x = self._outs[idx]


class SequentialStream:
    """One time step at a time through a ``Sequential``: its recurrent layers stream (their
    states carried), ``LastStep`` passes the step on (the newest step is the last one so
    far), and the other modules run on the step as in eval mode.  So ``step(x_t)`` returns
    what the whole model returns for the sequence that ends at ``x_t``.  Built by
    :meth:`nprnn.Sequential.stream`."""

    def __init__(self, model: Any, batch_size: Optional[int] = None) -> None:
        from .recurrent import RNNBase
        from .sequential import LastStep

        self._parts = []
        for m in model._modules.values():
            if isinstance(m, RNNBase):
                self._parts.append(("stream", m.stream(batch_size)))
            elif isinstance(m, LastStep):
                continue
            else:
                self._parts.append(("module", m))
        if not any(kind == "stream" for kind, _ in self._parts):
            raise ValueError("Sequential.stream(): the model has no recurrent layer to carry a state")
        self.batch_size = batch_size

    @property
    def streams(self) -> list[Any]:
        """The recurrent layers' streams, in order."""
        return [p for kind, p in self._parts if kind == "stream"]

    @property
    def state(self) -> list[Any]:
        """Each recurrent layer's state (its stream's ``state``), in order; assignable."""
        return [s.state for s in self.streams]

    @state.setter
    def state(self, states: Any) -> None:
        streams = self.streams
        if not isinstance(states, (list, tuple)) or len(states) != len(streams):
            raise ValueError(f"Sequential stream state must be a list of {len(streams)} layer state(s), "
                             f"got {type(states).__name__}")
        saved = [s.state for s in streams]
        try:
            for s, st in zip(streams, states):
                s.state = st
        except Exception:  # nothing changes unless every layer takes its state
            for s, st in zip(streams, saved):
                s.state = st
            raise

    def reset(self, rows: Any = None) -> None:
        """Zero every recurrent layer's state, of all rows or of ``rows`` only."""
        for s in self.streams:
            s.reset(rows)

    def step(self, x_t: Any) -> Any:
        x = x_t
        for kind, part in self._parts:
            if kind == "stream":
                x = part.step(x)
            else:
                was = part.training
                part.train(False)
                try:
                    x = part(x)
                finally:
                    part.train(was)
        return x

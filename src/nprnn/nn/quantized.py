"""``nprnn.quantize``: a copy of a model whose recurrent layers, cells and ``Linear`` keep
their weights in int8 or bfloat16, for inference (issue 25).

The arithmetic is :mod:`nprnn.functional.quant`'s: int8 weights symmetric per output row,
each product's input quantized per row as onnxruntime's ``DynamicQuantizeLinear`` does,
exact int32 sums; or bfloat16 weights and inputs with float32 sums.  The layers run the
equations of :mod:`nprnn.functional.reference` step by step, with every ``x @ W.T``
computed by the quantized weight (:class:`QuantizedWeight`): that is the oracle, which runs
on NumPy one step at a time.  Where the compiled tier runs, each layer-direction is one
compiled loop instead (:mod:`nprnn.functional.qnative`: int8 products on AVX-512 VNNI,
AVX2 or plain C, bf16 on ``vdpbf16ps`` or its emulation), within 1e-5 of the oracle; the
integer sums are the oracle's exactly.  Biases and the gate arithmetic stay float32.
``stream()`` carries the state between one-step calls, as the float layers' streams do.

Training is refused (``train(True)``, ``backward``), and so is ONNX export.
"""
from __future__ import annotations

import copy
import functools
from typing import Any, Callable, Optional

import numpy as np

from .._typing import Array
from ..config import settings
from ..functional import qnative, quant, reference
from ..functional.native import _bounds as native_bounds
from ..functional.native import parameter_epoch, plan_key
from ..parallel.threads import THREADED, threads_here
from .cells import RNNCellBase
from .layers import Linear
from .layout import layout_of
from .module import Module, _PerThread
from .recurrent import RNNBase
from .stream import Stream

STORAGES = ("int8", "bf16")
MAX_INT8_TERMS = 66_000  # (2^31 - 1) // (255 * 127) = 66,313: the longest exact int32 sum of u8 x s8 products
_STEPS: dict[str, Callable[..., Any]] = {
    "rnn_tanh": functools.partial(reference.rnn_step_forward, nonlinearity="tanh"),
    "rnn_relu": functools.partial(reference.rnn_step_forward, nonlinearity="relu"),
    "lstm": reference.lstm_step_forward,
    "gru": reference.gru_step_forward,
}


class QuantizedWeight:
    """A weight ``W`` (rows, cols) held as int8 with per-row scales, or as bfloat16 bits,
    in buffers of its module (so ``state_dict`` saves them).  It takes part in one
    operation, ``x @ W.T`` (what the reference equations write), computed in its storage;
    it never turns into a float array silently."""

    __array_ufunc__ = None  # (x @ w.T defers to _Transposed.__rmatmul__)

    def __init__(self, module: Module, name: str, storage: str) -> None:
        self.module, self.name, self.storage = module, name, storage
        self._derived: dict[str, tuple[int, Any]] = {}  # what is made from the storage, by the epoch it was made at

    @staticmethod
    def arrays(w: Array, storage: str) -> dict[str, Array]:
        """The buffers that hold ``w``: ``{"int8": q, "scale": s}`` or ``{"bf16": bits}``."""
        w = np.asarray(w, np.float32)
        if storage == "int8":
            if w.shape[1] > MAX_INT8_TERMS:
                raise ValueError(f"quantize: an int8 product of {w.shape[1]:,} terms could overflow its exact int32 "
                                 f"sum (255 x 127 per term: at most {MAX_INT8_TERMS:,} terms, the input or hidden "
                                 "size); use storage 'bf16' for this model")
            q, scale, _ = quant.quantize_weights_int8(w)
            return {"int8": q, "scale": scale}
        return {"bf16": quant.to_bf16_bits(w)}

    def _part(self, part: str) -> Array:
        return self.module.__dict__["_stored"][f"{self.name}_{part}"]  # type: ignore[no-any-return]

    def _cached(self, what: str, make: Callable[[], Any]) -> Any:
        """``make()``, kept until a parameter or buffer changes (a load_state_dict)."""
        hit = self._derived.get(what)
        if hit is None or hit[0] != parameter_epoch():
            hit = self._derived[what] = (parameter_epoch(), make())
        return hit[1]

    @property
    def held(self) -> Array:
        """The int8 values or bf16 bits (its buffer ``<name>_<storage>``)."""
        return self._part(self.storage)

    def _row_sums(self) -> Array:
        """int8: each row's sum of its int8 values (the zero points' correction)."""
        sums: Array = self._cached("sums", lambda: self.held.sum(axis=1, dtype=np.int32))
        return sums

    @property
    def shape(self) -> tuple[int, ...]:
        return tuple(self.held.shape)

    @property
    def T(self) -> "_Transposed":
        return _Transposed(self)

    @property
    def nbytes(self) -> int:
        parts = ("int8", "scale") if self.storage == "int8" else ("bf16",)
        return sum(int(self._part(p).nbytes) for p in parts)

    def product(self, x: Any) -> Array:
        """``x @ W.T`` for x (..., cols), float32 (..., rows)."""
        x = np.asarray(x, np.float32)
        flat = np.ascontiguousarray(x.reshape(-1, x.shape[-1]))
        int8 = self.storage == "int8"
        if qnative.available() and flat.shape[0] and flat.shape[1]:  # compiled: the same numbers
            y = np.empty((flat.shape[0], self.shape[0]), np.float32)
            packed = self._cached("packed", lambda: qnative.packed(self.held, self.storage))
            qnative.compiled().qlinear(flat, packed, qnative.WQ[self.storage], y.shape[1],
                                       self._part("scale") if int8 else None, self._row_sums() if int8 else None,
                                       None, y, None)
        elif int8:
            y = quant.int8_linear(flat, self.held, self._part("scale"), self._row_sums())
        else:
            y = quant.bf16_linear(flat, self.held)
        out: Array = y.reshape(x.shape[:-1] + (y.shape[-1],))
        return out

    def dequantized(self) -> Array:
        """The float32 values the storage holds."""
        if self.storage == "int8":
            return (self.held.astype(np.float32) * self._part("scale")[:, None]).astype(np.float32)
        return quant.from_bf16_bits(self.held)

    def __array__(self, *args: Any, **kwargs: Any) -> Any:
        raise TypeError("a quantized weight takes part in x @ w.T only; dequantized() gives its float32 values")


class _Transposed:
    __array_ufunc__ = None

    def __init__(self, w: QuantizedWeight) -> None:
        self.w = w

    def __rmatmul__(self, x: Any) -> Array:
        return self.w.product(x)


def _refuse_training(label: str) -> RuntimeError:
    return RuntimeError(f"{label} is quantized (nprnn.quantize) and runs inference only: train the float model, "
                        "then quantize it again")


class _InferenceOnly:
    """What every quantized module shares: eval mode, and training refused."""

    _label: str

    def train(self, mode: bool = True) -> Any:
        if mode:
            raise _refuse_training(self._label)
        return Module.train(self, False)  # type: ignore[arg-type]

    def backward(self, *args: Any, **kwargs: Any) -> Any:
        raise _refuse_training(self._label)


class QuantizedRNN(_InferenceOnly, RNNBase):
    """An RNN, LSTM (with ``proj_size``) or GRU with quantized weights (see the module
    docstring); the call is the float layer's: padded, ``lengths=``, packed, unbatched,
    ``batch_first``, initial states."""

    def __init__(self, layer: RNNBase, storage: str) -> None:
        Module.__init__(self)
        for name in ("mode", "kind", "input_size", "hidden_size", "num_layers", "bias", "batch_first", "dropout",
                     "bidirectional", "proj_size", "_layer_names", "_reverse_only"):
            object.__setattr__(self, name, getattr(layer, name))
        if getattr(layer, "nonlinearity", None) is not None:
            object.__setattr__(self, "nonlinearity", layer.nonlinearity)
        object.__setattr__(self, "dtype", layer.dtype)  # what the input may be; the arithmetic is float32
        object.__setattr__(self, "storage", storage)
        object.__setattr__(self, "_label", f"{type(layer).__name__}")
        weights = []
        for names in layer._layer_names:
            p: dict[str, Any] = {}
            for key, pname in zip(("weight_ih", "weight_hh", "bias_ih", "bias_hh", "weight_hr"), names):
                if pname is None:
                    continue
                value = layer._parameters[pname]
                if key.startswith("weight"):
                    for part, array in QuantizedWeight.arrays(value, storage).items():
                        self.register_buffer(f"{pname}_{part}", array)
                    p[key] = QuantizedWeight(self, pname, storage)
                else:
                    self.register_buffer(pname, np.asarray(value, np.float32))
                    p[key] = self._stored[pname]
            weights.append(p)
        object.__setattr__(self, "_weights", weights)
        object.__setattr__(self, "training", False)

    def extra_repr(self) -> str:
        return RNNBase.extra_repr(self) + f", storage={self.storage}"

    @property
    def weight_bytes(self) -> int:
        """The bytes the weights take in their storage (biases in float32)."""
        return sum(int(b.nbytes) for b in self._stored.values())

    def forward(self, input: Any, hx: Any = None, lengths: Any = None, return_states: bool = False
                ) -> tuple[Any, ...]:
        if return_states:
            raise ValueError(f"{self._label}: return_states is not available on a quantized layer (nprnn.quantize); "
                             "call the float layer for every state over time")
        layout, x, states = layout_of(self, input, hx, lengths)
        rows = layout.to_rows(np.asarray(x)).astype(np.float32)
        out, finals = self._run(rows, layout.batch_sizes, [s.astype(np.float32) for s in layout.to_run(states)])
        return self._pair(layout.from_rows(out), layout.from_run(finals))

    def _run(self, x: Array, batch_sizes: list[int], states: list[Array]) -> tuple[Array, list[Array]]:
        """The stack on packed time-major rows (each step's rows, ``batch_sizes[t]`` of them,
        are the sequences still running), layer after layer: compiled (:mod:`.qnative`)
        where the compiled tier runs, else the reference steps."""
        if qnative.available() and len(batch_sizes):
            return self._run_compiled(x, batch_sizes, states)
        step = _STEPS[self.mode]
        starts = np.concatenate([[0], np.cumsum(batch_sizes)[:-1]]).astype(int)
        has_cell, D = self.kind.has_cell, self.num_directions
        finals: list[list[Array]] = [[] for _ in states]
        for layer in range(self.num_layers):
            outs = []
            for d in range(D):
                p = self._weights[layer * D + d]
                state = [s[layer * D + d].copy() for s in states]
                out = np.zeros((x.shape[0], self._h_out), np.float32)
                for t in (reversed(range(len(batch_sizes))) if d == 1 else range(len(batch_sizes))):
                    lo, n = starts[t], batch_sizes[t]
                    new, _ = step(x[lo:lo + n], tuple(s[:n] for s in state), p)
                    for s, v in zip(state, new):
                        s[:n] = v
                    out[lo:lo + n] = new[0]
                outs.append(out)
                for k, s in enumerate(state):
                    finals[k].append(s)
            x = np.concatenate(outs, axis=1) if D == 2 else outs[0]
        assert has_cell == (len(states) == 2)
        return x, [np.stack(f) for f in finals]

    def _ranges(self, batch_sizes: list[int]) -> Any:
        """Row ranges for a batch split (each its own loop on its own thread, no meeting per
        step, its own rows quantized once), where the batch is large enough to project
        inside the loop and to split; None: one loop."""
        N = batch_sizes[0]
        if N < settings.min_inloop_batch or N <= settings.max_unit_split_batch:
            return None
        threads = min(threads_here(), N // 16)  # a range per thread, of whole 16-row blocks where it can (AMX's)
        if threads < 2:
            return None
        bounds = native_bounds(N, threads, 16)
        return list(zip(bounds[:-1].tolist(), bounds[1:].tolist()))

    def _prepared_layer(self, index: int, N: int, steps: int, split: bool = False) -> tuple[qnative.QPrepared, Any]:
        """Layer-direction ``index``'s packed weights for a batch of N rows, and its team;
        ``split``: for a batch split (one part, a team of two or more threads)."""
        G = self.kind.num_gates
        H, P = self.hidden_size, self._h_out
        # the hidden units split across threads where the batch is not (a small batch, or a
        # large one that does not split): where the step's work over all N rows is large enough
        parts = 1 if split else THREADED.units(1, H, N * (G * H * P + (H * P if self.proj_size else 0)), steps)
        key = (index, parts, qnative.path(self.storage))
        hit = self._prepared.get(key)
        if hit is None or hit[0] != parameter_epoch():
            p = self._weights[index]
            weights: dict[str, Any] = {}
            for name, value in p.items():
                if isinstance(value, QuantizedWeight):
                    weights[name] = (value.held, value._part("scale") if self.storage == "int8" else None)
                else:
                    weights[name] = value
            hit = self._prepared[key] = (parameter_epoch(), qnative.prepare(self.mode, weights, self.storage, parts))
        prep = hit[1]
        return prep, THREADED.team(2 if split else prep.parts) if split or prep.parts > 1 else None

    def _run_compiled(self, x: Array, batch_sizes: list[int], states: list[Array]) -> tuple[Array, list[Array]]:
        D = self.num_directions
        pool = self._pool()  # work arrays kept between calls (fresh memory costs page faults)
        ranges = self._ranges(batch_sizes)  # (the same for every layer: it depends on the batch alone)
        finals: list[list[Array]] = [[] for _ in states]
        for layer in range(self.num_layers):
            outs = []
            for d in range(D):
                prep, team = self._prepared_layer(layer * D + d, batch_sizes[0], len(batch_sizes), ranges is not None)
                h = np.array(states[0][layer * D + d], np.float32, order="C")
                c = np.array(states[1][layer * D + d], np.float32, order="C") if len(states) == 2 else None
                outs.append(qnative.forward(prep, x, batch_sizes, d == 1, h, c, team, pool, layer * D + d, ranges))
                finals[0].append(h)
                if c is not None:
                    finals[1].append(c)
            x = np.concatenate(outs, axis=1) if D == 2 else outs[0]
        return x, [np.stack(f) for f in finals]

    def stream(self, batch_size: Optional[int] = None) -> "QuantizedStream":
        """One step per call, every layer's state carried (see :class:`nprnn.stream.Stream`)."""
        return QuantizedStream(self, batch_size)


class QuantizedStream(Stream):
    """A :class:`~nprnn.stream.Stream` through a :class:`QuantizedRNN`: each step is the
    sequence call's arithmetic, on the compiled tier one checked kernel call per layer
    (``_native.Call``) into arrays the stream owns, else the reference equations.  The
    state is float32, as the quantized layer computes."""

    def __init__(self, layer: Any, batch_size: Optional[int] = None) -> None:
        super().__init__(layer, batch_size)
        self._h, self._outs, self._x = (self._h.astype(np.float32), [o.astype(np.float32) for o in self._outs],
                                        self._x.astype(np.float32))
        self._c = None if self._c is None else self._c.astype(np.float32)

    def _native_calls(self) -> list[Any]:
        layer = self._layer
        N = self._h.shape[1]
        key = (parameter_epoch(), qnative.path(layer.storage), plan_key())
        if self._calls is not None and self._calls[0] == key:
            return self._calls[1]
        calls, x = [], self._x
        for idx in range(layer.num_layers):
            prep, team = layer._prepared_layer(idx, N, 1)
            c = None if self._c is None else self._c[idx]
            calls.append(qnative.compiled().Call(qnative.spec(prep, x, [N], False, self._h[idx], c,
                                                                   self._outs[idx], team)))
            x = self._outs[idx]
        self._calls = (key, calls)
        return calls

    def _numpy_step(self, x: Array) -> None:
        """The NumPy tier's step (``Stream.step`` validates and calls it): one step of the
        stack through the reference equations."""
        states = [self._h] if self._c is None else [self._h, self._c]
        h, finals = self._layer._run(x.astype(np.float32), [x.shape[0]], list(states))
        for target, value in zip(states, finals):
            target[...] = value
        self._outs[-1][...] = h


class QuantizedCell(_InferenceOnly, Module):
    """An RNNCell, LSTMCell or GRUCell with quantized weights: one step of
    :class:`QuantizedRNN`, with the cell's call."""

    def __init__(self, cell: RNNCellBase, storage: str) -> None:
        super().__init__()
        kinds = {"RNNCell": "RNN", "LSTMCell": "LSTM", "GRUCell": "GRU"}
        from . import recurrent

        cls = getattr(recurrent, kinds[type(cell).__name__])
        kw = {"nonlinearity": cell.nonlinearity} if hasattr(cell, "nonlinearity") else {}
        layer = cls(cell.input_size, cell.hidden_size, bias=cell.bias, dtype=cell.dtype, **kw)
        layer.load_state_dict({f"{k}_l0": v for k, v in cell.state_dict().items()})
        inner = QuantizedRNN(layer, storage)
        object.__setattr__(self, "_layer", inner)
        for name, array in inner._stored.items():  # the cell's names, the layer's arrays (one storage)
            self.__dict__.setdefault("_stored", {})[name.replace("_l0", "", 1)] = array
        object.__setattr__(self, "_label", type(cell).__name__)
        object.__setattr__(self, "storage", storage)
        object.__setattr__(self, "input_size", cell.input_size)
        object.__setattr__(self, "hidden_size", cell.hidden_size)
        object.__setattr__(self, "training", False)

    def extra_repr(self) -> str:
        return f"{self.input_size}, {self.hidden_size}, storage={self._layer.storage}"

    def forward(self, input: Any, hx: Any = None) -> Any:
        x = np.asarray(input)
        if x.ndim not in (1, 2):
            raise ValueError(f"{self._label}: Expected input to be 1D or 2D, got {x.ndim}D instead")
        seq = x[None]  # one step: (1, N, H_in) or (1, H_in)
        state: Any = None
        if hx is not None:
            parts = hx if self._layer.kind.has_cell else (hx,)
            state = tuple(np.asarray(h)[None] for h in parts)
            state = state if self._layer.kind.has_cell else state[0]
        _, final = self._layer(seq, state)
        parts = final if isinstance(final, tuple) else (final,)
        parts = tuple(p[0] for p in parts)
        return parts if self._layer.kind.has_cell else parts[0]


class QuantizedLinear(_InferenceOnly, Module):
    """``x @ W.T + b`` with ``W`` quantized."""

    def __init__(self, linear: Linear, storage: str) -> None:
        super().__init__()
        for part, array in QuantizedWeight.arrays(linear.weight, storage).items():
            self.register_buffer(f"weight_{part}", array)
        object.__setattr__(self, "weight_q", QuantizedWeight(self, "weight", storage))
        bias = linear._parameters.get("bias")
        if bias is not None:
            self.register_buffer("bias", np.asarray(bias, np.float32))
        object.__setattr__(self, "bias_f", None if bias is None else self._stored["bias"])
        object.__setattr__(self, "_label", "Linear")
        object.__setattr__(self, "storage", storage)
        object.__setattr__(self, "training", False)

    def extra_repr(self) -> str:
        return f"in_features={self.weight_q.shape[1]}, out_features={self.weight_q.shape[0]}, " \
               f"storage={self.weight_q.storage}"

    def forward(self, input: Any) -> Array:
        y: Array = self.weight_q.product(input)
        if self.bias_f is not None:
            y += self.bias_f
        return y


def quantize(model: Module, storage: str) -> Module:
    """A copy of ``model`` whose recurrent layers (RNN, LSTM, GRU), cells and ``Linear``
    modules keep their weights in ``storage`` ("int8" or "bf16") and run inference in
    float32 around quantized products; ``model`` itself is left as it was.  A
    ``Sequential`` is copied with each such child quantized; other modules are copied."""
    if storage not in STORAGES:
        raise ValueError(f"quantize: storage must be one of {STORAGES}, got {storage!r}")
    if not isinstance(model, Module):
        raise TypeError(f"quantize: expected an nprnn Module, got {type(model).__name__}")
    return _quantized(model, storage)


def _quantized(m: Module, storage: str) -> Module:
    from .sequential import Sequential

    if isinstance(m, QuantizedRNN | QuantizedCell | QuantizedLinear):
        raise ValueError(f"quantize: {type(m).__name__} is quantized already")
    if isinstance(m, RNNBase) and any(m._zone):
        raise ValueError(f"quantize: {type(m).__name__} has zoneout={m.zoneout}, which changes inference (each "
                         "state mixes with the previous one); the quantized loop has no zoneout")
    if isinstance(m, RNNBase) and m.kind.linear:
        raise TypeError(f"quantize: {type(m).__name__} has no quantized form yet (its one product runs before "
                        "the linear scan; the quantized loop is the matrix loop's)")
    if isinstance(m, RNNBase | RNNCellBase) and m.kind.params:
        raise TypeError(f"quantize: {type(m).__name__} has no quantized form yet (quantized products serve "
                        "RNN, LSTM, GRU, their cells and Linear; its layer norms are not among them)")
    if isinstance(m, RNNBase):
        if type(m).__name__ not in ("RNN", "LSTM", "GRU"):
            raise TypeError(f"quantize: {type(m).__name__} (an ONNX-only variant) has no quantized form")
        return QuantizedRNN(m, storage)
    if isinstance(m, RNNCellBase):
        return QuantizedCell(m, storage)
    if isinstance(m, Linear):
        return QuantizedLinear(m, storage)
    if isinstance(m, Sequential):
        return Sequential({name: _quantized(child, storage) for name, child in m._modules.items()}).eval()
    if type(m).train is not Module.train:
        raise TypeError(f"quantize: {type(m).__name__} has its own train(); quantize its recurrent layers and "
                        "Linear modules one by one")
    out = copy.copy(m)  # a container (CharLM, a user's model): the same module, its children quantized
    object.__setattr__(out, "_modules", type(m._modules)(
        (name, _quantized(child, storage)) for name, child in m._modules.items()))
    object.__setattr__(out, "_parameters", copy.deepcopy(m._parameters))
    object.__setattr__(out, "_grads", copy.deepcopy(m._grads))
    object.__setattr__(out, "_prepared", {})
    object.__setattr__(out, "_threads", _PerThread())
    return out.eval()

"""One ONNX recurrent node (``RNN``, ``GRU``, ``LSTM``) as an nprnn layer.

:func:`module_from_node` builds the layer, including what ONNX defines and PyTorch lacks:
``direction="reverse"``, ``layout=1``, GRU with ``linear_before_reset=0``, LSTM peepholes,
``clip`` and ``input_forget`` (the last three and GRU ``linear_before_reset=0`` run forward
only); :func:`run_node` runs it with the operator's inputs and layouts.

Gate orders differ: PyTorch stores LSTM gates as i, f, g, o and ONNX as i, o, f, c; GRU
as r, z, n against ONNX's z, r, h.  ONNX's bias ``B`` is ``[W_b, R_b]`` concatenated.
"""
from __future__ import annotations

from typing import Any, Optional

import numpy as np

from ..._typing import Array
from ...nn.recurrent import GRU, LSTM, RNN, RNNBase
from . import variants  # noqa: F401  (registers the cell kinds ONNXRecurrent runs)

# ONNX gate block k comes from PyTorch block _TO_ONNX[kind][k]
_TO_ONNX = {"LSTM": [0, 3, 1, 2], "GRU": [1, 0, 2], "RNN": [0]}


def _onnx() -> Any:
    try:
        import onnx
    except ImportError as exc:  # pragma: no cover - depends on the environment
        raise ImportError("ONNX export and import need the onnx package: pip install onnx onnxruntime") from exc
    return onnx


def _permute_gates(a: Array, order: Any) -> Array:
    """Reorder the gate blocks along axis 0 of a (G*H, ...) array."""
    blocks = np.split(a, len(order), axis=0)
    return np.concatenate([blocks[k] for k in order], axis=0)


_ACTIVATIONS = {"RNN": ["Tanh"], "GRU": ["Sigmoid", "Tanh"], "LSTM": ["Sigmoid", "Tanh", "Tanh"]}
# the operators' attributes (onnx.ai/onnx/operators): shared, and each operator's own
_COMMON_ATTRS = {"activation_alpha", "activation_beta", "activations", "clip", "direction", "hidden_size", "layout"}
_OWN_ATTRS = {"RNN": set(), "GRU": {"linear_before_reset"}, "LSTM": {"input_forget"}}


class ONNXRecurrent(RNNBase):
    """One ONNX recurrent node with the options PyTorch lacks (``direction="reverse"``,
    GRU ``linear_before_reset=0``, LSTM peepholes, ``clip``, ``input_forget``).  Same call
    as the other layers; the variants that need new kernels run forward only."""

    def __init__(self, op_type: str, input_size: int, hidden_size: int, *, direction: str = "forward",
                 batch_first: bool = False, bias: bool = True, nonlinearity: str = "tanh",
                 linear_before_reset: int = 1, clip: Optional[float] = None, input_forget: bool = False,
                 peepholes: bool = False, dtype: Any = np.float32) -> None:
        self._label = op_type
        if op_type == "RNN":
            mode = f"rnn_{nonlinearity}"
        elif op_type == "GRU":
            mode = "gru" if linear_before_reset else "gru_lbr0"
        else:
            mode = "lstm_ext" if (peepholes or clip is not None or input_forget) else "lstm"
        super().__init__(mode, input_size, hidden_size, 1, bias, batch_first, 0.0, direction == "bidirectional",
                         dtype=dtype)
        self.direction = direction
        self._reverse_only = direction == "reverse"
        self.nonlinearity = nonlinearity
        self.clip = clip
        self.input_forget = input_forget
        if peepholes:
            for d in range(self.num_directions):
                self.register_parameter("weight_peephole_l0" + ("_reverse" if d else ""),
                                        np.zeros((3, hidden_size), self.dtype))

    def _step_options(self) -> Optional[list[dict[str, Any]]]:
        if self.mode != "lstm_ext":
            return None
        return [{"peep": self._parameters.get("weight_peephole_l0" + ("_reverse" if d else "")), "clip": self.clip,
                 "input_forget": self.input_forget} for d in range(self.num_directions)]

    def backward(self, grad_output: Any, grad_hn: Any = None, grad_states: Any = None, *,
                 input_grad: bool = True) -> Any:
        if self.mode in ("gru_lbr0", "lstm_ext"):
            raise NotImplementedError("backward is not implemented for ONNX-only variants (GRU with "
                                      "linear_before_reset=0, LSTM with peepholes, clip or input_forget)")
        return super().backward(grad_output, grad_hn, grad_states, input_grad=input_grad)


def _attrs(node: Any) -> dict[str, Any]:
    from onnx import helper

    return {a.name: helper.get_attribute_value(a) for a in node.attribute}


def module_from_node(node: Any, W: Any, R: Any, B: Any = None, P: Any = None, dtype: Any = None) -> RNNBase:
    """An nprnn layer computing ONNX ``node`` (RNN, GRU or LSTM) with weights ``W``, ``R``,
    ``B`` and peepholes ``P`` (ONNX layouts).  Plain cases give nprnn.RNN/GRU/LSTM; the
    rest an :class:`ONNXRecurrent`.  Anything the operator allows that nprnn does not
    compute is refused with a ValueError naming it."""
    op = node.op_type
    if op not in _TO_ONNX:
        raise ValueError(f"not a recurrent node: {op}")
    a = _attrs(node)
    allowed = _COMMON_ATTRS | _OWN_ATTRS[op]
    unknown = sorted(set(a) - allowed)
    if unknown:
        raise ValueError(f"{op}: attribute(s) {unknown} are not attributes of the ONNX {op} operator "
                         f"(it has {sorted(allowed)})")
    W, R = np.asarray(W), np.asarray(R)
    if W.ndim != 3 or R.ndim != 3:
        raise ValueError(f"{op}: W and R must be 3-D (directions, gates * hidden, size), got W {W.shape} and R "
                         f"{R.shape}")
    dtype = np.dtype(dtype or W.dtype)
    if dtype not in (np.float32, np.float64):
        raise ValueError(f"{op}: only float32 and float64 weights are supported, got {dtype}")
    direction = a.get("direction", b"forward")
    direction = direction.decode() if isinstance(direction, bytes) else direction
    if direction not in ("forward", "reverse", "bidirectional"):
        raise ValueError(f"{op}: direction must be 'forward', 'reverse' or 'bidirectional', got {direction!r}")
    D = 2 if direction == "bidirectional" else 1
    H = a.get("hidden_size", R.shape[-1])
    if not isinstance(H, int) or H < 1:
        raise ValueError(f"{op}: hidden_size must be a positive int, got {H!r}")
    acts = [x.decode() if isinstance(x, bytes) else x for x in a.get("activations", [])]
    nonlinearity = "tanh"
    if acts:
        if len(acts) != D * len(_ACTIVATIONS[op]):
            raise ValueError(f"{op}: activations must name {len(_ACTIVATIONS[op])} function(s) per direction "
                             f"({D} direction(s)), got {acts}")
        per_dir = [acts[i:i + len(_ACTIVATIONS[op])] for i in range(0, len(acts), len(_ACTIVATIONS[op]))]
        if op == "RNN" and all(p == ["Relu"] for p in per_dir):
            nonlinearity = "relu"
        elif any(p != _ACTIVATIONS[op] for p in per_dir):
            raise ValueError(f"{op}: activations {acts} are not supported (only the defaults"
                             f"{' or Relu' if op == 'RNN' else ''})")
    for name in ("activation_alpha", "activation_beta"):
        if name in a:
            raise ValueError(f"{op}: attribute {name} is not supported")
    clip = a.get("clip")
    if clip is not None and op != "LSTM":
        raise ValueError(f"{op}: clip is supported for LSTM only")
    if clip is not None and (not isinstance(clip, float) or not clip > 0):
        raise ValueError(f"{op}: clip must be a positive float, got {clip!r}")
    flags = {k: a.get(k, 0) for k in ("linear_before_reset", "input_forget", "layout")}
    for k, v in flags.items():
        if v not in (0, 1):
            raise ValueError(f"{op}: {k} must be 0 or 1, got {v!r}")
    lbr, input_forget, layout = int(flags["linear_before_reset"]), bool(flags["input_forget"]), int(flags["layout"])
    G = {"RNN": 1, "GRU": 3, "LSTM": 4}[op]
    if W.shape[0] != D or W.shape[1] != G * H or R.shape != (D, G * H, H):
        raise ValueError(f"{op}: W {W.shape} and R {R.shape} do not fit hidden_size={H}, {D} direction(s)")
    if B is not None and np.shape(B) != (D, 2 * G * H):
        raise ValueError(f"{op}: B must have shape {(D, 2 * G * H)} ([W_b, R_b] per direction), got {np.shape(B)}")
    if P is not None and np.shape(P) != (D, 3 * H):
        raise ValueError(f"{op}: P must have shape {(D, 3 * H)} (the peepholes per direction), got {np.shape(P)}")
    extras = op == "LSTM" and (P is not None or clip is not None or input_forget)
    plain = direction in ("forward", "bidirectional") and not extras and (op != "GRU" or lbr)
    kwargs = dict(batch_first=bool(layout), bias=True, dtype=dtype)
    if plain:
        cls = {"RNN": RNN, "GRU": GRU, "LSTM": LSTM}[op]
        extra = {"nonlinearity": nonlinearity} if op == "RNN" else {}
        module: RNNBase = cls(W.shape[2], H, bidirectional=D == 2, **kwargs, **extra)
    else:
        module = ONNXRecurrent(op, W.shape[2], H, direction=direction, nonlinearity=nonlinearity,
                               linear_before_reset=lbr, clip=clip, input_forget=input_forget,
                               peepholes=P is not None, **kwargs)
    back = np.argsort(_TO_ONNX[op])  # ONNX block order -> PyTorch block order
    sd = {}
    B = np.zeros((D, 2 * G * H), dtype) if B is None else np.asarray(B)
    for d in range(D):
        s = "_l0" + ("_reverse" if d else "")
        sd["weight_ih" + s] = _permute_gates(W[d], back)
        sd["weight_hh" + s] = _permute_gates(R[d], back)
        sd["bias_ih" + s] = _permute_gates(B[d, : G * H], back)
        sd["bias_hh" + s] = _permute_gates(B[d, G * H :], back)
        if P is not None:
            p_i, p_o, p_f = np.split(np.asarray(P)[d], 3)
            sd["weight_peephole" + s] = np.stack([p_i, p_f, p_o])
    module.load_state_dict({k: v.astype(dtype) for k, v in sd.items()})
    module.eval()
    return module


def run_node(module: RNNBase, node: Any, X: Any, sequence_lens: Any = None, initial_h: Any = None,
             initial_c: Any = None) -> tuple[Array, ...]:
    """Run ``module`` (from :func:`module_from_node`) with the ONNX operator's inputs and
    return its outputs ``(Y, Y_h[, Y_c])`` in ONNX's layouts."""
    a = _attrs(node)
    layout = int(a.get("layout", 0))
    given = [initial_h, initial_c] if node.op_type == "LSTM" else [initial_h]
    hx = None
    if any(g is not None for g in given):  # ONNX (D, N, H), or (N, D, H) with layout=1
        given = [None if g is None else np.asarray(g) for g in given]
        given = [None if g is None else np.ascontiguousarray(np.swapaxes(g, 0, 1)) if layout else g for g in given]
        like = next(g for g in given if g is not None)
        given = [np.zeros_like(like) if g is None else g for g in given]  # a missing one is zeros
        hx = tuple(given) if node.op_type == "LSTM" else given[0]
    lengths = None if sequence_lens is None else np.asarray(sequence_lens)
    out, state = module(np.asarray(X), hx, lengths=lengths)
    states = list(state) if isinstance(state, tuple) else [state]
    D, H = module.num_directions, module.hidden_size
    if layout:  # out (batch, seq, D*H) -> Y (batch, seq, D, H); states (batch, D, H)
        Y = out.reshape(out.shape[0], out.shape[1], D, H)
        states = [np.ascontiguousarray(np.swapaxes(s, 0, 1)) for s in states]
    else:  # out (seq, batch, D*H) -> Y (seq, D, batch, H)
        Y = np.ascontiguousarray(out.reshape(out.shape[0], out.shape[1], D, H).transpose(0, 2, 1, 3))
    return (Y, *states)

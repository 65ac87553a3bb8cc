"""Export of recurrent layers and whole ``Sequential`` models to ONNX.

Each module is written as the standard operators that compute what its ``forward`` does:

==================  ==========================================================================
module              ONNX
==================  ==========================================================================
RNN / GRU / LSTM    one ``RNN``/``GRU``/``LSTM`` node per layer (both directions in it),
                    ``Transpose`` + ``Reshape`` between layers, ``Transpose`` for batch_first
LSTM, proj_size     one ``Scan`` per layer whose body is the cell step (:mod:`.scan`)
Linear              ``Gemm`` (between ``Reshape`` to 2-D and back on more dimensions)
Embedding           ``Gather`` from the table
activations         ``Relu``, ``Tanh``, ``Sigmoid``, ``Softmax``, ``LogSoftmax``
LastStep            ``Gather`` of the last step, ``GatherND`` of each sequence's with lengths
Dropout             nothing (export writes the model in eval mode)
==================  ==========================================================================

A bare layer's graph takes ``input`` and the *optional* states ``h0`` (and ``c0``): each is
an input with a zero initializer of batch 1 that ``Expand`` widens, so a feed of only the
input means zero states, as in nprnn and PyTorch.  It returns ``output``, ``h_n`` (and
``c_n``).  A ``Sequential`` takes ``input`` and returns ``output``.  ``lengths=True`` adds
an int64 ``lengths`` input (per sequence) for padded batches.  Batch and sequence length
are dynamic.
"""
from __future__ import annotations

import os
from typing import Any, Optional, Union

import numpy as np

from ...nn.activations import LogSoftmax, ReLU, Sigmoid, Softmax, Tanh
from ...nn.layers import Dropout, Embedding, Linear
from ...nn.module import Module
from ...nn.recurrent import GRU, LSTM, RNN, LayerNormGRU, LayerNormLSTM, MinGRU, MinLSTM, RNNBase
from ...nn.sequential import LastStep, Sequential
from ..serialization import atomic_write
from .nodes import _TO_ONNX, _onnx, _permute_gates

_OPS = {LSTM: "LSTM", GRU: "GRU", RNN: "RNN", LayerNormLSTM: "LSTM", LayerNormGRU: "GRU", MinGRU: "GRU",
        MinLSTM: "GRU"}  # (the last four export as Scan layers: see scan.py)
_INT64 = 7  # onnx.TensorProto.INT64


class Builder:
    """Nodes and initializers of one graph, with unique value names."""

    def __init__(self, elem: int, opset: int) -> None:
        self.elem, self.opset = elem, opset
        self.nodes: list[Any] = []
        self.inits: list[Any] = []
        self.inputs: list[Any] = []
        self.outputs: list[Any] = []
        self._names = {"input", "lengths", "output", "h0", "c0", "h_n", "c_n"}  # the graph's own

    def name(self, base: str) -> str:
        name, i = base, 1
        while name in self._names:
            name, i = f"{base}_{i}", i + 1
        self._names.add(name)
        return name

    def const(self, array: Any, base: str = "const", exact: bool = False) -> str:
        from onnx import numpy_helper

        name = base if exact else self.name(base)
        self._names.add(name)
        self.inits.append(numpy_helper.from_array(np.asarray(array), name))
        return name

    def op(self, op_type: str, inputs: list[str], base: Optional[str] = None, node_name: Optional[str] = None,
           **attrs: Any) -> str:
        """A node of one output; that output's name."""
        return self.ops(op_type, inputs, 1, base, node_name, **attrs)[0]

    def ops(self, op_type: str, inputs: list[str], n_out: int, base: Optional[str] = None,
            node_name: Optional[str] = None, **attrs: Any) -> list[str]:
        """A node of ``n_out`` outputs; their names."""
        from onnx import helper

        outs = [self.name(base or op_type.lower()) for _ in range(n_out)]
        while inputs and inputs[-1] == "":
            inputs = inputs[:-1]
        self.nodes.append(helper.make_node(op_type, list(inputs), outs, name=self.name(node_name or f"{op_type}_node"),
                                           **attrs))
        return outs

    def batch(self, x: str, axis: int) -> str:
        """The batch size of ``x`` (its dimension ``axis``) as a 1-element int64 value."""
        return self.op("Slice", [self.op("Shape", [x]), self.const(np.array([axis], np.int64)),
                                 self.const(np.array([axis + 1], np.int64))], base="batch")

    def optional_state(self, name: str, rows: int, size: int, x: str, batch_axis: int, dtype: Any) -> str:
        """A graph input ``name`` (rows, batch, size) defaulting to zeros: its initializer has
        batch 1, widened by ``Expand`` to the batch of ``x``."""
        from onnx import helper

        self.const(np.zeros((rows, 1, size), dtype), name, exact=True)
        self.inputs.append(helper.make_tensor_value_info(name, self.elem, [rows, "batch", size]))
        rows_, size_ = self.const(np.array([rows], np.int64)), self.const(np.array([size], np.int64))
        shape = self.op("Concat", [rows_, self.batch(x, batch_axis), size_], axis=0)
        return self.op("Expand", [name, shape], base=f"{name}_full")


def _recurrent(b: Builder, m: RNNBase, x: str, states: dict[str, str], lens: Optional[str], prefix: str = ""
               ) -> tuple[str, str, Optional[str]]:
    """Nodes computing layer ``m`` on ``x`` (in m's layout); ``states`` maps 'h0'/'c0' to
    (D*L, N, H) values or is empty.  Returns the names of (output, h_n, c_n or None)."""
    from .scan import emit_scan_layer, scan_kind

    op = _OPS.get(type(m))
    if op is None:
        raise TypeError(f"ONNX export supports nprnn.RNN, nprnn.LSTM, nprnn.GRU, nprnn.LayerNormLSTM, "
                        f"nprnn.LayerNormGRU, nprnn.MinGRU and nprnn.MinLSTM, got {type(m).__name__}")
    scan = scan_kind(m)
    D, H, L = m.num_directions, m.hidden_size, m.num_layers
    if m.batch_first:
        x = b.op("Transpose", [x], base="time_major", perm=[1, 0, 2])
    order = _TO_ONNX[op]
    p = m._parameters
    y_h, y_c = [], []
    for layer in range(L):
        sfx = [f"_l{layer}", f"_l{layer}_reverse"][:D]
        rows = (b.const(np.array([layer * D], np.int64)), b.const(np.array([(layer + 1) * D], np.int64)),
                b.const(np.array([0], np.int64))) if states else ()
        s0 = {k: b.op("Slice", [v, *rows], base=f"{k}_l{layer}") for k, v in states.items()}
        if scan:  # no ONNX operator: the step as a Scan body
            x, h, c = emit_scan_layer(b, m, layer, x, s0.get("h0"), s0.get("c0"), lens, prefix,
                                      _node_name(prefix, f"Scan{layer}"))
            y_h.append(h)
            if c is not None:
                y_c.append(c)
            continue
        W = np.stack([_permute_gates(p["weight_ih" + s], order) for s in sfx])
        R = np.stack([_permute_gates(p["weight_hh" + s], order) for s in sfx])
        ins = [x, b.const(W, f"{prefix}W{layer}"), b.const(R, f"{prefix}R{layer}")]
        if m.bias:
            B = np.stack([np.concatenate([_permute_gates(p["bias_ih" + s], order),
                                          _permute_gates(p["bias_hh" + s], order)]) for s in sfx])
            ins.append(b.const(B, f"{prefix}B{layer}"))
        else:
            ins.append("")
        ins += [lens or "", s0.get("h0", "")] + ([s0.get("c0", "")] if op == "LSTM" else [])
        attrs: dict[str, Any] = {"hidden_size": H, "direction": "bidirectional" if D == 2 else "forward"}
        if op == "GRU":
            attrs["linear_before_reset"] = 1
        if op == "RNN":
            attrs["activations"] = ["Relu" if m.nonlinearity == "relu" else "Tanh"] * D
        outs = b.ops(op, ins, 3 if op == "LSTM" else 2, base=f"{prefix}{op}{layer}",
                     node_name=_node_name(prefix, f"{op}{layer}"), **attrs)
        y_h.append(outs[1])
        if op == "LSTM":
            y_c.append(outs[2])
        # (seq, D, batch, H) -> (seq, batch, D * H)
        y = b.op("Transpose", [outs[0]], perm=[0, 2, 1, 3])
        x = b.op("Reshape", [y, b.const(np.array([0, 0, -1], np.int64), "merge_directions")], base="layer_output")
    if m.batch_first:
        x = b.op("Transpose", [x], base="batch_major", perm=[1, 0, 2])
    h_n = b.op("Concat", y_h, base="h_n", axis=0) if L > 1 else y_h[0]
    c_n = (b.op("Concat", y_c, base="c_n", axis=0) if L > 1 else y_c[0]) if op == "LSTM" else None
    return x, h_n, c_n


def _node_name(prefix: str, name: str) -> str:
    """Node names as torch's exporter writes them, '/<module path>/<op>', so that import
    names the submodule after the module (Sequential's '0', '1', ...)."""
    return f"/{prefix.rstrip('.')}/{name}" if prefix else name


def _linear(b: Builder, m: Linear, x: str, rank: int, prefix: str) -> str:
    """``Gemm`` with the weight as stored (out, in); on more than 2-D input, between Reshapes
    to (-1, in) and back, so that import finds the Linear again."""
    W = b.const(m.weight, f"{prefix}weight", exact=True)
    bias = b.const(m.bias, f"{prefix}bias", exact=True) if "bias" in m._parameters else ""
    if rank == 2:
        return b.op("Gemm", [x, W, bias], base="linear", transB=1, node_name=_node_name(prefix, "Gemm"))
    flat = b.op("Reshape", [x, b.const(np.array([-1, m.in_features], np.int64))], base="rows")
    y = b.op("Gemm", [flat, W, bias], base="linear_rows", transB=1, node_name=_node_name(prefix, "Gemm"))
    lead = b.op("Slice", [b.op("Shape", [x]), b.const(np.array([0], np.int64)), b.const(np.array([-1], np.int64))])
    shape = b.op("Concat", [lead, b.const(np.array([m.out_features], np.int64))], axis=0)
    return b.op("Reshape", [y, shape], base="linear")


def _last_step(b: Builder, m: LastStep, x: str, lens: Optional[str]) -> str:
    axis = 1 if m.batch_first else 0
    if lens is None:
        return b.op("Gather", [x, b.const(np.array(-1, np.int64))], base="last_step", axis=axis)
    if not m.batch_first:
        x = b.op("Transpose", [x], perm=[1, 0, 2])
    last = b.op("Sub", [b.op("Cast", [lens], to=_INT64), b.const(np.array(1, np.int64))])
    index = b.op("Unsqueeze", [last, b.const(np.array([1], np.int64))])  # (N, 1)
    return b.op("GatherND", [x, index], base="last_step", batch_dims=1)


def _module(b: Builder, m: Module, x: str, rank: int, lens: Optional[str], prefix: str) -> tuple[str, int]:
    """Nodes for one module of a Sequential; returns (output name, its rank)."""
    if isinstance(m, RNNBase):
        return _recurrent(b, m, x, {}, lens, prefix)[0], 3
    if type(m) is Linear:
        return _linear(b, m, x, rank, prefix), rank
    if type(m) is Embedding:
        return b.op("Gather", [b.const(m.weight, f"{prefix}weight", exact=True), x], base="embedding",
                    node_name=_node_name(prefix, "Gather")), rank + 1
    if type(m) is LastStep:
        return _last_step(b, m, x, lens), rank - 1
    if type(m) is Dropout:
        return x, rank
    acts = {ReLU: "Relu", Tanh: "Tanh", Sigmoid: "Sigmoid", Softmax: "Softmax", LogSoftmax: "LogSoftmax"}
    if type(m) in acts:
        attrs = {"axis": m.dim} if type(m) in (Softmax, LogSoftmax) else {}
        return b.op(acts[type(m)], [x], base=acts[type(m)].lower(), **attrs), rank
    raise TypeError(f"ONNX export: {type(m).__name__} is not supported (recurrent layers, Linear, Embedding, LastStep, "
                    "Dropout, ReLU, Tanh, Sigmoid, Softmax, LogSoftmax)")


def to_onnx(model: Module, *, with_state: bool = True, lengths: bool = False, optional_state: bool = True,
            opset: int = 17) -> Any:
    """Build the ``onnx.ModelProto`` of ``model`` (see :func:`export`)."""
    from ...nn.quantized import QuantizedWeight

    if any(isinstance(v, QuantizedWeight) for m in model.modules() for v in vars(m).values()) or any(
            type(m).__name__.startswith("Quantized") for m in model.modules()):
        raise TypeError("ONNX export of a quantized model (nprnn.quantize) is not supported: export the float "
                        "model (onnxruntime.quantization.quantize_dynamic quantizes the exported file)")
    onnx = _onnx()
    from onnx import TensorProto, helper

    if not isinstance(model, Sequential) and type(model) not in _OPS:
        raise TypeError(f"ONNX export supports nprnn.RNN, nprnn.LSTM, nprnn.GRU, nprnn.LayerNormLSTM, "
                        f"nprnn.LayerNormGRU, nprnn.MinGRU, nprnn.MinLSTM and nprnn.Sequential, got "
                        f"{type(model).__name__}")
    modules = list(model) if isinstance(model, Sequential) else [model]
    if not modules:
        raise ValueError("ONNX export: the Sequential is empty")
    for m in modules:
        if isinstance(m, RNNBase) and any(m._zone):
            raise ValueError(f"ONNX export: {type(m).__name__} has zoneout={m.zoneout}, which ONNX's RNN, LSTM and "
                             "GRU nodes cannot express (each state mixes with the previous one); nothing is written")
    dtypes = {np.dtype(getattr(m, "dtype", np.float32)) for m in modules if getattr(m, "_parameters", None)}
    if len(dtypes) > 1:
        raise ValueError(f"ONNX export: the modules mix dtypes {sorted(str(d) for d in dtypes)}")
    dtype = dtypes.pop() if dtypes else np.dtype(np.float32)
    elem = TensorProto.FLOAT if dtype == np.float32 else TensorProto.DOUBLE
    b = Builder(elem, opset)
    first = modules[0]
    if isinstance(first, RNNBase):
        dims: list[str | int | None] = (["batch", "seq_len", first.input_size] if first.batch_first
                                        else ["seq_len", "batch", first.input_size])
        b.inputs.append(helper.make_tensor_value_info("input", elem, dims))
        rank = 3
    elif type(first) is Embedding:
        b.inputs.append(helper.make_tensor_value_info("input", TensorProto.INT64, ["dim0", "dim1"]))
        rank = 2
    elif type(first) is Linear:
        b.inputs.append(helper.make_tensor_value_info("input", elem, ["batch", first.in_features]))
        rank = 2
    else:
        raise TypeError(f"ONNX export: a model cannot start with {type(first).__name__} (the input's shape is unknown)")
    b._names.add("input")
    lens = None
    if lengths:
        b.inputs.append(helper.make_tensor_value_info("lengths", TensorProto.INT64, ["batch"]))
        b._names.add("lengths")
        lens = b.op("Cast", ["lengths"], base="lengths_i32", to=TensorProto.INT32)
    if isinstance(model, Sequential):
        x = "input"
        for key, m in model._modules.items():
            x, rank = _module(b, m, x, rank, lens if isinstance(m, RNNBase) else ("lengths" if lengths else None),
                              f"{key}.")
        b.nodes.append(helper.make_node("Identity", [x], ["output"], name="output_node"))
        b.outputs.append(helper.make_tensor_value_info("output", elem, [f"out{k}" for k in range(rank)]))
    else:
        assert isinstance(model, RNNBase)  # (checked on entry)
        m = model
        D, L, H = m.num_directions, m.num_layers, m.hidden_size
        Hh = m.proj_size or H
        states = {}
        if with_state:
            batch_axis = 0 if m.batch_first else 1
            sizes = {"h0": Hh, "c0": H} if m.kind.has_cell else {"h0": Hh}
            for name, size in sizes.items():
                if optional_state:
                    states[name] = b.optional_state(name, D * L, size, "input", batch_axis, dtype)
                else:
                    b.inputs.append(helper.make_tensor_value_info(name, elem, [D * L, "batch", size]))
                    states[name] = name
        y, h_n, c_n = _recurrent(b, m, "input", states, lens)
        named = [("output", y), ("h_n", h_n)] + ([("c_n", c_n)] if c_n else [])
        for name, value in named:
            b.nodes.append(helper.make_node("Identity", [value], [name], name=f"{name}_node"))
        out_dims: list[str | int] = ["batch", "seq_len", D * Hh] if m.batch_first else ["seq_len", "batch", D * Hh]
        b.outputs += [helper.make_tensor_value_info("output", elem, out_dims),
                      helper.make_tensor_value_info("h_n", elem, [D * L, "batch", Hh])]
        if c_n:
            b.outputs.append(helper.make_tensor_value_info("c_n", elem, [D * L, "batch", H]))
    graph = helper.make_graph(b.nodes, "nprnn_model", b.inputs, b.outputs, b.inits)
    model_proto = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)], producer_name="nprnn")
    onnx.checker.check_model(model_proto)
    return model_proto


def export(model: Module, path: Union[str, "os.PathLike[str]"], *, with_state: bool = True, lengths: bool = False,
           optional_state: bool = True, opset: int = 17) -> None:
    """Write ``model`` (an nprnn ``RNN``, ``GRU``, ``LSTM`` — with ``proj_size`` too —,
    ``LayerNormLSTM``, ``LayerNormGRU`` (as ``Scan`` layers), or a
    ``Sequential`` of recurrent layers, ``Linear``, ``Embedding``, ``LastStep``, ``Dropout``
    and activations) as an ONNX model, atomically.  See the module docstring for the
    graph's inputs and outputs; ``with_state=False`` leaves out the state inputs, and
    ``optional_state=False`` makes them required inputs (no zero default to widen: the
    leanest graph for a caller that always feeds them)."""
    atomic_write(path, to_onnx(model, with_state=with_state, lengths=lengths, optional_state=optional_state,
                               opset=opset).SerializeToString())

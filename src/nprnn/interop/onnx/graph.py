"""Import of whole ONNX graphs.

:func:`import_onnx` reads a model into an :class:`ONNXGraph`, a Module that runs the
graph's nodes in order on NumPy (:mod:`.ops`).  Each recurrent node is an nprnn layer
(:mod:`.nodes`, or :mod:`.scan` for the LSTMP pattern nprnn exports), a ``Gemm`` on
constant weights a :class:`~nprnn.Linear` and a ``Gather`` from a constant table an
:class:`~nprnn.Embedding`, so their weights appear in ``state_dict()`` and ``explain``
works on them.  A node type outside the supported list is refused by name.

Two simplifications follow, each proved on probe data before it is made (never read off
node names): what is not proved stays as it is, correct, only less folded.

- **Folding.** Recurrent nodes of one kind and size where the second reads the first's
  output merged to (seq, batch, directions * hidden) by the exporter's layout nodes
  (Transpose + Reshape, or Shape/Slice/Concat arithmetic) become one layer with that
  ``num_layers``, as torch writes one node per layer; the state dict then has torch's
  keys (``weight_ih_l1``, ...).  Their initial states may come from anywhere.
- **Collapse.** A graph that is then exactly one recurrent layer between its inputs
  (``input``, states, lengths) and outputs (``output``, ``h_n``, ``c_n``), with the
  exporter's Transposes for ``batch_first`` around it, is returned as that layer.

A probe runs the nodes in question on random data at two sizes and asks for bit-equal
results, which layout nodes (they only move data) give and nothing else does.
"""
from __future__ import annotations

import copy
import os
import re
from typing import Any, Optional, Union

import numpy as np

from ...nn.layers import Embedding, Linear
from ...nn.module import Module
from ...nn.recurrent import GRU, LSTM, RNN, LayerNormGRU, LayerNormLSTM, RNNBase
from . import ops
from .nodes import _attrs, _onnx, module_from_node

RECURRENT = ("RNN", "GRU", "LSTM")
_LAYERS = (RNN, GRU, LSTM, LayerNormLSTM, LayerNormGRU)  # what a recurrent step rebuilds
_PROBE_SIZES = ((3, 2), (5, 7))  # (seq_len, batch) pairs used by the probes
Values = dict[str, Any]  # value name -> array (or, for shapes and constants, what ONNX holds)


class _Step:
    """One node run as an operator; ``inputs``/``outputs`` are value names."""

    module = None

    def __init__(self, node: Any, opset: int) -> None:
        self.node, self.opset = node, opset
        self.op_type = node.op_type
        self.inputs = [n for n in node.input if n]
        self.outputs = [n for n in node.output if n]
        self._attrs = _attrs(node)

    def run(self, values: Values) -> Values:
        ins = [values[n] if n else None for n in self.node.input]
        try:
            outs = ops.run(self.op_type, ins, dict(self._attrs), self.opset)
        except Exception as exc:  # NumPy's messages name no node: say which one, and what it was given
            shapes = ", ".join("-" if x is None else str(np.shape(x)) for x in ins)
            raise ValueError(f"ONNX node {self.node.name!r} ({self.op_type}) cannot run on inputs of shapes "
                             f"[{shapes}]: {exc}") from exc
        return dict(zip(self.node.output, outs))


class _ModuleStep:
    """A node that is an nprnn module of one input: Gemm as Linear, Gather as Embedding."""

    def __init__(self, name: str, module: Module, x: str, y: str, op_type: str) -> None:
        self.name, self.module, self.op_type = name, module, op_type
        self.inputs, self.outputs = [x], [y]

    def run(self, values: Values) -> Values:
        return {self.outputs[0]: self.module(values[self.inputs[0]])}


class RecurrentNode:
    """One ONNX ``RNN``/``GRU``/``LSTM`` node: its layer and how its inputs and outputs map
    to the layer's call.  ``layout=1`` puts batch first in X, Y and the states."""

    def __init__(self, node: Any, consts: Values) -> None:
        names = list(node.input) + [""] * 8
        for role, i in (("W", 1), ("R", 2), ("B", 3), ("P", 7)):
            if names[i] and names[i] not in consts:
                raise ValueError(f"{node.op_type} node {node.name!r}: its weight {role} ({names[i]!r}) is computed "
                                 "in the graph or fed at run time; nprnn imports recurrent weights that are constants")
        def get(i: int) -> Any:
            return consts[names[i]] if names[i] else None

        self.layer = module_from_node(node, get(1), get(2), get(3), get(7) if node.op_type == "LSTM" else None)
        self.kind, self.name = node.op_type, node.name
        self.layout = int(_attrs(node).get("layout", 0))
        self.x, self.lens, self.h0 = names[0], names[4], names[5]
        self.c0 = names[6] if node.op_type == "LSTM" else ""
        outs = list(node.output) + ["", "", ""]
        self.y, self.y_h, self.y_c = outs[0], outs[1], outs[2] if node.op_type == "LSTM" else ""
        self.inputs = [n for n in (self.x, self.lens, self.h0, self.c0) if n]
        self.outputs = [n for n in (self.y, self.y_h, self.y_c) if n]
        self.ys = [self.y] if self.y else []  # the per-step outputs

    def initial(self, values: Values) -> tuple[Any, ...]:
        """The initial (h, c) given to this node in nprnn's (D, N, H) layout, None if absent."""
        return tuple(None if not n or n not in values else (np.swapaxes(values[n], 0, 1) if self.layout else values[n])
                     for n in (self.h0, self.c0))

    def emit(self, out: Any, h: Any, c: Any) -> Values:
        """This node's outputs from nprnn's ``output`` (None: not wanted) and final states (D, N, H)."""
        res = {}
        if out is not None and self.y:
            D = self.layer.num_directions
            if self.layout:
                res[self.y] = out.reshape(out.shape[0], out.shape[1], D, -1)
            else:
                res[self.y] = np.ascontiguousarray(out.reshape(out.shape[0], out.shape[1], D, -1).transpose(0, 2, 1, 3))
        for name, s in ((self.y_h, h), (self.y_c, c)):
            if name:
                res[name] = np.ascontiguousarray(np.swapaxes(s, 0, 1)) if self.layout else s
        return res

    def probe_outputs(self, T: int, N: int, rng: np.random.Generator) -> Values:
        D, H = self.layer.num_directions, self.layer.hidden_size
        shape = (N, T, D, H) if self.layout else (T, D, N, H)
        return {self.y: rng.standard_normal(shape).astype(self.layer.dtype)}

    def layer_output(self, raw: Values) -> Any:
        """nprnn's ``output`` (seq, batch, D*H), batch first with layout=1, from this node's Y."""
        Y = raw[self.y]
        if self.layout:
            return Y.reshape(Y.shape[0], Y.shape[1], -1)
        return Y.transpose(0, 2, 1, 3).reshape(Y.shape[0], Y.shape[2], -1)


class _RecurrentStep:
    """One layer run for one or more recurrent nodes (several when folded: layer k of the
    stack computes node k, and the nodes' states are the layer's states k)."""

    def __init__(self, name: str, module: RNNBase, parts: list[Any]) -> None:
        self.name, self.module, self.parts = name, module, parts
        self.op_type = parts[0].kind
        self.inputs = sorted({n for p in parts for n in p.inputs})
        last = parts[-1]
        self.outputs = [n for p in parts for n in p.outputs if n not in p.ys or p is last]

    def run(self, values: Values) -> Values:
        first, last, layer = self.parts[0], self.parts[-1], self.module
        x = values[first.x]
        lens = values[first.lens] if first.lens else None
        given = [p.initial(values) for p in self.parts]
        hx = None
        if any(s is not None for pair in given for s in pair):
            N = x.shape[0] if layer.batch_first else x.shape[1]
            D, Hh, Hc = layer.num_directions, layer.proj_size or layer.hidden_size, layer.hidden_size
            h = np.concatenate([g[0] if g[0] is not None else np.zeros((D, N, Hh), layer.dtype) for g in given])
            c = np.concatenate([g[1] if g[1] is not None else np.zeros((D, N, Hc), layer.dtype) for g in given])
            hx = (h, c) if layer.kind.has_cell else h  # (an ONNXRecurrent LSTM is no nprnn.LSTM)
        out, state = layer(x, hx, lengths=lens)
        h_n, c_n = state if isinstance(state, tuple) else (state, None)
        D, res = layer.num_directions, {}
        for k, p in enumerate(self.parts):
            rows = slice(k * D, (k + 1) * D)
            res.update(p.emit(out if p is last else None, h_n[rows], None if c_n is None else c_n[rows]))
        return res


Step = Union["_Step", "_ModuleStep", "_RecurrentStep"]  # what an ONNXGraph runs, in order


def _torch_path(node: Any) -> str:
    """The torch module path a node was exported from, '' when the graph does not say: the
    dynamo exporter's ``pkg.torch.onnx.name_scopes`` (['', 'rnn', 'lstm'] -> 'rnn'), or the
    TorchScript exporter's node name ('/rnn/LSTM_1' -> 'rnn')."""
    import ast

    for prop in node.metadata_props:
        if prop.key == "pkg.torch.onnx.name_scopes":
            try:
                scopes = ast.literal_eval(prop.value)
            except (ValueError, SyntaxError):
                break
            if isinstance(scopes, list) and all(isinstance(x, str) for x in scopes):
                return ".".join(x for x in scopes[1:-1] if x)  # (the last names the operator)
    return ".".join([p for p in node.name.split("/") if p][:-1]) if node.name.startswith("/") else ""


def _module_name(node: Any, taken: set[str], default: str) -> str:
    """A submodule name: the torch module path the exporter recorded, else ``default``."""
    base = _torch_path(node) or default
    base = re.sub(r"[^0-9A-Za-z_.]", "_", base) or default
    name, i = base, 1
    while name in taken:
        name, i = f"{base}_{i}", i + 1
    taken.add(name)
    return name


class ONNXGraph(Module):
    """An ONNX graph run on NumPy: call it with the graph's inputs (positionally in the
    graph's order, or by name), get its outputs (one array, or a tuple).  Inputs with an
    initializer of the same name are optional and default to it.  Recurrent nodes,
    ``Gemm`` and table ``Gather`` are submodules, so ``state_dict()`` holds their weights.
    Inference only: ``backward`` is refused."""

    def __init__(self, steps: list[Step], consts: Values, input_names: list[str], defaults: Values,
                 output_names: list[str], value_info: dict[str, Any]) -> None:
        super().__init__()
        object.__setattr__(self, "_steps", steps)
        object.__setattr__(self, "_consts", consts)
        self.input_names, self.output_names = list(input_names), list(output_names)
        self._defaults, self._value_info = defaults, value_info
        for s in steps:
            if s.module is not None:
                setattr(self, s.name, s.module)
        self.eval()

    def extra_repr(self) -> str:
        return f"inputs={self.input_names}, outputs={self.output_names}, nodes={len(self._steps)}"

    @property
    def op_types(self) -> list[str]:
        """The operator types this graph runs, in order."""
        return [s.op_type for s in self._steps]

    def unplaced_constants(self) -> list[str]:
        """Names of weight-like constants (float, 2-D or more) that feed nodes other than
        the submodules: a state dict of this graph leaves them out."""
        return sorted({n for s in self._steps if s.module is None for n in s.inputs
                       if n in self._consts and self._consts[n].dtype.kind == "f" and self._consts[n].ndim >= 2})

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        if len(args) > len(self.input_names):
            raise TypeError(f"ONNXGraph takes {len(self.input_names)} inputs {self.input_names}, got {len(args)}")
        feeds = dict(zip(self.input_names, args))
        for k, v in kwargs.items():
            if k not in self.input_names:
                raise TypeError(f"ONNXGraph: unexpected input {k!r}; inputs are {self.input_names}")
            if k in feeds:
                raise TypeError(f"ONNXGraph: input {k!r} given twice")
            feeds[k] = v
        values = dict(self._consts)
        for name in self.input_names:
            if name in feeds and feeds[name] is not None:
                values[name] = self._check_input(name, feeds[name])
            elif name in self._defaults:
                values[name] = self._defaults[name]
            else:
                raise TypeError(f"ONNXGraph: missing input {name!r}")
        for step in self._steps:
            values.update(step.run(values))
        outs = tuple(values[n] for n in self.output_names)
        return outs[0] if len(outs) == 1 else outs

    def _check_input(self, name: str, value: Any) -> Any:
        dtype, shape = self._value_info.get(name, (None, None))
        a = np.asarray(value)
        if dtype is not None:
            if a.dtype.kind != dtype.kind:
                raise TypeError(f"ONNXGraph: input {name!r} must be {dtype}, got {a.dtype}")
            a = a.astype(dtype, copy=False)
        if shape is not None:
            if a.ndim != len(shape) or any(isinstance(d, int) and d != s for d, s in zip(shape, a.shape)):
                want = "(" + ", ".join(str(d) for d in shape) + ")"
                raise ValueError(f"ONNXGraph: input {name!r} must have shape {want}, got {a.shape}")
        return a

    def backward(self, *args: Any, **kwargs: Any) -> Any:
        raise NotImplementedError("ONNXGraph runs inference only; to train, rebuild the model from nprnn modules and "
                                  "load_state_dict(graph.state_dict())")


# ------------------------------------------------------------------------------ reading
FOLD_BUDGET = 64 << 20  # bytes of folded constants always allowed (more: 16 × the model's size)


def _live(g: Any) -> set[int]:
    """Indices of the nodes the graph's outputs depend on (a Scan's body counts the outer
    values it names)."""
    need, live = {o.name for o in g.output}, set()
    for k in reversed(range(len(g.node))):
        node = g.node[k]
        if any(o and o in need for o in node.output):
            live.add(k)
            need.update(n for n in node.input if n)
            for a in node.attribute:
                if a.HasField("g"):
                    need.update(n for inner in a.g.node for n in inner.input if n)
    return live


def _read(model: Any) -> tuple[list[Step], Values, list[str], Values, list[str], dict[str, Any]]:
    """(steps, consts, inputs, defaults, outputs, value_info) of a model, constants folded."""
    from onnx import helper
    from onnx.defs import onnx_opset_version

    from .scan import scan_layer

    g = model.graph
    opset = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), 0)
    if not 7 <= opset <= onnx_opset_version():
        raise ValueError(f"ONNX opset {opset} is not one nprnn reads (7 to {onnx_opset_version()}, the released ones "
                         "the installed onnx package knows)")

    def elem_dtype(code: int, name: str) -> np.dtype[Any]:
        try:
            return np.dtype(helper.tensor_dtype_to_np_dtype(code))
        except Exception as exc:
            raise ValueError(f"ONNX input {name!r} has an unknown element type {code}") from exc

    consts = {t.name: ops.tensor(t) for t in g.initializer}
    input_names = [i.name for i in g.input]
    defaults = {n: consts.pop(n) for n in input_names if n in consts}
    value_info = {}
    for i in g.input:
        tt = i.type.tensor_type
        if i.type.HasField("tensor_type") and tt.elem_type:
            shape = [d.dim_value if d.HasField("dim_value") else d.dim_param or "?" for d in tt.shape.dim] \
                if tt.HasField("shape") else None
            if shape and any(isinstance(d, int) and d < 0 for d in shape):
                raise ValueError(f"ONNX input {i.name!r} has negative dims {shape}")
            value_info[i.name] = (elem_dtype(tt.elem_type, i.name), shape)
    steps: list[Step] = []
    taken: set[str] = set()
    known = set(consts) | set(input_names)
    live = _live(g)
    budget, folded = max(FOLD_BUDGET, 16 * model.ByteSize()), 0
    readers: dict[str, list[int]] = {}
    for k, node in enumerate(g.node):
        for n in node.input:
            readers.setdefault(n, []).append(k)
    fused: set[int] = set()  # Adds that became a Linear's bias
    for k, node in enumerate(g.node):
        missing = [n for n in node.input if n and n not in known]
        if missing:
            raise ValueError(f"ONNX node {node.name!r} ({node.op_type}) reads {missing[0]!r}, which no input, "
                             "initializer or earlier node provides")
        twice = [n for n in node.output if n and n in known]
        if twice:
            raise ValueError(f"ONNX node {node.name!r} ({node.op_type}) writes {twice[0]!r}, which is already defined "
                             "(a graph assigns each value once)")
        known.update(n for n in node.output if n)
        if node.domain not in ("", "ai.onnx"):
            raise ValueError(f"ONNX node {node.name!r} of type {node.op_type} in domain {node.domain!r} is not "
                             "supported")
        op = node.op_type
        if op == "Scan":
            if k in live:
                part = scan_layer(node, consts)
                steps.append(_RecurrentStep(_module_name(node, taken, part.kind.lower()), part.layer, [part]))
            continue
        if op not in ops.ARITY:
            raise ValueError(f"ONNX operator {op} (node {node.name!r}) is not supported by nprnn's import; supported: "
                             f"{', '.join(sorted(ops.ARITY))} and Scan as nprnn writes an LSTM with projection, "
                             "LayerNormLSTM or LayerNormGRU")
        label = node.name or f"#{k}"  # (exporters may leave nodes unnamed)
        attrs = _attrs(node)
        ops.check(op, attrs, label, list(node.input), list(node.output), opset)
        if k not in live or k in fused:
            continue  # checked, never run: nothing the outputs need (or a Linear computes it)
        if op in RECURRENT:
            node_part = RecurrentNode(node, consts)
            default = {"LSTM": "lstm", "GRU": "gru", "RNN": "rnn"}[op]
            steps.append(_RecurrentStep(_module_name(node, taken, default), node_part.layer, [node_part]))
            continue
        ins = [n for n in node.input if n]
        if all(n in consts for n in ins):  # constant folding: shapes, constants, weights arithmetic
            size = ops.result_bytes(op, [consts[n] if n else None for n in node.input], attrs)
            if folded + size > budget:
                raise ValueError(f"ONNX node {label!r} ({op}) makes a constant of {size / 2 ** 20:.1f} MiB, "
                                 f"beyond what nprnn folds for this model ({budget / 2 ** 20:.0f} MiB in all: "
                                 f"max(64 MiB, 16 × its {model.ByteSize()} bytes)); {folded / 2 ** 20:.1f} MiB "
                                 "are folded before it")
            outs = _Step(node, opset).run(consts)
            folded += sum(v.nbytes for v in map(np.asarray, outs.values()) if v.flags.owndata)  # (views: none)
            consts.update(outs)
            continue
        module_step = _as_module(node, consts, taken)
        if module_step is None and op == "MatMul":
            module_step = _matmul_linear(g, k, consts, taken, readers, {o.name for o in g.output}, fused)
        steps.append(module_step or _Step(node, opset))
    outputs = [o.name for o in g.output]
    missing = [n for n in outputs if n not in known]
    if missing:
        raise ValueError(f"ONNX graph output {missing[0]!r} is computed by no node")
    return steps, consts, input_names, defaults, outputs, value_info


def _owner(weight_name: str, default: str) -> str:
    """The module a torch weight name belongs to ('head.weight' -> 'head'), else ``default``."""
    return weight_name[: -len(".weight")] if weight_name.endswith(".weight") else default


def _matmul_linear(g: Any, k: int, consts: Values, taken: set[str], readers: dict[str, list[int]],
                   outputs: set[str], fused: set[int]) -> Optional["_ModuleStep"]:
    """``MatMul(x, W)`` on a constant 2-D ``W``, and the ``Add`` of a constant bias that alone
    reads it, as one Linear (torch's dynamo exporter writes ``nn.Linear`` so); the Add's
    index goes into ``fused``.  None when the pattern is not there."""
    node = g.node[k]
    x, w = node.input
    W = consts.get(w)
    if x in consts or W is None or W.ndim != 2 or W.dtype not in (np.float32, np.float64):
        return None
    y, b = node.output[0], None
    use = readers.get(y, [])
    if len(use) == 1 and y not in outputs and g.node[use[0]].op_type == "Add":
        add = g.node[use[0]]
        other = [n for n in add.input if n != y]
        if len(add.input) == 2 and len(other) == 1 and other[0] in consts:
            bias = consts[other[0]]
            if bias.shape == (W.shape[1],) and bias.dtype == W.dtype:
                b, y = bias, add.output[0]
                fused.add(use[0])
    lin = Linear(W.shape[0], W.shape[1], bias=b is not None, dtype=W.dtype)
    lin.load_state_dict({"weight": W.T, **({"bias": b} if b is not None else {})})
    return _ModuleStep(_module_name(node, taken, "linear"), lin, x, y, "MatMul")


def _as_module(node: Any, consts: Values, taken: set[str]) -> Optional["_ModuleStep"]:
    """Gemm on constant weights as Linear; Gather from a constant 2-D table as Embedding."""
    a = _attrs(node)
    ins = list(node.input) + ["", "", ""]
    if node.op_type == "Gemm" and ins[1] in consts and (not ins[2] or ins[2] in consts) and ins[0] not in consts \
            and a.get("alpha", 1.0) == 1.0 and a.get("beta", 1.0) == 1.0 and not a.get("transA", 0):
        W = consts[ins[1]]
        W = W if a.get("transB", 0) else W.T
        b = consts[ins[2]] if ins[2] else None
        if W.ndim != 2 or W.dtype not in (np.float32, np.float64) or (b is not None and b.shape != (W.shape[0],)):
            return None
        lin = Linear(W.shape[1], W.shape[0], bias=b is not None, dtype=W.dtype)
        lin.load_state_dict({"weight": W, **({"bias": b} if b is not None else {})})
        return _ModuleStep(_module_name(node, taken, _owner(ins[1], "linear")), lin, ins[0], node.output[0], "Gemm")
    if node.op_type == "Gather" and ins[0] in consts and ins[1] not in consts and a.get("axis", 0) == 0:
        table = consts[ins[0]]
        if table.ndim != 2 or table.dtype not in (np.float32, np.float64):
            return None
        emb = Embedding(table.shape[0], table.shape[1], dtype=table.dtype)
        emb.load_state_dict({"weight": table})
        return _ModuleStep(_module_name(node, taken, _owner(ins[0], "embedding")), emb, ins[1], node.output[0],
                           "Gather")
    return None


# ------------------------------------------------------------------------------ folding
def _recurrent_step(steps: list[Step], i: int) -> _RecurrentStep:
    step = steps[i]
    assert isinstance(step, _RecurrentStep)
    return step


def _producers(steps: list[Step]) -> dict[str, int]:
    return {o: i for i, s in enumerate(steps) for o in s.outputs}


def _consumers(steps: list[Step]) -> dict[str, set[int]]:
    use: dict[str, set[int]] = {}
    for i, s in enumerate(steps):
        for n in s.inputs:
            use.setdefault(n, set()).add(i)
    return use


def _between(steps: list[Step], prod: dict[str, int], use: dict[str, set[int]], sources: list[str],
             target: str) -> list[int]:
    """Indices of the steps on a path from one of the values ``sources`` to value ``target``
    (``prod``/``use``: :func:`_producers` and :func:`_consumers` of ``steps``)."""
    down, todo = set(), list(sources)
    while todo:
        for i in use.get(todo.pop(), ()):
            if i not in down:
                down.add(i)
                todo.extend(steps[i].outputs)
    up, todo = set(), [target]
    while todo:
        found = prod.get(todo.pop())
        if found is not None and found not in up:
            up.add(found)
            todo.extend(steps[found].inputs)
    return sorted(down & up)


def _evaluate(steps: list[Step], idx: list[int], feeds: Values, consts: Values) -> Values:
    values = dict(consts)
    values.update(feeds)
    for i in idx:
        values.update(steps[i].run(values))
    return values


def _same_stack(a: Any, b: Any) -> bool:
    la, lb = a.layer, b.layer
    cls = type(la)
    if cls not in _LAYERS or type(lb) is not cls:
        return False
    keys = ("hidden_size", "proj_size", "num_directions", "dtype", "bias", "batch_first", "mode")
    width = la.num_directions * (la.proj_size or la.hidden_size)
    return all(getattr(la, k, None) == getattr(lb, k, None) for k in keys) and lb.input_size == width \
        and a.lens == b.lens and a.layout == b.layout


def _links(steps: list[Step], consts: Values, outputs: set[str]) -> list[tuple[int, int, list[int]]]:
    """Pairs (i, j) of recurrent steps where step j's input is step i's output, merged by
    layout nodes only, with the indices of those nodes."""
    rec = [i for i, s in enumerate(steps) if isinstance(s, _RecurrentStep)]
    prod, use = _producers(steps), _consumers(steps)
    links = []
    for i in rec:
        a = _recurrent_step(steps, i).parts[-1]
        for j in rec:
            b = _recurrent_step(steps, j).parts[0]
            if j <= i or not _same_stack(a, b):
                continue
            if not a.ys:
                continue
            mid = _between(steps, prod, use, a.ys, b.x)
            if (not mid and b.x not in a.ys) or any(isinstance(steps[k], _RecurrentStep) or steps[k].module is not None
                                                    for k in mid):
                continue
            inside = set(mid) | {j}
            made = a.ys + [o for k in mid for o in steps[k].outputs]
            if any(o in outputs or not use.get(o, set()) <= inside for o in made):
                continue
            if any(n in steps[j].inputs and n != b.x for n in made):
                continue
            side = {n for k in mid for n in steps[k].inputs} - set(made)
            if not side <= set(consts):
                continue
            if _probe_merge(steps, mid, a, b.x, consts):
                links.append((i, j, mid))
                break
    return links


def _probe_merge(steps: list[Step], mid: list[int], a: Any, target: str, consts: Values) -> bool:
    rng = np.random.default_rng(0)
    try:
        for T, N in _PROBE_SIZES:
            raw = a.probe_outputs(T, N, rng)
            got = _evaluate(steps, mid, raw, consts)[target]
            want = a.layer_output(raw)
            if got.shape != want.shape or not np.array_equal(got, want):
                return False
    except Exception:  # a probe that cannot run proves nothing
        return False
    return True


def _stacked_layer(layers: list[RNNBase]) -> RNNBase:
    """One layer with ``len(layers)`` layers computing ``layers`` (each one layer) in turn."""
    l0 = layers[0]
    cls: Any = type(l0)
    kw: dict[str, Any] = dict(num_layers=len(layers), batch_first=l0.batch_first,
                              bidirectional=l0.num_directions == 2, dtype=l0.dtype)
    if not l0.kind.params:  # (the layer-norm layers have no bias argument)
        kw["bias"] = l0.bias
    if cls is RNN:
        kw["nonlinearity"] = l0.nonlinearity
    if getattr(l0, "proj_size", 0):
        kw["proj_size"] = l0.proj_size
    stack = cls(l0.input_size, l0.hidden_size, **kw)
    sd = {re.sub(r"_l0(_reverse)?$", rf"_l{k}\1", key): v for k, layer in enumerate(layers)
          for key, v in layer.state_dict().items()}
    stack.load_state_dict(sd)
    stack.eval()
    return stack  # type: ignore[no-any-return]


def _fold(steps: list[Step], consts: Values, outputs: set[str]) -> list[Step]:
    links = _links(steps, consts, outputs)
    if not links:
        return steps
    nxt = {i: (j, mid) for i, j, mid in links}
    has_prev = {j for _, j, _ in links}
    drop, place = set(), {}
    for start in sorted(nxt):
        if start in has_prev:
            continue
        chain, i = [start], start
        while i in nxt:
            i, mid = nxt[i]
            drop.update(mid)
            chain.append(i)
        drop.update(chain)
        parts = [p for k in chain for p in _recurrent_step(steps, k).parts]
        first = _recurrent_step(steps, chain[0])
        place[chain[-1]] = _RecurrentStep(first.name, _stacked_layer([p.layer for p in parts]), parts)
    folded = [place[i] if i in place else s for i, s in enumerate(steps) if i in place or i not in drop]
    return _in_order(folded) or steps


def _in_order(steps: list[Step]) -> Optional[list[Step]]:
    """``steps`` reordered so each runs after the steps it reads from (the given order
    where it already does), or None when they read in a circle."""
    prod = _producers(steps)
    done, order, waiting = set(), [], list(range(len(steps)))
    while waiting:
        ready = next((i for i in waiting if all(n not in prod or prod[n] in done for n in steps[i].inputs)), None)
        if ready is None:
            return None
        waiting.remove(ready)
        done.add(ready)
        order.append(steps[ready])
    return order


# ------------------------------------------------------------------------------ collapse
def _collapse(graph: "ONNXGraph") -> Optional[RNNBase]:
    """The one recurrent layer ``graph`` computes, or None (see the module docstring)."""
    rec = [s for s in graph._steps if isinstance(s, _RecurrentStep)]
    if len(rec) != 1 or any(s.module is not None for s in graph._steps if s is not rec[0]):
        return None
    layer = rec[0].module
    outputs = len(graph.output_names)
    if not isinstance(layer, _LAYERS) or not 1 <= outputs <= (3 if layer.kind.has_cell else 2):
        return None
    roles = _input_roles(graph, layer)
    if roles is None:
        return None
    for batch_first in (layer.batch_first, not layer.batch_first):
        cand = copy.deepcopy(layer)
        cand.batch_first = batch_first
        if _probe_layer(graph, cand, roles):
            cand.eval()
            return cand
    return None


def _input_roles(graph: "ONNXGraph", layer: RNNBase) -> Optional[list[str]]:
    """Graph inputs as ('x' | 'h0' | 'c0' | 'lengths'), or None when they are anything else."""
    names = graph.input_names
    info = [graph._value_info.get(n, (None, None)) for n in names]
    if not names or info[0][0] is None or info[0][0].kind != "f" or info[0][1] is None or len(info[0][1]) != 3:
        return None
    roles, states = ["x"], ["h0", "c0"] if layer.kind.has_cell else ["h0"]
    for dtype, shape in info[1:]:
        if dtype is None or shape is None:
            return None
        if dtype.kind == "f" and len(shape) == 3 and states:
            roles.append(states.pop(0))
        elif dtype.kind in "iu" and len(shape) == 1 and "lengths" not in roles:
            roles.append("lengths")
        else:
            return None
    return roles


def _probe_layer(graph: "ONNXGraph", layer: RNNBase, roles: list[str]) -> bool:
    rng = np.random.default_rng(1)
    x_shape = graph._value_info[graph.input_names[0]][1]
    if x_shape[2] != layer.input_size:
        return False
    D, L = layer.num_directions, layer.num_layers
    static = [d if isinstance(d, int) and d > 0 else None for d in x_shape[:2]]
    sizes = _PROBE_SIZES[:1] if None not in static else _PROBE_SIZES
    try:
        for T, N in sizes:
            dims = [N, T] if layer.batch_first else [T, N]
            dims = [s or d for s, d in zip(static, dims)]
            T, N = dims[::-1] if layer.batch_first else dims
            feeds = {"x": rng.standard_normal((*dims, layer.input_size)).astype(layer.dtype),
                     "h0": rng.standard_normal((D * L, N, layer.proj_size or layer.hidden_size)).astype(layer.dtype),
                     "c0": rng.standard_normal((D * L, N, layer.hidden_size)).astype(layer.dtype),
                     "lengths": rng.integers(1, T + 1, N)}
            got = graph(*[feeds[r] for r in roles])
            got = got if isinstance(got, tuple) else (got,)
            hx = None
            if "h0" in roles:
                hx = (feeds["h0"], feeds["c0"] if "c0" in roles else np.zeros_like(feeds["c0"])) \
                    if layer.kind.has_cell else feeds["h0"]
            out, state = layer(feeds["x"], hx, lengths=feeds["lengths"] if "lengths" in roles else None)
            want = (out, *(state if isinstance(state, tuple) else (state,)))
            if not all(g.shape == w.shape and np.array_equal(g, w) for g, w in zip(got, want)):
                return False
    except Exception:  # a probe that cannot run proves nothing
        return False
    return True


def _external(model: Any) -> list[Any]:
    """The tensors of ``model`` (initializers and attribute tensors, subgraphs included)
    whose data is in another file."""
    from onnx.external_data_helper import _get_all_tensors, uses_external_data

    return [t for t in _get_all_tensors(model) if uses_external_data(t)]


def _with_external_data(model: Any, base_dir: Any) -> Any:
    """``model`` with its external data read from ``base_dir`` (a copy: the caller's proto
    is not changed); refused without a base directory, never read from the current one."""
    outside = _external(model)
    if not outside:
        return model
    names = ", ".join(repr(t.name) for t in outside[:3]) + (" ..." if len(outside) > 3 else "")
    if base_dir is None or not os.fspath(base_dir):
        raise ValueError(f"the model keeps tensor(s) {names} in external files; an in-memory model needs "
                         "base_dir= naming the folder they are in (nprnn never reads them from the current "
                         "directory)")
    base = os.fspath(base_dir)
    if not os.path.isdir(base):
        raise FileNotFoundError(f"base_dir {base!r} is not a directory")
    from onnx.external_data_helper import load_external_data_for_model

    model = copy.deepcopy(model)
    try:
        load_external_data_for_model(model, base)
    except Exception as exc:  # onnx refuses paths outside base_dir, missing files, short files
        raise ValueError(f"the model's external data cannot be read from {base!r}: {exc}") from exc
    return model


def import_onnx(model_or_path: Any, base_dir: Optional[Union[str, "os.PathLike[str]"]] = None) -> Module:
    """An nprnn Module computing an ONNX model: an :class:`ONNXGraph` running its nodes,
    or, when the graph is exactly one recurrent layer (as :func:`nprnn.onnx.export` and
    torch's exporters write a bare ``nn.LSTM``), that layer itself (``nprnn.LSTM`` etc.,
    with ``num_layers``, ``bidirectional`` and ``batch_first`` as the graph says).

    Tensors kept in external files are read from the model's folder when it is given by
    path, and from ``base_dir`` for an in-memory ``ModelProto`` (refused without it); onnx
    refuses locations outside that folder.  Constant folding computes only what the
    outputs need, at most max(64 MiB, 16 × the model's size) in all; a node beyond that
    is refused by name."""
    onnx = _onnx()
    if isinstance(model_or_path, onnx.ModelProto):
        model = _with_external_data(model_or_path, base_dir)
    else:
        if base_dir is not None:
            raise TypeError("base_dir= is for an in-memory ModelProto; a model read from a file takes its external "
                            "data from its own folder")
        if not os.path.isfile(os.fspath(model_or_path)):
            raise FileNotFoundError(f"no such file: {os.fspath(model_or_path)}")
        try:
            model = onnx.load(model_or_path)
        except Exception as exc:  # protobuf's DecodeError and friends: a damaged or foreign file
            raise ValueError(f"{os.fspath(model_or_path)} is not a readable ONNX model (truncated or corrupted?): "
                             f"{exc}") from exc
    if not 3 <= model.ir_version <= onnx.IR_VERSION:  # (onnx's checker would also refuse outputs without a
        where = "the model" if isinstance(model_or_path, onnx.ModelProto) else os.fspath(model_or_path)
        raise ValueError(f"{where}: ONNX IR version {model.ir_version} is not one nprnn reads "  # shape, which
                         f"(3 to {onnx.IR_VERSION})")  # onnxruntime runs: nprnn checks what it relies on itself)
    steps, consts, inputs, defaults, outputs, value_info = _read(model)
    steps = _fold(steps, consts, set(outputs))
    graph = ONNXGraph(steps, consts, inputs, defaults, outputs, value_info)
    return _collapse(graph) or graph

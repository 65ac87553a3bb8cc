"""An LSTM with projections (LSTMP) as an ONNX ``Scan``, and back.

ONNX's ``LSTM`` operator has no projection, so each layer of an LSTM with ``proj_size``
is written as one ``Scan`` whose body is the cell's step in standard operators; the two
directions of a bidirectional layer run in the same Scan (the second reads the sequence
reversed, ``scan_input_directions=[0, 1]``, and writes its outputs back in time order).
For direction d, with the weights stored as PyTorch names them (``weight_ih_l0`` ...,
referenced from the enclosing graph, so the file holds them unchanged)::

    gates = Gemm(x_t, W_ih, b_ih, transB=1) + Gemm(h, W_hh, b_hh, transB=1)   # (N, 4H)
    i, f, g, o = Split(gates)                                                  # PyTorch's order
    c' = Sigmoid(f) * c + Sigmoid(i) * Tanh(g)
    h' = Gemm(Sigmoid(o) * Tanh(c'), W_hr, transB=1)                           # (N, P)

Import recognises a ``Scan`` as this pattern when its body is, node for node, the body
this module writes for the weights it references; anything else is refused.
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Any, Optional

import numpy as np

from ..._typing import Array
from ...nn.recurrent import LSTM
from .nodes import _attrs

if TYPE_CHECKING:
    from .export import Builder


def _body(names: list[dict[str, str]], D: int, H: int, P: int, elem: int, split_name: str) -> Any:
    """The Scan body for ``D`` directions; ``names[d]`` holds the outer names of direction
    d's weights (``w_ih``, ``w_hh``, ``w_hr`` and, with bias, ``b_ih``, ``b_hh``)."""
    from onnx import helper

    nodes, outs = [], []
    inputs = []
    for d in range(D):
        inputs += [helper.make_tensor_value_info(f"h{d}", elem, ["N", P]),
                   helper.make_tensor_value_info(f"c{d}", elem, ["N", H])]
    inputs += [helper.make_tensor_value_info(f"x{d}", elem, ["N", "I"]) for d in range(D)]
    states, ys = [], []
    for d in range(D):
        w = names[d]
        def n(base: str, d: int = d) -> str:
            return f"{base}{d}"

        step: list[tuple[str, list[str], list[str], dict[str, Any]]] = [
            ("Gemm", [f"x{d}", w["w_ih"]] + ([w["b_ih"]] if "b_ih" in w else []), [n("a")], {"transB": 1}),
            ("Gemm", [f"h{d}", w["w_hh"]] + ([w["b_hh"]] if "b_hh" in w else []), [n("r")], {"transB": 1}),
            ("Add", [n("a"), n("r")], [n("gates")], {}),
            ("Split", [n("gates"), split_name], [n("i"), n("f"), n("g"), n("o")], {"axis": 1}),
            ("Sigmoid", [n("i")], [n("si")], {}),
            ("Sigmoid", [n("f")], [n("sf")], {}),
            ("Tanh", [n("g")], [n("tg")], {}),
            ("Sigmoid", [n("o")], [n("so")], {}),
            ("Mul", [n("sf"), f"c{d}"], [n("fc")], {}),
            ("Mul", [n("si"), n("tg")], [n("ig")], {}),
            ("Add", [n("fc"), n("ig")], [n("c_next")], {}),
            ("Tanh", [n("c_next")], [n("tc")], {}),
            ("Mul", [n("so"), n("tc")], [n("m")], {}),
            ("Gemm", [n("m"), w["w_hr"]], [n("h_next")], {"transB": 1}),
            ("Identity", [n("h_next")], [n("y")], {}),
        ]
        nodes += [helper.make_node(op, i, o, name=f"lstmp_{o[0]}", **a) for op, i, o, a in step]
        states += [helper.make_tensor_value_info(n("h_next"), elem, ["N", P]),
                   helper.make_tensor_value_info(n("c_next"), elem, ["N", H])]
        ys.append(helper.make_tensor_value_info(n("y"), elem, ["N", P]))
    outs = states + ys
    return helper.make_graph(nodes, "lstmp_step", inputs, outs)


def emit_lstmp_layer(b: "Builder", m: LSTM, layer: int, x: str, h0: Optional[str], c0: Optional[str],
                     lens: Optional[str], prefix: str = "", node_name: Optional[str] = None
                     ) -> tuple[str, str, str]:
    """Layer ``layer`` of LSTM ``m`` (with ``proj_size``) on time-major ``x`` as one Scan;
    ``h0``/``c0`` are (D, N, P)/(D, N, H) values or None for zeros.  Returns the names of
    (output (T, N, D*P), h_n (D, N, P), c_n (D, N, H))."""
    if lens is not None:
        raise ValueError("ONNX export of an LSTM with proj_size does not take lengths=True: ONNX's Scan has no "
                         "sequence lengths, and the reverse direction of a padded batch would start on padding")
    D, H, P = m.num_directions, m.hidden_size, m.proj_size
    names = []
    for d in range(D):
        sfx = f"_l{layer}" + ("_reverse" if d else "")
        keys = {"w_ih": "weight_ih", "w_hh": "weight_hh", "w_hr": "weight_hr"}
        if m.bias:
            keys.update(b_ih="bias_ih", b_hh="bias_hh")
        names.append({k: b.const(m._parameters[v + sfx], f"{prefix}{v}{sfx}", exact=True) for k, v in keys.items()})
    split = b.const(np.array([H] * 4, np.int64), "gate_split")
    zeros = {}  # without given states, one (N, size) zero value serves every direction
    if h0 is None or c0 is None:
        batch = b.batch(x, 1)
        for size, given, kind in ((P, h0, "h"), (H, c0, "c")):
            if given is None:
                shape = b.op("Concat", [batch, b.const(np.array([size], np.int64))], axis=0)
                zeros[kind] = b.op("ConstantOfShape", [shape], base=f"{kind}0_zero", value=_zero(m.dtype))
    ins = []
    for d in range(D):
        for given, kind in ((h0, "h"), (c0, "c")):
            ins.append(zeros[kind] if given is None else
                       b.op("Gather", [given, b.const(np.array(d, np.int64))], base=f"{kind}0_l{layer}_d{d}", axis=0))
    ins += [x] * D
    body = _body(names, D, H, P, b.elem, split)
    outs = b.ops("Scan", ins, 3 * D, base=f"{prefix}lstmp{layer}", body=body, num_scan_inputs=D,
                node_name=node_name,
                scan_input_directions=[0, 1][:D], scan_output_directions=[0, 1][:D])
    ys = outs[2 * D:]
    y = b.op("Concat", ys, base="layer_output", axis=2) if D == 2 else ys[0]
    axis0 = b.const(np.array([0], np.int64))
    h = [b.op("Unsqueeze", [outs[2 * d], axis0]) for d in range(D)]
    c = [b.op("Unsqueeze", [outs[2 * d + 1], axis0]) for d in range(D)]
    h_n = b.op("Concat", h, base="h_n_layer", axis=0) if D == 2 else h[0]
    c_n = b.op("Concat", c, base="c_n_layer", axis=0) if D == 2 else c[0]
    return y, h_n, c_n


def _zero(dtype: Any) -> Any:
    from onnx import numpy_helper

    return numpy_helper.from_array(np.zeros(1, dtype))


def _canonical(graph: Any) -> tuple[list[Any], tuple[Any, ...]]:
    """A graph's structure with its own value names replaced by positions: for comparing
    two bodies that differ only in naming."""
    from onnx import helper

    ids = {i.name: ("in", k) for k, i in enumerate(graph.input)}
    nodes = []
    for k, n in enumerate(graph.node):
        attrs = tuple(sorted((a.name, repr(helper.get_attribute_value(a))) for a in n.attribute))
        nodes.append((n.op_type, n.domain, tuple(ids.get(x, ("outer", x)) for x in n.input), len(n.output), attrs))
        ids.update({o: ("node", k, j) for j, o in enumerate(n.output)})
    return nodes, tuple(ids.get(o.name, ("outer", o.name)) for o in graph.output)


def scan_lstmp(node: Any, consts: dict[str, Array]) -> "ScanLSTMP":
    """The :class:`ScanLSTMP` a Scan node stands for; ValueError when it is not the pattern."""
    def refuse(why: str) -> ValueError:
        return ValueError(f"ONNX operator Scan (node {node.name!r}) is not supported by nprnn's import unless it is "
                          f"the LSTM-with-projection step nprnn writes: {why}")

    a = _attrs(node)
    body, D = a.get("body"), int(a.get("num_scan_inputs", 0))
    if body is None or D not in (1, 2) or len(node.input) != 3 * D or len(node.output) != 3 * D:
        raise refuse(f"{len(node.input)} inputs, {len(node.output)} outputs, num_scan_inputs={D}")
    if list(a.get("scan_input_directions", [0] * D)) != [0, 1][:D] or \
            list(a.get("scan_output_directions", [0] * D)) != [0, 1][:D] or any(
            list(a.get(k, [])) not in ([], [0] * D) for k in ("scan_input_axes", "scan_output_axes")):
        raise refuse("its scan directions or axes differ")
    if not hasattr(body, "node"):
        raise refuse("its body attribute is not a graph")
    gemms = [n for n in body.node if n.op_type == "Gemm"]
    splits = [n for n in body.node if n.op_type == "Split"]
    if len(gemms) != 3 * D or len(splits) != D or any(len(n.input) != 2 for n in splits) or \
            any(not 2 <= len(n.input) <= 3 for n in gemms) or len(set(node.input[2 * D:])) != 1 or \
            len(body.input) != 3 * D or not all(node.input):
        raise refuse("its body has another shape")
    names = []
    for d in range(D):
        g_ih, g_hh, g_hr = gemms[3 * d: 3 * d + 3]
        w = {"w_ih": g_ih.input[1], "w_hh": g_hh.input[1], "w_hr": g_hr.input[1]}
        if len(g_ih.input) > 2:
            w.update(b_ih=g_ih.input[2], b_hh=g_hh.input[2] if len(g_hh.input) > 2 else "")
        names.append(w)
    missing = [v for w in names for v in w.values() if v not in consts]
    split = consts.get(splits[0].input[1])
    if missing or split is None:
        raise refuse(f"its weights {missing or [splits[0].input[1]]} are not constants")
    if any(consts[w[k]].ndim != 2 for w in names for k in ("w_ih", "w_hh", "w_hr")):
        raise refuse("its weights are not matrices")
    P, H = consts[names[0]["w_hr"]].shape
    elem = body.input[0].type.tensor_type.elem_type
    want = _body(names, D, H, P, elem, splits[0].input[1])
    if _canonical(want) != _canonical(body) or np.asarray(split).reshape(-1).tolist() != [H] * 4:
        raise refuse("its body differs from the LSTMP step")
    return ScanLSTMP(node, names, consts, D, H, P)


class ScanLSTMP:
    """A Scan computing one LSTMP layer, seen as a recurrent node (the interface of
    :class:`~nprnn.onnx.graph.RecurrentNode`): its initial states are the Scan's first
    inputs, per direction (N, P) and (N, H); its outputs are the final states, then each
    direction's (T, N, P) outputs."""

    kind, layout, lens = "LSTM", 0, ""

    def __init__(self, node: Any, names: list[dict[str, str]], consts: dict[str, Array], D: int, H: int,
                 P: int) -> None:
        self.name = node.name
        W_ih = consts[names[0]["w_ih"]]
        bias = "b_ih" in names[0]
        self.layer = LSTM(W_ih.shape[1], H, proj_size=P, bidirectional=D == 2, bias=bias, dtype=W_ih.dtype)
        sd = {}
        for d, w in enumerate(names):
            sfx = "_l0" + ("_reverse" if d else "")
            for key, torch_name in (("w_ih", "weight_ih"), ("w_hh", "weight_hh"), ("w_hr", "weight_hr"),
                                    ("b_ih", "bias_ih"), ("b_hh", "bias_hh")):
                if key in w:
                    sd[torch_name + sfx] = consts[w[key]] if w[key] else np.zeros(4 * H, W_ih.dtype)
        self.layer.load_state_dict(sd)
        self.layer.eval()
        self.x = node.input[2 * D]
        self.h0s, self.c0s = list(node.input[0:2 * D:2]), list(node.input[1:2 * D:2])
        self.h_ns, self.c_ns = list(node.output[0:2 * D:2]), list(node.output[1:2 * D:2])
        self.ys = list(node.output[2 * D:])
        self.inputs = [self.x] + self.h0s + self.c0s
        self.outputs = self.h_ns + self.c_ns + self.ys

    def initial(self, values: dict[str, Array]) -> tuple[Array, Array]:
        return np.stack([values[n] for n in self.h0s]), np.stack([values[n] for n in self.c0s])

    def emit(self, out: Optional[Array], h: Array, c: Array) -> dict[str, Array]:
        res = {}
        if out is not None:
            for y, part in zip(self.ys, np.split(out, len(self.ys), axis=-1)):
                res[y] = np.ascontiguousarray(part)
        for d in range(len(self.ys)):
            res[self.h_ns[d]], res[self.c_ns[d]] = h[d], c[d]
        return res

    def probe_outputs(self, T: int, N: int, rng: np.random.Generator) -> dict[str, Array]:
        return {y: rng.standard_normal((T, N, self.layer.proj_size)).astype(self.layer.dtype) for y in self.ys}

    def layer_output(self, raw: dict[str, Array]) -> Array:
        return np.concatenate([raw[y] for y in self.ys], axis=-1)

"""Recurrent layers ONNX has no operator for, as an ONNX ``Scan``, and back: an LSTM with
projections (LSTMP), the layer-norm LSTM (with or without a projection), the layer-norm
GRU, and minGRU and minLSTM (their sequential form, one step a time; log mode's ``g`` as
``Where(v >= 0, v + 0.5, Sigmoid(v))``).

Each layer is one ``Scan`` whose body is the cell's step in standard operators; the two
directions of a bidirectional layer run in the same Scan (the second reads the sequence
reversed, ``scan_input_directions=[0, 1]``, and writes its outputs back in time order).
For direction d, with the weights stored as nprnn names them (``weight_ih_l0`` ...,
referenced from the enclosing graph, so the file holds them unchanged), the LSTMP step::

    gates = Gemm(x_t, W_ih, b_ih, transB=1) + Gemm(h, W_hh, b_hh, transB=1)   # (N, 4H)
    i, f, g, o = Split(gates)                                                  # PyTorch's order
    c' = Sigmoid(f) * c + Sigmoid(i) * Tanh(g)
    h' = Gemm(Sigmoid(o) * Tanh(c'), W_hr, transB=1)                           # (N, P)

The layer-norm LSTM puts ``LayerNormalization`` (opset 17, epsilon 1e-5, over the last
axis) after each product and around ``c'``, the norms' gains and shifts in place of the
biases; the layer-norm GRU normalises both products and gates as ``nn.GRU`` does (see
:mod:`nprnn.functional.reference` for both).  Import recognises a ``Scan`` as one of these
when its body is, node for node, the body this module writes for the weights it
references; anything else is refused.
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Any, Optional

import numpy as np

from ..._typing import Array
from ...nn.recurrent import LSTM, LayerNormGRU, LayerNormLSTM, MinGRU, MinLSTM, RNNBase
from .nodes import _attrs

if TYPE_CHECKING:
    from .export import Builder

EPS = 1e-5  # the layer norms' epsilon
# per kind: the weights a direction references (body key -> parameter name), its states
KEYS = {
    "lstmp": {"w_ih": "weight_ih", "w_hh": "weight_hh", "w_hr": "weight_hr", "b_ih": "bias_ih", "b_hh": "bias_hh"},
    "ln_lstm": {"w_ih": "weight_ih", "w_hh": "weight_hh", "w_hr": "weight_hr", "g_ih": "ln_ih_weight",
                "s_ih": "ln_ih_bias", "g_hh": "ln_hh_weight", "s_hh": "ln_hh_bias", "g_c": "ln_c_weight",
                "s_c": "ln_c_bias"},
    "ln_gru": {"w_ih": "weight_ih", "w_hh": "weight_hh", "g_ih": "ln_ih_weight", "s_ih": "ln_ih_bias",
               "g_hh": "ln_hh_weight", "s_hh": "ln_hh_bias"},
}
_MIN = {"w_ih": "weight_ih", "b_ih": "bias_ih"}  # (and, in log mode, the constants zero and half)
KEYS.update({k: _MIN for k in ("mingru", "mingru_linear", "minlstm", "minlstm_linear")})
LAYERS = {"lstmp": LSTM, "ln_lstm": LayerNormLSTM, "ln_gru": LayerNormGRU, "mingru": MinGRU, "mingru_linear": MinGRU,
          "minlstm": MinLSTM, "minlstm_linear": MinLSTM}
ONE_STATE = ("ln_gru", "mingru", "mingru_linear", "minlstm", "minlstm_linear")  # no cell state


def scan_kind(m: RNNBase) -> Optional[str]:
    """The Scan body a layer exports as, or None (ONNX has an operator for it)."""
    if isinstance(m, LayerNormLSTM):
        return "ln_lstm"
    if isinstance(m, LayerNormGRU):
        return "ln_gru"
    if isinstance(m, (MinGRU, MinLSTM)):
        return m.kind.name + ("_linear" if m.scan_mode == "linear" else "")
    return "lstmp" if type(m) is LSTM and m.proj_size else None


def _gates(kind: str) -> int:
    return 2 if kind.startswith("mingru") else 3 if kind.startswith("minlstm") or kind == "ln_gru" else 4


Node = tuple[str, list[str], list[str], dict[str, Any]]


def _step(kind: str, w: dict[str, str], d: int, split: str) -> list[Node]:
    """Direction ``d``'s step: nodes reading ``x{d}``, ``h{d}`` (and ``c{d}``), writing
    ``h_next{d}`` (``c_next{d}``) and ``y{d}``."""
    def n(base: str) -> str:
        return f"{base}{d}"

    def norm(a: str, g: str, s: str, out: str) -> Node:
        return ("LayerNormalization", [a, w[g], w[s]], [out], {"axis": -1, "epsilon": EPS})

    if kind.startswith("min"):  # minGRU / minLSTM: the gates from x alone, then the state's update
        u = [("Gemm", [f"x{d}", w["w_ih"]] + ([w["b_ih"]] if "b_ih" in w else []), [n("u")], {"transB": 1})]
        if kind.startswith("mingru"):
            gates = [("Split", [n("u"), split], [n("k"), n("v")], {"axis": 1}), ("Sigmoid", [n("k")], [n("z")], {})]
        else:
            gates = [("Split", [n("u"), split], [n("f"), n("i"), n("v")], {"axis": 1}),
                     ("Sigmoid", [n("f")], [n("sf")], {}), ("Sigmoid", [n("i")], [n("si")], {}),
                     ("Add", [n("sf"), n("si")], [n("s")], {}), ("Div", [n("sf"), n("s")], [n("fp")], {}),
                     ("Div", [n("si"), n("s")], [n("ip")], {})]
        cand: list[Node]
        update: list[Node]
        if kind.endswith("_linear"):
            cand = [("Identity", [n("v")], [n("ht")], {})]
        else:  # g(v) = v + 0.5 (v >= 0), sigmoid(v) below
            cand = [("GreaterOrEqual", [n("v"), w["zero"]], [n("ge")], {}), ("Add", [n("v"), w["half"]], [n("vp")], {}),
                    ("Sigmoid", [n("v")], [n("sv")], {}), ("Where", [n("ge"), n("vp"), n("sv")], [n("ht")], {})]
        if kind.startswith("mingru"):  # h + z (h~ - h) = (1 - z) h + z h~
            update = [("Sub", [n("ht"), f"h{d}"], [n("hd")], {}), ("Mul", [n("z"), n("hd")], [n("zd")], {}),
                      ("Add", [f"h{d}", n("zd")], [n("h_next")], {})]
        else:
            update = [("Mul", [n("fp"), f"h{d}"], [n("fh")], {}), ("Mul", [n("ip"), n("ht")], [n("ih")], {}),
                      ("Add", [n("fh"), n("ih")], [n("h_next")], {})]
        return u + gates + cand + update + [("Identity", [n("h_next")], [n("y")], {})]
    if kind == "ln_gru":
        return [
            ("Gemm", [f"x{d}", w["w_ih"]], [n("xa")], {"transB": 1}),
            norm(n("xa"), "g_ih", "s_ih", n("a")),
            ("Gemm", [f"h{d}", w["w_hh"]], [n("hb")], {"transB": 1}),
            norm(n("hb"), "g_hh", "s_hh", n("b")),
            ("Split", [n("a"), split], [n("a_r"), n("a_z"), n("a_n")], {"axis": 1}),
            ("Split", [n("b"), split], [n("b_r"), n("b_z"), n("b_n")], {"axis": 1}),
            ("Add", [n("a_r"), n("b_r")], [n("pr")], {}),
            ("Sigmoid", [n("pr")], [n("r")], {}),
            ("Add", [n("a_z"), n("b_z")], [n("pz")], {}),
            ("Sigmoid", [n("pz")], [n("z")], {}),
            ("Mul", [n("r"), n("b_n")], [n("rb")], {}),
            ("Add", [n("a_n"), n("rb")], [n("pn")], {}),
            ("Tanh", [n("pn")], [n("nn")], {}),
            ("Sub", [f"h{d}", n("nn")], [n("hd")], {}),
            ("Mul", [n("z"), n("hd")], [n("zd")], {}),
            ("Add", [n("nn"), n("zd")], [n("h_next")], {}),  # (1 - z) n + z h
            ("Identity", [n("h_next")], [n("y")], {}),
        ]
    ln = kind == "ln_lstm"
    if ln:
        gates = [("Gemm", [f"x{d}", w["w_ih"]], [n("xa")], {"transB": 1}), norm(n("xa"), "g_ih", "s_ih", n("a")),
                 ("Gemm", [f"h{d}", w["w_hh"]], [n("hb")], {"transB": 1}), norm(n("hb"), "g_hh", "s_hh", n("r"))]
    else:
        gates = [("Gemm", [f"x{d}", w["w_ih"]] + ([w["b_ih"]] if "b_ih" in w else []), [n("a")], {"transB": 1}),
                 ("Gemm", [f"h{d}", w["w_hh"]] + ([w["b_hh"]] if "b_hh" in w else []), [n("r")], {"transB": 1})]
    cell = n("c_pre") if ln else n("c_next")
    out = [("Gemm", [n("m"), w["w_hr"]], [n("h_next")], {"transB": 1})] if "w_hr" in w else \
        [("Identity", [n("m")], [n("h_next")], {})]
    return gates + [
        ("Add", [n("a"), n("r")], [n("gates")], {}),
        ("Split", [n("gates"), split], [n("i"), n("f"), n("g"), n("o")], {"axis": 1}),
        ("Sigmoid", [n("i")], [n("si")], {}),
        ("Sigmoid", [n("f")], [n("sf")], {}),
        ("Tanh", [n("g")], [n("tg")], {}),
        ("Sigmoid", [n("o")], [n("so")], {}),
        ("Mul", [n("sf"), f"c{d}"], [n("fc")], {}),
        ("Mul", [n("si"), n("tg")], [n("ig")], {}),
        ("Add", [n("fc"), n("ig")], [cell], {}),
    ] + ([norm(cell, "g_c", "s_c", n("c_next"))] if ln else []) + [
        ("Tanh", [n("c_next")], [n("tc")], {}),
        ("Mul", [n("so"), n("tc")], [n("m")], {}),
    ] + out + [("Identity", [n("h_next")], [n("y")], {})]


def _body(kind: str, names: list[dict[str, str]], D: int, H: int, P: int, elem: int, split: str) -> Any:
    """The Scan body for ``D`` directions; ``names[d]`` holds the outer names of direction
    d's weights (keys of :data:`KEYS`)."""
    from onnx import helper

    cell = kind not in ONE_STATE
    inputs, states, ys, nodes = [], [], [], []
    for d in range(D):
        inputs.append(helper.make_tensor_value_info(f"h{d}", elem, ["N", P]))
        states.append(helper.make_tensor_value_info(f"h_next{d}", elem, ["N", P]))
        if cell:
            inputs.append(helper.make_tensor_value_info(f"c{d}", elem, ["N", H]))
            states.append(helper.make_tensor_value_info(f"c_next{d}", elem, ["N", H]))
        ys.append(helper.make_tensor_value_info(f"y{d}", elem, ["N", P]))
        nodes += [helper.make_node(op, i, o, name=f"{kind}_{o[0]}", **a) for op, i, o, a in _step(kind, names[d], d,
                                                                                                 split)]
    inputs += [helper.make_tensor_value_info(f"x{d}", elem, ["N", "I"]) for d in range(D)]
    return helper.make_graph(nodes, f"{kind}_step", inputs, states + ys)


def emit_scan_layer(b: "Builder", m: RNNBase, layer: int, x: str, h0: Optional[str], c0: Optional[str],
                    lens: Optional[str], prefix: str = "", node_name: Optional[str] = None
                    ) -> tuple[str, str, Optional[str]]:
    """Layer ``layer`` of ``m`` (an LSTM with ``proj_size`` or a layer-norm layer) on
    time-major ``x`` as one Scan; ``h0``/``c0`` are (D, N, P)/(D, N, H) values or None for
    zeros.  Returns the names of (output (T, N, D*P), h_n (D, N, P), c_n (D, N, H) or None)."""
    kind = scan_kind(m)
    assert kind is not None
    if lens is not None:
        what = "an LSTM with proj_size" if kind == "lstmp" else type(m).__name__
        raise ValueError(f"ONNX export of {what} does not take lengths=True: ONNX's Scan has no sequence lengths, "
                         "and the reverse direction of a padded batch would start on padding")
    D, H, P = m.num_directions, m.hidden_size, m.proj_size or m.hidden_size
    cell = kind not in ONE_STATE
    names = []
    for d in range(D):
        sfx = f"_l{layer}" + ("_reverse" if d else "")
        names.append({k: b.const(m._parameters[v + sfx], f"{prefix}{v}{sfx}", exact=True)
                      for k, v in KEYS[kind].items() if v + sfx in m._parameters})
        if kind in ("mingru", "minlstm"):  # log mode's constants
            names[-1].update(zero=b.const(np.zeros((), m.dtype), "zero_scalar"),
                             half=b.const(np.full((), 0.5, m.dtype), "half_scalar"))
    G = _gates(kind)
    split = b.const(np.array([H] * G, np.int64), f"gate_split{G}")
    zeros = {}  # without given states, one (N, size) zero value serves every direction
    wanted = ((P, h0, "h"), (H, c0, "c")) if cell else ((P, h0, "h"),)
    for size, given, state in wanted:
        if given is None:
            batch = b.batch(x, 1)
            shape = b.op("Concat", [batch, b.const(np.array([size], np.int64))], axis=0)
            zeros[state] = b.op("ConstantOfShape", [shape], base=f"{state}0_zero", value=_zero(m.dtype))
    ins = []
    for d in range(D):
        for _, given, state in wanted:
            ins.append(zeros[state] if given is None else
                       b.op("Gather", [given, b.const(np.array(d, np.int64))], base=f"{state}0_l{layer}_d{d}", axis=0))
    ins += [x] * D
    S = len(wanted)
    body = _body(kind, names, D, H, P, b.elem, split)
    outs = b.ops("Scan", ins, (S + 1) * D, base=f"{prefix}{kind}{layer}", body=body, num_scan_inputs=D,
                 node_name=node_name, scan_input_directions=[0, 1][:D], scan_output_directions=[0, 1][:D])
    ys = outs[S * D:]
    y = b.op("Concat", ys, base="layer_output", axis=2) if D == 2 else ys[0]
    axis0 = b.const(np.array([0], np.int64))
    finals = []
    for k in range(S):
        parts = [b.op("Unsqueeze", [outs[S * d + k], axis0]) for d in range(D)]
        finals.append(b.op("Concat", parts, base=f"{'hc'[k]}_n_layer", axis=0) if D == 2 else parts[0])
    return y, finals[0], finals[1] if cell else None


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


def scan_layer(node: Any, consts: dict[str, Array]) -> "ScanLayer":
    """The :class:`ScanLayer` a Scan node stands for; ValueError when it is not one of the
    bodies nprnn writes."""
    def refuse(why: str) -> ValueError:
        return ValueError(f"ONNX operator Scan (node {node.name!r}) is not supported by nprnn's import unless it is "
                          f"a step nprnn writes (LSTM with projection, LayerNormLSTM, LayerNormGRU): {why}")

    a = _attrs(node)
    body, D = a.get("body"), int(a.get("num_scan_inputs", 0))
    if body is None or not hasattr(body, "node"):
        raise refuse("its body attribute is not a graph")
    if D in (1, 2) and sum(n.op_type == "Gemm" for n in body.node) == D:  # one product a direction: minGRU, minLSTM
        return _min_layer(node, body, D, consts, a, refuse)
    norms = sum(n.op_type == "LayerNormalization" for n in body.node)
    kind = "lstmp" if not norms else "ln_gru" if norms == 2 * D else "ln_lstm"
    S = 1 if kind == "ln_gru" else 2
    if D not in (1, 2) or len(node.input) != (S + 1) * D or len(node.output) != (S + 1) * D:
        raise refuse(f"{len(node.input)} inputs, {len(node.output)} outputs, num_scan_inputs={D}")
    if list(a.get("scan_input_directions", [0] * D)) != [0, 1][:D] or \
            list(a.get("scan_output_directions", [0] * D)) != [0, 1][:D] or any(
            list(a.get(k, [])) not in ([], [0] * D) for k in ("scan_input_axes", "scan_output_axes")):
        raise refuse("its scan directions or axes differ")
    gemms = [n for n in body.node if n.op_type == "Gemm"]
    lns = [n for n in body.node if n.op_type == "LayerNormalization"]
    splits = [n for n in body.node if n.op_type == "Split"]
    per = len(gemms) // D
    if len(gemms) % D or per not in (2, 3) or (kind != "ln_lstm" and per != 3 - (kind == "ln_gru")) or \
            not splits or any(len(n.input) != 2 for n in splits) or any(not 2 <= len(n.input) <= 3 for n in gemms) or \
            any(len(n.input) != 3 for n in lns) or len(set(node.input[S * D:])) != 1 or \
            len(body.input) != (S + 1) * D or not all(node.input):
        raise refuse("its body has another shape")
    names = []
    for d in range(D):
        g = gemms[per * d : per * d + per]
        w = {"w_ih": g[0].input[1], "w_hh": g[1].input[1]}
        if per == 3:
            w["w_hr"] = g[2].input[1]
        if kind == "lstmp" and len(g[0].input) > 2:
            w.update(b_ih=g[0].input[2], b_hh=g[1].input[2] if len(g[1].input) > 2 else "")
        if kind != "lstmp":
            k = len(lns) // D
            for role, n in zip(("ih", "hh", "c")[:k], lns[k * d : k * d + k]):
                w.update({f"g_{role}": n.input[1], f"s_{role}": n.input[2]})
        names.append(w)
    missing = [v for w in names for v in w.values() if v and v not in consts]
    split = consts.get(splits[0].input[1])
    if missing or split is None:
        raise refuse(f"its weights {missing or [splits[0].input[1]]} are not constants")
    if any(consts[w[k]].ndim != 2 for w in names for k in ("w_ih", "w_hh", "w_hr") if k in w):
        raise refuse("its weights are not matrices")
    H = consts[names[0]["w_hh"]].shape[0] // (3 if kind == "ln_gru" else 4)
    P = consts[names[0]["w_hr"]].shape[0] if "w_hr" in names[0] else H
    elem = body.input[0].type.tensor_type.elem_type
    want = _body(kind, names, D, H, P, elem, splits[0].input[1])
    if _canonical(want) != _canonical(body) or \
            np.asarray(split).reshape(-1).tolist() != [H] * (3 if kind == "ln_gru" else 4):
        raise refuse(f"its body differs from the {kind} step")
    return ScanLayer(node, kind, names, consts, D, H, P)


def _min_layer(node: Any, body: Any, D: int, consts: dict[str, Array], a: dict[str, Any], refuse: Any
               ) -> "ScanLayer":
    """A Scan whose body is minGRU's or minLSTM's step (see :func:`scan_layer`)."""
    ops = [n.op_type for n in body.node]
    kind = ("minlstm" if "Div" in ops else "mingru") + ("" if "Where" in ops else "_linear")
    if len(node.input) != 2 * D or len(node.output) != 2 * D or len(body.input) != 2 * D or not all(node.input) or \
            list(a.get("scan_input_directions", [0] * D)) != [0, 1][:D] or \
            list(a.get("scan_output_directions", [0] * D)) != [0, 1][:D] or len(set(node.input[D:])) != 1 or any(
            list(a.get(k, [])) not in ([], [0] * D) for k in ("scan_input_axes", "scan_output_axes")):
        raise refuse(f"{len(node.input)} inputs, {len(node.output)} outputs, or its scan directions or axes differ")
    gemms = [n for n in body.node if n.op_type == "Gemm"]
    splits = [n for n in body.node if n.op_type == "Split"]
    if len(splits) != D or any(len(n.input) != 2 for n in splits) or any(not 2 <= len(n.input) <= 3 for n in gemms):
        raise refuse("its body has another shape")
    names = []
    for d in range(D):
        w = {"w_ih": gemms[d].input[1]}
        if len(gemms[d].input) > 2:
            w["b_ih"] = gemms[d].input[2]
        if not kind.endswith("_linear"):
            ge = [n for n in body.node if n.op_type == "GreaterOrEqual"][d]
            add = [n for n in body.node if n.op_type == "Add" and n.input[0] == ge.input[0]][0]
            w.update(zero=ge.input[1], half=add.input[1])
        names.append(w)
    missing = [v for w in names for v in w.values() if v not in consts]
    split = consts.get(splits[0].input[1])
    if missing or split is None:
        raise refuse(f"its weights {missing or [splits[0].input[1]]} are not constants")
    if consts[names[0]["w_ih"]].ndim != 2:
        raise refuse("its weights are not matrices")
    G = _gates(kind)
    H = consts[names[0]["w_ih"]].shape[0] // G
    want = _body(kind, names, D, H, H, body.input[0].type.tensor_type.elem_type, splits[0].input[1])
    wrong_constants = not kind.endswith("_linear") and any(
        np.asarray(consts[w["zero"]]).tolist() != 0 or np.asarray(consts[w["half"]]).tolist() != 0.5 for w in names)
    if _canonical(want) != _canonical(body) or np.asarray(split).reshape(-1).tolist() != [H] * G or wrong_constants:
        raise refuse(f"its body differs from the {kind} step")
    return ScanLayer(node, kind, [{k: v for k, v in w.items() if k in _MIN} for w in names], consts, D, H, H)


class ScanLayer:
    """A Scan computing one layer, seen as a recurrent node (the interface of
    :class:`~nprnn.onnx.graph.RecurrentNode`): its initial states are the Scan's first
    inputs, per direction (N, P) and, for the LSTMs, (N, H); its outputs are the final
    states, then each direction's (T, N, P) outputs."""

    layout, lens = 0, ""

    def __init__(self, node: Any, kind: str, names: list[dict[str, str]], consts: dict[str, Array], D: int, H: int,
                 P: int) -> None:
        self.name = node.name
        W_ih = consts[names[0]["w_ih"]]
        self.kind = "GRU" if kind in ONE_STATE else "LSTM"
        kw: dict[str, Any] = {"proj_size": P} if P != H else {}
        if kind == "lstmp" or kind.startswith("min"):
            kw["bias"] = "b_ih" in names[0]
        if kind.startswith("min"):
            kw["mode"] = "linear" if kind.endswith("_linear") else "log"
        self.layer = LAYERS[kind](W_ih.shape[1], H, bidirectional=D == 2, dtype=W_ih.dtype, **kw)
        sd = {}
        for d, w in enumerate(names):
            sfx = "_l0" + ("_reverse" if d else "")
            for key, value in w.items():
                sd[KEYS[kind][key] + sfx] = consts[value] if value else np.zeros(4 * H, W_ih.dtype)
        self.layer.load_state_dict(sd)
        self.layer.eval()
        S = 1 if kind in ONE_STATE else 2
        self.x = node.input[S * D]
        self.h0s, self.c0s = list(node.input[0:S * D:S]), list(node.input[1:S * D:S]) if S == 2 else []
        self.h_ns, self.c_ns = list(node.output[0:S * D:S]), list(node.output[1:S * D:S]) if S == 2 else []
        self.ys = list(node.output[S * D:])
        self.inputs = [self.x] + self.h0s + self.c0s
        self.outputs = self.h_ns + self.c_ns + self.ys

    def initial(self, values: dict[str, Array]) -> tuple[Array, Optional[Array]]:
        return (np.stack([values[n] for n in self.h0s]),
                np.stack([values[n] for n in self.c0s]) if self.c0s else None)

    def emit(self, out: Optional[Array], h: Array, c: Optional[Array]) -> dict[str, Array]:
        res = {}
        if out is not None:
            for y, part in zip(self.ys, np.split(out, len(self.ys), axis=-1)):
                res[y] = np.ascontiguousarray(part)
        for d in range(len(self.ys)):
            res[self.h_ns[d]] = h[d]
            if self.c_ns and c is not None:
                res[self.c_ns[d]] = c[d]
        return res

    def probe_outputs(self, T: int, N: int, rng: np.random.Generator) -> dict[str, Array]:
        width = self.layer.proj_size or self.layer.hidden_size
        return {y: rng.standard_normal((T, N, width)).astype(self.layer.dtype) for y in self.ys}

    def layer_output(self, raw: dict[str, Array]) -> Array:
        return np.concatenate([raw[y] for y in self.ys], axis=-1)

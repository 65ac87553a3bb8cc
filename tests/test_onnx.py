"""ONNX export checked by onnxruntime, import checked by ONNX's own backend test cases and by
onnxruntime on the operator options PyTorch lacks."""
import re
import warnings

import numpy as np
import pytest

import nprnn

onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")
from onnx import TensorProto, helper, numpy_helper  # noqa: E402

from nprnn.onnx import ONNXRecurrent, export, import_onnx, module_from_node, run_node  # noqa: E402

F32 = dict(rtol=1e-4, atol=1e-5)  # onnxruntime's float32 kernels (other summation order)


def session(model):
    return ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])


EXPORTS = [
    (nprnn.RNN, {}), (nprnn.RNN, {"nonlinearity": "relu", "num_layers": 2}), (nprnn.RNN, {"bidirectional": True,
                                                                                          "bias": False}),
    (nprnn.GRU, {}), (nprnn.GRU, {"num_layers": 3, "bidirectional": True}), (nprnn.GRU, {"batch_first": True,
                                                                                         "bias": False}),
    (nprnn.LSTM, {}), (nprnn.LSTM, {"num_layers": 2, "bidirectional": True, "batch_first": True}), (nprnn.LSTM,
                                                                                                    {"bias": False}),
]


@pytest.mark.parametrize("cls,kw", EXPORTS, ids=[f"{c.__name__}-{i}" for i, (c, _) in enumerate(EXPORTS)])
@pytest.mark.parametrize("with_state,lengths,optional", [(True, False, True), (False, False, True), (True, True, True),
                                                         (True, False, False)])
def test_export_matches_onnxruntime(cls, kw, with_state, lengths, optional, tmp_path):
    m = cls(3, 5, seed=0, **kw).eval()
    path = tmp_path / "m.onnx"
    export(m, path, with_state=with_state, lengths=lengths, optional_state=optional)
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    rng = np.random.default_rng(1)
    for N, L in ((4, 6), (1, 3), (7, 2)):  # dynamic batch and sequence length
        x = rng.standard_normal((N, L, 3) if m.batch_first else (L, N, 3)).astype(np.float32)
        rows = m.num_layers * m.num_directions
        feeds, hx = {"input": x}, None
        if with_state:
            h0 = rng.standard_normal((rows, N, 5)).astype(np.float32)
            feeds["h0"], hx = h0, h0
            if cls is nprnn.LSTM:
                c0 = rng.standard_normal((rows, N, 5)).astype(np.float32)
                feeds["c0"], hx = c0, (h0, c0)
        lens = None
        if lengths:
            lens = rng.integers(1, L + 1, size=N)
            lens[0] = L
            feeds["lengths"] = lens.astype(np.int64)
        got = session_run(sess, feeds)
        out, st = m(x, hx, lengths=lens)
        want = [out] + (list(st) if isinstance(st, tuple) else [st])
        assert len(got) == len(want)
        for g, w in zip(got, want):
            np.testing.assert_allclose(g, w, **F32)


def session_run(sess, feeds):
    return sess.run(None, feeds)


def test_export_refusals(tmp_path):
    with pytest.raises(ValueError, match="proj_size does not take lengths=True: ONNX's Scan has no sequence lengths"):
        export(nprnn.LSTM(3, 5, proj_size=2), tmp_path / "p.onnx", lengths=True)
    with pytest.raises(TypeError, match="ONNX export supports nprnn.RNN, nprnn.LSTM, nprnn.GRU, nprnn.LayerNormLSTM, "
                       "nprnn.LayerNormGRU, nprnn.MinGRU, nprnn.MinLSTM and nprnn.Sequential, got LSTMCell"):
        export(nprnn.LSTMCell(3, 5), tmp_path / "c.onnx")
    assert not list(tmp_path.iterdir())


@pytest.mark.parametrize("cls,kw", [(nprnn.GRU, {}), (nprnn.LSTM, {"bidirectional": True}), (nprnn.RNN,
                                                                                             {"nonlinearity": "relu"}),
                                    (nprnn.LSTM, {"batch_first": True})])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_export_import_round_trip(cls, kw, dtype, tmp_path):
    m = cls(3, 4, seed=0, dtype=dtype, **kw).eval()
    export(m, tmp_path / "m.onnx")
    back = import_onnx(str(tmp_path / "m.onnx"))
    assert type(back) is cls and back.dtype == dtype
    for k, v in m.state_dict().items():
        np.testing.assert_array_equal(back.state_dict()[k], v, err_msg=k)


def _conformance_cases():
    from onnx.backend.test.case.node import collect_testcases

    with warnings.catch_warnings():  # the other operators' generators warn about their own casts
        warnings.simplefilter("ignore")
        return [c for c in collect_testcases(None) if re.search(r"rnn|gru|lstm", c.name)]


CASES = _conformance_cases()


def test_conformance_cases_found():
    assert len(CASES) >= 18


def _run_case(case):
    node = case.model.graph.node[0]
    names = list(node.input) + [""] * (8 - len(node.input))
    inputs, outputs = case.data_sets[0]
    feed = dict(zip([n for n in node.input], inputs))
    get = lambda i: feed.get(names[i]) if names[i] else None  # noqa: E731
    m = module_from_node(node, get(1), get(2), get(3), get(7))
    got = run_node(m, node, get(0), get(4), get(5), get(6))
    return m, [g for g, name in zip(got, node.output) if name], outputs


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_onnx_backend_conformance(case):
    """ONNX's own test cases for RNN, GRU and LSTM (onnx/backend/test/case/node)."""
    _, got, want = _run_case(case)
    assert len(got) == len(want)
    for g, w in zip(got, want):
        assert g.shape == w.shape
        np.testing.assert_allclose(g, w, rtol=case.rtol, atol=case.atol)


def test_peepholes_matter():
    case = next(c for c in CASES if c.name == "test_lstm_with_peepholes")
    m, got, want = _run_case(case)
    assert isinstance(m, ONNXRecurrent) and m.mode == "lstm_ext"
    with nprnn.writable(m):
        for k in m._parameters:
            if "peephole" in k:
                m._parameters[k][...] = 0
    node = case.model.graph.node[0]
    inputs = case.data_sets[0][0]
    without = run_node(m, node, inputs[0], inputs[4], inputs[5], inputs[6])[1]
    assert not np.allclose(without, want[0], rtol=1e-3, atol=1e-5)


def _node_model(op, attrs, W, R, B, P=None, lengths=False):
    D, GH, In = W.shape
    H = R.shape[-1]
    inits = [numpy_helper.from_array(W, "W"), numpy_helper.from_array(R, "R"), numpy_helper.from_array(B, "B")]
    ins = ["X", "W", "R", "B", "seq" if lengths else ""]
    graph_inputs = [helper.make_tensor_value_info("X", TensorProto.FLOAT, ["L", "N", In])]
    if lengths:
        graph_inputs.append(helper.make_tensor_value_info("seq", TensorProto.INT32, ["N"]))
    if P is not None:
        ins += ["", "", "P"]
        inits.append(numpy_helper.from_array(P, "P"))
    outs = ["Y", "Y_h"] + (["Y_c"] if op == "LSTM" else [])
    node = helper.make_node(op, ins, outs, hidden_size=H, **attrs)
    graph = helper.make_graph([node], "g", graph_inputs,
                              [helper.make_tensor_value_info(o, TensorProto.FLOAT, None) for o in outs], inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), node


VARIANTS = [
    ("GRU", {"linear_before_reset": 0}, False),
    ("GRU", {"linear_before_reset": 0, "direction": "reverse"}, False),
    ("GRU", {"linear_before_reset": 0, "direction": "bidirectional"}, False),
    ("GRU", {"linear_before_reset": 1, "direction": "reverse"}, False),
    ("LSTM", {"direction": "reverse"}, False),
    ("LSTM", {}, True),
    ("LSTM", {"direction": "bidirectional"}, True),
    ("LSTM", {"clip": 0.7}, False),
    ("LSTM", {"input_forget": 1}, False),
    ("LSTM", {"input_forget": 1, "clip": 1.5, "direction": "bidirectional"}, True),
    ("RNN", {"direction": "reverse", "activations": ["Relu"]}, False),
]


@pytest.mark.parametrize("op,attrs,peep", VARIANTS, ids=[f"{op}-{i}" for i, (op, _, _) in enumerate(VARIANTS)])
def test_import_variants_match_onnxruntime(op, attrs, peep):
    rng = np.random.default_rng(2)
    D = 2 if attrs.get("direction") == "bidirectional" else 1
    G, H, In, N, L = {"RNN": 1, "GRU": 3, "LSTM": 4}[op], 4, 3, 5, 6
    W = (rng.standard_normal((D, G * H, In)) * 0.6).astype(np.float32)
    R = (rng.standard_normal((D, G * H, H)) * 0.6).astype(np.float32)
    B = (rng.standard_normal((D, 2 * G * H)) * 0.3).astype(np.float32)
    P = (rng.standard_normal((D, 3 * H)) * 0.5).astype(np.float32) if peep else None
    model, node = _node_model(op, attrs, W, R, B, P, lengths=True)
    x = rng.standard_normal((L, N, In)).astype(np.float32)
    seq = np.array([6, 2, 5, 1, 6], np.int32)
    want = session(model).run(None, {"X": x, "seq": seq})
    graph = import_onnx(model)  # the node's outputs in ONNX's layouts, so a graph rather than a layer
    assert isinstance(graph, nprnn.onnx.ONNXGraph) and graph.op_types == [op]
    got = graph(x, seq)
    assert len(got) == len(want)
    for g, w in zip(got, want):
        np.testing.assert_allclose(g, w, **F32)


def test_import_refusals():
    W, R = np.zeros((1, 12, 3), np.float32), np.zeros((1, 12, 4), np.float32)
    for attrs, msg in (({"activations": ["HardSigmoid", "Tanh", "Tanh"]}, "activations"), ({"activation_alpha": [0.5]},
                                                                                           "activation_alpha")):
        node = helper.make_node("LSTM", ["X", "W", "R"], ["Y"], hidden_size=3, **attrs)
        with pytest.raises(ValueError, match=msg):
            module_from_node(node, np.zeros((1, 12, 3), np.float32), np.zeros((1, 12, 3), np.float32))
    node = helper.make_node("GRU", ["X", "W", "R"], ["Y"], hidden_size=4, clip=1.0)
    with pytest.raises(ValueError, match="GRU: clip is supported for LSTM only"):
        module_from_node(node, W, R)
    node = helper.make_node("LSTM", ["X", "W", "R"], ["Y"], hidden_size=5)
    with pytest.raises(ValueError, match=re.escape("LSTM: W (1, 12, 3) and R (1, 12, 4) do not fit hidden_size=5")):
        module_from_node(node, W, R)


def test_variant_backward_is_refused():
    m = ONNXRecurrent("GRU", 3, 4, linear_before_reset=0).train()
    out, _ = m(np.zeros((2, 1, 3), np.float32))
    with pytest.raises(NotImplementedError, match="backward is not implemented for ONNX-only variants"):
        m.backward(out)


def _lstm_graph(attrs=None, B=None, P=None, domain=""):
    W, R = np.zeros((1, 12, 2), np.float32), np.zeros((1, 12, 3), np.float32)
    inits = [numpy_helper.from_array(W, "W"), numpy_helper.from_array(R, "R")]
    ins = ["X", "W", "R"]
    if B is not None:
        inits.append(numpy_helper.from_array(B, "B"))
        ins.append("B")
    if P is not None:
        ins += [""] * (7 - len(ins)) + ["P"]
        inits.append(numpy_helper.from_array(P, "P"))
    node = helper.make_node("LSTM", ins, ["Y"], hidden_size=3, domain=domain, **(attrs or {}))
    graph = helper.make_graph([node], "g", [helper.make_tensor_value_info("X", TensorProto.FLOAT, ["T", "N", 2])],
                              [helper.make_tensor_value_info("Y", TensorProto.FLOAT, None)], inits)
    opsets = [helper.make_opsetid("", 17)] + ([helper.make_opsetid(domain, 1)] if domain else [])
    return helper.make_model(graph, opset_imports=opsets)


@pytest.mark.parametrize("model,msg", [
    (_lstm_graph({"sideways": 1}), r"attribute\(s\) \['sideways'\] are not attributes of the ONNX LSTM operator"),
    (_lstm_graph({"direction": "sideways"}),
     "direction must be 'forward', 'reverse' or 'bidirectional', got 'sideways'"),
    (_lstm_graph({"layout": 2}), "layout must be 0 or 1, got 2"),
    (_lstm_graph({"input_forget": 3}), "input_forget must be 0 or 1, got 3"),
    (_lstm_graph({"clip": -1.0}), "clip must be a positive float, got -1.0"),
    (_lstm_graph({"activations": ["Sigmoid", "Tanh"]}), "activations must name 3 function"),
    (_lstm_graph(B=np.zeros(24, np.float32)),
     r"B must have shape \(1, 24\) \(\[W_b, R_b\] per direction\), got \(24,\)"),
    (_lstm_graph(P=np.zeros((1, 4), np.float32)), r"P must have shape \(1, 9\)"),
    (_lstm_graph(domain="com.example"), "in domain 'com.example' is not supported"),
], ids=["attribute", "direction", "layout", "input_forget", "clip", "activations", "B-1d", "P-shape", "domain"])
def test_import_validates_against_the_operator_schema(model, msg):
    """Every attribute is checked against the operator (ONNX's checker lets several of these through)."""
    with pytest.raises(ValueError, match=msg):
        import_onnx(model)


def test_generic_nodes_are_checked_and_their_failures_named():
    node = helper.make_node("Transpose", ["X"], ["Y"], perm=[1, 0], name="t1", foo=1)
    graph = helper.make_graph([node], "g", [helper.make_tensor_value_info("X", TensorProto.FLOAT, ["a", "b", "c"])],
                              [helper.make_tensor_value_info("Y", TensorProto.FLOAT, None)])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    with pytest.raises(ValueError, match=r"node 't1' \(Transpose\): attribute\(s\) \['foo'\] are not supported"):
        import_onnx(model)
    attrs = model.graph.node[0].attribute  # the graph holds its own copy of the node
    del attrs[[a.name for a in attrs].index("foo")]
    g = import_onnx(model)
    with pytest.raises(ValueError,
                       match=r"ONNX node 't1' \(Transpose\) cannot run on inputs of shapes \[\(2, 3, 4\)\]"):
        g(np.zeros((2, 3, 4), np.float32))


def test_import_refuses_unknown_versions_and_undefined_values():
    model = _lstm_graph()
    model.ir_version = 0
    with pytest.raises(ValueError, match="ONNX IR version 0 is not one nprnn reads"):
        import_onnx(model)
    model = _lstm_graph()
    model.opset_import[0].version = 99
    with pytest.raises(ValueError, match="ONNX opset 99 is not one nprnn reads"):
        import_onnx(model)
    model = _lstm_graph()
    model.graph.node[0].input[0] = "nowhere"
    with pytest.raises(ValueError, match="reads 'nowhere', which no input, initializer or earlier node provides"):
        import_onnx(model)
    model = _lstm_graph()
    model.graph.output[0].name = "missing"
    with pytest.raises(ValueError, match="graph output 'missing' is computed by no node"):
        import_onnx(model)

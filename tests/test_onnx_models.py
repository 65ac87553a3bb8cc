"""Whole models through ONNX, both ways: torch's two exporters into nprnn (checked against
torch and onnxruntime), nprnn's export into onnxruntime and back into nprnn."""
import itertools
import warnings

import numpy as np
import pytest

import nprnn

onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")
from onnx import TensorProto, helper, numpy_helper  # noqa: E402

from nprnn.onnx import ONNXGraph, export, import_onnx, to_onnx  # noqa: E402

TOL = dict(rtol=0, atol=1e-5)  # the bar: within 1e-5 of torch and of onnxruntime
SHAPES = ((5, 7), (1, 2), (3, 4))  # (batch, seq_len): dynamic axes at sizes other than the export's


def session(path_or_model):
    src = path_or_model if isinstance(path_or_model, str) else path_or_model.SerializeToString()
    opts = ort.SessionOptions()
    opts.log_severity_level = 3  # an optional state's initializer-as-input is by design: no warning
    return ort.InferenceSession(src, opts, providers=["CPUExecutionProvider"])


def flat(result):
    """nprnn's (output, h_n) / (output, (h_n, c_n)) / array as a flat list."""
    if isinstance(result, np.ndarray):
        return [result]
    out = []
    for r in result:
        out += list(r) if isinstance(r, tuple) else [r]
    return out


# ------------------------------------------------------------------------------ torch -> nprnn
def _torch_model(kind, layers, bidirectional, batch_first, head):
    import torch

    class Model(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.rnn = getattr(torch.nn, kind)(4, 5, num_layers=layers, bidirectional=bidirectional,
                                               batch_first=batch_first)
            self.head = torch.nn.Linear(5 * (2 if bidirectional else 1), 3) if head else None

        def forward(self, x):
            out, state = self.rnn(x)
            if self.head is not None:
                return self.head(out[:, -1] if batch_first else out[-1])
            return (out, *state) if isinstance(state, tuple) else (out, state)

    torch.manual_seed(layers * 8 + bidirectional * 4 + batch_first * 2 + head)
    return Model().eval()


def _torch_export(model, path, dynamo, batch_first):
    import torch

    x = torch.randn(2, 3, 4)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        if dynamo:
            from torch.export import Dim

            torch.onnx.export(model, (x,), path, dynamo=True, verbose=False,
                              dynamic_shapes=({0: Dim("d0", min=1), 1: Dim("d1", min=1)},))
        else:
            torch.onnx.export(model, (x,), path, dynamo=False, input_names=["x"],
                              dynamic_axes={"x": {0: "d0", 1: "d1"}})


def _check_torch_case(kind, layers, bi, bf, head, dynamo, tmp_path):
    import torch

    model = _torch_model(kind, layers, bi, bf, head)
    path = str(tmp_path / "m.onnx")
    _torch_export(model, path, dynamo, bf)
    imported = import_onnx(path)
    sess = session(path)
    # what nprnn made of it: the bare layer itself, or a graph whose recurrent part is one folded layer.
    # torch 2.13's dynamo exporter bakes the traced sequence length into some Reshapes (a time-major
    # GRU's output reads Reshape(Y, [2, -1, 5])): such a graph only runs at that length, in onnxruntime
    # too, so it stays a graph and is checked at that length.
    fixed_length = dynamo and not isinstance(imported, nprnn.RNNBase)
    if head or fixed_length:
        assert isinstance(imported, ONNXGraph)
        layers_in = [m for _, m in imported.named_modules() if isinstance(m, nprnn.RNNBase)]
        assert len(layers_in) == 1 and layers_in[0].num_layers == layers
        rnn = layers_in[0]
        assert imported.rnn is rnn  # named after the torch module, for either exporter
    else:
        rnn = imported
        assert type(rnn).__name__ == kind and rnn.batch_first == bf
    assert rnn.num_layers == layers and rnn.bidirectional == bi
    for key, value in model.rnn.state_dict().items():
        np.testing.assert_array_equal(rnn.state_dict()[key], value.numpy(), err_msg=key)
    if head:  # torch's names survive: rnn.* and head.* (dynamo's MatMul + Add is the Linear head)
        assert set(imported.state_dict()) == set(model.state_dict())
        for key, value in model.state_dict().items():
            np.testing.assert_array_equal(imported.state_dict()[key], value.numpy(), err_msg=key)
    declared = sess.get_inputs()[0].shape  # the dynamo exporter may also declare the traced length
    rng = np.random.default_rng(0)
    for N, L in SHAPES:
        L = (3 if bf else 2) if fixed_length else L  # the traced input is (2, 3, 4)
        dims = [N, L, 4] if bf else [L, N, 4]
        x = rng.standard_normal([d if isinstance(d, int) else s for d, s in zip(declared, dims)]).astype(np.float32)
        with torch.no_grad():
            want = model(torch.from_numpy(x))
        want = [want.numpy()] if isinstance(want, torch.Tensor) else [w.numpy() for w in want]
        got = flat(imported(x))[: len(want)]
        ref = sess.run(None, {sess.get_inputs()[0].name: x})
        assert len(got) == len(want) == len(ref)
        for g, w, r in zip(got, want, ref):
            np.testing.assert_allclose(g, w, **TOL)
            np.testing.assert_allclose(g, r, **TOL)


TORCHSCRIPT = list(itertools.product(["RNN", "GRU", "LSTM"], [1, 2, 3], [False, True], [False, True], [False, True]))


@pytest.mark.torch
@pytest.mark.parametrize("kind,layers,bi,bf,head", TORCHSCRIPT,
                         ids=[f"{k}-L{n}-{'bi' if b else 'uni'}-{'bf' if f else 'tm'}-{'head' if h else 'bare'}"
                              for k, n, b, f, h in TORCHSCRIPT])
def test_torchscript_export_imports(kind, layers, bi, bf, head, tmp_path):
    _check_torch_case(kind, layers, bi, bf, head, False, tmp_path)


DYNAMO = [("GRU", 1, False, False, False), ("GRU", 2, True, True, True), ("GRU", 3, False, True, False),
          ("LSTM", 1, False, True, True), ("LSTM", 2, True, False, False), ("LSTM", 3, True, True, True),
          ("LSTM", 2, False, False, True)]


@pytest.mark.torch
@pytest.mark.parametrize("kind,layers,bi,bf,head", DYNAMO,
                         ids=[f"{k}-L{n}-{'bi' if b else 'uni'}-{'bf' if f else 'tm'}-{'head' if h else 'bare'}"
                              for k, n, b, f, h in DYNAMO])
def test_dynamo_export_imports(kind, layers, bi, bf, head, tmp_path):
    pytest.importorskip("onnxscript")  # torch's dynamo exporter needs it; CI installs it
    _check_torch_case(kind, layers, bi, bf, head, True, tmp_path)


@pytest.mark.torch
def test_dynamo_unrolled_rnn_imports_as_its_graph(tmp_path):
    """torch 2.13's dynamo exporter writes nn.RNN unrolled (MatMul/Add/Tanh at the traced
    length): it imports as that graph, fixed length and all."""
    pytest.importorskip("onnxscript")
    import torch

    model = _torch_model("RNN", 2, True, False, False)
    path = str(tmp_path / "m.onnx")
    _torch_export(model, path, True, False)
    graph = import_onnx(path)
    assert isinstance(graph, ONNXGraph) and {"MatMul", "Tanh"} <= set(graph.op_types)
    assert not any(isinstance(m, nprnn.RNNBase) for _, m in graph.named_modules())
    x = np.random.default_rng(0).standard_normal((2, 6, 4)).astype(np.float32)  # the traced length, another batch
    with torch.no_grad():
        want = [w.numpy() for w in model(torch.from_numpy(x))]
    sess = session(path)
    ref = sess.run(None, {sess.get_inputs()[0].name: x})
    for g, w, r in zip(graph(x), want, ref):
        np.testing.assert_allclose(g, w, **TOL)
        np.testing.assert_allclose(g, r, **TOL)
    with pytest.raises(ValueError, match=r"input 'x' must have shape \(2, "):
        graph(np.zeros((5, 6, 4), np.float32))


@pytest.mark.torch
def test_torch_embedding_classifier_imports(tmp_path):
    """Embedding (Gather from a table) -> GRU -> last step -> Linear -> LogSoftmax."""
    import torch

    class Model(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.emb = torch.nn.Embedding(11, 4)
            self.rnn = torch.nn.GRU(4, 6, num_layers=2, batch_first=True)
            self.head = torch.nn.Linear(6, 3)

        def forward(self, ids):
            out, _ = self.rnn(self.emb(ids))
            return torch.log_softmax(torch.relu(self.head(out[:, -1])), dim=-1)

    torch.manual_seed(0)
    model = Model().eval()
    path = str(tmp_path / "m.onnx")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(model, (torch.zeros(2, 3, dtype=torch.long),), path, dynamo=False, input_names=["ids"],
                          dynamic_axes={"ids": {0: "n", 1: "t"}})
    graph = import_onnx(path)
    assert set(graph.state_dict()) == set(model.state_dict())
    assert isinstance(graph.emb, nprnn.Embedding) and isinstance(graph.head, nprnn.Linear) and graph.rnn.num_layers == 2
    ids = np.random.default_rng(0).integers(0, 11, (5, 8))
    with torch.no_grad():
        want = model(torch.from_numpy(ids)).numpy()
    np.testing.assert_allclose(graph(ids), want, **TOL)


# ------------------------------------------------------------------------------ nprnn -> onnxruntime -> nprnn
def _check_export(model, tmp_path, feeds_for, *, lengths=False, tol=TOL):
    path = str(tmp_path / "model.onnx")
    export(model, path, lengths=lengths)
    sess = session(path)
    back = import_onnx(path)
    rng = np.random.default_rng(3)
    for N, L in SHAPES:
        args, kwargs = feeds_for(rng, N, L)
        want = flat(model(*args, **kwargs))
        feed = {"input": args[0], **({"lengths": kwargs["lengths"]} if "lengths" in kwargs else {})}
        got = sess.run(None, feed)  # the input alone: the states are optional
        assert len(got) == len(want)
        for g, w in zip(got, want):
            np.testing.assert_allclose(g, w, **tol)
        mine = flat(back(*args, **kwargs))
        for g, w in zip(mine, want):
            np.testing.assert_allclose(g, w, **TOL)
    return back


def test_sequential_lstm_with_head_runs_in_onnxruntime(tmp_path):
    model = nprnn.Sequential(nprnn.LSTM(4, 8, num_layers=2, batch_first=True, seed=0),
                             nprnn.LastStep(batch_first=True), nprnn.Linear(8, 3, seed=1)).eval()
    back = _check_export(model, tmp_path, lambda rng, N, L: ((rng.standard_normal((N, L, 4)).astype(np.float32),), {}))
    assert isinstance(back, ONNXGraph)
    assert isinstance(getattr(back, "0"), nprnn.LSTM) and getattr(back, "0").num_layers == 2
    sd = back.state_dict()
    assert set(sd) == set(model.state_dict())
    for k, v in model.state_dict().items():
        np.testing.assert_array_equal(sd[k], v, err_msg=k)


def test_sequential_embedding_activations_and_lengths(tmp_path):
    model = nprnn.Sequential(nprnn.Embedding(10, 4, seed=0), nprnn.GRU(4, 6, batch_first=True, bidirectional=True,
                                                                       seed=1),
                             nprnn.LastStep(batch_first=True), nprnn.Linear(12, 7, seed=2), nprnn.Tanh(),
                             nprnn.Linear(7, 5, seed=3), nprnn.ReLU(), nprnn.Sigmoid(), nprnn.LogSoftmax(dim=-1)).eval()

    def feeds(rng, N, L):
        lengths = rng.integers(1, L + 1, N)
        return (rng.integers(0, 10, (N, L)),), {"lengths": lengths.astype(np.int64)}

    back = _check_export(model, tmp_path, feeds, lengths=True)
    assert {"Gather", "GatherND"} <= set(back.op_types)
    assert set(back.state_dict()) == set(model.state_dict())


def test_sequential_time_major_softmax(tmp_path):
    model = nprnn.Sequential(nprnn.RNN(3, 5, num_layers=2, nonlinearity="relu", seed=0), nprnn.Linear(5, 4, seed=1),
                             nprnn.Softmax(dim=-1)).eval()
    _check_export(model, tmp_path, lambda rng, N, L: ((rng.standard_normal((L, N, 3)).astype(np.float32),), {}))


@pytest.mark.parametrize("kw", [dict(num_layers=2, bidirectional=True), dict(batch_first=True, bias=False),
                                dict(num_layers=3), dict(dtype=np.float64, bidirectional=True)])
def test_lstm_with_projection_exports_as_scan_and_imports_back(kw, tmp_path):
    m = nprnn.LSTM(3, 6, proj_size=4, seed=0, **kw).eval()
    dt = m.dtype
    back = _check_export(m, tmp_path, lambda rng, N, L: (
        (rng.standard_normal((N, L, 3) if m.batch_first else (L, N, 3)).astype(dt),), {}))
    assert "Scan" in {n.op_type for n in to_onnx(m).graph.node}
    assert type(back) is nprnn.LSTM and back.proj_size == 4 and back.num_layers == m.num_layers
    assert back.bidirectional == m.bidirectional and back.batch_first == m.batch_first and back.dtype == dt
    for k, v in m.state_dict().items():
        np.testing.assert_array_equal(back.state_dict()[k], v, err_msg=k)
    # states can be fed and read
    sess = session(str(tmp_path / "model.onnx"))
    rng = np.random.default_rng(4)
    x = rng.standard_normal((2, 5, 3) if m.batch_first else (5, 2, 3)).astype(dt)
    rows = m.num_layers * m.num_directions
    h0, c0 = rng.standard_normal((rows, 2, 4)).astype(dt), rng.standard_normal((rows, 2, 6)).astype(dt)
    got = sess.run(None, {"input": x, "h0": h0, "c0": c0})
    for g, w in zip(got, flat(m(x, (h0, c0)))):
        np.testing.assert_allclose(g, w, **TOL)
    # without state inputs, each layer's zero states are built in the graph
    export(m, tmp_path / "no_state.onnx", with_state=False)
    got = session(str(tmp_path / "no_state.onnx")).run(None, {"input": x})
    for g, w in zip(got, flat(m(x))):
        np.testing.assert_allclose(g, w, **TOL)


@pytest.mark.parametrize("cls", [nprnn.RNN, nprnn.GRU, nprnn.LSTM])
def test_states_are_optional_inputs(cls, tmp_path):
    m = cls(3, 5, num_layers=2, bidirectional=True, batch_first=True, seed=0).eval()
    back = _check_export(m, tmp_path, lambda rng, N, L: ((rng.standard_normal((N, L, 3)).astype(np.float32),), {}))
    assert type(back) is cls and back.batch_first and back.num_layers == 2 and back.bidirectional
    sess = session(str(tmp_path / "model.onnx"))
    assert [i.name for i in sess.get_inputs()] == ["input"]  # the one required input
    states = {"h0", "c0"} if cls is nprnn.LSTM else {"h0"}
    assert {i.name for i in sess.get_overridable_initializers()} == states  # and the optional ones


def _gru_then(op_type, **attrs):
    W = np.zeros((1, 12, 3), np.float32)
    R = np.zeros((1, 12, 4), np.float32)
    nodes = [helper.make_node("GRU", ["X", "W", "R"], ["Y"], hidden_size=4, linear_before_reset=1),
             helper.make_node(op_type, ["Y", "axis"], ["Z"], **attrs)]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("X", TensorProto.FLOAT, ["T", "N", 3])],
                              [helper.make_tensor_value_info("Z", TensorProto.FLOAT, None)],
                              [numpy_helper.from_array(W, "W"), numpy_helper.from_array(R, "R"),
                               numpy_helper.from_array(np.array(0, np.int64), "axis")])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def test_unsupported_node_is_refused_by_name():
    with pytest.raises(ValueError, match="ONNX operator CumSum .* is not supported by nprnn's import"):
        import_onnx(_gru_then("CumSum"))


def test_foreign_scan_is_refused():
    body = helper.make_graph([helper.make_node("Add", ["s", "x"], ["s2"]), helper.make_node("Identity", ["s2"], ["y"])],
                             "b", [helper.make_tensor_value_info(n, TensorProto.FLOAT, [2]) for n in ("s", "x")],
                             [helper.make_tensor_value_info(n, TensorProto.FLOAT, [2]) for n in ("s2", "y")])
    node = helper.make_node("Scan", ["s0", "X"], ["S", "Y"], body=body, num_scan_inputs=1)
    graph = helper.make_graph([node], "g", [helper.make_tensor_value_info(n, TensorProto.FLOAT, None) for n in ("s0",
                                                                                                                "X")],
                              [helper.make_tensor_value_info("Y", TensorProto.FLOAT, None)])
    with pytest.raises(ValueError, match=r"ONNX operator Scan .* unless it is a step nprnn writes \(LSTM with "
                       r"projection, LayerNormLSTM, LayerNormGRU\)"):
        import_onnx(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]))


@pytest.mark.parametrize("cls", [nprnn.LayerNormLSTM, nprnn.LayerNormGRU])
@pytest.mark.parametrize("damage", ["epsilon", "a product untransposed", "a norm removed"])
def test_a_layer_norm_scan_that_differs_from_nprnns_step_is_refused(cls, damage):
    model = to_onnx(cls(3, 4, seed=0))
    body = next(a.g for n in model.graph.node if n.op_type == "Scan" for a in n.attribute if a.name == "body")
    norm = next(n for n in body.node if n.op_type == "LayerNormalization")
    if damage == "epsilon":
        next(a for a in norm.attribute if a.name == "epsilon").f = 1e-3
    elif damage == "a product untransposed":
        gemm = next(n for n in body.node if n.op_type == "Gemm")
        next(a for a in gemm.attribute if a.name == "transB").i = 0
    else:
        norm.op_type = "Identity"
        del norm.input[1:]
        norm.ClearField("attribute")
    with pytest.raises(ValueError, match="ONNX operator Scan .* is not supported by nprnn's import"):
        import_onnx(model)


def test_graph_inputs_are_checked():
    m = nprnn.Sequential(nprnn.GRU(3, 4, seed=0), nprnn.Linear(4, 2, seed=1)).eval()
    graph = import_onnx(to_onnx(m))
    with pytest.raises(ValueError, match=r"input 'input' must have shape \(seq_len, batch, 3\), got \(2, 3, 5\)"):
        graph(np.zeros((2, 3, 5), np.float32))
    with pytest.raises(TypeError, match="missing input 'input'"):
        graph()
    with pytest.raises(TypeError, match="unexpected input 'x'"):
        graph(x=np.zeros((2, 3, 3), np.float32))
    with pytest.raises(NotImplementedError, match="inference only"):
        graph.backward(np.zeros((2, 3, 2), np.float32))


def test_export_refuses_what_it_cannot_write(tmp_path):
    with pytest.raises(TypeError, match="ONNX export: LayerNorm is not supported"):
        export(nprnn.Sequential(nprnn.GRU(3, 4), nprnn.LayerNorm(4)), tmp_path / "m.onnx")
    with pytest.raises(TypeError, match="a model cannot start with ReLU"):
        export(nprnn.Sequential(nprnn.ReLU(), nprnn.GRU(3, 4)), tmp_path / "m.onnx")
    with pytest.raises(ValueError, match="mix dtypes"):
        export(nprnn.Sequential(nprnn.GRU(3, 4), nprnn.Linear(4, 2, dtype=np.float64)), tmp_path / "m.onnx")
    assert not list(tmp_path.iterdir())


@pytest.mark.parametrize("cls, kw", [(nprnn.LayerNormLSTM, dict(num_layers=2, bidirectional=True)),
                                     (nprnn.LayerNormLSTM, dict(proj_size=4, batch_first=True)),
                                     (nprnn.LayerNormLSTM, dict(dtype=np.float64, num_layers=3)),
                                     (nprnn.LayerNormGRU, dict(num_layers=2, bidirectional=True)),
                                     (nprnn.LayerNormGRU, dict(batch_first=True, dtype=np.float64))])
def test_layer_norm_layers_export_as_scan_and_import_back(cls, kw, tmp_path):
    """A Scan whose body uses LayerNormalization (opset 17): onnxruntime on the input alone
    matches nprnn, and import rebuilds the layer with every weight (gains and shifts moved
    off their initial values, so a swap would show).  onnxruntime's float32 agrees within
    1e-5 plus 1e-5 relative: in the 2-layer bidirectional case one c_n value of -0.633
    differs by 1.2e-5, both engines 6e-6 from the float64 result on either side (a norm
    over 6 values divides by their deviation); outputs and h_n are within 4.3e-6."""
    m = cls(3, 6, seed=0, **kw)
    with nprnn.writable(m):
        for value in m.parameters():
            value += np.random.default_rng(1).uniform(-0.3, 0.3, value.shape)
    m.eval()
    dt = m.dtype
    back = _check_export(m, tmp_path, lambda rng, N, L: (
        (rng.standard_normal((N, L, 3) if m.batch_first else (L, N, 3)).astype(dt),), {}),
        tol=dict(rtol=1e-5, atol=1e-5))
    ops = {n.op_type for n in to_onnx(m).graph.node}
    assert "Scan" in ops and not ops & {"LSTM", "GRU"}
    body = next(a.g for n in to_onnx(m).graph.node if n.op_type == "Scan" for a in n.attribute if a.name == "body")
    assert "LayerNormalization" in {n.op_type for n in body.node}
    assert type(back) is cls and back.num_layers == m.num_layers and back.bidirectional == m.bidirectional
    assert back.batch_first == m.batch_first and back.dtype == dt and back.proj_size == m.proj_size
    for k, v in m.state_dict().items():
        np.testing.assert_array_equal(back.state_dict()[k], v, err_msg=k)
    with pytest.raises(ValueError, match=f"{cls.__name__} does not take lengths=True: ONNX's Scan has no sequence"):
        export(m, tmp_path / "lengths.onnx", lengths=True)

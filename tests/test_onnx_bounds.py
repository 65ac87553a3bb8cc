"""ONNX import reads only what it is given and allocates only what the outputs need:
external data from an explicit folder, constant folding within its budget (bombs run in
a subprocess with an address-space limit), every supported node's arity, attributes and
dims checked at import."""
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest

onnx = pytest.importorskip("onnx")
from onnx import TensorProto as T  # noqa: E402
from onnx import helper as h  # noqa: E402

import nprnn.onnx  # noqa: E402
from nprnn.onnx import import_onnx  # noqa: E402


def _model(nodes, inits=(), inputs=(("x", [2]),), outputs=("y",), opset=17):
    g = h.make_graph(nodes, "g", [h.make_tensor_value_info(n, T.FLOAT, s) for n, s in inputs],
                     [h.make_tensor_value_info(n, T.FLOAT, None) for n in outputs], initializer=list(inits))
    return h.make_model(g, opset_imports=[h.make_opsetid("", opset)])


def external_tensor(location):
    """A tensor ``w`` of 2 floats whose data is in the file ``location`` (test_fuzz uses it too)."""
    w = h.make_tensor("w", T.FLOAT, [0], vals=[])
    w.dims[0] = 2
    w.data_location = T.EXTERNAL
    for key, value in (("location", location), ("offset", "0"), ("length", "8")):
        entry = w.external_data.add()
        entry.key, entry.value = key, value
    return w


def _external_model(tmp_path, location):
    """y = x + w, with w kept in the file ``location`` (relative to the model)."""
    return _model([h.make_node("Add", ["x", "w"], ["y"])], [external_tensor(location)])


# ---------------------------------------------------------------- external data
def test_an_in_memory_model_never_reads_external_data_from_the_current_directory(tmp_path, monkeypatch):
    here = tmp_path / "cwd"
    here.mkdir()
    (here / "w.bin").write_bytes(np.array([5, 6], np.float32).tobytes())  # what a hostile model would read
    monkeypatch.chdir(here)
    model = _external_model(tmp_path, "w.bin")
    with pytest.raises(ValueError, match=r"in external files; an in-memory model needs base_dir="):
        import_onnx(model)
    with pytest.raises(ValueError, match="base_dir="):
        import_onnx(model, base_dir="")
    folder = tmp_path / "weights"
    folder.mkdir()
    (folder / "w.bin").write_bytes(np.array([1, 2], np.float32).tobytes())
    before = model.SerializeToString()
    graph = import_onnx(model, base_dir=folder)
    np.testing.assert_array_equal(graph(np.zeros(2, np.float32)), [1, 2])  # from base_dir, not the cwd
    assert model.SerializeToString() == before  # the caller's proto is unchanged


@pytest.mark.parametrize("location", ["../w.bin", "/etc/passwd", "sub/../../w.bin"])
def test_external_data_outside_base_dir_is_refused(tmp_path, location):
    (tmp_path / "w.bin").write_bytes(np.zeros(2, np.float32).tobytes())
    base = tmp_path / "models"
    base.mkdir()
    with pytest.raises(ValueError, match="external data cannot be read from"):
        import_onnx(_external_model(tmp_path, location), base_dir=base)


def test_base_dir_with_a_path_or_a_missing_folder_is_refused(tmp_path):
    path = tmp_path / "m.onnx"
    onnx.save(_model([h.make_node("Identity", ["x"], ["y"])]), path)
    with pytest.raises(TypeError, match="base_dir= is for an in-memory ModelProto"):
        import_onnx(path, base_dir=tmp_path)
    with pytest.raises(FileNotFoundError, match="is not a directory"):
        import_onnx(_external_model(tmp_path, "w.bin"), base_dir=tmp_path / "nowhere")


# ---------------------------------------------------------------- folding budget
def _shape(dims):
    return h.make_tensor("s", T.INT64, [len(dims)], dims)


BOMBS = {  # each about 100 bytes, each 1 GiB or more when folded
    "ConstantOfShape": ([h.make_node("ConstantOfShape", ["s"], ["big"])], [_shape([1024, 1024, 384])]),
    "Expand": ([h.make_node("Expand", ["one", "s"], ["big"])],
               [_shape([1024, 1024, 256]), h.make_tensor("one", T.FLOAT, [1], [1.0])]),
    "Concat": ([h.make_node("ConstantOfShape", ["s"], ["c0"])]
               + [h.make_node("Concat", [f"c{k}", f"c{k}"], [f"c{k + 1}"], axis=0) for k in range(12)]
               + [h.make_node("Identity", ["c12"], ["big"])], [_shape([1 << 17])]),
}


def _in_a_bounded_process(code, limit=1 << 30):
    """Run ``code`` in a Python child with a 1 GiB address-space limit and one BLAS thread,
    so a regression fails the test instead of taking the machine down."""
    prelude = textwrap.dedent(f"""
        import resource
        resource.setrlimit(resource.RLIMIT_AS, ({limit}, {limit}))
        resource.setrlimit(resource.RLIMIT_CPU, (60, 60))
    """)
    env = dict(os.environ, OPENBLAS_NUM_THREADS="1", OMP_NUM_THREADS="1")
    done = subprocess.run([sys.executable, "-c", prelude + textwrap.dedent(code)], capture_output=True, text=True,
                          env=env, timeout=120)
    return done.returncode, done.stdout + done.stderr


@pytest.mark.parametrize("kind", sorted(BOMBS))
def test_folding_bombs_stay_within_the_budget(kind, tmp_path):
    nodes, inits = BOMBS[kind]
    dead = _model(nodes + [h.make_node("Identity", ["x"], ["y"])], inits)  # no output needs "big"
    live = _model(nodes + [h.make_node("Add", ["x", "big"], ["y"])], inits)
    assert len(live.SerializeToString()) < 2000
    onnx.save(dead, tmp_path / "dead.onnx")
    onnx.save(live, tmp_path / "live.onnx")
    rc, out = _in_a_bounded_process(f"""
        import numpy as np
        from nprnn.onnx import import_onnx
        graph = import_onnx({str(tmp_path / "dead.onnx")!r})
        print("dead:", graph(np.ones(2, np.float32)).tolist())
        try:
            import_onnx({str(tmp_path / "live.onnx")!r})
        except ValueError as exc:
            print("live:", exc)
        hwm = [line for line in open("/proc/self/status") if line.startswith("VmHWM")]  # (ru_maxrss would
        print("peak MiB:", int(hwm[0].split()[1]) // 1024)  # count the parent's peak from before the exec)
    """)
    assert rc == 0, out
    assert "dead: [1.0, 1.0]" in out
    assert "beyond what nprnn folds for this model (64 MiB in all" in out, out
    peak = int(out.split("peak MiB:")[1].split()[0])
    assert peak < 400, out


def test_folding_within_the_budget_still_folds():
    shape = _shape([2])
    model = _model([h.make_node("ConstantOfShape", ["s"], ["z"], value=h.make_tensor("v", T.FLOAT, [1], [3.0])),
                    h.make_node("Add", ["x", "z"], ["y"])], [shape])
    graph = import_onnx(model)
    assert graph.op_types == ["Add"]  # the ConstantOfShape was folded
    np.testing.assert_array_equal(graph(np.ones(2, np.float32)), [4, 4])


# ---------------------------------------------------------------- every node checked at import
MALFORMED = {
    "Add with one input": ([h.make_node("Add", ["x"], ["y"])], "takes 2 input\\(s\\)"),
    "Add with three inputs": ([h.make_node("Add", ["x", "x", "x"], ["y"])], "takes 2 input\\(s\\)"),
    "Gemm without B": ([h.make_node("Gemm", ["x", ""], ["y"])], "the first 2 required"),
    "Relu with two outputs": ([h.make_node("Relu", ["x"], ["y", "z"])], "has 1 output\\(s\\) at most"),
    "Concat without axis": ([h.make_node("Concat", ["x", "x"], ["y"])], r"needs attribute\(s\) \['axis'\]"),
    "Cast without to": ([h.make_node("Cast", ["x"], ["y"])], r"needs attribute\(s\) \['to'\]"),
    "Cast to string": ([h.make_node("Cast", ["x"], ["y"], to=T.STRING)], "cannot cast to element type 8"),
    "Transpose perm as float": ([h.make_node("Transpose", ["x"], ["y"], perm=[0.5])], "'perm' must be a ints"),
    "Softmax axis as list": ([h.make_node("Softmax", ["x"], ["y"], axis=[1, 2])], "'axis' must be an int"),
    "Constant with two values": ([h.make_node("Constant", [], ["y"], value_float=1.0, value_int=2)],
                                 "needs exactly one value attribute"),
    "LSTM with nine inputs": ([h.make_node("LSTM", ["x"] * 9, ["y"], hidden_size=2)], "takes 3 to 8 input\\(s\\)"),
    "GRU with three outputs": ([h.make_node("GRU", ["x", "x", "x"], ["y", "a", "b"], hidden_size=2)],
                               "has 2 output\\(s\\) at most"),
}


@pytest.mark.parametrize("case", sorted(MALFORMED))
def test_malformed_nodes_are_refused_at_import_by_name(case):
    nodes, message = MALFORMED[case]
    with pytest.raises(ValueError, match=message):
        import_onnx(_model(nodes, outputs=("y",)))


def test_unsqueeze_before_opset_13_needs_its_axes_attribute():
    with pytest.raises(ValueError, match=r"needs attribute\(s\) \['axes'\]"):
        import_onnx(_model([h.make_node("Unsqueeze", ["x"], ["y"])], opset=11))
    graph = import_onnx(_model([h.make_node("Unsqueeze", ["x"], ["y"], axes=[0])], opset=11))
    assert graph(np.ones(2, np.float32)).shape == (1, 2)


def test_negative_dims_are_refused():
    w = h.make_tensor("w", T.FLOAT, [2], [1.0, 2.0])
    w.dims[0] = -2
    with pytest.raises(ValueError, match=r"ONNX tensor 'w' has negative dims \[-2\]"):
        import_onnx(_model([h.make_node("Add", ["x", "w"], ["y"])], [w]))
    with pytest.raises(ValueError, match="has negative dims"):
        import_onnx(_model([h.make_node("Identity", ["x"], ["y"])], inputs=(("x", [-1]),)))
    value = h.make_tensor("v", T.FLOAT, [1], [1.0])
    value.dims[0] = -1
    with pytest.raises(ValueError, match="has negative dims"):
        import_onnx(_model([h.make_node("Constant", [], ["c"], value=value), h.make_node("Add", ["x", "c"], ["y"])]))


def _lstmp_scan():
    """nprnn's own LSTMP export as a model proto, and its Scan node."""
    m = nprnn.LSTM(3, 4, proj_size=2)
    model = nprnn.onnx.to_onnx(m)
    scan = next(n for n in model.graph.node if n.op_type == "Scan")
    return model, scan


def _damaged(change):
    model, scan = _lstmp_scan()
    change(model, scan)
    return model


SCANS = {
    "no body": lambda m, s: s.attribute.remove(next(a for a in s.attribute if a.name == "body")),
    "a Gemm without its weight": lambda m, s: next(
        n for n in next(a for a in s.attribute if a.name == "body").g.node if n.op_type == "Gemm").input.pop(),
    "a Split without sizes": lambda m, s: next(
        n for n in next(a for a in s.attribute if a.name == "body").g.node if n.op_type == "Split").input.pop(),
    "a body without inputs": lambda m, s: next(a for a in s.attribute if a.name == "body").g.ClearField("input"),
    "an input fewer": lambda m, s: s.input.pop(),
    "an empty state name": lambda m, s: s.input.__setitem__(0, ""),
    "a vector projection": lambda m, s: _vector(m, s),
}


def _vector(model, scan):
    body = next(a for a in scan.attribute if a.name == "body").g
    name = [n for n in body.node if n.op_type == "Gemm"][2].input[1]
    init = next(t for t in model.graph.initializer if t.name == name)
    init.CopyFrom(h.make_tensor(name, init.data_type, [8], np.zeros(8).tolist()))


@pytest.mark.parametrize("case", sorted(SCANS))
def test_malformed_scan_nodes_are_refused_by_name(case):
    model = _damaged(SCANS[case])
    with pytest.raises(ValueError, match=r"ONNX operator Scan \(node .*\) is not supported|is not supported|reads"):
        import_onnx(model)


@pytest.mark.parametrize("direction", ["reverse", "forward"])
def test_an_onnx_lstm_given_initial_h_without_initial_c_runs(direction):
    """Found by the ONNX node fuzz: an LSTM node that is no nprnn.LSTM (direction="reverse",
    peepholes, clip) given initial_h alone was called with h alone instead of (h, zeros)."""
    ort = pytest.importorskip("onnxruntime")
    rng = np.random.default_rng(0)
    W, R = (rng.standard_normal((1, 8, 3)) * 0.5).astype(np.float32), (rng.standard_normal((1, 8, 2)) * 0.5).astype(
        np.float32)
    x, h0 = rng.standard_normal((4, 1, 3)).astype(np.float32), rng.standard_normal((1, 1, 2)).astype(np.float32)
    node = h.make_node("LSTM", ["X", "W", "R", "", "", "H0"], ["Y", "Y_h", "Y_c"], hidden_size=2, direction=direction,
                       clip=5.0)
    graph = h.make_graph([node], "g", [h.make_tensor_value_info("X", T.FLOAT, [4, 1, 3]),
                                       h.make_tensor_value_info("H0", T.FLOAT, [1, 1, 2])],
                         [h.make_tensor_value_info(n, T.FLOAT, None) for n in ("Y", "Y_h", "Y_c")],
                         [onnx.numpy_helper.from_array(W, "W"), onnx.numpy_helper.from_array(R, "R")])
    model = h.make_model(graph, opset_imports=[h.make_opsetid("", 17)])
    got = import_onnx(model)(X=x, H0=h0)
    want = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"]).run(
        None, {"X": x, "H0": h0})
    for a, b in zip(got, want):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)

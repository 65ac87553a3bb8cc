"""Our own fuzz suite (hypothesis): the layers, the cells and the packing utilities fed
arbitrary shapes and values, against PyTorch; ONNX recurrent nodes fed arbitrary
attributes and inputs, and damaged ONNX files, against onnxruntime; ``load_state_dict``,
``.pt`` files and checkpoints damaged.  Each case must end in one of two ways: one of our
clean exceptions (ValueError, TypeError or RuntimeError, with our message), or the same
result as the reference -- never a result where the reference refuses, never IndexError,
KeyError, AttributeError or a NumPy broadcast error, never a crash; and a failed load
changes nothing.  Memory does not grow over 10,000 calls.

A bounded profile runs by default (CI); ``NPRNN_FUZZ_EXAMPLES=2000`` runs a longer one.
The run ends with the count of cases by outcome (``COUNTS``, printed by conftest).
"""
import gc
import io
import os
import tracemalloc
import warnings
from collections import Counter

import numpy as np
import pytest

import nprnn

hypothesis = pytest.importorskip("hypothesis")
from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

EXAMPLES = int(os.environ.get("NPRNN_FUZZ_EXAMPLES", "200"))
FUZZ = settings(max_examples=EXAMPLES, deadline=None, suppress_health_check=list(HealthCheck), derandomize=True)
CLEAN = (ValueError, TypeError, RuntimeError)  # (not their subclasses IndexError/KeyError/...: checked below)
RAW = (IndexError, KeyError, AttributeError, ZeroDivisionError, AssertionError, OverflowError)
COUNTS = Counter()  # cases by outcome; a raw error or a silent acceptance fails its test instead


def _outcome(fn):
    """("ok", result) or ("error", exception); a raw error type fails the test at once."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # warnings are no outcome (old files warn, then load)
            return "ok", fn()
    except RAW as exc:
        COUNTS["raw errors"] += 1
        raise AssertionError(f"raw {type(exc).__name__} escaped: {exc}") from exc
    except CLEAN as exc:
        COUNTS["clean errors"] += 1
        return "error", exc


def _agree(got, want, reference="torch"):
    """Our clean refusal is always allowed (we refuse some things the reference lets
    through, such as lengths that do not match the batch); a result must be the
    reference's, and where it refuses we must refuse too (no silent acceptance)."""
    if got[0] == "error":
        return False
    if want[0] != "ok":
        COUNTS["silent acceptances"] += 1
        raise AssertionError(f"nprnn accepted what {reference} refuses: {want[1]!r}")
    COUNTS[f"results compared with {reference}"] += 1
    return True


def _close(a, b):
    a, b = np.asarray(a), np.asarray(b)
    assert a.shape == b.shape
    assert np.array_equal(np.isnan(a), np.isnan(b))
    np.testing.assert_allclose(np.nan_to_num(a), np.nan_to_num(b), rtol=1e-9, atol=1e-10)


def _pair(torch, name, case, **kw):
    """nprnn's module ``name`` (float64, eval) and PyTorch's with the same weights."""
    ours = getattr(nprnn, name)(case["input_size"], case["hidden_size"], dtype=np.float64, seed=case["seed"],
                                **kw).eval()
    theirs = getattr(torch.nn, name)(case["input_size"], case["hidden_size"], **kw).double()
    theirs.load_state_dict({k: torch.from_numpy(v) for k, v in ours.state_dict().items()})
    return ours, theirs


def _states(rng, shape, pair):
    """A random hx of ``shape`` (a pair of them for LSTMs), or None; and PyTorch's copy."""
    import torch

    if shape is None:
        return None, None
    h = rng.standard_normal(shape)
    hx = (h, h.copy()) if pair else h
    return hx, (tuple(torch.from_numpy(a) for a in hx) if pair else torch.from_numpy(h))


def _flat(result):
    out, state = result
    return [out] + (list(state) if isinstance(state, tuple) else [state])


layer_case = st.fixed_dictionaries({
    "kind": st.sampled_from(["RNN", "LSTM", "GRU"]),
    "input_size": st.integers(1, 4),
    "hidden_size": st.integers(1, 4),
    "num_layers": st.integers(1, 2),
    "bidirectional": st.booleans(),
    "batch_first": st.booleans(),
    "x_shape": st.lists(st.integers(0, 4), min_size=0, max_size=4),
    "hx_shape": st.one_of(st.none(), st.lists(st.integers(0, 5), min_size=1, max_size=4)),
    "special": st.sampled_from([None, np.nan, np.inf, -np.inf]),
    "seed": st.integers(0, 2 ** 16),
})


@pytest.mark.torch
@FUZZ
@given(layer_case)
def test_layers_fed_any_shape_match_torch_or_refuse_cleanly(case):
    import torch

    rng = np.random.default_rng(case["seed"])
    ours, theirs = _pair(torch, case["kind"], case, num_layers=case["num_layers"],
                         bidirectional=case["bidirectional"], batch_first=case["batch_first"])
    x = rng.standard_normal(case["x_shape"])
    if case["special"] is not None and x.size:
        x.flat[rng.integers(x.size)] = case["special"]
    hx, t_hx = _states(rng, case["hx_shape"], case["kind"] == "LSTM")
    got = _outcome(lambda: ours(x, hx))

    def run_torch():
        with torch.no_grad():
            out, st_ = theirs(torch.from_numpy(x), t_hx)
        return out.numpy(), (tuple(s.numpy() for s in st_) if isinstance(st_, tuple) else st_.numpy())

    try:
        want = ("ok", run_torch())
    except Exception as exc:  # noqa: BLE001 - whatever PyTorch raises, we must refuse too
        want = ("error", exc)
    if _agree(got, want):
        for a, b in zip(_flat(got[1]), _flat(want[1])):
            _close(a, b)


special_case = st.fixed_dictionaries({
    "kind": st.sampled_from(["RNN", "LSTM", "GRU"]),
    "num_layers": st.integers(1, 2),
    "bidirectional": st.booleans(),
    "proj": st.booleans(),
    "where": st.sampled_from(["input", "h0", "weight_ih_l0", "weight_hh_l0", "bias_ih_l0", "bias_hh_l0",
                              "weight_hh_l0_reverse", "weight_hr_l0", "weight_ih_l1"]),
    "value": st.sampled_from([np.nan, np.inf, -np.inf]),
    "lengths": st.booleans(),
    "seed": st.integers(0, 2 ** 16),
})


@pytest.mark.torch
@FUZZ
@given(special_case)
def test_nan_and_inf_propagate_as_in_torch_forward_and_backward(case):
    """A NaN or an infinity in the input, the initial state or any weight: training
    forward and backward give torch's outputs and gradients, NaN where torch has NaN
    (on the tier this run uses; CI runs the suite once per tier)."""
    import torch

    rng = np.random.default_rng(case["seed"])
    kind, L = case["kind"], case["num_layers"]
    kw = dict(num_layers=L, bidirectional=case["bidirectional"])
    if kind == "LSTM" and case["proj"]:
        kw["proj_size"] = 2
    ours = getattr(nprnn, kind)(3, 4, dtype=np.float64, seed=case["seed"], **kw)
    theirs = getattr(torch.nn, kind)(3, 4, **kw).double()
    where = case["where"]
    state = ours.state_dict()
    x = rng.standard_normal((5, 3, 3))
    D = 2 if case["bidirectional"] else 1
    h0 = rng.standard_normal((D * L, 3, kw.get("proj_size", 4)))
    if where == "input":
        x[rng.integers(5), rng.integers(3), rng.integers(3)] = case["value"]
    elif where == "h0":
        h0[rng.integers(D * L), rng.integers(3), rng.integers(h0.shape[2])] = case["value"]
    elif where in state:
        state[where].flat[rng.integers(state[where].size)] = case["value"]
    else:
        return  # (that weight is absent in this configuration)
    ours.load_state_dict(state)
    theirs.load_state_dict({k: torch.from_numpy(v.copy()) for k, v in state.items()})
    hx = (h0, np.zeros((D * L, 3, 4))) if kind == "LSTM" else h0
    lengths = [5, 3, 2] if case["lengths"] else None
    g = rng.standard_normal((5, 3, D * kw.get("proj_size", 4)))
    if lengths is not None:
        g[3:, 1] = g[2:, 2] = 0  # (padding has no gradient)
    with np.errstate(all="ignore"):
        out, _ = ours(x, hx, lengths=lengths)
        dx, dhx = ours.backward(g)
    tx = torch.from_numpy(x).requires_grad_()
    th = tuple(torch.from_numpy(a).requires_grad_() for a in hx) if kind == "LSTM" else (
        torch.from_numpy(h0).requires_grad_(),)
    if lengths is None:
        t_out, _ = theirs(tx, th if kind == "LSTM" else th[0])
    else:
        packed = torch.nn.utils.rnn.pack_padded_sequence(tx, torch.tensor(lengths))
        t_out, _ = theirs(packed, th if kind == "LSTM" else th[0])
        t_out, _ = torch.nn.utils.rnn.pad_packed_sequence(t_out, total_length=5)
    (t_out * torch.from_numpy(g)).sum().backward()
    _close(out, t_out.detach().numpy())
    _close(dx, tx.grad.numpy())
    _close(dhx[0] if kind == "LSTM" else dhx, th[0].grad.numpy())
    for name, p in theirs.named_parameters():
        _close(ours.grads[name], p.grad.numpy())
    COUNTS["NaN/inf cases compared with torch (outputs and gradients)"] += 1


cell_case = st.fixed_dictionaries({
    "kind": st.sampled_from(["RNNCell", "LSTMCell", "GRUCell"]),
    "input_size": st.integers(1, 4),
    "hidden_size": st.integers(1, 4),
    "x_shape": st.lists(st.integers(0, 4), min_size=0, max_size=3),
    "hx_shape": st.one_of(st.none(), st.lists(st.integers(0, 5), min_size=0, max_size=3)),
    "seed": st.integers(0, 2 ** 16),
})


@pytest.mark.torch
@FUZZ
@given(cell_case)
def test_cells_fed_any_shape_match_torch_or_refuse_cleanly(case):
    import torch

    rng = np.random.default_rng(case["seed"])
    ours, theirs = _pair(torch, case["kind"], case)
    x = rng.standard_normal(case["x_shape"])
    hx, t_hx = _states(rng, case["hx_shape"], case["kind"] == "LSTMCell")
    got = _outcome(lambda: ours(x, hx))
    try:
        with torch.no_grad():
            y = theirs(torch.from_numpy(x), t_hx)
        want = ("ok", tuple(t.numpy() for t in y) if isinstance(y, tuple) else (y.numpy(),))
    except Exception as exc:  # noqa: BLE001
        want = ("error", exc)
    if _agree(got, want):
        mine = got[1] if isinstance(got[1], tuple) else (got[1],)
        for a, b in zip(mine, want[1]):
            _close(a, b)


packing_case = st.fixed_dictionaries({
    "L": st.integers(0, 5),
    "N": st.integers(0, 4),
    "lengths": st.lists(st.integers(-1, 6), min_size=0, max_size=5),
    "batch_first": st.booleans(),
    "enforce_sorted": st.booleans(),
    "total_length": st.one_of(st.none(), st.integers(0, 8)),
})


@pytest.mark.torch
@FUZZ
@given(packing_case)
def test_packing_round_trip_matches_torch_or_refuses_cleanly(case):
    import torch
    import torch.nn.utils.rnn as tr

    shape = (case["N"], case["L"], 2) if case["batch_first"] else (case["L"], case["N"], 2)
    x = np.arange(int(np.prod(shape)), dtype=np.float64).reshape(shape)

    def ours():
        p = nprnn.pack_padded_sequence(x, case["lengths"], case["batch_first"], case["enforce_sorted"])
        return nprnn.pad_packed_sequence(p, case["batch_first"], total_length=case["total_length"])

    got = _outcome(ours)
    try:
        p = tr.pack_padded_sequence(torch.from_numpy(x), torch.tensor(case["lengths"], dtype=torch.int64),
                                    case["batch_first"], case["enforce_sorted"])
        out, lens = tr.pad_packed_sequence(p, case["batch_first"], total_length=case["total_length"])
        want = ("ok", (out.numpy(), lens.numpy()))
    except Exception as exc:  # noqa: BLE001
        want = ("error", exc)
    if _agree(got, want):
        _close(got[1][0], want[1][0])
        np.testing.assert_array_equal(got[1][1], want[1][1])


state_dict_case = st.fixed_dictionaries({
    "drop": st.booleans(),
    "extra": st.booleans(),
    "reshape": st.booleans(),
    "garbage": st.sampled_from([None, "text", [1, "a"], {"a": 1}, object()]),
    "strict": st.booleans(),
    "seed": st.integers(0, 2 ** 16),
})


@FUZZ
@given(state_dict_case)
def test_damaged_state_dicts_load_fully_or_change_nothing(case):
    rng = np.random.default_rng(case["seed"])
    m = nprnn.LSTM(3, 4, num_layers=2, seed=0)
    before = {k: v.copy() for k, v in m.state_dict().items()}
    sd = {k: rng.standard_normal(v.shape).astype(np.float32) for k, v in before.items()}
    keys = sorted(sd)
    if case["drop"]:
        sd.pop(keys[rng.integers(len(keys))])
    if case["extra"]:
        sd["weight_xx_l9"] = np.zeros(3, np.float32)
    if case["reshape"]:
        k = keys[rng.integers(len(keys))]
        if k in sd:
            sd[k] = sd[k].reshape(-1)[:-1]
    if case["garbage"] is not None:
        sd[keys[rng.integers(len(keys))]] = case["garbage"]
    kind, _ = _outcome(lambda: m.load_state_dict(sd, strict=case["strict"]))
    after = m.state_dict()
    if kind == "error":
        for k, v in before.items():
            np.testing.assert_array_equal(after[k], v)
    else:
        for k, v in after.items():
            if k in sd:
                np.testing.assert_array_equal(v, np.asarray(sd[k], np.float32))
            else:
                np.testing.assert_array_equal(v, before[k])


# ------------------------------------------------------------------------------ ONNX import
onnx_case = st.fixed_dictionaries({
    "op": st.sampled_from(["RNN", "GRU", "LSTM"]),
    "direction": st.sampled_from(["forward", "reverse", "bidirectional", "sideways"]),
    "layout": st.sampled_from([0, 0, 1, 2]),
    "hidden": st.integers(1, 4),
    "input": st.integers(1, 3),
    "T": st.integers(1, 4),
    "N": st.integers(1, 3),
    "B": st.sampled_from(["none", "ok", "1-D"]),
    "P": st.sampled_from(["none", "ok", "short"]),
    "seq_lens": st.booleans(),
    "h0": st.booleans(),
    "extra": st.sampled_from([{}, {"clip": 0.8}, {"linear_before_reset": 1}, {"input_forget": 1},
                              {"activations": ["Relu", "Relu"]}, {"unknown_attr": 1}, {"hidden_size": 99}]),
    "seed": st.integers(0, 2 ** 16),
})


def _ort_run(model_bytes, feeds):
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.log_severity_level = 4
    try:
        sess = ort.InferenceSession(model_bytes, opts, providers=["CPUExecutionProvider"])
        return "ok", sess.run(None, feeds)
    except Exception as exc:  # noqa: BLE001 - whatever onnxruntime refuses, we must refuse too
        return "error", exc


@FUZZ
@given(onnx_case)
def test_onnx_nodes_match_onnxruntime_or_refuse_cleanly(case):
    """A recurrent node with any attributes and inputs: import_onnx refuses it by name, or
    runs it as onnxruntime does."""
    pytest.importorskip("onnxruntime")
    from onnx import TensorProto, helper, numpy_helper

    from nprnn.onnx import import_onnx

    rng = np.random.default_rng(case["seed"])
    op, H, In, T, N = case["op"], case["hidden"], case["input"], case["T"], case["N"]
    D = 2 if case["direction"] == "bidirectional" else 1
    G = {"RNN": 1, "GRU": 3, "LSTM": 4}[op]
    f32 = lambda *shape: (rng.standard_normal(shape) * 0.5).astype(np.float32)  # noqa: E731
    inits = [numpy_helper.from_array(f32(D, G * H, In), "W"), numpy_helper.from_array(f32(D, G * H, H), "R")]
    ins = ["X", "W", "R", "", "", "", "", ""]
    if case["B"] != "none":
        inits.append(numpy_helper.from_array(f32(D, 2 * G * H) if case["B"] == "ok" else f32(2 * G * H), "B"))
        ins[3] = "B"
    if op == "LSTM" and case["P"] != "none":
        inits.append(numpy_helper.from_array(f32(D, 3 * H) if case["P"] == "ok" else f32(D, H), "P"))
        ins[7] = "P"
    x, h0 = f32(T, N, In), f32(D, N, H)
    lens = rng.integers(1, T + 1, N).astype(np.int32)

    def build(layout):
        """The model with ``layout`` and its feeds (batch first in X and H0 when layout=1)."""
        first = layout == 1
        feeds = {"X": np.ascontiguousarray(x.transpose(1, 0, 2)) if first else x}
        graph_inputs = [helper.make_tensor_value_info("X", TensorProto.FLOAT, list(feeds["X"].shape))]
        names = list(ins)
        if case["seq_lens"]:
            feeds["L"] = lens
            graph_inputs.append(helper.make_tensor_value_info("L", TensorProto.INT32, [N]))
            names[4] = "L"
        if case["h0"]:
            feeds["H0"] = np.ascontiguousarray(h0.transpose(1, 0, 2)) if first else h0
            graph_inputs.append(helper.make_tensor_value_info("H0", TensorProto.FLOAT, list(feeds["H0"].shape)))
            names[5] = "H0"
        while names[-1] == "":
            names.pop()
        outs = ["Y", "Y_h"] + (["Y_c"] if op == "LSTM" else [])
        attrs = {"hidden_size": H, "direction": case["direction"], "layout": layout, **case["extra"]}
        node = helper.make_node(op, names, outs, **attrs)
        graph = helper.make_graph([node], "g", graph_inputs,
                                  [helper.make_tensor_value_info(o, TensorProto.FLOAT, None) for o in outs], inits)
        return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), feeds

    model, feeds = build(case["layout"])
    got = _outcome(lambda: import_onnx(model)(**feeds))
    if case["layout"] == 1:  # onnxruntime runs no layout=1 recurrence: its layout=0 twin is the reference
        ref_model, ref_feeds = build(0)
        want = _ort_run(ref_model.SerializeToString(), ref_feeds)
        if want[0] == "ok":  # Y (T, D, N, H) -> (N, T, D, H); states (D, N, H) -> (N, D, H)
            want = ("ok", [want[1][0].transpose(2, 0, 1, 3)] + [s.transpose(1, 0, 2) for s in want[1][1:]])
    else:
        want = _ort_run(model.SerializeToString(), feeds)
    if _agree(got, want, "onnxruntime"):
        for a, b in zip(got[1], want[1]):
            np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5)


FLIPS = st.lists(st.tuples(st.floats(0, 1), st.integers(0, 7)), min_size=1, max_size=3)  # (where, which bit)


def _damage(data: bytes, flips, truncate) -> bytearray:
    """``data`` with a bit flipped at each relative position of ``flips``, and cut at the
    first one's position when ``truncate``."""
    raw = bytearray(data)
    for where, bit in flips:
        raw[min(int(where * len(raw)), len(raw) - 1)] ^= 1 << bit
    return raw[: int(flips[0][0] * len(raw))] if truncate else raw


def _small_onnx_model():
    from nprnn.onnx import to_onnx

    model = nprnn.Sequential(nprnn.LSTM(3, 4, num_layers=2, batch_first=True, seed=0), nprnn.LastStep(True),
                             nprnn.Linear(4, 2, seed=1)).eval()
    return to_onnx(model).SerializeToString()


ONNX_BYTES = []


@FUZZ
@given(flips=FLIPS, truncate=st.booleans())
def test_damaged_onnx_files_refuse_cleanly_or_run_as_onnxruntime(flips, truncate, tmp_path_factory):
    """Bit flips and truncations anywhere in a saved model: one clean error, or a model
    that computes what onnxruntime computes from the same bytes."""
    pytest.importorskip("onnxruntime")
    from nprnn.onnx import import_onnx

    if not ONNX_BYTES:
        ONNX_BYTES.append(_small_onnx_model())
    raw = _damage(ONNX_BYTES[0], flips, truncate)
    path = tmp_path_factory.mktemp("onnx") / "damaged.onnx"
    path.write_bytes(bytes(raw))
    x = np.random.default_rng(0).standard_normal((2, 5, 3)).astype(np.float32)
    got = _outcome(lambda: import_onnx(str(path))(x))
    want = _ort_run(bytes(raw), {"input": x})
    if _agree(got, want, "onnxruntime"):
        np.testing.assert_allclose(got[1], want[1][0], rtol=1e-4, atol=1e-5)


# ------------------------------------------------------------------------------ files
CHECKPOINT = {}


def _checkpoint_bytes(tmp):
    from nprnn.optim import Adam
    from nprnn.serialization import save_checkpoint

    if not CHECKPOINT:
        model = nprnn.GRU(3, 4, num_layers=2, seed=0)
        opt = Adam(model.parameters(), lr=0.01)
        out, _ = model(np.ones((2, 1, 3), np.float32))
        model.backward(out)
        opt.step()
        save_checkpoint(tmp / "c.safetensors", model, opt, step=5)
        CHECKPOINT["bytes"] = (tmp / "c.safetensors").read_bytes()
        CHECKPOINT["state"] = {k: v.copy() for k, v in model.state_dict().items()}
    return CHECKPOINT["bytes"]


@FUZZ
@given(flips=FLIPS, truncate=st.booleans())
def test_damaged_checkpoints_load_exactly_or_change_nothing(flips, truncate, tmp_path_factory):
    pytest.importorskip("safetensors")
    from nprnn.optim import Adam
    from nprnn.serialization import load_checkpoint

    tmp = tmp_path_factory.mktemp("ckpt")
    raw = _damage(_checkpoint_bytes(tmp), flips, truncate)
    path = tmp / "damaged.safetensors"
    path.write_bytes(bytes(raw))
    model = nprnn.GRU(3, 4, num_layers=2, seed=1)
    opt = Adam(model.parameters(), lr=0.5)
    before = {k: v.copy() for k, v in model.state_dict().items()}
    kind, result = _outcome(lambda: load_checkpoint(path, model, opt))
    want = before if kind == "error" else CHECKPOINT["state"]  # refused: unchanged; loaded: exactly what was saved
    if kind == "ok":
        assert result["step"] == 5 and opt.param_groups[0]["lr"] == 0.01
        COUNTS["results compared with the saved checkpoint"] += 1
    for k, v in model.state_dict().items():
        np.testing.assert_array_equal(v, want[k], err_msg=k)


@FUZZ
@given(name=st.sampled_from(["gru_float64.pt", "lstm_bidirectional_proj.pt", "views.pt"]),
       flips=FLIPS, truncate=st.booleans())
def test_damaged_pt_files_read_as_torch_or_refuse_cleanly(name, flips, truncate, tmp_path_factory):
    """torch.save files with flipped bits: our reader (no pickle code runs) refuses with
    one clean error, or returns what torch.load(weights_only=True) returns."""
    from nprnn.torchfile import load_torch_state_dict

    fixture = os.path.join(os.path.dirname(__file__), "fixtures", "torch", name)
    with open(fixture, "rb") as f:
        raw = _damage(f.read(), flips, truncate)
    path = tmp_path_factory.mktemp("pt") / name
    path.write_bytes(bytes(raw))
    got = _outcome(lambda: load_torch_state_dict(str(path)))
    try:
        import torch
    except ImportError:
        return  # no reference here: the clean-or-result check above is what runs
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            want = ("ok", torch.load(io.BytesIO(bytes(raw)), weights_only=True))
    except Exception as exc:  # noqa: BLE001
        want = ("error", exc)
    if got[0] == "ok" and want[0] == "ok":
        assert list(got[1]) == list(want[1])
        for k, v in want[1].items():
            np.testing.assert_array_equal(got[1][k], v.float().numpy() if v.dtype.is_floating_point and
                                          v.dtype not in (torch.float32, torch.float64) else v.numpy(), err_msg=k)
        COUNTS["results compared with torch"] += 1
    elif got[0] == "ok":  # torch refuses: only a read of exactly the saved tensors is no silent acceptance
        saved = load_torch_state_dict(fixture)  # (torch.load's zip reader also rejects damage outside the data,
        intact = list(got[1]) == list(saved) and all(  # e.g. a changed central-directory field)
            np.array_equal(got[1][k], v) and got[1][k].dtype == v.dtype for k, v in saved.items())
        if not intact:
            COUNTS["silent acceptances"] += 1
            raise AssertionError(f"nprnn read changed tensors where torch refuses: {want[1]!r}")
        COUNTS["damage outside the tensors, read intact (torch refuses)"] += 1


# ------------------------------------------------------------------------------ memory
def _growth(fn, calls=10_000):
    """Bytes that stay allocated (tracemalloc: Python and NumPy) after ``calls`` more calls
    than a warm-up of 200, cyclic garbage collected at both ends."""
    for _ in range(200):
        fn()
    gc.collect()
    tracemalloc.start()
    try:
        start = tracemalloc.get_traced_memory()[0]
        for _ in range(calls):
            fn()
        gc.collect()
        return tracemalloc.get_traced_memory()[0] - start
    finally:
        tracemalloc.stop()


def test_memory_does_not_grow_over_10000_calls():
    rng = np.random.default_rng(0)
    lstm = nprnn.LSTM(8, 16, num_layers=2, seed=0).eval()
    gru = nprnn.GRU(8, 16, seed=1)
    cell = nprnn.LSTMCell(8, 16, seed=2)
    x, xc = rng.standard_normal((5, 3, 8)).astype(np.float32), rng.standard_normal((3, 8)).astype(np.float32)
    stream = lstm.stream(batch_size=3)

    def train_step():
        out, _ = gru(x)
        gru.backward(out)
        gru.zero_grad()

    def cell_step():
        h, c = cell(xc)
        cell.backward((h, c))

    cases = {"LSTM eval forward": lambda: lstm(x), "GRU training forward+backward": train_step,
             "LSTM stream step": lambda: stream.step(xc), "LSTMCell forward+backward": cell_step}
    for name, fn in cases.items():
        grown = _growth(fn)
        COUNTS[f"bytes of memory growth over 10,000 calls: {name}"] = grown
        assert grown < 64 * 1024, f"{name}: {grown} bytes more after 10,000 calls"

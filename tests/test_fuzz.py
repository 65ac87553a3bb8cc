"""Our own fuzz suite (hypothesis): the layers, the cells and the packing utilities fed
arbitrary shapes and values, against PyTorch; ONNX recurrent nodes fed arbitrary
attributes and inputs, and damaged ONNX files, against onnxruntime; ``load_state_dict``,
``.pt`` files and checkpoints damaged; writers aimed at every kind of destination,
conversions onto their own source, external data of in-memory ONNX models, ONNX
constant-folding bombs and endless text (in children with an address-space limit), and
every numeric CLI flag with NaN, infinities, negatives and huge values.

Each case ends one of two ways: one of our clean exceptions (ValueError, TypeError or
RuntimeError, with our message), or the same result as the reference -- never a result
where the reference refuses, never a refusal of what the reference accepts unless the
test names the reason, never IndexError, KeyError, AttributeError or a NumPy broadcast
error, never a crash; a failed load changes nothing and no destination is lost.  The
generators make mostly well-formed input (three cases in four), and each campaign asserts
that at least half of its cases were compared with the reference, so the suite tests
results and not only refusals.  Memory does not grow over 10,000 calls.

A bounded profile runs by default (CI); ``NPRNN_FUZZ_EXAMPLES=2000`` runs a longer one.
The run ends with the count of cases by outcome (``COUNTS``, printed by conftest).
"""
import gc
import io
import os
import re
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


def _outcome(fn, clean=CLEAN):
    """("ok", result) or ("error", exception); a raw error type fails the test at once."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # warnings are no outcome (old files warn, then load)
            return "ok", fn()
    except RAW as exc:
        COUNTS["raw errors"] += 1
        raise AssertionError(f"raw {type(exc).__name__} escaped: {exc}") from exc
    except clean as exc:
        COUNTS["clean errors"] += 1
        return "error", exc


RUNS, COMPARED = Counter(), Counter()  # per campaign: cases run, and cases whose result was compared
_CAMPAIGN = [""]  # the campaign running now (see _campaign)


def _agree(got, want, reference="torch", reasons=()):
    """Our refusal of what the reference refuses is agreement, and so is a result equal to
    the reference's (the caller compares it when this returns True).  We never accept what
    the reference refuses (a silent acceptance), and we refuse what it accepts only for a
    reason the test names (``reasons``: regular expressions our message must match, such
    as lengths that do not match the batch, which PyTorch lets through)."""
    if got[0] == "error":
        if want[0] == "ok":
            named = [r for r in reasons if re.search(r, str(got[1]))]
            if not named:
                COUNTS["refusals of what the reference accepts, unnamed"] += 1
                raise AssertionError(f"nprnn refused what {reference} accepts, for no reason this test names: "
                                     f"{type(got[1]).__name__}: {got[1]}")
            COUNTS[f"refusals of what {reference} accepts, named: {named[0]}"] += 1
        return False
    if want[0] != "ok":
        COUNTS["silent acceptances"] += 1
        raise AssertionError(f"nprnn accepted what {reference} refuses: {want[1]!r}")
    COUNTS[f"results compared with {reference}"] += 1
    COMPARED[_CAMPAIGN[0]] += 1
    return True


def _campaign(name, strategy, check, minimum=0.5, min_runs=20):
    """Run ``check(case)`` on FUZZ's examples of ``strategy``, then require that at least
    ``minimum`` of the cases run were compared with the reference (the generators make
    mostly valid input, so that the suite tests results and not only refusals)."""
    runs0, compared0 = RUNS[name], COMPARED[name]

    @FUZZ
    @given(strategy)
    def run(case):
        _CAMPAIGN[0] = name
        RUNS[name] += 1
        check(case)

    run()
    runs, compared = RUNS[name] - runs0, COMPARED[name] - compared0
    COUNTS[f"{name}: cases compared with the reference / run"] = f"{compared} / {runs}"
    assert runs >= min(EXAMPLES, min_runs), f"{name}: only {runs} cases ran"
    assert compared >= minimum * runs, f"{name}: only {compared} of {runs} cases were compared with the reference"


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


VALID = st.sampled_from([True, True, True, False])  # three cases in four are well formed

layer_case = st.fixed_dictionaries({
    "kind": st.sampled_from(["RNN", "LSTM", "GRU"]),
    "input_size": st.integers(1, 4),
    "hidden_size": st.integers(1, 4),
    "num_layers": st.integers(1, 2),
    "bidirectional": st.booleans(),
    "batch_first": st.booleans(),
    "valid": VALID,  # x and hx shaped for the layer (L, N in 1..4, batched or not, hx or None) ...
    "L": st.integers(1, 4),
    "N": st.one_of(st.none(), st.integers(1, 4)),  # (None: unbatched)
    "give_hx": st.booleans(),
    "x_shape": st.lists(st.integers(0, 4), min_size=0, max_size=4),  # ... or any shapes
    "hx_shape": st.one_of(st.none(), st.lists(st.integers(0, 5), min_size=1, max_size=4)),
    "special": st.sampled_from([None, None, np.nan, np.inf, -np.inf]),
    "seed": st.integers(0, 2 ** 16),
})


def _layer_shapes(case):
    """(x shape, hx shape or None) of a case: well formed for its layer when ``valid``."""
    if not case["valid"]:
        return case["x_shape"], case["hx_shape"]
    L, N, In = case["L"], case["N"], case["input_size"]
    lead = (L,) if N is None else (N, L) if case["batch_first"] else (L, N)
    states = case["num_layers"] * (2 if case["bidirectional"] else 1)
    hx = ((states, case["hidden_size"]) if N is None else (states, N, case["hidden_size"])) if case["give_hx"] \
        else None
    return (*lead, In), hx


def _check_layer(case):
    import torch

    rng = np.random.default_rng(case["seed"])
    ours, theirs = _pair(torch, case["kind"], case, num_layers=case["num_layers"],
                         bidirectional=case["bidirectional"], batch_first=case["batch_first"])
    x_shape, hx_shape = _layer_shapes(case)
    x = rng.standard_normal(x_shape)
    if case["special"] is not None and x.size:
        x.flat[rng.integers(x.size)] = case["special"]
    hx, t_hx = _states(rng, hx_shape, case["kind"] == "LSTM")
    got = _outcome(lambda: ours(x, hx))

    def run_torch():
        with torch.no_grad():
            out, st_ = theirs(torch.from_numpy(x), t_hx)
        return out.numpy(), (tuple(s.numpy() for s in st_) if isinstance(st_, tuple) else st_.numpy())

    try:
        want = ("ok", run_torch())
    except Exception as exc:  # noqa: BLE001 - whatever PyTorch raises, we must refuse too
        want = ("error", exc)
    if _agree(got, want, reasons=LAYER_REFUSALS):
        for a, b in zip(_flat(got[1]), _flat(want[1])):
            _close(a, b)


# what nprnn refuses and PyTorch 2.13 runs, on purpose
LAYER_REFUSALS = (
    r"Expected sequence length to be larger than 0",  # torch returns empty outputs for L = 0 in some layouts
)


@pytest.mark.torch
def test_layers_fed_any_shape_match_torch_or_refuse_cleanly():
    _campaign("layers", layer_case, _check_layer)


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
    "valid": VALID,  # x (N, H_in) or (H_in,), hx of the same batch or None ...
    "N": st.one_of(st.none(), st.integers(1, 4)),
    "give_hx": st.booleans(),
    "x_shape": st.lists(st.integers(0, 4), min_size=0, max_size=3),  # ... or any shapes
    "hx_shape": st.one_of(st.none(), st.lists(st.integers(0, 5), min_size=0, max_size=3)),
    "seed": st.integers(0, 2 ** 16),
})


def _check_cell(case):
    import torch

    rng = np.random.default_rng(case["seed"])
    ours, theirs = _pair(torch, case["kind"], case)
    x_shape, hx_shape = case["x_shape"], case["hx_shape"]
    if case["valid"]:
        lead = () if case["N"] is None else (case["N"],)
        x_shape, hx_shape = (*lead, case["input_size"]), (*lead, case["hidden_size"]) if case["give_hx"] else None
    x = rng.standard_normal(x_shape)
    hx, t_hx = _states(rng, hx_shape, case["kind"] == "LSTMCell")
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


@pytest.mark.torch
def test_cells_fed_any_shape_match_torch_or_refuse_cleanly():
    _campaign("cells", cell_case, _check_cell)


packing_case = st.fixed_dictionaries({
    "L": st.integers(0, 5),
    "N": st.integers(0, 4),
    "valid": VALID,  # L, N >= 1 and N lengths in [1, L] (decreasing where enforce_sorted) ...
    "draws": st.lists(st.integers(1, 5), min_size=4, max_size=4),
    "lengths": st.lists(st.integers(-1, 6), min_size=0, max_size=5),  # ... or any lengths
    "batch_first": st.booleans(),
    "enforce_sorted": st.booleans(),
    "total_length": st.one_of(st.none(), st.integers(0, 8)),
})


def _check_packing(case):
    import torch
    import torch.nn.utils.rnn as tr

    L, N, lengths, total = case["L"], case["N"], case["lengths"], case["total_length"]
    if case["valid"]:
        L, N = max(L, 1), max(N, 1)
        lengths = [min(d, L) for d in case["draws"][:N]]
        lengths = sorted(lengths, reverse=True) if case["enforce_sorted"] else lengths
        total = None if total is None else max(total, L)
    shape = (N, L, 2) if case["batch_first"] else (L, N, 2)
    x = np.arange(int(np.prod(shape)), dtype=np.float64).reshape(shape)

    def ours():
        p = nprnn.pack_padded_sequence(x, lengths, case["batch_first"], case["enforce_sorted"])
        return nprnn.pad_packed_sequence(p, case["batch_first"], total_length=total)

    got = _outcome(ours)
    try:
        p = tr.pack_padded_sequence(torch.from_numpy(x), torch.tensor(lengths, dtype=torch.int64),
                                    case["batch_first"], case["enforce_sorted"])
        out, lens = tr.pad_packed_sequence(p, case["batch_first"], total_length=total)
        want = ("ok", (out.numpy(), lens.numpy()))
    except Exception as exc:  # noqa: BLE001
        want = ("error", exc)
    if _agree(got, want, reasons=PACKING_REFUSALS):
        _close(got[1][0], want[1][0])
        np.testing.assert_array_equal(got[1][1], want[1][1])


# what nprnn refuses and PyTorch 2.13 packs, on purpose
PACKING_REFUSALS = (
    r"Expected `len\(lengths\)` to be equal to batch_size",  # torch packs the first len(lengths) sequences
    r"Expected every length to be at most the input's sequence length",  # torch reads past the end
)


@pytest.mark.torch
def test_packing_round_trip_matches_torch_or_refuses_cleanly():
    _campaign("packing", packing_case, _check_packing)


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
    "direction": st.sampled_from(["forward", "forward", "reverse", "bidirectional", "bidirectional", "sideways"]),
    "layout": st.sampled_from([0, 0, 0, 1, 1, 2]),
    "hidden": st.integers(1, 4),
    "input": st.integers(1, 3),
    "T": st.integers(1, 4),
    "N": st.integers(1, 3),
    "B": st.sampled_from(["none", "ok", "ok", "ok", "1-D"]),
    "P": st.sampled_from(["none", "none", "ok", "ok", "short"]),
    "seq_lens": st.booleans(),
    "h0": st.booleans(),
    "extra": st.sampled_from([{}, {}, {}, {}, {}, {}, {"clip": 0.8}, {"linear_before_reset": 1},
                              {"input_forget": 1}, {"activations": ["Relu", "Relu"]}, {"unknown_attr": 1},
                              {"hidden_size": 99}]),
    "valid": VALID,  # the options above made ones the operator defines for this op
    "seed": st.integers(0, 2 ** 16),
})
_WELL_FORMED = {"direction": ("forward", "reverse", "bidirectional"), "layout": (0, 1), "B": ("none", "ok"),
                "P": ("none", "ok")}
_OWN_OPTIONS = {"RNN": [{}, {"activations": ["Relu"]}, {"clip": 0.8}], "GRU": [{}, {"linear_before_reset": 1}],
                "LSTM": [{}, {"clip": 0.8}, {"input_forget": 1}]}


def _well_formed(case):
    """``case`` with each option replaced by one the operator defines (drawn from the case's
    own values, so hypothesis still varies them)."""
    case = dict(case)
    for key, allowed in _WELL_FORMED.items():
        if case[key] not in allowed:
            case[key] = allowed[case["seed"] % len(allowed)]
    own = _OWN_OPTIONS[case["op"]]
    case["extra"] = own[case["seed"] % len(own)]
    if case["extra"].get("activations") and case["direction"] == "bidirectional":
        case["extra"] = {"activations": ["Relu", "Relu"]}
    return case


def _ort_run(model_bytes, feeds):
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.log_severity_level = 4
    try:
        sess = ort.InferenceSession(model_bytes, opts, providers=["CPUExecutionProvider"])
        return "ok", sess.run(None, feeds)
    except Exception as exc:  # noqa: BLE001 - whatever onnxruntime refuses, we must refuse too
        return "error", exc


def test_onnx_nodes_match_onnxruntime_or_refuse_cleanly():
    """A recurrent node with any attributes and inputs: import_onnx refuses it by name, or
    runs it as onnxruntime does."""
    pytest.importorskip("onnxruntime")
    _campaign("ONNX nodes", onnx_case, _check_onnx_node)


def _check_onnx_node(case):
    from onnx import TensorProto, helper, numpy_helper

    from nprnn.onnx import import_onnx

    rng = np.random.default_rng(case["seed"])
    case = _well_formed(case) if case["valid"] else case
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
    if _agree(got, want, "onnxruntime", reasons=ONNX_REFUSALS):
        for a, b in zip(got[1], want[1]):
            np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5)


# what nprnn refuses and onnxruntime 1.2x runs, on purpose
ONNX_REFUSALS = (
    r"clip is supported for LSTM only",  # nprnn's RNN and GRU kernels have no clip (LSTM's has)
    r"activations must name \d function\(s\) per direction",  # onnxruntime ignores extra names
    r"activations \[.*\] are not supported \(only the defaults",  # only RNN's Relu beside the defaults
)


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


# ------------------------------------------------------------------------------ destinations, inputs, the CLI
def _node_kind(path):
    """What is at ``path`` ('missing', 'file', 'fifo', 'dir', 'socket', 'chardev', 'other')."""
    import stat

    try:
        mode = os.stat(path).st_mode
    except FileNotFoundError:
        return "missing"
    return ("file" if stat.S_ISREG(mode) else "fifo" if stat.S_ISFIFO(mode) else "dir" if stat.S_ISDIR(mode)
            else "socket" if stat.S_ISSOCK(mode) else "chardev" if stat.S_ISCHR(mode) else "other")


def _make_node(kind, path, tmp):
    """A ``kind`` destination at ``path``, made in the temporary directory ``tmp``; False
    where this system does not permit it (a character device needs root)."""
    import socket

    if kind == "file":
        path.write_bytes(b"old contents")
    elif kind == "fifo":
        os.mkfifo(path)
    elif kind == "dir":
        path.mkdir()
        (path / "inside").write_text("kept")
    elif kind == "socket":
        sock = socket.socket(socket.AF_UNIX)
        try:
            sock.bind(str(path))
        except OSError:  # (the path may be too long for a UNIX socket)
            return False
        finally:
            sock.close()
    elif kind == "chardev":  # a /dev/null twin
        try:
            os.mknod(path, 0o666 | __import__("stat").S_IFCHR, os.makedev(1, 3))
        except (PermissionError, OSError):
            return False
    elif kind == "symlink":
        (tmp / "target.bin").write_bytes(b"old contents")
        os.symlink(tmp / "target.bin", path)
    return True


destination_case = st.fixed_dictionaries({
    "writer": st.sampled_from(["save", "save npz", "save_checkpoint", "export onnx", "convert", "train checkpoint"]),
    "kind": st.sampled_from(["missing", "file", "symlink", "fifo", "dir", "socket", "chardev", "missing dir"]),
})


def _write(writer, path, tmp):
    from nprnn.interop.serialization import save, save_checkpoint

    m = nprnn.GRU(3, 4, seed=0)
    if writer == "save":
        return save(m, path)
    if writer == "save npz":
        return save(m, path, format="npz")
    if writer == "save_checkpoint":
        return save_checkpoint(path, m, step=1)
    if writer == "export onnx":
        from nprnn.onnx import export

        return export(m, path)
    from nprnn.cli import main

    with __import__("contextlib").redirect_stderr(io.StringIO()) as err, \
            __import__("contextlib").redirect_stdout(io.StringIO()):
        if writer == "convert":
            src = tmp / "src.npz"
            save(m, src, format="npz")
            code = main(["convert", str(src), str(path)])
        else:
            (tmp / "text.txt").write_text("abcd efgh " * 20)
            code = main(["train", "--text", str(tmp / "text.txt"), "--steps", "1", "--hidden-size", "4",
                         "--embed-dim", "2", "--batch-size", "2", "--seq-len", "4", "--sample-len", "0",
                         "--no-progress", "--checkpoint", str(path), "--ckpt-every", "1"])
    if code:
        raise ValueError(err.getvalue())


def test_writers_to_any_destination_refuse_or_write_and_lose_nothing(tmp_path_factory):
    """Every writer onto every kind of destination: a regular file or a symlink to one is
    replaced (and reads back), a character device is written in place and stays one, a
    FIFO, directory or socket is refused and stays, a missing directory is named."""
    pytest.importorskip("safetensors")
    pytest.importorskip("onnx")

    def check(case):
        tmp = tmp_path_factory.mktemp("dest")
        ext = {"save npz": ".npz", "export onnx": ".onnx"}.get(case["writer"], ".safetensors")
        path = tmp / ("nowhere" if case["kind"] == "missing dir" else "") / f"out{ext}"
        if not _make_node(case["kind"], path, tmp):
            COUNTS["destinations: cases this system cannot make (no root)"] += 1
            return
        before = _node_kind(path)
        kind, exc = _outcome(lambda: _write(case["writer"], path, tmp), CLEAN + (FileNotFoundError,))
        after = _node_kind(path)
        if case["kind"] in ("fifo", "dir", "socket", "missing dir"):
            assert kind == "error", f"{case}: nothing refused"
            assert ("nowhere" if case["kind"] == "missing dir" else "out") in str(exc), exc  # named
            if after != before or (case["kind"] == "dir" and (path / "inside").read_text() != "kept"):
                COUNTS["data lost"] += 1
                raise AssertionError(f"{case}: the destination changed from {before} to {after}")
            COUNTS["destinations: refused, left as they were"] += 1
            COMPARED["destinations"] += 1
            return
        assert kind == "ok", f"{case}: {exc}"
        if case["kind"] == "chardev":
            if after != "chardev":
                COUNTS["data lost"] += 1
                raise AssertionError(f"{case}: the device was replaced by a {after}")
            COUNTS["destinations: character device written in place, still a device"] += 1
            COMPARED["destinations"] += 1
            return
        assert after == "file"
        if case["kind"] == "symlink":
            assert os.path.islink(path) and (tmp / "target.bin").read_bytes() != b"old contents"
        if ext != ".onnx":
            restored = nprnn.GRU(3, 4, seed=1)
            from nprnn.interop.serialization import load_checkpoint, load_into

            if case["writer"] in ("save_checkpoint",):
                load_checkpoint(path, restored)
                np.testing.assert_array_equal(restored.weight_hh_l0, nprnn.GRU(3, 4, seed=0).weight_hh_l0)
            elif case["writer"] in ("save", "save npz", "convert"):
                load_into(restored, path)
                np.testing.assert_array_equal(restored.weight_hh_l0, nprnn.GRU(3, 4, seed=0).weight_hh_l0)
        COUNTS["destinations: written and read back"] += 1
        COMPARED["destinations"] += 1

    _campaign("destinations", destination_case, check, minimum=0.5)


def test_conversions_onto_their_own_source_are_refused_before_writing(tmp_path_factory):
    from nprnn.cli import main
    from nprnn.interop.serialization import save

    spelling = st.sampled_from(["same", "dot", "hardlink", "symlink", "dotdot"])

    def check(case):
        tmp = tmp_path_factory.mktemp("self")
        src = tmp / "m.safetensors"
        save(nprnn.LSTM(2, 3, seed=0), src)
        data = src.read_bytes()
        (tmp / "sub").mkdir()
        dst = {"same": src, "dot": tmp / "." / "m.safetensors", "dotdot": tmp / "sub" / ".." / "m.safetensors",
               "hardlink": tmp / "h.safetensors", "symlink": tmp / "s.safetensors"}[case]
        if case == "hardlink":
            os.link(src, dst)
        if case == "symlink":
            os.symlink(src, dst)
        with __import__("contextlib").redirect_stderr(io.StringIO()) as err:
            code = main(["convert", str(src), str(dst)])
        assert code == 2 and "is the source file" in err.getvalue(), (case, err.getvalue())
        assert src.read_bytes() == data
        COUNTS["self-overwrites: refused, source intact"] += 1
        COMPARED["self-overwrites"] += 1

    _campaign("self-overwrites", spelling, check, minimum=1, min_runs=5)


external_case = st.fixed_dictionaries({
    "location": st.sampled_from(["w.bin", "./w.bin", "sub/w.bin", "sub/../w.bin", "../w.bin", "sub/../../w.bin",
                                 "ABSOLUTE", "link_out.bin", "link_in.bin", "missing.bin"]),
    "base_dir": st.sampled_from(["given", "given", None, ""]),
    "where": st.sampled_from(["initializer", "Constant"]),
})


def test_external_data_of_in_memory_models_is_read_only_from_base_dir(tmp_path_factory, monkeypatch):
    """An in-memory ModelProto whose tensor lives in another file: never read from the
    current directory (which holds a decoy), only from base_dir and inside it."""
    pytest.importorskip("onnx")
    from onnx import TensorProto, helper
    from test_onnx_bounds import external_tensor

    from nprnn.onnx import import_onnx

    def check(case):
        tmp = tmp_path_factory.mktemp("ext")
        base, cwd = tmp / "base", tmp / "cwd"
        (base / "sub").mkdir(parents=True)
        cwd.mkdir()
        for folder, values in ((base, [1, 2]), (base / "sub", [3, 4]), (tmp, [9, 9]), (cwd, [7, 7])):
            (folder / "w.bin").write_bytes(np.array(values, np.float32).tobytes())
        os.symlink(tmp / "w.bin", base / "link_out.bin")
        os.symlink(base / "w.bin", base / "link_in.bin")
        monkeypatch.chdir(cwd)
        location = str(tmp / "w.bin") if case["location"] == "ABSOLUTE" else case["location"]
        w = external_tensor(location)
        nodes = [helper.make_node("Add", ["x", "w"], ["y"])]
        inits = [w]
        if case["where"] == "Constant":
            nodes.insert(0, helper.make_node("Constant", [], ["w"], value=w))
            inits = []
        graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2])],
                                  [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2])], inits)
        model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
        base_dir = {"given": base, None: None, "": ""}[case["base_dir"]]
        kind, result = _outcome(lambda: import_onnx(model, base_dir=base_dir)(np.zeros(2, np.float32)),
                                CLEAN + (FileNotFoundError,))
        inside = {"w.bin": [1, 2], "./w.bin": [1, 2], "sub/w.bin": [3, 4], "sub/../w.bin": [1, 2]}
        if kind == "ok":
            assert case["base_dir"] == "given", f"{case}: read without base_dir: {result}"
            assert case["location"] in inside or case["location"] == "link_in.bin", f"{case}: read {result}"
            np.testing.assert_array_equal(result, inside.get(case["location"], [1, 2]))
            COUNTS["external data: read from inside base_dir"] += 1
            COMPARED["external data"] += 1
        else:
            assert not (case["base_dir"] == "given" and case["location"] in inside), f"{case}: {result}"
            COUNTS["external data: refused (no base_dir, outside it, or missing)"] += 1
            COMPARED["external data"] += 1

    _campaign("external data", external_case, check, minimum=1, min_runs=20)


bomb_case = st.fixed_dictionaries({
    "op": st.sampled_from(["ConstantOfShape", "Expand", "Concat", "Mul", "MatMul", "Gather"]),
    "a": st.integers(8, 28),  # log2 of the sizes
    "b": st.integers(0, 14),
    "live": st.booleans(),
})


def _bomb(case):
    """(model, shape of the folded value, bytes of every constant folded on the way) for a
    case: a few hundred bytes that fold to 2^a .. 2^(a+b) numbers, read by the output when
    ``live``."""
    from onnx import TensorProto, helper

    a, b = case["a"], case["b"]
    shape_of = lambda name, dims: helper.make_tensor(name, TensorProto.INT64, [len(dims)], dims)  # noqa: E731
    one = helper.make_tensor("one", TensorProto.FLOAT, [1], [1.0])
    op = case["op"]
    if op == "ConstantOfShape":
        nodes, inits = [helper.make_node("ConstantOfShape", ["s"], ["big"])], [shape_of("s", [2 ** a])]
        shape = (2 ** a,)
        total = 4 * 2 ** a
    elif op == "Expand":
        nodes, inits, shape = [helper.make_node("Expand", ["one", "s"], ["big"])], [one, shape_of("s", [2 ** a])], \
            (2 ** a,)
        total = 4 * 2 ** a
    elif op == "Concat":
        k = min(b, 12)
        nodes = [helper.make_node("ConstantOfShape", ["s"], ["c0"])] + [
            helper.make_node("Concat", [f"c{i}", f"c{i}"], [f"c{i + 1}"], axis=0) for i in range(k)] + [
            helper.make_node("Identity", [f"c{k}"], ["big"])]
        inits, shape = [shape_of("s", [2 ** min(a, 20)])], (2 ** (min(a, 20) + k),)
        total = 4 * 2 ** min(a, 20) * (2 ** (k + 1) - 1)
    elif op in ("Mul", "MatMul"):
        r, c = 2 ** (a // 2), 2 ** (a - a // 2 + b // 2)
        nodes = [helper.make_node("ConstantOfShape", ["s1"], ["p"]), helper.make_node("ConstantOfShape", ["s2"], ["q"]),
                 helper.make_node(op, ["p", "q"], ["big"])]
        inits, shape = [shape_of("s1", [r, 1]), shape_of("s2", [1, c])], (r, c)
        total = 4 * (r + c + r * c)
    else:  # Gather: every one of 2^b indices picks a row of 2^a
        nodes = [helper.make_node("ConstantOfShape", ["s1"], ["table"]),
                 helper.make_node("ConstantOfShape", ["s2"], ["idx"], value=helper.make_tensor("z", TensorProto.INT64,
                                                                                              [1], [0])),
                 helper.make_node("Gather", ["table", "idx"], ["big"], axis=0)]
        inits, shape = [shape_of("s1", [4, 2 ** min(a, 22)]), shape_of("s2", [2 ** b])], (2 ** b, 2 ** min(a, 22))
        total = 4 * 4 * 2 ** min(a, 22) + 8 * 2 ** b + 4 * 2 ** (b + min(a, 22))
    nodes.append(helper.make_node("Add", ["x", "big"], ["y"]) if case["live"] else helper.make_node("Identity",
                                                                                                    ["x"], ["y"]))
    graph = helper.make_graph(nodes, "bomb", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)], inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), shape, total


def test_onnx_folding_bombs_are_refused_within_the_budget(tmp_path):
    """Small models whose constants fold to up to 2^40 numbers, imported in one child
    process with a 1 GiB address-space limit and one BLAS thread: dead values are never
    computed, values over the budget (64 MiB here) are refused by node, the rest fold."""
    pytest.importorskip("onnx")
    import json
    import subprocess
    import sys
    import textwrap

    import onnx

    cases = []

    @FUZZ
    @given(bomb_case)
    def collect(case):
        model, shape, total = _bomb(case)
        path = tmp_path / f"bomb{len(cases)}.onnx"
        onnx.save(model, path)
        cases.append((case, shape, total, str(path)))

    collect()
    code = textwrap.dedent(f"""
        import json, resource, sys
        resource.setrlimit(resource.RLIMIT_AS, (1 << 30, 1 << 30))
        resource.setrlimit(resource.RLIMIT_CPU, (120, 120))
        import numpy as np
        from nprnn.onnx import import_onnx
        def hwm():
            return int([l for l in open("/proc/self/status") if l.startswith("VmHWM")][0].split()[1]) // 1024
        for path in json.load(open({str(tmp_path / "cases.json")!r})):
            try:
                y = import_onnx(path)(np.ones(1, np.float32))
                out = {{"ok": list(y.shape), "values": np.unique(y)[:3].tolist()}}
            except Exception as exc:
                out = {{"error": type(exc).__name__ + ": " + str(exc)}}
            out["peak_mib"] = hwm()
            print(json.dumps(out), flush=True)
    """)
    (tmp_path / "cases.json").write_text(json.dumps([p for *_, p in cases]))
    env = dict(os.environ, OPENBLAS_NUM_THREADS="1", OMP_NUM_THREADS="1")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=600)
    if done.returncode < 0:
        COUNTS["crashes"] += 1  # (killed by a signal)
    assert done.returncode == 0, done.stderr[-2000:]
    results = [json.loads(line) for line in done.stdout.splitlines()]
    assert len(results) == len(cases)
    budget = 64 << 20
    for (case, shape, total, _), res in zip(cases, results):
        if not case["live"]:
            assert res.get("ok") == [1] and res["values"] == [1], (case, res)
            COUNTS["folding bombs: dead value, never computed"] += 1
        elif total > budget:
            assert "beyond what nprnn folds for this model" in res.get("error", ""), (case, res)
            COUNTS["folding bombs: over the budget, refused by node"] += 1
        else:
            assert "error" not in res, (case, res)
            assert tuple(res["ok"]) == tuple(np.broadcast_shapes((1,), shape)), (case, res)
            assert res["values"] == ([2] if case["op"] == "Expand" else [1]), (case, res)  # x = 1 plus the fill
            COUNTS["folding bombs: within the budget, folded and run"] += 1
    peak = max(r["peak_mib"] for r in results)
    COUNTS["folding bombs: peak memory of the child (MiB)"] = peak
    assert peak < 600, f"the bombs took {peak} MiB"


# (command, flag) -> which values are in range: "pos" finite > 0, "int+" integer > 0, "unit" in [0, 1),
# ("upto", n) integer in [0, n], "proj" integer in [0, hidden size 4)
CLI_FLAGS = {
    ("train", "--lr"): "pos", ("train", "--clip"): "pos", ("train", "--dropout"): "unit",
    ("train", "--max-text-mb"): "pos", ("train", "--hidden-size"): "int+", ("train", "--num-layers"): "int+",
    ("train", "--embed-dim"): "int+", ("train", "--batch-size"): "int+", ("train", "--seq-len"): "int+",
    ("train", "--eval-every"): "int+", ("train", "--ckpt-every"): "int+", ("train", "--sample-len"): ("upto", 100_000),
    ("generate", "--length"): ("upto", 10_000_000), ("generate", "--temperature"): "pos",
    ("generate", "--max-read-mb"): "pos", ("explain", "--batch"): "int+", ("explain", "--seq-len"): "int+",
    ("explain", "--input-size"): "int+", ("explain", "--hidden-size"): "int+", ("explain", "--num-layers"): "int+",
    ("explain", "--proj-size"): "proj",
}
CLI_VALUES = ["nan", "inf", "-inf", "-1", "0", "1", "3", "0.5", "1e-3", "abc", "", "1e30", "99999999999999999999"]


def _in_range(rule, text):
    import math

    try:
        v = float(text)
    except ValueError:
        return False
    if rule == "pos":
        return math.isfinite(v) and v > 0
    if rule == "unit":
        return 0 <= v < 1
    whole = text.lstrip("-").isdigit()
    if rule == "int+":
        return whole and int(text) > 0
    if rule == "proj":
        return whole and 0 <= int(text) < 4
    return whole and 0 <= int(text) <= rule[1]


def test_cli_numeric_flags_with_any_value_refuse_in_one_line_or_run(tmp_path_factory):
    """NaN, infinities, negatives, zero, fractions, words, empty strings and huge numbers
    in every numeric flag: out of range is refused in one line (argparse's or ours), in
    range runs (or, when huge, is refused by a size check that names the memory), never a
    traceback, never a silent acceptance."""
    pytest.importorskip("safetensors")
    import contextlib

    from nprnn.cli import main

    tmp = tmp_path_factory.mktemp("cli")
    (tmp / "text.txt").write_text("abcd efgh " * 20)
    quick = {"train": ["train", "--text", str(tmp / "text.txt"), "--steps", "1", "--hidden-size", "4", "--embed-dim",
                       "2", "--batch-size", "2", "--seq-len", "4", "--sample-len", "0", "--no-progress",
                       "--checkpoint", "", "--eval-every", "1"],
             "generate": ["generate", "--checkpoint", str(tmp / "ck.safetensors"), "--length", "5", "--seed", "0",
                          "--prompt", "ab"],
             "explain": ["explain", "lstm", "--input-size", "3", "--hidden-size", "4"]}
    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
        assert main(quick["train"][:-2] + ["--checkpoint", str(tmp / "ck.safetensors"), "--ckpt-every", "1"]) == 0
    case = st.tuples(st.sampled_from(sorted(CLI_FLAGS)), st.sampled_from(CLI_VALUES))

    def check(pair):
        (command, flag), value = pair
        argv = quick[command] + [f"{flag}={value}"]
        out, err = io.StringIO(), io.StringIO()
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            try:
                code = main(argv)
            except SystemExit as exc:  # argparse: usage, then one "error:" line
                code = exc.code
        message = err.getvalue().strip().splitlines()
        assert "Traceback" not in err.getvalue(), (argv, err.getvalue())
        ok = _in_range(CLI_FLAGS[(command, flag)], value)
        if code == 0:
            assert ok, f"{argv}: accepted a value out of range"
            COUNTS["CLI flags: in range, ran"] += 1
            COMPARED["CLI flags"] += 1
            return
        assert code == 2 and message and "error: " in message[-1], (argv, code, err.getvalue())
        if ok:  # in range, refused: only by a size check, which names the memory (or the file limit)
            assert "GiB of memory" in message[-1] or "at most" in message[-1] or "--max-read-mb" in message[-1], \
                (argv, message[-1])
            COUNTS["CLI flags: in range but too large, refused by a size check"] += 1
        else:
            assert flag in message[-1] or flag.lstrip("-").replace("-", "_") in message[-1], (argv, message[-1])
            COUNTS["CLI flags: out of range, refused in one line naming the flag"] += 1
        COMPARED["CLI flags"] += 1

    _campaign("CLI flags", case, check, minimum=1)


@pytest.mark.parametrize("source", ["fifo", "chardev"])
@pytest.mark.parametrize("limit", ["1", "8"])
def test_endless_text_inputs_end_at_the_limit_in_a_bounded_child(source, limit, tmp_path):
    """``nprnn train --text`` on an input without end: a FIFO fed for ever, or a /dev/zero
    twin made in tmp_path (root only) -- in a child with a 1 GiB address-space limit."""
    import resource
    import subprocess
    import sys
    import threading
    import time

    from test_cli import endless_fifo

    path = tmp_path / "endless.txt"
    stop = threading.Event()
    if source == "fifo":
        stop = endless_fifo(path)
    elif not _make_node("chardev", path, tmp_path) or not os.path.exists(path):
        pytest.skip("making a character device needs root")
    else:
        os.remove(path)
        os.mknod(path, 0o444 | __import__("stat").S_IFCHR, os.makedev(1, 5))  # /dev/zero's numbers

    def bound():
        resource.setrlimit(resource.RLIMIT_AS, (1 << 30, 1 << 30))

    start = time.perf_counter()
    try:
        done = subprocess.run([sys.executable, "-m", "nprnn", "train", "--text", str(path), "--max-text-mb", limit,
                               "--checkpoint", ""], capture_output=True, text=True, timeout=60, preexec_fn=bound)
    finally:
        stop.set()
    took = time.perf_counter() - start
    assert done.returncode == 2 and f"larger than --max-text-mb {limit} MiB (or endless)" in done.stderr, done.stderr
    assert took < 30
    COUNTS["endless inputs: ended at the limit with one line"] += 1

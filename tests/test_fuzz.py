"""Our own fuzz suite (hypothesis): the layers, the cells and the packing utilities fed
arbitrary shapes and values, against PyTorch, and ``load_state_dict`` fed damaged state
dicts.  Each case must end in one of two ways: one of our clean exceptions (ValueError,
TypeError or RuntimeError, with our message), or the same result as PyTorch -- never a
result where PyTorch refuses, never IndexError, KeyError, AttributeError or a NumPy
broadcast error, never a crash; and a failed load changes nothing.

A bounded profile runs by default (CI); ``NPRNN_FUZZ_EXAMPLES=2000`` runs a longer one.
"""
import os

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


def _outcome(fn):
    """("ok", result) or ("error", exception); a raw error type fails the test at once."""
    try:
        return "ok", fn()
    except RAW as exc:
        raise AssertionError(f"raw {type(exc).__name__} escaped: {exc}") from exc
    except CLEAN as exc:
        return "error", exc


def _agree(got, want):
    """Our clean refusal is always allowed (we refuse some things PyTorch lets through, such as
    lengths that do not match the batch); a result must be PyTorch's, and where PyTorch
    refuses we must refuse too (no silent acceptance)."""
    if got[0] == "error":
        return False
    assert want[0] == "ok", f"nprnn accepted what torch refuses: {want[1]!r}"
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

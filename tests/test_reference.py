"""The reference steps (nprnn.functional.reference): checked against finite differences,
then used as the oracle for every fast kernel, compiled and NumPy, step by step."""
import numpy as np
import pytest

import nprnn
from nprnn.functional import native
from nprnn.functional import reference as ref

MODES = [("rnn_tanh", {}), ("rnn_relu", {}), ("lstm", {}), ("lstm", {"proj_size": 3}), ("gru", {})]
IDS = ["rnn_tanh", "rnn_relu", "lstm", "lstmp", "gru"]
LAYER = {"rnn_tanh": ("RNN", {"nonlinearity": "tanh"}), "rnn_relu": ("RNN", {"nonlinearity": "relu"}),
         "lstm": ("LSTM", {}), "gru": ("GRU", {})}


def _params(mode, n_in, H, P, bias, rng):
    G = {"rnn_tanh": 1, "rnn_relu": 1, "lstm": 4, "gru": 3}[mode]
    Hout = P or H
    p = {"weight_ih": rng.standard_normal((G * H, n_in)) * 0.5, "weight_hh": rng.standard_normal((G * H, Hout)) * 0.5}
    if bias:
        p["bias_ih"], p["bias_hh"] = rng.standard_normal(G * H) * 0.3, rng.standard_normal(G * H) * 0.3
    if P:
        p["weight_hr"] = rng.standard_normal((P, H)) * 0.5
    return p


def _state(mode, N, H, P, rng):
    h = rng.standard_normal((N, P or H))
    return (h, rng.standard_normal((N, H))) if mode == "lstm" else (h,)


@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("mode,kw", MODES, ids=IDS)
def test_reference_step_gradients_equal_finite_differences(mode, kw, bias):
    rng = np.random.default_rng(0)
    N, n_in, H, P = 3, 4, 5, kw.get("proj_size", 0)
    p = _params(mode, n_in, H, P, bias, rng)
    x, state = rng.standard_normal((N, n_in)), _state(mode, N, H, P, rng)
    weights = [rng.standard_normal(s.shape) for s in ref.STEPS[mode][0](x, state, p)[0]]
    forward, backward = ref.STEPS[mode]

    def loss(x_, state_, p_):
        return sum(float((w * s).sum()) for w, s in zip(weights, forward(x_, state_, p_)[0]))

    _, cache = forward(x, state, p)
    dx, dstate, dp = backward(tuple(weights), cache)
    _assert_finite_differences(lambda: loss(x, state, p), x, state, p, dx, dstate, dp)


def _numeric(array, loss, eps=1e-6):
    """Central differences of ``loss()`` with respect to each element of ``array`` (changed in place, restored)."""
    grad = np.zeros_like(array)
    for idx in np.ndindex(array.shape):
        old = array[idx]
        array[idx] = old + eps
        up = loss()
        array[idx] = old - eps
        down = loss()
        array[idx] = old
        grad[idx] = (up - down) / (2 * eps)
    return grad


def _assert_finite_differences(loss, x, state, p, dx, dstate, dp):
    np.testing.assert_allclose(dx, _numeric(x, loss), rtol=1e-6, atol=1e-8)
    for k, s in enumerate(state):
        np.testing.assert_allclose(dstate[k], _numeric(s, loss), rtol=1e-6, atol=1e-8)
    assert set(dp) == set(p)
    for name, w in p.items():
        np.testing.assert_allclose(dp[name], _numeric(w, loss), rtol=1e-6, atol=1e-8, err_msg=name)


def _ln_params(rng, kind, n_in, H, P=None, scale=0.5):
    """A layer-norm step's weights, the names issue 26 gives them (LN weights near 1)."""
    G = 4 if kind == "ln_lstm" else 3
    p = {"weight_ih": rng.standard_normal((G * H, n_in)) * scale,
         "weight_hh": rng.standard_normal((G * H, P or H)) * scale}
    widths = (("ln_ih", G * H), ("ln_hh", G * H)) + ((("ln_c", H),) if kind == "ln_lstm" else ())
    for name, width in widths:
        p[name + "_weight"] = 1 + 0.2 * rng.standard_normal(width)
        p[name + "_bias"] = 0.2 * rng.standard_normal(width)
    if P:
        p["weight_hr"] = rng.standard_normal((P, H)) * scale
    return p


@pytest.mark.parametrize("kind, P", [("ln_lstm", None), ("ln_lstm", 3), ("ln_gru", None)])
def test_layer_norm_references_equal_finite_differences(kind, P):
    """The worked example of DESIGN.md: kinds that exist as reference steps only (issue 26
    builds their layers): the layer-norm LSTM, with and without a projection, and GRU."""
    rng = np.random.default_rng(3)
    N, n_in, H = 3, 4, 5
    p = _ln_params(rng, kind, n_in, H, P)
    x = rng.standard_normal((N, n_in))
    state = (rng.standard_normal((N, P or H)),) + ((rng.standard_normal((N, H)),) if kind == "ln_lstm" else ())
    forward, backward = ref.STEPS[kind]
    new, cache = forward(x, state, p)
    weights = tuple(rng.standard_normal(s.shape) for s in new)

    def loss():
        return float(sum((w * s).sum() for w, s in zip(weights, forward(x, state, p)[0])))

    dx, dstate, dp = backward(weights, cache)
    _assert_finite_differences(loss, x, state, p, dx, dstate, dp)
    assert "c_t = LN_c(f_t * c_(t-1) + i_t * g_t)" in ref.equations(ref.ln_lstm_step_forward)
    assert "n_t = tanh(a_n + r_t * b_n)" in ref.equations(ref.ln_gru_step_forward)


@pytest.fixture(params=["native", "numpy"])
def tier(request, config):
    if request.param == "native" and native._native is None:  # (CI builds them: NPRNN_BACKEND=native)
        pytest.skip("the compiled kernels are not built")
    config(backend=request.param)
    return request.param


@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("mode,kw", MODES, ids=IDS)
def test_fast_kernels_equal_the_reference_step_by_step(mode, kw, bias, tier):
    """A one-layer nprnn layer against the reference loop: each step's output, the final
    state, and every gradient (input, initial state, weights), in float64."""
    rng = np.random.default_rng(1)
    T, N, n_in, H, P = 6, 4, 3, 5, kw.get("proj_size", 0)
    name, extra = LAYER[mode]
    layer = getattr(nprnn, name)(n_in, H, bias=bias, dtype=np.float64, **extra, **kw)
    p = _params(mode, n_in, H, P, bias, rng)
    layer.load_state_dict({k + "_l0": v for k, v in p.items()})
    x, state = rng.standard_normal((T, N, n_in)), _state(mode, N, H, P, rng)
    hx = tuple(s[None] for s in state) if mode == "lstm" else state[0][None]
    out, final = layer(x, hx)
    want_out, want_final, caches = ref.scan_forward(mode, x, state, p)
    for t in range(T):
        np.testing.assert_allclose(out[t], want_out[t], rtol=1e-12, atol=1e-13, err_msg=f"step {t}")
    finals = final if isinstance(final, tuple) else (final,)
    for got, want in zip(finals, want_final):
        np.testing.assert_allclose(got[0], want, rtol=1e-12, atol=1e-13)
    g_out = rng.standard_normal(out.shape)
    g_final = [rng.standard_normal(s.shape) for s in want_final]
    layer.zero_grad()
    g_in, g_hx = layer.backward(g_out, tuple(g[None] for g in g_final) if mode == "lstm" else g_final[0][None])
    want_dx, want_dstate, want_dp = ref.scan_backward(mode, g_out, tuple(g_final), caches)
    np.testing.assert_allclose(g_in, want_dx, rtol=1e-10, atol=1e-12)
    for got, want in zip(g_hx if isinstance(g_hx, tuple) else (g_hx,), want_dstate):
        np.testing.assert_allclose(got[0], want, rtol=1e-10, atol=1e-12)
    for k, v in want_dp.items():
        np.testing.assert_allclose(layer.grads[k + "_l0"], v, rtol=1e-10, atol=1e-12, err_msg=k)


@pytest.mark.parametrize("mode", ["rnn_tanh", "lstm", "gru"])
def test_cells_equal_the_reference_step(mode, tier):
    rng = np.random.default_rng(2)
    N, n_in, H = 3, 4, 5
    name = {"rnn_tanh": "RNNCell", "lstm": "LSTMCell", "gru": "GRUCell"}[mode]
    cell = getattr(nprnn, name)(n_in, H, dtype=np.float64)
    p = _params(mode, n_in, H, 0, True, rng)
    cell.load_state_dict(p)
    x, state = rng.standard_normal((N, n_in)), _state(mode, N, H, 0, rng)
    got = cell(x, state if mode == "lstm" else state[0])
    want, cache = ref.STEPS[mode][0](x, state, p)
    for g, w in zip(got if isinstance(got, tuple) else (got,), want):
        np.testing.assert_allclose(g, w, rtol=1e-12, atol=1e-13)
    dstate = tuple(rng.standard_normal(s.shape) for s in want)
    cell.zero_grad()
    g_in, g_state = cell.backward(dstate if mode == "lstm" else dstate[0])
    dx, want_dstate, dp = ref.STEPS[mode][1](dstate, cache)
    np.testing.assert_allclose(g_in, dx, rtol=1e-10, atol=1e-12)
    for g, w in zip(g_state if isinstance(g_state, tuple) else (g_state,), want_dstate):
        np.testing.assert_allclose(g, w, rtol=1e-10, atol=1e-12)
    for k, v in dp.items():
        np.testing.assert_allclose(cell.grads[k], v, rtol=1e-10, atol=1e-12, err_msg=k)


def test_layer_docstrings_show_the_reference_equations_and_their_examples_run():
    """help(nprnn.LSTM) shows the reference's equations (written once, there) and
    examples that run as shown."""
    import doctest

    for cls, step in ((nprnn.RNN, ref.rnn_step_forward), (nprnn.LSTM, ref.lstm_step_forward),
                      (nprnn.GRU, ref.gru_step_forward)):
        assert cls.__doc__ and all(line in cls.__doc__ for line in ref.equations(step)), cls.__name__
        runner = doctest.DocTestRunner(optionflags=doctest.NORMALIZE_WHITESPACE)
        for test in doctest.DocTestFinder(recurse=False).find(cls, globs={"np": np, cls.__name__: cls}):
            runner.run(test)
        assert runner.summarize(verbose=False).attempted >= 3
        assert runner.summarize(verbose=False).failed == 0, cls.__name__


@pytest.mark.torch
@pytest.mark.parametrize("kind, P", [("ln_lstm", None), ("ln_lstm", 3), ("ln_gru", None)])
def test_layer_norm_references_equal_torch(kind, P):
    """The layer-norm steps as torch's autograd computes them: custom_lstms.py's
    LayerNormLSTMCell (with nn.LSTM's projection), and the GRU arranged as Haste's
    LayerNormGRU with nn.GRU's gates, written here as a loop of torch operations."""
    import torch

    rng = np.random.default_rng(4)
    N, n_in, H = 3, 4, 5
    p = _ln_params(rng, kind, n_in, H, P, scale=1.0)
    x = rng.standard_normal((N, n_in))
    state = (rng.standard_normal((N, P or H)),) + ((rng.standard_normal((N, H)),) if kind == "ln_lstm" else ())
    new, cache = ref.STEPS[kind][0](x, state, p)
    t = {k: torch.tensor(v, requires_grad=True) for k, v in p.items()}
    xt = torch.tensor(x, requires_grad=True)
    st = [torch.tensor(s, requires_grad=True) for s in state]

    def ln(a, name):
        return torch.nn.functional.layer_norm(a, a.shape[-1:], t[name + "_weight"], t[name + "_bias"], 1e-5)

    a, b = ln(xt @ t["weight_ih"].t(), "ln_ih"), ln(st[0] @ t["weight_hh"].t(), "ln_hh")
    if kind == "ln_lstm":
        i, f, g, o = (a + b).chunk(4, 1)
        i, f, g, o = torch.sigmoid(i), torch.sigmoid(f), torch.tanh(g), torch.sigmoid(o)
        cy = ln(f * st[1] + i * g, "ln_c")
        hy = o * torch.tanh(cy)
        outs = (hy @ t["weight_hr"].t() if P else hy, cy)
    else:
        (a_r, a_z, a_n), (b_r, b_z, b_n) = a.chunk(3, 1), b.chunk(3, 1)
        r, z = torch.sigmoid(a_r + b_r), torch.sigmoid(a_z + b_z)
        n = torch.tanh(a_n + r * b_n)
        outs = ((1 - z) * n + z * st[0],)
    for got, want in zip(new, outs):
        np.testing.assert_allclose(got, want.detach().numpy(), rtol=1e-12, atol=1e-13)
    ws = [rng.standard_normal(o.shape) for o in new]
    sum((o * torch.from_numpy(w)).sum() for o, w in zip(outs, ws)).backward()
    dx, dstate, dp = ref.STEPS[kind][1](tuple(ws), cache)
    assert set(dp) == set(p)
    for got, want in [(dx, xt.grad)] + list(zip(dstate, (s.grad for s in st))) + [(dp[k], t[k].grad) for k in p]:
        np.testing.assert_allclose(got, want.numpy(), rtol=1e-10, atol=1e-12)

"""Finite-difference checks (float64, central differences) of every gradient."""
import numpy as np
import pytest

import nprnn


def _loss_and_grads(mod, x, hx, g_out, g_states, reseed=None):
    """Scalar loss sum(out * g_out) + sum(state * g_state) and its analytic gradients."""
    if reseed is not None:
        mod._rng = np.random.default_rng(reseed)
    y = mod(x, hx)
    if isinstance(mod, nprnn.RNNBase):
        out, st = y
        states = list(st) if isinstance(st, tuple) else [st]
        loss = float(np.sum(out * g_out))
    else:
        states = list(y) if isinstance(y, tuple) else [y]
        loss = 0.0
    loss += sum(float(np.sum(s * g)) for s, g in zip(states, g_states))
    return loss


def _numeric(f, arr, eps=1e-6):
    grad = np.zeros_like(arr)
    it = np.nditer(arr, flags=["multi_index"])
    for _ in it:
        i = it.multi_index
        old = arr[i]
        with nprnn.writable(arr):  # a parameter changes only here (and the layers see the change)
            arr[i] = old + eps
        fp = f()
        with nprnn.writable(arr):
            arr[i] = old - eps
        fm = f()
        with nprnn.writable(arr):
            arr[i] = old
        grad[i] = (fp - fm) / (2 * eps)
    return grad


def check(mod, x, hx, reseed=None):
    rng = np.random.default_rng(5)
    mod.train()
    y = mod(x, hx)
    if isinstance(mod, nprnn.RNNBase):
        out, st = y
        g_out = rng.standard_normal(out.shape)
    else:
        st, g_out = y, None
    states = list(st) if isinstance(st, tuple) else [st]
    g_states = [rng.standard_normal(s.shape) for s in states]
    mod.zero_grad()
    _loss_and_grads(mod, x, hx, g_out, g_states, reseed)
    if isinstance(mod, nprnn.RNNBase):
        gx, ghx = mod.backward(g_out, tuple(g_states) if len(g_states) == 2 else g_states[0])
    else:
        gx, ghx = mod.backward(tuple(g_states) if len(g_states) == 2 else g_states[0])
    analytic = {"x": gx}
    hx_list = list(hx) if isinstance(hx, tuple) else [hx]
    ghx_list = list(ghx) if isinstance(ghx, tuple) else [ghx]
    for k, g in enumerate(ghx_list[: len(hx_list)]):
        analytic[f"hx{k}"] = g
    analytic.update({k: v.copy() for k, v in mod.grads.items()})

    if not isinstance(mod, nprnn.RNNBase):
        mod.eval()  # a cell has no dropout: eval computes the same and keeps no record per call

    def f():
        return _loss_and_grads(mod, x, hx, g_out, g_states, reseed)

    targets = {"x": x}
    targets.update({f"hx{k}": h for k, h in enumerate(hx_list)})
    targets.update(dict(mod.named_parameters()))
    for name, arr in targets.items():
        num = _numeric(f, arr)
        np.testing.assert_allclose(analytic[name], num, rtol=1e-5, atol=1e-7, err_msg=name)


def _state(rng, *shapes):
    arrs = tuple(rng.standard_normal(s) for s in shapes)
    return arrs if len(arrs) > 1 else arrs[0]


@pytest.mark.parametrize("kind,kw", [
    ("RNNCell", {"nonlinearity": "tanh"}), ("RNNCell", {"nonlinearity": "relu"}), ("LSTMCell", {}), ("GRUCell", {}),
])
def test_cells(kind, kw):
    rng = np.random.default_rng(0)
    mod = getattr(nprnn, kind)(3, 4, dtype=np.float64, seed=1, **kw)
    x = rng.standard_normal((2, 3))
    hx = _state(rng, (2, 4), (2, 4)) if kind == "LSTMCell" else _state(rng, (2, 4))
    check(mod, x, hx)


@pytest.mark.parametrize("kind,kw", [
    ("RNN", {"nonlinearity": "tanh"}), ("RNN", {"nonlinearity": "relu"}), ("LSTM", {}), ("LSTM", {"proj_size": 2}),
    ("GRU", {}),
])
def test_multilayer_bidirectional(kind, kw):
    rng = np.random.default_rng(1)
    mod = getattr(nprnn, kind)(3, 4, num_layers=2, bidirectional=True, batch_first=True, dtype=np.float64, seed=2, **kw)
    x = rng.standard_normal((2, 3, 3))
    P = kw.get("proj_size", 4)
    hx = _state(rng, (4, 2, P), (4, 2, 4)) if kind == "LSTM" else _state(rng, (4, 2, 4))
    check(mod, x, hx)


def test_dropout_backward():
    rng = np.random.default_rng(3)
    mod = nprnn.GRU(3, 4, num_layers=3, dropout=0.4, dtype=np.float64, seed=2)
    x = rng.standard_normal((3, 2, 3))
    check(mod, x, rng.standard_normal((3, 2, 4)), reseed=11)

"""Every state over time (issue 26, pytorch/pytorch#31423): ``layer(x, hx,
return_states=True)`` returns each layer's and direction's ``h`` (and for LSTMs ``c``) at
every step, and ``backward(..., grad_states=...)`` takes their gradients.

The oracle is a PyTorch loop over time with autograd, written here from the equations for
RNN, LSTM (with projections), GRU and the layer-norm kinds: the states, every gradient
(input, initial states, parameters) of a loss that reads output, final states and the
states over time."""
import numpy as np
import pytest
from test_layernorm import torch_ln_gru_step, torch_ln_lstm_step

import nprnn

try:
    import torch
except ImportError:  # the tests that need it are marked and skip
    torch = None


def torch_rnn_step(x, h, c, p, act="tanh"):
    a = x @ p["weight_ih"].T + p["bias_ih"] + h @ p["weight_hh"].T + p["bias_hh"]
    return (torch.tanh(a) if act == "tanh" else torch.relu(a)), None


def torch_lstm_step(x, h, c, p):
    i, f, g, o = (x @ p["weight_ih"].T + p["bias_ih"] + h @ p["weight_hh"].T + p["bias_hh"]).chunk(4, 1)
    c = torch.sigmoid(f) * c + torch.sigmoid(i) * torch.tanh(g)
    h = torch.sigmoid(o) * torch.tanh(c)
    return (h @ p["weight_hr"].T if "weight_hr" in p else h), c


def torch_gru_step(x, h, c, p):
    H = h.shape[-1]
    a, b = x @ p["weight_ih"].T + p["bias_ih"], h @ p["weight_hh"].T + p["bias_hh"]
    r = torch.sigmoid(a[:, :H] + b[:, :H])
    z = torch.sigmoid(a[:, H : 2 * H] + b[:, H : 2 * H])
    n = torch.tanh(a[:, 2 * H :] + r * b[:, 2 * H :])
    return (1 - z) * n + z * h, None


STEPS = {"RNN": torch_rnn_step, "LSTM": torch_lstm_step, "GRU": torch_gru_step,
         "LayerNormLSTM": torch_ln_lstm_step, "LayerNormGRU": torch_ln_gru_step}
CELLED = ("LSTM", "LayerNormLSTM")


def torch_every(kind, x, h0, c0, params, lengths, num_layers, D):
    """Each sequence alone: outputs (L, N, D*H_out), h_n, c_n and every layer-direction's
    states (num_layers*D, L, N, .), zeros past each end."""
    step = STEPS[kind]
    L, N = x.shape[:2]
    rows = num_layers * D
    hs, cs = [[None] * N for _ in range(rows)], [[None] * N for _ in range(rows)]
    h_all, c_all = [[None] * N for _ in range(rows)], [[None] * N for _ in range(rows)]
    outs = []

    def pad(seq, n):
        return torch.cat([seq, torch.zeros((L - n,) + seq.shape[1:], dtype=seq.dtype)])

    for b in range(N):
        n = int(lengths[b])
        inp = x[:n, b : b + 1]
        for layer in range(num_layers):
            dirs = []
            for d in range(D):
                idx = layer * D + d
                h = h0[idx, b : b + 1]
                c = None if c0 is None else c0[idx, b : b + 1]
                got_h, got_c = [None] * n, [None] * n
                for t in (range(n - 1, -1, -1) if d else range(n)):
                    h, c = step(inp[t], h, c, params[idx])
                    got_h[t], got_c[t] = h, c
                hs[idx][b], cs[idx][b] = h, c
                h_all[idx][b] = pad(torch.stack(got_h), n)
                if c0 is not None:
                    c_all[idx][b] = pad(torch.stack(got_c), n)
                dirs.append(torch.stack(got_h))
            inp = torch.cat(dirs, dim=2)
        outs.append(pad(inp, n))
    def over_time(grid):  # (rows, L, N, .)
        return torch.stack([torch.cat(row, dim=1) for row in grid])

    return (torch.cat(outs, dim=1), torch.stack([torch.cat(r) for r in hs]),
            None if c0 is None else torch.stack([torch.cat(r) for r in cs]), over_time(h_all),
            None if c0 is None else over_time(c_all))


@pytest.mark.torch
@pytest.mark.parametrize("seed", range(100))
def test_states_and_their_gradients_equal_the_pytorch_loop(seed):
    rng = np.random.default_rng(seed)
    kind = ("RNN", "LSTM", "GRU", "LayerNormLSTM", "LayerNormGRU")[seed % 5]
    NL, D = int(rng.integers(1, 4)), int(rng.integers(1, 3))
    H_in, H, N, L = int(rng.integers(1, 5)), int(rng.integers(2, 6)), int(rng.integers(1, 4)), int(rng.integers(1, 6))
    proj = int(rng.integers(1, H)) if kind in CELLED and rng.random() < 0.4 else 0
    batch_first, use_lengths, dt = bool(rng.integers(2)), bool(rng.integers(2)), np.float64
    kw = dict(num_layers=NL, bidirectional=D == 2, batch_first=batch_first, dtype=dt)
    if proj:
        kw["proj_size"] = proj
    layer = getattr(nprnn, kind)(H_in, H, seed=seed, **kw).train()
    P = proj or H
    lengths = rng.integers(1, L + 1, N) if use_lengths else np.full(N, L)
    x = rng.standard_normal((L, N, H_in))
    h0 = rng.standard_normal((NL * D, N, P))
    c0 = rng.standard_normal((NL * D, N, H)) if kind in CELLED else None
    hx = (h0, c0) if c0 is not None else h0
    bf = (lambda a: a.transpose(1, 0, 2)) if batch_first else (lambda a: a)
    out, state, every = layer(bf(x), hx, lengths=lengths if use_lengths else None, return_states=True)
    lstm = kind in CELLED
    h_all, c_all = every if lstm else (every, None)
    ev = (lambda a: a.transpose(0, 2, 1, 3)) if batch_first else (lambda a: a)
    assert h_all.shape == ev(np.empty((NL * D, L, N, P))).shape
    g_out, g_h, g_hall = rng.standard_normal(out.shape), rng.standard_normal(h0.shape), rng.standard_normal(h_all.shape)
    g_c = rng.standard_normal(c0.shape) if lstm else None
    g_call = rng.standard_normal(c_all.shape) if lstm else None
    layer.zero_grad()
    dx, dhx = layer.backward(g_out, (g_h, g_c) if lstm else g_h, (g_hall, g_call) if lstm else g_hall)

    tt = {k: torch.tensor(v, requires_grad=True) for k, v in layer.state_dict().items()}
    params = []
    for idx in range(NL * D):
        suffix = f"_l{idx // D}" + ("_reverse" if idx % D else "")
        params.append({k[: -len(suffix)]: v for k, v in tt.items() if k.endswith(suffix)})
    xt, h0t = torch.tensor(x, requires_grad=True), torch.tensor(h0, requires_grad=True)
    c0t = torch.tensor(c0, requires_grad=True) if lstm else None
    o_t, h_t, c_t, hall_t, call_t = torch_every(kind, xt, h0t, c0t, params, lengths, NL, D)
    loss = ((o_t * torch.tensor(bf(g_out))).sum() + (h_t * torch.tensor(g_h)).sum()
            + (hall_t * torch.tensor(ev(g_hall))).sum())
    if lstm:
        loss = loss + (c_t * torch.tensor(g_c)).sum() + (call_t * torch.tensor(ev(g_call))).sum()
    loss.backward()
    tol = dict(rtol=1e-7, atol=1e-9)
    np.testing.assert_allclose(ev(h_all), hall_t.detach().numpy(), **tol)
    if lstm:
        np.testing.assert_allclose(ev(c_all), call_t.detach().numpy(), **tol)
    np.testing.assert_allclose(bf(out), o_t.detach().numpy(), **tol)
    np.testing.assert_allclose(bf(dx), xt.grad.numpy(), **tol)
    np.testing.assert_allclose(dhx[0] if lstm else dhx, h0t.grad.numpy(), **tol)
    if lstm:
        np.testing.assert_allclose(dhx[1], c0t.grad.numpy(), **tol)
    for name, value in tt.items():
        np.testing.assert_allclose(layer.grads[name], value.grad.numpy(), err_msg=name, **tol)


# ------------------------------------------------------------------------- no PyTorch needed
@pytest.mark.parametrize("kind", ["LSTM", "GRU", "LayerNormLSTM"])
def test_packed_and_unbatched_states_are_the_padded_ones_rearranged(kind):
    rng = np.random.default_rng(1)
    layer = getattr(nprnn, kind)(3, 4, num_layers=2, bidirectional=True, seed=0).eval()
    x = rng.standard_normal((5, 3, 3)).astype(np.float32)
    lengths = np.array([5, 2, 4])
    _, _, padded = layer(x, lengths=lengths, return_states=True)
    packed = nprnn.pack_padded_sequence(x, lengths, enforce_sorted=False)
    _, _, rows = layer(packed, return_states=True)
    padded, rows = (padded, rows) if isinstance(padded, tuple) else ((padded,), (rows,))
    for a, r in zip(padded, rows):
        assert r.shape == (4, int(lengths.sum()), a.shape[-1])
        for idx in range(4):
            back, _ = nprnn.pad_packed_sequence(nprnn.PackedSequence(r[idx], packed.batch_sizes, packed.sorted_indices,
                                                                     packed.unsorted_indices), total_length=5)
            np.testing.assert_allclose(back, a[idx], rtol=1e-6, atol=1e-6)
        assert np.all(a[:, 2:, 1] == 0) and np.all(a[:, 4:, 2] == 0)  # zeros past each end
        _, _, one = layer(x[: lengths[1], 1], return_states=True)
        one = one if isinstance(one, tuple) else (one,)
    for a, o in zip(padded, one):
        np.testing.assert_allclose(o, a[:, : lengths[1], 1], rtol=1e-5, atol=1e-6)


def test_states_are_taken_before_the_dropout_between_layers():
    rng = np.random.default_rng(2)
    lstm = nprnn.LSTM(3, 4, num_layers=2, dropout=0.5, seed=0).train()
    bottom = nprnn.LSTM(3, 4, seed=1)
    bottom.load_state_dict({k: v for k, v in lstm.state_dict().items() if k.endswith("_l0")})
    x = rng.standard_normal((6, 2, 3)).astype(np.float32)
    out, _, (h_all, c_all) = lstm(x, return_states=True)
    np.testing.assert_allclose(h_all[0], bottom(x)[0], rtol=1e-6, atol=1e-6)
    np.testing.assert_array_equal(h_all[1], out)
    lstm.backward(np.ones_like(out), grad_states=(np.ones_like(h_all), None))


def test_grad_states_refusals():
    gru = nprnn.GRU(3, 4, num_layers=2, seed=0).train()
    x = np.zeros((5, 2, 3), np.float32)
    out, _ = gru(x)
    with pytest.raises(ValueError, match="return_states=True"):
        gru.backward(np.ones_like(out), grad_states=np.ones((2, 5, 2, 4), np.float32))
    out, _, h_all = gru(x, return_states=True)
    with pytest.raises(ValueError, match=r"grad_states has shape \(2, 5, 4\), expected \(2, 5, 2, 4\)"):
        gru.backward(np.ones_like(out), grad_states=np.ones((2, 5, 4), np.float32))
    gru.backward(np.ones_like(out), grad_states=np.ones_like(h_all))  # the record stayed for this one
    lstm = nprnn.LSTM(3, 4).train()
    out, _, _ = lstm(x, return_states=True)
    with pytest.raises(TypeError, match="pair"):
        lstm.backward(np.ones_like(out), grad_states=np.ones((1, 5, 2, 4), np.float32))
    with pytest.raises(TypeError, match="return_states"):
        lstm(x, return_states="yes")

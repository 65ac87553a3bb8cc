"""Identities that must hold whatever PyTorch does: layer == loop over the cell, hx=None == zeros,
float32 stays float32, eval-mode dropout is the identity, masks come from the seed, the seed's identities."""
import numpy as np
import pytest

import nprnn

PAIRS = [("RNN", "RNNCell", {"nonlinearity": "relu"}), ("RNN", "RNNCell", {}), ("LSTM", "LSTMCell", {}),
         ("GRU", "GRUCell", {})]


@pytest.mark.parametrize("layer_name,cell_name,kw", PAIRS)
def test_layer_equals_loop_over_cell(layer_name, cell_name, kw):
    rng = np.random.default_rng(0)
    layer = getattr(nprnn, layer_name)(3, 5, dtype=np.float64, seed=1, **kw)
    cell = getattr(nprnn, cell_name)(3, 5, dtype=np.float64, seed=2, **kw)
    cell.load_state_dict({k[:-3]: v for k, v in layer.state_dict().items()})  # weight_ih_l0 -> weight_ih
    L, N = 6, 2
    x = rng.standard_normal((L, N, 3))
    lstm = layer_name == "LSTM"
    h0 = rng.standard_normal((1, N, 5))
    c0 = rng.standard_normal((1, N, 5))
    out, hn = layer(x, (h0, c0) if lstm else h0)
    state = (h0[0], c0[0]) if lstm else h0[0]
    outs = []
    for t in range(L):
        state = cell(x[t], state)
        outs.append(state[0] if lstm else state)
    np.testing.assert_allclose(out, np.stack(outs), rtol=1e-12, atol=1e-14)
    # backward: the layer's BPTT equals calling the cell's backward in reverse order
    g_out = rng.standard_normal(out.shape)
    g_h = rng.standard_normal((1, N, 5))
    g_c = rng.standard_normal((1, N, 5))
    gx, ghx = layer.backward(g_out, (g_h, g_c) if lstm else g_h)
    dh, dc = g_h[0], g_c[0]
    dxs = [None] * L
    for t in reversed(range(L)):
        if lstm:
            dxs[t], (dh, dc) = cell.backward((dh + g_out[t], dc))
        else:
            dxs[t], dh = cell.backward(dh + g_out[t])
    np.testing.assert_allclose(gx, np.stack(dxs), rtol=1e-12, atol=1e-14)
    np.testing.assert_allclose(ghx[0][0] if lstm else ghx[0], dh, rtol=1e-12, atol=1e-14)
    for name, g in cell.grads.items():
        np.testing.assert_allclose(layer.grads[name + "_l0"], g, rtol=1e-12, atol=1e-14)


@pytest.mark.parametrize("name", ["RNN", "LSTM", "GRU"])
def test_hx_none_equals_zeros(name):
    rng = np.random.default_rng(1)
    a = getattr(nprnn, name)(4, 3, num_layers=2, bidirectional=True, dtype=np.float64, seed=3)
    b = getattr(nprnn, name)(4, 3, num_layers=2, bidirectional=True, dtype=np.float64, seed=3)
    x = rng.standard_normal((5, 2, 4))
    zeros = np.zeros((4, 2, 3))
    out_a, hn_a = a(x)
    out_b, hn_b = b(x, (zeros, zeros) if name == "LSTM" else zeros)
    np.testing.assert_array_equal(out_a, out_b)
    g = rng.standard_normal(out_a.shape)
    ga, gha = a.backward(g)
    gb, ghb = b.backward(g)
    np.testing.assert_array_equal(ga, gb)
    np.testing.assert_array_equal(np.asarray(gha), np.asarray(ghb))
    assert np.abs(np.asarray(gha)).sum() > 0  # the gradient of the zero state is returned and real
    for k in a.grads:
        np.testing.assert_array_equal(a.grads[k], b.grads[k])


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("name", ["RNN", "LSTM", "GRU", "RNNCell", "LSTMCell", "GRUCell"])
def test_dtype_is_kept(name, dtype):
    mod = getattr(nprnn, name)(3, 4, dtype=dtype, seed=0)
    rng = np.random.default_rng(0)
    if name.endswith("Cell"):
        x = rng.standard_normal((2, 3)).astype(dtype)
        y = mod(x)
        states = list(y) if isinstance(y, tuple) else [y]
        gx, gh = mod.backward(tuple(states) if len(states) == 2 else states[0])
        arrays = states + [gx] + (list(gh) if isinstance(gh, tuple) else [gh])
    else:
        x = rng.standard_normal((5, 2, 3)).astype(dtype)
        out, hn = mod(x)
        gx, gh = mod.backward(out)
        arrays = [out, gx] + (list(hn) + list(gh) if isinstance(hn, tuple) else [hn, gh])
    arrays += list(mod.grads.values()) + list(mod.parameters())
    for a in arrays:
        assert a.dtype == dtype


def test_eval_mode_dropout_is_identity():
    x = np.random.default_rng(0).standard_normal((4, 2, 3)).astype(np.float32)
    with_dropout = nprnn.LSTM(3, 5, num_layers=3, dropout=0.5, seed=4).eval()
    without = nprnn.LSTM(3, 5, num_layers=3, seed=4).eval()
    np.testing.assert_array_equal(with_dropout(x)[0], without(x)[0])
    # in training mode dropout really changes the result
    with_dropout.train()
    assert not np.allclose(with_dropout(x)[0], without(x)[0])


def test_dropout_masks_reproducible_from_seed():
    x = np.random.default_rng(0).standard_normal((4, 2, 3))
    runs = []
    for seed in (7, 7, 8):
        m = nprnn.GRU(3, 5, num_layers=2, dropout=0.5, dtype=np.float64, seed=seed)
        m.load_state_dict(nprnn.GRU(3, 5, num_layers=2, dtype=np.float64, seed=0).state_dict())
        runs.append(m(x)[0])
    np.testing.assert_array_equal(runs[0], runs[1])
    assert not np.array_equal(runs[0], runs[2])


def test_seed_identities():
    """The seed's examples: shapes, and output[:, -1] == h_n[-1]."""
    rnn = nprnn.RNN(input_size=5, hidden_size=6, num_layers=4, batch_first=True)
    x = np.random.default_rng(0).standard_normal((2, 3, 5)).astype(np.float32)
    h0 = np.random.default_rng(1).standard_normal((4, 2, 6)).astype(np.float32)
    output, hn = rnn(x, h0)
    assert output.shape == (2, 3, 6) and hn.shape == (4, 2, 6)
    np.testing.assert_array_equal(output[:, -1, :], hn[-1, :, :])
    lstm = nprnn.LSTM(input_size=5, hidden_size=10, num_layers=2, batch_first=True)
    output, (hn, cn) = lstm(np.random.default_rng(2).standard_normal((4, 3, 5)).astype(np.float32))
    assert output.shape == (4, 3, 10) and hn.shape == (2, 4, 10) and cn.shape == (2, 4, 10)
    np.testing.assert_array_equal(output[:, -1, :], hn[-1, :, :])


def test_bidirectional_halves():
    gru = nprnn.GRU(5, 8, num_layers=2, bidirectional=True, batch_first=True, seed=0)
    out, hn = gru(np.random.default_rng(0).standard_normal((3, 4, 5)).astype(np.float32))
    np.testing.assert_array_equal(out[:, -1, :8], hn[-2])  # forward direction ends at the last step
    np.testing.assert_array_equal(out[:, 0, 8:], hn[-1])  # reverse direction ends at the first step
    assert not np.allclose(out[:, -1, 8:], hn[-1])


def test_unbatched_equals_batch_of_one():
    m = nprnn.LSTM(3, 4, num_layers=2, bidirectional=True, proj_size=2, dtype=np.float64, seed=0)
    x = np.random.default_rng(0).standard_normal((5, 3))
    out, (h, c) = m(x)
    out1, (h1, c1) = m(x[:, None])
    assert out.shape == (5, 4) and h.shape == (4, 2) and c.shape == (4, 4)
    np.testing.assert_array_equal(out, out1[:, 0])
    np.testing.assert_array_equal(h, h1[:, 0])
    np.testing.assert_array_equal(c, c1[:, 0])


def test_grads_accumulate_until_zero_grad():
    m = nprnn.RNN(3, 4, dtype=np.float64, seed=0)
    x = np.random.default_rng(0).standard_normal((5, 2, 3))
    out, _ = m(x)
    m.backward(np.ones_like(out))
    first = {k: v.copy() for k, v in m.grads.items()}
    out, _ = m(x)
    m.backward(np.ones_like(out))
    for k, v in m.grads.items():
        np.testing.assert_allclose(v, 2 * first[k])
    m.zero_grad()
    assert all(not v.any() for v in m.grads.values())


def test_input_not_modified():
    m = nprnn.LSTM(3, 4, batch_first=True, seed=0)
    x = np.random.default_rng(0).standard_normal((2, 5, 3)).astype(np.float32)
    h0 = np.ones((1, 2, 4), np.float32)
    c0 = np.ones((1, 2, 4), np.float32)
    copies = [a.copy() for a in (x, h0, c0)]
    out, _ = m(x, (h0, c0))
    m.backward(out)
    for a, b in zip((x, h0, c0), copies):
        np.testing.assert_array_equal(a, b)


def test_zero_batch():
    out, hn = nprnn.GRU(3, 4, seed=0)(np.zeros((5, 0, 3), np.float32))
    assert out.shape == (5, 0, 4) and hn.shape == (1, 0, 4)


def test_copy_and_pickle_keep_parameters_and_behaviour():
    import copy
    import pickle

    m = nprnn.GRU(3, 4, num_layers=2, dtype=np.float64, seed=0)
    x = np.random.default_rng(0).standard_normal((5, 2, 3))
    out, _ = m(x)
    for clone in (copy.deepcopy(m), pickle.loads(pickle.dumps(m))):
        with pytest.raises(RuntimeError, match="needs a forward pass"):  # the pending record is not copied
            clone.backward(out)
        np.testing.assert_array_equal(clone(x)[0], out)
        clone.backward(out)
        with nprnn.writable(clone):
            clone.weight_ih_l0[...] = 0  # independent parameters
        assert not np.array_equal(clone(x)[0], out)
    np.testing.assert_array_equal(m(x)[0], out)


def test_copies_and_pickles_carry_parameters_only():
    """As PyTorch's: parameters and settings, not gradients, records or prepared weights; a
    pickle is the size of the parameters (plus a little)."""
    import copy
    import pickle

    from nprnn.layers import Linear

    m = nprnn.LSTM(64, 128, num_layers=2, seed=0)
    out, _ = m(np.ones((5, 2, 64), np.float32))
    m.backward(np.ones_like(out))
    param_bytes = sum(p.nbytes for p in m.parameters())
    assert len(pickle.dumps(m)) < param_bytes * 1.01 + 20_000
    for clone in (copy.deepcopy(m), pickle.loads(pickle.dumps(m))):
        assert all(not g.any() for g in clone.grads.values())
        for name, p in clone.named_parameters():
            assert p.grad is clone.grads[name] and p.grad.shape == p.shape
        clone.train()
        out2, _ = clone(np.ones((5, 2, 64), np.float32))
        clone.backward(np.ones_like(out2))  # gradients accumulate from zero
        for k, g in clone.grads.items():
            np.testing.assert_allclose(g, m.grads[k], rtol=1e-5, atol=1e-6)
    cell = nprnn.GRUCell(3, 4)
    cell(np.ones((2, 3), np.float32))
    with pytest.raises(RuntimeError, match="needs a forward pass"):  # no pending record is pickled
        pickle.loads(pickle.dumps(cell)).backward(np.ones((2, 4), np.float32))
    lin = Linear(3, 2)
    lin(np.ones((2, 3), np.float32))
    with pytest.raises(RuntimeError, match="needs a forward pass"):
        pickle.loads(pickle.dumps(lin)).backward(np.ones((2, 2), np.float32))

"""The diagonal linear scan of issue 29 (``nprnn.functional.linear_scan`` and the fused
minGRU / minLSTM passes of ``functional/linscan.py``) against the recurrence written in
PyTorch here, a loop over time with autograd: outputs, final states and the gradients of
a and b (or of the gate pre-activations), of h_0 and through h_n; packed rows (sequences
ending at different steps), both directions, float64 and float32, both tiers (CI runs the
file once per tier)."""
import numpy as np
import pytest

import nprnn
from nprnn.functional import linear_scan, linear_scan_backward, linscan
from nprnn.functional.runners import SERIAL

try:
    import torch
except ImportError:  # the tests that need it are marked and skip
    torch = None


def _torch_ab(kind, log, u, b=None):
    if kind == "plain":
        return u, b
    H = u.shape[1] // linscan.GATES[kind]
    v = u[:, -H:]
    ht = torch.where(v >= 0, v + 0.5, torch.sigmoid(v)) if log else v
    if kind == "mingru":
        z = torch.sigmoid(u[:, :H])
        return 1 - z, z * ht
    f, i = torch.sigmoid(u[:, :H]), torch.sigmoid(u[:, H : 2 * H])
    return f / (f + i), i / (f + i) * ht


def _torch_scan(a, b, h0, batch_sizes, reverse):
    offsets = np.concatenate([[0], np.cumsum(batch_sizes)[:-1]])
    order = range(len(batch_sizes) - 1, -1, -1) if reverse else range(len(batch_sizes))
    h = [h0[r] for r in range(h0.shape[0])]
    rows = [None] * a.shape[0]
    for t in order:
        for r in range(batch_sizes[t]):
            h[r] = a[offsets[t] + r] * h[r] + b[offsets[t] + r]
            rows[offsets[t] + r] = h[r]
    return torch.stack(rows), torch.stack(h)


def _case(seed):
    rng = np.random.default_rng(seed)
    kind = ("plain", "mingru", "minlstm")[seed % 3]
    log = bool(seed // 3 % 2)
    N, H, L = int(rng.integers(1, 5)), int(rng.integers(1, 40)), int(rng.integers(1, 7))
    lengths = np.sort(rng.integers(1, L + 1, N))[::-1]
    batch_sizes = [int((lengths > t).sum()) for t in range(int(lengths[0]))]
    dt = np.float64 if seed % 4 else np.float32
    return rng, kind, log, H, batch_sizes, bool(rng.integers(2)), dt


@pytest.mark.torch
@pytest.mark.parametrize("seed", range(120))
def test_the_scan_equals_the_pytorch_loop_forward_and_backward(seed):
    rng, kind, log, H, batch_sizes, reverse, dt = _case(seed)
    T, N = sum(batch_sizes), batch_sizes[0]
    u = rng.standard_normal((T, linscan.GATES[kind] * H)).astype(dt) * 2
    if kind == "plain":
        u = rng.uniform(0, 1, (T, H)).astype(dt)
    b = rng.standard_normal((T, H)).astype(dt) if kind == "plain" else None
    h0 = (rng.uniform(0, 1, (N, H)) if log else rng.standard_normal((N, H))).astype(dt)
    dout, dh_n = rng.standard_normal((T, H)).astype(dt), rng.standard_normal((N, H)).astype(dt)
    out, h_n = linscan.scan_rows(kind, log, u, b, h0, batch_sizes, reverse)
    back = linscan.scan_rows_backward(kind, log, u, b, h0, out, dout, dh_n, batch_sizes, reverse)

    ut, h0t = torch.tensor(u, requires_grad=True), torch.tensor(h0, requires_grad=True)
    bt = None if b is None else torch.tensor(b, requires_grad=True)
    a_t, b_t = _torch_ab(kind, log, ut, bt)
    out_t, hn_t = _torch_scan(a_t, b_t, h0t, batch_sizes, reverse)
    ((out_t * torch.tensor(dout)).sum() + (hn_t * torch.tensor(dh_n)).sum()).backward()
    tol = dict(rtol=1e-7, atol=1e-10) if dt == np.float64 else dict(rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(out, out_t.detach().numpy(), **tol)
    np.testing.assert_allclose(h_n, hn_t.detach().numpy(), **tol)
    np.testing.assert_allclose(back[0], ut.grad.numpy(), **tol)
    if kind == "plain":
        np.testing.assert_allclose(back[1], bt.grad.numpy(), **tol)
    np.testing.assert_allclose(back[-1], h0t.grad.numpy(), **tol)


def test_the_public_function_is_the_recurrence_and_its_reverse_scan():
    rng = np.random.default_rng(1)
    a, b = rng.uniform(0, 1, (9, 2, 5)), rng.standard_normal((9, 2, 5))
    h0 = rng.standard_normal((2, 5))
    h = linear_scan(a, b, h0)
    want, state = [], h0
    for t in range(9):
        state = a[t] * state + b[t]
        want.append(state)
    np.testing.assert_allclose(h, np.stack(want), rtol=1e-14)
    np.testing.assert_allclose(linear_scan(a[:, 0], b[:, 0], h0[0]), h[:, 0], rtol=1e-14)  # unbatched
    dout, dh_n = rng.standard_normal(h.shape), rng.standard_normal((2, 5))
    da, db, dh0 = linear_scan_backward(a, h, dout, h0, dh_n)
    g, gs = dh_n.copy(), []
    for t in range(8, -1, -1):  # g_t = dout_t + a_{t+1} g_{t+1}
        g = dout[t] + (g if t == 8 else a[t + 1] * g)
        gs.append(g)
    gs = np.stack(gs[::-1])
    np.testing.assert_allclose(db, gs, rtol=1e-13)
    np.testing.assert_allclose(da, gs * np.concatenate([h0[None], h[:-1]]), rtol=1e-13)
    np.testing.assert_allclose(dh0, a[0] * gs[0], rtol=1e-13)
    with pytest.raises(ValueError, match="a and b must have one shape"):
        linear_scan(a, b[:, :1])
    with pytest.raises(ValueError, match=r"h0 must have shape \(2, 5\)"):
        linear_scan(a, b, np.zeros(5))


def test_one_long_sequence_on_two_threads_equals_one_thread(config):
    """Two threads split the steps into two chunks: the second runs from zero while the first
    runs, keeping the product of its a; the pieces after the first chunk then start from
    (its state + product * the state carried in), summed in another order than one thread's
    recurrence: the states may differ from the one-thread scan's by rounding (within 1e-6
    of their scale; where a is far from 1 they meet it to the bit within a few hundred steps)."""
    config(num_threads=2, min_split_work=0)
    rng = np.random.default_rng(2)
    L, H = 20000, 256
    a = rng.uniform(0.5, 1, (L, 1, H)).astype(np.float32)
    b = rng.standard_normal((L, 1, H)).astype(np.float32)
    two = linear_scan(a, b)
    one = linear_scan(a, b, runner=SERIAL)
    scale = np.abs(one).max()
    np.testing.assert_allclose(two, one, rtol=1e-6, atol=1e-6 * scale)
    g = rng.standard_normal(two.shape).astype(np.float32)
    for x, y in zip(linear_scan_backward(a, two, g), linear_scan_backward(a, one, g, runner=SERIAL)):
        np.testing.assert_allclose(x, y, rtol=1e-6, atol=1e-6 * np.abs(y).max())
    if nprnn.backend() == "native":
        from nprnn.parallel.threads import team_stats

        stats = team_stats()
        assert stats is not None and stats["runs"] > 0  # (the split ran on the team)


@pytest.mark.parametrize("kind", ["plain", "mingru", "minlstm"])
@pytest.mark.parametrize("reverse", [False, True])
@pytest.mark.parametrize("threads, L", [(2, 301), (3, 301), (3, 7), (2, 4)])
def test_the_chunked_scan_equals_the_serial_one_for_every_kind(config, kind, reverse, threads, L):
    """Chunks of steps (a batch whose sequences all run every step) on 2 and 3 threads,
    forward and backward, both directions, against the calling thread alone."""
    config(num_threads=threads, min_split_work=0)
    from nprnn.functional import runners

    rng = np.random.default_rng(7)
    N, H = 3, 40
    T = N * L
    u = rng.standard_normal((T, linscan.GATES[kind] * H)) if kind != "plain" else rng.uniform(0.3, 1, (T, H))
    b = rng.standard_normal((T, H)) if kind == "plain" else None
    h0, dout, dh_n = rng.uniform(0, 1, (N, H)), rng.standard_normal((T, H)), rng.standard_normal((N, H))
    runs = []
    for runner in (runners.default(), SERIAL):
        out, h_n = linscan.scan_rows(kind, True, u, b, h0, [N] * L, reverse, runner)
        back = linscan.scan_rows_backward(kind, True, u, b, h0, out, dout, dh_n, [N] * L, reverse, runner)
        runs.append((out, h_n) + tuple(back))
    for x, y in zip(*runs):
        np.testing.assert_allclose(x, y, rtol=1e-10, atol=1e-12)


@pytest.mark.skipif(nprnn.backend() != "native", reason="the compiled tier's instruction set variants")
@pytest.mark.parametrize("kind", ["plain", "mingru", "minlstm"])
def test_every_instruction_set_variant_gives_the_numpy_tiers_result(kind):
    from nprnn.functional import native

    rng = np.random.default_rng(4)
    T, N, H = 30, 3, 37  # (H: vector tails)
    batch_sizes = [3] * 6 + [2] * 3 + [1]
    T = sum(batch_sizes)
    u = rng.standard_normal((T, linscan.GATES[kind] * H)) if kind != "plain" else rng.uniform(0, 1, (T, H))
    b = rng.standard_normal((T, H)) if kind == "plain" else None
    h0, dout = rng.uniform(0, 1, (N, H)), rng.standard_normal((T, H))
    with nprnn.config.override(backend="numpy"):
        out = linscan.scan_rows(kind, True, u, b, h0, batch_sizes, True)[0]
        want = linscan.scan_rows_backward(kind, True, u, b, h0, out, dout, None, batch_sizes, True)
    ran = []
    try:
        for name in ("avx512", "avx2", "baseline"):
            try:
                native._native.set_isa(name)
            except ValueError:
                continue  # (this CPU does not run it)
            ran.append(name)
            got = linscan.scan_rows(kind, True, u, b, h0, batch_sizes, True)[0]
            np.testing.assert_allclose(got, out, rtol=1e-13, atol=1e-14, err_msg=name)
            for x, y in zip(linscan.scan_rows_backward(kind, True, u, b, h0, got, dout, None, batch_sizes, True),
                            want):
                np.testing.assert_allclose(x, y, rtol=1e-12, atol=1e-13, err_msg=name)
    finally:
        native._native.set_isa("best")
    assert "baseline" in ran


def test_out_is_written_in_place_and_checked():
    rng = np.random.default_rng(3)
    a, b = rng.uniform(0, 1, (5, 2, 3)), rng.standard_normal((5, 2, 3))
    out = np.empty((5, 2, 3))
    got = linear_scan(a, b, out=out)
    assert got.base is out or got is out or np.shares_memory(got, out)
    np.testing.assert_array_equal(out, linear_scan(a, b))
    with pytest.raises(ValueError, match=r"out must be a C-contiguous float64 array of shape \(5, 2, 3\)"):
        linear_scan(a, b, out=np.empty((5, 2, 3), np.float32))


def test_an_output_past_the_caches_is_the_same_scan(config):
    """From 64 MiB of output the compiled scan writes it with non-temporal stores (x86):
    the same numbers as the NumPy tier's loop, one thread or chunks on two."""
    config(num_threads=2, min_split_work=0)
    rng = np.random.default_rng(9)
    L, H = 65536 + 3, 256  # (past 64 MiB of float32; rows not all on vector boundaries of the output)
    a = rng.uniform(0.5, 1, (L, 1, H)).astype(np.float32)
    b = rng.standard_normal((L, 1, H)).astype(np.float32)
    with nprnn.config.override(backend="numpy"):
        want = linear_scan(a, b)
    out = np.empty(L * H + 1, np.float32)[1:].reshape(L, 1, H)  # (an output that starts off a vector boundary)
    for runner in (None, SERIAL):
        got = linear_scan(a, b, out=out, runner=runner)
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5 * np.abs(want).max())

"""MinGRU and MinLSTM (issue 29) against the paper's sequential equations written in
PyTorch here (a loop over time, each sequence alone, autograd): outputs, final states and
every gradient for 120 seeded configurations (layers, directions, lengths=, batch_first,
both modes, float64 and float32); streaming against the sequence call on every prefix;
the parameters, the checks."""
import numpy as np
import pytest

import nprnn
from nprnn.functional import reference

try:
    import torch
except ImportError:  # the tests that need it are marked and skip
    torch = None


def _g(v, log):
    return torch.where(v >= 0, v + 0.5, torch.sigmoid(v)) if log else v


def torch_min_step(kind, x, h, p, log):
    u = x @ p["weight_ih"].T + (p["bias_ih"] if "bias_ih" in p else 0)
    if kind == "MinGRU":
        k, v = u.chunk(2, 1)
        z = torch.sigmoid(k)
        return (1 - z) * h + z * _g(v, log)
    uf, ui, v = u.chunk(3, 1)
    f, i = torch.sigmoid(uf), torch.sigmoid(ui)
    return f / (f + i) * h + i / (f + i) * _g(v, log)


def torch_stack(kind, x, h0, params, lengths, NL, D, log, drop=None):
    L, N = x.shape[:2]
    outs, hs = [], [[None] * N for _ in range(NL * D)]
    for b in range(N):
        inp = x[: lengths[b], b : b + 1]
        for layer in range(NL):
            if layer and drop is not None:
                inp = inp * torch.tensor(drop[layer - 1][: lengths[b], b : b + 1])
            dirs = []
            for d in range(D):
                idx = layer * D + d
                h, got = h0[idx, b : b + 1], [None] * lengths[b]
                for t in (range(lengths[b] - 1, -1, -1) if d else range(lengths[b])):
                    h = torch_min_step(kind, inp[t], h, params[idx], log)
                    got[t] = h
                hs[idx][b] = h
                dirs.append(torch.stack(got))
            inp = torch.cat(dirs, dim=2)
        outs.append(torch.cat([inp, torch.zeros((L - lengths[b],) + inp.shape[1:], dtype=inp.dtype)]))
    return torch.cat(outs, dim=1), torch.stack([torch.cat(row) for row in hs])


@pytest.mark.torch
@pytest.mark.parametrize("seed", range(120))
def test_layer_equals_the_pytorch_loop_forward_and_backward(seed):
    rng = np.random.default_rng(seed)
    kind = ("MinGRU", "MinLSTM")[seed % 2]
    log = seed // 2 % 2 == 0
    NL, D, H_in, H, N, L = (int(rng.integers(1, 4)), int(rng.integers(1, 3)), int(rng.integers(1, 6)),
                            int(rng.integers(1, 9)), int(rng.integers(1, 4)), int(rng.integers(1, 6)))
    bf, use_lengths, bias = bool(rng.integers(2)), bool(rng.integers(2)), bool(rng.integers(4))
    dt = np.float64 if seed % 4 < 3 else np.float32
    dropout = 0.3 if NL > 1 and seed % 5 == 0 else 0.0
    layer = getattr(nprnn, kind)(H_in, H, num_layers=NL, bidirectional=D == 2, batch_first=bf, bias=bias,
                                 dropout=dropout, mode="log" if log else "linear", dtype=dt, seed=seed).train()
    x = rng.standard_normal((L, N, H_in)).astype(dt)
    lengths = rng.integers(1, L + 1, N) if use_lengths else np.full(N, L)
    h0 = (rng.uniform(0, 1, (NL * D, N, H)) if log else rng.standard_normal((NL * D, N, H))).astype(dt)
    tm = (lambda a: a.transpose(1, 0, 2)) if bf else (lambda a: a)
    out, h_n = layer(tm(x).copy(), h0, lengths=lengths if use_lengths else None)
    drop = [tm(m) for m in layer.last_masks()["dropout"]] if dropout else None
    g_out, g_h = rng.standard_normal(out.shape).astype(dt), rng.standard_normal(h_n.shape).astype(dt)
    layer.zero_grad()
    dx, dh0 = layer.backward(g_out, g_h)

    tt = {k: torch.tensor(v, requires_grad=True) for k, v in layer.state_dict().items()}
    params = []
    for idx in range(NL * D):
        suffix = f"_l{idx // D}" + ("_reverse" if idx % D else "")
        params.append({k[: -len(suffix)]: v for k, v in tt.items() if k.endswith(suffix)})
    xt, h0t = torch.tensor(x, requires_grad=True), torch.tensor(h0, requires_grad=True)
    out_t, hn_t = torch_stack(kind, xt, h0t, params, lengths, NL, D, log, drop)
    ((out_t * torch.tensor(tm(g_out).copy())).sum() + (hn_t * torch.tensor(g_h)).sum()).backward()
    tol = dict(rtol=1e-7, atol=1e-9) if dt == np.float64 else dict(rtol=1.3e-6, atol=1e-5)
    gtol = dict(rtol=1e-7, atol=1e-9) if dt == np.float64 else dict(rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(tm(out), out_t.detach().numpy(), **tol)
    np.testing.assert_allclose(h_n, hn_t.detach().numpy(), **tol)
    np.testing.assert_allclose(tm(dx), xt.grad.numpy(), **gtol)
    np.testing.assert_allclose(dh0, h0t.grad.numpy(), **gtol)
    for name, value in tt.items():
        np.testing.assert_allclose(layer.grads[name], value.grad.numpy(), err_msg=name, **gtol)


@pytest.mark.parametrize("kind", ["MinGRU", "MinLSTM"])
@pytest.mark.parametrize("mode", ["log", "linear"])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_streaming_equals_the_sequence_call_on_every_prefix(kind, mode, dtype):
    layer = getattr(nprnn, kind)(4, 16, num_layers=2, mode=mode, dtype=dtype, seed=1).eval()
    x = np.random.default_rng(0).standard_normal((12, 3, 4)).astype(dtype)
    s = layer.stream(batch_size=3)
    rtol = 1e-6 if dtype == np.float32 else 1e-12
    for t in range(12):
        got = s.step(x[t])
        want = layer(x[: t + 1])[0][-1]
        np.testing.assert_allclose(got, want, rtol=rtol, atol=rtol)


def test_the_log_mode_equals_its_own_sequential_equations_and_the_modes_differ():
    """The log-space layer against the reference steps (mode log) and the linear layer
    against the same steps with g(v) = v; the two modes give different numbers."""
    rng = np.random.default_rng(3)
    x = rng.standard_normal((7, 2, 3))
    for kind, step in (("MinGRU", reference.mingru_step_forward), ("MinLSTM", reference.minlstm_step_forward)):
        outs = {}
        for mode in ("log", "linear"):
            layer = getattr(nprnn, kind)(3, 5, mode=mode, dtype=np.float64, seed=2).eval()
            p = {"weight_ih": layer.weight_ih_l0, "bias_ih": layer.bias_ih_l0}
            h, want = (np.zeros((2, 5)),), []
            for t in range(7):
                h, _ = step(x[t], h, p, log=mode == "log")
                want.append(h[0])
            outs[mode] = layer(x)[0]
            np.testing.assert_allclose(outs[mode], np.stack(want), rtol=1e-12, atol=1e-14)
        assert np.abs(outs["log"] - outs["linear"]).max() > 1e-3


@pytest.mark.parametrize("kind", ["MinGRU", "MinLSTM"])
def test_parameters_initialisation_and_checks(kind):
    G = 2 if kind == "MinGRU" else 3
    layer = getattr(nprnn, kind)(6, 40, num_layers=2, bidirectional=True, seed=0)
    names = dict(layer.named_parameters())
    assert list(names) == ["weight_ih_l0", "bias_ih_l0", "weight_ih_l0_reverse", "bias_ih_l0_reverse",
                           "weight_ih_l1", "bias_ih_l1", "weight_ih_l1_reverse", "bias_ih_l1_reverse"]
    assert names["weight_ih_l0"].shape == (G * 40, 6) and names["weight_ih_l1"].shape == (G * 40, 80)
    w = np.concatenate([v.ravel() for v in names.values()])
    bound = 1 / np.sqrt(40)  # nn.GRU's weight_ih: U(-1/sqrt(H), 1/sqrt(H))
    assert np.abs(w).max() <= bound and abs(w.var() - bound ** 2 / 3) < 5 * np.sqrt(2 / w.size) * bound ** 2 / 3
    assert "bias_ih_l0" not in dict(getattr(nprnn, kind)(6, 4, bias=False).named_parameters())
    with pytest.raises(ValueError, match="mode='log' needs h_0 >= 0"):
        layer(np.zeros((3, 2, 6), np.float32), -np.ones((4, 2, 40), np.float32))
    linear = getattr(nprnn, kind)(6, 4, mode="linear")
    linear(np.zeros((3, 2, 6), np.float32), -np.ones((1, 2, 4), np.float32))  # any h_0 in mode linear
    with pytest.raises(ValueError, match="mode must be 'log' or 'linear'"):
        getattr(nprnn, kind)(6, 4, mode="parallel")
    with pytest.raises(TypeError, match="has no recurrent_dropout argument"):
        getattr(nprnn, kind)(6, 4, recurrent_dropout=0.1)
    with pytest.raises(ValueError, match="proj_size argument is not supported"):
        getattr(nprnn, kind)(6, 4, proj_size=2)
    assert "mode='linear'" in repr(linear)


@pytest.mark.parametrize("kind", ["MinGRU", "MinLSTM"])
def test_packed_input_files_and_sequential(kind, tmp_path):
    from nprnn.serialization import load_into, save
    from nprnn.utils.rnn import pack_padded_sequence, pad_packed_sequence

    layer = getattr(nprnn, kind)(3, 6, bidirectional=True, seed=4).eval()
    x = np.random.default_rng(0).standard_normal((5, 3, 3)).astype(np.float32)
    lengths = [2, 5, 3]
    want, h_want = layer(x, lengths=lengths)
    got, h_got = layer(pack_padded_sequence(x, lengths, enforce_sorted=False))
    np.testing.assert_allclose(pad_packed_sequence(got, total_length=5)[0], want, rtol=1e-6, atol=1e-7)
    np.testing.assert_allclose(h_got, h_want, rtol=1e-6, atol=1e-7)
    other = getattr(nprnn, kind)(3, 6, bidirectional=True, seed=5)
    save(layer, tmp_path / "m.safetensors")
    load_into(other, tmp_path / "m.safetensors")
    np.testing.assert_array_equal(other.eval()(x)[0], layer(x)[0])
    model = nprnn.Sequential(getattr(nprnn, kind)(3, 6, seed=1), nprnn.LastStep(), nprnn.Linear(6, 2, seed=1))
    assert model(x).shape == (3, 2)


@pytest.mark.parametrize("step", ["mingru", "minlstm"])
@pytest.mark.parametrize("log", [True, False])
def test_reference_steps_gradients_equal_finite_differences(step, log):
    rng = np.random.default_rng(6)
    G = 2 if step == "mingru" else 3
    p = {"weight_ih": rng.standard_normal((G * 4, 3)), "bias_ih": rng.standard_normal(G * 4)}
    x, h = rng.standard_normal((2, 3)), rng.uniform(0, 1, (2, 4))
    forward = getattr(reference, f"{step}_step_forward")
    backward = getattr(reference, f"{step}_step_backward")
    w = rng.standard_normal((2, 4))

    def loss():
        return float((forward(x, (h,), p, log)[0][0] * w).sum())

    dx, (dh,), dp = backward((w,), forward(x, (h,), p, log)[1])
    eps = 1e-6
    for arr, grad in [(x, dx), (h, dh), (p["weight_ih"], dp["weight_ih"]), (p["bias_ih"], dp["bias_ih"])]:
        num = np.zeros_like(arr)
        for idx in np.ndindex(arr.shape):
            old = arr[idx]
            arr[idx] = old + eps
            up = loss()
            arr[idx] = old - eps
            num[idx] = (up - loss()) / (2 * eps)
            arr[idx] = old
        np.testing.assert_allclose(grad, num, rtol=1e-6, atol=1e-8)


@pytest.mark.parametrize("kind", ["MinGRU", "MinLSTM"])
def test_quantize_refuses_by_name(kind):
    layer = getattr(nprnn, kind)(3, 4)
    with pytest.raises(TypeError, match=f"quantize: {kind} has no quantized form yet"):
        nprnn.quantize(layer, "int8")


@pytest.mark.parametrize("kind", ["MinGRU", "MinLSTM"])
@pytest.mark.parametrize("mode", ["log", "linear"])
def test_a_loop_of_cells_equals_the_layer_forward_and_backward(kind, mode):
    rng = np.random.default_rng(8)
    layer = getattr(nprnn, kind)(3, 5, mode=mode, dtype=np.float64, seed=1).train()
    cell = getattr(nprnn, kind + "Cell")(3, 5, mode=mode, dtype=np.float64, seed=2).train()
    assert [n for n, _ in cell.named_parameters()] == ["weight_ih", "bias_ih"]
    with nprnn.writable(cell):
        cell.weight_ih[...] = layer.weight_ih_l0
        cell.bias_ih[...] = layer.bias_ih_l0
    x, h0 = rng.standard_normal((6, 2, 3)), rng.uniform(0, 1, (2, 5))
    out, h_n = layer(x, h0[None])
    h, hs = h0, []
    for t in range(6):
        h = cell(x[t], h)
        hs.append(h)
    np.testing.assert_allclose(np.stack(hs), out, rtol=1e-12, atol=1e-14)
    g = rng.standard_normal(out.shape)
    layer.zero_grad()
    cell.zero_grad()
    dx, dh0 = layer.backward(g)
    dh, dxs = np.zeros((2, 5)), []
    for t in range(5, -1, -1):
        dx_t, dh = cell.backward(dh + g[t])
        dxs.append(dx_t)
    np.testing.assert_allclose(np.stack(dxs[::-1]), dx, rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(dh, dh0[0], rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(cell.grads["weight_ih"], layer.grads["weight_ih_l0"], rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(cell.grads["bias_ih"], layer.grads["bias_ih_l0"], rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("kind", ["mingru", "minlstm"])
def test_explain_prints_the_equations_of_the_mode(kind, capsys):
    from nprnn.cli import main
    from nprnn.teach.explain import equations, explain

    assert main(["explain", kind, "--input-size", "4", "--hidden-size", "8", "--bidirectional"]) == 0
    text = capsys.readouterr().out
    assert "h~_t = g(x_t @ W_h.T + b_h)" in text and "diagonal linear scan" in text
    assert f"{2 if kind == 'mingru' else 3} gates" in text
    layer = getattr(nprnn, "MinGRU" if kind == "mingru" else "MinLSTM")(3, 4, mode="linear")
    assert "h~_t = x_t @ W_h.T + b_h" in equations(layer)
    assert all(i["observed"] == i["expected"] for i in explain(layer)["identities"])


@pytest.mark.parametrize("kind", ["MinGRU", "MinLSTM"])
@pytest.mark.parametrize("mode", ["log", "linear"])
@pytest.mark.parametrize("bidirectional, bias, batch_first", [(False, True, False), (True, True, True),
                                                              (True, False, False)])
def test_onnx_export_runs_in_onnxruntime_and_imports_back(kind, mode, bidirectional, bias, batch_first, tmp_path):
    """The layer as ONNX Scans (one a layer, the step in standard operators): onnxruntime
    runs it on the input alone within 1e-5, and nprnn's import rebuilds the layer."""
    ort = pytest.importorskip("onnxruntime")
    from nprnn.onnx import export, import_onnx

    layer = getattr(nprnn, kind)(3, 6, num_layers=2, bidirectional=bidirectional, bias=bias, mode=mode,
                                 batch_first=batch_first, seed=5).eval()
    x = np.random.default_rng(0).standard_normal((4, 7, 3) if batch_first else (7, 4, 3)).astype(np.float32)
    want, h_want = layer(x)
    path = tmp_path / "m.onnx"
    export(layer, path, with_state=False)
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    got = sess.run(None, {"input": x})
    np.testing.assert_allclose(got[0].reshape(want.shape), want, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(got[1], h_want, rtol=1e-5, atol=1e-5)
    back = import_onnx(path)
    np.testing.assert_allclose(back(x)[0], want, rtol=1e-5, atol=1e-5)


@pytest.mark.torch
def test_the_log_space_parallel_form_equals_the_sequential_layer():
    """PyTorch's parallel log-space form (cumsum and logcumsumexp over time, as
    ``benchmarks/torch_mingru.py`` writes it, the way people run minGRU) against nprnn's
    MinGRU, which runs the sequential recurrence: the same numbers, in float64."""
    import os
    import sys

    sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))
    from benchmarks.torch_mingru import StackedMinGRU, load_nprnn

    layer = nprnn.MinGRU(5, 7, num_layers=2, dtype=np.float64, seed=3).eval()
    model = load_nprnn(StackedMinGRU(5, 7, 2).double(), layer)
    x = np.random.default_rng(1).standard_normal((50, 3, 5))
    with torch.no_grad():
        theirs = model(torch.from_numpy(x))[0].numpy()
    np.testing.assert_allclose(layer(x)[0], theirs, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("kind", ["MinGRU", "MinLSTM"])
def test_unbatched_input_and_a_checkpoint_round_trip(kind, tmp_path):
    pytest.importorskip("safetensors")
    from nprnn.serialization import load_checkpoint, save_checkpoint

    layer = getattr(nprnn, kind)(3, 5, num_layers=2, seed=2).eval()
    x = np.random.default_rng(4).standard_normal((6, 3)).astype(np.float32)
    out, h_n = layer(x)  # (L, H_in): one sequence, no batch axis
    batched, hb = layer(x[:, None])
    assert out.shape == (6, 5) and h_n.shape == (2, 5)
    np.testing.assert_array_equal(out, batched[:, 0])
    np.testing.assert_array_equal(h_n, hb[:, 0])
    opt = nprnn.optim.Adam(layer.parameters(), lr=1e-2)
    save_checkpoint(tmp_path / "c.safetensors", layer, opt, step=7)
    fresh = getattr(nprnn, kind)(3, 5, num_layers=2, seed=9)
    assert load_checkpoint(tmp_path / "c.safetensors", fresh, nprnn.optim.Adam(fresh.parameters()))["step"] == 7
    np.testing.assert_array_equal(fresh.eval()(x)[0], out)

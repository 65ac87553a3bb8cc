"""LayerNormLSTM, LayerNormGRU and their cells (issue 26) against the cells written in
PyTorch here, a loop over time with autograd: outputs, final states and every gradient
(input, initial states, each parameter), for 120 seeded random configurations per kind
(layers, directions, projections, lengths=, batch_first, float64 and float32).

The oracle is written from the equations, not from nprnn: ``LayerNormLSTMCell`` as
PyTorch's ``benchmarks/fastrnns/custom_lstms.py`` writes it (with ``nn.LSTM``'s
projection), and the GRU in Haste's arrangement with ``nn.GRU``'s gates."""
import numpy as np
import pytest

import nprnn

try:
    import torch
    import torch.nn.functional as F
except ImportError:  # the tests that need it are marked and skip
    torch = F = None


def torch_ln_lstm_step(x, h, c, p):
    H = c.shape[-1]
    gates = (F.layer_norm(x @ p["weight_ih"].T, (4 * H,), p["ln_ih_weight"], p["ln_ih_bias"], 1e-5)
             + F.layer_norm(h @ p["weight_hh"].T, (4 * H,), p["ln_hh_weight"], p["ln_hh_bias"], 1e-5))
    i, f, g, o = gates.chunk(4, 1)
    i, f, g, o = torch.sigmoid(i), torch.sigmoid(f), torch.tanh(g), torch.sigmoid(o)
    c = F.layer_norm(f * c + i * g, (H,), p["ln_c_weight"], p["ln_c_bias"], 1e-5)
    h = o * torch.tanh(c)
    if "weight_hr" in p:
        h = h @ p["weight_hr"].T
    return h, c


def torch_ln_gru_step(x, h, c, p):
    H = h.shape[-1]
    a = F.layer_norm(x @ p["weight_ih"].T, (3 * H,), p["ln_ih_weight"], p["ln_ih_bias"], 1e-5)
    b = F.layer_norm(h @ p["weight_hh"].T, (3 * H,), p["ln_hh_weight"], p["ln_hh_bias"], 1e-5)
    a_r, a_z, a_n = a.chunk(3, 1)
    b_r, b_z, b_n = b.chunk(3, 1)
    r, z = torch.sigmoid(a_r + b_r), torch.sigmoid(a_z + b_z)
    n = torch.tanh(a_n + r * b_n)
    return (1 - z) * n + z * h, None


STEPS = {"LayerNormLSTM": torch_ln_lstm_step, "LayerNormGRU": torch_ln_gru_step}


def torch_stack(kind, x, h0, c0, params, lengths, num_layers, D):
    """Every sequence alone (its own length), every layer and direction: outputs (L, N,
    D*H_out) zero past each end, h_n, c_n (num_layers*D, N, .)."""
    step = STEPS[kind]
    L, N = x.shape[:2]
    outs, hs, cs = [], [[None] * N for _ in range(num_layers * D)], [[None] * N for _ in range(num_layers * D)]
    for b in range(N):
        inp = x[: lengths[b], b : b + 1]
        for layer in range(num_layers):
            dirs = []
            for d in range(D):
                idx = layer * D + d
                p = params[idx]
                h = h0[idx, b : b + 1]
                c = None if c0 is None else c0[idx, b : b + 1]
                seq = range(lengths[b] - 1, -1, -1) if d else range(lengths[b])
                got = [None] * lengths[b]
                for t in seq:
                    h, c = step(inp[t], h, c, p)
                    got[t] = h
                hs[idx][b], cs[idx][b] = h, c
                dirs.append(torch.stack(got))
            inp = torch.cat(dirs, dim=2)
        pad = torch.zeros((L - lengths[b],) + inp.shape[1:], dtype=inp.dtype)
        outs.append(torch.cat([inp, pad]))
    h_n = torch.stack([torch.cat(row) for row in hs])
    c_n = None if c0 is None else torch.stack([torch.cat(row) for row in cs])
    return torch.cat(outs, dim=1), h_n, c_n


def _config(seed):
    rng = np.random.default_rng(seed)
    kind = ("LayerNormLSTM", "LayerNormGRU")[seed % 2]
    cfg = dict(kind=kind, num_layers=int(rng.integers(1, 4)), D=int(rng.integers(1, 3)),
               H_in=int(rng.integers(1, 6)), H=int(rng.integers(2, 7)), N=int(rng.integers(1, 4)),
               L=int(rng.integers(1, 6)), batch_first=bool(rng.integers(2)), lengths=bool(rng.integers(2)),
               dtype=np.float64 if seed % 4 < 3 else np.float32, hx=bool(rng.integers(2)))
    cfg["proj"] = int(rng.integers(1, cfg["H"])) if kind == "LayerNormLSTM" and rng.random() < 0.4 else 0
    return cfg, rng


@pytest.mark.torch
@pytest.mark.parametrize("seed", range(240))
def test_layer_equals_the_pytorch_loop_forward_and_backward(seed):
    cfg, rng = _config(seed)
    kind, NL, D, H, N, L = cfg["kind"], cfg["num_layers"], cfg["D"], cfg["H"], cfg["N"], cfg["L"]
    kw = {"proj_size": cfg["proj"]} if cfg["proj"] else {}
    dt = cfg["dtype"]
    layer = getattr(nprnn, kind)(cfg["H_in"], H, num_layers=NL, bidirectional=D == 2,
                                 batch_first=cfg["batch_first"], dtype=dt, seed=seed, **kw)
    with nprnn.writable(layer):  # gains and shifts away from 1 and 0, so a slip in either shows
        for name, value in layer.named_parameters():
            if name.startswith("ln_"):
                value += rng.uniform(-0.5, 0.5, value.shape)
    layer.train()
    H_out = cfg["proj"] or H
    x = rng.standard_normal((L, N, cfg["H_in"])).astype(dt)
    lengths = rng.integers(1, L + 1, N) if cfg["lengths"] else np.full(N, L)
    lstm = kind == "LayerNormLSTM"
    h0 = rng.standard_normal((NL * D, N, H_out)).astype(dt)
    c0 = rng.standard_normal((NL * D, N, H)).astype(dt) if lstm else None
    hx = ((h0, c0) if lstm else h0) if cfg["hx"] else None
    if not cfg["hx"]:
        h0, c0 = np.zeros_like(h0), None if c0 is None else np.zeros_like(c0)
    xin = x.transpose(1, 0, 2).copy() if cfg["batch_first"] else x
    out, state = layer(xin, hx, lengths=lengths if cfg["lengths"] else None)
    h_n, c_n = state if lstm else (state, None)
    g_out = rng.standard_normal(out.shape).astype(dt)
    g_h = rng.standard_normal(h_n.shape).astype(dt)
    g_c = rng.standard_normal(c_n.shape).astype(dt) if lstm else None
    layer.zero_grad()
    dx, dhx = layer.backward(g_out, (g_h, g_c) if lstm else g_h)

    tt = {k: torch.tensor(v, requires_grad=True) for k, v in layer.state_dict().items()}
    per_layer = []
    for idx in range(NL * D):
        suffix = f"_l{idx // D}" + ("_reverse" if idx % D else "")
        per_layer.append({k[: -len(suffix)]: v for k, v in tt.items() if k.endswith(suffix)})
    xt = torch.tensor(x, requires_grad=True)
    h0t = torch.tensor(h0, requires_grad=True)
    c0t = None if c0 is None else torch.tensor(c0, requires_grad=True)
    out_t, h_t, c_t = torch_stack(kind, xt, h0t, c0t, per_layer, lengths, NL, D)
    g_out_t = torch.tensor(g_out.transpose(1, 0, 2) if cfg["batch_first"] else g_out)
    loss = (out_t * g_out_t).sum() + (h_t * torch.tensor(g_h)).sum()
    if lstm:
        loss = loss + (c_t * torch.tensor(g_c)).sum()
    loss.backward()

    tol = dict(rtol=1e-7, atol=1e-9) if dt == np.float64 else dict(rtol=1.3e-6, atol=1e-5)
    want_out = out_t.detach().numpy()
    np.testing.assert_allclose(out.transpose(1, 0, 2) if cfg["batch_first"] else out, want_out, **tol)
    np.testing.assert_allclose(h_n, h_t.detach().numpy(), **tol)
    if lstm:
        np.testing.assert_allclose(c_n, c_t.detach().numpy(), **tol)
    gtol = dict(rtol=1e-7, atol=1e-9) if dt == np.float64 else dict(rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(dx.transpose(1, 0, 2) if cfg["batch_first"] else dx, xt.grad.numpy(), **gtol)
    if cfg["hx"]:
        np.testing.assert_allclose(dhx[0] if lstm else dhx, h0t.grad.numpy(), **gtol)
        if lstm:
            np.testing.assert_allclose(dhx[1], c0t.grad.numpy(), **gtol)
    for name, value in tt.items():
        np.testing.assert_allclose(layer.grads[name], value.grad.numpy(), err_msg=name, **gtol)


@pytest.mark.torch
@pytest.mark.parametrize("kind", ["LayerNormLSTMCell", "LayerNormGRUCell"])
@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_cell_loop_equals_the_pytorch_loop(kind, dtype):
    """A manual time loop of cell calls, then backward in reverse order: outputs, states and
    every gradient against the PyTorch step."""
    rng = np.random.default_rng(3)
    cell = getattr(nprnn, kind)(4, 5, dtype=dtype, seed=1)
    with nprnn.writable(cell):
        for name, value in cell.named_parameters():
            if name.startswith("ln_"):
                value += rng.uniform(-0.5, 0.5, value.shape)
    cell.train()
    lstm = kind == "LayerNormLSTMCell"
    x = rng.standard_normal((6, 3, 4)).astype(dtype)
    state = (np.zeros((3, 5), dtype),) * 2 if lstm else np.zeros((3, 5), dtype)
    outs = []
    for t in range(6):
        state = cell(x[t], state)
        outs.append(state[0] if lstm else state)
    g = rng.standard_normal((6, 3, 5)).astype(dtype)
    dxs = [None] * 6
    dstate = (np.zeros((3, 5), dtype), np.zeros((3, 5), dtype)) if lstm else np.zeros((3, 5), dtype)
    cell.zero_grad()
    for t in reversed(range(6)):
        if lstm:
            dxs[t], dstate = cell.backward((dstate[0] + g[t], dstate[1]))
        else:
            dxs[t], dstate = cell.backward(dstate + g[t])

    tt = {k: torch.tensor(v, requires_grad=True) for k, v in cell.state_dict().items()}
    xt = torch.tensor(x, requires_grad=True)
    h, c = torch.zeros((3, 5), dtype=xt.dtype), torch.zeros((3, 5), dtype=xt.dtype) if lstm else None
    step = STEPS["LayerNormLSTM" if lstm else "LayerNormGRU"]
    want = []
    for t in range(6):
        h, c = step(xt[t], h, c, tt)
        want.append(h)
    (torch.stack(want) * torch.tensor(g)).sum().backward()
    tol = dict(rtol=1e-7, atol=1e-9) if dtype == np.float64 else dict(rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(np.stack(outs), torch.stack(want).detach().numpy(), **tol)
    np.testing.assert_allclose(np.stack(dxs), xt.grad.numpy(), **tol)
    for name, value in tt.items():
        np.testing.assert_allclose(cell.grads[name], value.grad.numpy(), err_msg=name, **tol)


# ------------------------------------------------------------- the layers as modules: no PyTorch needed
@pytest.mark.parametrize("kind", ["LayerNormLSTM", "LayerNormGRU"])
def test_parameter_names_initial_values_and_refused_bias(kind):
    kw = {"proj_size": 3} if kind == "LayerNormLSTM" else {}
    layer = getattr(nprnn, kind)(4, 6, num_layers=2, bidirectional=True, seed=0, **kw)
    G = 4 if kind == "LayerNormLSTM" else 3
    names = list(layer.state_dict())
    first = ["weight_ih_l0", "weight_hh_l0", "ln_ih_weight_l0", "ln_ih_bias_l0", "ln_hh_weight_l0", "ln_hh_bias_l0"]
    if kind == "LayerNormLSTM":
        first += ["ln_c_weight_l0", "ln_c_bias_l0", "weight_hr_l0"]
    assert names[: len(first)] == first
    assert len(names) == 4 * len(first) and "weight_hh_l1_reverse" in names
    sd = layer.state_dict()
    assert sd["weight_ih_l1"].shape == (G * 6, 2 * (3 if kw else 6))
    assert np.all(sd["ln_ih_weight_l1_reverse"] == 1) and np.all(sd["ln_hh_bias_l0"] == 0)
    assert sd["ln_hh_weight_l0"].shape == (G * 6,)
    if kind == "LayerNormLSTM":
        assert sd["ln_c_weight_l0"].shape == (6,) and np.all(sd["ln_c_bias_l1"] == 0)
    assert 0 < np.abs(sd["weight_hh_l0"]).max() <= 1 / np.sqrt(6)
    with pytest.raises(TypeError, match="no bias argument"):
        getattr(nprnn, kind)(4, 6, bias=False)
    assert "bias" not in repr(layer)


@pytest.mark.parametrize("kind", ["LayerNormLSTM", "LayerNormGRU"])
def test_stream_unbatched_packed_and_sequential_equal_the_sequence_call(kind):
    rng = np.random.default_rng(0)
    layer = getattr(nprnn, kind)(5, 8, num_layers=2, seed=0).eval()
    x = rng.standard_normal((7, 3, 5)).astype(np.float32)
    out, _ = layer(x)
    stream = layer.stream(3)
    np.testing.assert_array_equal(np.stack([stream.step(x[t]) for t in range(7)]), out)
    np.testing.assert_allclose(layer(x[:, 1])[0], out[:, 1], rtol=1e-6, atol=1e-6)
    packed = nprnn.pack_sequence([x[:, 0], x[:4, 1]], enforce_sorted=False)
    unpacked, lengths = nprnn.pad_packed_sequence(layer(packed)[0])
    np.testing.assert_allclose(unpacked[:, 0], out[:, 0], rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(unpacked[:4, 1], layer(x[:4, 1])[0], rtol=1e-6, atol=1e-6)
    model = nprnn.Sequential(layer, nprnn.LastStep(), nprnn.Linear(8, 2)).eval()
    np.testing.assert_allclose(model(x), model[2](out[-1]), rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("kind", ["LayerNormLSTM", "LayerNormGRU", "LayerNormLSTMCell", "LayerNormGRUCell"])
def test_files_round_trip_and_quantize_and_export_refuse(kind, tmp_path):
    from nprnn.serialization import load_checkpoint, load_into, save, save_checkpoint

    make = getattr(nprnn, kind)
    layer = make(4, 6, seed=0)
    with nprnn.writable(layer):
        for value in layer.parameters():
            value += 0.25  # the norms' gains and shifts away from their initial values too
    other = make(4, 6, seed=1)
    for path in (tmp_path / "w.safetensors", tmp_path / "w.npz"):
        save(layer, path)
        load_into(other, path)
        for name, value in layer.state_dict().items():
            np.testing.assert_array_equal(other.state_dict()[name], value, err_msg=name)
    opt = nprnn.optim.Adam(layer.parameters(), lr=1e-2)
    save_checkpoint(tmp_path / "c.safetensors", layer, opt, step=3)
    fresh = make(4, 6, seed=2)
    assert load_checkpoint(tmp_path / "c.safetensors", fresh, nprnn.optim.Adam(fresh.parameters()))["step"] == 3
    for name, value in layer.state_dict().items():
        np.testing.assert_array_equal(fresh.state_dict()[name], value, err_msg=name)
    with pytest.raises(TypeError, match=f"quantize: {kind} has no quantized form"):
        nprnn.quantize(layer, "int8")


@pytest.mark.parametrize("kind", ["LayerNormLSTM", "LayerNormGRU"])
def test_layer_gradients_equal_finite_differences(kind):
    """float64, two layers, bidirectional, lengths=: the backward of a random linear
    functional of (output, h_n[, c_n]) against central differences in every parameter and
    in the input."""
    rng = np.random.default_rng(5)
    layer = getattr(nprnn, kind)(3, 4, num_layers=2, bidirectional=True, dtype=np.float64, seed=0)
    with nprnn.writable(layer):
        for value in layer.parameters():
            value += rng.uniform(-0.3, 0.3, value.shape)
    layer.train()
    x = rng.standard_normal((4, 2, 3))
    lengths = np.array([4, 2])
    lstm = kind == "LayerNormLSTM"
    out, state = layer(x, lengths=lengths)
    gs = [rng.standard_normal(a.shape) for a in ([out] + (list(state) if lstm else [state]))]

    def loss():
        o, s = layer(x, lengths=lengths)
        return sum(float((a * g).sum()) for a, g in zip([o] + (list(s) if lstm else [s]), gs))

    layer(x, lengths=lengths)
    layer.zero_grad()
    dx, _ = layer.backward(gs[0], tuple(gs[1:]) if lstm else gs[1])
    eps = 1e-6
    def nudge(value, j, delta):  # (the layer sees a parameter change once writable() ends)
        with nprnn.writable(layer):
            value.flat[j] += delta

    for name, value in layer.named_parameters():
        for j in rng.choice(value.size, 3, replace=False):
            nudge(value, j, eps)
            up = loss()
            nudge(value, j, -2 * eps)
            down = loss()
            nudge(value, j, eps)
            np.testing.assert_allclose(layer.grads[name].flat[j], (up - down) / (2 * eps), rtol=1e-5, atol=1e-7,
                                       err_msg=name)
    for j in rng.choice(x.size, 4, replace=False):
        x.flat[j] += eps
        up = loss()
        x.flat[j] -= 2 * eps
        down = loss()
        x.flat[j] += eps
        np.testing.assert_allclose(dx.flat[j], (up - down) / (2 * eps), rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize("kind", ["LayerNormLSTM", "LayerNormGRU"])
def test_explain_and_the_states_it_plots(kind):
    """``explain``: the reference step's equations, every identity holding, and the tier it
    runs on; ``collect_states`` (plot-states): h, c and every gate over time equal to a loop
    of the reference step."""
    from nprnn.functional import native, reference
    from nprnn.teach.explain import collect_states, explain

    layer = getattr(nprnn, kind)(3, 4, seed=0)
    info = explain(layer, batch=2, seq_len=5)
    assert all(c["observed"] == c["expected"] for c in info["identities"])
    step = reference.ln_lstm_step_forward if kind == "LayerNormLSTM" else reference.ln_gru_step_forward
    assert info["equations"] == reference.equations(step) or kind == "LayerNormLSTM"
    assert any(e.startswith("c_t = LN_c(") for e in info["equations"]) == (kind == "LayerNormLSTM")
    assert "bias" not in info["config"] and info["layer"] == kind
    if native.backend() == "native":
        assert info["execution"][0].startswith("layer 0: compiled loop")
    else:
        assert info["execution"][0].startswith("NumPy tier")
    x = np.random.default_rng(0).standard_normal((5, 2, 3)).astype(np.float32)
    got = collect_states(layer, x)[(0, 0)]
    p = {k: v.astype(np.float64) for k, v in layer.state_dict().items()}
    p = {k[: -len("_l0")]: v for k, v in p.items()}
    lstm = kind == "LayerNormLSTM"
    state = (np.zeros((2, 4)), np.zeros((2, 4))) if lstm else (np.zeros((2, 4)),)
    for t in range(5):
        state, cache = step(x[t].astype(np.float64), state, p)
        np.testing.assert_allclose(got["h"][t], state[0], rtol=1e-5, atol=1e-6)
        if lstm:
            np.testing.assert_allclose(got["c"][t], state[1], rtol=1e-5, atol=1e-6)
            gates = dict(zip("ifgo", cache[3:7]))
        else:
            gates = dict(zip("rzn", cache[2:5]))
        for g, value in gates.items():
            np.testing.assert_allclose(got[g][t], value, rtol=1e-5, atol=1e-6, err_msg=g)


def test_cli_explains_the_layer_norm_layers_and_refuses_a_bias_option():
    from nprnn.cli import main

    assert main(["explain", "ln-lstm", "--input-size", "3", "--hidden-size", "4", "--proj-size", "2"]) == 0
    assert main(["explain", "ln-gru", "--input-size", "3", "--hidden-size", "4", "--bidirectional"]) == 0
    assert main(["explain", "lstm", "--input-size", "3", "--hidden-size", "4", "--no-bias"]) == 0
    assert main(["explain", "ln-gru", "--input-size", "3", "--hidden-size", "4", "--no-bias"]) == 2


@pytest.mark.parametrize("kind", ["LayerNormLSTM", "LayerNormGRU"])
def test_convert_infers_the_layer_norm_layer_and_writes_onnx(kind, tmp_path):
    pytest.importorskip("onnx")
    from nprnn.interop.convert import convert
    from nprnn.onnx import import_onnx
    from nprnn.serialization import save

    layer = getattr(nprnn, kind)(3, 4, num_layers=2, bidirectional=True, seed=0)
    save(layer, tmp_path / "w.safetensors")
    cfg = convert(tmp_path / "w.safetensors", tmp_path / "w.onnx", log=lambda s: None)
    assert cfg["kind"] == kind and cfg["num_layers"] == 2 and cfg["bidirectional"] and "bias" not in cfg
    back = import_onnx(tmp_path / "w.onnx")
    assert type(back) is type(layer)
    for name, value in layer.state_dict().items():
        np.testing.assert_array_equal(back.state_dict()[name], value, err_msg=name)


@pytest.mark.torch
@pytest.mark.parametrize("kind", ["LayerNormLSTM", "LayerNormGRU"])
@pytest.mark.parametrize("inloop", [False, True], ids=["projection first", "projection in the loop"])
def test_a_large_batch_split_across_threads_equals_the_pytorch_loop(config, kind, inloop):
    """40 sequences of several lengths, both directions, two layers: on the compiled tier the
    batch splits into row ranges, each its own loop (the input side normalised step by step
    with ``inloop``); outputs, states and every gradient against the PyTorch loop."""
    config(num_threads=2, min_inloop_batch=0 if inloop else 1 << 30, min_split_work=0)
    rng = np.random.default_rng(7)
    layer = getattr(nprnn, kind)(5, 6, num_layers=2, bidirectional=True, dtype=np.float64, seed=1).train()
    with nprnn.writable(layer):
        for name, value in layer.named_parameters():
            if name.startswith("ln_"):
                value += rng.uniform(-0.5, 0.5, value.shape)
    N, L = 40, 6
    x = rng.standard_normal((L, N, 5))
    lengths = rng.integers(1, L + 1, N)
    out, state = layer(x, lengths=lengths)
    lstm = kind == "LayerNormLSTM"
    h_n, c_n = state if lstm else (state, None)
    g = rng.standard_normal(out.shape)
    layer.zero_grad()
    dx, _ = layer.backward(g)
    tt = {k: torch.tensor(v, requires_grad=True) for k, v in layer.state_dict().items()}
    per_layer = []
    for idx in range(4):
        suffix = f"_l{idx // 2}" + ("_reverse" if idx % 2 else "")
        per_layer.append({k[: -len(suffix)]: v for k, v in tt.items() if k.endswith(suffix)})
    xt = torch.tensor(x, requires_grad=True)
    zeros = torch.zeros((4, N, 6), dtype=torch.float64)
    out_t, h_t, c_t = torch_stack(kind, xt, zeros, zeros if lstm else None, per_layer, lengths, 2, 2)
    (out_t * torch.tensor(g)).sum().backward()
    tol = dict(rtol=1e-7, atol=1e-9)
    np.testing.assert_allclose(out, out_t.detach().numpy(), **tol)
    np.testing.assert_allclose(h_n, h_t.detach().numpy(), **tol)
    if lstm:
        np.testing.assert_allclose(c_n, c_t.detach().numpy(), **tol)
    np.testing.assert_allclose(dx, xt.grad.numpy(), **tol)
    for name, value in tt.items():
        np.testing.assert_allclose(layer.grads[name], value.grad.numpy(), err_msg=name, **tol)

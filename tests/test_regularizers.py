"""The regularizers of issue 27 on every recurrent layer: ``weight_drop`` (DropConnect on
``W_hh``, one mask per training call, AWD-LSTM's WeightDrop).  Eval is bit-identical to the
plain layer; in training the layer equals the plain layer with ``W_hh * mask`` (the mask
read from the training record), the raw weight's gradient goes through the mask (and
equals central differences with the mask fixed), a seed reproduces the masks."""
import numpy as np
import pytest

import nprnn

KINDS = [("RNN", {}), ("LSTM", {}), ("LSTM", {"proj_size": 3}), ("GRU", {}), ("LayerNormLSTM", {}),
         ("LayerNormGRU", {})]


def _make(kind, kw, **more):
    return getattr(nprnn, kind)(4, 6, num_layers=2, bidirectional=True, dtype=np.float64, seed=3, **kw, **more)


@pytest.mark.parametrize("kind, kw", KINDS)
def test_weight_drop_is_a_masked_w_hh_in_training_and_nothing_in_eval(kind, kw):
    rng = np.random.default_rng(0)
    x = rng.standard_normal((5, 3, 4))
    lengths = [5, 2, 4]
    layer, plain = _make(kind, kw, weight_drop=0.4), _make(kind, kw)
    assert "weight_drop=0.4" in repr(layer)
    for a, b in zip(layer.eval()(x, lengths=lengths), plain.eval()(x, lengths=lengths)):
        np.testing.assert_array_equal(*(np.concatenate([np.ravel(v) for v in (t if isinstance(t, tuple) else (t,))])
                                        for t in (a, b)))
    layer.train()
    out, state = layer(x, lengths=lengths)
    masks = layer._latest().weight_masks
    assert len(masks) == 4
    for m in masks:
        assert set(np.unique(m)) <= {0.0, 1 / 0.6}
    with nprnn.writable(plain):
        for idx, m in enumerate(masks):
            name = f"weight_hh_l{idx // 2}" + ("_reverse" if idx % 2 else "")
            plain._parameters[name][...] = plain._parameters[name] * m
    want, want_state = plain.eval()(x, lengths=lengths)
    np.testing.assert_allclose(out, want, rtol=1e-12, atol=1e-12)
    g = rng.standard_normal(out.shape)
    layer.zero_grad()
    layer.backward(g)
    plain.train()
    plain(x, lengths=lengths)
    plain.zero_grad()
    plain.backward(g)
    for idx, m in enumerate(masks):
        name = f"weight_hh_l{idx // 2}" + ("_reverse" if idx % 2 else "")
        np.testing.assert_allclose(layer.grads[name], plain.grads[name] * m, rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(layer.grads["weight_ih_l1"], plain.grads["weight_ih_l1"], rtol=1e-10, atol=1e-12)
    layer.eval()  # eval again: the raw weights, not the last call's dropped ones
    np.testing.assert_array_equal(layer(x, lengths=lengths)[0], _make(kind, kw).eval()(x, lengths=lengths)[0])


def test_weight_drop_gradient_equals_central_differences_with_the_mask_fixed():
    rng = np.random.default_rng(1)
    layer = nprnn.GRU(3, 4, dtype=np.float64, seed=0, weight_drop=0.3).train()
    x = rng.standard_normal((6, 2, 3))
    out, _ = layer(x)
    (mask,) = layer._latest().weight_masks
    g = rng.standard_normal(out.shape)
    layer.zero_grad()
    layer.backward(g)
    probe = nprnn.GRU(3, 4, dtype=np.float64, seed=0).eval()

    def loss(w_raw):
        with nprnn.writable(probe):
            probe.weight_hh_l0[...] = w_raw * mask
        return float((probe(x)[0] * g).sum())

    raw = layer.weight_hh_l0.copy()
    eps = 1e-6
    for j in rng.choice(raw.size, 8, replace=False):
        up, down = raw.copy(), raw.copy()
        up.flat[j] += eps
        down.flat[j] -= eps
        np.testing.assert_allclose(layer.grads["weight_hh_l0"].flat[j], (loss(up) - loss(down)) / (2 * eps),
                                   rtol=1e-6, atol=1e-9)


def test_weight_drop_masks_come_from_the_seed_and_combine_with_dropout():
    x = np.random.default_rng(2).standard_normal((4, 2, 3)).astype(np.float32)
    runs = []
    for _ in range(2):
        lstm = nprnn.LSTM(3, 5, num_layers=2, dropout=0.3, weight_drop=0.2, seed=7).train()
        out, _ = lstm(x)
        rec = lstm._latest()
        runs.append((out, rec.weight_masks, rec.stack.masks[0]))
        lstm.backward(np.ones_like(out))
    for a, b in zip(runs[0][1], runs[1][1]):
        np.testing.assert_array_equal(a, b)
    np.testing.assert_array_equal(runs[0][0], runs[1][0])
    assert runs[0][2] is not None  # the dropout between layers drew its own mask
    with pytest.raises(ValueError, match=r"weight_drop should be a number in range \[0, 1\]"):
        nprnn.GRU(3, 4, weight_drop=1.5)


def test_nprnn_train_takes_weight_drop_and_its_checkpoint_keeps_it(tmp_path):
    pytest.importorskip("safetensors")
    from nprnn.teach.charlm import load_for_generation, train

    path = str(tmp_path / "wd.safetensors")
    result = train("the cat sat on the mat. " * 40, steps=6, batch_size=4, seq_len=16, hidden_size=16,
                   weight_drop=0.3, eval_every=3, checkpoint=path, progress=False, log=lambda s: None)
    val = result["history"]["val_loss"]
    assert len(val) == 2 and all(np.isfinite(val))
    model, _ = load_for_generation(path)
    assert model.lstm.weight_drop == 0.3  # (generation runs it in eval mode: no drop)


# ------------------------------------------------------------------ recurrent dropout and zoneout
# The oracle: the recurrences written from the equations in PyTorch (a loop over time, each
# sequence alone, autograd), with the masks the layer drew read from its training record
# (``last_masks``): recurrent dropout multiplies h_{t-1} where it meets W_hh (Gal &
# Ghahramani; Keras's recurrent_dropout), zoneout mixes the new states with the previous
# ones (Krueger et al.: h~ = o * tanh(c~) of the new, unzoned cell).
try:
    import torch
    import torch.nn.functional as F
except ImportError:  # the tests that need it are marked and skip
    torch = F = None


def _ln(v, p, name, width):
    return F.layer_norm(v, (width,), p[f"ln_{name}_weight"], p[f"ln_{name}_bias"], 1e-5)


def _torch_step(kind, x, h, hw, c, p):
    """(h~, c~) of one step; ``hw`` is the h that meets W_hh, ``h`` the one a GRU carries."""
    if kind.startswith("LayerNorm"):
        G = 4 if kind == "LayerNormLSTM" else 3
        H = p["weight_hh"].shape[0] // G
        a, b = _ln(x @ p["weight_ih"].T, p, "ih", G * H), _ln(hw @ p["weight_hh"].T, p, "hh", G * H)
    else:
        H = p["weight_hh"].shape[0] // {"RNN": 1, "LSTM": 4, "GRU": 3}[kind]
        a, b = x @ p["weight_ih"].T + p["bias_ih"], hw @ p["weight_hh"].T + p["bias_hh"]
    if kind == "RNN":
        return torch.tanh(a + b), None
    if kind in ("GRU", "LayerNormGRU"):
        r, z = torch.sigmoid(a[:, :H] + b[:, :H]), torch.sigmoid(a[:, H : 2 * H] + b[:, H : 2 * H])
        n = torch.tanh(a[:, 2 * H :] + r * b[:, 2 * H :])
        return (1 - z) * n + z * h, None
    i, f, g, o = (a + b).chunk(4, 1)
    i, f, g, o = torch.sigmoid(i), torch.sigmoid(f), torch.tanh(g), torch.sigmoid(o)
    c_new = f * c + i * g
    if kind == "LayerNormLSTM":
        c_new = _ln(c_new, p, "c", H)
    h_new = o * torch.tanh(c_new)
    if "weight_hr" in p:
        h_new = h_new @ p["weight_hr"].T
    return h_new, c_new


def _torch_layer(kind, x, h0, c0, params, lengths, NL, D, masks, zone_eval=None):
    """Outputs (L, N, D*H_out), h_n, c_n of the regularized stack; ``masks`` as
    ``last_masks`` gives them (time-major), ``zone_eval`` (p_c, p_h) for inference."""
    L, N = x.shape[:2]
    lstm = c0 is not None
    outs, hs, cs = [], [[None] * N for _ in range(NL * D)], [[None] * N for _ in range(NL * D)]
    for b in range(N):
        inp = x[: lengths[b], b : b + 1]
        for layer in range(NL):
            if layer and "dropout" in masks:
                inp = inp * torch.tensor(masks["dropout"][layer - 1][: lengths[b], b : b + 1])
            dirs = []
            for d in range(D):
                idx = layer * D + d
                p = params[idx]
                h, c = h0[idx, b : b + 1], None if c0 is None else c0[idx, b : b + 1]
                rm = masks.get("recurrent_dropout")
                got = [None] * lengths[b]
                for t in (range(lengths[b] - 1, -1, -1) if d else range(lengths[b])):
                    hw = h if rm is None else h * torch.tensor(rm[idx, b : b + 1])
                    h_new, c_new = _torch_step(kind, inp[t], h, hw, c, p)
                    if zone_eval is not None:
                        dh, dc = zone_eval[1], zone_eval[0]
                    elif "zoneout_h" in masks:
                        dh = torch.tensor(masks["zoneout_h"][idx][t, b : b + 1])
                        dc = torch.tensor(masks["zoneout_c"][idx][t, b : b + 1]) if lstm else None
                    else:
                        dh = dc = None
                    if dh is not None:
                        h_new = dh * h + (1 - dh) * h_new
                        if lstm:
                            c_new = dc * c + (1 - dc) * c_new
                    h, c = h_new, c_new
                    got[t] = h
                hs[idx][b], cs[idx][b] = h, c
                dirs.append(torch.stack(got))
            inp = torch.cat(dirs, dim=2)
        outs.append(torch.cat([inp, torch.zeros((L - lengths[b],) + inp.shape[1:], dtype=inp.dtype)]))
    h_n = torch.stack([torch.cat(row) for row in hs])
    c_n = torch.stack([torch.cat(row) for row in cs]) if lstm else None
    return torch.cat(outs, dim=1), h_n, c_n


def _reg_config(seed):
    rng = np.random.default_rng(seed)
    kind = ("RNN", "LSTM", "GRU", "LayerNormLSTM", "LayerNormGRU")[seed % 5]
    lstm = kind in ("LSTM", "LayerNormLSTM")
    cfg = dict(kind=kind, NL=int(rng.integers(1, 3)), D=int(rng.integers(1, 3)), H_in=int(rng.integers(1, 5)),
               H=int(rng.integers(2, 7)), N=int(rng.integers(1, 4)), L=int(rng.integers(1, 6)),
               batch_first=bool(rng.integers(2)), lengths=bool(rng.integers(2)),
               dtype=np.float64 if seed % 3 else np.float32)
    cfg["proj"] = int(rng.integers(1, cfg["H"])) if lstm and rng.random() < 0.4 else 0
    options = {}
    which = seed // 5 % 4  # recurrent dropout, zoneout, both, all three with dropout between layers
    if which in (0, 2, 3):
        options["recurrent_dropout"] = float(rng.choice([0.25, 0.5]))
    if which in (1, 2, 3):
        options["zoneout"] = (0.3, 0.2) if lstm and rng.random() < 0.5 else float(rng.choice([0.2, 0.5]))
    if which == 3:
        options["weight_drop"] = 0.3
        if cfg["NL"] > 1:
            options["dropout"] = 0.3
    return cfg, options, rng


def _per_layer(tensors, NL, D):
    out = []
    for idx in range(NL * D):
        suffix = f"_l{idx // D}" + ("_reverse" if idx % D else "")
        out.append({k[: -len(suffix)]: v for k, v in tensors.items() if k.endswith(suffix)})
    return out


@pytest.mark.torch
@pytest.mark.parametrize("seed", range(100))
def test_recurrent_dropout_and_zoneout_equal_the_pytorch_loop(seed):
    cfg, options, rng = _reg_config(seed)
    kind, NL, D, H, N, L, dt = cfg["kind"], cfg["NL"], cfg["D"], cfg["H"], cfg["N"], cfg["L"], cfg["dtype"]
    lstm = kind in ("LSTM", "LayerNormLSTM")
    kw = {"proj_size": cfg["proj"]} if cfg["proj"] else {}
    layer = getattr(nprnn, kind)(cfg["H_in"], H, num_layers=NL, bidirectional=D == 2, batch_first=cfg["batch_first"],
                                 dtype=dt, seed=seed, **kw, **options).train()
    H_out = cfg["proj"] or H
    x = rng.standard_normal((L, N, cfg["H_in"])).astype(dt)
    lengths = rng.integers(1, L + 1, N) if cfg["lengths"] else np.full(N, L)
    h0 = rng.standard_normal((NL * D, N, H_out)).astype(dt)
    c0 = rng.standard_normal((NL * D, N, H)).astype(dt) if lstm else None
    bf = cfg["batch_first"]
    tm = (lambda a: a.transpose(1, 0, 2)) if bf else (lambda a: a)  # caller layout <-> time-major
    out, state = layer(tm(x).copy(), (h0, c0) if lstm else h0, lengths=lengths if cfg["lengths"] else None)
    masks = layer.last_masks()
    for key in ("recurrent_dropout", "zoneout_h", "weight_drop", "dropout"):
        assert (key in masks) == (key in options or (key == "zoneout_h" and "zoneout" in options))
    masks = {k: ([tm(m) for m in v] if k in ("zoneout_h", "zoneout_c", "dropout") else v) for k, v in masks.items()}
    h_n, c_n = state if lstm else (state, None)
    g_out, g_h = rng.standard_normal(out.shape).astype(dt), rng.standard_normal(h_n.shape).astype(dt)
    g_c = rng.standard_normal(c_n.shape).astype(dt) if lstm else None
    layer.zero_grad()
    dx, dhx = layer.backward(g_out, (g_h, g_c) if lstm else g_h)

    tt = {k: torch.tensor(v, requires_grad=True) for k, v in layer.state_dict().items()}
    eff = dict(tt)
    for idx, m in enumerate(masks.get("weight_drop", [])):  # DropConnect: the raw weight times its mask
        name = f"weight_hh_l{idx // D}" + ("_reverse" if idx % D else "")
        eff[name] = tt[name] * torch.tensor(m)
    xt, h0t = torch.tensor(x, requires_grad=True), torch.tensor(h0, requires_grad=True)
    c0t = torch.tensor(c0, requires_grad=True) if lstm else None
    out_t, h_t, c_t = _torch_layer(kind, xt, h0t, c0t, _per_layer(eff, NL, D), lengths, NL, D, masks)
    loss = (out_t * torch.tensor(tm(g_out).copy())).sum() + (h_t * torch.tensor(g_h)).sum()
    if lstm:
        loss = loss + (c_t * torch.tensor(g_c)).sum()
    loss.backward()
    tol = dict(rtol=1e-7, atol=1e-9) if dt == np.float64 else dict(rtol=1.3e-6, atol=1e-5)
    gtol = dict(rtol=1e-7, atol=1e-9) if dt == np.float64 else dict(rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(tm(out), out_t.detach().numpy(), **tol)
    np.testing.assert_allclose(h_n, h_t.detach().numpy(), **tol)
    if lstm:
        np.testing.assert_allclose(c_n, c_t.detach().numpy(), **tol)
    np.testing.assert_allclose(tm(dx), xt.grad.numpy(), **gtol)
    np.testing.assert_allclose(dhx[0] if lstm else dhx, h0t.grad.numpy(), **gtol)
    if lstm:
        np.testing.assert_allclose(dhx[1], c0t.grad.numpy(), **gtol)
    for name, value in tt.items():
        np.testing.assert_allclose(layer.grads[name], value.grad.numpy(), err_msg=name, **gtol)

    # inference: recurrent dropout and weight drop vanish (bit for bit), zoneout is its expectation
    layer.eval()
    plain = getattr(nprnn, kind)(cfg["H_in"], H, num_layers=NL, bidirectional=D == 2, batch_first=bf, dtype=dt,
                                 seed=seed, **kw).eval()
    with nprnn.writable(plain):
        for name, value in layer.state_dict().items():
            plain._parameters[name][...] = value
    got = layer(tm(x).copy(), lengths=lengths if cfg["lengths"] else None)[0]
    if "zoneout" not in options:
        np.testing.assert_array_equal(got, plain(tm(x).copy(), lengths=lengths if cfg["lengths"] else None)[0])
    else:
        z = options["zoneout"]
        p_c, p_h = z if isinstance(z, tuple) else (z, z)
        zeros_h = torch.zeros((NL * D, N, H_out), dtype=xt.dtype)
        zeros_c = torch.zeros((NL * D, N, H), dtype=xt.dtype) if lstm else None
        with torch.no_grad():
            want = _torch_layer(kind, torch.tensor(x), zeros_h, zeros_c, _per_layer(tt, NL, D), lengths, NL, D, {},
                                zone_eval=(p_c, p_h))[0]
        np.testing.assert_allclose(tm(got), want.numpy(), **tol)


@pytest.mark.parametrize("kind, kw", KINDS)
def test_regularized_gradients_equal_central_differences_with_the_masks_fixed(kind, kw):
    """The same seed draws the same masks on a layer's first training call: a fresh layer
    per probe, its weights moved, gives the loss with the masks fixed (and shows a seed
    reproduces the masks)."""
    rng = np.random.default_rng(5)
    x = rng.standard_normal((5, 3, 4))
    g = None
    zone = (0.3, 0.4) if "LSTM" in kind else 0.3
    options = dict(num_layers=2, bidirectional=True, dtype=np.float64, seed=11, recurrent_dropout=0.4, zoneout=zone,
                   weight_drop=0.2, dropout=0.2, **kw)

    def run(set_param=None):
        layer = getattr(nprnn, kind)(4, 6, **options).train()
        if set_param is not None:
            with nprnn.writable(layer):
                set_param(layer)
        out, _ = layer(x, lengths=[5, 2, 4])
        return layer, out

    layer, out = run()
    masks = layer.last_masks()
    g = rng.standard_normal(out.shape)
    layer.zero_grad()
    dx, _ = layer.backward(g)
    again, out2 = run()
    np.testing.assert_array_equal(out, out2)  # the seed reproduces every mask
    for key, value in masks.items():
        for a, b in zip(value, again.last_masks()[key]):
            np.testing.assert_array_equal(a, b)
    eps = 1e-6
    for name in ("weight_hh_l0", "weight_hh_l1_reverse", "weight_ih_l1", "weight_ih_l0_reverse"):
        raw = getattr(layer, name)
        for j in rng.choice(raw.size, 3, replace=False):
            def moved(delta):
                def set_param(m):
                    getattr(m, name).flat[j] += delta
                return float((run(set_param)[1] * g).sum())
            np.testing.assert_allclose(layer.grads[name].flat[j], (moved(eps) - moved(-eps)) / (2 * eps),
                                       rtol=1e-6, atol=1e-8, err_msg=name)


@pytest.mark.parametrize("kind", ["RNN", "LSTM", "GRU", "LayerNormLSTM", "LayerNormGRU"])
def test_recurrent_dropout_masks_are_per_sequence_scaled_and_mean_to_eval(kind):
    """One mask per sequence and layer-direction, values 0 or 1 / (1 - p); over many
    training calls the mean output with p = 0.5 tends to... not eval (the model is
    nonlinear), but the mean mask is 1 within 5 standard errors."""
    p = 0.3
    layer = getattr(nprnn, kind)(3, 40, num_layers=2, bidirectional=True, recurrent_dropout=p, seed=1).train()
    x = np.random.default_rng(0).standard_normal((4, 50, 3)).astype(np.float32)
    layer(x)
    m = layer.last_masks()["recurrent_dropout"]
    assert m.shape == (4, 50, 40)
    assert set(np.unique(m)) == {0.0, np.float32(1 / (1 - p))}
    kept = m > 0
    n = m.size
    assert abs(kept.mean() - (1 - p)) < 5 * np.sqrt(p * (1 - p) / n)
    assert abs(m.mean() - 1) < 5 * np.sqrt(p / (1 - p) / n)


@pytest.mark.parametrize("kind", ["LSTM", "GRU", "RNN"])
def test_zoneout_masks_are_per_step_and_unit_with_probability_p(kind):
    zone = (0.2, 0.6) if kind == "LSTM" else 0.6
    layer = getattr(nprnn, kind)(3, 30, zoneout=zone, seed=2).train()
    x = np.random.default_rng(0).standard_normal((60, 20, 3)).astype(np.float32)
    layer(x)
    masks = layer.last_masks()
    for key, p in (("zoneout_h", 0.6), ("zoneout_c", 0.2)):
        if key not in masks:
            assert kind != "LSTM"
            continue
        (d,) = masks[key]
        assert d.shape == (60, 20, 30) and set(np.unique(d)) == {0.0, 1.0}
        assert abs(d.mean() - p) < 5 * np.sqrt(p * (1 - p) / d.size)
    with pytest.raises(ValueError, match="zoneout=\\(p_c, p_h\\) is for the LSTMs"):
        nprnn.GRU(3, 4, zoneout=(0.1, 0.2))
    with pytest.raises(ValueError, match=r"zoneout should be a number in range \[0, 1\]"):
        nprnn.LSTM(3, 4, zoneout=-0.1)
    with pytest.raises(ValueError, match=r"recurrent_dropout should be a number in range \[0, 1\]"):
        nprnn.LSTM(3, 4, recurrent_dropout=2)


@pytest.mark.parametrize("kind", ["LSTM", "GRU", "LayerNormLSTM"])
def test_zoneout_streams_its_expectation_and_export_refuses_it(kind, tmp_path):
    layer = getattr(nprnn, kind)(3, 7, num_layers=2, zoneout=0.25, recurrent_dropout=0.5, seed=4).eval()
    x = np.random.default_rng(1).standard_normal((6, 2, 3)).astype(np.float32)
    want = layer(x)[0]
    s = layer.stream(batch_size=2)
    got = np.stack([s.step(x[t]) for t in range(6)])
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)
    plain = getattr(nprnn, kind)(3, 7, num_layers=2, seed=4).eval()
    assert np.abs(plain(x)[0] - want).max() > 1e-3  # zoneout's expectation changes inference, by design
    with pytest.raises(ValueError, match="zoneout"):
        nprnn.quantize(layer, "int8")
    pytest.importorskip("onnx")
    from nprnn.onnx import export

    with pytest.raises(ValueError, match="zoneout"):
        export(layer, str(tmp_path / "z.onnx"))
    assert not (tmp_path / "z.onnx").exists()


SCHEDULES = {  # nprnn.config settings that put the compiled loop in each of its shapes of work
    "batch split, projection first": dict(num_threads=2, min_split_work=0, min_inloop_batch=1 << 30),
    "batch split, projection in the loop": dict(num_threads=2, min_split_work=0, min_inloop_batch=0),
    "unit split": dict(num_threads=2, min_unit_split_work=0, max_unit_split_batch=64),
    "wavefront": dict(num_threads=2, min_wavefront_batch=0, min_wavefront_work=0, max_wavefront_work=1 << 40,
                      wavefront_balance=0),
}


@pytest.mark.torch
@pytest.mark.parametrize("schedule", SCHEDULES)
@pytest.mark.parametrize("kind, kw", [("LSTM", {"proj_size": 4}), ("GRU", {}), ("LayerNormLSTM", {}), ("RNN", {})])
def test_every_shape_of_the_loop_honours_the_regularizers(config, schedule, kind, kw):
    """Row ranges on two threads, the hidden units split (recurrent dropout runs its
    training loop in one part; zoneout's inference splits), and the wavefront of a
    one-directional stack: training and inference against the PyTorch loop."""
    config(**SCHEDULES[schedule])
    rng = np.random.default_rng(8)
    D = 1 if schedule == "wavefront" else 2
    N, L, H = (40, 6, 9) if schedule.startswith("batch") else (3, 5, 9)
    lstm = "LSTM" in kind
    layer = getattr(nprnn, kind)(5, H, num_layers=2, bidirectional=D == 2, dtype=np.float64, seed=2,
                                 recurrent_dropout=0.3, zoneout=(0.2, 0.3) if lstm else 0.3, **kw).train()
    H_out = kw.get("proj_size", H)
    x = rng.standard_normal((L, N, 5))
    lengths = np.full(N, L) if schedule == "wavefront" else rng.integers(1, L + 1, N)
    out, state = layer(x, lengths=lengths)
    if schedule == "wavefront" and kind != "LayerNormLSTM" and layer._latest().stack.native:
        assert layer._latest().stack.schedule == "wavefront"  # (the compiled tier's shape of work)
    masks = layer.last_masks()
    g = rng.standard_normal(out.shape)
    layer.zero_grad()
    dx, _ = layer.backward(g)
    tt = {k: torch.tensor(v, requires_grad=True) for k, v in layer.state_dict().items()}
    xt = torch.tensor(x, requires_grad=True)
    zh = torch.zeros((2 * D, N, H_out), dtype=torch.float64)
    zc = torch.zeros((2 * D, N, H), dtype=torch.float64) if lstm else None
    out_t, _, _ = _torch_layer(kind, xt, zh, zc, _per_layer(tt, 2, D), lengths, 2, D, masks)
    (out_t * torch.tensor(g)).sum().backward()
    tol = dict(rtol=1e-7, atol=1e-9)
    np.testing.assert_allclose(out, out_t.detach().numpy(), **tol)
    np.testing.assert_allclose(dx, xt.grad.numpy(), **tol)
    for name, value in tt.items():
        np.testing.assert_allclose(layer.grads[name], value.grad.numpy(), err_msg=name, **tol)
    layer.eval()
    with torch.no_grad():
        want = _torch_layer(kind, xt, zh, zc, _per_layer(tt, 2, D), lengths, 2, D, {},
                            zone_eval=(0.2, 0.3) if lstm else (0.3, 0.3))[0]
    np.testing.assert_allclose(layer(x, lengths=lengths)[0], want.numpy(), **tol)


@pytest.mark.parametrize("kind", ["LSTM", "GRU", "LayerNormGRU"])
def test_packed_input_draws_and_applies_the_same_masks_as_lengths(kind):
    """A PackedSequence and the padded batch with ``lengths=`` run the same packed rows:
    made from one seed, the layers draw the same masks and give the same outputs and
    gradients."""
    from nprnn.utils.rnn import pack_padded_sequence, pad_packed_sequence

    rng = np.random.default_rng(3)
    x = rng.standard_normal((6, 4, 3))
    lengths = [3, 6, 1, 4]

    def make():
        return getattr(nprnn, kind)(3, 5, num_layers=2, bidirectional=True, dtype=np.float64, seed=9,
                                    recurrent_dropout=0.3, zoneout=0.2, dropout=0.2).train()

    a, b = make(), make()
    out_a, _ = a(x, lengths=lengths)
    packed = pack_padded_sequence(x, lengths, enforce_sorted=False)
    out_b, _ = b(packed)
    np.testing.assert_allclose(pad_packed_sequence(out_b, total_length=6)[0], out_a, rtol=1e-13, atol=1e-13)
    np.testing.assert_array_equal(a.last_masks()["recurrent_dropout"], b.last_masks()["recurrent_dropout"])
    g = rng.standard_normal(out_a.shape)
    a.zero_grad()
    b.zero_grad()
    a.backward(g)
    b.backward(pack_padded_sequence(g, lengths, enforce_sorted=False))
    for name, value in a.grads.items():
        np.testing.assert_allclose(b.grads[name], value, rtol=1e-12, atol=1e-12, err_msg=name)

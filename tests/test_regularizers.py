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

"""The scales that a wrong constant would change without failing any other test (issue 27,
item 7): dropout between layers keeps values times exactly 1 / (1 - p), its masks average
1; the default initialisation is PyTorch's U(-1/sqrt(H), 1/sqrt(H)) for every layer and
cell, its bounds and its variance (1 / (3H)) within 5 standard errors over >= 10,000
weights."""
import numpy as np
import pytest

import nprnn


@pytest.mark.parametrize("kind", ["LSTM", "GRU", "RNN", "LayerNormLSTM"])
@pytest.mark.parametrize("p", [0.2, 0.5])
def test_dropout_between_layers_keeps_values_times_one_over_one_minus_p(kind, p):
    rng = np.random.default_rng(3)
    layer = getattr(nprnn, kind)(4, 16, num_layers=2, dropout=p, seed=1).train()
    bottom = getattr(nprnn, kind)(4, 16, seed=2)
    bottom.load_state_dict({k: v for k, v in layer.state_dict().items() if k.endswith("_l0")})
    x = rng.standard_normal((20, 40, 4)).astype(np.float32)
    layer(x)
    rec = layer._latest().stack
    mask = rec.masks[0]
    scale = np.float32(1.0 / (1.0 - p))
    assert set(np.unique(mask)) <= {np.float32(0), scale}
    kept = float((mask != 0).mean())
    se = np.sqrt(p * (1 - p) / mask.size)  # 12,800 draws
    assert abs(kept - (1 - p)) < 5 * se, (kept, 1 - p)
    assert abs(float(mask.mean()) - 1.0) < 5 * se * float(scale)  # E[mask] = 1: eval's expectation
    out0, _ = bottom(x)
    np.testing.assert_array_equal(rec.records[1].x, out0.reshape(-1, 16) * mask)  # layer 1 reads out0 * mask


@pytest.mark.parametrize("make, H", [
    (lambda: nprnn.LSTM(64, 128, num_layers=2), 128), (lambda: nprnn.GRU(96, 96, bidirectional=True), 96),
    (lambda: nprnn.RNN(200, 100), 100), (lambda: nprnn.LSTM(64, 128, proj_size=32), 128),
    (lambda: nprnn.LSTMCell(64, 64), 64), (lambda: nprnn.GRUCell(100, 50), 50), (lambda: nprnn.RNNCell(150, 75), 75),
    (lambda: nprnn.LayerNormLSTM(64, 64), 64), (lambda: nprnn.LayerNormGRUCell(80, 40), 40)])
def test_the_default_initialisation_is_pytorchs(make, H):
    """Every matrix and bias from U(-a, a), a = 1 / sqrt(hidden_size): none beyond a, the
    mean 0 and the mean square a^2 / 3 within 5 standard errors (the uniform's x^2 has
    variance 4 a^4 / 45); the layer norms' gains 1 and shifts 0."""
    layer = make()
    a = 1.0 / np.sqrt(H)
    w = np.concatenate([v.ravel().astype(np.float64) for k, v in layer.state_dict().items() if not k.startswith("ln_")])
    assert w.size >= 10_000
    assert np.abs(w).max() <= a
    n = w.size
    assert abs(w.mean()) < 5 * np.sqrt(a * a / 3 / n)
    assert abs((w * w).mean() - a * a / 3) < 5 * np.sqrt(4 * a ** 4 / 45 / n)
    for k, v in layer.state_dict().items():
        if k.startswith("ln_"):
            assert np.all(v == (1 if "weight" in k else 0)), k

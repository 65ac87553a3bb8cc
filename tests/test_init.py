"""``nprnn.init`` (issue 27, item 5): ``torch.nn.init``'s functions on parameters.
Orthogonality to 1e-5; means and mean squares within 5 standard errors of their targets
over 20,000 samples; PyTorch's fan rules and gains; writes reach the layer's next call."""
import math

import numpy as np
import pytest

import nprnn
from nprnn import init

SHAPE = (200, 100)  # fan_in 100, fan_out 200; 20,000 samples
N = SHAPE[0] * SHAPE[1]


def _uniform(a):  # (target mean square, its standard error) of U(-a, a)
    return a * a / 3, math.sqrt(4 * a ** 4 / 45 / N)


def _normal(std):  # of N(0, std^2): x^2 has variance 2 std^4
    return std * std, math.sqrt(2 * std ** 4 / N)


CASES = {
    "uniform_": (lambda w: init.uniform_(w, -0.3, 0.3, generator=1), _uniform(0.3), 0.3),
    "normal_": (lambda w: init.normal_(w, 0.0, 0.2, generator=1), _normal(0.2), None),
    "xavier_uniform_": (lambda w: init.xavier_uniform_(w, gain=2.0, generator=1),
                        _uniform(2.0 * math.sqrt(6 / 300)), 2.0 * math.sqrt(6 / 300)),
    "xavier_normal_": (lambda w: init.xavier_normal_(w, generator=1), _normal(math.sqrt(2 / 300)), None),
    "kaiming_uniform_": (lambda w: init.kaiming_uniform_(w, a=math.sqrt(5), generator=1),  # nn.Linear's
                         _uniform(math.sqrt(1 / 100)), math.sqrt(1 / 100)),
    "kaiming_normal_ fan_out relu": (lambda w: init.kaiming_normal_(w, mode="fan_out", nonlinearity="relu",
                                                                    generator=1), _normal(math.sqrt(2 / 200)), None),
}


@pytest.mark.parametrize("name", sorted(CASES))
def test_the_draws_have_their_targets_mean_and_mean_square(name):
    fill, (mean_square, se), bound = CASES[name]
    w = np.zeros(SHAPE)
    assert fill(w) is w
    assert abs(w.mean()) < 5 * math.sqrt(mean_square / N)
    assert abs((w * w).mean() - mean_square) < 5 * se, ((w * w).mean(), mean_square)
    if bound is not None:
        assert np.abs(w).max() <= bound


@pytest.mark.parametrize("shape", [(64, 64), (32, 96), (96, 32), (8, 4, 3)])
def test_orthogonal_rows_or_columns(shape):
    w = np.zeros(shape, np.float32)
    init.orthogonal_(w, gain=1.5, generator=3)
    m = w.reshape(shape[0], -1).astype(np.float64) / 1.5
    small = m @ m.T if m.shape[0] <= m.shape[1] else m.T @ m
    np.testing.assert_allclose(small, np.eye(small.shape[0]), atol=1e-5)


def test_writes_reach_the_layers_next_call_and_the_parameters_stay_read_only():
    lstm = nprnn.LSTM(3, 4, seed=0).eval()
    x = np.random.default_rng(0).standard_normal((5, 2, 3)).astype(np.float32)
    before, _ = lstm(x)  # (its prepared weights cached)
    for p in lstm.parameters():
        init.zeros_(p)
    after, _ = lstm(x)
    assert np.abs(before).max() > 0 and np.all(after == 0)  # zero weights: every gate 1/2, g = 0, h = 0
    with pytest.raises(ValueError):
        lstm.weight_hh_l0[0, 0] = 1.0
    init.constant_(lstm.bias_ih_l0, 0.5)
    init.ones_(lstm.bias_hh_l0)
    assert np.all(lstm.bias_ih_l0 == 0.5) and np.all(lstm.bias_hh_l0 == 1)
    for k in range(4):  # the README's recipe: each gate's block of W_hh orthogonal
        init.orthogonal_(lstm.weight_hh_l0[4 * k : 4 * (k + 1)], generator=k)
    block = lstm.weight_hh_l0[4:8].astype(np.float64)
    np.testing.assert_allclose(block @ block.T, np.eye(4), atol=1e-5)


def test_a_seed_or_generator_makes_the_same_draws_and_refusals_say_what_was_wrong():
    a, b = np.zeros(SHAPE), np.zeros(SHAPE)
    init.kaiming_uniform_(a, generator=7)
    init.kaiming_uniform_(b, generator=np.random.default_rng(7))
    np.testing.assert_array_equal(a, b)
    with pytest.raises(ValueError, match="Fan in and fan out can not be computed for tensor with fewer than 2"):
        init.xavier_uniform_(np.zeros(5))
    with pytest.raises(ValueError, match="Mode fan_both not supported, please use one of fan_in, fan_out"):
        init.kaiming_normal_(np.zeros(SHAPE), mode="fan_both")
    with pytest.raises(ValueError, match="Unsupported nonlinearity softsign"):
        init.calculate_gain("softsign")
    with pytest.raises(ValueError, match="Only tensors with 2 or more dimensions are supported"):
        init.orthogonal_(np.zeros(3))
    with pytest.raises(TypeError, match="floating-point NumPy array"):
        init.zeros_([1.0, 2.0])
    with pytest.raises(TypeError, match="generator must be"):
        init.normal_(np.zeros(3), generator="seed")


@pytest.mark.torch
def test_fans_and_gains_are_pytorchs():
    import torch

    for name in ("linear", "sigmoid", "tanh", "relu", "leaky_relu", "selu"):
        assert init.calculate_gain(name) == pytest.approx(torch.nn.init.calculate_gain(name))
    assert init.calculate_gain("leaky_relu", 0.2) == pytest.approx(torch.nn.init.calculate_gain("leaky_relu", 0.2))
    for shape in [(3, 5), (7, 2, 4), (4, 3, 2, 2)]:
        assert init._fans(np.zeros(shape)) == torch.nn.init._calculate_fan_in_and_fan_out(torch.zeros(shape))


@pytest.mark.parametrize("make", [lambda **kw: nprnn.LSTM(3, 4, num_layers=2, bidirectional=True, seed=5, **kw),
                                  lambda **kw: nprnn.LSTMCell(3, 4, seed=5, **kw),
                                  lambda **kw: nprnn.LayerNormLSTM(3, 4, proj_size=2, seed=5, **kw),
                                  lambda **kw: nprnn.LayerNormLSTMCell(3, 4, seed=5, **kw)])
def test_forget_bias_sets_the_forget_gates_bias_and_nothing_else(make):
    """Item 6: the forget slice (units H..2H, PyTorch's gate order i, f, g, o) of bias_ih
    (ln_ih_bias) becomes the value and of bias_hh (ln_hh_bias) 0, in every layer and
    direction; every other number is the plain layer's; reset_parameters keeps it."""
    plain, layer = make(), make(forget_bias=1.0)
    assert "forget_bias=1.0" in repr(layer)
    changed = 0
    for name, value in layer.state_dict().items():
        want = plain.state_dict()[name].copy()
        if name.startswith(("bias_ih", "ln_ih_bias")):
            want[4:8] = 1.0
            changed += 1
        elif name.startswith(("bias_hh", "ln_hh_bias")):
            want[4:8] = 0.0
            changed += 1
        np.testing.assert_array_equal(value, want, err_msg=name)
    assert changed == 2 * (4 if isinstance(layer, nprnn.RNNBase) and layer.num_layers == 2 else 1)
    layer.reset_parameters()
    key = next(k for k in layer.state_dict() if k.startswith(("bias_ih", "ln_ih_bias")))
    assert np.all(layer.state_dict()[key][4:8] == 1.0)


def test_forget_bias_refusals():
    with pytest.raises(ValueError, match="LSTM: forget_bias sets the forget gate's bias, but the layer has bias=False"):
        nprnn.LSTM(3, 4, bias=False, forget_bias=1.0)
    with pytest.raises(TypeError, match=r"LSTMCell: forget_bias must be a finite number or None, got '1'"):
        nprnn.LSTMCell(3, 4, forget_bias="1")
    with pytest.raises(TypeError, match="forget_bias must be a finite number"):
        nprnn.LayerNormLSTM(3, 4, forget_bias=float("nan"))
    with pytest.raises(TypeError, match="unexpected keyword argument 'forget_bias'"):
        nprnn.GRU(3, 4, forget_bias=1.0)

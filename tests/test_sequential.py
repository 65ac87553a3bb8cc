"""Sequential, LastStep and the activation modules against PyTorch (forward and backward),
and their errors."""
import numpy as np
import pytest

import nprnn
from nprnn.layers import Embedding, Linear

ACTIVATIONS = [("ReLU", {}), ("Tanh", {}), ("Sigmoid", {}), ("Softmax", {"dim": 1}), ("Softmax", {"dim": -1}),
               ("LogSoftmax", {"dim": 0}), ("LogSoftmax", {"dim": -1})]


@pytest.mark.torch
@pytest.mark.parametrize("name,kw", ACTIVATIONS, ids=[f"{n}{kw}" for n, kw in ACTIVATIONS])
def test_activations_match_torch(name, kw):
    import torch

    rng = np.random.default_rng(0)
    x = rng.standard_normal((3, 4, 5)) * 3
    x[0, 0, 0] = 0.0
    x[1, 1, 1] = np.nan
    x[2, 2, 2] = np.inf
    g = rng.standard_normal(x.shape)
    ours = getattr(nprnn, name)(**kw, dtype=np.float64)
    y = ours(x)
    gx = ours.backward(g)
    xt = torch.from_numpy(x).requires_grad_(True)
    yt = getattr(torch.nn, name)(**kw)(xt)
    yt.backward(torch.from_numpy(g))
    for a, b in ((y, yt.detach().numpy()), (gx, xt.grad.numpy())):
        assert np.array_equal(np.isnan(a), np.isnan(b))
        np.testing.assert_allclose(np.nan_to_num(a), np.nan_to_num(b), rtol=1e-12, atol=1e-14)


def _torch_classifier(torch, ours, kind, bidirectional):
    rnn = getattr(torch.nn, kind)(3, 5, num_layers=2, batch_first=True, bidirectional=bidirectional).double()
    head = torch.nn.Linear(10 if bidirectional else 5, 2).double()
    sd = ours.state_dict()
    rnn.load_state_dict({k[2:]: torch.from_numpy(v) for k, v in sd.items() if k.startswith("0.")})
    head.load_state_dict({k[2:]: torch.from_numpy(v) for k, v in sd.items() if k.startswith("2.")})
    return rnn, head


@pytest.mark.torch
@pytest.mark.parametrize("bidirectional", [False, True])
@pytest.mark.parametrize("kind", ["RNN", "LSTM", "GRU"])
@pytest.mark.parametrize("mode", ["padded", "lengths", "packed"])
def test_classifier_matches_torch(kind, bidirectional, mode):
    """rnn -> last step -> Linear -> LogSoftmax, forward and every gradient."""
    import torch
    import torch.nn.utils.rnn as tr

    rng = np.random.default_rng(1)
    D = 2 if bidirectional else 1
    ours = nprnn.Sequential(getattr(nprnn, kind)(3, 5, num_layers=2, batch_first=True, bidirectional=bidirectional,
                                                 dtype=np.float64, seed=2),
                            nprnn.LastStep(batch_first=True), Linear(5 * D, 2, dtype=np.float64, seed=3),
                            nprnn.LogSoftmax(dim=-1, dtype=np.float64))
    rnn, head = _torch_classifier(torch, ours, kind, bidirectional)
    x = rng.standard_normal((4, 6, 3))
    lengths = [6, 2, 5, 3] if mode != "padded" else [6] * 4
    g = rng.standard_normal((4, 2))
    xt = torch.from_numpy(x).requires_grad_(True)
    if mode == "padded":
        y = ours(x)
        out, _ = rnn(xt)
        last = out[:, -1]
    else:
        packed_t = tr.pack_padded_sequence(xt, torch.tensor(lengths), batch_first=True, enforce_sorted=False)
        out_t, _ = rnn(packed_t)
        padded, _ = tr.pad_packed_sequence(out_t, batch_first=True)
        last = padded[torch.arange(4), torch.tensor(lengths) - 1]
        if mode == "lengths":
            y = ours(x, lengths=lengths)
        else:
            y = ours(nprnn.pack_padded_sequence(x, lengths, batch_first=True, enforce_sorted=False))
    yt = torch.log_softmax(head(last), dim=-1)
    grad = ours.backward(g)
    yt.backward(torch.from_numpy(g))
    np.testing.assert_allclose(y, yt.detach().numpy(), rtol=1e-10, atol=1e-12)
    if mode == "packed":
        grad, _ = nprnn.pad_packed_sequence(grad, batch_first=True, total_length=6)
    np.testing.assert_allclose(grad, xt.grad.numpy(), rtol=1e-10, atol=1e-12)
    want = {f"0.{k}": p.grad.numpy() for k, p in rnn.named_parameters()}
    want.update({f"2.{k}": p.grad.numpy() for k, p in head.named_parameters()})
    for k, w in want.items():
        np.testing.assert_allclose(ours.grads[k], w, rtol=1e-10, atol=1e-12, err_msg=k)


def test_last_step_layouts_and_unbatched():
    x = np.arange(2 * 3 * 4, dtype=np.float32).reshape(2, 3, 4)
    np.testing.assert_array_equal(nprnn.LastStep()(x), x[-1])
    np.testing.assert_array_equal(nprnn.LastStep(batch_first=True)(x), x[:, -1])
    np.testing.assert_array_equal(nprnn.LastStep(batch_first=True)(x, lengths=[2, 1]), np.stack([x[0, 1], x[1, 0]]))
    step = nprnn.LastStep()
    np.testing.assert_array_equal(step(x[:, 0]), x[-1, 0])  # unbatched (L, F)
    g = step.backward(np.ones(4, np.float32))
    assert g.shape == (2, 4) and g[-1].sum() == 4 and g[0].sum() == 0


def test_embedding_classifier_backward_stops_at_the_indices():
    m = nprnn.Sequential(Embedding(10, 3, seed=0), nprnn.GRU(3, 4, batch_first=True, seed=0), nprnn.LastStep(True),
                         Linear(4, 2, seed=0))
    y = m(np.array([[1, 2, 3], [4, 5, 6]]))
    assert m.backward(np.ones_like(y)) is None
    assert np.abs(m.grads["0.weight"]).sum() > 0


def test_sequential_and_last_step_refusals():
    with pytest.raises(TypeError, match="Sequential: item 1 is a ufunc, not an nprnn Module"):
        nprnn.Sequential(nprnn.ReLU(), np.tanh)
    with pytest.raises(ValueError, match="LastStep: expected a recurrent layer's output, 2-D or 3-D, got 1-D"):
        nprnn.LastStep()(np.zeros(3, np.float32))
    with pytest.raises(RuntimeError, match="Expected `len\\(lengths\\)` to be equal to batch_size"):
        nprnn.LastStep()(np.zeros((3, 2, 4), np.float32), lengths=[3])
    with pytest.raises(ValueError, match="at most the input's sequence length 3"):
        nprnn.LastStep()(np.zeros((3, 2, 4), np.float32), lengths=[4, 1])
    step = nprnn.LastStep()
    step(np.zeros((3, 2, 4), np.float32))
    with pytest.raises(ValueError, match=r"LastStep: grad_output has shape \(2, 5\), expected \(2, 4\)"):
        step.backward(np.zeros((2, 5), np.float32))
    with pytest.raises(TypeError, match="Softmax: dim must be an int, got float"):
        nprnn.Softmax(dim=1.0)
    with pytest.raises(IndexError, match="Dimension out of range"):
        nprnn.LogSoftmax(dim=2)(np.zeros((2, 2), np.float32))
    relu = nprnn.ReLU()
    with pytest.raises(RuntimeError, match="ReLU.backward\\(\\) needs a forward pass in training mode first"):
        relu.backward(np.zeros(2, np.float32))


def test_named_children_from_a_mapping():
    from collections import OrderedDict

    rnn, head = nprnn.GRU(3, 4, seed=0), nprnn.Linear(4, 2, seed=1)
    model = nprnn.Sequential(OrderedDict([("rnn", rnn), ("last", nprnn.LastStep()), ("head", head)]))
    assert model["rnn"] is rnn and model[2] is head
    assert list(model.state_dict()) == [f"rnn.{k}" for k in rnn.state_dict()] + ["head.weight", "head.bias"]
    x = np.random.default_rng(0).standard_normal((5, 2, 3)).astype(np.float32)
    np.testing.assert_array_equal(model(x), head(rnn(x)[0][-1]))
    with pytest.raises(ValueError, match="a child's name must be non-empty and without '.', got 'a.b'"):
        nprnn.Sequential({"a.b": head})


def test_backward_without_the_input_gradient():
    """``Sequential.backward(g, input_grad=False)``: None for the input, and every
    parameter gradient as the full backward's (the first LSTM leaves out its products with
    W_ih)."""
    x = np.random.default_rng(3).standard_normal((4, 6, 3)).astype(np.float32)
    grads = []
    for want in (True, False):
        model = nprnn.Sequential(nprnn.LSTM(3, 5, num_layers=2, batch_first=True, seed=1), nprnn.LastStep(True),
                                 nprnn.Linear(5, 2, seed=2)).train()
        out = model(x)
        got = model.backward(np.ones_like(out), input_grad=want)
        assert (got is None) == (not want) and (got is None or got.shape == x.shape)
        grads.append({k: v.copy() for k, v in model.grads.items()})
    for name in grads[0]:
        np.testing.assert_array_equal(grads[0][name], grads[1][name], err_msg=name)
    with pytest.raises(TypeError, match="^input_grad should be of type bool, got: NoneType$"):
        model.backward(np.ones_like(out), input_grad=None)

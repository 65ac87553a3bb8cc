"""A PyTorch user's habits (issue 28): a training loop written exactly as one writes it for
torch -- ``model.parameters()``, ``clip_grad_norm_(model.parameters(), 1.0)``,
``zero_grad(set_to_none=True)``, a frozen first layer, ``model.double()`` after the
optimizer is built -- run side by side with the same loop in torch, every parameter equal
after 20 steps; and each habit on its own, against torch's behaviour."""
import re
import warnings

import numpy as np
import pytest

import nprnn
from nprnn.layers import Linear
from nprnn.losses import mse_loss
from nprnn.optim import SGD, Adam, clip_grad_norm_


def _ours():
    return nprnn.Sequential(nprnn.LSTM(3, 6, batch_first=True, seed=0), nprnn.GRU(6, 5, batch_first=True, seed=1),
                            nprnn.LastStep(batch_first=True), Linear(5, 2, seed=2))


def _theirs(torch, ours):
    class Net(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.add_module("0", torch.nn.LSTM(3, 6, batch_first=True))
            self.add_module("1", torch.nn.GRU(6, 5, batch_first=True))
            self.add_module("3", torch.nn.Linear(5, 2))

        def forward(self, x):
            out, _ = self._modules["0"](x)
            out, _ = self._modules["1"](out)
            return self._modules["3"](out[:, -1])

    net = Net()
    net.load_state_dict({k: torch.from_numpy(np.array(v, np.float32)) for k, v in ours.state_dict().items()})
    return net


@pytest.mark.torch
@pytest.mark.parametrize("make_opt", ["SGD", "Adam groups"])
def test_a_torch_style_training_loop_matches_torch(make_opt):
    import torch

    rng = np.random.default_rng(0)
    x, y = rng.standard_normal((4, 7, 3)), rng.standard_normal((4, 2))
    ours = _ours()
    theirs = _theirs(torch, ours)
    runs = {}
    for name, model in (("nprnn", ours), ("torch", theirs)):
        optim = torch.optim if name == "torch" else nprnn.optim
        if make_opt == "SGD":
            opt = optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
        else:
            first = model._modules["0"] if name == "torch" else model[0]
            rest = [p for n, p in model.named_parameters() if not n.startswith("0.")]
            opt = optim.Adam([{"params": first.parameters()}, {"params": rest, "lr": 0.01}], lr=0.05)
        model.double()  # after the optimizer: torch converts in place, nprnn's optimizers follow
        (model._modules["0"] if name == "torch" else model[0]).requires_grad_(False)  # a frozen first layer
        for _ in range(20):
            opt.zero_grad(set_to_none=True)
            if name == "torch":
                out = model(torch.from_numpy(x))
                loss = torch.nn.functional.mse_loss(out, torch.from_numpy(y))
                loss.backward()
                torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            else:
                out = model(x)
                loss = mse_loss(out, y)
                model.backward(loss.backward())
                clip_grad_norm_(model.parameters(), 1.0)
            opt.step()
        runs[name] = {k: (v.detach().numpy() if name == "torch" else np.asarray(v)) for k, v in
                      model.named_parameters()}
        assert all(v.dtype == np.float64 for v in runs[name].values())
    assert list(runs["nprnn"]) == list(runs["torch"])
    start = _ours().state_dict()
    for key, want in runs["torch"].items():
        np.testing.assert_allclose(runs["nprnn"][key], want, rtol=1e-7, atol=1e-12, err_msg=key)
        if key.startswith("0."):
            np.testing.assert_array_equal(runs["nprnn"][key], start[key])  # frozen: unchanged
        else:
            assert not np.array_equal(runs["nprnn"][key], start[key].astype(np.float64)), key  # trained


@pytest.mark.torch
def test_clip_grad_norm_and_value_take_what_torchs_take():
    import torch

    for form in ("module", "parameters", "named", "one"):
        for fn, arg in (("norm", 0.5), ("value", 0.01)):
            ours = nprnn.GRU(3, 4, seed=0, dtype=np.float64)
            theirs = torch.nn.GRU(3, 4).double()
            theirs.load_state_dict({k: torch.from_numpy(v) for k, v in ours.state_dict().items()})
            x = np.random.default_rng(1).standard_normal((5, 2, 3))
            out, _ = ours(x)
            ours.backward(np.ones_like(out))
            t_out, _ = theirs(torch.from_numpy(x))
            t_out.sum().backward()
            pick = {"module": (ours, theirs.parameters()), "parameters": (ours.parameters(), theirs.parameters()),
                    "named": (ours.named_parameters(), [p for _, p in theirs.named_parameters()]),
                    "one": (ours.weight_hh_l0, theirs.weight_hh_l0)}[form]
            if fn == "norm":
                got = clip_grad_norm_(pick[0], arg)
                want = float(torch.nn.utils.clip_grad_norm_(pick[1], arg))
                assert got == pytest.approx(want, rel=1e-12), form
            else:
                assert nprnn.optim.clip_grad_value_(pick[0], arg) is None
                torch.nn.utils.clip_grad_value_(pick[1], arg)
            for name, p in theirs.named_parameters():
                np.testing.assert_allclose(ours.grads[name], p.grad.numpy(), rtol=1e-12, err_msg=(form, fn, name))


def test_clipping_a_module_whose_parameters_are_read_only_no_longer_raises():
    m = nprnn.LSTM(2, 3)
    out, _ = m(np.ones((4, 1, 2), np.float32))
    m.backward(np.full_like(out, 100.0))
    before = [np.array(p) for p in m.parameters()]
    total = clip_grad_norm_(m.parameters(), 1.0)  # before: "nprnn parameters are read-only"
    assert total > 1.0
    assert np.sqrt(sum(float((p.grad ** 2).sum()) for p in m.parameters())) == pytest.approx(1.0, rel=1e-5)
    assert all(np.array_equal(a, b) for a, b in zip(before, m.parameters()))  # the weights are untouched


def test_a_frozen_parameter_has_no_gradient_and_is_skipped_and_kept():
    m = nprnn.LSTM(2, 3, num_layers=2, seed=0)
    m.weight_ih_l0.requires_grad = False
    assert m.weight_ih_l0.grad is None and not m.weight_ih_l0.requires_grad
    opt = Adam(m.parameters(), lr=0.1)
    frozen = np.array(m.weight_ih_l0)
    out, _ = m(np.ones((4, 1, 2), np.float32))
    m.backward(np.ones_like(out))
    opt.step()
    np.testing.assert_array_equal(m.weight_ih_l0, frozen)
    assert not np.array_equal(m.weight_hh_l0, nprnn.LSTM(2, 3, num_layers=2, seed=0).weight_hh_l0)
    assert "weight_ih_l0" in m.state_dict()
    m.weight_ih_l0.requires_grad = True
    out, _ = m(np.ones((4, 1, 2), np.float32))
    m.backward(np.ones_like(out))
    assert m.weight_ih_l0.grad is not None and np.abs(m.weight_ih_l0.grad).sum() > 0
    assert m.requires_grad_(False) is m and not any(p.requires_grad for p in m.parameters())
    import copy

    assert not copy.deepcopy(m).weight_hh_l1.requires_grad  # a copy keeps what is frozen


def test_zero_grad_set_to_none_then_backward_gives_fresh_gradients():
    m = nprnn.GRU(2, 3, seed=0)
    x = np.ones((3, 1, 2), np.float32)
    out, _ = m(x)
    m.backward(np.ones_like(out))
    first = np.array(m.weight_hh_l0.grad)
    m.zero_grad(set_to_none=True)
    assert all(p.grad is None for p in m.parameters())
    out, _ = m(x)
    m.backward(np.ones_like(out))
    np.testing.assert_array_equal(m.weight_hh_l0.grad, first)  # not accumulated onto the old one
    opt = SGD(m.parameters(), lr=1.0)
    opt.zero_grad(set_to_none=True)
    before = np.array(m.weight_hh_l0)
    opt.step()  # no gradient anywhere: nothing moves (torch skips p.grad None)
    np.testing.assert_array_equal(m.weight_hh_l0, before)


def test_dtype_conversion_and_devices():
    m = nprnn.LSTM(2, 3, seed=0)
    x = np.ones((4, 1, 2))
    assert m.double() is m and m.dtype == np.float64 and m.weight_hh_l0.dtype == np.float64
    assert m(x)[0].dtype == np.float64
    assert m.float().dtype == np.float32 and m(x.astype(np.float32))[0].dtype == np.float32
    assert m.to("cpu") is m and m.to(device="cpu", dtype=np.float64).dtype == np.float64
    with pytest.raises(ValueError, match=re.escape("nprnn runs on the CPU only: cannot move a module to 'cuda:0'")):
        m.to("cuda:0")
    with pytest.raises(TypeError, match="dtype must be numpy.float32 or numpy.float64, got float16"):
        m.to(np.float16)
    m.weight_hh_l0 = np.zeros((12, 3))  # an optimizer built before an assignment updates the new array
    opt = SGD(m.parameters(), lr=1.0)
    m.weight_hh_l0 = np.ones((12, 3))
    out, _ = m(x)
    m.backward(np.ones_like(out))
    opt.step()
    assert not np.array_equal(m.weight_hh_l0, np.ones((12, 3)))


def test_traversal_helpers():
    model = nprnn.Sequential(nprnn.GRU(2, 3), nprnn.LastStep(), Linear(3, 1))
    assert [type(m).__name__ for m in model.modules()] == ["Sequential", "GRU", "LastStep", "Linear"]
    seen = []
    assert model.apply(lambda m: seen.append(type(m).__name__)) is model
    assert seen == ["GRU", "LastStep", "Linear", "Sequential"]  # children first, as torch
    assert model[0].weight_ih_l0.numel() == 18
    assert model[0].flatten_parameters() is None


@pytest.mark.torch
def test_torch_dtypes_and_tensors_that_require_grad():
    import torch

    assert nprnn.GRU(2, 3, dtype=torch.float64).dtype == np.float64
    assert nprnn.LSTMCell(2, 3, dtype=torch.float32).dtype == np.float32
    with pytest.raises(TypeError, match="float16"):
        nprnn.GRU(2, 3, dtype=torch.float16)
    nprnn._checks._WARNED_DETACH.clear()  # (the warning comes once per process and entry point)
    m = nprnn.GRU(2, 3)
    x = torch.randn(4, 1, 2, requires_grad=True)
    with pytest.warns(UserWarning, match="taken as its detached data"):
        out, _ = m(x)
    np.testing.assert_array_equal(out, m(x.detach().numpy())[0])
    t = torch.nn.GRU(2, 3)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        m.load_state_dict(dict(t.named_parameters()))  # torch parameters require grad: their values are copied
    np.testing.assert_array_equal(m.weight_hh_l0, t.weight_hh_l0.detach().numpy())
    cell = nprnn.GRUCell(2, 3).eval()
    with pytest.warns(UserWarning, match="GRUCell input: a tensor that requires grad is taken as its detached"):
        got = cell(torch.ones(1, 2, requires_grad=True))
    np.testing.assert_array_equal(got, cell(np.ones((1, 2), np.float32)))


def test_an_optimizers_repr_shows_each_groups_own_options():
    a, b = nprnn.GRU(2, 3), Linear(3, 1)
    text = repr(Adam([{"params": a.parameters()}, {"params": b.parameters(), "lr": 0.1}], lr=0.001))
    assert "Parameter Group 0\n    betas: (0.9, 0.999)\n    eps: 1e-08\n    lr: 0.001" in text
    assert "Parameter Group 1\n    betas: (0.9, 0.999)\n    eps: 1e-08\n    lr: 0.1" in text


_NO_INPUT_GRAD_SCHEDULES = {  # settings that put a stack in each of its shapes of work (both tiers)
    "one thread": dict(num_threads=1),
    "batch split": dict(num_threads=2, min_split_work=0),
    "directions side by side": dict(num_threads=2, min_split_work=0, min_step_work=0, min_train_step_work=0),
    "wavefront": dict(num_threads=2, min_wavefront_batch=0, min_wavefront_work=0, max_wavefront_work=1 << 40,
                      wavefront_balance=0),
    "layers pipelined": dict(num_threads=2, min_step_work=0, min_train_step_work=0, chunk_steps=2),
}


@pytest.mark.parametrize("backend", ["native", "numpy"])
@pytest.mark.parametrize("schedule", _NO_INPUT_GRAD_SCHEDULES)
def test_backward_without_the_input_gradient(backend, schedule):
    """An input that does not require grad, as PyTorch has it: ``backward(...,
    input_grad=False)`` returns None for the input's gradient and the same state and
    parameter gradients, bit for bit, as the full backward."""
    from nprnn.functional import native

    if backend == "native" and native._native is None:
        pytest.skip("the compiled kernels are not built")
    rng = np.random.default_rng(4)
    with nprnn.config.override(backend=backend, **_NO_INPUT_GRAD_SCHEDULES[schedule]):
        for kind, kw, bidirectional in [("LSTM", {"dropout": 0.3}, True), ("LSTM", {"proj_size": 3}, False),
                                        ("GRU", {}, False), ("RNN", {}, True), ("LayerNormLSTM", {}, True),
                                        ("LayerNormGRU", {}, False), ("MinGRU", {}, False)]:
            made = [getattr(nprnn, kind)(4, 6, num_layers=2, bidirectional=bidirectional, seed=3, **kw).train()
                    for _ in range(2)]
            x = rng.standard_normal((7, 12, 4)).astype(np.float32)
            lengths = np.full(12, 7) if schedule == "wavefront" else rng.integers(1, 8, 12)
            results = []
            for m, want_dx in zip(made, (True, False)):
                np.random.seed(0)  # (the same dropout masks)
                out, _ = m(x, lengths=lengths)
                g = np.random.default_rng(5).standard_normal(out.shape).astype(np.float32)
                dx, dh = m.backward(g, input_grad=want_dx)
                results.append((dx, dh, {k: v.copy() for k, v in m.grads.items()}))
            (dx, dh, grads), (no_dx, no_dh, no_grads) = results
            assert dx is not None and dx.shape == x.shape and no_dx is None
            for a, b in zip(np.atleast_1d(dh) if not isinstance(dh, tuple) else dh,
                            np.atleast_1d(no_dh) if not isinstance(no_dh, tuple) else no_dh):
                np.testing.assert_array_equal(a, b, err_msg=kind)
            assert grads.keys() == no_grads.keys()
            for name in grads:
                np.testing.assert_array_equal(grads[name], no_grads[name], err_msg=f"{kind} {name}")


def test_backward_input_grad_must_be_a_bool():
    m = nprnn.LSTM(3, 4).train()
    out, _ = m(np.zeros((2, 1, 3), np.float32))
    with pytest.raises(TypeError, match="^input_grad should be of type bool, got: str$"):
        m.backward(np.ones_like(out), input_grad="no")
    assert m.backward(np.ones_like(out), input_grad=False)[0] is None  # (the refusal kept the record)

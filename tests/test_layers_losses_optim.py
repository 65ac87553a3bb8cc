"""Supporting layers, losses and optimizers against PyTorch, plus their own invariants."""
import re

import numpy as np
import pytest

import nprnn
from nprnn.layers import Dropout, Embedding, LayerNorm, Linear
from nprnn.losses import cross_entropy, mse_loss
from nprnn.optim import SGD, Adam, AdamW, clip_grad_norm_

TOL = {np.float64: dict(rtol=1e-7, atol=1e-10), np.float32: dict(rtol=1.3e-6, atol=1e-5)}


def torch_mod():
    import torch

    return torch


@pytest.mark.torch
@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_linear_layernorm_embedding_match_torch(dtype):
    torch = torch_mod()
    tdt = torch.float64 if dtype == np.float64 else torch.float32
    rng = np.random.default_rng(0)
    for ours, theirs, x in (
        (Linear(5, 3, dtype=dtype, seed=0), torch.nn.Linear(5, 3, dtype=tdt), rng.standard_normal((4, 2,
                                                                                                   5)).astype(dtype)),
        (Linear(5, 3, bias=False, dtype=dtype, seed=0), torch.nn.Linear(5, 3, bias=False, dtype=tdt),
         rng.standard_normal((4, 5)).astype(dtype)),
        (LayerNorm(6, dtype=dtype), torch.nn.LayerNorm(6, dtype=tdt), rng.standard_normal((3,
                                                                                           6)).astype(dtype) * 3 + 1),
        (LayerNorm((2, 3), eps=1e-3, dtype=dtype), torch.nn.LayerNorm((2, 3), eps=1e-3, dtype=tdt),
         rng.standard_normal((4, 2, 3)).astype(dtype)),
    ):
        sd = {k: rng.standard_normal(v.shape).astype(dtype) for k, v in ours.state_dict().items()}
        ours.load_state_dict(sd)
        theirs.load_state_dict({k: torch.from_numpy(v) for k, v in sd.items()})
        xt = torch.from_numpy(x).requires_grad_(True)
        y, yt = ours(x), theirs(xt)
        g = rng.standard_normal(y.shape).astype(dtype)
        (yt * torch.from_numpy(g)).sum().backward()
        gx = ours.backward(g)
        np.testing.assert_allclose(y, yt.detach().numpy(), **TOL[dtype])
        np.testing.assert_allclose(gx, xt.grad.numpy(), **TOL[dtype])
        for n, p in theirs.named_parameters():
            np.testing.assert_allclose(ours.grads[n], p.grad.numpy(), **TOL[dtype], err_msg=n)
        assert y.dtype == dtype and gx.dtype == dtype

    emb = Embedding(7, 3, padding_idx=2, dtype=dtype, seed=0)
    temb = torch.nn.Embedding(7, 3, padding_idx=2, dtype=tdt)
    temb.load_state_dict({"weight": torch.from_numpy(emb.weight.copy())})
    idx = rng.integers(0, 7, size=(5, 4))
    y, yt = emb(idx), temb(torch.from_numpy(idx))
    g = rng.standard_normal(y.shape).astype(dtype)
    (yt * torch.from_numpy(g)).sum().backward()
    assert emb.backward(g) is None
    np.testing.assert_allclose(y, yt.detach().numpy(), **TOL[dtype])
    np.testing.assert_allclose(emb.grads["weight"], temb.weight.grad.numpy(), **TOL[dtype])
    assert (emb.grads["weight"][2] == 0).all() and (emb.weight[2] == 0).all()


@pytest.mark.torch
@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_a_linear_large_enough_for_the_compiled_kernel_matches_torch(dtype, bias, monkeypatch):
    """A char-LM's head (256 -> 94 over 64 x 32 rows): on the compiled tier its products run
    on the kernel with the recurrent layers' threads (one product for all leading indices);
    strided inputs and gradients too."""
    from nprnn.functional import native

    torch = torch_mod()
    tdt = torch.float64 if dtype == np.float64 else torch.float32
    rng = np.random.default_rng(1)
    ours, theirs = Linear(256, 94, bias=bias, dtype=dtype, seed=0), torch.nn.Linear(256, 94, bias=bias, dtype=tdt)
    theirs.load_state_dict({k: torch.from_numpy(v) for k, v in ours.state_dict().items()})
    calls = []
    for name in ("product", "_at"):
        real = getattr(native, name)
        monkeypatch.setattr(native, name, lambda *a, _real=real, _name=name, **k: calls.append(_name) or _real(*a, **k))
    for x in (rng.standard_normal((64, 32, 256)).astype(dtype),
              rng.standard_normal((32, 64, 256)).astype(dtype).transpose(1, 0, 2)):  # (a strided view)
        ours.zero_grad()
        theirs.zero_grad()
        xt = torch.from_numpy(np.ascontiguousarray(x)).requires_grad_(True)
        y, yt = ours(x), theirs(xt)
        g = rng.standard_normal((y.shape[1], y.shape[0], y.shape[2])).astype(dtype).transpose(1, 0, 2)
        (yt * torch.from_numpy(np.ascontiguousarray(g))).sum().backward()
        gx = ours.backward(g)
        assert y.shape == (64, 32, 94) and gx.shape == x.shape and y.dtype == gx.dtype == dtype
        np.testing.assert_allclose(y, yt.detach().numpy(), **TOL[dtype])
        np.testing.assert_allclose(gx, xt.grad.numpy(), **TOL[dtype])
        g2, x2 = g.reshape(-1, 94).astype(np.float64), x.reshape(-1, 256).astype(np.float64)
        exact = {"weight": (g2.T @ x2, np.abs(g2).T @ np.abs(x2)), "bias": (g2.sum(0), np.abs(g2).sum(0))}
        for n, p in theirs.named_parameters():
            if dtype == np.float32:  # sums over 2048 rows: float32 rounds them (torch's too), so against float64
                err = np.abs(ours.grads[n] - exact[n][0])
                assert (err <= 8 * np.finfo(np.float32).eps * exact[n][1]).all(), (n, (err / exact[n][1]).max())
                continue
            np.testing.assert_allclose(ours.grads[n], p.grad.numpy(), **TOL[dtype], err_msg=n)
    assert calls == (["product", "_at", "product"] * 2 if native.backend() == "native" else []), calls


def test_dropout_layer():
    d = Dropout(0.3, dtype=np.float64, seed=0)
    x = np.ones((200, 50))
    y = d(x)
    kept = y != 0
    assert 0.6 < kept.mean() < 0.8
    np.testing.assert_allclose(y[kept], 1 / 0.7)
    g = np.random.default_rng(0).standard_normal(x.shape)
    np.testing.assert_allclose(d.backward(g), g * y)  # the same mask, scaled the same way
    d.eval()
    np.testing.assert_array_equal(d(x), x)


@pytest.mark.torch
@pytest.mark.parametrize("kw", [
    {}, {"reduction": "sum"}, {"reduction": "none"}, {"ignore_index": 1}, {"label_smoothing": 0.2},
    {"weight": True}, {"weight": True, "label_smoothing": 0.1, "ignore_index": 0},
    {"weight": True, "reduction": "none", "label_smoothing": 0.3}, {"reduction": "sum", "label_smoothing": 0.5,
                                                                    "ignore_index": 2},
])
@pytest.mark.parametrize("shape", [(6, 4), (4,), (3, 4, 5)])
def test_cross_entropy_matches_torch(kw, shape):
    torch = torch_mod()
    rng = np.random.default_rng(1)
    x = rng.standard_normal(shape) * 3
    C = shape[0] if len(shape) == 1 else shape[1]
    tshape = () if len(shape) == 1 else (shape[0],) + shape[2:]
    t = rng.integers(0, C, size=tshape)
    kw = dict(kw)
    if kw.pop("weight", False):
        kw["weight"] = rng.random(C) + 0.5
    tkw = {k: (torch.from_numpy(v) if isinstance(v, np.ndarray) else v) for k, v in kw.items()}
    xt = torch.from_numpy(x).requires_grad_(True)
    lt = torch.nn.functional.cross_entropy(xt, torch.from_numpy(np.asarray(t)), **tkw)
    loss = cross_entropy(x, t, **kw)
    g = rng.standard_normal(lt.shape) if lt.ndim else None
    (lt * (torch.from_numpy(g) if g is not None else 1)).sum().backward()
    np.testing.assert_allclose(np.asarray(loss.value), lt.detach().numpy(), rtol=1e-12, atol=1e-14)
    np.testing.assert_allclose(loss.backward(g), xt.grad.numpy(), rtol=1e-12, atol=1e-14)


@pytest.mark.torch
@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
def test_mse_matches_torch(reduction):
    torch = torch_mod()
    rng = np.random.default_rng(2)
    x, y = rng.standard_normal((3, 4)), rng.standard_normal((3, 4))
    xt = torch.from_numpy(x).requires_grad_(True)
    lt = torch.nn.functional.mse_loss(xt, torch.from_numpy(y), reduction=reduction)
    loss = mse_loss(x, y, reduction=reduction)
    g = rng.standard_normal(lt.shape) if lt.ndim else None
    (lt * (torch.from_numpy(g) if g is not None else 1)).sum().backward()
    np.testing.assert_allclose(np.asarray(loss.value), lt.detach().numpy(), rtol=1e-12)
    np.testing.assert_allclose(loss.backward(g), xt.grad.numpy(), rtol=1e-12)


def test_cross_entropy_gradient_finite_differences():
    rng = np.random.default_rng(3)
    x = rng.standard_normal((5, 4))
    t = np.array([0, 3, -100, 1, 2])
    w = rng.random(4) + 0.5
    grad = cross_entropy(x, t, weight=w, label_smoothing=0.15).backward()
    num = np.zeros_like(x)
    for i in np.ndindex(x.shape):
        xp, xm = x.copy(), x.copy()
        xp[i] += 1e-6
        xm[i] -= 1e-6
        num[i] = (float(cross_entropy(xp, t, weight=w, label_smoothing=0.15))
                  - float(cross_entropy(xm, t, weight=w, label_smoothing=0.15))) / 2e-6
    np.testing.assert_allclose(grad, num, rtol=1e-6, atol=1e-9)
    assert (grad[2] == 0).all()  # the ignored row


OPTIMS = [
    (SGD, dict(lr=0.1)), (SGD, dict(lr=0.1, momentum=0.9)), (SGD, dict(lr=0.05, momentum=0.9, nesterov=True,
                                                                       weight_decay=0.01)),
    (SGD, dict(lr=0.05, momentum=0.5, dampening=0.3)), (Adam, dict(lr=1e-2)), (Adam, dict(lr=1e-2, betas=(0.8, 0.9),
                                                                                          weight_decay=0.1)),
    (AdamW, dict(lr=1e-2)), (AdamW, dict(lr=3e-3, weight_decay=0.5, eps=1e-6)),
]


@pytest.mark.torch
@pytest.mark.parametrize("cls,kw", OPTIMS, ids=[f"{c.__name__}-{i}" for i, (c, _) in enumerate(OPTIMS)])
def test_optimizers_match_torch(cls, kw):
    torch = torch_mod()
    rng = np.random.default_rng(4)
    model = nprnn.GRU(3, 4, dtype=np.float64, seed=0)
    tparams = [torch.from_numpy(p.copy()).requires_grad_(True) for p in model.parameters()]
    topt = getattr(torch.optim, cls.__name__)(tparams, **kw)
    opt = cls(model, **kw)
    for _ in range(7):
        grads = [rng.standard_normal(p.shape) for p in tparams]
        for tp, g, ours in zip(tparams, grads, model.grads.values()):
            tp.grad = torch.from_numpy(g.copy())
            ours[...] = g
        topt.step()
        opt.step()
    for tp, p in zip(tparams, model.parameters()):
        np.testing.assert_allclose(p, tp.detach().numpy(), rtol=1e-12, atol=1e-14)
    tstate = topt.state_dict()["state"]
    for k, s in opt.state_dict()["state"].items():
        for name, v in s.items():
            want = tstate[k][name]
            np.testing.assert_allclose(np.asarray(v), np.asarray(want), rtol=1e-12, atol=1e-14, err_msg=name)


def test_optimizer_state_dict_round_trip_and_errors():
    model = nprnn.LSTM(3, 4, dtype=np.float64, seed=0)
    opt = Adam(model, lr=0.01)
    for g in model.grads.values():
        g[...] = 1.0
    opt.step()
    sd = opt.state_dict()
    opt2 = Adam(nprnn.LSTM(3, 4, dtype=np.float64, seed=1), lr=0.5)
    opt2.load_state_dict(sd)
    assert opt2.param_groups[0]["lr"] == 0.01 and opt2.defaults["lr"] == 0.5  # as torch: groups load, defaults stay
    np.testing.assert_array_equal(opt2.state[0]["exp_avg"], opt.state[0]["exp_avg"])
    bad = opt.state_dict()
    bad["state"][0]["exp_avg"] = np.zeros((2, 2))
    before = opt2.state_dict()
    with pytest.raises(ValueError,
                       match=re.escape("optimizer state 'exp_avg' of parameter 0 has shape (2, 2), expected (16, 3)")):
        opt2.load_state_dict(bad)
    np.testing.assert_array_equal(opt2.state_dict()["state"][0]["exp_avg"], before["state"][0]["exp_avg"])
    with pytest.raises(ValueError, match="doesn't match the size of optimizer's group"):
        Adam(nprnn.GRU(3, 4, bias=False)).load_state_dict(sd)


@pytest.mark.parametrize("call,msg", [
    (lambda: SGD(nprnn.RNN(2, 2), lr=-1), "Invalid learning rate: -1"),
    (lambda: Adam(nprnn.RNN(2, 2), betas=(1.0, 0.9)), "Invalid beta parameter at index 0: 1.0"),
    (lambda: SGD(nprnn.RNN(2, 2), nesterov=True), "Nesterov momentum requires a momentum and zero dampening"),
    (lambda: Adam([]), "optimizer got an empty parameter list"),
    (lambda: cross_entropy(np.zeros((2, 3)), np.array([0, 3])), "Target 3 is out of bounds."),
    (lambda: cross_entropy(np.zeros((2, 3)), np.array([0, 1]), reduction="avg"),
     "avg is not a valid value for reduction"),
    (lambda: cross_entropy(np.zeros((2, 3)), np.array([0.5, 1])),
     "cross_entropy: target must hold integer class indices"),
    (lambda: cross_entropy(np.zeros((2, 3)), np.array([0, 1]), label_smoothing=1.5),
     "label_smoothing must be between 0.0 and 1.0"),
    (lambda: mse_loss(np.zeros(2), np.zeros(3)), "mse_loss: input and target must have the same shape"),
    (lambda: Linear(3, 2)(np.zeros((2, 4), np.float32)),
     "Linear: input.size(-1) must be equal to in_features. Expected 3, got 4"),
    (lambda: Embedding(3, 2)(np.array([0, 3])), "Embedding: index 3 is out of range for 3 embeddings"),
    (lambda: Embedding(3, 2)(np.array([0.0])), "Embedding: input must be an array of integer indices"),
    (lambda: Embedding(3, 2, padding_idx=3), "Padding_idx must be within num_embeddings"),
    (lambda: Dropout(1.5), "dropout probability has to be between 0 and 1, but got 1.5"),
    (lambda: LayerNorm(4)(np.zeros((2, 3), np.float32)),
     "Given normalized_shape=[4], expected input with shape [*, 4]"),
    (lambda: Linear(3, 2).backward(np.zeros((1, 2), np.float32)),
     "Linear.backward() needs a forward pass in training mode first"),
])
def test_errors(call, msg):
    with pytest.raises((ValueError, TypeError, RuntimeError, IndexError, AssertionError), match=re.escape(msg)):
        call()


@pytest.mark.torch
def test_clip_grad_norm_matches_torch():
    torch = torch_mod()
    rng = np.random.default_rng(5)
    model = nprnn.LSTM(3, 4, num_layers=2, dtype=np.float64, seed=0)
    grads = [rng.standard_normal(g.shape) * 3 for g in model.grads.values()]
    for ours, g in zip(model.grads.values(), grads):
        ours[...] = g
    tparams = [torch.zeros(g.shape, dtype=torch.float64, requires_grad=True) for g in grads]
    for tp, g in zip(tparams, grads):
        tp.grad = torch.from_numpy(g.copy())
    for max_norm, norm_type in ((1.0, 2.0), (50.0, 2.0), (0.5, float("inf")), (2.0, 1.0)):
        total = clip_grad_norm_(model, max_norm, norm_type)
        ttotal = torch.nn.utils.clip_grad_norm_(tparams, max_norm, norm_type)
        assert total == pytest.approx(float(ttotal), rel=1e-12)
        for ours, tp in zip(model.grads.values(), tparams):
            np.testing.assert_allclose(ours, tp.grad.numpy(), rtol=1e-12)


class Seq2(nprnn.Module):
    def __init__(self):
        super().__init__()
        self.rnn = nprnn.GRU(3, 4, seed=0)
        self.head = Linear(4, 2, seed=1)


def test_composition_names_and_recursion():
    m = Seq2()
    names = list(m.state_dict())
    assert names == ["rnn.weight_ih_l0", "rnn.weight_hh_l0", "rnn.bias_ih_l0", "rnn.bias_hh_l0", "head.weight",
                     "head.bias"]
    assert list(m.grads) == names
    m.eval()
    assert not m.rnn.training and not m.head.training
    m.train()
    assert m.rnn.training
    for g in m.grads.values():
        g += 1
    m.zero_grad()
    assert all((g == 0).all() for g in m.grads.values())
    sd = {k: v + 1 for k, v in m.state_dict().items()}
    m.load_state_dict(sd)
    np.testing.assert_array_equal(m.head.bias, sd["head.bias"])
    assert "(rnn): GRU(3, 4)" in repr(m)


@pytest.mark.parametrize("cls", [SGD, Adam, AdamW])
def test_optimizers_take_parameters_and_named_parameters(cls):
    """PyTorch's idiom: ``Adam(model.parameters())``; each parameter knows its gradient."""
    import copy
    import pickle

    rng = np.random.default_rng(0)
    models = [nprnn.GRU(3, 4, num_layers=2, seed=1) for _ in range(3)]
    opts = [cls(models[0], lr=0.05), cls(models[1].parameters(), lr=0.05), cls(models[2].named_parameters(), lr=0.05)]
    assert opts[2].names == [n for n, _ in models[2].named_parameters()]
    x = rng.standard_normal((5, 2, 3)).astype(np.float32)
    for _ in range(3):
        for m, opt in zip(models, opts):
            opt.zero_grad()
            out, _ = m(x)
            m.backward(np.ones_like(out))
            opt.step()
    for other in models[1:]:
        for a, b in zip(models[0].parameters(), other.parameters()):
            np.testing.assert_array_equal(a, b)
    for clone in (copy.deepcopy(models[0]), pickle.loads(pickle.dumps(models[0]))):
        for name, p in clone.named_parameters():
            assert p.grad is clone.grads[name]
    m = models[0]
    m.weight_hh_l1 = np.zeros_like(m.weight_hh_l1)
    assert m.weight_hh_l1.grad is m.grads["weight_hh_l1"]


def test_optimizer_refuses_what_it_cannot_place():
    with pytest.raises(TypeError, match="item 0 is an array with no gradient the optimizer can find"):
        Adam([np.zeros(3)])
    gru, head = nprnn.GRU(2, 2), nprnn.Linear(2, 1)
    with pytest.raises(TypeError, match="a parameter group \\(a dict\\) among plain parameters"):
        Adam([*head.parameters(), {"params": gru.parameters()}])
    with pytest.raises(ValueError, match=re.escape("param group 1: unknown option(s) ['momentum']; Adam takes")):
        Adam([{"params": gru.parameters()}, {"params": head.parameters(), "momentum": 0.9}])
    with pytest.raises(ValueError, match="some parameters appear in more than one parameter group"):
        Adam([{"params": gru.parameters()}, {"params": gru.parameters(), "lr": 0.1}])
    with pytest.raises(ValueError, match="Invalid learning rate: -1.0"):
        Adam([{"params": gru.parameters(), "lr": -1.0}])
    with pytest.raises(ValueError, match="param group 0 has no 'params' key"):
        Adam([{"lr": 0.1}])
    with pytest.raises(TypeError, match="item 0 is a str"):
        Adam(["weight"])


@pytest.mark.torch
@pytest.mark.parametrize("name", ["SGD", "Adam", "AdamW"])
def test_parameter_groups_match_torch(name):
    """torch's parameter groups: each group's own options, a scheduler-style lr change
    through param_groups, and a state dict with both groups that loads back."""
    import torch

    rnn, head = nprnn.GRU(3, 4, dtype=np.float64, seed=0), nprnn.Linear(4, 2, dtype=np.float64, seed=1)
    t_rnn, t_head = torch.nn.GRU(3, 4).double(), torch.nn.Linear(4, 2).double()
    with torch.no_grad():
        for mod, tmod in ((rnn, t_rnn), (head, t_head)):
            for k, v in mod.state_dict().items():
                getattr(tmod, k).copy_(torch.from_numpy(np.array(v)))
    extra = {"momentum": 0.9} if name == "SGD" else {"betas": (0.8, 0.99)}
    groups = lambda a, b: [{"params": a}, {"params": b, "lr": 0.05, "weight_decay": 0.01, **extra}]  # noqa: E731
    opt = getattr(nprnn.optim, name)(groups(rnn.parameters(), head.named_parameters()), lr=0.01)
    t_opt = getattr(torch.optim, name)(groups(t_rnn.parameters(), t_head.parameters()), lr=0.01)
    rng = np.random.default_rng(0)
    for step in range(4):
        x = rng.standard_normal((5, 2, 3))
        out, _ = rnn(x)
        y = head(out)
        g = np.ones_like(y) * 0.1
        rnn.backward(head.backward(g))
        t_out, _ = t_rnn(torch.from_numpy(x))
        (t_head(t_out) * 0.1).sum().backward()
        opt.step()
        t_opt.step()
        opt.zero_grad()
        t_opt.zero_grad()
        if step == 1:  # a learning-rate schedule as torch users write it
            for group, t_group in zip(opt.param_groups, t_opt.param_groups):
                group["lr"] *= 0.5
                t_group["lr"] *= 0.5
    for mod, tmod in ((rnn, t_rnn), (head, t_head)):
        for k, v in mod.state_dict().items():
            np.testing.assert_allclose(v, getattr(tmod, k).detach().numpy(), rtol=1e-10, atol=1e-12, err_msg=k)
    sd = opt.state_dict()
    theirs = t_opt.state_dict()["param_groups"]
    assert [len(g["params"]) for g in sd["param_groups"]] == [len(g["params"]) for g in theirs]
    assert [g["lr"] for g in sd["param_groups"]] == [g["lr"] for g in t_opt.param_groups]
    again = getattr(nprnn.optim, name)(groups(rnn.parameters(), head.parameters()), lr=0.3)
    again.load_state_dict(sd)
    assert [g["lr"] for g in again.param_groups] == [0.005, 0.025]


@pytest.mark.parametrize("key,value,msg", [
    ("betas", [0.9], "param_groups[0]['betas'] must be 2 numbers, got [0.9]"),
    ("betas", [0.9, 1.5], "Invalid beta parameter at index 1: 1.5"),
    ("lr", -1.0, "Invalid learning rate: -1.0"),
    ("lr", "x", "param_groups[0]['lr'] must be float, got 'x'"),
    ("eps", None, "param_groups[0]['eps'] must be float, got None"),
])
def test_optimizer_state_dict_hyper_parameters_checked_before_loading(key, value, msg):
    m = nprnn.LSTM(2, 3)
    opt = Adam(m, lr=0.01)
    sd = opt.state_dict()
    bad = {"state": sd["state"], "param_groups": [dict(sd["param_groups"][0], **{key: value})]}
    with pytest.raises(ValueError, match=re.escape(msg)):
        opt.load_state_dict(bad)
    assert opt.param_groups[0]["lr"] == 0.01 and opt.param_groups[0]["betas"] == (0.9, 0.999)  # nothing changed


@pytest.mark.parametrize("mutate,msg", [
    (lambda sd: sd["param_groups"][0].pop("params"),
     "'param_groups' must be a list of dicts, each with a 'params' list"),
    (lambda sd: sd.update(param_groups="x"), "'param_groups' must be a list of dicts"),
    (lambda sd: sd["state"].update({"x": {}}), "state key 'x' is not a parameter index"),
    (lambda sd: sd["state"][0].update(exp_aog=sd["state"][0]["exp_avg"]),
     "parameter 0 has state ['exp_aog'] that Adam does not keep"),
    (lambda sd: sd["state"][0].update(exp_avg="abc"), "optimizer state 'exp_avg' of parameter 0 is not numeric"),
    (lambda sd: sd["state"][0].update(step=-1.0), "optimizer state 'step' of parameter 0 must be a number >= 0"),
    (lambda sd: sd["state"].update({0: [1, 2]}), "the state of parameter 0 must be a dict, got list"),
])
def test_optimizer_state_dict_structure_checked(mutate, msg):
    m = nprnn.GRU(2, 3, seed=0)
    opt = Adam(m, lr=0.1)
    out, _ = m(np.ones((2, 1, 2), np.float32))
    m.backward(np.ones_like(out))
    opt.step()
    sd = opt.state_dict()
    mutate(sd)
    before = {k: {n: (np.array(v) if isinstance(v, np.ndarray) else v) for n, v in s.items()} for k, s in
              enumerate(opt.state)}
    with pytest.raises(ValueError, match=re.escape(msg)):
        opt.load_state_dict(sd)
    for k, s in enumerate(opt.state):
        for n, v in s.items():
            np.testing.assert_array_equal(v, before[k][n])

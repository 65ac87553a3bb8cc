"""Shared by the parity tests and ``tools/make_fixtures.py``: build a configuration, make
its inputs, and run it in nprnn or in PyTorch, collecting outputs and every gradient.

A *case* is a flat dict of NumPy arrays plus a JSON config:
``x``, ``h0``/``c0`` (when given), upstream gradients ``g_out``/``g_h``/``g_c``,
``param.<name>``; results ``out``, ``h_n``, ``c_n``, ``grad_x``, ``grad_h0``, ``grad_c0``,
``grad.<name>``.
"""
from __future__ import annotations

import json

import numpy as np

import nprnn

LAYERS = ("RNN", "LSTM", "GRU")
CELLS = ("RNNCell", "LSTMCell", "GRUCell")


def random_config(rng: np.random.Generator) -> dict:
    """A random small configuration covering every option."""
    kind = str(rng.choice(LAYERS + CELLS, p=[0.2, 0.3, 0.2, 0.1, 0.1, 0.1]))
    hidden = int(rng.integers(1, 8))
    cfg = {
        "kind": kind,
        "input_size": int(rng.integers(1, 7)),
        "hidden_size": hidden,
        "bias": bool(rng.random() < 0.8),
        "dtype": str(rng.choice(["float64", "float32"], p=[0.7, 0.3])),
        "batch": None if rng.random() < 0.15 else int(rng.integers(1, 5)),
        "give_hx": bool(rng.random() < 0.6),
        "seed": int(rng.integers(2**31)),
    }
    if kind in ("RNN", "RNNCell"):
        cfg["nonlinearity"] = str(rng.choice(["tanh", "relu"]))
    if kind in LAYERS:
        cfg.update(
            num_layers=int(rng.integers(1, 4)),
            batch_first=bool(rng.random() < 0.5),
            bidirectional=bool(rng.random() < 0.5),
            seq_len=int(rng.integers(1, 7)),
        )
        if kind == "LSTM" and hidden > 1 and rng.random() < 0.4:
            cfg["proj_size"] = int(rng.integers(1, hidden))
    return cfg


def random_packed_config(rng: np.random.Generator) -> dict:
    """A random variable-length configuration: packed input or padded input with lengths=."""
    cfg = random_config(rng)
    while cfg["kind"] not in LAYERS:
        cfg = random_config(rng)
    N = int(rng.integers(1, 6))
    L = int(rng.integers(1, 7))
    shape = rng.choice(["random", "equal", "one_short", "batch1"], p=[0.6, 0.15, 0.15, 0.1])
    if shape == "batch1":
        N = 1
    lengths = rng.integers(1, L + 1, size=N)
    if shape == "equal":
        lengths[:] = L
    elif shape == "one_short":
        lengths[rng.integers(N)] = 1
    lengths[rng.integers(N)] = L  # the padded length is the longest
    enforce_sorted = bool(rng.random() < 0.3)
    if enforce_sorted:
        lengths = np.sort(lengths)[::-1]
    cfg.update(batch=N, seq_len=L, lengths=[int(v) for v in lengths], enforce_sorted=enforce_sorted,
               mode=str(rng.choice(["packed", "lengths"])))
    return cfg


def concurrent_config(rng: np.random.Generator, packed: bool, deeper: bool = False) -> dict:
    """A random layer configuration that goes side by side: bidirectional, or several
    layers over at least two chunks of steps (``deeper``: up to 4 layers)."""
    while True:
        cfg = random_packed_config(rng) if packed else random_config(rng)
        if cfg["kind"] not in LAYERS or cfg["batch"] is None:
            continue
        if not cfg["bidirectional"] and cfg["num_layers"] == 1:
            continue
        if deeper:
            cfg["num_layers"] = max(cfg["num_layers"], int(rng.integers(1, 5)))
        if not packed:
            cfg["seq_len"] = int(rng.integers(4, 10))
        elif cfg["seq_len"] < 4 and not cfg["bidirectional"]:
            continue
        return cfg


def module_kwargs(cfg: dict) -> dict:
    kw = {"bias": cfg["bias"]}
    for key in ("num_layers", "batch_first", "bidirectional", "nonlinearity"):
        if key in cfg:
            kw[key] = cfg[key]
    if cfg.get("proj_size"):
        kw["proj_size"] = cfg["proj_size"]
    return kw


def state_shapes(cfg: dict) -> list:
    """Shapes of (h, [c]) as the caller sees them."""
    H = cfg["hidden_size"]
    N = cfg["batch"]
    if cfg["kind"] in CELLS:
        shape = (H,) if N is None else (N, H)
        return [shape, shape] if cfg["kind"] == "LSTMCell" else [shape]
    D = 2 if cfg["bidirectional"] else 1
    rows = D * cfg["num_layers"]
    P = cfg.get("proj_size") or H
    lead = (rows,) if N is None else (rows, N)
    return [lead + (P,), lead + (H,)] if cfg["kind"] == "LSTM" else [lead + (P,)]


def make_inputs(cfg: dict) -> dict:
    """Input, initial state and parameters for ``cfg`` (from nprnn's own initialisation)."""
    rng = np.random.default_rng(cfg["seed"])
    dt = np.dtype(cfg["dtype"])
    mod = build_nprnn(cfg)
    case = {f"param.{k}": v for k, v in mod.state_dict().items()}
    N, F = cfg["batch"], cfg["input_size"]
    if cfg["kind"] in CELLS:
        xshape = (F,) if N is None else (N, F)
    else:
        L = cfg["seq_len"]
        if N is None:
            xshape = (L, F)
        else:
            xshape = (N, L, F) if cfg["batch_first"] else (L, N, F)
    case["x"] = rng.standard_normal(xshape).astype(dt)
    if cfg["give_hx"]:
        for name, shape in zip(("h0", "c0"), state_shapes(cfg)):
            case[name] = rng.standard_normal(shape).astype(dt)
    # upstream gradients of the output and of the final states
    if cfg["kind"] not in CELLS:
        D = 2 if cfg["bidirectional"] else 1
        width = D * (cfg.get("proj_size") or cfg["hidden_size"])
        case["g_out"] = rng.standard_normal(xshape[:-1] + (width,)).astype(dt)
    for name, shape in zip(("g_h", "g_c"), state_shapes(cfg)):
        case[name] = rng.standard_normal(shape).astype(dt)
    return case


def build_nprnn(cfg: dict):
    cls = getattr(nprnn, cfg["kind"])
    return cls(cfg["input_size"], cfg["hidden_size"], dtype=np.dtype(cfg["dtype"]), seed=cfg["seed"],
               **module_kwargs(cfg))


def _hx(case, cfg):
    if "h0" not in case:
        return None
    if cfg["kind"] in ("LSTM", "LSTMCell"):
        return (case["h0"], case["c0"])
    return case["h0"]


def run_nprnn(cfg: dict, case: dict) -> dict:
    """Forward and backward in nprnn; returns the result arrays of a case."""
    mod = build_nprnn(cfg)
    mod.load_state_dict({k[6:]: v for k, v in case.items() if k.startswith("param.")})
    res = {}
    hx = _hx(case, cfg)
    if cfg["kind"] in CELLS:
        y = mod(case["x"], hx)
        states = list(y) if isinstance(y, tuple) else [y]
        g = case
        if cfg["kind"] == "LSTMCell":
            gx, (gh, gc) = mod.backward((g["g_h"], g["g_c"]))
            gstates = [gh, gc]
        else:
            gx, gh = mod.backward(g["g_h"])
            gstates = [gh]
    else:
        g = case
        gstate = (g["g_h"], g["g_c"]) if cfg["kind"] == "LSTM" else g["g_h"]
        if cfg.get("mode") == "packed":
            bf, L = cfg["batch_first"], cfg["seq_len"]
            packed = nprnn.pack_padded_sequence(case["x"], cfg["lengths"], bf, cfg["enforce_sorted"])
            out_p, hn = mod(packed, hx)
            out, _ = nprnn.pad_packed_sequence(out_p, bf, total_length=L)
            g_out = nprnn.pack_padded_sequence(g["g_out"], cfg["lengths"], bf, cfg["enforce_sorted"]).data
            gx_p, ghx = mod.backward(g_out, gstate)
            gx, _ = nprnn.pad_packed_sequence(gx_p, bf, total_length=L)
        else:
            out, hn = mod(case["x"], hx, lengths=cfg.get("lengths"))
            gx, ghx = mod.backward(g["g_out"], gstate)
        states = list(hn) if isinstance(hn, tuple) else [hn]
        res["out"] = out
        gstates = list(ghx) if isinstance(ghx, tuple) else [ghx]
    for name, s in zip(("h_n", "c_n"), states):
        res[name] = s
    res["grad_x"] = gx
    for name, s in zip(("grad_h0", "grad_c0"), gstates):
        res[name] = s
    for k, v in mod.grads.items():
        res[f"grad.{k}"] = v.copy()
    return res


def run_torch(cfg: dict, case: dict) -> dict:
    """The same in PyTorch (imported here so the rest of this file needs no PyTorch)."""
    import warnings

    import torch

    warnings.filterwarnings("ignore", message="LSTM with projections is not supported with oneDNN")
    tdt = {"float32": torch.float32, "float64": torch.float64}[cfg["dtype"]]
    cls = getattr(torch.nn, cfg["kind"])
    mod = cls(cfg["input_size"], cfg["hidden_size"], dtype=tdt, **module_kwargs(cfg))
    mod.load_state_dict({k[6:]: torch.from_numpy(np.array(v)) for k, v in case.items() if k.startswith("param.")})
    x = torch.from_numpy(np.array(case["x"])).requires_grad_(True)
    hx_np = _hx(case, cfg)
    if hx_np is None:  # explicit zeros, so that the gradient of the zero state is compared too
        zeros = [np.zeros(s, np.dtype(cfg["dtype"])) for s in state_shapes(cfg)]
        hx_np = tuple(zeros) if len(zeros) == 2 else zeros[0]
    if isinstance(hx_np, tuple):
        hx = tuple(torch.from_numpy(np.array(h)).requires_grad_(True) for h in hx_np)
        leaves = list(hx)
    else:
        hx = torch.from_numpy(np.array(hx_np)).requires_grad_(True)
        leaves = [hx]
    res = {}
    if cfg["kind"] in CELLS:
        y = mod(x, hx)
        states = list(y) if isinstance(y, tuple) else [y]
        g = case
        loss = 0
    else:
        if "lengths" in cfg:
            bf = cfg["batch_first"]
            packed = torch.nn.utils.rnn.pack_padded_sequence(x, cfg["lengths"], bf, cfg["enforce_sorted"])
            out_p, hn = mod(packed, hx)
            out, _ = torch.nn.utils.rnn.pad_packed_sequence(out_p, bf, total_length=cfg["seq_len"])
        else:
            out, hn = mod(x, hx)
        states = list(hn) if isinstance(hn, tuple) else [hn]
        res["out"] = out.detach().numpy()
        g = case
        loss = (out * torch.from_numpy(g["g_out"])).sum()
    for s, name in zip(states, ("g_h", "g_c")):
        loss = loss + (s * torch.from_numpy(g[name])).sum()
    loss.backward()
    for name, s in zip(("h_n", "c_n"), states):
        res[name] = s.detach().numpy()
    res["grad_x"] = x.grad.numpy()
    for name, leaf in zip(("grad_h0", "grad_c0"), leaves):
        res[name] = leaf.grad.numpy()
    for k, p in mod.named_parameters():
        res[f"grad.{k}"] = p.grad.numpy()
    return res


def tolerances(dtype: str) -> dict:
    """float64: tight; float32: PyTorch's own default tolerances for float32."""
    return {"rtol": 1e-7, "atol": 1e-10} if dtype == "float64" else {"rtol": 1.3e-6, "atol": 1e-5}


def compare(cfg: dict, got: dict, want: dict) -> None:
    """Assert every array in ``want`` is matched in ``got`` (same shape, dtype, values)."""
    tol = tolerances(cfg["dtype"])
    for key, w in want.items():
        assert key in got, f"{key} missing from nprnn results"
        g = got[key]
        assert g.shape == w.shape, f"{key}: shape {g.shape} != {w.shape}"
        assert g.dtype == np.dtype(cfg["dtype"]), f"{key}: dtype {g.dtype} != {cfg['dtype']}"
        np.testing.assert_allclose(g, w, err_msg=f"{key} of {json.dumps(cfg)}", **tol)


def run_layer(m, x, lengths, g, train):
    """A layer's output, final states and, in training, the input, state and parameter
    gradients (output gradient ``g``), as one list to compare."""
    m.train(train)
    m.zero_grad()
    out, hn = m(x, lengths=lengths)
    res = [out, *(hn if isinstance(hn, tuple) else (hn,))]
    if train:
        gx, ghx = m.backward(g)
        res += [gx, *(ghx if isinstance(ghx, tuple) else (ghx,)), *(v.copy() for v in m.grads.values())]
    return res

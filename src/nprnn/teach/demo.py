"""``nprnn demo``: the seed's examples, their shapes and identities, checked by computation."""
from __future__ import annotations

from typing import Any, Iterator, Optional

import numpy as np

from ..nn.recurrent import GRU, LSTM, RNN, RNNBase


def _examples(rng: np.random.Generator) -> Iterator[tuple[str, RNNBase, np.ndarray, Optional[np.ndarray]]]:
    """(title, module, input, hx, names of the dims) for each example."""
    f = np.float32
    yield (
        "RNN(input_size=5, hidden_size=6, num_layers=4, batch_first=True)  -- seed example 1",
        RNN(input_size=5, hidden_size=6, num_layers=4, batch_first=True, seed=0),
        rng.standard_normal((2, 3, 5)).astype(f),
        rng.standard_normal((4, 2, 6)).astype(f),
    )
    yield (
        "LSTM(input_size=5, hidden_size=10, num_layers=2, batch_first=True), no h0/c0  -- seed example 2",
        LSTM(input_size=5, hidden_size=10, num_layers=2, batch_first=True, seed=1),
        rng.standard_normal((4, 3, 5)).astype(f),
        None,
    )
    yield (
        "GRU(input_size=5, hidden_size=8, num_layers=2, batch_first=True, bidirectional=True)",
        GRU(input_size=5, hidden_size=8, num_layers=2, batch_first=True, bidirectional=True, seed=2),
        rng.standard_normal((4, 3, 5)).astype(f),
        None,
    )
    yield (
        "LSTM(input_size=5, hidden_size=10, num_layers=2, batch_first=True, proj_size=4)  -- LSTMP",
        LSTM(input_size=5, hidden_size=10, num_layers=2, batch_first=True, proj_size=4, seed=3),
        rng.standard_normal((4, 3, 5)).astype(f),
        None,
    )


def _dims(name: str, mod: RNNBase) -> str:
    D = "num_directions * " if mod.bidirectional else ""
    H_out = "proj_size" if getattr(mod, "proj_size", 0) else "hidden_size"
    io = "(batch, seq_len, {})" if mod.batch_first else "(seq_len, batch, {})"
    return {
        "input": io.format("input_size"),
        "h0": f"({D}num_layers, batch, {H_out})",
        "c0": f"({D}num_layers, batch, hidden_size)",
        "output": io.format(("num_directions * " if mod.bidirectional else "") + H_out),
        "h_n": f"({D}num_layers, batch, {H_out})",
        "c_n": f"({D}num_layers, batch, hidden_size)",
    }[name]


def _check(label: str, ok: bool, out: list[bool]) -> None:
    out.append(ok)
    print(f"    {'OK' if ok else 'MISMATCH':8s} {label}")


def _backend_line() -> str:
    """Which kernels run: the compiled ones (their instruction set and compiler) or NumPy's,
    and why not the fastest whenever it is not taken."""
    from ..functional import native

    info = native.backend_info()
    line = (f"native (compiled kernels, {info['isa']}, {info['compiler']})" if info["backend"] == "native"
            else "numpy")
    return line + (f" -- {info['reason']}" if info["reason"] else "")


def run(compare_torch: bool = False) -> int:
    """Print every example; return 0 when every check holds."""
    rng = np.random.default_rng(2024)
    results: list[Any] = []
    torch_diffs = []
    print("nprnn demo: the seed's examples (shapes, and the identities checked by real comparison)")
    print(f"backend: {_backend_line()}\n")
    for i, (title, mod, x, hx) in enumerate(_examples(rng), 1):
        print(f"[{i}] {title}")
        out, state = mod(x, hx)
        hn, cn = state if isinstance(state, tuple) else (state, None)
        shown = [("input", x), ("h0", hx)] + [("output", out), ("h_n", hn), ("c_n", cn)]
        for name, arr in shown:
            if name == "h0" and arr is None:
                print(f"    {'h0, c0' if cn is not None else 'h0':7s} omitted -> zeros")
                continue
            if arr is not None:
                print(f"    {name:7s} {str(arr.shape):12s} {_dims(name, mod)}")
        H = mod.proj_size or mod.hidden_size
        if mod.bidirectional:
            _check(f"output[:, -1, :{H}] == h_n[-2]   (forward direction ends at the last step)",
                   np.array_equal(out[:, -1, :H], hn[-2]), results)
            _check(f"output[:, 0, {H}:] == h_n[-1]    (reverse direction ends at the first step)",
                   np.array_equal(out[:, 0, H:], hn[-1]), results)
            _check(f"output[:, -1, {H}:] != h_n[-1]   (the reverse half of the last step is its first state)",
                   not np.allclose(out[:, -1, H:], hn[-1]), results)
        else:
            _check("output[:, -1, :] == h_n[-1, :, :]", np.array_equal(out[:, -1, :], hn[-1]), results)
        grad_in, _ = mod.backward(np.ones_like(out))
        one_step = x[:, :1] if mod.batch_first else x[:1]
        _, state1 = mod.eval()(one_step, hx)
        mod.train()
        hn1 = state1[0] if isinstance(state1, tuple) else state1
        _check(f"h_n has num_layers{' * 2' if mod.bidirectional else ''} = {hn.shape[0]} rows; "
               f"with seq_len 1 its shape is still {hn1.shape}",
               hn.shape[0] == mod.num_layers * mod.num_directions and hn1.shape == hn.shape, results)
        print(f"    backward: grad_input {grad_in.shape}, {len(mod.grads)} parameter gradients")
        if compare_torch:
            torch_diffs.append(_compare_torch(mod, x, hx, out, hn, cn))
        print()
    n_ok = sum(results)
    print(f"{n_ok} of {len(results)} checks OK")
    if compare_torch:
        worst = max(torch_diffs)
        print(f"largest absolute difference from PyTorch over all outputs: {worst:.3g}")
        if worst > 1e-4:
            return 1
    return 0 if all(results) else 1


def _compare_torch(mod: RNNBase, x: np.ndarray, hx: Any, out: np.ndarray, hn: np.ndarray, cn: Any) -> float:
    try:
        import torch
    except ImportError as exc:
        raise SystemExit("--compare-torch needs PyTorch: pip install torch") from exc
    import warnings

    warnings.filterwarnings("ignore", message="LSTM with projections is not supported with oneDNN")
    kw = dict(num_layers=mod.num_layers, bias=mod.bias, batch_first=mod.batch_first, bidirectional=mod.bidirectional)
    if getattr(mod, "proj_size", 0):
        kw["proj_size"] = mod.proj_size
    tmod = getattr(torch.nn, type(mod).__name__)(mod.input_size, mod.hidden_size, **kw)
    tmod.load_state_dict({k: torch.from_numpy(v) for k, v in mod.state_dict().items()})
    xt = torch.from_numpy(x)
    with torch.no_grad():
        if hx is None:
            t_out, t_state = tmod(xt)
        else:
            t_out, t_state = tmod(xt, torch.from_numpy(hx))
    t_hn, t_cn = t_state if isinstance(t_state, tuple) else (t_state, None)
    diffs = [("output", out, t_out), ("h_n", hn, t_hn)] + ([("c_n", cn, t_cn)] if cn is not None else [])
    worst = 0.0
    for name, a, b in diffs:
        d = float(np.abs(a - b.numpy()).max())
        worst = max(worst, d)
        print(f"    torch    max |nprnn - torch| for {name:6s} = {d:.3g}")
    return worst

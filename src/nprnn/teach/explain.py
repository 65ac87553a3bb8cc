"""``nprnn explain``: what a recurrent layer's parameters, shapes and equations are, and which
identities between ``output`` and ``h_n`` hold — each one checked by running the layer.

:func:`explain` returns a JSON-able structure (schema version 1):

    {"schema": 1, "layer": "LSTM", "config": {...},
     "parameters": [{"name", "shape", "count", "description"}], "total_parameters": int,
     "shapes": {"input": {"shape": [...], "dims": [...]}, "h_0": ..., "c_0": ..., "output": ...,
                "h_n": ..., "c_n": ...},
     "equations": [str, ...],
     "identities": [{"claim", "expected", "observed", "why"}]}

``expected`` says whether the claim should hold, ``observed`` whether it did on random input.
"""
from __future__ import annotations

from typing import Any

import numpy as np

from ..nn.recurrent import GRU, LSTM, RNN, LayerNormGRU, LayerNormLSTM, MinGRU, MinLSTM, RNNBase

SCHEMA_VERSION = 1
_GATES = {1: "", 3: "r, z, n", 4: "i, f, g, o"}  # by the kind's number of gates
_LINEAR_GATES = {"mingru": "z, h~", "minlstm": "f, i, h~"}  # the linear-scan kinds' rows


def _kind(module: RNNBase) -> str:
    if getattr(module, "storage", None) in ("int8", "bf16"):  # nprnn.quantize's copy of one
        return str(module._label)
    for cls in (LSTM, GRU, RNN, LayerNormLSTM, LayerNormGRU, MinGRU, MinLSTM):
        if isinstance(module, cls):
            return cls.__name__
    raise TypeError(f"explain takes an nprnn.RNN, LSTM, GRU, LayerNormLSTM, LayerNormGRU, MinGRU or MinLSTM, got "
                    f"{type(module).__name__}")


def equations(module: RNNBase) -> list[str]:
    """The layer's equations, as the reference step (:mod:`nprnn.functional.reference`)
    states them, for this configuration."""
    from ..functional import reference

    kind = _kind(module)
    if kind == "RNN":
        return [e.replace("tanh(", f"{module.nonlinearity}(",
                          1) for e in reference.equations(reference.rnn_step_forward)]
    if kind == "GRU":
        return reference.equations(reference.gru_step_forward)
    if kind == "LayerNormGRU":
        return reference.equations(reference.ln_gru_step_forward)
    if kind in ("MinGRU", "MinLSTM"):
        step = reference.mingru_step_forward if kind == "MinGRU" else reference.minlstm_step_forward
        eqs = [e.split("     g(v)")[0].rstrip() if module.scan_mode == "linear" and "g(v)" in e else e
               for e in reference.equations(step)]
        if module.scan_mode == "linear":
            eqs = [e.replace("g(x_t @ W_h.T + b_h)", "x_t @ W_h.T + b_h") for e in eqs]
        eqs.append("the time loop is the diagonal linear scan h_t = a_t * h_(t-1) + b_t: every gate from x_t alone")
        if module.num_layers > 1 or module.bidirectional:
            eqs.append("layer k > 0 takes x_t = output of layer k-1 at step t (both directions concatenated)")
        return eqs
    eqs = []
    lstm = reference.lstm_step_forward if kind == "LSTM" else reference.ln_lstm_step_forward
    for e in reference.equations(lstm):
        if "(with proj_size: " in e:  # the layer-norm LSTM's one line for both
            plain, projected = e.split("(with proj_size: ")
            eqs.append(projected.rstrip(")") if module.proj_size else plain.rstrip())
        elif e.endswith("(without a projection)"):
            if not module.proj_size:
                eqs.append(e[: -len("(without a projection)")].rstrip())
        elif e.endswith("(projection to proj_size)"):
            if module.proj_size:
                eqs.append(e)
        else:
            eqs.append(e)
    if module.num_layers > 1 or module.bidirectional:
        eqs.append("layer k > 0 takes x_t = output of layer k-1 at step t (both directions concatenated)")
    return eqs


def _describe(module: RNNBase, name: str, shape: tuple[int, ...]) -> str:
    _kind(module)  # (refuses a module explain does not take)
    H, P, D = module.hidden_size, module.proj_size if module.kind.has_cell else 0, module.num_directions
    parts = name.split("_")
    layer = int(name.split("_l")[1].split("_")[0])
    where = f"layer {layer}, {'reverse' if name.endswith('_reverse') else 'forward'} direction"
    G = module.kind.num_gates
    gates = _LINEAR_GATES.get(module.kind.name) or _GATES[G]
    rows = f"{shape[0]} = {G} gates ({gates}) x {H}" if G > 1 else f"{shape[0]} = hidden_size"
    h_out = "proj_size" if P else "hidden_size"
    if name.startswith("weight_ih"):
        if layer == 0:
            cols = f"{shape[1]} = input_size"
        elif D == 2:
            cols = f"{shape[1]} = {D} directions x {P or H}"
        else:
            cols = f"{shape[1]} = {h_out} of layer {layer - 1}"
        return f"input-to-hidden weights of {where}; {rows}; {cols}"
    if name.startswith("weight_hh"):
        return f"hidden-to-hidden weights of {where}; {rows}; {shape[1]} = {h_out}"
    if name.startswith("weight_hr"):
        return (f"projection of {where}: h_t = (o_t * tanh(c_t)) @ weight_hr.T; {shape[0]} = proj_size, "
                f"{shape[1]} = hidden_size")
    if name.startswith("ln_c_"):
        role = "gain" if parts[2] == "weight" else "shift"
        return f"cell-state layer norm's {role} of {where}; {shape[0]} = hidden_size"
    if name.startswith("ln_"):
        side, role = ("input" if parts[1] == "ih" else "hidden"), "gain" if parts[2] == "weight" else "shift"
        return f"{side}-side layer norm's {role} of {where} (over all {G} gates at once); {rows}"
    side = "input" if parts[1] == "ih" else "hidden"
    return f"{side}-side bias of {where}; {rows}"


def _shape_entry(dims: list[tuple[str, int]]) -> dict[str, list[Any]]:
    return {"shape": [v for _, v in dims], "dims": [n for n, _ in dims]}


def shapes(module: RNNBase, batch: int = 4, seq_len: int = 3, unbatched: bool = False) -> dict[str, Any]:
    _kind(module)  # (refuses a module explain does not take)
    D, L = module.num_directions, module.num_layers
    H = module.hidden_size
    P = (module.proj_size or H) if module.kind.has_cell else H
    h_out = "proj_size" if module.kind.has_cell and module.proj_size else "hidden_size"
    rows = ("num_directions*num_layers" if D == 2 else "num_layers", D * L)
    bdim = [] if unbatched else [("batch", batch)]
    io_time = [("seq_len", seq_len)]
    if module.batch_first and not unbatched:
        x_dims = bdim + io_time
    else:
        x_dims = io_time + bdim
    out = {
        "input": _shape_entry(x_dims + [("input_size", module.input_size)]),
        "h_0": _shape_entry([rows] + bdim + [(h_out, P)]),
    }
    if module.kind.has_cell:
        out["c_0"] = _shape_entry([rows] + bdim + [("hidden_size", H)])
    out["output"] = _shape_entry(x_dims + [(("num_directions*" if D == 2 else "") + h_out, D * P)])
    out["h_n"] = _shape_entry([rows] + bdim + [(h_out, P)])
    if module.kind.has_cell:
        out["c_n"] = _shape_entry([rows] + bdim + [("hidden_size", H)])
    return out


def identities(module: RNNBase, batch: int = 4, seq_len: int = 3, unbatched: bool = False, seed: int = 0
               ) -> list[dict[str, Any]]:
    """Claims about output and h_n, each checked by running ``module`` on random input."""
    _kind(module)  # (refuses a module explain does not take)
    rng = np.random.default_rng(seed)
    sh = shapes(module, batch, seq_len, unbatched)
    x = rng.standard_normal(sh["input"]["shape"]).astype(module.dtype)
    was = module.training
    module.eval()
    out, state = module(x)
    longer = list(sh["input"]["shape"])
    t_axis = 1 if module.batch_first and not unbatched else 0
    longer[t_axis] += 2
    _, state2 = module(rng.standard_normal(longer).astype(module.dtype))
    module.train(was)
    h_n = state[0] if module.kind.has_cell else state
    h_n2 = state2[0] if module.kind.has_cell else state2
    P = h_n.shape[-1]
    bf = module.batch_first and not unbatched
    def step(t: int) -> np.ndarray:  # output at step t: (batch, D*P) or (D*P,)
        return out[:, t] if bf else out[t]  # type: ignore[no-any-return]

    t_ix = "[:, {t}, {c}]" if bf else "[{t}, {c}]" if unbatched else "[{t}, :, {c}]"
    res = []

    def claim(text: str, expected: Any, observed: Any, why: str) -> None:
        res.append({"claim": text, "expected": bool(expected), "observed": bool(observed), "why": why})

    if module.num_directions == 1:
        claim(f"output{t_ix.format(t=-1, c=':')} == h_n[-1]", True, np.array_equal(step(-1), h_n[-1]),
              "the top layer's state at the last step is both the last output and the top row of h_n")
    else:
        claim(f"output{t_ix.format(t=-1, c=f':{P}')} == h_n[-2]", True, np.array_equal(step(-1)[..., :P], h_n[-2]),
              "the forward direction of the top layer ends at the last step; h_n[-2] is its final state")
        claim(f"output{t_ix.format(t=0, c=f'{P}:')} == h_n[-1]", True, np.array_equal(step(0)[..., P:], h_n[-1]),
              "the reverse direction runs from the last step to the first, so its final state is the output at step 0")
        claim(f"output{t_ix.format(t=-1, c=f'{P}:')} == h_n[-1]", False, np.array_equal(step(-1)[..., P:], h_n[-1]),
              "at the last step the reverse direction has only just started: that half of output is its first state")
    if module.num_layers > 1:
        claim("h_n[0] (the bottom layer) appears in output", False,
              any(np.array_equal(step(t)[..., :P], h_n[0]) for t in range(seq_len)),
              "output holds only the top layer's states; lower layers' final states are only in h_n")
    claim(f"h_n has the same shape for seq_len {seq_len} and {seq_len + 2}", True, h_n.shape == h_n2.shape,
          "h_n holds one state per layer and direction at the last step, whatever the sequence length")
    if module.kind.has_cell:
        claim("c_n has a slice in output", False,
              any(np.array_equal(step(t)[..., : min(P, state[1].shape[-1])], state[1][-1][...,
                                                                                          :P]) for t in range(seq_len)),
              "output is built from h_t; the cell state c_t never leaves the cell except as c_n")
        if module.proj_size:
            claim(f"h_n's last dimension is proj_size={module.proj_size}, c_n's is hidden_size={module.hidden_size}",
                  True,
                  h_n.shape[-1] == module.proj_size and state[1].shape[-1] == module.hidden_size,
                  "the projection shrinks h_t (and so output and h_n) but not the cell state")
    return res


def execution(module: RNNBase, batch: int = 4, seq_len: int = 3) -> list[str]:
    """How each layer-direction of ``module`` runs a batch of ``batch`` sequences of
    ``seq_len`` steps on this machine now: the tier, and on the compiled tier the split
    (``nprnn.functional.native.plan``) and where the input projection runs."""
    from ..functional import native
    from ..parallel.threads import THREADED, team_stats, threads_here

    storage = getattr(module, "storage", None)
    if storage is not None:
        from ..config import settings
        from ..functional import qnative

        if not qnative.available():
            return [f"quantized ({storage}, nprnn.quantize), NumPy tier ({native.backend()} backend): the oracle, "
                    f"one step at a time, the reference equations with each x @ W.T computed from the {storage} "
                    "weights"]
        lines = []
        ranges = module._ranges([batch] * seq_len)
        for layer in range(module.num_layers):
            prep, _ = module._prepared_layer(layer * module.num_directions, batch, seq_len, ranges is not None)
            where = ("inside the loop, step by step" if batch >= settings.min_inloop_batch
                     else "before the loop, one product over every row")
            split = (f"its batch split into {len(ranges)} ranges of rows, each its own loop on its own thread"
                     if ranges else f"its hidden units split into {prep.parts} parts over "
                     f"{min(prep.parts, threads_here())} threads" if prep.parts > 1 else "on one thread")
            lines.append(f"layer {layer}: quantized ({storage}, nprnn.quantize), compiled: {storage} products on "
                         f"the {qnative.path(storage)} path "
                         f"(paths here: {', '.join(native.compiled.qpaths()[storage])}), {split}; each step's rows "
                         f"quantized, the input projection {where}")
        return lines
    if module.kind.linear:
        where = ("compiled, its steps split into a chunk per thread for long runs" if native.supports_dtype(
            module.dtype) else f"NumPy tier ({native.backend()} backend), one step at a time")
        return [f"one product for every step's gates, then the diagonal linear scan fused with them ({where})"]
    if not native.supports(module.kind, module.dtype):
        why = (f"; no compiled kernel for {module.kind.name} yet" if native.backend() == "native" else "")
        return [f"NumPy tier ({native.backend()} backend{why}): one product for every step's input projection, "
                "then one step at a time"]
    sizes, offsets = native._layout([batch] * seq_len)
    lines = []
    D = module.num_directions
    for layer in range(module.num_layers):
        how = native.plan_params(module.kind, module._params()[layer * D], sizes, offsets, THREADED)
        if how.parts > 1:
            split = (f"its hidden units split into {how.parts} parts (every gate of a part's units, their rows of "
                     f"the weights) over {min(how.parts, threads_here())} threads that meet at every step")
        elif len(how.ranges) > 1:
            split = f"its batch split into {len(how.ranges)} ranges of rows, each its own loop on a free thread"
        else:
            split = "on one thread"
        where = "before the loop, one product for every step" if how.project_first else "inside the loop, step by step"
        lines.append(f"layer {layer}: compiled loop ({native.isa()}), {split}; the input projection {where}")
    stats = team_stats()
    if stats and stats["alone"]:
        lines.append(f"so far {stats['alone']} of {stats['runs'] + stats['alone']} split calls found the threads busy "
                     "with another thread's call and ran on their caller's thread alone (the same result, one core)")
    return lines


def explain(module: RNNBase, batch: int = 4, seq_len: int = 3, unbatched: bool = False, seed: int = 0
            ) -> dict[str, Any]:
    """Parameters, shapes, equations and checked identities of ``module`` (see module doc)."""
    kind = _kind(module)
    storage = getattr(module, "storage", None)
    params: list[dict[str, Any]]
    if storage is None:
        params = [{"name": n, "shape": list(p.shape), "count": int(p.size),
                   "description": _describe(module, n, p.shape)} for n, p in module.named_parameters()]
    else:  # the float layer's parameters, each as its storage holds it
        params = []
        for names, weights in zip(module._layer_names, module._weights):
            for key, name in zip(("weight_ih", "weight_hh", "bias_ih", "bias_hh", "weight_hr"), names):
                if name is not None:
                    w = weights[key]
                    held = f"; {storage}, {w.nbytes:,} bytes" if key.startswith("weight") else "; float32"
                    params.append({"name": name, "shape": list(w.shape), "count": int(np.prod(w.shape)),
                                   "description": _describe(module, name, tuple(w.shape)) + held})
    config = {"input_size": module.input_size, "hidden_size": module.hidden_size, "num_layers": module.num_layers,
              "bias": module.bias, "batch_first": module.batch_first, "bidirectional": module.bidirectional,
              "dropout": module.dropout}
    if module.kind.has_cell:
        config["proj_size"] = module.proj_size
    if module.kind.params:
        del config["bias"]  # (the layer norms' shifts stand in for the biases)
    if kind == "RNN":
        config["nonlinearity"] = module.nonlinearity
    if storage is not None:
        config["storage"] = storage
        config["weight_bytes"] = module.weight_bytes
        config["float32_bytes"] = 4 * sum(int(p["count"]) for p in params)
    return {"schema": SCHEMA_VERSION, "layer": kind, "config": config, "parameters": params,
            "total_parameters": sum(int(p["count"]) for p in params),
            "shapes": shapes(module, batch, seq_len, unbatched),
            "equations": equations(module), "identities": identities(module, batch, seq_len, unbatched, seed),
            "execution": execution(module, 1 if unbatched else batch, seq_len)}


def format_text(info: dict[str, Any]) -> str:
    """The human-readable report printed by ``nprnn explain``."""
    cfg = ", ".join(f"{k}={v}" for k, v in info["config"].items())
    lines = [f"{info['layer']}({cfg})", "", "Parameters:"]
    width = max(len(p["name"]) for p in info["parameters"])
    for p in info["parameters"]:
        lines.append(f"  {p['name']:{width}s} {str(tuple(p['shape'])):10s} {p['count']:>8,d}  {p['description']}")
    lines.append(f"  {'total':{width}s} {'':10s} {info['total_parameters']:>8,d}")
    lines += ["", "Shapes:"]
    for name, s in info["shapes"].items():
        dims = ", ".join(f"{d}={v}" for d, v in zip(s["dims"], s["shape"]))
        lines.append(f"  {name:7s} {str(tuple(s['shape'])):14s} ({dims})")
    lines += ["", "Equations (each layer and direction, t = 1..seq_len):"] + [f"  {e}" for e in info["equations"]]
    lines += ["", "Identities (checked on random input):"]
    for c in info["identities"]:
        verdict = "OK  " if c["observed"] == c["expected"] else "FAIL"
        holds = "holds" if c["observed"] else "does not hold"
        lines.append(f"  {verdict} {c['claim']}: {holds} — {c['why']}")
    if info.get("execution"):
        lines += ["", "How it runs here (this batch and length, these threads):"]
        lines += [f"  {e}" for e in info["execution"]]
    return "\n".join(lines)


def collect_states(module: RNNBase, x: np.ndarray) -> dict[tuple[int, int], dict[str, np.ndarray]]:
    """Run ``module`` on ``x`` (padded, laid out as the module expects) and return, per layer
    and direction, the hidden states, cell states (LSTM) and gate activations as
    (seq_len, batch, H) arrays in time order: ``{(layer, direction): {"h": ..., "c": ..., "i": ...}}``.
    Dropout is off for the run."""
    _kind(module)  # (refuses a module explain does not take)
    was, dropout = module.training, module.dropout
    module.train()
    module.dropout = 0.0
    try:
        out, state = module(x)
        rec = module._take().stack
    finally:
        module.dropout = dropout
        module.train(was)
    L = out.shape[1] if module.batch_first else out.shape[0]
    finals = list(state) if isinstance(state, tuple) else [state]
    names = _GATES[module.kind.num_gates].replace(", ", "")
    result = {}
    for idx, r in enumerate(rec.records):
        layer, d = divmod(idx, module.num_directions)
        order = list(range(L))[::-1] if (d or module._reverse_only) else list(range(L))

        def after_step(prev_tape: np.ndarray, final: np.ndarray) -> np.ndarray:
            """States after each step from the 'state before the next step' records."""
            prev = prev_tape.reshape(L, -1, prev_tape.shape[-1])
            outs = np.empty_like(prev)
            for a, b in zip(order[:-1], order[1:]):
                outs[a] = prev[b]
            outs[order[-1]] = final
            return outs

        h_prev, gates, c_prev = r.padded_tape(L)
        entry = {"h": after_step(h_prev, finals[0][idx])}
        if module.kind.has_cell:
            entry["c"] = after_step(c_prev, finals[1][idx])
        if names:
            N = entry["h"].shape[1]
            gates = gates.reshape(L, N, len(names), module.hidden_size)
            for k, g in enumerate(names):
                entry[g] = gates[:, :, k]
        result[(layer, d)] = entry
    return result

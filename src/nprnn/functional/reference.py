"""The reference: one time step of each cell kind, forward and backward, written plainly.

This is the text to read to learn what a layer computes, and the oracle every fast
kernel (compiled and NumPy) is tested against, step by step.  Each kind is a pair of
functions in the style of cs231n's ``rnn_layers.py``:

* ``step_forward(x, state, p) -> (state', cache)``
* ``step_backward(dstate', cache) -> (dx, dstate, dp)``

``x`` is (N, input_size); ``state`` is ``(h,)``, or ``(h, c)`` for the LSTM; ``p`` maps
PyTorch's names without the layer suffix (``weight_ih``, ``weight_hh``, ``bias_ih``,
``bias_hh``, ``weight_hr``) to arrays, a bias or the projection absent when the layer
has none.  They allocate as they please and keep nothing between calls.

Each ``*_step_forward`` docstring holds its kind's equations, once: ``nprnn explain``
prints them from there.  ``@`` is the matrix product, ``*`` elementwise; PyTorch's
``weight_ih`` stacks the gates' input weights (``W_ii, W_if, ...`` for the LSTM) and
``weight_hh`` their hidden weights, in the order the equations list the gates.
"""
from __future__ import annotations

from typing import Any, Callable

import numpy as np

from .._typing import Array

State = tuple[Array, ...]  # (h,) or (h, c), each (N, .)
Weights = dict[str, Any]  # PyTorch's names without the layer suffix: weight_ih, weight_hh, bias_ih, ...
Cache = tuple[Any, ...]  # what a step's backward needs from its forward
Grads = dict[str, Array]  # the gradient of each weight, by name


def _sigmoid(a: Array) -> Array:
    return 1.0 / (1.0 + np.exp(-a))


def _affine(x: Array, h: Array, p: Weights) -> Array:
    """x W_ih^T + b_ih + h W_hh^T + b_hh (a bias absent counts as zero)."""
    a: Array = x @ p["weight_ih"].T + h @ p["weight_hh"].T
    if p.get("bias_ih") is not None:
        a = a + p["bias_ih"] + p["bias_hh"]
    return a


def _affine_backward(da: Array, x: Array, h: Array, p: Weights) -> tuple[Array, Array, Grads]:
    """Gradients of x, h and the four weights of :func:`_affine` given its output's ``da``."""
    dp = {"weight_ih": da.T @ x, "weight_hh": da.T @ h}
    if p.get("bias_ih") is not None:
        dp["bias_ih"] = dp["bias_hh"] = da.sum(axis=0)
    return da @ p["weight_ih"], da @ p["weight_hh"], dp


# ------------------------------------------------------------------------------ RNN
def rnn_step_forward(x: Array, state: State, p: Weights, nonlinearity: str = "tanh") -> tuple[State, Cache]:
    """One step of an Elman RNN (``relu`` in place of ``tanh`` with that nonlinearity)::

        h_t = tanh(x_t @ W_ih.T + b_ih + h_(t-1) @ W_hh.T + b_hh)
    """
    (h,) = state
    a = _affine(x, h, p)
    h_next = np.tanh(a) if nonlinearity == "tanh" else np.maximum(a, 0)
    return (h_next,), (x, h, a, h_next, p, nonlinearity)


def equations(function: Callable[..., Any]) -> list[str]:
    """The equation lines of a ``*_step_forward`` docstring (its indented block)."""
    import inspect

    doc = inspect.getdoc(function) or ""
    block = doc.split("::", 1)[1] if "::" in doc else ""
    lines = []
    for line in block.splitlines():
        if line.strip() and not line.startswith(" "):  # the block ends where the text returns to the margin
            break
        if line.strip():
            lines.append(line.strip())
    return lines


def rnn_step_backward(dstate: State, cache: Cache) -> tuple[Array, State, Grads]:
    (dh_next,) = dstate
    x, h, a, h_next, p, nonlinearity = cache
    da = dh_next * (1 - h_next ** 2) if nonlinearity == "tanh" else dh_next * (a > 0)
    dx, dh, dp = _affine_backward(da, x, h, p)
    return dx, (dh,), dp


# ------------------------------------------------------------------------------ LSTM
def lstm_step_forward(x: Array, state: State, p: Weights) -> tuple[State, Cache]:
    """One step of an LSTM, gates in PyTorch's order i, f, g, o (``weight_hr`` present: with
    a projection to proj_size)::

        i_t = sigmoid(x_t @ W_ii.T + b_ii + h_(t-1) @ W_hi.T + b_hi)
        f_t = sigmoid(x_t @ W_if.T + b_if + h_(t-1) @ W_hf.T + b_hf)
        g_t = tanh(x_t @ W_ig.T + b_ig + h_(t-1) @ W_hg.T + b_hg)
        o_t = sigmoid(x_t @ W_io.T + b_io + h_(t-1) @ W_ho.T + b_ho)
        c_t = f_t * c_(t-1) + i_t * g_t
        h_t = (o_t * tanh(c_t)) @ W_hr.T      (projection to proj_size)
        h_t = o_t * tanh(c_t)                 (without a projection)
    """
    h, c = state
    i, f, g, o = np.split(_affine(x, h, p), 4, axis=1)
    i, f, g, o = _sigmoid(i), _sigmoid(f), np.tanh(g), _sigmoid(o)
    c_next = f * c + i * g
    tc = np.tanh(c_next)
    m = o * tc
    h_next = m @ p["weight_hr"].T if p.get("weight_hr") is not None else m
    return (h_next, c_next), (x, h, c, i, f, g, o, tc, m, p)


def lstm_step_backward(dstate: State, cache: Cache) -> tuple[Array, State, Grads]:
    dh_next, dc_next = dstate
    x, h, c, i, f, g, o, tc, m, p = cache
    dp = {}
    if p.get("weight_hr") is not None:
        dp["weight_hr"] = dh_next.T @ m
        dm = dh_next @ p["weight_hr"]
    else:
        dm = dh_next
    dc_total = dc_next + dm * o * (1 - tc ** 2)
    da = np.concatenate([dc_total * g * i * (1 - i),  # i
                         dc_total * c * f * (1 - f),  # f
                         dc_total * i * (1 - g ** 2),  # g
                         dm * tc * o * (1 - o)], axis=1)  # o
    dx, dh, dp_affine = _affine_backward(da, x, h, p)
    dp.update(dp_affine)
    return dx, (dh, dc_total * f), dp


# ------------------------------------------------------------------------------ GRU
def gru_step_forward(x: Array, state: State, p: Weights) -> tuple[State, Cache]:
    """One step of a GRU, gates r, z, n (the hidden part of n is reset by r after its bias)::

        r_t = sigmoid(x_t @ W_ir.T + b_ir + h_(t-1) @ W_hr.T + b_hr)
        z_t = sigmoid(x_t @ W_iz.T + b_iz + h_(t-1) @ W_hz.T + b_hz)
        n_t = tanh(x_t @ W_in.T + b_in + r_t * (h_(t-1) @ W_hn.T + b_hn))
        h_t = (1 - z_t) * n_t + z_t * h_(t-1)
    """
    (h,) = state
    gi = x @ p["weight_ih"].T
    gh = h @ p["weight_hh"].T
    if p.get("bias_ih") is not None:
        gi, gh = gi + p["bias_ih"], gh + p["bias_hh"]
    r_i, z_i, n_i = np.split(gi, 3, axis=1)
    r_h, z_h, n_h = np.split(gh, 3, axis=1)
    r, z = _sigmoid(r_i + r_h), _sigmoid(z_i + z_h)
    n = np.tanh(n_i + r * n_h)
    h_next = (1 - z) * n + z * h
    return (h_next,), (x, h, r, z, n, n_h, p)


def gru_step_backward(dstate: State, cache: Cache) -> tuple[Array, State, Grads]:
    (dh_next,) = dstate
    x, h, r, z, n, n_h, p = cache
    dn_pre = dh_next * (1 - z) * (1 - n ** 2)
    dr_pre = dn_pre * n_h * r * (1 - r)
    dz_pre = dh_next * (h - n) * z * (1 - z)
    dgi = np.concatenate([dr_pre, dz_pre, dn_pre], axis=1)
    dgh = np.concatenate([dr_pre, dz_pre, dn_pre * r], axis=1)
    dp = {"weight_ih": dgi.T @ x, "weight_hh": dgh.T @ h}
    if p.get("bias_ih") is not None:
        dp["bias_ih"], dp["bias_hh"] = dgi.sum(axis=0), dgh.sum(axis=0)
    return dgi @ p["weight_ih"], (dgh @ p["weight_hh"] + dh_next * z,), dp


# ------------------------------------------------------------------------------ layer-norm LSTM
def _layer_norm(a: Array, gamma: Array, beta: Array, eps: float = 1e-5) -> tuple[Array, Cache]:
    mu = a.mean(axis=1, keepdims=True)
    inv = 1.0 / np.sqrt(((a - mu) ** 2).mean(axis=1, keepdims=True) + eps)
    xhat = (a - mu) * inv
    return gamma * xhat + beta, (xhat, inv, gamma)


def _layer_norm_backward(dy: Array, cache: Cache) -> tuple[Array, Array, Array]:
    """Gradients of the input, gamma and beta of :func:`_layer_norm` given its output's ``dy``."""
    xhat, inv, gamma = cache
    dxhat = dy * gamma  # through the scale
    da = inv * (dxhat - dxhat.mean(axis=1, keepdims=True) - xhat * (dxhat * xhat).mean(axis=1, keepdims=True))
    return da, (dy * xhat).sum(axis=0), dy.sum(axis=0)


def ln_lstm_step_forward(x: Array, state: State, p: Weights) -> tuple[State, Cache]:
    """One step of a layer-norm LSTM (as PyTorch's ``benchmarks/fastrnns/custom_lstms.py``
    writes it: each product normalised over its 4H gates, the cell over its H values; the
    normalisations' shifts stand in for the biases; with a projection, as ``nn.LSTM``'s)::

        i_t, f_t, g_t, o_t = split(LN_ih(x_t @ W_ih.T) + LN_hh(h_(t-1) @ W_hh.T), 4)
        i_t, f_t, o_t = sigmoid(i_t), sigmoid(f_t), sigmoid(o_t);   g_t = tanh(g_t)
        c_t = LN_c(f_t * c_(t-1) + i_t * g_t)
        h_t = o_t * tanh(c_t)                     (with proj_size: h_t = (o_t * tanh(c_t)) @ W_hr.T)
        LN(a) = gamma * (a - mean(a)) / sqrt(var(a) + 1e-5) + beta, over each row (biased variance)

    ``p``: ``weight_ih``, ``weight_hh``, ``ln_ih_weight``/``ln_ih_bias``,
    ``ln_hh_weight``/``ln_hh_bias`` (4H each), ``ln_c_weight``/``ln_c_bias`` (H each), and
    ``weight_hr`` (P, H) with a projection.
    """
    h, c = state
    yi, ln_i = _layer_norm(x @ p["weight_ih"].T, p["ln_ih_weight"], p["ln_ih_bias"])
    yh, ln_h = _layer_norm(h @ p["weight_hh"].T, p["ln_hh_weight"], p["ln_hh_bias"])
    i, f, g, o = np.split(yi + yh, 4, axis=1)
    i, f, g, o = _sigmoid(i), _sigmoid(f), np.tanh(g), _sigmoid(o)
    c_next, ln_c = _layer_norm(f * c + i * g, p["ln_c_weight"], p["ln_c_bias"])
    tc = np.tanh(c_next)
    m = o * tc
    h_next = m @ p["weight_hr"].T if p.get("weight_hr") is not None else m
    return (h_next, c_next), (x, h, c, i, f, g, o, tc, m, ln_i, ln_h, ln_c, p)


def ln_lstm_step_backward(dstate: State, cache: Cache) -> tuple[Array, State, Grads]:
    dh_next, dc_next = dstate
    x, h, c, i, f, g, o, tc, m, ln_i, ln_h, ln_c, p = cache
    dp: Grads = {}
    dm = dh_next
    if p.get("weight_hr") is not None:  # through the projection
        dp["weight_hr"] = dh_next.T @ m
        dm = dh_next @ p["weight_hr"]
    dc_norm = dc_next + dm * o * (1 - tc ** 2)  # through tanh(c_t)
    dcell, dp_c_w, dp_c_b = _layer_norm_backward(dc_norm, ln_c)  # through LN_c
    dgates = np.concatenate([dcell * g * i * (1 - i), dcell * c * f * (1 - f), dcell * i * (1 - g ** 2),
                             dm * tc * o * (1 - o)], axis=1)
    dai, dp_i_w, dp_i_b = _layer_norm_backward(dgates, ln_i)  # through LN_ih
    dah, dp_h_w, dp_h_b = _layer_norm_backward(dgates, ln_h)  # through LN_hh
    dp.update({"weight_ih": dai.T @ x, "weight_hh": dah.T @ h, "ln_ih_weight": dp_i_w, "ln_ih_bias": dp_i_b,
               "ln_hh_weight": dp_h_w, "ln_hh_bias": dp_h_b, "ln_c_weight": dp_c_w, "ln_c_bias": dp_c_b})
    return dai @ p["weight_ih"], (dah @ p["weight_hh"], dcell * f), dp


# ------------------------------------------------------------------------------ layer-norm GRU
def ln_gru_step_forward(x: Array, state: State, p: Weights) -> tuple[State, Cache]:
    """One step of a layer-norm GRU (Haste's ``LayerNormGRU`` arrangement, with ``nn.GRU``'s
    gates and their order: each product normalised over its 3H values; the normalisations'
    shifts stand in for the biases)::

        a_t = LN_ih(x_t @ W_ih.T);   b_t = LN_hh(h_(t-1) @ W_hh.T);   each split into r, z, n parts
        r_t = sigmoid(a_r + b_r)
        z_t = sigmoid(a_z + b_z)
        n_t = tanh(a_n + r_t * b_n)
        h_t = (1 - z_t) * n_t + z_t * h_(t-1)

    ``p``: ``weight_ih``, ``weight_hh``, ``ln_ih_weight``/``ln_ih_bias``,
    ``ln_hh_weight``/``ln_hh_bias`` (3H each).
    """
    (h,) = state
    a, ln_i = _layer_norm(x @ p["weight_ih"].T, p["ln_ih_weight"], p["ln_ih_bias"])
    b, ln_h = _layer_norm(h @ p["weight_hh"].T, p["ln_hh_weight"], p["ln_hh_bias"])
    a_r, a_z, a_n = np.split(a, 3, axis=1)
    b_r, b_z, b_n = np.split(b, 3, axis=1)
    r, z = _sigmoid(a_r + b_r), _sigmoid(a_z + b_z)
    n = np.tanh(a_n + r * b_n)
    return ((1 - z) * n + z * h,), (x, h, r, z, n, b_n, ln_i, ln_h, p)


def ln_gru_step_backward(dstate: State, cache: Cache) -> tuple[Array, State, Grads]:
    (dh_next,) = dstate
    x, h, r, z, n, b_n, ln_i, ln_h, p = cache
    dn_pre = dh_next * (1 - z) * (1 - n ** 2)
    dr_pre = dn_pre * b_n * r * (1 - r)
    dz_pre = dh_next * (h - n) * z * (1 - z)
    da, dp_i_w, dp_i_b = _layer_norm_backward(np.concatenate([dr_pre, dz_pre, dn_pre], axis=1), ln_i)
    db, dp_h_w, dp_h_b = _layer_norm_backward(np.concatenate([dr_pre, dz_pre, dn_pre * r], axis=1), ln_h)
    dp = {"weight_ih": da.T @ x, "weight_hh": db.T @ h, "ln_ih_weight": dp_i_w, "ln_ih_bias": dp_i_b,
          "ln_hh_weight": dp_h_w, "ln_hh_bias": dp_h_b}
    return da @ p["weight_ih"], (db @ p["weight_hh"] + dh_next * z,), dp


# ------------------------------------------------------------------ minGRU and minLSTM
def _candidate(v: Array, log: bool) -> tuple[Array, Array]:
    """h~ and its derivative: ``v`` (mode linear) or ``g(v)`` (mode log)."""
    if not log:
        return v, np.ones_like(v)
    s = _sigmoid(v)
    return np.where(v >= 0, v + 0.5, s), np.where(v >= 0, 1.0, s * (1 - s))


def mingru_step_forward(x: Array, state: State, p: Weights, log: bool = True) -> tuple[State, Cache]:
    """One step of minGRU (Feng et al., "Were RNNs All We Needed?", 2024): no W_hh, the gates
    read the input alone::

        z_t = sigmoid(x_t @ W_z.T + b_z)
        h~_t = g(x_t @ W_h.T + b_h)     g(v) = v + 0.5 (v >= 0), sigmoid(v) (v < 0); mode linear: g(v) = v
        h_t = (1 - z_t) * h_(t-1) + z_t * h~_t
    """
    (h,) = state
    k, v = np.split(x @ p["weight_ih"].T + (p["bias_ih"] if p.get("bias_ih") is not None else 0), 2, axis=1)
    z, (ht, dv) = _sigmoid(k), _candidate(v, log)
    return ((1 - z) * h + z * ht,), (x, h, z, ht, dv, p)


def mingru_step_backward(dstate: State, cache: Cache) -> tuple[Array, State, Grads]:
    (dh_next,) = dstate
    x, h, z, ht, dv, p = cache
    du = np.concatenate([dh_next * (ht - h) * z * (1 - z), dh_next * z * dv], axis=1)
    dp = {"weight_ih": du.T @ x}
    if p.get("bias_ih") is not None:
        dp["bias_ih"] = du.sum(axis=0)
    return du @ p["weight_ih"], (dh_next * (1 - z),), dp


def minlstm_step_forward(x: Array, state: State, p: Weights, log: bool = True) -> tuple[State, Cache]:
    """One step of minLSTM (Feng et al. 2024): no W_hh, no output gate, one state, the
    forget and input gates normalised to sum to one::

        f_t = sigmoid(x_t @ W_f.T + b_f)
        i_t = sigmoid(x_t @ W_i.T + b_i)
        h~_t = g(x_t @ W_h.T + b_h)     g(v) = v + 0.5 (v >= 0), sigmoid(v) (v < 0); mode linear: g(v) = v
        f'_t, i'_t = f_t / (f_t + i_t), i_t / (f_t + i_t)
        h_t = f'_t * h_(t-1) + i'_t * h~_t
    """
    (h,) = state
    uf, ui, v = np.split(x @ p["weight_ih"].T + (p["bias_ih"] if p.get("bias_ih") is not None else 0), 3, axis=1)
    f, i, (ht, dv) = _sigmoid(uf), _sigmoid(ui), _candidate(v, log)
    s = f + i
    return (f / s * h + i / s * ht,), (x, h, f, i, ht, dv, p)


def minlstm_step_backward(dstate: State, cache: Cache) -> tuple[Array, State, Grads]:
    (g,) = dstate
    x, h, f, i, ht, dv, p = cache
    s = f + i
    du = np.concatenate([g * i * (h - ht) / s ** 2 * f * (1 - f), g * f * (ht - h) / s ** 2 * i * (1 - i),
                         g * i / s * dv], axis=1)
    dp = {"weight_ih": du.T @ x}
    if p.get("bias_ih") is not None:
        dp["bias_ih"] = du.sum(axis=0)
    return du @ p["weight_ih"], (g * f / s,), dp


StepForward = Callable[[Array, State, Weights], tuple[State, Cache]]
StepBackward = Callable[[State, Cache], tuple[Array, State, Grads]]
STEPS: dict[str, tuple[StepForward, StepBackward]] = {  # kind -> (step_forward, step_backward)
    "rnn_tanh": (lambda x, s, p: rnn_step_forward(x, s, p, "tanh"), rnn_step_backward),
    "rnn_relu": (lambda x, s, p: rnn_step_forward(x, s, p, "relu"), rnn_step_backward),
    "lstm": (lstm_step_forward, lstm_step_backward),
    "gru": (gru_step_forward, gru_step_backward),
    "ln_lstm": (ln_lstm_step_forward, ln_lstm_step_backward),  # reference only (issue 26): no fast kernel, no layer
    "ln_gru": (ln_gru_step_forward, ln_gru_step_backward),  # reference only (issue 26)
    "mingru": (mingru_step_forward, mingru_step_backward),  # (mode log; the layers run the linear scan)
    "minlstm": (minlstm_step_forward, minlstm_step_backward),
}


def scan_forward(mode: str, x: Array, state: State, p: Weights) -> tuple[Array, State, list[Cache]]:
    """One layer-direction over a whole (T, N, input_size) sequence, a step at a time:
    returns (outputs (T, N, H_out), final state, caches)."""
    forward = STEPS[mode][0]
    outs, caches = [], []
    for x_t in x:
        state, cache = forward(x_t, state, p)
        outs.append(state[0])
        caches.append(cache)
    return np.stack(outs), state, caches


def scan_backward(mode: str, doutputs: Array, dstate: State, caches: list[Cache]) -> tuple[Array, State, Grads]:
    """Backpropagation through time for :func:`scan_forward`: ``doutputs`` (T, N, H_out)
    and the final state's gradient in; the input's gradient, the initial state's and the
    weights' (summed over steps) out."""
    backward = STEPS[mode][1]
    dxs: list[Array] = []
    dp_total: Grads = {}
    for t in range(len(caches) - 1, -1, -1):
        dstate = (dstate[0] + doutputs[t],) + tuple(dstate[1:])
        dx, dstate, dp = backward(dstate, caches[t])
        dxs.append(dx)
        for k, v in dp.items():
            dp_total[k] = dp_total[k] + v if k in dp_total else v
    return np.stack(dxs[::-1]), dstate, dp_total

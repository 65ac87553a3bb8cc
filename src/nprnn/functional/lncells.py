"""The layer-norm kinds' NumPy kernels (issue 26): ``ln_lstm`` and ``ln_gru``, whose
equations are :func:`.reference.ln_lstm_step_forward` and :func:`.reference.ln_gru_step_forward`.

They run in the loop of :mod:`.scan` as every kind does (the mechanics of :mod:`.cells`);
what differs is carried by the :class:`.cells.CellKind` hooks:

* The input side is normalised before the loop, all steps at once: ``gx = LN_ih(x @ W_ih.T)``
  (``project``), each row's normalised values and inverse deviation kept for backward,
  which turns the loop's gradient of ``gx`` into that of ``x @ W_ih.T`` after it
  (``project_backward``). The norms' shifts stand in for the biases.
* Their own parameters (the norms' gains and shifts) reach the kernels in
  ``StepWeights.extra`` under their names, and their gradients are sums over every step's
  records after the loop (``param_grads``).
* Gates are kept as rows ``(n, G*H)``, not gate-major: a norm runs along a row.
"""
from __future__ import annotations

from typing import Any

import numpy as np

from .._typing import Array, Blocks, OptArray
from . import cells
from .cells import CellKind, StepWeights, _back_through_projection, _gru_update, _lstm_output, register

EPS = 1e-5  # the norms' epsilon, as torch.nn.LayerNorm's default


def _normalize(a: Array, xhat: Array, inv: Array, gamma: Array, beta: Array) -> None:
    """In place over each row of ``a`` (n, W): ``gamma * xhat + beta`` with ``xhat = (a -
    mean) * inv``, ``inv = 1 / sqrt(var + eps)`` (biased variance); ``xhat`` (n, W) and
    ``inv`` (n, 1) are kept for backward."""
    np.mean(a, axis=1, keepdims=True, out=inv)
    np.subtract(a, inv, out=xhat)
    np.multiply(xhat, xhat, out=a)
    np.mean(a, axis=1, keepdims=True, out=inv)
    inv += EPS
    np.sqrt(inv, out=inv)
    np.reciprocal(inv, out=inv)
    xhat *= inv
    np.multiply(xhat, gamma, out=a)
    a += beta


def _normalize_backward(dy: Array, xhat: Array, inv: Array, gamma: Array, out: Array, tmp: Array, s: Array) -> None:
    """``out`` = the gradient of the normalised rows given ``dy``, that of ``gamma * xhat +
    beta``: ``inv * (dxhat - mean(dxhat) - xhat * mean(dxhat * xhat))``, ``dxhat = dy *
    gamma`` (``tmp`` like ``out``, ``s`` (n, 1): scratch)."""
    np.multiply(dy, gamma, out=out)  # dxhat
    np.multiply(out, xhat, out=tmp)
    np.mean(tmp, axis=1, keepdims=True, out=s)
    np.multiply(xhat, s, out=tmp)
    np.mean(out, axis=1, keepdims=True, out=s)
    out -= s
    out -= tmp
    out *= inv


def _sigmoid(a: Array, one: Any) -> None:
    np.negative(a, out=a)
    np.exp(a, out=a)
    a += one
    np.reciprocal(a, out=a)


def _project(gx: Array, w: StepWeights, records: Any) -> None:
    xhat, inv = records  # (rows, G*H), (rows, 1)
    _normalize(gx, xhat, inv, w.extra["ln_ih_weight"], w.extra["ln_ih_bias"])


def _project_backward(dgx: Array, w: StepWeights, records: Any, out: Array) -> None:
    xhat, inv = records
    _normalize_backward(dgx, xhat, inv, w.extra["ln_ih_weight"], out, np.empty_like(out), np.empty_like(inv))


def _sum_rows(a: Array, b: OptArray = None) -> Array:
    """Column sums of ``a`` (or of ``a * b``) over every step's rows."""
    out: Array = a.sum(axis=0) if b is None else np.einsum("ij,ij->j", a, b)
    return out


# ---------------------------------------------------------------------- layer-norm LSTM
def _ln_lstm_forward(gx: Array, h: Array, c: Array, w: StepWeights, tape: Any, work: Any, train: bool,
                     h_out: Array) -> None:
    gates, c_prev, tc, hhat, inv_h, chat, inv_c = tape[:7]  # gates (n, 4H) rows: i, f, g, o
    gh, tmp = work[0], work[1]  # (n, 4H) each
    H = c.shape[1]
    cells.hidden_product(h, w, gh)
    _normalize(gh, hhat, inv_h, w.extra["ln_hh_weight"], w.extra["ln_hh_bias"])
    np.add(gx, gh, gates)
    g = gates[:, 2 * H : 3 * H]
    np.tanh(g, out=tmp[:, :H])
    _sigmoid(gates, w.one)
    np.copyto(g, tmp[:, :H])
    i, f, o = gates[:, :H], gates[:, H : 2 * H], gates[:, 3 * H :]
    if train:
        np.copyto(c_prev, c)
    np.multiply(c, f, c)
    np.multiply(i, g, tc)
    np.add(c, tc, c)
    _normalize(c, chat, inv_c, w.extra["ln_c_weight"], w.extra["ln_c_bias"])  # the carried state
    np.tanh(c, tc)
    proj = w.hrT is not None
    _lstm_output(o, tc, w, tape[7] if proj else None, work[2] if proj else None, h_out)


def _ln_lstm_backward(dstate: tuple[Array, ...], w: StepWeights, tape: Any, grads: Any, scratch: Any) -> None:
    dh, dc = dstate
    gates, c_prev, tc, hhat, inv_h, chat, inv_c = tape[1:8]  # tape[0] is h_prev
    dz, dv, dcn = grads[0], grads[1], grads[2]  # d(gate pre-activations), d(h @ W_hh.T), d(c_t)
    dcell, t1, s = scratch[0], scratch[1], scratch[2]  # (n, H), (n, 4H), (n, 1)
    H = dc.shape[1]
    th = t1[:, :H]
    i, f, g, o = gates[:, :H], gates[:, H : 2 * H], gates[:, 2 * H : 3 * H], gates[:, 3 * H :]
    di, df, dg, do = dz[:, :H], dz[:, H : 2 * H], dz[:, 2 * H : 3 * H], dz[:, 3 * H :]
    dm = dh if w.hr is None else _back_through_projection(dh, w.hr, grads[3], scratch[3])
    np.multiply(tc, tc, out=dcn)  # through tanh(c_t): 1 - tanh(c_t)^2
    np.subtract(w.one, dcn, out=dcn)
    dcn *= o
    dcn *= dm
    dcn += dc
    _normalize_backward(dcn, chat, inv_c, w.extra["ln_c_weight"], dcell, th, s)  # through LN_c
    np.multiply(dm, tc, out=do)
    np.subtract(w.one, o, out=th)
    th *= o
    do *= th
    np.multiply(dcell, g, out=di)
    np.subtract(w.one, i, out=th)
    th *= i
    di *= th
    np.multiply(dcell, c_prev, out=df)
    np.subtract(w.one, f, out=th)
    th *= f
    df *= th
    np.multiply(dcell, i, out=dg)
    np.multiply(g, g, out=th)
    np.subtract(w.one, th, out=th)
    dg *= th
    np.multiply(dcell, f, out=dc)  # to c_prev
    _normalize_backward(dz, hhat, inv_h, w.extra["ln_hh_weight"], dv, t1, s)  # through LN_hh
    cells.to_h_prev(dv, w, dh)


def _ln_lstm_grads(w: StepWeights, rec: Any, grads: Any, du: Array) -> tuple[OptArray, ...]:
    tape = rec.tape
    dz, dv, dcn = grads[0], grads[1], grads[2]
    dW_hr = grads[3].T @ tape[8] if rec.proj else None  # dh.T @ (o * tanh(c))
    return (du.T @ rec.x, dv.T @ tape[0], None, None, dW_hr, _sum_rows(dz, rec.records[0]), _sum_rows(dz),
            _sum_rows(dz, tape[4]), _sum_rows(dz), _sum_rows(dcn, tape[6]), _sum_rows(dcn))


def _ln_lstm_tape(H: int, P: int, proj: bool) -> Blocks:
    blocks = ((1, 4 * H), (1, H), (1, H), (1, 4 * H), (1, 1), (1, H), (1, 1))
    return blocks + ((1, H),) if proj else blocks


def _ln_lstm_work(H: int, P: int, proj: bool) -> Blocks:
    return ((1, 4 * H), (1, 4 * H), (1, P)) if proj else ((1, 4 * H), (1, 4 * H))


def _ln_lstm_grads_blocks(H: int, P: int, proj: bool) -> Blocks:
    return ((1, 4 * H), (1, 4 * H), (1, H), (1, P)) if proj else ((1, 4 * H), (1, 4 * H), (1, H))


def _ln_lstm_scratch(H: int, P: int, proj: bool) -> Blocks:
    return ((1, H), (1, 4 * H), (1, 1), (1, H)) if proj else ((1, H), (1, 4 * H), (1, 1))


LN_LSTM = register(CellKind(
    "ln_lstm", 4, (), True, _ln_lstm_forward, _ln_lstm_backward, _ln_lstm_tape, _ln_lstm_work,
    _ln_lstm_grads_blocks, _ln_lstm_scratch, separate_dgh=True,
    params=(("ln_ih_weight", 4, 1.0), ("ln_ih_bias", 4, 0.0), ("ln_hh_weight", 4, 1.0), ("ln_hh_bias", 4, 0.0),
            ("ln_c_weight", 1, 1.0), ("ln_c_bias", 1, 0.0)),
    param_grads=_ln_lstm_grads, project=_project, project_backward=_project_backward,
    project_blocks=lambda H, P, proj: ((1, 4 * H), (1, 1))))


# ----------------------------------------------------------------------- layer-norm GRU
def _ln_gru_forward(gx: Array, h: Array, c: OptArray, w: StepWeights, tape: Any, work: Any, train: bool,
                    h_out: Array) -> None:
    gates, bn, hhat, inv_h = tape  # gates (n, 3H) rows: r, z, n; bn the hidden part of n
    (gh,) = work  # (n, 3H)
    H = bn.shape[1]
    cells.hidden_product(h, w, gh)
    _normalize(gh, hhat, inv_h, w.extra["ln_hh_weight"], w.extra["ln_hh_bias"])  # b = LN_hh(h @ W_hh.T)
    rz = gates[:, : 2 * H]
    np.add(gx[:, : 2 * H], gh[:, : 2 * H], rz)
    _sigmoid(rz, w.one)
    np.copyto(bn, gh[:, 2 * H :])
    n = gates[:, 2 * H :]
    np.multiply(gates[:, :H], bn, n)
    np.add(n, gx[:, 2 * H :], n)
    np.tanh(n, n)
    _gru_update(h, gates[:, H : 2 * H], n, h_out)


def _ln_gru_backward(dstate: tuple[Array, ...], w: StepWeights, tape: Any, grads: Any, scratch: Any) -> None:
    (dh,) = dstate
    h_prev, gates, bn, hhat, inv_h = tape
    da, dv, db = grads  # d(LN_ih output), d(h @ W_hh.T), d(LN_hh output): (n, 3H) each
    t1, s, tmp = scratch  # (n, 3H), (n, 1), (n, H)
    H = bn.shape[1]
    r, z, n = gates[:, :H], gates[:, H : 2 * H], gates[:, 2 * H :]
    dr, dz, dn = da[:, :H], da[:, H : 2 * H], da[:, 2 * H :]
    np.multiply(n, n, out=dn)  # dL/dn through tanh: dh * (1 - z) * (1 - n^2)
    np.subtract(w.one, dn, out=dn)
    dn *= dh
    np.subtract(w.one, z, out=tmp)
    dn *= tmp
    tmp *= z
    np.subtract(h_prev, n, out=dz)  # dL/dz through sigmoid: dh * (h - n) * z (1 - z)
    dz *= dh
    dz *= tmp
    np.multiply(dn, bn, out=dr)  # dL/dr through sigmoid: dn * b_n * r (1 - r)
    np.subtract(w.one, r, out=tmp)
    tmp *= r
    dr *= tmp
    np.copyto(db[:, : 2 * H], da[:, : 2 * H])
    np.multiply(dn, r, out=db[:, 2 * H :])  # the hidden part of n sits inside r *
    _normalize_backward(db, hhat, inv_h, w.extra["ln_hh_weight"], dv, t1, s)  # through LN_hh
    cells.to_h_prev(dv, w, tmp)
    dh *= z
    dh += tmp  # to h_prev: the direct path z * dh plus the gates


def _ln_gru_grads(w: StepWeights, rec: Any, grads: Any, du: Array) -> tuple[OptArray, ...]:
    da, dv, db = grads
    return (du.T @ rec.x, dv.T @ rec.tape[0], None, None, None, _sum_rows(da, rec.records[0]), _sum_rows(da),
            _sum_rows(db, rec.tape[3]), _sum_rows(db))


def _ln_gru_tape(H: int, P: int, proj: bool) -> Blocks:
    return ((1, 3 * H), (1, H), (1, 3 * H), (1, 1))


LN_GRU = register(CellKind(
    "ln_gru", 3, (), False, _ln_gru_forward, _ln_gru_backward, _ln_gru_tape, lambda H, P, proj: ((1, 3 * H),),
    lambda H, P, proj: ((1, 3 * H),) * 3, lambda H, P, proj: ((1, 3 * H), (1, 1), (1, H)), separate_dgh=True,
    params=(("ln_ih_weight", 3, 1.0), ("ln_ih_bias", 3, 0.0), ("ln_hh_weight", 3, 1.0), ("ln_hh_bias", 3, 0.0)),
    param_grads=_ln_gru_grads, project=_project, project_backward=_project_backward,
    project_blocks=lambda H, P, proj: ((1, 3 * H), (1, 1))))

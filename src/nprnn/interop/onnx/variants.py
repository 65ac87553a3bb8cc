"""The cell kinds ONNX defines and PyTorch lacks, registered into the core's kind registry
(:func:`nprnn.functional.cells.register`), forward only:

* ``gru_lbr0``: GRU with ``linear_before_reset=0``, where the reset gate applies before the
  candidate's hidden product: ``n = tanh(x W_in^T + b_in + (r * h) W_hn^T + b_hn)``;
* ``lstm_ext``: LSTM with peepholes (i and f see ``c_{t-1}``, o sees ``c_t``), ``clip``
  (pre-activations bounded to [-clip, clip]) and ``input_forget`` (``f = 1 - i``).

Their options reach the kernels through ``StepWeights.extra`` (``peep``, ``clip``,
``input_forget``; ``hnT``, which ``prepare`` arranges).
"""
from __future__ import annotations

from typing import Any

import numpy as np

from ..._typing import Array, Blocks, OptArray
from ...functional.cells import (
    CellKind,
    StepWeights,
    _gru_grads,
    _gru_scratch,
    _gru_update,
    _lstm_grads,
    _lstm_output,
    _lstm_scratch,
    _lstm_tape,
    _lstm_work,
    _sigmoid_of_scaled,
    gate_major,
    register,
)


def _no_backward(dstate: tuple[Array, ...], w: StepWeights, tape: Any, grads: Any, scratch: Any) -> None:
    raise NotImplementedError("backward is not implemented for the ONNX-only cell variants "
                              "(GRU with linear_before_reset=0, LSTM with peepholes, clip or input_forget)")


def _gru_lbr0_prepare(step: StepWeights, w_hh: Array) -> None:
    """The candidate's hidden product comes after the reset gate: keep it apart."""
    H = w_hh.shape[0] // 3
    step.hhT = step.hhT[:, : 2 * H].copy()
    step.extra["hnT"] = w_hh[2 * H :].T.copy()


def _gru_lbr0_forward(gx: Array, h: Array, c: OptArray, w: StepWeights, tape: Any, work: Any, train: bool,
                      h_out: Array) -> None:
    gates, rh = tape  # (3, n, H), (n, H)
    (gh, ghv), ghn = work  # (n, 2H) with its gate-major view, (n, H)
    np.dot(h, w.hhT, out=gh)  # r, z only, negated
    gxv = gate_major(gx, 3)
    rz = gates[:2]
    np.add(gxv[:2], ghv, out=rz)
    _sigmoid_of_scaled(rz, w.one)
    r, z, n = gates[0], gates[1], gates[2]
    np.multiply(r, h, out=rh)
    np.dot(rh, w.extra["hnT"], out=ghn)
    if w.b_hn is not None:
        ghn += w.b_hn
    np.add(ghn, gxv[2], out=n)
    np.tanh(n, out=n)
    _gru_update(h, z, n, h_out)


def _sigmoid(a: Array, one: Any) -> None:
    np.negative(a, out=a)
    _sigmoid_of_scaled(a, one)


def _lstm_ext_forward(gx: Array, h: Array, c: Array, w: StepWeights, tape: Any, work: Any, train: bool,
                      h_out: Array) -> None:
    peep, clip = w.extra.get("peep"), w.extra.get("clip")
    gates, c_prev, tc = tape[0], tape[1], tape[2]
    gh, ghv = work[0]
    np.dot(h, w.hhT, out=gh)
    np.add(gate_major(gx, 4), ghv, out=gates)  # pre-activations, unscaled
    i, f, g, o = gates[0], gates[1], gates[2], gates[3]
    if peep is not None:
        i += peep[0] * c
        f += peep[1] * c
    if clip is not None:
        np.clip(gates[:3], -clip, clip, out=gates[:3])
    _sigmoid(i, w.one)
    if w.extra.get("input_forget"):
        np.subtract(w.one, i, out=f)
    else:
        _sigmoid(f, w.one)
    np.tanh(g, out=g)
    if train:
        np.copyto(c_prev, c)
    c *= f
    np.multiply(i, g, out=tc)
    c += tc
    if peep is not None:
        o += peep[2] * c
    if clip is not None:
        np.clip(o, -clip, clip, out=o)
    _sigmoid(o, w.one)
    np.tanh(c, out=tc)
    proj = w.hrT is not None
    _lstm_output(o, tc, w, tape[3] if proj else None, work[1] if proj else None, h_out)


def _gru_lbr0_tape(H: int, P: int, proj: bool) -> Blocks:
    return ((3, H), (1, H))


def _gru_lbr0_work(H: int, P: int, proj: bool) -> Blocks:
    return ((-2, H), (1, H))


GRU_LBR0 = register(CellKind("gru_lbr0", 3, (-1, -1, 1), False, _gru_lbr0_forward, _no_backward, _gru_lbr0_tape,
                             _gru_lbr0_work, _gru_grads, _gru_scratch, separate_dgh=True, prepare=_gru_lbr0_prepare))
LSTM_EXT = register(CellKind("lstm_ext", 4, (), True, _lstm_ext_forward, _no_backward, _lstm_tape, _lstm_work,
                             _lstm_grads, _lstm_scratch))

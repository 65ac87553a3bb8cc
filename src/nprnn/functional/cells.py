"""One time step of each cell kind, forward and backward, as pure functions.

Every kernel works on the rows of the sequences still active at this step (``n`` rows)
and writes into arrays it is handed; nothing is allocated and nothing is kept on an
object.  The equations are in the class docstrings of :mod:`nprnn.recurrent`; here only
the mechanics:

* The input projection ``gx = x @ W_ih.T + b`` has already been computed for all steps
  (see :mod:`nprnn.functional.scan`); a step adds ``h @ W_hh.T`` and applies the gates.
* Sigmoid is evaluated as ``0.5 * tanh(0.5 * z) + 0.5``.  The factor 0.5 is folded into
  the rows of the weights and biases of every sigmoid gate (:func:`gate_scale`), so one
  ``tanh`` call covers all gates of a step and no ``exp`` can overflow.  Multiplying by
  0.5 is exact in floating point, so this changes nothing but the speed.
* ``state`` is a tuple of the running state rows, ``(h,)`` or ``(h, c)``; forward
  overwrites it with the new state, backward overwrites the running state gradient with
  the gradient for the previous state.
* ``tape`` holds what backward needs (the scan stores ``h_prev`` in front of it);
  ``grads`` receives the per-step gradients that the scan turns into weight gradients
  with a few large matrix products after the loop.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Optional

import numpy as np


@dataclass
class StepWeights:
    """Weights of one layer and direction, arranged for the time loop.

    hhT: (H_out, G*H) hidden-to-hidden weights, transposed, sigmoid rows scaled by 0.5
    hh:  (G*H, H_out) the unscaled weights, for the backward product
    b_hn: (H,) GRU only: the hidden bias of the candidate gate (it sits inside ``r *``)
    hrT, hr: LSTM projection ``weight_hr`` transposed and as is, or None
    act_scale, act_shift: (G*H,) turn ``tanh`` of the scaled gates into the activations
    """

    hhT: np.ndarray
    hh: np.ndarray
    b_hn: Optional[np.ndarray] = None
    hrT: Optional[np.ndarray] = None
    hr: Optional[np.ndarray] = None
    act_scale: Optional[np.ndarray] = None
    act_shift: Optional[np.ndarray] = None


@dataclass(frozen=True)
class CellKind:
    """The constants and the step kernels of one cell kind."""

    name: str
    num_gates: int
    sigmoid_gates: tuple  # which of the gate blocks go through a sigmoid
    has_cell: bool
    forward: Callable
    backward: Callable
    tape_widths: Callable  # (H, H_out, proj) -> widths of the forward tape, h_prev excluded
    grad_widths: Callable  # (H, H_out, proj) -> widths of the per-step gradient records
    scratch_widths: Callable  # (H, H_out, proj) -> widths of backward scratch rows
    separate_dgh: bool = False  # the gradient w.r.t. h @ W_hh.T differs from that w.r.t. gx


def gate_scale(kind: CellKind, hidden_size: int, dtype) -> Optional[np.ndarray]:
    """(G*H,) factor folded into the weight rows: 0.5 for sigmoid gates, 1 for the rest."""
    if not kind.sigmoid_gates:
        return None
    scale = np.ones((kind.num_gates, hidden_size), dtype=dtype)
    scale[list(kind.sigmoid_gates)] = 0.5
    return scale.reshape(-1)


# ----------------------------------------------------------------------------- RNN
def _rnn_forward(nonlinearity):
    def forward(gx, state, w, tape, train):
        (h,) = state
        (act,) = tape
        np.matmul(h, w.hhT, out=act)  # (n, H)
        act += gx
        if nonlinearity == "tanh":
            np.tanh(act, out=act)
        else:
            np.maximum(act, 0, out=act)
        np.copyto(h, act)

    return forward


def _rnn_backward(nonlinearity):
    def backward(dstate, w, tape, grads, scratch):
        (dh,) = dstate
        _h_prev, act = tape
        (dz,) = grads
        if nonlinearity == "tanh":  # through tanh: 1 - h'^2
            np.multiply(act, act, out=dz)
            np.subtract(1, dz, out=dz)
            dz *= dh
        else:  # through relu: h' > 0
            np.greater(act, 0, out=dz, casting="unsafe")
            dz *= dh
        np.matmul(dz, w.hh, out=dh)  # to h_prev

    return backward


def _one(H, P, proj):
    return (H,)


def _none(H, P, proj):
    return ()


RNN_TANH = CellKind("rnn_tanh", 1, (), False, _rnn_forward("tanh"), _rnn_backward("tanh"), _one, _one, _none)
RNN_RELU = CellKind("rnn_relu", 1, (), False, _rnn_forward("relu"), _rnn_backward("relu"), _one, _one, _none)


# ---------------------------------------------------------------------------- LSTM
def _lstm_forward(gx, state, w, tape, train):
    h, c = state
    gates, c_prev, tc = tape[0], tape[1], tape[2]
    H = c.shape[1]
    np.matmul(h, w.hhT, out=gates)  # (n, 4H)
    gates += gx
    np.tanh(gates, out=gates)
    gates *= w.act_scale  # sigmoid for i, f, o; tanh for g
    gates += w.act_shift
    i, f, g, o = gates[:, :H], gates[:, H : 2 * H], gates[:, 2 * H : 3 * H], gates[:, 3 * H :]
    if train:
        np.copyto(c_prev, c)
    c *= f
    np.multiply(i, g, out=tc)
    c += tc  # c' = f * c + i * g
    np.tanh(c, out=tc)
    if w.hrT is None:
        np.multiply(o, tc, out=h)  # h' = o * tanh(c')
    else:
        m = tape[3]
        np.multiply(o, tc, out=m)
        np.matmul(m, w.hrT, out=h)  # h' = (o * tanh(c')) @ W_hr.T


def _lstm_backward(dstate, w, tape, grads, scratch):
    dh, dc = dstate
    _h_prev, gates, c_prev, tc = tape[0], tape[1], tape[2], tape[3]
    dgates = grads[0]
    deriv, tmp = scratch[0], scratch[1]
    H = dc.shape[1]
    i, f, g, o = gates[:, :H], gates[:, H : 2 * H], gates[:, 2 * H : 3 * H], gates[:, 3 * H :]
    di, df, dg, do = (dgates[:, :H], dgates[:, H : 2 * H], dgates[:, 2 * H : 3 * H], dgates[:, 3 * H :])
    if w.hr is None:
        dm = dh
    else:  # through the projection
        np.copyto(grads[1], dh)
        dm = scratch[2]
        np.matmul(dh, w.hr, out=dm)  # (n, H)
    np.multiply(dm, tc, out=do)
    np.multiply(tc, tc, out=tmp)  # through tanh(c'): 1 - tanh(c')^2
    np.subtract(1, tmp, out=tmp)
    tmp *= o
    tmp *= dm
    dc += tmp
    np.multiply(dc, g, out=di)
    np.multiply(dc, c_prev, out=df)
    np.multiply(dc, i, out=dg)
    dc *= f  # to c_prev
    np.subtract(1, gates, out=deriv)  # through the gates: s(1 - s), and 1 - g^2 for g
    deriv *= gates
    dg_deriv = deriv[:, 2 * H : 3 * H]
    np.multiply(g, g, out=dg_deriv)
    np.subtract(1, dg_deriv, out=dg_deriv)
    dgates *= deriv
    np.matmul(dgates, w.hh, out=dh)  # to h_prev


def _lstm_tape(H, P, proj):
    return (4 * H, H, H, H) if proj else (4 * H, H, H)


def _lstm_grads(H, P, proj):
    return (4 * H, P) if proj else (4 * H,)


def _lstm_scratch(H, P, proj):
    return (4 * H, H, H) if proj else (4 * H, H)


LSTM = CellKind("lstm", 4, (0, 1, 3), True, _lstm_forward, _lstm_backward, _lstm_tape, _lstm_grads, _lstm_scratch)


# ----------------------------------------------------------------------------- GRU
def _gru_forward(gx, state, w, tape, train):
    (h,) = state
    gates, gh = tape
    H = h.shape[1]
    np.matmul(h, w.hhT, out=gh)  # (n, 3H)
    ghn = gh[:, 2 * H :]
    if w.b_hn is not None:
        ghn += w.b_hn
    rz = gates[:, : 2 * H]
    np.add(gx[:, : 2 * H], gh[:, : 2 * H], out=rz)
    np.tanh(rz, out=rz)
    rz *= 0.5  # sigmoid for r and z
    rz += 0.5
    r, z, n = gates[:, :H], gates[:, H : 2 * H], gates[:, 2 * H :]
    np.multiply(r, ghn, out=n)
    n += gx[:, 2 * H :]
    np.tanh(n, out=n)  # n = tanh(W_in x + b_in + r * (W_hn h + b_hn))
    h -= n
    h *= z
    h += n  # h' = (1 - z) * n + z * h


def _gru_backward(dstate, w, tape, grads, scratch):
    (dh,) = dstate
    h_prev, gates, gh = tape
    dgx, dgh = grads
    tmp, dh_hh = scratch
    H = dh.shape[1]
    r, z, n = gates[:, :H], gates[:, H : 2 * H], gates[:, 2 * H :]
    dr, dz, dn = dgx[:, :H], dgx[:, H : 2 * H], dgx[:, 2 * H :]
    ghn = gh[:, 2 * H :]
    np.subtract(h_prev, n, out=dz)  # dL/dz = dh * (h - n), through sigmoid: z(1 - z)
    dz *= dh
    np.subtract(1, z, out=tmp)
    tmp *= z
    dz *= tmp
    np.multiply(n, n, out=dn)  # dL/dn = dh * (1 - z), through tanh: 1 - n^2
    np.subtract(1, dn, out=dn)
    np.subtract(1, z, out=tmp)
    dn *= tmp
    dn *= dh
    np.multiply(dn, ghn, out=dr)  # dL/dr = dn * (W_hn h + b_hn), through sigmoid: r(1 - r)
    np.subtract(1, r, out=tmp)
    tmp *= r
    dr *= tmp
    np.copyto(dgh[:, : 2 * H], dgx[:, : 2 * H])
    np.multiply(dn, r, out=dgh[:, 2 * H :])  # the hidden part of n sits inside r *
    np.matmul(dgh, w.hh, out=dh_hh)  # (n, H)
    dh *= z
    dh += dh_hh  # to h_prev: direct path z * dh plus the gates


def _gru_tape(H, P, proj):
    return (3 * H, 3 * H)


def _gru_grads(H, P, proj):
    return (3 * H, 3 * H)


def _gru_scratch(H, P, proj):
    return (H, H)


GRU = CellKind("gru", 3, (0, 1), False, _gru_forward, _gru_backward, _gru_tape, _gru_grads, _gru_scratch, separate_dgh=True)

KINDS = {k.name: k for k in (RNN_TANH, RNN_RELU, LSTM, GRU)}

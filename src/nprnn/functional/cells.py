"""One time step of each cell kind, forward and backward, as pure functions.

Every kernel works on the rows of the sequences still active at this step (``n`` rows)
and writes into arrays it is handed; nothing is allocated and nothing is kept on an
object.  The equations are in :mod:`nprnn.functional.reference`, whose plain steps these
kernels are tested against step by step (tests/test_reference.py); here only the mechanics:

* The input projection ``gx = x @ W_ih.T + b`` has already been computed for all steps
  (see :mod:`nprnn.functional.scan`); a step adds ``h @ W_hh.T`` and applies the gates.
* Gates go through one ``exp`` call per step: the weight and bias rows of every sigmoid
  gate are multiplied by -1 and those of the LSTM's tanh gate by -2 (:func:`gate_scale`;
  exact in floating point), so ``1 / (1 + exp(.))`` gives ``sigmoid(z)`` for the former
  and ``sigmoid(2z)`` for the latter, and ``tanh(z) = 2 sigmoid(2z) - 1``.  ``exp`` is
  cheaper than ``tanh`` in NumPy, and its overflow to ``inf`` gives exactly 0.  The
  GRU's candidate n, which needs r first, calls ``tanh`` itself (fewer calls, which
  counts more when two scans share the GIL; see :mod:`nprnn.threads`).
* Forward reads ``h`` (the previous state: it may be the previous step's output rows,
  so it is never written), writes the new state into ``h_out`` and updates the LSTM's
  ``c`` in place (None for the other kinds); backward's ``dstate``, ``(dh,)`` or
  ``(dh, dc)``, is the running state gradient, overwritten with the gradient for the
  previous state.
* ``tape`` holds what backward needs (the scan stores ``h_prev`` in front of it);
  ``grads`` receives the per-step gradients that the scan turns into weight gradients
  with a few large matrix products after the loop; ``work`` and ``scratch`` are rows of
  workspace.  Each kind declares their shapes as blocks ``(k, width)``: ``k = 1`` is an
  ``(n, width)`` array, ``k > 1`` a gate-major ``(k, n, width)`` array, and ``k < 0``
  an ``(n, -k*width)`` array handed over with its gate-major view, as a pair.
* Gate activations live gate-major, ``(G, n, H)``, so every gate is one contiguous
  array and the elementwise work runs at full speed.  Matrix products want rows,
  ``(n, G*H)``; :func:`gate_major` views those as ``(G, n, H)``, and the one ufunc
  that adds ``gx`` and ``h @ W_hh.T`` (or, in backward, writes the gate gradients) moves
  the data between the two layouts as a side effect.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Optional

import numpy as np

from .._typing import Array, Blocks, OptArray

# A step's kernels: forward(gx, h, c, w, tape, work, train, h_out) and
# backward(dstate, w, tape, grads, scratch), the tape/work/grads/scratch as block views
# (see block_views in .scan); and the block shapes as a function of (H, H_out, proj).
ForwardStep = Callable[[Array, Array, Any, "StepWeights", Any, Any, bool, Array], None]  # (c: the LSTM's, else None)
BackwardStep = Callable[[tuple[Array, ...], "StepWeights", Any, Any, Any], None]
BlocksOf = Callable[[int, int, bool], Blocks]


def _nothing(H: int, P: int, proj: bool) -> Blocks:
    return ()


@dataclass
class StepWeights:
    """Weights of one layer and direction, arranged for the time loop.

    hhT: (H_out, G*H) hidden-to-hidden weights, transposed, rows scaled by gate_scale
    hh:  (G*H, H_out) the unscaled weights, for the backward product
    b_hn: (H,) GRU only: the hidden bias of the candidate gate (it sits inside ``r *``)
    hrT, hr: LSTM projection ``weight_hr`` transposed and as is, or None
    one, two: the constants in the weights' dtype (NumPy scalars are cheaper than floats)
    extra: what a registered kind's own kernels need besides (its options, and what its
        ``prepare`` hook arranges)
    rmask, rbuf: recurrent dropout (a training call's own copy of the weights): the (N,
        H_out) scaled mask on ``h`` before ``W_hh`` and workspace like it; see
        :func:`hidden_product` and :func:`to_h_prev`, through which every kind's
        kernels meet ``W_hh``
    """

    hhT: Array
    hh: Array
    b_hn: OptArray = None
    hrT: OptArray = None
    hr: OptArray = None
    one: Any = np.float64(1)  # (a NumPy scalar of the weights' dtype)
    two: Any = np.float64(2)
    extra: dict[str, Any] = field(default_factory=dict)
    rmask: OptArray = None
    rbuf: OptArray = None


def hidden_product(h: Array, w: StepWeights, out: Array) -> None:
    """``out = h @ W_hh.T`` (rows scaled as prepared) for a step's ``n`` rows; with
    recurrent dropout, ``(h * mask) @ W_hh.T``, the mask's first ``n`` rows (the active
    sequences are the first rows of the batch)."""
    if w.rmask is not None and w.rbuf is not None:
        h = np.multiply(h, w.rmask[: h.shape[0]], out=w.rbuf[: h.shape[0]])
    np.dot(h, w.hhT, out=out)


def to_h_prev(dg: Array, w: StepWeights, out: Array) -> None:
    """``out = dg @ W_hh``, the gradient reaching ``h_prev`` through the recurrent product
    (``dg``: that of ``h @ W_hh.T``); with recurrent dropout, times the mask."""
    np.dot(dg, w.hh, out=out)
    if w.rmask is not None:
        out *= w.rmask[: out.shape[0]]


@dataclass(frozen=True)
class CellKind:
    """The constants and the step kernels of one cell kind.

    The ``*_blocks`` functions map ``(H, H_out, proj)`` to the blocks ``(k, width)`` of the
    forward tape (``h_prev`` excluded), the forward workspace, the per-step gradient
    records and the backward scratch.
    """

    name: str
    num_gates: int
    gate_scales: tuple[float, ...]  # per gate block, the factor folded into its weight rows (see gate_scale)
    has_cell: bool
    forward: ForwardStep
    backward: BackwardStep
    tape_blocks: BlocksOf
    work_blocks: BlocksOf
    grad_blocks: BlocksOf
    scratch_blocks: BlocksOf
    separate_dgh: bool = False  # the gradient w.r.t. h @ W_hh.T differs from that w.r.t. gx
    # prepare(step_weights, w_hh): a kind's own arrangement of its weights
    prepare: Optional[Callable[["StepWeights", Array], None]] = None
    # A kind's own parameters after the five (w_ih, w_hh, b_ih, b_hh, w_hr): (name, width
    # in hidden units, initial value) each; the kernels find them in StepWeights.extra by
    # name. param_grads(w, record, grads, du) gives every parameter's gradient after the
    # loop (the five, then these), where the kind's records differ from weight_grads'
    # (du: the gradient of x @ W_ih.T).
    params: tuple[tuple[str, int, float], ...] = ()
    param_grads: Optional[Callable[["StepWeights", Any, Any, Array], tuple[OptArray, ...]]] = None
    # A row-wise transform of the input projection before the loop (the layer norms):
    # project(gx rows, w, records) in place, keeping per-row records (blocks of
    # project_blocks); project_backward(dgx rows, w, records, out) the gradient of x @ W_ih.T.
    project: Optional[Callable[[Array, "StepWeights", Any], None]] = None
    project_backward: Optional[Callable[[Array, "StepWeights", Any, Array], None]] = None
    project_blocks: BlocksOf = _nothing
    # A kind whose gates read only the input (minGRU, minLSTM): no W_hh, no b_hh; its time
    # loop is the diagonal linear scan of .linscan (``linear`` names its form there), not the
    # matrix loop, and its step functions are never called.
    linear: str = ""

    @property
    def has_hh(self) -> bool:
        return not self.linear


def own_names(kind: CellKind) -> tuple[str, ...]:
    """The names of a kind's own parameters, in their order after the five."""
    return tuple(name for name, _, _ in kind.params)


def gate_scale(kind: CellKind, hidden_size: int, dtype: Any) -> OptArray:
    """(G*H,) factor folded into the weight rows: -1 for sigmoid gates, -2 for the LSTM's
    tanh gate, 1 where the kernel applies the activation itself; None for the plain RNN."""
    if not kind.gate_scales:
        return None
    return np.repeat(np.asarray(kind.gate_scales, dtype=dtype), hidden_size)


def gate_major(a: Array, num_gates: int) -> Array:
    """View rows ``(n, G*H)`` as ``(G, n, H)`` (no copy)."""
    n = a.shape[0]
    view: Array = a.reshape(n, num_gates, a.shape[1] // num_gates).transpose(1, 0, 2)
    return view


def _sigmoid_of_scaled(a: Array, one: Any) -> None:
    """In place: ``a = -z`` (as scaled by gate_scale) becomes sigmoid(z)."""
    np.exp(a, a)
    np.add(a, one, a)
    np.reciprocal(a, a)


# ----------------------------------------------------------------------------- RNN
def _rnn_forward(nonlinearity: str) -> ForwardStep:
    def forward(gx: Array, h: Array, c: OptArray, w: StepWeights, tape: Any, work: Any, train: bool,
                h_out: Array) -> None:
        (act,) = tape
        hidden_product(h, w, act)  # (n, H)
        act += gx
        if nonlinearity == "tanh":
            np.tanh(act, out=act)
        else:
            np.maximum(act, 0, out=act)
        np.copyto(h_out, act)

    return forward


def _rnn_backward(nonlinearity: str) -> BackwardStep:
    def backward(dstate: tuple[Array, ...], w: StepWeights, tape: Any, grads: Any, scratch: Any) -> None:
        (dh,) = dstate
        _h_prev, act = tape
        (dz,) = grads
        if nonlinearity == "tanh":  # through tanh: 1 - h'^2
            np.multiply(act, act, out=dz)
            np.subtract(w.one, dz, out=dz)
            dz *= dh
        else:  # through relu: h' > 0
            np.greater(act, 0, out=dz, casting="unsafe")
            dz *= dh
        to_h_prev(dz, w, dh)

    return backward


def _rows(H: int, P: int, proj: bool) -> Blocks:
    return ((1, H),)


RNN_TANH = CellKind("rnn_tanh", 1, (), False, _rnn_forward("tanh"), _rnn_backward("tanh"),
                    _rows, _nothing, _rows, _nothing)
RNN_RELU = CellKind("rnn_relu", 1, (), False, _rnn_forward("relu"), _rnn_backward("relu"),
                    _rows, _nothing, _rows, _nothing)


# ---------------------------------------------------------------------------- LSTM
def _lstm_forward(gx: Array, h: Array, c: Array, w: StepWeights, tape: Any, work: Any, train: bool,
                  h_out: Array) -> None:
    gates, c_prev, tc = tape[0], tape[1], tape[2]  # gates (4, n, H)
    gh, ghv = work[0]  # (n, 4H) and its gate-major view
    hidden_product(h, w, gh)
    np.add(gate_major(gx, 4), ghv, gates)
    _sigmoid_of_scaled(gates, w.one)  # i, f, o; sigmoid(2 z_g) for g
    i, f, g, o = gates[0], gates[1], gates[2], gates[3]
    np.multiply(g, w.two, g)
    np.subtract(g, w.one, g)  # g = tanh(z_g)
    if train:
        np.copyto(c_prev, c)
    np.multiply(c, f, c)
    np.multiply(i, g, tc)
    np.add(c, tc, c)  # c' = f * c + i * g
    np.tanh(c, tc)
    proj = w.hrT is not None
    _lstm_output(o, tc, w, tape[3] if proj else None, work[1] if proj else None, h_out)


def _lstm_output(o: Array, tc: Array, w: StepWeights, m: OptArray, rows: OptArray, h_out: Array) -> None:
    """h' = o * tanh(c'), or (o * tanh(c')) @ W_hr.T with a projection (``m`` (n, H) then
    keeps o * tanh(c'), and ``rows`` (n, P) is workspace)."""
    if m is None or rows is None or w.hrT is None:
        np.multiply(o, tc, h_out)
        return
    np.multiply(o, tc, out=m)
    if h_out.flags.c_contiguous:
        np.dot(m, w.hrT, out=h_out)
    else:  # a column slice of a bidirectional output: BLAS writes contiguous rows only
        np.dot(m, w.hrT, out=rows)
        np.copyto(h_out, rows)


def _back_through_projection(dh: Array, w_hr: Array, kept: Array, dm: Array) -> Array:
    """With a projection, the gradient of m = o * tanh(c') from that of h' = m @ W_hr.T:
    ``dm`` (n, H) = dh @ W_hr, ``dh`` kept in ``kept`` for W_hr's gradient; returns ``dm``."""
    np.copyto(kept, dh)
    np.dot(dh, w_hr, out=dm)
    return dm


def _lstm_backward(dstate: tuple[Array, ...], w: StepWeights, tape: Any, grads: Any, scratch: Any) -> None:
    dh, dc = dstate
    gates, c_prev, tc = tape[1], tape[2], tape[3]  # tape[0] is h_prev
    dgates, deriv, tmp = scratch[0], scratch[1], scratch[2]  # (4, n, H), (4, n, H), (n, H)
    i, f, g, o = gates[0], gates[1], gates[2], gates[3]
    di, df, dg, do = dgates[0], dgates[1], dgates[2], dgates[3]
    dm = dh if w.hr is None else _back_through_projection(dh, w.hr, grads[1], scratch[3])
    np.multiply(dm, tc, out=do)
    np.multiply(tc, tc, out=tmp)  # through tanh(c'): 1 - tanh(c')^2
    np.subtract(w.one, tmp, out=tmp)
    tmp *= o
    tmp *= dm
    dc += tmp
    np.multiply(dc, g, out=di)
    np.multiply(dc, c_prev, out=df)
    np.multiply(dc, i, out=dg)
    dc *= f  # to c_prev
    np.subtract(w.one, gates, out=deriv)  # through the gates: s(1 - s), and 1 - g^2 for g
    deriv *= gates
    np.multiply(g, g, out=deriv[2])
    np.subtract(w.one, deriv[2], out=deriv[2])
    dG = grads[0]  # (n, 4H) rows for the weight products
    np.multiply(dgates, deriv, out=gate_major(dG, 4))
    to_h_prev(dG, w, dh)


def _lstm_tape(H: int, P: int, proj: bool) -> Blocks:
    return ((4, H), (1, H), (1, H), (1, H)) if proj else ((4, H), (1, H), (1, H))


def _lstm_work(H: int, P: int, proj: bool) -> Blocks:
    return ((-4, H), (1, P)) if proj else ((-4, H),)


def _lstm_grads(H: int, P: int, proj: bool) -> Blocks:
    return ((1, 4 * H), (1, P)) if proj else ((1, 4 * H),)


def _lstm_scratch(H: int, P: int, proj: bool) -> Blocks:
    return ((4, H), (4, H), (1, H), (1, H)) if proj else ((4, H), (4, H), (1, H))


LSTM = CellKind("lstm", 4, (-1, -1, -2, -1), True, _lstm_forward, _lstm_backward,
                _lstm_tape, _lstm_work, _lstm_grads, _lstm_scratch)


# ----------------------------------------------------------------------------- GRU
def _gru_forward(gx: Array, h: Array, c: OptArray, w: StepWeights, tape: Any, work: Any, train: bool,
                  h_out: Array) -> None:
    gates, ghn = tape  # (3, n, H), (n, H)
    ((gh, ghv),) = work  # (n, 3H) and its gate-major view
    hidden_product(h, w, gh)  # r, z rows negated
    gxv = gate_major(gx, 3)
    rz = gates[:2]
    np.add(gxv[:2], ghv[:2], rz)
    _sigmoid_of_scaled(rz, w.one)
    if w.b_hn is None:
        np.copyto(ghn, ghv[2])
    else:
        np.add(ghv[2], w.b_hn, ghn)  # W_hn h + b_hn
    r, z, n = gates[0], gates[1], gates[2]
    np.multiply(r, ghn, n)
    np.add(n, gxv[2], n)
    np.tanh(n, n)  # n = tanh(W_in x + b_in + r * (W_hn h + b_hn))
    _gru_update(h, z, n, h_out)


def _gru_update(h: Array, z: Array, n: Array, h_out: Array) -> None:
    """h' = (1 - z) * n + z * h, written as n + z * (h - n)."""
    np.subtract(h, n, h_out)
    np.multiply(h_out, z, h_out)
    np.add(h_out, n, h_out)


def _gru_backward(dstate: tuple[Array, ...], w: StepWeights, tape: Any, grads: Any, scratch: Any) -> None:
    (dh,) = dstate
    h_prev, gates, ghn = tape
    dgx, dgh = grads  # (n, 3H) rows each
    tmp, dh_hh = scratch
    r, z, n = gates[0], gates[1], gates[2]
    dgxv = gate_major(dgx, 3)
    dr, dz, dn = dgxv[0], dgxv[1], dgxv[2]  # written in place in the rows the weight products read
    np.subtract(w.one, z, out=tmp)
    np.multiply(n, n, out=dn)  # dL/dn = dh * (1 - z), through tanh: 1 - n^2
    np.subtract(w.one, dn, out=dn)
    dn *= tmp
    dn *= dh
    tmp *= z
    np.subtract(h_prev, n, out=dz)  # dL/dz = dh * (h - n), through sigmoid: z(1 - z)
    dz *= dh
    dz *= tmp
    np.multiply(dn, ghn, out=dr)  # dL/dr = dn * (W_hn h + b_hn), through sigmoid: r(1 - r)
    np.subtract(w.one, r, out=tmp)
    tmp *= r
    dr *= tmp
    dghv = gate_major(dgh, 3)
    np.copyto(dghv[:2], dgxv[:2])
    np.multiply(dn, r, out=dghv[2])  # the hidden part of n sits inside r *
    to_h_prev(dgh, w, dh_hh)  # (n, H_out)
    dh *= z
    dh += dh_hh  # to h_prev: direct path z * dh plus the gates


def _gru_tape(H: int, P: int, proj: bool) -> Blocks:
    return ((3, H), (1, H))


def _gru_work(H: int, P: int, proj: bool) -> Blocks:
    return ((-3, H),)


def _gru_grads(H: int, P: int, proj: bool) -> Blocks:
    return ((1, 3 * H), (1, 3 * H))


def _gru_scratch(H: int, P: int, proj: bool) -> Blocks:
    return ((1, H), (1, P))


GRU = CellKind("gru", 3, (-1, -1, 1), False, _gru_forward, _gru_backward,
               _gru_tape, _gru_work, _gru_grads, _gru_scratch, separate_dgh=True)

KINDS = {k.name: k for k in (RNN_TANH, RNN_RELU, LSTM, GRU)}  # the registry: name -> kind


def register(kind: CellKind) -> CellKind:
    """Add a cell kind to :data:`KINDS` (a layer's ``mode`` names one), as the ONNX importer
    adds its variants (:mod:`nprnn.onnx.variants`); the core names none of them."""
    if KINDS.get(kind.name, kind) is not kind:
        raise ValueError(f"a different cell kind named {kind.name!r} is already registered")
    KINDS[kind.name] = kind
    return kind


"""The compiled tier: one call of :mod:`nprnn.functional._native` runs a layer-direction's
whole time loop, with the gates fused and the GIL released.

It keeps the contract of the NumPy loop in :mod:`.scan` (packed time-major rows, the
input projection of all steps as one GEMM before the loop, the weight gradients as a few
GEMMs after it) and the same records, so the two tiers are interchangeable per call.
What differs is inside the loop: the hidden weights are packed once into the panels the
kernel's register tiles read (:class:`Prepared`), the sigmoid gates are computed as such
(no scaled weights), and the running state lives in one ``(N, H_out)`` array that ends
as ``h_n``, because the rows of sequences that have ended are never touched again.

``NPRNN_BACKEND=numpy`` in the environment turns this tier off; ``NPRNN_BACKEND=native``
makes its absence an error instead of a quiet fallback.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Optional

import numpy as np

try:
    from . import _native
except ImportError:  # not built: no compiler at install time, or an unusual platform
    _native = None

_CODES = {"rnn_tanh": 0, "rnn_relu": 1, "lstm": 2, "gru": 3}
_FORCED = os.environ.get("NPRNN_BACKEND", "").strip().lower()
if _FORCED not in ("", "numpy", "native"):
    raise ImportError(f"NPRNN_BACKEND must be 'numpy' or 'native', got {_FORCED!r}")
if _FORCED == "native" and _native is None:
    raise ImportError("NPRNN_BACKEND=native, but nprnn's compiled kernels are not built in this installation "
                      "(reinstall with a C compiler present, or unset NPRNN_BACKEND to run on NumPy)")
_enabled = _native is not None and _FORCED != "numpy"


def backend() -> str:
    """``"native"`` when the compiled kernels run, ``"numpy"`` otherwise."""
    return "native" if _enabled else "numpy"


def set_backend(name: str) -> None:
    """Choose the tier for this process: ``"native"`` (an error if it is not built) or
    ``"numpy"``.  The environment variable ``NPRNN_BACKEND`` sets the default."""
    global _enabled
    if name not in ("native", "numpy"):
        raise ValueError(f"set_backend: expected 'native' or 'numpy', got {name!r}")
    if name == "native" and _native is None:
        raise RuntimeError("set_backend('native'): nprnn's compiled kernels are not built in this installation")
    _enabled = name == "native"


def isa() -> Optional[str]:
    """The instruction set the compiled kernels use (None without them)."""
    return None if _native is None else _native.isa()


def supports(kind, dtype) -> bool:
    """Whether this call can run natively: the tier is on and the kind is one of PyTorch's
    (the ONNX-only variants stay on NumPy)."""
    return _enabled and kind.name in _CODES


def _packed(mat: np.ndarray, transpose: bool) -> np.ndarray:
    """``mat.T`` (``transpose``) or ``mat`` packed into the kernel's panels."""
    mat = np.ascontiguousarray(mat)
    rows, cols = mat.shape
    K, M = (cols, rows) if transpose else (rows, cols)
    nr = _native.panel_width(mat.dtype.itemsize)
    out = np.empty(K * (-(-M // nr) * nr), mat.dtype)
    sk, sm = (1, cols) if transpose else (cols, 1)
    _native.pack(mat, out, K, M, sk, sm)
    return out


@dataclass
class Prepared:
    """One layer-direction's weights, arranged for the compiled loop.

    w_ih (G*H, H_in) and b_gx (G*H,) or None: the input projection ``x @ w_ih.T + b_gx``
    (for GRU the candidate's hidden bias stays out of it: ``b_hn``, (H,)); whh, whr: the
    packed ``W_hh.T`` and ``W_hr.T`` the forward loop multiplies by; whh_b, whr_b: the
    packed ``W_hh`` and ``W_hr`` of the backward loop; whh_plain: ``W_hh`` as is.
    """

    w_ih: np.ndarray
    b_gx: Optional[np.ndarray]
    b_hn: Optional[np.ndarray]
    whh: np.ndarray
    whh_b: np.ndarray
    whr: Optional[np.ndarray]
    whr_b: Optional[np.ndarray]
    whh_plain: np.ndarray
    isa: str


def prepare(kind, params) -> Prepared:
    """Arrange ``params`` = (w_ih, w_hh, b_ih, b_hh, w_hr) (None where absent)."""
    w_ih, w_hh, b_ih, b_hh, w_hr = params
    H = w_hh.shape[0] // (4 if kind.name == "lstm" else 3 if kind.name == "gru" else 1)
    b_hn = None
    if b_ih is None:
        b_gx = None
    elif kind.name == "gru":  # the candidate's hidden bias sits inside r * (...)
        b_gx = b_ih.copy()
        b_gx[: 2 * H] += b_hh[: 2 * H]
        b_hn = np.ascontiguousarray(b_hh[2 * H :])
    else:
        b_gx = b_ih + b_hh
    return Prepared(
        w_ih=np.ascontiguousarray(w_ih), b_gx=b_gx, b_hn=b_hn,
        whh=_packed(w_hh, True), whh_b=_packed(w_hh, False),
        whr=None if w_hr is None else _packed(w_hr, True), whr_b=None if w_hr is None else _packed(w_hr, False),
        whh_plain=np.array(w_hh, order="C", copy=True), isa=_native.isa(),
    )


@dataclass
class NativeRecord:
    """What the backward of one compiled layer-direction needs from its forward."""

    kind: object
    x: np.ndarray  # (T, H_in) the layer input
    prep: Prepared
    batch_sizes: np.ndarray  # int64, in time order
    offsets: np.ndarray
    reverse: bool
    tape: dict  # hprev (T, H_out), gates (T, G*H), and per kind cprev, tc, m, ghn (T, H)
    has_bias: bool
    H: int
    P: int

    def padded_tape(self, L: int):
        """See :meth:`.scan.DirectionRecord.padded_tape` (the layout is the same for any ``L``)."""
        gates = self.tape["gates"]
        return self.tape["hprev"], gates.reshape(gates.shape[0], -1, self.H), self.tape.get("cprev")


def _layout(batch_sizes):
    sizes = np.asarray(batch_sizes, dtype=np.int64)
    offsets = np.zeros_like(sizes)
    np.cumsum(sizes[:-1], out=offsets[1:])
    return sizes, offsets


def _tape_shapes(kind, H, P, proj, rows):
    G = 4 if kind.name == "lstm" else 3 if kind.name == "gru" else 1
    shapes = {"gates": (rows, G * H)}
    if kind.name == "lstm":
        shapes["tc"] = (rows, H)
        if proj:
            shapes["m"] = (rows, H)
    if kind.name == "gru":
        shapes["ghn"] = (rows, H)
    return shapes


def _arrays(shapes, dtype, pool, key):
    """Arrays of the given shapes, reused from ``pool`` (see :func:`.scan.alloc_blocks`)."""
    if pool is None:
        return {name: np.empty(shape, dtype) for name, shape in shapes.items()}
    held = pool.get(key)
    if held is not None and {k: a.shape for k, a in held.items()} == shapes and all(
            a.dtype == dtype for a in held.values()):
        return held
    held = pool[key] = {name: np.empty(shape, dtype) for name, shape in shapes.items()}
    return held


def _call(back, kind, train, reverse, rows, H, P, sizes, offsets, first, out, h, c, whh, bhn, whr, a):
    _native.scan(back, _CODES[kind.name], train, reverse, rows[0], rows[1], H, P, sizes, offsets, first, out, h, c,
                 whh, bhn, whr, a.get("gates"), a.get("hprev"), a.get("cprev"), a.get("tc"), a.get("m"),
                 a.get("ghn"), a.get("dgx"), a.get("dgh"), a.get("dproj"), a.get("scratch"), h.dtype.itemsize)


def direction_forward(kind, x, prep: Prepared, state0, batch_sizes, reverse, out, train, pool=None, key=None,
                      row_ranges=None, run_parts=None):
    """One layer in one direction over packed ``x`` (T, H_in); see
    :func:`.scan.direction_forward`, whose contract this keeps.  ``row_ranges`` (with
    ``run_parts``, a function that runs callables side by side) splits the batch: each
    range of rows runs its whole time loop in its own call.
    Returns ``(final_state, record)``; record is None unless ``train``."""
    T = x.shape[0]
    G = 4 if kind.name == "lstm" else 3 if kind.name == "gru" else 1
    H = prep.whh_plain.shape[0] // G
    P = prep.whh_plain.shape[1]
    sizes, offsets = _layout(batch_sizes)
    N = int(sizes[0])
    gx = _arrays({"gx": (T, G * H)}, x.dtype, pool, (key, "native gx"))["gx"]
    np.dot(x, prep.w_ih.T, out=gx)  # (T, G*H), all steps at once
    if prep.b_gx is not None:
        gx += prep.b_gx
    h = np.array(state0[0], order="C", copy=True)
    c = np.array(state0[1], order="C", copy=True) if kind.name == "lstm" else None
    shapes = _tape_shapes(kind, H, P, prep.whr is not None, T if train else N)
    if train:
        shapes["hprev"] = (T, P)
        if kind.name == "lstm":
            shapes["cprev"] = (T, H)
    arrays = _arrays(shapes, x.dtype, pool, (key, "native tape" if train else "native work"))

    def part(rows):
        _call(0, kind, int(train), int(reverse), rows, H, P, sizes, offsets, gx, out, h, c, prep.whh, prep.b_hn,
              prep.whr, arrays)

    if N == 0:  # an empty batch: nothing runs
        pass
    elif row_ranges is None or len(row_ranges) < 2:
        part((0, N))
    else:
        run_parts([lambda r=r: part(r) for r in row_ranges])
    state = (h,) if c is None else (h, c)
    record = None
    if train:
        record = NativeRecord(kind, x, prep, sizes, offsets, bool(reverse), arrays, prep.b_gx is not None, H, P)
    return state, record


def direction_backward(rec: NativeRecord, dout, dstate, pool=None, key=None, dx=None, accumulate=False,
                       row_ranges=None, run_parts=None):
    """Backward of :func:`direction_forward`; see :func:`.scan.direction_backward`."""
    from .scan import weight_grads

    kind, H, P = rec.kind, rec.H, rec.P
    T = rec.x.shape[0]
    G = rec.tape["gates"].shape[1] // H
    proj = rec.prep.whr is not None
    shapes = {"dgx": (T, G * H)}
    if kind.name == "gru":
        shapes["dgh"] = (T, G * H)
    if proj:
        shapes["dproj"] = (T, P)
        shapes["scratch"] = (dstate[0].shape[0], H)
    grads = _arrays(shapes, rec.x.dtype, pool, (key, "native grads"))
    arrays = dict(rec.tape)
    arrays.update(grads)
    dh = dstate[0] if dstate[0].flags.c_contiguous else np.ascontiguousarray(dstate[0])
    dc = None
    if kind.name == "lstm":
        dc = dstate[1] if dstate[1].flags.c_contiguous else np.ascontiguousarray(dstate[1])
    N = int(rec.batch_sizes[0])

    def part(rows):
        _call(1, kind, 1, int(rec.reverse), rows, H, P, rec.batch_sizes, rec.offsets, None, dout, dh, dc,
              rec.prep.whh_b, rec.prep.b_hn, rec.prep.whr_b, arrays)

    if N == 0:
        for g in grads.values():
            g.fill(0)
    elif row_ranges is None or len(row_ranges) < 2:
        part((0, N))
    else:
        run_parts([lambda r=r: part(r) for r in row_ranges])
    dgx = grads["dgx"]
    dgh = grads.get("dgh", dgx)
    if dx is None:
        dx = dgx @ rec.prep.w_ih  # (T, H_in)
    elif accumulate:
        dx += dgx @ rec.prep.w_ih
    else:
        np.dot(dgx, rec.prep.w_ih, out=dx)
    pgrads = weight_grads(rec.x, dgx, dgh, arrays["hprev"], rec.has_bias, grads.get("dproj"), arrays.get("m"))
    return dx, (dh,) if dc is None else (dh, dc), pgrads

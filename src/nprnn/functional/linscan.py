"""The diagonal linear scan ``h_t = a_t * h_{t-1} + b_t`` (issue 29), the second time loop
beside :mod:`.scan`'s matrix loop: elementwise, every unit its own recurrence, so all the
matrix work of a kind that uses it (minGRU, minLSTM) happens before it, in one product.

Rows are packed time-major as in :mod:`.scan` (``batch_sizes`` per step, the batch
shrinking forward, growing in reverse).  ``kind``:

* ``"plain"``: ``a`` and ``b`` given, (T, H) each;
* ``"mingru"``: ``u`` (T, 2H) = [k, v], the gate pre-activations:
  ``a = sigmoid(-k)``, ``b = sigmoid(k) * h~``;
* ``"minlstm"``: ``u`` (T, 3H) = [f, i, v]: ``F, I = sigmoid(f), sigmoid(i)``,
  ``a = F / (F + I)``, ``b = I / (F + I) * h~``;

with ``h~ = v`` (``log=False``) or ``g(v) = v + 0.5`` for ``v >= 0``, ``sigmoid(v)`` below
(``log=True``, the paper's log-space parametrisation; ``0 < a < 1`` lets the scan itself
run in linear space in both modes).  The compiled tier (``_native.linear_scan``) makes a
and b from ``u`` in the same pass as the recurrence, a batch of equal lengths split into
chunks of steps across the threads (a ragged one into its rows); the NumPy tier here makes
them first, then loops over the steps.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Optional, Sequence

import numpy as np

from .._typing import Array, OptArray, Params, Pool
from . import native, runners
from .cells import CellKind, _nothing, register
from .runners import SERIAL, Runner

KINDS = {"plain": 0, "mingru": 1, "minlstm": 2}
GATES = {"plain": 1, "mingru": 2, "minlstm": 3}  # u's width in H


def _sigmoid(x: Array) -> Array:
    out: Array = 0.5 * (1.0 + np.tanh(0.5 * x))
    return out


def gates(kind: str, u: Array, log: bool) -> tuple[Array, Array, Array, Array, Array]:
    """``(a, b, h~, g'(v), z or F, I)`` from the pre-activations ``u`` (NumPy tier)."""
    H = u.shape[1] // GATES[kind]
    v = u[:, -H:]
    ht, dv = v, np.ones_like(v)
    if log:
        s = _sigmoid(v)
        ht = np.where(v >= 0, v + 0.5, s)
        dv = np.where(v >= 0, 1.0, s * (1 - s)).astype(u.dtype)
    if kind == "mingru":
        z = _sigmoid(u[:, :H])
        return _sigmoid(-u[:, :H]), z * ht, ht, dv, (z,)  # type: ignore[return-value]
    f, i = _sigmoid(u[:, :H]), _sigmoid(u[:, H : 2 * H])  # F and I of the module docstring
    s = f + i
    return f / s, i / s * ht, ht, dv, (f, i)  # type: ignore[return-value]


def _steps(batch_sizes: Sequence[int], reverse: bool) -> list[tuple[int, int, int]]:
    out, lo = [], 0
    for n in batch_sizes:
        out.append((lo, lo + n, n))
        lo += n
    return out[::-1] if reverse else out


def _numpy_forward(a: Array, b: Array, h: Array, batch_sizes: Sequence[int], reverse: bool, out: Array) -> None:
    for lo, hi, n in _steps(batch_sizes, reverse):
        np.multiply(a[lo:hi], h[:n], out=h[:n])
        h[:n] += b[lo:hi]
        out[lo:hi] = h[:n]


def _numpy_backward(a: Array, y: Array, h0: Array, g: Array, dout: Array, batch_sizes: Sequence[int],
                    reverse: bool) -> tuple[Array, Array]:
    """da, db (T, H); ``g`` (N, H): dh_n in, dh_0 out."""
    da, db = np.empty_like(y), np.empty_like(y)
    steps = _steps(batch_sizes, reverse)
    for k in range(len(steps) - 1, -1, -1):
        lo, hi, n = steps[k]
        g[:n] += dout[lo:hi]
        if k == 0:
            hp = h0[:n]
        else:
            plo, _, pn = steps[k - 1]
            hp = y[plo : plo + min(n, pn)] if pn >= n else np.concatenate([y[plo : plo + pn], h0[pn:n]])
        np.multiply(g[:n], hp, out=da[lo:hi])
        db[lo:hi] = g[:n]
        g[:n] *= a[lo:hi]
    return da, db


def scan_rows(kind: str, log: bool, u: Array, b: OptArray, h0: Array, batch_sizes: Sequence[int], reverse: bool,
              runner: Runner = SERIAL, out: OptArray = None) -> tuple[Array, Array]:
    """The scan over packed rows: ``u`` is ``a`` for ``"plain"`` (then ``b`` too), else the
    gate pre-activations.  Returns ``(out (T, H), h_n (N, H))``, ``out`` written in place
    when given (C-contiguous, of u's dtype)."""
    H = h0.shape[1]
    out = np.empty((u.shape[0], H), u.dtype) if out is None else out
    h = np.array(h0, order="C", copy=True)
    if not len(batch_sizes):
        return out, h
    if native.supports_dtype(u.dtype):
        native.linear_scan(dict(kind=KINDS[kind], logm=int(log), back=0, reverse=int(reverse), a=u, b=b, h=h,
                                out=out), batch_sizes, H, u.shape[0], runner)
        return out, h
    if kind == "plain":
        a = u
    else:
        a, b = gates(kind, u, log)[:2]
    _numpy_forward(a, b, h, batch_sizes, reverse, out)  # type: ignore[arg-type]
    return out, h


def scan_rows_backward(kind: str, log: bool, u: Array, b: OptArray, h0: Array, y: Array, dout: Array,
                       dh_n: OptArray, batch_sizes: Sequence[int], reverse: bool, runner: Runner = SERIAL,
                       da: OptArray = None) -> tuple[Any, ...]:
    """Backward of :func:`scan_rows` (``y`` its output): ``(da, db, dh0)`` for ``"plain"``,
    else ``(du, dh0)`` with ``du`` shaped like ``u`` (written into ``da`` where given, on
    the compiled tier)."""
    g = np.zeros_like(h0) if dh_n is None else np.array(dh_n, order="C", copy=True)
    dout = np.ascontiguousarray(dout)
    if not len(batch_sizes):
        return (np.zeros_like(u), np.zeros_like(u), g) if kind == "plain" else (np.zeros_like(u), g)
    if native.supports_dtype(u.dtype):
        da = np.empty_like(u) if da is None else da
        db = np.empty_like(y) if kind == "plain" else None
        native.linear_scan(dict(kind=KINDS[kind], logm=int(log), back=1, reverse=int(reverse), a=u, b=b,
                                y=np.ascontiguousarray(y), h0=np.ascontiguousarray(h0), h=g, out=dout, da=da, db=db),
                           batch_sizes, h0.shape[1], u.shape[0], runner)
        return (da, db, g) if kind == "plain" else (da, g)
    if kind == "plain":
        da, db = _numpy_backward(u, y, h0, g, dout, batch_sizes, reverse)
        return da, db, g
    a, _, ht, dv, gs = gates(kind, u, log)
    da, db = _numpy_backward(a, y, h0, g, dout, batch_sizes, reverse)
    # da = dL/da = g h_{t-1}, db = dL/db = g: through the gates (see the module docstring)
    hp_g = da  # g * h_{t-1}
    if kind == "mingru":
        (z,) = gs
        du = np.concatenate([a * z * (db * ht - hp_g), db * z * dv], axis=1)
    else:
        f, i = gs
        s = f + i
        df = i * (hp_g - db * ht) / (s * s)
        di = f * (db * ht - hp_g) / (s * s)
        du = np.concatenate([df * f * (1 - f), di * i * (1 - i), db * i / s * dv], axis=1)
    return du.astype(u.dtype, copy=False), g


def linear_scan(a: Any, b: Any, h0: Any = None, *, out: Any = None, runner: Optional[Runner] = None) -> Array:
    """``h_t = a_t * h_{t-1} + b_t`` for ``a``, ``b`` of shape (L, N, H) (time-major) or
    (L, H); ``h0`` (N, H) or (H,), zeros by default.  Returns every ``h_t``, shaped like
    ``a``.  On the compiled tier the steps split into a chunk per thread; see
    :func:`linear_scan_backward` for the gradients.  ``runner``: the threads' runner
    (default :func:`.runners.default`, nprnn's threads once :mod:`nprnn.threads` is loaded;
    :data:`.runners.SERIAL` runs on the calling thread alone).  ``out``: an array shaped
    like ``a`` (C-contiguous, its dtype) to write into, as NumPy's ``out=`` (a buffer used
    again spares the pages a fresh result costs on first touch)."""
    a, b, h0, squeeze = _check(a, b, h0)
    L, N, H = a.shape
    if out is not None and (not isinstance(out, np.ndarray) or out.dtype != a.dtype or not out.flags.c_contiguous
                            or out.shape != ((L, H) if squeeze else (L, N, H))):
        raise ValueError(f"linear_scan: out must be a C-contiguous {a.dtype} array of shape "
                         f"{(L, H) if squeeze else (L, N, H)}")
    rows, _ = scan_rows("plain", False, a.reshape(L * N, H), b.reshape(L * N, H), h0, [N] * L, False,
                        runner or runners.default(), None if out is None else out.reshape(L * N, H))
    return rows.reshape(L, H) if squeeze else rows.reshape(L, N, H)


def linear_scan_backward(a: Any, h: Any, dout: Any, h0: Any = None, dh_n: Any = None, *,
                         runner: Optional[Runner] = None) -> tuple[Array, Array, Array]:
    """Gradients of :func:`linear_scan` given its output ``h`` and that of ``L``: the reverse
    scan ``g_t = dout_t + a_{t+1} g_{t+1}`` (``g_L = dout_L + dh_n``); returns ``(da, db,
    dh0)`` with ``da_t = g_t h_{t-1}``, ``db_t = g_t``, ``dh0 = a_1 g_1``."""
    a, h, h0, squeeze = _check(a, h, h0)
    dout = np.asarray(dout, a.dtype)
    if dout.shape != (a.shape[:1] + a.shape[2:] if squeeze else a.shape):
        raise ValueError(f"linear_scan_backward: dout must have the shape of h, {h.shape}, got {dout.shape}")
    L, N, H = a.shape
    dh = None if dh_n is None else np.asarray(dh_n, a.dtype).reshape(N, H)
    da, db, dh0 = scan_rows_backward("plain", False, a.reshape(L * N, H), None, h0, h.reshape(L * N, H),
                                     dout.reshape(L * N, H), dh, [N] * L, False, runner or runners.default())
    shape = (L, H) if squeeze else (L, N, H)
    return da.reshape(shape), db.reshape(shape), dh0[0] if squeeze else dh0


def _check(a: Any, b: Any, h0: Any) -> tuple[Array, Array, Array, bool]:
    a = np.ascontiguousarray(a)
    if a.dtype not in (np.float32, np.float64):
        a = a.astype(np.float64)
    b = np.ascontiguousarray(b, dtype=a.dtype)
    if a.ndim not in (2, 3) or b.shape != a.shape:
        raise ValueError(f"linear_scan: a and b must have one shape (L, N, H) or (L, H), got {a.shape} and "
                         f"{np.shape(b)}")
    squeeze = a.ndim == 2
    if squeeze:
        a, b = a[:, None], b[:, None]
    N, H = a.shape[1:]
    if h0 is None:
        h0 = np.zeros((N, H), a.dtype)
    else:
        h0 = np.asarray(h0, a.dtype)
        if h0.shape != ((H,) if squeeze else (N, H)):
            raise ValueError(f"linear_scan: h0 must have shape {(H,) if squeeze else (N, H)}, got {h0.shape}")
        h0 = np.ascontiguousarray(h0.reshape(N, H))
    return np.ascontiguousarray(a), np.ascontiguousarray(b), h0, squeeze


# ------------------------------------------------------------ the kinds and their layer-directions
def _not_a_step(*args: Any) -> None:
    raise TypeError("a linear-scan kind runs whole sequences (linscan.direction_forward), not the matrix loop's steps")


MINGRU = register(CellKind("mingru", 2, (), False, _not_a_step, _not_a_step, _nothing, _nothing, _nothing, _nothing,
                           linear="mingru"))
MINLSTM = register(CellKind("minlstm", 3, (), False, _not_a_step, _not_a_step, _nothing, _nothing, _nothing,
                            _nothing, linear="minlstm"))


@dataclass(frozen=True)
class LinearRecord:
    """What the backward of one linear-scan layer-direction needs from its forward."""

    kind: CellKind
    log: bool
    x: Array  # (T, H_in)
    w_ih: Array
    has_bias: bool
    u: Array  # (T, G*H) the gate pre-activations
    h0: Array
    y: Array  # (T, H) the output
    batch_sizes: Sequence[int]
    reverse: bool


def direction_forward(kind: CellKind, x: Array, params: Params, state0: tuple[Array, ...],
                      batch_sizes: Sequence[int], reverse: bool, out: Array, train: bool, options: Any = None,
                      runner: Runner = SERIAL, pool: Optional[Pool] = None, key: Any = None
                      ) -> tuple[tuple[Array, ...], Optional[LinearRecord]]:
    """One layer-direction of a linear-scan kind (the contract of :func:`.scan.direction_forward`):
    ``u = x @ W_ih.T + b_ih`` for every row in one product, then the scan, fused with the
    gates; ``options["log"]`` picks the log-space form of ``h~``.  ``pool`` and ``key``
    keep ``u`` and the output rows from one call to the next (see :func:`.scan.alloc_blocks`)."""
    from .scan import alloc_blocks  # (scan imports this module)

    w_ih, b_ih = params[0], params[2]
    H = w_ih.shape[0] // kind.num_gates
    u, y = alloc_blocks(((1, w_ih.shape[0]), (1, H)), x.shape[0], x.dtype, pool, (key, "linear"))
    if native.supports_dtype(x.dtype):  # (the compiled product, on the scan's threads)
        native.product(x, w_ih, True, b_ih, runner, u)
    else:
        np.dot(x, w_ih.T, out=u)
        if b_ih is not None:
            u += b_ih
    log = bool((options or {}).get("log", False))
    h0 = np.ascontiguousarray(state0[0])
    y, h_n = scan_rows(kind.linear, log, u, None, h0, batch_sizes, reverse, runner, y)
    out[...] = y
    rec = LinearRecord(kind, log, x, w_ih, b_ih is not None, u, h0, y, batch_sizes, reverse) if train else None
    return (h_n,), rec


def direction_backward(rec: LinearRecord, dout: Array, dstate: tuple[Array, ...], dx: OptArray = None,
                       accumulate: bool = False, runner: Runner = SERIAL, pool: Optional[Pool] = None,
                       key: Any = None, input_grad: bool = True) -> tuple[OptArray, tuple[Array, ...],
                                                                          tuple[OptArray, ...]]:
    """Backward of :func:`direction_forward` (the contract of :func:`.scan.direction_backward`)."""
    from .scan import alloc_blocks

    (du,) = alloc_blocks(((1, rec.u.shape[1]),), rec.u.shape[0], rec.u.dtype, pool, (key, "linear du"))
    du, dh0 = scan_rows_backward(rec.kind.linear, rec.log, rec.u, None, rec.h0, rec.y, dout, dstate[0],
                                 rec.batch_sizes, rec.reverse, runner, du)
    if native.supports_dtype(du.dtype):  # the compiled products, on the scan's threads
        direct = dx is not None and not accumulate and dx.flags.c_contiguous
        dx_rows = native.product(du, rec.w_ih, False, None, runner, dx if direct else None) if input_grad else None
        ones = (np.ones((du.shape[0], 1), du.dtype),) if rec.has_bias else ()
        dW, *sums = native._at(du, rec.x, *ones, runner=runner, pool=pool, key=(key, "linear at"))
        grads = (dW.copy(), None, sums[0][:, 0].copy() if sums else None, None, None)
    else:
        dx_rows = du @ rec.w_ih if input_grad else None
        direct = False
        grads = (du.T @ rec.x, None, du.sum(axis=0) if rec.has_bias else None, None, None)
    if dx_rows is None:
        return None, (dh0,), grads
    return dx_rows if direct else _into(dx, dx_rows, accumulate), (dh0,), grads


def _into(dx: OptArray, rows: Array, accumulate: bool) -> Array:
    """The input gradient ``rows`` as ``direction_backward``'s contract has it: returned,
    added to ``dx`` or written into it."""
    if dx is None:
        return rows
    if accumulate:
        dx += rows
    else:
        dx[...] = rows
    return dx

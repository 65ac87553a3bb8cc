"""The NumPy time loop, written once for every cell kind, direction and batch layout, and
the one entry point of both tiers: :func:`direction_forward` and :func:`direction_backward`
hand a call to the compiled tier (:mod:`.native`) where it can run it, and run it here
otherwise.

Sequences are stored time-major and *packed*: the rows of step ``t`` are
``data[offset[t] : offset[t] + batch_sizes[t]]``, the first ``batch_sizes[t]`` sequences of
a batch sorted by decreasing length.  A padded ``(L, N, F)`` array reshaped to
``(L * N, F)`` is the special case ``batch_sizes = [N] * L``, so padded, packed and
length-masked input all run through the same loop.

A step works on its first ``n`` rows.  It reads the previous ``h`` from the previous
step's output rows (the first ``n`` of them: sequences that ended are at the end) and
writes the new ``h`` into its own output rows; the LSTM cell state is one running
``(N, H)`` array updated in place, whose ended rows are left alone.  Where sequences end,
their last output rows are copied into ``h_n``; in the reverse direction, where the batch
grows as sequences start, the joining rows take their initial state.  Backward walks the
same steps in the opposite order with a running state gradient.

Around the loop (DESIGN contract 2): the input projection of all steps is one GEMM before
it; the weight, bias and input gradients are one GEMM each after it.  A pipelined run (see
:mod:`nprnn.threads`) does the input projection, and in backward the input gradient, one
GEMM per group of steps instead, as the rows arrive.
"""
from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any, Optional, Sequence

import numpy as np

from .._typing import Array, Blocks, OptArray, Params, Pool, Steps
from . import linscan, native
from .cells import CellKind, StepWeights, gate_major, gate_scale, own_names
from .runners import SERIAL, Runner


@dataclass(frozen=True)
class Regularizers:
    """A layer-direction's regularizers inside the loop (issue 27), options of the scan
    that every kind honours on both tiers (none of them is a kind):

    rmask: recurrent dropout (training): (N, H_out), the batch's rows in the sorted order,
        a scaled Bernoulli mask; ``h_{t-1} * rmask`` meets ``W_hh`` (the kinds' kernels
        go through :func:`.cells.hidden_product`), the rest of the step reads ``h_{t-1}``.
    zh, zc: zoneout of ``h`` (H_out) and of the cell state (H; None without one):
        ``h_t = d * h_{t-1} + (1 - d) * h~_t`` after the kind's step made ``h~_t``, and the
        same for ``c``; ``d`` per packed row in training (T, .) (0/1 masks), per batch row
        (N, .) filled with ``p`` in inference (the expectation).

    The equations::

        gates from x_t and (h_{t-1} * m) @ W_hh.T       m: rmask (training), else 1
        h~_t, c~_t = the kind's step                  (an LSTM's h~ = o * tanh(c~))
        h_t = d_h * h_{t-1} + (1 - d_h) * h~_t           d: zoneout (p in inference)
        c_t = d_c * c_{t-1} + (1 - d_c) * c~_t
    """

    rmask: OptArray = None
    zh: OptArray = None
    zc: OptArray = None


def step_slices(batch_sizes: Sequence[int], reverse: bool) -> Steps:
    """(lo, hi, n) for every step in processing order."""
    out: Steps = []
    lo = 0
    for n in batch_sizes:
        out.append((lo, lo + n, n))
        lo += n
    if reverse:
        out.reverse()
    return out


def prepare_weights(kind: CellKind, w_ih: Array, w_hh: Array, b_ih: OptArray, b_hh: OptArray, w_hr: OptArray,
                    options: Any = None, own: Sequence[Array] = ()) -> tuple[Array, OptArray, StepWeights]:
    """Arrange one layer-direction's parameters for the loop (``options``: what a
    registered kind's kernels read from ``StepWeights.extra``; ``own``: the kind's own
    parameters, put there under their names, ``kind.params``).

    Returns ``(w_ih_s, b_gx, step_weights)``: the input weights and the bias for the
    projection of all steps (rows scaled by :func:`.cells.gate_scale`), and the weights
    the per-step kernels use.
    """
    G = kind.num_gates
    H = w_hh.shape[0] // G
    scale = gate_scale(kind, H, w_hh.dtype)
    if b_ih is None or b_hh is None:  # (they come together)
        b_gx, b_hn = None, None
    elif kind.separate_dgh:  # GRU: the candidate's hidden bias stays inside r * (...)
        b_gx = b_ih.copy()
        b_gx[: 2 * H] += b_hh[: 2 * H]
        b_hn = b_hh[2 * H :]
    else:
        b_gx, b_hn = b_ih + b_hh, None
    if scale is None:
        w_ih_s, hhT = w_ih, w_hh.T.copy()
    else:
        w_ih_s = w_ih * scale[:, None]
        hhT = (w_hh * scale[:, None]).T.copy()  # (H_out, G*H)
        b_gx = None if b_gx is None else b_gx * scale
    dt = w_hh.dtype.type
    step = StepWeights(
        hhT=hhT,
        hh=np.ascontiguousarray(w_hh),
        b_hn=b_hn,
        hrT=None if w_hr is None else w_hr.T.copy(),
        hr=None if w_hr is None else np.ascontiguousarray(w_hr),
        one=dt(1),
        two=dt(2),
        extra=dict(options or {}, **dict(zip(own_names(kind), own))),
    )
    if kind.prepare is not None:
        kind.prepare(step, w_hh)
    return w_ih_s, b_gx, step


def alloc_blocks(blocks: Blocks, rows: int, dtype: Any, pool: Optional[Pool] = None, key: Any = None
                 ) -> tuple[Array, ...]:
    """Arrays for ``rows`` rows of each block ``(k, width)`` (see :class:`.cells.CellKind`).

    With a ``pool`` (a dict owned by the caller), arrays of the same shapes are reused from
    one call to the next under ``key`` instead of being allocated again: fresh memory is
    paid for in page faults on its first use, which costs as much as the arithmetic here.
    """
    shapes = [(rows, w) if k == 1 else (rows * k * w,) if k > 1 else (rows, -k * w) for k, w in blocks]
    if pool is not None:
        held = pool.get(key)
        if held is not None and [a.shape for a in held] == shapes and all(a.dtype == dtype for a in held):
            return held  # type: ignore[no-any-return]
    arrays = tuple(np.empty(shape, dtype) for shape in shapes)
    if pool is not None:
        pool[key] = arrays
    return arrays


def _block_view(a: Array, k: int, w: int, lo: int, hi: int) -> Any:
    if k == 1:
        return a[lo:hi]
    if k > 1:
        return a[k * w * lo : k * w * hi].reshape(k, hi - lo, w)
    rows = a[lo:hi]
    return rows, gate_major(rows, -k)


def block_views(arrays: Sequence[Array], blocks: Blocks, lo: int, hi: int) -> tuple[Any, ...]:
    """Rows ``lo:hi`` of each array: ``(n, width)`` for a block ``(1, width)``, gate-major
    ``(k, n, width)`` for ``(k, width)``, and for ``(-k, width)`` the rows ``(n, k*width)``
    together with their gate-major view ``(k, n, width)`` (a matrix product's output)."""
    return tuple(_block_view(a, k, w, lo, hi) for a, (k, w) in zip(arrays, blocks))


def scan_forward(kind: CellKind, gx: Array, out: Array, state: tuple[Array, ...], w: StepWeights, steps: Steps,
                 tape: tuple[Array, ...], tape_blocks: Blocks, work: tuple[Array, ...], work_blocks: Blocks,
                 train: bool, chunks: Any = None, cs: OptArray = None, reg: Optional[Regularizers] = None) -> None:
    """Run the loop.  ``gx`` (T, G*H); ``out`` (T, H_out), may be a strided view, receives
    every step's new ``h``; ``state`` running (N, .) arrays: ``h_0`` on entry and ``h_n``
    on return, the LSTM cell state updated in place; ``tape`` per-step records (T rows,
    h_prev first) when training, else per-row workspace (N rows) like ``work``.
    ``chunks`` (a pipelined run: ``begin(k)`` and ``end(k)`` around step ``k``) fills
    ``gx`` a group of steps at a time and hands the finished output on.  ``cs`` (T, H)
    receives every step's cell state (``return_states``).  ``reg``: zoneout (its masks;
    recurrent dropout is in ``w``), see :class:`Regularizers`.

    The previous step's ``h`` is read straight from its output rows, so no step copies
    its state; only where sequences end are their final rows copied into ``h_n``, and
    where the batch grows (the reverse direction of a packed batch) the joining rows'
    ``h_0`` is gathered beside the previous rows.
    """
    forward = kind.forward
    h_run = state[0]
    c_run = state[1] if kind.has_cell else None
    joined = np.empty_like(h_run)  # previous rows + joining h_0 rows, where the batch grows
    per_n: dict[int, Any] = {}  # views that depend only on the active batch size, made once per size
    prev = None  # (rows of the previous step's output, its batch size)
    zh: Any = None if reg is None else reg.zh
    zc: Any = None if reg is None or c_run is None else reg.zc
    if zh is not None:  # zoneout's workspace: 1 - d and d * previous for h (and c), the cell state before the step
        zt, zp = np.empty_like(h_run), np.empty_like(h_run)
        if zc is not None:
            zct, zcp, c_old = (np.empty_like(state[1]) for _ in range(3))
    # exp overflowing to inf is how a gate saturates to 0; NaN passes
    with np.errstate(over="ignore", invalid="ignore"):
        for k, (lo, hi, n) in enumerate(steps):
            if chunks is not None:
                chunks.begin(k)
            cached = per_n.get(n)
            if cached is None:
                wk = block_views(work, work_blocks, 0, n)
                tp = None if train else block_views(tape, tape_blocks, 0, n)
                cached = per_n[n] = (None if c_run is None else c_run[:n], wk, tp)
            c: Any
            c, wk, tp = cached
            if prev is None:
                h_prev = h_run[:n]
            elif n <= prev[1]:
                h_prev = prev[0][:n]
            else:
                np.copyto(joined[: prev[1]], prev[0])
                np.copyto(joined[prev[1] : n], h_run[prev[1] : n])
                h_prev = joined[:n]
            h_out = out[lo:hi]
            if zc is not None:
                np.copyto(c_old[:n], c)
            if train:
                tp = block_views(tape, tape_blocks, lo, hi)
                np.copyto(tp[0], h_prev)
                forward(gx[lo:hi], h_prev, c, w, tp[1:], wk, True, h_out)
            else:
                forward(gx[lo:hi], h_prev, c, w, tp, wk, False, h_out)
            if zh is not None:  # zoneout: h = d h_prev + (1 - d) h~, c likewise
                _zone(zh[lo:hi] if train else zh[:n], h_prev, h_out, zt[:n], zp[:n], w.one)
                if zc is not None:
                    _zone(zc[lo:hi] if train else zc[:n], c_old[:n], c, zct[:n], zcp[:n], w.one)
            if cs is not None and c is not None:
                np.copyto(cs[lo:hi], c)
            n_next = steps[k + 1][2] if k + 1 < len(steps) else 0
            if n_next < n:  # sequences n_next..n-1 end here: their final state
                np.copyto(h_run[n_next:n], h_out[n_next:])
            prev = (h_out, n)
            if chunks is not None:
                chunks.end(k)


def scan_backward(kind: CellKind, dout: Array, dstate: tuple[Array, ...], w: StepWeights, steps: Steps,
                  tape: tuple[Array, ...], tape_blocks: Blocks, grads: tuple[Array, ...], grad_blocks: Blocks,
                  scratch: tuple[Array, ...], scratch_blocks: Blocks, chunks: Any = None, dcs: OptArray = None,
                  reg: Optional[Regularizers] = None) -> None:
    """Walk the steps backwards.  ``dout`` (T, H_out) the gradient of the outputs;
    ``dstate`` running state gradients, overwritten (they end as the gradient of the
    initial state); ``grads`` per-step gradient records (T rows), filled; ``chunks`` (a
    pipelined run) waits for ``dout`` and hands the input gradient on, a group at a time;
    ``dcs`` (T, H), if given, the gradient of every step's cell state, added as ``dout`` is.
    ``reg``: zoneout's masks; with recurrent dropout (``w.rmask``) each step's ``h_prev``
    on the tape becomes ``h_prev * mask``, the rows that met ``W_hh``, once the step is done."""
    backward = kind.backward
    per_n: dict[int, Any] = {}
    zh = None if reg is None else reg.zh
    zc = None if reg is None or len(dstate) < 2 else reg.zc
    if zh is not None:  # the gradients that skip the step (d * dh), and 1 - d
        keep = [np.empty_like(d) for d in dstate]
        zt = [np.empty_like(d) for d in dstate]
    for k, (lo, hi, n) in enumerate(reversed(steps)):
        if chunks is not None:
            chunks.begin(k)
        cached = per_n.get(n)
        if cached is None:
            cached = per_n[n] = (tuple(d[:n] for d in dstate), block_views(scratch, scratch_blocks, 0, n))
        ds, sc = cached
        np.add(ds[0], dout[lo:hi], out=ds[0])
        if dcs is not None:
            np.add(ds[1], dcs[lo:hi], out=ds[1])
        zoned = [] if zh is None else [(0, zh[lo:hi])] + ([] if zc is None else [(1, zc[lo:hi])])
        for j, d in zoned:  # zoneout: d * dh goes straight to h_prev, (1 - d) * dh through the step
            np.multiply(ds[j], d, out=keep[j][:n])
            np.subtract(w.one, d, out=zt[j][:n])
            np.multiply(ds[j], zt[j][:n], out=ds[j])
        tp = block_views(tape, tape_blocks, lo, hi)
        backward(ds, w, tp, block_views(grads, grad_blocks, lo, hi), sc)
        for j, _ in zoned:
            np.add(ds[j], keep[j][:n], out=ds[j])
        if w.rmask is not None:  # the tape's h_prev becomes the rows that met W_hh (for its gradient)
            np.multiply(tp[0], w.rmask[:n], out=tp[0])
        if chunks is not None:
            chunks.end(k)


def _zone(d: Array, prev: Array, now: Array, t: Array, u: Array, one: Any) -> None:
    """In place: ``now = d * prev + (1 - d) * now`` (``t``, ``u``: workspace)."""
    np.subtract(one, d, out=t)
    now *= t
    np.multiply(d, prev, out=u)
    now += u


@dataclass(frozen=True)
class DirectionRecord:
    """What the backward pass of one layer-direction needs from its forward."""

    kind: CellKind
    x: Array  # (T, H_in) the layer input
    w_ih: Array
    step: StepWeights
    steps: Steps
    tape: tuple[Array, ...]
    tape_blocks: Blocks
    proj: bool
    has_bias: bool
    records: tuple[Array, ...] = ()  # the kind's records of its input projection's transform (kind.project)
    reg: Optional[Regularizers] = None

    def padded_tape(self, L: int) -> tuple[Array, Array, OptArray]:
        """For a padded run of ``L`` steps: the states before each step (T, H_out), the
        gate activations (T, G, H) and, for LSTM, the cell states before each step (T, H)."""
        G = self.kind.num_gates
        N = self.x.shape[0] // L
        if self.tape_blocks[1][0] == 1:  # gates kept as rows (n, G*H) (the layer-norm kinds)
            return self.tape[0], self.tape[1].reshape(L * N, G, -1), self.tape[2] if self.kind.has_cell else None
        gates = self.tape[1].reshape(L, G, N, -1).transpose(0, 2, 1, 3).reshape(L * N, G, -1)
        return self.tape[0], gates, self.tape[2] if self.kind.has_cell else None


def direction_forward(kind: CellKind, x: Array, params: Params, state0: tuple[Array, ...],
                      batch_sizes: Sequence[int], reverse: bool, out: Array, train: bool, options: Any = None,
                      pool: Optional[Pool] = None, key: Any = None, stage: Any = None,
                      cache: Optional[dict[Any, Any]] = None, runner: Runner = SERIAL, cs: OptArray = None,
                      reg: Optional[Regularizers] = None) -> tuple[tuple[Array, ...], Any]:
    """One layer in one direction over packed ``x`` (T, H_in).

    ``params`` = (w_ih, w_hh, b_ih, b_hh, w_hr) with None for absent ones; ``state0`` a
    tuple of (N, .) initial states; ``out`` (T, H_out) receives the outputs; ``pool`` and
    ``key`` let the caller's buffers be reused (see :func:`alloc_blocks`).
    ``stage`` runs the scan as one stage of a layer pipeline (forward in time only): its
    ``forward_hooks(steps, project, gate_width)`` gives the ``begin(k)``/``end(k)`` calls
    around each step, which project the input a group of steps at a time as it arrives
    and hand the output on (see ``nprnn.threads.PipelineStage``).
    Returns ``(final_state, record)``; record is None unless ``train``.

    Runs on the compiled tier (:mod:`.native`) where it can: not for a pipelined stage,
    nor for the ONNX-only variants.  ``cache`` (a dict the caller owns) keeps that tier's
    prepared weights under ``key`` from one call to the next, and ``runner``
    (:mod:`.runners`) may split its batch.  ``cs`` (T, H), for a kind with a cell state,
    receives every step's (``return_states``).  ``reg``: the regularizers in the loop
    (:class:`Regularizers`; recurrent dropout only when ``train``).
    """
    if kind.linear:  # the diagonal linear scan (minGRU, minLSTM), its own loop
        return linscan.direction_forward(kind, x, params, state0, batch_sizes, reverse, out, train, options, runner,
                                         pool, key)
    if stage is None and native.supports(kind, x.dtype):
        return native.direction_forward(x, kind, params, state0, batch_sizes, reverse, out, train, pool, key, runner,
                                        cache, cs, reg)
    w_ih, w_hh, b_ih, b_hh, w_hr = params[:5]
    w_ih_s, b_gx, step = _prepared(cache, key, kind, params, options)
    if reg is not None and reg.rmask is not None and train:  # (a copy: the cached weights stay as they are)
        step = replace(step, rmask=reg.rmask, rbuf=np.empty_like(reg.rmask))
    (gx,) = alloc_blocks(((1, w_ih_s.shape[0]),), x.shape[0], x.dtype, pool, (key, "gx"))
    H = w_hh.shape[0] // kind.num_gates
    P = w_hh.shape[1]
    proj = w_hr is not None
    record_blocks = kind.project_blocks(H, P, proj)
    records = alloc_blocks(record_blocks, x.shape[0], x.dtype, pool, (key, "records"))

    def project(lo: int, hi: int) -> None:  # gx = x @ W_ih.T + b for rows lo:hi, (rows, G*H)
        with np.errstate(over="ignore", invalid="ignore"):  # NaN and inf pass, as in PyTorch
            np.dot(x[lo:hi], w_ih_s.T, out=gx[lo:hi])
            if b_gx is not None:
                gx[lo:hi] += b_gx
            if kind.project is not None:  # a kind's row-wise transform (a layer norm)
                kind.project(gx[lo:hi], step, block_views(records, record_blocks, lo, hi))

    state = tuple(np.array(s, order="C", copy=True) for s in state0)
    steps = step_slices(batch_sizes, reverse)
    N = state[0].shape[0]
    work_blocks = kind.work_blocks(H, P, proj)
    work = alloc_blocks(work_blocks, N, x.dtype, pool, (key, "work"))
    if train:
        tape_blocks = ((1, P),) + kind.tape_blocks(H, P, proj)  # h_prev first
        tape = alloc_blocks(tape_blocks, x.shape[0], x.dtype, pool, (key, "tape"))
    else:
        tape_blocks = kind.tape_blocks(H, P, proj)
        tape = alloc_blocks(tape_blocks, N, x.dtype, pool, (key, "rows"))
    if stage is None:
        project(0, x.shape[0])
        chunks = None
    elif reverse:
        raise ValueError("a pipelined scan runs forward in time")
    else:
        chunks = stage.forward_hooks(steps, project, gx.shape[1])
    scan_forward(kind, gx, out, state, step, steps, tape, tape_blocks, work, work_blocks, train, chunks, cs, reg)
    record = (DirectionRecord(kind, x, w_ih, step, steps, tape, tape_blocks, proj, b_ih is not None, records, reg)
              if train else None)
    return state, record


def _prepared(cache: Optional[dict[Any, Any]], key: Any, kind: CellKind, params: Params, options: Any
              ) -> tuple[Array, OptArray, StepWeights]:
    """:func:`prepare_weights` kept in ``cache`` until a parameter changes (as the compiled
    tier keeps its own): a cell's training records then share the prepared weights instead
    of each holding a copy of W_hh."""
    if cache is None or options:  # (the ONNX variants' options hold their own arrays)
        return prepare_weights(kind, *params[:5], options, params[5:])
    epoch, hit = native.parameter_epoch(), cache.get((key, "numpy"))
    if hit is None or hit[0] != epoch:
        hit = cache[(key, "numpy")] = (epoch, prepare_weights(kind, *params[:5], options, params[5:]))
    return hit[1]


def direction_backward(rec: Any, dout: Array, dstate: tuple[Array, ...], pool: Optional[Pool] = None, key: Any = None,
                       dx: OptArray = None, accumulate: bool = False, stage: Any = None, runner: Runner = SERIAL,
                       dcs: OptArray = None, input_grad: bool = True
                       ) -> tuple[OptArray, tuple[Array, ...], tuple[OptArray, ...]]:
    """Backward of :func:`direction_forward`.

    ``dout`` (T, H_out) output gradient, ``dstate`` tuple of (N, .) final-state gradients
    (overwritten with the initial-state gradients, which are also returned).
    Returns ``(dx, dstate0, param_grads)``: the input gradient (T, H_in) — written into
    ``dx`` if given, or added to it with ``accumulate`` — the initial-state gradients, and
    (dW_ih, dW_hh, db_ih, db_hh, dW_hr) with None for absent ones.
    ``stage`` (a forward-in-time scan, ``dx`` given): its ``backward_hooks(steps, total,
    input_grad, gate_width)`` wait for ``dout``'s rows as they arrive from the end, and
    compute ``dx``'s rows a group of steps at a time and hand them on.  ``dcs`` (T, H): the
    gradient of every step's cell state (``return_states``), or None.  ``input_grad=False``:
    no input gradient (None; its product skipped, ``dx`` ignored).
    """
    if isinstance(rec, linscan.LinearRecord):
        return linscan.direction_backward(rec, dout, dstate, dx, accumulate, runner, pool, key, input_grad)
    if isinstance(rec, native.NativeRecord):
        if stage is not None:
            raise ValueError("a compiled layer-direction runs its backward in one call, not as a pipeline stage")
        return native.direction_backward(rec, dout, dstate, pool, key, dx, accumulate, runner, dcs, input_grad)
    kind = rec.kind
    T = rec.x.shape[0]
    dtype = rec.x.dtype
    H = rec.step.hh.shape[0] // kind.num_gates
    P = rec.step.hh.shape[1]
    N = dstate[0].shape[0]
    grad_blocks = kind.grad_blocks(H, P, rec.proj)
    scratch_blocks = kind.scratch_blocks(H, P, rec.proj)
    grads = alloc_blocks(grad_blocks, T, dtype, pool, (key, "grads"))
    scratch = alloc_blocks(scratch_blocks, N, dtype, pool, (key, "scratch"))
    dgx = grads[0]  # (T, G*H) gradient of the pre-activations, input side
    dgh = grads[1] if kind.separate_dgh else dgx  # hidden side
    du = dgx  # the gradient of x @ W_ih.T: dgx, or through the kind's transform of it
    if kind.project_backward is not None:
        (du,) = alloc_blocks(((1, dgx.shape[1]),), T, dtype, pool, (key, "du"))
        record_blocks = kind.project_blocks(H, P, rec.proj)

    def through_projection(lo: int, hi: int) -> None:  # du from dgx for rows lo:hi
        if kind.project_backward is not None:
            kind.project_backward(dgx[lo:hi], rec.step, block_views(rec.records, record_blocks, lo, hi), du[lo:hi])

    chunks = None
    if stage is not None:
        if rec.steps[0][0] != 0 or dx is None or accumulate:
            raise ValueError("a pipelined backward runs a forward-in-time scan into a given dx")

        target = dx

        def dx_rows(lo: int, hi: int) -> None:  # dx = dgx @ W_ih for rows lo:hi
            through_projection(lo, hi)
            np.dot(du[lo:hi], rec.w_ih, out=target[lo:hi])

        chunks = stage.backward_hooks(rec.steps, T, dx_rows, dgx.shape[1])
    with np.errstate(over="ignore", invalid="ignore"):  # NaN and inf pass, as in PyTorch
        scan_backward(kind, dout, dstate, rec.step, rec.steps, rec.tape, rec.tape_blocks, grads, grad_blocks,
                      scratch, scratch_blocks, chunks, dcs, rec.reg)
        if chunks is None:  # (a pipelined run went through the projection a group at a time)
            through_projection(0, T)
        if not input_grad:
            dx = None
        elif dx is None:
            dx = du @ rec.w_ih  # (T, H_in)
        elif accumulate:
            dx += du @ rec.w_ih
        elif chunks is None:  # (a pipelined run wrote dx a group at a time)
            np.dot(du, rec.w_ih, out=dx)
        if kind.param_grads is not None:  # a kind's own record layout and parameters
            return dx, dstate, kind.param_grads(rec.step, rec, grads, du)
        pgrads = weight_grads(rec.x, dgx, dgh, rec.tape[0], rec.has_bias, grads[1] if rec.proj else None,
                              rec.tape[4] if rec.proj else None)
    return dx, dstate, pgrads


def weight_grads(x: Array, dgx: Array, dgh: Array, h_prev: Array, has_bias: bool, dproj: OptArray = None,
                 m: OptArray = None) -> tuple[OptArray, ...]:
    """The parameter gradients of one layer-direction, a GEMM each, from the per-step
    gradients of the pre-activations on the input side ``dgx`` and the hidden side
    ``dgh`` (T, G*H), the inputs ``x`` (T, H_in), the previous states ``h_prev``
    (T, H_out) and, with a projection, the state gradients ``dproj`` (T, H_out) and
    ``m = o * tanh(c)`` (T, H).  Returns (dW_ih, dW_hh, db_ih, db_hh, dW_hr), None where absent."""
    dW_ih = dgx.T @ x
    dW_hh = dgh.T @ h_prev
    db_ih = dgx.sum(axis=0) if has_bias else None
    db_hh = dgh.sum(axis=0) if has_bias else None
    dW_hr = dproj.T @ m if dproj is not None else None  # dh.T @ (o * tanh(c))
    return dW_ih, dW_hh, db_ih, db_hh, dW_hr

"""The layer x direction stack: every scan of a multi-layer, possibly bidirectional layer,
forward and backward, as plain functions.

Layer ``l`` reads the ``(T, D*H_out)`` output of layer ``l - 1`` (dropout between layers in
training), and each of its directions writes its own columns of its output.  Backward
walks the layers from the top, each direction adding its input gradient into the layer's.

Which scans may run at once is the ``runner``'s choice (:mod:`.runners`): :data:`SERIAL`
runs one after the other; ``nprnn.threads.THREADED`` may run a layer's two directions side
by side, or pipeline a stack of one-directional layers.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Optional, Sequence

import numpy as np

from .._typing import Array, OptArray, Params, Pool
from . import native
from .cells import CellKind
from .runners import SERIAL, Runner
from .scan import Regularizers, alloc_blocks, direction_backward, direction_forward


@dataclass(frozen=True)
class StackRecord:
    """What a training-mode :func:`stack_forward` leaves for :func:`stack_backward`.

    records: each layer-direction's record (from direction_forward), layer-major
    masks: per layer, the dropout mask applied to its output (None: none)
    schedule: how the scans ran ("directions", "layers" or None), so backward runs alike
    """

    records: list[Any]
    masks: list[OptArray]
    schedule: Optional[str]
    num_layers: int
    num_directions: int
    out_width: int  # H_out of one direction
    native: bool


def _put(alls: Sequence[Array], idx: int, parts: Sequence[Array]) -> None:
    """Row ``idx`` of each (D*layers, N, .) array in ``alls`` gets the matching array of ``parts``."""
    for a, part in zip(alls, parts):
        a[idx] = part


def stack_forward(kind: CellKind, x: Array, params: Sequence[Params], states: Sequence[Array],
                  batch_sizes: Sequence[int], *, num_layers: int, num_directions: int, train: bool,
                  reverse_only: bool = False, dropout: float = 0.0, rng: Optional[np.random.Generator] = None,
                  options: Optional[Sequence[Any]] = None, pool: Optional[Pool] = None,
                  cache: Optional[dict[Any, Any]] = None, runner: Runner = SERIAL,
                  every_step: Optional[list[tuple[Array, OptArray]]] = None,
                  regs: Optional[Sequence[Optional[Regularizers]]] = None
                  ) -> tuple[Array, list[Array], Optional[StackRecord]]:
    """All layers and directions over packed time-major ``x`` (T, H_in).

    ``params[idx]`` and ``states[k][idx]`` belong to layer-direction ``idx = layer * D + d``
    (``states``: h, and for LSTM c, each (D*layers, N, .)).  ``reverse_only`` runs the one
    direction backwards in time (ONNX's ``direction="reverse"``).  ``options[idx]`` are a
    kind's extra settings (:class:`.cells.StepWeights`).  Returns ``(output (T, D*H_out),
    final states like states, record)``, the record None unless ``train``.  ``every_step``
    (a list, ``return_states``) receives each layer-direction's ``(h, c)`` at every step,
    packed rows (T, H_out) and (T, H) (None without a cell state), ``h`` before dropout;
    the scans then run layer after layer (no pipeline, no wavefront).  ``regs[idx]``: the
    regularizers inside layer-direction ``idx``'s loop (:class:`.scan.Regularizers`), or None.
    """
    D, L = num_directions, num_layers
    H = params[0][0].shape[0] // kind.num_gates
    P = H if params[0][4] is None else params[0][4].shape[0]  # (W_hr: (H_out, H))
    dtype = x.dtype
    compiled = native.supports(kind, dtype)
    finals = [np.empty(s.shape, dtype) for s in states]
    schedule = runner.schedule(compiled=compiled, layers=L, directions=D, rows=x.shape[0], steps=len(batch_sizes),
                               gate_width=kind.num_gates * H, row_width=P + H, train=train,
                               pipelinable=not reverse_only and not (train and dropout > 0) and every_step is None
                               and not kind.linear,
                               first_width=x.shape[1] + P)
    records: list[Any] = [None] * (L * D)
    every = every_step is not None
    cs = [np.empty((x.shape[0], H), dtype) if every and kind.has_cell else None for _ in range(L * D)]
    hs: list[Array] = []
    outs = [np.empty((x.shape[0], D * P), dtype) if layer == L - 1  # returned to the caller
            else alloc_blocks(((1, D * P),), x.shape[0], dtype, pool, (layer, "out"))[0]
            for layer in range(L)]  # (T, D*H_out) each

    def run(layer: int, d: int, stage: Any = None) -> None:
        idx = layer * D + d
        final, records[idx] = direction_forward(
            kind, x if layer == 0 else outs[layer - 1], params[idx], tuple(s[idx] for s in states), batch_sizes,
            d == 1 or reverse_only, outs[layer][:, d * P : (d + 1) * P], train, None if options is None
            else options[idx], pool, idx, stage, cache, runner, cs[idx], None if regs is None else regs[idx])
        _put(finals, idx, final)

    masks: list[OptArray] = [None] * L
    if schedule == "wavefront":  # compiled: every layer's loop at once, each a step behind the one below
        done = native.wavefront_forward(kind, x, params, [tuple(s[layer] for s in states) for layer in range(L)],
                                        batch_sizes, outs, train, pool, cache, runner.team(L), regs)
        for layer, (final, records[layer]) in enumerate(done):
            _put(finals, layer, final)
    elif schedule == "layers":  # layer l + 1 reads layer l's output rows as they come (no dropout)
        runner.pipeline(L, lambda layer, stage: run(layer, 0, stage))
    else:
        for layer in range(L):
            if schedule == "directions":
                runner.side_by_side(lambda: run(layer, 1), lambda: run(layer, 0), blas=not compiled)
            else:
                for d in range(D):
                    run(layer, d)
            if every:  # each direction's states, before dropout
                hs.extend(outs[layer][:, d * P : (d + 1) * P].copy() for d in range(D))
            if train and dropout > 0 and layer < L - 1:
                masks[layer] = _dropout_mask(outs[layer].shape, dropout, rng, dtype)
                outs[layer] *= masks[layer]
    record = StackRecord(records, masks, schedule, L, D, P, compiled) if train else None
    if every_step is not None:
        every_step.extend(zip(hs, cs))
    return outs[-1], finals, record


def bernoulli(shape: tuple[int, ...], p: float, rng: Optional[np.random.Generator], dtype: Any) -> Array:
    """0/1 values (``dtype``), each 1 with probability ``p`` (rounded to a multiple of 2**-32),
    from one 64-bit draw of ``rng``: value ``i`` is 1 where the ``i``-th 32-bit word of
    SplitMix64 (Steele, Lea and Flood 2014) started from that draw, each 64-bit output's
    low half first, is below ``round(p * 2**32)``.  A counter-based generator: the compiled
    tier makes the words in vector lanes (a tenth of the generator's own stream's cost,
    which for per-step masks rivalled the loop's arithmetic); :func:`splitmix_words` here
    is the definition, and the NumPy tier's path."""
    key = int((rng if rng is not None else np.random.default_rng()).bit_generator.random_raw())
    out = np.empty(shape, dtype)
    t = min(round(max(p, 0.0) * 2.0**32), 2**32)
    if not native.bernoulli(out, key, t):
        out[...] = (splitmix_words(out.size, key) < t).reshape(shape)
    return out


def splitmix_words(n: int, key: int) -> Array:
    """The first ``n`` 32-bit words (as uint64) of SplitMix64 from state ``key``: output ``j``
    is Mix13(key + (j + 1) * 0x9E3779B97F4A7C15) mod 2**64, its low half then its high."""
    z = np.arange(1, (n + 1) // 2 + 1, dtype=np.uint64)  # (array arithmetic wraps mod 2**64)
    z *= np.uint64(0x9E3779B97F4A7C15)
    z += np.uint64(key)
    for shift, mul in ((30, 0xBF58476D1CE4E5B9), (27, 0x94D049BB133111EB)):
        z ^= z >> np.uint64(shift)
        z *= np.uint64(mul)
    z ^= z >> np.uint64(31)
    words = np.empty(2 * z.size, np.uint64)
    words[0::2], words[1::2] = z & np.uint64(0xFFFFFFFF), z >> np.uint64(32)
    return words[:n]


def _dropout_mask(shape: tuple[int, ...], p: float, rng: Optional[np.random.Generator], dtype: np.dtype[Any]) -> Array:
    """A Bernoulli(1 - p) mask scaled by 1 / (1 - p) (zeros for p = 1)."""
    if p >= 1:
        return np.zeros(shape, dtype)
    mask: Array = bernoulli(shape, 1 - p, rng, dtype)
    mask *= dtype.type(1.0 / (1.0 - p))
    return mask


def stack_backward(rec: StackRecord, dout: Array, grad_finals: Sequence[Array], pool: Optional[Pool] = None,
                   runner: Runner = SERIAL, grad_every: Optional[Sequence[tuple[OptArray, OptArray]]] = None,
                   input_grad: bool = True) -> tuple[OptArray, list[Array], list[Any]]:
    """Backward of :func:`stack_forward`: ``dout`` (T, D*H_out) the output gradient,
    ``grad_finals`` the final states' gradients (like the states), ``grad_every`` those of
    ``every_step``'s states, per layer-direction ``(dh, dc)`` (None: zeros; the forward
    took ``every_step``).  Returns ``(dx (T, H_in), initial-state gradients like the states,
    parameter gradients per layer-direction)``, the latter each (dW_ih, dW_hh, db_ih,
    db_hh, dW_hr) with None where absent.  ``input_grad=False``: no ``dx`` (None; the first
    layer's input-gradient products are skipped, but in a pipeline of layers)."""
    D, L, P = rec.num_directions, rec.num_layers, rec.out_width
    dtype = dout.dtype
    grad_states = [np.empty(g.shape, dtype) for g in grad_finals]
    pgrads: list[Any] = [None] * (L * D)
    wanted = input_grad or rec.schedule == "layers"  # (a pipeline's first layer hands its dx on)
    dxs: list[Any] = []  # the input gradient of each layer: the next layer down's output gradient
    for layer in range(L):
        x_rows, in_size = rec.records[layer * D].x.shape
        dxs.append((np.empty((x_rows, in_size), dtype) if wanted else None) if layer == 0  # returned to the caller
                   else alloc_blocks(((1, in_size),), x_rows, dtype, pool, (layer, "dx"))[0])

    def run(layer: int, d: int, dx: OptArray, accumulate: bool = False, stage: Any = None) -> None:
        idx = layer * D + d
        above = dout if layer == L - 1 else dxs[layer + 1]
        dstate = tuple(np.array(g[idx], order="C", copy=True) for g in grad_finals)
        _, dstate0, pgrads[idx] = direction_backward(rec.records[idx], above[:, d * P : (d + 1) * P], dstate, pool,
                                                     idx, dx, accumulate, stage, runner,
                                                     None if grad_every is None else grad_every[idx][1],
                                                     input_grad=dx is not None)
        _put(grad_states, idx, dstate0)

    def add_every(layer: int, target: Array) -> None:  # the gradients of a layer's states at every step
        for d in range(D):
            dh = None if grad_every is None else grad_every[layer * D + d][0]
            if dh is not None:
                target[:, d * P : (d + 1) * P] += dh

    if grad_every is not None and rec.schedule in ("wavefront", "layers"):
        raise ValueError("stack_backward: grad_every needs a forward that kept every_step (layer after layer)")
    if rec.schedule == "wavefront":  # top layer first, each a step behind the one above
        top_down = list(reversed(range(L)))
        done = native.wavefront_backward(
            [rec.records[layer] for layer in top_down],
            [dout if layer == L - 1 else dxs[layer + 1] for layer in top_down],
            [tuple(np.array(g[layer], order="C", copy=True) for g in grad_finals) for layer in top_down],
            [dxs[layer] for layer in top_down], pool, runner, runner.team(L))
        for layer, (_, dstate0, pgrads[layer]) in zip(top_down, done):
            _put(grad_states, layer, dstate0)
        return dxs[0], grad_states, pgrads
    if rec.schedule == "layers":  # top layer first, each reading its output gradient as it comes
        runner.pipeline(L, lambda i, stage: run(L - 1 - i, 0, dxs[L - 1 - i], stage=stage))
        return dxs[0] if input_grad else None, grad_states, pgrads
    if grad_every is not None and any(dh is not None for dh, _ in grad_every[(L - 1) * D :]):
        dout = dout.copy()  # (the caller's)
        add_every(L - 1, dout)
    for layer in reversed(range(L)):
        dx = dxs[layer]
        if layer < L - 1:
            add_every(layer, dxs[layer + 1])  # (complete, and through the dropout above it)
        if rec.schedule == "directions":
            dx_rev = None if dx is None else alloc_blocks(((1, dx.shape[1]),), dx.shape[0], dtype, pool,
                                                           (layer, "dx reverse"))[0]
            runner.side_by_side(lambda: run(layer, 1, dx_rev), lambda: run(layer, 0, dx), blas=not rec.native)
            if dx is not None:
                dx += dx_rev
        else:
            for d in range(D):
                run(layer, d, dx, accumulate=d > 0)
        if layer > 0 and rec.masks[layer - 1] is not None:
            dx *= rec.masks[layer - 1]  # through dropout
    return dxs[0], grad_states, pgrads

"""The compiled tier of quantized weights (issue 25): one ``_native.scan`` call runs a
layer-direction's whole loop with int8 or bfloat16 weights, the arithmetic of
:mod:`nprnn.functional.quant` (its oracle) compiled in ``_native_quant.h``.

The loop is the float loop of :mod:`.native` with ``wq`` set (struct scan): the input
rows are quantized and projected before the loop (one product over every packed row), the
state is quantized at every step by each thread for its own part of the hidden units, and
the gates are the float kernels'.  The weights are packed once (:class:`QPrepared`) into
panels of 16 columns, k in groups of 4 (int8, what ``vpdpbusd`` takes) or pairs (bf16,
``vdpbf16ps``), split into the same parts as float weights.  Inference only.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Optional, Sequence

import numpy as np

from .._typing import Array, OptArray
from ..config import settings
from . import native
from .cells import KINDS

WQ = {"int8": 1, "bf16": 2}
QNR = 16  # columns per panel (QNR in _native_quant.h)


def compiled() -> Any:
    """The compiled module (``_native``); call only where :func:`available`."""
    return native.compiled


def available() -> bool:
    """Whether quantized loops run compiled (else on :mod:`.quant`'s NumPy oracle)."""
    return native.backend() == "native"


def path(storage: str) -> Optional[str]:
    """The compiled product path in use for ``storage`` ("avx512vnni", "avx2", "c", ...)."""
    return native.compiled.qpath(storage) if available() else None


def _k(K: int, storage: str) -> int:
    """K padded to the storage's group of k (4 for int8, 2 for bf16)."""
    g = 4 if storage == "int8" else 2
    return -(-K // g) * g


def packed(q: Array, storage: str) -> Array:
    """A quantized weight ``q`` (M, K) (int8, or bf16 bits as uint16) in panels."""
    M, K = q.shape
    out = native.aligned_empty(-(-M // QNR) * QNR * _k(K, storage), q.dtype)
    native.compiled.qpack(np.ascontiguousarray(q), out, M, K, q.dtype.itemsize)
    return out


def _packed_blocks(q: Array, blocks: Sequence[tuple[int, int]], storage: str) -> Array:
    """The rows ``a..b`` of each block packed on their own, back to back (the order
    parse_scan reads them: part by part, gate by gate within a part)."""
    if len(blocks) == 1:
        return packed(q, storage)
    parts = [packed(q[a:b], storage) for a, b in blocks]
    out = native.aligned_empty(sum(p.size for p in parts), q.dtype)  # (each block whole lines: 16 columns x 4 bytes)
    np.concatenate(parts, out=out)
    return out


@dataclass
class QPrepared:
    """One quantized layer-direction's weights, arranged for the compiled loop: the packed
    ``wih``, ``whh``, ``whr`` split into ``parts`` (as :class:`.native.Prepared`), each
    output column's weight scale ``s*`` and row sum ``u*`` (int8), the float32 bias on the
    input side (GRU: ``bhn`` apart)."""

    mode: str  # the cell kind: rnn_tanh, rnn_relu, lstm, gru
    G: int
    H: int
    P: int
    H_in: int
    storage: str
    parts: int
    units: Array
    pcols: Array
    arrays: dict[str, Any]


def prepare(mode: str, weights: dict[str, Any], storage: str, parts: int) -> QPrepared:
    """Arrange one layer-direction: ``weights`` maps ``weight_ih``, ``weight_hh``,
    ``weight_hr`` to ``(q, scale)`` (int8) or ``(bits, None)`` (bf16) and ``bias_ih``,
    ``bias_hh`` to float32 arrays (or None)."""
    q_ih, s_ih = weights["weight_ih"]
    q_hh, s_hh = weights["weight_hh"]
    hr = weights.get("weight_hr")
    G = KINDS[mode].num_gates
    H, P, H_in = q_hh.shape[0] // G, q_hh.shape[1], q_ih.shape[1]
    parts = max(1, min(parts, H // QNR or 1, P // QNR or 1, 64))
    units, pcols = native._bounds(H, parts, QNR), native._bounds(P, parts, QNR)
    blocks = [(0, G * H)] if parts == 1 else [(g * H + a, g * H + b) for a, b in zip(units[:-1], units[1:])
                                              for g in range(G)]
    arrays: dict[str, Any] = {"wih": _packed_blocks(q_ih, blocks, storage),
                              "whh": _packed_blocks(q_hh, blocks, storage)}
    if hr is not None:
        arrays["whr"] = _packed_blocks(hr[0], list(zip(pcols[:-1], pcols[1:])), storage)
    if storage == "int8":
        for key, (q, s) in (("ih", (q_ih, s_ih)), ("hh", (q_hh, s_hh))) + ((("hr", hr),) if hr is not None else ()):
            arrays["s" + key] = np.ascontiguousarray(s, np.float32)
            arrays["u" + key] = q.sum(axis=1, dtype=np.int32)
    b_ih, b_hh = weights.get("bias_ih"), weights.get("bias_hh")
    if b_ih is not None and b_hh is not None:
        bias = np.array(b_ih, np.float32)
        if mode == "gru":  # the candidate's hidden bias sits inside r * (...)
            bias[: 2 * H] += b_hh[: 2 * H]
            arrays["bhn"] = np.array(b_hh[2 * H:], np.float32)
        else:
            bias += b_hh
        arrays["bias"] = bias
    return QPrepared(mode, G, H, P, H_in, storage, parts, units, pcols, arrays)


def forward(prep: QPrepared, x: Array, batch_sizes: Sequence[int], reverse: bool, h: Array, c: OptArray,
            team: Any = None, pool: Optional[dict[Any, Any]] = None, key: Any = None,
            ranges: Optional[Sequence[tuple[int, int]]] = None) -> Array:
    """One layer-direction over packed float32 rows ``x`` (T, H_in) whose steps have
    ``batch_sizes[t]`` rows; ``h`` (N, P) and ``c`` (N, H) hold the initial state and
    end as the final one; ``pool`` keeps the work arrays between calls under ``key``;
    ``ranges`` (a batch split, one part, the projection inside the loop): row ranges that
    the team's threads run as loops of their own.  Returns the output rows (T, P)."""
    out = np.empty((x.shape[0], prep.P), np.float32)
    if x.shape[0]:
        desc = spec(prep, np.ascontiguousarray(x), batch_sizes, reverse, h, c, out, team, pool, key)
        if ranges is not None and len(ranges) > 1 and team is not None:
            desc.update(ranges=np.asarray([r[0] for r in ranges] + [ranges[-1][1]], np.int64), team=team)
        native.compiled.scan(desc)
    return out


def spec(prep: QPrepared, x: Array, batch_sizes: Sequence[int], reverse: bool, h: Array, c: OptArray, out: Array,
         team: Any = None, pool: Optional[dict[Any, Any]] = None, key: Any = None) -> dict[str, Any]:
    """The ``_native.scan`` description of :func:`forward`'s loop, its work arrays made
    or taken from ``pool`` (a stream makes it once, as a ``_native.Call``)."""
    sizes, offsets = native._layout(batch_sizes)
    T, N, P, H, GH = x.shape[0], int(sizes[0]), prep.P, prep.H, prep.G * prep.H
    wdt = np.uint8 if prep.storage == "int8" else np.uint16
    kh = max(_k(P, prep.storage), _k(H, prep.storage) if "whr" in prep.arrays else 0)
    # the input projection inside the loop, step by step, for a batch that reads W_ih
    # for enough rows at each step (as the float loop decides); else before it
    inloop = N >= settings.min_inloop_batch
    work = {"gates": (N, GH)} if inloop else {"xproj": (T, GH), "gates": (N, GH)}
    if inloop and prep.mode == "gru":
        work["gxs"] = (N, GH)
    if prep.mode == "lstm":
        work["tc"] = (N, H)
        if "whr" in prep.arrays:
            work["m"] = (N, H)
    if prep.mode == "gru":
        work["ghn"] = (N, H)
    if prep.parts > 1:
        work["hbuf"] = (2 * N, P)
    xrows = prep.parts * N if inloop else T  # the rows quantized at a time: each thread's step, or all
    if prep.storage == "int8":
        work.update(qxs=(xrows, 1), qhs=(prep.parts * N, 1))
    arrays: dict[str, Any] = dict(native._arrays(work, np.float32, pool, (key, "quantized work")))
    arrays.update(native._arrays({"qx": (xrows, _k(prep.H_in, prep.storage)), "qh": (prep.parts * N, kh)}, wdt,
                                 pool, (key, "quantized rows")))
    if prep.storage == "int8":
        arrays.update(native._arrays({"qxz": (xrows, 1), "qhz": (prep.parts * N, 1)}, np.int32, pool,
                                     (key, "quantized zero points")))
    arrays.update(prep.arrays, back=0, kind=native._CODES[prep.mode], train=0, reverse=int(reverse), accumulate=0,
                  r0=0, r1=N, H=H, P=P, Hin=prep.H_in, itemsize=4, batch_sizes=sizes, offsets=offsets, x=x,
                  out=out, h=h, c=c, wq=WQ[prep.storage], team=team if prep.parts > 1 else None)
    if prep.parts > 1:
        arrays.update(parts=prep.parts, units=prep.units, pcols=prep.pcols)
    return arrays

"""The compiled tier: one call of :mod:`nprnn.functional._native` runs a layer-direction's
whole time loop, with the gates fused and the GIL released.

It keeps the contract of the NumPy loop in :mod:`.scan` (packed time-major rows; the
records backward needs), so the two tiers are interchangeable per call.  What differs:
the weights are packed once into the panels the kernel's register tiles read
(:class:`Prepared`, cached per module); each step computes ``x_t @ W_ih.T + h @ W_hh.T + b``
in one pass over the tile (the input projection and, in backward, the input gradient
happen step by step inside the loop, where the rows are hot), and the weight gradients
are products on the same kernel after it (:func:`_at`); the sigmoid gates are computed as
such (no scaled weights); the running state lives in one ``(N, H_out)`` array that ends as
``h_n``, because the rows of sequences that have ended are never touched again; and a
large batch splits into row ranges that run their whole loops side by side
(:func:`..threads.row_ranges`).  No BLAS is called, so no BLAS thread pool spins against
these threads.

``NPRNN_BACKEND=numpy`` in the environment turns this tier off; ``NPRNN_BACKEND=native``
makes its absence an error instead of a quiet fallback.
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from functools import partial
from typing import Any, Callable, NamedTuple, Optional, Sequence

import numpy as np

from .. import config
from .._typing import Array, OptArray, Params, Pool
from ..config import settings
from .cells import CellKind
from .reference import _sigmoid
from .runners import SERIAL, Runner

_IMPORT_ERROR: Optional[str] = None  # why the built compiled module did not load (None: it did, or it is not built)
try:
    from . import _native  # type: ignore[attr-defined]

    compiled = _native  # the compiled module, for the callers that build their own calls (streams)
except ImportError as exc:  # not built (no compiler at install time), or built and unloadable
    import importlib.util

    _native = None
    compiled = None
    _IMPORT_ERROR = str(exc) if importlib.util.find_spec(f"{__package__}._native") else None  # None: not built
    if _IMPORT_ERROR is not None:  # the file is there but does not load
        import warnings

        warnings.warn(f"nprnn's compiled kernels are installed but do not load ({exc}); running on NumPy",
                      RuntimeWarning, stacklevel=2)

_CODES = {"rnn_tanh": 0, "rnn_relu": 1, "lstm": 2, "gru": 3, "ln_lstm": 4, "ln_gru": 5}
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


def backend_info() -> dict[str, Any]:
    """Which tier runs and why: ``backend`` (as :func:`backend`), ``isa`` (the instruction
    set variant in use), ``variants`` (each compiled variant this CPU runs, with its vector
    bytes), ``compiler`` (what built the extension), ``cpu`` (the features the variants
    need, as this CPU reports them), and ``reason``: None when the compiled tier runs on
    its best variant, else why not (not built, the import error's text, forced by the
    environment or by :func:`set_backend`, the CPU lacking a feature, ``set_isa``); and
    ``quantized``: the product path ``nprnn.quantize``'s int8 and bf16 weights take
    ("amx", "avx512vnni", "avx512bf16", "avx512", "avx2" or "c")."""
    info: dict[str, Any] = {"backend": backend(), "isa": isa(), "variants": {}, "compiler": None, "cpu": {},
                            "reason": None}
    if _native is None:
        info["reason"] = ("the compiled kernels are not built in this installation (no C compiler at install "
                          "time?)" if _IMPORT_ERROR is None else f"the compiled kernels do not load: {_IMPORT_ERROR}")
        return info
    info.update(variants=_native.widths(), compiler=_native.compiler().strip(), cpu=_native.cpu(),
                quantized={k: _native.qpath(k) for k in ("int8", "bf16")})
    if not _enabled:
        info["reason"] = ("NPRNN_BACKEND=numpy in the environment" if _FORCED == "numpy"
                          else "set_backend('numpy') was called")
        return info
    best = max(info["variants"], key=info["variants"].get)
    if info["isa"] != best:
        info["reason"] = f"the {info['isa']} variant was chosen with _native.set_isa; this CPU runs {best}"
    elif info["cpu"] and best != "avx512":
        need = ("avx512f", "avx512vl", "avx512dq", "avx512bw") if best == "avx2" else ("avx2", "fma")
        info["reason"] = f"this CPU lacks {', '.join(f for f in need if not info['cpu'][f])}: {best} runs"
    return info


def isa() -> Optional[str]:
    """The instruction set the compiled kernels use (None without them)."""
    return None if _native is None else _native.isa()


def supports(kind: CellKind, dtype: Any) -> bool:
    """Whether this call can run natively: the tier is on and the kind is one of PyTorch's
    (the ONNX-only variants stay on NumPy)."""
    return _enabled and kind.name in _CODES


def supports_dtype(dtype: Any) -> bool:
    """Whether the compiled kernels run on arrays of this dtype (the tier is on; float32 or
    float64): a linear scan (:mod:`.linscan`), a product, a mask."""
    return _enabled and np.dtype(dtype) in (np.float32, np.float64)


def linear_scan(spec: dict[str, Any], batch_sizes: Sequence[int], H: int, rows: int, runner: Runner) -> None:
    """One ``_native.linear_scan`` call over packed rows (``spec`` holds its arrays): the
    units split across ``runner``'s team where the scan has the work to pay for it."""
    if batch_sizes[0] == batch_sizes[-1]:  # every step the whole batch: the layout without a tuple of every step
        sizes = np.full(len(batch_sizes), batch_sizes[0], np.int64)
        offsets = np.arange(len(batch_sizes), dtype=np.int64) * int(batch_sizes[0])
    else:
        sizes, offsets = _layout(batch_sizes)
    team = runner.team(2) if rows * H >= settings.min_split_work // 8 else None
    threads = team.stats()["threads"] if team is not None else 1
    N = int(sizes[0])
    work = None  # a batch of equal lengths splits its steps into chunks, one stretch of memory a thread
    if threads > 1 and len(sizes) >= 2 * threads and int(sizes[-1]) == N:
        work = np.empty(6 * threads * N * H, spec["a"].dtype)
    elif N < 2 * threads:  # (a ragged batch splits its rows: too few to share)
        team, threads = None, 1
    _native.linear_scan(dict(spec, H=H, itemsize=spec["a"].dtype.itemsize, batch_sizes=sizes, offsets=offsets,
                             team=team, threads=threads, work=work))


def product(a: Array, w: Array, transpose: bool, bias: OptArray, runner: Runner, out: OptArray = None) -> Array:
    """``a @ w.T + bias`` (``transpose``) or ``a @ w`` on the compiled kernel, the rows of
    ``a`` split across ``runner``'s team (NumPy's BLAS would leave its threads spinning
    against the scan's next), into ``out`` (C-contiguous) if given."""
    M = w.shape[0] if transpose else w.shape[1]
    out = np.empty((a.shape[0], M), a.dtype) if out is None else out
    team = runner.team(2) if a.shape[0] * M * a.shape[1] >= settings.min_split_work else None
    threads = team.stats()["threads"] if team is not None else 1
    _native.matmul(np.ascontiguousarray(a), _packed(w, transpose), out, bias, team, 4 * threads)
    return out


def bernoulli(out: Array, key: int, t: int) -> bool:
    """``stack.bernoulli``'s values into ``out`` on the compiled kernel (SplitMix64 from state
    ``key``, words below ``t``), if this tier runs and ``out`` is float32/float64 and
    C-contiguous; False where the caller makes them itself."""
    if not supports_dtype(out.dtype) or not out.flags.c_contiguous:
        return False
    _native.bernoulli(out, key, t)
    return True


def aligned_empty(n: int, dtype: Any) -> Array:
    """An uninitialised (n,) array whose data starts on a 64-byte line: a vector load of a
    panel then never straddles two cache lines (NumPy aligns to 16 bytes, which halves the
    rate a matrix-vector step reads its weights at)."""
    itemsize = np.dtype(dtype).itemsize
    raw = np.empty(n + 64 // itemsize, dtype)
    start = (-raw.ctypes.data % 64) // itemsize
    return raw[start : start + n]


def _aligned(shape: tuple[int, int], dtype: Any) -> Array:
    """:func:`aligned_empty` in a 2-D shape."""
    return aligned_empty(shape[0] * shape[1], dtype).reshape(shape)


def _packed(mat: np.ndarray, transpose: bool, out: OptArray = None) -> np.ndarray:
    """``mat.T`` (``transpose``) or ``mat`` packed into the kernel's panels (into ``out``
    if given)."""
    mat = np.ascontiguousarray(mat)
    rows, cols = mat.shape
    K, M = (cols, rows) if transpose else (rows, cols)
    nr = _native.panel_width(mat.dtype.itemsize)
    if out is None:
        out = aligned_empty(K * (-(-M // nr) * nr), mat.dtype)
    sk, sm = (1, cols) if transpose else (cols, 1)
    _native.pack(mat, out, K, M, sk, sm, 0, M)
    return out


def _bounds(total: int, parts: int, align: int) -> Array:
    """``parts + 1`` rising bounds from 0 to ``total``, near-equal and on multiples of
    ``align`` where that keeps every part non-empty."""
    even = [total * i // parts for i in range(parts + 1)]
    aligned = [min(total, round(b / align) * align) for b in even[:-1]] + [total]
    pick = aligned if all(b > a for a, b in zip(aligned, aligned[1:])) else even
    return np.asarray(pick, dtype=np.int64)


def _packed_parts(w: Array, G: int, bounds: Array) -> Array:
    """``w.T`` for ``w`` (G*H, K) packed part by part: part p holds units
    ``bounds[p]..bounds[p+1]`` of each of the G gates, gate by gate (one part: all G*H
    columns at once), as the kernel reads them (``gate_block`` in _native.c)."""
    if len(bounds) == 2:
        return _packed(w, True)
    H, K = w.shape[0] // G, w.shape[1]
    nr = _native.panel_width(w.dtype.itemsize)
    blocks = [(g * H + a, g * H + b) for a, b in zip(bounds[:-1], bounds[1:]) for g in range(G)]
    sizes = [K * (-(-(b - a) // nr) * nr) for a, b in blocks]
    out = aligned_empty(sum(sizes), w.dtype)
    at = 0
    for (a, b), size in zip(blocks, sizes):  # each block starts on a line: its size is whole panels
        _packed(w[a:b], True, out[at : at + size])
        at += size
    return out


@dataclass
class Prepared:
    """One layer-direction's weights, arranged for the compiled loop: ``wih``, ``whh``,
    ``whr`` the packed ``W_ih.T``, ``W_hh.T``, ``W_hr.T`` the forward multiplies by, split
    into ``parts`` (the hidden units ``units[p]..units[p+1]``, with a projection its output
    columns ``pcols[p]..pcols[p+1]``; one thread reads one part's weights); ``bias``
    (G*H,) the bias added to the input side (for GRU the candidate's hidden bias stays out
    of it: ``b_hn``, (H,)); ``isa`` the instruction set the panels were packed for.  The
    packed ``W_ih``, ``W_hh``, ``W_hr`` that backward multiplies by are made on first use
    (:meth:`backward_weights`), so inference keeps one arranged copy."""

    kind: CellKind
    H: int
    P: int
    H_in: int
    dtype: np.dtype[Any]
    bias: OptArray
    b_hn: OptArray
    wih: Array
    whh: Array
    whr: OptArray
    isa: str
    params: Params  # the parameter arrays these were made from (read-only between changes)
    parts: int = 1
    units: OptArray = None
    pcols: OptArray = None
    lnw: OptArray = None  # a layer-norm kind's gains and shifts, one array (its own parameters in order)
    _backward: Optional[tuple[Array, Array, OptArray]] = None

    def backward_weights(self) -> tuple[Array, Array, OptArray]:
        """(packed W_ih, packed W_hh, packed W_hr or None), made once."""
        if self._backward is None:
            w_ih, w_hh, _, _, w_hr = self.params[:5]
            self._backward = (_packed(w_ih, False), _packed(w_hh, False),
                              None if w_hr is None else _packed(w_hr, False))
        return self._backward


def prepare(kind: CellKind, params: Params, parts: int = 1) -> Prepared:
    """Arrange ``params`` = (w_ih, w_hh, b_ih, b_hh, w_hr) (None where absent) for a loop
    whose hidden units split into ``parts``."""
    w_ih, w_hh, b_ih, b_hh, w_hr = params[:5]
    G = kind.num_gates
    H = w_hh.shape[0] // G
    P = w_hh.shape[1]
    b_hn = None
    if b_ih is None or b_hh is None:  # (they come together)
        bias = None
    elif kind.name == "gru":  # the candidate's hidden bias sits inside r * (...)
        bias = b_ih.copy()
        bias[: 2 * H] += b_hh[: 2 * H]
        b_hn = np.array(b_hh[2 * H :])
    else:
        bias = b_ih + b_hh
    parts = max(1, min(parts, H, P))
    align = _native.panel_width(w_hh.dtype.itemsize) // 2
    units, pcols = _bounds(H, parts, align), _bounds(P, parts, align)
    return Prepared(
        kind=kind, H=H, P=P, H_in=w_ih.shape[1], dtype=w_hh.dtype, bias=bias, b_hn=b_hn,
        wih=_packed_parts(w_ih, G, units), whh=_packed_parts(w_hh, G, units),
        whr=None if w_hr is None else _packed_parts(w_hr, 1, pcols),
        isa=_native.isa(), params=params, parts=parts, units=units, pcols=pcols,
        lnw=np.concatenate(params[5:]).astype(w_hh.dtype) if kind.params else None,
    )


_epoch = [0]


def weights_changed() -> None:
    """Say that some parameter of some module may have changed (the modules call it on
    each route that changes one: parameters are read-only otherwise)."""
    _epoch[0] += 1


def parameter_epoch() -> int:
    """A counter that changes whenever any parameter of any module may have changed;
    caches of prepared weights compare it to the value they were made at."""
    return _epoch[0]


def prepared(cache: Optional[dict[Any, Any]], key: Any, kind: CellKind, params: Params, parts: int = 1) -> Prepared:
    """The prepared weights of ``params`` split into ``parts`` from ``cache`` (a dict its
    module owns; None: made for this call), made anew when any parameter has changed
    since (see :func:`parameter_epoch`: parameters are read-only except through the routes
    that bump it), the instruction set is another or the split is.  A one-step call then
    pays for the step, not for packing weights."""
    if cache is None:
        return prepare(kind, params, parts)
    epoch = parameter_epoch()
    hit = cache.get(key)
    if hit is not None and hit[0] == epoch and hit[1].isa == _native.isa() and hit[1].parts == parts:
        return hit[1]  # type: ignore[no-any-return]
    prep = prepare(kind, params, parts)
    cache[key] = (epoch, prep)
    return prep


@dataclass(frozen=True)
class NativeRecord:
    """What the backward of one compiled layer-direction needs from its forward."""

    x: Array  # (T, H_in) the layer input
    prep: Prepared  # the weights the forward ran with (kind and sizes too)
    batch_sizes: Array  # int64, in time order
    offsets: Array
    reverse: bool
    tape: dict[str, Array]  # hprev (T, H_out), gates (T, G*H), and per kind cprev, tc, m, ghn (T, H)
    reg: dict[str, Array] = field(default_factory=dict)  # the regularizers' masks, by their keys in the spec

    @property
    def kind(self) -> CellKind:
        return self.prep.kind

    def padded_tape(self, L: int) -> tuple[Array, Array, OptArray]:
        """See :meth:`.scan.DirectionRecord.padded_tape` (the layout is the same for any ``L``)."""
        gates = _ln_gates(self) if self.kind.params else self.tape["gates"]
        return self.tape["hprev"], gates.reshape(gates.shape[0], -1, self.prep.H), self.tape.get("cprev")


def _ln_gates(rec: NativeRecord) -> Array:
    """A layer-norm kind's gate activations of every packed row (T, G*H), made again from its
    norms' records as the kernel's backward makes them (``ln_acts``): its tape keeps none."""
    H = rec.prep.H
    GH, lnw = rec.kind.num_gates * H, rec.prep.lnw
    assert lnw is not None
    a = lnw[:GH] * rec.tape["lnx"][:, :GH] + lnw[GH:2 * GH]  # LN_ih(x @ W_ih.T)
    b = lnw[2 * GH:3 * GH] * rec.tape["lnr"][:, :GH] + lnw[3 * GH:4 * GH]  # LN_hh(h @ W_hh.T)
    if rec.kind.has_cell:  # i, f, g, o
        s = a + b
        return np.concatenate([_sigmoid(s[:, :2 * H]), np.tanh(s[:, 2 * H:3 * H]), _sigmoid(s[:, 3 * H:])], axis=1)
    rz = _sigmoid(a[:, :2 * H] + b[:, :2 * H])  # r, z; n = tanh(a_n + r b_n)
    return np.concatenate([rz, np.tanh(a[:, 2 * H:] + rz[:, :H] * b[:, 2 * H:])], axis=1)


# the last few batch layouts, as the kernel takes them, with the plans made for them
_LAYOUTS: dict[tuple[int, ...], tuple[Array, Array, dict[Any, "Plan"]]] = {}


def _layout_plans(batch_sizes: Sequence[int]) -> tuple[Array, Array, dict[Any, "Plan"]]:
    """``(sizes, offsets, plans)``: each step's batch size and first packed row as int64
    arrays, and the plans made for this layout so far (see :func:`plan_params`)."""
    key = tuple(batch_sizes)
    hit = _LAYOUTS.get(key)
    if hit is None:
        sizes = np.asarray(key, dtype=np.int64)
        offsets = np.zeros_like(sizes)
        np.cumsum(sizes[:-1], out=offsets[1:])
        if len(_LAYOUTS) >= 64:
            _LAYOUTS.clear()
        hit = _LAYOUTS[key] = (sizes, offsets, {})
    return hit


def _layout(batch_sizes: Sequence[int]) -> tuple[Array, Array]:
    """``(sizes, offsets)`` of :func:`_layout_plans`."""
    sizes, offsets, _ = _layout_plans(batch_sizes)
    return sizes, offsets


def _tape_shapes(kind: CellKind, H: int, P: int, proj: bool, rows: int) -> dict[str, tuple[int, int]]:
    """The per-row arrays the kernel writes: per packed row when training (the tape), per
    batch row otherwise (work)."""
    shapes = {"gates": (rows, kind.num_gates * H)}
    if kind.has_cell:
        shapes["tc"] = (rows, H)
        if proj:
            shapes["m"] = (rows, H)
    if kind.name in ("gru", "ln_gru"):
        shapes["ghn"] = (rows, H)
    return shapes


def step_work(prep: Prepared, N: int, project_first: bool, reg: Any = None) -> dict[str, Array]:
    """The per-row work arrays of a one-step inference call over a batch of ``N`` (a stream
    keeps them from step to step), with ``reg``'s zoneout (:class:`.scan.Regularizers`)."""
    shapes = _tape_shapes(prep.kind, prep.H, prep.P, prep.whr is not None, N)
    shapes.update(_extra_shapes(prep, N, N, project_first, False, reg))
    return dict({name: _aligned(shape, prep.dtype) for name, shape in shapes.items()}, **_reg_arrays(reg, False))


def _extra_shapes(prep: Prepared, N: int, T: int, project_first: bool, train: bool, reg: Any = None
                  ) -> dict[str, tuple[int, int]]:
    """The work arrays beside the tape: the projected input (an LSTM's training tape holds
    its own), a GRU's per-step projection, the two halves of the state of a split loop or
    of a zoned one (the step needs ``h_{t-1}`` after it made ``h~_t``), the regularizers'
    workspace (``reg``: a :class:`.scan.Regularizers` or None)."""
    G, H = prep.kind.num_gates, prep.H
    extra = {}
    if project_first and not (train and prep.kind.name == "lstm"):
        extra["xproj"] = (T, G * H)
    if prep.kind.separate_dgh and not project_first:  # each step's input side, kept apart from h's product
        extra["gxs"] = (N, G * H)
    zoned = reg is not None and reg.zh is not None
    if prep.parts > 1 or zoned:
        extra["hbuf"] = (2 * N, prep.P)
    if zoned and prep.kind.has_cell and not train:
        extra["zsave"] = (N, prep.P + H)  # the cell state before the step
    if reg is not None and reg.rmask is not None and train:
        extra["rbuf"] = (N, prep.P)  # h_{t-1} * mask
    return extra


def _reg_arrays(reg: Any, train: bool) -> dict[str, Array]:
    """A spec's regularizer entries (see struct scan): ``rmask`` when training, ``zh``, ``zc``."""
    if reg is None:
        return {}
    arrays = {"rmask": reg.rmask if train else None, "zh": reg.zh, "zc": reg.zc}
    return {k: v for k, v in arrays.items() if v is not None}


def _arrays(shapes: dict[str, tuple[int, int]], dtype: Any, pool: Optional[Pool], key: Any) -> dict[str, Array]:
    """Arrays of the given shapes, reused from ``pool`` (see :func:`.scan.alloc_blocks`)."""
    if pool is None:
        return {name: _aligned(shape, dtype) for name, shape in shapes.items()}
    held = pool.get(key)
    if held is not None and {k: a.shape for k, a in held.items()} == shapes and all(
            a.dtype == dtype for a in held.values()):
        return held  # type: ignore[no-any-return]
    held = pool[key] = {name: _aligned(shape, dtype) for name, shape in shapes.items()}
    return held


def _split(sizes: Array, offsets: Array, row_work: int, runner: Runner) -> Sequence[tuple[int, int]]:
    """Row ranges of the batch for side-by-side calls (``runner.ranges``; see
    :func:`nprnn.threads.row_ranges`)."""
    N = int(sizes[0])
    if N < 2 or (int(offsets[-1]) + int(sizes[-1])) * row_work < 2 * settings.min_split_work:
        return ((0, N),)  # too little work to hand any of it to another thread
    lengths = np.searchsorted(-sizes, -np.arange(1, N + 1), side="right")  # steps with > r rows
    return runner.ranges(lengths, row_work)


def _row_work(kind: CellKind, H: int, P: int, H_in: int, proj: bool) -> int:
    """Multiply-adds of one row of one step."""
    return kind.num_gates * H * (P + H_in) + (H * P if proj else 0)


class Plan(NamedTuple):
    """How one compiled forward runs: ``ranges`` of batch rows, each its own loop on its
    own thread; or one range whose hidden units split into ``parts`` that the threads of
    ``team`` share step by step.  ``project_first``: the input projection of every row
    runs before the loop (else inside it, step by step, where the rows are hot)."""

    ranges: Sequence[tuple[int, int]]
    parts: int
    project_first: bool
    team: Any


def plan(kind: CellKind, H: int, P: int, H_in: int, proj: bool, sizes: Array, offsets: Array,
         runner: Runner) -> Plan:
    """Decide how a forward over this batch runs (see :class:`Plan`): a batch split where
    the batch is large (``runner.ranges``), a split of the hidden units where it is small
    and the weights large (``runner.units``), and the projection before the loop unless
    the batch is large enough that reading ``W_ih`` at every step costs little
    (``settings.min_inloop_batch``)."""
    N = int(sizes[0])
    parts = 1 if kind.params else runner.units(N, H, kind.num_gates * H * P + (H * P if proj else 0), len(sizes))
    if parts > 1:
        return Plan(((0, N),), parts, True, runner.team(parts))
    ranges = _split(sizes, offsets, _row_work(kind, H, P, H_in, proj), runner)
    team = runner.team(len(ranges)) if len(ranges) > 1 else None
    return Plan(ranges, 1, len(ranges) == 1 and N < settings.min_inloop_batch, team)


def plan_params(kind: CellKind, params: Params, sizes: Array, offsets: Array, runner: Runner) -> Plan:
    """:func:`plan` for a layer-direction's parameters."""
    w_ih, w_hh, _, _, w_hr = params[:5]
    G = kind.num_gates
    return plan(kind, w_hh.shape[0] // G, w_hh.shape[1], w_ih.shape[1], w_hr is not None, sizes, offsets, runner)


def plan_key() -> tuple[int, int]:
    """What a :func:`plan` depends on beyond the shapes: the settings (any change of them)
    and the process (a forked child has its own team); a stream makes its calls again
    when it changes."""
    return config.changes(), os.getpid()


def call_args(back: int, prep: Prepared, train: int, reverse: int, rows: tuple[int, int], sizes: Array,
              offsets: Array, x: OptArray, out: Array, h: Array, c: OptArray, a: dict[str, Array],
              accumulate: bool = False, team: Any = None, ranges: OptArray = None, rix: int = 0) -> dict[str, Any]:
    """The description of one ``_native.scan`` loop (see struct scan in _native.c): sizes,
    weights, the arrays in ``a`` by name (``xproj``, ``hbuf`` and the tape or work)."""
    if back:
        wih, whh, whr = prep.backward_weights()
    else:
        wih, whh, whr = prep.wih, prep.whh, prep.whr
    spec = dict(a, back=back, kind=_CODES[prep.kind.name], train=train, reverse=reverse, accumulate=int(accumulate),
                r0=rows[0], r1=rows[1], H=prep.H, P=prep.P, Hin=prep.H_in, itemsize=h.dtype.itemsize,
                batch_sizes=sizes, offsets=offsets, x=x, out=out, h=h, c=c, wih=wih, whh=whh, whr=whr,
                bias=prep.bias, bhn=prep.b_hn, team=team, ranges=ranges, rix=rix)
    if prep.lnw is not None:
        spec["lnw"] = prep.lnw
    if prep.parts > 1 and not back:
        spec.update(parts=prep.parts, units=prep.units, pcols=prep.pcols)
    return spec


_spec: Callable[..., dict[str, Any]] = call_args  # called with argument tuples made ahead


def _call(*args: Any, **kw: Any) -> None:
    _native.scan(call_args(*args, **kw))


def _one_call(ranges: Sequence[tuple[int, int]]) -> tuple[tuple[int, int], OptArray]:
    """The rows and the ``ranges`` entry of one C call that runs every row range (the team's
    threads take them as they come free): the ranges' bounds, None for one range."""
    bounds = np.asarray([r[0] for r in ranges] + [ranges[-1][1]], dtype=np.int64) if len(ranges) > 1 else None
    return (ranges[0][0], ranges[-1][1]), bounds


def _run(ranges: Sequence[tuple[int, int]], team: Any, runner: Runner, call: Any, rest: tuple[Any, ...],
         accumulate: bool = False) -> None:
    """One loop over the batch, or one per row range: on the team's threads when there is a
    team (one C call), else as ``runner.run``'s parts."""
    if len(ranges) > 1 and team is not None:
        rows, bounds = _one_call(ranges)
        call(rows, *rest, accumulate=accumulate, team=team, ranges=bounds)
        return
    runner.run([partial(call, r, *rest, accumulate=accumulate, team=team, rix=i) for i, r in enumerate(ranges)])


def direction_forward(x: Array, kind: CellKind, params: Params, state0: tuple[Array, ...],
                      batch_sizes: Sequence[int], reverse: bool, out: Array, train: bool,
                      pool: Optional[Pool] = None, key: Any = None, runner: Runner = SERIAL,
                      cache: Optional[dict[Any, Any]] = None, cs: OptArray = None, reg: Any = None
                      ) -> tuple[tuple[Array, ...], Optional["NativeRecord"]]:
    """One layer in one direction over packed ``x`` (T, H_in); see
    :func:`.scan.direction_forward`, whose contract this keeps.  ``runner`` may split a
    large batch or, for a small one, the hidden units (:func:`plan`); ``cache`` keeps the
    prepared weights under ``key`` (:func:`prepared`).  Returns ``(final_state, record)``;
    record is None unless ``train``."""
    loop = _forward_loop(x, kind, params, state0, batch_sizes, reverse, out, train, pool, key, runner, cache, cs=cs,
                         reg=reg)
    if loop.how.ranges[-1][1]:
        _run(loop.how.ranges, loop.how.team, runner, partial(_call, *loop.args[:4]), loop.args[4:])
    return loop.finish()


class _Loop(NamedTuple):
    """One compiled forward loop, made ready (:func:`_forward_loop`): its plan, the
    arguments of :func:`call_args` but the row range, and what the caller gets back."""

    how: "Plan"
    args: tuple[Any, ...]  # (back, prep, train, reverse, sizes, offsets, x, out, h, c, arrays)
    state: tuple[Array, ...]
    record: Optional["NativeRecord"]

    def finish(self) -> tuple[tuple[Array, ...], Optional["NativeRecord"]]:
        return self.state, self.record


def _forward_loop(x: Array, kind: CellKind, params: Params, state0: tuple[Array, ...], batch_sizes: Sequence[int],
                  reverse: bool, out: Array, train: bool, pool: Optional[Pool], key: Any, runner: Runner,
                  cache: Optional[dict[Any, Any]], whole: bool = False, inloop: bool = False, cs: OptArray = None,
                  reg: Any = None) -> _Loop:
    """Everything a forward loop needs, allocated and prepared, not run.  ``whole``: one
    loop over the whole batch on one thread (a wavefront's layer); ``inloop``: the input
    projection step by step (its input rows come as the layer below makes them)."""
    w_hh = params[1]
    G = kind.num_gates
    H, P, proj = w_hh.shape[0] // G, w_hh.shape[1], params[4] is not None
    T = x.shape[0]
    sizes, offsets, plans = _layout_plans(batch_sizes)
    N = int(sizes[0])
    if not N:
        how = Plan(((0, 0),), 1, False, None)
    elif whole:
        how = Plan(((0, N),), 1, not inloop and N < settings.min_inloop_batch, None)
    else:  # decided once for a layout, a layer's sizes and the settings
        decided = (kind.name, H, P, params[0].shape[1], proj, id(runner), *plan_key())
        how = plans.get(decided) or plans.setdefault(decided, plan_params(kind, params, sizes, offsets, runner))
    if how.parts > 1 and train and reg is not None and reg.rmask is not None:  # (each step's masked copy of
        how = Plan(((0, N),), 1, N < settings.min_inloop_batch, None)      # the state is one part's work)
    prep = prepared(cache, key, kind, params, how.parts)
    h = np.array(state0[0], order="C", copy=True)
    c = np.array(state0[1], order="C", copy=True) if kind.has_cell else None
    shapes = _tape_shapes(kind, H, P, proj, T if train else N)
    if train:
        shapes["hprev"] = (T, P)
        if kind.has_cell:
            shapes["cprev"] = (T, H)
        if kind.params:  # the norms' records: the input side's, the step's (rows of whole lines: LNX_W, LNR_W)
            line = 64 // x.dtype.itemsize
            shapes["lnx"] = (T, -(-(G * H + 1) // line) * line)
            shapes["lnr"] = (T, -(-(shapes["lnx"][1] + (H + 1 if kind.has_cell else 0)) // line) * line)
            shapes["gates"] = (N, G * H)  # per batch row: backward makes them again from the records
    shapes.update(_extra_shapes(prep, N, T, how.project_first, train, reg))
    arrays = _arrays(shapes, x.dtype, pool, (key, "native tape" if train else "native work"))
    masks = _reg_arrays(reg, train)
    if masks:
        arrays = dict(arrays, **masks)
    if how.project_first and train and kind.name == "lstm":  # the tape's gates hold the projection first
        arrays = dict(arrays, xproj=arrays["gates"])
    if cs is not None:  # every step's cell state (return_states), written where the caller says
        arrays = dict(arrays, cs=cs)
    x = np.ascontiguousarray(x)
    state = (h,) if c is None else (h, c)
    record = None
    if train:
        tape = {k: v for k, v in arrays.items() if k not in ("xproj", "gxs", "hbuf", "cs", "zsave", "rbuf", *masks)}
        record = NativeRecord(x, prep, sizes, offsets, bool(reverse), tape, masks)
    return _Loop(how, (0, prep, int(train), int(reverse), sizes, offsets, x, out, h, c, arrays), state, record)


class Reused(NamedTuple):
    """A one-directional stack's forward over a batch of one shape, made once and run again
    (:func:`reusable`, :func:`run_again`): ``x`` the first layer's input rows (T, H_in) to
    copy the input into, ``outs`` each layer's output rows (T, H_out), ``states`` each
    layer's (h, c) that its loop reads as the initial state and leaves as the final one,
    ``calls`` each layer's ``_native.Call``, its arguments checked once."""

    x: Array
    outs: list[Array]
    states: list[tuple[Array, ...]]
    calls: list[Any]


def reusable(kind: CellKind, params: Sequence[Params], N: int, L: int, dtype: Any,
             cache: Optional[dict[Any, Any]], runner: Runner) -> Optional[Reused]:
    """The calls of a one-directional stack's inference forward over ``N`` sequences of
    ``L`` steps, each layer planned as :func:`direction_forward` plans it; None where a
    layer's plan is row ranges without a team (several calls)."""
    T, sizes = N * L, [N] * L
    x = _aligned((T, params[0][0].shape[1]), dtype)
    inp, outs, states, calls = x, [], [], []
    for idx, p in enumerate(params):
        H, P = p[1].shape[0] // kind.num_gates, p[1].shape[1]
        out = _aligned((T, P), dtype)
        zeros = (np.zeros((N, P), dtype),) + ((np.zeros((N, H), dtype),) if kind.has_cell else ())
        loop = _forward_loop(inp, kind, p, zeros, sizes, False, out, False, None, idx, runner, cache)
        ranges, team = loop.how.ranges, loop.how.team
        if len(ranges) > 1 and team is None:
            return None
        rows, bounds = _one_call(ranges)
        calls.append(compiled.Call(_spec(*loop.args[:4], rows, *loop.args[4:], team=team, ranges=bounds)))
        outs.append(out)
        states.append(loop.state)
        inp = out
    return Reused(x, outs, states, calls)


def exact_states(hx: Any, has_cell: bool, shapes: Sequence[tuple[int, ...]], dtype: Any) -> Optional[tuple[Any, ...]]:
    """``hx`` as a tuple of initial states (``()`` for None) when it is exactly what a
    reused call takes (plain arrays of ``dtype`` and ``shapes``: a pair for a kind with a
    cell state), else None (the general path checks it)."""
    if hx is None:
        return ()
    given = tuple(hx) if has_cell and isinstance(hx, (tuple, list)) else (hx,)
    if len(given) != len(shapes) or any(type(h) is not np.ndarray or h.dtype != dtype or h.shape != s
                                        for h, s in zip(given, shapes)):
        return None
    return given


def run_again(pool: Pool, shape: tuple[int, ...], build: Callable[[], Optional[Reused]], rows: Array,
              given: tuple[Any, ...]) -> Optional[Reused]:
    """Run the calls ``pool`` holds for an input of ``shape`` (made by ``build`` when it
    holds none, or ones made for another shape, weights, instruction set or settings): the
    input ``rows`` copied in, each layer's states set to ``given``'s (one array a state, its
    first index the layer; ``()``: zeros).  Returns them, run, or None where ``build`` made
    none."""
    key = (shape, parameter_epoch(), isa(), plan_key())
    held = pool.get("reused")
    if held is None or held[0] != key:
        held = pool["reused"] = (key, build())
    run: Optional[Reused] = held[1]
    if run is None:
        return None
    np.copyto(run.x, rows.reshape(run.x.shape))
    for state, h0 in zip(zip(*run.states), given or [None] * len(run.states[0])):
        for layer, s in enumerate(state):
            s[...] = 0 if h0 is None else h0[layer].reshape(s.shape)
    for call in run.calls:
        call()
    return run


def wavefront_forward(kind: CellKind, x: Array, params: Sequence[Params], states: Sequence[tuple[Array, ...]],
                      batch_sizes: Sequence[int], outs: Sequence[Array], train: bool, pool: Optional[Pool],
                      cache: Optional[dict[Any, Any]], team: Any, regs: Optional[Sequence[Any]] = None
                      ) -> list[tuple[tuple[Array, ...], Optional["NativeRecord"]]]:
    """The layers of a one-directional stack as a wavefront (``_native.scan_many``): layer
    ``l`` runs its whole loop on a thread of ``team``, step ``t`` as soon as layer ``l - 1``
    has made step ``t``'s rows, so the layers run side by side, each thread with whole
    batches and one layer's weights.  Layer 0 projects its input before its loop, the
    others step by step.  The same numbers as layer after layer (each loop's sums are its
    own).  Returns each layer's ``(final_state, record)``."""
    loops = [_forward_loop(x if layer == 0 else outs[layer - 1], kind, params[layer], states[layer], batch_sizes,
                           False, outs[layer], train, pool, layer, SERIAL, cache, whole=True, inloop=layer > 0,
                           reg=None if regs is None else regs[layer])
             for layer in range(len(params))]
    if loops[0].how.ranges[-1][1]:
        _native.scan_many([_spec(*loop.args[:4], loop.how.ranges[0], *loop.args[4:]) for loop in loops], team)
    return [loop.finish() for loop in loops]


def direction_backward(rec: NativeRecord, dout: Array, dstate: tuple[Array, ...], pool: Optional[Pool] = None,
                       key: Any = None, dx: OptArray = None, accumulate: bool = False, runner: Runner = SERIAL,
                       dcs: OptArray = None, input_grad: bool = True
                       ) -> tuple[OptArray, tuple[Array, ...], tuple[OptArray, ...]]:
    """Backward of :func:`direction_forward`; see :func:`.scan.direction_backward`.  The
    input gradient is computed step by step inside the loop; the weight gradients in blocks
    of steps inside it too, or after it for large weights (:func:`_grad_block`)."""
    prep = rec.prep
    ranges = _split(rec.batch_sizes, rec.offsets, _row_work(prep.kind, prep.H, prep.P, prep.H_in,
                                                            prep.whr is not None), runner)
    loop = _backward_loop(rec, dout, dstate, pool, key, dx, accumulate, ranges, dcs, input_grad)
    if int(rec.batch_sizes[0]):
        _run(ranges, runner.team(len(ranges)) if len(ranges) > 1 else None, runner, partial(_call, *loop.args[:4]),
             loop.args[4:], loop.accumulate)
    return _backward_finish(rec, loop, runner, pool, key)


class _BackwardLoop(NamedTuple):
    """One compiled backward loop, made ready (:func:`_backward_loop`): the arguments of
    :func:`call_args` but the row range and ``accumulate``, and what it fills."""

    args: tuple[Any, ...]  # (back, prep, train, reverse, sizes, offsets, x, dout, dh, dc, arrays)
    accumulate: bool
    dx: OptArray  # (None: no input gradient)
    dstate: tuple[Array, ...]  # the initial-state gradients, once run
    grads: dict[str, Array]


def _dw_cols(prep: Prepared) -> int:
    """The columns of a row range's weight-gradient sums made inside backward's loop:
    [x | h_{t-1} | 1], or [x | 1 | h_{t-1} | 1] where the hidden side has its own gradient
    (the 1s where there are biases; see struct scan's ``dw``)."""
    return prep.H_in + prep.P + (2 if prep.kind.separate_dgh else 1) * (prep.bias is not None)


def _grad_block(prep: Prepared, N: int, ranges: Sequence[tuple[int, int]]) -> int:
    """The steps of a block of backward's weight gradients made inside the loop (see struct
    scan's ``dw``): about ``settings.grad_block_rows`` rows of a range; 0 (the products after
    the loop, over all rows) where a range's gradients would pass
    ``settings.max_inloop_grad_bytes``."""
    if not N or prep.kind.num_gates * prep.H * _dw_cols(prep) * prep.dtype.itemsize > settings.max_inloop_grad_bytes:
        return 0
    widest = max(r1 - r0 for r0, r1 in ranges)
    return max(1, settings.grad_block_rows // widest)


def _backward_loop(rec: NativeRecord, dout: Array, dstate: tuple[Array, ...], pool: Optional[Pool], key: Any,
                   dx: OptArray, accumulate: bool, ranges: Sequence[tuple[int, int]], dcs: OptArray = None,
                   input_grad: bool = True) -> _BackwardLoop:
    """A backward loop made ready, not run, for the row ranges ``ranges`` (one call each, or
    one call that splits into them); without ``input_grad`` it makes no input gradient."""
    prep = rec.prep
    kind, H, P = prep.kind, prep.H, prep.P
    T, N = rec.x.shape[0], int(rec.batch_sizes[0])
    G = kind.num_gates
    kblock = _grad_block(prep, N, ranges)
    sides, ones = (2 if kind.separate_dgh else 1), int(prep.bias is not None)
    if kblock:  # the weight gradients inside the loop: a row range's sums each, blocks of rows
        nr = _native.panel_width(rec.x.dtype.itemsize)
        pan = (-(-(prep.H_in + ones) // nr) + -(-(P + ones) // nr)) * nr
        shapes = {"dw": (len(ranges), G * H * _dw_cols(prep)), "blk": (N, kblock * G * H * sides),
                  "bpk": (N, kblock * pan)}
    else:
        shapes = {"dgx": (T, G * H)}
        if kind.separate_dgh:  # the hidden side's gradient differs from the input side's
            shapes["dgh"] = (T, G * H)
    if kind.params:  # the norms' gradient sums, a row per row range
        shapes["lnsum"] = (len(ranges), sum(w for _, w, _ in kind.params) * H)
        shapes["scratch"] = (dstate[0].shape[0], 2 * (H + G * H))  # dm, a cell's d(c_t), the step's gradient rows
    if prep.whr is not None:
        shapes["dproj"] = (T, P)
        shapes.setdefault("scratch", (dstate[0].shape[0], H))
    if "rmask" in rec.reg:
        shapes["rbuf"] = (dstate[0].shape[0], P)  # dg @ W_hh, before the mask
    if "zh" in rec.reg:
        shapes["zsave"] = (dstate[0].shape[0], P + H)  # d * dh and d * dc, past the step
    grads = _arrays(shapes, rec.x.dtype, pool, (key, "native grads"))
    if "lnsum" in grads:
        grads["lnsum"].fill(0)
    if not input_grad:
        dx, accumulate = None, False
    elif dx is None:
        dx = np.empty(rec.x.shape, rec.x.dtype)
        accumulate = False
    arrays: dict[str, Any] = dict(rec.tape, dx=dx, **grads, **rec.reg)
    if dcs is not None:  # the gradient of every step's cell state (return_states), added step by step
        arrays["dcs"] = dcs
    dh = np.array(dstate[0], order="C", copy=True)
    dc = np.array(dstate[1], order="C", copy=True) if kind.has_cell else None
    if N == 0:
        for g in grads.values():
            g.fill(0)
        if dx is not None and not accumulate:
            dx.fill(0)
    if kblock:  # (and x, for the weight gradients' products)
        arrays["kblock"] = kblock
    args = (1, prep, 1, int(rec.reverse), rec.batch_sizes, rec.offsets, rec.x if kblock else None, dout, dh, dc,
            arrays)
    return _BackwardLoop(args, accumulate, dx, (dh,) if dc is None else (dh, dc), grads)


def _backward_finish(rec: NativeRecord, loop: _BackwardLoop, runner: Runner, pool: Optional[Pool] = None,
                     key: Any = None) -> tuple[OptArray, tuple[Array, ...], tuple[OptArray, ...]]:
    """The weight gradients after a backward loop: the sums of its row ranges' (made inside
    it), or a few large products."""
    grads, arrays = loop.grads, rec.tape
    dW_hr = _at(grads["dproj"], arrays["m"], runner=runner, pool=pool, key=(key, "at hr"))[0] \
        if "dproj" in grads else None
    if "dw" in grads:
        return loop.dx, loop.dstate, _loop_grads(rec, grads["dw"]) + (dW_hr,) + _norm_grads(rec, grads)
    dgx = grads["dgx"]
    # the bias gradients (sums over the rows) come out of the same products: a column of ones
    ones = (np.ones((rec.x.shape[0], 1), dgx.dtype),) if rec.prep.bias is not None else ()
    if "dgh" in grads:  # GRU: the hidden side has its own gradient
        dW_ih, *sums_ih = _at(dgx, rec.x, *ones, runner=runner, pool=pool, key=(key, "at ih"))
        dW_hh, *sums_hh = _at(grads["dgh"], arrays["hprev"], *ones, runner=runner, pool=pool, key=(key, "at hh"))
    else:  # both sides from the same gradient, read once
        dW_ih, dW_hh, *sums_ih = _at(dgx, rec.x, arrays["hprev"], *ones, runner=runner, pool=pool, key=(key, "at"))
        sums_hh = sums_ih
    db_ih, db_hh = (sums_ih[0][:, 0], sums_hh[0][:, 0]) if ones else (None, None)
    return loop.dx, loop.dstate, (dW_ih, dW_hh, db_ih, db_hh, dW_hr) + _norm_grads(rec, grads)


def _loop_grads(rec: NativeRecord, dw: Array) -> tuple[OptArray, ...]:
    """``(dW_ih, dW_hh, db_ih, db_hh)`` from the loop's sums ``dw``, a row range's (G*H,
    columns) each: [x | h_{t-1} | 1], or [x | 1 | h_{t-1} | 1] where the hidden side has its
    own gradient (see struct scan), summed in the ranges' order (a new array)."""
    prep = rec.prep
    Hin, P, ones = prep.H_in, prep.P, int(prep.bias is not None)
    total = dw.sum(axis=0).reshape(prep.kind.num_gates * prep.H, -1)
    hh = Hin + ones if prep.kind.separate_dgh else Hin  # where h_{t-1}'s columns start
    if not ones:
        return total[:, :Hin], total[:, hh:hh + P], None, None
    return total[:, :Hin], total[:, hh:hh + P], total[:, hh - 1 if prep.kind.separate_dgh else -1], total[:, -1]


def _norm_grads(rec: NativeRecord, grads: dict[str, Array]) -> tuple[Array, ...]:
    """A layer-norm kind's gains' and shifts' gradients, in ``kind.params``' order: the
    loop's sums (``lnsum``, a row per row range) added up."""
    if "lnsum" not in grads:
        return ()
    total = grads["lnsum"].sum(axis=0)
    widths = [w * rec.prep.H for _, w, _ in rec.prep.kind.params]
    return tuple(np.split(total, np.cumsum(widths)[:-1]))


def wavefront_backward(recs: Sequence[NativeRecord], douts: Sequence[Array], dstates: Sequence[tuple[Array, ...]],
                       dxs: Sequence[OptArray], pool: Optional[Pool], runner: Runner, team: Any
                       ) -> list[tuple[OptArray, tuple[Array, ...], tuple[OptArray, ...]]]:
    """Backward of :func:`wavefront_forward`, from the top layer down as a wavefront: layer
    ``l``'s step ``t`` as soon as layer ``l + 1`` has made its input gradient rows of step
    ``t`` (layer ``l``'s output gradient, ``douts[l]`` = ``dxs[l + 1]``); then every
    layer's weight gradients.  ``recs`` and the others from the top layer down; a ``dxs``
    entry None: no input gradient."""
    loops = [_backward_loop(rec, dout, dstate, pool, len(recs) - 1 - i, dx, False, ((0, int(rec.batch_sizes[0])),),
                            input_grad=dx is not None)
             for i, (rec, dout, dstate, dx) in enumerate(zip(recs, douts, dstates, dxs))]
    if int(recs[0].batch_sizes[0]):
        N = int(recs[0].batch_sizes[0])
        _native.scan_many([_spec(*loop.args[:4], (0, N), *loop.args[4:], loop.accumulate) for loop in loops], team)
    return [_backward_finish(rec, loop, runner, pool, len(recs) - 1 - i) for i, (rec, loop) in
            enumerate(zip(recs, loops))]


def _at(a: Array, *bs: Array, runner: Runner = SERIAL, pool: Optional[Pool] = None, key: Any = None) -> list[Array]:
    """``a.T @ [b0 | b1 | ...]`` for ``a`` (T, M1) and each ``b`` (T, M_i): weight gradients
    summed over the packed rows, the ``b`` side by side so that ``a`` is read once.  On the
    compiled kernel, the rows of the result split as ``runner`` says (NumPy's BLAS would leave
    its own threads spinning against the next loop's).  Returns one (M1, M_i) view each.
    ``pool`` keeps the packed ``b`` under ``key`` from one call to the next (fresh pages
    cost as much as the packing)."""
    K, M1 = a.shape
    widths = [b.shape[1] for b in bs]
    M = sum(widths)
    if K == 0:
        out = np.zeros((M1, M), a.dtype)
    else:
        nr = _native.panel_width(a.dtype.itemsize)
        size = K * (-(-M // nr) * nr)
        bp = None if pool is None else pool.get(key)
        if bp is None or bp.size < size or bp.dtype != a.dtype:
            bp = aligned_empty(size, a.dtype)
            if pool is not None:
                pool[key] = bp
        bp = bp[:size]
        out = _aligned((M1, M), a.dtype)
        ranges = runner.ranges([K] * M1, M)
        team = runner.team(len(ranges)) if len(ranges) > 1 else None
        if team is not None:  # the team packs B, then a block of rows per thread (each reads all of B)
            _native.gemm_at(a, bp, out, 0, M1, 0, team, min(len(ranges), team.stats()["threads"]),
                            tuple(np.ascontiguousarray(b) for b in bs))
        else:
            col = 0
            for b, w in zip(bs, widths):
                _native.pack(b, bp, K, w, b.strides[0] // b.itemsize, 1, col, M)
                col += w
            runner.run([partial(_native.gemm_at, a, bp, out, r[0], r[1], 0) for r in ranges])
    starts = np.cumsum([0] + widths)
    return [out[:, s:e] for s, e in zip(starts[:-1], starts[1:])]

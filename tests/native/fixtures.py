"""Fixtures for tests/native/driver.c: the compiled loop's calls of real layer runs, the
weight-gradient products and the gate functions, each with the result the host's kernels
give (each run's outputs and gradients checked against the NumPy tier's first), written for
one instruction set variant's packing so that another CPU's build of the same kernels can
replay them.

    python tests/native/fixtures.py OUT.bin [--isa baseline|avx2|avx512]

A loop's call is recorded as its described sizes (``_native.describe``) and its arrays,
grouped into the memory blocks they lie in (views of one array, and arrays that are the
same, stay so), each block's bytes before and after the host's call.
"""
from __future__ import annotations

import argparse
import ctypes
import os
import struct
import sys

import numpy as np

import nprnn
from nprnn.config import override
from nprnn.functional import native

_n = native._native
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # tests/: the shared helpers
from reference import run_layer  # noqa: E402


def _bounds(a: np.ndarray) -> tuple[int, int]:
    try:
        from numpy.lib.array_utils import byte_bounds  # NumPy 2
    except ImportError:
        byte_bounds = np.byte_bounds
    return byte_bounds(a)


def _name(s: str) -> bytes:
    b = s.encode()[:15]
    return b + b"\0" * (16 - len(b))


class Case:
    """One case: named ints, memory blocks (before and after), and named pointers into them."""

    def __init__(self, ints: dict, arrays: dict):
        self.ints = ints
        spans = []  # (low, high, dtype code, key)
        for key, a in arrays.items():
            lo, hi = _bounds(a)
            code = 0 if a.dtype.kind in "iu" else a.dtype.itemsize
            spans.append((lo, hi, code, key))
        spans.sort()
        self.blocks, self.keys = [], []  # block: [lo, hi, code]; key: (name, block, offset)
        for lo, hi, code, key in spans:
            if self.blocks and lo < self.blocks[-1][1] and self.blocks[-1][2] == code:
                self.blocks[-1][1] = max(self.blocks[-1][1], hi)
            else:
                self.blocks.append([lo, hi, code])
            self.keys.append((key, len(self.blocks) - 1, lo - self.blocks[-1][0]))
        self.before = [ctypes.string_at(lo, hi - lo) for lo, hi, _ in self.blocks]
        self.after: list[bytes] = []

    def done(self) -> None:
        self.after = [ctypes.string_at(lo, hi - lo) for lo, hi, _ in self.blocks]

    def write(self, f) -> None:
        f.write(struct.pack("<q", len(self.ints)))
        for k, v in self.ints.items():
            v = list(v) if isinstance(v, (list, tuple)) else [v]
            f.write(_name(k) + struct.pack(f"<q{len(v)}q", len(v), *v))
        f.write(struct.pack("<q", len(self.blocks)))
        for (lo, hi, code), b0, b1 in zip(self.blocks, self.before, self.after):
            f.write(struct.pack("<qq", code, hi - lo) + b0 + b1)
        f.write(struct.pack("<q", len(self.keys)))
        for key, block, off in self.keys:
            f.write(_name(key) + struct.pack("<qq", block, off))


class Recorder:
    """Stands in for the compiled module during the runs: every ``scan`` is recorded."""

    def __init__(self):
        self.cases: list[Case] = []

    def __getattr__(self, name):
        return getattr(_n, name)

    def scan(self, spec):
        ints = dict(_n.describe(spec), case=0, itemsize=spec["itemsize"])
        arrays = {k: v for k, v in spec.items() if isinstance(v, np.ndarray) and k not in ("units", "pcols", "ranges")}
        case = Case(ints, arrays)
        _n.scan(spec)
        case.done()
        self.cases.append(case)


def _layers():
    """Every kind, float32 and float64; the layer-norm kinds in float64 only: their first
    step normalises the zero initial state (variance 0, so 1 / sqrt(1e-5) = 316 multiplies
    its gradient), and in float32 a build's other contraction of a multiply-add moves the
    initial-state gradient by more than the replay's 1e-5 (the float32 kernels are the same
    source, and the PyTorch-oracle tests run them on this machine)."""
    rng = np.random.default_rng(0)
    regularized = {"recurrent_dropout": 0.3, "zoneout": 0.25}  # (masks drawn alike by layers made alike)
    for dtype in (np.float32, np.float64):
        for kind, kw in [("RNN", {}), ("RNN", {"nonlinearity": "relu"}), ("LSTM", {}), ("LSTM", {"proj_size": 5}),
                         ("GRU", {}), ("LayerNormLSTM", {}), ("LayerNormLSTM", {"proj_size": 5}), ("LayerNormGRU", {}),
                         ("LSTM", dict(regularized, proj_size=5)), ("GRU", regularized)]:
            if kind.startswith("LayerNorm") and dtype == np.float32:
                continue  # (float64 only: see _layers' docstring)
            for bidirectional in (False, True):
                x = rng.standard_normal((7, 4, 6)).astype(dtype)
                yield (lambda kind=kind, b=bidirectional, dt=dtype, kw=kw:
                       getattr(nprnn, kind)(6, 11, bidirectional=b, dtype=dt, seed=1, **kw)), x, [7, 5, 5, 2], rng


def record_quantized() -> list[Case]:
    """The loops of nprnn.quantize's int8 and bf16 copies (before the loop, inside it, the
    units split), each run first checked against the NumPy tier's oracle within 1e-5."""
    rec = Recorder()
    saved = native._native, native.compiled
    rng = np.random.default_rng(2)
    try:
        for settings in ({"min_inloop_batch": 16}, {"min_inloop_batch": 0},
                         {"min_unit_split_work": 0, "num_threads": 3}):
            for kind, kw in [("RNN", {}), ("LSTM", {}), ("LSTM", {"proj_size": 5}), ("GRU", {})]:
                for storage in ("int8", "bf16"):
                    m = nprnn.quantize(getattr(nprnn, kind)(6, 20, seed=1, **kw), storage)
                    x = rng.standard_normal((5, 4, 6)).astype(np.float32)
                    with override(backend="numpy"):
                        want = m(x, lengths=[5, 4, 4, 2])[0]
                    native._native = native.compiled = rec
                    with override(**{"backend": "native", "num_threads": 1, **settings}):
                        got = m(x, lengths=[5, 4, 4, 2])[0]
                    native._native, native.compiled = saved
                    np.testing.assert_allclose(got, want, rtol=0, atol=1e-5)
    finally:
        native._native, native.compiled = saved
    return rec.cases


def record_loops() -> list[Case]:
    """Every loop call of the runs, recorded; each run's results are first checked against
    the NumPy tier's at the parity tolerances, so that what the fixtures expect is that."""
    rec = Recorder()
    saved = native._native
    try:
        for settings in ({"min_inloop_batch": 0}, {"min_inloop_batch": 16},  # projection in the loop, before it
                         {"max_unit_split_batch": 64, "min_unit_split_work": 0, "num_threads": 3}):  # parts
            for make, x, lengths, rng in _layers():
                for train in (False, True):
                    m = make()
                    g = rng.standard_normal((x.shape[0], x.shape[1], m._h_out * (1 + m.bidirectional)))
                    g = g.astype(x.dtype)
                    with override(backend="numpy"):
                        want = run_layer(m, x, lengths, g, train)
                    native._native = rec
                    with override(**{"backend": "native", "num_threads": 1, **settings}):
                        got = run_layer(make(), x, lengths, g, train)
                    native._native = saved
                    tol = {"rtol": 1.3e-6, "atol": 1e-5} if x.dtype == np.float32 else {"rtol": 1e-7, "atol": 1e-10}
                    for a, b in zip(got, want):
                        np.testing.assert_allclose(a, b, **tol)
    finally:
        native._native = saved
    return rec.cases


def record_products() -> list[Case]:
    rng = np.random.default_rng(1)
    cases = []
    for dtype in (np.float32, np.float64):
        # blocks of K, pairs of panels and a last odd one, partial panels, short row groups
        for K, M1, M, acc in [(5, 13, 7, 0), (300, 40, 33, 1), (300, 25, 20, 0), (1, 1, 1, 0), (130, 29, 100, 1),
                              (70, 31, 70, 0)]:
            a = rng.standard_normal((K, M1)).astype(dtype)
            b = rng.standard_normal((K, M)).astype(dtype)
            nr = _n.panel_width(a.itemsize)
            bp = np.zeros(K * (-(-M // nr) * nr), dtype)
            _n.pack(b, bp, K, M, M, 1, 0, M)
            c = rng.standard_normal((M1, M)).astype(dtype)
            ints = {"case": 1, "r0": 0, "r1": M1, "K": K, "M": M, "lda": M1, "accumulate": acc,
                    "itemsize": a.itemsize}
            case = Case(ints, {"A": a, "Bp": bp, "C": c})
            _n.gemm_at(a, bp, c, 0, M1, acc)
            case.done()
            cases.append(case)
    return cases


def record_gates() -> list[Case]:
    """exp, tanh, sigmoid on a sweep, against NumPy in extended precision (the bounds of
    tests/test_vector_math.py; float64 only where long double is wider)."""
    cases = []
    extended = np.finfo(np.longdouble).eps < np.finfo(np.float64).eps
    for dtype in (np.float32, np.float64) if extended else (np.float32,):
        lim = 90.0 if dtype == np.float32 else 710.0
        x = np.concatenate([np.linspace(-lim, lim, 20001), np.geomspace(1e-30, 1, 2001), [np.inf, -np.inf, np.nan,
                                                                                         0.0, -0.0]]).astype(dtype)
        for which, bound in ((0, 1.5), (1, 2.0 if dtype == np.float32 else 6.0), (2, 3.0)):
            xl = x.astype(np.longdouble)
            with np.errstate(over="ignore"):
                ref = [np.exp(xl), np.tanh(xl), 1 / (1 + np.exp(-xl))][which].astype(np.float64)
            a = x.copy()
            ints = {"case": 2, "which": which, "n": len(x), "itemsize": a.itemsize, "bound_centiulps": int(bound * 100)}
            case = Case(ints, {"a": a, "ref": ref})
            case.after = list(case.before)  # compared against ref, not replayed
            cases.append(case)
    return cases


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("out")
    ap.add_argument("--isa", default="best", help="the variant whose packing the fixtures use (its vector width)")
    ap.add_argument("--damage", action="store_true", help="change one expected value (the driver must fail)")
    args = ap.parse_args(argv)
    if _n is None:
        print("fixtures: the compiled kernels are not built", file=sys.stderr)
        return 2
    _n.set_isa(args.isa)
    try:
        cases = record_loops() + record_quantized() + record_products() + record_gates()
        vb = _n.panel_width(4) * 2  # a panel is two vectors: panel_width(4) floats = vector bytes / 2
        if args.damage:  # the first loop's last float block: its first value, off by 1e-3
            case = cases[0]
            b = max(i for i, blk in enumerate(case.blocks) if blk[2] == 4)
            v = np.frombuffer(case.after[b], np.float32).copy()
            v[0] += 1e-3 * (1 + abs(v[0]))
            case.after[b] = v.tobytes()
        with open(args.out, "wb") as f:
            f.write(b"NPRNNFX1" + struct.pack("<qq", vb, len(cases)))
            for case in cases:
                case.write(f)
    finally:
        _n.set_isa("best")
    print(f"{args.out}: {len(cases)} cases for {vb}-byte vectors")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""The benchmark suite: nprnn against PyTorch and onnxruntime, one process, one command.

    env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE python -m benchmarks [--quick] [--threads 2]
        [--out benchmarks/results] [--readme]

Every library gets the same number of threads; the timed calls alternate in blocks
(:func:`alternating_medians`), so all three see the same drift in machine load; figures
are medians.  A ratio is the other library's time over nprnn's (> 1: nprnn is faster).
Each case also prints nprnn's GFLOP/s as a fraction of this machine's large-GEMM rate
(NumPy's BLAS, same threads), which bounds the larger cases.

Writes ``results.json`` and ``results.md`` into ``--out``; ``--readme`` puts the Markdown
table into README.md between its ``<!-- speed-table -->`` markers.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import time
import warnings
from dataclasses import asdict, dataclass, field
from functools import partial
from typing import Optional

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))


@dataclass
class Case:
    """One timed case: a layer, its shapes, and what is timed."""

    name: str
    kind: str  # LSTM, GRU
    N: int
    L: int
    H_in: int
    H: int
    layers: int = 1
    bidirectional: bool = False
    mode: str = "inference"  # inference, train, stream (layer.stream().step), call (one step, plain layer call)
    dtype: str = "float32"
    lengths: Optional[tuple] = None  # variable-length batch (packed in torch)
    against: tuple = ("torch", "onnxruntime")
    proj_size: int = 0
    settings: tuple = ()  # (name, value) pairs of nprnn.config for nprnn's calls
    idle: float = 0.0  # > 0: time the first call after this many idle seconds, not a block of calls
    storage: str = ""  # "int8" or "bf16": nprnn.quantize(model, storage) is timed (and nprnn float32 beside it)
    states: bool = False  # return_states=True is timed (and the call without it beside it)
    options: tuple = ()  # (name, value) pairs of nprnn's layer options (the regularizers of issue 27)


def cases(quick: bool) -> list:
    rng = np.random.default_rng(0)
    varlen = tuple(int(v) for v in rng.integers(50, 101, size=32))
    out = []
    for kind in ("LSTM", "GRU"):
        out += [
            Case(f"{kind} N=1 L=100 32->64", kind, 1, 100, 32, 64),
            Case(f"{kind} N=32 L=100 64->128 x2", kind, 32, 100, 64, 128, 2),
            Case(f"{kind} N=64 L=50 256->512 x2", kind, 64, 50, 256, 512, 2),
            Case(f"{kind} N=8 L=200 128->256 bidirectional", kind, 8, 200, 128, 256, 1, True),
            Case(f"{kind} training step N=32 L=100 64->128 x2", kind, 32, 100, 64, 128, 2, mode="train",
                 against=("torch",)),
            Case(f"{kind} variable-length training step (32 of 50-100)", kind, 32, 100, 64, 128, 2, mode="train",
                 lengths=varlen, against=("torch",)),
            Case(f"{kind} float64 training step N=32 L=100 64->128 x2", kind, 32, 100, 64, 128, 2, mode="train",
                 dtype="float64", against=("torch",)),
        ]
    out.append(Case("LSTM N=32 L=100 64->128 x2, projection before the loop", "LSTM", 32, 100, 64, 128, 2,
                    settings=(("min_inloop_batch", 1 << 30),)))
    # the wavefront (layers side by side, each a step behind) and, for its GEMM fraction
    # before and after, the same shape layer after layer
    layer_after_layer = (("min_wavefront_batch", 1 << 30),)
    for mode, suffix in (("inference", ""), ("train", " training step")):
        against = ("torch",) if mode == "train" else ("torch", "onnxruntime")
        out.append(Case(f"LSTM{suffix} N=64 L=100 128->128 x2, wavefront", "LSTM", 64, 100, 128, 128, 2, mode=mode,
                        against=against))
        out.append(Case(f"LSTM{suffix} N=64 L=100 128->128 x2, layer after layer", "LSTM", 64, 100, 128, 128, 2,
                        mode=mode, against=against, settings=layer_after_layer))
    for H in ((128,) if quick else (64, 128)):
        out.append(Case(f"LSTM streaming step N=1 {H}->{H}", "LSTM", 1, 1, H, H, mode="stream",
                        against=("torch", "torch LSTMCell", "onnxruntime")))
    out += stream_cases(quick) + beyond_cases()
    out.append(Case("LSTM one step, plain layer call, N=1 128->128", "LSTM", 1, 1, 128, 128, mode="call",
                    against=("torch", "onnxruntime")))
    if not quick:
        out.append(Case("GRU streaming step N=1 128->128", "GRU", 1, 1, 128, 128, mode="stream",
                        against=("torch", "torch GRUCell", "onnxruntime")))
    return out


def stream_cases(quick: bool) -> list:
    """One stream, big model: the deployment case (issue 22), N=1 and input size = hidden
    size, each row with its limit line (weights read per step over the bandwidth)."""
    ort8 = ("torch", "onnxruntime", "onnxruntime int8")
    out = [Case(f"LSTM N=1 L=100 {H}->{H}", "LSTM", 1, 100, H, H, against=ort8) for H in (256, 512, 1024)]
    out += [Case("GRU N=1 L=100 512->512", "GRU", 1, 100, 512, 512, against=ort8),
            Case("LSTM N=4 L=100 512->512", "LSTM", 4, 100, 512, 512),
            Case("LSTM N=1 L=100 512->512 x2", "LSTM", 1, 100, 512, 512, 2, against=ort8),
            Case("LSTMP N=1 L=100 1024->1024 proj 256", "LSTM", 1, 100, 1024, 1024, proj_size=256,
                 against=("torch",))]
    for H in ((512,) if quick else (256, 512, 1024)):
        out.append(Case(f"LSTM streaming step N=1 {H}->{H}", "LSTM", 1, 1, H, H, mode="stream",
                        against=("torch", "torch LSTMCell", "onnxruntime", "onnxruntime int8")))
    out.append(Case("LSTM N=1 L=100 512->512, first call after 0.5 s idle", "LSTM", 1, 100, 512, 512, idle=0.5,
                    against=("torch", "onnxruntime")))
    out.append(Case("LSTM streaming step N=1 512->512, first step after 0.5 s idle", "LSTM", 1, 1, 512, 512,
                    mode="stream", idle=0.5, against=("torch", "onnxruntime")))
    return out + quantized_cases(quick)


def beyond_cases() -> list:
    """Beyond torch.nn (issue 26): LayerNormLSTM against the TorchScript cell PyTorch users
    write (``benchmarks/torchscript_lstm.py``) and against nprnn's plain LSTM, and every
    state over time against the same call without it."""
    ts = "TorchScript LN-LSTM"
    return [Case("LayerNormLSTM training step N=32 L=100 64->128 x2", "LayerNormLSTM", 32, 100, 64, 128, 2,
                 mode="train", against=(ts, "nprnn LSTM")),
            Case("LayerNormLSTM N=1 L=100 32->64", "LayerNormLSTM", 1, 100, 32, 64, against=(ts,)),
            Case("LSTM N=32 L=100 64->128 x2, return_states=True", "LSTM", 32, 100, 64, 128, 2, states=True,
                 against=("nprnn without return_states",))] + regularizer_cases()


def regularizer_cases() -> list:
    """The regularizers inside the loop (issue 27): a training step with them against the
    same step of the same layer without them (and PyTorch's plain LSTM beside)."""
    vs = ("nprnn without the options", "torch")
    return [Case("LSTM training step N=32 L=100 64->128 x2, recurrent_dropout=0.25 zoneout=0.1 weight_drop=0.2",
                 "LSTM", 32, 100, 64, 128, 2, mode="train", against=vs,
                 options=(("recurrent_dropout", 0.25), ("zoneout", 0.1), ("weight_drop", 0.2))),
            Case("LSTM training step N=32 L=100 64->128 x2, recurrent_dropout=0.25", "LSTM", 32, 100, 64, 128, 2,
                 mode="train", against=vs, options=(("recurrent_dropout", 0.25),))] + min_cases()


def min_cases() -> list:
    """minGRU (issue 29) against the PyTorch log-space form users run (``benchmarks/torch_mingru.py``)
    and against nprnn's GRU; the linear scan alone against the memory's read rate."""
    ls = "PyTorch log-space minGRU"
    return [Case("MinGRU training step N=32 L=1024 256->256 x2", "MinGRU", 32, 1024, 256, 256, 2, mode="train",
                 against=(ls, "nprnn GRU")),
            Case("MinGRU N=1 L=8192 256->256", "MinGRU", 1, 8192, 256, 256, against=(ls,)),
            Case("linear_scan N=1 L=65536 H=256 (out=)", "linear_scan", 1, 65536, 256, 256, mode="scan", against=())]


def quantized_cases(quick: bool) -> list:
    """nprnn.quantize (issue 25): int8 and bf16 nprnn against onnxruntime's float32 and its
    dynamically quantized int8 model, and against nprnn float32."""
    vs = ("nprnn float32", "onnxruntime", "onnxruntime int8")
    out = []
    for H in ((512,) if quick else (256, 512, 1024)):
        out.append(Case(f"int8 LSTM N=1 L=100 {H}->{H}", "LSTM", 1, 100, H, H, storage="int8", against=vs))
    out += [Case("int8 GRU N=1 L=100 512->512", "GRU", 1, 100, 512, 512, storage="int8",
                 against=("nprnn float32", "onnxruntime")),
            Case("int8 LSTM streaming step N=1 1024->1024", "LSTM", 1, 1, 1024, 1024, mode="stream", storage="int8",
                 against=vs),
            Case("int8 LSTM N=32 L=100 64->128 x2", "LSTM", 32, 100, 64, 128, 2, storage="int8", against=vs),
            Case("bf16 LSTM N=1 L=100 1024->1024", "LSTM", 1, 100, 1024, 1024, storage="bf16", against=vs)]
    if not quick:
        out += [Case("int8 LSTM N=64 L=50 256->512 x2", "LSTM", 64, 50, 256, 512, 2, storage="int8", against=vs),
                Case("bf16 LSTM N=1 L=100 512->512", "LSTM", 1, 100, 512, 512, storage="bf16", against=vs),
                Case("bf16 LSTM streaming step N=1 1024->1024", "LSTM", 1, 1, 1024, 1024, mode="stream",
                     storage="bf16", against=vs)]
    return out


def alternating_medians(fns: dict, min_time: float, block: int = 5, min_blocks: int = 3, settle: float = 0.15,
                        block_time: float = 0.1) -> dict:
    """Median seconds per call of each function, timed in alternating blocks of at least
    ``block`` calls and ``block_time`` seconds (a steady state: caches warm, pools awake).
    Before each block the process sleeps ``settle`` seconds, and the block's first call is
    not counted: thread pools spin for a while after their last job (OpenBLAS's, PyTorch's
    OpenMP and onnxruntime's for up to about 0.1-0.2 s), and one library's spinning
    threads would otherwise slow the next one down."""
    times = {k: [] for k in fns}
    sizes = {}
    for name, fn in fns.items():  # calls per block, from one call's time
        fn()
        t0 = time.perf_counter()
        fn()
        sizes[name] = max(block, int(block_time / max(time.perf_counter() - t0, 1e-7)) + 1)
    start = time.perf_counter()
    blocks = 0
    while blocks < min_blocks or time.perf_counter() - start < min_time:
        for name, fn in fns.items():
            time.sleep(settle)
            fn()
            for _ in range(sizes[name]):
                t0 = time.perf_counter()
                fn()
                times[name].append(time.perf_counter() - t0)
        blocks += 1
    return {k: statistics.median(v) for k, v in times.items()}


def first_call_medians(fns: dict, idle: float, repeats: int = 9) -> dict:
    """Median seconds of the first call after ``idle`` seconds without calls (a server's
    sporadic requests: pools asleep, caches cold), each engine in turn."""
    times = {k: [] for k in fns}
    for fn in fns.values():
        fn()
    for _ in range(repeats):
        for name, fn in fns.items():
            time.sleep(idle)
            t0 = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - t0)
    return {k: statistics.median(v) for k, v in times.items()}


def flops(case: Case) -> float:
    """Multiply-adds x 2 of one call (training: forward and backward, three times the forward)."""
    if case.mode == "scan":
        return 0.0
    G = {"MinGRU": 2, "MinLSTM": 3}.get(case.kind, 4 if "LSTM" in case.kind else 3)
    hh = 0 if case.kind.startswith("Min") else 1  # (no hidden-side product)
    D = 2 if case.bidirectional else 1
    rows = sum(case.lengths) if case.lengths else case.N * case.L
    total = 0.0
    for layer in range(case.layers):
        h_in = case.H_in if layer == 0 else D * case.H
        total += D * 2.0 * rows * G * case.H * (h_in + hh * case.H)
    return total * (3 if case.mode == "train" else 1)


def gemm_rate(dtype: str, torch) -> float:
    """This machine's large-GEMM rate (GFLOP/s): the faster of NumPy's BLAS and PyTorch's
    on a 2048-square product, with the threads already set."""
    n = 2048
    a = np.random.default_rng(0).standard_normal((n, n)).astype(dtype)
    b = a.T.copy()
    ta, tb = torch.from_numpy(a), torch.from_numpy(b)
    t = min(alternating_medians({"numpy": lambda: a @ b, "torch": lambda: ta @ tb}, 2.0, block=3, settle=0.1).values())
    return 2.0 * n ** 3 / t / 1e9


# ------------------------------------------------------------------------------- runners
def _build(case: Case, torch):
    import nprnn

    dt = np.dtype(case.dtype)
    kw = {"proj_size": case.proj_size} if case.proj_size else {}
    ours = getattr(nprnn, case.kind)(case.H_in, case.H, num_layers=case.layers, bidirectional=case.bidirectional,
                                     dtype=dt, seed=0, **kw, **dict(case.options))
    if case.kind == "MinGRU":  # PyTorch has none: the log-space form its users run
        sys.path.insert(0, os.path.dirname(HERE))
        from benchmarks.torch_mingru import StackedMinGRU, check, load_nprnn

        theirs = load_nprnn(StackedMinGRU(case.H_in, case.H, case.layers), ours)
        x = np.random.default_rng(5).standard_normal((64, 2, case.H_in)).astype(dt)
        assert check(theirs, ours, x) < 1e-4, "the PyTorch form and nprnn.MinGRU differ"
        return ours, theirs
    if case.kind == "LayerNormLSTM":  # PyTorch has none: the TorchScript cell its users write
        sys.path.insert(0, os.path.dirname(HERE))
        from benchmarks.torchscript_lstm import StackedLSTM, load_nprnn

        return ours, load_nprnn(StackedLSTM(case.H_in, case.H, case.layers), ours)
    theirs = getattr(torch.nn, case.kind)(case.H_in, case.H, num_layers=case.layers,
                                          bidirectional=case.bidirectional, **kw)
    theirs = theirs.double() if case.dtype == "float64" else theirs
    theirs.load_state_dict({k: torch.from_numpy(v) for k, v in ours.state_dict().items()})
    return ours, theirs


def _ort_session(module, threads, with_state, int8=False):
    import onnxruntime as ort

    from nprnn.onnx import to_onnx

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    opts.inter_op_num_threads = 1
    opts.log_severity_level = 3
    # states, when fed, are required inputs: the leanest graph for onnxruntime
    model = to_onnx(module, with_state=with_state, optional_state=False).SerializeToString()
    if int8:  # onnxruntime's dynamic quantization: int8 weights, DynamicQuantizeLSTM
        import tempfile

        from onnxruntime.quantization import QuantType, quantize_dynamic

        with tempfile.TemporaryDirectory() as tmp:
            src, dst = os.path.join(tmp, "f32.onnx"), os.path.join(tmp, "int8.onnx")
            with open(src, "wb") as f:
                f.write(model)
            quantize_dynamic(src, dst, weight_type=QuantType.QInt8)
            with open(dst, "rb") as f:
                model = f.read()
    return ort.InferenceSession(model, opts, providers=["CPUExecutionProvider"])


def _with_settings(case: Case, fn):
    """``fn`` run under the case's nprnn settings."""
    if not case.settings:
        return fn
    from nprnn.config import override

    def run():
        with override(**dict(case.settings)):
            return fn()

    return run


def _quantized(model, case: Case):
    import nprnn

    return nprnn.quantize(model, case.storage)


def quantized_error(case: Case, torch, threads: int) -> dict:
    """The largest output difference of the quantized model from its float32 original on
    the case's input (unit normal, the timed shapes): the accuracy the speed is bought with;
    beside it, onnxruntime's int8 model's own difference where the row times it."""
    ours, _ = _build(case, torch)
    ours.eval()
    x = np.random.default_rng(1).standard_normal((case.L, case.N, case.H_in)).astype(case.dtype)
    ref = ours(x)[0]
    out = {"max_abs_diff": float(np.abs(_quantized(ours, case)(x)[0] - ref).max())}
    if "onnxruntime int8" in case.against and case.mode == "inference":
        try:
            theirs = _ort_session(ours, threads, with_state=False, int8=True).run(None, {"input": x})[0]
        except ImportError:
            return out
        out["ort_int8_max_abs_diff"] = float(np.abs(theirs.reshape(ref.shape) - ref).max())
    return out


def runners(case: Case, torch, threads: int) -> dict:
    """The timed function of nprnn and of each library the case is compared against."""
    import torch.nn.utils.rnn as tr

    if case.mode == "scan":  # the linear scan alone, a and b given
        from nprnn.functional import linear_scan

        rng = np.random.default_rng(1)
        a = rng.uniform(0.5, 1, (case.L, case.N, case.H)).astype(case.dtype)
        b = rng.standard_normal((case.L, case.N, case.H)).astype(case.dtype)
        out = np.empty_like(a)  # (the result's buffer used again: page faults are not the scan's time)
        return {"nprnn": lambda: linear_scan(a, b, out=out)}
    ours, theirs = _build(case, torch)
    dt = np.dtype(case.dtype)
    rng = np.random.default_rng(1)
    D = 2 if case.bidirectional else 1
    fns = {}
    if case.mode in ("stream", "call"):
        return _stream_runners(case, ours, theirs, torch, threads, rng)
    x = rng.standard_normal((case.L, case.N, case.H_in)).astype(dt)
    xt = torch.from_numpy(x)
    g = np.ones((case.L, case.N, D * case.H), dt)
    gt = torch.from_numpy(g)
    if case.mode == "inference":
        ours.eval()
        model = _quantized(ours, case) if case.storage else ours
        fns["nprnn"] = _with_settings(case, (lambda: model(x, return_states=True)) if case.states else lambda: model(x))
        if "nprnn float32" in case.against:
            fns["nprnn float32"] = lambda: ours(x)
        if "nprnn without return_states" in case.against:
            fns["nprnn without return_states"] = lambda: ours(x)
            return fns

        def torch_infer():
            with torch.no_grad():
                theirs(xt)

        fns[_torch_name(case)] = torch_infer
        for name in ("onnxruntime", "onnxruntime int8"):
            if name in case.against:
                sess = _ort_session(ours, threads, with_state=False, int8=name.endswith("int8"))
                fns[name] = partial(sess.run, None, {"input": x})
        return fns
    ours.train()
    if case.lengths:
        lengths = np.asarray(case.lengths)
        lt = torch.from_numpy(lengths)

        def np_train():  # (x requires no gradient, as PyTorch's input here)
            ours(x, lengths=lengths)
            ours.backward(g, input_grad=False)

        def torch_train():
            theirs.zero_grad(set_to_none=False)
            out, _ = theirs(tr.pack_padded_sequence(xt, lt, enforce_sorted=False))
            padded, _ = tr.pad_packed_sequence(out, total_length=case.L)
            padded.backward(gt)
    else:
        def np_train():  # (x requires no gradient, as PyTorch's input here)
            ours(x)
            ours.backward(g, input_grad=False)

        def torch_train():
            theirs.zero_grad(set_to_none=False)
            out, _ = theirs(xt)
            out.backward(gt)

    fns["nprnn"] = _with_settings(case, np_train)
    fns[_torch_name(case)] = torch_train
    if "nprnn GRU" in case.against:  # nprnn's own GRU, same shapes (3 gates, and the hidden-side product)
        import nprnn

        gru = nprnn.GRU(case.H_in, case.H, num_layers=case.layers, dtype=dt, seed=0).train()

        def gru_train():
            gru(x)
            gru.backward(g, input_grad=False)

        fns["nprnn GRU"] = gru_train
    if "nprnn without the options" in case.against:  # the same layer (weights too), no regularizers
        import nprnn

        plain = getattr(nprnn, case.kind)(case.H_in, case.H, num_layers=case.layers, dtype=dt, seed=0).train()

        def plain_step():
            plain(x)
            plain.backward(g, input_grad=False)

        fns["nprnn without the options"] = _with_settings(case, plain_step)
    if "nprnn LSTM" in case.against:  # the same shapes without the layer norms
        import nprnn

        plain = nprnn.LSTM(case.H_in, case.H, num_layers=case.layers, dtype=dt, seed=0).train()

        def plain_train():
            plain(x)
            plain.backward(g, input_grad=False)

        fns["nprnn LSTM"] = plain_train
    return fns


def _torch_name(case: Case) -> str:
    """The name PyTorch's entry goes by in a row: "torch", or the form users write where
    PyTorch has no such layer."""
    for name in ("TorchScript LN-LSTM", "PyTorch log-space minGRU"):
        if name in case.against:
            return name
    return "torch"


def _stream_runners(case, ours, theirs, torch, threads, rng):
    """One step of a stream, N=1, the state carried from call to call."""
    H = case.H
    x = rng.standard_normal((1, 1, case.H_in)).astype(np.float32)
    xt = torch.from_numpy(x)
    lstm = case.kind == "LSTM"
    ours.eval()
    zeros = np.zeros((1, 1, H), np.float32)
    st = {"nprnn": (zeros, zeros) if lstm else zeros}

    stream = (_quantized(ours, case) if case.storage else ours).stream(1)
    float_stream = ours.stream(1)
    x_step = x[0]

    def np_step():
        if case.mode == "stream":
            stream.step(x_step)
        else:  # the plain layer call, its state carried by the caller
            _, st["nprnn"] = ours(x, st["nprnn"])

    tz = torch.zeros(1, 1, H)
    st["torch"] = (tz, tz) if lstm else tz

    def torch_step():
        with torch.no_grad():
            _, st["torch"] = theirs(xt, st["torch"])

    cell = (torch.nn.LSTMCell if lstm else torch.nn.GRUCell)(case.H_in, H)
    cell.load_state_dict({k[:-3]: v for k, v in theirs.state_dict().items()})
    x1 = xt[0]
    st["cell"] = (torch.zeros(1, H), torch.zeros(1, H)) if lstm else torch.zeros(1, H)

    def cell_step():
        with torch.no_grad():
            st["cell"] = cell(x1, st["cell"])

    def ort_step(sess, feeds):
        res = sess.run(None, feeds)
        feeds["h0"] = res[1]
        if lstm:
            feeds["c0"] = res[2]

    fns = {"nprnn": np_step, "torch": torch_step}
    if "nprnn float32" in case.against:
        fns["nprnn float32"] = partial(float_stream.step, x_step)
    for name in ("onnxruntime", "onnxruntime int8"):
        if name in case.against:
            feeds = {"input": x, "h0": zeros}
            if lstm:
                feeds["c0"] = zeros
            fns[name] = partial(ort_step, _ort_session(ours, threads, with_state=True, int8=name.endswith("int8")),
                                feeds)
    cell_name = f"torch {'LSTM' if lstm else 'GRU'}Cell"
    if cell_name in case.against:
        fns[cell_name] = cell_step
    return fns


# -------------------------------------------------------------------- whole-process figures
_COLD = {
    "nprnn": "import numpy as np, nprnn; m = nprnn.LSTM(64, 128, 2); m(np.zeros((10, 1, 64), np.float32))",
    "torch": "import torch; m = torch.nn.LSTM(64, 128, 2); m(torch.zeros(10, 1, 64))",
}
# the peak resident size of this process image (VmHWM; ru_maxrss would count the forked parent's)
_RSS = "; print([l.split()[1] for l in open('/proc/self/status') if l.startswith('VmHWM')][0])"


def cold_start(repeats: int) -> dict:
    """Wall time and peak RSS of a fresh process that imports, builds LSTM(64, 128, 2) and
    runs it once; medians over alternating runs."""
    walls = {k: [] for k in _COLD}
    rss = {k: [] for k in _COLD}
    for _ in range(repeats):
        for name, code in _COLD.items():
            t0 = time.perf_counter()
            res = subprocess.run([sys.executable, "-c", code + _RSS], capture_output=True, text=True, check=True)
            walls[name].append(time.perf_counter() - t0)
            rss[name].append(int(res.stdout.split()[-1]) / 1024)  # KiB -> MiB
    return {k: {"wall_s": statistics.median(walls[k]), "peak_rss_mib": statistics.median(rss[k])} for k in _COLD}


def installed_size(root: str) -> float:
    """MiB on disk of a distribution and everything it requires (recursively)."""
    from importlib import metadata

    from packaging.requirements import Requirement

    seen, todo, total = set(), [root], 0
    while todo:
        name = todo.pop().lower().replace("_", "-")
        if name in seen:
            continue
        seen.add(name)
        try:
            dist = metadata.distribution(name)
        except metadata.PackageNotFoundError:
            continue
        for f in dist.files or ():
            try:
                total += os.path.getsize(dist.locate_file(f))
            except OSError:
                pass
        for req in dist.requires or ():
            r = Requirement(req)
            if r.marker is None or r.marker.evaluate({"extra": ""}):
                todo.append(r.name)
    return total / 2 ** 20


# ------------------------------------------------------------------------------- report
@dataclass
class Result:
    case: dict
    ms: dict
    ratios: dict
    gflops: float
    gemm_fraction: float
    extra: dict = field(default_factory=dict)  # limit: an N=1 row's limit line; busy_before: the machine's load


def weight_bytes(case: Case) -> list:
    """Bytes of weights a time step reads, per loop: a whole-sequence call runs each layer's
    loop in turn (its W_hh and W_hr at every step), a stream's step runs every layer, its
    W_ih too (the projection of one step is a matrix-vector product as well)."""
    G = 4 if "LSTM" in case.kind else 3
    P = case.proj_size or case.H
    size = {"int8": 1, "bf16": 2}.get(case.storage, np.dtype(case.dtype).itemsize)
    per_layer = []
    for layer in range(case.layers):
        h_in = case.H_in if layer == 0 else P
        per_layer.append(size * (G * case.H * P + (case.H * P if case.proj_size else 0)
                                 + (G * case.H * h_in if case.mode == "stream" else 0)))
    return [sum(per_layer)] if case.mode == "stream" else per_layer


def markdown(results, cold, sizes, meta) -> str:
    others = ["torch", "onnxruntime"]
    lines = [f"Measured by `python -m benchmarks` on {meta['date']}: {meta['machine']}, {meta['threads']} threads "
             "each, medians of alternating blocks; ratio = other's time / nprnn's time (> 1: nprnn is faster).", "",
             "| case | nprnn | vs PyTorch | vs onnxruntime | nprnn GFLOP/s (share of GEMM peak) "
             "| per step: measured / limit line |",
             "|---|---|---|---|---|---|"]
    for r in results:
        ms = r.ms["nprnn"] * 1e3
        t = f"{ms:.3g} ms" if ms >= 1 else f"{ms * 1e3:.3g} µs"
        if "max_abs_diff" in r.extra:
            t += f" (max diff {r.extra['max_abs_diff']:.1e}"
            if "ort_int8_max_abs_diff" in r.extra:
                t += f"; onnxruntime int8 {r.extra['ort_int8_max_abs_diff']:.1e}"
            t += ")"
        cols = [f"{r.ratios[o]:.2f}" if o in r.ratios else "—" for o in others]
        extra = "".join(f"; {k} {v:.2f}" for k, v in r.ratios.items() if k not in others and "int8" not in k)
        int8 = "".join(f"; int8 {v:.2f}" for k, v in r.ratios.items() if "int8" in k)
        lim, traffic = r.extra.get("limit"), r.extra.get("traffic")
        limit = (f"{lim['measured_us']:.3g} / {lim['limit_us']:.3g} µs ({lim['level']}, "
                 f"{lim['bytes'] / 2 ** 20:.3g} MiB) = {lim['measured_us'] / lim['limit_us']:.1f}x" if lim else "—")
        if traffic:
            limit = (f"{traffic['bytes'] / 2 ** 20:.0f} MiB at {traffic['GBps']:.1f} GB/s = "
                     f"{traffic['GBps'] / traffic['read_GBps']:.0%} of the {traffic['level']} read rate")
        lines.append(f"| {r.case['name']} | {t} | {cols[0]}{extra} | {cols[1]}{int8} | {r.gflops:.1f} "
                     f"({r.gemm_fraction:.0%}) | {limit} |")
    if cold:
        n, t = cold["nprnn"], cold["torch"]
        lines.append(f"| cold start: import, LSTM(64,128,2), run once | {n['wall_s'] * 1e3:.0f} ms, "
                     f"{n['peak_rss_mib']:.0f} MiB | {t['wall_s'] / n['wall_s']:.1f}x faster, "
                     f"{t['peak_rss_mib'] / n['peak_rss_mib']:.1f}x less RSS | — | — | — |")
    if sizes:
        lines.append(f"| installed size with dependencies | {sizes['nprnn']:.0f} MiB | "
                     f"{sizes['torch'] / sizes['nprnn']:.0f}x smaller ({sizes['torch']:.0f} MiB) | — | — | — |")
    if meta.get("bandwidth"):
        bw = meta["bandwidth"]
        lines.append("")
        lines.append("Limit lines: weights read per step over the read rate of the level they fit in ("
                     + ", ".join(f"{k} {v['GBps']:.0f} GB/s" for k, v in bw.items())
                     + f", {meta['threads']} threads, nprnn's vector-load probe); int8: onnxruntime's dynamically "
                     "quantized model; max diff: the largest output difference of nprnn.quantize's copy from "
                     "float32 on the timed input (and of onnxruntime's int8 model from the same float32 "
                     "model, where the row times it).")
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m benchmarks", description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="fewer cases and shorter timing (under 2 minutes)")
    ap.add_argument("--threads", type=int, default=2, help="threads for every library (default: 2)")
    ap.add_argument("--min-time", type=float, default=None, help="seconds of timing per case (default 3, quick 0.4)")
    ap.add_argument("--only", default="", help="run only the cases whose name contains this text")
    ap.add_argument("--out", default=os.path.join(HERE, "results"), help="folder for results.json and results.md")
    ap.add_argument("--readme", action="store_true", help="write the table into README.md between its markers")
    ap.add_argument("--busy-ok", action="store_true", help="measure even when other work keeps the machine busy")
    args = ap.parse_args(argv)
    from .limits import bandwidths, memory_level, read_rate, step_limit, wait_until_quiet

    share = wait_until_quiet(0.1, 20.0)
    if share > 0.1:
        msg = (f"the machine is {share:.0%} busy with other work (measured over 0.5 s); figures taken beside other "
               "work move by up to 2x")
        if not args.busy_ok:
            print(f"refusing to measure: {msg}; stop it, or pass --busy-ok", file=sys.stderr)
            return 2
        print(f"warning: {msg}", file=sys.stderr)
    min_time = args.min_time if args.min_time is not None else (0.4 if args.quick else 3.0)
    warnings.filterwarnings("ignore")
    for var in ("OPENBLAS_CORETYPE", "OPENBLAS_L2_SIZE"):
        if var in os.environ:
            print(f"note: {var} is set; it slows a current OpenBLAS (run with env -u {var})", file=sys.stderr)
    from threadpoolctl import threadpool_limits

    threadpool_limits(args.threads)
    import torch

    import nprnn

    torch.set_num_threads(args.threads)
    nprnn.set_num_threads(args.threads)
    meta = {"date": time.strftime("%Y-%m-%d"), "threads": args.threads, "nprnn_backend": nprnn.backend(),
            "machine": f"{platform.machine()} {os.cpu_count()} cores", "torch": torch.__version__,
            "numpy": np.__version__, "quick": args.quick}
    try:
        import onnxruntime

        meta["onnxruntime"] = onnxruntime.__version__
    except ImportError:
        onnxruntime = None
    from nprnn.functional import native

    meta["isa"] = native.isa()
    print(f"nprnn {nprnn.__version__} ({nprnn.backend()}, {native.isa()}), torch {torch.__version__}, "
          f"onnxruntime {meta.get('onnxruntime')}, numpy {np.__version__}, {args.threads} threads")
    rates = {dt: gemm_rate(dt, torch) for dt in ("float32", "float64")}
    meta["gemm_gflops"] = rates
    print(f"large-GEMM rate: float32 {rates['float32']:.0f} GFLOP/s, float64 {rates['float64']:.0f} GFLOP/s")
    meta["bandwidth"] = bw = bandwidths(args.threads)
    print("read rate, " + f"{args.threads} threads: "
          + ", ".join(f"{k} ({v['bytes'] / 2 ** 20:.3g} MiB) {v['GBps']:.0f} GB/s" for k, v in bw.items()))
    results = []
    for case in cases(args.quick):
        if args.only and args.only not in case.name:
            continue
        fns = runners(case, torch, args.threads)
        if onnxruntime is None:
            fns = {k: v for k, v in fns.items() if not k.startswith("onnxruntime")}
        share = wait_until_quiet(0.1, 5.0)
        med = first_call_medians(fns, case.idle) if case.idle else alternating_medians(fns, min_time)
        ratios = {k: v / med["nprnn"] for k, v in med.items() if k != "nprnn"}
        gf = flops(case) / med["nprnn"] / 1e9
        r = Result(asdict(case), med, ratios, gf, gf / rates[case.dtype], {"busy_before": share})
        if case.storage and case.mode == "inference":
            r.extra.update(quantized_error(case, torch, args.threads))
        if case.mode == "scan":  # a, b read and h written once, against the read rate of that much memory
            nbytes = 3 * case.L * case.N * case.H * np.dtype(case.dtype).itemsize
            r.extra["traffic"] = {"level": f"{nbytes / 2 ** 20:.0f} MiB ({memory_level(nbytes)})", "bytes": nbytes,
                                  "GBps": nbytes / med["nprnn"] / 1e9, "read_GBps": read_rate(nbytes, args.threads)}
        elif case.N == 1 and not case.idle and not case.kind.startswith("Min"):
            lims = [step_limit(b, args.threads, bw) for b in weight_bytes(case)]
            r.extra["limit"] = {"level": "/".join(dict.fromkeys(lim["level"] for lim in lims)),
                                "bytes": sum(lim["bytes"] for lim in lims),
                                "limit_us": sum(lim["seconds"] for lim in lims) * 1e6,
                                "measured_us": med["nprnn"] / case.L * 1e6}
        results.append(r)
        lim, traffic = r.extra.get("limit"), r.extra.get("traffic")
        if traffic:
            print(f"  {traffic['bytes'] / 2 ** 20:.0f} MiB moved at {traffic['GBps']:.1f} GB/s = "
                  f"{traffic['GBps'] / traffic['read_GBps']:.0%} of the {traffic['level']} read rate "
                  f"({traffic['read_GBps']:.0f} GB/s)")
        print(f"{case.name:52s} nprnn {med['nprnn'] * 1e3:9.3f} ms  "
              + "  ".join(f"{k} {v * 1e3:.3f} ms ({ratios[k]:.2f}x)" for k, v in med.items() if k != "nprnn")
              + (f"  {gf:.1f} GFLOP/s = {r.gemm_fraction:.0%} of GEMM" if gf else "")
              + (f"  step {lim['measured_us']:.3g} us, limit {lim['limit_us']:.3g} us ({lim['level']})" if lim else "")
              + (f"  [machine {share:.0%} busy before]" if share > 0.1 else ""), flush=True)
    cold = sizes = None
    if not args.only:
        cold = cold_start(3 if args.quick else 7)
        print(f"cold start: nprnn {cold['nprnn']['wall_s'] * 1e3:.0f} ms {cold['nprnn']['peak_rss_mib']:.0f} MiB, "
              f"torch {cold['torch']['wall_s'] * 1e3:.0f} ms {cold['torch']['peak_rss_mib']:.0f} MiB")
        sizes = {"nprnn": installed_size("nprnn"), "torch": installed_size("torch")}
        print(f"installed with dependencies: nprnn {sizes['nprnn']:.0f} MiB, torch {sizes['torch']:.0f} MiB")
    os.makedirs(args.out, exist_ok=True)
    with open(os.path.join(args.out, "results.json"), "w") as f:
        json.dump({"meta": meta, "results": [asdict(r) for r in results], "cold_start": cold, "installed_mib": sizes},
                  f, indent=1)
    table = markdown(results, cold, sizes, meta)
    with open(os.path.join(args.out, "results.md"), "w") as f:
        f.write(table)
    print("\n" + table)
    if args.readme:
        one_stream = {c.name for c in stream_cases(False)}
        stream_table = markdown([r for r in results if r.case["name"] in one_stream], None, None, meta)
        readme = os.path.join(HERE, os.pardir, "README.md")
        text = open(readme).read()
        for marker, content in (("speed-table", table), ("stream-speed-table", stream_table)):
            start, end = f"<!-- {marker} -->", f"<!-- /{marker} -->"
            if start not in text or end not in text:
                print(f"README.md has no {start} ... {end} markers; table not written", file=sys.stderr)
                return 1
            head, rest = text.split(start, 1)
            _, tail = rest.split(end, 1)
            text = head + start + "\n" + content + end + tail
        tmp = readme + ".tmp"
        with open(tmp, "w") as f:
            f.write(text)
        os.replace(tmp, readme)
    return 0

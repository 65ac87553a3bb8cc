"""The compiled quantized products and loops (issue 25) against their NumPy oracle
(nprnn.functional.quant): every path's int32 sums (plain C, AVX2, AVX-512 VNNI, AMX)
equal the oracle's, product by product;
every bf16 path makes the oracle's float32 sums bit for bit; the AVX2 and plain-C paths,
forced on this machine, give the VNNI / vdpbf16ps path's layer outputs bit for bit; and a
quantized layer computed on the compiled tier agrees with the NumPy tier within 1e-5."""
import numpy as np
import pytest

import nprnn
from nprnn import config
from nprnn.functional import native, qnative, quant

needs_native = pytest.mark.skipif(native.compiled is None, reason="the compiled tier is not built")
SHAPES = [(1, 5, 3), (3, 37, 50), (7, 256, 1024), (13, 130, 33), (2, 1024, 17),
          (16, 64, 16), (37, 128, 50), (100, 256, 129)]  # (whole 16-row blocks, K a multiple of 64: AMX's tiles)


@pytest.fixture
def each_path():
    """Runs the body once per quantized path this CPU has, then restores the best."""
    yield native.compiled.qpaths()
    native.compiled.set_qpath("best")


def _activations(rng, n, K):
    x = rng.standard_normal((n, K)).astype(np.float32) * rng.uniform(0.01, 10, (n, 1)).astype(np.float32)
    if n >= 3:
        x[0] = np.abs(x[0])  # all positive
        x[1] = -np.abs(x[1])  # all negative
        x[2] = 0  # all zero
    return x


@needs_native
@pytest.mark.parametrize("n, K, M", SHAPES)
def test_every_int8_path_makes_the_oracles_integer_sums(n, K, M, each_path):
    rng = np.random.default_rng(K + M)
    x = _activations(rng, n, K)
    q, scale, sums = quant.quantize_weights_int8(rng.standard_normal((M, K)).astype(np.float32))
    qx, x_scale, zero = quant.quantize_rows_uint8(x)
    want = quant.int8_sums(qx, zero, q, sums)
    w = qnative.packed(q, "int8")
    y_want = quant.int8_linear(x, q, scale, sums, np.arange(M, dtype=np.float32))
    for path in each_path["int8"]:
        native.compiled.set_qpath(path)
        got = np.full((n, M), -1, np.int32)
        native.compiled.qlinear(x, w, 1, M, scale, sums, None, np.empty((n, M), np.float32), got)
        np.testing.assert_array_equal(got, want, err_msg=path)
        y = np.empty((n, M), np.float32)
        native.compiled.qlinear(x, w, 1, M, scale, sums, np.arange(M, dtype=np.float32), y, None)
        np.testing.assert_allclose(y, y_want, rtol=1e-6, atol=1e-6, err_msg=path)


@needs_native
@pytest.mark.parametrize("n, K, M", SHAPES)
def test_every_bf16_path_makes_the_oracles_float_sums_bit_for_bit(n, K, M, each_path):
    """(Except sums that fall below 2^-126: vdpbf16ps flushes them to zero, the emulations
    keep them; no value here comes near.)"""
    rng = np.random.default_rng(K * M)
    x = _activations(rng, n, K)
    x[-1, :2] = [1e-39, -3e-40]  # denormals: read as zero by every path (vdpbf16ps's DAZ)
    bits = quant.to_bf16_bits(rng.standard_normal((M, K)).astype(np.float32))
    bits[0, :2] = [0x0001, 0x8040]  # denormal weights
    want = quant.bf16_linear(x, bits)
    w = qnative.packed(bits, "bf16")
    for path in each_path["bf16"]:
        native.compiled.set_qpath(path)
        got = np.empty((n, M), np.float32)
        native.compiled.qlinear(x, w, 2, M, None, None, None, got, None)
        np.testing.assert_array_equal(got, want, err_msg=path)


def _model(kind, **kw):
    return getattr(nprnn, kind)(24, 40, seed=1, **kw).eval()


CASES = [("LSTM", {}), ("LSTM", {"proj_size": 20}), ("GRU", {}), ("RNN", {}), ("RNN", {"nonlinearity": "relu"}),
         ("LSTM", {"num_layers": 2, "bidirectional": True}), ("GRU", {"num_layers": 2, "bidirectional": True}),
         ("LSTM", {"proj_size": 17, "num_layers": 2, "bidirectional": True})]


def _both_tiers(q, *args, **kw):
    got = q(*args, **kw)
    native.set_backend("numpy")
    try:
        want = q(*args, **kw)
    finally:
        native.set_backend("native")
    return got, want


def _flat(out):
    if isinstance(out, tuple):
        return np.concatenate([_flat(o) for o in out])
    return np.asarray(out).ravel()


@needs_native
@pytest.mark.parametrize("storage", ["int8", "bf16"])
@pytest.mark.parametrize("kind, kw", CASES)
@pytest.mark.parametrize("split", [False, True])
def test_the_compiled_loop_agrees_with_the_numpy_tier(kind, kw, storage, split):
    """Padded with lengths=, every kind and shape; `split`: the hidden units split across
    two parts (two threads where there are two) as a small batch of a large model is."""
    if native.backend() != "native":
        pytest.skip("the compiled tier is turned off")
    q = nprnn.quantize(_model(kind, **kw), storage)
    x = np.random.default_rng(3).standard_normal((9, 3, 24)).astype(np.float32) * 2
    with config.override(min_unit_split_work=0 if split else 10**12, max_unit_split_batch=8, num_threads=2):
        got, want = _both_tiers(q, x, lengths=[9, 5, 2])
        assert max(k[1] for k in q._prepared) == (2 if split else 1)  # the parts the loop ran in
    np.testing.assert_allclose(_flat(got), _flat(want), rtol=0, atol=1e-5)


@needs_native
@pytest.mark.parametrize("storage", ["int8", "bf16"])
@pytest.mark.parametrize("kind, kw", CASES[:5])
@pytest.mark.parametrize("N", [1, 16])
def test_each_step_agrees_with_the_numpy_tier_given_the_same_state(kind, kw, storage, N):
    """Teacher forcing: at each of 30 steps both tiers start from the compiled tier's state
    and take the same input; their new states agree within 1e-5.  (Over a whole sequence the
    two tiers' states differ by an ulp now and then, and int8's per-row quantization of the
    state can round such a value to the neighbouring level: one level, about range / 255,
    is then the difference, as it would be between any two correct implementations.)
    N=16 projects the input inside the loop, N=1 before it."""
    if native.backend() != "native":
        pytest.skip("the compiled tier is turned off")
    q = nprnn.quantize(_model(kind, **kw), storage)
    compiled, oracle = q.stream(N), q.stream(N)
    rng = np.random.default_rng(6)
    for _ in range(30):
        x = rng.standard_normal((N, 24)).astype(np.float32) * 2
        oracle.state = compiled.state
        got = compiled.step(x)
        native.set_backend("numpy")
        try:
            want = oracle.step(x)
        finally:
            native.set_backend("native")
        np.testing.assert_allclose(got, want, rtol=0, atol=1e-5)
        np.testing.assert_allclose(_flat(compiled.state), _flat(oracle.state), rtol=0, atol=1e-5)


@needs_native
@pytest.mark.parametrize("storage", ["int8", "bf16"])
@pytest.mark.parametrize("kind, kw", [("LSTM", {"proj_size": 20}), ("GRU", {"num_layers": 2}), ("RNN", {})])
def test_a_large_batch_split_by_rows_equals_one_loop_bit_for_bit(kind, kw, storage):
    """From 32 rows a quantized loop splits its batch into row ranges, one per thread, each
    its own loop (whole 16-row blocks where it can: AMX's), every row quantized once: the
    outputs are those of one loop over every row, bit for bit; variable lengths too.
    Against the NumPy tier over whole sequences: 99 % of the outputs within 1e-5, the rest
    where a one-ulp difference of the state moved a quantized value to its neighbour (the
    per-step agreement is the teacher-forced test's)."""
    if native.backend() != "native":
        pytest.skip("the compiled tier is turned off")
    q = nprnn.quantize(getattr(nprnn, kind)(64, 48, seed=5, **kw).eval(), storage)
    x = np.random.default_rng(7).standard_normal((6, 40, 64)).astype(np.float32)
    lengths = np.random.default_rng(8).integers(1, 7, 40)
    with config.override(num_threads=2):
        assert q._ranges([40] * 6) == [(0, 16), (16, 40)]
        split = q(x, lengths=lengths)
    with config.override(num_threads=1):
        assert q._ranges([40] * 6) is None
        one = q(x, lengths=lengths)
    np.testing.assert_array_equal(_flat(split), _flat(one))
    native.set_backend("numpy")
    try:
        want = q(x, lengths=lengths)
    finally:
        native.set_backend("native")
    diff = np.abs(_flat(split) - _flat(want))
    assert (diff <= 1e-5).mean() >= 0.99 and diff.max() < 2e-2, (diff.max(), (diff > 1e-5).mean())


@needs_native
@pytest.mark.parametrize("storage", ["int8", "bf16"])
def test_forced_paths_give_the_best_paths_outputs_bit_for_bit(storage, each_path):
    """AVX2 and plain C (and for bf16 the AVX-512 emulation) forced on this machine: the
    same layer outputs as the best path, to the bit, whole model (LSTMP stack, GRU)."""
    if native.backend() != "native":
        pytest.skip("the compiled tier is turned off")
    rng = np.random.default_rng(4)
    xs = [rng.standard_normal((12, N, 24)).astype(np.float32) for N in (2, 16)]  # projected before / in the loop
    models = [nprnn.quantize(_model("LSTM", proj_size=20, num_layers=2), storage),
              nprnn.quantize(_model("GRU", bidirectional=True), storage)]
    wide = nprnn.quantize(nprnn.LSTM(64, 64, num_layers=2, seed=2).eval(), storage)  # K = 64: AMX's tiles at N=16
    xs64 = [rng.standard_normal((12, N, 64)).astype(np.float32) for N in (2, 16)]
    best = [_flat(m(x)) for m in models for x in xs] + [_flat(wide(x)) for x in xs64]
    for path in each_path[storage][:-1]:
        native.compiled.set_qpath(path)
        for m in models + [wide]:
            m._prepared.clear()
        np.testing.assert_array_equal(np.concatenate([_flat(m(x)) for m in models for x in xs]
                                                     + [_flat(wide(x)) for x in xs64]),
                                      np.concatenate(best), err_msg=path)


@needs_native
def test_the_path_in_use_is_named_and_an_unknown_one_refused():
    on = native.backend() == "native"
    assert qnative.path("int8") == (native.compiled.qpaths()["int8"][-1] if on else None)
    assert qnative.path("bf16") == (native.compiled.qpaths()["bf16"][-1] if on else None)
    with pytest.raises(ValueError, match="not available on this CPU"):
        native.compiled.set_qpath("avx1024")


@pytest.mark.parametrize("storage", ["int8", "bf16"])
def test_nan_and_infinity_in_the_input_give_nan_rows_not_garbage(storage):
    """NaN propagates as in float32; an infinity has no int8 scale, so int8 makes its row's
    products NaN (bf16 keeps the infinity, as float32 arithmetic does)."""
    q = nprnn.quantize(nprnn.GRU(6, 8, seed=0), storage)
    x = np.random.default_rng(5).standard_normal((4, 2, 6)).astype(np.float32)
    x[1, 0, 2] = np.nan
    x[2, 1, 0] = np.inf
    out, _ = q(x)
    assert np.isnan(out[1:, 0]).all()  # from the bad step on, in that sequence
    assert np.isfinite(out[0]).all() and np.isfinite(out[:2, 1]).all()
    if storage == "int8":
        assert np.isnan(out[2:, 1]).all()

"""Two scans side by side (nprnn.threads): pipelined layers and concurrent directions.

The real thresholds only let large runs go side by side; here they are lowered so that
small configurations take those paths, and each test checks that they did.
"""
import sys
import threading

import numpy as np
import pytest
from reference import LAYERS, compare, concurrent_config, make_inputs, run_nprnn, run_torch

import nprnn
from nprnn import threads


@pytest.fixture(autouse=True)
def numpy_tier(config):
    """Two scans side by side is how the NumPy tier uses a second core (the compiled tier
    splits the batch instead: tests/test_native.py)."""
    config(backend="numpy")


class _Count:
    """How many side-by-side runs happened since it was made (nprnn.threads.activity)."""

    def __init__(self):
        self.start = threads.activity["side by side"]

    def __len__(self):
        return threads.activity["side by side"] - self.start


@pytest.fixture
def side_by_side(config):
    """Lower the thresholds, allow two threads, and count the side-by-side runs."""
    config(min_step_work=0, min_train_step_work=0, chunk_steps=2, num_threads=2)
    return _Count()


@pytest.fixture
def one_at_a_time(config, monkeypatch):
    config(num_threads=1)


CONFIGS = [concurrent_config(np.random.default_rng(9000 + i), packed=i % 2 == 1) for i in range(80)]


@pytest.mark.torch
@pytest.mark.parametrize("cfg", CONFIGS, ids=[f"{i}-{c['kind']}-{c.get('mode', 'padded')}" for i,
                                              c in enumerate(CONFIGS)])
def test_side_by_side_matches_torch(cfg, side_by_side):
    case = make_inputs(cfg)
    got = run_nprnn(cfg, case)
    assert len(side_by_side) >= 2, "the forward and the backward did not both run side by side"
    compare(cfg, got, run_torch(cfg, case))


def test_configs_cover_both_ways_of_going_side_by_side():
    assert any(c["bidirectional"] for c in CONFIGS)
    assert any(not c["bidirectional"] and c["num_layers"] == 3 for c in CONFIGS)
    assert {c.get("mode") for c in CONFIGS} == {None, "packed", "lengths"}
    assert {c["kind"] for c in CONFIGS} == set(LAYERS)


@pytest.mark.parametrize("cfg", CONFIGS[:40], ids=[f"{i}-{c['kind']}" for i, c in enumerate(CONFIGS[:40])])
def test_side_by_side_equals_one_at_a_time(config, cfg, monkeypatch):
    """Without PyTorch: the same numbers either way (float64: to rounding; chunked
    products may round their last bit differently)."""
    cfg = dict(cfg, dtype="float64")
    case = make_inputs(cfg)
    config(num_threads=1)
    want = run_nprnn(cfg, case)
    config(min_step_work=0)
    config(min_train_step_work=0)
    config(chunk_steps=2)
    config(num_threads=2)
    got = run_nprnn(cfg, case)
    for key, w in want.items():
        np.testing.assert_allclose(got[key], w, rtol=1e-12, atol=1e-14, err_msg=key)


@pytest.mark.parametrize("chunk", [1, 3, 100])
def test_pipeline_any_chunk_size_and_repeatable(config, chunk, side_by_side, monkeypatch):
    config(chunk_steps=chunk)
    m = nprnn.GRU(3, 5, num_layers=3, seed=0, dtype=np.float64)
    x = np.random.default_rng(0).standard_normal((11, 4, 3))
    lengths = [11, 7, 3, 9]
    first = m(x, lengths=lengths)
    second = m(x, lengths=lengths)
    config(num_threads=1)
    alone = m(x, lengths=lengths)
    if chunk * 2 <= 11:
        assert len(side_by_side) == 2
    np.testing.assert_array_equal(first[0], second[0])  # same settings: same bits
    np.testing.assert_array_equal(first[1], second[1])
    np.testing.assert_allclose(first[0], alone[0], rtol=1e-12, atol=1e-14)
    np.testing.assert_allclose(first[1], alone[1], rtol=1e-12, atol=1e-14)


def test_pipeline_small_steps_never_run_side_by_side(config, side_by_side, monkeypatch):
    """Steps whose batch has shrunk below MIN_STEP_WORK gate values do not run beside
    the other stage's: forward, they wait for the stage below to finish; backward (where
    they come first), for the stage above to be past its own."""
    config(chunk_steps=1)
    monkeypatch.setattr(nprnn.threads, "side_by_side_pays", lambda *a, **k: threads.get_num_threads() > 1)
    m = nprnn.GRU(3, 4, num_layers=2, seed=0, dtype=np.float64)  # 12 gate values per row
    x = np.random.default_rng(0).standard_normal((10, 5, 3))
    lengths = [10, 9, 6, 3, 2]  # batch sizes 5,5,4,3,3,3,2,2,2,1
    g = np.random.default_rng(1).standard_normal((10, 5, 4))

    def run():
        out, h = m(x, lengths=lengths)
        return (out, h) + m.backward(g)

    config(num_threads=1)
    want = run()
    config(num_threads=2)
    waits = []
    real_wait = threads.Stream.wait
    monkeypatch.setattr(threads.Stream, "wait", lambda self, end: waits.append(end) or real_wait(self, end))
    config(min_step_work=3 * 12)  # steps of 1 or 2 rows are small: rows 23..29
    got = run()
    assert len(side_by_side) == 2  # forward and backward
    # forward: the four small steps (of 2, 2, 2 and 1 rows) each wait for all 30 rows (and
    # backward's first step, last in its order, does too); backward, from the end: the four
    # small steps each wait until the stage above is past rows 23..29, the last 7 rows
    assert waits.count(30) == 4 + 1 and waits.count(30 - 23) == 4
    for a, b in zip(got, want):
        np.testing.assert_allclose(a, b, rtol=1e-12, atol=1e-14)


def test_pipeline_with_dropout_in_training_runs_one_at_a_time(side_by_side):
    m = nprnn.LSTM(3, 4, num_layers=2, dropout=0.5, seed=0)
    m(np.ones((8, 2, 3), np.float32))
    assert len(side_by_side) == 0  # the mask covers a layer's whole output
    m.eval()
    m(np.ones((8, 2, 3), np.float32))
    assert len(side_by_side) == 1


def test_bidirectional_with_dropout_goes_side_by_side_and_matches(config, side_by_side, monkeypatch):
    x = np.random.default_rng(1).standard_normal((6, 3, 2))
    runs = []
    for n in (2, 1):
        config(num_threads=n)
        m = nprnn.GRU(2, 3, num_layers=2, dropout=0.4, bidirectional=True, seed=3, dtype=np.float64)
        out, h = m(x)
        dx, dh = m.backward(np.ones_like(out))
        runs.append((out, h, dx, dh, m.grads))
    assert len(side_by_side) == 4  # one per layer, forward and backward, in the first run only
    for a, b in zip(runs[0][:4], runs[1][:4]):
        np.testing.assert_allclose(a, b, rtol=1e-12, atol=1e-14)
    for k in runs[0][4]:
        np.testing.assert_allclose(runs[0][4][k], runs[1][4][k], rtol=1e-12, atol=1e-14)


def _fail_on(monkeypatch, layer_index):
    """Make the scan of one layer-direction raise."""
    real = nprnn.functional.stack.direction_forward

    def failing(kind, x, params, state0, batch_sizes, reverse, out, train, options, pool, key, *rest):
        if key == layer_index:
            raise MemoryError(f"boom in {key}")
        return real(kind, x, params, state0, batch_sizes, reverse, out, train, options, pool, key, *rest)

    monkeypatch.setattr(nprnn.functional.stack, "direction_forward", failing)


@pytest.mark.parametrize("failing", [0, 1, 2])
def test_a_failing_stage_raises_and_nothing_hangs(failing, side_by_side, monkeypatch):
    _fail_on(monkeypatch, failing)
    m = nprnn.LSTM(3, 4, num_layers=3, seed=0)
    error = _error_within(30, lambda: m(np.ones((9, 2, 3), np.float32)))
    assert str(error) == f"boom in {failing}"
    assert threads._blas["depth"] == 0  # the BLAS limit was lifted


def _error_within(seconds, call):
    """Run ``call`` on a thread; the MemoryError it raised, failing if it is still
    running after ``seconds`` (a stage waiting forever)."""
    result = {}

    def target():
        try:
            call()
        except MemoryError as exc:
            result["error"] = exc

    t = threading.Thread(target=target, daemon=True)
    t.start()
    t.join(timeout=seconds)
    assert not t.is_alive(), "a stage kept waiting after another failed"
    return result["error"]


@pytest.mark.parametrize("failing", [0, 1, 2])
def test_a_failing_backward_stage_raises_and_nothing_hangs(failing, side_by_side, monkeypatch):
    real = nprnn.functional.stack.direction_backward

    def failing_backward(rec, dout, dstate, pool, key, *rest, **kw):
        if key == failing:
            raise MemoryError(f"boom in {key}")
        return real(rec, dout, dstate, pool, key, *rest, **kw)

    monkeypatch.setattr(nprnn.functional.stack, "direction_backward", failing_backward)
    m = nprnn.GRU(3, 4, num_layers=3, seed=0)

    def forward_and_backward():  # (in one thread: records belong to the thread that ran forward)
        out, _ = m(np.ones((9, 2, 3), np.float32))
        m.backward(np.ones_like(out))

    error = _error_within(30, forward_and_backward)
    assert str(error) == f"boom in {failing}"


def test_the_stage_below_stops_early_when_the_one_above_fails(side_by_side, monkeypatch):
    """Layer 1 fails at once: layer 0 (on the other thread) stops at its next chunk
    instead of running its 1000 steps to the end."""
    _fail_on(monkeypatch, 1)
    start = nprnn.threads.activity["groups"]  # only layer 0's stage begins groups: layer 1 fails first
    m = nprnn.GRU(3, 64, num_layers=2, seed=0)  # big enough steps to release the GIL
    interval = sys.getswitchinterval()
    sys.setswitchinterval(1e-4)  # let the failing thread in soon, whatever the other does
    try:
        with pytest.raises(MemoryError, match="boom in 1"):
            m(np.ones((1000, 16, 3), np.float32))
    finally:
        sys.setswitchinterval(interval)
    assert 0 < nprnn.threads.activity["groups"] - start < 250  # of 500 groups


@pytest.mark.parametrize("threads_setting,blas_during", [(2, 1), (4, 2)])
def test_blas_held_to_half_during_and_restored_after(config, threads_setting, blas_during, side_by_side, monkeypatch):
    config(num_threads=threads_setting)
    controller = threads._blas_controller()
    if controller is None or not controller.lib_controllers:
        pytest.skip("threadpoolctl sees no BLAS here")
    before = [c.num_threads for c in controller.lib_controllers]
    seen = []
    real = nprnn.functional.stack.direction_forward

    def spying(*args):
        seen.append([c.num_threads for c in threads._blas_controller().lib_controllers])
        return real(*args)

    monkeypatch.setattr(nprnn.functional.stack, "direction_forward", spying)
    nprnn.GRU(3, 4, bidirectional=True, seed=0)(np.ones((5, 2, 3), np.float32))
    assert len(side_by_side) == 1
    assert seen and all(all(n == blas_during for n in s) for s in seen)
    after = [c.num_threads for c in controller.lib_controllers]  # num_threads asks the library now
    assert after == before


def test_small_runs_and_one_thread_go_one_at_a_time(config, monkeypatch):
    calls = _Count()
    config(num_threads=2)
    nprnn.LSTM(3, 4, num_layers=2, seed=0)(np.ones((40, 2, 3), np.float32))  # 2*4*4 gate values a step
    config(min_step_work=0)
    config(num_threads=1)
    nprnn.LSTM(3, 4, num_layers=2, seed=0)(np.ones((40, 2, 3), np.float32))
    assert len(calls) == 0


def test_default_and_validation(config, monkeypatch):
    config(num_threads=None)
    assert nprnn.get_num_threads() == (threads._available_cpus() if threads._blas_controller() else 1)
    nprnn.set_num_threads(3)
    assert nprnn.get_num_threads() == 3
    for bad in (0, -1, 1.5, True, "2"):
        with pytest.raises(ValueError, match=r"set_num_threads: expected a positive int, but got"):
            nprnn.set_num_threads(bad)
    assert nprnn.get_num_threads() == 3


def test_training_on_threads_needs_more_work_a_step(config, side_by_side, monkeypatch):
    """Two threads pay later in training than in inference (MIN_TRAIN_STEP_WORK)."""
    m = nprnn.GRU(3, 4, num_layers=2, seed=0, dtype=np.float64)
    x = np.ones((8, 2, 3))
    config(min_train_step_work=2 * 3 * 4 + 1)  # 2 rows * 3 gates * 4 hidden a step
    m(x)
    assert not side_by_side
    m.eval()
    m(x)
    assert len(side_by_side) == 1
    config(min_train_step_work=2 * 3 * 4)
    m.train()
    m(x)
    assert len(side_by_side) == 2


def test_set_helper_process_is_a_no_op_that_warns():
    with pytest.warns(FutureWarning, match="set_helper_process\\(\\) does nothing"):
        nprnn.set_helper_process(True)
    with pytest.warns(FutureWarning, match="always False"):
        assert nprnn.get_helper_process() is False



@pytest.mark.parametrize("batch", [2, 3, 7, 8, 31, 32, 33, 100, 512])
@pytest.mark.parametrize("threads_", [2, 3])
def test_row_ranges_of_equal_lengths_are_those_of_the_general_split(config, batch, threads_):
    """Equal lengths take a shortcut, one range per thread; its ranges are the ones the
    general split (``_split_rows``, row by row) makes of the same lengths."""
    config(num_threads=threads_, min_split_work=0)
    for n in (1, 5, 100):
        got = threads.row_ranges([n] * batch, 64)
        assert got == threads._split_rows([n] * batch, len(got))
        assert got[0][0] == 0 and got[-1][1] == batch and all(a < b for a, b in got)
        assert all(b == c for (_, b), (c, _) in zip(got[:-1], got[1:]))
        assert len(got) == min(threads_, batch)

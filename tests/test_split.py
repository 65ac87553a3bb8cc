"""The compiled tier's small-batch paths: the input projection before the loop, and the
hidden units split across threads that meet every step (``_native.Team``).

* the unit split equals the one-thread run bit for bit, for every kind, in both
  directions, with sequences of several lengths, forward and backward, for 1-4 threads
  (each output column is the same sum in the same order, whichever thread computes it);
* the projection before the loop equals the in-loop projection to rounding (the bias is
  added at another point of the sum), and the NumPy tier at the parity tolerances;
* a stream whose steps are split equals the sequence call;
* a loop whose team is busy runs alone, with the same result, and says so in the team's
  counts; a kernel given a bad split refuses it.
"""
import os
import threading

import numpy as np
import pytest
from reference import run_layer, tolerances

import nprnn
from nprnn.functional import native
from nprnn.parallel import threads

pytestmark = pytest.mark.skipif(native._native is None, reason="the compiled kernels are not built")

KINDS = ["RNN", "RNN_relu", "LSTM", "LSTMP", "GRU"]


def _layer(kind, H_in, H, dtype, **kw):
    if kind == "LSTMP":
        return nprnn.LSTM(H_in, H, proj_size=H // 2 + 1, dtype=dtype, seed=3, **kw)
    if kind == "RNN_relu":
        return nprnn.RNN(H_in, H, nonlinearity="relu", dtype=dtype, seed=3, **kw)
    if kind.startswith("LayerNorm"):  # the norms' gains and shifts away from 1 and 0
        m = getattr(nprnn, kind)(H_in, H, dtype=dtype, seed=3, **kw)
        with nprnn.writable(m):
            for name, value in m.named_parameters():
                if name.startswith("ln_"):
                    value += np.random.default_rng(5).uniform(-0.5, 0.5, value.shape)
        return m
    return getattr(nprnn, kind)(H_in, H, dtype=dtype, seed=3, **kw)


def _split_everything(config, threads_):
    """Settings under which every call of the tests splits its units over ``threads_``;
    returns the team those calls use (None for one thread)."""
    config(backend="native", num_threads=threads_, max_unit_split_batch=64, min_unit_split_work=0)
    return threads.team(threads_)


def _runs(team):
    return 0 if team is None else team.stats()["runs"]


@pytest.mark.parametrize("train", [False, True], ids=["eval", "train"])
@pytest.mark.parametrize("kind", KINDS)
def test_unit_split_is_bit_for_bit(config, kind, train):
    rng = np.random.default_rng(11)
    m = _layer(kind, 6, 37, np.float64, num_layers=2, bidirectional=True)
    x = rng.standard_normal((9, 3, 6))
    lengths = [9, 4, 6]
    g = rng.standard_normal((9, 3, 2 * m._h_out))
    config(backend="native", num_threads=1)
    want = run_layer(m, x, lengths, g, train)
    for n in (1, 2, 3, 4):
        team = _split_everything(config, n)
        before = _runs(team)
        got = run_layer(m, x, lengths, g, train)
        if n > 2:  # the split did happen, on the team (with 2 threads, a direction gets one each)
            assert _runs(team) > before
        for a, b in zip(want, got):
            np.testing.assert_array_equal(a, b)


def test_jobs_of_fewer_threads_between_jobs_of_all(config):
    """The threads of a job count its barriers from where the team's last job left off;
    a helper left out of some jobs (a layer with fewer units than the team has threads)
    must not be waited for, nor let the others through early, in the jobs after: each call
    of an interleaved sequence equals its one-thread run bit for bit."""
    rng = np.random.default_rng(2)
    layers = {H: nprnn.LSTM(5, H, seed=H).eval() for H in (2, 3, 37)}
    x = rng.standard_normal((40, 1, 5)).astype(np.float32)
    config(backend="native", num_threads=1)
    want = {H: m(x)[0] for H, m in layers.items()}
    team = _split_everything(config, 4)
    before = _runs(team)
    for H in (37, 2, 37, 3, 2, 37, 3, 37):
        np.testing.assert_array_equal(layers[H](x)[0], want[H])
    assert _runs(team) == before + 8


@pytest.mark.parametrize("kind", KINDS)
def test_unit_split_with_one_sequence_equals_pytorch_order_of_work(config, kind):
    """N=1, the deployment case, on float32 and every split width, against one thread."""
    rng = np.random.default_rng(5)
    m = _layer(kind, 40, 70, np.float32).eval()
    x = rng.standard_normal((20, 1, 40)).astype(np.float32)
    config(backend="native", num_threads=1)
    want, want_h = m(x)
    for n in (2, 3, 4):
        team = _split_everything(config, n)
        before = _runs(team)
        got, got_h = m(x)
        assert _runs(team) == before + 1
        np.testing.assert_array_equal(got, want)
        for a, b in zip(got_h if isinstance(got_h, tuple) else (got_h,),
                        want_h if isinstance(want_h, tuple) else (want_h,)):
            np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("kind", KINDS)
def test_projection_before_the_loop_equals_the_loop_and_numpy(config, kind, dtype):
    rng = np.random.default_rng(2)
    m = _layer(kind, 5, 9, dtype, num_layers=2, bidirectional=True)
    x = rng.standard_normal((7, 4, 5)).astype(dtype)
    lengths = [7, 3, 5, 1]
    g = rng.standard_normal((7, 4, 2 * m._h_out)).astype(dtype)
    results = {}
    for label, settings in (("first", dict(min_inloop_batch=64)), ("inloop", dict(min_inloop_batch=0)),
                            ("numpy", dict(backend="numpy"))):
        config(num_threads=1, **({"backend": "native"} | settings))
        results[label] = run_layer(m, x, lengths, g, True)
    tol = tolerances(np.dtype(dtype).name)
    for a, b, c in zip(results["first"], results["inloop"], results["numpy"]):
        np.testing.assert_allclose(a, b, **tol)
        np.testing.assert_allclose(a, c, **tol)
    if kind != "GRU":  # the two paths did differ in how they ran: the bias joins the sum at another point
        assert any(not np.array_equal(a, b) for a, b in zip(results["first"], results["inloop"]))


@pytest.mark.parametrize("kind", KINDS)
def test_a_split_stream_equals_the_sequence_call(config, kind):
    rng = np.random.default_rng(4)
    m = _layer(kind, 8, 48, np.float32, num_layers=2).eval()
    x = rng.standard_normal((12, 2, 8)).astype(np.float32)
    config(backend="native", num_threads=1)
    want, _ = m(x)
    for n in (2, 3):
        team = _split_everything(config, n)
        stream = m.stream(batch_size=2)
        before = _runs(team)
        steps = np.stack([stream.step(frame) for frame in x])
        assert _runs(team) == before + 12 * 2  # two layers a step, on the team
        np.testing.assert_array_equal(steps, want)


def test_a_busy_team_runs_the_loop_alone_with_the_same_result(config):
    """Two threads call split layers at once: one gets the team, the other runs its loop
    alone (every part in turn), and both get the one-thread result."""
    rng = np.random.default_rng(8)
    m = nprnn.LSTM(16, 96, dtype=np.float64, seed=1).eval()
    x = rng.standard_normal((200, 1, 16))
    config(backend="native", num_threads=1)
    want, _ = m(x)
    team = _split_everything(config, 2)
    before = team.stats()
    results, errors = [], []
    barrier = threading.Barrier(3)

    def call():
        try:
            barrier.wait()
            for _ in range(20):
                results.append(m(x)[0])
        except BaseException as exc:  # re-raised below
            errors.append(exc)

    workers = [threading.Thread(target=call) for _ in range(3)]
    for w in workers:
        w.start()
    for w in workers:
        w.join()
    assert not errors
    after = team.stats()
    assert after["runs"] + after["alone"] - before["runs"] - before["alone"] == 60  # a count per call
    assert after["alone"] > before["alone"]  # some call found the team busy
    from nprnn.teach.explain import execution

    assert f"so far {after['alone']} of" in execution(m, 1, 200)[-1]  # and explain says so
    for r in results:
        np.testing.assert_array_equal(r, want)


def test_the_kernel_refuses_a_bad_split(config):
    m = nprnn.LSTM(3, 8, seed=0)
    params = m._params()[0]
    prep = native.prepare(m.kind, params, parts=2)
    sizes, offsets = native._layout([1, 1])
    x = np.zeros((2, 3), np.float32)
    h, c = np.zeros((1, 8), np.float32), np.zeros((1, 8), np.float32)
    work = native.step_work(prep, 1, True)
    work["xproj"] = np.zeros((2, 32), np.float32)
    args = (0, prep, 0, 0, (0, 1), sizes, offsets, x, np.zeros((2, 8), np.float32), h, c)
    native._native.scan(native.call_args(*args, work))  # as made, it runs
    spec = native.call_args(*args, dict(work, xproj=None))
    with pytest.raises(ValueError, match="a loop split into parts needs xproj"):
        native._native.scan(spec)
    spec = native.call_args(*args, work)
    spec["units"] = np.array([0, 9, 8], np.int64)
    with pytest.raises(ValueError, match="units must rise from 0 to 8"):
        native._native.scan(spec)
    spec = native.call_args(*args, work)
    spec["hbuf"] = np.zeros((1, 8), np.float32)
    with pytest.raises(ValueError, match="hbuf holds 8 elements, the loop needs 16"):
        native._native.scan(spec)
    spec = native.call_args(*args, work)
    spec["whh"] = prep.whh[:-1]
    with pytest.raises(ValueError, match="whh holds"):
        native._native.scan(spec)
    with pytest.raises(ValueError, match="a key the kernel does not know"):
        native._native.scan(dict(native.call_args(*args, work), zoneout=0.1))
    with pytest.raises(TypeError, match="team must be a _native.Team"):
        native._native.scan(dict(native.call_args(*args, work), team=object()))


def test_helpers_sleep_when_idle(config):
    """A team's helpers spin briefly after a call, then sleep: an idle process uses no CPU."""
    import time

    rng = np.random.default_rng(0)
    m = nprnn.LSTM(16, 64, seed=0).eval()
    _split_everything(config, 2)
    m(rng.standard_normal((5, 1, 16)).astype(np.float32))
    time.sleep(0.2)  # past the spin
    t0, c0 = time.perf_counter(), time.process_time()
    time.sleep(0.3)
    used = (time.process_time() - c0) / (time.perf_counter() - t0)
    assert used < 0.05, f"the idle process used {used:.0%} of a core"


@pytest.mark.skipif(not hasattr(os, "sched_getaffinity"), reason="no affinity on this system")
def test_the_callers_affinity_is_given_back(config):
    """While a job runs on the team the caller holds to its processor (so that the
    scheduler cannot put it beside its helper); afterwards its affinity is what it was."""
    rng = np.random.default_rng(0)
    m = nprnn.LSTM(16, 64, seed=0).eval()
    team = _split_everything(config, 2)
    before = os.sched_getaffinity(0)
    runs = team.stats()["runs"]
    m(rng.standard_normal((5, 1, 16)).astype(np.float32))
    assert team.stats()["runs"] == runs + 1
    assert os.sched_getaffinity(0) == before


@pytest.mark.skipif(not hasattr(os, "fork"), reason="no fork on this system")
def test_a_forked_child_gets_its_own_team(config):
    """A child made by fork has none of its parent's helper threads: its layers and streams
    use a team of its own (a stream made before the fork included), and do not wait on
    helpers that are not there."""
    import multiprocessing
    import warnings

    rng = np.random.default_rng(1)
    m = nprnn.LSTM(16, 96, seed=0).eval()
    x = rng.standard_normal((6, 1, 16)).astype(np.float32)
    _split_everything(config, 2)
    want, _ = m(x)
    stream = m.stream(batch_size=1)
    stream.step(x[0])
    stream.reset()

    def child(queue):
        out, _ = m(x)
        steps = np.stack([stream.step(frame) for frame in x])
        queue.put((out, steps))

    with warnings.catch_warnings():  # Python 3.12+ warns that fork() in a threaded process may deadlock
        warnings.simplefilter("ignore", DeprecationWarning)
        ctx = multiprocessing.get_context("fork")
        queue = ctx.Queue()
        proc = ctx.Process(target=child, args=(queue,))
        proc.start()
        try:
            out, steps = queue.get(timeout=60)
            proc.join(timeout=60)
        finally:
            if proc.is_alive():  # a child waiting on helpers it does not have
                proc.kill()
    assert proc.exitcode == 0
    np.testing.assert_array_equal(out, want)
    np.testing.assert_array_equal(steps, want)


def test_a_closed_team_is_not_waited_for(config):
    """A call holding a team that was closed since (the thread count changed, say) runs
    alone instead of waiting for helpers that have left."""
    rng = np.random.default_rng(2)
    m = nprnn.LSTM(16, 96, seed=0).eval()
    x = rng.standard_normal((4, 1, 16)).astype(np.float32)
    team = _split_everything(config, 2)
    stream = m.stream(batch_size=1)
    want = np.stack([stream.step(frame) for frame in x])
    stream.reset()
    team.close()
    before = team.stats()["alone"]
    got = np.stack([stream._native_calls() and stream.step(frame) for frame in x])  # the calls made before the close
    assert team.stats()["alone"] == before + 4
    np.testing.assert_array_equal(got, want)
    threads._team.update(team=None, key=None)  # the next call makes a new team


# ------------------------------------------------------------------------ the wavefront
def _wavefront_everything(config, threads_):
    """Settings under which a one-directional stack runs as a wavefront on ``threads_``
    threads (one thread: layer after layer), every projection inside its loop (as a
    wavefront's upper layers have it), so that both ways make the same sums."""
    config(backend="native", num_threads=threads_, min_wavefront_batch=0, min_wavefront_work=0,
           max_wavefront_work=1 << 40, wavefront_balance=0, min_inloop_batch=0, max_unit_split_batch=0)
    return threads.team(min(threads_, 2)) if threads_ > 1 else None


@pytest.mark.parametrize("train", [False, True], ids=["eval", "train"])
@pytest.mark.parametrize("kind", KINDS + ["LayerNormLSTM", "LayerNormGRU"])
def test_the_wavefront_is_bit_for_bit(config, kind, train):
    """Every layer's loop at once, each a step behind the one below (and backward from the
    top down), equals layer after layer: outputs, final states, every gradient; packed
    sequences of several lengths; 1-4 threads (four layers, so that a thread runs two)."""
    rng = np.random.default_rng(12)
    m = _layer(kind, 6, 21, np.float64, num_layers=4)
    x = rng.standard_normal((8, 5, 6))
    lengths = [8, 3, 5, 8, 1]
    g = rng.standard_normal((8, 5, m._h_out))
    config(backend="native", num_threads=1, min_inloop_batch=0, max_unit_split_batch=0)
    want = run_layer(m, x, lengths, g, train)
    for n in (2, 3, 4):
        _wavefront_everything(config, n)
        team = threads.team(n)
        before = _runs(team)
        got = run_layer(m, x, lengths, g, train)
        assert _runs(team) >= before + (2 if train else 1)  # the wavefront ran on the team (backward too)
        for a, b in zip(want, got):
            np.testing.assert_array_equal(a, b)


def test_scan_many_refuses_what_a_wavefront_cannot_run(config):
    m = nprnn.LSTM(3, 8, seed=0)
    prep = native.prepare(m.kind, m._params()[0])
    sizes, offsets = native._layout([1, 1])
    work = native.step_work(prep, 1, False)
    spec = native.call_args(0, prep, 0, 1, (0, 1), sizes, offsets, np.zeros((2, 3), np.float32),
                            np.zeros((2, 8), np.float32), np.zeros((1, 8), np.float32), np.zeros((1, 8), np.float32),
                            work)
    with pytest.raises(ValueError, match="forward in time"):
        native._native.scan_many([spec], None)  # a loop backwards in time
    with pytest.raises(TypeError, match="list of dicts"):
        native._native.scan_many((spec,), None)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_the_weight_gradient_product_on_the_team(config, dtype):
    """``_at`` (the compiled ``a.T @ [b0 | b1 | ...]``: weight and bias gradients) equals the
    exact product within the rounding bound of a sum of K terms (K eps |a|.T @ |b|) for row
    counts that are not whole groups of the tile (1, 13, 37, 150 rows of the result), K over
    several of its blocks (1, 5, 700 packed rows), 1-3 threads; the team's row blocks give
    the same bits as one thread."""
    rng = np.random.default_rng(5)
    eps = np.finfo(dtype).eps
    for K, M1, widths in [(1, 13, (3, 1)), (5, 1, (7,)), (700, 37, (20, 33, 1)), (700, 150, (64, 1)),
                          (70, 29, (40, 70, 17))]:
        a = rng.standard_normal((K, M1)).astype(dtype)
        bs = [rng.standard_normal((K, w)).astype(dtype) for w in widths]
        want = [a.T.astype(np.float64) @ b for b in bs]  # float32: exact enough
        bound = [K * eps * (abs(a).T.astype(np.float64) @ abs(b)) for b in bs]
        results = []
        for n in (1, 2, 3):
            config(backend="native", num_threads=n, min_split_work=0)
            got = native._at(a, *bs, runner=threads.ThreadedRunner())
            for w, g, bd in zip(want, got, bound):
                assert g.shape == w.shape and g.dtype == dtype
                assert np.all(abs(g - w) <= bd), f"K={K} M1={M1}: {abs(g - w).max()} over the bound"
            results.append(np.concatenate(got, axis=1))
        for r in results[1:]:
            np.testing.assert_array_equal(r, results[0])


def test_the_products_refuse_a_bad_team_or_count():
    """``_native.matmul`` and ``_native.gemm_at`` check their team and how many parts they
    ask of it before touching any array."""
    a, c = np.ones((2, 3), np.float32), np.empty((2, 4), np.float32)
    bp = native._packed(np.ones((4, 3), np.float32), True)
    for team, parts in ((object(), 1), (None, 0)):
        with pytest.raises(ValueError, match=r"_native.matmul: team must be a _native.Team or None, threads >= 1"):
            native._native.matmul(a, bp, c, None, team, parts)
    g, out = np.ones((5, 3), np.float32), np.empty((3, 4), np.float32)
    gp = native._packed(np.ones((5, 4), np.float32), False)
    for team, blocks in ((object(), 1), (None, 0)):
        with pytest.raises(ValueError, match=r"_native.gemm_at: team must be a _native.Team or None, blocks >= 1"):
            native._native.gemm_at(g, gp, out, 0, 3, 0, team, blocks)


def test_the_weight_gradient_product_refuses_bad_sources():
    """``_native.gemm_at``'s sources of B (packed by the team) must be a tuple of (K, w)
    arrays of A's item size whose widths add up to C's columns; the packed array must take
    writes."""
    g, out = np.ones((5, 3), np.float32), np.empty((3, 4), np.float32)
    gp = native._packed(np.ones((5, 4), np.float32), False)
    ok = np.ones((5, 4), np.float32)
    native._native.gemm_at(g, gp, out, 0, 3, 0, None, 1, (ok[:, :1].copy(), ok[:, 1:].copy()))
    np.testing.assert_array_equal(out, g.T @ ok)
    for bad in ([ok], (), (ok[:4],), (ok[:, :3].copy(),), (ok.astype(np.float64),), (ok[:, 0].copy(),),
                (ok,) * 9):
        with pytest.raises(ValueError, match=r"_native.gemm_at: sources must be a tuple of 1 to 8 arrays \(K, w\)"):
            native._native.gemm_at(g, gp, out, 0, 3, 0, None, 1, bad)
    with pytest.raises(ValueError, match="read-only"):
        native._native.gemm_at(g, np.frombuffer(gp.tobytes(), np.float32), out, 0, 3, 0, None, 1, (ok,))

"""Inference side by side in a helper process (nprnn.helper).

As in test_threads.py the thresholds are lowered so that small configurations go side
by side; the helper is started before each test, and each test checks that its runs
went there.
"""
import os
import signal
import threading
import time

import numpy as np
import pytest

import nprnn
from nprnn import helper, threads
from reference import LAYERS, build_nprnn, compare, concurrent_config, make_inputs, run_nprnn, run_torch
from reference import _hx

pytestmark = pytest.mark.skipif(os.name != "posix", reason="the helper process needs POSIX")


@pytest.fixture
def helped(monkeypatch):
    """Lower the thresholds, allow two threads, start the helper; returns the list of the
    job lists sent to it."""
    monkeypatch.setattr(threads, "MIN_STEP_WORK", 0)
    monkeypatch.setattr(threads, "MIN_TRAIN_STEP_WORK", 0)
    monkeypatch.setattr(helper, "MIN_STEP_WORK", 0)
    monkeypatch.setattr(threads, "CHUNK_STEPS", 2)
    monkeypatch.setattr(threads, "_num_threads", 2)
    monkeypatch.setitem(helper._state, "enabled", True)
    helper.start(1)
    sent = []
    real = helper.Helper.start

    def counting(self, kind_name, batch_sizes, token, jobs):
        sent.append(jobs)
        real(self, kind_name, batch_sizes, token, jobs)

    monkeypatch.setattr(helper.Helper, "start", counting)
    return sent


def infer(cfg, case):
    """Forward in eval mode: out, h_n (and c_n)."""
    mod = build_nprnn(cfg)
    mod.load_state_dict({k[6:]: v for k, v in case.items() if k.startswith("param.")})
    mod.eval()
    hx = _hx(case, cfg)
    if cfg.get("mode") == "packed":
        bf = cfg["batch_first"]
        packed = nprnn.pack_padded_sequence(case["x"], cfg["lengths"], bf, cfg["enforce_sorted"])
        out_p, hn = mod(packed, hx)
        out, _ = nprnn.pad_packed_sequence(out_p, bf, total_length=cfg["seq_len"])
    else:
        out, hn = mod(case["x"], hx, lengths=cfg.get("lengths"))
    states = hn if isinstance(hn, tuple) else (hn,)
    return dict(zip(("out", "h_n", "c_n"), (out,) + states))


CONFIGS = [concurrent_config(np.random.default_rng(7000 + i), packed=i % 2 == 1, deeper=True) for i in range(60)]


def test_configs_cover_both_ways_and_every_kind():
    assert any(c["bidirectional"] for c in CONFIGS)
    assert any(not c["bidirectional"] and c["num_layers"] == 4 for c in CONFIGS)  # helper runs two layers
    assert any(not c["bidirectional"] and c["num_layers"] == 3 for c in CONFIGS)  # the parent ends
    assert {c.get("mode") for c in CONFIGS} == {None, "packed", "lengths"}
    assert {c["kind"] for c in CONFIGS} == set(LAYERS)
    assert any(c.get("proj_size") for c in CONFIGS)


@pytest.mark.torch
@pytest.mark.parametrize("cfg", CONFIGS[:30], ids=[f"{i}-{c['kind']}" for i, c in enumerate(CONFIGS[:30])])
def test_helper_matches_torch(cfg, helped):
    case = make_inputs(cfg)
    got = infer(cfg, case)
    assert helped, "the run did not go to the helper"
    want = run_torch(cfg, case)
    compare(cfg, got, {k: want[k] for k in got})


@pytest.mark.parametrize("cfg", CONFIGS, ids=[f"{i}-{c['kind']}" for i, c in enumerate(CONFIGS)])
def test_helper_equals_one_process(cfg, helped, monkeypatch):
    """Without PyTorch: the same numbers as the threaded run (the same products on one
    BLAS thread each, in the same groups of steps), bit for bit."""
    case = make_inputs(cfg)
    got = infer(cfg, case)
    D = 2 if cfg["bidirectional"] else 1
    expected_jobs = cfg["num_layers"] if D == 2 else cfg["num_layers"] // 2
    assert sum(len(jobs) for jobs in helped) == expected_jobs
    monkeypatch.setitem(helper._state, "enabled", False)
    want = infer(cfg, case)
    for key in want:
        np.testing.assert_array_equal(got[key], want[key], err_msg=key)


@pytest.mark.torch
@pytest.mark.parametrize("cfg", CONFIGS[30:], ids=[f"{i}-{c['kind']}" for i, c in enumerate(CONFIGS[30:], 30)])
def test_training_in_the_helper_matches_torch(cfg, helped):
    """Forward and backward, every gradient."""
    case = make_inputs(cfg)
    got = run_nprnn(cfg, case)
    assert len(helped) == 2 * (cfg["num_layers"] if cfg["bidirectional"] else 1), "not both through the helper"
    compare(cfg, got, run_torch(cfg, case))


@pytest.mark.parametrize("cfg", CONFIGS, ids=[f"{i}-{c['kind']}" for i, c in enumerate(CONFIGS)])
def test_training_in_the_helper_equals_threads(cfg, helped, monkeypatch):
    """Forward and backward, every gradient, bit for bit against the threaded run."""
    case = make_inputs(cfg)
    got = run_nprnn(cfg, case)
    assert helped
    monkeypatch.setitem(helper._state, "enabled", False)
    want = run_nprnn(cfg, case)
    for key in want:
        np.testing.assert_array_equal(got[key], want[key], err_msg=key)


def test_training_record_survives_other_runs(helped):
    """Between a training forward and its backward, other modules use the helper (and its
    shared memory); the record kept there is untouched."""
    rng = np.random.default_rng(0)
    a = nprnn.GRU(3, 6, num_layers=2, seed=0, dtype=np.float64)
    b = nprnn.GRU(3, 6, num_layers=2, seed=1, dtype=np.float64)
    x, y = rng.standard_normal((12, 3, 3)), rng.standard_normal((12, 3, 3))
    g = rng.standard_normal((12, 3, 6))
    a(x)
    b(y)  # training forward of another module: its own records
    b.eval()
    b(-y)  # inference
    dx = a.backward(g)[0]
    grads = {k: v.copy() for k, v in a.grads.items()}
    assert len(helped) == 4
    helper.set_helper_process(False)
    a.zero_grad()
    a(x)
    np.testing.assert_array_equal(a.backward(g)[0], dx)
    for k, v in grads.items():
        np.testing.assert_array_equal(a.grads[k], v, err_msg=k)


def test_backward_after_the_helper_is_gone_says_so(helped):
    m = nprnn.LSTM(3, 4, num_layers=2, seed=0, dtype=np.float64)
    x = np.random.default_rng(0).standard_normal((8, 2, 3))
    m(x)
    os.kill(helper._state["helper"].process.pid, signal.SIGKILL)
    helper._state["helper"].process.wait()
    with pytest.raises(RuntimeError, match=r"LSTM.backward\(\): the helper process that holds part of this "
                                           r"forward's record is gone; run the forward again"):
        m.backward(np.ones((8, 2, 4)))
    m(x)  # runs on threads while a new helper starts
    m.backward(np.ones((8, 2, 4)))


def test_collected_modules_are_forgotten_by_the_helper(helped):
    import gc

    m = nprnn.GRU(3, 4, num_layers=2, seed=0, dtype=np.float64)
    m(np.ones((6, 2, 3)))
    token = m._helper_token
    copy = __import__("copy").deepcopy(m)
    assert "_helper_token" not in copy.__dict__  # a copy is another module
    del m
    gc.collect()
    assert token in helper._forgotten
    other = nprnn.GRU(3, 4, num_layers=2, seed=0, dtype=np.float64)
    other(np.ones((6, 2, 3)))  # the next run tells the helper
    assert token not in helper._forgotten


def test_large_run_and_float32_lengths(helped):
    """The benchmark's shape, scaled down: many steps, a shrinking batch, several groups."""
    rng = np.random.default_rng(3)
    m = nprnn.GRU(6, 16, num_layers=2, seed=1)
    m.eval()
    lengths = rng.integers(20, 41, size=9)
    x = rng.standard_normal((40, 9, 6)).astype(np.float32)
    out, h = m(x, lengths=lengths)
    assert len(helped) == 1
    helper.set_helper_process(False)
    try:
        out1, h1 = m(x, lengths=lengths)
    finally:
        helper.set_helper_process(True)
    helper.start(1)
    np.testing.assert_array_equal(out, out1)
    np.testing.assert_array_equal(h, h1)
    kept = out.copy()
    m(-x, lengths=lengths)  # the next run reuses the shared memory; results handed out are copies
    assert len(helped) == 2
    np.testing.assert_array_equal(out, kept)


def test_small_runs_and_one_thread_stay_in_this_process(helped, monkeypatch):
    m = nprnn.LSTM(3, 4, num_layers=2, seed=0, dtype=np.float64)
    x = np.random.default_rng(0).standard_normal((6, 2, 3))
    m.eval()
    monkeypatch.setattr(threads, "_num_threads", 1)
    m(x)
    assert not helped
    monkeypatch.setattr(threads, "_num_threads", 2)
    monkeypatch.setattr(helper, "MIN_STEP_WORK", 2 * 4 * 4 + 1)  # 2 rows * 4 gates * 4 hidden a step
    m(x)
    assert not helped
    monkeypatch.setattr(helper, "MIN_STEP_WORK", 2 * 4 * 4)
    m(x)
    assert len(helped) == 1
    m.train()
    m(x)
    m.backward(np.ones((6, 2, 4)))
    assert len(helped) == 3


def test_error_in_the_helper_is_raised_here_and_the_helper_goes_on(helped):
    """A job the helper cannot run (weights of the wrong shape) raises its error in the
    parent; the next run works."""
    h = helper.acquire(1)
    assert h is not None
    try:
        h.begin()
        x_spec = h.share(np.ones((4, 3)))
        out, out_spec = h.empty((4, 5), np.float64)
        bad = h.share(np.ones((7, 2)))
        job = dict(op="forward", train=False, idx=0, reverse=False, x=x_spec, out=out_spec, cols=(0, 5),
                   state0=(np.zeros((2, 5)),), params=(bad, bad, None, None, None), options=None, stream=None)
        h.start("rnn_tanh", [2, 2], 0, [job])
        with pytest.raises(ValueError):
            h.finish()
    finally:
        helper.release()
    m = nprnn.GRU(3, 4, num_layers=2, seed=0, dtype=np.float64)
    m.eval()
    x = np.random.default_rng(0).standard_normal((6, 2, 3))
    got = m(x)
    helper.set_helper_process(False)
    want = m(x)
    np.testing.assert_array_equal(got[0], want[0])


def test_failure_here_stops_the_helper_and_nothing_hangs(helped, monkeypatch):
    """This process's stage fails after the helper started on the layer above: the error
    is raised, the helper is told to stop (it was waiting on rows that never come), and
    the next run works."""
    m = nprnn.GRU(3, 4, num_layers=2, seed=0, dtype=np.float64)
    m.eval()
    x = np.random.default_rng(0).standard_normal((9, 2, 3))
    real = nprnn.recurrent.RNNBase._direction

    def failing(self, *args, **kwargs):
        raise MemoryError("injected")

    monkeypatch.setattr(nprnn.recurrent.RNNBase, "_direction", failing)
    t0 = time.monotonic()
    with pytest.raises(MemoryError, match="injected"):
        m(x)
    assert time.monotonic() - t0 < 30
    monkeypatch.setattr(nprnn.recurrent.RNNBase, "_direction", real)
    got = m(x)
    assert len(helped) == 2
    monkeypatch.setitem(helper._state, "enabled", False)
    want = m(x)
    np.testing.assert_array_equal(got[0], want[0])
    np.testing.assert_array_equal(got[1], want[1])


def test_helper_dying_mid_run_falls_back_to_threads(helped, monkeypatch):
    m = nprnn.LSTM(3, 4, num_layers=2, seed=0, dtype=np.float64, bidirectional=True)
    m.eval()
    x = np.random.default_rng(0).standard_normal((5, 2, 3))
    real = helper.Helper.start

    def start_and_die(self, *args):
        real(self, *args)
        os.kill(self.process.pid, signal.SIGKILL)
        self.process.wait()

    monkeypatch.setattr(helper.Helper, "start", start_and_die)
    with pytest.warns(RuntimeWarning, match="running on threads instead"):
        got = m(x)
    assert helper._state["helper"] is None  # discarded; the next run starts another
    monkeypatch.setitem(helper._state, "enabled", False)
    want = m(x)
    for a, b in zip((got[0],) + got[1], (want[0],) + want[1]):
        np.testing.assert_array_equal(a, b)


def test_dead_helper_is_replaced(helped):
    old = helper._state["helper"]
    os.kill(old.process.pid, signal.SIGKILL)
    old.process.wait()
    m = nprnn.RNN(3, 4, num_layers=2, seed=0, dtype=np.float64)
    m.eval()
    x = np.random.default_rng(0).standard_normal((5, 2, 3))
    first = m(x)  # runs on threads while the new helper starts
    assert not helped
    helper.start(1)
    assert helper._state["helper"] is not old
    second = m(x)
    assert len(helped) == 1
    np.testing.assert_array_equal(first[0], second[0])


def test_busy_helper_leaves_other_threads_on_threads(helped):
    """Two threads at once: one run gets the helper, the other runs on threads; both right."""
    m = nprnn.GRU(3, 8, num_layers=2, seed=0, dtype=np.float64)
    m.eval()
    xs = [np.random.default_rng(i).standard_normal((30, 3, 3)) for i in range(2)]
    results = [None, None]
    barrier = threading.Barrier(2)

    def work(i):
        barrier.wait()
        results[i] = [m(xs[i])[0] for _ in range(5)]

    workers = [threading.Thread(target=work, args=(i,)) for i in range(2)]
    for w in workers:
        w.start()
    for w in workers:
        w.join()
    helper.set_helper_process(False)
    for i in range(2):
        want = m(xs[i])[0]
        for got in results[i]:
            np.testing.assert_array_equal(got, want)


def test_set_helper_process_validates_and_switches_off(helped):
    with pytest.raises(ValueError, match="expected a bool, but got 1"):
        helper.set_helper_process(1)
    pid = helper._state["helper"].process.pid
    helper.set_helper_process(False)
    assert helper._state["helper"] is None and not helper.get_helper_process()
    with pytest.raises(ProcessLookupError):
        for _ in range(100):  # the process is gone once reaped
            os.kill(pid, 0)
            time.sleep(0.05)
    m = nprnn.GRU(3, 4, num_layers=2, seed=0)
    m.eval()
    m(np.ones((5, 2, 3), np.float32))
    assert not helped and helper._state["helper"] is None
    helper.set_helper_process(True)


def test_helper_follows_the_thread_count(helped, monkeypatch):
    """The helper's BLAS gets half the threads; another count starts another helper."""
    old = helper._state["helper"]
    monkeypatch.setattr(threads, "_num_threads", 4)
    helper.start(2)
    assert helper._state["helper"] is not old and helper._state["helper"].blas_threads == 2
    assert old.process.poll() is not None


def _run_script(code):
    import subprocess
    import sys

    done = subprocess.run([sys.executable, "-W", "error", "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    return done.stdout


def _running(pid):
    """Whether process ``pid`` runs (a zombie waiting to be reaped does not)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except FileNotFoundError:
        return False


SCRIPT_HEAD = """
import os, numpy as np, nprnn
from nprnn import helper, threads
threads.MIN_STEP_WORK = helper.MIN_STEP_WORK = 0
nprnn.set_num_threads(2)
m = nprnn.GRU(3, 8, num_layers=2, seed=0)
m.eval()
x = np.ones((20, 3, 3), np.float32)
"""


@pytest.mark.skipif(not os.path.isdir("/proc/self"), reason="reads /proc")
def test_a_one_shot_script_exits_at_once_and_leaves_no_helper():
    out = _run_script(SCRIPT_HEAD + "m(x)\nprint(helper._state['helper'].process.pid)")  # started, not ready
    pid = int(out)
    for _ in range(100):
        if not _running(pid):
            break
        time.sleep(0.05)
    assert not _running(pid)


def test_a_forked_child_starts_its_own_helper():
    out = _run_script(SCRIPT_HEAD + """
helper.start(1)
a = m(x)[0]
mine = helper._state["helper"].process.pid
pid = os.fork()
if pid == 0:
    ok = (m(x)[0] == a).all()  # on threads while its own helper starts
    helper.start(1)
    ok = ok and (m(x)[0] == a).all() and helper._state["helper"].process.pid != mine
    os._exit(0 if ok else 3)
_, status = os.waitpid(pid, 0)
print(os.waitstatus_to_exitcode(status), (m(x)[0] == a).all(), helper._state["helper"].process.pid == mine)
""")
    assert out.split() == ["0", "True", "True"]


def test_interrupted_message_replaces_the_helper(helped, monkeypatch):
    """Ctrl-C while a message is half read or written leaves the stream unusable: the run
    raises KeyboardInterrupt at once, and the next run starts a new helper."""
    m = nprnn.GRU(3, 4, num_layers=2, seed=0, dtype=np.float64)
    m.eval()
    x = np.random.default_rng(0).standard_normal((9, 2, 3))
    want = m(x)
    old = helper._state["helper"]
    real_recv = helper._Channel.recv

    def interrupted(self):
        monkeypatch.setattr(helper._Channel, "recv", real_recv)
        raise KeyboardInterrupt

    monkeypatch.setattr(helper._Channel, "recv", interrupted)
    with pytest.raises(KeyboardInterrupt):
        m(x)
    assert old.broken
    got = m(x)  # on threads: the broken helper is killed and another one starts
    assert helper._state["helper"] is not old and old.process.poll() is not None
    np.testing.assert_array_equal(got[0], want[0])
    helper.start(1)
    np.testing.assert_array_equal(m(x)[0], want[0])


@pytest.mark.parametrize("kind,kw", [("GRU", {"num_layers": 3}), ("LSTM", {"num_layers": 2, "proj_size": 2}),
                                     ("LSTM", {"num_layers": 2, "bidirectional": True, "dropout": 0.4}),
                                     ("RNN", {"num_layers": 2, "bidirectional": True})])
def test_helper_gradients_match_finite_differences(kind, kw, helped):
    """Every gradient of a training run through the helper, against central differences."""
    from test_gradcheck import check

    rng = np.random.default_rng(4)
    mod = getattr(nprnn, kind)(3, 4, dtype=np.float64, seed=2, **kw)
    D, L, P = (2 if kw.get("bidirectional") else 1), kw["num_layers"], kw.get("proj_size", 4)
    x = rng.standard_normal((5, 2, 3))
    hx = (rng.standard_normal((D * L, 2, P)), rng.standard_normal((D * L, 2, 4))) if kind == "LSTM" \
        else rng.standard_normal((D * L, 2, 4))
    check(mod, x, hx, reseed=11 if kw.get("dropout") else None)
    assert any(job["op"] == "backward" for jobs in helped for job in jobs)

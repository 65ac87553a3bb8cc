"""A training forward's record belongs to the thread that ran it (issue 17 D).

Thread A forward, thread B forward, thread A backward: A's gradients come from A's forward
(before, 29 of 104 such backward calls in a 4-thread test used B's record, silently).
Backward in a thread that ran no forward raises.  Eval-mode calls from many threads stay
correct.  A cell's records are released by the backward that consumes them or by
``eval()``, never by ``zero_grad()``, and past ``max_pending_records`` a warning says why
memory grows.
"""
import threading
import tracemalloc

import numpy as np
import pytest

import nprnn


def _serial(make, xs, gs):
    """Each input's (output, grad_input, parameter gradients) run alone."""
    results = []
    for x, g in zip(xs, gs):
        m = make()
        out, _ = m(x)
        dx, _ = m.backward(g)
        results.append((out, dx, {k: v.copy() for k, v in m.grads.items()}))
    return results


@pytest.mark.parametrize("kind", ["LSTM", "GRU", "RNN"])
def test_interleaved_training_threads_each_get_their_own_gradients(kind):
    def make():
        return getattr(nprnn, kind)(3, 5, num_layers=2, bidirectional=True, seed=0, dtype=np.float64)

    n_threads, rounds = 4, 25
    rng = np.random.default_rng(0)
    xs = [rng.standard_normal((6, 2, 3)) for _ in range(n_threads)]
    gs = [rng.standard_normal((6, 2, 10)) for _ in range(n_threads)]
    want = _serial(make, xs, gs)
    m = make()
    barrier = threading.Barrier(n_threads)
    wrong, errors = [], []

    def worker(i):
        try:
            for _ in range(rounds):
                out, _ = m(xs[i])
                barrier.wait()  # every thread has run its forward before any runs backward
                dx, _ = m.backward(gs[i])
                barrier.wait()
                if not (np.allclose(out, want[i][0], rtol=1e-12) and np.allclose(dx, want[i][1], rtol=1e-12)):
                    wrong.append(i)
        except BaseException as exc:  # reported below
            errors.append(exc)
            barrier.abort()

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(n_threads)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert not errors, errors[0]
    assert not wrong, f"{len(wrong)} of {n_threads * rounds} backward calls used another thread's forward"
    for name, g in m.grads.items():  # every backward added its own gradients, none lost
        expected = rounds * sum(w[2][name] for w in want)
        np.testing.assert_allclose(g, expected, rtol=1e-10, atol=1e-12)


def test_backward_in_a_thread_that_ran_no_forward_raises():
    m = nprnn.GRU(3, 4)
    out, _ = m(np.ones((2, 1, 3), np.float32))
    caught = []
    t = threading.Thread(target=lambda: caught.append(pytest.raises(RuntimeError, m.backward, np.ones_like(out))))
    t.start()
    t.join()
    assert "needs a forward pass in training mode first, in the same thread" in str(caught[0].value)
    m.backward(np.ones_like(out))  # the forward's own thread still can


def test_eval_calls_from_many_threads_stay_correct():
    m = nprnn.LSTM(4, 8, num_layers=2, seed=1, dtype=np.float64).eval()
    rng = np.random.default_rng(1)
    xs = [rng.standard_normal((7, 3, 4)) for _ in range(6)]
    want = [m(x)[0] for x in xs]
    wrong = []

    def worker(i):
        for _ in range(40):
            if not np.array_equal(m(xs[i])[0], want[i]):
                wrong.append(i)

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert not wrong


def test_cell_records_are_released_by_backward_and_eval_not_zero_grad():
    cell = nprnn.LSTMCell(32, 64, seed=0)
    x = np.ones((8, 32), np.float32)
    g = (np.ones((8, 64), np.float32), None)
    cell(x)
    cell.backward(g)  # (first-call allocations out of the way)
    tracemalloc.start()
    try:
        start = tracemalloc.get_traced_memory()[0]
        for _ in range(200):
            cell(x)  # outputs discarded, training mode
        grown = tracemalloc.get_traced_memory()[0] - start
        assert grown > 200 * 8 * 64 * 4  # each call keeps at least its gates for backward
        cell.zero_grad()  # (PyTorch users call it between forward and backward)
        cell.backward(g)  # the latest record is still there
        cell.eval()  # releases the other 199
        left = tracemalloc.get_traced_memory()[0] - start
    finally:
        tracemalloc.stop()
    assert left < 0.05 * grown
    cell.train()
    with pytest.raises(RuntimeError, match="needs a forward pass"):
        cell.backward(g)


def test_a_cell_warns_when_its_pending_records_pass_the_cap():
    cell = nprnn.GRUCell(2, 3)
    cell.max_pending_records = 10
    x = np.ones((1, 2), np.float32)
    for _ in range(10):
        cell(x)
    with pytest.warns(RuntimeWarning, match="GRUCell holds 11 training-mode records waiting for backward"):
        cell(x)
    cell.eval()
    for _ in range(20):
        cell(x)  # eval mode keeps nothing: no warning (warnings are errors here)


@pytest.mark.parametrize("kind, arrays", [("RNNCell", 2), ("LSTMCell", 7), ("GRUCell", 5)])
def test_a_pending_record_holds_what_the_cells_docstring_says(kind, arrays):
    """nn.cells states the bytes of a pending record: ``arrays`` × N × H × itemsize plus
    about 2 KB of Python objects; the default cap is 256 records."""
    assert nprnn.LSTMCell(2, 3).max_pending_records == 256
    N, H = 16, 200
    cell = getattr(nprnn, kind)(8, H)
    x = np.ones((N, 8), np.float32)
    cell(x)
    tracemalloc.start()
    try:
        start = tracemalloc.get_traced_memory()[0]
        for _ in range(50):
            cell(x)
        per_call = (tracemalloc.get_traced_memory()[0] - start) / 50
    finally:
        tracemalloc.stop()
        cell.eval()
    stated = arrays * N * H * 4
    assert stated <= per_call <= stated + 2560, (per_call, stated)

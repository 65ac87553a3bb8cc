"""An inference call of a layer on the compiled tier runs the kernel calls it made for the
last call of the same shapes in its thread (``nprnn.config.settings.reuse_calls``):

* every such call equals the general path (``reuse_calls=0``) bit for bit, for every kind,
  stacks, projections, batch_first, unbatched input, given or zero initial states, both
  dtypes, the hidden units split over a team and the batch split into row ranges;
* a change of the weights, of the settings or of the shapes makes the calls again;
* what it does not cover (training, bidirectional layers, ``lengths=``, packed input,
  ``return_states``, zoneout, input of another type or dtype, a wrong ``hx``) goes the
  general way, with the general way's errors;
* two threads calling one layer each get their own results;
* a cell's inference steps (``h = cell(x_t, h)`` in a loop) do the same, one step a call.
"""
import threading

import numpy as np
import pytest

import nprnn
from nprnn.functional import native
from nprnn.parallel.threads import activity

KINDS = ["RNN", "RNN_relu", "LSTM", "LSTMP", "GRU", "LayerNormLSTM", "LayerNormGRU"]
compiled = pytest.mark.skipif(native._native is None, reason="the compiled kernels are not built")


def _layer(kind, H_in, H, **kw):
    if kind == "LSTMP":
        return nprnn.LSTM(H_in, H, proj_size=H // 2 + 1, seed=3, **kw)
    if kind == "RNN_relu":
        return nprnn.RNN(H_in, H, nonlinearity="relu", seed=3, **kw)
    return getattr(nprnn, kind)(H_in, H, seed=3, **kw)


def _flat(result):
    out, states = result
    return [out] + (list(states) if isinstance(states, tuple) else [states])


def _general(m, *args, **kw):
    with nprnn.config.override(reuse_calls=0):
        return _flat(m(*args, **kw))


def _same(a, b):
    assert len(a) == len(b)
    for x, y in zip(a, b):
        assert x.shape == y.shape and x.dtype == y.dtype
        np.testing.assert_array_equal(x, y)


def _reused():
    return activity["reused calls"]


def _refused_alike(module, bad, hx):
    """``module(bad, hx)`` raises what the general path raises, word for word, and reuses
    nothing."""
    before = _reused()
    with pytest.raises(Exception) as reused:
        module(bad, hx)
    with nprnn.config.override(reuse_calls=0), pytest.raises(Exception) as general:
        module(bad, hx)
    assert type(reused.value) is type(general.value) and str(reused.value) == str(general.value)
    assert _reused() == before


@pytest.mark.parametrize("dtype", [np.float32, np.float64], ids=["f32", "f64"])
@pytest.mark.parametrize("layers", [1, 2])
@pytest.mark.parametrize("kind", KINDS)
def test_repeated_calls_equal_the_general_path(config, kind, layers, dtype):
    rng = np.random.default_rng(4)
    for batch_first in (False, True):
        m = _layer(kind, 5, 11, num_layers=layers, batch_first=batch_first, dtype=dtype).eval()
        widths = [m._h_out, m.hidden_size] if m.kind.has_cell else [m._h_out]
        for shape in [(7, 3, 5), (7, 3, 5), (7, 3, 5), (4, 2, 5), (6, 5)]:  # the same shape three times, then others
            x = rng.standard_normal(shape).astype(dtype)
            batched = x.ndim == 3
            N = (x.shape[0] if batch_first else x.shape[1]) if batched else None
            for given in (False, True):
                hx = None
                if given:
                    hs = [rng.standard_normal((layers, N, w) if batched else (layers, w)).astype(dtype)
                          for w in widths]
                    hx = tuple(hs) if m.kind.has_cell else hs[0]
                before = _reused()
                got = _flat(m(x, hx))
                taken = _reused() - before
                assert taken == (1 if native.supports(m.kind, dtype) else 0)
                _same(got, _general(m, x, hx))


@compiled
@pytest.mark.parametrize("threads_", [1, 2, 3])
def test_reused_calls_with_the_units_split_and_the_rows_split(config, threads_):
    """A team splits the hidden units (a small batch) or takes row ranges (a large one):
    the calls carry the team and the ranges, and give the one-thread numbers."""
    rng = np.random.default_rng(5)
    config(backend="native", num_threads=threads_, max_unit_split_batch=4, min_unit_split_work=0,
           min_split_work=0, min_part_rows=1)
    for kind in ("LSTM", "GRU", "LSTMP"):
        m = _layer(kind, 6, 33, num_layers=2).eval()
        for N in (1, 3, 40):
            x = rng.standard_normal((9, N, 6)).astype(np.float32)
            with nprnn.config.override(num_threads=1):
                want = _general(m, x)
            for _ in range(3):
                _same(_flat(m(x)), want)


@compiled
def test_weights_settings_and_shapes_make_the_calls_again(config):
    config(backend="native")
    rng = np.random.default_rng(6)
    m = nprnn.LSTM(4, 8, num_layers=2, seed=0).eval()
    x = rng.standard_normal((5, 2, 4)).astype(np.float32)
    first = _flat(m(x))
    with nprnn.writable(m):
        m.weight_hh_l1 *= 0.5
    changed = _flat(m(x))
    assert not np.array_equal(first[0], changed[0])
    _same(changed, _general(m, x))
    config(num_threads=1)
    _same(_flat(m(x)), changed)
    config(num_threads=2, max_unit_split_batch=8, min_unit_split_work=0)
    _same(_flat(m(x)), changed)
    y = rng.standard_normal((3, 2, 4)).astype(np.float32)
    _same(_flat(m(y)), _general(m, y))
    _same(_flat(m(x)), changed)


@compiled
def test_what_reuse_does_not_cover_goes_the_general_way(config):
    config(backend="native")
    rng = np.random.default_rng(7)
    x = rng.standard_normal((5, 2, 4)).astype(np.float32)

    def not_reused(m, *args, **kw):
        before = _reused()
        m(*args, **kw)
        assert _reused() == before

    m = nprnn.LSTM(4, 8, seed=0)
    not_reused(m, x)  # training
    m.eval()
    not_reused(nprnn.LSTM(4, 8, bidirectional=True, seed=0).eval(), x)
    not_reused(nprnn.LSTM(4, 8, zoneout=0.1, seed=0).eval(), x)
    not_reused(m, x, lengths=[5, 3])
    not_reused(m, x, return_states=True)
    not_reused(m, x.tolist())
    packed = nprnn.utils.rnn.pack_padded_sequence(x, [5, 3])
    not_reused(m, packed)
    # refusals are the general path's, word for word
    g = nprnn.GRU(4, 8, seed=0).eval()
    h = np.zeros((1, 2, 8), np.float32)
    z = np.zeros((1, 3, 8), np.float32)
    for layer, bad, hx in ((m, x.astype(np.float64), None), (m, x[..., :3], None), (m, x, (h,)), (m, x, (z, z)),
                           (g, x, h.astype(np.float64)), (g, x, z), (g, x, (h,))):
        _refused_alike(layer, bad, hx)


@compiled
def test_two_threads_calling_one_layer(config):
    config(backend="native")
    m = nprnn.GRU(6, 16, num_layers=2, seed=1).eval()
    rng = np.random.default_rng(8)
    xs = [rng.standard_normal((8, 2, 6)).astype(np.float32) for _ in range(2)]
    want = [_general(m, x) for x in xs]
    errors = []

    def work(i):
        try:
            for _ in range(100):
                _same(_flat(m(xs[i])), want[i])
        except Exception as e:  # reported on the main thread
            errors.append(e)

    threads = [threading.Thread(target=work, args=(i,)) for i in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors[0]


@pytest.mark.parametrize("batch_first", [False, True])
@pytest.mark.parametrize("kind", ["LSTM", "GRU"])
def test_results_are_the_callers_own(kind, batch_first):
    """The output and the final states are new arrays: the next call (which reuses the
    calls' buffers) leaves them as they were."""
    rng = np.random.default_rng(9)
    m = _layer(kind, 3, 5, num_layers=2, batch_first=batch_first).eval()
    for shape in ((4, 2, 3), (4, 3)):
        first = _flat(m(rng.standard_normal(shape).astype(np.float32)))
        kept = [a.copy() for a in first]
        m(rng.standard_normal(shape).astype(np.float32))
        _same(first, kept)


CELLS = ["RNNCell", "RNNCell_relu", "LSTMCell", "GRUCell", "LayerNormLSTMCell", "LayerNormGRUCell"]


def _cell(kind, H_in, H, dtype):
    if kind == "RNNCell_relu":
        return nprnn.RNNCell(H_in, H, nonlinearity="relu", dtype=dtype, seed=3)
    return getattr(nprnn, kind)(H_in, H, dtype=dtype, seed=3)


@pytest.mark.parametrize("dtype", [np.float32, np.float64], ids=["f32", "f64"])
@pytest.mark.parametrize("kind", CELLS)
def test_a_cells_steps_equal_the_general_path(config, kind, dtype):
    """A loop of steps, the state carried (``h = cell(x_t, h)``), from zeros and from a
    given state, batched and not: each step equals the general path's, bit for bit."""
    rng = np.random.default_rng(10)
    cell = _cell(kind, 5, 12, dtype).eval()
    pair = cell.kind.has_cell
    for shape in [(3, 5), (5,)]:
        state = None
        for _ in range(6):
            x = rng.standard_normal(shape).astype(dtype)
            before = _reused()
            got = cell(x, state)
            assert _reused() - before == (1 if native.supports(cell.kind, dtype) else 0)
            with nprnn.config.override(reuse_calls=0):
                want = cell(x, state)
            _same(list(got) if pair else [got], list(want) if pair else [want])
            state = got


@compiled
def test_what_a_cell_does_not_reuse(config):
    config(backend="native")
    rng = np.random.default_rng(11)
    x = rng.standard_normal((2, 4)).astype(np.float32)
    h = np.zeros((2, 8), np.float32)
    for cell, args in ((nprnn.LSTMCell(4, 8, seed=0), (x,)),  # training
                       (nprnn.MinGRUCell(4, 8, seed=0).eval(), (x,)),
                       (nprnn.GRUCell(4, 8, seed=0).eval(), (x.tolist(),))):
        before = _reused()
        cell(*args)
        assert _reused() == before
    lstm, gru = nprnn.LSTMCell(4, 8, seed=0).eval(), nprnn.GRUCell(4, 8, seed=0).eval()
    for cell, bad, hx in ((lstm, x[:, :3], None), (lstm, x, (h,)), (lstm, x, (h, h[:1])), (gru, x, h[:1]),
                          (gru, x, h.astype(np.float64)), (gru, x.astype(np.float64), None), (gru, x, h[0])):
        _refused_alike(cell, bad, hx)

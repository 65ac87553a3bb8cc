"""Streams: one step per call equals the whole-sequence call, on both tiers."""
import numpy as np
import pytest

import nprnn
from nprnn.functional import native

TIERS = ["numpy"] + ([] if native._native is None else ["native"])
LAYERS = [("RNN", {}), ("RNN", {"nonlinearity": "relu"}), ("GRU", {}), ("LSTM", {}), ("LSTM", {"proj_size": 3})]


@pytest.fixture(params=TIERS)
def tier(request):
    before = nprnn.backend()
    nprnn.set_backend(request.param)
    yield request.param
    nprnn.set_backend(before)


def _final(hn):
    return hn if isinstance(hn, tuple) else (hn,)


@pytest.mark.parametrize("dtype,tol", [(np.float32, 1e-6), (np.float64, 1e-12)])
@pytest.mark.parametrize("kind,kw", LAYERS, ids=[f"{k}{kw}" for k, kw in LAYERS])
def test_steps_equal_the_whole_sequence(kind, kw, dtype, tol, tier):
    rng = np.random.default_rng(0)
    m = getattr(nprnn, kind)(5, 7, num_layers=3, dtype=dtype, seed=1, **kw).eval()
    x = rng.standard_normal((11, 4, 5)).astype(dtype)
    state = tuple(rng.standard_normal(s.shape).astype(dtype) for s in _final(m(x)[1]))
    hx = state if kind == "LSTM" else state[0]
    out, hn = m(x, hx)
    stream = m.stream(batch_size=4)
    stream.state = hx
    ys = np.stack([stream.step(x[t]) for t in range(11)])
    assert ys.dtype == dtype
    np.testing.assert_allclose(ys, out, rtol=tol, atol=tol)
    for got, want in zip(_final(stream.state), _final(hn)):
        np.testing.assert_allclose(got, want, rtol=tol, atol=tol)


def test_unbatched_stream_and_reset(tier):
    rng = np.random.default_rng(1)
    m = nprnn.GRU(3, 4, num_layers=2, dtype=np.float64, seed=0).eval()
    x = rng.standard_normal((6, 3))
    out, hn = m(x)
    s = m.stream()
    ys = np.stack([s.step(x[t]) for t in range(6)])
    np.testing.assert_allclose(ys, out, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(s.state, hn, rtol=1e-12, atol=1e-12)
    assert s.state.shape == (2, 4)
    s.reset()
    np.testing.assert_allclose(np.stack([s.step(x[t]) for t in range(6)]), out, rtol=1e-12, atol=1e-12)


def test_reset_some_rows_starts_those_sequences_again(tier):
    rng = np.random.default_rng(2)
    m = nprnn.LSTM(3, 5, num_layers=2, dtype=np.float64, seed=0).eval()
    a, b = rng.standard_normal((7, 3)), rng.standard_normal((3, 3))
    s = m.stream(2)
    for t in range(4):
        s.step(np.stack([a[t], a[t]]))
    s.reset(rows=[1])  # slot 1 starts sequence b; slot 0 goes on with a
    ys = np.stack([s.step(np.stack([a[4 + t], b[t]])) for t in range(3)])
    np.testing.assert_allclose(ys[:, 0], m(a)[0][4:], rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(ys[:, 1], m(b)[0], rtol=1e-12, atol=1e-12)


def test_stream_sees_weight_changes(tier):
    m = nprnn.LSTM(3, 4, seed=0).eval()
    x = np.ones((1, 3), np.float32)
    s = m.stream(1)
    before = s.step(x)
    m.load_state_dict({k: v * 0.5 for k, v in m.state_dict().items()})
    s.reset()
    after = s.step(x)
    np.testing.assert_allclose(after, m(x[None])[0][0], rtol=1e-6, atol=1e-7)
    assert not np.allclose(before, after)
    with nprnn.writable(m):
        m.bias_ih_l0[:] = 3
    s.reset()
    np.testing.assert_allclose(s.step(x), m(x[None])[0][0], rtol=1e-6, atol=1e-7)


def test_stream_refusals():
    with pytest.raises(ValueError, match="a bidirectional layer needs the whole sequence"):
        nprnn.GRU(3, 4, bidirectional=True).stream(2)
    m = nprnn.LSTM(3, 4)
    with pytest.raises(ValueError, match="batch_size must be a positive int or None, got 0"):
        m.stream(0)
    s = m.stream(2)
    with pytest.raises(ValueError, match=r"input must have shape \(2, 3\), got \(3,\)"):
        s.step(np.ones(3, np.float32))
    with pytest.raises(ValueError, match="input dtype \\(float64\\) does not match weight dtype \\(float32\\)"):
        s.step(np.ones((2, 3)))
    with pytest.raises(TypeError, match="stream state must be a pair"):
        s.state = np.zeros((1, 2, 4), np.float32)
    with pytest.raises(ValueError, match=r"state c must have shape \(1, 2, 4\), got \(1, 2, 5\)"):
        s.state = (np.zeros((1, 2, 4), np.float32), np.zeros((1, 2, 5), np.float32))
    with pytest.raises(ValueError, match=r"rows must be batch indices in \[0, 2\), got \[2\]"):
        s.reset(rows=[2])
    with pytest.raises(ValueError, match="rows must be batch indices"):
        s.reset(rows=[0.5])


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_sequential_streams_as_the_whole_model_on_each_prefix(dtype):
    """A streaming classifier: step t returns what the model returns for the sequence that
    ends at step t (LastStep keeps that step); a time-distributed head gives output[t]."""
    from nprnn.layers import Embedding, Linear

    tol = dict(rtol=1e-6, atol=1e-6) if dtype == np.float32 else dict(rtol=1e-12, atol=1e-12)
    classifier = nprnn.Sequential(Embedding(9, 5, dtype=dtype, seed=0),
                                  nprnn.LSTM(5, 8, num_layers=2, batch_first=True, dtype=dtype, seed=1),
                                  nprnn.LastStep(batch_first=True), Linear(8, 3, dtype=dtype, seed=2),
                                  nprnn.LogSoftmax(dim=-1, dtype=dtype)).eval()
    ids = np.random.default_rng(0).integers(0, 9, (3, 7))
    stream = classifier.stream(batch_size=3)
    for t in range(7):
        np.testing.assert_allclose(stream.step(ids[:, t]), classifier(ids[:, : t + 1]), **tol)
    tagger = nprnn.Sequential(nprnn.GRU(4, 6, dtype=dtype, seed=3), nprnn.Tanh(dtype=dtype),
                              nprnn.RNN(6, 5, dtype=dtype, seed=4), Linear(5, 2, dtype=dtype, seed=5))
    x = np.random.default_rng(1).standard_normal((6, 2, 4)).astype(dtype)
    want = tagger.eval()(x)
    stream = tagger.train().stream(batch_size=2)  # a stream runs the model as in eval mode ...
    got = np.stack([stream.step(x_t) for x_t in x])
    np.testing.assert_allclose(got, want, **tol)
    assert tagger.training and all(m.training for m in tagger)  # ... and leaves its modes as they were
    assert len(stream.state) == 2
    stream.reset(rows=[1])
    assert not stream.state[0][:, 1].any() and stream.state[0][:, 0].any()


def test_sequential_stream_refusals():
    from nprnn.layers import Linear

    with pytest.raises(ValueError, match="the model has no recurrent layer"):
        nprnn.Sequential(Linear(3, 2)).stream()
    with pytest.raises(ValueError, match="a bidirectional layer needs the whole sequence"):
        nprnn.Sequential(nprnn.GRU(3, 2, bidirectional=True)).stream()
    stream = nprnn.Sequential(nprnn.GRU(3, 2), nprnn.LSTM(2, 2)).stream(batch_size=1)
    with pytest.raises(ValueError, match="must be a list of 2 layer state"):
        stream.state = [np.zeros((1, 1, 2))]
    before = stream.state
    with pytest.raises(TypeError, match="must be a pair"):
        stream.state = [np.ones((1, 1, 2), np.float32), np.ones((1, 1, 2), np.float32)]
    assert all(np.array_equal(a, b) for a, b in zip(before[:1], stream.state[:1]))  # nothing changed

"""The packed-sequence utilities and variable-length layers (PyTorch comparisons are marked torch)."""
import re

import numpy as np
import pytest

import nprnn
from nprnn.utils.rnn import (
    PackedSequence,
    invert_permutation,
    pack_padded_sequence,
    pack_sequence,
    pad_packed_sequence,
    pad_sequence,
    unpack_sequence,
    unpad_sequence,
)


def rand_lengths(rng, B, L):
    lengths = rng.integers(1, L + 1, size=B)
    lengths[rng.integers(B)] = L
    return lengths


class TestUtilities:
    def test_docstring_example(self):
        p = pack_sequence([np.array([1., 2, 3]), np.array([4., 5]), np.array([6.])])
        np.testing.assert_array_equal(p.data, [1, 4, 6, 2, 5, 3])
        np.testing.assert_array_equal(p.batch_sizes, [3, 2, 1])
        assert p.sorted_indices is None and p.unsorted_indices is None
        assert p.batch_sizes.dtype == np.int64

    @pytest.mark.parametrize("batch_first", [False, True])
    def test_round_trips(self, batch_first):
        rng = np.random.default_rng(0)
        for _ in range(30):
            B, L = int(rng.integers(1, 6)), int(rng.integers(1, 7))
            lengths = rand_lengths(rng, B, L)
            x = rng.standard_normal((B, L, 3) if batch_first else (L, B, 3))
            x_copy = x.copy()
            p = pack_padded_sequence(x, lengths, batch_first=batch_first, enforce_sorted=False)
            assert p.data.shape == (lengths.sum(), 3)
            padded, got_lengths = pad_packed_sequence(p, batch_first=batch_first)
            np.testing.assert_array_equal(got_lengths, lengths)
            mask = np.arange(L)[None, :] < lengths[:, None]  # (B, L)
            if not batch_first:
                mask = mask.T
            np.testing.assert_array_equal(padded[mask], x[mask])
            assert (padded[~mask] == 0).all()
            np.testing.assert_array_equal(x, x_copy)  # the caller's array is untouched
            seqs = unpad_sequence(padded, got_lengths, batch_first=batch_first)
            for s, n, i in zip(seqs, lengths, range(B)):
                np.testing.assert_array_equal(s, x[i, :n] if batch_first else x[:n, i])
            repacked = pack_sequence(seqs, enforce_sorted=False)
            np.testing.assert_array_equal(repacked.data, p.data)
            for a, b in zip(unpack_sequence(repacked), seqs):
                np.testing.assert_array_equal(a, b)

    def test_stable_order_for_ties(self):
        p = pack_padded_sequence(np.zeros((5, 6, 1)), [3, 5, 3, 1, 3, 5], enforce_sorted=False)
        np.testing.assert_array_equal(p.sorted_indices, [1, 5, 0, 2, 4, 3])
        np.testing.assert_array_equal(p.unsorted_indices, invert_permutation(p.sorted_indices))

    def test_padding_value_total_length_and_left_padding(self):
        p = pack_sequence([np.ones((3, 2)), np.ones((1, 2))])
        padded, _ = pad_packed_sequence(p, padding_value=-1.0, total_length=5)
        assert padded.shape == (5, 2, 2)
        assert (padded[1:, 1] == -1).all() and (padded[3:] == -1).all()
        left = pad_sequence([np.ones(2), np.ones(3)], padding_side="left", padding_value=-1)
        np.testing.assert_array_equal(left[:, 0], [-1, 1, 1])

    def test_packed_sequence_from_pair(self):
        p = PackedSequence((np.zeros((3, 2)), [2, 1]))
        np.testing.assert_array_equal(p.batch_sizes, [2, 1])
        assert p.unsorted_indices is None


ERRORS = [
    (lambda: pack_padded_sequence(np.zeros((5, 3, 2)), [5, 3, 4]), RuntimeError,
     "`lengths` array must be sorted in decreasing order when `enforce_sorted` is True. You can pass "
     "`enforce_sorted=False` to pack_padded_sequence and/or pack_sequence to sidestep this requirement "
     "if you do not need ONNX exportability."),
    (lambda: pack_padded_sequence(np.zeros((5, 3, 2)), [5, 3, 0]), RuntimeError,
     "Length of all samples has to be greater than 0, but found an element in 'lengths' that is <= 0"),
    (lambda: pack_padded_sequence(np.zeros((5, 3, 2)), [5, 3, -1], enforce_sorted=False), RuntimeError,
     "Length of all samples has to be greater than 0"),
    (lambda: pack_padded_sequence(np.zeros((5, 3, 2)), [5, 3]), RuntimeError,
     "Expected `len(lengths)` to be equal to batch_size, but got 2 (batch_size=3)"),
    (lambda: pack_padded_sequence(np.zeros((0, 3, 2)), [1, 1, 1]), RuntimeError, "Cannot pack empty tensors."),
    (lambda: pack_sequence([]), RuntimeError, "received an empty list of sequences"),
    (lambda: pack_sequence([np.zeros((2, 3)), np.zeros((3, 3))]), RuntimeError,
     "`lengths` array must be sorted in decreasing order"),
    (lambda: pad_sequence([]), RuntimeError, "received an empty list of sequences"),
    (lambda: pad_sequence(5), RuntimeError,
     "pad_sequence: Expected iterable for input sequences, but got arg of type: <class 'int'>"),
    (lambda: pad_sequence([np.zeros(2)], padding_side="middle"), RuntimeError,
     "Expected padding_side to be one of left or right, but got middle."),
    (lambda: pad_packed_sequence(pack_sequence([np.zeros(3), np.zeros(2)]), total_length=2), ValueError,
     "Expected total_length to be at least the length of the longest sequence in input, but got "
     "total_length=2 and max sequence length being 3"),
    # beyond PyTorch, which reads past the end or fails obscurely here:
    (lambda: pack_padded_sequence(np.zeros((5, 3, 2)), [6, 3, 1]), ValueError,
     "Expected every length to be at most the input's sequence length 5, but got 6"),
    (lambda: pack_padded_sequence(np.zeros((5, 3, 2)), [[5, 3, 1]]), RuntimeError,
     "'lengths' argument should be a 1D array of integers, but got 2D array"),
    (lambda: pack_padded_sequence(np.zeros((5, 3, 2)), [5, 3, 1.5]), TypeError,
     "'lengths' argument should be a 1-D array of integers, got dtype float64"),
    (lambda: pack_padded_sequence(np.zeros(5), [5]), ValueError,
     "pack_padded_sequence: input must have at least 2 dimensions (time and batch), got 1"),
    (lambda: pad_sequence([np.zeros((2, 3)), np.zeros((3, 4))]), RuntimeError,
     "pad_sequence: every sequence needs the trailing shape (3,) of sequence 0, but sequence 1 has shape (3, 4)"),
    (lambda: unpad_sequence(np.zeros((4, 2, 3)), [4, 2, 1]), ValueError,
     "unpad_sequence: got 3 lengths for a batch of 2 sequences"),
    (lambda: pad_packed_sequence(np.zeros((3, 2))), TypeError, "sequence must be a PackedSequence, got ndarray"),
    (lambda: nprnn.GRU(2, 3)(np.zeros((4, 2, 2), np.float32), lengths=[4, 5]), ValueError,
     "Expected every length to be at most the input's sequence length 4, but got 5"),
    (lambda: nprnn.GRU(2, 3)(np.zeros((4, 2, 2), np.float32), lengths=[4]), RuntimeError,
     "Expected `len(lengths)` to be equal to batch_size, but got 1 (batch_size=2)"),
    (lambda: nprnn.LSTM(2, 3)(PackedSequence(np.zeros((5, 4), np.float32), [2, 2, 1])), RuntimeError,
     "input.size(-1) must be equal to input_size. Expected 2, got 4"),
    (lambda: nprnn.GRU(2, 3)(PackedSequence(np.zeros((5, 2, 1), np.float32), [2, 2, 1])), RuntimeError,
     "input must have 2 dimensions, got 3"),
    (lambda: nprnn.GRU(2, 3)(PackedSequence(np.zeros((5, 2), np.float32), [2, 2])), ValueError,
     "GRU: batch_sizes [2, 2] do not describe a packed batch of 5 rows"),
    (lambda: PackedSequence(np.zeros((5, 2), np.float32), [2, 3]), ValueError,
     "PackedSequence: batch_sizes must be a non-empty 1-D array of positive, non-increasing integers, got [2, 3]"),
    (lambda: PackedSequence(np.zeros((0, 2), np.float32), []), ValueError,
     "PackedSequence: batch_sizes must be a non-empty 1-D array of positive, non-increasing integers, got []"),
    (lambda: PackedSequence(np.zeros((3, 2), np.float32), [3], [-1, 2, 0]), ValueError,
     "PackedSequence: sorted_indices must be a permutation of 0..2 (one index per sequence), got [-1, 2, 0]"),
    (lambda: PackedSequence(np.zeros((3, 2), np.float32), [3], [0, 0, 1]), ValueError,
     "PackedSequence: sorted_indices must be a permutation of 0..2 (one index per sequence), got [0, 0, 1]"),
    (lambda: PackedSequence(np.zeros((3, 2), np.float32), [3], [0, 1, 5]), ValueError,
     "PackedSequence: sorted_indices must be a permutation of 0..2 (one index per sequence), got [0, 1, 5]"),
    (lambda: PackedSequence(np.zeros((3, 2), np.float32), [3], [0.5, 1, 2]), TypeError,
     "PackedSequence: sorted_indices must hold integers, got dtype float64"),
    (lambda: PackedSequence(np.zeros((3, 2), np.float32), [3], [1, 2, 0], [1, 2, 0]), ValueError,
     "PackedSequence: unsorted_indices must be the inverse of sorted_indices"),
    (lambda: PackedSequence(np.zeros((3, 2), np.float32), [3.0]), TypeError,
     "PackedSequence: batch_sizes must hold integers, got dtype float64"),
    (lambda: pad_packed_sequence(pack_sequence([np.zeros((2, 2), np.float32)]), padding_value=None), TypeError,
     "pad_packed_sequence(): argument 'padding_value' must be Number, not NoneType"),
    (lambda: pad_packed_sequence(pack_sequence([np.zeros((2, 2), np.float32)]), total_length=3.5), TypeError,
     "pad_packed_sequence(): argument 'total_length' must be int, not float"),
    (lambda: pack_padded_sequence(np.zeros((3, 2, 1)), [3, 2], batch_first="yes"), TypeError,
     "pack_padded_sequence(): argument 'batch_first' must be bool, not str"),
    (lambda: pack_padded_sequence(np.zeros((3, 2, 1)), [3, 2], enforce_sorted=None), TypeError,
     "pack_padded_sequence(): argument 'enforce_sorted' must be bool, not NoneType"),
    (lambda: pack_sequence([np.zeros((2, 2))], enforce_sorted=1), TypeError,
     "pack_sequence(): argument 'enforce_sorted' must be bool, not int"),
    (lambda: pad_packed_sequence(pack_sequence([np.zeros((2, 2))]), batch_first="x"), TypeError,
     "pad_packed_sequence(): argument 'batch_first' must be bool, not str"),
    (lambda: pad_sequence([np.zeros(2)], padding_value=None), TypeError,
     "pad_sequence(): argument 'padding_value' must be Number, not NoneType"),
    (lambda: pad_sequence([np.zeros(2)], batch_first=0), TypeError,
     "pad_sequence(): argument 'batch_first' must be bool, not int"),
    (lambda: unpad_sequence(np.zeros((3, 2, 1)), [2.5, 1]), TypeError,
     "unpad_sequence: lengths must be integers, got [2.5, 1.0]"),
    (lambda: unpad_sequence(np.zeros((3, 2, 1)), [2, 1], batch_first="no"), TypeError,
     "unpad_sequence(): argument 'batch_first' must be bool, not str"),
    (lambda: nprnn.GRU(2, 3)(pack_sequence([np.zeros((2, 2), np.float32)]), lengths=[2]), ValueError,
     "GRU: lengths= is for padded input; a PackedSequence carries its own lengths"),
    (lambda: nprnn.LSTM(2, 3)(pack_sequence([np.zeros((2, 2), np.float32)] * 2), (np.zeros((1, 3, 3), np.float32),
                                                                                  ) * 2),
     RuntimeError, "Expected hidden[0] size (1, 2, 3), got [1, 3, 3]"),
]


@pytest.mark.parametrize("call,exc,msg", ERRORS, ids=[str(i) for i in range(len(ERRORS))])
def test_error(call, exc, msg):
    with pytest.raises(exc, match=re.escape(msg)):
        call()


@pytest.mark.torch
@pytest.mark.parametrize("call,exc,msg", ERRORS[:11], ids=[str(i) for i in range(11)])
def test_error_messages_equal_torch(call, exc, msg):
    import torch
    import torch.nn.utils.rnn as tr

    g = dict(call.__globals__)
    g.update(pack_padded_sequence=tr.pack_padded_sequence, pack_sequence=tr.pack_sequence, pad_sequence=tr.pad_sequence,
             pad_packed_sequence=tr.pad_packed_sequence)
    g["np"] = type("np_as_torch", (), {"zeros": staticmethod(lambda s: torch.zeros(s))})
    with pytest.raises(exc) as ours:
        call()
    with pytest.raises(exc) as theirs:
        type(call)(call.__code__, g)()
    assert str(ours.value) == str(theirs.value)


@pytest.mark.torch
def test_utilities_equal_torch():
    import torch
    import torch.nn.utils.rnn as tr

    rng = np.random.default_rng(1)
    for _ in range(100):
        B, L = int(rng.integers(1, 6)), int(rng.integers(1, 7))
        bf = bool(rng.random() < 0.5)
        lengths = rand_lengths(rng, B, L)
        x = rng.standard_normal((B, L, 2) if bf else (L, B, 2))
        p = pack_padded_sequence(x, lengths, batch_first=bf, enforce_sorted=False)
        pt = tr.pack_padded_sequence(torch.from_numpy(x), torch.from_numpy(lengths), batch_first=bf,
                                     enforce_sorted=False)
        for ours, theirs in zip(p, pt):
            np.testing.assert_array_equal(ours, theirs.numpy())
        total = L + int(rng.integers(0, 3))
        ours = pad_packed_sequence(p, bf, padding_value=-2.0, total_length=total)
        theirs = tr.pad_packed_sequence(pt, bf, padding_value=-2.0, total_length=total)
        for a, b in zip(ours, theirs):
            np.testing.assert_array_equal(a, b.numpy())
        seqs = [rng.standard_normal((int(n), 2)) for n in lengths]
        side = str(rng.choice(["left", "right"]))
        np.testing.assert_array_equal(pad_sequence(seqs, bf, 0.5, side),
                                      tr.pad_sequence([torch.from_numpy(s) for s in seqs], bf, 0.5, side).numpy())
        ps, pst = pack_sequence(seqs, enforce_sorted=False), tr.pack_sequence([torch.from_numpy(s) for s in seqs],
                                                                              enforce_sorted=False)
        np.testing.assert_array_equal(ps.data, pst.data.numpy())
        for a, b in zip(unpack_sequence(ps), tr.unpack_sequence(pst)):
            np.testing.assert_array_equal(a, b.numpy())


@pytest.mark.parametrize("kind", ["RNN", "LSTM", "GRU"])
@pytest.mark.parametrize("batch_first", [False, True])
def test_lengths_equals_pack_run_unpack(kind, batch_first):
    rng = np.random.default_rng(2)
    B, L = 5, 6
    lengths = np.array([3, 6, 1, 6, 2])
    x = rng.standard_normal((B, L, 3) if batch_first else (L, B, 3))
    a = getattr(nprnn, kind)(3, 4, num_layers=2, bidirectional=True, batch_first=batch_first, dtype=np.float64, seed=0)
    b = getattr(nprnn, kind)(3, 4, num_layers=2, bidirectional=True, batch_first=batch_first, dtype=np.float64, seed=0)
    out_a, hn_a = a(x, lengths=lengths)
    packed = pack_padded_sequence(x, lengths, batch_first=batch_first, enforce_sorted=False)
    out_p, hn_b = b(packed)
    out_b, _ = pad_packed_sequence(out_p, batch_first=batch_first, total_length=L)
    np.testing.assert_allclose(out_a, out_b, rtol=1e-13, atol=1e-15)
    np.testing.assert_allclose(np.asarray(hn_a), np.asarray(hn_b), rtol=1e-13, atol=1e-15)
    g = rng.standard_normal(out_a.shape)
    gx_a, gh_a = a.backward(g)
    gx_p, gh_b = b.backward(pack_padded_sequence(g, lengths, batch_first=batch_first, enforce_sorted=False))
    assert isinstance(gx_p, PackedSequence)
    gx_b, _ = pad_packed_sequence(gx_p, batch_first=batch_first, total_length=L)
    np.testing.assert_allclose(gx_a, gx_b, rtol=1e-13, atol=1e-15)
    np.testing.assert_allclose(np.asarray(gh_a), np.asarray(gh_b), rtol=1e-13, atol=1e-15)
    for k in a.grads:
        np.testing.assert_allclose(a.grads[k], b.grads[k], rtol=1e-13, atol=1e-15)
    # outputs past each end are zeros, and so are the input gradients there
    mask = np.arange(L)[None, :] >= lengths[:, None]
    pad_out = out_a[mask] if batch_first else out_a.transpose(1, 0, 2)[mask]
    pad_gx = gx_a[mask] if batch_first else gx_a.transpose(1, 0, 2)[mask]
    assert (pad_out == 0).all() and (pad_gx == 0).all()


def test_lengths_equals_running_each_sequence_alone():
    """h_n is each sequence's own last state; the reverse direction starts at its real end;
    gradients never flow from the padding."""
    rng = np.random.default_rng(3)
    m = nprnn.LSTM(3, 4, bidirectional=True, dtype=np.float64, seed=1)
    lengths = [4, 2, 3]
    x = rng.standard_normal((4, 3, 3))
    x[2:, 1] = 1e3  # garbage in the padding must not matter
    out, (h, c) = m(x, lengths=lengths)
    g = rng.standard_normal(out.shape)
    gx, _ = m.backward(g)
    for i, n in enumerate(lengths):
        oi, (hi, ci) = m(x[:n, i:i + 1])
        np.testing.assert_allclose(out[:n, i], oi[:, 0], rtol=1e-12)
        np.testing.assert_allclose(h[:, i], hi[:, 0], rtol=1e-12)
        np.testing.assert_allclose(c[:, i], ci[:, 0], rtol=1e-12)
        gxi, _ = m.backward(g[:n, i:i + 1])
        np.testing.assert_allclose(gx[:n, i], gxi[:, 0], rtol=1e-12)
        assert (gx[n:, i] == 0).all()


def test_backward_with_packed_grad_type_error():
    m = nprnn.GRU(2, 3)
    out, _ = m(np.zeros((3, 2, 2), np.float32))
    with pytest.raises(TypeError, match="grad_output is a PackedSequence but the forward input was not packed"):
        m.backward(pack_sequence([np.zeros((3, 3), np.float32)] * 2))

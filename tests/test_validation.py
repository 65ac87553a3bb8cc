"""Every bad argument gets a clear error naming it, in PyTorch's words where PyTorch has some."""
import re

import numpy as np
import pytest

import nprnn

f32 = np.float32


def rnd(*shape, dtype=f32):
    return np.random.default_rng(0).standard_normal(shape).astype(dtype)


# (callable, exception type, message) -- the messages PyTorch also uses are checked against it in
# test_messages_equal_torch below.
CONSTRUCTOR = [
    (lambda: nprnn.RNN(5, 6, dropout=1.5), ValueError,
     "dropout should be a number in range [0, 1] representing the probability of an element being zeroed"),
    (lambda: nprnn.LSTM(5, 6, dropout="0.1"), ValueError, "dropout should be a number in range [0, 1]"),
    (lambda: nprnn.GRU(5, 6, bias=1), TypeError, "bias should be of type bool, got: int"),
    (lambda: nprnn.RNN(5, 6, batch_first="yes"), TypeError, "batch_first should be of type bool, got: str"),
    (lambda: nprnn.RNN(5.0, 6), TypeError, "input_size should be of type int, got: float"),
    (lambda: nprnn.RNN(0, 6), ValueError, "input_size must be greater than zero"),
    (lambda: nprnn.LSTM(5, 6.5), TypeError, "hidden_size should be of type int, got: float"),
    (lambda: nprnn.LSTM(5, 0), ValueError, "hidden_size must be greater than zero"),
    (lambda: nprnn.GRU(5, 6, num_layers=0), ValueError, "num_layers must be greater than zero"),
    (lambda: nprnn.LSTM(5, 6, proj_size=6), ValueError, "proj_size has to be smaller than hidden_size"),
    (lambda: nprnn.LSTM(5, 6, proj_size=-1), ValueError,
     "proj_size should be a positive integer or zero to disable projections"),
    (lambda: nprnn.GRU(5, 6, proj_size=2), ValueError, "proj_size argument is only supported for LSTM, not RNN or GRU"),
    (lambda: nprnn.RNN(5, 6, proj_size=2), ValueError, "proj_size argument is only supported for LSTM, not RNN or GRU"),
    (lambda: nprnn.RNN(5, 6, nonlinearity="sigmoid"), ValueError,
     "Unknown nonlinearity 'sigmoid'. Select from 'tanh' or 'relu'."),
    (lambda: nprnn.RNNCell(5, 6, nonlinearity="sigmoid"), ValueError,
     "Unknown nonlinearity 'sigmoid'. Select from 'tanh' or 'relu'."),
    (lambda: nprnn.LSTM(5, 6, dtype=np.float16), TypeError,
     "dtype must be numpy.float32 or numpy.float64, got float16"),
    (lambda: nprnn.LSTMCell(5, 6, dtype="int32"), TypeError, "dtype must be numpy.float32 or numpy.float64, got int32"),
    (lambda: nprnn.GRU(5, 6, seed="x"), TypeError, "seed should be None, an int or a numpy.random.Generator, got: str"),
    (lambda: nprnn.GRUCell(5, -1), ValueError, "hidden_size must be greater than zero"),
]

rnn = nprnn.RNN(5, 6, num_layers=2)
lstm = nprnn.LSTM(5, 6, num_layers=2)
gru = nprnn.GRU(5, 6, num_layers=2)
lstm64 = nprnn.LSTM(5, 6, dtype=np.float64)

FORWARD = [
    (lambda: lstm(rnd(3, 2, 5, 1)), ValueError, "LSTM: Expected input to be 2D or 3D, got 4D instead"),
    (lambda: gru(rnd(5)), ValueError, "GRU: Expected input to be 2D or 3D, got 1D instead"),
    (lambda: rnn(rnd(3, 2, 5, 1)), ValueError, "RNN: Expected input to be 2D or 3D, got 4D tensor instead"),
    (lambda: lstm(rnd(3, 2, 4)), RuntimeError, "input.size(-1) must be equal to input_size. Expected 5, got 4"),
    (lambda: rnn(rnd(3, 2, 5), rnd(2, 4, 6)), RuntimeError, "Expected hidden size (2, 2, 6), got [2, 4, 6]"),
    (lambda: rnn(rnd(3, 2, 5), rnd(2, 6)), RuntimeError,
     "For batched 3-D input, hx should also be 3-D but got 2-D tensor"),
    (lambda: gru(rnd(3, 5), rnd(2, 1, 6)), RuntimeError,
     "For unbatched 2-D input, hx should also be 2-D but got 3-D tensor"),
    (lambda: lstm(rnd(3, 2, 5), (rnd(2, 2, 6), rnd(2, 2))), RuntimeError,
     "For batched 3-D input, hx and cx should also be 3-D but got (3-D, 2-D) tensors"),
    (lambda: lstm(rnd(3, 5), (rnd(2, 2, 6), rnd(2, 6))), RuntimeError,
     "For unbatched 2-D input, hx and cx should also be 2-D but got (3-D, 2-D) tensors"),
    (lambda: lstm(rnd(3, 2, 5), (rnd(2, 3, 6), rnd(2, 2, 6))), RuntimeError,
     "Expected hidden[0] size (2, 2, 6), got [2, 3, 6]"),
    (lambda: lstm(rnd(3, 2, 5), (rnd(2, 2, 6), rnd(2, 2, 7))), RuntimeError,
     "Expected hidden[1] size (2, 2, 6), got [2, 2, 7]"),
    (lambda: lstm(rnd(3, 2, 5), rnd(2, 2, 6)), TypeError, "LSTM: hx must be a tuple (h_0, c_0) of two arrays"),
    (lambda: lstm(rnd(3, 2, 5), (rnd(2, 2, 6),)), TypeError,
     "LSTM: hx must be a tuple (h_0, c_0) of two arrays, got tuple of length 1"),
    (lambda: gru(rnd(0, 2, 5)), RuntimeError, "Expected sequence length to be larger than 0 in RNN"),
    (lambda: lstm(rnd(3, 2, 5, dtype=np.float64)), ValueError,
     "LSTM input dtype (float64) does not match weight dtype (float32)"),
    (lambda: lstm64(rnd(3, 2, 5)), ValueError, "LSTM input dtype (float32) does not match weight dtype (float64)"),
    (lambda: lstm(rnd(3, 2, 5), (rnd(2, 2, 6, dtype=np.float64), rnd(2, 2, 6))), ValueError,
     "LSTM hx dtype (float64) does not match weight dtype (float32)"),
    (lambda: gru(np.ones((3, 2, 5), np.int64)), TypeError,
     "GRU: input must be a floating-point array of dtype float32, got dtype int64"),
    (lambda: gru([["a"] * 5] * 3), TypeError, "GRU: input must be an array of numbers"),
]

CELLS = [
    (lambda: nprnn.RNNCell(5, 6)(rnd(3, 2, 5)), ValueError, "RNNCell: Expected input to be 1D or 2D, got 3D instead"),
    (lambda: nprnn.GRUCell(5, 6)(rnd(3, 5), rnd(3, 6, 1)), ValueError,
     "GRUCell: Expected hidden to be 1D or 2D, got 3D instead"),
    (lambda: nprnn.LSTMCell(5, 6)(rnd(3, 5), (rnd(3, 6, 1), rnd(3, 6))), ValueError,
     "LSTMCell: Expected hx[0] to be 1D or 2D, got 3D instead"),
    (lambda: nprnn.RNNCell(5, 6)(rnd(3, 4)), RuntimeError, "input has inconsistent input_size: got 4 expected 5"),
    (lambda: nprnn.RNNCell(5, 6)(rnd(3, 5), rnd(2, 6)), RuntimeError,
     "Input batch size 3 doesn't match hidden0 batch size 2"),
    (lambda: nprnn.RNNCell(5, 6)(rnd(3, 5), rnd(3, 7)), RuntimeError,
     "hidden0 has inconsistent hidden_size: got 7, expected 6"),
    (lambda: nprnn.LSTMCell(5, 6)(rnd(3, 5), (rnd(3, 6), rnd(3, 7))), RuntimeError,
     "hidden1 has inconsistent hidden_size: got 7, expected 6"),
    (lambda: nprnn.LSTMCell(5, 6)(rnd(3, 5), (rnd(3, 6),)), RuntimeError, "lstm_cell expects two hidden states"),
    (lambda: nprnn.GRUCell(5, 6)(rnd(5), rnd(1, 6)), ValueError,
     "GRUCell: Expected hidden to be 1D for 1D input, got 2D instead"),
    (lambda: nprnn.GRUCell(5, 6)(rnd(2, 5, dtype=np.float64)), ValueError,
     "GRUCell input dtype (float64) does not match"),
]


@pytest.mark.parametrize("call,exc,msg", CONSTRUCTOR + FORWARD + CELLS,
                         ids=[f"{i}" for i in range(len(CONSTRUCTOR + FORWARD + CELLS))])
def test_error(call, exc, msg):
    with pytest.raises(exc, match=re.escape(msg)):
        call()


def test_dropout_warning_with_one_layer():
    with pytest.warns(UserWarning, match=re.escape(
            "dropout option adds dropout after all but last recurrent layer, so non-zero dropout expects "
            "num_layers greater than 1, but got dropout=0.5 and num_layers=1")):
        nprnn.LSTM(5, 6, dropout=0.5)


@pytest.mark.torch
@pytest.mark.parametrize("call,exc,msg", CONSTRUCTOR[:14] + FORWARD[:11] + CELLS[:8],
                         ids=[f"{i}" for i in range(33)])
def test_messages_equal_torch(call, exc, msg):
    """The same mistake made in PyTorch gives the same exception type and message."""
    import torch

    with pytest.raises(exc) as ours:
        call()
    src = call.__code__
    # replay the call against torch.nn by swapping the namespace and the array constructor
    g = dict(call.__globals__)
    g["nprnn"] = torch.nn
    g["rnd"] = lambda *s, dtype=f32: torch.from_numpy(rnd(*s, dtype=dtype))
    g["rnn"], g["lstm"], g["gru"] = torch.nn.RNN(5, 6, 2), torch.nn.LSTM(5, 6, 2), torch.nn.GRU(5, 6, 2)
    replay = type(call)(src, g)
    with pytest.raises(exc) as theirs:
        replay()
    assert str(ours.value) == str(theirs.value)


class TestBackwardErrors:
    def test_without_forward(self):
        with pytest.raises(RuntimeError, match=r"LSTM.backward\(\) needs a forward pass in training mode"):
            nprnn.LSTM(5, 6).backward(rnd(3, 2, 6))

    def test_after_eval_forward(self):
        m = nprnn.GRU(5, 6).eval()
        out, _ = m(rnd(3, 2, 5))
        with pytest.raises(RuntimeError, match="needs a forward pass in training mode"):
            m.backward(out)

    def test_twice(self):
        m = nprnn.RNN(5, 6)
        out, _ = m(rnd(3, 2, 5))
        m.backward(out)
        with pytest.raises(RuntimeError, match="each forward can be backpropagated once"):
            m.backward(out)

    def test_cell_without_forward(self):
        message = r"LSTMCell.backward\(\) needs a forward pass in training mode first, in the same thread"
        with pytest.raises(RuntimeError, match=message):
            nprnn.LSTMCell(5, 6).backward((rnd(2, 6), None))

    def test_grad_output_shape(self):
        m = nprnn.RNN(5, 6)
        m(rnd(3, 2, 5))
        with pytest.raises(ValueError, match=re.escape("RNN: grad_output has shape (3, 2, 5), expected (3, 2, 6)")):
            m.backward(rnd(3, 2, 5))

    def test_grad_hn_shape(self):
        m = nprnn.LSTM(5, 6)
        out, _ = m(rnd(3, 2, 5))
        with pytest.raises(ValueError, match=re.escape("LSTM: grad_c_n has shape (1, 2, 5), expected (1, 2, 6)")):
            m.backward(out, (None, rnd(1, 2, 5)))

    def test_grad_hn_not_pair(self):
        m = nprnn.LSTM(5, 6)
        out, _ = m(rnd(3, 2, 5))
        with pytest.raises(TypeError, match="grad_hn must be None or a pair"):
            m.backward(out, rnd(1, 2, 6))

    def test_cell_grad_shape(self):
        c = nprnn.GRUCell(5, 6)
        c(rnd(2, 5))
        with pytest.raises(ValueError, match=re.escape("GRUCell: grad_h has shape (6,), expected (2, 6)")):
            c.backward(rnd(6))

    def test_cell_failed_backward_keeps_record(self):
        c = nprnn.RNNCell(5, 6)
        h = c(rnd(2, 5))
        with pytest.raises(ValueError):
            c.backward(rnd(6))
        c.backward(h)  # the record was not consumed by the failed call


class TestStateDict:
    def test_every_problem_at_once_and_unchanged(self):
        m = nprnn.LSTM(5, 6, num_layers=2)
        before = m.state_dict()
        bad = dict(before)
        del bad["bias_hh_l1"]
        bad["weight_ih_l0"] = np.zeros((24, 4))
        bad["foo"] = np.zeros(2)
        bad["weight_hh_l0"] = np.zeros((24, 6))  # valid, must not be applied either
        with pytest.raises(RuntimeError) as e:
            m.load_state_dict(bad)
        msg = str(e.value)
        assert msg.startswith("Error(s) in loading state_dict for LSTM:")
        assert 'Missing key(s) in state_dict: "bias_hh_l1".' in msg
        assert 'Unexpected key(s) in state_dict: "foo".' in msg
        assert ("size mismatch for weight_ih_l0: copying a param with shape (24, 4) from checkpoint, "
                "the shape in current model is (24, 5).") in msg
        for k, v in m.state_dict().items():
            np.testing.assert_array_equal(v, before[k])

    def test_non_strict(self):
        m = nprnn.GRU(5, 6)
        sd = m.state_dict()
        del sd["bias_ih_l0"]
        sd["extra"] = np.zeros(1)
        res = m.load_state_dict(sd, strict=False)
        assert res.missing_keys == ["bias_ih_l0"] and res.unexpected_keys == ["extra"]

    def test_not_a_mapping(self):
        with pytest.raises(TypeError, match="Expected state_dict to be dict-like"):
            nprnn.GRU(5, 6).load_state_dict([1, 2])

    def test_non_numeric_value(self):
        m = nprnn.RNN(2, 3)
        sd = m.state_dict()
        sd["bias_ih_l0"] = np.array(["a", "b", "c"])
        with pytest.raises(RuntimeError, match="bias_ih_l0 has non-numeric dtype"):
            m.load_state_dict(sd)

    def test_names_and_order(self):
        m = nprnn.LSTM(3, 4, num_layers=2, bidirectional=True, proj_size=2)
        assert list(m.state_dict())[:6] == ["weight_ih_l0", "weight_hh_l0", "bias_ih_l0", "bias_hh_l0",
                                            "weight_hr_l0", "weight_ih_l0_reverse"]
        assert m.weight_hh_l1_reverse.shape == (16, 2)
        assert m.weight_ih_l1.shape == (16, 4)
        assert list(m.grads) == list(m.state_dict())

    def test_loads_into_parameters_in_place(self):
        m = nprnn.RNN(2, 3)
        w = m.weight_ih_l0
        m.load_state_dict({k: np.ones_like(v) for k, v in m.state_dict().items()})
        assert m.weight_ih_l0 is w and (w == 1).all()

    def test_parameter_assignment_shape(self):
        m = nprnn.RNN(2, 3)
        with pytest.raises(ValueError,
                           match=re.escape("cannot assign an array of shape (3, 3) to parameter 'weight_ih_l0' of "
                                           "shape (3, 2)")):
            m.weight_ih_l0 = np.zeros((3, 3))

    @pytest.mark.torch
    def test_loads_torch_state_dict(self):
        import torch

        t = torch.nn.LSTM(5, 6, num_layers=2, bidirectional=True, proj_size=3)
        m = nprnn.LSTM(5, 6, num_layers=2, bidirectional=True, proj_size=3)
        m.load_state_dict({k: v.numpy() for k, v in t.state_dict().items()})
        m.load_state_dict(t.state_dict())  # tensors directly
        x = rnd(4, 2, 5)
        np.testing.assert_allclose(m(x)[0], t(torch.from_numpy(x))[0].detach().numpy(), rtol=1.3e-6, atol=1e-5)


def test_dtype_none_means_float32_as_in_torch():
    assert nprnn.LSTM(2, 3, dtype=None).dtype == np.float32
    assert nprnn.GRUCell(2, 3, dtype=None).dtype == np.float32


def test_other_byte_order_is_named_as_such():
    m = nprnn.GRU(2, 3)
    with pytest.raises(ValueError, match=re.escape("GRU input dtype (>f4) is float32 in the other byte order. "
                                                   "Convert input: input.astype(numpy.float32)")):
        m(np.zeros((2, 1, 2), ">f4"))
    with pytest.raises(ValueError) as info:
        m(np.zeros((2, 1, 2), ">f8"))
    assert "dtype=numpy.>" not in str(info.value)


def test_float16_input_is_told_a_dtype_the_constructor_accepts():
    m = nprnn.LSTM(2, 3)
    with pytest.raises(ValueError) as info:
        m(np.zeros((2, 1, 2), np.float16))
    assert "input.astype(numpy.float32)" in str(info.value)
    assert "float16," not in str(info.value) and "dtype=numpy.float16" not in str(info.value)
    with pytest.raises(ValueError, match=re.escape("or build the model with dtype=numpy.float64")):
        m(np.zeros((2, 1, 2), np.float64))  # a dtype a model can hold is still offered


@pytest.mark.filterwarnings("ignore::PendingDeprecationWarning")  # NumPy's own, on making a matrix
@pytest.mark.parametrize("batch_first", [False, True])
@pytest.mark.parametrize("kind", ["RNN", "LSTM", "GRU"])
def test_a_numpy_matrix_is_taken_as_the_array_it_holds(kind, batch_first):
    m = getattr(nprnn, kind)(3, 4, batch_first=batch_first)
    x = rnd(5, 3)
    out, _ = m(np.matrix(x))  # unbatched (L, H_in)
    assert type(out) is np.ndarray
    np.testing.assert_array_equal(out, m(x)[0])
    cell = getattr(nprnn, kind + "Cell")(3, 4)
    np.testing.assert_array_equal(np.asarray(cell(np.matrix(x))[0] if kind == "LSTM" else cell(np.matrix(x))),
                                  np.asarray(cell(x)[0] if kind == "LSTM" else cell(x)))


def test_a_masked_array_is_refused_by_name():
    with pytest.raises(TypeError, match="input must be a plain array, got a masked array"):
        nprnn.GRU(3, 4)(np.ma.masked_array(rnd(5, 3), mask=False))


@pytest.mark.parametrize("lengths", [np.array([5, 3], dtype=object), ["5", "3"], np.array([5, None], dtype=object),
                                     [b"5", b"3"]])
def test_lengths_that_are_not_integers_get_the_packing_wording(lengths):
    x = rnd(5, 2, 3)
    for call in (lambda: nprnn.LSTM(3, 4)(x, lengths=lengths),
                 lambda: nprnn.utils.rnn.pack_padded_sequence(x, lengths)):
        with pytest.raises(TypeError, match="'lengths' argument should be a 1-D array of integers, got dtype"):
            call()

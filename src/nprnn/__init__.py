"""nprnn: PyTorch's recurrent layers written from first principles on NumPy."""
from . import config, losses, optim, utils
from .activations import LogSoftmax, ReLU, Sigmoid, Softmax, Tanh
from .cells import GRUCell, LSTMCell, RNNCell
from .functional.native import backend, set_backend
from .layers import Dropout, Embedding, LayerNorm, Linear
from .module import Module, writable
from .packing import (
    PackedSequence,
    pack_padded_sequence,
    pack_sequence,
    pad_packed_sequence,
    pad_sequence,
    unpack_sequence,
    unpad_sequence,
)
from .recurrent import GRU, LSTM, RNN, RNNBase
from .sequential import LastStep, Sequential
from .threads import get_helper_process, get_num_threads, set_helper_process, set_num_threads

__version__ = "0.1.0"

__all__ = [
    "RNN", "LSTM", "GRU", "RNNCell", "LSTMCell", "GRUCell", "RNNBase", "Module", "optim", "losses", "config",
    "PackedSequence", "pack_padded_sequence", "pad_packed_sequence", "pad_sequence", "unpad_sequence",
    "pack_sequence", "unpack_sequence", "utils", "set_num_threads", "get_num_threads", "set_helper_process",
    "get_helper_process", "backend", "set_backend", "writable", "Sequential", "LastStep", "ReLU", "Tanh",
    "Sigmoid", "Softmax", "LogSoftmax", "Linear", "Embedding", "Dropout", "LayerNorm", "__version__",
]

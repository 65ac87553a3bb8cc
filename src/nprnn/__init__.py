"""nprnn: PyTorch's recurrent layers written from first principles on NumPy.

The package's layers: :mod:`nprnn.functional` (the kernels: cell steps, the time loop,
the layer stack; plain functions), :mod:`nprnn.nn` (the layers users build with),
:mod:`nprnn.parallel` (threads and scale-out), :mod:`nprnn.interop` (files, PyTorch,
ONNX), :mod:`nprnn.teach` (explain, diagrams, demo) and the CLI (:mod:`nprnn.cli`).
"""
from . import (
    _moved,  # noqa: F401  (first: nprnn.serialization, nprnn.onnx, ... the paths users have)
    config,
    utils,
)
from .functional.native import backend, backend_info, set_backend
from .nn import init, losses, optim
from .nn.activations import LogSoftmax, ReLU, Sigmoid, Softmax, Tanh
from .nn.cells import GRUCell, LayerNormGRUCell, LayerNormLSTMCell, LSTMCell, MinGRUCell, MinLSTMCell, RNNCell
from .nn.layers import Dropout, Embedding, LayerNorm, Linear
from .nn.module import Module, writable
from .nn.packing import (
    PackedSequence,
    pack_padded_sequence,
    pack_sequence,
    pad_packed_sequence,
    pad_sequence,
    unpack_sequence,
    unpad_sequence,
)
from .nn.quantized import quantize
from .nn.recurrent import GRU, LSTM, RNN, LayerNormGRU, LayerNormLSTM, MinGRU, MinLSTM, RNNBase
from .nn.sequential import LastStep, Sequential
from .parallel.threads import get_helper_process, get_num_threads, set_helper_process, set_num_threads

__version__ = "0.1.0"

__all__ = [
    "RNN", "LSTM", "GRU", "RNNCell", "LSTMCell", "GRUCell", "LayerNormLSTM", "LayerNormGRU", "LayerNormLSTMCell",
    "LayerNormGRUCell", "MinGRU", "MinLSTM", "MinGRUCell", "MinLSTMCell",
    "RNNBase", "Module", "optim", "losses", "init", "config",
    "PackedSequence", "pack_padded_sequence", "pad_packed_sequence", "pad_sequence", "unpad_sequence",
    "pack_sequence", "unpack_sequence", "utils", "set_num_threads", "get_num_threads", "set_helper_process",
    "get_helper_process", "backend", "backend_info", "set_backend", "writable", "Sequential", "LastStep", "ReLU",
    "Tanh", "Sigmoid", "Softmax", "LogSoftmax", "Linear", "Embedding", "Dropout", "LayerNorm", "quantize",
    "__version__",
]

"""nprnn: PyTorch's recurrent layers written from first principles on NumPy."""
from .cells import GRUCell, LSTMCell, RNNCell
from .module import Module
from .recurrent import GRU, LSTM, RNN, RNNBase

__version__ = "0.1.0"

__all__ = ["RNN", "LSTM", "GRU", "RNNCell", "LSTMCell", "GRUCell", "RNNBase", "Module", "__version__"]

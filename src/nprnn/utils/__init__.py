"""Where PyTorch users look for the packed-sequence utilities: ``nprnn.utils.rnn``."""
from . import rnn

__all__ = ["rnn"]

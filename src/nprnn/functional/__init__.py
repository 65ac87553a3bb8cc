"""Pure NumPy kernels: per-step cells and the time loop.  No classes with state, no validation."""
from .cells import GRU, KINDS, LSTM, RNN_RELU, RNN_TANH, CellKind, StepWeights
from .linscan import linear_scan, linear_scan_backward
from .lncells import LN_GRU, LN_LSTM
from .scan import (
    DirectionRecord,
    alloc_blocks,
    block_views,
    direction_backward,
    direction_forward,
    prepare_weights,
    scan_backward,
    scan_forward,
    step_slices,
)

__all__ = [
    "CellKind", "StepWeights", "KINDS", "RNN_TANH", "RNN_RELU", "LSTM", "GRU", "LN_LSTM", "LN_GRU",
    "DirectionRecord", "direction_forward", "direction_backward", "prepare_weights",
    "scan_forward", "scan_backward", "step_slices", "alloc_blocks", "block_views", "linear_scan",
    "linear_scan_backward",
]

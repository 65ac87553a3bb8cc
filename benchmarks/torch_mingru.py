"""minGRU as PyTorch users run it today: the parallel log-space form, ``cumsum`` and
``logcumsumexp`` over time on whole tensors (Heinsen's scan, as lucidrains/minGRU-pytorch
and its many ports write it): the yardstick for ``nprnn.MinGRU`` in ``python -m
benchmarks`` (issue 29).  Time-major (L, N, H_in), zero initial state, layers stacked.

Its linear layer's rows are in nprnn's order (z, h~), so ``load_nprnn`` copies an
``nprnn.MinGRU``'s weights in and both compute the same numbers (``check`` says how close)."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn


def log_g(v: Tensor) -> Tensor:
    """log g(v): g(v) = v + 0.5 for v >= 0, sigmoid(v) below."""
    return torch.where(v >= 0, (F.relu(v) + 0.5).log(), -F.softplus(-v))


class MinGRULayer(nn.Module):
    def __init__(self, input_size: int, hidden_size: int) -> None:
        super().__init__()
        self.linear = nn.Linear(input_size, 2 * hidden_size)

    def forward(self, x: Tensor) -> Tensor:
        k, v = self.linear(x).chunk(2, dim=-1)
        log_a = -F.softplus(k)  # log(1 - z)
        log_b = -F.softplus(-k) + log_g(v)  # log(z * h~)
        a_star = log_a.cumsum(dim=0)
        return (a_star + (log_b - a_star).logcumsumexp(dim=0)).exp()


class StackedMinGRU(nn.Module):
    def __init__(self, input_size: int, hidden_size: int, num_layers: int) -> None:
        super().__init__()
        self.layers = nn.ModuleList(MinGRULayer(input_size if k == 0 else hidden_size, hidden_size)
                                    for k in range(num_layers))

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        for layer in self.layers:
            x = layer(x)
        return x, x[-1]


def load_nprnn(model: StackedMinGRU, layer) -> StackedMinGRU:
    """``model`` with the weights of ``layer`` (an ``nprnn.MinGRU``, mode log, one direction)."""
    sd = layer.state_dict()
    with torch.no_grad():
        for k, m in enumerate(model.layers):
            m.linear.weight.copy_(torch.from_numpy(sd[f"weight_ih_l{k}"]))
            m.linear.bias.copy_(torch.from_numpy(sd[f"bias_ih_l{k}"]))
    return model


def check(model: StackedMinGRU, layer, x) -> float:
    """The largest difference of the two outputs on ``x`` (L, N, H_in)."""
    with torch.no_grad():
        theirs = model(torch.from_numpy(x))[0].numpy()
    return float(abs(theirs - layer.eval()(x)[0]).max())

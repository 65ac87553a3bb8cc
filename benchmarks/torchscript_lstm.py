"""The layer-norm LSTM as PyTorch users write it today: a TorchScript cell looped over time
and over layers, in the manner of PyTorch's ``benchmarks/fastrnns/custom_lstms.py``
(``LayerNormLSTMCell``, ``LSTMLayer``, ``StackedLSTM``): the yardstick for
``nprnn.LayerNormLSTM`` in ``python -m benchmarks`` (issue 26).

Its parameters are named after nprnn's, so ``load_nprnn`` copies an nprnn layer's weights
in, and both compute the same numbers (``tests`` check nprnn against a plain PyTorch loop)."""
from __future__ import annotations

from typing import List, Tuple

import torch
from torch import Tensor, nn


class LayerNormLSTMCell(torch.jit.ScriptModule):
    def __init__(self, input_size: int, hidden_size: int) -> None:
        super().__init__()
        self.weight_ih = nn.Parameter(torch.randn(4 * hidden_size, input_size))
        self.weight_hh = nn.Parameter(torch.randn(4 * hidden_size, hidden_size))
        self.layernorm_i = nn.LayerNorm(4 * hidden_size)  # the norms' shifts stand in for the biases
        self.layernorm_h = nn.LayerNorm(4 * hidden_size)
        self.layernorm_c = nn.LayerNorm(hidden_size)

    @torch.jit.script_method
    def forward(self, x: Tensor, state: Tuple[Tensor, Tensor]) -> Tuple[Tensor, Tuple[Tensor, Tensor]]:
        h, c = state
        gates = self.layernorm_i(torch.mm(x, self.weight_ih.t())) + self.layernorm_h(torch.mm(h, self.weight_hh.t()))
        i, f, g, o = gates.chunk(4, 1)
        c = self.layernorm_c(torch.sigmoid(f) * c + torch.sigmoid(i) * torch.tanh(g))
        h = torch.sigmoid(o) * torch.tanh(c)
        return h, (h, c)


class LSTMLayer(torch.jit.ScriptModule):
    def __init__(self, input_size: int, hidden_size: int) -> None:
        super().__init__()
        self.cell = LayerNormLSTMCell(input_size, hidden_size)

    @torch.jit.script_method
    def forward(self, x: Tensor, state: Tuple[Tensor, Tensor]) -> Tuple[Tensor, Tuple[Tensor, Tensor]]:
        outputs = torch.jit.annotate(List[Tensor], [])
        for x_t in x.unbind(0):
            out, state = self.cell(x_t, state)
            outputs += [out]
        return torch.stack(outputs), state


class StackedLSTM(torch.jit.ScriptModule):
    """``num_layers`` layers, each reading the one below; zero initial states."""

    def __init__(self, input_size: int, hidden_size: int, num_layers: int) -> None:
        super().__init__()
        self.hidden_size = hidden_size
        self.layers = nn.ModuleList([LSTMLayer(input_size if k == 0 else hidden_size, hidden_size)
                                     for k in range(num_layers)])

    @torch.jit.script_method
    def forward(self, x: Tensor) -> Tuple[Tensor, List[Tuple[Tensor, Tensor]]]:
        zeros = torch.zeros(x.shape[1], self.hidden_size, dtype=x.dtype)
        states = torch.jit.annotate(List[Tuple[Tensor, Tensor]], [])
        out = x
        for layer in self.layers:
            out, state = layer(out, (zeros, zeros))
            states += [state]
        return out, states


def load_nprnn(model: StackedLSTM, layer) -> StackedLSTM:
    """``model`` with the weights of ``layer`` (an ``nprnn.LayerNormLSTM``, one direction,
    no projection)."""
    sd = layer.state_dict()
    with torch.no_grad():
        for k, lstm in enumerate(model.layers):
            cell = lstm.cell
            cell.weight_ih.copy_(torch.from_numpy(sd[f"weight_ih_l{k}"]))
            cell.weight_hh.copy_(torch.from_numpy(sd[f"weight_hh_l{k}"]))
            for norm, name in ((cell.layernorm_i, "ln_ih"), (cell.layernorm_h, "ln_hh"), (cell.layernorm_c, "ln_c")):
                norm.weight.copy_(torch.from_numpy(sd[f"{name}_weight_l{k}"]))
                norm.bias.copy_(torch.from_numpy(sd[f"{name}_bias_l{k}"]))
    return model

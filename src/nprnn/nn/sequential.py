"""Whole models: ``Sequential`` and ``LastStep``.

``Sequential(lstm, LastStep(batch_first=True), Linear(128, 10))`` runs its modules in
order.  A recurrent layer hands on its ``output`` (the first element of what it returns),
as Keras does; ``LastStep`` keeps each sequence's last step, what torch users write as
``output[:, -1]`` (for a bidirectional layer that is not ``h_n``: its reverse half at the
last step has seen one step only).  ``model(x, lengths=lengths)`` hands ``lengths`` to
every module that takes it, so ``LastStep`` then keeps each sequence's own last step.
``model.backward(grad)`` runs the modules' backward in reverse order and returns the
gradient of the input (None after an ``Embedding``, whose input is integers).
"""
from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

from .._checks import as_array, check_bool
from .module import Module
from .packing import PackedSequence, _check_lengths
from .recurrent import RNNBase


class LastStep(Module):
    """Each sequence's last time step of a recurrent layer's ``output``: (N, F) from
    (L, N, F) — (N, L, F) with ``batch_first`` — or (F,) from an unbatched (L, F).  With
    ``lengths=`` (padded input) or a ``PackedSequence``, each sequence's own last step."""

    def __init__(self, batch_first: bool = False) -> None:
        super().__init__()
        self.batch_first = check_bool("batch_first", batch_first)

    def extra_repr(self) -> str:
        return "batch_first=True" if self.batch_first else ""

    def forward(self, input: Any, lengths: Any = None) -> Any:
        if isinstance(input, PackedSequence):
            if lengths is not None:
                raise ValueError("LastStep: lengths= is for padded input; a PackedSequence carries its own lengths")
            return self._packed(input)
        x = np.asarray(input) if not hasattr(input, "ndim") else input
        if x.ndim not in (2, 3):
            raise ValueError(f"LastStep: expected a recurrent layer's output, 2-D or 3-D, got {x.ndim}-D")
        time_axis = 1 if (self.batch_first and x.ndim == 3) else 0
        L = x.shape[time_axis]
        if L == 0:
            raise ValueError("LastStep: the input has no time steps")
        if lengths is None or x.ndim == 2:
            if lengths is not None:
                raise ValueError("LastStep: lengths= needs a batched (3-D) input")
            last = np.full(1 if x.ndim == 2 else x.shape[1 - time_axis], L - 1)
        else:
            last = _check_lengths(lengths, x.shape[1 - time_axis], L, enforce_sorted=False) - 1
        if x.ndim == 2:
            y = x[L - 1].copy()
        elif time_axis == 0:
            y = x[last, np.arange(x.shape[1])]
        else:
            y = x[np.arange(x.shape[0]), last]
        self._keep(("padded", x.shape, x.dtype, last, time_axis) if self.training else None)
        return y

    def _packed(self, packed: Any) -> Any:
        sizes = np.asarray(packed.batch_sizes, dtype=np.int64)
        offsets = np.concatenate([[0], np.cumsum(sizes)[:-1]])
        N = int(sizes[0])
        lengths = (sizes[None, :] > np.arange(N)[:, None]).sum(axis=1)  # each sorted sequence's length
        rows = offsets[lengths - 1] + np.arange(N)
        if packed.unsorted_indices is not None:
            rows = rows[np.asarray(packed.unsorted_indices)]
        data = packed.data
        self._keep(("packed", data.shape, data.dtype, rows, packed) if self.training else None)
        return data[rows]

    def backward(self, grad_output: Any) -> Any:
        layout, shape, dtype, where, extra = self._latest()
        out_shape = (shape[-1],) if len(shape) == 2 and layout == "padded" else (len(where), shape[-1])
        g = as_array(grad_output, "grad_output", dtype, "LastStep")
        if g.shape != out_shape:
            raise ValueError(f"LastStep: grad_output has shape {g.shape}, expected {out_shape} (the output's)")
        self._take()
        grad = np.zeros(shape, dtype)
        if layout == "packed":
            grad[where] = g
            packed = extra
            return PackedSequence(grad, packed.batch_sizes, packed.sorted_indices, packed.unsorted_indices)
        if len(shape) == 2:
            grad[shape[0] - 1] = g
        elif extra == 0:
            grad[where, np.arange(shape[1])] = g
        else:
            grad[np.arange(shape[0]), where] = g
        return grad


class Sequential(Module):
    """Modules run in order (see the module docstring); children are named ``"0"``,
    ``"1"``, ... as in PyTorch, so ``state_dict`` keys read ``0.weight_ih_l0``, or by the
    keys of one mapping given instead: ``Sequential({"rnn": lstm, "head": linear})``."""

    def __init__(self, *modules: Any) -> None:
        super().__init__()
        if len(modules) == 1 and isinstance(modules[0], Mapping):  # named children, as torch's OrderedDict form
            items = [(str(k), m) for k, m in modules[0].items()]
        else:
            if len(modules) == 1 and isinstance(modules[0], (list, tuple)):
                modules = tuple(modules[0])
            items = [(str(k), m) for k, m in enumerate(modules)]
        for k, m in items:
            if not isinstance(m, Module):
                raise TypeError(f"Sequential: item {k} is a {type(m).__name__}, not an nprnn Module")
            if not k or "." in k:
                raise ValueError(f"Sequential: a child's name must be non-empty and without '.', got {k!r}")
            self._modules[k] = m

    def __len__(self) -> int:
        return len(self._modules)

    def __iter__(self) -> Any:
        return iter(self._modules.values())

    def __getitem__(self, index: Any) -> Any:
        if isinstance(index, str):
            return self._modules[index]
        return list(self._modules.values())[index]

    def stream(self, batch_size: Any = None) -> Any:
        """A :class:`~nprnn.stream.SequentialStream`: ``step(x_t)`` runs one time step
        through the model, each recurrent layer's state carried between calls, and returns
        what the model returns for the sequence ending at ``x_t``."""
        from .stream import SequentialStream

        return SequentialStream(self, batch_size)

    def forward(self, input: Any, lengths: Any = None) -> Any:
        x = input
        for m in self:
            if lengths is not None and isinstance(m, (RNNBase, LastStep)):
                y = m(x, lengths=lengths)
            else:
                y = m(x)
            x = y[0] if isinstance(m, RNNBase) else y
        return x

    def backward(self, grad_output: Any, *, input_grad: bool = True) -> Any:
        """Each module's backward, last to first; returns the input's gradient.  With
        ``input_grad=False`` the model's input needs none: None, and a recurrent first
        module leaves out its products with ``W_ih`` (``RNNBase.backward``)."""
        input_grad = check_bool("input_grad", input_grad)
        g = grad_output
        modules = list(self)
        for i in reversed(range(len(modules))):
            m = modules[i]
            if g is None:
                raise RuntimeError(f"Sequential.backward(): {type(m).__name__} comes before a module whose input has "
                                   "no gradient (an Embedding's integer indices)")
            if isinstance(m, RNNBase):
                g = m.backward(g, input_grad=input_grad or i > 0)[0]
            else:
                g = m.backward(g)
        return g if input_grad else None


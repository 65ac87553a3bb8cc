"""Activation modules: ``ReLU``, ``Tanh``, ``Sigmoid``, ``Softmax``, ``LogSoftmax``.

Same contract as the other layers (:mod:`nprnn.layers`): ``forward`` in training mode keeps
what ``backward(grad_output)`` needs and ``backward`` returns the gradient of the input.
NaN and inf pass as in PyTorch.
"""
from __future__ import annotations

from typing import Any

import numpy as np

from .._checks import as_array
from .._typing import Array
from .layers import _check_grad
from .module import Module, resolve_dtype


class _Activation(Module):
    """The shared mechanics: subclasses give ``_forward(x) -> y`` and
    ``_backward(g, x, y) -> grad_input``."""

    def __init__(self, *, dtype: Any = np.float32) -> None:
        super().__init__()
        self.dtype = resolve_dtype(dtype)

    def forward(self, input: Any) -> Any:
        x = as_array(input, "input", self.dtype, type(self).__name__)
        with np.errstate(over="ignore", invalid="ignore", divide="ignore"):
            y = self._forward(x)
        self._keep((x, y) if self.training else None)
        return y

    def backward(self, grad_output: Any) -> Any:
        x, y = self._latest()
        g = _check_grad(self, grad_output, y.shape)
        self._take()
        with np.errstate(over="ignore", invalid="ignore"):
            return self._backward(g, x, y)


class ReLU(_Activation):
    """``max(x, 0)`` (NaN stays NaN); backward passes the gradient where the output is > 0."""

    def _forward(self, x: Array) -> Array:
        return np.where(x <= 0, x.dtype.type(0), x)

    def _backward(self, g: Array, x: Array, y: Array) -> Array:
        return np.where(y <= 0, g.dtype.type(0), g)  # PyTorch's threshold_backward


class Tanh(_Activation):
    """``tanh(x)``; backward ``g * (1 - y^2)``."""

    def _forward(self, x: Array) -> Array:
        return np.tanh(x)

    def _backward(self, g: Array, x: Array, y: Array) -> Array:
        out: Array = g * (1 - y * y)
        return out


class Sigmoid(_Activation):
    """``1 / (1 + exp(-x))``; backward ``g * y * (1 - y)``."""

    def _forward(self, x: Array) -> Array:
        return 1 / (1 + np.exp(-x))

    def _backward(self, g: Array, x: Array, y: Array) -> Array:
        out: Array = g * y * (1 - y)
        return out


class _OverDim(_Activation):
    def __init__(self, dim: int = -1, *, dtype: Any = np.float32) -> None:
        if isinstance(dim, bool) or not isinstance(dim, (int, np.integer)):
            raise TypeError(f"{type(self).__name__}: dim must be an int, got {type(dim).__name__}")
        super().__init__(dtype=dtype)
        self.dim = int(dim)

    def extra_repr(self) -> str:
        return f"dim={self.dim}"

    def forward(self, input: Any) -> Any:
        x = as_array(input, "input", self.dtype, type(self).__name__)
        if not -x.ndim <= self.dim < max(x.ndim, 1):
            raise IndexError(f"Dimension out of range (expected to be in range of [{-max(x.ndim, 1)}, "
                             f"{max(x.ndim, 1) - 1}], but got {self.dim})")
        return super().forward(x)


class Softmax(_OverDim):
    """``exp(x) / sum(exp(x))`` along ``dim`` (shifted by the maximum); backward
    ``y * (g - sum(g * y))``."""

    def _forward(self, x: Array) -> Array:
        e = np.exp(x - x.max(axis=self.dim, keepdims=True))
        out: Array = e / e.sum(axis=self.dim, keepdims=True)
        return out

    def _backward(self, g: Array, x: Array, y: Array) -> Array:
        out: Array = y * (g - (g * y).sum(axis=self.dim, keepdims=True))
        return out


class LogSoftmax(_OverDim):
    """``x - log(sum(exp(x)))`` along ``dim``; backward ``g - exp(y) * sum(g)``."""

    def _forward(self, x: Array) -> Array:
        shifted = x - x.max(axis=self.dim, keepdims=True)
        out: Array = shifted - np.log(np.exp(shifted).sum(axis=self.dim, keepdims=True))
        return out

    def _backward(self, g: Array, x: Array, y: Array) -> Array:
        out: Array = g - np.exp(y) * g.sum(axis=self.dim, keepdims=True)
        return out

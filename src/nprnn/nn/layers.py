"""Layers that recurrent models are built with: Linear, Embedding, Dropout, LayerNorm.

Same contract as the recurrent layers: ``forward`` in training mode keeps what
``backward(grad_output)`` needs; ``backward`` adds parameter gradients into ``grads`` and
returns the gradient of the input (None for Embedding, whose input is integers).
"""
from __future__ import annotations

import math
import numbers
from typing import Any

import numpy as np

from .._checks import as_array, check_int, check_memory
from .._typing import Array, OptArray
from ..functional import native
from ..functional.stack import _dropout_mask
from ..parallel.threads import THREADED
from .module import Module, resolve_dtype, resolve_rng

_COMPILED_WORK = 1 << 18  # multiply-adds from which a product pays for packing its matrix


def _compiled(a: Array, work: int) -> bool:
    """Whether a product of ``work`` multiply-adds on ``a`` runs on the compiled kernel: where
    that tier runs, on its dtypes, and large enough.  There it shares the recurrent layers'
    threads; NumPy's BLAS would leave its own spinning against their next loop (a char-LM
    training step's weight gradients took twice their time after the head's products)."""
    return work >= _COMPILED_WORK and native.supports_dtype(a.dtype)


def _product(a: Array, w: Array, transpose: bool, bias: OptArray = None) -> Array:
    """``a @ w.T + bias`` (``transpose``) or ``a @ w`` for a 2-D ``a``."""
    if _compiled(a, a.shape[0] * a.shape[1] * (w.shape[0] if transpose else w.shape[1])):
        return native.product(a, w, transpose, bias, THREADED)
    y: Array = a @ (w.T if transpose else w)
    if bias is not None:
        y += bias
    return y


def _weight_grad(g: Array, x: Array) -> Array:
    """``g.T @ x`` for 2-D ``g`` (rows, M) and ``x`` (rows, K): a weight's gradient."""
    if _compiled(g, g.size * x.shape[1]):
        return native._at(g, x, runner=THREADED)[0]
    out: Array = g.T @ x
    return out


def _check_grad(module: Any, grad: Any, shape: Any) -> Array:
    g = as_array(grad, "grad_output", module.dtype, type(module).__name__)
    if g.shape != shape:
        raise ValueError(f"{type(module).__name__}: grad_output has shape {g.shape}, expected {shape} (the output's)")
    return g


class Linear(Module):
    """``y = x @ weight.T + bias``; weight (out_features, in_features), bias (out_features,),
    both drawn from U(-1/sqrt(in_features), 1/sqrt(in_features)) as in PyTorch."""

    def __init__(self, in_features: int, out_features: int, bias: bool = True, *, dtype: Any = np.float32,
                 seed: Any = None) -> None:
        super().__init__()
        self.in_features = check_int("in_features", in_features)
        self.out_features = check_int("out_features", out_features)
        self.dtype = resolve_dtype(dtype)
        rng = resolve_rng(seed)
        bound = 1.0 / math.sqrt(self.in_features)
        check_memory(f"Linear({in_features}, {out_features})'s weight", 2 * self.out_features * (self.in_features + 1),
                     self.dtype)  # (drawn in float64 first)
        self.register_parameter("weight", rng.uniform(-bound, bound, (self.out_features,
                                                                      self.in_features)).astype(self.dtype))
        if bias:
            self.register_parameter("bias", rng.uniform(-bound, bound, (self.out_features,)).astype(self.dtype))

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, bias={'bias' in self._parameters}"

    def forward(self, input: Any) -> Any:
        x = as_array(input, "input", self.dtype, "Linear")
        if x.ndim == 0 or x.shape[-1] != self.in_features:
            raise RuntimeError(
                f"Linear: input.size(-1) must be equal to in_features. Expected {self.in_features}, "
                f"got {x.shape[-1] if x.ndim else 'a 0-d array'}"
            )
        rows = x.reshape(-1, self.in_features)  # (one product for every row, not one per leading index)
        y = _product(rows, self.weight, True, self.bias if "bias" in self._parameters else None)
        y = y.reshape(x.shape[:-1] + (self.out_features,))  # (..., out)
        self._keep((rows, y.shape) if self.training else None)
        return y

    def backward(self, grad_output: Any) -> Any:
        rows, shape = self._latest()
        g = _check_grad(self, grad_output, shape)
        self._take()
        g2 = np.ascontiguousarray(g.reshape(-1, self.out_features))
        self._add_grads(("weight", "bias" if "bias" in self._parameters else None),
                        (_weight_grad(g2, rows), g2.sum(axis=0)))
        return _product(g2, self.weight, False).reshape(shape[:-1] + (self.in_features,))


class Embedding(Module):
    """Lookup table: ``weight[input]``; weight (num_embeddings, embedding_dim) drawn from
    N(0, 1), the ``padding_idx`` row zero and never updated by backward."""

    def __init__(self, num_embeddings: int, embedding_dim: int, padding_idx: Any = None, *, dtype: Any = np.float32,
                 seed: Any = None) -> None:
        super().__init__()
        self.num_embeddings = check_int("num_embeddings", num_embeddings)
        self.embedding_dim = check_int("embedding_dim", embedding_dim)
        if padding_idx is not None:
            if not isinstance(padding_idx, (int, np.integer)) or isinstance(padding_idx, bool):
                raise TypeError(f"padding_idx should be an int or None, got: {type(padding_idx).__name__}")
            if not -self.num_embeddings <= padding_idx < self.num_embeddings:
                raise AssertionError("Padding_idx must be within num_embeddings")
            padding_idx = int(padding_idx) % self.num_embeddings
        self.padding_idx = padding_idx
        self.dtype = resolve_dtype(dtype)
        check_memory(f"Embedding({num_embeddings}, {embedding_dim})'s weight",
                     2 * self.num_embeddings * self.embedding_dim, self.dtype)  # (drawn in float64 first)
        weight = resolve_rng(seed).standard_normal((self.num_embeddings, self.embedding_dim)).astype(self.dtype)
        if padding_idx is not None:
            weight[padding_idx] = 0
        self.register_parameter("weight", weight)

    def extra_repr(self) -> str:
        s = f"{self.num_embeddings}, {self.embedding_dim}"
        return s + (f", padding_idx={self.padding_idx}" if self.padding_idx is not None else "")

    def forward(self, input: Any) -> Any:
        idx = np.asarray(input)
        if idx.dtype.kind not in "iu":
            raise TypeError(f"Embedding: input must be an array of integer indices, got dtype {idx.dtype}")
        if idx.size and (idx.min() < 0 or idx.max() >= self.num_embeddings):
            bad = idx.min() if idx.min() < 0 else idx.max()
            raise IndexError(f"Embedding: index {bad} is out of range for {self.num_embeddings} embeddings")
        self._keep(idx if self.training else None)
        return self.weight[idx]  # (..., embedding_dim), a copy

    def backward(self, grad_output: Any) -> Any:
        idx = self._latest()
        g = _check_grad(self, grad_output, idx.shape + (self.embedding_dim,))
        self._take()
        flat_idx = idx.reshape(-1)
        flat_g = g.reshape(-1, self.embedding_dim)
        if self.padding_idx is not None:
            keep = flat_idx != self.padding_idx
            flat_idx, flat_g = flat_idx[keep], flat_g[keep]
        target = self._grad_target("weight")
        if target is not None:
            np.add.at(target, flat_idx, flat_g)  # (rows repeat)
        return None


class Dropout(Module):
    """Zeroes each element with probability ``p`` in training mode and scales the rest by
    ``1 / (1 - p)``; the identity in eval mode.  Masks come from ``seed``, drawn as the
    recurrent layers' (``stack.bernoulli``: p rounded to a multiple of 2**-32)."""

    def __init__(self, p: float = 0.5, *, dtype: Any = np.float32, seed: Any = None) -> None:
        super().__init__()
        if isinstance(p, bool) or not isinstance(p, numbers.Number) or not 0 <= p <= 1:
            raise ValueError(f"dropout probability has to be between 0 and 1, but got {p}")
        self.p = float(p)
        self.dtype = resolve_dtype(dtype)
        self._rng = resolve_rng(seed)

    def extra_repr(self) -> str:
        return f"p={self.p}"

    def forward(self, input: Any) -> Any:
        x = as_array(input, "input", self.dtype, "Dropout")
        if not self.training or self.p == 0:
            self._keep(("identity", x.shape) if self.training else None)
            return x.copy()
        mask = _dropout_mask(x.shape, self.p, self._rng, self.dtype)  # (the recurrent layers' masks)
        self._keep((mask, x.shape))
        return x * mask

    def backward(self, grad_output: Any) -> Any:
        mask, shape = self._latest()
        g = _check_grad(self, grad_output, shape)
        self._take()
        return g.copy() if isinstance(mask, str) else g * mask


class LayerNorm(Module):
    """``y = (x - mean) / sqrt(var + eps) * weight + bias`` over the last
    ``len(normalized_shape)`` dimensions (biased variance, as PyTorch)."""

    def __init__(self, normalized_shape: Any, eps: float = 1e-5, elementwise_affine: bool = True, bias: bool = True,
                 *, dtype: Any = np.float32) -> None:
        super().__init__()
        if isinstance(normalized_shape, (int, np.integer)):
            normalized_shape = (int(normalized_shape),)
        self.normalized_shape = tuple(int(s) for s in normalized_shape)
        if not self.normalized_shape or min(self.normalized_shape) <= 0:
            raise ValueError(f"LayerNorm: normalized_shape must be positive sizes, got {self.normalized_shape}")
        self.eps = float(eps)
        self.dtype = resolve_dtype(dtype)
        self.elementwise_affine = bool(elementwise_affine)
        if self.elementwise_affine:
            self.register_parameter("weight", np.ones(self.normalized_shape, self.dtype))
            if bias:
                self.register_parameter("bias", np.zeros(self.normalized_shape, self.dtype))

    def extra_repr(self) -> str:
        return f"{self.normalized_shape}, eps={self.eps}, elementwise_affine={self.elementwise_affine}"

    def forward(self, input: Any) -> Any:
        x = as_array(input, "input", self.dtype, "LayerNorm")
        k = len(self.normalized_shape)
        if x.shape[x.ndim - k:] != self.normalized_shape or x.ndim < k:
            raise RuntimeError(
                f"Given normalized_shape={list(self.normalized_shape)}, expected input with shape "
                f"[*, {', '.join(map(str, self.normalized_shape))}], but got input of size{list(x.shape)}"
            )
        axes = tuple(range(x.ndim - k, x.ndim))
        mean = x.mean(axis=axes, keepdims=True)
        xc = x - mean
        var = (xc * xc).mean(axis=axes, keepdims=True)
        rstd = 1.0 / np.sqrt(var + self.dtype.type(self.eps))
        xhat = xc * rstd
        y = xhat
        if self.elementwise_affine:
            y = xhat * self.weight
            if "bias" in self._parameters:
                y += self.bias
        self._keep((xhat, rstd, axes) if self.training else None)
        return y

    def backward(self, grad_output: Any) -> Any:
        xhat, rstd, axes = self._latest()
        g = _check_grad(self, grad_output, xhat.shape)
        self._take()
        lead = tuple(range(xhat.ndim - len(axes)))
        if self.elementwise_affine:
            self._add_grads(("weight", "bias" if "bias" in self._parameters else None),
                            ((g * xhat).sum(axis=lead), g.sum(axis=lead)))
            g = g * self.weight  # through the affine
        # through the normalisation: rstd * (g - mean(g) - xhat * mean(g * xhat))
        return rstd * (g - g.mean(axis=axes, keepdims=True) - xhat * (g * xhat).mean(axis=axes, keepdims=True))

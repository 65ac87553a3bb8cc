"""Losses that return their value and, on request, their gradient.

    loss = cross_entropy(logits, targets)      # a Loss: float(loss), loss.item()
    grad_logits = loss.backward()              # d loss / d logits, same shape as logits
"""
from __future__ import annotations

from typing import Any

import numpy as np

from .._typing import Array

_REDUCTIONS = ("mean", "sum", "none")


class Loss:
    """A loss value with its gradient function.

    ``value`` is a float for reduction 'mean' or 'sum' and an array for 'none'.
    ``backward(grad=None)`` returns the gradient with respect to the input, scaled by
    ``grad`` (default 1; for 'none', an array shaped like ``value``, default ones).
    """

    def __init__(self, value: Any, grad_fn: Any) -> None:
        self.value = value
        self._grad_fn = grad_fn

    def item(self) -> float:
        if np.ndim(self.value):
            raise ValueError("only a reduced loss ('mean' or 'sum') is a single number")
        return float(self.value)

    def __float__(self) -> float:
        return self.item()

    def __repr__(self) -> str:
        return f"Loss({self.value!r})"

    def backward(self, grad: Any = None) -> Any:
        if grad is None:
            grad = np.ones_like(self.value) if np.ndim(self.value) else 1.0
        elif np.shape(grad) != np.shape(self.value):
            raise ValueError(f"Loss.backward: grad has shape {np.shape(grad)}, expected {np.shape(self.value)}")
        return self._grad_fn(grad)


def _check_reduction(reduction: Any) -> None:
    if reduction not in _REDUCTIONS:
        raise ValueError(f"{reduction} is not a valid value for reduction")


def _log_softmax(x: Array) -> Array:
    shifted = x - x.max(axis=-1, keepdims=True)
    out: Array = shifted - np.log(np.exp(shifted).sum(axis=-1, keepdims=True))
    return out


def cross_entropy(input: Any, target: Any, weight: Any = None, ignore_index: int = -100, reduction: str = "mean",
                  label_smoothing: float = 0.0) -> Loss:
    """PyTorch's ``F.cross_entropy`` with class-index targets.

    ``input`` (N, C), (C,) or (N, C, d1, ...) unnormalised scores; ``target`` integer
    classes (N,), () or (N, d1, ...); ``weight`` (C,) per-class weights; targets equal to
    ``ignore_index`` contribute nothing; ``label_smoothing`` in [0, 1] mixes the target with
    the uniform distribution.  With 'mean', the sum is divided by the total weight of the
    targets that count (their number when ``weight`` is None).
    """
    _check_reduction(reduction)
    x = np.asarray(input)
    if x.dtype.kind != "f":
        raise TypeError(f"cross_entropy: input must be floating point, got dtype {x.dtype}")
    t = np.asarray(target)
    if t.dtype.kind not in "iu":
        raise TypeError(f"cross_entropy: target must hold integer class indices, got dtype {t.dtype}")
    if not 0.0 <= label_smoothing <= 1.0:
        raise ValueError(f"label_smoothing must be between 0.0 and 1.0. Got: {label_smoothing}")
    if x.ndim == 0:
        raise ValueError("cross_entropy: input must have a class dimension")
    unbatched = x.ndim == 1
    if unbatched:
        x, t = x[None], t[None]
    if x.ndim >= 2 and t.shape != (x.shape[0],) + x.shape[2:]:
        raise ValueError(f"cross_entropy: expected target of shape {(x.shape[0],) + x.shape[2:]}, got {t.shape}")
    C = x.shape[1]
    rows = np.moveaxis(x, 1, -1).reshape(-1, C)  # (M, C)
    tt = t.reshape(-1)
    keep = tt != ignore_index
    if np.any((tt[keep] < 0) | (tt[keep] >= C)):
        bad = tt[keep][(tt[keep] < 0) | (tt[keep] >= C)][0]
        raise IndexError(f"Target {bad} is out of bounds.")
    w = np.ones(C, x.dtype) if weight is None else np.asarray(weight, dtype=x.dtype)
    if w.shape != (C,):
        raise ValueError(f"cross_entropy: weight must have shape ({C},), got {w.shape}")
    logp = _log_softmax(rows)  # (M, C)
    safe_t = np.where(keep, tt, 0)
    w_t = np.where(keep, w[safe_t], 0).astype(x.dtype)  # weight of each row's target
    eps = x.dtype.type(label_smoothing)
    nll = -w_t * np.take_along_axis(logp, safe_t[:, None], axis=1)[:, 0]  # (M,)
    smooth = np.where(keep, -(logp * w).sum(axis=1), 0)  # (M,)
    if reduction == "mean":
        norm_n = w_t.sum()
        norm_s = norm_n if weight is not None else x.dtype.type(keep.sum())
        with np.errstate(invalid="ignore", divide="ignore"):
            value = float((1 - eps) * nll.sum() / norm_n + eps / C * smooth.sum() / norm_s)
    elif reduction == "sum":
        norm_n = norm_s = x.dtype.type(1)
        value = float((1 - eps) * nll.sum() + eps / C * smooth.sum())
    else:
        norm_n = norm_s = x.dtype.type(1)
        value = ((1 - eps) * nll + eps / C * smooth).reshape(t.shape)
        if unbatched:
            value = value[0]

    def grad_fn(g: Any) -> Any:
        # d/dx of -sum_c q_c log p_c is (sum_c q_c) p - q, row by row
        q = np.zeros_like(logp)
        with np.errstate(invalid="ignore", divide="ignore"):  # all targets ignored: NaN, as PyTorch
            rows_kept = np.flatnonzero(keep)  # ignored rows keep a zero gradient
            q[rows_kept, safe_t[rows_kept]] = (1 - eps) * w_t[rows_kept] / norm_n
            if eps:
                q[rows_kept] += eps / C * w / norm_s
        grad = q.sum(axis=1, keepdims=True) * np.exp(logp) - q
        g = np.asarray(g, dtype=x.dtype)
        grad *= g.reshape(-1, 1) if np.ndim(g) else g
        grad = np.moveaxis(grad.reshape(np.moveaxis(x, 1, -1).shape), -1, 1)
        return grad[0] if unbatched else grad

    return Loss(value, grad_fn)


def mse_loss(input: Any, target: Any, reduction: str = "mean") -> Loss:
    """Mean (or summed, or elementwise) squared error; ``backward`` gives d loss / d input."""
    _check_reduction(reduction)
    x = np.asarray(input)
    y = np.asarray(target)
    if x.shape != y.shape:
        raise ValueError(f"mse_loss: input and target must have the same shape, got {x.shape} and {y.shape}")
    diff = x - y
    sq = diff * diff
    if reduction == "none":
        value = sq
    else:
        value = float(sq.mean() if reduction == "mean" else sq.sum())
    scale = 2.0 / diff.size if reduction == "mean" else 2.0

    def grad_fn(g: Any) -> Any:
        return (np.asarray(g, dtype=diff.dtype) * scale * diff).astype(diff.dtype)

    return Loss(value, grad_fn)

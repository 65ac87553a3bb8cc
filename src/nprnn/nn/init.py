"""Parameter initialisation with ``torch.nn.init``'s names and semantics: ``nprnn.init``.

Each function fills an array in place and returns it; a module's parameter is written
through :func:`nprnn.writable`, the supported route, so the layer's prepared weights are
made again at its next call.  ``generator`` is a ``numpy.random.Generator``, a seed, or
None (a fresh generator)::

    lstm = nprnn.LSTM(64, 128)
    for k in range(4):                                   # each gate's block of W_hh
        nprnn.init.orthogonal_(lstm.weight_hh_l0[k * 128 : (k + 1) * 128], generator=0)

Fans follow PyTorch: for a (out, in, *rest) array, fan_in = in * prod(rest) and
fan_out = out * prod(rest).
"""
from __future__ import annotations

import math
from typing import Any, Optional

import numpy as np

from .._typing import Array
from .module import writable

__all__ = ["calculate_gain", "uniform_", "normal_", "constant_", "ones_", "zeros_", "xavier_uniform_",
           "xavier_normal_", "kaiming_uniform_", "kaiming_normal_", "orthogonal_", "forget_bias_"]


def _rng(generator: Any) -> np.random.Generator:
    if isinstance(generator, np.random.Generator):
        return generator
    if generator is None or isinstance(generator, (int, np.integer)):
        return np.random.default_rng(generator)
    raise TypeError(f"generator must be a numpy.random.Generator, an int seed or None, got {type(generator).__name__}")


def _fill(tensor: Any, values: Any) -> Array:
    """Write ``values`` into ``tensor`` through the supported route; returns ``tensor``."""
    if not isinstance(tensor, np.ndarray) or tensor.dtype.kind != "f":
        what = f"an array of {tensor.dtype}" if isinstance(tensor, np.ndarray) else type(tensor).__name__
        raise TypeError(f"nprnn.init expects a floating-point NumPy array (a parameter), got {what}")
    with writable(tensor):
        np.copyto(tensor, values, casting="unsafe")
    return tensor


def calculate_gain(nonlinearity: str, param: Optional[float] = None) -> float:
    """The recommended gain for a nonlinearity, as ``torch.nn.init.calculate_gain``."""
    linear = ("linear", "conv1d", "conv2d", "conv3d", "conv_transpose1d", "conv_transpose2d", "conv_transpose3d",
              "sigmoid")
    if nonlinearity in linear:
        return 1.0
    if nonlinearity == "tanh":
        return 5.0 / 3
    if nonlinearity == "relu":
        return math.sqrt(2.0)
    if nonlinearity == "leaky_relu":
        if param is None:
            slope = 0.01
        elif not isinstance(param, bool) and isinstance(param, (int, float)):
            slope = float(param)
        else:
            raise ValueError(f"negative_slope {param} not a valid number")
        return math.sqrt(2.0 / (1 + slope ** 2))
    if nonlinearity == "selu":
        return 3.0 / 4
    raise ValueError(f"Unsupported nonlinearity {nonlinearity}")


def _fans(tensor: Array) -> tuple[int, int]:
    if tensor.ndim < 2:
        raise ValueError("Fan in and fan out can not be computed for tensor with fewer than 2 dimensions")
    receptive = int(np.prod(tensor.shape[2:])) if tensor.ndim > 2 else 1
    return tensor.shape[1] * receptive, tensor.shape[0] * receptive


def uniform_(tensor: Array, a: float = 0.0, b: float = 1.0, generator: Any = None) -> Array:
    """Fill from U(a, b)."""
    return _fill(tensor, _rng(generator).uniform(a, b, tensor.shape))


def normal_(tensor: Array, mean: float = 0.0, std: float = 1.0, generator: Any = None) -> Array:
    """Fill from N(mean, std^2)."""
    return _fill(tensor, _rng(generator).normal(mean, std, tensor.shape))


def constant_(tensor: Array, val: float) -> Array:
    return _fill(tensor, val)


def ones_(tensor: Array) -> Array:
    return _fill(tensor, 1.0)


def zeros_(tensor: Array) -> Array:
    return _fill(tensor, 0.0)


def xavier_uniform_(tensor: Array, gain: float = 1.0, generator: Any = None) -> Array:
    """Glorot & Bengio (2010): U(-a, a), a = gain * sqrt(6 / (fan_in + fan_out))."""
    fan_in, fan_out = _fans(tensor)
    a = gain * math.sqrt(2.0 / float(fan_in + fan_out)) * math.sqrt(3.0)
    return uniform_(tensor, -a, a, generator)


def xavier_normal_(tensor: Array, gain: float = 1.0, generator: Any = None) -> Array:
    """Glorot & Bengio (2010): N(0, std^2), std = gain * sqrt(2 / (fan_in + fan_out))."""
    fan_in, fan_out = _fans(tensor)
    return normal_(tensor, 0.0, gain * math.sqrt(2.0 / float(fan_in + fan_out)), generator)


def _kaiming_std(tensor: Array, a: float, mode: str, nonlinearity: str) -> float:
    if mode not in ("fan_in", "fan_out"):
        raise ValueError(f"Mode {mode} not supported, please use one of fan_in, fan_out")
    fan_in, fan_out = _fans(tensor)
    return calculate_gain(nonlinearity, a) / math.sqrt(fan_in if mode == "fan_in" else fan_out)


def kaiming_uniform_(tensor: Array, a: float = 0, mode: str = "fan_in", nonlinearity: str = "leaky_relu",
                     generator: Any = None) -> Array:
    """He et al. (2015): U(-b, b), b = gain * sqrt(3 / fan) (``a``: leaky_relu's slope)."""
    bound = math.sqrt(3.0) * _kaiming_std(tensor, a, mode, nonlinearity)
    return uniform_(tensor, -bound, bound, generator)


def kaiming_normal_(tensor: Array, a: float = 0, mode: str = "fan_in", nonlinearity: str = "leaky_relu",
                    generator: Any = None) -> Array:
    """He et al. (2015): N(0, std^2), std = gain / sqrt(fan)."""
    return normal_(tensor, 0.0, _kaiming_std(tensor, a, mode, nonlinearity), generator)


def orthogonal_(tensor: Array, gain: float = 1.0, generator: Any = None) -> Array:
    """Saxe et al. (2013): a (semi-)orthogonal matrix, from the QR factors of a normal draw
    with R's diagonal made positive, times ``gain``; dims past the second are flattened."""
    if tensor.ndim < 2:
        raise ValueError("Only tensors with 2 or more dimensions are supported")
    if tensor.size == 0:
        return tensor
    rows = tensor.shape[0]
    cols = tensor.size // rows
    flat = _rng(generator).normal(0.0, 1.0, (rows, cols))
    if rows < cols:
        flat = flat.T
    q, r = np.linalg.qr(flat)
    q *= np.sign(np.diag(r))
    if rows < cols:
        q = q.T
    return _fill(tensor, (gain * q).reshape(tensor.shape))


def check_forget_bias(label: str, value: Any, has_bias: bool) -> Optional[float]:
    """A layer's ``forget_bias`` argument checked: None, or a finite number for a layer with
    biases (or layer norms' shifts)."""
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float, np.integer, np.floating)) or \
            not math.isfinite(value):
        raise TypeError(f"{label}: forget_bias must be a finite number or None, got {value!r}")
    if not has_bias:
        raise ValueError(f"{label}: forget_bias sets the forget gate's bias, but the layer has bias=False")
    return float(value)


def forget_bias_(module: Any, value: float) -> Any:
    """The forget gate's bias of every layer and direction of an LSTM (or LSTM cell, or
    layer-norm LSTM) set to ``value``: that slice of ``bias_ih`` (``ln_ih_bias``) to the
    value and of ``bias_hh`` (``ln_hh_bias``) to 0, as Keras's ``unit_forget_bias``
    (Jozefowicz et al., 2015) for ``value=1``.  Returns ``module``."""
    H = module.hidden_size
    with writable(module):
        for name, p in module.named_parameters():
            if name.startswith(("bias_ih", "ln_ih_bias")):
                p[H : 2 * H] = value
            elif name.startswith(("bias_hh", "ln_hh_bias")):
                p[H : 2 * H] = 0
    return module

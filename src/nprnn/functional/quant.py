"""The arithmetic of quantized weights (issue 25), in NumPy: the oracle every tier's
kernels must equal, integer for integer.

int8 (what onnxruntime's ``DynamicQuantizeLSTM`` does, per row where it is per tensor)::

    weights      q_w = round_half_even(w / s_w)           s_w = max|w_row| / 127   (per output row, int8)
    activations  q_x = clamp(round_half_even(x / s_x) + z_x, 0, 255)               (per input row, uint8)
                 s_x = (max(x, 0) - min(x, 0)) / 255,  z_x = clamp(round_half_even(-min(x, 0) / s_x), 0, 255)
                 (s_x = 1 when the row is all zeros: onnxruntime's DynamicQuantizeLinear, row by row)
    product      acc = sum_k q_x[k] * q_w[j, k] - z_x * sum_k q_w[j, k]              exact, int32
                 y   = acc * (s_x * s_w[j]) + b[j]                                   float32

bf16 (what ``vdpbf16ps`` does): weights and activations rounded to bfloat16 (round to
nearest even; NaN stays NaN), products accumulated in float32 in the instruction's order.  bfloat16 values are kept
as their uint16 bit patterns (the top half of a float32).
"""
from __future__ import annotations

import numpy as np

from .._typing import Array


def quantize_weights_int8(w: Array) -> tuple[Array, Array, Array]:
    """``(q, scale, row_sums)`` of a (rows, cols) weight: int8 ``q`` symmetric per row,
    float32 ``scale`` (rows,) with ``w ~ q * scale[:, None]``, int32 ``row_sums`` (rows,)
    of ``q`` (the zero-point correction of every product).  A row of zeros has scale 1."""
    w = np.asarray(w, np.float32)
    if w.ndim != 2:
        raise ValueError(f"quantize_weights_int8: expected a 2-D weight (rows, cols), got shape {w.shape}")
    if not np.all(np.isfinite(w)):
        raise ValueError("quantize_weights_int8: the weight holds NaN or infinity, which int8 cannot represent")
    peak = np.abs(w).max(axis=1) if w.shape[1] else np.zeros(w.shape[0], np.float32)
    scale = np.where(peak > 0, peak / np.float32(127), np.float32(1)).astype(np.float32)
    q = np.clip(np.rint(w / scale[:, None]), -127, 127).astype(np.int8)
    return q, scale, q.sum(axis=1, dtype=np.int32)


def quantize_rows_uint8(x: Array) -> tuple[Array, Array, Array]:
    """``(q, scale, zero_point)`` of a (rows, cols) float32 activation, each row quantized
    as onnxruntime's ``DynamicQuantizeLinear`` quantizes a tensor: uint8 ``q``, float32
    ``scale`` (rows,), uint8 ``zero_point`` (rows,), with ``x ~ (q - zero_point) * scale``."""
    x = np.asarray(x, np.float32)
    if x.ndim != 2:
        raise ValueError(f"quantize_rows_uint8: expected (rows, cols), got shape {x.shape}")
    bad: Array = np.asarray(~np.isfinite(x).all(axis=1))  # such a row's products are NaN: scale NaN, q and zero point 0
    x = np.where(bad[:, None], np.float32(0), x)
    lo = np.minimum(x.min(axis=1, initial=0), 0).astype(np.float32)
    hi = np.maximum(x.max(axis=1, initial=0), 0).astype(np.float32)
    scale = np.where(hi > lo, (hi - lo) / np.float32(255), np.float32(1)).astype(np.float32)
    zero = np.clip(np.rint(np.float32(0) - lo / scale), 0, 255).astype(np.float32)
    q = np.clip(np.rint(x / scale[:, None]) + zero[:, None], 0, 255).astype(np.uint8)
    scale[bad] = np.nan
    return q, scale, zero.astype(np.uint8)


def int8_sums(qx: Array, zero: Array, qw: Array, row_sums: Array) -> Array:
    """The exact int32 sums ``qx @ qw.T - zero[:, None] * row_sums[None, :]``: (rows, out)
    from uint8 ``qx`` (rows, k), its zero points (rows,), int8 ``qw`` (out, k) and its row
    sums (out,).  Every tier's integer products must equal these."""
    acc: Array = qx.astype(np.int32) @ qw.astype(np.int32).T
    acc -= zero.astype(np.int32)[:, None] * row_sums.astype(np.int32)[None, :]
    return acc


def int8_linear(x: Array, qw: Array, w_scale: Array, row_sums: Array, bias: Array | None = None) -> Array:
    """``x @ W.T + b`` with ``W`` held as int8 (:func:`quantize_weights_int8`) and ``x``
    quantized row by row (:func:`quantize_rows_uint8`); float32 (rows, out)."""
    qx, x_scale, zero = quantize_rows_uint8(x)
    acc = int8_sums(qx, zero, qw, row_sums)
    y: Array = acc.astype(np.float32) * (x_scale[:, None] * w_scale[None, :])
    if bias is not None:
        y += np.asarray(bias, np.float32)
    return y


def to_bf16_bits(x: Array) -> Array:
    """float32 values rounded to bfloat16 (nearest, ties to even; NaN stays a quiet NaN),
    as their uint16 bit patterns."""
    bits = np.ascontiguousarray(x, np.float32).view(np.uint32)
    rounded = (bits + np.uint32(0x7FFF) + ((bits >> np.uint32(16)) & np.uint32(1))) >> np.uint32(16)
    nan = np.isnan(np.asarray(x, np.float32))
    return np.where(nan, (bits >> np.uint32(16)) | np.uint32(0x40), rounded).astype(np.uint16)


def from_bf16_bits(bits: Array) -> Array:
    """The float32 values of bfloat16 bit patterns (exact)."""
    return (np.asarray(bits, np.uint16).astype(np.uint32) << np.uint32(16)).view(np.float32)


def _daz(bits: Array) -> Array:
    """Denormal bfloat16 values as the instruction reads them: (signed) zero."""
    bits = np.asarray(bits, np.uint16)
    return np.where(bits & np.uint16(0x7F80), bits, bits & np.uint16(0x8000)).astype(np.uint16)


def bf16_linear(x: Array, w_bits: Array, bias: Array | None = None) -> Array:
    """``x @ W.T + b`` with ``W`` held as bfloat16 bits and ``x`` rounded to bfloat16 (both
    read with denormals as zero), the products summed in float32 as ``vdpbf16ps`` sums them:
    each column over k in pairs, in order, the odd element's product added first, then the
    even one's (each product is exact in float32, so each addition rounds once); float32
    (rows, out).  Every compiled path makes the same sums."""
    xb = from_bf16_bits(_daz(to_bf16_bits(x)))
    wb = from_bf16_bits(_daz(w_bits)).T  # (K, out)
    y: Array = np.zeros((xb.shape[0], wb.shape[1]), np.float32)
    for k in range(0, xb.shape[1], 2):
        if k + 1 < xb.shape[1]:
            y += xb[:, k + 1, None] * wb[k + 1]
        y += xb[:, k, None] * wb[k]
    if bias is not None:
        y += np.asarray(bias, np.float32)
    return y

"""The standard ONNX operators that sit around recurrent layers, on NumPy.

Each function takes the node's input arrays (None for an omitted optional input) and its
attributes, and returns its output arrays.  Semantics follow the ONNX operator
specification (https://onnx.ai/onnx/operators/); ``opset`` picks the few that changed
(Softmax's axis, Squeeze/Unsqueeze/Slice taking attributes before inputs).
"""
from __future__ import annotations

import numpy as np


def _ints(a):
    return [int(v) for v in np.asarray(a).reshape(-1)]


def _softmax(x, axis, opset, log):
    x = np.asarray(x)
    if opset < 13:  # the input is read as 2-D: [prod(shape[:axis]), prod(shape[axis:])]
        flat = x.reshape(int(np.prod(x.shape[:axis % max(x.ndim, 1)], dtype=np.int64)), -1)
        return _softmax(flat, -1, 13, log).reshape(x.shape)
    z = x - np.max(x, axis=axis, keepdims=True)
    if log:
        return z - np.log(np.sum(np.exp(z), axis=axis, keepdims=True))
    e = np.exp(z)
    return e / np.sum(e, axis=axis, keepdims=True)


def _reshape(x, shape, allowzero=0):
    shape = _ints(shape)
    if not allowzero:
        shape = [x.shape[i] if s == 0 else s for i, s in enumerate(shape)]
    return x.reshape(shape)


def _slice(x, starts, ends, axes=None, steps=None):
    starts, ends = _ints(starts), _ints(ends)
    axes = list(range(len(starts))) if axes is None else _ints(axes)
    steps = [1] * len(starts) if steps is None else _ints(steps)
    index = [slice(None)] * x.ndim
    for s, e, a, k in zip(starts, ends, axes, steps):
        index[a] = slice(s, e, k)  # Python's slices clamp out-of-range ends exactly as ONNX does
    return x[tuple(index)]


def _gemm(a, b, c=None, alpha=1.0, beta=1.0, transA=0, transB=0):
    y = (a.T if transA else a) @ (b.T if transB else b)
    if alpha != 1.0:
        y = y * np.asarray(alpha, y.dtype)
    if c is not None:
        y = y + (c if beta == 1.0 else c * np.asarray(beta, y.dtype))
    return y


def _constant(**attrs):
    from onnx import numpy_helper

    if "value" in attrs:
        return numpy_helper.to_array(attrs["value"])
    for key, dtype in (("value_float", np.float32), ("value_floats", np.float32), ("value_int", np.int64),
                       ("value_ints", np.int64)):
        if key in attrs:
            return np.asarray(attrs[key], dtype)
    raise ValueError(f"Constant: attribute {sorted(attrs)} is not supported (value, value_float(s), value_int(s))")


def _constant_of_shape(shape, value=None):
    from onnx import numpy_helper

    fill = np.zeros(1, np.float32) if value is None else numpy_helper.to_array(value)
    return np.full(_ints(shape), fill.reshape(-1)[0], fill.dtype)


def _cast(x, to):
    from onnx import helper

    return np.asarray(x).astype(helper.tensor_dtype_to_np_dtype(to))


def _squeeze(x, axes=None):
    return np.squeeze(x, axis=None if axes is None else tuple(_ints(axes)))


def _unsqueeze(x, axes):
    axes = sorted(a % (x.ndim + len(_ints(axes))) for a in _ints(axes))
    for a in axes:
        x = np.expand_dims(x, a)
    return x


def _shape(x, start=0, end=None):
    return np.asarray(x.shape[start:end], np.int64)


def _expand(x, shape):
    return np.broadcast_to(x, np.broadcast_shapes(x.shape, tuple(_ints(shape)))).copy()


def _div(a, b):
    if np.issubdtype(np.result_type(a, b), np.integer):
        return (np.trunc(np.asarray(a) / np.asarray(b))).astype(np.result_type(a, b))
    return a / b


def _gather_nd(data, indices, batch_dims=0):
    idx = np.asarray(indices, np.int64)
    lead = data.shape[:batch_dims]
    B = int(np.prod(lead, dtype=np.int64))
    d = data.reshape((B,) + data.shape[batch_dims:])
    idx = idx.reshape((B,) + idx.shape[batch_dims:])
    rows = np.arange(B).reshape((B,) + (1,) * (idx.ndim - 2))
    out = d[(rows,) + tuple(np.moveaxis(idx, -1, 0))]
    return out.reshape(lead + out.shape[1:])


def _sigmoid(x):
    return 1.0 / (1.0 + np.exp(-x))


# op_type -> (function(*inputs, **attributes), inputs moved from attributes to inputs at this opset)
OPS = {
    "Identity": lambda x: x,
    "Transpose": lambda x, perm=None: np.transpose(x, perm),
    "Reshape": _reshape,
    "Squeeze": _squeeze,
    "Unsqueeze": _unsqueeze,
    "Concat": lambda *xs, axis: np.concatenate(xs, axis=axis),
    "Slice": _slice,
    "Gather": lambda x, i, axis=0: np.take(x, np.asarray(i, np.int64), axis=axis),
    "GatherND": _gather_nd,
    "Shape": _shape,
    "Constant": _constant,
    "ConstantOfShape": _constant_of_shape,
    "Cast": _cast,
    "Expand": _expand,
    "Add": lambda a, b: a + b,
    "Sub": lambda a, b: a - b,
    "Mul": lambda a, b: a * b,
    "Div": _div,
    "Gemm": _gemm,
    "MatMul": lambda a, b: np.matmul(a, b),
    "Relu": lambda x: np.maximum(x, np.zeros((), x.dtype)),
    "Tanh": np.tanh,
    "Sigmoid": _sigmoid,
}
# each operator's attributes (those it takes before the opset where they became inputs too)
ATTRIBUTES = {
    "Transpose": {"perm"}, "Reshape": {"allowzero"}, "Squeeze": {"axes"}, "Unsqueeze": {"axes"}, "Concat": {"axis"},
    "Slice": {"starts", "ends", "axes"}, "Gather": {"axis"}, "GatherND": {"batch_dims"}, "Shape": {"start", "end"},
    "Constant": {"value", "value_float", "value_floats", "value_int", "value_ints"}, "ConstantOfShape": {"value"},
    "Cast": {"to"}, "Gemm": {"alpha", "beta", "transA", "transB"}, "Softmax": {"axis"}, "LogSoftmax": {"axis"},
}
# opsets before which an operator took these inputs as attributes
_ATTR_INPUTS = {"Squeeze": (13, ["axes"]), "Unsqueeze": (13, ["axes"]), "Slice": (10, ["starts", "ends", "axes"])}


def check(op_type: str, attrs: dict, name: str) -> None:
    """Refuse a node whose type or attributes this module does not implement, by name."""
    if op_type not in SUPPORTED:
        raise ValueError(f"ONNX operator {op_type} (node {name!r}) is not supported by nprnn's import")
    unknown = sorted(set(attrs) - ATTRIBUTES.get(op_type, set()))
    if unknown:
        raise ValueError(f"ONNX node {name!r} ({op_type}): attribute(s) {unknown} are not supported "
                         f"({op_type} takes {sorted(ATTRIBUTES.get(op_type, set())) or 'none'})")


def run(op_type: str, inputs: list, attrs: dict, opset: int) -> list:
    """Outputs of one node; a type outside :data:`OPS` (and Softmax/LogSoftmax) is refused."""
    if op_type in ("Softmax", "LogSoftmax"):
        axis = attrs.get("axis", -1 if opset >= 13 else 1)
        return [_softmax(inputs[0], axis, opset, op_type == "LogSoftmax")]
    if op_type not in OPS:
        raise ValueError(f"ONNX operator {op_type} is not supported")
    if op_type in _ATTR_INPUTS and opset < _ATTR_INPUTS[op_type][0]:
        names = _ATTR_INPUTS[op_type][1]
        inputs = list(inputs) + [np.asarray(attrs.pop(n)) if n in attrs else None for n in names]
    while inputs and inputs[-1] is None:  # trailing omitted optional inputs take their defaults
        inputs = inputs[:-1]
    out = OPS[op_type](*inputs, **attrs)  # type: ignore[operator]
    return [out]


SUPPORTED = sorted(set(OPS) | {"Softmax", "LogSoftmax"})

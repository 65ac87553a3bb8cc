"""The standard ONNX operators that sit around recurrent layers, on NumPy.

Each function takes the node's input arrays (None for an omitted optional input) and its
attributes, and returns its output arrays.  Semantics follow the ONNX operator
specification (https://onnx.ai/onnx/operators/); ``opset`` picks the few that changed
(Softmax's axis, Squeeze/Unsqueeze/Slice taking attributes before inputs).
"""
from __future__ import annotations

from typing import Any, Optional

import numpy as np

from ..._typing import Array


def _ints(a: Any) -> list[int]:
    return [int(v) for v in np.asarray(a).reshape(-1)]


def _softmax(x: Any, axis: int, opset: int, log: bool) -> Any:
    x = np.asarray(x)
    if opset < 13:  # the input is read as 2-D: [prod(shape[:axis]), prod(shape[axis:])]
        flat = x.reshape(int(np.prod(x.shape[:axis % max(x.ndim, 1)], dtype=np.int64)), -1)
        return _softmax(flat, -1, 13, log).reshape(x.shape)
    z = x - np.max(x, axis=axis, keepdims=True)
    if log:
        return z - np.log(np.sum(np.exp(z), axis=axis, keepdims=True))
    e = np.exp(z)
    return e / np.sum(e, axis=axis, keepdims=True)


def _reshape(x: Array, shape: Any, allowzero: int = 0) -> Any:
    shape = _ints(shape)
    if not allowzero:
        shape = [x.shape[i] if s == 0 else s for i, s in enumerate(shape)]
    return x.reshape(shape)


def _slice(x: Array, starts: Any, ends: Any, axes: Any = None, steps: Any = None) -> Any:
    starts, ends = _ints(starts), _ints(ends)
    axes = list(range(len(starts))) if axes is None else _ints(axes)
    steps = [1] * len(starts) if steps is None else _ints(steps)
    index = [slice(None)] * x.ndim
    for s, e, a, k in zip(starts, ends, axes, steps):
        index[a] = slice(s, e, k)  # Python's slices clamp out-of-range ends exactly as ONNX does
    return x[tuple(index)]


def tensor(t: Any) -> Array:
    """A TensorProto's array, never read from another file (:func:`import_onnx` loads
    external data first, from the folder it was given); refused by name when its dims are
    negative or its data does not fit them."""
    from onnx import TensorProto, numpy_helper

    if t.data_location == TensorProto.EXTERNAL:
        raise ValueError(f"ONNX tensor {t.name!r} keeps its data in another file, which nprnn did not load")
    if any(d < 0 for d in t.dims):
        raise ValueError(f"ONNX tensor {t.name!r} has negative dims {list(t.dims)}")
    try:
        return numpy_helper.to_array(t)
    except Exception as exc:  # an unknown element type, data that does not fit the shape, ...
        raise ValueError(f"ONNX tensor {t.name!r} cannot be read (damaged?): {type(exc).__name__}: {exc}") from exc


def _gemm(a: Array, b: Array, c: Optional[Array] = None, alpha: float = 1.0, beta: float = 1.0, transA: int = 0,
          transB: int = 0) -> Array:
    y = (a.T if transA else a) @ (b.T if transB else b)
    if alpha != 1.0:
        y = y * np.asarray(alpha, y.dtype)
    if c is not None:
        y = y + (c if beta == 1.0 else c * np.asarray(beta, y.dtype))
    return y


def _constant(**attrs: Any) -> Array:
    if "value" in attrs:
        return tensor(attrs["value"])
    for key, dtype in (("value_float", np.float32), ("value_floats", np.float32), ("value_int", np.int64),
                       ("value_ints", np.int64)):
        if key in attrs:
            return np.asarray(attrs[key], dtype)
    raise ValueError(f"Constant: attribute {sorted(attrs)} is not supported (value, value_float(s), value_int(s))")


def _constant_of_shape(shape: Any, value: Any = None) -> Array:
    fill = np.zeros(1, np.float32) if value is None else tensor(value)
    return np.full(_ints(shape), fill.reshape(-1)[0], fill.dtype)


def _cast(x: Any, to: int) -> Array:
    from onnx import helper

    return np.asarray(x).astype(helper.tensor_dtype_to_np_dtype(to))


def _squeeze(x: Array, axes: Any = None) -> Array:
    return np.squeeze(x, axis=None if axes is None else tuple(_ints(axes)))


def _unsqueeze(x: Array, axes: Any) -> Array:
    axes = sorted(a % (x.ndim + len(_ints(axes))) for a in _ints(axes))
    for a in axes:
        x = np.expand_dims(x, a)
    return x


def _shape(x: Array, start: int = 0, end: Optional[int] = None) -> Array:
    return np.asarray(x.shape[start:end], np.int64)


def _expand(x: Array, shape: Any) -> Any:
    return np.broadcast_to(x, np.broadcast_shapes(x.shape, tuple(_ints(shape)))).copy()


def _div(a: Any, b: Any) -> Any:
    if np.issubdtype(np.result_type(a, b), np.integer):
        return (np.trunc(np.asarray(a) / np.asarray(b))).astype(np.result_type(a, b))
    return a / b


def _gather_nd(data: Array, indices: Any, batch_dims: int = 0) -> Array:
    idx = np.asarray(indices, np.int64)
    lead = data.shape[:batch_dims]
    B = int(np.prod(lead, dtype=np.int64))
    d = data.reshape((B,) + data.shape[batch_dims:])
    idx = idx.reshape((B,) + idx.shape[batch_dims:])
    rows = np.arange(B).reshape((B,) + (1,) * (idx.ndim - 2))
    out = d[(rows,) + tuple(np.moveaxis(idx, -1, 0))]
    return out.reshape(lead + out.shape[1:])


def _sigmoid(x: Array) -> Array:
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


# op_type -> (inputs it needs, inputs it takes; None: any number), at the latest opset; _ATTR_INPUTS
# says which of them were attributes before.  Every operator here has one output.
ARITY = {
    "Identity": (1, 1), "Transpose": (1, 1), "Reshape": (2, 2), "Squeeze": (1, 2), "Unsqueeze": (2, 2),
    "Concat": (1, None), "Slice": (3, 5), "Gather": (2, 2), "GatherND": (2, 2), "Shape": (1, 1), "Constant": (0, 0),
    "ConstantOfShape": (1, 1), "Cast": (1, 1), "Expand": (2, 2), "Add": (2, 2), "Sub": (2, 2), "Mul": (2, 2),
    "Div": (2, 2), "Gemm": (2, 3), "MatMul": (2, 2), "Relu": (1, 1), "Tanh": (1, 1), "Sigmoid": (1, 1),
    "Softmax": (1, 1), "LogSoftmax": (1, 1),
    "RNN": (3, 6), "GRU": (3, 6), "LSTM": (3, 8),  # (checked here, built by .nodes)
}
_OUTPUTS = {"RNN": 2, "GRU": 2, "LSTM": 3}  # most outputs; the others have one
# each attribute's kind: an int, a list of ints, a float, a tensor
_KINDS = {"perm": "ints", "axes": "ints", "starts": "ints", "ends": "ints", "value_ints": "ints",
          "value_floats": "floats", "alpha": "float", "beta": "float", "value_float": "float", "value": "tensor"}
_NEEDED = {"Cast": {"to"}, "Concat": {"axis"}}  # attributes without a default
_CASTS = {1, 2, 3, 4, 5, 6, 7, 9, 10, 11, 12, 13}  # TensorProto codes of the numeric types NumPy holds


def _kind_of(value: Any) -> str:
    if isinstance(value, (bool, np.bool_)):
        return "other"
    if isinstance(value, (int, np.integer)):
        return "int"
    if isinstance(value, (float, np.floating)):
        return "float"
    if isinstance(value, (list, tuple)):
        kinds = {_kind_of(v) for v in value}
        return "ints" if kinds <= {"int"} else "floats" if kinds <= {"float", "int"} else "other"
    return "tensor" if type(value).__name__ == "TensorProto" else "other"


def check(op_type: str, attrs: dict[str, Any], name: str, inputs: Optional[list[str]] = None,
          outputs: Optional[list[str]] = None, opset: int = 13) -> None:
    """Refuse a node this module does not implement, by name: its type, its attributes
    (names and kinds), its number of inputs and outputs (``inputs``/``outputs``: the
    node's lists, ``""`` for an omitted optional one)."""
    if op_type not in ARITY:
        raise ValueError(f"ONNX operator {op_type} (node {name!r}) is not supported by nprnn's import")
    where = f"ONNX node {name!r} ({op_type})"
    if op_type not in _OUTPUTS:
        unknown = sorted(set(attrs) - ATTRIBUTES.get(op_type, set()))
        if unknown:
            raise ValueError(f"{where}: attribute(s) {unknown} are not supported "
                             f"({op_type} takes {sorted(ATTRIBUTES.get(op_type, set())) or 'none'})")
        for key, value in attrs.items():
            want = _KINDS.get(key, "int")
            if _kind_of(value) != want and not (want == "floats" and _kind_of(value) == "ints"):
                raise ValueError(f"{where}: attribute {key!r} must be {'an' if want == 'int' else 'a'} {want} "
                                 f"attribute, got {value!r}")
    need, most = ARITY[op_type]
    needed = set(_NEEDED.get(op_type, ()))
    if op_type in _ATTR_INPUTS and opset < _ATTR_INPUTS[op_type][0]:  # these inputs are attributes here
        moved = _ATTR_INPUTS[op_type][1]
        need, most = 1, 1
        needed |= {"axes"} if op_type == "Unsqueeze" else {"starts", "ends"} if op_type == "Slice" else set()
        assert set(moved) >= needed
    missing = sorted(needed - set(attrs))
    if missing:
        raise ValueError(f"{where}: needs attribute(s) {missing}")
    if op_type == "Constant" and len(attrs) != 1:
        raise ValueError(f"{where}: needs exactly one value attribute, got {sorted(attrs) or 'none'}")
    if op_type == "Cast" and attrs["to"] not in _CASTS:
        raise ValueError(f"{where}: cannot cast to element type {attrs['to']} (nprnn casts to the numeric types)")
    if inputs is not None:
        given = list(inputs)
        while given and not given[-1]:
            given.pop()  # trailing omitted optional inputs
        if len(given) < need or (most is not None and len(given) > most) or not all(given[:need]):
            takes = f"{need}" if need == most else f"{need} or more" if most is None else f"{need} to {most}"
            raise ValueError(f"{where}: takes {takes} input(s) (the first {need} required), got {list(inputs)}")
    if outputs is not None:
        most_out = _OUTPUTS.get(op_type, 1)
        if not 1 <= len(outputs) <= most_out or (most_out == 1 and not outputs[0]):
            raise ValueError(f"{where}: has {most_out} output(s) at most, got {list(outputs)}")


def _count(shape: Any) -> int:
    n = 1
    for d in shape:
        n *= max(int(d), 0)
    return n


def result_bytes(op_type: str, inputs: list[Any], attrs: dict[str, Any]) -> int:
    """How many bytes a node's result will take, from its inputs' shapes, before it is
    computed: the operators whose result can be much larger than their inputs (a
    broadcast, a fill, a product, a gather); views none; the others at most their largest
    input.
    0 when the shapes do not fit (running the node then says why)."""
    from onnx import helper

    def size(x: Any) -> int:
        return 0 if x is None else np.asarray(x).nbytes

    try:
        xs: list[Any] = [None if x is None else np.asarray(x) for x in inputs]
        if op_type == "ConstantOfShape":
            item = helper.tensor_dtype_to_np_dtype(attrs["value"].data_type).itemsize if "value" in attrs else 4
            return int(_count(_ints(xs[0])) * item)
        if op_type == "Expand":
            return int(_count(np.broadcast_shapes(xs[0].shape, tuple(_ints(xs[1])))) * xs[0].itemsize)
        if op_type == "Concat":
            return sum(size(x) for x in xs)
        if op_type in ("Add", "Sub", "Mul", "Div"):
            return int(_count(np.broadcast_shapes(xs[0].shape, xs[1].shape)) * np.result_type(xs[0], xs[1]).itemsize)
        if op_type in ("MatMul", "Gemm"):
            a, b = xs[0], xs[1]
            if op_type == "Gemm":
                rows, cols = a.shape[1 if attrs.get("transA") else 0], b.shape[0 if attrs.get("transB") else 1]
                return int(rows * cols * np.result_type(a, b).itemsize)
            a2, b2 = (a[None] if a.ndim == 1 else a), (b[:, None] if b.ndim == 1 else b)
            lead = np.broadcast_shapes(a2.shape[:-2], b2.shape[:-2])
            return int(_count(lead) * a2.shape[-2] * b2.shape[-1] * np.result_type(a, b).itemsize)
        if op_type == "Gather":
            axis = attrs.get("axis", 0) % max(xs[0].ndim, 1)
            return int(_count(xs[0].shape[:axis] + xs[1].shape + xs[0].shape[axis + 1:]) * xs[0].itemsize)
        if op_type == "GatherND":
            depth = xs[1].shape[-1] + attrs.get("batch_dims", 0)
            return int(_count(xs[1].shape[:-1] + xs[0].shape[depth:]) * xs[0].itemsize)
        if op_type == "Cast":
            return int(xs[0].size * helper.tensor_dtype_to_np_dtype(attrs["to"]).itemsize)
    except Exception:  # shapes that do not fit: the node's own run says so
        return 0
    if op_type in _VIEWS:
        return 0
    return max([size(x) for x in xs], default=0)


_VIEWS = {"Identity", "Reshape", "Squeeze", "Unsqueeze", "Transpose", "Slice", "Shape"}  # no new data


def run(op_type: str, inputs: list[Any], attrs: dict[str, Any], opset: int) -> list[Any]:
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
assert set(ARITY) == set(SUPPORTED) | {"RNN", "GRU", "LSTM"}

"""The module base: named parameters, their gradients, state dicts, train/eval.

Parameters are plain NumPy arrays kept in ``_parameters`` and reachable as attributes
with PyTorch's names (``lstm.weight_ih_l0``).  Child modules assigned as attributes are
kept in ``_modules`` and named with PyTorch's dotted prefixes.  Each parameter has a
gradient array of the same shape in ``grads`` that backward adds into.
"""
from __future__ import annotations

import threading
import warnings
import weakref
from collections import OrderedDict
from contextlib import contextmanager
from typing import Any, Iterable, Iterator, Mapping, NamedTuple, Optional

import numpy as np

from .._checks import detached, torch_dtype
from .._typing import Array
from ..functional.native import weights_changed  # each route that changes a parameter calls it

FLOAT_DTYPES = (np.dtype(np.float32), np.dtype(np.float64))

_READ_ONLY = ("nprnn parameters are read-only, so that no layer ever runs on weights it prepared before a change: "
              "change them with load_state_dict(), by assigning the attribute (module.weight_hh_l0 = new_array), "
              "or in place inside `with nprnn.writable(module):`")


class Parameter(np.ndarray):
    """A parameter array: an ndarray that is read-only outside :func:`writable`, and says
    so in words (NumPy's own message does not name the supported ways).  Arithmetic on it
    gives ordinary arrays' values; its copies are writable.  ``p.grad`` is the gradient
    array backward adds into (the module's ``grads`` entry), as in PyTorch."""

    grad: Optional[Array] = None
    _frozen = False  # requires_grad False
    _home: Any = None  # (weakref to its module, name): where an optimizer finds its successor

    @property
    def requires_grad(self) -> bool:
        """As in PyTorch: False freezes the parameter -- backward files no gradient for it,
        ``p.grad`` is None and optimizers skip it; its value stays in ``state_dict``.  True
        again: the next backward files a fresh gradient (``Module._grad_target``)."""
        return not self._frozen

    @requires_grad.setter
    def requires_grad(self, flag: bool) -> None:
        if not isinstance(flag, (bool, np.bool_)):
            raise TypeError(f"requires_grad must be a bool, got {type(flag).__name__}")
        self._frozen = not flag
        if not flag:
            self.grad = None

    def requires_grad_(self, requires_grad: bool = True) -> "Parameter":
        self.requires_grad = requires_grad
        return self

    def numel(self) -> int:
        """The number of elements (``size``), as ``torch.Tensor.numel``."""
        return int(self.size)

    def _refuse(self) -> None:
        if not self.flags.writeable:
            raise ValueError(_READ_ONLY)

    def __setitem__(self, key: Any, value: Any) -> None:
        self._refuse()
        super().__setitem__(key, value)

    def __iadd__(self, other: Any) -> Any:  # type: ignore[misc]
        self._refuse()
        return super().__iadd__(other)

    def __isub__(self, other: Any) -> Any:  # type: ignore[misc]
        self._refuse()
        return super().__isub__(other)

    def __imul__(self, other: Any) -> Any:  # type: ignore[misc]
        self._refuse()
        return super().__imul__(other)

    def __itruediv__(self, other: Any) -> Any:  # type: ignore[misc]
        self._refuse()
        return super().__itruediv__(other)


def as_parameter(value: np.ndarray) -> Parameter:
    """A read-only :class:`Parameter` holding a C-ordered copy of ``value``."""
    p = np.array(value, order="C", copy=True).view(Parameter)
    p.flags.writeable = False
    return p


@contextmanager
def writable(*targets: Any) -> Iterator[None]:
    """Within the block, the parameters of the given modules (and any arrays given) may be
    written in place; on leaving, they are read-only again and every cache of prepared
    weights is refreshed at its next use::

        with nprnn.writable(lstm):
            lstm.weight_hh_l0[0] = 0
    """
    arrays: list[Array] = []
    for t in targets:
        if isinstance(t, Module):
            arrays.extend(p for _, p in t.named_parameters())
        elif isinstance(t, np.ndarray):
            arrays.append(t)
        else:
            raise TypeError(f"writable() takes modules and arrays, got {type(t).__name__}")
    frozen = [a for a in arrays if isinstance(a, Parameter) and not a.flags.writeable]
    for a in frozen:
        a.flags.writeable = True
    try:
        yield
    finally:
        for a in frozen:
            a.flags.writeable = False
        weights_changed()


def resolve_dtype(dtype: Any) -> np.dtype[Any]:
    """The module dtype: float32 (also for None, PyTorch's "the default") or float64, given
    as NumPy's or torch's (``torch.float64``)."""
    dtype = torch_dtype(dtype)
    if dtype is None:
        return np.dtype(np.float32)
    try:
        dt: np.dtype[Any] = np.dtype(dtype)
    except TypeError as exc:
        raise TypeError(f"dtype must be numpy.float32 or numpy.float64, got {dtype!r}") from exc
    if dt not in FLOAT_DTYPES:
        raise TypeError(f"dtype must be numpy.float32 or numpy.float64, got {dt}")
    return dt


def resolve_rng(seed: Any) -> np.random.Generator:
    if isinstance(seed, np.random.Generator):
        return seed
    if seed is None or (isinstance(seed, (int, np.integer)) and not isinstance(seed, bool)):
        return np.random.default_rng(seed)
    raise TypeError(f"seed should be None, an int or a numpy.random.Generator, got: {type(seed).__name__}")


def init_uniform(module: "Module", hidden_size: int, rng: np.random.Generator) -> None:
    """Draw every parameter of ``module`` from U(-1/sqrt(hidden_size), 1/sqrt(hidden_size)),
    PyTorch's initialisation of recurrent layers and cells."""
    stdv = 1.0 / np.sqrt(hidden_size)
    with writable(module):
        for p in module.parameters():
            p[...] = rng.uniform(-stdv, stdv, p.shape)


def init_own(module: "Module", kind: Any, names: Any) -> None:
    """Set a cell kind's own parameters (``kind.params``: a layer norm's gains and shifts)
    to their initial values; ``names`` lists each layer-direction's names for them."""
    with writable(module):
        for group in names:
            for name, (_, _, value) in zip(group, kind.params):
                module._parameters[name][...] = value


class IncompatibleKeys(NamedTuple):
    missing_keys: list[str]
    unexpected_keys: list[str]


class _Work:
    """One thread's work for one module: the arrays kept between calls (``pool``) and the
    training records waiting for backward (``records``, latest last)."""

    __slots__ = ("pool", "records", "__weakref__")

    def __init__(self) -> None:
        self.pool: dict[Any, Any] = {}
        self.records: list[Any] = []


class _PerThread:
    """Each thread's :class:`_Work`, dropped with the thread (a thread's records are its
    own: another thread's forward never feeds this thread's backward).  ``all`` holds a
    weak reference to each, so that :meth:`drop_records` reaches every thread's."""

    def __init__(self) -> None:
        self._local = threading.local()
        self._all: "weakref.WeakSet[_Work]" = weakref.WeakSet()
        self._lock = threading.Lock()

    def here(self) -> _Work:
        try:
            return self._local.work  # type: ignore[no-any-return]
        except AttributeError:
            work = self._local.work = _Work()
            with self._lock:
                self._all.add(work)
            return work

    def drop_records(self) -> None:
        with self._lock:
            for work in list(self._all):
                work.records.clear()


_grads_lock = threading.Lock()  # backward in several threads adds into the same gradients


class Module:
    """Base class of every nprnn layer and cell.

    Subclasses call ``super().__init__()``, then :meth:`register_parameter` for each
    parameter in PyTorch's order, and implement ``forward`` (and ``backward``).  A
    training-mode forward keeps its record for backward with :meth:`_keep` (or
    :meth:`_push`), per thread; backward takes it with :meth:`_take` and files its
    parameter gradients with :meth:`_add_grads`.
    """

    max_pending_records = 256  # a cell warns when a thread holds more records than this (see nn.cells)
    _parameters: OrderedDict[str, Parameter]
    _grads: OrderedDict[str, Array]
    _modules: OrderedDict[str, Module]
    _prepared: dict[Any, Any]
    _threads: _PerThread
    training: bool

    def __init__(self) -> None:
        object.__setattr__(self, "_parameters", OrderedDict())
        object.__setattr__(self, "_grads", OrderedDict())
        object.__setattr__(self, "_modules", OrderedDict())
        object.__setattr__(self, "training", True)
        object.__setattr__(self, "_prepared", {})  # weights arranged for the compiled kernels, see functional.native
        object.__setattr__(self, "_threads", _PerThread())

    # -- per-thread work ---------------------------------------------------------
    def _pool(self) -> dict[Any, Any]:
        """This thread's reusable work arrays (like PyTorch's caching allocator: memory is
        kept between calls because fresh memory costs page faults)."""
        return self._threads.here().pool

    def _keep(self, record: Any) -> None:
        """Keep ``record`` (None: nothing) as this thread's one record for backward."""
        records = self._threads.here().records
        records.clear()
        if record is not None:
            records.append(record)

    def _push(self, record: Any) -> None:
        """Add ``record`` to this thread's records (a cell: backward takes the latest),
        warning once the pending records pass :attr:`max_pending_records`."""
        records = self._threads.here().records
        records.append(record)
        if len(records) == self.max_pending_records + 1:
            warnings.warn(f"{type(self).__name__} holds {len(records)} training-mode records waiting for backward(), "
                          "and memory grows with each call: call backward() for each training-mode call, or eval() "
                          "(which releases them) to run without gradients", RuntimeWarning, stacklevel=3)

    def _latest(self) -> Any:
        """This thread's latest record (left in place: a backward whose arguments are
        refused can be called again); RuntimeError when there is none."""
        records = self._threads.here().records
        if not records:
            raise RuntimeError(
                f"{getattr(self, '_label', type(self).__name__)}.backward() needs a forward pass in training mode "
                "first, in the same thread (call .train() before forward; each forward can be backpropagated "
                "once)")
        return records[-1]

    def _take(self) -> Any:
        """This thread's latest record, removed (see :meth:`_latest`)."""
        record = self._latest()
        self._threads.here().records.pop()
        return record

    def _add_grads(self, names: Iterable[Optional[str]], grads: Iterable[Optional[Array]]) -> None:
        """Add parameter gradients into ``grads`` (None names or gradients are skipped)."""
        with _grads_lock:
            for name, g in zip(names, grads):
                target = None if name is None or g is None else self._grad_target(name)
                if target is not None:
                    target += g

    def _grad_target(self, name: str) -> Optional[Array]:
        """The array backward adds parameter ``name``'s gradient into: None when it is frozen
        (no gradient, as in PyTorch); zeroed first after ``zero_grad(set_to_none=True)``."""
        p = self._parameters[name]
        if p._frozen:
            return None
        if p.grad is None:
            self._grads[name].fill(0)
            p.grad = self._grads[name]
        return self._grads[name]

    def release_buffers(self) -> None:
        """Free the work arrays kept between calls and any pending backward records."""
        object.__setattr__(self, "_threads", _PerThread())

    # -- attributes ------------------------------------------------------------
    def register_parameter(self, name: str, value: Array) -> None:
        p = self._parameters[name] = as_parameter(value)
        p.grad = self._grads[name] = np.zeros(value.shape, value.dtype)
        p._home = (weakref.ref(self), name)
        weights_changed()

    def _replace_parameter(self, name: str, new: Parameter) -> None:
        """``new`` takes parameter ``name``'s place: same frozen state and gradient array
        (reshaped to its dtype when that changed), found by the optimizers that held the old."""
        old = self._parameters[name]
        if self._grads[name].dtype != new.dtype:
            self._grads[name] = self._grads[name].astype(new.dtype)
        new._frozen, new._home = old._frozen, (weakref.ref(self), name)
        new.grad = None if old.grad is None else self._grads[name]
        self._parameters[name] = new
        weights_changed()

    def __getattr__(self, name: str) -> Any:
        # only called when normal lookup fails
        d = self.__dict__
        if name in d.get("_parameters", {}):
            return d["_parameters"][name]
        if name in d.get("_stored", {}):
            return d["_stored"][name]
        if name in d.get("_modules", {}):
            return d["_modules"][name]
        raise AttributeError(f"'{type(self).__name__}' object has no attribute '{name}'")

    def __setattr__(self, name: str, value: Any) -> None:
        params = self.__dict__.get("_parameters")
        if params is not None and name in params:
            old = params[name]
            new = np.asarray(value)
            if new.shape != old.shape:
                raise ValueError(
                    f"cannot assign an array of shape {new.shape} to parameter '{name}' of shape {old.shape}"
                )
            self._replace_parameter(name, as_parameter(np.asarray(new, dtype=old.dtype)))
            return
        if isinstance(value, Module):
            if "_modules" not in self.__dict__:
                raise AttributeError("cannot assign a module before Module.__init__() call")
            self._modules[name] = value
            return
        object.__setattr__(self, name, value)

    # -- traversal -------------------------------------------------------------
    def named_modules(self, prefix: str = "") -> Iterator[tuple[str, "Module"]]:
        yield prefix, self
        for name, child in self._modules.items():
            yield from child.named_modules(f"{prefix}.{name}" if prefix else name)

    def register_buffer(self, name: str, value: Array) -> None:
        """A read-only array the module computes with and ``state_dict`` holds, but that has
        no gradient and no optimizer changes (PyTorch's buffers; a quantized weight)."""
        if "_stored" not in self.__dict__:  # (not "_buffers": older versions pickled a cache by that name)
            object.__setattr__(self, "_stored", OrderedDict())
        self.__dict__["_stored"][name] = as_parameter(value)
        weights_changed()

    def _named_state(self) -> Iterator[tuple[str, Parameter]]:
        """Every array of ``state_dict``: each module's parameters, then its buffers."""
        for mod_prefix, mod in self.named_modules():
            for name, p in list(mod._parameters.items()) + list(mod.__dict__.get("_stored", {}).items()):
                yield (f"{mod_prefix}.{name}" if mod_prefix else name), p

    def named_parameters(self, prefix: str = "") -> Iterator[tuple[str, Parameter]]:
        for mod_prefix, mod in self.named_modules(prefix):
            for name, p in mod._parameters.items():
                yield (f"{mod_prefix}.{name}" if mod_prefix else name), p

    def parameters(self) -> Iterator[Parameter]:
        for _, p in self.named_parameters():
            yield p

    def modules(self) -> Iterator["Module"]:
        for _, m in self.named_modules():
            yield m

    def children(self) -> Iterator["Module"]:
        yield from self._modules.values()

    def apply(self, fn: Any) -> "Module":
        """Call ``fn`` on every submodule, then on this one (PyTorch's order); returns self."""
        for child in self._modules.values():
            child.apply(fn)
        fn(self)
        return self

    def requires_grad_(self, requires_grad: bool = True) -> "Module":
        """Freeze (False) or unfreeze every parameter; returns self (``torch.nn.Module``)."""
        for p in self.parameters():
            p.requires_grad = requires_grad
        return self

    # -- dtype and device --------------------------------------------------------
    def to(self, *args: Any, **kwargs: Any) -> "Module":
        """``to(dtype)``, ``to("cpu")``, ``to(device, dtype)`` or with ``device=``/``dtype=``
        keywords, as PyTorch: a dtype converts every parameter and the compute dtype in
        place (optimizers built before follow); "cpu" is the only device."""
        device, dtype = kwargs.pop("device", None), kwargs.pop("dtype", None)
        kwargs.pop("non_blocking", None)
        if kwargs:
            raise TypeError(f"to() got an unexpected keyword argument '{next(iter(kwargs))}'")
        for a in args:
            if isinstance(a, str) or type(a).__name__ == "device":
                device = a
            else:
                dtype = a
        if device is not None and str(device).split(":")[0] != "cpu":
            raise ValueError(f"nprnn runs on the CPU only: cannot move a module to {str(device)!r} (to('cpu') is "
                             "accepted and changes nothing)")
        if dtype is not None:
            self._convert(resolve_dtype(torch_dtype(dtype)))
        return self

    def double(self) -> "Module":
        return self.to(np.float64)

    def float(self) -> "Module":
        return self.to(np.float32)

    def cpu(self) -> "Module":
        return self

    def _convert(self, dtype: np.dtype[Any]) -> None:
        for mod in self.modules():
            for name, p in list(mod._parameters.items()):
                if p.dtype != dtype:
                    mod._replace_parameter(name, as_parameter(p.astype(dtype)))
            if isinstance(getattr(mod, "dtype", None), np.dtype):
                object.__setattr__(mod, "dtype", dtype)
            mod._prepared.clear()
            object.__setattr__(mod, "_threads", _PerThread())  # work arrays of the old dtype
        weights_changed()

    @property
    def grads(self) -> "OrderedDict[str, Array]":
        """Gradient arrays keyed like :meth:`state_dict`; backward adds into them."""
        out: OrderedDict[str, Array] = OrderedDict()
        for mod_prefix, mod in self.named_modules():
            for name, g in mod._grads.items():
                out[f"{mod_prefix}.{name}" if mod_prefix else name] = g
        return out

    def zero_grad(self, set_to_none: bool = False) -> None:
        """Zero every gradient array; with ``set_to_none`` also set each ``p.grad`` to None
        until the next backward files one (optimizers skip such parameters, as PyTorch's)."""
        for _, mod in self.named_modules():
            for name, g in mod._grads.items():
                g.fill(0)
                if set_to_none:
                    mod._parameters[name].grad = None

    def train(self, mode: bool = True) -> "Module":
        if not isinstance(mode, bool):
            raise ValueError("training mode is expected to be boolean")
        for _, mod in self.named_modules():
            object.__setattr__(mod, "training", mode)
            if not mode:
                mod._threads.drop_records()  # nothing will backpropagate through them
        return self

    def eval(self) -> "Module":
        return self.train(False)

    # -- state dicts -----------------------------------------------------------
    def state_dict(self) -> "OrderedDict[str, Array]":
        """Copies of every parameter, in PyTorch's order and with its names."""
        return OrderedDict((k, np.array(v)) for k, v in self._named_state())

    def load_state_dict(self, state_dict: Mapping[str, Any], strict: bool = True) -> IncompatibleKeys:
        """Copy values from ``state_dict`` (any array-likes, e.g. NumPy arrays or CPU
        tensors) into the parameters.  Every problem is reported at once and, on error,
        no parameter is changed."""
        converted, result = self.check_state_dict(state_dict, strict)
        self.apply_state_dict(converted)
        return result

    def check_state_dict(self, state_dict: Mapping[str, Any], strict: bool = True, check_dtype: bool = False
                         ) -> tuple[dict[str, Array], IncompatibleKeys]:
        """Validate ``state_dict`` against the parameters without changing anything.
        Returns ``(arrays to apply, IncompatibleKeys)``; raises RuntimeError listing every
        problem (missing and unexpected keys when strict; shapes, non-numeric values and,
        with ``check_dtype``, dtypes always)."""
        if not isinstance(state_dict, Mapping):
            raise TypeError(f"Expected state_dict to be dict-like, got {type(state_dict)}.")
        own = OrderedDict(self._named_state())
        exact = set(own) - {k for k, _ in self.named_parameters()}  # buffers: their dtype is their meaning
        missing = [k for k in own if k not in state_dict]
        unexpected = [k for k in state_dict if k not in own]
        problems = []
        converted = {}
        for key, param in own.items():
            if key not in state_dict:
                continue
            try:
                value = np.asarray(detached(state_dict[key]))  # (torch's named_parameters() require grad)
            except Exception as exc:  # e.g. a tensor on another device
                problems.append(f"could not read {key} as an array: {exc}")
                continue
            if value.dtype.kind not in "fiub":
                problems.append(f"{key} has non-numeric dtype {value.dtype}")
                continue
            if value.shape != param.shape:
                problems.append(
                    f"size mismatch for {key}: copying a param with shape {tuple(value.shape)} from checkpoint, "
                    f"the shape in current model is {tuple(param.shape)}."
                )
                continue
            if (check_dtype or key in exact) and value.dtype != param.dtype:
                problems.append(f"dtype mismatch for {key}: the file has {value.dtype}, the model has {param.dtype}.")
                continue
            converted[key] = value
        errors = []
        if strict:
            if missing:
                errors.append("Missing key(s) in state_dict: " + ", ".join(f'"{k}"' for k in missing) + ". ")
            if unexpected:
                errors.append("Unexpected key(s) in state_dict: " + ", ".join(f'"{k}"' for k in unexpected) + ". ")
        errors.extend(problems)
        if errors:
            raise RuntimeError(
                f"Error(s) in loading state_dict for {type(self).__name__}:\n\t" + "\n\t".join(errors)
            )
        return converted, IncompatibleKeys(missing, unexpected)

    def apply_state_dict(self, converted: Mapping[str, Array]) -> None:
        """Copy already validated arrays (from :meth:`check_state_dict`) into the parameters."""
        own = dict(self._named_state())
        with writable(*(own[key] for key in converted)):
            for key, value in converted.items():
                np.copyto(own[key], value, casting="unsafe")

    # -- copies ----------------------------------------------------------------
    def __getstate__(self) -> dict[str, Any]:
        """Copies and pickles carry parameters and settings only, as PyTorch's do: not the
        gradients (the copy starts from zeros), work arrays, pending backward records or
        prepared weights (made again on first use)."""
        state = dict(self.__dict__)
        state["_prepared"] = {}
        state["_grads"] = OrderedDict((k, (g.shape, g.dtype.str)) for k, g in self._grads.items())
        state["_threads"] = None
        state["_frozen_names"] = [n for n, p in self._parameters.items() if p._frozen]
        for name in ("_params_at", "_record", "_stack", "_buffers"):  # a cache; what older versions kept
            state.pop(name, None)
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        """Unpickled and copied parameters are read-only again (pickle keeps no flags)."""
        self.__dict__.update(state)
        for old in ("_record", "_stack", "_buffers"):  # pickled by older versions
            self.__dict__.pop(old, None)
        self.__dict__["_threads"] = _PerThread()
        if "_prepared" in state:  # weights prepared in another process or for the original
            self.__dict__["_prepared"] = {}
        grads = self.__dict__.get("_grads", {})
        for k, g in list(grads.items()):
            if isinstance(g, tuple):  # (shape, dtype) from __getstate__
                grads[k] = np.zeros(g[0], np.dtype(g[1]))
        for name, p in list(self._parameters.items()):
            if not (isinstance(p, Parameter) and not p.flags.writeable):
                p = self._parameters[name] = as_parameter(p)
            p.grad = self._grads[name]  # (pickles keep no attributes of arrays)
            p._home = (weakref.ref(self), name)
        for b in self.__dict__.get("_stored", {}).values():  # read-only again, in place (modules may share one)
            b.flags.writeable = False
        for name in state.get("_frozen_names", ()):
            self._parameters[name].requires_grad = False
        self.__dict__.pop("_frozen_names", None)
        weights_changed()

    # -- calling ---------------------------------------------------------------
    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        return self.forward(*args, **kwargs)

    def forward(self, *args: Any, **kwargs: Any) -> Any:  # pragma: no cover - abstract
        raise NotImplementedError(f"{type(self).__name__} has no forward()")

    def extra_repr(self) -> str:
        return ""

    def __repr__(self) -> str:
        lines = [f"({name}): " + repr(child).replace("\n", "\n  ") for name, child in self._modules.items()]
        if not lines:
            return f"{type(self).__name__}({self.extra_repr()})"
        body = "\n  ".join(([self.extra_repr()] if self.extra_repr() else []) + lines)
        return f"{type(self).__name__}(\n  {body}\n)"

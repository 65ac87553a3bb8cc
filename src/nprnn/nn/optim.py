"""Optimizers that match ``torch.optim`` step for step, and gradient clipping.

An optimizer is built on a module, ``model.parameters()`` (each parameter knows its
gradient array), ``(parameter, gradient)`` array pairs or torch's parameter groups, and
updates the parameter arrays in place from the gradient arrays that backward fills::

    opt = Adam(model.parameters(), lr=1e-3)
    ...; model.backward(...); clip_grad_norm_(model, 1.0); opt.step(); opt.zero_grad()
"""
from __future__ import annotations

import math
from typing import Any

import numpy as np

from .._typing import Array
from .module import Module, Parameter, writable


def _pairs(params: Any) -> Any:
    """(names, params, grads) from a module, from ``model.parameters()`` or
    ``model.named_parameters()`` (each parameter knows its gradient array, ``p.grad``), or
    from (parameter, gradient) array pairs."""
    if isinstance(params, Module):
        named = list(params.named_parameters())
        return [n for n, _ in named], [p for _, p in named], [p.grad for _, p in named]
    items = list(params)
    if not items:
        raise ValueError("optimizer got an empty parameter list")
    names, ps, gs = [], [], []
    for k, item in enumerate(items):
        name = str(k)
        if isinstance(item, tuple) and len(item) == 2 and isinstance(item[0], str):  # from named_parameters()
            name, item = item
        if isinstance(item, Parameter):
            if item._home is None:
                raise TypeError(f"optimizer params: parameter {name} has no gradient array (it belongs to no module)")
            p, g = item, item.grad  # (None while frozen: skipped, as torch.optim does)
        elif isinstance(item, dict):
            raise TypeError("optimizer params: a parameter group (a dict) among plain parameters; give either "
                            "parameters or a list of groups, as torch.optim does")
        elif (isinstance(item, (tuple, list)) and len(item) == 2 and all(isinstance(a, np.ndarray) for a in item)
              and item[0].shape == item[1].shape):
            p, g = item
        else:
            what = ("an array with no gradient the optimizer can find" if isinstance(item, np.ndarray)
                    else f"a {type(item).__name__}")
            raise TypeError(f"optimizer params must be a Module, model.parameters(), model.named_parameters() or "
                            f"(parameter, gradient) array pairs of equal shape; item {k} is {what}")
        names.append(name)
        ps.append(p)
        gs.append(g)
    return names, ps, gs


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float, np.integer, np.floating)) and not isinstance(value, (bool, np.bool_))


def _check_nonneg(name: str, value: Any) -> float:
    if not isinstance(value, (int, float)) or isinstance(value, bool) or value < 0:
        raise ValueError(f"Invalid {name}: {value}")
    return float(value)


def _groups(params: Any) -> Any:
    """``[(group options, params)]``: one group without options, or torch's list of dicts
    each with ``'params'`` and its own options."""
    if isinstance(params, (list, tuple)) and params and all(isinstance(g, dict) for g in params):
        out = []
        for k, g in enumerate(params):
            if "params" not in g:
                raise ValueError(f"optimizer param group {k} has no 'params' key")
            out.append(({key: v for key, v in g.items() if key != "params"}, g["params"]))
        return out
    return [({}, params)]


class Optimizer:
    """Base: holds the parameters, their gradients, hyper-parameters and per-parameter state.

    ``params`` is a module, ``model.parameters()``, ``model.named_parameters()``,
    (parameter, gradient) pairs, or torch's list of parameter groups, each a dict with
    ``'params'`` and the options it sets for itself (``[{'params': a.parameters()},
    {'params': b.parameters(), 'lr': 1e-4}]``).  ``param_groups`` holds each group's
    options and parameters; change ``group['lr']`` there to schedule the learning rate."""

    _state_keys: tuple[str, ...] = ()

    def __init__(self, params: Any, defaults: dict[str, Any]) -> None:
        self.defaults = dict(defaults)
        self.names: list[str] = []
        self.params: list[Array] = []
        self.grads: list[Array] = []
        self.param_groups: list[dict[str, Any]] = []
        seen: set[int] = set()
        for k, (options, group_params) in enumerate(_groups(params)):
            unknown = sorted(set(options) - set(defaults))
            if unknown:
                raise ValueError(f"optimizer param group {k}: unknown option(s) {unknown}; "
                                 f"{type(self).__name__} takes {sorted(defaults)}")
            checked = self._check_options(**{**defaults, **options}) if options else dict(defaults)
            names, ps, gs = _pairs(group_params)
            if any(id(p) in seen for p in ps):
                raise ValueError("some parameters appear in more than one parameter group")
            seen.update(id(p) for p in ps)
            self.names += names
            self.params += ps
            self.grads += gs
            self.param_groups.append(dict(checked, params=ps))
        self.state: list[dict[str, Any]] = [{} for _ in self.params]  # per parameter: step count and buffers

    @classmethod
    def _check_options(cls, **options: Any) -> dict[str, Any]:
        """Validated options (the constructor's checks) for one group."""
        return cls([(np.zeros(1), np.zeros(1))], **options).defaults

    def _follow(self) -> None:
        """Each parameter as its module holds it now: ``module.double()`` or assigning
        ``module.weight_hh_l0 = ...`` puts a new array in its place (torch changes tensors in
        place, so its optimizers follow; these follow too, state converted)."""
        k = 0
        for group in self.param_groups:
            for i in range(len(group["params"])):
                p = self.params[k]
                home = p._home if isinstance(p, Parameter) else None
                module = home[0]() if home is not None else None
                now = module._parameters.get(home[1]) if home is not None and module is not None else None
                if now is not None and now is not p:
                    self.params[k] = group["params"][i] = now
                    self.state[k] = {key: (v.astype(now.dtype) if isinstance(v, np.ndarray) else v)
                                     for key, v in self.state[k].items()}
                k += 1

    def _grad(self, k: int) -> Any:
        """Parameter k's gradient array now (None: frozen, or set to None by zero_grad)."""
        p = self.params[k]
        return p.grad if isinstance(p, Parameter) and p._home is not None else self.grads[k]

    def zero_grad(self, set_to_none: bool = False) -> None:
        """Zero the gradients; ``set_to_none`` sets each ``p.grad`` to None until the next
        backward (torch's default since 2.0; the step then skips a parameter without one)."""
        self._follow()
        for k, p in enumerate(self.params):
            g = self._grad(k)
            if g is not None:
                g.fill(0)
            if set_to_none and isinstance(p, Parameter) and p._home is not None:
                p.grad = None

    def step(self) -> None:
        self._follow()
        with writable(*self.params):
            k = 0
            for group in self.param_groups:
                options = {key: v for key, v in group.items() if key != "params"}
                for _ in group["params"]:
                    g = self._grad(k)
                    if g is not None:
                        self._update(self.params[k], g, self.state[k], options)
                    k += 1

    def _update(self, p: Any, g: Any, state: Any, options: Any) -> Any:  # pragma: no cover - abstract
        raise NotImplementedError

    def state_dict(self) -> dict[str, Any]:
        """``{'state': {index: {...}}, 'param_groups': [{hyper-parameters, 'params': [...]}]}``,
        the layout of ``torch.optim.Optimizer.state_dict()`` (arrays copied)."""
        state = {k: {key: (v.copy() if isinstance(v, np.ndarray) else v) for key, v in s.items()}
                 for k, s in enumerate(self.state) if s}
        groups, start = [], 0
        for group in self.param_groups:
            n = len(group["params"])
            groups.append(dict({k: v for k, v in group.items() if k != "params"}, params=list(range(start, start + n))))
            start += n
        return {"state": state, "param_groups": groups}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Restore from :meth:`state_dict` (or a PyTorch optimizer's, converted to arrays).
        Everything is checked before anything changes."""
        self.apply_state_dict(self.check_state_dict(state_dict))

    def check_state_dict(self, state_dict: dict[str, Any]) -> Any:
        """Validate without changing anything; returns what :meth:`apply_state_dict` takes."""
        try:
            groups = state_dict["param_groups"]
            state = state_dict["state"]
        except (KeyError, TypeError) as exc:
            raise ValueError("optimizer state_dict must have 'state' and 'param_groups'") from exc
        if (not isinstance(groups, (list, tuple)) or not groups or not all(isinstance(g, dict) for g in groups)
                or not all(isinstance(g.get("params"), (list, tuple)) for g in groups) or not isinstance(state, dict)):
            raise ValueError("optimizer state_dict: 'param_groups' must be a list of dicts, each with a 'params' list, "
                             "and 'state' a dict")
        if len(groups) != len(self.param_groups):
            raise ValueError("loaded state dict has a different number of parameter groups")
        if any(len(g["params"]) != len(mine["params"]) for g, mine in zip(groups, self.param_groups)):
            raise ValueError(
                "loaded state dict contains a parameter group that doesn't match the size of optimizer's group"
            )
        new_state: list[dict[str, Any]] = [{} for _ in self.params]
        for key, s in state.items():
            try:
                k = int(key)
            except (TypeError, ValueError) as exc:
                raise ValueError(f"optimizer state_dict: state key {key!r} is not a parameter index") from exc
            if not 0 <= k < len(self.params):
                raise ValueError(f"optimizer state for parameter {key} but there are {len(self.params)} parameters")
            if not isinstance(s, dict):
                raise ValueError(f"optimizer state_dict: the state of parameter {key} must be a dict, got "
                                 f"{type(s).__name__}")
            unknown = sorted(set(s) - set(self._state_keys))
            if unknown:
                raise ValueError(f"optimizer state_dict: parameter {key} has state {unknown} that "
                                 f"{type(self).__name__} does not keep (it keeps {list(self._state_keys)})")
            for name, v in s.items():
                if v is None:  # PyTorch's way of saying "none yet" (SGD without momentum)
                    continue
                try:
                    arr = np.asarray(v, dtype=np.float64 if name == "step" else self.params[k].dtype)
                except (TypeError, ValueError) as exc:
                    raise ValueError(f"optimizer state '{name}' of parameter {k} is not numeric: {exc}") from exc
                if name == "step":
                    if arr.shape != () or not arr >= 0:
                        raise ValueError(f"optimizer state 'step' of parameter {k} must be a number >= 0, got {v!r}")
                    new_state[k][name] = float(arr)
                    continue
                if arr.shape != self.params[k].shape:
                    raise ValueError(
                        f"optimizer state '{name}' of parameter {k} has shape {arr.shape}, expected "
                        f"{self.params[k].shape}"
                    )
                new_state[k][name] = np.array(arr, copy=True)
        options = [self._group_options(g, i, mine) for i, (g, mine) in enumerate(zip(groups, self.param_groups))]
        return options, new_state

    def _group_options(self, group: Any, index: Any, mine: Any) -> Any:
        """One saved group's options, checked against the types and ranges they must have."""
        out = {}
        for key, v in self.defaults.items():
            got = group.get(key, mine.get(key, v))
            if isinstance(v, tuple):
                ok = isinstance(got, (list, tuple)) and len(got) == len(v) and all(_is_number(b) for b in got)
            elif isinstance(v, bool):
                ok = isinstance(got, (bool, np.bool_))
            else:
                ok = _is_number(got)
            if not ok:
                kind = f"{len(v)} numbers" if isinstance(v, tuple) else type(v).__name__
                raise ValueError(f"optimizer state_dict: param_groups[{index}]['{key}'] must be {kind}, got {got!r}")
            out[key] = tuple(float(b) for b in got) if isinstance(v, tuple) else type(v)(got)
        return self._check_options(**out)  # the constructor's checks (ranges)

    def apply_state_dict(self, checked: Any) -> None:
        options, self.state = checked
        for group, opts in zip(self.param_groups, options):
            group.update(opts)

    def __repr__(self) -> str:
        """Each group's own options, as torch.optim prints them."""
        lines = [f"{type(self).__name__} ("]
        for k, group in enumerate(self.param_groups):
            lines.append(f"Parameter Group {k}")
            lines += [f"    {key}: {group[key]}" for key in sorted(group) if key != "params"]
        return "\n".join(lines) + "\n)"


class SGD(Optimizer):
    """``torch.optim.SGD``: with weight decay ``g += wd * p``; with momentum
    ``b = momentum * b + (1 - dampening) * g`` (``b = g`` at the first step), then
    ``g = g + momentum * b`` (nesterov) or ``g = b``; finally ``p -= lr * g``."""

    _state_keys = ("momentum_buffer",)

    def __init__(self, params: Any, lr: Any = 1e-3, momentum: Any = 0.0, dampening: Any = 0.0,
                 weight_decay: Any = 0.0, nesterov: Any = False) -> None:
        lr, momentum = _check_nonneg("learning rate", lr), _check_nonneg("momentum value", momentum)
        weight_decay = _check_nonneg("weight_decay value", weight_decay)
        if nesterov and (momentum <= 0 or dampening != 0):
            raise ValueError("Nesterov momentum requires a momentum and zero dampening")
        super().__init__(params, dict(lr=lr, momentum=momentum, dampening=float(dampening),
                                      weight_decay=weight_decay, nesterov=bool(nesterov)))

    def _update(self, p: Any, g: Any, state: Any, d: Any) -> Any:
        if d["weight_decay"]:
            g = g + d["weight_decay"] * p
        if d["momentum"]:
            buf = state.get("momentum_buffer")
            if buf is None:
                buf = state["momentum_buffer"] = np.array(g, copy=True)
            else:
                buf *= d["momentum"]
                buf += (1 - d["dampening"]) * g
            g = g + d["momentum"] * buf if d["nesterov"] else buf
        p -= d["lr"] * g


class Adam(Optimizer):
    """``torch.optim.Adam`` (without amsgrad): ``m = b1 m + (1 - b1) g``,
    ``v = b2 v + (1 - b2) g^2``, ``p -= lr / (1 - b1^t) * m / (sqrt(v) / sqrt(1 - b2^t) + eps)``;
    weight decay adds ``wd * p`` to ``g`` (L2)."""

    _state_keys = ("step", "exp_avg", "exp_avg_sq")

    _decoupled = False

    def __init__(self, params: Any, lr: Any = 1e-3, betas: Any = (0.9, 0.999), eps: Any = 1e-8,
                 weight_decay: Any = 0.0) -> None:
        lr, eps = _check_nonneg("learning rate", lr), _check_nonneg("epsilon value", eps)
        b1, b2 = (float(b) for b in betas)
        for i, b in enumerate((b1, b2)):
            if not 0.0 <= b < 1.0:
                raise ValueError(f"Invalid beta parameter at index {i}: {b}")
        weight_decay = _check_nonneg("weight_decay value", weight_decay)
        super().__init__(params, dict(lr=lr, betas=(b1, b2), eps=eps, weight_decay=weight_decay))

    def _update(self, p: Any, g: Any, state: Any, d: Any) -> Any:
        lr, (b1, b2), eps, wd = d["lr"], d["betas"], d["eps"], d["weight_decay"]
        if not state:
            state["step"] = 0.0
            state["exp_avg"] = np.zeros_like(p)
            state["exp_avg_sq"] = np.zeros_like(p)
        state["step"] += 1
        t = state["step"]
        if wd:
            if self._decoupled:
                p *= 1 - lr * wd
            else:
                g = g + wd * p
        m, v = state["exp_avg"], state["exp_avg_sq"]
        m += (g - m) * (1 - b1)  # the lerp PyTorch uses
        v *= b2
        v += (1 - b2) * g * g
        step_size = lr / (1 - b1 ** t)
        denom = np.sqrt(v) / math.sqrt(1 - b2 ** t) + eps
        p -= step_size * (m / denom)


class AdamW(Adam):
    """``torch.optim.AdamW``: Adam with decoupled weight decay ``p *= 1 - lr * wd``."""

    _decoupled = True

    def __init__(self, params: Any, lr: Any = 1e-3, betas: Any = (0.9, 0.999), eps: Any = 1e-8,
                 weight_decay: Any = 1e-2) -> None:
        super().__init__(params, lr=lr, betas=betas, eps=eps, weight_decay=weight_decay)


def _grads_of(params: Any) -> list[Array]:
    """The gradient arrays ``params`` stands for, as torch's clipping functions take them: a
    module, an optimizer, parameters (``model.parameters()``, one parameter), named pairs
    (``model.named_parameters()``), or gradient arrays themselves; parameters without a
    gradient (frozen, or set to None) are left out."""
    if isinstance(params, Module):
        return [p.grad for p in params.parameters() if p.grad is not None]
    if isinstance(params, Optimizer):
        params._follow()
        return [g for g in (params._grad(k) for k in range(len(params.params))) if g is not None]
    if isinstance(params, np.ndarray):
        params = [params]
    out = []
    for item in params:
        if isinstance(item, tuple) and len(item) == 2 and isinstance(item[0], str):
            item = item[1]
        if isinstance(item, Parameter):
            if item.grad is not None:
                out.append(item.grad)
        elif isinstance(item, np.ndarray):
            out.append(item)  # a gradient array
        else:
            raise TypeError(f"expected a module, parameters, named parameters or gradient arrays, got "
                            f"{type(item).__name__}")
    return out


def clip_grad_norm_(params: Any, max_norm: float, norm_type: float = 2.0, error_if_nonfinite: bool = False,
                    foreach: Any = None) -> float:
    """Scale the gradients in place so that their joint norm is at most ``max_norm``;
    returns the norm before clipping (PyTorch's ``clip_grad_norm_``, which takes
    ``model.parameters()`` as well as a module; see :func:`_grads_of`)."""
    grads = _grads_of(params)
    norm_type = float(norm_type)
    if not grads:
        return 0.0
    if math.isinf(norm_type):
        total = max(float(np.abs(g).max()) if g.size else 0.0 for g in grads)
    else:
        total = float(sum(float((np.abs(g) ** norm_type).sum()) for g in grads) ** (1.0 / norm_type))
    if error_if_nonfinite and not math.isfinite(total):
        raise RuntimeError(f"The total norm of order {norm_type} for gradients from `parameters` is non-finite, so "
                           "it cannot be clipped. To disable this error and scale the gradients by the non-finite "
                           "norm anyway, set `error_if_nonfinite=False`")
    coef = min(max_norm / (total + 1e-6), 1.0)
    if coef < 1.0 or not math.isfinite(total):
        for g in grads:
            g *= g.dtype.type(coef)
    return total


def clip_grad_value_(params: Any, clip_value: float, foreach: Any = None) -> None:
    """Clamp every gradient to ``[-clip_value, clip_value]`` in place (PyTorch's
    ``clip_grad_value_``)."""
    clip_value = float(clip_value)
    for g in _grads_of(params):
        np.clip(g, -clip_value, clip_value, out=g)

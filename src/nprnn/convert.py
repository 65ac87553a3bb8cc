"""``nprnn convert``: weights between .pt, .safetensors, .npz and .onnx.

A recurrent layer's configuration is read off its parameter names and shapes
(``weight_ih_l{k}[_reverse]`` etc.): the gate count from ``weight_hh``'s rows, the
projection from ``weight_hr``, layers and directions from the suffixes.  Only what the
weights cannot tell (RNN nonlinearity, batch_first) comes from options.
"""
from __future__ import annotations

import os
import re

import numpy as np

from .recurrent import GRU, LSTM, RNN
from .serialization import format_of, read_tensors, write_tensors

_KEY = re.compile(r"^(?P<prefix>.*?)(?P<name>weight_ih|weight_hh|bias_ih|bias_hh|weight_hr)_l(?P<layer>\d+)(?P<rev>_reverse)?$")


def infer_config(tensors: dict, prefix: str | None = None) -> dict:
    """The layer kind and constructor arguments of the recurrent weights in ``tensors``."""
    groups = {}
    for key in tensors:
        m = _KEY.match(key)
        if m:
            groups.setdefault(m["prefix"], []).append(m)
    if prefix is None:
        if len(groups) != 1:
            found = sorted(groups) if groups else "none"
            raise ValueError(f"expected the weights of one recurrent layer, found prefixes {found}: pick one with --prefix")
        prefix = next(iter(groups))
    if prefix not in groups:
        raise ValueError(f"no recurrent weights under prefix {prefix!r}; found {sorted(groups)}")
    matches = groups[prefix]
    layers = 1 + max(int(m["layer"]) for m in matches)
    bidirectional = any(m["rev"] for m in matches)
    w_ih = np.asarray(tensors[prefix + "weight_ih_l0"])
    w_hh = np.asarray(tensors[prefix + "weight_hh_l0"])
    has_proj = prefix + "weight_hr_l0" in tensors
    hidden = np.asarray(tensors[prefix + "weight_hr_l0"]).shape[1] if has_proj else w_hh.shape[1]
    gates = w_hh.shape[0] // hidden
    kind = {1: "RNN", 3: "GRU", 4: "LSTM"}.get(gates)
    if kind is None or gates * hidden != w_hh.shape[0]:
        raise ValueError(f"cannot tell the layer kind: weight_hh_l0 has shape {w_hh.shape}")
    cfg = {"kind": kind, "prefix": prefix, "input_size": int(w_ih.shape[1]), "hidden_size": int(hidden),
           "num_layers": layers, "bidirectional": bidirectional, "bias": prefix + "bias_ih_l0" in tensors,
           "dtype": str(w_ih.dtype)}
    if has_proj:
        cfg["proj_size"] = int(w_hh.shape[1])
    return cfg


def build(cfg: dict, nonlinearity: str = "tanh", batch_first: bool = False):
    cls = {"RNN": RNN, "GRU": GRU, "LSTM": LSTM}[cfg["kind"]]
    kw = dict(num_layers=cfg["num_layers"], bias=cfg["bias"], batch_first=batch_first,
              bidirectional=cfg["bidirectional"], dtype=np.dtype(cfg["dtype"]))
    if cfg["kind"] == "RNN":
        kw["nonlinearity"] = nonlinearity
    if cfg.get("proj_size"):
        kw["proj_size"] = cfg["proj_size"]
    return cls(cfg["input_size"], cfg["hidden_size"], **kw)


_EXTENSIONS = (".pt", ".pth", ".safetensors", ".npz", ".onnx")


def convert(src, dst, *, prefix=None, nonlinearity="tanh", batch_first=False, log=print) -> dict:
    """Convert ``src`` to ``dst`` (formats from the extensions); returns the configuration."""
    for role, path in (("source", src), ("destination", dst)):
        ext = os.path.splitext(os.fspath(path))[1].lower()
        if ext not in _EXTENSIONS:
            raise ValueError(f"convert: the {role} {os.fspath(path)!r} has an unknown extension {ext or '(none)'!r}; "
                             f"known: {', '.join(_EXTENSIONS)}")
    src_fmt = "onnx" if os.fspath(src).lower().endswith(".onnx") else format_of(src)
    dst_fmt = "onnx" if os.fspath(dst).lower().endswith(".onnx") else format_of(dst)
    if src_fmt == "onnx":
        from .onnx import import_onnx

        module = import_onnx(os.fspath(src))
        tensors = dict(module.state_dict())
    else:
        tensors = read_tensors(src)
    log(f"read {src} ({src_fmt}): {len(tensors)} arrays")
    for k, v in tensors.items():
        log(f"  {k:32s} {str(tuple(np.shape(v))):14s} {np.asarray(v).dtype}")
    cfg = infer_config(tensors, prefix)
    desc = ", ".join(f"{k}={v}" for k, v in cfg.items() if k not in ("kind", "prefix"))
    log(f"inferred: {cfg['kind']}({desc})" + (f" under prefix {cfg['prefix']!r}" if cfg["prefix"] else ""))
    if dst_fmt == "onnx":
        from .onnx import export

        module = build(cfg, nonlinearity, batch_first)
        module.load_state_dict({k[len(cfg["prefix"]):]: v for k, v in tensors.items() if k.startswith(cfg["prefix"])
                                and _KEY.match(k)})
        export(module, dst)
    elif dst_fmt == "torch":
        raise ValueError("writing .pt needs PyTorch; write .safetensors (PyTorch reads it with safetensors.torch.load_file)")
    else:
        write_tensors(dst, tensors)
    log(f"wrote {dst} ({dst_fmt})")
    return cfg

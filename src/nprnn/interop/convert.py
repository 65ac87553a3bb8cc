"""``nprnn convert``: weights between .pt, .safetensors, .npz and .onnx.

A recurrent layer's configuration is read off its parameter names and shapes
(``weight_ih_l{k}[_reverse]`` etc.): the gate count from ``weight_hh``'s rows, the
projection from ``weight_hr``, layers and directions from the suffixes.  Only what the
weights cannot tell (RNN nonlinearity, batch_first) comes from options.

Between tensor formats every array is written.  To ``.onnx`` a whole state dict becomes a
model (:func:`model_from_state_dict`): its modules in key order, each recurrent prefix a
layer, ``<name>.weight`` (+ ``.bias``) a Linear (an Embedding when it comes first and has
no bias, named "emb..."), applied to every step unless ``last_step`` puts a LastStep before the first
Linear after a recurrent layer.  What cannot be placed so — other keys, widths that do
not chain, two Linears in a row (an activation between them cannot be read off weights)
— is refused, naming the keys.
"""
from __future__ import annotations

import os
import re
from typing import Any, Callable, Mapping, Optional, Union

import numpy as np

from ..nn.layers import Embedding, Linear
from ..nn.module import Module
from ..nn.recurrent import GRU, LSTM, RNN, LayerNormGRU, LayerNormLSTM, RNNBase
from .serialization import format_of, read_tensors, write_tensors

_KEY = re.compile(r"^(?P<prefix>.*?)(?P<name>weight_ih|weight_hh|bias_ih|bias_hh|weight_hr"
                  r"|ln_ih_weight|ln_ih_bias|ln_hh_weight|ln_hh_bias|ln_c_weight|ln_c_bias)"
                  r"_l(?P<layer>\d+)(?P<rev>_reverse)?$")


def infer_config(tensors: Mapping[str, Any], prefix: str | None = None) -> dict[str, Any]:
    """The layer kind and constructor arguments of the recurrent weights in ``tensors``."""
    groups: dict[str, Any] = {}
    for key in tensors:
        m = _KEY.match(key)
        if m:
            groups.setdefault(m["prefix"], []).append(m)
    if prefix is None:
        if len(groups) != 1:
            found = sorted(groups) if groups else "none"
            raise ValueError(f"expected the weights of one recurrent layer, found prefixes {found}: pick one with "
                             "--prefix")
        prefix = next(iter(groups))
    if prefix not in groups:
        raise ValueError(f"no recurrent weights under prefix {prefix!r}; found {sorted(groups)}")
    matches = groups[prefix]
    absent = [prefix + n for n in ("weight_ih_l0", "weight_hh_l0") if prefix + n not in tensors]
    if absent:
        raise ValueError(f"the recurrent layer under prefix {prefix!r} has no {', '.join(absent)}")
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
    normed = prefix + "ln_ih_weight_l0" in tensors  # the layer norms' gains: LayerNormLSTM / LayerNormGRU
    if normed and kind == "RNN":
        raise ValueError(f"cannot tell the layer kind: layer norms beside a weight_hh_l0 of shape {w_hh.shape}")
    cfg = {"kind": "LayerNorm" + kind if normed else kind, "prefix": prefix, "input_size": int(w_ih.shape[1]),
           "hidden_size": int(hidden), "num_layers": layers, "bidirectional": bidirectional,
           "bias": prefix + "bias_ih_l0" in tensors, "dtype": str(w_ih.dtype)}
    if normed:
        del cfg["bias"]
    if has_proj:
        cfg["proj_size"] = int(w_hh.shape[1])
    return cfg


def build(cfg: Mapping[str, Any], nonlinearity: str = "tanh", batch_first: bool = False) -> RNNBase:
    cls = {"RNN": RNN, "GRU": GRU, "LSTM": LSTM, "LayerNormLSTM": LayerNormLSTM, "LayerNormGRU": LayerNormGRU}[
        cfg["kind"]]
    kw = dict(num_layers=cfg["num_layers"], batch_first=batch_first, bidirectional=cfg["bidirectional"],
              dtype=np.dtype(cfg["dtype"]))
    if "bias" in cfg:
        kw["bias"] = cfg["bias"]
    if cfg["kind"] == "RNN":
        kw["nonlinearity"] = nonlinearity
    if cfg.get("proj_size"):
        kw["proj_size"] = cfg["proj_size"]
    layer: RNNBase = cls(cfg["input_size"], cfg["hidden_size"], **kw)
    return layer


def _groups(tensors: Mapping[str, Any]) -> list[tuple[tuple[str, str], list[str]]]:
    """Keys in order, grouped by module: ("recurrent", prefix) or ("linear", prefix, leaves)."""
    groups: list[tuple[tuple[str, str], list[str]]] = []
    where: dict[tuple[str, str], int] = {}
    for key in tensors:
        m = _KEY.match(key)
        if m:
            gid = ("recurrent", m["prefix"])
        else:
            prefix, _, leaf = key.rpartition(".")
            gid = ("module", prefix)
        if gid not in where:
            where[gid] = len(groups)
            groups.append((gid, []))
        groups[where[gid]][1].append(key)
    return groups


def model_from_state_dict(tensors: Mapping[str, Any], *, last_step: bool = False, nonlinearity: str = "tanh",
                          batch_first: bool = False) -> Module:
    """The nprnn model a whole state dict describes (see the module docstring): a bare
    layer for one recurrent layer's weights, else a ``Sequential`` named as the keys are."""
    from collections import OrderedDict

    from ..nn.sequential import LastStep, Sequential

    groups = _groups(tensors)
    if len(groups) == 1 and groups[0][0][0] == "recurrent":
        return _layer(tensors, groups[0][0][1], nonlinearity, batch_first)
    children: OrderedDict[str, Any] = OrderedDict()
    width, seen_rnn, previous, unplaced = None, False, None, []
    for (kind, prefix), keys in groups:
        if kind == "recurrent":
            layer = _layer(tensors, prefix, nonlinearity, batch_first)
            name, takes = prefix.rstrip("."), layer.input_size
            module: Module = layer
            out_width, seen_rnn = layer.num_directions * (layer.proj_size or layer.hidden_size), True
        else:
            leaves = {k.rpartition(".")[2]: np.asarray(tensors[k]) for k in keys}
            W, b = leaves.get("weight"), leaves.get("bias")
            if set(leaves) - {"weight",
                              "bias"} or W is None or W.ndim != 2 or (b is not None and b.shape != W.shape[:1]):
                unplaced += keys
                continue
            name = prefix
            if not seen_rnn:  # before the recurrent layer only an embedding table is read off for sure
                if previous is not None or b is not None or "emb" not in prefix.lower():
                    raise ValueError(f"convert: {', '.join(keys)} come before the recurrent layer; only an embedding "
                                     "table (a name with 'emb', no bias) can be placed there")
                module = Embedding(W.shape[0], W.shape[1], dtype=W.dtype)
                takes, out_width = None, W.shape[1]
            else:
                if isinstance(previous, Linear):
                    raise ValueError(f"convert: {', '.join(keys)} follow another Linear's weights; the activation "
                                     "between them (if any) cannot be read off a state dict: build the model as an "
                                     "nprnn.Sequential and use nprnn.onnx.export")
                module = Linear(W.shape[1], W.shape[0], bias=b is not None, dtype=W.dtype)
                takes, out_width = W.shape[1], W.shape[0]
                if seen_rnn and last_step and not any(isinstance(c, LastStep) for c in children.values()):
                    children["last_step"] = LastStep(batch_first=batch_first)
            module.load_state_dict({k.rpartition(".")[2]: tensors[k] for k in keys})
        if width is not None and takes is not None and takes != width:
            raise ValueError(f"convert: {', '.join(keys)} take inputs of width {takes}, but what comes before them "
                             f"gives {width}")
        width = out_width
        if not name or "." in name:
            raise ValueError(f"convert: cannot place {', '.join(keys)} as one module of a model (nested names)")
        children[name], previous = module, module
    if unplaced:
        raise ValueError(f"convert: cannot place {', '.join(unplaced)} in a model of recurrent layers, Linear and "
                         "Embedding; convert to .safetensors or .npz to keep every array")
    if not seen_rnn:
        raise ValueError("convert: no recurrent layer's weights (weight_ih_l0, ...) found")
    return Sequential(children)


def _layer_keys(tensors: Mapping[str, Any], prefix: str) -> list[str]:
    """The keys of the recurrent layer whose parameter names follow ``prefix`` directly."""
    return [k for k in tensors if (m := _KEY.match(k)) and m["prefix"] == prefix]


def _layer(tensors: Mapping[str, Any], prefix: str, nonlinearity: str, batch_first: bool) -> RNNBase:
    cfg = infer_config(tensors, prefix)
    module = build(cfg, nonlinearity, batch_first)
    module.load_state_dict({k[len(prefix):]: tensors[k] for k in _layer_keys(tensors, prefix)})
    return module


_EXTENSIONS = (".pt", ".pth", ".safetensors", ".npz", ".onnx")


def convert(src: Union[str, os.PathLike[str]], dst: Union[str, os.PathLike[str]], *, prefix: Optional[str] = None,
            nonlinearity: str = "tanh", batch_first: bool = False, last_step: bool = False,
            log: Callable[[str], Any] = print) -> Optional[dict[str, Any]]:
    """Convert ``src`` to ``dst`` (formats from the extensions); returns the configuration
    of the recurrent layer (``prefix``'s, or the first; None when there is none)."""
    for role, path in (("source", src), ("destination", dst)):
        ext = os.path.splitext(os.fspath(path))[1].lower()
        if ext not in _EXTENSIONS:
            raise ValueError(f"convert: the {role} {os.fspath(path)!r} has an unknown extension {ext or '(none)'!r}; "
                             f"known: {', '.join(_EXTENSIONS)}")
    if os.path.exists(dst) and os.path.exists(src) and os.path.samefile(src, dst):
        raise ValueError(f"convert: the destination {os.fspath(dst)!r} is the source file; a conversion "
                         "keeps only the arrays (a checkpoint's optimizer state and header would be lost), "
                         "so nothing is written: give another path")
    src_fmt = "onnx" if os.fspath(src).lower().endswith(".onnx") else format_of(src)
    dst_fmt = "onnx" if os.fspath(dst).lower().endswith(".onnx") else format_of(dst)
    if dst_fmt == "torch":  # refused before anything is read, whether PyTorch is installed or not
        raise ValueError(f"convert: nprnn does not write .pt files (PyTorch's pickle format), so nothing is written "
                         f"to {os.fspath(dst)!r}; write .safetensors, which PyTorch reads with "
                         "safetensors.torch.load_file")
    quantized = None
    if src_fmt == "onnx":
        from .onnx import import_onnx

        module = import_onnx(os.fspath(src))
        left: list[str] = getattr(module, "unplaced_constants", lambda: [])()
        if left:
            raise ValueError(f"convert: {os.fspath(src)} holds weights that are no layer's "
                             f"(constants {', '.join(left)} "
                             "feed its other nodes); they would be lost, so nothing is written")
        tensors = dict(module.state_dict())
    else:
        tensors = read_tensors(src)
        quantized = next((k for k in tensors if k.endswith(("_int8", "_bf16"))), None)
    if quantized is not None and dst_fmt == "onnx":
        raise ValueError(f"convert: {os.fspath(src)} holds quantized weights ({quantized}, from nprnn.quantize); "
                         "ONNX export of quantized weights is not supported, so nothing is written: convert the "
                         "float model, or write .safetensors / .npz (the arrays as they are)")
    log(f"read {src} ({src_fmt}): {len(tensors)} arrays")
    for k, v in tensors.items():
        log(f"  {k:32s} {str(tuple(np.shape(v))):14s} {np.asarray(v).dtype}")
    cfg = None
    if prefix is not None or _first_prefix(tensors) is not None or dst_fmt == "onnx":
        cfg = infer_config(tensors, prefix if prefix is not None else _first_prefix(tensors))
        desc = ", ".join(f"{k}={v}" for k, v in cfg.items() if k not in ("kind", "prefix"))
        log(f"inferred: {cfg['kind']}({desc})" + (f" under prefix {cfg['prefix']!r}" if cfg["prefix"] else ""))
    else:
        log("no recurrent layer's weights (weight_ih_l0, ...): the arrays are copied as they are")
    if dst_fmt == "onnx":
        from .onnx import export

        if prefix is not None:  # the one layer asked for; say what stays behind
            assert cfg is not None  # (inferred above whenever a prefix is given)
            module = _layer(tensors, cfg["prefix"], nonlinearity, batch_first)
            taken = set(_layer_keys(tensors, cfg["prefix"]))
            left = [k for k in tensors if k not in taken]
            if left:
                log(f"left out (not under --prefix {prefix!r}): {', '.join(left)}")
        else:
            module = model_from_state_dict(tensors, last_step=last_step, nonlinearity=nonlinearity,
                                           batch_first=batch_first)
            if type(module).__name__ == "Sequential":
                log("model: " + " -> ".join(f"{k}: {type(m).__name__}" for k, m in module._modules.items()))
        export(module, dst)
    else:
        write_tensors(dst, tensors)
    log(f"wrote {dst} ({dst_fmt})")
    return cfg


def _first_prefix(tensors: Mapping[str, Any]) -> Optional[str]:
    """The prefix of the first recurrent layer's keys (None when there is none: infer_config says so)."""
    for key in tensors:
        m = _KEY.match(key)
        if m:
            return m["prefix"]
    return None

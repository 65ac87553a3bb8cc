"""The import paths of modules that moved into subpackages keep working.

``import nprnn.serialization`` gives :mod:`nprnn.interop.serialization` itself, the same
module object (so there is one copy of each class, and old pickles, which name the old
paths, load); the same holds for submodules (``nprnn.onnx.graph``).
"""
from __future__ import annotations

import importlib
import importlib.abc
import importlib.machinery
import importlib.util
import sys
from importlib.machinery import ModuleSpec
from types import ModuleType
from typing import Any, Optional

MOVED = {
    "module": "nn.module", "recurrent": "nn.recurrent", "layout": "nn.layout", "cells": "nn.cells",
    "layers": "nn.layers", "activations": "nn.activations", "sequential": "nn.sequential", "losses": "nn.losses",
    "optim": "nn.optim", "packing": "nn.packing", "stream": "nn.stream",
    "threads": "parallel.threads", "scale": "parallel.scale",
    "serialization": "interop.serialization", "torchfile": "interop.torchfile", "convert": "interop.convert",
    "onnx": "interop.onnx",
    "explain": "teach.explain", "diagram": "teach.diagram", "demo": "teach.demo", "charlm": "teach.charlm",
}


def new_name(fullname: str) -> Optional[str]:
    """Where ``nprnn.<old>[.<sub>]`` lives now, or None if it did not move."""
    parts = fullname.split(".")
    if len(parts) < 2 or parts[0] != "nprnn" or parts[1] not in MOVED:
        return None
    return ".".join(["nprnn", MOVED[parts[1]], *parts[2:]])


class _Alias(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    """A finder placed first on ``sys.meta_path``: an old name is loaded as the module at
    its new name (before the path finder could load a second copy from the package's
    folder)."""

    def __init__(self) -> None:
        self._specs: dict[str, Any] = {}

    def find_spec(self, fullname: str, path: Any = None, target: Any = None) -> Optional[ModuleSpec]:
        if new_name(fullname) is None:
            return None
        return importlib.util.spec_from_loader(fullname, self)

    def create_module(self, spec: ModuleSpec) -> ModuleType:
        module = importlib.import_module(str(new_name(spec.name)))
        self._specs[spec.name] = module.__spec__
        return module

    def exec_module(self, module: ModuleType) -> None:
        # importlib set the alias's spec on the module; give it back its own
        alias = module.__spec__
        if alias is not None:
            module.__spec__ = self._specs.pop(alias.name, alias)


if not any(isinstance(f, _Alias) for f in sys.meta_path):
    sys.meta_path.insert(0, _Alias())

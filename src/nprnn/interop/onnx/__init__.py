"""ONNX export and import of recurrent layers and whole models.

- :func:`export` / :func:`to_onnx` (:mod:`.export`): a recurrent layer (``proj_size`` too,
  as a ``Scan``) or a ``Sequential`` as standard ONNX operators, optional initial states.
- :func:`import_onnx` (:mod:`.graph`): any graph of the supported operators as an
  :class:`ONNXGraph`, stacked recurrent nodes folded into one layer, and a graph that is
  exactly one recurrent layer returned as that layer.
- :func:`module_from_node` / :func:`run_node` (:mod:`.nodes`): one recurrent node, with
  the options ONNX has and PyTorch lacks (:class:`ONNXRecurrent`).

``onnx`` is an optional dependency (``pip install onnx onnxruntime``).
"""
from .export import export, to_onnx
from .graph import ONNXGraph, import_onnx
from .nodes import ONNXRecurrent, module_from_node, run_node

__all__ = ["export", "to_onnx", "import_onnx", "ONNXGraph", "ONNXRecurrent", "module_from_node", "run_node"]

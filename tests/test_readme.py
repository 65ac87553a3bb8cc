"""The README's Python blocks run as pasted: each alone in a fresh namespace and folder, and
all of them in order (files they write go to a temporary folder)."""
import os
import re
import warnings

import pytest

README = os.path.join(os.path.dirname(__file__), os.pardir, "README.md")
with open(README, encoding="utf-8") as _f:
    BLOCKS = re.findall(r"```python\n(.*?)```", _f.read(), re.S)


def _skip_missing(block):
    """A block that needs an optional package (PyTorch, onnx, safetensors) runs where it is
    installed: always in CI."""
    if "import torch" in block:
        pytest.importorskip("torch")
    if "export(" in block or "import_onnx" in block:
        pytest.importorskip("onnx")
    if "distributed" in block:
        pytest.importorskip("distributed")
    if "onnxruntime" in block:
        pytest.importorskip("onnxruntime")
    if "torch.onnx.export" in block and "dynamo=False" not in block:
        pytest.importorskip("onnxscript")  # torch's default (dynamo) exporter needs it
    if ".safetensors" in block:
        pytest.importorskip("safetensors")


def test_the_readme_has_blocks():
    assert len(BLOCKS) >= 10


def _run(block, index, namespace):
    """exec one block; torch's ONNX exporter warns about its own internals (a reader sees
    those warnings, they are no error), so a block that calls it runs with warnings ignored."""
    with warnings.catch_warnings():
        if "torch.onnx.export" in block:
            warnings.simplefilter("ignore")
        exec(compile(block, f"README block {index}", "exec"), namespace)


@pytest.mark.parametrize("index", range(len(BLOCKS)))
def test_each_block_runs_alone(index, tmp_path, monkeypatch):
    block = BLOCKS[index]
    _skip_missing(block)
    monkeypatch.chdir(tmp_path)
    _run(block, index, {"__name__": "__main__"})


@pytest.mark.torch
def test_all_blocks_run_in_order(tmp_path, monkeypatch):
    for block in BLOCKS:
        _skip_missing(block)
    monkeypatch.chdir(tmp_path)
    namespace = {"__name__": "__main__"}
    for index, block in enumerate(BLOCKS):
        _run(block, index, namespace)

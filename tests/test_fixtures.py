"""Replay the golden fixtures written by tools/make_fixtures.py (PyTorch's numbers), no PyTorch needed."""
import glob
import json
import os

import numpy as np
import pytest
from reference import compare, run_nprnn

FILES = sorted(glob.glob(os.path.join(os.path.dirname(__file__), "fixtures", "*.npz")))


def test_fixtures_present():
    assert len(FILES) >= 100


@pytest.mark.parametrize("path", FILES, ids=[os.path.basename(f)[:-4] for f in FILES])
def test_fixture(path):
    with np.load(path) as data:
        arrays = {k: data[k] for k in data.files}
    cfg = json.loads(str(arrays.pop("config")))
    want = {k[5:]: v for k, v in arrays.items() if k.startswith("want.")}
    case = {k: v for k, v in arrays.items() if not k.startswith("want.")}
    assert "out" in want or cfg["kind"].endswith("Cell")
    compare(cfg, run_nprnn(cfg, case), want)

"""Write the golden fixtures: PyTorch's outputs and gradients for a grid of configurations.

    python tools/make_fixtures.py        # needs PyTorch; rewrites tests/fixtures/*.npz

Each file holds the configuration (JSON), the parameters, input, initial state, upstream
gradients, and PyTorch's outputs, final states and gradients.  The default test run
(tests/test_fixtures.py) replays them without PyTorch.
"""
import json
import os
import sys

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "tests"))

from reference import make_inputs, run_torch  # noqa: E402

OUT = os.path.join(HERE, "..", "tests", "fixtures")


def grid():
    """A covering grid: every kind and option appears with the others varied around it."""
    base = {"input_size": 3, "hidden_size": 4, "bias": True, "batch": 2, "give_hx": True}
    layer = dict(base, num_layers=1, batch_first=False, bidirectional=False, seq_len=4)
    variants = [
        {}, {"num_layers": 2}, {"num_layers": 3}, {"bidirectional": True}, {"bidirectional": True, "num_layers": 2},
        {"batch_first": True}, {"bias": False}, {"give_hx": False}, {"batch": None},
        {"batch": None, "batch_first": True}, {"batch": 1, "seq_len": 1},
        {"num_layers": 3, "bidirectional": True, "batch_first": True, "give_hx": False},
    ]
    out = []
    for dtype in ("float64", "float32"):
        for kind, extra in (("RNN", {"nonlinearity": "tanh"}), ("RNN", {"nonlinearity": "relu"}), ("LSTM", {}),
                            ("GRU", {})):
            for v in variants:
                out.append(dict(layer, kind=kind, dtype=dtype, **extra, **v))
        for v in ({"proj_size": 2}, {"proj_size": 3, "num_layers": 2, "bidirectional": True},
                  {"proj_size": 1, "batch": None, "bias": False}):
            out.append(dict(layer, kind="LSTM", dtype=dtype, **v))
        for kind, extra in (("RNNCell", {"nonlinearity": "tanh"}), ("RNNCell", {"nonlinearity": "relu"}),
                            ("LSTMCell", {}), ("GRUCell", {})):
            for v in ({}, {"bias": False}, {"give_hx": False}, {"batch": None}):
                out.append(dict(base, kind=kind, dtype=dtype, **extra, **v))
    # variable-length batches: packed input and lengths=, sorted and not, both directions
    packed = dict(layer, batch=4, seq_len=5, lengths=[2, 5, 1, 5], enforce_sorted=False)
    for dtype in ("float64", "float32"):
        for kind in ("RNN", "LSTM", "GRU"):
            for mode in ("packed", "lengths"):
                for v in ({}, {"bidirectional": True, "num_layers": 2, "batch_first": True},
                          {"lengths": [5, 3, 3, 1], "enforce_sorted": True, "give_hx": False},
                          {"batch": 1, "lengths": [5]}):
                    out.append(dict(packed, kind=kind, dtype=dtype, mode=mode, **v))
    for i, cfg in enumerate(out):
        cfg["seed"] = 7000 + i
    return out


def main():
    os.makedirs(OUT, exist_ok=True)
    for old in os.listdir(OUT):
        if old.endswith(".npz"):
            os.remove(os.path.join(OUT, old))
    cfgs = grid()
    for i, cfg in enumerate(cfgs):
        case = make_inputs(cfg)
        want = run_torch(cfg, case)
        arrays = dict(case)
        arrays.update({f"want.{k}": v for k, v in want.items()})
        arrays["config"] = np.array(json.dumps(cfg))
        np.savez_compressed(os.path.join(OUT, f"{i:03d}_{cfg['kind']}_{cfg['dtype']}.npz"), **arrays)
    print(f"wrote {len(cfgs)} fixtures to {os.path.normpath(OUT)}")


if __name__ == "__main__":
    main()

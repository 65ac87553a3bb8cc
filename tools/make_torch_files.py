"""Write PyTorch-saved state-dict files for the tests that read them without PyTorch.

    python tools/make_torch_files.py      # needs PyTorch; rewrites tests/fixtures/torch/

For each ``NAME.pt`` the expected arrays go to ``NAME.expected.npz`` (half precision widened
to float32, as nprnn reads it).
"""
import os

import numpy as np
import torch

OUT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tests", "fixtures", "torch")


def write(name, obj, expected=None):
    torch.save(obj, os.path.join(OUT, f"{name}.pt"))
    if expected is None:
        expected = {k: (v.float() if v.dtype in (torch.float16, torch.bfloat16) else v).numpy() for k, v in obj.items()}
    np.savez(os.path.join(OUT, f"{name}.expected.npz"), **expected)


def main():
    os.makedirs(OUT, exist_ok=True)
    torch.manual_seed(0)
    lstm = torch.nn.LSTM(3, 4, num_layers=2, bidirectional=True, proj_size=2)
    write("lstm_bidirectional_proj", lstm.state_dict())
    gru64 = torch.nn.GRU(5, 3, batch_first=True).double()
    write("gru_float64", gru64.state_dict())
    base = torch.arange(24, dtype=torch.float32).reshape(4, 6)
    write("views", {"base": base, "rows": base[1:3], "cols": base[:, 2:5], "transposed": base.t(),
                    "strided": base[::2, ::3], "shared": base})
    write("half", {"f16": torch.randn(3, 4).half(), "bf16": torch.randn(5).bfloat16(), "f32": torch.randn(2)})
    torch.save(lstm, os.path.join(OUT, "whole_model.pt"))  # refused: a pickled nn.Module
    print(f"wrote {len(os.listdir(OUT))} files to {os.path.normpath(OUT)}")


if __name__ == "__main__":
    main()

"""nprnn against PyTorch: LSTM/GRU inference and one training step (forward + backward).

    env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE python benchmarks/bench_core.py [--threads 2]

Prints the median time of each and the ratio PyTorch time / nprnn time (> 1: nprnn is faster).
"""
import os
import sys

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from common import paired_times, setup  # noqa: E402

CASES = [
    # name, N, L, H_in, H, layers
    ("N=32 L=100 Hin=64 H=128 2 layers", 32, 100, 64, 128, 2),
    ("N=1  L=100 Hin=32 H=64  1 layer ", 1, 100, 32, 64, 1),
]


def main():
    args, torch = setup(lambda ap: ap.add_argument("--kinds", default="LSTM,GRU"), min_time=1.0)
    import nprnn

    print(f"{'case':40s} {'mode':10s} {'torch ms':>10s} {'nprnn ms':>10s} {'torch/nprnn':>12s}")
    rng = np.random.default_rng(0)
    for kind in args.kinds.split(","):
        for name, N, L, H_in, H, layers in CASES:
            ours = getattr(nprnn, kind)(H_in, H, num_layers=layers, seed=0)
            theirs = getattr(torch.nn, kind)(H_in, H, num_layers=layers)
            theirs.load_state_dict({k: torch.from_numpy(v) for k, v in ours.state_dict().items()})
            x = rng.standard_normal((L, N, H_in)).astype(np.float32)
            xt = torch.from_numpy(x)
            g = np.ones((L, N, H), np.float32)
            gt = torch.from_numpy(g)

            def np_infer():
                ours.eval()
                ours(x)

            def torch_infer():
                with torch.no_grad():
                    theirs(xt)

            def np_train():
                ours.train()
                out, _ = ours(x)
                ours.backward(g, input_grad=False)  # (x requires no gradient, as on the PyTorch side)

            def torch_train():
                theirs.zero_grad(set_to_none=False)
                out, _ = theirs(xt.requires_grad_(False))
                out.backward(gt)

            for mode, a, b in (("inference", torch_infer, np_infer), ("train step", torch_train, np_train)):
                tt, tn = paired_times(a, b, args.min_time)
                print(f"{kind + ' ' + name:40s} {mode:10s} {tt * 1e3:10.2f} {tn * 1e3:10.2f} {tt / tn:12.2f}",
                      flush=True)


if __name__ == "__main__":
    main()

"""When does a second thread pay?  nprnn alone, one thread against two.

    env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE python benchmarks/bench_threads.py [--min-time 1] [--train]
        [--tier native|numpy]

The compiled tier splits the batch into row ranges that run their whole loops side by
side; the NumPy tier runs two scans at once (directions, or layers as a pipeline).  The
thresholds are lowered so every case can use two threads; the printed speed-up (time with
one thread / time with two) is what ``nprnn.config.settings.min_split_work`` (multiply-adds
per call, compiled tier) and ``min_step_work`` / ``min_train_step_work`` (gate values per
step, NumPy tier) are chosen from.  Two-layer LSTM and GRU, one-directional and bidirectional,
batches of 100 steps over a grid of batch and hidden sizes; ``--train`` times a training
step (forward and backward) instead of inference.
"""
import argparse
import os
import sys

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from common import paired_times, threads_report  # noqa: E402


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--min-time", type=float, default=1.0)
    ap.add_argument("--train", action="store_true", help="time forward + backward in training mode")
    ap.add_argument("--tier", choices=("native", "numpy"), default="native")
    args = ap.parse_args()
    import nprnn

    nprnn.set_backend(args.tier)
    s = nprnn.config.settings
    s.min_step_work = s.min_train_step_work = s.min_split_work = 0
    print(f"nprnn {nprnn.backend()}; numpy {np.__version__}; " + "; ".join(threads_report()))
    print(f"{'case':34s} {'madds/call':>11s} {'1 thread ms':>12s} {'2 threads ms':>13s} {'speed-up':>9s}")
    rng = np.random.default_rng(0)
    for kind in ("LSTM", "GRU"):
        for bidirectional in (False, True):
            for N, H in ((2, 32), (8, 32), (32, 32), (8, 64), (16, 64), (32, 64), (8, 128), (32, 128), (64, 256)):
                m = getattr(nprnn, kind)(64, H, num_layers=2, bidirectional=bidirectional, seed=0)
                m.train(args.train)
                x = rng.standard_normal((100, N, 64)).astype(np.float32)
                g = np.ones((100, N, H * (2 if bidirectional else 1)), np.float32)

                def step():
                    m(x)
                    if args.train:
                        m.backward(g)

                def run(n):
                    def f():
                        nprnn.set_num_threads(n)
                        step()
                    return f

                t1, t2 = paired_times(run(1), run(2), args.min_time)
                name = f"{kind} {'bidirectional' if bidirectional else 'one-way'} N={N} H={H}"
                G = 4 if kind == "LSTM" else 3
                madds = 100 * N * G * H * (64 + H)  # the first layer-direction's call
                print(f"{name:34s} {madds:11d} {t1 * 1e3:12.2f} {t2 * 1e3:13.2f} {t1 / t2:9.2f}", flush=True)


if __name__ == "__main__":
    main()

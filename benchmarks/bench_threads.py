"""When do two scans side by side pay?  nprnn alone, one thread against two threads and
against a helper process (:mod:`nprnn.helper`).

    env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE python benchmarks/bench_threads.py [--min-time 1] [--train]

Two-layer LSTM and GRU, one-directional (layers pipelined) and bidirectional (directions
side by side), padded batches of 100 steps, over a grid of batch and hidden sizes;
inference, or with ``--train`` a training step (forward and backward).  The
threshold is lowered so every case can go side by side; the printed speed-up (time with
one thread / time with two threads, and the same with the helper) is what
``nprnn.threads.MIN_STEP_WORK`` and ``nprnn.helper.MIN_STEP_WORK`` are chosen from.
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
    args = ap.parse_args()
    import nprnn
    from nprnn import helper, threads

    threads.MIN_STEP_WORK = helper.MIN_STEP_WORK = 0
    print(f"numpy {np.__version__}; " + "; ".join(threads_report()))
    helper.start(1)
    print(f"{'case':34s} {'gates/step':>10s} {'1 thread ms':>12s} {'2 threads ms':>13s} {'speed-up':>9s} "
          f"{'helper ms':>10s} {'speed-up':>9s}")
    rng = np.random.default_rng(0)
    for kind in ("LSTM", "GRU"):
        for bidirectional in (False, True):
            for N, H in ((8, 32), (32, 32), (8, 64), (16, 64), (32, 64), (8, 128), (32, 128), (64, 256)):
                m = getattr(nprnn, kind)(64, H, num_layers=2, bidirectional=bidirectional, seed=0)
                m.train(args.train)
                x = rng.standard_normal((100, N, 64)).astype(np.float32)
                g = np.ones((100, N, H * (2 if bidirectional else 1)), np.float32)

                def step():
                    m(x)
                    if args.train:
                        m.backward(g)

                def one():
                    nprnn.set_num_threads(1)
                    step()

                def two(process):
                    nprnn.set_num_threads(2)
                    helper.set_helper_process(process)
                    if process:
                        helper.start(1)
                    step()

                t1, t2 = paired_times(one, lambda: two(False), args.min_time)
                t1p, tp = paired_times(one, lambda: two(True), args.min_time)
                name = f"{kind} {'bidirectional' if bidirectional else 'one-way'} N={N} H={H}"
                gates = N * H * (4 if kind == "LSTM" else 3)
                print(f"{name:34s} {gates:10d} {t1 * 1e3:12.2f} {t2 * 1e3:13.2f} {t1 / t2:9.2f} "
                      f"{tp * 1e3:10.2f} {t1p / tp:9.2f}", flush=True)


if __name__ == "__main__":
    main()

"""Timing helpers shared by the benchmark scripts: medians of repeated runs, same process."""
import os
import statistics
import time


def median_time(fn, min_time=1.0, min_reps=5, max_reps=200, warmup=2):
    """Median wall time of ``fn()`` in seconds over repeated runs."""
    for _ in range(warmup):
        fn()
    times = []
    start = time.perf_counter()
    while len(times) < max_reps and (len(times) < min_reps or time.perf_counter() - start < min_time):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def paired_times(fa, fb, min_time=2.0, block=5, min_blocks=3, max_blocks=50, settle=0.3):
    """Medians of ``fa()`` and ``fb()`` timed in alternating blocks of ``block`` calls, so
    both see the same drift in machine load.  Between blocks the process sleeps ``settle``
    seconds and the first call of each block is not counted: thread pools spin for a while
    after their last job (OpenBLAS's for about 0.1 s), and a spinning pool of one library
    would otherwise slow the other down."""
    ta, tb = [], []
    start = time.perf_counter()
    blocks = 0
    while blocks < max_blocks and (blocks < min_blocks or time.perf_counter() - start < min_time):
        for f, acc in ((fa, ta), (fb, tb)):
            time.sleep(settle)
            f()
            for _ in range(block):
                t0 = time.perf_counter()
                f()
                acc.append(time.perf_counter() - t0)
        blocks += 1
    return statistics.median(ta), statistics.median(tb)


def threads_report():
    """Which BLAS NumPy runs and how many threads each library uses."""
    lines = []
    try:
        from threadpoolctl import threadpool_info

        for info in threadpool_info():
            lines.append(f"{info.get('internal_api')} {info.get('version')} threads={info.get('num_threads')} "
                         f"arch={info.get('architecture')}")
    except ImportError:
        lines.append("(install threadpoolctl to see the BLAS kernel)")
    for var in ("OPENBLAS_CORETYPE", "OPENBLAS_L2_SIZE", "OMP_NUM_THREADS"):
        if var in os.environ:
            lines.append(f"{var}={os.environ[var]}")
    return lines


def setup(add_arguments=None, min_time=1.0):
    """Parse ``--threads``/``--min-time`` (and the script's own options), limit NumPy's
    BLAS and PyTorch to the same number of threads, print what runs; returns (args, torch)."""
    import argparse
    import warnings

    import numpy as np

    ap = argparse.ArgumentParser()
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--min-time", type=float, default=min_time)
    if add_arguments:
        add_arguments(ap)
    args = ap.parse_args()
    try:
        from threadpoolctl import threadpool_limits

        threadpool_limits(args.threads)
    except ImportError:
        pass
    import torch

    import nprnn

    torch.set_num_threads(args.threads)
    if args.threads < nprnn.get_num_threads():
        nprnn.set_num_threads(args.threads)
    warnings.filterwarnings("ignore")
    print(f"torch {torch.__version__} threads={torch.get_num_threads()}; numpy {np.__version__}; "
          + "; ".join(threads_report()) + f"; nprnn threads={nprnn.get_num_threads()}")
    return args, torch


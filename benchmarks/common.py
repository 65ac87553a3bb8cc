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

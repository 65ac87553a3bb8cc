"""The machine's limits a benchmark row is measured against, and whether the machine is
quiet enough to measure on.

* :func:`bandwidths`: GB/s of a read by ``threads`` threads (each its own buffer, with
  vector loads, nprnn's compiled probe ``_native.read_seconds``) of a buffer sized to fit
  the threads' L2 caches, one sized for L3 and one for DRAM.
* :func:`step_limit`: for a one-sequence (N=1) row, the bytes of weights a time step reads
  over the bandwidth of the levels they fit in (what a core's L2 holds from L2, the rest
  from L3 or DRAM): no matrix-vector step can be faster.
* :func:`busy`: the share of the machine other processes used over a short look; figures
  taken beside other work moved by up to 2x.
"""
from __future__ import annotations

import os
import threading
import time

import numpy as np


def _cache_bytes(level: int, default: int) -> int:
    """Bytes of the level-``level`` data cache of CPU 0 (Linux sysfs), else ``default``."""
    root = "/sys/devices/system/cpu/cpu0/cache"
    try:
        for entry in sorted(os.listdir(root)):
            path = os.path.join(root, entry)
            with open(os.path.join(path, "level")) as f:
                if int(f.read()) != level:
                    continue
            with open(os.path.join(path, "type")) as f:
                if f.read().strip() == "Instruction":
                    continue
            with open(os.path.join(path, "size")) as f:
                size = f.read().strip()
            units = {"K": 1 << 10, "M": 1 << 20, "G": 1 << 30}
            return int(size[:-1]) * units[size[-1]] if size[-1] in units else int(size)
    except (OSError, ValueError):
        pass
    return default


def caches() -> dict:
    """L2 bytes per core and L3 bytes (shared)."""
    return {"l2": _cache_bytes(2, 1 << 20), "l3": _cache_bytes(3, 32 << 20)}


def read_rate(total_bytes: int, threads: int, seconds: float = 0.3) -> float:
    """GB/s of ``threads`` threads each reading its share of ``total_bytes`` over and over."""
    from nprnn.functional.native import aligned_empty, compiled

    share = max(1024, total_bytes // threads // 4 // 64 * 64)
    bufs = [aligned_empty(share, np.float32) for _ in range(threads)]
    for buf in bufs:
        buf.fill(1)
    probe = compiled.read_seconds(bufs[0], 1)
    reps = max(1, int(seconds / max(probe, 1e-7)))
    took = [0.0] * threads

    def run(i):
        compiled.read_seconds(bufs[i], 1)  # warm: the buffer in the level it fits
        took[i] = compiled.read_seconds(bufs[i], reps)

    workers = [threading.Thread(target=run, args=(i,)) for i in range(threads)]
    for w in workers:
        w.start()
    for w in workers:
        w.join()
    return share * 4 * threads * reps / max(took) / 1e9


def bandwidths(threads: int) -> dict:
    """GB/s of a ``threads``-thread read from L2, L3 and DRAM, with the buffer sizes."""
    c = caches()
    sizes = {"L2": int(0.6 * c["l2"]) * threads, "L3": min(max(8 * c["l2"] * threads, c["l3"] // 8), 64 << 20),
             "DRAM": 1 << 30}
    return {level: {"bytes": size, "GBps": read_rate(size, threads)} for level, size in sizes.items()}


def memory_level(nbytes: int) -> str:
    """Where ``nbytes`` streamed once come from, as the CPU reports its caches: L2 (both
    cores' share fits), L3 (half of it), else DRAM.  (A virtual machine may report an L3
    larger than it holds: the read rate measured at the size is the figure to trust.)"""
    c = caches()
    return "L2" if nbytes <= 0.9 * 2 * c["l2"] else "L3" if nbytes <= 0.5 * c["l3"] else "DRAM"


def step_limit(weight_bytes: int, threads: int, rates: dict) -> dict:
    """The fastest a matrix-vector step reading ``weight_bytes`` of weights can be, each
    thread reading its share: from L2 as much of the share as 90% of a core's L2 holds (a
    loop can keep that much there from step to step), the rest from L3 (or DRAM past half
    the L3), each at its measured rate.  ``level`` names where most of the bytes come from."""
    c = caches()
    share = weight_bytes / threads
    in_l2 = min(share, 0.9 * c["l2"]) * threads
    rest = weight_bytes - in_l2
    far = "L3" if weight_bytes <= 0.5 * c["l3"] else "DRAM"
    seconds = in_l2 / (rates["L2"]["GBps"] * 1e9) + rest / (rates[far]["GBps"] * 1e9)
    level = "L2" if rest == 0 else far if rest > in_l2 else f"L2+{far}"
    return {"level": level, "bytes": weight_bytes, "seconds": seconds}


def busy(seconds: float = 0.5) -> float:
    """The share of all CPUs that was not idle over ``seconds`` (this process idles while
    it looks), from /proc/stat; the 1-minute load average over the CPUs elsewhere."""
    try:
        def snap():
            with open("/proc/stat") as f:
                v = [int(x) for x in f.readline().split()[1:]]
            return sum(v), v[3] + (v[4] if len(v) > 4 else 0)

        t0, i0 = snap()
        time.sleep(seconds)
        t1, i1 = snap()
        return 1.0 - (i1 - i0) / max(1, t1 - t0)
    except OSError:
        return os.getloadavg()[0] / (os.cpu_count() or 1)


def wait_until_quiet(limit: float, patience: float) -> float:
    """Look until the machine is below ``limit`` busy, for up to ``patience`` seconds;
    returns the last share seen."""
    deadline = time.monotonic() + patience
    share = busy()
    while share > limit and time.monotonic() < deadline:
        share = busy()
    return share

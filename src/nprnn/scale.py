"""Scoring more sequences than one process handles: a process pool (or any executor with
``map``, such as a Dask client's) runs a model over batches in worker processes.

Each worker should use one nprnn thread and one BLAS thread, so that workers x threads
never exceed the cores: pass :func:`init_worker` as the pool's initializer.  Models travel
to the workers pickled, which carries parameters and settings only (no gradients or
records).  The results equal the serial run: each batch goes through the same kernel calls.

    from concurrent.futures import ProcessPoolExecutor
    from nprnn.scale import init_worker, map_batches

    with ProcessPoolExecutor(2, initializer=init_worker) as pool:
        outputs = map_batches(model, batches, pool)
"""
from __future__ import annotations

import functools


def init_worker(threads: int = 1) -> None:
    """Run in each worker process before it takes work: nprnn and the BLAS get ``threads``
    threads (one by default)."""
    from . import threads as nprnn_threads

    nprnn_threads.set_num_threads(threads)
    try:
        from threadpoolctl import threadpool_limits
    except ImportError:
        return
    threadpool_limits(threads)


def run(model, batch):
    """``model``'s output for one batch, in eval mode (what each worker runs).  ``batch`` is
    an input array, or a pair ``(input, lengths)``."""
    model.eval()
    if isinstance(batch, tuple):
        x, lengths = batch
        out = model(x, lengths=lengths)
    else:
        out = model(batch)
    return out[0] if isinstance(out, tuple) else out


def map_batches(model, batches, executor) -> list:
    """The outputs of ``model`` on each of ``batches``, computed by ``executor.map`` (a
    ``concurrent.futures`` pool, or anything with the same ``map``), in order."""
    return list(executor.map(functools.partial(run, model), batches))

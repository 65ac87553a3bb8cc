"""Scoring and training on more sequences than one process handles: a process pool, or a
Dask cluster through its client's executor, runs a model over batches in worker processes.

Each worker uses one nprnn thread and one BLAS thread, so that workers x threads never
exceed the cores: that is the default in a process multiprocessing started (see
:func:`nprnn.get_num_threads`); :func:`init_worker` as the pool's initializer sets it
explicitly, or to another count.  Models travel
to the workers pickled, which carries parameters and settings only (no gradients or
records).  The results equal the serial run: each batch goes through the same kernel calls.

    from concurrent.futures import ProcessPoolExecutor
    from nprnn.scale import init_worker, map_batches

    with ProcessPoolExecutor(2, initializer=init_worker) as pool:
        outputs = map_batches(model, batches, pool)

On Dask (``pip install "nprnn[dask]"``), :func:`dask_worker_setup` is the plugin that runs
:func:`init_worker` in every worker, and ``client.get_executor()`` is the executor::

    with LocalCluster(n_workers=2, threads_per_worker=1) as cluster, Client(cluster) as client:
        client.register_plugin(dask_worker_setup())
        outputs = map_batches(model, batches, client.get_executor())

Data-parallel training (:func:`data_parallel_step`): every step the model's current
parameters go to the workers with one shard of the global batch each; each worker returns
the gradients of its shard's loss weighted by its share of the rows, and their sum — the
gradient of the global batch's mean loss — drives one optimizer step in the caller.
"""
from __future__ import annotations

import functools
from typing import TYPE_CHECKING, Any, Callable, Iterable

import numpy as np

if TYPE_CHECKING:
    from ..nn.module import Module
    from ..nn.optim import Optimizer


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


def run(model: "Module", batch: Any) -> Any:
    """``model``'s output for one batch, in eval mode (what each worker runs).  ``batch`` is
    an input array, or a pair ``(input, lengths)``."""
    model.eval()
    if isinstance(batch, tuple):
        x, lengths = batch
        out = model(x, lengths=lengths)
    else:
        out = model(batch)
    return out[0] if isinstance(out, tuple) else out


def map_batches(model: "Module", batches: Iterable[Any], executor: Any) -> list[Any]:
    """The outputs of ``model`` on each of ``batches``, computed by ``executor.map`` (a
    ``concurrent.futures`` pool, or anything with the same ``map``), in order."""
    return list(executor.map(functools.partial(run, model), batches))


def dask_worker_setup(threads: int = 1) -> Any:
    """A Dask worker plugin that runs :func:`init_worker` in each worker as it starts:
    ``client.register_plugin(dask_worker_setup())``."""
    from distributed import WorkerPlugin

    class NprnnWorkerSetup(WorkerPlugin):
        name = "nprnn-worker-setup"

        def setup(self, worker: Any) -> None:
            init_worker(threads)

    return NprnnWorkerSetup()


def shard_gradients(model: "Module", shard: tuple[Any, Any], loss_fn: Callable[[Any, Any], Any], total_rows: int,
                    batch_axis: int = 0) -> tuple[float, dict[str, np.ndarray]]:
    """``(weighted loss, gradients)`` of ``model`` on one shard ``(input, target)``: the
    shard's mean loss and its gradients times ``rows / total_rows``, so that the shards'
    sums are the global batch's mean loss and its gradients (what each worker runs)."""
    x, target = shard
    model.train()
    model.zero_grad()
    out = model(x)
    out = out[0] if isinstance(out, tuple) else out
    loss = loss_fn(out, target)
    share = np.shape(x)[batch_axis] / total_rows
    model.backward(loss.backward() * np.asarray(share, out.dtype))
    return loss.item() * share, {k: g.copy() for k, g in model.grads.items()}


def data_parallel_step(model: "Module", optimizer: "Optimizer", shards: Iterable[tuple[Any, Any]],
                       loss_fn: Callable[[Any, Any], Any], executor: Any, batch_axis: int = 0) -> float:
    """One training step on the global batch split into ``shards`` (``(input, target)``
    pairs), each shard's gradients computed by ``executor.map`` in a worker; the summed
    gradients update ``model`` through ``optimizer`` here.  Returns the global mean loss.
    ``loss_fn(output, target)`` returns an nprnn loss (e.g. ``nprnn.losses.mse_loss``)."""
    shards = list(shards)
    total = sum(np.shape(x)[batch_axis] for x, _ in shards)
    work = functools.partial(shard_gradients, model, loss_fn=loss_fn, total_rows=total, batch_axis=batch_axis)
    results = list(executor.map(work, shards))
    optimizer.zero_grad()
    grads = model.grads
    for _, shard_grads in results:
        for name, g in shard_grads.items():
            grads[name] += g
    optimizer.step()
    return float(sum(loss for loss, _ in results))

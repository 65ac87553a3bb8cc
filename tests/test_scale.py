"""Scale-out on a process pool: results equal the serial run, workers use one thread each."""
import multiprocessing
import os
from concurrent.futures import ProcessPoolExecutor

import numpy as np
import pytest

import nprnn
from nprnn.layers import Linear
from nprnn.scale import init_worker, map_batches, run


def _threads_in_worker(_):
    from nprnn import threads

    return threads.get_num_threads()


def _threads_and_blas_in_worker(_):
    from threadpoolctl import threadpool_info

    from nprnn import threads

    n = threads.get_num_threads()
    return n, {p["num_threads"] for p in threadpool_info() if p["user_api"] == "blas"}


def test_workers_default_to_one_thread_and_one_blas_thread():
    """Without an initializer: a worker process defaults to one nprnn thread, BLAS capped at one."""
    pytest.importorskip("threadpoolctl")
    with ProcessPoolExecutor(2, mp_context=multiprocessing.get_context("spawn")) as pool:
        for n, blas in pool.map(_threads_and_blas_in_worker, range(2)):
            assert n == 1 and blas <= {1}


def test_process_pool_equals_serial_run():
    rng = np.random.default_rng(0)
    model = nprnn.Sequential(nprnn.GRU(4, 16, num_layers=2, batch_first=True, seed=0), nprnn.LastStep(True),
                             Linear(16, 3, seed=1))
    batches = [rng.standard_normal((5, 12, 4)).astype(np.float32) for _ in range(6)]
    batches.append((rng.standard_normal((3, 12, 4)).astype(np.float32), [12, 7, 3]))
    serial = [run(model, b) for b in batches]
    with ProcessPoolExecutor(2, mp_context=multiprocessing.get_context("spawn"), initializer=init_worker) as pool:
        parallel = map_batches(model, batches, pool)
        assert set(pool.map(_threads_in_worker, range(4))) == {1}  # one nprnn thread a worker
    for a, b in zip(serial, parallel):
        np.testing.assert_array_equal(a, b)  # the same rows through the same kernel calls


def _training_setup():
    rng = np.random.default_rng(1)
    model = nprnn.Sequential(nprnn.LSTM(3, 8, batch_first=True, seed=0), nprnn.LastStep(True), Linear(8, 2, seed=1))
    x = rng.standard_normal((12, 6, 3)).astype(np.float32)
    y = rng.standard_normal((12, 2)).astype(np.float32)
    return model, x, y


def _train_serial(steps=10):
    from nprnn.losses import mse_loss
    from nprnn.optim import Adam

    model, x, y = _training_setup()
    opt = Adam(model.parameters(), lr=0.01)
    for _ in range(steps):
        model.zero_grad()
        out = model(x)
        model.backward(mse_loss(out, y).backward())
        opt.step()
    return model


def _train_parallel(executor, steps=10):
    from nprnn.losses import mse_loss
    from nprnn.optim import Adam
    from nprnn.scale import data_parallel_step

    model, x, y = _training_setup()
    opt = Adam(model.parameters(), lr=0.01)
    shards = [(x[:7], y[:7]), (x[7:], y[7:])]  # unequal shards: each weighted by its rows
    losses = [data_parallel_step(model, opt, shards, mse_loss, executor) for _ in range(steps)]
    assert losses[-1] < losses[0]
    return model


def _assert_same_parameters(a, b):
    for (name, p), q in zip(a.named_parameters(), b.parameters()):
        np.testing.assert_allclose(p, q, rtol=0, atol=1e-5, err_msg=name)


def test_data_parallel_training_on_a_process_pool_equals_one_process():
    with ProcessPoolExecutor(2, mp_context=multiprocessing.get_context("spawn"), initializer=init_worker) as pool:
        parallel = _train_parallel(pool)
    _assert_same_parameters(parallel, _train_serial())


def test_dask_local_cluster_scores_and_trains_as_one_process():
    """The Dask recipe: a 2-worker LocalCluster scores batches equal to the serial run and
    trains 10 data-parallel steps to the parameters of single-process training."""
    if os.environ.get("NPRNN_REQUIRE_TORCH") == "1":  # CI: installed, so never skipped there
        import distributed
    else:
        distributed = pytest.importorskip("distributed")  # the nprnn[dask] extra
    from nprnn.scale import dask_worker_setup

    rng = np.random.default_rng(0)
    model = nprnn.Sequential(nprnn.GRU(4, 16, num_layers=2, batch_first=True, seed=0), nprnn.LastStep(True),
                             Linear(16, 3, seed=1))
    batches = [rng.standard_normal((5, 12, 4)).astype(np.float32) for _ in range(4)]
    serial = [run(model, b) for b in batches]
    with distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=True,
                                  dashboard_address=None) as cluster, \
            distributed.Client(cluster) as client:
        client.register_plugin(dask_worker_setup())
        assert set(client.run(_threads_in_worker, 0).values()) == {1}  # one nprnn thread a worker
        executor = client.get_executor()
        scored = map_batches(model, batches, executor)
        trained = _train_parallel(executor)
    for a, b in zip(serial, scored):
        np.testing.assert_allclose(a, b, rtol=0, atol=1e-6)
    _assert_same_parameters(trained, _train_serial())

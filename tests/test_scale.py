"""Scale-out on a process pool: results equal the serial run, workers use one thread each."""
import multiprocessing
from concurrent.futures import ProcessPoolExecutor

import numpy as np

import nprnn
from nprnn.layers import Linear
from nprnn.scale import init_worker, map_batches, run


def _threads_in_worker(_):
    from nprnn import threads

    return threads.get_num_threads()


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

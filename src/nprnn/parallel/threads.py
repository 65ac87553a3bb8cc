"""How a layer uses more than one core.

On the compiled tier (:mod:`nprnn.functional.native`) each scan runs its whole time loop
without the GIL, and batch rows are independent over the whole sequence, so a large batch
splits into ranges of rows that run side by side (:func:`row_ranges`, :func:`run_parts`),
with no synchronisation per step.

The NumPy tier holds the GIL around every small NumPy call, and at the batch sizes of a
time step the BLAS gains little from a second thread (OpenBLAS splits a product of a few
dozen rows poorly).  So there, instead of splitting a step, a layer runs two *scans* at
once, with the BLAS held to half the threads (one on two cores) per scan while they run:

* a bidirectional layer runs its two directions side by side;
* a stack of one-directional layers runs as a pipeline: layer ``l + 1`` starts on the
  first chunk of layer ``l``'s output while layer ``l`` goes on with the next one
  (:class:`Stream` hands the rows over); backward runs the same pipeline from the top
  layer down, handing each layer's input gradient on from the last step backwards.

The results equal the one-at-a-time run up to the rounding of the matrix products (a
product split into chunks, or run on fewer BLAS threads, may round its last bit
differently); for the same settings they are the same from run to run.

Holding the BLAS back needs ``threadpoolctl`` (``pip install "nprnn[fast]"``).  Without
it the default is one scan at a time: two scans each asking for every BLAS thread are
slower than one.  The limit is process-wide while a side-by-side run lasts, so a matrix
product another thread of the program runs meanwhile gets the reduced BLAS too;
``set_num_threads(1)`` turns side-by-side runs off.
"""
from __future__ import annotations

import contextvars
import os
import threading
from collections import Counter
from contextlib import contextmanager, nullcontext
from typing import Any, Callable, Iterator, Optional, Sequence, Union

from .._typing import Array
from ..config import settings
from ..functional import runners as _runners

# The thresholds live in nprnn.config.settings: chunk_steps, the steps a pipelined layer
# hands over at a time; min_step_work, the gate values a step (rows * gates * hidden) below
# which two threads lose more to handing the GIL back and forth around each small NumPy
# call than the second core gives (benchmarks/bench_threads.py: 0.4-0.9x at 6k and below,
# 1.0-1.4x from 8k up, 2 cores); min_train_step_work, the same for a training run (forward
# with records, and backward), measured 0.5-0.9x below 12288, 1.0-1.15x at 12288, 1.1-1.3x
# at 16384; min_split_work, parts_per_thread, min_part_rows for the compiled tier's split.
_blas: dict[str, Any] = {"controller": None, "looked": False, "depth": 0, "limiter": None}
_blas_lock = threading.Lock()


def _available_cpus() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def _blas_controller() -> Any:
    """threadpoolctl's controller of the loaded BLAS libraries, or None without it."""
    if not _blas["looked"]:
        _blas["looked"] = True
        try:
            from threadpoolctl import ThreadpoolController
        except ImportError:
            return None
        _blas["controller"] = ThreadpoolController().select(user_api="blas")
    return _blas["controller"]


def set_num_threads(n: int) -> None:
    """How many threads nprnn's layers may use: 1 runs one scan at a time; 2 or more lets
    a layer run two scans side by side, each with ``n // 2`` BLAS threads (see the module
    docstring)."""
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise ValueError(f"set_num_threads: expected a positive int, but got {n!r}")
    settings.num_threads = n


def _in_worker_process() -> bool:
    """Whether this process was started by multiprocessing (a process pool's worker, a
    Dask worker under its nanny), where other workers share the cores."""
    import multiprocessing

    return multiprocessing.parent_process() is not None


def get_num_threads() -> int:
    """The current setting; by default the cores the process may use when threadpoolctl
    is installed, else 1.  In a worker process (started by multiprocessing, as process
    pools and Dask start theirs) the default is 1, and the BLAS is capped at one thread
    too (with threadpoolctl), so that workers x threads never exceed the cores."""
    if settings.num_threads is not None:
        return settings.num_threads
    if _in_worker_process():
        settings.num_threads = 1
        controller = _blas_controller()
        if controller is not None:
            controller.limit(limits=1)
        return 1
    return _available_cpus() if _blas_controller() is not None else 1


_share = contextvars.ContextVar("nprnn_thread_share", default=1)  # how many scans share the threads now
# What ran on more than one thread, counted for whoever wants to see it (tests, benchmarks):
# "side by side" runs of two scans, "parts" handed out by a batch split, "splits" (run_parts calls),
# "groups" of steps begun by pipelined scans.
activity: Counter[str] = Counter()


def threads_here() -> int:
    """The threads one scan may use: :func:`get_num_threads`, divided among the scans a
    side-by-side run (:func:`run_side_by_side`) is running at once."""
    return max(1, get_num_threads() // _share.get())


def side_by_side_pays(steps: int, rows: int, gate_width: int, pipelined: bool, min_work: int) -> bool:
    """Whether two scans at once beat one: at least ``min_work`` gate values per step on
    average (``rows`` packed rows over ``steps`` steps, ``gate_width`` = gates * hidden
    size; ``settings.min_step_work``, or ``min_train_step_work`` in training) and,
    for a pipeline, at least two chunks to
    overlap."""
    if get_num_threads() < 2:
        return False
    if pipelined and steps < 2 * settings.chunk_steps:
        return False
    return rows * gate_width >= min_work * steps


@contextmanager
def blas_halved() -> Iterator[None]:
    """Hold the BLAS to half the threads, at least one (nested and concurrent uses share
    one limit, lifted by the last to leave)."""
    controller = _blas_controller()
    if controller is None:
        yield
        return
    with _blas_lock:
        if _blas["depth"] == 0:
            _blas["limiter"] = controller.limit(limits=max(1, get_num_threads() // 2))
        _blas["depth"] += 1
    try:
        yield
    finally:
        with _blas_lock:
            _blas["depth"] -= 1
            if _blas["depth"] == 0:
                _blas["limiter"].restore_original_limits()
                _blas["limiter"] = None


class UpstreamFailed(RuntimeError):
    """Raised in a scan waiting on a :class:`Stream` whose writer failed."""


def run_side_by_side(first: Callable[[], Any], second: Callable[[], Any], blas: bool = True) -> None:
    """Run ``first()`` on a new thread and ``second()`` on this one, each given half the
    threads (:func:`threads_here`) and, with ``blas``, the BLAS held to half its threads;
    wait for both, and raise the error that started a failure (not the
    :class:`UpstreamFailed` it caused in the other).  ``first`` sees this thread's context
    (NumPy's error state included).  If one may wait on the other (a :class:`Stream`),
    each must fail its streams when it fails, or the other waits forever.
    """
    activity["side by side"] += 1
    context = contextvars.copy_context()
    context.run(_share.set, _share.get() * 2)
    errors: list[BaseException] = []

    def target() -> None:
        try:
            context.run(first)
        except BaseException as exc:  # re-raised on the calling thread
            errors.append(exc)

    worker = threading.Thread(target=target, name="nprnn-scan", daemon=True)
    token = _share.set(_share.get() * 2)
    try:
        with blas_halved() if blas else nullcontext():
            worker.start()
            try:
                second()
            except BaseException as exc:
                errors.append(exc)
            finally:
                worker.join()
    finally:
        _share.reset(token)
    if errors:
        raise next((e for e in errors if not isinstance(e, UpstreamFailed)), errors[0])


def run_pipeline(n_stages: int, stage: Callable[[int, "PipelineStage"], Any]) -> None:
    """Run ``stage(i, pipeline_stage)`` for ``i = 0 .. n_stages - 1`` as a pipeline over two
    threads (even stages on a new one, odd ones on this one): stage ``i`` reads what stage
    ``i - 1`` publishes, as it comes, and publishes what stage ``i + 1`` reads (see
    :class:`PipelineStage`).  A failing stage fails every stream, so no stage waits forever."""
    streams = [Stream() for _ in range(n_stages - 1)]

    def lane(first: int) -> None:
        try:
            for i in range(first, n_stages, 2):
                stage(i, PipelineStage(streams[i - 1] if i else None, streams[i] if i < n_stages - 1 else None))
        except BaseException as error:
            for stream in streams:
                stream.fail(error)
            raise

    run_side_by_side(lambda: lane(0), lambda: lane(1))


class Chunks:
    """A pipelined scan works in groups of ``settings.chunk_steps`` steps (in processing
    order): ``before(lo, hi)`` runs before a group's first step and ``after(lo, hi)`` after
    its last, ``lo:hi`` being the rows the group covers (counted in ``activity["groups"]``)."""

    def __init__(self, steps: Sequence[tuple[int, int, int]], before: Callable[[int, int], None],
                 after: Callable[[int, int], None]) -> None:
        size = settings.chunk_steps
        self.size, self.last, self.before, self.after = size, len(steps) - 1, before, after
        self.rows = [(min(s[0] for s in steps[j : j + size]), max(s[1] for s in steps[j : j + size]))
                     for j in range(0, len(steps), size)]

    def begin(self, k: int) -> None:
        if k % self.size == 0:
            activity["groups"] += 1
            self.before(*self.rows[k // self.size])

    def end(self, k: int) -> None:
        if k % self.size == self.size - 1 or k == self.last:
            self.after(*self.rows[k // self.size])


class PipelineStage:
    """One scan of a pipeline (:func:`run_pipeline`): it reads its input rows as ``source``
    publishes them and publishes its own on ``sink`` (None: at an end of the pipeline).
    The scans (:mod:`nprnn.functional.scan`) ask it for the hooks around their steps."""

    def __init__(self, source: Optional["Stream"], sink: Optional["Stream"]) -> None:
        self.source, self.sink = source, sink

    def _small_steps(self, steps: Sequence[tuple[int, int, int]], gate_width: int) -> list[int]:
        """The first rows of the steps whose batch has shrunk below
        ``settings.min_step_work`` gate values, when another stage feeds this one (two
        such stretches side by side lose more to the GIL than they gain)."""
        if self.source is None:
            return []
        return [lo for lo, hi, n in steps if n * gate_width < settings.min_step_work]

    def forward_hooks(self, steps: Sequence[tuple[int, int, int]], project: Callable[[int, int], None],
                      gate_width: int) -> Chunks:
        """Forward in time: wait until the source (None: the input is all there) has
        published a group's input rows and ``project(lo, hi)`` them; publish its output rows
        on the sink.  Where the batch has shrunk below ``settings.min_step_work`` gate
        values a step, two scans at once cost more than one after the other, so from its
        first such group this stage waits until the stage below has finished."""
        source, sink = self.source, self.sink
        total = steps[-1][1]
        small = set(self._small_steps(steps, gate_width))

        def before(lo: int, hi: int) -> None:
            if source is not None:
                source.wait(total if lo in small else hi)
            if sink is not None:
                sink.check()
            project(lo, hi)

        def after(lo: int, hi: int) -> None:
            if sink is not None:
                sink.publish(hi)

        return Chunks(steps, before, after)

    def backward_hooks(self, steps: Sequence[tuple[int, int, int]], total: int,
                       input_grad: Callable[[int, int], None], gate_width: int) -> Chunks:
        """Backward through a forward-in-time scan, rows coming from the end: wait until the
        source has published the output gradient's last ``total - lo`` rows, and after a
        group compute its rows of the input gradient (``input_grad(lo, hi)``) and publish
        them.  The steps where the batch has shrunk below ``settings.min_step_work`` gate
        values come first here; this stage starts them once the stage above is past all
        of its own, so that two such stretches never run side by side."""
        source, sink = self.source, self.sink
        small_from = min(self._small_steps(steps, gate_width), default=total)

        def before(lo: int, hi: int) -> None:
            if source is not None:
                source.wait(total - min(lo, small_from))
            if sink is not None:
                sink.check()

        def after(lo: int, hi: int) -> None:
            input_grad(lo, hi)
            if sink is not None:
                sink.publish(total - lo)

        return Chunks(list(reversed(steps)), before, after)


class Stream:
    """How many rows of an array another thread has finished, ``done``: counted from the
    start (forward) or from the end (backward, which fills rows from the last step).

    The writer calls :meth:`publish` with its new count (or :meth:`fail`); a reader calls
    :meth:`wait` for the count it needs.
    """

    def __init__(self) -> None:
        self.done = 0
        self._error: Optional[BaseException] = None
        self._waiting = False
        self._cond = threading.Condition()

    def publish(self, end: int) -> None:
        self.done = end
        if self._waiting:
            with self._cond:
                self._cond.notify_all()

    def fail(self, error: BaseException) -> None:
        with self._cond:
            self._error = error
            self._cond.notify_all()

    def check(self) -> None:
        """Raise :class:`UpstreamFailed` if the stream was failed (the writer stops early
        when the reader is gone)."""
        if self._error is not None:
            raise UpstreamFailed("a scan of this run failed") from self._error

    def wait(self, end: int) -> None:
        if self.done >= end:
            return
        with self._cond:
            self._waiting = True
            while self.done < end and self._error is None:
                self._cond.wait()
            self._waiting = False
            if self.done < end:
                raise UpstreamFailed("the scan producing this layer's input failed") from self._error


# --------------------------------------------------------------- the compiled tier
# A compiled scan (nprnn.functional.native) runs its whole time loop without the GIL, and
# batch rows are independent over the whole sequence: so the batch splits into parts that
# run side by side with no per-step synchronisation.  Handing a part to a pooled thread
# costs about 150 us on the project's machine (waking the thread and passing the GIL), so
# a split needs settings.min_split_work multiply-adds a thread to pay: measured (bench_threads
# and back-to-back calls) 0.3-0.4x at 1M, 0.9x at 5-6M, 0.97-1.31x at 8-10M a thread.
_workers: dict[str, Any] = {"pool": None, "size": 0}  # the pooled threads run_parts hands parts to
_workers_lock = threading.Lock()


def row_ranges(lengths: Union[Sequence[int], Array], row_work: int) -> list[tuple[int, int]]:
    """How to split a batch for a compiled scan: ``lengths`` are the sequences' lengths
    (non-increasing, as packed), ``row_work`` the multiply-adds of a row.  Returns
    ``[(r0, r1), ...]``, ranges of sequences with about equal packed rows, a few per thread
    (:func:`run_parts` hands them out as threads come free), or one range when a split does
    not pay.  Sequences all of one length make one range per thread: their work is alike,
    and each range more reads the weights once more a step (the layer-norm LSTM's training
    step N=32 L=100 64->128 x2 took 26.9 ms in four ranges, 26.0 ms in two)."""
    batch = len(lengths)
    threads = min(threads_here(), batch)
    total = int(sum(lengths))
    if threads < 2 or total * row_work < settings.min_split_work * threads:
        return [(0, batch)]
    if lengths[0] == lengths[-1]:  # all alike: _split_rows' bounds, ceil(batch k / threads)
        return [(-(-batch * k // threads), -(-batch * (k + 1) // threads)) for k in range(threads)]
    return _split_rows(lengths, max(threads, min(settings.parts_per_thread * threads, batch // settings.min_part_rows)))


def _split_rows(lengths: Union[Sequence[int], Array], parts: int) -> list[tuple[int, int]]:
    """Up to ``parts`` ranges of the sequences with about equal packed rows each (a range
    ends where the rows so far first reach its share)."""
    batch, total = len(lengths), int(sum(lengths))
    bounds, acc, k = [0], 0, 1
    for r, n in enumerate(lengths):
        acc += int(n)
        while k < parts and acc * parts >= total * k and r + 1 < batch:
            if bounds[-1] != r + 1:
                bounds.append(r + 1)
            k += 1
    bounds.append(batch)
    return [(a, b) for a, b in zip(bounds[:-1], bounds[1:]) if b > a]


def run_parts(parts: Sequence[Callable[[], Any]]) -> None:
    """Run the callables ``parts`` side by side on this thread and pooled worker threads
    (up to :func:`get_num_threads` in all), each thread taking the next part as it comes
    free; wait for all and raise the first error (no part starts after one failed)."""
    if len(parts) == 1:
        parts[0]()
        return
    activity["splits"] += 1
    activity["parts"] += len(parts)
    from concurrent.futures import ThreadPoolExecutor

    helpers = min(threads_here(), len(parts)) - 1
    with _workers_lock:
        if _workers["pool"] is None or _workers["size"] < helpers:
            if _workers["pool"] is not None:
                _workers["pool"].shutdown(wait=False)
            _workers["pool"] = ThreadPoolExecutor(max(helpers, 1), thread_name_prefix="nprnn-part")
            _workers["size"] = max(helpers, 1)
        pool = _workers["pool"]
    queue = list(reversed(parts))
    lock = threading.Lock()
    errors: list[BaseException] = []

    def drain() -> None:
        while True:
            with lock:
                if errors or not queue:
                    return
                part = queue.pop()
            try:
                part()
            except BaseException as exc:
                with lock:
                    errors.append(exc)
                return

    context = contextvars.copy_context()
    futures = [pool.submit(context.copy().run, drain) for _ in range(helpers)]
    drain()
    for future in futures:
        future.result()
    if errors:
        raise errors[0]


# A small batch (N=1: one stream) has no rows to split, so there the hidden units split
# instead (nprnn.functional.native.plan): each thread owns some units of every gate and
# their rows of the weights, and the threads meet once a step inside the compiled loop
# (_native.Team: a barrier that spins settings.step_spin_us, then sleeps; between calls the
# helpers spin settings.spin_us, then sleep).  The team's helpers
# are daemon threads that wait inside Team.serve between calls, so a call hands no work to
# a Python thread.  One team a process (made again after a fork, whose child has no helpers).
_team: dict[str, Any] = {"team": None, "key": None, "threads": []}


def unit_parts(N: int, H: int, step_work: int, steps: int) -> int:
    """How many parts a small batch's hidden units split into: one per thread where the
    batch has at most ``settings.max_unit_split_batch`` rows and a row's hidden-side work
    a step (``step_work`` multiply-adds: the weights' size) is at least
    ``settings.min_unit_split_work``, twice that for a call of one step (a stream's),
    which pays for starting the team each time; else 1 (a larger batch splits its rows).
    Measured on 2 cores, LSTM, 100 steps: N=1 H=96 0.74x, H=128 1.09x, H=256 1.57x; one
    step H=128 0.70x, H=256 1.65x; N=4 H=128 1.0x (rows 1.0x), H=256 1.4x (rows 0.7x);
    N=8 H=128 0.69x of the row split, H=256 1.21x, H=512 2.0x."""
    threads = threads_here()
    least = settings.min_unit_split_work * (2 if steps == 1 else 1)
    if threads < 2 or N > settings.max_unit_split_batch or step_work < least:
        return 1
    return min(threads, H)


def team(parts: int) -> Any:
    """The process's team of threads (see above), started on first use; None when this
    process has one thread to give."""
    from ..functional.native import compiled

    n = get_num_threads()
    if compiled is None or n < 2 or parts < 2:
        return None
    key = (n, settings.spin_us, settings.step_spin_us, os.getpid())
    if _team["key"] == key:
        return _team["team"]
    with _workers_lock:
        current = _team["team"]
        if current is not None and _team["key"][3] == key[3]:  # not a fork's copy: its helpers exist
            current.close()
        new = compiled.Team(n, settings.spin_us * 1000, settings.step_spin_us * 1000)
        helpers = [threading.Thread(target=new.serve, args=(i,), name=f"nprnn-team-{i}", daemon=True)
                   for i in range(1, n)]
        for t in helpers:
            t.start()
        while new.ready() < n - 1:  # a job posted before a helper is in serve() would wait for it
            threading.Event().wait(0.0002)
        _team.update(team=new, key=key, threads=helpers)
        return new


def team_stats() -> Any:
    """This process's team, counted: ``threads``, ``runs`` (jobs run on the team),
    ``alone`` (jobs that found it busy with another thread's call and ran on their
    caller's thread alone: the same result, one core), ``moves`` (helpers moved off their
    caller's processor), the spins; None before the first split call."""
    current = _team["team"]
    if current is None or _team["key"] is None or _team["key"][3] != os.getpid():
        return None
    return current.stats()


def wavefront_pays(layers: int, directions: int, rows: int, steps: int, gate_width: int, row_width: int,
                   pipelinable: bool, first_width: int) -> bool:
    """Whether a compiled one-directional stack runs as a wavefront (each layer's whole
    loop on its own thread, a step behind the layer below) instead of layer after layer
    with each layer's batch split: from ``settings.min_wavefront_batch`` rows a step (below,
    a layer splits its hidden units), layers of about equal work (layer 0's row at least
    ``settings.wavefront_balance`` percent of the others': the slowest layer sets the
    pace), and weights that one core's cache holds but not every layer's (a row's step
    work, gates * row, from ``min_wavefront_work`` to ``max_wavefront_work``: each thread
    then keeps its layer's weights).  Measured (2 cores, 100 steps, inference / training
    step against layer after layer): LSTM 128->128 x2 N=64 1.17x / 1.10x, GRU 256->256 x2
    N=64 1.30x / 1.10x, LSTM 256->256 x2 N=32 1.12x / 1.05x, x4 1.14x / 1.05x; not taken:
    LSTM 64->64 x3 N=32 0.8x (small weights), 512->512 x2 N=16 0.9x (too large for a
    core's cache), 64->128 x2 N=32 0.98x / 1.04x (layer 0 has 75% of layer 1's work)."""
    if directions != 1 or layers < 2 or not pipelinable or min(get_num_threads(), layers) < 2:
        return False
    work = gate_width * row_width
    return bool(rows >= settings.min_wavefront_batch * max(1, steps)
                and first_width * 100 >= settings.wavefront_balance * row_width
                and settings.min_wavefront_work <= work <= settings.max_wavefront_work)


class ThreadedRunner:
    """The runner (:mod:`nprnn.functional.runners`) that uses more than one core: it
    splits a large batch of a compiled scan into :func:`row_ranges` run by
    :func:`run_parts`, and runs two scans of a stack at once where that pays."""

    def ranges(self, lengths: Union[Sequence[int], Array], row_work: int) -> list[tuple[int, int]]:
        return row_ranges(lengths, row_work)

    def run(self, parts: Sequence[Callable[[], Any]]) -> None:
        run_parts(parts)

    def units(self, N: int, H: int, step_work: int, steps: int) -> int:
        return unit_parts(N, H, step_work, steps)

    def team(self, parts: int) -> Any:
        return team(parts)

    def schedule(self, *, compiled: bool, layers: int, directions: int, rows: int, steps: int, gate_width: int,
                 row_width: int, train: bool, pipelinable: bool, first_width: int = 0) -> Optional[str]:
        """"directions", "layers", "wavefront" or None: which scans of a stack go two at a
        time.  Layers pipeline only forward in time and without dropout between them (its
        mask applies to a layer's whole output)."""
        if compiled and wavefront_pays(layers, directions, rows, steps, gate_width, row_width, pipelinable,
                                       first_width):
            return "wavefront"
        if compiled:
            # The compiled scans split the batch (row_ranges); the two directions of a layer
            # also go side by side, each on half the threads, as each part of a split reads
            # all the weights at every step, and two directions give each read twice the rows.
            work = rows * gate_width * row_width
            if directions == 2 and get_num_threads() >= 2 and work >= settings.min_split_work:
                return "directions"
            return None
        min_work = settings.min_train_step_work if train else settings.min_step_work
        if directions == 2:
            return "directions" if side_by_side_pays(steps, rows, gate_width, False, min_work) else None
        if layers > 1 and pipelinable and side_by_side_pays(steps, rows, gate_width, True, min_work):
            return "layers"
        return None

    def side_by_side(self, first: Callable[[], Any], second: Callable[[], Any], blas: bool = True) -> None:
        run_side_by_side(first, second, blas)

    def pipeline(self, n_stages: int, stage: Callable[[int, PipelineStage], Any]) -> None:
        run_pipeline(n_stages, stage)


THREADED = ThreadedRunner()
_runners.set_default(THREADED)  # (the public functions of nprnn.functional run on it: linear_scan)


def set_helper_process(enabled: bool) -> None:
    """Deprecated, does nothing: the helper process is gone (the compiled tier's scans use
    a second core without it).  Kept for one release."""
    import warnings

    warnings.warn("nprnn.set_helper_process() does nothing since the compiled kernels replaced the helper process; "
                  "it will be removed in the next release", FutureWarning, stacklevel=2)


def get_helper_process() -> bool:
    """Deprecated: always False (see :func:`set_helper_process`)."""
    import warnings

    warnings.warn("nprnn.get_helper_process() is always False since the helper process is gone; it will be removed "
                  "in the next release", FutureWarning, stacklevel=2)
    return False


"""nprnn's settings, in one object: threads, the thresholds that decide when more than one
thread pays, and the backend.

``nprnn.config.settings`` holds the current values; ``set_num_threads``/``set_backend``
change them for the process, and :func:`override` for a ``with`` block (tests, benchmarks)::

    with nprnn.config.override(num_threads=2, min_step_work=0):
        ...                      # the old values come back on leaving, even on an error

The thresholds are measured figures (see :mod:`nprnn.threads` for where each comes from);
nothing else in nprnn keeps a copy of them.
"""
from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass, fields
from typing import Any, Iterator


@dataclass
class Settings:
    num_threads: int | None = None  # None: decided on first use (nprnn.threads.get_num_threads)
    # a pipelined NumPy-tier layer hands its output on every this many time steps
    chunk_steps: int = 8
    # NumPy tier: gate values a step (rows * gates * hidden) from which two scans at once pay,
    # in inference and in training (benchmarks/bench_threads.py: 0.4-0.9x below, 1.0-1.4x above)
    min_step_work: int = 8192
    min_train_step_work: int = 16384
    # compiled tier: multiply-adds a thread from which splitting the batch pays (~150 us a hand-off)
    min_split_work: int = 8_000_000
    parts_per_thread: int = 4  # more parts than threads, so a thread slowed down takes fewer
    min_part_rows: int = 8  # a smaller part leaves the register tiles part empty
    # compiled tier, small batches: the hidden units split across threads that meet every
    # step, for a batch of at most max_unit_split_batch rows whose weights are large: a
    # row's step has at least min_unit_split_work multiply-adds of the hidden side
    # (G*H*H_out + H*H_out), twice that for a one-step call (measured: nprnn.threads.unit_parts)
    max_unit_split_batch: int = 8
    min_unit_split_work: int = 98304
    # compiled tier, backward: a row range's weight gradients of at most max_inloop_grad_bytes
    # are made inside the loop, over blocks of about grad_block_rows of its rows while they are
    # in the cache (0: always after the loop, over every row).  Measured (2 threads, N=32,
    # 2 MB of L2 a core): inside is 5-13% faster to 2.4 MB a range, even at 3.9 MB, 14% slower at 7.4
    max_inloop_grad_bytes: int = 3 << 20
    grad_block_rows: int = 64
    # compiled tier: from this batch up, the input projection runs inside the loop, step by
    # step (its W_ih read once a step serves enough rows); below, one product before it
    min_inloop_batch: int = 16
    # microseconds a team's helper waiting for the next call spins before it sleeps (200: it
    # stays awake across the Python code between back-to-back calls), and a
    # thread waiting for the others inside a loop (they come within a step; a woken thread
    # can take 100 us to run on a virtual machine, and then comes late to the next step)
    spin_us: int = 200
    step_spin_us: int = 1000
    # compiled tier: a one-directional stack runs as a wavefront (nprnn.threads.wavefront_pays)
    # from this many rows a step, with layer 0's row at least wavefront_balance percent of
    # the others' and a row's step work (gates * row) from min to max_wavefront_work
    min_wavefront_batch: int = 9
    wavefront_balance: int = 85
    min_wavefront_work: int = 98304
    max_wavefront_work: int = 786432
    # compiled tier, inference: a layer called again with the same shapes runs the kernel
    # calls it made and checked for the first (1), instead of planning them again (0: never)
    reuse_calls: int = 1

    def __setattr__(self, name: str, value: Any) -> None:
        object.__setattr__(self, name, value)
        _changes[0] += 1


_changes = [0]


def changes() -> int:
    """A counter that moves whenever a setting is set (decisions cached on settings compare it)."""
    return _changes[0]


settings = Settings()
_NAMES = {f.name for f in fields(Settings)}


_NON_NEGATIVE = {"min_step_work", "min_train_step_work", "min_split_work", "max_unit_split_batch",
                 "min_unit_split_work", "min_inloop_batch", "spin_us", "step_spin_us", "min_wavefront_batch",
                 "wavefront_balance", "min_wavefront_work", "max_wavefront_work",
                 "reuse_calls", "max_inloop_grad_bytes"}  # 0: always split / side by side (reuse_calls: never)


def _check(name: str, value: Any) -> None:
    if name == "num_threads" and value is None:
        return
    least = 0 if name in _NON_NEGATIVE else 1
    if isinstance(value, bool) or not isinstance(value, int) or value < least:
        raise ValueError(f"nprnn.config: {name} must be an int >= {least}, got {value!r}")


@contextmanager
def override(backend: str | None = None, **changes: Any) -> Iterator["Settings"]:
    """Set some settings (and the backend, ``"native"`` or ``"numpy"``) for a ``with``
    block; every value is checked before any changes, and all come back on leaving."""
    unknown = sorted(set(changes) - _NAMES)
    if unknown:
        raise TypeError(f"nprnn.config.override: unknown setting(s) {unknown}; settings are {sorted(_NAMES)}")
    for name, value in changes.items():
        _check(name, value)
    from .functional import native

    saved = {name: getattr(settings, name) for name in changes}
    saved_backend = native.backend()
    if backend is not None:
        native.set_backend(backend)
    for name, value in changes.items():
        setattr(settings, name, value)
    try:
        yield settings
    finally:
        for name, value in saved.items():
            setattr(settings, name, value)
        native.set_backend(saved_backend)

"""How the independent parts of a run are scheduled.

The kernels and the layer stack take a runner as an argument and know nothing of threads.
A runner answers two questions:

* within one compiled scan: ``ranges(lengths, row_work) -> [(r0, r1), ...]``, the row
  ranges a batch of sequences with these lengths splits into, and ``run(parts)``, which
  calls each part and returns when all are done; or, for a small batch,
  ``units(N, H, step_work, steps)``, how many parts its hidden units split into, and
  ``team(parts)``, the threads (a ``_native.Team``, or None) that share those parts at
  every step;
* within a stack of scans (:mod:`.stack`): ``schedule(...)``, which scans run at once
  (None, ``"directions"``, ``"layers"`` or, compiled, ``"wavefront"``), and ``side_by_side(first, second, blas)`` and
  ``pipeline(n, stage)``, which run them so.

:data:`SERIAL`, the default, runs everything on the calling thread, one thing at a time;
:data:`nprnn.threads.THREADED` uses more cores.
"""
from __future__ import annotations

from typing import Any, Callable, Optional, Protocol, Sequence, Union

from .._typing import Array


class Runner(Protocol):
    def ranges(self, lengths: Union[Sequence[int], Array], row_work: int) -> list[tuple[int, int]]: ...

    def run(self, parts: Sequence[Callable[[], None]]) -> None: ...

    def units(self, N: int, H: int, step_work: int, steps: int) -> int: ...

    def team(self, parts: int) -> Any: ...

    def schedule(self, *, compiled: bool, layers: int, directions: int, rows: int, steps: int, gate_width: int,
                 row_width: int, train: bool, pipelinable: bool, first_width: int) -> Optional[str]: ...

    def side_by_side(self, first: Callable[[], None], second: Callable[[], None], blas: bool = True) -> None: ...

    def pipeline(self, n_stages: int, stage: Callable[[int, Any], None]) -> None: ...


class SerialRunner:
    """Everything on the calling thread, one at a time: one range, no schedule."""

    def ranges(self, lengths: Union[Sequence[int], Array], row_work: int) -> list[tuple[int, int]]:
        return [(0, len(lengths))]

    def run(self, parts: Sequence[Callable[[], None]]) -> None:
        for part in parts:
            part()

    def units(self, N: int, H: int, step_work: int, steps: int) -> int:
        return 1

    def team(self, parts: int) -> Any:
        return None

    def schedule(self, **shape: Any) -> Optional[str]:
        return None

    def side_by_side(self, first: Callable[[], None], second: Callable[[], None], blas: bool = True) -> None:
        second()
        first()

    def pipeline(self, n_stages: int, stage: Callable[[int, Any], None]) -> None:
        for i in range(n_stages):
            stage(i, None)


SERIAL = SerialRunner()
_DEFAULT: list[Runner] = [SERIAL]


def default() -> Runner:
    """The runner a public function uses when it is given none: :data:`SERIAL` until
    :mod:`nprnn.threads` registers its own (:func:`set_default`, at import)."""
    return _DEFAULT[0]


def set_default(runner: Runner) -> None:
    _DEFAULT[0] = runner

"""Type names shared by the package's annotations."""
from __future__ import annotations

from typing import Any, Optional

from numpy.typing import NDArray

Array = NDArray[Any]  # an array of the module's float dtype (or of indices, where said)
OptArray = Optional[Array]
Params = tuple[Array, Array, OptArray, OptArray, OptArray]  # (w_ih, w_hh, b_ih, b_hh, w_hr), None where absent
Steps = list[tuple[int, int, int]]  # (lo, hi, n) per step: its packed rows and batch size
Blocks = tuple[tuple[int, int], ...]  # (k, width) per block, see functional.cells.CellKind
Pool = dict[Any, Any]  # reusable work arrays, keyed by the caller

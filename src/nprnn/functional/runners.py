"""How the independent parts of a compiled scan run.

A runner has ``ranges(lengths, row_work) -> [(r0, r1), ...]``, the row ranges a batch of
sequences with these lengths splits into, and ``run(parts)``, which calls each part
and returns when all are done.  The kernels take one as an argument and know nothing of
threads: :data:`SERIAL`, the default, runs everything on the calling thread, and
:data:`nprnn.threads.THREADED` splits large batches across threads.
"""
from __future__ import annotations


class SerialRunner:
    """One range, run on the calling thread."""

    def ranges(self, lengths, row_work: int) -> list:
        return [(0, len(lengths))]

    def run(self, parts) -> None:
        for part in parts:
            part()


SERIAL = SerialRunner()

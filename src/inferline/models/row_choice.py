"""Which row count a step's kernels are chosen for (the int4/W8A8 switch of `mixed`)."""

from __future__ import annotations

import contextlib
import contextvars
from collections.abc import Iterator

_KERNEL_ROWS: contextvars.ContextVar[int | None] = contextvars.ContextVar(
    "kernel_rows", default=None
)


@contextlib.contextmanager
def kernels_chosen_for(rows: int) -> Iterator[None]:
    """Within, projections choose their kernel as for a batch of ``rows`` rows, whatever
    the batch's size. A step with speculative drafts runs the kernels the step would run
    without them: the kernels compute each row on its own, so the verification computes
    what plain decoding would (greedy output unchanged by speculation)."""
    token = _KERNEL_ROWS.set(rows)
    try:
        yield
    finally:
        _KERNEL_ROWS.reset(token)


def kernel_rows(rows: int) -> int:
    """The row count kernels are chosen for in a batch of ``rows`` rows."""
    return _KERNEL_ROWS.get() or rows

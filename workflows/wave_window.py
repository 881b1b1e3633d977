"""A large wave's batches under one ``max_parallel`` budget: lanes that never drain mid-wave.

Before this (and still when replaying histories recorded before ``WAVE_WINDOW_PATCH``), a wave over
``BATCH_SIZE`` targets ran its ``TargetBatch`` children one after another, each with the whole
``max_parallel``: parallelism fell to zero at the end of every batch (its slowest mutation held up
the next batch), so a 10,000-target wave drained 100 times.

Now the wave runs ``min(batches, max_parallel)`` *lanes* at once, which share the budget
(:func:`lane_widths`: the widths add up to ``max_parallel`` exactly, so at most ``max_parallel``
mutations of the wave run at any time). Each lane takes the next batch from the wave's queue as soon
as its previous batch ends. With fewer batches than ``max_parallel`` every lane runs one batch, so
nothing waits at a batch boundary; with more, every lane is one mutation wide and applies its
batch's targets back to back, so a lane's only pause between batches is the start of the next
child. After a failure (or an operator's stop) no lane starts another batch; the batches in flight
end, and the first failure is raised once they have.

Each batch is still a saga step whose revert batch is registered before it starts (the caller's
``run_batch`` does that), so an unwind reverts every batch that started, in reverse start order.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Awaitable, Callable
from typing import TypeVar

T = TypeVar("T")

WAVE_WINDOW_PATCH = "wave-window"
"""``workflow.patched`` id: a wave's batches run in lanes sharing ``max_parallel`` (this module)."""


def lane_widths(batches: int, max_parallel: int) -> list[int]:
    """The parallelism of each lane: ``min(batches, max_parallel)`` lanes summing to the budget.

    >>> lane_widths(3, 50)
    [17, 17, 16]
    >>> lane_widths(100, 50) == [1] * 50
    True
    """
    lanes = max(1, min(batches, max_parallel))
    base, extra = divmod(max(max_parallel, lanes), lanes)
    return [base + (1 if i < extra else 0) for i in range(lanes)]


async def run_in_lanes(
    batches: list[T],
    max_parallel: int,
    run_batch: Callable[[T, int], Awaitable[object]],
    should_stop: Callable[[], bool] = lambda: False,
) -> None:
    """Run every batch through ``run_batch(batch, width)`` in lanes; raise the first failure.

    Lanes pull batches in order from one queue, so batch ``i`` starts no later than batch ``i+1``
    (deterministic: the workflow's event loop resumes tasks in a fixed order).
    """
    queue = deque(batches)
    failed: list[BaseException] = []

    async def lane(width: int) -> None:
        while queue and not failed and not should_stop():
            batch = queue.popleft()
            try:
                await run_batch(batch, width)
            except BaseException as exc:
                failed.append(exc)
                raise

    await asyncio.gather(
        *(lane(w) for w in lane_widths(len(batches), max_parallel)), return_exceptions=True
    )
    if failed:
        raise failed[0]

"""A batch's targets in chunks: one ``apply_change_many`` activity applies several targets.

Used by ``TargetBatch`` when the change kind declares ``apply_many_size`` (learned from
``validate_change`` through ``MutationOptions.apply_many``) and the batch runs behind
``APPLY_MANY_PATCH``; histories recorded before it, and kinds that do not opt in, keep one
``apply_change`` per target (:func:`workflows.mutations.apply_targets`).

The batch's ``max_parallel`` budget still counts mutations: its targets are cut into chunks of at
most ``apply_many`` targets, with at least ``max_parallel`` chunks when there are that many
targets, and at most ``max_parallel`` chunks run at once, each applying its targets one after the
other, so no more than ``max_parallel`` mutations are ever in flight. Each target keeps its own
idempotency key, result, ledger record and compensation (the parent's revert batch reverts each
target on its own, ``revert_if_applied``). After the first failure no chunk starts; the ones in
flight end and the first failure is raised, as in ``apply_targets``.
"""

from __future__ import annotations

import asyncio
import functools
import math
from collections.abc import Callable
from typing import Any

from temporalio import workflow
from temporalio.exceptions import ApplicationError, is_cancelled_exception

with workflow.unsafe.imports_passed_through():
    import workflows.calls as calls
    import workflows.observe as observe
    from workflows.apply_many_models import ApplyManyInput, ApplyManyResult
    from workflows.models import ApplyInput, ApplyResult, Target
    from workflows.mutation_keys import apply_input, revert_input
    from workflows.mutations import STOP_CANCELS_PATCH, cancel_when_stopped, revert_one
    from workflows.progress_models import MutationOptions
    from workflows.saga import Saga
    from workflows.summaries import line

APPLY_MANY_PATCH = "apply-many"
"""``workflow.patched`` id: a batch of an opted-in kind applies its targets in chunks."""


APPLY_MANY_ROUNDS_PATCH = "apply-many-rounds"
"""``workflow.patched`` id: chunks come in whole rounds of ``max_parallel`` (:func:`rounds`)."""


def rounds(targets: list[Target], size: int, max_parallel: int) -> list[list[Target]]:
    """``targets`` in order, in chunks of at most ``size``, as whole rounds of ``max_parallel``.

    :func:`chunks` cut 100 targets, 25 at most, 3 at a time into 25, 25, 25, 25: the fourth chunk
    then ran alone, one mutation in flight of the three allowed, for a quarter of the batch. Here
    the number of chunks is a multiple of ``max_parallel`` (six of 17 or 15), so every round keeps
    the whole budget busy but the last chunk's few targets.

    >>> [len(c) for c in rounds([Target(id=str(i)) for i in range(100)], 25, 3)]
    [17, 17, 17, 17, 17, 15]
    """
    width = max(1, max_parallel)
    per_round = math.ceil(len(targets) / (width * max(1, size)))
    per = max(1, math.ceil(len(targets) / (width * max(1, per_round))))
    return [targets[i : i + per] for i in range(0, len(targets), per)]


def chunks(targets: list[Target], size: int, max_parallel: int) -> list[list[Target]]:
    """``targets`` in order, in chunks of at most ``size``, and at least ``max_parallel`` chunks.

    >>> [len(c) for c in chunks([Target(id=str(i)) for i in range(100)], 25, 1)]
    [25, 25, 25, 25]
    >>> [len(c) for c in chunks([Target(id=str(i)) for i in range(10)], 25, 4)]
    [3, 3, 3, 1]
    """
    per = max(1, min(size, math.ceil(len(targets) / max(1, max_parallel))))
    return [targets[i : i + per] for i in range(0, len(targets), per)]


async def apply_chunks(
    *,
    change_id: str,
    kind: str,
    params: dict[str, Any],
    targets: list[Target],
    max_parallel: int,
    options: MutationOptions,
    on_applied: Callable[[str], None],
    on_result: Callable[[ApplyResult], None],
    on_error: Callable[[str, BaseException], None],
    saga: Saga | None = None,
    on_reverted: Callable[[str], None] = lambda _: None,
    should_stop: Callable[[], bool] = lambda: False,
) -> None:
    """Apply ``targets`` in chunks of ``options.apply_many``; raise the first failure at the end.

    Without ``saga`` (a ``TargetBatch``: its parent registered a revert batch for all of them) the
    chunks are only applied. With one (a small wave in ``GuardedChange``, ``WAVE_APPLY_MANY_PATCH``)
    each target of a chunk gets its own compensation (``revert_change``) registered before the chunk
    starts, as :func:`~workflows.mutations.apply_targets` registers one per mutation; once the chunk
    reports, the targets it never attempted (after its failed one) are left alone, and a chunk that
    never reports (cancelled, or failed as a whole) has every target reverted, which
    ``revert_if_applied`` makes safe. ``should_stop`` (an operator's stop) starts no further chunk
    and cancels the ones in flight (``STOP_CANCELS_PATCH``), as ``apply_targets`` does.
    """
    limit = asyncio.Semaphore(max_parallel)
    failed: list[BaseException] = []
    running: dict[str, asyncio.Future[ApplyManyResult]] = {}
    stopped = False  # a stop cancelled the chunks in flight
    finished = False

    async def call(chunk: list[Target], items: list[ApplyInput]) -> ApplyManyResult:
        with observe.span("mutations", observe.many_attributes(items)) as current:
            out = await observe.chunk_outcome_of(
                current,
                calls.apply_change_many(
                    ApplyManyInput(items=items),
                    start_to_close=options.start_to_close * len(chunk),
                    heartbeat=options.heartbeat_timeout,
                    summary=line(f"{kind} {chunk[0].id}..{chunk[-1].id} ({len(chunk)} targets)"),
                ),
            )
        return out

    async def compensate(item: ApplyInput, reported: list[set[str]]) -> None:
        if reported and item.target.id not in reported[0]:
            return  # its chunk reported and stopped before this target: nothing to undo
        result = await revert_one(revert_input(item), options)
        if result.took_effect:
            if not reported:  # its chunk never reported (cancelled): it was applied all the same
                on_applied(item.target.id)
            on_reverted(item.target.id)

    async def one(chunk: list[Target]) -> None:
        reported: list[set[str]] = []  # what the chunk attempted, once it reports
        async with limit:
            if failed or should_stop():
                return
            items = [apply_input(change_id, kind, params, t) for t in chunk]
            try:
                if saga is None:
                    out = await call(chunk, items)
                else:
                    for item in items:
                        saga.add(item.target.id, functools.partial(compensate, item, reported))
                    work = asyncio.ensure_future(call(chunk, items))
                    running[chunk[0].id] = work
                    try:
                        out = await work
                    finally:
                        running.pop(chunk[0].id, None)
            except BaseException as exc:
                if stopped and is_cancelled_exception(exc):
                    return  # cancelled by the stop; every target's compensation is registered
                failed.append(exc)
                on_error(chunk[0].id, exc)
                raise
            reported.append(
                {r.target_id for r in out.results}
                | ({out.failed.target_id} if out.failed is not None else set())
            )
            for result in out.results:
                on_result(result)
                on_applied(result.target_id)
            if out.failed is not None:
                refused = ApplicationError(
                    out.failed.message,
                    out.failed.details,
                    type=out.failed.type or None,
                    non_retryable=True,
                )
                failed.append(refused)
                on_error(out.failed.target_id, refused)
                raise refused

    async def cancel_on_stop() -> None:
        nonlocal stopped
        stopped = await cancel_when_stopped(
            running, should_stop, lambda: finished, STOP_CANCELS_PATCH
        )

    cut = rounds if workflow.patched(APPLY_MANY_ROUNDS_PATCH) else chunks
    watch = asyncio.ensure_future(cancel_on_stop()) if saga is not None else None
    await asyncio.gather(
        *(one(c) for c in cut(targets, options.apply_many, max_parallel)),
        return_exceptions=True,
    )
    finished = True
    if watch is not None:
        await watch
    if failed:
        raise failed[0]

"""Applying targets as saga steps: the loop shared by ``GuardedChange`` and ``TargetBatch``.

Each target's compensation (``revert_change``, which is ``revert_if_applied``-safe) is registered
before its mutation runs; at most ``max_parallel`` run at once; after the first failure, or once
``should_stop`` says so, no further mutation starts and the in-flight ones are awaited.

Activity options come from the change kind (:class:`~workflows.progress_models.MutationOptions`,
learned from ``validate_change`` at the start of the change, :func:`options_from`): its
start-to-close timeout, and a heartbeat timeout of three heartbeat intervals (a worker that misses
three beats is presumed dead and the attempt retried, resuming from its last checkpoint). Without
options (histories of older workers, callers that pass none) the historical 5 minutes / 10 s apply.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Mapping
from datetime import timedelta
from typing import Any

from temporalio import workflow
from temporalio.exceptions import ApplicationError, is_cancelled_exception

with workflow.unsafe.imports_passed_through():
    import workflows.calls as calls
    import workflows.observe as observe
    from workflows.calls import MUTATION_HEARTBEAT as MUTATION_HEARTBEAT
    from workflows.calls import MUTATION_TIMEOUT as MUTATION_TIMEOUT
    from workflows.models import (
        ApplyInput,
        ApplyResult,
        Target,
        ValidateChangeResult,
    )
    from workflows.mutation_keys import apply_input, revert_input
    from workflows.progress_models import MutationOptions
    from workflows.saga import Saga
    from workflows.summaries import apply_summary, revert_summary


STOP_CANCELS_PATCH = "stop-cancels-mutations"
"""``workflow.patched`` id: an operator's stop cancels the change's mutations still in flight, so
its unwind need not wait for them. Before, a rollback waited for every scheduled mutation to run
and end, behind the other changes' forward work in a busy task queue (p95 22 s from the update to
the first compensation in ``bench/concurrent_changes.py``). A mutation not yet started is removed by
the server at once; a started one is cancelled at its next heartbeat, and the workflow waits for it
to stop (``WAIT_CANCELLATION_COMPLETED``), so no mutation lands after its compensation (I3)."""


def options_from(validation: ValidateChangeResult) -> MutationOptions | None:
    """The kind's activity options from ``validate_change``'s result (None: an older worker's)."""
    if validation.start_to_close is None or validation.heartbeat_interval is None:
        return None
    return MutationOptions(
        start_to_close=validation.start_to_close,
        heartbeat_interval=validation.heartbeat_interval,
        stall_after=validation.stall_after,
        apply_many=validation.apply_many,
    )


def _timeouts(options: MutationOptions | None) -> tuple[timedelta, timedelta]:
    if options is None:
        return MUTATION_TIMEOUT, MUTATION_HEARTBEAT
    return options.start_to_close, options.heartbeat_timeout


async def apply_one(inp: ApplyInput, options: MutationOptions | None = None) -> ApplyResult:
    """Run one mutation activity (heartbeating, retried with the change kind's backoff).

    On cancellation the workflow waits until the activity has really stopped (or finished):
    otherwise the compensation could run first and the mutation land after it (invariant I3).
    """
    with observe.span("mutation", observe.mutation_attributes(inp)) as current:
        result = await observe.outcome_of(current, _apply_one(inp, options))
    return result


async def _apply_one(inp: ApplyInput, options: MutationOptions | None) -> ApplyResult:
    start_to_close, heartbeat = _timeouts(options)
    return await calls.apply_change(
        inp,
        start_to_close=start_to_close,
        heartbeat=heartbeat,
        summary=apply_summary(inp.kind, inp.target.id),
    )


async def revert_one(inp: ApplyInput, options: MutationOptions | None = None) -> ApplyResult:
    """Run one compensation activity."""
    with observe.span("compensation", observe.mutation_attributes(inp)) as current:
        result = await observe.outcome_of(current, _revert_one(inp, options))
    return result


async def _revert_one(inp: ApplyInput, options: MutationOptions | None) -> ApplyResult:
    start_to_close, heartbeat = _timeouts(options)
    return await calls.revert_change(
        inp,
        start_to_close=start_to_close,
        heartbeat=heartbeat,
        summary=revert_summary(inp.target.id),
    )


async def apply_targets(
    saga: Saga,
    *,
    change_id: str,
    kind: str,
    params: dict[str, Any],
    targets: list[Target],
    max_parallel: int,
    on_applied: Callable[[str], None],
    on_reverted: Callable[[str], None],
    should_stop: Callable[[], bool] = lambda: False,
    options: MutationOptions | None = None,
    on_result: Callable[[ApplyResult], None] | None = None,
    on_error: Callable[[str, BaseException], None] | None = None,
) -> None:
    """Apply ``targets`` as saga steps; raise the first failure once in-flight ones settle.

    ``options`` are the kind's activity options (:func:`options_from`); None keeps the defaults.
    ``on_result`` sees every mutation's result (``ApplyResult.irreversible`` names the steps that
    put the target past its point of no return); a failure's are in :func:`irreversible_in`.
    """
    limit = asyncio.Semaphore(max_parallel)
    failed: list[BaseException] = []
    running: dict[str, asyncio.Future[ApplyResult]] = {}
    stopped = False  # a stop cancelled the mutations in flight (STOP_CANCELS_PATCH)
    finished = False

    async def compensate(inp: ApplyInput) -> None:
        result = await revert_one(inp, options)
        if result.took_effect:  # reverted now, or by an attempt that ended before a crash
            on_reverted(inp.target.id)

    async def one(target: Target) -> None:
        async with limit:
            if failed or should_stop():
                return
            apply = apply_input(change_id, kind, params, target)
            revert = revert_input(apply)
            mutation = asyncio.ensure_future(
                saga.run(target.id, lambda: apply_one(apply, options), lambda: compensate(revert))
            )
            running[target.id] = mutation
            try:
                result = await mutation
            except BaseException as exc:
                if stopped and is_cancelled_exception(exc):
                    return  # cancelled by the stop; its compensation is registered
                failed.append(exc)
                if on_error is not None:
                    on_error(target.id, exc)
                raise
            finally:
                running.pop(target.id, None)
            if on_result is not None:
                on_result(result)
            on_applied(target.id)

    async def cancel_on_stop() -> None:
        nonlocal stopped
        stopped = await cancel_when_stopped(
            running, should_stop, lambda: finished, STOP_CANCELS_PATCH
        )

    watch = asyncio.ensure_future(cancel_on_stop())
    await asyncio.gather(*(one(t) for t in targets), return_exceptions=True)
    finished = True
    await watch
    if failed:
        raise failed[0]


async def cancel_when_stopped(
    running: Mapping[str, asyncio.Future[Any]],
    should_stop: Callable[[], bool],
    finished: Callable[[], bool],
    patch: str,
) -> bool:
    """Wait until ``should_stop()`` (or ``finished()``); then cancel everything ``running``.

    Only behind ``workflow.patched(patch)``, asked only when a stop meets work in flight (so
    histories without such a stop replay as they were). True when it cancelled: the caller marks
    itself stopped before any cancelled task runs (nothing is awaited after the cancellations).
    """
    await workflow.wait_condition(lambda: finished() or should_stop())
    if finished() or not running or not workflow.patched(patch):
        return False
    for work in list(running.values()):
        work.cancel()
    return True


def irreversible_in(exc: BaseException) -> list[str]:
    """Irreversible steps a failed mutation left in effect (from its error's details), if any."""
    inner: BaseException | None = exc
    while inner is not None and not isinstance(inner, ApplicationError):
        inner = getattr(inner, "cause", None)
    if inner is None or not inner.details or not isinstance(inner.details[0], dict):
        return []
    found = inner.details[0].get("irreversible", [])
    return [str(s) for s in found] if isinstance(found, list) else []

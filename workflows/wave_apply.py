"""Applying one wave: in the workflow when small, else in ``TargetBatch`` children.

Deterministic workflow code, used by the rollout (:mod:`workflows.rollout`). A
:class:`WaveApplier` registers every mutation (or batch) as a step of the change's saga, keeps the
status's applied and reverted lists, tells the :class:`~workflows.compensation.PointOfNoReturn`
about irreversible steps, and starts no mutation once an operator has stopped the change.
"""

from __future__ import annotations

import asyncio
import functools

from temporalio import workflow
from temporalio.exceptions import ApplicationError, ChildWorkflowError, is_cancelled_exception

with workflow.unsafe.imports_passed_through():
    import workflows.errors as errors
    import workflows.ids as ids
    from workflows.apply_many import apply_chunks
    from workflows.batch import TargetBatchWorkflow
    from workflows.change_run import ChangeRun
    from workflows.compensation import PointOfNoReturn
    from workflows.models import BatchInput, BatchResult, ChangeRequest, Target, WaveProgress
    from workflows.mutations import apply_targets, cancel_when_stopped
    from workflows.progress_models import MutationOptions
    from workflows.saga import Saga
    from workflows.summaries import line
    from workflows.wave_window import WAVE_WINDOW_PATCH, run_in_lanes

BATCH_SIZE = 100
"""Waves larger than this run in ``TargetBatch`` children, keeping every history small."""

WAVE_APPLY_MANY_PATCH = "wave-apply-many"
"""``workflow.patched`` id: a small wave of a kind that declares ``apply_many_size`` applies its
targets in ``apply_change_many`` chunks too, each target with its own compensation registered
before its chunk starts (:func:`workflows.apply_many.apply_chunks` with the change's saga). Before,
only ``TargetBatch`` children used chunks, and a wave of up to ``BATCH_SIZE`` targets made one
``apply_change`` per target: a 20-target change five at a time made 20 mutation activities instead
of 5 (``bench/concurrent_changes.py``)."""

STOP_CANCELS_BATCHES_PATCH = "stop-cancels-batches"
"""``workflow.patched`` id: an operator's stop cancels a large wave's ``TargetBatch`` children in
flight, as it cancels a small wave's mutations (``STOP_CANCELS_PATCH``). Before, every batch in
flight applied the rest of its targets first: with 50 one-wide lanes of 100 targets, up to 5,000
mutations after the abort. Each cancelled batch cancels its own mutations, waits until they have
stopped, and reports what it applied (``BatchStopped``); then the unwind reverts every batch that
started, through the revert batch registered before it."""


def _stopped(exc: ChildWorkflowError) -> bool:
    """Whether a batch ended because the stop cancelled it (not by a failure of its own)."""
    cause = exc.cause
    return is_cancelled_exception(exc) or (
        isinstance(cause, ApplicationError) and cause.type == errors.BATCH_STOPPED
    )


class WaveApplier:
    """Apply a wave's targets as saga steps, directly or in ``TargetBatch`` children."""

    def __init__(self, change: ChangeRun, saga: Saga, past: PointOfNoReturn) -> None:
        self._change = change
        self._saga = saga
        self._past = past
        self.options: MutationOptions | None = None  # the kind's, from validate_change

    async def apply(
        self, request: ChangeRequest, targets: list[Target], wave: WaveProgress
    ) -> None:
        """Apply one wave: in this workflow when small, else in ``TargetBatch`` children."""
        change, status = self._change, self._change.status
        seen = set(status.applied)  # a set: a list scan per target grew as N squared

        def applied(target_id: str) -> None:
            wave.applied.append(target_id)
            if target_id not in seen:  # a roll forward replays applied targets
                seen.add(target_id)
                status.applied.append(target_id)

        options = self.options
        if (
            len(targets) <= BATCH_SIZE
            and options is not None
            and options.apply_many > 1
            and workflow.patched(WAVE_APPLY_MANY_PATCH)
        ):
            await apply_chunks(
                change_id=change.change_id,
                kind=request.kind,
                params=request.params,
                targets=targets,
                max_parallel=request.rollout.max_parallel,
                options=options,
                on_applied=applied,
                on_result=self._past.note_result,
                on_error=self._past.note_error,
                saga=self._saga,
                on_reverted=status.reverted.append,
                should_stop=lambda: change.stop is not None,
            )
        elif len(targets) <= BATCH_SIZE:
            await apply_targets(
                self._saga,
                change_id=change.change_id,
                kind=request.kind,
                params=request.params,
                targets=targets,
                max_parallel=request.rollout.max_parallel,
                on_applied=applied,
                on_reverted=status.reverted.append,
                should_stop=lambda: change.stop is not None,
                options=self.options,
                on_result=self._past.note_result,
                on_error=self._past.note_error,
            )
        elif workflow.patched(WAVE_WINDOW_PATCH):  # batches in lanes sharing max_parallel
            running: dict[str, asyncio.Task[BatchResult]] = {}
            stopping = False  # a stop cancelled the batches in flight (STOP_CANCELS_BATCHES_PATCH)
            finished = False

            async def lane_batch(batch: list[Target], width: int) -> None:
                step = asyncio.ensure_future(
                    self._saga.run(
                        f"batch {batch[0].id}..{batch[-1].id}",
                        functools.partial(self._batch, request, batch, "apply", width),
                        functools.partial(self._batch, request, batch, "revert"),
                    )
                )
                running[batch[0].id] = step
                try:
                    result = await step
                except ChildWorkflowError as exc:
                    # Batches still in flight may yet reach the point of no return: keep what
                    # this one applied (in order, once) for the repair list, as small waves do.
                    cause = exc.cause
                    if isinstance(cause, ApplicationError) and cause.details:
                        seen.update(status.applied)
                        for target_id in BatchResult.model_validate(cause.details[0]).done:
                            applied(target_id)
                    if stopping and _stopped(exc):
                        return  # cancelled by the stop; its revert batch is registered
                    raise
                except asyncio.CancelledError:  # cancelled before its child had started
                    if stopping:
                        return
                    raise
                finally:
                    running.pop(batch[0].id, None)
                for target_id in result.done:
                    applied(target_id)

            async def cancel_on_stop() -> None:
                nonlocal stopping
                stopping = await cancel_when_stopped(
                    running,
                    lambda: change.stop is not None,
                    lambda: finished,
                    STOP_CANCELS_BATCHES_PATCH,
                )

            watch = asyncio.ensure_future(cancel_on_stop())
            batches = [targets[i : i + BATCH_SIZE] for i in range(0, len(targets), BATCH_SIZE)]
            try:
                await run_in_lanes(
                    batches,
                    request.rollout.max_parallel,
                    lane_batch,
                    should_stop=lambda: change.stop is not None,
                )
            finally:
                finished = True
            await watch
        else:
            for start in range(0, len(targets), BATCH_SIZE):
                if change.stop is not None:
                    break
                batch = targets[start : start + BATCH_SIZE]
                result = await self._saga.run(
                    f"batch {batch[0].id}..{batch[-1].id}",
                    functools.partial(self._batch, request, batch, "apply"),
                    functools.partial(self._batch, request, batch, "revert"),
                )
                for target_id in result.done:
                    applied(target_id)
        if change.stop is not None:
            raise change.stop

    async def _batch(
        self, request: ChangeRequest, batch: list[Target], mode: str, width: int | None = None
    ) -> BatchResult:
        """Run one ``TargetBatch`` child; a revert batch's partial results are kept on failure.

        ``width``: the batch's share of ``max_parallel`` (its lane's, see ``wave_window``).
        """
        change_id, status = self._change.change_id, self._change.status
        child_id = ids.batch_id(change_id, mode, batch[0].id)
        try:
            result = await workflow.execute_child_workflow(
                TargetBatchWorkflow.run,
                BatchInput(
                    change_id=change_id,
                    kind=request.kind,
                    params=request.params,
                    targets=batch,
                    max_parallel=width or request.rollout.max_parallel,
                    mode=mode,
                    mutation_options=(
                        self.options.model_dump(mode="json") if self.options else None
                    ),
                ),
                id=child_id,
                static_summary=line(f"{mode} {batch[0].id}..{batch[-1].id} ({len(batch)} targets)"),
            )
        except ChildWorkflowError as exc:
            cause = exc.cause
            if mode == "revert" and isinstance(cause, ApplicationError) and cause.details:
                partial = BatchResult.model_validate(cause.details[0])
                status.reverted.extend(partial.done)
                self._past.needs_repair.extend(f.step for f in partial.failures)
            elif mode == "apply" and isinstance(cause, ApplicationError) and cause.details:
                self._past.note_batch(BatchResult.model_validate(cause.details[0]), failed=True)
            raise
        if mode == "revert":
            status.reverted.extend(result.done)
        else:
            self._past.note_batch(result)
        return result

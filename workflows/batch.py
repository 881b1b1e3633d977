"""The ``TargetBatch`` child workflow: one slice of a large wave, applied or reverted.

Large waves are split into batches so that no history grows with the number of targets: the
parent records a handful of events per batch, each batch a few per target. In ``apply`` mode a
batch applies its targets as saga steps and, on failure, stops starting new ones and fails — it does
not unwind itself: the parent registered a ``revert`` batch over the same targets before starting
this one, and reverting is ``revert_if_applied``-safe. In ``revert`` mode it reverts every target in
reverse order, continues past failures and reports them.

The kind's activity options travel in ``BatchInput.mutation_options`` (a field the parent fills
from ``validate_change``); a batch started without them (older parents) uses the defaults.

Irreversible steps a batch ran go back to the parent in ``BatchResult.irreversible`` (target →
steps), also when the batch fails: a failed apply batch fails with the failing mutation's message
and type and its ``BatchResult`` (targets applied, irreversible steps) as details. So the parent
reaches its point of no return through batches too, and past it knows every target a failed batch
left applied (a human repairs them: nothing is undone).

An operator's stop reaches a batch as a cancellation from its parent (``STOP_CANCELS_BATCHES_PATCH``
in :mod:`workflows.wave_apply`): the batch's mutations in flight are cancelled, the batch waits
until they have really stopped, and it fails ``BatchStopped`` with its ``BatchResult`` so far, so
the parent learns what it applied (and any irreversible step) before it unwinds.
"""

from __future__ import annotations

import asyncio
from typing import Any

from pydantic import ValidationError
from temporalio import workflow
from temporalio.exceptions import ActivityError, ApplicationError, is_cancelled_exception

with workflow.unsafe.imports_passed_through():
    import workflows.errors as errors
    from workflows.apply_many import APPLY_MANY_PATCH, apply_chunks
    from workflows.inputs import Refusal, decode
    from workflows.models import ApplyResult, BatchInput, BatchResult, CompensationFailure
    from workflows.mutation_keys import apply_input, revert_input
    from workflows.mutations import apply_targets, irreversible_in, revert_one
    from workflows.progress_models import MutationOptions
    from workflows.saga import Saga
    from workflows.unwind import failure_of

BATCH_STOP_PATCH = "batch-reports-stop"
"""``workflow.patched`` id: a cancelled apply batch fails ``BatchStopped`` with what it applied
(before, a cancelled batch ended cancelled and its parent learned nothing of it)."""


@workflow.defn(name="TargetBatch", failure_exception_types=[ValidationError])
class TargetBatchWorkflow:
    """Apply or revert one batch of targets."""

    @workflow.run
    async def run(self, *args: Any) -> BatchResult:
        """Apply (saga steps, stop at the first failure) or revert (all, reverse order)."""
        inp = decode(BatchInput, args, what="the batch input")
        if isinstance(inp, Refusal):  # a raw client's start: fail the run, never its tasks
            raise ApplicationError(inp.why, type=errors.INVALID_INPUT, non_retryable=True)
        if inp.mode == "revert":
            return await self._revert(inp)
        result = BatchResult()

        def note_error(target_id: str, exc: BaseException) -> None:
            steps = irreversible_in(exc)
            if steps:
                result.irreversible[target_id] = steps

        options = _options(inp)
        try:
            if (
                options is not None
                and options.apply_many > 1
                and workflow.patched(APPLY_MANY_PATCH)
            ):
                await apply_chunks(  # several targets per activity; each its own key and result
                    change_id=inp.change_id,
                    kind=inp.kind,
                    params=inp.params,
                    targets=inp.targets,
                    max_parallel=inp.max_parallel,
                    options=options,
                    on_applied=result.done.append,
                    on_result=lambda r: _note_result(result, r),
                    on_error=note_error,
                )
                return result
            await apply_targets(
                Saga(),  # compensation is the parent's revert batch, registered before this one
                change_id=inp.change_id,
                kind=inp.kind,
                params=inp.params,
                targets=inp.targets,
                max_parallel=inp.max_parallel,
                on_applied=result.done.append,
                on_reverted=lambda _: None,
                options=options,
                on_result=lambda r: _note_result(result, r),
                on_error=note_error,
            )
        except asyncio.CancelledError:  # the change's stop: its mutations in flight have stopped
            if not workflow.patched(BATCH_STOP_PATCH):
                raise
            raise ApplicationError(
                f"stopped by the change's stop after {len(result.done)} of "
                f"{len(inp.targets)} target(s)",
                result.model_dump(mode="json"),
                type=errors.BATCH_STOPPED,
                non_retryable=True,
            ) from None
        except (ActivityError, ApplicationError) as exc:
            if is_cancelled_exception(exc):
                raise
            message, kind = failure_of(exc)
            raise ApplicationError(
                message, result.model_dump(mode="json"), type=kind, non_retryable=True
            ) from exc
        return result

    async def _revert(self, inp: BatchInput) -> BatchResult:
        result = BatchResult()
        for target in reversed(inp.targets):
            revert = revert_input(apply_input(inp.change_id, inp.kind, inp.params, target))
            try:
                if (await revert_one(revert, _options(inp))).took_effect:
                    result.done.append(target.id)
            except BaseException as exc:  # keep going: every target gets its chance
                message, kind = failure_of(exc)
                result.failures.append(
                    CompensationFailure(step=target.id, error=message, error_type=kind)
                )
        if result.failures:
            names = ", ".join(f.step for f in result.failures)
            raise ApplicationError(
                f"reverting {len(result.failures)} target(s) failed: {names}",
                result.model_dump(mode="json"),
                type="RevertFailed",
                non_retryable=True,
            )
        return result


def _note_result(batch: BatchResult, result: ApplyResult) -> None:
    if result.irreversible:
        batch.irreversible[result.target_id] = list(result.irreversible)


def _options(inp: BatchInput) -> MutationOptions | None:
    """The kind's options the parent passed, if its ``BatchInput`` has the field (see above)."""
    raw = getattr(inp, "mutation_options", None)
    if raw is None:
        return None
    return raw if isinstance(raw, MutationOptions) else MutationOptions.model_validate(raw)

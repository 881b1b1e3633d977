"""Change activities: validate, apply, revert and describe through the registered change kinds.

Thin entry points over ``activities/kinds``. Every mutation carries the idempotency key the workflow
derived from (change id, step, target), so retries and late attempts never apply an effect twice.

Each mutation and compensation that took effect is written to the change ledger (the audit store)
from here (:mod:`activities.effects`), keyed by its idempotency key: the record exists exactly when
the effect does, a retried attempt writes nothing new, and the workflow's history does not grow by
an activity per target.
A mutation that reports it changed nothing — neither now nor by an earlier attempt of the same key
— fails that target (``NothingApplied``): an "applied to 2 targets" over unchanged hosts is a lie.

Long-running mutations (docs/long-running-changes.md): every apply and revert runs inside a
:class:`~activities.kinds.progress.Progress` handle (checkpointed heartbeats; a kind that takes the
``progress`` keyword receives it). A Temporal activity *pause* arrives as a cancellation whose
details say ``paused``: the attempt stops and fails retryably (``MutationPaused``, carrying the last
checkpoint), the server schedules nothing until the activity is unpaused, and the next attempt
resumes from that checkpoint; the workflow never sees it. A *cancel* propagates as a cancellation,
and the workflow's saga compensates. A kind that hands its work to an external system ends the
attempt with ``raise_complete_async``; the callback endpoint finishes it through
:meth:`ChangeActivities.finish_handoff`, which applies the same NothingApplied rule and ledger
write as a mutation that returns.
"""

from __future__ import annotations

import asyncio
import contextlib
from typing import TYPE_CHECKING, Any

import structlog
from pydantic import ValidationError
from temporalio import activity
from temporalio.exceptions import ApplicationError

from activities import observe
from activities.effects import EffectLedger
from activities.kinds.base import ChangeKind, accepts_progress, default_registry
from activities.kinds.progress import Progress
from guardrails.plugins import PluginRegistry, params_errors
from workflows import errors
from workflows.apply_many_models import (
    ApplyManyCheckpoint,
    ApplyManyFailure,
    ApplyManyInput,
    ApplyManyResult,
)
from workflows.models import (
    ApplyInput,
    ApplyResult,
    AuditAction,
    DescribeInput,
    TargetState,
    ValidateChangeInput,
    ValidateChangeResult,
)
from workflows.progress_models import HandoffTicket
from workflows.types import excerpt

if TYPE_CHECKING:
    from activities.audit import AuditStore

log = structlog.get_logger(__name__)


class ChangeActivities:
    """Activities that mutate targets, bound to a change-kind registry.

    Args:
        kinds: the registry change kinds are looked up in (default: every entry point).
        ledger: where effects that took place are recorded (the audit store); ``None`` records
            nothing (unit tests of a kind alone).
        change_events: the worker has a change-event sink; ``validate_change`` tells the change,
            which then emits its events (:mod:`workflows.change_events`).
    """

    def __init__(
        self,
        kinds: PluginRegistry[ChangeKind[Any]] | None = None,
        *,
        ledger: AuditStore | None = None,
        change_events: bool = False,
    ) -> None:
        self.kinds = kinds if kinds is not None else default_registry()
        self.ledger = ledger
        self.effects = EffectLedger(ledger)
        self.change_events = change_events  # the worker has a change-event sink

    def _kind(self, name: str) -> ChangeKind[Any]:
        try:
            return self.kinds.get(name)
        except KeyError as exc:
            raise ApplicationError(
                str(exc.args[0]), type=errors.UNKNOWN_CHANGE_KIND, non_retryable=True
            ) from exc

    def _params(self, kind: ChangeKind[Any], raw: dict[str, Any]) -> Any:
        try:
            return kind.parse_params(raw)
        except ValidationError as exc:
            raise ApplicationError(
                f"params of change kind {kind.name} are invalid: {exc}",
                type=errors.INVALID_INPUT,
                non_retryable=True,
            ) from exc

    @activity.defn(name="validate_change")
    async def validate_change(self, inp: ValidateChangeInput) -> ValidateChangeResult:
        """List every problem with the change kind and its params (empty when valid)."""
        if inp.kind not in self.kinds:
            known = ", ".join(self.kinds.names()) or "none"
            return ValidateChangeResult(
                problems=[f"kind: no change kind named {inp.kind!r} (known: {known})"]
            )
        kind = self.kinds.get(inp.kind)
        problems = params_errors(kind, inp.params)
        if problems:
            return ValidateChangeResult(problems=problems, reversible=kind.reversible)
        params = kind.parse_params(inp.params)
        options = kind.options(params)
        steps = kind.steps(params)
        return ValidateChangeResult(
            reversible=kind.reversible and all(s.reversible for s in steps),
            start_to_close=options.start_to_close,
            heartbeat_interval=options.heartbeat_interval,
            stall_after=options.stall_after,
            steps=[s.model_dump(mode="json") for s in steps],
            irreversible_steps=[s.name for s in steps if not s.reversible],
            change_events=self.change_events,
            apply_many=kind.apply_many_size,
        )

    def _progress(self, kind: ChangeKind[Any], params: Any, inp: ApplyInput) -> Progress[Any]:
        return Progress(
            kind=kind.name,
            target=inp.target.id,
            checkpoint_model=kind.checkpoint_model,
            options=kind.options(params),
            request=inp,
            stage=inp.step,
        )

    @staticmethod
    def _paused(progress: Progress[Any]) -> ApplicationError:
        """The retryable failure of an attempt stopped by an activity pause (not a cancel)."""
        at = progress.latest.model_dump(mode="json") if progress.latest is not None else None
        return ApplicationError(
            f"{progress.target}: the mutation was paused by an operator; it resumes from its last "
            f"checkpoint ({at}) when the activity is unpaused",
            progress.envelope.model_copy(update={"paused": True}).model_dump(mode="json"),
            type=errors.MUTATION_PAUSED,
        )

    def _nothing_applied(self, kind_name: str, inp_target: str, result: ApplyResult) -> None:
        if not result.took_effect:
            raise ApplicationError(
                f"{inp_target}: {kind_name} reports that nothing was applied "
                f"({excerpt(result.detail, 300) or 'no detail'}); the target is not changed",
                type=errors.NOTHING_APPLIED,
                non_retryable=True,
            )

    @activity.defn(name="apply_change")
    async def apply_change(self, inp: ApplyInput) -> ApplyResult:
        """Apply the change to one target, idempotently, with checkpointed heartbeats."""
        with observe.attempt(inp) as seen:
            kind = self._kind(inp.kind)
            params = self._params(kind, inp.params)
            progress = self._progress(kind, params, inp)
            extra: dict[str, Any] = {"progress": progress} if accepts_progress(kind.apply) else {}
            async with progress:
                try:
                    result = await kind.apply(
                        params, inp.target, idempotency_key=inp.idempotency_key, **extra
                    )
                except asyncio.CancelledError:
                    if progress.stopping() == "paused":
                        raise self._paused(progress) from None
                    raise
            result = await self._finish_apply(kind.name, inp, result)
            seen.done(result)
            return result

    @activity.defn(name="apply_change_many")
    async def apply_change_many(self, inp: ApplyManyInput) -> ApplyManyResult:
        """Apply several targets of one change in order, each with its own key, result and record.

        Heartbeats a checkpoint after every target (:class:`ApplyManyCheckpoint`): a retried
        attempt returns the done targets' results without touching them and carries on with the
        rest. A target that fails for good (a non-retryable error) ends the attempt's work: the
        results so far and the failure are returned, the targets after it are not attempted. A
        retryable failure fails the attempt (retried, resuming after the done targets).

        The ledger records (``effect:<key>``) of the targets that took effect are written together,
        in one hop to the store's thread, as the attempt ends, however it ends. A retried attempt
        writes those of the targets its checkpoint names done again first (the store keeps what
        it has), so an attempt that died between a checkpoint and the write leaves them to it.
        """
        if not inp.items:
            return ApplyManyResult()
        first = inp.items[0]
        observe.many_started(inp.items)
        kind = self._kind(first.kind)
        if kind.apply_many_size < 1:
            raise ApplicationError(
                f"change kind {kind.name} does not apply several targets in one activity "
                "(apply_many_size is 0): use apply_change",
                type=errors.INVALID_INPUT,
                non_retryable=True,
            )
        params = self._params(kind, first.params)
        progress: Progress[ApplyManyCheckpoint] = Progress(
            kind=kind.name,
            target=f"{first.target.id} (+{len(inp.items) - 1})",
            checkpoint_model=ApplyManyCheckpoint,
            options=kind.options(params),
            request=first,
            stage=f"apply_many 0/{len(inp.items)}",
        )
        done = dict(progress.resumed_from.done) if progress.resumed_from is not None else {}
        dumped = {key: result.model_dump(mode="json") for key, result in done.items()}
        todo = [i for i in inp.items if i.idempotency_key not in done]
        by_key = {i.idempotency_key: i for i in todo}
        # The ledger records of a chunk are written together, when the chunk ends; a checkpoint
        # may name a target done before its record is written, so a retried attempt first writes
        # the records of the targets its checkpoint names (idempotent: what is there is kept).
        unrecorded = [(i, done[i.idempotency_key]) for i in inp.items if i.idempotency_key in done]
        failed: ApplyManyFailure | None = None
        async with progress:
            pending = iter(todo)
            try:
                # aclosing: a failure below closes the kind's generator (and its client) at once
                async with contextlib.aclosing(
                    kind.apply_many(params, [(i.target, i.idempotency_key) for i in todo])
                ) as applied:
                    async for result in applied:
                        item = next(pending)
                        unrecorded.append((item, result))
                        self._check_applied(kind.name, item, result)  # NothingApplied
                        by_key.pop(item.idempotency_key, None)
                        done[item.idempotency_key] = result
                        dumped[item.idempotency_key] = result.model_dump(mode="json")
                        progress.checkpoint(
                            ApplyManyCheckpoint(done=done),
                            stage=f"apply_many {len(done)}/{len(inp.items)}",
                            dumped={"done": dict(dumped)},  # each result dumped once
                        )
            except asyncio.CancelledError:
                if progress.stopping() == "paused":
                    raise self._paused(progress) from None
                raise
            except ApplicationError as exc:
                if not exc.non_retryable:
                    raise  # retried: the next attempt skips the targets done
                target = next(iter(by_key.values())).target.id if by_key else "?"
                details = exc.details[0] if exc.details and isinstance(exc.details[0], dict) else {}
                failed = ApplyManyFailure(
                    target_id=target, message=exc.message, type=exc.type or "", details=details
                )
            finally:  # however the attempt ends: what took effect is recorded before it does
                await self.effects.record_many(AuditAction.MUTATION, unrecorded)
        results = [done[i.idempotency_key] for i in inp.items if i.idempotency_key in done]
        return ApplyManyResult(results=results, failed=failed)

    async def _finish_apply(
        self, kind_name: str, inp: ApplyInput, result: ApplyResult, *, run_id: str | None = None
    ) -> ApplyResult:
        self._check_applied(kind_name, inp, result)
        await self.effects.record(AuditAction.MUTATION, inp, result, run_id=run_id)
        return result

    def _check_applied(self, kind_name: str, inp: ApplyInput, result: ApplyResult) -> None:
        """Log what one target's attempt did; fail (``NothingApplied``) if nothing was applied."""
        log.info(
            "applied",
            target=inp.target.id,
            idempotency_key=inp.idempotency_key,
            input_sha256=observe.input_checksum(inp),
            attempt=observe.attempt_number(),
            applied=result.applied,
            replayed=result.replayed,
            detail=result.detail,
        )
        self._nothing_applied(kind_name, inp.target.id, result)

    async def finish_handoff(self, ticket: HandoffTicket, result: ApplyResult) -> ApplyResult:
        """Finish a handed-off mutation or compensation from its callback (no activity context).

        The same rules as a returning attempt: NothingApplied fails an apply, and the effect is
        written to the ledger under its idempotency key before the activity completes.

        Raises:
            ApplicationError: ``NothingApplied`` (the callback fails the activity with it), or an
                unkeepable ledger write.
        """
        inp = ApplyInput(
            change_id=ticket.change_id,
            kind=ticket.kind,
            step=ticket.step,
            target={"id": ticket.target_id},
            idempotency_key=ticket.idempotency_key,
            applied_key=ticket.applied_key,
        )
        if ticket.activity == "revert_change":
            await self.effects.record(AuditAction.COMPENSATION, inp, result, run_id=ticket.run_id)
            return result
        return await self._finish_apply(ticket.kind, inp, result, run_id=ticket.run_id)

    @activity.defn(name="revert_change")
    async def revert_change(self, inp: ApplyInput) -> ApplyResult:
        """Undo one target's step if it took effect (``revert_if_applied``), idempotently."""
        with observe.attempt(inp) as seen:
            result = await self._revert(inp)
            seen.done(result)
            return result

    async def _revert(self, inp: ApplyInput) -> ApplyResult:
        kind = self._kind(inp.kind)
        if inp.applied_key is None:
            raise ApplicationError(
                "revert_change needs applied_key", type=errors.INVALID_INPUT, non_retryable=True
            )
        params = self._params(kind, inp.params)
        progress = self._progress(kind, params, inp)
        extra: dict[str, Any] = (
            {"progress": progress} if accepts_progress(kind.revert_if_applied) else {}
        )
        async with progress:
            try:
                result = await kind.revert_if_applied(
                    params,
                    inp.target,
                    applied_key=inp.applied_key,
                    idempotency_key=inp.idempotency_key,
                    **extra,
                )
            except asyncio.CancelledError:
                if progress.stopping() == "paused":
                    raise self._paused(progress) from None
                raise
        log.info(
            "reverted",
            target=inp.target.id,
            idempotency_key=inp.idempotency_key,
            input_sha256=observe.input_checksum(inp),
            applied=result.applied,
            replayed=result.replayed,
            detail=result.detail,
        )
        if result.took_effect and inp.applied_key:
            await self.effects.record_forward(inp, result)
        await self.effects.record(AuditAction.COMPENSATION, inp, result)
        return result

    @activity.defn(name="describe_target")
    async def describe_target(self, inp: DescribeInput) -> TargetState:
        """Report one target's current state."""
        kind = self._kind(inp.kind)
        return await kind.describe(self._params(kind, inp.params), inp.target)

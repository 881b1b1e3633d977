"""Change activities: validate, apply, revert and describe through the registered change kinds.

Thin entry points over ``activities/kinds``. Every mutation carries the idempotency key the workflow
derived from (change id, step, target), so retries and late attempts never apply an effect twice.

Each mutation and compensation that took effect is written to the change ledger (the audit store)
from here, keyed by its idempotency key: the record exists exactly when the effect does, a retried
attempt writes nothing new, and the workflow's history does not grow by an activity per target.
A mutation that reports it changed nothing — neither now nor by an earlier attempt of the same key
— fails that target (``NothingApplied``): an "applied to 2 targets" over unchanged hosts is a lie.
"""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

import structlog
from pydantic import ValidationError
from temporalio import activity
from temporalio.exceptions import ApplicationError

from activities.kinds.base import ChangeKind, default_registry
from activities.resilience import Heartbeat
from guardrails.plugins import PluginRegistry, params_errors
from workflows import errors
from workflows.models import (
    ApplyInput,
    ApplyResult,
    AuditAction,
    AuditRecord,
    DescribeInput,
    TargetState,
    ValidateChangeInput,
    ValidateChangeResult,
)
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
    """

    def __init__(
        self,
        kinds: PluginRegistry[ChangeKind[Any]] | None = None,
        *,
        ledger: AuditStore | None = None,
    ) -> None:
        self.kinds = kinds if kinds is not None else default_registry()
        self.ledger = ledger

    async def _record(self, action: AuditAction, inp: ApplyInput, result: ApplyResult) -> None:
        """Write the effect to the ledger, idempotently by its key (a retry adds nothing)."""
        if self.ledger is None or not result.took_effect:
            return
        info = activity.info()
        record = AuditRecord(
            record_id=f"effect:{inp.idempotency_key}",
            action=action,
            actor="changeguard",
            at=datetime.now(UTC),
            change_id=inp.change_id,
            run_id=info.workflow_run_id or "",
            reason=excerpt(result.detail, 2000),
            detail={
                "target": inp.target.id,
                "idempotency_key": inp.idempotency_key,
                "applied_key": inp.applied_key or "",
                "by_earlier_attempt": result.replayed and not result.applied,
                "before": {k: excerpt(v, 200) for k, v in list(result.before.items())[:10]},
                "after": {k: excerpt(v, 200) for k, v in list(result.after.items())[:10]},
            },
        )
        await asyncio.to_thread(self.ledger.append, record)

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
        return ValidateChangeResult(
            problems=params_errors(kind, inp.params), reversible=kind.reversible
        )

    @activity.defn(name="apply_change")
    async def apply_change(self, inp: ApplyInput) -> ApplyResult:
        """Apply the change to one target, idempotently."""
        kind = self._kind(inp.kind)
        async with Heartbeat(target=inp.target.id, stage="apply"):
            result = await kind.apply(
                self._params(kind, inp.params), inp.target, idempotency_key=inp.idempotency_key
            )
        log.info(
            "applied",
            target=inp.target.id,
            idempotency_key=inp.idempotency_key,
            applied=result.applied,
            replayed=result.replayed,
            detail=result.detail,
        )
        if not result.took_effect:
            raise ApplicationError(
                f"{inp.target.id}: {kind.name} reports that nothing was applied "
                f"({excerpt(result.detail, 300) or 'no detail'}); the target is not changed",
                type=errors.NOTHING_APPLIED,
                non_retryable=True,
            )
        await self._record(AuditAction.MUTATION, inp, result)
        return result

    @activity.defn(name="revert_change")
    async def revert_change(self, inp: ApplyInput) -> ApplyResult:
        """Undo one target's step if it took effect (``revert_if_applied``), idempotently."""
        kind = self._kind(inp.kind)
        if inp.applied_key is None:
            raise ApplicationError(
                "revert_change needs applied_key", type=errors.INVALID_INPUT, non_retryable=True
            )
        async with Heartbeat(target=inp.target.id, stage="revert"):
            result = await kind.revert_if_applied(
                self._params(kind, inp.params),
                inp.target,
                applied_key=inp.applied_key,
                idempotency_key=inp.idempotency_key,
            )
        log.info(
            "reverted",
            target=inp.target.id,
            idempotency_key=inp.idempotency_key,
            applied=result.applied,
            replayed=result.replayed,
            detail=result.detail,
        )
        await self._record(AuditAction.COMPENSATION, inp, result)
        return result

    @activity.defn(name="describe_target")
    async def describe_target(self, inp: DescribeInput) -> TargetState:
        """Report one target's current state."""
        kind = self._kind(inp.kind)
        return await kind.describe(self._params(kind, inp.params), inp.target)

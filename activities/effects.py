"""The change ledger's effect records: what a mutation or compensation did, written where it ran.

:class:`~activities.change.ChangeActivities` records each mutation and compensation that took effect
through an :class:`EffectLedger`, keyed by its idempotency key (``effect:<key>``): the record exists
exactly when the effect does, and a retried attempt writes nothing new (the store refuses a second
record of the same id). A revert that took effect also proves its mutation did, and closes the gap
when that mutation's own attempt died between effect and record (:meth:`EffectLedger.record_forward`).
"""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime
from typing import TYPE_CHECKING

import structlog
from temporalio import activity

from activities.audit import AuditStoreError, as_activity_error
from workflows.models import ApplyInput, ApplyResult, AuditAction, AuditRecord
from workflows.types import excerpt

if TYPE_CHECKING:
    from activities.audit import AuditStore

log = structlog.get_logger(__name__)

LEDGER_PATIENCE_S = 60.0
"""How long a mutation that took effect keeps trying to record it before its attempt fails."""


def event_time() -> datetime:
    """When this attempt was scheduled, on the server's clock: the clock workflow records use.

    The ledger orders a change's story by time; a worker's own clock may differ from the server's
    (and does, by days, under the time-skipping test server), which would misplace effects.
    """
    try:
        return activity.info().current_attempt_scheduled_time
    except RuntimeError:  # not in an activity (unit tests of a kind alone)
        return datetime.now(UTC)


class EffectLedger:
    """Writes effects that took place to the audit store; ``store=None`` records nothing."""

    def __init__(self, store: AuditStore | None) -> None:
        self.store = store

    async def record(
        self,
        action: AuditAction,
        inp: ApplyInput,
        result: ApplyResult,
        *,
        run_id: str | None = None,
    ) -> None:
        """Write the effect to the ledger, idempotently by its key (a retry adds nothing)."""
        await self.record_many(action, [(inp, result)], run_id=run_id)

    async def record_many(
        self,
        action: AuditAction,
        effects: list[tuple[ApplyInput, ApplyResult]],
        *,
        run_id: str | None = None,
    ) -> None:
        """Write several effects of one activity with one hop to the store's thread.

        Each is its own record (``effect:<key>``) and its own append, as :meth:`record`; the
        results that did not take effect are skipped.
        """
        if self.store is None:
            return
        effects = [(inp, result) for inp, result in effects if result.took_effect]
        if not effects:
            return
        if run_id is None:
            run_id = activity.info().workflow_run_id or ""
        at = event_time()
        await self._append(
            [_effect_record(action, inp, result, run_id, at) for inp, result in effects]
        )

    async def append(self, record: AuditRecord) -> None:
        """Append to the ledger, riding out a short outage (see :meth:`_append`)."""
        await self._append([record])

    async def _append(self, records: list[AuditRecord]) -> None:
        """Append in order, riding out a short outage: the effects have already happened.

        An attempt that failed here after its effect landed would leave the effect unrecorded if no
        later attempt came (the chaos campaign saw it), so the write is retried for up to a minute,
        heartbeating, before the attempt fails (retryably: the next attempt finds the effect made
        and records it). Several records (a chunk's) are one transaction, all or none; a retry
        appends only what is missing (the store refuses a second record of the same id).
        """
        store = self.store
        assert store is not None

        def write() -> None:
            store.append_many(records)  # a chunk's records: one transaction, one commit

        delay = 0.5
        deadline = asyncio.get_running_loop().time() + LEDGER_PATIENCE_S
        while True:
            try:
                await asyncio.to_thread(write)
                return
            except AuditStoreError as exc:
                if not exc.retryable or asyncio.get_running_loop().time() + delay > deadline:
                    raise as_activity_error(exc) from exc
                log.warning("ledger write failed; retrying", error=str(exc), retry_in_s=delay)
                activity.heartbeat()
                await asyncio.sleep(delay)
                delay = min(delay * 2, 8.0)

    async def record_forward(self, inp: ApplyInput, result: ApplyResult) -> None:
        """A revert that took effect proves its mutation did: make sure the ledger says so too.

        Idempotent (the mutation's own record id): it adds nothing when the mutation's attempt
        recorded itself, and closes the gap when that attempt died between effect and record.
        """
        if self.store is None:
            return
        await self.append(
            AuditRecord(
                record_id=f"effect:{inp.applied_key}",
                action=AuditAction.MUTATION,
                actor="changeguard",
                at=event_time(),
                change_id=inp.change_id,
                run_id=activity.info().workflow_run_id or "",
                reason="recorded by its compensation (the mutation's own attempt did not)",
                detail={
                    "target": inp.target.id,
                    "idempotency_key": inp.applied_key,
                    "by_earlier_attempt": True,
                    "before": {k: excerpt(v, 200) for k, v in list(result.after.items())[:10]},
                    "after": {k: excerpt(v, 200) for k, v in list(result.before.items())[:10]},
                },
            )
        )


def _effect_record(
    action: AuditAction, inp: ApplyInput, result: ApplyResult, run_id: str, at: datetime
) -> AuditRecord:
    """The ledger record of one effect that took place, under its idempotency key."""
    return AuditRecord(
        record_id=f"effect:{inp.idempotency_key}",
        action=action,
        actor="changeguard",
        at=at,
        change_id=inp.change_id,
        run_id=run_id,
        reason=excerpt(result.detail, 2000),
        detail={
            "target": inp.target.id,
            "idempotency_key": inp.idempotency_key,
            "applied_key": inp.applied_key or "",
            "by_earlier_attempt": result.replayed and not result.applied,
            "before": {k: excerpt(v, 200) for k, v in list(result.before.items())[:10]},
            "after": {k: excerpt(v, 200) for k, v in list(result.after.items())[:10]},
            **({"irreversible": result.irreversible[:50]} if result.irreversible else {}),
        },
    )

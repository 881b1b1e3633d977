"""Progress in the change-kind contract: checkpoints, resume hints, pause, liveness in status."""

from __future__ import annotations

import asyncio
import json
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from google.protobuf.timestamp_pb2 import Timestamp
from pydantic import BaseModel
from temporalio import activity
from temporalio.api.common.v1 import Payload, Payloads
from temporalio.api.enums.v1 import PendingActivityState
from temporalio.api.workflow.v1 import PendingActivityInfo
from temporalio.exceptions import ApplicationError
from temporalio.testing import ActivityEnvironment

from activities.change import ChangeActivities
from activities.kinds import handoff
from activities.kinds.base import new_registry
from activities.kinds.pg_migrate import PgMigrate
from activities.kinds.progress import Progress
from cli.pending import classify, liveness
from guardrails.base import CheckContext, Services
from guardrails.builtin.irreversible import IrreversibleSteps
from tests.fakes import RecordingKind
from workflows.errors import MUTATION_PAUSED
from workflows.models import (
    ApplyInput,
    Category,
    ChangeContext,
    CheckSpec,
    CheckStatus,
    OptOut,
    Target,
    ValidateChangeInput,
    idempotency_key,
)
from workflows.mutations import options_from
from workflows.progress_models import HandoffTicket, HeartbeatEnvelope, MutationOptions

NOW = datetime(2026, 3, 2, 12, 0, tzinfo=UTC)
STEPS = [
    {"name": "add-col", "up": "ALTER TABLE t ADD c int", "down": "ALTER TABLE t DROP c"},
    {"name": "drop-old", "up": "ALTER TABLE t DROP COLUMN old", "reversible": False},
]


class Cp(BaseModel):
    last: int = 0


def pending(
    envelope: HeartbeatEnvelope | None, *, beat_ago: float | None, state: int = 2
) -> PendingActivityInfo:
    """A pending activity as describe() returns it."""
    p = PendingActivityInfo(state=state)  # type: ignore[arg-type]
    p.activity_type.name = "apply_change"
    if envelope is not None:
        data = json.dumps(envelope.model_dump(mode="json")).encode()
        p.heartbeat_details.CopyFrom(
            Payloads(payloads=[Payload(metadata={"encoding": b"json/plain"}, data=data)])
        )
    if beat_ago is not None:
        ts = Timestamp()
        ts.FromDatetime(NOW - timedelta(seconds=beat_ago))
        p.last_heartbeat_time.CopyFrom(ts)
    return p


def envelope(changed_ago: float, **kw: Any) -> HeartbeatEnvelope:
    return HeartbeatEnvelope(
        kind="pg-migrate",
        target="orders",
        stage="backfilling fill-total",
        checkpoint={"last_key": 4000},
        changed_at=NOW - timedelta(seconds=changed_ago),
        interval_s=10,
        stall_after_s=300,
        **kw,
    )


def test_a_mutation_that_beats_and_progresses_is_neither_suspicious_nor_stalled() -> None:
    """Beating every interval with fresh progress: healthy, the checkpoint shown."""
    out = liveness(pending(envelope(5), beat_ago=3), now=NOW)
    assert out == {
        "paused": False,
        "last_heartbeat_s_ago": 3.0,
        "target": "orders",
        "stage": "backfilling fill-total",
        "progress": {"last_key": 4000},
        "handed_off": False,
        "suspicious": False,
        "unchanged_for_s": 5.0,
        "note": "",
    }


def test_a_mutation_that_beats_but_does_not_progress_is_stalled() -> None:
    """Heartbeats continue, the checkpoint is older than the kind's stall time: stalled."""
    out = liveness(pending(envelope(400), beat_ago=4), now=NOW)
    assert (out["stalled"], out["suspicious"], out["unchanged_for_s"]) == (True, False, 400.0)
    assert out["note"].startswith("stalled: heartbeats continue but progress has not changed")


def test_a_mutation_that_stops_beating_is_suspicious_with_how_long_ago() -> None:
    """No beat for over two intervals: suspicious (not stalled), and how long ago."""
    out = liveness(pending(envelope(400), beat_ago=25), now=NOW)
    assert (out["suspicious"], out.get("stalled", False), out["last_heartbeat_s_ago"]) == (
        True,
        False,
        25.0,
    )
    assert out["note"] == "suspicious: no heartbeat for 25s (beats every 10s; retried after 30s)"


def test_a_scheduled_or_paused_activity_is_not_suspicious() -> None:
    """Only a started attempt is expected to beat; a paused one says so."""
    scheduled = liveness(pending(envelope(400), beat_ago=600, state=1), now=NOW)
    paused = liveness(
        pending(
            envelope(400), beat_ago=600, state=PendingActivityState.PENDING_ACTIVITY_STATE_PAUSED
        ),
        now=NOW,
    )
    assert (scheduled.get("suspicious", False), scheduled.get("stalled", False)) == (False, False)
    assert (paused["paused"], paused.get("suspicious", False)) == (True, False)


def test_details_that_are_not_an_envelope_are_tolerated() -> None:
    """An older worker's flat details, or none: no classification beyond the beat's age."""
    assert classify(None, last_heartbeat=None, now=NOW) == {
        "paused": False,
        "last_heartbeat_s_ago": None,
        "note": "",
    }


def test_options_come_from_the_kind_and_its_params() -> None:
    """pg-migrate's timeouts come from its params; the heartbeat timeout is three intervals."""
    kind = PgMigrate({})
    params = kind.parse_params({"steps": STEPS, "timeout": "3h", "heartbeat_interval": "20s"})
    options = kind.options(params)
    assert (options.start_to_close, options.heartbeat_timeout) == (
        timedelta(hours=3),
        timedelta(seconds=60),
    )


async def test_validate_change_reports_options_and_irreversible_steps() -> None:
    """validate_change tells the workflow the kind's options and which steps cannot be undone."""
    registry = new_registry()
    registry.register(PgMigrate)
    result = await ActivityEnvironment().run(
        ChangeActivities(registry).validate_change,
        ValidateChangeInput(kind="pg-migrate", params={"steps": STEPS}),
    )
    assert (result.problems, result.reversible, result.irreversible_steps) == (
        [],
        False,
        ["drop-old"],
    )
    assert options_from(result) == MutationOptions(
        start_to_close=timedelta(hours=6),
        heartbeat_interval=timedelta(seconds=10),
        stall_after=timedelta(minutes=5),
    )


async def test_a_retried_attempt_gets_the_last_checkpoint() -> None:
    """Checkpoints heartbeat an envelope; the next attempt's Progress has it as resumed_from."""
    beats: list[Any] = []
    env = ActivityEnvironment()
    env.on_heartbeat = lambda *d: beats.append(d[0])

    async def first() -> None:
        async with Progress(kind="k", target="t", checkpoint_model=Cp) as progress:
            assert progress.resumed_from is None
            progress.checkpoint(Cp(last=10))
            progress.checkpoint(Cp(last=10))  # unchanged: no new seq
            progress.checkpoint(Cp(last=20))

    await env.run(first)
    last = HeartbeatEnvelope.model_validate(beats[-1])
    assert (last.checkpoint, last.seq) == ({"last": 20}, 2)

    retry = ActivityEnvironment()
    retry.info = retry.info.__class__(
        **{**retry.info.__dict__, "attempt": 2, "heartbeat_details": [beats[-1]]}
    )

    async def second() -> Cp | None:
        async with Progress(kind="k", target="t", checkpoint_model=Cp) as progress:
            return progress.resumed_from

    assert await retry.run(second) == Cp(last=20)


class SlowKind(RecordingKind):
    name = "slow"

    async def apply(self, params: Any, target: Target, *, idempotency_key: str, **kw: Any) -> Any:
        await asyncio.sleep(60)
        raise AssertionError("not reached")


def _apply_input(kind: str) -> ApplyInput:
    return ApplyInput(
        change_id="chg",
        kind=kind,
        step="apply",
        target=Target(id="t1"),
        idempotency_key=idempotency_key("chg", "apply", "t1"),
    )


async def test_a_paused_mutation_fails_retryably_and_a_cancelled_one_is_cancelled() -> None:
    """Activity pause: a retryable MutationPaused with the checkpoint; cancel: a cancellation."""
    registry = new_registry()
    registry.register(SlowKind)
    change = ChangeActivities(registry)

    paused_env = ActivityEnvironment()
    task = asyncio.ensure_future(paused_env.run(change.apply_change, _apply_input("slow")))
    await asyncio.sleep(0.1)
    paused_env.cancel(cancellation_details=activity.ActivityCancellationDetails(paused=True))
    with pytest.raises(ApplicationError) as caught:
        await task
    assert (caught.value.type, caught.value.non_retryable) == (MUTATION_PAUSED, False)
    assert caught.value.details[0]["paused"] is True

    cancel_env = ActivityEnvironment()
    task = asyncio.ensure_future(cancel_env.run(change.apply_change, _apply_input("slow")))
    await asyncio.sleep(0.1)
    cancel_env.cancel(
        cancellation_details=activity.ActivityCancellationDetails(cancel_requested=True)
    )
    with pytest.raises(asyncio.CancelledError):
        await task


def test_callback_urls_are_signed_per_task() -> None:
    """A ticket verifies under its own signature only; another task's signature fails."""
    secret = b"s" * 32
    a = handoff.encode_ticket(
        HandoffTicket(
            task_token="AAAA",
            change_id="c",
            kind="k",
            step="apply",
            target_id="t",
            idempotency_key="c:apply:t",
        )
    )
    b = handoff.encode_ticket(
        HandoffTicket(
            task_token="BBBB",
            change_id="c",
            kind="k",
            step="apply",
            target_id="t",
            idempotency_key="c:apply:t",
        )
    )
    assert handoff.verify(a, handoff.sign(a, secret), secret) is not None
    assert handoff.verify(a, handoff.sign(b, secret), secret) is None
    assert handoff.verify(a, handoff.sign(a, b"x" * 32), secret) is None


def _ctx(kind: str, params: dict[str, Any], services: Services) -> CheckContext:
    return CheckContext(
        change=ChangeContext(
            change_id="chg",
            kind=kind,
            environment="prod",
            targets=[Target(id="orders")],
            params=params,
        ),
        spec=CheckSpec(
            rule="irreversible-steps",
            guardrail="irreversible-steps",
            category=Category.TARGET_STATE,
            owner="platform",
            opt_out=OptOut.FORBIDDEN,
        ),
        now=NOW,
        services=services,
    )


async def test_irreversible_steps_fails_naming_the_steps_and_passes_reversible_changes() -> None:
    """The check fails a change with an irreversible step (named), passes an undoable one."""
    registry = new_registry()
    registry.register(PgMigrate)
    check = IrreversibleSteps()
    failed = await check.check(
        check.parse_params({}),
        _ctx("pg-migrate", {"steps": STEPS}, Services(change_kinds=registry)),
    )
    assert (failed.status, failed.opt_out, failed.evidence["irreversible"]) == (
        CheckStatus.FAIL,
        OptOut.FORBIDDEN,
        ["drop-old"],
    )
    assert "drop-old" in failed.reason and failed.remedy
    passed = await check.check(
        check.parse_params({}),
        _ctx("pg-migrate", {"steps": STEPS[:1]}, Services(change_kinds=registry)),
    )
    assert passed.status is CheckStatus.PASS
    blind = await check.check(check.parse_params({}), _ctx("pg-migrate", {}, Services()))
    assert blind.status is CheckStatus.ERROR  # fail-closed without the kinds
    assert IrreversibleSteps.default_opt_out is OptOut.FORBIDDEN


async def test_every_beat_says_by_itself_when_progress_stands_still() -> None:
    """The background beat refreshes beat_at and, past the stall time, marks itself stalled."""
    beats: list[Any] = []
    env = ActivityEnvironment()
    env.info = env.info.__class__(
        **{**env.info.__dict__, "heartbeat_timeout": timedelta(seconds=0.15)}
    )
    env.on_heartbeat = lambda *d: beats.append(d[0])
    options = MutationOptions(
        heartbeat_interval=timedelta(seconds=0.05), stall_after=timedelta(seconds=0.2)
    )

    async def stuck() -> None:
        async with Progress(kind="k", target="t", checkpoint_model=Cp, options=options) as progress:
            progress.checkpoint(Cp(last=1), stage="copying")
            await asyncio.sleep(0.5)

    await env.run(stuck)
    first, last = (
        HeartbeatEnvelope.model_validate(beats[1]),
        HeartbeatEnvelope.model_validate(beats[-1]),
    )
    assert (first.stalled, first.note) == (False, "")
    assert last.beat_at is not None and last.changed_at is not None
    assert last.beat_at > first.beat_at, "background beats carry their own time"
    assert last.stalled and last.note.startswith("stalled: progress unchanged for ")
    assert last.note.endswith("(stage copying; the kind allows 0.2s)")


def test_only_an_unanswered_query_falls_back_to_what_the_server_knows() -> None:
    """Timeouts and "no poller" fall back; an unknown change (NOT_FOUND) still fails as before."""
    from temporalio.service import RPCError, RPCStatusCode

    from cli.pending import went_unanswered

    def error(status: RPCStatusCode) -> RPCError:
        return RPCError("x", status, b"")

    assert [
        went_unanswered(error(s))
        for s in (
            RPCStatusCode.DEADLINE_EXCEEDED,
            RPCStatusCode.CANCELLED,
            RPCStatusCode.FAILED_PRECONDITION,
            RPCStatusCode.NOT_FOUND,
            RPCStatusCode.INVALID_ARGUMENT,
        )
    ] == [True, True, True, False, False]


def test_the_servers_throttle_delay_is_allowed_on_top_of_two_intervals() -> None:
    """A 1 s beat the server received 2.5 s ago is within two intervals plus the 1 s throttle."""
    quick = envelope(0.5).model_copy(update={"interval_s": 1.0})
    assert liveness(pending(quick, beat_ago=2.5), now=NOW)["suspicious"] is False
    assert liveness(pending(quick, beat_ago=3.5), now=NOW)["suspicious"] is True

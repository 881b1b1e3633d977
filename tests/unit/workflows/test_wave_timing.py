"""Freeze-aware waves and scheduled starts (time-skipping): no wave starts that cannot finish."""

from __future__ import annotations

import json
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from temporalio.api.enums.v1 import EventType
from temporalio.client import WorkflowHandle
from temporalio.testing import WorkflowEnvironment

from activities.checks import CheckActivities
from activities.timing import TimingActivities
from guardrails.builtin.change_window import ChangeWindow
from guardrails.bundle import BundleHolder, bundle_from_mapping
from tests import fakes
from tests.builders import change_request_dict, target_list
from tests.fakes import Ledger, RecordingKind
from tests.helpers import until_phase, until_status
from worker.main import build_worker
from workflows.models import ChangeContext, ChangeResult, Outcome, Phase
from workflows.timing_models import WaveTimingInput


@pytest.fixture(autouse=True)
def ledger() -> Ledger:
    RecordingKind.ledger = Ledger()
    return RecordingKind.ledger


@pytest.fixture
async def worker(env: WorkflowEnvironment, task_queue: str) -> AsyncIterator[None]:
    registry = fakes.guardrails()
    registry.register(ChangeWindow)
    async with build_worker(
        env.client, task_queue=task_queue, guardrails=registry, kinds=fakes.kinds()
    ):
        yield


def wall(instant: datetime) -> str:
    """A UTC instant as a freeze's local time (the rules below are written in UTC)."""
    return instant.astimezone(UTC).replace(tzinfo=None).isoformat(timespec="seconds")


def freeze_rule(start: datetime, end: datetime, **params: Any) -> dict[str, Any]:
    return {
        "id": "release-freeze",
        "use": "change-window",
        "params": {"timezone": "UTC", "freeze": [f"{wall(start)}/{wall(end)}"], **params},
    }


def request(
    rule: dict[str, Any], *, waves: list[str], bake: str, targets: int = 2
) -> dict[str, Any]:
    return change_request_dict(
        summary="freeze-aware waves",
        targets=target_list(targets),
        rollout={"waves": waves, "bake": bake},
        policy={"guardrails": [rule]},
    )


async def start(
    env: WorkflowEnvironment, task_queue: str, payload: dict[str, Any]
) -> WorkflowHandle[Any, ChangeResult]:
    """Start from a raw client: the payload is plain JSON, as any SDK would send it."""
    return await env.client.start_workflow(
        "GuardedChange",
        payload,
        id=payload.get("change_id") or f"chg-{uuid.uuid4().hex[:8]}",
        task_queue=task_queue,
        result_type=ChangeResult,
    )


async def applied_at(handle: WorkflowHandle[Any, Any]) -> dict[str, datetime]:
    """When each target's ``apply_change`` was scheduled, from the history."""
    found: dict[str, datetime] = {}
    async for event in handle.fetch_history_events():
        if event.event_type != EventType.EVENT_TYPE_ACTIVITY_TASK_SCHEDULED:
            continue
        attrs = event.activity_task_scheduled_event_attributes
        if attrs.activity_type.name == "apply_change":
            target = json.loads(attrs.input.payloads[0].data)["target"]["id"]
            found[target] = event.event_time.ToDatetime(tzinfo=UTC)
    return found


async def test_a_wave_whose_bake_would_end_inside_a_freeze_waits_for_the_next_opening(
    env: WorkflowEnvironment, task_queue: str, worker: None, ledger: Ledger
) -> None:
    """Open now, but a 1h bake (+15m allowance) would end inside the freeze: wait until it ends."""
    now = await env.get_current_time()
    begins, ends = now + timedelta(hours=1), now + timedelta(hours=3)
    payload = request(freeze_rule(begins, ends), waves=["100%"], bake="1h")
    handle = await start(env, task_queue, payload)
    waiting = await until_status(handle, lambda s: s.retry_after is not None)
    assert waiting.phase is Phase.WAITING
    assert waiting.retry_after == ends.replace(microsecond=0)
    assert ledger.applied == []
    assert waiting.wave_timing is not None and not waiting.wave_timing.fits
    (rule,) = waiting.wave_timing.rules
    assert (rule.rule, rule.open_now, rule.fits, rule.next_fit) == (
        "release-freeze",
        True,
        False,
        ends.replace(microsecond=0),
    )
    assert "the wave and its bake (1h15m) would end inside the freeze" in waiting.message
    assert "scheduled for" in waiting.message
    result = await handle.result()
    assert result.outcome is Outcome.COMPLETED
    times = await applied_at(handle)
    assert sorted(times) == ["t1", "t2"]
    assert min(times.values()) >= ends.replace(microsecond=0)


async def _midway(
    env: WorkflowEnvironment, task_queue: str, choice: str
) -> tuple[WorkflowHandle[Any, ChangeResult], datetime]:
    """Two waves, 10m bakes; a freeze from +15m to +45m: wave 1 fits, wave 2 would not."""
    now = await env.get_current_time()
    ends = now + timedelta(minutes=45)
    rule = freeze_rule(now + timedelta(minutes=15), ends, wave_allowance="1m", mid_rollout=choice)
    handle = await start(env, task_queue, request(rule, waves=["1", "100%"], bake="10m"))
    return handle, ends.replace(microsecond=0)


async def test_mid_rollout_finish_holds_pages_and_goes_on_when_the_freeze_ends(
    env: WorkflowEnvironment, task_queue: str, worker: None, ledger: Ledger
) -> None:
    """finish: the first wave finished; the second waits for the freeze's end (paged), then runs."""
    handle, ends = await _midway(env, task_queue, "finish")
    result = await handle.result()
    assert result.outcome is Outcome.COMPLETED
    times = await applied_at(handle)
    assert times["t1"] < ends - timedelta(minutes=30) and times["t2"] >= ends
    status = await handle.query("status")
    assert [p for p in status["pages"] if "holds before wave 2/2 (mid_rollout: finish)" in p]


async def test_mid_rollout_pause_pages_and_resume_holds_until_the_freeze_ends(
    env: WorkflowEnvironment, task_queue: str, worker: None, ledger: Ledger
) -> None:
    """pause: before wave 2 the change pauses and pages; resume holds it until the freeze ends."""
    handle, ends = await _midway(env, task_queue, "pause")
    await until_phase(handle, Phase.BAKING)
    await env.sleep(timedelta(minutes=11))  # the first wave's bake ends; the freeze is ahead
    paused = await until_phase(handle, Phase.PAUSED)
    assert "paused before wave 2/2 (mid_rollout: pause)" in paused.message
    assert [p for p in paused.pages if "paused before wave 2/2" in p]
    assert ledger.applied == ["t1"]
    await handle.execute_update("resume", {"operator": "oscar", "reason": "hold it"})
    held = await until_status(handle, lambda s: s.phase is Phase.WAITING)
    assert held.retry_after == ends
    result = await handle.result()
    assert result.outcome is Outcome.COMPLETED
    assert (await applied_at(handle))["t2"] >= ends


async def test_mid_rollout_pause_rollback_undoes_the_first_wave(
    env: WorkflowEnvironment, task_queue: str, worker: None, ledger: Ledger
) -> None:
    """pause, then an operator's rollback: the applied wave is undone; nothing is left mixed."""
    handle, _ = await _midway(env, task_queue, "pause")
    await until_phase(handle, Phase.BAKING)
    await env.sleep(timedelta(minutes=11))
    await until_phase(handle, Phase.PAUSED)
    await handle.execute_update("rollback", {"operator": "oscar", "reason": "freeze"})
    result = await handle.result()
    assert (result.outcome, result.reverted) == (Outcome.ROLLED_BACK, ["t1"])


async def test_mid_rollout_rollback_undoes_the_applied_waves_at_once(
    env: WorkflowEnvironment, task_queue: str, worker: None, ledger: Ledger
) -> None:
    """rollback: the wave that would run into the freeze never starts; the first is undone."""
    handle, _ = await _midway(env, task_queue, "rollback")
    result = await handle.result()
    assert (result.outcome, result.applied, result.reverted) == (
        Outcome.ROLLED_BACK,
        ["t1"],
        ["t1"],
    )
    assert "rolled back before wave 2/2 (mid_rollout: rollback): release-freeze:" in result.message
    assert "would end inside the freeze" in result.message
    assert ledger.applied == ["t1"]


async def test_a_freeze_in_force_before_the_first_wave_past_the_deadline_rejects(
    env: WorkflowEnvironment, task_queue: str, worker: None, ledger: Ledger
) -> None:
    """A wave that could only fit after the deadline: rejected, nothing applied."""
    now = await env.get_current_time()
    payload = request(
        freeze_rule(now + timedelta(minutes=30), now + timedelta(hours=5)),
        waves=["100%"],
        bake="1h",
    )
    payload["deadline"] = (now + timedelta(hours=2)).isoformat()
    result = await (await start(env, task_queue, payload)).result()
    assert result.outcome is Outcome.REJECTED
    assert "wave 1/1 cannot finish before the timing rules close" in result.message
    assert ledger.applied == []


# ------------------------------------------------------------------ not_before


def scheduled(not_before: str) -> dict[str, Any]:
    return request({"use": "always-pass"}, waves=["100%"], bake="0s") | {"not_before": not_before}


async def test_not_before_from_a_raw_client_waits_then_runs(
    env: WorkflowEnvironment, task_queue: str, worker: None, ledger: Ledger
) -> None:
    """A valid not_before: the change shows as scheduled, and gates and applies only after it."""
    now = await env.get_current_time()
    at = (now + timedelta(hours=2)).replace(microsecond=0)
    handle = await start(env, task_queue, scheduled(at.isoformat().replace("+00:00", "Z")))
    waiting = await until_status(handle, lambda s: s.retry_after is not None)
    assert (waiting.phase, waiting.retry_after, waiting.gate_runs) == (Phase.WAITING, at, 0)
    assert waiting.message.startswith("scheduled for ")
    result = await handle.result()
    assert result.outcome is Outcome.COMPLETED
    assert min((await applied_at(handle)).values()) >= at


async def test_a_scheduled_change_can_be_aborted_while_it_waits(
    env: WorkflowEnvironment, task_queue: str, worker: None, ledger: Ledger
) -> None:
    """An operator aborts a change waiting for its not_before: aborted, nothing gated or applied."""
    now = await env.get_current_time()
    handle = await start(env, task_queue, scheduled((now + timedelta(days=3)).isoformat()))
    await until_status(handle, lambda s: s.retry_after is not None)
    await handle.execute_update("abort", {"operator": "oscar", "reason": "not this week"})
    result = await handle.result()
    assert result.outcome is Outcome.ABORTED
    assert "abort by oscar: not this week" in result.message
    assert ledger.applied == []
    assert (await handle.query("status"))["gate_runs"] == 0


@pytest.mark.parametrize(
    ("not_before", "expected"),
    [
        ("2026-12-01T10:00:00", "not_before needs a time zone, e.g. 2026-12-01T18:00:00Z"),
        ("+400d", "is more than 90 days ahead; schedule a change at most that far in advance"),
    ],
)
async def test_a_naive_or_far_future_not_before_is_rejected_without_failing_a_task(
    env: WorkflowEnvironment,
    task_queue: str,
    worker: None,
    ledger: Ledger,
    not_before: str,
    expected: str,
) -> None:
    """A naive or absurdly far not_before ends rejected, naming the field; no task fails."""
    if not_before == "+400d":
        not_before = ((await env.get_current_time()) + timedelta(days=400)).isoformat()
    handle = await start(env, task_queue, scheduled(not_before))
    result = await handle.result()
    assert result.outcome is Outcome.REJECTED
    assert expected in result.message
    assert "not_before" in result.message
    async for event in handle.fetch_history_events():
        assert event.event_type != EventType.EVENT_TYPE_WORKFLOW_TASK_FAILED
    assert ledger.applied == []


# ------------------------------------------------------------------ the bundle held then


async def test_a_freeze_a_new_bundle_adds_mid_rollout_applies_its_choice(
    env: WorkflowEnvironment, task_queue: str, ledger: Ledger
) -> None:
    """The platform ships a freeze (mid_rollout: rollback) while wave 1 bakes: wave 2 never runs."""
    registry = fakes.guardrails()
    registry.register(ChangeWindow)
    holder = BundleHolder.fixed({"unmatched": "allow"})
    async with build_worker(
        env.client, task_queue=task_queue, guardrails=registry, kinds=fakes.kinds(), bundle=holder
    ):
        handle = await start(
            env, task_queue, request({"use": "always-pass"}, waves=["1", "100%"], bake="10m")
        )
        await until_phase(handle, Phase.BAKING)
        now = await env.get_current_time()
        rule = freeze_rule(now, now + timedelta(hours=2), mid_rollout="rollback")
        holder.replace(
            bundle_from_mapping(
                {"unmatched": "allow", "guardrails": [{**rule, "owner": "release-eng"}]},
                registry=registry,
            )
        )
        result = await handle.result()
    assert (result.outcome, result.applied, result.reverted) == (
        Outcome.ROLLED_BACK,
        ["t1"],
        ["t1"],
    )
    assert "rolled back before wave 2/2 (mid_rollout: rollback): release-freeze:" in result.message
    assert "the freeze" in result.message and "is in force" in result.message


def _timing(checks: CheckActivities, at: datetime, **kw: Any) -> Any:
    rule = freeze_rule(at - timedelta(hours=1), at + timedelta(hours=1))
    change = ChangeContext(change_id="chg-1", kind="recording", environment="prod", targets=[])
    return TimingActivities(checks).check_wave_timing(
        WaveTimingInput(
            change=change.model_dump(mode="json"),
            policy={"guardrails": [rule]},
            at=at,
            bake=timedelta(minutes=10),
            **kw,
        )
    )


async def test_an_approved_rule_does_not_hold_a_wave() -> None:
    """A frozen rule holds the wave; once an approval covers it, the wave fits (the human decided)."""
    registry = fakes.guardrails()
    registry.register(ChangeWindow)
    checks = CheckActivities(registry, bundle=BundleHolder.fixed({"unmatched": "allow"}))
    at = datetime(2026, 6, 15, 12, tzinfo=UTC)
    held = await _timing(checks, at)
    assert (held.fits, held.earliest, [r.rule for r in held.closing]) == (
        False,
        at + timedelta(hours=1),
        ["release-freeze"],
    )
    assert held.earliest_label == "2026-06-15 13:00 UTC"
    approved = await _timing(checks, at, approved=["release-freeze"])
    assert (approved.fits, approved.rules) == (True, [])


async def test_a_recheck_asks_again_while_a_wave_waits_for_a_freeze(
    env: WorkflowEnvironment, task_queue: str, worker: None, ledger: Ledger
) -> None:
    """A recheck ends the wait early: the gate and the timing run again (and still say wait)."""
    now = await env.get_current_time()
    ends = now + timedelta(hours=3)
    handle = await start(
        env,
        task_queue,
        request(freeze_rule(now + timedelta(hours=1), ends), waves=["100%"], bake="1h"),
    )
    first = await until_status(handle, lambda s: s.retry_after is not None)
    assert first.gate_runs == 1
    await handle.signal("recheck", {"requested_by": "oscar"})
    again = await until_status(handle, lambda s: s.gate_runs == 2 and s.retry_after is not None)
    assert (again.phase, again.retry_after, ledger.applied) == (
        Phase.WAITING,
        ends.replace(microsecond=0),
        [],
    )
    assert (await handle.result()).outcome is Outcome.COMPLETED


async def test_an_unanswered_mid_rollout_pause_rolls_back_after_a_day(
    env: WorkflowEnvironment, task_queue: str, worker: None, ledger: Ledger
) -> None:
    """An unanswered mid-rollout pause: after 24 h the applied wave is rolled back."""
    handle, _ = await _midway(env, task_queue, "pause")
    result = await handle.result()
    assert (result.outcome, result.reverted) == (Outcome.ROLLED_BACK, ["t1"])
    assert result.message.startswith(
        "rolled back: nobody answered the page within 1d; release-freeze: "
    )

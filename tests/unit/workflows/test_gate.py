"""The GuardrailGate workflow: parallel checks, every result kept, one decision."""

from __future__ import annotations

import asyncio
import uuid
from datetime import timedelta
from typing import Any

import pytest
from temporalio import activity
from temporalio.client import WorkflowFailureError
from temporalio.exceptions import ApplicationError
from temporalio.testing import WorkflowEnvironment

from guardrails.base import CheckContext, EmptyParams, Guardrail
from guardrails.plugins import PluginRegistry
from tests import builders, fakes
from worker.main import build_worker
from worker.replayer import build_replayer
from workflows.models import (
    Category,
    ChangeContext,
    CheckResult,
    CheckStatus,
    Decision,
    GateInput,
    GuardrailReport,
)


def _change() -> ChangeContext:
    return builders.change_context()


def _policy(**outcomes: str) -> dict[str, Any]:
    return {
        "guardrails": [
            {"use": name, "params": {"outcome": outcome, "reason": f"{name} says no"}}
            for name, outcome in outcomes.items()
        ]
    }


async def _gate(
    env: WorkflowEnvironment,
    task_queue: str,
    policy: dict[str, Any],
    guardrails: PluginRegistry[Guardrail[Any]] | None = None,
) -> GuardrailReport:
    async with build_worker(
        env.client,
        task_queue=task_queue,
        guardrails=guardrails or fakes.guardrails(),
        kinds=fakes.kinds(),
    ):
        return await env.client.execute_workflow(
            "GuardrailGate",
            GateInput(change=_change(), policy=policy),
            id=f"gate-{uuid.uuid4().hex[:8]}",
            task_queue=task_queue,
            result_type=GuardrailReport,
        )


async def test_five_checks_three_fail_one_raises(env: WorkflowEnvironment, task_queue: str) -> None:
    """Three failures and one raising check give one blocking report with all four explained."""
    policy = _policy(
        **{
            "fake-timing": "fail",
            "fake-lock": "pass",
            "fake-health": "fail",
            "fake-state": "raise",
            "fake-inflight": "fail",
        }
    )
    report = await _gate(env, task_queue, policy)

    assert report.decision is Decision.BLOCK
    assert [(c.guardrail, c.status) for c in report.checks] == [
        ("fake-timing", CheckStatus.FAIL),
        ("fake-lock", CheckStatus.PASS),
        ("fake-health", CheckStatus.FAIL),
        ("fake-state", CheckStatus.ERROR),
        ("fake-inflight", CheckStatus.FAIL),
    ]
    failing = [c for c in report.checks if not c.passing]
    assert len(failing) == 4
    assert all(c.reason and c.remedy and c.owner for c in failing)
    assert [c.owner for c in failing] == ["release-eng", "service-owners", "infra", "sre"]
    state = report.checks[3]
    assert "fake-state exploded" in state.reason
    assert state.remedy.startswith("fix the cause reported by fake-state")


async def test_hanging_check_becomes_error_with_owner(
    env: WorkflowEnvironment, task_queue: str
) -> None:
    """A check that outlives its timeout is an error result (fail-closed) that names its owner."""
    policy = _policy(**{"fake-timing": "pass", "fake-health": "hang"})
    policy["guardrails"][1]["timeout"] = "2s"
    report = await _gate(env, task_queue, policy)

    assert report.decision is Decision.BLOCK
    health = report.checks[1]
    assert (health.status, health.owner) == (CheckStatus.ERROR, "service-owners")
    assert health.reason == "the check did not answer within 2s"


class _RaisesThenHangs(Guardrail[EmptyParams]):
    """Attempt 1 fails after a while (a busy server); attempt 2 hangs past the give-up time."""

    name = "raises-then-hangs"
    category = Category.CONCURRENCY
    default_owner = "platform"
    default_timeout = timedelta(seconds=2)

    async def check(self, params: EmptyParams, ctx: CheckContext) -> CheckResult:
        if activity.info().attempt == 1:
            await asyncio.sleep(1.5)
            raise RuntimeError("consistent query buffer is full")
        await asyncio.sleep(3600)
        raise AssertionError("unreachable")


async def test_a_check_that_gives_up_names_the_last_real_failure(
    env: WorkflowEnvironment, task_queue: str
) -> None:
    """Given up by its schedule-to-close timeout, a check names the last attempt's failure.

    Chaos finding: the report said "did not answer within 60s" after 130 s, hiding the
    RESOURCE_EXHAUSTED query error behind it and sending the operator after a slow dependency.
    """
    registry = fakes.guardrails()
    registry.register(_RaisesThenHangs)
    report = await _gate(env, task_queue, {"guardrails": [{"use": "raises-then-hangs"}]}, registry)
    [check] = report.checks
    assert (check.status, check.owner) == (CheckStatus.ERROR, "platform")
    assert check.reason.startswith("the check gave up after ")
    assert check.reason.endswith(
        " over its attempts; last failure: RuntimeError: consistent query buffer is full"
    )
    assert check.remedy.startswith("fix the cause reported by raises-then-hangs")


async def test_wait_decision_uses_earliest_retry_after(
    env: WorkflowEnvironment, task_queue: str
) -> None:
    """Only waits and passes: decision wait, retry_after the earliest among the waits."""
    report = await _gate(env, task_queue, _policy(**{"fake-timing": "wait", "fake-lock": "pass"}))
    assert report.decision is Decision.WAIT
    assert report.retry_after == report.checks[0].retry_after
    assert report.retry_after is not None and report.retry_after > report.evaluated_at


async def test_shadow_failure_never_blocks(env: WorkflowEnvironment, task_queue: str) -> None:
    """A failing shadow check is reported but the decision is still proceed."""
    policy = _policy(**{"fake-timing": "pass", "fake-health": "fail"})
    policy["guardrails"][1]["mode"] = "shadow"
    report = await _gate(env, task_queue, policy)
    assert report.decision is Decision.PROCEED
    assert report.checks[1].status is CheckStatus.FAIL


async def test_same_failures_same_hash(env: WorkflowEnvironment, task_queue: str) -> None:
    """Re-evaluating the same failures yields the same report hash; different ones do not."""
    a = await _gate(env, task_queue, _policy(**{"fake-timing": "fail"}))
    b = await _gate(env, task_queue, _policy(**{"fake-timing": "fail"}))
    c = await _gate(env, task_queue, _policy(**{"fake-timing": "fail", "fake-lock": "fail"}))
    assert a.report_hash == b.report_hash
    assert a.report_hash != c.report_hash


async def test_rule_ids_name_results_and_activities(
    env: WorkflowEnvironment, task_queue: str
) -> None:
    """One guardrail under two rule ids runs twice; each result carries its rule and source."""
    policy = {
        "guardrails": [
            {"id": "timing-a", "use": "fake-timing", "params": {"outcome": "pass"}},
            {"id": "timing-b", "use": "fake-timing", "params": {"outcome": "raise"}},
        ]
    }
    report = await _gate(env, task_queue, policy)
    assert [(c.rule, c.guardrail, c.source, c.status) for c in report.checks] == [
        ("timing-a", "fake-timing", "request", CheckStatus.PASS),
        ("timing-b", "fake-timing", "request", CheckStatus.ERROR),
    ]
    assert report.bundle_hash != "" and report.policy_hash != report.bundle_hash


async def test_platform_notes_reach_every_result_and_the_report(
    env: WorkflowEnvironment, task_queue: str
) -> None:
    """A bundle rule's reason is the note of its result (error results too); hashes recorded."""
    bundle = {
        "unmatched": "allow",
        "guardrails": [
            {"id": "hang", "use": "fake-lock", "params": {"outcome": "raise"}, "reason": "why"},
            {"use": "always-pass", "reason": "kept for the record"},
        ],
    }
    async with build_worker(
        env.client,
        task_queue=task_queue,
        guardrails=fakes.guardrails(),
        kinds=fakes.kinds(),
        bundle=bundle,
    ) as worker:
        report = await env.client.execute_workflow(
            "GuardrailGate",
            GateInput(change=_change()),
            id=f"gate-{uuid.uuid4().hex[:8]}",
            task_queue=task_queue,
            result_type=GuardrailReport,
        )
        bundle_hash = worker.bundle.current_hash()
    assert [(c.rule, c.status, c.note, c.source) for c in report.checks] == [
        ("hang", CheckStatus.ERROR, "why", "platform"),
        ("always-pass", CheckStatus.PASS, "kept for the record", "platform"),
    ]
    assert (report.bundle_hash, report.policy_hash) == (bundle_hash, bundle_hash)


async def test_a_raw_start_without_input_fails_the_gate_with_the_reason(
    env: WorkflowEnvironment, task_queue: str
) -> None:
    """No payload, null or a non-object: the gate fails non-retryably, naming the problem."""
    async with build_worker(
        env.client, task_queue=task_queue, guardrails=fakes.guardrails(), kinds=fakes.kinds()
    ):
        for args, why in (
            ([], "the gate's input is missing (no payload)"),
            ([None], "the gate's input is missing (null)"),
            (["x"], "the gate's input must be a JSON object, not str"),
        ):
            with pytest.raises(WorkflowFailureError) as caught:
                await env.client.execute_workflow(
                    "GuardrailGate",
                    args=args,
                    id=f"gate-{uuid.uuid4().hex[:8]}",
                    task_queue=task_queue,
                )
            cause = caught.value.cause
            assert isinstance(cause, ApplicationError)
            assert (cause.type, cause.non_retryable) == ("InvalidInput", True)
            assert cause.message.startswith(why)


def _local_bundle() -> dict[str, Any]:
    """Five platform rules, every one ``dispatch: local``; health hangs past its 2 s timeout."""

    def rule(use: str, outcome: str, timeout: str = "5s") -> dict[str, Any]:
        params = {"outcome": outcome, "reason": f"{use} says no"}
        return {"use": use, "params": params, "dispatch": "local", "timeout": timeout}

    return {
        "unmatched": "allow",
        "guardrails": [
            rule("fake-timing", "fail"),
            rule("fake-lock", "pass"),
            rule("fake-health", "hang", timeout="2s"),
            rule("fake-state", "raise"),
            rule("fake-inflight", "pass"),
        ],
    }


async def _gate_history(
    env: WorkflowEnvironment, task_queue: str, bundle: dict[str, Any], gate: GateInput
) -> tuple[GuardrailReport, Any]:
    """Run one gate under ``bundle``; its report and its history."""
    gate_id = f"gate-{uuid.uuid4().hex[:8]}"
    async with build_worker(
        env.client,
        task_queue=task_queue,
        guardrails=fakes.guardrails(),
        kinds=fakes.kinds(),
        bundle=bundle,
    ):
        report = await env.client.execute_workflow(
            "GuardrailGate", gate, id=gate_id, task_queue=task_queue, result_type=GuardrailReport
        )
    return report, await env.client.get_workflow_handle(gate_id).fetch_history()


def _dispatches(history: Any) -> tuple[list[str], int]:
    """The activity ids a gate scheduled on the task queue, and how many local activities ran."""
    scheduled = [
        e.activity_task_scheduled_event_attributes.activity_id
        for e in history.events
        if e.HasField("activity_task_scheduled_event_attributes")
    ]
    local = sum(
        1
        for e in history.events
        if e.HasField("marker_recorded_event_attributes")
        and e.marker_recorded_event_attributes.marker_name == "core_local_activity"
    )
    return scheduled, local


async def test_local_checks_report_as_activity_checks_do_and_replay(
    env: WorkflowEnvironment, task_queue: str
) -> None:
    """A gate whose rules are all ``dispatch: local``: same results, owners and reasons.

    Only ``resolve_policy`` is scheduled on the task queue; each check is one local-activity
    marker; the history replays, the timed-out check included (its replay raises another
    exception type than its first run did, and must still take the same path).
    """
    report, history = await _gate_history(
        env, task_queue, _local_bundle(), GateInput(change=_change())
    )
    assert report.decision is Decision.BLOCK
    assert [(c.guardrail, c.status, c.owner) for c in report.checks] == [
        ("fake-timing", CheckStatus.FAIL, "release-eng"),
        ("fake-lock", CheckStatus.PASS, "platform"),
        ("fake-health", CheckStatus.ERROR, "service-owners"),
        ("fake-state", CheckStatus.ERROR, "infra"),
        ("fake-inflight", CheckStatus.PASS, "sre"),
    ]
    assert report.checks[0].reason == "fake-timing says no"
    assert report.checks[2].reason == "the check did not answer within 2s"
    assert report.checks[3].reason.endswith("RuntimeError: fake-state exploded")
    assert report.checks[3].remedy.startswith("fix the cause reported by fake-state")
    scheduled, local = _dispatches(history)
    assert (len(scheduled), local) == (1, 5)
    replayed = await build_replayer().replay_workflow(history, raise_on_replay_failure=False)
    assert replayed.replay_failure is None, str(replayed.replay_failure)


async def test_a_request_check_runs_every_check_of_its_gate_as_an_activity(
    env: WorkflowEnvironment, task_queue: str
) -> None:
    """A request may add a check, never choose local; its gate then runs all checks as activities.

    (Local activities in flight hold back the activities their workflow task schedules, so a
    gate of both kinds would run its activity checks only after the local ones.)
    """
    added = {"guardrails": [{"use": "always-pass"}]}
    report, history = await _gate_history(
        env, task_queue, _local_bundle(), GateInput(change=_change(), policy=added)
    )
    assert [(c.guardrail, c.status) for c in report.checks][-1] == (
        "always-pass",
        CheckStatus.PASS,
    )
    assert report.checks[2].reason == "the check did not answer within 2s"
    scheduled, local = _dispatches(history)
    assert local == 0
    assert scheduled[1:] == [f"check-{c.rule}" for c in report.checks]
    replayed = await build_replayer().replay_workflow(history, raise_on_replay_failure=False)
    assert replayed.replay_failure is None, str(replayed.replay_failure)

"""GuardedChange's gate loop: block, wait, recheck and deadline (time-skipping)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from temporalio.client import WorkflowFailureError
from temporalio.exceptions import CancelledError
from temporalio.testing import WorkflowEnvironment

from tests import fakes
from tests.builders import change_request, target_list
from tests.fakes import Ledger, RecordingKind, Switch
from tests.helpers import start_time_skipping, until_phase
from worker.main import build_worker
from workflows.models import (
    ChangeRequest,
    ChangeResult,
    ChangeStatus,
    Outcome,
    Phase,
    RecheckInput,
)


@pytest.fixture(autouse=True)
def reset() -> Ledger:
    RecordingKind.ledger = Ledger()
    Switch.outcome = "fail"
    return RecordingKind.ledger


def _request(*, deadline: datetime | None = None, opt_out: Any = None) -> ChangeRequest:
    rule: dict[str, Any] = {"use": "switch"}
    if opt_out is not None:
        rule["opt_out"] = opt_out
    return change_request(
        summary="gate loop",
        targets=target_list(2),
        policy={"guardrails": [rule]},
        deadline=deadline,
    )


async def test_blocked_change_mutates_nothing_until_recheck_passes(
    env: WorkflowEnvironment, task_queue: str, reset: Ledger
) -> None:
    """Blocked: no mutation; after the cause is fixed, a recheck lets it proceed (I1)."""
    req = _request(opt_out="forbidden")
    async with build_worker(
        env.client, task_queue=task_queue, guardrails=fakes.guardrails(), kinds=fakes.kinds()
    ):
        handle = await env.client.start_workflow(
            "GuardedChange", req, id=req.change_id, task_queue=task_queue, result_type=ChangeResult
        )
        blocked = await until_phase(handle, Phase.BLOCKED)
        assert reset.applied == []
        assert blocked.awaiting_from == []
        assert (
            blocked.report is not None and blocked.report.failures[0].reason == "the switch is off"
        )

        await handle.signal("recheck", RecheckInput(requested_by="bob"))
        await until_phase(handle, Phase.BLOCKED)
        assert reset.applied == []

        Switch.outcome = "pass"
        await handle.signal("recheck", RecheckInput(requested_by="bob"))
        result = await handle.result()
    assert result.outcome is Outcome.COMPLETED
    assert sorted(reset.applied) == ["t1", "t2"]


async def test_approvable_failure_awaits_named_groups(
    env: WorkflowEnvironment, task_queue: str, reset: Ledger
) -> None:
    """An approvable failure puts the change in AwaitingApproval from the policy's groups."""
    req = _request(opt_out={"approvers": ["sre-leads", "release-managers"]})
    async with build_worker(
        env.client, task_queue=task_queue, guardrails=fakes.guardrails(), kinds=fakes.kinds()
    ):
        handle = await env.client.start_workflow(
            "GuardedChange", req, id=req.change_id, task_queue=task_queue, result_type=ChangeResult
        )
        status = await until_phase(handle, Phase.AWAITING_APPROVAL)
        await handle.cancel()
        # Let the cancel finish inside this worker: an orphaned workflow task would stop the
        # time-skipping server from ever skipping time again, hanging later tests.
        with pytest.raises(WorkflowFailureError):
            await handle.result()
    assert status.awaiting_from == ["release-managers", "sre-leads"]
    assert reset.applied == []


async def test_blocked_until_deadline_is_rejected(
    env: WorkflowEnvironment, task_queue: str, reset: Ledger
) -> None:
    """A gate that never passes ends rejected at the deadline, having mutated nothing."""
    req = _request(deadline=datetime.now(UTC) + timedelta(hours=2))
    async with build_worker(
        env.client, task_queue=task_queue, guardrails=fakes.guardrails(), kinds=fakes.kinds()
    ):
        result = await env.client.execute_workflow(
            "GuardedChange", req, id=req.change_id, task_queue=task_queue, result_type=ChangeResult
        )
    assert result.outcome is Outcome.REJECTED
    assert "deadline" in result.message
    assert reset.applied == []


async def test_wait_then_proceed(env: WorkflowEnvironment, task_queue: str, reset: Ledger) -> None:
    """A wait decision sleeps until retry_after, gates again, and proceeds when it passes."""
    Switch.outcome = "wait"
    req = _request()
    async with build_worker(
        env.client, task_queue=task_queue, guardrails=fakes.guardrails(), kinds=fakes.kinds()
    ):
        handle = await env.client.start_workflow(
            "GuardedChange", req, id=req.change_id, task_queue=task_queue, result_type=ChangeResult
        )
        waiting = await until_phase(handle, Phase.WAITING)
        assert reset.applied == []
        Switch.outcome = "pass"
        result = await handle.result()
        final = await handle.query("status", result_type=ChangeStatus)
    assert waiting.message.startswith("waiting until")
    assert result.outcome is Outcome.COMPLETED
    assert final.gate_runs == 2


async def test_recheck_without_payload_still_rechecks(
    env: WorkflowEnvironment, task_queue: str, reset: Ledger
) -> None:
    """A recheck signal with no data (the UI's empty field) reruns the gate instead of wedging."""
    req = _request(opt_out="forbidden")
    async with build_worker(
        env.client, task_queue=task_queue, guardrails=fakes.guardrails(), kinds=fakes.kinds()
    ):
        handle = await env.client.start_workflow(
            "GuardedChange", req, id=req.change_id, task_queue=task_queue, result_type=ChangeResult
        )
        await until_phase(handle, Phase.BLOCKED)
        Switch.outcome = "pass"
        await handle.signal("recheck")
        result = await handle.result()
    assert result.outcome is Outcome.COMPLETED


async def test_invalid_policy_at_run_time_is_rejected(
    env: WorkflowEnvironment, task_queue: str, reset: Ledger
) -> None:
    """A policy the worker cannot use ends the change rejected (not rolled back), nothing applied."""
    req = _request().model_copy(update={"policy": {"guardrails": [{"use": "no-such-guardrail"}]}})
    async with build_worker(
        env.client, task_queue=task_queue, guardrails=fakes.guardrails(), kinds=fakes.kinds()
    ):
        result = await env.client.execute_workflow(
            "GuardedChange", req, id=req.change_id, task_queue=task_queue, result_type=ChangeResult
        )
    assert result.outcome is Outcome.REJECTED
    assert "no-such-guardrail" in result.message
    assert reset.applied == []


@pytest.fixture
async def own_env(env: WorkflowEnvironment) -> AsyncIterator[WorkflowEnvironment]:
    """A time-skipping server of the test's own, thrown away after it.

    The gate cancels a running check without waiting for it (a check need not heartbeat), so the
    gate closes while its check activity still runs. The time-skipping test server never drops
    the time lock of an activity whose workflow has closed (neither the worker's late report nor
    the activity's timeout releases it), so on the session's server no later test could skip
    time again. Another kind of server (``--workflow-environment``) has no such lock: share it.
    """
    if not env.supports_time_skipping:
        yield env
        return
    environment = await start_time_skipping()
    try:
        yield environment
    finally:
        await environment.shutdown()


async def test_cancel_while_gating_mutates_nothing(
    own_env: WorkflowEnvironment, task_queue: str, reset: Ledger
) -> None:
    """Cancelled while its gate's check still runs: the change ends cancelled, nothing applied."""
    env = own_env
    req = _request().model_copy(
        update={
            "policy": {
                "guardrails": [
                    {"use": "fake-health", "params": {"outcome": "hang"}, "timeout": "1h"}
                ]
            }
        }
    )
    async with build_worker(
        env.client, task_queue=task_queue, guardrails=fakes.guardrails(), kinds=fakes.kinds()
    ):
        handle = await env.client.start_workflow(
            "GuardedChange", req, id=req.change_id, task_queue=task_queue, result_type=ChangeResult
        )
        await until_phase(handle, Phase.GATING)
        await handle.cancel()
        with pytest.raises(WorkflowFailureError) as info:
            await handle.result()
        final = await handle.query("status", result_type=ChangeStatus)
    assert isinstance(info.value.cause, CancelledError)
    assert (final.phase, final.outcome) == (Phase.ABORTED, Outcome.ABORTED)
    assert reset.applied == []

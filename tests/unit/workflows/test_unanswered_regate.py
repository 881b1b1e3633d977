"""A block made only of checks that could not answer gates again by itself (chaos finding 11).

In the long chaos campaign a change's second gate had its `release-window` check time out while
the Temporal server restarted: an `error`, so a `block`. The change waited for a recheck until
its deadline a day later, holding its target locks, and three changes queued behind it. A block
in which nothing *failed* now gates again with backoff; a block with a real failure still waits.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any, ClassVar

import pytest
from temporalio.testing import WorkflowEnvironment

from guardrails.base import CheckContext, EmptyParams, Guardrail
from tests import fakes
from tests.builders import change_request
from tests.fakes import Ledger, RecordingKind, Switch
from tests.helpers import until_phase, until_status
from worker.main import build_worker
from workflows import gate_loop
from workflows.guarded_change import GuardedChangeWorkflow
from workflows.models import (
    Category,
    ChangeRequest,
    CheckResult,
    CheckStatus,
    GuardrailReport,
    Outcome,
    Phase,
)
from workflows.report import aggregate


class Unanswering(Guardrail[EmptyParams]):
    """A check that raises (its dependency is down) until a test says it answers."""

    name = "unanswering"
    category = Category.TARGET_STATE
    default_owner = "infra"
    default_timeout = timedelta(seconds=5)
    answers: ClassVar[bool] = False

    async def check(self, params: EmptyParams, ctx: CheckContext) -> CheckResult:
        if not Unanswering.answers:
            raise RuntimeError("the state service is down")
        return ctx.passed("the state service answers")


@pytest.fixture(autouse=True)
def reset() -> Ledger:
    RecordingKind.ledger = Ledger()
    Switch.outcome = "fail"
    Unanswering.answers = False
    return RecordingKind.ledger


def _registry() -> Any:
    registry = fakes.guardrails()
    registry.register(Unanswering)
    return registry


def _request(*rules: dict[str, Any]) -> ChangeRequest:
    return change_request(summary="unanswered", policy={"guardrails": list(rules)})


async def test_a_block_of_unanswered_checks_gates_again_by_itself(
    env: WorkflowEnvironment, task_queue: str, reset: Ledger
) -> None:
    """No recheck is sent: the change gates again after 30 s, then 60 s, and proceeds."""
    req = _request({"use": "unanswering", "opt_out": "forbidden"})
    async with build_worker(
        env.client, task_queue=task_queue, guardrails=_registry(), kinds=fakes.kinds()
    ):
        handle = await env.client.start_workflow(
            GuardedChangeWorkflow.run, req, id=req.change_id, task_queue=task_queue
        )
        blocked = await until_phase(handle, Phase.BLOCKED, within=60)
        assert blocked.report is not None
        assert blocked.report.failures[0].status.value == "error"
        assert "it gates again by itself at " in blocked.message
        assert "(a check could not answer; automatic re-gate 1 of 12)" in blocked.message
        assert reset.applied == []
        await env.sleep(timedelta(seconds=40))  # past the first re-gate (30 s), not the second
        second = await until_status(handle, lambda s: s.gate_runs == 2 and s.phase is Phase.BLOCKED)
        assert "automatic re-gate 2 of 12" in second.message
        Unanswering.answers = True  # the dependency is back; nobody rechecks
        result = await handle.result()
        final = await handle.query(GuardedChangeWorkflow.status)
    assert result.outcome is Outcome.COMPLETED
    assert reset.applied == ["t1"]
    assert final.gate_runs == 3


async def test_after_twelve_automatic_regates_it_pages_once_and_waits_for_a_person(
    env: WorkflowEnvironment, task_queue: str, reset: Ledger
) -> None:
    """The check never answers: 12 re-gates (~85 min), one page, then no more gates by itself."""
    req = _request({"use": "unanswering", "opt_out": "forbidden"})
    async with build_worker(
        env.client, task_queue=task_queue, guardrails=_registry(), kinds=fakes.kinds()
    ):
        handle = await env.client.start_workflow(
            GuardedChangeWorkflow.run, req, id=req.change_id, task_queue=task_queue
        )
        await until_phase(handle, Phase.BLOCKED, within=60)
        await env.sleep(timedelta(hours=2))  # past every automatic re-gate (about 85 minutes)
        spent = await until_status(handle, lambda s: s.gate_runs == 13 and bool(s.pages))
        await env.sleep(timedelta(hours=2))
        later = await handle.query(GuardedChangeWorkflow.status)
        await handle.cancel()
        with pytest.raises(Exception):  # noqa: B017 (cancelled: any failure type)
            await handle.result()
    assert "gates again by itself" not in spent.message
    assert [p for p in spent.pages if "could not answer through 12 automatic re-gates" in p]
    assert (later.phase, later.gate_runs, len(later.pages)) == (Phase.BLOCKED, 13, len(spent.pages))
    assert reset.applied == []


async def test_a_real_failure_beside_an_unanswered_check_still_waits_for_a_person(
    env: WorkflowEnvironment, task_queue: str, reset: Ledger
) -> None:
    """A block with a `fail` is a "no": it never gates again by itself, whatever else errs."""
    req = _request(
        {"use": "unanswering", "opt_out": "forbidden"}, {"use": "switch", "opt_out": "forbidden"}
    )
    async with build_worker(
        env.client, task_queue=task_queue, guardrails=_registry(), kinds=fakes.kinds()
    ):
        handle = await env.client.start_workflow(
            GuardedChangeWorkflow.run, req, id=req.change_id, task_queue=task_queue
        )
        blocked = await until_phase(handle, Phase.BLOCKED, within=60)
        assert "gates again by itself" not in blocked.message
        await env.sleep(timedelta(minutes=20))  # long past every automatic re-gate's delay
        later = await handle.query(GuardedChangeWorkflow.status)
        await handle.cancel()
        with pytest.raises(Exception):  # noqa: B017 (cancelled: any failure type)
            await handle.result()
    assert (later.phase, later.gate_runs) == (Phase.BLOCKED, 1)
    assert reset.applied == []


def _report(*statuses: str) -> GuardrailReport:
    checks = [
        CheckResult(
            rule=f"rule-{i}",
            guardrail=f"rule-{i}",
            category=Category.TARGET_STATE,
            status=CheckStatus(status),
            reason="why",
            remedy="what",
            owner="infra",
        )
        for i, status in enumerate(statuses)
    ]
    return aggregate(checks, policy_hash="p", now=datetime.now(UTC))


def test_unanswered_only_needs_an_error_and_no_failure() -> None:
    """The rule itself: error (+ waits) re-gates; any fail, or only waits, does not."""
    assert gate_loop.unanswered_only(_report("error")) is True
    assert gate_loop.unanswered_only(_report("error", "wait", "pass")) is True
    assert gate_loop.unanswered_only(_report("error", "fail")) is False
    assert gate_loop.unanswered_only(_report("fail")) is False
    assert gate_loop.unanswered_only(_report("wait")) is False

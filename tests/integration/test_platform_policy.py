"""The platform's bundle is the authority, whatever a raw Temporal client sends (dev server).

Every change here is started with ``client.start_workflow("GuardedChange", <plain dict>)``, as any
SDK or ``temporal workflow start`` would: the CLI's edge checks are not in the path.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml
from temporalio.client import Client
from temporalio.testing import WorkflowEnvironment

from activities.audit import AuditActivities
from demo.fleet import FleetServer
from guardrails.base import default_registry
from guardrails.bundle import BundleHolder
from tests.helpers import until_status
from worker.main import build_worker
from worker.settings import Settings
from workflows.models import (
    TERMINAL_PHASES,
    Approval,
    ApprovalResult,
    ChangeResult,
    ChangeStatus,
    Decision,
    OperatorAction,
    OperatorActionResult,
    Outcome,
    Phase,
)

pytestmark = [pytest.mark.integration, pytest.mark.timeout(120)]

ALWAYS = {"timezone": "UTC", "allow": ["Mon-Sun 00:00-24:00"]}
GOVERNED = {"environments": ["prod", "staging"]}


def platform(fleet_url: str, freeze: bool = False) -> dict[str, Any]:
    """The bundle: the floor for prod and staging, and a release window for prod."""
    window: dict[str, Any] = dict(ALWAYS)
    if freeze:
        today = datetime.now(UTC).date()
        window["freeze"] = [f"{today.isoformat()}/{(today + timedelta(days=1)).isoformat()}"]
    return {
        "guardrails": [
            {"use": "environment-boundary", "applies_to": GOVERNED, "opt_out": "forbidden"},
            {"use": "target-lock", "applies_to": GOVERNED},
            {
                "id": "release-window",
                "use": "change-window",
                "applies_to": {"environments": ["prod"]},
                "owner": "release-eng",
                "params": window,
                "opt_out": {"approvers": ["sre-leads"], "max_duration": "1h"},
            },
        ]
    }


@pytest.fixture
def operators() -> str:
    return "operators:\n  bob: [sre-leads]\n"


@pytest.fixture
def bundle_path(tmp_path: Path, fleet: FleetServer) -> Path:
    path = tmp_path / "platform.yaml"
    path.write_text(yaml.safe_dump(platform(fleet.url)))
    return path


@pytest.fixture
async def holder(
    dev_env: WorkflowEnvironment, task_queue: str, bundle_path: Path, audit: AuditActivities
) -> AsyncIterator[BundleHolder]:
    """A worker (replaying every task) holding the bundle at ``bundle_path``, watched closely."""
    guardrails = default_registry()
    held = BundleHolder.load(bundle_path, registry=guardrails)
    held.interval = 0.2
    settings = Settings.from_env(task_queue=task_queue)
    async with build_worker(
        dev_env.client,
        settings,
        bundle=held,
        guardrails=guardrails,
        audit=audit,
        max_cached_workflows=0,
    ):
        yield held


def request(fleet_url: str, change_id: str, **overrides: Any) -> dict[str, Any]:
    """A plain-dict request: a prod change that also reaches a host it says is in staging."""
    doc: dict[str, Any] = {
        "change_id": change_id,
        "kind": "http-deploy",
        "summary": "deploy 1.1.0",
        "requester": "alice",
        "team": "web",
        "environment": "prod",
        "targets": [{"id": "web-01"}, {"id": "web-02", "environment": "staging"}],
        "params": {"base_url": fleet_url, "version": "1.1.0"},
        "rollout": {"waves": ["100%"], "max_parallel": 2},
    }
    doc.update(overrides)
    return doc


async def start(client: Client, task_queue: str, doc: dict[str, Any]) -> Any:
    return await client.start_workflow(
        "GuardedChange", doc, id=doc["change_id"], task_queue=task_queue, result_type=ChangeResult
    )


async def deploys(fleet: FleetServer, change_id: str) -> list[str]:
    """The hosts the fleet's own ledger says this change deployed to."""
    async with httpx.AsyncClient(base_url=fleet.url, trust_env=False) as http:
        ledger = (await http.get("/deploys")).json()
    return [d["host"] for d in ledger if d["idempotency_key"].startswith(f"{change_id}:")]


async def abort(handle: Any) -> None:
    await handle.execute_update(
        "abort", OperatorAction(operator="test", reason="done"), result_type=OperatorActionResult
    )


def cid(name: str) -> str:
    return f"{name}-{uuid.uuid4().hex[:8]}"


@pytest.mark.parametrize(
    "policy",
    [
        pytest.param("omitted", id="no-policy"),
        pytest.param(None, id="null-policy"),
        pytest.param({"guardrails": []}, id="empty-guardrails"),
    ],
)
async def test_without_a_policy_the_platform_rules_still_block_a_cross_environment_change(
    dev_env: WorkflowEnvironment,
    task_queue: str,
    fleet: FleetServer,
    holder: BundleHolder,
    policy: Any,
) -> None:
    """No policy, a null one or an empty one: every platform rule runs; the boundary blocks."""
    change_id = cid("no-policy")
    doc = request(fleet.url, change_id)
    if policy != "omitted":
        doc["policy"] = policy
    handle = await start(dev_env.client, task_queue, doc)
    status = await until_status(handle, lambda s: s.phase is Phase.BLOCKED, within=30)
    assert status.report is not None
    assert [c.rule_id for c in status.report.checks] == [
        "environment-boundary",
        "target-lock",
        "release-window",
    ]
    assert [c.rule_id for c in status.report.failures] == ["environment-boundary"]
    assert status.report.bundle_hash == holder.current_hash()
    assert "web-02" in status.report.failures[0].reason
    await abort(handle)
    result = await handle.result()
    assert (result.outcome, await deploys(fleet, change_id)) == (Outcome.ABORTED, [])


@pytest.mark.parametrize(
    ("policy", "why"),
    [
        pytest.param(
            {"guardrails": [{"use": "environment-boundary", "mode": "shadow"}]},
            "policy.guardrails[0].use: 'environment-boundary' is a platform rule",
            id="shadow-by-re-id",
        ),
        pytest.param(
            {"guardrails": [{"id": "release-window", "use": "change-window", "params": ALWAYS}]},
            "policy.guardrails[0].id: 'release-window' is a platform rule",
            id="replace-by-id",
        ),
        pytest.param(
            {"guardrails": [{"id": "eb-lenient", "use": "environment-boundary", "mode": "shadow"}]},
            "policy.guardrails[0]: environment-boundary is a floor guardrail",
            id="shadow-a-floor-rule",
        ),
        pytest.param(
            {
                "guardrails": [
                    {
                        "id": "eb-approvable",
                        "use": "environment-boundary",
                        "opt_out": {"approvers": ["web-team"]},
                    }
                ]
            },
            "policy.guardrails[0]: environment-boundary is a floor guardrail",
            id="opt-out-of-a-floor-rule",
        ),
        pytest.param(
            {"unmatched": "allow"},
            "policy.unmatched: a request cannot set 'unmatched'",
            id="set-unmatched",
        ),
        pytest.param(
            {
                "guardrails": [
                    {"id": "eb-local", "use": "environment-boundary", "dispatch": "local"}
                ]
            },
            "policy.guardrails[0].dispatch: only the platform bundle decides how a check runs",
            id="run-a-check-locally",
        ),
    ],
)
async def test_a_request_that_tries_to_weaken_the_platform_is_rejected(
    dev_env: WorkflowEnvironment,
    task_queue: str,
    fleet: FleetServer,
    holder: BundleHolder,
    policy: dict[str, Any],
    why: str,
) -> None:
    """Shadowing, re-iding, opting out of a platform rule or setting `unmatched`: rejected."""
    change_id = cid("weaken")
    handle = await start(dev_env.client, task_queue, request(fleet.url, change_id, policy=policy))
    result = await handle.result()
    assert result.outcome is Outcome.REJECTED
    assert "the request's policy is refused" in result.message
    assert why in result.message
    assert await deploys(fleet, change_id) == []


async def test_an_ungoverned_change_is_rejected(
    dev_env: WorkflowEnvironment, task_queue: str, fleet: FleetServer, holder: BundleHolder
) -> None:
    """A change no platform rule's applies_to matches is rejected, whatever rules it adds."""
    change_id = cid("ungoverned")
    doc = request(
        fleet.url,
        change_id,
        environment="sandbox",
        targets=[{"id": "web-01"}],
        policy={"guardrails": [{"id": "my-window", "use": "change-window", "params": ALWAYS}]},
    )
    result = await (await start(dev_env.client, task_queue, doc)).result()
    assert result.outcome is Outcome.REJECTED
    assert (
        "no platform policy governs environment sandbox, kind http-deploy, team web; ask the "
        "platform team to add a rule (or set unmatched: allow)"
    ) in result.message
    assert await deploys(fleet, change_id) == []


async def test_two_rules_of_one_guardrail_both_run_and_an_approval_names_one(
    dev_env: WorkflowEnvironment, task_queue: str, fleet: FleetServer, holder: BundleHolder
) -> None:
    """Two http-health rules with their own ids both report; approving one by id proceeds."""
    change_id = cid("two-rules")
    approvable = {"approvers": ["sre-leads"], "max_duration": "1h"}
    doc = request(
        fleet.url,
        change_id,
        targets=[{"id": "web-01"}],
        policy={
            "guardrails": [
                {
                    "id": "fleet-health",
                    "use": "http-health",
                    "params": {"url": f"{fleet.url}/healthz"},
                },
                {
                    "id": "fleet-canary",
                    "use": "http-health",
                    "params": {"url": f"{fleet.url}/no-such-page"},
                    "opt_out": approvable,
                },
            ]
        },
    )
    handle = await start(dev_env.client, task_queue, doc)
    status = await until_status(handle, lambda s: s.phase is Phase.AWAITING_APPROVAL, within=30)
    report = status.report
    assert report is not None
    assert [(c.rule_id, c.guardrail, c.source, c.status.value) for c in report.checks] == [
        ("environment-boundary", "environment-boundary", "platform", "pass"),
        ("target-lock", "target-lock", "platform", "pass"),
        ("release-window", "change-window", "platform", "pass"),
        ("fleet-health", "http-health", "request", "pass"),
        ("fleet-canary", "http-health", "request", "fail"),
    ]
    assert (status.still_needed, status.awaiting_from) == ({"fleet-canary": 1}, ["sre-leads"])
    answer = await handle.execute_update(
        "approve",
        Approval(
            guardrails=["fleet-canary"],
            approver="bob",
            reason="the canary page is not deployed yet",
            report_hash=report.report_hash,
        ),
        result_type=ApprovalResult,
    )
    assert (answer.accepted, answer.still_needed) == (["fleet-canary"], {})
    result = await handle.result()
    assert (result.outcome, await deploys(fleet, change_id)) == (Outcome.COMPLETED, ["web-01"])


async def test_a_bundle_edit_reaches_a_baking_change_before_its_next_wave(
    dev_env: WorkflowEnvironment,
    task_queue: str,
    fleet: FleetServer,
    holder: BundleHolder,
    bundle_path: Path,
) -> None:
    """A freeze added while wave 1 bakes pauses, then blocks wave 2 (new hash); a bad edit is refused.

    The freeze reaches past the deadline: the rule's ``mid_rollout: pause`` (the default) pages and
    pauses before wave 2; resumed, the re-gate decides, and the closed rule blocks (approvable).
    """
    change_id = cid("edited")
    doc = request(
        fleet.url,
        change_id,
        targets=[{"id": "web-01"}, {"id": "web-02"}],
        rollout={"waves": ["1", "100%"], "max_parallel": 1, "bake": "5s"},
    )
    first = holder.current_hash()
    handle = await start(dev_env.client, task_queue, doc)
    await until_status(handle, lambda s: s.phase is Phase.BAKING, within=30)

    await asyncio.to_thread(bundle_path.write_text, yaml.safe_dump(platform(fleet.url, True)))
    paused = await until_status(
        handle, lambda s: s.phase is Phase.PAUSED or s.phase in TERMINAL_PHASES, within=30
    )
    assert paused.phase is Phase.PAUSED, paused.message
    assert "paused before wave 2/2 (mid_rollout: pause): release-window:" in paused.message
    assert [p for p in paused.pages if "paused before wave 2/2" in p]
    await handle.execute_update(
        "resume",
        OperatorAction(operator="test", reason="let the gate decide"),
        result_type=OperatorActionResult,
    )
    status = await until_status(
        handle,
        lambda s: s.phase is Phase.AWAITING_APPROVAL or s.phase in TERMINAL_PHASES,
        within=30,
    )
    frozen = holder.current_hash()
    assert frozen != first
    gate = status.last_gate
    assert gate is not None and status.report is not None
    assert (gate.decision, gate.bundle_hash, gate.bundle_warning) == (Decision.BLOCK, frozen, "")
    assert [c.rule_id for c in gate.failures] == ["release-window"]
    assert "freeze" in gate.failures[0].reason
    assert await deploys(fleet, change_id) == ["web-01"]  # wave 2 never started

    await asyncio.to_thread(bundle_path.write_text, "guardrails:\n  - use: no-such-guardrail\n")
    await _until(lambda: bool(holder.warning))
    assert holder.current_hash() == frozen
    await handle.signal("recheck", {"requested_by": "test", "reason": "after the edit"})
    status = await until_status(
        handle, lambda s: s.gate_runs > status.gate_runs and s.phase is Phase.AWAITING_APPROVAL
    )
    assert status.last_gate is not None
    assert status.last_gate.bundle_hash == frozen
    assert "refused" in status.last_gate.bundle_warning
    assert "no guardrail named 'no-such-guardrail'" in status.last_gate.bundle_warning
    await abort(handle)
    result = await handle.result()
    assert (result.outcome, result.reverted) == (Outcome.ABORTED, ["web-01"])


async def _until(ready: Any, within: float = 10) -> None:
    for _ in range(int(within / 0.1)):
        if ready():
            return
        await asyncio.sleep(0.1)
    raise AssertionError("condition not met")


async def test_a_raw_gate_start_with_garbage_fails_the_gate_not_a_task(
    dev_env: WorkflowEnvironment, task_queue: str, holder: BundleHolder
) -> None:
    """GuardrailGate started with no payload or a non-object fails with InvalidInput at once."""
    from temporalio.client import WorkflowFailureError
    from temporalio.exceptions import ApplicationError

    for args in ([], [None], ["garbage"], [{"change": 3}]):
        with pytest.raises(WorkflowFailureError) as caught:
            await dev_env.client.execute_workflow(
                "GuardrailGate",
                args=args,
                id=cid("raw-gate"),
                task_queue=task_queue,
                execution_timeout=timedelta(seconds=20),
            )
        cause = caught.value.cause
        assert isinstance(cause, ApplicationError) and cause.type == "InvalidInput", cause
        assert "the gate's input" in cause.message


async def test_the_status_of_every_raw_start_answers(
    dev_env: WorkflowEnvironment, task_queue: str, fleet: FleetServer, holder: BundleHolder
) -> None:
    """A rejected raw start stays answerable: its status query names the reason."""
    change_id = cid("answerable")
    handle = await start(
        dev_env.client, task_queue, request(fleet.url, change_id, policy={"pager": "webhook"})
    )
    await handle.result()
    status = await handle.query("status", result_type=ChangeStatus)
    assert status.phase is Phase.REJECTED
    assert "policy.pager: a request cannot set 'pager'" in status.message

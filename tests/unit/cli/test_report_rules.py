"""``changeguard report rules`` agrees with the change ledger over a scripted set of changes."""

from __future__ import annotations

import asyncio
import json
import os
import sys
from pathlib import Path
from typing import Any

import pytest
from temporalio.client import WorkflowHandle
from temporalio.testing import WorkflowEnvironment

from activities.audit import AuditActivities, SqliteAuditStore
from cli.report import percentile, rule_stats
from tests import fakes
from tests.builders import change_request, new_change_id
from tests.fakes import Ledger, RecordingKind, Switch
from tests.helpers import until_phase
from worker.main import build_worker
from workflows.models import (
    Approval,
    ApprovalResult,
    AuditAction,
    AuditQuery,
    AuditRecord,
    ChangeRequest,
    ChangeResult,
    ChangeStatus,
    OperatorAction,
    Outcome,
    Phase,
)

BUNDLE: dict[str, Any] = {
    "unmatched": "allow",
    "guardrails": [
        {"id": "gatekeeper", "use": "switch", "opt_out": {"approvers": ["sre-leads"]}},
        {
            "id": "canary-shadow",
            "use": "fake-health",
            "mode": "shadow",
            "applies_to": {"environments": ["staging"]},
            "params": {"outcome": "fail", "reason": "canary error rate 3%"},
        },
    ],
}


@pytest.fixture
def operators() -> str:
    return "operators:\n  bob: [sre-leads]\n"


def _request(environment: str) -> ChangeRequest:
    return change_request(
        change_id=new_change_id("rep"),
        summary="report rules script",
        team="web",
        environment=environment,
    )


async def _start(
    env: WorkflowEnvironment, req: ChangeRequest, tq: str
) -> WorkflowHandle[Any, ChangeResult]:
    return await env.client.start_workflow(
        "GuardedChange", req, id=req.change_id, task_queue=tq, result_type=ChangeResult
    )


async def _report(db: Path, *args: str) -> tuple[int, str]:
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "cli.main",
        "report",
        "rules",
        *args,
        env={**os.environ, "CHANGEGUARD_AUDIT_URL": f"sqlite:///{db}", "COLUMNS": "160"},
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(proc.communicate(), timeout=60)
    assert proc.returncode is not None, err
    return proc.returncode, out.decode() + err.decode()


async def test_report_rules_json_agrees_with_the_ledger(
    env: WorkflowEnvironment,
    task_queue: str,
    audit: AuditActivities,
    store: SqliteAuditStore,
    tmp_path: Path,
) -> None:
    """Blocked twice by one rule, one approval, one shadow would-have-blocked: counted so."""
    RecordingKind.ledger = Ledger()
    Switch.outcome = "fail"
    approved, aborted, shadowed = _request("prod"), _request("prod"), _request("staging")
    async with build_worker(
        env.client,
        task_queue=task_queue,
        guardrails=fakes.guardrails(),
        kinds=fakes.kinds(),
        audit=audit,
        bundle=BUNDLE,
    ):
        first = await _start(env, approved, task_queue)
        status = await until_phase(first, Phase.AWAITING_APPROVAL)
        assert status.report is not None
        await first.execute_update(
            "approve",
            Approval(
                guardrails=["gatekeeper"],
                approver="bob",
                reason="hotfix for incident 42",
                report_hash=status.report.report_hash,
            ),
            result_type=ApprovalResult,
        )
        second = await _start(env, aborted, task_queue)
        await until_phase(second, Phase.AWAITING_APPROVAL)
        await second.execute_update(
            "abort", OperatorAction(operator="bob", reason="not today"), result_type=dict
        )
        Switch.outcome = "pass"
        third = await _start(env, shadowed, task_queue)
        results = [await h.result() for h in (first, second, third)]
        shadow_status = await third.query("status", result_type=ChangeStatus)
    assert [r.outcome for r in results] == [Outcome.COMPLETED, Outcome.ABORTED, Outcome.COMPLETED]
    assert shadow_status.report is not None
    assert [(c.rule_id, c.status.value, c.mode.value) for c in shadow_status.report.checks] == [
        ("gatekeeper", "pass", "enforce"),
        ("canary-shadow", "fail", "shadow"),
    ]

    code, out = await _report(tmp_path / "audit.db", "--json", "--since", "30d")
    assert code == 0, out
    doc = json.loads(out)
    got = {r["rule"]: r for r in doc["rules"]}
    assert {
        rule: {k: got[rule][k] for k in ("evaluations", "failures", "blocked", "approved")}
        | {"would_have_blocked": got[rule]["would_have_blocked"]}
        for rule in got
    } == {
        "gatekeeper": {
            "evaluations": 3,
            "failures": 2,
            "blocked": 2,
            "approved": 1,
            "would_have_blocked": 0,
        },
        "canary-shadow": {
            "evaluations": 1,
            "failures": 1,
            "blocked": 0,
            "approved": 0,
            "would_have_blocked": 1,
        },
    }

    # The same figures, recomputed by hand from the ledger's own records.
    records = store.list(AuditQuery(limit=10_000))
    gates = [r for r in records if r.action is AuditAction.GATE]
    assert len(gates) == 3
    shadow_gate = next(r for r in gates if r.change_id == shadowed.change_id)
    assert shadow_gate.detail["shadow_failing"] == ["canary-shadow"]
    assert shadow_gate.detail["checks"][1]["reason"] == "canary error rate 3%"
    runs = [c for r in gates for c in r.detail["checks"] if c["rule"] == "gatekeeper"]
    latencies = [c["ms"] for c in runs]
    assert got["gatekeeper"]["p50_ms"] == percentile(latencies, 50)
    assert got["gatekeeper"]["p95_ms"] == percentile(latencies, 95)
    approvals = [r for r in records if r.action is AuditAction.APPROVAL]
    assert [(r.change_id, r.guardrail) for r in approvals] == [(approved.change_id, "gatekeeper")]
    assert doc["records"] == len(gates) + len(approvals)

    code, table = await _report(tmp_path / "audit.db")
    assert code == 0 and "gatekeeper" in table and "canary-shadow" in table, table


async def test_report_rules_refuses_a_bad_since(tmp_path: Path) -> None:
    """A ``--since`` that is neither a duration nor a date exits 2 and names both forms."""
    code, out = await _report(tmp_path / "audit.db", "--since", "last tuesday")
    assert code == 2
    assert "neither a duration" in out


def test_old_gate_records_still_count_blocks() -> None:
    """A gate record written before per-check details counts its blocks (backward compatible)."""
    old = AuditRecord(
        record_id="x:1",
        action=AuditAction.GATE,
        actor="changeguard",
        at="2026-11-01T09:00:00Z",  # type: ignore[arg-type]
        change_id="x",
        detail={"decision": "block", "failing": ["business-hours"], "waiting": []},
    )
    (stats,) = rule_stats([old])
    assert (stats.rule, stats.evaluations, stats.blocked, stats.p50_ms) == (
        "business-hours",
        0,
        1,
        None,
    )


def test_percentile_is_nearest_rank() -> None:
    """p50 and p95 of 1..20 ms are 10 and 19 ms; no samples give None."""
    samples = list(range(20, 0, -1))
    assert (percentile(samples, 50), percentile(samples, 95), percentile([], 50)) == (10, 19, None)

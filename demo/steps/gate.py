"""Steps 1-3: what the gate decides, and what people can (and cannot) do about it.

1. a freeze: three failures in one report, a fix and a recheck, a forbidden approval refused, abort;
2. a hotfix during the freeze: four eyes (the requester's own approval refused), a second approves;
3. the freeze lifted: a change before its window waits on a durable timer, then proceeds.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

from rich.markup import escape
from temporalio.client import WorkflowUpdateFailedError
from temporalio.exceptions import ApplicationError

from demo.harness import Demo, StepFailed, StepResult, expect
from demo.live import Watch
from demo.narration import operator, say, show_report
from workflows.guarded_change import GuardedChangeWorkflow
from workflows.models import (
    Approval,
    AuditAction,
    ChangeStatus,
    GuardrailReport,
    Phase,
    RecheckInput,
)

WINDOW_LEAD = timedelta(seconds=8)
"""Step 3's window opens at the first whole minute at least this far ahead (windows are minutes)."""
WINDOW_LENGTH = timedelta(hours=2)
"""How long step 3's window stays open (longer than the wave and its bake)."""
DAYS = ("Mon", "Tue", "Wed", "Thu", "Fri", "Sat", "Sun")


def _rule(policy: dict[str, Any], rule_id: str) -> dict[str, Any]:
    return next(r for r in policy["guardrails"] if r.get("id", r["use"]) == rule_id)


def _failing(report: GuardrailReport | None) -> set[str]:
    return set() if report is None else {c.rule_id for c in report.failures}


def _blocked(s: ChangeStatus) -> bool:
    return s.phase in (Phase.BLOCKED, Phase.AWAITING_APPROVAL)


async def step_freeze(d: Demo, r: StepResult) -> None:
    """Step 1: a freeze is declared; three failures at once; a fix, a recheck; refusal; abort."""
    say(
        "An incident is under way. The platform team declares a freeze by adding one file to the "
        "policy bundle the workers hold; they pick it up within seconds, without a restart:"
    )
    await d.declare_freeze()
    d.stand_ins.healthy = False
    say(
        "\nalice wants web 1.0.1 on web-01, web-02 and the staging canary stg-web-01, in one "
        "change. Her team's change file adds one rule of its own to the platform's: session-store "
        "checks the session store the web tier depends on, which is failing over right now (its "
        "health endpoint answers 503)."
    )
    handle = await d.start("freeze-blocked.yaml", r.change_id)
    w = Watch(handle, "1.0.1")
    s = await w.until(_blocked, "the gate's decision")
    show_report(s.report)
    expect(
        _failing(s.report) == {"incident-freeze", "session-store", "environment-boundary"},
        f"the gate should fail incident-freeze, session-store and environment-boundary; "
        f"it failed {sorted(_failing(s.report))}",
    )
    assert s.report is not None
    expect(
        all(c.reason and c.remedy and c.owner for c in s.report.failures),
        "a failure lacks its reason, remedy or owner",
    )
    expect(s.phase is Phase.BLOCKED, f"the change should be Blocked, not {s.phase.value}")
    say(
        "The gate ran every rule in parallel, the platform's and the team's, and did not stop at "
        "the first failure: [bold]one report, three failures[/], each saying why, what would make "
        "it pass and who owns the fix. environment-boundary is a platform floor rule that may "
        "never be approved (opt-out forbidden), so the change is [bold red]Blocked[/], not "
        "AwaitingApproval: nobody can sign it off, and no request can switch it off."
    )

    say("\nThe data team finishes the failover: the session store answers 200 again.")
    d.stand_ins.healthy = True
    operator(f"changeguard recheck {r.change_id} --by alice --reason 'session store is back'")
    await handle.signal(
        GuardedChangeWorkflow.recheck,
        RecheckInput(requested_by="alice", reason="session store is back"),
    )
    s = await w.until(lambda s: s.gate_runs >= 2 and _blocked(s), "the re-check's report")
    show_report(s.report)
    expect(
        _failing(s.report) == {"incident-freeze", "environment-boundary"},
        f"after the fix only incident-freeze and environment-boundary should fail; "
        f"{sorted(_failing(s.report))} did",
    )
    say("session-store passes now; the re-check shows what is left: the freeze and the boundary.")

    say("\nbob, an sre-lead, tries to approve environment-boundary anyway:")
    assert s.report is not None
    operator(
        f"changeguard approve {r.change_id} --guardrail environment-boundary --approver bob "
        "--reason 'staging is harmless'"
    )
    approval = Approval(
        guardrails=["environment-boundary"],
        approver="bob",
        reason="staging is harmless",
        report_hash=s.report.report_hash,
    )
    try:
        await handle.execute_update(GuardedChangeWorkflow.approve, approval)
    except WorkflowUpdateFailedError as exc:
        refusal = exc.cause.message if isinstance(exc.cause, ApplicationError) else str(exc.cause)
        say(f"  [bold red]refused:[/] {escape(refusal)}")
    else:
        raise StepFailed("approving the forbidden environment-boundary was accepted")
    say(
        "The approve update's validator refused it at once, before anything entered the change's "
        "history. A failure whose opt-out is forbidden can never be approved (invariant I2): as "
        "long as environment-boundary fails, the only way forward is to fix the cause, here by "
        "splitting the change per environment."
    )

    say("\nalice gives up on this change: she will split it, and wait for the freeze to end.")
    await d.abort(r.change_id, "alice", "split per environment")
    s = await w.end()
    r.outcome = s.outcome
    expect(await d.deploys(r.change_id) == {}, "the fleet's ledger shows deploys by this change")
    actions = await d.audit_actions(r.change_id)
    expect(
        actions == [("recheck", "alice"), ("abort", "alice")],
        f"the audit store should hold alice's recheck and abort; it holds {actions}",
    )
    say("Nothing was applied, so there was nothing to undo. The audit store kept who did what:")
    operator(f"changeguard audit --change {r.change_id}")
    await d.audit(d.stack.settings, r.change_id)


async def step_approval(d: Demo, r: StepResult) -> None:
    """Step 2: four eyes: the requester's approval is refused, a second sre-lead's accepted."""
    say(
        "web 1.0.0 has a session-cookie bug. alice wants hotfix 1.0.2 on web-04..web-06 now, "
        "during the freeze. The platform's freeze rule lets an sre-lead lift it for one change, "
        "but never for their own (distinct_from_requester)."
    )
    handle = await d.start("hotfix-approval.yaml", r.change_id)
    w = Watch(handle, "1.0.2")
    s = await w.until(lambda s: s.phase is Phase.AWAITING_APPROVAL, "a request for approval")
    show_report(s.report)
    expect(
        _failing(s.report) == {"incident-freeze"},
        f"only incident-freeze should fail; {sorted(_failing(s.report))} did",
    )
    expect(s.awaiting_from == ["sre-leads"], f"awaiting {s.awaiting_from}, not ['sre-leads']")
    assert s.report is not None
    say(
        "Only the freeze fails, and it is approvable: the change is [bold yellow]AwaitingApproval"
        "[/] from sre-leads. Its AwaitingApprovalFrom search attribute puts it in their queue "
        "(Web UI workflow list, query AwaitingApprovalFrom = 'sre-leads')."
    )

    say(
        "\nalice is an sre-lead herself. She approves her own change from a bot that can only signal:"
    )
    operator(
        f"temporal workflow signal --workflow-id {r.change_id} --name approve_signal --input "
        f'\'{{"guardrails": ["incident-freeze"], "approver": "alice", "reason": "urgent", '
        f'"report_hash": "{s.report.report_hash}"}}\''
    )
    own = Approval(
        guardrails=["incident-freeze"],
        approver="alice",
        reason="urgent",
        report_hash=s.report.report_hash,
    )
    await handle.signal(GuardedChangeWorkflow.approve_signal, own)
    s = await w.until(lambda s: bool(s.rejected_approvals), "the signal's verdict")
    why = s.rejected_approvals[0].why
    assert s.report is not None
    say(f"  [bold red]refused and recorded:[/] {escape(why)}")
    expect(why.startswith("four eyes"), f"alice's approval should be refused for four eyes: {why}")

    say("\nbob, the second pair of eyes, reads the report and approves:")
    operator(
        f"changeguard approve {r.change_id} --guardrail incident-freeze --approver bob "
        "--reason 'cookie bug hurts customers; hotfix reviewed' --expires-in 1h"
    )
    result = await handle.execute_update(
        GuardedChangeWorkflow.approve,
        Approval(
            guardrails=["incident-freeze"],
            approver="bob",
            reason="cookie bug hurts customers; hotfix reviewed",
            report_hash=s.report.report_hash,
            expires_in=timedelta(hours=1),
        ),
    )
    say(f"  [bold green]accepted:[/] {', '.join(result.accepted)}; nothing else is needed")
    s = await w.end()
    r.outcome = s.outcome
    hosts = await d.hosts()
    expect(
        all(hosts[h] == "1.0.2" for h in ("web-04", "web-05", "web-06")),
        f"web-04..web-06 should run 1.0.2; the fleet says {hosts}",
    )
    actions = await d.audit_actions(r.change_id)
    expected = [(AuditAction.APPROVAL_REJECTED.value, "alice"), (AuditAction.APPROVAL.value, "bob")]
    expect(
        sorted(actions) == sorted(expected),
        f"the audit store should hold {expected}; it holds {actions}",
    )
    say(
        "The approval bound to that report lifted the freeze for this change only; it went on by "
        "itself. The audit store (outside Temporal, which forgets histories after their "
        "retention) holds both the refusal and the approval:"
    )
    operator(f"changeguard audit --change {r.change_id}")
    await d.audit(d.stack.settings, r.change_id)


def maintenance_window(now: datetime) -> tuple[datetime, str]:
    """Step 3's window: its opening (a whole minute, soon after ``now``) and its rule text.

    It lasts :data:`WINDOW_LENGTH`, across midnight when midnight comes first: the wave's timing
    check wants the wave and its bake to fit, and a window cut at 24:00 rejected the change when
    the demo ran after 23:44 UTC.
    """
    opening = (now + WINDOW_LEAD).replace(second=0, microsecond=0) + timedelta(minutes=1)
    return opening, f"{DAYS[opening.weekday()]} {opening:%H:%M}-{opening + WINDOW_LENGTH:%H:%M}"


async def step_window(d: Demo, r: StepResult) -> None:
    """Step 3: the freeze is lifted; a change before its window waits on a timer, then proceeds."""
    say("The incident is over. The platform team lifts the freeze by deleting its file:")
    await d.lift_freeze()
    now = datetime.now(UTC)
    opening, window = maintenance_window(now)

    def open_soon(policy: dict[str, Any]) -> None:
        _rule(policy, "maintenance-window")["params"]["allow"] = [window]

    say(
        f"\ncarol's change for web-01..web-03 adds its team's own rule, maintenance-window: it "
        f"may only run in the window "
        f"[bold]{window} UTC[/], which opens in {(opening - now).total_seconds():.0f} s. "
        "She starts it now anyway."
    )
    handle = await d.start("window-wait.yaml", r.change_id, open_soon)
    w = Watch(handle, "1.0.1")
    s = await w.until(lambda s: s.phase is Phase.WAITING, "a wait for the window")
    show_report(s.report)
    say(
        "maintenance-window answered [yellow]wait[/], not fail: the opening comes before the "
        "change's "
        "deadline. The workflow now sleeps on a durable Temporal timer until then: no worker is "
        "busy and no one polls, and it would survive a restart of the worker or the server. "
        "Open the change's Web UI link above to see the timer in its history."
    )
    lead = (opening - datetime.now(UTC)).total_seconds()
    s = await w.end("the window to open and the change to finish", within=lead + 60)
    r.outcome = s.outcome
    expect(Phase.WAITING in w.phases, "the change never showed Waiting")
    assert s.report is not None
    expect(
        s.report.evaluated_at >= opening,
        f"the gate passed at {s.report.evaluated_at:%H:%M:%S}, before the window opened",
    )
    hosts = await d.hosts()
    expect(
        all(hosts[h] == "1.0.1" for h in ("web-01", "web-02", "web-03")),
        f"web-01..web-03 should run 1.0.1; the fleet says {hosts}",
    )
    say(
        f"At {opening:%H:%M:%S} UTC the timer fired, the gate ran again and passed, and the "
        "change applied itself: web-01..web-03 run 1.0.1."
    )

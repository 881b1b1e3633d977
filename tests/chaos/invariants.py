"""The campaign's invariant checker: the fleet's ledger, the change ledger and the histories.

Pure functions over what the campaign collected after the fact, so each rule can be tested on its
own data. What counts as a violation (docs/design.md):

- **I1**: an effect on the fleet (``<change>:apply:<target>``) with no gate before it, or whose
  latest earlier gate did not decide ``proceed`` and has no accepted approval bound to its report.
- **I3**: a change that ended ``rolled_back`` or ``aborted`` (cancelled included) with a target
  applied and not reverted afterwards, or reverted out of reverse wave order; one that ended
  ``failed`` with an unreverted target it does not name in ``needs_repair``.
- **I4**: an idempotency key applied twice, one (change, step, target) applied under two keys, or
  two ledger records of one key.
- **I6**: an approval, refused approval or operator action the driver saw accepted with no record
  of it; a started change with no ``started`` or ``outcome`` record; an effect on the fleet with
  no ``mutation``/``compensation`` record of its key.
- **lost**: a started change whose workflow is still open, or that has no outcome, at the end.
- **wft**: a run with two or more workflow tasks failing in a row (causes ``RESET_WORKFLOW`` and
  ``UNHANDLED_COMMAND`` are the server's protocol and do not count).
"""

from __future__ import annotations

import collections
import itertools
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from temporalio.api.enums.v1 import EventType, WorkflowTaskFailedCause

from workflows.models import AuditAction, AuditRecord, plan_waves

INVARIANTS = ("I1", "I3", "I4", "I6", "lost", "wft")
BENIGN_TASK_FAILURES = {
    WorkflowTaskFailedCause.WORKFLOW_TASK_FAILED_CAUSE_RESET_WORKFLOW,
    WorkflowTaskFailedCause.WORKFLOW_TASK_FAILED_CAUSE_UNHANDLED_COMMAND,
}


@dataclass
class ChangeTrace:
    """What the driver knows of one change: its plan and what it did to it."""

    change_id: str
    shape: str
    targets: list[str]
    waves: list[str]
    started: bool = False
    approvals: list[str] = field(default_factory=list)  # approvers whose approval was accepted
    refused: list[str] = field(default_factory=list)  # approvers whose approval was refused
    actions: list[str] = field(default_factory=list)  # operator updates accepted (abort …)
    cancelled: bool = False
    outcome: str = ""  # as the driver saw it ("" unknown, "cancelled" for a cancelled run)
    note: str = ""


@dataclass
class Run:
    """One workflow run's history, reduced to what the checks need."""

    workflow_id: str
    run_id: str
    open: bool
    start: datetime | None
    close: datetime | None
    event_times: list[datetime]
    waits_until: list[datetime | None]  # per event: when the durable timer it started fires
    task_failures: list[str]  # non-benign WorkflowTaskFailed, in order
    longest_failure_streak: int


def reduce_history(
    workflow_id: str,
    run_id: str,
    events: Iterable[Any],
    *,
    open_: bool,
    start: datetime | None,
    close: datetime | None,
) -> Run:
    """A :class:`Run` from history events (``temporalio.api.history.v1.HistoryEvent``)."""
    times: list[datetime] = []
    waits: list[datetime | None] = []
    failures: list[str] = []
    streak = longest = 0
    for event in events:
        at = event.event_time.ToDatetime().replace(tzinfo=start.tzinfo if start else None)
        times.append(at)
        waits.append(None)
        if event.event_type == EventType.EVENT_TYPE_TIMER_STARTED:
            timeout = event.timer_started_event_attributes.start_to_fire_timeout.ToTimedelta()
            waits[-1] = at + timeout
        if event.event_type == EventType.EVENT_TYPE_WORKFLOW_TASK_FAILED:
            attrs = event.workflow_task_failed_event_attributes
            if attrs.cause in BENIGN_TASK_FAILURES:
                continue
            failures.append(
                f"{WorkflowTaskFailedCause.Name(attrs.cause)}: {attrs.failure.message[:300]}"
            )
            streak += 1
            longest = max(longest, streak)
        elif event.event_type == EventType.EVENT_TYPE_WORKFLOW_TASK_COMPLETED:
            streak = 0
    return Run(workflow_id, run_id, open_, start, close, times, waits, failures, longest)


@dataclass
class Findings:
    """Violations per invariant, each with a one-line description."""

    violations: dict[str, list[str]] = field(default_factory=lambda: {k: [] for k in INVARIANTS})
    single_task_failures: list[str] = field(default_factory=list)

    def add(self, invariant: str, what: str) -> None:
        self.violations[invariant].append(what)

    @property
    def counts(self) -> dict[str, int]:
        return {k: len(v) for k, v in self.violations.items()}

    @property
    def total(self) -> int:
        return sum(self.counts.values())


def _at(value: str) -> datetime:
    return datetime.fromisoformat(value)


def check(
    traces: list[ChangeTrace],
    deploys: list[dict[str, Any]],
    records: list[AuditRecord],
    runs: list[Run],
) -> Findings:
    """Count every violation over a finished campaign."""
    found = Findings()
    by_change: dict[str, list[AuditRecord]] = collections.defaultdict(list)
    for r in records:
        by_change[r.change_id].append(r)
    effects: dict[str, list[dict[str, Any]]] = collections.defaultdict(list)
    for d in deploys:
        effects[d["idempotency_key"].split(":", 1)[0]].append(d)
    runs_of: dict[str, list[Run]] = collections.defaultdict(list)
    for run in runs:
        runs_of[run.workflow_id.split("/", 1)[0]].append(run)

    _i4(found, deploys, records)
    for run in runs:
        if run.longest_failure_streak >= 2:
            found.add(
                "wft",
                f"{run.workflow_id} ({run.run_id[:8]}): {run.longest_failure_streak} workflow tasks "
                f"failed in a row: {run.task_failures[-1]}",
            )
        elif run.task_failures:
            found.single_task_failures.append(f"{run.workflow_id}: {run.task_failures[0]}")
    for trace in traces:
        if not trace.started:
            continue
        mine = sorted(by_change.get(trace.change_id, []), key=lambda r: r.at)
        ledger = sorted(effects.get(trace.change_id, []), key=lambda d: d["seq"])
        _i1(found, trace, mine, ledger)
        outcome = _outcome(mine)
        _i3(found, trace, outcome, ledger)
        running = any(
            r.open for r in runs_of.get(trace.change_id, []) if r.workflow_id == trace.change_id
        )
        _i6(found, trace, mine, ledger, running=running)
        _lost(found, trace, outcome, runs_of.get(trace.change_id, []))
    return found


def _outcome(records: list[AuditRecord]) -> AuditRecord | None:
    outcomes = [r for r in records if r.action is AuditAction.OUTCOME]
    return outcomes[-1] if outcomes else None


def _i1(
    found: Findings,
    trace: ChangeTrace,
    records: list[AuditRecord],
    ledger: list[dict[str, Any]],
) -> None:
    gates = [r for r in records if r.action is AuditAction.GATE]
    approved = {r.report_hash for r in records if r.action is AuditAction.APPROVAL}
    for entry in ledger:
        if ":apply:" not in entry["idempotency_key"]:
            continue
        at = _at(entry["at"])
        before = [g for g in gates if g.at <= at]
        if not before:
            found.add("I1", f"{entry['idempotency_key']} applied at {at} with no gate before it")
            continue
        gate = before[-1]
        if gate.detail.get("decision") == "proceed":
            continue
        if gate.report_hash not in approved:
            found.add(
                "I1",
                f"{entry['idempotency_key']} applied after gate {gate.reason!r} "
                f"(report {gate.report_hash[:12]}) with no approval of that report",
            )


def _i3(
    found: Findings,
    trace: ChangeTrace,
    outcome: AuditRecord | None,
    ledger: list[dict[str, Any]],
) -> None:
    if outcome is None:
        return
    kind = str(outcome.detail.get("outcome", ""))
    applies = {
        d["host"]: d
        for d in ledger
        if d["idempotency_key"] == f"{trace.change_id}:apply:{d['host']}"
    }
    reverts = [d for d in ledger if d["idempotency_key"] == f"{trace.change_id}:revert:{d['host']}"]
    reverted = {d["host"]: d for d in reverts}
    left = sorted(
        h for h, a in applies.items() if h not in reverted or reverted[h]["seq"] < a["seq"]
    )
    if kind in ("rolled_back", "aborted") and left:
        found.add("I3", f"{trace.change_id} ended {kind} with {left} applied and not reverted")
    if kind == "failed":
        named = set(outcome.detail.get("needs_repair", []))
        unnamed = [h for h in left if h not in named]
        if unnamed:
            found.add("I3", f"{trace.change_id} ended failed without naming {unnamed} for repair")
    if kind == "completed" and reverts:
        found.add("I3", f"{trace.change_id} completed but reverted {[d['host'] for d in reverts]}")
    wave_of = {t: i for i, wave in enumerate(plan_waves(trace.targets, trace.waves)) for t in wave}
    order = [wave_of.get(d["host"], -1) for d in reverts]
    if any(later > earlier for earlier, later in itertools.pairwise(order)):
        found.add(
            "I3",
            f"{trace.change_id} reverted out of reverse wave order: "
            f"{[(d['host'], wave_of.get(d['host'])) for d in reverts]}",
        )


def _i4(found: Findings, deploys: list[dict[str, Any]], records: list[AuditRecord]) -> None:
    per_key = collections.Counter(d["idempotency_key"] for d in deploys)
    for key, n in per_key.items():
        if n > 1:
            found.add("I4", f"{key} applied {n} times on the fleet")
    per_step = collections.Counter(
        (*tuple(d["idempotency_key"].split(":")[:2]), d["host"]) for d in deploys
    )
    for step, n in per_step.items():
        if n > 1:
            found.add("I4", f"{':'.join(step)} took effect {n} times under different keys")
    effects = collections.Counter(
        r.detail.get("idempotency_key")
        for r in records
        if r.action in (AuditAction.MUTATION, AuditAction.COMPENSATION)
    )
    for key, n in effects.items():
        if n > 1:
            found.add("I4", f"{key} recorded as an effect {n} times in the change ledger")


def _i6(
    found: Findings,
    trace: ChangeTrace,
    records: list[AuditRecord],
    ledger: list[dict[str, Any]],
    *,
    running: bool = False,
) -> None:
    """I6 for one change; a change still running owes no outcome record yet (``lost`` counts it).

    A start refused before any check (an invalid request, e.g. a deadline already past when the
    workflow first ran) is recorded as ``refused`` instead of ``started``.
    """
    actions = collections.Counter(r.action for r in records)
    if not actions[AuditAction.STARTED] and not actions[AuditAction.REFUSED]:
        found.add("I6", f"{trace.change_id}: no started record")
    if not actions[AuditAction.OUTCOME] and not running:
        found.add("I6", f"{trace.change_id}: no outcome record")
    approvers = {r.actor for r in records if r.action is AuditAction.APPROVAL}
    for who in trace.approvals:
        if who not in approvers:
            found.add("I6", f"{trace.change_id}: the approval by {who} is not audited")
    refused = {r.actor for r in records if r.action is AuditAction.APPROVAL_REJECTED}
    for who in trace.refused:
        if who not in refused:
            found.add("I6", f"{trace.change_id}: the refused approval by {who} is not audited")
    for action in trace.actions:
        if not actions[AuditAction(action)]:
            found.add("I6", f"{trace.change_id}: the operator's {action} is not audited")
    recorded = {
        r.detail.get("idempotency_key")
        for r in records
        if r.action in (AuditAction.MUTATION, AuditAction.COMPENSATION)
    }
    for entry in ledger:
        if entry["idempotency_key"] not in recorded:
            found.add("I6", f"{entry['idempotency_key']} took effect but has no ledger record")


def _lost(
    found: Findings, trace: ChangeTrace, outcome: AuditRecord | None, runs: list[Run]
) -> None:
    main = [r for r in runs if r.workflow_id == trace.change_id]
    if any(r.open for r in main):
        found.add("lost", f"{trace.change_id} ({trace.shape}) is still running")
    elif outcome is None:
        found.add("lost", f"{trace.change_id} ({trace.shape}) closed with no outcome record")


def _outside(begin: datetime, end: datetime, windows: list[tuple[datetime, datetime]]) -> float:
    """Seconds of ``[begin, end]`` outside every window (the union of the windows is removed)."""
    total = (end - begin).total_seconds()
    cursor = begin
    for w_start, w_end in sorted(windows):
        lo, hi = max(w_start, cursor), min(w_end, end)
        if hi > lo:
            total -= (hi - lo).total_seconds()
            cursor = hi
    return max(0.0, total)


def recovery_times(
    faults: list[tuple[str, datetime, datetime]], runs: list[Run]
) -> dict[str, tuple[float, str]]:
    """Per fault label: the longest time from its end to the next event of every affected change.

    ``faults`` are (label, start, end). A change counts as affected when its main run was open
    when the fault ended; it moves again at the first history event after that instant of any of
    its runs (children included), or at its close. A change asleep on a durable timer (a bake, a
    deadline) is measured from when the timer was due, not from the fault's end. Time inside
    later faults (of any component) is not counted: a change that moves only after the next fault
    has ended is charged only for the time no fault was going on.
    """
    runs_of: dict[str, list[Run]] = collections.defaultdict(list)
    for run in runs:
        runs_of[run.workflow_id.split("/", 1)[0]].append(run)
    out: dict[str, tuple[float, str]] = {}
    for label, _, end in faults:
        later = [(b, e) for _, b, e in faults if e > end]
        worst, where = 0.0, ""
        for change, mine in runs_of.items():
            main = [r for r in mine if r.workflow_id == change and r.start is not None]
            if not main or change.startswith("lock"):
                continue
            start = min(r.start for r in main if r.start is not None)
            closes = [r.close for r in main if r.close is not None]
            close = max(closes) if closes and not any(r.open for r in main) else None
            if start >= end or (close is not None and close <= end):
                continue
            after = [t for r in mine for t in r.event_times if t > end]
            moved = min(after) if after else close
            if moved is None:
                continue
            due = [
                w
                for r in mine
                for t, w in zip(r.event_times, r.waits_until, strict=True)
                if w is not None and t <= end and w > end
            ]
            baseline = max([end, *due]) if due else end
            if moved <= baseline:
                continue
            delta = _outside(baseline, moved, later)
            if delta > worst:
                worst, where = delta, change
        out[label] = (worst, where)
    return out


def recovery_seconds(
    faults: list[tuple[str, datetime, datetime]], runs: list[Run]
) -> tuple[float, str]:
    """The largest of :func:`recovery_times`: (seconds, "<change> after <fault>")."""
    worst, where = 0.0, ""
    for label, (seconds, change) in recovery_times(faults, runs).items():
        if seconds > worst:
            worst, where = seconds, f"{change} after {label}"
    return worst, where

"""The demo: six changes against the demo fleet that show what changeguard is for.

Run by ``changeguard demo`` (and ``make demo``) on a fresh stack: the Temporal dev server in memory
with its Web UI, the fleet (six hosts on 1.0.0, a fresh SQLite file), a worker in this process
holding the platform's policy bundle (a copy of ``demo/platform`` the demo edits as the platform
team would), the operator directory ``demo/operators.yaml``, an audit store in a temporary
directory, and the :class:`~demo.stack.StandIns` (the session store's health endpoint, the on-call
pager's inbox).

1. The platform declares an incident freeze (a file added to the bundle, live). A change is
   blocked with three failures at once; a fix and a recheck leave two; approving the forbidden
   one is refused; the change is aborted (audited).
2. A hotfix during the freeze needs an approval: the requester's own is refused (four eyes), a
   second sre-lead's is accepted; the audit store shows both.
3. The freeze is lifted. A change before its own maintenance window waits on a durable timer,
   then proceeds.
4. A good version rolls out in waves, each baking while the worker watches the error rate.
5. A bad version: the error rate rises, the policy pages, nobody answers in time, and every host
   is rolled back to the version it ran before (checked against the fleet itself).
6. An emergency freeze reaches a running change: declared while its first wave bakes, the timing
   check before the second wave (judged by the new bundle) pauses the change and pages its team
   (the freeze's ``mid_rollout: pause``); the change is aborted and its first wave undone.

Each step checks what it promised; the run exits 0 when all did, else 1 naming the steps that did
not. The change files are ``demo/changes/*.yaml``; the demo points them and the bundle at the ports
it uses, moves the freeze (``demo/freeze.yaml``) to today and opens the window a few seconds ahead.
Ports: ``CHANGEGUARD_DEMO_PORT`` (7233), ``CHANGEGUARD_DEMO_UI_PORT`` (8233),
``CHANGEGUARD_DEMO_FLEET_PORT`` (8800).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from tempfile import TemporaryDirectory
from typing import Any

import httpx
import yaml
from rich.console import Console, ConsoleRenderable, Group
from rich.live import Live
from rich.markup import escape
from rich.table import Table
from rich.text import Text
from temporalio.client import Client, WorkflowHandle, WorkflowUpdateFailedError
from temporalio.exceptions import ApplicationError

from activities.audit import open_audit_store
from demo.stack import DEMO_BUNDLE, FLEET_IN_FILES, DevStack, StandIns, copy_bundle
from worker.settings import Settings
from workflows.guarded_change import GuardedChangeWorkflow
from workflows.models import (
    TERMINAL_PHASES,
    Approval,
    AuditAction,
    AuditQuery,
    ChangeStatus,
    CheckStatus,
    Decision,
    GuardrailReport,
    OperatorAction,
    OperatorActionResult,
    OptOut,
    Outcome,
    Phase,
    RecheckInput,
)
from workflows.report import rule_label

HERE = Path(__file__).parent
CHANGES = HERE / "changes"
OPERATORS = HERE / "operators.yaml"
FREEZE = HERE / "freeze.yaml"
FREEZE_FILE = "20-freeze.yaml"
OPERATOR_ACTIONS = {
    AuditAction.APPROVAL.value,
    AuditAction.APPROVAL_REJECTED.value,
    AuditAction.RECHECK.value,
    AuditAction.RESUME.value,
    AuditAction.ROLLBACK.value,
    AuditAction.ABORT.value,
}
"""The audit records people cause (the ledger also records starts, gates, effects, outcomes)."""
SESSIONS_IN_FILES = "http://127.0.0.1:8801"
WINDOW_LEAD = timedelta(seconds=8)
"""Step 3's window opens at the first whole minute at least this far ahead (windows are minutes)."""
POLL = 0.2
DAYS = ("Mon", "Tue", "Wed", "Thu", "Fri", "Sat", "Sun")
PORTS = {"port": 7233, "ui_port": 8233, "fleet_port": 8800}
PORT_VARS = {k: f"CHANGEGUARD_DEMO_{k.upper()}" for k in PORTS}

console = Console(highlight=False)

Start = Callable[[Client, Path, Settings, str], Awaitable[str]]
Audit = Callable[[Settings, str], Awaitable[int]]


class StepFailed(Exception):
    """A step did not behave as the demo promised; the message says what happened instead."""


def expect(condition: bool, problem: str) -> None:
    """Raise :class:`StepFailed` with ``problem`` unless ``condition`` holds."""
    if not condition:
        raise StepFailed(problem)


def say(text: str) -> None:
    """Narrate, in plain words."""
    console.print(text)


def operator(command: str) -> None:
    """Show what an operator types (the demo sends the same signal or update itself)."""
    console.print(f"  [bold cyan]$[/] [cyan]{escape(command)}[/]")


# ------------------------------------------------------------------------------------------ watch


_PHASE_STYLE = {
    Phase.BLOCKED: "bold red",
    Phase.AWAITING_APPROVAL: "bold yellow",
    Phase.WAITING: "yellow",
    Phase.PAUSED: "bold magenta",
    Phase.ROLLING_BACK: "bold red",
    Phase.COMPLETED: "bold green",
    Phase.ROLLED_BACK: "bold red",
    Phase.ABORTED: "bold red",
    Phase.REJECTED: "bold red",
    Phase.FAILED: "bold red",
}
_DECISION_STYLE = {
    Decision.PROCEED: "bold green",
    Decision.WAIT: "bold yellow",
    Decision.BLOCK: "bold red",
}
_CHECK_MARK = {
    CheckStatus.PASS: ("✓", "green"),
    CheckStatus.FAIL: ("✗", "bold red"),
    CheckStatus.WAIT: ("…", "yellow"),
    CheckStatus.ERROR: ("!", "bold magenta"),
}
_UNTIL = re.compile(r"until (\d{4}-\d\d-\d\dT[\d:]+(?:\.\d+)?(?:Z|[+-]\d\d:\d\d))")


def _seconds_until(moment: datetime | None) -> float | None:
    return None if moment is None else max(0.0, (moment - datetime.now(UTC)).total_seconds())


def _bar(done: int, total: int, state: str, width: int = 18) -> Text:
    filled = round(width * done / total) if total else 0
    style = {"done": "green", "pending": "dim"}.get(state, "cyan")
    return Text.assemble(("█" * filled, style), ("░" * (width - filled), "dim"))


class Watch:
    """Follow one change through its ``status`` query: print each event, show live progress.

    Args:
        handle: the change's workflow handle.
        version: what the change deploys (for "now run ..." lines).
        pause_timeout: how long a pause-and-page waits for an operator (for the countdown).
    """

    def __init__(
        self, handle: WorkflowHandle[Any, Any], version: str, pause_timeout: float | None = None
    ) -> None:
        self.handle = handle
        self.version = version
        self.pause_timeout = pause_timeout
        self.began = time.monotonic()
        self.status: ChangeStatus | None = None
        self.phases: list[Phase] = []
        self._signal_states: dict[str, str] = {}

    async def until(
        self, done: Callable[[ChangeStatus], bool], what: str, *, within: float = 60.0
    ) -> ChangeStatus:
        """Poll until ``done`` holds; raise :class:`StepFailed` on a timeout or an early end."""
        limit = time.monotonic() + within
        with Live(get_renderable=self._panel, console=console, transient=True) as live:
            while True:
                status: ChangeStatus = await self.handle.query(GuardedChangeWorkflow.status)
                self._events(status)
                live.refresh()
                if done(status):
                    return status
                if status.phase in TERMINAL_PHASES:
                    raise StepFailed(
                        f"the change ended {status.phase.value} ({status.message}) "
                        f"while the demo waited for {what}"
                    )
                if time.monotonic() > limit:
                    raise StepFailed(
                        f"no {what} within {within:.0f}s; "
                        f"last phase {status.phase.value}: {status.message}"
                    )
                await asyncio.sleep(POLL)

    async def end(
        self, what: str = "the change's outcome", *, within: float = 60.0
    ) -> ChangeStatus:
        """Poll until the change reaches a terminal phase."""
        return await self.until(lambda s: s.phase in TERMINAL_PHASES, what, within=within)

    def _say(self, text: str) -> None:
        line = Table.grid(padding=(0, 2))
        line.add_column(no_wrap=True, justify="right", style="dim", width=7)
        line.add_column(ratio=1)
        line.add_row(f"{time.monotonic() - self.began:.1f}s", text)
        console.print(line)

    def _events(self, new: ChangeStatus) -> None:
        """Say what changed since the last poll, in the order it happened in the workflow."""
        old, self.status = self.status, new
        gate = new.last_gate
        if gate is not None and (
            old is None or old.last_gate is None or gate.evaluated_at != old.last_gate.evaluated_at
        ):
            checks = ", ".join(f"{c.rule_id} {c.status.value}" for c in gate.checks)
            self._say(f"gate run {new.gate_runs}: [bold]{gate.decision.value}[/] ({checks})")
        phase_changed = old is None or (new.phase, new.message) != (old.phase, old.message)
        phase_first = new.phase in (Phase.EXECUTING, Phase.ROLLING_BACK)
        if phase_changed and phase_first:
            self._phase(new)
        applied_before = set(old.applied) if old else set()
        for wave in new.waves:
            fresh = [t for t in wave.applied if t not in applied_before]
            if fresh:
                self._say(
                    f"wave {wave.index + 1}/{len(new.waves)}: {', '.join(fresh)} "
                    f"now run{'s' if len(fresh) == 1 else ''} {self.version}"
                )
        for target in new.reverted[len(old.reverted) if old else 0 :]:
            self._say(f"reverted {target} to the version it ran before")
        if phase_changed and not phase_first and new.phase is not Phase.PENDING:
            self._phase(new)
        for reading in new.signals:
            state = str(reading.state)
            if self._signal_states.get(reading.signal) != state:
                self._signal_states[reading.signal] = state
                value = "no data" if reading.value is None else f"worst host {reading.value:g}"
                self._say(f"signal [bold]{reading.signal}[/] is {state} ({value})")
        for page in new.pages[len(old.pages) if old else 0 :]:
            how = page.split(": ", 1)[0]  # "<pager>" or "<pager> FAILED (<why>)"
            self._say(f"[bold magenta]paged[/] the owner via {escape(how)}")

    def _phase(self, new: ChangeStatus) -> None:
        if not self.phases or self.phases[-1] is not new.phase:
            self.phases.append(new.phase)
        style = _PHASE_STYLE.get(new.phase, "bold")
        self._say(f"[{style}]{new.phase.value}[/]  {escape(new.message)}")

    def _panel(self) -> ConsoleRenderable:
        s = self.status
        if s is None:
            return Text("  starting…", style="dim")
        head = Text.assemble(("  ", ""), (s.change_id, "bold"), " · ", (s.phase.value, "bold"))
        left: float | None = None
        if s.phase is Phase.WAITING and s.report is not None:
            left, label = _seconds_until(s.report.retry_after), "gate again in"
        elif s.phase is Phase.BAKING and (m := _UNTIL.search(s.message)):
            left, label = _seconds_until(datetime.fromisoformat(m[1])), "bake ends in"
        elif s.phase is Phase.PAUSED and self.pause_timeout and s.updated_at is not None:
            at = s.updated_at + timedelta(seconds=self.pause_timeout)
            left, label = _seconds_until(at), "unanswered page times out in"
        if left is not None:
            head.append(f" · {label} {left:4.1f}s", style="yellow")
        if s.reverted:
            head.append(f" · reverted {len(s.reverted)}/{len(s.applied)}", style="red")
        rows = Table.grid(padding=(0, 1))
        for wave in s.waves:
            rows.add_row(
                f"  wave {wave.index + 1}",
                _bar(len(wave.applied), len(wave.targets), wave.state),
                f"{len(wave.applied)}/{len(wave.targets)}",
                wave.state,
                ", ".join(wave.targets),
            )
        for r in s.signals:
            value = "—" if r.value is None else f"{r.value:g}"
            rows.add_row(f"  {r.signal}", Text(str(r.state)), value, "", "")
        return Group(head, rows)


# ------------------------------------------------------------------------------------------ demo


@dataclass
class StepResult:
    """One step's line in the summary."""

    number: int
    change_id: str
    showed: str
    expected: Outcome
    outcome: Outcome | None = None
    problem: str | None = None

    @property
    def ok(self) -> bool:
        """The change ended as expected and every check of the step held."""
        return self.problem is None and self.outcome is self.expected


@dataclass
class Demo:
    """The stack, the stand-ins and the CLI pieces every step uses."""

    stack: DevStack
    stand_ins: StandIns
    tmp: Path
    start_file: Start
    audit: Audit
    bundle_dir: Path
    results: list[StepResult] = field(default_factory=list)

    @property
    def client(self) -> Client:
        """The stack's Temporal client."""
        assert self.stack.client is not None
        return self.stack.client

    async def start(
        self, name: str, change_id: str, patch: Callable[[dict[str, Any]], None] | None = None
    ) -> WorkflowHandle[Any, Any]:
        """Start ``demo/changes/<name>`` as ``change_id`` through the CLI's own validation.

        ``patch`` edits the change's own additions to the platform bundle (its ``policy``).
        """
        change = yaml.safe_load(self._localise((CHANGES / name).read_text()))
        if patch is not None:
            patch(change["policy"])
        change.update(change_id=change_id)
        path = self.tmp / "changes" / f"{change_id}.yaml"
        path.parent.mkdir(exist_ok=True)
        path.write_text(yaml.safe_dump(change, sort_keys=False))
        console.print(f"[dim]change file demo/changes/{name}[/]")
        await self.start_file(self.client, path, self.stack.settings, change_id)
        return self.client.get_workflow_handle(change_id)

    @property
    def bundle_hash(self) -> str:
        """The hash of the bundle the worker holds now."""
        assert self.stack.bundle is not None
        return self.stack.bundle.current_hash()

    async def edit_bundle(self, edit: Callable[[], object], what: str) -> str:
        """Edit the bundle's files as the platform team would; wait until the worker holds it."""
        before = self.bundle_hash
        edit()
        limit = time.monotonic() + 15
        while self.bundle_hash == before:
            if time.monotonic() > limit:
                raise StepFailed(f"the worker did not pick up {what} within 15s")
            await asyncio.sleep(POLL)
        return self.bundle_hash

    async def declare_freeze(self) -> str:
        """The platform adds an incident freeze (today and the next two days) to its bundle."""
        today = datetime.now(UTC).date()
        freeze = yaml.safe_load(FREEZE.read_text())
        freeze["guardrails"][0]["params"]["freeze"] = [_days(today, today + timedelta(days=2))]
        path = self.bundle_dir / FREEZE_FILE
        operator(f"cp demo/freeze.yaml $CHANGEGUARD_POLICY/{FREEZE_FILE}   # the platform team")
        new = await self.edit_bundle(
            lambda: path.write_text(yaml.safe_dump(freeze, sort_keys=False)), "the freeze"
        )
        say(f"  the worker now holds bundle [bold]{new}[/] (with incident-freeze), no restart")
        return new

    async def lift_freeze(self) -> str:
        """The platform deletes its freeze from the bundle."""
        operator(f"rm $CHANGEGUARD_POLICY/{FREEZE_FILE}   # the platform team")
        new = await self.edit_bundle(
            lambda: (self.bundle_dir / FREEZE_FILE).unlink(missing_ok=True), "the lifted freeze"
        )
        say(f"  the worker now holds bundle [bold]{new}[/] (no freeze)")
        return new

    def _localise(self, text: str) -> str:
        return text.replace(FLEET_IN_FILES, self.stack.fleet.url).replace(
            SESSIONS_IN_FILES, self.stand_ins.url
        )

    async def hosts(self) -> dict[str, str]:
        """Each fleet host's version, from the fleet itself."""
        async with httpx.AsyncClient(base_url=self.stack.fleet.url, trust_env=False) as http:
            return {h["id"]: h["version"] for h in (await http.get("/hosts")).json()}

    async def deploys(self, change_id: str) -> dict[str, int]:
        """How many deploys the fleet's ledger holds per host for one change (applies only)."""
        async with httpx.AsyncClient(base_url=self.stack.fleet.url, trust_env=False) as http:
            ledger = (await http.get("/deploys")).json()
        counts: dict[str, int] = {}
        for d in ledger:
            if d["idempotency_key"].startswith(f"{change_id}:apply:"):
                counts[d["host"]] = counts.get(d["host"], 0) + 1
        return counts

    async def audit_actions(self, change_id: str) -> list[tuple[str, str]]:
        """(action, actor) of a change's audit records, read from the audit store itself."""
        store = await asyncio.to_thread(open_audit_store, self.stack.settings.audit_url)
        try:
            records = await asyncio.to_thread(store.list, AuditQuery(change_id=change_id))
        finally:
            store.close()
        return [(r.action.value, r.actor) for r in records if r.action.value in OPERATOR_ACTIONS]

    def show_report(self, report: GuardrailReport | None) -> None:
        """Print a gate report: each check, and for each failure why, the fix, and who owns it."""
        if report is None:
            return
        style = _DECISION_STYLE[report.decision]
        console.print(
            Text.assemble(
                "  gate report ",
                (report.report_hash, "bold"),
                " decided ",
                (report.decision.value, style),
                (f"  (platform bundle {report.bundle_hash})", "dim"),
            )
        )
        grid = Table.grid(padding=(0, 1))
        grid.add_column(no_wrap=True)
        grid.add_column(no_wrap=True)
        grid.add_column(ratio=1)
        for c in report.checks:
            mark, mark_style = _CHECK_MARK[c.status]
            grid.add_row(
                Text(f"    {mark}", style=mark_style),
                Text(rule_label(c), style="bold"),
                Text.assemble((c.status.value, mark_style), f"  {c.reason}"),
            )
            if c.passing:
                continue
            grid.add_row("", "", Text.assemble(("fix ", "dim"), c.remedy))
            if c.status is CheckStatus.WAIT:
                terms = "the gate waits for it"
            elif c.opt_out is OptOut.FORBIDDEN:
                terms = "opt-out forbidden: no one can approve it"
            elif c.approvers:
                terms = f"approvable by {', '.join(c.approvers)}"
            else:
                terms = "approvable by no one (the policy names no approvers)"
            grid.add_row("", "", Text(f"owner {c.owner} · {terms}", style="dim"))
        console.print(grid)


def _days(first: date, last: date) -> str:
    return f"{first.isoformat()}/{last.isoformat()}"


def _rule(policy: dict[str, Any], rule_id: str) -> dict[str, Any]:
    return next(r for r in policy["guardrails"] if r.get("id", r["use"]) == rule_id)


def _failing(report: GuardrailReport | None) -> set[str]:
    return set() if report is None else {c.rule_id for c in report.failures}


def _blocked(s: ChangeStatus) -> bool:
    return s.phase in (Phase.BLOCKED, Phase.AWAITING_APPROVAL)


# ------------------------------------------------------------------------------------------ steps


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
    d.show_report(s.report)
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
    d.show_report(s.report)
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
    operator(f"changeguard abort {r.change_id} --operator alice --reason 'split per environment'")
    await handle.execute_update(
        "abort",
        OperatorAction(operator="alice", reason="split per environment"),
        result_type=OperatorActionResult,
    )
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


async def step_window(d: Demo, r: StepResult) -> None:
    """Step 3: the freeze is lifted; a change before its window waits on a timer, then proceeds."""
    say("The incident is over. The platform team lifts the freeze by deleting its file:")
    await d.lift_freeze()
    now = datetime.now(UTC)
    opening = (now + WINDOW_LEAD).replace(second=0, microsecond=0) + timedelta(minutes=1)
    window = f"{DAYS[opening.weekday()]} {opening:%H:%M}-24:00"

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
    d.show_report(s.report)
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
    d.show_report(s.report)
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


async def step_good(d: Demo, r: StepResult) -> None:
    """Step 4: waves with bakes on the fleet's error rate, and completion."""
    before = await d.hosts()
    say(
        "Outside any freeze (the platform bundle alone), alice rolls web 1.1.0 out to all "
        "six hosts in waves of 1 host, 50 % and 100 %, at most 3 at once. After each wave the "
        "change bakes for 2 s while the worker reads the fleet's per-host error rate; before "
        "each later wave the timing guardrails run again (the world may have caught fire)."
    )
    handle = await d.start("deploy-good.yaml", r.change_id)
    w = Watch(handle, "1.1.0")
    s = await w.end(within=90)
    r.outcome = s.outcome
    expect(all(wave.state == "done" for wave in s.waves), f"waves not all done: {s.waves}")
    counts, hosts = await d.deploys(r.change_id), await d.hosts()
    _fleet_table("The fleet after the rollout", before, hosts, counts)
    expect(
        counts == dict.fromkeys(hosts, 1) and set(hosts.values()) == {"1.1.0"},
        "every host should run 1.1.0, deployed exactly once by this change",
    )
    say(
        "Every wave baked with the error rate ok, so the change completed. The fleet's own ledger "
        "shows one deploy per host: each deploy carries an idempotency key, so a retried activity "
        "never deploys twice."
    )


async def step_bad(d: Demo, r: StepResult) -> None:
    """Step 5: the error rate rises, the policy pages, nobody answers, everything rolls back."""
    before = await d.hosts()
    say(
        "Then web 1.2.0 goes out the same way. It has a bug that only shows under real traffic: "
        "once wave 2 starts, the demo marks 1.2.0 bad on the fleet, and every host running it "
        "fails 20 % of its requests. The platform answers a degraded error rate (at or above 1 %) "
        "with pause_and_page (5 s to answer, then rollback) and a critical one with rollback."
    )
    handle = await d.start("deploy-bad.yaml", r.change_id)
    w = Watch(handle, "1.2.0", pause_timeout=5)
    await w.until(lambda s: len(s.waves) > 1 and s.waves[1].state != "pending", "wave 2", within=60)
    async with httpx.AsyncClient(base_url=d.stack.fleet.url, trust_env=False) as http:
        (await http.post("/versions/1.2.0", json={"bad": True})).raise_for_status()
    say("  [bold red]the fleet now fails 20 % of requests on every host running 1.2.0[/]")
    s = await w.until(lambda s: s.phase is Phase.PAUSED, "a pause and a page")
    for page in d.stand_ins.pages:
        say(
            f"  [bold magenta]the on-call pager's inbox received a {page.get('severity')} page "
            f"for team {page.get('owner')}[/] (dedup key {page.get('dedup_key')})"
        )
    operator(f"changeguard resume {r.change_id} --operator bob --reason 'known noisy host'")
    operator(f"changeguard rollback {r.change_id} --operator bob --reason 'errors are real'")
    say(
        "Either would answer the page. Nobody does (it is a demo): after 5 s the policy's "
        "`then: rollback` decides."
    )
    s = await w.end(within=60)
    r.outcome = s.outcome
    hosts = await d.hosts()
    _fleet_table("The fleet before and after", before, hosts, None)
    expect(bool(s.pages) and bool(d.stand_ins.pages), "nobody was paged")
    expect(hosts == before, "some hosts do not run the version they ran before the change")
    expect(bool(s.reverted), "nothing was reverted")
    say(
        f"The page timed out, so the policy's `then: rollback` applied: the saga undid every "
        f"applied step in reverse ({', '.join(s.reverted)}), each undo registered before its "
        "deploy ran. The fleet confirms every host runs the version it ran before."
    )


async def step_frozen(d: Demo, r: StepResult) -> None:
    """Step 6: an emergency freeze declared while a wave bakes stops the change before the next."""
    before = await d.hosts()
    say(
        "alice rolls web 1.3.0 out in two waves (1 host, then the rest), baking 8 s after the "
        "first. While web-01 bakes, an incident starts and the platform declares a freeze again."
    )
    handle = await d.start("deploy-frozen.yaml", r.change_id)
    w = Watch(handle, "1.3.0")
    s = await w.until(
        lambda s: s.phase is Phase.BAKING and bool(s.waves) and s.waves[0].state != "pending",
        "the first wave's bake",
        within=60,
    )
    frozen = await d.declare_freeze()
    s = await w.until(
        lambda s: (
            s.phase is Phase.PAUSED
            and s.wave_timing is not None
            and any(t.rule == "incident-freeze" and not t.fits for t in s.wave_timing.rules)
        ),
        "the freeze before wave 2",
        within=60,
    )
    say(f"  [bold]{s.phase.value}[/]: {s.message}")
    expect(
        s.waves[0].applied == ["web-01"] and not (len(s.waves) > 1 and s.waves[1].applied),
        f"only wave 1 (web-01) should be applied; the waves are {s.waves}",
    )
    say(
        "Before wave 2 the change checked its timing against the bundle the worker holds now "
        f"([bold]{frozen}[/]): the freeze closes the window, so wave 2 never started. The freeze "
        "rule's mid_rollout choice is pause: a half-changed fleet is the team's call, so the "
        "change paused and paged its team instead of going on or leaving it unattended."
    )
    say("\nalice will not wait the incident out: she aborts, and the first wave is undone.")
    operator(f"changeguard abort {r.change_id} --operator alice --reason 'incident freeze'")
    await handle.execute_update(
        "abort",
        OperatorAction(operator="alice", reason="incident freeze"),
        result_type=OperatorActionResult,
    )
    s = await w.end(within=60)
    r.outcome = s.outcome
    hosts = await d.hosts()
    expect(hosts == before, f"every host should run what it ran before; the fleet says {hosts}")
    expect(s.reverted == ["web-01"], f"web-01 should have been reverted, not {s.reverted}")
    await d.lift_freeze()


def _fleet_table(
    title: str,
    before: Mapping[str, str],
    after: Mapping[str, str],
    counts: Mapping[str, int] | None,
) -> None:
    table = Table(title=title, title_justify="left")
    for column in ("host", "before", "now", *(["deploys by this change"] if counts else [])):
        table.add_column(column)
    for host, version in after.items():
        same = version == before.get(host)
        row: list[str | Text] = [
            host,
            before.get(host, "?"),
            Text(version, style="" if same else "bold"),
        ]
        table.add_row(*row, *([str(counts.get(host, 0))] if counts is not None else []))
    console.print(table)


STEPS: list[tuple[str, str, Outcome, str, Callable[[Demo, StepResult], Awaitable[None]]]] = [
    (
        "demo1-freeze",
        "The platform declares a freeze; a change is blocked, every reason explained",
        Outcome.ABORTED,
        "3 failures in one report; fix + recheck; forbidden approval refused; abort",
        step_freeze,
    ),
    (
        "demo2-hotfix",
        "A hotfix during the freeze needs a second pair of eyes",
        Outcome.COMPLETED,
        "own approval refused (four eyes); bob approves; audited",
        step_approval,
    ),
    (
        "demo3-window",
        "The freeze is lifted; a change waits for its window, then proceeds",
        Outcome.COMPLETED,
        "Waiting on a durable timer, then gate passes at the opening",
        step_window,
    ),
    (
        "demo4-good",
        "A good version rolls out in waves with bakes",
        Outcome.COMPLETED,
        "3 waves, each baked on the fleet's error rate",
        step_good,
    ),
    (
        "demo5-bad",
        "A bad version is paged and rolled back",
        Outcome.ROLLED_BACK,
        "error rate rose; paged; rolled back; fleet restored",
        step_bad,
    ),
    (
        "demo6-frozen",
        "An emergency freeze stops a running change before its next wave",
        Outcome.ABORTED,
        "bundle edited mid-bake; wave 2 gate blocked; aborted; wave 1 undone",
        step_frozen,
    ),
]


# ------------------------------------------------------------------------------------------ run


def _ports(env: Mapping[str, str]) -> dict[str, int]:
    ports = {}
    for key, default in PORTS.items():
        raw = env.get(PORT_VARS[key], "").strip()
        if raw and not (raw.isdigit() and 0 < int(raw) < 65536):
            raise ValueError(f"{PORT_VARS[key]}={raw!r} is not a port number")
        ports[key] = int(raw) if raw else default
    return ports


def _intro(d: Demo) -> None:
    s = d.stack
    console.rule("[bold]changeguard demo")
    say(
        "changeguard runs risky changes (deployments, config pushes, migrations, flag flips) as "
        "durable Temporal workflows. Before a change touches anything, a [bold]gate[/] runs every "
        "rule of the platform's policy bundle (plus any the change adds) at once and decides: "
        "proceed, wait, or block, explaining every failure. Then it applies the change in "
        "[bold]waves[/], watches health while each wave [bold]bakes[/], and undoes everything it "
        "applied when the world says no.\n"
    )
    say("Six changes follow, against a small fleet of six web hosts (web-01..web-06, on 1.0.0):")
    grid = Table.grid(padding=(0, 2))
    grid.add_row("  Temporal", f"{s.server.address}, in memory (fresh every run)")
    grid.add_row("  Web UI", f"[bold]{s.server.ui_url}[/]  open it to follow each change")
    grid.add_row("  Fleet", f"{s.fleet.url}  (GET /hosts shows each host's version)")
    grid.add_row("  Worker", f"in this process, task queue {s.settings.task_queue}")
    grid.add_row(
        "  Policy",
        f"platform bundle {d.bundle_hash}: a copy of demo/platform at {d.bundle_dir} "
        "(environment-boundary, target-lock, release-window, fleet-health)",
    )
    grid.add_row("  Operators", "demo/operators.yaml: alice (web-team, sre-leads), bob (sre-leads)")
    grid.add_row("  Audit store", s.settings.audit_url)
    console.print(grid)


def _summary(results: list[StepResult], elapsed: float) -> bool:
    table = Table(title="The six changes", title_justify="left")
    for column in ("#", "change", "what it showed", "outcome", "expected", ""):
        table.add_column(column)
    for r in results:
        outcome = r.outcome.value if r.outcome else "—"
        mark = Text("✓", style="bold green") if r.ok else Text("✗", style="bold red")
        table.add_row(str(r.number), r.change_id, r.showed, outcome, r.expected.value, mark)
    console.print(table)
    failed = [r for r in results if not r.ok]
    for r in failed:
        got = r.outcome.value if r.outcome else "no outcome"
        why = r.problem or f"it ended {got}, expected {r.expected.value}"
        console.print(f"[bold red]step {r.number} ({r.change_id}) did not behave:[/] {escape(why)}")
    verdict = "[bold red]demo failed[/]" if failed else "[bold green]demo passed[/]"
    console.print(f"{verdict} in {elapsed:.0f}s")
    console.print(
        "Read on: docs/tour.md (the life of a change), docs/operators.md (acting on changes, "
        "from the CLI or the Web UI), docs/guardrails.md (every built-in guardrail)."
    )
    return not failed


async def run_demo(*, start: Start, audit: Audit, keep_running: bool) -> int:
    """Run the six steps; return 0 when every step behaved as expected, else 1.

    Args:
        start: starts a change file on a client (``start(client, path, settings, change_id)``),
            validating it as ``changeguard start`` does and printing its Web UI link.
        audit: prints a change's audit trail as ``changeguard audit --change ID`` does.
        keep_running: leave everything up afterwards for exploring, until Ctrl-C.
    """
    began = time.monotonic()
    try:
        ports = _ports(os.environ)
    except ValueError as exc:
        console.print(f"[bold red]cannot run the demo:[/] {escape(str(exc))}")
        return 2
    with TemporaryDirectory(prefix="changeguard-demo-") as tmp_name, StandIns() as stand_ins:
        tmp = Path(tmp_name)
        # The platform's bundle as this run's worker holds it: the fleet's port, the demo's pager.
        bundle_dir = copy_bundle(
            DEMO_BUNDLE,
            tmp / "platform",
            {
                FLEET_IN_FILES: f"http://127.0.0.1:{ports['fleet_port']}",
                "pager: log": "pager: webhook",
            },
        )
        stack = DevStack(
            policy=bundle_dir,
            bundle_interval=0.5,
            **ports,
            db=None,
            fleet_db=tmp / "fleet.db",
            state_dir=tmp,
            audit_url=f"sqlite:///{tmp / 'audit.db'}",
            directory=f"yaml:{OPERATORS}",
            pagers={"webhook": {"url": f"{stand_ins.url}/pages", "timeout": "5s"}},
        )
        try:
            await stack.__aenter__()
        except RuntimeError as exc:
            console.print(
                f"[bold red]cannot start the demo's stack:[/] {escape(str(exc))}\nIs "
                "`changeguard dev` running? Stop it, or pick other ports with "
                + ", ".join(PORT_VARS.values())
            )
            return 1
        try:
            d = Demo(stack, stand_ins, tmp, start, audit, bundle_dir)
            _intro(d)
            for number, (change_id, title, expected, showed, step) in enumerate(STEPS, 1):
                console.print()
                console.rule(f"[bold]Step {number}/{len(STEPS)} · {title}")
                result = StepResult(number, change_id, showed, expected)
                d.results.append(result)
                await _run_step(d, step, result)
            console.print()
            console.rule("[bold]Summary")
            ok = _summary(d.results, time.monotonic() - began)
            if keep_running:
                say(
                    f"\nStill running for exploring: Web UI {stack.server.ui_url}, fleet "
                    f"{stack.fleet.url}, Temporal {stack.server.address}. In another terminal:"
                )
                operator(f"TEMPORAL_ADDRESS={stack.server.address} changeguard status demo5-bad")
                operator(
                    f"CHANGEGUARD_AUDIT_URL={stack.settings.audit_url} changeguard audit "
                    "--change demo2-hotfix"
                )
                say("Ctrl-C stops everything.")
                await stack.wait_for_interrupt()
            else:
                console.print(
                    "Run [bold]changeguard demo --keep-running[/] to explore the changes in the "
                    "Web UI afterwards."
                )
        finally:
            await stack.__aexit__(None, None, None)
    return 0 if ok else 1


async def _run_step(
    d: Demo, step: Callable[[Demo, StepResult], Awaitable[None]], result: StepResult
) -> None:
    """Run one step; a failure is recorded (and its change aborted) rather than raised."""
    try:
        await step(d, result)
    except StepFailed as exc:
        result.problem = str(exc)
    except Exception as exc:  # the demo reports every broken step, then goes on to the next
        result.problem = f"{type(exc).__name__}: {exc}"
    if result.problem is not None:
        console.print(f"[bold red]✗ step {result.number}:[/] {escape(result.problem)}")
        await _abort_quietly(d, result.change_id)
    elif result.ok:
        console.print(
            f"[bold green]✓ {result.change_id} ended {result.expected.value}, as expected[/]"
        )
    else:
        got = result.outcome.value if result.outcome else "no outcome"
        console.print(f"[bold red]✗ {result.change_id} ended {got}[/]")


async def _abort_quietly(d: Demo, change_id: str) -> None:
    """Stop a step's change that went wrong, so it cannot disturb the next steps."""
    with contextlib.suppress(Exception):  # it may have ended already, or never started
        await d.client.get_workflow_handle(change_id).execute_update(
            "abort",
            OperatorAction(operator="demo", reason="the demo step failed"),
            result_type=OperatorActionResult,
        )

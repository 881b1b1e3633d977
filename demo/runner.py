"""The runner: bring the stack up, tell the intro, run each step, sum up, bring it down.

A step that breaks its promise (or raises) is recorded and its change aborted; the run goes on to
the next step and exits 1 naming every step that did not behave.
"""

from __future__ import annotations

import contextlib
import os
import time
from collections.abc import Awaitable, Callable, Mapping
from pathlib import Path
from tempfile import TemporaryDirectory

from rich.markup import escape
from rich.table import Table
from rich.text import Text

from demo.harness import OPERATORS, Audit, Demo, Start, StepFailed, StepResult
from demo.narration import console, operator, say
from demo.stack import DEMO_BUNDLE, FLEET_IN_FILES, DevStack, StandIns, copy_bundle
from demo.steps import STEPS
from workflows.guarded_change import GuardedChangeWorkflow
from workflows.models import OperatorAction

PORTS = {"port": 7233, "ui_port": 8233, "fleet_port": 8800}
PORT_VARS = {k: f"CHANGEGUARD_DEMO_{k.upper()}" for k in PORTS}


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
            GuardedChangeWorkflow.abort,
            OperatorAction(operator="demo", reason="the demo step failed"),
        )

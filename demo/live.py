"""The live view: follow one change through its ``status`` query, printing each event.

While a step waits, a transient panel shows the change's phase, its waves' progress bars, its
signals, and a countdown to the next gate, the bake's end or an unanswered page's timeout.
"""

from __future__ import annotations

import asyncio
import re
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

from rich.console import ConsoleRenderable, Group
from rich.live import Live
from rich.markup import escape
from rich.table import Table
from rich.text import Text
from temporalio.client import WorkflowHandle

from demo.harness import POLL, StepFailed
from demo.narration import console
from workflows.guarded_change import GuardedChangeWorkflow
from workflows.models import TERMINAL_PHASES, ChangeStatus, Phase

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

"""The harness the steps act through: the stack, the platform's bundle, the fleet, the ledger.

:class:`Demo` starts a change file as ``changeguard start`` would, edits the bundle as the platform
team would (waiting until the worker holds the edit), and reads the fleet and the audit store
themselves, so each step checks what it promised against the world rather than the workflow.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import yaml
from temporalio.client import Client, WorkflowHandle

from activities.audit import open_audit_store
from demo.narration import console, operator, say
from demo.stack import FLEET_IN_FILES, DevStack, StandIns
from worker.settings import Settings
from workflows.guarded_change import GuardedChangeWorkflow
from workflows.models import AuditAction, AuditQuery, OperatorAction, Outcome

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
POLL = 0.2

Start = Callable[[Client, Path, Settings, str], Awaitable[str]]
Audit = Callable[[Settings, str], Awaitable[int]]


class StepFailed(Exception):
    """A step did not behave as the demo promised; the message says what happened instead."""


def expect(condition: bool, problem: str) -> None:
    """Raise :class:`StepFailed` with ``problem`` unless ``condition`` holds."""
    if not condition:
        raise StepFailed(problem)


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

    async def abort(self, change_id: str, by: str, reason: str) -> None:
        """Abort a change as ``changeguard abort`` would, showing the command typed."""
        operator(f"changeguard abort {change_id} --operator {by} --reason '{reason}'")
        await self.client.get_workflow_handle(change_id).execute_update(
            GuardedChangeWorkflow.abort, OperatorAction(operator=by, reason=reason)
        )

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


def _days(first: date, last: date) -> str:
    return f"{first.isoformat()}/{last.isoformat()}"

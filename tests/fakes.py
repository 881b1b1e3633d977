"""Fakes of plug-ins for unit tests, registered in test registries under real activity names.

The activities under test are the real ones (``run_check``, ``apply_change`` …); only the plug-ins
behind them are fakes, so tests exercise the real workflow → activity → plug-in path.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any, ClassVar

from pydantic import BaseModel, ConfigDict
from temporalio.exceptions import ApplicationError

from activities.audit_sqlite import SqliteAuditStore
from activities.kinds.base import ChangeKind
from activities.kinds.base import new_registry as new_kind_registry
from guardrails.base import CheckContext, EmptyParams, Guardrail
from guardrails.base import new_registry as new_guardrail_registry
from guardrails.plugins import PluginRegistry
from workflows import errors
from workflows.models import (
    ApplyResult,
    AuditAction,
    AuditRecord,
    Category,
    CheckResult,
    Target,
    TargetState,
)


class FakeParams(BaseModel):
    model_config = ConfigDict(extra="forbid")
    outcome: str = "pass"  # pass | fail | wait | raise | hang
    reason: str = "fake reason"


def guardrail(name: str, category: Category, owner: str) -> type[Guardrail[Any]]:
    """A guardrail class that does what its params say."""

    class _Fake(Guardrail[FakeParams]):
        params_model = FakeParams
        default_timeout = timedelta(seconds=5)

        async def check(self, params: FakeParams, ctx: CheckContext) -> CheckResult:
            if params.outcome == "raise":
                raise RuntimeError(f"{self.name} exploded")
            if params.outcome == "hang":
                await asyncio.sleep(3600)
            if params.outcome == "fail":
                return ctx.failed(params.reason, remedy=f"fix {self.name}")
            if params.outcome == "wait":
                return ctx.wait(
                    params.reason, remedy="wait", retry_after=ctx.now + timedelta(minutes=30)
                )
            return ctx.passed("all good")

    _Fake.name = name
    _Fake.category = category
    _Fake.default_owner = owner
    _Fake.__qualname__ = f"Fake[{name}]"
    return _Fake


def guardrails() -> PluginRegistry[Guardrail[Any]]:
    """A registry of five fake guardrails, one per category."""
    registry = new_guardrail_registry()
    for name, category, owner in [
        ("fake-timing", Category.TIMING, "release-eng"),
        ("fake-lock", Category.CONCURRENCY, "platform"),
        ("fake-health", Category.HEALTH, "service-owners"),
        ("fake-state", Category.TARGET_STATE, "infra"),
        ("fake-inflight", Category.IN_FLIGHT, "sre"),
    ]:
        registry.register(guardrail(name, category, owner))
    registry.register(AlwaysPass)
    registry.register(Switch)
    registry.register(TimingSwitch)
    return registry


class AlwaysPass(Guardrail[EmptyParams]):
    name = "always-pass"
    category = Category.HEALTH
    default_owner = "nobody"

    async def check(self, params: EmptyParams, ctx: CheckContext) -> CheckResult:
        return ctx.passed("fine")


@dataclass
class Ledger:
    """What the recording change kind did, in order."""

    applied: list[str] = field(default_factory=list)
    failed_once: list[str] = field(default_factory=list)
    revert_calls: list[str] = field(default_factory=list)
    reverted: list[str] = field(default_factory=list)
    keys: list[str] = field(default_factory=list)
    gates: dict[str, asyncio.Event] = field(default_factory=dict)

    def gate(self, name: str) -> asyncio.Event:
        """The gate an ``apply`` with ``hold: name`` waits on; a test opens it with ``.set()``."""
        return self.gates.setdefault(name, asyncio.Event())


class RecordingParams(BaseModel):
    model_config = ConfigDict(extra="forbid")
    fail_apply: list[str] = []
    fail_revert: list[str] = []
    delay: float = 0.0
    hold: str = ""  # apply waits until the test opens ledger.gate(hold): no race with load
    hold_only: list[str] = []  # the targets that wait on ``hold`` (empty: every target)
    hold_except: list[str] = []  # the targets that never wait on ``hold``
    irreversible: list[str] = []  # targets whose apply runs an irreversible step ("drop-column")
    flaky: list[str] = []  # targets whose first apply fails (non-retryably); later ones succeed


class RecordingKind(ChangeKind[RecordingParams]):
    """A change kind that records every call; fails where its params say (non-retryably)."""

    name = "recording"
    params_model = RecordingParams
    ledger: ClassVar[Ledger] = Ledger()

    async def apply(
        self, params: RecordingParams, target: Target, *, idempotency_key: str
    ) -> ApplyResult:
        if params.delay:
            await asyncio.sleep(params.delay)
        if (
            params.hold
            and (not params.hold_only or target.id in params.hold_only)
            and target.id not in params.hold_except
        ):
            await self.ledger.gate(params.hold).wait()
        if target.id in params.fail_apply or (
            target.id in params.flaky and target.id not in self.ledger.failed_once
        ):
            self.ledger.failed_once.append(target.id)
            raise ApplicationError(
                f"{target.id} refused", type=errors.TARGET_REJECTED, non_retryable=True
            )
        if idempotency_key not in self.ledger.keys:
            self.ledger.keys.append(idempotency_key)
            self.ledger.applied.append(target.id)
        steps = ["drop-column"] if target.id in params.irreversible else []
        return ApplyResult(target_id=target.id, applied=True, irreversible=steps)

    async def revert_if_applied(
        self, params: RecordingParams, target: Target, *, applied_key: str, idempotency_key: str
    ) -> ApplyResult:
        self.ledger.revert_calls.append(target.id)
        if target.id in params.fail_revert:
            raise ApplicationError(
                f"{target.id} revert refused", type=errors.TARGET_REJECTED, non_retryable=True
            )
        if applied_key in self.ledger.keys and target.id not in self.ledger.reverted:
            self.ledger.reverted.append(target.id)
            return ApplyResult(target_id=target.id, applied=True)
        return ApplyResult(target_id=target.id, applied=False, detail="never applied")

    async def describe(self, params: RecordingParams, target: Target) -> TargetState:
        return TargetState(target_id=target.id, reachable=True, healthy=True)


class RecordingManyKind(RecordingKind):
    """The recording kind opted in to ``apply_change_many`` (10 targets per activity at most)."""

    name = "recording-many"
    apply_many_size = 10


def kinds(*, many: bool = False) -> PluginRegistry[ChangeKind[Any]]:
    """A registry holding the recording change kind (and ``recording-many`` if ``many``)."""
    registry = new_kind_registry()
    registry.register(RecordingKind)
    if many:
        registry.register(RecordingManyKind)
    return registry


class Switch(Guardrail[EmptyParams]):
    """A guardrail whose verdict a test flips while a change waits (``Switch.outcome``)."""

    name = "switch"
    category = Category.TARGET_STATE
    default_owner = "switch-owners"
    outcome: ClassVar[str] = "fail"

    async def check(self, params: EmptyParams, ctx: CheckContext) -> CheckResult:
        if Switch.outcome == "fail":
            return ctx.failed("the switch is off", remedy="turn the switch on")
        if Switch.outcome == "wait":
            return ctx.wait(
                "not yet", remedy="wait an hour", retry_after=ctx.now + timedelta(hours=1)
            )
        return ctx.passed("the switch is on")


class TimingSwitch(Switch):
    """The switch as a timing check, so the re-check before every wave runs it too."""

    name = "timing-switch"
    category = Category.TIMING
    default_owner = "release-eng"


class HoldingAuditStore(SqliteAuditStore):
    """The real SQLite audit store, except that chosen records wait for the test to let them in.

    ``hold(change_id, action)`` makes the next ``append`` of that change's ``action`` record wait
    (in the activity's thread) until ``let_in`` is called; ``arrived`` says it is waiting. Tests
    use it to keep an operator's handler inside its audit while the workflow moves on.
    """

    def __init__(self, path: str = ":memory:") -> None:
        super().__init__(path)
        self._held: dict[tuple[str, AuditAction], tuple[threading.Event, threading.Event]] = {}

    def hold(self, change_id: str, action: AuditAction) -> None:
        self._held[(change_id, action)] = (threading.Event(), threading.Event())

    async def arrived(self, change_id: str, action: AuditAction, within: float = 20) -> None:
        came, _ = self._held[(change_id, action)]
        if not await asyncio.to_thread(came.wait, within):
            raise AssertionError(f"no {action.value} record of {change_id} within {within}s")

    def let_in(self, change_id: str, action: AuditAction) -> None:
        self._held[(change_id, action)][1].set()

    def _wait_if_held(self, record: AuditRecord) -> None:
        held = self._held.get((record.change_id, record.action))
        if held is not None:
            came, go = held
            came.set()
            go.wait(60)

    def append(self, record: AuditRecord) -> bool:
        self._wait_if_held(record)
        return super().append(record)

    def append_many(self, records: Sequence[AuditRecord]) -> list[bool]:
        for record in records:
            self._wait_if_held(record)
        return super().append_many(records)

"""The guardrail contract: what a safety check declares and how it reports.

A guardrail is a class with class attributes ``name``, ``category``, ``params_model``,
``default_owner`` and ``default_timeout``, and an async ``check`` method that returns a
:class:`~workflows.models.CheckResult` built through the :class:`CheckContext` helpers, which fill in
the guardrail's name, category, owner and opt-out terms so a check only says what it found.

Example::

    class AlwaysPass(Guardrail[EmptyParams]):
        name = "always-pass"
        category = Category.TIMING
        params_model = EmptyParams
        default_owner = "platform"

        async def check(self, params, ctx):
            return ctx.passed("nothing to check")
"""

from __future__ import annotations

from abc import abstractmethod
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any, ClassVar, TypeVar

from pydantic import BaseModel

from guardrails.plugins import (
    EmptyParams,
    Plugin,
    PluginKind,
    PluginRegistry,
    params_errors,
    subclass_contract,
)
from workflows.models import (
    Category,
    ChangeContext,
    CheckResult,
    CheckSpec,
    CheckStatus,
    OptOut,
)

if TYPE_CHECKING:
    from temporalio.client import Client

    from activities.kinds.base import ChangeKind
    from guardrails.builtin.change_window.calendars import CalendarCache

P = TypeVar("P", bound=BaseModel)


@dataclass(frozen=True)
class Services:
    """Worker-wide resources a guardrail may use, so that guardrails need not import the worker.

    The worker fills them in (:func:`worker.registry.activities`): ``change_kinds`` always,
    ``temporal_client`` and ``task_queue`` when it has a client. A field left ``None`` is not
    available; a guardrail that needs it reports an ``error`` result naming it.
    """

    temporal_client: Client | None = None
    """The worker's Temporal client (``target-lock``, ``no-conflicting-changes``)."""
    task_queue: str | None = None
    """The worker's task queue (where ``target-lock`` starts lock workflows)."""
    change_kinds: PluginRegistry[ChangeKind[Any]] | None = None
    """The worker's change-kind registry (``target-state``, ``irreversible-steps``)."""
    calendar_cache: CalendarCache | None = None
    """The holiday-calendar cache of ``change-window`` (default: the process's own)."""
    extra: Mapping[str, Any] = field(default_factory=dict)
    """Resources of third-party guardrails, by name (``build_worker(services=...)``)."""


@dataclass
class CheckContext:
    """What a check may use: the change, its own resolved spec, the time, and shared services."""

    change: ChangeContext
    spec: CheckSpec
    now: datetime
    services: Services = field(default_factory=Services)
    probe_only: bool = False
    """True when the gate runs alone (``changeguard checks``): look, but take nothing (no locks)."""

    def _result(self, status: CheckStatus, reason: str, **kw: Any) -> CheckResult:
        rule = self.spec.opt_out_rule
        return CheckResult(
            guardrail=self.spec.guardrail,
            category=self.spec.category,
            status=status,
            reason=reason,
            owner=self.spec.owner,
            opt_out=self.spec.opt_out,
            approvers=list(rule.approvers)
            if rule and self.spec.opt_out is OptOut.APPROVABLE
            else [],
            mode=self.spec.mode,
            approval=rule if self.spec.opt_out is OptOut.APPROVABLE else None,
            **kw,
        )

    def passed(self, reason: str = "", *, evidence: dict[str, Any] | None = None) -> CheckResult:
        """The check found nothing wrong."""
        return self._result(CheckStatus.PASS, reason, evidence=evidence or {})

    def failed(
        self, reason: str, *, remedy: str, evidence: dict[str, Any] | None = None
    ) -> CheckResult:
        """The check found a reason not to proceed; ``remedy`` says what would make it pass."""
        return self._result(CheckStatus.FAIL, reason, remedy=remedy, evidence=evidence or {})

    def wait(
        self,
        reason: str,
        *,
        remedy: str,
        retry_after: datetime,
        evidence: dict[str, Any] | None = None,
    ) -> CheckResult:
        """Not yet: the check is expected to pass by itself at ``retry_after``."""
        return self._result(
            CheckStatus.WAIT,
            reason,
            remedy=remedy,
            retry_after=retry_after,
            evidence=evidence or {},
        )

    def error(
        self, reason: str, *, remedy: str, evidence: dict[str, Any] | None = None
    ) -> CheckResult:
        """The check could not decide (fail-closed)."""
        return self._result(CheckStatus.ERROR, reason, remedy=remedy, evidence=evidence or {})


class Guardrail(Plugin[P]):
    """Base class of every guardrail; see the module docstring for the contract."""

    category: ClassVar[Category]
    params_model: ClassVar[type[BaseModel]] = EmptyParams
    default_owner: ClassVar[str]
    default_timeout: ClassVar[timedelta] = timedelta(seconds=30)
    default_opt_out: ClassVar[OptOut] = OptOut.APPROVABLE
    async_methods: ClassVar[tuple[str, ...]] = ("check",)
    unimplemented: ClassVar[str] = "it must implement async check(params, ctx)"

    @abstractmethod
    async def check(self, params: P, ctx: CheckContext) -> CheckResult:
        """Judge the change; return a result built with ``ctx.passed/failed/wait/error``."""

    @classmethod
    def attribute_problems(cls) -> list[str]:
        """The category, params model, owner, timeout and opt-out the contract requires."""
        problems = []
        if not isinstance(getattr(cls, "category", None), Category):
            problems.append(f"category must be one of {[c.value for c in Category]}")
        problems += super().attribute_problems()
        owner = getattr(cls, "default_owner", None)
        if not isinstance(owner, str) or not owner.strip():
            problems.append("default_owner must name the team that owns the fix")
        timeout = getattr(cls, "default_timeout", None)
        if not isinstance(timeout, timedelta) or timeout <= timedelta(0):
            problems.append("default_timeout must be a positive timedelta")
        if not isinstance(getattr(cls, "default_opt_out", None), OptOut):
            problems.append("default_opt_out must be an OptOut")
        return problems


GUARDRAIL_GROUP = "changeguard.guardrails"
GUARDRAILS: PluginKind[Guardrail[Any]] = PluginKind(
    kind="guardrail",
    group=GUARDRAIL_GROUP,
    validate=subclass_contract(Guardrail, "guardrails.base.Guardrail"),
)
"""The guardrail plug-in kind: its entry-point group and contract."""


def new_registry() -> PluginRegistry[Guardrail[Any]]:
    """An empty guardrail registry (tests use their own; the worker loads entry points)."""
    return GUARDRAILS.new_registry()


def default_registry() -> PluginRegistry[Guardrail[Any]]:
    """A registry with every guardrail advertised through entry points, built-ins included."""
    return GUARDRAILS.default_registry()


__all__ = [
    "GUARDRAILS",
    "GUARDRAIL_GROUP",
    "CheckContext",
    "EmptyParams",
    "Guardrail",
    "Services",
    "default_registry",
    "new_registry",
    "params_errors",
]

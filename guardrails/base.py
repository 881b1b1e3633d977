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

import inspect
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any, ClassVar, Generic, TypeVar

from pydantic import BaseModel, ConfigDict

from guardrails.plugins import PluginRegistry, params_errors
from workflows.models import (
    Category,
    ChangeContext,
    CheckResult,
    CheckSpec,
    CheckStatus,
    OptOut,
)

P = TypeVar("P", bound=BaseModel)


class EmptyParams(BaseModel):
    """Params model for guardrails that take none."""

    model_config = ConfigDict(extra="forbid")


@dataclass
class CheckContext:
    """What a check may use: the change, its own resolved spec, the time, and shared services.

    ``services`` carries worker-wide resources by name (``temporal_client``, ``change_kinds``)
    so that guardrails need not import the worker.
    """

    change: ChangeContext
    spec: CheckSpec
    now: datetime
    services: dict[str, Any] = field(default_factory=dict)
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


class Guardrail(ABC, Generic[P]):
    """Base class of every guardrail; see the module docstring for the contract."""

    name: ClassVar[str]
    category: ClassVar[Category]
    params_model: ClassVar[type[BaseModel]] = EmptyParams
    default_owner: ClassVar[str]
    default_timeout: ClassVar[timedelta] = timedelta(seconds=30)
    default_opt_out: ClassVar[OptOut] = OptOut.APPROVABLE
    description: ClassVar[str] = ""

    def parse_params(self, raw: dict[str, Any]) -> P:
        """Validate raw policy params against ``params_model`` (raises ``ValidationError``)."""
        return self.params_model.model_validate(raw)  # type: ignore[return-value]

    @abstractmethod
    async def check(self, params: P, ctx: CheckContext) -> CheckResult:
        """Judge the change; return a result built with ``ctx.passed/failed/wait/error``."""


def _validate_guardrail(cls: type[Guardrail[Any]]) -> list[str]:
    problems = []
    if not (isinstance(cls, type) and issubclass(cls, Guardrail)):
        return ["it must subclass guardrails.base.Guardrail"]
    if inspect.isabstract(cls):
        problems.append("it must implement async check(params, ctx)")
    elif not inspect.iscoroutinefunction(cls.check):
        problems.append("check must be 'async def'")
    if not isinstance(getattr(cls, "category", None), Category):
        problems.append(f"category must be one of {[c.value for c in Category]}")
    pm = getattr(cls, "params_model", None)
    if not (isinstance(pm, type) and issubclass(pm, BaseModel)):
        problems.append("params_model must be a pydantic model class")
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


def new_registry() -> PluginRegistry[Guardrail[Any]]:
    """An empty guardrail registry (tests use their own; the worker loads entry points)."""
    return PluginRegistry(kind="guardrail", group=GUARDRAIL_GROUP, validate=_validate_guardrail)


def default_registry() -> PluginRegistry[Guardrail[Any]]:
    """A registry with every guardrail advertised through entry points, built-ins included."""
    registry = new_registry()
    registry.load_entry_points()
    return registry


__all__ = [
    "GUARDRAIL_GROUP",
    "CheckContext",
    "EmptyParams",
    "Guardrail",
    "default_registry",
    "new_registry",
    "params_errors",
]

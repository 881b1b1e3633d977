"""Wire models of the gate: policy resolution, check results, the report."""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any, Literal

from pydantic import (
    BaseModel,
    Field,
)

from workflows.ids import LOCK_PREFIX as LOCK_PREFIX
from workflows.ids import lock_id as lock_id
from workflows.models.enums import Category, CheckStatus, Decision, Mode, OptOut
from workflows.models.request import ChangeContext
from workflows.types import Duration as Duration
from workflows.types import Strict as Strict
from workflows.types import format_duration as format_duration
from workflows.types import parse_duration as parse_duration

# Gate: policy resolution, check results, the report
# --------------------------------------------------------------------------------------------------


class OptOutRule(Strict):
    """Who may approve a failing check, and under what terms."""

    approvers: list[str] = Field(min_length=1, description="operator groups allowed to approve")
    distinct_from_requester: bool = True
    max_duration: Duration = timedelta(hours=4)
    required: int = Field(default=1, ge=1, le=10, description="distinct approvals needed")
    require_signed: bool = Field(
        default=False,
        exclude_if=lambda v: not v,  # unchanged policies keep their hashes
        description="only signed approvals count (docs/approvals.md)",
    )


Dispatch = Literal["activity", "local"]
"""How a check runs: an activity on the task queue, or a local activity in the gate's worker."""

LOCAL_CHECK_LONGEST = timedelta(seconds=10)
"""The longest timeout a local check may have (docs/policy.md, "How a check runs")."""


class CheckSpec(BaseModel):
    """One applicable check, fully resolved from the policy and the guardrail's defaults."""

    rule: str = Field(default="", description="the policy rule's id (default: the plug-in name)")
    source: str = Field(default="platform", description="'platform' (the bundle) or 'request'")
    note: str = Field(
        default="", description="the bundle's reason: for a floor rule it shadows or opens up"
    )
    guardrail: str
    category: Category
    params: dict[str, Any] = Field(default_factory=dict)
    owner: str
    timeout: Duration = timedelta(seconds=30)
    mode: Mode = Mode.ENFORCE
    opt_out: OptOut = OptOut.APPROVABLE
    opt_out_rule: OptOutRule | None = None
    dispatch: Dispatch = Field(
        default="activity",
        exclude_if=lambda v: v == "activity",  # checks that run as activities dump as before
        description="'activity' (the task queue) or 'local' (a local activity in the gate's worker)",
    )


class ResolvePolicyInput(BaseModel):
    """Input of ``resolve_policy``: the change, and the rules its request adds to the bundle."""

    change: ChangeContext
    policy: dict[str, Any] | None = Field(
        default=None, description="the request's additions to the platform bundle"
    )
    categories: list[Category] | None = Field(
        default=None, description="only checks of these categories (re-checks before a wave)"
    )


class ResolvedPolicy(BaseModel):
    """Output of ``resolve_policy``: the applicable checks in a stable order."""

    policy_hash: str
    checks: list[CheckSpec]
    source: str = "inline"
    bundle_hash: str = Field(default="", description="the platform bundle's hash")
    bundle_warning: str = Field(
        default="", description="why the worker still judges by an older bundle (a refused edit)"
    )


class RunCheckInput(BaseModel):
    """Input of ``run_check``: one check against one change."""

    spec: CheckSpec
    change: ChangeContext
    now: datetime
    probe_only: bool = False


class CheckResult(BaseModel):
    """One guardrail's verdict; every non-passing result says why, what would pass, and who owns it."""

    rule: str = Field(default="", description="the policy rule's id; approvals name it")
    source: str = "platform"
    note: str = ""
    guardrail: str
    category: Category
    status: CheckStatus
    reason: str = ""
    remedy: str = ""
    owner: str = ""
    opt_out: OptOut = OptOut.APPROVABLE
    approvers: list[str] = Field(default_factory=list)
    retry_after: datetime | None = None
    evidence: dict[str, Any] = Field(default_factory=dict)
    duration_ms: int = 0
    mode: Mode = Mode.ENFORCE
    approval: OptOutRule | None = Field(
        default=None, description="the terms on which this failure may be approved, if approvable"
    )

    @property
    def passing(self) -> bool:
        """True for ``pass``."""
        return self.status is CheckStatus.PASS

    @property
    def rule_id(self) -> str:
        """The rule id (results recorded before rule ids existed use the plug-in name)."""
        return self.rule or self.guardrail


class GuardrailReport(BaseModel):
    """Every check's result and the one decision drawn from them."""

    decision: Decision
    report_hash: str
    evaluated_at: datetime
    checks: list[CheckResult]
    policy_hash: str = ""
    retry_after: datetime | None = None
    retry_zone: str = Field(
        default="", description="the time zone of the timing rule that set retry_after"
    )
    bundle_hash: str = Field(default="", description="the platform bundle the gate judged by")
    bundle_warning: str = Field(
        default="", description="why the worker still judges by an older bundle (a refused edit)"
    )

    @property
    def failures(self) -> list[CheckResult]:
        """The enforced checks that did not pass and do not merely ask to wait."""
        return [
            c
            for c in self.checks
            if c.mode is Mode.ENFORCE and c.status in (CheckStatus.FAIL, CheckStatus.ERROR)
        ]


def report_hash(checks: list[CheckResult], policy_hash: str) -> str:
    """Moved beside the report: :func:`workflows.report.report_hash` (kept here for old imports)."""
    from workflows.report import report_hash as moved  # the report imports these models

    return moved(checks, policy_hash)


class GateInput(BaseModel):
    """Input of the ``GuardrailGate`` workflow."""

    change: ChangeContext
    policy: dict[str, Any] | None = None
    categories: list[Category] | None = None
    probe_only: bool = Field(
        default=False,
        description="report what checks find without taking anything (no locks): `checks` runs",
    )

"""``target-state``: a change starts only from a known-good baseline on every target.

The change's own kind describes each target (``ChangeKind.describe``), so the guardrail works for
any kind without knowing how to reach a target. A target is known-good when it is reachable,
healthy (unless ``require_healthy`` is off) and at ``expect_version`` (when one is given). Up to
``max_unreachable`` unreachable targets are tolerated; they are still named in the result.

The kinds come from ``ctx.services.change_kinds`` (the worker's change-kind registry). Without
that service, or when the change's kind or params are unknown to it, the check cannot decide and
answers ``error``. A ``describe`` that raises counts as an unreachable target, not a crash: one bad
host must not hide what the others report.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from guardrails.base import CheckContext, Guardrail
from guardrails.plugins import validation_problems
from workflows.models import Category, CheckResult, Target, TargetState

KINDS_SERVICE = "change_kinds"
"""The :class:`~guardrails.base.Services` field of the change-kind registry (named in messages)."""
LISTED = 20
"""How many problem targets the reason and remedy name before summarising the rest."""
EVIDENCE_TARGETS = 500
"""How many targets the evidence describes (problem targets first), to keep reports small."""
ERROR_EXCERPT = 120
"""How many characters of an unreachable target's error the reason quotes."""


class TargetStateParams(BaseModel):
    """Params of ``target-state``: the baseline every target must be at."""

    model_config = ConfigDict(extra="forbid")

    expect_version: str | None = Field(
        default=None, description="the version every target should run; None skips the check"
    )
    require_healthy: bool = Field(default=True, description="every target must report healthy")
    max_unreachable: int = Field(
        default=0, ge=0, description="unreachable targets tolerated before the check fails"
    )
    concurrency: int = Field(default=10, ge=1, le=100, description="describes run at once")


@dataclass(frozen=True)
class _Finding:
    """One target's state and what is wrong with it (nothing, for a good target)."""

    target_id: str
    state: TargetState
    drifted: bool
    unhealthy: bool

    @property
    def unreachable(self) -> bool:
        return not self.state.reachable

    @property
    def bad(self) -> bool:
        return self.unreachable or self.drifted or self.unhealthy

    def evidence(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "reachable": self.state.reachable,
            "healthy": self.state.healthy,
            "version": self.state.version,
        }
        if self.unreachable and "error" in self.state.detail:
            out["error"] = str(self.state.detail["error"])
        return out


class TargetStateGuardrail(Guardrail[TargetStateParams]):
    """Pass when every target is reachable, healthy and at the expected version."""

    name = "target-state"
    category = Category.TARGET_STATE
    params_model = TargetStateParams
    default_owner = "service-owners"
    default_timeout = timedelta(seconds=60)
    description = "every target is reachable, healthy and at the expected baseline version"

    async def check(self, params: TargetStateParams, ctx: CheckContext) -> CheckResult:
        """Describe every target (at most ``concurrency`` at once) and judge the baseline."""
        kinds = ctx.services.change_kinds
        if kinds is None:
            return ctx.error(
                f"{ctx.spec.guardrail} cannot describe targets: the worker provides no "
                f"{KINDS_SERVICE!r} service",
                remedy=(
                    "run the check in a changeguard worker (worker.registry.activities passes "
                    f"the change-kind registry), or pass services=Services({KINDS_SERVICE}=registry)"
                ),
            )
        try:
            kind = kinds.get(ctx.change.kind)
        except KeyError as exc:
            return ctx.error(
                f"{ctx.spec.guardrail} cannot describe targets: {exc.args[0]}",
                remedy=(
                    f"install the plug-in that provides change kind {ctx.change.kind!r} on the "
                    "worker, or fix the change's kind"
                ),
            )
        try:
            kind_params = kind.parse_params(ctx.change.params)
        except ValidationError as exc:
            problems = "; ".join(validation_problems(exc, "params"))
            return ctx.error(
                f"{ctx.spec.guardrail} cannot describe targets: the change's params are invalid "
                f"for {ctx.change.kind}: {problems}",
                remedy=f"fix the change's params for kind {ctx.change.kind}",
            )

        limit = asyncio.Semaphore(params.concurrency)

        async def describe(target: Target) -> _Finding:
            async with limit:
                try:
                    state = await kind.describe(kind_params, target)
                except Exception as exc:  # a kind's bug or outage is this target's finding
                    state = TargetState(
                        target_id=target.id,
                        reachable=False,
                        healthy=False,
                        detail={"error": f"describe raised {type(exc).__name__}: {exc}"},
                    )
            return _judge(target.id, state, params)

        findings = list(await asyncio.gather(*(describe(t) for t in ctx.change.targets)))
        return _verdict(findings, params, ctx)


def _judge(target_id: str, state: TargetState, params: TargetStateParams) -> _Finding:
    reachable = state.reachable
    drifted = (
        reachable and params.expect_version is not None and state.version != params.expect_version
    )
    unhealthy = reachable and params.require_healthy and not state.healthy
    return _Finding(target_id, state, drifted=drifted, unhealthy=unhealthy)


def _describe_problem(f: _Finding, params: TargetStateParams, tolerated: bool) -> str:
    if f.unreachable:
        error = " ".join(str(f.state.detail.get("error", "no detail")).split())
        if len(error) > ERROR_EXCERPT:
            error = error[:ERROR_EXCERPT] + "…"
        suffix = f", tolerated by max_unreachable={params.max_unreachable}" if tolerated else ""
        return f"{f.target_id} unreachable ({error}{suffix})"
    parts = []
    if f.drifted:
        found = f.state.version if f.state.version is not None else "no version"
        parts.append(f"at {found}, expected {params.expect_version}")
    if f.unhealthy:
        parts.append("unhealthy")
    return f"{f.target_id} " + " and ".join(parts)


def _evidence_targets(findings: list[_Finding]) -> dict[str, Any]:
    """Each target's state, in target order; past the cap, problem targets are kept first."""
    if len(findings) <= EVIDENCE_TARGETS:
        kept = findings
    else:
        ranked = sorted(range(len(findings)), key=lambda i: (not findings[i].bad, i))
        kept = [findings[i] for i in sorted(ranked[:EVIDENCE_TARGETS])]
    return {f.target_id: f.evidence() for f in kept}


def _names(ids: list[str]) -> str:
    shown = ", ".join(ids[:LISTED])
    return shown + (f" and {len(ids) - LISTED} more" if len(ids) > LISTED else "")


def _baseline(params: TargetStateParams) -> str:
    words = ["reachable"]
    if params.require_healthy:
        words.append("healthy")
    if params.expect_version is not None:
        words.append(f"at {params.expect_version}")
    return ", ".join(words)


def _verdict(findings: list[_Finding], params: TargetStateParams, ctx: CheckContext) -> CheckResult:
    total = len(findings)
    evidence: dict[str, Any] = {
        "expect_version": params.expect_version,
        "require_healthy": params.require_healthy,
        "max_unreachable": params.max_unreachable,
        "targets": _evidence_targets(findings),
        "omitted": max(0, total - EVIDENCE_TARGETS),
    }
    unreachable = [f for f in findings if f.unreachable]
    tolerated = len(unreachable) <= params.max_unreachable
    drifted = [f.target_id for f in findings if f.drifted]
    unhealthy = [f.target_id for f in findings if f.unhealthy]
    bad = [f for f in findings if f.bad]

    if not drifted and not unhealthy and tolerated:
        reached = total - len(unreachable)
        if not unreachable:
            return ctx.passed(
                f"{total} target{'s' if total != 1 else ''} {_baseline(params)}",
                evidence=evidence,
            )
        listed = "; ".join(_describe_problem(f, params, True) for f in unreachable[:LISTED])
        return ctx.passed(
            f"{reached} of {total} targets {_baseline(params)}; {listed}", evidence=evidence
        )

    listed = "; ".join(_describe_problem(f, params, tolerated) for f in bad[:LISTED])
    more = f"; … and {len(bad) - LISTED} more (see evidence)" if len(bad) > LISTED else ""
    remedies = []
    if drifted:
        remedies.append(
            f"bring {_names(drifted)} back to {params.expect_version} or change expect_version "
            "if the baseline has moved"
        )
    if unhealthy:
        it = "it reports" if len(unhealthy) == 1 else "they report"
        remedies.append(f"repair {_names(unhealthy)} until {it} healthy")
    if not tolerated:
        ids = [f.target_id for f in unreachable]
        it = "it answers" if len(ids) == 1 else "they answer"
        are = "is" if len(ids) == 1 else "are"
        remedies.append(
            f"restore {_names(ids)} until {it} again or remove {'it' if len(ids) == 1 else 'them'} "
            f"from the change ({len(ids)} {are} unreachable, max_unreachable is "
            f"{params.max_unreachable})"
        )
    remedy = "; ".join(remedies) + ", then recheck"
    return ctx.failed(
        f"{len(bad)} of {total} targets {'is' if len(bad) == 1 else 'are'} not in a known-good "
        f"state: {listed}{more}",
        remedy=remedy,
        evidence=evidence,
    )

"""``environment-boundary``: one change, one environment, and only environments it may touch.

A target's environment is its own ``environment`` or, when unset, the change's. The check fails
when any target lies outside the change's environment (a prod change that also reaches a staging
host), and when the change's environment is not among ``allowed``. Environments are compared
exactly: ``Prod`` and ``prod`` are different environments, which fails closed.

Crossing environments is never approvable by default (``default_opt_out`` is ``forbidden``): the
remedy is always to split the change, never to sign it off. A policy may still name approvers
explicitly.
"""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, field_validator

from guardrails.base import CheckContext, Guardrail
from workflows.models import Category, CheckResult, OptOut

LISTED = 20
"""How many stray targets the reason names before summarising the rest."""


class EnvironmentBoundaryParams(BaseModel):
    """Params of ``environment-boundary``: the environments changes may target."""

    model_config = ConfigDict(extra="forbid")

    allowed: list[str] | None = Field(
        default=None, description="environments changes may target; None means any"
    )

    @field_validator("allowed")
    @classmethod
    def _not_blank(cls, v: list[str] | None) -> list[str] | None:
        if v is not None and any(not e.strip() for e in v):
            raise ValueError("allowed environments must not be blank")
        return v


def _names(ids: list[str]) -> str:
    shown = ", ".join(ids[:LISTED])
    return shown + (f" and {len(ids) - LISTED} more" if len(ids) > LISTED else "")


class EnvironmentBoundary(Guardrail[EnvironmentBoundaryParams]):
    """Fail when a change reaches outside its environment or into one it may not touch."""

    name = "environment-boundary"
    category = Category.TARGET_STATE
    params_model = EnvironmentBoundaryParams
    default_owner = "platform"
    default_timeout = timedelta(seconds=5)
    default_opt_out = OptOut.FORBIDDEN
    description = "every target is in the change's environment, and that environment is allowed"

    async def check(self, params: EnvironmentBoundaryParams, ctx: CheckContext) -> CheckResult:
        """Group targets by environment and compare with the change's and the allowed ones."""
        change = ctx.change
        home = change.environment
        by_env: dict[str, list[str]] = {}
        for target in change.targets:
            by_env.setdefault(target.environment or home, []).append(target.id)
        strays = {env: ids for env, ids in by_env.items() if env != home}
        evidence: dict[str, Any] = {
            "change_environment": home,
            "allowed": params.allowed,
            "environments": by_env,
        }

        reasons, remedies = [], []
        if params.allowed is not None and home not in params.allowed:
            allowed = ", ".join(params.allowed) or "none"
            reasons.append(
                f"the change is for {home}, which is not among the allowed environments ({allowed})"
            )
            remedies.append(
                f"target one of the allowed environments ({allowed}), or ask {ctx.spec.owner} to "
                f"allow {home} in the policy"
            )
        if strays:
            for env, ids in sorted(strays.items()):
                verb = "is" if len(ids) == 1 else "are"
                reasons.append(f"{_names(ids)} {verb} in {env} but the change is for {home}")
            if len(strays) == 1:
                ((env, ids),) = strays.items()
                remedies.append(f"remove {_names(ids)} or start a separate change for {env}")
            else:
                parts = [f"{env} ({_names(ids)})" for env, ids in sorted(strays.items())]
                remedies.append(
                    f"split the change per environment: keep the {home} targets here and start "
                    f"a separate change for {' and for '.join(parts)}"
                )

        if reasons:
            if strays:
                spans = ", ".join(sorted(by_env))
                reasons.insert(0, f"the change spans {len(by_env)} environments ({spans})")
            return ctx.failed("; ".join(reasons), remedy="; ".join(remedies), evidence=evidence)
        count = len(change.targets)
        allowed_note = "" if params.allowed is None else ", which is allowed"
        which = "the 1 target is" if count == 1 else f"all {count} targets are"
        return ctx.passed(f"{which} in {home}{allowed_note}", evidence=evidence)

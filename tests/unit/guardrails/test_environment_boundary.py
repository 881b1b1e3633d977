"""The environment-boundary guardrail: one change, one allowed environment, never approvable."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from guardrails.base import CheckContext, new_registry, params_errors
from guardrails.builtin.environment_boundary import (
    EnvironmentBoundary,
    EnvironmentBoundaryParams,
)
from workflows.models import (
    Category,
    ChangeContext,
    CheckResult,
    CheckSpec,
    CheckStatus,
    OptOut,
    OptOutRule,
    Target,
)

NOW = datetime(2026, 6, 11, 8, 0, tzinfo=UTC)


def make_ctx(
    targets: list[Target],
    *,
    environment: str = "prod",
    opt_out: OptOut = OptOut.FORBIDDEN,
    rule: OptOutRule | None = None,
) -> CheckContext:
    spec = CheckSpec(
        guardrail="environment-boundary",
        category=Category.TARGET_STATE,
        owner="platform",
        timeout=timedelta(seconds=5),
        opt_out=opt_out,
        opt_out_rule=rule,
    )
    change = ChangeContext(
        change_id="chg-1",
        kind="http-deploy",
        environment=environment,
        team="web",
        requester="alice",
        targets=targets,
    )
    return CheckContext(change=change, spec=spec, now=NOW)


def hosts(*ids: str, environment: str | None = None) -> list[Target]:
    return [Target(id=i, environment=environment) for i in ids]


async def run(params: dict[str, Any], ctx: CheckContext) -> CheckResult:
    guardrail = EnvironmentBoundary()
    return await guardrail.check(guardrail.parse_params(params), ctx)


async def test_targets_inheriting_the_change_environment_pass() -> None:
    """Targets without their own environment are in the change's, and pass."""
    targets = [*hosts("web-01", "web-02"), *hosts("web-03", environment="prod")]
    result = await run({}, make_ctx(targets))
    assert result == CheckResult(
        guardrail="environment-boundary",
        category=Category.TARGET_STATE,
        status=CheckStatus.PASS,
        reason="all 3 targets are in prod",
        owner="platform",
        opt_out=OptOut.FORBIDDEN,
        evidence={
            "change_environment": "prod",
            "allowed": None,
            "environments": {"prod": ["web-01", "web-02", "web-03"]},
        },
    )


async def test_a_target_in_another_environment_fails() -> None:
    """A staging host in a prod change is named, with the fix: remove it or split the change."""
    targets = [*hosts("web-01", "web-02"), *hosts("web-07", environment="staging")]
    result = await run({}, make_ctx(targets))
    assert result == CheckResult(
        guardrail="environment-boundary",
        category=Category.TARGET_STATE,
        status=CheckStatus.FAIL,
        reason=(
            "the change spans 2 environments (prod, staging); "
            "web-07 is in staging but the change is for prod"
        ),
        remedy="remove web-07 or start a separate change for staging",
        owner="platform",
        opt_out=OptOut.FORBIDDEN,
        evidence={
            "change_environment": "prod",
            "allowed": None,
            "environments": {"prod": ["web-01", "web-02"], "staging": ["web-07"]},
        },
    )


async def test_several_foreign_environments_ask_to_split_per_environment() -> None:
    """A change spanning three environments names each stray group and asks for a split."""
    targets = [
        *hosts("web-01"),
        *hosts("web-07", "web-08", environment="staging"),
        *hosts("dev-1", environment="dev"),
    ]
    result = await run({}, make_ctx(targets))
    assert (result.status, result.reason, result.remedy) == (
        CheckStatus.FAIL,
        "the change spans 3 environments (dev, prod, staging); "
        "dev-1 is in dev but the change is for prod; "
        "web-07, web-08 are in staging but the change is for prod",
        "split the change per environment: keep the prod targets here and start a separate "
        "change for dev (dev-1) and for staging (web-07, web-08)",
    )
    assert result.evidence["environments"] == {
        "prod": ["web-01"],
        "staging": ["web-07", "web-08"],
        "dev": ["dev-1"],
    }


async def test_environment_not_allowed_fails() -> None:
    """A change for an environment outside ``allowed`` fails even if all targets agree."""
    result = await run({"allowed": ["staging", "dev"]}, make_ctx(hosts("web-01")))
    assert (result.status, result.reason, result.remedy) == (
        CheckStatus.FAIL,
        "the change is for prod, which is not among the allowed environments (staging, dev)",
        "target one of the allowed environments (staging, dev), or ask platform to allow prod "
        "in the policy",
    )


async def test_allowed_environment_passes() -> None:
    """A change inside an allowed environment passes and says so."""
    result = await run({"allowed": ["prod"]}, make_ctx(hosts("web-01")))
    assert (result.status, result.reason) == (
        CheckStatus.PASS,
        "the 1 target is in prod, which is allowed",
    )


async def test_not_allowed_and_crossing_reports_both() -> None:
    """Both problems at once are both reported, each with its remedy."""
    targets = [*hosts("web-01"), *hosts("web-07", environment="staging")]
    result = await run({"allowed": ["staging"]}, make_ctx(targets))
    assert result.reason == (
        "the change spans 2 environments (prod, staging); the change is for prod, which is not "
        "among the allowed environments (staging); web-07 is in staging but the change is for prod"
    )
    assert result.remedy == (
        "target one of the allowed environments (staging), or ask platform to allow prod in the "
        "policy; remove web-07 or start a separate change for staging"
    )


async def test_environments_compare_exactly() -> None:
    """``Prod`` is not ``prod``: a differently spelt environment fails closed."""
    result = await run({}, make_ctx(hosts("web-01", environment="Prod")))
    assert result.status is CheckStatus.FAIL


def test_registered_class_is_forbidden_by_default() -> None:
    """The registered guardrail's default opt-out is forbidden, with its documented defaults."""
    registry = new_registry()
    registry.register(EnvironmentBoundary)
    assert registry.cls("environment-boundary").default_opt_out is OptOut.FORBIDDEN
    guardrail = registry.get("environment-boundary")
    assert (guardrail.category, guardrail.default_owner, guardrail.params_model) == (
        Category.TARGET_STATE,
        "platform",
        EnvironmentBoundaryParams,
    )


async def test_forbidden_spec_yields_forbidden_result_without_approvers() -> None:
    """A forbidden spec gives a forbidden result with no approvers, even if a rule names some."""
    targets = [*hosts("web-01"), *hosts("web-07", environment="staging")]
    ctx = make_ctx(targets, rule=OptOutRule(approvers=["sre-leads"]))
    result = await run({}, ctx)
    assert (result.status, result.opt_out, result.approvers) == (
        CheckStatus.FAIL,
        OptOut.FORBIDDEN,
        [],
    )


@pytest.mark.parametrize(
    ("params", "targets"),
    [
        ({}, [*hosts("a"), *hosts("b", environment="staging")]),
        ({"allowed": []}, hosts("a")),
        ({"allowed": ["dev"]}, [*hosts("a"), *hosts("b", environment="dev")]),
    ],
)
async def test_every_non_pass_says_why_what_and_who(
    params: dict[str, Any], targets: list[Target]
) -> None:
    """I5: every failing result has a reason, a remedy and an owner."""
    result = await run(params, make_ctx(targets))
    assert result.status is CheckStatus.FAIL
    assert all((result.reason, result.remedy, result.owner))


def test_params_are_strict() -> None:
    """Blank environments and unknown fields are params errors."""
    problems = params_errors(EnvironmentBoundary(), {"allowed": [" "], "allow": ["prod"]})
    assert problems == [
        "params.allowed: allowed environments must not be blank",
        "params.allow: unknown field",
    ]

"""The gate builds ``irreversible-steps`` into every change whose kind declares such a step."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import pytest
from temporalio.exceptions import ApplicationError
from temporalio.testing import ActivityEnvironment

from activities.checks import CheckActivities
from activities.kinds.base import new_registry as new_kind_registry
from activities.kinds.pg_migrate import PgMigrate
from guardrails.base import Services, default_registry
from guardrails.builtin.irreversible import BUILTIN_NOTE, builtin_spec, with_builtin_check
from guardrails.bundle import BundleError, BundleHolder, bundle_from_mapping
from tests import fakes
from workflows.errors import POLICY_INVALID
from workflows.models import (
    Category,
    ChangeContext,
    CheckSpec,
    Mode,
    OptOut,
    ResolvedPolicy,
    ResolvePolicyInput,
    RunCheckInput,
    Target,
)

REVERSIBLE = [{"name": "add", "up": "ALTER TABLE t ADD c int", "down": "ALTER TABLE t DROP c"}]
DROPS = [*REVERSIBLE, {"name": "drop-old", "up": "ALTER TABLE t DROP old", "reversible": False}]
DBA_RULE: dict[str, Any] = {
    "use": "irreversible-steps",
    "owner": "dba",
    "applies_to": {"environments": ["prod"]},
    "opt_out": {"approvers": ["dba-leads"]},
    "reason": "a DBA lead signs off dropped columns",
}


def kinds() -> Any:
    registry = new_kind_registry()
    registry.register(PgMigrate)
    return registry


def change(steps: list[dict[str, Any]], environment: str = "prod") -> ChangeContext:
    return ChangeContext(
        change_id="chg",
        kind="pg-migrate",
        environment=environment,
        targets=[Target(id="orders")],
        params={"steps": steps},
    )


async def resolve(
    bundle: dict[str, Any],
    ctx: ChangeContext,
    *,
    policy: dict[str, Any] | None = None,
    categories: list[Category] | None = None,
    guardrails: Any = None,
) -> ResolvedPolicy:
    guardrails = guardrails if guardrails is not None else default_registry()
    activities = CheckActivities(
        guardrails,
        bundle=BundleHolder.fixed(bundle_from_mapping(bundle, registry=guardrails)),
        services=Services(change_kinds=kinds()),
    )
    inp = ResolvePolicyInput(change=ctx, policy=policy, categories=categories)
    return await ActivityEnvironment().run(activities.resolve_policy, inp)


def rules(resolved: ResolvedPolicy) -> list[tuple[str, str, str]]:
    return [(c.rule, c.source, c.opt_out.value) for c in resolved.checks]


async def test_a_bundle_that_lists_nothing_still_gets_the_check_forbidden() -> None:
    """No rule names irreversible-steps: the gate adds it, platform-owned and forbidden."""
    resolved = await resolve({"unmatched": "allow"}, change(DROPS))
    assert resolved.checks == [builtin_spec()]
    (spec,) = resolved.checks
    assert (spec.source, spec.opt_out, spec.mode, spec.note) == (
        "platform",
        OptOut.FORBIDDEN,
        Mode.ENFORCE,
        BUILTIN_NOTE,
    )


async def test_a_change_whose_steps_can_all_be_undone_gets_no_check() -> None:
    """Reversible steps only: nothing is added."""
    assert (await resolve({"unmatched": "allow"}, change(REVERSIBLE))).checks == []


async def test_the_platform_rule_configures_it_where_it_applies_and_the_builtin_elsewhere() -> None:
    """A platform rule stands in for the built-in (approvable); outside its applies_to, forbidden."""
    bundle = {"unmatched": "allow", "guardrails": [DBA_RULE]}
    prod = await resolve(bundle, change(DROPS, "prod"))
    staging = await resolve(bundle, change(DROPS, "staging"))
    assert rules(prod) == [("irreversible-steps", "platform", "approvable")]
    assert prod.checks[0].owner == "dba"
    assert rules(staging) == [("irreversible-steps", "platform", "forbidden")]
    assert staging.checks[0].note == BUILTIN_NOTE


async def test_a_request_cannot_remove_it_or_take_its_id() -> None:
    """A request's own rule of it is the same check (dropped); its id taken by another is refused."""
    own = await resolve(
        {"unmatched": "allow"},
        change(DROPS),
        policy={"guardrails": [{"use": "irreversible-steps", "applies_to": {"teams": ["x"]}}]},
    )
    assert own.checks == [builtin_spec()]
    with pytest.raises(ApplicationError) as refused:
        await resolve(
            {"unmatched": "allow"},
            change(DROPS),
            policy={
                "guardrails": [
                    {
                        "id": "irreversible-steps",
                        "use": "http-health",
                        "params": {"url": "http://127.0.0.1:1/healthz"},
                    }
                ]
            },
        )
    assert refused.value.type == POLICY_INVALID
    assert "reserved for the gate's built-in check" in refused.value.message


async def test_re_checks_of_other_categories_leave_it_out() -> None:
    """The re-check before a later wave covers timing, concurrency, in-flight: not target state."""
    resolved = await resolve(
        {"unmatched": "allow"}, change(DROPS), categories=[Category.TIMING, Category.IN_FLIGHT]
    )
    assert resolved.checks == []


async def test_it_runs_on_workers_whose_guardrail_registry_lacks_it() -> None:
    """A registry without the plug-in (fakes only) still resolves and runs the built-in check."""
    guardrails = fakes.guardrails()
    assert "irreversible-steps" not in guardrails
    ctx = change(DROPS)
    resolved = await resolve({"unmatched": "allow"}, ctx, guardrails=guardrails)
    activities = CheckActivities(
        guardrails,
        bundle=BundleHolder.fixed({"unmatched": "allow"}),
        services=Services(change_kinds=kinds()),
    )
    result = await ActivityEnvironment().run(
        activities.run_check,
        RunCheckInput(spec=resolved.checks[0], change=ctx, now=datetime.now(UTC)),
    )
    assert (result.status.value, result.evidence["irreversible"]) == ("fail", ["drop-old"])


def test_the_platform_cannot_shadow_it() -> None:
    """mode: shadow would let the step run unasked: the bundle is refused, naming the fix."""
    with pytest.raises(BundleError) as refused:
        bundle_from_mapping(
            {"guardrails": [{**DBA_RULE, "mode": "shadow"}]}, registry=default_registry()
        )
    assert any(
        "irreversible-steps cannot run in shadow mode" in p for p in refused.value.problems
    ), refused.value.problems


def test_pure_function_keeps_the_platform_order() -> None:
    """Inserted after the platform's checks and before the request's."""
    platform = CheckSpec(guardrail="a", category=Category.TIMING, owner="o")
    request = CheckSpec(guardrail="b", category=Category.TIMING, owner="o", source="request")
    out = with_builtin_check([platform, request], change(DROPS), kinds())
    assert [c.guardrail for c in out] == ["a", "irreversible-steps", "b"]

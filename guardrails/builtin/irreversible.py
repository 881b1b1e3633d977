"""``irreversible-steps``: a change with a step that cannot be undone needs the platform's sign-off.

The change's own kind declares its steps (``ChangeKind.steps(params)``, e.g. ``pg-migrate``'s
``reversible: false`` on a ``DROP COLUMN``); the kinds come from ``ctx.services.change_kinds``,
as for ``target-state``. The check passes when every step can be undone and fails naming the
irreversible steps otherwise: once such a step has run, a rollback cannot restore the targets, so
a later failure pauses the change for a human instead of unwinding it.

The gate adds this check by itself to every change whose kind declares an irreversible step
(:func:`with_builtin_check`, called where ``resolve_policy`` resolves the applicable rules): no
bundle has to list it, and none can remove it. Forbidden to opt out of by default (a floor
guardrail): the platform bundle configures it with a rule of its own (``use: irreversible-steps``:
an ``opt_out`` rule with approvers and max duration, an owner, a ``reason:``), which then stands in
for the built-in on the changes it applies to; on every other change the built-in, forbidden,
applies. It cannot be put in ``mode: shadow`` (a shadowed check would let the step run unasked),
and a request can add it only as it is. Without the kind registry, or with a kind or params it
does not know, the check cannot decide and answers ``error`` (fail-closed).
"""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from pydantic import ValidationError

from guardrails.base import CheckContext, EmptyParams, Guardrail
from guardrails.plugins import validation_problems
from workflows.models import Category, ChangeContext, CheckResult, CheckSpec, Mode, OptOut

KINDS_SERVICE = "change_kinds"
LISTED = 20
BUILTIN_NOTE = (
    "built into the gate: this change's kind declares a step that cannot be undone (the platform "
    "bundle can open it to approval with a rule of its own, never remove it)"
)


class IrreversibleSteps(Guardrail[EmptyParams]):
    """Fail a change that has a step its kind declares irreversible, naming the steps."""

    name = "irreversible-steps"
    category = Category.TARGET_STATE
    params_model = EmptyParams
    default_owner = "platform"
    default_timeout = timedelta(seconds=5)
    default_opt_out = OptOut.FORBIDDEN
    shadowable = False  # a shadowed check would let an irreversible step run without sign-off
    description = (
        "every step of the change can be undone, or the platform approved the ones that cannot"
    )

    async def check(self, params: EmptyParams, ctx: CheckContext) -> CheckResult:
        """Ask the change's kind for its steps; fail on any that cannot be undone."""
        change = ctx.change
        kinds = ctx.services.change_kinds
        if kinds is None:
            return ctx.error(
                "the worker gave this check no change-kind registry, so it cannot see the steps",
                remedy="run the check on a changeguard worker (Services.change_kinds)",
            )
        try:
            kind = kinds.get(change.kind)
        except KeyError:
            return ctx.error(
                f"no change kind named {change.kind!r} on this worker",
                remedy="use a kind the workers register, or deploy the plug-in",
            )
        try:
            parsed = kind.parse_params(change.params)
        except ValidationError as exc:
            return ctx.error(
                f"the params of {change.kind} are invalid: {'; '.join(validation_problems(exc))}",
                remedy="fix the change's params",
            )
        steps = kind.steps(parsed)
        evidence: dict[str, Any] = {
            "kind": change.kind,
            "steps": [{"name": s.name, "reversible": s.reversible} for s in steps[:100]],
        }
        irreversible = [s for s in steps if not s.reversible]
        if not irreversible:
            return ctx.passed(
                f"all {len(steps)} step(s) of {change.kind} can be undone", evidence=evidence
            )
        names = [s.name for s in irreversible]
        shown = ", ".join(names[:LISTED]) + (
            f" and {len(names) - LISTED} more" if len(names) > LISTED else ""
        )
        notes = "; ".join(f"{s.name}: {s.note}" for s in irreversible[:LISTED] if s.note)
        evidence["irreversible"] = names
        return ctx.failed(
            f"{len(names)} step(s) of this {change.kind} change cannot be undone: {shown}"
            + (f" ({notes})" if notes else "")
            + "; once one has run, a failure pauses the change for a human instead of rolling back",
            remedy=(
                "make the steps reversible (give each a down), split the irreversible ones into a "
                "change of their own, or get the approval the platform policy allows for "
                f"{ctx.spec.rule or self.name}"
            ),
            evidence=evidence,
        )


def declared_irreversible(change: ChangeContext, kinds: Any) -> list[str]:
    """The steps the change's kind declares irreversible for its params (empty if it cannot tell).

    An unknown kind or invalid params are refused before any gate by ``validate_change``; here they
    simply declare nothing.
    """
    if kinds is None:
        return []
    try:
        kind = kinds.get(change.kind)
        steps = kind.steps(kind.parse_params(change.params))
    except (KeyError, ValidationError):
        return []
    return [s.name for s in steps if not s.reversible]


def builtin_spec() -> CheckSpec:
    """The check the gate adds when no platform rule of ``irreversible-steps`` covers the change."""
    g = IrreversibleSteps
    return CheckSpec(
        rule=g.name,
        source="platform",
        note=BUILTIN_NOTE,
        guardrail=g.name,
        category=g.category,
        owner=g.default_owner,
        timeout=g.default_timeout,
        mode=Mode.ENFORCE,
        opt_out=OptOut.FORBIDDEN,
    )


def with_builtin_check(
    checks: list[CheckSpec],
    change: ChangeContext,
    kinds: Any,
    *,
    categories: list[Category] | None = None,
) -> list[CheckSpec]:
    """The applicable checks, with ``irreversible-steps`` added where the change needs it.

    Added (after the platform's checks, before the request's) when the change's kind declares an
    irreversible step, the resolution covers its category, and no platform rule of this guardrail
    applies to the change (a platform rule configures it: approvers, owner, reason). A request's
    own rule of it is dropped then: it is forbidden and enforced (the floor), so the built-in
    check is the same check, and one rule id must not run twice.

    Raises:
        ValueError: a request rule of another guardrail uses the id ``irreversible-steps``, which
            the built-in check needs (the activity turns it into a refused policy).
    """
    if categories is not None and IrreversibleSteps.category not in categories:
        return checks
    name = IrreversibleSteps.name
    if any(c.guardrail == name and c.source == "platform" for c in checks):
        return checks
    if not declared_irreversible(change, kinds):
        return checks
    taken = [c for c in checks if c.rule == name and c.guardrail != name]
    if taken:
        raise ValueError(
            f"policy.guardrails: the rule id {name!r} (use: {taken[0].guardrail}) is reserved for "
            "the gate's built-in check of this change's irreversible steps; give your rule "
            f"another id (id: {taken[0].guardrail}-2)"
        )
    kept = [c for c in checks if c.guardrail != name]
    platform = [c for c in kept if c.source == "platform"]
    return [*platform, builtin_spec(), *(c for c in kept if c.source != "platform")]

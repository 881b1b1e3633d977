"""``irreversible-steps``: a change with a step that cannot be undone needs the platform's sign-off.

The change's own kind declares its steps (``ChangeKind.steps(params)``, e.g. ``pg-migrate``'s
``reversible: false`` on a ``DROP COLUMN``); the kinds come from ``ctx.services["change_kinds"]``,
as for ``target-state``. The check passes when every step can be undone and fails naming the
irreversible steps otherwise: once such a step has run, a rollback cannot restore the targets, so
a later failure pauses the change for a human instead of unwinding it.

Forbidden to opt out of by default (a floor guardrail): only the platform bundle may open it to
approval, with an ``opt_out`` rule (approvers, max duration) and a ``reason:``; a request can add
it only as it is. Without the kind registry, or with a kind or params it does not know, the check
cannot decide and answers ``error`` (fail-closed).
"""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from pydantic import ValidationError

from guardrails.base import CheckContext, EmptyParams, Guardrail
from guardrails.plugins import validation_problems
from workflows.models import Category, CheckResult, OptOut

KINDS_SERVICE = "change_kinds"
LISTED = 20


class IrreversibleSteps(Guardrail[EmptyParams]):
    """Fail a change that has a step its kind declares irreversible, naming the steps."""

    name = "irreversible-steps"
    category = Category.TARGET_STATE
    params_model = EmptyParams
    default_owner = "platform"
    default_timeout = timedelta(seconds=5)
    default_opt_out = OptOut.FORBIDDEN
    description = (
        "every step of the change can be undone, or the platform approved the ones that cannot"
    )

    async def check(self, params: EmptyParams, ctx: CheckContext) -> CheckResult:
        """Ask the change's kind for its steps; fail on any that cannot be undone."""
        change = ctx.change
        kinds: Any = ctx.services.get(KINDS_SERVICE)
        if kinds is None:
            return ctx.error(
                "the worker gave this check no change-kind registry, so it cannot see the steps",
                remedy="run the check on a changeguard worker (services['change_kinds'])",
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

"""Gate activities: resolve the effective policy, and run one guardrail check.

Thin entry points: the logic lives in ``guardrails/``. The effective policy is the platform bundle
the worker holds *at that moment* (:class:`~guardrails.bundle.BundleHolder`) plus the request's
additions, plus the checks the gate builds in (``irreversible-steps`` on a change whose kind
declares a step that cannot be undone: :func:`guardrails.builtin.irreversible.with_builtin_check`).
Business failures (a refused addition, a change no platform rule governs, an unknown
guardrail, bad params, a plug-in breaking its contract) are non-retryable errors, so no retry loop
hammers a mistake that only a person can fix.
"""

from __future__ import annotations

import time
from typing import Any

from pydantic import ValidationError
from temporalio import activity
from temporalio.exceptions import ApplicationError

from guardrails.base import CheckContext, Guardrail, Services, default_registry
from guardrails.builtin import irreversible
from guardrails.bundle import Bundle, BundleHolder
from guardrails.plugins import PluginRegistry
from guardrails.policy import (
    PolicyError,
    PolicyFile,
    effective_hash,
    merge_additions,
    parse_additions,
    resolve_checks,
)
from workflows import errors
from workflows.models import (
    CheckResult,
    CheckStatus,
    ResolvedPolicy,
    ResolvePolicyInput,
    RunCheckInput,
)
from workflows.rollout_models import RolloutPolicy


class CheckActivities:
    """The gate's activities, bound to a guardrail registry, the platform bundle and services.

    Args:
        guardrails: the registry checks are looked up in (default: every entry point).
        bundle: the platform bundle in force (read at every resolution).
        services: worker-wide resources guardrails may use (the Temporal client, the kinds …).
    """

    def __init__(
        self,
        guardrails: PluginRegistry[Guardrail[Any]] | None = None,
        *,
        bundle: BundleHolder,
        services: Services | None = None,
    ) -> None:
        self.guardrails = guardrails if guardrails is not None else default_registry()
        self.bundle = bundle
        self.services = services if services is not None else Services()

    def _effective(self, inp: ResolvePolicyInput) -> tuple[Bundle, PolicyFile, PolicyFile | None]:
        bundle = self.bundle.current()
        try:
            additions = parse_additions(
                inp.policy, self.guardrails, bundle=bundle.policy, origins=bundle.origins
            )
            effective = merge_additions(bundle.policy, additions, origins=bundle.origins)
        except PolicyError as exc:
            raise _refused(exc) from exc
        return bundle, effective, additions

    @activity.defn(name="resolve_policy")
    async def resolve_policy(self, inp: ResolvePolicyInput) -> ResolvedPolicy:
        """Merge the bundle in force with the request's additions; list the checks that apply."""
        bundle, effective, additions = self._effective(inp)
        source = f"bundle {bundle.source}" + (" + request" if additions else "")
        try:
            resolved = resolve_checks(
                effective,
                effective_hash(bundle.hash, additions),
                inp.change,
                self.guardrails,
                categories=inp.categories,
                source=source,
                platform_rules=len(bundle.policy.guardrails),
                unmatched=bundle.policy.unmatched,
            )
            resolved.checks = irreversible.with_builtin_check(
                resolved.checks,
                inp.change,
                self.services.change_kinds,
                categories=inp.categories,
            )
        except PolicyError as exc:
            raise _refused(exc) from exc
        except ValueError as exc:  # a request rule took the built-in check's id
            raise _refused(PolicyError([str(exc)], source="request")) from exc
        resolved.bundle_hash = bundle.hash
        resolved.bundle_warning = self.bundle.warning
        return resolved

    @activity.defn(name="resolve_rollout")
    async def resolve_rollout(self, inp: ResolvePolicyInput) -> RolloutPolicy:
        """The bake's part of the effective policy: signals to observe, responses, the pager."""
        bundle, effective, additions = self._effective(inp)
        return RolloutPolicy(
            signals=effective.signals,
            responses=effective.responses,
            pager=effective.pager,
            page_on_reject=effective.page_on_reject,
            policy_hash=effective_hash(bundle.hash, additions),
        )

    def _guardrail(self, name: str) -> Guardrail[Any]:
        """The registered guardrail; the gate's built-in checks even where no registry has them."""
        if name not in self.guardrails and name == irreversible.IrreversibleSteps.name:
            return irreversible.IrreversibleSteps()
        return self.guardrails.get(name)

    @activity.defn(name="run_check")
    async def run_check(self, inp: RunCheckInput) -> CheckResult:
        """Run one guardrail; its own exceptions propagate (the gate records them as ``error``)."""
        spec = inp.spec
        try:
            guardrail = self._guardrail(spec.guardrail)
        except KeyError as exc:
            raise ApplicationError(
                str(exc.args[0]), type=errors.UNKNOWN_GUARDRAIL, non_retryable=True
            ) from exc
        try:
            params = guardrail.parse_params(spec.params)
        except ValidationError as exc:
            raise ApplicationError(
                f"params of {spec.guardrail} are invalid: {exc}",
                type=errors.INVALID_INPUT,
                non_retryable=True,
            ) from exc
        ctx = CheckContext(
            change=inp.change,
            spec=spec,
            now=inp.now,
            services=self.services,
            probe_only=inp.probe_only,
        )
        started = time.monotonic()
        result = await guardrail.check(params, ctx)
        problems = contract_problems(result, inp)
        if problems:
            raise ApplicationError(
                f"{spec.guardrail} broke the guardrail contract: {'; '.join(problems)}",
                type=errors.CONTRACT_VIOLATION,
                non_retryable=True,
            )
        result.duration_ms = int((time.monotonic() - started) * 1000)
        # Which rule this is comes from the policy, never from the plug-in.
        result.rule, result.source, result.note = (
            spec.rule or spec.guardrail,
            spec.source,
            spec.note,
        )
        return result


def _refused(exc: PolicyError) -> ApplicationError:
    """A refused resolution: one line naming every problem, and the problems as details."""
    return ApplicationError(
        exc.one_line(), exc.problems, type=errors.POLICY_INVALID, non_retryable=True
    )


def contract_problems(result: CheckResult, inp: RunCheckInput) -> list[str]:
    """What a check's result gets wrong against the contract (invariant I5), empty if nothing."""
    problems = []
    if not isinstance(result, CheckResult):
        return [f"check returned {type(result).__name__}, not CheckResult"]
    if result.guardrail != inp.spec.guardrail:
        problems.append(f"result names guardrail {result.guardrail!r}")
    if result.status is not CheckStatus.PASS:
        for field in ("reason", "remedy", "owner"):
            if not getattr(result, field).strip():
                problems.append(f"a {result.status.value} result needs a non-empty {field}")
        if result.status is CheckStatus.WAIT and result.retry_after is None:
            problems.append("a wait result needs retry_after")
    return problems

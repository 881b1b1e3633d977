"""Gate activities: resolve the policy, and run one guardrail check.

Thin entry points: the logic lives in ``guardrails/``. Both turn business failures (a bad policy, an
unknown guardrail, bad params, a plug-in breaking its contract) into non-retryable errors, so no
retry loop hammers a mistake that only a person can fix.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from pydantic import ValidationError
from temporalio import activity
from temporalio.exceptions import ApplicationError

from guardrails.base import CheckContext, Guardrail, default_registry
from guardrails.plugins import PluginRegistry
from guardrails.policy import PolicyError, load_policy, resolve_checks
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
    """The gate's activities, bound to a guardrail registry and shared services.

    Args:
        guardrails: the registry checks are looked up in (default: every entry point).
        services: worker-wide resources guardrails may use, by name (``temporal_client`` …).
        policy_dir: where relative policy paths are read from (default: the working directory).
    """

    def __init__(
        self,
        guardrails: PluginRegistry[Guardrail[Any]] | None = None,
        *,
        services: dict[str, Any] | None = None,
        policy_dir: Path | None = None,
    ) -> None:
        self.guardrails = guardrails if guardrails is not None else default_registry()
        self.services = services or {}
        self.policy_dir = policy_dir

    @activity.defn(name="resolve_policy")
    async def resolve_policy(self, inp: ResolvePolicyInput) -> ResolvedPolicy:
        """Load and validate the policy, and list the checks that apply to this change."""
        try:
            policy, digest = load_policy(inp.policy, base_dir=self.policy_dir)
            resolved = resolve_checks(
                policy, digest, inp.change, self.guardrails, categories=inp.categories
            )
        except PolicyError as exc:
            raise ApplicationError(
                str(exc), exc.problems, type=errors.POLICY_INVALID, non_retryable=True
            ) from exc
        if isinstance(inp.policy, str):
            resolved.source = inp.policy
        return resolved

    @activity.defn(name="resolve_rollout")
    async def resolve_rollout(self, inp: ResolvePolicyInput) -> RolloutPolicy:
        """The bake's part of the policy: signals to observe, responses, the pager."""
        try:
            policy, digest = load_policy(inp.policy, base_dir=self.policy_dir)
        except PolicyError as exc:
            raise ApplicationError(
                str(exc), exc.problems, type=errors.POLICY_INVALID, non_retryable=True
            ) from exc
        return RolloutPolicy(
            signals=policy.signals,
            responses=policy.responses,
            pager=policy.pager,
            page_on_reject=policy.page_on_reject,
            policy_hash=digest,
        )

    @activity.defn(name="run_check")
    async def run_check(self, inp: RunCheckInput) -> CheckResult:
        """Run one guardrail; its own exceptions propagate (the gate records them as ``error``)."""
        spec = inp.spec
        try:
            guardrail = self.guardrails.get(spec.guardrail)
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
        result.duration_ms = int((time.monotonic() - started) * 1000)
        problems = contract_problems(result, inp)
        if problems:
            raise ApplicationError(
                f"{spec.guardrail} broke the guardrail contract: {'; '.join(problems)}",
                type=errors.CONTRACT_VIOLATION,
                non_retryable=True,
            )
        return result


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

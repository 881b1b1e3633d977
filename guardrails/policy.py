"""The policy: which guardrail rules apply to which changes, and how health signals are answered.

Two authors write policy. The **platform** writes the bundle the workers hold
(:class:`PlatformBundle`, loaded by :mod:`guardrails.bundle`); a **request** may only *add* rules,
signals and responses (its ``policy``). :func:`merge_additions` refuses any addition that would
remove, replace, shadow or relax a platform rule, and :func:`resolve_checks` refuses a change that no
platform rule governs (fail closed) unless the bundle says ``unmatched: allow``.

Pure code (no Temporal, no network). Every problem is reported at once, each prefixed by its
location (``guardrails[1].params.timezone: unknown time zone 'Mars/Base'``), so an author fixes a
file in one pass rather than one error per run.

This module loads a policy and resolves the checks of one change. The other concerns live in their
own modules, and every name is re-exported here: the models in :mod:`guardrails.policy_models`,
the error and the rule checks (floor guardrails included) in :mod:`guardrails.policy_rules`, a
request's additions and merging in :mod:`guardrails.additions`.

A rule looks like::

    guardrails:
      - id: business-hours          # the rule id (default: the plug-in name); unique
        use: change-window          # the plug-in
        applies_to: {environments: [prod]}
        params: {timezone: Europe/Berlin, allow: ["Mon-Thu 09:00-16:00"]}
        opt_out: {approvers: [sre-leads], max_duration: 4h}
    responses:
      - {signal: error-rate, state: critical, do: rollback}

*Floor* guardrails (those whose ``default_opt_out`` is ``forbidden``: ``environment-boundary``,
``target-lock``, any plug-in that declares it) may be put in ``mode: shadow`` or given an
``opt_out:`` rule only by the platform bundle, and then only with a ``reason:`` that every report
shows.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any, Literal

from pydantic import ValidationError

from guardrails.additions import additions_id, effective_hash, merge_additions, parse_additions
from guardrails.base import Guardrail
from guardrails.policy_models import (
    ADDITION_FIELDS,
    RULE_ID,
    AppliesTo,
    GuardrailRule,
    IdentityPolicy,
    NonEmpty,
    OidcIssuer,
    OptOutSetting,
    PlatformBundle,
    PolicyFile,
    ResponseRule,
)
from guardrails.policy_rules import (
    GuardrailRegistry,
    Origin,
    PolicyError,
    floor_problems,
    problem_order,
    pydantic_problems,
    rule_problems,
    validate_against,
)
from guardrails.yamlfile import YamlError, read_yaml
from workflows.models import Category, ChangeContext, CheckSpec, OptOut, OptOutRule, ResolvedPolicy

__all__ = [
    "ADDITION_FIELDS",
    "RULE_ID",
    "AppliesTo",
    "GuardrailRegistry",
    "GuardrailRule",
    "IdentityPolicy",
    "NonEmpty",
    "OidcIssuer",
    "OptOutSetting",
    "Origin",
    "PlatformBundle",
    "PolicyError",
    "PolicyFile",
    "ResponseRule",
    "additions_id",
    "effective_hash",
    "floor_problems",
    "load_policy",
    "merge_additions",
    "parse_additions",
    "policy_hash",
    "problem_order",
    "pydantic_problems",
    "resolve_checks",
    "rule_problems",
    "ungoverned",
    "validate_against",
]


def policy_hash(policy: PolicyFile) -> str:
    """Digest the validated policy into 16 hex characters.

    Key order, comments and the spelling of durations (``240m`` vs ``4h``) do not change it; any
    change of meaning does.
    """
    canonical = json.dumps(
        policy.model_dump(mode="json"), sort_keys=True, separators=(",", ":"), ensure_ascii=False
    )
    return hashlib.sha256(canonical.encode()).hexdigest()[:16]


def _read_yaml(path: Path, label: str) -> Any:
    if not path.exists():
        raise PolicyError([f"{label}: no such file ({path})"], source=label)
    try:
        return read_yaml(path, label)
    except YamlError as exc:
        raise PolicyError(exc.problems, source=label) from None


def load_policy(
    source: str | dict[str, Any] | None,
    *,
    base_dir: Path | None = None,
    registry: GuardrailRegistry | None = None,
) -> tuple[PolicyFile, str]:
    """Load and validate a policy, reporting every problem in one error.

    Args:
        source: a YAML file path (relative paths are resolved against ``base_dir``, else the
            current directory), the policy inline as a dict, or ``None`` for the empty policy.
        base_dir: where relative paths are resolved.
        registry: when given, the policy is also checked against it (see
            :func:`validate_against`), and its problems are listed with the shape problems.
            Rule ids are checked for uniqueness either way.

    Returns:
        The policy and its :func:`policy_hash`.

    Raises:
        PolicyError: the file is missing or unreadable, is not YAML (the problem names line and
            column), or does not validate (every problem, each with its location).

    """
    label = "inline"
    raw: Any
    if source is None:
        raw = {}
    elif isinstance(source, str):
        label = source
        path = Path(source).expanduser()
        if not path.is_absolute():
            path = (base_dir or Path.cwd()) / path
        raw = _read_yaml(path, label)
        if raw is None:
            raw = {}  # an empty file is the empty policy
    else:
        raw = source
    if not isinstance(raw, dict):
        raise PolicyError(
            [
                "the policy must be a mapping with 'guardrails' and 'responses', "
                f"not {type(raw).__name__}"
            ],
            source=label,
        )
    problems: list[str] = []
    policy: PolicyFile | None = None
    try:
        policy = PolicyFile.model_validate(raw)
    except ValidationError as exc:
        problems.extend(pydantic_problems(exc))
    rules = raw.get("guardrails")
    if isinstance(rules, list):
        problems.extend(rule_problems(list(enumerate(rules)), registry))
    if problems or policy is None:
        raise PolicyError(sorted(problems, key=problem_order), source=label)
    return policy, policy_hash(policy)


def ungoverned(change: ChangeContext) -> str:
    """The fail-closed reason for a change that no platform rule governs."""
    envs = sorted({t.environment for t in change.targets if t.environment} - {change.environment})
    extra = f" (targets in {', '.join(envs)})" if envs else ""
    return (
        f"no platform policy governs environment {change.environment}{extra}, kind {change.kind}, "
        f"team {change.team or '—'}; ask the platform team to add a rule (or set unmatched: allow)"
    )


def _spec(rule: GuardrailRule, guardrail: Guardrail[Any], origin: Origin) -> CheckSpec:
    if rule.opt_out == "forbidden":
        opt_out, opt_out_rule = OptOut.FORBIDDEN, None
    elif isinstance(rule.opt_out, OptOutRule):
        opt_out, opt_out_rule = OptOut.APPROVABLE, rule.opt_out
    else:
        opt_out, opt_out_rule = guardrail.default_opt_out, None
    return CheckSpec(
        rule=rule.rule_id,
        source=origin,
        note=(rule.reason or "") if origin == "platform" else "",
        guardrail=guardrail.name,
        category=guardrail.category,
        params=dict(rule.params),
        owner=rule.owner or guardrail.default_owner,
        timeout=rule.timeout or guardrail.default_timeout,
        mode=rule.mode,
        opt_out=opt_out,
        opt_out_rule=opt_out_rule,
        dispatch=rule.dispatch,
    )


def resolve_checks(
    policy: PolicyFile,
    policy_hash: str,
    change: ChangeContext,
    registry: GuardrailRegistry,
    categories: list[Category] | None = None,
    *,
    source: str = "inline",
    platform_rules: int | None = None,
    unmatched: Literal["reject", "allow"] = "allow",
) -> ResolvedPolicy:
    """Resolve the checks that apply to one change, in policy order, defaults filled in.

    Args:
        policy: a loaded policy (the effective one: the bundle's rules first).
        policy_hash: its hash, carried into the result (and from there into every report).
        change: the change being judged.
        registry: the guardrails available.
        categories: only checks of these categories (re-checks before a wave); ``None`` for all.
        source: where the policy came from, for the record.
        platform_rules: how many of the leading rules are the platform's (``None``: all); the rest
            are the request's additions.
        unmatched: ``reject`` fails closed when no platform rule's ``applies_to`` matches the
            change (whatever ``categories`` asks for).

    Raises:
        PolicyError: the policy does not validate against the registry (see
            :func:`validate_against`), or no platform rule governs the change and ``unmatched``
            is ``reject``.

    """
    n_platform = len(policy.guardrails) if platform_rules is None else platform_rules
    platform = policy.guardrails[:n_platform]
    problems = rule_problems(list(enumerate(platform)), registry, origin="platform")
    problems += rule_problems(
        list(enumerate(policy.guardrails[n_platform:], n_platform)), registry, origin="request"
    )
    if problems:
        raise PolicyError(problems, source=source)
    if unmatched == "reject" and not any(r.applies_to.matches(change) for r in platform):
        raise PolicyError([ungoverned(change)], source=source, headline="the change is refused")
    wanted = None if categories is None else set(categories)
    checks = []
    for i, rule in enumerate(policy.guardrails):
        guardrail = registry.get(rule.use)
        if wanted is not None and guardrail.category not in wanted:
            continue
        if rule.applies_to.matches(change):
            checks.append(_spec(rule, guardrail, "platform" if i < n_platform else "request"))
    return ResolvedPolicy(policy_hash=policy_hash, checks=checks, source=source)

"""A request's policy: additions only, merged after the platform bundle's rules.

A request may *add* rules, signals and responses (its ``policy``). :func:`parse_additions` and
:func:`merge_additions` refuse any addition that would remove, replace, shadow or relax a platform
rule, or answer a signal the request does not define itself. Pure code.
"""

from __future__ import annotations

import hashlib
import json
from typing import Any

from pydantic import ValidationError

from guardrails.policy_models import ADDITION_FIELDS, GuardrailRule, PlatformBundle, PolicyFile
from guardrails.policy_rules import (
    GuardrailRegistry,
    PolicyError,
    problem_order,
    pydantic_problems,
    rule_problems,
)

__all__ = ["additions_id", "effective_hash", "merge_additions", "parse_additions"]


def parse_additions(
    raw: Any,
    registry: GuardrailRegistry | None = None,
    *,
    bundle: PlatformBundle | None = None,
    origins: dict[str, str] | None = None,
) -> PolicyFile | None:
    """Validate a request's ``policy``: additions only (rules, signals, responses).

    Every problem is located under ``policy.`` (``policy.guardrails[0].mode: …``) and names the fix.

    Raises:
        PolicyError: the additions do not validate, set something only the platform may set,
            (with ``registry``) name unknown guardrails, bad params or relax a floor guardrail, or
            (with ``bundle``) collide with the platform's rules or signals (see
            :func:`merge_additions`); every problem at once.

    """
    if raw is None:
        return None
    if not isinstance(raw, dict):
        raise PolicyError(
            [
                f"policy: must be a mapping of additions ({', '.join(ADDITION_FIELDS)}), "
                f"not {type(raw).__name__}"
            ],
            source="request",
            headline="the request's policy is refused",
        )
    problems = [
        f"policy.{key}: a request cannot set {key!r}; only the platform bundle does (remove it, "
        f"or ask the platform team); a request may add {', '.join(ADDITION_FIELDS)}"
        for key in raw
        if key not in ADDITION_FIELDS
    ]
    kept = {k: v for k, v in raw.items() if k in ADDITION_FIELDS}
    additions: PolicyFile | None = None
    try:
        additions = PolicyFile.model_validate(kept)
    except ValidationError as exc:
        problems.extend(f"policy.{p}" for p in pydantic_problems(exc))
    if registry is not None and additions is not None:
        problems.extend(
            f"policy.{p}"
            for p in rule_problems(
                list(enumerate(additions.guardrails)), registry, origin="request"
            )
        )
    problems.sort(key=problem_order)  # stable: a location's problems keep their order
    if bundle is not None and additions is not None:
        # First: what touches the platform's own rules is the heart of the refusal.
        problems[:0] = _collisions(bundle, additions, origins or {})
    if problems or additions is None:
        raise PolicyError(problems, source="request", headline="the request's policy is refused")
    return additions


def merge_additions(
    bundle: PlatformBundle, additions: PolicyFile | None, *, origins: dict[str, str] | None = None
) -> PolicyFile:
    """The effective policy: the bundle's rules, then the request's additions.

    Args:
        bundle: the platform's bundle.
        additions: the request's validated additions (:func:`parse_additions`), or ``None``.
        origins: where each platform rule id is written (``platform/10-prod.yaml:4``), for messages.

    Raises:
        PolicyError: an addition reuses a platform rule id or signal name, or answers a signal it
            does not define itself (the platform's, or ``*``).

    """
    effective = PolicyFile(
        guardrails=list(bundle.guardrails),
        responses=list(bundle.responses),
        signals=list(bundle.signals),
        pager=bundle.pager,
        page_on_reject=bundle.page_on_reject,
    )
    if additions is None:
        return effective
    problems = _collisions(bundle, additions, origins or {})
    if problems:
        raise PolicyError(problems, source="request", headline="the request's policy is refused")
    effective.guardrails += additions.guardrails
    effective.signals += additions.signals
    effective.responses += additions.responses
    return effective


def _collisions(
    bundle: PlatformBundle, additions: PolicyFile, origins: dict[str, str]
) -> list[str]:
    """Additions that would replace a platform rule or signal, or answer what is not theirs."""
    problems: list[str] = []
    platform_ids = {r.rule_id for r in bundle.guardrails}
    for i, rule in enumerate(additions.guardrails):
        if rule.rule_id in platform_ids:
            at = f" ({origins[rule.rule_id]})" if rule.rule_id in origins else ""
            field = "id" if rule.id is not None else "use"
            problems.append(
                f"policy.guardrails[{i}].{field}: {rule.rule_id!r} is a platform rule{at}; a "
                "request can only add rules, never replace one: give yours another id "
                f"(id: {additions_id(rule)})"
            )
    platform_signals = {s.name for s in bundle.signals} | {
        r.signal for r in bundle.responses if r.signal != "*"
    }
    own_signals = {s.name for s in additions.signals}
    for i, sig in enumerate(additions.signals):
        if sig.name in platform_signals:
            problems.append(
                f"policy.signals[{i}].name: {sig.name!r} is a platform signal; a request cannot "
                "redefine it: give yours another name"
            )
    for i, resp in enumerate(additions.responses):
        if resp.signal == "*":
            problems.append(
                f"policy.responses[{i}].signal: a request may answer only the signals it defines "
                "itself, not '*' (which would answer the platform's too): name your signal"
            )
        elif resp.signal in platform_signals:
            problems.append(
                f"policy.responses[{i}].signal: {resp.signal!r} is answered by the platform; a "
                "request cannot change how the platform's signals are answered"
            )
        elif resp.signal not in own_signals:
            problems.append(
                f"policy.responses[{i}].signal: {resp.signal!r} is not a signal of this request; "
                "define it under policy.signals first"
            )
    return problems


def additions_id(rule: GuardrailRule) -> str:
    """A suggestion for a request rule's own id."""
    return f"{rule.rule_id}-2"


def effective_hash(bundle_hash: str, additions: PolicyFile | None) -> str:
    """The effective policy's hash: the bundle's own when the request adds nothing."""
    if additions is None or additions == PolicyFile():
        return bundle_hash
    canonical = json.dumps(
        {"bundle": bundle_hash, "request": additions.model_dump(mode="json")},
        sort_keys=True,
        separators=(",", ":"),
    )
    return hashlib.sha256(canonical.encode()).hexdigest()[:16]

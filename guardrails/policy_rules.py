"""What makes a policy wrong: the policy error, how problems are phrased, and the rule checks.

Every problem is reported at once, each prefixed by its location
(``guardrails[1].params.timezone: unknown time zone 'Mars/Base'``), so an author fixes a file in
one pass rather than one error per run. :func:`rule_problems` checks rules against the registered
guardrails, against each other (rule ids used twice) and against the *floor*
(:func:`floor_problems`): a guardrail whose ``default_opt_out`` is ``forbidden`` may be shadowed
or opened to approval only by the platform bundle, and then only with a ``reason:``.
"""

from __future__ import annotations

import re
from datetime import timedelta
from typing import Any, Literal

from pydantic import ValidationError

from guardrails.base import Guardrail, params_errors
from guardrails.plugins import PluginRegistry
from guardrails.policy_models import GuardrailRule, PolicyFile
from guardrails.problems import ProblemsError
from workflows.models import LOCAL_CHECK_LONGEST, Mode, OptOut, OptOutRule, format_duration
from workflows.problems import problems

__all__ = [
    "GuardrailRegistry",
    "Origin",
    "PolicyError",
    "dispatch_problems",
    "floor_problems",
    "problem_order",
    "pydantic_problems",
    "rule_problems",
    "validate_against",
]


class PolicyError(ProblemsError):
    """A policy file is missing, unreadable or invalid; ``problems`` lists every problem found.

    Each problem starts with its location in the policy (``guardrails[0].use: ...``), or with the
    file name when the file itself is the problem.
    """

    HEADLINE = "policy {source} is invalid ({count})"

    def __init__(
        self, problems: list[str], *, source: str = "inline", headline: str | None = None
    ) -> None:
        super().__init__(problems, source=source, headline=headline)


def _location(loc: tuple[int | str, ...]) -> str:
    out = ""
    for i, part in enumerate(loc):
        if i > 0 and loc[i - 1] == "opt_out" and part in ("rule", "forbidden"):
            continue  # the tag of the opt_out union, not a key the author wrote
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += f".{part}" if out else str(part)
    return out


def pydantic_problems(exc: ValidationError) -> list[str]:
    """One ``path: message`` line per pydantic error, in the policy's own spelling of paths."""
    return problems(exc, where=_location)


def problem_order(problem: str) -> list[tuple[int, int | str]]:
    """Sort key: problems in file order (``guardrails[2]`` before ``guardrails[10]``)."""
    where = problem.split(": ", 1)[0]
    return [(0, int(t)) if t.isdigit() else (1, t) for t in re.split(r"[\[\].]+", where) if t]


GuardrailRegistry = PluginRegistry[Guardrail[Any]]

Origin = Literal["platform", "request"]


def floor_problems(
    where: str, rule: GuardrailRule, guardrail: Guardrail[Any], origin: Origin
) -> list[str]:
    """Problems of a rule that relaxes a floor guardrail (one forbidden to opt out of by default).

    The platform may shadow it or open it to approval, and must then say why (``reason:``); a
    request may add one only enforced and forbidden.
    """
    if guardrail.default_opt_out is not OptOut.FORBIDDEN:
        return []
    if rule.mode is Mode.SHADOW and not getattr(guardrail, "shadowable", True):
        return [
            f"{where}.mode: {guardrail.name} cannot run in shadow mode (it would let what it "
            "guards happen unasked); to let some changes through, give it an opt_out rule "
            "(approvers) with a reason"
        ]
    relaxed = []
    if rule.mode is Mode.SHADOW:
        relaxed.append("mode: shadow")
    if isinstance(rule.opt_out, OptOutRule):
        relaxed.append("an opt_out rule")
    if not relaxed:
        return []
    how = " and ".join(relaxed)
    if origin == "request":
        return [
            f"{where}: {guardrail.name} is a floor guardrail (never approvable by default); a "
            f"request may add it only enforced with opt_out: forbidden, not with {how}: remove "
            "mode and opt_out (only the platform bundle may relax it)"
        ]
    if rule.reason is None:
        return [
            f"{where}: rule {rule.rule_id!r} relaxes the floor guardrail {guardrail.name} "
            f"({how}); say why with reason: '…' (every report shows it)"
        ]
    return []


def dispatch_problems(
    where: str, rule: GuardrailRule, guardrail: Guardrail[Any], origin: Origin
) -> list[str]:
    """Problems of a rule's ``dispatch``: only the platform sets it, and a local check is short.

    A local check runs inside the worker that runs the gate, holding that workflow task's worker
    busy and outside the task queue's priorities, so it must answer within
    :data:`LOCAL_CHECK_LONGEST`.
    """
    if rule.dispatch == "activity":
        return []
    if origin == "request":
        return [
            f"{where}.dispatch: only the platform bundle decides how a check runs (local checks "
            "run inside the worker that runs the gate); remove it"
        ]
    timeout = rule.timeout or guardrail.default_timeout
    if timeout <= LOCAL_CHECK_LONGEST:
        return []
    whose = "its timeout" if rule.timeout else f"the default timeout of {guardrail.name}"
    longest = format_duration(LOCAL_CHECK_LONGEST)
    return [
        f"{where}.dispatch: a local check must answer within {longest}, {whose} is "
        f"{_seconds(timeout)}: set timeout: {longest} or less, or remove dispatch: local"
    ]


def _seconds(value: timedelta) -> str:
    """``1m``, ``30s``; a fraction of a second as ``10.5s`` (never rounded into the limit)."""
    whole = value.total_seconds()
    return format_duration(value) if whole == int(whole) else f"{whole:g}s"


def rule_problems(
    rules: list[tuple[int, Any]],
    registry: GuardrailRegistry | None,
    *,
    origin: Origin = "platform",
) -> list[str]:
    """Problems of ``(index, rule)`` pairs against the registry, the floor and each other.

    A rule may be a validated :class:`GuardrailRule` or the raw mapping (then the floor is not
    judged: the shape problems come from the model). Listed: rule ids used twice (both
    locations), and with a registry unknown guardrails (with the known names), params problems
    and floor relaxations.
    """
    problems: list[str] = []
    first_id: dict[str, int] = {}
    for i, rule in rules:
        where = f"guardrails[{i}]"
        use: Any
        rule_id: Any
        if isinstance(rule, GuardrailRule):
            use, params, rule_id = rule.use, rule.params, rule.rule_id
        elif isinstance(rule, dict):
            use, params = rule.get("use"), rule.get("params", {})
            rid = rule.get("id")
            rule_id = rid if isinstance(rid, str) and rid else use
        else:
            continue
        if isinstance(rule_id, str) and rule_id:
            j = first_id.setdefault(rule_id, i)
            if j != i:
                field = "id" if (rule_id != use) else "use"
                problems.append(
                    f"{where}.{field}: rule id {rule_id!r} is already used by guardrails[{j}]; "
                    "give each rule its own id (id: …), e.g. to use one guardrail twice"
                )
        if not isinstance(use, str) or not use or registry is None:
            continue  # a shape problem, reported by the model
        try:
            guardrail = registry.get(use)
        except KeyError as exc:
            problems.append(f"{where}.use: {exc.args[0]}")
            continue
        if isinstance(params, dict):
            problems.extend(f"{where}.{p}" for p in params_errors(guardrail, params))
        if isinstance(rule, GuardrailRule):
            problems.extend(floor_problems(where, rule, guardrail, origin))
            problems.extend(dispatch_problems(where, rule, guardrail, origin))
            if origin == "request" and rule.reason is not None:
                problems.append(
                    f"{where}.reason: only the platform bundle gives reasons (for relaxing a "
                    "floor rule); remove it"
                )
    return problems


def validate_against(
    policy: PolicyFile,
    registry: GuardrailRegistry,
    *,
    source: str = "inline",
    origin: Origin = "platform",
) -> None:
    """Check a policy against the registered guardrails (see :func:`rule_problems`).

    Raises:
        PolicyError: listing every problem.

    """
    problems = rule_problems(list(enumerate(policy.guardrails)), registry, origin=origin)
    if problems:
        raise PolicyError(problems, source=source)

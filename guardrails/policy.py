"""The policy file: which guardrails apply to which changes, and how health signals are answered.

Pure code (no Temporal, no network): the ``resolve_policy`` activity calls :func:`load_policy` and
:func:`resolve_checks`; the CLI calls them to validate a policy before anything starts. Every
problem is reported at once, each prefixed by its location in the file
(``guardrails[1].params.timezone: unknown time zone 'Mars/Base'``), so a policy author fixes a file
in one pass rather than one error per run.

A policy looks like::

    guardrails:
      - use: change-window
        applies_to: {environments: [prod]}
        params: {timezone: Europe/Berlin, allow: ["Mon-Thu 09:00-16:00"]}
        opt_out: {approvers: [sre-leads], max_duration: 4h}
    responses:
      - {signal: error-rate, state: critical, do: rollback}
"""

from __future__ import annotations

import hashlib
import json
import re
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import Discriminator, Field, Tag, ValidationError, field_validator, model_validator
from pydantic_core import ErrorDetails

from guardrails.base import Guardrail, params_errors
from guardrails.plugins import PluginRegistry
from workflows.models import (
    Category,
    ChangeContext,
    CheckSpec,
    Duration,
    Mode,
    OptOut,
    OptOutRule,
    ResolvedPolicy,
    Strict,
)
from workflows.rollout_models import ResponseRule, SignalSpec

__all__ = [
    "AppliesTo",
    "GuardrailRule",
    "PolicyError",
    "PolicyFile",
    "ResponseRule",
    "load_policy",
    "policy_hash",
    "resolve_checks",
    "validate_against",
]


class PolicyError(Exception):
    """A policy file is missing, unreadable or invalid; ``problems`` lists every problem found.

    Each problem starts with its location in the policy (``guardrails[0].use: ...``), or with the
    file name when the file itself is the problem.
    """

    def __init__(self, problems: list[str], *, source: str = "inline") -> None:
        self.problems = list(problems)
        self.source = source
        count = f"{len(self.problems)} problem" + ("s" if len(self.problems) != 1 else "")
        super().__init__(
            f"policy {source} is invalid ({count}):\n" + "\n".join(f"  - {p}" for p in problems)
        )


# --------------------------------------------------------------------------------------------------
# The model
# --------------------------------------------------------------------------------------------------


def _opt_out_kind(value: Any) -> str | None:
    if value == "forbidden":
        return "forbidden"
    if isinstance(value, dict | OptOutRule):
        return "rule"
    return None


OptOutSetting = Annotated[
    Annotated[Literal["forbidden"], Tag("forbidden")] | Annotated[OptOutRule, Tag("rule")],
    Discriminator(
        _opt_out_kind,
        custom_error_type="opt_out",
        custom_error_message=(
            "must be 'forbidden' or a rule such as {approvers: [sre-leads], max_duration: 4h}"
        ),
    ),
]
"""``forbidden`` or an :class:`OptOutRule`; a tagged union so errors name one shape, not both."""

NonEmpty = Annotated[str, Field(min_length=1)]


class AppliesTo(Strict):
    """Which changes a guardrail rule applies to; every selector given must match.

    An omitted selector matches everything. ``environments`` matches when the change's environment
    or any target's own environment is listed (a change that touches one prod target is judged as
    a prod change). ``labels`` matches when any single target carries all of the given labels.
    """

    environments: list[NonEmpty] | None = Field(default=None, min_length=1)
    kinds: list[NonEmpty] | None = Field(default=None, min_length=1)
    teams: list[NonEmpty] | None = Field(default=None, min_length=1)
    labels: dict[str, str] | None = Field(default=None, min_length=1)

    def matches(self, change: ChangeContext) -> bool:
        """Whether the change is in scope of this selector."""
        if self.environments is not None:
            envs = {change.environment} | {t.environment for t in change.targets if t.environment}
            if envs.isdisjoint(self.environments):
                return False
        if self.kinds is not None and change.kind not in self.kinds:
            return False
        if self.teams is not None and change.team not in self.teams:
            return False
        if self.labels is not None:
            wanted = self.labels.items()
            if not any(wanted <= t.labels.items() for t in change.targets):
                return False
        return True


class GuardrailRule(Strict):
    """One guardrail in a policy: which plug-in, where it applies, and its terms.

    ``owner`` and ``timeout`` default to the guardrail's own defaults. ``opt_out`` is
    ``"forbidden"``, a rule naming who may approve a failure, or omitted: then the guardrail's
    ``default_opt_out`` applies. A check that is approvable by default but has no rule is approvable
    by nobody until the policy names approvers (its spec carries ``opt_out_rule=None``).
    """

    use: NonEmpty = Field(description="the guardrail's registered name, e.g. change-window")
    applies_to: AppliesTo = Field(default_factory=AppliesTo)
    owner: NonEmpty | None = None
    timeout: Duration | None = None
    mode: Mode = Mode.ENFORCE
    params: dict[str, Any] = Field(default_factory=dict)
    opt_out: OptOutSetting | None = None

    @field_validator("timeout")
    @classmethod
    def _positive(cls, v: Any) -> Any:
        if v is not None and v.total_seconds() <= 0:
            raise ValueError("timeout must be positive, e.g. '10s'")
        return v


class PolicyFile(Strict):
    """A whole policy: guardrail rules in evaluation order, and the bake's response rules."""

    guardrails: list[GuardrailRule] = Field(default_factory=list)
    responses: list[ResponseRule] = Field(default_factory=list)
    signals: list[SignalSpec] = Field(
        default_factory=list, description="health signals observed while each wave bakes"
    )
    pager: str = Field(default="log", min_length=1, description="the pager pause_and_page uses")
    page_on_reject: bool = Field(
        default=False, description="page the team when a change is rejected at its deadline"
    )

    @model_validator(mode="after")
    def _responses_unambiguous(self) -> PolicyFile:
        seen: dict[tuple[str, str], int] = {}
        clashes = []
        for i, r in enumerate(self.responses):
            j = seen.setdefault((r.signal, r.state), i)
            if j != i:
                clashes.append(
                    f"responses[{i}]: signal {r.signal!r} in state {r.state!r} "
                    f"is already answered by responses[{j}]"
                )
        if clashes:
            raise ValueError("; ".join(clashes))
        return self


# --------------------------------------------------------------------------------------------------
# Loading
# --------------------------------------------------------------------------------------------------


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


def _message(err: ErrorDetails) -> str:
    ctx = err.get("ctx") or {}
    if err["type"] == "value_error" and "error" in ctx:
        return str(ctx["error"])  # our own message, without pydantic's "Value error, " prefix
    if err["type"] == "extra_forbidden":
        return "unknown field"
    return err["msg"]


def _pydantic_problems(exc: ValidationError) -> list[str]:
    problems = []
    for err in exc.errors():
        where = _location(err["loc"])
        problems.append(f"{where}: {_message(err)}" if where else _message(err))
    return problems


def _problem_order(problem: str) -> list[tuple[int, int | str]]:
    """Sort key: problems in file order (``guardrails[2]`` before ``guardrails[10]``)."""
    where = problem.split(": ", 1)[0]
    return [(0, int(t)) if t.isdigit() else (1, t) for t in re.split(r"[\[\].]+", where) if t]


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
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise PolicyError([f"{label}: no such file ({path})"], source=label) from None
    except (OSError, UnicodeDecodeError) as exc:
        raise PolicyError([f"{label}: cannot read: {exc}"], source=label) from None
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        problem = getattr(exc, "problem", None) or str(exc)
        where = f"{label}:{mark.line + 1}:{mark.column + 1}" if mark is not None else label
        raise PolicyError([f"{where}: invalid YAML: {problem}"], source=label) from None


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
        problems.extend(_pydantic_problems(exc))
    if registry is not None:
        rules = raw.get("guardrails")
        if isinstance(rules, list):
            problems.extend(
                _registry_problems(
                    [
                        (i, r.get("use"), r.get("params", {}))
                        for i, r in enumerate(rules)
                        if isinstance(r, dict)
                    ],
                    registry,
                )
            )
    if problems or policy is None:
        raise PolicyError(sorted(problems, key=_problem_order), source=label)
    return policy, policy_hash(policy)


# --------------------------------------------------------------------------------------------------
# Validation against the registry, and resolution for one change
# --------------------------------------------------------------------------------------------------

GuardrailRegistry = PluginRegistry[Guardrail[Any]]


def _registry_problems(rules: list[tuple[int, Any, Any]], registry: GuardrailRegistry) -> list[str]:
    """Problems of ``(index, use, params)`` triples against the registry; raw or validated."""
    problems: list[str] = []
    first_use: dict[str, int] = {}
    for i, use, params in rules:
        if not isinstance(use, str) or not use:
            continue  # a shape problem, reported by the model
        where = f"guardrails[{i}]"
        j = first_use.setdefault(use, i)
        if j != i:
            problems.append(
                f"{where}.use: {use!r} is already used by guardrails[{j}]; "
                "each guardrail may appear once per policy"
            )
        try:
            guardrail = registry.get(use)
        except KeyError as exc:
            problems.append(f"{where}.use: {exc.args[0]}")
            continue
        if isinstance(params, dict):
            problems.extend(f"{where}.{p}" for p in params_errors(guardrail, params))
    return problems


def validate_against(
    policy: PolicyFile, registry: GuardrailRegistry, *, source: str = "inline"
) -> None:
    """Check a policy against the registered guardrails.

    Raises:
        PolicyError: listing every unknown guardrail (with the known names), every params problem
            and every guardrail used twice (results must stay distinguishable by name).

    """
    rules = [(i, r.use, r.params) for i, r in enumerate(policy.guardrails)]
    problems = _registry_problems(rules, registry)
    if problems:
        raise PolicyError(problems, source=source)


def _spec(rule: GuardrailRule, guardrail: Guardrail[Any]) -> CheckSpec:
    if rule.opt_out == "forbidden":
        opt_out, opt_out_rule = OptOut.FORBIDDEN, None
    elif isinstance(rule.opt_out, OptOutRule):
        opt_out, opt_out_rule = OptOut.APPROVABLE, rule.opt_out
    else:
        opt_out, opt_out_rule = guardrail.default_opt_out, None
    return CheckSpec(
        guardrail=guardrail.name,
        category=guardrail.category,
        params=dict(rule.params),
        owner=rule.owner or guardrail.default_owner,
        timeout=rule.timeout or guardrail.default_timeout,
        mode=rule.mode,
        opt_out=opt_out,
        opt_out_rule=opt_out_rule,
    )


def resolve_checks(
    policy: PolicyFile,
    policy_hash: str,
    change: ChangeContext,
    registry: GuardrailRegistry,
    categories: list[Category] | None = None,
    *,
    source: str = "inline",
) -> ResolvedPolicy:
    """Resolve the checks that apply to one change, in policy order, defaults filled in.

    Args:
        policy: a loaded policy.
        policy_hash: its hash, carried into the result (and from there into every report).
        change: the change being judged.
        registry: the guardrails available.
        categories: only checks of these categories (re-checks before a wave); ``None`` for all.
        source: where the policy came from (a path or ``inline``), for the record.

    Raises:
        PolicyError: the policy does not validate against the registry (see
            :func:`validate_against`).

    """
    validate_against(policy, registry, source=source)
    wanted = None if categories is None else set(categories)
    checks = []
    for rule in policy.guardrails:
        guardrail = registry.get(rule.use)
        if wanted is not None and guardrail.category not in wanted:
            continue
        if rule.applies_to.matches(change):
            checks.append(_spec(rule, guardrail))
    return ResolvedPolicy(policy_hash=policy_hash, checks=checks, source=source)

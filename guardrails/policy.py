"""The policy: which guardrail rules apply to which changes, and how health signals are answered.

Two authors write policy. The **platform** writes the bundle the workers hold
(:class:`PlatformBundle`, loaded by :mod:`guardrails.bundle`); a **request** may only *add* rules,
signals and responses (its ``policy``). :func:`merge_additions` refuses any addition that would
remove, replace, shadow or relax a platform rule, and :func:`resolve_checks` refuses a change that no
platform rule governs (fail closed) unless the bundle says ``unmatched: allow``.

Pure code (no Temporal, no network). Every problem is reported at once, each prefixed by its
location (``guardrails[1].params.timezone: unknown time zone 'Mars/Base'``), so an author fixes a
file in one pass rather than one error per run.

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
import re
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import Discriminator, Field, Tag, ValidationError, field_validator, model_validator
from pydantic_core import ErrorDetails

from guardrails.base import Guardrail, params_errors
from guardrails.plugins import PluginRegistry
from guardrails.problems import ProblemsError, count
from guardrails.yamlfile import YamlError, read_yaml
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
    "ADDITION_FIELDS",
    "AppliesTo",
    "GuardrailRule",
    "IdentityPolicy",
    "PlatformBundle",
    "PolicyError",
    "PolicyFile",
    "ResponseRule",
    "effective_hash",
    "floor_problems",
    "load_policy",
    "merge_additions",
    "parse_additions",
    "policy_hash",
    "resolve_checks",
    "rule_problems",
    "ungoverned",
    "validate_against",
]


class PolicyError(ProblemsError):
    """A policy file is missing, unreadable or invalid; ``problems`` lists every problem found.

    Each problem starts with its location in the policy (``guardrails[0].use: ...``), or with the
    file name when the file itself is the problem.
    """

    def __init__(
        self, problems: list[str], *, source: str = "inline", headline: str | None = None
    ) -> None:
        super().__init__(
            problems,
            source=source,
            headline=headline or f"policy {source} is invalid ({count(len(problems))})",
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
RULE_ID = r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$"
"""A rule id: 1-64 letters, digits, '.', '_' or '-' (it names activities and approvals)."""


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

    id: str | None = Field(
        default=None,
        pattern=RULE_ID,
        description="the rule id, unique in the effective policy (default: the plug-in name)",
    )
    use: NonEmpty = Field(description="the guardrail's registered name, e.g. change-window")
    applies_to: AppliesTo = Field(default_factory=AppliesTo)
    owner: NonEmpty | None = None
    timeout: Duration | None = None
    mode: Mode = Mode.ENFORCE
    params: dict[str, Any] = Field(default_factory=dict)
    opt_out: OptOutSetting | None = None
    reason: str | None = Field(
        default=None,
        min_length=1,
        max_length=500,
        description="why the platform relaxes a floor guardrail (shadow or an opt_out rule)",
    )

    @property
    def rule_id(self) -> str:
        """The rule's id: ``id`` when given, else the plug-in name."""
        return self.id or self.use

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


class OidcIssuer(Strict):
    """An identity provider whose ID tokens may sign: its ``iss`` and its JWKS (file or URL)."""

    issuer: str = Field(min_length=1, max_length=500)
    jwks: str = Field(min_length=1, max_length=2000, description="a JWKS file path or URL")


class IdentityPolicy(Strict):
    """Where a signature is required, and which OIDC issuers are trusted (docs/approvals.md)."""

    approvals: Literal["optional", "required"] = "optional"
    operator_actions: Literal["optional", "required"] = "optional"
    requests: Literal["optional", "required"] = "optional"
    oidc: list[OidcIssuer] = Field(
        default_factory=list,
        exclude_if=lambda v: not v,  # bundles without issuers keep their hashes
        description="trusted ID-token issuers",
    )


class PlatformBundle(PolicyFile):
    """The platform's policy bundle: a policy plus the settings only the platform may make."""

    unmatched: Literal["reject", "allow"] = Field(
        default="reject",
        description="what happens to a change no platform rule governs; `allow` must be explicit",
    )
    identity: IdentityPolicy = Field(default_factory=IdentityPolicy)


ADDITION_FIELDS = ("guardrails", "signals", "responses")
"""What a request's ``policy`` may hold: additions only."""


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
        problems.extend(_pydantic_problems(exc))
    rules = raw.get("guardrails")
    if isinstance(rules, list):
        problems.extend(rule_problems(list(enumerate(rules)), registry))
    if problems or policy is None:
        raise PolicyError(sorted(problems, key=_problem_order), source=label)
    return policy, policy_hash(policy)


# --------------------------------------------------------------------------------------------------
# Validation against the registry, and resolution for one change
# --------------------------------------------------------------------------------------------------

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
        problems.extend(f"policy.{p}" for p in _pydantic_problems(exc))
    if registry is not None and additions is not None:
        problems.extend(
            f"policy.{p}"
            for p in rule_problems(
                list(enumerate(additions.guardrails)), registry, origin="request"
            )
        )
    problems.sort(key=_problem_order)  # stable: a location's problems keep their order
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

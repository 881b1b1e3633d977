"""The policy: parsing, registry checks, additions, the floor, rule ids, fail-closed resolution."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest

from guardrails.base import CheckContext, EmptyParams, Guardrail, new_registry
from guardrails.builtin.change_window import ChangeWindow
from guardrails.builtin.http_health import HttpHealth
from guardrails.plugins import PluginRegistry
from guardrails.policy import (
    AppliesTo,
    PlatformBundle,
    PolicyError,
    PolicyFile,
    ResponseRule,
    effective_hash,
    load_policy,
    merge_additions,
    parse_additions,
    policy_hash,
    resolve_checks,
    validate_against,
)
from workflows.models import (
    Category,
    ChangeContext,
    CheckResult,
    CheckSpec,
    Mode,
    OptOut,
    OptOutRule,
    ResolvedPolicy,
    Target,
)

DESIGN_EXAMPLE = """\
guardrails:
  - use: change-window            # plug-in name
    applies_to: {environments: [prod]}
    owner: release-eng
    params: {timezone: Europe/Berlin, allow: ["Mon-Thu 09:00-16:00"],
             freeze: ["2026-12-20/2027-01-04"]}
    opt_out: {approvers: [sre-leads], distinct_from_requester: true, max_duration: 4h}
  - use: environment-boundary
    opt_out: forbidden            # crossing environments is never approvable
  - use: http-health
    timeout: 20s
    mode: shadow
    params: {url: "http://127.0.0.1:8800/healthz"}
responses:
  - {signal: error-rate, state: critical, do: rollback}
  - {signal: error-rate, state: degraded, do: pause_and_page, timeout: 30m, then: rollback}
  - {signal: "*", state: insufficient_data, do: wait, max: 10m, then: pause_and_page}
"""

CHANGE_WINDOW_PARAMS = {
    "timezone": "Europe/Berlin",
    "allow": ["Mon-Thu 09:00-16:00"],
    "freeze": ["2026-12-20/2027-01-04"],
}


class EnvironmentBoundary(Guardrail[EmptyParams]):
    """A stand-in for the environment-boundary guardrail: never approvable by default."""

    name = "environment-boundary"
    category = Category.TARGET_STATE
    default_owner = "platform"
    default_opt_out = OptOut.FORBIDDEN

    async def check(self, params: EmptyParams, ctx: CheckContext) -> CheckResult:
        return ctx.passed()


@pytest.fixture
def registry() -> PluginRegistry[Guardrail[Any]]:
    reg = new_registry()
    for cls in (ChangeWindow, HttpHealth, EnvironmentBoundary):
        reg.register(cls)
    return reg


def change(**overrides: Any) -> ChangeContext:
    fields: dict[str, Any] = {
        "change_id": "chg-1",
        "kind": "http-deploy",
        "environment": "prod",
        "team": "payments",
        "requester": "alice",
        "targets": [Target(id="web-1", labels={"tier": "web", "region": "eu"})],
    }
    fields.update(overrides)
    return ChangeContext(**fields)


def problems_of(source: Any, **kwargs: Any) -> list[str]:
    with pytest.raises(PolicyError) as caught:
        load_policy(source, **kwargs)
    return caught.value.problems


def test_design_example_resolves(tmp_path: Path, registry: PluginRegistry[Guardrail[Any]]) -> None:
    """The docs/design.md example loads from a file and resolves with every default filled in."""
    (tmp_path / "prod.yaml").write_text(DESIGN_EXAMPLE)
    policy, digest = load_policy("prod.yaml", base_dir=tmp_path, registry=registry)
    assert policy.responses == [
        ResponseRule(signal="error-rate", state="critical", do="rollback"),
        ResponseRule(
            signal="error-rate",
            state="degraded",
            do="pause_and_page",
            timeout=timedelta(minutes=30),
            then="rollback",
        ),
        ResponseRule(
            signal="*",
            state="insufficient_data",
            do="wait",
            max=timedelta(minutes=10),
            then="pause_and_page",
        ),
    ]
    resolved = resolve_checks(policy, digest, change(), registry, source="prod.yaml")
    assert resolved == ResolvedPolicy(
        policy_hash=digest,
        source="prod.yaml",
        checks=[
            CheckSpec(
                rule="change-window",
                guardrail="change-window",
                category=Category.TIMING,
                params=CHANGE_WINDOW_PARAMS,
                owner="release-eng",
                timeout=timedelta(seconds=10),
                opt_out=OptOut.APPROVABLE,
                opt_out_rule=OptOutRule(approvers=["sre-leads"], max_duration=timedelta(hours=4)),
            ),
            CheckSpec(
                rule="environment-boundary",
                guardrail="environment-boundary",
                category=Category.TARGET_STATE,
                owner="platform",
                timeout=timedelta(seconds=30),
                opt_out=OptOut.FORBIDDEN,
            ),
            CheckSpec(
                rule="http-health",
                guardrail="http-health",
                category=Category.HEALTH,
                params={"url": "http://127.0.0.1:8800/healthz"},
                owner="service-owners",
                timeout=timedelta(seconds=20),
                mode=Mode.SHADOW,
                opt_out=OptOut.APPROVABLE,
                opt_out_rule=None,
            ),
        ],
    )


def test_many_mistakes_are_reported_at_once(registry: PluginRegistry[Guardrail[Any]]) -> None:
    """Unknown guardrail, bad params, bad duration, unknown field and a bare wait: one error."""
    source = {
        "guardrails": [
            {"use": "chnage-window"},
            {"use": "change-window", "params": {"timezone": "Mars/Base"}, "timeout": "10 parsecs"},
            {"use": "http-health", "params": {"url": "http://x/"}, "ownr": "sre"},
        ],
        "responses": [{"signal": "error-rate", "state": "degraded", "do": "wait"}],
    }
    with pytest.raises(PolicyError) as caught:
        load_policy(source, registry=registry)
    assert caught.value.problems == [
        "guardrails[0].use: no guardrail named 'chnage-window' is registered "
        "(known: change-window, environment-boundary, http-health)",
        "guardrails[1].params.timezone: unknown time zone 'Mars/Base'; "
        "use an IANA name such as 'Europe/Berlin' or 'UTC'",
        "guardrails[1].timeout: '10 parsecs' is not a duration; "
        "use forms such as '30s', '10m', '4h' or '1h30m'",
        "guardrails[2].ownr: unknown field",
        "responses[0]: 'wait' needs 'max', how long to wait at most (e.g. max: 10m)",
    ]
    assert str(caught.value).startswith("policy inline is invalid (5 problems):\n  - guardrails[0]")


def test_shape_problems_name_their_location() -> None:
    """Bad opt-out, response state and a dangling 'then' are each reported where they are."""
    source = {
        "guardrails": [
            {"use": "a", "opt_out": "approvable"},
            {"use": "b", "opt_out": {"approvers": []}},
            {"use": "c", "mode": "loud"},
        ],
        "responses": [
            {"signal": "x", "state": "on-fire", "do": "rollback"},
            {"signal": "x", "state": "critical", "do": "rollback", "then": "proceed"},
        ],
    }
    assert problems_of(source) == [
        "guardrails[0].opt_out: must be 'forbidden' or a rule such as "
        "{approvers: [sre-leads], max_duration: 4h}",
        "guardrails[1].opt_out.approvers: List should have at least 1 item after validation, not 0",
        "guardrails[2].mode: Input should be 'enforce' or 'shadow'",
        "responses[0].state: Input should be 'ok', 'degraded', 'critical', 'recovering' or "
        "'insufficient_data'",
        "responses[1]: 'then' only applies to 'wait' and 'pause_and_page', not to 'rollback'",
    ]


def test_pause_and_page_needs_timeout_and_responses_do_not_clash() -> None:
    """pause_and_page without timeout, and two answers for one signal state, are errors."""
    source = {
        "responses": [
            {"signal": "error-rate", "state": "degraded", "do": "pause_and_page"},
            {"signal": "error-rate", "state": "degraded", "do": "rollback"},
        ]
    }
    assert problems_of(source) == [
        "responses[0]: 'pause_and_page' needs 'timeout', how long to wait for an operator "
        "(e.g. 30m)",
    ]
    source["responses"][0]["timeout"] = "30m"
    assert problems_of(source) == [
        "responses[1]: signal 'error-rate' in state 'degraded' is already answered by responses[0]"
    ]


def test_duplicate_rule_ids_are_refused_with_both_locations() -> None:
    """Two rules with one id (explicit, or both defaulting to the plug-in name) are refused."""
    source = {
        "guardrails": [
            {"use": "environment-boundary"},
            {"use": "environment-boundary"},
            {"id": "latency", "use": "http-health", "params": {"url": "http://a/"}},
            {"id": "latency", "use": "http-health", "params": {"url": "http://b/"}},
        ]
    }
    assert problems_of(source) == [
        "guardrails[1].use: rule id 'environment-boundary' is already used by guardrails[0]; "
        "give each rule its own id (id: …), e.g. to use one guardrail twice",
        "guardrails[3].id: rule id 'latency' is already used by guardrails[2]; "
        "give each rule its own id (id: …), e.g. to use one guardrail twice",
    ]


def test_one_guardrail_twice_under_two_ids(registry: PluginRegistry[Guardrail[Any]]) -> None:
    """One plug-in may back many rules; each spec carries its rule id and its own params."""
    policy, digest = load_policy(
        {
            "guardrails": [
                {"id": "web-health", "use": "http-health", "params": {"url": "http://web/"}},
                {"id": "db-health", "use": "http-health", "params": {"url": "http://db/"}},
            ]
        },
        registry=registry,
    )
    checks = resolve_checks(policy, digest, change(), registry).checks
    assert [(c.rule, c.guardrail, c.params["url"]) for c in checks] == [
        ("web-health", "http-health", "http://web/"),
        ("db-health", "http-health", "http://db/"),
    ]


def test_rule_ids_have_a_bounded_shape() -> None:
    """A rule id names activities and approvals: letters, digits, '.', '_', '-', at most 64."""
    [problem] = problems_of({"guardrails": [{"id": "no spaces", "use": "a"}]})
    assert problem.startswith("guardrails[0].id: String should match pattern")


def test_resolve_refuses_an_invalid_policy(registry: PluginRegistry[Guardrail[Any]]) -> None:
    """resolve_checks validates against the registry before resolving anything."""
    policy, digest = load_policy({"guardrails": [{"use": "nope"}]})
    with pytest.raises(PolicyError, match=r"guardrails\[0\]\.use: no guardrail named 'nope'"):
        resolve_checks(policy, digest, change(), registry)


@pytest.mark.parametrize(
    ("applies_to", "matching", "other"),
    [
        ({"environments": ["prod"]}, change(), change(environment="staging")),
        (
            {"environments": ["prod"]},
            change(environment="staging", targets=[Target(id="db-1", environment="prod")]),
            change(environment="staging", targets=[Target(id="db-1")]),
        ),
        ({"kinds": ["http-deploy"]}, change(), change(kind="flag-flip")),
        ({"teams": ["payments", "search"]}, change(), change(team="ads")),
        (
            {"labels": {"tier": "web", "region": "eu"}},
            change(),
            change(
                targets=[
                    Target(id="a", labels={"tier": "web"}),
                    Target(id="b", labels={"region": "eu"}),
                ]
            ),
        ),
        (
            {"environments": ["prod"], "teams": ["payments"]},
            change(),
            change(team="ads"),
        ),
    ],
)
def test_applies_to_selects_changes(
    applies_to: dict[str, Any], matching: ChangeContext, other: ChangeContext
) -> None:
    """Every given selector must match; labels must all be on one target; target envs count."""
    selector = AppliesTo.model_validate(applies_to)
    assert (selector.matches(matching), selector.matches(other)) == (True, False)


def test_empty_selector_lists_are_refused() -> None:
    """An empty selector list is an error rather than a rule that silently matches nothing."""
    assert problems_of({"guardrails": [{"use": "a", "applies_to": {"environments": []}}]}) == [
        "guardrails[0].applies_to.environments: List should have at least 1 item after "
        "validation, not 0"
    ]


def test_resolution_keeps_policy_order_and_filters(
    registry: PluginRegistry[Guardrail[Any]],
) -> None:
    """Checks come out in policy order; non-applicable rules and other categories are dropped."""
    policy, digest = load_policy(
        {
            "guardrails": [
                {"use": "http-health", "params": {"url": "http://127.0.0.1:1/"}},
                {"use": "environment-boundary", "applies_to": {"environments": ["staging"]}},
                {"use": "change-window", "params": {"timezone": "UTC"}},
            ]
        }
    )
    names = [c.guardrail for c in resolve_checks(policy, digest, change(), registry).checks]
    assert names == ["http-health", "change-window"]
    timing = resolve_checks(policy, digest, change(), registry, [Category.TIMING])
    assert [c.guardrail for c in timing.checks] == ["change-window"]
    assert resolve_checks(policy, digest, change(), registry, []).checks == []


def test_hash_ignores_key_order_and_spelling_but_not_content() -> None:
    """The hash is stable across key order and duration spelling, and changes with meaning."""
    a = {"guardrails": [{"use": "x", "timeout": "4h", "params": {"p": 1, "q": 2}}]}
    b = {"guardrails": [{"params": {"q": 2, "p": 1}, "timeout": "240m", "use": "x"}]}
    c = {"guardrails": [{"use": "x", "timeout": "4h", "params": {"p": 1, "q": 3}}]}
    ha, hb, hc = (load_policy(s)[1] for s in (a, b, c))
    assert (ha == hb, ha == hc, len(ha)) == (True, False, 16)


def test_none_and_empty_file_are_the_empty_policy(tmp_path: Path) -> None:
    """No policy, and an empty file, both mean no guardrails and no responses."""
    (tmp_path / "empty.yaml").write_text("# nothing yet\n")
    assert load_policy(None) == load_policy(str(tmp_path / "empty.yaml"))
    assert load_policy(None)[0] == PolicyFile()


def test_yaml_syntax_error_has_line_and_column(tmp_path: Path) -> None:
    """A YAML syntax error names the file, line and column."""
    (tmp_path / "bad.yaml").write_text("guardrails:\n  - use: change-window\n   params: [\n")
    [problem] = problems_of("bad.yaml", base_dir=tmp_path)
    assert problem.startswith("bad.yaml:3:")
    assert "invalid YAML" in problem


def test_missing_file_is_named(tmp_path: Path) -> None:
    """A missing policy file is named in the error, with where it was looked for."""
    assert problems_of("nope.yaml", base_dir=tmp_path) == [
        f"nope.yaml: no such file ({tmp_path / 'nope.yaml'})"
    ]


def test_non_mapping_is_refused(tmp_path: Path) -> None:
    """A policy file holding a list, or a guardrails entry that is not a list, is refused."""
    (tmp_path / "list.yaml").write_text("- use: change-window\n")
    assert problems_of("list.yaml", base_dir=tmp_path) == [
        "the policy must be a mapping with 'guardrails' and 'responses', not list"
    ]
    assert problems_of({"guardrails": "change-window"}) == [
        "guardrails: Input should be a valid list"
    ]


# --------------------------------------------------------------------------------------------------
# The platform bundle and the request's additions
# --------------------------------------------------------------------------------------------------


class TargetLock(Guardrail[EmptyParams]):
    """A stand-in for target-lock: the second floor guardrail."""

    name = "target-lock"
    category = Category.CONCURRENCY
    default_owner = "platform"
    default_opt_out = OptOut.FORBIDDEN

    async def check(self, params: EmptyParams, ctx: CheckContext) -> CheckResult:
        return ctx.passed()


@pytest.fixture
def floor_registry(registry: PluginRegistry[Guardrail[Any]]) -> PluginRegistry[Guardrail[Any]]:
    registry.register(TargetLock)
    return registry


PLATFORM = {
    "guardrails": [
        {"use": "environment-boundary"},
        {"use": "target-lock"},
        {
            "id": "business-hours",
            "use": "change-window",
            "applies_to": {"environments": ["prod"]},
            "params": {"timezone": "UTC"},
        },
    ],
    "signals": [{"name": "error-rate", "degraded_above": 0.01, "critical_above": 0.5}],
    "responses": [{"signal": "error-rate", "state": "critical", "do": "rollback"}],
}


def platform(**overrides: Any) -> PlatformBundle:
    return PlatformBundle.model_validate({**PLATFORM, **overrides})


def refused(
    raw: Any, registry: PluginRegistry[Guardrail[Any]], bundle: PlatformBundle
) -> list[str]:
    with pytest.raises(PolicyError) as caught:
        merge_additions(bundle, parse_additions(raw, registry))
    assert caught.value.headline == "the request's policy is refused"
    return caught.value.problems


def test_a_request_may_only_add(floor_registry: PluginRegistry[Guardrail[Any]]) -> None:
    """Settings only the platform makes, and unknown fields, are refused with the field and fix."""
    problems = refused(
        {"unmatched": "allow", "pager": "log", "identity": {}, "guardrails": []},
        floor_registry,
        platform(),
    )
    assert problems == [
        f"policy.{key}: a request cannot set {key!r}; only the platform bundle does (remove it, "
        "or ask the platform team); a request may add guardrails, signals, responses"
        for key in ("identity", "pager", "unmatched")
    ]


def test_a_request_cannot_reuse_a_platform_rule_id(
    floor_registry: PluginRegistry[Guardrail[Any]],
) -> None:
    """Re-using a platform rule's id (explicitly, or by the plug-in name) is refused."""
    problems = refused(
        {
            "guardrails": [
                {"use": "environment-boundary"},
                {"id": "business-hours", "use": "change-window", "params": {"timezone": "UTC"}},
            ]
        },
        floor_registry,
        platform(),
    )
    assert problems == [
        "policy.guardrails[0].use: 'environment-boundary' is a platform rule; a request can only "
        "add rules, never replace one: give yours another id (id: environment-boundary-2)",
        "policy.guardrails[1].id: 'business-hours' is a platform rule; a request can only add "
        "rules, never replace one: give yours another id (id: business-hours-2)",
    ]


def test_a_request_cannot_relax_a_floor_guardrail(
    floor_registry: PluginRegistry[Guardrail[Any]],
) -> None:
    """Shadowing a floor guardrail or giving it an opt-out rule is refused, even under a new id."""
    problems = refused(
        {
            "guardrails": [
                {"id": "eb-2", "use": "environment-boundary", "mode": "shadow"},
                {"id": "tl-2", "use": "target-lock", "opt_out": {"approvers": ["me"]}},
                {"id": "eb-3", "use": "environment-boundary", "reason": "trust me"},
            ]
        },
        floor_registry,
        platform(),
    )
    assert problems == [
        "policy.guardrails[0]: environment-boundary is a floor guardrail (never approvable by "
        "default); a request may add it only enforced with opt_out: forbidden, not with mode: "
        "shadow: remove mode and opt_out (only the platform bundle may relax it)",
        "policy.guardrails[1]: target-lock is a floor guardrail (never approvable by default); a "
        "request may add it only enforced with opt_out: forbidden, not with an opt_out rule: "
        "remove mode and opt_out (only the platform bundle may relax it)",
        "policy.guardrails[2].reason: only the platform bundle gives reasons (for relaxing a "
        "floor rule); remove it",
    ]


def test_a_request_answers_only_its_own_signals(
    floor_registry: PluginRegistry[Guardrail[Any]],
) -> None:
    """Redefining a platform signal, answering it, or answering '*' is refused."""
    problems = refused(
        {
            "signals": [{"name": "error-rate", "degraded_above": 1, "critical_above": 2}],
            "responses": [
                {"signal": "error-rate", "state": "critical", "do": "proceed"},
                {"signal": "*", "state": "degraded", "do": "proceed"},
                {"signal": "mine", "state": "degraded", "do": "rollback"},
            ],
        },
        floor_registry,
        platform(),
    )
    assert [p.split(":")[0] for p in problems] == [
        "policy.signals[0].name",
        "policy.responses[0].signal",
        "policy.responses[1].signal",
        "policy.responses[2].signal",
    ]
    assert "is answered by the platform" in problems[1]
    assert "not '*'" in problems[2]
    assert "define it under policy.signals first" in problems[3]


def test_additions_run_after_the_platform_rules(
    floor_registry: PluginRegistry[Guardrail[Any]],
) -> None:
    """The effective policy is the bundle's rules, then the request's; sources say whose."""
    bundle = platform()
    additions = parse_additions(
        {
            "guardrails": [
                {"id": "session-store", "use": "http-health", "params": {"url": "http://s/"}},
                {"id": "eb-strict", "use": "environment-boundary"},
            ],
            "signals": [{"name": "latency", "degraded_above": 1, "critical_above": 2}],
            "responses": [{"signal": "latency", "state": "critical", "do": "rollback"}],
        },
        floor_registry,
    )
    effective = merge_additions(bundle, additions)
    digest = effective_hash("b" * 16, additions)
    resolved = resolve_checks(
        effective, digest, change(), floor_registry, platform_rules=3, unmatched="reject"
    )
    assert [(c.rule, c.source) for c in resolved.checks] == [
        ("environment-boundary", "platform"),
        ("target-lock", "platform"),
        ("business-hours", "platform"),
        ("session-store", "request"),
        ("eb-strict", "request"),
    ]
    assert [s.name for s in effective.signals] == ["error-rate", "latency"]
    assert (digest != "b" * 16, effective_hash("b" * 16, None)) == (True, "b" * 16)


def test_the_platform_relaxes_a_floor_rule_only_with_a_reason(
    floor_registry: PluginRegistry[Guardrail[Any]],
) -> None:
    """A bundle's shadowed floor rule needs reason:, which becomes every spec's note."""
    rules = [{"use": "target-lock", "mode": "shadow"}]
    policy = PlatformBundle.model_validate({"guardrails": rules})
    with pytest.raises(PolicyError) as caught:
        validate_against(policy, floor_registry)
    assert caught.value.problems == [
        "guardrails[0]: rule 'target-lock' relaxes the floor guardrail target-lock (mode: "
        "shadow); say why with reason: '…' (every report shows it)"
    ]
    rules[0]["reason"] = "locks move to the new lock service this week (PLAT-42)"
    policy = PlatformBundle.model_validate({"guardrails": rules})
    [spec] = resolve_checks(policy, "h", change(), floor_registry).checks
    assert (spec.mode, spec.note) == (Mode.SHADOW, rules[0]["reason"])


def test_an_ungoverned_change_is_refused_unless_unmatched_allow(
    floor_registry: PluginRegistry[Guardrail[Any]],
) -> None:
    """No platform rule's applies_to matches: fail closed; `unmatched: allow` lets it through."""
    bundle = PlatformBundle.model_validate(
        {
            "guardrails": [
                {
                    "use": "change-window",
                    "applies_to": {"environments": ["prod"]},
                    "params": {"timezone": "UTC"},
                }
            ]
        }
    )
    staging = change(environment="staging", team="web")
    request_rule = parse_additions({"guardrails": [{"id": "mine", "use": "target-lock"}]})
    effective = merge_additions(bundle, request_rule)
    with pytest.raises(PolicyError) as caught:
        resolve_checks(
            effective, "h", staging, floor_registry, platform_rules=1, unmatched="reject"
        )
    assert caught.value.problems == [
        "no platform policy governs environment staging, kind http-deploy, team web; ask the "
        "platform team to add a rule (or set unmatched: allow)"
    ]
    # A re-check of other categories is still judged by every platform rule's applies_to.
    resolved = resolve_checks(
        effective,
        "h",
        change(),
        floor_registry,
        [Category.CONCURRENCY],
        platform_rules=1,
        unmatched="reject",
    )
    assert [c.rule for c in resolved.checks] == ["mine"]
    allowed = resolve_checks(
        effective, "h", staging, floor_registry, platform_rules=1, unmatched="allow"
    )
    assert [c.rule for c in allowed.checks] == ["mine"]


def test_the_bundle_defaults_fail_closed() -> None:
    """`unmatched` defaults to reject; identity settings are accepted and stored."""
    bundle = PlatformBundle.model_validate({"identity": {"approvals": "required"}})
    assert (bundle.unmatched, bundle.identity.approvals, bundle.identity.requests) == (
        "reject",
        "required",
        "optional",
    )


def test_only_the_platform_runs_a_check_locally_and_only_a_short_one(
    floor_registry: PluginRegistry[Guardrail[Any]],
) -> None:
    """``dispatch: local``: a request may not set it; the platform only within 10 s."""
    problems = refused(
        {"guardrails": [{"id": "mine", "use": "target-lock", "dispatch": "local"}]},
        floor_registry,
        platform(),
    )
    assert problems == [
        "policy.guardrails[0].dispatch: only the platform bundle decides how a check runs (local "
        "checks run inside the worker that runs the gate); remove it"
    ]
    rules: list[dict[str, Any]] = [
        {"use": "target-lock", "dispatch": "local"},
        {"id": "slow", "use": "target-lock", "dispatch": "local", "timeout": "15s"},
        {"id": "quick", "use": "target-lock", "dispatch": "local", "timeout": "10s"},
        {"id": "just-over", "use": "target-lock", "dispatch": "local", "timeout": "10500ms"},
    ]
    with pytest.raises(PolicyError) as caught:
        validate_against(PlatformBundle.model_validate({"guardrails": rules}), floor_registry)
    assert caught.value.problems == [
        "guardrails[0].dispatch: a local check must answer within 10s, the default timeout of "
        "target-lock is 30s: set timeout: 10s or less, or remove dispatch: local",
        "guardrails[1].dispatch: a local check must answer within 10s, its timeout is 15s: set "
        "timeout: 10s or less, or remove dispatch: local",
        "guardrails[3].dispatch: a local check must answer within 10s, its timeout is 10.5s: set "
        "timeout: 10s or less, or remove dispatch: local",
    ]
    assert problems_of({"guardrails": [{"use": "x", "dispatch": "remote"}]}) == [
        "guardrails[0].dispatch: Input should be 'activity' or 'local'"
    ]


def test_a_local_rule_reaches_its_spec_and_others_keep_their_hashes(
    floor_registry: PluginRegistry[Guardrail[Any]],
) -> None:
    """A rule without ``dispatch`` dumps (and hashes) as before; a local one says so in its spec."""
    plain = PlatformBundle.model_validate({"guardrails": [{"use": "target-lock"}]})
    spelled = PlatformBundle.model_validate(
        {"guardrails": [{"use": "target-lock", "dispatch": "activity"}]}
    )
    local = PlatformBundle.model_validate(
        {"guardrails": [{"use": "target-lock", "dispatch": "local", "timeout": "5s"}]}
    )
    assert "dispatch" not in plain.model_dump()["guardrails"][0]
    assert policy_hash(plain) == policy_hash(spelled) != policy_hash(local)
    [activity_spec] = resolve_checks(plain, "h", change(), floor_registry).checks
    assert "dispatch" not in activity_spec.model_dump(mode="json")
    [local_spec] = resolve_checks(local, "h", change(), floor_registry).checks
    assert (local_spec.dispatch, local_spec.timeout) == ("local", timedelta(seconds=5))
    assert CheckSpec.model_validate(local_spec.model_dump(mode="json")) == local_spec

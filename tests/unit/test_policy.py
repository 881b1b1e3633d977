"""The policy file: parsing, validation against the registry, and resolution for a change."""

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
    PolicyError,
    PolicyFile,
    ResponseRule,
    load_policy,
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
    """The DESIGN.md example loads from a file and resolves with every default filled in."""
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
                guardrail="change-window",
                category=Category.TIMING,
                params=CHANGE_WINDOW_PARAMS,
                owner="release-eng",
                timeout=timedelta(seconds=10),
                opt_out=OptOut.APPROVABLE,
                opt_out_rule=OptOutRule(approvers=["sre-leads"], max_duration=timedelta(hours=4)),
            ),
            CheckSpec(
                guardrail="environment-boundary",
                category=Category.TARGET_STATE,
                owner="platform",
                timeout=timedelta(seconds=30),
                opt_out=OptOut.FORBIDDEN,
            ),
            CheckSpec(
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


def test_duplicate_use_is_refused(registry: PluginRegistry[Guardrail[Any]]) -> None:
    """The same guardrail twice in one policy is a problem (results are keyed by name)."""
    policy, _ = load_policy({"guardrails": [{"use": "environment-boundary"}] * 2})
    with pytest.raises(PolicyError) as caught:
        validate_against(policy, registry)
    assert caught.value.problems == [
        "guardrails[1].use: 'environment-boundary' is already used by guardrails[0]; "
        "each guardrail may appear once per policy"
    ]


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

"""prometheus-query and no-firing-alerts against real Prometheus and Alertmanager on loopback.

Prometheus scrapes the real demo fleet every second; the binaries come from
infra/install-test-deps.sh (never skipped: a missing binary is an error).
"""

from __future__ import annotations

import socket
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import pytest

from demo.fleet import FleetServer
from guardrails.base import CheckContext, Guardrail, new_registry, params_errors
from guardrails.builtin.alerts import NoFiringAlerts, NoFiringAlertsParams
from guardrails.builtin.prometheus_query import (
    PrometheusQuery,
    PrometheusQueryParams,
    render_query,
)
from tests.servers import AlertmanagerServer, PrometheusServer
from workflows.models import Category, ChangeContext, CheckResult, CheckSpec, CheckStatus, Target

NOW = datetime(2026, 6, 1, 12, 0, tzinfo=UTC)
HOSTS = [f"web-0{i}" for i in range(1, 7)]
BAD_VERSION = "9.9.9-bad"
PER_HOST = "max by (host) (fleet_error_ratio)"
"""One sample per host, labelled only by host: ``{host="web-03"}``."""


# --------------------------------------------------------------------------------------------------
# Servers (module-scoped: started once, about a second each)
# --------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def metrics_fleet(tmp_path_factory: pytest.TempPathFactory) -> Iterator[FleetServer]:
    """The demo fleet serving /metrics for Prometheus to scrape."""
    server = FleetServer(tmp_path_factory.mktemp("fleet") / "fleet.db", port=0)
    server.start()
    yield server
    server.stop()


@pytest.fixture(scope="module")
def prometheus(
    tmp_path_factory: pytest.TempPathFactory, metrics_fleet: FleetServer
) -> Iterator[PrometheusServer]:
    """Prometheus scraping the fleet every second, once it has a sample of every host."""
    target = f"127.0.0.1:{metrics_fleet.port}"
    with PrometheusServer(tmp_path_factory.mktemp("prometheus"), [target]) as server:
        server.wait_for_series(f"count(fleet_error_ratio) == {len(HOSTS)}")
        yield server


@pytest.fixture(scope="module")
def alertmanager(tmp_path_factory: pytest.TempPathFactory) -> Iterator[AlertmanagerServer]:
    """Alertmanager with a null receiver; tests isolate themselves by a unique service label."""
    with AlertmanagerServer(tmp_path_factory.mktemp("alertmanager")) as server:
        yield server


def _deploy(fleet: FleetServer, host: str, version: str) -> None:
    response = httpx.post(
        f"{fleet.url}/hosts/{host}/deploy",
        headers={"Idempotency-Key": f"test-{uuid.uuid4().hex}"},
        json={"version": version},
        timeout=5,
    )
    response.raise_for_status()


@pytest.fixture
def bad_host(metrics_fleet: FleetServer, prometheus: PrometheusServer) -> Iterator[str]:
    """web-03 runs a version marked bad until the test ends, and Prometheus has seen both."""
    host = "web-03"
    mark = httpx.post(f"{metrics_fleet.url}/versions/{BAD_VERSION}", json={"bad": True}, timeout=5)
    mark.raise_for_status()
    _deploy(metrics_fleet, host, BAD_VERSION)
    prometheus.wait_for_series(f'fleet_error_ratio{{host="{host}"}} > 0.1')
    yield host
    _deploy(metrics_fleet, host, "1.0.0")
    prometheus.wait_for_series(f'fleet_error_ratio{{host="{host}"}} < 0.1')


@pytest.fixture
def closed_port_url() -> str:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    return f"http://127.0.0.1:{port}"


# --------------------------------------------------------------------------------------------------
# Helpers
# --------------------------------------------------------------------------------------------------


def make_ctx(guardrail: type[Guardrail[Any]], targets: list[str] | None = None) -> CheckContext:
    spec = CheckSpec(
        guardrail=guardrail.name,
        category=guardrail.category,
        owner=guardrail.default_owner,
        timeout=guardrail.default_timeout,
    )
    change = ChangeContext(
        change_id="chg-1",
        kind="http-deploy",
        environment="prod",
        team="web",
        requester="alice",
        targets=[Target(id=t) for t in (HOSTS if targets is None else targets)],
    )
    return CheckContext(change=change, spec=spec, now=NOW)


async def run_query(params: dict[str, Any], targets: list[str] | None = None) -> CheckResult:
    guardrail = PrometheusQuery()
    return await guardrail.check(guardrail.parse_params(params), make_ctx(PrometheusQuery, targets))


async def run_alerts(params: dict[str, Any]) -> CheckResult:
    guardrail = NoFiringAlerts()
    return await guardrail.check(guardrail.parse_params(params), make_ctx(NoFiringAlerts))


def per_host(values: dict[str, str]) -> list[dict[str, Any]]:
    return [{"labels": {"host": h}, "value": v} for h, v in values.items()]


# --------------------------------------------------------------------------------------------------
# prometheus-query
# --------------------------------------------------------------------------------------------------


async def test_healthy_fleet_passes(prometheus: PrometheusServer) -> None:
    """Every host's error ratio (0.001) is below 0.05, so the check passes with the samples."""
    result = await run_query({"url": prometheus.url, "query": PER_HOST, "threshold": 0.05})
    assert result == CheckResult(
        guardrail="prometheus-query",
        category=Category.HEALTH,
        status=CheckStatus.PASS,
        reason=f"all 6 series of `{PER_HOST}` are below 0.05",
        owner="observability",
        evidence={
            "query": PER_HOST,
            "comparison": "<",
            "threshold": 0.05,
            "result_type": "vector",
            "sample_count": 6,
            "samples": per_host(dict.fromkeys(HOSTS, "0.001")),
        },
    )


async def test_bad_version_on_one_host_fails_naming_it(
    prometheus: PrometheusServer, bad_host: str
) -> None:
    """A bad version deployed to web-03 fails the check, naming that host, its value and the bound."""
    result = await run_query({"url": prometheus.url, "query": PER_HOST, "threshold": 0.05})
    assert (result.status, result.reason, result.remedy, result.owner) == (
        CheckStatus.FAIL,
        f'1 of 6 series of `{PER_HOST}` are not below 0.05: {{host="web-03"}} = 0.2',
        f'bring `{PER_HOST}` below 0.05 for {{host="web-03"}} (now 0.2), or fix what raises it',
        "observability",
    )
    assert result.evidence["violations"] == per_host({"web-03": "0.2"})


async def test_raw_series_are_named_with_all_their_labels(
    prometheus: PrometheusServer, metrics_fleet: FleetServer, bad_host: str
) -> None:
    """Without aggregation the offending series is rendered with its name, instance and job."""
    query = 'fleet_error_ratio{host="web-03"}'
    result = await run_query({"url": prometheus.url, "query": query, "threshold": 0.05})
    series = (
        f'fleet_error_ratio{{host="web-03", instance="127.0.0.1:{metrics_fleet.port}", '
        'job="fleet"}'
    )
    assert result.reason == f"1 of 1 series of `{query}` are not below 0.05: {series} = 0.2"


async def test_targets_placeholder_restricts_to_the_change(
    prometheus: PrometheusServer, bad_host: str
) -> None:
    """{targets} becomes the change's ids, so a bad host outside the change does not fail it."""
    params = {
        "url": prometheus.url,
        "query": 'max by (host) (fleet_error_ratio{host=~"{targets}"})',
        "threshold": 0.05,
    }
    outside = await run_query(params, targets=["web-01", "web-02"])
    assert (outside.status, outside.evidence["query"], outside.evidence["samples"]) == (
        CheckStatus.PASS,
        'max by (host) (fleet_error_ratio{host=~"web-01|web-02"})',
        per_host({"web-01": "0.001", "web-02": "0.001"}),
    )
    inside = await run_query(params, targets=["web-02", "web-03"])
    assert (inside.status, inside.evidence["violations"]) == (
        CheckStatus.FAIL,
        per_host({"web-03": "0.2"}),
    )


async def test_missing_series_waits(prometheus: PrometheusServer) -> None:
    """A query for a series that does not exist waits no_data_retry, never passes."""
    query = 'fleet_no_such_metric{environment="{environment}"}'
    params = {"url": prometheus.url, "query": query, "threshold": 1, "no_data_retry": "30s"}
    result = await run_query(params)
    sent = 'fleet_no_such_metric{environment="prod"}'
    assert result == CheckResult(
        guardrail="prometheus-query",
        category=Category.HEALTH,
        status=CheckStatus.WAIT,
        reason=f"`{sent}` returned no data yet",
        remedy=(
            f"check in Prometheus at {prometheus.url} that the series in `{sent}` exist and that "
            "their scrape targets are up; the check retries by itself in 30s"
        ),
        owner="observability",
        retry_after=NOW + timedelta(seconds=30),
        evidence={
            "query": sent,
            "comparison": "<",
            "threshold": 1.0,
            "result_type": "vector",
            "sample_count": 0,
            "samples": [],
        },
    )


async def test_missing_series_fails_when_no_data_is_fail(prometheus: PrometheusServer) -> None:
    """With no_data=fail an empty result is a failure, without retry_after."""
    params = {
        "url": prometheus.url,
        "query": "fleet_no_such_metric",
        "threshold": 1,
        "no_data": "fail",
    }
    result = await run_query(params)
    assert (result.status, result.reason, result.retry_after) == (
        CheckStatus.FAIL,
        "`fleet_no_such_metric` returned no data, and no data blocks this check (no_data: fail)",
        None,
    )


async def test_scalar_with_other_comparison(prometheus: PrometheusServer) -> None:
    """A scalar result is judged as one sample, here with '>=' against the number of hosts up."""
    query = 'scalar(sum(up{job="fleet"}))'
    ok = await run_query(
        {"url": prometheus.url, "query": query, "threshold": 1, "comparison": ">="}
    )
    assert (ok.status, ok.reason) == (CheckStatus.PASS, f"`{query}` is 1, at or above 1")
    short = await run_query(
        {"url": prometheus.url, "query": query, "threshold": 2, "comparison": ">="}
    )
    assert (short.status, short.reason, short.remedy) == (
        CheckStatus.FAIL,
        f"`{query}` is 1, not at or above 2",
        f"bring `{query}` at or above 2 (now 1), or fix what raises it",
    )


async def test_invalid_promql_is_an_error(prometheus: PrometheusServer) -> None:
    """A query Prometheus rejects is an error (fail-closed) that says to fix the query."""
    result = await run_query({"url": prometheus.url, "query": "sum(", "threshold": 1})
    assert result.status is CheckStatus.ERROR
    assert result.reason.startswith("Prometheus rejected `sum(`: bad_data: ")
    assert (result.remedy, result.evidence["error_type"]) == (
        "fix the query `sum(` in the policy",
        "bad_data",
    )


async def test_range_vector_is_an_error(prometheus: PrometheusServer) -> None:
    """A range selector returns a matrix, which cannot be judged: an error naming the fix."""
    result = await run_query(
        {"url": prometheus.url, "query": "fleet_error_ratio[5s]", "threshold": 1}
    )
    assert (result.status, result.reason) == (
        CheckStatus.ERROR,
        "cannot judge `fleet_error_ratio[5s]`: the query returned a matrix result; write an "
        "instant vector or scalar query (e.g. wrap a range selector in rate() or max_over_time())",
    )


async def test_prometheus_down_is_an_error(closed_port_url: str) -> None:
    """An unreachable Prometheus is an error with a reason, a remedy and an owner, not a raise."""
    result = await run_query({"url": closed_port_url, "query": "up", "threshold": 1})
    assert result.status is CheckStatus.ERROR
    assert result.reason.startswith(f"cannot query Prometheus at {closed_port_url}: ConnectError")
    assert (result.remedy, result.owner, result.evidence["error"]) == (
        f"make Prometheus at {closed_port_url} reachable from the worker, then recheck",
        "observability",
        "ConnectError",
    )


# --------------------------------------------------------------------------------------------------
# no-firing-alerts
# --------------------------------------------------------------------------------------------------


def _service() -> str:
    return f"svc-{uuid.uuid4().hex[:8]}"


async def test_no_alerts_passes(alertmanager: AlertmanagerServer) -> None:
    """With no matching alert the check passes and names the matchers it asked for."""
    service = _service()
    matchers = [f'service="{service}"', 'severity=~"critical|page"']
    result = await run_alerts({"url": alertmanager.url, "matchers": matchers})
    assert result == CheckResult(
        guardrail="no-firing-alerts",
        category=Category.IN_FLIGHT,
        status=CheckStatus.PASS,
        reason=f'no unsilenced alert matching service="{service}" and '
        'severity=~"critical|page" is firing',
        owner="sre",
        evidence={"matchers": matchers, "fingerprints": []},
    )


async def test_firing_alert_fails_and_lists_it(alertmanager: AlertmanagerServer) -> None:
    """A firing critical alert of the service fails the check, listing it and naming its owner."""
    service = _service()
    starts = datetime.now(UTC).replace(second=0, microsecond=0) - timedelta(minutes=5)
    alertmanager.post_alert(
        {
            "alertname": "HighErrorRate",
            "service": service,
            "severity": "critical",
            "environment": "prod",
            "team": "web",
        },
        {"summary": "5xx above 5% on web"},
        starts_at=starts,
    )
    [alert] = alertmanager.wait_for_alerts(1, [f'service="{service}"'])
    matchers = ['severity=~"critical|page"', f'service="{service}"', 'environment="{environment}"']
    result = await run_alerts({"url": alertmanager.url, "matchers": matchers})
    sent = [*matchers[:2], 'environment="prod"']
    assert result == CheckResult(
        guardrail="no-firing-alerts",
        category=Category.IN_FLIGHT,
        status=CheckStatus.FAIL,
        reason=(
            f'1 alert matching {" and ".join(sent)} firing: HighErrorRate{{severity="critical", '
            f'service="{service}", team="web", environment="prod"}} '
            f"since {starts:%Y-%m-%d %H:%M} UTC: 5xx above 5% on web"
        ),
        remedy=(
            "resolve or silence the incident HighErrorRate (owner: web) before changing; "
            "an incident in progress blocks changes"
        ),
        owner="sre",
        evidence={"matchers": sent, "fingerprints": [alert["fingerprint"]]},
    )


async def test_alert_not_matching_passes(alertmanager: AlertmanagerServer) -> None:
    """A warning of the service and a critical alert of another service do not block it."""
    service, other = _service(), _service()
    alertmanager.post_alert({"alertname": "SlowDisk", "service": service, "severity": "warning"})
    alertmanager.post_alert({"alertname": "Down", "service": other, "severity": "critical"})
    alertmanager.wait_for_alerts(1, [f'service="{service}"'])
    alertmanager.wait_for_alerts(1, [f'service="{other}"'])
    matchers = [f'service="{service}"', 'severity=~"critical|page"']
    result = await run_alerts({"url": alertmanager.url, "matchers": matchers})
    assert (result.status, result.evidence["fingerprints"]) == (CheckStatus.PASS, [])


async def test_silenced_alert_counts_only_when_asked(alertmanager: AlertmanagerServer) -> None:
    """A silenced alert passes by default and fails with include_silenced=true."""
    service = _service()
    alertmanager.post_alert({"alertname": "Flapping", "service": service, "severity": "page"})
    alertmanager.silence({"service": service})
    alertmanager.wait_for_alerts(1, [f'service="{service}"'], silenced=True)
    params: dict[str, Any] = {"url": alertmanager.url, "matchers": [f'service="{service}"']}
    assert (await run_alerts(params)).status is CheckStatus.PASS
    counted = await run_alerts({**params, "include_silenced": True})
    assert (counted.status, counted.remedy) == (
        CheckStatus.FAIL,
        "resolve or silence the incident Flapping before changing; "
        "an incident in progress blocks changes",
    )


async def test_alertmanager_down_is_an_error(closed_port_url: str) -> None:
    """An unreachable Alertmanager is an error with a reason, a remedy and an owner."""
    result = await run_alerts({"url": closed_port_url, "matchers": ['severity="critical"']})
    assert result.status is CheckStatus.ERROR
    assert result.reason.startswith(
        f"cannot list alerts from Alertmanager at {closed_port_url}: ConnectError"
    )
    assert (result.remedy, result.owner) == (
        f"make Alertmanager at {closed_port_url} reachable from the worker, then recheck",
        "sre",
    )


# --------------------------------------------------------------------------------------------------
# Contract and params (no servers)
# --------------------------------------------------------------------------------------------------


def test_both_register_against_the_contract() -> None:
    """Both guardrails meet the contract with their documented names, categories and owners."""
    registry = new_registry()
    registry.register(PrometheusQuery)
    registry.register(NoFiringAlerts)
    found = [
        (name, g.category, g.default_owner, g.params_model)
        for name in registry.names()
        for g in [registry.get(name)]
    ]
    assert found == [
        ("no-firing-alerts", Category.IN_FLIGHT, "sre", NoFiringAlertsParams),
        ("prometheus-query", Category.HEALTH, "observability", PrometheusQueryParams),
    ]


def test_bad_params_are_reported() -> None:
    """Unknown fields, a bad URL, comparison, threshold, duration and matcher are each reported."""
    assert params_errors(
        PrometheusQuery(),
        {
            "url": "prometheus:9090",
            "query": "up",
            "threshold": "nan",
            "comparison": "=<",
            "no_data_retry": "0s",
            "step": "1m",
        },
    ) == [
        "params.url: 'prometheus:9090' is not an http(s) URL; write e.g. 'http://prometheus:9090'",
        "params.threshold: Input should be a finite number",
        "params.comparison: Input should be '<', '<=', '>', '>=', '==' or '!='",
        "params.no_data_retry: the duration must be positive, e.g. '10s'",
        "params.step: unknown field",
    ]
    assert params_errors(
        NoFiringAlerts(), {"url": "http://am:9093", "matchers": ["severity critical"]}
    ) == [
        "params.matchers.0: 'severity critical' is not an Alertmanager matcher; write e.g. "
        "'severity=~\"critical|page\"' or 'service=\"web\"'"
    ]


def test_targets_are_escaped_for_re2_and_promql() -> None:
    """Dots in target ids are escaped for RE2, and the backslash again for the PromQL string."""
    ctx = make_ctx(PrometheusQuery, ["db.1", "web-01"])
    assert render_query('up{host=~"{targets}"}', ctx.change) == r'up{host=~"db\\.1|web-01"}'

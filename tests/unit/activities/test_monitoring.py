"""``observe_signals`` against the real demo fleet and a real Prometheus, and its classifier."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator

import httpx
import pytest

from activities.monitoring import MonitoringActivities, classify, parse_metrics
from demo.fleet import FleetServer
from tests.servers import PrometheusServer, free_port
from workflows.rollout_models import (
    FLEET_ERROR_RATE,
    ObserveInput,
    ObserveResult,
    SignalReading,
    SignalSpec,
    SignalState,
)

HOSTS = [f"web-0{i}" for i in range(1, 7)]
BOUNDS = "degraded at 0.01, critical at 0.1"
OK, DEGRADED, CRITICAL = SignalState.OK, SignalState.DEGRADED, SignalState.CRITICAL
RECOVERING, NO_DATA = SignalState.RECOVERING, SignalState.INSUFFICIENT_DATA

monitoring = MonitoringActivities()


async def ship_bad_version(fleet_client: httpx.AsyncClient, host: str) -> None:
    """Mark 2.0.0 bad and deploy it to one host, as a bad rollout wave would."""
    await fleet_client.post("/versions/2.0.0", json={"bad": True})
    response = await fleet_client.post(
        f"/hosts/{host}/deploy", json={"version": "2.0.0"}, headers={"Idempotency-Key": "k1"}
    )
    assert response.status_code == 200


def observe_input(url: str, **changes: object) -> ObserveInput:
    values: dict[str, object] = {
        "change_id": "chg-1",
        "kind": "http-deploy",
        "params": {"base_url": url, "version": "2.0.0"},
        "targets": HOSTS,
        "signals": [FLEET_ERROR_RATE],
    }
    values.update(changes)
    return ObserveInput.model_validate(values)


def fleet_ratios(bad: str | None = None) -> dict[str, float]:
    return {h: 0.2 if h == bad else 0.001 for h in HOSTS}


@pytest.mark.parametrize(
    ("value", "reporting", "previous", "expected"),
    [
        (0.001, 6, None, OK),
        (0.01, 6, None, DEGRADED),
        (0.099, 6, OK, DEGRADED),
        (0.1, 6, None, CRITICAL),
        (0.5, 6, DEGRADED, CRITICAL),
        (0.001, 6, CRITICAL, RECOVERING),
        (0.009, 6, DEGRADED, RECOVERING),
        (0.001, 6, RECOVERING, OK),
        (0.001, 6, NO_DATA, OK),
        (None, 0, CRITICAL, NO_DATA),
        (0.5, 2, None, NO_DATA),
        (0.5, 3, None, CRITICAL),
    ],
)
def test_classify(
    value: float | None, reporting: int, previous: SignalState | None, expected: SignalState
) -> None:
    """Thresholds are inclusive; recovery needs an earlier bad state; too few samples is no data."""
    spec = FLEET_ERROR_RATE.model_copy(update={"min_samples": 3})

    assert classify(value, spec, reporting=reporting, previous=previous) is expected


def test_signal_spec_validation() -> None:
    """Inverted thresholds, a prometheus signal without url/query, a fleet one with them: refused."""
    with pytest.raises(ValueError, match=r"critical_above \(0.01\) must not be below"):
        SignalSpec(name="e", degraded_above=0.1, critical_above=0.01)
    with pytest.raises(ValueError, match=r"needs 'url'.*needs 'query'"):
        SignalSpec(name="e", source="prometheus", degraded_above=1, critical_above=2)
    with pytest.raises(ValueError, match="only apply to source 'prometheus'"):
        SignalSpec(name="e", query="up", degraded_above=1, critical_above=2)


def test_parse_metrics_reads_one_metric_with_escaped_labels() -> None:
    """Only the asked metric is returned, labels unescaped, timestamps and comments ignored."""
    text = (
        "# HELP fleet_error_ratio Share.\n# TYPE fleet_error_ratio gauge\n"
        'fleet_error_ratio{host="web-01"} 0.001\n'
        'fleet_error_ratio{host="we\\"b-02",zone="a"} 0.2 1700000000000\n'
        'fleet_error_ratio_other{host="web-03"} 9\n'
        "fleet_error_ratio 3\n"
        'fleet_errors_total{host="web-01"} 12\n'
    )

    assert parse_metrics(text, "fleet_error_ratio") == [
        ({"host": "web-01"}, 0.001),
        ({"host": 'we"b-02', "zone": "a"}, 0.2),
        ({}, 3.0),
    ]


async def test_healthy_fleet_is_ok(fleet: FleetServer) -> None:
    """Every host at the good error ratio reads ok, with each host's value."""
    result = await monitoring.observe_signals(observe_input(fleet.url))

    assert result == ObserveResult(
        readings=[
            SignalReading(
                signal="error-rate",
                state=OK,
                value=0.001,
                detail=(
                    f"ok: worst 0.001 on web-01 (fleet_error_ratio at {fleet.url}/metrics; "
                    f"6 of 6 reporting; {BOUNDS})"
                ),
                per_target=fleet_ratios(),
            )
        ]
    )


async def test_bad_version_on_one_host_is_critical(
    fleet: FleetServer, fleet_client: httpx.AsyncClient
) -> None:
    """A bad version deployed to one host raises that host's ratio to critical."""
    await ship_bad_version(fleet_client, "web-03")

    result = await monitoring.observe_signals(observe_input(fleet.url))

    assert result.readings == [
        SignalReading(
            signal="error-rate",
            state=CRITICAL,
            value=0.2,
            detail=(
                f"critical: worst 0.2 on web-03 (fleet_error_ratio at {fleet.url}/metrics; "
                f"6 of 6 reporting; {BOUNDS})"
            ),
            per_target=fleet_ratios(bad="web-03"),
        )
    ]


async def test_looser_thresholds_read_degraded(
    fleet: FleetServer, fleet_client: httpx.AsyncClient
) -> None:
    """The same bad host against higher thresholds is degraded, not critical; signals keep order."""
    await ship_bad_version(fleet_client, "web-03")
    loose = SignalSpec(name="error-rate-loose", degraded_above=0.1, critical_above=0.5)

    result = await monitoring.observe_signals(
        observe_input(fleet.url, signals=[loose, FLEET_ERROR_RATE])
    )

    assert [(r.signal, r.state, r.value) for r in result.readings] == [
        ("error-rate-loose", DEGRADED, 0.2),
        ("error-rate", CRITICAL, 0.2),
    ]


async def test_recovering_after_critical_then_ok(
    fleet: FleetServer, fleet_client: httpx.AsyncClient
) -> None:
    """Critical, then healthy again: recovering first, ok at the next observation."""
    await ship_bad_version(fleet_client, "web-03")
    critical = await monitoring.observe_signals(observe_input(fleet.url))
    await fleet_client.post("/versions/2.0.0", json={"bad": False})

    recovering = await monitoring.observe_signals(
        observe_input(fleet.url, previous=critical.states())
    )
    settled = await monitoring.observe_signals(
        observe_input(fleet.url, previous=recovering.states())
    )

    assert [critical.states(), recovering.states(), settled.states()] == [
        {"error-rate": CRITICAL},
        {"error-rate": RECOVERING},
        {"error-rate": OK},
    ]
    assert recovering.readings[0] == SignalReading(
        signal="error-rate",
        state=RECOVERING,
        value=0.001,
        detail=(
            f"recovering: worst 0.001 on web-01 (fleet_error_ratio at {fleet.url}/metrics; "
            f"6 of 6 reporting; {BOUNDS})"
        ),
        per_target=fleet_ratios(),
    )


async def test_missing_series_is_insufficient_data(fleet: FleetServer) -> None:
    """Targets without a series at base_url are insufficient data, and named as missing."""
    result = await monitoring.observe_signals(
        observe_input(fleet.url, targets=["web-98", "web-99"])
    )

    assert result.readings == [
        SignalReading(
            signal="error-rate",
            state=NO_DATA,
            detail=(
                f"insufficient data: fleet_error_ratio at {fleet.url}/metrics: 0 of 2 reporting; "
                "no data for web-98, web-99; at least 1 needed"
            ),
        )
    ]


async def test_too_few_reporting_is_insufficient_data(fleet: FleetServer) -> None:
    """One of two targets reporting against min_samples 2 is insufficient, with what was seen."""
    spec = FLEET_ERROR_RATE.model_copy(update={"min_samples": 2})

    result = await monitoring.observe_signals(
        observe_input(fleet.url, targets=["web-01", "web-99"], signals=[spec])
    )

    assert result.readings == [
        SignalReading(
            signal="error-rate",
            state=NO_DATA,
            value=0.001,
            detail=(
                f"insufficient data: fleet_error_ratio at {fleet.url}/metrics: 1 of 2 reporting; "
                "no data for web-99; at least 2 needed"
            ),
            per_target={"web-01": 0.001},
        )
    ]


async def test_no_base_url_or_unreachable_fleet_is_insufficient_data() -> None:
    """A change without base_url, or a fleet not listening, reads insufficient data, never raises."""
    url = f"http://127.0.0.1:{free_port()}"

    no_url = await monitoring.observe_signals(observe_input(url, params={"version": "2.0.0"}))
    down = await monitoring.observe_signals(observe_input(url))

    assert no_url.readings == [
        SignalReading(
            signal="error-rate",
            state=NO_DATA,
            detail=(
                "no fleet_error_ratio to read: the change's params have no base_url "
                "(change kind 'http-deploy')"
            ),
        )
    ]
    [reading] = down.readings
    assert (reading.state, reading.value, reading.per_target) == (NO_DATA, None, {})
    assert reading.detail.startswith(f"cannot read {url}/metrics: ConnectError")


# --------------------------------------------------------------------------------------------------
# Prometheus as the source (one Prometheus per module: its first scrape takes about five seconds)
# --------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def scraped_fleet(tmp_path_factory: pytest.TempPathFactory) -> Iterator[FleetServer]:
    with FleetServer(tmp_path_factory.mktemp("fleet") / "fleet.db") as server:
        yield server


@pytest.fixture(scope="module")
def prometheus(
    tmp_path_factory: pytest.TempPathFactory, scraped_fleet: FleetServer
) -> Iterator[PrometheusServer]:
    target = scraped_fleet.url.removeprefix("http://")
    with PrometheusServer(tmp_path_factory.mktemp("prometheus"), [target]) as prom:
        prom.wait_for_series('fleet_error_ratio{host="web-06"}', timeout=30)
        yield prom


def prometheus_signal(url: str, query: str) -> SignalSpec:
    return SignalSpec(
        name="error-rate",
        source="prometheus",
        url=url,
        query=query,
        degraded_above=0.01,
        critical_above=0.1,
    )


async def test_prometheus_signal_per_target(prometheus: PrometheusServer) -> None:
    """A PromQL signal fills {targets} with the observed targets and reads one value per host."""
    spec = prometheus_signal(prometheus.url, 'fleet_error_ratio{host=~"{targets}"}')

    result = await monitoring.observe_signals(
        observe_input("unused", targets=["web-01", "web-02"], signals=[spec])
    )

    query = 'fleet_error_ratio{host=~"web-01|web-02"}'
    assert result.readings == [
        SignalReading(
            signal="error-rate",
            state=OK,
            value=0.001,
            detail=f"ok: worst 0.001 on web-01 (`{query}`; 2 reporting; {BOUNDS})",
            per_target={"web-01": 0.001, "web-02": 0.001},
        )
    ]


async def test_prometheus_signal_turns_critical(
    prometheus: PrometheusServer, scraped_fleet: FleetServer
) -> None:
    """After a bad version lands on a host, the next scrapes make the Prometheus signal critical."""
    spec = prometheus_signal(prometheus.url, 'max(fleet_error_ratio{host=~"{targets}"})')
    async with httpx.AsyncClient(base_url=scraped_fleet.url, trust_env=False) as fleet_client:
        await ship_bad_version(fleet_client, "web-05")

    deadline = time.monotonic() + 15
    while True:
        result = await monitoring.observe_signals(observe_input("unused", signals=[spec]))
        if result.readings[0].state is CRITICAL or time.monotonic() > deadline:
            break
        await asyncio.sleep(0.3)

    assert (result.readings[0].state, result.readings[0].per_target) == (
        CRITICAL,
        {"{}": 0.2},  # an aggregate has no host label; it is named by its (empty) label set
    )


async def test_prometheus_rejected_query_is_insufficient_data(
    prometheus: PrometheusServer,
) -> None:
    """A query Prometheus cannot parse reads insufficient data with Prometheus's own reason."""
    spec = prometheus_signal(prometheus.url, "fleet_error_ratio{")

    result = await monitoring.observe_signals(observe_input("unused", signals=[spec]))

    [reading] = result.readings
    assert (reading.state, reading.value) == (NO_DATA, None)
    assert reading.detail.startswith(
        f"Prometheus at {prometheus.url} did not evaluate `fleet_error_ratio{{`: bad_data: "
    )

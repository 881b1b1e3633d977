"""The ``http-deploy`` change kind against a real demo fleet."""

from __future__ import annotations

import dataclasses
import socket
from datetime import timedelta
from typing import Any

import httpx
import pytest
from pydantic import ValidationError
from temporalio.exceptions import ApplicationError
from temporalio.testing import ActivityEnvironment

from activities.change import ChangeActivities
from activities.kinds.base import new_registry
from activities.kinds.http_deploy import HttpDeploy, HttpDeployParams
from activities.resilience import CircuitBreakers
from demo.fleet import FleetServer
from workflows.errors import CIRCUIT_OPEN, TARGET_REJECTED, TARGET_UNAVAILABLE
from workflows.models import ApplyInput, ApplyResult, Target, TargetState, idempotency_key
from workflows.rollout_models import BreakerState, BreakerStatus

WEB1 = Target(id="web-01")
APPLY_KEY = idempotency_key("chg-1", "apply", "web-01")
REVERT_KEY = idempotency_key("chg-1", "revert", "web-01")


@pytest.fixture
def params(fleet: FleetServer) -> HttpDeployParams:
    return HttpDeployParams(base_url=fleet.url, version="2.0.0", timeout=5)


kind = HttpDeploy()


async def ledger(fleet_client: httpx.AsyncClient) -> list[tuple[str, str, str, str]]:
    rows: list[dict[str, Any]] = (await fleet_client.get("/deploys")).json()
    return [(r["idempotency_key"], r["host"], r["from_version"], r["to_version"]) for r in rows]


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_kind_meets_the_contract() -> None:
    """HttpDeploy registers cleanly and validates its params strictly."""
    registry = new_registry()
    registry.register(HttpDeploy)
    assert registry.names() == ["http-deploy"]
    parsed = kind.parse_params({"base_url": "http://127.0.0.1:8800/", "version": "2.0.0"})
    assert parsed == HttpDeployParams(base_url="http://127.0.0.1:8800", version="2.0.0")
    for bad in (
        {"base_url": "ftp://fleet", "version": "2.0.0"},
        {"base_url": "http://fleet", "version": " "},
        {"base_url": "http://fleet", "version": "2.0.0", "force": True},
    ):
        with pytest.raises(ValidationError):
            kind.parse_params(bad)


async def test_apply_then_revert_restores_previous_version(
    params: HttpDeployParams, fleet_client: httpx.AsyncClient
) -> None:
    """Apply deploys the version; revert redeploys the one it replaced; the ledger shows both."""
    applied = await kind.apply(params, WEB1, idempotency_key=APPLY_KEY)
    reverted = await kind.revert_if_applied(
        params, WEB1, applied_key=APPLY_KEY, idempotency_key=REVERT_KEY
    )

    assert applied == ApplyResult(
        target_id="web-01",
        applied=True,
        detail="deployed 1.0.0 -> 2.0.0 on web-01",
        before={"version": "1.0.0"},
        after={"version": "2.0.0"},
    )
    assert reverted == ApplyResult(
        target_id="web-01",
        applied=True,
        detail="deployed 2.0.0 -> 1.0.0 on web-01",
        before={"version": "2.0.0"},
        after={"version": "1.0.0"},
    )
    assert (await kind.describe(params, WEB1)).version == "1.0.0"
    assert await ledger(fleet_client) == [
        (APPLY_KEY, "web-01", "1.0.0", "2.0.0"),
        (REVERT_KEY, "web-01", "2.0.0", "1.0.0"),
    ]


async def test_revert_twice_applies_once(
    params: HttpDeployParams, fleet_client: httpx.AsyncClient
) -> None:
    """A retried compensation with the same key is a replay and changes nothing more."""
    await kind.apply(params, WEB1, idempotency_key=APPLY_KEY)
    await kind.revert_if_applied(params, WEB1, applied_key=APPLY_KEY, idempotency_key=REVERT_KEY)

    again = await kind.revert_if_applied(
        params, WEB1, applied_key=APPLY_KEY, idempotency_key=REVERT_KEY
    )

    assert (again.applied, again.after) == (False, {"version": "1.0.0"})
    assert len(await ledger(fleet_client)) == 2


async def test_revert_of_never_applied_key_applies_nothing(
    params: HttpDeployParams, fleet_client: httpx.AsyncClient
) -> None:
    """Reverting a step that never took effect applies nothing and says so."""
    result = await kind.revert_if_applied(
        params, WEB1, applied_key=APPLY_KEY, idempotency_key=REVERT_KEY
    )

    assert result == ApplyResult(
        target_id="web-01", applied=False, detail=f"nothing to revert: {APPLY_KEY} never applied"
    )
    assert await ledger(fleet_client) == []


async def test_apply_with_replayed_key_applies_nothing(
    params: HttpDeployParams, fleet_client: httpx.AsyncClient
) -> None:
    """The same key twice: the second reports replayed (applied=False); one ledger entry."""
    await kind.apply(params, WEB1, idempotency_key=APPLY_KEY)

    again = await kind.apply(params, WEB1, idempotency_key=APPLY_KEY)

    assert again == ApplyResult(
        target_id="web-01",
        applied=False,
        detail=f"replayed: {APPLY_KEY} already deployed 1.0.0 -> 2.0.0; nothing applied",
        before={"version": "1.0.0"},
        after={"version": "2.0.0"},
        replayed=True,
    )
    assert await ledger(fleet_client) == [(APPLY_KEY, "web-01", "1.0.0", "2.0.0")]


async def test_describe_reports_version_and_health(
    params: HttpDeployParams, fleet_client: httpx.AsyncClient
) -> None:
    """Describe reports the host's version and health, which follows bad-version marks."""
    healthy = await kind.describe(params, WEB1)
    await fleet_client.post("/versions/1.0.0", json={"bad": True})
    sick = await kind.describe(params, WEB1)

    assert healthy == TargetState(
        target_id="web-01",
        reachable=True,
        healthy=True,
        version="1.0.0",
        detail={"environment": "prod", "labels": {"role": "web", "zone": "a"}, "error_rate": 0.001},
    )
    assert (sick.reachable, sick.healthy, sick.detail["error_rate"]) == (True, False, 0.2)


async def test_describe_unreachable_target() -> None:
    """Describe against a closed port reports unreachable and unhealthy instead of raising."""
    params = HttpDeployParams(base_url=f"http://127.0.0.1:{closed_port()}", version="2.0.0")

    state = await kind.describe(params, WEB1)

    assert (state.reachable, state.healthy, state.version) == (False, False, None)
    assert state.detail["error_type"] == TARGET_UNAVAILABLE


async def test_unknown_host_is_rejected(
    params: HttpDeployParams, fleet_client: httpx.AsyncClient
) -> None:
    """Applying to a host the fleet does not know is a non-retryable TargetRejected."""
    with pytest.raises(ApplicationError) as caught:
        await kind.apply(params, Target(id="web-99"), idempotency_key=APPLY_KEY)

    assert (caught.value.type, caught.value.non_retryable) == (TARGET_REJECTED, True)
    assert "web-99" in caught.value.message and "404" in caught.value.message
    assert await ledger(fleet_client) == []


async def test_key_reused_for_another_version_is_rejected(params: HttpDeployParams) -> None:
    """Reusing a key for a different version is a non-retryable TargetRejected (409 reuse)."""
    await kind.apply(params, WEB1, idempotency_key=APPLY_KEY)

    with pytest.raises(ApplicationError) as caught:
        await kind.apply(
            params.model_copy(update={"version": "3.0.0"}), WEB1, idempotency_key=APPLY_KEY
        )

    assert (caught.value.type, caught.value.non_retryable) == (TARGET_REJECTED, True)


async def test_server_fault_is_retryable_unavailable(
    params: HttpDeployParams, fleet_client: httpx.AsyncClient
) -> None:
    """A 503 is a retryable TargetUnavailable that applied nothing; the retry then applies."""
    await fleet_client.post("/admin/faults", json={"fail_next": 1})

    with pytest.raises(ApplicationError) as caught:
        await kind.apply(params, WEB1, idempotency_key=APPLY_KEY)
    assert await ledger(fleet_client) == []
    retried = await kind.apply(params, WEB1, idempotency_key=APPLY_KEY)

    assert (caught.value.type, caught.value.non_retryable) == (TARGET_UNAVAILABLE, False)
    assert "503" in caught.value.message
    assert retried.applied is True


async def test_timeout_then_retry_reports_replay(
    params: HttpDeployParams, fleet_client: httpx.AsyncClient
) -> None:
    """A timed-out deploy is retryable; its retry with the same key never deploys twice."""
    await fleet_client.post("/admin/faults", json={"deploy_delay_ms": 800})
    hasty = params.model_copy(update={"timeout": 0.3})  # the GET fits, the POST does not

    with pytest.raises(ApplicationError) as caught:
        await kind.apply(hasty, WEB1, idempotency_key=APPLY_KEY)
    retried = await kind.apply(params, WEB1, idempotency_key=APPLY_KEY)

    assert (caught.value.type, caught.value.non_retryable) == (TARGET_UNAVAILABLE, False)
    assert "timed out" in caught.value.message
    assert retried.applied is False  # the timed-out attempt had already deployed
    assert await ledger(fleet_client) == [(APPLY_KEY, "web-01", "1.0.0", "2.0.0")]


async def test_connection_refused_is_retryable_unavailable() -> None:
    """A fleet that is not listening is a retryable TargetUnavailable naming the URL."""
    url = f"http://127.0.0.1:{closed_port()}"
    params = HttpDeployParams(base_url=url, version="2.0.0")

    with pytest.raises(ApplicationError) as caught:
        await kind.apply(params, WEB1, idempotency_key=APPLY_KEY)

    assert (caught.value.type, caught.value.non_retryable) == (TARGET_UNAVAILABLE, False)
    assert caught.value.message.startswith(f"GET {url}/hosts/web-01 failed: ConnectError")


# --------------------------------------------------------------------------------------------------
# Resilience: jittered retries, the circuit breaker, heartbeats, retried attempts
# --------------------------------------------------------------------------------------------------


class Clock:
    """A monotonic clock that moves only when told to."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


async def faults(fleet_client: httpx.AsyncClient) -> dict[str, int]:
    found: dict[str, int] = (await fleet_client.get("/admin/faults")).json()
    return found


def activity_env(
    *, attempt: int = 1, heartbeat_timeout: float | None = None
) -> ActivityEnvironment:
    env = ActivityEnvironment()
    timeout = None if heartbeat_timeout is None else timedelta(seconds=heartbeat_timeout)
    env.info = dataclasses.replace(env.info, attempt=attempt, heartbeat_timeout=timeout)
    return env


def change_activities() -> ChangeActivities:
    registry = new_registry()
    registry.register(HttpDeploy)
    return ChangeActivities(registry)


def apply_input(params: HttpDeployParams, step: str = "apply", **extra: Any) -> ApplyInput:
    return ApplyInput(
        change_id="chg-1",
        kind="http-deploy",
        step=step,
        target=WEB1,
        params=params.model_dump(),
        idempotency_key=idempotency_key("chg-1", step, "web-01"),
        **extra,
    )


async def test_server_fault_sets_jittered_retry_delay(
    params: HttpDeployParams, fleet_client: httpx.AsyncClient
) -> None:
    """A 503 is a TargetUnavailable carrying a jittered next_retry_delay (first attempt: <= 2 s)."""
    await fleet_client.post("/admin/faults", json={"fail_next": 1})

    with pytest.raises(ApplicationError) as caught:
        await HttpDeploy(CircuitBreakers()).apply(params, WEB1, idempotency_key=APPLY_KEY)

    error = caught.value
    assert (error.type, error.non_retryable, error.details) == (
        TARGET_UNAVAILABLE,
        False,
        ({"status": 503},),
    )
    assert error.message == (
        f"POST {params.base_url}/hosts/web-01/deploy for web-01 answered 503: "
        "injected fault: the fleet is unavailable"
    )
    assert error.next_retry_delay is not None
    assert timedelta(0) <= error.next_retry_delay <= timedelta(seconds=2)


async def test_breaker_opens_after_repeated_503s(
    params: HttpDeployParams, fleet_client: httpx.AsyncClient
) -> None:
    """Repeated 503s open the fleet's breaker; calls then fail fast until a probe succeeds."""
    clock = Clock()
    breakers = CircuitBreakers(failure_threshold=3, clock=clock)
    deploy = HttpDeploy(breakers)
    await fleet_client.post("/admin/faults", json={"fail_next": 4})
    types = []
    for _ in range(4):
        with pytest.raises(ApplicationError) as caught:
            await deploy.apply(params, WEB1, idempotency_key=APPLY_KEY)
        types.append(caught.value.type)

    assert types == [TARGET_UNAVAILABLE] * 3 + [CIRCUIT_OPEN]
    assert await faults(fleet_client) == {
        "fail_next": 1,
        "deploy_delay_ms": 0,
        "silent_drains": 0,
    }  # 4th never sent
    described = await deploy.describe(params, WEB1)
    assert (described.reachable, described.detail["error_type"]) == (False, CIRCUIT_OPEN)

    clock.now += 5  # the first cool-down
    with pytest.raises(ApplicationError) as probe:
        await deploy.apply(params, WEB1, idempotency_key=APPLY_KEY)
    assert probe.value.type == TARGET_UNAVAILABLE  # the probe met the last fault: open again
    assert breakers.snapshot() == {
        params.base_url: BreakerStatus(
            key=params.base_url, state=BreakerState.OPEN, failures=4, retry_in=10.0
        )
    }

    clock.now += 10
    applied = await deploy.apply(params, WEB1, idempotency_key=APPLY_KEY)
    assert applied.applied is True
    assert breakers.snapshot() == {
        params.base_url: BreakerStatus(key=params.base_url, state=BreakerState.CLOSED)
    }
    assert await ledger(fleet_client) == [(APPLY_KEY, "web-01", "1.0.0", "2.0.0")]


async def test_rejections_do_not_open_the_breaker(params: HttpDeployParams) -> None:
    """A 4xx is the API answering: ten unknown-host rejections leave the breaker closed."""
    breakers = CircuitBreakers(failure_threshold=3)
    deploy = HttpDeploy(breakers)
    for _ in range(10):
        with pytest.raises(ApplicationError) as caught:
            await deploy.apply(params, Target(id="web-99"), idempotency_key=APPLY_KEY)
        assert caught.value.type == TARGET_REJECTED

    assert breakers.snapshot() == {
        params.base_url: BreakerStatus(key=params.base_url, state=BreakerState.CLOSED)
    }


async def test_retried_attempt_reports_ledger_without_posting(
    params: HttpDeployParams, fleet_client: httpx.AsyncClient
) -> None:
    """A retried apply_change whose key is in the ledger returns it and sends no deploy."""
    activities = change_activities()
    await activity_env().run(activities.apply_change, apply_input(params))
    await fleet_client.post("/admin/faults", json={"fail_next": 1})  # a POST now would answer 503

    retried = await activity_env(attempt=2).run(activities.apply_change, apply_input(params))

    assert retried == ApplyResult(
        target_id="web-01",
        applied=False,
        detail=(
            f"already applied by an earlier attempt: {APPLY_KEY} deployed 1.0.0 -> 2.0.0 "
            "(ledger seq 1); nothing sent"
        ),
        before={"version": "1.0.0"},
        after={"version": "2.0.0"},
        replayed=True,
    )
    assert await faults(fleet_client) == {"fail_next": 1, "deploy_delay_ms": 0, "silent_drains": 0}
    assert await ledger(fleet_client) == [(APPLY_KEY, "web-01", "1.0.0", "2.0.0")]


async def test_retried_attempt_without_ledger_entry_deploys(
    params: HttpDeployParams, fleet_client: httpx.AsyncClient
) -> None:
    """A retried attempt whose first try never landed deploys normally, once."""
    result = await activity_env(attempt=3).run(
        change_activities().apply_change, apply_input(params)
    )

    assert (result.applied, result.detail) == (True, "deployed 1.0.0 -> 2.0.0 on web-01")
    assert await ledger(fleet_client) == [(APPLY_KEY, "web-01", "1.0.0", "2.0.0")]


async def test_retried_revert_reports_ledger_without_posting(
    params: HttpDeployParams, fleet_client: httpx.AsyncClient
) -> None:
    """A retried revert_change whose own key is in the ledger returns it and sends nothing."""
    activities = change_activities()
    revert = apply_input(params, step="revert", applied_key=APPLY_KEY)
    await activity_env().run(activities.apply_change, apply_input(params))
    await activity_env().run(activities.revert_change, revert)
    await fleet_client.post("/admin/faults", json={"fail_next": 1})

    retried = await activity_env(attempt=2).run(activities.revert_change, revert)

    assert retried == ApplyResult(
        target_id="web-01",
        applied=False,
        detail=(
            f"already reverted by an earlier attempt: {REVERT_KEY} deployed 2.0.0 -> 1.0.0 "
            "(ledger seq 2); nothing sent"
        ),
        before={"version": "2.0.0"},
        after={"version": "1.0.0"},
        replayed=True,
    )
    assert await faults(fleet_client) == {"fail_next": 1, "deploy_delay_ms": 0, "silent_drains": 0}
    assert len(await ledger(fleet_client)) == 2


async def test_apply_and_revert_heartbeat_their_stage(
    params: HttpDeployParams, fleet_client: httpx.AsyncClient
) -> None:
    """A slow deploy heartbeats {target, stage} as its stage moves and periodically in between.

    Beats go out as the SDK sends them (the first at once, then one per window of
    ``min(0.8 x heartbeat timeout, 1 s)`` with the latest details), so a stage shorter than a
    window (reading the host: one quick GET) may be passed over; the stages seen keep their order.
    """
    await fleet_client.post("/admin/faults", json={"deploy_delay_ms": 400})
    beats: list[Any] = []
    env = activity_env(heartbeat_timeout=0.15)
    env.on_heartbeat = lambda *details: beats.append(details[0])

    await env.run(kind.apply, params, WEB1, idempotency_key=APPLY_KEY)
    apply_beats = list(beats)
    beats.clear()
    await env.run(
        kind.revert_if_applied, params, WEB1, applied_key=APPLY_KEY, idempotency_key=REVERT_KEY
    )

    def stages(seen: list[Any]) -> list[str]:
        assert {b["target"] for b in seen} == {"web-01"}
        out = [b["stage"] for b in seen]
        return [s for i, s in enumerate(out) if i == 0 or out[i - 1] != s]

    def in_order(seen: list[str], stages: list[str]) -> bool:
        """``seen`` begins and ends as ``stages`` do and holds nothing else, in their order."""
        rest = iter(stages)
        return seen[0] == stages[0] and seen[-1] == stages[-1] and all(s in rest for s in seen)

    assert in_order(stages(apply_beats), ["started", "reading_host", "deploying"]), apply_beats
    assert in_order(stages(beats), ["started", "reading_ledger", "reverting"]), beats
    assert sum(b["stage"] == "deploying" for b in apply_beats) >= 3

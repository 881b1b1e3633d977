"""Jittered backoff, circuit breakers and heartbeats, against a real local HTTP server."""

from __future__ import annotations

import asyncio
import dataclasses
import random
import threading
from collections.abc import Iterator
from datetime import timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import httpx
import pytest
from structlog.testing import capture_logs
from temporalio.exceptions import ApplicationError
from temporalio.testing import ActivityEnvironment

from activities.resilience import (
    CircuitBreaker,
    CircuitBreakers,
    Heartbeat,
    jittered_delay,
    raise_retryable,
    retryable_error,
)
from workflows.errors import CIRCUIT_OPEN, TARGET_REJECTED, TARGET_UNAVAILABLE
from workflows.rollout_models import BreakerState, BreakerStatus


class Dependency:
    """A real HTTP server that answers ``status`` after ``delay`` seconds and counts requests."""

    def __init__(self) -> None:
        self.status = 503
        self.delay = 0.0
        self.calls = 0
        owner = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                owner.calls += 1
                threading.Event().wait(owner.delay)
                self.send_response(owner.status)
                self.send_header("Content-Length", "2")
                self.end_headers()
                self.wfile.write(b"{}")

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/"
        self.thread = threading.Thread(
            target=self.server.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True
        )

    async def get(self) -> int:
        """Call the dependency as a change kind would: retryable error unless 2xx."""
        async with httpx.AsyncClient(trust_env=False, timeout=5) as client:
            response = await client.get(self.url)
        if response.status_code >= 500:
            raise retryable_error(f"answered {response.status_code}", type=TARGET_UNAVAILABLE)
        if response.status_code >= 400:
            raise ApplicationError("rejected", type=TARGET_REJECTED, non_retryable=True)
        return response.status_code


@pytest.fixture
def dependency() -> Iterator[Dependency]:
    dep = Dependency()
    dep.thread.start()
    yield dep
    dep.server.shutdown()
    dep.server.server_close()


class Clock:
    """A monotonic clock that moves only when told to."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def breaker(clock: Clock) -> CircuitBreaker:
    """A breaker whose every cool-down is 30 s (escalation has tests of its own)."""
    return CircuitBreaker(
        "http://fleet", clock=clock, rng=random.Random(7), first_cool_down=timedelta(seconds=30)
    )


async def fail_times(breaker: CircuitBreaker, dep: Dependency, n: int) -> list[str | None]:
    types = []
    for _ in range(n):
        with pytest.raises(ApplicationError) as caught:
            await breaker.call(dep.get)
        types.append(caught.value.type)
    return types


def test_jitter_stays_within_the_window_and_varies() -> None:
    """Each delay lies in [0, min(cap, base * 2**attempt)] and the delays are not constant."""
    rng = random.Random(42)
    for attempt in range(12):
        window = min(60.0, 2.0**attempt)
        delays = [jittered_delay(attempt, rng=rng).total_seconds() for _ in range(200)]
        assert all(0.0 <= d <= window for d in delays), (attempt, min(delays), max(delays))
        assert len(set(delays)) == 200
        assert max(delays) > window / 2  # spread over the whole window, not bunched at 0


def test_jitter_respects_base_and_cap_for_huge_attempts() -> None:
    """A custom base scales the window; a huge attempt neither overflows nor exceeds the cap."""
    rng = random.Random(1)
    small = [
        jittered_delay(3, base=timedelta(milliseconds=100), rng=rng).total_seconds()
        for _ in range(100)
    ]
    huge = [jittered_delay(10_000, rng=rng) for _ in range(100)]

    assert all(0.0 <= d <= 0.8 for d in small)
    assert all(timedelta(0) <= d <= timedelta(seconds=60) for d in huge)


async def test_raise_retryable_uses_the_activity_attempt() -> None:
    """Inside an activity the delay window follows activity.info().attempt; the error retries."""
    env = ActivityEnvironment()
    env.info = dataclasses.replace(env.info, attempt=3)

    async def failing() -> None:
        raise_retryable("fleet down", type=TARGET_UNAVAILABLE, details={"status": 503})

    errors = []
    for _ in range(50):
        with pytest.raises(ApplicationError) as caught:
            await env.run(failing)
        errors.append(caught.value)

    assert [(e.type, e.non_retryable, e.message, e.details) for e in errors] == [
        (TARGET_UNAVAILABLE, False, "fleet down", ({"status": 503},))
    ] * 50
    delays = [e.next_retry_delay for e in errors]
    assert all(d is not None and timedelta(0) <= d <= timedelta(seconds=8) for d in delays)
    assert len(set(delays)) > 1


async def test_breaker_opens_after_threshold_and_fails_fast(
    breaker: CircuitBreaker, dependency: Dependency
) -> None:
    """Five consecutive failures open it; the sixth call fails fast without reaching the server."""
    assert await fail_times(breaker, dependency, 5) == [TARGET_UNAVAILABLE] * 5

    with pytest.raises(ApplicationError) as caught:
        await breaker.call(dependency.get)

    assert (caught.value.type, caught.value.non_retryable) == (CIRCUIT_OPEN, False)
    assert caught.value.details == ({"key": "http://fleet", "failures": 5, "retry_in": 30.0},)
    delay = caught.value.next_retry_delay
    assert delay is not None and timedelta(seconds=30) <= delay <= timedelta(seconds=35)
    assert dependency.calls == 5
    assert breaker.status() == BreakerStatus(
        key="http://fleet", state=BreakerState.OPEN, failures=5, retry_in=30.0
    )


async def test_fail_fast_delay_is_the_cool_down_left(
    breaker: CircuitBreaker, dependency: Dependency, clock: Clock
) -> None:
    """Twenty seconds into the cool-down a fail-fast error asks to retry in 10 s plus jitter."""
    await fail_times(breaker, dependency, 5)
    clock.now += 20

    with pytest.raises(ApplicationError) as caught:
        await breaker.call(dependency.get)

    delay = caught.value.next_retry_delay
    assert delay is not None and timedelta(seconds=10) <= delay <= timedelta(seconds=15)
    assert dependency.calls == 5


async def test_half_open_probe_success_closes(
    breaker: CircuitBreaker, dependency: Dependency, clock: Clock
) -> None:
    """After the cool-down one probe reaches the server; its success closes the breaker."""
    with capture_logs() as logs:
        await fail_times(breaker, dependency, 5)
        clock.now += 30
        dependency.status = 200
        assert breaker.state is BreakerState.HALF_OPEN

        assert await breaker.call(dependency.get) == 200
        assert await breaker.call(dependency.get) == 200

    assert dependency.calls == 7
    assert breaker.status() == BreakerStatus(key="http://fleet", state=BreakerState.CLOSED)
    assert [(e["log_level"], e["state"], e["previous"], e["failures"]) for e in logs] == [
        ("warning", "open", "closed", 5),
        ("info", "half_open", "open", 5),
        ("info", "closed", "half_open", 0),
    ]
    assert {e["key"] for e in logs} == {"http://fleet"}


async def test_half_open_probe_failure_reopens(
    breaker: CircuitBreaker, dependency: Dependency, clock: Clock
) -> None:
    """A failed probe opens the breaker again for a full cool-down; calls fail fast again."""
    await fail_times(breaker, dependency, 5)
    clock.now += 31

    assert await fail_times(breaker, dependency, 2) == [TARGET_UNAVAILABLE, CIRCUIT_OPEN]

    assert dependency.calls == 6
    assert breaker.status() == BreakerStatus(
        key="http://fleet", state=BreakerState.OPEN, failures=6, retry_in=30.0
    )


async def test_half_open_lets_one_probe_through(
    breaker: CircuitBreaker, dependency: Dependency, clock: Clock
) -> None:
    """While a slow probe is in flight, concurrent calls wait instead of piling on; then go."""
    await fail_times(breaker, dependency, 5)
    clock.now += 30
    dependency.status, dependency.delay = 200, 0.3

    calls = [asyncio.create_task(breaker.call(dependency.get)) for _ in range(4)]
    await asyncio.sleep(0.15)
    assert dependency.calls == 6, "only the probe reaches the dependency while it is in flight"
    results = await asyncio.gather(*calls, return_exceptions=True)

    assert results == [200] * 4
    assert dependency.calls == 9
    assert breaker.state is BreakerState.CLOSED


async def test_calls_behind_a_failed_probe_fail_fast_with_the_new_cool_down(
    breaker: CircuitBreaker, dependency: Dependency, clock: Clock
) -> None:
    """The probe fails: the calls that waited for it fail fast, told to come back after 30 s."""
    await fail_times(breaker, dependency, 5)
    clock.now += 30
    dependency.delay = 0.3

    results = await asyncio.gather(
        *(breaker.call(dependency.get) for _ in range(3)), return_exceptions=True
    )

    assert [getattr(r, "type", None) for r in results] == [TARGET_UNAVAILABLE] + [CIRCUIT_OPEN] * 2
    assert dependency.calls == 6
    for refused in results[1:]:
        assert isinstance(refused, ApplicationError)
        delay = refused.next_retry_delay
        assert delay is not None and timedelta(seconds=30) <= delay <= timedelta(seconds=35)


async def test_a_probe_without_a_verdict_within_probe_wait_refuses_with_a_short_delay(
    clock: Clock, dependency: Dependency
) -> None:
    """A probe that hangs: a call waits ``probe_wait``, then fails fast, to retry within 1 s."""
    breaker = CircuitBreaker(
        "http://fleet", clock=clock, rng=random.Random(7), probe_wait=timedelta(seconds=0.2)
    )
    await fail_times(breaker, dependency, 5)
    clock.now += 30
    dependency.status, dependency.delay = 200, 0.6
    probe = asyncio.create_task(breaker.call(dependency.get))
    await asyncio.sleep(0.05)

    with pytest.raises(ApplicationError) as caught:
        await breaker.call(dependency.get)

    assert caught.value.type == CIRCUIT_OPEN
    assert "another call is probing it now (waited 0.2s for its verdict)" in caught.value.message
    delay = caught.value.next_retry_delay
    assert delay is not None and delay <= timedelta(seconds=1)
    assert await probe == 200
    assert dependency.calls == 6


async def test_success_resets_the_count_and_rejections_do_not_count(
    breaker: CircuitBreaker, dependency: Dependency
) -> None:
    """Failures must be consecutive; a non-retryable 4xx is an answer, not a failure."""
    await fail_times(breaker, dependency, 4)
    dependency.status = 404
    assert await fail_times(breaker, dependency, 10) == [TARGET_REJECTED] * 10
    dependency.status = 503

    assert await fail_times(breaker, dependency, 4) == [TARGET_UNAVAILABLE] * 4

    assert breaker.status() == BreakerStatus(
        key="http://fleet", state=BreakerState.CLOSED, failures=4
    )


async def test_cancelled_probe_frees_the_slot(
    breaker: CircuitBreaker, dependency: Dependency, clock: Clock
) -> None:
    """A probe cancelled mid-call neither closes nor opens the breaker; the next call probes."""
    await fail_times(breaker, dependency, 5)
    clock.now += 30
    dependency.status, dependency.delay = 200, 0.5
    probe = asyncio.create_task(breaker.call(dependency.get))
    await asyncio.sleep(0.1)
    probe.cancel()
    with pytest.raises(asyncio.CancelledError):
        await probe
    dependency.delay = 0.0

    assert breaker.state is BreakerState.HALF_OPEN
    assert await breaker.call(dependency.get) == 200
    assert breaker.status() == BreakerStatus(key="http://fleet", state=BreakerState.CLOSED)


def test_breakers_snapshot_one_per_key(clock: Clock) -> None:
    """The registry hands out one breaker per key and snapshots them all, sorted by key."""
    registry = CircuitBreakers(failure_threshold=1, clock=clock)
    b = registry.get("http://b")
    assert registry.get("http://b") is b
    registry.get("http://a")
    b.record_failure()
    clock.now += 2

    assert registry.snapshot() == {
        "http://a": BreakerStatus(key="http://a", state=BreakerState.CLOSED),
        "http://b": BreakerStatus(
            key="http://b", state=BreakerState.OPEN, failures=1, retry_in=3.0
        ),
    }


async def test_heartbeat_beats_in_background_with_details() -> None:
    """Inside an activity, details are heartbeated at once, on update and periodically.

    After the first, beats go out once per window (``min(0.8 x 0.15 s, 1 s)``): the update comes
    at the end of the first window, the periodic beats (every 0.05 s) once per window after it.
    """
    env = ActivityEnvironment()
    env.info = dataclasses.replace(env.info, heartbeat_timeout=timedelta(seconds=0.15))
    beats: list[Any] = []
    env.on_heartbeat = lambda *details: beats.append(details)

    async def work() -> None:
        async with Heartbeat(target="web-01", stage="reading") as beat:
            beat.update(stage="deploying")
            await asyncio.sleep(0.3)

    await env.run(work)
    count = len(beats)
    await asyncio.sleep(0.2)

    assert beats[:2] == [
        ({"target": "web-01", "stage": "reading"},),
        ({"target": "web-01", "stage": "deploying"},),
    ]
    assert set(map(str, beats[2:])) == {str(({"target": "web-01", "stage": "deploying"},))}
    assert 3 <= count <= 5, beats  # 0.3 s: at most one per 0.12 s window, and the last one
    assert len(beats) == count  # the background task stopped with the block


async def test_a_burst_of_updates_is_sent_once_per_window_with_the_latest_details() -> None:
    """Fifty updates within one window cost one beat at once and one at the window's end.

    The SDK sends the server at most one beat per ``min(0.8 x heartbeat timeout, 1 s)``, the
    latest, after encoding every one it was handed; the heartbeat now hands it only those. Leaving
    the block hands over what is still waiting (the checkpoint a retry reads).
    """
    env = ActivityEnvironment()
    env.info = dataclasses.replace(env.info, heartbeat_timeout=timedelta(seconds=10))  # window 1 s
    beats: list[Any] = []
    env.on_heartbeat = lambda *details: beats.append(details[0]["n"])

    async def work() -> list[int]:
        async with Heartbeat(n=0) as beat:
            for n in range(1, 51):
                beat.update(n=n)
            await asyncio.sleep(1.1)  # the window ends: the latest goes out
            seen = list(beats)
            beat.update(n=51)
            beat.update(n=52)  # within the next window: still waiting when the block ends
        return seen

    in_first_window = await env.run(work)
    assert in_first_window == [0, 50]
    assert beats == [0, 50, 52]


async def test_nested_heartbeat_beats_through_the_outer_one() -> None:
    """A heartbeat inside another merges its details into the outer stream; none interleave.

    ``reading_host`` and ``deploying`` come in one window: only the later one is sent.
    """
    env = ActivityEnvironment()
    env.info = dataclasses.replace(env.info, heartbeat_timeout=timedelta(seconds=0.15))
    beats: list[Any] = []
    env.on_heartbeat = lambda *details: beats.append(details[0])

    async def work() -> None:
        async with Heartbeat(target="web-01", stage="apply") as outer:
            async with Heartbeat(target="web-01", stage="reading_host") as inner:
                inner.update(stage="deploying")
                await asyncio.sleep(0.2)
            assert outer.details == {"target": "web-01", "stage": "apply"}
            await asyncio.sleep(0.1)

    await env.run(work)

    stages = [b["stage"] for b in beats]
    assert [s for i, s in enumerate(stages) if i == 0 or stages[i - 1] != s] == [
        "apply",
        "deploying",
        "apply",
    ]
    assert {b["target"] for b in beats} == {"web-01"}


async def test_heartbeat_outside_an_activity_does_nothing() -> None:
    """Outside an activity the heartbeat is a no-op, so kinds also run in plain tests."""
    async with Heartbeat(target="web-01", stage="reading") as beat:
        beat.update(stage="deploying")

    assert beat.details == {"target": "web-01", "stage": "deploying"}


async def test_the_first_cool_down_is_short_and_each_failed_probe_doubles_it(
    clock: Clock, dependency: Dependency
) -> None:
    """5 s after the threshold's failures, then 10, 20, 30, 30 s after each failed probe."""
    breaker = CircuitBreaker("http://fleet", clock=clock, rng=random.Random(7))
    await fail_times(breaker, dependency, 5)
    cool_downs = [breaker.status().retry_in]
    for _ in range(4):
        clock.now += cool_downs[-1]
        assert await fail_times(breaker, dependency, 1) == [TARGET_UNAVAILABLE]  # the probe
        cool_downs.append(breaker.status().retry_in)
    assert cool_downs == [5.0, 10.0, 20.0, 30.0, 30.0]

    clock.now += 30
    dependency.status = 200
    assert await breaker.call(dependency.get) == 200  # closed: the next opening starts at 5 s
    dependency.status = 503
    await fail_times(breaker, dependency, 5)
    assert breaker.status().retry_in == 5.0

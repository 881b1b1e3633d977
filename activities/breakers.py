"""Circuit breakers, one per target API, in the worker process.

A :class:`CircuitBreaker` per target API (keyed by its base URL): after ``failure_threshold``
consecutive failures it opens, and for a cool-down every call fails fast with a retryable
``CircuitOpen`` error whose ``next_retry_delay`` is the cool-down left plus jitter, without touching
the API. Then one half-open probe is let through: success closes the breaker, failure opens it
again for twice the cool-down. The first cool-down is ``first_cool_down`` (5 s), doubled by each
failed probe up to ``cool_down`` (30 s): a short brownout costs seconds after it ends, a long outage
is probed twice a minute. A call that arrives while the probe is in flight waits for its verdict
(up to ``probe_wait``) instead of failing: it goes ahead the moment the probe succeeds, or fails
fast with the new cool-down if the probe failed; so a recovered API is used at once, and waiting
calls do not spend their activity's attempts. Transitions are logged;
:meth:`CircuitBreakers.snapshot` feeds status displays.
"""

from __future__ import annotations

import asyncio
import random
import threading
import time
from collections.abc import Awaitable, Callable
from datetime import timedelta
from typing import Any, TypeVar

import structlog
from temporalio.exceptions import ApplicationError

from workflows.errors import CIRCUIT_OPEN
from workflows.rollout_models import BreakerState, BreakerStatus

__all__ = ["CircuitBreaker", "CircuitBreakers", "breakers", "counts_as_failure"]

T = TypeVar("T")

# The logger keeps the name it had before the breakers had a module of their own: log queries
# and alerts select "circuit breaker state changed" lines by it.
log = structlog.get_logger("activities.resilience")

_rng = random.Random()


FIRST_COOL_DOWN = timedelta(seconds=5)
"""How long a breaker stays open the first time; failed probes double it up to its cool_down."""
PROBE_WAIT = timedelta(seconds=20)
"""How long a call waits for another call's half-open probe before it fails fast (default)."""
PROBE_POLL = 0.05
"""Seconds between looks at a half-open breaker while waiting for its probe's verdict."""


def counts_as_failure(exc: BaseException) -> bool:
    """Whether an exception is the dependency failing: any retryable error.

    A non-retryable ``ApplicationError`` (a 4xx, a validation problem) is the dependency working
    and saying no; cancellation says nothing about the dependency at all.
    """
    if not isinstance(exc, Exception):
        return False
    return not (isinstance(exc, ApplicationError) and exc.non_retryable)


class CircuitBreaker:
    """A circuit breaker for one dependency; see the module docstring for the states.

    Safe to share between the tasks of one event loop and between threads: state changes happen
    under a lock that is never held across an ``await``.

    Args:
        key: what the breaker protects (a target API's base URL), for errors and logs.
        failure_threshold: consecutive failures that open it.
        cool_down: the longest it stays open before a probe is let through.
        first_cool_down: how long it stays open the first time (after ``failure_threshold``
            failures); each failed probe doubles it, up to ``cool_down``.
        jitter: the largest random delay added to the cool-down left in a fail-fast error.
        probe_wait: how long :meth:`call` waits for another call's half-open probe to decide
            before it fails fast itself (then with a delay of at most a second).
        clock: monotonic seconds (tests inject a fake clock; waiting for a probe uses the event
            loop's clock).
        rng: the random source of the jitter.
    """

    def __init__(
        self,
        key: str,
        *,
        failure_threshold: int = 5,
        cool_down: timedelta = timedelta(seconds=30),
        first_cool_down: timedelta = FIRST_COOL_DOWN,
        jitter: timedelta = timedelta(seconds=5),
        probe_wait: timedelta = PROBE_WAIT,
        clock: Callable[[], float] = time.monotonic,
        rng: random.Random | None = None,
    ) -> None:
        if failure_threshold < 1:
            raise ValueError("failure_threshold must be at least 1")
        self.key = key
        self.failure_threshold = failure_threshold
        self.cool_down = cool_down.total_seconds()
        self.first_cool_down = min(first_cool_down.total_seconds(), self.cool_down)
        self._cool = self.first_cool_down  # the cool-down in force
        self.jitter = jitter.total_seconds()
        self.probe_wait = probe_wait.total_seconds()
        self._clock = clock
        self._rng = rng or _rng
        self._lock = threading.Lock()
        self._state = BreakerState.CLOSED
        self._failures = 0
        self._opened_at = 0.0
        self._probing = False

    @property
    def state(self) -> BreakerState:
        """The current state; an open breaker whose cool-down is over reads ``half_open``."""
        with self._lock:
            if self._state is BreakerState.OPEN and self._remaining() <= 0:
                return BreakerState.HALF_OPEN
            return self._state

    def status(self) -> BreakerStatus:
        """The breaker as status displays show it."""
        with self._lock:
            state, remaining = self._state, self._remaining()
            if state is BreakerState.OPEN and remaining <= 0:
                state = BreakerState.HALF_OPEN
            return BreakerStatus(
                key=self.key,
                state=state,
                failures=self._failures,
                retry_in=round(remaining, 3) if state is BreakerState.OPEN else 0.0,
            )

    def _remaining(self) -> float:
        return max(0.0, self._opened_at + self._cool - self._clock())

    def _transition(self, state: BreakerState) -> None:
        """Change state (lock held) and log it."""
        if state is self._state:
            return
        previous, self._state = self._state, state
        log_event = log.warning if state is BreakerState.OPEN else log.info
        log_event(
            "circuit breaker state changed",
            key=self.key,
            state=state.value,
            previous=previous.value,
            failures=self._failures,
        )

    def _admit(self) -> tuple[bool, int, float]:
        """(may go ahead, failures, cool-down left): a half-open breaker admits one probe."""
        with self._lock:
            if self._state is BreakerState.CLOSED:
                return True, 0, 0.0
            remaining = self._remaining()
            if self._state is BreakerState.OPEN and remaining <= 0:
                self._transition(BreakerState.HALF_OPEN)
            if self._state is BreakerState.HALF_OPEN and not self._probing:
                self._probing = True
                return True, 0, 0.0
            return False, self._failures, remaining

    def _refusal(self, failures: int, remaining: float, waited: float) -> ApplicationError:
        if remaining > 0:
            why = (
                f"open after {failures} consecutive failures; a probe is let through in "
                f"{remaining:.1f}s"
            )
            delay = remaining + self._rng.uniform(0.0, self.jitter)
        else:
            # The probe decides within its own timeout: try again soon, not after a cool-down.
            why = "half-open; another call is probing it now" + (
                f" (waited {waited:.1f}s for its verdict)" if waited else ""
            )
            delay = self._rng.uniform(0.0, min(self.jitter, 1.0))
        return ApplicationError(
            f"circuit breaker for {self.key} is {why}; not calling it",
            {"key": self.key, "failures": failures, "retry_in": round(remaining, 3)},
            type=CIRCUIT_OPEN,
            next_retry_delay=timedelta(seconds=delay),
        )

    def acquire(self) -> None:
        """Ask to make a call: returns when it may go ahead, else raises the fail-fast error.

        Raises:
            ApplicationError: ``CircuitOpen``, retryable, with ``next_retry_delay`` set, while
                the breaker is open (the cool-down left plus jitter) or while another call is the
                half-open probe (at most a second).
        """
        admitted, failures, remaining = self._admit()
        if not admitted:
            raise self._refusal(failures, remaining, 0.0)

    async def acquire_waiting(self) -> None:
        """:meth:`acquire`, but while another call is the half-open probe, await its verdict.

        Polls every :data:`PROBE_POLL` seconds for up to ``probe_wait``: the probe's success lets
        this call go ahead at once; its failure (the breaker open again) or no verdict within
        ``probe_wait`` raises the fail-fast error.
        """
        loop = asyncio.get_running_loop()
        began = loop.time()
        while True:
            admitted, failures, remaining = self._admit()
            if admitted:
                return
            waited = loop.time() - began
            if remaining > 0 or waited >= self.probe_wait:
                raise self._refusal(failures, remaining, waited)
            await asyncio.sleep(PROBE_POLL)

    def record_success(self) -> None:
        """A call succeeded: the breaker closes and the failure count restarts."""
        with self._lock:
            self._probing = False
            self._failures = 0
            self._transition(BreakerState.CLOSED)

    def record_failure(self) -> None:
        """A call failed: a failed probe, or the threshold's worth of failures, opens the breaker."""
        with self._lock:
            self._failures += 1
            probe_failed = self._state is BreakerState.HALF_OPEN
            self._probing = False
            if self._state is BreakerState.OPEN:
                return  # a call that started before the breaker opened; keep the cool-down
            if probe_failed or self._failures >= self.failure_threshold:
                self._cool = (
                    min(self.cool_down, self._cool * 2) if probe_failed else self.first_cool_down
                )
                self._opened_at = self._clock()
                self._transition(BreakerState.OPEN)

    def release(self) -> None:
        """A call ended without a verdict on the dependency (cancelled): free the probe slot."""
        with self._lock:
            self._probing = False

    async def call(
        self,
        fn: Callable[[], Awaitable[T]],
        *,
        is_failure: Callable[[BaseException], bool] = counts_as_failure,
    ) -> T:
        """Run ``fn()`` through the breaker.

        Args:
            fn: the call to the dependency.
            is_failure: which exceptions count as the dependency failing (default: retryable
                ones); others count as success (the dependency answered), except cancellation.

        Raises:
            ApplicationError: ``CircuitOpen`` without calling ``fn`` (see
                :meth:`acquire_waiting`); otherwise whatever ``fn`` raises.
        """
        await self.acquire_waiting()
        try:
            result = await fn()
        except BaseException as exc:
            if is_failure(exc):
                self.record_failure()
            elif isinstance(exc, Exception):
                self.record_success()
            else:
                self.release()
            raise
        self.record_success()
        return result


class CircuitBreakers:
    """The worker's circuit breakers, one per key, created on first use with shared settings.

    Args:
        failure_threshold: see :class:`CircuitBreaker`.
        cool_down: see :class:`CircuitBreaker`.
        first_cool_down: see :class:`CircuitBreaker`.
        jitter: see :class:`CircuitBreaker`.
        probe_wait: see :class:`CircuitBreaker`.
        clock: see :class:`CircuitBreaker`.
        rng: see :class:`CircuitBreaker`.
    """

    def __init__(
        self,
        *,
        failure_threshold: int = 5,
        cool_down: timedelta = timedelta(seconds=30),
        first_cool_down: timedelta = FIRST_COOL_DOWN,
        jitter: timedelta = timedelta(seconds=5),
        probe_wait: timedelta = PROBE_WAIT,
        clock: Callable[[], float] = time.monotonic,
        rng: random.Random | None = None,
    ) -> None:
        self._settings: dict[str, Any] = {
            "failure_threshold": failure_threshold,
            "cool_down": cool_down,
            "first_cool_down": first_cool_down,
            "jitter": jitter,
            "probe_wait": probe_wait,
            "clock": clock,
            "rng": rng,
        }
        self._lock = threading.Lock()
        self._breakers: dict[str, CircuitBreaker] = {}

    def get(self, key: str) -> CircuitBreaker:
        """The breaker for ``key``, created closed on first use."""
        with self._lock:
            breaker = self._breakers.get(key)
            if breaker is None:
                breaker = self._breakers[key] = CircuitBreaker(key, **self._settings)
            return breaker

    def snapshot(self) -> dict[str, BreakerStatus]:
        """Every breaker's status by key, sorted by key."""
        with self._lock:
            found = sorted(self._breakers.items())
        return {key: breaker.status() for key, breaker in found}


breakers = CircuitBreakers()
"""The worker process's breakers; change kinds use them unless given their own."""

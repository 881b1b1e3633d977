"""Resilience for activities that call other systems: jittered retries, circuit breakers, heartbeats.

- :mod:`activities.backoff`: a full-jitter delay handed to the server as
  ``ApplicationError(next_retry_delay=...)`` (:func:`raise_retryable`), because Temporal's
  ``RetryPolicy`` backs off without jitter and activities failing together would retry together.
- :mod:`activities.breakers`: a :class:`CircuitBreaker` per target API in the worker process; open,
  it fails calls fast with a retryable ``CircuitOpen`` error until a half-open probe succeeds.
- :mod:`activities.heartbeat`: :class:`Heartbeat` heartbeats from a background task while an
  activity works, so a dead worker is noticed within the heartbeat timeout and cancellation
  reaches the activity.

Every name is re-exported here, so ``from activities.resilience import …`` keeps working.
"""

from __future__ import annotations

from activities.backoff import current_attempt, jittered_delay, raise_retryable, retryable_error
from activities.breakers import (
    FIRST_COOL_DOWN,
    PROBE_POLL,
    PROBE_WAIT,
    CircuitBreaker,
    CircuitBreakers,
    breakers,
    counts_as_failure,
)
from activities.heartbeat import Heartbeat

__all__ = [
    "FIRST_COOL_DOWN",
    "PROBE_POLL",
    "PROBE_WAIT",
    "CircuitBreaker",
    "CircuitBreakers",
    "Heartbeat",
    "breakers",
    "counts_as_failure",
    "current_attempt",
    "jittered_delay",
    "raise_retryable",
    "retryable_error",
]

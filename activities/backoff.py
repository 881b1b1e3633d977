"""Jittered retries for activities that call other systems.

Temporal's ``RetryPolicy`` backs off exponentially but without jitter, so many activities failing
together retry together. Activities here compute a full-jitter delay themselves and hand it to the
server as ``ApplicationError(next_retry_delay=...)`` (:func:`raise_retryable`).
"""

from __future__ import annotations

import random
from datetime import timedelta
from typing import Any, NoReturn

from temporalio import activity
from temporalio.exceptions import ApplicationError

__all__ = ["current_attempt", "jittered_delay", "raise_retryable", "retryable_error"]

_rng = random.Random()


def jittered_delay(
    attempt: int,
    *,
    base: timedelta = timedelta(seconds=1),
    cap: timedelta = timedelta(seconds=60),
    rng: random.Random | None = None,
) -> timedelta:
    """Full-jitter exponential backoff: uniform in ``[0, min(cap, base * 2**attempt)]``.

    Spreading retries uniformly over the whole window keeps activities that failed together from
    retrying together ("full jitter", AWS Architecture Blog, 2015).

    Args:
        attempt: the attempt that just failed (Temporal counts from 1).
        base: the window of attempt 0.
        cap: the largest window.
        rng: the random source (tests pass a seeded one).
    """
    ceiling = cap.total_seconds()
    # Beyond 2**64 the window is the cap anyway; stop before the float grows huge.
    window = min(ceiling, base.total_seconds() * 2.0 ** min(max(attempt, 0), 64))
    return timedelta(seconds=(rng or _rng).uniform(0.0, window))


def current_attempt() -> int:
    """The running activity's attempt (from 1), or 1 outside an activity."""
    return activity.info().attempt if activity.in_activity() else 1


def retryable_error(
    message: str, *, type: str, attempt: int | None = None, details: Any = None
) -> ApplicationError:
    """A retryable ``ApplicationError`` whose ``next_retry_delay`` is :func:`jittered_delay`.

    Args:
        message: what failed, for people.
        type: the error type (a constant of :mod:`workflows.errors`).
        attempt: the failed attempt; default: the running activity's (1 outside an activity).
        details: one detail value carried with the error (e.g. ``{"status": 503}``).
    """
    n = current_attempt() if attempt is None else attempt
    return ApplicationError(
        message,
        *(() if details is None else (details,)),
        type=type,
        next_retry_delay=jittered_delay(n),
    )


def raise_retryable(
    message: str, *, type: str, attempt: int | None = None, details: Any = None
) -> NoReturn:
    """Raise :func:`retryable_error`; use ``raise retryable_error(...) from exc`` to chain a cause."""
    raise retryable_error(message, type=type, attempt=attempt, details=details)

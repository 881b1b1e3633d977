"""What stops a rollout, and what went wrong: the unwind exception and the failure helpers.

A leaf of workflow code (``temporalio.exceptions``, pydantic and the models only), shared by the
saga, the workflows and their collaborators without an import cycle.

Only failures Temporal reports (activity, child, cancellation, our ``ApplicationError``) and an
operator's or the rollout's own :class:`Unwind` may unwind a saga (:func:`compensable`). A bug in
workflow code fails the workflow *task* instead, which Temporal retries until a fixed worker is
deployed: nothing is compensated on the strength of a bug.
"""

from __future__ import annotations

import asyncio

from pydantic import ValidationError
from temporalio.exceptions import (
    ActivityError,
    ApplicationError,
    ChildWorkflowError,
    is_cancelled_exception,
)

from workflows.models import Outcome


class Unwind(Exception):
    """Stop the rollout and compensate (carries the outcome and why)."""

    def __init__(self, outcome: Outcome, message: str) -> None:
        super().__init__(message)
        self.outcome = outcome
        self.message = message


def failure_of(exc: BaseException) -> tuple[str, str]:
    """The real message and error type behind an activity/child failure (unwraps ``.cause``)."""
    inner: BaseException = exc
    while isinstance(inner, ActivityError | ChildWorkflowError) and inner.cause is not None:
        inner = inner.cause
    if isinstance(inner, ApplicationError):
        return inner.message, inner.type or "ApplicationError"
    return str(inner) or type(inner).__name__, type(inner).__name__


def compensable(exc: BaseException) -> bool:
    """Failures that mean "the world said no", as opposed to a bug in workflow code."""
    # ValidationError: the workflow lists it in failure_exception_types so that undecodable input
    # fails the run at once; raised after mutations began, it must unwind like any failure.
    return isinstance(
        exc,
        asyncio.CancelledError
        | ActivityError
        | ChildWorkflowError
        | ApplicationError
        | ValidationError
        | Unwind,
    )


def stop_reason(exc: BaseException) -> str:
    """Why a rollout stopped, in words: the unwind's message, a cancellation, or the failure."""
    if isinstance(exc, Unwind):
        return exc.message
    if is_cancelled_exception(exc):
        return "the workflow was cancelled"
    message, kind = failure_of(exc)
    return f"{kind}: {message}"

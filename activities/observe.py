"""Each mutation attempt, observed: one span, log fields, and counters (docs/observability.md).

Every line logged during an attempt of ``apply_change`` or ``revert_change`` — by changeguard or
by the change kind — carries the target, the idempotency key, a checksum of the mutation's input
(``input_sha256``: the same key with a different checksum means the input changed between
attempts) and the attempt number; a retry's first line says which attempt it is.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass

import opentelemetry.trace
import structlog
from opentelemetry.trace import Span, Status, StatusCode
from temporalio import activity

from workflows.models import ApplyInput, ApplyResult

log = structlog.get_logger(__name__)
TRACER = "changeguard.activities"


def input_checksum(inp: ApplyInput) -> str:
    """A short SHA-256 of what the mutation is asked to do (kind, step, target, params, keys)."""
    material = inp.model_dump(mode="json")
    digest = hashlib.sha256(json.dumps(material, sort_keys=True, default=str).encode())
    return digest.hexdigest()[:16]


def attempt_number() -> int:
    """The running activity's attempt (1 outside an activity)."""
    try:
        return activity.info().attempt
    except RuntimeError:  # outside an activity (a kind's unit test)
        return 1


def _count(name: str, description: str, **labels: str) -> None:
    try:
        meter = activity.metric_meter()
    except RuntimeError:
        return
    meter.create_counter("changeguard_" + name, description).add(1, labels)


@dataclass
class Attempt:
    """The attempt being observed; :meth:`done` records its result."""

    span: Span
    inp: ApplyInput

    def done(self, result: ApplyResult) -> None:
        """Record the attempt's result on its span and in ``changeguard_mutation_results``."""
        outcome = "applied" if result.applied else "replayed" if result.replayed else "unchanged"
        self.span.set_attribute("mutation.result", outcome)
        _count(
            "mutation_results",
            "mutation and compensation attempts by result",
            kind=self.inp.kind,
            step=self.inp.step,
            result=outcome,
        )


@contextmanager
def attempt(inp: ApplyInput) -> Iterator[Attempt]:
    """Observe one attempt of a mutation (``step`` apply) or compensation (``step`` revert)."""
    number = attempt_number()
    fields: dict[str, str | int] = {
        "target": inp.target.id,
        "idempotency_key": inp.idempotency_key,
        "input_sha256": input_checksum(inp),
        "attempt": number,
        "step": inp.step,
    }
    _count("mutation_attempts", "mutation and compensation attempts", kind=inp.kind, step=inp.step)
    if number > 1:
        _count("mutation_retries", "retried mutation attempts", kind=inp.kind, step=inp.step)
    tracer = opentelemetry.trace.get_tracer(TRACER)
    attributes: dict[str, str | int] = {
        "change.id": inp.change_id,
        "change.kind": inp.kind,
        "target.id": inp.target.id,
        "idempotency.key": inp.idempotency_key,
        "mutation.step": inp.step,
        "mutation.input_sha256": fields["input_sha256"],
        "mutation.attempt": number,
    }
    with (
        structlog.contextvars.bound_contextvars(**fields),
        tracer.start_as_current_span(f"{inp.step}.attempt", attributes=attributes) as current,
    ):
        if number > 1:
            log.info(f"retrying {inp.step} of {inp.target.id}: attempt {number}")
        else:
            log.info(f"{inp.step} of {inp.target.id}: attempt 1")
        try:
            yield Attempt(current, inp)
        except BaseException as exc:
            current.set_attribute("mutation.result", "failed")
            current.set_status(Status(StatusCode.ERROR, f"{type(exc).__name__}: {exc}"[:200]))
            _count(
                "mutation_results",
                "mutation and compensation attempts by result",
                kind=inp.kind,
                step=inp.step,
                result="failed",
            )
            raise


def many_started(items: Sequence[ApplyInput]) -> None:
    """Log and count one attempt of ``apply_change_many`` (each target's line says the rest)."""
    if not items:
        return
    number = attempt_number()
    first = items[0]
    for item in items:
        _count(
            "mutation_attempts",
            "mutation and compensation attempts",
            kind=item.kind,
            step=item.step,
        )
        if number > 1:
            _count("mutation_retries", "retried mutation attempts", kind=item.kind, step=item.step)
    what = f"{first.step} of {len(items)} targets from {first.target.id}"
    log.info(
        f"retrying {what}: attempt {number}" if number > 1 else f"{what}: attempt 1",
        idempotency_keys=[i.idempotency_key for i in items][:50],
        input_sha256=[input_checksum(i) for i in items][:50],
        attempt=number,
    )

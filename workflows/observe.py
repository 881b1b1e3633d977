"""Spans and metrics from workflow code, replay-safe (docs/observability.md names each one).

Spans go through the OpenTelemetry API: with tracing configured (``worker/telemetry.py``) the
global provider is the SDK's replay-safe one (span ids from the workflow's seeded random, spans
not re-ended while history replays), and without it every span is a no-op. Metrics go through
``workflow.metric_meter()``, which records nothing while replaying. Neither issues a command, so
neither can change what a workflow does (tests/replay proves the histories still replay).

Every span and metric names its change: spans carry ``change.id``; metrics carry bounded labels
only (rule ids, statuses, phases, kinds — never a change id).
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Iterator, Mapping
from contextlib import contextmanager
from datetime import datetime
from typing import Any, TypeVar, cast

from temporalio import workflow
from temporalio.exceptions import TemporalError

with workflow.unsafe.imports_passed_through():
    import opentelemetry.trace
    from opentelemetry.trace import Span, Status, StatusCode

PREFIX = "changeguard_"
TRACER = "changeguard.workflows"

Attr = str | int | float | bool
T = TypeVar("T")


def change_id() -> str:
    """The change the running workflow belongs to (children are ``<change>/<what>``)."""
    return workflow.info().workflow_id.split("/", 1)[0]


def _clean(attributes: Mapping[str, Any]) -> dict[str, Attr]:
    out: dict[str, Attr] = {}
    for key, value in attributes.items():
        if value is None:
            continue
        if isinstance(value, str | int | float | bool):
            out[key] = value
        elif isinstance(value, list | tuple):
            out[key] = ",".join(str(v) for v in value)
        else:
            out[key] = str(getattr(value, "value", value))
    return out


@contextmanager
def span(
    name: str,
    attributes: Mapping[str, Any] | None = None,
    *,
    expected: tuple[type[BaseException], ...] = (),
) -> Iterator[Span]:
    """A span around a block of workflow code, with ``change.id`` and the given attributes.

    A failure Temporal reports (an activity's, a child's, a cancellation, an ``ApplicationError``)
    or one of ``expected`` ends the span with an error status. Anything else — a bug failing the
    workflow task, the SDK evicting the workflow — is recorded as the exception, which makes the
    SDK's replay-safe span skip ending: the retried task (or the next replay) ends it once.
    """
    tracer = opentelemetry.trace.get_tracer(TRACER)
    attrs = {"change.id": change_id(), **_clean(attributes or {})}
    with tracer.start_as_current_span(
        name, attributes=attrs, record_exception=False, set_status_on_exception=False
    ) as current:
        try:
            yield current
        except BaseException as exc:
            if isinstance(exc, (TemporalError, asyncio.CancelledError, *expected)):
                fail(current, f"{type(exc).__name__}: {exc}")
            else:
                current.record_exception(exc)
            raise


def set_attributes(current: Span, attributes: Mapping[str, Any]) -> None:
    """Set attributes on a span (``None`` values are left out, enums by value)."""
    current.set_attributes(_clean(attributes))


def fail(current: Span, why: str) -> None:
    """Mark a span as failed with a short description."""
    current.set_status(Status(StatusCode.ERROR, why[:200]))


def count(name: str, description: str, value: int = 1, **labels: Attr) -> None:
    """Add to a ``changeguard_<name>`` counter (not while replaying)."""
    with _never_fails(name):
        counter = workflow.metric_meter().create_counter(PREFIX + name, description)
        counter.add(value, _labels(labels))


def count_in_validator(name: str, description: str, **labels: Attr) -> None:
    """Add one to a counter from an update validator, which runs live even in a replaying task.

    ``workflow.metric_meter()`` drops every recording while the task replays, and a validator's
    refusal (which never enters history, so is never validated again) may run in such a task.
    """
    if workflow.unsafe.is_replaying_history_events():
        return
    with _never_fails(name):
        meter: Any = workflow.metric_meter()
        meter = getattr(meter, "_underlying", meter)  # the SDK's replay-safe wrapper's meter
        meter.create_counter(PREFIX + name, description).add(1, _labels(labels))


def seconds(name: str, description: str, value: float, **labels: Attr) -> None:
    """Record a duration in seconds in a ``changeguard_<name>`` histogram (not while replaying)."""
    with _never_fails(name):
        histogram = workflow.metric_meter().create_histogram_float(PREFIX + name, description, "s")
        histogram.record(max(value, 0.0), _labels(labels))


@contextmanager
def _never_fails(name: str) -> Iterator[None]:
    """A metric that cannot be recorded is logged: it must never fail a task or a validator."""
    try:
        yield
    except Exception as exc:
        workflow.logger.warning(
            "metric not recorded", extra={"metric": PREFIX + name, "error": repr(exc)}
        )


def _labels(labels: Mapping[str, Attr]) -> dict[str, Attr]:
    return {k: _label(v) for k, v in labels.items()}


def _label(value: Attr) -> Attr:
    """Label values stay short (a label is an index key in Prometheus)."""
    return value[:128] if isinstance(value, str) else value


# ------------------------------------------------------------------ span attributes


def report_attributes(report: Any) -> dict[str, Any]:
    """A gate's span attributes from its report."""
    return {
        "gate.decision": report.decision,
        "gate.report_hash": report.report_hash,
        "gate.checks": len(report.checks),
        "gate.failing": [c.rule_id for c in report.failures][:20],
    }


def spec_attributes(spec: Any) -> dict[str, Any]:
    """A check's span attributes from its spec (the status comes with the result)."""
    return {
        "rule.id": spec.rule or spec.guardrail,
        "guardrail": spec.guardrail,
        "check.category": spec.category,
        "check.mode": spec.mode,
        "check.source": spec.source,
        "check.owner": spec.owner,
    }


def check_finished(current: Span, result: Any) -> None:
    """Set a check's status (and owner, duration) on its span; fail and error mark it failed."""
    set_attributes(
        current,
        {
            "check.status": result.status,
            "check.owner": result.owner or None,
            "check.duration_ms": result.duration_ms,
        },
    )
    if result.status.value in ("fail", "error"):
        fail(current, f"{result.rule_id} {result.status.value}: {result.reason}")


def mutation_attributes(inp: Any) -> dict[str, Any]:
    """A mutation's or compensation's span attributes: target, idempotency key, step, kind."""
    return {
        "target.id": inp.target.id,
        "idempotency.key": inp.idempotency_key,
        "mutation.step": inp.step,
        "change.kind": inp.kind,
        "mutation.applied_key": inp.applied_key,
    }


async def outcome_of(current: Span, step: Awaitable[T]) -> T:
    """Await a mutation and set ``mutation.result``: applied, replayed, unchanged or failed."""
    try:
        result: Any = await step
    except BaseException:
        current.set_attribute("mutation.result", "failed")
        raise
    current.set_attribute("mutation.result", _result_of(result))
    return cast(T, result)


def _result_of(result: Any) -> str:
    return "applied" if result.applied else "replayed" if result.replayed else "unchanged"


async def chunk_outcome_of(current: Span, step: Awaitable[T]) -> T:
    """Await an ``apply_change_many`` chunk; set each target's result and the chunk's.

    ``mutation.results`` lines up with ``target.ids`` (applied, replayed or unchanged per target
    done); a target that failed for good is ``mutation.failed_target``, and ``mutation.result`` is
    ``failed`` then, else ``applied`` when any target was.
    """
    try:
        out: Any = await step
    except BaseException:
        current.set_attribute("mutation.result", "failed")
        raise
    results = [_result_of(r) for r in out.results]
    current.set_attribute("mutation.results", ",".join(results[:50]))  # as target.ids
    if out.failed is not None:
        current.set_attribute("mutation.failed_target", out.failed.target_id)
        current.set_attribute("mutation.result", "failed")
        fail(current, f"{out.failed.target_id}: {out.failed.type}: {out.failed.message}")
    else:
        current.set_attribute(
            "mutation.result", "applied" if "applied" in results else results[0] if results else ""
        )
    return cast(T, out)


def bake_attributes(wave: Any, rollout: Any) -> dict[str, Any]:
    """A bake poll's span attributes: the wave (1-based) and how many signals it observes."""
    return {"wave.number": wave.index + 1, "bake.signals": len(rollout.signals)}


def readings_attributes(observed: Any) -> dict[str, Any]:
    """What a bake poll saw: ``signal=state`` per signal."""
    return {"bake.states": [f"{r.signal}={r.state}" for r in observed.readings][:20]}


def change_attributes(request: Any) -> dict[str, Any]:
    """A change's span attributes from its request."""
    return {
        "change.kind": request.kind,
        "change.environment": request.environment,
        "change.team": request.team,
        "change.requester": request.requester,
        "change.targets": len(request.targets),
    }


def change_finished(current: Span, result: Any) -> None:
    """Set the outcome on the change's span; ``failed`` and ``rolled_back`` mark it failed."""
    set_attributes(current, {"change.outcome": result.outcome})
    if result.outcome.value in ("failed", "rolled_back"):
        fail(current, f"{result.outcome.value}: {result.message}")


def wave_attributes(wave: Any) -> dict[str, Any]:
    """A wave's span attributes: its number (1-based) and size."""
    return {"wave.number": wave.index + 1, "wave.targets": len(wave.targets)}


def many_attributes(items: list[Any]) -> dict[str, Any]:
    """A chunk's span attributes (``apply_change_many``): its targets and their keys."""
    return {
        "mutation.step": items[0].step if items else "apply",
        "change.kind": items[0].kind if items else None,
        "mutation.targets": len(items),
        "target.ids": [i.target.id for i in items][:50],
        "idempotency.keys": [i.idempotency_key for i in items][:50],
    }


# ------------------------------------------------------------------ what changeguard counts

_REFUSALS = (
    ("forbidden to opt out", "forbidden"),
    ("not awaiting approval", "not_awaiting"),
    ("is stale", "stale_report"),
    ("directory is not loaded", "directory_not_loaded"),
    ("not in the operator directory", "unknown_approver"),
    ("not in the approver groups", "not_an_approver"),
    ("four eyes", "four_eyes"),
    ("already approved", "same_approver_twice"),
    ("is not failing", "not_failing"),
    ("is not a check", "not_failing"),
    ("no approval rule", "no_rule"),
    ("could not be audited", "audit_failed"),
    ("signature", "signature"),
    ("signed", "signature"),
)


def refusal_reason(problem: str) -> str:
    """A refused approval's reason as a short, bounded label (``forbidden``, ``four_eyes`` …)."""
    for needle, reason in _REFUSALS:
        if needle in problem:
            return reason
    return "other"


def gate_decided(report: Any, *, regate: bool) -> None:
    """Count one gate's decision and each check's result (rule, status, mode).

    ``blocks`` counts, per rule, the enforced failures of a gate that decided ``block``;
    ``shadow_would_block`` counts shadow-mode rules that failed (they would have blocked).
    """
    scope = "regate" if regate else "gate"
    count("gate_decisions", "gate runs by decision", decision=report.decision.value, scope=scope)
    for check in report.checks:
        count(
            "check_results",
            "guardrail check results by rule, status and mode",
            rule=check.rule_id,
            guardrail=check.guardrail,
            status=check.status.value,
            mode=check.mode.value,
        )
        if check.mode.value == "shadow" and check.status.value in ("fail", "error"):
            count(
                "shadow_would_block",
                "shadow-mode rules that failed: enforced, they would have blocked",
                rule=check.rule_id,
            )
    if report.decision.value == "block":
        for check in report.failures:
            count("gate_blocks", "enforced failures of gates that blocked", rule=check.rule_id)


def approval_accepted(rule: str) -> None:
    """Count an accepted approval of one rule."""
    count(
        "approvals",
        "approvals accepted (by rule) and refused (by reason)",
        result="accepted",
        rule=rule,
    )


def approval_refused(reason: str, *, in_validator: bool = False) -> None:
    """Count a refused approval (update or signal) by its :func:`refusal_reason`."""
    what = "approvals accepted (by rule) and refused (by reason)"
    if in_validator:
        count_in_validator("approvals", what, result="refused", reason=reason)
    else:
        count("approvals", what, result="refused", reason=reason)


def operator_action(action: str) -> None:
    """Count an operator action that took effect (abort, rollback, resume, recheck)."""
    count("operator_actions", "operator actions by kind", action=action)


def outcome(value: str, *, kind: str) -> None:
    """Count a change's outcome."""
    count("outcomes", "changes by outcome", outcome=value, kind=kind)


def compensations_failed(n: int, *, kind: str) -> None:
    """Count compensations that failed (their targets need a human)."""
    count(
        "compensation_failures",
        "compensations that failed (targets left for a human)",
        n,
        kind=kind,
    )


def phase_ended(phase: Any, since: datetime | None) -> datetime:
    """Record the time spent in ``phase`` (since ``since``, or the run's start); returns now."""
    now = workflow.now()
    begun = since or workflow.info().start_time
    seconds(
        "phase_seconds",
        "time changes spent in each phase",
        (now - begun).total_seconds(),
        phase=phase.value,
    )
    return now

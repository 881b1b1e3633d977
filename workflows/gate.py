"""The ``GuardrailGate`` workflow: every applicable check, in parallel, rolled into one report.

The effective policy (the platform bundle the worker holds, plus the request's additions) is
resolved in an activity; each rule's check then runs as its own activity (id ``check-<rule id>``)
with its own timeout, or, where every rule of the gate says ``dispatch: local`` (the platform's
choice), as a local activity in this worker (a marker in the history, no task-queue round trip).
Nothing fails fast: a check that raises or times out becomes an ``error`` result carrying its owner
(fail-closed), and every result lands in the report in policy order.

Any client may start a gate: its input is decoded here, and a missing or malformed one fails the
gate (non-retryable ``InvalidInput``, every problem named), never a workflow task.
"""

from __future__ import annotations

import asyncio
from datetime import datetime, timedelta
from typing import Any

from pydantic import ValidationError
from temporalio import workflow
from temporalio.exceptions import ActivityError, ApplicationError, TimeoutError

with workflow.unsafe.imports_passed_through():
    import workflows.calls as calls
    import workflows.observe as observe
    from workflows.calls import CHECK_RETRY as CHECK_RETRY
    from workflows.calls import RESOLVE_TIMEOUT as RESOLVE_TIMEOUT
    from workflows.errors import INVALID_INPUT
    from workflows.inputs import Refusal, decode
    from workflows.models import (
        CheckResult,
        CheckSpec,
        CheckStatus,
        GateInput,
        GuardrailReport,
        OptOut,
        ResolvePolicyInput,
        RunCheckInput,
    )
    from workflows.report import aggregate, report_markdown
    from workflows.summaries import check_summary
    from workflows.types import format_duration
    from workflows.unwind import failure_of

COMMON_OPENING_PATCH = "earliest-common-opening"
"""The ``workflow.patched`` id of the timing rules' one earliest-start answer (docs/versioning.md)."""


def error_result(
    spec: CheckSpec, exc: BaseException, elapsed: timedelta | None = None
) -> CheckResult:
    """The fail-closed result of a check that raised or timed out.

    A check that gave up across its attempts (the schedule-to-close timeout) names the last
    attempt's real failure and the time it took, not only the per-attempt timeout: an operator
    must see *what* failed ("RPCError: consistent query buffer is full"), not a hunt for a slow
    dependency that was never slow.
    """
    # A local check's timeout is an ActivityError when it happens and the bare TimeoutError when
    # its marker is replayed: both are the same result, or a replay would take another path.
    cause = exc.cause if isinstance(exc, ActivityError) else exc
    last = cause.cause if isinstance(cause, TimeoutError) else None
    if isinstance(cause, TimeoutError) and last is not None and not isinstance(last, TimeoutError):
        message, kind = failure_of(last)
        took = f" after {format_duration(elapsed)}" if elapsed is not None else ""
        reason = f"the check gave up{took} over its attempts; last failure: {kind}: {message}"
        remedy = f"fix the cause reported by {spec.guardrail} (see the worker log), then recheck"
    elif isinstance(cause, TimeoutError):
        reason = f"the check did not answer within {spec.timeout.total_seconds():g}s"
        remedy = (
            f"make what {spec.guardrail} queries respond in time (or raise its timeout in the "
            "policy), then recheck"
        )
    else:
        message, kind = failure_of(exc)
        reason = f"the check raised {kind}: {message}"
        remedy = f"fix the cause reported by {spec.guardrail} (see the worker log), then recheck"
    return CheckResult(
        rule=spec.rule or spec.guardrail,
        source=spec.source,
        note=spec.note,
        guardrail=spec.guardrail,
        category=spec.category,
        status=CheckStatus.ERROR,
        reason=reason,
        remedy=remedy,
        owner=spec.owner,
        opt_out=spec.opt_out,
        approvers=(
            list(spec.opt_out_rule.approvers)
            if spec.opt_out_rule and spec.opt_out is OptOut.APPROVABLE
            else []
        ),
        mode=spec.mode,
        approval=spec.opt_out_rule if spec.opt_out is OptOut.APPROVABLE else None,
    )


@workflow.defn(name="GuardrailGate", failure_exception_types=[ValidationError])
class GuardrailGateWorkflow:
    """Run every applicable guardrail for a change and return one :class:`GuardrailReport`."""

    def __init__(self) -> None:
        self._report: GuardrailReport | None = None

    @workflow.run
    async def run(self, *args: Any) -> GuardrailReport:
        """Resolve the policy, fan out the checks, aggregate."""
        inp = decode(GateInput, args, what="the gate's input")
        if isinstance(inp, Refusal):  # a raw client's start: fail the gate, never its tasks
            raise ApplicationError(inp.why, *inp.problems, type=INVALID_INPUT, non_retryable=True)
        categories = [c.value for c in inp.categories] if inp.categories else "all"
        attributes = {"gate.id": workflow.info().workflow_id, "gate.categories": categories}
        with observe.span("gate", attributes) as current:
            report = await self._gate(inp)
            observe.set_attributes(current, observe.report_attributes(report))
        return report

    async def _gate(self, inp: GateInput) -> GuardrailReport:
        workflow.set_current_details("Resolving the policy…")
        resolved = await calls.resolve_policy(
            ResolvePolicyInput(change=inp.change, policy=inp.policy, categories=inp.categories)
        )
        now = workflow.now()
        workflow.set_current_details(f"Running {len(resolved.checks)} checks in parallel…")
        results = await self._run_checks(resolved.checks, inp, now)
        self._report = aggregate(
            list(results),
            policy_hash=resolved.policy_hash,
            now=now,
            bundle_hash=resolved.bundle_hash,
            bundle_warning=resolved.bundle_warning,
            common_opening=workflow.patched(COMMON_OPENING_PATCH),
        )
        workflow.set_current_details(report_markdown(self._report))
        return self._report

    @workflow.query(name="report")
    def report(self) -> GuardrailReport | None:
        """The report, once every check has answered."""
        return self._report

    async def _run_checks(
        self, checks: list[CheckSpec], inp: GateInput, now: datetime
    ) -> list[CheckResult]:
        """Every check at once, results in policy order.

        Local dispatch holds only when every check of the gate says ``dispatch: local``: a
        workflow task with local activities in flight is answered only when they end, and any
        activity it schedules would leave with that answer, after them. A gate that also has an
        activity check (a request's addition, a rule without ``dispatch``) runs them all as
        activities, in parallel as ever.
        """
        local = bool(checks) and all(spec.dispatch == "local" for spec in checks)
        return await asyncio.gather(*(self._check(spec, inp, now, local) for spec in checks))

    async def _check(
        self, spec: CheckSpec, inp: GateInput, now: datetime, local: bool
    ) -> CheckResult:
        with observe.span("check", observe.spec_attributes(spec)) as current:
            result = await self._run_check(spec, inp, now, local)
            observe.check_finished(current, result)
        return result

    async def _run_check(
        self, spec: CheckSpec, inp: GateInput, now: datetime, local: bool
    ) -> CheckResult:
        started = workflow.now()
        try:
            result = await calls.run_check(
                RunCheckInput(spec=spec, change=inp.change, now=now, probe_only=inp.probe_only),
                activity_id=f"check-{spec.rule or spec.guardrail}",
                check_timeout=spec.timeout,
                summary=check_summary(spec.rule or spec.guardrail),
                local=local,
            )
        except (ActivityError, ApplicationError, TimeoutError) as exc:
            # A local check's failure comes as the ApplicationError itself, its timeout as an
            # ActivityError (a TimeoutError on replay), never with a last failure: each becomes
            # the same fail-closed result an activity's would.
            elapsed = workflow.now() - started
            result = error_result(spec, exc, elapsed)
            result.duration_ms = int(elapsed.total_seconds() * 1000)
        # The rule, its source and the platform's note come from the policy, not the plug-in.
        return result.model_copy(
            update={"rule": spec.rule or spec.guardrail, "source": spec.source, "note": spec.note}
        )

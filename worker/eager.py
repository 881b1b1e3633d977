"""Eager dispatch for urgent activities only: a gate's checks and a rollback's compensations.

When a workflow task schedules activities on the task queue of the worker that ran it, Temporal can
hand those activity tasks back in the answer to the task's completion (eager execution) instead of
queueing them for the activity pollers: no matching round trip, and every one of a gate's checks
starts at once instead of as the pollers pick them up. The server must allow it (dynamic config
``system.enableActivityEagerExecution: true``; ``changeguard dev`` and the benches set it) and the
worker reserves at most ``CHANGEGUARD_EAGER_ACTIVITIES`` free slots per workflow task for it.

Eager execution skips the task queue, and with it task priority (:mod:`workflows.priorities`): a
free slot taken by an eager task is a slot the queue could have given to something more urgent.
So only activities whose priority key is :data:`workflows.priorities.GATE` or more urgent (a
compensation) may be dispatched eagerly; bulk forward work (``apply_change``, ``apply_change_many``)
and every activity without a priority always go through the queue, where a rollback's compensation
is served first. A workflow task's eager request is not part of the commands a replay matches, so
this changes no history (tests/replay).
"""

from __future__ import annotations

from typing import Any

from temporalio.common import Priority
from temporalio.worker import (
    Interceptor,
    StartActivityInput,
    WorkflowInboundInterceptor,
    WorkflowInterceptorClassInput,
    WorkflowOutboundInterceptor,
)
from temporalio.workflow import ActivityHandle

from workflows.priorities import GATE

EAGER_MAX_KEY = GATE.priority_key
"""The least urgent priority key that may be dispatched eagerly (lower keys are more urgent)."""


def may_run_eagerly(priority: Priority) -> bool:
    """Whether an activity of ``priority`` may skip the task queue: a gate's or a compensation's."""
    key = priority.priority_key
    return key is not None and EAGER_MAX_KEY is not None and 1 <= key <= EAGER_MAX_KEY


class EagerDispatchInterceptor(Interceptor):
    """Requests eager execution only for activities :func:`may_run_eagerly` allows."""

    def workflow_interceptor_class(
        self, input: WorkflowInterceptorClassInput
    ) -> type[WorkflowInboundInterceptor]:
        """Wrap every workflow's outbound calls."""
        return _Inbound


class _Inbound(WorkflowInboundInterceptor):
    def init(self, outbound: WorkflowOutboundInterceptor) -> None:
        super().init(_Outbound(outbound))


class _Outbound(WorkflowOutboundInterceptor):
    def start_activity(self, input: StartActivityInput) -> ActivityHandle[Any]:
        if not may_run_eagerly(input.priority):
            input.disable_eager_execution = True
        return super().start_activity(input)

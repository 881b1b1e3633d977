"""Structured logging: structlog everywhere outside workflow code, stdlib logging routed into it.

Console rendering on a terminal, JSON lines otherwise (or as ``CHANGEGUARD_LOG_FORMAT`` says). An
activity interceptor binds ``workflow_id``, ``run_id``, ``activity`` and ``change_id`` into the
context of every activity, so each line an activity logs carries them. Workflow code logs through
``workflow.logger`` (quiet during replay), whose records arrive here with the same fields.
"""

from __future__ import annotations

import logging
import sys
from typing import Any

import structlog
from temporalio import activity
from temporalio.worker import (
    ActivityInboundInterceptor,
    ExecuteActivityInput,
    Interceptor,
)

from workflows import ids


def change_id_of(workflow_id: str) -> str:
    """The change a workflow belongs to: gate children are named ``<change_id>/gate-<n>``."""
    return ids.change_of(workflow_id)


def configure(fmt: str = "auto", level: int = logging.INFO) -> None:
    """Configure structlog and route stdlib logging (Temporal's included) through it."""
    json_lines = fmt == "json" or (fmt == "auto" and not sys.stderr.isatty())
    shared: list[Any] = [
        structlog.contextvars.merge_contextvars,
        structlog.stdlib.add_log_level,
        structlog.stdlib.add_logger_name,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
        _temporal_extra,
    ]
    # Records from stdlib loggers (``workflow.logger``, the SDK) keep their ``extra=`` fields.
    foreign: list[Any] = [*shared, _record_extra]
    renderer: Any = (
        structlog.processors.JSONRenderer()
        if json_lines
        else structlog.dev.ConsoleRenderer(colors=sys.stderr.isatty())
    )
    structlog.configure(
        processors=[*shared, structlog.stdlib.ProcessorFormatter.wrap_for_formatter],
        logger_factory=structlog.stdlib.LoggerFactory(),
        wrapper_class=structlog.stdlib.BoundLogger,
        cache_logger_on_first_use=True,
    )
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(
        structlog.stdlib.ProcessorFormatter(
            foreign_pre_chain=foreign,
            processors=[
                structlog.stdlib.ProcessorFormatter.remove_processors_meta,
                structlog.processors.format_exc_info,
                renderer,
            ],
        )
    )
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    logging.getLogger("httpx").setLevel(
        max(level, logging.WARNING)
    )  # one line per request is noise


def _temporal_extra(_: Any, __: str, event: dict[str, Any]) -> dict[str, Any]:
    """Lift the SDK's ``temporal_workflow``/``temporal_activity`` extras into flat fields."""
    record = event.get("_record")
    for attr in ("temporal_workflow", "temporal_activity"):
        data = getattr(record, attr, None) if record is not None else None
        if isinstance(data, dict):
            event.setdefault("workflow_id", data.get("workflow_id"))
            event.setdefault("run_id", data.get("run_id"))
            if "activity_type" in data:
                event.setdefault("activity", data["activity_type"])
            if data.get("workflow_id"):
                event.setdefault("change_id", change_id_of(str(data["workflow_id"])))
    return event


_add_extra = structlog.stdlib.ExtraAdder()
_SDK_EXTRAS = ("temporal_workflow", "temporal_activity", "workflow_info", "activity_info")


def _record_extra(logger: Any, name: str, event: dict[str, Any]) -> dict[str, Any]:
    """Add a stdlib record's ``extra=`` fields, minus the SDK's nested info (already flattened)."""
    _add_extra(logger, name, event)  # adds in place
    for key in _SDK_EXTRAS:
        event.pop(key, None)
    return event


class LoggingInterceptor(Interceptor):
    """Binds workflow id, run id, activity and change id for the duration of every activity."""

    def intercept_activity(self, next: ActivityInboundInterceptor) -> ActivityInboundInterceptor:
        """Wrap activity execution."""
        return _BindActivityContext(next)


class _BindActivityContext(ActivityInboundInterceptor):
    async def execute_activity(self, input: ExecuteActivityInput) -> Any:
        info = activity.info()
        with structlog.contextvars.bound_contextvars(
            workflow_id=info.workflow_id,
            run_id=info.workflow_run_id,
            activity=info.activity_type,
            change_id=change_id_of(info.workflow_id or ""),
        ):
            return await self.next.execute_activity(input)

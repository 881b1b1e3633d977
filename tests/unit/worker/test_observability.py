"""Log fields, the OTEL_* configuration, and the bounded labels of changeguard's telemetry."""

from __future__ import annotations

import contextlib
import dataclasses
import io
import json
import logging
import subprocess
import sys
from collections.abc import Iterator
from typing import Any

import pytest
import structlog
from temporalio.testing import ActivityEnvironment, WorkflowEnvironment

from activities.change import ChangeActivities
from activities.observe import input_checksum
from tests import fakes
from tests.fakes import Ledger, RecordingKind
from tests.helpers import REPO_ROOT
from worker import logging as cg_logging
from worker import telemetry
from worker.telemetry import TelemetryConfigError, trace_exporters
from workflows.models import ApplyInput, Target, idempotency_key
from workflows.observe import refusal_reason


@pytest.fixture
def log_lines() -> Iterator[io.StringIO]:
    """The JSON logging of changeguard into a buffer (the previous logging set-up restored after)."""
    root = logging.getLogger()
    saved_handlers, saved_level = root.handlers[:], root.level
    saved_structlog = structlog.get_config()
    cg_logging.configure("json")
    buffer = io.StringIO()
    root.handlers[0].stream = buffer  # type: ignore[attr-defined]
    yield buffer
    root.handlers[:] = saved_handlers
    root.setLevel(saved_level)
    structlog.configure(**saved_structlog)


def _parsed(buffer: io.StringIO) -> list[dict[str, Any]]:
    return [json.loads(line) for line in buffer.getvalue().splitlines() if line.startswith("{")]


def _apply(change_id: str = "c-1", version: float = 0.0) -> ApplyInput:
    return ApplyInput(
        change_id=change_id,
        kind="recording",
        step="apply",
        target=Target(id="t1"),
        params={"delay": version},
        idempotency_key=idempotency_key(change_id, "apply", "t1"),
    )


async def test_every_mutation_line_carries_key_checksum_and_attempt(
    log_lines: io.StringIO,
) -> None:
    """A retried mutation says its attempt number; each of its lines has the key and checksum."""
    RecordingKind.ledger = Ledger()
    env = ActivityEnvironment()
    env.info = dataclasses.replace(
        env.info, attempt=3, workflow_id="c-1", activity_type="apply_change"
    )
    inp = _apply()
    await env.run(ChangeActivities(fakes.kinds()).apply_change, inp)
    lines = [e for e in _parsed(log_lines) if e.get("target") == "t1"]
    assert [e["event"] for e in lines] == ["retrying apply of t1: attempt 3", "applied"]
    for line in lines:
        assert {k: line[k] for k in ("idempotency_key", "input_sha256", "attempt", "step")} == {
            "idempotency_key": "c-1:apply:t1",
            "input_sha256": input_checksum(inp),
            "attempt": 3,
            "step": "apply",
        }


async def test_a_first_attempt_says_attempt_1(log_lines: io.StringIO) -> None:
    """The first attempt's opening line names attempt 1 (a retry is told apart from it)."""
    RecordingKind.ledger = Ledger()
    await ActivityEnvironment().run(ChangeActivities(fakes.kinds()).apply_change, _apply())
    first = next(e for e in _parsed(log_lines) if e.get("target") == "t1")
    assert (first["event"], first["attempt"]) == ("apply of t1: attempt 1", 1)


def test_the_checksum_follows_the_input_not_the_attempt() -> None:
    """Equal inputs share a checksum; a changed param or change id gives another one."""
    assert input_checksum(_apply()) == input_checksum(_apply())
    assert (
        len(
            {
                input_checksum(_apply()),
                input_checksum(_apply(version=1.0)),
                input_checksum(_apply("c-2")),
            }
        )
        == 3
    )


def test_workflow_logger_extra_fields_are_kept(log_lines: io.StringIO) -> None:
    """Fields given to ``workflow.logger`` (``extra=``) reach the JSON line, flattened with ids."""
    logging.getLogger("temporalio.workflow").warning(
        "compensation failed",
        extra={
            "step": "web-03",
            "error": "HTTP 503",
            "temporal_workflow": {"workflow_id": "c-9/apply-web-01", "run_id": "r1"},
        },
    )
    [line] = _parsed(log_lines)
    assert {k: line.get(k) for k in ("event", "step", "error", "workflow_id", "change_id")} == {
        "event": "compensation failed",
        "step": "web-03",
        "error": "HTTP 503",
        "workflow_id": "c-9/apply-web-01",
        "change_id": "c-9",
    }
    assert "temporal_workflow" not in line


@pytest.mark.parametrize(
    ("env", "expected"),
    [
        ({}, ()),
        ({"OTEL_EXPORTER_OTLP_ENDPOINT": "http://collector:4318"}, ("otlp",)),
        ({"OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": "http://c:4318/v1/traces"}, ("otlp",)),
        ({"OTEL_TRACES_EXPORTER": "console"}, ("console",)),
        ({"OTEL_TRACES_EXPORTER": "otlp, console"}, ("otlp", "console")),
        ({"OTEL_TRACES_EXPORTER": "none", "OTEL_EXPORTER_OTLP_ENDPOINT": "http://c:4318"}, ()),
        ({"CHANGEGUARD_TRACE_CONSOLE": "1"}, ("console",)),
        ({"OTEL_SDK_DISABLED": "true", "OTEL_TRACES_EXPORTER": "otlp"}, ()),
    ],
)
def test_trace_exporters_follow_the_standard_variables(
    env: dict[str, str], expected: tuple[str, ...]
) -> None:
    """No exporter unless one is asked for; OTEL_TRACES_EXPORTER, endpoints, SDK_DISABLED."""
    assert trace_exporters(env) == expected


@pytest.mark.parametrize(
    ("env", "names"),
    [
        (
            {"OTEL_TRACES_EXPORTER": "jaeger"},
            "OTEL_TRACES_EXPORTER='jaeger': unknown exporter(s) jaeger",
        ),
        (
            {"OTEL_TRACES_EXPORTER": "otlp", "OTEL_EXPORTER_OTLP_PROTOCOL": "grpc"},
            "OTEL_EXPORTER_OTLP_PROTOCOL='grpc' is not supported",
        ),
    ],
)
def test_bad_trace_settings_are_refused_by_name(env: dict[str, str], names: str) -> None:
    """An exporter or protocol changeguard lacks is refused, naming the variable and the fix."""
    with pytest.raises(TelemetryConfigError) as refused:
        trace_exporters(env)
    assert str(refused.value).startswith(names)


def test_console_tracing_prints_spans() -> None:
    """CHANGEGUARD_TRACE_CONSOLE=1 (or OTEL_TRACES_EXPORTER=console) prints each span on stderr."""
    code = (
        "from worker import telemetry\n"
        "assert len(telemetry.client_plugins()) == 1\n"
        "import opentelemetry.trace as t\n"
        "t.get_tracer('probe').start_span('hello-span', attributes={'change.id': 'c-1'}).end()\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", code],
        env={"CHANGEGUARD_TRACE_CONSOLE": "1", "PATH": "/usr/bin:/bin"},
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    assert '"name": "hello-span"' in done.stderr
    assert '"change.id": "c-1"' in done.stderr
    assert '"service.name": "changeguard"' in done.stderr


@pytest.mark.parametrize(
    ("problem", "reason"),
    [
        ("four eyes: alice requested this change and cannot approve x", "four_eyes"),
        ("x is forbidden to opt out of; fix the cause instead: y", "forbidden"),
        ("report_hash 'a' is stale: approvals bind to the current report 'b'", "stale_report"),
        ("approver 'mallory' is not in the operator directory", "unknown_approver"),
        ("dave is not in the approver groups of x (sre-leads)", "not_an_approver"),
        ("the change is not awaiting approval; nothing can be approved now", "not_awaiting"),
        ("bob has already approved x; a second approver is needed", "same_approver_twice"),
        ("something new", "other"),
    ],
)
def test_refusal_reasons_are_bounded_labels(problem: str, reason: str) -> None:
    """A refused approval is counted under a short label, whatever the problem's text."""
    assert refusal_reason(problem) == reason


@contextlib.contextmanager
def _captured_spans() -> Iterator[Any]:
    """An in-memory exporter receiving every span the worker's tracer provider ends in the block."""
    from opentelemetry.sdk.trace.export import SimpleSpanProcessor
    from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

    exporter = InMemorySpanExporter()
    telemetry.tracer_provider()
    key = (f"test-{id(exporter)}",)
    telemetry._FANOUT.processors[key] = [SimpleSpanProcessor(exporter)]
    try:
        yield exporter
    finally:
        del telemetry._FANOUT.processors[key]


async def test_apply_many_chunks_each_get_a_mutations_span(
    env: WorkflowEnvironment, task_queue: str
) -> None:
    """A TargetBatch chunk (one apply_change_many) is one span naming its targets and keys."""
    from tests.unit.workflows.test_apply_many import ManyKind, _request, _run

    RecordingKind.ledger = Ledger()
    ManyKind.unavailable_once, ManyKind.calls = set(), []
    with _captured_spans() as exporter:
        result, chunked = await _run(env, task_queue, _request({}))
    chunks = [s for s in exporter.get_finished_spans() if s.name == "mutations"]
    assert result.outcome.value == "completed"
    assert len(chunks) == chunked
    attrs = [dict(s.attributes or {}) for s in chunks]
    assert sum(int(a["mutation.targets"]) for a in attrs) == 250
    assert {a["change.id"] for a in attrs} == {result.change_id}
    first = next(a for a in attrs if str(a["target.ids"]).startswith("h001,"))
    assert str(first["idempotency.keys"]).startswith(f"{result.change_id}:apply:h001,")
    assert all(a["mutation.result"] == "applied" for a in attrs)
    assert all(
        str(a["mutation.results"]).split(",") == ["applied"] * int(a["mutation.targets"])
        for a in attrs
    )


async def test_a_chunk_with_a_refused_target_names_it_on_its_span(
    env: WorkflowEnvironment, task_queue: str
) -> None:
    """The chunk whose target failed for good: the targets done before it, then the failed one."""
    from opentelemetry.trace import StatusCode

    from tests.unit.workflows.test_apply_many import ManyKind, _request, _run

    RecordingKind.ledger = Ledger()
    ManyKind.unavailable_once, ManyKind.calls = set(), []
    with _captured_spans() as exporter:
        result, _ = await _run(env, task_queue, _request({"fail_apply": ["h150"]}))
    assert result.outcome.value == "rolled_back"
    [failed] = [
        s
        for s in exporter.get_finished_spans()
        if s.name == "mutations" and (s.attributes or {}).get("mutation.failed_target") == "h150"
    ]
    attrs = dict(failed.attributes or {})
    ids = str(attrs["target.ids"]).split(",")
    done = ids[: ids.index("h150")]
    assert attrs["mutation.result"] == "failed"
    assert attrs["mutation.results"] == ",".join(["applied"] * len(done))
    assert failed.status.status_code is StatusCode.ERROR
    assert "h150" in (failed.status.description or "")

"""Telemetry: Prometheus metrics through the Temporal runtime, OpenTelemetry traces over OTLP.

Metrics: with ``CHANGEGUARD_METRICS_BIND`` (e.g. ``0.0.0.0:9464``) a worker process's Temporal
runtime serves, at ``http://<bind>/metrics``, both the SDK's own metrics (workflow task failures,
activity latencies, slots …) and changeguard's (``changeguard_*``, recorded through
``workflow.metric_meter()`` / ``activity.metric_meter()``, see :mod:`workflows.observe` and
docs/observability.md). One endpoint per worker; unset, no port is opened.

Traces follow the standard OpenTelemetry variables:

- ``OTEL_TRACES_EXPORTER``: ``otlp`` (OTLP over HTTP/protobuf), ``console`` (stderr), both
  (``otlp,console``) or ``none``. Unset, tracing is on exactly when an OTLP endpoint is set.
- ``OTEL_EXPORTER_OTLP_ENDPOINT`` (``…/v1/traces`` is appended) or
  ``OTEL_EXPORTER_OTLP_TRACES_ENDPOINT``, ``OTEL_EXPORTER_OTLP_HEADERS``, ``…_TIMEOUT``,
  ``…_COMPRESSION``: read by the OTLP exporter itself. Only ``http/protobuf`` is supported as
  ``OTEL_EXPORTER_OTLP_PROTOCOL``.
- ``OTEL_SERVICE_NAME`` (default ``changeguard``), ``OTEL_RESOURCE_ATTRIBUTES``, the batch
  processor's ``OTEL_BSP_*``; ``OTEL_SDK_DISABLED=true`` turns tracing off.
- ``CHANGEGUARD_TRACE_CONSOLE=1`` is kept as a shorthand for adding ``console``.

With no exporter configured no tracer provider is installed and clients carry no tracing plug-in:
spans in workflow and activity code are the OpenTelemetry API's no-ops. With one, the process gets
the SDK's replay-safe tracer provider (deterministic span ids in workflows, nothing re-emitted on
replay) and every client the SDK's ``OpenTelemetryPlugin`` with Temporal's own spans
(``StartWorkflow``, ``RunWorkflow``, ``StartActivity``, ``RunActivity`` …).
"""

from __future__ import annotations

import os
import sys
import threading
from collections.abc import Mapping
from functools import cache

import opentelemetry.trace
from opentelemetry.sdk.resources import SERVICE_NAME, Resource
from opentelemetry.sdk.trace import ReadableSpan, Span, SpanProcessor
from temporalio.client import Plugin
from temporalio.contrib.opentelemetry import (
    OpenTelemetryPlugin,
    ReplaySafeTracerProvider,
    create_tracer_provider,
)
from temporalio.runtime import PrometheusConfig, Runtime, TelemetryConfig

from worker.settings import SettingsError

EXPORTERS = ("otlp", "console")
"""The values ``OTEL_TRACES_EXPORTER`` may list (besides ``none``)."""
DEFAULT_SERVICE_NAME = "changeguard"


class TelemetryConfigError(SettingsError):
    """An ``OTEL_*`` variable asks for something changeguard cannot do; the message says the fix."""


def trace_exporters(env: Mapping[str, str] | None = None) -> tuple[str, ...]:
    """The span exporters the environment asks for (empty: tracing off).

    Raises:
        TelemetryConfigError: an unknown exporter, or an OTLP protocol other than HTTP/protobuf.
    """
    env = os.environ if env is None else env
    if env.get("OTEL_SDK_DISABLED", "").strip().lower() == "true":
        return ()
    raw = env.get("OTEL_TRACES_EXPORTER")
    names: list[str]
    if raw is None or not raw.strip():
        endpoint = env.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT") or env.get(
            "OTEL_EXPORTER_OTLP_ENDPOINT"
        )
        names = ["otlp"] if endpoint else []
    else:
        names = [n.strip().lower() for n in raw.split(",") if n.strip()]
        names = [n for n in names if n != "none"]
    if env.get("CHANGEGUARD_TRACE_CONSOLE") == "1" and "console" not in names:
        names.append("console")
    unknown = [n for n in names if n not in EXPORTERS]
    if unknown:
        raise TelemetryConfigError(
            f"OTEL_TRACES_EXPORTER={raw!r}: unknown exporter(s) {', '.join(unknown)}; use "
            "otlp, console, both (otlp,console) or none"
        )
    if "otlp" in names:
        protocol = env.get("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL") or env.get(
            "OTEL_EXPORTER_OTLP_PROTOCOL", "http/protobuf"
        )
        if protocol.strip() != "http/protobuf":
            raise TelemetryConfigError(
                f"OTEL_EXPORTER_OTLP_PROTOCOL={protocol!r} is not supported: changeguard exports "
                "OTLP over HTTP (set it to http/protobuf, or unset it, and point "
                "OTEL_EXPORTER_OTLP_ENDPOINT at the collector's HTTP port, usually 4318)"
            )
    return tuple(dict.fromkeys(names))


class _Fanout(SpanProcessor):
    """The provider's one processor: forwards to the exporters configured so far (swappable)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.processors: dict[tuple[str, ...], list[SpanProcessor]] = {}

    def _all(self) -> list[SpanProcessor]:
        with self._lock:
            return [p for ps in self.processors.values() for p in ps]

    def on_start(self, span: Span, parent_context: object = None) -> None:
        for p in self._all():
            p.on_start(span, parent_context=parent_context)  # type: ignore[arg-type]

    def on_end(self, span: ReadableSpan) -> None:
        for p in self._all():
            p.on_end(span)

    def shutdown(self) -> None:
        for p in self._all():
            p.shutdown()

    def force_flush(self, timeout_millis: int = 30000) -> bool:
        return all(p.force_flush(timeout_millis) for p in self._all())


_FANOUT = _Fanout()


@cache
def tracer_provider() -> ReplaySafeTracerProvider:
    """The process-wide replay-safe tracer provider (set as the global one on first use)."""
    attributes = {} if os.environ.get("OTEL_SERVICE_NAME") else {SERVICE_NAME: DEFAULT_SERVICE_NAME}
    provider = create_tracer_provider(resource=Resource.create(attributes))
    provider.add_span_processor(_FANOUT)
    opentelemetry.trace.set_tracer_provider(provider)
    return provider


def _processors(exporters: tuple[str, ...]) -> list[SpanProcessor]:
    from opentelemetry.sdk.trace.export import (
        BatchSpanProcessor,
        ConsoleSpanExporter,
        SimpleSpanProcessor,
    )

    made: list[SpanProcessor] = []
    for name in exporters:
        if name == "otlp":
            from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

            made.append(BatchSpanProcessor(OTLPSpanExporter()))  # reads OTEL_EXPORTER_OTLP_*
        else:
            made.append(SimpleSpanProcessor(ConsoleSpanExporter(out=sys.stderr)))
    return made


def configure_tracing(env: Mapping[str, str] | None = None) -> bool:
    """Install the exporters the environment asks for (once per configuration); True if any.

    Raises:
        TelemetryConfigError: see :func:`trace_exporters`.
    """
    exporters = trace_exporters(env)
    if not exporters:
        return False
    tracer_provider()
    env = os.environ if env is None else env
    key = (*exporters, *(f"{k}={v}" for k, v in sorted(env.items()) if k.startswith("OTEL_")))
    with _FANOUT._lock:
        if key in _FANOUT.processors:
            return True
    made = _processors(exporters)
    with _FANOUT._lock:
        _FANOUT.processors.setdefault(key, made)
    return True


def flush(timeout_millis: int = 5000) -> None:
    """Send every finished span now (before a process exits without finalising)."""
    _FANOUT.force_flush(timeout_millis)


def reset_exporters() -> None:
    """Flush and drop every configured exporter (tests that point one at a temporary receiver)."""
    with _FANOUT._lock:
        processors = [p for ps in _FANOUT.processors.values() for p in ps]
        _FANOUT.processors.clear()
    for p in processors:
        p.force_flush(5000)
        p.shutdown()


PHASE_BUCKETS = (1.0, 5.0, 15.0, 60.0, 300.0, 900.0, 3600.0, 4 * 3600.0, 24 * 3600.0)
"""Buckets of ``changeguard_phase_seconds``: a gate takes seconds, an approval wait hours."""


def prometheus_config(metrics_bind: str) -> PrometheusConfig:
    """The Prometheus endpoint's settings (SDK defaults; seconds buckets for phase times)."""
    return PrometheusConfig(
        bind_address=metrics_bind,
        histogram_bucket_overrides={"changeguard_phase_seconds": list(PHASE_BUCKETS)},
    )


@cache
def runtime(metrics_bind: str | None) -> Runtime | None:
    """The process-wide runtime serving metrics on ``metrics_bind`` (``None``: the default)."""
    if not metrics_bind:
        return None
    return Runtime(telemetry=TelemetryConfig(metrics=prometheus_config(metrics_bind)))


def client_plugins() -> list[Plugin]:
    """Plug-ins every client (and so every worker built on it) carries: tracing, when configured.

    Raises:
        TelemetryConfigError: the ``OTEL_*`` variables are invalid.
    """
    if not configure_tracing():
        return []
    return [OpenTelemetryPlugin(add_temporal_spans=True)]

"""Telemetry: SDK metrics for Prometheus, and OpenTelemetry tracing through the SDK's plug-in.

Metrics: with ``CHANGEGUARD_METRICS_BIND`` (e.g. ``0.0.0.0:9464``) the process's Temporal runtime
serves the SDK's own metrics (workflow task failures, activity latencies, slots, sticky cache …)
in Prometheus format at ``http://<bind>/metrics``; ``infra/prometheus/prometheus.yml`` scrapes it. Unset, no
port is opened.

Tracing: registered once, on the client. With no exporter configured the tracer provider has
no span processor, so tracing costs little and
sends nothing. ``CHANGEGUARD_TRACE_CONSOLE=1`` prints spans to stderr (for local debugging); a
production deployment adds its own exporter to the provider returned by :func:`tracer_provider`.
"""

from __future__ import annotations

import os
import sys
from functools import cache

import opentelemetry.trace
from temporalio.client import Plugin
from temporalio.contrib.opentelemetry import (
    OpenTelemetryPlugin,
    ReplaySafeTracerProvider,
    create_tracer_provider,
)
from temporalio.runtime import PrometheusConfig, Runtime, TelemetryConfig


@cache
def tracer_provider() -> ReplaySafeTracerProvider:
    """The process-wide replay-safe tracer provider (set as the global one on first use)."""
    provider = create_tracer_provider()
    if os.environ.get("CHANGEGUARD_TRACE_CONSOLE") == "1":
        from opentelemetry.sdk.trace.export import ConsoleSpanExporter, SimpleSpanProcessor

        provider.add_span_processor(SimpleSpanProcessor(ConsoleSpanExporter(out=sys.stderr)))
    opentelemetry.trace.set_tracer_provider(provider)
    return provider


@cache
def runtime(metrics_bind: str | None) -> Runtime | None:
    """The process-wide runtime serving SDK metrics on ``metrics_bind`` (``None``: the default)."""
    if not metrics_bind:
        return None
    return Runtime(telemetry=TelemetryConfig(metrics=PrometheusConfig(bind_address=metrics_bind)))


def client_plugins() -> list[Plugin]:
    """Plug-ins every client (and so every worker built on it) carries."""
    tracer_provider()
    return [OpenTelemetryPlugin()]

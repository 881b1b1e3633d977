"""OpenTelemetry tracing through the SDK's contrib plug-in: registered once, on the client.

With no exporter configured the tracer provider has no span processor, so tracing costs little and
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


@cache
def tracer_provider() -> ReplaySafeTracerProvider:
    """The process-wide replay-safe tracer provider (set as the global one on first use)."""
    provider = create_tracer_provider()
    if os.environ.get("CHANGEGUARD_TRACE_CONSOLE") == "1":
        from opentelemetry.sdk.trace.export import ConsoleSpanExporter, SimpleSpanProcessor

        provider.add_span_processor(SimpleSpanProcessor(ConsoleSpanExporter(out=sys.stderr)))
    opentelemetry.trace.set_tracer_provider(provider)
    return provider


def client_plugins() -> list[Plugin]:
    """Plug-ins every client (and so every worker built on it) carries."""
    tracer_provider()
    return [OpenTelemetryPlugin()]

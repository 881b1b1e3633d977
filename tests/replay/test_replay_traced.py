"""With tracing on, every committed history still replays, and replay exports no span."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.otlp import OtlpReceiver
from worker import telemetry
from worker.replay import replay_files, worker_plugins

HISTORIES = Path(__file__).resolve().parent / "histories"


async def test_every_history_replays_with_tracing_on(monkeypatch: pytest.MonkeyPatch) -> None:
    """Spans add no command (no mismatch anywhere) and none is re-emitted while replaying."""
    with OtlpReceiver() as receiver:
        monkeypatch.setenv("OTEL_TRACES_EXPORTER", "otlp")
        monkeypatch.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", receiver.endpoint)
        try:
            assert [type(p).__name__ for p in worker_plugins()] == ["OpenTelemetryPlugin"]
            report = await replay_files([HISTORIES])
            telemetry.flush()
        finally:
            telemetry.reset_exporters()
        assert [(r.source, r.error) for r in report.results if not r.ok] == []
        assert len(report.results) == len(list(HISTORIES.glob("*.json")))
        assert [s.name for s in receiver.spans if "change.id" in s.attributes] == []

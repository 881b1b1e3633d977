"""An OTLP/HTTP trace receiver for tests: decodes ``ExportTraceServiceRequest`` protobufs.

A real OTLP endpoint in miniature (``POST /v1/traces``, protobuf body, gzip or not) on a free
loopback port; the spans it receives are kept, decoded, for the test to inspect.
"""

from __future__ import annotations

import gzip
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest,
    ExportTraceServiceResponse,
)
from opentelemetry.proto.common.v1.common_pb2 import AnyValue


def _value(v: AnyValue) -> Any:
    kind = v.WhichOneof("value")
    if kind == "array_value":
        return [_value(x) for x in v.array_value.values]
    return getattr(v, kind) if kind else None


@dataclass
class ReceivedSpan:
    """One decoded span."""

    name: str
    trace_id: str
    span_id: str
    parent_id: str
    attributes: dict[str, Any]
    resource: dict[str, Any]
    status: int


@dataclass
class OtlpReceiver:
    """The receiver; use as a context manager (``with OtlpReceiver() as r: r.endpoint``)."""

    spans: list[ReceivedSpan] = field(default_factory=list)
    requests: int = 0
    _server: ThreadingHTTPServer | None = None

    @property
    def endpoint(self) -> str:
        """The base URL to give as ``OTEL_EXPORTER_OTLP_ENDPOINT``."""
        assert self._server is not None
        host, port = self._server.server_address[:2]
        return f"http://{host!s}:{port}"

    def __enter__(self) -> OtlpReceiver:
        receiver = self
        lock = threading.Lock()

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                if self.headers.get("Content-Encoding") == "gzip":
                    body = gzip.decompress(body)
                if self.path != "/v1/traces":
                    self.send_response(404)
                    self.end_headers()
                    return
                request = ExportTraceServiceRequest.FromString(body)
                with lock:
                    receiver.requests += 1
                    receiver.spans.extend(_decode(request))
                reply = ExportTraceServiceResponse().SerializeToString()
                self.send_response(200)
                self.send_header("Content-Type", "application/x-protobuf")
                self.send_header("Content-Length", str(len(reply)))
                self.end_headers()
                self.wfile.write(reply)

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=self._server.serve_forever, daemon=True).start()
        return self

    def __exit__(self, *exc: object) -> None:
        assert self._server is not None
        self._server.shutdown()
        self._server.server_close()

    def named(self, name: str) -> list[ReceivedSpan]:
        """The spans called ``name``."""
        return [s for s in self.spans if s.name == name]

    def ancestors(self, span: ReceivedSpan) -> Iterator[ReceivedSpan]:
        """The span's parent, its parent's parent … as far as they were received."""
        by_id = {s.span_id: s for s in self.spans}
        current = by_id.get(span.parent_id)
        while current is not None:
            yield current
            current = by_id.get(current.parent_id)


def _decode(request: ExportTraceServiceRequest) -> Iterator[ReceivedSpan]:
    for resource_spans in request.resource_spans:
        resource = {a.key: _value(a.value) for a in resource_spans.resource.attributes}
        for scope_spans in resource_spans.scope_spans:
            for span in scope_spans.spans:
                yield ReceivedSpan(
                    name=span.name,
                    trace_id=span.trace_id.hex(),
                    span_id=span.span_id.hex(),
                    parent_id=span.parent_span_id.hex(),
                    attributes={a.key: _value(a.value) for a in span.attributes},
                    resource=resource,
                    status=span.status.code,
                )

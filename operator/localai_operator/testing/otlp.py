"""An OTLP/HTTP receiver for tests and benchmarks: what an OpenTelemetry exporter POSTs to /v1/traces and
/v1/metrics (protobuf, gzip or not), decoded with opentelemetry-proto into plain spans and metric points, or only
counted (`decode=False`, for a benchmark whose receiver must cost little)."""

from __future__ import annotations

import gzip
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web

PROTOBUF: str = "application/x-protobuf"


@dataclass(frozen=True)
class ReceivedSpan:
    trace_id: str  # 32 hex digits, as in a traceparent
    span_id: str  # 16 hex digits
    parent_span_id: str  # "" for a root
    name: str
    kind: str  # SERVER, CLIENT, INTERNAL, ...
    attributes: dict[str, Any]
    status: str  # UNSET, OK, ERROR
    resource: dict[str, Any]
    start_ns: int
    end_ns: int


@dataclass(frozen=True)
class ReceivedPoint:
    """One data point of a metric (a histogram's: its count and sum)."""

    metric: str
    unit: str
    attributes: dict[str, Any]
    count: int
    total: float
    resource: dict[str, Any]


def value_of(any_value: Any) -> Any:
    """An OTLP AnyValue as Python."""
    kind = any_value.WhichOneof("value")
    if kind == "array_value":
        return [value_of(v) for v in any_value.array_value.values]
    if kind == "kvlist_value":
        return {kv.key: value_of(kv.value) for kv in any_value.kvlist_value.values}
    return getattr(any_value, kind) if kind else None


def attributes_of(pairs: Any) -> dict[str, Any]:
    return {kv.key: value_of(kv.value) for kv in pairs}


@dataclass
class OtlpReceiver:
    decode: bool = True
    spans: list[ReceivedSpan] = field(default_factory=list)
    points: list[ReceivedPoint] = field(default_factory=list)
    # Requests received per path, and their bytes (what a benchmark reports).
    requests: dict[str, int] = field(default_factory=dict)
    received_bytes: int = 0
    port: int = 0
    _runner: web.AppRunner | None = None

    @property
    def url(self) -> str:
        """The base URL an exporter takes as OTEL_EXPORTER_OTLP_ENDPOINT."""
        return f"http://127.0.0.1:{self.port}"

    async def start(self, host: str = "127.0.0.1", port: int = 0) -> OtlpReceiver:
        app = web.Application(client_max_size=64 * 1024 * 1024)
        app.router.add_post("/v1/traces", self._traces)
        app.router.add_post("/v1/metrics", self._metrics)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, host, port)
        await site.start()
        self.port = self._runner.addresses[0][1]
        return self

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()

    async def _body(self, request: web.Request) -> bytes:
        data = await request.read()
        self.requests[request.path] = self.requests.get(request.path, 0) + 1
        self.received_bytes += len(data)
        if request.headers.get("Content-Encoding") == "gzip":
            data = gzip.decompress(data)
        return data

    async def _traces(self, request: web.Request) -> web.Response:
        data = await self._body(request)
        if self.decode:
            from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
            from opentelemetry.proto.trace.v1.trace_pb2 import Span, Status

            export = ExportTraceServiceRequest.FromString(data)
            for resource_spans in export.resource_spans:
                resource = attributes_of(resource_spans.resource.attributes)
                for scope in resource_spans.scope_spans:
                    for span in scope.spans:
                        self.spans.append(
                            ReceivedSpan(
                                trace_id=span.trace_id.hex(),
                                span_id=span.span_id.hex(),
                                parent_span_id=span.parent_span_id.hex(),
                                name=span.name,
                                kind=Span.SpanKind.Name(span.kind).removeprefix("SPAN_KIND_"),
                                attributes=attributes_of(span.attributes),
                                status=Status.StatusCode.Name(span.status.code).removeprefix("STATUS_CODE_"),
                                resource=resource,
                                start_ns=span.start_time_unix_nano,
                                end_ns=span.end_time_unix_nano,
                            )
                        )
        return web.Response(body=b"", content_type=PROTOBUF)

    async def _metrics(self, request: web.Request) -> web.Response:
        data = await self._body(request)
        if self.decode:
            from opentelemetry.proto.collector.metrics.v1.metrics_service_pb2 import (
                ExportMetricsServiceRequest,
            )

            export = ExportMetricsServiceRequest.FromString(data)
            for resource_metrics in export.resource_metrics:
                resource = attributes_of(resource_metrics.resource.attributes)
                for scope in resource_metrics.scope_metrics:
                    for metric in scope.metrics:
                        kind = metric.WhichOneof("data")
                        for point in getattr(metric, kind).data_points if kind else ():
                            count = getattr(point, "count", 1)
                            total = getattr(point, "sum", getattr(point, "as_double", 0.0))
                            self.points.append(
                                ReceivedPoint(
                                    metric.name,
                                    metric.unit,
                                    attributes_of(point.attributes),
                                    int(count),
                                    float(total),
                                    resource,
                                )
                            )
        return web.Response(body=b"", content_type=PROTOBUF)

    def trace(self, trace_id: str) -> list[ReceivedSpan]:
        return [s for s in self.spans if s.trace_id == trace_id]

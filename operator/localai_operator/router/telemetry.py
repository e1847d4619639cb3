"""OpenTelemetry for the router: one span per client request (kind SERVER) with a child per upstream attempt
(CLIENT: a local pod, the cloud), carrying the GenAI semantic conventions' attributes, and the GenAI metrics;
both exported over OTLP by the SDK set up in `localai_operator.otel`.

Only when the environment names an OTLP endpoint: otherwise the app routes requests to the plain handler, no
request carries a `RequestTrace`, and the SDK is never imported. The client's W3C `traceparent`/`tracestate`
are the parent of the request's span; each local attempt sends its own span's context to the pod, and the cloud
gets it only with `telemetry.propagateToCloud` (a third party outside the cluster: by default it learns nothing
of the caller's traces). Prompts and answers are recorded only with `telemetry.captureContent`.
"""

from __future__ import annotations

import asyncio
import bisect
import json
import logging
import math
import re
import time
from collections.abc import Awaitable, Callable, Mapping
from typing import TYPE_CHECKING, Any, Final

from aiohttp import web
from multidict import CIMultiDict

from localai_operator import __version__, otel
from localai_operator.constants import ROUTER_SERVICE_NAME, SERVED_BY_FALLBACK, SERVED_BY_LOCAL
from localai_operator.router import codec, tokens
from localai_operator.router.usage import Usage

if TYPE_CHECKING:
    from opentelemetry.context import Context
    from opentelemetry.sdk.metrics.export import MetricsData
    from opentelemetry.trace import Span, Tracer
    from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

    from localai_operator.router.attempt import Attempt
    from localai_operator.router.upstream import Cloud, Endpoint

log = logging.getLogger(__name__)

INSTRUMENTATION: Final = "localai_operator.router"
# What gen_ai.provider.name says of a local pod (no well-known value exists for LocalAI).
LOCAL_PROVIDER: Final = "localai"
# gen_ai.operation.name by path (relative to /v1), the semantic conventions' well-known values; other paths are
# named by their fixed segments (`/audio/speech` -> `audio.speech`).
OPERATIONS: Final = {
    "/chat/completions": "chat",
    "/responses": "chat",
    "/completions": "text_completion",
    "/engines/{model}/completions": "text_completion",
    "/embeddings": "embeddings",
    "/engines/{model}/embeddings": "embeddings",
}
# Our attributes, beside the semantic conventions' ones.
SERVED_BY: Final = "localai_operator.served_by"
FALLBACK_REASON: Final = "localai_operator.fallback.reason"
BREAKER_STATE: Final = "localai_operator.breaker.state"
CLIENT_KEY: Final = "localai_operator.client_key.name"
ROUTE: Final = "localai_operator.route"
UPSTREAM: Final = "localai_operator.upstream"
# A client-chosen string on a span or a metric (the model name) is cut here.
NAME_LIMIT: Final = 256
# What captureContent records of a prompt or an answer, at most (characters of its JSON).
CONTENT_LIMIT: Final = 64 * 1024
# The semantic conventions' bucket boundaries.
TOKEN_BUCKETS: Final = (
    1,
    4,
    16,
    64,
    256,
    1024,
    4096,
    16384,
    65536,
    262144,
    1048576,
    4194304,
    16777216,
    67108864,
)
DURATION_BUCKETS: Final = (
    0.01,
    0.02,
    0.04,
    0.08,
    0.16,
    0.32,
    0.64,
    1.28,
    2.56,
    5.12,
    10.24,
    20.48,
    40.96,
    81.92,
)
TTFT_BUCKETS: Final = (
    0.001,
    0.005,
    0.01,
    0.02,
    0.04,
    0.06,
    0.08,
    0.1,
    0.25,
    0.5,
    0.75,
    1.0,
    2.5,
    5.0,
    7.5,
    10.0,
)
TPOT_BUCKETS: Final = (0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.4, 0.5, 0.75, 1.0, 2.5)
# The four GenAI metrics: name -> (unit, description, buckets).
METRICS: Final = {
    "gen_ai.client.token.usage": ("{token}", "Input and output tokens of answered requests.", TOKEN_BUCKETS),
    "gen_ai.server.request.duration": (
        "s",
        "Time from a request's arrival to its answer's end.",
        DURATION_BUCKETS,
    ),
    "gen_ai.server.time_to_first_token": (
        "s",
        "Time from a request's arrival to its first token.",
        TTFT_BUCKETS,
    ),
    "gen_ai.server.time_per_output_token": (
        "s",
        "Time per output token after the first, of successful answers.",
        TPOT_BUCKETS,
    ),
}
# Attribute sets kept per metric, as the SDK's default cardinality limit: beyond, one overflow series (a client
# cannot grow the router's memory with made-up model names).
CARDINALITY_LIMIT: Final = 2000
OVERFLOW: Final = (("otel.metric.overflow", True),)
Attributes = tuple[tuple[str, Any], ...]
_MODEL: Final = re.compile(rb'"model"\s*:\s*("(?:[^"\\]|\\.){0,1024}")')
_MODEL_WINDOW: Final = 64 * 1024


def operation(pattern: str) -> str:
    """gen_ai.operation.name of an API path pattern."""
    known = OPERATIONS.get(pattern)
    if known is not None:
        return known
    return ".".join(p for p in pattern.strip("/").split("/") if not p.startswith("{")) or "unknown"


def _bounded(name: str) -> str:
    return name if len(name) <= NAME_LIMIT else name[:NAME_LIMIT]


def response_model(data: bytes | bytearray) -> str | None:
    """The `model` an answer or the tail of a stream names (its last one), without decoding the whole body."""
    window = data[-_MODEL_WINDOW:] if len(data) > _MODEL_WINDOW else data
    found = _MODEL.match(window, max(0, window.rfind(b'"model"')))
    if found is None:
        return None
    quoted = found.group(1)
    try:
        value = quoted[1:-1].decode() if b"\\" not in quoted else json.loads(quoted)
    except ValueError:
        return None
    return _bounded(value) if isinstance(value, str) else None


def input_messages(a: Attempt) -> str | None:
    """The prompt as gen_ai.input.messages records it (captureContent only): role and text parts."""
    body = a.body
    if body is None:
        return None
    messages = body.value("messages")
    out: list[dict[str, Any]] = []
    if isinstance(messages, list):
        for message in messages:
            if not isinstance(message, dict):
                continue
            content = message.get("content")
            parts: list[dict[str, Any]] = []
            if isinstance(content, str):
                parts.append({"type": "text", "content": content})
            elif isinstance(content, list):
                for part in content:
                    if isinstance(part, dict):
                        text = part.get("text")
                        kind = str(part.get("type") or "text")
                        parts.append(
                            {"type": "text", "content": text} if isinstance(text, str) else {"type": kind}
                        )
            out.append({"role": str(message.get("role") or "user"), "parts": parts})
    else:
        for key in ("prompt", "input"):
            value = body.value(key)
            if value is not None:
                text = value if isinstance(value, str) else json.dumps(value)
                out.append({"role": "user", "parts": [{"type": "text", "content": text}]})
                break
    return json.dumps(out)[:CONTENT_LIMIT] if out else None


def _output_messages(text: str) -> str:
    return json.dumps([{"role": "assistant", "parts": [{"type": "text", "content": text}]}])[:CONTENT_LIMIT]


class _Point:
    """One attribute set's cumulative histogram."""

    __slots__ = ("buckets", "count", "high", "low", "total")

    def __init__(self, bounds: int) -> None:
        self.count = 0
        self.total = 0.0
        self.buckets = [0] * (bounds + 1)
        self.low = math.inf
        self.high = -math.inf


class GenAIMetrics:
    """The four GenAI histograms, aggregated on the event loop (a dict lookup and a bisection per value, where
    the SDK's instruments clean every attribute of every measurement: ~1 µs against ~7) and handed to the SDK's
    OTLP exporter as cumulative histograms with the semantic conventions' buckets."""

    def __init__(self) -> None:
        self.start_ns = time.time_ns()
        self.series: dict[str, dict[Attributes, _Point]] = {name: {} for name in METRICS}

    def record(self, name: str, value: float, attributes: Attributes) -> None:
        table = self.series[name]
        point = table.get(attributes)
        if point is None:
            if len(table) >= CARDINALITY_LIMIT:
                attributes = OVERFLOW
                point = table.get(attributes)
            if point is None:
                point = table[attributes] = _Point(len(METRICS[name][2]))
        point.count += 1
        point.total += value
        point.buckets[bisect.bisect_left(METRICS[name][2], value)] += 1
        if value < point.low:
            point.low = value
        if value > point.high:
            point.high = value

    def data(self, providers: otel.Providers) -> MetricsData | None:
        """What was recorded since the start, as the exporter takes it; None before the first request."""
        from opentelemetry.sdk.metrics.export import (
            AggregationTemporality,
            Histogram,
            HistogramDataPoint,
            Metric,
            MetricsData,
            ResourceMetrics,
            ScopeMetrics,
        )
        from opentelemetry.sdk.util.instrumentation import InstrumentationScope

        now = time.time_ns()
        metrics = [
            Metric(
                name,
                METRICS[name][1],
                METRICS[name][0],
                Histogram(
                    [
                        HistogramDataPoint(
                            dict(attributes),
                            self.start_ns,
                            now,
                            p.count,
                            p.total,
                            list(p.buckets),
                            METRICS[name][2],
                            p.low,
                            p.high,
                        )
                        for attributes, p in table.items()
                    ],
                    AggregationTemporality.CUMULATIVE,
                ),
            )
            for name, table in self.series.items()
            if table
        ]
        if not metrics:
            return None
        scope = InstrumentationScope(INSTRUMENTATION, __version__)
        return MetricsData([ResourceMetrics(providers.resource, [ScopeMetrics(scope, metrics, "")], "")])


class RouterTelemetry:
    """The router's tracer, propagator and GenAI metrics: one per process, from `start`."""

    def __init__(self, providers: otel.Providers, clock: Callable[[], float]) -> None:
        from opentelemetry.trace import NoOpTracerProvider, SpanKind, Status, StatusCode
        from opentelemetry.trace.propagation import set_span_in_context
        from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

        self.providers = providers
        self.clock = clock
        tracers = providers.tracer_provider or NoOpTracerProvider()
        self.tracer: Tracer = tracers.get_tracer(INSTRUMENTATION, __version__)
        self.metrics = GenAIMetrics()
        self._exporting: asyncio.Future[None] | None = None
        self.propagator: TraceContextTextMapPropagator = TraceContextTextMapPropagator()
        self.in_context = set_span_in_context
        self.server, self.client = SpanKind.SERVER, SpanKind.CLIENT
        self.error = Status(StatusCode.ERROR)

    @classmethod
    def start(
        cls, env: Mapping[str, str], clock: Callable[[], float] = time.monotonic
    ) -> RouterTelemetry | None:
        """Telemetry when `env` names an OTLP endpoint (and the packages are installed), else None."""
        providers = otel.start(ROUTER_SERVICE_NAME, env)
        return cls(providers, clock) if providers is not None else None

    async def traced(
        self,
        request: web.Request,
        handle: Callable[[web.Request, RequestTrace], Awaitable[web.StreamResponse]],
    ) -> web.StreamResponse:
        """`handle` inside the request's span, ended with its answer's status (or what interrupted it)."""
        trace = RequestTrace(self, request)
        try:
            response = await handle(request, trace)
        except BaseException as err:
            trace.end(None, err)
            raise
        trace.end(response.status)
        return response

    async def export(self, seconds: float) -> None:
        """The metrics so far to the collector, from a daemon thread (the exporter blocks and retries), awaited at
        most `seconds`; skipped while the previous export still runs."""
        exporter = self.providers.metric_exporter
        if exporter is None or (self._exporting is not None and not self._exporting.done()):
            return
        data = self.metrics.data(self.providers)
        if data is not None:
            self._exporting = otel.in_thread(lambda: exporter.export(data))
            await otel.within(self._exporting, seconds)

    async def export_forever(self) -> None:
        while True:
            await asyncio.sleep(self.providers.metric_interval)
            await self.export(self.providers.metric_interval)

    async def close(self, within: float) -> None:
        """The last metrics and spans out, then the exporters stopped, within `within` seconds in all."""
        deadline = asyncio.get_running_loop().time() + within
        await self.export(within)
        await self.providers.stop(max(0.0, deadline - asyncio.get_running_loop().time()))


class RequestTrace:
    """One request's span, the attempt span open now, and what the answer said (model, usage)."""

    __slots__ = (
        "_attempt",
        "_endpoint",
        "_provider",
        "_server",
        "a",
        "context",
        "input_tokens",
        "output_count",
        "output_text",
        "output_tokens",
        "response_model",
        "span",
        "telemetry",
    )

    def __init__(self, telemetry: RouterTelemetry, request: web.Request) -> None:
        self.telemetry = telemetry
        parent = telemetry.propagator.extract(request.headers)
        self.span: Span = telemetry.tracer.start_span(
            f"{request.method} {request.path}"[:NAME_LIMIT],
            context=parent,
            kind=telemetry.server,
            attributes={"http.request.method": request.method, "url.path": request.path[:NAME_LIMIT]},
        )
        self.context: Context = telemetry.in_context(self.span, parent)
        self.a: Attempt | None = None
        self._attempt: Span | None = None
        self._endpoint: Endpoint | None = None
        self._provider = LOCAL_PROVIDER
        self._server: tuple[str, int] | None = None
        self.response_model: str | None = None
        self.input_tokens: int | None = None
        self.output_tokens: int | None = None
        # Output tokens for the time per output token: reported, else the router's estimate.
        self.output_count: int | None = None
        self.output_text: str | None = None

    @property
    def capture(self) -> bool:
        """Prompts and answers go into the spans (telemetry.captureContent)."""
        a = self.a
        if a is None or not self.span.is_recording():
            return False
        settings = a.route.config.telemetry
        return settings is not None and settings.capture_content

    def bind(self, a: Attempt) -> None:
        """The request was admitted: its attempt carries this trace."""
        self.a = a
        a.trace = self

    # ------------------------------------------------------------------ attempts

    def _begin_attempt(
        self, a: Attempt, upstream: str, provider: str, model: str | None, host: str, port: int
    ) -> None:
        self._end_attempt(None, None)
        self.response_model = self.output_text = None
        self.input_tokens = self.output_tokens = self.output_count = None
        self._provider = provider
        self._server = (host, port)
        op = operation(a.api.pattern)
        attributes: dict[str, Any] = {
            "gen_ai.operation.name": op,
            "gen_ai.provider.name": provider,
            "server.address": host,
            "server.port": port,
            UPSTREAM: upstream,
        }
        if model is not None:
            attributes["gen_ai.request.model"] = _bounded(model)
        self._attempt = self.telemetry.tracer.start_span(
            f"{op} {_bounded(model)}" if model else op,
            context=self.context,
            kind=self.telemetry.client,
            attributes=attributes,
        )

    def local(self, a: Attempt, endpoint: Endpoint) -> None:
        """An attempt on a local pod begins."""
        url = endpoint.url(a.path)
        self._begin_attempt(
            a,
            SERVED_BY_LOCAL,
            LOCAL_PROVIDER,
            a.body.model if a.body else None,
            url.host or "",
            url.port or 80,
        )
        self._endpoint = endpoint

    def cloud(self, a: Attempt, cloud: Cloud, model: str | None) -> None:
        """The cloud attempt begins, asking for `model` (the provider's name for it)."""
        url = cloud.url(a.path)
        self._begin_attempt(
            a, SERVED_BY_FALLBACK, cloud.fallback.provider, model, url.host or "", url.port or 443
        )
        self._endpoint = None

    def inject(self, headers: CIMultiDict[str], cloud: bool = False) -> None:
        """The open attempt's context as `traceparent`/`tracestate`, replacing the client's (to the cloud only
        with telemetry.propagateToCloud)."""
        span = self._attempt
        if span is None:
            return
        if cloud:
            settings = self.a.route.config.telemetry if self.a is not None else None
            if settings is None or not settings.propagate_to_cloud:
                return
        self.telemetry.propagator.inject(headers, context=self.telemetry.in_context(span))

    def attempt_ended(self, status: int | None, failure: str | None) -> None:
        """The open attempt is over: its answer's status, or why it failed (a fallback reason)."""
        self._end_attempt(status, failure)

    def _end_attempt(self, status: int | None, failure: str | None, error: str | None = None) -> None:
        span = self._attempt
        if span is None:
            return
        self._attempt = None
        if span.is_recording():
            attributes: dict[str, Any] = {}
            if status is not None:
                attributes["http.response.status_code"] = status
            if failure is not None:
                attributes[FALLBACK_REASON] = failure
                attributes["error.type"] = failure
            elif error is not None:
                attributes["error.type"] = error
            elif status is not None and status >= 400:
                attributes["error.type"] = str(status)
            self._answer_attributes(attributes)
            endpoint = self._endpoint
            if endpoint is not None:
                attributes[BREAKER_STATE] = endpoint.breaker.state(self.telemetry.clock()).name.lower()
            span.set_attributes(attributes)
            if "error.type" in attributes:
                span.set_status(self.telemetry.error)
        span.end()

    def _answer_attributes(self, attributes: dict[str, Any]) -> None:
        if self.response_model is not None:
            attributes["gen_ai.response.model"] = self.response_model
        if self.input_tokens is not None:
            attributes["gen_ai.usage.input_tokens"] = self.input_tokens
        if self.output_tokens is not None:
            attributes["gen_ai.usage.output_tokens"] = self.output_tokens

    def answered(self, data: bytes | bytearray, text: list[str] | None = None) -> None:
        """An answer (or a stream's last events, and its text when collected): the model it names, and with
        captureContent its text."""
        self.response_model = response_model(data) or self.response_model
        if self.capture:
            if text is not None:
                self.output_text = "".join(text)
            elif data[:1] == b"{":
                try:
                    self.output_text = tokens.answer_text(codec.loads(bytes(data)))
                except ValueError:
                    self.output_text = None

    def counted(self, usage: Usage | None) -> None:
        """A successful answer's token figures, as the relay settled them for its metrics and cost: the usage
        attributes and token metric take only what the upstream reported (the semantic conventions leave
        estimates out unless asked for; LocalAI's all-zero usage is none), the time per output token every
        count."""
        self.output_count = usage.completion_tokens if usage is not None else None
        if usage is not None and not usage.estimated and (usage.prompt_tokens or usage.completion_tokens):
            self.input_tokens, self.output_tokens = usage.prompt_tokens, usage.completion_tokens

    # ------------------------------------------------------------------ the end

    def end(self, status: int | None, error: BaseException | None = None) -> None:
        """The request is answered (`status`) or was interrupted (`error`): the attempt still open ends with it,
        then the request's span; the metrics are recorded."""
        error_type = None if error is None else type(error).__name__
        self._end_attempt(status, None, error_type)
        a = self.a
        span = self.span
        if error_type is None and status is not None and status >= 500:
            error_type = str(status)
        if span.is_recording():
            attributes: dict[str, Any] = {}
            if status is not None:
                attributes["http.response.status_code"] = status
            if error_type is not None:
                attributes["error.type"] = error_type
            if a is not None:
                attributes.update(self._request_attributes(a))
                span.update_name(
                    f"{attributes['gen_ai.operation.name']} {attributes['gen_ai.request.model']}"
                    if "gen_ai.request.model" in attributes
                    else str(attributes["gen_ai.operation.name"])
                )
            span.set_attributes(attributes)
            if error_type is not None:
                span.set_status(self.telemetry.error)
        span.end()
        if a is not None:
            self._record(a, error_type)

    def _request_attributes(self, a: Attempt) -> dict[str, Any]:
        attributes: dict[str, Any] = {
            "gen_ai.operation.name": operation(a.api.pattern),
            "gen_ai.provider.name": self._provider,
            SERVED_BY: a.served_by,
            ROUTE: a.route.name,
        }
        model = a.body.model if a.body is not None else None
        if model is not None:
            attributes["gen_ai.request.model"] = _bounded(model)
        self._answer_attributes(attributes)
        if a.fallback_reason is not None:
            attributes[FALLBACK_REASON] = a.fallback_reason.value
        if a.key_name is not None:
            attributes[CLIENT_KEY] = a.key_name
        if self.capture:
            prompt = input_messages(a)
            if prompt is not None:
                attributes["gen_ai.input.messages"] = prompt
            if self.output_text is not None:
                attributes["gen_ai.output.messages"] = _output_messages(self.output_text)
        return attributes

    def _record(self, a: Attempt, error_type: str | None) -> None:
        """The GenAI metrics of one request."""
        metrics = self.telemetry.metrics
        now = self.telemetry.clock()
        model = a.body.model if a.body is not None else None
        attributes: Attributes = (
            ("gen_ai.operation.name", operation(a.api.pattern)),
            ("gen_ai.provider.name", self._provider),
            *((("gen_ai.request.model", _bounded(model)),) if model is not None else ()),
            *((("gen_ai.response.model", self.response_model),) if self.response_model is not None else ()),
            *(
                (("server.address", self._server[0]), ("server.port", self._server[1]))
                if self._server
                else ()
            ),
        )
        if error_type is not None:
            metrics.record(
                "gen_ai.server.request.duration", now - a.started, (*attributes, ("error.type", error_type))
            )
            return
        metrics.record("gen_ai.server.request.duration", now - a.started, attributes)
        if a.first_token_at is not None:
            metrics.record("gen_ai.server.time_to_first_token", a.first_token_at - a.started, attributes)
            if self.output_count is not None and self.output_count > 1:
                per_token = (now - a.first_token_at) / (self.output_count - 1)
                metrics.record("gen_ai.server.time_per_output_token", per_token, attributes)
        if self.input_tokens is not None:
            metrics.record(
                "gen_ai.client.token.usage", self.input_tokens, (*attributes, ("gen_ai.token.type", "input"))
            )
        if self.output_tokens is not None:
            metrics.record(
                "gen_ai.client.token.usage",
                self.output_tokens,
                (*attributes, ("gen_ai.token.type", "output")),
            )

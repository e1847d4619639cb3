"""The router's Prometheus metrics, rendered in the text exposition format (version 0.0.4).

Hand-written rather than prometheus-client: everything runs on one event loop, so no locks are
needed, and an update costs ~0.15 µs instead of ~2.5 µs (measured), on a path that runs several
updates per request. Each app owns its registry, so tests can run several routers in one process.
"""

from __future__ import annotations

import bisect
import math
from collections.abc import Callable, Iterable, Sequence
from typing import Final, TypeVar

CONTENT_TYPE: Final = "text/plain; version=0.0.4; charset=utf-8"

LabelValues = tuple[str, ...]

TTFB_BUCKETS: Final = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
DURATION_BUCKETS: Final = (
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
    10.0,
    30.0,
    60.0,
    120.0,
    300.0,
)


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def _number(value: float) -> str:
    if math.isinf(value):
        return "+Inf" if value > 0 else "-Inf"
    if value == int(value) and abs(value) < 1e15:
        return str(int(value))
    return repr(value)


def _labels(names: Sequence[str], values: LabelValues, extra: str = "") -> str:
    parts = [f'{name}="{_escape(value)}"' for name, value in zip(names, values, strict=True)]
    if extra:
        parts.append(extra)
    return "{" + ",".join(parts) + "}" if parts else ""


class _Metric:
    kind: str = ""

    def __init__(self, name: str, help_text: str, label_names: Sequence[str]) -> None:
        self.name = name
        self.help = help_text
        self.label_names = tuple(label_names)

    def header(self) -> list[str]:
        return [f"# HELP {self.name} {self.help}", f"# TYPE {self.name} {self.kind}"]

    def samples(self) -> list[str]:
        raise NotImplementedError


class Counter(_Metric):
    kind = "counter"

    def __init__(self, name: str, help_text: str, label_names: Sequence[str] = ()) -> None:
        super().__init__(name, help_text, label_names)
        self._values: dict[LabelValues, float] = {}

    def inc(self, labels: LabelValues = (), amount: float = 1.0) -> None:
        self._values[labels] = self._values.get(labels, 0.0) + amount

    def value(self, labels: LabelValues = ()) -> float:
        return self._values.get(labels, 0.0)

    def samples(self) -> list[str]:
        return [
            f"{self.name}{_labels(self.label_names, labels)} {_number(value)}"
            for labels, value in sorted(self._values.items())
        ]


class Gauge(_Metric):
    """A gauge read at scrape time from a callback, so the hot path never updates it."""

    kind = "gauge"

    def __init__(
        self,
        name: str,
        help_text: str,
        label_names: Sequence[str],
        read: Callable[[], Iterable[tuple[LabelValues, float]]],
    ) -> None:
        super().__init__(name, help_text, label_names)
        self._read = read

    def samples(self) -> list[str]:
        return [
            f"{self.name}{_labels(self.label_names, labels)} {_number(value)}"
            for labels, value in self._read()
        ]


class ReadCounter(Gauge):
    """A counter whose value is kept elsewhere and read at scrape time."""

    kind = "counter"


class Histogram(_Metric):
    kind = "histogram"

    def __init__(
        self, name: str, help_text: str, label_names: Sequence[str], buckets: Sequence[float]
    ) -> None:
        super().__init__(name, help_text, label_names)
        assert list(buckets) == sorted(buckets), "histogram buckets must be increasing"
        self.buckets = tuple(buckets)
        # Per label set: non-cumulative bucket counts (last one is +Inf), then [sum, count].
        self._series: dict[LabelValues, tuple[list[int], list[float]]] = {}

    def observe(self, labels: LabelValues, value: float) -> None:
        series = self._series.get(labels)
        if series is None:
            series = self._series[labels] = ([0] * (len(self.buckets) + 1), [0.0, 0.0])
        series[0][bisect.bisect_left(self.buckets, value)] += 1
        totals = series[1]
        totals[0] += value
        totals[1] += 1

    def count(self, labels: LabelValues) -> int:
        series = self._series.get(labels)
        return int(series[1][1]) if series else 0

    def samples(self) -> list[str]:
        lines: list[str] = []
        for labels, (counts, (total, count)) in sorted(self._series.items()):
            cumulative = 0
            for bound, bucket_count in zip((*self.buckets, math.inf), counts, strict=True):
                cumulative += bucket_count
                le = f'le="{_number(bound)}"' if math.isfinite(bound) else 'le="+Inf"'
                lines.append(f"{self.name}_bucket{_labels(self.label_names, labels, le)} {cumulative}")
            lines.append(f"{self.name}_sum{_labels(self.label_names, labels)} {_number(total)}")
            lines.append(f"{self.name}_count{_labels(self.label_names, labels)} {_number(count)}")
        return lines


_M = TypeVar("_M", bound=_Metric)


class Registry:
    def __init__(self) -> None:
        self._metrics: list[_Metric] = []

    def add(self, metric: _M) -> _M:
        assert all(m.name != metric.name for m in self._metrics), f"duplicate metric {metric.name}"
        self._metrics.append(metric)
        return metric

    def series_names(self) -> set[str]:
        names: set[str] = set()
        for metric in self._metrics:
            if isinstance(metric, Histogram):
                names.update(f"{metric.name}{suffix}" for suffix in ("_bucket", "_sum", "_count"))
            else:
                names.add(metric.name)
        return names

    def render(self) -> bytes:
        lines: list[str] = []
        for metric in self._metrics:
            lines.extend(metric.header())
            lines.extend(metric.samples())
        return ("\n".join(lines) + "\n").encode()


TOKEN_INTERVAL_BUCKETS: Final = (
    0.001,
    0.0025,
    0.005,
    0.01,
    0.02,
    0.03,
    0.05,
    0.075,
    0.1,
    0.15,
    0.25,
    0.5,
    1.0,
    2.5,
)

# First-token budgets, from the default fixed one (3 s) to the largest cap (600 s).
BUDGET_BUCKETS: Final = (0.5, 1.0, 2.0, 3.0, 4.0, 5.0, 7.5, 10.0, 15.0, 20.0, 30.0, 60.0, 120.0, 300.0, 600.0)

GaugeRead = Callable[[], Iterable[tuple[LabelValues, float]]]


def _nothing() -> Iterable[tuple[LabelValues, float]]:
    return ()


class RouterMetrics:
    """The series the router exports. Label values come from bounded sets (upstream kind, status code,
    reason, configured endpoint, client key names from the mounted Secrets), so the number of series
    cannot grow with traffic."""

    def __init__(
        self,
        breaker_states: GaugeRead,
        outstanding: GaugeRead,
        endpoints: GaugeRead,
        buffered: GaugeRead,
        *,
        slots: GaugeRead = _nothing,
        model_outstanding: GaugeRead = _nothing,
        model_slots: GaugeRead = _nothing,
        demand_requests: GaugeRead = _nothing,
        demand_in_flight: GaugeRead = _nothing,
        demand_seconds: GaugeRead = _nothing,
        waiting: GaugeRead = _nothing,
        period_cost: GaugeRead = _nothing,
        budget_exhausted: GaugeRead = _nothing,
        build_info: GaugeRead = _nothing,
        buffer_waits: GaugeRead = _nothing,
        connections: GaugeRead = _nothing,
        overloaded: GaugeRead = _nothing,
        prefill_rates: GaugeRead = _nothing,
        affinity: GaugeRead = _nothing,
    ) -> None:
        self.registry = Registry()
        add = self.registry.add
        self.build_info = add(
            Gauge(
                "localai_router_build_info",
                "Always 1: the router's version, the event loop it runs on (uvloop, or asyncio when uvloop "
                "cannot be imported) and the Python version.",
                ("version", "loop", "python"),
                build_info,
            )
        )
        self.requests = add(
            Counter(
                "localai_router_requests_total",
                "Requests answered, by the upstream that answered (local, fallback, or router when the router "
                "answered itself) and HTTP status code.",
                ("upstream", "code"),
            )
        )
        self.ttft = add(
            Histogram(
                "localai_router_time_to_first_token_seconds",
                "Seconds from request arrival to the first content token (not a role-only chunk or a keep-alive) "
                "of a chat, completion or responses answer: every stream, and non-stream requests on routes with a "
                "fallback (the router streams those from local).",
                ("upstream",),
                TTFB_BUCKETS,
            )
        )
        self.tpot = add(
            Histogram(
                "localai_router_time_per_output_token_seconds",
                "Per answer: seconds from the first to the last token divided by the output tokens after the first.",
                ("upstream",),
                TOKEN_INTERVAL_BUCKETS,
            )
        )
        self.ttfb = add(
            Histogram(
                "localai_router_time_to_first_byte_seconds",
                "Seconds from request arrival to the first response byte sent to the client.",
                ("upstream",),
                TTFB_BUCKETS,
            )
        )
        self.duration = add(
            Histogram(
                "localai_router_request_duration_seconds",
                "Seconds from request arrival to the last response byte sent to the client.",
                ("upstream",),
                DURATION_BUCKETS,
            )
        )
        self.fallbacks = add(
            Counter(
                "localai_router_fallbacks_total",
                "Requests sent to the cloud fallback, by the reason local was not used.",
                ("reason",),
            )
        )
        self.local_failures = add(
            Counter(
                "localai_router_local_failures_total",
                "Local attempts that failed, by reason, including those on routes without a fallback.",
                ("reason",),
            )
        )
        self.retries = add(
            Counter(
                "localai_router_local_retries_total",
                "Requests retried on another local endpoint after their connection to one failed with nothing sent.",
            )
        )
        self.stream_errors = add(
            Counter(
                "localai_router_stream_errors_total",
                "Streams ended with an error event because the upstream failed after bytes were sent.",
                ("upstream",),
            )
        )
        self.breaker_state = add(
            Gauge(
                "localai_router_breaker_state",
                "Circuit breaker state per local endpoint (pod): 0 closed, 1 open, 2 half-open.",
                ("endpoint",),
                breaker_states,
            )
        )
        self.outstanding = add(
            Gauge(
                "localai_router_outstanding_requests",
                "Requests in flight per local endpoint (pod), what least-outstanding balancing compares.",
                ("endpoint",),
                outstanding,
            )
        )
        self.endpoints = add(
            Gauge(
                "localai_router_local_endpoints",
                "Local endpoints (pods) the router knows, configured and discovered.",
                (),
                endpoints,
            )
        )
        self.tokens = add(
            Counter(
                "localai_router_tokens_total",
                "Tokens of answered requests, by upstream and kind (prompt, completion): OpenAI `usage` as reported, "
                "else the router's estimate (see localai_router_estimated_tokens_total).",
                ("upstream", "kind"),
            )
        )
        self.estimated_tokens = add(
            Counter(
                "localai_router_estimated_tokens_total",
                "The part of localai_router_tokens_total the router estimated from the request and the relayed text "
                "because the answer reported no usage or all zeros (LocalAI's non-streamed completions), by upstream and kind.",
                ("upstream", "kind"),
            )
        )
        self.cost = add(
            Counter(
                "localai_router_fallback_estimated_cost_total",
                "Estimated fallback spend: prompt tokens times the input price plus completion tokens times the "
                "output price (pricePerMillionTokens unless outputPricePerMillionTokens is set), / 1e6.",
            )
        )
        self.avoided = add(
            Counter(
                "localai_router_avoided_cost_total",
                "Estimated cost avoided: local answers' tokens priced as the fallback would have charged for them.",
            )
        )
        self.period_cost = add(
            Gauge(
                "localai_router_period_cost",
                "This replica's fallback spend and avoided cost in the current UTC day and month, by kind (spend, "
                "avoided) and period (2026-12-01, 2026-12); kept across container restarts.",
                ("kind", "period"),
                period_cost,
            )
        )
        self.budget_exhausted = add(
            Gauge(
                "localai_router_fallback_budget_exhausted",
                "1 while the route's spend cap (this replica's share) is reached and the route is local-only.",
                (),
                budget_exhausted,
            )
        )
        self.blocked = add(
            Counter(
                "localai_router_fallbacks_blocked_total",
                "Requests local could not answer that did not go to the cloud although the route has a fallback, "
                "by reason (budget_exhausted: the spend cap is reached; unpriced: a capped route's path without token "
                "usage and without a per-request price).",
                ("reason",),
            )
        )
        self.slots = add(
            Gauge(
                "localai_router_pod_slots",
                "Requests each local endpoint (pod) answers at once, over the models with slots.",
                ("endpoint",),
                slots,
            )
        )
        self.model_outstanding = add(
            Gauge(
                "localai_router_model_outstanding_requests",
                "Requests in flight per local endpoint (pod) and model, for the models with slots.",
                ("endpoint", "model"),
                model_outstanding,
            )
        )
        self.model_slots = add(
            Gauge(
                "localai_router_model_slots",
                "Slots per local endpoint (pod) and model: LLMModel.spec.parallel.",
                ("endpoint", "model"),
                model_slots,
            )
        )
        self.demand_requests = add(
            ReadCounter(
                "localai_router_demand_requests_total",
                "Inference requests meant for the pool, wherever they were answered (local, cloud, refused).",
                (),
                demand_requests,
            )
        )
        self.demand_in_flight = add(
            Gauge(
                "localai_router_demand_in_flight",
                "Inference requests meant for the pool in flight now, wherever they are served or waiting.",
                (),
                demand_in_flight,
            )
        )
        self.demand_seconds = add(
            ReadCounter(
                "localai_router_demand_seconds_total",
                "Integral of demand_in_flight over time: its rate is the average concurrency between two scrapes.",
                (),
                demand_seconds,
            )
        )
        self.budgets = add(
            Histogram(
                "localai_router_first_token_budget_seconds",
                "First-token budgets granted to local attempts on chat, completions and responses: "
                "firstTokenTimeoutMs plus the prompt's estimated tokens at the pod's learned prefill rate, up to "
                "maxFirstTokenTimeoutMs.",
                (),
                BUDGET_BUCKETS,
            )
        )
        self.prefill_rates = add(
            Gauge(
                "localai_router_prefill_tokens_per_second",
                "Learned prompt tokens per second to the first token, per local endpoint (pod) and model: the lower "
                "quartile of its last 32 cache-miss-like first tokens.",
                ("endpoint", "model"),
                prefill_rates,
            )
        )
        self.affinity = add(
            ReadCounter(
                "localai_router_affinity_requests_total",
                "Generation requests placed by prefix affinity, by result: hit (the pod that served the prompt's "
                "start or session last), override (that pod busy: the least-outstanding pod, and the prompt stays "
                "home), moved (that pod's breaker open or its connection failed: the least-outstanding pod, home "
                "now), new (no pod known now served it: the ring's choice).",
                ("result",),
                affinity,
            )
        )
        self.waiting = add(
            Gauge(
                "localai_router_waiting_requests",
                "Requests with nowhere else to go waiting for a free slot (saturated) or a ready pod (pool_cold).",
                ("reason",),
                waiting,
            )
        )
        self.waits = add(
            Counter(
                "localai_router_waits_total",
                "Waits for a slot or a pod that ended, by reason and result (local, timeout, left).",
                ("reason", "result"),
            )
        )
        self.rate_limited = add(
            Counter(
                "localai_router_rate_limited_total",
                "Requests refused with 429 by the route's rate limit.",
            )
        )
        self.client_requests = add(
            Counter(
                "localai_router_client_requests_total",
                "Requests with a valid client key, by the key's name (never the key).",
                ("key",),
            )
        )
        self.auth_failures = add(
            Counter(
                "localai_router_auth_failures_total",
                "Requests refused with 401, by reason (missing: no key sent; invalid: a key no Secret holds).",
                ("reason",),
            )
        )
        self.buffered = add(
            Gauge(
                "localai_router_buffered_request_bytes",
                "Request body bytes held right now (bounded by the router's body buffer).",
                (),
                buffered,
            )
        )
        self.buffer_waits = add(
            ReadCounter(
                "localai_router_buffer_waits_total",
                "Times a request body's next bytes waited for room in the body buffer.",
                (),
                buffer_waits,
            )
        )
        self.connections = add(
            Gauge(
                "localai_router_client_connections",
                "Client connections open now (server.maxConnections caps those served).",
                (),
                connections,
            )
        )
        self.overloaded = add(
            ReadCounter(
                "localai_router_overloaded_total",
                "Requests refused 503 router_overloaded by the overload guard, by the cap they hit "
                "(connections: server.maxConnections; waiting: server.maxWaiting).",
                ("cap",),
                overloaded,
            )
        )
        self.reloads = add(
            Counter(
                "localai_router_config_reloads_total",
                "Config file changes seen, by result (applied, rejected).",
                ("result",),
            )
        )

    def render(self) -> bytes:
        return self.registry.render()

    def series_names(self) -> set[str]:
        """Every series name the router can export (histograms as _bucket, _sum, _count)."""
        return self.registry.series_names()

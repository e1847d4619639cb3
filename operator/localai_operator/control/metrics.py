"""The operator's Prometheus metrics, in a registry of their own, served from the operator's event loop."""

from __future__ import annotations

from dataclasses import dataclass, field

from aiohttp import web
from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)

PASS_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10)


@dataclass
class Metrics:
    registry: CollectorRegistry = field(default_factory=CollectorRegistry)

    def __post_init__(self) -> None:
        r = self.registry
        self.passes = Counter(
            "localai_operator_reconciles",
            "Reconcile passes by kind and result",
            ["kind", "result"],
            registry=r,
        )
        self.duration = Histogram(
            "localai_operator_reconcile_duration_seconds",
            "Reconcile pass duration",
            ["kind"],
            buckets=PASS_BUCKETS,
            registry=r,
        )
        self.retries = Counter(
            "localai_operator_retries",
            "Passes scheduled again after a failure, by kind and class: fast (transient: no answer, 5xx, 409, "
            "429), slow (the user must fix: refused objects, conflicts; backoff of minutes)",
            ["kind", "class"],
            registry=r,
        )
        self.held = Gauge(
            "localai_operator_refused_resources",
            "Resources waiting for a slow retry: their objects were refused or their names are taken",
            registry=r,
        )
        self.requests = Counter(
            "localai_operator_api_requests",
            "Requests the operator sent to the API server, by verb, kind and HTTP status (0: no answer); "
            "Kopf's own list and watch requests are not among them",
            ["verb", "kind", "code"],
            registry=r,
        )
        self.leader = Gauge(
            "localai_operator_leader",
            "1 while this replica reconciles (holds the Lease, or runs without one)",
            registry=r,
        )
        self.queue_depth = Gauge("localai_operator_queue_depth", "Keys waiting for a worker", registry=r)
        self.queue_wait = Histogram(
            "localai_operator_queue_wait_seconds",
            "How long a key waited in the work queue for a worker",
            ["kind"],
            buckets=PASS_BUCKETS,
            registry=r,
        )
        self.request_duration = Histogram(
            "localai_operator_api_request_duration_seconds",
            "API request latency as the operator saw it, rate limiting included",
            ["verb"],
            buckets=PASS_BUCKETS,
            registry=r,
        )

    def count_request(self, verb: str, kind: str, code: int, seconds: float) -> None:
        self.requests.labels(verb, kind, str(code)).inc()
        self.request_duration.labels(verb).observe(seconds)

    async def serve(self, port: int) -> web.AppRunner:
        """GET /metrics on `port`, in the running loop (no thread of its own)."""

        async def metrics(_: web.Request) -> web.Response:
            response = web.Response(body=generate_latest(self.registry))
            response.content_type = CONTENT_TYPE_LATEST.split(";")[0]
            response.charset = "utf-8"
            return response

        app = web.Application()
        app.router.add_get("/metrics", metrics)
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        await web.TCPSite(runner, "0.0.0.0", port).start()
        return runner

"""The router's aiohttp application and its process entry point (`localai-operator router`)."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import os
import platform
import signal
import ssl
import time
from collections.abc import AsyncIterator, Callable, Coroutine, Iterable, Mapping
from pathlib import Path
from typing import Any, Final

import yaml
from aiohttp import web

from localai_operator import __version__, otel
from localai_operator.constants import (
    LOCALAI_HEALTH_PATH,
    LOCALAI_READY_PATH,
    ROUTER_METRICS_PORT,
    ROUTER_PORT,
)
from localai_operator.router import http, redact, replies
from localai_operator.router.auth import INVALID, MISSING, ClientKeys, presented_key
from localai_operator.router.capacity import Demand, Queues
from localai_operator.router.discovery import PodDiscovery, Resolver, resolve
from localai_operator.router.intake import BodyBuffer, Intake
from localai_operator.router.ledger import Ledger
from localai_operator.router.listing import Listing
from localai_operator.router.metrics import CONTENT_TYPE, LabelValues, RouterMetrics
from localai_operator.router.overload import Guard, GuardedRunner
from localai_operator.router.relay import Relay
from localai_operator.router.reload import DEFAULT_INTERVAL, ConfigWatcher
from localai_operator.router.slices import ApiAccess, SliceWatcher, in_cluster
from localai_operator.router.telemetry import RouterTelemetry
from localai_operator.router.upstream import API_PREFIX, Route, build_route, departed
from localai_operator.wire import RouterConfig

log = logging.getLogger(__name__)

METRICS_PATH: Final = "/metrics"
LOG_LEVELS: Final = ("debug", "info", "warning", "error")
# aiohttp's default (128) drops SYNs under a burst of new connections, costing the client a 1 s retry.
LISTEN_BACKLOG: Final = 2048
# The collector's youngest-generation threshold once the router is up (Python's default: 700); see tune_gc.
GC_YOUNG_THRESHOLD: Final = 5000
# Paths most requests take, routed by aiohttp's exact-path index instead of the /v1 pattern.
HOT_PATHS: Final = ("/chat/completions", "/completions", "/embeddings")
# Idle upstream connections are closed before typical server idle timeouts close them under us,
# which would turn a reused connection into a spurious failure (POST is never retried).
UPSTREAM_KEEPALIVE_SECONDS: Final = 10.0
# On SIGTERM, /readyz fails first and the router keeps serving while the endpoint removal spreads
# through the cluster; then in-flight requests get the rest of Kubernetes' default 30 s grace period.
SHUTDOWN_DRAIN_SECONDS: Final = 3.0
SHUTDOWN_TIMEOUT_SECONDS: Final = 25.0
CLIENT_KEYS_INTERVAL: Final = 2.0
# The first resolution of the pods' name happens before the router listens, bounded by this.
FIRST_RESOLUTION_SECONDS: Final = 5.0
# Avoided cost is written to the ledger file at most this often (spend is written at once).
LEDGER_FLUSH_SECONDS: Final = 1.0
# How long the last export of spans and metrics may take when the router stops.
TELEMETRY_SHUTDOWN_SECONDS: Final = 5.0


class Router:
    """One route's data plane: the current config snapshot, its pods and client keys, the upstream
    session and the metrics."""

    def __init__(
        self,
        config: RouterConfig,
        env: Mapping[str, str],
        redaction: redact.RedactingFilter | None = None,
        clock: Callable[[], float] = time.monotonic,
        resolver: Resolver = resolve,
        wall: Callable[[], float] = time.time,
        api: ApiAccess | None = None,
    ) -> None:
        self.env = env
        self.redaction = redaction
        self.clock = clock
        self.resolver = resolver
        self.shutting_down = False
        self.discovered: list[str] = []
        self.waiters = Queues()
        self.guard = Guard(config.server.max_connections, config.server.max_waiting)
        self.route: Route = build_route(config, None, env, clock(), waiters=self.waiters)
        self.keys: ClientKeys | None = None
        self.demand = Demand(clock())
        self.ledger = Ledger(config.server.state_directory, wall)
        self.metrics = RouterMetrics(
            self._breaker_states,
            self._outstanding,
            self._endpoint_count,
            self._buffered,
            slots=self._slots,
            model_outstanding=self._model_outstanding,
            model_slots=self._model_slots,
            demand_requests=lambda: [((), float(self.demand.requests))],
            demand_in_flight=lambda: [((), float(self.demand.in_flight))],
            demand_seconds=lambda: [((), self.demand.seconds(self.clock()))],
            waiting=lambda: [((r.value,), float(n)) for r, n in self.relay.waiting.items()],
            period_cost=lambda: [((kind, period), amount) for kind, period, amount in self.ledger.figures()],
            budget_exhausted=self._budget_exhausted,
            buffer_waits=lambda: [((), float(self.buffer.waits))],
            connections=lambda: [((), float(self.guard.connections))],
            overloaded=lambda: [((what,), float(n)) for what, n in self.guard.refused.items()],
            prefill_rates=self._prefill_rates,
            affinity=lambda: [((o.value,), float(n)) for o, n in self.route.table.outcomes.items()],
            build_info=lambda: [((__version__, loop_name(), platform.python_version()), 1.0)],
        )
        self.listing = Listing(self.metrics, clock)
        self.relay = Relay(
            self.metrics,
            clock,
            self.listing.catalog,
            self.demand,
            self.ledger,
            current=lambda: self.route,
            unreachable=self._unreachable,
            guard=self.guard,
        )
        self.buffer = BodyBuffer(config.server.body_buffer_bytes, self.guard)
        # OpenTelemetry when the environment names an OTLP endpoint; None: no request pays for it.
        self.telemetry = RouterTelemetry.start(env, clock)
        self.intake = Intake(
            lambda: self.route,
            lambda: self.keys,
            self.relay,
            self.listing,
            self.buffer,
            self.metrics,
            clock,
            self.guard,
            self.telemetry,
        )
        self.discovery: PodDiscovery | None = None
        self.slices: SliceWatcher | None = None
        # The Kubernetes API for the EndpointSlice watch (tests pass a stand-in); None: in-cluster, if any.
        self.api = api
        self._tasks: dict[str, asyncio.Task[None]] = {}
        self._configure_keys(config)
        self._report(self.route)

    @property
    def config(self) -> RouterConfig:
        return self.route.config

    def apply(self, config: RouterConfig) -> None:
        """Swap in a new snapshot; requests already running keep the one they started with."""
        old = self.route.config
        if config.local.discovery != old.local.discovery:
            self.discovered = []
        previous = self.route
        self.route = build_route(config, previous, self.env, self.clock(), self.discovered)
        for endpoint in departed(previous, self.route):
            endpoint.depart(certain=True)
        self.waiters.wake_all()  # the slots may have changed
        self.buffer.capacity = config.server.body_buffer_bytes
        self.guard.max_connections = config.server.max_connections
        self.guard.max_waiting = config.server.max_waiting
        self._configure_keys(config)
        self._report(self.route)
        if config.local.discovery != old.local.discovery:
            self._start_discovery()

    def _configure_keys(self, config: RouterConfig) -> None:
        if config.auth is None:
            self.keys = None
        elif (
            self.keys is None or self.keys.directories != ClientKeys(config.auth.key_directories).directories
        ):
            self.keys = ClientKeys(config.auth.key_directories)
            self.keys.load()

    def _report(self, route: Route) -> None:
        for problem in route.problems:
            log.error("%s", problem)
        if self.redaction is not None:
            proxy = route.cloud.proxy if route.cloud is not None else None
            self.redaction.set_secrets(
                k
                for k in (
                    route.cloud.api_key if route.cloud else None,
                    route.local_key,
                    proxy.password if proxy is not None else None,
                    proxy.authorization.removeprefix("Basic ") if proxy and proxy.authorization else None,
                    *otel.header_values(self.env),
                )
                if k
            )

    def set_discovered(self, urls: list[str], certain: bool = False) -> None:
        """The pool's ready pods, from DNS or (`certain`) from its EndpointSlices."""
        self.discovered = urls
        previous = self.route
        self.route = build_route(previous.config, previous, self.env, self.clock(), urls)
        for endpoint in departed(previous, self.route):
            endpoint.depart(certain)
        self.waiters.wake_all()  # a pod came: requests waiting for one or for a slot look again

    def _set_watched(self, urls: list[str]) -> None:
        self.set_discovered(urls, certain=True)

    def _unreachable(self) -> None:
        if self.discovery is not None:
            self.discovery.wake()

    def _hurried(self) -> bool:
        """Pods are looked up every second while the pool is cold or requests wait for room."""
        route = self.route
        return route.pool is not None and (not route.endpoints or any(self.relay.waiting.values()))

    def problems(self) -> list[str]:
        proxy = self.route.cloud.proxy if self.route.cloud is not None else None
        client: http.Client | None = getattr(self.relay, "client", None)  # set once the app runs
        proxy_problem = client.pool.proxy_problems.get(proxy.url) if proxy is not None and client else None
        return [
            *self.route.problems,
            *(self.keys.problems if self.keys is not None else ()),
            *([proxy_problem] if proxy_problem else []),
            *([self.slices.problem] if self.slices is not None and self.slices.problem else []),
        ]

    def _breaker_states(self) -> Iterable[tuple[LabelValues, float]]:
        now = self.clock()
        return [((e.base_url,), float(e.breaker.state(now))) for e in self.route.endpoints]

    def _outstanding(self) -> Iterable[tuple[LabelValues, float]]:
        return [((e.base_url,), float(e.outstanding)) for e in self.route.endpoints]

    def _slots(self) -> Iterable[tuple[LabelValues, float]]:
        route = self.route
        if not route.slots:
            return []
        return [((e.base_url,), float(route.slots_per_pod)) for e in route.endpoints]

    def _model_outstanding(self) -> Iterable[tuple[LabelValues, float]]:
        route = self.route
        return [
            ((e.base_url, model), float(e.by_model.get(model, 0)))
            for e in route.endpoints
            for model in route.slots
        ]

    def _model_slots(self) -> Iterable[tuple[LabelValues, float]]:
        route = self.route
        return [((e.base_url, model), float(n)) for e in route.endpoints for model, n in route.slots.items()]

    def _prefill_rates(self) -> Iterable[tuple[LabelValues, float]]:
        route = self.route
        return [((pod, model or ""), rate) for pod, model, rate in route.rates.figures(frozenset(route.urls))]

    def _budget_exhausted(self) -> Iterable[tuple[LabelValues, float]]:
        fallback = self.route.cloud.fallback if self.route.cloud is not None else None
        if fallback is None:
            return [((), 0.0)]
        return [((), float(self.ledger.exhausted(fallback.spend_cap, fallback.spend_share)))]

    def _endpoint_count(self) -> Iterable[tuple[LabelValues, float]]:
        return [((), float(len(self.route.endpoints)))]

    def _buffered(self) -> Iterable[tuple[LabelValues, float]]:
        return [((), float(self.buffer.used))]

    # ------------------------------------------------------------------ background work

    def _spawn(self, name: str, work: Coroutine[Any, Any, None]) -> None:
        old = self._tasks.pop(name, None)
        if old is not None:
            old.cancel()
        self._tasks[name] = asyncio.get_running_loop().create_task(work, name=f"router-{name}")

    def _start_discovery(self) -> None:
        found = self.route.config.local.discovery
        if found is None:
            self.discovery = None
            self.slices = None
            old_watch = self._tasks.pop("slices", None)
            if old_watch is not None:
                old_watch.cancel()
            old = self._tasks.pop("discovery", None)
            if old is not None:
                old.cancel()
            return
        watch = found.endpoint_slices
        access = self.api if self.api is not None else in_cluster(self.env)
        self.slices = None
        if watch is not None and access is not None:
            self.slices = SliceWatcher(access, watch.service, watch.namespace, found.url, self._set_watched)
            self._spawn("slices", self.slices.run())
        else:
            old = self._tasks.pop("slices", None)
            if old is not None:
                old.cancel()
            if watch is not None:
                log.info("no Kubernetes API access (no ServiceAccount token): following the pods by DNS")
        slices = self.slices
        self.discovery = PodDiscovery(
            found.url,
            found.interval_seconds,
            self.set_discovered,
            self.resolver,
            hurry=self._hurried,
            standing_by=lambda: slices is not None and slices.live,
        )
        self._spawn("discovery", self.discovery.run())

    async def start(self) -> None:
        found = self.route.config.local.discovery
        self._start_discovery()
        if found is not None and self.discovery is not None:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(FIRST_RESOLUTION_SECONDS):
                    slices = self.slices
                    if slices is not None:
                        while not slices.live and slices.problem is None:
                            await asyncio.sleep(0.02)
                    if slices is None or not slices.live:
                        await self.discovery.resolve_once()
        self._spawn("client-keys", self._reload_keys())
        self._spawn("catalog", self.listing.refresh_forever(lambda: self.route))
        self._spawn("idle-connections", self._sweep_idle())
        if self.telemetry is not None and self.telemetry.providers.metric_exporter is not None:
            self._spawn("telemetry-metrics", self.telemetry.export_forever())
        if self.ledger.path is not None:
            self._spawn("ledger", self._flush_ledger())

    async def _flush_ledger(self) -> None:
        while True:
            await asyncio.sleep(LEDGER_FLUSH_SECONDS)
            self.ledger.save()

    async def _sweep_idle(self) -> None:
        """Upstream connections idle past their keep-alive time are closed, not left to the server."""
        while True:
            await asyncio.sleep(UPSTREAM_KEEPALIVE_SECONDS / 2)
            self.relay.client.pool.sweep()

    async def _reload_keys(self) -> None:
        while True:
            await asyncio.sleep(CLIENT_KEYS_INTERVAL)
            if self.keys is not None:
                self.keys.load()

    async def stop(self) -> None:
        for task in self._tasks.values():
            task.cancel()
        for task in self._tasks.values():
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self._tasks.clear()
        self.ledger.save()
        if self.telemetry is not None:
            # The last spans and metrics go out, within a bound: a collector that is down must not hold the exit.
            await self.telemetry.close(TELEMETRY_SHUTDOWN_SECONDS)

    # ------------------------------------------------------------------ operational endpoints

    async def readyz(self, request: web.Request) -> web.Response:
        """Ready once a valid config is loaded, whatever the upstreams' health: taking the router out of
        its Service when local is down would also take away the cloud fallback, and a route without one
        answers with a clear 503 itself. Not ready only while shutting down. Problems with keys are
        listed here (and logged at start), not discovered per request."""
        if self.shutting_down:
            return web.json_response({"status": "shutting down"}, status=503)
        if not self._may_see_details(request):
            # Probes get their answer; key names, pod addresses and spend need a key (or the metrics port).
            return web.json_response({"status": "ready"})
        route = self.route
        now = self.clock()
        learned = list(route.rates.figures(frozenset(route.urls)))
        body: dict[str, Any] = {
            "status": "ready",
            "route": route.name,
            "fallback": route.cloud is not None,
            "auth": self.keys.names if self.keys is not None else None,
            "endpoints": [
                {
                    "url": e.base_url,
                    "breaker": e.breaker.state(now).name.lower(),
                    "outstanding": e.outstanding,
                    **({"byModel": dict(e.by_model)} if route.slots else {}),
                    **(
                        {"prefillTokensPerSecond": rates}
                        if (rates := {m or "": round(r, 1) for p, m, r in learned if p == e.base_url})
                        else {}
                    ),
                }
                for e in route.endpoints
            ],
            "problems": self.problems(),
            "affinity": {"enabled": route.affinity is not None, "keys": len(route.table)},
        }
        if route.slots:
            body["slots"] = dict(route.slots)
        fallback = route.cloud.fallback if route.cloud is not None else None
        if fallback is not None and fallback.spend_cap is not None:
            cap = fallback.spend_cap
            body["spendCap"] = {
                "amount": cap.amount,
                "period": cap.period,
                "spent": self.ledger.amount("spend", self.ledger.current(cap.period)),
                "exhausted": self.ledger.exhausted(cap, fallback.spend_share),
            }
        return web.json_response(body)

    async def healthz(self, request: web.Request) -> web.Response:
        return web.Response(text="ok")

    async def metrics_text(self, request: web.Request) -> web.Response:
        if not self._may_see_details(request):
            self.metrics.auth_failures.inc((MISSING if presented_key(request.headers) is None else INVALID,))
            return replies.error(
                401,
                f"this route checks client keys: {METRICS_PATH} needs one here, or scrape the metrics port "
                f"({ROUTER_METRICS_PORT})",
                headers={"WWW-Authenticate": 'Bearer realm="localai-operator-router"'},
            )
        return web.Response(body=self.metrics.render(), headers={"Content-Type": CONTENT_TYPE})

    def _may_see_details(self, request: web.Request) -> bool:
        """The metrics port, a route without client keys, or a request with a valid key."""
        if request.app.get(METRICS_APP, False) or self.keys is None:
            return True
        presented = presented_key(request.headers)
        return presented is not None and self.keys.name_of(presented) is not None

    def on_reload(self, applied: bool) -> None:
        self.metrics.reloads.inc(("applied" if applied else "rejected",))


ROUTER: Final = web.AppKey("router", Router)
# Set on the app of the metrics port: its requests need no client key.
METRICS_APP: Final = web.AppKey("metrics_port", bool)


def create_metrics_app(router: Router) -> web.Application:
    """The metrics port's app: /metrics, /readyz with its details and /healthz, for in-cluster scrapers."""
    app = web.Application()
    app[METRICS_APP] = True
    app.router.add_get(METRICS_PATH, router.metrics_text)
    app.router.add_get(LOCALAI_READY_PATH, router.readyz)
    app.router.add_get(LOCALAI_HEALTH_PATH, router.healthz)
    return app


def create_app(
    config: RouterConfig,
    *,
    config_path: str | Path | None = None,
    config_content: bytes | None = None,
    reload_interval: float = DEFAULT_INTERVAL,
    env: Mapping[str, str] | None = None,
    redaction: redact.RedactingFilter | None = None,
    resolver: Resolver = resolve,
    wall: Callable[[], float] = time.time,
    tls: ssl.SSLContext | None = None,
    api: ApiAccess | None = None,
) -> web.Application:
    """The router app; with `config_path`, the file is watched and reloaded when its content changes. `wall`
    (Unix seconds) decides the spend cap's periods; `tls`: the context for https upstreams (default: the system's
    CAs)."""
    router = Router(
        config, os.environ if env is None else env, redaction, resolver=resolver, wall=wall, api=api
    )
    # Body size is the router's own policy (policy.maxRequestBytes), checked as the body is read.
    app = web.Application(client_max_size=2**63)
    app[ROUTER] = router
    # With telemetry off, requests take the handler without its hooks.
    handle = router.intake.handle if router.telemetry is None else router.intake.handle_traced
    for path in HOT_PATHS:
        app.router.add_route("*", API_PREFIX + path, handle)
    app.router.add_route("*", API_PREFIX + "/{tail:.*}", handle)
    app.router.add_get(LOCALAI_READY_PATH, router.readyz)
    app.router.add_get(LOCALAI_HEALTH_PATH, router.healthz)
    app.router.add_get(METRICS_PATH, router.metrics_text)
    # Last: aiohttp's own 404 and 405 are plain text; this answers every other path with an OpenAI error.
    app.router.add_route("*", "/{tail:.*}", router.intake.not_found)

    async def lifecycle(app: web.Application) -> AsyncIterator[None]:
        client = http.Client(keepalive=UPSTREAM_KEEPALIVE_SECONDS, tls=tls)
        router.relay.client = router.listing.client = client
        await router.start()
        watcher = None
        if config_path is not None:
            watcher = asyncio.create_task(
                ConfigWatcher(
                    config_path, router.apply, router.on_reload, reload_interval, config_content
                ).run(),
                name="router-config-watcher",
            )
        yield
        router.shutting_down = True
        if watcher is not None:
            watcher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await watcher
        await router.stop()
        client.close()

    app.cleanup_ctx.append(lifecycle)
    return app


async def start(app: web.Application, host: str = "127.0.0.1", port: int = 0) -> tuple[web.AppRunner, int]:
    """Serve `app` and return its runner and the bound port (tests pass port 0)."""
    server = app[ROUTER].config.server
    # Cancelling the handler when the client disconnects is what closes the upstream request.
    # aiohttp's keep-alive timer runs from the connection's start and from each response's end until the
    # next request's headers are complete: it is the header-read timeout too.
    runner = GuardedRunner(
        app,
        app[ROUTER].guard,
        handler_cancellation=True,
        access_log=None,
        shutdown_timeout=SHUTDOWN_TIMEOUT_SECONDS,
        keepalive_timeout=server.header_timeout_seconds,
    )
    await runner.setup()
    site = web.TCPSite(runner, host, port, backlog=LISTEN_BACKLOG, reuse_address=True)
    await site.start()
    bound = runner.addresses[0][1]
    assert isinstance(bound, int)
    return runner, bound


async def _serve(
    config: RouterConfig,
    content: bytes,
    config_path: Path,
    host: str,
    port: int,
    redaction: redact.RedactingFilter,
    metrics_port: int | None = None,
) -> None:
    app = create_app(config, config_path=config_path, config_content=content, redaction=redaction)
    runner, bound = await start(app, host, port)
    router = app[ROUTER]
    metrics_runner = None
    if metrics_port is not None:
        metrics_runner = web.AppRunner(create_metrics_app(router), access_log=None, shutdown_timeout=1)
        await metrics_runner.setup()
        await web.TCPSite(metrics_runner, host, metrics_port, reuse_address=True).start()
        log.info("metrics and readiness details on %s:%d", host, metrics_port)
    tune_gc()
    log.info(
        "router %s for route %s listening on %s:%d, event loop: %s",
        __version__,
        router.route.name,
        host,
        bound,
        loop_name(),
    )
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    router.shutting_down = True
    log.info("stopping: not ready, draining for %.0fs", SHUTDOWN_DRAIN_SECONDS)
    await asyncio.sleep(SHUTDOWN_DRAIN_SECONDS)
    log.info("stopping: finishing in-flight requests (up to %.0fs)", SHUTDOWN_TIMEOUT_SECONDS)
    await runner.cleanup()
    if metrics_runner is not None:
        await metrics_runner.cleanup()


def tune_gc() -> None:
    """Once the router is up: what it built to start (config, modules, the app) leaves the collector's view,
    and the youngest generation is collected less often. With 64 requests in flight, each holding its
    objects for the request's life, the default threshold (700) collected about every 50 requests,
    scanning and promoting live objects each time: about 4 % of the router's CPU, 0.2 % with these settings
    (benchmarks/README.md). Garbage cycles wait a little longer; the memory limit is the same."""
    gc.freeze()
    _, older, oldest = gc.get_threshold()
    gc.set_threshold(GC_YOUNG_THRESHOLD, older, oldest)


def event_loop() -> Callable[[], asyncio.AbstractEventLoop] | None:
    """uvloop's loop factory (a dependency wherever it has wheels: what the benchmarks measure), or None
    for asyncio's own loop when it cannot be imported, said in the log."""
    try:
        import uvloop
    except ImportError as err:
        log.warning("uvloop cannot be imported (%s): running on asyncio's default event loop, slower", err)
        return None
    return uvloop.new_event_loop


def loop_name() -> str:
    """The running loop's implementation, as the build-info metric reports it: uvloop or asyncio."""
    return "uvloop" if type(asyncio.get_running_loop()).__module__.startswith("uvloop") else "asyncio"


def main(
    config_path: str | Path,
    host: str = "0.0.0.0",
    port: int = ROUTER_PORT,
    log_level: str = "info",
    metrics_port: int | None = None,
) -> int:
    logging.basicConfig(
        level=getattr(logging, log_level.upper()), format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    redaction = redact.install()
    path = Path(config_path)
    try:
        content = path.read_bytes()
        config = RouterConfig.from_yaml(content)
    except OSError as err:
        log.error("cannot read the router config %s: %s", path, err)
        return 2
    except (yaml.YAMLError, ValueError) as err:
        log.error("the router config %s is invalid: %s", path, err)
        return 2
    factory = event_loop()
    with asyncio.Runner(loop_factory=factory) as runner:
        runner.run(_serve(config, content, path, host, port, redaction, metrics_port))
    return 0

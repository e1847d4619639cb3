"""The router's aiohttp application and its process entry point (`localai-operator router`)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import time
from collections.abc import AsyncIterator, Callable, Iterable, Mapping
from pathlib import Path
from typing import Final

import aiohttp
import yaml
from aiohttp import web

from localai_operator.constants import LOCALAI_HEALTH_PATH, LOCALAI_READY_PATH, ROUTER_PORT
from localai_operator.router import redact
from localai_operator.router.config import RouterConfig
from localai_operator.router.metrics import CONTENT_TYPE, LabelValues, RouterMetrics
from localai_operator.router.proxy import Proxy, RouteHolder
from localai_operator.router.reload import DEFAULT_INTERVAL, ConfigWatcher
from localai_operator.router.upstream import API_PATHS, API_PREFIX, build_route

log = logging.getLogger(__name__)

METRICS_PATH: Final = "/metrics"
# Chat requests can carry long contexts and inline images; the body is held once per request.
MAX_REQUEST_BYTES: Final = 32 * 1024 * 1024
# aiohttp's default (128) drops SYNs under a burst of new connections, costing the client a 1 s retry.
LISTEN_BACKLOG: Final = 2048
# Idle upstream connections are closed before typical server idle timeouts close them under us,
# which would turn a reused connection into a spurious failure (POST is never retried).
UPSTREAM_KEEPALIVE_SECONDS: Final = 10.0
# On SIGTERM, /readyz fails first and the router keeps serving while the endpoint removal spreads
# through the cluster; then in-flight requests get the rest of Kubernetes' default 30 s grace period.
SHUTDOWN_DRAIN_SECONDS: Final = 3.0
SHUTDOWN_TIMEOUT_SECONDS: Final = 25.0


class Router:
    """One route's data plane: the current config snapshot, the upstream session and the metrics."""

    def __init__(
        self,
        config: RouterConfig,
        env: Mapping[str, str],
        redaction: redact.RedactingFilter | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.env = env
        self.redaction = redaction
        self.clock = clock
        self.holder = RouteHolder(build_route(config, None, env, clock()))
        self.metrics = RouterMetrics(self._breaker_states, self._outstanding)
        self.proxy = Proxy(self.holder, self.metrics, clock)
        self._update_secrets()

    @property
    def config(self) -> RouterConfig:
        return self.holder.route.config

    def apply(self, config: RouterConfig) -> None:
        """Swap in a new snapshot; requests already running keep the one they started with."""
        self.holder.route = build_route(config, self.holder.route, self.env, self.clock())
        self._update_secrets()

    def _update_secrets(self) -> None:
        cloud = self.holder.route.cloud
        if self.redaction is not None and cloud is not None and cloud.api_key:
            self.redaction.set_secrets([cloud.api_key])

    def _breaker_states(self) -> Iterable[tuple[LabelValues, float]]:
        now = self.clock()
        return [((e.base_url,), float(e.breaker.state(now))) for e in self.holder.route.endpoints]

    def _outstanding(self) -> Iterable[tuple[LabelValues, float]]:
        return [((e.base_url,), float(e.outstanding)) for e in self.holder.route.endpoints]

    async def readyz(self, request: web.Request) -> web.Response:
        """Ready once a valid config is loaded, whatever the upstreams' health: taking the router out
        of its Service when local is down would also take away the cloud fallback, and a route
        without one answers with a clear 503 itself. Not ready only while shutting down."""
        if self.holder.shutting_down:
            return web.json_response({"status": "shutting down"}, status=503)
        route = self.holder.route
        now = self.clock()
        return web.json_response({
            "status": "ready",
            "route": route.name,
            "fallback": route.cloud is not None,
            "endpoints": [
                {"url": e.base_url, "breaker": e.breaker.state(now).name.lower(), "outstanding": e.outstanding}
                for e in route.endpoints
            ],
        })  # fmt: skip

    async def healthz(self, request: web.Request) -> web.Response:
        return web.Response(text="ok")

    async def metrics_text(self, request: web.Request) -> web.Response:
        return web.Response(body=self.metrics.render(), headers={"Content-Type": CONTENT_TYPE})

    def on_reload(self, applied: bool) -> None:
        self.metrics.reloads.inc(("applied" if applied else "rejected",))


ROUTER: Final = web.AppKey("router", Router)


def create_app(
    config: RouterConfig,
    *,
    config_path: str | Path | None = None,
    config_content: bytes | None = None,
    reload_interval: float = DEFAULT_INTERVAL,
    env: Mapping[str, str] | None = None,
    redaction: redact.RedactingFilter | None = None,
) -> web.Application:
    """The router app; with `config_path`, the file is watched and reloaded when its content changes."""
    router = Router(config, os.environ if env is None else env, redaction)
    app = web.Application(client_max_size=MAX_REQUEST_BYTES)
    app[ROUTER] = router
    for path in API_PATHS:
        if path != "/models":
            app.router.add_post(API_PREFIX + path, router.proxy.relay)
    app.router.add_get(API_PREFIX + "/models", router.proxy.models)
    app.router.add_get(LOCALAI_READY_PATH, router.readyz)
    app.router.add_get(LOCALAI_HEALTH_PATH, router.healthz)
    app.router.add_get(METRICS_PATH, router.metrics_text)

    async def lifecycle(app: web.Application) -> AsyncIterator[None]:
        connector = aiohttp.TCPConnector(limit=0, keepalive_timeout=UPSTREAM_KEEPALIVE_SECONDS)
        # No cookie jar: cookies set by one client's upstream answer must never reach another client.
        router.proxy.session = aiohttp.ClientSession(
            connector=connector, cookie_jar=aiohttp.DummyCookieJar(), auto_decompress=False, trust_env=False
        )
        watcher = None
        if config_path is not None:
            watcher = asyncio.create_task(
                ConfigWatcher(
                    config_path, router.apply, router.on_reload, reload_interval, config_content
                ).run(),
                name="router-config-watcher",
            )
        yield
        router.holder.shutting_down = True
        if watcher is not None:
            watcher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await watcher
        await router.proxy.session.close()

    app.cleanup_ctx.append(lifecycle)
    return app


async def start(app: web.Application, host: str = "127.0.0.1", port: int = 0) -> tuple[web.AppRunner, int]:
    """Serve `app` and return its runner and the bound port (tests pass port 0)."""
    # Cancelling the handler when the client disconnects is what closes the upstream request.
    runner = web.AppRunner(
        app, handler_cancellation=True, access_log=None, shutdown_timeout=SHUTDOWN_TIMEOUT_SECONDS
    )
    await runner.setup()
    site = web.TCPSite(runner, host, port, backlog=LISTEN_BACKLOG, reuse_address=True)
    await site.start()
    bound = runner.addresses[0][1]
    assert isinstance(bound, int)
    return runner, bound


async def _serve(config: RouterConfig, content: bytes, config_path: Path, host: str, port: int,
                 redaction: redact.RedactingFilter) -> None:  # fmt: skip
    app = create_app(config, config_path=config_path, config_content=content, redaction=redaction)
    runner, bound = await start(app, host, port)
    log.info("router for route %s listening on %s:%d", app[ROUTER].holder.route.name, host, bound)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    app[ROUTER].holder.shutting_down = True
    log.info("stopping: not ready, draining for %.0fs", SHUTDOWN_DRAIN_SECONDS)
    await asyncio.sleep(SHUTDOWN_DRAIN_SECONDS)
    log.info("stopping: finishing in-flight requests (up to %.0fs)", SHUTDOWN_TIMEOUT_SECONDS)
    await runner.cleanup()


def _loop_factory() -> Callable[[], asyncio.AbstractEventLoop] | None:
    try:
        import uvloop
    except ImportError:
        return None
    return uvloop.new_event_loop


def main(config_path: str | Path, host: str = "0.0.0.0", port: int = ROUTER_PORT) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
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
    factory = _loop_factory()
    log.info("event loop: %s", "uvloop" if factory else "asyncio")
    with asyncio.Runner(loop_factory=factory) as runner:
        runner.run(_serve(config, content, path, host, port, redaction))
    return 0

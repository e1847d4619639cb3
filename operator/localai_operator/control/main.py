"""`localai-operator run`: build the controller (API client, caches, work queue, leader election, metrics) and run
Kopf with it as the memo every handler receives."""

from __future__ import annotations

import asyncio
import logging
import os
import socket
from dataclasses import dataclass

import kopf

from localai_operator.constants import ROUTER_OTLP_ENDPOINT_ENV, ROUTER_SAMPLING_RATIO_ENV
from localai_operator.control import (
    handlers,  # noqa: F401  (registers the handlers with Kopf)
    kopfwatch,
    startgate,
)
from localai_operator.control.controller import Controller, Options
from localai_operator.control.elastic import INTERVAL_SECONDS
from localai_operator.control.kube import Api, login
from localai_operator.control.leader import LeaderElector
from localai_operator.control.metrics import Metrics
from localai_operator.control.queue import WorkQueue
from localai_operator.control.tracing import PassTracer
from localai_operator.render import RenderSettings
from localai_operator.render.common import content_hash

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class RunOptions:
    """What `localai-operator run` was asked for (cli.run_options builds it from the command line)."""

    namespaces: tuple[str, ...] = ()
    all_namespaces: bool = False
    metrics_port: int = 8081
    health_port: int = 8082
    verbose: bool = False
    leader_election: bool = True
    workers: int = 64
    api_qps: float = 200.0
    api_burst: int = 400
    read_model_headers: bool = True

    @property
    def watched(self) -> list[str] | None:
        """The namespaces to watch, or None for all of them."""
        return None if self.all_namespaces or not self.namespaces else list(self.namespaces)


def settings_from_env() -> RenderSettings:
    defaults = RenderSettings()
    return RenderSettings(
        operator_image=os.environ.get("LOCALAI_OPERATOR_IMAGE", defaults.operator_image),
        localai_cpu_image=os.environ.get("LOCALAI_OPERATOR_LOCALAI_CPU_IMAGE", defaults.localai_cpu_image),
        localai_gpu_image=os.environ.get("LOCALAI_OPERATOR_LOCALAI_GPU_IMAGE", defaults.localai_gpu_image),
        downloader_image=os.environ.get("LOCALAI_OPERATOR_DOWNLOADER_IMAGE") or None,
        backend_repository=os.environ.get("LOCALAI_OPERATOR_LOCALAI_BACKEND_REPOSITORY") or None,
        router_otlp_endpoint=os.environ.get(ROUTER_OTLP_ENDPOINT_ENV) or None,
        router_sampling_ratio=_ratio(os.environ.get(ROUTER_SAMPLING_RATIO_ENV)),
    )


def _ratio(value: str | None) -> float | None:
    try:
        return min(1.0, max(0.0, float(value))) if value else None
    except ValueError:
        log.warning("%s=%r is not a number: the routers sample every trace", ROUTER_SAMPLING_RATIO_ENV, value)
        return None


def lease_name(namespaces: list[str] | None) -> str:
    """One lease per watched scope: operators watching different namespaces do not stand by for each other."""
    if not namespaces:
        return "localai-operator"
    return f"localai-operator-{content_hash(sorted(namespaces))[:10]}"


def controller(options: RunOptions, settings: kopf.OperatorSettings) -> Controller:
    metrics = Metrics()
    api = Api(
        lambda: login(settings, log),
        count=metrics.count_request,
        rate=options.api_qps,
        burst=options.api_burst,
    )
    elector = None
    if options.leader_election:
        elector = LeaderElector(
            api,
            namespace=os.environ.get("POD_NAMESPACE", "default"),
            name=lease_name(options.watched),
            identity=f"{socket.gethostname()}-{os.getpid()}",
        )
    resync = float(os.environ.get("LOCALAI_OPERATOR_RESYNC_SECONDS", "60"))
    autoscale = float(os.environ.get("LOCALAI_OPERATOR_AUTOSCALE_SECONDS", str(INTERVAL_SECONDS)))
    return Controller(
        api=api,
        settings=settings_from_env(),
        metrics=metrics,
        options=Options(
            workers=options.workers,
            resync_seconds=resync,
            metrics_port=options.metrics_port,
            autoscale_seconds=autoscale,
            read_headers=options.read_model_headers,
        ),
        elector=elector,
        tracer=PassTracer.start(os.environ),
        # A few workers at most for resyncs and derived fields (servedBy): the rest are always free for changes,
        # and a burst of pools does not compete at the API server with a thousand servedBy updates.
        queue=WorkQueue(
            background_limit=max(1, options.workers // 8),
            waited=lambda key, seconds: metrics.queue_wait.labels(key.kind).observe(seconds),
        ),
    )


def run(options: RunOptions) -> int:
    level = os.environ.get("LOCALAI_OPERATOR_LOG_LEVEL", "DEBUG" if options.verbose else "INFO").upper()
    logging.basicConfig(level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if not options.verbose:
        # Kopf's per-event lines and the liveness probe's access log are noise at INFO.
        logging.getLogger("kopf").setLevel(logging.WARNING)
        logging.getLogger("aiohttp.access").setLevel(logging.WARNING)
    startgate.make_linear()
    kopfwatch.install()
    settings = kopf.OperatorSettings()
    watched = options.watched
    operator = kopf.operator(
        clusterwide=watched is None,
        namespaces=watched or [],
        standalone=True,
        liveness_endpoint=f"http://0.0.0.0:{options.health_port}/healthz" if options.health_port else None,
        settings=settings,
        memo=controller(options, settings),
    )
    try:
        import uvloop
    except ImportError:
        asyncio.run(operator)
    else:
        with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
            runner.run(operator)
    return 0

"""`localai-operator run`: configure Kopf, the API client, metrics and the resync loop, then run."""

from __future__ import annotations

import asyncio
import logging
import os
from typing import Any

import kopf
from kubernetes import client, config
from prometheus_client import Counter, Gauge, Histogram, start_http_server

from localai_operator import handlers
from localai_operator.kube import WRITES, Kube
from localai_operator.reconcile import Reconciler
from localai_operator.render import RenderSettings

RECONCILES = Counter("localai_operator_reconciles_total", "Reconcile passes", ["kind", "result"])
DURATION = Histogram("localai_operator_reconcile_duration_seconds", "Reconcile pass duration", ["kind"],
                     buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10))  # fmt: skip
API_WRITES = Gauge("localai_operator_api_writes", "API writes sent since start", ["write"])


def _observe(kind: str, seconds: float, result: str) -> None:
    RECONCILES.labels(kind, result).inc()
    DURATION.labels(kind).observe(seconds)
    with WRITES.lock:
        counts = dict(WRITES.counts)
    for key, value in counts.items():
        API_WRITES.labels(key).set(value)


def api_client() -> client.ApiClient:
    try:
        config.load_incluster_config()  # type: ignore[no-untyped-call]
    except config.ConfigException:
        config.load_kube_config()  # type: ignore[no-untyped-call]
    return client.ApiClient()


def settings_from_env() -> RenderSettings:
    defaults = RenderSettings()
    return RenderSettings(
        operator_image=os.environ.get("LOCALAI_OPERATOR_IMAGE", defaults.operator_image),
        localai_cpu_image=os.environ.get("LOCALAI_OPERATOR_LOCALAI_CPU_IMAGE", defaults.localai_cpu_image),
        localai_gpu_image=os.environ.get("LOCALAI_OPERATOR_LOCALAI_GPU_IMAGE", defaults.localai_gpu_image),
    )


def run(
    *, namespaces: list[str], all_namespaces: bool, metrics_port: int, health_port: int, verbose: bool
) -> int:
    level = os.environ.get("LOCALAI_OPERATOR_LOG_LEVEL", "DEBUG" if verbose else "INFO").upper()
    logging.basicConfig(level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if not verbose:
        logging.getLogger("kopf.objects").setLevel(logging.WARNING)  # one line per handled event is noise
    watched = None if all_namespaces or not namespaces else list(namespaces)
    handlers.STATE["reconciler"] = Reconciler(Kube(api_client()), settings_from_env(), _observe)
    handlers.STATE["namespaces"] = watched
    if metrics_port:
        start_http_server(metrics_port)
    liveness = f"http://0.0.0.0:{health_port}/healthz" if health_port else None
    kopf.run(
        clusterwide=watched is None,
        namespaces=watched or [],
        standalone=True,
        liveness_endpoint=liveness,
    )
    return 0


@kopf.on.startup()
async def configure(settings: kopf.OperatorSettings, **_: Any) -> None:
    settings.posting.level = logging.WARNING
    settings.watching.server_timeout = 300
    settings.watching.client_timeout = 330
    settings.networking.error_backoffs = [1, 2, 5, 10, 30, 60]  # bounded: never a retry storm
    settings.execution.max_workers = 8
    if handlers.STATE.get("reconciler") is not None:
        asyncio.get_running_loop().create_task(handlers.resync_forever(handlers.STATE.get("namespaces")))

"""`localai-operator run`: configure Kopf, the API client, metrics and the resync loop, then run."""

from __future__ import annotations

import asyncio
import logging
import os
import socket
from typing import Any

import kopf
from kubernetes import client, config
from prometheus_client import Counter, Gauge, Histogram, start_http_server

from localai_operator import handlers
from localai_operator.kube import WRITES, Kube, LeaderElector
from localai_operator.reconcile import Reconciler
from localai_operator.render import RenderSettings
from localai_operator.render.common import content_hash

RECONCILES = Counter("localai_operator_reconciles_total", "Reconcile passes", ["kind", "result"])
DURATION = Histogram("localai_operator_reconcile_duration_seconds", "Reconcile pass duration", ["kind"],
                     buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10))  # fmt: skip
LEADER = Gauge("localai_operator_leader", "1 while this replica holds the lease (or runs without election)")
API_WRITES = Gauge("localai_operator_api_writes", "API writes sent since start", ["write"])


def _observe(kind: str, seconds: float, result: str) -> None:
    RECONCILES.labels(kind, result).inc()
    DURATION.labels(kind).observe(seconds)
    with WRITES.lock:
        counts = dict(WRITES.counts)
    for key, value in counts.items():
        API_WRITES.labels(key).set(value)


def api_client() -> client.ApiClient:
    configuration = client.Configuration()
    try:
        config.load_incluster_config(client_configuration=configuration)  # type: ignore[no-untyped-call]
    except config.ConfigException:
        config.load_kube_config(client_configuration=configuration)  # type: ignore[no-untyped-call]
    # Kopf's worker threads and the dependents worker share this client: one connection each, no churn.
    configuration.connection_pool_maxsize = 32
    return client.ApiClient(configuration)


def settings_from_env() -> RenderSettings:
    defaults = RenderSettings()
    return RenderSettings(
        operator_image=os.environ.get("LOCALAI_OPERATOR_IMAGE", defaults.operator_image),
        localai_cpu_image=os.environ.get("LOCALAI_OPERATOR_LOCALAI_CPU_IMAGE", defaults.localai_cpu_image),
        localai_gpu_image=os.environ.get("LOCALAI_OPERATOR_LOCALAI_GPU_IMAGE", defaults.localai_gpu_image),
        downloader_image=os.environ.get("LOCALAI_OPERATOR_DOWNLOADER_IMAGE") or None,
        backend_repository=os.environ.get("LOCALAI_OPERATOR_LOCALAI_BACKEND_REPOSITORY") or None,
    )


def lease_name(namespaces: list[str] | None) -> str:
    """One lease per watched scope: operators watching different namespaces do not stand by for each other."""
    if not namespaces:
        return "localai-operator"
    return f"localai-operator-{content_hash(sorted(namespaces))[:10]}"


def run(
    *,
    namespaces: list[str],
    all_namespaces: bool,
    metrics_port: int,
    health_port: int,
    verbose: bool,
    leader_election: bool = True,
) -> int:
    level = os.environ.get("LOCALAI_OPERATOR_LOG_LEVEL", "DEBUG" if verbose else "INFO").upper()
    logging.basicConfig(level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if not verbose:
        logging.getLogger("kopf.objects").setLevel(logging.WARNING)  # one line per handled event is noise
    watched = None if all_namespaces or not namespaces else list(namespaces)
    kube = Kube(api_client())
    handlers.STATE["reconciler"] = Reconciler(kube, settings_from_env(), _observe)
    handlers.STATE["namespaces"] = watched
    if leader_election:
        identity = f"{socket.gethostname()}-{os.getpid()}"
        lease_namespace = os.environ.get("POD_NAMESPACE", "default")
        elector = LeaderElector(kube, lease_namespace, lease_name(watched), identity)
        handlers.STATE["elector"] = elector
        LEADER.set_function(lambda: 1.0 if elector.leading.is_set() else 0.0)
    else:
        LEADER.set(1)
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
        loop = asyncio.get_running_loop()
        namespaces = handlers.STATE.get("namespaces")
        tasks = handlers.STATE.setdefault("tasks", [])  # referenced, so the loop cannot drop them
        tasks.append(loop.create_task(handlers.resync_forever(namespaces)))
        if handlers.STATE.get("elector") is not None:
            tasks.append(loop.create_task(handlers.lead_forever(handlers.STATE["elector"], namespaces)))


@kopf.on.cleanup()
async def release_lease(**_: Any) -> None:
    handlers.STOPPING.set()  # no new reconcile, no resync, no re-acquiring after the release below
    elector: LeaderElector | None = handlers.STATE.get("elector")
    if elector is not None:
        await asyncio.to_thread(elector.release)

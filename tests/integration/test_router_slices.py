"""The router's EndpointSlice watch against the real control plane: with the ServiceAccount, Role and RoleBinding
the renderer gives a pool route's router (its token only, RBAC on), the router learns a pod of the pool's headless
Service within a second of its Ready transition and drops it within a second of its deletion."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import pytest
import yaml
from kubernetes import client

from localai_operator.api import FallbackRoute
from localai_operator.render.route import slice_reader
from localai_operator.router.slices import ApiAccess, SliceWatcher
from tests.helpers import ClusterAccess, kubectl

pytestmark = pytest.mark.cluster

SERVICE = "gpu-pool-pods"
LABELS = {"app.kubernetes.io/name": "slice-test"}


def route_in(namespace: str) -> FallbackRoute:
    return FallbackRoute.parse(
        {
            "metadata": {"name": "chat", "namespace": namespace, "uid": "u"},
            "spec": {"primary": {"poolRef": {"name": "gpu-pool"}}},
        }
    )


def pod(name: str) -> client.V1Pod:
    return client.V1Pod(
        metadata=client.V1ObjectMeta(name=name, labels=LABELS),
        spec=client.V1PodSpec(
            containers=[client.V1Container(name="localai", image="busybox:1.36", command=["sleep", "3600"])],
            termination_grace_period_seconds=0,
        ),
    )


def ready_ip(cluster: ClusterAccess, namespace: str, name: str) -> str | None:
    status = cluster.core.read_namespaced_pod(name, namespace).status
    ready = any(c.type == "Ready" and c.status == "True" for c in status.conditions or [])
    return status.pod_ip if ready and status.pod_ip else None


async def wait_async(predicate: object, timeout: float, what: str) -> float:
    """Poll `predicate` every 10 ms; the time it first held (monotonic)."""
    deadline = time.monotonic() + timeout
    while not predicate():  # type: ignore[operator]
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:g}s waiting for {what}")
        await asyncio.sleep(0.01)
    return time.monotonic()


def test_the_router_follows_the_pools_ready_pods_within_a_second(
    cluster: ClusterAccess, namespace: str, tmp_path: Path
) -> None:
    manifests = slice_reader(route_in(namespace))
    for manifest in manifests:
        manifest["metadata"].pop("ownerReferences", None)
    result = kubectl(cluster, "apply", "-n", namespace, "-f", "-", input=yaml.safe_dump_all(manifests))
    assert result.returncode == 0, result.stderr
    cluster.core.create_namespaced_service(
        namespace,
        client.V1Service(
            metadata=client.V1ObjectMeta(name=SERVICE),
            spec=client.V1ServiceSpec(
                cluster_ip="None", selector=LABELS, ports=[client.V1ServicePort(name="http", port=8080)]
            ),
        ),
    )
    request = client.AuthenticationV1TokenRequest(
        spec=client.V1TokenRequestSpec(audiences=[], expiration_seconds=600)
    )
    token = cluster.core.create_namespaced_service_account_token(
        "chat-router", namespace, request
    ).status.token
    admin = cluster.api.configuration
    access = ApiAccess(
        admin.host, token=token, ca_file=Path(admin.ssl_ca_cert) if admin.ssl_ca_cert else None
    )

    async def scenario() -> tuple[float, float]:
        seen: list[list[str]] = []
        watcher = SliceWatcher(
            access, SERVICE, namespace, f"http://{SERVICE}.{namespace}.svc:8080/v1", seen.append
        )
        task = asyncio.create_task(watcher.run())
        try:
            await wait_async(lambda: watcher.live or watcher.problem, 30, "the watch to start")
            assert watcher.live, watcher.problem  # the rendered Role is enough: no 403
            cluster.core.create_namespaced_pod(namespace, pod("pool-pod-0"))
            ready_at = await wait_async(
                lambda: ready_ip(cluster, namespace, "pool-pod-0"), 120, "the pod to turn Ready"
            )
            address = ready_ip(cluster, namespace, "pool-pod-0")
            url = f"http://{address}:8080/v1"
            learned_at = await wait_async(
                lambda: bool(seen) and url in seen[-1], 5, "the router to list the pod"
            )
            cluster.core.delete_namespaced_pod("pool-pod-0", namespace, grace_period_seconds=0)
            deleted_at = time.monotonic()
            dropped_at = await wait_async(lambda: url not in seen[-1], 5, "the router to drop the pod")
            return learned_at - ready_at, dropped_at - deleted_at
        finally:
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task

    learned, dropped = asyncio.run(scenario())
    print(
        f"router listed the pod {learned * 1000:.0f} ms after Ready, dropped it {dropped * 1000:.0f} ms after deletion"
    )
    # Polling the pod's status every 10 ms is itself a few API calls late: the bound is generous to it.
    assert learned < 1.0, f"listed {learned:.2f}s after the pod turned Ready"
    assert dropped < 1.0, f"dropped {dropped:.2f}s after the pod was deleted"

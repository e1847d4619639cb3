"""Elastic pools on the real API server: the operator sizes an autoscaled pool's Deployment without writing its
spec, scales an idle pool to zero after the delay, and leaves a pool to a user's HorizontalPodAutoscaler."""

from __future__ import annotations

from typing import Any

import pytest
from kubernetes import client

from localai_operator.constants import GROUP, VERSION
from tests.helpers import ClusterAccess, wait_for
from tests.operator_process import CustomResources, model, pool

pytestmark = pytest.mark.cluster
T = 60


def deployment_replicas(cluster: ClusterAccess, namespace: str, name: str) -> int | None:
    try:
        found = cluster.apps.read_namespaced_deployment(name, namespace)
    except client.ApiException as err:
        if err.status == 404:
            return None
        raise
    replicas: int = found.spec.replicas
    return replicas


def autoscaling_status(crs: CustomResources, name: str) -> dict[str, Any]:
    found: dict[str, Any] = (crs.get("InferencePool", name).get("status") or {}).get("autoscaling") or {}
    return found


def wait_for_autoscaling(crs: CustomResources, name: str, reason: str) -> dict[str, Any]:
    """The pool's status.autoscaling once its reason is `reason`."""

    def reached() -> dict[str, Any] | None:
        found = autoscaling_status(crs, name)
        return found if found.get("reason") == reason else None

    result: dict[str, Any] = wait_for(
        reached, T, f"reason {reason}", describe=lambda: crs.get("InferencePool", name).get("status")
    )
    return result


def test_an_autoscaled_pool_sizes_its_deployment_and_never_writes_the_spec(
    cluster: ClusterAccess, namespace: str, crs: CustomResources
) -> None:
    crs.create(model("m"))
    crs.create(pool("elastic", ["m"], replicas=1, autoscaling={"minReplicas": 2, "maxReplicas": 3}))
    wait_for(
        lambda: deployment_replicas(cluster, namespace, "elastic") == 2,
        T,
        "the Deployment at minReplicas 2",
        describe=lambda: crs.get("InferencePool", "elastic").get("status"),
    )
    body = crs.get("InferencePool", "elastic")
    assert body["spec"]["replicas"] == 1
    spec_writers = {
        entry["manager"]
        for entry in body["metadata"].get("managedFields") or []
        if "f:spec" in entry.get("fieldsV1", {})
    }
    assert spec_writers and "localai-operator" not in spec_writers, spec_writers
    status = wait_for_autoscaling(crs, "elastic", "AtMinReplicas")
    assert status["desiredReplicas"] == 2


def test_an_idle_autoscaled_pool_scales_to_zero_after_the_delay(
    cluster: ClusterAccess, namespace: str, crs: CustomResources
) -> None:
    crs.create(model("m"))
    crs.create(pool("idle", ["m"], replicas=1))
    wait_for(lambda: crs.is_ready("InferencePool", "idle"), T, "pool idle Ready at 1 replica")
    crs.patch(
        "InferencePool",
        "idle",
        {"spec": {"autoscaling": {"minReplicas": 0, "maxReplicas": 2, "scaleDownDelaySeconds": 3}}},
    )
    status = wait_for_autoscaling(crs, "idle", "ScaledToZero")
    assert status["desiredReplicas"] == 0
    wait_for(lambda: deployment_replicas(cluster, namespace, "idle") == 0, T, "the Deployment at 0 replicas")
    available = crs.condition("InferencePool", "idle", "Available")
    assert available is not None and available["reason"] == "ScaledToZero"
    assert crs.get("InferencePool", "idle")["spec"]["replicas"] == 1


def test_a_user_hpa_on_the_pool_is_left_alone(
    cluster: ClusterAccess, namespace: str, crs: CustomResources
) -> None:
    crs.create(model("m"))
    crs.create(pool("by-hpa", ["m"], replicas=2, autoscaling={"minReplicas": 0, "maxReplicas": 1}))
    hpa = client.V2HorizontalPodAutoscaler(
        metadata=client.V1ObjectMeta(name="users-hpa"),
        spec=client.V2HorizontalPodAutoscalerSpec(
            scale_target_ref=client.V2CrossVersionObjectReference(
                api_version=f"{GROUP}/{VERSION}", kind="InferencePool", name="by-hpa"
            ),
            min_replicas=1,
            max_replicas=5,
            metrics=[
                client.V2MetricSpec(
                    type="Resource",
                    resource=client.V2ResourceMetricSource(
                        name="cpu", target=client.V2MetricTarget(type="Utilization", average_utilization=80)
                    ),
                )
            ],
        ),
    )
    autoscaling = client.AutoscalingV2Api(cluster.api)
    created = autoscaling.create_namespaced_horizontal_pod_autoscaler(namespace, hpa)
    status = wait_for_autoscaling(crs, "by-hpa", "ManagedByHPA")
    assert "users-hpa" in status["message"]
    # spec.replicas (the HPA's lever), not the autoscaler's maxReplicas of 1.
    wait_for(
        lambda: deployment_replicas(cluster, namespace, "by-hpa") == 2, T, "the Deployment at spec.replicas 2"
    )
    after = autoscaling.read_namespaced_horizontal_pod_autoscaler("users-hpa", namespace)
    assert after.spec == created.spec
    assert "localai-operator" not in {m.manager for m in after.metadata.managed_fields or []}

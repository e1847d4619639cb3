"""FallbackRoute on the real control plane: the router objects, the Secret dependency, name conflicts."""

from __future__ import annotations

import base64

import pytest
import yaml
from kubernetes import client

from tests.helpers import ClusterAccess, wait_for
from tests.operator_process import CustomResources, model, pool, route

pytestmark = pytest.mark.cluster
T = 60
FALLBACK = {"apiKeySecretRef": {"name": "cloud-key", "key": "api-key"}}


def test_a_route_missing_its_secret_names_it_and_becomes_ready_once_it_exists(
    cluster: ClusterAccess, namespace: str, crs: CustomResources
) -> None:
    crs.create(model("m"))
    crs.create(pool("local", ["m"]))
    crs.create(route("chat", "local", fallback=FALLBACK))

    condition = crs.wait_for_reason("FallbackRoute", "chat", "SecretMissing")
    assert condition["status"] == "False" and '"cloud-key"' in condition["message"]
    secret = client.V1Secret(
        metadata=client.V1ObjectMeta(name="cloud-key"), string_data={"api-key": "sk-test-123"}
    )
    cluster.core.create_namespaced_secret(namespace, secret)
    wait_for(lambda: crs.is_ready("FallbackRoute", "chat"), T, "chat Ready without touching it")
    assert crs.get("FallbackRoute", "chat")["status"]["endpoint"] == f"http://chat.{namespace}.svc/v1"


def test_the_router_config_holds_no_secret_and_the_key_comes_from_the_secret(
    cluster: ClusterAccess, namespace: str, crs: CustomResources
) -> None:
    key = "sk-never-in-a-configmap"
    secret = client.V1Secret(metadata=client.V1ObjectMeta(name="cloud-key"), string_data={"api-key": key})
    cluster.core.create_namespaced_secret(namespace, secret)
    crs.create(route("chat", "somewhere", fallback=FALLBACK))
    wait_for(
        lambda: (
            cluster.core.list_namespaced_config_map(
                namespace, label_selector="app.kubernetes.io/instance=chat"
            ).items
        ),
        T,
        "the router ConfigMap",
    )
    [config_map] = cluster.core.list_namespaced_config_map(
        namespace, label_selector="app.kubernetes.io/instance=chat"
    ).items
    text = yaml.safe_dump(config_map.data)
    assert key not in text and base64.b64encode(key.encode()).decode() not in text
    status = yaml.safe_dump(crs.get("FallbackRoute", "chat").get("status"))
    assert key not in status
    deployment = cluster.apps.read_namespaced_deployment("chat-router", namespace)
    [env] = deployment.spec.template.spec.containers[0].env
    assert env.value_from.secret_key_ref.name == "cloud-key" and env.value is None


def test_a_route_to_a_missing_pool_still_deploys_the_router_but_is_not_ready(
    cluster: ClusterAccess, namespace: str, crs: CustomResources
) -> None:
    crs.create(route("private", "no-such-pool", policy={"sensitive": True}))

    condition = crs.wait_for_reason("FallbackRoute", "private", "PoolMissing")
    assert '"no-such-pool"' in condition["message"]
    assert cluster.apps.read_namespaced_deployment("private-router", namespace) is not None


def test_a_route_named_like_a_pool_is_reported_instead_of_fighting_over_the_service(
    crs: CustomResources,
) -> None:
    crs.create(model("m"))
    crs.create(pool("same", ["m"]))
    crs.create(route("same", "same", policy={"sensitive": True}))

    condition = crs.wait_for_reason("FallbackRoute", "same", "NameConflict")
    assert "another name" in condition["message"]
    wait_for(lambda: crs.is_ready("InferencePool", "same"), T, "the pool to stay Ready")


def test_a_route_on_a_pool_reaches_its_pods_through_the_pools_headless_service(
    cluster: ClusterAccess, namespace: str, crs: CustomResources
) -> None:
    crs.create(model("m"))
    crs.create(pool("local", ["m"]))
    crs.create(route("chat", "local", policy={"sensitive": True}))
    wait_for(lambda: crs.is_ready("InferencePool", "local"), T, "the pool Ready")
    wait_for(
        lambda: (
            cluster.core.list_namespaced_config_map(
                namespace, label_selector="app.kubernetes.io/instance=chat"
            ).items
        ),
        T,
        "the router ConfigMap",
    )
    service = cluster.core.read_namespaced_service("local-pods", namespace)
    assert service.spec.cluster_ip == "None" and not service.spec.publish_not_ready_addresses
    assert service.spec.selector == cluster.core.read_namespaced_service("local", namespace).spec.selector
    [config_map] = cluster.core.list_namespaced_config_map(
        namespace, label_selector="app.kubernetes.io/instance=chat"
    ).items
    config = yaml.safe_load(config_map.data["router.yaml"])
    assert config["local"]["discovery"]["url"] == f"http://local-pods.{namespace}.svc:8080/v1"


def test_spec_telemetry_reaches_the_routers_environment_and_config_and_leaves_it_when_turned_off(
    cluster: ClusterAccess, namespace: str, crs: CustomResources
) -> None:
    telemetry = {
        "otlpEndpoint": "http://otel-collector.observability:4318",
        "samplingRatio": 0.5,
        "headersSecretRef": {"name": "otlp", "key": "headers"},
        "captureContent": True,
    }
    secret = client.V1Secret(metadata=client.V1ObjectMeta(name="cloud-key"), string_data={"api-key": "sk-1"})
    cluster.core.create_namespaced_secret(namespace, secret)
    crs.create(route("chat", "somewhere", fallback=FALLBACK, telemetry=telemetry))

    def router_env() -> dict[str, client.V1EnvVar] | None:
        try:
            deployment = cluster.apps.read_namespaced_deployment("chat-router", namespace)
        except client.ApiException:
            return None
        return {e.name: e for e in deployment.spec.template.spec.containers[0].env or []}

    env = wait_for(
        lambda: (found := router_env()) and "OTEL_EXPORTER_OTLP_ENDPOINT" in found and found,
        T,
        "the router's Deployment with the OTEL variables",
        describe=lambda: (router_env(), crs.get("FallbackRoute", "chat").get("status")),
    )
    assert env["OTEL_EXPORTER_OTLP_ENDPOINT"].value == telemetry["otlpEndpoint"]
    assert env["OTEL_SERVICE_NAME"].value == "localai-router"
    assert env["OTEL_TRACES_SAMPLER_ARG"].value == "0.5"
    assert env["OTEL_EXPORTER_OTLP_HEADERS"].value_from.secret_key_ref.name == "otlp"
    assert f"localai_operator.route={namespace}/chat" in env["OTEL_RESOURCE_ATTRIBUTES"].value
    [config_map] = cluster.core.list_namespaced_config_map(
        namespace, label_selector="app.kubernetes.io/instance=chat"
    ).items
    config = yaml.safe_load(config_map.data["router.yaml"])
    assert config["telemetry"] == {"propagateToCloud": False, "captureContent": True}

    crs.patch("FallbackRoute", "chat", {"spec": {"telemetry": {"enabled": False}}})
    wait_for(
        lambda: (found := router_env()) is not None and not [n for n in found if n.startswith("OTEL_")],
        T,
        "the OTEL variables to leave the router's Deployment",
    )

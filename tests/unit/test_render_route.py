"""The route's rendered objects: pods by a headless Service, the pool's key, client-key Secrets, scheduling,
and a body buffer that fits the memory limit."""

from __future__ import annotations

from typing import Any

import kubernetes_validate
import pytest
import yaml

from localai_operator.api import FallbackRoute, InferencePool, LLMModel
from localai_operator.api.base import SecretKeyRef
from localai_operator.constants import ANNOTATION_CONFIG_HASH, LOCAL_API_KEY_ENV
from localai_operator.render import pool_objects, route_objects
from localai_operator.render.pool import pods_service
from localai_operator.render.route import body_buffer_bytes
from localai_operator.wire import MIB, RouterConfig

FALLBACK = {"apiKeySecretRef": {"name": "holysheep", "key": "api-key"}}


def route(**spec: Any) -> FallbackRoute:
    body = {"primary": {"poolRef": {"name": "gpu-pool"}}, "fallback": FALLBACK, **spec}
    return FallbackRoute.parse(
        {"metadata": {"name": "chat", "namespace": "ai", "uid": "r-uid"}, "spec": body}
    )


def pool() -> InferencePool:
    return InferencePool.parse(
        {"metadata": {"name": "gpu-pool", "namespace": "ai", "uid": "p-uid"}, "spec": {"models": ["m"]}}
    )


def model() -> LLMModel:
    return LLMModel.parse(
        {
            "metadata": {"name": "m", "namespace": "ai"},
            "spec": {"source": {"url": "https://example.org/m.gguf"}},
        }
    )


def of_kind(objects: list[dict[str, Any]], kind: str) -> dict[str, Any]:
    [obj] = [o for o in objects if o["kind"] == kind]
    return obj


def config_of(objects: list[dict[str, Any]]) -> dict[str, Any]:
    loaded: dict[str, Any] = yaml.safe_load(of_kind(objects, "ConfigMap")["data"]["router.yaml"])
    return loaded


def pod_spec(objects: list[dict[str, Any]]) -> dict[str, Any]:
    spec: dict[str, Any] = of_kind(objects, "Deployment")["spec"]["template"]["spec"]
    return spec


def test_a_pool_renders_a_headless_service_for_its_ready_pods() -> None:
    objects = pool_objects(pool(), {"m": model()})
    [main] = [o for o in objects if o["kind"] == "Service" and o["metadata"]["name"] == "gpu-pool"]
    headless = pods_service(pool())
    assert headless in objects and headless["metadata"]["name"] == "gpu-pool-pods"
    assert headless["spec"]["clusterIP"] == "None"
    assert not headless["spec"].get("publishNotReadyAddresses")  # only ready pods resolve
    assert headless["spec"]["selector"] == main["spec"]["selector"]
    assert headless["spec"]["ports"] == [
        {"name": "http", "port": 8080, "targetPort": "http", "protocol": "TCP"}
    ]


def test_a_pool_route_finds_the_pods_by_the_headless_service_name() -> None:
    local = config_of(route_objects(route()))["local"]
    assert local["discovery"]["url"] == "http://gpu-pool-pods.ai.svc:8080/v1"
    assert local["endpoints"] == []


def test_a_url_route_goes_to_that_url() -> None:
    local = config_of(route_objects(route(primary={"url": "http://workstation.lan:8080/v1"})))["local"]
    assert local["endpoints"] == ["http://workstation.lan:8080/v1"] and "discovery" not in local


def test_the_pools_key_is_read_from_its_secret_and_a_new_version_rolls_the_router() -> None:
    ref = SecretKeyRef(name="pool-key", key="key")
    objects = route_objects(route(), local_key_ref=ref, local_key_version="1")
    env = pod_spec(objects)["containers"][0]["env"]
    assert {
        "name": LOCAL_API_KEY_ENV,
        "valueFrom": {"secretKeyRef": {"name": "pool-key", "key": "key"}},
    } in env
    assert config_of(objects)["local"]["apiKeyEnv"] == LOCAL_API_KEY_ENV
    rotated = route_objects(route(), local_key_ref=ref, local_key_version="2")

    def hash_of(objs: list[dict[str, Any]]) -> str:
        return str(
            of_kind(objs, "Deployment")["spec"]["template"]["metadata"]["annotations"][ANNOTATION_CONFIG_HASH]
        )

    assert hash_of(objects) != hash_of(rotated)
    assert "apiKeyEnv" not in config_of(route_objects(route()))["local"]


def test_client_key_secrets_are_mounted_and_named_in_the_config_never_copied() -> None:
    objects = route_objects(route(auth={"clientKeySecrets": [{"name": "team-a"}, {"name": "team-b"}]}))
    spec = pod_spec(objects)
    volumes = {v["name"]: v for v in spec["volumes"]}
    mounts = {m["name"]: m for m in spec["containers"][0]["volumeMounts"]}
    assert volumes["client-keys-0"]["secret"] == {"secretName": "team-a"}
    assert mounts["client-keys-1"] == {
        "name": "client-keys-1",
        "mountPath": "/etc/localai-operator/client-keys/team-b",
        "readOnly": True,
    }
    assert config_of(objects)["auth"]["keyDirectories"] == [
        "/etc/localai-operator/client-keys/team-a",
        "/etc/localai-operator/client-keys/team-b",
    ]


def test_router_pods_take_the_routes_node_selector_and_tolerations() -> None:
    tolerations = [{"key": "dedicated", "operator": "Equal", "value": "gateway", "effect": "NoSchedule"}]
    spec = pod_spec(route_objects(route(nodeSelector={"pool": "edge"}, tolerations=tolerations)))
    assert spec["nodeSelector"] == {"pool": "edge"} and spec["tolerations"] == tolerations
    assert "nodeSelector" not in pod_spec(route_objects(route()))


@pytest.mark.parametrize(
    ("resources", "expected"),
    [
        (None, 96 * MIB),  # the default 256Mi limit
        ({"requests": {"memory": "64Mi"}, "limits": {"memory": "1Gi"}}, int((1024 - 128) * MIB * 0.75)),
        ({"requests": {"memory": "64Mi"}}, 96 * MIB),  # no limit: the router's default
    ],
)
def test_the_body_buffer_fits_the_routers_memory_limit(
    resources: dict[str, Any] | None, expected: int
) -> None:
    r = route(resources=resources) if resources else route()
    assert body_buffer_bytes(r) == expected
    assert config_of(route_objects(r))["server"]["bodyBufferBytes"] == expected


def test_the_default_max_request_times_what_the_router_holds_at_once_fits_the_default_limit() -> None:
    config = RouterConfig.model_validate(config_of(route_objects(route())))
    at_once = config.server.body_buffer_bytes // config.policy.max_request_bytes
    assert at_once >= 4
    assert at_once * config.policy.max_request_bytes + 128 * MIB <= 256 * MIB


def test_rendered_route_objects_with_every_option_pass_strict_schema_validation() -> None:
    objects = route_objects(
        route(
            auth={"clientKeySecrets": [{"name": "k"}]},
            nodeSelector={"a": "b"},
            tolerations=[{"operator": "Exists"}],
            policy={"maxRequestBytes": 1048576},
            networkPolicy={
                "enabled": True,
                "allowedPods": [{"app": "billing"}],
                "allowedNamespaces": ["web"],
                "metricsNamespaces": ["monitoring"],
            },
        ),
        local_key_ref=SecretKeyRef(name="p", key="k"),
        local_key_version="7",
    )
    for obj in objects:
        kubernetes_validate.validate(obj, "1.34.0", strict=True)
    assert RouterConfig.model_validate(config_of(objects)).policy.max_request_bytes == 1048576


def test_router_pods_keep_the_labels_the_pool_network_policy_admits() -> None:
    labels = of_kind(route_objects(route()), "Deployment")["spec"]["template"]["metadata"]["labels"]
    assert (
        labels["app.kubernetes.io/name"] == "localai-router"
        and labels["app.kubernetes.io/component"] == "router"
    )


def test_a_route_that_can_spend_a_cloud_key_without_auth_admits_only_its_namespace_by_default() -> None:
    policy = of_kind(route_objects(route()), "NetworkPolicy")
    api, metrics = policy["spec"]["ingress"]
    assert api == {"from": [{"podSelector": {}}], "ports": [{"protocol": "TCP", "port": 8080}]}
    assert metrics["ports"] == [{"protocol": "TCP", "port": 9090}]
    operator = {"app.kubernetes.io/name": "localai-operator", "app.kubernetes.io/component": "operator"}
    assert metrics["from"] == [{"namespaceSelector": {}, "podSelector": {"matchLabels": operator}}]
    labels = of_kind(route_objects(route()), "Deployment")["spec"]["template"]["metadata"]["labels"]
    assert policy["spec"]["podSelector"]["matchLabels"].items() <= labels.items()


@pytest.mark.parametrize(
    ("spec", "rendered"),
    [
        ({"auth": {"clientKeySecrets": [{"name": "k"}]}}, False),
        ({"networkPolicy": {"enabled": False}}, False),
        ({"fallback": None}, False),
        ({"fallback": None, "networkPolicy": {"enabled": True}}, True),
    ],
    ids=["auth", "switched-off", "no-fallback", "switched-on"],
)
def test_the_route_network_policy_is_on_by_default_only_where_a_cloud_key_is_open(
    spec: dict[str, Any], rendered: bool
) -> None:
    objects = route_objects(route(**spec))
    assert any(o["kind"] == "NetworkPolicy" for o in objects) is rendered


def test_a_pool_routes_router_reads_endpoint_slices_with_its_own_service_account_only() -> None:
    objects = route_objects(route())
    account, role, binding = (
        of_kind(objects, "ServiceAccount"),
        of_kind(objects, "Role"),
        of_kind(objects, "RoleBinding"),
    )
    assert account["metadata"]["name"] == "chat-router" and account["automountServiceAccountToken"] is False
    assert role["rules"] == [
        {
            "apiGroups": ["discovery.k8s.io"],
            "resources": ["endpointslices"],
            "verbs": ["get", "list", "watch"],
        }
    ]
    assert binding["subjects"] == [{"kind": "ServiceAccount", "name": "chat-router", "namespace": "ai"}]
    spec = pod_spec(objects)
    assert spec["serviceAccountName"] == "chat-router" and spec["automountServiceAccountToken"] is False
    [volume] = [v for v in spec["volumes"] if v["name"] == "kube-api-access"]
    assert [next(iter(source)) for source in volume["projected"]["sources"]] == [
        "serviceAccountToken",
        "configMap",
        "downwardAPI",
    ]
    watch = config_of(objects)["local"]["discovery"]["endpointSlices"]
    assert watch == {"service": "gpu-pool-pods", "namespace": "ai"}


def test_a_url_route_gets_no_service_account_and_no_token() -> None:
    objects = route_objects(route(primary={"url": "http://workstation.lan:8080/v1"}))
    assert not {"ServiceAccount", "Role", "RoleBinding"} & {o["kind"] for o in objects}
    spec = pod_spec(objects)
    assert "serviceAccountName" not in spec and spec["automountServiceAccountToken"] is False
    assert all(v["name"] != "kube-api-access" for v in spec["volumes"])


def test_the_egress_proxy_and_its_credentials_secret_are_rendered_into_the_router() -> None:
    fallback = {**FALLBACK, "proxyURL": "http://proxy.corp:3128", "proxyCredentialsSecretRef": {"name": "px"}}
    objects = route_objects(route(fallback=fallback))
    config = config_of(objects)["fallback"]
    assert config["proxyURL"] == "http://proxy.corp:3128"
    env = {e["name"]: e["valueFrom"]["secretKeyRef"] for e in pod_spec(objects)["containers"][0]["env"]}
    assert env[config["proxyUsernameEnv"]] == {"name": "px", "key": "username", "optional": True}
    assert env[config["proxyPasswordEnv"]] == {"name": "px", "key": "password", "optional": True}

"""FallbackRoute -> router ConfigMap (no secret material), router Deployment and Service."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Final

from localai_operator import wire as rc
from localai_operator.api.base import SecretKeyRef
from localai_operator.api.llmmodel import LLMModel
from localai_operator.api.pool import InferencePool
from localai_operator.api.quantity import Quantity, in_resource_list
from localai_operator.api.route import FallbackRoute
from localai_operator.constants import (
    ANNOTATION_CONFIG_HASH,
    APP_NAME,
    FALLBACK_API_KEY_ENV,
    LABEL_COMPONENT,
    LABEL_NAME,
    LOCAL_API_KEY_ENV,
    LOCALAI_PORT,
    PROXY_PASSWORD_ENV,
    PROXY_USERNAME_ENV,
    ROUTER_CLIENT_KEYS_DIR,
    ROUTER_CONFIG_DIR,
    ROUTER_CONFIG_FILE,
    ROUTER_METRICS_PORT,
    ROUTER_PORT,
    ROUTER_SERVICE_PORT,
    ROUTER_STATE_DIR,
)
from localai_operator.render.common import (
    ROUTER_APP,
    ROUTER_COMPONENT,
    RenderSettings,
    content_hash,
    http_service,
    meta,
    restricted_container_security,
    selector,
)
from localai_operator.render.model_config import slots
from localai_operator.render.pool import NAMESPACE_NAME_LABEL, pods_service_name, service_url

APP = ROUTER_APP
COMPONENT = ROUTER_COMPONENT
ROUTER_UID = 65532
DEFAULT_MEMORY_LIMIT: Final = "256Mi"
# What the router process needs besides request bodies (interpreter, aiohttp, buffers of streams in flight),
# and how much of the rest it may fill with bodies: each body is held once, plus transient slices while it is
# rewritten and sent (measured in benchmarks/router.py).
PROCESS_RESERVE_BYTES: Final = 128 * rc.MIB
BODY_SHARE: Final = 0.75
# What one client connection costs besides its body (aiohttp's buffers, the request's and its stream's state):
# 23 KiB measured per stream in flight (benchmarks/router.py), with room to spare. The rest of the memory past
# the bodies' share, divided by it, is how many the overload guard serves at once: 1,024 for 256 Mi.
CONNECTION_BYTES: Final = 32 * 1024


def router_name(route: FallbackRoute) -> str:
    return f"{route.name}-router"


def endpoint(route: FallbackRoute) -> str:
    return f"http://{route.name}.{route.namespace}.svc/v1"


def metrics_port(route: FallbackRoute) -> int:
    """Where the route's router pods serve /metrics (read by the operator's elastic loop): the metrics port, which
    answers without a client key."""
    return ROUTER_METRICS_PORT


def primary_url(route: FallbackRoute) -> str:
    primary = route.spec.primary
    if primary.pool_ref is not None:
        return service_url(primary.pool_ref.name, route.namespace)
    assert primary.url is not None, "the schema requires exactly one primary"
    return primary.url.rstrip("/")


def memory_bytes(memory: str | int | None) -> int | None:
    """A memory quantity in bytes, rounded up ("256Mi", "1G", "+1Gi"), None when absent."""
    return None if memory is None else Quantity.parse(memory).value()


def _resources(route: FallbackRoute) -> dict[str, Any]:
    user = route.spec.resources
    if user is None:
        return {"requests": {"cpu": "100m", "memory": "64Mi"}, "limits": {"memory": DEFAULT_MEMORY_LIMIT}}
    out: dict[str, Any] = {"requests": {k: in_resource_list(v) for k, v in user.requests.items()}}
    if user.limits:
        out["limits"] = {k: in_resource_list(v) for k, v in user.limits.items()}
    return out


def body_buffer_bytes(route: FallbackRoute) -> int:
    """Request bytes the router may hold at once, from its container's memory limit."""
    limit = memory_bytes(_resources(route).get("limits", {}).get("memory"))
    if limit is None:
        return rc.DEFAULT_BODY_BUFFER_BYTES
    return max(rc.MIB, int((limit - PROCESS_RESERVE_BYTES) * BODY_SHARE))


def connection_caps(route: FallbackRoute) -> tuple[int, int]:
    """Client connections and waiting requests the router's overload guard allows, from its memory limit."""
    limit = memory_bytes(_resources(route).get("limits", {}).get("memory"))
    if limit is None:
        return rc.DEFAULT_MAX_CONNECTIONS, rc.DEFAULT_MAX_CONNECTIONS // 2
    connections = max(16, int((limit - PROCESS_RESERVE_BYTES) * (1 - BODY_SHARE)) // CONNECTION_BYTES)
    return connections, connections // 2


def client_key_dirs(route: FallbackRoute) -> list[tuple[str, str]]:
    """(Secret name, mount directory) of each client-key Secret."""
    auth = route.spec.auth
    if auth is None:
        return []
    return [(ref.name, f"{ROUTER_CLIENT_KEYS_DIR}/{ref.name}") for ref in auth.client_key_secrets]


def pod_slots(pool: InferencePool, models: Mapping[str, LLMModel]) -> dict[str, int]:
    """Requests one pod of the pool answers at once, per model it serves (LLMModel.spec.parallel)."""
    gpu = pool.spec.accelerator.gpus > 0
    return {
        name: slots(models[name], gpu=gpu, parallel_requests=pool.spec.parallel_requests)
        for name in pool.spec.models
        if name in models
    }


def router_config(
    route: FallbackRoute,
    *,
    local_key: bool = False,
    pool: InferencePool | None = None,
    models: Mapping[str, LLMModel] | None = None,
    carried: rc.Carried | None = None,
) -> rc.RouterConfig:
    spec = route.spec
    fallback = None
    if route.fallback_active:
        fb = spec.fallback
        assert fb is not None
        fallback = rc.Fallback(
            provider=fb.provider,
            base_url=fb.base_url,
            api_key_env=FALLBACK_API_KEY_ENV,
            model_map=dict(fb.model_map),
            default_model=fb.default_model,
            price_per_million_tokens=fb.price_per_million_tokens,
            input_price_per_million_tokens=fb.input_price_per_million_tokens,
            output_price_per_million_tokens=fb.output_price_per_million_tokens,
            paths=list(fb.paths),
            price_per_request=dict(fb.price_per_request),
            proxy_url=fb.proxy_url,
            proxy_username_env=PROXY_USERNAME_ENV if fb.proxy_credentials_secret_ref else None,
            proxy_password_env=PROXY_PASSWORD_ENV if fb.proxy_credentials_secret_ref else None,
            spend_cap=fb.spend_cap,
            # Each router replica spends its share of what the route's earlier pods left.
            spend_share=rc.SpendShare(replicas=max(1, spec.replicas), carried=carried)
            if fb.spend_cap is not None
            else None,
        )
    primary = spec.primary
    if primary.pool_ref is not None:
        # Every ready pod of the pool, by DNS: per-pod balancing and breakers, no RBAC for the router.
        pods = f"http://{pods_service_name(primary.pool_ref.name)}.{route.namespace}.svc:{LOCALAI_PORT}/v1"
        served = pool if pool is not None and pool.name == primary.pool_ref.name else None
        local = rc.LocalUpstream(
            discovery=rc.Discovery(
                url=pods,
                # Ready pods within a second of Kubernetes knowing them; DNS (cached seconds) as the fallback.
                endpoint_slices=rc.SliceWatch(
                    service=pods_service_name(primary.pool_ref.name), namespace=route.namespace
                ),
            ),
            api_key_env=LOCAL_API_KEY_ENV if local_key else None,
            pool=primary.pool_ref.name,
            slots=pod_slots(served, models or {}) if served is not None else {},
        )
    else:
        local = rc.LocalUpstream(
            endpoints=[primary_url(route)], api_key_env=LOCAL_API_KEY_ENV if local_key else None
        )
    dirs = client_key_dirs(route)
    return rc.RouterConfig(
        route=rc.RouteRef(name=route.name, namespace=route.namespace),
        local=local,
        fallback=fallback,
        policy=spec.policy,
        auth=rc.Auth(key_directories=[d for _, d in dirs]) if dirs else None,
        server=rc.Server(
            body_buffer_bytes=body_buffer_bytes(route),
            max_connections=connection_caps(route)[0],
            max_waiting=connection_caps(route)[1],
            state_directory=ROUTER_STATE_DIR,
        ),
    )


def config_map(
    route: FallbackRoute,
    *,
    local_key: bool = False,
    pool: InferencePool | None = None,
    models: Mapping[str, LLMModel] | None = None,
    carried: rc.Carried | None = None,
) -> dict[str, Any]:
    config = router_config(route, local_key=local_key, pool=pool, models=models, carried=carried)
    return {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": meta(route, router_name(route), name=APP, component="router-config"),
        "data": {ROUTER_CONFIG_FILE: config.to_yaml()},
    }


def service(route: FallbackRoute) -> dict[str, Any]:
    return http_service(route, route.name, name=APP, component=COMPONENT, port=ROUTER_SERVICE_PORT)


def _secret_env(name: str, ref: SecretKeyRef) -> dict[str, Any]:
    return {"name": name, "valueFrom": {"secretKeyRef": {"name": ref.name, "key": ref.key}}}


def deployment(
    route: FallbackRoute,
    settings: RenderSettings,
    secret_version: str | None = None,
    local_key_ref: SecretKeyRef | None = None,
    local_key_version: str | None = None,
) -> dict[str, Any]:
    env: list[dict[str, Any]] = []
    fb = route.spec.fallback
    if route.fallback_active and fb is not None:
        env.append(_secret_env(FALLBACK_API_KEY_ENV, fb.api_key_secret_ref))
        proxy_secret = fb.proxy_credentials_secret_ref
        if proxy_secret is not None:
            # Optional: without the Secret the router starts, and /readyz shows the proxy refusing it.
            for name, key in ((PROXY_USERNAME_ENV, "username"), (PROXY_PASSWORD_ENV, "password")):
                env.append(
                    {
                        "name": name,
                        "valueFrom": {
                            "secretKeyRef": {"name": proxy_secret.name, "key": key, "optional": True}
                        },
                    }
                )
    if local_key_ref is not None:
        env.append(_secret_env(LOCAL_API_KEY_ENV, local_key_ref))
    mounts: list[dict[str, Any]] = [
        # Mounted as a directory, not subPath, so ConfigMap edits reach the router's hot reload.
        {"name": "config", "mountPath": ROUTER_CONFIG_DIR, "readOnly": True},
        {"name": "state", "mountPath": ROUTER_STATE_DIR},
    ]
    volumes: list[dict[str, Any]] = [
        {"name": "config", "configMap": {"name": router_name(route)}},
        {"name": "state", "emptyDir": {"sizeLimit": "1Mi"}},
    ]
    if watches_slices(route):
        # Its own ServiceAccount's token only, not the automatic mount (no pod here gets one by default).
        mounts.append({"name": "kube-api-access", "mountPath": SERVICE_ACCOUNT_DIR, "readOnly": True})
        volumes.append(_api_access_volume())
    for index, (secret, directory) in enumerate(client_key_dirs(route)):
        # A Secret volume follows rotations in place (the router re-reads the files); no restart needed.
        mounts.append({"name": f"client-keys-{index}", "mountPath": directory, "readOnly": True})
        volumes.append({"name": f"client-keys-{index}", "secret": {"secretName": secret}})
    container: dict[str, Any] = {
        "name": "router",
        "image": settings.operator_image,
        "args": [
            "router",
            "--config",
            f"{ROUTER_CONFIG_DIR}/{ROUTER_CONFIG_FILE}",
            "--port",
            str(ROUTER_PORT),
            "--metrics-port",
            str(ROUTER_METRICS_PORT),
        ],
        "ports": [
            {"name": "http", "containerPort": ROUTER_PORT, "protocol": "TCP"},
            {"name": "metrics", "containerPort": ROUTER_METRICS_PORT, "protocol": "TCP"},
        ],
        "resources": _resources(route),
        "volumeMounts": mounts,
        "readinessProbe": {"httpGet": {"path": "/readyz", "port": "http"}, "periodSeconds": 5},
        "livenessProbe": {"httpGet": {"path": "/healthz", "port": "http"}, "periodSeconds": 10},
        "securityContext": {
            **restricted_container_security(),
            "runAsNonRoot": True,
            "runAsUser": ROUTER_UID,
            "readOnlyRootFilesystem": True,
        },
    }
    if env:
        container["env"] = env
    pod_spec: dict[str, Any] = {
        **({"serviceAccountName": router_name(route)} if watches_slices(route) else {}),
        "automountServiceAccountToken": False,
        "enableServiceLinks": False,
        "securityContext": {"seccompProfile": {"type": "RuntimeDefault"}},
        "containers": [container],
        "volumes": volumes,
    }
    if route.spec.node_selector:
        pod_spec["nodeSelector"] = dict(route.spec.node_selector)
    if route.spec.tolerations:
        pod_spec["tolerations"] = [
            t.model_dump(by_alias=True, exclude_none=True) for t in route.spec.tolerations
        ]
    labels = meta(route, router_name(route), name=APP, component=COMPONENT)["labels"]
    # The config file and client keys hot-reload; only the pod spec and rotated env keys (their Secrets'
    # versions, never their values) need new pods.
    versions = [v for v in (secret_version, local_key_version) if v is not None]
    annotations = {ANNOTATION_CONFIG_HASH: content_hash(pod_spec, *versions)}
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": meta(route, router_name(route), name=APP, component=COMPONENT),
        "spec": {
            "replicas": route.spec.replicas,
            "revisionHistoryLimit": 3,
            "selector": {"matchLabels": selector(route, name=APP, component=COMPONENT)},
            "template": {"metadata": {"labels": labels, "annotations": annotations}, "spec": pod_spec},
        },
    }


SERVICE_ACCOUNT_DIR: Final = "/var/run/secrets/kubernetes.io/serviceaccount"
# The kubelet's own default for a projected token: an hour, refreshed by the kubelet at 80 % of its life.
TOKEN_SECONDS: Final = 3607


def watches_slices(route: FallbackRoute) -> bool:
    """A route on a pool: its router follows the pool's EndpointSlices, with a ServiceAccount of its own."""
    return route.spec.primary.pool_ref is not None


def _api_access_volume() -> dict[str, Any]:
    """What the automatic ServiceAccount mount holds (token, cluster CA, namespace), as an explicit volume."""
    return {
        "name": "kube-api-access",
        "projected": {
            "defaultMode": 0o444,
            "sources": [
                {"serviceAccountToken": {"path": "token", "expirationSeconds": TOKEN_SECONDS}},
                {"configMap": {"name": "kube-root-ca.crt", "items": [{"key": "ca.crt", "path": "ca.crt"}]}},
                {
                    "downwardAPI": {
                        "items": [
                            {
                                "path": "namespace",
                                "fieldRef": {"apiVersion": "v1", "fieldPath": "metadata.namespace"},
                            }
                        ]
                    }
                },
            ],
        },
    }


def slice_reader(route: FallbackRoute) -> list[dict[str, Any]]:
    """The router's ServiceAccount, a read-only Role on the namespace's EndpointSlices and their binding (pool
    routes only; RBAC cannot narrow list/watch to one Service's slices)."""
    if not watches_slices(route):
        return []
    name = router_name(route)
    metadata = meta(route, name, name=APP, component=COMPONENT)
    return [
        {
            "apiVersion": "v1",
            "kind": "ServiceAccount",
            "metadata": metadata,
            "automountServiceAccountToken": False,
        },
        {
            "apiVersion": "rbac.authorization.k8s.io/v1",
            "kind": "Role",
            "metadata": metadata,
            "rules": [
                {
                    "apiGroups": ["discovery.k8s.io"],
                    "resources": ["endpointslices"],
                    "verbs": ["get", "list", "watch"],
                }
            ],
        },
        {
            "apiVersion": "rbac.authorization.k8s.io/v1",
            "kind": "RoleBinding",
            "metadata": metadata,
            "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": name},
            "subjects": [{"kind": "ServiceAccount", "name": name, "namespace": route.namespace}],
        },
    ]


def _namespaces(names: list[str]) -> dict[str, Any]:
    expression = {"key": NAMESPACE_NAME_LABEL, "operator": "In", "values": sorted(names)}
    return {"namespaceSelector": {"matchExpressions": [expression]}}


def network_policy(route: FallbackRoute) -> dict[str, Any] | None:
    """Who may call the router (the route's namespace, or its chosen pods, and allowedNamespaces) and who may
    scrape its metrics port (the operator's autoscaler, metricsNamespaces)."""
    if not route.network_policy_enabled:
        return None
    policy = route.spec.network_policy
    clients: list[dict[str, Any]] = (
        [{"podSelector": {"matchLabels": dict(labels)}} for labels in policy.allowed_pods]
        if policy.allowed_pods
        else [{"podSelector": {}}]
    )
    if policy.allowed_namespaces:
        clients.append(_namespaces(policy.allowed_namespaces))
    operator = {LABEL_NAME: APP_NAME, LABEL_COMPONENT: "operator"}
    scrapers: list[dict[str, Any]] = [{"namespaceSelector": {}, "podSelector": {"matchLabels": operator}}]
    if policy.metrics_namespaces:
        scrapers.append(_namespaces(policy.metrics_namespaces))
    return {
        "apiVersion": "networking.k8s.io/v1",
        "kind": "NetworkPolicy",
        "metadata": meta(route, router_name(route), name=APP, component=COMPONENT),
        "spec": {
            "podSelector": {"matchLabels": selector(route, name=APP, component=COMPONENT)},
            "policyTypes": ["Ingress"],
            "ingress": [
                {"from": clients, "ports": [{"protocol": "TCP", "port": ROUTER_PORT}]},
                {"from": scrapers, "ports": [{"protocol": "TCP", "port": ROUTER_METRICS_PORT}]},
            ],
        },
    }


def route_objects(
    route: FallbackRoute,
    settings: RenderSettings | None = None,
    *,
    secret_version: str | None = None,
    local_key_ref: SecretKeyRef | None = None,
    local_key_version: str | None = None,
    pool: InferencePool | None = None,
    models: Mapping[str, LLMModel] | None = None,
    carried: rc.Carried | None = None,
) -> list[dict[str, Any]]:
    """Every object the operator owns for a route. `local_key_ref`: the key of the route's pool
    (`InferencePool.spec.apiKeySecretRef`), sent to local instead of the client's key; its Secret's
    resourceVersion, like the fallback key's, rolls the router pods when it changes. `pool` and `models`: the
    primary pool and its LLMModels, whose slots per pod the router fills before it spills to the cloud (without
    them it has no slot limit). `carried`: what the route's router pods that no longer run spent in the spend
    cap's current period (the operator's ledger); none of these roll the router: its config hot-reloads."""
    settings = settings or RenderSettings()
    policy = network_policy(route)
    return [
        config_map(route, local_key=local_key_ref is not None, pool=pool, models=models, carried=carried),
        deployment(route, settings, secret_version, local_key_ref, local_key_version),
        service(route),
        *([policy] if policy is not None else []),
        *slice_reader(route),
    ]

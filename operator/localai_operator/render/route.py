"""FallbackRoute -> router ConfigMap (no secret material), router Deployment and Service."""

from __future__ import annotations

from typing import Any

from localai_operator.api.route import FallbackRoute
from localai_operator.constants import (
    ANNOTATION_CONFIG_HASH,
    FALLBACK_API_KEY_ENV,
    ROUTER_CONFIG_DIR,
    ROUTER_CONFIG_FILE,
    ROUTER_PORT,
    ROUTER_SERVICE_PORT,
)
from localai_operator.render.common import (
    RenderSettings,
    content_hash,
    http_service,
    meta,
    restricted_container_security,
    selector,
)
from localai_operator.render.pool import service_url
from localai_operator.router import config as rc

APP = "localai-router"
COMPONENT = "router"
ROUTER_UID = 65532


def router_name(route: FallbackRoute) -> str:
    return f"{route.name}-router"


def endpoint(route: FallbackRoute) -> str:
    return f"http://{route.name}.{route.namespace}.svc/v1"


def primary_url(route: FallbackRoute) -> str:
    primary = route.spec.primary
    if primary.pool_ref is not None:
        return service_url(primary.pool_ref.name, route.namespace)
    assert primary.url is not None, "the schema requires exactly one primary"
    return primary.url.rstrip("/")


def router_config(route: FallbackRoute) -> rc.RouterConfig:
    spec = route.spec
    policy = spec.policy
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
        )
    return rc.RouterConfig(
        route=rc.RouteRef(name=route.name, namespace=route.namespace),
        local=rc.LocalUpstream(endpoints=[primary_url(route)]),
        fallback=fallback,
        policy=rc.Policy(
            first_token_timeout_ms=policy.first_token_timeout_ms,
            request_timeout_seconds=policy.request_timeout_seconds,
            connect_timeout_ms=policy.connect_timeout_ms,
            sensitive=policy.sensitive,
            circuit_breaker=rc.CircuitBreaker(
                failure_threshold=policy.circuit_breaker.failure_threshold,
                open_seconds=policy.circuit_breaker.open_seconds,
            ),
            rate_limit=(
                rc.RateLimit(
                    requests_per_second=policy.rate_limit.requests_per_second, burst=policy.rate_limit.burst
                )
                if policy.rate_limit
                else None
            ),
        ),
    )


def config_map(route: FallbackRoute) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": meta(route, router_name(route), name=APP, component="router-config"),
        "data": {ROUTER_CONFIG_FILE: router_config(route).to_yaml()},
    }


def service(route: FallbackRoute) -> dict[str, Any]:
    return http_service(route, route.name, name=APP, component=COMPONENT, port=ROUTER_SERVICE_PORT)


def deployment(
    route: FallbackRoute, settings: RenderSettings, secret_version: str | None = None
) -> dict[str, Any]:
    env: list[dict[str, Any]] = []
    fb = route.spec.fallback
    if route.fallback_active and fb is not None:
        ref = fb.api_key_secret_ref
        env.append(
            {"name": FALLBACK_API_KEY_ENV, "valueFrom": {"secretKeyRef": {"name": ref.name, "key": ref.key}}}
        )
    resources = (
        {
            "requests": {k: str(v) for k, v in route.spec.resources.requests.items()},
            **(
                {"limits": {k: str(v) for k, v in route.spec.resources.limits.items()}}
                if route.spec.resources.limits
                else {}
            ),
        }
        if route.spec.resources
        else {"requests": {"cpu": "100m", "memory": "64Mi"}, "limits": {"memory": "256Mi"}}
    )
    container: dict[str, Any] = {
        "name": "router",
        "image": settings.operator_image,
        "args": [
            "router",
            "--config",
            f"{ROUTER_CONFIG_DIR}/{ROUTER_CONFIG_FILE}",
            "--port",
            str(ROUTER_PORT),
        ],
        "ports": [{"name": "http", "containerPort": ROUTER_PORT, "protocol": "TCP"}],
        "resources": resources,
        # Mounted as a directory, not subPath, so ConfigMap edits reach the router's hot reload.
        "volumeMounts": [{"name": "config", "mountPath": ROUTER_CONFIG_DIR, "readOnly": True}],
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
    pod_spec = {
        "enableServiceLinks": False,
        "securityContext": {"seccompProfile": {"type": "RuntimeDefault"}},
        "containers": [container],
        "volumes": [{"name": "config", "configMap": {"name": router_name(route)}}],
    }
    labels = meta(route, router_name(route), name=APP, component=COMPONENT)["labels"]
    # The config file hot-reloads; only the pod spec and a rotated key (its Secret's version, never its value)
    # need new pods.
    annotations = {ANNOTATION_CONFIG_HASH: content_hash(pod_spec, secret_version)}
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


def route_objects(
    route: FallbackRoute, settings: RenderSettings | None = None, *, secret_version: str | None = None
) -> list[dict[str, Any]]:
    settings = settings or RenderSettings()
    return [config_map(route), deployment(route, settings, secret_version), service(route)]

"""Thin Kopf wiring: indexes that fill the caches, and event handlers that only enqueue keys (no API call).

Only `@kopf.index` and `@kopf.on.event` handlers, plus start-up, login and cleanup: Kopf then stores no progress
or diff-base annotations on the user's resources and adds no finalizers, which keeps GitOps tools from seeing
drift. What each index holds is defined in cache.py; what a key's pass does, in reconcile.py.
"""

from __future__ import annotations

import logging
from typing import Any

import kopf

from localai_operator.api.kinds import (
    CUSTOM_RESOURCE_DEFINITION,
    DEPLOYMENT,
    ENDPOINT_SLICE,
    FALLBACK_ROUTE,
    HORIZONTAL_POD_AUTOSCALER,
    HTTP_ROUTE,
    INFERENCE_POOL,
    LLM_MODEL,
    NODE,
    OWNED,
    POD,
    Kind,
    of,
)
from localai_operator.constants import APP_NAME, LABEL_COMPONENT, LABEL_INSTANCE, LABEL_MANAGED_BY
from localai_operator.control import cache
from localai_operator.control.controller import Controller
from localai_operator.control.headers import fetched_headers
from localai_operator.control.kube import login as kube_login
from localai_operator.control.plan import routes_clashing_with
from localai_operator.control.queue import Key
from localai_operator.render.common import ROUTER_COMPONENT

MANAGED = f"{LABEL_MANAGED_BY}={APP_NAME}"
DELETED = "DELETED"


def _ns(namespace: str | None) -> str:
    assert namespace is not None, "every kind with events handled here is namespaced"
    return namespace


def _on(kind: Kind) -> tuple[str, str]:
    """The (apiVersion, plural) selector Kopf's decorators take."""
    return kind.api_version, kind.plural


# --- Kopf's settings, credentials and the controller's life -----------------------------------------------------


class NoDiffBase(kopf.DiffBaseStorage):
    """Kopf builds a diff base of every event's body (a deep copy) even when no handler needs one; only
    on.create/on.update/on.field handlers do, and there are none here. An empty one skips that work (a fifth of
    the operator's CPU at 1,100 objects) and, as before, stores nothing on the user's resources."""

    def build(self, *, body: kopf.Body, extra_fields: Any = None) -> kopf.BodyEssence:
        return kopf.BodyEssence()

    def fetch(self, *, body: kopf.Body) -> kopf.BodyEssence | None:
        return None

    def store(self, *, body: kopf.Body, patch: kopf.Patch, essence: kopf.BodyEssence) -> None:
        return None


@kopf.on.startup()
async def start(settings: kopf.OperatorSettings, memo: Controller, **indexes: Any) -> None:
    settings.posting.enabled = False  # the passes record their own Events, one per Ready transition
    settings.persistence.diffbase_storage = NoDiffBase()
    settings.watching.server_timeout = 300
    settings.watching.client_timeout = 330
    settings.watching.connect_timeout = 5
    settings.networking.request_timeout = 30
    # A restarted API server is reached again within seconds, never with a retry storm.
    settings.networking.error_backoffs = [0.5, 1, 2, 3, 5, *[5] * 60]
    # Owned objects and pods are watched only if they carry our managed-by label, and pods only while Pending
    # (the only phase in which they can be unschedulable): the API server filters.
    for kind in (*OWNED, POD):
        settings.watching.label_selectors[_on(kind)] = MANAGED
    settings.watching.field_selectors[_on(POD)] = "status.phase=Pending"
    # Only the router Services' slices (they carry the Service's labels): where the elastic loop reads demand.
    settings.watching.label_selectors[_on(ENDPOINT_SLICE)] = f"{LABEL_COMPONENT}={ROUTER_COMPONENT},{MANAGED}"
    await memo.start({name: indexes[name] for name in cache.INDEXES})


@kopf.on.login()
async def login(
    settings: kopf.OperatorSettings, logger: logging.Logger | logging.LoggerAdapter[Any], **_: Any
) -> kopf.ConnectionInfo:
    return kube_login(settings, logger)


@kopf.on.cleanup()
async def stop(memo: Controller, **_: Any) -> None:
    await memo.stop()


# --- indexes: the caches ------------------------------------------------------------------------------------------


@kopf.index(*_on(LLM_MODEL), id=cache.MODELS)
async def models(namespace: str | None, name: str, body: kopf.Body, **_: Any) -> dict[Any, Any]:
    return cache.model_entries(_ns(namespace), name, body)


@kopf.index(*_on(INFERENCE_POOL), id=cache.POOLS)
async def pools(namespace: str | None, name: str, body: kopf.Body, **_: Any) -> dict[Any, Any]:
    return cache.pool_entries(_ns(namespace), name, body)


@kopf.index(*_on(FALLBACK_ROUTE), id=cache.ROUTES)
async def routes(namespace: str | None, name: str, body: kopf.Body, **_: Any) -> dict[Any, Any]:
    return cache.route_entries(_ns(namespace), name, body)


async def owned(body: kopf.Body, **_: Any) -> dict[Any, Any]:
    key = cache.owned_key(body)
    return {key: cache.pack(body)} if key else {}


for _kind in OWNED:
    kopf.index(*_on(_kind), id=cache.OWNED)(owned)


@kopf.index(*_on(POD), id=cache.UNSCHEDULABLE)
async def unschedulable_pods(namespace: str | None, body: kopf.Body, **_: Any) -> dict[Any, Any]:
    pool, message = cache.pool_of_pod(body), cache.unschedulable_message(body)
    return {(namespace, pool): message} if pool and message else {}


@kopf.index(*_on(NODE), id=cache.GPU_NODES)
async def gpu_nodes(body: kopf.Body, labels: kopf.Labels, **_: Any) -> dict[Any, Any]:
    gpus = cache.schedulable_gpus(body)
    return {frozenset(labels.items()): gpus} if gpus else {}


@kopf.index(*_on(ENDPOINT_SLICE), id=cache.ROUTER_ENDPOINTS)
async def router_endpoints(
    namespace: str | None, body: kopf.Body, labels: kopf.Labels, **_: Any
) -> dict[Any, Any]:
    route = labels.get(LABEL_INSTANCE)
    return {(namespace, route): cache.router_endpoints(body)} if route else {}


@kopf.index(*_on(HORIZONTAL_POD_AUTOSCALER), id=cache.HPAS)
async def hpas(namespace: str | None, name: str, body: kopf.Body, **_: Any) -> dict[Any, Any]:
    pool = cache.hpa_target_pool(body)
    return {(namespace, pool): name} if pool else {}


# Every CRD, not one by field selector: Kopf's own discovery of new resources shares this watch's selectors.
@kopf.index(*_on(CUSTOM_RESOURCE_DEFINITION), id=cache.GATEWAY_API)
async def gateway_api(name: str, body: kopf.Body, **_: Any) -> dict[Any, Any]:
    return {name: cache.serves(body, HTTP_ROUTE.version)} if name == HTTP_ROUTE.resource else {}


# --- events: what each change puts into the work queue ------------------------------------------------------------


@kopf.on.event(*_on(LLM_MODEL), id="llmmodel")
async def model_changed(
    type: str | None,
    body: kopf.Body,
    meta: kopf.Meta,
    namespace: str | None,
    name: str,
    memo: Controller,
    **_: Any,
) -> None:
    memo.synced.set()
    ns, gone = _ns(namespace), type == DELETED
    if memo.cache.spec_changed(LLM_MODEL, ns, name, meta.get("generation"), gone):
        pools = set(memo.cache.served_by(ns, name))
        memo.enqueue(INFERENCE_POOL.kind, ns, pools)  # they render it
        for pool in pools:  # their routers' slots come from spec.parallel
            memo.enqueue(
                FALLBACK_ROUTE.kind, ns, set(memo.cache.routes_using_pool(ns, pool)), background=True
            )
    if not gone and not memo.cache.is_echo(body):
        memo.enqueue(LLM_MODEL.kind, ns, name)


@kopf.on.event(*_on(INFERENCE_POOL), id="inferencepool")
async def pool_changed(
    type: str | None,
    body: kopf.Body,
    meta: kopf.Meta,
    spec: kopf.Spec,
    namespace: str | None,
    name: str,
    uid: str,
    memo: Controller,
    **_: Any,
) -> None:
    memo.synced.set()
    ns, gone = _ns(namespace), type == DELETED
    served = memo.cache.pool_models_changed(ns, name, spec.get("models") or [], gone)
    memo.enqueue(LLM_MODEL.kind, ns, served, low=True)  # their servedBy, behind the pools' rollouts
    if memo.cache.spec_changed(INFERENCE_POOL, ns, name, meta.get("generation"), gone):
        routes = set(memo.cache.routes_using_pool(ns, name))
        routes |= {r for r in routes_clashing_with(name) if memo.cache.get(FALLBACK_ROUTE, ns, r)}
        memo.enqueue(FALLBACK_ROUTE.kind, ns, routes)
    if gone:
        memo.renders.forget(uid)
    elif not memo.cache.is_echo(body):
        memo.enqueue(INFERENCE_POOL.kind, ns, name)


@kopf.on.event(*_on(FALLBACK_ROUTE), id="fallbackroute")
async def route_changed(
    type: str | None, body: kopf.Body, namespace: str | None, name: str, uid: str, memo: Controller, **_: Any
) -> None:
    memo.synced.set()
    if type == DELETED:
        memo.renders.forget(uid)
    elif not memo.cache.is_echo(body):
        memo.enqueue(FALLBACK_ROUTE.kind, _ns(namespace), name)


async def owned_changed(
    type: str | None, body: kopf.Body, meta: kopf.Meta, namespace: str | None, memo: Controller, **_: Any
) -> None:
    """An owned object changed or went away (by hand, by another controller): its owner's pass repairs it at
    once. A Deployment's status moving along a rollout only feeds the owner's status: that pass waits behind
    urgent ones."""
    memo.synced.set()
    ns, name, gone = _ns(namespace), body["metadata"]["name"], type == DELETED
    kind = of(body["kind"])
    rollout = kind is DEPLOYMENT and not memo.cache.spec_changed(kind, ns, name, meta.get("generation"), gone)
    if gone:
        memo.cache.deleted(kind.kind, ns, name)
    elif memo.cache.is_echo(body):
        return
    owner = memo.cache.owner(body)
    if owner is not None:
        memo.enqueue(owner[0], ns, owner[1], background=rollout)


for _kind in OWNED:
    kopf.on.event(*_on(_kind), id="owned")(owned_changed)


@kopf.on.event(*_on(POD), id="pool-pod")
async def pod_changed(body: kopf.Body, namespace: str | None, memo: Controller, **_: Any) -> None:
    """Scheduling failures show on the pods first (the Deployment only counts them), and so do the headers
    fetch-models reports when it is done (the pod is Pending until LocalAI starts; the watch's last event of it,
    as it turns Running, still carries them)."""
    memo.synced.set()
    pool = cache.pool_of_pod(body)
    if pool:
        memo.enqueue(INFERENCE_POOL.kind, _ns(namespace), pool, background=True)
        # Its fetch-models may have reported the headers of models the operator could not read itself.
        reported = memo.headers.report(_ns(namespace), fetched_headers(body))
        memo.header_known({Key(LLM_MODEL.kind, _ns(namespace), model) for model in reported})


@kopf.on.event(*_on(NODE), id="node")
async def node_changed(type: str | None, memo: Controller, **_: Any) -> None:
    """A GPU node came or went: pools that did not fit may fit now, and the other way round."""
    memo.synced.set()
    if type in ("ADDED", DELETED):
        for namespace, name in memo.cache.gpu_pools():
            memo.enqueue(INFERENCE_POOL.kind, namespace, name, background=True)


@kopf.on.event(*_on(CUSTOM_RESOURCE_DEFINITION), id="gateway-api")
async def gateway_api_changed(name: str, memo: Controller, **_: Any) -> None:
    """The Gateway API was installed or removed: the routes with spec.gateway make or drop their HTTPRoute."""
    if name != HTTP_ROUTE.resource:
        return
    for namespace, route in memo.cache.keys(FALLBACK_ROUTE):
        if ((memo.cache.get(FALLBACK_ROUTE, namespace, route) or {}).get("spec") or {}).get("gateway"):
            memo.enqueue(FALLBACK_ROUTE.kind, namespace, route)

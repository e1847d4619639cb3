"""One level-based pass per object: parse -> render -> apply -> observe -> status. Same on every trigger."""

from __future__ import annotations

import logging
import threading
import time
from collections import defaultdict
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

from kubernetes.client.exceptions import ApiException
from pydantic import ValidationError

from localai_operator import status as st
from localai_operator.api import FallbackRoute, InferencePool, LLMModel
from localai_operator.api.base import validation_problems
from localai_operator.constants import (
    APP_NAME,
    GPU_RESOURCE,
    LABEL_COMPONENT,
    LABEL_INSTANCE,
    LABEL_MANAGED_BY,
)
from localai_operator.kube import Kube
from localai_operator.render import RenderSettings, pool_objects, route_objects
from localai_operator.render.pool import COMPONENT as POOL_COMPONENT
from localai_operator.render.pool import endpoint as pool_endpoint
from localai_operator.render.pool import file_conflicts
from localai_operator.render.route import endpoint as route_endpoint
from localai_operator.render.route import primary_url

log = logging.getLogger(__name__)
API = "llm.localai-operator.io/v1alpha1"
POOL_LIST_TTL = 5.0


def now() -> str:
    return datetime.now(UTC).replace(microsecond=0).isoformat().replace("+00:00", "Z")


def _gpus(node: dict[str, Any]) -> int:
    value = (node.get("status", {}).get("allocatable") or {}).get(GPU_RESOURCE, "0")
    try:
        return int(str(value))
    except ValueError:
        return 0


class Reconciler:
    """Holds the API wrapper, render settings and per-object locks; every method is safe to call from threads."""

    def __init__(
        self, kube: Kube, settings: RenderSettings, observe: Callable[[str, float, str], None] | None = None
    ):
        self.kube = kube
        self.settings = settings
        self._locks: defaultdict[tuple[str, str, str], threading.Lock] = defaultdict(threading.Lock)
        self._locks_guard = threading.Lock()
        self._pool_lists: dict[str, tuple[float, list[dict[str, Any]]]] = {}
        self._observe = observe or (lambda kind, seconds, result: None)

    def _lock(self, kind: str, namespace: str, name: str) -> threading.Lock:
        with self._locks_guard:
            return self._locks[(kind, namespace, name)]

    # --- entry points -------------------------------------------------------------------------------------------

    def reconcile(self, kind: str, namespace: str, name: str, body: dict[str, Any] | None = None) -> bool:
        """Reconcile one custom resource by name; reads it first unless a fresh body is given. False when the
        pass failed (it is logged; the next event or resync tries again)."""
        with self._lock(kind, namespace, name):
            started, result = time.perf_counter(), "ok"
            try:
                body = body if body is not None else self.kube.get(kind, namespace, name)
                if body is None or body["metadata"].get("deletionTimestamp"):
                    return True
                {"LLMModel": self._model, "InferencePool": self._pool, "FallbackRoute": self._route}[kind](
                    body
                )
            except ApiException as err:
                result = "error"
                log.warning(
                    "reconcile %s %s/%s: API error %s %s", kind, namespace, name, err.status, err.reason
                )
            except Exception:
                result = "error"
                log.exception("reconcile %s %s/%s failed", kind, namespace, name)
            finally:
                self._observe(kind, time.perf_counter() - started, result)
            return result == "ok"

    def _pools(self, namespace: str) -> list[dict[str, Any]]:
        # Many models reconciled in a burst each ask which pools serve them: one LIST serves them all until
        # a pool event says the list changed.
        with self._locks_guard:
            cached = self._pool_lists.get(namespace)
        if cached is not None and time.monotonic() - cached[0] < POOL_LIST_TTL:
            return cached[1]
        items = self.kube.list("InferencePool", namespace)
        with self._locks_guard:
            self._pool_lists[namespace] = (time.monotonic(), items)
        return items

    def forget_pools(self, namespace: str) -> None:
        with self._locks_guard:
            self._pool_lists.pop(namespace, None)

    def pools_serving(self, namespace: str, model: str) -> list[str]:
        return [p["metadata"]["name"] for p in self._pools(namespace)
                if model in (p.get("spec", {}).get("models") or [])]  # fmt: skip

    def routes_using(
        self, namespace: str, *, pool: str | None = None, secret: str | None = None
    ) -> list[str]:
        names = []
        for route in self.kube.list("FallbackRoute", namespace):
            spec = route.get("spec", {})
            if pool is not None and (spec.get("primary", {}).get("poolRef") or {}).get("name") == pool:
                names.append(route["metadata"]["name"])
            if (
                secret is not None
                and ((spec.get("fallback") or {}).get("apiKeySecretRef") or {}).get("name") == secret
            ):
                names.append(route["metadata"]["name"])
        return names

    # --- the passes -----------------------------------------------------------------------------------------------

    def _write_status(self, kind: str, body: dict[str, Any], new: dict[str, Any]) -> None:
        old = body.get("status") or {}
        comparable_old = st.without_times({k: old.get(k) for k in new})
        if comparable_old == st.without_times(new):
            return
        meta = body["metadata"]
        self.kube.patch_status(kind, meta["namespace"], meta["name"], new)
        before, after = st.ready_of(old), st.ready_of(new)
        # A model turning Ready is routine (one per model); everything turning not Ready, and pools and routes
        # turning Ready, is worth an Event.
        if before != after and (kind != "LLMModel" or after != "True"):
            ready = next(c for c in new["conditions"] if c["type"] == st.READY)
            self.kube.event(body, type_="Normal" if after == "True" else "Warning", reason=ready["reason"],
                            message=ready["message"], now=now())  # fmt: skip

    def _model(self, body: dict[str, Any]) -> None:
        meta = body["metadata"]
        invalid, file = None, None
        try:
            model = LLMModel.parse(body)
            file = model.spec.source.file_name()
        except ValidationError as err:
            invalid = validation_problems(err)
        served = sorted(self.pools_serving(meta["namespace"], meta["name"]))
        new = st.model_status(invalid_message=invalid, served_by=served, file=file, previous=body.get("status"),
                              generation=meta.get("generation"), now=now())  # fmt: skip
        self._write_status("LLMModel", body, new)

    def _pool(self, body: dict[str, Any]) -> None:
        meta = body["metadata"]
        namespace, generation = meta["namespace"], meta.get("generation")
        try:
            pool = InferencePool.parse(body)
        except ValidationError as err:
            spec = body.get("spec") or {}
            facts = st.PoolFacts(
                meta["name"],
                namespace,
                0,
                0,
                list(spec.get("models") or []),
                invalid=validation_problems(err),
            )
            self._write_status(
                "InferencePool", body, st.pool_status(facts, body.get("status"), generation, now())
            )
            return
        models: dict[str, LLMModel] = {}
        missing: list[str] = []
        for name in pool.spec.models:
            raw = self.kube.get("LLMModel", namespace, name)
            try:
                if raw is None:
                    raise LookupError(name)
                models[name] = LLMModel.parse(raw)
            except (LookupError, ValidationError):
                missing.append(name)
        common = {"name": pool.name, "namespace": namespace, "replicas": pool.spec.replicas,
                  "gpus": pool.spec.accelerator.gpus, "models": list(pool.spec.models)}  # fmt: skip
        if missing:
            # Nothing is applied until every model resolves: never a half-applied pool.
            facts = st.PoolFacts(**common, missing_models=missing)
            self._write_status(
                "InferencePool", body, st.pool_status(facts, body.get("status"), generation, now())
            )
            return
        conflict = file_conflicts([models[name] for name in pool.spec.models])
        if conflict:
            facts = st.PoolFacts(**common, invalid=conflict)
            self._write_status(
                "InferencePool", body, st.pool_status(facts, body.get("status"), generation, now())
            )
            return
        objects = pool_objects(pool, models, self.settings)
        self.kube.apply_all(objects)
        if pool.metadata.uid:
            self.kube.prune(pool.metadata.uid, namespace, pool.name, objects)
        facts = st.PoolFacts(**common, deployment=self.kube.get("Deployment", namespace, pool.name),
                             unschedulable=self._unschedulable(namespace, pool.name),
                             largest_node_gpus=self._largest_node_gpus(pool) if pool.spec.accelerator.gpus else None,
                             endpoint=pool_endpoint(pool))  # fmt: skip
        self._write_status(
            "InferencePool", body, st.pool_status(facts, body.get("status"), generation, now())
        )

    def _unschedulable(self, namespace: str, instance: str) -> str | None:
        selector = (
            f"{LABEL_MANAGED_BY}={APP_NAME},{LABEL_INSTANCE}={instance},{LABEL_COMPONENT}={POOL_COMPONENT}"
        )
        for pod in self.kube.list("Pod", namespace, selector):
            for condition in pod.get("status", {}).get("conditions") or []:
                if condition.get("type") == "PodScheduled" and condition.get("reason") == "Unschedulable":
                    return str(condition.get("message") or "Unschedulable")
        return None

    def _largest_node_gpus(self, pool: InferencePool) -> int:
        selector = dict(pool.spec.node_selector)
        if pool.spec.accelerator.product:
            selector["nvidia.com/gpu.product"] = pool.spec.accelerator.product
        best = 0
        for node in self.kube.list("Node"):
            labels = node["metadata"].get("labels") or {}
            if node.get("spec", {}).get("unschedulable") or any(
                labels.get(k) != v for k, v in selector.items()
            ):
                continue
            best = max(best, _gpus(node))
        return best

    def _route(self, body: dict[str, Any]) -> None:
        meta = body["metadata"]
        namespace, generation = meta["namespace"], meta.get("generation")
        try:
            route = FallbackRoute.parse(body)
        except ValidationError as err:
            facts = st.RouteFacts(meta["name"], namespace, invalid=validation_problems(err))
            self._write_status(
                "FallbackRoute", body, st.route_status(facts, body.get("status"), generation, now())
            )
            return
        base = {"name": route.name, "namespace": namespace, "primary": primary_url(route),
                "sensitive": route.spec.policy.sensitive, "fallback": route.fallback_active,
                "replicas": route.spec.replicas, "endpoint": route_endpoint(route)}  # fmt: skip
        if self.kube.get("InferencePool", namespace, route.name) is not None:
            conflict = (f'InferencePool "{route.name}" in this namespace already owns the Service "{route.name}": '
                        "give the route another name.")  # fmt: skip
            facts = st.RouteFacts(**base, name_conflict=conflict)
            self._write_status(
                "FallbackRoute", body, st.route_status(facts, body.get("status"), generation, now())
            )
            return
        pool_ref = route.spec.primary.pool_ref
        missing_pool = None
        if pool_ref is not None and self.kube.get("InferencePool", namespace, pool_ref.name) is None:
            missing_pool = pool_ref.name
        secret_problem, secret_version = None, None
        fallback = route.spec.fallback
        if route.fallback_active and fallback is not None:
            ref = fallback.api_key_secret_ref
            secret = self.kube.get("Secret", namespace, ref.name)
            if secret is None:
                secret_problem = (f'Secret "{ref.name}" not found in namespace "{namespace}": create it with the '
                                  f'provider API key under key "{ref.key}".')  # fmt: skip
            elif ref.key not in (secret.get("data") or {}) and ref.key not in (
                secret.get("stringData") or {}
            ):
                secret_problem = f'Secret "{ref.name}" has no key "{ref.key}".'
            else:
                secret_version = secret["metadata"].get("resourceVersion")
        deployment = None
        if secret_problem is None:
            # Without its key the router pod could not start: apply nothing rather than a half-working route.
            self.kube.apply_all(route_objects(route, self.settings, secret_version=secret_version))
            deployment = self.kube.get("Deployment", namespace, f"{route.name}-router")
        facts = st.RouteFacts(
            **base, missing_pool=missing_pool, secret_problem=secret_problem, deployment=deployment
        )
        self._write_status(
            "FallbackRoute", body, st.route_status(facts, body.get("status"), generation, now())
        )

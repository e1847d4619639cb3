"""Thin Kopf wiring: every watch event becomes a level-based reconcile of the objects it affects.

Only `on.event` handlers and one resync task: Kopf then stores no progress or diff-base annotations on the
user's resources and adds no finalizers, which keeps GitOps tools from seeing drift.
"""

from __future__ import annotations

import asyncio
import logging
import os
import threading
from typing import Any

import kopf

from localai_operator.constants import APP_NAME, GROUP, LABEL_MANAGED_BY, VERSION
from localai_operator.kube import LeaderElector
from localai_operator.reconcile import Reconciler

log = logging.getLogger(__name__)
MANAGED = {LABEL_MANAGED_BY: APP_NAME}
RESYNC_SECONDS = float(os.environ.get("LOCALAI_OPERATOR_RESYNC_SECONDS", "60"))

# Set by main.run() before Kopf starts; handlers run in Kopf's thread pool.
STATE: dict[str, Any] = {}


def _rec() -> Reconciler:
    reconciler: Reconciler = STATE["reconciler"]
    return reconciler


def _leading() -> bool:
    """A standby replica watches like the leader but writes nothing until it holds the lease."""
    if STOPPING.is_set():
        return False
    elector: LeaderElector | None = STATE.get("elector")
    return elector is None or elector.leading.is_set()


STOPPING = threading.Event()


class Generations:
    """The generation (and pool models) each custom resource was last reconciled at.

    Status writes, ours included, do not bump `metadata.generation`: their echoes then cost nothing, and an
    object's dependents are reconciled only when its spec really changed, it appeared, or it went away.
    """

    def __init__(self) -> None:
        self._seen: dict[tuple[str, str, str], tuple[int | None, frozenset[str]]] = {}
        self._lock = threading.Lock()

    def get(self, key: tuple[str, str, str]) -> tuple[int | None, frozenset[str]] | None:
        with self._lock:
            return self._seen.get(key)

    def mark(self, key: tuple[str, str, str], generation: int | None, models: frozenset[str]) -> None:
        with self._lock:
            self._seen[key] = (generation, models)

    def forget(self, key: tuple[str, str, str]) -> tuple[int | None, frozenset[str]] | None:
        with self._lock:
            return self._seen.pop(key, None)


SEEN = Generations()


class Dependents:
    """Reconciles owed to objects affected by another's change, run by a few background threads, de-duplicated
    and off the event path: a burst of pool events then never waits behind the models they serve, and a
    Deployment's many status updates during a rollout collapse into one pass of its owner."""

    def __init__(self, workers: int = 4) -> None:
        self._pending: dict[tuple[str, str, str], None] = {}
        self._cond = threading.Condition()
        self._workers = workers
        self._threads: list[threading.Thread] = []

    def add(self, kind: str, namespace: str, name: str) -> None:
        with self._cond:
            self._pending[(kind, namespace, name)] = None
            if not self._threads:
                for index in range(self._workers):
                    thread = threading.Thread(target=self._run, name=f"dependents-{index}", daemon=True)
                    thread.start()
                    self._threads.append(thread)
            self._cond.notify()

    def _run(self) -> None:
        while not STOPPING.is_set():
            with self._cond:
                while not self._pending and not STOPPING.is_set():
                    self._cond.wait(timeout=1.0)
                if not self._pending:
                    continue
                key = next(iter(self._pending))
                del self._pending[key]
            if _leading():
                # The per-object lock in the reconciler keeps two workers off the same object.
                _rec().reconcile(*key)


DEPENDENTS = Dependents()


def _handle(kind: str, event: kopf.RawEvent, body: kopf.Body, namespace: str, name: str) -> set[str] | None:
    """Reconcile the object if its spec is new to us. Returns the models whose servedBy may have changed
    (pools only), or None when dependents need no pass."""
    key = (kind, namespace, name)
    models = frozenset(body.get("spec", {}).get("models") or [])
    if event.get("type") == "DELETED":
        previous = SEEN.forget(key)
        return set(models | (previous[1] if previous else frozenset()))
    generation = body.get("metadata", {}).get("generation")
    previous = SEEN.get(key)
    if previous is not None and previous[0] == generation:
        return None  # a status or metadata change: nothing in the spec to act on
    if _rec().reconcile(kind, namespace, name, dict(body)):
        SEEN.mark(key, generation, models)
    if event.get("type") is None:
        return None  # the start-up listing: the object did not change, its dependents get their own pass
    return set(models | (previous[1] if previous else frozenset()))


@kopf.on.event(GROUP, VERSION, "llmmodels", id="llmmodel")
def on_model(event: kopf.RawEvent, body: kopf.Body, namespace: str | None, name: str, **_: Any) -> None:
    assert namespace is not None, "every kind watched here is namespaced"
    if not _leading():
        return
    rec = _rec()
    if _handle("LLMModel", event, body, namespace, name) is not None:
        for pool in rec.pools_serving(namespace, name):
            DEPENDENTS.add("InferencePool", namespace, pool)


@kopf.on.event(GROUP, VERSION, "inferencepools", id="inferencepool")
def on_pool(event: kopf.RawEvent, body: kopf.Body, namespace: str | None, name: str, **_: Any) -> None:
    assert namespace is not None, "every kind watched here is namespaced"
    if not _leading():
        return
    rec = _rec()
    rec.forget_pools(namespace)
    affected = _handle("InferencePool", event, body, namespace, name)
    if affected is None:
        return
    for model in sorted(affected):
        DEPENDENTS.add("LLMModel", namespace, model)
    for route in rec.routes_using(namespace, pool=name):
        DEPENDENTS.add("FallbackRoute", namespace, route)


@kopf.on.event(GROUP, VERSION, "fallbackroutes", id="fallbackroute")
def on_route(event: kopf.RawEvent, body: kopf.Body, namespace: str | None, name: str, **_: Any) -> None:
    assert namespace is not None, "every kind watched here is namespaced"
    if not _leading():
        return
    _handle("FallbackRoute", event, body, namespace, name)


def _owner(body: kopf.Body) -> tuple[str, str] | None:
    for ref in body.get("metadata", {}).get("ownerReferences") or []:
        if str(ref.get("apiVersion", "")).startswith(f"{GROUP}/"):
            return str(ref["kind"]), str(ref["name"])
    return None


@kopf.on.event("apps", "v1", "deployments", labels=MANAGED, id="owned-deployment")
def on_deployment(body: kopf.Body, namespace: str | None, **_: Any) -> None:
    assert namespace is not None, "every kind watched here is namespaced"
    if not _leading():
        return
    owner = _owner(body)
    if owner is not None:
        DEPENDENTS.add(owner[0], namespace, owner[1])


@kopf.on.event("", "v1", "pods", labels=MANAGED, id="owned-pod")
def on_pod(body: kopf.Body, namespace: str | None, **_: Any) -> None:
    assert namespace is not None, "every kind watched here is namespaced"
    if not _leading():
        return
    # Pods carry the pool's name as instance; scheduling failures show up here first.
    status = body.get("status", {})
    scheduled = next((c for c in status.get("conditions") or [] if c.get("type") == "PodScheduled"), None)
    if scheduled is not None and scheduled.get("reason") == "Unschedulable":
        instance = body.get("metadata", {}).get("labels", {}).get("app.kubernetes.io/instance")
        if instance:
            DEPENDENTS.add("InferencePool", namespace, instance)


@kopf.on.event("", "v1", "secrets", id="referenced-secret")
def on_secret(namespace: str | None, name: str, **_: Any) -> None:
    assert namespace is not None, "every kind watched here is namespaced"
    if not _leading():
        return
    rec = _rec()
    for route in rec.routes_using(namespace, secret=name):
        rec.reconcile("FallbackRoute", namespace, route)


async def resync_forever(namespaces: list[str] | None) -> None:
    """Reconcile everything periodically: catches what a missed event or a failed pass left behind."""
    rec = _rec()
    while True:
        await asyncio.sleep(RESYNC_SECONDS)
        if not _leading():
            continue
        try:
            await asyncio.to_thread(resync_once, rec, namespaces)
        except Exception:
            log.exception("resync failed; retrying in %.0f s", RESYNC_SECONDS)


def resync_once(rec: Reconciler, namespaces: list[str] | None) -> None:
    scopes: list[str | None] = list(namespaces) if namespaces else [None]
    for namespace in scopes:
        for kind in ("LLMModel", "InferencePool", "FallbackRoute"):
            for obj in rec.kube.list(kind, namespace):
                if not _leading():
                    return  # shutting down or lost the lease: stop at once, the next leader starts over
                meta = obj["metadata"]
                rec.reconcile(kind, meta["namespace"], meta["name"], obj)


async def lead_forever(
    elector: LeaderElector, namespaces: list[str] | None, renew_seconds: float = 5.0
) -> None:
    """Hold or wait for the lease; on becoming leader, reconcile everything at once instead of at the next resync."""
    while not STOPPING.is_set():
        was_leading = elector.leading.is_set()
        try:
            leading = await asyncio.to_thread(elector.try_acquire_or_renew)
        except Exception:
            log.exception("leader election failed; standing by")
            elector.leading.clear()
            leading = False
        if leading and not was_leading:
            log.info("became the leader (lease %s/%s)", elector.namespace, elector.name)
            await asyncio.to_thread(resync_once, _rec(), namespaces)
        elif was_leading and not leading:
            log.warning("lost the lease %s/%s: standing by", elector.namespace, elector.name)
        await asyncio.sleep(renew_seconds)

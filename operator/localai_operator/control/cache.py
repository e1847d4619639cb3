"""What the operator knows of the cluster, with no API read: Kopf's indexes, fed by its watches, plus the
objects this operator wrote a moment ago and the watch has not delivered yet.

Kopf calls the index functions (handlers.py) with every watched object before any other handler runs, so a pass
never starts on half-listed caches. What each index holds is defined here, next to the lookups that read it.
"""

from __future__ import annotations

import time
from collections.abc import Collection, Mapping
from dataclasses import dataclass, field
from typing import Any

from localai_operator.api.kinds import Kind
from localai_operator.api.route import RouteCost
from localai_operator.constants import GPU_RESOURCE, GROUP, LABEL_COMPONENT, LABEL_INSTANCE
from localai_operator.control.autoscale import ScaleState
from localai_operator.control.plan import (
    Body,
    SecretInfo,
    pool_secret_names,
    primary_pool,
    route_secret_names,
)
from localai_operator.render.pool import COMPONENT as POOL_COMPONENT
from localai_operator.wire import Carried

# Index names: the ids of the @kopf.index handlers, and the kwargs Kopf passes them to handlers under. One index
# per watched kind (Kopf's cost is per index function and event); a custom kind's index also holds its references,
# under keys tagged with what they are.
MODELS = "models"  # ("model", namespace, name) -> the LLMModel
POOLS = "pools"  # ("pool", ns, name) -> the InferencePool; ("model"|"secret", ns, name) -> pools naming it
ROUTES = "routes"  # ("route", ns, name) -> the FallbackRoute; ("pool"|"secret", ns, name) -> routes naming it
OWNED = "owned"  # owner uid -> the objects it controls (every owned kind)
UNSCHEDULABLE = "unschedulable_pods"  # (namespace, pool) -> the scheduler's message, per Pending pod
GPU_NODES = "gpu_nodes"  # a schedulable GPU node's labels -> its allocatable GPUs
SECRETS = "secrets"  # (namespace, name) -> SecretInfo (resourceVersion and key names; never values)
ROUTER_ENDPOINTS = "router_endpoints"  # (namespace, route) -> ((pod, address), ...) of its ready router pods
HPAS = "hpas"  # (namespace, pool) -> the name of a HorizontalPodAutoscaler targeting the pool
GATEWAY_API = "gateway_api"  # the HTTPRoute CRD's name -> whether the API server serves it (Established)
INDEXES = (
    MODELS,
    POOLS,
    ROUTES,
    OWNED,
    UNSCHEDULABLE,
    GPU_NODES,
    SECRETS,
    ROUTER_ENDPOINTS,
    HPAS,
    GATEWAY_API,
)
INDEX_OF = {
    "LLMModel": (MODELS, "model"),
    "InferencePool": (POOLS, "pool"),
    "FallbackRoute": (ROUTES, "route"),
}

# How long an object this operator wrote stands in for the watch's copy: far above the watch's delay, and short
# enough that nothing stale outlives an outage of the watch.
WRITTEN_TTL = 10.0

Index = Mapping[Any, Collection[Any]]  # what kopf.Index is, as far as reading goes


# --- what the indexes hold -----------------------------------------------------------------------------------------


LAST_APPLIED = "kubectl.kubernetes.io/last-applied-configuration"


def slim(body: Mapping[str, Any]) -> dict[str, Any]:
    """A watched object without what is large and never read: its managedFields, and the copy of the whole
    object that `kubectl apply` keeps in an annotation."""
    meta = {k: v for k, v in (body.get("metadata") or {}).items() if k != "managedFields"}
    annotations = meta.get("annotations") or {}
    if LAST_APPLIED in annotations:
        meta["annotations"] = {k: v for k, v in annotations.items() if k != LAST_APPLIED}
    return {**body, "metadata": meta}


def model_entries(namespace: str, name: str, body: Mapping[str, Any]) -> dict[Any, Any]:
    return {("model", namespace, name): slim(body)}


def pool_entries(namespace: str, name: str, body: Mapping[str, Any]) -> dict[Any, Any]:
    entries: dict[Any, Any] = {("pool", namespace, name): slim(body)}
    entries.update({("model", namespace, str(m)): name for m in (body.get("spec") or {}).get("models") or []})
    entries.update({("secret", namespace, s): name for s in pool_secret_names(body)})
    return entries


def route_entries(namespace: str, name: str, body: Mapping[str, Any]) -> dict[Any, Any]:
    entries: dict[Any, Any] = {("route", namespace, name): slim(body)}
    pool = primary_pool(body)
    if pool:
        entries[("pool", namespace, pool)] = name
    entries.update({("secret", namespace, s): name for s in route_secret_names(body)})
    return entries


def owner_of(body: Mapping[str, Any]) -> tuple[str, str, str] | None:
    """(kind, name, uid) of the custom resource controlling `body`, if one of ours does."""
    for ref in (body.get("metadata") or {}).get("ownerReferences") or []:
        if str(ref.get("apiVersion", "")).startswith(f"{GROUP}/") and ref.get("controller"):
            return str(ref["kind"]), str(ref["name"]), str(ref["uid"])
    return None


def unschedulable_message(pod: Mapping[str, Any]) -> str | None:
    for condition in (pod.get("status") or {}).get("conditions") or []:
        if condition.get("type") == "PodScheduled" and condition.get("reason") == "Unschedulable":
            return str(condition.get("message") or "Unschedulable")
    return None


def pool_of_pod(pod: Mapping[str, Any]) -> str | None:
    """The pool a LocalAI pod belongs to (None for router pods)."""
    labels = (pod.get("metadata") or {}).get("labels") or {}
    return labels.get(LABEL_INSTANCE) if labels.get(LABEL_COMPONENT) == POOL_COMPONENT else None


def schedulable_gpus(node: Mapping[str, Any]) -> int:
    """Allocatable GPUs of a node that takes new pods (0 when cordoned)."""
    if (node.get("spec") or {}).get("unschedulable"):
        return 0
    value = ((node.get("status") or {}).get("allocatable") or {}).get(GPU_RESOURCE, "0")
    try:
        return int(str(value))
    except ValueError:
        return 0


def router_endpoints(slice_: Mapping[str, Any]) -> tuple[tuple[str, str], ...]:
    """(pod name, address) of the ready endpoints of a router Service's EndpointSlice."""
    out = []
    for endpoint in slice_.get("endpoints") or []:
        if (endpoint.get("conditions") or {}).get("ready") is False or not endpoint.get("addresses"):
            continue
        pod = (endpoint.get("targetRef") or {}).get("name") or endpoint["addresses"][0]
        out.append((str(pod), str(endpoint["addresses"][0])))
    return tuple(sorted(out))


def hpa_target_pool(hpa: Mapping[str, Any]) -> str | None:
    """The InferencePool an HPA scales through its scale subresource, if it targets one."""
    target = (hpa.get("spec") or {}).get("scaleTargetRef") or {}
    group = str(target.get("apiVersion", "")).partition("/")[0]
    name = target.get("name")
    return str(name) if target.get("kind") == "InferencePool" and group == GROUP and name else None


def serves(crd: Mapping[str, Any], version: str) -> bool:
    """Whether a CustomResourceDefinition is Established and serves `version`."""
    conditions = (crd.get("status") or {}).get("conditions") or []
    established = any(c.get("type") == "Established" and c.get("status") == "True" for c in conditions)
    versions = (crd.get("spec") or {}).get("versions") or []
    return established and any(v.get("name") == version and v.get("served") for v in versions)


def secret_info(secret: Mapping[str, Any]) -> SecretInfo:
    keys = set((secret.get("data") or {}).keys()) | set((secret.get("stringData") or {}).keys())
    return SecretInfo(str((secret.get("metadata") or {}).get("resourceVersion", "")), frozenset(keys))


def _version(body: Mapping[str, Any]) -> int:
    # resourceVersion is opaque to clients, but every etcd-backed API server issues increasing integers; an
    # unparsable one counts as oldest, so the watch's copy is preferred.
    try:
        return int((body.get("metadata") or {}).get("resourceVersion") or 0)
    except ValueError:
        return 0


@dataclass
class _Written:
    body: dict[str, Any]
    at: float


@dataclass
class Cache:
    """Typed lookups over Kopf's indexes (bound at start-up) and the operator's own recent writes."""

    indexes: dict[str, Index] = field(default_factory=dict)
    clock: Any = time.monotonic
    _written: dict[tuple[str, str, str], _Written] = field(default_factory=dict)
    _written_by_owner: dict[str, set[tuple[str, str, str]]] = field(default_factory=dict)
    _pool_models: dict[tuple[str, str], frozenset[str]] = field(default_factory=dict)
    _generations: dict[tuple[str, str, str], Any] = field(default_factory=dict)
    _in_flight: dict[tuple[str, str, str], list[str]] = field(default_factory=dict)
    # What the elastic loop (elastic.py) decided, by (namespace, name): the passes render it.
    scales: dict[tuple[str, str], ScaleState] = field(default_factory=dict)
    costs: dict[tuple[str, str], RouteCost] = field(default_factory=dict)
    carried: dict[tuple[str, str], Carried] = field(default_factory=dict)

    def bind(self, indexes: Mapping[str, Index]) -> None:
        missing = set(INDEXES) - set(indexes)
        assert not missing, (
            f"Kopf passed no index {missing}: every @kopf.index in handlers.py must be registered"
        )
        self.indexes = {name: indexes[name] for name in INDEXES}

    def _values(self, index: str, key: Any) -> Collection[Any]:
        return self.indexes.get(index, {}).get(key, ())

    # --- the custom resources

    def get(self, kind: Kind, namespace: str, name: str) -> Body | None:
        """The custom resource as last seen, or as this operator last wrote it if that is newer."""
        index, tag = INDEX_OF[kind.kind]
        values = list(self._values(index, (tag, namespace, name)))
        if not values:
            return None
        seen: Body = values[-1]
        written = self._fresh((kind.kind, namespace, name))
        same_object = written is not None and written["metadata"].get("uid") == seen["metadata"].get("uid")
        if written is not None and same_object and _version(written) > _version(seen):
            return written
        return seen

    def gateway_api(self) -> bool:
        """Whether the cluster serves HTTPRoute (gateway.networking.k8s.io/v1): its CRD is Established."""
        return any(any(values) for values in self.indexes.get(GATEWAY_API, {}).values())

    def keys(self, kind: Kind) -> list[tuple[str, str]]:
        """(namespace, name) of every object of a custom kind: what a resync enqueues."""
        index, tag = INDEX_OF[kind.kind]
        return [(key[1], key[2]) for key in self.indexes.get(index, {}) if key[0] == tag]

    def gpu_pools(self) -> list[tuple[str, str]]:
        """(namespace, name) of the pools asking for GPUs: those a GPU node's arrival or departure concerns."""
        index = self.indexes.get(POOLS, {})
        return [
            (key[1], key[2])
            for key in index
            if key[0] == "pool"
            and any(((p.get("spec") or {}).get("accelerator") or {}).get("gpus") for p in index[key])
        ]

    def served_by(self, namespace: str, model: str) -> tuple[str, ...]:
        return tuple(sorted(set(self._values(POOLS, ("model", namespace, model)))))

    def routes_using_pool(self, namespace: str, pool: str) -> list[str]:
        return sorted(set(self._values(ROUTES, ("pool", namespace, pool))))

    def routes_using_secret(self, namespace: str, secret: str) -> list[str]:
        return sorted(set(self._values(ROUTES, ("secret", namespace, secret))))

    def pools_using_secret(self, namespace: str, secret: str) -> list[str]:
        return sorted(set(self._values(POOLS, ("secret", namespace, secret))))

    def spec_changed(self, kind: Kind, namespace: str, name: str, generation: Any, gone: bool) -> bool:
        """True at a custom resource's first event, at a new generation (a spec edit) and at its deletion: when
        the resources depending on it need a pass. Status writes, ours or anyone's, keep the generation."""
        key = (kind.kind, namespace, name)
        before = self._generations.pop(key, None) if gone else self._generations.get(key)
        if not gone:
            self._generations[key] = generation
        return gone or before is None or before != generation

    def pool_models_changed(self, namespace: str, pool: str, models: Collection[str], gone: bool) -> set[str]:
        """The models whose servedBy a pool's event changes: all of them when it appears or goes, the ones added
        to or dropped from spec.models otherwise."""
        key = (namespace, pool)
        before = self._pool_models.pop(key, None) if gone else self._pool_models.get(key)
        if gone:
            return set(before or models)
        self._pool_models[key] = frozenset(models)
        return set(models) if before is None else set(before) ^ set(models)

    # --- what the custom resources own and depend on

    def owned(self, owner_uid: str) -> dict[tuple[str, str], Body]:
        """(kind, name) -> each object `owner_uid` controls, the newer of the watch's copy and our last write."""
        out: dict[tuple[str, str], Body] = {}
        for body in self._values(OWNED, owner_uid):
            out[(body["kind"], body["metadata"]["name"])] = body
        for key in list(self._written_by_owner.get(owner_uid, ())):
            written = self._fresh(key)
            if written is None:
                continue
            seen = out.get((key[0], key[2]))
            if seen is None or _version(written) > _version(seen):
                out[(key[0], key[2])] = written
        return out

    def unschedulable(self, namespace: str, pool: str) -> str | None:
        return next(iter(sorted(self._values(UNSCHEDULABLE, (namespace, pool)))), None)

    def gpu_nodes(self) -> list[tuple[Mapping[str, str], int]]:
        index = self.indexes.get(GPU_NODES, {})
        return [(dict(labels), max(index[labels])) for labels in index if index[labels]]

    def router_pods(self, namespace: str, route: str) -> list[tuple[str, str]]:
        """(pod name, address) of the route's ready router pods."""
        return sorted(
            {pair for pairs in self._values(ROUTER_ENDPOINTS, (namespace, route)) for pair in pairs}
        )

    def hpa_for(self, namespace: str, pool: str) -> str | None:
        return next(iter(sorted(self._values(HPAS, (namespace, pool)))), None)

    def secret(self, namespace: str, name: str) -> SecretInfo | None:
        return next(iter(self._values(SECRETS, (namespace, name))), None)

    # --- the operator's own writes
    #
    # A write's watch event can arrive before its response does. Events for an object while our write to it is
    # in flight are held back and judged when the response comes: the one carrying our write's resourceVersion is
    # its echo (nothing to do), any other is someone else's change, and the caller runs the pass again.

    def writing(self, kind: str, namespace: str, name: str) -> None:
        """A write to this object is about to be sent."""
        self._in_flight[(kind, namespace, name)] = []

    def wrote(self, body: dict[str, Any]) -> bool:
        """Remember what a write returned, so the next pass does not act on the watch's older copy. True when an
        event held back during the write was not its echo: the caller must run the pass again."""
        meta = body["metadata"]
        key = (body["kind"], meta.get("namespace", ""), meta["name"])
        self._written[key] = _Written(slim(body), self.clock())
        owner = owner_of(body)
        if owner is not None:
            self._written_by_owner.setdefault(owner[2], set()).add(key)
        held = self._in_flight.pop(key, [])
        if meta.get("resourceVersion") in held:
            self.deleted(*key)  # the watch already holds this very version
        return any(version != meta.get("resourceVersion") for version in held)

    def write_failed(self, kind: str, namespace: str, name: str) -> bool:
        """The write was refused or lost: True when events were held back meanwhile (run the pass again)."""
        return bool(self._in_flight.pop((kind, namespace, name), []))

    def deleted(self, kind: str, namespace: str, name: str) -> None:
        """An object this operator deleted, or whose deletion the watch reported: forget our copy of it."""
        written = self._written.pop((kind, namespace, name), None)
        owner = owner_of(written.body) if written is not None else None
        if owner is not None:
            self._written_by_owner.get(owner[2], set()).discard((kind, namespace, name))

    def is_echo(self, body: Mapping[str, Any]) -> bool:
        """True when a watch event needs no pass: it reports this operator's own write (or is held back until
        the write in flight says whether it does). The copy we kept is dropped once the watch caught up."""
        meta = body.get("metadata") or {}
        key = (str(body.get("kind")), str(meta.get("namespace", "")), str(meta.get("name")))
        held = self._in_flight.get(key)
        if held is not None:
            held.append(str(meta.get("resourceVersion")))
            return True
        written = self._written.get(key)
        if written is None:
            return False
        version = written.body["metadata"].get("resourceVersion")
        if _version(body) >= _version(written.body):
            self.deleted(*key)
        return version is not None and version == meta.get("resourceVersion")

    def _fresh(self, key: tuple[str, str, str]) -> dict[str, Any] | None:
        written = self._written.get(key)
        if written is None:
            return None
        if self.clock() - written.at > WRITTEN_TTL:
            self.deleted(*key)
            return None
        return written.body

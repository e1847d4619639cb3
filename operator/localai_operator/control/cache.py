"""What the operator knows of the cluster, with no API read: Kopf's indexes, fed by its watches, plus the
objects this operator wrote a moment ago and the watch has not delivered yet.

Kopf calls the index functions (handlers.py) with every watched object before any other handler runs, so a pass
never starts on half-listed caches. What each index holds is defined here, next to the lookups that read it.
"""

from __future__ import annotations

import time
import zlib
from collections.abc import Collection, Mapping
from dataclasses import dataclass, field
from typing import Any

import pydantic_core

from localai_operator.api.kinds import Kind
from localai_operator.api.quantity import Quantity
from localai_operator.api.route import RouteCost
from localai_operator.constants import GPU_RESOURCE, GROUP, LABEL_COMPONENT, LABEL_INSTANCE
from localai_operator.control.autoscale import ScaleState
from localai_operator.control.plan import Body, primary_pool
from localai_operator.render.pool import COMPONENT as POOL_COMPONENT
from localai_operator.wire import Carried

# Index names: the ids of the @kopf.index handlers, and the kwargs Kopf passes them to handlers under. One index
# per watched kind (Kopf's cost is per index function and event); a custom kind's index also holds its references,
# under keys tagged with what they are.
MODELS = "models"  # ("model", namespace, name) -> the LLMModel
POOLS = "pools"  # ("pool", ns, name) -> the InferencePool; ("model", ns, name) -> pools naming it
ROUTES = "routes"  # ("route", ns, name) -> the FallbackRoute; ("pool", ns, name) -> routes naming it
OWNED = "owned"  # (namespace, owner uid) -> the objects it controls there (every owned kind)
UNSCHEDULABLE = "unschedulable_pods"  # (namespace, pool) -> the scheduler's message, per Pending pod
GPU_NODES = "gpu_nodes"  # a schedulable GPU node's labels -> its allocatable GPUs
ROUTER_ENDPOINTS = "router_endpoints"  # (namespace, route) -> (Endpoint, ...) of its router Service's slices
HPAS = "hpas"  # (namespace, pool) -> the name of a HorizontalPodAutoscaler targeting the pool
GATEWAY_API = "gateway_api"  # the HTTPRoute CRD's name -> whether the API server serves it (Established)
INDEXES = (
    MODELS,
    POOLS,
    ROUTES,
    OWNED,
    UNSCHEDULABLE,
    GPU_NODES,
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
MAX_SLICE_ENDPOINTS = 256


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


# Objects larger than this as JSON (a pool's ConfigMap of model configs, its Deployment) are kept compressed: a
# third of their size, for ~30 us per event and ~20 us per read.
COMPRESS_ABOVE = 2048


@dataclass(frozen=True, slots=True)
class Packed:
    """A watched object as compact JSON (compressed when large), with what is looked at without reading it: a fifth
    of the memory of its dicts or less (10,000 models and 1,000 pools' objects are most of what the operator holds).
    A pass unpacks what it reads."""

    kind: str
    name: str
    uid: str
    resource_version: str
    deleting: bool
    raw: bytes  # JSON (starts with "{"), or zlib's stream of it (starts with "x")

    def body(self) -> dict[str, Any]:
        raw = zlib.decompress(self.raw) if self.raw[:1] == b"x" else self.raw
        unpacked: dict[str, Any] = pydantic_core.from_json(raw)
        return unpacked


def pack(body: Mapping[str, Any]) -> Packed:
    slimmed = slim(body)
    meta = slimmed["metadata"]
    raw = pydantic_core.to_json(slimmed)
    return Packed(
        str(slimmed.get("kind", "")),
        str(meta.get("name", "")),
        str(meta.get("uid", "")),
        str(meta.get("resourceVersion", "")),
        bool(meta.get("deletionTimestamp")),
        zlib.compress(raw, 1) if len(raw) > COMPRESS_ABOVE else raw,
    )


def model_entries(namespace: str, name: str, body: Mapping[str, Any]) -> dict[Any, Any]:
    return {("model", namespace, name): pack(body)}


def pool_entries(namespace: str, name: str, body: Mapping[str, Any]) -> dict[Any, Any]:
    entries: dict[Any, Any] = {("pool", namespace, name): pack(body)}
    entries.update({("model", namespace, str(m)): name for m in (body.get("spec") or {}).get("models") or []})
    return entries


def route_entries(namespace: str, name: str, body: Mapping[str, Any]) -> dict[Any, Any]:
    entries: dict[Any, Any] = {("route", namespace, name): pack(body)}
    pool = primary_pool(body)
    if pool:
        entries[("pool", namespace, pool)] = name
    return entries


def owner_of(body: Mapping[str, Any]) -> tuple[str, str, str] | None:
    """(kind, name, uid) of the custom resource of ours that `body`'s controller reference names, if any. Anyone
    allowed to create an object can write any reference into it: what it claims is checked against the owner
    (owned_key) before anything is done with it."""
    for ref in (body.get("metadata") or {}).get("ownerReferences") or []:
        if (
            ref.get("controller")
            and str(ref.get("apiVersion", "")).startswith(f"{GROUP}/")
            and ref.get("kind") in INDEX_OF
        ):
            return str(ref["kind"]), str(ref.get("name", "")), str(ref.get("uid", ""))
    return None


def owned_key(body: Mapping[str, Any]) -> tuple[str, str] | None:
    """(namespace, owner uid) under which `body` counts as owned: an owner controls only objects of its own
    namespace (the garbage collector ignores a reference across namespaces, and so does this index), so an object
    in another namespace that names a pool's uid is no object of that pool."""
    owner = owner_of(body)
    namespace = (body.get("metadata") or {}).get("namespace")
    return (str(namespace), owner[2]) if owner is not None and namespace else None


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
        return max(0, Quantity.parse(value).value())
    except ValueError:
        return 0


@dataclass(frozen=True, order=True)
class Endpoint:
    """A ready address of a router Service's EndpointSlice and the pod it names: a claim, until checked
    (control/scrape.py)."""

    pod: str
    uid: str
    address: str


def router_endpoints(slice_: Mapping[str, Any]) -> tuple[Endpoint, ...]:
    """The ready endpoints of a router Service's EndpointSlice that name a pod (at most a few hundred: a slice
    holds at most 1,000 endpoints, and a route few router pods)."""
    out = []
    for endpoint in (slice_.get("endpoints") or [])[:MAX_SLICE_ENDPOINTS]:
        target = endpoint.get("targetRef") or {}
        if (endpoint.get("conditions") or {}).get("ready") is False or not endpoint.get("addresses"):
            continue
        if target.get("kind") == "Pod" and target.get("name"):
            out.append(
                Endpoint(str(target["name"]), str(target.get("uid") or ""), str(endpoint["addresses"][0]))
            )
    return tuple(sorted(out))


def hpa_target_pool(hpa: Mapping[str, Any]) -> str | None:
    """The InferencePool an HPA scales through its scale subresource, if it targets one."""
    target = (hpa.get("spec") or {}).get("scaleTargetRef") or {}
    group = str(target.get("apiVersion", "")).partition("/")[0]
    name = target.get("name")
    return str(name) if target.get("kind") == "InferencePool" and group == GROUP and name else None


def serves(crd: Mapping[str, Any], version: str) -> bool:
    """Whether a CustomResourceDefinition is Established, not being deleted, and serves `version`.

    A CRD being deleted stays Established until its objects are gone, and the API server refuses to create them
    then, but only by POST: a server-side apply (PATCH) still creates one. An operator that kept applying its
    HTTPRoute while the Gateway API was being removed would hold the CRD's deletion (the API server's clean-up
    deletes what it finds, waits a minute, and starts again) for as long as it kept re-making it."""
    if (crd.get("metadata") or {}).get("deletionTimestamp"):
        return False
    conditions = (crd.get("status") or {}).get("conditions") or []
    if any(c.get("type") == "Terminating" and c.get("status") == "True" for c in conditions):
        return False
    established = any(c.get("type") == "Established" and c.get("status") == "True" for c in conditions)
    versions = (crd.get("spec") or {}).get("versions") or []
    return established and any(v.get("name") == version and v.get("served") for v in versions)


def _version(body: Mapping[str, Any]) -> int:
    return _number((body.get("metadata") or {}).get("resourceVersion"))


def _number(version: Any) -> int:
    # resourceVersion is opaque to clients, but every etcd-backed API server issues increasing integers; an
    # unparsable one counts as oldest, so the watch's copy is preferred.
    try:
        return int(version or 0)
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
    _written_by_owner: dict[tuple[str, str], set[tuple[str, str, str]]] = field(default_factory=dict)
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
        seen: Packed = values[-1]
        written = self._fresh((kind.kind, namespace, name))
        same_object = written is not None and written["metadata"].get("uid") == seen.uid
        if written is not None and same_object and _version(written) > _number(seen.resource_version):
            return written
        return seen.body()

    def identity(self, kind: Kind, namespace: str, name: str) -> tuple[str, str, bool] | None:
        """(uid, resourceVersion, being deleted) of what get() would return, without unpacking it."""
        index, tag = INDEX_OF[kind.kind]
        values = list(self._values(index, (tag, namespace, name)))
        if not values:
            return None
        seen: Packed = values[-1]
        written = self._fresh((kind.kind, namespace, name))
        if (
            written is not None
            and written["metadata"].get("uid") == seen.uid
            and _version(written) > _number(seen.resource_version)
        ):
            meta = written["metadata"]
            return str(meta.get("uid")), str(meta.get("resourceVersion")), bool(meta.get("deletionTimestamp"))
        return seen.uid, seen.resource_version, seen.deleting

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
            and any(((p.body().get("spec") or {}).get("accelerator") or {}).get("gpus") for p in index[key])
        ]

    def served_by(self, namespace: str, model: str) -> tuple[str, ...]:
        return tuple(sorted(set(self._values(POOLS, ("model", namespace, model)))))

    def routes_using_pool(self, namespace: str, pool: str) -> list[str]:
        return sorted(set(self._values(ROUTES, ("pool", namespace, pool))))

    def owner(self, body: Mapping[str, Any]) -> tuple[str, str] | None:
        """(kind, name) of the custom resource that controls `body`, if that resource exists in `body`'s namespace
        with the uid the reference names: only then is `body` its object, and a change to it its concern."""
        owner, key = owner_of(body), owned_key(body)
        if owner is None or key is None:
            return None
        index, tag = INDEX_OF[owner[0]]
        found = any(cr.uid == key[1] for cr in self._values(index, (tag, key[0], owner[1])))
        return (owner[0], owner[1]) if found else None

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

    def owned(self, namespace: str, owner_uid: str) -> dict[tuple[str, str], Body]:
        """(kind, name) -> each object of `namespace` that the resource `owner_uid` controls, the newer of the
        watch's copy and our last write."""
        out: dict[tuple[str, str], Body] = {}
        for packed in self._values(OWNED, (namespace, owner_uid)):
            out[(packed.kind, packed.name)] = packed.body()
        for key in list(self._written_by_owner.get((namespace, owner_uid), ())):
            written = self._fresh(key)
            if written is None:
                continue
            seen = out.get((key[0], key[2]))
            if seen is None or _version(written) > _version(seen):
                out[(key[0], key[2])] = written
        return out

    def owned_versions(self, namespace: str, owner_uid: str) -> dict[tuple[str, str], tuple[str, str]]:
        """(kind, name) -> (uid, resourceVersion) of what owned() would return, without unpacking it."""
        out = {
            (p.kind, p.name): (p.uid, p.resource_version) for p in self._values(OWNED, (namespace, owner_uid))
        }
        for key in list(self._written_by_owner.get((namespace, owner_uid), ())):
            written = self._fresh(key)
            if written is None:
                continue
            seen = out.get((key[0], key[2]))
            if seen is None or _version(written) > _number(seen[1]):
                meta = written["metadata"]
                out[(key[0], key[2])] = (meta.get("uid"), meta.get("resourceVersion"))
        return out

    def unschedulable(self, namespace: str, pool: str) -> str | None:
        return next(iter(sorted(self._values(UNSCHEDULABLE, (namespace, pool)))), None)

    def gpu_nodes(self) -> list[tuple[Mapping[str, str], int]]:
        index = self.indexes.get(GPU_NODES, {})
        return [(dict(labels), max(index[labels])) for labels in index if index[labels]]

    def router_endpoints(self, namespace: str, route: str) -> list[Endpoint]:
        """The ready endpoints the route's router Service's slices list (any pod carrying its labels)."""
        return sorted(
            {e for endpoints in self._values(ROUTER_ENDPOINTS, (namespace, route)) for e in endpoints}
        )

    def hpa_for(self, namespace: str, pool: str) -> str | None:
        return next(iter(sorted(self._values(HPAS, (namespace, pool)))), None)

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
        owned = owned_key(body)
        if owned is not None:
            self._written_by_owner.setdefault(owned, set()).add(key)
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
        owned = owned_key(written.body) if written is not None else None
        if owned is not None:
            self._written_by_owner.get(owned, set()).discard((kind, namespace, name))

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

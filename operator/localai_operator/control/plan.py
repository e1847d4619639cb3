"""Pure: what the caches observed for one custom resource -> the objects it should own, and the facts its status
is made of. No I/O and no clock; the pass (reconcile.py) gathers the inputs and applies the result.

`objects` is None when nothing may be applied or pruned yet (a model or Secret is missing: never a half-applied
pool or a router without its key), and an empty tuple when the resource must own nothing (a name conflict).
"""

from __future__ import annotations

import dataclasses
import zlib
from collections.abc import Callable, Hashable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

import pydantic_core
from pydantic import ValidationError

from localai_operator.api import FallbackRoute, InferencePool, LLMModel
from localai_operator.api.base import SecretKeyRef, validation_problems
from localai_operator.api.kinds import HTTP_ROUTE
from localai_operator.api.llmmodel import GGUFStatus
from localai_operator.api.route import RouteCost
from localai_operator.constants import ANNOTATION_APPLIED, GPU_PRODUCT_LABEL
from localai_operator.control import status as st
from localai_operator.control.autoscale import ScaleState
from localai_operator.control.gpufit import Header, decide
from localai_operator.render import RenderSettings, pool_objects, route_objects
from localai_operator.render.common import content_hash
from localai_operator.render.pool import endpoint as pool_endpoint
from localai_operator.render.pool import file_conflicts
from localai_operator.render.route import endpoint as route_endpoint
from localai_operator.render.route import primary_url, router_name
from localai_operator.wire import Carried

Body = Mapping[str, Any]
Owned = Mapping[tuple[str, str], Body]  # (kind, name) -> the live object
F = TypeVar("F")


@dataclass(frozen=True)
class Plan(Generic[F]):
    objects: tuple[dict[str, Any], ...] | None
    facts: F


@dataclass(frozen=True)
class SecretInfo:
    """What the operator keeps of a Secret: never its values."""

    resource_version: str
    keys: frozenset[str]


@dataclass(frozen=True)
class PoolObserved:
    body: Body
    models: Mapping[str, Body | None]  # every model the pool names: its body, or None when absent
    owned: Owned
    unschedulable: str | None
    gpu_nodes: Sequence[tuple[Mapping[str, str], int]]  # (labels, allocatable GPUs) of schedulable GPU nodes
    secrets: Mapping[str, SecretInfo | None] = dataclasses.field(
        default_factory=dict
    )  # pool_secret_names(body)
    scale: ScaleState | None = None  # the autoscaler's last decision (spec.autoscaling)
    # Per model of a GPU pool, its GGUF header (None while it is read); empty when the operator reads none.
    headers: Mapping[str, Header | None] | None = None


@dataclass(frozen=True)
class RouteObserved:
    body: Body
    pools: Mapping[str, Body | None]  # the pools named in route_pool_names(body)
    secrets: Mapping[str, SecretInfo | None]  # route_secret_names(body), and pool_secret_names of its primary
    owned: Owned
    models: Mapping[str, Body | None] = dataclasses.field(default_factory=dict)  # the primary pool's
    cost: RouteCost | None = None  # read from its routers by the elastic loop
    carried: Carried | None = None  # what its router pods that went spent in the spend cap's period
    gateway_api: bool = False  # the cluster serves HTTPRoute (spec.gateway renders one)


@dataclass(frozen=True)
class ModelObserved:
    body: Body
    served_by: tuple[str, ...]
    reads_headers: bool = False  # the operator reads GGUF headers (then `header`: None while it is read)
    header: Header | None = None


def _version(body: Body | None) -> tuple[Any, Any] | None:
    if body is None:
        return None
    meta = body.get("metadata") or {}
    return meta.get("uid"), meta.get("resourceVersion")


def model_fingerprint(version: tuple[Any, Any] | None, served_by: tuple[str, ...]) -> Hashable:
    """A model's fingerprint from its (uid, resourceVersion) and the pools serving it: all a model pass reads,
    so a resync can tell an unchanged model without unpacking its body. (Its GGUF header too: whoever learns a
    new one forgets the model's last inputs, Controller.header_known.)"""
    return (version, served_by)


def fingerprint(observed: PoolObserved | RouteObserved | ModelObserved) -> Hashable:
    """What a pass depends on, by identity: every input object's resourceVersion and the facts derived from the
    caches. Equal fingerprints make equal plans and statuses, so a pass over unchanged inputs (most of a resync)
    has nothing to do and can stop here."""
    if isinstance(observed, ModelObserved):
        return model_fingerprint(_version(observed.body), observed.served_by)
    owned = tuple(sorted((key, _version(body)) for key, body in observed.owned.items()))
    secrets = tuple(sorted(observed.secrets.items()))
    if isinstance(observed, RouteObserved):
        pools = tuple(sorted((name, _version(body)) for name, body in observed.pools.items()))
        models = tuple(sorted((name, _version(body)) for name, body in observed.models.items()))
        return (
            _version(observed.body),
            pools,
            secrets,
            owned,
            models,
            observed.cost,
            observed.carried,
            observed.gateway_api,
        )
    nodes = tuple(sorted((tuple(sorted(labels.items())), gpus) for labels, gpus in observed.gpu_nodes))
    headers = tuple((n, _header_version(h)) for n, h in (observed.headers or {}).items())
    return pool_fingerprint(
        _version(observed.body),
        [(name, _version(body)) for name, body in observed.models.items()],
        owned,
        observed.unschedulable,
        observed.scale,
        nodes=nodes,
        secrets=secrets,
        headers=headers,
    )


Version = tuple[Any, Any] | None  # (uid, resourceVersion) of an object; None when absent


def pool_fingerprint(
    version: Version,
    models: Sequence[tuple[str, Version]],
    owned: Iterable[tuple[tuple[str, str], Version]],
    unschedulable: str | None,
    scale: ScaleState | None,
    *,
    nodes: Hashable = (),
    secrets: Hashable = (),
    headers: Hashable = (),
) -> Hashable:
    """A pool's fingerprint from the versions of what it reads: the pool, its models in spec order, the objects it
    owns, and the facts from the caches (GPU nodes, Secrets and headers are empty for a CPU pool without a key), so
    a resync can tell an unchanged pool from the caches' versions alone."""
    return (version, tuple(models), tuple(sorted(owned)), unschedulable, nodes, secrets, scale, headers)


def _header_version(header: Header | None) -> tuple[str, int] | None:
    return (header.state, header.serial) if header is not None else None


def dependencies(observed: PoolObserved | RouteObserved | ModelObserved) -> Hashable:
    """What the user can change that a pass depends on: the specs (generations, not status writes) of the
    resource and of those it uses, and the Secrets it reads. A change resets the backoff of a refusal."""
    if isinstance(observed, ModelObserved):
        return _identity(observed.body)
    secrets = tuple(sorted(observed.secrets.items()))
    if isinstance(observed, RouteObserved):
        pools = tuple(sorted((name, _identity(body or {})) for name, body in observed.pools.items()))
        models = tuple(sorted((name, _identity(body or {})) for name, body in observed.models.items()))
        return (_identity(observed.body), pools, secrets, models)
    models = tuple((name, _identity(body or {})) for name, body in observed.models.items())
    nodes = tuple(sorted((tuple(sorted(labels.items())), gpus) for labels, gpus in observed.gpu_nodes))
    headers = tuple((n, _header_version(h)) for n, h in (observed.headers or {}).items())
    return (_identity(observed.body), models, secrets, nodes, observed.scale, headers)


def conflict_message(
    owner_kind: str,
    owner_name: str,
    namespace: str,
    kind: str,
    name: str,
    held_by: tuple[str, str, str] | None,
) -> str:
    """Why a rendered name is not applied: `held_by` is the (kind, name, uid) of the resource of ours whose
    object holds it, None when the operator did not create it."""
    holder = f'it belongs to {held_by[0]} "{held_by[1]}"' if held_by else "the operator did not create it"
    return (
        f'{kind} "{name}" already exists in namespace "{namespace}" and {holder}, so it is left untouched: '
        f'rename {owner_kind} "{owner_name}" or delete that {kind}.'
    )


class Renders:
    """The objects last rendered for each owner, reused while the inputs' uids and generations are unchanged.

    Rendering a pool of ten models costs ~2 ms (YAML and hashing); a pass triggered by a Deployment's status or
    a resync then costs a lookup and reading compact JSON back, kept compressed (a pool's objects take ~2.5 KB
    instead of 14 KB of JSON or ~50 KB of dicts: 11 MB less at 1,000 pools, for ~30 us more per pass). Entries
    are replaced, never accumulated: one per owner.
    """

    def __init__(self) -> None:
        self._last: dict[str, tuple[Hashable, bytes]] = {}

    def get(
        self, owner_uid: str, inputs: Hashable, render: Callable[[], list[dict[str, Any]]]
    ) -> tuple[dict[str, Any], ...]:
        cached = self._last.get(owner_uid)
        if cached is not None and cached[0] == inputs:
            unpacked: list[dict[str, Any]] = pydantic_core.from_json(zlib.decompress(cached[1]))
            return tuple(unpacked)
        objects = tuple(with_applied_hash(obj) for obj in render())
        self._last[owner_uid] = (inputs, zlib.compress(pydantic_core.to_json(objects)))
        return objects

    def forget(self, owner_uid: str) -> None:
        self._last.pop(owner_uid, None)


def with_applied_hash(obj: dict[str, Any]) -> dict[str, Any]:
    """`obj` annotated with the hash of itself: a field removed from the desired state changes the hash, which
    comparing the live object's fields alone cannot see."""
    meta = obj["metadata"]
    annotations = {**meta.get("annotations", {}), ANNOTATION_APPLIED: content_hash(obj)}
    return {**obj, "metadata": {**meta, "annotations": annotations}}


def _identity(body: Body) -> tuple[str | None, Any]:
    meta = body.get("metadata") or {}
    # Status writes do not bump the generation of a resource with a status subresource; spec edits do.
    return meta.get("uid"), meta.get("generation") or meta.get("resourceVersion")


# --- InferencePool ------------------------------------------------------------------------------------------------

PoolCheck = Callable[[InferencePool, Mapping[str, LLMModel]], "st.Check | None"]


def distinct_files(pool: InferencePool, models: Mapping[str, LLMModel]) -> st.Check | None:
    """Two models of the pool downloading different files of one name would overwrite each other."""
    conflict = file_conflicts([models[name] for name in pool.spec.models])
    return st.invalid(conflict) if conflict else None


# Pure checks of a pool and its resolved models that the schema cannot express. A failing Check is shown as its
# own condition (one of type SpecValid replaces the default one) and stops the apply; None means "no finding".
POOL_CHECKS: tuple[PoolCheck, ...] = (distinct_files,)


def pool_secret_names(body: Body) -> set[str]:
    """The Secrets a pool's pods read: its own API key (spec.apiKeySecretRef, NOTES 2)."""
    name = ((body.get("spec") or {}).get("apiKeySecretRef") or {}).get("name")
    return {str(name)} if name else set()


def pool_render_arguments(pool: InferencePool, secrets: Mapping[str, SecretInfo | None]) -> dict[str, Any]:
    """The keyword arguments of render.pool_objects beyond the pool and its models. The version of the pool's
    API key Secret (`api_key_version`, so that a rotated key rolls the pool: LocalAI reads it only at start)
    joins here, looked up in `secrets` by pool_secret_names."""
    ref = pool.spec.api_key_secret_ref
    found = secrets.get(ref.name) if ref is not None else None
    return {"api_key_version": found.resource_version if found is not None else None}


def pool_key_check(pool: InferencePool, secrets: Mapping[str, SecretInfo | None]) -> st.Check | None:
    """The pool's API key Secret, if it names one, must be there with its key: else its pods never start
    (CreateContainerConfigError) and nothing in the pool's status would say why."""
    ref = pool.spec.api_key_secret_ref
    if ref is None:
        return None
    found = secrets.get(ref.name)
    if found is None:
        message = (
            f'Secret "{ref.name}" (spec.apiKeySecretRef) not found in namespace "{pool.namespace}": create it '
            f'with the LocalAI API key under key "{ref.key}".'
        )
    elif ref.key not in found.keys:
        message = f'Secret "{ref.name}" (spec.apiKeySecretRef) has no key "{ref.key}".'
    else:
        return None
    return st.Check("APIKeyResolved", False, "SecretMissing", message)


def largest_gpu_node(gpu_nodes: Sequence[tuple[Mapping[str, str], int]], selector: Mapping[str, str]) -> int:
    """The most GPUs one schedulable node matching `selector` offers (0: none matches)."""
    return max(
        (gpus for labels, gpus in gpu_nodes if all(labels.get(k) == v for k, v in selector.items())),
        default=0,
    )


def desired_replicas(pool: InferencePool, observed: PoolObserved) -> int:
    """The Deployment's replicas: spec.replicas, or with spec.autoscaling the autoscaler's decision (until its
    first one, the Deployment's current size within the bounds; a new pool starts at minReplicas). A user's HPA
    on the pool makes the decision spec.replicas again."""
    auto = pool.spec.autoscaling
    if auto is None:
        return pool.spec.replicas
    if observed.scale is not None:
        return observed.scale.desired
    live = ((observed.owned.get(("Deployment", pool.name)) or {}).get("spec") or {}).get("replicas")
    start = auto.min_replicas if live is None else int(live)
    return min(max(start, auto.min_replicas), auto.max_replicas)


def plan_pool(observed: PoolObserved, settings: RenderSettings, renders: Renders) -> Plan[st.PoolFacts]:
    meta = observed.body.get("metadata") or {}
    base = st.PoolFacts(name=meta.get("name", ""), namespace=meta.get("namespace", ""))
    try:
        pool = InferencePool.parse(observed.body)
    except ValidationError as err:
        names = tuple((observed.body.get("spec") or {}).get("models") or ())
        return Plan(None, dataclasses.replace(base, models=names, invalid=validation_problems(err)))
    spec = pool.spec
    facts = dataclasses.replace(
        base, replicas=spec.replicas, gpus=spec.accelerator.gpus, models=tuple(spec.models)
    )
    models: dict[str, LLMModel] = {}
    missing: list[str] = []
    invalid: list[str] = []
    for name in spec.models:
        body = observed.models.get(name)
        if body is None:
            missing.append(name)
            continue
        try:
            models[name] = LLMModel.parse(body)
        except ValidationError:
            invalid.append(name)  # the model says why in its own status
    if missing or invalid:
        facts = dataclasses.replace(facts, missing_models=tuple(missing), invalid_models=tuple(invalid))
        return Plan(None, facts)
    findings = [check(pool, models) for check in POOL_CHECKS] + [pool_key_check(pool, observed.secrets)]
    checks = tuple(c for c in findings if c is not None)
    facts = dataclasses.replace(facts, spec_checks=checks)
    if any(c.ok is False for c in checks):
        return Plan(None, facts)
    decision = (
        decide(pool, models, observed.headers, observed.gpu_nodes) if observed.headers is not None else None
    )
    if decision is not None and decision.check is not None:
        facts = dataclasses.replace(facts, gpu_memory=decision.check, held=decision.hold)
        if decision.hold:
            # Nothing is applied: the Deployment and its ConfigMap stay as they are, the old replicas serving.
            deployment = observed.owned.get(("Deployment", pool.name))
            return Plan(None, dataclasses.replace(facts, deployment=deployment))
    for name, layers in (decision.gpu_layers if decision is not None else {}).items():
        model = models[name]
        models[name] = model.model_copy(update={"spec": model.spec.model_copy(update={"gpu_layers": layers})})
    arguments = pool_render_arguments(pool, observed.secrets)
    desired = desired_replicas(pool, observed)
    facts = dataclasses.replace(
        facts, replicas=desired, autoscaled=spec.autoscaling is not None, scale=observed.scale
    )
    # The autoscaler sizes the Deployment; the user's spec (replicas included) is never written.
    sized = (
        pool
        if desired == spec.replicas
        else pool.model_copy(update={"spec": spec.model_copy(update={"replicas": desired})})
    )
    inputs = (
        _identity(observed.body),
        tuple(_identity(observed.models[n] or {}) for n in spec.models),
        tuple(sorted(arguments.items())),
        desired,
        tuple(sorted(decision.gpu_layers.items())) if decision is not None else (),
    )
    try:
        objects = renders.get(
            pool.metadata.uid or "", inputs, lambda: pool_objects(sized, models, settings, **arguments)
        )
    except ValueError as err:  # a value the schema let through but the renderer cannot use
        return Plan(None, dataclasses.replace(facts, invalid=f"spec: {err}"))
    largest = None
    if spec.accelerator.gpus:
        selector = dict(spec.node_selector)
        if spec.accelerator.product:
            selector[GPU_PRODUCT_LABEL] = spec.accelerator.product
        largest = largest_gpu_node(observed.gpu_nodes, selector)
    facts = dataclasses.replace(
        facts,
        deployment=observed.owned.get(("Deployment", pool.name)),
        unschedulable=observed.unschedulable,
        largest_node_gpus=largest,
        endpoint=pool_endpoint(pool),
    )
    return Plan(objects, facts)


# --- FallbackRoute ------------------------------------------------------------------------------------------------


def primary_pool(body: Body) -> str | None:
    """The pool a route's primary names, if it names one."""
    name = (((body.get("spec") or {}).get("primary") or {}).get("poolRef") or {}).get("name")
    return str(name) if name else None


def route_pool_names(body: Body) -> set[str]:
    """The pools a route's pass needs to see: its primary, and any whose objects' names its own would take."""
    name = str((body.get("metadata") or {}).get("name", ""))
    names = {name, f"{name}-router"}  # pool "x" owns Service and Deployment "x"
    if name.endswith("-pods"):
        names.add(name.removesuffix("-pods"))  # pool "x" owns the headless Service "x-pods"
    pool_ref = primary_pool(body)
    if pool_ref:
        names.add(pool_ref)
    return names


def routes_clashing_with(pool: str) -> set[str]:
    """Names a route would need to take an object name of the pool `pool` (the inverse of name_conflict)."""
    names = {pool, f"{pool}-pods"}
    if pool.endswith("-router"):
        names.add(pool.removesuffix("-router"))
    return names


def route_secret_names(body: Body) -> set[str]:
    """The Secrets a route's router reads: the fallback key and the client keys (spec.auth.clientKeySecrets)."""
    spec = body.get("spec") or {}
    names = {((spec.get("fallback") or {}).get("apiKeySecretRef") or {}).get("name")}
    names |= {ref.get("name") for ref in (spec.get("auth") or {}).get("clientKeySecrets") or []}
    return {str(n) for n in names if n}


def name_conflict(route: FallbackRoute, pools: Mapping[str, Body | None]) -> str | None:
    """Why the route may not take its object names, if a pool already owns one of them."""
    clashes = {
        route.name: f'the Service "{route.name}"',
        f"{route.name}-router": f'the Deployment "{router_name(route)}"',
    }
    if route.name.endswith("-pods"):
        clashes[route.name.removesuffix("-pods")] = f'the headless Service "{route.name}"'
    for pool, what in clashes.items():
        if pools.get(pool) is not None:
            return (
                f'InferencePool "{pool}" in this namespace already owns {what}: give the route another name.'
            )
    return None


def route_render_arguments(
    route: FallbackRoute, pools: Mapping[str, Body | None], secrets: Mapping[str, SecretInfo | None]
) -> dict[str, Any]:
    """The keyword arguments of render.route_objects beyond the route: the versions of the Secrets its router
    reads (a rotated key rolls the router; the key itself never leaves the Secret). The primary pool's API key
    (InferencePool.spec.apiKeySecretRef, NOTES 2) joins here as `local_key_ref` and `local_key_version`, the
    latter looked up in `secrets`, which holds pool_secret_names of the primary pool too."""
    fallback = route.spec.fallback
    secret_version = None
    if route.fallback_active and fallback is not None:
        found = secrets.get(fallback.api_key_secret_ref.name)
        secret_version = found.resource_version if found is not None else None
    arguments: dict[str, Any] = {"secret_version": secret_version}
    pool = pools.get(pool_ref.name) if (pool_ref := route.spec.primary.pool_ref) is not None else None
    key = ((pool or {}).get("spec") or {}).get("apiKeySecretRef") or {}
    found = secrets.get(str(key.get("name"))) if key.get("name") and key.get("key") else None
    # Only a key that exists: a missing one would hold the router pod, fallback included, in
    # CreateContainerConfigError, while the pool's own status already names the missing Secret.
    if found is not None and key["key"] in found.keys:
        arguments["local_key_ref"] = SecretKeyRef(name=key["name"], key=key["key"])
        arguments["local_key_version"] = found.resource_version
    return arguments


def _client_keys_problem(route: FallbackRoute, secrets: Mapping[str, SecretInfo | None]) -> str | None:
    # Client keys are mounted as volumes: a missing one would hold the router pod in ContainerCreating.
    auth = route.spec.auth
    for ref in auth.client_key_secrets if auth is not None else ():
        if secrets.get(ref.name) is None:
            return (
                f'Secret "{ref.name}" (spec.auth.clientKeySecrets) not found in namespace "{route.namespace}": '
                "create it or remove it from the list."
            )
    return None


def _secret_problem(route: FallbackRoute, secrets: Mapping[str, SecretInfo | None]) -> str | None:
    fallback = route.spec.fallback
    if not route.fallback_active or fallback is None:
        return None
    ref = fallback.api_key_secret_ref
    found = secrets.get(ref.name)
    if found is None:
        return (
            f'Secret "{ref.name}" not found in namespace "{route.namespace}": create it with the provider API '
            f'key under key "{ref.key}".'
        )
    if ref.key not in found.keys:
        return f'Secret "{ref.name}" has no key "{ref.key}".'
    return None


def plan_route(observed: RouteObserved, settings: RenderSettings, renders: Renders) -> Plan[st.RouteFacts]:
    meta = observed.body.get("metadata") or {}
    base = st.RouteFacts(name=meta.get("name", ""), namespace=meta.get("namespace", ""))
    try:
        route = FallbackRoute.parse(observed.body)
    except ValidationError as err:
        return Plan(None, dataclasses.replace(base, invalid=validation_problems(err)))
    facts = dataclasses.replace(
        base,
        primary=primary_url(route),
        sensitive=route.spec.policy.sensitive,
        fallback=route.fallback_active,
        open_to_cluster=route.open_to_cluster,
        replicas=route.spec.replicas,
        endpoint=route_endpoint(route),
    )
    conflict = name_conflict(route, observed.pools)
    if conflict:
        # Own nothing: the pool's apply would otherwise meet this route's objects under its names.
        return Plan((), dataclasses.replace(facts, name_conflict=conflict))
    pool_ref = route.spec.primary.pool_ref
    if pool_ref is not None and observed.pools.get(pool_ref.name) is None:
        facts = dataclasses.replace(facts, missing_pool=pool_ref.name)  # the router is deployed all the same
    keys_problem = _client_keys_problem(route, observed.secrets)
    problem = _secret_problem(route, observed.secrets)
    if problem or keys_problem:
        # Without its keys the router pod could not start: apply nothing rather than a half-working route.
        return Plan(
            None, dataclasses.replace(facts, secret_problem=problem, client_keys_problem=keys_problem)
        )
    arguments = route_render_arguments(route, observed.pools, observed.secrets)
    arguments["gateway_api"] = observed.gateway_api and route.spec.gateway is not None
    pool, models = _primary_and_models(route, observed)
    inputs = (
        _identity(observed.body),
        tuple(sorted(arguments.items())),
        _identity(observed.pools.get(pool.name) or {}) if pool is not None else None,
        tuple(sorted((name, _identity(body or {})) for name, body in observed.models.items())),
        observed.carried,
    )
    objects = renders.get(
        route.metadata.uid or "",
        inputs,
        lambda: route_objects(
            route, settings, **arguments, pool=pool, models=models, carried=observed.carried
        ),
    )
    # Until the elastic loop has read the routers (after a restart), the stored figures stay.
    cost = observed.cost or (route.status.cost if route.status is not None else None)
    facts = dataclasses.replace(
        facts,
        deployment=observed.owned.get(("Deployment", router_name(route))),
        cost=cost,
        gateway=_gateway_facts(route, observed),
    )
    return Plan(objects, facts)


def _gateway_facts(route: FallbackRoute, observed: RouteObserved) -> st.GatewayFacts | None:
    """spec.gateway's HTTPRoute: whether one could be made, and the live one (its parents' status)."""
    if route.spec.gateway is None:
        return None
    live = observed.owned.get((HTTP_ROUTE.kind, route.name)) if observed.gateway_api else None
    return st.GatewayFacts(name=route.name, api_served=observed.gateway_api, live=live)


def _primary_and_models(
    route: FallbackRoute, observed: RouteObserved
) -> tuple[InferencePool | None, dict[str, LLMModel]]:
    """The primary pool and its models, for the slots the router fills before it spills (invalid ones left out:
    their own status says why, and the router then has no slot limit for them)."""
    ref = route.spec.primary.pool_ref
    body = observed.pools.get(ref.name) if ref is not None else None
    if body is None:
        return None, {}
    try:
        pool = InferencePool.parse(body)
    except ValidationError:
        return None, {}
    models: dict[str, LLMModel] = {}
    for name, model in observed.models.items():
        if model is None:
            continue
        try:
            models[name] = LLMModel.parse(model)
        except ValidationError:
            continue
    return pool, models


# --- LLMModel -----------------------------------------------------------------------------------------------------


def plan_model(observed: ModelObserved) -> Plan[st.ModelFacts]:
    """A model owns nothing; its status names the pools serving it (from the pools' index, never a read) and what
    its GGUF header says."""
    try:
        model = LLMModel.parse(observed.body)
    except ValidationError as err:
        return Plan(None, st.ModelFacts(invalid=validation_problems(err), served_by=observed.served_by))
    facts = st.ModelFacts(served_by=observed.served_by, file=model.spec.source.file_name())
    if not observed.reads_headers:
        return Plan(None, facts)
    header = observed.header
    return Plan(
        None,
        dataclasses.replace(
            facts,
            header=header_check(header),
            gguf=header.gguf if header is not None else None,
            context_size=model.spec.context_size,
        ),
    )


HEADER = "GGUFHeader"


def header_check(header: Header | None) -> st.Check:
    """The model's GGUFHeader condition. Only a file that is no GGUF model makes the model not Ready: llama.cpp
    could not load it. One the operator cannot read (no route to it, a gated source) is said so and left to the
    download: the model stays usable, and its pools' GPU-memory fit is not checked."""
    if header is None:
        return st.Check(HEADER, None, "Reading", "Reading the model file's GGUF header.", advisory=True)
    if header.state == "NotGGUF":
        message = header.message or f"{header.problem}: llama.cpp cannot load it; fix spec.source."
        return st.Check(HEADER, False, "NotGGUF", message)
    if header.state == "Unreadable" or header.gguf is None:
        message = header.message or (
            f"The GGUF header was not read ({header.problem or 'the source needs a token'}): status.gguf stays "
            "empty and the GPU-memory fit of the pools serving the model is not checked."
        )
        return st.Check(HEADER, None, "Unreadable", message, advisory=True)
    g = header.gguf
    message = (
        f"{g.architecture}, {g.parameter_count / 1e9:.2f} B parameters, {g.layers} layers, {g.quantization}, "
        f"trained context {g.trained_context} tokens, {g.file_size} bytes."
    )
    return st.Check(HEADER, True, "Read", message)


def stored_header(body: Body, *, read_only: bool = False) -> Header | None:
    """What the stored status says of the header, if a previous pass wrote it for the current spec
    (observedGeneration): status.gguf, or (unless `read_only`) that the file is no GGUF model or could not be read.
    What the model is known to be while its source is read again, or cannot be read now (after a restart, say):
    a restart then writes no status and holds no pool."""
    status = body.get("status") or {}
    if status.get("observedGeneration") != (body.get("metadata") or {}).get("generation"):
        return None
    stored = status.get("gguf")
    if stored:
        try:
            return Header("Read", 0, gguf=GGUFStatus.model_validate(stored), source="status.gguf")
        except ValidationError:
            return None
    if read_only:
        return None
    condition: Mapping[str, Any] = next(
        (c for c in status.get("conditions") or [] if c.get("type") == HEADER), {}
    )
    reason, message = condition.get("reason"), condition.get("message")
    if reason in ("NotGGUF", "Unreadable") and isinstance(message, str):
        return Header(reason, 0, message=message)
    return None

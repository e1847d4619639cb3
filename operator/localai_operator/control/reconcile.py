"""The pass: one per key and the same on every trigger (create, edit, an owned object's change, resync, restart).

Gather from the caches (no API read but the Secrets it names, by name), plan with pure functions, apply only what differs from the live objects,
prune what is no longer planned, write the status once. A failure a user can cause or meet ends in the status
(Ready=False, the API server's own words) and in the returned Failure, which makes the worker retry with a backoff
of seconds (transient) or minutes (only the user can change the outcome; at once when the inputs change). An
object that the resource did not create is never taken over: its name is a Conflict.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from pydantic import ValidationError

from localai_operator.api.base import Spec
from localai_operator.api.kinds import (
    CUSTOM_RESOURCE_DEFINITION,
    FALLBACK_ROUTE,
    HTTP_ROUTE,
    INFERENCE_POOL,
    LLM_MODEL,
    Kind,
    of,
)
from localai_operator.api.llmmodel import ModelSource
from localai_operator.control import plan as pl
from localai_operator.control import status as st
from localai_operator.control.cache import Cache, owned_key, owner_of, serves
from localai_operator.control.gpufit import Header
from localai_operator.control.headers import Headers, source_of
from localai_operator.control.kube import Api, ApiError, contains
from localai_operator.control.plan import SecretInfo
from localai_operator.control.queue import Key, WorkQueue
from localai_operator.control.secrets import RECHECK_SECONDS, Secrets
from localai_operator.render import RenderSettings

log = logging.getLogger(__name__)


def now() -> str:
    return datetime.now(UTC).replace(microsecond=0).isoformat().replace("+00:00", "Z")


@dataclass(frozen=True)
class Failure:
    """Why a pass has to run again. `slow`: only the user can change the outcome (an object refused as invalid,
    forbidden or over quota, a name held by an object that is not ours): retried after minutes, or at once when
    the inputs change. Else a transient failure (no answer, 5xx, 409, 429), retried after seconds. `held`: the
    pass was skipped, its inputs unchanged since a slow failure whose retry is still due."""

    reason: str
    slow: bool = False
    held: bool = False


HELD = Failure("waiting for the slow retry of a refusal", slow=True, held=True)


def user_must_fix(err: ApiError) -> bool:
    """A refusal that asking again cannot change: a bad request, an invalid object, one forbidden (RBAC, an
    admission webhook, a ResourceQuota) or in a namespace that is going."""
    return err.status in (400, 403, 404, 422)


@dataclass(frozen=True)
class Context:
    """What a pass needs: the client, the caches, the render memo, the operator's render settings, and the work
    queue (to run a pass again when someone else changed an object while we were writing it, and to know whether
    a key waits for a slow retry)."""

    api: Api
    cache: Cache
    renders: pl.Renders
    settings: RenderSettings
    queue: WorkQueue
    secrets: Secrets
    # The hash of each key's inputs (plan.fingerprint) at its last good pass, and of what it depended on
    # (plan.dependencies) when it was last refused (a slow failure).
    last_inputs: dict[Key, int] = dataclasses.field(default_factory=dict)
    refused_inputs: dict[Key, int] = dataclasses.field(default_factory=dict)
    clock: Callable[[], str] = now
    headers: Headers | None = None  # the models' GGUF headers; None: the operator reads none


async def reconcile(key: Key, ctx: Context) -> Failure | None:
    """Runs the pass of `key`; returns why it has to run again (None: done until something changes)."""
    kind = of(key.kind)
    if kind is LLM_MODEL and _model_unchanged(ctx, key):
        return None  # most of a resync: ten models to a pool, and nothing to unpack to know
    if kind is INFERENCE_POOL and _pool_unchanged(ctx, key):
        return None  # a resync, a pod's event: nothing but the pool's own small body to unpack to know
    body = ctx.cache.get(kind, key.namespace, key.name)
    if body is None or (body.get("metadata") or {}).get("deletionTimestamp"):
        ctx.last_inputs.pop(key, None)
        ctx.refused_inputs.pop(key, None)
        return None  # gone or going: the garbage collector removes what it owned
    secrets = await ctx.secrets.read(key.namespace, _secret_names(ctx.cache, kind, key, body))
    if any(found is None for found in secrets.values()):
        ctx.queue.add_after(key, RECHECK_SECONDS)  # no watch tells when it appears
    observed = _gather(ctx.cache, kind, key, body, secrets, ctx.headers)
    inputs = hash(pl.fingerprint(observed))
    if ctx.last_inputs.get(key) == inputs:
        return None  # the last pass saw exactly this and succeeded
    depends_on = hash(pl.dependencies(observed))
    if ctx.queue.held(key):
        if ctx.refused_inputs.get(key) == depends_on:
            return HELD  # an owned object's status moved, a resync: nothing the refusal depends on
        ctx.queue.release(key)  # the user changed something: try now, and start the backoff over
    if isinstance(observed, pl.PoolObserved):
        failure = await _pool(ctx, key, observed)
    elif isinstance(observed, pl.RouteObserved):
        failure = await _route(ctx, key, observed)
    else:
        wait = _header_wait(ctx, observed)
        if wait > 0:
            ctx.queue.add_after(key, wait)  # or sooner: the read's end queues the key
            return None
        failure, inputs = None, await _model(ctx, key, observed, inputs)  # a model pass never fails
    if failure is None:
        ctx.last_inputs[key] = inputs
        ctx.refused_inputs.pop(key, None)
    else:
        ctx.last_inputs.pop(key, None)
        if failure.slow:
            ctx.refused_inputs[key] = depends_on
    return failure


def _model_unchanged(ctx: Context, key: Key) -> bool:
    """Whether a model's last pass saw what the caches hold now (pl.fingerprint of a ModelObserved)."""
    identity = ctx.cache.identity(LLM_MODEL, key.namespace, key.name)
    if identity is None or identity[2]:
        return False
    seen = pl.model_fingerprint((identity[0], identity[1]), ctx.cache.served_by(key.namespace, key.name))
    return ctx.last_inputs.get(key) == hash(seen)


def _pool_unchanged(ctx: Context, key: Key) -> bool:
    """Whether a CPU pool without a key Secret saw at its last pass what the caches hold now (pl.fingerprint of
    its PoolObserved, from the versions of its models and objects alone); GPU pools and pools with a key always
    pass (their nodes, headers and Secret are read by the pass)."""
    last = ctx.last_inputs.get(key)
    identity = ctx.cache.identity(INFERENCE_POOL, key.namespace, key.name)
    if last is None or identity is None or identity[2]:
        return False
    body = ctx.cache.get(INFERENCE_POOL, key.namespace, key.name) or {}
    spec = body.get("spec") or {}
    if (spec.get("accelerator") or {}).get("gpus") or pl.pool_secret_names(body):
        return False
    models = []
    for name in dict.fromkeys(spec.get("models") or []):
        model = ctx.cache.identity(LLM_MODEL, key.namespace, str(name))
        models.append((name, model[:2] if model is not None else None))
    seen = pl.pool_fingerprint(
        identity[:2],
        models,
        ctx.cache.owned_versions(key.namespace, identity[0]).items(),
        ctx.cache.unschedulable(key.namespace, key.name),
        ctx.cache.scales.get((key.namespace, key.name)),
    )
    return last == hash(seen)


def _secret_names(cache: Cache, kind: Kind, key: Key, body: pl.Body) -> set[str]:
    """The Secrets a pass reads: a pool's own key; a route's fallback and client keys and its pool's key."""
    if kind is INFERENCE_POOL:
        return pl.pool_secret_names(body)
    if kind is FALLBACK_ROUTE:
        primary = cache.get(INFERENCE_POOL, key.namespace, pl.primary_pool(body) or "")
        return pl.route_secret_names(body) | (pl.pool_secret_names(primary) if primary else set())
    return set()


def _gather(
    cache: Cache,
    kind: Kind,
    key: Key,
    body: pl.Body,
    secrets: Mapping[str, SecretInfo | None],
    headers: Headers | None = None,
) -> pl.PoolObserved | pl.RouteObserved | pl.ModelObserved:
    """Everything a pass reads, from the caches (and the Secrets it names, read by name; the GGUF headers of a
    GPU pool's models, or of a model, as far as they are read)."""
    meta, spec = body["metadata"], body.get("spec") or {}
    if kind is INFERENCE_POOL:
        gpus = int((spec.get("accelerator") or {}).get("gpus") or 0)
        models = {m: cache.get(LLM_MODEL, key.namespace, m) for m in spec.get("models") or []}
        return pl.PoolObserved(
            body=body,
            models=models,
            owned=cache.owned(key.namespace, meta["uid"]),
            unschedulable=cache.unschedulable(key.namespace, key.name),
            gpu_nodes=cache.gpu_nodes() if gpus else (),
            secrets=secrets,
            scale=cache.scales.get((key.namespace, key.name)),
            headers={m: _header(headers, key, b) for m, b in models.items() if b is not None}
            if headers is not None and gpus
            else None,
        )
    if kind is FALLBACK_ROUTE:
        pools = {p: cache.get(INFERENCE_POOL, key.namespace, p) for p in pl.route_pool_names(body)}
        primary = pools.get(pl.primary_pool(body) or "")
        return pl.RouteObserved(
            body=body,
            pools=pools,
            secrets=secrets,
            owned=cache.owned(key.namespace, meta["uid"]),
            models={
                m: cache.get(LLM_MODEL, key.namespace, str(m))
                for m in ((primary or {}).get("spec") or {}).get("models") or []
            },
            cost=cache.costs.get((key.namespace, key.name)),
            carried=cache.carried.get((key.namespace, key.name)),
            gateway_api=cache.gateway_api(),
        )
    assert kind is LLM_MODEL, f"no pass for {key}"
    served_by = cache.served_by(key.namespace, key.name)
    if headers is None:
        return pl.ModelObserved(body=body, served_by=served_by)
    return pl.ModelObserved(body, served_by, reads_headers=True, header=_header(headers, key, body))


NEEDS_TOKEN = Header(
    "Unreadable",
    0,
    problem="the source needs a token (spec.source.huggingFace.tokenSecretRef), which the operator does not read",
)


def _header(headers: Headers, asker: Key, model: pl.Body) -> Header | None:
    """A model's GGUF header as far as it is known (None: being read, and `asker` runs again when it is; while
    it is, what the stored status says of the same spec). One that the operator cannot read falls back on what a
    pool's fetch-models reported for the same file, else on the status.gguf written for the same spec."""
    try:
        source = ModelSource.model_validate((model.get("spec") or {}).get("source"))
    except ValidationError:
        return None
    key = source_of(source)
    header = headers.get(key, asker) if key is not None else NEEDS_TOKEN
    if header is None:
        return pl.stored_header(model)  # being read: what the status says of this spec meanwhile, if anything
    if header.state == "Unreadable":
        name = str((model.get("metadata") or {}).get("name", ""))
        sha = (source.sha256 or "").lower() or None
        reported = headers.fetched(asker.namespace, name, source.file_name(), sha)
        return reported or pl.stored_header(model, read_only=True) or header
    return header


async def _pool(ctx: Context, key: Key, observed: pl.PoolObserved) -> Failure | None:
    planned = pl.plan_pool(observed, ctx.settings, ctx.renders)
    applied = await _converge(ctx, key, observed.body, planned.objects, observed.owned)
    facts = dataclasses.replace(planned.facts, applied=applied)
    await _write_status(ctx, key, observed.body, st.pool_status(facts, *_previous(observed.body, ctx)))
    return _failure(applied)


async def _route(ctx: Context, key: Key, observed: pl.RouteObserved) -> Failure | None:
    planned = pl.plan_route(observed, ctx.settings, ctx.renders)
    applied = await _converge(ctx, key, observed.body, planned.objects, observed.owned)
    facts = dataclasses.replace(planned.facts, applied=applied)
    await _write_status(ctx, key, observed.body, st.route_status(facts, *_previous(observed.body, ctx)))
    return _failure(applied)


def _failure(applied: st.Applied) -> Failure | None:
    if applied.conflicts:
        return Failure(" ".join(applied.conflicts), slow=True)
    if applied.error:
        return Failure(applied.error, slow=applied.refused)
    return None


# How long a model's status may wait for the GGUF header read its pass started: a read that ends within it (an
# answer from a nearby server, a name that does not resolve) costs the model one status write, not two.
HEADER_WAIT_SECONDS = 1.0


def _header_wait(ctx: Context, observed: pl.ModelObserved) -> float:
    """Seconds the pass of a model whose header is being read, with nothing about it in the status yet, should
    wait before it writes that it is reading; 0: write now."""
    if ctx.headers is None or not observed.reads_headers or observed.header is not None:
        return 0.0
    try:
        source = source_of(ModelSource.model_validate((observed.body.get("spec") or {}).get("source")))
    except ValidationError:
        return 0.0
    waited = ctx.headers.reading_for(source) if source is not None else None
    return 0.0 if waited is None else max(0.0, HEADER_WAIT_SECONDS - waited)


async def _model(ctx: Context, key: Key, observed: pl.ModelObserved, inputs: int) -> int:
    """The model's one status write; returns the inputs its next pass sees if nothing else changes (its own write
    moves the model's resourceVersion: a resync after it then has nothing to unpack)."""
    planned = pl.plan_model(observed)
    live = await _write_status(
        ctx, key, observed.body, st.model_status(planned.facts, *_previous(observed.body, ctx))
    )
    if live is not None:
        inputs = hash(pl.fingerprint(dataclasses.replace(observed, body=live)))
    return inputs


def _previous(body: pl.Body, ctx: Context) -> tuple[Any, Any, str]:
    """The stored status (for transition times), the generation observed, and now."""
    return body.get("status"), body["metadata"].get("generation"), ctx.clock()


async def _write(
    ctx: Context, key: Key, target: tuple[str, str, str], send: Awaitable[dict[str, Any]]
) -> dict[str, Any]:
    """Sends one write to `target` (kind, namespace, name) and tells the cache, which holds back the watch's
    events for it meanwhile: the pass of `key` runs again if one of them was someone else's change. Returns the
    object written."""
    ctx.cache.writing(*target)
    try:
        live = await send
    except BaseException:
        if ctx.cache.write_failed(*target):
            ctx.queue.add(key)
        raise
    if ctx.cache.wrote(live):
        ctx.queue.add(key)
    return live


class Taken(Exception):
    """A rendered name is held by an object this resource does not control: it is left untouched."""


async def _converge(
    ctx: Context, key: Key, owner: pl.Body, objects: tuple[dict[str, Any], ...] | None, owned: pl.Owned
) -> st.Applied:
    """Server-side applies, all at once, each planned object the live one does not already match, then deletes
    owned objects no longer planned. A name held by an object that is not ours is a conflict, and the rest is
    applied all the same; else the first refusal in plan order names the object and quotes the server (the
    Deployment does not wait for its ConfigMap: its pods wait for the volume by themselves)."""
    if objects is None:
        return st.Applied()
    changed = [o for o in objects if not contains(owned.get((o["kind"], o["metadata"]["name"])), o)]
    if any(_makes_http_route(o, owned) for o in changed) and not await _gateway_api_served_now(ctx):
        objects = tuple(o for o in objects if o["kind"] != HTTP_ROUTE.kind)
        changed = [o for o in changed if o["kind"] != HTTP_ROUTE.kind]
    results = await asyncio.gather(
        *(
            _write(
                ctx,
                key,
                (o["kind"], key.namespace, o["metadata"]["name"]),
                _apply(ctx, key, owner, o, owned.get((o["kind"], o["metadata"]["name"]))),
            )
            for o in changed
        ),
        return_exceptions=True,
    )
    conflicts: list[str] = []
    refusal: tuple[str, bool] | None = None
    for obj, result in zip(changed, results, strict=True):
        if isinstance(result, Taken):
            conflicts.append(str(result))
        elif isinstance(result, ApiError):
            if refusal is None:
                message = f"{obj['kind']} {obj['metadata']['name']} was refused: {result.message}"
                refusal = (message, user_must_fix(result))
        elif isinstance(result, BaseException):
            raise result
    if conflicts or refusal:
        # Nothing is pruned while the planned objects are not all in place.
        error, refused = refusal or (None, False)
        return st.Applied(error, refused, tuple(conflicts))
    planned = {(o["kind"], o["metadata"]["name"]) for o in objects}
    for kind, name in sorted(set(owned) - planned):
        try:
            await ctx.api.delete(of(kind), key.namespace, name, owned[(kind, name)]["metadata"].get("uid"))
        except ApiError as err:
            return st.Applied(f"deleting {kind} {name} was refused: {err.message}", user_must_fix(err))
        ctx.cache.deleted(kind, key.namespace, name)
    return st.Applied()


def _makes_http_route(obj: dict[str, Any], owned: pl.Owned) -> bool:
    return obj["kind"] == HTTP_ROUTE.kind and (obj["kind"], obj["metadata"]["name"]) not in owned


async def _gateway_api_served_now(ctx: Context) -> bool:
    """The HTTPRoute CRD as the API server has it now, not as the watch last told: asked before an HTTPRoute is
    made. The API server refuses to create objects of a CRD being deleted only by POST, and a server-side apply
    creates one all the same; its clean-up deletes the CRD's objects, then waits a minute for none to be left. An
    HTTPRoute of ours deleted by that clean-up brings the route's pass here (the watch of HTTPRoutes and that of
    CRDs are separate streams, so the pass may run before the CRD's own event says it is being deleted); this read
    comes after the deletion that started the clean-up, so it sees it, and the HTTPRoute is not made again."""
    crd = await ctx.api.get(CUSTOM_RESOURCE_DEFINITION, None, HTTP_ROUTE.resource)
    return crd is not None and serves(crd, HTTP_ROUTE.version)


async def _apply(
    ctx: Context, key: Key, owner: pl.Body, obj: dict[str, Any], live: pl.Body | None
) -> dict[str, Any]:
    """Applies `obj` over the object we own under its name, or creates it; never takes over another object.

    The first apply of a name only creates (a failed precondition if anything holds the name, atomically); a
    later one applies to the very object we own (its uid), so one deleted and re-created under the name by
    someone else meanwhile is refused too. Either refusal looks at the holder: ours after all (the watch had not
    shown it yet, or someone removed our label) is applied to, anything else raises Taken."""
    kind, name = of(obj["kind"]), obj["metadata"]["name"]
    try:
        if live is None:
            return await ctx.api.apply(obj, create=True)
        return await ctx.api.apply(obj, uid=(live.get("metadata") or {}).get("uid"))
    except ApiError as err:
        if not (live is None and err.status == 409) and not replaced(err):
            raise
    holder = await ctx.api.get(kind, key.namespace, name)
    if holder is None:
        raise ApiError(409, "Conflict", f"{kind.kind} {name} went away while it was applied")
    owner_meta = owner.get("metadata") or {}
    if owned_key(holder) == (key.namespace, owner_meta.get("uid")):
        return await ctx.api.apply(obj, uid=holder["metadata"].get("uid"))
    held_by = owner_of(holder)
    if held_by is not None and held_by[:2] == (key.kind, key.name):
        # A deleted predecessor of the same name: the garbage collector is removing its objects.
        raise ApiError(
            409, "Conflict", f"{kind.kind} {name} still belongs to a deleted {key.kind} {key.name}"
        )
    raise Taken(pl.conflict_message(key.kind, key.name, key.namespace, kind.kind, name, held_by))


def replaced(err: ApiError) -> bool:
    """The object under the name is not the one the uid precondition named."""
    return err.status == 422 and "metadata.uid" in err.message


async def _write_status(ctx: Context, key: Key, body: pl.Body, status: Spec) -> dict[str, Any] | None:
    """One status write, only if it changes something; an Event when Ready turns False or (for pools and
    routes) True. Returns the object written (None: nothing was)."""
    patch = st.patch_of(status)
    stored = body.get("status")
    if st.unchanged(stored, patch):
        return None
    kind = of(key.kind)
    try:
        send = ctx.api.patch_status(kind, key.namespace, key.name, patch)
        live = await _write(ctx, key, (key.kind, key.namespace, key.name), send)
    except ApiError as err:
        if err.status == 404:
            return None  # deleted meanwhile
        raise
    before, after = st.ready_of(stored), st.ready_of(patch)
    if after is None or (before is not None and before[:2] == after[:2]):
        return live
    ready, reason, message = after
    if ready == "False" or (ready == "True" and kind is not LLM_MODEL):
        involved = {"apiVersion": kind.api_version, "kind": kind.kind, "metadata": body["metadata"]}
        await ctx.api.event(
            involved,
            type_="Warning" if ready == "False" else "Normal",
            reason=reason,
            message=message,
            now=ctx.clock(),
        )
    return live

"""The pass: one per key and the same on every trigger (create, edit, an owned object's change, resync, restart).

Gather from the caches (no API read), plan with pure functions, apply only what differs from the live objects,
prune what is no longer planned, write the status once. A failure a user can cause or meet ends in the status
(Ready=False, the API server's own words) and in the returned reason, which makes the worker retry with backoff.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
from collections.abc import Awaitable, Callable, Hashable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from localai_operator.api.base import Spec
from localai_operator.api.kinds import FALLBACK_ROUTE, INFERENCE_POOL, LLM_MODEL, Kind, of
from localai_operator.control import plan as pl
from localai_operator.control import status as st
from localai_operator.control.cache import Cache
from localai_operator.control.kube import Api, ApiError, contains
from localai_operator.control.queue import Key
from localai_operator.render import RenderSettings

log = logging.getLogger(__name__)


def now() -> str:
    return datetime.now(UTC).replace(microsecond=0).isoformat().replace("+00:00", "Z")


@dataclass(frozen=True)
class Context:
    """What a pass needs: the client, the caches, the render memo, the operator's render settings, and a way to
    run a pass again (when someone else changed an object while we were writing it)."""

    api: Api
    cache: Cache
    renders: pl.Renders
    settings: RenderSettings
    again: Callable[[Key], None]
    last_inputs: dict[Key, Hashable] = dataclasses.field(default_factory=dict)
    clock: Callable[[], str] = now


async def reconcile(key: Key, ctx: Context) -> str | None:
    """Runs the pass of `key`; returns why it has to run again (None: done until something changes)."""
    kind = of(key.kind)
    body = ctx.cache.get(kind, key.namespace, key.name)
    if body is None or (body.get("metadata") or {}).get("deletionTimestamp"):
        ctx.last_inputs.pop(key, None)
        return None  # gone or going: the garbage collector removes what it owned
    observed = _gather(ctx.cache, kind, key, body)
    inputs = pl.fingerprint(observed)
    if ctx.last_inputs.get(key) == inputs:
        return None  # the last pass saw exactly this and succeeded
    if isinstance(observed, pl.PoolObserved):
        error = await _pool(ctx, key, observed)
    elif isinstance(observed, pl.RouteObserved):
        error = await _route(ctx, key, observed)
    else:
        error = await _model(ctx, key, observed)
    if error is None:
        ctx.last_inputs[key] = inputs
    else:
        ctx.last_inputs.pop(key, None)
    return error


def _gather(
    cache: Cache, kind: Kind, key: Key, body: pl.Body
) -> pl.PoolObserved | pl.RouteObserved | pl.ModelObserved:
    """Everything a pass reads, from the caches: no API request."""
    meta, spec = body["metadata"], body.get("spec") or {}
    if kind is INFERENCE_POOL:
        gpus = int((spec.get("accelerator") or {}).get("gpus") or 0)
        return pl.PoolObserved(
            body=body,
            models={m: cache.get(LLM_MODEL, key.namespace, m) for m in spec.get("models") or []},
            owned=cache.owned(meta["uid"]),
            unschedulable=cache.unschedulable(key.namespace, key.name),
            gpu_nodes=cache.gpu_nodes() if gpus else (),
            secrets={s: cache.secret(key.namespace, s) for s in pl.pool_secret_names(body)},
            scale=cache.scales.get((key.namespace, key.name)),
        )
    if kind is FALLBACK_ROUTE:
        pools = {p: cache.get(INFERENCE_POOL, key.namespace, p) for p in pl.route_pool_names(body)}
        primary = pools.get(pl.primary_pool(body) or "")
        secrets = pl.route_secret_names(body) | (pl.pool_secret_names(primary) if primary else set())
        return pl.RouteObserved(
            body=body,
            pools=pools,
            secrets={s: cache.secret(key.namespace, s) for s in secrets},
            owned=cache.owned(meta["uid"]),
            models={
                m: cache.get(LLM_MODEL, key.namespace, str(m))
                for m in ((primary or {}).get("spec") or {}).get("models") or []
            },
            cost=cache.costs.get((key.namespace, key.name)),
            carried=cache.carried.get((key.namespace, key.name)),
            gateway_api=cache.gateway_api(),
        )
    assert kind is LLM_MODEL, f"no pass for {key}"
    return pl.ModelObserved(body=body, served_by=cache.served_by(key.namespace, key.name))


async def _pool(ctx: Context, key: Key, observed: pl.PoolObserved) -> str | None:
    planned = pl.plan_pool(observed, ctx.settings, ctx.renders)
    error = await _converge(ctx, key, planned.objects, observed.owned)
    facts = dataclasses.replace(planned.facts, apply_error=error)
    await _write_status(ctx, key, observed.body, st.pool_status(facts, *_previous(observed.body, ctx)))
    return error


async def _route(ctx: Context, key: Key, observed: pl.RouteObserved) -> str | None:
    planned = pl.plan_route(observed, ctx.settings, ctx.renders)
    error = await _converge(ctx, key, planned.objects, observed.owned)
    facts = dataclasses.replace(planned.facts, apply_error=error)
    await _write_status(ctx, key, observed.body, st.route_status(facts, *_previous(observed.body, ctx)))
    return error


async def _model(ctx: Context, key: Key, observed: pl.ModelObserved) -> str | None:
    planned = pl.plan_model(observed)
    await _write_status(
        ctx, key, observed.body, st.model_status(planned.facts, *_previous(observed.body, ctx))
    )
    return None


def _previous(body: pl.Body, ctx: Context) -> tuple[Any, Any, str]:
    """The stored status (for transition times), the generation observed, and now."""
    return body.get("status"), body["metadata"].get("generation"), ctx.clock()


async def _write(
    ctx: Context, key: Key, target: tuple[str, str, str], send: Awaitable[dict[str, Any]]
) -> None:
    """Sends one write to `target` (kind, namespace, name) and tells the cache, which holds back the watch's
    events for it meanwhile: the pass of `key` runs again if one of them was someone else's change."""
    ctx.cache.writing(*target)
    try:
        live = await send
    except BaseException:
        if ctx.cache.write_failed(*target):
            ctx.again(key)
        raise
    if ctx.cache.wrote(live):
        ctx.again(key)


async def _converge(
    ctx: Context, key: Key, objects: tuple[dict[str, Any], ...] | None, owned: pl.Owned
) -> str | None:
    """Server-side applies, all at once, each planned object the live one does not already match, then deletes
    owned objects no longer planned. Returns the first refusal in plan order, naming the object and quoting the
    server (the Deployment does not wait for its ConfigMap: its pods wait for the volume by themselves)."""
    if objects is None:
        return None
    changed = [o for o in objects if not contains(owned.get((o["kind"], o["metadata"]["name"])), o)]
    results = await asyncio.gather(
        *(
            _write(ctx, key, (o["kind"], key.namespace, o["metadata"]["name"]), ctx.api.apply(o))
            for o in changed
        ),
        return_exceptions=True,
    )
    for obj, result in zip(changed, results, strict=True):
        if isinstance(result, ApiError):
            return f"{obj['kind']} {obj['metadata']['name']} was refused: {result.message}"
        if isinstance(result, BaseException):
            raise result
    planned = {(o["kind"], o["metadata"]["name"]) for o in objects}
    for kind, name in sorted(set(owned) - planned):
        try:
            await ctx.api.delete(of(kind), key.namespace, name)
        except ApiError as err:
            return f"deleting {kind} {name} was refused: {err.message}"
        ctx.cache.deleted(kind, key.namespace, name)
    return None


async def _write_status(ctx: Context, key: Key, body: pl.Body, status: Spec) -> None:
    """One status write, only if it changes something; an Event when Ready turns False or (for pools and
    routes) True."""
    patch = st.patch_of(status)
    stored = body.get("status")
    if st.unchanged(stored, patch):
        return
    kind = of(key.kind)
    try:
        send = ctx.api.patch_status(kind, key.namespace, key.name, patch)
        await _write(ctx, key, (key.kind, key.namespace, key.name), send)
    except ApiError as err:
        if err.status == 404:
            return  # deleted meanwhile
        raise
    before, after = st.ready_of(stored), st.ready_of(patch)
    if after is None or (before is not None and before[:2] == after[:2]):
        return
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

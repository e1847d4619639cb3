"""The pass: one per key and the same on every trigger (create, edit, an owned object's change, resync, restart).

Gather from the caches (no API read), plan with pure functions, apply only what differs from the live objects,
prune what is no longer planned, write the status once. A failure a user can cause or meet ends in the status
(Ready=False, the API server's own words) and in the returned reason, which makes the worker retry with backoff.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from localai_operator import plan as pl
from localai_operator import status as st
from localai_operator.api.base import Spec
from localai_operator.api.kinds import FALLBACK_ROUTE, INFERENCE_POOL, LLM_MODEL, Kind, of
from localai_operator.cache import Cache
from localai_operator.kube import Api, ApiError, contains
from localai_operator.render import RenderSettings
from localai_operator.workqueue import Key

log = logging.getLogger(__name__)


def now() -> str:
    return datetime.now(UTC).replace(microsecond=0).isoformat().replace("+00:00", "Z")


@dataclass(frozen=True)
class Context:
    """What a pass needs: the client, the caches, the render memo and the operator's render settings."""

    api: Api
    cache: Cache
    renders: pl.Renders
    settings: RenderSettings
    clock: Callable[[], str] = now


async def reconcile(key: Key, ctx: Context) -> str | None:
    """Runs the pass of `key`; returns why it has to run again (None: done until something changes)."""
    kind = of(key.kind)
    body = ctx.cache.get(kind, key.namespace, key.name)
    if body is None or (body.get("metadata") or {}).get("deletionTimestamp"):
        return None  # gone or going: the garbage collector removes what it owned
    if kind is INFERENCE_POOL:
        return await _pool(ctx, body)
    if kind is FALLBACK_ROUTE:
        return await _route(ctx, body)
    assert kind is LLM_MODEL, f"no pass for {key}"
    return await _model(ctx, body)


async def _pool(ctx: Context, body: pl.Body) -> str | None:
    meta, spec = body["metadata"], body.get("spec") or {}
    namespace, name = meta["namespace"], meta["name"]
    gpus = int((spec.get("accelerator") or {}).get("gpus") or 0)
    observed = pl.PoolObserved(
        body=body,
        models={m: ctx.cache.get(LLM_MODEL, namespace, m) for m in spec.get("models") or []},
        owned=ctx.cache.owned(meta["uid"]),
        unschedulable=ctx.cache.unschedulable(namespace, name),
        gpu_nodes=ctx.cache.gpu_nodes() if gpus else (),
        secrets={s: ctx.cache.secret(namespace, s) for s in pl.pool_secret_names(body)},
    )
    planned = pl.plan_pool(observed, ctx.settings, ctx.renders)
    error = await _converge(ctx, planned.objects, observed.owned, namespace)
    facts = dataclasses.replace(planned.facts, apply_error=error)
    await _write_status(
        ctx,
        INFERENCE_POOL,
        body,
        st.pool_status(facts, body.get("status"), meta.get("generation"), ctx.clock()),
    )
    return error


async def _route(ctx: Context, body: pl.Body) -> str | None:
    meta = body["metadata"]
    namespace = meta["namespace"]
    pools = {p: ctx.cache.get(INFERENCE_POOL, namespace, p) for p in pl.route_pool_names(body)}
    primary = pools.get(pl.primary_pool(body) or "")
    secrets = pl.route_secret_names(body) | (pl.pool_secret_names(primary) if primary else set())
    observed = pl.RouteObserved(
        body=body,
        pools=pools,
        secrets={s: ctx.cache.secret(namespace, s) for s in secrets},
        owned=ctx.cache.owned(meta["uid"]),
    )
    planned = pl.plan_route(observed, ctx.settings, ctx.renders)
    error = await _converge(ctx, planned.objects, observed.owned, namespace)
    facts = dataclasses.replace(planned.facts, apply_error=error)
    await _write_status(
        ctx,
        FALLBACK_ROUTE,
        body,
        st.route_status(facts, body.get("status"), meta.get("generation"), ctx.clock()),
    )
    return error


async def _model(ctx: Context, body: pl.Body) -> str | None:
    meta = body["metadata"]
    observed = pl.ModelObserved(body=body, served_by=ctx.cache.served_by(meta["namespace"], meta["name"]))
    planned = pl.plan_model(observed)
    await _write_status(
        ctx,
        LLM_MODEL,
        body,
        st.model_status(planned.facts, body.get("status"), meta.get("generation"), ctx.clock()),
    )
    return None


async def _converge(
    ctx: Context, objects: tuple[dict[str, Any], ...] | None, owned: pl.Owned, namespace: str
) -> str | None:
    """Server-side applies each planned object the live one does not already match, then deletes owned objects
    no longer planned. Stops at the first refusal and returns it, naming the object and quoting the server."""
    if objects is None:
        return None
    for obj in objects:
        kind, name = obj["kind"], obj["metadata"]["name"]
        live = owned.get((kind, name))
        if live is not None and contains(live, obj):
            continue
        try:
            ctx.cache.wrote(await ctx.api.apply(obj))
        except ApiError as err:
            return f"{kind} {name} was refused: {err.message}"
    planned = {(o["kind"], o["metadata"]["name"]) for o in objects}
    for kind, name in sorted(set(owned) - planned):
        try:
            await ctx.api.delete(of(kind), namespace, name)
        except ApiError as err:
            return f"deleting {kind} {name} was refused: {err.message}"
        ctx.cache.deleted(kind, namespace, name)
    return None


async def _write_status(ctx: Context, kind: Kind, body: pl.Body, status: Spec) -> None:
    """One status write, only if it changes something; an Event when Ready turns False or (for pools and
    routes) True."""
    patch = st.patch_of(status)
    stored = body.get("status")
    if st.unchanged(stored, patch):
        return
    meta = body["metadata"]
    try:
        live = await ctx.api.patch_status(kind, meta["namespace"], meta["name"], patch)
    except ApiError as err:
        if err.status == 404:
            return  # deleted meanwhile
        raise
    ctx.cache.wrote(live)
    before, after = st.ready_of(stored), st.ready_of(patch)
    if after is None or (before is not None and before[:2] == after[:2]):
        return
    ready, reason, message = after
    if ready == "False" or (ready == "True" and kind is not LLM_MODEL):
        involved = {"apiVersion": kind.api_version, "kind": kind.kind, "metadata": meta}
        await ctx.api.event(
            involved,
            type_="Warning" if ready == "False" else "Normal",
            reason=reason,
            message=message,
            now=ctx.clock(),
        )

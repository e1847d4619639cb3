"""The elastic loop: while leading, every few seconds, read every router's demand and spend from its pods'
/metrics (no Prometheus, no KEDA), decide the size of each autoscaled pool, count GPU-hours, and leave the results
in the cache for the pools' and routes' passes to render (the Deployment's replicas, status). Never writes a spec,
and writes nothing to the API server: the router pods' addresses come from their Services' EndpointSlices and the
HorizontalPodAutoscalers from the caches; a pod is read only once one GET of it and of its ReplicaSet showed that
the route's router Deployment controls it (control/scrape.py). One pool's or route's figures failing (an answer
that cannot be read, a bug) costs only that pool's or route's figures, never the look.

A pool that a user's HorizontalPodAutoscaler (or a KEDA ScaledObject, which makes one) targets through its scale
subresource is left to it: its spec.replicas is rendered as without autoscaling.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Final

import aiohttp
from pydantic import ValidationError

from localai_operator.api import FallbackRoute, InferencePool, LLMModel
from localai_operator.api.kinds import FALLBACK_ROUTE, INFERENCE_POOL, LLM_MODEL, Kind
from localai_operator.api.route import RouteCost
from localai_operator.control.autoscale import DemandMeter, GpuMeter, Scaler, ScaleState
from localai_operator.control.cache import Cache
from localai_operator.control.kube import Reader
from localai_operator.control.scrape import RouterPod, RouterPods, Scraper
from localai_operator.render.route import metrics_port, pod_slots, router_name
from localai_operator.wire import AVOIDED, SPEND, Carried, period_of

log = logging.getLogger(__name__)

INTERVAL_SECONDS: Final = 5.0
# Route cost in status changes with every answer: written at most this often per route.
COST_PUBLISH_SECONDS: Final = 30.0

Key = tuple[str, str]  # (namespace, name)
Enqueue = Callable[[str, str, str, bool], None]  # kind, namespace, name, background


def _spec(body: Mapping[str, Any]) -> Mapping[str, Any]:
    spec: Mapping[str, Any] = body.get("spec") or {}
    return spec


def _iso(wall: float) -> str:
    return datetime.fromtimestamp(wall, UTC).replace(microsecond=0).isoformat().replace("+00:00", "Z")


@dataclass
class _RouteReading:
    in_flight: float = 0.0
    complete: bool = True
    # (kind, period) -> amount, summed over the route's pods
    costs: dict[tuple[str, str], float] = field(default_factory=dict)
    exhausted: bool = False
    read: int = 0  # router pods whose metrics were read


class Elastic:
    def __init__(
        self,
        cache: Cache,
        enqueue: Enqueue,
        reader: Reader,
        *,
        interval: float = INTERVAL_SECONDS,
        clock: Callable[[], float] = time.monotonic,
        wall: Callable[[], float] = time.time,
    ) -> None:
        self.cache = cache
        self.enqueue = enqueue
        self.interval = interval
        self.clock = clock
        self.wall = wall
        self._scalers: dict[Key, Scaler] = {}
        self._meters: dict[Key, DemandMeter] = {}
        self._gpus: dict[Key, GpuMeter] = {}
        self._pod_costs: dict[Key, dict[str, dict[tuple[str, str], float]]] = {}  # route -> pod -> figures
        self._gone: dict[Key, dict[tuple[str, str], float]] = {}  # route -> figures of its pods that went
        self._published: dict[Key, float] = {}
        self._router_pods = RouterPods(reader)
        self._scraper = Scraper()
        self._problems: dict[
            tuple[str, Key], str
        ] = {}  # what last went wrong with a pool's or route's figures
        self._parses: dict[
            tuple[str, str, str], tuple[Any, Any]
        ] = {}  # (kind, ns, name) -> (version, parsed)

    async def run(self, active: asyncio.Event) -> None:
        try:
            while True:
                await asyncio.sleep(self.interval)
                if not active.is_set():
                    continue
                try:
                    await self.look()
                except (aiohttp.ClientError, TimeoutError) as err:
                    log.warning(
                        "autoscaler: %s; trying again in %.0f s", err or type(err).__name__, self.interval
                    )
                except Exception:
                    log.exception("autoscaler: unexpected error")
        finally:
            await self._scraper.close()

    # ------------------------------------------------------------------ one look

    async def look(self) -> None:
        now, wall = self.clock(), self.wall()
        pools = self._bodies(INFERENCE_POOL)
        # Only what is autoscaled, and every route (their costs), is parsed: once per resourceVersion.
        autoscaled = self._parsed(
            INFERENCE_POOL, InferencePool, {k: b for k, b in pools.items() if _spec(b).get("autoscaling")}
        )
        routes = self._parsed(FALLBACK_ROUTE, FallbackRoute, self._bodies(FALLBACK_ROUTE))
        hpas = {key: hpa for key in autoscaled if (hpa := self.cache.hpa_for(*key)) is not None}
        readings = await self._read(routes, now)
        day, month = period_of("daily", wall), period_of("monthly", wall)
        gpu_pools = {
            k: b for k, b in pools.items() if int((_spec(b).get("accelerator") or {}).get("gpus") or 0)
        }
        for key, body in gpu_pools.items():
            meta = body.get("metadata") or {}
            deployment = self.cache.owned(key[0], str(meta.get("uid", ""))).get(("Deployment", key[1])) or {}
            replicas = int((deployment.get("status") or {}).get("replicas") or 0)
            gpus = int(_spec(body)["accelerator"]["gpus"])
            self._gpus.setdefault(key, GpuMeter()).observe(now, replicas, gpus, (day, month))
        for key in [k for k in self._gpus if k not in gpu_pools]:
            del self._gpus[key]
        for key, pool in autoscaled.items():
            with self._isolated("pool", key):
                self._scale(key, pool, routes, readings, hpas.get(key), now, wall)
        for key in [k for k in self._scalers if k not in autoscaled]:
            del self._scalers[key]
        for key in [k for k in self.cache.scales if k not in autoscaled]:
            del self.cache.scales[key]
            self.enqueue(INFERENCE_POOL.kind, key[0], key[1], False)  # back to spec.replicas
        for key, route in routes.items():
            with self._isolated("route", key):
                self._cost(key, route, readings.get(key), now, wall)
        for problem in [p for p in self._problems if p[1] not in (pools if p[0] == "pool" else routes)]:
            del self._problems[problem]
        seen = {("InferencePool", *k) for k in autoscaled} | {("FallbackRoute", *k) for k in routes}
        for parse in [k for k in self._parses if k not in seen]:
            del self._parses[parse]

    @contextlib.contextmanager
    def _isolated(self, what: str, key: Key) -> Iterator[None]:
        """One pool's or route's figures failing costs only them, logged once per change of what went wrong."""
        try:
            yield
        except Exception as err:
            message = f"{type(err).__name__}: {err}"
            if self._problems.get((what, key)) != message:
                log.exception("autoscaler: the figures of %s %s/%s: %s", what, key[0], key[1], message)
            self._problems[(what, key)] = message
        else:
            if self._problems.pop((what, key), None) is not None:
                log.info("autoscaler: the figures of %s %s/%s are read again", what, key[0], key[1])

    def _bodies(self, kind: Kind) -> dict[Key, Mapping[str, Any]]:
        out: dict[Key, Mapping[str, Any]] = {}
        for namespace, name in self.cache.keys(kind):
            body = self.cache.get(kind, namespace, name)
            if body is not None:
                out[(namespace, name)] = body
        return out

    def _parsed(self, kind: Kind, model: Any, bodies: Mapping[Key, Mapping[str, Any]]) -> dict[Key, Any]:
        """The bodies parsed, each only when its uid or resourceVersion changed (invalid ones left out: their
        own pass reports why)."""
        out: dict[Key, Any] = {}
        for key, body in bodies.items():
            meta = body.get("metadata") or {}
            version = (meta.get("uid"), meta.get("resourceVersion"))
            cached = self._parses.get((kind.kind, *key))
            if cached is None or cached[0] != version:
                try:
                    parsed = model.parse(body)
                except ValidationError:
                    parsed = None
                cached = self._parses[(kind.kind, *key)] = (version, parsed)
            if cached[1] is not None:
                out[key] = cached[1]
        return out

    async def _pods(self, routes: Mapping[Key, FallbackRoute]) -> dict[Key, tuple[list[RouterPod], bool]]:
        """Each route's router pods to read, and whether all its endpoints could be checked."""
        listed = {key: self.cache.router_endpoints(*key) for key in routes}
        self._router_pods.keep((key[0], e) for key, endpoints in listed.items() for e in endpoints)

        async def trusted(key: Key, route: FallbackRoute) -> tuple[list[RouterPod], bool]:
            owned = self.cache.owned(key[0], route.metadata.uid or "")
            deployment = owned.get(("Deployment", router_name(route))) or {}
            uid = (deployment.get("metadata") or {}).get("uid")
            return await self._router_pods.trusted(key[0], uid, listed[key])

        found = await asyncio.gather(*(trusted(key, route) for key, route in routes.items()))
        return dict(zip(routes, found, strict=True))

    async def _read(self, routes: Mapping[Key, FallbackRoute], now: float) -> dict[Key, _RouteReading]:
        pods = await self._pods(routes)
        wanted = [(key, pod) for key in routes for pod in pods[key][0]]
        samples = await asyncio.gather(
            *(self._scraper.read(pod.address, metrics_port(routes[key])) for key, pod in wanted)
        )
        readings: dict[Key, _RouteReading] = {key: _RouteReading(complete=pods[key][1]) for key in routes}
        seen: dict[Key, set[str]] = {key: set() for key in routes}
        for (key, pod), sample in zip(wanted, samples, strict=True):
            reading = readings[key]
            seen[key].add(pod.name)
            if sample is None:
                reading.complete = False
                continue
            reading.read += 1
            reading.in_flight += self._meters.setdefault(key, DemandMeter()).observe(pod.name, now, sample)
            reading.exhausted = reading.exhausted or sample.budget_exhausted
            self._pod_costs.setdefault(key, {})[pod.name] = dict(sample.costs)
        for key in routes:
            self._meters.setdefault(key, DemandMeter()).keep(seen[key])
            by_pod = self._pod_costs.setdefault(key, {})
            gone = self._gone.setdefault(key, {})
            for pod_name in [p for p in by_pod if p not in seen[key]]:
                for figure, amount in by_pod.pop(pod_name).items():
                    gone[figure] = gone.get(figure, 0.0) + amount
            for figures in by_pod.values():
                for figure, amount in figures.items():
                    readings[key].costs[figure] = readings[key].costs.get(figure, 0.0) + amount
        for key in [k for k in self._meters if k not in routes]:
            del self._meters[key]
            self._pod_costs.pop(key, None)
            self._gone.pop(key, None)
            self._published.pop(key, None)
        return readings

    # ------------------------------------------------------------------ decisions

    def _slots(self, pool: InferencePool) -> int | None:
        models: dict[str, LLMModel] = {}
        for name in pool.spec.models:
            body = self.cache.get(LLM_MODEL, pool.namespace, name)
            if body is None:
                return None
            try:
                models[name] = LLMModel.parse(body)
            except ValidationError:
                return None
        return sum(pod_slots(pool, models).values()) or None

    def _scale(
        self,
        key: Key,
        pool: InferencePool,
        routes: Mapping[Key, FallbackRoute],
        readings: Mapping[Key, _RouteReading],
        hpa: str | None,
        now: float,
        wall: float,
    ) -> None:
        spec = pool.spec.autoscaling
        assert spec is not None
        previous = self.cache.scales.get(key)
        if hpa is not None:
            self._scalers.pop(key, None)  # when the HPA goes, start again from the Deployment's size
            state = ScaleState(
                pool.spec.replicas,
                "ManagedByHPA",
                f'HorizontalPodAutoscaler "{hpa}" scales this pool through spec.replicas; spec.autoscaling is '
                "ignored while it does",
                hpa=hpa,
                last_scale_time=previous.last_scale_time if previous else None,
            )
            self._publish(key, previous, state)
            return
        slots = self._slots(pool)
        if slots is None:
            return  # a model is missing or invalid: the pool applies nothing anyway
        scaler = self._scalers.get(key)
        if scaler is None:
            deployment = self.cache.owned(pool.namespace, pool.metadata.uid or "").get(
                ("Deployment", pool.name)
            )
            start = (deployment or {}).get("spec", {}).get("replicas")
            start = spec.min_replicas if start is None else int(start)
            if previous is not None and previous.hpa is None:
                start = previous.desired
            start = min(max(start, spec.min_replicas), spec.max_replicas)
            scaler = self._scalers[key] = Scaler(start, now, previous.reason if previous else "Steady")
        mine = [
            readings[r]
            for r, route in routes.items()
            if r[0] == key[0]
            and route.spec.primary.pool_ref is not None
            and route.spec.primary.pool_ref.name == key[1]
            and r in readings
        ]
        in_flight = sum(r.in_flight for r in mine)
        decision = scaler.decide(spec, in_flight, slots, now, complete=all(r.complete for r in mine))
        if (
            previous is not None
            and not decision.changed
            and previous.reason == decision.reason
            and not previous.hpa
        ):
            return
        if decision.changed or previous is None:
            log.info(
                "pool %s/%s: %s replicas (%s: %s)",
                key[0],
                key[1],
                decision.desired,
                decision.reason,
                decision.message,
            )
        state = ScaleState(
            decision.desired,
            decision.reason,
            decision.message,
            round(in_flight, 3),
            slots,
            last_scale_time=_iso(wall) if decision.changed or previous is None else previous.last_scale_time,
        )
        self._publish(key, previous, state)

    def _publish(self, key: Key, previous: ScaleState | None, state: ScaleState) -> None:
        if previous == state:
            return
        self.cache.scales[key] = state
        urgent = previous is None or previous.desired != state.desired
        self.enqueue(INFERENCE_POOL.kind, key[0], key[1], not urgent)

    def _cost(
        self, key: Key, route: FallbackRoute, reading: _RouteReading | None, now: float, wall: float
    ) -> None:
        fallback = route.spec.fallback
        cap = fallback.spend_cap if fallback is not None else None
        period = period_of(cap.period if cap is not None else "monthly", wall)
        gone = self._gone.setdefault(key, {})
        pool_ref = route.spec.primary.pool_ref
        meter = self._gpus.get((key[0], pool_ref.name)) if pool_ref is not None else None
        current = reading.costs if reading is not None else {}
        stored = route.status.cost if route.status is not None else None
        if key not in self._published and stored is not None and stored.period == period:
            # The operator restarted: what the route's gone pods spent, and the GPU-hours, are in its status.
            for kind, amount in ((SPEND, stored.spend), (AVOIDED, stored.avoided)):
                missing = amount - current.get((kind, period), 0.0) - gone.get((kind, period), 0.0)
                if missing > 0:
                    gone[(kind, period)] = gone.get((kind, period), 0.0) + missing
            if meter is not None:
                meter.seconds[period] = max(meter.seconds.get(period, 0.0), stored.gpu_hours * 3600)
        if reading is None or not reading.read:
            return  # no router answered yet: nothing new to say
        cost = RouteCost(
            period=period,
            spend=current.get((SPEND, period), 0.0) + gone.get((SPEND, period), 0.0),
            avoided=current.get((AVOIDED, period), 0.0) + gone.get((AVOIDED, period), 0.0),
            gpu_hours=round(meter.hours(period), 6) if meter is not None else 0.0,
            budget_exhausted=reading.exhausted,
        )
        carried_amount = gone.get((SPEND, period), 0.0)
        carried = (
            Carried(period=period, amount=carried_amount) if cap is not None and carried_amount else None
        )
        carried_changed = self.cache.carried.get(key) != carried
        if carried_changed:
            if carried is None:
                self.cache.carried.pop(key, None)
            else:
                self.cache.carried[key] = carried
        before = self.cache.costs.get(key)
        due = now - self._published.get(key, -COST_PUBLISH_SECONDS) >= COST_PUBLISH_SECONDS
        flipped = before is not None and before.budget_exhausted != cost.budget_exhausted
        if carried_changed or ((due or flipped) and before != cost):
            self.cache.costs[key] = cost
            self._published[key] = now
            # The router's config (carried spend) and a reached cap matter now; the figures can wait their turn.
            self.enqueue(FALLBACK_ROUTE.kind, key[0], key[1], not (carried_changed or flipped))

"""The elastic loop against real routers on loopback: it reads their /metrics where the router Services'
EndpointSlices say the pods are (here, 127.0.0.x:8080), publishes the route's spend, and carries the spend of a
router pod that went into the status and into the router config's spend share."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import aiohttp
import pytest
from aiohttp import web

from localai_operator.api.kinds import Kind
from localai_operator.constants import FALLBACK_API_KEY_ENV, ROUTER_METRICS_PORT, ROUTER_PORT
from localai_operator.control import cache as c
from localai_operator.control.cache import Cache
from localai_operator.control.elastic import Elastic
from localai_operator.router.server import ROUTER, create_app, create_metrics_app
from localai_operator.testing.standins import OpenAIStandIn, cloud_standin, refused_url
from localai_operator.wire import RouterConfig, period_of
from tests.unit.router.conftest import API_KEY, chat_body, route_config

ROUTE = {
    "kind": "FallbackRoute",
    "metadata": {"name": "chat", "namespace": "team-a", "uid": "chat-uid", "generation": 1},
    "spec": {
        "primary": {"url": "http://localai.team-a.svc:8080/v1"},
        "fallback": {
            "apiKeySecretRef": {"name": "k", "key": "k"},
            "spendCap": {"amount": 100, "period": "monthly"},
        },
    },
}
# Each fallback answer: 3 completion tokens at 0.42 per million.
PER_ANSWER = 3 * 0.42 / 1e6
StartRouter = Callable[[str], Awaitable[str]]


@pytest.fixture
async def cloud() -> AsyncIterator[OpenAIStandIn]:
    standin = cloud_standin(api_key=API_KEY)
    await standin.start()
    yield standin
    await standin.stop()


@pytest.fixture
async def router_pod(cloud: OpenAIStandIn) -> AsyncIterator[StartRouter]:
    """Starts a router "pod" on `address`:8080 (metrics on 9090) whose local upstream refuses, so every answer is the cloud's."""
    runners: list[web.AppRunner] = []

    async def start(address: str) -> str:
        config = RouterConfig.model_validate(route_config(refused_url(), cloud.url))
        app = create_app(config, env={FALLBACK_API_KEY_ENV: API_KEY})
        runner = web.AppRunner(app)
        await runner.setup()
        await web.TCPSite(runner, address, ROUTER_PORT).start()
        runners.append(runner)
        # As the rendered pod does: the operator scrapes the metrics port.
        metrics = web.AppRunner(create_metrics_app(app[ROUTER]))
        await metrics.setup()
        await web.TCPSite(metrics, address, ROUTER_METRICS_PORT).start()
        runners.append(metrics)
        return f"http://{address}:{ROUTER_PORT}/v1/chat/completions"

    yield start
    for runner in runners:
        await runner.cleanup()


ROUTER_DEPLOYMENT = {
    "kind": "Deployment",
    "metadata": {
        "name": "chat-router",
        "namespace": "team-a",
        "uid": "deployment-uid",
        "resourceVersion": "1",
    },
}


class Objects:
    """What the API server would answer to the elastic loop's GETs: the route's ReplicaSet and router pods."""

    def __init__(self) -> None:
        self.bodies: dict[tuple[str, str], dict[str, Any]] = {
            ("ReplicaSet", "chat-router-5d9c"): owned_by(
                "ReplicaSet", "chat-router-5d9c", "Deployment", "deployment-uid"
            )
        }
        self.gets = 0

    def router_pod(self, name: str, address: str, replica_set: str = "chat-router-5d9c") -> c.Endpoint:
        self.bodies[("Pod", name)] = {
            **owned_by("Pod", name, "ReplicaSet", f"{replica_set}-uid"),
            "status": {"podIP": address, "podIPs": [{"ip": address}]},
        }
        self.bodies[("Pod", name)]["metadata"]["ownerReferences"][0]["name"] = replica_set
        return c.Endpoint(name, f"{name}-uid", address)

    async def get(self, kind: Kind, namespace: str | None, name: str) -> dict[str, Any] | None:
        self.gets += 1
        return self.bodies.get((kind.kind, name))


def owned_by(kind: str, name: str, owner_kind: str, owner_uid: str) -> dict[str, Any]:
    reference = {"kind": owner_kind, "name": "x", "uid": owner_uid, "controller": True}
    meta = {"name": name, "namespace": "team-a", "uid": f"{name}-uid", "ownerReferences": [reference]}
    return {"kind": kind, "metadata": meta}


def cache_with(endpoints: list[c.Endpoint]) -> Cache:
    return bound(
        {
            c.ROUTES: {("route", "team-a", "chat"): [ROUTE]},
            c.ROUTER_ENDPOINTS: {("team-a", "chat"): [tuple(endpoints)]},
            c.OWNED: {("team-a", "chat-uid"): [ROUTER_DEPLOYMENT]},
        }
    )


def bound(indexes: dict[str, dict[Any, list[Any]]]) -> Cache:
    """A cache over these indexes, objects packed as the index functions pack them."""
    cache = Cache()
    cache.bind(
        {name: {} for name in c.INDEXES}
        | {
            name: {
                key: [c.pack(v) if isinstance(v, dict) and "metadata" in v else v for v in values]
                for key, values in index.items()
            }
            for name, index in indexes.items()
        }
    )
    return cache


async def answer(url: str, times: int) -> None:
    async with aiohttp.ClientSession() as session:
        for _ in range(times):
            async with session.post(url, json=chat_body()) as response:
                assert response.headers["X-Served-By"] == "fallback"
                await response.read()


async def test_the_routes_spend_is_read_from_its_router_pods_and_published(router_pod: StartRouter) -> None:
    await answer(await router_pod("127.0.0.61"), 2)
    objects = Objects()
    cache = cache_with([objects.router_pod("chat-router-a", "127.0.0.61")])
    enqueued: list[tuple[str, str, str, bool]] = []
    await Elastic(cache, lambda *key: enqueued.append(key), objects).look()
    cost = cache.costs[("team-a", "chat")]
    assert (cost.period, cost.budget_exhausted) == (period_of("monthly", time.time()), False)
    assert cost.spend == pytest.approx(2 * PER_ANSWER)
    assert enqueued == [("FallbackRoute", "team-a", "chat", True)]


async def test_the_spend_of_a_router_pod_that_went_is_carried_on(router_pod: StartRouter) -> None:
    await answer(await router_pod("127.0.0.62"), 2)
    await answer(await router_pod("127.0.0.63"), 1)
    objects = Objects()
    cache = cache_with([objects.router_pod("chat-router-a", "127.0.0.62")])
    enqueued: list[Any] = []
    elastic = Elastic(cache, lambda *key: enqueued.append(key), objects)
    await elastic.look()
    replaced = objects.router_pod("chat-router-b", "127.0.0.63")
    cache.indexes[c.ROUTER_ENDPOINTS] = {("team-a", "chat"): [(replaced,)]}
    await elastic.look()
    carried = cache.carried[("team-a", "chat")]
    assert carried.amount == pytest.approx(2 * PER_ANSWER)
    assert cache.costs[("team-a", "chat")].spend == pytest.approx(3 * PER_ANSWER)
    assert enqueued[-1] == ("FallbackRoute", "team-a", "chat", False), "the router config must follow at once"


async def test_an_unreadable_router_pod_publishes_nothing() -> None:
    objects = Objects()
    cache = cache_with([objects.router_pod("chat-router-a", "127.0.0.64")])  # nothing listens there
    await Elastic(cache, lambda *key: None, objects).look()
    assert cache.costs == {}


class MetricsServer:
    """A pod's /metrics on `address`:9090 answering `body` (or `size` bytes of junk, streamed)."""

    def __init__(self, body: str = "", size: int = 0) -> None:
        self.body, self.size = body, size
        self.requests = 0
        self.sent = 0
        self.runner: web.AppRunner | None = None

    async def start(self, address: str) -> MetricsServer:
        async def metrics(request: web.Request) -> web.StreamResponse:
            self.requests += 1
            if not self.size:
                return web.Response(text=self.body)
            response = web.StreamResponse()
            await response.prepare(request)
            chunk = b"# " + b"x" * (1 << 20) + b"\n"
            try:
                while self.sent < self.size:
                    await response.write(chunk)
                    self.sent += len(chunk)
            except ConnectionError:
                pass
            return response

        app = web.Application()
        app.router.add_get("/metrics", metrics)
        self.runner = web.AppRunner(app)
        await self.runner.setup()
        await web.TCPSite(self.runner, address, ROUTER_METRICS_PORT).start()
        return self

    async def stop(self) -> None:
        if self.runner is not None:
            await self.runner.cleanup()


def demand(in_flight: str, spend: str = "0.5") -> str:
    month = period_of("monthly", time.time())
    return (
        f"localai_router_demand_seconds_total 0\nlocalai_router_demand_in_flight {in_flight}\n"
        f'localai_router_period_cost{{kind="spend",period="{month}"}} {spend}\n'
    )


@pytest.fixture
async def servers() -> AsyncIterator[Callable[..., Awaitable[MetricsServer]]]:
    started: list[MetricsServer] = []

    async def start(address: str, **kwargs: Any) -> MetricsServer:
        started.append(await MetricsServer(**kwargs).start(address))
        return started[-1]

    yield start
    for server in started:
        await server.stop()


async def test_only_pods_that_the_routes_router_deployment_controls_are_read(
    servers: Callable[..., Awaitable[MetricsServer]],
) -> None:
    objects = Objects()
    router = objects.router_pod("chat-router-a", "127.0.0.65")
    await servers("127.0.0.65", body=demand("1"))
    # A tenant's pod wearing the router labels (no ReplicaSet controls it), a pod of another Deployment's
    # ReplicaSet, and a forged slice entry naming the real router pod at another address.
    tenant = c.Endpoint("tenants-pod", "tenants-pod-uid", "127.0.0.66")
    objects.bodies[("Pod", "tenants-pod")] = {
        **owned_by("Pod", "tenants-pod", "Job", "job-uid"),
        "status": {"podIP": "127.0.0.66"},
    }
    objects.bodies[("ReplicaSet", "other-rs")] = owned_by("ReplicaSet", "other-rs", "Deployment", "other-uid")
    other = objects.router_pod("other-pod", "127.0.0.67", replica_set="other-rs")
    forged = c.Endpoint("chat-router-a", "chat-router-a-uid", "127.0.0.68")
    hostile = [await servers(f"127.0.0.{n}", body=demand("+Inf", "-1")) for n in (66, 67, 68)]
    cache = cache_with([router, tenant, other, forged])
    elastic = Elastic(cache, lambda *key: None, objects)
    await elastic.look()
    assert cache.costs[("team-a", "chat")].spend == pytest.approx(0.5)
    assert [server.requests for server in hostile] == [0, 0, 0]
    gets = objects.gets
    await elastic.look()
    assert objects.gets == gets, "a verdict is kept per pod uid: no GET on the next look"


POOL = {
    "kind": "InferencePool",
    "metadata": {"name": "elastic", "namespace": "team-a", "uid": "pool-uid", "generation": 1},
    "spec": {
        "models": ["m"],
        "autoscaling": {"minReplicas": 0, "maxReplicas": 4, "targetInFlightPerSlot": 1},
    },
}
MODEL = {
    "kind": "LLMModel",
    "metadata": {"name": "m", "namespace": "team-a", "uid": "m-uid", "generation": 1},
    "spec": {"source": {"url": "https://models.example/m.gguf"}, "parallel": 1},  # 3 in flight: 3 replicas
}


@pytest.mark.parametrize(
    "hostile",
    [
        {"body": demand("+Inf")},
        {"body": demand("NaN", "NaN")},
        {"body": demand("-1", "-1")},
        {"size": 200 << 20},
    ],
    ids=["inf", "nan", "negative", "200-MiB"],
)
async def test_a_router_answering_garbage_costs_only_its_own_routes_figures(
    servers: Callable[..., Awaitable[MetricsServer]], hostile: dict[str, Any]
) -> None:
    objects = Objects()
    good = objects.router_pod("chat-router-a", "127.0.0.69")
    await servers("127.0.0.69", body=demand("3"))
    bad_route = {**ROUTE, "metadata": {**ROUTE["metadata"], "name": "evil", "uid": "evil-uid"}}
    bad_route["spec"] = {"primary": {"url": "http://elsewhere.example/v1"}}
    objects.bodies[("ReplicaSet", "evil-router-7f")] = owned_by(
        "ReplicaSet", "evil-router-7f", "Deployment", "evil-d"
    )
    bad = objects.router_pod("evil-router-a", "127.0.0.70", replica_set="evil-router-7f")
    bad_server = await servers("127.0.0.70", **hostile)
    route = {**ROUTE, "spec": {**ROUTE["spec"], "primary": {"poolRef": {"name": "elastic"}}}}
    evil_deployment = {
        "kind": "Deployment",
        "metadata": {"name": "evil-router", "namespace": "team-a", "uid": "evil-d", "resourceVersion": "1"},
    }
    cache = bound(
        {
            c.ROUTES: {("route", "team-a", "chat"): [route], ("route", "team-a", "evil"): [bad_route]},
            c.POOLS: {("pool", "team-a", "elastic"): [POOL]},
            c.MODELS: {("model", "team-a", "m"): [MODEL]},
            c.ROUTER_ENDPOINTS: {("team-a", "chat"): [(good,)], ("team-a", "evil"): [(bad,)]},
            c.OWNED: {("team-a", "chat-uid"): [ROUTER_DEPLOYMENT], ("team-a", "evil-uid"): [evil_deployment]},
        }
    )
    await Elastic(cache, lambda *key: None, objects).look()
    assert bad_server.requests == 1, "the evil route's own router was read"
    assert bad_server.sent <= 8 << 20, "and no more than a few MiB of its answer"
    assert cache.scales[("team-a", "elastic")].desired == 3, "the other pool is scaled"
    assert cache.costs[("team-a", "chat")].spend == pytest.approx(0.5), "the other route's cost is published"
    assert ("team-a", "evil") not in cache.costs

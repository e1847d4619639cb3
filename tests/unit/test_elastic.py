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


def cache_with(pods: list[tuple[str, str]]) -> Cache:
    cache = Cache()
    cache.bind(
        {name: {} for name in c.INDEXES}
        | {
            c.ROUTES: {("route", "team-a", "chat"): [ROUTE]},
            c.ROUTER_ENDPOINTS: {("team-a", "chat"): [tuple(pods)]},
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
    cache = cache_with([("chat-router-a", "127.0.0.61")])
    enqueued: list[tuple[str, str, str, bool]] = []
    await Elastic(cache, lambda *key: enqueued.append(key)).look()
    cost = cache.costs[("team-a", "chat")]
    assert (cost.period, cost.budget_exhausted) == (period_of("monthly", time.time()), False)
    assert cost.spend == pytest.approx(2 * PER_ANSWER)
    assert enqueued == [("FallbackRoute", "team-a", "chat", True)]


async def test_the_spend_of_a_router_pod_that_went_is_carried_on(router_pod: StartRouter) -> None:
    await answer(await router_pod("127.0.0.62"), 2)
    await answer(await router_pod("127.0.0.63"), 1)
    cache = cache_with([("chat-router-a", "127.0.0.62")])
    enqueued: list[Any] = []
    elastic = Elastic(cache, lambda *key: enqueued.append(key))
    await elastic.look()
    cache.indexes[c.ROUTER_ENDPOINTS] = {("team-a", "chat"): [(("chat-router-b", "127.0.0.63"),)]}  # replaced
    await elastic.look()
    carried = cache.carried[("team-a", "chat")]
    assert carried.amount == pytest.approx(2 * PER_ANSWER)
    assert cache.costs[("team-a", "chat")].spend == pytest.approx(3 * PER_ANSWER)
    assert enqueued[-1] == ("FallbackRoute", "team-a", "chat", False), "the router config must follow at once"


async def test_an_unreadable_router_pod_publishes_nothing() -> None:
    cache = cache_with([("chat-router-a", "127.0.0.64")])  # nothing listens there
    await Elastic(cache, lambda *key: None).look()
    assert cache.costs == {}

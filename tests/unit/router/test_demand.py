"""The demand signal the operator's autoscaler scrapes: requests meant for the pool wherever they were served, a
counter and an in-flight integral that a burst between two scrapes cannot hide from, and each pod's slots and
requests in flight per model."""

from __future__ import annotations

import asyncio
import re

import aiohttp

from localai_operator.testing.standins import OpenAIStandIn
from tests.unit.router.conftest import (
    LOCAL_MODEL,
    StartRouter,
    chat_body,
    eventually,
    post,
    route_config,
    scrape,
)

OTHER_MODEL = "qwen-embed"


def value(text: str, series: str) -> float:
    """The value of one exported series (name with its labels, as exported)."""
    match = re.search(rf"^{re.escape(series)} (\S+)$", text, re.MULTILINE)
    assert match is not None, f"{series} is not exported"
    return float(match.group(1))


async def test_a_burst_between_two_scrapes_shows_in_the_demand_counters(
    local: OpenAIStandIn, start_router: StartRouter, client: aiohttp.ClientSession
) -> None:
    local.set(delay_before_first_chunk=0.4)
    router = await start_router(route_config(local.url))
    before = await scrape(client, router)
    await asyncio.gather(*(post(client, router) for _ in range(5)))
    after = await scrape(client, router)
    assert (
        value(after, "localai_router_demand_requests_total")
        - value(before, "localai_router_demand_requests_total")
        == 5
    )
    seconds = value(after, "localai_router_demand_seconds_total") - value(
        before, "localai_router_demand_seconds_total"
    )
    assert 5 * 0.4 <= seconds < 5 * 3, "five requests of 0.4 s or more, counted once each"
    assert value(after, "localai_router_demand_in_flight") == 0


async def test_requests_the_cloud_answers_because_the_pool_is_full_are_demand_in_flight(
    local: OpenAIStandIn, cloud: OpenAIStandIn, start_router: StartRouter, client: aiohttp.ClientSession
) -> None:
    local.set(delay_before_first_chunk=3)
    cloud.set(delay_before_first_chunk=3)
    router = await start_router(route_config(local.url, cloud.url, local_extra={"slots": {LOCAL_MODEL: 1}}))
    requests = [asyncio.ensure_future(post(client, router)) for _ in range(3)]
    try:
        await eventually(
            lambda: local.counters.active == 1 and cloud.counters.active == 2, 10, "one local, two spilled"
        )
        text = await scrape(client, router)
        assert value(text, "localai_router_demand_in_flight") == 3
        assert value(text, f'localai_router_outstanding_requests{{endpoint="{local.url}"}}') == 1
    finally:
        for request in requests:
            request.cancel()


async def test_each_pods_slots_and_requests_in_flight_per_model_are_exported(
    local: OpenAIStandIn, cloud: OpenAIStandIn, start_router: StartRouter, client: aiohttp.ClientSession
) -> None:
    local.models = (LOCAL_MODEL, OTHER_MODEL)
    local.set(hang=True)
    router = await start_router(
        route_config(local.url, cloud.url, local_extra={"slots": {LOCAL_MODEL: 4, OTHER_MODEL: 2}})
    )
    requests = [asyncio.ensure_future(post(client, router)) for _ in range(3)]
    requests.append(asyncio.ensure_future(post(client, router, body=chat_body(OTHER_MODEL))))
    try:
        await eventually(lambda: local.counters.active == 4, 10, "four requests on the pod")
        text = await scrape(client, router)
        pod = f'endpoint="{local.url}"'
        assert value(text, f"localai_router_pod_slots{{{pod}}}") == 6
        assert value(text, f'localai_router_model_slots{{{pod},model="{LOCAL_MODEL}"}}') == 4
        assert value(text, f'localai_router_model_outstanding_requests{{{pod},model="{LOCAL_MODEL}"}}') == 3
        assert value(text, f'localai_router_model_outstanding_requests{{{pod},model="{OTHER_MODEL}"}}') == 1
    finally:
        for request in requests:
            request.cancel()


async def test_a_model_only_the_cloud_serves_is_not_demand_for_the_pool(
    local: OpenAIStandIn, cloud: OpenAIStandIn, start_router: StartRouter, client: aiohttp.ClientSession
) -> None:
    router = await start_router(route_config(local.url, cloud.url))
    models = await client.get(router.v1("/models"))  # fills the catalog with both lists
    await models.read()
    answer = await post(client, router, body=chat_body("deepseek-v3.2"))
    assert answer.headers["X-Fallback-Reason"] == "model_not_local"
    assert value(await scrape(client, router), "localai_router_demand_requests_total") == 0

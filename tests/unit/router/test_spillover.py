"""Spillover: when every ready slot of the pool is busy, a request that may go to the cloud goes there at once
(reason saturated) instead of queueing into a first-token timeout; one that may not queues for a slot, with a
bounded wait and a clear 503 past it."""

from __future__ import annotations

import asyncio
import time

import aiohttp
import openai
import pytest

from localai_operator.router.policy import FallbackReason
from localai_operator.testing.standins import OpenAIStandIn, local_standin
from tests.unit.router.conftest import (
    LOCAL_MODEL,
    SDK_IDS,
    SDK_MODES,
    StartRouter,
    chat_body,
    eventually,
    post,
    route_config,
    scrape,
    sdk_chat,
)

OTHER_MODEL = "qwen-embed"
SATURATED = FallbackReason.SATURATED


def slotted(
    local: str | list[str], cloud: str | None = None, slots: int = 2, **policy: object
) -> dict[str, object]:
    return route_config(local, cloud, local_extra={"slots": {LOCAL_MODEL: slots}}, **policy)


async def busy(local: OpenAIStandIn, count: int) -> None:
    await eventually(lambda: local.counters.active >= count, 10, f"{count} requests in flight on the pod")


@pytest.mark.parametrize(("kind", "stream"), SDK_MODES, ids=SDK_IDS)
async def test_a_request_beyond_the_pools_slots_goes_to_the_cloud_at_once_as_saturated(
    kind: str,
    stream: bool,
    local: OpenAIStandIn,
    cloud: OpenAIStandIn,
    start_router: StartRouter,
    client: aiohttp.ClientSession,
) -> None:
    local.set(delay_before_first_chunk=3)
    router = await start_router(slotted(local.url, cloud.url, slots=2))
    holding = [asyncio.ensure_future(post(client, router)) for _ in range(2)]
    await busy(local, 2)
    reply = await sdk_chat(router, sync=kind == "sync", stream=stream)
    assert (reply.served_by, reply.fallback_reason) == ("fallback", "saturated")
    assert reply.text == "cloud-token-0 cloud-token-1 cloud-token-2 "
    assert reply.elapsed < 2, "the spilled request waited for local"
    assert [a.served_by for a in await asyncio.gather(*holding)] == ["local", "local"]
    assert local.counters.started == 2


async def test_a_freed_slot_takes_requests_locally_again(
    local: OpenAIStandIn, cloud: OpenAIStandIn, start_router: StartRouter, client: aiohttp.ClientSession
) -> None:
    local.set(delay_before_first_chunk=1)
    router = await start_router(slotted(local.url, cloud.url, slots=1))
    first = asyncio.ensure_future(post(client, router))
    await busy(local, 1)
    assert (await post(client, router)).headers.get("X-Fallback-Reason") == "saturated"
    assert (await first).served_by == "local"
    assert (await post(client, router)).served_by == "local"


async def test_a_burst_beyond_the_slots_spills_and_no_request_waits_past_its_budget(
    cloud: OpenAIStandIn, start_router: StartRouter, client: aiohttp.ClientSession
) -> None:
    pods = [local_standin(), local_standin()]
    for pod in pods:
        pod.set(delay_before_first_chunk=0.5)
        await pod.start()
    try:
        router = await start_router(
            slotted([p.url for p in pods], cloud.url, slots=2, firstTokenTimeoutMs=2000)
        )
        answers = await asyncio.gather(*(post(client, router) for _ in range(12)))
    finally:
        for pod in pods:
            await pod.stop()
    local = [a for a in answers if a.served_by == "local"]
    spilled = [a for a in answers if a.served_by == "fallback"]
    assert len(local) == 4 and len(spilled) == 8, "two pods with two slots each take four at once"
    assert {a.headers["X-Fallback-Reason"] for a in spilled} == {"saturated"}
    assert max(a.elapsed for a in spilled) < 2, "a spilled request waited into the first-token budget"
    lines = (await scrape(client, router)).splitlines()
    assert 'localai_router_fallbacks_total{reason="saturated"} 8' in lines


async def test_slots_are_counted_per_model_on_a_pod_serving_several(
    local: OpenAIStandIn, cloud: OpenAIStandIn, start_router: StartRouter, client: aiohttp.ClientSession
) -> None:
    local.models = (LOCAL_MODEL, OTHER_MODEL)
    local.set(delay_before_first_chunk=2)
    router = await start_router(
        route_config(local.url, cloud.url, local_extra={"slots": {LOCAL_MODEL: 1, OTHER_MODEL: 1}})
    )
    holding = asyncio.ensure_future(post(client, router))
    await busy(local, 1)
    other = asyncio.ensure_future(post(client, router, body=chat_body(OTHER_MODEL)))
    await busy(local, 2)
    same = await post(client, router)
    assert (same.served_by, same.headers.get("X-Fallback-Reason")) == ("fallback", "saturated")
    assert (await other).served_by == "local", "a busy slot of one model kept another model off the pod"
    await holding


async def test_a_model_without_slots_is_never_spilled(
    local: OpenAIStandIn, cloud: OpenAIStandIn, start_router: StartRouter, client: aiohttp.ClientSession
) -> None:
    local.models = (LOCAL_MODEL, OTHER_MODEL)
    local.set(delay_before_first_chunk=0.5)
    router = await start_router(slotted(local.url, cloud.url, slots=1))
    answers = await asyncio.gather(*(post(client, router, body=chat_body(OTHER_MODEL)) for _ in range(4)))
    assert [a.served_by for a in answers] == ["local"] * 4


async def test_a_sensitive_request_queues_for_a_free_slot_and_is_answered_locally(
    local: OpenAIStandIn, start_router: StartRouter, client: aiohttp.ClientSession
) -> None:
    local.set(delay_before_first_chunk=0.4)
    router = await start_router(slotted(local.url, sensitive=True, slots=1, queueTimeoutMs=20000))
    answers = await asyncio.gather(*(post(client, router) for _ in range(3)))
    assert [a.served_by for a in answers] == ["local"] * 3
    assert max(a.elapsed for a in answers) >= 1.1, "the three did not take the one slot in turn"
    lines = (await scrape(client, router)).splitlines()
    assert 'localai_router_waits_total{reason="saturated",result="local"} 2' in lines


async def test_a_sensitive_request_that_waits_past_the_queue_timeout_gets_503_with_retry_after(
    local: OpenAIStandIn, start_router: StartRouter, client: aiohttp.ClientSession
) -> None:
    local.set(delay_before_first_chunk=3)
    router = await start_router(slotted(local.url, sensitive=True, slots=1, queueTimeoutMs=300))
    holding = asyncio.ensure_future(post(client, router))
    await busy(local, 1)
    started = time.monotonic()
    answer = await post(client, router)
    waited = time.monotonic() - started
    assert (answer.status, answer.served_by, answer.headers["Retry-After"]) == (503, "router", "1")
    error = answer.json()["error"]
    assert error["code"] == "sensitive_route_no_fallback"
    assert "every slot" in error["message"] and "waited" in error["message"]
    assert 0.25 <= waited < 2
    assert (await holding).served_by == "local"
    lines = (await scrape(client, router)).splitlines()
    assert 'localai_router_waits_total{reason="saturated",result="timeout"} 1' in lines


async def test_the_openai_sdk_sees_the_queue_timeout_as_a_503_api_error(
    local: OpenAIStandIn, start_router: StartRouter, client: aiohttp.ClientSession
) -> None:
    local.set(delay_before_first_chunk=3)
    router = await start_router(slotted(local.url, sensitive=True, slots=1, queueTimeoutMs=200))
    holding = asyncio.ensure_future(post(client, router))
    await busy(local, 1)
    with pytest.raises(openai.APIStatusError) as raised:
        await sdk_chat(router, sync=False, stream=False)
    assert raised.value.status_code == 503
    assert raised.value.response.headers["retry-after"] == "1"
    await holding


async def test_queued_requests_are_served_in_arrival_order(
    local: OpenAIStandIn, start_router: StartRouter, client: aiohttp.ClientSession
) -> None:
    local.set(delay_before_first_chunk=0.3)
    router = await start_router(slotted(local.url, sensitive=True, slots=1, queueTimeoutMs=20000))
    tasks = []
    for index in range(4):
        body = {**chat_body(), "messages": [{"role": "user", "content": f"request {index}"}]}
        tasks.append(asyncio.ensure_future(post(client, router, body=body)))
        await eventually(
            lambda i=index: local.counters.started + router.router.relay.waiting[SATURATED] > i,
            10,
            f"request {index} to be on the pod or in the queue",
        )
    await asyncio.gather(*tasks)
    order = [r.json()["messages"][0]["content"] for r in local.requests if r.path.endswith("/completions")]
    assert order == [f"request {i}" for i in range(4)]


async def test_a_client_that_leaves_the_queue_gives_its_place_to_the_next(
    local: OpenAIStandIn, start_router: StartRouter, client: aiohttp.ClientSession
) -> None:
    local.set(delay_before_first_chunk=0.5)
    router = await start_router(slotted(local.url, sensitive=True, slots=1, queueTimeoutMs=20000))
    holding = asyncio.ensure_future(post(client, router))
    await busy(local, 1)
    leaving = asyncio.ensure_future(post(client, router))
    await eventually(lambda: router.router.relay.waiting[SATURATED] == 1, 10, "one request queued")
    staying = asyncio.ensure_future(post(client, router))
    await eventually(lambda: router.router.relay.waiting[SATURATED] == 2, 10, "two requests queued")
    leaving.cancel()
    await eventually(lambda: router.router.relay.waiting[SATURATED] == 1, 10, "the leaver out of the queue")
    assert (await holding).served_by == "local"
    assert (await staying).served_by == "local"
    assert local.counters.started == 2

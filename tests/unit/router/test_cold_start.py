"""Cold-start bridging: while the pool has no ready pod (scaled to zero, downloading or loading), a request that
may go to the cloud goes there at once (reason pool_cold); one that may not is held while the pool comes up,
bounded by firstTokenTimeoutMs plus coldStartAllowanceSeconds, then answered 503 with Retry-After. Once a pod is
ready, new requests go local again."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import aiohttp
import pytest

from localai_operator.router.policy import FallbackReason
from localai_operator.testing.standins import OpenAIStandIn, local_standin
from tests.unit.router.conftest import (
    LOCAL_MODEL,
    SDK_IDS,
    SDK_MODES,
    StartRouter,
    eventually,
    post,
    route_config,
    scrape,
    sdk_chat,
)
from tests.unit.router.test_pods import Names

POOL_COLD = FallbackReason.POOL_COLD


def pool_route(cloud: str | None, port: int, *, interval: float = 60, **policy: Any) -> dict[str, Any]:
    """A route to pool `gpu-pool` as the operator renders it: pods by DNS, slots, the pool's name."""
    local = {
        "discovery": {"url": f"http://gpu-pool-pods.team-a.svc:{port}/v1", "intervalSeconds": interval},
        "pool": "gpu-pool",
        "slots": {LOCAL_MODEL: 2},
    }
    return route_config([], cloud, local_extra=local, sensitive=cloud is None, **policy)


@pytest.fixture
async def pod() -> Any:
    """A pool pod on 127.0.0.3, which DNS does not list until a test says so."""
    standin = local_standin()
    await standin.start("127.0.0.3", 0)
    yield standin
    await standin.stop()


@pytest.mark.parametrize(("kind", "stream"), SDK_MODES, ids=SDK_IDS)
async def test_a_request_to_a_cold_pool_goes_to_the_cloud_at_once_as_pool_cold(
    kind: str, stream: bool, cloud: OpenAIStandIn, pod: OpenAIStandIn, start_router: StartRouter
) -> None:
    router = await start_router(pool_route(cloud.url, pod.port), resolver=Names())
    reply = await sdk_chat(router, sync=kind == "sync", stream=stream)
    assert (reply.served_by, reply.fallback_reason) == ("fallback", "pool_cold")
    assert reply.text == "cloud-token-0 cloud-token-1 cloud-token-2 "
    assert reply.elapsed < 2


async def test_once_a_pod_is_ready_new_requests_go_local_again(
    cloud: OpenAIStandIn, pod: OpenAIStandIn, start_router: StartRouter, client: aiohttp.ClientSession
) -> None:
    names = Names()
    # A long interval: only the hurried lookups of a cold pool can find the pod in time.
    router = await start_router(pool_route(cloud.url, pod.port, interval=600), resolver=names)
    assert (await post(client, router)).headers["X-Fallback-Reason"] == "pool_cold"
    names.addresses = ["127.0.0.3"]
    started = time.monotonic()

    async def local_again() -> bool:
        return (await post(client, router)).served_by == "local"

    await eventually(local_again, 10, "a request answered by the pod that became ready")
    assert time.monotonic() - started < 5
    assert pod.counters.completed >= 1


async def test_cold_start_bridging_counts_as_demand(
    cloud: OpenAIStandIn, pod: OpenAIStandIn, start_router: StartRouter, client: aiohttp.ClientSession
) -> None:
    router = await start_router(pool_route(cloud.url, pod.port), resolver=Names())
    for _ in range(3):
        await post(client, router)
    lines = (await scrape(client, router)).splitlines()
    assert 'localai_router_fallbacks_total{reason="pool_cold"} 3' in lines
    assert "localai_router_demand_requests_total 3" in lines


async def test_a_sensitive_request_to_a_cold_pool_is_held_and_answered_locally_once_a_pod_is_ready(
    pod: OpenAIStandIn, start_router: StartRouter, client: aiohttp.ClientSession
) -> None:
    names = Names()
    router = await start_router(
        pool_route(None, pod.port, interval=600, firstTokenTimeoutMs=1000, coldStartAllowanceSeconds=30),
        resolver=names,
    )
    held = asyncio.ensure_future(post(client, router))
    await eventually(lambda: router.router.relay.waiting[POOL_COLD] == 1, 10, "the request held")
    await asyncio.sleep(0.5)  # held for a while, with nothing to answer it: not an arrangement
    assert not held.done()
    names.addresses = ["127.0.0.3"]
    answer = await asyncio.wait_for(held, 10)
    assert (answer.status, answer.served_by) == (200, "local")
    lines = (await scrape(client, router)).splitlines()
    assert 'localai_router_waits_total{reason="pool_cold",result="local"} 1' in lines


async def test_a_sensitive_request_to_a_cold_pool_gets_503_with_retry_after_past_the_bound(
    pod: OpenAIStandIn, start_router: StartRouter, client: aiohttp.ClientSession
) -> None:
    router = await start_router(
        pool_route(None, pod.port, firstTokenTimeoutMs=300, coldStartAllowanceSeconds=0.5), resolver=Names()
    )
    answer = await post(client, router)
    assert (answer.status, answer.served_by) == (503, "router")
    assert int(answer.headers["Retry-After"]) >= 1
    error = answer.json()["error"]
    assert error["code"] == "sensitive_route_no_fallback"
    assert "no ready pod" in error["message"] and "gpu-pool" in error["message"]
    assert 0.75 <= answer.elapsed < 3, "held for firstTokenTimeoutMs + coldStartAllowanceSeconds"


async def test_a_pool_with_pods_that_are_all_busy_after_a_cold_start_keeps_the_held_request_waiting(
    pod: OpenAIStandIn, start_router: StartRouter, client: aiohttp.ClientSession
) -> None:
    pod.set(delay_before_first_chunk=0.5)
    names = Names()
    router = await start_router(
        pool_route(None, pod.port, interval=600, coldStartAllowanceSeconds=30), resolver=names
    )
    held = [asyncio.ensure_future(post(client, router)) for _ in range(3)]
    await eventually(lambda: router.router.relay.waiting[POOL_COLD] == 3, 10, "three requests held")
    names.addresses = ["127.0.0.3"]
    answers = await asyncio.wait_for(asyncio.gather(*held), 20)
    assert [a.served_by for a in answers] == ["local"] * 3, "two slots took two; the third waited for one"


async def test_a_pod_that_refuses_a_connection_makes_the_router_look_up_the_pods_again_at_once(
    cloud: OpenAIStandIn, pod: OpenAIStandIn, start_router: StartRouter, client: aiohttp.ClientSession
) -> None:
    names = Names("127.0.0.3")
    router = await start_router(pool_route(cloud.url, pod.port), resolver=names)
    assert (await post(client, router)).served_by == "local"
    await pod.stop()  # scaled to zero: the pod is gone, its address still known for up to a minute
    names.addresses = []
    lookups = names.lookups
    assert (await post(client, router)).headers.get("X-Fallback-Reason") == "connect_error"
    await eventually(lambda: names.lookups > lookups, 5, "a lookup right after the refused connection")
    assert (await post(client, router)).headers.get("X-Fallback-Reason") == "pool_cold"

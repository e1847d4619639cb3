"""Per-pod balancing: one breaker per pod, a failed connect retried on another pod, pods found by DNS, and a
burst of new connections to a busy but healthy pod (full accept queue) that must not read as a dead pool."""

from __future__ import annotations

import asyncio
import time

import aiohttp
import pytest

from localai_operator.testing.standins import OpenAIStandIn, UnacceptingListener, local_standin, refused_url
from tests.unit.router.conftest import (
    StartRouter,
    breaker_of,
    eventually,
    post,
    route_config,
    scrape,
    sdk_chat,
)


async def test_with_two_pods_one_dead_no_request_fails_and_only_that_pods_breaker_opens(
    local: OpenAIStandIn, cloud: OpenAIStandIn, start_router: StartRouter, client: aiohttp.ClientSession
) -> None:
    dead = refused_url()
    router = await start_router(
        # Every pod in turn (no prefix affinity): the dead one is asked until its breaker opens.
        route_config(
            [dead, local.url],
            cloud.url,
            circuitBreaker={"failureThreshold": 2, "openSeconds": 60},
            affinity={"enabled": False},
        )
    )
    replies = [await sdk_chat(router, sync=False, stream=i % 2 == 1) for i in range(8)]
    assert all(r.served_by == "local" for r in replies)
    assert (await breaker_of(client, router, dead), await breaker_of(client, router, local.url)) == (
        "open",
        "closed",
    )
    assert local.counters.completed == 8 and cloud.counters.started == 0


async def test_a_pod_that_times_out_on_connect_is_retried_on_another_pod(
    local: OpenAIStandIn, cloud: OpenAIStandIn, start_router: StartRouter, client: aiohttp.ClientSession
) -> None:
    listener = UnacceptingListener()
    try:
        router = await start_router(
            route_config(
                [listener.url, local.url], cloud.url, connectTimeoutMs=200, affinity={"enabled": False}
            )
        )
        answers = [await post(client, router) for _ in range(4)]
    finally:
        listener.close()
    assert [a.served_by for a in answers] == ["local"] * 4
    retried = [a for a in answers if a.elapsed >= 0.2]
    assert retried, "no request tried the unreachable pod first"
    assert f"localai_router_local_retries_total {len(retried)}" in (await scrape(client, router)).splitlines()


async def test_a_connection_failure_is_tried_on_one_more_pod_then_the_cloud(
    cloud: OpenAIStandIn, start_router: StartRouter, client: aiohttp.ClientSession
) -> None:
    router = await start_router(route_config([refused_url(), refused_url(), refused_url()], cloud.url))
    answer = await post(client, router)
    assert (answer.served_by, answer.headers["X-Fallback-Reason"]) == ("fallback", "connect_error")
    lines = (await scrape(client, router)).splitlines()
    assert "localai_router_local_retries_total 1" in lines
    # One request, two pods tried, each counted on its own breaker.
    assert 'localai_router_local_failures_total{reason="connect_error"} 1' in lines


async def test_a_burst_of_connections_to_a_pod_whose_accept_queue_is_full_stays_local_with_the_defaults(
    cloud: OpenAIStandIn, start_router: StartRouter, client: aiohttp.ClientSession
) -> None:
    # New connections find the pod's accept queue full, so their SYNs are dropped and retried by the kernel
    # after 1 s, when the pod accepts again: the production connect timeout and budget must outlast that.
    listener = UnacceptingListener()
    pod = local_standin()
    router = await start_router(
        route_config(listener.url, cloud.url, defaults=True, circuitBreaker={"failureThreshold": 1})
    )
    try:
        requests = [asyncio.ensure_future(post(client, router)) for _ in range(20)]
        await asyncio.sleep(0.3)  # the SYNs are in flight and dropped; this arranges the queue, not a wait
        await listener.release(pod)
        answers = await asyncio.wait_for(asyncio.gather(*requests), 30)
    finally:
        await pod.stop()
        listener.close()
    assert [a.served_by for a in answers] == ["local"] * 20
    assert max(a.elapsed for a in answers) >= 0.9  # the burst was real: connects waited for the SYN retry
    assert await breaker_of(client, router, listener.url) == "closed"
    assert cloud.counters.started == 0


class Names:
    """A DNS stand-in for the resolver seam: what a headless Service name resolves to right now."""

    def __init__(self, *addresses: str) -> None:
        self.addresses: list[str] | None = list(addresses)
        self.lookups = 0

    async def __call__(self, host: str, port: int) -> list[str] | None:
        self.lookups += 1
        return None if self.addresses is None else list(self.addresses)


async def started_on(address: str, port: int, name: str) -> OpenAIStandIn:
    standin = local_standin()
    standin.name = name
    await standin.start(address, port)
    return standin


async def test_pods_of_a_headless_service_name_are_found_by_the_real_resolver(
    local: OpenAIStandIn, cloud: OpenAIStandIn, start_router: StartRouter, client: aiohttp.ClientSession
) -> None:
    discovery = {"discovery": {"url": f"http://localhost:{local.port}/v1", "intervalSeconds": 0.2}}
    router = await start_router(route_config([], cloud.url, local_extra=discovery))
    async with client.get(f"{router.url}/readyz") as response:
        urls = [e["url"] for e in (await response.json())["endpoints"]]
    assert f"http://127.0.0.1:{local.port}/v1" in urls
    assert (await post(client, router)).served_by == "local"


async def test_pods_are_followed_as_the_name_resolves_to_new_addresses(
    cloud: OpenAIStandIn, start_router: StartRouter, client: aiohttp.ClientSession
) -> None:
    first = await started_on("127.0.0.1", 0, "pod-a")
    second = await started_on("127.0.0.2", first.port, "pod-b")
    try:
        names = Names("127.0.0.1")
        discovery = {
            "discovery": {"url": f"http://pool-pods.ns.svc:{first.port}/v1", "intervalSeconds": 0.05}
        }
        router = await start_router(route_config([], cloud.url, local_extra=discovery), resolver=names)

        async def served_by(prefix: str) -> bool:
            answer = await post(client, router)
            return bool(answer.json()["choices"][0]["message"]["content"].startswith(prefix))

        assert await served_by("pod-a")
        names.addresses = ["127.0.0.2"]
        await eventually(lambda: served_by("pod-b"), 10, "requests to reach the pod that replaced the first")
        names.addresses = None  # a DNS failure keeps the pods known so far
        lookups = names.lookups
        await eventually(lambda: names.lookups > lookups + 2, 10, "a few failed lookups")
        assert await served_by("pod-b")
    finally:
        await first.stop()
        await second.stop()


async def test_no_ready_pod_sends_requests_to_the_cloud_at_once(
    cloud: OpenAIStandIn, start_router: StartRouter, client: aiohttp.ClientSession
) -> None:
    discovery = {"discovery": {"url": "http://pool-pods.ns.svc:8080/v1", "intervalSeconds": 60}}
    router = await start_router(route_config([], cloud.url, local_extra=discovery), resolver=Names())
    started = time.monotonic()
    answer = await post(client, router)
    assert (answer.served_by, answer.headers["X-Fallback-Reason"]) == ("fallback", "no_ready_endpoint")
    assert time.monotonic() - started < 2


async def test_a_sensitive_route_with_no_ready_pod_says_so(
    start_router: StartRouter, client: aiohttp.ClientSession
) -> None:
    discovery = {"discovery": {"url": "http://pool-pods.ns.svc:8080/v1", "intervalSeconds": 60}}
    router = await start_router(route_config([], sensitive=True, local_extra=discovery), resolver=Names())
    answer = await post(client, router)
    assert (answer.status, answer.served_by) == (503, "router")
    assert "no ready pod" in answer.json()["error"]["message"]


@pytest.mark.parametrize("ready", [1, 2])
async def test_in_flight_requests_are_reported_per_pod(
    ready: int, local: OpenAIStandIn, start_router: StartRouter, client: aiohttp.ClientSession
) -> None:
    local.set(hang=True)
    router = await start_router(route_config(local.url))
    pending = [asyncio.ensure_future(post(client, router)) for _ in range(ready)]
    try:
        line = f'localai_router_outstanding_requests{{endpoint="{local.url}"}} {ready}'

        async def reported() -> bool:
            return line in (await scrape(client, router)).splitlines()

        await eventually(reported, 5, f"{ready} requests in flight on the pod")
    finally:
        for task in pending:
            task.cancel()

"""The circuit breaker per local endpoint: open after consecutive failures, one probe, close or re-open."""

from __future__ import annotations

import asyncio

import aiohttp

from localai_operator.testing.standins import OpenAIStandIn
from tests.unit.router.conftest import RunningRouter, StartRouter, eventually, post, route_config


async def breaker_state(client: aiohttp.ClientSession, router: RunningRouter) -> str:
    async with client.get(f"{router.url}/readyz") as response:
        state: str = (await response.json())["endpoints"][0]["breaker"]
        return state


async def wait_for_breaker(client: aiohttp.ClientSession, router: RunningRouter, state: str) -> None:
    async def reached() -> bool:
        return await breaker_state(client, router) == state

    await eventually(reached, 5, f"the breaker to be {state}")


async def test_first_token_timeouts_open_the_breaker_and_local_is_skipped_without_waiting(
    local: OpenAIStandIn, cloud: OpenAIStandIn, start_router: StartRouter, client: aiohttp.ClientSession
) -> None:
    local.set(hang=True)
    breaker = {"failureThreshold": 2, "openSeconds": 60}
    router = await start_router(
        route_config(local.url, cloud.url, firstTokenTimeoutMs=1000, circuitBreaker=breaker)
    )
    for _ in range(2):
        assert (await post(client, router)).headers["X-Fallback-Reason"] == "first_token_timeout"
    answer = await post(client, router)
    assert (answer.status, answer.served_by) == (200, "fallback")
    assert answer.headers["X-Fallback-Reason"] == "breaker_open"
    assert local.counters.started == 2
    # Straight to the cloud: well under the 1 s budget the first two requests waited for.
    assert answer.elapsed < 0.8


async def test_half_open_breaker_lets_exactly_one_probe_through(
    local: OpenAIStandIn, cloud: OpenAIStandIn, start_router: StartRouter, client: aiohttp.ClientSession
) -> None:
    local.set(hang=True)
    breaker = {"failureThreshold": 1, "openSeconds": 0.3}
    router = await start_router(
        route_config(local.url, cloud.url, firstTokenTimeoutMs=1000, circuitBreaker=breaker)
    )
    await post(client, router)
    await wait_for_breaker(client, router, "half_open")
    answers = await asyncio.gather(*(post(client, router) for _ in range(4)))
    assert all(a.status == 200 and a.served_by == "fallback" for a in answers)
    assert local.counters.started == 2
    reasons = sorted(a.headers["X-Fallback-Reason"] for a in answers)
    assert reasons == ["breaker_open", "breaker_open", "breaker_open", "first_token_timeout"]


async def test_successful_probe_closes_the_breaker(
    local: OpenAIStandIn, cloud: OpenAIStandIn, start_router: StartRouter, client: aiohttp.ClientSession
) -> None:
    local.set(status=500)
    breaker = {"failureThreshold": 1, "openSeconds": 1.0}
    router = await start_router(route_config(local.url, cloud.url, circuitBreaker=breaker))
    await post(client, router)
    assert await breaker_state(client, router) == "open"
    local.set()
    await wait_for_breaker(client, router, "half_open")
    assert (await post(client, router)).served_by == "local"
    assert await breaker_state(client, router) == "closed"
    assert (await post(client, router)).served_by == "local"


async def test_failed_probe_reopens_the_breaker(
    local: OpenAIStandIn, cloud: OpenAIStandIn, start_router: StartRouter, client: aiohttp.ClientSession
) -> None:
    local.set(status=500)
    breaker = {"failureThreshold": 1, "openSeconds": 1.0}
    router = await start_router(route_config(local.url, cloud.url, circuitBreaker=breaker))
    await post(client, router)
    await wait_for_breaker(client, router, "half_open")
    probe = await post(client, router)
    assert probe.headers["X-Fallback-Reason"] == "status_5xx"
    assert await breaker_state(client, router) == "open"
    after = await post(client, router)
    assert after.headers["X-Fallback-Reason"] == "breaker_open"
    assert local.counters.started == 2


async def test_a_success_resets_the_consecutive_failure_count(
    local: OpenAIStandIn, cloud: OpenAIStandIn, start_router: StartRouter, client: aiohttp.ClientSession
) -> None:
    breaker = {"failureThreshold": 2, "openSeconds": 60}
    router = await start_router(route_config(local.url, cloud.url, circuitBreaker=breaker))
    for status in (500, 200, 500):
        local.set(status=status)
        await post(client, router)
    assert await breaker_state(client, router) == "closed"

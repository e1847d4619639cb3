"""The non-relay surface: /v1/models merge, rate limit, balancing, /readyz, /healthz, /metrics."""

from __future__ import annotations

import asyncio

import aiohttp
import pytest

from localai_operator.testing.standins import OpenAIStandIn, local_standin, refused_url
from tests.unit.router.conftest import StartRouter, chat_body, eventually, post, route_config


async def test_models_merges_local_and_fallback_lists(
    local: OpenAIStandIn, cloud: OpenAIStandIn, start_router: StartRouter, client: aiohttp.ClientSession
) -> None:
    cloud.models = ("deepseek-v3.2", "mistral-7b-instruct")
    router = await start_router(route_config(local.url, cloud.url))
    async with client.get(router.v1("/models")) as response:
        assert response.headers["X-Served-By"] == "local"
        listing = await response.json()
    # LocalAI lists `{"id","object"}` only (no owned_by): the local entry of a name both list is the one kept.
    assert [(m["id"], m.get("owned_by")) for m in listing["data"]] == [
        ("mistral-7b-instruct", None),
        ("deepseek-v3.2", "cloud"),
    ]


async def test_models_lists_local_only_when_the_fallback_fails(
    local: OpenAIStandIn, start_router: StartRouter, client: aiohttp.ClientSession
) -> None:
    router = await start_router(route_config(local.url, refused_url()))
    async with client.get(router.v1("/models")) as response:
        assert response.status == 200
        assert [m["id"] for m in (await response.json())["data"]] == ["mistral-7b-instruct"]


async def test_models_lists_the_fallback_when_local_is_down(
    cloud: OpenAIStandIn, start_router: StartRouter, client: aiohttp.ClientSession
) -> None:
    router = await start_router(route_config(refused_url(), cloud.url))
    async with client.get(router.v1("/models")) as response:
        assert response.headers["X-Served-By"] == "fallback"
        assert [m["id"] for m in (await response.json())["data"]] == ["deepseek-v3.2"]


async def test_rate_limit_answers_429_with_retry_after(
    local: OpenAIStandIn, start_router: StartRouter, client: aiohttp.ClientSession
) -> None:
    router = await start_router(route_config(local.url, rateLimit={"requestsPerSecond": 0.5, "burst": 2}))
    statuses = [(await post(client, router)).status for _ in range(2)]
    refused = await post(client, router)
    assert statuses == [200, 200]
    assert refused.status == 429
    assert refused.headers["Retry-After"] == "2"
    assert refused.json()["error"]["type"] == "rate_limit_error"
    assert local.counters.started == 2


async def test_least_outstanding_balancing_sends_requests_to_the_idle_endpoint(
    local: OpenAIStandIn, start_router: StartRouter, client: aiohttp.ClientSession
) -> None:
    other = local_standin()
    await other.start()
    try:
        for standin in (local, other):
            standin.set(tokens=1000, token_interval=0.05)
        # Least-outstanding alone: with prefix affinity the repeats of one prompt go to its pod (test_affinity.py).
        router = await start_router(route_config([local.url, other.url], affinity={"enabled": False}))
        stream = await client.post(router.v1("/chat/completions"), json=chat_body(stream=True))
        await stream.content.readline()
        busy, idle = (local, other) if local.counters.active == 1 else (other, local)
        for standin in (local, other):
            standin.set(tokens=1)
        for _ in range(6):
            assert (await post(client, router)).status == 200
        assert (busy.counters.started, idle.counters.started) == (1, 6)
        stream.close()
    finally:
        await other.stop()


async def test_requests_spread_over_equally_loaded_endpoints(
    local: OpenAIStandIn, start_router: StartRouter, client: aiohttp.ClientSession
) -> None:
    other = local_standin()
    await other.start()
    try:
        router = await start_router(route_config([local.url, other.url], affinity={"enabled": False}))
        for _ in range(6):
            await post(client, router)
        assert (local.counters.started, other.counters.started) == (3, 3)
    finally:
        await other.stop()


async def test_readyz_is_ready_while_local_is_down(
    start_router: StartRouter, client: aiohttp.ClientSession
) -> None:
    router = await start_router(route_config(refused_url(), refused_url()))
    async with client.get(f"{router.url}/readyz") as response:
        assert response.status == 200
        assert (await response.json())["status"] == "ready"


async def test_healthz_answers_ok(start_router: StartRouter, client: aiohttp.ClientSession) -> None:
    router = await start_router(route_config(refused_url()))
    async with client.get(f"{router.url}/healthz") as response:
        assert (response.status, await response.text()) == (200, "ok")


async def scrape(client: aiohttp.ClientSession, url: str) -> str:
    async with client.get(f"{url}/metrics") as response:
        assert response.headers["Content-Type"].startswith("text/plain; version=0.0.4")
        return await response.text()


async def test_metrics_count_requests_fallbacks_tokens_and_cost(
    local: OpenAIStandIn, cloud: OpenAIStandIn, start_router: StartRouter, client: aiohttp.ClientSession
) -> None:
    router = await start_router(route_config(local.url, cloud.url))
    await post(client, router)
    local.set(status=500)
    await post(client, router)
    text = await scrape(client, router.url)
    for line in (
        'localai_router_requests_total{upstream="local",code="200"} 1',
        'localai_router_requests_total{upstream="fallback",code="200"} 1',
        'localai_router_fallbacks_total{reason="status_5xx"} 1',
        'localai_router_tokens_total{upstream="local",kind="completion"} 3',
        'localai_router_tokens_total{upstream="fallback",kind="prompt"} 7',
        f"localai_router_fallback_estimated_cost_total {3 * 0.42 / 1e6!r}",
        f'localai_router_breaker_state{{endpoint="{local.url}"}} 0',
        'localai_router_time_to_first_byte_seconds_count{upstream="local"} 1',
        'localai_router_request_duration_seconds_bucket{upstream="fallback",le="+Inf"} 1',
    ):
        assert line in text.splitlines(), line


async def test_metrics_count_tokens_from_the_final_chunk_of_a_stream(
    local: OpenAIStandIn, start_router: StartRouter, client: aiohttp.ClientSession
) -> None:
    local.set(tokens=4)
    router = await start_router(route_config(local.url))
    # LocalAI v4.9.0 reports a stream's usage only in the trailer `stream_options.include_usage` asks for.
    body = {**chat_body(stream=True), "stream_options": {"include_usage": True}}
    async with client.post(router.v1("/chat/completions"), json=body) as response:
        await response.read()
    text = await scrape(client, router.url)
    assert 'localai_router_tokens_total{upstream="local",kind="completion"} 4' in text.splitlines()


async def test_metrics_text_parses_as_prometheus_exposition_format(
    local: OpenAIStandIn, cloud: OpenAIStandIn, start_router: StartRouter, client: aiohttp.ClientSession
) -> None:
    parser = pytest.importorskip("prometheus_client.parser")
    router = await start_router(
        route_config(local.url, cloud.url, rateLimit={"requestsPerSecond": 1, "burst": 1})
    )
    await asyncio.gather(post(client, router), post(client, router))
    families = {f.name: f for f in parser.text_string_to_metric_families(await scrape(client, router.url))}
    assert families["localai_router_requests"].type == "counter"
    assert families["localai_router_time_to_first_byte_seconds"].type == "histogram"
    assert families["localai_router_breaker_state"].type == "gauge"
    assert families["localai_router_rate_limited"].samples[0].value == 1


async def test_breaker_state_metric_reports_open(
    start_router: StartRouter, cloud: OpenAIStandIn, client: aiohttp.ClientSession
) -> None:
    dead = refused_url()
    router = await start_router(route_config(dead, cloud.url, circuitBreaker={"failureThreshold": 1}))
    await post(client, router)

    async def reports_open() -> bool:
        return f'localai_router_breaker_state{{endpoint="{dead}"}} 1' in await scrape(client, router.url)

    await eventually(reports_open, 5, "the breaker gauge to report open")

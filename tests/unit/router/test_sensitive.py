"""Sensitive routes never leave the cluster: local errors and 503s say why there is no fallback."""

from __future__ import annotations

import aiohttp

from localai_operator.testing.standins import OpenAIStandIn, refused_url
from tests.unit.router.conftest import StartRouter, post, route_config


async def test_sensitive_route_returns_the_local_error_saying_the_route_is_sensitive(
    local: OpenAIStandIn, start_router: StartRouter, client: aiohttp.ClientSession
) -> None:
    local.set(status=500)
    router = await start_router(route_config(local.url, sensitive=True))
    answer = await post(client, router)
    assert (answer.status, answer.served_by) == (500, "router")
    error = answer.json()["error"]
    assert "sensitive" in error["message"] and "local stand-in error 500" in error["message"]
    assert error["code"] == "sensitive_route_no_fallback"


async def test_sensitive_route_answers_503_when_local_is_unreachable(
    start_router: StartRouter, client: aiohttp.ClientSession
) -> None:
    router = await start_router(route_config(refused_url(), sensitive=True))
    answer = await post(client, router)
    assert (answer.status, answer.served_by) == (503, "router")
    assert "sensitive" in answer.json()["error"]["message"]


async def test_sensitive_route_answers_503_with_retry_after_when_the_breaker_is_open(
    start_router: StartRouter, client: aiohttp.ClientSession
) -> None:
    breaker = {"failureThreshold": 1, "openSeconds": 60}
    router = await start_router(route_config(refused_url(), sensitive=True, circuitBreaker=breaker))
    await post(client, router)
    answer = await post(client, router)
    assert answer.status == 503
    message = answer.json()["error"]["message"]
    assert "circuit breaker is open" in message and "sensitive" in message
    assert 1 <= int(answer.headers["Retry-After"]) <= 60


async def test_sensitive_route_waits_for_a_slow_local_instead_of_applying_the_first_token_budget(
    local: OpenAIStandIn, start_router: StartRouter, client: aiohttp.ClientSession
) -> None:
    # With nowhere to fall back to, abandoning a slow answer would only turn it into an error.
    local.set(delay_before_headers=0.5)
    router = await start_router(route_config(local.url, sensitive=True, firstTokenTimeoutMs=100))
    answer = await post(client, router)
    assert (answer.status, answer.served_by) == (200, "local")


async def test_route_without_fallback_says_no_fallback_is_configured(
    local: OpenAIStandIn, start_router: StartRouter, client: aiohttp.ClientSession
) -> None:
    local.set(status=503)
    router = await start_router(route_config(local.url))
    answer = await post(client, router)
    assert (answer.status, answer.served_by) == (503, "router")
    assert "no cloud fallback configured" in answer.json()["error"]["message"]

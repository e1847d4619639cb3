"""The README's router promises, one test each, with the real OpenAI SDK: sync and async, stream and not."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import openai
import pytest

from localai_operator.testing.standins import OpenAIStandIn, UnacceptingListener, refused_url
from tests.unit.router.conftest import (
    API_KEY,
    CLIENT_KEY,
    SDK_IDS,
    SDK_MODES,
    StartRouter,
    route_config,
    sdk_chat,
)

BUDGET = {"firstTokenTimeoutMs": 500}


def refused(local: OpenAIStandIn, cloud: str, opened: list[UnacceptingListener]) -> dict[str, Any]:
    return route_config(refused_url(), cloud)


def reset(local: OpenAIStandIn, cloud: str, opened: list[UnacceptingListener]) -> dict[str, Any]:
    local.set(reset=True)
    return route_config(local.url, cloud)


def connect_timeout(local: OpenAIStandIn, cloud: str, opened: list[UnacceptingListener]) -> dict[str, Any]:
    listener = UnacceptingListener()
    opened.append(listener)
    return route_config(listener.url, cloud, connectTimeoutMs=200)


def status_5xx(local: OpenAIStandIn, cloud: str, opened: list[UnacceptingListener]) -> dict[str, Any]:
    local.set(status=503)
    return route_config(local.url, cloud)


def status_429(local: OpenAIStandIn, cloud: str, opened: list[UnacceptingListener]) -> dict[str, Any]:
    local.set(status=429, retry_after="3")
    return route_config(local.url, cloud)


def redirect(local: OpenAIStandIn, cloud: str, opened: list[UnacceptingListener]) -> dict[str, Any]:
    local.set(redirect="http://127.0.0.1:9/elsewhere")
    return route_config(local.url, cloud)


def empty(local: OpenAIStandIn, cloud: str, opened: list[UnacceptingListener]) -> dict[str, Any]:
    local.set(empty_body=True)
    return route_config(local.url, cloud)


def in_stream_error(local: OpenAIStandIn, cloud: str, opened: list[UnacceptingListener]) -> dict[str, Any]:
    local.set(fail_after_tokens=0)
    return route_config(local.url, cloud)


def no_ready_pod(local: OpenAIStandIn, cloud: str, opened: list[UnacceptingListener]) -> dict[str, Any]:
    return route_config([], cloud, local_extra={"discovery": {"url": "http://p-pods.ns.invalid:8080/v1"}})


def breaker_open(local: OpenAIStandIn, cloud: str, opened: list[UnacceptingListener]) -> dict[str, Any]:
    # A breaker that opens on the first failure and stays open: the first request opens it, the next skips.
    local.set(status=500)
    return route_config(local.url, cloud, circuitBreaker={"failureThreshold": 1, "openSeconds": 600})


def late_first_token(local: OpenAIStandIn, cloud: str, opened: list[UnacceptingListener]) -> dict[str, Any]:
    local.set(delay_before_first_chunk=3)  # the role chunk is instant, as LocalAI's is
    return route_config(local.url, cloud, **BUDGET)


Arrange = Callable[[OpenAIStandIn, str, list[UnacceptingListener]], dict[str, Any]]
FALLS_BACK: dict[str, tuple[Arrange, str]] = {
    "refuses": (refused, "connect_error"),
    "resets": (reset, "reset"),
    "times out connecting": (connect_timeout, "connect_timeout"),
    "answers 5xx": (status_5xx, "status_5xx"),
    "answers 429": (status_429, "status_429"),
    "redirects": (redirect, "redirect"),
    "sends an empty answer": (empty, "empty_response"),
    "sends an error inside a 200 stream": (in_stream_error, "stream_error"),
    "has no ready pod": (no_ready_pod, "no_ready_endpoint"),
    "has an open breaker": (breaker_open, "breaker_open"),
    "has no first token within the budget": (late_first_token, "first_token_timeout"),
}


@pytest.mark.parametrize(("kind", "stream"), SDK_MODES, ids=SDK_IDS)
@pytest.mark.parametrize("when", list(FALLS_BACK))
async def test_falls_back_to_the_cloud_when_local(
    when: str, kind: str, stream: bool, local: OpenAIStandIn, cloud: OpenAIStandIn, start_router: StartRouter
) -> None:
    arrange, reason = FALLS_BACK[when]
    opened: list[UnacceptingListener] = []
    try:
        router = await start_router(arrange(local, cloud.url, opened), resolver=_nothing)
        if when == "has an open breaker":
            await sdk_chat(router, sync=kind == "sync", stream=stream)  # opens it
        reply = await sdk_chat(router, sync=kind == "sync", stream=stream)
    finally:
        for listener in opened:
            listener.close()
    assert (reply.served_by, reply.fallback_reason) == ("fallback", reason)
    assert reply.text == "cloud-token-0 cloud-token-1 cloud-token-2 "


async def _nothing(host: str, port: int) -> list[str]:
    return []


@pytest.mark.parametrize(("kind", "stream"), SDK_MODES, ids=SDK_IDS)
async def test_a_long_generation_that_started_in_time_is_never_cut(
    kind: str, stream: bool, local: OpenAIStandIn, cloud: OpenAIStandIn, start_router: StartRouter
) -> None:
    local.set(tokens=3, token_interval=0.8)
    router = await start_router(route_config(local.url, cloud.url, **BUDGET))
    reply = await sdk_chat(router, sync=kind == "sync", stream=stream)
    assert (reply.served_by, reply.text) == ("local", "local-token-0 local-token-1 local-token-2 ")
    assert reply.elapsed > 1.5 and cloud.counters.started == 0


@pytest.mark.parametrize(("kind", "stream"), SDK_MODES, ids=SDK_IDS)
async def test_other_4xx_go_back_to_the_client_and_never_reach_the_paid_api(
    kind: str, stream: bool, local: OpenAIStandIn, cloud: OpenAIStandIn, start_router: StartRouter
) -> None:
    local.set(status=400)
    router = await start_router(route_config(local.url, cloud.url))
    with pytest.raises(openai.BadRequestError) as refused_by_local:
        await sdk_chat(router, sync=kind == "sync", stream=stream)
    assert refused_by_local.value.response.headers["X-Served-By"] == "local"
    assert cloud.counters.started == 0


@pytest.mark.parametrize(("kind", "stream"), SDK_MODES, ids=SDK_IDS)
async def test_the_clients_own_credentials_never_leave_the_cluster(
    kind: str, stream: bool, cloud: OpenAIStandIn, start_router: StartRouter
) -> None:
    router = await start_router(route_config(refused_url(), cloud.url))
    reply = await sdk_chat(router, sync=kind == "sync", stream=stream, api_key=CLIENT_KEY)
    assert reply.served_by == "fallback"
    received = cloud.requests[-1].headers
    assert received["Authorization"] == f"Bearer {API_KEY}"
    assert not any(CLIENT_KEY in value for value in received.values())


@pytest.mark.parametrize(("kind", "stream"), SDK_MODES, ids=SDK_IDS)
async def test_the_cloud_gets_the_mapped_model_and_no_localai_only_field(
    kind: str, stream: bool, cloud: OpenAIStandIn, start_router: StartRouter
) -> None:
    router = await start_router(route_config(refused_url(), cloud.url))
    await sdk_chat(
        router, sync=kind == "sync", stream=stream, extra_body={"top_k": 40, "mirostat": 2, "grammar": "x"}
    )
    sent = cloud.requests[-1].json()
    assert sent["model"] == "deepseek-v3.2"
    assert not {"top_k", "mirostat", "grammar"} & set(sent)


@pytest.mark.parametrize(("kind", "stream"), SDK_MODES, ids=SDK_IDS)
async def test_a_model_local_does_not_list_but_the_cloud_does_goes_straight_to_the_cloud(
    kind: str, stream: bool, local: OpenAIStandIn, cloud: OpenAIStandIn, start_router: StartRouter
) -> None:
    cloud.models = ("deepseek-v3.2", "gpt-4o-mini")
    router = await start_router(route_config(local.url, cloud.url))
    await router.router.listing.lists(router.router.route)  # what the background refresh does
    reply = await sdk_chat(router, sync=kind == "sync", stream=stream, model="gpt-4o-mini")
    assert (reply.served_by, reply.fallback_reason) == ("fallback", "model_not_local")
    assert local.counters.started == 0


@pytest.mark.parametrize(("kind", "stream"), SDK_MODES, ids=SDK_IDS)
async def test_sensitive_routes_never_leave_the_cluster(
    kind: str, stream: bool, local: OpenAIStandIn, start_router: StartRouter
) -> None:
    local.set(status=500)
    router = await start_router(route_config(local.url, sensitive=True))
    with pytest.raises(openai.InternalServerError) as failed:
        await sdk_chat(router, sync=kind == "sync", stream=stream)
    assert failed.value.response.headers["X-Served-By"] == "router"
    assert "sensitive" in str(failed.value)


@pytest.mark.parametrize(("kind", "stream"), SDK_MODES, ids=SDK_IDS)
async def test_every_response_says_who_served_it(
    kind: str, stream: bool, local: OpenAIStandIn, cloud: OpenAIStandIn, start_router: StartRouter
) -> None:
    router = await start_router(
        route_config(local.url, cloud.url, rateLimit={"requestsPerSecond": 0.1, "burst": 2})
    )
    assert (await sdk_chat(router, sync=kind == "sync", stream=stream)).served_by == "local"
    local.set(status=500)
    assert (await sdk_chat(router, sync=kind == "sync", stream=stream)).served_by == "fallback"
    with pytest.raises(openai.RateLimitError) as limited:
        await sdk_chat(router, sync=kind == "sync", stream=stream)
    assert limited.value.response.headers["X-Served-By"] == "router"
    assert limited.value.type == "rate_limit_error"  # an OpenAI error object

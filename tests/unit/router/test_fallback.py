"""Local first, the cloud on each failure the issue names, never on a client error."""

from __future__ import annotations

import aiohttp
import pytest

from localai_operator.testing.standins import OpenAIStandIn, UnacceptingListener, refused_url
from tests.unit.router.conftest import (
    API_KEY,
    CLIENT_KEY,
    DEFAULT_CLOUD_MODEL,
    LOCAL_MODEL,
    MAPPED_CLOUD_MODEL,
    StartRouter,
    chat_body,
    post,
    route_config,
)


async def test_healthy_local_answers_and_cloud_is_not_called(
    local: OpenAIStandIn, cloud: OpenAIStandIn, start_router: StartRouter, client: aiohttp.ClientSession
) -> None:
    router = await start_router(route_config(local.url, cloud.url))
    answer = await post(client, router)
    assert answer.status == 200
    assert answer.served_by == "local"
    assert "local-token-0" in answer.json()["choices"][0]["message"]["content"]
    assert cloud.counters.started == 0


async def test_connection_refused_falls_back_to_cloud(
    cloud: OpenAIStandIn, start_router: StartRouter, client: aiohttp.ClientSession
) -> None:
    router = await start_router(route_config(refused_url(), cloud.url))
    answer = await post(client, router)
    assert (answer.status, answer.served_by) == (200, "fallback")
    assert answer.headers["X-Fallback-Reason"] == "connect_error"
    assert "cloud-token-0" in answer.json()["choices"][0]["message"]["content"]


async def test_connection_reset_falls_back_to_cloud(
    local: OpenAIStandIn, cloud: OpenAIStandIn, start_router: StartRouter, client: aiohttp.ClientSession
) -> None:
    local.set(reset=True)
    router = await start_router(route_config(local.url, cloud.url))
    answer = await post(client, router)
    assert (answer.status, answer.served_by) == (200, "fallback")
    assert answer.headers["X-Fallback-Reason"] == "reset"
    assert local.counters.started == 1


async def test_connect_timeout_falls_back_to_cloud(
    cloud: OpenAIStandIn, start_router: StartRouter, client: aiohttp.ClientSession
) -> None:
    listener = UnacceptingListener()
    try:
        router = await start_router(route_config(listener.url, cloud.url, connectTimeoutMs=200))
        answer = await post(client, router)
    finally:
        listener.close()
    assert (answer.status, answer.served_by) == (200, "fallback")
    assert answer.headers["X-Fallback-Reason"] == "connect_timeout"
    # The connect timeout (0.2 s) decided, not the relaxed first-byte budget (10 s).
    assert answer.elapsed < 5


@pytest.mark.parametrize("status", [500, 502, 503])
async def test_local_5xx_falls_back_to_cloud(
    status: int,
    local: OpenAIStandIn,
    cloud: OpenAIStandIn,
    start_router: StartRouter,
    client: aiohttp.ClientSession,
) -> None:
    local.set(status=status)
    router = await start_router(route_config(local.url, cloud.url))
    answer = await post(client, router)
    assert (answer.status, answer.served_by) == (200, "fallback")
    assert answer.headers["X-Fallback-Reason"] == "status_5xx"


async def test_local_429_falls_back_to_cloud(
    local: OpenAIStandIn, cloud: OpenAIStandIn, start_router: StartRouter, client: aiohttp.ClientSession
) -> None:
    local.set(status=429, retry_after="5")
    router = await start_router(route_config(local.url, cloud.url))
    answer = await post(client, router)
    assert (answer.status, answer.served_by) == (200, "fallback")
    assert answer.headers["X-Fallback-Reason"] == "status_429"


async def test_request_timeout_of_a_non_stream_request_falls_back_to_cloud(
    local: OpenAIStandIn, cloud: OpenAIStandIn, start_router: StartRouter, client: aiohttp.ClientSession
) -> None:
    # The first token arrives in time, the rest does not: only the request timeout fires, and as nothing
    # reached the client yet, the cloud still answers.
    local.set(tokens=3, token_interval=10)
    router = await start_router(route_config(local.url, cloud.url, requestTimeoutSeconds=1.0))
    answer = await post(client, router)
    assert (answer.status, answer.served_by) == (200, "fallback")
    assert answer.headers["X-Fallback-Reason"] == "request_timeout"
    assert answer.elapsed < 5


async def test_no_first_byte_within_budget_falls_back_to_cloud(
    local: OpenAIStandIn, cloud: OpenAIStandIn, start_router: StartRouter, client: aiohttp.ClientSession
) -> None:
    local.set(hang=True)
    router = await start_router(route_config(local.url, cloud.url, firstTokenTimeoutMs=300))
    answer = await post(client, router)
    assert (answer.status, answer.served_by) == (200, "fallback")
    assert answer.headers["X-Fallback-Reason"] == "first_token_timeout"
    assert 0.3 <= answer.elapsed < 5


async def test_stream_without_first_chunk_within_budget_falls_back_to_cloud(
    local: OpenAIStandIn, cloud: OpenAIStandIn, start_router: StartRouter, client: aiohttp.ClientSession
) -> None:
    # LocalAI-like: the headers go out at once, the first token is late.
    local.set(delay_before_first_chunk=30)
    router = await start_router(route_config(local.url, cloud.url, firstTokenTimeoutMs=300))
    answer = await post(client, router, body=chat_body(stream=True))
    assert (answer.status, answer.served_by) == (200, "fallback")
    assert answer.headers["X-Fallback-Reason"] == "first_token_timeout"
    assert b"cloud-token-0" in answer.body and b"local-token" not in answer.body


async def test_local_4xx_is_returned_to_the_client_without_fallback(
    local: OpenAIStandIn, cloud: OpenAIStandIn, start_router: StartRouter, client: aiohttp.ClientSession
) -> None:
    local.set(status=400)
    router = await start_router(route_config(local.url, cloud.url))
    answer = await post(client, router)
    assert (answer.status, answer.served_by) == (400, "local")
    assert "local stand-in error 400" in answer.json()["error"]["message"]
    assert cloud.counters.started == 0


async def test_a_body_that_is_not_json_is_refused_by_the_router_and_sent_nowhere(
    local: OpenAIStandIn, cloud: OpenAIStandIn, start_router: StartRouter, client: aiohttp.ClientSession
) -> None:
    router = await start_router(route_config(local.url, cloud.url))
    answer = await post(
        client, router, data=b"this is not JSON", headers={"Content-Type": "application/json"}
    )
    assert (answer.status, answer.served_by) == (400, "router")
    assert "JSON object" in answer.json()["error"]["message"]
    assert (local.counters.started, cloud.counters.started) == (0, 0)


async def test_a_request_makes_at_most_one_local_and_one_cloud_attempt(
    local: OpenAIStandIn, cloud: OpenAIStandIn, start_router: StartRouter, client: aiohttp.ClientSession
) -> None:
    local.set(status=500)
    cloud.set(status=503)
    router = await start_router(route_config(local.url, cloud.url))
    answer = await post(client, router)
    assert (answer.status, answer.served_by) == (503, "fallback")
    assert (local.counters.started, cloud.counters.started) == (1, 1)


async def test_cloud_unreachable_after_local_failure_answers_502(
    local: OpenAIStandIn, start_router: StartRouter, client: aiohttp.ClientSession
) -> None:
    local.set(status=500)
    router = await start_router(route_config(local.url, refused_url()))
    answer = await post(client, router)
    assert (answer.status, answer.served_by) == (502, "router")
    assert answer.headers["X-Fallback-Reason"] == "status_5xx"
    message = answer.json()["error"]["message"]
    assert "local" in message and "cloud fallback failed" in message


async def test_cloud_request_maps_the_model_through_model_map(
    cloud: OpenAIStandIn, start_router: StartRouter, client: aiohttp.ClientSession
) -> None:
    router = await start_router(route_config(refused_url(), cloud.url))
    await post(client, router, body=chat_body(model=LOCAL_MODEL))
    sent = cloud.requests[-1].json()
    assert sent["model"] == MAPPED_CLOUD_MODEL
    assert sent["messages"] == chat_body()["messages"]


async def test_cloud_request_uses_default_model_for_unmapped_models(
    cloud: OpenAIStandIn, start_router: StartRouter, client: aiohttp.ClientSession
) -> None:
    router = await start_router(route_config(refused_url(), cloud.url))
    await post(client, router, body=chat_body(model="some-other-local-model"))
    assert cloud.requests[-1].json()["model"] == DEFAULT_CLOUD_MODEL


async def test_client_authorization_never_reaches_the_cloud(
    cloud: OpenAIStandIn, start_router: StartRouter, client: aiohttp.ClientSession
) -> None:
    router = await start_router(route_config(refused_url(), cloud.url))
    client_headers = {
        "Authorization": f"Bearer {CLIENT_KEY}",
        "X-Api-Key": CLIENT_KEY,
        "Cookie": f"s={CLIENT_KEY}",
    }
    answer = await post(client, router, headers=client_headers)
    assert (answer.status, answer.served_by) == (200, "fallback")
    received = cloud.requests[-1].headers
    assert received["Authorization"] == f"Bearer {API_KEY}"
    assert not any(CLIENT_KEY in value for value in received.values())


async def test_local_receives_the_clients_authorization_and_no_hop_by_hop_headers(
    local: OpenAIStandIn, cloud: OpenAIStandIn, start_router: StartRouter, client: aiohttp.ClientSession
) -> None:
    # A LocalAI can check its own API key; the cloud key is never sent there.
    router = await start_router(route_config(local.url, cloud.url))
    await post(client, router, headers={"Authorization": f"Bearer {CLIENT_KEY}", "Proxy-Authorization": "x"})
    received = local.requests[-1].headers
    assert received["Authorization"] == f"Bearer {CLIENT_KEY}"
    assert "Proxy-Authorization" not in received
    assert not any(API_KEY in value for value in received.values())


@pytest.mark.parametrize(
    ("path", "body"),
    [
        ("/completions", {"model": LOCAL_MODEL, "prompt": "hello"}),
        ("/embeddings", {"model": LOCAL_MODEL, "input": "hello"}),
    ],
)
async def test_completions_and_embeddings_fall_back_like_chat(
    path: str,
    body: dict[str, str],
    cloud: OpenAIStandIn,
    start_router: StartRouter,
    client: aiohttp.ClientSession,
) -> None:
    router = await start_router(route_config(refused_url(), cloud.url))
    answer = await post(client, router, path, body=body)
    assert (answer.status, answer.served_by) == (200, "fallback")
    assert cloud.requests[-1].path == f"/v1{path}"

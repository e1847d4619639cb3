"""SSE relayed chunk by chunk: incremental arrival, mid-stream failure, client disconnect, 1,000 streams."""

from __future__ import annotations

import asyncio
import json
import resource
import time
from typing import Any

import aiohttp

from localai_operator.testing.standins import OpenAIStandIn, refused_url
from tests.unit.router.conftest import RunningRouter, StartRouter, chat_body, eventually, route_config


async def read_events(
    client: aiohttp.ClientSession, router: RunningRouter, body: dict[str, Any] | None = None
) -> tuple[aiohttp.ClientResponse, list[tuple[float, bytes]]]:
    """The response and each SSE `data:` line with its arrival time (seconds after the request)."""
    started = time.monotonic()
    events: list[tuple[float, bytes]] = []
    async with client.post(router.v1("/chat/completions"), json=body or chat_body(stream=True)) as response:
        async for line in response.content:
            if line.startswith(b"data:"):
                events.append((time.monotonic() - started, line.strip()))
    return response, events


def tokens_in(events: list[tuple[float, bytes]]) -> list[str]:
    texts = []
    for _, line in events:
        data = line[len(b"data:") :].strip()
        if data != b"[DONE]":
            payload = json.loads(data)
            if "choices" in payload and payload["choices"][0]["delta"].get("content"):
                texts.append(payload["choices"][0]["delta"]["content"].strip())
    return texts


async def test_stream_arrives_incrementally(
    local: OpenAIStandIn, cloud: OpenAIStandIn, start_router: StartRouter, client: aiohttp.ClientSession
) -> None:
    local.set(tokens=5, token_interval=0.25)
    router = await start_router(route_config(local.url, cloud.url))
    response, events = await read_events(client, router)
    assert response.headers["X-Served-By"] == "local"
    assert response.headers["Content-Type"].startswith("text/event-stream")
    assert tokens_in(events) == [f"local-token-{i}" for i in range(5)]
    # LocalAI sends the role event and a `{"content":null}` one with the first token, two more after the text.
    times = [at for at, line in events if b'"content":"local-token-' in line]
    first_token, last_token = times[0], times[-1]
    # Generation takes 4 x 0.25 s; a buffering relay would deliver every token at the end.
    assert last_token - first_token >= 0.6
    assert events[-1][1] == b"data: [DONE]"


async def test_fallback_stream_from_the_cloud_is_relayed(
    cloud: OpenAIStandIn, start_router: StartRouter, client: aiohttp.ClientSession
) -> None:
    router = await start_router(route_config(refused_url(), cloud.url))
    response, events = await read_events(client, router)
    assert response.headers["X-Served-By"] == "fallback"
    assert tokens_in(events) == [f"cloud-token-{i}" for i in range(3)]


async def test_mid_stream_local_failure_ends_the_stream_with_an_error_event_and_no_fallback(
    local: OpenAIStandIn, cloud: OpenAIStandIn, start_router: StartRouter, client: aiohttp.ClientSession
) -> None:
    local.set(tokens=5, abort_after_tokens=2)
    router = await start_router(route_config(local.url, cloud.url))
    response, events = await read_events(client, router)
    assert response.status == 200 and response.headers["X-Served-By"] == "local"
    assert tokens_in(events[:-1]) == ["local-token-0", "local-token-1"]
    last = json.loads(events[-1][1][len(b"data:") :])
    assert last["error"]["code"] == "upstream_stream_interrupted"
    assert "incomplete" in last["error"]["message"]
    assert all(b"[DONE]" not in line for _, line in events)
    assert cloud.counters.started == 0


async def test_client_disconnect_mid_stream_cancels_the_upstream_request(
    local: OpenAIStandIn, start_router: StartRouter, client: aiohttp.ClientSession
) -> None:
    local.set(tokens=1000, token_interval=0.05)
    router = await start_router(route_config(local.url))
    response = await client.post(router.v1("/chat/completions"), json=chat_body(stream=True))
    line = b""
    while not line.startswith(b"data: {") or b"local-token-0" not in line:
        line = await response.content.readline()
    response.close()
    await eventually(
        lambda: local.counters.cancelled == 1, 5, "the stand-in's stream handler to be cancelled"
    )
    assert local.counters.completed == 0 and local.counters.active == 0


async def test_client_disconnect_before_the_first_byte_cancels_upstream_and_skips_the_cloud(
    local: OpenAIStandIn, cloud: OpenAIStandIn, start_router: StartRouter, client: aiohttp.ClientSession
) -> None:
    local.set(hang=True)
    router = await start_router(route_config(local.url, cloud.url))
    request = asyncio.ensure_future(client.post(router.v1("/chat/completions"), json=chat_body()))
    await eventually(lambda: local.counters.active == 1, 5, "the request to reach local")
    request.cancel()
    await eventually(lambda: local.counters.cancelled == 1, 5, "the stand-in's handler to be cancelled")
    assert cloud.counters.started == 0


async def test_a_thousand_concurrent_streams_complete(
    local: OpenAIStandIn, cloud: OpenAIStandIn, start_router: StartRouter, client: aiohttp.ClientSession
) -> None:
    # Each stream holds four sockets in this process (client and router ends, two hops).
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (max(soft, min(8192, hard)), hard))
    local.set(tokens=3, token_interval=0.05)
    router = await start_router(route_config(local.url, cloud.url))

    async def one() -> list[str]:
        _, events = await read_events(client, router)
        return tokens_in(events)

    try:
        results = await asyncio.wait_for(asyncio.gather(*(one() for _ in range(1000))), timeout=120)
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
    assert all(tokens == ["local-token-0", "local-token-1", "local-token-2"] for tokens in results)
    assert local.counters.completed == 1000
    assert cloud.counters.started == 0

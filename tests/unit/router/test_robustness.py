"""What the router does with odd input and odd upstreams: its own errors as OpenAI JSON, bodies that nest or
compress, empty answers, redirects, keys with whitespace, slow clients, and what the cloud never gets."""

from __future__ import annotations

import asyncio
import gzip
import json
import logging
import socket
import time

import aiohttp
import pytest

from localai_operator.constants import FALLBACK_API_KEY_ENV
from localai_operator.testing.standins import OpenAIStandIn, refused_url
from tests.unit.router.conftest import (
    API_KEY,
    LOCAL_MODEL,
    StartRouter,
    chat_body,
    eventually,
    post,
    route_config,
    scrape,
    sdk_chat,
)


async def test_a_body_over_max_request_bytes_is_refused_413_as_json(
    local: OpenAIStandIn, start_router: StartRouter, client: aiohttp.ClientSession
) -> None:
    router = await start_router(route_config(local.url, maxRequestBytes=2048))
    answer = await post(
        client, router, body={"model": LOCAL_MODEL, "messages": [{"role": "user", "content": "x" * 4096}]}
    )
    assert (answer.status, answer.served_by) == (413, "router")
    assert answer.json()["error"]["code"] == "request_too_large"
    assert local.counters.started == 0


async def test_a_chunked_body_over_max_request_bytes_is_refused_413(
    local: OpenAIStandIn, start_router: StartRouter, client: aiohttp.ClientSession
) -> None:
    router = await start_router(route_config(local.url, maxRequestBytes=2048))

    async def chunks():  # type: ignore[no-untyped-def]
        for _ in range(8):
            yield b" " * 1024

    async with client.post(
        router.v1("/chat/completions"), data=chunks(), headers={"Content-Type": "application/json"}
    ) as response:
        assert (response.status, response.headers["X-Served-By"]) == (413, "router")


async def test_a_gzip_bomb_is_refused_413(
    local: OpenAIStandIn, start_router: StartRouter, client: aiohttp.ClientSession
) -> None:
    router = await start_router(route_config(local.url, maxRequestBytes=64 * 1024))
    bomb = gzip.compress(b'{"model": "m", "pad": "' + b"0" * 20_000_000 + b'"}')
    answer = await post(
        client, router, data=bomb, headers={"Content-Type": "application/json", "Content-Encoding": "gzip"}
    )
    assert (answer.status, answer.served_by) == (413, "router")


async def test_a_rate_limited_request_is_refused_429_as_json(
    local: OpenAIStandIn, start_router: StartRouter, client: aiohttp.ClientSession
) -> None:
    router = await start_router(route_config(local.url, rateLimit={"requestsPerSecond": 0.1, "burst": 1}))
    await post(client, router)
    refused = await post(client, router)
    assert (refused.status, refused.served_by) == (429, "router")
    assert refused.json()["error"]["type"] == "rate_limit_error" and int(refused.headers["Retry-After"]) >= 1


async def test_an_unknown_path_outside_v1_is_refused_404_as_json(
    local: OpenAIStandIn, start_router: StartRouter, client: aiohttp.ClientSession
) -> None:
    router = await start_router(route_config(local.url))
    for method, path in (("GET", "/"), ("POST", "/chat/completions"), ("POST", "/readyz")):
        async with client.request(method, router.url + path) as response:
            assert (response.status, response.headers["X-Served-By"]) == (404, "router"), (method, path)
            assert (await response.json())["error"]["code"] == "unknown_endpoint"


async def test_a_200000_deep_nested_body_is_answered_400_not_a_bare_500(
    local: OpenAIStandIn, start_router: StartRouter, client: aiohttp.ClientSession
) -> None:
    router = await start_router(route_config(local.url))
    deep = b'{"model": "m", "messages": ' + b"[" * 200_000 + b"]" * 200_000 + b"}"
    answer = await post(client, router, data=deep, headers={"Content-Type": "application/json"})
    assert (answer.status, answer.served_by) == (400, "router")
    assert "nests" in answer.json()["error"]["message"]


async def test_json_sent_as_form_data_is_still_routed_as_json(
    local: OpenAIStandIn, cloud: OpenAIStandIn, start_router: StartRouter, client: aiohttp.ClientSession
) -> None:
    # What `curl -d '{...}'` sends: the body is JSON, the Content-Type says form data.
    local.set(status=500)
    router = await start_router(route_config(local.url, cloud.url))
    data = json.dumps(chat_body()).encode()
    answer = await post(
        client, router, data=data, headers={"Content-Type": "application/x-www-form-urlencoded"}
    )
    assert answer.served_by == "fallback"
    assert cloud.requests[-1].json()["model"] == "deepseek-v3.2"


async def test_a_gzip_request_reaches_local_decoded_and_without_content_encoding(
    local: OpenAIStandIn, start_router: StartRouter, client: aiohttp.ClientSession
) -> None:
    router = await start_router(route_config(local.url))
    data = gzip.compress(json.dumps(chat_body()).encode())
    answer = await post(
        client, router, data=data, headers={"Content-Type": "application/json", "Content-Encoding": "gzip"}
    )
    assert (answer.status, answer.served_by) == (200, "local")
    received = local.requests[-1]
    assert "Content-Encoding" not in received.headers
    assert received.json()["messages"] == chat_body()["messages"]


@pytest.mark.parametrize(
    ("path", "body"),
    [
        ("/chat/completions", chat_body()),
        ("/embeddings", {"model": LOCAL_MODEL, "input": "hello"}),
    ],
)
async def test_an_empty_200_from_local_falls_back(
    path: str,
    body: dict[str, object],
    local: OpenAIStandIn,
    cloud: OpenAIStandIn,
    start_router: StartRouter,
    client: aiohttp.ClientSession,
) -> None:
    local.set(empty_body=True)
    router = await start_router(route_config(local.url, cloud.url))
    answer = await post(client, router, path, body=body)
    assert (answer.status, answer.served_by, answer.headers["X-Fallback-Reason"]) == (
        200,
        "fallback",
        "empty_response",
    )


async def test_an_empty_200_from_the_cloud_is_a_502(
    cloud: OpenAIStandIn, start_router: StartRouter, client: aiohttp.ClientSession
) -> None:
    cloud.set(empty_body=True)
    router = await start_router(route_config(refused_url(), cloud.url))
    answer = await post(client, router, "/embeddings", body={"model": LOCAL_MODEL, "input": "x"})
    assert (answer.status, answer.served_by) == (502, "router")
    assert "empty" in answer.json()["error"]["message"]


async def test_the_clients_query_string_never_reaches_the_cloud(
    cloud: OpenAIStandIn, local: OpenAIStandIn, start_router: StartRouter, client: aiohttp.ClientSession
) -> None:
    router = await start_router(route_config(local.url, cloud.url))
    async with client.post(
        router.v1("/chat/completions?api-version=2024&token=sk-leak"), json=chat_body()
    ) as r:
        assert r.headers["X-Served-By"] == "local"
    assert local.requests[-1].query == "api-version=2024&token=sk-leak"
    local.set(status=500)
    async with client.post(
        router.v1("/chat/completions?api-version=2024&token=sk-leak"), json=chat_body()
    ) as r:
        assert r.headers["X-Served-By"] == "fallback"
    assert cloud.requests[-1].query == ""


async def test_localai_only_fields_never_reach_the_cloud_and_the_rest_arrives_byte_for_byte(
    cloud: OpenAIStandIn, start_router: StartRouter, client: aiohttp.ClientSession
) -> None:
    router = await start_router(route_config(refused_url(), cloud.url))
    body = (
        b'{"model": "mistral-7b-instruct", "top_k": 40, "messages": [{"role": "user", "content": "h\\u00e9"}],'
        b' "mirostat": 2, "temperature": 0.25, "grammar": "root ::= x", "repeat_penalty": 1.1, "n": 1}'
    )
    answer = await post(client, router, data=body, headers={"Content-Type": "application/json"})
    assert answer.served_by == "fallback"
    sent = cloud.requests[-1].body
    assert sent == (
        b'{"model": "deepseek-v3.2","messages": [{"role": "user", "content": "h\\u00e9"}],'
        b'"temperature": 0.25,"n": 1}'
    )


async def test_local_keeps_localai_only_fields(
    local: OpenAIStandIn, cloud: OpenAIStandIn, start_router: StartRouter, client: aiohttp.ClientSession
) -> None:
    router = await start_router(route_config(local.url, cloud.url))
    await post(client, router, body={**chat_body(), "top_k": 40, "grammar": "root ::= x"})
    received = local.requests[-1].json()
    assert (received["top_k"], received["grammar"]) == (40, "root ::= x")


async def test_a_redirect_from_local_is_not_followed_and_falls_back(
    local: OpenAIStandIn, cloud: OpenAIStandIn, start_router: StartRouter, client: aiohttp.ClientSession
) -> None:
    elsewhere = OpenAIStandIn(name="elsewhere")
    await elsewhere.start()
    try:
        local.set(redirect=elsewhere.url + "/chat/completions")
        router = await start_router(route_config(local.url, cloud.url))
        answer = await post(client, router)
    finally:
        await elsewhere.stop()
    assert (answer.served_by, answer.headers["X-Fallback-Reason"]) == ("fallback", "redirect")
    assert elsewhere.counters.started == 0


async def test_a_redirect_from_the_cloud_is_not_followed_and_answers_502_naming_it(
    cloud: OpenAIStandIn, start_router: StartRouter, client: aiohttp.ClientSession
) -> None:
    cloud.set(redirect="https://attacker.example/v1/chat/completions")
    router = await start_router(route_config(refused_url(), cloud.url))
    answer = await post(client, router)
    assert (answer.status, answer.served_by) == (502, "router")
    assert "attacker.example" in answer.json()["error"]["message"]


async def test_a_fallback_key_ending_in_a_newline_works(
    cloud: OpenAIStandIn, start_router: StartRouter
) -> None:
    router = await start_router(
        route_config(refused_url(), cloud.url), env={FALLBACK_API_KEY_ENV: API_KEY + "\n"}
    )
    reply = await sdk_chat(router, sync=False, stream=False)
    assert reply.served_by == "fallback"
    assert cloud.requests[-1].headers["Authorization"] == f"Bearer {API_KEY}"


async def test_an_unusable_fallback_key_is_reported_at_start_and_in_readyz_not_per_request(
    cloud: OpenAIStandIn,
    start_router: StartRouter,
    client: aiohttp.ClientSession,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.ERROR)
    router = await start_router(
        route_config(refused_url(), cloud.url), env={FALLBACK_API_KEY_ENV: "sk-one sk-two"}
    )
    assert "contains whitespace" in caplog.text and "sk-one" not in caplog.text
    async with client.get(f"{router.url}/readyz") as response:
        ready = await response.json()
    assert response.status == 200 and ready["fallback"] is False
    assert any("LOCALAI_OPERATOR_FALLBACK_API_KEY" in p for p in ready["problems"])
    answer = await post(client, router)
    assert (answer.status, answer.served_by) == (503, "router")
    assert "fallback" in answer.json()["error"]["message"] and "disabled" in answer.json()["error"]["message"]
    assert cloud.counters.started == 0


async def test_a_client_that_never_finishes_its_headers_is_disconnected(
    local: OpenAIStandIn, start_router: StartRouter
) -> None:
    router = await start_router(route_config(local.url, server={"headerTimeoutSeconds": 0.5}))
    port = int(router.url.rsplit(":", 1)[1])
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\n")  # and nothing more
        await writer.drain()
        started = time.monotonic()
        assert await asyncio.wait_for(reader.read(), 10) == b""
        assert time.monotonic() - started < 5
    finally:
        writer.close()


async def test_a_large_non_stream_answer_is_relayed_as_it_arrives_not_held_whole(
    local: OpenAIStandIn, start_router: StartRouter, client: aiohttp.ClientSession
) -> None:
    # 8 MB of embeddings sent in two halves 2 s apart: the client gets the first half before the second exists.
    local.set(answer_padding=8_000_000, body_stall=2)
    router = await start_router(route_config(local.url))
    started = time.monotonic()
    async with client.post(router.v1("/chat/completions"), json=chat_body()) as response:
        first = await response.content.read(1024 * 1024)
        first_at = time.monotonic() - started
        rest = await response.read()
    assert response.headers["X-Served-By"] == "local"
    assert first_at < 1.5
    assert json.loads(first + rest)["choices"][0]["message"]["content"].startswith("local-token-0")


async def test_bodies_beyond_the_buffer_wait_for_room_and_all_complete(
    local: OpenAIStandIn, start_router: StartRouter, client: aiohttp.ClientSession
) -> None:
    local.set(delay_before_headers=0.3)
    router = await start_router(route_config(local.url, server={"bodyBufferBytes": 1024 * 1024}))
    big = {"model": LOCAL_MODEL, "messages": [{"role": "user", "content": "x" * 400_000}]}
    answers = await asyncio.gather(*(post(client, router, body=big) for _ in range(6)))
    assert [a.status for a in answers] == [200] * 6
    lines = (await scrape(client, router)).splitlines()
    assert any(
        line.startswith("localai_router_buffer_waits_total ") and not line.endswith(" 0") for line in lines
    )
    await eventually(lambda: router.router.buffer.used == 0, 5, "the buffer to be empty again")


async def test_a_client_that_sends_half_a_body_and_stops_releases_its_buffer_share(
    local: OpenAIStandIn, start_router: StartRouter
) -> None:
    router = await start_router(route_config(local.url, requestTimeoutSeconds=0.5))
    port = int(router.url.rsplit(":", 1)[1])
    with socket.create_connection(("127.0.0.1", port)) as sock:
        sock.sendall(
            b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            b"Content-Length: 100000\r\n\r\n" + b" " * 1000
        )
        await eventually(lambda: router.router.buffer.used == 100000, 5, "the body's share to be reserved")
        await eventually(
            lambda: router.router.buffer.used == 0, 10, "the share to be released after the timeout"
        )

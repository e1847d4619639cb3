"""Bytes in, bytes out: the query string reaches local exactly as sent (never the cloud), the cloud's response
headers pass an allow-list, an invalid-UTF-8 model is a 400, and every Connection header line is honoured."""

from __future__ import annotations

import asyncio

import aiohttp

from localai_operator.router.upstream import cloud_header_allowed
from localai_operator.testing.standins import OpenAIStandIn, refused_url
from tests.unit.router.conftest import StartRouter, route_config, sdk_client


async def test_the_query_string_reaches_local_byte_for_byte(
    local: OpenAIStandIn, start_router: StartRouter, client: aiohttp.ClientSession
) -> None:
    local.models = (*local.models, "m")  # LocalAI answers 404 for a model it does not serve
    router = await start_router(route_config(local.url))
    url = router.v1("/chat/completions") + "?q=a%20b%23c%25d&x=%2525"
    async with client.post(aiohttp.client.URL(url, encoded=True), json={"model": "m"}) as response:
        assert response.status == 200
    assert local.requests[-1].query == "q=a%20b%23c%25d&x=%2525"


async def test_a_cloud_set_cookie_and_account_headers_never_reach_the_client(
    cloud: OpenAIStandIn, start_router: StartRouter
) -> None:
    cloud.set(
        headers=(
            ("Set-Cookie", "__cf_bm=provider-session; HttpOnly"),
            ("openai-organization", "the-paying-account"),
            ("x-ratelimit-remaining-requests", "99"),
            ("x-request-id", "req-123"),
            ("Retry-After", "1"),
        )
    )
    router = await start_router(route_config(refused_url(), cloud.url))
    for stream in (False, True):
        async with sdk_client(router, sync=False) as sdk:
            raw = await sdk.chat.completions.with_raw_response.create(
                model="m", messages=[{"role": "user", "content": "hi"}], stream=stream
            )
            headers = raw.headers
        assert headers["x-served-by"] == "fallback"
        assert "set-cookie" not in headers and "openai-organization" not in headers
        assert (headers["x-ratelimit-remaining-requests"], headers["x-request-id"]) == ("99", "req-123")
        assert headers["retry-after"] == "1"


def test_the_cloud_header_allow_list() -> None:
    allowed = ["content-type", "x-request-id", "retry-after", "x-ratelimit-limit-tokens", "ratelimit-policy"]
    assert all(cloud_header_allowed(name) for name in allowed)
    denied = [
        "set-cookie",
        "openai-organization",
        "openai-project",
        "cf-ray",
        "server",
        "via",
        "x-amzn-trace-id",
    ]
    assert not any(cloud_header_allowed(name) for name in denied)


async def test_a_model_with_invalid_utf8_is_a_400_invalid_json(
    local: OpenAIStandIn, start_router: StartRouter, client: aiohttp.ClientSession
) -> None:
    router = await start_router(route_config(local.url))
    body = b'{"model": "m\xff\xfe", "messages": []}'
    for _ in range(3):
        async with client.post(
            router.v1("/chat/completions"), data=body, headers={"Content-Type": "application/json"}
        ) as response:
            assert response.status == 400
            assert (await response.json())["error"]["code"] == "invalid_json"
    assert local.counters.started == 0


async def test_every_connection_header_line_is_honoured(
    local: OpenAIStandIn, start_router: StartRouter
) -> None:
    local.models = (*local.models, "m")
    router = await start_router(route_config(local.url))
    reader, writer = await asyncio.open_connection("127.0.0.1", int(router.url.rsplit(":", 1)[1]))
    body = b'{"model": "m"}'
    writer.write(
        b"POST /v1/chat/completions HTTP/1.1\r\nHost: router\r\nContent-Type: application/json\r\n"
        b"Connection: keep-alive\r\nConnection: X-Hop-Secret, X-Other\r\nX-Hop-Secret: s3cret\r\n"
        b"X-Other: o\r\nX-End-To-End: kept\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body)
    )
    await writer.drain()
    status = await asyncio.wait_for(reader.readline(), 10)
    writer.close()
    assert status.startswith(b"HTTP/1.1 200")
    seen = {k.lower() for k in local.requests[-1].headers}
    assert "x-end-to-end" in seen and not {"x-hop-secret", "x-other"} & seen

"""Upstreams that break HTTP/1.1: each malformed answer is an upstream failure (fallback before anything reached
the client, the breaker counting it), and the router keeps answering /healthz throughout, even while its
background model-list refresh reads the same bytes."""

from __future__ import annotations

import asyncio
import faulthandler
import time
from collections.abc import AsyncIterator

import aiohttp
import pytest

from localai_operator.testing.standins import OpenAIStandIn
from tests.unit.router.conftest import (
    RawServer,
    StartRouter,
    answer,
    breaker_of,
    route_config,
    scrape,
    sdk_chat,
)

JSON = b"Content-Type: application/json\r\n"
SSE = b"Content-Type: text/event-stream\r\n"
EVENT = b'data: {"choices":[{"index":0,"delta":{"content":"hi"}}]}\n\n'
MALFORMED = {
    "chunk size -6": b"HTTP/1.1 200 OK\r\n" + SSE + b"Transfer-Encoding: chunked\r\n\r\n-6\r\n" + EVENT,
    "chunk size +5": b"HTTP/1.1 200 OK\r\n" + SSE + b"Transfer-Encoding: chunked\r\n\r\n+5\r\n" + EVENT,
    "chunk size 0x5": b"HTTP/1.1 200 OK\r\n" + SSE + b"Transfer-Encoding: chunked\r\n\r\n0x5\r\n" + EVENT,
    "Content-Length -1": b"HTTP/1.1 200 OK\r\n" + JSON + b"Content-Length: -1\r\n\r\n{}",
    "notchunked": b"HTTP/1.1 200 OK\r\n" + SSE + b"Transfer-Encoding: notchunked\r\n\r\n" + EVENT,
    "bare LF in a header line": b"HTTP/1.1 200 OK\r\n" + SSE + b"X-Trace: a\nb\r\nContent-Length: 0\r\n\r\n",
}


@pytest.fixture
async def watchdog() -> AsyncIterator[None]:
    # A parser that loops stalls the one event loop the test and the router share: end the run with every
    # thread's traceback instead of hanging CI.
    faulthandler.dump_traceback_later(120, exit=True)
    yield
    faulthandler.cancel_dump_traceback_later()


@pytest.mark.parametrize("stream", [True, False], ids=["stream", "non-stream"])
@pytest.mark.parametrize("wire", list(MALFORMED.values()), ids=list(MALFORMED))
async def test_a_malformed_upstream_answer_falls_back_counted_by_the_breaker_while_healthz_answers(
    wire: bytes,
    stream: bool,
    cloud: OpenAIStandIn,
    start_router: StartRouter,
    client: aiohttp.ClientSession,
    watchdog: None,
) -> None:
    async with RawServer(answer(wire)) as url:
        local = str(url.with_path("/v1"))
        breaker = {"failureThreshold": 1, "openSeconds": 600}
        router = await start_router(route_config(local, cloud.url, circuitBreaker=breaker))
        slowest = 0.0
        probes = 0

        async def probe_health() -> None:
            nonlocal slowest, probes
            while True:
                started = time.monotonic()
                async with client.get(f"{router.url}/healthz") as response:
                    assert response.status == 200
                slowest = max(slowest, time.monotonic() - started)
                probes += 1
                await asyncio.sleep(0.01)

        prober = asyncio.create_task(probe_health())
        try:
            reply = await sdk_chat(router, sync=False, stream=stream)
            # The model-list refresh reads the same bytes from local: the router must still answer.
            await router.router.listing.lists(router.router.route)
            await asyncio.sleep(0.1)
        finally:
            prober.cancel()
        assert (reply.served_by, reply.fallback_reason) == ("fallback", "malformed_response")
        assert reply.text.startswith("cloud-token-0")
        assert await breaker_of(client, router, local) == "open"
        assert 'localai_router_local_failures_total{reason="malformed_response"} 1' in await scrape(
            client, router
        )
        assert probes > 0 and slowest < 1.0, (probes, slowest)

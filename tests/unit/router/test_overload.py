"""Memory under attack: the body budget is taken as bytes arrive (header-only connections hold none, a stalled
body gets 408), wait queues keyed by client-chosen model names do not outlive their waiters, and the overload
guard answers 503 router_overloaded with Retry-After past its caps on connections and waiting requests."""

from __future__ import annotations

import asyncio
import json
import resource
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import pytest

from localai_operator.testing.standins import OpenAIStandIn
from tests.unit.router.conftest import (
    LOCAL_MODEL,
    RunningRouter,
    StartRouter,
    eventually,
    post,
    route_config,
    scrape,
    sdk_chat,
)
from tests.unit.router.test_cold_start import pool_route
from tests.unit.router.test_pods import Names

SIXTEEN_MIB = 16 * 1024 * 1024


async def header_only(router: RunningRouter, length: int = SIXTEEN_MIB) -> asyncio.StreamWriter:
    """A connection that sends a request's headers announcing a large body, then nothing."""
    _, writer = await asyncio.open_connection("127.0.0.1", int(router.url.rsplit(":", 1)[1]))
    writer.write(
        b"POST /v1/chat/completions HTTP/1.1\r\nHost: router\r\nContent-Type: application/json\r\n"
        b"Content-Length: %d\r\n\r\n" % length
    )
    await writer.drain()
    return writer


@pytest.fixture
async def writers() -> AsyncIterator[list[asyncio.StreamWriter]]:
    opened: list[asyncio.StreamWriter] = []
    yield opened
    for writer in opened:
        writer.close()


async def test_header_only_slow_bodies_leave_a_normal_chat_answered_at_once(
    local: OpenAIStandIn,
    start_router: StartRouter,
    client: aiohttp.ClientSession,
    writers: list[asyncio.StreamWriter],
) -> None:
    # Twelve 16 MiB announcements are twice the default body budget (96 MiB): reserved ahead, they starved it.
    router = await start_router(route_config(local.url))
    writers.extend([await header_only(router) for _ in range(12)])
    await eventually(
        lambda: router.router.guard.connections >= 12, 5, "the router to hold the twelve connections"
    )
    reply = await sdk_chat(router, sync=False, stream=False)
    assert reply.served_by == "local" and reply.elapsed < 1.0, reply
    assert router.router.buffer.used == 0


async def test_a_body_that_stalls_is_answered_408_and_gives_its_room_back(
    local: OpenAIStandIn, start_router: StartRouter
) -> None:
    router = await start_router(route_config(local.url, clientBodyTimeoutSeconds=0.3))
    reader, writer = await asyncio.open_connection("127.0.0.1", int(router.url.rsplit(":", 1)[1]))
    writer.write(
        b"POST /v1/chat/completions HTTP/1.1\r\nHost: router\r\nContent-Type: application/json\r\n"
        b"Content-Length: 100000\r\n\r\n" + b" " * 50000
    )
    await writer.drain()
    await eventually(lambda: router.router.buffer.used == 100000, 5, "the started body to hold its room")
    status = await asyncio.wait_for(reader.readline(), 5)
    writer.close()
    assert status.startswith(b"HTTP/1.1 408")
    await eventually(lambda: router.router.buffer.used == 0, 5, "the stalled body's room to be given back")


async def test_bodies_of_unknown_size_that_together_exceed_the_budget_finish_instead_of_waiting_for_each_other(
    local: OpenAIStandIn, start_router: StartRouter, client: aiohttp.ClientSession
) -> None:
    # 1 MiB of budget, four chunked 400 KiB bodies at once: each takes room piece by piece, so all four hold some
    # and wait for more; the youngest are refused until the others fit, instead of all timing out together.
    router = await start_router(route_config(local.url, server={"bodyBufferBytes": 1024 * 1024}))
    padding = "x" * (400 * 1024)
    body = json.dumps({"model": LOCAL_MODEL, "messages": [{"role": "user", "content": padding}]}).encode()

    async def send() -> int:
        async def trickle():  # type: ignore[no-untyped-def]
            for at in range(0, len(body), 16 * 1024):
                yield body[at : at + 16 * 1024]
                await asyncio.sleep(0)

        async with client.post(
            router.v1("/chat/completions"), data=trickle(), headers={"Content-Type": "application/json"}
        ) as response:
            return response.status

    statuses = await asyncio.wait_for(asyncio.gather(*(send() for _ in range(4))), 20)
    assert statuses.count(200) >= 2 and set(statuses) <= {200, 503}, statuses
    assert router.router.buffer.used == 0


def rss_bytes() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise AssertionError("no VmRSS in /proc/self/status")


async def test_distinct_huge_model_names_on_a_cold_sensitive_pool_leave_memory_flat(
    start_router: StartRouter, client: aiohttp.ClientSession
) -> None:
    # Each waits for a pod that never comes (50 ms), then 503 pool_cold. The queues they waited in used to be
    # kept forever, keyed by the whole 1 MiB name: a gigabyte after a thousand of them.
    router = await start_router(
        pool_route(None, 9, firstTokenTimeoutMs=50, coldStartAllowanceSeconds=0), resolver=Names()
    )
    limit = asyncio.Semaphore(16)

    async def one(index: int) -> int:
        async with limit:
            name = f"{index:08d}" + "m" * (1024 * 1024)
            answer = await post(client, router, body={"model": name, "messages": []})
            return answer.status

    assert set(await asyncio.gather(*(one(i) for i in range(50)))) == {503}
    before = rss_bytes()
    assert set(await asyncio.gather(*(one(i) for i in range(50, 1050)))) == {503}
    after = rss_bytes()
    assert len(router.router.waiters) == 0
    assert after - before < 100 * 1024 * 1024, f"RSS grew {(after - before) >> 20} MiB over 1,000 requests"
    assert resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # the figure is real on this platform


async def test_past_max_waiting_a_request_is_refused_503_router_overloaded_with_retry_after(
    start_router: StartRouter, client: aiohttp.ClientSession
) -> None:
    router = await start_router(
        pool_route(None, 9, firstTokenTimeoutMs=10_000, coldStartAllowanceSeconds=0),
        resolver=Names(),
    )
    # The config of pool_route keeps the default caps; lower them as a rendered config would for a small pod.
    router.router.guard.max_waiting = 5
    waiting = [asyncio.create_task(post(client, router)) for _ in range(5)]
    await eventually(lambda: sum(router.router.relay.waiting.values()) == 5, 5, "five requests to wait")
    refused = await post(client, router)
    assert (refused.status, refused.served_by) == (503, "router")
    assert refused.json()["error"]["code"] == "router_overloaded"
    assert refused.headers["Retry-After"] == "1"
    assert 'localai_router_overloaded_total{cap="waiting"} 1' in await scrape(client, router)
    for task in waiting:
        task.cancel()


async def test_past_max_connections_a_request_is_refused_503_and_its_connection_closed(
    local: OpenAIStandIn,
    start_router: StartRouter,
    client: aiohttp.ClientSession,
    writers: list[asyncio.StreamWriter],
) -> None:
    router = await start_router(route_config(local.url, server={"maxConnections": 4}))
    for _ in range(4):
        _, writer = await asyncio.open_connection("127.0.0.1", int(router.url.rsplit(":", 1)[1]))
        writers.append(writer)
    await eventually(lambda: router.router.guard.connections >= 4, 5, "four idle connections")
    async with aiohttp.ClientSession() as fresh:
        async with fresh.post(router.v1("/chat/completions"), json={"model": LOCAL_MODEL}) as response:
            body = await response.json()
            assert (response.status, response.headers["Retry-After"]) == (503, "1")
            assert body["error"]["code"] == "router_overloaded"
            assert response.headers.get("Connection", "").lower() == "close"
        # The probes still answer: a pod that sheds load is not restarted for it.
        async with fresh.get(f"{router.url}/healthz") as health:
            assert health.status == 200
    for writer in writers:
        writer.close()
    writers.clear()
    await eventually(lambda: router.router.guard.connections == 0, 5, "the idle connections to close")
    assert (await post(client, router)).status == 200

"""The router's upstream HTTP/1.1 client against real servers on loopback: framing, keep-alive reuse,
interim answers, flow control, timeouts and TLS."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from aiohttp import web
from yarl import URL

from localai_operator.router import http
from localai_operator.testing.standins import UnacceptingListener, refused_url
from tests.unit.router.conftest import RawServer, answer, eventually, tls_contexts


@pytest.fixture
async def client() -> AsyncIterator[http.Client]:
    c = http.Client(keepalive=5)
    yield c
    c.close()


async def get(
    client: http.Client, url: URL, method: str = "POST", body: bytes = b"{}"
) -> tuple[http.Response, bytes]:
    response = await client.request(
        method,
        url,
        [("Content-Type", "application/json")],
        (body,) if body else (),
        connect_timeout=2,
        timeout=10,
    )
    try:
        return response, await response.read()
    finally:
        response.close()


async def test_a_content_length_answer_is_read_and_the_connection_reused(client: http.Client) -> None:
    server = RawServer(
        answer(b'HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 7\r\n\r\n{"a":1}')
    )
    async with server as url:
        for _ in range(3):
            response, body = await get(client, url)
            assert (response.status, response.content_type, body) == (200, "application/json", b'{"a":1}')
    assert server.connections == 1


async def test_connections_idle_past_the_keep_alive_time_are_closed_by_the_sweep() -> None:
    client = http.Client(keepalive=0.1)
    server = RawServer(answer(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"))
    try:
        async with server as url:
            await get(client, url)
            assert server.closed == 0

            async def swept() -> bool:
                client.pool.sweep()
                await asyncio.sleep(0.02)
                return server.closed == 1

            await eventually(swept, 5, "the idle connection to be closed")
    finally:
        client.close()


async def test_a_chunked_answer_with_extensions_and_trailers_is_decoded(client: http.Client) -> None:
    wire = (
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"
        b"5;ext=1\r\nhello\r\n6\r\n world\r\n0\r\nX-Trailer: t\r\n\r\n"
    )
    server = RawServer(answer(wire))
    async with server as url:
        for _ in range(2):
            _, body = await get(client, url)
            assert body == b"hello world"
    assert server.connections == 1


async def test_an_answer_framed_by_closing_the_connection_is_read_to_the_end(client: http.Client) -> None:
    async def reply(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(b"HTTP/1.1 200 OK\r\n\r\nuntil the end")
        await writer.drain()
        writer.close()

    server = RawServer(reply)
    async with server as url:
        assert (await get(client, url))[1] == b"until the end"
        assert (await get(client, url))[1] == b"until the end"
    assert server.connections == 2


async def test_connection_close_and_http_1_0_answers_are_not_reused(client: http.Client) -> None:
    for wire in (
        b"HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: 2\r\n\r\nok",
        b"HTTP/1.0 200 OK\r\nContent-Length: 2\r\n\r\nok",
    ):
        server = RawServer(answer(wire))
        async with server as url:
            await get(client, url)
            await get(client, url)
        assert server.connections == 2


async def test_interim_answers_are_skipped(client: http.Client) -> None:
    wire = b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 103 Early Hints\r\nLink: x\r\n\r\nHTTP/1.1 201 Created\r\nContent-Length: 1\r\n\r\nx"
    async with RawServer(answer(wire)) as url:
        response, body = await get(client, url)
    assert (response.status, body) == (201, b"x")


async def test_head_204_and_304_have_no_body(client: http.Client) -> None:
    for method, wire in (
        ("HEAD", b"HTTP/1.1 200 OK\r\nContent-Length: 99\r\n\r\n"),
        ("POST", b"HTTP/1.1 204 No Content\r\n\r\n"),
        ("GET", b"HTTP/1.1 304 Not Modified\r\nContent-Length: 5\r\n\r\n"),
    ):
        server = RawServer(answer(wire))
        async with server as url:
            for _ in range(2):
                assert (await get(client, url, method, b""))[1] == b""
        assert server.connections == 1, method


async def test_a_connection_broken_mid_answer_raises_a_response_error(client: http.Client) -> None:
    async def reply(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\nonly part")
        await writer.drain()
        writer.transport.abort()

    async with RawServer(reply) as url:
        response = await client.request("POST", url, [], (b"{}",), connect_timeout=2, timeout=10)
        with pytest.raises(http.ResponseError):
            await response.read()


async def test_a_malformed_answer_raises_a_response_error(client: http.Client) -> None:
    async with RawServer(answer(b"SMTP ready\r\n\r\n")) as url:
        with pytest.raises(http.Malformed, match="malformed status line"):
            await get(client, url)


async def test_connecting_to_a_closed_port_raises_connect_error(client: http.Client) -> None:
    with pytest.raises(http.ConnectError) as refused:
        await get(client, URL(refused_url()))
    assert not isinstance(refused.value, http.ConnectTimeout)


async def test_connecting_to_a_full_accept_queue_raises_connect_timeout(client: http.Client) -> None:
    listener = UnacceptingListener()
    try:
        with pytest.raises(http.ConnectTimeout):
            await client.request("POST", URL(listener.url), [], (), connect_timeout=0.2, timeout=10)
    finally:
        listener.close()


async def test_an_answer_slower_than_the_request_timeout_raises_timeout(client: http.Client) -> None:
    async def reply(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nhalf")
        await asyncio.sleep(30)

    async with RawServer(reply) as url:
        response = await client.request("POST", url, [], (b"{}",), connect_timeout=2, timeout=0.5)
        with pytest.raises(TimeoutError):
            await response.read()


async def test_a_large_answer_is_read_with_the_socket_paused_between_reads(client: http.Client) -> None:
    # 8 MB through a reader that takes its time: the client must not buffer it all.
    async def reply(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 8388608\r\n\r\n" + b"x" * 8388608)

    async with RawServer(reply) as url:
        response = await client.request("POST", url, [], (b"{}",), connect_timeout=2, timeout=30)
        total = peak = 0
        while chunk := await response.readany():
            total += len(chunk)
            peak = max(peak, response._size + len(chunk))
            await asyncio.sleep(0.001)
        response.close()
    assert total == 8388608
    assert peak < 2 * 1024 * 1024


async def test_a_large_body_is_sent_whole_in_slices(client: http.Client) -> None:
    received: list[int] = []

    async def handler(request: web.Request) -> web.Response:
        received.append(len(await request.read()))
        return web.Response(text="ok")

    app = web.Application(client_max_size=64 * 1024 * 1024)
    app.router.add_post("/v1/x", handler)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    try:
        url = URL(f"http://127.0.0.1:{runner.addresses[0][1]}/v1/x")
        segments = [memoryview(b"a" * 5_000_000), b"b" * 3_000_000]
        response = await client.request("POST", url, [], segments, connect_timeout=2, timeout=30)
        assert (response.status, await response.read()) == (200, b"ok")
    finally:
        await runner.cleanup()
    assert received == [8_000_000]


async def test_https_upstreams_are_reached_with_certificate_checks(tmp_path: Path) -> None:
    server_tls, trusting = tls_contexts(tmp_path)

    async def handler(request: web.Request) -> web.Response:
        return web.Response(text="over tls")

    app = web.Application()
    app.router.add_post("/v1/x", handler)
    runner = web.AppRunner(app)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0, ssl_context=server_tls).start()
    url = URL(f"https://localhost:{runner.addresses[0][1]}/v1/x")
    trusted, default = http.Client(tls=trusting), http.Client()
    try:
        assert (await get(trusted, url))[1] == b"over tls"
        with pytest.raises(http.ConnectError):
            await get(default, url)  # the system CAs do not know this certificate
    finally:
        trusted.close()
        default.close()
        await runner.cleanup()


async def test_an_answer_arriving_a_byte_at_a_time_is_decoded_the_same(client: http.Client) -> None:
    wire = (
        b"HTTP/1.1 100 Continue\r\n\r\n"
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nX-A: 1\r\n\r\n"
        b"5;ext=1\r\nhello\r\n6\r\n world\r\n0\r\nX-Trailer: t\r\n\r\n"
        b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nagain"
    )
    first, second = wire.rsplit(b"HTTP/1.1 200", 1)
    replies = iter([first, b"HTTP/1.1 200" + second])

    async def reply(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        for byte in next(replies):
            writer.write(bytes([byte]))
            await writer.drain()
            await asyncio.sleep(0)

    server = RawServer(reply)
    async with server as url:
        response, body = await get(client, url)
        assert (response.status, response.headers["X-A"], body) == (200, "1", b"hello world")
        _, body = await get(client, url)
        assert body == b"again"
    assert server.connections == 1


async def test_a_released_answer_is_read_to_its_end_in_the_background_and_its_connection_reused(
    client: http.Client,
) -> None:
    tail_sent = asyncio.Event()

    async def reply(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n")
        await writer.drain()
        await asyncio.sleep(0.3)
        writer.write(b"6\r\n world\r\n0\r\n\r\n")
        tail_sent.set()

    server = RawServer(reply)
    async with server as url:
        response = await client.request("POST", url, [], (b"{}",), connect_timeout=2, timeout=10)
        assert await response.readany() == b"hello"
        response.release()
        response.close()  # what the router does next: must not drop the connection
        await asyncio.wait_for(tail_sent.wait(), 5)
        await eventually(
            lambda: bool(client.pool._idle.get(response_origin(url))), 5, "the connection pooled"
        )
        response, _ = await get(client, url)
        assert response.status == 200
    assert server.connections == 1


async def test_a_released_answer_that_never_ends_is_closed_at_its_deadline(client: http.Client) -> None:
    async def reply(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n")
        await writer.drain()
        await asyncio.sleep(30)

    server = RawServer(reply)
    async with server as url:
        response = await client.request("POST", url, [], (b"{}",), connect_timeout=2, timeout=0.5)
        assert await response.readany() == b"hello"
        response.release()
        response.close()
        await eventually(lambda: not client.pool._all, 5, "the connection closed at the deadline")
        assert not client.pool._idle.get(response_origin(url))


def response_origin(url: URL) -> http.Origin:
    assert url.raw_host is not None and url.port is not None
    return (url.scheme, url.raw_host, url.port, "")

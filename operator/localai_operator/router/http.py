"""The router's upstream HTTP/1.1 client: a keep-alive pool per origin on asyncio protocols.

Why not aiohttp's client: on this hot path it costs more CPU per request than everything else the router
does (measured in benchmarks/router.py's notes); this one does only what the two hops need. What it does:
- keep-alive connections per origin (scheme, host, port), idle ones closed after `keepalive` seconds;
- one request per connection at a time; the body written in slices with write-side flow control;
- responses parsed strictly (`framing.py`: RFC 9112's grammar, bounded), framed by Content-Length, chunked
  transfer coding or connection close; 1xx skipped; no body for HEAD, 204 and 304; `Connection: close` and
  HTTP/1.0 answers are not reused; a malformed answer fails its request (`Malformed`) and its connection;
- read-side flow control: a slow reader pauses the socket (bounded memory for large answers);
- a connect timeout, a deadline for the whole exchange, TLS with certificate checks (https).
A request is never re-sent: like Go's transport for a POST, a connection that breaks after the request was
written is the caller's failure to handle. Idle connections are dropped well before servers close them
(`keepalive`), and one the server already closed is never picked. An egress proxy when the caller names one
(`proxy.py`): CONNECT with TLS inside for https, absolute form for http. No redirects, cookies or compression:
the router follows none and asks for identity encoding.
"""

from __future__ import annotations

import asyncio
import collections
import ssl
from collections.abc import Iterable, Sequence
from typing import Final, cast

from multidict import CIMultiDict, CIMultiDictProxy
from yarl import URL

from localai_operator.router.framing import MalformedResponse, ResponseParser
from localai_operator.router.proxy import Proxy

Segment = bytes | bytearray | memoryview
# (scheme, host, port, proxy URL or "") of the target: connections through a proxy are pooled apart.
Origin = tuple[str, str, int, str]

_READ_HIGH: Final = 256 * 1024  # buffered answer bytes before the socket is paused
_WRITE_HIGH: Final = 1024 * 1024  # transport buffer before a body write waits
_SLICE: Final = 256 * 1024  # large bodies are written in slices of this size
_MAX_TUNNEL_HEAD: Final = 16 * 1024  # the proxy's answer to CONNECT


class UpstreamError(Exception):
    """The exchange failed; subclasses say where."""


class ConnectError(UpstreamError):
    """No connection could be made (refused, unreachable, DNS, TLS)."""


class ConnectTimeout(ConnectError, TimeoutError):
    """The connection was not made within the connect timeout."""


class ResponseError(UpstreamError):
    """The connection broke or the answer was malformed after the request was sent."""


class ProxyRefused(ConnectError):
    """The egress proxy answered CONNECT with anything but 2xx (407: wrong or missing credentials)."""


class Malformed(ResponseError):
    """The answer broke HTTP/1.1's grammar or the client's bounds (`framing.py`)."""


class _Connection(asyncio.Protocol):
    """One TCP (or TLS) connection and the parser of the answer in progress."""

    def __init__(self, pool: Pool, origin: Origin) -> None:
        self.pool = pool
        self.origin = origin
        self.transport: asyncio.Transport | None = None
        self.loop = asyncio.get_running_loop()
        self.idle_since = 0.0
        self.reused = False
        self.closed = False
        self.response: Response | None = None
        # While a CONNECT tunnel is being set up: the proxy's answer head as it arrives, and who waits for it.
        self._tunnel: asyncio.Future[bytes] | None = None
        self._tunnel_head = b""
        self._drain: asyncio.Future[None] | None = None
        self._paused_writing = False

    # -- asyncio.Protocol

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports implement asyncio.Transport without subclassing it.
        self.transport = cast(asyncio.Transport, transport)

    def pause_writing(self) -> None:
        self._paused_writing = True

    def resume_writing(self) -> None:
        self._paused_writing = False
        if self._drain is not None and not self._drain.done():
            self._drain.set_result(None)

    def connection_lost(self, exc: Exception | None) -> None:
        if self._tunnel is not None and not self._tunnel.done():
            self._tunnel.set_exception(ConnectError("the egress proxy closed the connection during CONNECT"))
        self.closed = True
        self.pool.forget(self)
        if self._drain is not None and not self._drain.done():
            self._drain.set_exception(ResponseError("connection lost while sending the request"))
        response = self.response
        if response is not None:
            response._connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        response = self.response
        if self._tunnel is not None:
            self._tunnel_data(data)
            return
        if response is None:
            # Bytes with no request outstanding: the server misbehaves; do not reuse this connection.
            self.abort()
            return
        try:
            response._parser.feed(data)
        except MalformedResponse as err:
            response._fail(Malformed(str(err)))
            self.abort()
            return
        if response._state == "eof":
            self._finished(response)

    def _tunnel_data(self, data: bytes) -> None:
        tunnel = self._tunnel
        assert tunnel is not None
        head = self._tunnel_head + data
        end = head.find(b"\r\n\r\n")
        if end < 0:
            self._tunnel_head = head
            if len(head) > _MAX_TUNNEL_HEAD and not tunnel.done():
                tunnel.set_exception(ConnectError("the egress proxy's answer to CONNECT is too large"))
            return
        self._tunnel, self._tunnel_head = None, b""
        if tunnel.done():
            return
        if end + 4 != len(head):
            tunnel.set_exception(ConnectError("the egress proxy sent bytes after its answer to CONNECT"))
        else:
            tunnel.set_result(head[:end])

    async def tunnel(self, proxy: Proxy, host: str, port: int) -> None:
        """CONNECT to `host`:`port` through the proxy this connection goes to; raises ProxyRefused."""
        transport = self.transport
        assert transport is not None
        authority = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
        lines = [f"CONNECT {authority} HTTP/1.1", f"Host: {authority}"]
        if proxy.authorization:
            lines.append(f"Proxy-Authorization: {proxy.authorization}")
        self._tunnel = self.loop.create_future()
        transport.write(("\r\n".join(lines) + "\r\n\r\n").encode("latin-1"))
        head = await self._tunnel
        status_line = head.split(b"\r\n", 1)[0]
        parts = status_line.split(b" ", 2)
        if len(parts) < 2 or not parts[0].startswith(b"HTTP/1.") or not parts[1].isdigit():
            raise ProxyRefused(f"the egress proxy {proxy.url} answered CONNECT with {status_line[:60]!r}")
        if not 200 <= int(parts[1]) < 300:
            reason = status_line.decode("latin-1", "replace")[9:80]
            raise ProxyRefused(f"the egress proxy {proxy.url} refused CONNECT {authority}: {reason}")

    def _finished(self, response: Response) -> None:
        parser = response._parser
        self.response = None
        if parser.keep_alive and not parser.extra:
            self.pool.release(self)
        else:
            self.abort()

    # -- sending

    async def send(self, head: bytes, body: Sequence[Segment]) -> None:
        transport = self.transport
        assert transport is not None
        if not body or (len(body) == 1 and len(body[0]) <= _SLICE):
            transport.write(head + bytes(body[0]) if body else head)
            return
        transport.write(head)
        for segment in body:
            view = memoryview(segment)
            for at in range(0, len(view), _SLICE):
                transport.write(view[at : at + _SLICE])
                if self._paused_writing or transport.get_write_buffer_size() > _WRITE_HIGH:
                    await self._wait_drain()
        if self.closed:
            raise ResponseError("connection lost while sending the request")

    async def _wait_drain(self) -> None:
        if self.closed:
            raise ResponseError("connection lost while sending the request")
        if not self._paused_writing:
            return
        self._drain = self.loop.create_future()
        await self._drain

    def pause(self) -> None:
        if self.transport is not None and not self.closed:
            self.transport.pause_reading()

    def resume(self) -> None:
        if self.transport is not None and not self.closed:
            self.transport.resume_reading()

    def abort(self) -> None:
        self.closed = True
        self.pool.forget(self)
        if self.transport is not None:
            self.transport.abort()


class Response:
    """The status and headers of an answer, and its body as it arrives (the parser's sink)."""

    __slots__ = (
        "_chunks",
        "_connection",
        "_deadline",
        "_discard",
        "_error",
        "_parser",
        "_paused",
        "_size",
        "_state",
        "_waiter",
        "content_length",
        "content_type",
        "head_request",
        "headers",
        "status",
    )

    def __init__(self, connection: _Connection, head_request: bool) -> None:
        self._connection: _Connection | None = connection
        self.head_request = head_request
        self.status = 0
        self.headers: CIMultiDictProxy[str] = CIMultiDictProxy(CIMultiDict())
        self.content_type = ""
        self.content_length: int | None = None
        self._parser = ResponseParser(self, head_request)
        # "head" until the status and headers are parsed, "body", then "eof" once the body ended.
        self._state = "head"
        self._chunks: collections.deque[bytes] = collections.deque()
        self._size = 0
        self._paused = False
        self._error: BaseException | None = None
        self._waiter: asyncio.Future[None] | None = None
        self._deadline: asyncio.TimerHandle | None = None
        self._discard = False

    # -- fed by the parser

    def head_parsed(self, parser: ResponseParser) -> None:
        self.status = parser.status
        self.headers = parser.headers
        self.content_length = parser.content_length
        content_type = parser.headers.get("Content-Type", "")
        self.content_type = content_type.split(";", 1)[0].strip().lower()
        self._state = "body"
        self._wake()

    def body(self, data: bytes) -> None:
        self._feed(data)

    def ended(self) -> None:
        self._eof()

    def _feed(self, data: bytes) -> None:
        if not data or self._discard:
            return
        self._chunks.append(data)
        self._size += len(data)
        if self._size > _READ_HIGH and not self._paused and self._connection is not None:
            self._paused = True
            self._connection.pause()
        self._wake()

    def _eof(self) -> None:
        self._state = "eof"
        self._connection = None
        self._cancel_deadline()
        self._wake()

    def _fail(self, err: BaseException) -> None:
        if self._error is None and self._state != "eof":
            self._error = err
        self._cancel_deadline()
        self._wake()

    def _connection_lost(self, exc: Exception | None) -> None:
        if self._state == "eof":
            return
        if self._parser.until_close:
            self._parser.closed()
            return
        self._fail(ResponseError(f"the upstream closed the connection{f': {exc}' if exc else ''}"))

    def _wake(self) -> None:
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    def _expire(self) -> None:
        self._deadline = None
        if self._state != "eof":
            self._fail(TimeoutError("the upstream did not answer within the request timeout"))
            if self._connection is not None:
                self._connection.abort()

    def _cancel_deadline(self) -> None:
        if self._deadline is not None:
            self._deadline.cancel()
            self._deadline = None

    async def _wait(self) -> None:
        connection = self._connection
        assert connection is not None
        self._waiter = connection.loop.create_future()
        try:
            await self._waiter
        finally:
            self._waiter = None

    # -- the reader's side

    async def _wait_head(self) -> None:
        while not self.status and self._error is None:
            await self._wait()
        if self._error is not None:
            raise self._error

    async def readany(self) -> bytes:
        """The next body bytes as they arrive; b"" at the end."""
        while not self._chunks:
            if self._error is not None:
                raise self._error
            if self._state == "eof":
                return b""
            await self._wait()
        data = self._chunks.popleft() if len(self._chunks) == 1 else b"".join(self._drain_chunks())
        self._size -= len(data)
        if self._paused and self._size <= _READ_HIGH // 2 and self._connection is not None:
            self._paused = False
            self._connection.resume()
        return data

    def _drain_chunks(self) -> Iterable[bytes]:
        while self._chunks:
            yield self._chunks.popleft()

    async def read(self) -> bytes:
        parts = []
        while chunk := await self.readany():
            parts.append(chunk)
        return parts[0] if len(parts) == 1 else b"".join(parts)

    def release(self) -> None:
        """Done with an answer whose end is due at once (its last event came): what is left is read and
        dropped as it arrives, and the connection goes back to the pool when the body ends, or is closed
        at the request's deadline if it never does."""
        if self._state == "eof" or self._connection is None:
            return
        self._discard = True
        self._chunks.clear()
        self._size = 0
        if self._paused:
            self._paused = False
            self._connection.resume()

    def close(self) -> None:
        """Done with the answer: an unfinished one closes its connection (which stops the upstream),
        unless it was released."""
        if self._discard and self._state != "eof":
            return
        self._cancel_deadline()
        connection = self._connection
        if connection is not None and self._state != "eof":
            self._connection = None
            connection.response = None
            connection.abort()


class Pool:
    """Idle keep-alive connections per origin."""

    def __init__(self, keepalive: float, tls: ssl.SSLContext | None = None) -> None:
        self.keepalive = keepalive
        self._idle: dict[Origin, list[_Connection]] = {}
        self._all: set[_Connection] = set()
        self._tls = tls or ssl.create_default_context()
        # The last failure of each egress proxy, until a tunnel through it succeeds (the router's /readyz).
        self.proxy_problems: dict[str, str] = {}

    def release(self, connection: _Connection) -> None:
        if connection.closed:
            return
        connection.idle_since = connection.loop.time()
        connection.reused = True
        self._idle.setdefault(connection.origin, []).append(connection)

    def forget(self, connection: _Connection) -> None:
        idle = self._idle.get(connection.origin)
        if idle and connection in idle:
            idle.remove(connection)
        self._all.discard(connection)

    def _take_idle(self, origin: Origin, now: float) -> _Connection | None:
        idle = self._idle.get(origin)
        while idle:
            connection = idle.pop()
            if not connection.closed and now - connection.idle_since < self.keepalive:
                return connection
            connection.abort()
        return None

    async def _open(self, origin: Origin, connect_timeout: float, proxy: Proxy | None) -> _Connection:
        scheme, host, port, _ = origin
        loop = asyncio.get_running_loop()
        tls = scheme == "https"
        dial_host, dial_port = (proxy.host, proxy.port) if proxy is not None else (host, port)
        try:
            async with asyncio.timeout(connect_timeout):
                transport, connection = await loop.create_connection(
                    lambda: _Connection(self, origin),
                    dial_host,
                    dial_port,
                    ssl=self._tls if tls and proxy is None else None,
                    server_hostname=host if tls and proxy is None else None,
                )
                if proxy is not None and tls:
                    try:
                        await connection.tunnel(proxy, host, port)
                    except ProxyRefused as err:
                        self.proxy_problems[proxy.url] = str(err)
                        transport.abort()
                        raise
                    # TLS inside the tunnel, to the target: the proxy sees only ciphertext.
                    upgraded = await loop.start_tls(transport, connection, self._tls, server_hostname=host)
                    assert upgraded is not None
                    connection.transport = upgraded
                if proxy is not None:
                    self.proxy_problems.pop(proxy.url, None)
        except TimeoutError as err:
            where = f"{host}:{port}" + (f" through the egress proxy {proxy.url}" if proxy is not None else "")
            raise ConnectTimeout(f"connecting to {where} took longer than {connect_timeout:g}s") from err
        except ProxyRefused:
            raise
        except (OSError, ssl.SSLError, ConnectError) as err:
            where = f"{host}:{port}" + (f" through the egress proxy {proxy.url}" if proxy is not None else "")
            if proxy is not None and not isinstance(err, ssl.SSLError):
                self.proxy_problems[proxy.url] = f"the egress proxy {proxy.url} is unreachable: {err}"
            raise ConnectError(f"cannot connect to {where}: {err}") from err
        self._all.add(connection)
        return connection

    def sweep(self) -> None:
        """Close connections idle for longer than the keep-alive time."""
        now = asyncio.get_running_loop().time()
        for idle in self._idle.values():
            for connection in [c for c in idle if now - c.idle_since >= self.keepalive]:
                connection.abort()

    def close(self) -> None:
        for connection in list(self._all):
            connection.abort()
        self._idle.clear()


_DEFAULT_PORTS: Final = {"http": 80, "https": 443}


class Client:
    """`request` sends one request and returns once the answer's status and headers arrived."""

    def __init__(self, keepalive: float = 10.0, tls: ssl.SSLContext | None = None) -> None:
        """`tls`: the context for https upstreams (default: the system's CAs, hostnames checked)."""
        self.pool = Pool(keepalive, tls)

    async def request(
        self,
        method: str,
        url: URL,
        headers: Iterable[tuple[str, str]],
        body: Sequence[Segment] = (),
        *,
        connect_timeout: float,
        timeout: float,
        proxy: Proxy | None = None,
    ) -> Response:
        """`proxy`: an https target is reached through a CONNECT tunnel to it, an http one in absolute form."""
        scheme = url.scheme
        host = url.raw_host
        if scheme not in _DEFAULT_PORTS or not host:
            raise ConnectError(f"cannot send to {url!s}: only absolute http and https URLs")
        port = url.port or _DEFAULT_PORTS[scheme]
        origin = (scheme, host, port, proxy.url if proxy is not None else "")
        length = sum(len(s) for s in body)
        host_header = host if port == _DEFAULT_PORTS[scheme] else f"{host}:{port}"
        if ":" in host and not host.startswith("["):
            host_header = f"[{host}]" if port == _DEFAULT_PORTS[scheme] else f"[{host}]:{port}"
        plain_proxy = proxy is not None and scheme == "http"
        target = f"http://{host_header}{url.raw_path_qs}" if plain_proxy else url.raw_path_qs
        lines = [f"{method} {target} HTTP/1.1", f"Host: {host_header}"]
        if plain_proxy and proxy is not None and proxy.authorization:
            lines.append(f"Proxy-Authorization: {proxy.authorization}")
        lines.extend(f"{name}: {value}" for name, value in headers)
        if length or method in ("POST", "PUT", "PATCH"):
            lines.append(f"Content-Length: {length}")
        # The server decoded incoming headers as UTF-8 with surrogate escapes: this gives back their bytes.
        head = ("\r\n".join(lines) + "\r\n\r\n").encode("utf-8", "surrogateescape")
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        connection = self.pool._take_idle(origin, loop.time())
        if connection is None:
            connection = await self.pool._open(
                origin, min(connect_timeout, max(0.0, deadline - loop.time())), proxy
            )
        response = Response(connection, method == "HEAD")
        connection.response = response
        response._deadline = loop.call_at(deadline, response._expire)
        try:
            await connection.send(head, body)
            await response._wait_head()
        except BaseException:
            response.close()
            connection.abort()
            raise
        return response

    def close(self) -> None:
        self.pool.close()

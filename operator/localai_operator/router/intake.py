"""Admission of one /v1 request: the path, the client key, the rate limit, then the body, read once into
a bounded buffer; the request then goes to the listing or, as an `Attempt`, to the relay.

Memory: every body is held once, in a buffer of its size (made when its first bytes came) or, of unknown size, one
that grows as its bytes arrive (up to `maxRequestBytes`), and
the router holds at most `server.bodyBufferBytes` of bodies at once, taken as the bytes arrive: a connection
that sends headers and no body holds nothing, one whose body stalls for `policy.clientBodyTimeoutSeconds` is
answered 408, and a body that finds no room waits, unread (TCP pushes back on its sender).
"""

from __future__ import annotations

import asyncio
import itertools
import logging
from collections import deque
from collections.abc import Callable
from typing import Final

from aiohttp import StreamReader, web

from localai_operator.constants import SERVED_BY_ROUTER
from localai_operator.router import body as bodies
from localai_operator.router import paths, replies
from localai_operator.router.attempt import Attempt
from localai_operator.router.auth import INVALID, MISSING, ClientKeys, presented_key
from localai_operator.router.listing import Listing
from localai_operator.router.metrics import RouterMetrics
from localai_operator.router.overload import CONNECTIONS, RETRY_AFTER_SECONDS, Guard, Overloaded
from localai_operator.router.paths import Budget
from localai_operator.router.policy import BUDGET_EXHAUSTED, UNPRICED, retry_after_header
from localai_operator.router.relay import Relay
from localai_operator.router.telemetry import RequestTrace, RouterTelemetry
from localai_operator.router.upstream import API_PREFIX, Route

log = logging.getLogger(__name__)

# Bodies up to this size are read with aiohttp's own reader; larger ones straight into their final buffer.
_SMALL_BODY: Final = 64 * 1024
_JSON_TYPES: Final = frozenset({"application/json", "text/json"})


class BodyTooLarge(Exception):
    pass


class BufferFull(Exception):
    """No room came for a body's next bytes in time, or the router had to refuse one body so that the others
    could finish."""


class BodyBuffer:
    """A byte budget for request bodies, taken once their bytes arrive, granted first come, first served.

    A connection that sent headers and no body holds none of it. A body of unknown size takes it piece by piece:
    when every body holding budget waits for more (together they exceed it), the youngest is refused (503) and
    gives its bytes back, so the others finish instead of all waiting until they time out."""

    def __init__(self, capacity: int, guard: Guard | None = None) -> None:
        self.capacity = capacity
        self.guard = guard
        self.used = 0
        self.holders = 0
        # Takes that had to wait for room (a counter metric).
        self.waits = 0
        self._seq = itertools.count()
        self._waiters: deque[tuple[Claim, int, asyncio.Future[None]]] = deque()

    def claim(self) -> Claim:
        return Claim(self, next(self._seq))

    @property
    def waiting(self) -> int:
        return sum(1 for _, _, waiter in self._waiters if not waiter.done())

    def _grant(self, claim: Claim, size: int) -> None:
        if not claim.held:
            self.holders += 1
        self.used += size
        claim.held += size

    def _wake(self) -> None:
        while self._waiters:
            claim, size, waiter = self._waiters[0]
            if waiter.done():
                self._waiters.popleft()
            elif self.used + size <= self.capacity:
                self._waiters.popleft()
                self._grant(claim, size)
                waiter.set_result(None)
            else:
                break

    def _break_deadlock(self) -> None:
        blocked = [(c, w) for c, _, w in self._waiters if c.held and not w.done()]
        if blocked and len(blocked) == self.holders:
            _, waiter = max(blocked, key=lambda entry: entry[0].seq)
            waiter.set_exception(BufferFull("refused so that the bodies that came before it can finish"))

    def _give(self, claim: Claim) -> None:
        if claim.held:
            self.used -= claim.held
            self.holders -= 1
            claim.held = 0
        self._wake()


class Claim:
    """The budget one request's body holds."""

    __slots__ = ("buffer", "held", "seq")

    def __init__(self, buffer: BodyBuffer, seq: int) -> None:
        self.buffer = buffer
        self.seq = seq
        self.held = 0

    def take_now(self, size: int) -> bool:
        buffer = self.buffer
        if not buffer._waiters and buffer.used + size <= buffer.capacity:
            buffer._grant(self, size)
            return True
        return False

    async def take(self, size: int, timeout: float) -> None:
        """`size` more bytes, waiting for room up to `timeout`; raises BufferFull."""
        if self.take_now(size):
            return
        buffer = self.buffer
        if buffer.guard is not None:
            buffer.guard.check_waiting(buffer.waiting)
        buffer.waits += 1
        size = min(size, buffer.capacity)
        waiter = asyncio.get_running_loop().create_future()
        buffer._waiters.append((self, size, waiter))
        buffer._break_deadlock()
        try:
            async with asyncio.timeout(timeout):
                await waiter
        except TimeoutError as err:
            if waiter.done() and not waiter.cancelled() and waiter.exception() is None:
                return  # granted just as the wait ended
            waiter.cancel()
            buffer._wake()
            raise BufferFull("no room for the body within policy.requestTimeoutSeconds") from err
        except BaseException:
            if not waiter.done():
                waiter.cancel()
            buffer._wake()
            raise

    def release(self) -> None:
        self.buffer._give(self)


async def read_body(
    request: web.Request, limit: int, claim: Claim, idle: float, timeout: float
) -> bytes | bytearray:
    """The whole body, decoded when the client sent it compressed, its budget taken as it arrives; raises
    BodyTooLarge beyond `limit`, TimeoutError when no byte came for `idle` seconds, BufferFull when no room
    came within `timeout`."""
    if not request.body_exists:
        return b""
    content = request.content
    length = request.content_length
    decoded = request.headers.get("Content-Encoding", "identity").lower() != "identity"
    if length is not None and not decoded:
        if length > limit:
            raise BodyTooLarge
        if length <= _SMALL_BODY and content.is_eof():
            raw = await request.read()  # already received: nothing to wait for
            if not claim.take_now(len(raw)):
                await claim.take(len(raw), timeout)
            return raw
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    # A body of known size takes its whole room once its first bytes came, so it never waits half-read; one of
    # unknown size (chunked, compressed) takes room piece by piece.
    known = length if length is not None and not decoded else None
    if known is not None:
        return await _read_known(content, known, claim, idle, deadline)
    body = bytearray()
    while True:
        async with asyncio.timeout(min(idle, deadline - loop.time())):
            chunk = await content.readany()
        if not chunk:
            break
        if len(body) + len(chunk) > limit:
            raise BodyTooLarge
        if not claim.take_now(len(chunk)):
            await claim.take(len(chunk), deadline - loop.time())
        body += chunk
    return body


async def _read_known(
    content: StreamReader, length: int, claim: Claim, idle: float, deadline: float
) -> bytearray:
    """A body of `length` bytes into one buffer of that size, made once its first bytes came: never grown, so
    never copied into a larger one (two bodies' worth for a moment) nor left with spare room."""
    loop = asyncio.get_running_loop()
    body: bytearray | None = None
    filled = 0
    while True:
        async with asyncio.timeout(min(idle, deadline - loop.time())):
            chunk = await content.readany()
        if not chunk:
            break
        assert filled + len(chunk) <= length, "aiohttp's parser ends a body at its Content-Length"
        if body is None:
            if not claim.take_now(length):
                await claim.take(length, deadline - loop.time())
            body = bytearray(length)
        body[filled : filled + len(chunk)] = chunk
        filled += len(chunk)
    if filled != length:
        raise ConnectionResetError("the client closed the connection before sending its whole body")
    return body if body is not None else bytearray()


class Intake:
    """The handler of every /v1 path."""

    def __init__(
        self,
        route: Callable[[], Route],
        keys: Callable[[], ClientKeys | None],
        relay: Relay,
        listing: Listing,
        buffer: BodyBuffer,
        metrics: RouterMetrics,
        clock: Callable[[], float],
        guard: Guard,
        telemetry: RouterTelemetry | None = None,
    ) -> None:
        """With `telemetry`, the app routes /v1 to `handle_traced` instead of `handle`."""
        self.telemetry = telemetry
        self.guard = guard
        self.route = route
        self.keys = keys
        self.relay = relay
        self.listing = listing
        self.buffer = buffer
        self.metrics = metrics
        self.clock = clock

    def _refuse(
        self, status: int, message: str, *, code: str | None = None, headers: dict[str, str] | None = None
    ) -> web.Response:
        self.metrics.requests.inc((SERVED_BY_ROUTER, str(status)))
        return replies.error(status, message, code=code, headers=headers)

    def _client_key(self, request: web.Request) -> str | web.Response:
        keys = self.keys()
        assert keys is not None, "a route with auth has its keys loaded"
        presented = presented_key(request.headers)
        name = keys.name_of(presented) if presented is not None else None
        if name is not None:
            self.metrics.client_requests.inc((name,))
            return name
        reason = MISSING if presented is None else INVALID
        self.metrics.auth_failures.inc((reason,))
        log.info("refused %s %s from %s: %s client key", request.method, request.path, request.remote, reason)
        message = (
            "this route needs an API key: send `Authorization: Bearer <key>` or `x-api-key: <key>`"
            if presented is None
            else "the API key is not valid for this route"
        )
        return self._refuse(
            401, message, headers={"WWW-Authenticate": 'Bearer realm="localai-operator-router"'}
        )

    async def not_found(self, request: web.Request) -> web.Response:
        """Every path outside /v1 and the operational endpoints (and any method those do not take)."""
        return self._refuse(
            404,
            f"no such endpoint: {request.method} {request.path} (the router serves the OpenAI API under /v1)",
            code="unknown_endpoint",
        )

    def _overloaded(self, err: Overloaded) -> web.Response:
        log.debug("refused: %s", err)
        response = self._refuse(
            503,
            f"the router is overloaded: {err}; retry shortly",
            code="router_overloaded",
            headers={"Retry-After": str(RETRY_AFTER_SECONDS)},
        )
        if err.what == CONNECTIONS:
            response.force_close()
        return response

    async def handle(self, request: web.Request, trace: RequestTrace | None = None) -> web.StreamResponse:
        if not self.guard.admits(request):
            return self._overloaded(self.guard.refuse_connection())
        try:
            return await self._handle(request, trace)
        except Overloaded as err:
            return self._overloaded(err)

    async def handle_traced(self, request: web.Request) -> web.StreamResponse:
        """`handle`, inside the request's span."""
        assert self.telemetry is not None, "routed here only with telemetry on"
        return await self.telemetry.traced(request, self.handle)

    async def _handle(self, request: web.Request, trace: RequestTrace | None = None) -> web.StreamResponse:
        route = self.route()
        started = self.clock()
        path = request.path[len(API_PREFIX) :]
        api = paths.match(path)
        if api is None:
            return self._refuse(
                404, f"no such endpoint: {request.method} {request.path}", code="unknown_endpoint"
            )
        if request.method not in api.methods:
            return self._refuse(
                405,
                f"{request.method} is not allowed on {request.path}",
                headers={"Allow": ", ".join(sorted(api.methods))},
            )
        key_name: str | None = None
        if route.config.auth is not None:
            checked = self._client_key(request)
            if isinstance(checked, web.Response):
                return checked
            key_name = checked
        if route.limiter is not None:
            wait = route.limiter.take(started)
            if wait:
                self.metrics.rate_limited.inc()
                return self._refuse(
                    429,
                    "rate limit exceeded for this route; retry later",
                    headers={"Retry-After": retry_after_header(wait)},
                )
        keep_credentials = route.config.auth is None
        if api.listing:
            if path == "/models":
                return await self.listing.models(request, route, started, keep_credentials)
            return await self.listing.model(request, route, path.rsplit("/", 1)[1], started, keep_credentials)
        return await self._with_body(request, route, api, path, started, key_name, trace)

    async def _with_body(
        self,
        request: web.Request,
        route: Route,
        api: paths.ApiPath,
        path: str,
        started: float,
        key_name: str | None,
        trace: RequestTrace | None = None,
    ) -> web.StreamResponse:
        limit = route.max_request_bytes
        length = request.content_length
        if length is not None and length > limit and "Content-Encoding" not in request.headers:
            return self._too_large(limit)
        policy = route.config.policy
        claim = self.buffer.claim()
        attempt: Attempt | None = None
        try:
            try:
                raw = await read_body(
                    request, limit, claim, policy.client_body_timeout_seconds, policy.request_timeout_seconds
                )
            except BodyTooLarge:
                return self._too_large(limit)
            except BufferFull as err:
                return self._refuse(
                    503,
                    f"the router is holding as many request bodies as its memory allows ({err}); retry shortly",
                    code="router_busy",
                    headers={"Retry-After": "1"},
                )
            except TimeoutError:
                return self._refuse(
                    408,
                    f"the request body stalled (no byte for {policy.client_body_timeout_seconds:g}s: "
                    "policy.clientBodyTimeoutSeconds) or took longer than policy.requestTimeoutSeconds",
                )
            parsed: bodies.JsonBody | None = None
            content_type = request.content_type
            if raw and (content_type in _JSON_TYPES or content_type.endswith("+json")):
                try:
                    parsed = bodies.parse(raw)
                except bodies.BodyError as err:
                    return self._refuse(400, str(err), code="invalid_json")
            elif raw and not content_type.startswith("multipart/") and raw[:64].lstrip()[:1] == b"{":
                # JSON sent without saying so (`curl -d` says form data): routed as JSON when it is JSON.
                try:
                    parsed = bodies.parse(raw)
                except bodies.BodyError:
                    parsed = None
            cloud = route.cloud if route.cloud is not None and route.cloud.serves(path) else None
            blocked = None
            if cloud is not None and self.relay.ledger.exhausted(
                cloud.fallback.spend_cap, cloud.fallback.spend_share
            ):
                cloud, blocked = None, BUDGET_EXHAUSTED  # local-only until the period ends
            elif (
                cloud is not None
                and not api.token_usage
                and cloud.fallback.spend_cap is not None
                and path not in cloud.fallback.price_per_request
            ):
                cloud, blocked = None, UNPRICED  # its spend could not be counted
            budget = route.budget if cloud is not None and api.budget is not Budget.NONE else None
            deadline = asyncio.get_running_loop().time() + budget if budget is not None else None
            attempt = Attempt(
                request, route, api, path, started, raw, parsed, key_name, cloud, deadline, blocked=blocked
            )
            if trace is not None:
                trace.bind(attempt)
            return await self.relay.run(attempt)
        except Overloaded:
            raise
        except Exception:
            if attempt is not None and attempt.committed:
                raise  # the answer has started: aiohttp closes the connection
            log.exception("unexpected error answering %s %s", request.method, request.path)
            return self._refuse(
                500, "the router failed to handle this request; see its log", code="router_error"
            )
        finally:
            claim.release()

    def _too_large(self, limit: int) -> web.Response:
        return self._refuse(
            413,
            f"the request body is larger than this route accepts ({limit} bytes: policy.maxRequestBytes, at most "
            "what the router's memory limit allows it to hold)",
        )

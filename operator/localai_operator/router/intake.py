"""Admission of one /v1 request: the path, the client key, the rate limit, then the body, read once into
a bounded buffer; the request then goes to the listing or, as an `Attempt`, to the relay.

Memory: every body is held once, in a buffer of exactly its size (or growing up to `maxRequestBytes`
when its size is unknown), and the router holds at most `server.bodyBufferBytes` of bodies at once; a
request that would exceed that waits, unread, until room is free (TCP pushes back on its sender).
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from collections.abc import Callable
from typing import Final

from aiohttp import web

from localai_operator.constants import SERVED_BY_ROUTER
from localai_operator.router import body as bodies
from localai_operator.router import paths, replies
from localai_operator.router.attempt import Attempt
from localai_operator.router.auth import INVALID, MISSING, ClientKeys, presented_key
from localai_operator.router.listing import Listing
from localai_operator.router.metrics import RouterMetrics
from localai_operator.router.paths import Budget
from localai_operator.router.policy import BUDGET_EXHAUSTED, retry_after_header
from localai_operator.router.relay import Relay
from localai_operator.router.upstream import API_PREFIX, Route

log = logging.getLogger(__name__)

# Bodies up to this size are read with aiohttp's own reader; larger ones straight into their final buffer.
_SMALL_BODY: Final = 64 * 1024
_JSON_TYPES: Final = frozenset({"application/json", "text/json"})


class BodyTooLarge(Exception):
    pass


class BodyBuffer:
    """A byte budget for request bodies, granted first come, first served."""

    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self.used = 0
        self._waiters: deque[tuple[int, asyncio.Future[None]]] = deque()

    def _wake(self) -> None:
        while self._waiters:
            size, waiter = self._waiters[0]
            if waiter.done():
                self._waiters.popleft()
            elif self.used + size <= self.capacity:
                self._waiters.popleft()
                self.used += size
                waiter.set_result(None)
            else:
                break

    def try_take(self, size: int) -> bool:
        """Reserve `size` bytes if there is room now and nobody is waiting."""
        size = min(size, self.capacity)
        if not self._waiters and self.used + size <= self.capacity:
            self.used += size
            return True
        return False

    async def take(self, size: int, timeout: float) -> bool:
        """Reserve `size` bytes (at most the whole budget); False when no room came within `timeout`."""
        if self.try_take(size):
            return True
        size = min(size, self.capacity)
        waiter = asyncio.get_running_loop().create_future()
        self._waiters.append((size, waiter))
        try:
            async with asyncio.timeout(timeout):
                await waiter
        except BaseException as err:
            if waiter.done() and not waiter.cancelled():
                self.give(size)  # granted just as the wait ended
            else:
                waiter.cancel()
                self._wake()
            if isinstance(err, TimeoutError):
                return False
            raise
        return True

    def give(self, size: int) -> None:
        self.used -= min(size, self.capacity)
        self._wake()


async def read_body(request: web.Request, limit: int) -> bytes | bytearray:
    """The whole body, decoded when the client sent it compressed; BodyTooLarge beyond `limit`."""
    if not request.body_exists:
        return b""
    length = request.content_length
    decoded = request.headers.get("Content-Encoding", "identity").lower() != "identity"
    if length is not None and not decoded:
        if length > limit:
            raise BodyTooLarge
        if length <= _SMALL_BODY:
            return await request.read()
        buffer = bytearray(length)
        view = memoryview(buffer)
        at = 0
        while at < length:
            chunk = await request.content.readany()
            if not chunk:
                raise ConnectionResetError("the client closed the connection before sending its whole body")
            view[at : at + len(chunk)] = chunk
            at += len(chunk)
        view.release()
        return buffer
    grown = bytearray()
    while True:
        chunk = await request.content.readany()
        if not chunk:
            return grown
        if len(grown) + len(chunk) > limit:
            raise BodyTooLarge
        grown += chunk


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
    ) -> None:
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

    async def handle(self, request: web.Request) -> web.StreamResponse:
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
        return await self._with_body(request, route, api, path, started, key_name)

    async def _with_body(
        self,
        request: web.Request,
        route: Route,
        api: paths.ApiPath,
        path: str,
        started: float,
        key_name: str | None,
    ) -> web.StreamResponse:
        limit = route.max_request_bytes
        length = request.content_length
        if length is not None and length > limit and "Content-Encoding" not in request.headers:
            return self._too_large(limit)
        known = length is not None and "Content-Encoding" not in request.headers
        reserved = length if known and length is not None else (limit if request.body_exists else 0)
        timeout = route.config.policy.request_timeout_seconds
        if not self.buffer.try_take(reserved):
            self.metrics.buffer_waits.inc()
            if not await self.buffer.take(reserved, timeout):
                return self._refuse(
                    503,
                    "the router is holding as many request bodies as its memory allows; retry shortly",
                    code="router_busy",
                    headers={"Retry-After": "1"},
                )
        attempt: Attempt | None = None
        try:
            try:
                if request.content.is_eof():
                    raw = await read_body(request, limit)  # already received: nothing to wait for
                else:
                    async with asyncio.timeout(timeout):
                        raw = await read_body(request, limit)
            except BodyTooLarge:
                return self._too_large(limit)
            except TimeoutError:
                return self._refuse(
                    408, "the request body did not arrive within policy.requestTimeoutSeconds"
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
            budget = route.budget if cloud is not None and api.budget is not Budget.NONE else None
            deadline = asyncio.get_running_loop().time() + budget if budget is not None else None
            attempt = Attempt(
                request, route, api, path, started, raw, parsed, key_name, cloud, deadline, blocked=blocked
            )
            return await self.relay.run(attempt)
        except Exception:
            if attempt is not None and attempt.committed:
                raise  # the answer has started: aiohttp closes the connection
            log.exception("unexpected error answering %s %s", request.method, request.path)
            return self._refuse(
                500, "the router failed to handle this request; see its log", code="router_error"
            )
        finally:
            self.buffer.give(reserved)

    def _too_large(self, limit: int) -> web.Response:
        return self._refuse(
            413,
            f"the request body is larger than this route accepts ({limit} bytes: policy.maxRequestBytes, at most "
            "what the router's memory limit allows it to hold)",
        )

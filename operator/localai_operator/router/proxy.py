"""The relay: one local attempt, then at most one cloud attempt, bytes passed through unbuffered.

Nothing is sent to the client until an upstream has produced its first body byte, which is what
makes falling back safe; after that, an upstream failure ends the stream with an SSE error event.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Final

import aiohttp
from aiohttp import web
from multidict import CIMultiDict, CIMultiDictProxy
from yarl import URL

from localai_operator.constants import SERVED_BY_FALLBACK, SERVED_BY_HEADER, SERVED_BY_LOCAL
from localai_operator.router.metrics import RouterMetrics
from localai_operator.router.policy import FallbackReason, falls_back_on_status, retry_after_header
from localai_operator.router.upstream import (
    API_PREFIX,
    FALLBACK_REASON_HEADER,
    Endpoint,
    Route,
    local_request_headers,
    response_headers,
)
from localai_operator.router.usage import Usage, usage_of

log = logging.getLogger(__name__)

SSE_CONTENT_TYPE: Final = "text/event-stream"
UPSTREAM_ROUTER: Final = "router"
# The last few chunks of a stream are kept so the final `usage` object can be read even when it
# straddles two reads; older chunks are dropped, so per-stream memory stays bounded.
_STREAM_TAIL_CHUNKS: Final = 4
_ERROR_EXCERPT: Final = 500
_UPSTREAM_ERRORS: Final = (aiohttp.ClientError, TimeoutError)
_CLIENT_GONE: Final = (ConnectionError, aiohttp.ClientConnectionError)

_UNAVAILABLE: Final = {
    FallbackReason.CONNECT_ERROR: (503, "is unreachable (connection failed)"),
    FallbackReason.CONNECT_TIMEOUT: (503, "is unreachable (connect timeout)"),
    FallbackReason.RESET: (503, "closed the connection before answering"),
    FallbackReason.FIRST_BYTE_TIMEOUT: (504, "did not start answering in time"),
    FallbackReason.REQUEST_TIMEOUT: (504, "did not finish within policy.requestTimeoutSeconds"),
    FallbackReason.BREAKER_OPEN: (503, "is unavailable: its circuit breaker is open after repeated failures"),
}


@dataclass(frozen=True, slots=True)
class LocalFailure:
    """Why the local attempt produced nothing for the client, and what local said if anything."""

    reason: FallbackReason
    detail: str
    status: int | None = None
    body: bytes = b""
    retry_after: str | None = None


class RouteHolder:
    """The current config snapshot; a reload replaces `route` in one assignment."""

    def __init__(self, route: Route) -> None:
        self.route = route
        self.shutting_down = False


def error_body(message: str, error_type: str, code: str | None = None) -> bytes:
    return json.dumps(
        {"error": {"message": message, "type": error_type, "param": None, "code": code}}
    ).encode()


def sse_error_event(message: str, code: str) -> bytes:
    return b"data: " + error_body(message, "upstream_error", code) + b"\n\n"


def _reason_of(err: BaseException, first_byte_expired: bool) -> FallbackReason:
    if first_byte_expired:
        return FallbackReason.FIRST_BYTE_TIMEOUT
    if isinstance(err, aiohttp.ConnectionTimeoutError):
        return FallbackReason.CONNECT_TIMEOUT
    if isinstance(err, TimeoutError):
        return FallbackReason.REQUEST_TIMEOUT
    if isinstance(err, aiohttp.ClientConnectorError):
        return FallbackReason.CONNECT_ERROR
    return FallbackReason.RESET


def _describe(err: BaseException) -> str:
    return f"{type(err).__name__}: {err}" if str(err) else type(err).__name__


def _upstream_message(body: bytes) -> str:
    """The message of an OpenAI-style error body, else an excerpt of the body."""
    try:
        payload = json.loads(body)
        message = payload["error"]["message"]
        if isinstance(message, str):
            return message
    except (ValueError, KeyError, TypeError):
        pass
    return body[:_ERROR_EXCERPT].decode("utf-8", "replace").strip()


class Proxy:
    """The request handlers of the /v1 API. `session` is set when the app starts (aiohttp wants a
    ClientSession created inside the running loop).

    The rules where the issue leaves room:
    - First-byte budget (policy.firstTokenTimeoutMs), from the start of the local attempt: response
      headers and the first body byte must both arrive in time, streaming or not. A non-streaming
      answer is complete before LocalAI sends anything, so on such routes the budget bounds the
      whole generation; it applies only when a fallback exists (else it would only create errors).
    - Non-streaming bodies are read in full before the client sees a byte, so a local failure while
      reading still falls back; SSE bodies are relayed chunk by chunk as they arrive.
    - The cloud gets its own policy.requestTimeoutSeconds; the client's wait is the sum at worst.
    - Breaker verdicts: 5xx, 429, connection errors and timeouts fail; any other answer succeeds
      (a 4xx means local is up). A stream's verdict is given at its first chunk; a later failure
      counts once more. A client leaving before the verdict gives none.
    """

    session: aiohttp.ClientSession

    def __init__(self, holder: RouteHolder, metrics: RouterMetrics, clock: Callable[[], float]) -> None:
        self.holder = holder
        self.metrics = metrics
        self.clock = clock

    def _over_rate_limit(self, route: Route, started: float) -> web.Response | None:
        if route.limiter is None:
            return None
        wait = route.limiter.take(started)
        return self._rate_limited(wait, started) if wait else None

    async def relay(self, request: web.Request) -> web.StreamResponse:
        route = self.holder.route
        started = self.clock()
        limited = self._over_rate_limit(route, started)
        if limited is not None:
            return limited
        path = request.path[len(API_PREFIX) :]
        body = await request.read()

        choice = route.pick(started)
        failure: LocalFailure
        if choice is None:
            wait = route.reopens_in(started)
            failure = LocalFailure(
                FallbackReason.BREAKER_OPEN,
                f"circuit breaker open, next probe in {wait:.1f}s",
                retry_after=retry_after_header(wait),
            )
        else:
            result = await self._local(request, route, choice[0], choice[1], path, body, started)
            if isinstance(result, web.StreamResponse):
                return result
            failure = result
            self.metrics.local_failures.inc((failure.reason,))

        if route.cloud is None:
            return self._no_fallback(route, failure, started)
        self.metrics.fallbacks.inc((failure.reason,))
        return await self._cloud(request, route, path, body, started, failure)

    async def _local(
        self, request: web.Request, route: Route, endpoint: Endpoint, probe: bool, path: str,
        body: bytes, started: float,
    ) -> web.StreamResponse | LocalFailure:  # fmt: skip
        endpoint.outstanding += 1
        verdict = False
        budget = asyncio.timeout(route.first_byte_budget)
        upstream: aiohttp.ClientResponse | None = None
        try:
            try:
                async with budget:
                    upstream = await self.session.post(
                        self._with_query(endpoint.urls[path], request),
                        data=body,
                        headers=local_request_headers(request.headers),
                        timeout=route.local_timeout,
                    )
                    status = upstream.status
                    if falls_back_on_status(status) and route.cloud is not None:
                        # Do not wait for the error body when the cloud can answer instead.
                        first = b""
                    else:
                        first = await upstream.content.readany()
                if falls_back_on_status(status):
                    error = first + await upstream.read() if route.cloud is None else b""
                    verdict = True
                    self._failed(endpoint, probe)
                    reason = FallbackReason.STATUS_429 if status == 429 else FallbackReason.STATUS_5XX
                    return LocalFailure(
                        reason, f"local answered {status}", status, error, upstream.headers.get("Retry-After")
                    )
                if upstream.content_type == SSE_CONTENT_TYPE and status < 300:
                    verdict = True
                    self._succeeded(endpoint, probe)
                    return await self._stream(
                        request, upstream, first, SERVED_BY_LOCAL, None, started, 0.0,
                        on_failure=lambda: self._failed(endpoint, False),
                    )  # fmt: skip
                rest = await upstream.read()
            except _UPSTREAM_ERRORS as err:
                verdict = True
                self._failed(endpoint, probe)
                reason = _reason_of(err, budget.expired())
                log.info("local %s failed: %s (%s)", endpoint.base_url, reason.value, _describe(err))
                return LocalFailure(reason, f"{reason.value}: {_describe(err)}")
            verdict = True
            self._succeeded(endpoint, probe)
            return self._buffered(
                upstream.status, upstream.headers, first + rest, SERVED_BY_LOCAL, None, started, 0.0
            )
        finally:
            endpoint.outstanding -= 1
            if not verdict:
                endpoint.breaker.abandon(probe)
            if upstream is not None:
                upstream.close()

    def _failed(self, endpoint: Endpoint, probe: bool) -> None:
        breaker = endpoint.breaker
        if breaker.failure(self.clock(), probe):
            log.warning(
                "local %s: circuit breaker open for %gs (%s); requests skip it until a probe succeeds",
                endpoint.base_url, breaker.open_seconds,
                "the half-open probe failed" if probe else f"{breaker.failure_threshold} consecutive failures",
            )  # fmt: skip

    def _succeeded(self, endpoint: Endpoint, probe: bool) -> None:
        if endpoint.breaker.success(probe):
            log.info("local %s: probe succeeded, circuit breaker closed", endpoint.base_url)

    async def _cloud(
        self, request: web.Request, route: Route, path: str, body: bytes, started: float,
        failure: LocalFailure,
    ) -> web.StreamResponse:  # fmt: skip
        cloud = route.cloud
        assert cloud is not None
        reason = failure.reason.value
        price = cloud.fallback.price_per_million_tokens
        upstream: aiohttp.ClientResponse | None = None
        try:
            try:
                upstream = await self.session.post(
                    self._with_query(cloud.urls[path], request),
                    data=cloud.request_body(body),
                    headers=cloud.request_headers(request.headers),
                    timeout=route.cloud_timeout,
                )
                first = await upstream.content.readany()
                if upstream.content_type == SSE_CONTENT_TYPE and upstream.status < 300:
                    return await self._stream(
                        request, upstream, first, SERVED_BY_FALLBACK, reason, started, price
                    )
                rest = await upstream.read()
            except _UPSTREAM_ERRORS as err:
                log.warning("cloud fallback failed after local %s: %s", reason, _describe(err))
                status = 504 if isinstance(err, TimeoutError) else 502
                message = f"local LocalAI failed ({failure.detail}) and the cloud fallback failed ({_describe(err)})"
                return self._error(status, message, "upstream_error", SERVED_BY_FALLBACK, started, reason)
            return self._buffered(
                upstream.status, upstream.headers, first + rest, SERVED_BY_FALLBACK, reason, started, price
            )
        finally:
            if upstream is not None:
                upstream.close()

    async def _stream(
        self, request: web.Request, upstream: aiohttp.ClientResponse, first: bytes, served_by: str,
        fallback_reason: str | None, started: float, price: float,
        on_failure: Callable[[], None] | None = None,
    ) -> web.StreamResponse:  # fmt: skip
        headers = response_headers(upstream.headers, served_by, fallback_reason)
        # Ask buffering reverse proxies (nginx ingress) to pass chunks through as they come.
        headers["X-Accel-Buffering"] = "no"
        response = web.StreamResponse(status=upstream.status, headers=headers)
        tail: deque[bytes] = deque(maxlen=_STREAM_TAIL_CHUNKS)
        chunk = first
        try:
            await response.prepare(request)
            await response.write(chunk)
            self.metrics.ttfb.observe((served_by,), self.clock() - started)
            while chunk:
                tail.append(chunk)
                try:
                    chunk = await upstream.content.readany()
                except _UPSTREAM_ERRORS as err:
                    self._stream_failed(response, served_by, err)
                    if on_failure is not None:
                        on_failure()
                    await response.write(
                        sse_error_event(
                            f"the {served_by} upstream failed mid-stream ({_describe(err)}); "
                            "the answer above is incomplete",
                            "upstream_stream_interrupted",
                        )
                    )
                    break
                if chunk:
                    await response.write(chunk)
            await response.write_eof()
        except _CLIENT_GONE:
            # The client left: closing the upstream response (in the caller) cancels generation.
            return response
        finally:
            self._account(served_by, upstream.status, started, started_stream=True)
        usage = usage_of(b"".join(tail))
        if usage is not None and upstream.status < 300:
            self._count_tokens(served_by, usage, price)
        return response

    def _stream_failed(self, response: web.StreamResponse, served_by: str, err: BaseException) -> None:
        self.metrics.stream_errors.inc((served_by,))
        log.warning("%s upstream failed mid-stream: %s", served_by, _describe(err))
        # The connection is not reused after an interrupted answer.
        response.force_close()

    def _buffered(
        self, status: int, upstream_headers: CIMultiDictProxy[str], body: bytes, served_by: str,
        fallback_reason: str | None, started: float, price: float,
    ) -> web.Response:  # fmt: skip
        response = web.Response(
            status=status, body=body, headers=response_headers(upstream_headers, served_by, fallback_reason)
        )
        self._account(served_by, status, started, started_stream=False)
        if status < 300:
            usage = usage_of(body)
            if usage is not None:
                self._count_tokens(served_by, usage, price)
        return response

    def _no_fallback(self, route: Route, failure: LocalFailure, started: float) -> web.Response:
        why = (
            f"route {route.name} is sensitive, so it has no cloud fallback"
            if route.sensitive
            else f"route {route.name} has no cloud fallback configured"
        )
        if failure.status is not None:
            status = failure.status
            message = f"local LocalAI answered {status}: {_upstream_message(failure.body)}; {why}"
        else:
            status, what = _UNAVAILABLE[failure.reason]
            message = f"local LocalAI {what} ({failure.detail}); {why}"
        code = "sensitive_route_no_fallback" if route.sensitive else "no_fallback"
        response = self._error(status, message, "upstream_error", SERVED_BY_LOCAL, started, None, code)
        if failure.retry_after is not None:
            response.headers["Retry-After"] = failure.retry_after
        return response

    def _rate_limited(self, wait: float, started: float) -> web.Response:
        self.metrics.rate_limited.inc()
        response = web.Response(
            status=429,
            body=error_body(
                "rate limit exceeded for this route; retry later", "rate_limit_error", "rate_limited"
            ),
            content_type="application/json",
            headers={"Retry-After": retry_after_header(wait)},
        )
        self._account(UPSTREAM_ROUTER, 429, started, started_stream=False)
        return response

    def _error(
        self, status: int, message: str, error_type: str, served_by: str, started: float,
        fallback_reason: str | None, code: str | None = None,
    ) -> web.Response:  # fmt: skip
        headers = {SERVED_BY_HEADER: served_by}
        if fallback_reason is not None:
            headers[FALLBACK_REASON_HEADER] = fallback_reason
        response = web.Response(
            status=status, body=error_body(message, error_type, code), content_type="application/json",
            headers=headers,
        )  # fmt: skip
        self._account(served_by, status, started, started_stream=False)
        return response

    def _account(self, upstream: str, status: int, started: float, started_stream: bool) -> None:
        elapsed = self.clock() - started
        labels = (upstream,)
        self.metrics.requests.inc((upstream, str(status)))
        self.metrics.duration.observe(labels, elapsed)
        if not started_stream:
            # A buffered answer's first byte leaves together with its last.
            self.metrics.ttfb.observe(labels, elapsed)

    def _count_tokens(self, served_by: str, usage: Usage, price_per_million: float) -> None:
        tokens = self.metrics.tokens
        tokens.inc((served_by, "prompt"), usage.prompt_tokens)
        tokens.inc((served_by, "completion"), usage.completion_tokens)
        if price_per_million:
            self.metrics.cost.inc((), usage.completion_tokens * price_per_million / 1e6)

    @staticmethod
    def _with_query(url: URL, request: web.Request) -> URL:
        return url.with_query(request.query_string) if request.query_string else url

    async def models(self, request: web.Request) -> web.StreamResponse:
        """Local models first, then the cloud's that local does not list; local alone when the cloud
        cannot answer. Listing never touches a breaker: it is not inference traffic."""
        route = self.holder.route
        started = self.clock()
        limited = self._over_rate_limit(route, started)
        if limited is not None:
            return limited
        local_headers = local_request_headers(request.headers)
        listings = [
            self._list_models(e.urls["/models"], local_headers, route)
            for e in route.endpoints
            if e.breaker.available(started)
        ]
        local_count = len(listings)
        if route.cloud is not None:
            listings.append(
                self._list_models(
                    route.cloud.urls["/models"], route.cloud.request_headers(request.headers), route
                )
            )
        results = await asyncio.gather(*listings)
        local_ok = [r for r in results[:local_count] if r is not None]
        cloud_ok = [r for r in results[local_count:] if r is not None]
        if not local_ok and not cloud_ok:
            return self._error(
                503, "no model list available: neither local nor the cloud fallback answered",
                "upstream_error", SERVED_BY_LOCAL, started, None,
            )  # fmt: skip
        merged: list[object] = []
        seen: set[str] = set()
        for entries in (*local_ok, *cloud_ok):
            for entry in entries:
                model_id = entry.get("id")
                if isinstance(model_id, str) and model_id not in seen:
                    seen.add(model_id)
                    merged.append(entry)
        served_by = SERVED_BY_LOCAL if local_ok else SERVED_BY_FALLBACK
        response = web.Response(
            body=json.dumps({"object": "list", "data": merged}).encode(),
            content_type="application/json",
            headers={SERVED_BY_HEADER: served_by},
        )
        self._account(served_by, 200, started, started_stream=False)
        return response

    async def _list_models(
        self, url: URL, headers: CIMultiDict[str], route: Route
    ) -> list[dict[str, object]] | None:
        try:
            async with self.session.get(url, headers=headers, timeout=route.listing_timeout) as upstream:
                if upstream.status != 200:
                    log.info("model list from %s answered %d", url.origin(), upstream.status)
                    return None
                payload = json.loads(await upstream.read())
        except (*_UPSTREAM_ERRORS, ValueError) as err:
            log.info("model list from %s failed: %s", url.origin(), _describe(err))
            return None
        data = payload.get("data") if isinstance(payload, dict) else None
        if not isinstance(data, list):
            return None
        return [entry for entry in data if isinstance(entry, dict)]

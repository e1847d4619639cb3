"""The relay: local first (one endpoint, and one more when the connection to the first failed with nothing
sent), then at most one cloud attempt.

Nothing reaches the client until local has produced its first content token within the budget: a stream's
leading content-less chunks (LocalAI's role chunk, empty deltas, keep-alives) are held, then relayed with
the rest; a non-stream request is streamed from local and assembled, so its budget also means "first
token" and a long healthy generation is never cut. Once a byte went to the client, an upstream failure
ends the stream with an SSE error event.

Breaker verdicts: 5xx, 429, redirects, connection errors, in-stream errors, empty answers and a missed
budget fail; any other answer succeeds at its first token (a 4xx means local is up). A failure after the
first token counts once more, except a request timeout: a long generation is not a sick pod. A client
leaving before the verdict gives none.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import logging
import math
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Final

import aiohttp
from aiohttp import web
from yarl import URL

from localai_operator.constants import SERVED_BY_FALLBACK, SERVED_BY_LOCAL, SERVED_BY_ROUTER
from localai_operator.router import body as bodies
from localai_operator.router import codec, http, replies, sse, tokens
from localai_operator.router.affinity import SESSION_HEADER, request_key
from localai_operator.router.assemble import Assembler
from localai_operator.router.attempt import Attempt
from localai_operator.router.capacity import Demand, model_key
from localai_operator.router.ledger import Ledger
from localai_operator.router.listing import Catalog
from localai_operator.router.metrics import RouterMetrics
from localai_operator.router.overload import Guard
from localai_operator.router.paths import Budget, StreamFormat
from localai_operator.router.policy import (
    BUDGET_EXHAUSTED,
    UNPRICED,
    FallbackReason,
    falls_back_on_status,
    retry_after_header,
)
from localai_operator.router.upstream import (
    ASSEMBLED_DROPPED,
    Choice,
    Cloud,
    Endpoint,
    Route,
    Unavailable,
    local_request_headers,
    response_headers,
)
from localai_operator.router.usage import Usage, usage_of
from localai_operator.wire import AVOIDED, SPEND, Fallback

log = logging.getLogger(__name__)

SSE_CONTENT_TYPE: Final = "text/event-stream"
# Non-stream answers up to this size are read whole before the client sees a byte (so a failure while
# reading still falls back); larger ones are relayed as they arrive.
BUFFERED_ANSWER_BYTES: Final = 1024 * 1024
# Bodies above this go out as slices of the client's buffer instead of one joined copy.
_JOIN_LIMIT: Final = 256 * 1024
# The answer a request without `max_tokens` is assumed to allow when its cost is reserved against a spend cap
# (the seed's typical answer: 256 tokens).
RESERVED_ANSWER_TOKENS: Final = 256
# A stream's last events are kept to read the final `usage`; per-stream memory stays bounded.
_TAIL_EVENTS: Final = 4
_ERROR_EXCERPT: Final = 500
_UPSTREAM_ERRORS: Final = (http.UpstreamError, TimeoutError)
# Writing to a client that left: aiohttp raises ClientConnectionResetError (a ConnectionResetError).
_CLIENT_GONE: Final = (ConnectionError, aiohttp.ClientConnectionError)
_CONNECT_FAILURES: Final = frozenset({FallbackReason.CONNECT_ERROR, FallbackReason.CONNECT_TIMEOUT})
# What a client that waited in vain is told to wait before trying again: a slot frees within seconds; a pool
# that did not come up within the cold-start allowance is unlikely to within one second.
SATURATED_RETRY_AFTER: Final = 1.0
COLD_RETRY_AFTER: Final = 10.0
# How long a first content that may be LocalAI's echo of an error waits for the event after it (the binary sends
# the error 0.3-4 ms after the echo on loopback, under load). Only answers of that shape wait (`_may_be_echo`).
ECHO_GRACE_SECONDS: Final = 0.1
# A held first content is released this long before the first-token budget ends, so that the budget never fires
# on an answer whose content came in time.
_DEADLINE_MARGIN: Final = 0.005
# A request starts again elsewhere at most this often when the pods it runs on leave the ready set.
MAX_DEPARTURES: Final = 3
# How long a request that nothing else may answer gives a pod whose LocalAI said its backend is unavailable to
# leave the ready set (a stopping pod does within tens of milliseconds once the EndpointSlices say so).
UNAVAILABLE_SETTLE_SECONDS: Final = 1.0
# How Go's gRPC spells the status in the error LocalAI passes on ("rpc error: code = Unavailable desc = …").
_UNAVAILABLE_MARK: Final = "code = Unavailable"
# Waiting, by what is awaited: the `reason` label of the waiting metrics.
WAIT_REASONS: Final = (FallbackReason.SATURATED, FallbackReason.POOL_COLD)

_UNAVAILABLE: Final = {
    FallbackReason.CONNECT_ERROR: (503, "is unreachable (connection failed)"),
    FallbackReason.CONNECT_TIMEOUT: (503, "is unreachable (connect timeout)"),
    FallbackReason.RESET: (503, "closed the connection before answering"),
    FallbackReason.MALFORMED: (502, "sent an answer that is not valid HTTP/1.1"),
    FallbackReason.REDIRECT: (502, "answered with a redirect, which the router does not follow"),
    FallbackReason.FIRST_TOKEN_TIMEOUT: (504, "did not produce a first token in time"),
    FallbackReason.REQUEST_TIMEOUT: (504, "did not finish within policy.requestTimeoutSeconds"),
    FallbackReason.STREAM_ERROR: (502, "reported an error in its stream"),
    FallbackReason.EMPTY_RESPONSE: (502, "sent an empty or incomplete answer"),
    FallbackReason.BREAKER_OPEN: (503, "is unavailable: its circuit breaker is open after repeated failures"),
    FallbackReason.NO_ENDPOINT: (503, "has no ready pod"),
    FallbackReason.MODEL_NOT_LOCAL: (404, "does not serve this model"),
    FallbackReason.SATURATED: (503, "is saturated: every slot of every ready pod is busy"),
    FallbackReason.POOL_COLD: (503, "has no ready pod yet: the pool is scaled to zero or starting"),
}


@dataclass(frozen=True, slots=True)
class LocalFailure:
    """Why the local attempt produced nothing for the client, and what local said if anything."""

    reason: FallbackReason
    detail: str
    status: int | None = None
    body: bytes = b""
    retry_after: str | None = None
    # Whether the breaker of the endpoint should count it (set by the attempt, read when retrying).
    counted: bool = True
    # The pod left the ready set with the request in flight: not the request's failure, it goes on elsewhere.
    departed: bool = False


@dataclass(slots=True)
class _Wait:
    """A request waiting for a slot or a pod: what it waits for and until when (event-loop time)."""

    reason: FallbackReason
    since: float
    until: float
    # How the wait ended, for the metrics: local (it got a pod), timeout, or left (the client went away).
    result: str = "left"
    rounds: int = 0

    def waited(self) -> float:
        return asyncio.get_running_loop().time() - self.since

    async def wait(self, route: Route, model: str | None) -> bool:
        """Until woken (a slot freed, the pods changed) or the bound: False when the time is up."""
        left = self.until - asyncio.get_running_loop().time()
        if left <= 0:
            return False
        # A woken request that found no room after all keeps its place at the front.
        front = self.rounds > 0
        self.rounds += 1
        await route.waiters.wait(model, left, front=front)
        return True


class _StreamFailure(Exception):
    def __init__(self, reason: FallbackReason, detail: str) -> None:
        super().__init__(detail)
        self.reason = reason
        self.detail = detail


def _raise_if_echoed_error(following: list[Any], fmt: StreamFormat) -> None:
    """LocalAI v4.9.0 streams a backend error (a prompt longer than the context, say) as a content delta holding
    the error's text, then the error event, in one write (seen on the binary): an error event that arrived with
    the first content, before any other content, means that content was the error, not an answer."""
    for payload in following:
        kind = sse.kind_of(payload, fmt)
        if kind is sse.Kind.ERROR:
            raise _StreamFailure(FallbackReason.STREAM_ERROR, sse.error_message(payload))
        if kind is sse.Kind.CONTENT:
            return


def _may_be_echo(before: list[Any], fmt: StreamFormat) -> bool:
    """Whether a stream's first content, after the events `before` it, may be LocalAI's echo of an error. LocalAI
    v4.9.0 writes one event per reply of its backend, and the backend's first reply of an answer is an empty one
    (llama.cpp's role-init element): a chat answer opens with the role event and `{"content":null}`, a completion
    with an event without `text`, then the first token. When the backend's first reply is an error instead, its
    text becomes the first content at once — right after the role event (chat), or as the first event
    (completions) — and gRPC's status of it follows (`grpc-server.cpp`, `PredictStream`; `chat_stream_workers.go`,
    `processStream`; `completion.go`). Seen on the binary, in two writes about a millisecond apart."""
    if fmt is StreamFormat.CHAT:
        return all(sse.role_only(payload) for payload in before)
    if fmt is StreamFormat.COMPLETION:
        return not before
    return False


@dataclass(slots=True)
class _Held:
    """A stream read up to its first content: the events so far (nothing sent yet) and the reader state."""

    events: list[bytes]
    payloads: list[Any]
    splitter: sse.EventSplitter
    # Events that arrived in the same read after the first content, and their payloads when that read was
    # decoded in one go (None: decode them from `rest`); whether [DONE] ended that read.
    rest: list[bytes] = field(default_factory=list)
    rest_payloads: list[Any] | None = None
    rest_done: bool = False
    # No event of that read can be an error (checked on its bytes).
    rest_clean: bool = False


class _Budget:
    """`asyncio.timeout_at(deadline)` for one local attempt, with less bookkeeping (entered once per request):
    at the deadline the task is cancelled, and that cancellation leaves the block as TimeoutError."""

    __slots__ = ("_cancelling", "_deadline", "_expired", "_handle", "_task")

    def __init__(self, deadline: float) -> None:
        self._deadline = deadline
        self._expired = False
        self._cancelling = 0
        self._task: asyncio.Task[Any] | None = None
        self._handle: asyncio.TimerHandle | None = None

    def expired(self) -> bool:
        return self._expired

    async def __aenter__(self) -> None:
        task = asyncio.current_task()
        assert task is not None, "a budget is entered inside a task"
        self._task = task
        self._cancelling = task.cancelling()
        self._handle = asyncio.get_running_loop().call_at(self._deadline, self._expire)

    def _expire(self) -> None:
        self._expired = True
        assert self._task is not None
        self._task.cancel()

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, _: object
    ) -> None:
        assert self._handle is not None and self._task is not None
        self._handle.cancel()
        if self._expired and self._task.uncancel() <= self._cancelling and exc_type is asyncio.CancelledError:
            raise TimeoutError from exc


class _Departed(Exception):
    """The attempt's pod left the pool's ready pods before anything reached the client."""


class _Departure:
    """The scope of one local attempt: when its pod departs for certain (the pool's EndpointSlices say so) while
    nothing has reached the client, the attempt's task is cancelled and the cancellation leaves the block as
    _Departed. A LocalAI pod that stops (SIGTERM) stops its backend at once: what it was answering would end in an
    error ~15 s later (docs/localai-facts.md §12)."""

    __slots__ = ("_attempt", "_cancelling", "_endpoint", "_fired", "_task", "_unregister")

    def __init__(self, attempt: Attempt, endpoint: Endpoint) -> None:
        self._attempt = attempt
        self._endpoint = endpoint
        self._fired = False
        self._cancelling = 0
        self._task: asyncio.Task[Any] | None = None
        self._unregister: Callable[[], None] | None = None

    async def __aenter__(self) -> None:
        task = asyncio.current_task()
        assert task is not None, "an attempt runs inside a task"
        self._task = task
        self._cancelling = task.cancelling()
        self._unregister = self._endpoint.on_departure(self._departed)

    def _departed(self, certain: bool) -> None:
        # Once response headers went out, the answer is the client's: it ends as the pod ends it.
        if certain and not self._attempt.committed and self._task is not None:
            self._fired = True
            self._task.cancel()

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, _: object
    ) -> None:
        assert self._unregister is not None and self._task is not None
        # Dropped, not only called: it holds the hook bound to this scope, a reference cycle that kept the attempt
        # (its body, up to maxRequestBytes) alive past its request until the next garbage collection.
        unregister, self._unregister = self._unregister, None
        unregister()
        if self._fired and self._task.uncancel() <= self._cancelling and exc_type is asyncio.CancelledError:
            raise _Departed from exc


class _HeldStreamResponse(web.StreamResponse):
    """A stream whose first events are already here: its headers go out in the same write as those events (aiohttp
    sends a StreamResponse's headers on their own at prepare, which costs the client a read of its own before the
    first token)."""

    _send_headers_immediately = False


def shown(model: str | None) -> str:
    """A client-chosen model name as a message quotes it: bounded."""
    text = repr(model)
    return text if len(text) <= 80 else text[:77] + "..."


def _describe(err: BaseException) -> str:
    return f"{type(err).__name__}: {err}" if str(err) else type(err).__name__


def _upstream_message(body: bytes) -> str:
    """The message of an OpenAI-style error body, else an excerpt of the body."""
    try:
        message = json.loads(body)["error"]["message"]
        if isinstance(message, str):
            return message
    except (ValueError, KeyError, TypeError):
        pass
    return body[:_ERROR_EXCERPT].decode("utf-8", "replace").strip()


def _backend_unavailable(failure: LocalFailure) -> bool:
    """LocalAI's error for a request its backend process cannot take (gRPC status Unavailable: the backend stopped,
    as on SIGTERM, or crashed), in an error event or a 5xx body."""
    return _UNAVAILABLE_MARK in failure.detail or _UNAVAILABLE_MARK.encode() in failure.body


def _reason_of(err: BaseException, budget_expired: bool) -> FallbackReason:
    if budget_expired:
        return FallbackReason.FIRST_TOKEN_TIMEOUT
    if isinstance(err, http.ConnectTimeout):
        return FallbackReason.CONNECT_TIMEOUT
    if isinstance(err, http.ConnectError):
        return FallbackReason.CONNECT_ERROR
    if isinstance(err, TimeoutError):
        return FallbackReason.REQUEST_TIMEOUT
    if isinstance(err, http.Malformed):
        return FallbackReason.MALFORMED
    return FallbackReason.RESET


def _read_failure(err: BaseException) -> LocalFailure:
    """Reading an answer's body failed: a broken pod counts, a long one does not."""
    reason = _reason_of(err, False)
    return LocalFailure(
        reason,
        f"{reason.value} while reading the answer: {_describe(err)}",
        counted=reason is not FallbackReason.REQUEST_TIMEOUT,
    )


def _segments(
    body: list[bodies.Segment] | bytes | bytearray,
) -> list[bodies.Segment] | tuple[bytes | bytearray, ...]:
    """The body as the client sends it: one buffer, or a small rewritten body joined into one."""
    if not isinstance(body, list):
        return (body,) if body else ()
    if bodies.size(body) <= _JOIN_LIMIT:
        return (bodies.joined(body),)
    return body


class Relay:
    """Local and cloud attempts for admitted requests. `client` is set when the app starts (its pool
    belongs to the running loop)."""

    client: http.Client

    def __init__(
        self,
        metrics: RouterMetrics,
        clock: Callable[[], float],
        catalog: Catalog,
        demand: Demand | None = None,
        ledger: Ledger | None = None,
        current: Callable[[], Route] | None = None,
        unreachable: Callable[[], None] = lambda: None,
        guard: Guard | None = None,
    ) -> None:
        """`current` gives the newest config snapshot: a request that waited takes the pods known now."""
        self.current = current
        self.guard = guard
        # Called when a connection to a pod failed: the pod may be gone while its address is still known.
        self.unreachable = unreachable
        self.metrics = metrics
        self.clock = clock
        self.catalog = catalog
        self.demand = demand if demand is not None else Demand(clock())
        self.ledger = ledger if ledger is not None else Ledger(None)
        # Requests waiting now, by reason (saturated, pool_cold).
        self.waiting: dict[FallbackReason, int] = dict.fromkeys(WAIT_REASONS, 0)

    # ------------------------------------------------------------------ the whole request

    async def run(self, a: Attempt) -> web.StreamResponse:
        model = a.body.model if a.body is not None else None
        if a.cloud is not None and model is not None and self.catalog.only_in_cloud(model, self.clock()):
            # Not demand for the pool: no replica of it could answer.
            failure = LocalFailure(
                FallbackReason.MODEL_NOT_LOCAL, f"local does not list the model {shown(model)}"
            )
            return await self._elsewhere(a, failure)
        demand = self.demand
        demand.begin(self.clock())
        try:
            result = await self._local(a)
            if isinstance(result, web.StreamResponse):
                return result
            self.metrics.local_failures.inc((result.reason,))
            return await self._elsewhere(a, result)
        finally:
            demand.end(self.clock())

    async def _elsewhere(self, a: Attempt, failure: LocalFailure) -> web.StreamResponse:
        """Local produced nothing: the cloud, or the router's own answer when there is none."""
        if a.cloud is None:
            if a.blocked is not None:
                self.metrics.blocked.inc((a.blocked,))
            return self._no_fallback(a, failure)
        self.metrics.fallbacks.inc((failure.reason,))
        # Every request skips an open breaker: one line per request would drown the log in an outage.
        log.log(
            logging.DEBUG if failure.reason is FallbackReason.BREAKER_OPEN else logging.INFO,
            "%s %s%s goes to the cloud: %s",
            a.request.method,
            a.request.path,
            f" (client key {a.key_name})" if a.key_name else "",
            failure.reason.value,
        )
        fallback = a.cloud.fallback
        estimate = self._estimate(a, fallback) if fallback.spend_cap is not None else 0.0
        if not self.ledger.admit(fallback.spend_cap, fallback.spend_share, estimate):
            # What is spent and what the requests already on their way may spend leave nothing for this one.
            a.cloud, a.blocked = None, BUDGET_EXHAUSTED
            self.metrics.blocked.inc((a.blocked,))
            return self._no_fallback(a, failure)
        a.fallback_reason = failure.reason
        a.served_by = SERVED_BY_FALLBACK
        try:
            return await self._cloud(a, a.cloud, failure)
        finally:
            self.ledger.settle(estimate)

    @staticmethod
    def _estimate(a: Attempt, fallback: Fallback) -> float:
        """What a request may cost in the cloud, reserved against the spend cap while it runs: its prompt and
        the answer it allows (`max_tokens` and kin, else RESERVED_ANSWER_TOKENS), or its per-request price."""
        if not a.api.token_usage:
            return fallback.price_per_request.get(a.path, 0.0)
        answer = RESERVED_ANSWER_TOKENS
        if a.body is not None:
            for key in ("max_completion_tokens", "max_tokens", "max_output_tokens"):
                value = a.body.value(key) if a.body.has(key) else None
                if isinstance(value, int) and value > 0:
                    answer = value
                    break
        return fallback.cost(a.prompt_tokens(), answer)

    # ------------------------------------------------------------------ local

    async def _local(self, a: Attempt) -> web.StreamResponse | LocalFailure:
        route = a.route
        model = a.body.model if a.body is not None else None
        key = self._key(a, route)
        tried: Endpoint | None = None
        failure: LocalFailure | None = None
        waiting: _Wait | None = None
        departures = 0
        try:
            while True:
                if waiting is None and a.cloud is None and route.endpoints and route.waiters.waiting(model):
                    # Others wait for this model's slots already: a new request queues behind them.
                    choice: Choice | Unavailable = Unavailable.FULL
                else:
                    choice = route.pick(self.clock(), exclude=tried, model=model, key=key)
                if isinstance(choice, Unavailable):
                    if failure is not None:
                        return failure
                    refused = self._unavailable(route, choice, model)
                    if refused.reason not in WAIT_REASONS or a.cloud is not None:
                        return refused
                    # Nowhere else to go: wait for a slot or a pod, within the bound of what is awaited.
                    if waiting is None:
                        waiting = self._begin_wait(route, refused.reason)
                    if not await waiting.wait(route, model):
                        waiting.result = "timeout"
                        return dataclasses.replace(
                            refused, detail=f"{refused.detail}; waited {waiting.waited():.1f}s"
                        )
                    if self.current is not None:
                        route = a.route = self.current()
                        if key is None:
                            key = self._key(a, route)
                    continue
                if waiting is not None:
                    waiting.result = "local"
                    self._end_wait(waiting)
                    waiting = None
                endpoint = choice.endpoint
                if a.trace is not None:
                    a.trace.local(a, endpoint)
                result = await self._local_once(a, endpoint, choice.probe, model, choice.warm)
                if a.trace is not None:
                    a.trace.attempt_ended(
                        result.status, None if isinstance(result, web.StreamResponse) else result.reason.value
                    )
                if isinstance(result, web.StreamResponse):
                    return result
                if result.reason in _CONNECT_FAILURES:
                    self.unreachable()
                if departures < MAX_DEPARTURES and await self._went_away(a, endpoint, result):
                    # Not the request's failure: it starts again on the pods known now (or waits for one, or
                    # goes to the cloud), with a first-token budget of its own.
                    departures += 1
                    if self.current is not None:
                        route = a.route = self.current()
                    tried, failure = endpoint, None
                    if a.deadline is not None and route.budget is not None:
                        a.deadline = asyncio.get_running_loop().time() + route.budget
                    a.first_token_at = None
                    self.metrics.retries.inc()
                    continue
                if result.reason not in _CONNECT_FAILURES or tried is not None:
                    return result
                if a.deadline is not None and asyncio.get_running_loop().time() >= a.deadline:
                    return result
                # Nothing was sent to this pod: another one may answer.
                tried, failure = endpoint, result
                self.metrics.retries.inc()
                log.info("local %s: %s; retrying on another endpoint", endpoint.base_url, result.reason.value)
        finally:
            if waiting is not None:
                self._end_wait(waiting)

    async def _went_away(self, a: Attempt, endpoint: Endpoint, failure: LocalFailure) -> bool:
        """Whether a local failure is the pod's going away (it left the ready pods) rather than the request's."""
        if failure.departed or endpoint.departed:
            return True
        if a.cloud is not None or a.route.pool is None or not _backend_unavailable(failure):
            return False
        # LocalAI answers every request gRPC's Unavailable once SIGTERM stopped its backend, which can be a moment
        # before the router hears that the pod is terminating: with nowhere else to go, the request gives the pod
        # that moment to leave before its failure stands.
        self.unreachable()
        return await endpoint.departure(UNAVAILABLE_SETTLE_SECONDS)

    @staticmethod
    def _key(a: Attempt, route: Route) -> int | None:
        """The request's prefix-affinity key (router/affinity.py), when the route has several pods to choose from."""
        if route.affinity is None or len(route.endpoints) < 2 or a.api.budget is not Budget.FIRST_TOKEN:
            return None
        return request_key(a.body, a.request.headers.get(SESSION_HEADER), route.prefix_bytes)

    def _unavailable(self, route: Route, why: Unavailable, model: str | None) -> LocalFailure:
        now = self.clock()
        if why is Unavailable.BREAKERS:
            wait = route.reopens_in(now)
            return LocalFailure(
                FallbackReason.BREAKER_OPEN,
                f"circuit breaker open, next probe in {wait:.1f}s",
                retry_after=retry_after_header(wait),
            )
        if why is Unavailable.FULL:
            pods = len(route.endpoints)
            return LocalFailure(
                FallbackReason.SATURATED,
                f"all {route.slots_of(model)} slots of each of the {pods} ready pod(s) are busy with {shown(model)}",
                retry_after=retry_after_header(SATURATED_RETRY_AFTER),
                counted=False,
            )
        if route.pool is None:
            return LocalFailure(FallbackReason.NO_ENDPOINT, "no local endpoint is known (no pod is ready)")
        return LocalFailure(
            FallbackReason.POOL_COLD,
            f"pool {route.pool} has no ready pod",
            retry_after=retry_after_header(COLD_RETRY_AFTER),
            counted=False,
        )

    def _begin_wait(self, route: Route, reason: FallbackReason) -> _Wait:
        if self.guard is not None:
            self.guard.check_waiting(sum(self.waiting.values()))
        bound = route.cold_wait if reason is FallbackReason.POOL_COLD else route.queue_timeout
        self.waiting[reason] += 1
        loop = asyncio.get_running_loop()
        return _Wait(reason, loop.time(), loop.time() + bound)

    def _end_wait(self, waiting: _Wait) -> None:
        self.waiting[waiting.reason] -= 1
        self.metrics.waits.inc((waiting.reason, waiting.result))

    def _failed(self, endpoint: Endpoint, probe: bool) -> None:
        breaker = endpoint.breaker
        if breaker.failure(self.clock(), probe):
            log.warning(
                "local %s: circuit breaker open for %gs (%s); requests skip it until a probe succeeds",
                endpoint.base_url,
                breaker.open_seconds,
                "the half-open probe failed"
                if probe
                else f"{breaker.failure_threshold} consecutive failures",
            )

    def _succeeded(self, endpoint: Endpoint, probe: bool) -> None:
        if endpoint.breaker.success(probe):
            log.info("local %s: probe succeeded, circuit breaker closed", endpoint.base_url)

    async def _send(self, a: Attempt, endpoint: Endpoint) -> http.Response:
        request = a.request
        route = a.route
        headers = local_request_headers(request.headers, route.local_key, route.config.auth is None)
        url = endpoint.url(a.path)
        query = request.raw_path.partition("?")[2]
        if query:
            # As the client sent it, byte for byte: decoding and re-sending would plant a raw space (%20), cut
            # the query (%23) or decode %25 twice.
            url = URL(str(url) + "?" + query, encoded=True)
        if a.trace is not None:
            a.trace.inject(headers)
        return await self.client.request(
            request.method,
            url,
            headers.items(),
            _segments(a.local_body()),
            connect_timeout=route.connect_timeout,
            timeout=route.request_timeout,
        )

    async def _prelude(self, a: Attempt, upstream: http.Response) -> _Held | bytes | LocalFailure:
        """What must arrive within the budget: a status that is not a failure, then the first content event
        of a stream (held) or the first bytes of any other answer."""
        status = upstream.status
        if falls_back_on_status(status) or 300 <= status < 400:
            return await self._status_failure(a, upstream)
        if status >= 300:
            return b""
        if upstream.content_type == SSE_CONTENT_TYPE:
            return await self._first_content(a, upstream) if a.deadline is not None else b""
        if a.deadline is None or a.request.method == "HEAD":
            return b""
        first = await upstream.readany()
        if not first:
            raise _StreamFailure(FallbackReason.EMPTY_RESPONSE, "local answered an empty 200")
        return first

    def _deadline(self, a: Attempt, endpoint: Endpoint, model: str | None) -> float | None:
        """When this attempt's first-token budget ends: the request's own, plus its prompt at the pod's learned
        prefill rate (router/prefill.py) on paths that count a first token."""
        if a.deadline is None or a.api.budget is not Budget.FIRST_TOKEN:
            return a.deadline
        route = a.route
        base = route.budget or 0.0
        rate = route.rates.rate(endpoint.base_url, model_key(model))
        extra = min(a.prompt_tokens() / rate, route.max_extension) if rate else 0.0
        self.metrics.budgets.observe((), base + extra)
        return a.deadline + extra

    def _learn(self, a: Attempt, endpoint: Endpoint, model: str | None, sent: float, warm: bool) -> None:
        """A first token within the budget: a sample of the pod's prefill rate."""
        assert a.first_token_at is not None
        if a.deadline is not None and a.api.budget is Budget.FIRST_TOKEN:
            a.route.rates.learn(
                endpoint.base_url, model_key(model), a.prompt_tokens(), a.first_token_at - sent, warm
            )

    async def _local_once(
        self, a: Attempt, endpoint: Endpoint, probe: bool, model: str | None, warm: bool = False
    ) -> web.StreamResponse | LocalFailure:
        endpoint.take(model)
        verdict = False
        upstream: http.Response | None = None
        deadline = self._deadline(a, endpoint, model)
        budget = _Budget(deadline) if deadline is not None else None
        sent = self.clock()
        try:
            async with _Departure(a, endpoint):
                try:
                    if budget is None:
                        upstream = await self._send(a, endpoint)
                        opened = await self._prelude(a, upstream)
                    else:
                        async with budget:
                            upstream = await self._send(a, endpoint)
                            opened = await self._prelude(a, upstream)
                except _UPSTREAM_ERRORS as err:
                    reason = _reason_of(err, budget is not None and budget.expired())
                    # Without a stream, no token shows whether a pod that takes this long is sick or busy.
                    if (
                        reason is not FallbackReason.REQUEST_TIMEOUT
                        or a.client_stream
                        or a.streamed_from_local
                    ):
                        verdict = True
                        self._failed(endpoint, probe)
                    log.info("local %s failed: %s (%s)", endpoint.base_url, reason.value, _describe(err))
                    return LocalFailure(reason, f"{reason.value}: {_describe(err)}", counted=verdict)
                except _StreamFailure as err:
                    verdict = True
                    self._failed(endpoint, probe)
                    log.info("local %s failed: %s (%s)", endpoint.base_url, err.reason.value, err.detail)
                    return LocalFailure(err.reason, err.detail)
                verdict = True
                if isinstance(opened, LocalFailure):
                    self._failed(endpoint, probe)
                    return opened
                self._succeeded(endpoint, probe)
                if isinstance(opened, _Held):
                    a.first_token_at = self.clock()
                    self.metrics.ttft.observe((SERVED_BY_LOCAL,), a.first_token_at - a.started)
                    self._learn(a, endpoint, model, sent, warm)
                    if a.streamed_from_local:
                        return await self._assembled(a, upstream, opened, endpoint)
                    return await self._stream(
                        a, upstream, opened, on_failure=lambda: self._failed(endpoint, False)
                    )
                if upstream.content_type == SSE_CONTENT_TYPE and upstream.status < 300:
                    return await self._stream(
                        a, upstream, None, on_failure=lambda: self._failed(endpoint, False)
                    )
                answer = await self._answer(a, upstream, opened)
                if isinstance(answer, LocalFailure) and answer.counted:
                    self._failed(endpoint, False)
                return answer
        except _Departed:
            # Nothing reached the client: the request goes on elsewhere, as if never sent to this pod.
            log.info(
                "local %s left the pool's ready pods with a request in flight: trying again",
                endpoint.base_url,
            )
            return LocalFailure(
                FallbackReason.RESET,
                "the pod left the pool's ready pods with the request in flight",
                counted=False,
                departed=True,
            )
        finally:
            endpoint.give(model)
            a.route.waiters.freed(model)
            if not verdict:
                endpoint.breaker.abandon(probe)
            if upstream is not None:
                upstream.close()

    async def _status_failure(self, a: Attempt, upstream: http.Response) -> LocalFailure:
        status = upstream.status
        if 300 <= status < 400:
            location = upstream.headers.get("Location", "")
            return LocalFailure(FallbackReason.REDIRECT, f"local answered {status} to {location!r}", status)
        # The error body is only worth waiting for when there is no cloud to answer instead.
        error = await upstream.read() if a.cloud is None else b""
        reason = FallbackReason.STATUS_429 if status == 429 else FallbackReason.STATUS_5XX
        return LocalFailure(
            reason, f"local answered {status}", status, error, upstream.headers.get("Retry-After")
        )

    async def _first_content(self, a: Attempt, upstream: http.Response) -> _Held:
        """Read a stream until its first content event; raises _StreamFailure when it fails first."""
        fmt = a.api.stream
        held = _Held([], [], sse.EventSplitter())
        # Assembled answers need the payloads only: a read of whole events is decoded without cutting it.
        whole_reads = a.streamed_from_local and fmt is not StreamFormat.RESPONSES
        while True:
            chunk = await upstream.readany()
            if not chunk:
                raise _StreamFailure(FallbackReason.EMPTY_RESPONSE, "local's stream ended before any content")
            if whole_reads and not held.splitter.pending and chunk.endswith(b"\n\n"):
                events: list[bytes] | None = None
                raw = chunk
            else:
                events = held.splitter.feed(chunk)
                raw = b"".join(events)
            fast = sse.payloads_of(raw) if fmt is not StreamFormat.RESPONSES and raw else None
            if fast is None and events is None:
                events = held.splitter.feed(chunk)
            if fast is not None:
                payloads, done = fast
                clean = not sse.may_be_error(raw)
                for index, payload in enumerate(payloads):
                    kind = sse.kind_of(payload, fmt)
                    if kind is sse.Kind.ERROR:
                        raise _StreamFailure(FallbackReason.STREAM_ERROR, sse.error_message(payload))
                    if events is not None:
                        held.events.append(events[index])
                    held.payloads.append(payload)
                    if kind is sse.Kind.CONTENT:
                        if not clean:
                            _raise_if_echoed_error(payloads[index + 1 :], fmt)
                        held.rest = events[index + 1 :] if events is not None else []
                        held.rest_payloads = payloads[index + 1 :]
                        held.rest_done = done
                        held.rest_clean = clean
                        if index + 1 == len(payloads) and not done:
                            await self._unless_echo(a, upstream, held)
                        return held
                if done:
                    raise _StreamFailure(
                        FallbackReason.EMPTY_RESPONSE, "local's stream ended before any content"
                    )
                continue
            assert events is not None
            classified = sse.classify_all(events, fmt)
            for index, (kind, payload) in enumerate(classified):
                if kind is sse.Kind.ERROR:
                    raise _StreamFailure(FallbackReason.STREAM_ERROR, sse.error_message(payload))
                if kind is sse.Kind.DONE:
                    raise _StreamFailure(
                        FallbackReason.EMPTY_RESPONSE, "local's stream ended before any content"
                    )
                held.events.append(events[index])
                held.payloads.append(payload)
                if kind is sse.Kind.CONTENT:
                    _raise_if_echoed_error(
                        [p for k, p in classified[index + 1 :] if k is not sse.Kind.DONE], fmt
                    )
                    held.rest = events[index + 1 :]
                    if index + 1 == len(classified):
                        await self._unless_echo(a, upstream, held)
                    return held

    async def _unless_echo(self, a: Attempt, upstream: http.Response, held: _Held) -> None:
        """A first content that may be LocalAI's echo of an error (`_may_be_echo`) and came last in its read is
        held until the next event, at most ECHO_GRACE_SECONDS (and never past the first-token budget): an error
        then means the content was the error's text (raises _StreamFailure), anything else is the answer going on
        (its events join the held ones). LocalAI's ordinary answers open with an empty event and are never held."""
        fmt = a.api.stream
        if not _may_be_echo(held.payloads[:-1], fmt):
            return
        loop = asyncio.get_running_loop()
        until = loop.time() + ECHO_GRACE_SECONDS
        if a.deadline is not None:
            until = min(until, a.deadline - _DEADLINE_MARGIN)
        following: list[bytes] = []
        while not following and (left := until - loop.time()) > 0:
            try:
                async with asyncio.timeout(left):
                    chunk = await upstream.readany()
            except TimeoutError:
                break
            if not chunk:
                break
            following = held.splitter.feed(chunk)
        if not following:
            return
        for kind, payload in sse.classify_all(following, fmt):
            if kind is sse.Kind.ERROR:
                raise _StreamFailure(FallbackReason.STREAM_ERROR, sse.error_message(payload))
            if kind is not sse.Kind.EMPTY:
                break
        # The events already decoded are kept as payloads only in the one-read case: decode the rest from bytes.
        if held.rest_payloads is not None:
            held.rest_payloads = None
            held.rest_clean = False
        held.rest = [*held.rest, *following]

    async def _assembled(
        self, a: Attempt, upstream: http.Response, held: _Held, endpoint: Endpoint
    ) -> web.StreamResponse | LocalFailure:
        """The rest of a stream local sent for a non-stream request, as the one JSON answer."""
        fmt = a.api.stream
        assembler = Assembler(fmt)
        done = False
        last = a.first_token_at
        try:
            events = held.rest
            if held.rest_payloads is not None:
                if not held.rest_clean:
                    for payload in held.rest_payloads:
                        if sse.kind_of(payload, fmt) is sse.Kind.ERROR:
                            raise _StreamFailure(FallbackReason.STREAM_ERROR, sse.error_message(payload))
                assembler.add_all(held.payloads + held.rest_payloads)
                done = held.rest_done
                events = []
            else:
                assembler.add_all(held.payloads)
            while True:
                raw = b"".join(events)
                fast = sse.payloads_of(raw) if fmt is not StreamFormat.RESPONSES else None
                if fast is not None and not sse.may_be_error(raw):
                    payloads, done = fast
                    assembler.add_all(payloads)
                    if payloads:
                        last = self.clock()
                    events = []
                for kind, payload in sse.classify_all(events, fmt):
                    if kind is sse.Kind.ERROR:
                        raise _StreamFailure(FallbackReason.STREAM_ERROR, sse.error_message(payload))
                    if kind is sse.Kind.DONE:
                        done = True
                        break
                    assembler.add(payload)
                    if kind is sse.Kind.CONTENT:
                        last = self.clock()
                        if fmt is StreamFormat.RESPONSES and assembler.final is not None:
                            done = True
                if done:
                    # The end of the body follows: read in the background, the connection then pooled.
                    upstream.release()
                    break
                chunk = await upstream.readany()
                if not chunk:
                    break
                events = held.splitter.feed(chunk)
        except _StreamFailure as err:
            self._failed(endpoint, False)
            log.info("local %s failed after its first token: %s", endpoint.base_url, err.detail)
            return LocalFailure(err.reason, err.detail, counted=False)
        except _UPSTREAM_ERRORS as err:
            reason = _reason_of(err, False)
            if reason is not FallbackReason.REQUEST_TIMEOUT:
                self._failed(endpoint, False)
            log.info(
                "local %s failed after its first token: %s (%s)",
                endpoint.base_url,
                reason.value,
                _describe(err),
            )
            return LocalFailure(
                reason, f"{reason.value} after the first token: {_describe(err)}", counted=False
            )
        if not (done or assembler.finished) or (fmt is StreamFormat.RESPONSES and assembler.final is None):
            self._failed(endpoint, False)
            return LocalFailure(
                FallbackReason.EMPTY_RESPONSE,
                "local's stream ended without [DONE] or a finish_reason",
                counted=False,
            )
        answer = assembler.result()
        headers = response_headers(upstream.headers, SERVED_BY_LOCAL, None, ASSEMBLED_DROPPED)
        response = web.Response(body=codec.dumps(answer), content_type="application/json", headers=headers)
        if a.trace is not None and isinstance(response.body, bytes):
            a.trace.answered(response.body)
        usage = usage_from(answer.get("usage"))
        if _unreported(usage):
            # No usage trailer (the stream cut short) or zeros: the estimator on the assembled text.
            usage = self._estimated_usage(a, tokens.text_tokens(tokens.answer_text(answer)))
        self._finish(a, 200, usage, last)
        return response

    # ------------------------------------------------------------------ cloud

    async def _cloud(self, a: Attempt, cloud: Cloud, failure: LocalFailure) -> web.StreamResponse:
        reason = failure.reason.value
        request = a.request
        upstream: http.Response | None = None
        model = a.body.model if a.body is not None else None
        try:
            try:
                lists = model is not None and self.catalog.cloud_lists(model)
                body = _segments(a.cloud_body(cloud, lists))
                headers = cloud.request_headers(request.headers)
                if a.trace is not None:
                    a.trace.cloud(
                        a, cloud, cloud.fallback.cloud_model(model, lists) if a.body is not None else None
                    )
                    a.trace.inject(headers, cloud=True)
                upstream = await self.client.request(
                    request.method,
                    cloud.url(a.path),
                    headers.items(),
                    body,
                    connect_timeout=a.route.connect_timeout,
                    timeout=a.route.request_timeout,
                    proxy=cloud.proxy,
                )
                if 300 <= upstream.status < 400:
                    location = upstream.headers.get("Location", "")
                    return self._reply(
                        a,
                        502,
                        f"local LocalAI failed ({failure.detail}) and the cloud fallback answered {upstream.status} "
                        f"redirecting to {location!r}, which the router does not follow: check fallback.baseURL",
                        code="fallback_redirect",
                    )
                if upstream.content_type == SSE_CONTENT_TYPE and upstream.status < 300:
                    return await self._stream(a, upstream, None)
                answer = await self._answer(a, upstream, b"")
            except _UPSTREAM_ERRORS as err:
                log.warning("cloud fallback failed after local %s: %s", reason, _describe(err))
                status = 504 if isinstance(err, TimeoutError) else 502
                return self._reply(
                    a,
                    status,
                    f"local LocalAI failed ({failure.detail}) and the cloud fallback failed ({_describe(err)})",
                    code="fallback_failed",
                )
            if isinstance(answer, LocalFailure):
                return self._reply(
                    a,
                    502,
                    f"local LocalAI failed ({failure.detail}) and the cloud fallback {answer.detail}",
                    code="fallback_failed",
                )
            return answer
        finally:
            if upstream is not None:
                upstream.close()

    # ------------------------------------------------------------------ answers

    async def _answer(
        self, a: Attempt, upstream: http.Response, first: bytes
    ) -> web.StreamResponse | LocalFailure:
        """A non-stream answer: read whole when small (a failure while reading still falls back), relayed
        as it arrives when large, so a big answer is never held at once."""
        length = upstream.content_length
        if not first and length is not None and length <= BUFFERED_ANSWER_BYTES:
            try:
                body = await upstream.read()
            except _UPSTREAM_ERRORS as err:
                return _read_failure(err)
            return self._whole(a, upstream, body)
        parts = [first] if first else []
        size = len(first)
        try:
            while size <= BUFFERED_ANSWER_BYTES:
                chunk = await upstream.readany()
                if not chunk:
                    break
                parts.append(chunk)
                size += len(chunk)
            else:
                return await self._relay_large(a, upstream, parts)
        except _UPSTREAM_ERRORS as err:
            return _read_failure(err)
        return self._whole(a, upstream, parts[0] if len(parts) == 1 else b"".join(parts))

    def _whole(self, a: Attempt, upstream: http.Response, body: bytes) -> web.Response | LocalFailure:
        status = upstream.status
        if not body and status == 200 and a.request.method != "HEAD":
            return LocalFailure(FallbackReason.EMPTY_RESPONSE, "answered an empty 200")
        headers = response_headers(upstream.headers, a.served_by, self._reason(a))
        response = web.Response(status=status, body=body, headers=headers)
        usage = usage_of(body) if status < 300 else None
        if a.trace is not None:
            a.trace.answered(body)
        if status < 300 and a.api.token_usage and _unreported(usage):
            try:
                text = tokens.answer_text(codec.loads(body))
            except ValueError:
                text = ""
            usage = self._estimated_usage(a, tokens.text_tokens(text))
        self._finish(a, status, usage, None)
        return response

    async def _relay_large(
        self, a: Attempt, upstream: http.Response, parts: list[bytes]
    ) -> web.StreamResponse:
        headers = response_headers(upstream.headers, a.served_by, self._reason(a))
        length = upstream.headers.get("Content-Length")
        response = web.StreamResponse(status=upstream.status, headers=headers)
        if length is not None and length.isdigit():
            response.content_length = int(length)
        last = b""
        relayed = sum(len(part) for part in parts)
        try:
            a.committed = True
            await response.prepare(a.request)
            for part in parts:
                await response.write(part)
            self.metrics.ttfb.observe((a.served_by,), self.clock() - a.started)
            last = parts[-1]
            while True:
                try:
                    chunk = await upstream.readany()
                except _UPSTREAM_ERRORS as err:
                    # No error event exists for a JSON body: cut the connection so the client sees it broke.
                    self._stream_failed(response, a.served_by, err)
                    return response
                if not chunk:
                    break
                relayed += len(chunk)
                await response.write(chunk)
                last = chunk
            await response.write_eof()
        except _CLIENT_GONE:
            pass
        except asyncio.CancelledError:
            self._large_cost(a, upstream.status, last, relayed)
            raise
        finally:
            self._account(a.served_by, upstream.status, a.started)
        self._large_cost(a, upstream.status, last, relayed)
        return response

    def _large_cost(self, a: Attempt, status: int, last: bytes, relayed: int) -> None:
        usage = usage_of(last)
        if a.trace is not None:
            a.trace.answered(last)
        if status < 300 and a.api.token_usage and _unreported(usage):
            # Too large to keep for its text: a generation's bytes at the estimator's rate (an embedding's vectors
            # are no output tokens).
            generated = math.ceil(relayed / tokens.CHARS_PER_TOKEN) if a.api.converts_to_stream else 0
            usage = self._estimated_usage(a, generated)
        self._settle_cost(a, status, usage)

    async def _stream(
        self,
        a: Attempt,
        upstream: http.Response,
        held: _Held | None,
        on_failure: Callable[[], None] | None = None,
    ) -> web.StreamResponse:
        """Relay an SSE stream event by event; the held events (content included) go first."""
        fmt = a.api.stream
        headers = response_headers(upstream.headers, a.served_by, self._reason(a))
        # Ask buffering reverse proxies (nginx ingress) to pass chunks through as they come.
        headers["X-Accel-Buffering"] = "no"
        response = (_HeldStreamResponse if held is not None else web.StreamResponse)(
            status=upstream.status, headers=headers
        )
        splitter = held.splitter if held is not None else sse.EventSplitter()
        tail = sse.Tail(fmt)
        recent: deque[bytes] = deque(maxlen=_TAIL_EVENTS)
        content_seen = held is not None
        last_token = a.first_token_at
        pending = [*held.events, *held.rest] if held is not None else []
        # The stream's text, counted for the estimator when the upstream reports no usage (or zeros), and kept
        # when the trace captures content.
        text_keys = tokens.TEXT_KEYS.get(fmt)
        counted = tokens.TextCount() if a.api.token_usage and text_keys else None
        text: list[str] | None = [] if a.trace is not None and a.trace.capture else None
        hide_usage = a.usage_hidden
        gone = False
        try:
            a.committed = True
            await response.prepare(a.request)
            self.metrics.ttfb.observe((a.served_by,), self.clock() - a.started)
            while True:
                out: list[bytes] = []
                broken: str | None = None
                for event in pending:
                    if not content_seen:
                        kind, payload = sse.classify(sse.event_data(event), fmt)
                        if kind is sse.Kind.CONTENT:
                            content_seen = True
                            a.first_token_at = last_token = self.clock()
                            self.metrics.ttft.observe((a.served_by,), a.first_token_at - a.started)
                        elif kind is sse.Kind.ERROR:
                            broken = sse.error_message(payload)
                            break
                    elif tail.suspicious(event):
                        kind, payload = sse.classify(sse.event_data(event), fmt)
                        if kind is sse.Kind.ERROR:
                            broken = sse.error_message(payload)
                            break
                    tail.see(event)
                    recent.append(event)
                    if counted is not None:
                        counted.add_event(event, text_keys or ())
                    if text is not None:
                        text.append(tokens.answer_text(sse.classify(sse.event_data(event), fmt)[1]))
                    if hide_usage and sse.usage_only(event):
                        continue  # asked for by the router, not by the client
                    out.append(event)
                if out:
                    await response.write(out[0] if len(out) == 1 else b"".join(out))
                    if content_seen:
                        last_token = self.clock()
                if broken is not None:
                    self._broken_stream(response, a.served_by, on_failure)
                    await response.write(
                        replies.sse_error_event(
                            f"the {a.served_by} upstream reported an error mid-stream ({broken}); "
                            "the answer above is incomplete",
                            "upstream_stream_error",
                        )
                    )
                    break
                try:
                    chunk = await upstream.readany()
                    pending = splitter.feed(chunk) if chunk else []
                except _UPSTREAM_ERRORS as err:
                    self._broken_stream(response, a.served_by, on_failure, err)
                    await response.write(
                        replies.sse_error_event(
                            f"the {a.served_by} upstream failed mid-stream ({_describe(err)}); "
                            "the answer above is incomplete",
                            "upstream_stream_interrupted",
                        )
                    )
                    break
                if not chunk:
                    if splitter.pending:
                        await response.write(splitter.pending)
                    if not tail.complete:
                        self._broken_stream(response, a.served_by, on_failure)
                        await response.write(
                            replies.sse_error_event(
                                f"the {a.served_by} upstream ended the stream without [DONE] or a finish_reason; "
                                "the answer above is incomplete",
                                "upstream_stream_incomplete",
                            )
                        )
                    break
            await response.write_eof()
        except _CLIENT_GONE:
            # The client left: closing the upstream response (in the caller) cancels generation. What was
            # generated until then is still counted.
            gone = True
        except asyncio.CancelledError:
            # The client left and aiohttp cancelled the handler: the same, then stop.
            self._stream_cost(a, upstream.status, recent, text, counted)
            raise
        finally:
            self._account(a.served_by, upstream.status, a.started)
        usage = self._stream_cost(a, upstream.status, recent, text, counted)
        if upstream.status < 300 and not gone:
            self._observe_tpot(a, usage, last_token, tail.events)
        return response

    def _stream_cost(
        self,
        a: Attempt,
        status: int,
        recent: deque[bytes],
        text: list[str] | None,
        counted: tokens.TextCount | None,
    ) -> Usage | None:
        """Count a stream's tokens and cost from its usage event, else the estimator on its text."""
        tail = b"".join(recent)
        usage = usage_of(tail)
        if a.trace is not None:
            a.trace.answered(tail, text)
        if counted is not None and status < 300 and _unreported(usage):
            usage = self._estimated_usage(a, counted.tokens)
        self._settle_cost(a, status, usage)
        return usage

    def _broken_stream(
        self,
        response: web.StreamResponse,
        served_by: str,
        on_failure: Callable[[], None] | None,
        err: BaseException | None = None,
    ) -> None:
        self._stream_failed(response, served_by, err)
        if on_failure is not None:
            on_failure()

    def _stream_failed(self, response: web.StreamResponse, served_by: str, err: BaseException | None) -> None:
        self.metrics.stream_errors.inc((served_by,))
        log.warning("%s upstream failed mid-answer%s", served_by, f": {_describe(err)}" if err else "")
        # The connection is not reused after an interrupted answer.
        response.force_close()

    # ------------------------------------------------------------------ refusals and accounting

    def _no_fallback(self, a: Attempt, failure: LocalFailure) -> web.Response:
        route = a.route
        code = "sensitive_route_no_fallback" if route.sensitive else "no_fallback"
        cap = route.cloud.fallback.spend_cap if route.cloud is not None else None
        if a.blocked == UNPRICED:
            why = (
                f"route {route.name} has a spend cap and {a.path} answers carry no token usage: without a price in "
                "fallback.pricePerRequest its spend could not be counted, so it never goes to the cloud"
            )
            code = UNPRICED
        elif a.blocked == BUDGET_EXHAUSTED and cap is not None:
            why = (
                f"route {route.name} reached its {cap.period} fallback spend cap of {cap.amount:g} "
                "(fallback.spendCap), so it is local-only until the period ends"
            )
            code = BUDGET_EXHAUSTED
        elif route.sensitive:
            why = f"route {route.name} is sensitive, so it has no cloud fallback"
        elif route.cloud is not None:
            why = f"the cloud fallback of route {route.name} does not serve {a.path}"
        elif route.config.fallback is not None:
            why = f"the cloud fallback of route {route.name} is disabled: " + "; ".join(route.problems)
        else:
            why = f"route {route.name} has no cloud fallback configured"
        if failure.status is not None and failure.reason is not FallbackReason.REDIRECT:
            status = failure.status
            message = f"local LocalAI answered {status}: {_upstream_message(failure.body)}; {why}"
        else:
            status, what = _UNAVAILABLE[failure.reason]
            message = f"local LocalAI {what} ({failure.detail}); {why}"
        headers = {"Retry-After": failure.retry_after} if failure.retry_after is not None else None
        return self._reply(a, status, message, code=code, headers=headers, reason=failure.reason.value)

    def _reply(
        self,
        a: Attempt,
        status: int,
        message: str,
        *,
        code: str,
        headers: dict[str, str] | None = None,
        reason: str | None = None,
    ) -> web.Response:
        response = replies.error(
            status,
            message,
            error_type=replies.UPSTREAM_ERROR,
            code=code,
            fallback_reason=reason or self._reason(a),
            headers=headers,
        )
        self._account(SERVED_BY_ROUTER, status, a.started)
        self.metrics.ttfb.observe((SERVED_BY_ROUTER,), self.clock() - a.started)
        return response

    @staticmethod
    def _reason(a: Attempt) -> str | None:
        return a.fallback_reason.value if a.fallback_reason is not None else None

    def _account(self, upstream: str, status: int, started: float) -> None:
        self.metrics.requests.inc((upstream, str(status)))
        self.metrics.duration.observe((upstream,), self.clock() - started)

    def _finish(
        self,
        a: Attempt,
        status: int,
        usage: Usage | None,
        last_token: float | None,
        started_stream: bool = False,
    ) -> None:
        """Accounting for an answer sent in one piece."""
        elapsed = self.clock() - a.started
        self._account(a.served_by, status, a.started)
        if not started_stream:
            # A buffered answer's first byte leaves together with its last.
            self.metrics.ttfb.observe((a.served_by,), elapsed)
        self._settle_cost(a, status, usage)
        if usage is not None and status < 300:
            self._observe_tpot(a, usage, last_token, 0)

    def _estimated_usage(self, a: Attempt, completion: int) -> Usage:
        """An answer's tokens by the estimator (tokens.py): its request's prompt and `completion` counted from
        its text; counted apart too, so the share of estimated figures shows."""
        usage = Usage(a.prompt_tokens(), completion, estimated=True)
        self.metrics.estimated_tokens.inc((a.served_by, "prompt"), usage.prompt_tokens)
        self.metrics.estimated_tokens.inc((a.served_by, "completion"), usage.completion_tokens)
        return usage

    def _settle_cost(self, a: Attempt, status: int, usage: Usage | None) -> None:
        """Count a successful answer's tokens and cost: by its usage, or its path's per-request price. The one
        place an answer's token figures are settled: the trace gets the same ones."""
        if status >= 300:
            return
        if a.trace is not None:
            a.trace.counted(usage)
        if usage is not None:
            self._count_tokens(a, usage)
            return
        fallback = a.route.config.fallback
        price = fallback.price_per_request.get(a.path) if fallback is not None else None
        if price and not a.api.token_usage:
            self._add_cost(a, price)

    def _observe_tpot(self, a: Attempt, usage: Usage | None, last_token: float | None, events: int) -> None:
        if a.first_token_at is None or last_token is None:
            return
        tokens = usage.completion_tokens if usage is not None and usage.completion_tokens else events
        if tokens > 1 and last_token > a.first_token_at:
            self.metrics.tpot.observe((a.served_by,), (last_token - a.first_token_at) / (tokens - 1))

    def _count_tokens(self, a: Attempt, usage: Usage) -> None:
        counted = self.metrics.tokens
        counted.inc((a.served_by, "prompt"), usage.prompt_tokens)
        counted.inc((a.served_by, "completion"), usage.completion_tokens)
        # Local answers are priced like the cloud's: what the route would have paid without its pool.
        prices = a.route.config.fallback
        if prices is None:
            return
        self._add_cost(a, prices.cost(usage.prompt_tokens, usage.completion_tokens))

    def _add_cost(self, a: Attempt, cost: float) -> None:
        if not cost:
            return
        if a.served_by == SERVED_BY_FALLBACK:
            self.metrics.cost.inc((), cost)
            self.ledger.add(SPEND, cost)
        else:
            self.metrics.avoided.inc((), cost)
            self.ledger.add(AVOIDED, cost)


def _unreported(usage: Usage | None) -> bool:
    """No usage, or LocalAI's all-zero one (its non-streamed completions): the estimator counts instead."""
    return usage is None or (not usage.prompt_tokens and not usage.completion_tokens)


def usage_from(usage: Any) -> Usage | None:
    if not isinstance(usage, dict):
        return None
    return Usage(int(usage.get("prompt_tokens") or 0), int(usage.get("completion_tokens") or 0))

"""Pure routing policy: circuit breaker, token bucket, endpoint choice and fallback reasons.

No I/O and no clock of its own: every decision takes `now` (monotonic seconds), so tests drive time.
"""

from __future__ import annotations

import enum
import math
from collections.abc import Callable, Sequence
from typing import Final, Protocol, TypeVar


class FallbackReason(enum.StrEnum):
    """Why a request left the local pool; the values are the `reason` label of the fallback metrics and
    the `X-Fallback-Reason` header."""

    CONNECT_ERROR = "connect_error"
    CONNECT_TIMEOUT = "connect_timeout"
    RESET = "reset"
    STATUS_5XX = "status_5xx"
    # An answer that breaks HTTP/1.1's grammar (a bad chunk size, Content-Length, header line, ...).
    MALFORMED = "malformed_response"
    STATUS_429 = "status_429"
    REDIRECT = "redirect"
    FIRST_TOKEN_TIMEOUT = "first_token_timeout"
    REQUEST_TIMEOUT = "request_timeout"
    # A 200 stream whose first content was LocalAI's error text or error event.
    STREAM_ERROR = "stream_error"
    # A 200 with an empty body, or a stream that ended without content, [DONE] or a finish_reason.
    EMPTY_RESPONSE = "empty_response"
    BREAKER_OPEN = "breaker_open"
    NO_ENDPOINT = "no_ready_endpoint"
    # The model is not in local's model list but is in the cloud's.
    MODEL_NOT_LOCAL = "model_not_local"
    # Every slot of every ready pod is busy with this model: sent at once instead of queueing.
    SATURATED = "saturated"
    # The pool has no ready pod (scaled to zero, downloading or loading): bridged while it comes up.
    POOL_COLD = "pool_cold"


# Why a request that would have gone to the cloud did not: the route's spend cap is reached.
BUDGET_EXHAUSTED: Final = "budget_exhausted"
# Why a request on a path without token usage did not go to the cloud: the route has a spend cap and no
# per-request price for the path, so its spend could not be counted.
UNPRICED: Final = "unpriced"


def falls_back_on_status(status: int) -> bool:
    """5xx and 429 mean the pool cannot serve now; any other 4xx is the client's fault and goes back to it."""
    return status >= 500 or status == 429


class BreakerState(enum.IntEnum):
    """The values are what the breaker-state gauge exports."""

    CLOSED = 0
    OPEN = 1
    HALF_OPEN = 2


class Breaker:
    """Consecutive-failure circuit breaker for one upstream.

    Only the half-open probe decides whether to close or re-open; results of requests admitted
    earlier that finish while the breaker is open are ignored, so a slow success cannot close a
    breaker that newer failures opened.
    """

    __slots__ = ("_failures", "_open_until", "_probing", "_state", "failure_threshold", "open_seconds")

    def __init__(self, failure_threshold: int, open_seconds: float) -> None:
        assert failure_threshold >= 1 and open_seconds > 0
        self.failure_threshold = failure_threshold
        self.open_seconds = open_seconds
        self._state = BreakerState.CLOSED
        self._failures = 0
        self._open_until = 0.0
        self._probing = False

    def state(self, now: float) -> BreakerState:
        if self._state is BreakerState.OPEN and now >= self._open_until:
            return BreakerState.HALF_OPEN
        return self._state

    def available(self, now: float) -> bool:
        state = self.state(now)
        return state is BreakerState.CLOSED or (state is BreakerState.HALF_OPEN and not self._probing)

    def reopens_in(self, now: float) -> float:
        """Seconds until the next probe may go through (0 when closed or due)."""
        return max(0.0, self._open_until - now) if self._state is BreakerState.OPEN else 0.0

    def begin(self, now: float) -> bool:
        """Admit one request; returns True when it is the half-open probe."""
        if self.state(now) is BreakerState.HALF_OPEN:
            assert not self._probing, "begin() on a breaker whose probe is in flight"
            self._state = BreakerState.HALF_OPEN
            self._probing = True
            return True
        return False

    def success(self, probe: bool) -> bool:
        """Record a good answer; True when it closed the breaker (a successful probe)."""
        if probe or self._state is BreakerState.CLOSED:
            self._state = BreakerState.CLOSED
            self._failures = 0
            self._probing = False
        return probe

    def failure(self, now: float, probe: bool) -> bool:
        """Record a failure; True when it opened the breaker."""
        if probe:
            self._trip(now)
            return True
        if self._state is BreakerState.CLOSED:
            self._failures += 1
            if self._failures >= self.failure_threshold:
                self._trip(now)
                return True
        return False

    def abandon(self, probe: bool) -> None:
        """The client left before a verdict: let the next request probe instead."""
        if probe:
            self._probing = False

    def _trip(self, now: float) -> None:
        self._state = BreakerState.OPEN
        self._open_until = now + self.open_seconds
        self._probing = False
        self._failures = 0


class TokenBucket:
    """Requests-per-second limiter with a burst allowance."""

    __slots__ = ("_stamp", "_tokens", "burst", "rate")

    def __init__(self, rate: float, burst: int, now: float) -> None:
        assert rate > 0 and burst >= 1
        self.rate = rate
        self.burst = float(burst)
        self._tokens = float(burst)
        self._stamp = now

    def take(self, now: float) -> float:
        """Take one token: 0.0 when granted, else the seconds until one is available."""
        tokens = min(self.burst, self._tokens + (now - self._stamp) * self.rate)
        self._stamp = now
        if tokens >= 1.0:
            self._tokens = tokens - 1.0
            return 0.0
        self._tokens = tokens
        return (1.0 - tokens) / self.rate


def retry_after_header(wait_seconds: float) -> str:
    """`Retry-After` takes whole seconds; round up so a client that obeys it is admitted."""
    return str(max(1, math.ceil(wait_seconds)))


class Balanced(Protocol):
    """What endpoint choice needs to know about an upstream."""

    @property
    def outstanding(self) -> int: ...

    @property
    def breaker(self) -> Breaker: ...


_B = TypeVar("_B", bound=Balanced)
NO_CHOICE: Final = -1
# Endpoints are available, but every one of them has all its slots busy.
FULL: Final = -2


def choose(
    endpoints: Sequence[_B],
    now: float,
    start: int,
    exclude: object = None,
    has_room: Callable[[_B], bool] | None = None,
) -> int:
    """Index of the available endpoint with the fewest outstanding requests, NO_CHOICE when none is
    available (breakers), or FULL when every available one lacks room (`has_room` says False).

    Ties go to the first available endpoint at or after `start`, so a caller that rotates `start`
    spreads equal load instead of piling it on the first endpoint. `exclude` (an endpoint already tried)
    is never chosen.
    """
    best = NO_CHOICE
    best_load = 0
    count = len(endpoints)
    for offset in range(count):
        index = (start + offset) % count
        endpoint = endpoints[index]
        if endpoint is exclude or not endpoint.breaker.available(now):
            continue
        if has_room is not None and not has_room(endpoint):
            if best == NO_CHOICE:
                best = FULL
            continue
        if best < 0 or endpoint.outstanding < best_load:
            best, best_load = index, endpoint.outstanding
    return best

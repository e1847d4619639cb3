"""The upstreams of one config snapshot (`Route`): local endpoints (one per pod) with their breakers, the
cloud target, the keys for each hop and the header rules. A reload or a new set of pods builds a new
`Route`; in-flight requests keep the one they took, and endpoints keep their breaker across snapshots.
"""

from __future__ import annotations

import asyncio
import enum
import itertools
import logging
import re
from collections.abc import Callable, Mapping, Sequence
from typing import Final, NamedTuple

from multidict import CIMultiDict, CIMultiDictProxy
from yarl import URL

from localai_operator.constants import FALLBACK_REASON_HEADER, SERVED_BY_FALLBACK, SERVED_BY_HEADER
from localai_operator.router.affinity import Affinity, Outcome
from localai_operator.router.capacity import Queues
from localai_operator.router.policy import FULL, NO_CHOICE, Breaker, TokenBucket, choose
from localai_operator.router.prefill import PrefillRates
from localai_operator.router.proxy import Proxy, ProxyConfigError, proxy_for
from localai_operator.wire import Fallback, RouterConfig

log = logging.getLogger(__name__)

API_PREFIX: Final = "/v1"

# Hop-by-hop headers (RFC 9110 section 7.6.1) plus those the HTTP client recomputes for the new hop.
_HOP_BY_HOP: Final = (
    "Connection",
    "Keep-Alive",
    "Proxy-Authenticate",
    "Proxy-Authorization",
    "Proxy-Connection",
    "TE",
    "Trailer",
    "Transfer-Encoding",
    "Upgrade",
)
# Expect: the body is already read in full. Content-Encoding: aiohttp has decoded the body, so the header
# would no longer describe what is sent.
_REQUEST_DROPPED: Final = frozenset(
    h.lower()
    for h in (*_HOP_BY_HOP, "Host", "Content-Length", "Content-Encoding", "Accept-Encoding", "Expect")
)
_CLIENT_CREDENTIALS: Final = frozenset({"authorization", "x-api-key", "api-key", "cookie"})
_REQUEST_DROPPED_WITH_CREDENTIALS: Final = _REQUEST_DROPPED | _CLIENT_CREDENTIALS
_RESPONSE_DROPPED: Final = frozenset(h.lower() for h in (*_HOP_BY_HOP, "Content-Length", "Date", "Server"))
# An answer assembled from a stream: the stream's own framing headers are not the answer's.
ASSEMBLED_DROPPED: Final = _RESPONSE_DROPPED | {"content-type", "cache-control", "x-accel-buffering"}
# The cloud gets an allow-list, not a deny-list: the client's Authorization, cookies and any other
# credential-bearing header (x-api-key, api-key, ...) must never leave the cluster.
_CLOUD_FORWARDED: Final = ("Content-Type", "Accept", "X-Request-Id")
# What of a cloud answer's headers reaches the client (lower case): its type and the ids and limits a client
# acts on. Not the provider's Set-Cookie, its account headers (openai-organization, openai-project) or anything
# else it adds.
CLOUD_RESPONSE_HEADERS: Final = frozenset(
    {
        "content-type",
        "content-encoding",
        "cache-control",
        "retry-after",
        "x-request-id",
        "request-id",
        "openai-processing-ms",
        "openai-version",
        "ratelimit",
    }
)
# Rate-limit header families: OpenAI's x-ratelimit-*, the IETF draft's RateLimit-* (RateLimit and
# RateLimit itself is in the set).
CLOUD_RESPONSE_PREFIXES: Final = ("x-ratelimit-", "ratelimit-")
# Identity encoding keeps relayed bytes exactly as received and SSE chunks unbuffered by a decoder.
_ACCEPT_ENCODING: Final = ("Accept-Encoding", "identity")
USER_AGENT: Final = "localai-operator-router"
# What can go into an HTTP header as a bearer token: visible ASCII.
_TOKEN: Final = re.compile(r"[\x21-\x7e]+")


def usable_key(value: str | None, where: str) -> tuple[str | None, str | None]:
    """A key as read from a Secret, stripped of surrounding whitespace (a key file ending in a newline is
    the common case), and the problem with it when it cannot be sent."""
    if value is None:
        return None, f"{where} is not set"
    key = value.strip()
    if not key:
        return None, f"{where} is empty"
    if not _TOKEN.fullmatch(key):
        return None, f"{where} contains whitespace, control or non-ASCII characters inside the key"
    return key, None


class Endpoint:
    """One local LocalAI base URL (one pod), with its breaker and in-flight counts, in all and per model
    (kept across snapshots), and whether it left the pool's ready pods (`departed`)."""

    __slots__ = ("_hooks", "_urls", "base_url", "breaker", "by_model", "departed", "outstanding")

    def __init__(self, base_url: str, breaker: Breaker) -> None:
        self.base_url = base_url.rstrip("/")
        self.breaker = breaker
        self.outstanding = 0
        self.by_model: dict[str, int] = {}
        self._urls: dict[str, URL] = {}
        self.departed = False
        # Called once when the endpoint departs: the attempts in flight on it that want to know.
        self._hooks: set[Callable[[bool], None]] = set()

    def depart(self, certain: bool) -> None:
        """The pod left the ready set; `certain` when the EndpointSlices or the config say so (not a DNS answer,
        which a hiccup can empty)."""
        if self.departed:
            return
        self.departed = True
        hooks, self._hooks = self._hooks, set()
        for hook in hooks:
            hook(certain)

    async def departure(self, timeout: float) -> bool:
        """Whether the endpoint departs within `timeout` seconds (True at once if it has)."""
        if self.departed:
            return True
        gone = asyncio.get_running_loop().create_future()

        def hook(_: bool) -> None:
            if not gone.done():
                gone.set_result(None)

        unregister = self.on_departure(hook)
        try:
            await asyncio.wait_for(gone, timeout)
        except TimeoutError:
            return False
        finally:
            unregister()
        return True

    def on_departure(self, hook: Callable[[bool], None]) -> Callable[[], None]:
        """Calls `hook(certain)` if the endpoint departs; returns the function that unregisters it."""
        self._hooks.add(hook)
        return lambda: self._hooks.discard(hook)

    def take(self, model: str | None) -> None:
        self.outstanding += 1
        if model is not None:
            self.by_model[model] = self.by_model.get(model, 0) + 1

    def give(self, model: str | None) -> None:
        self.outstanding -= 1
        if model is not None:
            left = self.by_model[model] - 1
            if left:
                self.by_model[model] = left
            else:
                del self.by_model[model]

    def url(self, path: str) -> URL:
        found = self._urls.get(path)
        if found is None:
            found = URL(self.base_url + path)
            if len(self._urls) < 64:
                self._urls[path] = found
        return found


class Cloud:
    """The fallback provider of one config snapshot, and the egress proxy that reaches it, if any."""

    __slots__ = ("_urls", "api_key", "base_url", "fallback", "paths", "proxy")

    def __init__(self, fallback: Fallback, api_key: str | None, proxy: Proxy | None = None) -> None:
        self.fallback = fallback
        self.base_url = fallback.base_url.rstrip("/")
        self.api_key = api_key
        self.proxy = proxy
        self.paths = frozenset(fallback.paths)
        self._urls: dict[str, URL] = {}

    def serves(self, path: str) -> bool:
        return path in self.paths

    def url(self, path: str) -> URL:
        """Never with the client's query string: only the request body the router rewrote goes out."""
        found = self._urls.get(path)
        if found is None:
            found = self._urls[path] = URL(self.base_url + path)
        return found

    def request_headers(self, client: CIMultiDictProxy[str]) -> CIMultiDict[str]:
        headers: CIMultiDict[str] = CIMultiDict()
        for name in _CLOUD_FORWARDED:
            value = client.get(name)
            if value is not None:
                headers[name] = value
        headers[_ACCEPT_ENCODING[0]] = _ACCEPT_ENCODING[1]
        headers["User-Agent"] = USER_AGENT
        if self.api_key:
            headers["Authorization"] = f"Bearer {self.api_key}"
        return headers


class Unavailable(enum.Enum):
    """Why no local endpoint can take a request now."""

    # No endpoint is known: no pod of the pool is ready.
    NONE = "none"
    # Every endpoint's breaker is open (or its half-open probe is in flight).
    BREAKERS = "breakers"
    # Endpoints are available, but every slot of each for the request's model is busy.
    FULL = "full"


class Choice(NamedTuple):
    """The endpoint for an attempt, whether it is its breaker's half-open probe, and whether it served the
    request's affinity key last (its cache likely holds the prompt's start)."""

    endpoint: Endpoint
    probe: bool
    warm: bool = False


class Route:
    """A snapshot of the config and the endpoints known when it was built."""

    def __init__(
        self,
        config: RouterConfig,
        endpoints: tuple[Endpoint, ...],
        cloud: Cloud | None,
        limiter: TokenBucket | None,
        local_key: str | None,
        problems: tuple[str, ...],
        waiters: Queues | None = None,
        table: Affinity | None = None,
        rates: PrefillRates | None = None,
    ) -> None:
        policy = config.policy
        # Requests waiting for a slot or a pod, the affinity table and the learned prefill rates: shared by every
        # snapshot of the router.
        self.waiters = waiters if waiters is not None else Queues()
        self.table = table if table is not None else Affinity()
        self.rates = rates if rates is not None else PrefillRates()
        # None: the route balances by requests in flight only (policy.affinity.enabled false).
        self.affinity = self.table if policy.affinity.enabled else None
        self.urls = tuple(e.base_url for e in endpoints)
        self.table.keep(self.urls)
        self.prefix_bytes = policy.affinity.prefix_bytes
        self.slots = config.local.slots
        self.pool = config.local.pool
        self.queue_timeout = policy.queue_timeout_ms / 1000
        # How long a request nothing else may answer waits for a cold pool to get its first ready pod.
        self.cold_wait = policy.first_token_timeout_ms / 1000 + policy.cold_start_allowance_seconds
        self.config = config
        self.name = f"{config.route.namespace}/{config.route.name}"
        self.sensitive = policy.sensitive
        self.endpoints = endpoints
        self.cloud = cloud
        self.limiter = limiter
        self.local_key = local_key
        self.problems = problems
        # A body larger than everything the router may hold at once would not fit in its memory limit.
        self.max_request_bytes = min(policy.max_request_bytes, config.server.body_buffer_bytes)
        self.connect_timeout = policy.connect_timeout_ms / 1000
        # For each attempt, from sending the request to the answer's last byte.
        self.request_timeout = policy.request_timeout_seconds
        self.listing_timeout = min(policy.request_timeout_seconds, 10.0)
        # Abandoning a slow local answer only helps when there is somewhere else to go.
        self.budget: float | None = policy.first_token_timeout_ms / 1000 if cloud else None
        # The most a prompt-aware first-token budget adds to `budget`.
        self.max_extension = (policy.first_token_cap_ms - policy.first_token_timeout_ms) / 1000
        self._rotation = itertools.count()

    def pick(
        self, now: float, exclude: Endpoint | None = None, model: str | None = None, key: int | None = None
    ) -> Choice | Unavailable:
        """The local endpoint for the next attempt, or why none can take it now: a model with slots goes only to a
        pod with one free. A request with an affinity `key` goes to the pod that served the key last while it
        can take it (router/affinity.py), else to the pod with the fewest requests in flight."""
        endpoints = self.endpoints
        if not endpoints:
            return Unavailable.NONE
        limit = self.slots.get(model) if model is not None else None
        has_room: Callable[[Endpoint], bool] | None = None
        if model is not None and limit is not None:
            wanted = model
            has_room = lambda e: e.by_model.get(wanted, 0) < limit  # noqa: E731
        outcome: Outcome | None = None
        index = NO_CHOICE
        if key is not None and self.affinity is not None and len(endpoints) > 1:
            found, outcome = self.affinity.choose(key, endpoints, self.urls, now, exclude, has_room, limit)
            if found is not None:
                index = found
        if index == NO_CHOICE:
            start = next(self._rotation) % len(endpoints) if len(endpoints) > 1 else 0
            index = choose(endpoints, now, start, exclude, has_room)
        if index == NO_CHOICE:
            return Unavailable.BREAKERS
        if index == FULL:
            return Unavailable.FULL
        endpoint = endpoints[index]
        if outcome is not None and key is not None and self.affinity is not None:
            self.affinity.served(key, endpoint.base_url, outcome)
        return Choice(endpoint, endpoint.breaker.begin(now), outcome is Outcome.HIT)

    def slots_of(self, model: str | None) -> int | None:
        """Slots per pod for `model`, None when it has no limit."""
        return self.slots.get(model) if model is not None else None

    @property
    def slots_per_pod(self) -> int:
        return sum(self.slots.values())

    def reopens_in(self, now: float) -> float:
        return min((e.breaker.reopens_in(now) for e in self.endpoints), default=0.0)


def build_route(
    config: RouterConfig,
    previous: Route | None,
    env: Mapping[str, str],
    now: float,
    discovered: Sequence[str] = (),
    waiters: Queues | None = None,
) -> Route:
    """A new snapshot; endpoints whose URL is unchanged keep their breaker and in-flight count."""
    breaker_settings = config.policy.circuit_breaker
    kept = {e.base_url: e for e in previous.endpoints} if previous else {}
    endpoints: list[Endpoint] = []
    for base_url in dict.fromkeys(u.rstrip("/") for u in (*config.local.endpoints, *discovered)):
        endpoint = kept.get(base_url)
        if endpoint is None:
            endpoint = Endpoint(
                base_url, Breaker(breaker_settings.failure_threshold, breaker_settings.open_seconds)
            )
        else:
            endpoint.breaker.failure_threshold = breaker_settings.failure_threshold
            endpoint.breaker.open_seconds = breaker_settings.open_seconds
        endpoints.append(endpoint)

    problems: list[str] = []
    local_key = None
    if config.local.api_key_env:
        local_key, problem = usable_key(
            env.get(config.local.api_key_env), f"the local API key ${config.local.api_key_env}"
        )
        if problem:
            problems.append(f"{problem}: local requests are sent without a key")
    cloud = None
    if config.fallback is not None and not config.policy.sensitive:
        name = config.fallback.api_key_env
        api_key, problem = usable_key(env.get(name), f"the fallback API key ${name}")
        if problem and api_key is None and name in env and env[name].strip():
            problems.append(f"{problem}: the cloud fallback is disabled")
        else:
            if problem:
                problems.append(f"{problem}: cloud requests are sent without a key")
            fallback = config.fallback
            proxy = None
            try:
                proxy = proxy_for(
                    fallback.base_url,
                    env,
                    fallback.proxy_url,
                    env.get(fallback.proxy_username_env) if fallback.proxy_username_env else None,
                    env.get(fallback.proxy_password_env) if fallback.proxy_password_env else None,
                )
            except ProxyConfigError as err:
                problems.append(f"{err}: cloud requests go without a proxy")
            cloud = Cloud(fallback, api_key, proxy)

    limit = config.policy.rate_limit
    limiter = None
    if limit is not None:
        old = previous.limiter if previous else None
        if old is not None and old.rate == limit.requests_per_second and old.burst == limit.burst:
            limiter = old
        else:
            limiter = TokenBucket(limit.requests_per_second, limit.burst, now)
    if waiters is None and previous is not None:
        waiters = previous.waiters
    table = previous.table if previous is not None else None
    rates = previous.rates if previous is not None else None
    return Route(config, tuple(endpoints), cloud, limiter, local_key, tuple(problems), waiters, table, rates)


def departed(previous: Route, current: Route) -> list[Endpoint]:
    """The endpoints of `previous` that `current` no longer has."""
    kept = {id(e) for e in current.endpoints}
    return [e for e in previous.endpoints if id(e) not in kept]


def local_request_headers(
    client: CIMultiDictProxy[str], local_key: str | None, keep_client_credentials: bool
) -> CIMultiDict[str]:
    """The client's headers for the local hop: everything end-to-end. The client's own credentials go
    through only when the route checks no client key and the pool has no key of its own."""
    dropped = (
        _REQUEST_DROPPED
        if keep_client_credentials and local_key is None
        else _REQUEST_DROPPED_WITH_CREDENTIALS
    )
    connection = client.getall("Connection", ())
    if connection:
        # Every Connection line names hop-by-hop headers, not only the first.
        dropped = dropped | {name.strip().lower() for line in connection for name in line.split(",")}
    headers: CIMultiDict[str] = CIMultiDict([(k, v) for k, v in client.items() if k.lower() not in dropped])
    if local_key is not None:
        headers["Authorization"] = f"Bearer {local_key}"
    headers[_ACCEPT_ENCODING[0]] = _ACCEPT_ENCODING[1]
    return headers


def cloud_header_allowed(name: str) -> bool:
    """Whether a cloud response header may reach the client (`name` in lower case): CLOUD_RESPONSE_HEADERS and
    the rate-limit families; never the provider's cookies or the paying account's identity."""
    return name in CLOUD_RESPONSE_HEADERS or name.startswith(CLOUD_RESPONSE_PREFIXES)


def response_headers(
    upstream: CIMultiDictProxy[str],
    served_by: str,
    fallback_reason: str | None,
    dropped: frozenset[str] = _RESPONSE_DROPPED,
) -> CIMultiDict[str]:
    """The upstream's end-to-end headers for the client, less `dropped` (lower-case names); of the cloud's only
    those `cloud_header_allowed` lets through."""
    if served_by == SERVED_BY_FALLBACK:
        kept = [
            (k, v)
            for k, v in upstream.items()
            if k.lower() not in dropped and cloud_header_allowed(k.lower())
        ]
    else:
        kept = [(k, v) for k, v in upstream.items() if k.lower() not in dropped]
    headers: CIMultiDict[str] = CIMultiDict(kept)
    headers[SERVED_BY_HEADER] = served_by
    if fallback_reason is not None:
        headers[FALLBACK_REASON_HEADER] = fallback_reason
    return headers

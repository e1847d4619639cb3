"""The upstream pool: a config snapshot (`Route`) with its local endpoints, the cloud target and the
header rules for each hop. A reload builds a new `Route`; in-flight requests keep the one they took.
"""

from __future__ import annotations

import itertools
import json
import logging
from collections.abc import Mapping
from typing import Final

import aiohttp
from multidict import CIMultiDict, CIMultiDictProxy
from yarl import URL

from localai_operator.constants import SERVED_BY_HEADER
from localai_operator.router.config import Fallback, RouterConfig
from localai_operator.router.policy import NO_CHOICE, Breaker, TokenBucket, choose

log = logging.getLogger(__name__)

# The OpenAI paths the router serves, relative to a base URL that ends in /v1.
API_PATHS: Final = ("/chat/completions", "/completions", "/embeddings", "/models")
API_PREFIX: Final = "/v1"

# Hop-by-hop headers (RFC 9110 section 7.6.1) plus those the HTTP client recomputes for the new hop.
_HOP_BY_HOP: Final = (
    "Connection", "Keep-Alive", "Proxy-Authenticate", "Proxy-Authorization", "Proxy-Connection",
    "TE", "Trailer", "Transfer-Encoding", "Upgrade",
)  # fmt: skip
# Expect: the body is already read in full, so there is nothing to negotiate with the upstream.
_REQUEST_DROPPED: Final = (*_HOP_BY_HOP, "Host", "Content-Length", "Accept-Encoding", "Expect")
_RESPONSE_DROPPED: Final = (*_HOP_BY_HOP, "Content-Length", "Date", "Server")
# The cloud gets an allow-list, not a deny-list: the client's Authorization, cookies and any other
# credential-bearing header (x-api-key, api-key, ...) must never leave the cluster.
_CLOUD_FORWARDED: Final = ("Content-Type", "Accept", "X-Request-Id")
# Identity encoding keeps relayed bytes exactly as received and SSE chunks unbuffered by a decoder.
_ACCEPT_ENCODING: Final = ("Accept-Encoding", "identity")
USER_AGENT: Final = "localai-operator-router"
FALLBACK_REASON_HEADER: Final = "X-Fallback-Reason"


class Endpoint:
    """One local LocalAI base URL, with its breaker and in-flight count (kept across reloads)."""

    __slots__ = ("base_url", "breaker", "outstanding", "urls")

    def __init__(self, base_url: str, breaker: Breaker) -> None:
        self.base_url = base_url
        self.breaker = breaker
        self.outstanding = 0
        self.urls = api_urls(base_url)


class Cloud:
    """The fallback provider of one config snapshot."""

    __slots__ = ("api_key", "base_url", "fallback", "urls")

    def __init__(self, fallback: Fallback, api_key: str | None) -> None:
        self.fallback = fallback
        self.base_url = fallback.base_url
        self.api_key = api_key
        self.urls = api_urls(fallback.base_url)

    def request_body(self, body: bytes) -> bytes:
        """The client's body with `model` mapped to the provider's name; parsed only here."""
        try:
            payload = json.loads(body)
        except ValueError:
            return body
        if not isinstance(payload, dict):
            return body
        model = payload.get("model")
        payload["model"] = self.fallback.cloud_model(model if isinstance(model, str) else None)
        return json.dumps(payload, separators=(",", ":")).encode()

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


class Route:
    """An immutable-by-convention snapshot of the config, with the state shared across snapshots."""

    def __init__(
        self,
        config: RouterConfig,
        endpoints: tuple[Endpoint, ...],
        cloud: Cloud | None,
        limiter: TokenBucket | None,
    ) -> None:
        policy = config.policy
        self.config = config
        self.name = f"{config.route.namespace}/{config.route.name}"
        self.sensitive = policy.sensitive
        self.endpoints = endpoints
        self.cloud = cloud
        self.limiter = limiter
        connect = policy.connect_timeout_ms / 1000
        # aiohttp's `total` also bounds reading the body, so it is the whole request timeout.
        self.local_timeout = aiohttp.ClientTimeout(total=policy.request_timeout_seconds, sock_connect=connect)
        self.cloud_timeout = aiohttp.ClientTimeout(total=policy.request_timeout_seconds, sock_connect=connect)
        self.listing_timeout = aiohttp.ClientTimeout(
            total=min(policy.request_timeout_seconds, 10.0), sock_connect=connect
        )
        # Abandoning a slow local answer only helps when there is somewhere else to go.
        self.first_byte_budget: float | None = policy.first_token_timeout_ms / 1000 if cloud else None
        self._rotation = itertools.count()

    def pick(self, now: float) -> tuple[Endpoint, bool] | None:
        """The local endpoint for the next request and whether it is a half-open probe, or None
        when every breaker is open (the caller goes to the cloud without waiting)."""
        endpoints = self.endpoints
        start = next(self._rotation) % len(endpoints) if len(endpoints) > 1 else 0
        index = choose(endpoints, now, start)
        if index == NO_CHOICE:
            return None
        endpoint = endpoints[index]
        return endpoint, endpoint.breaker.begin(now)

    def reopens_in(self, now: float) -> float:
        return min(e.breaker.reopens_in(now) for e in self.endpoints)


def api_urls(base_url: str) -> dict[str, URL]:
    base = base_url.rstrip("/")
    return {path: URL(base + path) for path in API_PATHS}


def build_route(config: RouterConfig, previous: Route | None, env: Mapping[str, str], now: float) -> Route:
    """A new snapshot; endpoints whose URL is unchanged keep their breaker and in-flight count."""
    breaker_settings = config.policy.circuit_breaker
    kept = {e.base_url: e for e in previous.endpoints} if previous else {}
    endpoints: list[Endpoint] = []
    for base_url in dict.fromkeys(config.local.endpoints):
        endpoint = kept.get(base_url)
        if endpoint is None:
            endpoint = Endpoint(
                base_url, Breaker(breaker_settings.failure_threshold, breaker_settings.open_seconds)
            )
        else:
            endpoint.breaker.failure_threshold = breaker_settings.failure_threshold
            endpoint.breaker.open_seconds = breaker_settings.open_seconds
        endpoints.append(endpoint)

    cloud = None
    if config.fallback is not None and not config.policy.sensitive:
        api_key = env.get(config.fallback.api_key_env) or None
        if api_key is None:
            log.warning(
                "environment variable %s is empty: cloud fallback requests are sent without a key",
                config.fallback.api_key_env,
            )
        cloud = Cloud(config.fallback, api_key)

    limit = config.policy.rate_limit
    limiter = None
    if limit is not None:
        old = previous.limiter if previous else None
        if old is not None and old.rate == limit.requests_per_second and old.burst == limit.burst:
            limiter = old
        else:
            limiter = TokenBucket(limit.requests_per_second, limit.burst, now)
    return Route(config, tuple(endpoints), cloud, limiter)


def local_request_headers(client: CIMultiDictProxy[str]) -> CIMultiDict[str]:
    """The client's headers for the local hop: everything end-to-end, including Authorization
    (a LocalAI may check its own API key)."""
    headers = CIMultiDict(client)
    connection = client.get("Connection")
    for name in _REQUEST_DROPPED:
        headers.popall(name, None)
    if connection:
        for name in connection.split(","):
            headers.popall(name.strip(), None)
    headers[_ACCEPT_ENCODING[0]] = _ACCEPT_ENCODING[1]
    return headers


def response_headers(
    upstream: CIMultiDictProxy[str], served_by: str, fallback_reason: str | None
) -> CIMultiDict[str]:
    headers = CIMultiDict(upstream)
    for name in _RESPONSE_DROPPED:
        headers.popall(name, None)
    headers[SERVED_BY_HEADER] = served_by
    if fallback_reason is not None:
        headers[FALLBACK_REASON_HEADER] = fallback_reason
    return headers

"""Model listing: `GET /v1/models` (local's models, then the cloud's that local does not list),
`GET /v1/models/{id}` (answered from the same lists: LocalAI has no such endpoint), and the catalog the
relay asks whether a model is served locally or only by the cloud.

Listing never touches a breaker: it is not inference traffic.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Callable
from typing import Any, Final

from aiohttp import web
from multidict import CIMultiDict, CIMultiDictProxy
from yarl import URL

from localai_operator.constants import SERVED_BY_FALLBACK, SERVED_BY_HEADER, SERVED_BY_LOCAL, SERVED_BY_ROUTER
from localai_operator.router import http, replies
from localai_operator.router.metrics import RouterMetrics
from localai_operator.router.proxy import Proxy
from localai_operator.router.upstream import Route, local_request_headers

log = logging.getLogger(__name__)

# How often the catalog is refreshed in the background, and how old a list may be to be trusted.
REFRESH_SECONDS: Final = 30.0
TRUSTED_SECONDS: Final = 120.0
_LIST_ERRORS: Final = (http.UpstreamError, TimeoutError, ValueError)

Entries = list[dict[str, Any]]


class Catalog:
    """The model ids local and the cloud listed last, with when."""

    __slots__ = ("cloud", "cloud_at", "local", "local_at")

    def __init__(self) -> None:
        self.local: frozenset[str] | None = None
        self.cloud: frozenset[str] | None = None
        self.local_at = 0.0
        self.cloud_at = 0.0

    def only_in_cloud(self, model: str, now: float) -> bool:
        """Both lists are fresh, local's lacks the model and the cloud's has it."""
        return (
            self.local is not None
            and self.cloud is not None
            and now - self.local_at < TRUSTED_SECONDS
            and now - self.cloud_at < TRUSTED_SECONDS
            and model not in self.local
            and model in self.cloud
        )

    def cloud_lists(self, model: str) -> bool:
        return self.cloud is not None and model in self.cloud


def _ids(entries: Entries) -> frozenset[str]:
    return frozenset(e["id"] for e in entries if isinstance(e.get("id"), str))


class Listing:
    """The model endpoints. `client` is the router's upstream client, set when the app starts."""

    client: http.Client

    def __init__(self, metrics: RouterMetrics, clock: Callable[[], float]) -> None:
        self.metrics = metrics
        self.clock = clock
        self.catalog = Catalog()

    async def _fetch(
        self, url: URL, headers: CIMultiDict[str], route: Route, proxy: Proxy | None = None
    ) -> Entries | None:
        upstream = None
        try:
            upstream = await self.client.request(
                "GET",
                url,
                headers.items(),
                connect_timeout=route.connect_timeout,
                timeout=route.listing_timeout,
                proxy=proxy,
            )
            if upstream.status != 200:
                log.info("model list from %s answered %d", url.origin(), upstream.status)
                return None
            payload = json.loads(await upstream.read())
        except _LIST_ERRORS as err:
            log.info("model list from %s failed: %s", url.origin(), type(err).__name__)
            return None
        finally:
            if upstream is not None:
                upstream.close()
        data = payload.get("data") if isinstance(payload, dict) else None
        if not isinstance(data, list):
            return None
        return [entry for entry in data if isinstance(entry, dict)]

    async def lists(
        self, route: Route, headers: CIMultiDict[str] | None = None, keep_client_credentials: bool = False
    ) -> tuple[Entries | None, Entries | None]:
        """Local's list (from the first available endpoint that answers) and the cloud's, fetched together."""
        now = self.clock()
        client = CIMultiDictProxy(headers or CIMultiDict())
        local_headers = local_request_headers(client, route.local_key, keep_client_credentials)

        async def local() -> Entries | None:
            for endpoint in route.endpoints:
                if endpoint.breaker.available(now):
                    found = await self._fetch(endpoint.url("/models"), local_headers, route)
                    if found is not None:
                        return found
            return None

        async def cloud() -> Entries | None:
            if route.cloud is None:
                return None
            cloud = route.cloud
            return await self._fetch(cloud.url("/models"), cloud.request_headers(client), route, cloud.proxy)

        local_entries, cloud_entries = await asyncio.gather(local(), cloud())
        done = self.clock()
        if local_entries is not None:
            self.catalog.local, self.catalog.local_at = _ids(local_entries), done
        if cloud_entries is not None:
            self.catalog.cloud, self.catalog.cloud_at = _ids(cloud_entries), done
        return local_entries, cloud_entries

    async def refresh_forever(self, current_route: Callable[[], Route]) -> None:
        while True:
            try:
                await self.lists(current_route())
            except Exception:
                log.exception("refreshing the model catalog failed")
            await asyncio.sleep(REFRESH_SECONDS)

    def _respond(self, status: int, body: Any, served_by: str, started: float) -> web.Response:
        response = web.Response(
            status=status,
            body=json.dumps(body).encode(),
            content_type="application/json",
            headers={SERVED_BY_HEADER: served_by},
        )
        self.metrics.requests.inc((served_by, str(status)))
        self.metrics.duration.observe((served_by,), self.clock() - started)
        return response

    async def models(
        self, request: web.Request, route: Route, started: float, keep_credentials: bool
    ) -> web.Response:
        local_entries, cloud_entries = await self.lists(route, CIMultiDict(request.headers), keep_credentials)
        if local_entries is None and cloud_entries is None:
            return self._unavailable(started)
        merged: Entries = []
        seen: set[str] = set()
        for entries in (local_entries or [], cloud_entries or []):
            for entry in entries:
                model_id = entry.get("id")
                if isinstance(model_id, str) and model_id not in seen:
                    seen.add(model_id)
                    merged.append(entry)
        served_by = SERVED_BY_LOCAL if local_entries is not None else SERVED_BY_FALLBACK
        return self._respond(200, {"object": "list", "data": merged}, served_by, started)

    async def model(
        self, request: web.Request, route: Route, model_id: str, started: float, keep_credentials: bool
    ) -> web.Response:
        local_entries, cloud_entries = await self.lists(route, CIMultiDict(request.headers), keep_credentials)
        if local_entries is None and cloud_entries is None:
            return self._unavailable(started)
        for entries, served_by in ((local_entries, SERVED_BY_LOCAL), (cloud_entries, SERVED_BY_FALLBACK)):
            for entry in entries or ():
                if entry.get("id") == model_id:
                    return self._respond(200, entry, served_by, started)
        self.metrics.requests.inc((SERVED_BY_ROUTER, "404"))
        return replies.error(
            404,
            f"the model {model_id!r} does not exist: neither local nor the cloud fallback lists it",
            code="model_not_found",
        )

    def _unavailable(self, started: float) -> web.Response:
        self.metrics.requests.inc((SERVED_BY_ROUTER, "503"))
        return replies.error(503, "no model list available: neither local nor the cloud fallback answered")

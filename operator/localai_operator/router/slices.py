"""Ready pods from the pool Service's EndpointSlices, watched through the Kubernetes API: a pod that turns Ready
takes traffic as soon as the API server knows it, one that turns unready or goes away gets no new request —
no DNS cache (CoreDNS answers are cached for seconds) and no polling interval in between.

A list, then a watch from its resourceVersion with bookmarks; a relist when the watch's version is gone (410);
reconnects with backoff. While the watch is unavailable (no token, the Role missing, the API server unreachable)
`live` is False and the router follows DNS instead. The router's own ServiceAccount token (an explicit projected
volume: token, ca.crt, namespace) is re-read at every connect, as the kubelet rotates it. aiohttp only: the
router depends on no Kubernetes client library.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import ssl
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

import aiohttp
from yarl import URL

from localai_operator.router.discovery import endpoint_urls

log = logging.getLogger(__name__)

SERVICE_ACCOUNT_DIR: Final = Path("/var/run/secrets/kubernetes.io/serviceaccount")
SERVICE_NAME_LABEL: Final = "kubernetes.io/service-name"
# A watch is re-opened this often even when nothing happens (the API server ends it too).
WATCH_SECONDS: Final = 300
# Longest silence on an open watch before it is taken for dead (bookmarks come about every minute).
READ_TIMEOUT_SECONDS: Final = 120.0
BACKOFF_START: Final = 0.5
BACKOFF_MAX: Final = 30.0
MAX_EVENT_BYTES: Final = 4 * 1024 * 1024


@dataclass(frozen=True)
class ApiAccess:
    """Where the API server is and how to prove who the router is."""

    server: str
    token_file: Path | None = None
    ca_file: Path | None = None
    token: str | None = None

    def bearer(self) -> str | None:
        if self.token is not None:
            return self.token
        if self.token_file is None:
            return None
        try:
            return self.token_file.read_text().strip() or None
        except OSError:
            return None

    def tls(self) -> ssl.SSLContext | None:
        if not self.server.startswith("https"):
            return None
        return ssl.create_default_context(cafile=str(self.ca_file) if self.ca_file else None)


def in_cluster(
    env: Mapping[str, str] = os.environ, directory: Path = SERVICE_ACCOUNT_DIR
) -> ApiAccess | None:
    """The API server as a pod sees it (the kubelet's KUBERNETES_SERVICE_* variables and the mounted token),
    None when either is missing."""
    host, port = env.get("KUBERNETES_SERVICE_HOST"), env.get("KUBERNETES_SERVICE_PORT", "443")
    token = directory / "token"
    if not host or not token.exists():
        return None
    if ":" in host:
        host = f"[{host}]"
    ca = directory / "ca.crt"
    return ApiAccess(f"https://{host}:{port}", token, ca if ca.exists() else None)


class Gone(Exception):
    """The watch's resourceVersion is too old (410): list again."""


def ready_addresses(slice_: Mapping[str, Any], wanted_port: int | None) -> tuple[int | None, list[str]]:
    """A slice's port (the one numbered `wanted_port` if it has one, else its first) and its ready addresses."""
    ports = [p.get("port") for p in slice_.get("ports") or () if isinstance(p, dict)]
    port = wanted_port if wanted_port in ports else next((p for p in ports if isinstance(p, int)), None)
    addresses: list[str] = []
    for endpoint in slice_.get("endpoints") or ():
        if not isinstance(endpoint, dict):
            continue
        conditions = endpoint.get("conditions") or {}
        if conditions.get("ready") is False:  # unset means ready (the API's documented reading)
            continue
        addresses.extend(a for a in endpoint.get("addresses") or () if isinstance(a, str))
    return port, addresses


class SliceWatcher:
    """Follows one Service's EndpointSlices and reports its ready pods' base URLs when they change."""

    def __init__(
        self,
        access: ApiAccess,
        service: str,
        namespace: str,
        base_url: str,
        on_change: Callable[[list[str]], None],
    ) -> None:
        self.access = access
        self.service = service
        self.namespace = namespace
        self.base_url = base_url
        self.on_change = on_change
        self.live = False
        self.current: list[str] | None = None
        self.problem: str | None = None
        self._slices: dict[str, tuple[int | None, list[str]]] = {}
        self._url = URL(access.server).with_path(
            f"/apis/discovery.k8s.io/v1/namespaces/{namespace}/endpointslices"
        )
        self._selector = f"{SERVICE_NAME_LABEL}={service}"

    def _headers(self) -> dict[str, str]:
        token = self.access.bearer()
        return {"Authorization": f"Bearer {token}", "Accept": "application/json"} if token else {}

    def _report(self) -> None:
        urls: set[str] = set()
        for port, addresses in self._slices.values():
            if port is None:
                continue
            base = str(URL(self.base_url).with_port(port))
            urls.update(endpoint_urls(base, addresses))
        found = sorted(urls)
        if found != self.current:
            log.info(
                "ready pods of Service %s/%s: %s", self.namespace, self.service, ", ".join(found) or "none"
            )
            self.current = found
            self.on_change(found)

    def _set(self, slice_: Mapping[str, Any]) -> None:
        name = str((slice_.get("metadata") or {}).get("name", ""))
        self._slices[name] = ready_addresses(slice_, URL(self.base_url).port)

    async def _list(self, session: aiohttp.ClientSession) -> str:
        params = {"labelSelector": self._selector}
        async with session.get(self._url, params=params, headers=self._headers()) as response:
            await self._check(response)
            body = await response.json()
        self._slices = {}
        for item in body.get("items") or ():
            self._set(item)
        self.live = True
        self.problem = None
        self._report()
        return str((body.get("metadata") or {}).get("resourceVersion", ""))

    async def _watch(self, session: aiohttp.ClientSession, version: str) -> str:
        params = {
            "labelSelector": self._selector,
            "watch": "1",
            "allowWatchBookmarks": "true",
            "resourceVersion": version,
            "timeoutSeconds": str(WATCH_SECONDS),
        }
        timeout = aiohttp.ClientTimeout(sock_read=READ_TIMEOUT_SECONDS)
        async with session.get(
            self._url, params=params, headers=self._headers(), timeout=timeout
        ) as response:
            await self._check(response)
            while True:
                line = await response.content.readline()
                if not line:
                    return version
                if len(line) > MAX_EVENT_BYTES or not line.strip():
                    continue
                event = json.loads(line)
                kind, obj = event.get("type"), event.get("object") or {}
                if kind == "ERROR":
                    if obj.get("code") == 410:
                        raise Gone
                    raise aiohttp.ClientError(f"watch error: {obj.get('message')}")
                version = str((obj.get("metadata") or {}).get("resourceVersion", version))
                if kind in ("ADDED", "MODIFIED"):
                    self._set(obj)
                elif kind == "DELETED":
                    self._slices.pop(str((obj.get("metadata") or {}).get("name", "")), None)
                else:
                    continue  # BOOKMARK: only the version moves
                self._report()

    async def _check(self, response: aiohttp.ClientResponse) -> None:
        if response.status == 410:
            raise Gone
        if response.status != 200:
            detail = (await response.text())[:200]
            raise PermissionError(f"the API server answered {response.status}: {detail}")

    async def run(self) -> None:
        backoff = BACKOFF_START
        connector = aiohttp.TCPConnector(ssl=self.access.tls() or False)
        async with aiohttp.ClientSession(
            connector=connector, timeout=aiohttp.ClientTimeout(connect=5)
        ) as session:
            while True:
                try:
                    version = await self._list(session)
                    backoff = BACKOFF_START
                    while True:
                        version = await self._watch(session, version)
                except Gone:
                    continue
                except asyncio.CancelledError:
                    raise
                except (aiohttp.ClientError, PermissionError, OSError, ValueError, TimeoutError) as err:
                    problem = f"watching the EndpointSlices of {self.namespace}/{self.service} failed: {err}"
                    if self.live or problem != self.problem:
                        log.warning("%s; following DNS until it works again", problem)
                    self.live = False
                    self.problem = problem
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, BACKOFF_MAX)

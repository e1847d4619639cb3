"""Pods by DNS: the host name of a headless Service resolves to one address per ready pod, so re-resolving
it every few seconds follows the pool's pods without any Kubernetes API access (no RBAC for the router).
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import logging
import socket
from collections.abc import Awaitable, Callable
from typing import Final

from yarl import URL

log = logging.getLogger(__name__)

Resolver = Callable[[str, int], Awaitable[list[str] | None]]
# While the pool is cold or requests wait for room, the name is re-resolved this often, so that a pod that
# becomes ready takes requests within about a second.
HURRIED_INTERVAL: Final = 1.0
# The name does not exist or has no address: no pod is ready (a headless Service lists ready pods only).
_NO_ADDRESS: Final = {socket.EAI_NONAME, getattr(socket, "EAI_NODATA", socket.EAI_NONAME)}


async def resolve(host: str, port: int) -> list[str] | None:
    """The addresses of `host`, [] when it has none, None when the lookup failed for another reason (a DNS
    server timeout must not empty the pool)."""
    try:
        infos = await asyncio.get_running_loop().getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except socket.gaierror as err:
        if err.errno in _NO_ADDRESS:
            return []
        log.warning("resolving %s failed: %s; keeping the pods known so far", host, err)
        return None
    return sorted({str(info[4][0]) for info in infos})


def endpoint_urls(base_url: str, addresses: list[str]) -> list[str]:
    """One base URL per address, with the discovery URL's scheme, port and path."""
    url = URL(base_url)
    port = url.port
    path = url.path.rstrip("/")
    out = []
    for address in addresses:
        host = f"[{address}]" if ipaddress.ip_address(address).version == 6 else address
        out.append(f"{url.scheme}://{host}:{port}{path}")
    return out


class PodDiscovery:
    """Re-resolves `url`'s host every `interval` seconds and reports the endpoint URLs when they change."""

    def __init__(
        self,
        url: str,
        interval: float,
        on_change: Callable[[list[str]], None],
        resolver: Resolver = resolve,
        hurry: Callable[[], bool] = lambda: False,
        standing_by: Callable[[], bool] = lambda: False,
    ) -> None:
        """`standing_by`: True while something better (the EndpointSlice watch) follows the pods."""
        self.url = url
        self.interval = interval
        self.on_change = on_change
        self.resolver = resolver
        self.hurry = hurry
        self.standing_by = standing_by
        self.current: list[str] | None = None
        self._woken = asyncio.Event()

    def wake(self) -> None:
        """Look again now: a pod refused or did not answer a connection, so it may be gone (scaled down,
        replaced) while its address is still known."""
        self._woken.set()

    async def resolve_once(self) -> None:
        parsed = URL(self.url)
        assert parsed.host is not None and parsed.port is not None, "the config requires an absolute URL"
        addresses = await self.resolver(parsed.host, parsed.port)
        if addresses is None:
            return
        urls = endpoint_urls(self.url, addresses)
        if urls != self.current:
            if self.current is not None or not urls:
                log.info("pods of %s: %s", parsed.host, ", ".join(addresses) or "none ready")
            self.current = urls
            self.on_change(urls)

    async def run(self) -> None:
        while True:
            interval = min(self.interval, HURRIED_INTERVAL) if self.hurry() else self.interval
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._woken.wait(), interval)
            self._woken.clear()
            if self.standing_by():
                self.current = None  # report afresh once it is needed again
                continue
            try:
                await self.resolve_once()
            except Exception:
                log.exception("re-resolving %s failed; keeping the pods known so far", self.url)

"""The router pods the elastic loop may read, and the read itself.

A route Service's EndpointSlices list whatever pods carry its selector's labels, and anyone who may create a pod
or an EndpointSlice in the namespace can put one there. So a pod is read only when the route's own router
Deployment controls it (through a ReplicaSet that Deployment controls), and only at an address the pod has; and a
read takes at most MAX_BODY_BYTES within the timeout. Verdicts are kept per pod and ReplicaSet uid, so a router
pod costs one GET of each in its life.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any, Final

import aiohttp

from localai_operator.api.kinds import POD, REPLICA_SET
from localai_operator.control.autoscale import RouterSample, parse_metrics
from localai_operator.control.cache import Endpoint
from localai_operator.control.kube import ApiError, Reader

log = logging.getLogger(__name__)

MAX_BODY_BYTES: Final = 1 << 20  # a router's /metrics is a few KiB
TIMEOUT_SECONDS: Final = 2.0
CONCURRENT_READS: Final = 32  # at most this many bodies held at once


@dataclass(frozen=True)
class RouterPod:
    name: str
    address: str


def controller(body: Mapping[str, Any], kind: str) -> tuple[str, str] | None:
    """(name, uid) of `body`'s controller, if it is of `kind`."""
    for ref in (body.get("metadata") or {}).get("ownerReferences") or []:
        if ref.get("controller") and ref.get("kind") == kind:
            return str(ref.get("name", "")), str(ref.get("uid", ""))
    return None


def pod_addresses(pod: Mapping[str, Any]) -> frozenset[str]:
    status = pod.get("status") or {}
    return frozenset({str(status["podIP"])} if status.get("podIP") else set()) | frozenset(
        str(ip.get("ip")) for ip in status.get("podIPs") or [] if ip.get("ip")
    )


@dataclass(frozen=True)
class _PodFacts:
    replica_set: tuple[str, str] | None  # (name, uid) of its controller, if a ReplicaSet
    addresses: frozenset[str]


class RouterPods:
    """Which endpoints of a route are its router Deployment's pods."""

    def __init__(self, reader: Reader) -> None:
        self.reader = reader
        self._pods: dict[tuple[str, str, str], _PodFacts | None] = {}  # (namespace, name, uid) -> facts
        self._replica_sets: dict[tuple[str, str], str | None] = {}  # (namespace, uid) -> its Deployment's uid

    async def trusted(
        self, namespace: str, deployment_uid: str | None, endpoints: Iterable[Endpoint]
    ) -> tuple[list[RouterPod], bool]:
        """The endpoints that are pods of the Deployment `deployment_uid`, each once, and whether every endpoint
        could be judged (False when the API server did not answer: the reading may be short)."""
        listed = list(endpoints)
        if not deployment_uid:
            return [], True
        facts = await asyncio.gather(*(self._pod(namespace, e) for e in listed), return_exceptions=True)
        out: dict[str, RouterPod] = {}
        complete = True
        for endpoint, found in zip(listed, facts, strict=True):
            if isinstance(found, BaseException):
                complete = False
                log.debug("router pod %s/%s: %s", namespace, endpoint.pod, found)
                continue
            if found is None or found.replica_set is None or endpoint.address not in found.addresses:
                continue
            try:
                owner = await self._owner(namespace, found.replica_set)
            except (ApiError, aiohttp.ClientError, TimeoutError) as err:
                complete = False
                log.debug("replica set %s/%s: %s", namespace, found.replica_set[0], err)
                continue
            if owner == deployment_uid:
                out.setdefault(endpoint.pod, RouterPod(endpoint.pod, endpoint.address))
        return sorted(out.values(), key=lambda p: p.name), complete

    def keep(self, listed: Iterable[tuple[str, Endpoint]]) -> None:
        """Forget the verdicts of pods no longer listed (namespace, endpoint), and of ReplicaSets no pod names."""
        alive = {(namespace, e.pod, e.uid) for namespace, e in listed}
        for key in [k for k in self._pods if k not in alive]:
            del self._pods[key]
        used = {(k[0], f.replica_set[1]) for k, f in self._pods.items() if f is not None and f.replica_set}
        for rs in [k for k in self._replica_sets if k not in used]:
            del self._replica_sets[rs]

    async def _pod(self, namespace: str, endpoint: Endpoint) -> _PodFacts | None:
        key = (namespace, endpoint.pod, endpoint.uid)
        if key in self._pods:
            return self._pods[key]
        body = await self.reader.get(POD, namespace, endpoint.pod)
        facts = None
        uid = (body or {}).get("metadata", {}).get("uid")
        if body is not None and (not endpoint.uid or uid == endpoint.uid):
            facts = _PodFacts(controller(body, REPLICA_SET.kind), pod_addresses(body))
        self._pods[key] = facts
        return facts

    async def _owner(self, namespace: str, replica_set: tuple[str, str]) -> str | None:
        key = (namespace, replica_set[1])
        if key not in self._replica_sets:
            body = await self.reader.get(REPLICA_SET, namespace, replica_set[0])
            same = body is not None and (body.get("metadata") or {}).get("uid") == replica_set[1]
            deployment = controller(body or {}, "Deployment") if same else None
            self._replica_sets[key] = deployment[1] if deployment else None
        return self._replica_sets[key]


class Scraper:
    """Reads routers' /metrics: bounded in size, time and concurrency; a bad answer is None, never an error."""

    def __init__(self) -> None:
        self._session: aiohttp.ClientSession | None = None
        self._slots = asyncio.Semaphore(CONCURRENT_READS)

    async def read(self, address: str, port: int) -> RouterSample | None:
        if self._session is None or self._session.closed:
            self._session = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=TIMEOUT_SECONDS))
        host = f"[{address}]" if ":" in address else address
        async with self._slots:
            try:
                async with self._session.get(f"http://{host}:{port}/metrics") as response:
                    if response.status != 200 or (response.content_length or 0) > MAX_BODY_BYTES:
                        return None
                    body = bytearray()
                    async for chunk in response.content.iter_chunked(1 << 16):
                        body += chunk
                        if len(body) > MAX_BODY_BYTES:
                            log.debug("router metrics at %s: more than %d bytes", address, MAX_BODY_BYTES)
                            return None
                return parse_metrics(body.decode("utf-8", errors="replace"))
            except (aiohttp.ClientError, TimeoutError, ValueError) as err:
                log.debug("router metrics at %s: %s", address, err)
                return None

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()

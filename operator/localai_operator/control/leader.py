"""Leader election on a coordination.k8s.io Lease, as client-go's leaderelection does it: one replica holds the
Lease and renews it; a standby keeps its caches warm and reconciles nothing until the Lease is free or expired.

Expiry is judged by the standby's own clock from when it last saw the Lease change, never by comparing the
holder's timestamps with ours: clocks of two nodes may disagree.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

import aiohttp

from localai_operator.api.kinds import LEASE
from localai_operator.control.kube import Api, ApiError

log = logging.getLogger(__name__)


def _micro_time(moment: datetime) -> str:
    return moment.strftime("%Y-%m-%dT%H:%M:%S.%fZ")


class LeaderElector:
    def __init__(
        self,
        api: Api,
        namespace: str,
        name: str,
        identity: str,
        *,
        lease_seconds: int = 15,
        renew_deadline: float = 10.0,
        retry_seconds: float = 2.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.api, self.namespace, self.name, self.identity = api, namespace, name, identity
        self.lease_seconds, self.renew_deadline, self.retry_seconds = (
            lease_seconds,
            renew_deadline,
            retry_seconds,
        )
        self.leading = asyncio.Event()
        self._clock = clock
        self._lease: dict[str, Any] | None = None  # the Lease as our last request returned it
        self._observed: tuple[Any, Any] | None = None  # (holder, renewTime) when we last saw it change
        self._observed_at = 0.0
        self._renewed_at = 0.0

    async def run(self, started: Callable[[], None], stopped: Callable[[], None]) -> None:
        """Tries to acquire or renew every `retry_seconds` until cancelled; calls `started` on becoming the
        leader and `stopped` on losing the Lease (not renewed within `renew_deadline`)."""
        while True:
            try:
                held = await self.try_acquire_or_renew()
            except (ApiError, aiohttp.ClientError, TimeoutError) as err:
                log.warning("leader election: %s", err)
                held = self.leading.is_set() and self._clock() - self._renewed_at < self.renew_deadline
            if held and not self.leading.is_set():
                log.info("became the leader (Lease %s/%s)", self.namespace, self.name)
                self.leading.set()
                started()
            elif not held and self.leading.is_set():
                log.warning("lost the Lease %s/%s: standing by", self.namespace, self.name)
                self.leading.clear()
                stopped()
            await asyncio.sleep(self.retry_seconds)

    async def try_acquire_or_renew(self) -> bool:
        now = datetime.now(UTC)
        spec = {
            "holderIdentity": self.identity,
            "leaseDurationSeconds": self.lease_seconds,
            "renewTime": _micro_time(now),
        }
        lease = self._lease if self.leading.is_set() else None
        if lease is None:
            lease = await self.api.get(LEASE, self.namespace, self.name)
        if lease is None:
            body = {
                "apiVersion": LEASE.api_version,
                "kind": LEASE.kind,
                "metadata": {"name": self.name, "namespace": self.namespace},
                "spec": {**spec, "acquireTime": _micro_time(now), "leaseTransitions": 0},
            }
            return await self._write(self.api.create(LEASE, body))
        current = lease.get("spec") or {}
        holder = current.get("holderIdentity")
        observed = (holder, current.get("renewTime"))
        if observed != self._observed:
            self._observed, self._observed_at = observed, self._clock()
        duration = int(current.get("leaseDurationSeconds") or self.lease_seconds)
        expired = self._clock() - self._observed_at > duration
        if holder not in (None, "", self.identity) and not expired:
            return False
        if holder != self.identity:
            spec["acquireTime"] = _micro_time(now)
            spec["leaseTransitions"] = int(current.get("leaseTransitions") or 0) + 1
        # PUT with the resourceVersion we read: of two candidates racing for a free Lease, one gets a 409.
        return await self._write(self.api.replace(LEASE, {**lease, "spec": {**current, **spec}}))

    async def _write(self, request: Any) -> bool:
        try:
            self._lease = await request
        except ApiError as err:
            if err.status != 409:
                raise
            self._lease = None
            return False
        self._renewed_at = self._clock()
        return True

    async def release(self) -> None:
        """Hands the Lease back on shutdown, so a standby takes over at once instead of after its expiry."""
        if not self.leading.is_set() or self._lease is None:
            return
        self.leading.clear()
        spec = {**(self._lease.get("spec") or {}), "holderIdentity": "", "leaseDurationSeconds": 1}
        where = f"{self.namespace}/{self.name}"
        try:
            await self.api.replace(LEASE, {**self._lease, "spec": spec})
        except ApiError as err:
            if err.status in (403, 404, 409):
                # `helm uninstall` deletes the Lease's Role (403) or the Lease (404; 409 for a PUT that names
                # its uid) while this pod is still stopping, or another replica took it meanwhile (409):
                # nothing of ours left to hand back.
                log.info("Lease %s: nothing to release (%s %s)", where, err.status, err.reason or "refused")
            else:
                log.warning("could not hand back the Lease %s: %s %s", where, err.status, err.message)
            return
        except (aiohttp.ClientError, TimeoutError) as err:
            log.warning("could not hand back the Lease %s: %s", where, err or type(err).__name__)
            return
        log.info("handed back the Lease %s", where)

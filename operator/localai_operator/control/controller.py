"""The controller: the operator's typed state, on Kopf's memo, and the tasks it runs beside Kopf's watches.

N async workers take keys from the work queue and run one pass each; a failed pass comes back after a capped,
jittered backoff: seconds for a transient failure, minutes for one the user must fix. A resync timer and a new leader enqueue every custom resource from the caches (no LIST).
Workers wait until Kopf has indexed everything once, and pass nothing while another replica holds the Lease.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Coroutine, Mapping
from dataclasses import dataclass, field
from typing import Any

import aiohttp
from aiohttp import web

from localai_operator.api.kinds import CUSTOM
from localai_operator.control.cache import Cache, Index
from localai_operator.control.elastic import INTERVAL_SECONDS, Elastic
from localai_operator.control.headers import Headers
from localai_operator.control.kube import Api, ApiError
from localai_operator.control.leader import LeaderElector
from localai_operator.control.metrics import Metrics
from localai_operator.control.plan import Renders
from localai_operator.control.queue import Key, ShutDown, WorkQueue
from localai_operator.control.reconcile import Context, Failure, reconcile, user_must_fix
from localai_operator.control.secrets import Secrets
from localai_operator.control.tracing import PassTracer, traced
from localai_operator.render import RenderSettings

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Options:
    workers: int = 64
    resync_seconds: float = 60.0
    metrics_port: int = 0
    # How often the elastic loop reads the routers' demand and decides the autoscaled pools' sizes.
    autoscale_seconds: float = INTERVAL_SECONDS
    # Read each model's GGUF header from its source (status.gguf, the GPU-memory fit of GPU pools).
    read_headers: bool = True


@dataclass(frozen=True)
class Controller:
    """Shared by every handler: Kopf gives each object a shallow copy of its memo, which is this very object (no
    field is ever reassigned, and no handler keeps anything per object on it)."""

    api: Api
    settings: RenderSettings
    metrics: Metrics
    options: Options = field(default_factory=Options)
    elector: LeaderElector | None = None
    # A span per pass when the environment names an OTLP endpoint.
    tracer: PassTracer | None = None
    cache: Cache = field(default_factory=Cache)
    queue: WorkQueue = field(default_factory=WorkQueue)
    renders: Renders = field(default_factory=Renders)
    secrets: Secrets = field(init=False)
    headers: Headers = field(init=False)
    last_inputs: dict[Key, int] = field(
        default_factory=dict
    )  # (a hash of) each key's inputs at its last good pass
    refused_inputs: dict[Key, int] = field(default_factory=dict)  # and at its last refusal
    synced: asyncio.Event = field(default_factory=asyncio.Event)  # Kopf has indexed every listed object
    active: asyncio.Event = field(default_factory=asyncio.Event)  # leading, and not shutting down
    _tasks: list[asyncio.Task[None]] = field(default_factory=list)
    _servers: list[web.AppRunner] = field(default_factory=list)

    def __post_init__(self) -> None:
        object.__setattr__(self, "secrets", Secrets(self.api))  # reads by name through the one client
        object.__setattr__(self, "headers", Headers(self._header_read, enabled=self.options.read_headers))

    def __copy__(self) -> Controller:
        """Kopf copies the memo for every object it sees: all copies would share every field anyway."""
        return self

    @property
    def context(self) -> Context:
        return Context(
            self.api,
            self.cache,
            self.renders,
            self.settings,
            self.queue,
            self.secrets,
            last_inputs=self.last_inputs,
            refused_inputs=self.refused_inputs,
            headers=self.headers,
        )

    def _header_read(self, keys: set[Key]) -> None:
        self.header_known(keys)

    def header_known(self, keys: set[Key]) -> None:
        """A GGUF header was read or reported: the passes that asked for it run again, even over inputs that are
        otherwise unchanged (a model's fingerprint does not hold its header)."""
        for key in keys:
            self.last_inputs.pop(key, None)
            self.queue.add(key)

    def enqueue(
        self,
        kind: str,
        namespace: str,
        names: str | list[str] | set[str],
        *,
        background: bool = False,
        low: bool = False,
    ) -> None:
        for name in [names] if isinstance(names, str) else sorted(names):
            self.queue.add(Key(kind, namespace, name), background=background, low=low)

    def resync(self) -> None:
        """Every custom resource into the queue, behind whatever is urgent or rolling out; the caches say which
        exist."""
        for kind in CUSTOM:
            for namespace, name in self.cache.keys(kind):
                self.queue.add(Key(kind.kind, namespace, name), low=True)

    async def start(self, indexes: Mapping[str, Index]) -> None:
        self.cache.bind(indexes)
        self.metrics.queue_depth.set_function(lambda: len(self.queue))
        self.metrics.held.set_function(lambda: self.queue.held_count)
        if self.options.metrics_port:
            self._servers.append(await self.metrics.serve(self.options.metrics_port))
        loop = asyncio.get_running_loop()
        self._tasks.extend(
            loop.create_task(self._work(), name=f"worker-{i}") for i in range(self.options.workers)
        )
        self._tasks.append(loop.create_task(self._resync_forever(), name="resync"))
        elastic = Elastic(
            self.cache,
            lambda kind, ns, name, background: self.enqueue(kind, ns, name, background=background),
            self.api,
            interval=self.options.autoscale_seconds,
        )
        self._tasks.append(loop.create_task(self._after_sync(elastic.run(self.active)), name="elastic"))
        if self.elector is None:
            self._lead()
        else:
            self._tasks.append(
                loop.create_task(self.elector.run(self._lead, self._stand_by), name="leader-election")
            )

    async def stop(self) -> None:
        """Fast and final: no new pass, in-flight passes cancelled (the next leader redoes them), Lease handed
        back, connections closed."""
        self.active.clear()
        self.queue.shutdown()
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        await self.headers.close()
        if self.elector is not None:
            # Within a second of SIGTERM: a standby that misses the hand-back waits for the Lease to expire.
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.elector.release(), timeout=0.5)
        self.metrics.leader.set(0)
        for runner in self._servers:
            await runner.cleanup()
        await self.api.close()
        if self.tracer is not None:
            await self.tracer.providers.stop(2.0)

    async def _after_sync(self, task: Coroutine[Any, Any, None]) -> None:
        await self.synced.wait()
        await task

    def _lead(self) -> None:
        self.metrics.leader.set(1)
        self.active.set()
        self.resync()

    def _stand_by(self) -> None:
        self.metrics.leader.set(0)
        self.active.clear()

    async def _resync_forever(self) -> None:
        while True:
            await asyncio.sleep(self.options.resync_seconds)
            if self.active.is_set():
                self.resync()

    async def _work(self) -> None:
        context = self.context
        while True:
            await self.synced.wait()
            await self.active.wait()
            try:
                key = await self.queue.get()
            except ShutDown:
                return
            if not self.active.is_set():
                # The Lease was lost while this worker waited: the key waits for the next leader.
                self.queue.done(key)
                self.queue.add(key)
                continue
            started, result = time.perf_counter(), "ok"
            try:
                failure = await traced(self.tracer, key, reconcile(key, context))
            except ApiError as err:
                failure = Failure(f"API request failed: {err}", slow=user_must_fix(err))
            except (aiohttp.ClientError, TimeoutError) as err:
                failure = Failure(f"API request failed: {err or type(err).__name__}")
            except Exception:
                log.exception("the pass of %s failed", key)
                failure = Failure("unexpected error (see the traceback above)")
            finally:
                self.queue.done(key)
            if failure is None:
                self.queue.forget(key)
            elif failure.held:
                result = "held"
            else:
                result = "retry"
                kind_of = "slow" if failure.slow else "fast"
                delay = self.queue.retry(key, slow=failure.slow)
                self.metrics.retries.labels(key.kind, kind_of).inc()
                log.info("%s: %s; retrying in %.1f s (%s)", key, failure.reason, delay, kind_of)
            self.metrics.passes.labels(key.kind, result).inc()
            self.metrics.duration.labels(key.kind).observe(time.perf_counter() - started)

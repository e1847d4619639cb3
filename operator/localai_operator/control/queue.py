"""The work queue between the watches and the passes, with client-go's workqueue semantics on asyncio.

A key is queued at most once however many events name it; a key being processed is never handed to a second
worker, and one added meanwhile comes back once the first pass is done. Failed keys return after a capped,
jittered exponential backoff of one of two kinds: seconds for a failure that passes by itself (a dropped
connection, an overloaded API server), minutes for one that the user must fix (a refused object), which is
"held" until then unless its inputs change. Urgent keys (something the user or the cluster changed) go before background ones
(a Deployment's rollout), and those before low ones (resyncs, derived fields such as a model's servedBy). Background
and low keys wait while urgent passes run (the oldest at most `patience` seconds) and never take more than
`background_limit` workers: a resync or a thousand servedBy updates do not compete with a burst of new pools, at
the workers or at the API server, nor delay the rollouts that make those pools Ready, and are not starved either.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass

from localai_operator.control.status import SLOW_RETRY_CAP_SECONDS


@dataclass(frozen=True, order=True)
class Key:
    kind: str
    namespace: str
    name: str

    def __str__(self) -> str:
        return f"{self.kind} {self.namespace}/{self.name}"


URGENT, BACKGROUND, LOW = 0, 1, 2


class ShutDown(Exception):
    """The queue is shut down: workers return."""


class Backoff:
    """base · 2^(failures - 1), at most `cap`, spread by ±`jitter` so failing keys do not retry in lockstep.
    The defaults are for transient failures; SLOW, client-go's per-item backoff, for failures the user must fix."""

    def __init__(
        self,
        base: float = 0.5,
        cap: float = 5.0,
        jitter: float = 0.2,
        rng: Callable[[], float] = random.random,
    ) -> None:
        self.base, self.cap, self.jitter, self._rng = base, cap, jitter, rng
        self._failures: dict[Key, int] = {}

    def next(self, key: Key) -> float:
        failures = self._failures.get(key, 0) + 1
        self._failures[key] = failures
        delay: float = min(self.cap, self.base * 2 ** (failures - 1))
        return delay * (1 + self.jitter * (2 * self._rng() - 1))

    def failures(self, key: Key) -> int:
        return self._failures.get(key, 0)

    def forget(self, key: Key) -> None:
        self._failures.pop(key, None)


# Failures the user must fix: 2 s, 4 s, ... 256 s, then every 5 minutes (as the status message says).
SLOW_BASE, SLOW_CAP = 2.0, SLOW_RETRY_CAP_SECONDS


class WorkQueue:
    def __init__(
        self,
        backoff: Backoff | None = None,
        *,
        slow_backoff: Backoff | None = None,
        background_limit: int = 4,
        patience: float = 5.0,
        waited: Callable[[Key, float], None] | None = None,
    ) -> None:
        self.backoff = backoff or Backoff()
        self.slow_backoff = slow_backoff or Backoff(SLOW_BASE, SLOW_CAP)
        self._held: set[Key] = set()  # keys whose pending retry is a slow one
        self.background_limit, self.patience = background_limit, patience
        self._waited = waited or (lambda key, seconds: None)  # how long each key sat in the queue
        self._since: dict[Key, float] = {}
        self._urgent: dict[Key, None] = {}  # insertion-ordered sets
        self._background: dict[Key, None] = {}
        self._low: dict[Key, None] = {}
        self._processing: set[Key] = set()
        self._processing_background: set[Key] = set()
        # Added while processing -> the most urgent level it was added at (URGENT, BACKGROUND, LOW).
        self._again: dict[Key, int] = {}
        self._timers: dict[Key, tuple[float, asyncio.TimerHandle]] = {}
        self._waiters: deque[asyncio.Future[None]] = deque()
        self._patience: asyncio.TimerHandle | None = None
        self._shut = False

    def __len__(self) -> int:
        return len(self._urgent) + len(self._background) + len(self._low)

    @property
    def held_count(self) -> int:
        """Keys waiting for a slow retry: resources the user must fix."""
        return len(self._held)

    def add(self, key: Key, *, background: bool = False, low: bool = False) -> None:
        """Queues `key`: urgent, else `background`, else (`low`) behind every background key too."""
        if self._shut:
            return
        level = LOW if low else BACKGROUND if background else URGENT
        if key in self._processing:
            self._again[key] = min(self._again.get(key, LOW), level)
            return
        if (
            key in self._urgent
            or (level > URGENT and key in self._background)
            or (level == LOW and key in self._low)
        ):
            return
        self._low.pop(key, None)
        if level == URGENT:
            self._background.pop(key, None)
            self._urgent[key] = None
        else:
            (self._background if level == BACKGROUND else self._low)[key] = None
        self._since.setdefault(key, time.monotonic())
        self._wake_one()

    def add_after(self, key: Key, delay: float) -> None:
        """Adds `key` in `delay` seconds (as urgent), unless an earlier add of it is already scheduled."""
        if self._shut:
            return
        loop = asyncio.get_running_loop()
        due = loop.time() + delay
        scheduled = self._timers.get(key)
        if scheduled is not None:
            if scheduled[0] <= due:
                return
            scheduled[1].cancel()
        self._timers[key] = (due, loop.call_at(due, self._due, key))

    def _due(self, key: Key) -> None:
        self._timers.pop(key, None)
        self._held.discard(key)
        self.add(key)

    def retry(self, key: Key, *, slow: bool = False) -> float:
        """Schedules `key` again after its next backoff (the slow one: the user must change something); returns
        that delay. A slow retry holds the key: passes before it are the caller's to skip (held())."""
        if slow:
            delay = self.slow_backoff.next(key)
            self._cancel(key)  # a slow retry replaces an earlier one, whenever it was due
            self._held.add(key)
        else:
            delay = self.backoff.next(key)
        self.add_after(key, delay)
        return delay

    def held(self, key: Key) -> bool:
        """True while a slow retry of `key` is pending."""
        return key in self._held

    def release(self, key: Key) -> None:
        """Something the key's pass depends on changed: its slow retry is moot, and the backoff starts over."""
        if key in self._held:
            self._cancel(key)
        self.slow_backoff.forget(key)

    def _cancel(self, key: Key) -> None:
        self._held.discard(key)
        scheduled = self._timers.pop(key, None)
        if scheduled is not None:
            scheduled[1].cancel()

    def forget(self, key: Key) -> None:
        """The key's pass succeeded: its next failure starts the backoff over."""
        self.backoff.forget(key)
        self.slow_backoff.forget(key)
        self._held.discard(key)

    async def get(self) -> Key:
        loop = asyncio.get_running_loop()
        while True:
            if self._shut:
                raise ShutDown
            if self._urgent:
                key = next(iter(self._urgent))
                del self._urgent[key]
                return self._take(key)
            wait = self._background_wait()
            if wait == 0:
                waiting = self._background or self._low
                key = next(iter(waiting))
                del waiting[key]
                self._processing_background.add(key)
                return self._take(key)
            if wait is not None and self._patience is None:
                self._patience = loop.call_later(wait, self._out_of_patience)
            waiter = loop.create_future()
            self._waiters.append(waiter)
            try:
                await waiter
            finally:
                if not waiter.done():
                    waiter.cancel()

    def _wake_one(self) -> None:
        """One waiting worker, not all of them: every wakeup costs a look at the queue."""
        while self._waiters:
            waiter = self._waiters.popleft()
            if not waiter.done():
                waiter.set_result(None)
                return

    def _out_of_patience(self) -> None:
        self._patience = None
        self._wake_one()

    def _background_wait(self) -> float | None:
        """0 if a background (or low) key may run now, else how long until the oldest one may anyway (None: never
        without another event)."""
        waiting = self._background or self._low
        if not waiting or len(self._processing_background) >= self.background_limit:
            return None
        if not self._processing - self._processing_background:
            return 0  # no urgent pass running
        oldest = min(
            self._since.get(next(iter(w)), time.monotonic()) for w in (self._background, self._low) if w
        )
        return max(0.0, self.patience - (time.monotonic() - oldest))

    def _take(self, key: Key) -> Key:
        self._processing.add(key)
        if self._urgent or self._background_wait() == 0:
            self._wake_one()  # more to do: pass the wakeup on
        self._waited(key, time.monotonic() - self._since.pop(key, time.monotonic()))
        return key

    def done(self, key: Key) -> None:
        self._processing.discard(key)
        self._processing_background.discard(key)
        if key in self._again:
            level = self._again.pop(key)
            self.add(key, background=level == BACKGROUND, low=level == LOW)
        elif self._urgent or self._background_wait() == 0:
            self._wake_one()  # a waiting background key may run now

    def shutdown(self) -> None:
        self._shut = True
        for _, timer in self._timers.values():
            timer.cancel()
        self._timers.clear()
        self._held.clear()
        if self._patience is not None:
            self._patience.cancel()
        while self._waiters:
            self._wake_one()

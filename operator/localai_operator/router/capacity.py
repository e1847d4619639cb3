"""What the pool can take and what was asked of it: the queue of requests waiting for a slot or a pod, and
the demand the operator's autoscaler reads (requests in flight wherever they were served, their count, and
the integral of in-flight over time, so a burst between two scrapes is seen in full).
"""

from __future__ import annotations

import asyncio
import hashlib
from collections import deque
from typing import Final


class Demand:
    """Inference requests meant for the pool, wherever they end up (local, the cloud, waiting). No clock of
    its own: every update takes `now` (monotonic seconds)."""

    __slots__ = ("_seconds", "_stamp", "in_flight", "requests")

    def __init__(self, now: float) -> None:
        self.in_flight = 0
        self.requests = 0
        self._seconds = 0.0
        self._stamp = now

    def _advance(self, now: float) -> None:
        if now > self._stamp:
            self._seconds += self.in_flight * (now - self._stamp)
            self._stamp = now

    def begin(self, now: float) -> None:
        self._advance(now)
        self.in_flight += 1
        self.requests += 1

    def end(self, now: float) -> None:
        self._advance(now)
        self.in_flight -= 1

    def seconds(self, now: float) -> float:
        """Request-seconds so far: its increase over an interval divided by the interval's length is the
        average number of requests in flight during it."""
        self._advance(now)
        return self._seconds


class Waiters:
    """Requests waiting for room, woken first come, first served. A woken request that finds no room after
    all (another took it) waits again at the front."""

    __slots__ = ("_queue",)

    def __init__(self) -> None:
        self._queue: deque[asyncio.Future[None]] = deque()

    def __len__(self) -> int:
        return sum(1 for waiter in self._queue if not waiter.done())

    async def wait(self, timeout: float, *, front: bool = False) -> bool:
        """Until woken (True) or `timeout` seconds pass (False)."""
        if timeout <= 0:
            return False
        waiter = asyncio.get_running_loop().create_future()
        if front:
            self._queue.appendleft(waiter)
        else:
            self._queue.append(waiter)
        woken = False
        try:
            async with asyncio.timeout(timeout):
                await waiter
            woken = True
            return True
        except TimeoutError:
            return False
        finally:
            if not woken and waiter.done() and not waiter.cancelled():
                self.wake_one()  # woken as the wait ended (timeout, client gone): the next one goes instead
            waiter.cancel()
            if waiter in self._queue:
                self._queue.remove(waiter)

    def wake_one(self) -> None:
        """Room for one more: the longest waiter tries again."""
        while self._queue:
            waiter = self._queue.popleft()
            if not waiter.done():
                waiter.set_result(None)
                return

    def wake_all(self) -> None:
        """The pods changed: every waiter looks again."""
        while self._queue:
            waiter = self._queue.popleft()
            if not waiter.done():
                waiter.set_result(None)


# A client chooses the model name (up to a whole body's size): a queue is keyed by at most this much of it.
MAX_MODEL_KEY: Final = 256


def model_key(model: str | None) -> str | None:
    """A bounded key for a client-chosen model name: itself when short, else a digest of it."""
    if model is None or len(model) <= MAX_MODEL_KEY:
        return model
    return "sha256:" + hashlib.sha256(model.encode("utf-8", "surrogatepass")).hexdigest()


class Queues:
    """One queue of waiters per model (a freed slot of one model is no use to a request for another), shared
    by every config snapshot of a router. A queue exists only while someone waits in it, keyed by a bounded
    name, so client-chosen model names cannot pile up."""

    __slots__ = ("_by_model",)

    def __init__(self) -> None:
        self._by_model: dict[str | None, Waiters] = {}

    def __len__(self) -> int:
        """Models with a queue now."""
        return len(self._by_model)

    async def wait(self, model: str | None, timeout: float, *, front: bool = False) -> bool:
        """Wait in `model`'s queue until woken (True) or `timeout` seconds pass (False)."""
        key = model_key(model)
        found = self._by_model.get(key)
        if found is None:
            found = self._by_model[key] = Waiters()
        try:
            return await found.wait(timeout, front=front)
        finally:
            if not found._queue and self._by_model.get(key) is found:
                del self._by_model[key]

    def waiting(self, model: str | None) -> int:
        found = self._by_model.get(model_key(model))
        return len(found) if found is not None else 0

    def freed(self, model: str | None) -> None:
        """A slot of `model` was given back."""
        if not self._by_model:
            return
        found = self._by_model.get(model_key(model))
        if found is not None:
            found.wake_one()

    def wake_all(self) -> None:
        for waiters in list(self._by_model.values()):
            waiters.wake_all()

"""Kopf's start-up gate after startgate.make_linear(): it still opens for every waiting worker, in linear work."""

from __future__ import annotations

import asyncio

from kopf._cogs.aiokits.aiotoggles import Toggle, ToggleSet

from localai_operator.control import startgate


async def gate_with_waiters(n: int) -> tuple[int, bool]:
    """n workers, as at a start over n listed objects: the watcher adds a toggle per object, each object's worker
    drops its own once indexed and waits for the whole set. Returns how often the set's state was evaluated, and
    whether every worker got through."""
    gate = ToggleSet(all)
    evaluations = 0
    is_on = gate.is_on

    def counted() -> bool:
        nonlocal evaluations
        evaluations += 1
        return is_on()

    gate.is_on = counted  # type: ignore[method-assign]
    blocker = await gate.make_toggle(name="listing")

    async def worker(toggle: Toggle) -> None:
        await gate.drop_toggle(toggle)
        await gate.wait_for(True)

    workers = []
    for _ in range(n):  # the watcher hands objects out one by one, yielding to the workers in between
        workers.append(asyncio.ensure_future(worker(await gate.make_toggle())))
        await asyncio.sleep(0)
    await asyncio.sleep(0.05)
    await gate.drop_toggle(blocker)
    done, _ = await asyncio.wait(workers, timeout=5)
    return evaluations, len(done) == n


async def test_the_gate_opens_for_every_waiting_worker() -> None:
    assert startgate.make_linear()
    _, everyone = await gate_with_waiters(500)
    assert everyone


async def test_the_gate_costs_linear_work_in_the_number_of_objects() -> None:
    assert startgate.make_linear()
    small, _ = await gate_with_waiters(200)
    large, _ = await gate_with_waiters(2000)
    assert large < 15 * small  # quadratic would be ~100x

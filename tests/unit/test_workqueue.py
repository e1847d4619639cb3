"""The work queue: one entry per key, one pass in flight per key, urgent before background, capped backoff."""

from __future__ import annotations

import asyncio

import pytest

from localai_operator.control import status as st
from localai_operator.control.queue import SLOW_BASE, SLOW_CAP, Backoff, Key, ShutDown, WorkQueue

A, B, C = Key("InferencePool", "ns", "a"), Key("InferencePool", "ns", "b"), Key("LLMModel", "ns", "c")


async def drain(queue: WorkQueue) -> list[Key]:
    out = []
    while len(queue):
        key = await queue.get()
        queue.done(key)
        out.append(key)
    return out


async def test_a_key_added_many_times_is_queued_once() -> None:
    queue = WorkQueue()
    for _ in range(5):
        queue.add(A)
    queue.add(B)
    assert await drain(queue) == [A, B]


async def test_urgent_keys_go_before_background_ones() -> None:
    queue = WorkQueue()
    queue.add(C, background=True)
    queue.add(A)
    queue.add(B, background=True)
    assert await drain(queue) == [A, C, B]


async def test_an_urgent_add_promotes_a_background_key() -> None:
    queue = WorkQueue()
    queue.add(C, background=True)
    queue.add(A, background=True)
    queue.add(A)
    assert await drain(queue) == [A, C]


async def test_low_keys_go_behind_background_ones_and_an_earlier_level_promotes_them() -> None:
    queue = WorkQueue()
    queue.add(C, low=True)
    queue.add(B, low=True)
    queue.add(A, background=True)
    queue.add(B, background=True)  # promoted from low
    queue.add(A, low=True)  # stays background
    assert await drain(queue) == [A, B, C]


async def test_a_key_added_while_in_flight_comes_back_at_the_most_urgent_level_it_was_added_at() -> None:
    queue = WorkQueue()
    queue.add(C, low=True)
    first = await queue.get()
    queue.add(C, low=True)
    queue.add(C, background=True)
    queue.add(A, low=True)
    queue.done(first)
    assert await drain(queue) == [C, A]


async def test_background_keys_leave_workers_free_for_urgent_ones() -> None:
    queue = WorkQueue(background_limit=1)
    queue.add(B, background=True)
    queue.add(C, background=True)
    first = await queue.get()
    waiting = asyncio.ensure_future(queue.get())
    await asyncio.sleep(0)
    assert not waiting.done()  # the second background key waits for the first to be done
    queue.add(A)
    urgent = await asyncio.wait_for(waiting, timeout=1)
    assert urgent == A
    queue.done(first)
    queue.done(urgent)
    assert await asyncio.wait_for(queue.get(), timeout=1) == C


async def test_background_keys_yield_to_urgent_passes_until_their_patience_runs_out() -> None:
    queue = WorkQueue(patience=0.2)
    queue.add(A)
    urgent = await queue.get()
    queue.add(C, background=True)
    started = asyncio.get_running_loop().time()
    assert await asyncio.wait_for(queue.get(), timeout=2) == C  # while A's pass still runs
    assert asyncio.get_running_loop().time() - started >= 0.15
    queue.done(urgent)


async def test_a_key_in_flight_is_not_handed_out_again_until_done_and_then_comes_back_once() -> None:
    queue = WorkQueue()
    queue.add(A)
    first = await queue.get()
    queue.add(A)
    queue.add(A)
    assert len(queue) == 0  # not a second worker's business while the first pass runs
    queue.done(first)
    assert await drain(queue) == [A]


async def test_a_retried_key_comes_back_after_its_backoff() -> None:
    queue = WorkQueue(Backoff(base=0.05, jitter=0))
    assert queue.retry(A) == pytest.approx(0.05)
    assert len(queue) == 0
    key = await asyncio.wait_for(queue.get(), timeout=1)
    assert key == A


async def test_an_earlier_scheduled_add_wins_over_a_later_one() -> None:
    queue = WorkQueue()
    queue.add_after(A, 0.02)
    queue.add_after(A, 30)
    assert await asyncio.wait_for(queue.get(), timeout=1) == A


def test_backoff_doubles_up_to_its_cap_and_starts_over_when_forgotten() -> None:
    backoff = Backoff(base=0.5, cap=5.0, jitter=0)
    assert [backoff.next(A) for _ in range(6)] == [0.5, 1.0, 2.0, 4.0, 5.0, 5.0]
    assert backoff.next(B) == 0.5  # per key
    backoff.forget(A)
    assert backoff.next(A) == 0.5


def test_backoff_jitter_stays_within_its_bounds() -> None:
    low, high = Backoff(base=1, jitter=0.2, rng=lambda: 0.0), Backoff(base=1, jitter=0.2, rng=lambda: 1.0)
    assert (low.next(A), high.next(A)) == (pytest.approx(0.8), pytest.approx(1.2))


async def test_shutdown_wakes_waiting_workers() -> None:
    queue = WorkQueue()
    waiting = asyncio.ensure_future(queue.get())
    await asyncio.sleep(0)
    queue.shutdown()
    with pytest.raises(ShutDown):
        await asyncio.wait_for(waiting, timeout=1)


async def test_waiting_workers_all_get_work_when_a_batch_arrives() -> None:
    queue = WorkQueue(background_limit=4)
    workers = [asyncio.ensure_future(queue.get()) for _ in range(3)]
    await asyncio.sleep(0)
    for key in (A, B, C):
        queue.add(key, background=True)
    done, _ = await asyncio.wait(workers, timeout=1)
    assert {task.result() for task in done} == {A, B, C}


def test_a_refusal_backs_off_to_minutes_as_client_go_does() -> None:
    queue = WorkQueue(slow_backoff=Backoff(SLOW_BASE, SLOW_CAP, jitter=0))
    delays = [queue.slow_backoff.next(A) for _ in range(10)]
    assert delays[:3] == [2.0, 4.0, 8.0]
    assert delays[-1] == SLOW_CAP == st.SLOW_RETRY_CAP_SECONDS == 300.0
    assert sum(delays[:7]) < 300, "minutes apart within a few minutes of the first refusal"


async def test_a_slow_retry_holds_the_key_until_due_and_a_release_starts_it_over() -> None:
    queue = WorkQueue(slow_backoff=Backoff(base=0.05, cap=60, jitter=0))
    queue.retry(A, slow=True)
    assert queue.held(A) and queue.held_count == 1
    assert await asyncio.wait_for(queue.get(), timeout=1) == A  # due: no longer held
    assert not queue.held(A)
    queue.done(A)
    assert queue.retry(A, slow=True) == pytest.approx(0.1)
    queue.release(A)  # the inputs changed
    assert not queue.held(A)
    assert queue.retry(A, slow=True) == pytest.approx(0.05)
    queue.forget(A)
    assert not queue.held(A)

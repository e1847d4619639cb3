"""The pure parts of elastic pools in the router: the demand integral, the waiters' order, the spend ledger's
periods, shares and state file, endpoint choice with slots, and what the config accepts."""

from __future__ import annotations

import asyncio
import json
from datetime import UTC, datetime
from pathlib import Path

import pytest
import yaml

from localai_operator import wire as rc
from localai_operator.router.capacity import Demand, Waiters
from localai_operator.router.ledger import Ledger
from localai_operator.router.policy import FULL, NO_CHOICE, Breaker, choose
from localai_operator.router.upstream import Endpoint
from localai_operator.wire import SPEND, period_of


def test_demand_seconds_integrate_requests_in_flight_over_time() -> None:
    demand = Demand(now=0.0)
    demand.begin(1.0)
    demand.begin(2.0)
    demand.end(4.0)  # one from 1 to 4, the other from 2 on
    assert (demand.requests, demand.in_flight) == (2, 1)
    assert demand.seconds(6.0) == pytest.approx(3.0 + 4.0)


async def test_waiters_are_woken_in_arrival_order() -> None:
    waiters = Waiters()
    woken: list[int] = []

    async def wait(index: int) -> None:
        assert await waiters.wait(10)
        woken.append(index)

    tasks = [asyncio.ensure_future(wait(i)) for i in range(3)]
    await asyncio.sleep(0)  # all three are queued: one loop turn, not a wait for time
    for _ in range(3):
        waiters.wake_one()
        await asyncio.sleep(0)
    await asyncio.gather(*tasks)
    assert woken == [0, 1, 2]


async def test_a_waiter_whose_wait_ends_as_it_is_woken_passes_the_wake_on() -> None:
    waiters = Waiters()
    first = asyncio.ensure_future(waiters.wait(10))
    second = asyncio.ensure_future(waiters.wait(10))
    await asyncio.sleep(0)
    waiters.wake_one()  # meant for the first, which leaves before it runs
    first.cancel()
    assert await asyncio.wait_for(second, 5) is True


async def test_a_wait_that_times_out_says_so() -> None:
    assert await Waiters().wait(0.05) is False


def test_periods_are_utc_days_and_months() -> None:
    moment = datetime(2026, 12, 31, 23, 30, tzinfo=UTC).timestamp()
    assert (period_of("daily", moment), period_of("monthly", moment)) == ("2026-12-31", "2026-12")


def test_the_ledger_drops_periods_that_ended() -> None:
    now = [datetime(2026, 11, 30, 23, 0, tzinfo=UTC).timestamp()]
    ledger = Ledger(None, wall=lambda: now[0])
    ledger.add(SPEND, 2.0)
    now[0] += 7200  # 2026-12-01 01:00
    ledger.add(SPEND, 1.0)
    assert ledger.figures() == [("spend", "2026-12", 1.0), ("spend", "2026-12-01", 1.0)]


@pytest.mark.parametrize(
    ("spent", "replicas", "carried", "exhausted"),
    [
        (9.99, 1, 0.0, False),
        (10.0, 1, 0.0, True),
        (4.0, 2, 2.0, True),  # (10 - 2) / 2 = 4
        (3.99, 2, 2.0, False),
        (0.0, 3, 12.0, True),  # earlier pods spent it all
    ],
)
def test_a_replica_may_spend_its_share_of_what_earlier_pods_left(
    spent: float, replicas: int, carried: float, exhausted: bool
) -> None:
    now = datetime(2026, 12, 5, tzinfo=UTC).timestamp()
    ledger = Ledger(None, wall=lambda: now)
    ledger.add(SPEND, spent)
    share = rc.SpendShare(replicas=replicas, carried=rc.Carried(period="2026-12", amount=carried))
    assert ledger.exhausted(rc.SpendCap(amount=10.0, period="monthly"), share) is exhausted


def test_the_ledger_resumes_from_its_state_file(tmp_path: Path) -> None:
    now = datetime(2026, 12, 5, tzinfo=UTC).timestamp()
    Ledger(tmp_path, wall=lambda: now).add(SPEND, 2.5)
    assert Ledger(tmp_path, wall=lambda: now).amount(SPEND, "2026-12") == 2.5


def test_an_unreadable_state_file_starts_from_zero(tmp_path: Path) -> None:
    (tmp_path / "ledger.json").write_text("{not json")
    assert Ledger(tmp_path).figures() == []


def test_the_state_file_holds_only_the_current_periods(tmp_path: Path) -> None:
    now = datetime(2026, 12, 5, tzinfo=UTC).timestamp()
    (tmp_path / "ledger.json").write_text(
        json.dumps({"amounts": [{"kind": "spend", "period": "2026-11", "amount": 99.0}]})
    )
    ledger = Ledger(tmp_path, wall=lambda: now)
    assert ledger.amount(SPEND, "2026-11") == 0.0


def _endpoints(*loads: int) -> list[Endpoint]:
    out = []
    for index, load in enumerate(loads):
        endpoint = Endpoint(f"http://10.0.0.{index}:8080/v1", Breaker(5, 30))
        for _ in range(load):
            endpoint.take("m")
        out.append(endpoint)
    return out


def test_choice_skips_pods_without_a_free_slot() -> None:
    endpoints = _endpoints(2, 1, 0)
    assert choose(endpoints, 0.0, 0, has_room=lambda e: e.by_model.get("m", 0) < 1) == 2


def test_choice_says_full_when_every_available_pod_is_busy() -> None:
    endpoints = _endpoints(2, 2)
    assert choose(endpoints, 0.0, 0, has_room=lambda e: e.by_model.get("m", 0) < 2) == FULL


def test_choice_says_no_choice_when_every_breaker_is_open() -> None:
    endpoints = _endpoints(0)
    endpoints[0].breaker.failure(0.0, probe=True)
    assert choose(endpoints, 0.0, 0, has_room=lambda e: True) == NO_CHOICE


def load(data: dict[str, object]) -> rc.RouterConfig:
    return rc.RouterConfig.from_yaml(yaml.safe_dump(data))


def test_a_pool_without_discovery_is_refused() -> None:
    with pytest.raises(ValueError, match=r"local\.pool needs local\.discovery"):
        load({"local": {"endpoints": ["http://a/v1"], "pool": "p"}})


def test_a_model_with_no_slot_is_refused() -> None:
    with pytest.raises(ValueError, match="at least one slot"):
        load({"local": {"endpoints": ["http://a/v1"], "slots": {"m": 0}}})


def test_output_price_falls_back_to_price_per_million_tokens() -> None:
    assert rc.Fallback(price_per_million_tokens=0.42).output_price == 0.42
    assert rc.Fallback(price_per_million_tokens=0.42, output_price_per_million_tokens=1.1).output_price == 1.1
    assert rc.Fallback(input_price_per_million_tokens=0.2).cost(1_000_000, 0) == pytest.approx(0.2)

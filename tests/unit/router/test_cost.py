"""Cost the user can see and cap: input and output tokens priced apart (pricePerMillionTokens alone is the output
price), the avoided cost of local answers at the same prices, and a daily or monthly spend cap after which the
route is local-only (budget_exhausted), kept across router restarts and shared between replicas."""

from __future__ import annotations

import re
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from localai_operator.testing.standins import OpenAIStandIn, refused_url
from localai_operator.wire import period_of
from tests.unit.router.conftest import (
    SDK_IDS,
    SDK_MODES,
    StartRouter,
    post,
    route_config,
    scrape,
    sdk_chat,
)

# Every stand-in answer uses 7 prompt and 3 completion tokens.
PROMPT, COMPLETION = 7, 3


def value(text: str, series: str) -> float:
    match = re.search(rf"^{re.escape(series)} (\S+)$", text, re.MULTILINE)
    assert match is not None, f"{series} is not exported"
    return float(match.group(1))


def priced(local: str | list[str], cloud: str, **fallback: Any) -> dict[str, Any]:
    config = route_config(local, cloud)
    config["fallback"].pop("pricePerMillionTokens")
    config["fallback"].update(fallback)
    return config


# Each fallback answer costs (7 * 0 + 3 * 500,000) / 1e6 = 1.5.
PER_ANSWER = {"inputPricePerMillionTokens": 0.0, "outputPricePerMillionTokens": 500_000.0}


def capped(
    cloud: str, amount: float, period: str = "daily", local: str | None = None, **extra: Any
) -> dict[str, Any]:
    return priced(
        local or refused_url(), cloud, spendCap={"amount": amount, "period": period}, **PER_ANSWER, **extra
    )


async def test_fallback_spend_prices_input_and_output_tokens_apart(
    cloud: OpenAIStandIn, start_router: StartRouter, client: aiohttp.ClientSession
) -> None:
    router = await start_router(
        priced(refused_url(), cloud.url, inputPricePerMillionTokens=2.0, outputPricePerMillionTokens=10.0)
    )
    assert (await post(client, router)).served_by == "fallback"
    spend = value(await scrape(client, router), "localai_router_fallback_estimated_cost_total")
    assert spend == pytest.approx((PROMPT * 2.0 + COMPLETION * 10.0) / 1e6)


async def test_price_per_million_tokens_alone_is_the_output_price(
    cloud: OpenAIStandIn, start_router: StartRouter, client: aiohttp.ClientSession
) -> None:
    router = await start_router(priced(refused_url(), cloud.url, pricePerMillionTokens=0.42))
    await post(client, router)
    spend = value(await scrape(client, router), "localai_router_fallback_estimated_cost_total")
    assert spend == pytest.approx(COMPLETION * 0.42 / 1e6)


@pytest.mark.parametrize(("kind", "stream"), SDK_MODES, ids=SDK_IDS)
async def test_local_answers_count_as_avoided_cost_at_the_cloud_prices(
    kind: str,
    stream: bool,
    local: OpenAIStandIn,
    cloud: OpenAIStandIn,
    start_router: StartRouter,
    client: aiohttp.ClientSession,
) -> None:
    router = await start_router(
        priced(local.url, cloud.url, inputPricePerMillionTokens=1.0, outputPricePerMillionTokens=4.0)
    )
    options = {"stream_options": {"include_usage": True}} if stream else {}
    reply = await sdk_chat(router, sync=kind == "sync", stream=stream, **options)
    assert reply.served_by == "local"
    text = await scrape(client, router)
    assert value(text, "localai_router_avoided_cost_total") == pytest.approx(
        (PROMPT + COMPLETION * 4.0) / 1e6
    )
    assert not re.search(r"^localai_router_fallback_estimated_cost_total ", text, re.MULTILINE)


async def test_the_spend_cap_stops_fallbacks_at_the_configured_figure(
    cloud: OpenAIStandIn, start_router: StartRouter, client: aiohttp.ClientSession
) -> None:
    router = await start_router(capped(cloud.url, 3.0))
    answers = [await post(client, router) for _ in range(4)]
    assert [a.served_by for a in answers] == ["fallback", "fallback", "router", "router"]
    assert cloud.counters.started == 2, "spent 2 * 1.5 = 3.0: the cap"
    refused = answers[2]
    assert refused.status == 503
    error = refused.json()["error"]
    assert error["code"] == "budget_exhausted"
    assert "daily fallback spend cap of 3" in error["message"]
    text = await scrape(client, router)
    day = period_of("daily", datetime.now(UTC).timestamp())
    assert value(text, f'localai_router_period_cost{{kind="spend",period="{day}"}}') == pytest.approx(3.0)
    assert value(text, "localai_router_fallback_budget_exhausted") == 1
    assert value(text, 'localai_router_fallbacks_blocked_total{reason="budget_exhausted"}') == 2


async def test_a_route_over_its_cap_is_local_only(
    local: OpenAIStandIn, cloud: OpenAIStandIn, start_router: StartRouter, client: aiohttp.ClientSession
) -> None:
    config = capped(cloud.url, 1.0, local=local.url)
    config["policy"]["firstTokenTimeoutMs"] = 300
    router = await start_router(config)
    local.set(status=500)
    assert (await post(client, router)).served_by == "fallback"  # 1.5: over the cap of 1.0
    local.set(delay_before_first_chunk=1.0)  # past the first-token budget: no longer a reason to leave
    answer = await post(client, router)
    assert answer.served_by == "local"
    assert cloud.counters.started == 1


async def test_the_spend_resumes_from_the_state_file_after_a_router_restart(
    cloud: OpenAIStandIn, start_router: StartRouter, client: aiohttp.ClientSession, tmp_path: Path
) -> None:
    config = capped(cloud.url, 3.0, period="monthly")
    config["server"] = {"stateDirectory": str(tmp_path)}
    first = await start_router(config)
    await post(client, first)
    await post(client, first)
    restarted = await start_router(config)
    answer = await post(client, restarted)
    assert (answer.status, answer.json()["error"]["code"]) == (503, "budget_exhausted")
    assert cloud.counters.started == 2


async def test_a_new_period_starts_the_spend_again(
    cloud: OpenAIStandIn, start_router: StartRouter, client: aiohttp.ClientSession
) -> None:
    now = [datetime(2026, 12, 1, 23, 59, 50, tzinfo=UTC).timestamp()]
    router = await start_router(capped(cloud.url, 1.5), wall=lambda: now[0])
    assert (await post(client, router)).served_by == "fallback"
    assert (await post(client, router)).served_by == "router"
    now[0] += 20  # past midnight UTC: a new day
    assert (await post(client, router)).served_by == "fallback"
    text = await scrape(client, router)
    assert value(text, 'localai_router_period_cost{kind="spend",period="2026-12-02"}') == pytest.approx(1.5)
    assert value(text, 'localai_router_period_cost{kind="spend",period="2026-12"}') == pytest.approx(3.0)


async def test_each_replica_spends_its_share_of_what_earlier_pods_left(
    cloud: OpenAIStandIn, start_router: StartRouter, client: aiohttp.ClientSession
) -> None:
    month = period_of("monthly", datetime.now(UTC).timestamp())
    share = {"replicas": 2, "carried": {"period": month, "amount": 1.0}}
    # (4.0 - 1.0 carried) / 2 replicas = 1.5 for this one: a single answer.
    router = await start_router(capped(cloud.url, 4.0, period="monthly", spendShare=share))
    assert [(await post(client, router)).served_by for _ in range(2)] == ["fallback", "router"]


async def test_an_amount_carried_from_another_period_is_ignored(
    cloud: OpenAIStandIn, start_router: StartRouter, client: aiohttp.ClientSession
) -> None:
    share = {"replicas": 1, "carried": {"period": "2001-01", "amount": 100.0}}
    router = await start_router(capped(cloud.url, 3.0, period="monthly", spendShare=share))
    assert (await post(client, router)).served_by == "fallback"


async def test_a_sensitive_route_never_reaches_the_cloud_whatever_its_budget(
    start_router: StartRouter, client: aiohttp.ClientSession
) -> None:
    router = await start_router(route_config(refused_url(), sensitive=True))
    text = await scrape(client, router)
    assert value(text, "localai_router_fallback_budget_exhausted") == 0
    assert (await post(client, router)).status == 503

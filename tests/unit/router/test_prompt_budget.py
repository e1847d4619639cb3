"""A first-token budget that knows the prompt: the router learns each pod's prefill rate from the first tokens it
sees and gives a long prompt the time it needs, up to maxFirstTokenTimeoutMs, while a pod that stalls on a short
prompt still falls back at the base budget. The pod is a stand-in whose first token waits for its prompt as
llama.cpp's does (testing/prefill.py), cache tiers included; the client is the real OpenAI SDK."""

from __future__ import annotations

import random
from collections.abc import AsyncIterator

import aiohttp
import pytest

from localai_operator.router.prefill import HIT_FACTOR, MIN_SAMPLES, PrefillRates
from localai_operator.testing.prefill import PromptCache
from localai_operator.testing.standins import OpenAIStandIn, local_standin
from tests.unit.router.conftest import (
    LOCAL_MODEL,
    Reply,
    RunningRouter,
    StartRouter,
    route_config,
    scrape,
    sdk_chat,
)

BASE_MS = 600
# The stand-in reads 1,000 prompt tokens per second: a 300-token prompt answers within the base budget, a
# 1,500-token one does not.
RATE = 1000.0
SHORT, LONG = 300, 1500


def text(tokens: int, seed: int) -> str:
    """ASCII prose of about `tokens` tokens (4 characters each), different for each seed."""
    rng = random.Random(seed)
    words = ["alpha", "bravo", "delta", "kilo", "lima", "oscar", "sierra", "tango", "zulu"]
    out: list[str] = []
    size = 0
    while size < tokens * 4:
        word = rng.choice(words)
        out.append(word)
        size += len(word) + 1
    return " ".join(out)


@pytest.fixture
async def pod() -> AsyncIterator[OpenAIStandIn]:
    standin = local_standin(prompt_cache=PromptCache(slots=4, tokens_per_second=RATE))
    await standin.start()
    yield standin
    await standin.stop()


async def ask(router: RunningRouter, tokens: int, seed: int, stream: bool = True) -> Reply:
    return await sdk_chat(
        router,
        sync=False,
        stream=stream,
        messages=[{"role": "system", "content": text(tokens, seed)}, {"role": "user", "content": "go"}],
    )


async def learn(router: RunningRouter, first_seed: int = 100) -> None:
    for seed in range(first_seed, first_seed + MIN_SAMPLES):
        reply = await ask(router, SHORT, seed, stream=seed % 2 == 0)
        assert reply.served_by == "local", "a short prompt answers within the base budget"


async def test_a_long_prompt_falls_back_until_the_pods_prefill_rate_is_learned_then_stays_local(
    pod: OpenAIStandIn, cloud: OpenAIStandIn, start_router: StartRouter
) -> None:
    router = await start_router(route_config(pod.url, cloud.url, firstTokenTimeoutMs=BASE_MS))
    before = await ask(router, LONG, 1)
    assert (before.served_by, before.fallback_reason) == ("fallback", "first_token_timeout")
    await learn(router)
    after = await ask(router, LONG, 2)
    assert (after.served_by, after.fallback_reason) == ("local", None)
    assert after.elapsed > LONG / RATE, "the prompt was read cold, not from the cache"


async def test_a_non_stream_long_prompt_stays_local_once_the_rate_is_learned(
    pod: OpenAIStandIn, cloud: OpenAIStandIn, start_router: StartRouter
) -> None:
    router = await start_router(route_config(pod.url, cloud.url, firstTokenTimeoutMs=BASE_MS))
    await learn(router)
    assert (await ask(router, LONG, 2, stream=False)).served_by == "local"


async def test_a_pod_that_stalls_on_a_short_prompt_falls_back_at_the_base_budget(
    pod: OpenAIStandIn, cloud: OpenAIStandIn, start_router: StartRouter
) -> None:
    router = await start_router(route_config(pod.url, cloud.url, firstTokenTimeoutMs=BASE_MS))
    await learn(router)
    pod.set(hang=True)
    stalled = await sdk_chat(router, sync=False, stream=True, messages=[{"role": "user", "content": "hi"}])
    assert (stalled.served_by, stalled.fallback_reason) == ("fallback", "first_token_timeout")
    assert stalled.elapsed < BASE_MS / 1000 + 0.35, "a short prompt's budget is the base budget"


async def test_the_budget_never_passes_max_first_token_timeout(
    pod: OpenAIStandIn, cloud: OpenAIStandIn, start_router: StartRouter
) -> None:
    cap_ms = 900
    router = await start_router(
        route_config(pod.url, cloud.url, firstTokenTimeoutMs=BASE_MS, maxFirstTokenTimeoutMs=cap_ms)
    )
    await learn(router)
    pod.set(hang=True)
    reply = await ask(router, 4 * LONG, 3)
    assert (reply.served_by, reply.fallback_reason) == ("fallback", "first_token_timeout")
    assert cap_ms / 1000 <= reply.elapsed < cap_ms / 1000 + 0.35


async def test_repeated_prompts_answered_from_the_cache_do_not_raise_the_learned_rate(
    pod: OpenAIStandIn, cloud: OpenAIStandIn, start_router: StartRouter
) -> None:
    # Without affinity the router has no key to call a request warm: the hits are told by their speed.
    router = await start_router(
        route_config(pod.url, cloud.url, firstTokenTimeoutMs=BASE_MS, affinity={"enabled": False})
    )
    await learn(router)
    assert (await ask(router, LONG, 7)).served_by == "local"  # read cold, and learned
    rates = router.router.route.rates
    cold = rates.rate(pod.url, LOCAL_MODEL)
    assert cold is not None
    for _ in range(3 * MIN_SAMPLES):
        assert (await ask(router, LONG, 7)).served_by == "local"  # resident in a slot: answered at once
    assert pod.prompt_cache is not None and pod.prompt_cache.last[2] == 0, "the repeats were cache hits"
    assert rates.rejected >= 3 * MIN_SAMPLES
    assert rates.rate(pod.url, LOCAL_MODEL) == cold
    assert (await ask(router, LONG, 4)).served_by == "local", "a cold long prompt still has the time it needs"


async def test_the_learned_rate_and_the_budgets_granted_are_in_the_metrics(
    pod: OpenAIStandIn, cloud: OpenAIStandIn, start_router: StartRouter, client: aiohttp.ClientSession
) -> None:
    router = await start_router(route_config(pod.url, cloud.url, firstTokenTimeoutMs=BASE_MS))
    await learn(router)
    await ask(router, LONG, 2)
    lines = (await scrape(client, router)).splitlines()
    rate_line = next(
        line
        for line in lines
        if line.startswith(
            f'localai_router_prefill_tokens_per_second{{endpoint="{pod.url}",model="{LOCAL_MODEL}"}}'
        )
    )
    assert 0.5 * RATE < float(rate_line.split()[-1]) < 1.1 * RATE
    assert f"localai_router_first_token_budget_seconds_count {MIN_SAMPLES + 1}" in lines
    assert 'localai_router_first_token_budget_seconds_bucket{le="1"} ' + str(MIN_SAMPLES) in lines
    async with client.get(f"{router.url}/readyz") as response:
        endpoint = (await response.json())["endpoints"][0]
    assert endpoint["prefillTokensPerSecond"][LOCAL_MODEL] == pytest.approx(
        float(rate_line.split()[-1]), 0.01
    )


def test_the_estimate_is_the_lower_quartile_of_the_cold_looking_samples() -> None:
    rates = PrefillRates()
    for seconds in (1.0, 1.1, 0.9, 1.2, 0.8, 1.3, 1.0, 1.05, 0.95):
        assert rates.learn("pod-a", "m", 1000, seconds, warm=False)
    ordered = sorted(1000 / s for s in (1.0, 1.1, 0.9, 1.2, 0.8, 1.3, 1.0, 1.05, 0.95))
    assert rates.rate("pod-a", "m") == ordered[2]


def test_warm_fast_short_and_unlearned_samples_are_not_learned() -> None:
    rates = PrefillRates()
    assert rates.rate("pod-a", "m") is None
    for _ in range(MIN_SAMPLES - 1):
        rates.learn("pod-a", "m", 1000, 1.0, warm=False)
    assert rates.rate("pod-a", "m") is None, "fewer than MIN_SAMPLES: the fixed budget"
    rates.learn("pod-a", "m", 1000, 1.0, warm=False)
    assert rates.rate("pod-a", "m") == 1000
    assert not rates.learn("pod-a", "m", 1000, 0.01, warm=True)
    assert not rates.learn("pod-a", "m", 1000, 1 / (HIT_FACTOR * 1000) * 0.9, warm=False)
    assert not rates.learn("pod-a", "m", 100, 0.001, warm=False), "a short prompt is the pod's fixed cost"
    assert rates.rate("pod-a", "m") == 1000


def test_a_pod_without_samples_of_its_own_gets_the_models_rate_across_pods() -> None:
    rates = PrefillRates()
    for _ in range(MIN_SAMPLES):
        rates.learn("pod-a", "m", 1000, 2.0, warm=False)
    assert rates.rate("pod-b", "m") == 500
    assert rates.rate("pod-b", "other") is None

"""Every fallback priced: streamed cloud requests ask for usage (and the client that did not ask never sees the
usage event), a provider that still reports none is priced by the estimator, an abandoned stream is counted for
what was sent, paths without token usage are priced per request or kept from the cloud on a capped route, and
concurrent requests cannot each find the cap unreached."""

from __future__ import annotations

import asyncio
import json
import re
from typing import Any

import aiohttp
import openai
import pytest

from localai_operator.router import tokens
from localai_operator.router.body import parse
from localai_operator.testing.standins import OpenAIStandIn, refused_url
from tests.unit.router.conftest import LOCAL_MODEL, StartRouter, eventually, post, scrape, sdk_chat
from tests.unit.router.test_cost import priced, value

# The stand-in's answer has 3 completion tokens: priced so that one answer costs 1.30.
ANSWER_COST = 1.30
PER_TOKEN = {"inputPricePerMillionTokens": 0.0, "outputPricePerMillionTokens": ANSWER_COST / 3 * 1e6}
SPEND = "localai_router_fallback_estimated_cost_total"
MESSAGES = [{"role": "user", "content": "hello"}]


def spend_of(text: str) -> float:
    match = re.search(rf"^{SPEND} (\S+)$", text, re.MULTILINE)
    return float(match.group(1)) if match else 0.0


async def test_concurrent_streamed_fallbacks_stop_at_a_cap_that_allows_one(
    cloud: OpenAIStandIn, start_router: StartRouter, client: aiohttp.ClientSession
) -> None:
    # An OpenAI-style provider: a stream's usage only when asked. Unasked, four streams used to spend nothing.
    cloud.set(usage="when_asked", token_interval=0.05)
    router = await start_router(priced(refused_url(), cloud.url, spendCap={"amount": 1.0}, **PER_TOKEN))

    async def one() -> Any:
        try:
            return await sdk_chat(router, sync=False, stream=True)
        except openai.APIStatusError as err:
            return err

    results = await asyncio.gather(*(one() for _ in range(4)))
    served = [r for r in results if not isinstance(r, openai.APIStatusError)]
    refused = [r for r in results if isinstance(r, openai.APIStatusError)]
    assert len(served) == 1 and served[0].served_by == "fallback"
    assert [(r.status_code, r.body["code"]) for r in refused] == [(503, "budget_exhausted")] * 3  # type: ignore[index]
    assert cloud.counters.started == 1
    asked = cloud.requests[-1].json()
    assert asked["stream_options"] == {"include_usage": True}
    # The client did not ask for usage: the trailer the router asked for is not relayed to it.
    assert all(chunk.choices for chunk in served[0].chunks) and served[0].usage is None
    text = await scrape(client, router)
    assert spend_of(text) == pytest.approx(ANSWER_COST)
    assert value(text, "localai_router_fallback_budget_exhausted") == 1


async def test_a_client_that_asks_for_usage_still_gets_the_usage_event(
    cloud: OpenAIStandIn, start_router: StartRouter
) -> None:
    cloud.set(usage="when_asked")
    router = await start_router(priced(refused_url(), cloud.url, **PER_TOKEN))
    reply = await sdk_chat(router, sync=False, stream=True, stream_options={"include_usage": True})
    assert reply.usage is not None and reply.usage.completion_tokens == 3
    assert cloud.requests[-1].json()["stream_options"] == {"include_usage": True}


@pytest.mark.parametrize("stream", [True, False], ids=["stream", "non-stream"])
async def test_a_provider_that_reports_no_usage_is_priced_by_the_estimator(
    stream: bool, cloud: OpenAIStandIn, start_router: StartRouter, client: aiohttp.ClientSession
) -> None:
    cloud.set(usage="never")
    router = await start_router(
        priced(refused_url(), cloud.url, inputPricePerMillionTokens=1e6, outputPricePerMillionTokens=1e6)
    )
    reply = await sdk_chat(router, sync=False, stream=stream, messages=MESSAGES)
    assert reply.served_by == "fallback" and reply.text == "cloud-token-0 cloud-token-1 cloud-token-2 "
    asked = parse(json.dumps({"model": LOCAL_MODEL, "messages": MESSAGES}).encode())
    expected = tokens.prompt_tokens(asked) + tokens.text_tokens(reply.text)
    assert spend_of(await scrape(client, router)) == pytest.approx(expected)


async def test_a_stream_the_client_abandons_is_counted_for_what_was_sent(
    cloud: OpenAIStandIn, start_router: StartRouter, client: aiohttp.ClientSession
) -> None:
    cloud.set(usage="when_asked", tokens=200, token_interval=0.02)
    router = await start_router(priced(refused_url(), cloud.url, outputPricePerMillionTokens=1e6))
    async with client.post(
        router.v1("/chat/completions"), json={"model": LOCAL_MODEL, "messages": MESSAGES, "stream": True}
    ) as response:
        assert response.headers["X-Served-By"] == "fallback"
        received = b""
        while received.count(b"cloud-token-") < 3:
            received += await response.content.readany()
    # The client left after a few tokens: what the cloud sent until the router noticed is counted.
    spent = await eventually(lambda: spend_of_now(client, router), 10, "the abandoned stream to be counted")
    assert 0 < spent < tokens.text_tokens("cloud-token-100 " * 200)
    await eventually(lambda: cloud.counters.cancelled == 1, 10, "the cloud request to be cancelled")


async def spend_of_now(client: aiohttp.ClientSession, router: Any) -> float:
    return spend_of(await scrape(client, router))


async def test_a_path_without_token_usage_is_priced_per_request(
    cloud: OpenAIStandIn, start_router: StartRouter, client: aiohttp.ClientSession
) -> None:
    router = await start_router(
        priced(refused_url(), cloud.url, pricePerRequest={"/audio/speech": 0.5}, spendCap={"amount": 10.0})
    )
    answer = await post(client, router, "/audio/speech", {"model": "tts-1", "input": "hi", "voice": "alloy"})
    assert (answer.status, answer.served_by) == (200, "fallback")
    assert spend_of(await scrape(client, router)) == pytest.approx(0.5)


async def test_a_capped_route_never_sends_a_path_it_cannot_price_to_the_cloud(
    cloud: OpenAIStandIn, start_router: StartRouter, client: aiohttp.ClientSession
) -> None:
    router = await start_router(priced(refused_url(), cloud.url, spendCap={"amount": 10.0}, **PER_TOKEN))
    answer = await post(client, router, "/images/generations", {"model": "dall-e", "prompt": "a cat"})
    assert (answer.status, answer.served_by) == (503, "router")
    error = answer.json()["error"]
    assert error["code"] == "unpriced" and "fallback.pricePerRequest" in error["message"]
    assert cloud.counters.started == 0
    assert (
        value(await scrape(client, router), 'localai_router_fallbacks_blocked_total{reason="unpriced"}') == 1
    )


def test_the_estimator_counts_prompts_and_text_as_documented() -> None:
    assert tokens.text_tokens("") == 0
    assert tokens.text_tokens("abcd") == 1 and tokens.text_tokens("abcde") == 2
    assert tokens.text_tokens("日本語") == 3  # one token per non-ASCII character
    chat = parse(json.dumps({"messages": [{"role": "user", "content": "abcdefgh"}]}).encode())
    assert tokens.prompt_tokens(chat) == tokens.REPLY_PRIMING_TOKENS + tokens.MESSAGE_TOKENS + 2
    image = {"type": "image_url", "image_url": {"url": "data:image/png;base64," + "A" * 100_000}}
    parts = parse(json.dumps({"messages": [{"role": "user", "content": [image]}]}).encode())
    assert (
        tokens.prompt_tokens(parts)
        == tokens.REPLY_PRIMING_TOKENS + tokens.MESSAGE_TOKENS + tokens.IMAGE_TOKENS
    )
    assert tokens.prompt_tokens(parse(b'{"prompt": [1, 2, 3]}')) == 3  # token ids count exactly
    assert tokens.prompt_tokens(parse(b'{"input": ["abcd", "abcd"]}')) == 2

"""Token figures that do not depend on LocalAI's usage: its completions report zeros and its streams report
nothing unless asked, so the router asks local streams for usage and otherwise counts the relayed text with its
estimator (router/tokens.py); tokens, avoided cost and time per output token then read the answer's real size."""

from __future__ import annotations

import json
import re

import aiohttp
import openai
import pytest

from localai_operator.router import tokens
from localai_operator.router.paths import StreamFormat
from localai_operator.testing.standins import OpenAIStandIn
from tests.unit.router.conftest import LOCAL_MODEL, RunningRouter, StartRouter, route_config, scrape

PROMPT = "Say something about the sea"
# What the route would pay per token: avoided cost is the counted tokens at these prices.
PRICES = {"inputPricePerMillionTokens": 1.0, "outputPricePerMillionTokens": 4.0}


def series(text: str, name: str, **labels: str) -> float:
    """A sample's value by its labels in any order; 0 when it is not exported."""
    total = 0.0
    for line in text.splitlines():
        match = re.match(rf"^{re.escape(name)}(?:{{(.*)}})? (\S+)$", line)
        if match is None:
            continue
        found = dict(re.findall(r'(\w+)="([^"]*)"', match.group(1) or ""))
        if all(found.get(k) == v for k, v in labels.items()):
            total += float(match.group(2))
    return total


async def _router(
    local: OpenAIStandIn, cloud: OpenAIStandIn, start_router: StartRouter
) -> tuple[openai.AsyncOpenAI, RunningRouter]:
    config = route_config(local.url, cloud.url)
    config["fallback"].pop("pricePerMillionTokens")
    config["fallback"].update(PRICES)
    router = await start_router(config)
    return openai.AsyncOpenAI(base_url=router.v1(""), api_key="sk-any", max_retries=0, timeout=60), router


@pytest.mark.parametrize("stream", [False, True], ids=["whole", "stream"])
async def test_a_local_completion_counts_the_tokens_of_the_text_it_returned(
    stream: bool,
    local: OpenAIStandIn,
    cloud: OpenAIStandIn,
    start_router: StartRouter,
    client: aiohttp.ClientSession,
) -> None:
    local.set(tokens=8, token_interval=0.005)
    sdk, router = await _router(local, cloud, start_router)
    if stream:
        received = [
            chunk
            async for chunk in await sdk.completions.create(model=LOCAL_MODEL, prompt=PROMPT, stream=True)
        ]
        returned = "".join(c.choices[0].text or "" for c in received if c.choices)
        assert all(c.usage is None for c in received), "the usage the router asked for reached the client"
    else:
        answer = await sdk.completions.create(model=LOCAL_MODEL, prompt=PROMPT)
        returned = answer.choices[0].text
    assert returned
    prompt, completion = tokens.text_tokens(PROMPT), tokens.text_tokens(returned)
    text = await scrape(client, router)
    assert series(text, "localai_router_tokens_total", upstream="local", kind="completion") == completion
    assert series(text, "localai_router_tokens_total", upstream="local", kind="prompt") == prompt
    assert (
        series(text, "localai_router_estimated_tokens_total", upstream="local", kind="completion")
        == completion
    )
    assert series(text, "localai_router_avoided_cost_total") == pytest.approx(
        (prompt * 1.0 + completion * 4.0) / 1e6
    )
    # Time per output token divides by the counted tokens, so a many-token answer is observed.
    assert series(text, "localai_router_time_per_output_token_seconds_count", upstream="local") == 1


async def test_a_local_chat_stream_reports_localai_usage_the_router_asked_for(
    local: OpenAIStandIn,
    cloud: OpenAIStandIn,
    start_router: StartRouter,
    client: aiohttp.ClientSession,
) -> None:
    sdk, router = await _router(local, cloud, start_router)
    chunks = await sdk.chat.completions.create(
        model=LOCAL_MODEL, messages=[{"role": "user", "content": PROMPT}], stream=True
    )
    received = [chunk async for chunk in chunks]
    assert all(c.usage is None for c in received), "the usage the router asked for reached the client"
    assert all(c.choices for c in received)
    pieces = sum(1 for c in received if c.choices[0].delta.content)
    text = await scrape(client, router)
    # LocalAI's own count (one per token), not an estimate.
    assert series(text, "localai_router_tokens_total", upstream="local", kind="completion") == pieces
    assert series(text, "localai_router_estimated_tokens_total") == 0
    assert series(text, "localai_router_avoided_cost_total") > 0


async def test_a_client_that_asks_for_usage_still_gets_it(
    local: OpenAIStandIn,
    cloud: OpenAIStandIn,
    start_router: StartRouter,
) -> None:
    sdk, _ = await _router(local, cloud, start_router)
    chunks = await sdk.chat.completions.create(
        model=LOCAL_MODEL,
        messages=[{"role": "user", "content": PROMPT}],
        stream=True,
        stream_options={"include_usage": True},
    )
    received = [chunk async for chunk in chunks]
    assert received[-1].usage is not None and received[-1].usage.completion_tokens > 0


@pytest.mark.parametrize("text", ["plain words", 'a "quote", a \\ and\na line', "héllo wörld 日本語", ""])
@pytest.mark.parametrize("compact", [True, False], ids=["compact", "spaced"])
@pytest.mark.parametrize("escaped", [True, False], ids=["escaped", "raw"])
def test_a_streams_text_counted_from_its_bytes_is_the_estimate_of_its_decoded_text(
    text: str, compact: bool, escaped: bool
) -> None:
    separators = (",", ":") if compact else (", ", ": ")
    events = {
        StreamFormat.CHAT: {"id": "content", "choices": [{"delta": {"role": "assistant", "content": text}}]},
        StreamFormat.COMPLETION: {"choices": [{"index": 0, "text": text}]},
        StreamFormat.RESPONSES: {"type": "response.output_text.delta", "delta": text},
    }
    for fmt, payload in events.items():
        event = (
            b"data: " + json.dumps(payload, ensure_ascii=escaped, separators=separators).encode() + b"\n\n"
        )
        counted = tokens.TextCount()
        counted.add_event(event, tokens.TEXT_KEYS[fmt])
        counted.add_event(b'data: {"choices":[{"delta":{"content":null}}]}\n\n', tokens.TEXT_KEYS[fmt])
        assert counted.tokens == tokens.text_tokens(text), (fmt, event)
        # The same as decoding the event.
        assert counted.tokens == tokens.text_tokens(tokens.answer_text(json.loads(event[6:])))

"""First token = first content: LocalAI's real stream shape, driven by the real OpenAI SDK (sync and async,
stream and not). The stand-in sends the role chunk at once, content later, errors as content."""

from __future__ import annotations

import aiohttp
import openai
import pytest

from localai_operator.testing.standins import OpenAIStandIn
from tests.unit.router.conftest import (
    SDK_IDS,
    SDK_MODES,
    StartRouter,
    breaker_of,
    chat_body,
    eventually,
    route_config,
    scrape,
    sdk_chat,
)

BUDGET_MS = 500


@pytest.mark.parametrize(("kind", "stream"), SDK_MODES, ids=SDK_IDS)
async def test_first_content_later_than_the_budget_falls_back_though_the_role_chunk_was_instant(
    kind: str, stream: bool, local: OpenAIStandIn, cloud: OpenAIStandIn, start_router: StartRouter
) -> None:
    local.set(delay_before_first_chunk=3)
    router = await start_router(route_config(local.url, cloud.url, firstTokenTimeoutMs=BUDGET_MS))
    reply = await sdk_chat(router, sync=kind == "sync", stream=stream)
    assert (reply.served_by, reply.fallback_reason) == ("fallback", "first_token_timeout")
    assert "cloud-token-0" in reply.text and "local-token" not in reply.text
    # The budget decided, not the 3 s the first token took.
    assert reply.elapsed < 2.5


@pytest.mark.parametrize(("kind", "stream"), SDK_MODES, ids=SDK_IDS)
async def test_a_first_token_within_the_budget_stays_local(
    kind: str, stream: bool, local: OpenAIStandIn, cloud: OpenAIStandIn, start_router: StartRouter
) -> None:
    local.set(delay_before_first_chunk=0.05)
    router = await start_router(route_config(local.url, cloud.url, firstTokenTimeoutMs=2000))
    reply = await sdk_chat(router, sync=kind == "sync", stream=stream)
    assert (reply.served_by, reply.fallback_reason) == ("local", None)
    assert reply.text == "local-token-0 local-token-1 local-token-2 "
    assert reply.finish_reason == "stop"
    assert cloud.counters.started == 0


async def test_the_held_role_chunk_reaches_the_client_first(
    local: OpenAIStandIn, cloud: OpenAIStandIn, start_router: StartRouter
) -> None:
    router = await start_router(route_config(local.url, cloud.url, firstTokenTimeoutMs=2000))
    reply = await sdk_chat(router, sync=False, stream=True)
    assert reply.chunks is not None
    assert reply.chunks[0].choices[0].delta.role == "assistant"
    # LocalAI v4.9.0's second event is `{"content":null}`: relayed, held with the role event until the first token.
    assert [c.choices[0].delta.content for c in reply.chunks[1:5]] == [
        None,
        *(f"local-token-{i} " for i in range(3)),
    ]


async def test_keep_alive_comments_before_the_first_token_do_not_meet_the_budget(
    local: OpenAIStandIn, cloud: OpenAIStandIn, start_router: StartRouter
) -> None:
    local.set(delay_before_first_chunk=3, keepalive_interval=0.1)
    router = await start_router(route_config(local.url, cloud.url, firstTokenTimeoutMs=BUDGET_MS))
    reply = await sdk_chat(router, sync=False, stream=True)
    assert (reply.served_by, reply.fallback_reason) == ("fallback", "first_token_timeout")


async def test_localai_v4_shape_role_chunk_with_the_first_token_is_timed_the_same(
    local: OpenAIStandIn, cloud: OpenAIStandIn, start_router: StartRouter
) -> None:
    local.set(delay_before_first_chunk=3, role_chunk="with_first_token")
    router = await start_router(route_config(local.url, cloud.url, firstTokenTimeoutMs=BUDGET_MS))
    reply = await sdk_chat(router, sync=False, stream=True)
    assert (reply.served_by, reply.fallback_reason) == ("fallback", "first_token_timeout")


@pytest.mark.parametrize("shape", ["content", "event", "echoed"])
@pytest.mark.parametrize(("kind", "stream"), SDK_MODES, ids=SDK_IDS)
async def test_localai_in_stream_error_before_any_content_falls_back(
    shape: str, kind: str, stream: bool, local: OpenAIStandIn, cloud: OpenAIStandIn, start_router: StartRouter
) -> None:
    # v3.12.0: "Internal error: ..." as the content with finish_reason; v4.9.0: a data: {"error": ...} event, and on a
    # backend error (a prompt longer than the context) the error's text as a content delta just before that event.
    local.set(fail_after_tokens=0, error_shape=shape)
    router = await start_router(route_config(local.url, cloud.url))
    reply = await sdk_chat(router, sync=kind == "sync", stream=stream)
    assert (reply.served_by, reply.fallback_reason) == ("fallback", "stream_error")
    assert "Internal error" not in reply.text and "inference failed" not in reply.text
    assert "cloud-token-0" in reply.text


@pytest.mark.parametrize("shape", ["content", "event"])
async def test_localai_error_after_content_ends_the_stream_with_an_error_event(
    shape: str,
    local: OpenAIStandIn,
    cloud: OpenAIStandIn,
    start_router: StartRouter,
    client: aiohttp.ClientSession,
) -> None:
    local.set(tokens=5, fail_after_tokens=2, error_shape=shape)
    router = await start_router(route_config(local.url, cloud.url))
    async with client.post(router.v1("/chat/completions"), json=chat_body(stream=True)) as response:
        body = await response.read()
    assert response.headers["X-Served-By"] == "local"
    assert body.count(b"local-token-") == 2 and b"Internal error: " not in body.split(b"local-token-1")[0]
    assert b'"code": "upstream_stream_error"' in body
    assert not body.rstrip().endswith(b"[DONE]")
    assert cloud.counters.started == 0


async def test_a_non_stream_error_after_the_first_token_falls_back_as_nothing_was_sent(
    local: OpenAIStandIn, cloud: OpenAIStandIn, start_router: StartRouter
) -> None:
    local.set(tokens=5, fail_after_tokens=2)
    router = await start_router(route_config(local.url, cloud.url))
    reply = await sdk_chat(router, sync=False, stream=False)
    assert (reply.served_by, reply.fallback_reason) == ("fallback", "stream_error")
    assert reply.text.startswith("cloud-token-0")


async def test_a_4s_non_stream_generation_with_a_1s_budget_and_a_fast_first_token_stays_local_and_never_opens_the_breaker(
    local: OpenAIStandIn, cloud: OpenAIStandIn, start_router: StartRouter, client: aiohttp.ClientSession
) -> None:
    local.set(tokens=5, token_interval=1.0)
    router = await start_router(
        route_config(local.url, cloud.url, firstTokenTimeoutMs=1000, circuitBreaker={"failureThreshold": 1})
    )
    reply = await sdk_chat(router, sync=False, stream=False)
    assert (reply.served_by, reply.fallback_reason) == ("local", None)
    assert reply.text == "".join(f"local-token-{i} " for i in range(5))
    assert reply.elapsed >= 4
    assert await breaker_of(client, router, local.url) == "closed"
    assert cloud.counters.started == 0
    assert "localai_router_local_failures_total{" not in await scrape(client, router)


async def test_a_non_stream_answer_assembled_from_local_s_stream_keeps_usage_finish_reason_and_logprobs(
    local: OpenAIStandIn, cloud: OpenAIStandIn, start_router: StartRouter
) -> None:
    router = await start_router(route_config(local.url, cloud.url))
    reply = await sdk_chat(router, sync=False, stream=False, logprobs=True)
    assert reply.served_by == "local"
    assert reply.finish_reason == "stop"
    assert (reply.usage.prompt_tokens, reply.usage.completion_tokens, reply.usage.total_tokens) == (7, 3, 10)
    logprobs = reply.completion.choices[0].logprobs
    assert [entry.token for entry in logprobs.content] == [f"local-token-{i} " for i in range(3)]
    assert local.requests[-1].json()["stream"] is True  # local was asked for a stream


async def test_a_non_stream_answer_assembled_from_local_s_stream_keeps_tool_calls(
    local: OpenAIStandIn, cloud: OpenAIStandIn, start_router: StartRouter
) -> None:
    local.set(tool_call=True)
    router = await start_router(route_config(local.url, cloud.url))
    tools = [{"type": "function", "function": {"name": "get_weather", "parameters": {"type": "object"}}}]
    reply = await sdk_chat(router, sync=False, stream=False, tools=tools)
    message = reply.completion.choices[0].message
    assert reply.finish_reason == "tool_calls" and message.content is None
    [call] = message.tool_calls
    assert (call.id, call.function.name, call.function.arguments) == (
        "call-standin",
        "get_weather",
        '{"city": "Paris"}',
    )


async def test_the_half_open_probe_obeys_the_first_token_budget(
    local: OpenAIStandIn, cloud: OpenAIStandIn, start_router: StartRouter, client: aiohttp.ClientSession
) -> None:
    local.set(status=500)
    breaker = {"failureThreshold": 1, "openSeconds": 0.3}
    router = await start_router(
        route_config(local.url, cloud.url, firstTokenTimeoutMs=BUDGET_MS, circuitBreaker=breaker)
    )
    await sdk_chat(router, sync=False, stream=False)
    local.set(delay_before_first_chunk=5)

    async def half_open() -> bool:
        return await breaker_of(client, router, local.url) == "half_open"

    await eventually(half_open, 5, "the breaker to be half-open")
    probe = await sdk_chat(router, sync=False, stream=False)
    assert (probe.served_by, probe.fallback_reason) == ("fallback", "first_token_timeout")
    assert probe.elapsed < 2.5
    assert await breaker_of(client, router, local.url) == "open"


async def test_a_stream_ending_without_done_or_finish_reason_falls_back_when_nothing_was_sent(
    local: OpenAIStandIn, cloud: OpenAIStandIn, start_router: StartRouter
) -> None:
    local.set(truncate=True)
    router = await start_router(route_config(local.url, cloud.url))
    reply = await sdk_chat(router, sync=False, stream=False)
    assert (reply.served_by, reply.fallback_reason) == ("fallback", "empty_response")


async def test_a_stream_ending_without_done_or_finish_reason_after_content_ends_with_an_error_event(
    local: OpenAIStandIn, cloud: OpenAIStandIn, start_router: StartRouter, client: aiohttp.ClientSession
) -> None:
    local.set(truncate=True)
    router = await start_router(route_config(local.url, cloud.url))
    async with client.post(router.v1("/chat/completions"), json=chat_body(stream=True)) as response:
        body = await response.read()
    assert body.count(b"local-token-") == 3
    assert b'"code": "upstream_stream_incomplete"' in body
    text = await scrape(client, router)
    assert 'localai_router_stream_errors_total{upstream="local"} 1' in text.splitlines()


async def test_the_sdk_raises_on_the_error_event_of_a_broken_stream(
    local: OpenAIStandIn, cloud: OpenAIStandIn, start_router: StartRouter
) -> None:
    # What a client sees: the OpenAI SDK turns the router's SSE error event into an APIError.
    local.set(tokens=5, fail_after_tokens=2)
    router = await start_router(route_config(local.url, cloud.url))
    with pytest.raises(openai.APIError, match="mid-stream"):
        await sdk_chat(router, sync=False, stream=True)


async def test_ttft_and_time_per_output_token_are_measured_on_content(
    local: OpenAIStandIn, cloud: OpenAIStandIn, start_router: StartRouter, client: aiohttp.ClientSession
) -> None:
    local.set(delay_before_first_chunk=0.3, tokens=4, token_interval=0.1, role_chunk="at_once")
    router = await start_router(route_config(local.url, cloud.url))
    # LocalAI reports usage in a stream only when asked (time per output token needs the token count).
    await sdk_chat(router, sync=False, stream=True, stream_options={"include_usage": True})
    lines = (await scrape(client, router)).splitlines()
    # The first content came after ~0.3 s although the role chunk was instant: the 0.25 s bucket is empty.
    assert 'localai_router_time_to_first_token_seconds_bucket{upstream="local",le="0.25"} 0' in lines
    assert 'localai_router_time_to_first_token_seconds_count{upstream="local"} 1' in lines
    assert 'localai_router_time_per_output_token_seconds_bucket{upstream="local",le="0.075"} 0' in lines
    assert 'localai_router_time_per_output_token_seconds_bucket{upstream="local",le="0.15"} 1' in lines

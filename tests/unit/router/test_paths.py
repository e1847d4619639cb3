"""Every OpenAI path LocalAI serves, with the real SDK where it has a call for it: relayed to local,
streaming where the endpoint streams, and to the cloud where the cloud offers the same path."""

from __future__ import annotations

import aiohttp
import openai
import pytest

from localai_operator.testing.standins import OpenAIStandIn, refused_url
from tests.unit.router.conftest import LOCAL_MODEL, StartRouter, eventually, post, route_config, sdk_client


@pytest.mark.parametrize("stream", [False, True], ids=["whole", "stream"])
async def test_the_responses_api_is_served_by_local(
    stream: bool, local: OpenAIStandIn, cloud: OpenAIStandIn, start_router: StartRouter
) -> None:
    router = await start_router(route_config(local.url, cloud.url))
    async with sdk_client(router, sync=False) as sdk:
        if stream:
            async with await sdk.responses.create(model=LOCAL_MODEL, input="hello", stream=True) as events:
                kinds = [event.type async for event in events]
                served = events.response.headers["X-Served-By"]
            assert kinds[0] == "response.created" and kinds[-1] == "response.completed"
        else:
            raw = await sdk.responses.with_raw_response.create(model=LOCAL_MODEL, input="hello")
            served = raw.headers["X-Served-By"]
            assert raw.parse().output_text == "local-token-0 local-token-1 local-token-2 "
    assert served == "local"


async def test_a_non_stream_responses_request_is_timed_on_its_first_token_and_falls_back(
    local: OpenAIStandIn, cloud: OpenAIStandIn, start_router: StartRouter
) -> None:
    local.set(delay_before_first_chunk=3)
    router = await start_router(route_config(local.url, cloud.url, firstTokenTimeoutMs=500))
    async with sdk_client(router, sync=False) as sdk:
        raw = await sdk.responses.with_raw_response.create(model=LOCAL_MODEL, input="hello")
    assert (raw.headers["X-Served-By"], raw.headers["X-Fallback-Reason"]) == (
        "fallback",
        "first_token_timeout",
    )
    assert raw.parse().output_text.startswith("cloud-token-0")


async def test_retrieving_a_model_answers_from_local_then_the_cloud_list(
    local: OpenAIStandIn, cloud: OpenAIStandIn, start_router: StartRouter
) -> None:
    router = await start_router(route_config(local.url, cloud.url))
    async with sdk_client(router, sync=False) as sdk:
        mine = await sdk.models.with_raw_response.retrieve(LOCAL_MODEL)
        theirs = await sdk.models.with_raw_response.retrieve("deepseek-v3.2")
        with pytest.raises(openai.NotFoundError) as missing:
            await sdk.models.retrieve("no-such-model")
    assert (mine.parse().id, mine.headers["X-Served-By"]) == (LOCAL_MODEL, "local")
    assert (theirs.parse().owned_by, theirs.headers["X-Served-By"]) == ("cloud", "fallback")
    assert missing.value.response.headers["X-Served-By"] == "router"


async def test_listing_models_with_the_sdk_merges_local_and_cloud(
    local: OpenAIStandIn, cloud: OpenAIStandIn, start_router: StartRouter
) -> None:
    router = await start_router(route_config(local.url, cloud.url))
    async with sdk_client(router, sync=False) as sdk:
        ids = [model.id async for model in sdk.models.list()]
    assert ids == [LOCAL_MODEL, "deepseek-v3.2"]


async def test_embeddings_with_the_sdk_fall_back_like_chat(
    cloud: OpenAIStandIn, start_router: StartRouter
) -> None:
    router = await start_router(route_config(refused_url(), cloud.url))
    async with sdk_client(router, sync=False) as sdk:
        raw = await sdk.embeddings.with_raw_response.create(model=LOCAL_MODEL, input="hello")
    assert raw.headers["X-Served-By"] == "fallback"
    assert raw.parse().data[0].embedding == [0.25, -0.5, 0.125, 1.0]


async def test_speech_is_streamed_from_local_as_it_is_produced(
    local: OpenAIStandIn, cloud: OpenAIStandIn, start_router: StartRouter
) -> None:
    local.set(tokens=4, token_interval=0.3)
    local.models = (LOCAL_MODEL, "tts")  # LocalAI answers 404 for a model it does not serve
    router = await start_router(route_config(local.url, cloud.url))
    async with (
        sdk_client(router, sync=False) as sdk,
        sdk.audio.speech.with_streaming_response.create(model="tts", voice="alloy", input="hi") as audio,
    ):
        assert audio.headers["X-Served-By"] == "local"
        chunks = [chunk async for chunk in audio.iter_bytes(1024)]
    assert len(chunks) >= 2 and b"".join(chunks).startswith(b"RIFF")


async def test_image_generation_transcription_rerank_and_tokenize_are_relayed(
    local: OpenAIStandIn, cloud: OpenAIStandIn, start_router: StartRouter, client: aiohttp.ClientSession
) -> None:
    local.models = (LOCAL_MODEL, "sd", "whisper", "reranker")
    router = await start_router(route_config(local.url, cloud.url))
    async with sdk_client(router, sync=False) as sdk:
        image = await sdk.images.generate(model="sd", prompt="a cat")
        transcript = await sdk.audio.transcriptions.create(
            model="whisper", file=("a.wav", b"RIFF0000", "audio/wav")
        )
    assert image.data[0].b64_json and transcript.text == "local transcription"
    rerank = await post(
        client, router, "/rerank", body={"model": "reranker", "query": "q", "documents": ["a", "b"]}
    )
    tokens = await post(client, router, "/tokenize", body={"model": LOCAL_MODEL, "content": "hi"})
    assert (rerank.served_by, len(rerank.json()["results"])) == ("local", 2)
    assert (tokens.served_by, tokens.json()["tokens"]) == ("local", [1, 2, 3])


async def test_a_stored_response_is_read_from_local(
    local: OpenAIStandIn, cloud: OpenAIStandIn, start_router: StartRouter
) -> None:
    router = await start_router(route_config(local.url, cloud.url))
    async with sdk_client(router, sync=False) as sdk:
        stored = await sdk.responses.retrieve("resp-123")
    assert stored.id == "resp-123"


async def test_a_model_local_does_not_serve_but_the_cloud_lists_goes_to_the_cloud(
    local: OpenAIStandIn, cloud: OpenAIStandIn, start_router: StartRouter, client: aiohttp.ClientSession
) -> None:
    cloud.models = ("deepseek-v3.2", "gpt-4o-mini")
    router = await start_router(route_config(local.url, cloud.url))
    catalog = router.router.listing.catalog
    await eventually(lambda: catalog.local is not None and catalog.cloud is not None, 10, "both model lists")
    answer = await post(
        client, router, body={"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}]}
    )
    assert (answer.served_by, answer.headers["X-Fallback-Reason"]) == ("fallback", "model_not_local")
    assert cloud.requests[-1].json()["model"] == "gpt-4o-mini"  # listed by the cloud: sent as asked
    assert local.counters.started == 0


async def test_a_model_neither_lists_goes_to_local_which_says_so(
    local: OpenAIStandIn, cloud: OpenAIStandIn, start_router: StartRouter, client: aiohttp.ClientSession
) -> None:
    router = await start_router(route_config(local.url, cloud.url))
    catalog = router.router.listing.catalog
    await eventually(lambda: catalog.local is not None and catalog.cloud is not None, 10, "both model lists")
    await post(client, router, body={"model": "typo-model", "messages": []})
    assert local.counters.started == 1 and cloud.counters.started == 0


async def test_a_sensitive_route_sends_an_unknown_model_to_local_only(
    local: OpenAIStandIn, start_router: StartRouter, client: aiohttp.ClientSession
) -> None:
    router = await start_router(route_config(local.url, sensitive=True))
    await post(client, router, body={"model": "gpt-4o-mini", "messages": []})
    assert local.counters.started == 1


async def test_a_path_the_cloud_does_not_offer_never_falls_back(
    local: OpenAIStandIn, cloud: OpenAIStandIn, start_router: StartRouter, client: aiohttp.ClientSession
) -> None:
    local.set(status=500)
    local.models = (LOCAL_MODEL, "reranker")
    router = await start_router(route_config(local.url, cloud.url))
    answer = await post(
        client, router, "/rerank", body={"model": "reranker", "query": "q", "documents": ["a"]}
    )
    assert (answer.status, answer.served_by) == (500, "router")
    assert "does not serve /rerank" in answer.json()["error"]["message"]
    assert cloud.counters.started == 0


@pytest.mark.parametrize("path", ["/backend/shutdown", "/nonsense", "/realtime/calls"])
async def test_paths_local_does_not_serve_or_must_not_be_reached_answer_404(
    path: str, local: OpenAIStandIn, start_router: StartRouter, client: aiohttp.ClientSession
) -> None:
    router = await start_router(route_config(local.url))
    answer = await post(client, router, path, body={"model": LOCAL_MODEL})
    assert (answer.status, answer.served_by) == (404, "router")
    assert answer.json()["error"]["type"] == "invalid_request_error"
    assert local.counters.started == 0


async def test_a_wrong_method_answers_405_with_the_allowed_ones(
    local: OpenAIStandIn, start_router: StartRouter, client: aiohttp.ClientSession
) -> None:
    router = await start_router(route_config(local.url))
    async with client.get(router.v1("/chat/completions")) as response:
        assert (response.status, response.headers["X-Served-By"], response.headers["Allow"]) == (
            405,
            "router",
            "POST",
        )
        assert (await response.json())["error"]["code"] == "method_not_allowed"

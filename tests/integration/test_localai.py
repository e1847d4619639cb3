"""The LocalAI conformance tier: every fact about LocalAI v4.9.0 the operator and the router depend on
(docs/localai-facts.md) that the binary shows, checked on the binary itself: `local-ai` from the image `make images`
builds, run as a process on this host's loopback from the image's root filesystem (`buildah run`), with the model
YAML, environment and probe paths the operator renders for the real-node sample pool and /models laid out by the real
fetch-models. A process rather than a pod: each fact is then one HTTP exchange away from the test, with LocalAI's
own log at hand, in seconds; the e2e tier runs the same image in pods on the real node.

The in-process LocalAI stand-in the unit tests use (`local_standin`) is held to the same shapes here, request by
request: a shape the binary changes fails its test here before it misleads a unit test.
"""

from __future__ import annotations

import asyncio
import json
import re
import threading
import time
import urllib.request
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest

from localai_operator.constants import FALLBACK_REASON_HEADER, SERVED_BY_HEADER
from localai_operator.devcluster import images, stack
from localai_operator.router import tokens
from localai_operator.testing.llama_log import VERBOSE_OPTION, buffer_sizes, rendered_estimate
from localai_operator.testing.standins import (
    LOCALAI_TRAILING_NULL_EVENTS,
    Behaviour,
    OpenAIStandIn,
    local_standin,
)
from tests.helpers import wait_for
from tests.integration.real_localai import (
    API_KEY,
    KEY_SECRET,
    LocalAI,
    copy_models,
    in_image,
    render,
    router_in_front,
    running,
    start,
)

pytestmark = pytest.mark.harness

ROOT = Path(__file__).resolve().parents[2]
FACTS = ROOT / "docs" / "localai-facts.md"
MODEL = stack.MODEL
CHAT = {"model": MODEL, "messages": [{"role": "user", "content": "Name a colour."}]}
PROMPT = {"model": MODEL, "prompt": "Kubernetes is"}
# What the stand-in generates when max_tokens does not cut it; requests ask for fewer, as they do of the binary.
STANDIN_TOKENS = 8
CUT = 4
# Values for every model-YAML key the renderer writes, unlike LocalAI's defaults, so the binary's log shows each
# was taken (docs/localai-facts.md §7).
TUNED_MODEL = {
    "contextSize": 1536,
    "batch": 256,
    "kvCacheType": "q8_0",
    "mmap": False,
    "parallel": 3,
    "parameters": {
        "temperature": 0.3,
        "topP": 0.8,
        "topK": 21,
        "maxTokens": 5,
        "seed": 11,
        "repeatPenalty": 1.2,
    },
}


# ---------------------------------------------------------------------------------------------- the binary


@pytest.fixture(scope="module")
def keyed() -> Any:
    """The sample pool with an API key Secret, rendered."""
    return render(pool_spec={"apiKeySecretRef": KEY_SECRET})


@pytest.fixture(scope="module")
def localai(
    localai_image: images.Image, fetched: Path, keyed: Any, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[LocalAI]:
    """LocalAI with the rendered env (the pool's key set) and the rendered models directory."""
    work = tmp_path_factory.mktemp("localai")
    models = copy_models(fetched, work / "models", keyed.config)
    with running(localai_image, models, keyed.env(LOCALAI_LOG_LEVEL="debug"), work / "localai.log") as served:
        yield served


@pytest.fixture(scope="module")
def standin() -> Iterator[OpenAIStandIn]:
    """The LocalAI stand-in of the unit tests on a loopback port, in a thread of its own."""
    fake: OpenAIStandIn = local_standin(models=(MODEL,), api_key=API_KEY)
    fake.behaviour = Behaviour(tokens=STANDIN_TOKENS)
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    asyncio.run_coroutine_threadsafe(fake.start(), loop).result(10)
    yield fake
    asyncio.run_coroutine_threadsafe(fake.stop(), loop).result(10)
    loop.call_soon_threadsafe(loop.stop)
    thread.join(10)


def like(localai: LocalAI, other: str | OpenAIStandIn) -> LocalAI:
    """A client of another server (the stand-in, the router) with the same helpers and key."""
    base = other if isinstance(other, str) else other.url.removesuffix("/v1")
    return LocalAI(localai.container, base, localai.log, localai.key)


def skeleton(value: Any, key: str = "") -> Any:
    """A JSON value's shape: strings and numbers by type, except the fields whose values are the shape
    (`object`, `role`, `finish_reason`, `type`); null stays null (LocalAI's content:null events are shape)."""
    if isinstance(value, dict):
        return {k: skeleton(v, k) for k, v in value.items()}
    if isinstance(value, list):
        return [skeleton(v, key) for v in value]
    if isinstance(value, str):
        return value if key in ("object", "role", "finish_reason", "type") else "str"
    if isinstance(value, bool) or value is None:
        return value
    return "number"


def stream_shape(events: list[Any]) -> list[Any]:
    """The skeletons of a stream's events, each run of equal ones (the tokens) as one."""
    shapes: list[Any] = []
    for event in events:
        shape = skeleton(event)
        if not shapes or shapes[-1] != shape:
            shapes.append(shape)
    return shapes


def test_every_localai_variable_the_pool_renders_is_one_the_binary_reads(
    localai_image: images.Image, keyed: Any, tmp_path: Path
) -> None:
    code, text = in_image(localai_image, [images.LOCALAI_PROGRAM, "run", "--help"], tmp_path / "help.log")
    assert code == 0, text
    known = set(re.findall(r"\$(LOCALAI_[A-Z0-9_]+)", text))
    rendered = {name for name in keyed.env() if name.startswith("LOCALAI_")}
    assert rendered - known == set()


def test_readyz_answers_only_once_the_preloaded_model_is_in_memory(
    localai_image: images.Image, fetched: Path, tmp_path: Path
) -> None:
    rendered = render()
    models = copy_models(fetched, tmp_path / "models", rendered.config)
    # Debug level only so that the backend's own lines (its slots, once the model is loaded) are in the log.
    localai = start(localai_image, models, rendered.env(LOCALAI_LOG_LEVEL="debug"), tmp_path / "localai.log")
    refused = 0
    try:

        def ready() -> bool:
            nonlocal refused
            if localai.ready():
                return True
            refused += not localai.listening()
            return localai.container.poll() is not None

        wait_for(ready, 180, "LocalAI's /readyz", interval=0.05, describe=lambda: localai.log_text()[-2000:])
        assert localai.container.poll() is None, localai.log_text()[-3000:]
        log = localai.log_text()
    finally:
        localai.stop()
    assert refused > 0, "the port never refused a connection: the preload was not seen"
    # The backend has loaded the model (its slots exist) before the HTTP server says it listens.
    assert log.index("n_slots = 2") < log.index("LocalAI is started and running")


def test_the_probes_are_open_without_the_key_and_answer_an_empty_200(
    localai: LocalAI, standin: OpenAIStandIn
) -> None:
    for server in (localai, like(localai, standin)):
        for path in ("/readyz", "/healthz"):
            status, headers, body = server.call("GET", path, key=None)
            assert (status, body, headers.get("Content-Type")) == (200, b"", None), (
                server.base,
                path,
                headers,
            )


def test_the_api_needs_the_pool_key_as_bearer_or_x_api_key(localai: LocalAI, standin: OpenAIStandIn) -> None:
    for server in (localai, like(localai, standin)):
        status, _, body = server.call("GET", "/v1/models", key=None)
        assert (status, json.loads(body)) == (
            401,
            {
                "error": {
                    "code": 401,
                    "message": "An authentication key is required",
                    "type": "invalid_request_error",
                }
            },
        ), server.base
        assert server.call("GET", "/v1/models", key="not-the-key")[0] == 401
        assert server.call("GET", "/v1/models")[0] == 200
        assert server.call("GET", "/v1/models", key=None, headers={"x-api-key": API_KEY})[0] == 200


def test_models_lists_exactly_the_yamls_in_models_without_the_weights_or_the_markers(
    localai: LocalAI, standin: OpenAIStandIn, fetched: Path
) -> None:
    assert (fetched / ".localai-operator").is_dir(), "fetch-models keeps its verified markers there"
    for server in (localai, like(localai, standin)):
        status, _, body = server.call("GET", "/v1/models")
        assert (status, json.loads(body)) == (
            200,
            {"object": "list", "data": [{"id": MODEL, "object": "model"}]},
        )


def test_an_unknown_model_is_a_404_naming_it(localai: LocalAI, standin: OpenAIStandIn) -> None:
    expected = {
        "error": {
            "code": 404,
            "message": 'model "nope" not found. To see available models, call GET /v1/models',
            "type": "invalid_request_error",
        }
    }
    for server in (localai, like(localai, standin)):
        for path, body in (("/v1/chat/completions", CHAT), ("/v1/completions", PROMPT)):
            status, _, answer = server.post(path, {**body, "model": "nope"})
            assert (status, answer) == (404, expected), (server.base, path)


def test_the_gallery_ui_and_install_endpoints_are_404_and_inference_is_unaffected(localai: LocalAI) -> None:
    for method, path in (
        ("POST", "/models/apply"),
        ("GET", "/models/available"),
        ("POST", "/backends/apply"),
        ("GET", "/backends"),
        ("GET", "/"),
        ("POST", "/api/backends/install-external"),
        ("GET", "/api/settings"),
    ):
        assert localai.call(method, path, {})[0] == 404, (method, path)
    status, _, answer = localai.post("/v1/chat/completions", {**CHAT, "max_tokens": 2})
    assert status == 200 and answer["choices"][0]["message"]["content"]


def test_a_chat_stream_has_localais_exact_shape(localai: LocalAI, standin: OpenAIStandIn) -> None:
    body = {**CHAT, "stream": True, "max_tokens": CUT}
    headers, events = localai.events("/v1/chat/completions", body)
    role, null, *rest = events
    assert role["choices"][0]["delta"] == {"role": "assistant", "content": None}
    assert null["choices"][0]["delta"] == {"content": None}
    assert rest[-1] == "[DONE]"
    tokens, trailing = rest[:CUT], rest[CUT:-1]
    assert all(isinstance(e["choices"][0]["delta"]["content"], str) for e in tokens)
    assert [e["choices"][0]["delta"] for e in trailing] == [{"content": None}] * (
        LOCALAI_TRAILING_NULL_EVENTS + 1
    )
    assert [e["choices"][0]["finish_reason"] for e in trailing] == [None] * LOCALAI_TRAILING_NULL_EVENTS + [
        "length"
    ]
    assert all("usage" not in e for e in events[:-1])
    assert {e["id"] for e in events[:-1]} == {headers["X-Correlation-Id"]}
    assert (headers["Content-Type"], headers["Cache-Control"]) == ("text/event-stream", "no-cache")
    _, mimic = like(localai, standin).events("/v1/chat/completions", body)
    assert stream_shape(mimic) == stream_shape(events)


def test_a_chat_stream_reports_usage_only_in_the_trailer_include_usage_asks_for(
    localai: LocalAI, standin: OpenAIStandIn
) -> None:
    body = {**CHAT, "stream": True, "max_tokens": CUT, "stream_options": {"include_usage": True}}
    _, events = localai.events("/v1/chat/completions", body)
    trailer = events[-2]
    assert trailer["choices"] == [] and trailer["usage"]["completion_tokens"] == CUT
    assert all("usage" not in e for e in events[:-2])
    _, mimic = like(localai, standin).events("/v1/chat/completions", body)
    assert stream_shape(mimic) == stream_shape(events)


def test_a_completion_stream_opens_and_closes_without_text_and_always_says_stop(
    localai: LocalAI, standin: OpenAIStandIn
) -> None:
    body = {**PROMPT, "stream": True, "max_tokens": CUT}
    _, events = localai.events("/v1/completions", body)
    assert events[-1] == "[DONE]"
    choices = [e["choices"][0] for e in events[:-1]]
    assert "text" not in choices[0] and "text" not in choices[-2]
    assert len([c for c in choices if "text" in c]) == CUT
    assert choices[-1] == {"index": 0, "finish_reason": "stop"}  # although max_tokens cut the text
    _, mimic = like(localai, standin).events("/v1/completions", body)
    assert stream_shape(mimic) == stream_shape(events)


def test_a_completion_reports_zero_usage_and_stop_when_max_tokens_cut_it(
    localai: LocalAI, standin: OpenAIStandIn
) -> None:
    status, _, answer = localai.post("/v1/completions", {**PROMPT, "max_tokens": CUT})
    assert status == 200 and answer["choices"][0]["text"]
    assert answer["choices"][0]["finish_reason"] == "stop"
    assert answer["usage"] == {"prompt_tokens": 0, "completion_tokens": 0, "total_tokens": 0}
    _, _, mimic = like(localai, standin).post("/v1/completions", {**PROMPT, "max_tokens": CUT})
    assert skeleton(mimic) == skeleton(answer)
    assert (mimic["usage"], mimic["choices"][0]["finish_reason"]) == (answer["usage"], "stop")


def test_a_chat_answer_reports_usage_and_length_when_max_tokens_cut_it(
    localai: LocalAI, standin: OpenAIStandIn
) -> None:
    status, headers, answer = localai.post("/v1/chat/completions", {**CHAT, "max_tokens": CUT})
    assert status == 200
    assert answer["choices"][0]["finish_reason"] == "length"
    assert answer["usage"]["completion_tokens"] == CUT and answer["usage"]["prompt_tokens"] > 0
    assert re.fullmatch(r"[0-9a-f-]{36}", answer["id"]) and "system_fingerprint" not in answer
    assert re.fullmatch(r"[0-9a-f-]{36}", headers["X-Correlation-Id"])
    _, _, mimic = like(localai, standin).post("/v1/chat/completions", {**CHAT, "max_tokens": CUT})
    assert skeleton(mimic) == skeleton(answer)


def test_parallel_slots_serve_that_many_requests_at_once(localai: LocalAI) -> None:
    # The sample model renders options [parallel:2]: a second stream makes progress while the first one runs.
    body = {**PROMPT, "stream": True, "max_tokens": 24, "ignore_eos": True}

    def timed() -> list[float]:
        stamps = []
        with urllib.request.urlopen(
            localai.request("POST", "/v1/completions", body), timeout=120
        ) as response:
            for line in response:
                if line.startswith(b"data: {") and b'"text"' in line:
                    stamps.append(time.monotonic())
        return stamps

    with ThreadPoolExecutor(2) as pool:
        first, second = pool.map(lambda _: timed(), range(2))
    assert first and second
    # Interleaved: each produced tokens before the other had finished.
    assert second[0] < first[-1] and first[0] < second[-1]


def test_every_rendered_model_yaml_key_reaches_the_backend(
    localai_image: images.Image, fetched: Path, tmp_path: Path
) -> None:
    # LocalAI reads the YAML without strict decoding (core/config/model_config_loader.go, yaml.Unmarshal): an
    # unknown key is dropped without a word. So each value the renderer writes is looked for where the binary
    # logs what it hands the backend, at debug level: the gRPC ModelOptions ("Options options=…",
    # pkg/model/initializers.go) and the backend's own print of each prediction's parameters.
    rendered = render(model_spec=TUNED_MODEL)
    written = rendered.model_yaml()
    models = copy_models(fetched, tmp_path / "models", rendered.config)
    with running(
        localai_image, models, rendered.env(LOCALAI_LOG_LEVEL="debug"), tmp_path / "localai.log"
    ) as served:
        status, _, _ = served.post("/v1/completions", PROMPT)
        assert status == 200
        log = re.sub(r"\x1b\[[0-9;]*m", "", served.log_text())
    [options] = re.findall(r"DEBUG Options options=(.*?) caller=", log)
    assert f"ContextSize:{written['context_size']}" in options
    assert f"NBatch:{written['parameters']['batch']}" in options
    assert "MMap:true" not in options and written["mmap"] is False
    assert f'CacheTypeKey:"{written["cache_type_k"]}"' in options
    assert f'CacheTypeValue:"{written["cache_type_v"]}"' in options
    assert f'FlashAttention:"{written["flash_attention"]}"' in options
    assert f"Seed:{written['parameters']['seed']}" in options
    assert f'Options:"{written["options"][0]}"' in options
    assert f"n_slots = {TUNED_MODEL['parallel']}" in log
    predicted = {key: value for key, value in re.findall(r'line="  \\"(\w+)\\": ([^,"]+),?"', log)}
    parameters = written["parameters"]
    assert float(predicted["temperature"]) == pytest.approx(parameters["temperature"])
    assert float(predicted["top_p"]) == pytest.approx(parameters["top_p"])
    assert int(predicted["top_k"]) == parameters["top_k"]
    assert float(predicted["repeat_penalty"]) == pytest.approx(parameters["repeat_penalty"])
    assert int(predicted["n_predict"]) == parameters["max_tokens"]
    assert int(predicted["seed"]) == parameters["seed"]


def test_the_gpu_memory_estimate_is_within_10_percent_of_the_buffers_localais_backend_allocates(
    localai_image: images.Image, fetched: Path, tmp_path: Path
) -> None:
    # The sample pool's model as rendered for its CPU pool (swa_full:true included), and the option that makes the
    # backend print llama.cpp's buffer sizes (logging only). On the CPU every layer's buffers are where a GPU would
    # hold them with every layer offloaded: the estimate gpufit makes for such a pool.
    rendered = render(model_spec={"options": [VERBOSE_OPTION]})
    models = copy_models(fetched, tmp_path / "models", rendered.config)
    with running(
        localai_image, models, rendered.env(LOCALAI_LOG_LEVEL="debug"), tmp_path / "localai.log"
    ) as served:
        logged = buffer_sizes(served.log_text())
    model = rendered.model
    estimate = rendered_estimate(models / model.spec.source.file_name(), model, gpu=False)
    assert logged["model"] == pytest.approx(estimate["model"], rel=0.01)
    assert logged["KV"] == pytest.approx(estimate["KV"], rel=0.10)
    assert logged["compute"] == pytest.approx(estimate["compute"], rel=0.10)
    total = estimate["model"] + estimate["KV"] + estimate["compute"]
    assert logged["model"] + logged["KV"] + logged["compute"] == pytest.approx(total, rel=0.10)


def test_the_options_localai_adds_by_itself_are_in_the_facts_page(localai: LocalAI) -> None:
    log = re.sub(r"\x1b\[[0-9;]*m", "", localai.log_text())
    [options] = re.findall(r"DEBUG Options options=(.*?) caller=", log)
    rendered = set(render().model_yaml()["options"])
    added = set(re.findall(r'Options:"([^"]+)"', options)) - rendered
    assert added == {"cache_reuse:256", "use_jinja:true"}
    facts = FACTS.read_text()
    assert all(f"`{option}`" in facts for option in added), added


# ---------------------------------------------------------------------------------------------- the router


@pytest.fixture(scope="module")
def routed(localai: LocalAI, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    with router_in_front(localai, tmp_path_factory.mktemp("router"), 5000) as base:
        yield base


def test_the_router_relays_localais_content_less_events_and_answers_locally(
    localai: LocalAI, routed: str
) -> None:
    base = routed
    body = {**CHAT, "stream": True, "max_tokens": CUT}
    _, direct = localai.events("/v1/chat/completions", body)
    headers, relayed = like(localai, base).events("/v1/chat/completions", body)
    assert headers[SERVED_BY_HEADER] == "local"
    assert stream_shape(relayed) == stream_shape(direct)


def test_the_first_token_budget_fires_on_localais_slow_first_token(localai: LocalAI, tmp_path: Path) -> None:
    # A long prompt never seen before (a new prefix: nothing cached) takes LocalAI a while to evaluate, and it sends
    # nothing, not even headers, before the first token: a route with a 250 ms budget answers from the cloud.
    words = [
        "alpha",
        "bravo",
        "charlie",
        "delta",
        "echo",
        "foxtrot",
        "golf",
        "hotel",
        "india",
        "juliet",
        "kilo",
        "lima",
        "mike",
        "november",
    ]
    text = f"{time.monotonic_ns()} " + " ".join(words[n % len(words)] for n in range(1200))
    body = {**CHAT, "stream": True, "max_tokens": 2, "messages": [{"role": "user", "content": text}]}
    with router_in_front(localai, tmp_path, 250) as base:
        request = like(localai, base).request("POST", "/v1/chat/completions", body)
        with urllib.request.urlopen(request, timeout=120) as response:
            response.read()
            served, reason = response.headers[SERVED_BY_HEADER], response.headers.get(FALLBACK_REASON_HEADER)
    assert (served, reason) == ("fallback", "first_token_timeout")


# A prompt longer than the sample model's context: LocalAI's backend refuses it before the first token.
TOO_LONG = " ".join(f"w{n}" for n in range(3000))


def echoed_by_the_standin_and_never_the_routers_answer(
    localai: LocalAI, standin: OpenAIStandIn, routed: str, path: str, body: Any, events: list[Any]
) -> None:
    """The stand-in's "echoed" error has the binary's shape, and the router falls back from the binary's whether
    its two writes reach it in one read or two (a first content that may be an echo waits for the next event, at
    most 0.1 s, and that is the error)."""
    standin.behaviour = Behaviour(tokens=STANDIN_TOKENS, fail_after_tokens=0, error_shape="echoed")
    try:
        _, mimic = like(localai, standin).events(path, body)
    finally:
        standin.behaviour = Behaviour(tokens=STANDIN_TOKENS)
    assert stream_shape(mimic) == stream_shape(events)
    headers, relayed = like(localai, routed).events(path, body)
    assert (headers[SERVED_BY_HEADER], headers.get(FALLBACK_REASON_HEADER)) == ("fallback", "stream_error")
    assert not any("exceeds" in json.dumps(e) for e in relayed), relayed


def fresh_prompt(words: int) -> dict[str, Any]:
    """A streamed chat request whose prompt no cache holds (it opens with a new number), `words` words long."""
    text = f"{time.monotonic_ns()} " + " ".join(BUDGET_WORDS[n % len(BUDGET_WORDS)] for n in range(words))
    return {**CHAT, "stream": True, "max_tokens": 2, "messages": [{"role": "user", "content": text}]}


BUDGET_WORDS = ("alpha", "bravo", "charlie", "delta", "echo", "foxtrot", "golf", "hotel", "india", "juliet")
LONG_WORDS = 1200
SHORT_WORDS = LONG_WORDS // 6  # ~1,300 characters: over the learner's 256 estimated tokens


def test_a_long_prompt_stays_local_once_localais_prefill_rate_is_learned(
    localai: LocalAI, tmp_path: Path
) -> None:
    # How long LocalAI takes to a long new prompt's first token, asked directly; the route's base budget is half of
    # that, so a fixed budget would send the prompt to the cloud (as the test above shows). Prompts a sixth as long
    # make it in time and teach the router LocalAI's prefill rate; then a long new prompt gets the base budget plus
    # its tokens at that rate (about the whole time again: 1.5x what it needs), and stays local.
    started = time.monotonic()
    headers, _ = localai.events("/v1/chat/completions", fresh_prompt(LONG_WORDS))
    long_seconds = time.monotonic() - started
    base_ms = max(500, int(long_seconds * 1000 / 2))
    with router_in_front(localai, tmp_path, base_ms) as base:
        router = like(localai, base)
        served = [router.events("/v1/chat/completions", fresh_prompt(SHORT_WORDS))[0] for _ in range(6)]
        assert [h[SERVED_BY_HEADER] for h in served].count("local") >= 4, (base_ms, served)
        with urllib.request.urlopen(f"{base}/readyz", timeout=5) as response:
            (endpoint,) = json.loads(response.read())["endpoints"]
        assert endpoint.get("prefillTokensPerSecond", {}).get(MODEL, 0) > 0, endpoint
        started = time.monotonic()
        headers, _ = router.events("/v1/chat/completions", fresh_prompt(LONG_WORDS))
        took = time.monotonic() - started
    assert (headers[SERVED_BY_HEADER], headers.get(FALLBACK_REASON_HEADER)) == ("local", None), (
        base_ms,
        took,
    )
    assert took > base_ms / 1000, "the long prompt took longer than the base budget, and still stayed local"


def test_a_prompt_longer_than_the_context_is_an_echoed_error_the_router_never_answers_with(
    localai: LocalAI, standin: OpenAIStandIn, routed: str
) -> None:
    # LocalAI streams the backend's error as a content delta holding its text, then the error event (two writes,
    # about a millisecond apart on loopback).
    body = {**CHAT, "stream": True, "max_tokens": 2, "messages": [{"role": "user", "content": TOO_LONG}]}
    _, events = localai.events("/v1/chat/completions", body)
    role, echo, error, done = events
    assert role["choices"][0]["delta"] == {"role": "assistant", "content": None}
    assert "exceeds the available context size" in echo["choices"][0]["delta"]["content"]
    assert error["error"]["type"] == "server_error"
    assert "exceeds the available context size" in error["error"]["message"]
    assert done == "[DONE]"
    echoed_by_the_standin_and_never_the_routers_answer(
        localai, standin, routed, "/v1/chat/completions", body, events
    )


def test_a_prompt_longer_than_the_context_in_a_completion_stream_is_an_echo_without_done_never_the_answer(
    localai: LocalAI, standin: OpenAIStandIn, routed: str
) -> None:
    # A completion stream echoes the backend's error as its first event (no empty event before it), then ends with
    # one more text event holding gRPC's status after LocalAI's "Internal error: " and finish_reason "stop", and no
    # [DONE].
    body = {**PROMPT, "stream": True, "max_tokens": 2, "prompt": TOO_LONG}
    _, events = localai.events("/v1/completions", body)
    [echo, error] = [e["choices"][0] for e in events]
    assert "exceeds the available context size" in echo["text"]
    assert error["finish_reason"] == "stop"
    assert error["text"].startswith("Internal error: rpc error: code = Internal desc = ")
    assert "exceeds the available context size" in error["text"]
    echoed_by_the_standin_and_never_the_routers_answer(
        localai, standin, routed, "/v1/completions", body, events
    )


def _router_figures(base: str) -> dict[str, float]:
    """The router's token and cost counters, by series (labels as exported)."""
    request = urllib.request.Request(f"{base}/metrics", headers={"Authorization": f"Bearer {API_KEY}"})
    with urllib.request.urlopen(request, timeout=10) as response:
        text = response.read().decode()
    wanted = (
        "localai_router_tokens_total",
        "localai_router_estimated_tokens_total",
        "localai_router_avoided_cost_total",
        "localai_router_time_per_output_token_seconds_count",
    )
    figures: dict[str, float] = {}
    for line in text.splitlines():
        name, _, value = line.rpartition(" ")
        if name.startswith(wanted):
            figures[name] = float(value)
    return figures


def _delta(before: dict[str, float], after: dict[str, float], series: str) -> float:
    return after.get(series, 0.0) - before.get(series, 0.0)


LOCAL_COMPLETION = 'localai_router_tokens_total{upstream="local",kind="completion"}'
LOCAL_PROMPT = 'localai_router_tokens_total{upstream="local",kind="prompt"}'
ESTIMATED_COMPLETION = 'localai_router_estimated_tokens_total{upstream="local",kind="completion"}'
AVOIDED = "localai_router_avoided_cost_total"
# The estimator's documented tolerance on English text against the model's own tokenizer (docs/router.md).
ESTIMATE_RANGE = (0.5, 1.5)


def _counted(
    before: dict[str, float], after: dict[str, float], text: str, limit: int, prices: dict[str, float] | None
) -> str:
    """Check one local answer's figures against the text it returned: estimated (LocalAI reported nothing or
    zeros) exactly the estimator on that text, else LocalAI's own count, which the estimator on the same text
    stays within its tolerance of. Says which it was."""
    completion = _delta(before, after, LOCAL_COMPLETION)
    estimated = _delta(before, after, ESTIMATED_COMPLETION)
    estimate = tokens.text_tokens(text)
    assert text and estimate > 1, text
    if estimated:
        assert estimated == completion == estimate, (estimated, completion, text)
        how = "estimated"
    else:
        assert 1 < completion <= limit, (completion, text)
        ratio = estimate / completion
        assert ESTIMATE_RANGE[0] <= ratio <= ESTIMATE_RANGE[1], (ratio, text)
        how = f"LocalAI's count, estimator/count {ratio:.2f}"
    prompt = _delta(before, after, LOCAL_PROMPT)
    assert prompt > 0
    if prices is not None:
        expected = (
            prompt * prices["inputPricePerMillionTokens"] + completion * prices["outputPricePerMillionTokens"]
        ) / 1e6
        assert _delta(before, after, AVOIDED) == pytest.approx(expected)
    return how


def test_the_routers_token_figures_count_the_text_localai_returned_when_it_reports_no_usage(
    localai: LocalAI, tmp_path: Path
) -> None:
    prices = {"inputPricePerMillionTokens": 1.0, "outputPricePerMillionTokens": 4.0}
    words = 48
    tpot = 'localai_router_time_per_output_token_seconds_count{upstream="local"}'
    # Without a fallback a completion goes to LocalAI as sent, and its usage is all zeros (pinned above): the
    # router's figures are the estimator on the text.
    with router_in_front(localai, tmp_path / "local-only", 5000, fallback=False) as base:
        before = _router_figures(base)
        status, _, answer = like(localai, base).post("/v1/completions", {**PROMPT, "max_tokens": words})
        assert status == 200
        text = answer["choices"][0]["text"]
        after = _router_figures(base)
        assert _counted(before, after, text, words, None) == "estimated"
        assert _delta(before, after, LOCAL_PROMPT) == tokens.text_tokens(PROMPT["prompt"])
    # With a fallback: a completion (sent to LocalAI as a stream) whole and streamed, and a chat stream that did
    # not ask for usage (the router asks LocalAI for it and hides it from the client).
    with router_in_front(localai, tmp_path / "routed", 5000, prices) as base:
        client = like(localai, base)
        for path, body, stream in (
            ("/v1/completions", {**PROMPT, "max_tokens": words}, False),
            ("/v1/completions", {**PROMPT, "max_tokens": words, "stream": True}, True),
            (
                "/v1/chat/completions",
                {
                    **CHAT,
                    "messages": [{"role": "user", "content": "Describe the sea in a long paragraph."}],
                    "max_tokens": words,
                    "stream": True,
                },
                True,
            ),
        ):
            before = _router_figures(base)
            if stream:
                _, events = client.events(path, body)
                data = [e for e in events if isinstance(e, dict)]
                assert all("usage" not in e for e in data), "usage the client did not ask for"
                choices = [e["choices"][0] for e in data if e["choices"]]
                text = "".join(c.get("text") or (c.get("delta") or {}).get("content") or "" for c in choices)
            else:
                status, _, answer = client.post(path, body)
                assert status == 200
                text = answer["choices"][0]["text"]
            after = _router_figures(base)
            how = _counted(before, after, text, words, prices)
            print(f"{path} stream={stream}: {how}")
            assert _delta(before, after, tpot) == 1

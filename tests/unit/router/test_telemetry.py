"""OpenTelemetry from the router, into a real OTLP/HTTP receiver on loopback (protobuf decoded with
opentelemetry-proto): one trace per request under the client's traceparent, a span per upstream attempt, the GenAI
attributes and metrics, nothing secret by default; and nothing at all, not even the SDK's import, when no endpoint
is configured."""

from __future__ import annotations

import asyncio
import json
import secrets
import signal
import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import openai
import pytest
import yaml

from localai_operator.constants import FALLBACK_API_KEY_ENV
from localai_operator.router.telemetry import METRICS
from localai_operator.testing.otlp import OtlpReceiver, ReceivedPoint, ReceivedSpan
from localai_operator.testing.standins import Behaviour, OpenAIStandIn
from tests.unit.router.conftest import (
    API_KEY,
    LOCAL_MODEL,
    MAPPED_CLOUD_MODEL,
    StartRouter,
    eventually,
    post,
    route_config,
    scrape,
)
from tests.unit.router.test_entrypoint import free_port, is_ready, router_command
from tests.unit.router.test_estimated_tokens import series

CLIENT_KEY_NAME = "billing-service"
CLIENT_KEY = "sk-client-billing-" + "7c1e" * 6
# What the client asks: must appear in no span unless content capture is on.
PROMPT = "the secret launch code is " + secrets.token_hex(8)
# Export at once: the batch processor's and the metric reader's intervals, in milliseconds.
FAST_EXPORT = {"OTEL_BSP_SCHEDULE_DELAY": "50", "OTEL_METRIC_EXPORT_INTERVAL": "200"}


@pytest.fixture
async def receiver() -> AsyncIterator[OtlpReceiver]:
    found = await OtlpReceiver().start()
    yield found
    await found.stop()


def traceparent() -> tuple[str, str, str]:
    """A client's W3C traceparent: (header, trace id, parent span id)."""
    trace_id, parent = secrets.token_hex(16), secrets.token_hex(8)
    return f"00-{trace_id}-{parent}-01", trace_id, parent


def telemetry_env(receiver: OtlpReceiver) -> dict[str, str]:
    return {FALLBACK_API_KEY_ENV: API_KEY, "OTEL_EXPORTER_OTLP_ENDPOINT": receiver.url, **FAST_EXPORT}


def by_role(spans: list[ReceivedSpan]) -> tuple[ReceivedSpan, list[ReceivedSpan]]:
    """The request's span and its attempts' spans, in start order."""
    (request,) = [s for s in spans if s.kind == "SERVER"]
    attempts = sorted((s for s in spans if s.kind == "CLIENT"), key=lambda s: s.start_ns)
    return request, attempts


def everything_in(spans: list[ReceivedSpan]) -> str:
    return json.dumps([[s.name, s.attributes, s.resource] for s in spans])


async def test_a_request_that_fell_back_is_one_trace_under_the_clients_id_with_a_failed_local_and_a_cloud_span(
    tmp_path: Path, receiver: OtlpReceiver
) -> None:
    local = OpenAIStandIn(name="local", behaviour=Behaviour(status=500))
    cloud = OpenAIStandIn(name="cloud", api_key=API_KEY)
    await local.start()
    await cloud.start()
    keys = tmp_path / "keys"
    keys.mkdir()
    (keys / CLIENT_KEY_NAME).write_text(CLIENT_KEY)
    config = tmp_path / "router.yaml"
    config.write_text(yaml.safe_dump(route_config(local.url, cloud.url, auth=[str(keys)])))
    port = free_port()
    process = subprocess.Popen(
        router_command(config, "--host", "127.0.0.1", "--port", str(port)),
        env={"PATH": "/usr/bin:/bin", **telemetry_env(receiver)},
        stderr=subprocess.PIPE,
    )
    header, trace_id, parent = traceparent()
    sdk = openai.AsyncOpenAI(
        base_url=f"http://127.0.0.1:{port}/v1",
        api_key=CLIENT_KEY,
        max_retries=0,
        default_headers={"traceparent": header, "tracestate": "congo=t61rcWkgMzE"},
    )
    try:
        async with aiohttp.ClientSession() as client:
            await eventually(lambda: is_ready(client, port), 30, "the router process to be ready")
        raw = await sdk.chat.completions.with_raw_response.create(
            model=LOCAL_MODEL, messages=[{"role": "user", "content": PROMPT}]
        )
        assert raw.headers["X-Served-By"] == "fallback"
        answer = raw.parse()
        spans = await eventually(
            lambda: len(receiver.trace(trace_id)) >= 3 and receiver.trace(trace_id), 20, "3 spans"
        )
        assert len(spans) == 3, spans

        request, (local_span, cloud_span) = by_role(spans)
        assert request.parent_span_id == parent  # the client's span is the parent
        assert request.name == f"chat {LOCAL_MODEL}"
        assert (
            request.attributes
            | {
                "gen_ai.operation.name": "chat",
                "gen_ai.request.model": LOCAL_MODEL,
                "gen_ai.provider.name": "stand-in",
                "gen_ai.response.model": MAPPED_CLOUD_MODEL,
                "gen_ai.usage.input_tokens": answer.usage.prompt_tokens,
                "gen_ai.usage.output_tokens": answer.usage.completion_tokens,
                "http.response.status_code": 200,
                "localai_operator.served_by": "fallback",
                "localai_operator.fallback.reason": "status_5xx",
                "localai_operator.client_key.name": CLIENT_KEY_NAME,
                "localai_operator.route": "team-a/chat",
            }
            == request.attributes
        )
        assert request.resource["service.name"] == "localai-router"

        assert local_span.parent_span_id == request.span_id == cloud_span.parent_span_id
        assert local_span.status == "ERROR" and cloud_span.status == "UNSET"
        assert (
            local_span.attributes
            | {
                "gen_ai.operation.name": "chat",
                "gen_ai.request.model": LOCAL_MODEL,
                "gen_ai.provider.name": "localai",
                "server.address": "127.0.0.1",
                "server.port": local.port,
                "http.response.status_code": 500,
                "error.type": "status_5xx",
                "localai_operator.fallback.reason": "status_5xx",
                "localai_operator.breaker.state": "closed",
                "localai_operator.upstream": "local",
            }
            == local_span.attributes
        )
        assert cloud_span.name == f"chat {MAPPED_CLOUD_MODEL}"
        assert (
            cloud_span.attributes
            | {
                "gen_ai.request.model": MAPPED_CLOUD_MODEL,
                "gen_ai.response.model": MAPPED_CLOUD_MODEL,
                "gen_ai.provider.name": "stand-in",
                "gen_ai.usage.output_tokens": answer.usage.completion_tokens,
                "server.address": "127.0.0.1",
                "server.port": cloud.port,
                "localai_operator.upstream": "fallback",
            }
            == cloud_span.attributes
        )

        # Local got the failed attempt's own context, with the client's tracestate; the cloud got none.
        sent = local.requests[-1].headers
        assert sent["traceparent"] == f"00-{trace_id}-{local_span.span_id}-01"
        assert sent["tracestate"] == "congo=t61rcWkgMzE"
        assert not {"traceparent", "tracestate"} & {h.lower() for h in cloud.requests[-1].headers}

        # No prompt, no key in any span.
        text = everything_in(spans)
        assert PROMPT not in text and "launch code" not in text
        assert API_KEY not in text and CLIENT_KEY not in text

        # A streamed request too, for the first-token metrics; then the GenAI metrics by their names.
        stream = await sdk.chat.completions.create(
            model=LOCAL_MODEL, messages=[{"role": "user", "content": PROMPT}], stream=True
        )
        async for _ in stream:
            pass
        names = await eventually(
            lambda: (
                set(METRICS) <= {p.metric for p in receiver.points} and {p.metric for p in receiver.points}
            ),
            20,
            "the four GenAI metrics",
        )
        assert set(METRICS) <= names
        usage = {
            p.attributes["gen_ai.token.type"]
            for p in receiver.points
            if p.metric == "gen_ai.client.token.usage" and p.count
        }
        assert usage == {"input", "output"}
        for point in receiver.points:
            if point.metric in METRICS:
                assert point.attributes["gen_ai.operation.name"] == "chat"
                assert point.attributes["gen_ai.request.model"] == LOCAL_MODEL
                assert point.attributes["gen_ai.provider.name"] == "stand-in"
                assert point.attributes["server.port"] == cloud.port
                assert point.unit == METRICS[point.metric][0]
        assert PROMPT not in json.dumps([p.attributes for p in receiver.points])
    finally:
        await sdk.close()
        process.send_signal(signal.SIGTERM)
        _, stderr = await asyncio.to_thread(process.communicate, timeout=30)
        await local.stop()
        await cloud.stop()
    assert process.returncode == 0, stderr.decode()[-2000:]
    assert API_KEY.encode() not in stderr and CLIENT_KEY.encode() not in stderr


async def test_a_request_served_locally_is_a_span_with_one_attempt_and_the_pod_gets_its_context(
    receiver: OtlpReceiver, start_router: StartRouter, local: OpenAIStandIn, client: aiohttp.ClientSession
) -> None:
    router = await start_router(route_config(local.url), env=telemetry_env(receiver))
    header, trace_id, parent = traceparent()
    answer = await post(client, router, headers={"traceparent": header})
    assert answer.status == 200 and answer.served_by == "local"
    spans = await eventually(
        lambda: len(receiver.trace(trace_id)) >= 2 and receiver.trace(trace_id), 20, "spans"
    )
    request, (attempt,) = by_role(spans)
    assert request.parent_span_id == parent and attempt.parent_span_id == request.span_id
    assert (
        request.attributes["gen_ai.provider.name"] == attempt.attributes["gen_ai.provider.name"] == "localai"
    )
    assert request.attributes["localai_operator.served_by"] == "local"
    assert "localai_operator.fallback.reason" not in request.attributes
    assert attempt.attributes["gen_ai.usage.output_tokens"] == answer.json()["usage"]["completion_tokens"]
    assert local.requests[-1].headers["traceparent"] == f"00-{trace_id}-{attempt.span_id}-01"


async def request_spans(receiver: OtlpReceiver, trace_id: str) -> list[ReceivedSpan]:
    """A request's span and its one attempt's, once both arrived."""
    found: list[ReceivedSpan] = await eventually(
        lambda: len(receiver.trace(trace_id)) >= 2 and receiver.trace(trace_id),
        20,
        f"the spans of {trace_id}",
    )
    return found


async def test_telemetry_takes_the_routers_token_figures_and_leaves_its_estimates_out_of_usage(
    receiver: OtlpReceiver, start_router: StartRouter, local: OpenAIStandIn, client: aiohttp.ClientSession
) -> None:
    local.set(tokens=8, token_interval=0.005)
    router = await start_router(route_config(local.url), env=telemetry_env(receiver))
    # LocalAI's completions report zeros (whole) or nothing (streamed): the router's figures are its estimate,
    # which the spans and the token metric leave out, and by which the time per output token divides.
    for stream in (False, True):
        header, trace_id, _ = traceparent()
        body = {"model": LOCAL_MODEL, "prompt": PROMPT, "stream": stream}
        answer = await post(client, router, "/completions", body, headers={"traceparent": header})
        assert answer.status == 200
        for span in await request_spans(receiver, trace_id):
            assert not {"gen_ai.usage.input_tokens", "gen_ai.usage.output_tokens"} & set(span.attributes), (
                span
            )
    estimated = series(
        await scrape(client, router),
        "localai_router_estimated_tokens_total",
        upstream="local",
        kind="completion",
    )
    assert estimated > 1

    def completion_points(metric: str) -> list[ReceivedPoint]:
        return [
            p
            for p in receiver.points
            if p.metric == metric and p.attributes["gen_ai.operation.name"] == "text_completion"
        ]

    await eventually(
        lambda: completion_points("gen_ai.server.time_per_output_token"),
        20,
        "the completion's time per token",
    )
    assert not completion_points("gen_ai.client.token.usage")

    # A chat stream's usage, asked for by the router: LocalAI's own count, in the spans as in the router's metrics.
    header, trace_id, _ = traceparent()
    body = {"model": LOCAL_MODEL, "messages": [{"role": "user", "content": PROMPT}], "stream": True}
    assert (await post(client, router, body=body, headers={"traceparent": header})).status == 200
    spans = await request_spans(receiver, trace_id)
    request, (attempt,) = by_role(spans)
    text = await scrape(client, router)
    counted = series(text, "localai_router_tokens_total", upstream="local", kind="completion") - estimated
    assert (
        request.attributes["gen_ai.usage.output_tokens"] == attempt.attributes["gen_ai.usage.output_tokens"]
    )
    assert request.attributes["gen_ai.usage.output_tokens"] == counted == 8
    assert series(text, "localai_router_estimated_tokens_total", kind="completion") == estimated


async def test_a_request_without_a_traceparent_starts_a_trace_of_its_own(
    receiver: OtlpReceiver, start_router: StartRouter, local: OpenAIStandIn, client: aiohttp.ClientSession
) -> None:
    router = await start_router(route_config(local.url), env=telemetry_env(receiver))
    assert (await post(client, router)).status == 200
    sent = local.requests[-1].headers["traceparent"]
    trace_id = sent.split("-")[1]
    spans = await eventually(
        lambda: len(receiver.trace(trace_id)) >= 2 and receiver.trace(trace_id), 20, "spans"
    )
    request, _ = by_role(spans)
    assert request.parent_span_id == ""


async def test_the_cloud_gets_the_trace_context_only_when_the_route_propagates_it(
    receiver: OtlpReceiver, start_router: StartRouter, cloud: OpenAIStandIn, client: aiohttp.ClientSession
) -> None:
    config = route_config("http://127.0.0.1:9/v1", cloud.url)
    config["telemetry"] = {"propagateToCloud": True}
    router = await start_router(config, env=telemetry_env(receiver))
    header, trace_id, _ = traceparent()
    answer = await post(client, router, headers={"traceparent": header})
    assert answer.served_by == "fallback"
    spans = await eventually(
        lambda: len(receiver.trace(trace_id)) >= 3 and receiver.trace(trace_id), 20, "spans"
    )
    _, (refused, to_cloud) = by_role(spans)
    assert refused.attributes["error.type"] == "connect_error"
    assert "http.response.status_code" not in refused.attributes
    assert cloud.requests[-1].headers["traceparent"] == f"00-{trace_id}-{to_cloud.span_id}-01"


@pytest.mark.parametrize("stream", [False, True], ids=["whole", "stream"])
async def test_prompts_and_answers_are_recorded_only_when_the_route_captures_content(
    receiver: OtlpReceiver,
    start_router: StartRouter,
    local: OpenAIStandIn,
    client: aiohttp.ClientSession,
    stream: bool,
) -> None:
    config = route_config(local.url)
    config["telemetry"] = {"captureContent": True}
    router = await start_router(config, env=telemetry_env(receiver))
    header, trace_id, _ = traceparent()
    body: dict[str, Any] = {
        "model": LOCAL_MODEL,
        "messages": [{"role": "user", "content": PROMPT}],
        "stream": stream,
    }
    answer = await post(client, router, body=body, headers={"traceparent": header})
    assert answer.status == 200
    spans = await eventually(
        lambda: len(receiver.trace(trace_id)) >= 2 and receiver.trace(trace_id), 20, "spans"
    )
    request, _ = by_role(spans)
    messages = json.loads(request.attributes["gen_ai.input.messages"])
    assert messages == [{"role": "user", "parts": [{"type": "text", "content": PROMPT}]}]
    [output] = json.loads(request.attributes["gen_ai.output.messages"])
    assert output["role"] == "assistant" and output["parts"][0]["content"]


async def test_requests_the_router_refuses_are_spans_too(
    receiver: OtlpReceiver, start_router: StartRouter, local: OpenAIStandIn, client: aiohttp.ClientSession
) -> None:
    router = await start_router(route_config(local.url), env=telemetry_env(receiver))
    header, trace_id, _ = traceparent()
    answer = await post(client, router, path="/no/such/path", headers={"traceparent": header})
    assert answer.status == 404
    spans = await eventually(lambda: receiver.trace(trace_id), 20, "the span of the refused request")
    [span] = spans
    assert span.kind == "SERVER" and span.attributes["http.response.status_code"] == 404


async def test_without_an_endpoint_requests_take_the_plain_handler_and_the_pod_gets_the_clients_traceparent(
    start_router: StartRouter, local: OpenAIStandIn, client: aiohttp.ClientSession
) -> None:
    router = await start_router(route_config(local.url))
    assert router.router.telemetry is None
    header, _, _ = traceparent()
    assert (await post(client, router, headers={"traceparent": header})).status == 200
    assert local.requests[-1].headers["traceparent"] == header


def test_the_router_does_not_import_opentelemetry_without_an_endpoint(tmp_path: Path) -> None:
    probe = (
        "import sys\n"
        "from localai_operator.router.server import create_app\n"
        "from localai_operator.wire import RouterConfig\n"
        "app = create_app(RouterConfig.model_validate({'local': {'endpoints': ['http://127.0.0.1:9/v1']}}), env={})\n"
        "print(sorted(m for m in sys.modules if m.startswith('opentelemetry')))\n"
    )
    result = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[]"


async def test_a_router_whose_collector_is_down_serves_as_usual(
    start_router: StartRouter, local: OpenAIStandIn, client: aiohttp.ClientSession
) -> None:
    env = {
        FALLBACK_API_KEY_ENV: API_KEY,
        "OTEL_EXPORTER_OTLP_ENDPOINT": f"http://127.0.0.1:{free_port()}",
        **FAST_EXPORT,
    }
    router = await start_router(route_config(local.url), env=env)
    for _ in range(20):
        assert (await post(client, router)).status == 200


def test_client_chosen_model_names_cannot_grow_a_metric_past_its_cardinality_limit() -> None:
    from localai_operator.router.telemetry import CARDINALITY_LIMIT, OVERFLOW, GenAIMetrics

    metrics = GenAIMetrics()
    for n in range(CARDINALITY_LIMIT + 50):
        metrics.record("gen_ai.server.request.duration", 0.05, (("gen_ai.request.model", f"made-up-{n}"),))
    table = metrics.series["gen_ai.server.request.duration"]
    assert len(table) == CARDINALITY_LIMIT + 1
    assert table[OVERFLOW].count == 50
    assert sum(p.count for p in table.values()) == CARDINALITY_LIMIT + 50


def test_a_value_lands_in_the_bucket_whose_upper_bound_holds_it() -> None:
    from localai_operator.router.telemetry import TTFT_BUCKETS, GenAIMetrics

    metrics = GenAIMetrics()
    for value in (0.001, 0.0011, 99.0):
        metrics.record("gen_ai.server.time_to_first_token", value, ())
    point = metrics.series["gen_ai.server.time_to_first_token"][()]
    assert point.buckets[0] == 1 and point.buckets[1] == 1 and point.buckets[len(TTFT_BUCKETS)] == 1
    assert (point.count, point.low, point.high) == (3, 0.001, 99.0)

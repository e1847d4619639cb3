"""Telemetry end to end on the real control plane: a FallbackRoute whose spec.telemetry names a receiver this test
starts (OTLP/HTTP on loopback, decoded with opentelemetry-proto); the router runs from what the operator rendered
for it (the ConfigMap's router.yaml, the Deployment's environment with its Secret reference resolved) as the
product's entry point, and a request that falls back from a failing local LocalAI to the cloud arrives as one trace
under the client's trace id, with the GenAI metrics beside it. The kwok nodes run no container: the process is
the pod's command, started here."""

from __future__ import annotations

import asyncio
import base64
import json
import secrets
import signal
import subprocess
from pathlib import Path

import openai
import pytest
from kubernetes import client

from localai_operator.router.telemetry import METRICS
from localai_operator.testing.otlp import OtlpReceiver
from localai_operator.testing.standins import Behaviour, OpenAIStandIn
from tests.helpers import ClusterAccess, wait_for
from tests.operator_process import CustomResources
from tests.unit.router.conftest import eventually
from tests.unit.router.test_entrypoint import free_port, router_command

pytestmark = pytest.mark.cluster
T = 60
MODEL = "mistral-7b-instruct"  # one the LocalAI stand-in serves
CLOUD_MODEL = "deepseek-v3.2"
CLOUD_KEY = "sk-cloud-" + secrets.token_hex(12)
PROMPT = "the secret launch code is " + secrets.token_hex(8)
FAST_EXPORT = {"OTEL_BSP_SCHEDULE_DELAY": "50", "OTEL_METRIC_EXPORT_INTERVAL": "200"}


def rendered_router(cluster: ClusterAccess, namespace: str, name: str) -> tuple[str, dict[str, str]] | None:
    """The router.yaml and the environment (Secret references resolved) the operator rendered for route `name`,
    once its Deployment carries the OTEL variables."""
    try:
        deployment = cluster.apps.read_namespaced_deployment(f"{name}-router", namespace)
    except client.ApiException:
        return None
    env: dict[str, str] = {}
    for var in deployment.spec.template.spec.containers[0].env or []:
        if var.value is not None:
            env[var.name] = var.value
        elif var.value_from is not None and var.value_from.secret_key_ref is not None:
            ref = var.value_from.secret_key_ref
            data = cluster.core.read_namespaced_secret(ref.name, namespace).data or {}
            env[var.name] = base64.b64decode(data[ref.key]).decode()
    if "OTEL_EXPORTER_OTLP_ENDPOINT" not in env:
        return None
    config_maps = cluster.core.list_namespaced_config_map(
        namespace, label_selector=f"app.kubernetes.io/instance={name}"
    ).items
    return config_maps[0].data["router.yaml"], env


async def test_a_request_that_fell_back_reaches_the_routes_collector_as_one_trace_with_the_genai_metrics(
    cluster: ClusterAccess, namespace: str, crs: CustomResources, tmp_path: Path
) -> None:
    receiver = await OtlpReceiver().start()
    local = OpenAIStandIn(name="local", behaviour=Behaviour(status=500))
    cloud = OpenAIStandIn(name="cloud", api_key=CLOUD_KEY)
    await local.start()
    await cloud.start()
    process: subprocess.Popen[bytes] | None = None
    sdk: openai.AsyncOpenAI | None = None
    try:
        secret = client.V1Secret(
            metadata=client.V1ObjectMeta(name="cloud-key"), string_data={"api-key": CLOUD_KEY}
        )
        cluster.core.create_namespaced_secret(namespace, secret)
        crs.create(
            {
                "kind": "FallbackRoute",
                "metadata": {"name": "chat"},
                "spec": {
                    "primary": {"url": local.url},
                    "fallback": {
                        "provider": "cloud-standin",
                        "baseURL": cloud.url,
                        "apiKeySecretRef": {"name": "cloud-key", "key": "api-key"},
                        "modelMap": {MODEL: CLOUD_MODEL},
                    },
                    "telemetry": {"otlpEndpoint": receiver.url},
                },
            }
        )
        found = await asyncio.to_thread(
            wait_for, lambda: rendered_router(cluster, namespace, "chat"), T, "the router rendered with OTEL"
        )
        config_text, env = found
        assert env["OTEL_EXPORTER_OTLP_ENDPOINT"] == receiver.url
        config = tmp_path / "router.yaml"
        config.write_text(config_text)
        port = free_port()
        process = subprocess.Popen(
            router_command(config, "--host", "127.0.0.1", "--port", str(port)),
            env={"PATH": "/usr/bin:/bin", **env, **FAST_EXPORT},
            stderr=subprocess.PIPE,
        )
        trace_id, parent = secrets.token_hex(16), secrets.token_hex(8)
        sdk = openai.AsyncOpenAI(
            base_url=f"http://127.0.0.1:{port}/v1",
            api_key="unused",
            max_retries=0,
            default_headers={"traceparent": f"00-{trace_id}-{parent}-01"},
        )

        async def answered() -> openai.types.chat.ChatCompletion | None:
            try:
                assert sdk is not None
                raw = await sdk.chat.completions.with_raw_response.create(
                    model=MODEL, messages=[{"role": "user", "content": PROMPT}]
                )
            except openai.APIConnectionError:
                return None
            assert raw.headers["X-Served-By"] == "fallback"
            return raw.parse()

        # Connection refused until the process listens.
        answer = await eventually(answered, 30, "the router process to answer", interval=0.1)
        spans = await eventually(
            lambda: len(receiver.trace(trace_id)) >= 3 and receiver.trace(trace_id),
            20,
            "3 spans of the trace",
        )
        assert len(spans) == 3, spans
        [request] = [s for s in spans if s.kind == "SERVER"]
        local_span, cloud_span = sorted((s for s in spans if s.kind == "CLIENT"), key=lambda s: s.start_ns)
        assert request.parent_span_id == parent
        assert local_span.parent_span_id == cloud_span.parent_span_id == request.span_id
        assert request.attributes["gen_ai.operation.name"] == "chat"
        assert request.attributes["gen_ai.request.model"] == MODEL
        assert request.attributes["gen_ai.response.model"] == answer.model
        assert request.attributes["gen_ai.usage.output_tokens"] == answer.usage.completion_tokens  # type: ignore[union-attr]
        assert request.attributes["localai_operator.served_by"] == "fallback"
        assert request.attributes["localai_operator.route"] == f"{namespace}/chat"
        assert request.resource["service.name"] == "localai-router"
        assert local_span.status == "ERROR"
        assert local_span.attributes["gen_ai.provider.name"] == "localai"
        assert local_span.attributes["server.port"] == local.port
        assert local_span.attributes["http.response.status_code"] == 500
        assert cloud_span.attributes["gen_ai.provider.name"] == "cloud-standin"
        assert cloud_span.attributes["gen_ai.request.model"] == CLOUD_MODEL
        assert cloud_span.attributes["server.port"] == cloud.port
        text = json.dumps([[s.name, s.attributes, s.resource] for s in spans])
        assert PROMPT not in text and CLOUD_KEY not in text

        # A request not streamed has no first token: the two other metrics are the streams' (unit-tested).
        wanted = {"gen_ai.client.token.usage", "gen_ai.server.request.duration"}
        await eventually(lambda: wanted <= {p.metric for p in receiver.points}, 20, f"the metrics {wanted}")
        for point in receiver.points:
            if point.metric in METRICS:
                assert point.attributes["gen_ai.request.model"] == MODEL
                assert point.attributes["gen_ai.provider.name"] == "cloud-standin"
        assert PROMPT not in json.dumps([p.attributes for p in receiver.points])
    finally:
        if sdk is not None:
            await sdk.close()
        stderr = b""
        if process is not None:
            process.send_signal(signal.SIGTERM)
            _, stderr = await asyncio.to_thread(process.communicate, timeout=30)
        await local.stop()
        await cloud.stop()
        await receiver.stop()
    assert process.returncode == 0, stderr.decode()[-2000:]
    assert CLOUD_KEY.encode() not in stderr

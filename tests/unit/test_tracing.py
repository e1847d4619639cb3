"""The operator's passes as spans, into a real OTLP/HTTP receiver on loopback: one span per pass of a key, with
the key and how the pass ended."""

from __future__ import annotations

import pytest

from localai_operator.control.queue import Key
from localai_operator.control.tracing import PassTracer, traced
from localai_operator.testing.otlp import OtlpReceiver
from tests.unit.router.conftest import eventually


async def test_each_pass_is_one_span_with_its_key_and_outcome() -> None:
    receiver = await OtlpReceiver().start()
    tracer = PassTracer.start({"OTEL_EXPORTER_OTLP_ENDPOINT": receiver.url, "OTEL_BSP_SCHEDULE_DELAY": "50"})
    assert tracer is not None
    key = Key("FallbackRoute", "team-a", "chat")

    async def done() -> None:
        return None

    async def refused() -> str:
        return "Deployment chat-router was refused: spec.replicas: Invalid value"

    async def broken() -> None:
        raise RuntimeError("a bug")

    try:
        assert await traced(tracer, key, done()) is None
        assert await traced(tracer, key, refused()) == await refused()
        with pytest.raises(RuntimeError):
            await traced(tracer, key, broken())
        spans = await eventually(lambda: len(receiver.spans) >= 3 and receiver.spans, 20, "three pass spans")
    finally:
        await tracer.providers.stop(5)
        await receiver.stop()
    assert [s.name for s in spans] == ["reconcile FallbackRoute"] * 3
    for span in spans:
        assert span.attributes["localai_operator.resource.kind"] == "FallbackRoute"
        assert span.attributes["k8s.namespace.name"] == "team-a"
        assert span.attributes["localai_operator.resource.name"] == "chat"
        assert span.resource["service.name"] == "localai-operator"
    ok, retry, error = (s.attributes for s in spans)
    assert ok["localai_operator.pass.outcome"] == "ok" and spans[0].status == "UNSET"
    assert retry["localai_operator.pass.outcome"] == "retry" and spans[1].status == "ERROR"
    assert retry["localai_operator.pass.reason"].startswith("Deployment chat-router was refused")
    assert error["localai_operator.pass.outcome"] == "error" and error["error.type"] == "RuntimeError"


async def test_without_an_endpoint_a_pass_runs_as_it_is() -> None:
    assert PassTracer.start({}) is None

    async def done() -> str:
        return "again"

    assert await traced(None, Key("LLMModel", "a", "m"), done()) == "again"

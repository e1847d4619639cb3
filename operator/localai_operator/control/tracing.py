"""One span per pass of a key (its kind, namespace and name, and how it ended), when the operator's environment
names an OTLP endpoint (`localai_operator.otel`); without one, a pass runs as it is."""

from __future__ import annotations

from collections.abc import Awaitable, Mapping
from typing import TYPE_CHECKING, Any, Final, TypeVar

from localai_operator import __version__, otel
from localai_operator.constants import OPERATOR_SERVICE_NAME

if TYPE_CHECKING:
    from opentelemetry.trace import Tracer

    from localai_operator.control.queue import Key

KIND: Final = "localai_operator.resource.kind"
NAME: Final = "localai_operator.resource.name"
NAMESPACE: Final = "k8s.namespace.name"
OUTCOME: Final = "localai_operator.pass.outcome"
REASON: Final = "localai_operator.pass.reason"
# A retry reason quotes the API server: bounded on the span.
REASON_LIMIT: Final = 1024

R = TypeVar("R")


class PassTracer:
    """The operator's tracer: `run` wraps one pass in its span."""

    def __init__(self, providers: otel.Providers) -> None:
        from opentelemetry.trace import NoOpTracerProvider, Status, StatusCode

        self.providers = providers
        tracers = providers.tracer_provider or NoOpTracerProvider()
        self.tracer: Tracer = tracers.get_tracer("localai_operator.control", __version__)
        self.error = Status(StatusCode.ERROR)

    @classmethod
    def start(cls, env: Mapping[str, str]) -> PassTracer | None:
        providers = otel.start(OPERATOR_SERVICE_NAME, env, metrics=False)
        return cls(providers) if providers is not None else None

    async def run(self, key: Key, work: Awaitable[R]) -> R:
        """Awaits one pass inside a span; its outcome is `ok` (it returned nothing), `retry` (it returned why it
        must run again) or `error` (it raised)."""
        span = self.tracer.start_span(
            f"reconcile {key.kind}", attributes={KIND: key.kind, NAMESPACE: key.namespace, NAME: key.name}
        )
        try:
            result = await work
        except BaseException as err:
            span.set_attributes({OUTCOME: "error", "error.type": type(err).__name__})
            span.set_status(self.error)
            span.end()
            raise
        attributes: dict[str, Any] = {OUTCOME: "ok" if result is None else "retry"}
        if result is not None:
            attributes[REASON] = str(getattr(result, "reason", result))[:REASON_LIMIT]
            span.set_status(self.error)
        span.set_attributes(attributes)
        span.end()
        return result


async def traced(tracer: PassTracer | None, key: Key, work: Awaitable[R]) -> R:
    """`work` (the pass of `key`), in a span when the operator traces."""
    if tracer is None:
        return await work
    return await tracer.run(key, work)

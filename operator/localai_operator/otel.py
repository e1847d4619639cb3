"""OpenTelemetry's SDK for one process (the operator or a router), started only when its environment names an
OTLP endpoint: spans and metrics batched and sent over OTLP/HTTP (protobuf) from the SDK's own threads.

Nothing here imports the SDK until `start` finds an endpoint, so a process without one pays nothing for it; the
packages are the `telemetry` extra, which the image installs. The standard variables are read from the mapping
given (the process's environment): OTEL_EXPORTER_OTLP_ENDPOINT (or the per-signal _TRACES_ / _METRICS_ ones),
OTEL_EXPORTER_OTLP_HEADERS, OTEL_SERVICE_NAME, OTEL_RESOURCE_ATTRIBUTES, OTEL_TRACES_SAMPLER(_ARG),
OTEL_TRACES_EXPORTER / OTEL_METRICS_EXPORTER (`none` turns one off), OTEL_METRIC_EXPORT_INTERVAL,
OTEL_BSP_SCHEDULE_DELAY and OTEL_SDK_DISABLED; the exporters and the batch processor read their other settings
(timeouts, TLS, queue sizes) from the process's environment themselves.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
import urllib.parse
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Final

from localai_operator import __version__

if TYPE_CHECKING:
    from collections.abc import Callable

    from opentelemetry.sdk.metrics.export import MetricExporter
    from opentelemetry.sdk.resources import Resource
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.sampling import Sampler

log = logging.getLogger(__name__)

ENDPOINT: Final = "OTEL_EXPORTER_OTLP_ENDPOINT"
TRACES_ENDPOINT: Final = "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT"
METRICS_ENDPOINT: Final = "OTEL_EXPORTER_OTLP_METRICS_ENDPOINT"
HEADERS: Final = "OTEL_EXPORTER_OTLP_HEADERS"
SERVICE_NAME: Final = "OTEL_SERVICE_NAME"
RESOURCE_ATTRIBUTES: Final = "OTEL_RESOURCE_ATTRIBUTES"
SAMPLER: Final = "OTEL_TRACES_SAMPLER"
SAMPLER_ARG: Final = "OTEL_TRACES_SAMPLER_ARG"
METRIC_INTERVAL: Final = "OTEL_METRIC_EXPORT_INTERVAL"
SCHEDULE_DELAY: Final = "OTEL_BSP_SCHEDULE_DELAY"
# What the SDK's default metric export interval is, in milliseconds.
DEFAULT_METRIC_INTERVAL_MS: Final = 60_000
_SIGNAL_PATHS: Final = {"TRACES": "v1/traces", "METRICS": "v1/metrics"}
PIP_EXTRA: Final = "localai-operator[telemetry]"


def _number(env: Mapping[str, str], name: str) -> float | None:
    """A positive number of milliseconds from `env`, None when unset or unreadable (the SDK's default)."""
    try:
        value = float(env.get(name, "") or "nan")
    except ValueError:
        log.warning("%s is not a number: using the default", name)
        return None
    return value if value > 0 else None


def configured(env: Mapping[str, str]) -> bool:
    """The environment names an OTLP endpoint and does not disable the SDK."""
    if env.get("OTEL_SDK_DISABLED", "").strip().lower() == "true":
        return False
    return any(env.get(name, "").strip() for name in (ENDPOINT, TRACES_ENDPOINT, METRICS_ENDPOINT))


def signal_endpoint(env: Mapping[str, str], signal: str) -> str | None:
    """Where one signal (TRACES or METRICS) goes: its own variable as given, else the base endpoint plus the
    signal's path (OTLP/HTTP's rule); None when neither is set or the signal's exporter is `none`."""
    exporter = env.get(f"OTEL_{signal}_EXPORTER", "otlp").strip().lower()
    if exporter == "none":
        return None
    if exporter not in ("otlp", ""):
        log.warning("OTEL_%s_EXPORTER=%s is not supported here: exporting over OTLP", signal, exporter)
    own = env.get(f"OTEL_EXPORTER_OTLP_{signal}_ENDPOINT", "").strip()
    if own:
        return own
    base = env.get(ENDPOINT, "").strip()
    if not base:
        return None
    return base.rstrip("/") + "/" + _SIGNAL_PATHS[signal]


def header_values(env: Mapping[str, str]) -> list[str]:
    """The values of the exporters' headers (a backend's API key, usually): what logs must never show."""
    return [
        urllib.parse.unquote(value.strip())
        for name in (HEADERS, "OTEL_EXPORTER_OTLP_TRACES_HEADERS", "OTEL_EXPORTER_OTLP_METRICS_HEADERS")
        for _, sep, value in (item.partition("=") for item in env.get(name, "").split(","))
        if sep and value.strip()
    ]


def _headers(env: Mapping[str, str], signal: str) -> dict[str, str]:
    from opentelemetry.util.re import parse_env_headers

    headers = dict(parse_env_headers(env.get(HEADERS, ""), liberal=True))
    headers.update(parse_env_headers(env.get(f"OTEL_EXPORTER_OTLP_{signal}_HEADERS", ""), liberal=True))
    return headers


def resource_attributes(env: Mapping[str, str], service: str) -> dict[str, str]:
    """OTEL_RESOURCE_ATTRIBUTES (`k=v,k2=v2`, percent-encoded values), then the service name and version."""
    attributes: dict[str, str] = {}
    for item in env.get(RESOURCE_ATTRIBUTES, "").split(","):
        key, sep, value = item.partition("=")
        if sep and key.strip():
            attributes[key.strip()] = urllib.parse.unquote(value.strip())
    attributes["service.name"] = env.get(SERVICE_NAME, "").strip() or attributes.get("service.name", service)
    attributes.setdefault("service.version", __version__)
    return attributes


def sampler(env: Mapping[str, str]) -> Sampler:
    """OTEL_TRACES_SAMPLER as the SDK reads it (parent-based always-on by default)."""
    from opentelemetry.sdk.trace.sampling import (
        ALWAYS_OFF,
        ALWAYS_ON,
        ParentBased,
        TraceIdRatioBased,
    )

    name = env.get(SAMPLER, "parentbased_always_on").strip().lower() or "parentbased_always_on"
    try:
        ratio = min(1.0, max(0.0, float(env.get(SAMPLER_ARG, "1.0") or "1.0")))
    except ValueError:
        log.warning("%s is not a number: sampling every trace", SAMPLER_ARG)
        ratio = 1.0
    root = {
        "always_on": ALWAYS_ON,
        "always_off": ALWAYS_OFF,
        "traceidratio": TraceIdRatioBased(ratio),
    }
    if name in root:
        return root[name]
    if name.startswith("parentbased_") and name.removeprefix("parentbased_") in root:
        return ParentBased(root[name.removeprefix("parentbased_")])
    log.warning("%s=%s is not supported: using parentbased_always_on", SAMPLER, name)
    return ParentBased(ALWAYS_ON)


def in_thread(work: Callable[[], object]) -> asyncio.Future[None]:
    """`work` (an export: blocking, retrying while a collector is down) on a daemon thread, so that it never
    blocks the event loop nor holds the process's exit; the future is done when it is."""
    loop = asyncio.get_running_loop()
    done: asyncio.Future[None] = loop.create_future()

    def finished() -> None:
        if not done.done():
            done.set_result(None)

    def run() -> None:
        try:
            work()
        except Exception:
            log.exception("OpenTelemetry export failed")
        finally:
            with contextlib.suppress(RuntimeError):  # the loop is closed: nobody waits any more
                loop.call_soon_threadsafe(finished)

    threading.Thread(target=run, name="otel-export", daemon=True).start()
    return done


async def within(done: asyncio.Future[None], seconds: float) -> None:
    """Waits for `done` at most `seconds` (it goes on after that)."""
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(asyncio.shield(done), seconds)


@dataclass(frozen=True)
class Providers:
    """The process's tracer provider and metric exporter (either may be off), and the resource both describe;
    shut down once when the process stops. Metrics are the caller's to aggregate and hand to the exporter every
    `metric_interval` seconds (the router's are a few histograms it keeps cheaper than the SDK's instruments)."""

    tracer_provider: TracerProvider | None
    metric_exporter: MetricExporter | None
    resource: Resource
    metric_interval: float = DEFAULT_METRIC_INTERVAL_MS / 1000

    def shutdown(self) -> None:
        """Sends the spans batched and stops the exporters (blocking)."""
        if self.tracer_provider is not None:
            self.tracer_provider.shutdown()
        if self.metric_exporter is not None:
            self.metric_exporter.shutdown()

    async def stop(self, seconds: float) -> None:
        """`shutdown` from a daemon thread, awaited at most `seconds`."""
        await within(in_thread(self.shutdown), seconds)


def start(service: str, env: Mapping[str, str], *, metrics: bool = True) -> Providers | None:
    """The SDK's providers for this process, exporting where `env` says; None when it names no endpoint or
    the packages are missing (said in the log, the process runs on without telemetry)."""
    if not configured(env):
        return None
    protocol = env.get("OTEL_EXPORTER_OTLP_PROTOCOL", "http/protobuf").strip().lower()
    if protocol not in ("http/protobuf", ""):
        log.warning(
            "OTEL_EXPORTER_OTLP_PROTOCOL=%s is not supported: exporting OTLP over HTTP (protobuf)", protocol
        )
    try:
        from opentelemetry.exporter.otlp.proto.http.metric_exporter import OTLPMetricExporter
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
        from opentelemetry.sdk.resources import Resource
        from opentelemetry.sdk.trace import TracerProvider
        from opentelemetry.sdk.trace.export import BatchSpanProcessor
    except ImportError as err:
        log.error(
            "%s is set but the OpenTelemetry packages are missing (%s; install %s): running without telemetry",
            ENDPOINT,
            err,
            PIP_EXTRA,
        )
        return None
    resource = Resource(resource_attributes(env, service))
    tracer_provider = None
    traces = signal_endpoint(env, "TRACES")
    if traces is not None:
        tracer_provider = TracerProvider(resource=resource, sampler=sampler(env), shutdown_on_exit=False)
        # Batched, from the SDK's worker thread: a request never waits for an export, and a full queue drops
        # spans instead of growing.
        tracer_provider.add_span_processor(
            BatchSpanProcessor(
                OTLPSpanExporter(endpoint=traces, headers=_headers(env, "TRACES")),
                schedule_delay_millis=_number(env, SCHEDULE_DELAY),
            )
        )
    metric_exporter = None
    target = signal_endpoint(env, "METRICS") if metrics else None
    if target is not None:
        metric_exporter = OTLPMetricExporter(endpoint=target, headers=_headers(env, "METRICS"))
    if tracer_provider is None and metric_exporter is None:
        return None
    log.info(
        "OpenTelemetry: traces to %s, metrics to %s (OTLP/HTTP)",
        traces or "nowhere",
        target or "nowhere",
    )
    interval = max(100.0, _number(env, METRIC_INTERVAL) or DEFAULT_METRIC_INTERVAL_MS) / 1000
    return Providers(tracer_provider, metric_exporter, resource, interval)

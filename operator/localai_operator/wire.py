"""The wire format between the operator and the router: the router's configuration file (exactly what the rendered FallbackRoute ConfigMap holds), and the route
policy models that `FallbackRoute.spec.policy` reuses: one definition of every policy field, its bounds,
default and description, so the CRD and the router can never disagree.

The file carries no secret: keys are read from the environment variables and directories named here.
"""

from __future__ import annotations

import types
import typing
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Final, Literal, Union

import yaml
from pydantic import BaseModel, ConfigDict, Field, model_validator
from pydantic.alias_generators import to_camel

from localai_operator.constants import (
    FALLBACK_API_KEY_ENV,
    HOLYSHEEP_BASE_URL,
    HOLYSHEEP_DEFAULT_MODEL,
)

MIB: Final = 1024 * 1024
DEFAULT_MAX_REQUEST_BYTES: Final = 16 * MIB
# What the router holds of request bodies at once when the config does not say (the renderer derives it
# from the router container's memory limit): six 16 MiB bodies next to a ~60 MiB process fit 256 MiB.
DEFAULT_BODY_BUFFER_BYTES: Final = 96 * MIB
# The caps of the overload guard when the config does not say (what the renderer derives from 256 Mi).
DEFAULT_MAX_CONNECTIONS: Final = 1024
URL_PATTERN: Final = r"^https?://[^\s]+$"
# The cap of a prompt-aware first-token budget when policy.maxFirstTokenTimeoutMs is unset.
DEFAULT_MAX_FIRST_TOKEN_TIMEOUT_MS: Final = 60_000

# The OpenAI API paths a generic OpenAI-compatible provider serves (relative to its /v1 base URL); a path
# not listed here is never sent to the cloud.
DEFAULT_CLOUD_PATHS: Final = (
    "/chat/completions",
    "/completions",
    "/embeddings",
    "/responses",
    "/moderations",
    "/audio/speech",
    "/audio/transcriptions",
    "/audio/translations",
    "/images/generations",
)


class _Model(BaseModel):
    """camelCase on the wire and frozen. Unknown keys are ignored by the models themselves (an older operator
    reads a newer CRD) and refused by `RouterConfig.from_yaml` (a typo in the file must not go unnoticed)."""

    model_config = ConfigDict(alias_generator=to_camel, populate_by_name=True, frozen=True, extra="ignore")


class CircuitBreaker(_Model):
    failure_threshold: int = Field(
        default=5,
        ge=1,
        le=1000,
        description="Consecutive failures of one local endpoint (one pod) that open its breaker.",
    )
    open_seconds: float = Field(
        default=30,
        gt=0,
        le=3600,
        description="How long an open breaker skips its endpoint; then one probe request decides.",
    )


class RateLimit(_Model):
    requests_per_second: float = Field(
        gt=0, le=100000, description="Sustained requests per second per router replica."
    )
    burst: int = Field(default=50, ge=1, le=100000, description="Bucket size: requests allowed at once.")


class Affinity(_Model):
    enabled: bool = Field(
        default=True,
        description=(
            "Send a chat, completion or responses request to the pod that served its prompt's start (or its "
            "session) most recently, while that pod has a free slot: llama.cpp answers a prompt whose start it "
            "still holds 10-60x sooner. A new prompt goes where consistent hashing puts it, within a bounded "
            "load; a busy pod or an open breaker sends the request to the pod with the fewest in flight. false: "
            "always the pod with the fewest requests in flight."
        ),
    )
    prefix_bytes: int = Field(
        default=4096,
        ge=64,
        le=65536,
        description=(
            "How much of the prompt keys a request: its first bytes as the client's JSON sent them, the system "
            "message and the turns up to the first user message. A session (the X-Session-Id header, or the "
            "body's prompt_cache_key, session_id, session or user) is the key instead when present."
        ),
    )


class Policy(_Model):
    model_config = _Model.model_config | {
        "json_schema_extra": {
            "x-kubernetes-validations": [
                {
                    "rule": "!has(self.maxFirstTokenTimeoutMs) || !has(self.firstTokenTimeoutMs)"
                    " || self.maxFirstTokenTimeoutMs >= self.firstTokenTimeoutMs",
                    "message": "maxFirstTokenTimeoutMs is below firstTokenTimeoutMs: raise it (equal turns the "
                    "prompt-aware budget off)",
                }
            ]
        }
    }

    first_token_timeout_ms: int = Field(
        default=3000,
        ge=1,
        le=600000,
        description=(
            "Fall back when local has not produced its first content token this long after the router "
            "started asking it (the request body read), streaming or not: a role-only chunk, an empty delta "
            "or a keep-alive does not count. Chat, completions and responses; embeddings and rerank count "
            "their first byte; media endpoints have no budget. Applies only when a fallback exists. Chat, "
            "completions and responses get more on a pod whose prefill rate the router has learned: the "
            "prompt's estimated tokens at that rate, up to maxFirstTokenTimeoutMs."
        ),
    )
    max_first_token_timeout_ms: int | None = Field(
        default=None,
        ge=1,
        le=600000,
        description=(
            "The most a first-token budget grows for a long prompt: firstTokenTimeoutMs plus the prompt's "
            "estimated tokens divided by the pod's learned prefill rate, capped here. Unset: 60000, or "
            "firstTokenTimeoutMs when larger. Equal to firstTokenTimeoutMs: every prompt gets the fixed budget."
        ),
    )
    request_timeout_seconds: float = Field(
        default=300, gt=0, le=86400, description="Whole-request timeout for each upstream attempt."
    )
    connect_timeout_ms: int = Field(
        default=2000,
        ge=1,
        le=60000,
        description=(
            "TCP connect timeout to one local endpoint. The default outlasts one dropped SYN (a full accept "
            "queue retries after 1 s); a failed connect is retried once on another endpoint."
        ),
    )
    sensitive: bool = Field(default=False, description="true: never send this route's traffic to the cloud.")
    circuit_breaker: CircuitBreaker = Field(
        default_factory=CircuitBreaker, description="Per local endpoint (per pod)."
    )
    rate_limit: RateLimit | None = Field(
        default=None, description="Token bucket per router replica; 429 with Retry-After beyond it."
    )
    max_request_bytes: int = Field(
        default=DEFAULT_MAX_REQUEST_BYTES,
        ge=1024,
        le=1024 * MIB,
        description=(
            "Largest request body accepted (decompressed); 413 beyond. The router holds a bounded total "
            "of request bytes at once, derived from its memory limit: raise both together."
        ),
    )
    client_body_timeout_seconds: float = Field(
        default=30,
        gt=0,
        le=3600,
        description=(
            "Longest pause between two reads of a request body (nginx's client_body_timeout): a body that "
            "stalls longer is answered 408 and its connection closed. The whole body must also arrive within "
            "requestTimeoutSeconds."
        ),
    )
    queue_timeout_ms: int = Field(
        default=30000,
        ge=0,
        le=600000,
        description=(
            "When every ready pod's slots for the model are busy (LLMModel.spec.parallel per pod), a request "
            "that may go to the cloud goes there at once (reason saturated); one that may not (sensitive "
            "route, no fallback, the spend cap reached, a path the provider lacks) waits up to this long for a "
            "free slot, then gets 503 with Retry-After. 0: 503 at once."
        ),
    )
    cold_start_allowance_seconds: float = Field(
        default=120,
        ge=0,
        le=3600,
        description=(
            "When the pool has no ready pod (scaled to zero, downloading or loading its models), a request that "
            "may go to the cloud goes there at once (reason pool_cold); one that may not waits for a pod up to "
            "firstTokenTimeoutMs plus this, then gets 503 with Retry-After. 0: wait firstTokenTimeoutMs only."
        ),
    )
    affinity: Affinity = Field(
        default_factory=Affinity,
        description="Prefix-aware balancing between the pool's pods, bounded by their free slots.",
    )

    @model_validator(mode="after")
    def _cap_above_base(self) -> Policy:
        cap = self.max_first_token_timeout_ms
        if cap is not None and cap < self.first_token_timeout_ms:
            raise ValueError(
                f"policy.maxFirstTokenTimeoutMs ({cap}) is below policy.firstTokenTimeoutMs "
                f"({self.first_token_timeout_ms}): raise it (equal turns the prompt-aware budget off)"
            )
        return self

    @property
    def first_token_cap_ms(self) -> int:
        """The most a prompt-aware first-token budget may be."""
        if self.max_first_token_timeout_ms is not None:
            return self.max_first_token_timeout_ms
        return max(self.first_token_timeout_ms, DEFAULT_MAX_FIRST_TOKEN_TIMEOUT_MS)


class RouteRef(_Model):
    name: str = "default"
    namespace: str = "default"


class SliceWatch(_Model):
    service: str = Field(description="The headless Service whose EndpointSlices list the pool's pods.")
    namespace: str = Field(description="Its namespace.")


class Discovery(_Model):
    url: str = Field(
        pattern=URL_PATTERN,
        description="Base URL whose host name resolves to one address per ready pod (a headless Service).",
    )
    interval_seconds: float = Field(
        default=5, gt=0, le=3600, description="How often the name is re-resolved."
    )
    endpoint_slices: SliceWatch | None = Field(
        default=None,
        description="Follow the Service's EndpointSlices through the Kubernetes API instead (a pod's readiness "
        "within a second); DNS stays the fallback while the watch is unavailable.",
    )


class LocalUpstream(_Model):
    endpoints: list[str] = Field(
        default_factory=list, description="Base URLs of local LocalAI servers, ending in /v1."
    )
    discovery: Discovery | None = Field(default=None, description="Pods found by DNS, added to endpoints.")
    api_key_env: str | None = Field(
        default=None, description="Environment variable holding the key local LocalAI expects, if any."
    )
    slots: dict[str, int] = Field(
        default_factory=dict,
        description=(
            "Requests each endpoint (pod) answers at once, per model (llama.cpp slots). A model listed here "
            "is never sent to a pod whose slots for it are all busy; unlisted models have no limit."
        ),
    )
    pool: str | None = Field(
        default=None,
        description=(
            "The InferencePool behind discovery. With it, no ready pod means the pool is cold (scaled to zero "
            "or starting), not broken: requests are bridged to the cloud or held while it comes up."
        ),
    )

    @model_validator(mode="after")
    def _somewhere_to_go(self) -> LocalUpstream:
        if not self.endpoints and self.discovery is None:
            raise ValueError("local: set endpoints (base URLs) or discovery (a headless Service URL)")
        if self.pool is not None and self.discovery is None:
            raise ValueError("local.pool needs local.discovery: a pool's pods are found by DNS")
        bad = sorted(model for model, count in self.slots.items() if count < 1)
        if bad:
            raise ValueError(f"local.slots: every model has at least one slot ({', '.join(bad)})")
        return self


SpendPeriod = Literal["daily", "monthly"]


class SpendCap(_Model):
    amount: float = Field(
        gt=0,
        le=1e9,
        description=(
            "Most the route may spend on the cloud per period, in the prices' currency (USD): once reached, "
            "the route is local-only (reason budget_exhausted) until the period ends."
        ),
    )
    period: SpendPeriod = Field(
        default="monthly", description="daily or monthly, in UTC: when the spend starts again from zero."
    )


class Carried(_Model):
    period: str = Field(description="The period the amount belongs to (UTC: 2026-12 or 2026-12-01).")
    amount: float = Field(ge=0, description="Spent in that period by router pods that no longer run.")


class SpendShare(_Model):
    """Written by the operator: how a spend cap is shared between the route's router replicas."""

    replicas: int = Field(
        default=1,
        ge=1,
        le=1000,
        description="Router replicas sharing the cap: each may spend its share of what is left.",
    )
    carried: Carried | None = Field(
        default=None, description="What the route's earlier router pods spent this period."
    )


class Fallback(_Model):
    provider: str = "holysheep"
    base_url: str = Field(default=HOLYSHEEP_BASE_URL, alias="baseURL", pattern=URL_PATTERN)
    api_key_env: str = FALLBACK_API_KEY_ENV
    model_map: dict[str, str] = Field(default_factory=dict)
    default_model: str = HOLYSHEEP_DEFAULT_MODEL
    # Output tokens; kept from before input and output were priced apart.
    price_per_million_tokens: float = Field(default=0.0, ge=0)
    input_price_per_million_tokens: float | None = Field(default=None, ge=0)
    output_price_per_million_tokens: float | None = Field(default=None, ge=0)
    paths: list[str] = Field(default_factory=lambda: list(DEFAULT_CLOUD_PATHS))
    price_per_request: dict[str, float] = Field(
        default_factory=dict,
        description="USD per request on paths whose answers carry no token usage (audio, images, moderations), "
        'by path relative to /v1, e.g. {"/images/generations": 0.04}. On a route with a spend cap, such a path '
        "without a price here never goes to the cloud: its spend could not be counted.",
    )
    spend_cap: SpendCap | None = None
    spend_share: SpendShare | None = None
    proxy_url: str | None = Field(
        default=None,
        alias="proxyURL",
        description="HTTP proxy for the cloud hop (CONNECT, TLS inside); unset: HTTPS_PROXY / HTTP_PROXY from the "
        "environment, with NO_PROXY.",
    )
    proxy_username_env: str | None = Field(
        default=None, description="Environment variable holding the proxy's basic-auth user name."
    )
    proxy_password_env: str | None = Field(
        default=None, description="Environment variable holding the proxy's basic-auth password."
    )

    @property
    def input_price(self) -> float:
        """Per million prompt tokens."""
        return self.input_price_per_million_tokens or 0.0

    @property
    def output_price(self) -> float:
        """Per million completion tokens: outputPricePerMillionTokens, else pricePerMillionTokens."""
        if self.output_price_per_million_tokens is not None:
            return self.output_price_per_million_tokens
        return self.price_per_million_tokens

    def cost(self, prompt_tokens: int, completion_tokens: int) -> float:
        return (prompt_tokens * self.input_price + completion_tokens * self.output_price) / 1e6

    def cloud_model(self, local_model: str | None, cloud_lists: bool = False) -> str:
        """The provider's name for a request's model: mapped, else kept when the provider lists it."""
        if local_model is not None:
            mapped = self.model_map.get(local_model)
            if mapped is not None:
                return mapped
            if cloud_lists:
                return local_model
        return self.default_model


class Auth(_Model):
    key_directories: list[str] = Field(
        min_length=1,
        description="Directories of client keys (mounted Secrets): each file is one key, its name the key's name.",
    )


class Server(_Model):
    body_buffer_bytes: int = Field(
        default=DEFAULT_BODY_BUFFER_BYTES,
        ge=MIB,
        description="Request body bytes held at once; requests beyond it wait for room (rendered from the memory limit).",
    )
    header_timeout_seconds: float = Field(
        default=30,
        gt=0,
        le=3600,
        description="A connection must deliver a request's headers within this (also the idle keep-alive time).",
    )
    max_connections: int = Field(
        default=DEFAULT_MAX_CONNECTIONS,
        ge=1,
        le=1_000_000,
        description="Client connections served at once; a request on a connection beyond it is answered 503 "
        "router_overloaded (rendered from the memory limit).",
    )
    max_waiting: int = Field(
        default=DEFAULT_MAX_CONNECTIONS // 2,
        ge=0,
        le=1_000_000,
        description="Requests waiting at once for a slot, a pod or room for their body; one more is answered 503 "
        "router_overloaded (rendered from the memory limit).",
    )
    state_directory: str | None = Field(
        default=None,
        description="A writable directory (an emptyDir) where the router keeps its spend ledger across restarts.",
    )


class Telemetry(_Model):
    """What the router's spans carry beyond the defaults; whether it exports at all is its environment's
    OTEL_EXPORTER_OTLP_ENDPOINT (docs/router.md#telemetry)."""

    propagate_to_cloud: bool = Field(
        default=False,
        description=(
            "Send the cloud attempt's W3C traceparent and tracestate to the fallback provider. Off by default: the "
            "provider is a third party outside the cluster, and the trace is whole without it (the router's own span "
            "times the cloud call). Local pods always get it."
        ),
    )
    capture_content: bool = Field(
        default=False,
        description=(
            "Record prompts and answers in the request's span (gen_ai.input.messages, gen_ai.output.messages, up to "
            "64 KiB each). SENSITIVE: whoever reads the traces reads what clients asked and got. Off by default."
        ),
    )


class RouterConfig(_Model):
    route: RouteRef = RouteRef()
    local: LocalUpstream
    fallback: Fallback | None = None
    policy: Policy = Policy()
    auth: Auth | None = None
    server: Server = Server()
    telemetry: Telemetry | None = None

    @model_validator(mode="after")
    def _sensitive_has_no_fallback(self) -> RouterConfig:
        if self.policy.sensitive and self.fallback is not None:
            raise ValueError(
                "policy.sensitive is true, so fallback must be omitted: sensitive traffic never leaves"
            )
        return self

    @classmethod
    def load(cls, path: str | Path) -> RouterConfig:
        return cls.from_yaml(Path(path).read_bytes())

    @classmethod
    def from_yaml(cls, text: str | bytes) -> RouterConfig:
        """Parse the file's content; raises yaml.YAMLError or ValueError (pydantic's ValidationError is one)."""
        data = yaml.safe_load(text)
        if data is None:
            data = {}
        if not isinstance(data, dict):
            raise ValueError("the router config must be a mapping at the top level")
        unknown = unknown_keys(cls, data)
        if unknown:
            raise ValueError(
                "unknown key(s) in the router config: "
                + ", ".join(unknown)
                + " (check the spelling and case)"
            )
        return cls.model_validate(data)

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.model_dump(mode="json", by_alias=True, exclude_none=True), sort_keys=False)


def _models_in(annotation: Any) -> list[type[BaseModel]]:
    """The pydantic models a field's annotation can hold directly or as list items."""
    origin = typing.get_origin(annotation)
    if origin in (Union, types.UnionType):
        return [m for arg in typing.get_args(annotation) for m in _models_in(arg)]
    if origin is list:
        return [m for arg in typing.get_args(annotation) for m in _models_in(arg)]
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return [annotation]
    return []


def unknown_keys(model: type[BaseModel], data: Any, path: str = "") -> list[str]:
    """Dotted paths of keys in `data` that `model` (recursively) does not define, by alias or by name."""
    if not isinstance(data, dict):
        return []
    fields: dict[str, Any] = {}
    for name, info in model.model_fields.items():
        fields[info.alias or name] = info.annotation
        fields[name] = info.annotation
    found: list[str] = []
    for key, value in data.items():
        where = f"{path}{key}"
        if key not in fields:
            found.append(where)
            continue
        for sub in _models_in(fields[key]):
            items = value if isinstance(value, list) else [value]
            for index, item in enumerate(items):
                suffix = f"[{index}]" if isinstance(value, list) else ""
                found.extend(unknown_keys(sub, item, f"{where}{suffix}."))
    return found


# The spend figures the router publishes (`/metrics` label values) and the operator reads back, per UTC period.
SPEND: Final = "spend"
AVOIDED: Final = "avoided"


def period_of(period: SpendPeriod, wall: float) -> str:
    """The UTC period `wall` (Unix seconds) falls in: 2026-12-01 (daily) or 2026-12 (monthly)."""
    moment = datetime.fromtimestamp(wall, UTC)
    return moment.strftime("%Y-%m-%d" if period == "daily" else "%Y-%m")

"""FallbackRoute: how clients reach a pool, local first, then a cloud OpenAI-compatible provider."""

from __future__ import annotations

from typing import ClassVar

from pydantic import Field, model_validator

from localai_operator.api.base import Condition, CustomResource, LocalObjectRef, Resources, SecretKeyRef, Spec
from localai_operator.api.kinds import FALLBACK_ROUTE
from localai_operator.constants import (
    HOLYSHEEP_BASE_URL,
    HOLYSHEEP_DEFAULT_MODEL,
    HOLYSHEEP_PRICE_PER_MILLION,
)


class Primary(Spec):
    model_config = Spec.model_config | {
        "json_schema_extra": {
            "x-kubernetes-validations": [
                {
                    "rule": "has(self.poolRef) != has(self.url)",
                    "message": "set exactly one of primary.poolRef or primary.url",
                }
            ]
        }
    }

    @model_validator(mode="after")
    def _exactly_one_primary(self) -> Primary:
        if (self.pool_ref is None) == (self.url is None):
            raise ValueError("set exactly one of primary.poolRef or primary.url")
        return self

    pool_ref: LocalObjectRef | None = Field(
        default=None, description="An InferencePool in the same namespace."
    )
    url: str | None = Field(
        default=None,
        pattern=r"^https?://[^\s]+$",
        max_length=2048,
        description="A LocalAI outside the cluster: its OpenAI base URL, ending in /v1.",
    )


class Fallback(Spec):
    enabled: bool = Field(
        default=True, description="false keeps the settings but sends nothing to the cloud."
    )
    provider: str = Field(
        default="holysheep", max_length=63, description="Provider name, for metrics and logs."
    )
    base_url: str = Field(
        default=HOLYSHEEP_BASE_URL,
        alias="baseURL",
        pattern=r"^https?://[^\s]+$",
        max_length=2048,
        description="OpenAI-compatible base URL of the provider.",
    )
    api_key_secret_ref: SecretKeyRef = Field(description="Secret key holding the provider's API key.")
    model_map: dict[str, str] = Field(
        default_factory=dict, description="Local model name -> cloud model name."
    )
    default_model: str = Field(
        default=HOLYSHEEP_DEFAULT_MODEL,
        min_length=1,
        description="Cloud model for local models not in modelMap.",
    )
    price_per_million_tokens: float = Field(
        default=HOLYSHEEP_PRICE_PER_MILLION,
        ge=0,
        description="USD per million output tokens, for the cost metric.",
    )


class CircuitBreaker(Spec):
    failure_threshold: int = Field(
        default=5, ge=1, le=1000, description="Consecutive local failures that open it."
    )
    open_seconds: int = Field(default=30, ge=1, le=3600, description="How long local is skipped once open.")


class RateLimit(Spec):
    requests_per_second: float = Field(
        gt=0, le=100000, description="Sustained requests per second per router replica."
    )
    burst: int = Field(default=50, ge=1, le=100000, description="Bucket size.")


class Policy(Spec):
    first_token_timeout_ms: int = Field(
        default=3000, ge=1, le=600000, description="Fall back when local has not started answering by then."
    )
    request_timeout_seconds: int = Field(default=300, ge=1, le=86400, description="Whole-request timeout.")
    connect_timeout_ms: int = Field(default=1000, ge=1, le=60000, description="TCP connect timeout to local.")
    sensitive: bool = Field(default=False, description="true: never send this route's traffic to the cloud.")
    circuit_breaker: CircuitBreaker = Field(default_factory=CircuitBreaker)
    rate_limit: RateLimit | None = Field(
        default=None, description="Token bucket; 429 with Retry-After beyond it."
    )


class FallbackRouteSpec(Spec):
    model_config = Spec.model_config | {
        "json_schema_extra": {
            "x-kubernetes-validations": [
                {
                    "rule": "!(has(self.policy) && has(self.policy.sensitive) && self.policy.sensitive"
                    " && has(self.fallback) && (!has(self.fallback.enabled) || self.fallback.enabled))",
                    "message": "a sensitive route never calls the cloud: remove spec.fallback or set "
                    "spec.fallback.enabled to false",
                }
            ]
        }
    }

    @model_validator(mode="after")
    def _sensitive_never_falls_back(self) -> FallbackRouteSpec:
        if self.policy.sensitive and self.fallback is not None and self.fallback.enabled:
            raise ValueError(
                "a sensitive route never calls the cloud: remove spec.fallback or set spec.fallback.enabled to false"
            )
        return self

    primary: Primary = Field(description="The local LocalAI: a pool in the cluster or a URL.")
    fallback: Fallback | None = Field(default=None, description="Cloud provider; omitted: no cloud fallback.")
    policy: Policy = Field(default_factory=Policy)
    replicas: int = Field(default=1, ge=0, le=100, description="Router replicas.")
    resources: Resources | None = Field(default=None, description="Router container resources.")


class FallbackRouteStatus(Spec):
    conditions: list[Condition] = Field(default_factory=list)
    observed_generation: int | None = None
    endpoint: str | None = Field(
        default=None, description="OpenAI base URL of the router inside the cluster."
    )
    primary: str | None = Field(default=None, description="Where local traffic goes.")


class FallbackRoute(CustomResource):
    KIND: ClassVar[str] = FALLBACK_ROUTE.kind
    PLURAL: ClassVar[str] = FALLBACK_ROUTE.plural
    SHORT_NAMES: ClassVar[list[str]] = ["fbr"]
    spec: FallbackRouteSpec
    status: FallbackRouteStatus | None = None

    @property
    def fallback_active(self) -> bool:
        fb = self.spec.fallback
        return fb is not None and fb.enabled and not self.spec.policy.sensitive

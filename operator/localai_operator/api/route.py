"""FallbackRoute: how clients reach a pool, local first, then a cloud OpenAI-compatible provider.

`spec.policy` is the router's own policy model (`wire.py`, the format the operator writes and the router reads): one definition of every field, its
bounds, default and description, for the CRD and the router alike.
"""

from __future__ import annotations

from typing import Annotated, ClassVar

from pydantic import Field, model_validator

from localai_operator.api.base import (
    DNS_LABEL,
    Condition,
    CustomResource,
    LocalObjectRef,
    Resources,
    SecretKeyRef,
    Spec,
)
from localai_operator.api.kinds import FALLBACK_ROUTE
from localai_operator.api.pool import Toleration
from localai_operator.constants import (
    HOLYSHEEP_BASE_URL,
    HOLYSHEEP_DEFAULT_MODEL,
    HOLYSHEEP_PRICE_PER_MILLION,
)
from localai_operator.wire import DEFAULT_CLOUD_PATHS, Policy, SpendCap

ApiPath = Annotated[str, Field(pattern=r"^/[A-Za-z0-9/_.-]+$", max_length=256)]


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
        description="USD per million output tokens (outputPricePerMillionTokens, when set, takes its place), for "
        "the cost metrics and the spend cap.",
    )
    input_price_per_million_tokens: float | None = Field(
        default=None,
        ge=0,
        description="USD per million input (prompt) tokens. Unset: prompt tokens are not priced.",
    )
    output_price_per_million_tokens: float | None = Field(
        default=None,
        ge=0,
        description="USD per million output (completion) tokens. Unset: pricePerMillionTokens.",
    )
    spend_cap: SpendCap | None = Field(
        default=None,
        description="Most the route may spend on the cloud per UTC day or month; then it is local-only "
        "(reason budget_exhausted, in status and metrics) until the period ends. Unset: no cap.",
    )
    price_per_request: dict[str, Annotated[float, Field(ge=0)]] = Field(
        default_factory=dict,
        max_length=64,
        description=(
            "USD per request on paths whose answers carry no token usage (audio, images, moderations), by path "
            'relative to /v1, e.g. {"/images/generations": 0.04}, for the cost metrics and the spend cap. With a '
            "spendCap, such a path without a price here never goes to the cloud: its spend could not be counted."
        ),
    )
    proxy_url: str | None = Field(
        default=None,
        alias="proxyURL",
        pattern=r"^http://[^\s]+$",
        max_length=2048,
        description=(
            "HTTP proxy for the cloud hop, e.g. http://proxy.corp:3128: an HTTP CONNECT tunnel with TLS inside, to "
            "the provider. Unset: HTTPS_PROXY / HTTP_PROXY from the router's environment, with NO_PROXY. Local "
            "traffic and the cluster's own names (*.svc, *.cluster.local) never go through a proxy."
        ),
    )
    proxy_credentials_secret_ref: LocalObjectRef | None = Field(
        default=None,
        description="A kubernetes.io/basic-auth Secret (keys username and password) for the proxy's basic auth.",
    )
    paths: list[ApiPath] = Field(
        default_factory=lambda: list(DEFAULT_CLOUD_PATHS),
        max_length=64,
        description=(
            "API paths (relative to /v1) the provider serves; a request on another path never goes to the "
            "cloud. Default: OpenAI's chat, completions, embeddings, responses, moderations, audio and "
            "image generation paths."
        ),
    )


class Auth(Spec):
    client_key_secrets: list[LocalObjectRef] = Field(
        min_length=1,
        max_length=16,
        description=(
            "Secrets in the route's namespace holding the client API keys this route accepts: every data key "
            "of each Secret is one client key, and its name is what the router's metrics and logs show "
            "(never the key). Clients send `Authorization: Bearer <key>` or `x-api-key: <key>`; a missing or "
            "wrong key is answered 401. Keys may be rotated in place: the router re-reads them."
        ),
    )


class RouteNetworkPolicy(Spec):
    enabled: bool | None = Field(
        default=None,
        description=(
            "Render a NetworkPolicy that admits, on the router's API port, only pods of the route's namespace "
            "(or allowedPods among them) and of allowedNamespaces; its metrics port only the operator and "
            "metricsNamespaces. Unset: on when the route has a cloud fallback and no spec.auth (anyone who can "
            "reach it could spend the cloud key). Needs a CNI that enforces NetworkPolicy."
        ),
    )
    allowed_pods: list[dict[str, str]] = Field(
        default_factory=list,
        max_length=16,
        description="Label selectors (matchLabels) of the pods of the route's namespace that may call it; empty: "
        "every pod of the namespace.",
    )
    allowed_namespaces: list[Annotated[str, Field(pattern=DNS_LABEL, max_length=63)]] = Field(
        default_factory=list,
        max_length=64,
        json_schema_extra={"x-kubernetes-list-type": "set"},
        description="Namespaces whose pods may also call the route.",
    )
    metrics_namespaces: list[Annotated[str, Field(pattern=DNS_LABEL, max_length=63)]] = Field(
        default_factory=list,
        max_length=16,
        json_schema_extra={"x-kubernetes-list-type": "set"},
        description="Namespaces whose pods may scrape the router's metrics port (your Prometheus); the operator "
        "always may.",
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
    policy: Policy = Field(
        default_factory=Policy, description="How the router chooses between local and the cloud."
    )
    auth: Auth | None = Field(default=None, description="Client keys; omitted: the route accepts any client.")
    network_policy: RouteNetworkPolicy = Field(
        default_factory=RouteNetworkPolicy, description="Who may reach the router pods."
    )
    replicas: int = Field(default=1, ge=0, le=100, description="Router replicas.")
    resources: Resources | None = Field(
        default=None,
        description="Router container resources. The memory limit also sets how many request bytes the router holds at once.",
    )
    node_selector: dict[str, str] = Field(
        default_factory=dict, description="Node selector for the router pods."
    )
    tolerations: list[Toleration] = Field(
        default_factory=list, description="Tolerations for the router pods."
    )


class RouteCost(Spec):
    period: str = Field(
        description="The UTC period of the figures: the spend cap's (2026-12-01 daily, 2026-12 monthly), else "
        "the month."
    )
    spend: float = Field(
        default=0.0, description="Cloud spend in the period (tokens x the fallback's prices)."
    )
    avoided: float = Field(
        default=0.0,
        description="What the local answers in the period would have cost at the fallback's prices.",
    )
    gpu_hours: float = Field(
        default=0.0, description="GPU-hours (replicas x accelerator.gpus) the primary pool ran in the period."
    )
    budget_exhausted: bool = Field(
        default=False, description="The spend cap is reached: the route is local-only until the period ends."
    )


class FallbackRouteStatus(Spec):
    conditions: list[Condition] = Field(default_factory=list)
    observed_generation: int | None = None
    endpoint: str | None = Field(
        default=None, description="OpenAI base URL of the router inside the cluster."
    )
    primary: str | None = Field(default=None, description="Where local traffic goes.")
    cost: RouteCost | None = Field(
        default=None, description="Spend, avoided cost and GPU-hours, read from the route's routers."
    )


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

    @property
    def network_policy_enabled(self) -> bool:
        """spec.networkPolicy.enabled, by default on when the route can spend a cloud key and checks no client key."""
        enabled = self.spec.network_policy.enabled
        return enabled if enabled is not None else (self.fallback_active and self.spec.auth is None)

    @property
    def open_to_cluster(self) -> bool:
        """Any pod of the cluster could spend the route's cloud key: no client keys and no NetworkPolicy."""
        return self.fallback_active and self.spec.auth is None and not self.network_policy_enabled

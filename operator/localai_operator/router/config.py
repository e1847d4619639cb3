"""The router's configuration file: exactly what the rendered FallbackRoute ConfigMap holds.

It carries no secret: the fallback API key is read from the environment variable named here.
"""

from __future__ import annotations

from pathlib import Path

import yaml
from pydantic import BaseModel, ConfigDict, Field, model_validator
from pydantic.alias_generators import to_camel

from localai_operator.constants import (
    FALLBACK_API_KEY_ENV,
    HOLYSHEEP_BASE_URL,
    HOLYSHEEP_DEFAULT_MODEL,
)


class _Model(BaseModel):
    model_config = ConfigDict(alias_generator=to_camel, populate_by_name=True, frozen=True, extra="ignore")


class RouteRef(_Model):
    name: str = "default"
    namespace: str = "default"


class LocalUpstream(_Model):
    endpoints: list[str] = Field(min_length=1, description="Base URLs of the local LocalAI, ending in /v1.")


class Fallback(_Model):
    provider: str = "holysheep"
    base_url: str = Field(default=HOLYSHEEP_BASE_URL, alias="baseURL")
    api_key_env: str = FALLBACK_API_KEY_ENV
    model_map: dict[str, str] = Field(default_factory=dict)
    default_model: str = HOLYSHEEP_DEFAULT_MODEL
    price_per_million_tokens: float = Field(default=0.0, ge=0)

    def cloud_model(self, local_model: str | None) -> str:
        if local_model is not None and local_model in self.model_map:
            return self.model_map[local_model]
        return self.default_model


class CircuitBreaker(_Model):
    failure_threshold: int = Field(default=5, ge=1)
    open_seconds: float = Field(default=30, gt=0)


class RateLimit(_Model):
    requests_per_second: float = Field(default=30, gt=0)
    burst: int = Field(default=50, ge=1)


class Policy(_Model):
    first_token_timeout_ms: int = Field(default=3000, ge=1)
    request_timeout_seconds: float = Field(default=300, gt=0)
    connect_timeout_ms: int = Field(default=1000, ge=1)
    sensitive: bool = False
    circuit_breaker: CircuitBreaker = CircuitBreaker()
    rate_limit: RateLimit | None = None


class RouterConfig(_Model):
    route: RouteRef = RouteRef()
    local: LocalUpstream
    fallback: Fallback | None = None
    policy: Policy = Policy()

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
        """Parse the file's content; raises yaml.YAMLError or pydantic.ValidationError (a ValueError)."""
        data = yaml.safe_load(text)
        return cls.model_validate(data or {})

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.model_dump(mode="json", by_alias=True, exclude_none=True), sort_keys=False)

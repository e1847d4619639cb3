"""The base model every CR schema uses, plus metadata, conditions and small shared types."""

from __future__ import annotations

from typing import Annotated, Any, ClassVar, Literal, Self

from pydantic import BaseModel, ConfigDict, Field, PlainValidator, ValidationError
from pydantic.alias_generators import to_camel

from localai_operator.api import quantity
from localai_operator.constants import API_VERSION

DNS_LABEL = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$"
DNS_SUBDOMAIN = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$"
# An object name that LocalAI also uses as a model name and a file stem.
ResourceName = Annotated[str, Field(min_length=1, max_length=63, pattern=DNS_LABEL)]


def _quantity(value: object) -> str:
    if not isinstance(value, (str, int)):
        raise ValueError(f"{value!r} is not a Kubernetes quantity: use e.g. 500m, 2, 1.5, 512Mi or 16Gi")
    return str(quantity.Quantity.parse(value).bounded())


# A non-negative integer or quantity string, kept in the canonical form the API server writes back ("1.5" is
# "1500m"). The API server checks the same grammar, so `cpu: lots` or `-1` never gets stored.
Quantity = Annotated[
    str,
    PlainValidator(_quantity, json_schema_input_type=int | str),
    Field(
        json_schema_extra={
            "x-kubernetes-int-or-string": True,
            "pattern": quantity.NONNEGATIVE_PATTERN,
            "maxLength": quantity.MAX_LENGTH,
            "minimum": 0,
        }
    ),
]


def validation_problems(err: ValidationError) -> str:
    """A ValidationError as one line a user can act on: `field.path: message; ...`."""
    return "; ".join(
        f"{'.'.join(str(p) for p in e['loc'])}: {e['msg']}" for e in err.errors(include_url=False)
    )


class Spec(BaseModel):
    """camelCase on the wire, frozen, and tolerant of fields a newer CRD may add."""

    model_config = ConfigDict(alias_generator=to_camel, populate_by_name=True, frozen=True, extra="ignore")


class SecretKeyRef(Spec):
    name: ResourceName = Field(description="Name of a Secret in the same namespace.")
    key: str = Field(min_length=1, description="Key inside the Secret.")


class LocalObjectRef(Spec):
    name: ResourceName = Field(description="Name of an object in the same namespace.")


class Resources(Spec):
    requests: dict[str, Quantity] = Field(
        default_factory=dict, description="Container requests (cpu, memory)."
    )
    limits: dict[str, Quantity] = Field(default_factory=dict, description="Container limits.")


class ObjectMeta(Spec):
    name: str
    namespace: str = "default"
    uid: str | None = None
    generation: int | None = None
    labels: dict[str, str] = Field(default_factory=dict)
    annotations: dict[str, str] = Field(default_factory=dict)


class Condition(Spec):
    """A Kubernetes API convention condition."""

    type: str
    status: Literal["True", "False", "Unknown"]
    reason: str = Field(pattern=r"^[A-Za-z]([A-Za-z0-9_,:]*[A-Za-z0-9_])?$")
    message: str = ""
    observed_generation: int | None = None
    last_transition_time: str | None = None


class CustomResource(Spec):
    """A parsed custom resource: metadata + spec. Subclasses set KIND, PLURAL and the spec type."""

    KIND: ClassVar[str]
    PLURAL: ClassVar[str]
    SHORT_NAMES: ClassVar[list[str]]
    api_version: str = API_VERSION
    kind: str = ""
    metadata: ObjectMeta

    @classmethod
    def parse(cls, body: Any) -> Self:
        """Validate a CR body (a dict or Kopf's Body mapping); raises pydantic.ValidationError."""
        data = dict(body)
        data["metadata"] = dict(body.get("metadata") or {})
        data.setdefault("spec", {})
        return cls.model_validate(data)

    @property
    def name(self) -> str:
        return self.metadata.name

    @property
    def namespace(self) -> str:
        return self.metadata.namespace

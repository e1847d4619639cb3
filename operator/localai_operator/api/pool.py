"""InferencePool: LocalAI replicas serving a set of LLMModels on GPU (or CPU) nodes."""

from __future__ import annotations

import re
from typing import Annotated, ClassVar, Literal

from pydantic import Field, model_validator

from localai_operator.api.base import (
    DNS_LABEL,
    DNS_SUBDOMAIN,
    Condition,
    CustomResource,
    Quantity,
    Resources,
    SecretKeyRef,
    Spec,
)
from localai_operator.api.kinds import INFERENCE_POOL

MAX_THREADS = 512


class Accelerator(Spec):
    gpus: int = Field(
        default=0, ge=0, le=128, description="nvidia.com/gpu per replica (limits; requests equal)."
    )
    product: str | None = Field(
        default=None,
        max_length=128,
        pattern=r"^[A-Za-z0-9]([-A-Za-z0-9_.]*[A-Za-z0-9])?$",
        description="GPU product label value (nvidia.com/gpu.product), e.g. NVIDIA-A100-SXM4-80GB: a node selector.",
    )
    memory_mib: int | None = Field(
        default=None,
        alias="memoryMiB",
        ge=1,
        le=16_777_216,
        description="Memory of one GPU in MiB, for the GPU-memory fit of the pool's models when no node the pool "
        "can land on has the nvidia.com/gpu.memory label (which NVIDIA GPU Feature Discovery sets, and which "
        "wins when present).",
    )
    runtime_class_name: str | None = Field(
        default=None,
        description='RuntimeClass for GPU pods, e.g. "nvidia" on GPU Operator clusters with containerd.',
    )


class Storage(Spec):
    size: Quantity = Field(description="Size of the model volume, e.g. 20Gi.")
    storage_class_name: str | None = Field(
        default=None, description="StorageClass of the PersistentVolumeClaim."
    )
    access_mode: Literal["ReadWriteOnce", "ReadWriteMany", "ReadWriteOncePod"] = Field(
        default="ReadWriteOnce",
        description="ReadWriteMany lets replicas on different nodes share one copy of the models.",
    )


class Toleration(Spec):
    key: str | None = None
    operator: Literal["Exists", "Equal"] | None = None
    value: str | None = None
    effect: Literal["NoSchedule", "PreferNoSchedule", "NoExecute"] | None = None
    toleration_seconds: int | None = None


class KeyRef(Spec):
    name: str = Field(
        pattern=DNS_SUBDOMAIN, max_length=253, description="Name of the object in the same namespace."
    )
    key: str = Field(min_length=1, max_length=253, description="Key inside it.")
    optional: bool | None = Field(default=None, description="Start the pod even when the key is missing.")


class FieldRef(Spec):
    field_path: str = Field(min_length=1, max_length=256, description="e.g. metadata.name or status.podIP.")


class EnvVarSource(Spec):
    model_config = Spec.model_config | {
        "json_schema_extra": {
            "x-kubernetes-validations": [
                {
                    "rule": "[has(self.secretKeyRef), has(self.configMapKeyRef), has(self.fieldRef)]"
                    ".filter(x, x).size() == 1",
                    "message": "valueFrom takes exactly one of secretKeyRef, configMapKeyRef or fieldRef",
                }
            ]
        }
    }
    secret_key_ref: KeyRef | None = Field(default=None, description="A key of a Secret.")
    config_map_key_ref: KeyRef | None = Field(default=None, description="A key of a ConfigMap.")
    field_ref: FieldRef | None = Field(default=None, description="A field of the pod.")

    @model_validator(mode="after")
    def _exactly_one(self) -> EnvVarSource:
        if sum(x is not None for x in (self.secret_key_ref, self.config_map_key_ref, self.field_ref)) != 1:
            raise ValueError("valueFrom takes exactly one of secretKeyRef, configMapKeyRef or fieldRef")
        return self


# What keeps the admin API closed and the paths where the operator mounts volumes: never overridden by extraEnv,
# under their LocalAI name or the legacy alias kong also reads (core/cli/run.go at v4.9.0).
RESERVED_ENV = (
    "LOCALAI_ADDRESS",
    "ADDRESS",
    "LOCALAI_MODELS_PATH",
    "MODELS_PATH",
    "LOCALAI_BACKENDS_PATH",
    "BACKENDS_PATH",
    "LOCALAI_DATA_PATH",
    "LOCALAI_CONFIG_DIR",
    "LOCALAI_API_KEY",
    "API_KEY",
    "LOCALAI_BACKEND_GALLERIES",
    "BACKEND_GALLERIES",
    "LOCALAI_AUTOLOAD_BACKEND_GALLERIES",
    "AUTOLOAD_BACKEND_GALLERIES",
    "LOCALAI_GALLERIES",
    "GALLERIES",
    "LOCALAI_AUTOLOAD_GALLERIES",
    "AUTOLOAD_GALLERIES",
    "LOCALAI_DISABLE_GALLERY_ENDPOINT",
    "DISABLE_GALLERY_ENDPOINT",
    "LOCALAI_DISABLE_WEBUI",
    "DISABLE_WEBUI",
    "LOCALAI_DISABLE_RUNTIME_SETTINGS",
    "DISABLE_RUNTIME_SETTINGS",
    "LOCALAI_DISABLE_AGENTS",
    "LOCALAI_DISABLE_ASSISTANT",
    "LOCALAI_DISABLE_MCP",
    "DISABLE_MCP",
)
RESERVED_ENV_MESSAGE = (
    "extraEnv cannot set the variables that keep LocalAI's admin API closed or name its volumes"
    " (LOCALAI_ADDRESS, *_PATH, LOCALAI_API_KEY, *GALLER*, LOCALAI_DISABLE_*); use spec.apiKeySecretRef for the key"
)
# On a pool without GPUs, the NVIDIA container runtime's variables: NVIDIA_VISIBLE_DEVICES=void is what keeps a
# node's GPUs out of a CPU pool's pods where the node's default runtime is NVIDIA's.
GPU_ENV_PREFIX = "NVIDIA_"
GPU_ENV_MESSAGE = (
    "extraEnv cannot set NVIDIA_* variables on a pool without GPUs (accelerator.gpus is 0): they would give its "
    "pods the node's GPUs; ask for GPUs with accelerator.gpus instead"
)
GPU_ENV_RULE = (
    "(has(self.accelerator) && has(self.accelerator.gpus) && self.accelerator.gpus > 0)"
    f" || !has(self.extraEnv) || self.extraEnv.all(e, !e.name.startsWith('{GPU_ENV_PREFIX}'))"
)


class EnvVar(Spec):
    model_config = Spec.model_config | {
        "json_schema_extra": {
            "x-kubernetes-validations": [
                {
                    "rule": "!(has(self.value) && has(self.valueFrom))",
                    "message": "set value or valueFrom, not both",
                }
            ]
        }
    }
    name: str = Field(pattern=r"^[-._a-zA-Z][-._a-zA-Z0-9]*$", max_length=256, description="Variable name.")
    value: str | None = Field(default=None, description="Literal value.")
    value_from: EnvVarSource | None = Field(
        default=None, description="Value read from a Secret, ConfigMap or the pod."
    )

    @model_validator(mode="after")
    def _value_or_value_from(self) -> EnvVar:
        if self.value is not None and self.value_from is not None:
            raise ValueError("set value or valueFrom, not both")
        return self


class NetworkPolicy(Spec):
    enabled: bool = Field(
        default=True,
        description="Render a NetworkPolicy that admits, on port 8080, only this namespace's FallbackRoute routers "
        "and pods of allowedNamespaces. Needs a CNI that enforces NetworkPolicy.",
    )
    allowed_namespaces: list[Annotated[str, Field(pattern=DNS_LABEL, max_length=63)]] = Field(
        default_factory=list,
        max_length=64,
        json_schema_extra={"x-kubernetes-list-type": "set"},
        description="Namespaces whose pods may also call the pool directly (e.g. your monitoring namespace).",
    )


# A Deployment's int-or-string: a pod count, or a percentage of spec.replicas.
IntOrPercent = Annotated[int | str, Field(json_schema_extra={"x-kubernetes-int-or-string": True})]
_INT_OR_PERCENT_RULE = "type({0}) == int ? int({0}) >= 0 : string({0}).matches('^[0-9]{{1,3}}%$')"
ROLLOUT_ZERO_MESSAGE = (
    "rollout: maxSurge and maxUnavailable cannot both be 0 (the rollout could never progress)"
)


def _count_or_percent(value: int | str) -> bool:
    return value >= 0 if isinstance(value, int) else re.fullmatch(r"[0-9]{1,3}%", value) is not None


class Rollout(Spec):
    model_config = Spec.model_config | {
        "json_schema_extra": {
            "x-kubernetes-validations": [
                {
                    "rule": _INT_OR_PERCENT_RULE.format("self.maxSurge"),
                    "message": "maxSurge is a pod count >= 0 or a percentage such as 25%",
                },
                {
                    "rule": _INT_OR_PERCENT_RULE.format("self.maxUnavailable"),
                    "message": "maxUnavailable is a pod count >= 0 or a percentage such as 25%",
                },
                {
                    "rule": "!(string(self.maxSurge) in ['0', '0%'] && string(self.maxUnavailable) in ['0', '0%'])",
                    "message": ROLLOUT_ZERO_MESSAGE,
                },
            ]
        }
    }

    max_surge: IntOrPercent = Field(
        description="Pods created above spec.replicas while a rollout replaces them (a count or a percentage). 0: "
        "the old pod goes before its replacement starts, so a pool never needs room for two (GPUs, or a small "
        "CPU node); routes then fall back, or answer 503 when sensitive, until the new pod is Ready."
    )
    max_unavailable: IntOrPercent = Field(
        description="Pods of spec.replicas that may be not Ready during a rollout (a count or a percentage)."
    )

    @model_validator(mode="after")
    def _progresses(self) -> Rollout:
        for name, value in (("maxSurge", self.max_surge), ("maxUnavailable", self.max_unavailable)):
            if not _count_or_percent(value):
                raise ValueError(f"{name} is a pod count >= 0 or a percentage such as 25%")
        if str(self.max_surge) in ("0", "0%") and str(self.max_unavailable) in ("0", "0%"):
            raise ValueError(ROLLOUT_ZERO_MESSAGE)
        return self


AUTOSCALING_RANGE_MESSAGE = "autoscaling: minReplicas must not exceed maxReplicas"


class Autoscaling(Spec):
    model_config = Spec.model_config | {
        "json_schema_extra": {
            "x-kubernetes-validations": [
                {
                    "rule": "!has(self.minReplicas) || self.minReplicas <= self.maxReplicas",
                    "message": AUTOSCALING_RANGE_MESSAGE,
                },
            ]
        }
    }

    min_replicas: int = Field(
        default=1,
        ge=0,
        le=100,
        description="Fewest replicas. 0: the pool scales to zero after scaleDownDelaySeconds without demand; its "
        "routes answer from the cloud meanwhile (pool_cold), sensitive ones hold requests while it comes back.",
    )
    max_replicas: int = Field(ge=1, le=100, description="Most replicas the demand may bring.")
    target_in_flight_per_slot: float = Field(
        default=0.7,
        gt=0,
        le=10,
        description="Requests in flight per slot (LLMModel.spec.parallel, summed over the pool's models) the "
        "autoscaler aims at: replicas = ceil(average in flight / (slots per replica x this)). Below 1 leaves "
        "headroom: at 1 every slot is busy and the routes spill to the cloud (saturated).",
    )
    scale_down_delay_seconds: int = Field(
        default=300,
        ge=0,
        le=86400,
        description="A scale-down (to zero too) happens only after the demand has needed fewer replicas for this "
        "long: the highest need seen over this window is what counts. Scale-ups happen at once.",
    )

    @model_validator(mode="after")
    def _in_range(self) -> Autoscaling:
        if self.min_replicas > self.max_replicas:
            raise ValueError(AUTOSCALING_RANGE_MESSAGE)
        return self


GPU_IMAGE_RULE = (
    "!has(self.image) || !(self.image.contains('cuda') || self.image.contains('gpu-nvidia'))"
    " || (has(self.accelerator) && has(self.accelerator.gpus) && self.accelerator.gpus > 0)"
)
GPU_IMAGE_MESSAGE = (
    "image is a GPU (CUDA) image but accelerator.gpus is 0: set accelerator.gpus or use a CPU image"
)


class InferencePoolSpec(Spec):
    model_config = Spec.model_config | {
        "json_schema_extra": {
            "x-kubernetes-validations": [
                {"rule": GPU_IMAGE_RULE, "message": GPU_IMAGE_MESSAGE},
                {"rule": GPU_ENV_RULE, "message": GPU_ENV_MESSAGE, "fieldPath": ".extraEnv"},
            ]
        }
    }

    @model_validator(mode="after")
    def _gpu_image_needs_gpus(self) -> InferencePoolSpec:
        image = self.image or ""
        if ("cuda" in image or "gpu-nvidia" in image) and self.accelerator.gpus == 0:
            raise ValueError(GPU_IMAGE_MESSAGE)
        return self

    @model_validator(mode="after")
    def _extra_env_keeps_the_reserved_names(self) -> InferencePoolSpec:
        if any(e.name in RESERVED_ENV for e in self.extra_env):
            raise ValueError(RESERVED_ENV_MESSAGE)
        if not self.accelerator.gpus and any(e.name.startswith(GPU_ENV_PREFIX) for e in self.extra_env):
            raise ValueError(GPU_ENV_MESSAGE)
        return self

    models: list[str] = Field(
        min_length=1,
        max_length=32,
        json_schema_extra={
            "items": {"type": "string", "pattern": DNS_SUBDOMAIN, "maxLength": 253},
            "x-kubernetes-list-type": "set",
        },
        description="Names of LLMModels in the same namespace served by this pool.",
    )
    replicas: int = Field(
        default=1,
        ge=0,
        le=100,
        description="LocalAI replicas. Ignored while autoscaling is set (the operator sizes the Deployment, as an "
        "HPA does; it never writes this field).",
    )
    image: str | None = Field(
        default=None,
        description="LocalAI image. Default: the pinned CUDA 12 image when accelerator.gpus > 0, else the CPU image.",
    )
    accelerator: Accelerator = Field(default_factory=Accelerator, description="GPUs per replica.")
    threads: int | None = Field(
        default=None,
        ge=1,
        le=MAX_THREADS,
        description="LocalAI threads. Default: the CPU request in whole cores (min 1).",
    )
    resources: Resources | None = Field(
        default=None, description="CPU and memory. GPUs go in accelerator.gpus."
    )
    storage: Storage | None = Field(
        default=None, description="Model volume as a PersistentVolumeClaim; emptyDir when omitted."
    )
    empty_dir_size_limit: Quantity | None = Field(
        default=None,
        description="Without storage: the most the models emptyDir may hold (the kubelet evicts a pod beyond "
        "it), and so the most a download may take. Default: the models' declared sizes (source.sizeBytes, else "
        "source.maxBytes, and their mmproj) plus 10% and 1Gi when every model declares one, else 100Gi.",
    )
    node_selector: dict[str, str] = Field(default_factory=dict, description="Extra node selector.")
    tolerations: list[Toleration] = Field(default_factory=list, description="Extra tolerations.")
    parallel_requests: bool | None = Field(
        default=None,
        description="false: every model of the pool answers one request at a time (parallel:1 whatever "
        "LLMModel.spec.parallel says). Unset or true: each model's spec.parallel. LocalAI v4.1 removed its own "
        "LOCALAI_PARALLEL_REQUESTS switch (requests always reach the backend concurrently); slots decide.",
    )
    max_active_backends: int | None = Field(
        default=None,
        ge=1,
        description="Models kept loaded at once (1 saves GPU memory on multi-model pools).",
    )
    preinstall_backends: list[str] = Field(
        default_factory=lambda: ["llama-cpp"],
        max_length=16,
        json_schema_extra={
            "items": {"type": "string", "pattern": r"^[a-z0-9][-a-z0-9._]*$", "maxLength": 128}
        },
        description="LocalAI backends installed at start (LOCALAI_EXTERNAL_BACKENDS) from a backend gallery the "
        "operator renders, pinned to the image's LocalAI release; /backends is then a volume (kept on the model "
        "volume with storage). []: the image already holds its backends (air-gapped clusters), nothing is "
        "installed and the image's own /backends is used.",
    )
    api_key_secret_ref: SecretKeyRef | None = Field(
        default=None,
        description="Secret key holding the API key LocalAI requires on /v1/* and /metrics (LOCALAI_API_KEY); "
        "FallbackRoutes pointing at this pool send it. /healthz and /readyz stay open.",
    )
    network_policy: NetworkPolicy = Field(
        default_factory=NetworkPolicy, description="Who may reach the pool's pods on port 8080."
    )
    run_as_user: int | None = Field(
        default=None,
        ge=1,
        le=2147483647,
        description="Run LocalAI as this non-root user instead of the image's root. Every path it writes is a "
        "volume (group 65532), so it works with preinstallBackends; an image with baked-in backends must make "
        "/backends readable for that user. mlock has no effect then.",
    )
    extra_env: list[EnvVar] = Field(
        default_factory=list,
        max_length=64,
        json_schema_extra={
            "x-kubernetes-list-type": "map",
            "x-kubernetes-list-map-keys": ["name"],
            "x-kubernetes-validations": [
                {"rule": f"self.all(e, !(e.name in {list(RESERVED_ENV)}))", "message": RESERVED_ENV_MESSAGE}
            ],
        },
        description="Extra environment variables for the LocalAI container (any LOCALAI_* setting of "
        "`local-ai run`); an entry replaces the operator's variable of the same name.",
    )
    log_level: Literal["error", "warn", "info", "debug"] = Field(
        default="info", description="LocalAI log level."
    )
    autoscaling: Autoscaling | None = Field(
        default=None,
        description="Scale the pool with its routes' demand (read from their routers' metrics). Unset: "
        "spec.replicas, which a HorizontalPodAutoscaler or KEDA ScaledObject may drive through the scale "
        "subresource. While an HPA targets the pool, the operator leaves the scaling to it.",
    )
    rollout: Rollout | None = Field(
        default=None,
        description="How a change replaces the pods (the Deployment's rolling update). Default: on GPU pools "
        "maxSurge 0, maxUnavailable 1 (no extra GPUs needed); on CPU pools maxSurge 1, maxUnavailable 0 (the new "
        "pod is Ready before the old one goes).",
    )


ScalingReason = Literal[
    "ScaledUp",
    "ScaledDown",
    "ScaledToZero",
    "AtMaxReplicas",
    "AtMinReplicas",
    "Steady",
    "NoDemandData",
    "ManagedByHPA",
]


class AutoscalingStatus(Spec):
    desired_replicas: int = Field(description="Replicas the autoscaler set on the Deployment.")
    current_replicas: int = Field(default=0, description="Replicas the Deployment has now (ready or not).")
    reason: ScalingReason = Field(description="Why desiredReplicas is what it is.")
    message: str = Field(default="", description="The figures behind the reason.")
    in_flight: float | None = Field(
        default=None, description="Average requests in flight for the pool over the last look, all routes."
    )
    slots_per_replica: int | None = Field(default=None, description="Slots one replica has, over its models.")
    last_scale_time: str | None = Field(default=None, description="When desiredReplicas last changed.")


class InferencePoolStatus(Spec):
    conditions: list[Condition] = Field(default_factory=list)
    observed_generation: int | None = None
    replicas: int = 0
    ready_replicas: int = 0
    endpoint: str | None = Field(default=None, description="OpenAI base URL inside the cluster.")
    gpus: int = Field(default=0, description="GPUs per replica.")
    autoscaling: AutoscalingStatus | None = Field(
        default=None, description="The autoscaler's decision (spec.autoscaling); absent without it."
    )
    models: str | None = Field(
        default=None, description="Served models, comma-separated (for printer columns)."
    )


class InferencePool(CustomResource):
    KIND: ClassVar[str] = INFERENCE_POOL.kind
    PLURAL: ClassVar[str] = INFERENCE_POOL.plural
    SHORT_NAMES: ClassVar[list[str]] = ["ipool"]
    spec: InferencePoolSpec
    status: InferencePoolStatus | None = None

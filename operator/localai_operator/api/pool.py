"""InferencePool: LocalAI replicas serving a set of LLMModels on GPU (or CPU) nodes."""

from __future__ import annotations

from typing import ClassVar, Literal

from pydantic import Field, model_validator

from localai_operator.api.base import DNS_SUBDOMAIN, Condition, CustomResource, Quantity, Resources, Spec
from localai_operator.api.kinds import INFERENCE_POOL


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
            "x-kubernetes-validations": [{"rule": GPU_IMAGE_RULE, "message": GPU_IMAGE_MESSAGE}]
        }
    }

    @model_validator(mode="after")
    def _gpu_image_needs_gpus(self) -> InferencePoolSpec:
        image = self.image or ""
        if ("cuda" in image or "gpu-nvidia" in image) and self.accelerator.gpus == 0:
            raise ValueError(GPU_IMAGE_MESSAGE)
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
    replicas: int = Field(default=1, ge=0, le=100, description="LocalAI replicas.")
    image: str | None = Field(
        default=None,
        description="LocalAI image. Default: the pinned CUDA 12 image when accelerator.gpus > 0, else the CPU image.",
    )
    accelerator: Accelerator = Field(default_factory=Accelerator, description="GPUs per replica.")
    threads: int | None = Field(
        default=None,
        ge=1,
        le=512,
        description="LocalAI threads. Default: the CPU request in whole cores (min 1).",
    )
    resources: Resources | None = Field(
        default=None, description="CPU and memory. GPUs go in accelerator.gpus."
    )
    storage: Storage | None = Field(
        default=None, description="Model volume as a PersistentVolumeClaim; emptyDir when omitted."
    )
    node_selector: dict[str, str] = Field(default_factory=dict, description="Extra node selector.")
    tolerations: list[Toleration] = Field(default_factory=list, description="Extra tolerations.")
    parallel_requests: bool = Field(default=False, description="LocalAI parallel requests per backend.")
    max_active_backends: int | None = Field(
        default=None,
        ge=1,
        description="Models kept loaded at once (1 saves GPU memory on multi-model pools).",
    )
    preinstall_backends: list[str] = Field(
        default_factory=lambda: ["llama-cpp"],
        description="LocalAI backends installed at start (LOCALAI_EXTERNAL_BACKENDS); [] for images that bundle them.",
    )
    log_level: Literal["error", "warn", "info", "debug"] = Field(
        default="info", description="LocalAI log level."
    )


class InferencePoolStatus(Spec):
    conditions: list[Condition] = Field(default_factory=list)
    observed_generation: int | None = None
    replicas: int = 0
    ready_replicas: int = 0
    endpoint: str | None = Field(default=None, description="OpenAI base URL inside the cluster.")
    gpus: int = Field(default=0, description="GPUs per replica.")
    models: str | None = Field(
        default=None, description="Served models, comma-separated (for printer columns)."
    )


class InferencePool(CustomResource):
    KIND: ClassVar[str] = INFERENCE_POOL.kind
    PLURAL: ClassVar[str] = INFERENCE_POOL.plural
    SHORT_NAMES: ClassVar[list[str]] = ["ipool"]
    spec: InferencePoolSpec
    status: InferencePoolStatus | None = None

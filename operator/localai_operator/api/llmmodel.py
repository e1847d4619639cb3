"""LLMModel: one GGUF model, where its file comes from and how LocalAI should run it."""

from __future__ import annotations

from typing import Annotated, ClassVar, Literal

from pydantic import Field, model_validator

from localai_operator.api.base import Condition, CustomResource, SecretKeyRef, Spec
from localai_operator.api.kinds import LLM_MODEL

SHA256 = r"^[a-fA-F0-9]{64}$"
# A file name inside the models directory: no path separators, no leading dot.
FILE_NAME = r"^[A-Za-z0-9_][A-Za-z0-9._+-]*$"

GpuLayers = Annotated[
    int | Literal["all"],
    Field(
        json_schema_extra={"x-kubernetes-int-or-string": True},
        description=(
            'Layers offloaded to the GPU (LocalAI gpu_layers): a number, or "all". Default: "all" on a pool '
            "with GPUs, 0 on a CPU pool. Lower it when the GPU runs out of memory."
        ),
    ),
]


class HuggingFaceSource(Spec):
    repo: str = Field(
        pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]*/[A-Za-z0-9][A-Za-z0-9._-]*$",
        max_length=200,
        description="Hugging Face repository, owner/name, e.g. TheBloke/Mistral-7B-Instruct-v0.2-GGUF.",
    )
    file: str = Field(pattern=FILE_NAME, max_length=255, description="GGUF file in the repository.")
    revision: str = Field(default="main", min_length=1, max_length=100, description="Branch, tag or commit.")
    token_secret_ref: SecretKeyRef | None = Field(
        default=None,
        description="Secret key holding a Hugging Face token, for gated or private repositories.",
    )


class ModelSource(Spec):
    model_config = Spec.model_config | {
        "json_schema_extra": {
            "x-kubernetes-validations": [
                {
                    "rule": "has(self.huggingFace) != has(self.url)",
                    "message": "set exactly one of source.huggingFace or source.url",
                }
            ]
        }
    }
    hugging_face: HuggingFaceSource | None = Field(default=None, description="Download from Hugging Face.")
    url: str | None = Field(
        default=None,
        pattern=r"^https?://[^\s]+$",
        max_length=2048,
        description="Download from this http(s) URL. The file name is the last path segment.",
    )
    sha256: str | None = Field(
        default=None,
        pattern=SHA256,
        description="Expected SHA-256 of the file (64 hex characters), verified after download. Recommended.",
    )

    @model_validator(mode="after")
    def _exactly_one_source(self) -> ModelSource:
        if (self.hugging_face is None) == (self.url is None):
            raise ValueError("set exactly one of source.huggingFace or source.url")
        return self

    def file_name(self) -> str:
        if self.hugging_face is not None:
            return self.hugging_face.file
        assert self.url is not None, "the schema requires exactly one source"
        return self.url.split("?", 1)[0].rstrip("/").rsplit("/", 1)[-1]

    def download_url(self) -> str:
        if self.hugging_face is not None:
            hf = self.hugging_face
            return f"https://huggingface.co/{hf.repo}/resolve/{hf.revision}/{hf.file}"
        assert self.url is not None, "the schema requires exactly one source"
        return self.url


class SamplingParameters(Spec):
    temperature: float | None = Field(
        default=None, ge=0, le=2, description="Sampling temperature; 0 for reproducible output."
    )
    top_p: float | None = Field(default=None, ge=0, le=1, description="Nucleus sampling probability.")
    top_k: int | None = Field(default=None, ge=0, description="Top-k sampling; 1 for greedy decoding.")
    max_tokens: int | None = Field(default=None, ge=1, description="Default cap on generated tokens.")
    seed: int | None = Field(
        default=None, description="Random seed, for reproducible output with temperature 0."
    )
    repeat_penalty: float | None = Field(default=None, ge=0, description="Penalty for repeated tokens.")


class PromptTemplate(Spec):
    chat: str | None = Field(default=None, description="LocalAI template.chat.")
    chat_message: str | None = Field(default=None, description="LocalAI template.chat_message.")
    completion: str | None = Field(default=None, description="LocalAI template.completion.")
    use_tokenizer_template: bool | None = Field(
        default=None, description="Use the model's own chat template."
    )


class LLMModelSpec(Spec):
    model_config = Spec.model_config | {
        "json_schema_extra": {
            "x-kubernetes-validations": [
                {
                    "rule": "!has(self.gpuLayers) || (type(self.gpuLayers) == int ? self.gpuLayers >= 0"
                    " : self.gpuLayers == 'all')",
                    "message": 'gpuLayers must be a number >= 0 or "all"',
                },
                {
                    "rule": "self.kvCacheType == 'f16' || self.flashAttention != 'off'",
                    "message": "a quantized kvCacheType needs flash attention: set flashAttention to auto or on",
                },
            ]
        }
    }
    source: ModelSource = Field(description="Where the GGUF file comes from.")
    backend: Literal["llama-cpp"] = Field(default="llama-cpp", description="LocalAI backend.")
    context_size: int = Field(default=4096, ge=128, le=1048576, description="Context window in tokens.")
    gpu_layers: GpuLayers | None = None
    f16: bool | None = Field(
        default=None, description="Use 16-bit floats. Default: true on GPU pools, false on CPU pools."
    )
    mmap: bool = Field(default=True, description="Memory-map the model file.")
    mlock: bool = Field(default=False, description="Lock the model in memory (LocalAI mmlock).")
    low_vram: bool = Field(default=False, alias="lowVRAM", description="Trade speed for GPU memory.")
    numa: bool = Field(default=False, description="NUMA optimisations; leave off on single-socket nodes.")
    batch: int = Field(default=512, ge=1, le=65536, description="Prompt-processing batch size.")
    kv_cache_type: Literal["f16", "q8_0", "q4_0"] = Field(
        default="f16",
        description="KV cache type (LocalAI cache_type_k and cache_type_v). Quantized types save 15-20% memory.",
    )
    flash_attention: Literal["auto", "on", "off"] = Field(
        default="auto",
        description='LocalAI flash_attention. "auto" renders "on" when kvCacheType is quantized (llama.cpp needs it).',
    )
    parameters: SamplingParameters = Field(
        default_factory=SamplingParameters, description="Sampling defaults."
    )
    template: PromptTemplate | None = Field(default=None, description="Prompt templates.")
    stopwords: list[str] = Field(default_factory=list, description="Stop words.")
    description: str | None = Field(default=None, max_length=1024, description="Shown by LocalAI.")

    @model_validator(mode="after")
    def _quantized_cache_needs_flash_attention(self) -> LLMModelSpec:
        if self.kv_cache_type != "f16" and self.flash_attention == "off":
            raise ValueError(
                "a quantized kvCacheType needs flash attention: set flashAttention to auto or on"
            )
        return self


class LLMModelStatus(Spec):
    conditions: list[Condition] = Field(default_factory=list)
    observed_generation: int | None = None
    served_by: list[str] = Field(default_factory=list, description="InferencePools that serve this model.")
    file: str | None = Field(default=None, description="File name inside the models directory.")


class LLMModel(CustomResource):
    KIND: ClassVar[str] = LLM_MODEL.kind
    PLURAL: ClassVar[str] = LLM_MODEL.plural
    SHORT_NAMES: ClassVar[list[str]] = ["llmm"]
    spec: LLMModelSpec
    status: LLMModelStatus | None = None

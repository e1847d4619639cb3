"""LLMModel: one GGUF model, where its file comes from and how LocalAI should run it."""

from __future__ import annotations

import re
from typing import Annotated, ClassVar, Literal

from pydantic import Field, model_validator

from localai_operator.api.base import Condition, CustomResource, SecretKeyRef, Spec
from localai_operator.api.kinds import LLM_MODEL

SHA256 = r"^[a-fA-F0-9]{64}$"
INT32_MIN, INT32_MAX = -(2**31), 2**31 - 1
# llama.cpp's --tensor-split: proportions per GPU, separated by "," or "/" (grpc-server.cpp splits on [,/]).
TENSOR_SPLIT = r"^[0-9]+(\.[0-9]+)?([,/][0-9]+(\.[0-9]+)?)*$"
# LocalAI splits each option at ":" (strtok), so a value cannot hold one; no whitespace either.
OPTION = r"^[^\s:]+(:[^\s:]+)?$"
NO_PARALLEL_OPTION = "self.all(o, !o.matches('^(n_)?parallel(:|$)'))"
NO_PARALLEL_MESSAGE = "set the number of slots with spec.parallel, not a parallel option"
# A file name inside the models directory: no path separators, no leading dot (nor ".."), and no YAML, which LocalAI
# would read as a model's configuration.
_FILE = r"[A-Za-z0-9_][A-Za-z0-9._+-]*"
FILE_NAME = rf"^{_FILE}$"
# An http(s) URL whose last path segment (the query dropped, trailing slashes too: ModelSource.file_name) is such a
# name.
URL_WITH_FILE = rf"^https?://[^\s/?#]+(/[^\s?]*)?/{_FILE}/*(\?\S*)?$"
NOT_YAML = r"(?i)[.]ya?ml$"
NOT_YAML_MESSAGE = (
    "the model file cannot be a .yaml or .yml file (LocalAI would read it as a model configuration)"
)
MAX_FILE_BYTES = 2**50  # 1 PiB

KVCacheType = Literal["f16", "q8_0", "q4_0"]

GpuLayers = Annotated[
    int | Literal["all", "auto"],
    Field(
        json_schema_extra={"x-kubernetes-int-or-string": True},
        description=(
            'Layers offloaded to the GPU (LocalAI gpu_layers): a number, "all", or "auto": on a pool with GPUs, '
            "the most layers that fit the GPU memory of the nodes the pool can land on, from the model's GGUF "
            'header (status.gguf; "all" while that or the GPU memory is unknown). Default: "all" on a pool with '
            "GPUs, 0 on a CPU pool. Lower it when the GPU runs out of memory."
        ),
    ),
]


SIZE_MESSAGE = "sizeBytes cannot exceed maxBytes"


class HuggingFaceSource(Spec):
    repo: str = Field(
        pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]*/[A-Za-z0-9][A-Za-z0-9._-]*$",
        max_length=200,
        description="Hugging Face repository, owner/name, e.g. TheBloke/Mistral-7B-Instruct-v0.2-GGUF.",
    )
    file: str = Field(
        pattern=FILE_NAME,
        max_length=255,
        json_schema_extra={
            "x-kubernetes-validations": [
                {"rule": f"!self.matches('{NOT_YAML}')", "message": NOT_YAML_MESSAGE}
            ]
        },
        description="GGUF file in the repository.",
    )
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
                },
                {
                    "rule": "!has(self.url) || !self.url.split('?')[0].matches('(?i)[.]ya?ml/*$')",
                    "message": NOT_YAML_MESSAGE,
                    "fieldPath": ".url",
                },
                {
                    "rule": "!has(self.sizeBytes) || !has(self.maxBytes) || self.sizeBytes <= self.maxBytes",
                    "message": SIZE_MESSAGE,
                    "fieldPath": ".sizeBytes",
                },
            ]
        }
    }
    hugging_face: HuggingFaceSource | None = Field(default=None, description="Download from Hugging Face.")
    url: str | None = Field(
        default=None,
        pattern=URL_WITH_FILE,
        max_length=2048,
        description="Download from this http(s) URL. The file name is the last path segment (before any query): "
        "letters, digits and ._+- only, not starting with a dot, not a .yaml or .yml file.",
    )
    sha256: str | None = Field(
        default=None,
        pattern=SHA256,
        description="Expected SHA-256 of the file (64 hex characters), verified after download. Recommended.",
    )
    size_bytes: int | None = Field(
        default=None,
        ge=1,
        le=MAX_FILE_BYTES,
        description="The file's exact size in bytes: the download fails on any other size, and the pool's models "
        "emptyDir is sized from it (InferencePool.spec.emptyDirSizeLimit).",
    )
    max_bytes: int | None = Field(
        default=None,
        ge=1,
        le=MAX_FILE_BYTES,
        description="The most bytes the download may take: it stops and fails beyond. Without it (and without "
        "sizeBytes) a download may fill at most the pool's model volume.",
    )

    @model_validator(mode="after")
    def _exactly_one_source(self) -> ModelSource:
        if (self.hugging_face is None) == (self.url is None):
            raise ValueError("set exactly one of source.huggingFace or source.url")
        return self

    @model_validator(mode="after")
    def _a_model_file(self) -> ModelSource:
        if self.url is not None and re.search(NOT_YAML, self.url.split("?", 1)[0].rstrip("/")):
            raise ValueError(NOT_YAML_MESSAGE)
        if self.hugging_face is not None and re.search(NOT_YAML, self.hugging_face.file):
            raise ValueError(NOT_YAML_MESSAGE)
        if self.size_bytes is not None and self.max_bytes is not None and self.size_bytes > self.max_bytes:
            raise ValueError(SIZE_MESSAGE)
        return self

    def byte_bound(self) -> int | None:
        """The most bytes the file may have, as declared (sizeBytes, else maxBytes)."""
        return self.size_bytes if self.size_bytes is not None else self.max_bytes

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
        default=None,
        ge=INT32_MIN,
        le=INT32_MAX,
        description="Random seed, for reproducible output with temperature 0; -1 picks a random one per request. "
        "A 32-bit integer: LocalAI casts it to int32 (core/backend/options.go, getSeed).",
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
                    " : self.gpuLayers in ['all', 'auto'])",
                    "message": 'gpuLayers must be a number >= 0, "all" or "auto"',
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
    context_size: int = Field(
        default=4096,
        ge=128,
        le=1048576,
        description="Context window in tokens (LocalAI context_size). With several slots (parallel) LocalAI v4.9.0's "
        "llama-cpp backend shares one KV cache of this many tokens between them (kv_unified, on by default): size it "
        "as the window one request needs times parallel.",
    )
    gpu_layers: GpuLayers | None = None
    parallel: int | None = Field(
        default=None,
        ge=1,
        le=64,
        description="Requests this model answers at once (llama.cpp slots, rendered as LocalAI's "
        "options: [parallel:N]; without it llama-cpp serves one request at a time). The slots share contextSize. "
        "Default: 4 on a pool with GPUs (llama.cpp server's own default slot count), 2 on a CPU pool (measured: "
        "two concurrent requests get 1.36x the tokens/s of one slot, a lone one loses nothing).",
    )
    f16: bool | None = Field(
        default=None,
        description="Deprecated, no effect: LocalAI's llama-cpp backend never reads it (the memory_f16 line is "
        "commented out in backend/cpp/llama-cpp/grpc-server.cpp at v4.9.0). The KV cache type is kvCacheType.",
    )
    mmap: bool = Field(default=True, description="Memory-map the model file.")
    mlock: bool = Field(
        default=False,
        description="Lock the model in RAM so it is never paged out (LocalAI mmlock). The pool then adds the "
        "IPC_LOCK capability to the LocalAI container (a locked model must fit the memory limit, and the namespace's "
        "Pod Security level must allow the capability); it has no effect with the pool's runAsUser.",
    )
    low_vram: bool = Field(
        default=False,
        alias="lowVRAM",
        description="Deprecated, no effect: LocalAI's llama-cpp backend never reads low_vram (v4.9.0). On CUDA "
        "out of memory lower gpuLayers, use a quantized kvCacheType or a smaller contextSize.",
    )
    numa: bool = Field(
        default=False,
        description="Deprecated, no effect: LocalAI's llama-cpp backend calls llama_numa_init without it (v4.9.0).",
    )
    batch: int = Field(
        default=512,
        ge=1,
        le=65536,
        description="Prompt-processing batch size (llama.cpp n_batch and n_ubatch).",
    )
    kv_cache_type: KVCacheType = Field(
        default="f16",
        description="KV cache type (LocalAI cache_type_k and cache_type_v). Quantized types save 15-20% memory.",
    )
    flash_attention: Literal["auto", "on", "off"] = Field(
        default="auto",
        description='LocalAI flash_attention. "auto" renders "on" when kvCacheType is quantized (llama.cpp needs it).',
    )
    embeddings: bool = Field(
        default=False,
        description="Make this an embedding model serving /v1/embeddings (LocalAI embeddings: true). The llama-cpp "
        "backend then refuses chat and completion requests to it: for both, declare a second LLMModel with the "
        "same source. An input is embedded in one batch: set batch to the longest input in tokens.",
    )
    mmproj: ModelSource | None = Field(
        default=None,
        description="The multimodal projector of a vision model (LocalAI mmproj): a second GGUF file downloaded "
        "and verified like source, into the same models directory.",
    )
    tensor_split: str | None = Field(
        default=None,
        pattern=TENSOR_SPLIT,
        max_length=256,
        description='How to split the model over the pool\'s GPUs, e.g. "3,1" (LocalAI tensor_split, llama.cpp '
        "--tensor-split).",
    )
    main_gpu: int | None = Field(
        default=None,
        alias="mainGPU",
        ge=0,
        le=127,
        description="The GPU (index inside the pod) for small tensors and intermediate results (LocalAI main_gpu).",
    )
    options: list[Annotated[str, Field(pattern=OPTION, max_length=256)]] = Field(
        default_factory=list,
        max_length=64,
        json_schema_extra={
            "x-kubernetes-validations": [{"rule": NO_PARALLEL_OPTION, "message": NO_PARALLEL_MESSAGE}]
        },
        description="LocalAI backend options passed through as name:value (e.g. context_shift, cache_ram:4096, "
        "use_jinja); the llama-cpp backend ignores names it does not know. On a CPU pool the operator adds "
        "swa_full:true (a sliding-window model reuses a shared prompt's cache exactly) unless one of these names "
        "swa_full.",
    )
    parameters: SamplingParameters = Field(
        default_factory=SamplingParameters, description="Sampling defaults."
    )
    template: PromptTemplate | None = Field(default=None, description="Prompt templates.")
    stopwords: list[str] = Field(default_factory=list, description="Stop words.")
    description: str | None = Field(default=None, max_length=1024, description="Shown by LocalAI.")

    @model_validator(mode="after")
    def _parallel_is_a_field_not_an_option(self) -> LLMModelSpec:
        if any(re.match(r"^(n_)?parallel(:|$)", option) for option in self.options):
            raise ValueError(NO_PARALLEL_MESSAGE)
        return self

    @model_validator(mode="after")
    def _quantized_cache_needs_flash_attention(self) -> LLMModelSpec:
        if self.kv_cache_type != "f16" and self.flash_attention == "off":
            raise ValueError(
                "a quantized kvCacheType needs flash attention: set flashAttention to auto or on"
            )
        return self


# The most layers status.gguf describes one by one (Llama 3.1 405B has 126).
MAX_LAYERS = 1024


class KVCacheBytes(Spec):
    """Bytes of one KV cache entry per kvCacheType (llama.cpp stores K and V of this type)."""

    f16: int = Field(ge=0)
    q8_0: int = Field(ge=0, alias="q8_0")
    q4_0: int = Field(ge=0, alias="q4_0")


class GGUFStatus(Spec):
    """What the GGUF header says: the model's shape, and the sizes the GPU-memory fit is computed from."""

    architecture: str = Field(max_length=64, description="general.architecture, e.g. llama, qwen2, gemma3.")
    name: str | None = Field(default=None, max_length=256, description="general.name.")
    parameter_count: int = Field(ge=0, description="Parameters: the elements of every tensor.")
    layers: int = Field(ge=0, le=MAX_LAYERS, description="Repeating layers (block_count).")
    trained_context: int = Field(
        ge=0, description="Context the model was trained for (context_length), tokens."
    )
    quantization: str = Field(max_length=32, description="File type (general.file_type), e.g. Q4_K_M, F16.")
    file_size: int = Field(ge=0, description="Bytes of the file: header and tensor data.")
    kv_bytes_per_token_per_layer: KVCacheBytes = Field(
        description="KV cache bytes one token takes in one full-attention layer, per kvCacheType: 2 (K and V) x "
        "key/value length x KV heads (fewer than attention heads with grouped-query attention)."
    )
    embedding_length: int = Field(ge=0, description="Hidden size (embedding_length).")
    head_count: int = Field(ge=0, description="Attention heads (the largest over layers).")
    head_count_kv: int = Field(ge=0, alias="headCountKV", description="KV heads (the largest over layers).")
    key_length: int = Field(ge=0, description="Width of one attention head's key.")
    value_length: int = Field(ge=0, description="Width of one attention head's value.")
    feed_forward_length: int = Field(ge=0, description="Feed-forward width (the largest over layers).")
    expert_count: int = Field(
        default=0, ge=0, description="Experts of a mixture-of-experts model; 0 if dense."
    )
    expert_used_count: int = Field(default=0, ge=0, description="Experts each token goes through.")
    expert_feed_forward_length: int = Field(default=0, ge=0, description="Feed-forward width of one expert.")
    vocabulary_size: int = Field(ge=0, description="Tokens in the vocabulary.")
    sliding_window: int | None = Field(
        default=None,
        ge=0,
        description="Tokens a sliding-window attention layer sees; absent without such layers.",
    )
    sliding_window_layers: list[int] = Field(
        default_factory=list,
        max_length=MAX_LAYERS,
        description="Layers with sliding-window attention: their KV cache holds about slidingWindow x parallel + "
        "batch tokens, not contextSize.",
    )
    layer_bytes: list[int] = Field(
        default_factory=list, max_length=MAX_LAYERS, description="Weight bytes of each repeating layer."
    )
    layer_kv_elements: list[int] = Field(
        default_factory=list,
        alias="layerKVElements",
        max_length=MAX_LAYERS,
        description="KV cache elements (K plus V) one token takes in each layer; 0 for a layer without a KV cache.",
    )
    input_bytes: int = Field(
        ge=0,
        description="Weight bytes of the input layer (token embeddings), which llama.cpp keeps on the CPU.",
    )
    output_bytes: int = Field(
        ge=0,
        description="Weight bytes of the output layer, offloaded with the last layer; with tied embeddings llama.cpp "
        "copies the token embeddings there.",
    )


class LLMModelStatus(Spec):
    conditions: list[Condition] = Field(default_factory=list)
    observed_generation: int | None = None
    served_by: list[str] = Field(default_factory=list, description="InferencePools that serve this model.")
    file: str | None = Field(default=None, description="File name inside the models directory.")
    gguf: GGUFStatus | None = Field(
        default=None, description="The model file's GGUF header, read before the model runs."
    )


class LLMModel(CustomResource):
    KIND: ClassVar[str] = LLM_MODEL.kind
    PLURAL: ClassVar[str] = LLM_MODEL.plural
    SHORT_NAMES: ClassVar[list[str]] = ["llmm"]
    spec: LLMModelSpec
    status: LLMModelStatus | None = None

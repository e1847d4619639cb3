"""A GGUF header -> LLMModel.status.gguf: the model's shape as llama.cpp will load it (llama.cpp 4df29be, the one
LocalAI v4.9.0 builds): hyperparameters with their defaults, which layers use sliding-window attention, and the
weight bytes of each layer, of the input layer (kept on the CPU) and of the output layer (offloaded with the last
layer)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Final

from localai_operator.api.llmmodel import MAX_LAYERS, GGUFStatus, KVCacheBytes, KVCacheType
from localai_operator.gguf.header import GGUFError, GGUFHeader, SkippedArray, Value

UINT32_MAX: Final = 2**32 - 1
# A file whose tensors add up to more than this (1 PiB) is not a model anyone serves; it also keeps every number in
# status within int64.
MAX_FILE_BYTES: Final = 2**50

# llama.cpp's llama_ftype (include/llama.h) without its MOSTLY_ prefix: general.file_type.
FILE_TYPES: Final[Mapping[int, str]] = {
    0: "F32",
    1: "F16",
    2: "Q4_0",
    3: "Q4_1",
    7: "Q8_0",
    8: "Q5_0",
    9: "Q5_1",
    10: "Q2_K",
    11: "Q3_K_S",
    12: "Q3_K_M",
    13: "Q3_K_L",
    14: "Q4_K_S",
    15: "Q4_K_M",
    16: "Q5_K_S",
    17: "Q5_K_M",
    18: "Q6_K",
    19: "IQ2_XXS",
    20: "IQ2_XS",
    21: "Q2_K_S",
    22: "IQ3_XS",
    23: "IQ3_XXS",
    24: "IQ1_S",
    25: "IQ4_NL",
    26: "IQ3_S",
    27: "IQ3_M",
    28: "IQ2_S",
    29: "IQ2_M",
    30: "IQ4_XS",
    31: "IQ1_M",
    32: "BF16",
    36: "TQ1_0",
    37: "TQ2_0",
    38: "MXFP4_MOE",
    39: "NVFP4",
    40: "Q1_0",
    41: "Q2_0",
}

# Bytes per 32 elements of a KV cache entry, per kvCacheType (ggml: f16 2 bytes; q8_0 and q4_0 blocks of 32).
KV_BLOCK_BYTES: Final[Mapping[KVCacheType, int]] = {"f16": 64, "q8_0": 34, "q4_0": 18}

# Architectures whose layers alternate sliding-window and full attention, as llama.cpp hard-codes them
# (src/models/<arch>.cpp: set_swa_pattern): the period when the file has no attention.sliding_window_pattern, and
# whether the pattern applies only when the file sets a non-zero sliding_window. In each period of n layers the last
# one has full attention. Other architectures: every layer has full attention (a sliding window that llama.cpp
# ignores, as for Mistral's llama-architecture files, costs the full context), which over-estimates at worst.
SWA_PERIODS: Final[Mapping[str, tuple[int, bool]]] = {
    "gemma2": (2, False),
    "gemma3": (6, True),
    "gemma3n": (5, False),
    "gemma-embedding": (6, False),
    "cohere2": (4, False),
    "gpt-oss": (2, False),
    "llama4": (4, False),
    "olmo2": (4, True),
    "exaone4": (4, True),
}
# Window defaults when the file has none (gemma2's and exaone4's llama.cpp defaults, llama4's chunk).
SWA_DEFAULT_WINDOW: Final[Mapping[str, int]] = {"gemma2": 4096, "exaone4": 4096, "llama4": 8192}


def gguf_status(header: GGUFHeader, *, file_size: int | None = None) -> GGUFStatus:
    """What status.gguf shows for this header; `file_size` when known (a download, a Content-Range)."""
    size = file_size if file_size is not None else header.file_size
    if max(size, header.file_size) > MAX_FILE_BYTES:
        raise GGUFError(
            f"GGUF file of {max(size, header.file_size)} bytes: more than the {MAX_FILE_BYTES} allowed"
        )
    meta = header.metadata
    arch = _text(meta, "general.architecture")
    if arch is None:
        raise GGUFError("GGUF has no general.architecture: it is not a llama.cpp model")
    layers = _int(meta, f"{arch}.block_count")
    if layers is None:
        raise GGUFError(f"GGUF has no {arch}.block_count: it is not a llama.cpp language model")
    if layers > MAX_LAYERS:
        raise GGUFError(f"GGUF declares {layers} layers, more than the {MAX_LAYERS} this operator describes")
    embedding = _int(meta, f"{arch}.embedding_length") or 0
    heads = _per_layer(meta, f"{arch}.attention.head_count", layers, 0)
    kv_heads = _per_layer(meta, f"{arch}.attention.head_count_kv", layers, None) or heads
    feed_forward = _per_layer(meta, f"{arch}.feed_forward_length", layers, 0)
    max_heads = max(heads, default=0)
    head_dim = embedding // max_heads if max_heads else 0
    key_length = _int(meta, f"{arch}.attention.key_length") or head_dim
    value_length = _int(meta, f"{arch}.attention.value_length") or head_dim
    # Multi-head latent attention (DeepSeek 2/3): one compressed K entry per token and no V cache.
    if _int(meta, f"{arch}.attention.key_length_mla") is not None:
        value_length = 0
    swa_layers, window = _sliding_window(meta, arch, layers)
    key_swa = _int(meta, f"{arch}.attention.key_length_swa") or key_length
    value_swa = _int(meta, f"{arch}.attention.value_length_swa") or value_length

    layer_bytes = [0] * layers
    input_bytes = output_bytes = 0
    has_output = False
    for tensor in header.tensors:
        index = _block_index(tensor.name)
        if index is not None and index < layers:
            layer_bytes[index] += tensor.n_bytes
        elif tensor.name.startswith("output"):
            output_bytes += tensor.n_bytes
            has_output = has_output or tensor.name == "output.weight"
        else:
            input_bytes += tensor.n_bytes
    if not has_output:
        # Tied embeddings: llama.cpp loads token_embd a second time as the output matrix where the output layer is
        # offloaded (llama_model_loader::create_tensor, TENSOR_DUPLICATED).
        output_bytes += sum(t.n_bytes for t in header.tensors if t.name == "token_embd.weight")

    swa = set(swa_layers)
    layer_kv = [
        kv_heads[i] * ((key_swa + value_swa) if i in swa else (key_length + value_length))
        for i in range(layers)
    ]
    full_kv = max((kv for i, kv in enumerate(layer_kv) if i not in swa), default=max(layer_kv, default=0))
    file_type = _int(meta, "general.file_type")
    tokens = meta.get("tokenizer.ggml.tokens")
    vocabulary = tokens.length if isinstance(tokens, SkippedArray) else _int(meta, f"{arch}.vocab_size") or 0
    return GGUFStatus(
        architecture=arch[:64],
        name=(_text(meta, "general.name") or "")[:256] or None,
        parameter_count=sum(t.n_elements for t in header.tensors),
        layers=layers,
        trained_context=_int(meta, f"{arch}.context_length") or 0,
        quantization=FILE_TYPES.get(file_type, f"type {file_type}")
        if file_type is not None
        else _guess(header),
        file_size=size,
        kv_bytes_per_token_per_layer=kv_bytes(full_kv),
        embedding_length=embedding,
        head_count=max_heads,
        head_count_kv=max(kv_heads, default=0),
        key_length=key_length,
        value_length=value_length,
        feed_forward_length=max(feed_forward, default=0),
        expert_count=_int(meta, f"{arch}.expert_count") or 0,
        expert_used_count=_int(meta, f"{arch}.expert_used_count") or 0,
        expert_feed_forward_length=_int(meta, f"{arch}.expert_feed_forward_length") or 0,
        vocabulary_size=vocabulary,
        sliding_window=window if swa_layers else None,
        sliding_window_layers=swa_layers,
        layer_bytes=layer_bytes,
        layer_kv_elements=layer_kv,
        input_bytes=input_bytes,
        output_bytes=output_bytes,
    )


def kv_bytes(elements: int) -> KVCacheBytes:
    """kv_row_bytes for every kvCacheType."""
    return KVCacheBytes.model_validate({name: kv_row_bytes(elements, name) for name in KV_BLOCK_BYTES})


def kv_row_bytes(elements: int, kv_cache_type: KVCacheType) -> int:
    """Bytes of one token's K and V in a layer of `elements` KV elements (rows are multiples of 32 in practice)."""
    return -(-elements // 32) * KV_BLOCK_BYTES[kv_cache_type]


def _sliding_window(meta: Mapping[str, Value], arch: str, layers: int) -> tuple[list[int], int]:
    """The sliding-window layers and their window, as llama.cpp's load_arch_hparams decides them."""
    window = _int(meta, f"{arch}.attention.sliding_window")
    pattern = meta.get(f"{arch}.attention.sliding_window_pattern")
    if isinstance(pattern, tuple) and len(pattern) == layers and all(isinstance(p, bool) for p in pattern):
        swa = [i for i, on in enumerate(pattern) if on]
    elif arch in SWA_PERIODS:
        period, needs_window = SWA_PERIODS[arch]
        if isinstance(pattern, int) and not isinstance(pattern, bool) and pattern >= 0:
            period = pattern
        if needs_window and not window:
            return [], 0
        # llama_hparams::set_swa_pattern: period 0 makes every layer a sliding-window one.
        swa = [i for i in range(layers) if period == 0 or i % period < period - 1]
    else:
        return [], 0
    window = window or SWA_DEFAULT_WINDOW.get(arch, 0)
    if not window or not swa:
        return [], 0
    return swa, window


def _block_index(name: str) -> int | None:
    if not name.startswith("blk."):
        return None
    number = name[4:].split(".", 1)[0]
    return int(number) if number.isdigit() and len(number) <= 6 else None


def _guess(header: GGUFHeader) -> str:
    """The type holding most of the weight bytes, for files without general.file_type."""
    by_type: dict[str, int] = {}
    for tensor in header.tensors:
        if len(tensor.shape) >= 2:
            by_type[tensor.type_name] = by_type.get(tensor.type_name, 0) + tensor.n_bytes
    return max(by_type, key=lambda name: by_type[name], default="unknown")


def _text(meta: Mapping[str, Value], key: str) -> str | None:
    value = meta.get(key)
    return value if isinstance(value, str) else None


def _int(meta: Mapping[str, Value], key: str) -> int | None:
    """A non-negative integer hyperparameter; llama.cpp reads them as uint32, so larger is an error."""
    value = meta.get(key)
    if not isinstance(value, int) or isinstance(value, bool) or value < 0:
        return None
    if value > UINT32_MAX:
        raise GGUFError(f"GGUF {key} is {value}, more than a uint32 holds")
    return value


def _per_layer(meta: Mapping[str, Value], key: str, layers: int, default: int | None) -> list[int]:
    """A hyperparameter that is one number or one per layer (llama_model_loader::get_key_or_arr)."""
    value = meta.get(key)
    if isinstance(value, tuple) and len(value) == layers:
        if any(isinstance(v, int) and v > UINT32_MAX for v in value):
            raise GGUFError(f"GGUF {key} holds a value larger than a uint32")
        return [v if isinstance(v, int) and not isinstance(v, bool) and v >= 0 else 0 for v in value]
    number = _int(meta, key)
    if number is None:
        return [] if default is None else [default] * layers
    return [number] * layers

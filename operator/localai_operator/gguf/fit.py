"""Does a replica fit its GPUs? llama.cpp's memory per GPU, from each model's status.gguf and the settings LocalAI
v4.9.0 gives its llama-cpp backend: pure arithmetic, no I/O.

Per GPU: the weights of the layers offloaded to it, their KV cache, and llama.cpp's compute buffers (an estimate),
the way llama.cpp 4df29be places them (src/llama-model.cpp load_tensors, src/llama-kv-cache*.cpp,
src/llama-context.cpp sched_reserve):
- `gpuLayers` counts the output layer as one: n of them offload the output layer and the last n - 1 repeating
  layers; layers + 1 or more offload everything. The input layer (token embeddings) always stays on the CPU.
- Layers are split over the GPUs in contiguous runs, evenly (or by tensorSplit), the output layer on the last one.
- The KV cache of a layer lives where the layer does. LocalAI turns on the unified KV cache: one cache of
  contextSize cells (padded to 256) that the parallel slots share. A sliding-window layer keeps
  min(contextSize, window x slots + batch) cells instead (llama_kv_cache_iswa), or contextSize with the backend
  option swa_full:true (which the operator renders on CPU pools only: render/model_config.py).
- Compute buffers: see `compute_bytes`; with layers left on the CPU, the first GPU also holds a copy of one layer's
  weights, which llama.cpp sends it to run the prompt's products there (op offload). That term is not measured
  here (no GPU on this machine): it errs on the side of not fitting.
A GPU also holds memory llama.cpp's buffers do not count (the CUDA context, cuBLAS workspace): `GPU_RESERVE_BYTES`.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from typing import Final, get_args

from localai_operator.api.llmmodel import GGUFStatus, KVCacheType, LLMModelSpec
from localai_operator.gguf.facts import kv_row_bytes

MiB: Final = 1024 * 1024
GiB: Final = 1024 * MiB
# The CUDA context and libraries' workspaces on each GPU, outside llama.cpp's buffers (llama.cpp's own fit keeps
# 1 GiB free per device for these and for safety; we count what it needs, not a margin).
GPU_RESERVE_BYTES: Final = 512 * MiB
# llama.cpp pads the context to 256 cells (llama_context, for the CUDA kernels).
CONTEXT_STEP: Final = 256
KV_CACHE_TYPES: Final[tuple[KVCacheType, ...]] = get_args(KVCacheType)  # the most precise first
FLOAT32: Final = 4
# ggml-cuda runs an operation whose weights stay in RAM on the GPU from this batch size on (GGML_OP_OFFLOAD_MIN_BATCH).
OP_OFFLOAD_MIN_BATCH: Final = 32
# How grpc-server.cpp reads a boolean option's value.
_TRUE: Final = frozenset({"true", "1", "yes", "on", "enabled"})
_FALSE: Final = frozenset({"false", "0", "no", "off", "disabled"})


@dataclass(frozen=True)
class Settings:
    """What decides a model's memory: LLMModel.spec as the pool renders it for LocalAI."""

    context_size: int
    gpu_layers: int  # llama.cpp n_gpu_layers (render's "all" is a large number)
    kv_cache_type: KVCacheType = "f16"
    slots: int = 1  # llama.cpp n_parallel
    batch: int = 512  # n_batch and n_ubatch: LocalAI sets both from batch
    flash_attention: bool = True  # "auto" resolves to on wherever the GPU supports it
    tensor_split: tuple[float, ...] = ()
    swa_full: bool = False  # sliding-window layers keep every cell (backend option swa_full)


def settings_of(
    spec: LLMModelSpec, *, gpu_layers: int, slots: int, options: Sequence[str] | None = None
) -> Settings:
    """The fit's settings for a model as a pool renders it: `gpu_layers`, `slots` and the backend `options` as
    render.model_config resolves them (gpuLayers "all" or unset on a GPU pool: a number past the layer count;
    parallel per pool; options: the model's own when not given)."""
    if options is None:
        options = spec.options
    return Settings(
        context_size=spec.context_size,
        gpu_layers=gpu_layers,
        kv_cache_type=spec.kv_cache_type,
        slots=slots,
        batch=spec.batch,
        # "auto" is on wherever flash attention runs (llama.cpp resolves it per device; CUDA and the CPU have it)
        flash_attention=spec.flash_attention != "off",
        tensor_split=tuple(float(p) for p in re.split(r"[,/]", spec.tensor_split))
        if spec.tensor_split
        else (),
        swa_full=swa_full_of(options),
    )


def swa_full_of(options: Sequence[str]) -> bool:
    """Whether LocalAI's llama-cpp backend runs with swa_full given these model options: it reads them in order, so
    the last that names it wins; values as grpc-server.cpp parses them, anything else leaves the default (off)."""
    value = False
    for option in options:
        name, _, raw = option.partition(":")
        if name.strip() == "swa_full":
            text = raw.strip()
            if text in _TRUE:
                value = True
            elif text in _FALSE:
                value = False
    return value


@dataclass(frozen=True)
class Usage:
    """Bytes on one GPU."""

    weights: int = 0
    kv_cache: int = 0
    compute: int = 0

    @property
    def total(self) -> int:
        return self.weights + self.kv_cache + self.compute

    def __add__(self, other: Usage) -> Usage:
        return Usage(
            self.weights + other.weights, self.kv_cache + other.kv_cache, self.compute + other.compute
        )


@dataclass(frozen=True)
class Model:
    name: str
    gguf: GGUFStatus
    settings: Settings


@dataclass(frozen=True)
class Suggestion:
    """The largest value of one setting that fits, the others unchanged; None where none does."""

    gpu_layers: int | None
    context_size: int | None
    kv_cache_type: KVCacheType | None


@dataclass(frozen=True)
class Fit:
    fits: bool
    usage: tuple[Usage, ...]  # per GPU, every model of the replica
    gpu_memory: int
    reserve: int
    suggestions: dict[str, Suggestion] = field(default_factory=dict)  # per model, when it does not fit

    @property
    def usable(self) -> int:
        return max(0, self.gpu_memory - self.reserve)

    def message(self) -> str:
        """One sentence with the numbers and, when it does not fit, what would."""
        fullest = max(range(len(self.usage)), key=lambda i: self.usage[i].total, default=0)
        used = self.usage[fullest] if self.usage else Usage()
        where = f"GPU {fullest} of {len(self.usage)}" if len(self.usage) > 1 else "the GPU"
        verdict = "fits in" if self.fits else "more than"
        text = (
            f"needs {_size(used.total)} on {where} (weights {_size(used.weights)}, KV cache {_size(used.kv_cache)}, "
            f"compute buffers {_size(used.compute)}), {verdict} the {_size(self.usable)} usable of its "
            f"{_size(self.gpu_memory)} ({_size(self.reserve)} go to the CUDA context)"
        )
        named = len(self.suggestions) > 1
        hints = [_hint(name, s, named) for name, s in self.suggestions.items()]
        return text + (": " + "; ".join(hints) if hints else "")


def gpu_memory(model: Model, gpus: int) -> tuple[Usage, ...]:
    """Bytes per GPU of one model on a replica with `gpus` GPUs."""
    if gpus <= 0:
        return ()
    g, s = model.gguf, model.settings
    n = g.layers
    offloaded = max(0, min(s.gpu_layers, n + 1))
    first = n + 1 - offloaded
    cells = _cells(s)
    swa = set(g.sliding_window_layers)
    swa_cells = _swa_cells(g, s)
    weights = [0] * gpus
    kv = [0] * gpus
    used = [False] * gpus
    for layer in range(first, n + 1):
        gpu = _gpu_of(layer - first, offloaded, gpus, s.tensor_split)
        used[gpu] = True
        if layer == n:
            weights[gpu] += g.output_bytes
            continue
        weights[gpu] += g.layer_bytes[layer] if layer < len(g.layer_bytes) else 0
        elements = g.layer_kv_elements[layer] if layer < len(g.layer_kv_elements) else 0
        kv[gpu] += (swa_cells if layer in swa else cells) * kv_row_bytes(elements, s.kv_cache_type)
    # Even with no layer offloaded llama.cpp runs the prompt's large matrix products on the first GPU (op offload,
    # for batches of 32 tokens or more): the weights of a layer left on the CPU are copied there for it.
    used[0] = True
    compute = compute_bytes(g, s)
    copied = (
        max(g.layer_bytes, default=0) if first > 0 and min(_cells(s), s.batch) >= OP_OFFLOAD_MIN_BATCH else 0
    )
    return tuple(
        Usage(weights[i], kv[i], (compute if used[i] else 0) + (copied if i == 0 else 0)) for i in range(gpus)
    )


def check(
    models: Sequence[Model], *, gpu_memory_bytes: int, gpus: int, reserve: int = GPU_RESERVE_BYTES
) -> Fit:
    """Whether the models of one replica fit its `gpus` GPUs of `gpu_memory_bytes` each; if not, per model the
    largest gpuLayers, contextSize and kvCacheType that would fit with the other models unchanged."""
    usage = _replica(models, gpus)
    usable = gpu_memory_bytes - reserve
    fits = all(u.total <= usable for u in usage)
    suggestions: dict[str, Suggestion] = {}
    if not fits:
        for i, model in enumerate(models):
            others = [*models[:i], *models[i + 1 :]]

            def fits_with(settings: Settings, model: Model = model, others: list[Model] = others) -> bool:
                trial = [*others, replace(model, settings=settings)]
                return all(u.total <= usable for u in _replica(trial, gpus))

            suggestions[model.name] = _suggest(model, fits_with)
    return Fit(fits, usage, gpu_memory_bytes, reserve, suggestions)


def auto_gpu_layers(
    model: Model,
    *,
    gpu_memory_bytes: int,
    gpus: int,
    others: Sequence[Model] = (),
    reserve: int = GPU_RESERVE_BYTES,
) -> int:
    """`gpuLayers: auto`: the most layers (counting the output layer, as llama.cpp does) that fit, 0 if none."""
    usable = gpu_memory_bytes - reserve

    def fits_with(settings: Settings) -> bool:
        return all(u.total <= usable for u in _replica([*others, replace(model, settings=settings)], gpus))

    return _largest(0, model.gguf.layers + 1, lambda n: fits_with(replace(model.settings, gpu_layers=n))) or 0


def compute_bytes(g: GGUFStatus, s: Settings) -> int:
    """llama.cpp's compute buffer on a GPU that runs layers, estimated.

    llama.cpp sizes it by allocating its worst-case graph: a batch of min(contextSize, batch) tokens that attend to
    the whole cache and yield one output row per slot (sched_reserve; the server sets n_outputs_max to the slots),
    ggml-alloc reusing a tensor's memory once its last reader has run. The peak is the larger of
    - inside a layer: the attention masks (cache cells x tokens, f16 with flash attention, read by every layer),
      the residual stream (4 hidden-size rows of float32 per token) and the larger of the attention step (Q, K, V
      and its output; without flash attention also the heads x tokens x cells matrix of scores) and the
      feed-forward step (gate, up and their product; with experts, those of the experts a token uses);
    - at the output, the masks freed: the logits, a vocabulary-size row per output row.
    Checked against llama.cpp's own figures by benchmarks/gguf_fit.py (within 7 %).
    """
    tokens = min(_cells(s), s.batch)
    outputs = min(s.slots, tokens)
    cells = _cells(s)
    swa_cells = _swa_cells(g, s) if g.sliding_window_layers else 0
    heads, kv_heads = g.head_count, g.head_count_kv
    residual = 4 * g.embedding_length * tokens
    qkv = (
        heads * g.key_length + kv_heads * (g.key_length + g.value_length) + heads * g.value_length
    ) * tokens
    attention = qkv if s.flash_attention else qkv + heads * cells * tokens
    width = (
        g.expert_used_count * (g.expert_feed_forward_length or g.feed_forward_length)
        if g.expert_count
        else g.feed_forward_length
    )
    feed_forward = 3 * width * tokens
    layer = residual + max(attention, feed_forward)
    output = (g.vocabulary_size + g.embedding_length) * outputs
    masks = (2 if s.flash_attention else FLOAT32) * (cells + swa_cells) * tokens
    return max(FLOAT32 * layer + masks, FLOAT32 * output)


def _replica(models: Sequence[Model], gpus: int) -> tuple[Usage, ...]:
    total = [Usage()] * gpus
    for model in models:
        total = [a + b for a, b in zip(total, gpu_memory(model, gpus), strict=True)]
    return tuple(total)


def _cells(s: Settings) -> int:
    return -(-s.context_size // CONTEXT_STEP) * CONTEXT_STEP


def _swa_cells(g: GGUFStatus, s: Settings) -> int:
    if s.swa_full:
        return _cells(s)
    window = g.sliding_window or 0
    ubatch = min(_cells(s), s.batch)
    wanted = min(_cells(s), window * s.slots + ubatch)
    return -(-wanted // CONTEXT_STEP) * CONTEXT_STEP


def _gpu_of(index: int, offloaded: int, gpus: int, split: tuple[float, ...]) -> int:
    """The GPU of the index-th offloaded layer: llama.cpp's upper_bound over the cumulative split."""
    weights = split if len(split) == gpus and sum(split) > 0 else (1.0,) * gpus
    total = sum(weights)
    position = index / offloaded
    cumulative = 0.0
    for gpu, weight in enumerate(weights):
        cumulative += weight / total
        if position < cumulative:
            return gpu
    return gpus - 1


def _largest(low: int, high: int, ok: Callable[[int], bool]) -> int | None:
    """The largest n in [low, high] with ok(n), for ok true up to some n and false after; None if ok(low) is not."""
    if not ok(low):
        return None
    while low < high:
        middle = (low + high + 1) // 2
        if ok(middle):
            low = middle
        else:
            high = middle - 1
    return low


def _suggest(model: Model, fits_with: Callable[[Settings], bool]) -> Suggestion:
    s = model.settings
    layers = _largest(
        0, min(s.gpu_layers, model.gguf.layers + 1), lambda n: fits_with(replace(s, gpu_layers=n))
    )
    steps = _largest(
        1,
        max(1, s.context_size // CONTEXT_STEP),
        lambda k: fits_with(replace(s, context_size=k * CONTEXT_STEP)),
    )
    # A quantized KV cache needs flash attention (the API rejects it with flashAttention off).
    kv_types = KV_CACHE_TYPES if s.flash_attention else ()
    kv_type = next((t for t in kv_types if fits_with(replace(s, kv_cache_type=t))), None)
    return Suggestion(
        gpu_layers=layers,
        context_size=steps * CONTEXT_STEP if steps is not None else None,
        kv_cache_type=kv_type if kv_type != s.kv_cache_type else None,
    )


def _hint(name: str, s: Suggestion, named: bool) -> str:
    options = []
    if s.gpu_layers is not None:
        options.append(f"gpuLayers {s.gpu_layers}")
    if s.context_size is not None:
        options.append(f"contextSize {s.context_size}")
    if s.kv_cache_type is not None:
        options.append(f"kvCacheType {s.kv_cache_type}")
    subject = f'for model "{name}" ' if named else ""
    if not options:
        return f"{subject}no gpuLayers, contextSize or kvCacheType fits: use GPUs with more memory"
    return f"{subject}the largest that fit: " + ", or ".join(options)


def _size(n: int) -> str:
    return f"{n / GiB:.1f} GiB" if n >= GiB else f"{n / MiB:.0f} MiB"

"""LLMModel -> LocalAI model YAML, using only field names LocalAI reads (core/config, core/schema at v4.9.0)."""

from __future__ import annotations

from typing import Any

import yaml

from localai_operator.api.llmmodel import LLMModel

# llama.cpp clamps to the model's layer count, so a large number offloads every layer.
ALL_LAYERS = 999
# Slots when LLMModel.spec.parallel is unset: llama.cpp server's own default on a GPU (it picks 4 slots with a unified
# KV cache when -np is left automatic; not measured here), two on a CPU pool: measured on LocalAI v4.9.0 with 2 cores
# (benchmarks/README.md, real_node.py --knobs), two slots gave two concurrent streams 1.36x the tokens/s of one slot,
# which serves them in turn (6 rounds of 6), and cost a lone request nothing.
DEFAULT_GPU_SLOTS = 4
DEFAULT_CPU_SLOTS = 2
# Backend options a CPU pool gets unless the model's own options name them. swa_full: a sliding-window layer keeps
# every position instead of the window, so llama.cpp can cut a slot back to exactly where a new prompt leaves the
# cached one. Without it LocalAI's gRPC backend (no message spans, so no checkpoint at a user message) re-reads
# hundreds of tokens of a shared system prompt on every new conversation, and on a CPU that is seconds
# (benchmarks/README.md, prefix affinity). A GPU reads them in milliseconds and its memory is the scarce thing, so a
# GPU pool keeps the window. Models without sliding-window layers ignore it.
CPU_OPTIONS: tuple[str, ...] = ("swa_full:true",)


def option_name(option: str) -> str:
    return option.split(":", 1)[0]


def slots(model: LLMModel, *, gpu: bool, parallel_requests: bool | None = None) -> int:
    """Requests the model answers at once on a pool (llama.cpp n_parallel): what the router's concurrency can use."""
    if parallel_requests is False:
        return 1
    if model.spec.parallel is not None:
        return model.spec.parallel
    return DEFAULT_GPU_SLOTS if gpu else DEFAULT_CPU_SLOTS


def model_config(model: LLMModel, *, gpu: bool, parallel_requests: bool | None = None) -> dict[str, Any]:
    spec = model.spec
    # "auto" reaches here only where the fit could not resolve it to a number (control/gpufit.py): the default.
    if spec.gpu_layers is None or spec.gpu_layers == "auto":
        gpu_layers = ALL_LAYERS if gpu else 0
    else:
        gpu_layers = ALL_LAYERS if spec.gpu_layers == "all" else int(spec.gpu_layers)
    flash = spec.flash_attention
    if flash == "auto" and spec.kv_cache_type != "f16":
        flash = "on"
    parameters: dict[str, Any] = {"model": spec.source.file_name(), "batch": spec.batch}
    sampling = spec.parameters
    for key, value in (
        ("temperature", sampling.temperature),
        ("top_p", sampling.top_p),
        ("top_k", sampling.top_k),
        ("max_tokens", sampling.max_tokens),
        ("seed", sampling.seed),
        ("repeat_penalty", sampling.repeat_penalty),
    ):
        if value is not None:
            parameters[key] = value
    # f16, low_vram and numa are not written: LocalAI's llama-cpp backend never reads them (docs/localai-facts.md).
    config: dict[str, Any] = {
        "name": model.name,
        "backend": spec.backend,
        "parameters": parameters,
        "context_size": spec.context_size,
        "gpu_layers": gpu_layers,
        "mmap": spec.mmap,
        "mmlock": spec.mlock,
        "cache_type_k": spec.kv_cache_type,
        "cache_type_v": spec.kv_cache_type,
        "flash_attention": flash,
        # The backend reads slots only from this list (or env LLAMACPP_PARALLEL) and defaults to 1
        # (backend/cpp/llama-cpp/grpc-server.cpp, params.n_parallel).
        "options": [
            f"parallel:{slots(model, gpu=gpu, parallel_requests=parallel_requests)}",
            *backend_options(model, gpu=gpu),
        ],
    }
    if spec.embeddings:
        config["embeddings"] = True
    if spec.mmproj is not None:
        # LocalAI joins it to the models directory (core/backend/options.go, grpcModelOpts).
        config["mmproj"] = spec.mmproj.file_name()
    if spec.tensor_split is not None:
        config["tensor_split"] = spec.tensor_split
    if spec.main_gpu is not None:
        config["main_gpu"] = str(
            spec.main_gpu
        )  # a string in LocalAI's LLMConfig, parsed with stoi by the backend
    if spec.template is not None:
        template = {
            key: value
            for key, value in (
                ("chat", spec.template.chat),
                ("chat_message", spec.template.chat_message),
                ("completion", spec.template.completion),
                ("use_tokenizer_template", spec.template.use_tokenizer_template),
            )
            if value is not None
        }
        if template:
            config["template"] = template
    if spec.stopwords:
        config["stopwords"] = list(spec.stopwords)
    if spec.description:
        config["description"] = spec.description
    return config


def backend_options(model: LLMModel, *, gpu: bool) -> list[str]:
    """The model's backend options as rendered after parallel: the operator's defaults for the pool's kind, less
    those the model names itself, then the model's own."""
    named = {option_name(option) for option in model.spec.options}
    defaults = () if gpu else CPU_OPTIONS
    return [*(option for option in defaults if option_name(option) not in named), *model.spec.options]


# libyaml's emitter writes the same YAML as PyYAML's pure-Python one, about six times faster: rendering is most
# of the operator's CPU when a burst of pools arrives.
_DUMPER = getattr(yaml, "CSafeDumper", yaml.SafeDumper)


def dump_yaml(data: Any) -> str:
    """`data` as YAML, keys in their order."""
    text: str = yaml.dump(data, Dumper=_DUMPER, sort_keys=False)
    return text


def model_config_yaml(model: LLMModel, *, gpu: bool, parallel_requests: bool | None = None) -> str:
    return dump_yaml(model_config(model, gpu=gpu, parallel_requests=parallel_requests))

"""LLMModel -> LocalAI model YAML, using only field names LocalAI reads (core/config, core/schema)."""

from __future__ import annotations

from typing import Any

import yaml

from localai_operator.api.llmmodel import LLMModel

# llama.cpp clamps to the model's layer count, so a large number offloads every layer.
ALL_LAYERS = 999


def model_config(model: LLMModel, *, gpu: bool) -> dict[str, Any]:
    spec = model.spec
    if spec.gpu_layers is None:
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
    config: dict[str, Any] = {
        "name": model.name,
        "backend": spec.backend,
        "parameters": parameters,
        "context_size": spec.context_size,
        "f16": gpu if spec.f16 is None else spec.f16,
        "gpu_layers": gpu_layers,
        "mmap": spec.mmap,
        "mmlock": spec.mlock,
        "low_vram": spec.low_vram,
        "numa": spec.numa,
        "cache_type_k": spec.kv_cache_type,
        "cache_type_v": spec.kv_cache_type,
        "flash_attention": flash,
    }
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


# libyaml's emitter writes the same YAML as PyYAML's pure-Python one, about six times faster: rendering is most
# of the operator's CPU when a burst of pools arrives.
_DUMPER = getattr(yaml, "CSafeDumper", yaml.SafeDumper)


def model_config_yaml(model: LLMModel, *, gpu: bool) -> str:
    return yaml.dump(model_config(model, gpu=gpu), Dumper=_DUMPER, sort_keys=False)

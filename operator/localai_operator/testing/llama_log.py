"""What llama.cpp says in a real `local-ai` v4.9.0 log about the memory it allocated: the model, KV cache and compute
buffer sizes its backend prints while loading (trace-level lines: the backend prints them with the model option
verbosity:4; LocalAI relays its backend's stderr at debug level). Read by the real-LocalAI tests and benchmarks to
hold the operator's GPU-memory estimate (gguf/fit.py) to the binary's own figures."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Final

from localai_operator.api.llmmodel import LLMModel
from localai_operator.gguf import fit
from localai_operator.gguf.facts import gguf_status
from localai_operator.gguf.header import read_header
from localai_operator.render.model_config import backend_options, slots

MIB: Final = 1024 * 1024

# e.g. `load_tensors:   CPU_Mapped model buffer size =   235.16 MiB`, `llama_kv_cache:        CPU KV buffer size =
# 24.00 MiB` (one per cache: a sliding-window model has two), `sched_reserve:        CPU compute buffer size = 25.77 MiB`
BUFFER: Final = re.compile(r"(\w+) (model|KV|compute) buffer size =\s*([0-9.]+) MiB")
# The backend option that makes llama.cpp's loader print them.
VERBOSE_OPTION: Final = "verbosity:4"


def buffer_sizes(log: str) -> dict[str, float]:
    """MiB per kind of buffer (model, repack, KV, compute), summed over the log's lines; `repack` is the CPU's
    repacked copy of some weights (CPU_REPACK, on an AVX2 CPU), which a GPU does not make."""
    sizes = {"model": 0.0, "repack": 0.0, "KV": 0.0, "compute": 0.0}
    for line in log.splitlines():
        match = BUFFER.search(line)
        if match and "~llama_context" not in line:  # a context's buffers are logged again when it is freed
            buffer, kind, mib = match.groups()
            sizes["repack" if buffer.endswith("REPACK") else kind] += float(mib)
    return sizes


def rendered_estimate(path: Path, model: LLMModel, *, gpu: bool) -> dict[str, float]:
    """The operator's estimate in MiB, keyed as `buffer_sizes`, for `model` (its GGUF file at `path`) as a pool of
    that kind renders it, every layer offloaded: "model" is every tensor once (CPU_Mapped)."""
    with path.open("rb") as f:
        header = read_header(f)
    status = gguf_status(header)
    settings = fit.settings_of(
        model.spec,
        gpu_layers=status.layers + 1,
        slots=slots(model, gpu=gpu),
        options=backend_options(model, gpu=gpu),
    )
    (usage,) = fit.gpu_memory(fit.Model(model.name, status, settings), gpus=1)
    weights = sum(t.n_bytes for t in header.tensors)
    return {"model": weights / MIB, "KV": usage.kv_cache / MIB, "compute": usage.compute / MIB}

"""What llama.cpp says in a real `local-ai` v4.9.0 log about the memory it allocated: the model, KV cache and compute
buffer sizes its backend prints while loading (trace-level lines: the backend prints them with the model option
verbosity:4; LocalAI relays its backend's stderr at debug level). Read by the real-LocalAI tests and benchmarks to
hold the operator's GPU-memory estimate (gguf/fit.py) to the binary's own figures."""

from __future__ import annotations

import re
from typing import Final

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

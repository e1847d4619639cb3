"""Pure: what the operator knows of each model's GGUF header, and whether a GPU pool's models fit the GPU memory of
the nodes it can land on, before anything is rolled out; `gpuLayers: auto` resolved to the most layers that fit.

The arithmetic is gguf/fit.py's; here are the decisions around it: where the GPU memory comes from (the
nvidia.com/gpu.memory label of the nodes the pool can land on, the smallest of them, else
spec.accelerator.memoryMiB), what happens while a header is being read (the pool waits: an edit must not roll a
model that turns out not to fit) or cannot be read (the fit is not checked, and said so), and the conditions.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Final, Literal

from localai_operator.api import InferencePool, LLMModel
from localai_operator.api.llmmodel import GGUFStatus
from localai_operator.constants import GPU_MEMORY_LABEL, GPU_PRODUCT_LABEL
from localai_operator.control.status import Check
from localai_operator.gguf import fit
from localai_operator.render.model_config import ALL_LAYERS, backend_options, slots

MiB: Final = 1024 * 1024
GPU_MEMORY = "GPUMemory"
INSUFFICIENT = "InsufficientGPUMemory"

# Read: the header is in `gguf`. NotGGUF: the file is no GGUF model llama.cpp loads (`problem` says why).
# Unreadable: the operator could not read it (no answer, an HTTP error, a gated source; `problem` says why).
HeaderState = Literal["Read", "NotGGUF", "Unreadable"]


@dataclass(frozen=True)
class Header:
    """What reading one model source's GGUF header gave. `serial` tells results apart cheaply (fingerprints)."""

    state: HeaderState
    serial: int
    gguf: GGUFStatus | None = None
    problem: str | None = None
    source: str = ""  # where it was read from, for messages
    message: str | None = None  # the GGUFHeader condition's message as stored, for a result carried over
    unreachable: bool = False  # Unreadable because no connection to the server could be made


@dataclass(frozen=True)
class Decision:
    """The GPU-memory check of a pool (None: a CPU pool), whether the pool must wait (nothing applied: a header
    is still being read, or the models do not fit), and the number each `gpuLayers: auto` model renders."""

    check: Check | None = None
    hold: bool = False
    gpu_layers: Mapping[str, int] = field(default_factory=dict)


def gpu_memory_of(
    pool: InferencePool, gpu_nodes: Sequence[tuple[Mapping[str, str], int]]
) -> tuple[int, str] | None:
    """Bytes of one GPU of the pool's replicas, and where that figure comes from; None if unknown.

    The nodes the pool can land on: schedulable GPU nodes matching its nodeSelector (and accelerator.product) with
    at least accelerator.gpus GPUs. Of those labelled with nvidia.com/gpu.memory, the smallest: a replica may land
    on any of them. Else spec.accelerator.memoryMiB."""
    spec = pool.spec
    selector = dict(spec.node_selector)
    if spec.accelerator.product:
        selector[GPU_PRODUCT_LABEL] = spec.accelerator.product
    labelled = []
    for labels, gpus in gpu_nodes:
        if gpus < spec.accelerator.gpus or any(labels.get(k) != v for k, v in selector.items()):
            continue
        value = labels.get(GPU_MEMORY_LABEL, "")
        if value.isdigit() and 0 < int(value) <= 16_777_216:
            labelled.append(int(value))
    if labelled:
        where = f"{GPU_MEMORY_LABEL} of the {len(labelled)} node(s) the pool can land on"
        return min(labelled) * MiB, (f"the smallest {where}" if len(labelled) > 1 else where)
    if spec.accelerator.memory_mib:
        return spec.accelerator.memory_mib * MiB, "spec.accelerator.memoryMiB"
    return None


def decide(
    pool: InferencePool,
    models: Mapping[str, LLMModel],
    headers: Mapping[str, Header | None],
    gpu_nodes: Sequence[tuple[Mapping[str, str], int]],
) -> Decision:
    """The GPU-memory fit of one replica of `pool` serving `models`; `headers` per model name, None while being
    read."""
    gpus = pool.spec.accelerator.gpus
    if not gpus:
        return Decision()
    names = list(pool.spec.models)
    reading = [n for n in names if headers.get(n) is None]
    if reading:
        return Decision(
            Check(GPU_MEMORY, None, "ReadingModels", f"Reading the GGUF header of {_quoted(reading)} first."),
            hold=True,
        )
    unknown = [n for n in names if (h := headers[n]) is None or h.gguf is None]
    memory = gpu_memory_of(pool, gpu_nodes)
    if unknown or memory is None:
        if unknown:
            why = f"the GGUF header of {_quoted(unknown)} is not known (its status says why)"
        else:
            why = (
                f"no node the pool can land on has the {GPU_MEMORY_LABEL} label and spec.accelerator.memoryMiB "
                "is not set"
            )
        auto = [n for n in names if models[n].spec.gpu_layers == "auto"]
        tail = f'; gpuLayers "auto" of {_quoted(auto)} renders "all"' if auto else ""
        return Decision(
            Check(
                GPU_MEMORY,
                None,
                "NotChecked",
                f"The GPU-memory fit is not checked: {why}{tail}.",
                advisory=True,
            )
        )
    memory_bytes, where = memory
    resolved: dict[str, int] = {}
    fixed = [
        _model(models[n], headers, pool, _layers(models[n]))
        for n in names
        if models[n].spec.gpu_layers != "auto"
    ]
    autos = [n for n in names if models[n].spec.gpu_layers == "auto"]
    for i, name in enumerate(autos):
        # Each auto model after the others: those before it at their resolved numbers, those after at none.
        later = [_model(models[n], headers, pool, 0) for n in autos[i + 1 :]]
        done = [_model(models[n], headers, pool, resolved[n]) for n in autos[:i]]
        resolved[name] = fit.auto_gpu_layers(
            _model(models[name], headers, pool, 0),
            gpu_memory_bytes=memory_bytes,
            gpus=gpus,
            others=[*fixed, *done, *later],
        )
    replica = [_model(models[n], headers, pool, resolved.get(n, _layers(models[n]))) for n in names]
    result = fit.check(replica, gpu_memory_bytes=memory_bytes, gpus=gpus)
    chosen = "".join(f', gpuLayers "auto" of "{n}" is {resolved[n]}' for n in autos)
    subject = (
        f"One replica ({gpus} GPU{'s' if gpus > 1 else ''} of {memory_bytes // MiB} MiB, {where}{chosen})"
    )
    if result.fits:
        return Decision(
            Check(GPU_MEMORY, True, "Fits", f"{subject} {result.message()}."), gpu_layers=resolved
        )
    message = (
        f"{subject} {result.message()}. The pool is not rolled out: its running replicas keep serving the "
        "previous models."
    )
    return Decision(Check(GPU_MEMORY, False, INSUFFICIENT, message), hold=True, gpu_layers=resolved)


def _layers(model: LLMModel) -> int:
    layers = model.spec.gpu_layers
    return ALL_LAYERS if layers is None or layers in ("all", "auto") else int(layers)


def _model(
    model: LLMModel, headers: Mapping[str, Header | None], pool: InferencePool, layers: int
) -> fit.Model:
    header = headers[model.name]
    assert header is not None and header.gguf is not None, "only models with a header are fitted"
    count = slots(model, gpu=True, parallel_requests=pool.spec.parallel_requests)
    options = backend_options(model, gpu=True)
    return fit.Model(
        model.name, header.gguf, fit.settings_of(model.spec, gpu_layers=layers, slots=count, options=options)
    )


def _quoted(names: Sequence[str]) -> str:
    return ", ".join(f'"{n}"' for n in names)

"""The GPU-memory fit of a pool before rollout (control/gpufit.py through plan.plan_pool): where the GPU memory comes
from, what is held, what `gpuLayers: auto` renders, and the GGUFHeader / ContextFits conditions of a model."""

from __future__ import annotations

from typing import Any

import pytest
import yaml

from localai_operator.api import InferencePool
from localai_operator.api.llmmodel import GGUFStatus
from localai_operator.constants import GPU_MEMORY_LABEL, GPU_PRODUCT_LABEL
from localai_operator.control import plan as pl
from localai_operator.control import status as st
from localai_operator.control.gpufit import Header, gpu_memory_of
from localai_operator.gguf.facts import gguf_status
from localai_operator.gguf.header import read_header
from localai_operator.render import RenderSettings
from tests.unit.gguf_samples import LLAMA_3_8B, write_header

SETTINGS = RenderSettings()
GiB_MiB = 1024  # MiB in a GiB
GiB = 1024 * 1024 * 1024


@pytest.fixture(scope="module")
def llama(tmp_path_factory: pytest.TempPathFactory) -> GGUFStatus:
    path = write_header(LLAMA_3_8B, tmp_path_factory.mktemp("llama") / "llama.gguf")
    with path.open("rb") as f:
        return gguf_status(read_header(f))


def model(name: str = "llama", **spec: Any) -> dict[str, Any]:
    return {
        "kind": "LLMModel",
        "metadata": {"name": name, "namespace": "ns", "uid": f"{name}-uid", "generation": 1},
        "spec": {"source": {"url": f"https://models.example/{name}.gguf"}, "contextSize": 8192, **spec},
    }


def pool(gpus: int = 1, **spec: Any) -> dict[str, Any]:
    return {
        "kind": "InferencePool",
        "metadata": {"name": "p", "namespace": "ns", "uid": "p-uid", "generation": 1},
        "spec": {"models": ["llama"], "accelerator": {"gpus": gpus, **spec.pop("accelerator", {})}, **spec},
    }


def node(memory_mib: int | None, gpus: int = 1, **labels: str) -> tuple[dict[str, str], int]:
    base = {GPU_PRODUCT_LABEL: "NVIDIA-T4"} | labels
    return (base | ({GPU_MEMORY_LABEL: str(memory_mib)} if memory_mib is not None else {}), gpus)


def planned(
    body: dict[str, Any],
    llama: GGUFStatus | None,
    nodes: list[tuple[dict[str, str], int]],
    models: dict[str, Any] | None = None,
    deployment: dict[str, Any] | None = None,
) -> pl.Plan[st.PoolFacts]:
    models = models or {"llama": model()}
    header = Header("Read", 1, gguf=llama) if llama is not None else None
    observed = pl.PoolObserved(
        body=body,
        models=models,
        owned={("Deployment", "p"): deployment} if deployment else {},
        unschedulable=None,
        gpu_nodes=nodes,
        headers={name: header for name in models},
    )
    return pl.plan_pool(observed, SETTINGS, pl.Renders())


def ready(facts: st.PoolFacts) -> st.Check:
    conditions = st.conditions(st.pool_checks(facts), [], 1, "now")
    found = next(c for c in conditions if c.type == "Ready")
    return st.Check(found.type, {"True": True, "False": False}.get(found.status), found.reason, found.message)


def rendered_gpu_layers(plan: pl.Plan[st.PoolFacts], name: str = "llama") -> Any:
    assert plan.objects is not None
    config_map = next(o for o in plan.objects if o["kind"] == "ConfigMap")
    return yaml.safe_load(config_map["data"][f"{name}.yaml"])["gpu_layers"]


def test_llama_3_8b_on_a_16_gib_gpu_fits_and_is_rolled_out(llama: GGUFStatus) -> None:
    plan = planned(pool(), llama, [node(16 * GiB_MiB)])
    assert plan.objects is not None
    check = plan.facts.gpu_memory
    assert check is not None and (check.ok, check.reason) == (True, "Fits")
    assert "16384 MiB, nvidia.com/gpu.memory of the 1 node(s)" in check.message


def test_llama_3_8b_on_a_5_gib_gpu_is_held_with_the_numbers_and_what_fits(llama: GGUFStatus) -> None:
    # test_gguf_fit works the numbers out by hand: 27 layers, or 2560 tokens, or a q4_0 cache fit 5 GiB.
    plan = planned(pool(), llama, [node(5 * GiB_MiB)], deployment={"metadata": {"name": "p"}})
    assert plan.objects is None  # nothing applied: the running Deployment stays as it is
    check = plan.facts.gpu_memory
    assert check is not None and (check.ok, check.reason) == (False, "InsufficientGPUMemory")
    assert "needs 5.2 GiB on the GPU" in check.message
    assert "the largest that fit: gpuLayers 27, or contextSize 2560, or kvCacheType q4_0" in check.message
    assert "running replicas keep serving" in check.message
    assert ready(plan.facts).reason == "InsufficientGPUMemory" and ready(plan.facts).ok is False
    assert plan.facts.deployment == {"metadata": {"name": "p"}}  # its replicas still show in the status


def test_the_suggested_gpu_layers_makes_it_fit(llama: GGUFStatus) -> None:
    plan = planned(pool(), llama, [node(5 * GiB_MiB)], models={"llama": model(gpuLayers=27)})
    assert plan.objects is not None and rendered_gpu_layers(plan) == 27
    assert ready(plan.facts).reason != "InsufficientGPUMemory"


def test_gpu_layers_auto_renders_the_most_layers_that_fit(llama: GGUFStatus) -> None:
    small = planned(pool(), llama, [node(5 * GiB_MiB)], models={"llama": model(gpuLayers="auto")})
    assert rendered_gpu_layers(small) == 27
    assert (
        small.facts.gpu_memory is not None
        and 'gpuLayers "auto" of "llama" is 27' in small.facts.gpu_memory.message
    )
    large = planned(pool(), llama, [node(24 * GiB_MiB)], models={"llama": model(gpuLayers="auto")})
    assert rendered_gpu_layers(large) == 33  # 32 layers and the output layer: all of them


def test_the_smallest_gpu_of_the_nodes_the_pool_can_land_on_decides(llama: GGUFStatus) -> None:
    nodes = [
        node(24 * GiB_MiB),
        node(5 * GiB_MiB),
        node(2 * GiB_MiB, **{GPU_PRODUCT_LABEL: "other"}),  # not its product
        node(1 * GiB_MiB, gpus=0),  # too few GPUs
    ]
    body = InferencePool.parse(pool(accelerator={"product": "NVIDIA-T4"}))
    assert gpu_memory_of(body, nodes) == (
        5 * GiB,
        "the smallest nvidia.com/gpu.memory of the 2 node(s) the pool can land on",
    )
    assert planned(pool(accelerator={"product": "NVIDIA-T4"}), llama, nodes).objects is None


def test_memory_mib_counts_only_where_no_node_is_labelled(llama: GGUFStatus) -> None:
    declared = pool(accelerator={"memoryMiB": 5 * GiB_MiB})
    assert gpu_memory_of(InferencePool.parse(declared), [node(None)]) == (
        5 * GiB,
        "spec.accelerator.memoryMiB",
    )
    assert planned(declared, llama, [node(None)]).facts.gpu_memory.reason == "InsufficientGPUMemory"  # type: ignore[union-attr]
    assert planned(declared, llama, [node(16 * GiB_MiB)]).objects is not None  # the label wins


def test_without_a_known_gpu_memory_the_fit_is_not_checked_and_the_pool_rolls_out(llama: GGUFStatus) -> None:
    plan = planned(pool(), llama, [node(None)], models={"llama": model(gpuLayers="auto")})
    assert plan.objects is not None and rendered_gpu_layers(plan) == 999
    check = plan.facts.gpu_memory
    assert check is not None and (check.ok, check.reason, check.advisory) == (None, "NotChecked", True)
    assert ready(plan.facts).reason != "NotChecked"


def test_a_gpu_pool_waits_while_a_models_header_is_read_and_a_cpu_pool_does_not(llama: GGUFStatus) -> None:
    waiting = planned(pool(), None, [node(16 * GiB_MiB)])
    assert waiting.objects is None and waiting.facts.gpu_memory is not None
    assert (waiting.facts.gpu_memory.reason, ready(waiting.facts).reason) == (
        "ReadingModels",
        "ReadingModels",
    )
    cpu = planned(pool(gpus=0), None, [])
    assert cpu.objects is not None and cpu.facts.gpu_memory is None


def model_facts(header: Header | None, context: int = 8192) -> list[Any]:
    body = model(contextSize=context)
    plan = pl.plan_model(pl.ModelObserved(body, (), reads_headers=True, header=header))
    return st.model_status(plan.facts, None, 1, "now").conditions


def test_a_model_reports_its_header_and_a_context_beyond_training_without_losing_ready(
    llama: GGUFStatus,
) -> None:
    conditions = {c.type: c for c in model_facts(Header("Read", 1, gguf=llama), context=16384)}
    assert (conditions["GGUFHeader"].status, conditions["GGUFHeader"].reason) == ("True", "Read")
    assert "llama, 8.03 B parameters, 32 layers" in conditions["GGUFHeader"].message
    beyond = conditions["ContextFits"]
    assert (beyond.status, beyond.reason) == ("False", "ContextBeyondTraining")
    assert "16384" in beyond.message and "8192" in beyond.message
    assert conditions["Ready"].status == "True"


def test_a_file_that_is_no_gguf_makes_the_model_not_ready() -> None:
    conditions = {c.type: c for c in model_facts(Header("NotGGUF", 1, problem="m.gguf is no GGUF model: x"))}
    assert (conditions["Ready"].status, conditions["Ready"].reason) == ("False", "NotGGUF")


def test_an_unreadable_source_leaves_the_model_ready() -> None:
    conditions = {c.type: c for c in model_facts(Header("Unreadable", 1, problem="no route"))}
    assert conditions["GGUFHeader"].status == "Unknown" and conditions["Ready"].status == "True"


def test_while_a_header_is_read_again_the_status_of_the_same_spec_stands_in(llama: GGUFStatus) -> None:
    # After a restart the header is read again: meanwhile the stored status, if written for this generation, holds,
    # so that the restart writes no status and holds no pool.
    body = model() | {
        "status": {"observedGeneration": 1, "gguf": llama.model_dump(mode="json", by_alias=True)}
    }
    stored = pl.stored_header(body)
    assert stored is not None and (stored.state, stored.gguf) == ("Read", llama)
    refused = model() | {
        "status": {
            "observedGeneration": 1,
            "conditions": [
                {"type": "GGUFHeader", "status": "False", "reason": "NotGGUF", "message": "m is no GGUF"}
            ],
        }
    }
    carried = pl.stored_header(refused)
    assert carried is not None and pl.header_check(carried) == st.Check(
        "GGUFHeader", False, "NotGGUF", "m is no GGUF"
    )
    assert pl.stored_header(refused, read_only=True) is None
    edited = body | {"metadata": body["metadata"] | {"generation": 2}}
    assert pl.stored_header(edited) is None  # an edited spec waits for its own header

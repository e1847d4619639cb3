"""Models known before they run, on the real control plane: the operator reads each LLMModel's GGUF header from a
loopback HTTP server (the real Gemma 3 270M, and a Llama 3 8B shaped header) into status.gguf, and a GPU pool on
fake 16 GiB GPUs (kwok nodes labelled nvidia.com/gpu.memory as GPU Feature Discovery does) is not rolled out with a
model that does not fit."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import pytest
from kubernetes import watch
from kubernetes.client.exceptions import ApiException

from localai_operator.constants import GPU_MEMORY_LABEL, GROUP, VERSION
from localai_operator.devcluster.nodes import FakeNode
from localai_operator.testing.file_server import FileServer, serve_files
from tests.helpers import ClusterAccess, kubectl, wait_for
from tests.operator_process import CustomResources, OperatorProcess, model, pool
from tests.unit.gguf_samples import GEMMA_FILE_SIZE, LLAMA_3_8B, sparse_gemma, write_header

pytestmark = pytest.mark.cluster
T = 60
PRODUCT = "Test-GPU-16GB"


@pytest.fixture(scope="module")
def origin(tmp_path_factory: pytest.TempPathFactory) -> Iterator[FileServer]:
    directory = tmp_path_factory.mktemp("origin")
    sparse_gemma(directory)
    write_header(LLAMA_3_8B, directory / "llama-3-8b.gguf", sparse_data=True)
    write_header(LLAMA_3_8B, directory / "quick.gguf", sparse_data=True)  # read by one test only
    (directory / "notes.gguf").write_text("these are not the weights you are looking for\n")
    with serve_files(directory) as server:
        yield server


@pytest.fixture(scope="module")
def gpu_16gib_node(cluster: ClusterAccess) -> Iterator[str]:
    """One kwok node with one GPU of 16 GiB, of a product only the tests below ask for."""
    node = FakeNode(
        name="gpu-16gib-node", gpus=1, gpu_product=PRODUCT, labels={GPU_MEMORY_LABEL: str(16 * 1024)}
    )
    # kubectl, not the client library, whose models insist on a full nodeInfo.
    created = kubectl(cluster, "create", "-f", "-", input=json.dumps(node.manifest(index=200)))
    assert created.returncode == 0, created.stderr
    yield node.name
    kubectl(cluster, "delete", "node", node.name, "--wait=false")


def served(origin: FileServer, name: str, file: str, **spec: Any) -> dict[str, Any]:
    body = model(name, **spec)
    body["spec"]["source"] = {"url": origin.url(file)}
    return body


def gpu_pool(name: str, models: list[str]) -> dict[str, Any]:
    return pool(name, models, gpus=1, accelerator={"gpus": 1, "product": PRODUCT})


def test_a_models_status_shows_its_gguf_header_read_once_with_a_range_request(
    crs: CustomResources, origin: FileServer, operator: OperatorProcess
) -> None:
    crs.create(served(origin, "gemma", "gemma-header-only.gguf", contextSize=65536))

    def gguf() -> Any:
        return (crs.get("LLMModel", "gemma").get("status") or {}).get("gguf")

    status = wait_for(
        gguf, T, "status.gguf of gemma", describe=lambda: crs.get("LLMModel", "gemma").get("status")
    )
    assert (status["architecture"], status["layers"], status["trainedContext"]) == ("gemma3", 18, 32768)
    assert (status["quantization"], status["fileSize"]) == ("Q4_K_M", GEMMA_FILE_SIZE)
    assert status["kvBytesPerTokenPerLayer"] == {"f16": 1024, "q8_0": 544, "q4_0": 288}
    context = crs.condition("LLMModel", "gemma", "ContextFits")
    assert context is not None and (context["status"], context["reason"]) == (
        "False",
        "ContextBeyondTraining",
    )
    assert crs.is_ready("LLMModel", "gemma")  # a context beyond training is said, not refused
    reads = [r for r in origin.requests if r[0] == "gemma-header-only.gguf"]
    assert reads == [("gemma-header-only.gguf", "bytes=0-67108863")]
    assert origin.sent["gemma-header-only.gguf"] < GEMMA_FILE_SIZE // 4


def test_a_header_read_within_a_second_is_in_the_models_first_status_write(
    crs: CustomResources, origin: FileServer, operator: OperatorProcess
) -> None:
    created = crs.create(served(origin, "quick", "quick.gguf"))
    events = watch.Watch().stream(
        crs.api.list_namespaced_custom_object,
        GROUP,
        VERSION,
        crs.namespace,
        CustomResources.PLURALS["LLMModel"],
        field_selector="metadata.name=quick",
        resource_version=created["metadata"]["resourceVersion"],
        timeout_seconds=T,
    )
    first = next((e["object"] for e in events if (e["object"].get("status") or {})), None)
    assert first is not None, "no status written within the timeout"
    status = first["status"]
    # Not a status saying the header is being read, then a second one with it.
    assert (status.get("gguf") or {}).get("architecture") == "llama", status


def test_a_file_that_is_no_gguf_makes_the_model_not_ready_and_says_why(
    crs: CustomResources, origin: FileServer
) -> None:
    crs.create(served(origin, "notes", "notes.gguf"))
    condition = crs.wait_for_reason("LLMModel", "notes", "NotGGUF")
    assert condition["status"] == "False" and "does not start with the GGUF magic" in condition["message"]


def test_a_pool_on_16_gib_gpus_is_held_with_a_suggestion_and_an_edit_to_it_makes_it_ready(
    cluster: ClusterAccess, namespace: str, crs: CustomResources, origin: FileServer, gpu_16gib_node: str
) -> None:
    # Llama 3 8B with 131,072 tokens of f16 KV cache: 16 GiB of cache alone.
    crs.create(served(origin, "llama-long", "llama-3-8b.gguf", contextSize=131072))
    crs.create(gpu_pool("long", ["llama-long"]))

    condition = crs.wait_for_reason("InferencePool", "long", "InsufficientGPUMemory")
    assert condition["status"] == "False"
    assert "16384 MiB" in condition["message"] and "the largest that fit: gpuLayers" in condition["message"]
    layers = int(condition["message"].split("gpuLayers ", 1)[1].split(",", 1)[0])
    assert 0 < layers < 33
    with pytest.raises(ApiException) as refused:
        cluster.apps.read_namespaced_deployment("long", namespace)
    assert refused.value.status == 404  # nothing was rolled out

    crs.patch("LLMModel", "llama-long", {"spec": {"gpuLayers": layers}})
    wait_for(lambda: crs.is_ready("InferencePool", "long"), T, "pool long Ready with the suggested gpuLayers")
    fit = crs.condition("InferencePool", "long", "GPUMemory")
    assert fit is not None and fit["reason"] == "Fits"


def test_an_existing_pool_edited_to_a_model_that_does_not_fit_keeps_its_deployment_untouched(
    cluster: ClusterAccess, namespace: str, crs: CustomResources, origin: FileServer, gpu_16gib_node: str
) -> None:
    crs.create(served(origin, "small", "gemma-header-only.gguf", contextSize=8192, gpuLayers="auto"))
    crs.create(served(origin, "too-long", "llama-3-8b.gguf", contextSize=131072))
    crs.create(gpu_pool("serving", ["small"]))
    wait_for(lambda: crs.is_ready("InferencePool", "serving"), T, "pool serving Ready")
    before = cluster.apps.read_namespaced_deployment("serving", namespace)
    config_before = cluster.core.read_namespaced_config_map("serving-models", namespace)
    assert "gpu_layers: 19" in config_before.data["small.yaml"]  # auto: all 18 layers and the output layer

    crs.patch("InferencePool", "serving", {"spec": {"models": ["too-long"]}})
    crs.wait_for_reason("InferencePool", "serving", "InsufficientGPUMemory")

    after = cluster.apps.read_namespaced_deployment("serving", namespace)
    assert after.metadata.generation == before.metadata.generation
    assert cluster.api.sanitize_for_serialization(after.spec) == cluster.api.sanitize_for_serialization(
        before.spec
    )
    config_after = cluster.core.read_namespaced_config_map("serving-models", namespace)
    assert config_after.metadata.resource_version == config_before.metadata.resource_version
    assert after.status.ready_replicas == 1  # the old ReplicaSet keeps serving
    status = crs.get("InferencePool", "serving")["status"]
    assert status["readyReplicas"] == 1

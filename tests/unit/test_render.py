"""The renderer: samples against golden files, and the behaviours a reviewer relies on."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml

from localai_operator.api import FallbackRoute, InferencePool, LLMModel
from localai_operator.constants import ANNOTATION_CONFIG_HASH
from localai_operator.render import RenderSettings, pool_objects, route_objects
from localai_operator.render.offline import render_paths

ROOT = Path(__file__).resolve().parents[2]
GOLDEN = ROOT / "tests" / "golden" / "samples.yaml"
SHA = "b" * 64
# Field names LocalAI reads (core/config/model_config.go, core/schema/prediction.go at v4.9.0).
LOCALAI_TOP_LEVEL = {
    "name",
    "backend",
    "parameters",
    "context_size",
    "gpu_layers",
    "mmap",
    "mmlock",
    "cache_type_k",
    "cache_type_v",
    "flash_attention",
    "template",
    "stopwords",
    "description",
    "threads",
    "options",
    "embeddings",
    "mmproj",
    "tensor_split",
    "main_gpu",
}
LOCALAI_PARAMETERS = {
    "model",
    "batch",
    "temperature",
    "top_p",
    "top_k",
    "max_tokens",
    "seed",
    "repeat_penalty",
}


def model(name: str = "mistral", **spec: Any) -> LLMModel:
    body = {"source": {"url": f"https://example.org/{name}.gguf", "sha256": SHA}, **spec}
    return LLMModel.parse({"metadata": {"name": name, "namespace": "ai", "uid": "m-uid"}, "spec": body})


def pool(gpus: int = 1, labels: dict[str, str] | None = None, **spec: Any) -> InferencePool:
    body = {"models": ["mistral"], "accelerator": {"gpus": gpus}, **spec}
    meta = {"name": "gpu-pool", "namespace": "ai", "uid": "p-uid", "labels": labels or {}}
    return InferencePool.parse({"metadata": meta, "spec": body})


def route(**spec: Any) -> FallbackRoute:
    body = {"primary": {"poolRef": {"name": "gpu-pool"}}, **spec}
    return FallbackRoute.parse(
        {"metadata": {"name": "chat", "namespace": "ai", "uid": "r-uid"}, "spec": body}
    )


def by_kind(objects: list[dict[str, Any]], kind: str, name: str | None = None) -> dict[str, Any]:
    [obj] = [o for o in objects if o["kind"] == kind and name in (None, o["metadata"]["name"])]
    return obj


def render_pool(p: InferencePool | None = None, m: LLMModel | None = None) -> list[dict[str, Any]]:
    m = m or model()
    return pool_objects(p or pool(), {m.name: m})


def test_samples_render_to_the_golden_file() -> None:
    rendered = render_paths([str(ROOT / "manifests" / "samples")])
    if os.environ.get("UPDATE_GOLDEN"):
        GOLDEN.write_text(rendered)
    assert rendered == GOLDEN.read_text(), "render output changed: review, then `make golden`"


def test_every_rendered_object_passes_strict_kubernetes_schema_validation() -> None:
    for obj in yaml.safe_load_all(GOLDEN.read_text()):
        kubernetes_validate.validate(obj, "1.34.0", strict=True)


def test_gpu_limits_equal_requests_and_equal_accelerator_gpus() -> None:
    deployment = by_kind(render_pool(pool(gpus=2)), "Deployment")
    resources = deployment["spec"]["template"]["spec"]["containers"][0]["resources"]
    assert resources["limits"]["nvidia.com/gpu"] == "2"
    assert resources["requests"]["nvidia.com/gpu"] == "2"


def test_gpu_pools_tolerate_the_gpu_taint_and_select_the_product() -> None:
    p = pool(gpus=1, accelerator={"gpus": 1, "product": "NVIDIA-A100-SXM4-80GB"})
    pod = by_kind(render_pool(p), "Deployment")["spec"]["template"]["spec"]
    assert {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"} in pod["tolerations"]
    assert pod["nodeSelector"] == {"nvidia.com/gpu.product": "NVIDIA-A100-SXM4-80GB"}


def test_cpu_pools_ask_for_no_gpu_and_use_the_cpu_image() -> None:
    pod = by_kind(render_pool(pool(gpus=0)), "Deployment")["spec"]["template"]["spec"]
    container = pod["containers"][0]
    assert "nvidia.com/gpu" not in container["resources"].get("limits", {})
    assert "tolerations" not in pod
    assert container["image"] == RenderSettings().localai_cpu_image


def test_probes_use_localai_health_endpoints() -> None:
    container = by_kind(render_pool(), "Deployment")["spec"]["template"]["spec"]["containers"][0]
    assert container["readinessProbe"]["httpGet"]["path"] == "/readyz"
    assert container["livenessProbe"]["httpGet"]["path"] == "/healthz"
    assert container["startupProbe"]["httpGet"]["path"] == "/healthz"


def test_model_yaml_uses_only_localai_field_names() -> None:
    cm = by_kind(
        render_pool(m=model(kvCacheType="q8_0", parameters={"temperature": 0, "seed": 1})), "ConfigMap"
    )
    config = yaml.safe_load(cm["data"]["mistral.yaml"])
    assert set(config) <= LOCALAI_TOP_LEVEL
    assert set(config["parameters"]) <= LOCALAI_PARAMETERS
    assert config["cache_type_k"] == config["cache_type_v"] == "q8_0"
    assert config["flash_attention"] == "on"  # llama.cpp needs it for a quantized V cache
    assert "mmu" not in config and "kv_cache_quant" not in config
    assert config["parameters"]["batch"] == 512


def test_gpu_layers_default_to_all_on_gpu_pools_and_zero_on_cpu_pools() -> None:
    gpu = yaml.safe_load(by_kind(render_pool(pool(gpus=1)), "ConfigMap")["data"]["mistral.yaml"])
    cpu = yaml.safe_load(by_kind(render_pool(pool(gpus=0)), "ConfigMap")["data"]["mistral.yaml"])
    assert (gpu["gpu_layers"], cpu["gpu_layers"]) == (999, 0)


def test_gpu_layers_auto_left_unresolved_renders_the_default() -> None:
    # The operator resolves "auto" from the GGUF header before rendering (control/gpufit.py); offline, or where
    # the fit is not checked, it is the default.
    auto = model(gpuLayers="auto")
    gpu = yaml.safe_load(by_kind(render_pool(pool(gpus=1), auto), "ConfigMap")["data"]["mistral.yaml"])
    cpu = yaml.safe_load(by_kind(render_pool(pool(gpus=0), auto), "ConfigMap")["data"]["mistral.yaml"])
    assert (gpu["gpu_layers"], cpu["gpu_layers"]) == (999, 0)


def test_threads_default_to_the_cpu_request_in_whole_cores() -> None:
    p = pool(resources={"requests": {"cpu": "6500m", "memory": "8Gi"}})
    env = by_kind(render_pool(p), "Deployment")["spec"]["template"]["spec"]["containers"][0]["env"]
    assert {"name": "LOCALAI_THREADS", "value": "6"} in env


def _config_hash(objects: list[dict[str, Any]]) -> str:
    return str(
        by_kind(objects, "Deployment")["spec"]["template"]["metadata"]["annotations"][ANNOTATION_CONFIG_HASH]
    )


def test_gpu_pools_roll_without_a_surge_pod_and_cpu_pools_start_the_new_pod_first() -> None:
    gpu = by_kind(render_pool(pool(gpus=1)), "Deployment")["spec"]["strategy"]
    cpu = by_kind(render_pool(pool(gpus=0)), "Deployment")["spec"]["strategy"]

    assert gpu == {"type": "RollingUpdate", "rollingUpdate": {"maxSurge": 0, "maxUnavailable": 1}}
    assert cpu == {"type": "RollingUpdate", "rollingUpdate": {"maxSurge": 1, "maxUnavailable": 0}}


def test_spec_rollout_sets_the_rolling_update_of_the_pool_deployment() -> None:
    rollout = {"maxSurge": 0, "maxUnavailable": "50%"}

    strategy = by_kind(render_pool(pool(gpus=0, rollout=rollout)), "Deployment")["spec"]["strategy"]

    assert strategy == {"type": "RollingUpdate", "rollingUpdate": rollout}


def test_changing_only_the_rollout_changes_no_pod_template() -> None:
    before = by_kind(render_pool(pool(gpus=0)), "Deployment")["spec"]["template"]
    after = by_kind(render_pool(pool(gpus=0, rollout={"maxSurge": 0, "maxUnavailable": 1})), "Deployment")

    assert after["spec"]["template"] == before


def test_editing_a_model_changes_the_pod_template_hash() -> None:
    assert _config_hash(render_pool(m=model(contextSize=4096))) != _config_hash(
        render_pool(m=model(contextSize=8192))
    )


def test_editing_only_labels_on_the_pool_changes_nothing_rendered() -> None:
    assert render_pool(pool(labels={"team": "a"})) == render_pool(pool(labels={"team": "b"}))


def test_no_label_of_the_custom_resource_is_copied_to_children() -> None:
    for obj in render_pool(pool(labels={"argocd.argoproj.io/instance": "apps"})):
        assert "argocd.argoproj.io/instance" not in obj["metadata"]["labels"]


def test_children_are_owned_by_the_pool_as_controller() -> None:
    for obj in render_pool():
        [ref] = obj["metadata"]["ownerReferences"]
        assert (ref["kind"], ref["uid"], ref["controller"]) == ("InferencePool", "p-uid", True)


def test_pdb_only_when_more_than_one_replica_and_pvc_only_with_storage() -> None:
    assert {o["kind"] for o in render_pool(pool(replicas=1))} == {
        "ConfigMap",
        "Deployment",
        "Service",
        "NetworkPolicy",
    }
    kinds = {
        o["kind"] for o in render_pool(pool(replicas=3, storage={"size": "20Gi", "storageClassName": "fast"}))
    }
    assert {"PodDisruptionBudget", "PersistentVolumeClaim"} <= kinds


def test_init_container_downloads_every_model_with_its_checksum() -> None:
    cm = by_kind(render_pool(), "ConfigMap")
    [entry] = yaml.safe_load(cm["data"]["downloads.json"])
    assert entry == {
        "model": "mistral",
        "file": "mistral.gguf",
        "url": "https://example.org/mistral.gguf",
        "sha256": SHA,
        "tokenEnv": None,
        "maxBytes": 100 * 2**30,  # no size declared: at most the models emptyDir's default limit
    }


def test_a_hugging_face_token_comes_from_its_secret_never_the_configmap() -> None:
    m = model(
        source={
            "huggingFace": {
                "repo": "o/r",
                "file": "mistral.gguf",
                "tokenSecretRef": {"name": "hf", "key": "token"},
            }
        }
    )
    objects = render_pool(m=m)
    init = by_kind(objects, "Deployment")["spec"]["template"]["spec"]["initContainers"][0]
    assert init["env"] == [
        {"name": "MODEL_TOKEN_0", "valueFrom": {"secretKeyRef": {"name": "hf", "key": "token"}}}
    ]


def test_service_listens_on_8080_named_http() -> None:
    assert by_kind(render_pool(), "Service", "gpu-pool")["spec"]["ports"][0] == {
        "name": "http",
        "port": 8080,
        "targetPort": "http",
        "protocol": "TCP",
    }


def test_route_config_holds_no_secret_and_the_deployment_reads_the_key_from_the_secret() -> None:
    objects = route_objects(route(fallback={"apiKeySecretRef": {"name": "holysheep", "key": "api-key"}}))
    config = yaml.safe_load(by_kind(objects, "ConfigMap")["data"]["router.yaml"])
    assert config["fallback"]["apiKeyEnv"] == "LOCALAI_OPERATOR_FALLBACK_API_KEY"
    assert config["local"]["discovery"]["url"] == "http://gpu-pool-pods.ai.svc:8080/v1"
    container = by_kind(objects, "Deployment")["spec"]["template"]["spec"]["containers"][0]
    assert container["env"] == [
        {
            "name": "LOCALAI_OPERATOR_FALLBACK_API_KEY",
            "valueFrom": {"secretKeyRef": {"name": "holysheep", "key": "api-key"}},
        }
    ]
    assert container["args"][:3] == ["router", "--config", "/etc/localai-operator/router/router.yaml"]


def test_a_sensitive_route_renders_no_fallback_and_no_key() -> None:
    objects = route_objects(route(policy={"sensitive": True}))
    config = yaml.safe_load(by_kind(objects, "ConfigMap")["data"]["router.yaml"])
    assert "fallback" not in config and config["policy"]["sensitive"] is True
    assert "env" not in by_kind(objects, "Deployment")["spec"]["template"]["spec"]["containers"][0]


def test_the_rendered_route_config_is_what_the_router_loads(tmp_path: Path) -> None:
    from localai_operator.wire import RouterConfig

    objects = route_objects(
        route(fallback={"apiKeySecretRef": {"name": "k", "key": "k"}, "modelMap": {"a": "b"}})
    )
    path = tmp_path / "router.yaml"
    path.write_text(by_kind(objects, "ConfigMap")["data"]["router.yaml"])
    loaded = RouterConfig.load(path)
    assert loaded.fallback is not None and loaded.fallback.model_map == {"a": "b"}


def test_a_pool_route_renders_each_pods_slots_per_model_from_llmmodel_parallel() -> None:
    models = {"mistral": model(parallel=6), "qwen": model("qwen")}
    served = pool(models=["mistral", "qwen"])
    objects = route_objects(route(), pool=served, models=models)
    local = yaml.safe_load(by_kind(objects, "ConfigMap")["data"]["router.yaml"])["local"]
    assert (local["pool"], local["slots"]) == ("gpu-pool", {"mistral": 6, "qwen": 4})


def test_a_pool_without_parallel_requests_gives_the_router_one_slot_per_model() -> None:
    objects = route_objects(
        route(), pool=pool(gpus=0, parallelRequests=False), models={"mistral": model(parallel=6)}
    )
    local = yaml.safe_load(by_kind(objects, "ConfigMap")["data"]["router.yaml"])["local"]
    assert local["slots"] == {"mistral": 1}


def test_the_router_keeps_its_spend_ledger_in_an_emptydir() -> None:
    template = by_kind(route_objects(route()), "Deployment")["spec"]["template"]["spec"]
    [mount] = [m for m in template["containers"][0]["volumeMounts"] if m["name"] == "state"]
    [volume] = [v for v in template["volumes"] if v["name"] == "state"]
    config = yaml.safe_load(by_kind(route_objects(route()), "ConfigMap")["data"]["router.yaml"])
    assert "emptyDir" in volume and config["server"]["stateDirectory"] == mount["mountPath"]


def test_render_names_a_model_missing_from_the_input(tmp_path: Path) -> None:
    (tmp_path / "pool.yaml").write_text(
        yaml.safe_dump(
            {
                "apiVersion": "llm.localai-operator.io/v1alpha1",
                "kind": "InferencePool",
                "metadata": {"name": "p"},
                "spec": {"models": ["ghost"]},
            }
        )
    )
    with pytest.raises(ValueError, match="ghost"):
        render_paths([str(tmp_path)])

"""The pool as LocalAI v4.9.0 really behaves: pinned backends, air-gapped images, a closed admin API, slots,
readiness after the preload, pods untouched by operator upgrades (docs/localai-facts.md has the sources)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml

from localai_operator.api import FallbackRoute, InferencePool, LLMModel
from localai_operator.constants import ANNOTATION_CONFIG_HASH
from localai_operator.render import RenderSettings, pool_objects, route_objects
from localai_operator.render.common import DOWNLOADER_VERSION, LOCALAI_VERSION
from localai_operator.render.model_config import slots
from localai_operator.render.offline import render_paths
from localai_operator.render.pool import GALLERY_KEY, GALLERY_PATH, file_conflicts

ROOT = Path(__file__).resolve().parents[2]
SAMPLES = ROOT / "manifests" / "samples"
SHA = "b" * 64
OTHER_SHA = "c" * 64
# LOCALAI_* variables of `local-ai run` at v4.9.0 that the pool may set, each checked against the kong `env:` tags of
# core/cli/run.go and core/cli/context (LOG_LEVEL): a name missing there is silently ignored by LocalAI.
LOCALAI_RUN_ENV = {
    f"LOCALAI_{name}"
    for name in (
        "ADDRESS",
        "MODELS_PATH",
        "BACKENDS_PATH",
        "DATA_PATH",
        "CONFIG_DIR",
        "THREADS",
        "LOG_LEVEL",
        "BACKEND_GALLERIES",
        "AUTOLOAD_BACKEND_GALLERIES",
        "GALLERIES",
        "AUTOLOAD_GALLERIES",
        "DISABLE_GALLERY_ENDPOINT",
        "DISABLE_WEBUI",
        "DISABLE_RUNTIME_SETTINGS",
        "DISABLE_AGENTS",
        "DISABLE_ASSISTANT",
        "DISABLE_MCP",
        "EXTERNAL_BACKENDS",
        "MAX_ACTIVE_BACKENDS",
        "LOAD_TO_MEMORY",
        "API_KEY",
        "ALLOW_INSECURE_PUBLIC_BIND",
    )
}


def model(name: str = "mistral", file: str | None = None, **spec: Any) -> LLMModel:
    source = {"url": f"https://example.org/{file or name + '.gguf'}", "sha256": SHA}
    body = {"source": source, **spec}
    return LLMModel.parse({"metadata": {"name": name, "namespace": "ai", "uid": "m-uid"}, "spec": body})


def pool(*names: str, gpus: int = 1, **spec: Any) -> InferencePool:
    body = {"models": list(names or ["mistral"]), "accelerator": {"gpus": gpus}, **spec}
    return InferencePool.parse(
        {"metadata": {"name": "gpu-pool", "namespace": "ai", "uid": "p-uid"}, "spec": body}
    )


def render(
    p: InferencePool | None = None, *models: LLMModel, settings: RenderSettings | None = None, **kw: Any
) -> list[dict[str, Any]]:
    served = list(models) or [model()]
    return pool_objects(p or pool(*(m.name for m in served)), {m.name: m for m in served}, settings, **kw)


def by_kind(objects: list[dict[str, Any]], kind: str) -> dict[str, Any]:
    [obj] = [o for o in objects if o["kind"] == kind]
    return obj


def pod(objects: list[dict[str, Any]]) -> dict[str, Any]:
    spec: dict[str, Any] = by_kind(objects, "Deployment")["spec"]["template"]["spec"]
    return spec


def localai(objects: list[dict[str, Any]]) -> dict[str, Any]:
    [container] = [c for c in pod(objects)["containers"] if c["name"] == "localai"]
    return container


def env(objects: list[dict[str, Any]]) -> dict[str, Any]:
    return {e["name"]: e.get("value", e.get("valueFrom")) for e in localai(objects)["env"]}


def mounts(objects: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    return {m["mountPath"]: m for m in localai(objects)["volumeMounts"]}


def model_yaml(objects: list[dict[str, Any]], name: str = "mistral") -> dict[str, Any]:
    loaded: dict[str, Any] = yaml.safe_load(by_kind(objects, "ConfigMap")["data"][f"{name}.yaml"])
    return loaded


def gallery(objects: list[dict[str, Any]]) -> list[dict[str, Any]]:
    loaded: list[dict[str, Any]] = yaml.safe_load(by_kind(objects, "ConfigMap")["data"][GALLERY_KEY])
    return loaded


def config_hash(objects: list[dict[str, Any]]) -> str:
    return str(
        by_kind(objects, "Deployment")["spec"]["template"]["metadata"]["annotations"][ANNOTATION_CONFIG_HASH]
    )


# --- pinned engine -------------------------------------------------------------------------------------------------


def test_the_backend_gallery_pins_llama_cpp_to_the_images_localai_release() -> None:
    entries = {e["name"]: e for e in gallery(render())}
    assert entries["llama-cpp"]["capabilities"]["nvidia-cuda-12"] == "cuda12-llama-cpp"
    assert entries["llama-cpp"]["capabilities"]["default"] == "cpu-llama-cpp"
    assert entries["cuda12-llama-cpp"]["uri"] == (
        f"quay.io/go-skynet/local-ai-backends:{LOCALAI_VERSION}-gpu-nvidia-cuda-12-llama-cpp"
    )
    assert entries["cpu-llama-cpp"]["uri"].endswith(f":{LOCALAI_VERSION}-cpu-llama-cpp")
    uris = [u for e in entries.values() for u in [e.get("uri", ""), *e.get("mirrors", [])] if u]
    assert uris and not any("latest" in u or "master" in u for u in uris)


def test_a_custom_image_tagged_with_a_localai_release_gets_that_releases_backends() -> None:
    p = pool(image="mirror.internal/localai/localai:v4.10.2-gpu-nvidia-cuda-12")
    entries = {e["name"]: e for e in gallery(render(p))}
    assert entries["cuda12-llama-cpp"]["uri"].endswith(":v4.10.2-gpu-nvidia-cuda-12-llama-cpp")


def test_a_backend_repository_setting_replaces_the_upstream_registry_and_its_mirror() -> None:
    settings = RenderSettings(backend_repository="registry.internal/local-ai-backends")
    entries = {e["name"]: e for e in gallery(render(settings=settings))}
    assert (
        entries["cpu-llama-cpp"]["uri"]
        == f"registry.internal/local-ai-backends:{LOCALAI_VERSION}-cpu-llama-cpp"
    )
    assert "mirrors" not in entries["cpu-llama-cpp"]


def test_localai_installs_from_the_rendered_gallery_only_and_never_autoloads_another() -> None:
    objects = render()
    values = env(objects)
    assert yaml.safe_load(values["LOCALAI_BACKEND_GALLERIES"]) == [
        {"name": "localai-operator", "url": f"file://{GALLERY_PATH}"}
    ]
    assert values["LOCALAI_AUTOLOAD_BACKEND_GALLERIES"] == "false"
    assert (values["LOCALAI_GALLERIES"], values["LOCALAI_AUTOLOAD_GALLERIES"]) == ("[]", "false")
    assert values["LOCALAI_EXTERNAL_BACKENDS"] == "llama-cpp"
    # LocalAI reads a file:// gallery only from inside its backends directory.
    assert GALLERY_PATH.startswith(values["LOCALAI_BACKENDS_PATH"] + "/")
    gallery_mount = mounts(objects)[GALLERY_PATH]
    assert (gallery_mount["name"], gallery_mount["subPath"]) == ("model-config", GALLERY_KEY)


def test_with_storage_the_backends_stay_on_the_model_volume_one_directory_per_release() -> None:
    objects = render(pool(storage={"size": "50Gi"}))
    backends = mounts(objects)["/backends"]
    assert backends == {
        "name": "models",
        "mountPath": "/backends",
        "subPath": f".localai-operator/backends/{LOCALAI_VERSION}",
    }
    assert "backends" not in {v["name"] for v in pod(objects)["volumes"]}


def test_without_storage_the_backends_are_an_empty_dir_downloaded_at_the_pinned_release() -> None:
    objects = render()
    assert mounts(objects)["/backends"]["name"] == "backends"
    assert {"name": "backends", "emptyDir": {"sizeLimit": "10Gi"}} in pod(objects)["volumes"]


def test_every_localai_variable_a_pool_sets_is_one_localai_v4_9_0_reads() -> None:
    for p in (pool(maxActiveBackends=2, apiKeySecretRef={"name": "k", "key": "k"}), pool(gpus=0)):
        names = {name for name in env(render(p)) if name.startswith("LOCALAI_")}
        assert names <= LOCALAI_RUN_ENV, names - LOCALAI_RUN_ENV


# --- air-gapped ----------------------------------------------------------------------------------------------------


def test_a_pool_whose_image_holds_its_backends_mounts_nothing_over_them_and_installs_nothing() -> None:
    objects = render(pool(image="registry.internal/localai-llama:v4.9.0", preinstallBackends=[]))
    assert not [path for path in mounts(objects) if path.startswith("/backends")]
    assert "backends" not in {v["name"] for v in pod(objects)["volumes"]}
    values = env(objects)
    assert "LOCALAI_EXTERNAL_BACKENDS" not in values
    assert values["LOCALAI_BACKEND_GALLERIES"] == "[]"
    assert GALLERY_KEY not in by_kind(objects, "ConfigMap")["data"]
    assert localai(objects)["image"] == "registry.internal/localai-llama:v4.9.0"


# --- closed admin surface ------------------------------------------------------------------------------------------


def test_every_pool_closes_the_gallery_endpoints_the_web_ui_api_and_the_agent_features() -> None:
    values = env(render())
    for name in (
        "LOCALAI_DISABLE_GALLERY_ENDPOINT",
        "LOCALAI_DISABLE_WEBUI",
        "LOCALAI_DISABLE_RUNTIME_SETTINGS",
        "LOCALAI_DISABLE_AGENTS",
        "LOCALAI_DISABLE_ASSISTANT",
        "LOCALAI_DISABLE_MCP",
    ):
        assert values[name] == "true", name


def test_the_pool_api_key_comes_from_its_secret_and_localai_then_needs_no_bind_exception() -> None:
    values = env(render(pool(apiKeySecretRef={"name": "pool-key", "key": "token"})))
    assert values["LOCALAI_API_KEY"] == {"secretKeyRef": {"name": "pool-key", "key": "token"}}
    assert "LOCALAI_ALLOW_INSECURE_PUBLIC_BIND" not in values


def test_a_rotated_api_key_restarts_the_pool_which_reads_it_only_at_start() -> None:
    p = pool(apiKeySecretRef={"name": "pool-key", "key": "token"})
    before, after = render(p, api_key_version="100"), render(p, api_key_version="101")
    assert config_hash(before) != config_hash(after)
    assert pod(before)["containers"] == pod(after)["containers"]


def test_without_a_key_only_the_network_policy_lets_localai_listen_on_a_public_pod_address() -> None:
    assert env(render())["LOCALAI_ALLOW_INSECURE_PUBLIC_BIND"] == "true"
    assert "LOCALAI_ALLOW_INSECURE_PUBLIC_BIND" not in env(render(pool(networkPolicy={"enabled": False})))


def test_the_network_policy_admits_only_this_namespaces_routers_on_port_8080() -> None:
    policy = by_kind(render(), "NetworkPolicy")
    assert policy["metadata"]["name"] == "gpu-pool"
    deployment = by_kind(render(), "Deployment")
    assert policy["spec"]["podSelector"]["matchLabels"] == deployment["spec"]["selector"]["matchLabels"]
    [rule] = policy["spec"]["ingress"]
    assert rule["ports"] == [{"protocol": "TCP", "port": 8080}]
    [peer] = rule["from"]
    assert set(peer) == {"podSelector"}  # no namespaceSelector: this namespace only
    route = FallbackRoute.parse(
        {
            "metadata": {"name": "chat", "namespace": "ai", "uid": "r"},
            "spec": {"primary": {"poolRef": {"name": "gpu-pool"}}},
        }
    )
    router_labels = by_kind(route_objects(route), "Deployment")["spec"]["template"]["metadata"]["labels"]
    assert peer["podSelector"]["matchLabels"].items() <= router_labels.items()


def test_namespaces_the_user_lists_are_admitted_too() -> None:
    policy = by_kind(
        render(pool(networkPolicy={"allowedNamespaces": ["monitoring", "apps"]})), "NetworkPolicy"
    )
    peers = policy["spec"]["ingress"][0]["from"]
    assert peers[1] == {
        "namespaceSelector": {
            "matchExpressions": [
                {"key": "kubernetes.io/metadata.name", "operator": "In", "values": ["apps", "monitoring"]}
            ]
        }
    }


def test_a_pool_can_switch_its_network_policy_off() -> None:
    assert not [o for o in render(pool(networkPolicy={"enabled": False})) if o["kind"] == "NetworkPolicy"]


def test_localai_runs_as_the_images_root_unless_run_as_user_is_set() -> None:
    assert "runAsUser" not in localai(render())["securityContext"]
    security = localai(render(pool(runAsUser=1000)))["securityContext"]
    assert (security["runAsUser"], security["runAsGroup"], security["runAsNonRoot"]) == (1000, 65532, True)
    assert security["capabilities"] == {"drop": ["ALL"]}


def test_every_path_localai_writes_is_a_writable_volume() -> None:
    objects = render(pool(runAsUser=1000))
    assert {"/models", "/backends", "/tmp", "/data", "/configuration"} <= set(mounts(objects))
    values = env(objects)
    assert (values["LOCALAI_DATA_PATH"], values["LOCALAI_CONFIG_DIR"]) == ("/data", "/configuration")


def test_a_cpu_pool_does_not_see_the_gpus_of_the_node_it_lands_on() -> None:
    assert env(render(pool(gpus=0)))["NVIDIA_VISIBLE_DEVICES"] == "void"
    assert "NVIDIA_VISIBLE_DEVICES" not in env(render(pool(gpus=1)))


# --- real concurrency ----------------------------------------------------------------------------------------------


def test_a_models_slots_are_rendered_as_localai_options_ahead_of_the_passthrough_ones() -> None:
    config = model_yaml(render(None, model(parallel=8, options=["context_shift", "cache_ram:4096"])))
    assert config["options"] == ["parallel:8", "context_shift", "cache_ram:4096"]


def test_slots_default_to_four_on_gpu_pools_and_two_on_cpu_pools() -> None:
    assert model_yaml(render(pool(gpus=1)))["options"][0] == "parallel:4"
    assert model_yaml(render(pool(gpus=0)))["options"][0] == "parallel:2"
    assert (slots(model(), gpu=True), slots(model(), gpu=False)) == (4, 2)


def test_a_cpu_pool_gives_sliding_window_layers_a_full_size_cache_and_a_gpu_pool_keeps_the_window() -> None:
    assert model_yaml(render(pool(gpus=0)))["options"] == ["parallel:2", "swa_full:true"]
    assert model_yaml(render(pool(gpus=1)))["options"] == ["parallel:4"]


def test_a_models_own_swa_full_option_replaces_the_cpu_pools_default() -> None:
    config = model_yaml(render(pool(gpus=0), model(options=["swa_full:false", "context_shift"])))
    assert config["options"] == ["parallel:2", "swa_full:false", "context_shift"]


def test_parallel_requests_false_serializes_every_model_of_the_pool() -> None:
    config = model_yaml(render(pool(parallelRequests=False), model(parallel=8)))
    assert config["options"][0] == "parallel:1"


def test_the_removed_parallel_requests_and_f16_switches_are_not_rendered() -> None:
    values = env(render(pool(parallelRequests=True)))
    assert "LOCALAI_PARALLEL_REQUESTS" not in values and "LOCALAI_F16" not in values


# --- knobs that do something ---------------------------------------------------------------------------------------


def test_knobs_the_llama_cpp_backend_never_reads_are_not_written() -> None:
    config = model_yaml(render(None, model(f16=True, lowVRAM=True, numa=True)))
    assert not {"f16", "low_vram", "numa"} & set(config)


def test_mlock_gets_the_capability_that_lets_it_lock_a_whole_model() -> None:
    security = localai(render(None, model(mlock=True)))["securityContext"]
    assert security["capabilities"] == {"drop": ["ALL"], "add": ["IPC_LOCK"]}
    assert localai(render())["securityContext"]["capabilities"] == {"drop": ["ALL"]}


def test_embeddings_mmproj_tensor_split_and_main_gpu_reach_the_model_yaml() -> None:
    vision = model(
        embeddings=True,
        tensorSplit="3,1",
        mainGPU=1,
        mmproj={"url": "https://example.org/mmproj-f16.gguf", "sha256": OTHER_SHA},
    )
    config = model_yaml(render(pool(gpus=2), vision))
    assert (config["embeddings"], config["mmproj"]) == (True, "mmproj-f16.gguf")
    assert (config["tensor_split"], config["main_gpu"]) == ("3,1", "1")


def test_the_mmproj_file_is_downloaded_and_verified_like_the_model() -> None:
    vision = model(mmproj={"url": "https://example.org/mmproj-f16.gguf", "sha256": OTHER_SHA})
    entries = yaml.safe_load(by_kind(render(None, vision), "ConfigMap")["data"]["downloads.json"])
    assert [(e["file"], e["sha256"]) for e in entries] == [
        ("mistral.gguf", SHA),
        ("mmproj-f16.gguf", OTHER_SHA),
    ]


def test_extra_env_replaces_the_operators_value_of_the_same_name_and_appends_the_rest() -> None:
    objects = render(
        pool(
            extraEnv=[
                {"name": "LOCALAI_LOG_LEVEL", "value": "debug"},
                {"name": "LOCALAI_WATCHDOG_IDLE", "value": "true"},
                {"name": "HF_TOKEN", "valueFrom": {"secretKeyRef": {"name": "hf", "key": "t"}}},
            ]
        )
    )
    names = [e["name"] for e in localai(objects)["env"]]
    assert names.count("LOCALAI_LOG_LEVEL") == 1
    assert env(objects)["LOCALAI_LOG_LEVEL"] == "debug"
    assert names[-2:] == ["LOCALAI_WATCHDOG_IDLE", "HF_TOKEN"]
    assert env(objects)["HF_TOKEN"] == {"secretKeyRef": {"name": "hf", "key": "t"}}


# --- readiness -----------------------------------------------------------------------------------------------------


def test_pods_preload_every_model_and_get_an_hour_before_liveness_counts() -> None:
    objects = render(pool("a", "b"), model("a"), model("b"))
    assert env(objects)["LOCALAI_LOAD_TO_MEMORY"] == "a,b"
    startup = localai(objects)["startupProbe"]
    assert startup["periodSeconds"] * startup["failureThreshold"] >= 3600


def test_a_pool_keeping_fewer_models_loaded_preloads_only_that_many_and_none_in_single_backend_mode() -> None:
    three = [model("a"), model("b"), model("c")]
    assert env(render(pool("a", "b", "c", maxActiveBackends=2), *three))["LOCALAI_LOAD_TO_MEMORY"] == "a,b"
    assert "LOCALAI_LOAD_TO_MEMORY" not in env(render(pool("a", "b", "c", maxActiveBackends=1), *three))


# --- operator upgrades ---------------------------------------------------------------------------------------------


def _pod_templates(settings: RenderSettings) -> dict[str, Any]:
    docs = yaml.safe_load_all(render_paths([str(SAMPLES)], settings))
    return {
        d["metadata"]["name"]: d["spec"]["template"]
        for d in docs
        if d["kind"] == "Deployment"
        and d["spec"]["template"]["metadata"]["labels"]["app.kubernetes.io/name"] == "localai"
    }


def test_upgrading_the_operator_leaves_every_samples_inference_pod_template_unchanged() -> None:
    old = RenderSettings(operator_image="reg.example/localai-operator:0.1.0", operator_version="0.1.0")
    new = RenderSettings(operator_image="reg.example/localai-operator:0.2.0", operator_version="0.2.0")
    before, after = _pod_templates(old), _pod_templates(new)
    assert set(before) == {"cpu-pool", "gpu-pool", "multi-model-pool"}
    assert before == after
    init = before["gpu-pool"]["spec"]["initContainers"][0]
    assert init["image"] == f"reg.example/localai-operator:{DOWNLOADER_VERSION}"


def test_pool_pod_templates_carry_no_operator_version_label() -> None:
    labels = by_kind(render(), "Deployment")["spec"]["template"]["metadata"]["labels"]
    assert "app.kubernetes.io/version" not in labels


def test_a_new_downloader_image_is_the_only_thing_that_rolls_a_pool_on_a_downloader_release() -> None:
    a = render(settings=RenderSettings(downloader_image="reg.example/fetch:1"))
    b = render(settings=RenderSettings(downloader_image="reg.example/fetch:2"))
    assert pod(a)["initContainers"][0]["image"] == "reg.example/fetch:1"
    assert config_hash(a) != config_hash(b)
    assert pod(a)["containers"] == pod(b)["containers"]


# --- models directory ----------------------------------------------------------------------------------------------


def test_two_models_whose_files_share_a_name_but_not_a_source_are_refused_naming_both() -> None:
    a = model("mistral-q4", file="model.gguf")
    b = LLMModel.parse(
        {
            "metadata": {"name": "llama-q4", "namespace": "ai"},
            "spec": {"source": {"huggingFace": {"repo": "o/llama", "file": "model.gguf"}}},
        }
    )
    message = file_conflicts([a, b])
    assert message is not None
    assert '"mistral-q4"' in message and '"llama-q4"' in message and '"model.gguf"' in message


def test_two_configurations_of_one_file_from_one_source_share_it() -> None:
    a, b = model("chat", file="m.gguf"), model("embed", file="m.gguf", embeddings=True)
    assert file_conflicts([a, b]) is None
    entries = yaml.safe_load(
        by_kind(render(pool("chat", "embed"), a, b), "ConfigMap")["data"]["downloads.json"]
    )
    assert [(e["model"], e["file"]) for e in entries] == [("chat", "m.gguf"), ("embed", "m.gguf")]


def test_render_refuses_a_pool_whose_models_share_a_file_name_naming_both(tmp_path: Path) -> None:
    docs = [
        {
            "apiVersion": "llm.localai-operator.io/v1alpha1",
            "kind": "LLMModel",
            "metadata": {"name": name},
            "spec": {"source": {"url": f"https://{host}/x/model.gguf"}},
        }
        for name, host in (("a", "h1"), ("b", "h2"))
    ]
    docs.append(
        {
            "apiVersion": "llm.localai-operator.io/v1alpha1",
            "kind": "InferencePool",
            "metadata": {"name": "p"},
            "spec": {"models": ["a", "b"]},
        }
    )
    (tmp_path / "pool.yaml").write_text(yaml.safe_dump_all(docs))
    with pytest.raises(ValueError, match=r'InferencePool .p. is invalid: LLMModel "a" .* LLMModel "b"'):
        render_paths([str(tmp_path)])


# --- the samples ---------------------------------------------------------------------------------------------------


def test_rendered_samples_pin_the_backend_gallery_and_never_open_the_gallery_endpoint() -> None:
    docs = list(yaml.safe_load_all(render_paths([str(SAMPLES)])))
    pools = [d for d in docs if d["kind"] == "Deployment" and "fetch-models" in str(d)]
    assert pools
    for deployment in pools:
        [container] = deployment["spec"]["template"]["spec"]["containers"]
        values = {e["name"]: e.get("value") for e in container["env"]}
        assert values["LOCALAI_DISABLE_GALLERY_ENDPOINT"] == "true"
        assert (
            values["LOCALAI_BACKEND_GALLERIES"]
            == f'[{{"name":"localai-operator","url":"file://{GALLERY_PATH}"}}]'
        )
    for config in (d for d in docs if d["kind"] == "ConfigMap" and GALLERY_KEY in d.get("data", {})):
        assert f":{LOCALAI_VERSION}-" in config["data"][GALLERY_KEY]
        assert "latest" not in config["data"][GALLERY_KEY]


def test_every_new_field_renders_schema_valid_objects() -> None:
    p = pool(
        storage={"size": "20Gi"},
        apiKeySecretRef={"name": "k", "key": "k"},
        runAsUser=1000,
        networkPolicy={"allowedNamespaces": ["monitoring"]},
        extraEnv=[{"name": "X", "valueFrom": {"fieldRef": {"fieldPath": "status.podIP"}}}],
    )
    vision = model(mlock=True, mmproj={"url": "https://example.org/p.gguf"}, options=["use_jinja"])
    for obj in render(p, vision, api_key_version="7"):
        kubernetes_validate.validate(obj, "1.34.0", strict=True)


# --- pods that stay in their box ----------------------------------------------------------------------------------


def sized(name: str, size: int | None = None, maximum: int | None = None) -> LLMModel:
    source: dict[str, Any] = {"url": f"https://example.org/{name}.gguf", "sha256": SHA}
    if size is not None:
        source["sizeBytes"] = size
    if maximum is not None:
        source["maxBytes"] = maximum
    return LLMModel.parse({"metadata": {"name": name, "namespace": "ai"}, "spec": {"source": source}})


def volumes(objects: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    return {v["name"]: v for v in pod(objects)["volumes"]}


def downloads(objects: list[dict[str, Any]]) -> list[dict[str, Any]]:
    loaded: list[dict[str, Any]] = yaml.safe_load(by_kind(objects, "ConfigMap")["data"]["downloads.json"])
    return loaded


def test_localai_pods_mount_no_service_account_token_and_router_pods_only_their_own() -> None:
    localai = pod(render())
    assert localai["automountServiceAccountToken"] is False and "serviceAccountName" not in localai
    route = FallbackRoute.parse(
        {"metadata": {"name": "chat", "namespace": "ai"}, "spec": {"primary": {"poolRef": {"name": "p"}}}}
    )
    router = by_kind(route_objects(route), "Deployment")["spec"]["template"]["spec"]
    # Never the namespace's default ServiceAccount: the router's own (EndpointSlices of its namespace, read only),
    # its token as an explicit projected volume.
    assert router["automountServiceAccountToken"] is False and router["serviceAccountName"] == "chat-router"
    assert [v["name"] for v in router["volumes"] if "projected" in v] == ["kube-api-access"]


def test_every_emptydir_has_a_size_limit_and_the_models_one_follows_the_declared_sizes() -> None:
    undeclared = volumes(render())
    assert all("sizeLimit" in v["emptyDir"] for v in undeclared.values() if "emptyDir" in v)
    assert undeclared["models"]["emptyDir"]["sizeLimit"] == "100Gi"
    a, b = sized("a", size=4 * 2**30), sized("b", maximum=6 * 2**30)
    # (4 + 6) GiB x 1.1 + 1 GiB = 12 GiB
    assert volumes(render(None, a, b))["models"]["emptyDir"]["sizeLimit"] == "12Gi"
    mixed = volumes(render(None, a, sized("c")))
    assert mixed["models"]["emptyDir"]["sizeLimit"] == "100Gi", "one size unknown: the documented default"
    chosen = pool("a", "b", emptyDirSizeLimit="50Gi")
    assert volumes(render(chosen, a, b))["models"]["emptyDir"]["sizeLimit"] == "50Gi"


def test_every_download_is_bounded_by_what_its_model_declares_and_by_the_volume() -> None:
    a, b = sized("a", size=4 * 2**30), sized("b")
    entries = {e["model"]: e for e in downloads(render(pool("a", "b", emptyDirSizeLimit="20Gi"), a, b))}
    assert (entries["a"]["sizeBytes"], entries["a"]["maxBytes"]) == (4 * 2**30, 4 * 2**30)
    assert "sizeBytes" not in entries["b"] and entries["b"]["maxBytes"] == 20 * 2**30
    claimed = downloads(render(pool("b", storage={"size": "30Gi"}), b))
    assert claimed[0]["maxBytes"] == 30 * 2**30


def test_a_cpu_pool_cannot_set_nvidia_variables_and_a_gpu_pool_can() -> None:
    nvidia = [{"name": "NVIDIA_VISIBLE_DEVICES", "value": "all"}]
    with pytest.raises(ValueError, match="NVIDIA_"):
        pool(gpus=0, extraEnv=nvidia)
    assert env(render(pool(gpus=0)))["NVIDIA_VISIBLE_DEVICES"] == "void"
    assert env(render(pool(gpus=1, extraEnv=nvidia)))["NVIDIA_VISIBLE_DEVICES"] == "all"

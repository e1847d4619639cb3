"""InferencePool (+ its LLMModels) -> Deployment, Service, ConfigMap, and PVC / PDB when asked for."""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from typing import Any

from localai_operator.api.llmmodel import LLMModel
from localai_operator.api.pool import InferencePool
from localai_operator.constants import (
    ANNOTATION_CONFIG_HASH,
    GPU_PRODUCT_LABEL,
    GPU_RESOURCE,
    LOCALAI_HEALTH_PATH,
    LOCALAI_PORT,
    LOCALAI_READY_PATH,
    MODELS_PATH,
)
from localai_operator.render.common import (
    RenderSettings,
    content_hash,
    http_service,
    meta,
    restricted_container_security,
    selector,
)
from localai_operator.render.model_config import model_config_yaml

APP = "localai"
COMPONENT = "inference-server"
CONFIG_DIR = "/etc/localai-operator/models"
DOWNLOADS_FILE = "downloads.json"
BACKENDS_PATH = "/backends"
FETCH_UID = 65532


def config_map_name(pool: InferencePool) -> str:
    return f"{pool.name}-models"


def service_url(name: str, namespace: str) -> str:
    """The OpenAI base URL of the pool named `name`, inside the cluster."""
    return f"http://{name}.{namespace}.svc:{LOCALAI_PORT}/v1"


def endpoint(pool: InferencePool) -> str:
    return service_url(pool.name, pool.namespace)


def cpu_cores(quantity: str | int | None) -> float | None:
    """A CPU quantity in cores ("4", "500m", 2.5)."""
    if quantity is None:
        return None
    text = str(quantity)
    return int(text[:-1]) / 1000 if text.endswith("m") else float(text)


def threads(pool: InferencePool) -> int:
    if pool.spec.threads is not None:
        return pool.spec.threads
    requests = pool.spec.resources.requests if pool.spec.resources else {}
    cores = cpu_cores(requests.get("cpu"))
    # The seed's advice is threads = physical cores; the CPU request is what the pod is guaranteed.
    return max(1, math.floor(cores)) if cores is not None else 4


def download_manifest(models: list[LLMModel]) -> list[dict[str, Any]]:
    entries = []
    for index, model in enumerate(models):
        source = model.spec.source
        token = source.hugging_face.token_secret_ref if source.hugging_face else None
        entries.append(
            {
                "model": model.name,
                "file": source.file_name(),
                "url": source.download_url(),
                "sha256": source.sha256.lower() if source.sha256 else None,
                "tokenEnv": f"MODEL_TOKEN_{index}" if token else None,
            }
        )
    return entries


def config_map_data(pool: InferencePool, models: list[LLMModel]) -> dict[str, str]:
    gpu = pool.spec.accelerator.gpus > 0
    data = {f"{model.name}.yaml": model_config_yaml(model, gpu=gpu) for model in models}
    data[DOWNLOADS_FILE] = json.dumps(download_manifest(models), indent=2, sort_keys=True) + "\n"
    return data


def config_map(pool: InferencePool, models: list[LLMModel]) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": meta(pool, config_map_name(pool), name=APP, component="model-config"),
        "data": config_map_data(pool, models),
    }


def service(pool: InferencePool) -> dict[str, Any]:
    return http_service(pool, pool.name, name=APP, component=COMPONENT, port=LOCALAI_PORT)


def pods_service_name(pool_name: str) -> str:
    return f"{pool_name}-pods"


def pods_service(pool: InferencePool) -> dict[str, Any]:
    """A headless Service: its DNS name resolves to one address per ready pod, which is how a route's
    router balances over the pool's pods and keeps one breaker per pod without any API access. Not-ready
    pods are left out by default (`publishNotReadyAddresses` unset: the API server drops a false, and the
    drift check would then re-apply it on every pass)."""
    obj = http_service(pool, pods_service_name(pool.name), name=APP, component=COMPONENT, port=LOCALAI_PORT)
    obj["spec"]["clusterIP"] = "None"
    return obj


def persistent_volume_claim(pool: InferencePool) -> dict[str, Any] | None:
    storage = pool.spec.storage
    if storage is None:
        return None
    spec: dict[str, Any] = {
        "accessModes": [storage.access_mode],
        "resources": {"requests": {"storage": str(storage.size)}},
    }
    if storage.storage_class_name:
        spec["storageClassName"] = storage.storage_class_name
    return {
        "apiVersion": "v1",
        "kind": "PersistentVolumeClaim",
        "metadata": meta(pool, config_map_name(pool), name=APP, component="model-storage"),
        "spec": spec,
    }


def pod_disruption_budget(pool: InferencePool) -> dict[str, Any] | None:
    if pool.spec.replicas <= 1:
        return None
    return {
        "apiVersion": "policy/v1",
        "kind": "PodDisruptionBudget",
        "metadata": meta(pool, pool.name, name=APP, component=COMPONENT),
        "spec": {
            "maxUnavailable": 1,
            "selector": {"matchLabels": selector(pool, name=APP, component=COMPONENT)},
        },
    }


def _resources(pool: InferencePool) -> dict[str, Any]:
    gpus = pool.spec.accelerator.gpus
    user = pool.spec.resources
    requests: dict[str, Any] = {k: str(v) for k, v in (user.requests if user else {}).items()}
    limits: dict[str, Any] = {k: str(v) for k, v in (user.limits if user else {}).items()}
    if not requests:
        requests = {"cpu": "4", "memory": "16Gi"} if gpus else {"cpu": "2", "memory": "4Gi"}
    if gpus:
        # Extended resources: limits required, requests (if any) must equal them.
        limits[GPU_RESOURCE] = str(gpus)
        requests[GPU_RESOURCE] = str(gpus)
    else:
        requests.pop(GPU_RESOURCE, None)
        limits.pop(GPU_RESOURCE, None)
    out: dict[str, Any] = {"requests": requests}
    if limits:
        out["limits"] = limits
    return out


def _env(pool: InferencePool, models: list[LLMModel]) -> list[dict[str, Any]]:
    spec = pool.spec
    env = [
        {"name": "LOCALAI_ADDRESS", "value": f":{LOCALAI_PORT}"},
        {"name": "LOCALAI_MODELS_PATH", "value": MODELS_PATH},
        {"name": "LOCALAI_BACKENDS_PATH", "value": BACKENDS_PATH},
        {"name": "LOCALAI_THREADS", "value": str(threads(pool))},
        {"name": "LOCALAI_CONTEXT_SIZE", "value": str(max(m.spec.context_size for m in models))},
        {"name": "LOCALAI_F16", "value": "true" if spec.accelerator.gpus > 0 else "false"},
        {"name": "LOCALAI_LOG_LEVEL", "value": spec.log_level},
        {"name": "LOCALAI_PARALLEL_REQUESTS", "value": "true" if spec.parallel_requests else "false"},
    ]
    if spec.max_active_backends is not None:
        env.append({"name": "LOCALAI_MAX_ACTIVE_BACKENDS", "value": str(spec.max_active_backends)})
    if spec.preinstall_backends:
        env.append({"name": "LOCALAI_EXTERNAL_BACKENDS", "value": ",".join(spec.preinstall_backends)})
    return env


def _fetch_container(pool: InferencePool, models: list[LLMModel], settings: RenderSettings) -> dict[str, Any]:
    env: list[dict[str, Any]] = []
    for entry, model in zip(download_manifest(models), models, strict=True):
        hf = model.spec.source.hugging_face
        if entry["tokenEnv"] and hf is not None and hf.token_secret_ref is not None:
            ref = hf.token_secret_ref
            env.append(
                {"name": entry["tokenEnv"], "valueFrom": {"secretKeyRef": {"name": ref.name, "key": ref.key}}}
            )
    container: dict[str, Any] = {
        "name": "fetch-models",
        "image": settings.operator_image,
        "args": ["fetch-models", "--manifest", f"{CONFIG_DIR}/{DOWNLOADS_FILE}", "--config-dir", CONFIG_DIR,
                 "--models-dir", MODELS_PATH],
        "volumeMounts": [
            {"name": "models", "mountPath": MODELS_PATH},
            {"name": "model-config", "mountPath": CONFIG_DIR, "readOnly": True},
        ],
        "resources": {"requests": {"cpu": "100m", "memory": "64Mi"}, "limits": {"memory": "256Mi"}},
        "securityContext": {
            **restricted_container_security(),
            "runAsNonRoot": True,
            "runAsUser": FETCH_UID,
            "readOnlyRootFilesystem": True,
        },
    }  # fmt: skip
    if env:
        container["env"] = env
    return container


def _localai_container(pool: InferencePool, models: list[LLMModel], image: str) -> dict[str, Any]:
    def probe() -> dict[str, Any]:
        return {"httpGet": {"path": LOCALAI_HEALTH_PATH, "port": "http"}}

    return {
        "name": "localai",
        "image": image,
        "ports": [{"name": "http", "containerPort": LOCALAI_PORT, "protocol": "TCP"}],
        "env": _env(pool, models),
        "resources": _resources(pool),
        "volumeMounts": [
            {"name": "models", "mountPath": MODELS_PATH},
            {"name": "backends", "mountPath": BACKENDS_PATH},
            {"name": "tmp", "mountPath": "/tmp"},
        ],
        # Large models take minutes to load on first use: startup allows up to 30 minutes before liveness counts.
        "startupProbe": {**probe(), "periodSeconds": 10, "failureThreshold": 180, "timeoutSeconds": 5},
        "livenessProbe": {**probe(), "periodSeconds": 20, "failureThreshold": 3, "timeoutSeconds": 5},
        "readinessProbe": {
            "httpGet": {"path": LOCALAI_READY_PATH, "port": "http"},
            "periodSeconds": 5,
            "failureThreshold": 3,
            "timeoutSeconds": 5,
        },
        # LocalAI's images run as root and install backends under /backends at start: no runAsNonRoot.
        "securityContext": restricted_container_security(),
    }


def deployment(pool: InferencePool, models: list[LLMModel], settings: RenderSettings) -> dict[str, Any]:
    spec = pool.spec
    gpus = spec.accelerator.gpus
    image = spec.image or (settings.localai_gpu_image if gpus else settings.localai_cpu_image)
    node_selector = dict(spec.node_selector)
    tolerations = [t.model_dump(by_alias=True, exclude_none=True) for t in spec.tolerations]
    if gpus:
        if spec.accelerator.product:
            node_selector[GPU_PRODUCT_LABEL] = spec.accelerator.product
        # GPU nodes are commonly tainted nvidia.com/gpu:NoSchedule.
        gpu_toleration = {"key": GPU_RESOURCE, "operator": "Exists", "effect": "NoSchedule"}
        if gpu_toleration not in tolerations:
            tolerations.append(gpu_toleration)
    models_volume: dict[str, Any] = (
        {"name": "models", "persistentVolumeClaim": {"claimName": config_map_name(pool)}}
        if spec.storage
        else {"name": "models", "emptyDir": {}}
    )
    pod_spec: dict[str, Any] = {
        "enableServiceLinks": False,  # Service env vars named LOCALAI_* would be read as LocalAI settings
        "securityContext": {"fsGroup": FETCH_UID, "seccompProfile": {"type": "RuntimeDefault"}},
        "initContainers": [_fetch_container(pool, models, settings)],
        "containers": [_localai_container(pool, models, image)],
        "volumes": [
            models_volume,
            {"name": "model-config", "configMap": {"name": config_map_name(pool)}},
            {"name": "backends", "emptyDir": {}},
            {"name": "tmp", "emptyDir": {}},
        ],
        "terminationGracePeriodSeconds": 30,
    }
    if node_selector:
        pod_spec["nodeSelector"] = node_selector
    if tolerations:
        pod_spec["tolerations"] = tolerations
    if gpus and spec.accelerator.runtime_class_name:
        pod_spec["runtimeClassName"] = spec.accelerator.runtime_class_name
    labels = meta(pool, pool.name, name=APP, component=COMPONENT)["labels"]
    # Everything that needs a restart: the model files and YAMLs (read only at start) and the pod spec itself.
    config_hash = content_hash(config_map_data(pool, models), pod_spec)
    # GPUs are scarce: replace pods one at a time without a surge pod that would need extra GPUs.
    strategy = (
        {"type": "RollingUpdate", "rollingUpdate": {"maxSurge": 0, "maxUnavailable": 1}}
        if gpus
        else {"type": "RollingUpdate", "rollingUpdate": {"maxSurge": 1, "maxUnavailable": 0}}
    )
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": meta(pool, pool.name, name=APP, component=COMPONENT),
        "spec": {
            "replicas": spec.replicas,
            "revisionHistoryLimit": 3,
            "strategy": strategy,
            "selector": {"matchLabels": selector(pool, name=APP, component=COMPONENT)},
            "template": {
                "metadata": {"labels": labels, "annotations": {ANNOTATION_CONFIG_HASH: config_hash}},
                "spec": pod_spec,
            },
        },
    }


def pool_objects(
    pool: InferencePool, models: Mapping[str, LLMModel], settings: RenderSettings | None = None
) -> list[dict[str, Any]]:
    """Every object the operator owns for a pool. `models` must hold every model the pool names."""
    settings = settings or RenderSettings()
    served = [models[name] for name in pool.spec.models]
    objects = [config_map(pool, served), persistent_volume_claim(pool), deployment(pool, served, settings),
               service(pool), pod_disruption_budget(pool), pods_service(pool)]  # fmt: skip
    return [obj for obj in objects if obj is not None]

"""InferencePool (+ its LLMModels) -> Deployment, Service, ConfigMap, NetworkPolicy, and PVC / PDB when asked for.

What LocalAI does with each rendered setting is in docs/localai-facts.md, with its source path at the pinned release.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Mapping
from typing import Any

from localai_operator import __version__
from localai_operator.api.llmmodel import LLMModel, ModelSource
from localai_operator.api.pool import MAX_THREADS, InferencePool
from localai_operator.api.quantity import Quantity, amount, canonical, in_resource_list
from localai_operator.constants import (
    ANNOTATION_CONFIG_HASH,
    APP_NAME,
    GPU_PRODUCT_LABEL,
    GPU_RESOURCE,
    LABEL_COMPONENT,
    LABEL_MANAGED_BY,
    LABEL_NAME,
    LOCALAI_HEALTH_PATH,
    LOCALAI_PORT,
    LOCALAI_READY_PATH,
    MODELS_PATH,
)
from localai_operator.render.common import (
    LOCALAI_BACKEND_MIRROR,
    LOCALAI_BACKEND_REPOSITORY,
    ROUTER_APP,
    ROUTER_COMPONENT,
    RenderSettings,
    content_hash,
    http_service,
    labels,
    meta,
    restricted_container_security,
    selector,
)
from localai_operator.render.model_config import dump_yaml, model_config_yaml

APP = "localai"
COMPONENT = "inference-server"
# The pool pod's LocalAI container (`kubectl logs -c`, `kubectl exec -c`).
LOCALAI_CONTAINER = "localai"
CONFIG_DIR = "/etc/localai-operator/models"
DOWNLOADS_FILE = "downloads.json"
# A ConfigMap key that is no `<model>.yaml` (object names hold no "_"), so fetch-models never installs it as a model.
GALLERY_KEY = "backend_gallery.yaml"
BACKENDS_PATH = "/backends"
# LocalAI reads a file:// gallery only from inside the backends directory (pkg/downloader/uri.go,
# ReadWithAuthorizationAndCallback: utils.InTrustedRoot against the backends path, core/gallery/gallery.go).
GALLERY_PATH = f"{BACKENDS_PATH}/localai-operator-gallery.yaml"
GALLERY_NAME = "localai-operator"
# Where the backends live on a pool's model volume, one directory per LocalAI release (v4 never reinstalls a backend
# that is present, so a new release needs a fresh directory): LocalAI's model listing skips directories
# (pkg/model/loader.go) and fetch-models leaves them alone.
BACKENDS_SUBPATH = ".localai-operator/backends"
DATA_PATH = (
    "/data"  # v4's LOCALAI_DATA_PATH: startup fails if it cannot be created (core/application/startup.go)
)
CONFIGURATION_PATH = "/configuration"
FETCH_UID = 65532
# Set on every namespace by the API server (since Kubernetes 1.21).
NAMESPACE_NAME_LABEL = "kubernetes.io/metadata.name"
# LocalAI opens its port only once startup is over: backend install and the preload of every model
# (core/cli/run.go builds the HTTP server after application.New returns). Its own image allows a 60-minute start
# period for that (Dockerfile HEALTHCHECK --start-period=60m): enough to load a 70 B model (~40 GB at Q4) from a
# network volume at 50 MB/s, with the backend download on top.
STARTUP_PERIOD_SECONDS = 10
STARTUP_FAILURE_THRESHOLD = 360
# Every emptyDir has a size limit (the kubelet evicts a pod that writes more): the models' (InferencePool.spec.
# emptyDirSizeLimit, else derived by models_volume_limit), and these for what LocalAI writes besides.
DEFAULT_MODELS_LIMIT = "100Gi"
MODELS_HEADROOM = 1.1, 2**30  # declared sizes x 1.1 + 1 GiB: a partial download, markers, the model YAMLs
SCRATCH_LIMITS = {"backends": "10Gi", "tmp": "4Gi", "data": "1Gi", "configuration": "64Mi"}


def config_map_name(pool: InferencePool) -> str:
    return f"{pool.name}-models"


def service_url(name: str, namespace: str) -> str:
    """The OpenAI base URL of the pool named `name`, inside the cluster."""
    return f"http://{name}.{namespace}.svc:{LOCALAI_PORT}/v1"


def endpoint(pool: InferencePool) -> str:
    return service_url(pool.name, pool.namespace)


def threads(pool: InferencePool) -> int:
    if pool.spec.threads is not None:
        return pool.spec.threads
    requests = pool.spec.resources.requests if pool.spec.resources else {}
    cpu = requests.get("cpu")
    if cpu is None:
        return 4
    # The seed's advice is threads = physical cores; the CPU request is what the pod is guaranteed. Bounded as
    # spec.threads is.
    return min(MAX_THREADS, max(1, math.floor(amount(cpu))))


def image_of(pool: InferencePool, settings: RenderSettings) -> str:
    if pool.spec.image:
        return pool.spec.image
    return settings.localai_gpu_image if pool.spec.accelerator.gpus else settings.localai_cpu_image


def _files(model: LLMModel) -> list[tuple[str, ModelSource]]:
    files = [("source", model.spec.source)]
    if model.spec.mmproj is not None:
        files.append(("mmproj", model.spec.mmproj))
    return files


def file_conflicts(models: list[LLMModel]) -> str | None:
    """Why these models cannot share one flat models directory, or None. Two files of the same name overwrite each
    other there; the same file from the same source (two configurations of one GGUF) is shared, not a conflict."""
    seen: dict[str, tuple[str, str, tuple[str, str | None]]] = {}
    for model in models:
        for role, source in _files(model):
            origin = (source.download_url(), source.sha256.lower() if source.sha256 else None)
            name = source.file_name()
            if name not in seen:
                seen[name] = (model.name, role, origin)
                continue
            other, other_role, other_origin = seen[name]
            if other_origin != origin:
                return (
                    f'LLMModel "{other}" ({other_role}) and LLMModel "{model.name}" ({role}) both download a file '
                    f'named "{name}" from different sources into the pool\'s one models directory, where one would '
                    "overwrite the other: give one a different file name (the last segment of source.url, or "
                    "huggingFace.file) or serve them from different pools."
                )
    return None


def models_volume_limit(pool: InferencePool, models: list[LLMModel]) -> str | None:
    """The size limit of the models emptyDir (None with storage: the claim's size bounds it)."""
    if pool.spec.storage is not None:
        return None
    if pool.spec.empty_dir_size_limit is not None:
        return pool.spec.empty_dir_size_limit
    bounds = [source.byte_bound() for model in models for _, source in _files(model)]
    if not bounds or any(bound is None for bound in bounds):
        return DEFAULT_MODELS_LIMIT
    factor, extra = MODELS_HEADROOM
    total = math.ceil(sum(b for b in bounds if b is not None) * factor) + extra
    return canonical(f"{math.ceil(total / 2**20)}Mi")


def models_volume_bytes(pool: InferencePool, models: list[LLMModel]) -> int:
    """How many bytes the models volume holds at most: no file can be larger."""
    size = pool.spec.storage.size if pool.spec.storage is not None else models_volume_limit(pool, models)
    return Quantity.parse(size or DEFAULT_MODELS_LIMIT).value()


def _downloads(
    models: list[LLMModel], volume_bytes: int | None = None
) -> list[tuple[dict[str, Any], ModelSource]]:
    """One entry per file of each model; fetch-models downloads a file shared by several models once, never more
    bytes than maxBytes (what the model declares, and at most the volume)."""
    entries: list[tuple[dict[str, Any], ModelSource]] = []
    for model in models:
        for _, source in _files(model):
            token = source.hugging_face.token_secret_ref if source.hugging_face else None
            entry: dict[str, Any] = {
                "model": model.name,
                "file": source.file_name(),
                "url": source.download_url(),
                "sha256": source.sha256.lower() if source.sha256 else None,
                "tokenEnv": f"MODEL_TOKEN_{len(entries)}" if token else None,
            }
            if source.size_bytes is not None:
                entry["sizeBytes"] = source.size_bytes
            bounds = [b for b in (source.byte_bound(), volume_bytes) if b is not None]
            if bounds:
                entry["maxBytes"] = min(bounds)
            entries.append((entry, source))
    return entries


def download_manifest(models: list[LLMModel], volume_bytes: int | None = None) -> list[dict[str, Any]]:
    """What fetch-models makes present: every model's files (and, from the models named, their YAMLs). `models`
    must have no file_conflicts; `volume_bytes` bounds every download."""
    return [entry for entry, _ in _downloads(models, volume_bytes)]


def backend_version(image: str, settings: RenderSettings) -> str:
    """The LocalAI release of an image tagged like LocalAI's own (v4.9.0, v4.9.0-gpu-nvidia-cuda-12); the pinned
    release for any other image."""
    tag = image.rsplit("/", 1)[-1].partition("@")[0].partition(":")[2]
    match = re.match(r"^(v\d+\.\d+\.\d+)(-|$)", tag)
    return match.group(1) if match else settings.localai_version


def backend_gallery(image: str, settings: RenderSettings) -> list[dict[str, Any]]:
    """A LocalAI backend gallery whose llama-cpp entries are the image's own release, never `latest`.

    LocalAI's upstream gallery (backend/index.yaml) points at `latest-*` tags, so every pod start on an empty
    /backends would install whatever llama.cpp build is newest. The meta entry picks a variant from the image's
    capability (/run/localai/capability: "default" on CPU images, "nvidia-cuda-12" on CUDA 12 ones), as upstream's
    does (core/gallery/backend_types.go, FindBestBackendFromMeta)."""
    version = backend_version(image, settings)
    repository = settings.backend_repository or LOCALAI_BACKEND_REPOSITORY

    def concrete(name: str, suffix: str) -> dict[str, Any]:
        entry: dict[str, Any] = {
            "name": name,
            "alias": "llama-cpp",
            "uri": f"{repository}:{version}-{suffix}",
            "version": version,
        }
        if settings.backend_repository is None:
            entry["mirrors"] = [f"{LOCALAI_BACKEND_MIRROR}:{version}-{suffix}"]
        return entry

    return [
        {
            "name": "llama-cpp",
            "alias": "llama-cpp",
            "capabilities": {
                "default": "cpu-llama-cpp",
                "nvidia": "cuda12-llama-cpp",
                "nvidia-cuda-12": "cuda12-llama-cpp",
                "nvidia-cuda-13": "cuda13-llama-cpp",
            },
        },
        concrete("cpu-llama-cpp", "cpu-llama-cpp"),
        concrete("cuda12-llama-cpp", "gpu-nvidia-cuda-12-llama-cpp"),
        concrete("cuda13-llama-cpp", "gpu-nvidia-cuda-13-llama-cpp"),
    ]


def config_map_data(pool: InferencePool, models: list[LLMModel], settings: RenderSettings) -> dict[str, str]:
    gpu = pool.spec.accelerator.gpus > 0
    data = {
        f"{model.name}.yaml": model_config_yaml(model, gpu=gpu, parallel_requests=pool.spec.parallel_requests)
        for model in models
    }
    manifest = download_manifest(models, models_volume_bytes(pool, models))
    data[DOWNLOADS_FILE] = json.dumps(manifest, indent=2, sort_keys=True) + "\n"
    if pool.spec.preinstall_backends:
        data[GALLERY_KEY] = dump_yaml(backend_gallery(image_of(pool, settings), settings))
    return data


def config_map(
    pool: InferencePool,
    models: list[LLMModel],
    settings: RenderSettings,
    data: Mapping[str, str] | None = None,
) -> dict[str, Any]:
    """`data`: config_map_data's, when the caller has it already."""
    return {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": meta(
            pool, config_map_name(pool), name=APP, component="model-config", version=settings.operator_version
        ),
        "data": dict(data) if data is not None else config_map_data(pool, models, settings),
    }


def service(pool: InferencePool, version: str = __version__) -> dict[str, Any]:
    return http_service(pool, pool.name, name=APP, component=COMPONENT, port=LOCALAI_PORT, version=version)


def pods_service_name(pool_name: str) -> str:
    return f"{pool_name}-pods"


def pods_service(pool: InferencePool, version: str = __version__) -> dict[str, Any]:
    """A headless Service: its DNS name resolves to one address per ready pod, which is how a route's
    router balances over the pool's pods and keeps one breaker per pod without any API access. Not-ready
    pods are left out by default (`publishNotReadyAddresses` unset: the API server drops a false, and the
    drift check would then re-apply it on every pass)."""
    obj = http_service(
        pool, pods_service_name(pool.name), name=APP, component=COMPONENT, port=LOCALAI_PORT, version=version
    )
    obj["spec"]["clusterIP"] = "None"
    return obj


def persistent_volume_claim(pool: InferencePool, version: str = __version__) -> dict[str, Any] | None:
    storage = pool.spec.storage
    if storage is None:
        return None
    spec: dict[str, Any] = {
        "accessModes": [storage.access_mode],
        "resources": {"requests": {"storage": in_resource_list(storage.size)}},
    }
    if storage.storage_class_name:
        spec["storageClassName"] = storage.storage_class_name
    return {
        "apiVersion": "v1",
        "kind": "PersistentVolumeClaim",
        "metadata": meta(pool, config_map_name(pool), name=APP, component="model-storage", version=version),
        "spec": spec,
    }


def pod_disruption_budget(pool: InferencePool, version: str = __version__) -> dict[str, Any] | None:
    if pool.spec.replicas <= 1:
        return None
    return {
        "apiVersion": "policy/v1",
        "kind": "PodDisruptionBudget",
        "metadata": meta(pool, pool.name, name=APP, component=COMPONENT, version=version),
        "spec": {
            "maxUnavailable": 1,
            "selector": {"matchLabels": selector(pool, name=APP, component=COMPONENT)},
        },
    }


def network_policy(pool: InferencePool, version: str = __version__) -> dict[str, Any] | None:
    """Only this namespace's routers (and the namespaces the user lists) reach LocalAI: an open LocalAI answers every
    request, admin ones included, from any pod of the cluster."""
    policy = pool.spec.network_policy
    if not policy.enabled:
        return None
    routers = {LABEL_NAME: ROUTER_APP, LABEL_COMPONENT: ROUTER_COMPONENT, LABEL_MANAGED_BY: APP_NAME}
    peers: list[dict[str, Any]] = [{"podSelector": {"matchLabels": routers}}]
    if policy.allowed_namespaces:
        names = sorted(policy.allowed_namespaces)
        peers.append(
            {
                "namespaceSelector": {
                    "matchExpressions": [{"key": NAMESPACE_NAME_LABEL, "operator": "In", "values": names}]
                }
            }
        )
    return {
        "apiVersion": "networking.k8s.io/v1",
        "kind": "NetworkPolicy",
        "metadata": meta(pool, pool.name, name=APP, component=COMPONENT, version=version),
        "spec": {
            "podSelector": {"matchLabels": selector(pool, name=APP, component=COMPONENT)},
            "policyTypes": ["Ingress"],
            "ingress": [{"from": peers, "ports": [{"protocol": "TCP", "port": LOCALAI_PORT}]}],
        },
    }


def _resources(pool: InferencePool) -> dict[str, Any]:
    gpus = pool.spec.accelerator.gpus
    user = pool.spec.resources
    requests: dict[str, Any] = {k: in_resource_list(v) for k, v in (user.requests if user else {}).items()}
    limits: dict[str, Any] = {k: in_resource_list(v) for k, v in (user.limits if user else {}).items()}
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


def preloaded_models(pool: InferencePool) -> list[str]:
    """The models LocalAI loads before it opens its port (LOCALAI_LOAD_TO_MEMORY), so a Ready pod answers at once.
    LocalAI skips the preload in single-backend mode (core/application/startup.go: `!options.SingleBackend`, set by
    LOCALAI_MAX_ACTIVE_BACKENDS=1), and loading more than maxActiveBackends would evict the first ones again."""
    limit = pool.spec.max_active_backends
    if limit == 1:
        return []
    return list(pool.spec.models[:limit] if limit else pool.spec.models)


def _value(name: str, value: str) -> dict[str, Any]:
    return {"name": name, "value": value}


def _env(pool: InferencePool, settings: RenderSettings) -> list[dict[str, Any]]:
    spec = pool.spec
    galleries = [{"name": GALLERY_NAME, "url": f"file://{GALLERY_PATH}"}] if spec.preinstall_backends else []
    # Names from core/cli/run.go at v4.9.0. Galleries and the admin surface are closed on every pool: with the web UI
    # on, /api/backends/install-external installs any OCI image even with the gallery endpoints off
    # (core/http/routes/ui_api.go is registered unless DisableWebUI, core/http/app.go).
    env = [
        _value("LOCALAI_ADDRESS", f":{LOCALAI_PORT}"),
        _value("LOCALAI_MODELS_PATH", MODELS_PATH),
        _value("LOCALAI_BACKENDS_PATH", BACKENDS_PATH),
        _value("LOCALAI_DATA_PATH", DATA_PATH),
        _value("LOCALAI_CONFIG_DIR", CONFIGURATION_PATH),
        _value("LOCALAI_THREADS", str(threads(pool))),
        _value("LOCALAI_LOG_LEVEL", spec.log_level),
        _value("LOCALAI_BACKEND_GALLERIES", json.dumps(galleries, separators=(",", ":"))),
        _value("LOCALAI_AUTOLOAD_BACKEND_GALLERIES", "false"),
        _value("LOCALAI_GALLERIES", "[]"),
        _value("LOCALAI_AUTOLOAD_GALLERIES", "false"),
        _value("LOCALAI_DISABLE_GALLERY_ENDPOINT", "true"),
        _value("LOCALAI_DISABLE_WEBUI", "true"),
        _value("LOCALAI_DISABLE_RUNTIME_SETTINGS", "true"),
        _value("LOCALAI_DISABLE_AGENTS", "true"),
        _value("LOCALAI_DISABLE_ASSISTANT", "true"),
        _value("LOCALAI_DISABLE_MCP", "true"),
    ]
    if spec.preinstall_backends:
        env.append(_value("LOCALAI_EXTERNAL_BACKENDS", ",".join(spec.preinstall_backends)))
    if spec.max_active_backends is not None:
        env.append(_value("LOCALAI_MAX_ACTIVE_BACKENDS", str(spec.max_active_backends)))
    preload = preloaded_models(pool)
    if preload:
        env.append(_value("LOCALAI_LOAD_TO_MEMORY", ",".join(preload)))
    if spec.api_key_secret_ref is not None:
        ref = spec.api_key_secret_ref
        env.append(
            {"name": "LOCALAI_API_KEY", "valueFrom": {"secretKeyRef": {"name": ref.name, "key": ref.key}}}
        )
    elif spec.network_policy.enabled:
        # Without a key, v4 refuses to listen when a pod address is public (IPv6 pods usually are), unless something
        # else gates access (core/cli/run_safety.go): the NetworkPolicy does.
        env.append(_value("LOCALAI_ALLOW_INSECURE_PUBLIC_BIND", "true"))
    if not spec.accelerator.gpus:
        # Every LocalAI image sets NVIDIA_VISIBLE_DEVICES=all (Dockerfile): on a GPU node with the NVIDIA runtime a
        # CPU pool would see every GPU without asking for one. "void" makes the runtime behave as runc.
        env.append(_value("NVIDIA_VISIBLE_DEVICES", "void"))
    overridden = {e.name: e.model_dump(by_alias=True, exclude_none=True) for e in spec.extra_env}
    env = [overridden.pop(e["name"], e) for e in env]
    return env + list(overridden.values())


def _fetch_container(models: list[LLMModel], settings: RenderSettings) -> dict[str, Any]:
    env = [
        {"name": entry["tokenEnv"], "valueFrom": {"secretKeyRef": {"name": ref.name, "key": ref.key}}}
        for entry, source in _downloads(models)
        if entry["tokenEnv"] and source.hugging_face and (ref := source.hugging_face.token_secret_ref)
    ]
    container: dict[str, Any] = {
        "name": "fetch-models",
        "image": settings.fetch_image(),
        "args": [
            "fetch-models",
            "--manifest",
            f"{CONFIG_DIR}/{DOWNLOADS_FILE}",
            "--config-dir",
            CONFIG_DIR,
            "--models-dir",
            MODELS_PATH,
        ],
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
    }
    if env:
        container["env"] = env
    return container


def _localai_security(pool: InferencePool, models: list[LLMModel]) -> dict[str, Any]:
    security = restricted_container_security()
    if pool.spec.run_as_user is not None:
        # Every path LocalAI writes is a volume shared with group FETCH_UID: /models, /backends, /tmp (generated
        # content and uploads, fatal when not writable), /data and /configuration (core/cli/run.go,
        # core/application/startup.go at v4.9.0).
        return {**security, "runAsNonRoot": True, "runAsUser": pool.spec.run_as_user, "runAsGroup": FETCH_UID}
    if any(m.spec.mlock for m in models):
        # As root with every capability dropped, mlock is capped by RLIMIT_MEMLOCK (a few MiB by default) and llama.cpp
        # only warns; with CAP_IPC_LOCK no limit applies (mlock(2)). Locked pages count against the memory limit.
        security["capabilities"] = {"drop": ["ALL"], "add": ["IPC_LOCK"]}
    # LocalAI's images run as root (no USER in its Dockerfile): no runAsNonRoot unless spec.runAsUser.
    return security


def _localai_container(
    pool: InferencePool, models: list[LLMModel], settings: RenderSettings
) -> dict[str, Any]:
    mounts: list[dict[str, Any]] = [{"name": "models", "mountPath": MODELS_PATH}]
    if pool.spec.preinstall_backends:
        if pool.spec.storage:
            # Kept across restarts, as LocalAI's own Kubernetes manifest keeps /backends on a PVC; v4 then skips
            # the boot install of a backend that is already there (core/services/galleryop/backends.go).
            subpath = f"{BACKENDS_SUBPATH}/{backend_version(image_of(pool, settings), settings)}"
            mounts.append({"name": "models", "mountPath": BACKENDS_PATH, "subPath": subpath})
        else:
            mounts.append({"name": "backends", "mountPath": BACKENDS_PATH})
        mounts.append(
            {"name": "model-config", "mountPath": GALLERY_PATH, "subPath": GALLERY_KEY, "readOnly": True}
        )
    # Without preinstallBackends nothing is mounted over /backends: an image that holds its backends keeps them.
    mounts += [
        {"name": "tmp", "mountPath": "/tmp"},
        {"name": "data", "mountPath": DATA_PATH},
        {"name": "configuration", "mountPath": CONFIGURATION_PATH},
    ]

    def probe(path: str) -> dict[str, Any]:
        return {"httpGet": {"path": path, "port": "http"}, "timeoutSeconds": 5}

    return {
        "name": LOCALAI_CONTAINER,
        "image": image_of(pool, settings),
        "ports": [{"name": "http", "containerPort": LOCALAI_PORT, "protocol": "TCP"}],
        "env": _env(pool, settings),
        "resources": _resources(pool),
        "volumeMounts": mounts,
        # The port opens only after the backend install and the preload: until then probes are refused, and
        # startup allows 60 minutes before liveness counts (see STARTUP_FAILURE_THRESHOLD).
        "startupProbe": {
            **probe(LOCALAI_HEALTH_PATH),
            "periodSeconds": STARTUP_PERIOD_SECONDS,
            "failureThreshold": STARTUP_FAILURE_THRESHOLD,
        },
        "livenessProbe": {**probe(LOCALAI_HEALTH_PATH), "periodSeconds": 20, "failureThreshold": 3},
        "readinessProbe": {**probe(LOCALAI_READY_PATH), "periodSeconds": 5, "failureThreshold": 3},
        "securityContext": _localai_security(pool, models),
    }


def deployment(
    pool: InferencePool,
    models: list[LLMModel],
    settings: RenderSettings,
    api_key_version: str | None = None,
    config_data: Mapping[str, str] | None = None,
) -> dict[str, Any]:
    """`config_data`: config_map_data's, when the caller has it already (YAML is most of a pool's render)."""
    spec = pool.spec
    gpus = spec.accelerator.gpus
    node_selector = dict(spec.node_selector)
    tolerations = [t.model_dump(by_alias=True, exclude_none=True) for t in spec.tolerations]
    if gpus:
        if spec.accelerator.product:
            node_selector[GPU_PRODUCT_LABEL] = spec.accelerator.product
        # GPU nodes are commonly tainted nvidia.com/gpu:NoSchedule.
        gpu_toleration = {"key": GPU_RESOURCE, "operator": "Exists", "effect": "NoSchedule"}
        if gpu_toleration not in tolerations:
            tolerations.append(gpu_toleration)
    limit = models_volume_limit(pool, models)
    volumes: list[dict[str, Any]] = [
        {"name": "models", "persistentVolumeClaim": {"claimName": config_map_name(pool)}}
        if spec.storage
        else {"name": "models", "emptyDir": {"sizeLimit": limit}},
        {"name": "model-config", "configMap": {"name": config_map_name(pool)}},
    ]
    scratch = ["tmp", "data", "configuration"]
    if spec.preinstall_backends and not spec.storage:
        scratch.insert(0, "backends")
    volumes += [{"name": name, "emptyDir": {"sizeLimit": SCRATCH_LIMITS[name]}} for name in scratch]
    pod_spec: dict[str, Any] = {
        "enableServiceLinks": False,  # Service env vars named LOCALAI_* would be read as LocalAI settings
        # LocalAI never calls the API server: no token of the namespace's default ServiceAccount in its pods.
        "automountServiceAccountToken": False,
        # OnRootMismatch: a model volume of tens of GB is not chowned file by file on every start.
        "securityContext": {
            "fsGroup": FETCH_UID,
            "fsGroupChangePolicy": "OnRootMismatch",
            "seccompProfile": {"type": "RuntimeDefault"},
        },
        "initContainers": [_fetch_container(models, settings)],
        "containers": [_localai_container(pool, models, settings)],
        "volumes": volumes,
        "terminationGracePeriodSeconds": 30,
    }
    if node_selector:
        pod_spec["nodeSelector"] = node_selector
    if tolerations:
        pod_spec["tolerations"] = tolerations
    if gpus and spec.accelerator.runtime_class_name:
        pod_spec["runtimeClassName"] = spec.accelerator.runtime_class_name
    # No operator version in the pod template: an operator upgrade must not restart every LocalAI pod.
    pod_labels = labels(pool, name=APP, component=COMPONENT, version=None)
    # Everything that needs a restart: the model files and YAMLs (read only at start), the pod spec itself and a
    # rotated API key (its Secret's version, never its value: env from a Secret is read at container start).
    data = config_data if config_data is not None else config_map_data(pool, models, settings)
    config_hash = content_hash(dict(data), pod_spec, api_key_version)
    annotations = {ANNOTATION_CONFIG_HASH: config_hash, "kubectl.kubernetes.io/default-container": "localai"}
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": meta(pool, pool.name, name=APP, component=COMPONENT, version=settings.operator_version),
        "spec": {
            "replicas": spec.replicas,
            "revisionHistoryLimit": 3,
            "strategy": {"type": "RollingUpdate", "rollingUpdate": rolling_update(pool)},
            "selector": {"matchLabels": selector(pool, name=APP, component=COMPONENT)},
            "template": {"metadata": {"labels": pod_labels, "annotations": annotations}, "spec": pod_spec},
        },
    }


def rolling_update(pool: InferencePool) -> dict[str, int | str]:
    """spec.rollout, else: GPUs are scarce, so GPU pools replace pods one at a time without a surge pod that would
    need extra GPUs; CPU pools start the new pod first, so the pool never has fewer Ready pods."""
    if pool.spec.rollout is not None:
        return {"maxSurge": pool.spec.rollout.max_surge, "maxUnavailable": pool.spec.rollout.max_unavailable}
    return (
        {"maxSurge": 0, "maxUnavailable": 1}
        if pool.spec.accelerator.gpus
        else {"maxSurge": 1, "maxUnavailable": 0}
    )


def pool_objects(
    pool: InferencePool,
    models: Mapping[str, LLMModel],
    settings: RenderSettings | None = None,
    *,
    api_key_version: str | None = None,
) -> list[dict[str, Any]]:
    """Every object the operator owns for a pool. `models` must hold every model the pool names, with no
    file_conflicts between them; `api_key_version` is the resourceVersion of the apiKeySecretRef Secret."""
    settings = settings or RenderSettings()
    served = [models[name] for name in pool.spec.models]
    version = settings.operator_version
    data = config_map_data(pool, served, settings)
    objects = [
        config_map(pool, served, settings, data),
        persistent_volume_claim(pool, version),
        deployment(pool, served, settings, api_key_version, data),
        service(pool, version),
        pod_disruption_budget(pool, version),
        network_policy(pool, version),
        pods_service(pool, version),
    ]
    return [obj for obj in objects if obj is not None]

"""Names and numbers users see: ports, paths, label keys, env names. Imported everywhere else."""

from typing import Final

GROUP: Final = "llm.localai-operator.io"
VERSION: Final = "v1alpha1"
API_VERSION: Final = f"{GROUP}/{VERSION}"
CATEGORY: Final = "llm"
FIELD_MANAGER: Final = "localai-operator"
APP_NAME: Final = "localai-operator"

# LocalAI server
LOCALAI_PORT: Final = 8080
LOCALAI_READY_PATH: Final = "/readyz"
LOCALAI_HEALTH_PATH: Final = "/healthz"
MODELS_PATH: Final = "/models"

# Router (data plane)
ROUTER_PORT: Final = 8080
ROUTER_SERVICE_PORT: Final = 80
# /metrics and /readyz's details for scrapers (the chart's PodMonitor, the operator's autoscaler): on routes with
# client keys the API port answers them only with a key.
ROUTER_METRICS_PORT: Final = 9090
ROUTER_CONFIG_FILE: Final = "router.yaml"
ROUTER_CONFIG_DIR: Final = "/etc/localai-operator/router"
# The router's spend ledger (an emptyDir: it outlives a container restart).
ROUTER_STATE_DIR: Final = "/var/lib/localai-operator/router"
FALLBACK_API_KEY_ENV: Final = "LOCALAI_OPERATOR_FALLBACK_API_KEY"
# The pool's own LocalAI key (InferencePool.spec.apiKeySecretRef), sent to local instead of the client's.
LOCAL_API_KEY_ENV: Final = "LOCALAI_OPERATOR_LOCAL_API_KEY"
# The egress proxy's basic-auth credentials (FallbackRoute.spec.fallback.proxyCredentialsSecretRef).
PROXY_USERNAME_ENV: Final = "LOCALAI_OPERATOR_PROXY_USERNAME"
PROXY_PASSWORD_ENV: Final = "LOCALAI_OPERATOR_PROXY_PASSWORD"
# The chart's telemetry values, read by the operator as every router's default (spec.telemetry overrides them).
ROUTER_OTLP_ENDPOINT_ENV: Final = "LOCALAI_OPERATOR_ROUTER_OTLP_ENDPOINT"
ROUTER_SAMPLING_RATIO_ENV: Final = "LOCALAI_OPERATOR_ROUTER_SAMPLING_RATIO"
# service.name of the spans and metrics each process exports (OTEL_SERVICE_NAME overrides it).
ROUTER_SERVICE_NAME: Final = "localai-router"
OPERATOR_SERVICE_NAME: Final = "localai-operator"
# One directory per client-key Secret (FallbackRoute.spec.auth), mounted into the router pod.
ROUTER_CLIENT_KEYS_DIR: Final = "/etc/localai-operator/client-keys"
SERVED_BY_HEADER: Final = "X-Served-By"
SERVED_BY_LOCAL: Final = "local"
SERVED_BY_FALLBACK: Final = "fallback"
# Responses the router writes itself (refusals, errors), as opposed to relayed ones.
SERVED_BY_ROUTER: Final = "router"
FALLBACK_REASON_HEADER: Final = "X-Fallback-Reason"

# Labels and annotations
LABEL_NAME: Final = "app.kubernetes.io/name"
LABEL_INSTANCE: Final = "app.kubernetes.io/instance"
LABEL_COMPONENT: Final = "app.kubernetes.io/component"
LABEL_PART_OF: Final = "app.kubernetes.io/part-of"
LABEL_MANAGED_BY: Final = "app.kubernetes.io/managed-by"
LABEL_VERSION: Final = "app.kubernetes.io/version"
ANNOTATION_CONFIG_HASH: Final = f"{GROUP}/config-hash"
ANNOTATION_APPLIED: Final = f"{GROUP}/applied-hash"  # on owned objects only, never on the user's resources

# GPUs
GPU_RESOURCE: Final = "nvidia.com/gpu"
GPU_PRODUCT_LABEL: Final = "nvidia.com/gpu.product"
GPU_PRESENT_LABEL: Final = "nvidia.com/gpu.present"
# Memory of one GPU in MiB, as NVIDIA GPU Feature Discovery labels a node.
GPU_MEMORY_LABEL: Final = "nvidia.com/gpu.memory"

# Default cloud fallback (from the seed: HolySheep, OpenAI-compatible)
HOLYSHEEP_BASE_URL: Final = "https://api.holysheep.ai/v1"
HOLYSHEEP_DEFAULT_MODEL: Final = "deepseek-v3.2"
HOLYSHEEP_PRICE_PER_MILLION: Final = 0.42

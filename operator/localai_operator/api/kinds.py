"""The one registry of the kinds the operator reads, watches or writes: kind, apiVersion and plural, and which
of them a custom resource owns. The client, the watches, the pruning and the chart's RBAC test all read it."""

from __future__ import annotations

from dataclasses import dataclass

from localai_operator.constants import API_VERSION


@dataclass(frozen=True)
class Kind:
    kind: str
    api_version: str
    plural: str
    namespaced: bool = True

    @property
    def group(self) -> str:
        """The API group; "" for the core group."""
        return self.api_version.rpartition("/")[0]

    @property
    def version(self) -> str:
        return self.api_version.rpartition("/")[2]

    @property
    def resource(self) -> str:
        """`plural.group`, the name kubectl resolves to this kind alone: other groups may serve the same kind and
        plural (the Gateway API Inference Extension's InferencePool)."""
        return f"{self.plural}.{self.group}" if self.group else self.plural

    def path(self, namespace: str | None = None, name: str | None = None, subresource: str = "") -> str:
        """The API server path of the collection, or of one object (and its subresource)."""
        base = f"/apis/{self.api_version}" if self.group else f"/api/{self.api_version}"
        if self.namespaced and namespace:
            base += f"/namespaces/{namespace}"
        out = f"{base}/{self.plural}"
        if name:
            out += f"/{name}"
            if subresource:
                out += f"/{subresource}"
        return out


LLM_MODEL = Kind("LLMModel", API_VERSION, "llmmodels")
INFERENCE_POOL = Kind("InferencePool", API_VERSION, "inferencepools")
FALLBACK_ROUTE = Kind("FallbackRoute", API_VERSION, "fallbackroutes")

CONFIG_MAP = Kind("ConfigMap", "v1", "configmaps")
SERVICE = Kind("Service", "v1", "services")
PERSISTENT_VOLUME_CLAIM = Kind("PersistentVolumeClaim", "v1", "persistentvolumeclaims")
DEPLOYMENT = Kind("Deployment", "apps/v1", "deployments")
POD_DISRUPTION_BUDGET = Kind("PodDisruptionBudget", "policy/v1", "poddisruptionbudgets")
NETWORK_POLICY = Kind("NetworkPolicy", "networking.k8s.io/v1", "networkpolicies")
# A pool route's router reads its pool's EndpointSlices with its own ServiceAccount and a namespaced Role.
SERVICE_ACCOUNT = Kind("ServiceAccount", "v1", "serviceaccounts")
ROLE = Kind("Role", "rbac.authorization.k8s.io/v1", "roles")
ROLE_BINDING = Kind("RoleBinding", "rbac.authorization.k8s.io/v1", "rolebindings")

POD = Kind("Pod", "v1", "pods")
NODE = Kind("Node", "v1", "nodes", namespaced=False)
# Read only: a user's HPA on a pool's scale subresource makes the autoscaler stand aside.
HORIZONTAL_POD_AUTOSCALER = Kind("HorizontalPodAutoscaler", "autoscaling/v2", "horizontalpodautoscalers")
# Read only: where the routers' pods are, to read their /metrics (the router Services' slices).
ENDPOINT_SLICE = Kind("EndpointSlice", "discovery.k8s.io/v1", "endpointslices")
SECRET = Kind("Secret", "v1", "secrets")
EVENT = Kind("Event", "v1", "events")
LEASE = Kind("Lease", "coordination.k8s.io/v1", "leases")
NAMESPACE = Kind("Namespace", "v1", "namespaces", namespaced=False)
CUSTOM_RESOURCE_DEFINITION = Kind(
    "CustomResourceDefinition", "apiextensions.k8s.io/v1", "customresourcedefinitions", namespaced=False
)

# The three kinds users write.
CUSTOM: tuple[Kind, ...] = (LLM_MODEL, INFERENCE_POOL, FALLBACK_ROUTE)
# What a custom resource may own: watched (managed-by label only) so that drift is repaired, and pruned when an
# owner stops rendering one (storage removed, replicas down to 1, a policy switched off).
OWNED: tuple[Kind, ...] = (
    CONFIG_MAP,
    SERVICE,
    PERSISTENT_VOLUME_CLAIM,
    DEPLOYMENT,
    POD_DISRUPTION_BUDGET,
    NETWORK_POLICY,
    SERVICE_ACCOUNT,
    ROLE,
    ROLE_BINDING,
)
KINDS: dict[str, Kind] = {
    k.kind: k
    for k in (
        *CUSTOM,
        *OWNED,
        POD,
        NODE,
        HORIZONTAL_POD_AUTOSCALER,
        SECRET,
        EVENT,
        LEASE,
        NAMESPACE,
        CUSTOM_RESOURCE_DEFINITION,
    )
}


def of(kind: str) -> Kind:
    """The registered kind named `kind` (e.g. "Deployment"); a KeyError is a bug."""
    return KINDS[kind]

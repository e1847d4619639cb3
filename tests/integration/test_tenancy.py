"""Safe in a shared cluster: what a tenant can do with only namespaced create/get (the three kinds, pods,
Services, ConfigMaps, EndpointSlices) in its own namespace cannot turn the operator against another namespace or
make it take over objects it did not create. (A tenant's pod in a route's slice serving garbage metrics is on the
real node: tests/e2e/test_real_node_tenant.py; the Secrets the operator may read: tests/e2e/test_install.py.)"""

from __future__ import annotations

import contextlib
import secrets
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pytest
from kubernetes import client
from kubernetes.client.exceptions import ApiException

from localai_operator.constants import APP_NAME, GROUP, LABEL_MANAGED_BY, VERSION
from localai_operator.control.kube import Kube
from tests.conftest import TEST_NAMESPACE_LABEL
from tests.helpers import ClusterAccess, wait_for
from tests.operator_process import CustomResources, OperatorProcess, model, pool

pytestmark = pytest.mark.cluster
T = 60
TENANT_RULES = [
    client.V1PolicyRule(
        api_groups=[GROUP],
        resources=["llmmodels", "inferencepools", "fallbackroutes"],
        verbs=["create", "get"],
    ),
    client.V1PolicyRule(
        api_groups=[""], resources=["pods", "services", "configmaps"], verbs=["create", "get"]
    ),
    client.V1PolicyRule(
        api_groups=["discovery.k8s.io"], resources=["endpointslices"], verbs=["create", "get"]
    ),
]


@dataclass
class Tenant:
    """A team with only namespaced create/get in its namespace, as a platform team would give it."""

    namespace: str
    api: client.ApiClient

    @property
    def core(self) -> client.CoreV1Api:
        return client.CoreV1Api(self.api)

    @property
    def crs(self) -> CustomResources:
        return CustomResources(self.api, self.namespace)


@pytest.fixture
def tenant(cluster: ClusterAccess, operator: OperatorProcess) -> Iterator[Tenant]:
    name = f"team-b-{secrets.token_hex(3)}"
    core, rbac = cluster.core, client.RbacAuthorizationV1Api(cluster.api)
    core.create_namespace(
        client.V1Namespace(metadata=client.V1ObjectMeta(name=name, labels={TEST_NAMESPACE_LABEL: "true"}))
    )
    core.create_namespaced_service_account(
        name, client.V1ServiceAccount(metadata=client.V1ObjectMeta(name="team"))
    )
    rbac.create_namespaced_role(
        name, client.V1Role(metadata=client.V1ObjectMeta(name="team"), rules=TENANT_RULES)
    )
    rbac.create_namespaced_role_binding(
        name,
        client.V1RoleBinding(
            metadata=client.V1ObjectMeta(name="team"),
            role_ref=client.V1RoleRef(api_group="rbac.authorization.k8s.io", kind="Role", name="team"),
            subjects=[client.RbacV1Subject(kind="ServiceAccount", name="team", namespace=name)],
        ),
    )
    request = client.AuthenticationV1TokenRequest(spec=client.V1TokenRequestSpec(audiences=[]))
    token = core.create_namespaced_service_account_token("team", name, request).status.token
    with cluster.client_for_token(token) as api:
        yield Tenant(name, api)
    with contextlib.suppress(ApiException):
        core.delete_namespace(name)


def raw(cluster: ClusterAccess, kind: str, namespace: str, name: str) -> dict[str, Any] | None:
    """An object exactly as the API server returns it (every field, managedFields and resourceVersion too)."""
    return Kube(cluster.api).get(kind, namespace, name)


def test_a_tenant_has_only_what_its_role_gives(tenant: Tenant) -> None:
    tenant.crs.create(model("m"))
    with pytest.raises(ApiException) as refused:
        tenant.crs.list("LLMModel")
    assert refused.value.status == 403


def test_an_object_in_another_namespace_naming_a_pools_uid_makes_the_operator_delete_nothing(
    cluster: ClusterAccess, namespace: str, crs: CustomResources, tenant: Tenant
) -> None:
    # team-a (the test's namespace) runs a pool, and keeps a ConfigMap of its own, "victim", beside it.
    crs.create(model("m"))
    created = crs.create(pool("p", ["m"]))
    cluster.core.create_namespaced_config_map(
        namespace, client.V1ConfigMap(metadata=client.V1ObjectMeta(name="victim"), data={"keep": "me"})
    )
    wait_for(lambda: crs.is_ready("InferencePool", "p"), T, "p Ready")
    before = raw(cluster, "ConfigMap", namespace, "victim")

    # team-b plants an object named like it: our label, team-a's pool (whose uid anyone with `view` can read) as
    # controller, and a finalizer of its own so that the garbage collector, which ignores an owner in another
    # namespace, cannot remove it.
    owner = {
        "apiVersion": f"{GROUP}/{VERSION}",
        "kind": "InferencePool",
        "name": "p",
        "uid": created["metadata"]["uid"],
        "controller": True,
    }
    planted = client.V1ConfigMap(
        metadata=client.V1ObjectMeta(
            name="victim",
            labels={LABEL_MANAGED_BY: APP_NAME, "app.kubernetes.io/instance": "p"},
            owner_references=[owner],
            finalizers=["team-b.example/keep"],
        ),
        data={"planted": "yes"},
    )
    tenant.core.create_namespaced_config_map(tenant.namespace, planted)
    try:
        # The pool's next passes: an edit, and the resyncs (every 3 s in the tests).
        crs.patch("InferencePool", "p", {"spec": {"replicas": 2}})
        wait_for(
            lambda: cluster.apps.read_namespaced_deployment("p", namespace).spec.replicas == 2,
            T,
            "the pool's pass after the planting",
        )
        wait_for(lambda: crs.is_ready("InferencePool", "p"), T, "p Ready again")
        assert raw(cluster, "ConfigMap", namespace, "victim") == before, "team-a's ConfigMap is untouched"
        assert (raw(cluster, "ConfigMap", tenant.namespace, "victim") or {})["data"] == {"planted": "yes"}
    finally:
        cluster.core.patch_namespaced_config_map(
            "victim", tenant.namespace, {"metadata": {"finalizers": None}}
        )


def test_a_service_and_configmap_named_like_a_new_pools_objects_are_a_conflict_and_stay_byte_for_byte(
    cluster: ClusterAccess, namespace: str, crs: CustomResources
) -> None:
    cluster.core.create_namespaced_service(
        namespace,
        client.V1Service(
            metadata=client.V1ObjectMeta(name="p", labels={"team": "search"}),
            spec=client.V1ServiceSpec(
                selector={"app": "search"}, ports=[client.V1ServicePort(port=80, target_port=8080)]
            ),
        ),
    )
    cluster.core.create_namespaced_config_map(
        namespace, client.V1ConfigMap(metadata=client.V1ObjectMeta(name="p-models"), data={"team": "search"})
    )
    names = [("Service", "p"), ("ConfigMap", "p-models")]
    before = [raw(cluster, kind, namespace, name) for kind, name in names]
    crs.create(model("m"))
    crs.create(pool("p", ["m"]))

    condition = crs.wait_for_reason("InferencePool", "p", "Conflict", T)
    assert condition["status"] == "False"
    message = condition["message"]
    assert f'Service "p" already exists in namespace "{namespace}"' in message
    assert 'ConfigMap "p-models" already exists' in message
    assert 'rename InferencePool "p" or delete that' in message
    # The pass goes on for the rest: the Deployment and the headless Service are ours.
    wait_for(lambda: raw(cluster, "Service", namespace, "p-pods"), T, "the pool's other objects")
    after = [raw(cluster, kind, namespace, name) for kind, name in names]
    assert after == before, "both objects are unchanged, byte for byte"

    # Deleting them is what the message asks: the next slow retry (2, 4, 8... s) takes the names.
    cluster.core.delete_namespaced_service("p", namespace)
    cluster.core.delete_namespaced_config_map("p-models", namespace)
    wait_for(lambda: crs.is_ready("InferencePool", "p"), 90, "p Ready once the names are free")


def test_a_name_two_pools_would_both_render_stays_with_the_first(
    cluster: ClusterAccess, namespace: str, crs: CustomResources
) -> None:
    crs.create(model("m"))
    crs.create(pool("x", ["m"]))
    wait_for(lambda: crs.is_ready("InferencePool", "x"), T, "x Ready")
    before = raw(cluster, "Service", namespace, "x-pods")
    crs.create(pool("x-pods", ["m"]))  # its own Service would be "x-pods": pool x's headless Service
    condition = crs.wait_for_reason("InferencePool", "x-pods", "Conflict", T)
    assert 'Service "x-pods" already exists' in condition["message"]
    assert 'it belongs to InferencePool "x"' in condition["message"]
    assert raw(cluster, "Service", namespace, "x-pods") == before
    assert crs.is_ready("InferencePool", "x")

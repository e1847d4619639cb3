"""InferencePool on the real control plane: GPU scheduling, rollouts, dependencies, deletion, GPU fit, the
NetworkPolicy in front of LocalAI, models that cannot share a directory."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml
from kubernetes import client
from kubernetes.client.exceptions import ApiException

from localai_operator.api import InferencePool, LLMModel
from localai_operator.constants import ANNOTATION_CONFIG_HASH
from localai_operator.render import pool_objects
from tests.helpers import ClusterAccess, kubectl, wait_for
from tests.operator_process import CustomResources, OperatorProcess, model, pool, route

pytestmark = pytest.mark.cluster
T = 60


def _or_none(read: Callable[[str, str], Any], namespace: str, name: str) -> Any:
    """The object `read(name, namespace)` returns, or None when it does not exist."""
    try:
        return read(name, namespace)
    except ApiException as err:
        if err.status == 404:
            return None
        raise


def _deployment(cluster: ClusterAccess, namespace: str, name: str) -> Any:
    return _or_none(cluster.apps.read_namespaced_deployment, namespace, name)


def test_a_gpu_pool_gets_gpu_limits_scheduled_pods_and_becomes_ready(
    cluster: ClusterAccess, namespace: str, crs: CustomResources
) -> None:
    crs.create(model("mistral"))
    crs.create(pool("gpu-pool", ["mistral"], gpus=2))
    wait_for(
        lambda: crs.is_ready("InferencePool", "gpu-pool"),
        T,
        "gpu-pool Ready",
        describe=lambda: crs.get("InferencePool", "gpu-pool").get("status"),
    )
    deployment = cluster.apps.read_namespaced_deployment("gpu-pool", namespace)
    limits = deployment.spec.template.spec.containers[0].resources.limits
    assert limits["nvidia.com/gpu"] == "2"
    [pod] = cluster.core.list_namespaced_pod(
        namespace, label_selector="app.kubernetes.io/instance=gpu-pool"
    ).items
    node = cluster.core.read_node(pod.spec.node_name)
    assert int(node.status.allocatable.get("nvidia.com/gpu", "0")) >= 2
    status = crs.get("InferencePool", "gpu-pool")["status"]
    assert status["readyReplicas"] == 1
    assert status["endpoint"] == f"http://gpu-pool.{namespace}.svc:8080/v1"


def test_a_pool_asking_more_gpus_than_any_node_has_is_not_ready_and_says_so_in_numbers(
    crs: CustomResources,
) -> None:
    crs.create(model("big"))
    crs.create(pool("huge", ["big"], gpus=64))

    condition = crs.wait_for_reason("InferencePool", "huge", "InsufficientGPU")
    assert condition["status"] == "False"
    assert "nvidia.com/gpu" in condition["message"]
    assert "64" in condition["message"] and "offers 4" in condition["message"]


def test_editing_a_model_rolls_every_pool_that_serves_it(
    cluster: ClusterAccess, namespace: str, crs: CustomResources
) -> None:
    crs.create(model("shared", contextSize=2048))
    crs.create(pool("a", ["shared"]))
    crs.create(pool("b", ["shared"]))
    for name in ("a", "b"):
        wait_for(lambda n=name: crs.is_ready("InferencePool", n), T, f"pool {name} Ready")
    before = {
        n: cluster.apps.read_namespaced_deployment(n, namespace).spec.template.metadata.annotations[
            ANNOTATION_CONFIG_HASH
        ]
        for n in ("a", "b")
    }
    crs.patch("LLMModel", "shared", {"spec": {"contextSize": 4096}})

    def rolled(name: str) -> bool:
        dep = cluster.apps.read_namespaced_deployment(name, namespace)
        changed = dep.spec.template.metadata.annotations[ANNOTATION_CONFIG_HASH] != before[name]
        return bool(changed and dep.status.updated_replicas == 1 and dep.status.ready_replicas == 1)

    for name in ("a", "b"):
        wait_for(lambda n=name: rolled(n), T, f"pool {name} to roll to the new model config")


def test_editing_only_labels_on_a_pool_does_not_roll_it(
    cluster: ClusterAccess, namespace: str, crs: CustomResources, operator: OperatorProcess
) -> None:
    crs.create(model("m"))
    crs.create(pool("p", ["m"]))
    wait_for(lambda: crs.is_ready("InferencePool", "p"), T, "p Ready")
    generation = cluster.apps.read_namespaced_deployment("p", namespace).metadata.generation
    passes = operator.reconciles()
    crs.patch("InferencePool", "p", {"metadata": {"labels": {"team": "search"}}})
    # The label edit's own event plus a resync: the operator has looked at the edited pool by then.
    wait_for(lambda: operator.reconciles() >= passes + 4, T, "the operator to reconcile after the label edit")
    assert cluster.apps.read_namespaced_deployment("p", namespace).metadata.generation == generation
    assert "team" not in (cluster.apps.read_namespaced_deployment("p", namespace).metadata.labels or {})


def test_a_pool_waits_for_a_missing_model_and_becomes_ready_when_it_appears(crs: CustomResources) -> None:
    crs.create(pool("early", ["late-model"]))

    condition = crs.wait_for_reason("InferencePool", "early", "ModelMissing")
    assert condition["status"] == "False" and '"late-model"' in condition["message"]
    crs.create(model("late-model"))
    wait_for(lambda: crs.is_ready("InferencePool", "early"), T, "early Ready once its model exists")


def test_deleting_a_pool_removes_its_deployment_service_and_configmap(
    cluster: ClusterAccess, namespace: str, crs: CustomResources
) -> None:
    crs.create(model("m"))
    crs.create(pool("gone", ["m"]))
    wait_for(lambda: crs.is_ready("InferencePool", "gone"), T, "gone Ready")
    crs.delete("InferencePool", "gone")

    def all_gone() -> bool:
        services = cluster.core.list_namespaced_service(
            namespace, label_selector="app.kubernetes.io/instance=gone"
        )
        maps = cluster.core.list_namespaced_config_map(
            namespace, label_selector="app.kubernetes.io/instance=gone"
        )
        return _deployment(cluster, namespace, "gone") is None and not services.items and not maps.items

    wait_for(all_gone, T, "the garbage collector to delete the pool's Deployment, Service and ConfigMap")


def test_models_report_the_pools_that_serve_them(crs: CustomResources) -> None:
    crs.create(model("m1"))
    crs.create(pool("p1", ["m1"]))
    crs.create(pool("p2", ["m1"]))
    wait_for(
        lambda: (crs.get("LLMModel", "m1").get("status") or {}).get("servedBy") == ["p1", "p2"],
        T,
        "m1.status.servedBy == [p1, p2]",
    )


def _network_policy(cluster: ClusterAccess, namespace: str, name: str) -> Any:
    return _or_none(client.NetworkingV1Api(cluster.api).read_namespaced_network_policy, namespace, name)


def test_each_pool_gets_a_network_policy_that_admits_its_namespaces_routers_to_port_8080(
    cluster: ClusterAccess, namespace: str, crs: CustomResources
) -> None:
    crs.create(model("m"))
    crs.create(pool("guarded", ["m"]))
    crs.create(route("chat", "guarded"))
    wait_for(lambda: crs.is_ready("InferencePool", "guarded"), T, "guarded Ready")
    wait_for(
        lambda: crs.is_ready("FallbackRoute", "chat"),
        T,
        "chat Ready",
        describe=lambda: crs.get("FallbackRoute", "chat").get("status"),
    )
    policy = wait_for(lambda: _network_policy(cluster, namespace, "guarded"), T, "the pool's NetworkPolicy")

    def pod_labels(instance: str) -> dict[str, str]:
        [pod] = cluster.core.list_namespaced_pod(
            namespace, label_selector=f"app.kubernetes.io/instance={instance}"
        ).items
        return dict(pod.metadata.labels)

    assert policy.spec.pod_selector.match_labels.items() <= pod_labels("guarded").items()
    [rule] = policy.spec.ingress
    assert [(p.protocol, p.port) for p in rule.ports] == [("TCP", 8080)]
    [peer] = rule._from
    assert peer.namespace_selector is None  # the pool's own namespace only
    assert peer.pod_selector.match_labels.items() <= pod_labels("chat").items()


def test_a_network_policy_admitting_listed_namespaces_passes_a_server_side_dry_run(
    cluster: ClusterAccess, namespace: str
) -> None:
    served = LLMModel.parse({**model("m"), "metadata": {"name": "m", "namespace": namespace}})
    body = pool("p", ["m"], networkPolicy={"allowedNamespaces": ["monitoring", "apps"]})
    guarded = InferencePool.parse({**body, "metadata": {"name": "p", "namespace": namespace}})
    [policy] = [o for o in pool_objects(guarded, {"m": served}) if o["kind"] == "NetworkPolicy"]
    result = kubectl(cluster, "apply", "--dry-run=server", "-f", "-", input=yaml.safe_dump(policy))
    assert result.returncode == 0, result.stderr


def test_switching_a_pools_network_policy_off_deletes_it(
    cluster: ClusterAccess, namespace: str, crs: CustomResources
) -> None:
    crs.create(model("m"))
    crs.create(pool("open", ["m"]))
    wait_for(lambda: _network_policy(cluster, namespace, "open"), T, "the pool's NetworkPolicy")
    crs.patch("InferencePool", "open", {"spec": {"networkPolicy": {"enabled": False}}})
    wait_for(lambda: _network_policy(cluster, namespace, "open") is None, T, "the NetworkPolicy to be pruned")


def test_a_pool_whose_models_download_files_of_one_name_is_refused_naming_both(crs: CustomResources) -> None:
    for name, host in (("mistral-q4", "a.example"), ("llama-q4", "b.example")):
        crs.create(
            {
                "kind": "LLMModel",
                "metadata": {"name": name},
                "spec": {"source": {"url": f"https://{host}/weights/model.gguf"}},
            }
        )
    crs.create(pool("clash", ["mistral-q4", "llama-q4"]))

    condition = crs.wait_for_reason("InferencePool", "clash", "InvalidSpec")
    assert condition["status"] == "False"
    assert '"mistral-q4"' in condition["message"] and '"llama-q4"' in condition["message"]
    assert '"model.gguf"' in condition["message"]


def test_quantities_the_schema_admits_are_applied_as_the_api_server_stores_them_and_applied_once(
    cluster: ClusterAccess, namespace: str, crs: CustomResources, tmp_path: Path
) -> None:
    crs.create(model("m"))
    resources = {"requests": {"cpu": "1.5m", "memory": "+1Gi"}, "limits": {"cpu": "2k", "memory": "1.5Gi"}}
    crs.create(pool("odd", ["m"], resources=resources))
    wait_for(lambda: crs.is_ready("InferencePool", "odd"), T, "odd Ready")
    container = cluster.apps.read_namespaced_deployment("odd", namespace).spec.template.spec.containers[0]
    assert container.resources.requests == {"cpu": "2m", "memory": "1Gi"}
    assert container.resources.limits == {"cpu": "2k", "memory": "1536Mi"}
    env = {e.name: e.value for e in container.env}
    assert env["LOCALAI_THREADS"] == "1"
    # What was applied is what is stored: a second operator, of this namespace alone, finds nothing to apply again
    # at its start-up passes nor at two resyncs (every 3 s). The session's operator counts every namespace's
    # requests: the namespace controller deletes other tests' Deployments before their pools, and the applies
    # that put them back (refused: the namespace is terminating) land in any window.
    fresh = OperatorProcess(cluster.kubeconfig, tmp_path / "fresh.log", args=["-n", namespace]).start()
    try:
        wait_for(
            lambda: fresh.reconciles() >= 3 * 2,
            T,
            "the start-up passes and two resyncs",
            describe=fresh.reconciles,
        )
        assert ("apply", "Deployment") not in fresh.requests(), fresh.requests()
    finally:
        fresh.stop()

"""The operator as a whole: samples to Ready, no-op resyncs, restarts mid-work, GitOps friendliness."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import pytest
import yaml

from localai_operator.constants import API_VERSION
from tests.helpers import ClusterAccess, wait_for
from tests.operator_process import CustomResources, OperatorProcess, model, pool

pytestmark = pytest.mark.cluster
ROOT = Path(__file__).resolve().parents[2]
KINDS = ("LLMModel", "InferencePool", "FallbackRoute")
# Annotations a user's own tools may add; anything else on a CR would be the operator's.
USER_ANNOTATIONS = {"kubectl.kubernetes.io/last-applied-configuration"}


def samples() -> list[dict[str, Any]]:
    docs = []
    for path in sorted((ROOT / "manifests" / "samples").glob("*.yaml")):
        docs.extend(d for d in yaml.safe_load_all(path.read_text()) if d and d.get("kind") != "Namespace")
    return docs


def apply_samples(cluster: ClusterAccess, namespace: str, crs: CustomResources) -> None:
    from kubernetes import client

    for doc in samples():
        doc = copy.deepcopy(doc)
        doc["metadata"]["namespace"] = namespace
        if doc["kind"] == "Secret":
            client.CoreV1Api(cluster.api).create_namespaced_secret(namespace, doc)
        else:
            crs.create(doc)


def test_the_samples_reconcile_to_ready_with_gpu_pods_on_gpu_nodes(
    cluster: ClusterAccess, namespace: str, crs: CustomResources
) -> None:
    apply_samples(cluster, namespace, crs)
    for doc in samples():
        if doc["apiVersion"] == API_VERSION:
            kind, name = doc["kind"], doc["metadata"]["name"]
            wait_for(
                lambda k=kind, n=name: crs.is_ready(k, n),
                90,
                f"{kind} {name} Ready",
                describe=lambda k=kind, n=name: crs.condition(k, n),
            )
    for pod in cluster.core.list_namespaced_pod(
        namespace, label_selector="app.kubernetes.io/component=inference-server"
    ).items:
        gpus = int((pod.spec.containers[0].resources.limits or {}).get("nvidia.com/gpu", "0"))
        node = cluster.core.read_node(pod.spec.node_name)
        assert (node.metadata.labels.get("nvidia.com/gpu.present") == "true") == (gpus > 0), pod.metadata.name
    status = crs.get("InferencePool", "multi-model-pool")["status"]
    assert status["readyReplicas"] == 2 and status["gpus"] == 2


def test_a_restart_and_resyncs_over_unchanged_resources_send_no_request(
    cluster: ClusterAccess, namespace: str, crs: CustomResources, tmp_path: Path
) -> None:
    apply_samples(cluster, namespace, crs)
    custom = [d for d in samples() if d["apiVersion"] == API_VERSION]
    wait_for(
        lambda: all(crs.is_ready(d["kind"], d["metadata"]["name"]) for d in custom), 90, "the samples Ready"
    )
    # A second operator, scoped to this namespace so other tests' churn is not counted, starts over resources
    # that are already right: its start-up passes and two resyncs write nothing, and read only what no watch
    # gives it: the Secrets its resources name (by name, once per pass at most) and, once each, the router pods
    # whose /metrics it may read and their ReplicaSet. Its Lease renewals are not counted, and Kopf's own list
    # and watch requests are not ours.
    fresh = OperatorProcess(cluster.kubeconfig, tmp_path / "fresh.log", args=["-n", namespace]).start()
    try:
        wait_for(
            lambda: fresh.reconciles() >= 3 * len(custom),
            60,
            "the start-up passes and two resyncs",
            describe=fresh.reconciles,
        )
        requests = fresh.requests()
        assert fresh.writes() == 0, requests
        assert set(requests) <= {("get", "Secret"), ("get", "Pod"), ("get", "ReplicaSet")}, requests
        routers = cluster.core.list_namespaced_pod(
            namespace, label_selector="app.kubernetes.io/component=router"
        )
        assert requests.get(("get", "Pod"), 0) <= len(routers.items), requests
        assert requests.get(("get", "ReplicaSet"), 0) <= len(routers.items), requests
        assert requests.get(("get", "Secret"), 0) <= fresh.reconciles(), requests
    finally:
        fresh.stop()


def test_no_custom_resource_carries_an_operator_added_annotation_or_finalizer(
    cluster: ClusterAccess, namespace: str, crs: CustomResources
) -> None:
    apply_samples(cluster, namespace, crs)
    wait_for(lambda: crs.is_ready("FallbackRoute", "chat"), 90, "the samples Ready")
    for kind in KINDS:
        for obj in crs.list(kind):
            extra = set(obj["metadata"].get("annotations") or {}) - USER_ANNOTATIONS
            assert not extra, f"{kind} {obj['metadata']['name']} has {extra}"
            assert not obj["metadata"].get("finalizers"), f"{kind} {obj['metadata']['name']} has finalizers"


def test_replacing_a_custom_resource_like_a_gitops_force_sync_duplicates_nothing(
    cluster: ClusterAccess, namespace: str, crs: CustomResources
) -> None:
    crs.create(model("m"))
    crs.create(pool("p", ["m"]))
    wait_for(lambda: crs.is_ready("InferencePool", "p"), 60, "p Ready")
    live = crs.get("InferencePool", "p")
    replacement = {
        "apiVersion": live["apiVersion"],
        "kind": "InferencePool",
        "metadata": {
            "name": "p",
            "namespace": namespace,
            "resourceVersion": live["metadata"]["resourceVersion"],
        },
        "spec": live["spec"],
    }
    crs.replace(replacement)
    wait_for(lambda: crs.is_ready("InferencePool", "p"), 60, "p Ready after replace")
    deployments = cluster.apps.list_namespaced_deployment(
        namespace, label_selector="app.kubernetes.io/instance=p"
    )
    assert len(deployments.items) == 1
    replica_sets = cluster.apps.list_namespaced_replica_set(
        namespace, label_selector="app.kubernetes.io/instance=p"
    )
    assert len(replica_sets.items) == 1  # no rollout either: the pod template did not change


def test_killing_the_operator_mid_reconcile_then_restarting_converges_without_duplicates(
    cluster: ClusterAccess, namespace: str, operator: OperatorProcess, crs: CustomResources
) -> None:
    crs.create(model("m"))
    operator.kill()
    try:
        names = [f"p{i:02d}" for i in range(50)]
        for name in names:
            crs.create(pool(name, ["m"]))
        operator.start()
        # Killed as soon as its first Deployment is out: mid-burst, most pools not yet reconciled.
        wait_for(
            lambda: cluster.apps.list_namespaced_deployment(namespace).items, 30, "the first pool applied"
        )
        operator.kill()
    finally:
        operator.start()
    wait_for(
        lambda: all(crs.is_ready("InferencePool", n) for n in names),
        180,
        "all 50 pools Ready after restart",
        describe=lambda: [n for n in names if not crs.is_ready("InferencePool", n)],
    )
    deployments = cluster.apps.list_namespaced_deployment(namespace).items
    assert sorted(d.metadata.name for d in deployments) == names
    for deployment in deployments:
        [owner] = deployment.metadata.owner_references
        assert owner.kind == "InferencePool" and owner.name == deployment.metadata.name
    config_maps = [c.metadata.name for c in cluster.core.list_namespaced_config_map(namespace).items]
    assert sorted(c for c in config_maps if c.endswith("-models")) == sorted(f"{n}-models" for n in names)


def test_a_second_replica_stands_by_and_takes_over_when_the_leader_dies(
    cluster: ClusterAccess, namespace: str, crs: CustomResources, tmp_path: Path
) -> None:
    replicas = [
        OperatorProcess(cluster.kubeconfig, tmp_path / f"{i}.log", args=["-n", namespace]).start()
        for i in range(2)
    ]
    try:

        def leader() -> OperatorProcess | None:
            alive = [r for r in replicas if r.alive()]
            leading = [r for r in alive if r.metrics().get("localai_operator_leader") == 1.0]
            assert len(leading) <= 1, "two replicas hold the lease"
            return leading[0] if leading else None

        first = wait_for(leader, 30, "one replica to take the lease")
        standby = next(r for r in replicas if r is not first)
        crs.create(model("m"))
        crs.create(pool("p", ["m"]))
        wait_for(lambda: first.reconciles() > 0, 30, "the leader to reconcile")
        assert standby.reconciles() == 0 and standby.writes() == 0
        first.kill()
        # The dead leader's lease expires after 15 s; then the standby leads and reconciles everything.
        wait_for(lambda: leader() is standby, 45, "the standby to take over the lease")
        wait_for(lambda: standby.reconciles() > 0, 30, "the new leader to reconcile")
    finally:
        for replica in replicas:
            replica.stop()


def test_deleting_a_custom_resource_does_not_hang_while_the_operator_is_down(
    cluster: ClusterAccess, namespace: str, operator: OperatorProcess, crs: CustomResources
) -> None:
    crs.create(model("m"))
    crs.create(pool("p", ["m"]))
    wait_for(lambda: crs.is_ready("InferencePool", "p"), 60, "p Ready")
    operator.kill()
    try:
        crs.delete("InferencePool", "p")
        crs.delete("LLMModel", "m")
        wait_for(
            lambda: not crs.list("InferencePool") and not crs.list("LLMModel"),
            30,
            "both resources gone with no operator running (no finalizer)",
        )
        wait_for(
            lambda: not cluster.apps.list_namespaced_deployment(namespace).items,
            60,
            "the garbage collector to remove the pool's Deployment",
        )
    finally:
        operator.start()

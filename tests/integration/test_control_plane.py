"""The control plane under trouble, on the real API server: drift repaired from the watches within seconds,
refusals reported with the server's words and retried with backoff, an API server restart ridden out, and no
Lease when leader election is off."""

from __future__ import annotations

import itertools
import os
import re
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any
from unittest import mock

import pytest
from kubernetes import client
from kubernetes.client.exceptions import ApiException

from localai_operator.devcluster import Cluster
from tests.helpers import ClusterAccess, wait_for
from tests.operator_process import CustomResources, OperatorProcess, install_crds, model, pool

pytestmark = pytest.mark.cluster
T = 60
RETRY = re.compile(r"^(\S+ \S+) INFO \S+: InferencePool (\S+): .*; retrying in ([0-9.]+) s \((slow|fast)\)$")


def owned_object(
    cluster: ClusterAccess, kind: str
) -> tuple[Callable[[str, str], Any], Callable[[str, str], Any]]:
    """(read, delete) for one owned kind, by name and namespace."""
    core, apps = cluster.core, cluster.apps
    return {
        "ConfigMap": (core.read_namespaced_config_map, core.delete_namespaced_config_map),
        "Service": (core.read_namespaced_service, core.delete_namespaced_service),
        "Deployment": (apps.read_namespaced_deployment, apps.delete_namespaced_deployment),
    }[kind]


def uid_of(read: Callable[[str, str], Any], name: str, namespace: str) -> str | None:
    try:
        found = read(name, namespace)
    except ApiException as err:
        if err.status == 404:
            return None
        raise
    return None if found.metadata.deletion_timestamp else str(found.metadata.uid)


def events(cluster: ClusterAccess, namespace: str, name: str, reason: str) -> list[client.CoreV1Event]:
    found = cluster.core.list_namespaced_event(namespace, field_selector=f"involvedObject.name={name}").items
    return [e for e in found if e.reason == reason]


@pytest.mark.parametrize(("kind", "name"), [("ConfigMap", "p-models"), ("Service", "p"), ("Deployment", "p")])
def test_an_owned_object_deleted_by_hand_is_back_within_5_seconds(
    cluster: ClusterAccess, namespace: str, crs: CustomResources, kind: str, name: str
) -> None:
    crs.create(model("m"))
    crs.create(pool("p", ["m"]))
    wait_for(lambda: crs.is_ready("InferencePool", "p"), T, "p Ready")
    read, delete = owned_object(cluster, kind)
    before = uid_of(read, name, namespace)
    delete(name, namespace)
    wait_for(lambda: uid_of(read, name, namespace) not in (None, before), 5, f"{kind} {name} re-created")


def test_an_apply_refused_by_a_resource_quota_backs_off_to_minutes_and_recovers_within_seconds_of_a_spec_change(
    cluster: ClusterAccess, namespace: str, crs: CustomResources, operator: OperatorProcess
) -> None:
    quota = client.V1ResourceQuota(
        metadata=client.V1ObjectMeta(name="no-claims"),
        spec=client.V1ResourceQuotaSpec(hard={"persistentvolumeclaims": "0"}),
    )
    cluster.core.create_namespaced_resource_quota(namespace, quota)
    # The usage the quota controller would write, written now: after earlier tiers delete and re-create CRDs,
    # that controller re-syncs its monitors and has left a new quota uncounted for over 90 s on this machine,
    # and admission enforces only a counted quota.
    usage = {"status": {"hard": {"persistentvolumeclaims": "0"}, "used": {"persistentvolumeclaims": "0"}}}
    cluster.core.patch_namespaced_resource_quota_status("no-claims", namespace, usage)
    crs.create(model("m"))
    crs.create(pool("p", ["m"], storage={"size": "1Gi"}))

    condition = crs.wait_for_reason("InferencePool", "p", "ApplyRefused", 30)
    assert condition["status"] == "False"
    assert 'persistentvolumeclaims "p-models" is forbidden: exceeded quota: no-claims' in condition["message"]
    assert "up to 5 minutes" in condition["message"]
    wait_for(lambda: events(cluster, namespace, "p", "ApplyRefused"), 10, "a Warning Event on the pool")

    def delays() -> list[tuple[float, str]]:
        lines = operator.log_path.read_text(errors="replace").splitlines()
        return [(float(m[3]), m[4]) for m in map(RETRY.match, lines) if m and m[2] == f"{namespace}/p"]

    # A refusal only the user can lift is retried slowly: 2 s, 4 s, 8 s, ... up to 5 minutes (the unit tests
    # follow the schedule to its cap), whatever the Deployment's status changes meanwhile.
    wait_for(lambda: len(delays()) >= 4, 45, "four retries of the pool's pass", describe=delays)
    first = delays()[:4]
    assert [kind for _, kind in first] == ["slow"] * 4, first
    assert all(later >= 1.5 * earlier for (earlier, _), (later, _) in itertools.pairwise(first)), first
    assert first[-1][0] > 12, "the next try is further away than the recovery below may take"
    assert operator.metrics()['localai_operator_retries_total{class="slow",kind="InferencePool"}'] >= 4

    crs.patch("InferencePool", "p", {"spec": {"storage": None}})
    wait_for(
        lambda: crs.is_ready("InferencePool", "p"),
        10,
        "p Ready within 10 s of its spec dropping the claim",
        describe=lambda: crs.condition("InferencePool", "p"),
    )


def test_pods_refused_by_pod_security_admission_make_the_pool_not_ready_with_the_servers_message(
    cluster: ClusterAccess, namespace: str, crs: CustomResources
) -> None:
    # LocalAI's images run as root: the restricted level refuses their pods.
    labels = {"pod-security.kubernetes.io/enforce": "restricted"}
    cluster.core.patch_namespace(namespace, {"metadata": {"labels": labels}})
    crs.create(model("m"))
    crs.create(pool("p", ["m"]))

    condition = crs.wait_for_reason("InferencePool", "p", "PodsForbidden", T)
    assert condition["status"] == "False"
    assert 'violates PodSecurity "restricted:latest"' in condition["message"]
    wait_for(lambda: events(cluster, namespace, "p", "PodsForbidden"), 10, "a Warning Event on the pool")


def test_without_leader_election_no_lease_is_created(
    cluster: ClusterAccess, namespace: str, crs: CustomResources, tmp_path: Path
) -> None:
    with mock.patch.dict(os.environ, {"POD_NAMESPACE": namespace}):
        args = ["-n", namespace, "--no-leader-election"]
        lone = OperatorProcess(cluster.kubeconfig, tmp_path / "lone.log", args=args).start()
    try:
        crs.create(model("m"))
        wait_for(lambda: lone.reconciles() > 0, T, "the operator to reconcile")
        assert lone.metrics()["localai_operator_leader"] == 1.0
        leases = client.CoordinationV1Api(cluster.api).list_namespaced_lease(namespace).items
        assert leases == []
        assert not [
            k for k in lone.metrics() if k.startswith("localai_operator_api_requests") and "Lease" in k
        ]
    finally:
        lone.stop()


@pytest.mark.harness
def test_the_operator_rides_out_an_api_server_restart_without_restarting_itself(tmp_path: Path) -> None:
    with Cluster.start() as harness:
        access = ClusterAccess.connect(harness.kubeconfig, harness)
        install_crds(access.api)
        operator = OperatorProcess(harness.kubeconfig, tmp_path / "operator.log").start()
        assert operator.process is not None
        pid = operator.process.pid
        crs = CustomResources(access.api, "default")
        try:
            crs.create(model("m"))
            crs.create(pool("before", ["m"]))
            wait_for(lambda: crs.is_ready("InferencePool", "before"), T, "before Ready")
            harness.restart_component("kube-apiserver", down_seconds=20)
            back = time.monotonic()

            crs.create(pool("after", ["m"]))
            read_deployment = access.apps.read_namespaced_deployment
            wait_for(
                lambda: uid_of(read_deployment, "after", "default"),
                30,
                "the new pool's Deployment: the operator's watches and client reconnected",
                describe=operator.log_tail,
            )
            config_map = access.core.read_namespaced_config_map
            old = uid_of(config_map, "before-models", "default")
            access.core.delete_namespaced_config_map("before-models", "default")
            wait_for(
                lambda: uid_of(config_map, "before-models", "default") not in (None, old),
                10,
                "the deleted ConfigMap back: the owned watches resumed",
            )
            # After a restart the harness's own controller-manager and kwok take up to a minute to run pods again.
            wait_for(
                lambda: crs.is_ready("InferencePool", "after"),
                120,
                "after Ready",
                describe=lambda: crs.condition("InferencePool", "after"),
            )
            print(f"converged {time.monotonic() - back:.0f} s after the API server came back")
            assert operator.alive() and operator.process.pid == pid
        finally:
            operator.stop()
            access.api.close()

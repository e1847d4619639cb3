"""The harness's real node: pods from imported images really run there, with logs, exec, port-forward, Services
through kube-proxy and cluster DNS; nothing is pulled, nothing leaves the machine, nothing is left after a stop."""

from __future__ import annotations

import json
import os
import secrets
import socket
import subprocess
import sys
import urllib.parse
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
from kubernetes import client

from localai_operator.devcluster import (
    GPU_TOLERATION,
    REAL_NODE_LABEL,
    REAL_NODE_NAME,
    REAL_NODE_TAINT,
    REAL_NODE_TOLERATION,
    Cluster,
    RealNode,
    RealNodeUnavailable,
    real_node_unavailable_reason,
)
from localai_operator.devcluster.binaries import CONTAINERD_VERSION, K8S_VERSION
from localai_operator.devcluster.nodes import KWOK_NODE_ANNOTATION
from localai_operator.devcluster.oci import busybox_image
from localai_operator.devcluster.process import free_ports
from tests.conftest import TEST_NAMESPACE_LABEL
from tests.helpers import ClusterAccess, kubectl, kubectl_binary, read_state_dir, wait_for

pytestmark = [pytest.mark.cluster, pytest.mark.harness]

ROOT = Path(__file__).resolve().parents[2]
BUSYBOX = "localhost/localai-operator/busybox:test"
GREETING = "hello from the real node"
TIMEOUT = 60.0
# Serves GREETING on :8080 and says so on stdout (for `kubectl logs`).
SERVER_COMMAND = [
    "sh",
    "-c",
    f"mkdir -p /www && echo '{GREETING}' > /www/index.html && echo serving on 8080 && exec httpd -f -p 8080 -h /www",
]


@pytest.fixture(scope="session")
def real_node(cluster: ClusterAccess) -> RealNode:
    """The session harness's real node; the test fails (never skips) with the reason when there is none."""
    if cluster.harness is None or cluster.harness.real_node is None:
        pytest.fail(f"the harness has no real node: {cluster.real_node_missing}")
    return cluster.harness.real_node


@pytest.fixture(scope="session")
def busybox(real_node: RealNode, tmp_path_factory: pytest.TempPathFactory) -> str:
    """Debian's static busybox as an image, imported into the real node."""
    archive = busybox_image(tmp_path_factory.mktemp("images") / "busybox.tar", BUSYBOX)
    [name] = real_node.import_image(archive)
    return name


def real_node_pod(
    name: str,
    image: str,
    command: list[str],
    labels: dict[str, str] | None = None,
    *,
    serves_http: bool = False,
) -> client.V1Pod:
    """A pod for the real node; `serves_http` gives it a readiness probe on :8080, run by the kubelet."""
    probe = client.V1Probe(http_get=client.V1HTTPGetAction(path="/", port="http"), period_seconds=1)
    return client.V1Pod(
        metadata=client.V1ObjectMeta(name=name, labels=labels),
        spec=client.V1PodSpec(
            node_selector=dict(REAL_NODE_LABEL),
            tolerations=[client.V1Toleration(**REAL_NODE_TOLERATION)],
            termination_grace_period_seconds=0,
            containers=[
                client.V1Container(
                    name="main",
                    image=image,
                    command=command,
                    ports=[client.V1ContainerPort(container_port=8080, name="http")],
                    readiness_probe=probe if serves_http else None,
                )
            ],
        ),
    )


def waiting_reason(pod: client.V1Pod) -> str | None:
    statuses = pod.status.container_statuses or []
    return statuses[0].state.waiting.reason if statuses and statuses[0].state.waiting else None


def is_ready(pod: client.V1Pod) -> bool:
    return any(c.type == "Ready" and c.status == "True" for c in pod.status.conditions or [])


def wait_ready(cluster: ClusterAccess, namespace: str, name: str) -> client.V1Pod:
    pod: client.V1Pod = wait_for(
        lambda: (p := cluster.core.read_namespaced_pod(name, namespace)) and is_ready(p) and p,
        TIMEOUT,
        f"pod {namespace}/{name} to be Ready on the real node",
        describe=lambda: cluster.core.read_namespaced_pod(name, namespace).status,
    )
    return pod


@pytest.fixture(scope="module")
def workload(cluster: ClusterAccess, busybox: str) -> Iterator[str]:
    """A namespace with pod `server` (HTTP on 8080, Ready, behind Service `server`) and pod `client` running."""
    namespace = f"realnode-{secrets.token_hex(3)}"
    metadata = client.V1ObjectMeta(name=namespace, labels={TEST_NAMESPACE_LABEL: "true"})
    cluster.core.create_namespace(client.V1Namespace(metadata=metadata))
    cluster.core.create_namespaced_pod(
        namespace, real_node_pod("server", busybox, SERVER_COMMAND, {"app": "server"}, serves_http=True)
    )
    cluster.core.create_namespaced_pod(
        namespace, real_node_pod("client", busybox, ["sh", "-c", "exec sleep 2147483647"])
    )
    service = client.V1Service(
        metadata=client.V1ObjectMeta(name="server"),
        spec=client.V1ServiceSpec(
            selector={"app": "server"}, ports=[client.V1ServicePort(port=80, target_port="http")]
        ),
    )
    cluster.core.create_namespaced_service(namespace, service)
    wait_ready(cluster, namespace, "server")
    wait_for(
        lambda: cluster.core.read_namespaced_pod("client", namespace).status.phase == "Running",
        TIMEOUT,
        "pod client to be Running",
    )
    yield namespace
    cluster.core.delete_namespace(namespace)


def exec_in(
    cluster: ClusterAccess, namespace: str, pod: str, script: str
) -> subprocess.CompletedProcess[str]:
    return kubectl(cluster, "exec", "-n", namespace, pod, "--", "sh", "-c", script)


def test_the_real_node_registers_ready_with_its_label_and_taint(
    cluster: ClusterAccess, real_node: RealNode
) -> None:
    node = cluster.core.read_node(REAL_NODE_NAME)

    conditions = {c.type: c.status for c in node.status.conditions}
    assert conditions["Ready"] == "True"
    assert node.metadata.labels.items() >= REAL_NODE_LABEL.items()
    assert [t.to_dict() | {"time_added": None} for t in node.spec.taints] == [
        {**REAL_NODE_TAINT, "time_added": None}
    ]
    assert node.status.addresses[0].address == real_node.network.node_ip


def test_the_real_node_is_run_by_its_kubelet_not_by_kwok(cluster: ClusterAccess, real_node: RealNode) -> None:
    node = cluster.core.read_node(REAL_NODE_NAME)

    assert KWOK_NODE_ANNOTATION not in (node.metadata.annotations or {})
    assert node.status.node_info.kubelet_version == K8S_VERSION
    assert (
        node.status.node_info.container_runtime_version
        == f"containerd://{CONTAINERD_VERSION.removeprefix('v')}"
    )


def test_a_pod_without_the_toleration_is_never_scheduled_onto_the_real_node(
    cluster: ClusterAccess, namespace: str, busybox: str
) -> None:
    pod = real_node_pod("intruder", busybox, ["sleep", "3600"])
    # It tolerates the GPU nodes' taint, so the real node's is the only one it does not.
    pod.spec.tolerations = [client.V1Toleration(**GPU_TOLERATION)]
    pod.spec.node_selector = {"kubernetes.io/hostname": REAL_NODE_NAME}
    cluster.core.create_namespaced_pod(namespace, pod)

    def failed_scheduling() -> client.CoreV1Event | None:
        events = cluster.core.list_namespaced_event(
            namespace, field_selector="involvedObject.name=intruder"
        ).items
        return next((e for e in events if e.reason == "FailedScheduling"), None)

    event = wait_for(failed_scheduling, TIMEOUT, "a FailedScheduling event for pod intruder")
    assert "1 node(s) had untolerated taint(s)" in event.message
    assert cluster.core.read_namespaced_pod("intruder", namespace).spec.node_name is None


def test_a_pod_from_an_imported_image_runs_and_kubectl_logs_shows_its_output(
    cluster: ClusterAccess, workload: str
) -> None:
    logs = kubectl(cluster, "logs", "-n", workload, "server")

    assert logs.returncode == 0, logs.stderr
    assert "serving on 8080" in logs.stdout


def test_kubectl_exec_runs_a_command_in_a_real_node_pod(cluster: ClusterAccess, workload: str) -> None:
    result = exec_in(cluster, workload, "server", "echo $((6 * 7)) from $(hostname)")

    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "42 from server"


def test_kubectl_port_forward_reaches_a_real_node_pod_from_loopback(
    cluster: ClusterAccess, workload: str
) -> None:
    [port] = free_ports(1)
    forward = subprocess.Popen(
        [
            kubectl_binary(cluster),
            f"--kubeconfig={cluster.kubeconfig}",
            "port-forward",
            "-n",
            workload,
            "pod/server",
            f"{port}:8080",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        assert forward.stdout is not None
        first_line = forward.stdout.readline()
        assert first_line.startswith("Forwarding from 127.0.0.1"), first_line
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=10) as response:
            body = response.read().decode()
    finally:
        forward.terminate()
        forward.wait(timeout=10)

    assert body.strip() == GREETING


def test_a_pod_with_an_image_that_was_not_imported_fails_to_pull_at_once_without_a_registry(
    cluster: ClusterAccess, namespace: str
) -> None:
    pod = real_node_pod("not-imported", "busybox:1.36", ["sleep", "3600"])
    cluster.core.create_namespaced_pod(namespace, pod)

    def pull_failure() -> client.CoreV1Event | None:
        events = cluster.core.list_namespaced_event(
            namespace, field_selector="involvedObject.name=not-imported"
        ).items
        return next((e for e in events if e.reason == "Failed" and "pull" in e.message), None)

    event = wait_for(pull_failure, TIMEOUT, "a pull failure event for pod not-imported")
    # containerd asked no registry: the closed loopback port refused it, inside a netns with no route out.
    assert "dial tcp 127.0.0.1:1: connect: connection refused" in event.message
    wait_for(
        lambda: (
            waiting_reason(cluster.core.read_namespaced_pod("not-imported", namespace))
            in ("ErrImagePull", "ImagePullBackOff")
        ),
        TIMEOUT,
        "pod not-imported to wait on its image",
    )


def test_the_real_node_has_no_route_out_of_the_machine(real_node: RealNode) -> None:
    # `ip route get` only asks the kernel; no packet is sent. 203.0.113.0/24 is a documentation range.
    result = real_node.run_in_node(["ip", "route", "get", "203.0.113.1"])

    assert result.returncode != 0
    assert "Network is unreachable" in result.stderr


def test_a_pod_reaches_a_service_through_kube_proxy(cluster: ClusterAccess, workload: str) -> None:
    result = exec_in(cluster, workload, "client", f"timeout 10 wget -q -O - http://server.{workload}.svc/")

    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == GREETING


def test_cluster_dns_resolves_a_service_name_to_its_cluster_ip(cluster: ClusterAccess, workload: str) -> None:
    cluster_ip = cluster.core.read_namespaced_service("server", workload).spec.cluster_ip

    result = exec_in(cluster, workload, "client", f"nslookup server.{workload}.svc.cluster.local")

    assert result.returncode == 0, result.stdout + result.stderr
    assert f"Address: {cluster_ip}" in result.stdout


def test_cluster_dns_does_not_resolve_a_name_outside_the_cluster(
    cluster: ClusterAccess, workload: str
) -> None:
    result = exec_in(cluster, workload, "client", "nslookup example.com")

    assert result.returncode != 0
    assert "NXDOMAIN" in result.stdout + result.stderr


def test_a_pod_reaches_the_apiserver_through_the_kubernetes_service(
    cluster: ClusterAccess, workload: str
) -> None:
    result = exec_in(
        cluster,
        workload,
        "client",
        "timeout 10 wget -q --no-check-certificate -O - https://kubernetes.default.svc/version",
    )

    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["gitVersion"] == K8S_VERSION


def test_a_pod_reaches_no_host_listener_but_the_apiserver(
    cluster: ClusterAccess, real_node: RealNode, workload: str
) -> None:
    host = real_node.network.host_ip
    assert cluster.harness is not None
    apiserver_port = urllib.parse.urlsplit(cluster.harness.server).port
    with socket.socket() as listener:
        listener.bind((host, 0))
        listener.listen()
        port = listener.getsockname()[1]
        connect = "timeout 5 nc {} {} </dev/null; echo $?"
        result = exec_in(
            cluster,
            workload,
            "client",
            f"{connect.format(host, apiserver_port)}; {connect.format(host, port)}",
        )

    # The apiserver connects (0); the other listener on the same address never answers: timeout's 143.
    assert result.stdout.split() == ["0", "143"], result.stderr


def test_the_host_reaches_a_service_cluster_ip(cluster: ClusterAccess, workload: str) -> None:
    cluster_ip = cluster.core.read_namespaced_service("server", workload).spec.cluster_ip
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))

    with opener.open(f"http://{cluster_ip}/", timeout=10) as response:
        assert response.read().decode().strip() == GREETING


def test_a_machine_that_cannot_run_the_real_node_is_told_why_before_anything_starts(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(os, "geteuid", lambda: 1000)

    with pytest.raises(RealNodeUnavailable) as refused:
        Cluster.start(nodes=[], real_node=True)

    assert str(refused.value) == real_node_unavailable_reason()
    assert str(refused.value).startswith("the real node needs root")


def run_busybox_pod(harness: Cluster, archive: Path) -> None:
    """Imports busybox into the harness's real node and waits until a pod of it runs there."""
    assert harness.real_node is not None
    harness.real_node.import_image(archive)
    access = ClusterAccess.connect(harness.kubeconfig, harness)
    try:
        access.core.create_namespaced_pod("default", real_node_pod("sleeper", BUSYBOX, ["sleep", "3600"]))
        wait_for(
            lambda: access.core.read_namespaced_pod("sleeper", "default").status.phase == "Running",
            TIMEOUT,
            "pod sleeper to be Running",
        )
    finally:
        access.api.close()


def test_a_stopped_real_node_leaves_no_container_mount_netns_rule_or_process(tmp_path: Path) -> None:
    archive = busybox_image(tmp_path / "busybox.tar", BUSYBOX)
    harness = Cluster.start(nodes=[], real_node=True)
    try:
        run_busybox_pod(harness, archive)
        node = harness.real_node
        assert node is not None and node.leftovers() != []
    finally:
        harness.stop()

    assert harness.leftovers() == []


DETACHED_START = """\
from localai_operator.devcluster import Cluster
print("STATE_DIR=" + str(Cluster.start(nodes=[], real_node=True, detach=True).state_dir), flush=True)
"""


def test_a_detached_real_node_outlives_its_starter_and_another_process_stops_it(tmp_path: Path) -> None:
    archive = busybox_image(tmp_path / "busybox.tar", BUSYBOX)
    starter = subprocess.Popen(
        [sys.executable, "-c", DETACHED_START],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    harness = Cluster.attach(read_state_dir(starter))
    try:
        assert starter.wait(timeout=60) == 0
        run_busybox_pod(harness, archive)  # `dev up` starts it detached; `dev down` stops it from elsewhere
    finally:
        harness.stop()

    assert harness.leftovers() == []


ATTACHED_START = """\
import time
from localai_operator.devcluster import Cluster
print("STATE_DIR=" + str(Cluster.start(nodes=[], real_node=True).state_dir), flush=True)
time.sleep(600)
"""


def test_a_real_node_is_torn_down_when_its_starter_is_sigkilled(tmp_path: Path) -> None:
    archive = busybox_image(tmp_path / "busybox.tar", BUSYBOX)
    starter = subprocess.Popen(
        [sys.executable, "-c", ATTACHED_START],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    state_dir = read_state_dir(starter)
    try:
        harness = Cluster.attach(state_dir)
        run_busybox_pod(harness, archive)
        node = harness.real_node
        assert node is not None

        starter.kill()  # SIGKILL: unshare dies with it, and the kernel sends the node's init SIGTERM

        wait_for(lambda: not node.leftovers(), 30, "the real node to be torn down", describe=node.leftovers)
    finally:
        starter.kill()
        starter.wait()
        Cluster.attach(
            state_dir
        ).stop()  # removes the control plane's state directory, as the next start would

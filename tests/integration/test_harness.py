"""The control plane behaves like a real cluster where the operator relies on it (GPU scheduling, garbage
collection, RBAC), and the local harness leaves nothing behind however it is stopped."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from kubernetes import client
from kubernetes.client.exceptions import ApiException

from localai_operator.constants import GPU_PRESENT_LABEL, GPU_RESOURCE
from localai_operator.devcluster import GPU_TOLERATION, Cluster, cpu_node
from localai_operator.devcluster.process import ProcessRecord, port_is_free
from tests.helpers import ClusterAccess, read_state_dir, wait_for

pytestmark = pytest.mark.cluster

ROOT = Path(__file__).resolve().parents[2]
# Any small image: kwok never pulls it; on kind it really runs.
IMAGE = "busybox:1.36"
TIMEOUT = 120.0


def gpu_pod_spec(gpus: int) -> client.V1PodSpec:
    return client.V1PodSpec(
        containers=[
            client.V1Container(
                name="main",
                image=IMAGE,
                command=["sleep", "3600"],
                resources=client.V1ResourceRequirements(limits={GPU_RESOURCE: str(gpus)}),
            )
        ],
        tolerations=[client.V1Toleration(**GPU_TOLERATION)],
        termination_grace_period_seconds=0,
    )


def is_ready(pod: client.V1Pod) -> bool:
    return any(c.type == "Ready" and c.status == "True" for c in pod.status.conditions or [])


def test_a_pod_limited_to_one_gpu_is_scheduled_onto_a_gpu_node_and_becomes_ready(
    cluster: ClusterAccess, namespace: str
) -> None:
    labels = {"app": "gpu-user"}
    deployment = client.V1Deployment(
        metadata=client.V1ObjectMeta(name="gpu-user"),
        spec=client.V1DeploymentSpec(
            replicas=1,
            selector=client.V1LabelSelector(match_labels=labels),
            template=client.V1PodTemplateSpec(
                metadata=client.V1ObjectMeta(labels=labels), spec=gpu_pod_spec(1)
            ),
        ),
    )
    cluster.apps.create_namespaced_deployment(namespace, deployment)

    def ready_pod() -> client.V1Pod | None:
        pods = cluster.core.list_namespaced_pod(namespace, label_selector="app=gpu-user").items
        return next((pod for pod in pods if is_ready(pod)), None)

    pod = wait_for(
        ready_pod,
        TIMEOUT,
        "the Deployment's pod to be Ready",
        describe=lambda: [p.status for p in cluster.core.list_namespaced_pod(namespace).items],
    )
    node = cluster.core.read_node(pod.spec.node_name)
    assert node.metadata.labels.get(GPU_PRESENT_LABEL) == "true"
    assert int(node.status.allocatable[GPU_RESOURCE]) >= 1


def test_a_pod_asking_for_more_gpus_than_any_node_has_stays_pending_with_a_failed_scheduling_event(
    cluster: ClusterAccess, namespace: str
) -> None:
    pod = client.V1Pod(metadata=client.V1ObjectMeta(name="too-greedy"), spec=gpu_pod_spec(16))
    cluster.core.create_namespaced_pod(namespace, pod)

    def failed_scheduling() -> client.CoreV1Event | None:
        events = cluster.core.list_namespaced_event(
            namespace, field_selector="involvedObject.name=too-greedy"
        ).items
        return next((e for e in events if e.reason == "FailedScheduling"), None)

    event = wait_for(failed_scheduling, TIMEOUT, "a FailedScheduling event for pod too-greedy")
    assert GPU_RESOURCE in event.message
    pod = cluster.core.read_namespaced_pod("too-greedy", namespace)
    assert pod.status.phase == "Pending"
    assert pod.spec.node_name is None


def test_deleting_an_owner_deletes_the_configmap_it_owns(cluster: ClusterAccess, namespace: str) -> None:
    owner = cluster.core.create_namespaced_config_map(
        namespace, client.V1ConfigMap(metadata=client.V1ObjectMeta(name="owner"))
    )
    reference = client.V1OwnerReference(
        api_version="v1", kind="ConfigMap", name="owner", uid=owner.metadata.uid
    )
    cluster.core.create_namespaced_config_map(
        namespace,
        client.V1ConfigMap(metadata=client.V1ObjectMeta(name="owned", owner_references=[reference])),
    )

    cluster.core.delete_namespaced_config_map("owner", namespace)

    def owned_is_gone() -> bool:
        names = {cm.metadata.name for cm in cluster.core.list_namespaced_config_map(namespace).items}
        return "owned" not in names

    wait_for(owned_is_gone, TIMEOUT, "the garbage collector to delete ConfigMap owned")


def test_a_service_account_without_a_role_binding_is_forbidden_to_list_pods(
    cluster: ClusterAccess, namespace: str
) -> None:
    cluster.core.create_namespaced_service_account(
        namespace, client.V1ServiceAccount(metadata=client.V1ObjectMeta(name="nobody"))
    )
    request = client.AuthenticationV1TokenRequest(
        spec=client.V1TokenRequestSpec(audiences=[], expiration_seconds=600)
    )
    token = cluster.core.create_namespaced_service_account_token("nobody", namespace, request).status.token

    with cluster.client_for_token(token) as api, pytest.raises(ApiException) as refused:
        client.CoreV1Api(api).list_namespaced_pod(namespace)

    assert refused.value.status == 403
    # Authenticated as the ServiceAccount (not a 401) and refused by RBAC.
    assert f"system:serviceaccount:{namespace}:nobody" in refused.value.body


def assert_nothing_left(processes: list[ProcessRecord], ports: dict[str, int], state_dir: Path) -> None:
    for process in processes:
        assert not is_same_process_running(process), f"{process.name} (pid {process.pid}) is still running"
    assert [name for name, port in ports.items() if not port_is_free(port)] == []
    assert not state_dir.exists()


def is_same_process_running(process: ProcessRecord) -> bool:
    try:
        stat = Path(f"/proc/{process.pid}/stat").read_text()
    except FileNotFoundError:
        return False
    fields = stat[stat.rindex(")") + 2 :].split()
    return fields[0] != "Z" and int(fields[19]) == process.start_ticks


@pytest.mark.harness
def test_a_stopped_harness_leaves_no_process_port_or_directory_behind() -> None:
    harness = Cluster.start(nodes=[cpu_node("solo-node")])
    try:
        processes, ports, state_dir = list(harness.processes), dict(harness.ports), harness.state_dir
        assert harness.is_running()
        assert all(not port_is_free(port) for port in ports.values())
    finally:
        harness.stop()

    assert_nothing_left(processes, ports, state_dir)


# A test session of its own that uses the `cluster` fixture, prints the harness's state directory and waits.
SLEEPING_TEST = """\
import time

def test_sleeps(cluster):
    print("STATE_DIR=" + str(cluster.harness.state_dir), flush=True)
    time.sleep(600)
"""


STOP_SECONDS = 60


def _sigint_as_in_a_terminal() -> None:
    signal.signal(signal.SIGINT, signal.SIG_DFL)


@pytest.mark.harness
@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM], ids=["ctrl-c", "sigterm"])
def test_an_interrupted_test_session_stops_its_harness(sig: signal.Signals, tmp_path: Path) -> None:
    (tmp_path / "test_sleeping.py").write_text(SLEEPING_TEST)
    env = {k: v for k, v in os.environ.items() if k != "LOCALAI_OPERATOR_KUBECONFIG"}
    session = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "pytest",
            "-p",
            "tests.conftest",
            "-s",
            "-q",
            "-p",
            "no:cacheprovider",
            f"--rootdir={ROOT}",
            "-c",
            str(ROOT / "pyproject.toml"),
            str(tmp_path / "test_sleeping.py"),
        ],
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        # Ctrl-C as in a terminal: a session started by a shell in the background (`make test &`, nohup, a CI
        # runner's script) inherits SIGINT ignored, and Python then never raises KeyboardInterrupt.
        preexec_fn=_sigint_as_in_a_terminal,
    )
    try:
        state_dir = read_state_dir(session)
        harness = Cluster.attach(state_dir)
        assert harness.is_running()

        session.send_signal(sig)
        output, _ = session.communicate(timeout=STOP_SECONDS)
    finally:
        session.kill()
        session.wait()

    assert session.returncode == pytest.ExitCode.INTERRUPTED, output
    assert_nothing_left(harness.processes, harness.ports, state_dir)
    assert harness.real_node is not None, "the session fixture starts a real node"
    assert harness.leftovers() == []


def start_in_child(script: str) -> tuple[subprocess.Popen[str], Path]:
    """Runs `script` in a new Python process; returns it and the state directory it printed (STATE_DIR=...)."""
    child = subprocess.Popen(
        [sys.executable, "-c", script], cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )
    return child, read_state_dir(child)


DETACHED_START = """\
from localai_operator.devcluster import Cluster, cpu_node
print("STATE_DIR=" + str(Cluster.start(nodes=[cpu_node("solo-node")], detach=True).state_dir), flush=True)
"""


@pytest.mark.harness
def test_a_detached_harness_outlives_its_starter_and_another_process_can_stop_it() -> None:
    starter, state_dir = start_in_child(DETACHED_START)
    assert starter.wait(timeout=30) == 0
    harness = Cluster.attach(state_dir)
    try:
        assert harness.is_running()
        with ClusterAccess.connect(harness.kubeconfig).api as api:
            assert client.CoreV1Api(api).read_node("solo-node").metadata.name == "solo-node"
    finally:
        harness.stop()

    assert_nothing_left(harness.processes, harness.ports, harness.state_dir)


ATTACHED_START = """\
import time
from localai_operator.devcluster import Cluster, cpu_node
print("STATE_DIR=" + str(Cluster.start(nodes=[cpu_node("solo-node")]).state_dir), flush=True)
time.sleep(600)
"""


@pytest.mark.harness
def test_a_harness_dies_with_its_starter_even_when_the_starter_is_sigkilled() -> None:
    starter, state_dir = start_in_child(ATTACHED_START)
    try:
        harness = Cluster.attach(state_dir)
        assert harness.is_running()

        starter.kill()  # SIGKILL: no handler, no atexit; only the kernel's parent-death signal is left
        wait_for(
            lambda: not any(is_same_process_running(p) for p in harness.processes),
            10,
            "the components to die with their starter",
        )
        # A killed process's listening sockets are released by the kernel just after it is reaped.
        wait_for(
            lambda: not [name for name, port in harness.ports.items() if not port_is_free(port)],
            10,
            "the dead components' ports to be released",
            describe=lambda: [name for name, port in harness.ports.items() if not port_is_free(port)],
        )
    finally:
        starter.kill()
        starter.wait()
        # Nobody was left to remove the state directory; the next start removes such stale ones.
        shutil.rmtree(state_dir, ignore_errors=True)

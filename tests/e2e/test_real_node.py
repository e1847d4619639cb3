"""The operator and a real model on the real node, as a user installs them: `helm install` with the built image, the
real-node samples (a CPU pool serving Gemma 3 270M, its mirror, a cloud stand-in, a route and a sensitive route),
requests from a pod through real DNS and kube-proxy, a rollout, a deleted pod and `helm uninstall`. The same tests
run on kind (--kubeconfig), where the workflow loads the images and labels a worker as the real node."""

from __future__ import annotations

import json
import re
import subprocess
import time
from collections.abc import Iterator
from typing import Any

import pytest
import yaml
from kubernetes import client
from openai import OpenAI

from localai_operator.devcluster import REAL_NODE_LABEL, REAL_NODE_TOLERATION
from localai_operator.devcluster.images import MODEL_FILE, MODEL_SIZE
from localai_operator.devcluster.stack import CLOUD_STANDIN, MODEL, POOL, ROUTE, SENSITIVE_ROUTE
from tests.e2e.realstack import RealStack, Traffic, pod_ready
from tests.helpers import kubectl_binary, wait_for

pytestmark = pytest.mark.cluster

OPERATOR_SELECTOR = "app.kubernetes.io/component=operator"
# A route to the pool's Service address instead of to its pods: one upstream, so one breaker for the whole pool.
SERVICE_ROUTE = "gemma-via-service"
BREAKER = {"failureThreshold": 2, "openSeconds": 3}
POD_TIMEOUT = 300.0
# A four-token answer from the model takes well under a second: one that took longer waited for a pod.
HELD_SECONDS = 2.0


def operator_pods(real: RealStack) -> list[client.V1Pod]:
    pods = real.core.list_namespaced_pod(real.operator_namespace, label_selector=OPERATOR_SELECTOR).items
    return [p for p in pods if not p.metadata.deletion_timestamp]


def answers(lines: list[dict[str, Any]]) -> list[tuple[Any, Any]]:
    return [(line.get("status", line.get("error")), line.get("served_by")) for line in lines]


# --- the install ----------------------------------------------------------------------------------------------------


def test_helm_install_runs_the_operator_in_a_pod_on_the_real_node_from_the_built_image(
    real: RealStack,
) -> None:
    [pod] = operator_pods(real)

    assert pod.status.phase == "Running"
    assert all(c.ready for c in pod.status.container_statuses)
    node = real.core.read_node(pod.spec.node_name)
    assert node.metadata.labels.items() >= REAL_NODE_LABEL.items()
    [container] = pod.spec.containers
    assert container.image == real.images.operator
    assert container.image_pull_policy == "IfNotPresent"


def test_the_operator_pod_leads_through_its_lease(real: RealStack) -> None:
    [pod] = operator_pods(real)

    def holder() -> str | None:
        leases = json.loads(real.kubectl("get", "leases", "-n", real.operator_namespace, "-o", "json"))[
            "items"
        ]
        holders = [str((lease.get("spec") or {}).get("holderIdentity") or "") for lease in leases]
        return next((h for h in holders if h.startswith(pod.metadata.name)), None)

    wait_for(holder, 60, f"a Lease in {real.operator_namespace} held by pod {pod.metadata.name}")


def test_the_pool_is_ready_only_once_its_model_answers(real: RealStack) -> None:
    samples = real.startup

    assert any(not s.pool_ready for s in samples), "the pool was never seen starting"
    assert samples[-1].pool_ready and samples[-1].model_answers
    premature = [s for s in samples if s.pool_ready and not s.model_answers]
    assert premature == [], f"the pool was Ready while its model did not answer: {premature}"


def test_fetch_models_downloaded_the_model_from_the_mirror_and_verified_it(real: RealStack) -> None:
    pod = real.ready_pool_pod()

    log = real.kubectl("logs", "-n", real.namespace, pod.metadata.name, "-c", "fetch-models")
    size = real.kubectl(
        "exec",
        "-n",
        real.namespace,
        pod.metadata.name,
        "-c",
        "localai",
        "--",
        "stat",
        "-c",
        "%s",
        f"/models/{MODEL_FILE}",
    )

    assert f"model {MODEL}: downloaded {MODEL_FILE}" in log
    assert int(size) == MODEL_SIZE
    [init] = pod.spec.init_containers
    assert init.image == real.images.operator


# --- traffic --------------------------------------------------------------------------------------------------------


def test_a_pod_in_the_cluster_gets_the_models_answer_through_the_route_service(real: RealStack) -> None:
    answer = real.chat(ROUTE)

    assert answer["status"] == 200, answer
    assert answer["served_by"] == "local"
    body = answer["json"]
    assert body["model"] == MODEL
    assert body["choices"][0]["message"]["content"].strip()
    assert body["usage"]["completion_tokens"] >= 1


def test_the_sensitive_route_answers_from_the_model_too(real: RealStack) -> None:
    wait_for(
        lambda: real.router_lists_a_pod(SENSITIVE_ROUTE),
        60,
        f"the router of {SENSITIVE_ROUTE} to list the pod",
    )

    answer = real.chat(SENSITIVE_ROUTE)

    assert (answer["status"], answer["served_by"]) == (200, "local"), answer
    assert answer["json"]["model"] == MODEL


def test_the_pool_pod_runs_localais_own_process_and_kubectl_logs_shows_it_serving(real: RealStack) -> None:
    pod = real.ready_pool_pod()

    command = real.kubectl(
        "exec", "-n", real.namespace, pod.metadata.name, "-c", "localai", "--", "cat", "/proc/1/cmdline"
    )
    log = re.sub(
        r"\x1b\[[0-9;]*m", "", real.kubectl("logs", "-n", real.namespace, pod.metadata.name, "-c", "localai")
    )

    assert command.split("\0")[0].endswith("local-ai"), command
    assert 'LocalAI version version="v4.9.0' in log
    assert f'BackendLoader starting modelID="{MODEL}"' in log
    assert 'LocalAI is started and running address=":8080"' in log


def test_localai_in_the_pool_pod_may_open_far_more_files_than_the_pidfds_it_holds_until_a_gc(
    real: RealStack,
) -> None:
    """LocalAI v4.9.0 keeps a pidfd per check of its backend until Go's GC closes it (~1,000 in two idle minutes)
    and stalls its accept loop at a limit of 1,024 (benchmarks/README.md). In a pod it inherits the runtime's limit
    (the harness gives systemd's default for containerd 2, 1,024 soft / 524,288 hard, or less hard where its caller
    has less) and, as a Go program, raises its soft limit to the hard one: what keeps a pod serving after minutes of
    probes. Go collects at least every two minutes, so 8,192 leaves that count eight times over."""
    pod = real.ready_pool_pod()

    limits = real.kubectl(
        "exec", "-n", real.namespace, pod.metadata.name, "-c", "localai", "--", "cat", "/proc/1/limits"
    )

    found = re.search(r"^Max open files\s+(\d+)\s+(\d+)", limits, re.MULTILINE)
    assert found, limits
    soft, hard = int(found.group(1)), int(found.group(2))
    assert soft == hard >= 8192, limits


@pytest.fixture
def forwarded_route(real: RealStack) -> Iterator[str]:
    """`kubectl port-forward svc/<route>` on a free loopback port; yields the OpenAI base URL."""
    with real.forward(ROUTE) as base:
        yield f"{base}/v1"


def test_kubectl_port_forward_to_the_route_serves_the_openai_sdk_from_loopback(forwarded_route: str) -> None:
    sdk = OpenAI(base_url=forwarded_route, api_key="unused", max_retries=0, timeout=120)

    raw = sdk.completions.with_raw_response.create(model=MODEL, prompt="Kubernetes is", max_tokens=16)

    assert raw.headers["x-served-by"] == "local"
    completion = raw.parse()
    assert completion.model == MODEL
    assert completion.choices[0].text.strip()


# --- rollouts and failures ------------------------------------------------------------------------------------------


def wait_for_a_new_ready_pod(real: RealStack, old: client.V1Pod, seen: list[int]) -> client.V1Pod:
    """Waits until a pool pod other than `old` is Ready and `old` is gone, recording how many pods were not
    terminating at each look."""

    def replaced() -> client.V1Pod | None:
        pods = real.pool_pods()
        seen.append(sum(1 for p in pods if not p.metadata.deletion_timestamp))
        if any(p.metadata.name == old.metadata.name for p in pods):
            return None
        return next((p for p in pods if pod_ready(p) and not p.metadata.deletion_timestamp), None)

    found: client.V1Pod = wait_for(
        replaced,
        POD_TIMEOUT,
        f"a new Ready pod of {POOL} replacing {old.metadata.name}",
        describe=lambda: [(p.metadata.name, p.status.phase) for p in real.pool_pods()],
    )
    return found


class Both:
    """Two client loops read as one (their lines by time)."""

    def __init__(self, *loops: Traffic) -> None:
        self.loops = loops

    @property
    def lines(self) -> list[dict[str, Any]]:
        return sorted((line for loop in self.loops for line in list(loop.lines)), key=lambda line: line["t"])

    def of(self, kind: str, since: float = 0.0) -> list[dict[str, Any]]:
        return [line for loop in self.loops for line in loop.of(kind, since)]


def settled(traffic: Traffic | Both, kinds: tuple[str, ...], since: float) -> bool:
    """Whether each route has answered from the model since `since`."""
    return all(any(line.get("served_by") == "local" for line in traffic.of(kind, since)) for kind in kinds)


def test_editing_the_model_rolls_the_pool_with_no_surge_while_the_routes_fall_back_or_hold(
    real: RealStack,
) -> None:
    old = real.ready_pool_pod()
    deployment = real.access.apps.read_namespaced_deployment(POOL, real.namespace)
    assert deployment.spec.strategy.rolling_update.max_surge == 0
    seen: list[int] = []
    # One client loop per route: a request one route holds (or that waits on the stopping pod) never delays the
    # other route's requests through the gap.
    with (
        real.traffic([f"chat={real.url(ROUTE, '/v1/chat/completions')}"]) as chat_loop,
        real.traffic([f"private={real.url(SENSITIVE_ROUTE, '/v1/chat/completions')}"]) as private_loop,
    ):
        traffic = Both(chat_loop, private_loop)
        wait_for(
            lambda: settled(traffic, ("chat", "private"), 0),
            120,
            "both routes to answer from the model",
            describe=lambda: traffic.lines[-4:],
        )
        edited = time.time()
        model = real.custom("llmmodels", MODEL)
        temperature = round(((model["spec"].get("parameters") or {}).get("temperature") or 0) + 0.1, 2)
        real.kubectl(
            "patch",
            "llmmodel",
            MODEL,
            "-n",
            real.namespace,
            "--type=merge",
            "-p",
            json.dumps({"spec": {"parameters": {"temperature": temperature}}}),
        )
        new = wait_for_a_new_ready_pod(real, old, seen)
        ready = time.time()
        wait_for(
            lambda: settled(traffic, ("chat", "private"), ready),
            120,
            "both routes to answer from the new pod",
            describe=lambda: traffic.lines[-4:],
        )
    chat, private = traffic.of("chat", edited), traffic.of("private", edited)

    assert new.metadata.name != old.metadata.name
    assert max(seen) <= 1, f"maxSurge 0 yet {max(seen)} pool pods ran at once"
    assert {status for status, _ in answers(chat)} == {200}, answers(chat)
    assert "fallback" in {by for _, by in answers(chat)}, "the route never fell back during the gap"
    # The request in flight on the old pod when it stops (LocalAI ends it: SIGTERM stops its backend) had sent the
    # client nothing: the router moves it to the new pod as it does a new one, so every answer is the model's.
    assert set(answers(private)) == {(200, "local")}, answers(private)
    # With no ready pod the sensitive route holds a request until the new one is Ready (pool_cold), not 503.
    held = [line for line in private if line.get("status") == 200 and line["seconds"] > HELD_SECONDS]
    assert held, [
        (line["kind"], line.get("status", line.get("error")), line.get("reason"), round(line["seconds"], 1))
        for line in sorted(chat + private, key=lambda line: line["t"])
    ]


@pytest.fixture
def service_route(real: RealStack) -> Iterator[str]:
    """A FallbackRoute whose primary is the pool's Service URL (one breaker), with the cloud stand-in as fallback."""
    route = {
        "apiVersion": "llm.localai-operator.io/v1alpha1",
        "kind": "FallbackRoute",
        "metadata": {"name": SERVICE_ROUTE, "namespace": real.namespace},
        "spec": {
            "primary": {"url": real.url(POOL, "/v1", port=8080)},
            "fallback": {
                "provider": CLOUD_STANDIN,
                "baseURL": real.url(CLOUD_STANDIN, "/v1", port=8080),
                "apiKeySecretRef": {"name": CLOUD_STANDIN, "key": "api-key"},
            },
            "policy": {"firstTokenTimeoutMs": 5000, "circuitBreaker": BREAKER},
            "nodeSelector": dict(REAL_NODE_LABEL),
            "tolerations": [dict(REAL_NODE_TOLERATION)],
        },
    }
    real.kubectl("apply", "-f", "-", input=yaml.safe_dump(route))
    try:
        wait_for(
            lambda: real.ready("fallbackroutes", SERVICE_ROUTE), 120, f"FallbackRoute {SERVICE_ROUTE} Ready"
        )
        yield SERVICE_ROUTE
    finally:
        real.kubectl("delete", "fallbackroute", SERVICE_ROUTE, "-n", real.namespace, "--ignore-not-found")


def breaker_states(lines: list[dict[str, Any]]) -> list[str]:
    return [e["breaker"] for line in lines for e in (line.get("json") or {}).get("endpoints") or []]


def test_deleting_the_pool_pod_opens_the_routers_breaker_until_the_new_pod_is_ready(
    real: RealStack, service_route: str
) -> None:
    old = real.ready_pool_pod()
    targets = [
        f"chat={real.url(service_route, '/v1/chat/completions')}",
        f"readyz={real.url(service_route, '/readyz')}",
    ]
    with real.traffic(targets) as traffic:
        wait_for(
            lambda: settled(traffic, ("chat",), 0),
            120,
            f"{service_route} to answer from the model",
            describe=lambda: traffic.lines[-4:],
        )
        deleted = time.time()
        real.core.delete_namespaced_pod(old.metadata.name, real.namespace)
        wait_for(
            lambda: "open" in breaker_states(traffic.of("readyz", deleted)),
            120,
            "the router's breaker to open",
            describe=lambda: traffic.lines[-4:],
        )
        wait_for_a_new_ready_pod(real, old, [])
        ready = time.time()
        wait_for(
            lambda: (
                settled(traffic, ("chat",), ready) and breaker_states(traffic.of("readyz"))[-1:] == ["closed"]
            ),
            120,
            "the breaker to close and the route to answer from the new pod",
            describe=lambda: traffic.lines[-4:],
        )
    during = traffic.of("chat", deleted)

    opened = [line["t"] for line in traffic.of("readyz", deleted) if "open" in breaker_states([line])]
    closed_again = [line["t"] for line in traffic.of("readyz", ready) if breaker_states([line]) == ["closed"]]
    assert opened and closed_again and opened[0] < closed_again[0]
    assert {status for status, _ in answers(during)} == {200}, answers(during)
    assert "breaker_open" in {line.get("reason") for line in during}, "no request skipped the open breaker"


# --- uninstall (last: the tests after it install the operator again) -----------------------------------------------


def test_helm_uninstall_stops_the_operator_pod_and_leaves_only_the_crds(real: RealStack) -> None:
    [pod] = operator_pods(real)
    manifest = subprocess.run(
        [
            real.helm,
            "--kubeconfig",
            str(real.access.kubeconfig),
            "get",
            "manifest",
            real.release,
            "-n",
            real.operator_namespace,
        ],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    released = [
        (o["kind"], o["metadata"]["name"], o["metadata"].get("namespace"))
        for o in yaml.safe_load_all(manifest)
        if o
    ]

    subprocess.run(
        real.helm_uninstall_argv("--wait", "--timeout", "2m"),
        capture_output=True,
        check=True,
    )

    for kind, name, namespace in released:
        scope = ["-n", namespace] if namespace else []
        found = real.kubectl("get", f"{kind.lower()}/{name}", *scope, "--ignore-not-found", "-o", "name")
        assert not found.strip(), f"{kind}/{name} survived helm uninstall"
    for crd in ("llmmodels", "inferencepools", "fallbackroutes"):
        assert real.kubectl("get", "crd", f"{crd}.llm.localai-operator.io", "-o", "name").strip()
    wait_for(
        lambda: not real.core.list_namespaced_pod(real.operator_namespace).items,
        60,
        f"the operator pod {pod.metadata.name} to stop",
    )


def test_helm_uninstall_leaves_one_lease_line_and_no_traceback_in_the_operators_log(real: RealStack) -> None:
    [pod] = operator_pods(real)
    wait_for(
        lambda: "became the leader" in real.kubectl("logs", "-n", real.operator_namespace, pod.metadata.name),
        60,
        f"pod {pod.metadata.name} to lead",
    )
    # Followed from before the uninstall: the stream ends when the container exits, with its last lines.
    follow = subprocess.Popen(
        [
            kubectl_binary(real.access),
            f"--kubeconfig={real.access.kubeconfig}",
            "logs",
            "-f",
            "--since=1s",
            "-n",
            real.operator_namespace,
            pod.metadata.name,
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        subprocess.run(
            real.helm_uninstall_argv("--wait", "--timeout", "2m"),
            capture_output=True,
            check=True,
        )
        log, _ = follow.communicate(timeout=90)
    finally:
        follow.kill()
    assert "Traceback" not in log, log
    releases = [
        line
        for line in log.splitlines()
        if "nothing to release" in line or "hand back" in line or "handed back" in line
    ]
    assert len(releases) == 1 and "could not" not in releases[0], log

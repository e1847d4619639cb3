"""A tenant's pod on the real node, wearing a route's router labels (so it sits in the route Service's
EndpointSlice) and answering /metrics with +Inf, NaN, -1 and 200 MiB in turn, against the operator installed
from its chart (its memory limit, 512 MiB). The operator never reads that pod: the autoscaled pool behind the
routes keeps its decisions, the other route's cost is still published, and the operator pod neither restarts nor
grows. Before issue 19, the first +Inf aborted every look (no pool scaled, no cost published, for the whole
cluster) and the 200 MiB answer OOM-killed the operator.

Named to run after test_real_node_elastic.py: it changes the shared pool and puts it back as it was."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from kubernetes import client

from localai_operator.constants import LABEL_COMPONENT, LABEL_INSTANCE, ROUTER_METRICS_PORT, ROUTER_PORT
from localai_operator.devcluster import REAL_NODE_LABEL, REAL_NODE_TOLERATION
from localai_operator.devcluster.stack import POOL, ROUTE, SENSITIVE_ROUTE
from tests.e2e.realstack import RESTRICTED, RealStack, pod_ready
from tests.helpers import wait_for

pytestmark = pytest.mark.cluster

TENANT_POD = "tenant-metrics"
HOSTILE_SCRIPT = r"""
import datetime, http.server, itertools
month = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m")

def text(value):
    return ("localai_router_demand_seconds_total 0\nlocalai_router_demand_in_flight %s\n"
            'localai_router_period_cost{kind="spend",period="%s"} %s\n' % (value, month, value)).encode()

answers = itertools.cycle([text("+Inf"), text("NaN"), text("-1"), 200 << 20])

class Metrics(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        answer = next(answers)
        print("read", self.path, answer if isinstance(answer, int) else answer.split()[3].decode(), flush=True)
        self.send_response(200)
        self.end_headers()
        if not isinstance(answer, int):
            self.wfile.write(answer)
            return
        chunk = b"# " + b"x" * (1 << 20) + b"\n"
        try:
            for _ in range(answer // len(chunk) + 1):
                self.wfile.write(chunk)
        except OSError:
            pass

    def log_message(self, *args):
        pass

http.server.ThreadingHTTPServer(("", PORT), Metrics).serve_forever()
""".replace("PORT", str(ROUTER_METRICS_PORT))


def tenant_token(real: RealStack) -> str:
    """A ServiceAccount of the namespace allowed only to create and get pods there, as a tenant would be."""
    rbac = client.RbacAuthorizationV1Api(real.access.api)
    namespace = real.namespace
    real.core.create_namespaced_service_account(
        namespace, client.V1ServiceAccount(metadata=client.V1ObjectMeta(name="tenant"))
    )
    rule = client.V1PolicyRule(api_groups=[""], resources=["pods"], verbs=["create", "get"])
    rbac.create_namespaced_role(
        namespace, client.V1Role(metadata=client.V1ObjectMeta(name="tenant"), rules=[rule])
    )
    rbac.create_namespaced_role_binding(
        namespace,
        client.V1RoleBinding(
            metadata=client.V1ObjectMeta(name="tenant"),
            role_ref=client.V1RoleRef(api_group="rbac.authorization.k8s.io", kind="Role", name="tenant"),
            subjects=[client.RbacV1Subject(kind="ServiceAccount", name="tenant", namespace=namespace)],
        ),
    )
    request = client.AuthenticationV1TokenRequest(spec=client.V1TokenRequestSpec(audiences=[]))
    token: str = real.core.create_namespaced_service_account_token("tenant", namespace, request).status.token
    return token


def hostile_pod(real: RealStack) -> dict[str, Any]:
    """The operator image's python serving the hostile /metrics, with the router labels of SENSITIVE_ROUTE (whose
    clients it would also get: the tests send none there meanwhile)."""
    (router,) = [
        p
        for p in real.core.list_namespaced_pod(
            real.namespace, label_selector=f"{LABEL_INSTANCE}={SENSITIVE_ROUTE},{LABEL_COMPONENT}=router"
        ).items
        if p.metadata.owner_references
    ][:1]
    labels = {k: v for k, v in router.metadata.labels.items() if k != "pod-template-hash"}
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": TENANT_POD, "labels": labels},
        "spec": {
            "nodeSelector": dict(REAL_NODE_LABEL),
            "tolerations": [dict(REAL_NODE_TOLERATION)],
            "enableServiceLinks": False,
            "automountServiceAccountToken": False,
            "terminationGracePeriodSeconds": 1,
            "securityContext": {
                "runAsNonRoot": True,
                "runAsUser": 65532,
                "seccompProfile": {"type": "RuntimeDefault"},
            },
            "containers": [
                {
                    "name": "metrics",
                    "image": real.images.operator,
                    "imagePullPolicy": "IfNotPresent",
                    "command": ["python", "-c", HOSTILE_SCRIPT],
                    # Serving where the operator scrapes a router pod: the metrics port.
                    "ports": [
                        {"name": "http", "containerPort": ROUTER_PORT},
                        {"name": "metrics", "containerPort": ROUTER_METRICS_PORT},
                    ],
                    "readinessProbe": {"tcpSocket": {"port": ROUTER_METRICS_PORT}, "periodSeconds": 1},
                    "resources": {
                        "requests": {"cpu": "10m", "memory": "32Mi"},
                        "limits": {"memory": "128Mi"},
                    },
                    "securityContext": RESTRICTED,
                }
            ],
        },
    }


def operator_pod(real: RealStack) -> client.V1Pod:
    pods = real.core.list_namespaced_pod(
        real.operator_namespace, label_selector="app.kubernetes.io/component=operator"
    ).items
    (pod,) = [p for p in pods if not p.metadata.deletion_timestamp]
    return pod


def restarts(pod: client.V1Pod) -> int:
    return sum(status.restart_count for status in pod.status.container_statuses or [])


def operator_rss_mib(real: RealStack, pod: client.V1Pod) -> float:
    status = real.kubectl(
        "exec", "-n", real.operator_namespace, pod.metadata.name, "--", "cat", "/proc/1/status"
    )
    (line,) = [line for line in status.splitlines() if line.startswith("VmRSS:")]
    return int(line.split()[1]) / 1024


def avoided(real: RealStack, route: str) -> float:
    return float(
        ((real.custom("fallbackroutes", route).get("status") or {}).get("cost") or {}).get("avoided", 0)
    )


@pytest.fixture
def tenant(real: RealStack) -> Iterator[RealStack]:
    """The sample pool autoscaled (at its one replica: nothing moves), and the tenant's pod in the route's slice."""
    real.patch_pool({"autoscaling": {"minReplicas": 1, "maxReplicas": 1}})
    token = tenant_token(real)
    try:
        with real.access.client_for_token(token) as api:
            client.CoreV1Api(api).create_namespaced_pod(real.namespace, hostile_pod(real))
        wait_for(
            lambda: pod_ready(real.core.read_namespaced_pod(TENANT_POD, real.namespace)),
            120,
            "the tenant's pod Ready (and so in the route Service's slice)",
        )
        yield real
    finally:
        real.core.delete_namespaced_pod(TENANT_POD, real.namespace, grace_period_seconds=0)
        for delete in (
            client.RbacAuthorizationV1Api(real.access.api).delete_namespaced_role_binding,
            client.RbacAuthorizationV1Api(real.access.api).delete_namespaced_role,
            real.core.delete_namespaced_service_account,
        ):
            delete("tenant", real.namespace)
        real.patch_pool({"autoscaling": None})
        wait_for(
            lambda: (
                not any(
                    p.metadata.name == TENANT_POD for p in real.core.list_namespaced_pod(real.namespace).items
                )
            ),
            60,
            "the tenant's pod gone",
        )


def test_a_tenant_pod_in_a_routes_slice_serving_garbage_is_never_read_and_costs_nobody_anything(
    tenant: RealStack,
) -> None:
    real = tenant
    before = operator_pod(real)
    rss_before = operator_rss_mib(real, before)
    seen = avoided(real, ROUTE)
    # A local answer on the other route: its avoided cost goes up once a look reads its router and publishes.
    answer = real.chat(ROUTE)
    assert (answer.get("status"), answer.get("served_by")) == (200, "local"), answer
    wait_for(
        lambda: avoided(real, ROUTE) > seen,
        90,
        f"{ROUTE}'s cost published with the tenant's pod in {SENSITIVE_ROUTE}'s slice",
        describe=lambda: real.custom("fallbackroutes", ROUTE).get("status"),
    )
    status = (real.custom("inferencepools", POOL).get("status") or {}).get("autoscaling") or {}
    assert status.get("reason") in ("AtMinReplicas", "Steady", "AtMaxReplicas"), status
    reads = real.kubectl("logs", "-n", real.namespace, TENANT_POD)
    assert "read" not in reads, f"the operator read the tenant's pod:\n{reads[:500]}"
    after = operator_pod(real)
    assert after.metadata.uid == before.metadata.uid and restarts(after) == restarts(before)
    rss_after = operator_rss_mib(real, after)
    assert rss_after < 512 and rss_after - rss_before < 64, (rss_before, rss_after)
    print(f"\noperator RSS with the tenant's pod in a route's slice: {rss_before:.0f} -> {rss_after:.0f} MiB")

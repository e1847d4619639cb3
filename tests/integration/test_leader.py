"""Leader election on the real API server, as the chart's ServiceAccount: the Lease handed back on shutdown, and
nothing to hand back once `helm uninstall` took the Lease's Role or the Lease itself."""

from __future__ import annotations

import asyncio
import logging
import re
from collections.abc import AsyncIterator
from dataclasses import dataclass

import kopf
import pytest
from kubernetes import client
from kubernetes.client.exceptions import ApiException

from localai_operator.control.kube import Api
from localai_operator.control.leader import LeaderElector
from tests.helpers import ClusterAccess, wait_for

pytestmark = pytest.mark.cluster
LEASE = "localai-operator"
ROLE = "leader-election"


@dataclass
class Candidate:
    elector: LeaderElector
    token: str


def _lease_holder(cluster: ClusterAccess, namespace: str) -> str | None:
    lease = client.CoordinationV1Api(cluster.api).read_namespaced_lease(LEASE, namespace)
    return str(lease.spec.holder_identity or "")


def _forbidden(cluster: ClusterAccess, token: str, namespace: str) -> bool:
    with cluster.client_for_token(token) as api:
        try:
            client.CoordinationV1Api(api).read_namespaced_lease(LEASE, namespace)
        except ApiException as err:
            return err.status == 403
    return False


@pytest.fixture
async def leader(cluster: ClusterAccess, namespace: str) -> AsyncIterator[Candidate]:
    """An elector holding the Lease, as a ServiceAccount granted only the chart's Lease rules."""
    rbac = client.RbacAuthorizationV1Api(cluster.api)
    cluster.core.create_namespaced_service_account(
        namespace, client.V1ServiceAccount(metadata=client.V1ObjectMeta(name="operator"))
    )
    rule = client.V1PolicyRule(
        api_groups=["coordination.k8s.io"], resources=["leases"], verbs=["get", "create", "update"]
    )
    rbac.create_namespaced_role(
        namespace, client.V1Role(metadata=client.V1ObjectMeta(name=ROLE), rules=[rule])
    )
    rbac.create_namespaced_role_binding(
        namespace,
        client.V1RoleBinding(
            metadata=client.V1ObjectMeta(name=ROLE),
            role_ref=client.V1RoleRef(api_group="rbac.authorization.k8s.io", kind="Role", name=ROLE),
            subjects=[client.RbacV1Subject(kind="ServiceAccount", name="operator", namespace=namespace)],
        ),
    )
    request = client.AuthenticationV1TokenRequest(
        spec=client.V1TokenRequestSpec(audiences=[], expiration_seconds=600)
    )
    token = cluster.core.create_namespaced_service_account_token("operator", namespace, request).status.token
    admin = cluster.api.configuration
    info = kopf.ConnectionInfo(server=admin.host, ca_path=admin.ssl_ca_cert, token=token)
    api = Api(lambda: info, count=lambda verb, kind, code, seconds: None)
    elector = LeaderElector(api, namespace, LEASE, "operator-0", retry_seconds=0.2)
    task = asyncio.create_task(elector.run(lambda: None, lambda: None))
    try:
        await asyncio.wait_for(elector.leading.wait(), timeout=30)
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        yield Candidate(elector, token)
    finally:
        task.cancel()
        await api.close()


def _release_lines(caplog: pytest.LogCaptureFixture) -> list[logging.LogRecord]:
    return [r for r in caplog.records if r.name == "localai_operator.control.leader"]


async def test_on_shutdown_the_lease_is_handed_back(
    cluster: ClusterAccess, namespace: str, leader: Candidate, caplog: pytest.LogCaptureFixture
) -> None:
    assert _lease_holder(cluster, namespace) == "operator-0"
    with caplog.at_level(logging.INFO, logger="localai_operator.control.leader"):
        await leader.elector.release()
    assert _lease_holder(cluster, namespace) == ""
    assert [r.getMessage() for r in _release_lines(caplog)] == [f"handed back the Lease {namespace}/{LEASE}"]


async def test_a_lease_whose_role_binding_is_gone_is_nothing_to_release_in_one_line(
    cluster: ClusterAccess, namespace: str, leader: Candidate, caplog: pytest.LogCaptureFixture
) -> None:
    client.RbacAuthorizationV1Api(cluster.api).delete_namespaced_role_binding(ROLE, namespace)
    wait_for(
        lambda: _forbidden(cluster, leader.token, namespace), 30, "the ServiceAccount refused the Lease (403)"
    )
    with caplog.at_level(logging.DEBUG, logger="localai_operator.control.leader"):
        await leader.elector.release()
    [line] = _release_lines(caplog)
    assert (line.levelno, line.exc_info) == (logging.INFO, None)
    assert line.getMessage().startswith(f"Lease {namespace}/{LEASE}: nothing to release (403")


async def test_a_lease_deleted_before_shutdown_is_nothing_to_release_in_one_line(
    cluster: ClusterAccess, namespace: str, leader: Candidate, caplog: pytest.LogCaptureFixture
) -> None:
    client.CoordinationV1Api(cluster.api).delete_namespaced_lease(LEASE, namespace)
    with caplog.at_level(logging.DEBUG, logger="localai_operator.control.leader"):
        await leader.elector.release()
    [line] = _release_lines(caplog)
    assert (line.levelno, line.exc_info) == (logging.INFO, None)
    # A PUT naming the deleted Lease's uid fails its precondition: 409 rather than 404.
    assert re.match(rf"Lease {namespace}/{LEASE}: nothing to release \((404|409) ", line.getMessage())

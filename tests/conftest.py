"""Shared fixtures. `cluster`: the local control plane for the session, or an existing cluster given with
--kubeconfig / LOCALAI_OPERATOR_KUBECONFIG (the same tests then run on e.g. kind); `namespace`: one per test."""

from __future__ import annotations

import contextlib
import os
import re
import secrets
from collections.abc import Iterator

import pytest
from kubernetes import client
from kubernetes.client.exceptions import ApiException

from localai_operator.devcluster import ClusterError
from tests.helpers import ClusterAccess, open_cluster, started_harnesses

TEST_NAMESPACE_LABEL = "localai-operator.io/test"


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption(
        "--kubeconfig",
        default=os.environ.get("LOCALAI_OPERATOR_KUBECONFIG") or None,
        help="run the cluster tests against this existing cluster instead of starting the local control plane "
        "(also: env LOCALAI_OPERATOR_KUBECONFIG)",
    )


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers", "harness: tests the local control plane itself; skipped with --kubeconfig"
    )


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if config.getoption("--kubeconfig"):
        skip = pytest.mark.skip(
            reason="tests the local control plane, not the cluster given with --kubeconfig"
        )
        for item in items:
            if "harness" in item.keywords:
                item.add_marker(skip)


@pytest.fixture(scope="session")
def cluster(request: pytest.FixtureRequest) -> Iterator[ClusterAccess]:
    """An admin client for the cluster. If the local control plane cannot start, every test using this errors."""
    with open_cluster(request.config.getoption("--kubeconfig")) as access:
        yield access


@pytest.fixture
def namespace(cluster: ClusterAccess, request: pytest.FixtureRequest) -> Iterator[str]:
    """A fresh namespace named after the test, deleted (without waiting) afterwards."""
    base = re.sub(r"[^a-z0-9]+", "-", request.node.name.lower()).strip("-")[:50].rstrip("-")
    name = f"{base}-{secrets.token_hex(3)}"
    metadata = client.V1ObjectMeta(name=name, labels={TEST_NAMESPACE_LABEL: "true"})
    cluster.core.create_namespace(client.V1Namespace(metadata=metadata))
    yield name
    with contextlib.suppress(ApiException):
        cluster.core.delete_namespace(name)


@pytest.hookimpl(trylast=True)
def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    # Runs after the session fixtures' teardown: the run fails if a local control plane left anything behind.
    leftovers = [item for harness in started_harnesses for item in harness.leftovers()]
    if not leftovers:
        return
    for harness in started_harnesses:
        with contextlib.suppress(ClusterError):
            harness.stop()
    message = "a local control plane was not stopped cleanly: " + "; ".join(leftovers)
    reporter = session.config.pluginmanager.get_plugin("terminalreporter")
    if reporter is not None:
        reporter.write_line(message, red=True, bold=True)
    else:
        print(message)
    session.exitstatus = pytest.ExitCode.TESTS_FAILED
